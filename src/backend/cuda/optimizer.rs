//! Fused optimiser updates (kernels/optimizer.cu), used by the trainer on CUDA tensors.

use super::{i32_of, ptr, CudaBackend};
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
                ptr(w)?,
                ptr(grad)?,
                ptr(momentum_buf)?,
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
                ptr(w)?,
                ptr(grad)?,
                ptr(m)?,
                ptr(v)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `opt_adamw` kernel's arithmetic, on the host (Rust does not contract a·b + c into an FMA,
    /// so this is the kernel's __fmul_rn/__fadd_rn chain).
    fn adamw_kernel(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamWCoeffs) {
        for i in 0..w.len() {
            m[i] = c.a1 * g[i] + c.b1 * m[i];
            v[i] = c.a2 * (g[i] * g[i]) + c.b2 * v[i];
            let denom = v[i].sqrt() * c.inv_sqrt_bc2 + c.eps;
            w[i] = c.neg_step * (m[i] / denom) + c.decay * w[i];
        }
    }

    /// The `opt_sgd` kernel's arithmetic, on the host.
    #[allow(clippy::too_many_arguments)]
    fn sgd_kernel(
        w: &mut [f32],
        g: &[f32],
        buf: &mut [f32],
        lr: f32,
        momentum: f32,
        dampening: f32,
        wd: f32,
        nesterov: bool,
        first: bool,
    ) {
        for i in 0..w.len() {
            let mut d = if wd != 0.0 { wd * w[i] + g[i] } else { g[i] };
            if momentum != 0.0 {
                let b = if first {
                    d
                } else {
                    (1.0 - dampening) * d + momentum * buf[i]
                };
                buf[i] = b;
                d = if nesterov { momentum * b + d } else { b };
            }
            w[i] += -lr * d;
        }
    }

    /// Grad of sum(p ⊙ g) is g exactly.
    fn set_grad(p: &crate::Tensor, g: &[f32]) {
        let gt = crate::Tensor::from_slice(g, p.shape(), crate::Device::Cpu).unwrap();
        p.zero_grad();
        p.mul(&gt).unwrap().sum().unwrap().backward().unwrap();
    }

    #[test]
    fn fused_adamw_coefficients_reproduce_the_cpu_optimizer_bit_for_bit() {
        use crate::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
        let init: Vec<f32> = (0..37).map(|i| crate::rng::normal(5, i)).collect();
        let p = crate::Tensor::from_slice(&init, &[37], crate::Device::Cpu)
            .unwrap()
            .with_grad();
        let cfg = AdamWConfig {
            lr: 3e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
        };
        let (wd, lr_scale) = (0.05f32, 0.5f32);
        let mut opt = AdamW::new(
            vec![ParamGroup::new(vec![("p".into(), p.clone())], wd).with_lr_scale(lr_scale)],
            cfg,
        )
        .unwrap();
        let (mut w, mut m, mut v) = (init.clone(), vec![0.0; 37], vec![0.0; 37]);
        for step in 1..=6u64 {
            let g: Vec<f32> = (0..37)
                .map(|i| crate::rng::normal(100 + step, i) * 0.1)
                .collect();
            set_grad(&p, &g);
            opt.step().unwrap();
            let c = AdamWCoeffs::new(cfg.lr * lr_scale, cfg.betas, cfg.eps, wd, step);
            adamw_kernel(&mut w, &g, &mut m, &mut v, c);
            assert_eq!(p.to_vec().unwrap(), w, "step {step}");
        }
    }

    #[test]
    fn fused_sgd_reproduces_the_cpu_optimizer_bit_for_bit() {
        use crate::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
        for (momentum, dampening, nesterov, wd) in [
            (0.0f32, 0.0f32, false, 0.0f32),
            (0.9, 0.0, false, 1e-4),
            (0.9, 0.1, false, 0.0),
            (0.9, 0.0, true, 5e-4),
        ] {
            let init: Vec<f32> = (0..29).map(|i| crate::rng::normal(9, i)).collect();
            let p = crate::Tensor::from_slice(&init, &[29], crate::Device::Cpu)
                .unwrap()
                .with_grad();
            let lr = 0.05f32;
            let mut opt = Sgd::new(
                vec![ParamGroup::new(vec![("p".into(), p.clone())], wd)],
                SgdConfig {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                },
            )
            .unwrap();
            let (mut w, mut buf) = (init.clone(), vec![0.0; 29]);
            for step in 0..5u64 {
                let g: Vec<f32> = (0..29).map(|i| crate::rng::normal(50 + step, i)).collect();
                set_grad(&p, &g);
                opt.step().unwrap();
                sgd_kernel(
                    &mut w,
                    &g,
                    &mut buf,
                    lr,
                    momentum,
                    dampening,
                    wd,
                    nesterov,
                    step == 0,
                );
                assert_eq!(
                    p.to_vec().unwrap(),
                    w,
                    "{momentum} {dampening} {nesterov} {wd}"
                );
            }
        }
    }
}
