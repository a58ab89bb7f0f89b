//! reshape / flatten (views sharing storage), permute / transpose (copies), concat along any dim.

use crate::autograd::{needs_grad, record};
use crate::error::{shape_bail, Result};
use crate::ops::{resolve_dim, same_device};
use crate::tensor::{numel_of, Tensor, MAX_RANK};

/// The same values with another shape of the same size; shares storage.
pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if shape.is_empty() || shape.len() > MAX_RANK || numel_of(shape) != x.numel() {
        shape_bail!(
            "reshape",
            "cannot view {:?} ({} elements) as {shape:?} ({} elements, rank must be 1..={MAX_RANK})",
            x.shape(),
            x.numel(),
            numel_of(shape)
        );
    }
    let y = x.sibling(x.buffer().clone(), shape.to_vec());
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let xshape = x.shape().to_vec();
    Ok(record(
        "reshape",
        &[x],
        y,
        Box::new(move |gy| Ok(vec![Some(gy.sibling(gy.buffer().clone(), xshape))])),
    ))
}

/// Merge dims start..=end (negative counts from the end) into one.
pub fn flatten(x: &Tensor, start: isize, end: isize) -> Result<Tensor> {
    let s = resolve_dim("flatten", start, x.shape())?;
    let e = resolve_dim("flatten", end, x.shape())?;
    if s > e {
        shape_bail!(
            "flatten",
            "start dim {start} after end dim {end} for shape {:?}",
            x.shape()
        );
    }
    let sh = x.shape();
    let mut out = sh[..s].to_vec();
    out.push(sh[s..=e].iter().product());
    out.extend_from_slice(&sh[e + 1..]);
    reshape(x, &out)
}

/// Reorder dimensions: y.shape[i] = x.shape[perm[i]]. Makes a contiguous copy.
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    same_device("permute", &[x])?;
    let r = x.rank();
    let mut seen = [false; MAX_RANK];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        shape_bail!(
            "permute",
            "{perm:?} is not a permutation of the dims of {:?}",
            x.shape()
        );
    }
    let yshape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let y = x.sibling(x.backend().permute(x.buf(), x.shape(), perm)?, yshape);
    if !needs_grad(&[x]) {
        return Ok(y);
    }
    let mut inverse = vec![0; r];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok(record(
        "permute",
        &[x],
        y,
        Box::new(move |gy| Ok(vec![Some(permute(gy, &inverse)?)])),
    ))
}

/// Swap two dims (negative counts from the end).
pub fn transpose(x: &Tensor, d0: isize, d1: isize) -> Result<Tensor> {
    let a = resolve_dim("transpose", d0, x.shape())?;
    let b = resolve_dim("transpose", d1, x.shape())?;
    let mut perm: Vec<usize> = (0..x.rank()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// Join tensors along `dim`; all other dims must agree.
pub fn concat(xs: &[&Tensor], dim: isize) -> Result<Tensor> {
    Ok(concat_or_join(xs, dim, false)?.0)
}

/// [`concat`] of tensors that their producers wrote into their slices of one buffer (the executor's
/// concat without copies: views from `split` of the output): that buffer, without a copy. Inputs that
/// are not such views are copied as [`concat`] copies them. Same result and backward either way;
/// whether it was joined without a copy.
pub(crate) fn concat_written(xs: &[&Tensor], dim: isize) -> Result<(Tensor, bool)> {
    concat_or_join(xs, dim, true)
}

fn concat_or_join(xs: &[&Tensor], dim: isize, join: bool) -> Result<(Tensor, bool)> {
    let Some(first) = xs.first() else {
        shape_bail!("concat", "needs at least one tensor");
    };
    same_device("concat", xs)?;
    let d = resolve_dim("concat", dim, first.shape())?;
    for t in xs {
        let ok = t.rank() == first.rank()
            && t.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(i, (a, b))| i == d || a == b);
        if !ok {
            let shapes: Vec<_> = xs.iter().map(|t| t.shape().to_vec()).collect();
            shape_bail!("concat", "shapes {shapes:?} differ outside dim {dim}");
        }
    }
    let outer: usize = first.shape()[..d].iter().product();
    let tail: usize = first.shape()[d + 1..].iter().product();
    let inners: Vec<usize> = xs.iter().map(|t| t.shape()[d] * tail).collect();
    let bufs: Vec<_> = xs.iter().map(|t| t.buf()).collect();
    let mut yshape = first.shape().to_vec();
    yshape[d] = xs.iter().map(|t| t.shape()[d]).sum();
    let be = first.backend();
    let joined = join.then(|| be.join_views(&bufs, outer, &inners)).flatten();
    let (ybuf, joined) = match joined {
        Some(b) => (b, true),
        None => (be.concat(&bufs, outer, &inners)?, false),
    };
    let y = first.sibling(ybuf, yshape);
    if !needs_grad(xs) {
        return Ok((y, joined));
    }
    let shapes: Vec<Vec<usize>> = xs.iter().map(|t| t.shape().to_vec()).collect();
    let needs: Vec<bool> = xs.iter().map(|t| t.requires_grad()).collect();
    let y = record(
        "concat",
        xs,
        y,
        Box::new(move |gy| {
            let parts = gy.backend().split(gy.buffer(), outer, &inners)?;
            Ok(parts
                .into_iter()
                .zip(shapes)
                .zip(needs)
                .map(|((b, s), need)| need.then(|| gy.sibling(b, s)))
                .collect())
        }),
    );
    Ok((y, joined))
}
