//! Layout changes (kernels/layout.cu): permutes (a tiled transpose when only the last two dims swap),
//! concatenation as strided 2-d copies, and splitting as views of one block ([`CudaView`]).

use std::sync::{Arc, OnceLock};

use super::launch::blocks;
use super::{cuda_buf, out, ptr, range_ptr, CudaBackend, CudaView, LaunchConfig};
use crate::backend::{BackendBuffer, BufferRef};
use crate::error::{Error, Result};

/// kernels/layout.cu `PermP`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PermP {
    rank: i32,
    out_shape: [i32; 6],
    src_stride: [i32; 6],
}

pub(super) fn permute(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    shape: &[usize],
    perm: &[usize],
) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(n)?;
    if n == 0 {
        return Ok(out(y));
    }
    let r = shape.len();
    if r > 6 {
        return Err(Error::Device(format!(
            "cuda: permute of rank {r} (at most 6)"
        )));
    }
    let xp = ptr(x)?;
    // The last two dims swapped, the rest in place: a tiled transpose.
    if r >= 2 && perm[r - 2] == r - 1 && perm[r - 1] == r - 2 && (0..r - 2).all(|i| perm[i] == i) {
        let (rows, cols) = (shape[r - 2], shape[r - 1]);
        let batch = n / (rows * cols);
        if batch <= 65535 && rows.div_ceil(32) <= 65535 {
            be.launch(
                "layout",
                "layout_transpose",
                LaunchConfig::new(
                    (blocks(cols, 32), blocks(rows, 32), batch as u32),
                    (32, 8, 1),
                ),
                kargs![y.ptr, xp, rows as i32, cols as i32],
            )?;
            return Ok(out(y));
        }
    }
    let in_strides = row_major_strides(shape);
    let mut p = PermP {
        rank: r as i32,
        ..Default::default()
    };
    for (i, &pi) in perm.iter().enumerate() {
        p.out_shape[i] = shape[pi] as i32;
        p.src_stride[i] = in_strides[pi] as i32;
    }
    be.launch1(
        "layout",
        "layout_permute",
        n,
        kargs![y.ptr, xp, n as i32, p],
    )?;
    Ok(out(y))
}

pub(super) fn concat(
    be: &CudaBackend,
    xs: &[&dyn BackendBuffer],
    outer: usize,
    inners: &[usize],
) -> Result<BufferRef> {
    let total: usize = inners.iter().sum();
    let y = be.alloc(outer * total)?;
    let mut off = 0;
    for (x, &inner) in xs.iter().zip(inners) {
        be.copy_rows(
            (y.ptr, total, off),
            (range_ptr(*x)?, inner, 0),
            (outer, inner),
        )?;
        off += inner;
    }
    Ok(out(y))
}

/// The pieces of x viewed as [outer, Σ inners] along its inner axis ([`Backend::split`]) as views of
/// x's block, no copy: piece i's row o is x's values o·Σinners + (Σ_(j<i) inner_j) .. + inner_i. A
/// view of a view refers to the same block; x is packed first only when it is a strided view whose
/// rows are not the rows being split.
pub(super) fn split_views(
    be: &CudaBackend,
    x: &BufferRef,
    outer: usize,
    inners: &[usize],
) -> Result<Vec<BufferRef>> {
    let total: usize = inners.iter().sum();
    if x.len() != outer * total {
        return Err(Error::Shape {
            op: "split",
            msg: format!("{} values are not {outer} rows of {inners:?}", x.len()),
        });
    }
    let (parent, base, stride) = match x.as_any().downcast_ref::<CudaView>() {
        None => {
            cuda_buf(&**x)?;
            (x.clone(), 0, total)
        }
        Some(v) if v.is_contiguous() => (v.parent.clone(), v.offset, total),
        Some(v) if v.runs == outer && v.run_len == total => (v.parent.clone(), v.offset, v.stride),
        Some(_) => (crate::backend::Backend::copy(be, &**x)?, 0, total),
    };
    let mut start = 0;
    Ok(inners
        .iter()
        .map(|&inner| {
            let view = CudaView {
                parent: parent.clone(),
                offset: base + start,
                runs: outer,
                run_len: inner,
                stride,
                packed: OnceLock::new(),
                backend: be.clone(),
            };
            start += inner;
            Arc::new(view) as BufferRef
        })
        .collect())
}

/// The block `xs` are the pieces of, if they are exactly the views `split_views(x, outer, inners)`
/// made of a whole block, in order: their concatenation without a copy ([`Backend::join_views`]).
pub(super) fn joined_views(
    xs: &[&dyn BackendBuffer],
    outer: usize,
    inners: &[usize],
) -> Option<BufferRef> {
    let total: usize = inners.iter().sum();
    let mut parent: Option<&BufferRef> = None;
    let mut start = 0;
    for (x, &inner) in xs.iter().zip(inners) {
        let v = x.as_any().downcast_ref::<CudaView>()?;
        let same = parent.is_none_or(|p| Arc::ptr_eq(p, &v.parent));
        let placed = v.offset == start
            && v.run_len == inner
            && v.runs == outer
            && (outer == 1 || v.stride == total);
        if !same || !placed {
            return None;
        }
        parent = Some(&v.parent);
        start += inner;
    }
    parent
        .filter(|p| xs.len() == inners.len() && p.len() == outer * total)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_params_have_c_layout() {
        assert_eq!(std::mem::size_of::<PermP>(), 13 * 4);
    }
}

/// Row-major strides of a shape, in elements.
pub(super) fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1];
    }
    st
}

/// kernels/layout.cu `StridedP`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct StridedP {
    rank: i32,
    shape: [i32; 6],
    src_stride: [i32; 6],
    dst_stride: [i32; 6],
    src_base: i32,
    dst_base: i32,
}

/// One side of a [`strided_copy`]: a device pointer, the element offset of index 0 and each axis's
/// stride in elements.
pub(super) struct Strided<'a> {
    pub ptr: u64,
    pub base: usize,
    pub strides: &'a [usize],
}

/// dst[dst.base + Σ i_d·dst.strides[d]] = src[src.base + Σ i_d·src.strides[d]] for every index i of
/// `shape` (rank ≤ 6, offsets within the 32-bit index range the callers' buffers are held to).
pub(super) fn strided_copy(
    be: &CudaBackend,
    dst: Strided,
    src: Strided,
    shape: &[usize],
) -> Result<()> {
    let r = shape.len();
    if r > 6 || dst.strides.len() != r || src.strides.len() != r {
        return Err(Error::Device(format!(
            "cuda: strided copy of rank {r} with {} / {} strides (rank ≤ 6, one stride per axis)",
            dst.strides.len(),
            src.strides.len()
        )));
    }
    let n: usize = shape.iter().product();
    if n == 0 {
        return Ok(());
    }
    let mut p = StridedP {
        rank: r as i32,
        src_base: src.base as i32,
        dst_base: dst.base as i32,
        ..Default::default()
    };
    for (d, &extent) in shape.iter().enumerate() {
        p.shape[d] = extent as i32;
        p.src_stride[d] = src.strides[d] as i32;
        p.dst_stride[d] = dst.strides[d] as i32;
    }
    be.launch1(
        "layout",
        "layout_strided_copy",
        n,
        kargs![dst.ptr, src.ptr, n as i32, p],
    )
}
