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
    let par = if parallel && m * n * k > 64 * 64 * 64 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every access of the m×n×k product inside the three slices, and
    // `c` is borrowed mutably, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
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
        gemm(m, n, k, am, bm, cb, n, false, batch == 1);
    };
    if batch == 1 {
        one((0, &mut c[..]));
    } else {
        c.par_chunks_mut(m * n).enumerate().for_each(one);
    }
    c
}
