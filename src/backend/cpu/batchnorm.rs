//! Batch norm over [outer, C, inner]: statistics in f64 (two passes), parallel over channels; the
//! backward's sums in f32 blocks added in f64 (as PyTorch's f32 vector sums, but with an error bound
//! that does not grow with the row) and its dx in f32, channel by channel where rows are long (each
//! channel's x and dy read for the sums, then again from cache for dx).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use std::ops::Range;

use super::elementwise::{par_fill, par_new, relu, relu_grad, stream_into, streams, LINE};
use crate::backend::AxisGeom;

/// Visit every value of channel c.
fn channel<'a>(x: &'a [f32], g: AxisGeom, c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..g.outer).map(move |o| {
        let base = (o * g.axis + c) * g.inner;
        &x[base..base + g.inner]
    })
}

/// The backward's dy (and a fused ReLU's output) as rows of [C, inner]: row o at `offset + o·stride`
/// of `data`. A whole buffer has stride C·inner; a piece of concat's gradient or a producer's slice of
/// a concat's output (views, `split_views`) is read in place with the stride of the concatenated rows.
#[derive(Clone, Copy)]
pub(super) struct OuterRows<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub stride: usize,
}

impl<'a> OuterRows<'a> {
    /// No rows (the ReLU mask of a plain batch norm, never read).
    const EMPTY: OuterRows<'static> = OuterRows {
        data: &[],
        offset: 0,
        stride: 0,
    };
    /// A contiguous [outer, C, inner] buffer.
    fn whole(data: &'a [f32], g: AxisGeom) -> Self {
        OuterRows {
            data,
            offset: 0,
            stride: g.axis * g.inner,
        }
    }
    /// Channel c's row o.
    #[inline(always)]
    fn row(&self, g: AxisGeom, o: usize, c: usize) -> &'a [f32] {
        let base = self.offset + o * self.stride + c * g.inner;
        &self.data[base..base + g.inner]
    }
}

/// Independent f64 partial sums per row: one accumulator would chain every addition through the add's
/// latency (a quarter of the memory bandwidth on the development machine); eight side by side run at
/// the loads' speed and vectorise. Only the order of the f64 additions changes (each rounds by at most
/// 2⁻⁵³ relative, far below the f32 the sums end in).
const LANES: usize = 8;

/// Σ term(d, v, r) over equally long rows dy, x and r, in [`LANES`] partial sums of two quantities.
#[inline(always)]
fn lane_sums2(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    term: impl Fn(f32, f32, f32) -> (f64, f64),
) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; LANES], [0f64; LANES]);
    let (dc, xc, rc) = (
        dy.chunks_exact(LANES),
        x.chunks_exact(LANES),
        r.chunks_exact(LANES),
    );
    let (mut ta, mut tb) = (0.0, 0.0);
    for ((&d, &v), &r) in dc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .zip(rc.remainder())
    {
        let (p, q) = term(d, v, r);
        ta += p;
        tb += q;
    }
    for ((d, v), r) in dc.zip(xc).zip(rc) {
        for i in 0..LANES {
            let (p, q) = term(d[i], v[i], r[i]);
            a[i] += p;
            b[i] += q;
        }
    }
    (a.iter().sum::<f64>() + ta, b.iter().sum::<f64>() + tb)
}

/// Lanes of [`block_sums2`]'s f32 partial sums (four AVX2 registers per quantity).
const F32_LANES: usize = 32;
/// Elements per block of [`block_sums2`]: each lane adds 8 terms in f32, then the block's lanes are
/// added into f64 accumulators.
const BLOCK: usize = 8 * F32_LANES;

