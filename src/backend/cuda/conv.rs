//! Convolutions (kernels/conv.cu): implicit GEMMs for forward, data and weight gradients (the weight
//! gradient split along its reduction) on CUDA cores (fp32) or tensor cores (tf32, bf16: the math
//! mode picks), direct FP32 kernels for depthwise convolutions in every mode (`ConvGeom::math_mode`).

use super::launch::{blocks, wgrad_splits, BLOCK, MAX_ELEMENTS};
use super::{a3, i32_of, opt_ptr, out, ptr, CudaBackend, KernelArg, LaunchConfig};
use crate::backend::{BackendBuffer, BufferRef, ConvGeom};
use crate::error::{Error, Result};
use crate::math_mode::{Hardware, MathMode};

/// Geometry of a convolution as the kernels read it (kernels/conv.cu `ConvP`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ConvP {
    n: i32,
    cin: i32,
    cout: i32,
    cin_g: i32,
    cout_g: i32,
    input: [i32; 3],
    output: [i32; 3],
    k: [i32; 3],
    s: [i32; 3],
    p: [i32; 3],
    d: [i32; 3],
    kvol: i32,
    in_vol: i32,
    out_vol: i32,
    m: i32,
    n_gemm: i32,
    k_gemm: i32,
    k_per_split: i32,
    splits: i32,
    relu: i32,
}

impl ConvP {
    fn new(g: &ConvGeom) -> Result<ConvP> {
        i32_of(g.n * g.c_in * g.input_volume(), "conv input")?;
        i32_of(g.n * g.c_out * g.output_volume(), "conv output")?;
        i32_of(
            g.c_out * g.in_per_group() * g.kernel_volume(),
            "conv weight",
        )?;
        Ok(ConvP {
            n: g.n as i32,
            cin: g.c_in as i32,
            cout: g.c_out as i32,
            cin_g: g.in_per_group() as i32,
            cout_g: g.out_per_group() as i32,
            input: a3(g.input),
            output: a3(g.output),
            k: a3(g.kernel),
            s: a3(g.stride),
            p: a3(g.padding),
            d: a3(g.dilation),
            kvol: g.kernel_volume() as i32,
            in_vol: g.input_volume() as i32,
            out_vol: g.output_volume() as i32,
            ..Default::default()
        })
    }
}

/// Fewer splits (longer, still multiples of 16) until groups·splits fits gridDim.z and the workspace
/// [splits, wlen] fits the 32-bit index limit. Stops at one split: with more than 65535 groups the
/// launch itself reports the grid as too large (this loop used to spin forever there).
fn wgrad_split_limits(
    (mut splits, mut per): (usize, usize),
    red: usize,
    groups: usize,
    wlen: usize,
) -> (usize, usize) {
    while splits > 1 && (splits * groups > 65535 || splits * wlen > MAX_ELEMENTS) {
        per *= 2;
        splits = red.div_ceil(per);
    }
    (splits, per)
}

fn gemm_launch(
    be: &CudaBackend,
    name: &'static str,
    grid: (u32, u32, u32),
    args: &[KernelArg],
) -> Result<()> {
    if grid.1 > 65535 || grid.2 > 65535 {
        return Err(Error::Device(format!(
            "cuda: {name}: grid {grid:?} too large"
        )));
    }
    let threads = if name.ends_with("_tf32") || name.ends_with("_bf16") {
        128 // the tensor-core kernels: 4 warps of 32×32 tiles
    } else {
        256
    };
    be.launch("conv", name, LaunchConfig::new(grid, (threads, 1, 1)), args)
}

pub(super) fn forward(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    w: &dyn BackendBuffer,
    bias: Option<&dyn BackendBuffer>,
    g: &ConvGeom,
    relu: bool,
) -> Result<BufferRef> {
    let mut p = ConvP::new(g)?;
    p.relu = relu as i32;
    let len = g.n * g.c_out * g.output_volume();
    let y = be.alloc(len)?;
    if len == 0 {
        return Ok(out(y));
    }
    let (xp, wp, bp) = (ptr(x)?, ptr(w)?, opt_ptr(bias)?);
    let mode = g.math_mode(Hardware::Cuda)?;
    if g.is_depthwise() {
        be.launch1("conv", "conv_dw_fprop", len, kargs![y.ptr, xp, wp, bp, p])?;
        return Ok(out(y));
    }
    p.m = p.cout_g;
    p.n_gemm = p.n * p.out_vol;
    p.k_gemm = p.cin_g * p.kvol;
    let name = match mode {
        MathMode::Tf32 => "conv_fprop_tf32",
        MathMode::Bf16 => "conv_fprop_bf16",
        MathMode::Fp32 => "conv_fprop",
    };
    let grid = (
        blocks(p.n_gemm as usize, 64),
        blocks(p.m as usize, 64),
        g.groups as u32,
    );
    gemm_launch(be, name, grid, kargs![y.ptr, xp, wp, bp, p])?;
    Ok(out(y))
}

