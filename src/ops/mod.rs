//! Ops: one module per family, each holding its shape rules, forward, backward rule and the calls into the
//! backend. Every op is a function here and a method on [`Tensor`].

pub mod attention;
pub mod batchnorm;
pub mod conv;
pub mod dropout;
pub mod elementwise;
pub mod fused;
pub mod layout;
pub mod linalg;
pub mod loss;
pub mod pool;
pub mod softmax;
pub mod upsample;

pub use attention::attention;
pub use batchnorm::{batch_norm, BatchNormArgs};
pub use conv::{conv, conv2d, conv3d, ConvParams};
pub use dropout::dropout;
pub use elementwise::{add, mean, mul, mul_scalar, relu, sub, sum};
pub use layout::{concat, flatten, permute, reshape, transpose};
pub use linalg::{linear, matmul};
pub use loss::cross_entropy;
pub use pool::{adaptive_avg_pool, avg_pool, global_avg_pool, max_pool, PoolParams};
pub use softmax::{log_softmax, softmax};
pub use upsample::upsample_trilinear;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// All tensors on one device and of a supported dtype.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    if let Some(first) = ts.first() {
        for t in ts {
            if t.device() != first.device() {
                return Err(Error::Device(format!(
                    "{op}: tensors on different devices ({} and {})",
                    first.device(),
                    t.device()
                )));
            }
            if t.dtype() != DType::F32 {
                return Err(Error::DType {
                    op,
                    dtype: t.dtype(),
                });
            }
        }
    }
    Ok(())
}

/// Resolve a possibly negative dimension index against `rank`.
pub(crate) fn resolve_dim(op: &'static str, dim: isize, shape: &[usize]) -> Result<usize> {
    let r = shape.len() as isize;
    let d = if dim < 0 { dim + r } else { dim };
    if !(0..r).contains(&d) {
        return Err(Error::shape(
            op,
            format!("dim {dim} out of range for shape {shape:?}"),
        ));
    }
    Ok(d as usize)
}

/// Spatial dims of a [N, C, ...spatial] tensor padded to three (D, H, W) with leading ones.
pub(crate) fn spatial3(shape: &[usize]) -> [usize; 3] {
    pad3(&shape[2..], 1)
}

/// A per-spatial-dim parameter list padded to three with `fill` in front (2-d → D gets `fill`).
pub(crate) fn pad3(v: &[usize], fill: usize) -> [usize; 3] {
    let mut out = [fill; 3];
    out[3 - v.len()..].copy_from_slice(v);
    out
}

/// Method forms of the ops, for chaining: `x.conv(&w, Some(&b), &p)?.relu()?`.
impl Tensor {
    pub fn conv(&self, w: &Tensor, bias: Option<&Tensor>, p: &ConvParams) -> Result<Tensor> {
        conv(self, w, bias, p)
    }
    pub fn batch_norm(&self, args: &BatchNormArgs) -> Result<Tensor> {
        batch_norm(self, args)
    }
    pub fn max_pool(&self, p: &PoolParams) -> Result<Tensor> {
        max_pool(self, p)
    }
    pub fn avg_pool(&self, p: &PoolParams, count_include_pad: bool) -> Result<Tensor> {
        avg_pool(self, p, count_include_pad)
    }
    pub fn adaptive_avg_pool(&self, output: &[usize]) -> Result<Tensor> {
        adaptive_avg_pool(self, output)
    }
    pub fn global_avg_pool(&self) -> Result<Tensor> {
        global_avg_pool(self)
    }
    pub fn relu(&self) -> Result<Tensor> {
        relu(self)
    }
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        add(self, other)
    }
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        sub(self, other)
    }
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        mul(self, other)
    }
    pub fn mul_scalar(&self, s: f32) -> Result<Tensor> {
        mul_scalar(self, s)
    }
    pub fn sum(&self) -> Result<Tensor> {
        sum(self)
    }
    pub fn mean(&self) -> Result<Tensor> {
        mean(self)
    }
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        reshape(self, shape)
    }
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        flatten(self, start, end)
    }
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        permute(self, perm)
    }
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        transpose(self, d0, d1)
    }
    pub fn linear(&self, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        linear(self, w, bias)
    }
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        matmul(self, other)
    }
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        softmax(self, dim)
    }
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        log_softmax(self, dim)
    }
    pub fn dropout(&self, p: f32, training: bool, seed: u64) -> Result<Tensor> {
        dropout(self, p, training, seed)
    }
    pub fn upsample_trilinear(&self, size: [usize; 3], align_corners: bool) -> Result<Tensor> {
        upsample_trilinear(self, size, align_corners)
    }
}