/// Σ term(d, v, r) over equally long rows, as [`lane_sums2`] but with f32 terms summed in f32 within
/// blocks of [`BLOCK`] elements (8 per lane) and the blocks' sums in f64: the arithmetic of f32 vectors
/// (a fifth of the instructions of f64 conversions and sums), with an error bound that does not grow
/// with the row — every value is within γ₇·Σ|term| of the exact sum of the f32 terms, where PyTorch's
/// f32 vector sums over a whole row are within γ_(row/8). The last block may be shorter (whole groups
/// of [`F32_LANES`]); fewer than F32_LANES elements at the end go to [`lane_sums2`].
#[inline(always)]
fn block_sums2(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    term: impl Fn(f32, f32, f32) -> (f32, f32),
) -> (f64, f64) {
    let mut sums = ([0f64; F32_LANES], [0f64; F32_LANES]);
    let full = dy.len() / BLOCK * BLOCK;
    for start in (0..full).step_by(BLOCK) {
        add_groups::<8>(&dy[start..], &x[start..], &r[start..], &term, &mut sums);
    }
    // the short block, its number of groups a constant in each arm: a loop over a run-time count
    // kept the lanes on the stack, and rows shorter than a block (196: 4×7×7) had spent four fifths
    // of their backward in lane_sums2's f64
    let (d, v, rr) = (&dy[full..], &x[full..], &r[full..]);
    let groups = d.len() / F32_LANES;
    match groups {
        0 => {}
        1 => add_groups::<1>(d, v, rr, &term, &mut sums),
        2 => add_groups::<2>(d, v, rr, &term, &mut sums),
        3 => add_groups::<3>(d, v, rr, &term, &mut sums),
        4 => add_groups::<4>(d, v, rr, &term, &mut sums),
        5 => add_groups::<5>(d, v, rr, &term, &mut sums),
        6 => add_groups::<6>(d, v, rr, &term, &mut sums),
        _ => add_groups::<7>(d, v, rr, &term, &mut sums),
    }
    let rest = full + groups * F32_LANES;
    let (ta, tb) = lane_sums2(&dy[rest..], &x[rest..], &r[rest..], |d, v, r| {
        let (p, q) = term(d, v, r);
        (p as f64, q as f64)
    });
    (
        sums.0.iter().sum::<f64>() + ta,
        sums.1.iter().sum::<f64>() + tb,
    )
}

/// The first G·[`F32_LANES`] terms of the rows, G per lane summed in f32, added into the f64 lanes.
#[inline(always)]
fn add_groups<const G: usize>(
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    term: &impl Fn(f32, f32, f32) -> (f32, f32),
    (a64, b64): &mut ([f64; F32_LANES], [f64; F32_LANES]),
) {
    let n = G * F32_LANES;
    let (d, v, r) = (&dy[..n], &x[..n], &r[..n]);
    let (mut a, mut b) = ([0f32; F32_LANES], [0f32; F32_LANES]);
    for j in (0..n).step_by(F32_LANES) {
        for i in 0..F32_LANES {
            let (p, q) = term(d[j + i], v[j + i], r[j + i]);
            a[i] += p;
            b[i] += q;
        }
    }
    for i in 0..F32_LANES {
        a64[i] += a[i] as f64;
        b64[i] += b[i] as f64;
    }
}

/// Σ term(v) over a row, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(x: &[f32], term: impl Fn(f32) -> f64) -> f64 {
    lane_sums2(x, x, x, |v, _, _| (term(v), 0.0)).0
}

/// Channel c's mean and biased variance: two passes of f64 sums.
#[inline(always)]
fn channel_statistics(x: &[f32], g: AxisGeom, c: usize) -> (f32, f32) {
    let count = (g.outer * g.inner) as f64;
    // Plain loops, not `map(..).sum()`: an iterator adapter's fold is a function of its own, compiled
    // without the caller's AVX2 (the f64 sums then ran scalar, `perf annotate`).
    let mut sum = 0.0;
    for row in channel(x, g, c) {
        sum += lane_sum(row, |v| v as f64);
    }
    let mean = sum / count;
    let mut sq = 0.0;
    for row in channel(x, g, c) {
        sq += lane_sum(row, |v| (v as f64 - mean).powi(2));
    }
    (mean as f32, (sq / count) as f32)
}

/// Per-channel mean and biased variance.
pub(super) fn statistics(x: &[f32], g: AxisGeom) -> (Vec<f32>, Vec<f32>) {
    let stats: Vec<(f32, f32)> = (0..g.axis)
        .into_par_iter()
        .map(|c| with_avx2!(channel_statistics(x, g, c)))
        .collect();
    stats.into_iter().unzip()
}

/// y = (x − mean)·rsqrt(var + eps)·w + b per channel, then max(y, 0) with `relu` (the fused
/// BN → ReLU), as y = x·scale + shift.
pub(super) struct Normalize {
    affine: Vec<(f32, f32)>,
    relu: bool,
}

