//! Trilinear resampling kernels with PyTorch's `F.interpolate(mode="trilinear")` index rules (output
//! size given, no scale factor).
//!
//! Resampling is separable, so the two source taps and their weights are computed once per output
//! index of each dim (three small tables); the kernels blend (forward) or scatter (backward) the 8
//! taps. Planes run in parallel, each backward plane accumulating into its own slice of dx.

use rayon::prelude::*;

use crate::backend::UpsampleGeom;

/// The two source taps of one output index along one dim and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Taps {
    i0: usize,
    i1: usize,
    l0: f32,
    l1: f32,
}

/// PyTorch's linear source indices along one dim (computed in f32 as PyTorch does for f32 tensors):
/// align_corners: src = (n−1)/(out−1) · dst (scale 0 when out = 1); otherwise
/// src = max(n/out · (dst + 0.5) − 0.5, 0). i0 = floor(src), i1 = i0 + 1 unless at the last input.
fn taps(n: usize, out: usize, align_corners: bool) -> Vec<Taps> {
    let scale = if align_corners {
        if out > 1 {
            (n - 1) as f32 / (out - 1) as f32
        } else {
            0.0
        }
    } else {
        n as f32 / out as f32
    };
    (0..out)
        .map(|dst| {
            let src = if align_corners {
                scale * dst as f32
            } else {
                (scale * (dst as f32 + 0.5) - 0.5).max(0.0)
            };
            // src ≥ 0, so truncation is the floor; the clamp only guards rounding at the last input.
            let i0 = (src as usize).min(n - 1);
            let i1 = i0 + usize::from(i0 < n - 1);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            Taps {
                i0,
                i1,
                l0: 1.0 - l1,
                l1,
            }
        })
        .collect()
}

fn tables(g: &UpsampleGeom) -> [Vec<Taps>; 3] {
    std::array::from_fn(|i| taps(g.input[i], g.output[i], g.align_corners))
}

pub(super) fn forward(x: &[f32], g: &UpsampleGeom) -> Vec<f32> {
    let [_, h, w] = g.input;
    let iv: usize = g.input.iter().product();
    let ov: usize = g.output.iter().product();
    let mut y = vec![0.0f32; g.planes * ov];
    if iv == 0 || ov == 0 {
        return y;
    }
    let [td, th, tw] = tables(g);
    let ow = g.output[2];
    y.par_chunks_mut(ov)
        .zip(x.par_chunks(iv))
        .for_each(|(yp, xp)| {
            let mut rows = yp.chunks_exact_mut(ow);
            for d in &td {
                for r in &th {
                    let yr = rows.next().unwrap();
                    // The four input rows this output row reads, and their (d, h) weights.
                    let r00 = &xp[(d.i0 * h + r.i0) * w..][..w];
                    let r01 = &xp[(d.i0 * h + r.i1) * w..][..w];
                    let r10 = &xp[(d.i1 * h + r.i0) * w..][..w];
                    let r11 = &xp[(d.i1 * h + r.i1) * w..][..w];
                    let (w00, w01) = (d.l0 * r.l0, d.l0 * r.l1);
                    let (w10, w11) = (d.l1 * r.l0, d.l1 * r.l1);
                    for (o, c) in yr.iter_mut().zip(&tw) {
                        let lerp = |row: &[f32]| c.l0 * row[c.i0] + c.l1 * row[c.i1];
                        *o = w00 * lerp(r00) + w01 * lerp(r01) + w10 * lerp(r10) + w11 * lerp(r11);
                    }
                }
            }
        });
    y
}

