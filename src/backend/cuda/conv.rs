//! Convolutions (kernels/conv.cu): implicit GEMMs for forward, data and weight gradients (the weight
//! gradient split along its reduction) on CUDA cores (fp32) or tensor cores (tf32, bf16: the math
//! mode picks), direct FP32 kernels for depthwise convolutions in every mode (`ConvGeom::math_mode`).

use super::launch::{blocks, wgrad_splits, BLOCK, MAX_ELEMENTS};
use super::layout::{self, row_major_strides, Strided};
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
    if g.is_depthwise() {
        be.launch1("conv", "conv_dw_dgrad", len, kargs![dx.ptr, dyp, wp, p])?;
        return Ok(out(dx));
    }
    if by_phase(g) {
        backward_data_by_phase(be, dyp, wp, dx.ptr, g)?;
    } else {
        dgrad_gemm(be, &mut p, g, dyp, wp, dx.ptr)?;
    }
    Ok(out(dx))
}

/// The implicit-GEMM data gradient of `g` (not depthwise) into `dx`.
fn dgrad_gemm(
    be: &CudaBackend,
    p: &mut ConvP,
    g: &ConvGeom,
    dyp: u64,
    wp: u64,
    dx: u64,
) -> Result<()> {
    p.m = p.cin_g;
    p.n_gemm = p.n * p.in_vol;
    p.k_gemm = p.cout_g * p.kvol;
    let grid = (
        blocks(p.n_gemm as usize, 64),
        blocks(p.m as usize, 64),
        g.groups as u32,
    );
    let name = match g.math_mode(Hardware::Cuda)? {
        MathMode::Tf32 => "conv_dgrad_tf32",
        MathMode::Bf16 => "conv_dgrad_bf16",
        MathMode::Fp32 => "conv_dgrad",
    };
    gemm_launch(be, name, grid, kargs![dx, dyp, wp, *p])
}

/// A strided data gradient is computed one phase at a time when every strided axis has dilation 1.
/// In one GEMM over all input positions, a stride s leaves (s−1)/s of each axis's (position, tap)
/// pairs structural zeros (seven in eight at 2×2×2): measured on an H200 (docs/PERFORMANCE.md "GPU"),
/// 78–140× cuDNN's time. Per phase every pair is real.
fn by_phase(g: &ConvGeom) -> bool {
    (0..3).any(|i| g.stride[i] > 1) && (0..3).all(|i| g.stride[i] == 1 || g.dilation[i] == 1)
}

/// One axis of a phase r (0 ≤ r < s): the input positions i = first + s·j (j < count) are those whose
/// taps are a = r + s·b (b < taps), and tap b of position j reads dy at o = j + pad − b: a stride-1
/// data gradient over the `count` positions with the `taps` sub-kernel and padding `pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PhaseAxis {
    first: usize,
    count: usize,
    tap0: usize,
    taps: usize,
    pad: usize,
}

fn phase_axis(input: usize, k: usize, s: usize, p: usize, r: usize) -> PhaseAxis {
    // i + p − a ≡ 0 (mod s) with a ≡ r: i ≡ r − p. first + p ≥ r (first = r − p when r ≥ p, so the
    // dy offset `pad` is ≥ 0).
    let first = (r + s - p % s) % s;
    PhaseAxis {
        first,
        count: if first < input {
            (input - 1 - first) / s + 1
        } else {
            0
        },
        tap0: r,
        taps: if r < k { (k - 1 - r) / s + 1 } else { 0 },
        pad: (first + p - r) / s,
    }
}

