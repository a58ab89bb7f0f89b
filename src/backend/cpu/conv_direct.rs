//! Direct convolution (x86-64 with AVX2 and FMA, or AVX-512): no column matrix, no packing of the
//! input.
//!
//! With stride 1, the input read by output (d, h, w) through tap (a, b, c) is at padded position
//! (d + a·dD, h + b·dH, w + c·dW). In a zero-padded copy of the input, [C, Dp, Hp, Wp], every tap is
//! then one constant offset from the output's own padded-grid index d·Hp·Wp + h·Wp + w, so a run of
//! consecutive outputs along that grid reads a run of consecutive inputs for every (channel, tap):
//! one unaligned vector load instead of vol2col's copy into a column matrix and the GEMM's packing of
//! it. Outputs are computed on the padded grid — the rows' last Wp − oW positions are wasted work
//! (7 % at 28 wide with a 3-tap kernel, 22 % at 7 wide) — into a per-task plane buffer, then copied
//! out with the bias and the fused ReLU.
//!
//! Strided convolutions take the same kernel on the input split into its stride phases
//! ([`padded_channels`]): output (d, h, w) reads padded position (s·d + a·dD, …) through tap a, which
//! is position d + ⌊a·dD / s⌋ of phase a·dD mod s — again one constant offset per tap from the
//! output's index on the phases' grid [Dp/sD, Hp/sH, Wp/sW]. It pays for the 2-D stems (147
//! products per output, [`MAX_STRIDED_PRODUCTS`]), whose column matrix on the GEMM path costs as much
//! as the products.
//!
//! The microkernel keeps a tile of MR output channels × NR positions of accumulators in registers:
//! [`tile_6x16`] 6 × 16 in 12 AVX registers, and on CPUs with AVX-512 [`tile_8x32`] 8 × 32 in 16
//! of its 32 (twice the FMA width; an 8 × 48 tile measured no faster). Before it, CPUs with AVX-512
//! took the GEMM path, whose microkernels are 512 bits wide: on an AVX-512 Xeon the 8 × 32 tile
//! runs ECO-Lite's 3×3 layers at 1.2–1.35× the GEMM path's rate (docs/PERFORMANCE.md, stop 35).
//! Per (channel, tap) step a tile loads 2 vectors of input and
//! broadcasts MR weights, packed per MR output channels as [k][MR] panels once per call. K is walked
//! in chunks of channels (about [`K_CHUNK_FLOATS`] / MR steps: a panel's chunk stays in L1) and the
//! positions in blocks (the chunk's input rows for a block, [`X_BLOCK_FLOATS`], stay in L2 while
//! every panel runs over them). A block goes through every chunk before the next block starts: its
//! accumulators, stored between chunks, stay in L2 (a whole slice's, 1.9 MB for a 144-channel layer on
//! 56², had not), and are copied out to y (no zero-fill first) before the next block. The padded
//! input itself is never built whole: each task stages the padded rows its output depth slice reads
//! in a buffer of its own ([`padded_window`], laid out by [`Grid::window`]), which its blocks then
//! read from cache (one padded copy written to memory and read back took 11 % of a 144-channel layer
//! on 56², docs/PERFORMANCE.md, stop 41).
//!
//! The weight gradient ([`backward_weight`], AVX-512 only) takes the same grid the other way round:
//! dW[co, (ci, tap)] sums dy[co, p]·x[ci, p + tap] over the output positions p, each column (ci, tap)
//! one constant offset from p's grid index, so no column matrix either.
//!
//! The products and their sum order differ from the GEMM path's (each output sums over k in order,
//! in FP32), so results differ by rounding; padding taps multiply zeros as the GEMM path does, so
//! non-finite weights give the same non-finite pattern.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::{padded_channels, padded_window, OutPtr};
use super::elementwise::relu as relu_f;
use crate::backend::ConvGeom;

/// A microkernel: MR output channels × NR positions of accumulators, and the ISA it needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tile {
    mr: usize,
    nr: usize,
    /// acc[r·ld + j] (r < MR, j < NR) = (first ? 0 : acc) + Σ_k wp[MR·k + r]·x[offs[k] + j].
    run: unsafe fn(*const f32, *const f32, &[usize], *mut f32, usize, bool),
    pub(super) name: &'static str,
}

/// 6 × 16 in 12 256-bit registers (AVX2 and FMA).
const AVX2: Tile = Tile {
    mr: 6,
    nr: 16,
    run: tile_6x16,
    name: "avx2 6x16",
};

/// 8 × 32 in 16 512-bit registers (AVX-512F).
const AVX512: Tile = Tile {
    mr: 8,
    nr: 32,
    run: tile_8x32,
    name: "avx512 8x32",
};

/// Input floats per position block (128 KiB): the chunk's input rows for a block of positions, read
/// once per panel, stay in L2 (512 KiB per core on the smallest machine measured).
const X_BLOCK_FLOATS: usize = 32 * 1024;
/// The direct kernel computes oH·Wp positions per depth slice, of which oH·oW are outputs; below this
/// useful fraction the GEMM path is faster (it ran at 0.88 of the direct kernel's multiply-add rate
/// on ECO-Lite's 28×28 layers, docs/PERFORMANCE.md).
const MIN_USEFUL: f64 = 0.9;
/// Weight floats per panel and K chunk: 12 KiB, in L1 (512 (channel, tap) steps of a 6-wide panel).
const K_CHUNK_FLOATS: usize = 3072;

