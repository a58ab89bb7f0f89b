//! Winograd F(2, 3) along the depth axis for stride-1 3×1×1 convolutions — R(2+1)D-18's temporal
//! layers and I3D's — in the forward pass (with the bias and fused-ReLU epilogue), the data gradient
//! (a forward convolution of dy by the flipped kernel, conv.rs) and the weight gradient.
//!
//! Two outputs along depth, y0 = g0·d0 + g1·d1 + g2·d2 and y1 = g0·d1 + g1·d2 + g2·d3, take four
//! products instead of six (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR
//! 2016): y = Aᵀ[(Gg) ⊙ (Bᵀd)] with the 4×4 Bᵀ, 4×3 G and 2×4 Aᵀ below (those of conv_winograd.rs).
//! The kernel has one tap along height and width, so every (height, width) position is its own 1-D
//! problem and the transforms are linear combinations of whole depth planes: a tile is two output
//! planes, its transform reads four input planes, and the convolution becomes four GEMMs U[p] (C_out/G
//! × C_in/G) · V[p] (C_in/G × positions) — two thirds of the direct convolution's multiply-adds —
//! between two streaming passes over contiguous rows (conv_winograd.rs's 4×4×4 boxes gather one lane
//! per tile instead, and with one Winograd axis did not pay for it: docs/PERFORMANCE.md).
//!
//! F(2, 3), not F(4, 3): F(4, 3) (six products for four outputs, 0.45–0.75 of the direct kernel's
//! time per layer) has constants up to 8 and 1/24 and about twice the direct sum's rounding error;
//! with it two non-local I3D fixtures left their tolerances (docs/PERFORMANCE.md). F(2, 3)'s error is
//! below the direct sum's.
//!
//! Tasks own one tile (two output planes) of one (sample, group) over a run of [`columns`] positions
//! of the (height, width) plane: the task's input transform writes V [C_in/G][4][columns], the GEMMs
//! M [C_out/G][4][columns], and the output transform the task's
//! rows of y.
//!
//! The weight gradient ([`backward_weight`]) takes the same tasks: the forward is linear in the
//! transformed weights, so each position of a tile adds (A·dy) ⊙ (Bᵀd) to their gradient — four GEMMs
//! dM[p] += E[p] · V[p]ᵀ per task, E = A·dy the transpose of the output transform, the positions the
//! reduction — and dW = Gᵀ·dM; tasks are cut into one run per thread, each summing into its own dM
//! (added in order: bit-reproducible for a thread count), as in the other weight gradients.
//!
//! Numerics: every operation is a sum of products, so an output's error is at most γ_k times the same
//! computation on absolute values, with k = 1 rounding in Bᵀ, 1 in U (G applied in f64, rounded once),
//! 1 for the product, C_in/G in the GEMM's sum and 2 in Aᵀ; for the weight gradient
//! k = 1 in Bᵀ, 1 in A, 1 for the product, one per term of the sum over positions and tiles, and 1 for
//! Gᵀ (in f64, rounded once). The transforms mix inputs, so an Inf input could come out NaN where the
//! direct sum gives ±Inf: the caller gets `None` — and takes the other paths, PyTorch's non-finite
//! results — whenever a weight or an output is not finite (the forward), or a weight gradient is not.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::sum_in_order;
use super::conv_winograd::{prefetch, MAX_ACCUMULATOR_FLOATS};
use super::elementwise::{all_finite, relu as relu_f};
use super::linalg::{gemm, Mat};
use crate::backend::ConvGeom;

/// Outputs per tile along depth.
const TILE: usize = 2;
/// Transformed points per tile (GEMMs per tile).
const POINTS: usize = 4;
/// Positions per output-transform step: one AVX vector.
const LANES: usize = 8;

/// Bᵀ: four input planes → four points (spelled out in [`input_rows`]; the tests use the matrix).
#[cfg_attr(not(test), allow(dead_code))]
const BT: [[f64; 4]; 4] = [
    [1.0, 0.0, -1.0, 0.0],
    [0.0, 1.0, 1.0, 0.0],
    [0.0, -1.0, 1.0, 0.0],
    [0.0, 1.0, 0.0, -1.0],
];
/// G: three taps → four points.
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
/// Aᵀ: four points → two outputs (spelled out in [`output_rows`] and, transposed, [`grad_rows`]; the
/// tests use the matrix).
#[cfg_attr(not(test), allow(dead_code))]
const AT: [[f64; 4]; 2] = [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]];

