//! Softmax and log-softmax (kernels/softmax.cu): a warp per row when the axis is innermost, a thread
//! per column otherwise.

use super::{out, ptr, CudaBackend};
use crate::backend::{AxisGeom, BackendBuffer, BufferRef};
use crate::error::Result;

pub(super) fn forward(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: AxisGeom,
    log: bool,
) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(n)?;
    if n > 0 {
        let xp = ptr(x)?;
        if g.inner == 1 {
            be.launch1(
                "softmax",
                "softmax_rows_forward",
                g.outer * 32,
                kargs![y.ptr, xp, g.outer as i32, g.axis as i32, log as i32],
            )?;
        } else {
            be.launch1(
                "softmax",
                "softmax_cols_forward",
                g.outer * g.inner,
                kargs![
                    y.ptr,
                    xp,
                    g.outer as i32,
                    g.axis as i32,
                    g.inner as i32,
                    log as i32
                ],
            )?;
        }
    }
    Ok(out(y))
}

pub(super) fn backward(
    be: &CudaBackend,
    y: &dyn BackendBuffer,
    dy: &dyn BackendBuffer,
    g: AxisGeom,
    log: bool,
) -> Result<BufferRef> {
    let n = y.len();
    let dx = be.alloc(n)?;
    if n > 0 {
        let (yp, dyp) = (ptr(y)?, ptr(dy)?);
        if g.inner == 1 {
            be.launch1(
                "softmax",
                "softmax_rows_backward",
                g.outer * 32,
                kargs![dx.ptr, yp, dyp, g.outer as i32, g.axis as i32, log as i32],
            )?;
        } else {
            be.launch1(
                "softmax",
                "softmax_cols_backward",
                g.outer * g.inner,
                kargs![
                    dx.ptr,
                    yp,
                    dyp,
                    g.outer as i32,
                    g.axis as i32,
                    g.inner as i32,
                    log as i32
                ],
            )?;
        }
    }
    Ok(out(dx))
}
