//! Non-local attention over gemm: scores S = scale·qᵀk [N, M] per batch, row softmax, y = v·Pᵀ.
//! The backward recomputes P from q and k (exactly normalised; the saved log-sum-exp is not used here).

use rayon::prelude::*;

use super::linalg::{gemm, Mat};
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
    // S[n, m] = Σ_c q[c, n]·k[c, m]
    gemm(
        n,
        m,
        c,
        Mat::new(q, n, true),
        Mat::new(k, m, false),
        &mut s,
        m,
        false,
        true,
    );
    // P is normalised with the row's own max and sum, also in backward (recomputed, not taken from the
    // saved lse): exp(s − lse) with lse rounded to f32 loses the normalisation when |s| is large (an
    // ulp of lse = 1e6 is 0.06, a factor e^0.06 on every weight), where PyTorch's softmax does not.
    s.par_chunks_mut(m)
        .zip(lse.par_iter_mut())
        .for_each(|(row, l)| {
            row.iter_mut().for_each(|v| *v *= g.scale);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, super::nan_max);
            let mut sum = 0f64;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v as f64;
            }
            let inv = (1.0 / sum) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
            if !have_lse {
                *l = (max as f64 + sum.ln()) as f32;
            }
        });
    s
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
        let d: Vec<f32> = (0..n)
            .map(|i| (0..cv).map(|j| dyb[j * n + i] * yb[j * n + i]).sum())
            .collect();
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
