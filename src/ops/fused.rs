//! Fused ops that the graph's fusion pass (`crate::graph::fuse`) runs in place of a chain of nodes.
//!
//! Each one computes what its chain computes, up to rounding; the tests below and the model checks
//! (tests/models.rs, tests/fusion.rs) compare fused and unfused results.

use crate::autograd::needs_grad;
use crate::backend::{AxisGeom, BufferRef};
use crate::error::{Error, Result};
use crate::ops::batchnorm::{batch_norm_then, BatchNormArgs};
use crate::ops::conv::{conv_geom, ConvParams};
use crate::ops::same_device;
use crate::tensor::Tensor;

pub use crate::ops::elementwise::add_relu;

/// Batch norm → ReLU as one op, in training (batch statistics, running statistics updated) or eval:
/// max(BN(x), 0) in the batch norm's normalising pass, and one backward that masks dy by the output
/// inside the batch norm's backward passes. Saves x, and y only where the backend cannot recompute
/// the mask from x (`Backend::recomputes_relu_mask`; the CPU and CUDA backends both can).
pub fn batch_norm_relu(x: &Tensor, a: &BatchNormArgs) -> Result<Tensor> {
    batch_norm_then("batch_norm+relu (fused)", x, a, true, None)
}

/// [`batch_norm_relu`] writing its output into `out` (x's length; the executor's slice of a concat's
/// output, so the concat needs no copy). The result shares `out`.
pub(crate) fn batch_norm_relu_into(
    x: &Tensor,
    a: &BatchNormArgs,
    out: &BufferRef,
) -> Result<Tensor> {
    batch_norm_then("batch_norm+relu (fused)", x, a, true, Some(out))
}

/// An eval-mode batch norm's tensors, to fold into the preceding convolution.
#[derive(Debug, Clone, Copy)]
pub struct FoldedBn<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub eps: f32,
}

/// Inference only: conv(x, w, b) → [batch norm with running statistics] → [ReLU] as one convolution.
/// The batch norm is folded into the weights and bias, per output channel c with
/// s = γ_c / √(σ²_c + ε): W'_c = s·W_c, b'_c = (b_c − μ_c)·s + β_c (both computed on the device by
/// the backend's eval batch norm over the weight rows); the ReLU runs in the convolution's epilogue.
pub fn conv_bn_relu_eval(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: &ConvParams,
    bn: Option<FoldedBn>,
    relu: bool,
) -> Result<Tensor> {
    let op = "conv+bn+relu (fused)";
    let mut all = vec![x, w];
    all.extend(bias);
    if let Some(bn) = &bn {
        all.extend([bn.weight, bn.bias, bn.running_mean, bn.running_var]);
    }
    same_device(op, &all)?;
    if needs_grad(&all) {
        return Err(Error::Autograd(format!(
            "{op} is an inference op: run it under no_grad (the executor fuses only in eval mode)"
        )));
    }
    let g = conv_geom(op, x.shape(), w.shape(), bias.map(|b| b.shape()), p)?;
    let be = x.backend();
    let folded = match bn {
        None => None,
        Some(bn) => {
            for (what, t) in [
                ("weight", bn.weight),
                ("bias", bn.bias),
                ("running_mean", bn.running_mean),
                ("running_var", bn.running_var),
            ] {
                if t.shape() != [g.c_out] {
                    return Err(Error::shape(
                        op,
                        format!(
                            "batch norm {what} {:?} does not match the convolution's {} output channels",
                            t.shape(),
                            g.c_out
                        ),
                    ));
                }
            }
            let rows = AxisGeom {
                outer: 1,
                axis: g.c_out,
                inner: w.numel() / g.c_out,
            };
            let zeros = be.full(g.c_out, 0.0)?;
            // s·(W − 0) + 0, row by row
            let wf = be.batch_norm_eval(
                w.buf(),
                Some(bn.weight.buf()),
                None,
                &*zeros,
                bn.running_var.buf(),
                rows,
                bn.eps,
            )?;
            let per_channel = AxisGeom {
                outer: 1,
                axis: g.c_out,
                inner: 1,
            };
            // s·(b − μ) + β
            let bf = be.batch_norm_eval(
                bias.map_or(&*zeros, |b| b.buf()),
                Some(bn.weight.buf()),
                Some(bn.bias.buf()),
                bn.running_mean.buf(),
                bn.running_var.buf(),
                per_channel,
                bn.eps,
            )?;
            Some((wf, bf))
        }
    };
    let (wbuf, bbuf) = match &folded {
        Some((wf, bf)) => (&**wf, Some(&**bf)),
        None => (w.buf(), bias.map(|b| b.buf())),
    };
    let ybuf = if relu {
        be.conv_forward_relu(x.buf(), wbuf, bbuf, &g)?
    } else {
        be.conv_forward(x.buf(), wbuf, bbuf, &g)?
    };
    let mut yshape = vec![g.n, g.c_out];
    yshape.extend_from_slice(&g.output[3 - (x.rank() - 2)..]);
    Ok(x.sibling(ybuf, yshape))
}
