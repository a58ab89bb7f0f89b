//! Winograd convolution F(2, 3) for stride 1 and dilation 1, along every axis whose kernel has 3 taps
//! (the others must have 1): the 3×3×3 and 3×3 (1×3×3) layers of ECO-Lite, R(2+1)D-18 and
//! C2D-NL-R50, and the stride-1 data gradients of all of them (forward convolutions of dy, conv.rs);
//! [`applies`] says which shapes pay.
//!
//! Along one axis, two outputs y0 = g0·d0 + g1·d1 + g2·d2 and y1 = g0·d1 + g1·d2 + g2·d3 take four
//! products instead of six (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks",
//! CVPR 2016): with the input transform Bᵀd = (d0 − d2, d1 + d2, d2 − d1, d1 − d3), the weight
//! transform Gg = (g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2) and m = Gg ⊙ Bᵀd, the outputs are
//! Aᵀm = (m0 + m1 + m2, m1 − m2 − m3). Along n such axes (the transforms applied axis by axis) a tile of
//! 2ⁿ outputs reads a box of 4ⁿ inputs, and each of the box's 4ⁿ points is a product summed over input
//! channels: the convolution becomes 4ⁿ GEMMs U[p] (C_out/G × C_in/G) · V[p] (C_in/G × tiles) —
//! 3.4× fewer multiply-adds than the direct convolution for 3×3×3 (64 against 216 per 8 outputs),
//! 2.25× for 3×3, 1.5× for 3×1×1 — plus the transforms, which only add (and halve, exactly).
//!
//! The weight gradient takes the same tiles ([`backward_weight`]): the forward is linear in the
//! transformed weights, so each tile contributes (A·dy) ⊙ (Bᵀd) to their gradient — with A·dy =
//! (e0, e0 + e1, e0 − e1, −e1) for the gradients e of a tile's two outputs — and the weights'
//! gradient is Gᵀ of the sum over tiles: 4ⁿ GEMMs dM[p] (C_out/G × C_in/G) = Σ_tiles (A·dy)[p] ·
//! (Bᵀd)[p]ᵀ, the tiles being the reduction, then one inverse transform per kernel.
//!
//! Forward tasks own one row of tiles along the depth axis of one (sample, group): a contiguous slice
//! of every output channel. Within a task the tiles go in chunks of whole tile rows ([`chunk_rows`])
//! through the input transform into V, the GEMMs into M, and the output transform (with the bias and
//! the fused ReLU) into y. With a Winograd depth axis a chunk does that in four slabs, one per depth
//! point: the slab's depth point of the box rows is one contiguous pass (Bᵀ's row: a sum or
//! difference of two input planes), the height and width transforms give its 16 points (V and M a
//! quarter of all 64: they stay in L2, where all 64 points' V took 4 MB and the transforms stalled
//! on its stores), and the output transform adds each slab's contribution, Aᵀ's column, to the
//! tiles' two depth outputs until the last writes them. The weight gradient's tasks are those
//! chunks (and slabs), cut into one run per thread, each summing into its own dM (added in order at
//! the end: bit-reproducible for a thread count). The transforms work on eight tiles (or eight input
//! channels, for the weights) at once, one SIMD lane each.
//!
//! Numerics: every operation is a sum of products, so the error of an output is at most γ_k times the
//! same computation on absolute values (k roundings on the longest path: 2 per Winograd axis in G, 1 in
//! Bᵀ, 2 in Aᵀ, the product, and C_in/G in the GEMM's sum; for the weight gradient 1 in Bᵀ, 1 in A
//! and 2 in Gᵀ per axis, the product, and one per tile summed); the tests check exactly that bound.
//! The transforms mix inputs, so ±Inf inputs could come out NaN where the direct sum gives ±Inf: the
//! caller gets `None` — and takes the other paths, PyTorch's non-finite results — whenever a weight or
//! an output is not finite (the forward), or a weight gradient is not (every non-finite x or dy
//! reaches one: no transform drops a value, and Inf·0 is NaN).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{padded_channels, sum_in_order, take_pieces};
use super::elementwise::{all_finite, par_build, relu as relu_f};
use super::linalg::{gemm, Mat};
use crate::backend::ConvGeom;

/// Winograd axes below which the transforms cost more than the products saved: with one (3×1×1,
/// R(2+1)D-18's temporal layers; 1.5× fewer multiply-adds) every such layer took 1.0–3.7× the direct
/// path's time (docs/PERFORMANCE.md; conv_winograd_depth.rs computes those). The algorithm itself
/// handles any set of axes.
const MIN_AXES: usize = 2;
/// Outputs over the outputs that whole tiles compute (odd extents waste a row per tile row).
const MIN_USEFUL: f64 = 0.6;
/// Tiles per (height, width) plane below which each transformed weight is used too few times per
/// load: ECO-Lite's 512 → 512 3×3×3 layers on 4×7×7 (16 tiles) took 1.1–1.4× the GEMM path's time,
/// the weights' transform (64 × 512 × 512 floats) read for 16 tiles at a time.
const MIN_ROW_TILES: usize = 32;
/// [`MIN_ROW_TILES`] for 3×3 layers on CPUs with AVX-512, where the other paths' products run 512
/// bits wide (the direct kernel's 8 × 32 tile, the gemm crate's microkernels) and these transforms
/// 256: with [`Job::input_transform_2d`] and [`Job::output_transform_2d`], on a Zen 5, 3×3 layers on
/// 28² and 56² (196 and 784 tiles) take 0.60–0.71× the direct kernel's time forward, 0.62–0.78× for
/// the data gradient and 0.70–1.04× for the weight gradient (R(2+1)D-18, ECO-Lite, C2D-NL-R50); on
/// 14² (49 tiles) the data and weight gradients took 1.05–1.2× (docs/PERFORMANCE.md, stop 45; the
/// weight gradient's [`Job::grad_transform_2d`] came after). (Before those transforms, 3×3 layers took 1.2–1.7× on an AVX-512 Xeon, and this path was off for
/// them on AVX-512.)
const MIN_ROW_TILES_3X3_AVX512: usize = 64;
/// Floats of V (and of M) per tile chunk counting every point, 4 MiB: the GEMMs' N (tiles per chunk)
/// gets large enough for the gemm crate's packing to pay. With a Winograd depth axis a chunk goes
/// through its points in four slabs, so V and M hold a quarter of it at a time (1 MiB each, in L2
/// between the transforms and the GEMMs). (Per chunk of all 64 points, 64 Ki–4 Mi floats measured
/// within the noise of one another on ECO-Lite's 128 → 128 3×3×3 layer before the slabs; with them,
/// 1–4 Mi within the noise and 512 Ki 6–24 % slower, docs/PERFORMANCE.md.)
const CHUNK_FLOATS: usize = 1 << 20;
/// Tiles (or channels) per transform: one SIMD lane each.
const LANES: usize = 8;

type Lanes = [f32; LANES];

/// Whether the GEMMs are large against the transforms: per tile, the products grow with
/// C_in/G·C_out/G and the transforms with C_in/G + C_out/G, so the ratio r = C_in·C_out/(C_in + C_out)
/// (per group) decides. 3×3×3 (3.4× fewer products) pays from r = 8; 3×3 (2.25×) from r = 36: at
/// 64 → 64 (r = 32) C2D-NL-R50's 3×3 layers on 56×56 took 1.1–1.5× the direct kernel's time on an
/// AVX2 machine, from 64 → 96 (r = 38.4) on 0.47–0.95× but for one data gradient (64 → 192 on
/// 56×56, 1.2×). (On a Zen 5 with the 2-D transforms below 64 → 64 took 0.80–0.85×, but its
/// rounding took the non-local I3D fixtures past their tolerances: eval logits 2.5e-4 → 2.9e-3 of
/// their scale, docs/PERFORMANCE.md, stop 45.)
fn channels_pay(g: &ConvGeom) -> bool {
    let (ci, co) = (g.in_per_group(), g.out_per_group());
    let min_ratio = if g.kernel == [3, 3, 3] { 8 } else { 36 };
    ci * co >= min_ratio * (ci + co)
}

/// Whether `g` takes the Winograd path (see the module docs), unless `VIDGRAD_CPU_CONV_WINOGRAD=0`.
pub(super) fn applies(g: &ConvGeom) -> bool {
    let axes = g.kernel.iter().filter(|&&k| k == 3).count();
    let min_row_tiles = if axes == 2 {
        min_row_tiles_3x3()
    } else {
        MIN_ROW_TILES
    };
    shape_applies(g)
        && axes >= MIN_AXES
        && channels_pay(g)
        && useful_fraction(g) >= MIN_USEFUL
        && Tiling::new(g).tiles[1..].iter().product::<usize>() >= min_row_tiles
        && enabled()
}

