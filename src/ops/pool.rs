//! Max, average and adaptive average pooling over [N, C, (D,) H, W], PyTorch's window rules exactly.
//!
//! Output size: floor((in + 2p − k) / s) + 1, or with ceil_mode the ceiling, minus one when the last
//! window would start inside the right padding. Average pooling divides by the window clipped to the
//! padded input (count_include_pad=True) or to the input (False).

use crate::autograd::{needs_grad, record};
use crate::backend::{AdaptivePoolGeom, PoolGeom};
use crate::error::{arg_bail, shape_bail, Result};
use crate::ops::{pad3, same_device, spatial3};
use crate::tensor::Tensor;

/// Kernel, stride (empty = the kernel) and padding (empty = 0) per spatial dim, and ceil_mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolParams {
    pub kernel: Vec<usize>,
    pub stride: Vec<usize>,
    pub padding: Vec<usize>,
    pub ceil_mode: bool,
}

impl PoolParams {
    pub fn new(kernel: &[usize]) -> Self {
        PoolParams {
            kernel: kernel.to_vec(),
            stride: vec![],
            padding: vec![],
            ceil_mode: false,
        }
    }
    pub fn stride(mut self, s: &[usize]) -> Self {
        self.stride = s.to_vec();
        self
    }
    pub fn padding(mut self, p: &[usize]) -> Self {
        self.padding = p.to_vec();
        self
    }
    pub fn ceil_mode(mut self, c: bool) -> Self {
        self.ceil_mode = c;
        self
    }
}

/// PyTorch's pooling output size, or None when no window fits.
pub(crate) fn pool_out_size(
    input: usize,
    k: usize,
    s: usize,
    p: usize,
    ceil_mode: bool,
) -> Option<usize> {
    let span = (input + 2 * p).checked_sub(k)?;
    let mut out = if ceil_mode {
        span.div_ceil(s)
    } else {
        span / s
    } + 1;
    // The last window must start inside the input or the left padding.
    if ceil_mode && (out - 1) * s >= input + p {
        out -= 1;
    }
    Some(out)
}

fn check_input(op: &'static str, x: &[usize]) -> Result<usize> {
    if !(x.len() == 4 || x.len() == 5) {
        shape_bail!(op, "input must be [N,C,H,W] or [N,C,D,H,W], got {x:?}");
    }
    if x.contains(&0) {
        shape_bail!(op, "empty input {x:?}");
    }
    Ok(x.len() - 2)
}

pub(crate) fn pool_geom(op: &'static str, x: &[usize], p: &PoolParams) -> Result<PoolGeom> {
    let nsp = check_input(op, x)?;
    let kernel = p.kernel.clone();
    let stride = if p.stride.is_empty() {
        kernel.clone()
    } else {
        p.stride.clone()
    };
    let padding = if p.padding.is_empty() {
        vec![0; nsp]
    } else {
        p.padding.clone()
    };
    if kernel.len() != nsp || stride.len() != nsp || padding.len() != nsp {
        arg_bail!(
            op,
            "kernel {kernel:?}, stride {stride:?}, padding {padding:?} need {nsp} entries each for input {x:?}"
        );
    }
    if kernel.contains(&0) || stride.contains(&0) {
        arg_bail!(
            op,
            "kernel {kernel:?} and stride {stride:?} must be positive"
        );
    }
    let mut out = Vec::with_capacity(nsp);
    for i in 0..nsp {
        if 2 * padding[i] > kernel[i] {
            arg_bail!(
                op,
                "padding {padding:?} must be at most half of kernel {kernel:?}"
            );
        }
        match pool_out_size(x[2 + i], kernel[i], stride[i], padding[i], p.ceil_mode) {
            Some(o) => out.push(o),
            None => shape_bail!(
                op,
                "kernel {kernel:?} is larger than the padded input: input {x:?}, padding {padding:?}"
            ),
        }
    }
    Ok(PoolGeom {
        planes: x[0] * x[1],
        input: spatial3(x),
        output: pad3(&out, 1),
        kernel: pad3(&kernel, 1),
        stride: pad3(&stride, 1),
        padding: pad3(&padding, 0),
    })
}

