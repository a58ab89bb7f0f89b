//! Convolution kernels (conv2d is conv3d with a depth of one).
//!
//! General path: vol2col into a per-task column buffer covering a chunk of output rows (whole rows of
//! oW positions, sized to a few MB so the full column matrix is never built), then a GEMM with the
//! group's weights, a plain [C_out/G, K] matrix with K = ((ci·kD + a)·kH + b)·kW + c. Pointwise
//! convolutions (1×1×1, stride 1, no padding) read the input plane as the column matrix directly.
//! Depthwise convolutions (groups == C_in) use a direct kernel instead: K is only the kernel volume,
//! too small for GEMM to pay off. The data gradient of a stride-1 convolution is the forward
//! convolution of dy with the flipped, channel-swapped kernel ([`transposed_geom`]) where that forward
//! takes Winograd or the direct kernel, or the kernel is 3-D ([`flipped_forward_pays`]); otherwise, and
//! at other strides, GEMM columns are scattered back with col2vol. Stride-1 forward passes (so also
//! those data gradients) of 3×3×3 and 3×3 kernels take Winograd F(2, 3) ([`conv_winograd`]) where the
//! shape pays, and otherwise the direct kernel of [`conv_direct`] where the CPU has AVX2 and FMA or
//! AVX-512 and the shape suits it (strided ones too where they have at most 160 products per
//! output: the 2-D stems); their weight gradients take Winograd too, others dW = dy·colᵀ over column
//! chunks. 3×1×1 kernels take Winograd F(2, 3) along depth ([`conv_winograd_depth`]) in all three
//! passes.

use rayon::prelude::*;

use super::conv_direct;
use super::conv_winograd;
use super::conv_winograd_depth;
use super::elementwise::relu as relu_f;
use super::layout::permute;
use super::linalg::{dot, gemm, gemm_to_ptr, Mat};
use super::pool::split_phases;
use crate::backend::ConvGeom;

/// How output rows are chunked per task: a column buffer of about `col_floats`, but at least
/// `min_positions` output positions (GEMM slows down well below a few hundred columns).
#[derive(Debug, Clone, Copy)]
struct Chunking {
    col_floats: usize,
    min_positions: usize,
    /// Whether a forward pass and a weight gradient may take the direct kernels ([`conv_direct`]).
    direct: bool,
    /// Whether a stride-1 forward may take Winograd F(2, 3) ([`conv_winograd`]) instead.
    winograd: bool,
}

/// 4 MB column buffers.
const CHUNKING: Chunking = Chunking {
    col_floats: 1 << 20,
    min_positions: 256,
    direct: true,
    winograd: true,
};

/// y, with ReLU applied as each output is written when `relu` (the fused conv+relu epilogue).
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Vec<f32> {
    forward_with(x, w, bias, g, CHUNKING, relu)
}

/// dx, shape of x.
pub(super) fn backward_data(dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    backward_data_with(dy, w, g, CHUNKING)
}

/// dw, shape of w.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    backward_weight_with(x, dy, g, CHUNKING)
}

fn is_pointwise(g: &ConvGeom) -> bool {
    g.kernel == [1, 1, 1] && g.stride == [1, 1, 1] && g.padding == [0, 0, 0]
}

/// Output indices o in [lo, hi) whose tap t reads inside the input: 0 ≤ o·s + t·d − p < n.
fn tap_range(out: usize, n: usize, s: usize, p: usize, d: usize, t: usize) -> (usize, usize) {
    let off = (t * d) as isize - p as isize;
    let lo = if off >= 0 {
        0
    } else {
        (-off as usize).div_ceil(s)
    };
    let top = n as isize - 1 - off;
    let hi = if top < 0 {
        0
    } else {
        (top as usize / s + 1).min(out)
    };
    (lo.min(hi), hi)
}

/// Per dim and per tap, the valid output range (see [`tap_range`]).
struct Taps([Vec<(usize, usize)>; 3]);

impl Taps {
    fn new(g: &ConvGeom) -> Self {
        Taps(std::array::from_fn(|i| {
            (0..g.kernel[i])
                .map(|t| {
                    tap_range(
                        g.output[i],
                        g.input[i],
                        g.stride[i],
                        g.padding[i],
                        g.dilation[i],
                        t,
                    )
                })
                .collect()
        }))
    }
    /// The input index along `dim` read by output `o` through tap `t`, if inside the input.
    #[inline]
    fn input(&self, g: &ConvGeom, dim: usize, o: usize, t: usize) -> Option<usize> {
        let (lo, hi) = self.0[dim][t];
        (lo <= o && o < hi).then(|| o * g.stride[dim] + t * g.dilation[dim] - g.padding[dim])
    }
    /// Start of the input run read by outputs lo.. of tap `c` along W (only for a non-empty range).
    #[inline]
    fn w_start(&self, g: &ConvGeom, c: usize) -> usize {
        self.0[2][c].0 * g.stride[2] + c * g.dilation[2] - g.padding[2]
    }
}

/// Output rows (od·oH + oh) in chunks sized by `chunking`, split further so that
/// `tasks_per_chunk`·chunks covers the thread pool when possible.
fn row_chunks(
    g: &ConvGeom,
    kdim: usize,
    chunking: Chunking,
    tasks_per_chunk: usize,
) -> Vec<(usize, usize)> {
    let rows = g.output[0] * g.output[1];
    let ow = g.output[2];
    let by_budget =
        (chunking.col_floats / (kdim * ow).max(1)).max(chunking.min_positions.div_ceil(ow));
    let want = rayon::current_num_threads().div_ceil(tasks_per_chunk.max(1));
    let per = by_budget.min(rows.div_ceil(want)).clamp(1, rows);
    (0..rows)
        .step_by(per)
        .map(|r0| (r0, (r0 + per).min(rows)))
        .collect()
}

/// Column rows of one input channel (`kvol` rows of (r1 − r0)·oW positions) from its [D, H, W] plane.
fn vol2col_channel(xc: &[f32], dst: &mut [f32], g: &ConvGeom, taps: &Taps, r0: usize, r1: usize) {
    if g.stride[2] > 1 {
        return vol2col_channel_strided(xc, dst, g, taps, r0, r1);
    }
    let [kd, kh, kw] = g.kernel;
    let [_, oh_n, ow_n] = g.output;
    let [_, ih_n, iw_n] = g.input;
    let pc = (r1 - r0) * ow_n;
    for (t, row) in dst.chunks_exact_mut(pc).take(kd * kh * kw).enumerate() {
        let (a, b, c) = (t / (kh * kw), t / kw % kh, t % kw);
        let (lo, hi) = taps.0[2][c];
        let w0 = if lo < hi { taps.w_start(g, c) } else { 0 };
        for (r, seg) in (r0..r1).zip(row.chunks_exact_mut(ow_n)) {
            let (od, oh) = (r / oh_n, r % oh_n);
            let (Some(id), Some(ih)) = (taps.input(g, 0, od, a), taps.input(g, 1, oh, b)) else {
                seg.fill(0.0);
                continue;
            };
            let src = &xc[(id * ih_n + ih) * iw_n..][..iw_n];
            seg[..lo].fill(0.0);
            seg[hi..].fill(0.0);
            seg[lo..hi].copy_from_slice(&src[w0..w0 + hi - lo]);
        }
    }
}

/// [`vol2col_channel`] with a stride along W: each input row is split into its phases (elements
/// i ≡ r mod s) once per (kernel row, output row), and the kW taps that read it copy contiguous runs
/// of one phase — instead of each tap gathering every s-th element (the stems' 7×7 stride-2 columns:
/// 31 % of their time, `perf`, docs/PERFORMANCE.md).
fn vol2col_channel_strided(
    xc: &[f32],
    dst: &mut [f32],
    g: &ConvGeom,
    taps: &Taps,
    r0: usize,
    r1: usize,
) {
    let [kd, kh, kw] = g.kernel;
    let [_, oh_n, ow_n] = g.output;
    let [_, ih_n, iw_n] = g.input;
    let sw = g.stride[2];
    let pc = (r1 - r0) * ow_n;
    let phase_len = iw_n.div_ceil(sw);
    let mut phases = Vec::new();
    for (a, b) in (0..kd).flat_map(|a| (0..kh).map(move |b| (a, b))) {
        for (i, r) in (r0..r1).enumerate() {
            let (od, oh) = (r / oh_n, r % oh_n);
            let source = taps.input(g, 0, od, a).zip(taps.input(g, 1, oh, b));
            if let Some((id, ih)) = source {
                split_phases(
                    &xc[(id * ih_n + ih) * iw_n..][..iw_n],
                    sw,
                    phase_len,
                    &mut phases,
                );
            }
            for c in 0..kw {
                let seg = &mut dst[((a * kh + b) * kw + c) * pc + i * ow_n..][..ow_n];
                let (lo, hi) = taps.0[2][c];
                if source.is_none() || lo >= hi {
                    seg.fill(0.0);
                    continue;
                }
                let w0 = taps.w_start(g, c);
                let run = &phases[w0 % sw * phase_len + w0 / sw..][..hi - lo];
                seg[..lo].fill(0.0);
                seg[hi..].fill(0.0);
                seg[lo..hi].copy_from_slice(run);
            }
        }
    }
}

/// Adjoint of [`vol2col_channel`]: scatter-add column rows into one channel's [D, H, W] plane.
fn col2vol_channel(src: &[f32], dxc: &mut [f32], g: &ConvGeom, taps: &Taps, r0: usize, r1: usize) {
    let [kd, kh, kw] = g.kernel;
    let [_, oh_n, ow_n] = g.output;
    let [_, ih_n, iw_n] = g.input;
    let sw = g.stride[2];
    let pc = (r1 - r0) * ow_n;
    for (t, row) in src.chunks_exact(pc).take(kd * kh * kw).enumerate() {
        let (a, b, c) = (t / (kh * kw), t / kw % kh, t % kw);
        let (lo, hi) = taps.0[2][c];
        if lo >= hi {
            continue;
        }
        let w0 = taps.w_start(g, c);
        for (r, seg) in (r0..r1).zip(row.chunks_exact(ow_n)) {
            let (od, oh) = (r / oh_n, r % oh_n);
            let (Some(id), Some(ih)) = (taps.input(g, 0, od, a), taps.input(g, 1, oh, b)) else {
                continue;
            };
            let dst = &mut dxc[(id * ih_n + ih) * iw_n..][..iw_n];
            if sw == 1 {
                for (d, s) in dst[w0..w0 + hi - lo].iter_mut().zip(&seg[lo..hi]) {
                    *d += s;
                }
            } else {
                // every sW-th element; chunks, not step_by, which took a third longer (`perf`:
                // col2vol 9.8 → 6.4 % of R(2+1)D-18's 64 → 230 stride-(1, 2, 2) data gradient)
                for (d, s) in dst[w0..].chunks_mut(sw).zip(&seg[lo..hi]) {
                    d[0] += s;
                }
            }
        }
    }
}