/// The fewest tiles per (height, width) plane for 3×3 layers (two Winograd axes): [`MIN_ROW_TILES`],
/// or [`MIN_ROW_TILES_3X3_AVX512`] on CPUs with AVX-512.
fn min_row_tiles_3x3() -> usize {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        return MIN_ROW_TILES_3X3_AVX512;
    }
    MIN_ROW_TILES
}

/// The shapes the algorithm computes at all: stride 1, dilation 1, kernels of 1 or 3 taps per axis
/// with at least one 3, not depthwise (its own kernel).
fn shape_applies(g: &ConvGeom) -> bool {
    g.stride == [1, 1, 1]
        && g.dilation == [1, 1, 1]
        && !g.is_depthwise()
        && g.kernel.iter().all(|&k| k == 1 || k == 3)
        && g.kernel.contains(&3)
}

/// Whether the Winograd paths (this one and conv_winograd_depth.rs) may run:
/// `VIDGRAD_CPU_CONV_WINOGRAD=0` turns both off.
pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("VIDGRAD_CPU_CONV_WINOGRAD").map_or(true, |v| v != "0"))
}

/// Outputs over the positions that whole 2-wide tiles cover.
fn useful_fraction(g: &ConvGeom) -> f64 {
    let t = Tiling::new(g);
    let covered: usize = (0..3).map(|a| t.tiles[a] * t.out_ext[a]).product();
    g.output_volume() as f64 / covered as f64
}

/// How the output is cut into tiles: per axis, 2 outputs from 4 transformed points on Winograd axes
/// (kernel 3), 1 from 1 on the others.
#[derive(Clone, Copy)]
struct Tiling {
    tiles: [usize; 3],
    out_ext: [usize; 3],
    /// Transformed points per tile, 4^(Winograd axes): the number of GEMMs.
    points: usize,
    /// Index in a [`TileBox`] of each point, in U's, V's and M's order.
    point_at: [usize; 64],
}

/// Strides of a tile's 4×4×4 box (points of non-Winograd axes at index 0).
const BOX_STRIDE: [usize; 3] = [16, 4, 1];

impl Tiling {
    fn new(g: &ConvGeom) -> Self {
        let wino: [bool; 3] = std::array::from_fn(|a| g.kernel[a] == 3);
        let out_ext = wino.map(|w| if w { 2 } else { 1 });
        let ext = wino.map(|w| if w { 4 } else { 1 });
        let tiles = std::array::from_fn(|a| g.output[a].div_ceil(out_ext[a]));
        let mut point_at = [0; 64];
        let mut points = 0;
        for a in 0..ext[0] {
            for b in 0..ext[1] {
                for c in 0..ext[2] {
                    point_at[points] = a * 16 + b * 4 + c;
                    points += 1;
                }
            }
        }
        Tiling {
            tiles,
            out_ext,
            points,
            point_at,
        }
    }
}

/// A tile's box of points, eight tiles (or channels) per point.
type TileBox = [Lanes; 64];

#[inline(always)]
fn add(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|i| a[i] + b[i])
}
#[inline(always)]
fn sub(a: Lanes, b: Lanes) -> Lanes {
    std::array::from_fn(|i| a[i] - b[i])
}
#[inline(always)]
fn half(a: Lanes) -> Lanes {
    a.map(|v| 0.5 * v)
}

/// Gg along one axis: 3 taps → 4 points.
#[inline(always)]
fn weight_line([g0, g1, g2]: [Lanes; 3]) -> [Lanes; 4] {
    let outer = add(g0, g2);
    [g0, half(add(outer, g1)), half(sub(outer, g1)), g2]
}

/// Bᵀd along one axis: 4 inputs → 4 points.
#[inline(always)]
fn input_line([d0, d1, d2, d3]: [Lanes; 4]) -> [Lanes; 4] {
    [sub(d0, d2), add(d1, d2), sub(d2, d1), sub(d1, d3)]
}

/// Aᵀm along one axis: 4 points → 2 outputs.
#[inline(always)]
fn output_line([m0, m1, m2, m3]: [Lanes; 4]) -> [Lanes; 2] {
    [add(add(m0, m1), m2), sub(sub(m1, m2), m3)]
}

/// A·dy along one axis: 2 outputs' gradients → 4 points (the transpose of [`output_line`]).
#[inline(always)]
fn grad_line([e0, e1]: [Lanes; 2]) -> [Lanes; 4] {
    [e0, add(e0, e1), sub(e0, e1), e1.map(|v| -v)]
}

/// Gᵀm along one axis: 4 points → 3 taps' gradients (the transpose of [`weight_line`]).
#[inline(always)]
fn weight_grad_line([m0, m1, m2, m3]: [Lanes; 4]) -> [Lanes; 3] {
    let inner = half(add(m1, m2));
    [add(m0, inner), half(sub(m1, m2)), add(inner, m3)]
}

/// Replaces every line of `b` along `axis` (the other axes over `ext`) by `f` of its first `I` points.
#[inline(always)]
fn pass<const I: usize, const O: usize>(
    b: &mut TileBox,
    axis: usize,
    ext: [usize; 3],
    f: impl Fn([Lanes; I]) -> [Lanes; O],
) {
    let (o1, o2) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let s = BOX_STRIDE[axis];
    for i in 0..ext[o1] {
        for j in 0..ext[o2] {
            let base = i * BOX_STRIDE[o1] + j * BOX_STRIDE[o2];
            let line = f(std::array::from_fn(|k| b[base + k * s]));
            for (k, v) in line.into_iter().enumerate() {
                b[base + k * s] = v;
            }
        }
    }
}

/// `g`'s forward pass by Winograd F(2, 3), or `None` where it would not give PyTorch's result: a
/// weight or an output not finite (then the caller's other paths run).
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Option<Vec<f32>> {
    debug_assert!(shape_applies(g), "Winograd F(2,3) called on {g:?}");
    if !all_finite(w) {
        return None;
    }
    // One instance per set of Winograd axes, so every transform loop has constant bounds.
    match g.kernel.map(|k| k == 3) {
        [true, true, true] => forward_axes::<true, true, true>(x, w, bias, g, relu),
        [false, true, true] => forward_axes::<false, true, true>(x, w, bias, g, relu),
        [true, false, false] => forward_axes::<true, false, false>(x, w, bias, g, relu),
        [true, true, false] => forward_axes::<true, true, false>(x, w, bias, g, relu),
        [true, false, true] => forward_axes::<true, false, true>(x, w, bias, g, relu),
        [false, true, false] => forward_axes::<false, true, false>(x, w, bias, g, relu),
        [false, false, true] => forward_axes::<false, false, true>(x, w, bias, g, relu),
        [false, false, false] => unreachable!("no 3-tap axis: {g:?}"),
    }
}

/// U [groups][C_out/G][points][C_in/G]: each kernel transformed by G along the Winograd axes, eight
/// input channels at a time. Point p's matrix (C_out/G × C_in/G) has rows points·C_in/G apart: so each
/// output channel's transforms are one contiguous block, written in parallel straight into U (built
/// point-major, U took a zero-fill and a copy on one thread: ~9 % of ECO-Lite's 256 → 256 3×3×3
/// forward, whose U is 16 MB).
fn transform_weights<const WD: bool, const WH: bool, const WW: bool>(
    w: &[f32],
    g: &ConvGeom,
    t: &Tiling,
) -> Vec<f32> {
    let (cin_g, kvol) = (g.in_per_group(), g.kernel_volume());
    let [_, kh, kw] = g.kernel;
    par_build(g.c_out * t.points * cin_g, t.points * cin_g, |co, out| {
        let kernels = &w[co * cin_g * kvol..][..cin_g * kvol];
        for c0 in (0..cin_g).step_by(LANES) {
            let lanes = LANES.min(cin_g - c0);
            let mut b: TileBox = [[0.0; LANES]; 64];
            for (k, tap) in (0..kvol).map(|k| (k, (k / (kh * kw), k / kw % kh, k % kw))) {
                let at = tap.0 * 16 + tap.1 * 4 + tap.2;
                for l in 0..lanes {
                    b[at][l] = kernels[(c0 + l) * kvol + k];
                }
            }
            let mut ext = [
                if WD { 3 } else { 1 },
                if WH { 3 } else { 1 },
                if WW { 3 } else { 1 },
            ];
            for (axis, on) in [WD, WH, WW].into_iter().enumerate() {
                if on {
                    pass(&mut b, axis, ext, weight_line);
                    ext[axis] = 4;
                }
            }
            for p in 0..t.points {
                for (o, &v) in out[p * cin_g + c0..][..lanes]
                    .iter_mut()
                    .zip(&b[t.point_at[p]])
                {
                    o.write(v);
                }
            }
        }
        out.len()
    })
}

