//! Fused optimiser updates (kernels/optimizer.cu): the CUDA backend's [`Backend::sgd_step`] and
//! [`Backend::adamw_step`], which `crate::optim`'s SGD and AdamW call.

use super::{i32_of, ptr, ptr_mut, CudaBackend};
use crate::backend::{AdamWCoeffs, BackendBuffer, SgdUpdate};
use crate::error::{Error, Result};

/// SGD with momentum, in place on w and the momentum buffer (PyTorch's rule, see kernels/optimizer.cu).
pub(super) fn sgd_step(
    be: &CudaBackend,
    w: &dyn BackendBuffer,
    grad: &dyn BackendBuffer,
    momentum_buf: Option<&dyn BackendBuffer>,
    u: &SgdUpdate,
) -> Result<()> {
    let n = i32_of(w.len(), "parameter")?;
    if n == 0 {
        return Ok(());
    }
    // Without momentum the kernel never reads or writes the buffer: a null pointer stands for it.
    let buf = match momentum_buf {
        Some(b) => ptr_mut(b, "sgd_step")?,
        None if u.momentum == 0.0 => 0,
        None => {
            return Err(Error::Device(
                "sgd_step: momentum without a momentum buffer".into(),
            ))
        }
    };
    be.launch1(
        "optimizer",
        "opt_sgd",
        w.len(),
        kargs![
            ptr_mut(w, "sgd_step")?,
            ptr(grad)?,
            buf,
            n,
            u.lr,
            u.momentum,
            u.dampening,
            u.weight_decay,
            u.nesterov as i32,
            u.first as i32
        ],
    )
}

/// AdamW, in place on w and the moment buffers, as `crate::optim::AdamW` defines it.
pub(super) fn adamw_step(
    be: &CudaBackend,
    w: &dyn BackendBuffer,
    grad: &dyn BackendBuffer,
    m: &dyn BackendBuffer,
    v: &dyn BackendBuffer,
    c: &AdamWCoeffs,
) -> Result<()> {
    let n = i32_of(w.len(), "parameter")?;
    if n == 0 {
        return Ok(());
    }
    be.launch1(
        "optimizer",
        "opt_adamw",
        w.len(),
        kargs![
            ptr_mut(w, "adamw_step")?,
            ptr(grad)?,
            ptr_mut(m, "adamw_step")?,
            ptr_mut(v, "adamw_step")?,
            n,
            c.a1,
            c.b1,
            c.a2,
            c.b2,
            c.inv_sqrt_bc2,
            c.eps,
            c.neg_step,
            c.decay
        ],
    )
}

// Tested in tests/cuda_ops.rs (`optimizers_match_cpu`): the kernels themselves, on the GPU or the CUDA
// simulator, against the CPU backend's fused steps and crate::optim's unfused chain, bit for bit.