pub(super) fn backward(dy: &[f32], g: &UpsampleGeom) -> Vec<f32> {
    let [_, h, w] = g.input;
    let iv: usize = g.input.iter().product();
    let ov: usize = g.output.iter().product();
    let mut dx = vec![0.0f32; g.planes * iv];
    if iv == 0 || ov == 0 {
        return dx;
    }
    let [td, th, tw] = tables(g);
    let ow = g.output[2];
    dx.par_chunks_mut(iv)
        .zip(dy.par_chunks(ov))
        .for_each(|(dxp, dyp)| {
            let mut rows = dyp.chunks_exact(ow);
            for d in &td {
                for r in &th {
                    let gr = rows.next().unwrap();
                    let corners = [
                        ((d.i0 * h + r.i0) * w, d.l0 * r.l0),
                        ((d.i0 * h + r.i1) * w, d.l0 * r.l1),
                        ((d.i1 * h + r.i0) * w, d.l1 * r.l0),
                        ((d.i1 * h + r.i1) * w, d.l1 * r.l1),
                    ];
                    for (&gy, c) in gr.iter().zip(&tw) {
                        let (g0, g1) = (c.l0 * gy, c.l1 * gy);
                        for &(base, wt) in &corners {
                            dxp[base + c.i0] += wt * g0;
                            dxp[base + c.i1] += wt * g1;
                        }
                    }
                }
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| uniform(seed, i as u64) * 2.0 - 1.0)
            .collect()
    }

    /// Naive trilinear resampling (forward, backward) in f64, per output element, from the definition.
    fn naive(x: &[f32], dy: &[f32], g: &UpsampleGeom) -> (Vec<f64>, Vec<f64>) {
        let iv: usize = g.input.iter().product();
        let ov: usize = g.output.iter().product();
        let src = |i: usize, dst: usize| -> (usize, usize, f64) {
            let (n, m) = (g.input[i], g.output[i]);
            let s = if g.align_corners {
                if m == 1 {
                    0.0
                } else {
                    dst as f64 * (n - 1) as f64 / (m - 1) as f64
                }
            } else {
                ((dst as f64 + 0.5) * n as f64 / m as f64 - 0.5).max(0.0)
            };
            let i0 = (s.floor() as usize).min(n - 1);
            let i1 = if i0 + 1 < n { i0 + 1 } else { i0 };
            (i0, i1, s - i0 as f64)
        };
        let mut y = vec![0.0; g.planes * ov];
        let mut dx = vec![0.0; g.planes * iv];
        for p in 0..g.planes {
            let mut oi = 0;
            for od in 0..g.output[0] {
                for oh in 0..g.output[1] {
                    for ow in 0..g.output[2] {
                        let t = [src(0, od), src(1, oh), src(2, ow)];
                        for corner in 0..8 {
                            let mut idx = [0; 3];
                            let mut wt = 1.0;
                            for (i, ti) in t.iter().enumerate() {
                                let hi = (corner >> (2 - i)) & 1 == 1;
                                idx[i] = if hi { ti.1 } else { ti.0 };
                                wt *= if hi { ti.2 } else { 1.0 - ti.2 };
                            }
                            let xi = p * iv + (idx[0] * g.input[1] + idx[1]) * g.input[2] + idx[2];
                            y[p * ov + oi] += wt * x[xi] as f64;
                            dx[xi] += wt * dy[p * ov + oi] as f64;
                        }
                        oi += 1;
                    }
                }
            }
        }
        (y, dx)
    }

    fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .fold((0.0f64, 0.0f64), |(a, r), (&g, &w)| {
                let e = (g as f64 - w).abs();
                (a.max(e), r.max(e / w.abs().max(1.0)))
            })
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    #[test]
    fn trilinear_matches_naive() {
        let (mut ea, mut er, mut adj) = (0.0f64, 0.0f64, 0.0f64);
        let mut draw_i = 0u64;
        let mut int = |lo: usize, hi: usize| {
            draw_i += 1;
            lo + ((uniform(77, draw_i) as f64 * (hi - lo + 1) as f64) as usize).min(hi - lo)
        };
        for case in 0..60u64 {
            let mut input = [0; 3];
            let mut output = [0; 3];
            for i in 0..3 {
                input[i] = int(1, 7);
                // up, down or mixed per dim; sometimes the same size, sometimes 1.
                output[i] = match (case as usize + i) % 4 {
                    0 => input[i] * int(1, 3),
                    1 => int(1, input[i]),
                    2 => int(1, 12),
                    _ => input[i] + int(0, 5),
                };
            }
            if case % 10 == 0 {
                input[0] = 1; // 2-d-like plane stack
            }
            for align_corners in [false, true] {
                let g = UpsampleGeom {
                    planes: int(1, 3),
                    input,
                    output,
                    align_corners,
                };
                let iv: usize = input.iter().product();
                let ov: usize = output.iter().product();
                let x = data(g.planes * iv, 1000 + case);
                let dy = data(g.planes * ov, 2000 + case);
                let y = forward(&x, &g);
                let dx = backward(&dy, &g);
                let (ry, rdx) = naive(&x, &dy, &g);
                let (a1, r1) = errors(&y, &ry);
                let (a2, r2) = errors(&dx, &rdx);
                assert!(a1 < 1e-5 && a2 < 1e-4, "{g:?}: forward {a1}, backward {a2}");
                let (p, q) = (dot(&y, &dy), dot(&x, &dx));
                let e = (p - q).abs() / p.abs().max(q.abs()).max(1.0);
                assert!(e < 1e-5, "adjoint {g:?}: {e}");
                (ea, er, adj) = (ea.max(a1).max(a2), er.max(r1).max(r2), adj.max(e));
            }
        }
        println!(
            "trilinear: max abs err {ea:.3e}, max rel err {er:.3e}, adjoint rel err {adj:.3e}"
        );
    }

    #[test]
    fn linear_known_values() {
        // PyTorch: interpolate([0, 1], size=4, mode="linear") = [0, .25, .75, 1];
        // with align_corners=True, [0, 1/3, 2/3, 1].
        let x = [0.0, 1.0];
        let g = UpsampleGeom {
            planes: 1,
            input: [1, 1, 2],
            output: [1, 1, 4],
            align_corners: false,
        };
        assert_eq!(forward(&x, &g), vec![0.0, 0.25, 0.75, 1.0]);
        assert_eq!(backward(&[1.0; 4], &g), vec![2.0, 2.0]);
        let g = UpsampleGeom {
            align_corners: true,
            ..g
        };
        let y = forward(&x, &g);
        let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
        assert!(
            y.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6),
            "{y:?}"
        );
        // Down 4 → 2 without align_corners: src = 0.5, 2.5 → means of neighbours.
        let g = UpsampleGeom {
            planes: 1,
            input: [1, 1, 4],
            output: [1, 1, 2],
            align_corners: false,
        };
        assert_eq!(forward(&[0.0, 2.0, 4.0, 6.0], &g), vec![1.0, 5.0]);
        // Output size 1 with align_corners takes the first input.
        let g = UpsampleGeom {
            planes: 1,
            input: [1, 3, 1],
            output: [1, 1, 1],
            align_corners: true,
        };
        assert_eq!(forward(&[7.0, 8.0, 9.0], &g), vec![7.0]);
        assert_eq!(backward(&[2.0], &g), vec![2.0, 0.0, 0.0]);
    }
}