/// The column matrix [cin_g·kvol, pc] of rows r0..r1 for a group's input `xg` [cin_g, D, H, W].
fn fill_col(
    xg: &[f32],
    col: &mut Vec<f32>,
    g: &ConvGeom,
    taps: &Taps,
    r0: usize,
    r1: usize,
    parallel: bool,
) {
    let (in_vol, kvol) = (g.input_volume(), g.kernel_volume());
    let rows = kvol * (r1 - r0) * g.output[2];
    col.resize(g.in_per_group() * rows, 0.0);
    let one = |(xc, dst): (&[f32], &mut [f32])| vol2col_channel(xc, dst, g, taps, r0, r1);
    if parallel {
        xg.par_chunks(in_vol)
            .zip(col.par_chunks_mut(rows))
            .for_each(one);
    } else {
        xg.chunks(in_vol).zip(col.chunks_mut(rows)).for_each(one);
    }
}

fn forward_with(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    chunking: Chunking,
    relu: bool,
) -> Vec<f32> {
    if g.is_depthwise() {
        return depthwise_forward(x, w, bias, g, relu);
    }
    if chunking.winograd && conv_winograd::applies(g) {
        // None where a weight or an output is not finite: the paths below give PyTorch's results.
        if let Some(y) = conv_winograd::forward(x, w, bias, g, relu) {
            return y;
        }
    }
    if chunking.winograd && conv_winograd_depth::applies(g) {
        if let Some(y) = conv_winograd_depth::forward(x, w, bias, g, relu) {
            return y;
        }
    }
    if chunking.direct && conv_direct::applies(g) {
        return conv_direct::forward(x, w, bias, g, relu);
    }
    let (p_vol, in_vol, ow_n) = (g.output_volume(), g.input_volume(), g.output[2]);
    let (cin_g, cout_g, groups) = (g.in_per_group(), g.out_per_group(), g.groups);
    let kdim = cin_g * g.kernel_volume();
    let pointwise = is_pointwise(g);
    let chunks = row_chunks(g, kdim, chunking, g.n * groups);
    let len = g.n * g.c_out * p_vol;
    // y is written once, by the GEMMs straight into their rows (no zero-fill, no copy from a buffer).
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = OutPtr(y.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    // Tasks: (n·group, chunk of output rows), each owning that chunk's span of every output channel
    // of its (n, group) block.
    let tasks: Vec<(usize, usize, usize)> = (0..g.n * groups)
        .flat_map(|ng| chunks.iter().map(move |&(r0, r1)| (ng, r0, r1)))
        .collect();
    let few = tasks.len() < rayon::current_num_threads();
    let taps = Taps::new(g);
    tasks
        .into_par_iter()
        .for_each_init(Vec::new, |col, (ng, r0, r1)| {
            let gi = ng % groups;
            let xg = &x[ng / groups * g.c_in * in_vol + gi * cin_g * in_vol..][..cin_g * in_vol];
            let wg = Mat::new(&w[gi * cout_g * kdim..][..cout_g * kdim], kdim, false);
            let (p0, pc) = (r0 * ow_n, (r1 - r0) * ow_n);
            let b = if pointwise {
                Mat {
                    data: &xg[p0..],
                    rs: p_vol,
                    cs: 1,
                }
            } else {
                fill_col(xg, col, g, &taps, r0, r1, few);
                Mat::new(&col[..kdim * pc], pc, false)
            };
            let at = ng * cout_g * p_vol + p0;
            // SAFETY: this task's rows (each channel's positions p0..p0 + pc of block ng) lie inside y's
            // capacity and no other task's.
            unsafe { gemm_to_ptr(cout_g, pc, kdim, wg, b, out.at(at), p_vol, few) };
            if bias.is_some() || relu {
                for j in 0..cout_g {
                    // SAFETY: as above; the row was just written by the GEMM.
                    let row = unsafe { std::slice::from_raw_parts_mut(out.at(at + j * p_vol), pc) };
                    let bv = bias.map_or(0.0, |b| b[gi * cout_g + j]);
                    if relu {
                        row.iter_mut().for_each(|d| *d = relu_f(*d + bv));
                    } else {
                        row.iter_mut().for_each(|d| *d += bv);
                    }
                }
            }
        });
    // SAFETY: the tasks covered every (n·group, output channel, position) once.
    unsafe { y.set_len(len) };
    y
}

/// The base of an output that parallel tasks write in disjoint parts (see each use).
#[derive(Clone, Copy)]
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: only a pointer; the tasks that share it write disjoint elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    pub(super) fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The next `len` floats of every row (each row keeps what follows): one task's disjoint pieces of
/// every output channel, for forward passes whose tasks own consecutive spans of y's channel rows.
pub(super) fn take_pieces<'a, T>(rows: &mut [&'a mut [T]], len: usize) -> Vec<&'a mut [T]> {
    rows.iter_mut()
        .map(|row| {
            let (head, tail) = std::mem::take(row).split_at_mut(len);
            *row = tail;
            head
        })
        .collect()
}

/// x's channels (each `input` values) zero-padded, each split into its `stride` phases — phase
/// (rd, rh, rw), numbered (rd·sH + rh)·sW + rw, holds the padded positions (sD·i + rd, sH·j + rh,
/// sW·k + rw) at (i, j, k) of a box of extents `dims` — one channel after another, and `slack` zeros
/// after the last. With stride 1 that is one box per channel, the padded input itself (the Winograd
/// paths and the direct kernel); with stride s the direct kernel reads each tap's inputs as one
/// contiguous run of a phase. Built in parallel, one task per phase of a channel, each element
/// written once straight into the new vector (on one thread, the zero-fill and the copy of a
/// 144-channel input on 16 × 56² took ~6 ms of a 45 ms convolution; a stem's 3 channels are 12 tasks
/// at stride 2).
pub(super) fn padded_channels(
    x: &[f32],
    input: [usize; 3],
    padding: [usize; 3],
    stride: [usize; 3],
    dims: [usize; 3],
    slack: usize,
) -> Vec<f32> {
    let (in_len, phase_len): (usize, usize) = (input.iter().product(), dims.iter().product());
    let phases: usize = stride.iter().product();
    let channels = x.len() / in_len.max(1);
    let layout = Phases {
        input,
        padding,
        stride,
        dims,
    };
    super::elementwise::par_build(
        channels * phases * phase_len + slack,
        phase_len.max(1),
        |piece, out| {
            let (c, phase) = (piece / phases, piece % phases);
            if c < channels {
                layout.write_phase(&x[c * in_len..][..in_len], phase, 0, out);
            } else {
                out.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
            }
            out.len()
        },
    )
}

/// The part of [`padded_channels`]' layout (with `g`'s padding and stride) that one output depth
/// slice reads: per channel of `x` and phase, the `dims[0]` phase depth rows from `d0` on (zeros past
/// the padded input), then `slack` zeros, into `out` (reused between calls). The direct convolution's
/// tasks stage their slice's input this way, into a buffer that stays in cache: one padded copy of
/// the whole input, written to memory and read back, took 11 % of R(2+1)D-18's 144 → 64 1×3×3 data
/// gradient on 16 × 56² (docs/PERFORMANCE.md, stop 41).
pub(super) fn padded_window(
    x: &[f32],
    g: &ConvGeom,
    dims: [usize; 3],
    d0: usize,
    slack: usize,
    out: &mut Vec<f32>,
) {
    let in_len = g.input_volume();
    let (phases, phase_len): (usize, usize) = (g.stride.iter().product(), dims.iter().product());
    let layout = Phases {
        input: g.input,
        padding: g.padding,
        stride: g.stride,
        dims,
    };
    let body = x.len() / in_len * phases * phase_len;
    out.clear();
    out.reserve(body + slack);
    let spare = &mut out.spare_capacity_mut()[..body + slack];
    for (piece, dst) in spare[..body].chunks_exact_mut(phase_len).enumerate() {
        let (c, phase) = (piece / phases, piece % phases);
        layout.write_phase(&x[c * in_len..][..in_len], phase, d0, dst);
    }
    for v in &mut spare[body..] {
        v.write(0.0);
    }
    // SAFETY: write_phase wrote every element of each channel's phases, the loop above the slack.
    unsafe { out.set_len(body + slack) };
}

/// How [`padded_channels`] lays out one channel.
struct Phases {
    input: [usize; 3],
    padding: [usize; 3],
    stride: [usize; 3],
    dims: [usize; 3],
}

impl Phases {
    /// Phase `phase` of one channel (`src`, [D, H, W] = `input`) from its depth row `d0` on, every
    /// element of `out` written: the input where the padded position is inside it, else 0.
    fn write_phase(
        &self,
        src: &[f32],
        phase: usize,
        d0: usize,
        out: &mut [std::mem::MaybeUninit<f32>],
    ) {
        let [id, ih, iw] = self.input;
        let [dq, hq, wq] = self.dims;
        let [sd, sh, sw] = self.stride;
        let [pad_d, pad_h, pad_w] = self.padding;
        let (rd, rh, rw) = (phase / (sh * sw), phase / sw % sh, phase % sw);
        // the input row of padded row i (depth) or j (height), if any
        let inside = |i: usize, s: usize, r: usize, pad: usize, n: usize| {
            (s * i + r).checked_sub(pad).filter(|&v| v < n)
        };
        // the phase's columns k0..k1 fall inside the input row: sW·k + rw − pad_w in 0..W
        let k0 = pad_w.saturating_sub(rw).div_ceil(sw).min(wq);
        let k1 = (pad_w + iw).saturating_sub(rw).div_ceil(sw).clamp(k0, wq);
        for (row_index, row) in out.chunks_exact_mut(wq).enumerate().take(dq * hq) {
            let (i, j) = (d0 + row_index / hq, row_index % hq);
            let source = inside(i, sd, rd, pad_d, id)
                .zip(inside(j, sh, rh, pad_h, ih))
                .map(|(z, r)| &src[(z * ih + r) * iw..][..iw]);
            let Some(line) = source else {
                row.iter_mut().for_each(|v| {
                    v.write(0.0);
                });
                continue;
            };
            row[..k0].iter_mut().for_each(|v| {
                v.write(0.0);
            });
            if k1 > k0 {
                let first = sw * k0 + rw - pad_w;
                if sw == 1 {
                    // one copy of the row (step_by(1) is not vectorised: 11 % of a direct
                    // convolution's time was this loop)
                    for (v, &s) in row[k0..k1].iter_mut().zip(&line[first..]) {
                        v.write(s);
                    }
                } else {
                    for (v, s) in row[k0..k1].iter_mut().zip(line[first..].chunks(sw)) {
                        v.write(s[0]);
                    }
                }
            }
            row[k1..].iter_mut().for_each(|v| {
                v.write(0.0);
            });
        }
    }
}