/// Tile rows (of the height axis) per chunk: V (points × C_in/G × tiles) and M (points × C_out/G ×
/// tiles) about [`CHUNK_FLOATS`] each, at least one row.
fn chunk_rows(g: &ConvGeom, t: &Tiling) -> usize {
    let per_tile = t.points * g.in_per_group().max(g.out_per_group());
    (CHUNK_FLOATS / (per_tile * t.tiles[2])).clamp(1, t.tiles[1])
}

/// x zero-padded to [N, C_in, Pd, Ph, Pw]: every box a tile reads, including the boxes of the
/// lanes past a tile row's end in its last group of [`LANES`], lies inside, so the transforms never
/// check bounds.
fn pad_input(x: &[f32], g: &ConvGeom, t: &Tiling) -> (Vec<f32>, [usize; 3]) {
    let ext = t.out_ext.map(|e| if e == 2 { 4 } else { 1 });
    let tiles = [t.tiles[0], t.tiles[1], t.tiles[2].div_ceil(LANES) * LANES];
    let dims: [usize; 3] = std::array::from_fn(|a| {
        (g.input[a] + 2 * g.padding[a]).max((tiles[a] - 1) * t.out_ext[a] + ext[a])
    });
    (
        padded_channels(x, g.input, g.padding, [1; 3], dims, 0),
        dims,
    )
}

fn forward_axes<const WD: bool, const WH: bool, const WW: bool>(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Option<Vec<f32>> {
    let t = Tiling::new(g);
    let u = transform_weights::<WD, WH, WW>(w, g, &t);
    let (xp, padded) = pad_input(x, g, &t);
    let (p_vol, cout_g, groups) = (g.output_volume(), g.out_per_group(), g.groups);
    let slice = g.output[1] * g.output[2];
    // Not zero-filled: the output transforms write every element (a pass over y saved: with the same
    // in conv_winograd_depth.rs, R(2+1)D-18's inference about 3 % faster, the median of six
    // alternated runs).
    let len = g.n * g.c_out * p_vol;
    let mut y: Vec<f32> = Vec::with_capacity(len);
    // Tasks: (sample·group, depth tile row) owning that row's slices of every output channel.
    let mut tasks = Vec::with_capacity(g.n * groups * t.tiles[0]);
    for (ng, block) in y.spare_capacity_mut()[..len]
        .chunks_mut(cout_g * p_vol)
        .enumerate()
    {
        let mut rows: Vec<&mut [MaybeUninit<f32>]> = block.chunks_mut(p_vol).collect();
        for td in 0..t.tiles[0] {
            let d0 = td * t.out_ext[0];
            let len = ((d0 + t.out_ext[0]).min(g.output[0]) - d0) * slice;
            tasks.push((ng, td, take_pieces(&mut rows, len)));
        }
    }
    let rows_per_chunk = chunk_rows(g, &t);
    let job = Job {
        xp: &xp,
        padded,
        g,
        t,
        tc: chunk_columns(rows_per_chunk, &t),
        few: tasks.len() < rayon::current_num_threads(),
    };
    let finite = tasks
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
            |(v, m, acc, rows), (ng, td, mut pieces)| {
                let mut finite = true;
                for h0 in (0..t.tiles[1]).step_by(rows_per_chunk) {
                    let chunk = TileChunk {
                        ng,
                        td,
                        h0,
                        h1: (h0 + rows_per_chunk).min(t.tiles[1]),
                    };
                    for slab in 0..job.slabs() {
                        job.input_transform::<WD, WH, WW>(&chunk, slab, v, rows);
                        job.products(&chunk, slab, &u, v, m);
                        finite &= job.output_transform::<WD, WH, WW>(
                            &chunk,
                            slab,
                            m,
                            acc,
                            bias,
                            relu,
                            &mut pieces,
                        );
                    }
                }
                finite
            },
        )
        .reduce(|| true, |a, b| a && b);
    // SAFETY: the tasks' pieces cover y (every output channel's rows of every depth tile row of
    // every sample·group), and the output transform stores every output of a piece.
    unsafe { y.set_len(len) };
    finite.then_some(y)
}

/// dW of `g` by Winograd F(2, 3), or `None` where an input was not finite (then the caller's other
/// path runs). The forward y = Aᵀ[(Gg) ⊙ (Bᵀd)] is linear in g, so per tile dL/d(Gg) = (A·dy) ⊙
/// (Bᵀd) and dL/dg = Gᵀ·dL/d(Gg): summed over tiles, dM[p] (C_out/G × C_in/G) = Σ_tiles
/// (A·dy)[p] · (Bᵀd)[p]ᵀ, one GEMM per point with the tiles as the reduction, then dW = Gᵀ dM G
/// along the Winograd axes (module docs).
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeom) -> Option<Vec<f32>> {
    debug_assert!(shape_applies(g), "Winograd F(2,3) called on {g:?}");
    match g.kernel.map(|k| k == 3) {
        [true, true, true] => backward_weight_axes::<true, true, true>(x, dy, g),
        [false, true, true] => backward_weight_axes::<false, true, true>(x, dy, g),
        [true, false, false] => backward_weight_axes::<true, false, false>(x, dy, g),
        [true, true, false] => backward_weight_axes::<true, true, false>(x, dy, g),
        [true, false, true] => backward_weight_axes::<true, false, true>(x, dy, g),
        [false, true, false] => backward_weight_axes::<false, true, false>(x, dy, g),
        [false, false, true] => backward_weight_axes::<false, false, true>(x, dy, g),
        [false, false, false] => unreachable!("no 3-tap axis: {g:?}"),
    }
}

/// dy zero-padded to [N, C_out, tiles·2] along the Winograd axes (the width to whole groups of
/// [`LANES`] tiles): every tile's 2×2×2 block of outputs lies inside, those past the output zero.
fn pad_grad(dy: &[f32], g: &ConvGeom, t: &Tiling) -> (Vec<f32>, [usize; 3]) {
    let tiles = [t.tiles[0], t.tiles[1], t.tiles[2].div_ceil(LANES) * LANES];
    let dims: [usize; 3] = std::array::from_fn(|a| tiles[a] * t.out_ext[a]);
    (padded_channels(dy, g.output, [0; 3], [1; 3], dims, 0), dims)
}

/// Most floats of private dM accumulators (one per thread) at once, 256 MiB: above it fewer threads
/// sum tiles and the GEMMs go parallel instead.
pub(super) const MAX_ACCUMULATOR_FLOATS: usize = 1 << 26;

