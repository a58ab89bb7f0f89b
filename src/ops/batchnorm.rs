//! Batch normalisation over the channel axis of [N, C, ...] (BatchNorm1d/2d/3d).
//!
//! Training: normalise with the batch's mean and biased variance and update the running statistics in
//! place with `momentum` (the running variance takes the unbiased estimate, as PyTorch). Eval: normalise
//! with the running statistics.
//!
//! Inside a [`crate::dist::sync_bn::scope`] (data-parallel training with `--sync-bn`), training uses
//! the statistics of the batch of every rank together and its backward the gradients of that whole
//! batch (the module docs there give the arithmetic), composed from the same backend passes.

use crate::autograd::{needs_grad, record};
use crate::backend::{AxisGeom, Backend, BackendBuffer, BufferRef, UnaryOp};
use crate::dist::sync_bn::{self, combine_statistics};
use crate::dist::Collective;
use crate::error::{arg_bail, shape_bail, Error, Result};
use crate::ops::same_device;
use crate::tensor::Tensor;

use std::sync::Arc;

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
    batch_norm_then("batch_norm", x, a, false, None)
}

/// [`batch_norm`], followed by max(y, 0) with `relu` in the same pass (the fusion pass's BN → ReLU,
/// `crate::ops::fused::batch_norm_relu`): the backward masks dy inside the batch norm's backward
/// passes, by ReLU's mask recomputed from x in training where the backend can (then only x is kept)
/// or else by the saved output (x and y kept, as the unfused pair); one buffer (not two) each way.
/// With `out` (x's length: a producer's slice of a concat's output, from [`Backend::split`]), y is
/// written there and the result shares it.
pub(crate) fn batch_norm_then(
    op: &'static str,
    x: &Tensor,
    a: &BatchNormArgs,
    relu: bool,
    out: Option<&BufferRef>,
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
    if let Some(out) = out.filter(|o| o.len() != x.numel()) {
        shape_bail!(op, "output buffer of {} values for input {xs:?}", out.len());
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

    // whether this training op normalises with every rank's batch (--sync-bn)
    let synced = a.training && sync_bn::with_active(|d| d.is_some());
    let (ybuf, mean, var, count) = if a.training {
        let (y, mean, var, count) = if synced {
            sync_bn::with_active(|d| {
                let d = in_scope(op, d)?;
                let (mean, var, total) = global_statistics(op, d, be, x.buf(), g, a.eps)?;
                let y = be.batch_norm_eval(x.buf(), wbuf, bbuf, &*mean, &*var, g, a.eps)?;
                if relu {
                    be.relu_in_place(&*y)?; // y is new: nothing else holds it
                }
                Ok::<_, Error>((y, mean, var, total))
            })?
        } else {
            if count < 2 {
                shape_bail!(
                    op,
                    "training needs more than one value per channel, input {xs:?}"
                );
            }
            let (y, stats) = match out {
                Some(out) => {
                    let stats =
                        be.batch_norm_train_into(x.buf(), wbuf, bbuf, g, a.eps, relu, &**out)?;
                    (out.clone(), stats)
                }
                None => be.batch_norm_train(x.buf(), wbuf, bbuf, g, a.eps, relu)?,
            };
            (y, stats.mean, stats.var, count)
        };
        if let (Some(rm), Some(rv)) = (a.running_mean, a.running_var) {
            let m = a.momentum;
            be.axpby(rm.buf(), m, &*mean, 1.0 - m)?;
            let unbiased = be.unary(&*var, UnaryOp::Scale(count as f32 / (count - 1) as f32))?;
            be.axpby(rv.buf(), m, &*unbiased, 1.0 - m)?;
        }
        (y, mean, var, count)
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
        (y, mean, var, count)
    };
    // the paths without a write-into kernel (synchronised, eval) copy into `out`
    let ybuf = match out {
        Some(out) if !Arc::ptr_eq(out, &ybuf) => {
            be.copy_into(&**out, &*ybuf)?;
            out.clone()
        }
        _ => ybuf,
    };
    let y = x.sibling(ybuf, xs.to_vec());

    let mut inputs: Vec<&Tensor> = vec![x];
    inputs.extend(a.weight);
    inputs.extend(a.bias);
    if !needs_grad(&inputs) {
        return Ok(y);
    }
    let (xd, wd) = (x.detach(), a.weight.map(|w| w.detach()));
    // A fused ReLU's mask for the backward: recomputed from x where the backend can (the output is
    // then not kept: a max pool after it keeps only its argmax, so y is freed), else the saved output.
    let mask_from_x = relu && a.training && !synced && be.recomputes_relu_mask();
    let yd = (relu && !mask_from_x).then(|| y.detach());
    let bd = mask_from_x.then(|| a.bias.map(|b| b.detach())).flatten();
    let (has_w, has_b, eps, training) = (a.weight.is_some(), a.bias.is_some(), a.eps, a.training);
    Ok(record(
        op,
        &inputs,
        y,
        Box::new(move |gy| {
            let be = gy.backend();
            let (wbuf, ybuf) = (wd.as_ref().map(|w| w.buf()), yd.as_ref().map(|y| y.buf()));
            // synchronised: this rank's fixed-statistics gradients, then dx corrected with every
            // rank's sums
            let local = if mask_from_x {
                let bbuf = bd.as_ref().map(|b| b.buf());
                be.batch_norm_relu_backward_from_input(
                    gy.buf(),
                    xd.buf(),
                    wbuf,
                    bbuf,
                    &*mean,
                    &*var,
                    g,
                    eps,
                )?
            } else {
                be.batch_norm_backward(
                    gy.buf(),
                    xd.buf(),
                    wbuf,
                    &*mean,
                    &*var,
                    g,
                    eps,
                    training && !synced,
                    ybuf,
                )?
            };
            let gr = if synced {
                sync_bn::with_active(|d| {
                    let d = in_scope(op, d)?;
                    let dx =
                        global_batch_dx(d, be, &local, xd.buf(), wbuf, &mean, &var, g, eps, count)?;
                    Ok::<_, Error>(crate::backend::BnGrads { dx, ..local })
                })?
            } else {
                local
            };
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

/// The collective of the synchronising scope, or an error: a synchronised batch norm's backward run
/// outside one would give this rank's gradients only.
fn in_scope<'a>(op: &str, d: Option<&'a dyn Collective>) -> Result<&'a dyn Collective> {
    d.ok_or_else(|| {
        Error::Distributed(format!(
            "{op}: a synchronised batch norm (--sync-bn) ran outside dist::sync_bn::scope; its \
             backward needs the other ranks' sums"
        ))
    })
}

/// The global batch's per-channel mean, biased variance (on x's device) and value count per channel:
/// this rank's statistics (the backend's training pass, whose normalised output is not used) gathered
/// from every rank and combined (`sync_bn::combine_statistics`).
fn global_statistics(
    op: &str,
    dist: &dyn Collective,
    be: &dyn Backend,
    x: &dyn BackendBuffer,
    g: AxisGeom,
    eps: f32,
) -> Result<(BufferRef, BufferRef, usize)> {
    let (_, local) = be.batch_norm_train(x, None, None, g, eps, false)?;
    let mut mine = vec![(g.outer * g.inner) as f32];
    mine.extend(be.to_host(&*local.mean)?);
    mine.extend(be.to_host(&*local.var)?);
    let mut all = vec![0.0; mine.len() * dist.world_size()];
    dist.all_gather(&mine, &mut all)?;
    let (mean, var, total) =
        combine_statistics(&all, g.axis).map_err(|e| Error::Distributed(format!("{op}: {e}")))?;
    Ok((be.from_host(&mean)?, be.from_host(&var)?, total))
}

/// dx of a batch norm normalised with the global batch's statistics: `local` holds this rank's
/// fixed-statistics gradients (dx = w·invstd·dy, dweight = Σdy·x̂, dbias = Σdy over this rank's
/// values); the sums are all-reduced, and dx gains w·invstd·(−ΣΣdy/M − x̂·ΣΣdy·x̂/M), M the global
/// count, computed as a normalising pass over x with that per-channel weight and bias.
#[allow(clippy::too_many_arguments)]
fn global_batch_dx(
    dist: &dyn Collective,
    be: &dyn Backend,
    local: &crate::backend::BnGrads,
    x: &dyn BackendBuffer,
    w: Option<&dyn BackendBuffer>,
    mean: &BufferRef,
    var: &BufferRef,
    g: AxisGeom,
    eps: f32,
    global_count: usize,
) -> Result<BufferRef> {
    let c = g.axis;
    let mut sums = be.to_host(&*local.dbias)?;
    sums.extend(be.to_host(&*local.dweight)?);
    dist.all_reduce_sum(&mut sums)?;
    let var_host = be.to_host(&**var)?;
    let w = match w {
        Some(w) => be.to_host(w)?,
        None => vec![1.0; c],
    };
    let (mut scale, mut shift) = (vec![0f32; c], vec![0f32; c]);
    for k in 0..c {
        // w·invstd/M in f64, as the backends compute invstd
        let f = w[k] as f64 / (var_host[k] as f64 + eps as f64).sqrt() / global_count as f64;
        shift[k] = (-f * sums[k] as f64) as f32;
        scale[k] = (-f * sums[c + k] as f64) as f32;
    }
    let (scale, shift) = (be.from_host(&scale)?, be.from_host(&shift)?);
    let correction =
        be.batch_norm_eval(x, Some(&*scale), Some(&*shift), &**mean, &**var, g, eps)?;
    be.axpby(&*local.dx, 1.0, &*correction, 1.0)?;
    Ok(local.dx.clone())
}
