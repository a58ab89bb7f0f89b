//! softmax and log_softmax along one dim. Backward from the output y:
//! softmax: dx = y · (dy − Σ dy·y); log_softmax: dx = dy − exp(y) · Σ dy.

use crate::autograd::{needs_grad, record};
use crate::backend::AxisGeom;
use crate::error::Result;
use crate::ops::{resolve_dim, same_device};
use crate::tensor::Tensor;

fn softmax_impl(op: &'static str, x: &Tensor, dim: isize, log: bool) -> Result<Tensor> {
    same_device(op, &[x])?;
    let d = resolve_dim(op, dim, x.shape())?;
    let s = x.shape();
    let g = AxisGeom {
        outer: s[..d].iter().product(),
        axis: s[d],
        inner: s[d + 1..].iter().product(),
    };
    let y = x.sibling(x.backend().softmax_forward(x.buf(), g, log)?, s.to_vec());
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let yd = y.detach();
    Ok(record(
        op,
        &[x],
        y,
        Box::new(move |gy| {
            let gx = gy.backend().softmax_backward(yd.buf(), gy.buf(), g, log)?;
            Ok(vec![Some(yd.sibling(gx, yd.shape().to_vec()))])
        }),
    ))
}

/// exp(x) / Σ exp(x) along `dim` (negative counts from the end).
pub fn softmax(x: &Tensor, dim: isize) -> Result<Tensor> {
    softmax_impl("softmax", x, dim, false)
}

/// x − log Σ exp(x) along `dim`.
pub fn log_softmax(x: &Tensor, dim: isize) -> Result<Tensor> {
    softmax_impl("log_softmax", x, dim, true)
}