fn out_shape(x: &[usize], out3: &[usize; 3]) -> Vec<usize> {
    let mut s = x[..2].to_vec();
    s.extend_from_slice(&out3[3 - (x.len() - 2)..]);
    s
}

/// Max pooling; gradients go to the first maximum of each window (NaN wins), PyTorch's rule. In
/// training the forward saves each window's argmax (a 1-, 2- or 4-byte offset inside the window) and
/// the backward scatters through it; without a tape nothing is saved.
pub fn max_pool(x: &Tensor, p: &PoolParams) -> Result<Tensor> {
    same_device("max_pool", &[x])?;
    let g = pool_geom("max_pool", x.shape(), p)?;
    let y_shape = out_shape(x.shape(), &g.output);
    if !needs_grad(&[x]) {
        return Ok(x.sibling(x.backend().max_pool_forward(x.buf(), &g)?, y_shape));
    }
    let (ybuf, argmax) = x.backend().max_pool_forward_argmax(x.buf(), &g)?;
    let y = x.sibling(ybuf, y_shape);
    let xshape = x.shape().to_vec();
    Ok(record(
        "max_pool",
        &[x],
        y,
        Box::new(move |gy| {
            let gx = gy.backend().max_pool_backward(&*argmax, gy.buf(), &g)?;
            Ok(vec![Some(gy.sibling(gx, xshape))])
        }),
    ))
}

/// Average pooling.
pub fn avg_pool(x: &Tensor, p: &PoolParams, count_include_pad: bool) -> Result<Tensor> {
    same_device("avg_pool", &[x])?;
    let g = pool_geom("avg_pool", x.shape(), p)?;
    let ybuf = x
        .backend()
        .avg_pool_forward(x.buf(), &g, count_include_pad)?;
    let y = x.sibling(ybuf, out_shape(x.shape(), &g.output));
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let xshape = x.shape().to_vec();
    Ok(record(
        "avg_pool",
        &[x],
        y,
        Box::new(move |gy| {
            let gx = gy
                .backend()
                .avg_pool_backward(gy.buf(), &g, count_include_pad)?;
            Ok(vec![Some(gy.sibling(gx, xshape))])
        }),
    ))
}

/// Adaptive average pooling to `output` (one entry per spatial dim).
pub fn adaptive_avg_pool(x: &Tensor, output: &[usize]) -> Result<Tensor> {
    same_device("adaptive_avg_pool", &[x])?;
    let nsp = check_input("adaptive_avg_pool", x.shape())?;
    if output.len() != nsp || output.contains(&0) {
        arg_bail!(
            "adaptive_avg_pool",
            "output size {output:?} needs {nsp} positive entries for input {:?}",
            x.shape()
        );
    }
    let g = AdaptivePoolGeom {
        planes: x.shape()[0] * x.shape()[1],
        input: spatial3(x.shape()),
        output: pad3(output, 1),
    };
    let ybuf = x.backend().adaptive_avg_pool_forward(x.buf(), &g)?;
    let y = x.sibling(ybuf, out_shape(x.shape(), &g.output));
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let xshape = x.shape().to_vec();
    Ok(record(
        "adaptive_avg_pool",
        &[x],
        y,
        Box::new(move |gy| {
            let gx = gy.backend().adaptive_avg_pool_backward(gy.buf(), &g)?;
            Ok(vec![Some(gy.sibling(gx, xshape))])
        }),
    ))
}

/// Global average pooling: [N, C, ...] → [N, C, 1, ...].
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let nsp = check_input("global_avg_pool", x.shape())?;
    adaptive_avg_pool(x, &vec![1; nsp])
}
