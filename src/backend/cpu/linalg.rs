//! Matrix products over the `gemm` crate.

use gemm::Parallelism;
use rayon::prelude::*;

use crate::backend::MatmulGeom;

/// A strided read-only matrix: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major matrix with `stored_cols` columns, read as itself or (with `trans`) its transpose.
    pub fn new(data: &'a [f32], stored_cols: usize, trans: bool) -> Self {
        if trans {
            Mat {
                data,
                rs: 1,
                cs: stored_cols,
            }
        } else {
            Mat {
                data,
                rs: stored_cols,
                cs: 1,
            }
        }
    }
    /// The transpose, as a view.
    pub fn t(self) -> Self {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
    fn last_index(&self, rows: usize, cols: usize) -> usize {
        (rows - 1) * self.rs + (cols - 1) * self.cs
    }
}

/// c[i·c_rs + j] = (accumulate ? c : 0) + Σ_l a(i, l)·b(l, j) for an m×n result.
/// `parallel` lets gemm use rayon's threads (use it when the caller is not itself parallel).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    parallel: bool,
) {
    gemm_scaled(m, n, k, a, b, c, c_rs, accumulate, parallel, 1.0)
}

/// [`gemm`] with the product scaled: c = (accumulate ? c : 0) + scale·Σ_l a(i, l)·b(l, j), the scale
/// applied to each dot product in the GEMM's store (one rounding, no second pass over c).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_scaled(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    parallel: bool,
    scale: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(a.last_index(m, k) < a.data.len(), "gemm: lhs out of bounds");
    assert!(b.last_index(k, n) < b.data.len(), "gemm: rhs out of bounds");
    assert!((m - 1) * c_rs + n <= c.len(), "gemm: dst out of bounds");
    if let Some(done) = thin_product(m, n, k, a, b, c, c_rs, accumulate, parallel, scale) {
        return done;
    }
    let dst = c.as_mut_ptr();
    // SAFETY: the asserts above keep every access of the m×n×k product inside the three slices, and
    // `c` is borrowed mutably, so it aliases neither input.
    unsafe { gemm_product(m, n, k, a, b, dst, c_rs, accumulate, parallel, scale) }
}

/// A new m×n matrix (rows of n) c = scale·Σ_l a(i, l)·b(l, j), which the GEMM writes without its
/// being zeroed first (a zero-filled m·n allocation was a pass over memory and its page faults: 9.8 MB
/// for the attention's scores of C2D-NL-R50, 0.4 ms of a 7 ms product).
#[allow(clippy::too_many_arguments)]
pub(super) fn gemm_new(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    parallel: bool,
    scale: f32,
) -> Vec<f32> {
    if m == 1 || k <= 1 || n == 0 {
        // the thin products and the empty ones, on their own paths
        let mut c = vec![0.0; m * n];
        gemm_scaled(m, n, k, a, b, &mut c, n, false, parallel, scale);
        return c;
    }
    assert!(a.last_index(m, k) < a.data.len(), "gemm: lhs out of bounds");
    assert!(b.last_index(k, n) < b.data.len(), "gemm: rhs out of bounds");
    let mut c = Vec::with_capacity(m * n);
    // SAFETY: the inputs' bounds are checked above; the GEMM writes every one of the m×n elements of
    // c's capacity (it reads none of them, `accumulate` false) before the length covers them.
    unsafe {
        gemm_product(m, n, k, a, b, c.as_mut_ptr(), n, false, parallel, scale);
        c.set_len(m * n);
    }
    c
}