/// Products per output (C_in/G × kernel volume) up to which a strided convolution takes the direct
/// kernel: the 2-D stems (3 channels × 7×7 = 147), whose column matrix costs as much as their
/// products — 7×7 stride 2 on 8×224², 11.0 → 9.2 ms; on 16×224², 23.3 → 20.9 ms; on 16×112² (45
/// outputs), 4.9 → 4.6 ms. With more the GEMM path's 512-bit microkernel on a column matrix of few
/// positions ran faster: 128 → 460 1×3×3 stride (1, 2, 2) on 8×28² (K = 1152), 6.4 against 11.2 ms;
/// 256 → 512 3×3×3 stride 2 on 8×14², 7.9 against 14.1; 230 → 128 3×1×1 stride (2, 1, 1) on 16×28²,
/// 5.6 against 6.3. And I3D's 5×7×7 stride-2 stem (K = 735) summed with 1.4× the GEMM path's rounding
/// error (RMS 4.7e-7 against 3.3e-7 of the outputs, against an f64 reference: its sums run 245 terms
/// long where the GEMM's blocks are shorter), which took two full-size I3D non-local fixtures,
/// PyTorch's own f32 error there up to 0.14, past their tolerances (docs/PERFORMANCE.md, stop 37).
const MAX_STRIDED_PRODUCTS: usize = 160;

/// Whether the direct kernel runs `g`'s forward pass here: not depthwise (its own kernel), not a
/// 1×1×1 kernel (the GEMM reads a pointwise input in place, and a strided one's phases would copy
/// every input for the one phase read), stride 1 or at most [`MAX_STRIDED_PRODUCTS`] products per
/// output, at least [`MIN_USEFUL`] of the computed positions outputs, on a CPU where it is
/// [`enabled`].
pub(super) fn applies(g: &ConvGeom) -> bool {
    !g.is_depthwise()
        && g.kernel != [1, 1, 1]
        && (g.stride == [1, 1, 1] || g.in_per_group() * g.kernel_volume() <= MAX_STRIDED_PRODUCTS)
        && enabled().is_some_and(|t| useful_fraction(g, t) >= MIN_USEFUL)
}

/// Outputs over positions computed per depth slice (oH·oW / oH·Wq rounded up to whole tiles, Wq the
/// width of the padded input's stride phases).
fn useful_fraction(g: &ConvGeom, t: Tile) -> f64 {
    let wq = (g.input[2] + 2 * g.padding[2]).div_ceil(g.stride[2]);
    let computed = (g.output[1] * wq).div_ceil(t.nr) * t.nr;
    (g.output[1] * g.output[2]) as f64 / computed as f64
}

/// The tile the forward pass runs on this CPU — AVX-512's where it has AVX-512F, else AVX2's where it
/// has AVX2 and FMA — unless the direct kernel is turned off by `VIDGRAD_CPU_CONV_DIRECT=0`.
fn enabled() -> Option<Tile> {
    static ON: std::sync::OnceLock<Option<Tile>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        let on = std::env::var("VIDGRAD_CPU_CONV_DIRECT").map_or(true, |v| v != "0");
        on.then(|| supported_tiles().last().copied()).flatten()
    })
}

/// The tiles this CPU can run, narrowest first (the tests run each).
pub(super) fn supported_tiles() -> Vec<Tile> {
    let mut tiles = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            tiles.push(AVX2);
        }
        if is_x86_feature_detected!("avx512f") {
            tiles.push(AVX512);
        }
    }
    tiles
}

/// The padded input's stride phases for one channel ([`padded_channels`]) and the tap offsets on them.
struct Grid {
    /// Extents of each phase [Dq, Hq, Wq] = ⌈[Dp, Hp, Wp] / stride⌉ (the padded extents at stride 1);
    /// in a [`Grid::window`], Dq is the depth rows one output slice reads.
    dims: [usize; 3],
    /// Floats per padded channel: its phases (sD·sH·sW of them) of Dq·Hq·Wq floats.
    chan: usize,
    /// Offset of each tap (a, b, c), in weight order: the phase of (a·dD, b·dH, c·dW) mod the
    /// stride, then (⌊a·dD / sD⌋·Hq + ⌊b·dH / sH⌋)·Wq + ⌊c·dW / sW⌋ within it.
    taps: Vec<usize>,
    /// Positions computed per output depth slice: oH·Wq rounded up to a whole tile.
    len: usize,
    /// Floats past the last channel that a tile may read (wasted positions of the last slice).
    slack: usize,
}

impl Grid {
    /// The whole padded input: every output depth slice's reads.
    fn new(g: &ConvGeom, nr: usize) -> Self {
        let dq = (g.input[0] + 2 * g.padding[0]).div_ceil(g.stride[0]);
        Grid::with_depth(g, nr, dq, g.output[0])
    }

    /// The phase depth rows that one output slice reads, od..od + ⌊(kD − 1)·dD / sD⌋ + 1 for slice
    /// od: what [`padded_window`] stages per task.
    fn window(g: &ConvGeom, nr: usize) -> Self {
        let rows = (g.kernel[0] - 1) * g.dilation[0] / g.stride[0] + 1;
        Grid::with_depth(g, nr, rows, 1)
    }