/// Smallest C_in·C_out/(C_in + C_out) per group that takes this path: the GEMMs' work per position
/// grows with C_in·C_out, the transforms' with C_in + C_out.
const MIN_CHANNEL_RATIO: usize = 16;
/// Output depth below which the path does not pay: R(2+1)D-18's layer-4 layers at depth 2 (one tile,
/// 49 positions) measured 1.0–1.4× the GEMM path's time in their data and weight gradients.
const MIN_DEPTH: usize = 4;
/// Floats of V and M together per task (1 MiB: one core's L2 on recent x86 cores, twice this Zen 1's;
/// not tuned).
const TASK_FLOATS: usize = 1 << 18;
/// Input channels ahead of the transform whose rows are prefetched: a task's rows are short runs
/// (a few hundred floats per channel and plane) that the hardware prefetcher does not catch. The
/// input transform had a quarter of the 144 → 64 layer on 2×16×56², waiting on those loads; one
/// channel ahead took the layer from 14.4–14.9 to 13.4–13.7 ms (two or four: no faster).
const PREFETCH_CHANNELS: usize = 1;
/// Fewest positions per task: below it the GEMMs' packing of U costs as much as they compute.
const MIN_COLUMNS: usize = 64;

/// Whether `g` takes this path (stride-1 3×1×1, enough channels, an output depth of at least
/// [`MIN_DEPTH`] and at least 3/4 of the tiles' outputs inside the output), unless `VIDGRAD_CPU_CONV_WINOGRAD=0` (which turns off every Winograd path).
pub(super) fn applies(g: &ConvGeom) -> bool {
    let (ci, co) = (g.in_per_group(), g.out_per_group());
    let tiles = g.output[0].div_ceil(TILE);
    shape_applies(g)
        && ci * co >= MIN_CHANNEL_RATIO * (ci + co)
        && g.output[0] >= MIN_DEPTH
        && 4 * g.output[0] >= 3 * TILE * tiles
        && super::conv_winograd::enabled()
}

/// The shapes the algorithm computes at all: a 3×1×1 kernel, stride 1, dilation 1, no padding along
/// height and width, not depthwise (its own kernel).
fn shape_applies(g: &ConvGeom) -> bool {
    g.kernel == [3, 1, 1]
        && g.stride == [1, 1, 1]
        && g.dilation == [1, 1, 1]
        && g.padding[1] == 0
        && g.padding[2] == 0
        && !g.is_depthwise()
}

/// Positions of the (height, width) plane per task: V and M within [`TASK_FLOATS`], a multiple of
/// [`LANES`] (but the whole plane if smaller), and small enough to give every thread four tasks where
/// the plane allows it.
fn columns(g: &ConvGeom) -> usize {
    let plane = g.output[1] * g.output[2];
    let by_cache = TASK_FLOATS / (POINTS * (g.in_per_group() + g.out_per_group()));
    let others = g.n * g.groups * g.output[0].div_ceil(TILE);
    let by_threads = plane.div_ceil((4 * rayon::current_num_threads()).div_ceil(others));
    let cols = by_cache
        .min(by_threads)
        .max(MIN_COLUMNS)
        .next_multiple_of(LANES);
    cols.min(plane)
}

/// U [groups][points][C_out/G][C_in/G]: each kernel transformed by G in f64, rounded once.
fn transform_weights(w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let mut u = vec![0.0f32; g.groups * POINTS * cout_g * cin_g];
    for (co, kernels) in w.chunks_exact(cin_g * 3).enumerate() {
        let (gi, co_g) = (co / cout_g, co % cout_g);
        for (ci, taps) in kernels.chunks_exact(3).enumerate() {
            for (p, row) in G.iter().enumerate() {
                let v: f64 = row.iter().zip(taps).map(|(c, &t)| c * t as f64).sum();
                u[((gi * POINTS + p) * cout_g + co_g) * cin_g + ci] = v as f32;
            }
        }
    }
    u
}

/// Tile `tile` (two output planes) of sample·group `ng` over positions `c0..c0 + cols` of the
/// (height, width) plane: one task.
#[derive(Clone, Copy)]
struct Span {
    ng: usize,
    tile: usize,
    c0: usize,
    cols: usize,
}

impl Span {
    /// Output planes of the tile inside the output (the last tile's may be one).
    fn planes(&self, g: &ConvGeom) -> usize {
        TILE.min(g.output[0] - self.tile * TILE)
    }
}

/// Every task of `g` with runs of `cols` positions, in (sample·group, tile, run) order.
fn spans(g: &ConvGeom, cols: usize) -> Vec<Span> {
    let plane = g.output[1] * g.output[2];
    let (tiles, runs) = (g.output[0].div_ceil(TILE), plane.div_ceil(cols));
    (0..g.n * g.groups * tiles * runs)
        .map(|i| Span {
            ng: i / (tiles * runs),
            tile: i / runs % tiles,
            c0: i % runs * cols,
            cols: cols.min(plane - i % runs * cols),
        })
        .collect()
}

