//! Non-local attention over gemm: scores S = scale·qᵀk [N, M] per batch, row softmax, y = v·Pᵀ.
//! The backward recomputes P from q and k (exactly normalised; the saved log-sum-exp is not used here),
//! and takes P and dS = scale·P ⊙ (dP − D) in one pass over each row. Both passes run by blocks of
//! query rows (each task's scores in L2, single-threaded GEMMs) where that measured faster, else over
//! the whole score matrix with parallel GEMMs.

use rayon::prelude::*;

use super::conv::{sum_parts, OutPtr};
use super::linalg::{gemm, gemm_new, gemm_scaled, gemm_to_ptr, Mat};
use crate::backend::AttentionGeom;

/// The scores S = scale·qᵀk [N, M] of one batch, written by the GEMM (scale in its store).
fn scores(q: &[f32], k: &[f32], g: AttentionGeom) -> Vec<f32> {
    let (n, m, c) = (g.n, g.m, g.c);
    gemm_new(
        n,
        m,
        c,
        Mat::new(q, n, true),
        Mat::new(k, m, false),
        true,
        g.scale,
    )
}

/// P = softmax(scale·qᵀk) by rows for one batch, and the rows' log-sum-exp into `lse` (forward).
fn probabilities(q: &[f32], k: &[f32], g: AttentionGeom, lse: &mut [f32]) -> Vec<f32> {
    let mut s = scores(q, k, g);
    s.par_chunks_mut(g.m)
        .zip(lse.par_iter_mut())
        .for_each(|(row, l)| {
            let (max, sum) = softmax_row_in_place(row);
            *l = (max as f64 + sum.ln()) as f32;
        });
    s
}

/// Lanes of the row loops: 8 f32 (two SSE registers, one AVX register) that LLVM vectorises.
const LANES: usize = 8;

/// Replaces a row of scores by its softmax; returns the row's max and Σ exp(s − max) (in f64).
/// Finite rows take the lanes ([`exp_shifted_sum`]); a row whose max is not finite (a NaN or infinite
/// score) keeps the scalar definition, so NaN and Inf propagate as in PyTorch.
///
/// P is normalised with the row's own max and sum, also in backward (recomputed, not taken from the
/// saved lse): exp(s − lse) with lse rounded to f32 loses the normalisation when |s| is large (an ulp
/// of lse = 1e6 is 0.06, a factor e^0.06 on every weight), where PyTorch's softmax does not.
fn softmax_row_in_place(row: &mut [f32]) -> (f32, f64) {
    // the max, the f64 sums and the scaling in AVX registers (the exp has its own lanes)
    with_avx2!(softmax_row(row))
}