    /// `depth` phase depth rows per channel, read by `slices` output depth slices.
    fn with_depth(g: &ConvGeom, nr: usize, depth: usize, slices: usize) -> Self {
        let dims: [usize; 3] = std::array::from_fn(|i| {
            if i == 0 {
                depth
            } else {
                (g.input[i] + 2 * g.padding[i]).div_ceil(g.stride[i])
            }
        });
        let [_, hq, wq] = dims;
        let phase_len: usize = dims.iter().product();
        let [sd, sh, sw] = g.stride;
        let [kd, kh, kw] = g.kernel;
        let mut taps = Vec::with_capacity(kd * kh * kw);
        for a in (0..kd).map(|a| a * g.dilation[0]) {
            for b in (0..kh).map(|b| b * g.dilation[1]) {
                for c in (0..kw).map(|c| c * g.dilation[2]) {
                    let phase = (a % sd * sh + b % sh) * sw + c % sw;
                    taps.push(phase * phase_len + (a / sd * hq + b / sh) * wq + c / sw);
                }
            }
        }
        let len = (g.output[1] * wq).div_ceil(nr) * nr;
        let chan = phase_len * sd * sh * sw;
        // The last channel's last slice reads up to its farthest tap + len floats from the slice.
        let max_tap = taps.iter().copied().max().unwrap_or(0);
        let slack = (max_tap + slices.saturating_sub(1) * hq * wq + len).saturating_sub(chan);
        Grid {
            dims,
            chan,
            taps,
            len,
            slack,
        }
    }
}

/// Weights of one group [C_out/G, K] as panels of MR rows, [panel][k][MR], rows past C_out/G zero.
fn pack_weights(wg: &[f32], cout_g: usize, kdim: usize, mr: usize) -> Vec<f32> {
    let panels = cout_g.div_ceil(mr);
    let mut packed = vec![0.0f32; panels * kdim * mr];
    for (co, row) in wg.chunks_exact(kdim).enumerate() {
        let panel = &mut packed[co / mr * kdim * mr..][..kdim * mr];
        for (k, &v) in row.iter().enumerate() {
            panel[k * mr + co % mr] = v;
        }
    }
    packed
}

/// The forward pass with the tile [`applies`] found for this CPU.
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Vec<f32> {
    let tile = enabled().expect("the direct convolution runs where `applies` found a tile");
    forward_with(tile, x, w, bias, g, relu)
}

/// The forward pass with `tile` (one of [`supported_tiles`]).
pub(super) fn forward_with(
    tile: Tile,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Vec<f32> {
    assert!(
        supported_tiles().iter().any(|t| t.name == tile.name),
        "the direct convolution runs on a CPU with the tile's ISA"
    );
    let (mr, nr) = (tile.mr, tile.nr);
    let grid = Grid::window(g, nr);
    let (cin_g, cout_g, groups) = (g.in_per_group(), g.out_per_group(), g.groups);
    let kvol = g.kernel_volume();
    let kdim = cin_g * kvol;
    let panels: Vec<Vec<f32>> = w
        .chunks_exact(cout_g * kdim)
        .map(|wg| pack_weights(wg, cout_g, kdim, mr))
        .collect();

    let [od_n, oh_n, ow_n] = g.output;
    let plane_out = oh_n * ow_n;
    // y is written once, by the copy-out below (no zero-fill first)
    let len = g.n * g.c_out * g.output_volume();
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let tasks = tasks(&mut y.spare_capacity_mut()[..len], g, mr);
    // Chunks of equal size: 128 channels as 42 + 42 + 42 + 2 made a fourth pass over the
    // accumulators for 2 channels' work.
    let max_chans = (K_CHUNK_FLOATS / mr / kvol).clamp(1, cin_g);
    let chans_per_chunk = cin_g.div_ceil(cin_g.div_ceil(max_chans));
    let wp = grid.dims[2];
    // Position blocks whose input rows (of every channel and tap of a chunk) stay in L2 while every
    // panel runs over them; the block's accumulators for all the task's panels stay in L2 through
    // the chunks, and are copied out before the next block.
    let rows_read = chans_per_chunk * g.kernel[0] * g.kernel[1];
    let halo = g.dilation[2] * (g.kernel[2] - 1) / g.stride[2];
    let block = ((X_BLOCK_FLOATS / rows_read).saturating_sub(halo) / nr * nr).clamp(nr, grid.len);
    let chunk_offsets: Vec<(usize, Steps)> = (0..cin_g)
        .step_by(chans_per_chunk)
        .map(|c0| {
            let chans = chans_per_chunk.min(cin_g - c0);
            let offs = (0..chans)
                .flat_map(|ci| grid.taps.iter().map(move |t| ci * grid.chan + t))
                .collect();
            (c0, Steps::new(offs))
        })
        .collect();
    let in_vol = g.input_volume();
    tasks.into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::new()),
        |(acc, xg), mut task| {
            let (n, gi) = (task.ng / groups, task.ng % groups);
            // the group's input channels, zero-padded and split into stride phases, [C_in/G,
            // phases, rows the slice reads, Hq, Wq], plus `grid.slack` zeros
            let xn = &x[(n * g.c_in + gi * cin_g) * in_vol..][..cin_g * in_vol];
            padded_window(xn, g, grid.dims, task.od, grid.slack, xg);
            acc.resize((task.p1 - task.p0) * mr * block, 0.0);
            for q0 in (0..grid.len).step_by(block) {
                let q1 = (q0 + block).min(grid.len);
                for (c0, steps) in &chunk_offsets {
                    let base = &xg[c0 * grid.chan + q0..];
                    for (pi, rows) in (task.p0..task.p1).zip(acc.chunks_exact_mut(mr * block)) {
                        let wpanel =
                            &panels[gi][(pi * kdim + c0 * kvol) * mr..][..steps.offs.len() * mr];
                        run_panel(tile, wpanel, base, steps, rows, block, q1 - q0, *c0 == 0);
                    }
                }
                // Copy out the block's valid positions (oW of every Wq), with bias and ReLU.
                let h_rows = q0 / wp..(q1.div_ceil(wp)).min(oh_n);
                for (r, dst) in task.rows.iter_mut().enumerate() {
                    let co = task.p0 * mr + r;
                    let bv = bias.map_or(0.0, |b| b[gi * cout_g + co]);
                    for h in h_rows.clone() {
                        let (lo, hi) = (
                            q0.max(h * wp) - h * wp,
                            (q1.min(h * wp + ow_n)).saturating_sub(h * wp),
                        );
                        if hi <= lo {
                            continue;
                        }
                        let src = &acc[r * block + h * wp + lo - q0..][..hi - lo];
                        store_outputs(&mut dst[h * ow_n + lo..h * ow_n + hi], src, bv, relu);
                    }
                }
            }
        },
    );
    debug_assert_eq!(plane_out * od_n, g.output_volume());
    // SAFETY: the tasks cover every (image, output channel, depth slice) plane of y once, and each
    // writes all oH·oW elements of its planes (oH rows of oW, from the oH·Wq positions of its slice).
    unsafe { y.set_len(len) };
    y
}