/// [`gemm`] into rows that are not one slice: c = Σ_l a(i, l)·b(l, j) written at `c + i·c_rs + j`
/// (nothing read there first). For tasks that each own some rows' spans of one output (a
/// convolution's output channels at one chunk of positions), which no `&mut` slice can describe
/// without overlapping the other tasks'.
///
/// # Safety
/// Every `c + i·c_rs + j` (i < m, j < n) must be valid for writes, written by no one else during the
/// call, and overlap neither `a` nor `b`; `a` and `b` must hold their m×k and k×n elements.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_to_ptr(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: *mut f32,
    c_rs: usize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i's n elements are the caller's to write.
            unsafe { std::ptr::write_bytes(c.add(i * c_rs), 0, n) };
        }
        return;
    }
    assert!(a.last_index(m, k) < a.data.len(), "gemm: lhs out of bounds");
    assert!(b.last_index(k, n) < b.data.len(), "gemm: rhs out of bounds");
    // SAFETY: the inputs' bounds are checked above, the destination's are the caller's contract.
    unsafe { gemm_product(m, n, k, a, b, c, c_rs, false, parallel, 1.0) }
}

/// The gemm crate's product, bounds already checked by the caller.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_product(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    parallel: bool,
    scale: f32,
) {
    let par = if parallel && m * n * k > 64 * 64 * 64 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the callers' bounds checks and contracts (see `gemm_scaled` and `gemm_to_ptr`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            c_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        )
    }
}

/// Products with a single row or a single reduction step — a linear layer at batch 1 (y = x·Wᵀ,
/// dx = dy·W) and its weight gradient at batch 1 (dW = dyᵀ·x, k = 1) — computed directly: the gemm
/// crate packs W for them, a pass over memory as long as the product itself, on one thread below its
/// parallel threshold. `None`: not such a product (the caller runs the GEMM).
#[allow(clippy::too_many_arguments)]
fn thin_product(
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
    parallel: bool,
    scale: f32,
) -> Option<()> {
    let store = |c: &mut f32, sum: f32| {
        *c = if accumulate {
            *c + scale * sum
        } else {
            scale * sum
        }
    };
    // an outer product (k = 1) only writes: in parallel from a larger output (on the development
    // machine a 400 × 512 one took 0.5 of its parallel time on one thread, a 400 × 2048 one 1.14)
    let work = if k == 1 { m * n / 8 } else { m * n * k };
    let pieces = if parallel && work >= THIN_PARALLEL_WORK {
        rayon::current_num_threads()
    } else {
        1
    };
    if m == 1 && a.cs == 1 && b.rs == 1 {
        // n dot products of contiguous rows: a's row with each of bᵀ's rows
        let x = &a.data[..k];
        let row = |j: usize| &b.data[j * b.cs..j * b.cs + k];
        for_pieces(&mut c[..n], pieces, |j0, out| {
            with_avx2!(for (j, cj) in (j0..).zip(&mut *out) {
                store(cj, dot(x, row(j)));
            })
        });
        return Some(());
    }
    if m == 1 && b.cs == 1 {
        // Σ_l a(0, l)·b's row l, over column pieces, four rows of b per pass over the sums (each sum
        // still adds the rows' products in order)
        let b_row = |l: usize, j0: usize, len: usize| &b.data[l * b.rs + j0..][..len];
        for_pieces(&mut c[..n], pieces, |j0, out| {
            with_avx2!({
                let len = out.len();
                let mut sum = vec![0.0f32; len];
                for l in (0..k / 4 * 4).step_by(4) {
                    let [a0, a1, a2, a3] = std::array::from_fn(|i| a.data[(l + i) * a.cs]);
                    let [b0, b1, b2, b3] = std::array::from_fn(|i| b_row(l + i, j0, len));
                    for (j, s) in sum.iter_mut().enumerate() {
                        *s = *s + a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j];
                    }
                }
                for l in k / 4 * 4..k {
                    let al = a.data[l * a.cs];
                    let bl = b_row(l, j0, len);
                    sum.iter_mut().zip(bl).for_each(|(s, &v)| *s += al * v);
                }
                out.iter_mut().zip(&sum).for_each(|(cj, &s)| store(cj, s));
            })
        });
        return Some(());
    }
    if k == 1 && b.cs == 1 {
        // the outer product of a's column and b's row, row by row
        let brow = &b.data[..n];
        let rows = |i0: usize, i1: usize, c: &mut [f32]| {
            for i in i0..i1 {
                let ai = a.data[i * a.rs];
                let ci = &mut c[(i - i0) * c_rs..][..n];
                ci.iter_mut()
                    .zip(brow)
                    .for_each(|(cj, &v)| store(cj, ai * v));
            }
        };
        if pieces > 1 && c_rs == n {
            c[..m * n]
                .par_chunks_mut(n * m.div_ceil(pieces))
                .enumerate()
                .for_each(|(p, ch)| {
                    let i0 = p * m.div_ceil(pieces);
                    rows(i0, i0 + ch.len() / n, ch)
                });
        } else {
            rows(0, m, c);
        }
        return Some(());
    }
    None
}

