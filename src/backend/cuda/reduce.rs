//! Reductions (kernels/reduce.cu): the full sum and the per-channel sum.

use std::sync::Arc;

use super::launch::{channel_splits, grid_for, BLOCK};
use super::{out, ptr, CudaBackend, CudaBuffer, LaunchConfig};
use crate::backend::{AxisGeom, BackendBuffer, BufferRef};
use crate::error::Result;

pub(super) fn sum_all(be: &CudaBackend, x: &dyn BackendBuffer) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(1)?;
    let grid = grid_for(n.div_ceil(4), be.sm_count).min(1024);
    // [counter, pad, grid doubles], counter zeroed.
    let ws = be.zeros(2 + 2 * grid as usize)?;
    be.launch(
        "reduce",
        "red_sum_all",
        LaunchConfig::new((grid, 1, 1), (BLOCK, 1, 1)),
        kargs![ptr(x)?, n as i32, ws.ptr, y.ptr],
    )?;
    Ok(out(y))
}

pub(super) fn sum_to_axis(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: AxisGeom,
) -> Result<BufferRef> {
    Ok(out(channel_reduce(be, ptr(x)?, g)?))
}

fn channel_reduce(be: &CudaBackend, x: u64, g: AxisGeom) -> Result<Arc<CudaBuffer>> {
    let out = be.alloc(g.axis)?;
    if g.axis == 0 {
        return Ok(out);
    }
    let count = g.outer * g.inner;
    if count == 0 {
        return be.zeros(g.axis);
    }
    let s = channel_splits(g.axis, count, be.sm_count);
    let ws = be.alloc(2 * g.axis * s as usize)?;
    let (o, a, i) = (g.outer as i32, g.axis as i32, g.inner as i32);
    be.launch(
        "reduce",
        "red_channel_sum_partial",
        LaunchConfig::new((g.axis as u32, s, 1), (BLOCK, 1, 1)),
        kargs![x, o, a, i, ws.ptr],
    )?;
    be.launch1(
        "reduce",
        "red_channel_sum_final",
        g.axis,
        kargs![ws.ptr, a, s as i32, out.ptr],
    )?;
    Ok(out)
}