fn backward_weight_axes<const WD: bool, const WH: bool, const WW: bool>(
    x: &[f32],
    dy: &[f32],
    g: &ConvGeom,
) -> Option<Vec<f32>> {
    let t = Tiling::new(g);
    let (xp, padded) = pad_input(x, g, &t);
    let (dyp, dy_dims) = pad_grad(dy, g, &t);
    let rows_per_chunk = chunk_rows(g, &t);
    let chunks: Vec<TileChunk> = (0..g.n * g.groups)
        .flat_map(|ng| (0..t.tiles[0]).map(move |td| (ng, td)))
        .flat_map(|(ng, td)| {
            (0..t.tiles[1])
                .step_by(rows_per_chunk)
                .map(move |h0| TileChunk {
                    ng,
                    td,
                    h0,
                    h1: (h0 + rows_per_chunk).min(t.tiles[1]),
                })
        })
        .collect();
    let dm_len = g.groups * t.points * g.out_per_group() * g.in_per_group();
    let threads = rayon::current_num_threads();
    let parts = threads
        .min(chunks.len())
        .min(MAX_ACCUMULATOR_FLOATS / dm_len)
        .max(1);
    let job = Job {
        xp: &xp,
        padded,
        g,
        t,
        tc: chunk_columns(rows_per_chunk, &t),
        few: parts < threads,
    };
    // As the GEMM path's weight gradient: one contiguous run of chunks per part, summed in order
    // (bit-reproducible for a thread count).
    let dm = sum_in_order(&chunks, parts, dm_len, |run, dm| {
        let (mut v, mut e, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in run {
            for slab in 0..job.slabs() {
                job.input_transform::<WD, WH, WW>(chunk, slab, &mut v, &mut rows);
                job.grad_transform::<WD, WH, WW>(chunk, slab, &dyp, dy_dims, &mut e, &mut rows);
                job.weight_products(chunk, slab, &v, &e, dm);
            }
        }
    });
    let dw = inverse_weight_transform::<WD, WH, WW>(&dm, g, &t);
    all_finite(&dw).then_some(dw)
}

/// dW [C_out][C_in/G][taps] ← Gᵀ (each kernel's dM box) along the Winograd axes, eight input
/// channels at a time.
fn inverse_weight_transform<const WD: bool, const WH: bool, const WW: bool>(
    dm: &[f32],
    g: &ConvGeom,
    t: &Tiling,
) -> Vec<f32> {
    let (cin_g, cout_g, kvol) = (g.in_per_group(), g.out_per_group(), g.kernel_volume());
    let [_, kh, kw] = g.kernel;
    let mut dw = vec![0.0f32; g.c_out * cin_g * kvol];
    dw.par_chunks_mut(cin_g * kvol)
        .enumerate()
        .for_each(|(co, kernels)| {
            let (gi, co_g) = (co / cout_g, co % cout_g);
            for c0 in (0..cin_g).step_by(LANES) {
                let lanes = LANES.min(cin_g - c0);
                let mut b: TileBox = [[0.0; LANES]; 64];
                for p in 0..t.points {
                    let src = ((gi * t.points + p) * cout_g + co_g) * cin_g + c0;
                    b[t.point_at[p]][..lanes].copy_from_slice(&dm[src..src + lanes]);
                }
                let mut ext = [WD, WH, WW].map(|on| if on { 4 } else { 1 });
                for (axis, on) in [WD, WH, WW].into_iter().enumerate() {
                    if on {
                        pass(&mut b, axis, ext, weight_grad_line);
                        ext[axis] = 3;
                    }
                }
                for (k, tap) in (0..kvol).map(|k| (k, (k / (kh * kw), k / kw % kh, k % kw))) {
                    let at = tap.0 * 16 + tap.1 * 4 + tap.2;
                    for l in 0..lanes {
                        kernels[(c0 + l) * kvol + k] = b[at][l];
                    }
                }
            }
        });
    dw
}

/// Columns of V and M for chunks of `rows` tile rows: a row's last group of lanes writes up to
/// LANES − 1 columns past the chunk's tiles.
fn chunk_columns(rows: usize, t: &Tiling) -> usize {
    (rows * t.tiles[2] + LANES - 1).next_multiple_of(LANES)
}

/// What every task of one convolution shares.
struct Job<'a> {
    /// The zero-padded input ([`pad_input`]) and its extents.
    xp: &'a [f32],
    padded: [usize; 3],
    g: &'a ConvGeom,
    t: Tiling,
    /// Columns of V and M: tiles of a full chunk and slack (the GEMMs' N is the chunk's own count).
    tc: usize,
    /// Fewer tasks than threads: the GEMMs go parallel.
    few: bool,
}

/// Tile rows h0..h1 (all their tiles along the width) of depth tile row `td` of sample·group `ng`;
/// column j of V and M is tile ((h0 + j / tiles_w), j % tiles_w).
struct TileChunk {
    ng: usize,
    td: usize,
    h0: usize,
    h1: usize,
}

impl TileChunk {
    fn len(&self, t: &Tiling) -> usize {
        (self.h1 - self.h0) * t.tiles[2]
    }
}

/// The even and odd elements of 16 consecutive floats a ++ b — [a0 a2 a4 a6 b0 b2 b4 b6] and [a1 a3
/// a5 a7 b1 b3 b5 b7] — for the 2-D transforms: eight tiles' first and second columns, one per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn even_odd(
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    // The shuffles pick within 128-bit halves ([a0 a2 b0 b2 | a4 a6 b4 b6]); the permute puts the
    // 64-bit pairs in order.
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
    (
        order(_mm256_shuffle_ps::<0x88>(a, b)),
        order(_mm256_shuffle_ps::<0xDD>(a, b)),
    )
}