/// The forward's tasks: every span with its pieces of y — that run of the tile's output rows in
/// every output channel of the group, in (channel, plane) order.
fn tasks<'a, T>(y: &'a mut [T], g: &ConvGeom, cols: usize) -> Vec<(Span, Vec<&'a mut [T]>)> {
    let plane = g.output[1] * g.output[2];
    let (cout_g, depth) = (g.out_per_group(), g.output[0]);
    let (tiles, runs) = (depth.div_ceil(TILE), plane.div_ceil(cols));
    let mut tasks: Vec<(Span, Vec<&mut [T]>)> = spans(g, cols)
        .into_iter()
        .map(|span| (span, Vec::with_capacity(cout_g * TILE)))
        .collect();
    for (ng, block) in y.chunks_mut(cout_g * depth * plane).enumerate() {
        for (r, mut rest) in block.chunks_mut(plane).enumerate() {
            let first = (ng * tiles + r % depth / TILE) * runs;
            for (span, rows) in &mut tasks[first..first + runs] {
                let (piece, tail) = std::mem::take(&mut rest).split_at_mut(span.cols);
                rows.push(piece);
                rest = tail;
            }
        }
    }
    tasks
}

/// `g`'s forward pass by Winograd F(2, 3) along depth, plus `bias` (ReLU'd when `relu`: the fused
/// epilogue), or `None` where it would not give PyTorch's result: a weight or an output not finite
/// (then the caller's other paths run).
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeom,
    relu: bool,
) -> Option<Vec<f32>> {
    debug_assert!(
        shape_applies(g),
        "Winograd F(2,3) along depth called on {g:?}"
    );
    if !all_finite(w) {
        return None;
    }
    let u = transform_weights(w, g);
    // Not zero-filled: the output transform writes every element (as conv_winograd.rs).
    let len = g.n * g.c_out * g.output_volume();
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let finite = run(
        x,
        &u,
        g,
        Epilogue { bias, relu },
        &mut y.spare_capacity_mut()[..len],
    );
    // SAFETY: the tasks' pieces cover y (every output channel's rows of every tile of every
    // sample·group), and the output transform stores every element of a piece.
    unsafe { y.set_len(len) };
    finite.then_some(y)
}

/// What the output transform adds to each output channel's rows.
#[derive(Clone, Copy)]
struct Epilogue<'a> {
    bias: Option<&'a [f32]>,
    relu: bool,
}

/// y ← the convolution of `x` by the transformed weights `u` and the epilogue, task by task in
/// parallel; whether every output was finite.
fn run(x: &[f32], u: &[f32], g: &ConvGeom, epilogue: Epilogue, y: &mut [MaybeUninit<f32>]) -> bool {
    let cols = columns(g);
    let tasks = tasks(y, g, cols);
    let job = Job::new(x, g, cols, tasks.len());
    tasks
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(v, m, zeros), (span, mut rows)| {
                job.input_transform(&span, v, zeros);
                job.products(&span, u, v, m);
                job.output_transform(&span, m, epilogue, &mut rows)
            },
        )
        .reduce(|| true, |a, b| a && b)
}

/// dW of `g` by Winograd F(2, 3) along depth, or `None` where it is not finite (an input was not;
/// then the caller's other path runs). The forward y = Aᵀ[(Gg) ⊙ (Bᵀd)] is linear in Gg, so per tile
/// and position dL/d(Gg) = (A·dy) ⊙ (Bᵀd); summed, dM[p] (C_out/G × C_in/G) = Σ_positions E[p] ·
/// V[p]ᵀ, one GEMM per point with the task's positions as the reduction, and dW = Gᵀ·dM.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &ConvGeom) -> Option<Vec<f32>> {
    debug_assert!(
        shape_applies(g),
        "Winograd F(2,3) along depth called on {g:?}"
    );
    let cols = columns(g);
    let spans = spans(g, cols);
    let dm_len = g.groups * POINTS * g.out_per_group() * g.in_per_group();
    let threads = rayon::current_num_threads();
    let parts = threads
        .min(spans.len())
        .min(MAX_ACCUMULATOR_FLOATS / dm_len)
        .max(1);
    let job = Job::new(x, g, cols, parts);
    // As the other weight gradients: one contiguous run of tasks per part, summed in order
    // (bit-reproducible for a thread count).
    let dm = sum_in_order(&spans, parts, dm_len, |run, dm| {
        let (mut v, mut e, mut zeros) = (Vec::new(), Vec::new(), Vec::new());
        for span in run {
            job.input_transform(span, &mut v, &mut zeros);
            job.grad_transform(span, dy, &mut e, &mut zeros);
            job.weight_products(span, &v, &e, dm);
        }
    });
    let dw = inverse_weight_transform(&dm, g);
    all_finite(&dw).then_some(dw)
}