impl Normalize {
    pub(super) fn new(
        w: Option<&[f32]>,
        b: Option<&[f32]>,
        mean: &[f32],
        var: &[f32],
        eps: f32,
        relu: bool,
    ) -> Normalize {
        let affine = (0..mean.len())
            .map(|c| {
                let scale = w.map_or(1.0, |w| w[c]) / (var[c] + eps).sqrt();
                (scale, b.map_or(0.0, |b| b[c]) - mean[c] * scale)
            })
            .collect();
        Normalize { affine, relu }
    }

    /// Row `row` of y (`r`: its elements' indices in x).
    #[inline(always)]
    fn row<'a>(
        &self,
        x: &'a [f32],
        g: AxisGeom,
        row: usize,
        r: Range<usize>,
    ) -> impl Iterator<Item = f32> + 'a {
        let ((scale, shift), relu_after) = (self.affine[row % g.axis], self.relu);
        x[r].iter().map(move |&x| {
            let y = x * scale + shift;
            if relu_after {
                relu(y)
            } else {
                y
            }
        })
    }

    /// y of x, a new vector.
    pub(super) fn apply(&self, x: &[f32], g: AxisGeom) -> Vec<f32> {
        par_new(x.len(), g.inner, |row, r| self.row(x, g, row, r))
    }

    /// y of x into `out`, which holds rows `first_row`.. of y (a run of a view: a producer's slice of
    /// a concat's output).
    pub(super) fn apply_into(&self, x: &[f32], g: AxisGeom, out: &mut [f32], first_row: usize) {
        par_fill(out, g.inner, first_row, |row, r| self.row(x, g, row, r))
    }
}

/// A fused BN → ReLU's mask for the backward: dy is ReLU's gradient of y = max(v, 0), v = x·scale +
/// shift, 0 where y <= 0 — read from the saved y, or with v recomputed from x by the forward's f32
/// arithmetic ([`Normalize`]), so y need not be kept (y <= 0 exactly where v <= 0, NaN passing dy in
/// both: the same mask bit for bit).
#[derive(Clone, Copy)]
pub(super) enum ReluMask<'a> {
    None,
    Output(OuterRows<'a>),
    FromInput(&'a Normalize),
}

/// The mask kinds as const parameters of the loops.
const NO_MASK: u8 = 0;
const MASK_Y: u8 = 1;
const MASK_X: u8 = 2;

/// (dx, dweight, dbias). With batch statistics,
/// dx = w·invstd/n · (n·dy − Σdy − x̂·Σ(dy·x̂)); with fixed statistics, dx = dy·w·invstd. With a
/// ReLU mask (a fused BN → ReLU), dy is first ReLU's gradient.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    dy: OuterRows,
    x: &[f32],
    w: Option<&[f32]>,
    mean: &[f32],
    var: &[f32],
    g: AxisGeom,
    eps: f32,
    batch_stats: bool,
    mask: ReluMask,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let stats = Stats {
        w,
        mean,
        var,
        eps,
        batch_stats,
    };
    let path = if g.inner < FUSED_MIN_ROW || g.axis < 2 * rayon::current_num_threads() {
        DxPath::Rows
    } else if streams(x.len()) {
        DxPath::ChannelsStreamed
    } else {
        DxPath::Channels
    };
    match mask {
        ReluMask::None => backward_masked::<NO_MASK>(dy, x, OuterRows::EMPTY, &[], &stats, g, path),
        ReluMask::Output(ry) => backward_masked::<MASK_Y>(dy, x, ry, &[], &stats, g, path),
        ReluMask::FromInput(norm) => {
            let rows = OuterRows::whole(x, g);
            backward_masked::<MASK_X>(dy, x, rows, &norm.affine, &stats, g, path)
        }
    }
}

/// How the backward makes dx; the same arithmetic on every path.
#[derive(Clone, Copy, Debug)]
enum DxPath {
    /// Two row-parallel passes: the channels' sums, then dx.
    Rows,
    /// Channel by channel ([`backward_by_channel`]).
    Channels,
    /// Channel by channel, dx by non-temporal stores (a dx of half the last-level cache or more:
    /// [`streams`]).
    ChannelsStreamed,
}

/// What the backward reads besides dy and x.
struct Stats<'a> {
    w: Option<&'a [f32]>,
    mean: &'a [f32],
    var: &'a [f32],
    eps: f32,
    batch_stats: bool,
}