fn backward_data_with(dy: &[f32], w: &[f32], g: &ConvGeom, chunking: Chunking) -> Vec<f32> {
    if g.is_depthwise() {
        return depthwise_backward_data(dy, w, g);
    }
    if let Some(gt) = transposed_geom(g) {
        if flipped_forward_pays(g, &gt, chunking) {
            if let Some(wt) = flipped_transposed(w, g) {
                return forward_with(dy, &wt, None, &gt, chunking, false);
            }
        }
    }
    backward_data_col2vol(dy, w, g, chunking)
}

/// Whether the stride-1 data gradient of `g` runs faster as the forward convolution `gt` of
/// [`transposed_geom`] than by col2vol. Yes where `gt` takes Winograd or the direct kernel (no column
/// matrix at all) or the kernel has more than 9 taps (a 3-D kernel's col2vol adds 27 columns into
/// every dx element). Where a 1×3×3, 3×3 or 3×1×1 `gt` would take the GEMM path both are one GEMM
/// of the same products and col2vol skips the flipped copy of the weights: R(2+1)D-18's
/// 512 → 1152 1×3×3 on 2×7×7, 8.2 → 6.9 ms, its 256 → 576 on 4×14×14 12.2 → 8.6 ms, its
/// 1152 → 512 3×1×1 on 2×7×7 3.3 → 1.9 ms; with the direct kernel off, 64 → 144 1×3×3 on 16×56×56
/// 50 → 40 ms, and ECO-Lite's 128 → 128 3×3×3 on 16×28×28 50 → 59 ms the other way
/// (docs/PERFORMANCE.md, stop 37).
fn flipped_forward_pays(g: &ConvGeom, gt: &ConvGeom, chunking: Chunking) -> bool {
    let fast_path = (chunking.winograd
        && (conv_winograd::applies(gt) || conv_winograd_depth::applies(gt)))
        || (chunking.direct && conv_direct::applies(gt));
    fast_path || g.kernel_volume() > 9
}

/// dx as a GEMM (Wᵀ·dy) per column chunk, scattered into dx by col2vol: every stride, every weight.
fn backward_data_col2vol(dy: &[f32], w: &[f32], g: &ConvGeom, chunking: Chunking) -> Vec<f32> {
    let (p_vol, in_vol, ow_n) = (g.output_volume(), g.input_volume(), g.output[2]);
    let (cin_g, cout_g, kvol) = (g.in_per_group(), g.out_per_group(), g.kernel_volume());
    let kdim = cin_g * kvol;
    let chunks = row_chunks(g, kdim, chunking, usize::MAX);
    let mut dx = super::elementwise::par_zeros(g.n * g.c_in * in_vol);
    // (n, group) blocks of dx are contiguous and independent; chunks within one scatter into the
    // same block, so they run in order. With fewer blocks than threads, GEMM and col2vol go parallel.
    let few = g.n * g.groups < rayon::current_num_threads();
    let taps = Taps::new(g);
    dx.par_chunks_mut(cin_g * in_vol)
        .enumerate()
        .for_each(|(ng, dxg)| {
            let wt = Mat::new(
                &w[ng % g.groups * cout_g * kdim..][..cout_g * kdim],
                kdim,
                true,
            );
            let dyg = &dy[ng * cout_g * p_vol..][..cout_g * p_vol];
            if is_pointwise(g) {
                gemm(
                    cin_g,
                    p_vol,
                    cout_g,
                    wt,
                    Mat::new(dyg, p_vol, false),
                    dxg,
                    p_vol,
                    false,
                    few,
                );
                return;
            }
            let mut dcol = Vec::new();
            for &(r0, r1) in &chunks {
                let (p0, pc) = (r0 * ow_n, (r1 - r0) * ow_n);
                dcol.resize(kdim * pc, 0.0);
                let b = Mat {
                    data: &dyg[p0..],
                    rs: p_vol,
                    cs: 1,
                };
                gemm(kdim, pc, cout_g, wt, b, &mut dcol, pc, false, few);
                let one =
                    |(dxc, src): (&mut [f32], &[f32])| col2vol_channel(src, dxc, g, &taps, r0, r1);
                if few {
                    dxg.par_chunks_mut(in_vol)
                        .zip(dcol.par_chunks(kvol * pc))
                        .for_each(one);
                } else {
                    dxg.chunks_mut(in_vol)
                        .zip(dcol.chunks(kvol * pc))
                        .for_each(one);
                }
            }
        });
    dx
}

/// With stride 1, dx is a convolution of dy with the kernel flipped in every dimension and its input and
/// output channels swapped, padded by d·(k − 1) − p: every (output, tap) pair of the forward convolution
/// appears exactly once, so the forward path (one GEMM per column chunk, no scatter) computes the gradient
/// that the GEMM + col2vol path computes by scattering, in about two thirds of its time on ECO-Lite's 3-D
/// layers (docs/PERFORMANCE.md). Its geometry, when that padding is not negative and the convolution is
/// not pointwise (whose dgrad is one GEMM already). The caller keeps col2vol for non-finite weights: the
/// flipped convolution's padding taps would add w·0 = NaN to dx where the forward convolution has no
/// output, which PyTorch's dgrad does not (docs/NONFINITE.md).
fn transposed_geom(g: &ConvGeom) -> Option<ConvGeom> {
    if g.stride != [1, 1, 1] || is_pointwise(g) {
        return None;
    }
    let mut padding = [0; 3];
    for (d, p) in padding.iter_mut().enumerate() {
        *p = (g.dilation[d] * (g.kernel[d] - 1)).checked_sub(g.padding[d])?;
    }
    Some(ConvGeom {
        c_in: g.c_out,
        c_out: g.c_in,
        input: g.output,
        output: g.input,
        padding,
        ..g.clone()
    })
}