/// dx phase by phase: the phase's taps gathered out of the weights, a stride-1 dgrad over its
/// positions, scattered back into dx. The phases cover every input position once.
fn backward_data_by_phase(
    be: &CudaBackend,
    dyp: u64,
    wp: u64,
    dx: u64,
    g: &ConvGeom,
) -> Result<()> {
    let (cin_g, kvol) = (g.in_per_group(), g.kernel_volume());
    let k_st = row_major_strides(&g.kernel);
    let in_st = row_major_strides(&g.input);
    for r0 in 0..g.stride[0] {
        for r1 in 0..g.stride[1] {
            for r2 in 0..g.stride[2] {
                let ax: [PhaseAxis; 3] = std::array::from_fn(|i| {
                    let r = [r0, r1, r2][i];
                    phase_axis(g.input[i], g.kernel[i], g.stride[i], g.padding[i], r)
                });
                if ax.iter().any(|a| a.count == 0) {
                    continue;
                }
                let sub = ConvGeom {
                    input: ax.map(|a| a.count),
                    kernel: ax.map(|a| a.taps),
                    stride: [1; 3],
                    padding: ax.map(|a| a.pad),
                    dilation: std::array::from_fn(
                        |i| if g.stride[i] > 1 { 1 } else { g.dilation[i] },
                    ),
                    ..g.clone()
                };
                let sub_len = g.n * g.c_in * sub.input_volume();
                let dsub = if sub.kernel_volume() == 0 {
                    be.zeros(sub_len)? // no tap reaches these positions
                } else {
                    let w_shape = [g.c_out, cin_g, sub.kernel[0], sub.kernel[1], sub.kernel[2]];
                    let w_sub = be.alloc(w_shape.iter().product())?;
                    let w_src_st = [
                        cin_g * kvol,
                        kvol,
                        g.stride[0] * k_st[0],
                        g.stride[1] * k_st[1],
                        g.stride[2] * k_st[2],
                    ];
                    let tap_base = (0..3).map(|i| ax[i].tap0 * k_st[i]).sum();
                    layout::strided_copy(
                        be,
                        Strided {
                            ptr: w_sub.ptr,
                            base: 0,
                            strides: &row_major_strides(&w_shape),
                        },
                        Strided {
                            ptr: wp,
                            base: tap_base,
                            strides: &w_src_st,
                        },
                        &w_shape,
                    )?;
                    let dsub = be.alloc(sub_len)?;
                    dgrad_gemm(be, &mut ConvP::new(&sub)?, &sub, dyp, w_sub.ptr, dsub.ptr)?;
                    dsub
                };
                let x_shape = [g.n, g.c_in, sub.input[0], sub.input[1], sub.input[2]];
                let in_vol = g.input_volume();
                let dx_st = [
                    g.c_in * in_vol,
                    in_vol,
                    g.stride[0] * in_st[0],
                    g.stride[1] * in_st[1],
                    g.stride[2] * in_st[2],
                ];
                let pos_base = (0..3).map(|i| ax[i].first * in_st[i]).sum();
                layout::strided_copy(
                    be,
                    Strided {
                        ptr: dx,
                        base: pos_base,
                        strides: &dx_st,
                    },
                    Strided {
                        ptr: dsub.ptr,
                        base: 0,
                        strides: &row_major_strides(&x_shape),
                    },
                    &x_shape,
                )?;
            }
        }
    }
    Ok(())
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
    fn phases_cover_every_position_and_every_real_tap_once() {
        // For each axis geometry: every input position lies in exactly one phase, and the (position,
        // tap) pairs of the phases are exactly the pairs of the strided dgrad that reach a dy position
        // (i + p − a = s·o), with o = j + pad − b.
        for input in 1..12 {
            for k in 1..8 {
                for s in 1..4 {
                    for p in 0..k.min(4) {
                        let mut seen = vec![0; input];
                        let mut pairs = vec![];
                        for r in 0..s {
                            let a = phase_axis(input, k, s, p, r);
                            for j in 0..a.count {
                                let i = a.first + s * j;
                                seen[i] += 1;
                                for b in 0..a.taps {
                                    let o = (j + a.pad) as isize - b as isize;
                                    pairs.push((i, a.tap0 + s * b, o));
                                }
                            }
                        }
                        assert!(
                            seen.iter().all(|&c| c == 1),
                            "{input} {k} {s} {p}: {seen:?}"
                        );
                        let mut want = vec![];
                        for i in 0..input {
                            for tap in 0..k {
                                let t = (i + p) as isize - tap as isize;
                                if t.rem_euclid(s as isize) == 0 {
                                    want.push((i, tap, t.div_euclid(s as isize)));
                                }
                            }
                        }
                        pairs.sort();
                        want.sort();
                        assert_eq!(pairs, want, "input {input} k {k} s {s} p {p}");
                    }
                }
            }
        }
    }

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
