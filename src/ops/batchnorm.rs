//! Batch normalisation over the channel axis of [N, C, ...] (BatchNorm1d/2d/3d).
//!
//! Training: normalise with the batch's mean and biased variance and update the running statistics in
//! place with `momentum` (the running variance takes the unbiased estimate, as PyTorch). Eval: normalise
//! with the running statistics.

use crate::autograd::{needs_grad, record};
use crate::backend::{AxisGeom, UnaryOp};
use crate::error::{arg_bail, shape_bail, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

/// The optional tensors and settings of a batch-norm call.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormArgs<'a> {
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub running_mean: Option<&'a Tensor>,
    pub running_var: Option<&'a Tensor>,
    pub training: bool,
    pub momentum: f32,
    pub eps: f32,
}

impl Default for BatchNormArgs<'_> {
    fn default() -> Self {
        BatchNormArgs {
            weight: None,
            bias: None,
            running_mean: None,
            running_var: None,
            training: true,
            momentum: 0.1,
            eps: 1e-5,
        }
    }
}

/// y = (x − mean) / sqrt(var + eps) · weight + bias, per channel.
pub fn batch_norm(x: &Tensor, a: &BatchNormArgs) -> Result<Tensor> {
    batch_norm_then("batch_norm", x, a, false)
}

/// [`batch_norm`], followed by max(y, 0) with `relu` in the same pass (the fusion pass's BN → ReLU,
/// `crate::ops::fused::batch_norm_relu`): the backward masks dy by the saved output inside the batch
/// norm's backward passes, so the chain keeps x and y as the unfused pair does but makes one buffer
/// (not two) each way.
pub(crate) fn batch_norm_then(
    op: &'static str,
    x: &Tensor,
    a: &BatchNormArgs,
    relu: bool,
) -> Result<Tensor> {
    let xs = x.shape();
    if xs.len() < 2 {
        shape_bail!(op, "input must be [N, C, ...], got {xs:?}");
    }
    let c = xs[1];
    let mut all: Vec<&Tensor> = vec![x];
    for (name, t) in [
        ("weight", a.weight),
        ("bias", a.bias),
        ("running_mean", a.running_mean),
        ("running_var", a.running_var),
    ] {
        if let Some(t) = t {
            if t.shape() != [c] {
                shape_bail!(op, "{name} {:?} must be [{c}] for input {xs:?}", t.shape());
            }
            all.push(t);
        }
    }
    same_device(op, &all)?;
    if a.running_mean.is_some() != a.running_var.is_some() {
        arg_bail!(op, "give both running_mean and running_var, or neither");
    }
    if a.eps.is_nan() || a.eps <= 0.0 {
        arg_bail!(op, "eps must be positive, got {}", a.eps);
    }
    let g = AxisGeom {
        outer: xs[0],
        axis: c,
        inner: xs[2..].iter().product(),
    };
    let count = g.outer * g.inner;
    let be = x.backend();
    let wbuf = a.weight.map(|t| t.buf());
    let bbuf = a.bias.map(|t| t.buf());

    let (ybuf, mean, var) = if a.training {
        if count < 2 {
            shape_bail!(
                op,
                "training needs more than one value per channel, input {xs:?}"
            );
        }
        let (y, stats) = be.batch_norm_train(x.buf(), wbuf, bbuf, g, a.eps, relu)?;
        if let (Some(rm), Some(rv)) = (a.running_mean, a.running_var) {
            let m = a.momentum;
            be.axpby(rm.buf(), m, &*stats.mean, 1.0 - m)?;
            let unbiased = be.unary(
                &*stats.var,
                UnaryOp::Scale(count as f32 / (count - 1) as f32),
            )?;
            be.axpby(rv.buf(), m, &*unbiased, 1.0 - m)?;
        }
        (y, stats.mean, stats.var)
    } else {
        let (Some(rm), Some(rv)) = (a.running_mean, a.running_var) else {
            arg_bail!(op, "eval mode needs running_mean and running_var");
        };
        // Snapshot the running statistics: an optimiser step may change them before backward.
        let (mean, var) = (be.copy(rm.buf())?, be.copy(rv.buf())?);
        let y = be.batch_norm_eval(x.buf(), wbuf, bbuf, &*mean, &*var, g, a.eps)?;
        if relu {
            be.relu_in_place(&*y)?; // y is new: nothing else holds it
        }
        (y, mean, var)
    };
    let y = x.sibling(ybuf, xs.to_vec());

    let mut inputs: Vec<&Tensor> = vec![x];
    inputs.extend(a.weight);
    inputs.extend(a.bias);
    if !needs_grad(&inputs) {
        return Ok(y);
    }
    let (xd, wd) = (x.detach(), a.weight.map(|w| w.detach()));
    let yd = relu.then(|| y.detach());
    let (has_w, has_b, eps, training) = (a.weight.is_some(), a.bias.is_some(), a.eps, a.training);
    Ok(record(
        op,
        &inputs,
        y,
        Box::new(move |gy| {
            let be = gy.backend();
            let gr = be.batch_norm_backward(
                gy.buf(),
                xd.buf(),
                wd.as_ref().map(|w| w.buf()),
                &*mean,
                &*var,
                g,
                eps,
                training,
                yd.as_ref().map(|y| y.buf()),
            )?;
            let mut out = vec![Some(xd.sibling(gr.dx, xd.shape().to_vec()))];
            if has_w {
                out.push(Some(xd.sibling(gr.dweight, vec![g.axis])));
            }
            if has_b {
                out.push(Some(xd.sibling(gr.dbias, vec![g.axis])));
            }
            Ok(out)
        }),
    ))
}