/// Asks for every cache line of `data` to be brought into L1 ahead of its use (x86-64; no-op elsewhere).
#[inline(always)]
pub(super) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks((64 / std::mem::size_of::<T>()).max(1)) {
        // SAFETY: prefetching has no architectural effect; the address is inside `data`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr() as *const i8
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

impl Job<'_> {
    /// Floats from one point's matrix to the next in V (`channels` = C_in/G) or M (C_out/G): 16 more
    /// than the matrix, so a box's stores or loads do not share one L1 set when the matrices' size
    /// is a multiple of 4 KiB.
    fn point_stride(&self, channels: usize) -> usize {
        channels * self.tc + 16
    }

    /// Slabs of points a chunk goes through one after another: with a Winograd depth axis one per
    /// depth point (16 of 3×3×3's 64 points), else one of all points.
    fn slabs(&self) -> usize {
        if self.t.out_ext[0] == 2 {
            4
        } else {
            1
        }
    }

    /// Points per slab: the GEMMs per slab, and the point matrices V, M and E hold at once.
    fn slab_points(&self) -> usize {
        self.t.points / self.slabs()
    }

    /// Index in a [`TileBox`] of the slab's point `q`, on the box's depth layer 0 (where the slab's
    /// depth point has been combined already).
    fn slab_box_index(&self, slab: usize, q: usize) -> usize {
        self.t.point_at[slab * self.slab_points() + q] - 16 * slab
    }

    /// V [slab points][C_in/G][tc] ← Bᵀ (each tile's input box) for the slab's points, eight tiles
    /// of a row at a time.
    fn input_transform<const WD: bool, const WH: bool, const WW: bool>(
        &self,
        c: &TileChunk,
        slab: usize,
        v: &mut Vec<f32>,
        rows: &mut Vec<f32>,
    ) {
        v.resize(
            self.slab_points() * self.point_stride(self.g.in_per_group()),
            0.0,
        );
        #[cfg(target_arch = "x86_64")]
        if !WD && WH && WW && is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.input_transform_2d(c, v) };
        }
        with_avx2!(self.input_transform_body::<WD, WH, WW>(c, slab, v, rows))
    }

    /// [`Self::input_transform_body`] for 3×3 kernels (Winograd along height and width only) in
    /// AVX2: channel by channel, [`Self::input_rows_2d`] of the channel's rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn input_transform_2d(&self, c: &TileChunk, v: &mut [f32]) {
        let g = self.g;
        let cin_g = g.in_per_group();
        let [pd, ph, pw] = self.padded;
        let (n, gi) = (c.ng / g.groups, c.ng % g.groups);
        let plane_len = pd * ph * pw;
        let rows_len = ((c.h1 - c.h0 - 1) * 2 + 4) * pw;
        let rows_at = |ci: usize| {
            let chan = (n * g.c_in + gi * cin_g + ci) * plane_len;
            &self.xp[chan + (c.td * ph + c.h0 * 2) * pw..][..rows_len]
        };
        for ci in 0..cin_g {
            if ci + 1 < cin_g {
                prefetch(rows_at(ci + 1));
            }
            self.input_rows_2d(c, ci, rows_at(ci), v);
        }
    }

    /// One input channel's points of V from its box rows `src` (the chunk's rows of one plane, or of
    /// a depth slab's combination of two, [`Self::input_transform_body`]), in AVX2: per eight tiles,
    /// each of the box's four rows as two pairs of vectors split into even and odd positions (the
    /// box's four columns, one tile per lane), Bᵀ along height then width (the generic pass's order,
    /// so the same results), and the 16 points stored into V.
    ///
    /// The AVX2 transforms build their arrays of vectors by indexing, not with `array::map` or
    /// `array::from_fn`: those are core's generic functions, compiled without AVX2, and when the
    /// inliner left one out of line (after an unrelated change elsewhere in the crate, 244b213) the
    /// vectors went through memory on every call — this function 2.0 → 7.3 % of ECO-Lite's whole-model
    /// profile and the model's inference 12 % slower (docs/PERFORMANCE.md, stop 46).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn input_rows_2d(&self, c: &TileChunk, ci: usize, src: &[f32], v: &mut [f32]) {
        use std::arch::x86_64::*;
        let (t, tc) = (&self.t, self.tc);
        let pw = self.padded[2];
        let ps = self.point_stride(self.g.in_per_group());
        let line = |[d0, d1, d2, d3]: [__m256; 4]| {
            [
                _mm256_sub_ps(d0, d2),
                _mm256_add_ps(d1, d2),
                _mm256_sub_ps(d2, d1),
                _mm256_sub_ps(d1, d3),
            ]
        };
        for th in c.h0..c.h1 {
            for tw0 in (0..t.tiles[2]).step_by(LANES) {
                // Box row bh of the eight tiles: 18 floats from `at` (tile l's four at 2l).
                let box_row = |bh: usize| {
                    let at = ((th - c.h0) * 2 + bh) * pw + tw0 * 2;
                    let row = &src[at..at + 2 * (LANES - 1) + 4];
                    let load = |i: usize| _mm256_loadu_ps(row.as_ptr().add(i));
                    let (c0, c1) = even_odd(load(0), load(LANES));
                    let (c2, c3) = even_odd(load(2), load(LANES + 2));
                    [c0, c1, c2, c3]
                };
                let rows = [box_row(0), box_row(1), box_row(2), box_row(3)];
                let column = |cw: usize| line([rows[0][cw], rows[1][cw], rows[2][cw], rows[3][cw]]);
                let by_height = [column(0), column(1), column(2), column(3)];
                let box_points = |bh: usize| {
                    let col = |cw: usize| by_height[cw][bh];
                    line([col(0), col(1), col(2), col(3)])
                };
                let j = (th - c.h0) * t.tiles[2] + tw0;
                for bh in 0..4 {
                    for (cw, &point) in box_points(bh).iter().enumerate() {
                        let at = (bh * 4 + cw) * ps + ci * tc + j;
                        debug_assert!(at + LANES <= v.len());
                        _mm256_storeu_ps(v.as_mut_ptr().add(at), point);
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn input_transform_body<const WD: bool, const WH: bool, const WW: bool>(
        &self,
        c: &TileChunk,
        slab: usize,
        v: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        // One box for the whole call: a box zeroed per group of tiles was a 2 KiB memset each time,
        // 8 % of the 64 → 144 1×3×3 forward (perf); every point the passes read is written first.
        let mut b: TileBox = [[0.0; LANES]; 64];
        let (g, t, tc) = (self.g, &self.t, self.tc);
        let cin_g = g.in_per_group();
        let [pd, ph, pw] = self.padded;
        let ext = [WD, WH, WW].map(|on| if on { 4 } else { 1 });
        let step_w = if WW { 2 } else { 1 };
        let (n, gi) = (c.ng / g.groups, c.ng % g.groups);
        let d0 = c.td * t.out_ext[0];
        let plane_len = pd * ph * pw;
        let row0 = c.h0 * t.out_ext[1];
        let rows_len = ((c.h1 - c.h0 - 1) * t.out_ext[1] + ext[1]) * pw;
        // Bᵀ's row `slab` along depth: d_i + d_j or d_i − d_j (one plane, d0, without a depth axis).
        let (di, dj, plus) = if WD {
            [(0, 2, false), (1, 2, true), (2, 1, false), (1, 3, false)][slab]
        } else {
            (0, 0, true)
        };
        let sp = self.slab_points();
        let rows_at = |ci: usize, d: usize| {
            let chan = (n * g.c_in + gi * cin_g + ci) * plane_len;
            &self.xp[chan + ((d0 + d) * ph + row0) * pw..][..rows_len]
        };
        #[cfg(target_arch = "x86_64")]
        let rows_2d = WD && WH && WW && is_x86_feature_detected!("avx2");
        for ci in 0..cin_g {
            // The next channel's rows, fetched while this one is transformed: the gathers would
            // otherwise wait on memory one line at a time.
            if ci + 1 < cin_g {
                prefetch(rows_at(ci + 1, di));
                if WD {
                    prefetch(rows_at(ci + 1, dj));
                }
            }
            // The slab's depth point of every box row, one contiguous pass (then the gathers below
            // read it from L1).
            let src: &[f32] = if WD {
                let (a, b) = (rows_at(ci, di), rows_at(ci, dj));
                rows.clear();
                if plus {
                    rows.extend(a.iter().zip(b).map(|(x, y)| x + y));
                } else {
                    rows.extend(a.iter().zip(b).map(|(x, y)| x - y));
                }
                rows
            } else {
                rows_at(ci, 0)
            };
            // 3×3×3: the slab's rows are a plane's, as a 3×3 kernel's (the same 16 points, in the same
            // order in V)
            #[cfg(target_arch = "x86_64")]
            if rows_2d {
                // SAFETY: the CPU has AVX2 (rows_2d).
                unsafe { self.input_rows_2d(c, ci, src, v) };
                continue;
            }
            for th in c.h0..c.h1 {
                for tw0 in (0..t.tiles[2]).step_by(LANES) {
                    for bh in 0..ext[1] {
                        let at = ((th - c.h0) * t.out_ext[1] + bh) * pw + tw0 * step_w;
                        let row = &src[at..at + step_w * (LANES - 1) + ext[2]];
                        for cw in 0..ext[2] {
                            b[bh * 4 + cw] = std::array::from_fn(|l| row[cw + step_w * l]);
                        }
                    }
                    let plane_ext = [1, ext[1], ext[2]];
                    if WH {
                        pass(&mut b, 1, plane_ext, input_line);
                    }
                    if WW {
                        pass(&mut b, 2, plane_ext, input_line);
                    }
                    let j = (th - c.h0) * t.tiles[2] + tw0;
                    // Whole groups of lanes (V has LANES − 1 columns of slack past the chunk); the
                    // lanes past a row's end are overwritten by the next row's tiles.
                    for q in 0..sp {
                        let dst = q * self.point_stride(cin_g) + ci * tc + j;
                        v[dst..dst + LANES].copy_from_slice(&b[self.slab_box_index(slab, q)]);
                    }
                }
            }
        }
    }

    /// E [slab points][C_out/G][tc] ← A (each tile's 2×2×2 block of dy) for the slab's points, eight
    /// tiles of a row at a time (`dyp` from [`pad_grad`], of extents `dims`).
    #[allow(clippy::too_many_arguments)]
    fn grad_transform<const WD: bool, const WH: bool, const WW: bool>(
        &self,
        c: &TileChunk,
        slab: usize,
        dyp: &[f32],
        dims: [usize; 3],
        e: &mut Vec<f32>,
        rows: &mut Vec<f32>,
    ) {
        e.resize(
            self.slab_points() * self.point_stride(self.g.out_per_group()),
            0.0,
        );
        #[cfg(target_arch = "x86_64")]
        if !WD && WH && WW && is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.grad_transform_2d(c, dyp, dims, e) };
        }
        with_avx2!(self.grad_transform_body::<WD, WH, WW>(c, slab, dyp, dims, e, rows))
    }

    /// [`Self::grad_transform_body`] for 3×3 kernels (Winograd along height and width only) in AVX2:
    /// channel by channel, [`Self::grad_rows_2d`] of the channel's rows of dy. The generic box code
    /// took 40 % of ECO-Lite's 64 → 192 weight gradient on 56².
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn grad_transform_2d(
        &self,
        c: &TileChunk,
        dyp: &[f32],
        [dd, dh, dw]: [usize; 3],
        e: &mut [f32],
    ) {
        let cout_g = self.g.out_per_group();
        let plane_len = dd * dh * dw;
        let rows_len = (c.h1 - c.h0) * 2 * dw;
        let rows_at = |co: usize| {
            let plane = (c.ng * cout_g + co) * plane_len;
            &dyp[plane + (c.td * dh + c.h0 * 2) * dw..][..rows_len]
        };
        for co in 0..cout_g {
            if co + 1 < cout_g {
                prefetch(rows_at(co + 1));
            }
            self.grad_rows_2d(c, co, rows_at(co), dw, e);
        }
    }

    /// One output channel's points of E from its rows of dy `src` (the chunk's rows of one plane, or
    /// a depth slab's combination of two, [`Self::grad_transform_body`]; rows `dw` long), in AVX2: per
    /// eight tiles, each of the tiles' two rows split into even and odd positions (the two columns,
    /// one tile per lane), A along height then width (the generic pass's order, −e as a sign flip),
    /// and the 16 points stored into E.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn grad_rows_2d(&self, c: &TileChunk, co: usize, src: &[f32], dw: usize, e: &mut [f32]) {
        use std::arch::x86_64::*;
        let (t, tc) = (&self.t, self.tc);
        let ps = self.point_stride(self.g.out_per_group());
        let sign = _mm256_set1_ps(-0.0);
        // A·dy along one axis: (e0, e0 + e1, e0 − e1, −e1), as `grad_line`.
        let line = |e0: __m256, e1: __m256| {
            [
                e0,
                _mm256_add_ps(e0, e1),
                _mm256_sub_ps(e0, e1),
                _mm256_xor_ps(e1, sign),
            ]
        };
        for th in c.h0..c.h1 {
            for tw0 in (0..t.tiles[2]).step_by(LANES) {
                // Row bh of the eight tiles' outputs: 16 floats from `at` (tile l's two at 2l).
                let tile_row = |bh: usize| {
                    let at = ((th - c.h0) * 2 + bh) * dw + tw0 * 2;
                    let row = &src[at..at + 2 * LANES];
                    even_odd(
                        _mm256_loadu_ps(row.as_ptr()),
                        _mm256_loadu_ps(row.as_ptr().add(LANES)),
                    )
                };
                let ((even0, odd0), (even1, odd1)) = (tile_row(0), tile_row(1));
                let (col0, col1) = (line(even0, even1), line(odd0, odd1));
                let j = (th - c.h0) * t.tiles[2] + tw0;
                for bh in 0..4 {
                    let points = line(col0[bh], col1[bh]);
                    for (cw, &point) in points.iter().enumerate() {
                        let at = (bh * 4 + cw) * ps + co * tc + j;
                        debug_assert!(at + LANES <= e.len());
                        _mm256_storeu_ps(e.as_mut_ptr().add(at), point);
                    }
                }
            }
        }
    }

    #[inline(always)]
    fn grad_transform_body<const WD: bool, const WH: bool, const WW: bool>(
        &self,
        c: &TileChunk,
        slab: usize,
        dyp: &[f32],
        [dd, dh, dw]: [usize; 3],
        e: &mut [f32],
        rows: &mut Vec<f32>,
    ) {
        // One box for the whole call, as in the input transform.
        let mut b: TileBox = [[0.0; LANES]; 64];
        let (g, t, tc) = (self.g, &self.t, self.tc);
        let cout_g = g.out_per_group();
        let oe = t.out_ext;
        let plane_len = dd * dh * dw;
        let rows_len = (c.h1 - c.h0) * oe[1] * dw;
        let sp = self.slab_points();
        let rows_at = |co: usize, a: usize| {
            let plane = (c.ng * cout_g + co) * plane_len;
            &dyp[plane + ((c.td * oe[0] + a) * dh + c.h0 * oe[1]) * dw..][..rows_len]
        };
        #[cfg(target_arch = "x86_64")]
        let rows_2d = WD && WH && WW && is_x86_feature_detected!("avx2");
        for co in 0..cout_g {
            // A's row `slab` along depth: (e0, e0 + e1, e0 − e1, −e1) of the tile's two depth rows.
            let src: &[f32] = if WD {
                let (e0, e1) = (rows_at(co, 0), rows_at(co, 1));
                rows.clear();
                match slab {
                    0 => rows.extend_from_slice(e0),
                    1 => rows.extend(e0.iter().zip(e1).map(|(x, y)| x + y)),
                    2 => rows.extend(e0.iter().zip(e1).map(|(x, y)| x - y)),
                    _ => rows.extend(e1.iter().map(|y| -y)),
                }
                rows
            } else {
                rows_at(co, 0)
            };
            // 3×3×3: the slab's rows are a plane's, as a 3×3 kernel's
            #[cfg(target_arch = "x86_64")]
            if rows_2d {
                // SAFETY: the CPU has AVX2 (rows_2d).
                unsafe { self.grad_rows_2d(c, co, src, dw, e) };
                continue;
            }
            for th in c.h0..c.h1 {
                for tw0 in (0..t.tiles[2]).step_by(LANES) {
                    for bh in 0..oe[1] {
                        let at = ((th - c.h0) * oe[1] + bh) * dw + tw0 * oe[2];
                        let row = &src[at..at + LANES * oe[2]];
                        for cw in 0..oe[2] {
                            b[bh * 4 + cw] = std::array::from_fn(|l| row[cw + oe[2] * l]);
                        }
                    }
                    let mut ext = [1, oe[1], oe[2]];
                    for (axis, on) in [(1, WH), (2, WW)] {
                        if on {
                            pass(&mut b, axis, ext, grad_line);
                            ext[axis] = 4;
                        }
                    }
                    let j = (th - c.h0) * t.tiles[2] + tw0;
                    for q in 0..sp {
                        let dst = q * self.point_stride(cout_g) + co * tc + j;
                        e[dst..dst + LANES].copy_from_slice(&b[self.slab_box_index(slab, q)]);
                    }
                }
            }
        }
    }

    /// dM[group][p] (C_out/G × C_in/G) += E[p] · V[p]ᵀ over the chunk's tiles, one GEMM per point of
    /// the slab.
    fn weight_products(&self, c: &TileChunk, slab: usize, v: &[f32], e: &[f32], dm: &mut [f32]) {
        let (g, t, tc) = (self.g, &self.t, self.tc);
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let gi = c.ng % g.groups;
        let sp = self.slab_points();
        for q in 0..sp {
            let p = slab * sp + q;
            gemm(
                cout_g,
                cin_g,
                c.len(t),
                Mat::new(
                    &e[q * self.point_stride(cout_g)..][..cout_g * tc],
                    tc,
                    false,
                ),
                Mat::new(&v[q * self.point_stride(cin_g)..][..cin_g * tc], tc, true),
                &mut dm[(gi * t.points + p) * cout_g * cin_g..][..cout_g * cin_g],
                cin_g,
                true,
                self.few,
            );
        }
    }

    /// M[q] (C_out/G × tiles) = U[group][p] · V[q] for the slab's points p = slab·(slab points) + q,
    /// one GEMM per point.
    fn products(&self, c: &TileChunk, slab: usize, u: &[f32], v: &[f32], m: &mut Vec<f32>) {
        let (g, t, tc) = (self.g, &self.t, self.tc);
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let gi = c.ng % g.groups;
        let sp = self.slab_points();
        m.resize(sp * self.point_stride(cout_g), 0.0);
        // U's point p for the group: rows (output channels) points·C_in/G apart
        let rs = t.points * cin_g;
        for q in 0..sp {
            let p = slab * sp + q;
            let up = &u[gi * cout_g * rs + p * cin_g..][..(cout_g - 1) * rs + cin_g];
            gemm(
                cout_g,
                c.len(t),
                cin_g,
                Mat {
                    data: up,
                    rs,
                    cs: 1,
                },
                Mat::new(&v[q * self.point_stride(cin_g)..][..cin_g * tc], tc, false),
                &mut m[q * self.point_stride(cout_g)..][..cout_g * tc],
                tc,
                false,
                self.few,
            );
        }
    }

    /// Aᵀ along height and width of the slab's M boxes, eight tiles of a row at a time. Without a
    /// depth axis that is the output: + bias (ReLU'd when fused), written into the task's pieces of
    /// y. With one, slab s adds Aᵀ's column s of it to the tiles' two depth outputs in `acc`
    /// (Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]: the sums of [`output_line`], in its order), and the
    /// last slab writes them out. Whether every output written was finite.
    #[allow(clippy::too_many_arguments)]
    fn output_transform<const WD: bool, const WH: bool, const WW: bool>(
        &self,
        c: &TileChunk,
        slab: usize,
        m: &[f32],
        acc: &mut Vec<Lanes>,
        bias: Option<&[f32]>,
        relu: bool,
        pieces: &mut [&mut [MaybeUninit<f32>]],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if !WD && WH && WW && is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.output_transform_2d(c, m, bias, relu, pieces) };
        }
        if WD {
            let groups_per_row = self.t.tiles[2].div_ceil(LANES);
            acc.resize(
                self.g.out_per_group() * (c.h1 - c.h0) * groups_per_row * 8,
                [0.0; LANES],
            );
            #[cfg(target_arch = "x86_64")]
            if WH && WW && is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { self.output_slab_3d(c, slab, m, acc, bias, relu, pieces) };
            }
        }
        with_avx2!(self.output_transform_body::<WD, WH, WW>(c, slab, m, acc, bias, relu, pieces))
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn output_transform_body<const WD: bool, const WH: bool, const WW: bool>(
        &self,
        c: &TileChunk,
        slab: usize,
        m: &[f32],
        acc: &mut [Lanes],
        bias: Option<&[f32]>,
        relu: bool,
        pieces: &mut [&mut [MaybeUninit<f32>]],
    ) -> bool {
        // One box for the whole call, as in the input transform.
        let mut b: TileBox = [[0.0; LANES]; 64];
        let (g, t, tc) = (self.g, &self.t, self.tc);
        let cout_g = g.out_per_group();
        let [_, oh, ow] = g.output;
        let oe = t.out_ext;
        let gi = c.ng % g.groups;
        let sp = self.slab_points();
        let groups_per_row = t.tiles[2].div_ceil(LANES);
        let last = slab + 1 == self.slabs();
        // s·0 is 0 for finite s and NaN otherwise: one sum per lane says whether all were finite.
        let mut probe: Lanes = [0.0; LANES];
        let rows_h = ((c.h1 - c.h0) * oe[1]).min(oh - c.h0 * oe[1]);
        let rows_d = oe[0].min(g.output[0] - c.td * oe[0]);
        for co in 0..cout_g {
            // The next channel's output rows, fetched ahead of the stores (as the input transform).
            if last && co + 1 < cout_g {
                for a in 0..rows_d {
                    let at = (a * oh + c.h0 * oe[1]) * ow;
                    prefetch(&pieces[co + 1][at..at + rows_h * ow]);
                }
            }
            let bv = bias.map_or(0.0, |b| b[gi * cout_g + co]);
            for th in c.h0..c.h1 {
                for tw0 in (0..t.tiles[2]).step_by(LANES) {
                    let j = (th - c.h0) * t.tiles[2] + tw0;
                    for q in 0..sp {
                        let src = q * self.point_stride(cout_g) + co * tc + j;
                        b[self.slab_box_index(slab, q)].copy_from_slice(&m[src..src + LANES]);
                    }
                    let mut ext = [1, if WH { 4 } else { 1 }, if WW { 4 } else { 1 }];
                    for (axis, on) in [(1, WH), (2, WW)] {
                        if on {
                            pass(&mut b, axis, ext, output_line);
                            ext[axis] = 2;
                        }
                    }
                    if WD {
                        let group =
                            ((co * (c.h1 - c.h0) + th - c.h0) * groups_per_row + tw0 / LANES) * 8;
                        let outs = &mut acc[group..group + 8];
                        for bh in 0..oe[1] {
                            for cw in 0..oe[2] {
                                let z = b[bh * 4 + cw];
                                let (y0, y1) = (&mut outs[bh * 2 + cw], bh * 2 + cw + 4);
                                match slab {
                                    0 => *y0 = z,
                                    1 => {
                                        *y0 = add(*y0, z);
                                        outs[y1] = z;
                                    }
                                    2 => {
                                        *y0 = add(*y0, z);
                                        outs[y1] = sub(outs[y1], z);
                                    }
                                    _ => outs[y1] = sub(outs[y1], z),
                                }
                            }
                        }
                        if !last {
                            continue;
                        }
                        for a in 0..2 {
                            for bh in 0..oe[1] {
                                for cw in 0..oe[2] {
                                    b[a * 16 + bh * 4 + cw] = outs[a * 4 + bh * 2 + cw];
                                }
                            }
                        }
                    }
                    self.store_tiles(&b, pieces[co], c, th, tw0, bv, relu, &mut probe);
                }
            }
        }
        probe.iter().all(|v| *v == 0.0)
    }

    /// [`Self::output_transform_body`] for 3×3 kernels (Winograd along height and width only) in
    /// AVX2: per output channel and eight tiles, the 16 points' rows of M, Aᵀ along height then width
    /// (the generic pass's order and sums, so the same results), + bias, ReLU, and the two outputs of
    /// each tile row interleaved into 16 consecutive floats of y. The generic box code spent a third
    /// of the 64 → 144 layer on 56² here (runtime box indices, a scalar store per output).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn output_transform_2d(
        &self,
        c: &TileChunk,
        m: &[f32],
        bias: Option<&[f32]>,
        relu: bool,
        pieces: &mut [&mut [MaybeUninit<f32>]],
    ) -> bool {
        use std::arch::x86_64::*;
        let (g, t) = (self.g, &self.t);
        let cout_g = g.out_per_group();
        let [_, oh, ow] = g.output;
        let gi = c.ng % g.groups;
        let rows_h = ((c.h1 - c.h0) * 2).min(oh - c.h0 * 2);
        let zero = _mm256_setzero_ps();
        let mut probe = zero;
        for co in 0..cout_g {
            if co + 1 < cout_g {
                let at = c.h0 * 2 * ow;
                prefetch(&pieces[co + 1][at..at + rows_h * ow]);
            }
            let bv = _mm256_set1_ps(bias.map_or(0.0, |b| b[gi * cout_g + co]));
            let piece = &mut *pieces[co];
            for th in c.h0..c.h1 {
                for tw0 in (0..t.tiles[2]).step_by(LANES) {
                    let j = (th - c.h0) * t.tiles[2] + tw0;
                    let z = self.output_points_2d(m, co, j);
                    let (h0, w0) = (th * 2, tw0 * 2);
                    for (bh, &[z0, z1]) in z.iter().enumerate().take(2.min(oh - h0)) {
                        let (y0, y1) = (_mm256_add_ps(z0, bv), _mm256_add_ps(z1, bv));
                        let row = &mut piece[(h0 + bh) * ow..][..ow];
                        store_output_pair(row, w0, y0, y1, relu, &mut probe);
                    }
                }
            }
        }
        let mut lanes: Lanes = [0.0; LANES];
        _mm256_storeu_ps(lanes.as_mut_ptr(), probe);
        lanes.iter().all(|v| *v == 0.0)
    }

    /// Eight tiles' 2×2 outputs (before bias) from their 16 points in M (output channel `co`, tiles
    /// from column j): Aᵀ along height for each of the four columns of points, then along width —
    /// the generic passes' order and sums. `[bh][cw]`, one tile per lane.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn output_points_2d(
        &self,
        m: &[f32],
        co: usize,
        j: usize,
    ) -> [[std::arch::x86_64::__m256; 2]; 2] {
        use std::arch::x86_64::*;
        let (ps, tc) = (self.point_stride(self.g.out_per_group()), self.tc);
        // Every point's eight lanes lie inside M (its columns have LANES − 1 of slack).
        let point = |q: usize| {
            let at = q * ps + co * tc + j;
            debug_assert!(at + LANES <= m.len());
            _mm256_loadu_ps(m.as_ptr().add(at))
        };
        let line = |[d0, d1, d2, d3]: [__m256; 4]| {
            [
                _mm256_add_ps(_mm256_add_ps(d0, d1), d2),
                _mm256_sub_ps(_mm256_sub_ps(d1, d2), d3),
            ]
        };
        let column = |cw: usize| line([point(cw), point(4 + cw), point(8 + cw), point(12 + cw)]);
        let cols = [column(0), column(1), column(2), column(3)];
        let row = |bh: usize| line([cols[0][bh], cols[1][bh], cols[2][bh], cols[3][bh]]);
        [row(0), row(1)]
    }

    /// [`Self::output_transform_body`] for 3×3×3 kernels in AVX2: per output channel and eight
    /// tiles, the slab's 16 points through [`Self::output_points_2d`], Aᵀ along depth accumulated
    /// across the four slabs in `acc` (the generic code's layout and order), and in the last slab
    /// + bias, ReLU and the stores of [`store_output_pair`].
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn output_slab_3d(
        &self,
        c: &TileChunk,
        slab: usize,
        m: &[f32],
        acc: &mut [Lanes],
        bias: Option<&[f32]>,
        relu: bool,
        pieces: &mut [&mut [MaybeUninit<f32>]],
    ) -> bool {
        use std::arch::x86_64::*;
        let (g, t) = (self.g, &self.t);
        let cout_g = g.out_per_group();
        let [od, oh, ow] = g.output;
        let gi = c.ng % g.groups;
        let groups_per_row = t.tiles[2].div_ceil(LANES);
        let last = slab + 1 == self.slabs();
        let rows_d = 2.min(od - c.td * 2);
        let rows_h = ((c.h1 - c.h0) * 2).min(oh - c.h0 * 2);
        let zero = _mm256_setzero_ps();
        let mut probe = zero;
        let load = |l: &Lanes| _mm256_loadu_ps(l.as_ptr());
        let store = |l: &mut Lanes, v: __m256| _mm256_storeu_ps(l.as_mut_ptr(), v);
        for co in 0..cout_g {
            if last && co + 1 < cout_g {
                for a in 0..rows_d {
                    let at = (a * oh + c.h0 * 2) * ow;
                    prefetch(&pieces[co + 1][at..at + rows_h * ow]);
                }
            }
            let bv = _mm256_set1_ps(bias.map_or(0.0, |b| b[gi * cout_g + co]));
            for th in c.h0..c.h1 {
                for tw0 in (0..t.tiles[2]).step_by(LANES) {
                    let j = (th - c.h0) * t.tiles[2] + tw0;
                    let z = self.output_points_2d(m, co, j);
                    let group =
                        ((co * (c.h1 - c.h0) + th - c.h0) * groups_per_row + tw0 / LANES) * 8;
                    // outs[a·4 + bh·2 + cw]: output (a, bh, cw), a the depth (Aᵀ's rows).
                    let outs = &mut acc[group..group + 8];
                    for k in 0..4 {
                        let (z, y0, y1) = (z[k / 2][k % 2], k, k + 4);
                        let (a0, a1) = (load(&outs[y0]), load(&outs[y1]));
                        match slab {
                            0 => store(&mut outs[y0], z),
                            1 => {
                                store(&mut outs[y0], _mm256_add_ps(a0, z));
                                store(&mut outs[y1], z);
                            }
                            2 => {
                                store(&mut outs[y0], _mm256_add_ps(a0, z));
                                store(&mut outs[y1], _mm256_sub_ps(a1, z));
                            }
                            _ => store(&mut outs[y1], _mm256_sub_ps(a1, z)),
                        }
                    }
                    if !last {
                        continue;
                    }
                    let (h0, w0) = (th * 2, tw0 * 2);
                    for a in 0..rows_d {
                        for bh in 0..2.min(oh - h0) {
                            let y0 = _mm256_add_ps(load(&outs[a * 4 + bh * 2]), bv);
                            let y1 = _mm256_add_ps(load(&outs[a * 4 + bh * 2 + 1]), bv);
                            let row = &mut pieces[co][(a * oh + h0 + bh) * ow..][..ow];
                            store_output_pair(row, w0, y0, y1, relu, &mut probe);
                        }
                    }
                }
            }
        }
        let mut lanes: Lanes = [0.0; LANES];
        _mm256_storeu_ps(lanes.as_mut_ptr(), probe);
        lanes.iter().all(|v| *v == 0.0)
    }

    /// Writes eight tiles' outputs, b[a·16 + bh·4 + cw] for output (a, bh, cw) of each tile, + `bv`
    /// (ReLU'd when `relu`) into output channel `piece` of the task (its depth rows of y); adds each
    /// value·0 into `probe`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn store_tiles(
        &self,
        b: &TileBox,
        piece: &mut [MaybeUninit<f32>],
        c: &TileChunk,
        th: usize,
        tw0: usize,
        bv: f32,
        relu: bool,
        probe: &mut Lanes,
    ) {
        let [od, oh, ow] = self.g.output;
        let oe = self.t.out_ext;
        let rows_d = oe[0].min(od - c.td * oe[0]);
        let h0 = th * oe[1];
        let w0 = tw0 * oe[2];
        let full = w0 + LANES * oe[2] <= ow;
        for a in 0..rows_d {
            for bh in 0..oe[1].min(oh - h0) {
                let row = &mut piece[(a * oh + h0 + bh) * ow..][..ow];
                let outs: [Lanes; 2] = std::array::from_fn(|cw| {
                    let s = b[a * 16 + bh * 4 + cw.min(oe[2] - 1)];
                    std::array::from_fn(|l| s[l] + bv)
                });
                if full {
                    for lane_out in &outs[..oe[2]] {
                        *probe = add(*probe, lane_out.map(|s| s * 0.0));
                    }
                    let dst = &mut row[w0..w0 + LANES * oe[2]];
                    for l in 0..LANES {
                        for cw in 0..oe[2] {
                            let s = outs[cw][l];
                            dst[l * oe[2] + cw].write(if relu { relu_f(s) } else { s });
                        }
                    }
                } else {
                    for (i, d) in row[w0..].iter_mut().enumerate() {
                        let s = outs[i % oe[2]][i / oe[2]];
                        probe[0] += s * 0.0;
                        d.write(if relu { relu_f(s) } else { s });
                    }
                }
            }
        }
    }
}

