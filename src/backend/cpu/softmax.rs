//! Softmax / log-softmax along the axis of [outer, axis, inner], parallel over outer.

use rayon::prelude::*;

use crate::backend::AxisGeom;

/// Apply `f` to every (outer, inner) line of x and y: `f(x_line, y_line, stride)`.
fn lines<F>(x: &[f32], y: &mut [f32], g: AxisGeom, f: F)
where
    F: Fn(&[f32], &mut [f32], usize, usize) + Sync,
{
    let block = g.axis * g.inner;
    y.par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .for_each(|(y, x)| {
            for i in 0..g.inner {
                f(x, y, i, g.inner);
            }
        });
}

pub(super) fn forward(x: &[f32], g: AxisGeom, log: bool) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    lines(x, &mut y, g, |x, y, off, stride| {
        let at = |j: usize| off + j * stride;
        let max = (0..g.axis)
            .map(|j| x[at(j)])
            .fold(f32::NEG_INFINITY, super::nan_max);
        let sum: f64 = (0..g.axis).map(|j| ((x[at(j)] - max) as f64).exp()).sum();
        if log {
            let lse = max as f64 + sum.ln();
            (0..g.axis).for_each(|j| y[at(j)] = (x[at(j)] as f64 - lse) as f32);
        } else {
            (0..g.axis).for_each(|j| y[at(j)] = (((x[at(j)] - max) as f64).exp() / sum) as f32);
        }
    });
    y
}

/// softmax: dx = y·(dy − Σ dy·y); log_softmax: dx = dy − exp(y)·Σ dy.
pub(super) fn backward(y: &[f32], dy: &[f32], g: AxisGeom, log: bool) -> Vec<f32> {
    let mut dx = vec![0.0; y.len()];
    let block = g.axis * g.inner;
    dx.par_chunks_mut(block)
        .zip(y.par_chunks(block).zip(dy.par_chunks(block)))
        .for_each(|(dx, (y, dy))| {
            for i in 0..g.inner {
                let at = |j: usize| i + j * g.inner;
                if log {
                    let s: f64 = (0..g.axis).map(|j| dy[at(j)] as f64).sum();
                    (0..g.axis).for_each(|j| {
                        dx[at(j)] = (dy[at(j)] as f64 - (y[at(j)] as f64).exp() * s) as f32
                    });
                } else {
                    let s: f64 = (0..g.axis)
                        .map(|j| dy[at(j)] as f64 * y[at(j)] as f64)
                        .sum();
                    (0..g.axis).for_each(|j| {
                        dx[at(j)] = (y[at(j)] as f64 * (dy[at(j)] as f64 - s)) as f32
                    });
                }
            }
        });
    dx
}
