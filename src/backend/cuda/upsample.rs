//! Trilinear upsampling (kernels/upsample.cu).

use super::{a3, out, ptr, CudaBackend};
use crate::backend::{BackendBuffer, BufferRef, UpsampleGeom};
use crate::error::Result;

/// kernels/upsample.cu `UpP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UpP {
    planes: i32,
    input: [i32; 3],
    output: [i32; 3],
    scale: [f32; 3],
    align: i32,
}

/// The upsampling scale along one dim, computed exactly as the CPU backend does.
pub fn upsample_scale(n: usize, out: usize, align_corners: bool) -> f32 {
    if align_corners {
        if out > 1 {
            (n - 1) as f32 / (out - 1) as f32
        } else {
            0.0
        }
    } else {
        n as f32 / out as f32
    }
}

fn up_p(g: &UpsampleGeom) -> UpP {
    UpP {
        planes: g.planes as i32,
        input: a3(g.input),
        output: a3(g.output),
        scale: std::array::from_fn(|i| upsample_scale(g.input[i], g.output[i], g.align_corners)),
        align: g.align_corners as i32,
    }
}

pub(super) fn forward(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    g: &UpsampleGeom,
) -> Result<BufferRef> {
    let len = g.planes * g.output.iter().product::<usize>();
    if g.input.iter().product::<usize>() == 0 {
        return Ok(out(be.zeros(len)?));
    }
    let y = be.alloc(len)?;
    if len > 0 {
        let p = up_p(g);
        be.launch1(
            "upsample",
            "upsample_forward",
            len,
            kargs![y.ptr, ptr(x)?, p],
        )?;
    }
    Ok(out(y))
}

pub(super) fn backward(
    be: &CudaBackend,
    dy: &dyn BackendBuffer,
    g: &UpsampleGeom,
) -> Result<BufferRef> {
    let len = g.planes * g.input.iter().product::<usize>();
    let dx = be.zeros(len)?;
    let olen = g.planes * g.output.iter().product::<usize>();
    if len > 0 && olen > 0 {
        let p = up_p(g);
        be.launch1(
            "upsample",
            "upsample_backward",
            olen,
            kargs![dx.ptr, ptr(dy)?, p],
        )?;
    }
    Ok(out(dx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_params_have_c_layout() {
        assert_eq!(std::mem::size_of::<UpP>(), (1 + 6 + 3 + 1) * 4);
    }
}
