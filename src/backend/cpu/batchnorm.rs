//! Batch norm over [outer, C, inner]: statistics in f64 (two passes), parallel over channels.

use rayon::prelude::*;

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

/// y = (x − mean)·rsqrt(var + eps)·w + b.
pub(super) fn normalize(
    x: &[f32],
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    g: AxisGeom,
    eps: f32,
) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(g.inner)
        .zip(x.par_chunks(g.inner))
        .enumerate()
        .for_each(|(row, (y, x))| {
            let c = row % g.axis;
            let scale = w.map_or(1.0, |w| w[c]) / (var[c] + eps).sqrt();
            let shift = b.map_or(0.0, |b| b[c]) - mean[c] * scale;
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale + shift;
            }
        });
    y
}

/// (dx, dweight, dbias). With batch statistics,
/// dx = w·invstd/n · (n·dy − Σdy − x̂·Σ(dy·x̂)); with fixed statistics, dx = dy·w·invstd.
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
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let invstd: Vec<f64> = var
        .iter()
        .map(|&v| 1.0 / (v as f64 + eps as f64).sqrt())
        .collect();
    let sums: Vec<(f64, f64)> = (0..g.axis)
        .into_par_iter()
        .map(|c| {
            let (m, is) = (mean[c] as f64, invstd[c]);
            channel(dy, g, c)
                .zip(channel(x, g, c))
                .fold((0.0, 0.0), |(sd, sdx), (dy, x)| {
                    let mut sd_row = 0.0;
                    let mut sdx_row = 0.0;
                    for (&d, &v) in dy.iter().zip(x) {
                        sd_row += d as f64;
                        sdx_row += d as f64 * (v as f64 - m) * is;
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
            let (m, is, wc) = (mean[c] as f64, invstd[c], w.map_or(1.0, |w| w[c] as f64));
            if batch_stats {
                let (sd, sdx) = sums[c];
                let k = wc * is / n;
                for ((dx, &d), &v) in dx.iter_mut().zip(dy).zip(x) {
                    let xhat = (v as f64 - m) * is;
                    *dx = (k * (n * d as f64 - sd - xhat * sdx)) as f32;
                }
            } else {
                for (dx, &d) in dx.iter_mut().zip(dy) {
                    *dx = (d as f64 * wc * is) as f32;
                }
            }
        });
    let dweight = sums.iter().map(|s| s.1 as f32).collect();
    let dbias = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dweight, dbias)
}
