//! Cross-entropy with label smoothing (kernels/loss.cu); labels are uploaded per call.

use super::{out, ptr, CudaBackend, LaunchConfig};
use crate::backend::{BackendBuffer, BufferRef};
use crate::error::Result;

pub(super) fn cross_entropy(
    be: &CudaBackend,
    logits: &dyn BackendBuffer,
    labels: &[u32],
    classes: usize,
    smoothing: f32,
) -> Result<BufferRef> {
    let y = be.alloc(1)?;
    let lab = be.upload_u32(labels)?;
    be.launch(
        "loss",
        "ce_forward",
        LaunchConfig::new((1, 1, 1), (256, 1, 1)),
        kargs![
            y.ptr,
            ptr(logits)?,
            lab.ptr,
            labels.len() as i32,
            classes as i32,
            smoothing
        ],
    )?;
    Ok(out(y))
}

pub(super) fn cross_entropy_backward(
    be: &CudaBackend,
    logits: &dyn BackendBuffer,
    labels: &[u32],
    classes: usize,
    smoothing: f32,
    dloss: &dyn BackendBuffer,
) -> Result<BufferRef> {
    let d = be.alloc(logits.len())?;
    if !labels.is_empty() && classes > 0 {
        let lab = be.upload_u32(labels)?;
        be.launch1(
            "loss",
            "ce_backward",
            labels.len() * 32,
            kargs![
                d.ptr,
                ptr(logits)?,
                lab.ptr,
                ptr(dloss)?,
                labels.len() as i32,
                classes as i32,
                smoothing
            ],
        )?;
    }
    Ok(out(d))
}
