//! permute, concat and split.

use rayon::prelude::*;

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
    let mut y = vec![0.0; x.len()];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(row).enumerate().for_each(|(ri, out)| {
        // Source offset of this output row from its multi-index over the leading dims.
        let mut rem = ri;
        let mut base = 0;
        for d in (0..r - 1).rev() {
            base += (rem % out_shape[d]) * src_strides[d];
            rem /= out_shape[d];
        }
        if last_stride == 1 {
            out.copy_from_slice(&x[base..base + row]);
        } else {
            for (j, o) in out.iter_mut().enumerate() {
                *o = x[base + j * last_stride];
            }
        }
    });
    y
}

/// [outer, Σ inner_i] from the [outer, inner_i] pieces.
pub(super) fn concat(xs: &[&[f32]], outer: usize, inners: &[usize]) -> Vec<f32> {
    let total: usize = inners.iter().sum();
    let mut y = vec![0.0; outer * total];
    if y.is_empty() {
        return y;
    }
    y.par_chunks_mut(total).enumerate().for_each(|(o, row)| {
        let mut off = 0;
        for (x, &inner) in xs.iter().zip(inners) {
            row[off..off + inner].copy_from_slice(&x[o * inner..(o + 1) * inner]);
            off += inner;
        }
    });
    y
}

/// The inverse of [`concat`].
pub(super) fn split(x: &[f32], outer: usize, inners: &[usize]) -> Vec<Vec<f32>> {
    let total: usize = inners.iter().sum();
    let mut off = 0;
    inners
        .iter()
        .map(|&inner| {
            let mut part = vec![0.0; outer * inner];
            if inner > 0 {
                part.par_chunks_mut(inner).enumerate().for_each(|(o, p)| {
                    p.copy_from_slice(&x[o * total + off..o * total + off + inner]);
                });
            }
            off += inner;
            part
        })
        .collect()
}