#[inline(always)]
fn softmax_row(row: &mut [f32]) -> (f32, f64) {
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
#[inline(always)]
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
#[inline(always)]
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

/// (y, lse). Small problems (a batch's scores fit in the threads' L2) run by blocks of query rows, one
/// task each; larger ones batch by batch with parallel GEMMs over the whole score matrix, which
/// measured faster there (C2D-NL-R50's N = 3136, M = 784: 10.8 against 12.1 ms by blocks; N = 784,
/// M = 196: 1.8 against 1.5 ms).
pub(super) fn forward(q: &[f32], k: &[f32], v: &[f32], g: AttentionGeom) -> (Vec<f32>, Vec<f32>) {
    if g.n * g.m <= SCORES_PER_THREAD * rayon::current_num_threads() {
        forward_by_blocks(q, k, v, g)
    } else {
        forward_whole(q, k, v, g)
    }
}

/// Scores per thread (2 MiB) up to which the forward runs by blocks of query rows.
const SCORES_PER_THREAD: usize = 512 * 1024;

/// The forward by blocks of query rows: each task computes its rows' scores, their softmax (in L2) and
/// its columns of y, with single-threaded GEMMs.
fn forward_by_blocks(q: &[f32], k: &[f32], v: &[f32], g: AttentionGeom) -> (Vec<f32>, Vec<f32>) {
    let (n, m, c, cv) = (g.n, g.m, g.c, g.cv);
    let mut y: Vec<f32> = Vec::with_capacity(g.batch * cv * n);
    let out = OutPtr(y.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    let mut lse = vec![0.0; g.batch * n];
    let rows = query_rows(g, 2);
    // one task per block of query rows: its scores, their softmax, and its columns of y
    let tasks: Vec<(usize, usize, &mut [f32])> = lse
        .chunks_mut(n)
        .enumerate()
        .flat_map(|(b, l)| {
            l.chunks_mut(rows)
                .enumerate()
                .map(move |(i, lb)| (b, i * rows, lb))
        })
        .collect();
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |p, (b, r0, lb)| {
            let r = lb.len();
            let qb = &q[b * c * n..(b + 1) * c * n];
            let kb = &k[b * c * m..(b + 1) * c * m];
            let vb = &v[b * cv * m..(b + 1) * cv * m];
            p.resize(r * m, 0.0);
            // S[r0 + i, m] = scale·Σ_c q[c, r0 + i]·k[c, m]
            let q_rows = Mat {
                data: &qb[r0..],
                rs: 1,
                cs: n,
            };
            gemm_scaled(
                r,
                m,
                c,
                q_rows,
                Mat::new(kb, m, false),
                p,
                m,
                false,
                false,
                g.scale,
            );
            for (row, l) in p.chunks_exact_mut(m).zip(lb.iter_mut()) {
                let (max, sum) = softmax_row_in_place(row);
                *l = (max as f64 + sum.ln()) as f32;
            }
            // y[cv, r0 + i] = Σ_m v[cv, m]·P[r0 + i, m]
            // SAFETY: this task's columns r0..r0 + r of every row of batch b's y lie inside y's
            // capacity and no other task's.
            unsafe {
                gemm_to_ptr(
                    cv,
                    r,
                    m,
                    Mat::new(vb, m, false),
                    Mat::new(p, m, true),
                    out.at(b * cv * n + r0),
                    n,
                    false,
                )
            };
        });
    // SAFETY: the tasks covered every (batch, cv, query) once.
    unsafe { y.set_len(g.batch * cv * n) };
    (y, lse)
}

/// Query rows per task for `tasks_per_thread` tasks per thread: two in the forward (load balance),
/// one in the backward, whose tasks' partial dv and dk are summed afterwards (and whose GEMMs over a
/// block's rows gain from longer blocks: C2D-NL-R50's N = 784, M = 196 backward 3.7–3.9 ms with
/// one, 4.0–5.0 with two).
fn query_rows(g: AttentionGeom, tasks_per_thread: usize) -> usize {
    (g.batch * g.n)
        .div_ceil(tasks_per_thread * rayon::current_num_threads())
        .clamp(1, g.n)
}

/// The forward batch by batch: the whole score matrix by a parallel GEMM, softmax by rows, y by a
/// parallel GEMM.
fn forward_whole(q: &[f32], k: &[f32], v: &[f32], g: AttentionGeom) -> (Vec<f32>, Vec<f32>) {
    let (n, m, c, cv) = (g.n, g.m, g.c, g.cv);
    let mut y = vec![0.0; g.batch * cv * n];
    let mut lse = vec![0.0; g.batch * n];
    for b in 0..g.batch {
        let qb = &q[b * c * n..(b + 1) * c * n];
        let kb = &k[b * c * m..(b + 1) * c * m];
        let vb = &v[b * cv * m..(b + 1) * cv * m];
        let p = probabilities(qb, kb, g, &mut lse[b * n..(b + 1) * n]);
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

/// (dq, dk, dv). With D[n] = Σ_c dy[c, n]·y[c, n]: dS = scale·P ⊙ (dP − D), dP = dyᵀ·v. By blocks
/// of query rows, one task per thread, where a batch's scores fit in the threads' L2 or each task
/// gets enough rows for its single-threaded GEMMs; else (many threads on a large problem) batch by
/// batch over the whole score matrix with parallel GEMMs.
pub(super) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    y: &[f32],
    _lse: &[f32],
    dy: &[f32],
    g: AttentionGeom,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = BackwardInputs { q, k, v, y, dy };
    let rows = query_rows(g, 1);
    if g.n * g.m <= SCORES_PER_THREAD * rayon::current_num_threads() || rows >= MIN_TASK_ROWS {
        backward_by_blocks(&x, g, rows, (BLOCK_SCORES / g.m).max(1))
    } else {
        backward_whole(&x, g)
    }
}

/// Query rows per task from which a large backward runs by blocks (its partial dv and dk GEMMs
/// reduce over the task's rows).
const MIN_TASK_ROWS: usize = 256;

/// Scores of one block of the backward (P and dS: 1 MiB together, in L2). C2D-NL-R50's N = 3136,
/// M = 784 backward by blocks of 167 rows, alternated with the whole-matrix backward in one process:
/// medians 32.2–34.1 against 34.6–35.7 ms.
const BLOCK_SCORES: usize = 128 * 1024;

/// One task's share of dv and dk (summed over the tasks of its batch afterwards).
struct BlockGrads {
    dv: Vec<f32>,
    dk: Vec<f32>,
}

/// The backward by tasks of `task_rows` query rows, each with single-threaded GEMMs over blocks of
/// `block_rows` rows: the block's P and dS (in L2), its columns of dq, and its terms of the task's
/// partial dv and dk. The partials are then summed task by task in a fixed order (so the result
/// does not depend on the threads' schedule).
fn backward_by_blocks(
    x: &BackwardInputs,
    g: AttentionGeom,
    task_rows: usize,
    block_rows: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, m, c, cv) = (g.n, g.m, g.c, g.cv);
    let mut dq: Vec<f32> = Vec::with_capacity(g.batch * c * n);
    let dq_out = OutPtr(dq.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    let tasks: Vec<(usize, usize)> = (0..g.batch)
        .flat_map(|b| (0..n).step_by(task_rows).map(move |r0| (b, r0)))
        .collect();
    let parts: Vec<BlockGrads> = tasks
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(p, ds), (b, r0)| {
                let batch = x.batch(b, g);
                let end = n.min(r0 + task_rows);
                let mut grads = None;
                for s0 in (r0..end).step_by(block_rows) {
                    let rows = s0..end.min(s0 + block_rows);
                    let dq_b = dq_out.at(b * c * n);
                    // SAFETY: this task's columns r0..end of every row of batch b's dq lie inside
                    // dq's capacity and no other task's.
                    unsafe { block_backward(&batch, g, rows, p, ds, dq_b, &mut grads) }
                }
                grads.expect("every task has rows")
            },
        )
        .collect();
    // SAFETY: the tasks covered every (batch, c, query) once.
    unsafe { dq.set_len(g.batch * c * n) };
    let mut dv = vec![0.0; g.batch * cv * m];
    let mut dk = vec![0.0; g.batch * c * m];
    for (b, tasks) in parts.chunks(n.div_ceil(task_rows)).enumerate() {
        let (dvb, dkb) = (
            &mut dv[b * cv * m..][..cv * m],
            &mut dk[b * c * m..][..c * m],
        );
        sum_parts(dvb, tasks.iter().map(|x| &x.dv[..]));
        sum_parts(dkb, tasks.iter().map(|x| &x.dk[..]));
    }
    (dq, dk, dv)
}

/// The backward's inputs: all batches', or one batch's ([`BackwardInputs::batch`]).
struct BackwardInputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    y: &'a [f32],
    dy: &'a [f32],
}