/// dst = src + bias, through ReLU if `relu`: one vector loop per case, AVX2-wide where the CPU has it
/// (the baseline build's SSE2 loop with ReLU's NaN select inside took 6 % of a direct convolution).
fn store_outputs(dst: &mut [MaybeUninit<f32>], src: &[f32], bias: f32, relu: bool) {
    if relu {
        with_avx2!(for (o, &v) in dst.iter_mut().zip(src) {
            o.write(relu_f(v + bias));
        })
    } else {
        with_avx2!(for (o, &v) in dst.iter_mut().zip(src) {
            o.write(v + bias);
        })
    }
}

/// A task's outputs: image·group `ng`, output depth slice `od`, panels p0..p1 (output channels
/// p0·MR.. of the group, MR the tile's), `rows` their [oH, oW] planes in y.
struct Task<'a> {
    ng: usize,
    od: usize,
    p0: usize,
    p1: usize,
    rows: Vec<&'a mut [MaybeUninit<f32>]>,
}

/// y split into tasks: every (image, group, depth slice), its panels split further when there are
/// fewer slices than twice the threads.
fn tasks<'a>(y: &'a mut [MaybeUninit<f32>], g: &ConvGeom, mr: usize) -> Vec<Task<'a>> {
    let (cout_g, od_n) = (g.out_per_group(), g.output[0]);
    let (p_vol, plane_out) = (g.output_volume(), g.output[1] * g.output[2]);
    let n_panels = cout_g.div_ceil(mr);
    let slices = g.n * g.groups * od_n;
    let splits = (2 * rayon::current_num_threads())
        .div_ceil(slices)
        .clamp(1, n_panels);
    let per = n_panels.div_ceil(splits);
    let mut tasks = Vec::with_capacity(slices * splits);
    for (ng, block) in y.chunks_mut(cout_g * p_vol).enumerate() {
        let mut by_od: Vec<Vec<&mut [MaybeUninit<f32>]>> =
            (0..od_n).map(|_| Vec::with_capacity(cout_g)).collect();
        for row in block.chunks_mut(p_vol) {
            for (od, plane) in row.chunks_mut(plane_out).enumerate() {
                by_od[od].push(plane);
            }
        }
        for (od, mut planes) in by_od.into_iter().enumerate() {
            for p0 in (0..n_panels).step_by(per) {
                let p1 = (p0 + per).min(n_panels);
                let rest = planes.split_off((p1 * mr).min(cout_g) - p0 * mr);
                let rows = std::mem::replace(&mut planes, rest);
                tasks.push(Task {
                    ng,
                    od,
                    p0,
                    p1,
                    rows,
                });
            }
        }
    }
    tasks
}

/// A K chunk's steps: the input offset of each (channel, tap) from a position's grid index, and
/// their maximum (found once per chunk: found per panel call, it took 4 % of a convolution).
struct Steps {
    offs: Vec<usize>,
    max_off: usize,
}

impl Steps {
    fn new(offs: Vec<usize>) -> Self {
        let max_off = offs.iter().copied().max().unwrap_or(0);
        Steps { offs, max_off }
    }
}

/// One panel (MR output channels) over one K chunk for the first `positions` (whole tiles) of a block:
/// `acc` is [MR][ld] (set on the first chunk, accumulated after), `x` the chunk's first channel at the
/// block's first position, `steps.offs[k]` the input offset of step k, `wp` the panel's [k][MR]
/// weights of the chunk.
#[allow(clippy::too_many_arguments)]
fn run_panel(
    tile: Tile,
    wp: &[f32],
    x: &[f32],
    steps: &Steps,
    acc: &mut [f32],
    ld: usize,
    positions: usize,
    first: bool,
) {
    let (mr, nr) = (tile.mr, tile.nr);
    let (offs, max_off) = (&steps.offs[..], steps.max_off);
    assert!(
        wp.len() >= offs.len() * mr && positions <= ld && acc.len() >= (mr - 1) * ld + positions
    );
    assert!(positions.is_multiple_of(nr), "tiles of whole vectors");
    assert!(
        max_off + positions <= x.len(),
        "direct conv reads past its padded input"
    );
    for q0 in (0..positions).step_by(nr) {
        // SAFETY: `forward_with` checked the tile's ISA; the asserts above bound every load
        // (k < offs.len(), offsets + q0 + NR ≤ max_off + positions ≤ x.len()) and store
        // (r·ld + q0 + NR ≤ (MR − 1)·ld + positions ≤ acc.len()).
        unsafe {
            (tile.run)(
                wp.as_ptr(),
                x.as_ptr().add(q0),
                offs,
                acc.as_mut_ptr().add(q0),
                ld,
                first,
            )
        }
    }
}

