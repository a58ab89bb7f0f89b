//! Elementwise kernels, full and per-axis sums, dropout.

use rayon::prelude::*;

use crate::backend::{AxisGeom, BinaryOp, UnaryOp};
use crate::rng;

/// Elements per rayon task: big enough that scheduling costs nothing, small enough to spread work.
const CHUNK: usize = 1 << 15;

/// max(x, 0) keeping NaN, as PyTorch (f32::max would turn NaN into 0).
#[inline]
pub(super) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

pub(super) fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = match op {
                    UnaryOp::Relu => relu(x),
                    UnaryOp::Scale(s) => x * s,
                    UnaryOp::AddScalar(s) => x + s,
                    UnaryOp::Sqrt => x.sqrt(),
                };
            }
        });
    y
}

pub(super) fn binary(a: &[f32], b: &[f32], op: BinaryOp) -> Vec<f32> {
    let mut y = vec![0.0; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div => a / b,
                    BinaryOp::AddRelu => relu(a + b),
                };
            }
        });
    y
}

pub(super) fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK)
        .for_each(|x| x.iter_mut().for_each(|v| *v = relu(*v)));
}

pub(super) fn add_relu_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a = relu(*a + b);
            }
        });
}

/// PyTorch's threshold_backward: 0 where y <= 0, so a NaN output passes dy on.
#[inline]
pub(super) fn relu_grad(y: f32, dy: f32) -> f32 {
    if y <= 0.0 {
        0.0
    } else {
        dy
    }
}

pub(super) fn relu_backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
                *dx = relu_grad(y, dy);
            }
        });
    dx
}

pub(super) fn axpby(y: &mut [f32], a: f32, x: &[f32], b: f32) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = a * x + b * *y;
            }
        });
}

/// Σ x, accumulated in f64 per chunk.
pub(super) fn sum(x: &[f32]) -> f32 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
        .sum::<f64>() as f32
}

/// Σ over outer and inner of x viewed as [outer, axis, inner] → [axis].
pub(super) fn sum_to_axis(x: &[f32], g: AxisGeom) -> Vec<f32> {
    (0..g.axis)
        .into_par_iter()
        .map(|c| {
            let mut s = 0f64;
            for o in 0..g.outer {
                let base = (o * g.axis + c) * g.inner;
                s += x[base..base + g.inner]
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>();
            }
            s as f32
        })
        .collect()
}

pub(super) fn add_axis_bias(y: &mut [f32], bias: &[f32], g: AxisGeom) {
    y.par_chunks_mut(g.inner).enumerate().for_each(|(row, y)| {
        let b = bias[row % g.axis];
        y.iter_mut().for_each(|v| *v += b);
    });
}

pub(super) fn dropout(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (y, x))| {
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let idx = (c * CHUNK + i) as u64;
                // x·0 for a dropped element, not 0: NaN and ±Inf give NaN, as PyTorch's x·mask·scale.
                *y = x * if rng::dropout_keep(seed, idx, p) {
                    scale
                } else {
                    0.0
                };
            }
        });
    y
}