impl<'a> BackwardInputs<'a> {
    /// Batch b's slices.
    fn batch(&self, b: usize, g: AttentionGeom) -> BackwardInputs<'a> {
        let (n, m, c, cv) = (g.n, g.m, g.c, g.cv);
        BackwardInputs {
            q: &self.q[b * c * n..][..c * n],
            k: &self.k[b * c * m..][..c * m],
            v: &self.v[b * cv * m..][..cv * m],
            y: &self.y[b * cv * n..][..cv * n],
            dy: &self.dy[b * cv * n..][..cv * n],
        }
    }
}

/// The backward of the query rows `rows` of one batch: P and dS for those rows (into `p` and `ds`),
/// their columns of dq (written at `dq`, the batch's [C, N] dq), and their terms of dv and dk (into
/// `grads`, or added to it).
///
/// # Safety
/// `dq` + c·N + i for every c < C and i in `rows` must be valid for writes and written by no one else
/// during the call.
unsafe fn block_backward(
    x: &BackwardInputs,
    g: AttentionGeom,
    rows: std::ops::Range<usize>,
    p: &mut Vec<f32>,
    ds: &mut Vec<f32>,
    dq: *mut f32,
    grads: &mut Option<BlockGrads>,
) {
    let (n, m, c, cv, r) = (g.n, g.m, g.c, g.cv, rows.len());
    // the block's queries: columns rows.start.. of a [_, N] matrix, read as rows or as columns
    let (q_r, dy_r, y_r) = (&x.q[rows.start..], &x.dy[rows.start..], &x.y[rows.start..]);
    let as_rows = |data| Mat { data, rs: 1, cs: n };
    let as_cols = |data| Mat { data, rs: n, cs: 1 };
    let (k, v) = (Mat::new(x.k, m, false), Mat::new(x.v, m, false));
    p.resize(r * m, 0.0);
    ds.resize(r * m, 0.0);
    // S = scale·qᵀk and dP = dyᵀ·v for the block's rows, then P and dS = scale·P ⊙ (dP − D) row by row
    gemm_scaled(r, m, c, as_rows(q_r), k, p, m, false, false, g.scale);
    gemm(r, m, cv, as_rows(dy_r), v, ds, m, false, false);
    let d = row_dots(dy_r, y_r, n, r);
    for ((pr, dsr), &di) in p.chunks_exact_mut(m).zip(ds.chunks_exact_mut(m)).zip(&d) {
        softmax_row_in_place(pr);
        with_avx2!(for (s, &pv) in dsr.iter_mut().zip(&*pr) {
            *s = g.scale * pv * (*s - di);
        })
    }
    // dq[c, i] = Σ_m k[c, m]·dS[i, m] for the block's columns i
    // SAFETY: the caller's contract.
    unsafe {
        gemm_to_ptr(
            c,
            r,
            m,
            k,
            Mat::new(ds, m, true),
            dq.add(rows.start),
            n,
            false,
        )
    };
    // its terms of dv[cv, m] = Σ_i dy[cv, i]·P[i, m] and dk[c, m] = Σ_i q[c, i]·dS[i, m]
    let (p, ds) = (Mat::new(p, m, false), Mat::new(ds, m, false));
    match grads {
        None => {
            *grads = Some(BlockGrads {
                dv: gemm_new(cv, m, r, as_cols(dy_r), p, false, 1.0),
                dk: gemm_new(c, m, r, as_cols(q_r), ds, false, 1.0),
            })
        }
        Some(acc) => {
            gemm(cv, m, r, as_cols(dy_r), p, &mut acc.dv, m, true, false);
            gemm(c, m, r, as_cols(q_r), ds, &mut acc.dk, m, true, false);
        }
    }
}

