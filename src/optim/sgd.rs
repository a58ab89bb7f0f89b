//! Stochastic gradient descent with momentum, dampening, Nesterov and weight decay, as
//! `torch.optim.SGD` (maximize, foreach and fused variants aside).

use crate::autograd::no_grad;
use crate::backend::SgdUpdate;
use crate::error::{arg_bail, Result};
use crate::optim::{
    check_groups, check_lr, load_buffer, split_state_name, Optimizer, OptimizerState, ParamGroup,
};
use crate::tensor::Tensor;

const OP: &str = "sgd";

/// SGD's hyper-parameters (weight decay is per [`ParamGroup`]). The defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

/// SGD. Per parameter p with gradient g, weight decay wd and learning rate lr (PyTorch's update):
///
/// ```text
/// g   = g + wd·p
/// buf = g                                  first step
/// buf = momentum·buf + (1 − dampening)·g   later steps
/// g   = g + momentum·buf   (nesterov)   or   g = buf
/// p   = p − lr·g
/// ```
/// Without momentum the buffer is skipped and g is used directly.
#[derive(Debug)]
pub struct Sgd {
    groups: Vec<ParamGroup>,
    cfg: SgdConfig,
    /// Momentum buffer per parameter, in group order; made at the parameter's first step.
    buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    pub fn new(groups: Vec<ParamGroup>, cfg: SgdConfig) -> Result<Sgd> {
        check_groups(OP, &groups)?;
        check_lr(OP, cfg.lr)?;
        if !(cfg.momentum >= 0.0 && cfg.momentum.is_finite()) {
            arg_bail!(OP, "momentum must be >= 0, got {}", cfg.momentum);
        }
        if !cfg.dampening.is_finite() {
            arg_bail!(OP, "dampening must be finite, got {}", cfg.dampening);
        }
        if cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0) {
            arg_bail!(
                OP,
                "nesterov needs momentum > 0 and dampening 0, got momentum {} and dampening {}",
                cfg.momentum,
                cfg.dampening
            );
        }
        let buffers = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Ok(Sgd {
            groups,
            cfg,
            buffers,
        })
    }

    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) -> Result<()> {
        let SgdConfig {
            lr,
            momentum,
            dampening,
            nesterov,
        } = self.cfg;
        no_grad(|| {
            for (group, buffers) in self.groups.iter().zip(&mut self.buffers) {
                let (lr, wd) = (lr * group.lr_scale, group.weight_decay);
                for ((_, p), buf) in group.params.iter().zip(buffers) {
                    let Some(grad) = p.grad() else {
                        continue;
                    };
                    crate::ops::same_device(OP, &[p, &grad])?;
                    // The first step with momentum sets the buffer to d: it starts as zeros.
                    let first = momentum != 0.0 && buf.is_none();
                    if first {
                        *buf = Some(Tensor::zeros(p.shape(), p.device())?);
                    }
                    let update = SgdUpdate {
                        lr,
                        momentum,
                        dampening,
                        weight_decay: wd,
                        nesterov,
                        first,
                    };
                    let state = buf.as_ref().filter(|_| momentum != 0.0).map(|b| b.buf());
                    p.backend().sgd_step(p.buf(), grad.buf(), state, &update)?;
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

    /// `state.<param>.momentum_buffer` for every parameter that has taken a step with momentum, and
    /// the scalar `lr`.
    fn state_dict(&self) -> Result<OptimizerState> {
        let mut tensors = vec![];
        for (group, buffers) in self.groups.iter().zip(&self.buffers) {
            for ((name, _), buf) in group.params.iter().zip(buffers) {
                if let Some(b) = buf {
                    tensors.push((format!("state.{name}.momentum_buffer"), b.copy()?));
                }
            }
        }
        Ok(OptimizerState {
            tensors,
            scalars: vec![("lr".into(), self.cfg.lr as f64)],
        })
    }

    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()> {
        let mut buffers: Vec<Vec<Option<Tensor>>> = self
            .groups
            .iter()
            .map(|g| vec![None; g.params.len()])
            .collect();
        for (name, t) in &state.tensors {
            let (param, kind) = split_state_name(OP, name)?;
            if kind != "momentum_buffer" {
                arg_bail!(
                    OP,
                    "unknown state '{name}' (SGD keeps only momentum_buffer)"
                );
            }
            let (gi, pi) = super::find_param(OP, &self.groups, param)?;
            buffers[gi][pi] = Some(load_buffer(OP, name, t, &self.groups[gi].params[pi].1)?);
        }
        let mut lr = self.cfg.lr;
        for (name, v) in &state.scalars {
            match name.as_str() {
                "lr" => lr = *v as f32,
                _ => arg_bail!(OP, "unknown scalar state '{name}'"),
            }
        }
        check_lr(OP, lr)?;
        self.buffers = buffers;
        self.cfg.lr = lr;
        Ok(())
    }
}
