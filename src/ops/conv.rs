//! conv2d and conv3d: one N-d implementation (2-d is 3-d with a depth of one).
//!
//! Backward: dx = conv_backward_data(dy, w), dw = conv_backward_weight(x, dy), db = Σ dy over N and space.

use crate::autograd::{needs_grad, record};
use crate::backend::{AxisGeom, ConvGeom};
use crate::error::{arg_bail, shape_bail, Result};
use crate::ops::{pad3, same_device, spatial3};
use crate::tensor::Tensor;

/// Stride, padding and dilation per spatial dim (one entry each, 2 for conv2d, 3 for conv3d; an empty
/// list means the default 1 / 0 / 1), and the number of groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub dilation: Vec<usize>,
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        ConvParams {
            stride: vec![],
            padding: vec![],
            dilation: vec![],
            groups: 1,
        }
    }
}

impl ConvParams {
    pub fn stride(mut self, s: &[usize]) -> Self {
        self.stride = s.to_vec();
        self
    }
    pub fn padding(mut self, p: &[usize]) -> Self {
        self.padding = p.to_vec();
        self
    }
    pub fn dilation(mut self, d: &[usize]) -> Self {
        self.dilation = d.to_vec();
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// Output size along one dim, or None when the (dilated) kernel does not fit the padded input.
pub(crate) fn conv_out_size(input: usize, k: usize, s: usize, p: usize, d: usize) -> Option<usize> {
    let span = d * (k - 1) + 1;
    (input + 2 * p).checked_sub(span).map(|r| r / s + 1)
}

/// Check shapes and resolve the 3-d geometry of a convolution.
pub(crate) fn conv_geom(
    op: &'static str,
    x: &[usize],
    w: &[usize],
    bias: Option<&[usize]>,
    p: &ConvParams,
) -> Result<ConvGeom> {
    if !(x.len() == 4 || x.len() == 5) {
        shape_bail!(op, "input must be [N,C,H,W] or [N,C,D,H,W], got {x:?}");
    }
    if w.len() != x.len() {
        shape_bail!(
            op,
            "weight {w:?} must have the input's rank ({}); input {x:?}",
            x.len()
        );
    }
    let nsp = x.len() - 2;
    let list = |name: &str, v: &[usize], default: usize| -> Result<Vec<usize>> {
        match v.len() {
            0 => Ok(vec![default; nsp]),
            l if l == nsp => Ok(v.to_vec()),
            l => Err(crate::Error::arg(
                op,
                format!("{name} has {l} entries for {nsp} spatial dims (input {x:?})"),
            )),
        }
    };
    let (stride, padding, dilation) = (
        list("stride", &p.stride, 1)?,
        list("padding", &p.padding, 0)?,
        list("dilation", &p.dilation, 1)?,
    );
    if stride.contains(&0) || dilation.contains(&0) {
        arg_bail!(
            op,
            "stride {stride:?} and dilation {dilation:?} must be positive"
        );
    }
    let groups = p.groups;
    let (c_in, c_out) = (x[1], w[0]);
    if groups == 0 || c_in % groups != 0 || c_out % groups != 0 {
        shape_bail!(
            op,
            "channels not divisible by groups={groups}: input {x:?} ({c_in} channels), weight {w:?} \
             ({c_out} output channels)"
        );
    }
    if w[1] * groups != c_in {
        shape_bail!(
            op,
            "weight {w:?} expects {} input channels (= {} × groups {groups}), input {x:?} has {c_in}",
            w[1] * groups,
            w[1]
        );
    }
    if w.contains(&0) || x.contains(&0) {
        shape_bail!(op, "empty input {x:?} or weight {w:?}");
    }
    if let Some(b) = bias {
        if b != [c_out] {
            shape_bail!(op, "bias {b:?} must be [{c_out}] for weight {w:?}");
        }
    }
    let mut out = Vec::with_capacity(nsp);
    for i in 0..nsp {
        match conv_out_size(x[2 + i], w[2 + i], stride[i], padding[i], dilation[i]) {
            Some(o) => out.push(o),
            None => shape_bail!(
                op,
                "kernel {:?} (dilation {dilation:?}) is larger than the padded input: input {x:?}, \
                 padding {padding:?}",
                &w[2..]
            ),
        }
    }
    Ok(ConvGeom {
        n: x[0],
        c_in,
        c_out,
        groups,
        input: spatial3(x),
        output: pad3(&out, 1),
        kernel: pad3(&w[2..], 1),
        stride: pad3(&stride, 1),
        padding: pad3(&padding, 0),
        dilation: pad3(&dilation, 1),
    })
}

/// N-d convolution of x [N, C, (D,) H, W] with w [Cout, C/groups, (kD,) kH, kW] and optional bias [Cout].
pub fn conv(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: &ConvParams) -> Result<Tensor> {
    let op = if x.rank() == 4 { "conv2d" } else { "conv3d" };
    let mut all = vec![x, w];
    all.extend(bias);
    same_device(op, &all)?;
    let g = conv_geom(op, x.shape(), w.shape(), bias.map(|b| b.shape()), p)?;
    let be = x.backend();
    let ybuf = be.conv_forward(x.buf(), w.buf(), bias.map(|b| b.buf()), &g)?;
    let mut yshape = vec![g.n, g.c_out];
    yshape.extend_from_slice(&g.output[3 - (x.rank() - 2)..]);
    let y = x.sibling(ybuf, yshape);
    if !needs_grad(&all) {
        return Ok(y);
    }
    let (xs, ws) = (x.detach(), w.detach());
    let (need_x, need_w, has_b) = (x.requires_grad(), w.requires_grad(), bias.is_some());
    let need_b = bias.is_some_and(|b| b.requires_grad());
    Ok(record(
        op,
        &all,
        y,
        Box::new(move |gy| {
            let be = gy.backend();
            let gx = if need_x {
                Some(xs.sibling(
                    be.conv_backward_data(gy.buf(), ws.buf(), &g)?,
                    xs.shape().to_vec(),
                ))
            } else {
                None
            };
            let gw = if need_w {
                Some(ws.sibling(
                    be.conv_backward_weight(xs.buf(), gy.buf(), &g)?,
                    ws.shape().to_vec(),
                ))
            } else {
                None
            };
            let mut grads = vec![gx, gw];
            if has_b {
                grads.push(if need_b {
                    let ag = AxisGeom {
                        outer: g.n,
                        axis: g.c_out,
                        inner: g.output_volume(),
                    };
                    Some(gy.sibling(be.sum_to_axis(gy.buf(), ag)?, vec![g.c_out]))
                } else {
                    None
                });
            }
            Ok(grads)
        }),
    ))
}

/// 2-d convolution (x [N, C, H, W]).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> Result<Tensor> {
    if x.rank() != 4 {
        shape_bail!("conv2d", "input must be [N,C,H,W], got {:?}", x.shape());
    }
    let p = ConvParams {
        stride: stride.to_vec(),
        padding: padding.to_vec(),
        dilation: dilation.to_vec(),
        groups,
    };
    conv(x, w, bias, &p)
}

/// 3-d convolution (x [N, C, D, H, W]).
pub fn conv3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: [usize; 3],
    padding: [usize; 3],
    dilation: [usize; 3],
    groups: usize,
) -> Result<Tensor> {
    if x.rank() != 5 {
        shape_bail!("conv3d", "input must be [N,C,D,H,W], got {:?}", x.shape());
    }
    let p = ConvParams {
        stride: stride.to_vec(),
        padding: padding.to_vec(),
        dilation: dilation.to_vec(),
        groups,
    };
    conv(x, w, bias, &p)
}