/// One channel's dx = ((dy − Σdy/n) − (x − mean)·q)·s, s = w·invstd and q = invstd·Σ(dy·x̂)/n (the
/// formula above, in f32 as PyTorch's CPU kernel; with fixed statistics dmean = q = 0 and the x term
/// is not computed, so an Inf x does not make a NaN).
#[derive(Clone, Copy)]
struct DxCoef {
    mean: f32,
    dmean: f32,
    q: f32,
    s: f32,
}

/// Rows (the extent after the channel axis) at least this long let each channel's backward run whole
/// on one thread: its two sums, then its dx while the channel's x and dy are still in cache — two
/// passes over memory instead of three (shorter rows, as batch norm over [N, C] features, go
/// row-parallel in two separate passes). 512: rows of 784 (4×14×14) took 0.86–0.91 of the
/// row-parallel time this way, rows of 98–196 (7×7 planes) 0.99–1.47 (docs/PERFORMANCE.md, stop 30).
const FUSED_MIN_ROW: usize = 512;

/// [`backward`], with ReLU's backward mask applied as dy is read (no masked copy of dy): by `ry`'s
/// values (MASK_Y), or by `ry`'s — x's — values through the per-channel `affine` (MASK_X); with
/// NO_MASK `ry` is empty and the loops are the plain batch norm's; dx made as `path` says.
fn backward_masked<const MASK: u8>(
    dy: OuterRows,
    x: &[f32],
    ry: OuterRows,
    affine: &[(f32, f32)],
    st: &Stats,
    g: AxisGeom,
    path: DxPath,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let invstd: Vec<f64> = st
        .var
        .iter()
        .map(|&v| 1.0 / (v as f64 + st.eps as f64).sqrt())
        .collect();
    let n = (g.outer * g.inner) as f64;
    let sums_of = |c: usize| {
        with_avx2!(channel_sums::<MASK>(
            dy,
            x,
            ry,
            aff(affine, c),
            g,
            c,
            st.mean[c],
            invstd[c]
        ))
    };
    let coef = |c: usize, (sd, sdx): (f64, f64)| {
        let is = invstd[c];
        let s = (st.w.map_or(1.0, |w| w[c] as f64) * is) as f32;
        if st.batch_stats {
            DxCoef {
                mean: st.mean[c],
                dmean: (sd / n) as f32,
                q: (is * sdx / n) as f32,
                s,
            }
        } else {
            DxCoef {
                mean: 0.0,
                dmean: 0.0,
                q: 0.0,
                s,
            }
        }
    };
    let (dx, sums) = if let DxPath::Channels | DxPath::ChannelsStreamed = path {
        let stream = matches!(path, DxPath::ChannelsStreamed);
        backward_by_channel::<MASK>(dy, x, ry, affine, g, st, &invstd, coef, stream)
    } else {
        let sums: Vec<(f64, f64)> = (0..g.axis).into_par_iter().map(sums_of).collect();
        let coefs: Vec<DxCoef> = (0..g.axis).map(|c| coef(c, sums[c])).collect();
        let dx = par_new(x.len(), g.inner, |row, r| {
            let k = coefs[row % g.axis];
            let (o, c) = (row / g.axis, row % g.axis);
            let mask = if MASK != NO_MASK {
                ry.row(g, o, c)
            } else {
                &x[r.clone()]
            };
            let (dy, x, a) = (dy.row(g, o, c), &x[r], aff(affine, c));
            (0..dy.len()).map(move |i| dx_value::<MASK>(dy[i], x[i], mask[i], a, k, st.batch_stats))
        });
        (dx, sums)
    };
    let dweight = sums.iter().map(|s| s.1 as f32).collect();
    let dbias = sums.iter().map(|s| s.0 as f32).collect();
    (dx, dweight, dbias)
}

/// Element range of row o of channel c.
#[inline(always)]
fn row_range(g: AxisGeom, o: usize, c: usize) -> std::ops::Range<usize> {
    let base = (o * g.axis + c) * g.inner;
    base..base + g.inner
}

#[inline(always)]
fn masked<const MASK: u8>(r: f32, d: f32, (scale, shift): (f32, f32)) -> f32 {
    match MASK {
        MASK_Y => relu_grad(r, d),
        MASK_X => relu_grad(r * scale + shift, d), // the forward's v, rounded as there
        _ => d,
    }
}

/// Channel c's (scale, shift) when the mask is recomputed from x (`affine` is empty otherwise).
#[inline(always)]
fn aff(affine: &[(f32, f32)], c: usize) -> (f32, f32) {
    affine.get(c).copied().unwrap_or((0.0, 0.0))
}

