//! Batch norm over [outer, C, inner]: statistics in f64 (two passes), parallel over channels.

use rayon::prelude::*;

use super::elementwise::{par_new, relu, relu_grad};
use crate::backend::AxisGeom;

/// Visit every value of channel c.
fn channel<'a>(x: &'a [f32], g: AxisGeom, c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..g.outer).map(move |o| {
        let base = (o * g.axis + c) * g.inner;
        &x[base..base + g.inner]
    })
}

/// Independent f64 partial sums per row: one accumulator would chain every addition through the add's
/// latency (a quarter of the memory bandwidth on the development machine); eight side by side run at
/// the loads' speed and vectorise. Only the order of the f64 additions changes (each rounds by at most
/// 2⁻⁵³ relative, far below the f32 the sums end in).
const LANES: usize = 8;

/// Σ term(d, v, r) over equally long rows dy, x and r, in [`LANES`] partial sums of two quantities.
fn lane_sums2(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    term: impl Fn(f32, f32, f32) -> (f64, f64),
) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let (dc, xc, rc) = (
        dy.chunks_exact(LANES),
        x.chunks_exact(LANES),
        r.chunks_exact(LANES),
    );
    let (mut ta, mut tb) = (0.0, 0.0);
    for ((&d, &v), &r) in dc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .zip(rc.remainder())
    {
        let (p, q) = term(d, v, r);
        ta += p;
        tb += q;
    }
    for ((d, v), r) in dc.zip(xc).zip(rc) {
        for i in 0..LANES {
            let (p, q) = term(d[i], v[i], r[i]);
            a[i] += p;
            b[i] += q;
        }
    }
    (a.iter().sum::<f64>() + ta, b.iter().sum::<f64>() + tb)
}

/// Σ term(v) over a row, in [`LANES`] partial sums.
fn lane_sum(x: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    lane_sums2(x, x, x, |v, _, _| (term(v), 0.0)).0
}

/// Per-channel mean and biased variance.
pub(super) fn statistics(x: &[f32], g: AxisGeom) -> (Vec<f32>, Vec<f32>) {
    let count = (g.outer * g.inner) as f64;
    let stats: Vec<(f32, f32)> = (0..g.axis)
        .into_par_iter()
        .map(|c| {
            let mean = channel(x, g, c)
                .map(|row| lane_sum(row, |v| v as f64))
                .sum::<f64>()
                / count;
            let var = channel(x, g, c)
                .map(|row| lane_sum(row, |v| (v as f64 - mean).powi(2)))
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
    // per channel: y = x·scale + shift
    let affine: Vec<(f32, f32)> = (0..g.axis)
        .map(|c| {
            let scale = w.map_or(1.0, |w| w[c]) / (var[c] + eps).sqrt();
            (scale, b.map_or(0.0, |b| b[c]) - mean[c] * scale)
        })
        .collect();
    par_new(x.len(), g.inner, |row, r| {
        let (scale, shift) = affine[row % g.axis];
        x[r].iter().map(move |&x| {
            let y = x * scale + shift;
            if relu_after {
                relu(y)
            } else {
                y
            }
        })
    })
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
                let (sd_row, sdx_row) = lane_sums2(dy, x, mask_row(base, x), |d, v, r| {
                    let d = masked(r, d) as f64;
                    (d, d * (v as f64 - m) * is)
                });
                (sd + sd_row, sdx + sdx_row)
            })
        })
        .collect();
    let n = (g.outer * g.inner) as f64;
    let params = |row: usize| {
        let c = row % g.axis;
        (c, mean[c] as f64, invstd[c], w.map_or(1.0, |w| w[c] as f64))
    };
    let dx = if batch_stats {
        par_new(x.len(), g.inner, |row, r| {
            let (c, m, is, wc) = params(row);
            let (sd, sdx) = sums[c];
            let k = wc * is / n;
            let (dy, x) = (&dy[r.clone()], &x[r.clone()]);
            dy.iter()
                .zip(x)
                .zip(mask_row(r.start, x))
                .map(move |((&d, &v), &r)| {
                    let xhat = (v as f64 - m) * is;
                    let d = masked(r, d) as f64;
                    (k * (n * d - sd - xhat * sdx)) as f32
                })
        })
    } else {
        par_new(x.len(), g.inner, |row, r| {
            let (_, _, is, wc) = params(row);
            let x_row = &x[r.clone()];
            dy[r.clone()]
                .iter()
                .zip(mask_row(r.start, x_row))
                .map(move |(&d, &r)| (masked(r, d) as f64 * wc * is) as f32)
        })
    };
    let dweight = sums.iter().map(|s| s.1 as f32).collect();
    let dbias = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dweight, dbias)
}
