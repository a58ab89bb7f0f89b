//! permute, concat and split.

use super::elementwise::{par_new, par_new_copies};

/// y = x with dims reordered (y.shape[i] = shape[perm[i]]), contiguous; parallel over output rows.
pub(super) fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let r = shape.len();
    let mut in_strides = vec![1; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let row = out_shape[r - 1];
    let last_stride = src_strides[r - 1];
    if x.is_empty() {
        return vec![];
    }
    // Source offset of output row ri from its multi-index over the leading dims.
    let base = |ri: usize| {
        let mut rem = ri;
        let mut base = 0;
        for d in (0..r - 1).rev() {
            base += (rem % out_shape[d]) * src_strides[d];
            rem /= out_shape[d];
        }
        base
    };
    if last_stride == 1 {
        par_new_copies(x.len(), row, |ri| std::iter::once(&x[base(ri)..][..row]))
    } else {
        par_new(x.len(), row, |ri, _| {
            let b = base(ri);
            (0..row).map(move |j| x[b + j * last_stride])
        })
    }
}

/// [outer, Σ inner_i] from the [outer, inner_i] pieces.
pub(super) fn concat(xs: &[&[f32]], outer: usize, inners: &[usize]) -> Vec<f32> {
    let total: usize = inners.iter().sum();
    par_new_copies(outer * total, total, |o| {
        xs.iter()
            .zip(inners)
            .map(move |(x, &inner)| &x[o * inner..(o + 1) * inner])
    })
}

/// The inverse of [`concat`].
pub(super) fn split(x: &[f32], outer: usize, inners: &[usize]) -> Vec<Vec<f32>> {
    let total: usize = inners.iter().sum();
    let mut off = 0;
    inners
        .iter()
        .map(|&inner| {
            let start = off;
            off += inner;
            par_new_copies(outer * inner, inner, |o| {
                std::iter::once(&x[o * total + start..][..inner])
            })
        })
        .collect()
}
