//! Optimisers, learning-rate schedules and gradient clipping, numerically as `torch.optim`.
//!
//! Parameters are `(name, tensor)` pairs: dotted PyTorch `state_dict` names and leaf tensors made with
//! [`Tensor::with_grad`]. They are organised in [`ParamGroup`]s, each with its own weight decay and a
//! learning-rate scale; [`param_groups_no_decay`] is the usual split that exempts biases and
//! batch-norm parameters from weight decay.
//!
//! An [`Optimizer`] ([`Sgd`], [`AdamW`]) reads each parameter's `grad()` and updates the parameter in
//! place, outside autograd, with [`Tensor::axpby_`] and elementwise ops run under [`crate::no_grad`]:
//! everything stays on the parameters' device, nothing goes through host memory. Parameters without a
//! gradient are skipped, as PyTorch does.
//!
//! A schedule ([`LrSchedule`]) is a pure function of the step giving the learning rate; the training
//! loop sets it before each step:
//!
//! ```no_run
//! # use vidgrad::{optim::*, Tensor, Result};
//! # fn run(
//! #     params: Vec<(String, Tensor)>,
//! #     mut loss_of_step: impl FnMut(usize) -> Result<Tensor>,
//! # ) -> Result<()> {
//! let base_lr = 0.1;
//! let mut opt = Sgd::new(
//!     param_groups_no_decay(params, 1e-4),
//!     SgdConfig { lr: base_lr, momentum: 0.9, ..Default::default() },
//! )?;
//! let schedule = LrSchedule::cosine(100, 0.0).with_warmup(0.1, 5);
//! for step in 0..100 {
//!     opt.set_lr(schedule.lr(base_lr, step));
//!     opt.zero_grad();
//!     loss_of_step(step)?.backward()?;
//!     opt.clip_grad_norm(1.0)?;
//!     opt.step()?;
//! }
//! # Ok(()) }
//! ```
//!
//! Optimiser state (momentum buffers, Adam moments, step counts, the learning rate) is exported by
//! [`Optimizer::state_dict`] as named tensors and scalars and restored by
//! [`Optimizer::load_state_dict`], so that a resumed run continues bit-identically.

mod adamw;
mod schedule;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::LrSchedule;
pub use sgd::{Sgd, SgdConfig};

use std::collections::HashSet;

use crate::autograd::no_grad;
use crate::error::{arg_bail, Error, Result};
use crate::tensor::Tensor;

/// Parameters that share a weight decay and a learning-rate scale (PyTorch's param_groups).
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// `(state_dict name, leaf tensor that requires grad)`.
    pub params: Vec<(String, Tensor)>,
    /// L2 penalty for SGD, decoupled decay for AdamW; 0 switches it off.
    pub weight_decay: f32,
    /// This group's learning rate is the optimiser's times `lr_scale` (1 by default), so schedules act
    /// on every group alike.
    pub lr_scale: f32,
}

impl ParamGroup {
    pub fn new(params: Vec<(String, Tensor)>, weight_decay: f32) -> ParamGroup {
        ParamGroup {
            params,
            weight_decay,
            lr_scale: 1.0,
        }
    }

    pub fn with_lr_scale(mut self, lr_scale: f32) -> ParamGroup {
        self.lr_scale = lr_scale;
        self
    }
}

/// Whether a parameter is exempt from weight decay in the common recipe: biases (names ending in
/// `.bias`) and 1-d weights, i.e. the affine parameters of batch/group norm. Decaying those only
/// shrinks the normalisation's scale and shift, which does not regularise.
pub fn is_no_decay(name: &str, t: &Tensor) -> bool {
    name.ends_with(".bias") || name == "bias" || t.rank() == 1
}

/// Split `params` into `[decayed (weight_decay), exempt (0)]` by [`is_no_decay`], keeping their order.
/// A group that would be empty is left out.
pub fn param_groups_no_decay(params: Vec<(String, Tensor)>, weight_decay: f32) -> Vec<ParamGroup> {
    let (exempt, decay): (Vec<_>, Vec<_>) =
        params.into_iter().partition(|(n, t)| is_no_decay(n, t));
    [
        ParamGroup::new(decay, weight_decay),
        ParamGroup::new(exempt, 0.0),
    ]
    .into_iter()
    .filter(|g| !g.params.is_empty())
    .collect()
}

/// An optimiser's resumable state: per-parameter buffers and scalars, named
/// `state.<param name>.<buffer>` (PyTorch's names: `momentum_buffer`, `exp_avg`, `exp_avg_sq`, `step`)
/// plus `lr`. Tensors are independent copies on the parameters' device.
#[derive(Debug, Clone, Default)]
pub struct OptimizerState {
    pub tensors: Vec<(String, Tensor)>,
    /// Scalars as f64: step counts stay exact far beyond f32's 2^24.
    pub scalars: Vec<(String, f64)>,
}

impl OptimizerState {
    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    pub fn scalar(&self, name: &str) -> Option<f64> {
        self.scalars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
}

/// What every optimiser offers.
pub trait Optimizer {
    /// Update every parameter that has a gradient, using the gradients as they are now.
    fn step(&mut self) -> Result<()>;
    fn param_groups(&self) -> &[ParamGroup];
    /// The learning rate (each group uses it times its `lr_scale`).
    fn lr(&self) -> f32;
    /// Set the learning rate, e.g. from an [`LrSchedule`] before each step.
    fn set_lr(&mut self, lr: f32);
    /// The state as named tensors (copies) and scalars; see [`OptimizerState`].
    fn state_dict(&self) -> Result<OptimizerState>;
    /// Replace the state with `state` (copied onto the parameters' device). Parameters that `state`
    /// has no entries for start afresh; unknown names or wrong shapes are errors.
    fn load_state_dict(&mut self, state: &OptimizerState) -> Result<()>;

