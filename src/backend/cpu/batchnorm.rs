//! Batch norm over [outer, C, inner]: statistics in f64 (two passes), parallel over channels.

use rayon::prelude::*;

use super::elementwise::{relu, relu_grad};
use crate::backend::AxisGeom;

/// Visit every value of channel c.
fn channel<'a>(x: &'a [f32], g: AxisGeom, c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..g.outer).map(move |o| {
        let base = (o * g.axis + c) * g.inner;
        &x[base..base + g.inner]
    })
}

/// Per-channel mean and biased variance.
pub(super) fn statistics(x: &[f32], g: AxisGeom) -> (Vec<f32>, Vec<f32>) {
    let count = (g.outer * g.inner) as f64;
    let stats: Vec<(f32, f32)> = (0..g.axis)
        .into_par_iter()
        .map(|c| {
            let mean = channel(x, g, c).flatten().map(|&v| v as f64).sum::<f64>() / count;
            let var = channel(x, g, c)
                .flatten()
                .map(|&v| (v as f64 - mean).powi(2))
                .sum::<f64>()
                / count;
            (mean as f32, var as f32)
        })
        .collect();
    stats.into_iter().unzip()
}

/// y = (x − mean)·rsqrt(var + eps)·w + b, then max(y, 0) with `relu` (the fused BN → ReLU).
#[allow(clippy::too_many_arguments)]
pub(super) fn normalize(
    x: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    g: AxisGeom,
    eps: f32,
    relu_after: bool,
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(g.inner)
        .zip(x.par_chunks(g.inner))
        .enumerate()
        .for_each(|(row, (y, x))| {
            let c = row % g.axis;
            let scale = w.map_or(1.0, |w| w[c]) / (var[c] + eps).sqrt();
            let shift = b.map_or(0.0, |b| b[c]) - mean[c] * scale;
            if relu_after {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = relu(x * scale + shift);
                }
            } else {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * scale + shift;
                }
            }
        });
    y
}

/// (dx, dweight, dbias). With batch statistics,
/// dx = w·invstd/n · (n·dy − Σdy − x̂·Σ(dy·x̂)); with fixed statistics, dx = dy·w·invstd. With
/// `relu_y` (a fused BN → ReLU's output), dy is ReLU's gradient of it: 0 where relu_y <= 0.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dy: &[f32],
    x: &[f32],
    w: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    g: AxisGeom,
    eps: f32,
    batch_stats: bool,
    relu_y: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    match relu_y {
        Some(ry) => backward_masked::<true>(dy, x, w, mean, var, g, eps, batch_stats, ry),
        None => backward_masked::<false>(dy, x, w, mean, var, g, eps, batch_stats, &[]),
    }
}

/// [`backward`], with ReLU's backward mask by `ry` applied as dy is read when `RELU` (no masked copy
/// of dy; without, the loops are the plain batch norm's).
#[allow(clippy::too_many_arguments)]
fn backward_masked<'a, const RELU: bool>(
    dy: &'a [f32],
    x: &'a [f32],
    w: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    g: AxisGeom,
    eps: f32,
    batch_stats: bool,
    ry: &'a [f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    // The mask's row beside dy's and x's (without RELU, x's row stands in and is not read).
    let mask_row = |base: usize, x_row: &'a [f32]| -> &'a [f32] {
        if RELU {
            &ry[base..base + x_row.len()]
        } else {
            x_row
        }
    };
    let masked = |r: f32, d: f32| if RELU { relu_grad(r, d) } else { d };
    let invstd: Vec<f64> = var
        .iter()
        .map(|&v| 1.0 / (v as f64 + eps as f64).sqrt())
        .collect();
    let sums: Vec<(f64, f64)> = (0..g.axis)
        .into_par_iter()
        .map(|c| {
            let (m, is) = (mean[c] as f64, invstd[c]);
            (0..g.outer).fold((0.0, 0.0), |(sd, sdx), o| {
                let base = (o * g.axis + c) * g.inner;
                let (dy, x) = (&dy[base..base + g.inner], &x[base..base + g.inner]);
                let mut sd_row = 0.0;
                let mut sdx_row = 0.0;
                for ((&d, &v), &r) in dy.iter().zip(x).zip(mask_row(base, x)) {
                    let d = masked(r, d) as f64;
                    sd_row += d;
                    sdx_row += d * (v as f64 - m) * is;
                }
                (sd + sd_row, sdx + sdx_row)
            })
        })
        .collect();
    let n = (g.outer * g.inner) as f64;
    let mut dx = vec![0.0; x.len()];
    dx.par_chunks_mut(g.inner)
        .zip(dy.par_chunks(g.inner).zip(x.par_chunks(g.inner)))
        .enumerate()
        .for_each(|(row, (dx, (dy, x)))| {
            let c = row % g.axis;
            let base = row * g.inner;
            let (m, is, wc) = (mean[c] as f64, invstd[c], w.map_or(1.0, |w| w[c] as f64));
            if batch_stats {
                let (sd, sdx) = sums[c];
                let k = wc * is / n;
                for (((dx, &d), &v), &r) in dx.iter_mut().zip(dy).zip(x).zip(mask_row(base, x)) {
                    let xhat = (v as f64 - m) * is;
                    let d = masked(r, d) as f64;
                    *dx = (k * (n * d - sd - xhat * sdx)) as f32;
                }
            } else {
                for ((dx, &d), &r) in dx.iter_mut().zip(dy).zip(mask_row(base, x)) {
                    *dx = (masked(r, d) as f64 * wc * is) as f32;
                }
            }
        });
    let dweight = sums.iter().map(|s| s.1 as f32).collect();
    let dbias = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dweight, dbias)
}