/// dW [C_out][C_in/G][3] ← Gᵀ (each kernel's four points of dM), in f64, rounded once.
fn inverse_weight_transform(dm: &[f32], g: &ConvGeom) -> Vec<f32> {
    let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
    let mut dw = vec![0.0f32; g.c_out * cin_g * 3];
    for (co, kernels) in dw.chunks_exact_mut(cin_g * 3).enumerate() {
        let (gi, co_g) = (co / cout_g, co % cout_g);
        for (ci, taps) in kernels.chunks_exact_mut(3).enumerate() {
            for (k, tap) in taps.iter_mut().enumerate() {
                let at = |p: usize| dm[((gi * POINTS + p) * cout_g + co_g) * cin_g + ci] as f64;
                *tap = (0..POINTS).map(|p| G[p][k] * at(p)).sum::<f64>() as f32;
            }
        }
    }
    dw
}

/// What every task of one convolution shares.
struct Job<'a> {
    x: &'a [f32],
    g: &'a ConvGeom,
    /// Floats per row of V, M and E (the tasks' columns rounded up to whole vectors).
    ld: usize,
    /// Fewer tasks than threads: the GEMMs go parallel.
    few: bool,
}

impl<'a> Job<'a> {
    fn new(x: &'a [f32], g: &'a ConvGeom, cols: usize, tasks: usize) -> Self {
        Job {
            x,
            g,
            ld: cols.next_multiple_of(LANES),
            few: tasks < rayon::current_num_threads(),
        }
    }

    /// V [C_in/G][points][ld] ← Bᵀ (the tile's four input rows) per input channel; rows outside the
    /// input (the depth padding) read `zeros`.
    fn input_transform(&self, t: &Span, v: &mut Vec<f32>, zeros: &mut Vec<f32>) {
        let g = self.g;
        let (cin_g, depth, plane) = (g.in_per_group(), g.input[0], g.input[1] * g.input[2]);
        v.resize(cin_g * POINTS * self.ld, 0.0);
        zeros.resize(t.cols, 0.0);
        let first = (t.tile * TILE) as isize - g.padding[0] as isize;
        with_avx2!({
            let rows_of_channel = |ci: usize| -> [&[f32]; POINTS] {
                let channel = &self.x[(t.ng * cin_g + ci) * depth * plane..];
                std::array::from_fn(|j| {
                    let d = first + j as isize;
                    if d < 0 || d >= depth as isize {
                        &zeros[..]
                    } else {
                        &channel[d as usize * plane + t.c0..][..t.cols]
                    }
                })
            };
            for (ci, dst) in v.chunks_exact_mut(POINTS * self.ld).enumerate() {
                if ci + PREFETCH_CHANNELS < cin_g {
                    rows_of_channel(ci + PREFETCH_CHANNELS)
                        .into_iter()
                        .for_each(prefetch);
                }
                input_rows(rows_of_channel(ci), rows_of(dst, self.ld, t.cols));
            }
        })
    }

    /// E [C_out/G][points][ld] ← A (the tile's two rows of dy) per output channel; rows past the
    /// output read `zeros`.
    fn grad_transform(&self, t: &Span, dy: &[f32], e: &mut Vec<f32>, zeros: &mut Vec<f32>) {
        let g = self.g;
        let (cout_g, depth, plane) = (g.out_per_group(), g.output[0], g.output[1] * g.output[2]);
        e.resize(cout_g * POINTS * self.ld, 0.0);
        zeros.resize(t.cols, 0.0);
        let planes = t.planes(g);
        with_avx2!({
            for (co, dst) in e.chunks_exact_mut(POINTS * self.ld).enumerate() {
                let channel = &dy[(t.ng * cout_g + co) * depth * plane..];
                let rows: [&[f32]; TILE] = std::array::from_fn(|i| {
                    if i < planes {
                        &channel[(t.tile * TILE + i) * plane + t.c0..][..t.cols]
                    } else {
                        &zeros[..]
                    }
                });
                grad_rows(rows, rows_of(dst, self.ld, t.cols));
            }
        })
    }

