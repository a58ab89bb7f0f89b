//! permute and concat (split hands out views: mod.rs, `split_views`).

use super::elementwise::{par_new, par_new_copies};

/// y = x with dims reordered (y.shape[i] = shape[perm[i]]), contiguous; parallel over output rows.
pub(super) fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let (shape, perm) = merge_dims(shape, perm);
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        // the same order in memory (unit dims moved, or nothing): a copy
        return par_new_copies(x.len(), x.len().max(1), |_| std::iter::once(x));
    }
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

/// The same permutation of the same memory with dims of extent 1 dropped and input dims that stay
/// neighbours in the output merged into one (fewer, longer rows): ([1, 2048, 1, 1, 1], [0, 2, 3, 4, 1])
/// becomes ([2048], [0]), a copy. Returns the merged input shape and permutation.
fn merge_dims(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    // runs of input dims, in output order, that stay consecutive: (first, last) input dim
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &p in perm.iter().filter(|&&p| shape[p] != 1) {
        match runs.last_mut() {
            Some(run) if (run.1 + 1..p).all(|d| shape[d] == 1) && p > run.1 => run.1 = p,
            _ => runs.push((p, p)),
        }
    }
    let mut by_input: Vec<usize> = (0..runs.len()).collect();
    by_input.sort_by_key(|&i| runs[i].0);
    let merged_shape = by_input
        .iter()
        .map(|&i| (runs[i].0..=runs[i].1).map(|d| shape[d]).product())
        .collect();
    let merged_perm = (0..runs.len())
        .map(|i| by_input.iter().position(|&j| j == i).unwrap())
        .collect();
    (merged_shape, merged_perm)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// y[i_0, …] = x[i_perm⁻¹…]: the output index's digit d is the input's digit perm[d].
    fn naive_permute(x: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
        let r = shape.len();
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let mut y = Vec::with_capacity(x.len());
        for o in 0..x.len() {
            let (mut rem, mut idx) = (o, vec![0; r]);
            for d in (0..r).rev() {
                idx[perm[d]] = rem % out_shape[d];
                rem /= out_shape[d];
            }
            let src = idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i);
            y.push(x[src]);
        }
        y
    }

    /// Every permutation of shapes with unit dims in several places (merged, dropped or kept as
    /// rows), bit for bit against the index formula, and the merged forms of a few by hand.
    #[test]
    fn permute_matches_index_formula() {
        let shapes: [&[usize]; 5] = [
            &[1, 6, 1, 1, 1],
            &[2, 1, 3, 4],
            &[1, 1, 1],
            &[3, 2, 1, 5, 2],
            &[4, 3, 2],
        ];
        for shape in shapes {
            let x: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|v| v as f32)
                .collect();
            let r = shape.len();
            let mut perm: Vec<usize> = (0..r).collect();
            // Heap's algorithm: every permutation of 0..r
            let mut c = vec![0; r];
            let mut i = 0;
            loop {
                assert_eq!(
                    permute(&x, shape, &perm),
                    naive_permute(&x, shape, &perm),
                    "{shape:?} by {perm:?}"
                );
                while i < r && c[i] >= i {
                    c[i] = 0;
                    i += 1;
                }
                if i >= r {
                    break;
                }
                perm.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
                c[i] += 1;
                i = 0;
            }
        }
        assert_eq!(
            merge_dims(&[1, 2048, 1, 1, 1], &[0, 2, 3, 4, 1]),
            (vec![2048], vec![0])
        );
        assert_eq!(
            merge_dims(&[2, 3, 4, 5], &[0, 2, 3, 1]),
            (vec![2, 3, 20], vec![0, 2, 1])
        );
        assert_eq!(
            merge_dims(&[16, 96, 28, 28], &[1, 0, 2, 3]),
            (vec![16, 96, 784], vec![1, 0, 2])
        );
    }
}