#[inline(always)]
fn dx_value<const MASK: u8>(
    d: f32,
    v: f32,
    r: f32,
    a: (f32, f32),
    k: DxCoef,
    batch_stats: bool,
) -> f32 {
    let d = masked::<MASK>(r, d, a);
    if batch_stats {
        ((d - k.dmean) - (v - k.mean) * k.q) * k.s
    } else {
        d * k.s
    }
}

/// (Σdy, Σdy·x̂) of channel c (mean m, invstd `is`), dy masked as `MASK` says (`ry`, `a`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn channel_sums<const MASK: u8>(
    dy: OuterRows,
    x: &[f32],
    ry: OuterRows,
    a: (f32, f32),
    g: AxisGeom,
    c: usize,
    m: f32,
    is: f64,
) -> (f64, f64) {
    // A plain loop, not `fold`: see channel_statistics.
    let (mut sd, mut sdx) = (0.0, 0.0);
    for o in 0..g.outer {
        let r = row_range(g, o, c);
        let mask = if MASK != NO_MASK {
            ry.row(g, o, c)
        } else {
            &x[r.clone()]
        };
        let (sd_row, sdx_row) = block_sums2(dy.row(g, o, c), &x[r], mask, |d, v, r| {
            let d = masked::<MASK>(r, d, a);
            (d, d * (v - m))
        });
        sd += sd_row;
        sdx += sdx_row;
    }
    (sd, sdx * is)
}

/// dx channel by channel, channels in parallel: each task reads its channel once for the sums, then
/// writes the channel's rows of dx at once (x and dy still in cache); with `stream`, by non-temporal
/// stores ([`stream_into`]). Returns dx and every channel's sums.
#[allow(clippy::too_many_arguments)]
fn backward_by_channel<const MASK: u8>(
    dy: OuterRows,
    x: &[f32],
    ry: OuterRows,
    affine: &[(f32, f32)],
    g: AxisGeom,
    st: &Stats,
    invstd: &[f64],
    coef: impl Fn(usize, (f64, f64)) -> DxCoef + Sync,
    stream: bool,
) -> (Vec<f32>, Vec<(f64, f64)>) {
    let len = x.len();
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    // dx's rows ordered by channel (row o of channel c at c·outer + o), in one allocation: a vector
    // per channel cost a malloc and a free each, a fifth of the time at 1,024 channels of 784
    let mut rows: Vec<Option<&mut [MaybeUninit<f32>]>> =
        (0..g.outer * g.axis).map(|_| None).collect();
    for (r, row) in dx.spare_capacity_mut()[..len]
        .chunks_mut(g.inner)
        .enumerate()
    {
        rows[(r % g.axis) * g.outer + r / g.axis] = Some(row);
    }
    let sums: Vec<(f64, f64)> = rows
        .par_chunks_mut(g.outer)
        .enumerate()
        .map(|(c, channel_rows)| {
            let a = aff(affine, c);
            let sums = with_avx2!(channel_sums::<MASK>(
                dy, x, ry, a, g, c, st.mean[c], invstd[c]
            ));
            let k = coef(c, sums);
            with_avx2!(write_dx_rows::<MASK>(
                channel_rows,
                dy,
                x,
                ry,
                a,
                g,
                c,
                k,
                st.batch_stats,
                stream
            ));
            sums
        })
        .collect();
    // SAFETY: the rows (chunks of `inner`) cover 0..len, each went to its channel's task, and that
    // task wrote every element of each of its rows (write_dx_rows writes all of each).
    unsafe { dx.set_len(len) };
    (dx, sums)
}