    /// Drop every parameter's gradient (PyTorch's `zero_grad(set_to_none=True)`).
    fn zero_grad(&self) {
        for g in self.param_groups() {
            zero_grad(g.params.iter().map(|(_, t)| t));
        }
    }

    /// [`clip_grad_norm`] over all of this optimiser's parameters.
    fn clip_grad_norm(&self, max_norm: f32) -> Result<f32> {
        clip_grad_norm(
            self.param_groups()
                .iter()
                .flat_map(|g| g.params.iter().map(|(_, t)| t)),
            max_norm,
        )
    }
}

/// Drop the gradients of `params`.
pub fn zero_grad<'a>(params: impl IntoIterator<Item = &'a Tensor>) {
    for t in params {
        t.zero_grad();
    }
}

/// Like `torch.nn.utils.clip_grad_norm_`: the L2 norm of all gradients together, and when it exceeds
/// `max_norm` every gradient is scaled by `max_norm / (norm + 1e-6)`. Returns the norm before
/// clipping. The norm is summed on the device; only the final scalar comes to the host.
pub fn clip_grad_norm<'a>(
    params: impl IntoIterator<Item = &'a Tensor>,
    max_norm: f32,
) -> Result<f32> {
    if max_norm.is_nan() || max_norm < 0.0 {
        arg_bail!("clip_grad_norm", "max_norm must be >= 0, got {max_norm}");
    }
    no_grad(|| {
        let grads: Vec<(&Tensor, Tensor)> = params
            .into_iter()
            .filter_map(|p| p.grad().map(|g| (p, g)))
            .collect();
        let mut sum_sq: Option<Tensor> = None;
        for (_, g) in &grads {
            let s = g.mul(g)?.sum()?;
            sum_sq = Some(match sum_sq {
                None => s,
                Some(acc) => acc.add(&s)?,
            });
        }
        let Some(sum_sq) = sum_sq else {
            return Ok(0.0);
        };
        let total = sum_sq.item()?.sqrt();
        // PyTorch clamps the coefficient at 1 rather than comparing the norm with max_norm.
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for (p, g) in &grads {
                set_grad(p, &g.mul_scalar(coef)?)?;
            }
        }
        Ok(total)
    })
}

/// Replace a leaf's gradient with `g`. The old gradient is not scaled in place because autograd may
/// share one gradient tensor between several leaves (the two inputs of an add).
fn set_grad(p: &Tensor, g: &Tensor) -> Result<()> {
    p.zero_grad();
    // Backpropagating from a leaf stores the upstream gradient as its gradient.
    p.backward_with(g)
}

/// Checks shared by the optimisers' constructors: every parameter requires grad, appears once and has
/// a unique name; decay and lr scale are finite and non-negative.
fn check_groups(op: &'static str, groups: &[ParamGroup]) -> Result<()> {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for (i, g) in groups.iter().enumerate() {
        if !(g.weight_decay >= 0.0 && g.weight_decay.is_finite()) {
            arg_bail!(
                op,
                "group {i}: weight_decay must be >= 0, got {}",
                g.weight_decay
            );
        }
        if !(g.lr_scale >= 0.0 && g.lr_scale.is_finite()) {
            arg_bail!(op, "group {i}: lr_scale must be >= 0, got {}", g.lr_scale);
        }
        for (name, t) in &g.params {
            if !t.requires_grad() {
                arg_bail!(
                    op,
                    "parameter '{name}' {:?} does not require grad (make it with with_grad())",
                    t.shape()
                );
            }
            if !names.insert(name.as_str()) {
                arg_bail!(op, "parameter name '{name}' appears twice");
            }
            if !ids.insert(t.id()) {
                arg_bail!(
                    op,
                    "parameter '{name}' is given twice (under another name too)"
                );
            }
        }
    }
    Ok(())
}

fn check_lr(op: &'static str, lr: f32) -> Result<()> {
    if !(lr >= 0.0 && lr.is_finite()) {
        arg_bail!(op, "lr must be >= 0, got {lr}");
    }
    Ok(())
}

/// Split a state name `state.<param>.<buffer>` into (param, buffer).
fn split_state_name<'a>(op: &'static str, name: &'a str) -> Result<(&'a str, &'a str)> {
    name.strip_prefix("state.")
        .and_then(|rest| rest.rsplit_once('.'))
        .ok_or_else(|| {
            Error::arg(
                op,
                format!("state name '{name}' is not of the form state.<param>.<buffer>"),
            )
        })
}

/// A state tensor copied onto `param`'s device after checking its shape.
fn load_buffer(op: &'static str, name: &str, src: &Tensor, param: &Tensor) -> Result<Tensor> {
    if src.shape() != param.shape() {
        arg_bail!(
            op,
            "state '{name}' has shape {:?}, its parameter {:?}",
            src.shape(),
            param.shape()
        );
    }
    src.to_device(param.device())?.copy()
}

/// (group, index) of the parameter called `name`.
fn find_param(op: &'static str, groups: &[ParamGroup], name: &str) -> Result<(usize, usize)> {
    for (gi, g) in groups.iter().enumerate() {
        if let Some(pi) = g.params.iter().position(|(n, _)| n == name) {
            return Ok((gi, pi));
        }
    }
    arg_bail!(op, "state for unknown parameter '{name}'")
}