pub(super) fn backward_data(
    be: &CudaBackend,
    dy: &dyn BackendBuffer,
    w: &dyn BackendBuffer,
    g: &ConvGeom,
) -> Result<BufferRef> {
    let mut p = ConvP::new(g)?;
    let len = g.n * g.c_in * g.input_volume();
    if len == 0 || g.output_volume() == 0 {
        return Ok(out(be.zeros(len)?));
    }
    let dx = be.alloc(len)?;
    let (dyp, wp) = (ptr(dy)?, ptr(w)?);
    let mode = g.math_mode(Hardware::Cuda)?;
    if g.is_depthwise() {
        be.launch1("conv", "conv_dw_dgrad", len, kargs![dx.ptr, dyp, wp, p])?;
        return Ok(out(dx));
    }
    p.m = p.cin_g;
    p.n_gemm = p.n * p.in_vol;
    p.k_gemm = p.cout_g * p.kvol;
    let grid = (
        blocks(p.n_gemm as usize, 64),
        blocks(p.m as usize, 64),
        g.groups as u32,
    );
    let name = match mode {
        MathMode::Tf32 => "conv_dgrad_tf32",
        MathMode::Bf16 => "conv_dgrad_bf16",
        MathMode::Fp32 => "conv_dgrad",
    };
    gemm_launch(be, name, grid, kargs![dx.ptr, dyp, wp, p])?;
    Ok(out(dx))
}

pub(super) fn backward_weight(
    be: &CudaBackend,
    x: &dyn BackendBuffer,
    dy: &dyn BackendBuffer,
    g: &ConvGeom,
) -> Result<BufferRef> {
    let mut p = ConvP::new(g)?;
    let wlen = g.c_out * g.in_per_group() * g.kernel_volume();
    let red = g.n * g.output_volume();
    if wlen == 0 || red == 0 {
        return Ok(out(be.zeros(wlen)?));
    }
    let (xp, dyp) = (ptr(x)?, ptr(dy)?);
    let mode = g.math_mode(Hardware::Cuda)?;
    if g.is_depthwise() {
        let dw = be.alloc(wlen)?;
        be.launch(
            "conv",
            "conv_dw_wgrad",
            LaunchConfig::new((wlen as u32, 1, 1), (BLOCK, 1, 1)),
            kargs![dw.ptr, xp, dyp, p],
        )?;
        return Ok(out(dw));
    }
    p.m = p.cout_g;
    p.n_gemm = p.cin_g * p.kvol;
    p.k_gemm = red as i32;
    let tiles =
        blocks(p.n_gemm as usize, 64) as usize * blocks(p.m as usize, 64) as usize * g.groups;
    let (splits, per) =
        wgrad_split_limits(wgrad_splits(tiles, red, be.sm_count), red, g.groups, wlen);
    p.splits = splits as i32;
    p.k_per_split = per as i32;
    let name = match mode {
        MathMode::Tf32 => "conv_wgrad_tf32",
        MathMode::Bf16 => "conv_wgrad_bf16",
        MathMode::Fp32 => "conv_wgrad",
    };
    let grid = (
        blocks(p.n_gemm as usize, 64),
        blocks(p.m as usize, 64),
        (splits * g.groups) as u32,
    );
    let dw = be.alloc(wlen)?;
    if splits == 1 {
        gemm_launch(be, name, grid, kargs![dw.ptr, xp, dyp, p])?;
    } else {
        let ws = be.alloc(splits * wlen)?;
        gemm_launch(be, name, grid, kargs![ws.ptr, xp, dyp, p])?;
        be.launch1(
            "conv",
            "conv_wgrad_reduce",
            wlen,
            kargs![dw.ptr, ws.ptr, wlen as i32, splits as i32],
        )?;
    }
    Ok(out(dw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_params_have_c_layout() {
        // The kernels' by-value parameter struct (all 4-byte fields, no padding).
        assert_eq!(std::mem::size_of::<ConvP>(), (5 + 18 + 3 + 6) * 4);
    }

    #[test]
    fn conv_over_the_element_limit_is_an_error() {
        let g = ConvGeom {
            n: 1 << 12,
            c_in: 1 << 10,
            c_out: 1,
            groups: 1,
            input: [1, 1, 512],
            output: [1, 1, 512],
            kernel: [1; 3],
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
        };
        assert!(ConvP::new(&g).is_err());
    }

    #[test]
    fn wgrad_split_limits_terminate_and_respect_grid_and_workspace() {
        // More than 65535 groups: nothing can make groups·splits fit; stop at one split (the launch
        // then reports the grid) rather than loop forever as before.
        let (s, per) = wgrad_split_limits((8, 64), 500, 70_000, 70_000 * 9);
        assert_eq!(s, 1);
        assert!(per >= 500 && per % 16 == 0);
        // groups·splits must fit gridDim.z.
        let (s, per) = wgrad_split_limits((1024, 16), 16 * 1024, 100, 100 * 27);
        assert!(s * 100 <= 65535 && s * per >= 16 * 1024 && (s - 1) * per < 16 * 1024);
        assert_eq!(per % 16, 0);
        // The workspace [splits, wlen] must fit the index limit.
        let wlen = 1 << 28;
        let (s, _) = wgrad_split_limits((64, 256), 64 * 256, 1, wlen);
        assert!(s * wlen <= MAX_ELEMENTS, "{s}");
        // Already fine: unchanged.
        assert_eq!(wgrad_split_limits((12, 512), 6000, 2, 1000), (12, 512));
    }
}