/// D[i] = Σ_cv dy[cv, i]·y[cv, i] for the first `r` columns of [Cv, stride] rows (all queries, or a
/// block of them), row by row (contiguous), each D[i] summed in cv order.
fn row_dots(dy: &[f32], y: &[f32], stride: usize, r: usize) -> Vec<f32> {
    let mut d = vec![0f32; r];
    with_avx2!(for (dyr, yr) in dy.chunks(stride).zip(y.chunks(stride)) {
        for ((di, &a), &b) in d.iter_mut().zip(&dyr[..r]).zip(&yr[..r]) {
            *di += a * b;
        }
    });
    d
}

/// The backward batch by batch: dP, S and dS over the whole score matrix with parallel GEMMs.
fn backward_whole(x: &BackwardInputs, g: AttentionGeom) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let BackwardInputs { q, k, v, y, dy } = *x;
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
        // dP[n, m] = Σ_cv dy[cv, n]·v[cv, m], then in one pass per row: P from the recomputed scores
        // (into `p`) and dS = scale·P ⊙ (dP − D) (into `ds`)
        let mut ds = gemm_new(
            n,
            m,
            cv,
            Mat::new(dyb, n, true),
            Mat::new(vb, m, false),
            true,
            1.0,
        );
        let d = row_dots(dyb, yb, n, n);
        let mut p = scores(qb, kb, g);
        p.par_chunks_mut(m)
            .zip(ds.par_chunks_mut(m))
            .zip(d.par_iter())
            .for_each(|((pr, dsr), &di)| {
                softmax_row_in_place(pr);
                with_avx2!(for (s, &pv) in dsr.iter_mut().zip(&*pr) {
                    *s = g.scale * pv * (*s - di);
                })
            });
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
        drop(p);
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

    /// A geometry with scale 1/√C and its q, k, v and dy (normal, σ = 2; streams by case).
    fn random_case(
        case: usize,
        batch: usize,
        c: usize,
        cv: usize,
        n: usize,
        m: usize,
    ) -> (AttentionGeom, [Vec<f32>; 4]) {
        let data = |len: usize, seed: u64| {
            (0..len)
                .map(|i| 2.0 * crate::rng::normal(100 * case as u64 + seed, i as u64))
                .collect::<Vec<f32>>()
        };
        let g = AttentionGeom {
            batch,
            c,
            cv,
            n,
            m,
            scale: 1.0 / (c as f32).sqrt(),
        };
        let lens = [c * n, c * m, cv * m, cv * n];
        (
            g,
            std::array::from_fn(|i| data(batch * lens[i], i as u64 + 1)),
        )
    }

    /// Both forward strategies (by blocks of query rows and whole) against the f64 definition, on
    /// shapes with a ragged last block and two batches. Bound per output: the scores' error
    /// Δs = γ_C·scale·Σ_c |q||k| moves each weight by at most 2·Δs of itself (P_m·(δs_m − Σ P δs)), and
    /// the exp, normalisation and the M-long sum add (M + 4)·u: |δy| ≤ (2Δs + (M + 4)u)·Σ_m |v|·P, plus
    /// a few ulp of y. The lse: Δs + 4u of its magnitude.
    #[test]
    fn forward_strategies_match_f64() {
        let u = f32::EPSILON as f64 / 2.0;
        for (case, &(batch, c, cv, n, m)) in [
            (2, 5, 3, 37, 11),
            (1, 16, 8, 64, 30),
            (2, 3, 4, 7, 200),
            (1, 4, 5, 150, 9),
        ]
        .iter()
        .enumerate()
        {
            let (g, [q, k, v, _]) = random_case(case, batch, c, cv, n, m);
            let ds_gamma = c as f64 * u / (1.0 - c as f64 * u);
            for (name, (y, lse)) in [
                ("blocks", forward_by_blocks(&q, &k, &v, g)),
                ("whole", forward_whole(&q, &k, &v, g)),
            ] {
                for b in 0..batch {
                    for i in 0..n {
                        let (mut s, mut ds) = (vec![0f64; m], 0f64);
                        for (j, sj) in s.iter_mut().enumerate() {
                            let (mut dot, mut abs) = (0f64, 0f64);
                            for l in 0..c {
                                let p =
                                    q[(b * c + l) * n + i] as f64 * k[(b * c + l) * m + j] as f64;
                                dot += p;
                                abs += p.abs();
                            }
                            *sj = g.scale as f64 * dot;
                            ds = ds.max(ds_gamma * g.scale as f64 * abs);
                        }
                        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = s.iter().map(|&x| (x - max).exp()).sum();
                        let want_lse = max + sum.ln();
                        let got_lse = lse[b * n + i] as f64;
                        assert!(
                            (got_lse - want_lse).abs() <= (ds + 4.0 * u) * want_lse.abs().max(1.0),
                            "{name} case {case} lse[{b}, {i}]: {got_lse} vs {want_lse}"
                        );
                        for o in 0..cv {
                            let (mut want, mut mass) = (0f64, 0f64);
                            for (j, &sj) in s.iter().enumerate() {
                                let p = (sj - max).exp() / sum;
                                let vj = v[(b * cv + o) * m + j] as f64;
                                want += vj * p;
                                mass += vj.abs() * p;
                            }
                            let got = y[(b * cv + o) * n + i] as f64;
                            let bound =
                                (2.0 * ds + (m + 4) as f64 * u) * mass + 4.0 * u * want.abs();
                            assert!(
                                (got - want).abs() <= bound,
                                "{name} case {case} y[{b}, {o}, {i}]: {got} vs {want} (bound {bound})"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Both backward strategies (by tasks and blocks of query rows — ragged, several blocks per task —
    /// and whole) against the f64 gradients of the same inputs (y from the forward, dy random).
    /// Bounds, first order in u: each weight P carries ε_P = 2Δs + (M + 4)u of itself (the forward
    /// test's analysis), dP and D the γ_Cv of their absolute sums A = Σ|dy||v|, B = Σ|dy||y|, and
    /// dS = scale·P·(dP − D) three roundings, so its error is at most
    /// E = scale·P·(1 + ε_P)·(ε_P·|dP − D| + γ_Cv·(A + B)) + 3u·|dS|. The products then add γ of their
    /// reduction length over their absolute terms (any order of summation, so the tasks' partial sums
    /// included): dv within Σ_n |dy|·(ε_P + γ_N)·P, dq within Σ_m |k|·(E + γ_M·(|dS| + E)), dk within
    /// Σ_n |q|·(E + γ_N·(|dS| + E)).
    #[test]
    fn backward_strategies_match_f64() {
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = |len: usize| len as f64 * u / (1.0 - len as f64 * u);
        for (case, &(batch, c, cv, n, m, task_rows, block_rows)) in [
            (2, 5, 3, 37, 11, 10, 4),
            (1, 16, 8, 64, 30, 64, 64),
            (2, 3, 4, 7, 200, 3, 2),
            (1, 4, 5, 150, 9, 40, 7),
        ]
        .iter()
        .enumerate()
        {
            let (g, [q, k, v, dy]) = random_case(case, batch, c, cv, n, m);
            let (y, _) = forward_whole(&q, &k, &v, g);
            let inputs = BackwardInputs {
                q: &q,
                k: &k,
                v: &v,
                y: &y,
                dy: &dy,
            };
            let (sc, ds_gamma) = (g.scale as f64, gamma(c));
            // f64 references and bounds, per batch
            let (mut dq, mut dk, mut dv) = (
                vec![(0f64, 0f64); q.len()],
                vec![(0f64, 0f64); k.len()],
                vec![(0f64, 0f64); v.len()],
            );
            for b in 0..batch {
                let at = |x: &[f32], rows: usize, r: usize, col: usize, cols: usize| {
                    x[(b * rows + r) * cols + col] as f64
                };
                for i in 0..n {
                    let (mut s, mut ds) = (vec![0f64; m], 0f64);
                    for (j, sj) in s.iter_mut().enumerate() {
                        let (mut dot, mut abs) = (0f64, 0f64);
                        for l in 0..c {
                            let p = at(&q, c, l, i, n) * at(&k, c, l, j, m);
                            dot += p;
                            abs += p.abs();
                        }
                        *sj = sc * dot;
                        ds = ds.max(ds_gamma * sc * abs);
                    }
                    let eps_p = 2.0 * ds + (m + 4) as f64 * u;
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = s.iter().map(|&x| (x - max).exp()).sum();
                    let (mut d, mut d_abs) = (0f64, 0f64);
                    for o in 0..cv {
                        d += at(&dy, cv, o, i, n) * at(&y, cv, o, i, n);
                        d_abs += (at(&dy, cv, o, i, n) * at(&y, cv, o, i, n)).abs();
                    }
                    for (j, &sj) in s.iter().enumerate() {
                        let p = (sj - max).exp() / sum;
                        let (mut dp, mut dp_abs) = (0f64, 0f64);
                        for o in 0..cv {
                            let t = at(&dy, cv, o, i, n) * at(&v, cv, o, j, m);
                            dp += t;
                            dp_abs += t.abs();
                            let e = &mut dv[(b * cv + o) * m + j];
                            e.0 += at(&dy, cv, o, i, n) * p;
                            e.1 += at(&dy, cv, o, i, n).abs() * (eps_p + gamma(n)) * p;
                        }
                        let dsij = sc * p * (dp - d);
                        let err = sc
                            * p
                            * (1.0 + eps_p)
                            * (eps_p * (dp - d).abs() + gamma(cv) * (dp_abs + d_abs))
                            + 3.0 * u * dsij.abs();
                        for l in 0..c {
                            let (kl, ql) = (at(&k, c, l, j, m), at(&q, c, l, i, n));
                            let e = &mut dq[(b * c + l) * n + i];
                            e.0 += kl * dsij;
                            e.1 += kl.abs() * (err + gamma(m) * (dsij.abs() + err));
                            let e = &mut dk[(b * c + l) * m + j];
                            e.0 += ql * dsij;
                            e.1 += ql.abs() * (err + gamma(n) * (dsij.abs() + err));
                        }
                    }
                }
            }
            for (name, (gq, gk, gv)) in [
                (
                    "blocks",
                    backward_by_blocks(&inputs, g, task_rows, block_rows),
                ),
                ("whole", backward_whole(&inputs, g)),
            ] {
                for (what, got, want) in [("dq", &gq, &dq), ("dk", &gk, &dk), ("dv", &gv, &dv)] {
                    assert_eq!(got.len(), want.len());
                    for (idx, (&x, &(w, bound))) in got.iter().zip(want.iter()).enumerate() {
                        assert!(
                            (x as f64 - w).abs() <= bound,
                            "{name} case {case} {what}[{idx}]: {x} vs {w} (bound {bound})"
                        );
                    }
                }
            }
        }
    }

    /// NaN and ±Inf in q and k: the whole-matrix forward and backward (parallel GEMMs, not reached by
    /// the small non-finite fixtures) give NaN and ±Inf exactly where the passes by blocks (checked
    /// against PyTorch's non-finite fixtures) do, in y, lse, dq, dk and dv, and the same finite values
    /// to 1e-5 (each is within the f64 bounds of the tests above, ≈ 2e-6 of the outputs' scale here).
    #[test]
    fn whole_passes_have_the_non_finite_pattern_of_blocks() {
        let (batch, c, cv, n, m) = (1, 3, 2, 70, 9);
        let data = |len: usize, seed: u64| {
            (0..len)
                .map(|i| crate::rng::normal(seed, i as u64))
                .collect::<Vec<f32>>()
        };
        let (mut q, mut k, v) = (data(c * n, 1), data(c * m, 2), data(cv * m, 3));
        q[5] = f32::NAN; // query 5's scores
        q[n + 20] = f32::INFINITY; // query 20: ±Inf scores (and NaN where k is 0 · Inf)
        q[2 * n + 66] = f32::NEG_INFINITY; // query 66, in the second strip
        k[c * m - 1] = f32::INFINITY; // key m − 1 for every query
        let g = AttentionGeom {
            batch,
            c,
            cv,
            n,
            m,
            scale: 0.5,
        };
        let (yb, lb) = forward_by_blocks(&q, &k, &v, g);
        let (yw, lw) = forward_whole(&q, &k, &v, g);
        let dy = data(cv * n, 4);
        let inputs = BackwardInputs {
            q: &q,
            k: &k,
            v: &v,
            y: &yb,
            dy: &dy,
        };
        let (dqb, dkb, dvb) = backward_by_blocks(&inputs, g, 30, 7);
        let (dqw, dkw, dvw) = backward_whole(&inputs, g);
        let mut non_finite = std::collections::BTreeMap::new();
        for (what, b, w) in [
            ("y", &yb, &yw),
            ("lse", &lb, &lw),
            ("dq", &dqb, &dqw),
            ("dk", &dkb, &dkw),
            ("dv", &dvb, &dvw),
        ] {
            for (i, (&x, &y)) in b.iter().zip(w.iter()).enumerate() {
                if x.is_finite() {
                    assert!(
                        (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                        "{what}[{i}]: {y} vs {x}"
                    );
                } else {
                    *non_finite.entry(what).or_insert(0) += 1;
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "{what}[{i}]: {y} vs {x}"
                    );
                }
            }
        }
        for what in ["y", "lse", "dq", "dk", "dv"] {
            assert!(
                non_finite.contains_key(what),
                "the case has non-finite {what}"
            );
        }
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
