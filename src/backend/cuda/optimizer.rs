//! Fused optimiser updates (kernels/optimizer.cu), used by the trainer on CUDA tensors.

use super::{i32_of, ptr, ptr_mut, CudaBackend};
use crate::backend::BackendBuffer;
use crate::error::Result;

impl CudaBackend {
    /// SGD with momentum, in place on w and the momentum buffer (PyTorch's rule, see kernels/optimizer.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        momentum_buf: &dyn BackendBuffer,
        lr: f32,
        momentum: f32,
        dampening: f32,
        weight_decay: f32,
        nesterov: bool,
        first: bool,
    ) -> Result<()> {
        let n = i32_of(w.len(), "parameter")?;
        if n == 0 {
            return Ok(());
        }
        self.launch1(
            "optimizer",
            "opt_sgd",
            w.len(),
            kargs![
                ptr_mut(w, "sgd_step")?,
                ptr(grad)?,
                ptr_mut(momentum_buf, "sgd_step")?,
                n,
                lr,
                momentum,
                dampening,
                weight_decay,
                nesterov as i32,
                first as i32
            ],
        )
    }

    /// AdamW, in place on w and the moment buffers, as `crate::optim::AdamW` does it: `lr` already
    /// scaled by the group, `betas` in f64 like `AdamWConfig::betas` (the bias corrections 1 − βᵗ are
    /// computed in f64: with f32 betas 1 − β₂ᵗ is off by ~1e-5 relative early on), `step` counts from 1.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        m: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        lr: f32,
        betas: (f64, f64),
        eps: f32,
        weight_decay: f32,
        step: u64,
    ) -> Result<()> {
        let n = i32_of(w.len(), "parameter")?;
        if n == 0 {
            return Ok(());
        }
        let c = AdamWCoeffs::new(lr, betas, eps, weight_decay, step);
        self.launch1(
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
}

/// The scalar coefficients of one AdamW step (kernels/optimizer.cu `opt_adamw`), computed exactly as
/// `crate::optim::AdamW::step` computes them (f64, then rounded to f32 once), so that the fused kernel
/// reproduces the CPU optimiser's chain of elementwise ops bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWCoeffs {
    /// 1 − β₁ and β₁: m = a1·g + b1·m.
    pub a1: f32,
    pub b1: f32,
    /// 1 − β₂ and β₂: v = a2·g² + b2·v.
    pub a2: f32,
    pub b2: f32,
    /// 1/√(1 − β₂ᵗ): denom = √v·inv_sqrt_bc2 + eps.
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    /// −lr/(1 − β₁ᵗ) and 1 − lr·wd: w = neg_step·(m/denom) + decay·w.
    pub neg_step: f32,
    pub decay: f32,
}

impl AdamWCoeffs {
    pub fn new(lr: f32, (b1, b2): (f64, f64), eps: f32, weight_decay: f32, step: u64) -> Self {
        let (lr, wd, t) = (lr as f64, weight_decay as f64, step as f64);
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        AdamWCoeffs {
            a1: (1.0 - b1) as f32,
            b1: b1 as f32,
            a2: (1.0 - b2) as f32,
            b2: b2 as f32,
            inv_sqrt_bc2: (1.0 / bias_correction2.sqrt()) as f32,
            eps,
            neg_step: (-(lr / bias_correction1)) as f32,
            decay: (1.0 - lr * wd) as f32,
        }
    }
}

// Tested in tests/cuda_ops.rs (`optimizers_match_cpu`): the kernels themselves, on the GPU or the CUDA
// simulator, against crate::optim's SGD and AdamW, bit for bit.