    /// M[·][p][·] (C_out/G × columns) = U[group][p] · V[·][p][·], one GEMM per point.
    fn products(&self, t: &Span, u: &[f32], v: &[f32], m: &mut Vec<f32>) {
        let (cin_g, cout_g) = (self.g.in_per_group(), self.g.out_per_group());
        let gi = t.ng % self.g.groups;
        let stride = POINTS * self.ld;
        m.resize(cout_g * stride, 0.0);
        for p in 0..POINTS {
            let up = &u[(gi * POINTS + p) * cout_g * cin_g..][..cout_g * cin_g];
            let vp = Mat {
                data: &v[p * self.ld..],
                rs: stride,
                cs: 1,
            };
            gemm(
                cout_g,
                t.cols,
                cin_g,
                Mat::new(up, cin_g, false),
                vp,
                &mut m[p * self.ld..],
                stride,
                false,
                self.few,
            );
        }
    }

    /// dM[group][p] (C_out/G × C_in/G) += E[·][p][·] · V[·][p][·]ᵀ over the task's positions, one
    /// GEMM per point.
    fn weight_products(&self, t: &Span, v: &[f32], e: &[f32], dm: &mut [f32]) {
        let (cin_g, cout_g) = (self.g.in_per_group(), self.g.out_per_group());
        let gi = t.ng % self.g.groups;
        let stride = POINTS * self.ld;
        for p in 0..POINTS {
            let ep = Mat {
                data: &e[p * self.ld..],
                rs: stride,
                cs: 1,
            };
            let vp_t = Mat {
                data: &v[p * self.ld..],
                rs: 1,
                cs: stride,
            };
            gemm(
                cout_g,
                cin_g,
                t.cols,
                ep,
                vp_t,
                &mut dm[(gi * POINTS + p) * cout_g * cin_g..][..cout_g * cin_g],
                cin_g,
                true,
                self.few,
            );
        }
    }

    /// The task's rows of y ← Aᵀ (each output channel's four M rows) + bias, ReLU'd when fused.
    /// Whether every output was finite.
    fn output_transform(
        &self,
        t: &Span,
        m: &[f32],
        epilogue: Epilogue,
        rows: &mut [&mut [MaybeUninit<f32>]],
    ) -> bool {
        let g = self.g;
        let first_channel = t.ng % g.groups * g.out_per_group();
        let mut probe = [0.0f32; LANES];
        with_avx2!({
            for (co, (src, dst)) in m
                .chunks_exact(POINTS * self.ld)
                .zip(rows.chunks_mut(t.planes(g)))
                .enumerate()
            {
                let bias = epilogue.bias.map_or(0.0, |b| b[first_channel + co]);
                output_rows(src, self.ld, bias, epilogue.relu, dst, &mut probe);
            }
        });
        probe.iter().all(|v| *v == 0.0)
    }
}

/// The four rows (of `ld` floats, each cut to `cols`) of one channel's block of V or E.
#[inline(always)]
fn rows_of(dst: &mut [f32], ld: usize, cols: usize) -> [&mut [f32]; POINTS] {
    let mut rows = dst.chunks_exact_mut(ld).map(|row| &mut row[..cols]);
    std::array::from_fn(|_| rows.next().expect("a block of four rows"))
}

/// One input channel's four transformed rows from its four input rows (all as long): Bᵀ.
#[inline(always)]
fn input_rows(r: [&[f32]; POINTS], [v0, v1, v2, v3]: [&mut [f32]; POINTS]) {
    let cols = v0.len();
    let [r0, r1, r2, r3] = r.map(|row| &row[..cols]);
    for c in 0..cols {
        let (d0, d1, d2, d3) = (r0[c], r1[c], r2[c], r3[c]);
        v0[c] = d0 - d2;
        v1[c] = d1 + d2;
        v2[c] = d2 - d1;
        v3[c] = d1 - d3;
    }
}

/// One output channel's four gradient rows from the tile's two rows of dy (all as long): A·dy, the
/// transpose of Aᵀ.
#[inline(always)]
fn grad_rows([e0, e1]: [&[f32]; TILE], [p0, p1, p2, p3]: [&mut [f32]; POINTS]) {
    let cols = p0.len();
    let (e0, e1) = (&e0[..cols], &e1[..cols]);
    for c in 0..cols {
        p0[c] = e0[c];
        p1[c] = e0[c] + e1[c];
        p2[c] = e0[c] - e1[c];
        p3[c] = -e1[c];
    }
}