/// acc[r·ld + j] (r < 6, j < 16) = (first ? 0 : acc) + Σ_k wp[6k + r]·x[offs[k] + j].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16(
    wp: *const f32,
    x: *const f32,
    offs: &[usize],
    acc: *mut f32,
    ld: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    let mut c = [_mm256_setzero_ps(); 2 * MR];
    if !first {
        for r in 0..MR {
            c[2 * r] = _mm256_loadu_ps(acc.add(r * ld));
            c[2 * r + 1] = _mm256_loadu_ps(acc.add(r * ld + 8));
        }
    }
    for (k, &off) in offs.iter().enumerate() {
        let x0 = _mm256_loadu_ps(x.add(off));
        let x1 = _mm256_loadu_ps(x.add(off + 8));
        let wk = wp.add(k * MR);
        for r in 0..MR {
            let wr = _mm256_broadcast_ss(&*wk.add(r));
            c[2 * r] = _mm256_fmadd_ps(wr, x0, c[2 * r]);
            c[2 * r + 1] = _mm256_fmadd_ps(wr, x1, c[2 * r + 1]);
        }
    }
    for r in 0..MR {
        _mm256_storeu_ps(acc.add(r * ld), c[2 * r]);
        _mm256_storeu_ps(acc.add(r * ld + 8), c[2 * r + 1]);
    }
}