/// w [C_out, C_in/G, kD, kH, kW] → [C_in, C_out/G, kD, kH, kW], each kernel reversed in every dimension:
/// the weights of [`transposed_geom`]'s convolution; None where a weight is not finite. In parallel
/// over the new rows, straight into the new vector: one read and one write of the weights (ECO-Lite's
/// 512 → 512 3×3×3 kernel is 28 MB, and copying it on one thread after a zero-fill and a finiteness
/// scan took half as long as the convolution itself, docs/PERFORMANCE.md).
fn flipped_transposed(w: &[f32], g: &ConvGeom) -> Option<Vec<f32>> {
    let (cin_g, cout_g, kvol) = (g.in_per_group(), g.out_per_group(), g.kernel_volume());
    // whether every weight is finite, noted during the copy (a separate scan was 4 % of ECO-Lite's
    // 512 → 512 data gradient)
    let finite = std::sync::atomic::AtomicBool::new(true);
    // Pieces of FLIP_ROWS new rows, walked output channel by output channel: for each, the pieces'
    // kernels are one contiguous run of w. Row by row (every output channel's kernel for one input
    // channel, C_in/G·kvol floats apart: 55 KB for ECO-Lite's 512 → 512 3×3×3) each read touched a
    // new page, and the copy took 18 % of that layer's data gradient (14 % after; 21 % on a Zen 5,
    // where asking for the run FLIP_AHEAD channels ahead and the finiteness noted here took that
    // data gradient from 10.7–11.0 ms to 9.3–9.4; `perf`).
    let wt = super::elementwise::par_build(w.len(), FLIP_ROWS * cout_g * kvol, |piece, out| {
        let row0 = piece * FLIP_ROWS;
        let rows = out.len() / (cout_g * kvol);
        let one_group = row0 / cin_g == (row0 + rows - 1) / cin_g;
        let mut all_finite = true;
        for co_g in 0..cout_g {
            if one_group && co_g + FLIP_AHEAD < cout_g {
                let (gi, ci) = (row0 / cin_g, row0 % cin_g);
                let first = ((gi * cout_g + co_g + FLIP_AHEAD) * cin_g + ci) * kvol;
                super::conv_winograd::prefetch(&w[first..first + rows * kvol]);
            }
            for r in 0..rows {
                // new row (gi, ci) holds the kernels w[gi·cout_g + co_g, ci], reversed
                let (gi, ci) = ((row0 + r) / cin_g, (row0 + r) % cin_g);
                let src = &w[((gi * cout_g + co_g) * cin_g + ci) * kvol..][..kvol];
                let dst = &mut out[(r * cout_g + co_g) * kvol..][..kvol];
                for (d, &v) in dst.iter_mut().zip(src.iter().rev()) {
                    d.write(v);
                    all_finite &= v.is_finite();
                }
            }
        }
        if !all_finite {
            finite.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        out.len()
    });
    finite.into_inner().then_some(wt)
}

/// New rows per piece of [`flipped_transposed`].
const FLIP_ROWS: usize = 16;

/// Output channels ahead whose kernels [`flipped_transposed`] asks the cache for.
const FLIP_AHEAD: usize = 4;

fn backward_weight_with(x: &[f32], dy: &[f32], g: &ConvGeom, chunking: Chunking) -> Vec<f32> {
    if g.is_depthwise() {
        return depthwise_backward_weight(x, dy, g);
    }
    // The Winograd paths answer None where an input was not finite: the GEMM path gives PyTorch's
    // non-finite pattern.
    if chunking.winograd && conv_winograd_depth::applies(g) {
        if let Some(dw) = conv_winograd_depth::backward_weight(x, dy, g) {
            return dw;
        }
    }
    if chunking.winograd && conv_winograd::applies(g) {
        if let Some(dw) = conv_winograd::backward_weight(x, dy, g) {
            return dw;
        }
    }
    if chunking.direct && conv_direct::weight_grad_applies(g) {
        return conv_direct::backward_weight(x, dy, g);
    }
    let kdim = g.in_per_group() * g.kernel_volume();
    let chunks = row_chunks(g, kdim, chunking, g.n * g.groups);
    let tasks = g.n * g.groups * chunks.len();
    // Accumulating dWᵀ = col·dyᵀ lets the gemm crate read the column chunk in place as its right-hand
    // side and pack only dy's chunk (C_out/G rows), where dy·colᵀ packs a transpose of the column chunk
    // (kdim rows): the smaller of the two is packed. Measured (docs/PERFORMANCE.md) faster where
    // kdim > C_out/G, slower where threads share one GEMM and where chunks are short (a few positions'
    // sums then move all of dWᵀ per chunk).
    let longest = chunks.iter().map(|&(r0, r1)| r1 - r0).max().unwrap_or(0) * g.output[2];
    let transposed = tasks >= rayon::current_num_threads()
        && longest >= chunking.min_positions
        && kdim > g.out_per_group();
    backward_weight_oriented(x, dy, g, &chunks, transposed)
}

/// dW as Σ over (n, group, chunk) of dy·colᵀ, or (`transposed`) of col·dyᵀ into dWᵀ, transposed at the end.
fn backward_weight_oriented(
    x: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    chunks: &[(usize, usize)],
    transposed: bool,
) -> Vec<f32> {
    let (p_vol, in_vol, ow_n) = (g.output_volume(), g.input_volume(), g.output[2]);
    let (cin_g, cout_g, groups) = (g.in_per_group(), g.out_per_group(), g.groups);
    let kdim = cin_g * g.kernel_volume();
    let pointwise = is_pointwise(g);
    let tasks: Vec<(usize, usize, usize)> = (0..g.n * groups)
        .flat_map(|ng| chunks.iter().map(move |&(r0, r1)| (ng, r0, r1)))
        .collect();
    let few = tasks.len() < rayon::current_num_threads();
    let taps = Taps::new(g);
    let w_len = g.c_out * kdim;
    let parts = rayon::current_num_threads();
    // col·dyᵀ packs dyᵀ, reading every channel's row at one position after another: where the rows lie
    // a multiple of 1 kB apart, all C_out/G of them fall into at most 4 of L1's 64-byte sets and
    // evict each other (the stems: 112² and 56² planes, 50–400 kB apart). The task's chunk of dy
    // is then first copied row after row into a contiguous buffer: on a Zen 5, C2D-NL-R50's stem
    // 11.0 → 7.0 ms, R(2+1)D-18's 3.9 → 2.9, ECO-Lite's 14.0 → 12.6, C2D-NL-R50's 256 → 64 on
    // 8 × 56² 2.95 → 2.65 (docs/PERFORMANCE.md, stop 42).
    let copy_dy = transposed && (p_vol * std::mem::size_of::<f32>()).is_multiple_of(1024);
    let dw = sum_in_order(&tasks, parts, w_len, |group, acc| {
        let mut col = Vec::new();
        let mut dy_rows: Vec<f32> = Vec::new();
        for &(ng, r0, r1) in group {
            let gi = ng % groups;
            let xg = &x[ng / groups * g.c_in * in_vol + gi * cin_g * in_vol..][..cin_g * in_vol];
            let dyg = &dy[ng * cout_g * p_vol..][..cout_g * p_vol];
            let (p0, pc) = (r0 * ow_n, (r1 - r0) * ow_n);
            let col = if pointwise {
                Mat {
                    data: &xg[p0..],
                    rs: p_vol,
                    cs: 1,
                }
            } else {
                fill_col(xg, &mut col, g, &taps, r0, r1, few);
                Mat::new(&col[..kdim * pc], pc, false)
            };
            let dy = if copy_dy {
                dy_rows.clear();
                for c in 0..cout_g {
                    dy_rows.extend_from_slice(&dyg[c * p_vol + p0..][..pc]);
                }
                Mat {
                    data: &dy_rows[..],
                    rs: pc,
                    cs: 1,
                }
            } else {
                Mat {
                    data: &dyg[p0..],
                    rs: p_vol,
                    cs: 1,
                }
            };
            let dst = &mut acc[gi * cout_g * kdim..][..cout_g * kdim];
            if transposed {
                gemm(kdim, cout_g, pc, col, dy.t(), dst, cout_g, true, few);
            } else {
                gemm(cout_g, kdim, pc, dy, col.t(), dst, kdim, true, few);
            }
        }
    });
    if transposed {
        permute(&dw, &[groups, kdim, cout_g], &[0, 2, 1])
    } else {
        dw
    }
}

/// Σ over `tasks` of what `run` adds into a zeroed buffer of `len` floats. The tasks are cut into at
/// most `parts` contiguous runs; each run sums its tasks in order into a private buffer and the buffers
/// are added in run order. Unlike a work-stealing fold the summation order does not depend on
/// scheduling, so a weight gradient is bit-reproducible for a thread count (training resumes
/// bit-identically).
pub(super) fn sum_in_order<T: Sync>(
    tasks: &[T],
    parts: usize,
    len: usize,
    run: impl Fn(&[T], &mut [f32]) + Sync,
) -> Vec<f32> {
    let parts = parts.clamp(1, tasks.len().max(1));
    let partials: Vec<Vec<f32>> = tasks
        .par_chunks(tasks.len().div_ceil(parts).max(1))
        .map(|group| {
            let mut acc = vec![0.0f32; len];
            run(group, &mut acc);
            acc
        })
        .collect();
    let mut sum = vec![0.0; len];
    sum_parts(&mut sum, partials.iter().map(|p| &p[..]));
    sum
}

/// out = Σ parts, element by element in the parts' order, in parallel over pieces of `out`.
pub(super) fn sum_parts<'a>(
    out: &mut [f32],
    parts: impl Iterator<Item = &'a [f32]> + Clone + Sync,
) {
    out.par_chunks_mut(16 * 1024)
        .enumerate()
        .for_each(|(i, o)| {
            let (at, len) = (i * 16 * 1024, o.len());
            let mut parts = parts.clone();
            if let Some(first) = parts.next() {
                o.copy_from_slice(&first[at..at + len]);
            }
            for part in parts {
                with_avx2!(for (x, &a) in o.iter_mut().zip(&part[at..at + len]) {
                    *x += a;
                })
            }
        });
}