/// One output channel's rows of the tile (`dst`: the first `dst.len()` of its two planes) from its
/// four M rows (`m`, rows of `ld`): Aᵀ, + `bias`, ReLU'd when `relu`. Every value before the ReLU
/// times 0 is added to `probe` (NaN there: one was not finite).
#[inline(always)]
fn output_rows(
    m: &[f32],
    ld: usize,
    bias: f32,
    relu: bool,
    dst: &mut [&mut [MaybeUninit<f32>]],
    probe: &mut [f32; LANES],
) {
    let cols = dst[0].len();
    let row = |p: usize| &m[p * ld..][..ld];
    let (m0, m1, m2, m3) = (row(0), row(1), row(2), row(3));
    // Whole vectors into a block of two rows (computed for both planes, stored for those inside;
    // M's columns past `cols` hold stale values, computed but neither stored nor probed).
    let mut block = [[0.0f32; LANES]; TILE];
    for c0 in (0..cols).step_by(LANES) {
        let at = |row: &[f32]| -> [f32; LANES] { row[c0..c0 + LANES].try_into().unwrap() };
        let (m0, m1, m2, m3) = (at(m0), at(m1), at(m2), at(m3));
        for l in 0..LANES {
            block[0][l] = ((m0[l] + m1[l]) + m2[l]) + bias;
            block[1][l] = ((m1[l] - m2[l]) - m3[l]) + bias;
        }
        let width = LANES.min(cols - c0);
        for (out, values) in dst.iter_mut().zip(&block) {
            if width == LANES {
                for l in 0..LANES {
                    probe[l] += values[l] * 0.0;
                }
            } else {
                for l in 0..width {
                    probe[l] += values[l] * 0.0;
                }
            }
            for (d, s) in out[c0..c0 + width].iter_mut().zip(values) {
                d.write(if relu { relu_f(*s) } else { *s });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (|Bᵀ||x|)[p] at position `pos` of the tile whose first input plane is `first` (planes
    /// outside the input, the depth padding, are zero), in f64.
    fn abs_input_point(
        xc: &[f32],
        first: isize,
        depth: usize,
        plane: usize,
        pos: usize,
        p: usize,
    ) -> f64 {
        (0..POINTS)
            .filter_map(|j| {
                let dz = first + j as isize;
                (dz >= 0 && dz < depth as isize)
                    .then(|| BT[p][j].abs() * xc[dz as usize * plane + pos].abs() as f64)
            })
            .sum()
    }

    /// Σ over input channels and points of |Aᵀ|·(|G||w|)·(|Bᵀ||x|) per output, in f64: the forward on
    /// absolute values (in y's order).
    fn forward_abs(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f64> {
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let (depth, plane) = (g.input[0], g.input[1] * g.input[2]);
        let mut out = vec![0.0f64; g.n * g.c_out * g.output_volume()];
        for (yi, s) in out.iter_mut().enumerate() {
            let (n, co) = (
                yi / g.output_volume() / g.c_out,
                yi / g.output_volume() % g.c_out,
            );
            let (d, pos) = (yi % g.output_volume() / plane, yi % plane);
            let (tile, i) = (d / TILE, d % TILE);
            let first = (tile * TILE) as isize - g.padding[0] as isize;
            for ci in 0..cin_g {
                let xc = &x[(n * g.c_in + co / cout_g * cin_g + ci) * depth * plane..];
                let wc = &w[(co * cin_g + ci) * 3..][..3];
                for p in 0..POINTS {
                    let gw: f64 = (0..3).map(|k| G[p][k].abs() * wc[k].abs() as f64).sum();
                    let bx = abs_input_point(xc, first, depth, plane, pos, p);
                    *s += AT[i][p].abs() * gw * bx;
                }
            }
        }
        out
    }

    /// The direct convolution in f64 (conv.rs's test reference).
    fn reference(x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f64> {
        let dy = vec![0.0; g.n * g.c_out * g.output_volume()];
        super::super::conv::tests::reference(x, w, &dy, g).0
    }

    /// The weight gradient in f64 (conv.rs's test reference).
    fn weight_grad_reference(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f64> {
        let w = vec![0.0; g.c_out * g.in_per_group() * 3];
        super::super::conv::tests::reference(x, &w, dy, g).2
    }

    fn geom(n: usize, c: [usize; 2], groups: usize, input: [usize; 3], pad: usize) -> ConvGeom {
        ConvGeom {
            n,
            c_in: c[0],
            c_out: c[1],
            groups,
            input,
            output: [input[0] + 2 * pad - 2, input[1], input[2]],
            kernel: [3, 1, 1],
            stride: [1; 3],
            padding: [pad, 0, 0],
            dilation: [1; 3],
        }
    }

    /// Shapes: partial last tiles (output depths 1–16), paddings 0–2, groups, planes smaller than a
    /// vector and not a multiple of one, several tasks per plane, more tasks than threads and fewer.
    fn cases() -> Vec<ConvGeom> {
        vec![
            geom(1, [5, 7], 1, [6, 3, 5], 1),
            geom(2, [8, 6], 2, [10, 4, 4], 1),
            geom(1, [3, 4], 1, [3, 1, 1], 0),
            geom(1, [9, 9], 1, [5, 2, 3], 2),
            geom(2, [20, 17], 1, [7, 9, 13], 1),
            geom(1, [36, 40], 1, [16, 20, 20], 1),
            geom(1, [4, 12], 4, [8, 5, 7], 1),
        ]
    }

    /// The forward with a bias against the f64 direct sum, per output within γ_k·(S + |bias|): S the
    /// computation on absolute values ([`forward_abs`]), k = C_in/G + 6 (module docs). A NaN or ±Inf
    /// in x, or an Inf weight, makes it decline (`None`; the caller's other paths, tested in conv.rs, then run).
    #[test]
    fn matches_the_direct_sum_within_the_bound() {
        for (case, g) in cases().iter().enumerate() {
            let seed = 7100 + 4 * case as u64;
            let mut x = crate::backend::cpu::test_data(g.n * g.c_in * g.input_volume(), seed);
            let mut w = crate::backend::cpu::test_data(g.c_out * g.in_per_group() * 3, seed + 1);
            let bias = crate::backend::cpu::test_data(g.c_out, seed + 2);
            let (want, s_abs) = (reference(&x, &w, g), forward_abs(&x, &w, g));
            let k = (g.in_per_group() + 6) as f64;
            let u = f64::powi(2.0, -24);
            let gamma = k * u / (1.0 - k * u);
            let y = forward(&x, &w, Some(&bias), g, false)
                .unwrap_or_else(|| panic!("case {case}: declined finite data {g:?}"));
            assert_eq!(y.len(), want.len());
            for (i, ((got, want), s)) in y.iter().zip(&want).zip(&s_abs).enumerate() {
                let b = bias[i / g.output_volume() % g.c_out];
                let bound = gamma * (s + b.abs() as f64) + 1e-30;
                assert!(
                    (*got as f64 - (want + b as f64)).abs() <= bound,
                    "case {case} y[{i}] {got} vs {want} + {b} (bound {bound:.2e}) {g:?}"
                );
            }
            // The fused ReLU is the ReLU of the same sums, bit for bit.
            let y_relu = forward(&x, &w, Some(&bias), g, true).expect("finite data");
            assert!(
                y_relu
                    .iter()
                    .zip(&y)
                    .all(|(r, v)| r.to_bits() == relu_f(*v).to_bits()),
                "case {case}: fused ReLU {g:?}"
            );

            let at = (seed as usize * 7919) % x.len();
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                x[at] = bad;
                assert!(
                    forward(&x, &w, None, g, false).is_none(),
                    "case {case}: {bad} in x not declined {g:?}"
                );
            }
            x[at] = 0.5;
            let at = (seed as usize * 31) % w.len();
            w[at] = f32::INFINITY;
            assert!(forward(&x, &w, None, g, false).is_none(), "case {case}");
        }
    }

    /// The bound is tight enough to catch a wrong transform: a G constant off by 10⁻⁴ fails it.
    #[test]
    fn a_wrong_constant_fails_the_bound() {
        let g = geom(1, [8, 8], 1, [8, 4, 4], 1);
        let x = crate::backend::cpu::test_data(g.n * g.c_in * g.input_volume(), 7190);
        let w = crate::backend::cpu::test_data(g.c_out * g.in_per_group() * 3, 7191);
        let mut u = transform_weights(&w, &g);
        u[3 * 8 * 8] *= 1.0 + 1e-4; // point 3's first weight
        let mut y = vec![MaybeUninit::new(0.0f32); g.n * g.c_out * g.output_volume()];
        let plain = Epilogue {
            bias: None,
            relu: false,
        };
        assert!(run(&x, &u, &g, plain, &mut y));
        // SAFETY: initialised above (and written by `run`).
        let y: Vec<f32> = y.iter().map(|v| unsafe { v.assume_init() }).collect();
        let (want, s_abs) = (reference(&x, &w, &g), forward_abs(&x, &w, &g));
        let k = (g.in_per_group() + 5) as f64;
        let gamma = k * f64::powi(2.0, -24) / (1.0 - k * f64::powi(2.0, -24));
        let worst = y
            .iter()
            .zip(&want)
            .zip(&s_abs)
            .map(|((got, want), s)| (*got as f64 - want).abs() / (gamma * s))
            .fold(0.0, f64::max);
        assert!(
            worst > 1.0,
            "off constant within the bound ({worst:.2} of it)"
        );
    }

    /// Σ over samples, tiles, positions and points of |G|ᵀ·((|A||dy|) ⊙ (|Bᵀ||x|)) per weight, in
    /// f64: the weight gradient on absolute values (in dw's order).
    fn weight_grad_abs(x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f64> {
        let (cin_g, cout_g) = (g.in_per_group(), g.out_per_group());
        let (depth, plane) = (g.input[0], g.input[1] * g.input[2]);
        let mut dw = vec![0.0f64; g.c_out * cin_g * 3];
        for (i, s) in dw.iter_mut().enumerate() {
            let (co, ci, k) = (i / (cin_g * 3), i / 3 % cin_g, i % 3);
            for n in 0..g.n {
                let dyc = &dy[(n * g.c_out + co) * g.output_volume()..];
                let xc = &x[(n * g.c_in + co / cout_g * cin_g + ci) * depth * plane..];
                for tile in 0..g.output[0].div_ceil(TILE) {
                    let first = (tile * TILE) as isize - g.padding[0] as isize;
                    for pos in 0..plane {
                        for p in 0..POINTS {
                            let e: f64 = (0..TILE)
                                .filter(|i| tile * TILE + i < g.output[0])
                                .map(|i| {
                                    AT[i][p].abs()
                                        * dyc[(tile * TILE + i) * plane + pos].abs() as f64
                                })
                                .sum();
                            let v = abs_input_point(xc, first, depth, plane, pos, p);
                            *s += G[p][k].abs() * e * v;
                        }
                    }
                }
            }
        }
        dw
    }

    /// The weight gradient against the f64 direct sum, per weight within γ_k·S: S the computation on
    /// absolute values ([`weight_grad_abs`]), k = 1 rounding in Bᵀ + 1 in A + 1 for the product + R
    /// for the sum of the R = N·tiles·H·W terms per point + 1 for Gᵀ (in f64, rounded once). A NaN or
    /// ±Inf in x makes it decline (`None`; the GEMM path, tested in conv.rs, then runs).
    #[test]
    fn weight_gradient_matches_the_direct_sum_within_the_bound() {
        for (case, g) in cases().iter().enumerate() {
            let seed = 7300 + 4 * case as u64;
            let mut x = crate::backend::cpu::test_data(g.n * g.c_in * g.input_volume(), seed);
            let dy = crate::backend::cpu::test_data(g.n * g.c_out * g.output_volume(), seed + 1);
            let (want, s_abs) = (
                weight_grad_reference(&x, &dy, g),
                weight_grad_abs(&x, &dy, g),
            );
            let terms = g.n * g.output[0].div_ceil(TILE) * g.output[1] * g.output[2];
            let k = (terms + 4) as f64;
            let u = f64::powi(2.0, -24);
            let gamma = k * u / (1.0 - k * u);
            let dw = backward_weight(&x, &dy, g)
                .unwrap_or_else(|| panic!("case {case}: declined finite data {g:?}"));
            assert_eq!(dw.len(), want.len());
            for (i, ((got, want), s)) in dw.iter().zip(&want).zip(&s_abs).enumerate() {
                let bound = gamma * s + 1e-30;
                assert!(
                    (*got as f64 - want).abs() <= bound,
                    "case {case} dw[{i}] {got} vs {want} (bound {bound:.2e}) {g:?}"
                );
            }
            let at = (seed as usize * 7919) % x.len();
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                x[at] = bad;
                assert!(
                    backward_weight(&x, &dy, g).is_none(),
                    "case {case}: {bad} in x not declined {g:?}"
                );
            }
        }
    }

    /// Which of R(2+1)D-18's temporal layers take this path.
    #[test]
    fn applies_to_the_temporal_layers_that_pay() {
        assert!(applies(&geom(1, [144, 64], 1, [16, 56, 56], 1)));
        assert!(applies(&geom(1, [576, 256], 1, [4, 14, 14], 1)));
        assert!(!applies(&geom(1, [1152, 512], 1, [2, 7, 7], 1)), "depth 2");
        assert!(
            !applies(&geom(1, [144, 64], 1, [1, 56, 56], 1)),
            "1 of a tile's 2 outputs"
        );
        assert!(
            !applies(&geom(1, [8, 8], 1, [16, 56, 56], 1)),
            "few channels"
        );
        let mut strided = geom(1, [288, 128], 1, [16, 28, 28], 1);
        strided.stride = [2, 1, 1];
        assert!(!applies(&strided));
    }
}
