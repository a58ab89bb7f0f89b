//! Elementwise launches (kernels/elementwise.cu): fills, unary and binary maps, the axis bias,
//! dropout. The vectorised maps walk `n / 4` float4 items.

use super::{i32_of, out, ptr, ptr_mut, CudaBackend};
use crate::backend::{AxisGeom, BackendBuffer, BinaryOp, BufferRef, UnaryOp};
use crate::error::Result;

pub(super) fn full(be: &CudaBackend, len: usize, value: f32) -> Result<BufferRef> {
    if value == 0.0 && value.is_sign_positive() {
        return Ok(out(be.zeros(len)?));
    }
    let b = be.alloc(len)?;
    if len > 0 {
        be.launch1(
            "elementwise",
            "ew_fill",
            len,
            kargs![b.ptr, len as i32, value],
        )?;
    }
    Ok(out(b))
}

pub(super) fn unary(be: &CudaBackend, x: &dyn BackendBuffer, op: UnaryOp) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(n)?;
    if n > 0 {
        let (code, s) = match op {
            UnaryOp::Relu => (0i32, 0.0f32),
            UnaryOp::Scale(s) => (1, s),
            UnaryOp::AddScalar(s) => (2, s),
            UnaryOp::Sqrt => (3, 0.0),
        };
        be.launch1(
            "elementwise",
            "ew_unary",
            n.div_ceil(4),
            kargs![y.ptr, ptr(x)?, n as i32, code, s],
        )?;
    }
    Ok(out(y))
}

pub(super) fn binary(
    be: &CudaBackend,
    a: &dyn BackendBuffer,
    b: &dyn BackendBuffer,
    op: BinaryOp,
) -> Result<BufferRef> {
    let n = a.len();
    let y = be.alloc(n)?;
    if n > 0 {
        let code = match op {
            BinaryOp::Add => 0i32,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::AddRelu => 4,
        };
        be.launch1(
            "elementwise",
            "ew_binary",
            n.div_ceil(4),
            kargs![y.ptr, ptr(a)?, ptr(b)?, n as i32, code],
        )?;
    }
    Ok(out(y))
}

pub(super) fn relu_backward(
    be: &CudaBackend,
    y: &dyn BackendBuffer,
    dy: &dyn BackendBuffer,
) -> Result<BufferRef> {
    let n = y.len();
    let dx = be.alloc(n)?;
    if n > 0 {
        be.launch1(
            "elementwise",
            "ew_relu_backward",
            n.div_ceil(4),
            kargs![dx.ptr, ptr(y)?, ptr(dy)?, n as i32],
        )?;
    }
    Ok(out(dx))
}

pub(super) fn relu_in_place(be: &CudaBackend, x: &dyn BackendBuffer) -> Result<()> {
    let n = x.len();
    if n > 0 {
        i32_of(n, "relu_in_place")?;
        be.launch1(
            "elementwise",
            "ew_relu_in_place",
            n.div_ceil(4),
            kargs![ptr_mut(x, "relu_in_place")?, n as i32],
        )?;
    }
    Ok(())
}

pub(super) fn add_relu_in_place(
    be: &CudaBackend,
    a: &dyn BackendBuffer,
    b: &dyn BackendBuffer,
) -> Result<()> {
    let n = a.len();
    if n > 0 {
        i32_of(n, "add_relu_in_place")?;
        be.launch1(
            "elementwise",
            "ew_add_relu_in_place",
            n.div_ceil(4),
            kargs![ptr_mut(a, "add_relu_in_place")?, ptr(b)?, n as i32],
        )?;
    }
    Ok(())
}

pub(super) fn axpby(
    be: &CudaBackend,
    y: &dyn BackendBuffer,
    a: f32,
    x: &dyn BackendBuffer,
    b: f32,
) -> Result<()> {
    let n = y.len();
    if n > 0 {
        i32_of(n, "axpby")?;
        be.launch1(
            "elementwise",
            "ew_axpby",
            n.div_ceil(4),
            kargs![ptr_mut(y, "axpby")?, a, ptr(x)?, b, n as i32],
        )?;
    }
    Ok(())
}

pub(super) fn broadcast_scalar(
    be: &CudaBackend,
    s: &dyn BackendBuffer,
    len: usize,
    scale: f32,
) -> Result<BufferRef> {
    let y = be.alloc(len)?;
    if len > 0 {
        be.launch1(
            "elementwise",
            "ew_broadcast_scalar",
            len,
            kargs![y.ptr, ptr(s)?, len as i32, scale],
        )?;
    }
    Ok(out(y))
}

pub(super) fn add_axis_bias(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    bias: &dyn BackendBuffer,
    g: AxisGeom,
) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(n)?;
    if n > 0 {
        be.launch1(
            "elementwise",
            "ew_add_axis_bias",
            n,
            kargs![
                y.ptr,
                ptr(x)?,
                ptr(bias)?,
                n as i32,
                g.axis as i32,
                g.inner as i32
            ],
        )?;
    }
    Ok(out(y))
}

pub(super) fn dropout(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    p: f32,
    seed: u64,
) -> Result<BufferRef> {
    let n = x.len();
    let y = be.alloc(n)?;
    if n > 0 {
        let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
        be.launch1(
            "elementwise",
            "ew_dropout",
            n,
            kargs![y.ptr, ptr(x)?, n as i32, p, scale, seed],
        )?;
    }
    Ok(out(y))
}