/// acc[r·ld + j] (r < 8, j < 32) = (first ? 0 : acc) + Σ_k wp[8k + r]·x[offs[k] + j]: 16
/// accumulators (enough to cover two FMA ports' latency), 2 loads and 8 broadcasts per 16 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_8x32(
    wp: *const f32,
    x: *const f32,
    offs: &[usize],
    acc: *mut f32,
    ld: usize,
    first: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 8;
    let mut c = [_mm512_setzero_ps(); 2 * MR];
    if !first {
        for r in 0..MR {
            c[2 * r] = _mm512_loadu_ps(acc.add(r * ld));
            c[2 * r + 1] = _mm512_loadu_ps(acc.add(r * ld + 16));
        }
    }
    for (k, &off) in offs.iter().enumerate() {
        let x0 = _mm512_loadu_ps(x.add(off));
        let x1 = _mm512_loadu_ps(x.add(off + 16));
        let wk = wp.add(k * MR);
        for r in 0..MR {
            let wr = _mm512_set1_ps(*wk.add(r));
            c[2 * r] = _mm512_fmadd_ps(wr, x0, c[2 * r]);
            c[2 * r + 1] = _mm512_fmadd_ps(wr, x1, c[2 * r + 1]);
        }
    }
    for r in 0..MR {
        _mm512_storeu_ps(acc.add(r * ld), c[2 * r]);
        _mm512_storeu_ps(acc.add(r * ld + 16), c[2 * r + 1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_6x16(_: *const f32, _: *const f32, _: &[usize], _: *mut f32, _: usize, _: bool) {
    unreachable!("the direct convolution runs only where `supported_tiles` found AVX2 and FMA")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_8x32(_: *const f32, _: *const f32, _: &[usize], _: *mut f32, _: usize, _: bool) {
    unreachable!("the direct convolution runs only where `supported_tiles` found AVX-512F")
}

// --- weight gradient ------------------------------------------------------------------------------
//
// dW[co, (ci, tap)] = Σ over images and output positions p of dy[co, p] · x[ci, p + tap], where
// x[ci, p + tap] is, on the same padded stride-phase grid as the forward pass ([`Grid`]), one
// constant offset per (ci, tap) from the position's grid index. A tile keeps 32 output channels (two
// 512-bit vectors: dy packed as [positions][32]) × 8 (ci, tap) columns of accumulators, and walks the
// positions: per position 2 vector loads of dy and 8 broadcasts of x for 16 FMAs, the forward tile's
// ratio. Only the output positions are visited, so every product is one the GEMM path makes (the
// same non-finite pattern: padding reads zeros on both).

/// Output channels per weight-gradient tile: two 512-bit vectors of dy.
const WG_CO: usize = 32;
/// (input channel, tap) columns per weight-gradient tile: 8 × 2 accumulators.
const WG_COLS: usize = 8;
/// Positions per block: the block's packed dy (16 KiB at 128) stays in L1 while every column tile of
/// a task runs over it; each block's sums start from zero and are added to the task's accumulators
/// (blocked summation: rounding error grows with the block length plus the number of blocks, not
/// with all N·oD·oH·oW terms).
const WG_BLOCK_POSITIONS: usize = 128;

/// Input channels per group from which the direct weight gradient beats the GEMM path here (stride 1).
/// Measured on the zoo's layers (docs/PERFORMANCE.md, stop 40; 2 threads, AVX-512 Xeon, time direct /
/// GEMM alternated in one process, 4–6 sittings): 128 → 128, 256 → 256, 512 → 512 1×3×3 0.48–0.90;
/// 128 → 288, 256 → 576, 512 → 1152 0.69–1.06; 512 → 512 3×3×3 on 4×7² 0.75–1.06. With 64 or 96 it
/// lost until dy was packed by gathers ([`pack_run_32x64`]; stop 41): since then, alternated call by
/// call in one process, ECO-Lite's 3×3 layers on 16 × 28² 0.75–0.95, C2D-NL-R50's 64 → 64 1×3×3 on
/// 8 × 56² 0.77–0.79, R(2+1)D-18's 64 → 144 and ECO-Lite's 64 → 192 on 56² 0.89–1.07. The 3-channel
/// stems lost 0.94–1.93 (fewer columns per task re-use each block of dy less).
const MIN_WG_CHANNELS: usize = 64;

/// Columns (C_in/G × kernel volume) from which a strided layer (its input read through its stride
/// phases) takes the direct weight gradient. Direct / GEMM time, alternated call by call in one
/// process, two sittings (stop 41): ECO-Lite's 128 → 256 and 256 → 512 3×3×3 stride 2 (3456 and
/// 6912 columns) 0.69–0.83 and 0.77–0.96, C2D-NL-R50's 256 → 256 1×3×3 stride (1, 2, 2) (2304)
/// 0.95–0.98, R(2+1)D-18's 256 → 921 (2304) 0.90–1.00; with 1152 columns it lost: C2D-NL-R50's
/// 128 → 128 on 8 × 56² 1.08–1.22, R(2+1)D-18's 128 → 460 1.06–1.07 (and 64 → 230, 576 columns,
/// 0.98–1.33).
const MIN_STRIDED_WG_COLUMNS: usize = 2304;

/// Whether the direct kernel computes `g`'s weight gradient here: a CPU with AVX-512F and the
/// direct kernel not turned off, not depthwise, not 1×1×1 (the GEMM reads a pointwise input in
/// place), at least [`MIN_WG_CHANNELS`] input channels per group, and when strided at least
/// [`MIN_STRIDED_WG_COLUMNS`] columns.
pub(super) fn weight_grad_applies(g: &ConvGeom) -> bool {
    let strided_pays =
        g.stride == [1, 1, 1] || g.in_per_group() * g.kernel_volume() >= MIN_STRIDED_WG_COLUMNS;
    !g.is_depthwise()
        && g.kernel != [1, 1, 1]
        && g.in_per_group() >= MIN_WG_CHANNELS
        && strided_pays
        && enabled().is_some_and(|t| t.name == AVX512.name)
}

/// Whether this CPU can run the direct weight gradient (its tile is AVX-512's), whatever the shape.
pub(super) fn weight_grad_supported() -> bool {
    supported_tiles().iter().any(|t| t.name == AVX512.name)
}

/// dW ([C_out, C_in/G, kD, kH, kW]) of `g` from x and dy, on a CPU with AVX-512F.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    assert!(
        weight_grad_supported(),
        "the direct weight gradient runs on a CPU with AVX-512F"
    );
    let plan = WgradPlan::new(g);
    let padded: Vec<Vec<f32>> = x
        .chunks_exact(g.c_in * g.input_volume())
        .map(|xn| {
            padded_channels(
                xn,
                g.input,
                g.padding,
                g.stride,
                plan.grid.dims,
                plan.grid.slack,
            )
        })
        .collect();
    assert!(
        plan.max_read <= padded[0].len(),
        "direct weight gradient reads past its padded input"
    );
    let packed_dy = pack_dy(dy, g, plan.co_blocks);
    let (tasks, tiles_per_task) = wgrad_tasks(g.groups * plan.co_blocks, plan.col_tiles);
    let kdim = plan.cols_per_group;
    // written once, by the tasks below (no zero-fill first: 28 MB for ECO-Lite's 512 → 512 3×3×3)
    let mut dw: Vec<f32> = Vec::with_capacity(g.c_out * kdim);
    let out = OutPtr(dw.as_mut_ptr());
    tasks.into_par_iter().for_each(|(gc, t0)| {
        let tiles = t0..(t0 + tiles_per_task).min(plan.col_tiles);
        let acc = plan.run_task(g, &padded, &packed_dy, gc, tiles.clone());
        // acc is [column][32 channels]; dW is [channel][column]. Transposed by runs of 16 columns,
        // whose 2 KiB of acc stay in L1 while the 32 channels' rows take them: channel by channel
        // over the whole run, every read missed L1 (a third of the 512 → 512 layer's time, `perf`).
        let (gi, cb) = (gc / plan.co_blocks, gc % plan.co_blocks);
        let co0 = gi * g.out_per_group() + cb * WG_CO;
        let cols = tiles.start * WG_COLS..(tiles.end * WG_COLS).min(kdim);
        let channels = WG_CO.min(g.out_per_group() - cb * WG_CO);
        for (run, acc_run) in acc[..cols.len() * WG_CO].chunks(16 * WG_CO).enumerate() {
            let col0 = cols.start + run * 16;
            if acc_run.len() == 16 * WG_CO {
                // SAFETY: backward_weight checked AVX-512F; acc_run holds 16 columns of 32 channels
                // (channels ≤ 32), and dW's (co0 + i, col0..col0 + 16) for i < channels are in this
                // task's block of channels and run of columns, which no other task writes.
                unsafe {
                    store_columns_16(acc_run.as_ptr(), channels, out.at(co0 * kdim + col0), kdim)
                };
                continue;
            }
            for i in 0..channels {
                let row = out.at((co0 + i) * kdim + col0);
                for (c, column) in acc_run.chunks_exact(WG_CO).enumerate() {
                    // SAFETY: (co0 + i, col0 + c) lies in this task's block of channels and run of
                    // columns, which no other task writes; co0 + i < C_out, col0 + c < kdim.
                    unsafe { *row.add(c) = column[i] };
                }
            }
        }
    });
    // SAFETY: the tasks cover every (group, block of 32 output channels) and, for each, every column
    // tile (wgrad_tasks), and each wrote its channels' rows at its columns: all C_out·kdim elements.
    unsafe { dw.set_len(g.c_out * kdim) };
    dw
}

/// Tasks (group · block of 32 output channels, first column tile) and the column tiles per task:
/// each task sums over every image and position, so no partial sums cross tasks (the result does not
/// depend on the threads). At least 4 tasks per thread, and a whole number per thread where that
/// takes at most twice as many (9 equal tasks on 2 threads leave one thread 5 to the other's 4).
fn wgrad_tasks(channel_blocks: usize, col_tiles: usize) -> (Vec<(usize, usize)>, usize) {
    let threads = rayon::current_num_threads();
    let min_splits = (4 * threads).div_ceil(channel_blocks).clamp(1, col_tiles);
    let splits = (min_splits..=(2 * min_splits).min(col_tiles))
        .find(|s| (channel_blocks * s).is_multiple_of(threads))
        .unwrap_or(min_splits);
    let tiles_per_task = col_tiles.div_ceil(splits);
    let tasks = (0..channel_blocks)
        .flat_map(|gc| {
            (0..col_tiles)
                .step_by(tiles_per_task)
                .map(move |t0| (gc, t0))
        })
        .collect();
    (tasks, tiles_per_task)
}

/// What every task of one weight gradient shares: the grid, the columns' offsets and the output rows.
struct WgradPlan {
    grid: Grid,
    /// Blocks of 32 output channels per group.
    co_blocks: usize,
    /// (ci, tap) columns per group, C_in/G · kernel volume.
    cols_per_group: usize,
    /// Tiles of 8 columns per group.
    col_tiles: usize,
    /// Column (ci, tap) → its offset from a position's grid index; the last tile's missing columns
    /// repeat the last column (read, summed, never written).
    cols: Vec<usize>,
    /// Grid index of each output row (d, h)'s first position, in output order.
    rows: Vec<usize>,
    rows_per_block: usize,
    /// One past the farthest padded-input float a tile reads, from the start of the image.
    max_read: usize,
}

impl WgradPlan {
    fn new(g: &ConvGeom) -> Self {
        let grid = Grid::new(g, 1);
        let kvol = g.kernel_volume();
        let cols_per_group = g.in_per_group() * kvol;
        let col_tiles = cols_per_group.div_ceil(WG_COLS);
        let cols: Vec<usize> = (0..col_tiles * WG_COLS)
            .map(|c| c.min(cols_per_group - 1))
            .map(|c| c / kvol * grid.chan + grid.taps[c % kvol])
            .collect();
        let [od_n, oh_n, ow_n] = g.output;
        let [_, hq, wq] = grid.dims;
        let rows: Vec<usize> = (0..od_n * oh_n)
            .map(|r| (r / oh_n * hq + r % oh_n) * wq)
            .collect();
        let max_read = (g.groups - 1) * g.in_per_group() * grid.chan
            + cols.iter().max().unwrap_or(&0)
            + rows.last().unwrap_or(&0)
            + ow_n;
        WgradPlan {
            co_blocks: g.out_per_group().div_ceil(WG_CO),
            cols_per_group,
            col_tiles,
            cols,
            rows_per_block: (WG_BLOCK_POSITIONS / ow_n).clamp(1, rows.len().max(1)),
            rows,
            max_read,
            grid,
        }
    }

    /// One task's sums: for channel block `gc` (group · blocks + block) and column tiles `tiles`, over
    /// every image and block of positions, as [column][32 channels].
    fn run_task(
        &self,
        g: &ConvGeom,
        padded: &[Vec<f32>],
        packed_dy: &[f32],
        gc: usize,
        tiles: std::ops::Range<usize>,
    ) -> Vec<f32> {
        let (gi, ow_n, p_vol) = (gc / self.co_blocks, g.output[2], g.output_volume());
        let packed_positions = p_vol.div_ceil(PACK_POSITIONS) * PACK_POSITIONS;
        let mut acc = vec![0.0f32; tiles.len() * WG_COLS * WG_CO];
        for (n, xn) in padded.iter().enumerate() {
            let xg = &xn[gi * g.in_per_group() * self.grid.chan..];
            let dyb = &packed_dy[(n * g.groups * self.co_blocks + gc) * packed_positions * WG_CO..]
                [..p_vol * WG_CO];
            for (bi, block) in self.rows.chunks(self.rows_per_block).enumerate() {
                let dy_block =
                    &dyb[bi * self.rows_per_block * ow_n * WG_CO..][..block.len() * ow_n * WG_CO];
                for (tile_cols, tile_acc) in self.cols[tiles.start * WG_COLS..tiles.end * WG_COLS]
                    .chunks_exact(WG_COLS)
                    .zip(acc.chunks_exact_mut(WG_COLS * WG_CO))
                {
                    // SAFETY: `backward_weight` checked AVX-512F and that every x read (at most the
                    // group's offset + cols + row + oW = max_read) lies in the padded input;
                    // dy_block holds block.len()·oW positions of 32 floats; tile_acc 8·32 floats.
                    unsafe {
                        wgrad_tile_32x8(
                            dy_block.as_ptr(),
                            xg.as_ptr(),
                            tile_cols.try_into().expect("8 columns"),
                            block,
                            ow_n,
                            tile_acc.as_mut_ptr(),
                        )
                    }
                }
            }
        }
        acc
    }
}

/// Positions per run of the packed dy ([`pack_dy`]): a run's 8 KiB are written channel by channel
/// in L1, each channel's run read contiguously.
const PACK_POSITIONS: usize = 64;

/// dy as [image][group][block of 32 output channels][position][32], channels past C_out/G zero, the
/// positions of each block rounded up to whole runs of [`PACK_POSITIONS`] (zeros past oD·oH·oW), so
/// the runs are the parallel pieces.
fn pack_dy(dy: &[f32], g: &ConvGeom, co_blocks: usize) -> Vec<f32> {
    let (cout_g, p_vol) = (g.out_per_group(), g.output_volume());
    let runs = p_vol.div_ceil(PACK_POSITIONS);
    let len = g.n * g.groups * co_blocks * runs * PACK_POSITIONS * WG_CO;
    super::elementwise::par_build(len, PACK_POSITIONS * WG_CO, |piece, dst| {
        let (block, run) = (piece / runs, piece % runs);
        let (ng, cb) = (block / co_blocks, block % co_blocks);
        let channels = WG_CO.min(cout_g - cb * WG_CO);
        let p0 = run * PACK_POSITIONS;
        let valid = PACK_POSITIONS.min(p_vol - p0);
        let src = &dy[(ng * cout_g + cb * WG_CO) * p_vol + p0..];
        if channels == WG_CO && valid == PACK_POSITIONS && gathers_reach(p_vol) {
            // SAFETY: backward_weight checked AVX-512F; src holds 32 rows of p_vol floats from p0
            // (channels cb·32.. of the group, all in dy), each with PACK_POSITIONS valid positions,
            // and dst is one run of PACK_POSITIONS·32 floats.
            unsafe { pack_run_32x64(src.as_ptr(), p_vol, dst.as_mut_ptr().cast()) };
            return dst.len();
        }
        for i in 0..WG_CO {
            let column = dst[i..].iter_mut().step_by(WG_CO);
            let src = if i < channels {
                &src[i * p_vol..][..valid]
            } else {
                &[][..]
            };
            for (k, d) in column.enumerate() {
                d.write(src.get(k).copied().unwrap_or(0.0));
            }
        }
        dst.len()
    })
}

/// Whether [`pack_run_32x64`]'s gathers reach 16 rows of `stride` floats (32-bit byte offsets).
fn gathers_reach(stride: usize) -> bool {
    16 * stride * std::mem::size_of::<f32>() <= i32::MAX as usize
}

/// A gather's 16 element offsets 0, step, …, 15·step (32-bit: [`gathers_reach`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gather_offsets(step: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm512_mullo_epi32(lanes, _mm512_set1_epi32(step as i32))
}

/// dst[k·32 + i] = src[i·stride + k] for positions k < [`PACK_POSITIONS`] and channels i < 32: one
/// full run of [`pack_dy`], 16 channels of a position per gather (element by element, the packing
/// took 10 % of a 64-channel weight gradient).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_run_32x64(src: *const f32, stride: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    let offsets = gather_offsets(stride);
    let upper = src.add(16 * stride);
    for k in 0..PACK_POSITIONS {
        let lo = _mm512_i32gather_ps::<4>(offsets, src.add(k));
        let hi = _mm512_i32gather_ps::<4>(offsets, upper.add(k));
        _mm512_storeu_ps(dst.add(k * WG_CO), lo);
        _mm512_storeu_ps(dst.add(k * WG_CO + 16), hi);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn pack_run_32x64(_: *const f32, _: usize, _: *mut f32) {
    unreachable!("the direct weight gradient runs only where `supported_tiles` found AVX-512F")
}

/// dst[i·ld + c] = src[32·c + i] for c < 16, i < `channels`: 16 columns of a task's [column][32]
/// sums into dW's rows, a gather per channel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_columns_16(src: *const f32, channels: usize, dst: *mut f32, ld: usize) {
    use std::arch::x86_64::*;
    let offsets = gather_offsets(WG_CO);
    for i in 0..channels {
        _mm512_storeu_ps(
            dst.add(i * ld),
            _mm512_i32gather_ps::<4>(offsets, src.add(i)),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn store_columns_16(_: *const f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("the direct weight gradient runs only where `supported_tiles` found AVX-512F")
}

/// acc[j·32 + i] += Σ over the positions w < ow of each row r of `rows` (p counting them in order)
/// of dy[p·32 + i] · x[cols[j] + r + w], for j < 8, i < 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgrad_tile_32x8(
    dy: *const f32,
    x: *const f32,
    cols: &[usize; WG_COLS],
    rows: &[usize],
    ow: usize,
    acc: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut c = [_mm512_setzero_ps(); 2 * WG_COLS];
    let mut dyp = dy;
    for &row in rows {
        let xr: [*const f32; WG_COLS] = std::array::from_fn(|j| x.add(cols[j] + row));
        for w in 0..ow {
            let d0 = _mm512_loadu_ps(dyp);
            let d1 = _mm512_loadu_ps(dyp.add(16));
            dyp = dyp.add(WG_CO);
            for j in 0..WG_COLS {
                let xb = _mm512_set1_ps(*xr[j].add(w));
                c[2 * j] = _mm512_fmadd_ps(xb, d0, c[2 * j]);
                c[2 * j + 1] = _mm512_fmadd_ps(xb, d1, c[2 * j + 1]);
            }
        }
    }
    for j in 0..WG_COLS {
        let a = acc.add(j * WG_CO);
        _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), c[2 * j]));
        _mm512_storeu_ps(
            a.add(16),
            _mm512_add_ps(_mm512_loadu_ps(a.add(16)), c[2 * j + 1]),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn wgrad_tile_32x8(
    _: *const f32,
    _: *const f32,
    _: &[usize; WG_COLS],
    _: &[usize],
    _: usize,
    _: *mut f32,
) {
    unreachable!("the direct weight gradient runs only where `supported_tiles` found AVX-512F")
}