/// Multiply-adds (an outer product: outputs / 8) from which [`thin_product`] splits its work over the
/// threads.
const THIN_PARALLEL_WORK: usize = 1 << 16;

/// `f(first index, piece)` over `pieces` contiguous pieces of `out`, in parallel when more than one.
fn for_pieces(out: &mut [f32], pieces: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let len = out.len().div_ceil(pieces.max(1)).max(1);
    if pieces > 1 {
        out.par_chunks_mut(len)
            .enumerate()
            .for_each(|(p, piece)| f(p * len, piece));
    } else {
        f(0, out);
    }
}

/// Σ a·b in eight lanes, so it vectorises (inlined, so that it runs on the caller's instruction set).
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Batched C = op(A)·op(B), see [`MatmulGeom`].
pub(super) fn matmul(a: &[f32], b: &[f32], g: MatmulGeom) -> Vec<f32> {
    let MatmulGeom {
        batch,
        m,
        k,
        n,
        trans_a,
        trans_b,
    } = g;
    if batch == 1 && k == 1 {
        // A linear layer's weight gradient at batch 1, the outer product of two vectors (k = 1: both
        // layouts are the vectors themselves): written once, in parallel, with nothing zeroed first.
        return super::elementwise::par_new(m * n, n.max(1), |i, _| {
            let ai = a[i];
            b[..n].iter().map(move |&bj| ai * bj)
        });
    }
    if batch == 1 {
        let am = Mat::new(a, if trans_a { m } else { k }, trans_a);
        let bm = Mat::new(b, if trans_b { k } else { n }, trans_b);
        return gemm_new(m, n, k, am, bm, true, 1.0);
    }
    let mut c = vec![0.0; batch * m * n];
    if c.is_empty() {
        return c;
    }
    let one = |(i, cb): (usize, &mut [f32])| {
        let am = Mat::new(
            &a[i * m * k..(i + 1) * m * k],
            if trans_a { m } else { k },
            trans_a,
        );
        let bm = Mat::new(
            &b[i * k * n..(i + 1) * k * n],
            if trans_b { k } else { n },
            trans_b,
        );
        gemm(m, n, k, am, bm, cb, n, false, false);
    };
    c.par_chunks_mut(m * n).enumerate().for_each(one);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_data as data;

    /// `matmul` on each of its paths — batch 1 with k = 1 (the parallel outer product), with one row
    /// (the thin products), general (`gemm_new`, every layout), and batched — against the f64 sum:
    /// each result within γ_k·Σ|a||b| (k − 1 additions and the products).
    #[test]
    fn matmul_paths_match_f64() {
        let u = f32::EPSILON as f64 / 2.0;
        // (batch, m, k, n)
        let shapes = [
            (1, 400, 1, 512),
            (1, 300, 1, 7),
            (1, 1, 400, 512),
            (1, 37, 29, 53),
            (3, 5, 17, 9),
        ];
        for (case, &(batch, m, k, n)) in shapes.iter().enumerate() {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                let (av, bv) = (
                    data(batch * m * k, case as u64),
                    data(batch * k * n, 10 + case as u64),
                );
                let g = MatmulGeom {
                    batch,
                    m,
                    k,
                    n,
                    trans_a,
                    trans_b,
                };
                let c = matmul(&av, &bv, g);
                assert_eq!(c.len(), batch * m * n);
                let gamma = k as f64 * u / (1.0 - k as f64 * u);
                for bi in 0..batch {
                    let (a, b) = (&av[bi * m * k..], &bv[bi * k * n..]);
                    for i in 0..m {
                        for j in 0..n {
                            let (mut sum, mut abs) = (0f64, 0f64);
                            for l in 0..k {
                                let x = if trans_a { a[l * m + i] } else { a[i * k + l] };
                                let y = if trans_b { b[j * k + l] } else { b[l * n + j] };
                                let p = x as f64 * y as f64;
                                sum += p;
                                abs += p.abs();
                            }
                            let got = c[(bi * m + i) * n + j] as f64;
                            assert!(
                                (got - sum).abs() <= gamma * abs,
                                "case {case} ({trans_a}, {trans_b}) [{bi}, {i}, {j}]: {got} vs {sum}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The thin products (one row, or one reduction step) against the f64 sum, for every layout they
    /// take and with accumulation and scaling: each result within γ_(k+2)·(|c| + |scale|·Σ|a||b|)
    /// (k − 1 additions in some order, the products, the scale and the accumulation). And the shapes
    /// that are not thin (m = 2, k = 2) still go to the GEMM.
    #[test]
    fn thin_products_match_f64() {
        let u = f32::EPSILON as f64 / 2.0;
        // (m, n, k, a transposed, b transposed)
        let cases = [
            (1, 400, 512, false, true),  // y = x·Wᵀ
            (1, 37, 1001, false, true),  // odd sizes (a tail after the lanes), parallel
            (1, 512, 400, false, false), // dx = dy·W
            (1, 5, 3, true, false),
            (400, 512, 1, true, false), // dW = dyᵀ·x
            (3, 9, 1, false, false),
        ];
        for (case, &(m, n, k, ta, tb)) in cases.iter().enumerate() {
            let (av, bv) = (data(m * k, case as u64), data(k * n, 50 + case as u64));
            let a = Mat::new(&av, if ta { m } else { k }, ta);
            let b = Mat::new(&bv, if tb { k } else { n }, tb);
            for (accumulate, scale) in [(false, 1.0f32), (true, 0.5)] {
                for parallel in [false, true] {
                    let c0 = data(m * n, 99);
                    let mut c = c0.clone();
                    assert!(
                        thin_product(m, n, k, a, b, &mut c, n, accumulate, parallel, scale)
                            .is_some(),
                        "case {case} is thin"
                    );
                    let gamma = (k + 2) as f64 * u / (1.0 - (k + 2) as f64 * u);
                    for i in 0..m {
                        for j in 0..n {
                            let (mut sum, mut abs) = (0.0f64, 0.0f64);
                            for l in 0..k {
                                let p = a.data[i * a.rs + l * a.cs] as f64
                                    * b.data[l * b.rs + j * b.cs] as f64;
                                sum += p;
                                abs += p.abs();
                            }
                            let prior = if accumulate {
                                c0[i * n + j] as f64
                            } else {
                                0.0
                            };
                            let want = prior + scale as f64 * sum;
                            let bound = gamma * (prior.abs() + scale as f64 * abs);
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= bound,
                                "case {case} ({i}, {j}): {got} vs {want} (bound {bound})"
                            );
                        }
                    }
                }
            }
        }
        let (av, bv) = (data(4, 1), data(4, 2));
        let mut c = vec![0.0; 4];
        let (a, b) = (Mat::new(&av, 2, false), Mat::new(&bv, 2, false));
        assert!(thin_product(2, 2, 2, a, b, &mut c, 2, false, false, 1.0).is_none());
    }
}
