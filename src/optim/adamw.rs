//! Adam with decoupled weight decay, as `torch.optim.AdamW` (amsgrad, maximize, foreach and fused
//! variants aside).

use std::collections::HashMap;

use crate::autograd::no_grad;
use crate::backend::AdamWCoeffs;
use crate::error::{arg_bail, Result};
use crate::optim::{
    check_groups, check_lr, find_param, load_buffer, split_state_name, Optimizer, OptimizerState,
    ParamGroup,
};
use crate::tensor::Tensor;

const OP: &str = "adamw";

/// AdamW's hyper-parameters (weight decay is per [`ParamGroup`]). The defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f32,
    /// (β₁, β₂) in f64, as PyTorch computes the bias corrections 1 − βᵗ: early on 1 − β₂ᵗ is small
    /// and an f32 β₂ = 0.999 would move it by 1e-5 relative.
    pub betas: (f64, f64),
    pub eps: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }
}

/// Per-parameter state: PyTorch's `step`, `exp_avg` (m) and `exp_avg_sq` (v).
#[derive(Debug)]
struct Moments {
    step: u64,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW. Per parameter p with gradient g, weight decay wd and learning rate lr, at step t ≥ 1
/// (PyTorch's update):
///
/// ```text
/// p = p·(1 − lr·wd)                       decoupled decay: not through the moments
/// m = β₁·m + (1 − β₁)·g
/// v = β₂·v + (1 − β₂)·g²
/// p = p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + eps)
/// ```
/// The two updates of p are one fused `axpby_`.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    cfg: AdamWConfig,
    /// Moments per parameter, in group order; made (zero) at the parameter's first step.
    state: Vec<Vec<Option<Moments>>>,
}

impl AdamW {
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<AdamW> {
        check_groups(OP, &groups)?;
        check_lr(OP, cfg.lr)?;
        let (b1, b2) = cfg.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            arg_bail!(OP, "betas must be in [0, 1), got ({b1}, {b2})");
        }
        if !(cfg.eps >= 0.0 && cfg.eps.is_finite()) {
            arg_bail!(OP, "eps must be >= 0, got {}", cfg.eps);
        }
        let state = groups
            .iter()
            .map(|g| g.params.iter().map(|_| None).collect())
            .collect();
        Ok(AdamW { groups, cfg, state })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }
}

impl Optimizer for AdamW {
    fn step(&mut self) -> Result<()> {
        let AdamWConfig {
            lr,
            betas: (b1, b2),
            eps,
        } = self.cfg;
        no_grad(|| {
            for (group, states) in self.groups.iter().zip(&mut self.state) {
                let (lr, wd) = (lr * group.lr_scale, group.weight_decay);
                for ((_, p), st) in group.params.iter().zip(states) {
                    let Some(g) = p.grad() else {
                        continue;
                    };
                    let s = match st {
                        Some(s) => s,
                        None => st.insert(Moments {
                            step: 0,
                            exp_avg: Tensor::zeros(p.shape(), p.device())?,
                            exp_avg_sq: Tensor::zeros(p.shape(), p.device())?,
                        }),
                    };
                    s.step += 1;
                    crate::ops::same_device(OP, &[p, &g])?;
                    let c = AdamWCoeffs::new(lr, (b1, b2), eps, wd, s.step);
                    p.backend().adamw_step(
                        p.buf(),
                        g.buf(),
                        s.exp_avg.buf(),
                        s.exp_avg_sq.buf(),
                        &c,
                    )?;
                }
            }
            Ok(())
        })
    }

    fn param_groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn lr(&self) -> f32 {
        self.cfg.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.cfg.lr = lr;
    }

    /// `state.<param>.exp_avg`, `state.<param>.exp_avg_sq` (tensors) and `state.<param>.step`
    /// (scalar) for every parameter that has taken a step, and the scalar `lr`.
    fn state_dict(&self) -> Result<OptimizerState> {
        let mut out = OptimizerState {
            tensors: vec![],
            scalars: vec![("lr".into(), self.cfg.lr as f64)],
        };
        for (group, states) in self.groups.iter().zip(&self.state) {
            for ((name, _), st) in group.params.iter().zip(states) {
                if let Some(s) = st {
                    out.tensors
                        .push((format!("state.{name}.exp_avg"), s.exp_avg.copy()?));
                    out.tensors
                        .push((format!("state.{name}.exp_avg_sq"), s.exp_avg_sq.copy()?));
                    out.scalars
                        .push((format!("state.{name}.step"), s.step as f64));
                }
            }
        }
        Ok(out)
    }

    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        // Gather the three pieces of each parameter's state, then require all or none.
        #[derive(Default)]
        struct Parts {
            step: Option<u64>,
            exp_avg: Option<Tensor>,
            exp_avg_sq: Option<Tensor>,
        }
        let mut parts: HashMap<(usize, usize), Parts> = HashMap::new();
        for (name, t) in &state.tensors {
            let (param, kind) = split_state_name(OP, name)?;
            let (gi, pi) = find_param(OP, &self.groups, param)?;
            let t = load_buffer(OP, name, t, &self.groups[gi].params[pi].1)?;
            let e = parts.entry((gi, pi)).or_default();
            match kind {
                "exp_avg" => e.exp_avg = Some(t),
                "exp_avg_sq" => e.exp_avg_sq = Some(t),
                _ => arg_bail!(
                    OP,
                    "unknown state '{name}' (AdamW keeps exp_avg, exp_avg_sq)"
                ),
            }
        }
        let mut lr = self.cfg.lr;
        for (name, v) in &state.scalars {
            let v = *v;
            if name == "lr" {
                lr = v as f32;
                continue;
            }
            let (param, kind) = split_state_name(OP, name)?;
            if kind != "step" {
                arg_bail!(OP, "unknown scalar state '{name}'");
            }
            if !(v >= 1.0 && v.fract() == 0.0) {
                arg_bail!(OP, "'{name}' must be a whole number >= 1, got {v}");
            }
            let at = find_param(OP, &self.groups, param)?;
            parts.entry(at).or_default().step = Some(v as u64);
        }
        check_lr(OP, lr)?;
        let mut fresh: Vec<Vec<Option<Moments>>> = self
            .groups
            .iter()
            .map(|g| g.params.iter().map(|_| None).collect())
            .collect();
        for ((gi, pi), p) in parts {
            let name = &self.groups[gi].params[pi].0;
            let (Some(step), Some(exp_avg), Some(exp_avg_sq)) = (p.step, p.exp_avg, p.exp_avg_sq)
            else {
                arg_bail!(
                    OP,
                    "state of '{name}' needs step, exp_avg and exp_avg_sq together"
                );
            };
            fresh[gi][pi] = Some(Moments {
                step,
                exp_avg,
                exp_avg_sq,
            });
        }
        self.state = fresh;
        self.cfg.lr = lr;
        Ok(())
    }
}
