//! Non-local attention over gemm: scores S = scale·qᵀk [N, M] per batch, row softmax, y = v·Pᵀ.
//! The backward recomputes P from q and k (exactly normalised; the saved log-sum-exp is not used here).

use rayon::prelude::*;

use super::linalg::{gemm, gemm_scaled, Mat};
use crate::backend::AttentionGeom;

/// P = softmax(scale·qᵀk) by rows for one batch; without `have_lse` also writes the rows' lse (forward).
fn probabilities(
    q: &[f32],
    k: &[f32],
    g: AttentionGeom,
    lse: &mut [f32],
    have_lse: bool,
) -> Vec<f32> {
    let (n, m, c) = (g.n, g.m, g.c);
    let mut s = vec![0.0; n * m];
    // S[n, m] = scale·Σ_c q[c, n]·k[c, m], the scale in the GEMM's store
    gemm_scaled(
        n,
        m,
        c,
        Mat::new(q, n, true),
        Mat::new(k, m, false),
        &mut s,
        m,
        false,
        true,
        g.scale,
    );
    // P is normalised with the row's own max and sum, also in backward (recomputed, not taken from the
    // saved lse): exp(s − lse) with lse rounded to f32 loses the normalisation when |s| is large (an
    // ulp of lse = 1e6 is 0.06, a factor e^0.06 on every weight), where PyTorch's softmax does not.
    s.par_chunks_mut(m)
        .zip(lse.par_iter_mut())
        .for_each(|(row, l)| {
            let (max, sum) = softmax_row_in_place(row);
            if !have_lse {
                *l = (max as f64 + sum.ln()) as f32;
            }
        });
    s
}

/// Lanes of the row loops: 8 f32 (two SSE registers, one AVX register) that LLVM vectorises.
const LANES: usize = 8;

/// Replaces a row of scores by its softmax; returns the row's max and Σ exp(s − max) (in f64).
/// Finite rows take the lanes ([`exp_shifted_sum`]); a row whose max is not finite (a NaN or infinite
/// score) keeps the scalar definition, so NaN and Inf propagate as in PyTorch.
fn softmax_row_in_place(row: &mut [f32]) -> (f32, f64) {
    let max = row_max(row);
    let sum = if max.is_finite() {
        exp_shifted_sum(row, max)
    } else {
        let mut sum = 0f64;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        sum
    };
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
    (max, sum)
}

/// The NaN-propagating max of a row, in lanes.
fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(ch) {
            *l = super::nan_max(*l, v);
        }
    }
    let tail = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, super::nan_max)
}