/// Calls `f(out, tap, inp, len)` for every output row and kernel tap reading inside the input: plane
/// outputs out..out+len read plane inputs inp, inp + stride_w, …
fn for_each_run(g: &ConvGeom, taps: &Taps, mut f: impl FnMut(usize, usize, usize, usize)) {
    let [kd, kh, kw] = g.kernel;
    let [od_n, oh_n, ow_n] = g.output;
    let [_, ih_n, iw_n] = g.input;
    for od in 0..od_n {
        for oh in 0..oh_n {
            let out_row = (od * oh_n + oh) * ow_n;
            for a in 0..kd {
                let Some(id) = taps.input(g, 0, od, a) else {
                    continue;
                };
                for b in 0..kh {
                    let Some(ih) = taps.input(g, 1, oh, b) else {
                        continue;
                    };
                    let in_row = (id * ih_n + ih) * iw_n;
                    for c in 0..kw {
                        let (lo, hi) = taps.0[2][c];
                        if lo < hi {
                            f(
                                out_row + lo,
                                (a * kh + b) * kw + c,
                                in_row + taps.w_start(g, c),
                                hi - lo,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise forward: one task per output plane (n, co), reading input channel co / m.
fn depthwise_forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Vec<f32> {
    let (p_vol, in_vol, kvol, m) = (
        g.output_volume(),
        g.input_volume(),
        g.kernel_volume(),
        g.out_per_group(),
    );
    let sw = g.stride[2];
    let taps = Taps::new(g);
    let mut y = vec![0.0f32; g.n * g.c_out * p_vol];
    y.par_chunks_mut(p_vol).enumerate().for_each(|(nc, yp)| {
        let (n, co) = (nc / g.c_out, nc % g.c_out);
        let xp = &x[(n * g.c_in + co / m) * in_vol..][..in_vol];
        let wk = &w[co * kvol..][..kvol];
        yp.fill(bias.map_or(0.0, |b| b[co]));
        for_each_run(g, &taps, |o, t, i, len| {
            let wv = wk[t];
            let yr = &mut yp[o..o + len];
            if sw == 1 {
                yr.iter_mut()
                    .zip(&xp[i..i + len])
                    .for_each(|(y, x)| *y += wv * x);
            } else {
                yr.iter_mut()
                    .zip(xp[i..].iter().step_by(sw))
                    .for_each(|(y, x)| *y += wv * x);
            }
        });
        if wk.iter().any(|v| !v.is_finite()) {
            padding_products(yp, wk, g);
        }
        if relu {
            yp.iter_mut().for_each(|v| *v = relu_f(*v));
        }
    });
    y
}

/// The taps that fall on the zero padding add w·0 to their outputs: nothing for a finite w, NaN for a
/// NaN or ±Inf one, as PyTorch's zero-padded convolution gives (the direct kernel skips those taps).
fn padding_products(yp: &mut [f32], wk: &[f32], g: &ConvGeom) {
    let [k0, k1, k2] = g.kernel;
    let [o0, o1, o2] = g.output;
    for (t, &wv) in wk.iter().enumerate() {
        if wv.is_finite() {
            continue;
        }
        let tap = [t / (k1 * k2), (t / k2) % k1, t % k2];
        debug_assert!(tap[0] < k0);
        // Whether output index o along dim d puts this tap outside the input.
        let outside = |d: usize, o: usize| {
            let pos = (o * g.stride[d] + tap[d] * g.dilation[d]) as isize - g.padding[d] as isize;
            pos < 0 || pos >= g.input[d] as isize
        };
        for a in 0..o0 {
            for b in 0..o1 {
                for c in 0..o2 {
                    if outside(0, a) || outside(1, b) || outside(2, c) {
                        yp[(a * o1 + b) * o2 + c] += wv * 0.0;
                    }
                }
            }
        }
    }
}

/// Depthwise dx: one task per input plane (n, ci), gathering its m output channels.
fn depthwise_backward_data(dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (p_vol, in_vol, kvol, m) = (
        g.output_volume(),
        g.input_volume(),
        g.kernel_volume(),
        g.out_per_group(),
    );
    let sw = g.stride[2];
    let taps = Taps::new(g);
    let mut dx = vec![0.0f32; g.n * g.c_in * in_vol];
    dx.par_chunks_mut(in_vol).enumerate().for_each(|(nc, dxp)| {
        let (n, ci) = (nc / g.c_in, nc % g.c_in);
        for co in ci * m..(ci + 1) * m {
            let dyp = &dy[(n * g.c_out + co) * p_vol..][..p_vol];
            let wk = &w[co * kvol..][..kvol];
            for_each_run(g, &taps, |o, t, i, len| {
                let wv = wk[t];
                let src = &dyp[o..o + len];
                if sw == 1 {
                    dxp[i..i + len]
                        .iter_mut()
                        .zip(src)
                        .for_each(|(d, s)| *d += wv * s);
                } else {
                    dxp[i..]
                        .iter_mut()
                        .step_by(sw)
                        .zip(src)
                        .for_each(|(d, s)| *d += wv * s);
                }
            });
        }
    });
    dx
}

/// Depthwise dw: one task per output channel's kernel, summing over the batch.
fn depthwise_backward_weight(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (p_vol, in_vol, kvol, m) = (
        g.output_volume(),
        g.input_volume(),
        g.kernel_volume(),
        g.out_per_group(),
    );
    let sw = g.stride[2];
    let taps = Taps::new(g);
    let mut dw = vec![0.0f32; g.c_out * kvol];
    dw.par_chunks_mut(kvol).enumerate().for_each(|(co, acc)| {
        for n in 0..g.n {
            let xp = &x[(n * g.c_in + co / m) * in_vol..][..in_vol];
            let dyp = &dy[(n * g.c_out + co) * p_vol..][..p_vol];
            for_each_run(g, &taps, |o, t, i, len| {
                let d = &dyp[o..o + len];
                acc[t] += if sw == 1 {
                    dot(d, &xp[i..i + len])
                } else {
                    d.iter()
                        .zip(xp[i..].iter().step_by(sw))
                        .map(|(a, b)| a * b)
                        .sum()
                };
            });
        }
    });
    dw
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::rng::{splitmix64, uniform};

    fn data(seed: u64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| uniform(seed, i as u64) * 2.0 - 1.0)
            .collect()
    }

    /// Plain loops in f64: (y without bias, dx, dw) for upstream gradient dy.
    pub(in crate::backend::cpu) fn reference(
        x: &[f32],
        w: &[f32],
        dy: &[f32],
        g: &ConvGeom,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let [id_n, ih_n, iw_n] = g.input;
        let [od_n, oh_n, ow_n] = g.output;
        let [kd, kh, kw] = g.kernel;
        let mut y = vec![0.0f64; g.n * g.c_out * g.output_volume()];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let at = |o: usize, k: usize, dim: usize, n: usize| -> Option<usize> {
            let i = (o * g.stride[dim] + k * g.dilation[dim]) as isize - g.padding[dim] as isize;
            (i >= 0 && (i as usize) < n).then_some(i as usize)
        };
        for n in 0..g.n {
            for co in 0..g.c_out {
                let gi = co / cout_g;
                for od in 0..od_n {
                    for oh in 0..oh_n {
                        for ow in 0..ow_n {
                            let yi = (((n * g.c_out + co) * od_n + od) * oh_n + oh) * ow_n + ow;
                            for cl in 0..cin_g {
                                let ci = gi * cin_g + cl;
                                for a in 0..kd {
                                    let Some(id) = at(od, a, 0, id_n) else {
                                        continue;
                                    };
                                    for b in 0..kh {
                                        let Some(ih) = at(oh, b, 1, ih_n) else {
                                            continue;
                                        };
                                        for c in 0..kw {
                                            let Some(iw) = at(ow, c, 2, iw_n) else {
                                                continue;
                                            };
                                            let xi = (((n * g.c_in + ci) * id_n + id) * ih_n + ih)
                                                * iw_n
                                                + iw;
                                            let wi =
                                                (((co * cin_g + cl) * kd + a) * kh + b) * kw + c;
                                            y[yi] += x[xi] as f64 * w[wi] as f64;
                                            dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                            dw[wi] += dy[yi] as f64 * x[xi] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn max_err(got: &[f32], want: &[f64]) -> (f64, f64) {
        assert_eq!(got.len(), want.len());
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
        (err, scale)
    }

    /// Stride 1 where `unit_stride`; inputs at least one kernel span (with padding); the outputs
    /// that follow.
    fn fit_geom(g: &mut ConvGeom, unit_stride: bool) {
        for d in 0..3 {
            let span = g.dilation[d] * (g.kernel[d] - 1);
            if unit_stride {
                g.stride[d] = 1;
            }
            g.input[d] = g.input[d].max((span + 1).saturating_sub(2 * g.padding[d]));
            g.output[d] = (g.input[d] + 2 * g.padding[d] - span - 1) / g.stride[d] + 1;
        }
    }

    /// The GEMM path alone (no direct kernel, no Winograd): the non-finite patterns' reference where
    /// the f64 loops skip the padding taps that the GEMM path multiplies.
    const GEMM_ONLY: Chunking = Chunking {
        direct: false,
        winograd: false,
        ..CHUNKING
    };

    /// `got[i]` is NaN exactly where `want[i]` is.
    fn assert_nan_pattern(got: &[f32], want: &[f64], what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert_eq!(a.is_nan(), b.is_nan(), "{what}[{i}] {a} vs {b}");
        }
    }

    /// `got[i]` is NaN and ±Inf exactly where `want[i]` is.
    fn assert_non_finite_pattern(got: &[f32], want: &[f32], what: &str) {
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert_eq!(
                (a.is_nan(), a.is_infinite()),
                (b.is_nan(), b.is_infinite()),
                "{what}[{i}] {a} vs {b}"
            );
        }
    }

    /// A small deterministic chooser over splitmix64.
    struct Pick(u64);
    impl Pick {
        fn below(&mut self, n: usize) -> usize {
            self.0 = splitmix64(self.0.wrapping_add(crate::rng::GOLDEN));
            (self.0 % n as u64) as usize
        }
        fn range(&mut self, lo: usize, hi: usize) -> usize {
            lo + self.below(hi - lo + 1)
        }
    }

    fn random_geom(p: &mut Pick, case: usize) -> ConvGeom {
        const KERNELS: [[usize; 3]; 8] = [
            [3, 3, 3],
            [3, 1, 1],
            [1, 3, 3],
            [5, 7, 7],
            [1, 7, 7],
            [1, 1, 1],
            [2, 3, 2],
            [1, 5, 5],
        ];
        let kernel = KERNELS[case % KERNELS.len()];
        let flat = case % 5 == 4 || (kernel[0] == 1 && p.below(2) == 0); // 2-d-like: D = 1
        let pointwise = kernel == [1, 1, 1] && p.below(2) == 0;
        let big = kernel.iter().product::<usize>() > 100;
        let mut g = ConvGeom {
            n: p.range(1, 3),
            c_in: 0,
            c_out: 0,
            groups: 1,
            input: [0; 3],
            output: [0; 3],
            kernel,
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
        };
        for (d, &k) in kernel.iter().enumerate() {
            if flat && d == 0 {
                g.kernel[0] = 1;
                g.input[0] = 1;
                g.output[0] = 1;
                continue;
            }
            if !pointwise {
                // Stride 3 too: the column matrix splits strided rows into that many phases.
                g.stride[d] = p.range(1, 3);
                g.padding[d] = p.range(0, 2.min(k));
                if k > 1 && !big {
                    g.dilation[d] = p.range(1, 2);
                }
            }
            let span = g.dilation[d] * (k - 1) + 1;
            let min = span.saturating_sub(2 * g.padding[d]).max(1);
            g.input[d] = min + p.range(0, if big { 3 } else { 6 });
            g.output[d] = (g.input[d] + 2 * g.padding[d] - span) / g.stride[d] + 1;
        }
        let (cin_g, cout_g) = if big {
            (p.range(1, 2), p.range(1, 2))
        } else {
            (p.range(1, 3), p.range(1, 4))
        };
        match p.below(4) {
            0 => (g.groups, g.c_in, g.c_out) = (1, cin_g, cout_g),
            1 => (g.groups, g.c_in, g.c_out) = (2, 2 * cin_g, 2 * cout_g),
            m => {
                let c = p.range(2, 4);
                (g.groups, g.c_in, g.c_out) = (c, c, c * (m - 1)); // depthwise, multiplier 1 or 2
            }
        }
        g
    }

    #[test]
    fn matches_reference() {
        let mut p = Pick(0x5eed);
        let mut worst = (0.0f64, String::new());
        for case in 0..64 {
            let g = random_geom(&mut p, case);
            let budget = [1, 40, 700, 0][p.below(4)];
            let chunking = if budget == 0 {
                CHUNKING
            } else {
                Chunking {
                    col_floats: budget,
                    min_positions: 1,
                    direct: false,
                    winograd: false,
                }
            };
            let seed = case as u64 * 4;
            let x = data(seed, g.n * g.c_in * g.input_volume());
            let w = data(seed + 1, g.c_out * g.in_per_group() * g.kernel_volume());
            let dy = data(seed + 2, g.n * g.c_out * g.output_volume());
            let bias = (case % 2 == 0).then(|| data(seed + 3, g.c_out));
            let (mut y_ref, dx_ref, dw_ref) = reference(&x, &w, &dy, &g);
            if let Some(b) = &bias {
                for (i, v) in y_ref.iter_mut().enumerate() {
                    *v += b[i / g.output_volume() % g.c_out] as f64;
                }
            }
            let y = forward_with(&x, &w, bias.as_deref(), &g, chunking, false);
            // The ReLU epilogue is ReLU of the same sums, bit for bit.
            let y_relu = forward_with(&x, &w, bias.as_deref(), &g, chunking, true);
            let relu_of_y: Vec<f32> = y.iter().map(|&v| relu_f(v)).collect();
            assert_eq!(y_relu, relu_of_y, "case {case} relu epilogue {g:?}");
            let dx = backward_data_with(&dy, &w, &g, chunking);
            let dw = backward_weight_with(&x, &dy, &g, chunking);
            for (name, got, want) in [
                ("y", &y, &y_ref),
                ("dx", &dx, &dx_ref),
                ("dw", &dw, &dw_ref),
            ] {
                let (err, scale) = max_err(got, want);
                assert!(
                    err <= 1e-4 * (1.0 + scale),
                    "case {case} {name}: err {err} (scale {scale}) {g:?}"
                );
                let rel = err / (1.0 + scale);
                if rel > worst.0 {
                    worst = (
                        rel,
                        format!("case {case} {name} err {err:.2e} scale {scale:.1}"),
                    );
                }
            }
        }
        println!("worst relative error {:.2e}: {}", worst.0, worst.1);
    }

    /// dy's rows 8 kB apart (2 × 16 × 64 positions): col·dyᵀ copies each task's chunk of dy before
    /// the GEMM (`copy_dy`), for whole and partial chunks.
    #[test]
    fn weight_gradient_copies_dy_rows_at_aligned_strides() {
        let g = ConvGeom {
            n: 2,
            c_in: 3,
            c_out: 8,
            groups: 1,
            input: [2, 16, 64],
            output: [2, 16, 64],
            kernel: [1, 3, 3],
            stride: [1, 1, 1],
            padding: [0, 1, 1],
            dilation: [1, 1, 1],
        };
        assert!((g.output_volume() * 4).is_multiple_of(1024));
        let kdim = g.in_per_group() * g.kernel_volume();
        let x = data(31, g.n * g.c_in * g.input_volume());
        let w = data(32, g.c_out * kdim);
        let dy = data(33, g.n * g.c_out * g.output_volume());
        let (_, _, dw_ref) = reference(&x, &w, &dy, &g);
        for col_floats in [kdim * 64 * 5, 1 << 20] {
            let chunking = Chunking {
                col_floats,
                min_positions: 1,
                direct: false,
                winograd: false,
            };
            let chunks = row_chunks(&g, kdim, chunking, g.n * g.groups);
            let dw = backward_weight_oriented(&x, &dy, &g, &chunks, true);
            let (err, scale) = max_err(&dw, &dw_ref);
            assert!(
                err <= 1e-4 * (1.0 + scale),
                "{} chunks: err {err}",
                chunks.len()
            );
        }
    }

    /// Both orientations of the weight-gradient GEMM (dy·colᵀ, and col·dyᵀ into dWᵀ), whichever
    /// `backward_weight_with` picks for a shape and thread count, against the f64 reference (the bound of
    /// `matches_reference`), and with a NaN in x the reference's non-finite pattern.
    #[test]
    fn weight_gradient_orientations() {
        let mut p = Pick(0x3a11);
        let mut checked = 0;
        for case in 0..48 {
            let g = random_geom(&mut p, case);
            if g.is_depthwise() {
                continue;
            }
            let chunking = Chunking {
                col_floats: [1, 40, 700, 1 << 20][p.below(4)],
                min_positions: 1,
                direct: false,
                winograd: false,
            };
            let kdim = g.in_per_group() * g.kernel_volume();
            let chunks = row_chunks(&g, kdim, chunking, g.n * g.groups);
            let seed = 2000 + case as u64 * 3;
            let mut x = data(seed, g.n * g.c_in * g.input_volume());
            let w = data(seed + 1, g.c_out * kdim);
            let dy = data(seed + 2, g.n * g.c_out * g.output_volume());
            let (_, _, dw_ref) = reference(&x, &w, &dy, &g);
            for transposed in [false, true] {
                let dw = backward_weight_oriented(&x, &dy, &g, &chunks, transposed);
                let (err, scale) = max_err(&dw, &dw_ref);
                assert!(
                    err <= 1e-4 * (1.0 + scale),
                    "case {case} transposed {transposed}: err {err} {g:?}"
                );
            }
            let at = p.below(x.len());
            x[at] = f32::NAN;
            let (_, _, dw_ref) = reference(&x, &w, &dy, &g);
            for transposed in [false, true] {
                let dw = backward_weight_oriented(&x, &dy, &g, &chunks, transposed);
                for (i, (a, b)) in dw.iter().zip(&dw_ref).enumerate() {
                    assert_eq!(
                        a.is_finite(),
                        b.is_finite(),
                        "case {case} transposed {transposed} dw[{i}] {a} vs {b} {g:?}"
                    );
                }
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} non-depthwise cases");
    }

    /// Stride 1: the flipped-kernel forward convolution gives col2vol's dx (the same products, summed in
    /// another order: the bound is the f64-reference test's, K·u-sized); with a non-finite weight dx
    /// keeps col2vol's non-finite pattern, the f64 reference's, which the flipped convolution's padding
    /// taps would break (w·0 = NaN where the forward convolution has no output).
    #[test]
    fn stride_one_dgrad_as_flipped_forward() {
        let mut p = Pick(0xd6ad);
        let mut flipped = 0;
        for case in 0..48 {
            let mut g = random_geom(&mut p, case);
            if g.is_depthwise() {
                continue;
            }
            for d in 0..3 {
                // stride 1; a padding beyond d·(k − 1) (col2vol's case) in one case of four
                let span = g.dilation[d] * (g.kernel[d] - 1);
                if p.below(4) > 0 {
                    g.padding[d] = g.padding[d].min(span);
                }
                g.stride[d] = 1;
                g.input[d] = g.input[d].max((span + 1).saturating_sub(2 * g.padding[d]));
                g.output[d] = g.input[d] + 2 * g.padding[d] - span;
            }
            flipped += transposed_geom(&g).is_some() as usize;
            let seed = 1000 + case as u64 * 3;
            let mut w = data(seed, g.c_out * g.in_per_group() * g.kernel_volume());
            let dy = data(seed + 1, g.n * g.c_out * g.output_volume());
            let x = data(seed + 2, g.n * g.c_in * g.input_volume());
            let (_, dx_ref, _) = reference(&x, &w, &dy, &g);
            let (err, scale) = max_err(&backward_data_with(&dy, &w, &g, CHUNKING), &dx_ref);
            assert!(err <= 1e-4 * (1.0 + scale), "case {case}: err {err} {g:?}");
            // the flipped forward itself, whichever path `flipped_forward_pays` picks for the shape
            if let Some(gt) = transposed_geom(&g) {
                let wt = flipped_transposed(&w, &g).expect("finite weights");
                let dx = forward_with(&dy, &wt, None, &gt, CHUNKING, false);
                let (err, scale) = max_err(&dx, &dx_ref);
                assert!(
                    err <= 1e-4 * (1.0 + scale),
                    "case {case} flipped: err {err}"
                );
            }
            let dx_col = backward_data_col2vol(&dy, &w, &g, CHUNKING);
            let (err, scale) = max_err(&dx_col, &dx_ref);
            assert!(
                err <= 1e-4 * (1.0 + scale),
                "case {case} col2vol: err {err}"
            );

            let at = p.below(w.len());
            w[at] = f32::INFINITY;
            if transposed_geom(&g).is_some() {
                // wherever the weight lies in the copy's pieces, the GEMM path takes over
                assert!(
                    flipped_transposed(&w, &g).is_none(),
                    "case {case}: Inf at {at}"
                );
            }
            let (_, dx_ref, _) = reference(&x, &w, &dy, &g);
            let dx = backward_data_with(&dy, &w, &g, CHUNKING);
            for (i, (a, b)) in dx.iter().zip(&dx_ref).enumerate() {
                assert_eq!(
                    a.is_finite(),
                    b.is_finite(),
                    "case {case} dx[{i}] {a} vs {b} {g:?}"
                );
            }
        }
        assert!(flipped >= 10, "only {flipped} cases took the flipped path");
    }

    /// The direct forward ([`conv_direct`], with each tile the CPU runs: AVX2 and FMA's, AVX-512's;
    /// strides 1–3; called whatever its useful fraction, so at small shapes the forward path would
    /// not pick) against the f64
    /// reference, per output within γ_K·Σ|w·x| (K = C_in/G·kernel volume terms summed in FP32 in any
    /// order: |error| ≤ γ_K·Σ|terms|, γ_K = K·u/(1 − K·u), u = 2^-24), plus 1 ulp of the bias add;
    /// its ReLU epilogue bit for bit; a NaN in x gives the reference's non-finite pattern, an Inf
    /// weight the GEMM path's (padding taps multiply zeros on both). Shapes cover several K chunks
    /// (C_in·kvol > 512), panels of 6 and 8 with a remainder, task splits and 2-d and 3-d kernels.
    #[test]
    fn direct_forward_matches_reference() {
        let tiles = conv_direct::supported_tiles();
        if tiles.is_empty() {
            println!("no AVX2/FMA: the direct kernel cannot run here");
        }
        for tile in tiles {
            println!("direct convolution tile {}", tile.name);
            direct_tile_matches_reference(tile);
        }
    }

    fn direct_tile_matches_reference(tile: conv_direct::Tile) {
        let forward = |x: &[f32], w: &[f32], b: Option<&[f32]>, g: &ConvGeom, relu: bool| {
            conv_direct::forward_with(tile, x, w, b, g, relu)
        };
        let mut p = Pick(0xd1ec);
        let (mut direct, mut strided) = (0, 0);
        for case in 0..40 {
            let mut g = random_geom(&mut p, case);
            if g.is_depthwise() || case % 3 == 0 {
                // wider channels: several K chunks, panel remainders, fewer tasks than threads
                let groups = [1, 1, 2][p.below(3)];
                g.groups = groups;
                g.c_in = groups * p.range(3, 40);
                g.c_out = groups * p.range(1, 15);
            }
            if case >= 38 {
                // several position blocks per slice (the L2 blocking), 3-d and 2-d
                g = ConvGeom {
                    n: 1,
                    c_in: 24,
                    c_out: 7,
                    groups: 1,
                    input: if case == 38 { [5, 20, 30] } else { [1, 40, 44] },
                    output: [0; 3],
                    kernel: if case == 38 { [3, 3, 3] } else { [1, 3, 3] },
                    stride: if case == 38 { [1; 3] } else { [1, 2, 2] },
                    padding: if case == 38 { [1, 1, 1] } else { [0, 1, 1] },
                    dilation: [1; 3],
                };
            }
            // the random strides (1–3, the phases of `padded_channels`) in every other case
            fit_geom(&mut g, case % 2 == 0);
            if g.is_depthwise() || g.kernel == [1, 1, 1] {
                continue;
            }
            direct += 1;
            strided += (g.stride != [1, 1, 1]) as usize;
            let seed = 3000 + case as u64 * 4;
            let mut x = data(seed, g.n * g.c_in * g.input_volume());
            let mut w = data(seed + 1, g.c_out * g.in_per_group() * g.kernel_volume());
            let dy = vec![0.0f32; g.n * g.c_out * g.output_volume()];
            let bias = (case % 2 == 0).then(|| data(seed + 3, g.c_out));
            let (y_ref, _, _) = reference(&x, &w, &dy, &g);
            let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
            let (y_abs, _, _) = reference(&abs(&x), &abs(&w), &dy, &g);
            let k = (g.in_per_group() * g.kernel_volume()) as f64;
            let u = f64::powi(2.0, -24);
            let gamma = k * u / (1.0 - k * u);
            let y = forward(&x, &w, bias.as_deref(), &g, false);
            for (i, ((got, want), mag)) in y.iter().zip(&y_ref).zip(&y_abs).enumerate() {
                let b = bias
                    .as_ref()
                    .map_or(0.0, |b| b[i / g.output_volume() % g.c_out] as f64);
                let bound = gamma * mag + u * (want + b).abs() + 1e-30;
                assert!(
                    (*got as f64 - (want + b)).abs() <= bound,
                    "case {case} y[{i}] {got} vs {} (bound {bound:.2e}) {g:?}",
                    want + b
                );
            }
            let y_relu = forward(&x, &w, bias.as_deref(), &g, true);
            let relu_of_y: Vec<f32> = y.iter().map(|&v| relu_f(v)).collect();
            assert_eq!(y_relu, relu_of_y, "case {case} relu epilogue {g:?}");

            let at = p.below(x.len());
            x[at] = f32::NAN;
            let (y_ref, _, _) = reference(&x, &w, &dy, &g);
            let y = forward(&x, &w, None, &g, false);
            assert_nan_pattern(&y, &y_ref, &format!("case {case} NaN x {g:?}: y"));
            x[at] = 0.5;
            let at = p.below(w.len());
            w[at] = f32::INFINITY;
            let y_gemm = forward_with(&x, &w, None, &g, GEMM_ONLY, false);
            let y = forward(&x, &w, None, &g, false);
            assert_non_finite_pattern(&y, &y_gemm, &format!("case {case} Inf w {g:?}: y"));
        }
        assert!(direct >= 20, "only {direct} cases took the direct kernel");
        assert!(strided >= 8, "only {strided} strided cases");
    }

    /// The direct weight gradient ([`conv_direct::backward_weight`], called whatever `C_in/G`, so on
    /// small channel counts too) against the f64 reference, per weight within γ_T·Σ|dy·x| (T = N·oD·oH·oW
    /// terms summed in FP32 in any order: |error| ≤ γ_T·Σ|terms|, γ_T = T·u/(1 − T·u), u = 2^-24);
    /// a NaN in x gives the reference's non-finite pattern, an Inf in dy the GEMM path's (padding
    /// reads zeros on both, 0·Inf = NaN). Shapes cover strides 1–3 (the phases), dilation, groups,
    /// blocks of 32 output channels with a remainder, column tiles with a remainder, several position
    /// blocks and images.
    #[test]
    fn direct_weight_gradient_matches_reference() {
        if !conv_direct::weight_grad_supported() {
            println!("no AVX-512F: the direct weight gradient cannot run here");
            return;
        }
        let mut p = Pick(0x3e16);
        let (mut checked, mut strided, mut blocks) = (0, 0, 0);
        for case in 0..64 {
            let mut g = random_geom(&mut p, case);
            if g.kernel == [1, 1, 1] {
                continue;
            }
            if g.is_depthwise() || case % 3 == 0 {
                // more than one block of 32 output channels, with a remainder, and several column tiles
                let groups = [1, 1, 2][p.below(3)];
                g.groups = groups;
                g.c_in = groups * p.range(2, 12);
                g.c_out = groups * p.range(33, 70);
            }
            if case % 4 == 1 {
                // several position blocks of one image (WG_BLOCK_POSITIONS = 128)
                g.input = [3, 17, 21];
                g.stride[1] = 1;
                g.n = 2;
            }
            fit_geom(&mut g, case % 2 == 0);
            checked += 1;
            strided += (g.stride != [1, 1, 1]) as usize;
            blocks += (g.output_volume() > 128) as usize;
            let seed = 7000 + case as u64 * 4;
            let mut x = data(seed, g.n * g.c_in * g.input_volume());
            let w = vec![0.0f32; g.c_out * g.in_per_group() * g.kernel_volume()];
            let mut dy = data(seed + 2, g.n * g.c_out * g.output_volume());
            let (_, _, dw_ref) = reference(&x, &w, &dy, &g);
            let abs = |v: &[f32]| v.iter().map(|a| a.abs()).collect::<Vec<f32>>();
            let (_, _, dw_abs) = reference(&abs(&x), &w, &abs(&dy), &g);
            let t = (g.n * g.output_volume()) as f64;
            let u = f64::powi(2.0, -24);
            let gamma = t * u / (1.0 - t * u);
            let dw = conv_direct::backward_weight(&x, &dy, &g);
            for (i, ((got, want), mag)) in dw.iter().zip(&dw_ref).zip(&dw_abs).enumerate() {
                let bound = gamma * mag + 1e-30;
                assert!(
                    (*got as f64 - want).abs() <= bound,
                    "case {case} dw[{i}] {got} vs {want} (bound {bound:.2e}) {g:?}"
                );
            }

            let at = p.below(x.len());
            x[at] = f32::NAN;
            let (_, _, dw_ref) = reference(&x, &w, &dy, &g);
            let dw = conv_direct::backward_weight(&x, &dy, &g);
            assert_nan_pattern(&dw, &dw_ref, &format!("case {case} NaN x {g:?}: dw"));
            x[at] = 0.5;
            let at = p.below(dy.len());
            dy[at] = f32::INFINITY;
            let dw_gemm = backward_weight_with(&x, &dy, &g, GEMM_ONLY);
            let dw = conv_direct::backward_weight(&x, &dy, &g);
            assert_non_finite_pattern(&dw, &dw_gemm, &format!("case {case} Inf dy {g:?}: dw"));
        }
        assert!(checked >= 40, "only {checked} cases");
        assert!(strided >= 8, "only {strided} strided cases");
        assert!(
            blocks >= 4,
            "only {blocks} cases with several position blocks"
        );
        println!("{checked} cases, {strided} strided, {blocks} with several position blocks");
    }

    /// |Bᵀ|, |G| and |Aᵀ| of F(2, 3) along one axis (identities on 1-tap axes): the Winograd
    /// computation on absolute values, which bounds its rounding error with γ of the longest chain of
    /// roundings.
    struct AbsWinograd {
        wino: [bool; 3],
        ext: [usize; 3],
    }

    impl AbsWinograd {
        const BT: [[f64; 4]; 4] = [
            [1., 0., 1., 0.],
            [0., 1., 1., 0.],
            [0., 1., 1., 0.],
            [0., 1., 0., 1.],
        ];
        const G: [[f64; 3]; 4] = [[1., 0., 0.], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], [0., 0., 1.]];
        const AT: [[f64; 4]; 2] = [[1., 1., 1., 0.], [0., 1., 1., 1.]];

        fn new(g: &ConvGeom) -> Self {
            let wino = g.kernel.map(|k| k == 3);
            AbsWinograd {
                wino,
                ext: wino.map(|on| if on { 4 } else { 1 }),
            }
        }
        fn points(&self) -> impl Iterator<Item = [usize; 3]> + '_ {
            let e = self.ext;
            (0..e[0] * e[1] * e[2]).map(move |p| [p / (e[1] * e[2]), p / e[2] % e[1], p % e[2]])
        }
        /// Π over axes of |M|[i_a][j_a] (1 on 1-tap axes).
        fn prod(&self, i: [usize; 3], j: [usize; 3], m: fn(usize, usize) -> f64) -> f64 {
            (0..3)
                .map(|a| if self.wino[a] { m(i[a], j[a]) } else { 1.0 })
                .product()
        }
        /// (|Bᵀ| |x|)[pt] over the input box at `start` (input coordinates) of channel `xc`.
        fn input_point(&self, xc: &[f32], g: &ConvGeom, start: [isize; 3], pt: [usize; 3]) -> f64 {
            let mut sum = 0.0;
            for ii in self.points() {
                let src: [isize; 3] = std::array::from_fn(|a| start[a] + ii[a] as isize);
                if (0..3).any(|a| src[a] < 0 || src[a] >= g.input[a] as isize) {
                    continue;
                }
                let xi =
                    (src[0] as usize * g.input[1] + src[1] as usize) * g.input[2] + src[2] as usize;
                sum += self.prod(pt, ii, |p, i| Self::BT[p][i]) * xc[xi].abs() as f64;
            }
            sum
        }
    }

    /// Σ over channels and transformed points of |Aᵀ|·(|G||w|)·(|Bᵀ||x|) per output, in f64: the
    /// forward of [`conv_winograd`] on absolute values (y without bias, outputs in y's order).
    fn winograd_abs(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f64> {
        let aw = AbsWinograd::new(g);
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let mut out = vec![0.0f64; g.n * g.c_out * g.output_volume()];
        let [od, oh, ow] = g.output;
        let step = aw.wino.map(|on| if on { 2 } else { 1 });
        for (yi, s) in out.iter_mut().enumerate() {
            let pos = [yi / (oh * ow) % od, yi / ow % oh, yi % ow];
            let (n, co) = (
                yi / g.output_volume() / g.c_out,
                yi / g.output_volume() % g.c_out,
            );
            let gi = co / cout_g;
            // Tile start in input coordinates and the output's place in its tile, per axis.
            let r: [usize; 3] = std::array::from_fn(|a| pos[a] % step[a]);
            let start: [isize; 3] =
                std::array::from_fn(|a| (pos[a] - r[a]) as isize - g.padding[a] as isize);
            for cl in 0..cin_g {
                let xc = &x[(n * g.c_in + gi * cin_g + cl) * g.input_volume()..];
                let wc = &w[(co * cin_g + cl) * g.kernel_volume()..][..g.kernel_volume()];
                for pt in aw.points() {
                    let a_coef = aw.prod(r, pt, |r, p| AbsWinograd::AT[r][p]);
                    if a_coef == 0.0 {
                        continue;
                    }
                    let gsum: f64 = (0..wc.len())
                        .map(|k| {
                            aw.prod(pt, tap_of(g, k), |p, k| AbsWinograd::G[p][k])
                                * wc[k].abs() as f64
                        })
                        .sum();
                    *s += a_coef * gsum * aw.input_point(xc, g, start, pt);
                }
            }
        }
        out
    }

    /// Tap k of `g`'s kernel as (depth, height, width) indices.
    fn tap_of(g: &ConvGeom, k: usize) -> [usize; 3] {
        [
            k / (g.kernel[1] * g.kernel[2]),
            k / g.kernel[2] % g.kernel[1],
            k % g.kernel[2],
        ]
    }

    /// Σ over samples, tiles and transformed points of |G|ᵀ·((|A||dy|) ⊙ (|Bᵀ||x|)) per weight, in
    /// f64: the weight gradient of [`conv_winograd`] on absolute values (in dw's order).
    fn winograd_wgrad_abs(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f64> {
        let aw = AbsWinograd::new(g);
        let (cin_g, cout_g, kvol) = (g.in_per_group(), g.out_per_group(), g.kernel_volume());
        let step = aw.wino.map(|on| if on { 2 } else { 1 });
        let tiles: [usize; 3] = std::array::from_fn(|a| g.output[a].div_ceil(step[a]));
        let mut out = vec![0.0f64; g.c_out * cin_g * kvol];
        for n in 0..g.n {
            for co in 0..g.c_out {
                let gi = co / cout_g;
                let dyc = &dy[(n * g.c_out + co) * g.output_volume()..][..g.output_volume()];
                for tile in (0..tiles.iter().product()).map(|i: usize| {
                    [
                        i / (tiles[1] * tiles[2]),
                        i / tiles[2] % tiles[1],
                        i % tiles[2],
                    ]
                }) {
                    let first: [usize; 3] = std::array::from_fn(|a| tile[a] * step[a]);
                    // (|A| |dy|)[pt]: the tile's outputs inside the output extents.
                    let grad: Vec<f64> = aw
                        .points()
                        .map(|pt| {
                            let mut sum = 0.0;
                            for r in 0..step.iter().product() {
                                let r =
                                    [r / (step[1] * step[2]), r / step[2] % step[1], r % step[2]];
                                let o: [usize; 3] = std::array::from_fn(|a| first[a] + r[a]);
                                if (0..3).all(|a| o[a] < g.output[a]) {
                                    let oi = (o[0] * g.output[1] + o[1]) * g.output[2] + o[2];
                                    sum += aw.prod(r, pt, |r, p| AbsWinograd::AT[r][p])
                                        * dyc[oi].abs() as f64;
                                }
                            }
                            sum
                        })
                        .collect();
                    let start: [isize; 3] =
                        std::array::from_fn(|a| first[a] as isize - g.padding[a] as isize);
                    for cl in 0..cin_g {
                        let xc = &x[(n * g.c_in + gi * cin_g + cl) * g.input_volume()..];
                        let dst = &mut out[(co * cin_g + cl) * kvol..][..kvol];
                        for (pt, gp) in aw.points().zip(&grad) {
                            let m = gp * aw.input_point(xc, g, start, pt);
                            for (k, d) in dst.iter_mut().enumerate() {
                                *d += aw.prod(pt, tap_of(g, k), |p, k| AbsWinograd::G[p][k]) * m;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The Winograd tests' shapes, numbered: 48 draws of [`winograd_geom`] less the depthwise ones.
    fn winograd_cases() -> Vec<(usize, ConvGeom)> {
        let mut p = Pick(0x3196);
        let cases: Vec<(usize, ConvGeom)> = (0..48)
            .filter_map(|case| winograd_geom(&mut p, case).map(|g| (case, g)))
            .collect();
        assert!(cases.len() >= 40, "only {} cases", cases.len());
        cases
    }

    /// A random shape [`conv_winograd`] computes (called whatever its channel counts, so small shapes
    /// run): every combination of 3-tap axes, paddings 0–2, odd extents (partial tiles), groups,
    /// several lane blocks of channels; case 0 has more tiles than a chunk holds, cases 8 and 9 odd
    /// 3×3 and 3×3×3 outputs over several groups of eight tiles. `None` for a depthwise draw.
    fn winograd_geom(p: &mut Pick, case: usize) -> Option<ConvGeom> {
        let kernel: [usize; 3] = loop {
            let k = std::array::from_fn(|_| [1, 3][p.below(2)]);
            if k.contains(&3) {
                break k;
            }
        };
        let groups = [1, 1, 2][p.below(3)];
        let (cin_g, cout_g) = if case % 8 == 7 {
            (p.range(20, 40), p.range(17, 30)) // several lane blocks of channels
        } else {
            (p.range(1, 10), p.range(1, 9))
        };
        let mut g = ConvGeom {
            n: p.range(1, 2),
            c_in: groups * cin_g,
            c_out: groups * cout_g,
            groups,
            input: std::array::from_fn(|d| p.range(1, if kernel[d] == 3 { 9 } else { 3 })),
            output: [0; 3],
            kernel,
            stride: [1; 3],
            padding: std::array::from_fn(|d| p.below(if kernel[d] == 3 { 3 } else { 2 })),
            dilation: [1; 3],
        };
        if case == 0 {
            // more tiles than a chunk holds: several chunks per task
            (g.c_in, g.c_out, g.groups) = (24, 20, 1);
            (g.input, g.kernel, g.padding) = ([1, 70, 66], [1, 3, 3], [0, 1, 1]);
        }
        if case == 8 {
            // 3×3 (the transforms' 2-D path) with odd output extents, two groups and rows of
            // several whole groups of eight tiles and a partial one (the vector stores and the tail)
            (g.c_in, g.c_out, g.groups) = (2 * cin_g, 2 * cout_g, 2);
            (g.input, g.kernel, g.padding) = ([2, 9, 49], [1, 3, 3], [0, 1, 0]);
        }
        if case == 9 {
            // 3×3×3 (the slabs through the 2-D transforms) with odd output extents — a last depth
            // tile of one plane — and rows of whole groups of eight tiles and a partial one
            (g.c_in, g.c_out, g.groups) = (2 * cin_g, 2 * cout_g, 2);
            (g.input, g.kernel, g.padding) = ([5, 7, 41], [3, 3, 3], [1, 1, 0]);
        }
        for d in 0..3 {
            let span = g.kernel[d] - 1;
            g.input[d] = g.input[d].max((span + 1).saturating_sub(2 * g.padding[d]));
            g.output[d] = g.input[d] + 2 * g.padding[d] - span;
        }
        (!g.is_depthwise()).then_some(g)
    }

    /// Winograd F(2, 3)'s forward ([`conv_winograd`]) on [`winograd_geom`]'s shapes against the f64
    /// reference, per output within γ_k·(S + |bias|): S the computation on absolute values
    /// ([`winograd_abs`]), k = 5 roundings per Winograd axis (2 in G, 1 in Bᵀ, 2 in Aᵀ) + 1 for the
    /// product + C_in/G for the GEMM's sum + 1 for the bias. Its ReLU epilogue bit for bit; a NaN or
    /// Inf in x, or an Inf weight, makes it decline (`None`), and the convolution as dispatched then
    /// gives the reference's non-finite pattern.
    #[test]
    fn winograd_matches_reference() {
        let mut p = Pick(0x3197);
        for (case, g) in winograd_cases() {
            let seed = 5000 + case as u64 * 4;
            let mut x = data(seed, g.n * g.c_in * g.input_volume());
            let mut w = data(seed + 1, g.c_out * g.in_per_group() * g.kernel_volume());
            let dy = vec![0.0f32; g.n * g.c_out * g.output_volume()];
            let bias = (case % 2 == 0).then(|| data(seed + 3, g.c_out));
            let (y_ref, _, _) = reference(&x, &w, &dy, &g);
            let s_abs = winograd_abs(&x, &w, &g);
            let nw = g.kernel.iter().filter(|&&k| k == 3).count();
            let k = (5 * nw + 2 + g.in_per_group()) as f64;
            let u = f64::powi(2.0, -24);
            let gamma = k * u / (1.0 - k * u);
            let y = conv_winograd::forward(&x, &w, bias.as_deref(), &g, false)
                .unwrap_or_else(|| panic!("case {case}: declined finite data {g:?}"));
            for (i, ((got, want), s)) in y.iter().zip(&y_ref).zip(&s_abs).enumerate() {
                let b = bias
                    .as_ref()
                    .map_or(0.0, |b| b[i / g.output_volume() % g.c_out] as f64);
                let bound = gamma * (s + b.abs()) + 1e-30;
                assert!(
                    (*got as f64 - (want + b)).abs() <= bound,
                    "case {case} y[{i}] {got} vs {} (bound {bound:.2e}) {g:?}",
                    want + b
                );
            }
            let y_relu = conv_winograd::forward(&x, &w, bias.as_deref(), &g, true).unwrap();
            let relu_of_y: Vec<f32> = y.iter().map(|&v| relu_f(v)).collect();
            assert_eq!(y_relu, relu_of_y, "case {case} relu epilogue {g:?}");

            let at = p.below(x.len());
            for bad in [f32::NAN, f32::INFINITY] {
                x[at] = bad;
                assert!(
                    conv_winograd::forward(&x, &w, None, &g, false).is_none(),
                    "case {case}: {bad} in x not declined {g:?}"
                );
                let (y_ref, _, _) = reference(&x, &w, &dy, &g);
                let y = forward_with(&x, &w, None, &g, CHUNKING, false);
                for (i, (a, b)) in y.iter().zip(&y_ref).enumerate() {
                    assert_eq!(
                        (a.is_nan(), a.is_infinite()),
                        (b.is_nan(), b.is_infinite()),
                        "case {case} {bad} in x: y[{i}] {a} vs {b} {g:?}"
                    );
                }
            }
            x[at] = 0.5;
            let at = p.below(w.len());
            w[at] = f32::INFINITY;
            assert!(conv_winograd::forward(&x, &w, None, &g, false).is_none());
        }
    }

    /// Winograd F(2, 3)'s weight gradient ([`conv_winograd::backward_weight`]) on
    /// [`winograd_geom`]'s shapes against the f64 reference, per weight within γ_k·S: S the
    /// computation on absolute values ([`winograd_wgrad_abs`]), k = 4 roundings per Winograd axis (1
    /// in Bᵀ, 1 in A, 2 in Gᵀ) + 1 for the product + one per tile of all samples (the chunks' GEMM
    /// sums and their accumulation into dM) + one per thread (the partial sums added). A NaN or Inf
    /// in x or dy makes it decline (`None`): the GEMM path then gives PyTorch's pattern, in which an
    /// Inf in dy meets the zero padding as Inf·0 = NaN (which the f64 reference, skipping padding
    /// taps, does not model).
    #[test]
    fn winograd_weight_gradient_matches_reference() {
        let mut p = Pick(0x3198);
        for (case, g) in winograd_cases() {
            let seed = 9000 + case as u64 * 4;
            let mut x = data(seed, g.n * g.c_in * g.input_volume());
            let w = vec![0.0f32; g.c_out * g.in_per_group() * g.kernel_volume()];
            let mut dy = data(seed + 2, g.n * g.c_out * g.output_volume());
            let (_, _, dw_ref) = reference(&x, &w, &dy, &g);
            let s_abs = winograd_wgrad_abs(&x, &dy, &g);
            let nw = g.kernel.iter().filter(|&&k| k == 3).count();
            let tiles: usize = (0..3)
                .map(|a| g.output[a].div_ceil(if g.kernel[a] == 3 { 2 } else { 1 }))
                .product();
            let k = (4 * nw + 1 + g.n * tiles + rayon::current_num_threads()) as f64;
            let u = f64::powi(2.0, -24);
            let gamma = k * u / (1.0 - k * u);
            let dw = conv_winograd::backward_weight(&x, &dy, &g)
                .unwrap_or_else(|| panic!("case {case}: declined finite data {g:?}"));
            for (i, ((got, want), s)) in dw.iter().zip(&dw_ref).zip(&s_abs).enumerate() {
                let bound = gamma * s + 1e-30;
                assert!(
                    (*got as f64 - want).abs() <= bound,
                    "case {case} dw[{i}] {got} vs {want} (bound {bound:.2e}) {g:?}"
                );
            }
            for bad in [f32::NAN, f32::INFINITY] {
                for in_x in [true, false] {
                    let (data, at) = if in_x {
                        let at = p.below(x.len());
                        (&mut x, at)
                    } else {
                        let at = p.below(dy.len());
                        (&mut dy, at)
                    };
                    let keep = std::mem::replace(&mut data[at], bad);
                    assert!(
                        conv_winograd::backward_weight(&x, &dy, &g).is_none(),
                        "case {case}: {bad} in {} not declined {g:?}",
                        if in_x { "x" } else { "dy" }
                    );
                    if in_x {
                        x[at] = keep;
                    } else {
                        dy[at] = keep;
                    }
                }
            }
        }
    }
}
