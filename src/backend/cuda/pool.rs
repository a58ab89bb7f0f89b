//! Pooling (kernels/pool.cu): max, average and adaptive average, forward and backward.

use super::{a3, out, ptr, CudaBackend};
use crate::backend::{check_argmax, AdaptivePoolGeom, BackendBuffer, BufferRef, PoolGeom};
use crate::error::Result;

/// kernels/pool.cu `PoolP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolP {
    planes: i32,
    input: [i32; 3],
    output: [i32; 3],
    k: [i32; 3],
    s: [i32; 3],
    p: [i32; 3],
    include_pad: i32,
}

/// kernels/pool.cu `AdaptP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdaptP {
    planes: i32,
    input: [i32; 3],
    output: [i32; 3],
}

impl AdaptP {
    fn new(g: &AdaptivePoolGeom) -> AdaptP {
        AdaptP {
            planes: g.planes as i32,
            input: a3(g.input),
            output: a3(g.output),
        }
    }
}

fn pool_p(g: &PoolGeom, include_pad: bool) -> PoolP {
    PoolP {
        planes: g.planes as i32,
        input: a3(g.input),
        output: a3(g.output),
        k: a3(g.kernel),
        s: a3(g.stride),
        p: a3(g.padding),
        include_pad: include_pad as i32,
    }
}

pub(super) fn max_forward(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: &PoolGeom,
) -> Result<BufferRef> {
    let len = g.planes * g.output.iter().product::<usize>();
    if g.input.iter().product::<usize>() == 0 {
        // The CPU backend's answer (its output is zero-filled); was left uninitialised.
        return Ok(out(be.zeros(len)?));
    }
    let y = be.alloc(len)?;
    if len > 0 {
        let p = pool_p(g, true);
        be.launch1("pool", "pool_max_forward", len, kargs![y.ptr, ptr(x)?, p])?;
    }
    Ok(out(y))
}

pub(super) fn max_forward_argmax(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: &PoolGeom,
) -> Result<(BufferRef, BufferRef)> {
    let len = g.output_len();
    if g.input.iter().product::<usize>() == 0 {
        return Ok((out(be.zeros(len)?), out(be.zeros(g.argmax_words())?)));
    }
    let y = be.alloc(len)?;
    let argmax = be.alloc(g.argmax_words())?;
    if len > 0 {
        let p = pool_p(g, true);
        let bytes = g.argmax_bytes() as i32;
        be.launch1(
            "pool",
            "pool_max_forward_argmax",
            len,
            kargs![y.ptr, argmax.ptr, ptr(x)?, p, bytes],
        )?;
    }
    Ok((out(y), out(argmax)))
}

pub(super) fn max_backward(
    be: &CudaBackend,
    argmax: &dyn BackendBuffer,
    dy: &dyn BackendBuffer,
    g: &PoolGeom,
) -> Result<BufferRef> {
    check_argmax(argmax, dy, g)?;
    let len = g.planes * g.input.iter().product::<usize>();
    let dx = be.zeros(len)?;
    let olen = g.output_len();
    if len > 0 && olen > 0 {
        let p = pool_p(g, true);
        let bytes = g.argmax_bytes() as i32;
        be.launch1(
            "pool",
            "pool_max_backward",
            olen,
            kargs![dx.ptr, ptr(argmax)?, ptr(dy)?, p, bytes],
        )?;
    }
    Ok(out(dx))
}

pub(super) fn avg_forward(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: &PoolGeom,
    count_include_pad: bool,
) -> Result<BufferRef> {
    let len = g.planes * g.output.iter().product::<usize>();
    if g.input.iter().product::<usize>() == 0 {
        return Ok(out(be.zeros(len)?));
    }
    let y = be.alloc(len)?;
    if len > 0 {
        let p = pool_p(g, count_include_pad);
        be.launch1("pool", "pool_avg_forward", len, kargs![y.ptr, ptr(x)?, p])?;
    }
    Ok(out(y))
}

pub(super) fn avg_backward(
    be: &CudaBackend,
    dy: &dyn BackendBuffer,
    g: &PoolGeom,
    count_include_pad: bool,
) -> Result<BufferRef> {
    let len = g.planes * g.input.iter().product::<usize>();
    if g.output.iter().product::<usize>() == 0 {
        return Ok(out(be.zeros(len)?));
    }
    let dx = be.alloc(len)?;
    if len > 0 {
        let p = pool_p(g, count_include_pad);
        be.launch1(
            "pool",
            "pool_avg_backward",
            len,
            kargs![dx.ptr, ptr(dy)?, p],
        )?;
    }
    Ok(out(dx))
}

pub(super) fn adaptive_forward(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: &AdaptivePoolGeom,
) -> Result<BufferRef> {
    let len = g.planes * g.output.iter().product::<usize>();
    if g.input.iter().product::<usize>() == 0 {
        return Ok(out(be.zeros(len)?));
    }
    let y = be.alloc(len)?;
    if len > 0 {
        let p = AdaptP::new(g);
        be.launch1(
            "pool",
            "pool_adaptive_forward",
            len,
            kargs![y.ptr, ptr(x)?, p],
        )?;
    }
    Ok(out(y))
}

pub(super) fn adaptive_backward(
    be: &CudaBackend,
    dy: &dyn BackendBuffer,
    g: &AdaptivePoolGeom,
) -> Result<BufferRef> {
    let len = g.planes * g.input.iter().product::<usize>();
    if g.output.iter().product::<usize>() == 0 {
        return Ok(out(be.zeros(len)?));
    }
    let dx = be.alloc(len)?;
    if len > 0 {
        let p = AdaptP::new(g);
        be.launch1(
            "pool",
            "pool_adaptive_backward",
            len,
            kargs![dx.ptr, ptr(dy)?, p],
        )?;
    }
    Ok(out(dx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_params_have_c_layout() {
        assert_eq!(std::mem::size_of::<PoolP>(), (1 + 15 + 1) * 4);
        assert_eq!(std::mem::size_of::<AdaptP>(), 7 * 4);
    }
}