/// row[j] = exp(row[j] − max) for a finite max; returns Σ row[j] summed in f64 lanes. The exps are
/// libm's `expf` bit for bit, four lanes at a time with its own operations (expf.rs): a vectorised
/// polynomial exp of its own (≤ 2 ulp) had moved tests/models_cuda.rs's CPU-against-simulator gradient
/// comparison of c2d-nl-r50 past its tolerance (docs/PERFORMANCE.md, "CPU attention").
fn exp_shifted_sum(row: &mut [f32], max: f32) -> f64 {
    super::expf::exp_shifted_in_place(row, max);
    let mut sums = [0f64; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for ch in &mut chunks {
        for (s, &v) in sums.iter_mut().zip(ch) {
            *s += v as f64;
        }
    }
    let mut sum: f64 = sums.iter().sum();
    for &v in chunks.remainder() {
        sum += v as f64;
    }
    sum
}

pub(super) fn forward(q: &[f32], k: &[f32], v: &[f32], g: AttentionGeom) -> (Vec<f32>, Vec<f32>) {
    let (n, m, c, cv) = (g.n, g.m, g.c, g.cv);
    let mut y = vec![0.0; g.batch * cv * n];
    let mut lse = vec![0.0; g.batch * n];
    for b in 0..g.batch {
        let qb = &q[b * c * n..(b + 1) * c * n];
        let kb = &k[b * c * m..(b + 1) * c * m];
        let vb = &v[b * cv * m..(b + 1) * cv * m];
        let p = probabilities(qb, kb, g, &mut lse[b * n..(b + 1) * n], false);
        // y[cv, n] = Σ_m v[cv, m]·P[n, m]
        let yb = &mut y[b * cv * n..(b + 1) * cv * n];
        gemm(
            cv,
            n,
            m,
            Mat::new(vb, m, false),
            Mat::new(&p, m, true),
            yb,
            n,
            false,
            true,
        );
    }
    (y, lse)
}

/// (dq, dk, dv). With D[n] = Σ_c dy[c, n]·y[c, n]: dS = scale·P ⊙ (dP − D), dP = dyᵀ·v.
pub(super) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    y: &[f32],
    lse: &[f32],
    dy: &[f32],
    g: AttentionGeom,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, m, c, cv) = (g.n, g.m, g.c, g.cv);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    for b in 0..g.batch {
        let (qs, ks, vs) = (
            b * c * n..(b + 1) * c * n,
            b * c * m..(b + 1) * c * m,
            b * cv * m..(b + 1) * cv * m,
        );
        let ys = b * cv * n..(b + 1) * cv * n;
        let (qb, kb, vb, yb, dyb) = (
            &q[qs.clone()],
            &k[ks.clone()],
            &v[vs.clone()],
            &y[ys.clone()],
            &dy[ys],
        );
        let mut l = lse[b * n..(b + 1) * n].to_vec();
        let p = probabilities(qb, kb, g, &mut l, true);
        // dv[cv, m] = Σ_n dy[cv, n]·P[n, m]
        gemm(
            cv,
            m,
            n,
            Mat::new(dyb, n, false),
            Mat::new(&p, m, false),
            &mut dv[vs],
            m,
            false,
            true,
        );
        // dP[n, m] = Σ_cv dy[cv, n]·v[cv, m]
        let mut ds = vec![0.0; n * m];
        gemm(
            n,
            m,
            cv,
            Mat::new(dyb, n, true),
            Mat::new(vb, m, false),
            &mut ds,
            m,
            false,
            true,
        );
        // D[n] = Σ_cv dy[cv, n]·y[cv, n], row by row (contiguous), each D[n] summed in cv order
        let mut d = vec![0f32; n];
        for (dyr, yr) in dyb.chunks_exact(n).zip(yb.chunks_exact(n)) {
            for ((di, &a), &b) in d.iter_mut().zip(dyr).zip(yr) {
                *di += a * b;
            }
        }
        ds.par_chunks_mut(m)
            .zip(p.par_chunks(m))
            .zip(d.par_iter())
            .for_each(|((dsr, pr), &di)| {
                for (s, &pv) in dsr.iter_mut().zip(pr) {
                    *s = g.scale * pv * (*s - di);
                }
            });
        // dq[c, n] = Σ_m k[c, m]·dS[n, m];  dk[c, m] = Σ_n q[c, n]·dS[n, m]
        gemm(
            c,
            n,
            m,
            Mat::new(kb, m, false),
            Mat::new(&ds, m, true),
            &mut dq[qs],
            n,
            false,
            true,
        );
        gemm(
            c,
            m,
            n,
            Mat::new(qb, n, false),
            Mat::new(&ds, m, false),
            &mut dk[ks],
            m,
            false,
            true,
        );
    }
    (dq, dk, dv)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: the scalar definition in f64.
    fn softmax_f64(row: &[f32]) -> Vec<f32> {
        let max = row
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, crate::backend::cpu::nan_max);
        let e: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|&v| (v / sum) as f32).collect()
    }

    /// Rows of awkward lengths (not multiples of the lanes), with scores far below the max (subnormal
    /// and zero weights: the scalar fallback), −∞, +∞ and NaN: the same as the f64 definition to within
    /// a few ulp of the exp and the normalisation, and NaN exactly where it has NaN.
    #[test]
    fn softmax_rows_match_the_scalar_definition() {
        for len in [1, 2, 7, 8, 9, 17, 64, 100, 1001] {
            for case in 0..6u64 {
                let mut row: Vec<f32> = (0..len as u64)
                    .map(|i| crate::rng::normal(len as u64 * 10 + case, i) * 10.0)
                    .collect();
                match case {
                    1 => row[len / 2] = -100.0,
                    2 => row[len - 1] = f32::NEG_INFINITY,
                    3 => row[0] = f32::INFINITY,
                    4 => row[len / 3] = f32::NAN,
                    5 => row.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                    _ => {}
                }
                let want = softmax_f64(&row);
                let mut got = row.clone();
                softmax_row_in_place(&mut got);
                for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    if w.is_nan() {
                        assert!(g.is_nan(), "len {len} case {case} [{j}]: {g}, want NaN");
                    } else {
                        // the same f32 exp; f64 sums in another order; one division and one
                        // product each: 2u relative
                        let tol = 2.0 * f32::EPSILON * w.abs() + f32::MIN_POSITIVE;
                        assert!(
                            (g - w).abs() <= tol,
                            "len {len} case {case} [{j}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