/// Every element of channel c's rows of dx.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn write_dx_rows<const MASK: u8>(
    rows: &mut [Option<&mut [MaybeUninit<f32>]>],
    dy: OuterRows,
    x: &[f32],
    ry: OuterRows,
    a: (f32, f32),
    g: AxisGeom,
    c: usize,
    k: DxCoef,
    batch_stats: bool,
    stream: bool,
) {
    for (o, out) in rows.iter_mut().enumerate() {
        // taken by value: behind `&mut &mut`, the slice was reloaded after every store and the
        // loop below did not vectorise
        let out = out.take().expect("every row of dx is some channel's");
        let (r, n) = (row_range(g, o, c), out.len());
        let mask = if MASK != NO_MASK {
            ry.row(g, o, c)
        } else {
            &x[r.clone()]
        };
        let (dy, x, mask) = (&dy.row(g, o, c)[..n], &x[r][..n], &mask[..n]);
        if stream {
            let value = |i: usize| dx_value::<MASK>(dy[i], x[i], mask[i], a, k, batch_stats);
            stream_into(out, value, |i| {
                let (dy, x, mask) = (&dy[i..][..LINE], &x[i..][..LINE], &mask[i..][..LINE]);
                let mut v = [0.0; LINE];
                for j in 0..LINE {
                    v[j] = dx_value::<MASK>(dy[j], x[j], mask[j], a, k, batch_stats);
                }
                v
            });
        } else {
            for i in 0..n {
                out[i].write(dx_value::<MASK>(dy[i], x[i], mask[i], a, k, batch_stats));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::test_data as data;

    /// dx, dweight and dbias of every path (channel by channel, also with streamed stores, and
    /// row-parallel) against the formula in f64, with and without batch statistics and the ReLU
    /// mask. The sums ([`block_sums2`]): Σdy
    /// within γ₇·Σ|dy| (8-term f32 sums, then f64), Σdy·(x − mean) within γ₉·Σ|dy·(x − mean)| (each
    /// term two f32 roundings more); dbias and dweight one f32 rounding more. dx is f32 arithmetic of 8
    /// roundings on its longest path (s, dmean, q, x − mean, its product with q, two subtractions, the
    /// product with s), so each dx is within γ₈·(|dy| + |dmean| + |x − mean|·|q|)·|s| of the value
    /// from its f32 coefficients, plus (δdmean + |x − mean|·δq)·|s| from the sums' errors. All paths
    /// compute the same f32 operations: their dx agree bit for bit. A sum that drops or repeats one
    /// term fails (a term ~0.5 against γ₇·Σ|dy| ≈ 3·10⁻⁴ at these lengths); rows of 1,030 and 1,500
    /// have full blocks and a tail (1,500: a short block of 6 groups), rows of 7 only a tail, rows of
    /// 33, 196 and 255 a short block of 1, 6 and 7 groups and a tail, 64 two groups and no tail.
    #[test]
    fn backward_paths_match_f64_formula() {
        let u = f32::EPSILON as f64 / 2.0;
        let gamma = |k: f64| k * u / (1.0 - k * u);
        let gamma8 = gamma(8.0);
        for (case, &(outer, axis, inner)) in [
            (1, 6, 1030),
            (2, 5, 1500),
            (3, 4, 7),
            (2, 9, 33),
            (1, 3, 196),
            (2, 3, 255),
            (1, 2, 64),
        ]
        .iter()
        .enumerate()
        {
            let g = AxisGeom { outer, axis, inner };
            let len = outer * axis * inner;
            // an offset mean, so x − mean is not x
            let x: Vec<f32> = data(len, 1 + case as u64)
                .iter()
                .map(|v| 3.0 + 2.0 * v)
                .collect();
            let dy = data(len, 100 + case as u64);
            let ry = data(len, 200 + case as u64);
            let w: Vec<f32> = data(axis, 300).iter().map(|v| 1.0 + 0.5 * v).collect();
            let (mean, var) = statistics(&x, g);
            for batch_stats in [true, false] {
                for relu in [false, true] {
                    let st = Stats {
                        w: Some(&w),
                        mean: &mean,
                        var: &var,
                        eps: 1e-5,
                        batch_stats,
                    };
                    let run = |dy: OuterRows, ry: OuterRows, path| {
                        if relu {
                            backward_masked::<MASK_Y>(dy, &x, ry, &[], &st, g, path)
                        } else {
                            let none = OuterRows::EMPTY;
                            backward_masked::<NO_MASK>(dy, &x, none, &[], &st, g, path)
                        }
                    };
                    let (whole, whole_ry) = (OuterRows::whole(&dy, g), OuterRows::whole(&ry, g));
                    let fused = run(whole, whole_ry, DxPath::Channels);
                    for path in [DxPath::Rows, DxPath::ChannelsStreamed] {
                        let other = run(whole, whole_ry, path);
                        assert_eq!(fused.0, other.0, "case {case}: dx, {path:?}");
                        assert_eq!(fused.1, other.1, "case {case}: dweight, {path:?}");
                        assert_eq!(fused.2, other.2, "case {case}: dbias, {path:?}");
                    }
                    // dy and the ReLU's output as pieces of concatenations: their rows between 3
                    // values before and 5 after (garbage that must not be read), the same results
                    // bit for bit
                    let row = axis * inner;
                    let wide = |v: &[f32]| -> Vec<f32> {
                        (0..outer)
                            .flat_map(|o| {
                                let pad = |n| std::iter::repeat_n(f32::NAN, n);
                                pad(3)
                                    .chain(v[o * row..][..row].iter().copied())
                                    .chain(pad(5))
                            })
                            .collect()
                    };
                    let (wide_dy, wide_ry) = (wide(&dy), wide(&ry));
                    let piece = |data| OuterRows {
                        data,
                        offset: 3,
                        stride: row + 8,
                    };
                    for path in [DxPath::Channels, DxPath::Rows, DxPath::ChannelsStreamed] {
                        let strided = run(piece(&wide_dy), piece(&wide_ry), path);
                        assert_eq!(
                            strided, fused,
                            "case {case}: dy and y read in place from pieces"
                        );
                    }
                    if relu {
                        // the mask recomputed from x is the mask of the forward's y, bit for bit
                        // (a shift that puts about half of the values below 0), on every path
                        let b: Vec<f32> = data(axis, 400).iter().map(|v| 0.3 * v).collect();
                        let norm = Normalize::new(Some(&w), Some(&b), &mean, &var, 1e-5, true);
                        let y = norm.apply(&x, g);
                        assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
                        let (rows_y, rows_x) = (OuterRows::whole(&y, g), OuterRows::whole(&x, g));
                        for path in [DxPath::Channels, DxPath::Rows, DxPath::ChannelsStreamed] {
                            let stored =
                                backward_masked::<MASK_Y>(whole, &x, rows_y, &[], &st, g, path);
                            let recomputed = backward_masked::<MASK_X>(
                                whole,
                                &x,
                                rows_x,
                                &norm.affine,
                                &st,
                                g,
                                path,
                            );
                            assert_eq!(stored, recomputed, "case {case}: mask from x");
                        }
                    }
                    let n = (outer * inner) as f64;
                    for c in 0..axis {
                        let is = 1.0 / (var[c] as f64 + 1e-5).sqrt();
                        let m = mean[c] as f64;
                        let idx: Vec<usize> = (0..outer).flat_map(|o| row_range(g, o, c)).collect();
                        let d = |i: usize| {
                            if relu && ry[i] <= 0.0 {
                                0.0
                            } else {
                                dy[i] as f64
                            }
                        };
                        let sd: f64 = idx.iter().map(|&i| d(i)).sum();
                        let sdx: f64 = idx.iter().map(|&i| d(i) * (x[i] as f64 - m) * is).sum();
                        // the sums' error bounds (doc comment)
                        let err_sd = gamma(7.0) * idx.iter().map(|&i| d(i).abs()).sum::<f64>();
                        let err_sdx = gamma(9.0)
                            * is
                            * idx
                                .iter()
                                .map(|&i| (d(i) * (x[i] as f64 - m)).abs())
                                .sum::<f64>();
                        let close = |got: f32, want: f64, err: f64, what: &str| {
                            let bound = u * want.abs() + err * (1.0 + u) + 1e-12;
                            assert!(
                                (got as f64 - want).abs() <= bound,
                                "{what} {c}: {got} vs {want}"
                            );
                        };
                        close(fused.2[c], sd, err_sd, "dbias");
                        close(fused.1[c], sdx, err_sdx, "dweight");
                        let s = w[c] as f64 * is;
                        let (dmean, q, err_dmean, err_q) = if batch_stats {
                            (sd / n, is * sdx / n, err_sd / n, is * err_sdx / n)
                        } else {
                            (0.0, 0.0, 0.0, 0.0)
                        };
                        for &i in &idx {
                            let t = (x[i] as f64 - m) * q;
                            let want = (d(i) - dmean - t) * s;
                            let from_sums = (err_dmean + (x[i] as f64 - m).abs() * err_q) * s.abs();
                            let bound =
                                gamma8 * (d(i).abs() + dmean.abs() + err_dmean + t.abs()) * s.abs()
                                    + from_sums * (1.0 + gamma8);
                            let got = fused.0[i] as f64;
                            assert!(
                                (got - want).abs() <= bound + 1e-30,
                                "case {case} stats {batch_stats} relu {relu}: dx[{i}] {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