/// Eight tiles' two outputs along a row of y (y0, y1: output columns 2l and 2l + 1 of tile l from
/// column w0), with bias already added: ReLU'd when `relu`, each value·0 added into `probe` (NaN
/// there when one is not finite), interleaved into 16 consecutive floats — or one by one where
/// the row ends within them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_output_pair(
    row: &mut [MaybeUninit<f32>],
    w0: usize,
    y0: std::arch::x86_64::__m256,
    y1: std::arch::x86_64::__m256,
    relu: bool,
    probe: &mut std::arch::x86_64::__m256,
) {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    if w0 + 2 * LANES <= row.len() {
        *probe = _mm256_add_ps(*probe, _mm256_mul_ps(y0, zero));
        *probe = _mm256_add_ps(*probe, _mm256_mul_ps(y1, zero));
        // Finite values only matter (a non-finite output discards the result): there max(s, 0) is
        // the ReLU, −0 included.
        let (y0, y1) = if relu {
            (_mm256_max_ps(y0, zero), _mm256_max_ps(y1, zero))
        } else {
            (y0, y1)
        };
        // (y0[l], y1[l]) to positions 2l, 2l + 1.
        let (lo, hi) = (_mm256_unpacklo_ps(y0, y1), _mm256_unpackhi_ps(y0, y1));
        let dst = row.as_mut_ptr().add(w0).cast::<f32>();
        _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(lo, hi));
        _mm256_storeu_ps(dst.add(LANES), _mm256_permute2f128_ps::<0x31>(lo, hi));
    } else {
        let mut outs = [[0.0f32; LANES]; 2];
        _mm256_storeu_ps(outs[0].as_mut_ptr(), y0);
        _mm256_storeu_ps(outs[1].as_mut_ptr(), y1);
        for (i, d) in row[w0..].iter_mut().enumerate() {
            let s = outs[i % 2][i / 2];
            *probe = _mm256_add_ps(*probe, _mm256_set1_ps(s * 0.0));
            d.write(if relu { relu_f(s) } else { s });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(c: [usize; 2], spatial: [usize; 3], kernel: [usize; 3], stride: usize) -> ConvGeom {
        let padding = kernel.map(|k| k / 2);
        ConvGeom {
            n: 2,
            c_in: c[0],
            c_out: c[1],
            groups: 1,
            input: spatial,
            output: std::array::from_fn(|a| (spatial[a] + 2 * padding[a] - kernel[a]) / stride + 1),
            kernel,
            stride: [stride; 3],
            padding,
            dilation: [1; 3],
        }
    }

    /// Which of the zoo's layers take the Winograd path (the rules measured in docs/PERFORMANCE.md).
    #[test]
    fn applies_to_the_shapes_that_pay() {
        let taken = [
            geom([128, 128], [16, 28, 28], [3, 3, 3], 1), // ECO-Lite 3-D
            geom([256, 256], [8, 14, 14], [3, 3, 3], 1),  // ECO-Lite 3-D, 49 tiles per plane
            geom([96, 96], [1, 28, 28], [1, 3, 3], 1),    // ECO-Lite 2-D
            geom([64, 96], [1, 28, 28], [1, 3, 3], 1),    // ECO-Lite 2-D, r = 38.4
            geom([128, 230], [8, 28, 28], [1, 3, 3], 1),  // R(2+1)D-18 spatial
            geom([64, 144], [16, 56, 56], [1, 3, 3], 1),  // R(2+1)D-18 spatial, 56²
        ];
        for g in &taken {
            assert!(applies(g), "{g:?}");
        }
        // 49 tiles per plane: taken where the other paths are not 512 bits wide
        let c2d_14 = geom([256, 256], [4, 14, 14], [1, 3, 3], 1);
        assert_eq!(applies(&c2d_14), min_row_tiles_3x3() <= 49, "{c2d_14:?}");
        let not_taken = [
            geom([512, 512], [4, 7, 7], [3, 3, 3], 1), // 16 tiles per plane
            geom([64, 64], [8, 56, 56], [1, 3, 3], 1), // 3×3 with r = 32
            geom([144, 64], [16, 56, 56], [3, 1, 1], 1), // one Winograd axis
            geom([128, 256], [16, 28, 28], [3, 3, 3], 2), // stride 2
            geom([3, 64], [16, 224, 224], [1, 7, 7], 1), // 7 taps
            geom([64, 64], [1, 28, 28], [1, 1, 1], 1), // pointwise
        ];
        for g in &not_taken {
            assert!(!applies(g), "{g:?}");
        }
    }
}
