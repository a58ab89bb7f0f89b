//! Pooling kernels: max, average and adaptive average pooling over `planes` independent [D, H, W]
//! volumes, with PyTorch's window rules.
//!
//! Every window is separable: along each dim an output index o covers a clipped input range [lo, hi),
//! so the geometry is resolved once into three small tables of [`Span`]s and the kernels only walk
//! them. Planes run in parallel; within a plane the loops are plain (the max-pool backward gathers
//! into that plane's own slice of dx, so there are no races).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::elementwise::{par_build, par_new, par_new_planes};

use crate::backend::{AdaptivePoolGeom, PoolGeom};

/// The window of one output index along one dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// The window's first index, padding included (o·s − p).
    start: isize,
    /// Clipped to the input: taps lo..hi.
    lo: usize,
    hi: usize,
    /// This dim's factor of the average's divisor.
    count: usize,
}

impl Span {
    fn is_empty(&self) -> bool {
        self.lo >= self.hi
    }
}

/// PyTorch's pooling windows along one dim: start = o·s − p, end = min(start + k, n + p). The padded
/// size end − start is the count_include_pad divisor; the window is then clipped to [0, n).
fn pool_spans(n: usize, out: usize, k: usize, s: usize, p: usize, include_pad: bool) -> Vec<Span> {
    (0..out)
        .map(|o| {
            let start = (o * s) as isize - p as isize;
            let end = (start + k as isize).min((n + p) as isize);
            let padded = (end - start).max(0) as usize;
            let lo = start.max(0) as usize;
            let hi = (end.max(0) as usize).min(n).max(lo);
            Span {
                start,
                lo,
                hi,
                count: if include_pad { padded } else { hi - lo },
            }
        })
        .collect()
}

/// Adaptive cells along one dim: o covers [floor(o·n/out), ceil((o+1)·n/out)).
fn adaptive_spans(n: usize, out: usize) -> Vec<Span> {
    (0..out)
        .map(|o| {
            let lo = o * n / out;
            let hi = ((o + 1) * n).div_ceil(out).max(lo);
            Span {
                start: lo as isize,
                lo,
                hi,
                count: hi - lo,
            }
        })
        .collect()
}

fn pool_tables(g: &PoolGeom, include_pad: bool) -> [Vec<Span>; 3] {
    std::array::from_fn(|i| {
        pool_spans(
            g.input[i],
            g.output[i],
            g.kernel[i],
            g.stride[i],
            g.padding[i],
            include_pad,
        )
    })
}

fn adaptive_tables(g: &AdaptivePoolGeom) -> [Vec<Span>; 3] {
    std::array::from_fn(|i| adaptive_spans(g.input[i], g.output[i]))
}

/// Outputs per step of [`take_max`]: one AVX vector.
const LANES: usize = 8;

fn volume(v: &[usize; 3]) -> usize {
    v.iter().product()
}

/// One output row's window maxima and where they are, as offsets (kd·kH + kh)·kW + kw from each
/// window's padded start, with PyTorch's rule: start from −inf at the window's first tap and take a
/// tap when `val > max || isnan(val)`, scanning d, h, w increasing (ties: the first; NaN: the last
/// NaN). The taps go in that order for every window, but the loop runs over the row's outputs
/// innermost: one output's scan is a chain of dependent compares (its latency, ~3× the time, when
/// each window was scanned on its own), the row's outputs are independent.
/// `sd`, `sh`: the row's windows along d and h; `tw`: the windows along w; `taps`: [`WTaps`];
/// `max`, `best`: one per output of the row.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_argmax<const TRACK: bool>(
    xp: &[f32],
    g: &PoolGeom,
    sd: &Span,
    sh: &Span,
    tw: &[Span],
    taps: &WTaps,
    max: &mut [f32],
    best: &mut [u32],
    scratch: &mut RowScratch,
) {
    let [_, h, w] = g.input;
    let [_, kh, kw] = g.kernel;
    let sw = g.stride[2];
    let (od, oh) = (
        (sd.lo as isize - sd.start) as usize,
        (sh.lo as isize - sh.start) as usize,
    );
    max.fill(f32::NEG_INFINITY);
    for (b, span) in best.iter_mut().zip(tw) {
        *b = (((od * kh + oh) * kw) as isize + span.lo as isize - span.start) as u32;
    }
    // Each tap reads the running maxima from one buffer and writes them to the other (`max` or
    // the scratch's), never selecting into the slice it reads: a select stored back in place
    // compiled to masked stores (vmaskmovps), the hottest instructions of this loop on AMD Zen 3.
    let RowScratch {
        phases,
        max: other_max,
        best: other_best,
    } = scratch;
    other_max.resize(max.len(), 0.0);
    other_best.resize(best.len(), 0);
    let mut in_place = true; // the running maxima are in `max` / `best`
    for d in sd.lo..sd.hi {
        for hh in sh.lo..sh.hi {
            let row = &xp[(d * h + hh) * w..][..w];
            if sw > 1 {
                split_phases(row, sw, taps.phase_len, phases);
            }
            let src = if sw > 1 { &phases[..] } else { row };
            let base =
                (((d as isize - sd.start) as usize * kh) + (hh as isize - sh.start) as usize) * kw;
            for &(c, j0, j1, at) in &taps.runs {
                let vals = &src[at..][..j1 - j0];
                let tap = (base + c) as u32;
                if in_place {
                    take_max::<TRACK>(vals, j0, (max, best), (other_max, other_best), tap);
                } else {
                    take_max::<TRACK>(vals, j0, (other_max, other_best), (max, best), tap);
                }
                in_place = !in_place;
            }
        }
    }
    if !in_place {
        max.copy_from_slice(other_max);
        if TRACK {
            best.copy_from_slice(other_best);
        }
    }
}

/// Buffers a row of windows needs besides its outputs: the phases of a strided row, and the
/// other half of the running maxima and argmaxes ([`row_argmax`]).
#[derive(Default)]
struct RowScratch {
    phases: Vec<f32>,
    max: Vec<f32>,
    best: Vec<u32>,
}

/// Per tap c along w, the outputs j0..j1 whose tap lies inside the row (0 ≤ j·s − p + c < w) and
/// where their values start: in the row (stride 1) or in its phases ([`split_phases`]) — the same
/// for every row, so computed once per plane.
struct WTaps {
    /// (c, j0, j1, start of the values), taps with no output inside the row left out
    runs: Vec<(usize, usize, usize, usize)>,
    phase_len: usize,
}

impl WTaps {
    fn new(g: &PoolGeom, outputs: usize) -> Self {
        let (w, kw, sw, pw) = (g.input[2], g.kernel[2], g.stride[2], g.padding[2] as isize);
        let phase_len = w.div_ceil(sw);
        let runs = (0..kw)
            .filter_map(|c| {
                let first = (pw - c as isize).max(0) as usize;
                let j0 = first.div_ceil(sw);
                let last = w as isize - 1 + pw - c as isize;
                let j1 = (last >= 0).then(|| (last as usize / sw + 1).min(outputs))?;
                let first_tap = ((j0 * sw) as isize - pw + c as isize) as usize;
                let at = if sw == 1 {
                    first_tap
                } else {
                    first_tap % sw * phase_len + first_tap / sw
                };
                (j0 < j1).then_some((c, j0, j1, at))
            })
            .collect();
        WTaps { runs, phase_len }
    }
}

/// `row`'s elements into `phases` by their index mod `sw`: phase r (elements r, r + sw, …) at
/// r·`phase_len`. Stride 2, the common case, as pairs (a vectorised deinterleave).
#[inline(always)]
pub(super) fn split_phases(row: &[f32], sw: usize, phase_len: usize, phases: &mut Vec<f32>) {
    phases.resize(sw * phase_len, 0.0);
    if sw == 2 {
        let (even, odd) = phases.split_at_mut(phase_len);
        for ((pair, e), o) in row.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
            *e = pair[0];
            *o = pair[1];
        }
        if row.len() % 2 == 1 {
            even[phase_len - 1] = row[row.len() - 1];
        }
        return;
    }
    for (r, phase) in phases.chunks_exact_mut(phase_len).enumerate() {
        for (p, &v) in phase.iter_mut().zip(row.iter().skip(r).step_by(sw)) {
            *p = v;
        }
    }
}

/// One tap of a row of windows, from the running maxima (`max`, `best`) into (`to_max`, `to_best`):
/// for the outputs j0..j0 + vals.len(), `vals` replaces the maximum (and `tap` its argmax) when
/// `val > max || isnan(val)` — selects without a branch, vectorised; the other outputs are copied.
#[inline(always)]
fn take_max<const TRACK: bool>(
    vals: &[f32],
    j0: usize,
    (max, best): (&[f32], &[u32]),
    (to_max, to_best): (&mut [f32], &mut [u32]),
    tap: u32,
) {
    let j1 = j0 + vals.len();
    to_max[..j0].copy_from_slice(&max[..j0]);
    to_max[j1..].copy_from_slice(&max[j1..]);
    let (max, to_max) = (&max[j0..j1], &mut to_max[j0..j1]);
    let (best, to_best) = if TRACK {
        to_best[..j0].copy_from_slice(&best[..j0]);
        to_best[j1..].copy_from_slice(&best[j1..]);
        (&best[j0..j1], &mut to_best[j0..j1])
    } else {
        (&best[..0], &mut to_best[..0])
    };
    // Eight outputs at a time through local arrays (vectorised as such; the same selects over
    // whole slices stayed scalar where the argmax is tracked), the rest one by one.
    let whole = vals.len() / LANES * LANES;
    for i in (0..whole).step_by(LANES) {
        let v: [f32; LANES] = vals[i..i + LANES].try_into().unwrap();
        let mut m: [f32; LANES] = max[i..i + LANES].try_into().unwrap();
        let mut b = [0u32; LANES];
        if TRACK {
            b.copy_from_slice(&best[i..i + LANES]);
        }
        take_block::<TRACK>(v, (&mut m, &mut b), tap);
        to_max[i..i + LANES].copy_from_slice(&m);
        if TRACK {
            to_best[i..i + LANES].copy_from_slice(&b);
        }
    }
    for i in whole..vals.len() {
        let take = (vals[i] > max[i]) | vals[i].is_nan();
        to_max[i] = if take { vals[i] } else { max[i] };
        if TRACK {
            to_best[i] = if take { tap } else { best[i] };
        }
    }
}

/// One plane's window maxima into `y` (and their argmax offsets into `idx` when given), row by row.
#[inline(always)]
fn plane_argmax<I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    [td, th, tw]: &[&[Span]; 3],
    y: &mut [f32],
    mut idx: Option<&mut [I]>,
) {
    if windows_tile(g) && (tw.len() >= LANES || th.len() * tw.len() >= LANES) {
        return match (g.kernel[2], idx.is_some()) {
            (1, false) => plane_tiled::<1, false, I>(xp, g, y, idx),
            (2, false) => plane_tiled::<2, false, I>(xp, g, y, idx),
            (_, false) => plane_tiled::<3, false, I>(xp, g, y, idx),
            (1, true) => plane_tiled::<1, true, I>(xp, g, y, idx),
            (2, true) => plane_tiled::<2, true, I>(xp, g, y, idx),
            (_, true) => plane_tiled::<3, true, I>(xp, g, y, idx),
        };
    }
    let ow = tw.len();
    let (mut best, mut scratch) = (vec![0u32; ow], RowScratch::default());
    let taps = WTaps::new(g, ow);
    let mut rows = y.chunks_mut(ow).enumerate();
    for sd in td.iter() {
        for sh in th.iter() {
            let (r, y_row) = rows.next().unwrap();
            match idx.as_deref_mut() {
                None => {
                    row_argmax::<false>(xp, g, sd, sh, tw, &taps, y_row, &mut best, &mut scratch)
                }
                Some(_) => {
                    row_argmax::<true>(xp, g, sd, sh, tw, &taps, y_row, &mut best, &mut scratch)
                }
            }
            if let Some(idx) = idx.as_deref_mut() {
                for (i, &b) in idx[r * ow..(r + 1) * ow].iter_mut().zip(&best) {
                    *i = I::from_offset(b as usize);
                }
            }
        }
    }
}

/// [`plane_argmax`] for windows that tile the input ([`windows_tile`]; `KW` = the kernel along W;
/// `TRACK`: `idx` is given): LANES windows at a time take their taps straight from the input in scan
/// order, the maxima and argmaxes in registers until the last tap ([`take_block`]) — no phase split,
/// tap runs or double-buffered maxima, whose per-row costs were most of the time on the small planes
/// of C2D-NL-R50's 1×2×2 pools. The blocks run along an output row (contiguous loads) or, for rows
/// narrower than LANES, along a depth slice's outputs row after row (each lane's window found in a
/// table); a group's last block ends at its end, overlapping the one before where LANES does not
/// divide it (those windows computed twice, the same way). Groups smaller than LANES take the row path.
#[inline(always)]
fn plane_tiled<const KW: usize, const TRACK: bool, I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    y: &mut [f32],
    mut idx: Option<&mut [I]>,
) {
    let [_, h, w] = g.input;
    let [_, oh, ow] = g.output;
    let [kd, kh, _] = g.kernel;
    // Where a window's input rows start, from its first (the same for every window).
    let tap_rows: Vec<usize> = (0..kd)
        .flat_map(|d| (0..kh).map(move |hh| (d * h + hh) * w))
        .collect();
    let by_rows = ow >= LANES;
    let group = if by_rows { ow } else { oh * ow };
    // Where each window of a group starts, from the group's first input element.
    let starts: Vec<usize> = (0..group).map(|q| q / ow * kh * w + q % ow * KW).collect();
    let mut best = vec![0u32; group];
    for (r, max) in y.chunks_exact_mut(group).enumerate() {
        let top = if by_rows {
            ((r / oh) * kd * h + (r % oh) * kh) * w
        } else {
            r * kd * h * w
        };
        for q0 in (0..group).step_by(LANES).map(|q| q.min(group - LANES)) {
            let (mut m, mut b) = ([f32::NEG_INFINITY; LANES], [0u32; LANES]);
            for (t, &at) in tap_rows.iter().enumerate() {
                for c in 0..KW {
                    let tap = (t * KW + c) as u32;
                    let v: [f32; LANES] = if by_rows {
                        let row = &xp[top + at + q0 * KW..][..LANES * KW];
                        std::array::from_fn(|l| row[l * KW + c])
                    } else {
                        std::array::from_fn(|l| xp[top + starts[q0 + l] + at + c])
                    };
                    take_block::<TRACK>(v, (&mut m, &mut b), tap);
                }
            }
            max[q0..q0 + LANES].copy_from_slice(&m);
            best[q0..q0 + LANES].copy_from_slice(&b);
        }
        if let Some(idx) = idx.as_deref_mut() {
            for (i, &b) in idx[r * group..][..group].iter_mut().zip(&best) {
                *i = I::from_offset(b as usize);
            }
        }
    }
}

/// One tap of LANES windows: `v` replaces the running maximum `m` (and `tap` the argmax `b` when
/// `TRACK`) where `v > m || isnan(v)`, the condition as all-ones / all-zeros lane masks (kept as
/// bools, it was packed to bytes and back between the compare and the blends: a third of the loop's
/// instructions).
#[inline(always)]
fn take_block<const TRACK: bool>(
    v: [f32; LANES],
    (m, b): (&mut [f32; LANES], &mut [u32; LANES]),
    tap: u32,
) {
    let take: [u32; LANES] =
        std::array::from_fn(|l| (((v[l] > m[l]) | v[l].is_nan()) as u32).wrapping_neg());
    *m = std::array::from_fn(|l| {
        f32::from_bits((v[l].to_bits() & take[l]) | (m[l].to_bits() & !take[l]))
    });
    if TRACK {
        *b = std::array::from_fn(|l| (tap & take[l]) | (b[l] & !take[l]));
    }
}

pub(super) fn max_forward(x: &[f32], g: &PoolGeom) -> Vec<f32> {
    let (iv, ov) = (volume(&g.input), volume(&g.output));
    if iv == 0 || ov == 0 {
        return vec![0.0f32; g.planes * ov];
    }
    let [td, th, tw] = pool_tables(g, true);
    par_new_planes(g.planes * ov, ov, iv, |p, yp| {
        let xp = &x[p * iv..(p + 1) * iv];
        with_avx2!(plane_argmax::<u32>(xp, g, &[&td, &th, &tw], yp, None))
    })
}

/// A saved argmax: the tap's offset inside its kernel window, as narrow as the window allows.
trait WindowOffset: bytemuck::Pod + PartialEq + Send + Sync {
    fn from_offset(o: usize) -> Self;
    fn offset(self) -> usize;
}

macro_rules! window_offset {
    ($($t:ty),*) => {$(
        impl WindowOffset for $t {
            #[inline]
            fn from_offset(o: usize) -> Self {
                o as $t // < kernel volume, which `PoolGeom::argmax_bytes` sized the type for
            }
            #[inline]
            fn offset(self) -> usize {
                self as usize
            }
        }
    )*};
}
window_offset!(u8, u16, u32);

/// Max pooling that also saves each window's argmax (training): y and the offsets packed
/// `g.argmax_bytes()` wide into `g.argmax_words()` f32 words.
pub(super) fn max_forward_argmax(x: &[f32], g: &PoolGeom) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0.0f32; g.output_len()];
    let mut words = vec![0.0f32; g.argmax_words()];
    let n = g.output_len();
    match g.argmax_bytes() {
        1 => forward_argmax_as::<u8>(x, g, &mut y, &mut bytemuck::cast_slice_mut(&mut words)[..n]),
        2 => forward_argmax_as::<u16>(x, g, &mut y, &mut bytemuck::cast_slice_mut(&mut words)[..n]),
        _ => forward_argmax_as::<u32>(x, g, &mut y, &mut bytemuck::cast_slice_mut(&mut words)[..n]),
    }
    (y, words)
}

fn forward_argmax_as<I: WindowOffset>(x: &[f32], g: &PoolGeom, y: &mut [f32], idx: &mut [I]) {
    let (iv, ov) = (volume(&g.input), volume(&g.output));
    if iv == 0 || ov == 0 {
        return;
    }
    let [td, th, tw] = pool_tables(g, true);
    y.par_chunks_mut(ov)
        .zip(idx.par_chunks_mut(ov))
        .zip(x.par_chunks(iv))
        .for_each(|((yp, ip), xp)| with_avx2!(plane_argmax(xp, g, &[&td, &th, &tw], yp, Some(ip))));
}

/// dx: each dy added at its window's saved argmax (windows may overlap: a plane's outputs scatter
/// serially into that plane's dx).
pub(super) fn max_backward(argmax: &[f32], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
    let n = g.output_len();
    match g.argmax_bytes() {
        1 => backward_as::<u8>(&bytemuck::cast_slice(argmax)[..n], dy, g),
        2 => backward_as::<u16>(&bytemuck::cast_slice(argmax)[..n], dy, g),
        _ => backward_as::<u32>(&bytemuck::cast_slice(argmax)[..n], dy, g),
    }
}

fn backward_as<I: WindowOffset>(idx: &[I], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
    let (iv, ov) = (volume(&g.input), volume(&g.output));
    if iv == 0 || ov == 0 {
        return vec![0.0f32; g.planes * iv];
    }
    if windows_tile(g) {
        return backward_tiled(idx, dy, g);
    }
    backward_by_taps(idx, dy, g)
}

/// Whether the windows cover the input exactly once (kernel = stride, no padding, every input
/// element inside a window; at most 3 along W): the non-overlapping pools, 1×2×2 and 2×1×1 with
/// stride 2 in the zoo.
fn windows_tile(g: &PoolGeom) -> bool {
    (0..3).all(|a| {
        g.kernel[a] == g.stride[a] && g.padding[a] == 0 && g.input[a] == g.output[a] * g.kernel[a]
    }) && g.kernel[2] <= 3
}

/// [`backward_scatter`] for windows that tile the input ([`windows_tile`]): every input element is in
/// one window, so dx is written once, input row by input row — dy where the saved argmax points, 0
/// elsewhere — instead of zero-filling a plane, scattering into it and copying it out (2.0–2.6× PyTorch's
/// time for C2D-NL-R50's pools, docs/PERFORMANCE.md, stop 30). `gy + 0.0` is what the scatter adds to
/// the zeroed plane (a −0 gradient lands as +0, as there and in PyTorch).
fn backward_tiled<I: WindowOffset>(idx: &[I], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
    let [_, h, w] = g.input;
    let [_, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let (iv, ov) = (volume(&g.input), volume(&g.output));
    par_build(g.planes * iv, iv, |p, out| {
        let (ip, dyp) = (&idx[p * ov..][..ov], &dy[p * ov..][..ov]);
        for (r, row) in out.chunks_exact_mut(w).enumerate() {
            // Input row r = (d, hh) lies in output row (d / kd, hh / kh), window row (d % kd, hh % kh).
            let (d, hh) = (r / h, r % h);
            let o_row = ((d / kd) * oh + hh / kh) * ow;
            let tap_row = ((d % kd) * kh + hh % kh) * kw;
            let (ips, dys) = (&ip[o_row..][..ow], &dyp[o_row..][..ow]);
            match kw {
                1 => with_avx2!(window_row::<1, I>(row, ips, dys, tap_row)),
                2 => with_avx2!(window_row::<2, I>(row, ips, dys, tap_row)),
                _ => with_avx2!(window_row::<3, I>(row, ips, dys, tap_row)),
            }
        }
        out.len()
    })
}

/// One input row of [`backward_tiled`]: windows of `KW` elements (a constant, so the loop over a
/// window unrolls and the row vectorises).
#[inline(always)]
fn window_row<const KW: usize, I: WindowOffset>(
    row: &mut [MaybeUninit<f32>],
    ips: &[I],
    dys: &[f32],
    tap_row: usize,
) {
    for ((window, &i), &gy) in row.chunks_exact_mut(KW).zip(ips).zip(dys) {
        let at = i.offset();
        for (c, o) in window.iter_mut().enumerate() {
            o.write(if at == tap_row + c { gy + 0.0 } else { 0.0 });
        }
    }
}

/// dx of any max pool, window row by window row: each input row the windows cover, in the forward's
/// phase layout ([`split_phases`]), gets for each tap c the row's dy where the saved offset is that
/// tap — a masked add over the row's outputs, vectorised — and is interleaved back at the end. The
/// scatter it replaces ([`backward_scatter`], one dependent `+=` per output) stalled on overlapping
/// windows (a load waiting on a store to the same element; 2.2× PyTorch's time for C2D-NL-R50's 3×3 s2
/// pool). Taps go in decreasing c, so every dx element receives its windows' gradients in output order,
/// as the scatter and PyTorch add them: the same sums bit for bit (the extra `+ 0.0`s change nothing,
/// the sums starting at +0 never being −0).
fn backward_by_taps<I: WindowOffset>(idx: &[I], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
    let (iv, ov) = (volume(&g.input), volume(&g.output));
    let [td, th, tw] = pool_tables(g, true);
    let taps = WTaps::new(g, tw.len());
    let row_len = g.stride[2] * taps.phase_len; // the row itself when the stride is 1
    par_build(g.planes * iv, iv, |p, out| {
        let (ip, dyp) = (&idx[p * ov..][..ov], &dy[p * ov..][..ov]);
        let mut rows = vec![0.0f32; iv / g.input[2] * row_len];
        with_avx2!(plane_by_taps(ip, dyp, g, [&td, &th], &taps, &mut rows, out));
        out.len()
    })
}

/// One plane of [`backward_by_taps`]: `rows`, zeroed, holds the plane's input rows in phase layout.
#[inline(always)]
fn plane_by_taps<I: WindowOffset>(
    ip: &[I],
    dyp: &[f32],
    g: &PoolGeom,
    [td, th]: [&[Span]; 2],
    taps: &WTaps,
    rows: &mut [f32],
    out: &mut [MaybeUninit<f32>],
) {
    let [_, h, w] = g.input;
    let [_, kh, kw] = g.kernel;
    let row_len = g.stride[2] * taps.phase_len;
    let ow = g.output[2];
    let mut windows = ip.chunks_exact(ow).zip(dyp.chunks_exact(ow));
    for sd in td {
        for sh in th {
            let (ips, dys) = windows.next().unwrap();
            for (d, hh) in (sd.lo..sd.hi).flat_map(|d| (sh.lo..sh.hi).map(move |hh| (d, hh))) {
                let row = &mut rows[(d * h + hh) * row_len..][..row_len];
                let window_row = ((d as isize - sd.start) as usize * kh
                    + (hh as isize - sh.start) as usize)
                    * kw;
                for &(c, j0, j1, at) in taps.runs.iter().rev() {
                    let tap = I::from_offset(window_row + c);
                    add_where_tap(&mut row[at..][..j1 - j0], &ips[j0..j1], &dys[j0..j1], tap);
                }
            }
        }
    }
    for (o, r) in out.chunks_exact_mut(w).zip(rows.chunks_exact(row_len)) {
        merge_phases(r, g.stride[2], taps.phase_len, o);
    }
}

/// `acc[j] += dy[j]` where output j's saved offset is `tap` (+ 0 elsewhere, a select the loop
/// vectorises).
#[inline(always)]
fn add_where_tap<I: WindowOffset>(acc: &mut [f32], ips: &[I], dys: &[f32], tap: I) {
    for ((a, &i), &gy) in acc.iter_mut().zip(ips).zip(dys) {
        *a += if i == tap { gy } else { 0.0 };
    }
}

/// The inverse of [`split_phases`]: a row from its phases.
#[inline(always)]
fn merge_phases(phases: &[f32], sw: usize, phase_len: usize, row: &mut [MaybeUninit<f32>]) {
    if sw == 1 {
        row.iter_mut().zip(phases).for_each(|(o, &v)| {
            o.write(v);
        });
        return;
    }
    if sw == 2 {
        let (even, odd) = phases.split_at(phase_len);
        for ((pair, &e), &o) in row.chunks_exact_mut(2).zip(even).zip(odd) {
            pair[0].write(e);
            pair[1].write(o);
        }
        if row.len() % 2 == 1 {
            row[row.len() - 1].write(even[phase_len - 1]);
        }
        return;
    }
    for (x, o) in row.iter_mut().enumerate() {
        o.write(phases[x % sw * phase_len + x / sw]);
    }
}

/// dx of any max pool: per plane, each output's gradient added at its saved argmax, in output order
/// (PyTorch's kernel; the reference of [`backward_by_taps`] and [`backward_tiled`]).
#[cfg(test)]
fn backward_scatter<I: WindowOffset>(idx: &[I], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
    let iv = volume(&g.input);
    let ov = volume(&g.output);
    let [td, th, tw] = pool_tables(g, true);
    let [_, h, w] = g.input;
    let [kd, kh, kw] = g.kernel;
    // A saved offset (kd·kH + kh)·kW + kw as a distance in the plane from the window's padded start:
    // one table look-up per output instead of three divisions.
    let step: Vec<isize> = (0..kd * kh * kw)
        .map(|off| {
            let (od, oh, ow) = (off / (kh * kw), off / kw % kh, off % kw);
            ((od * h + oh) * w + ow) as isize
        })
        .collect();
    par_new_planes(g.planes * iv, iv, iv + ov, |p, dxp| {
        let (ip, dyp) = (&idx[p * ov..(p + 1) * ov], &dy[p * ov..(p + 1) * ov]);
        let mut saved = ip.iter().zip(dyp);
        for sd in &td {
            for sh in &th {
                let row_start = (sd.start * h as isize + sh.start) * w as isize;
                for sw in &tw {
                    let (&i, &gy) = saved.next().unwrap();
                    if sd.is_empty() || sh.is_empty() || sw.is_empty() {
                        continue;
                    }
                    dxp[(row_start + sw.start + step[i.offset()]) as usize] += gy;
                }
            }
        }
    })
}

/// Window averages over separable span tables; the divisor is the product of the spans' counts.
/// An empty window gives 0 (as PyTorch's kernels skip it). Separably: first every input row's sums
/// over the w-windows, then each output row adds the (d, h) rows of its window across all w at once
/// (a vector loop), in the order a window-by-window sum would add them (the same bits).
fn span_avg_forward(x: &[f32], planes: usize, input: [usize; 3], t: &[Vec<Span>; 3]) -> Vec<f32> {
    let [din, h, w] = input;
    let iv = volume(&input);
    let ow = t[2].len();
    let ov = t[0].len() * t[1].len() * ow;
    if iv == 0 || ov == 0 {
        return vec![0.0f32; planes * ov];
    }
    if is_global(input, t) {
        return par_new(planes, GLOBAL_PLANES_PER_PIECE, |_, r| {
            r.map(|p| lane_sum(&x[p * iv..(p + 1) * iv]) / iv as f32)
        });
    }
    par_new_planes(planes * ov, ov, iv, |p, yp| {
        let xp = &x[p * iv..(p + 1) * iv];
        // row_sums[(d·H + h)·OW + j]: the input row (d, h) summed over w-window j
        let row_sums: Vec<f32> = (0..din * h)
            .flat_map(|row| {
                let xr = &xp[row * w..(row + 1) * w];
                t[2].iter()
                    .map(move |sw| xr[sw.lo..sw.hi].iter().sum::<f32>())
            })
            .collect();
        let mut out_rows = yp.chunks_mut(ow);
        for sd in &t[0] {
            for sh in &t[1] {
                let out = out_rows.next().unwrap();
                for d in sd.lo..sd.hi {
                    for hh in sh.lo..sh.hi {
                        let rs = &row_sums[(d * h + hh) * ow..][..ow];
                        out.iter_mut().zip(rs).for_each(|(o, &r)| *o += r);
                    }
                }
                for (o, sw) in out.iter_mut().zip(&t[2]) {
                    let div = sd.count * sh.count * sw.count;
                    *o = if sd.is_empty() || sh.is_empty() || sw.is_empty() || div == 0 {
                        0.0
                    } else {
                        *o / div as f32
                    };
                }
            }
        }
    })
}

/// Planes per piece of a global average (one output per plane).
const GLOBAL_PLANES_PER_PIECE: usize = 64;

/// Whether the tables are one window over the whole input (global average pooling: the heads of
/// every model), whose plane sums are contiguous.
fn is_global(input: [usize; 3], t: &[Vec<Span>; 3]) -> bool {
    (0..3).all(|a| {
        let span = t[a].first();
        t[a].len() == 1
            && span.is_some_and(|s| s.lo == 0 && s.hi == input[a] && s.count == input[a])
    })
}

/// Σ of a contiguous run in eight f32 partial sums (one chain of additions would run at the add's
/// latency, not at the loads' speed; error within γ_(n/8 + 3) of the sum of absolute values).
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    let [a0, a1, a2, a3, a4, a5, a6, a7] = acc;
    ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) + tail
}

/// The adjoint of [`span_avg_forward`]: each dy/divisor is spread over its (clipped) window —
/// separably, as the forward sums: g = dy/divisor (0 for an empty window) is first spread along d
/// over whole (h, w)-output rows, then along h over w-output rows (both vector loops), and only the
/// last step along w adds one value at a time; a window of k_d·k_h·k_w taps costs k_d + k_h + k_w
/// additions per element instead of their product.
fn span_avg_backward(dy: &[f32], planes: usize, input: [usize; 3], t: &[Vec<Span>; 3]) -> Vec<f32> {
    let [din, h, _] = input;
    let iv = volume(&input);
    let (oh, ow) = (t[1].len(), t[2].len());
    let ov = t[0].len() * oh * ow;
    if iv == 0 || ov == 0 {
        return vec![0.0f32; planes * iv];
    }
    if is_global(input, t) {
        return par_new(planes * iv, iv, |p, r| {
            std::iter::repeat_n(dy[p] / iv as f32, r.len())
        });
    }
    let add_rows =
        |dst: &mut [f32], src: &[f32]| dst.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
    par_new_planes(planes * iv, iv, iv + ov, |p, dxp| {
        let mut grads = dy[p * ov..(p + 1) * ov].iter();
        let mut g = Vec::with_capacity(ov);
        for sd in &t[0] {
            for sh in &t[1] {
                for sw in &t[2] {
                    let gy = *grads.next().unwrap();
                    let div = sd.count * sh.count * sw.count;
                    let empty = sd.is_empty() || sh.is_empty() || sw.is_empty() || div == 0;
                    g.push(if empty { 0.0 } else { gy / div as f32 });
                }
            }
        }
        // along d: by_d[d][oh][ow]
        let mut by_d = vec![0.0f32; din * oh * ow];
        for (i, sd) in t[0].iter().enumerate() {
            for d in sd.lo..sd.hi {
                add_rows(
                    &mut by_d[d * oh * ow..][..oh * ow],
                    &g[i * oh * ow..][..oh * ow],
                );
            }
        }
        // along h: by_h[d][h][ow]
        let mut by_h = vec![0.0f32; din * h * ow];
        for d in 0..din {
            for (i, sh) in t[1].iter().enumerate() {
                let src = &by_d[(d * oh + i) * ow..][..ow];
                for hh in sh.lo..sh.hi {
                    add_rows(&mut by_h[(d * h + hh) * ow..][..ow], src);
                }
            }
        }
        // along w, into the plane
        let w = input[2];
        for (row, src) in dxp.chunks_mut(w).zip(by_h.chunks(ow)) {
            for (sw, &v) in t[2].iter().zip(src) {
                row[sw.lo..sw.hi].iter_mut().for_each(|a| *a += v);
            }
        }
    })
}

pub(super) fn avg_forward(x: &[f32], g: &PoolGeom, count_include_pad: bool) -> Vec<f32> {
    span_avg_forward(x, g.planes, g.input, &pool_tables(g, count_include_pad))
}

pub(super) fn avg_backward(dy: &[f32], g: &PoolGeom, count_include_pad: bool) -> Vec<f32> {
    span_avg_backward(dy, g.planes, g.input, &pool_tables(g, count_include_pad))
}

pub(super) fn adaptive_forward(x: &[f32], g: &AdaptivePoolGeom) -> Vec<f32> {
    span_avg_forward(x, g.planes, g.input, &adaptive_tables(g))
}

pub(super) fn adaptive_backward(dy: &[f32], g: &AdaptivePoolGeom) -> Vec<f32> {
    span_avg_backward(dy, g.planes, g.input, &adaptive_tables(g))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::pool::pool_out_size;
    use crate::rng::uniform;

    /// A small deterministic stream of integers for drawing configurations.
    struct Draw {
        seed: u64,
        i: u64,
    }

    impl Draw {
        fn new(seed: u64) -> Self {
            Draw { seed, i: 0 }
        }
        /// Uniform in lo..=hi.
        fn int(&mut self, lo: usize, hi: usize) -> usize {
            self.i += 1;
            lo + ((uniform(self.seed, self.i) as f64 * (hi - lo + 1) as f64) as usize).min(hi - lo)
        }
        fn bool(&mut self) -> bool {
            self.int(0, 1) == 1
        }
    }

    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| uniform(seed, i as u64) * 2.0 - 1.0)
            .collect()
    }

    /// A random pooling geometry (3-d, or 2-d with D = 1), output from `pool_out_size`.
    fn random_geom(dr: &mut Draw, case: usize) -> (PoolGeom, bool) {
        let two_d = case % 2 == 0;
        let ceil_mode = dr.bool();
        loop {
            let mut input = [0; 3];
            let mut kernel = [0; 3];
            let mut stride = [0; 3];
            let mut padding = [0; 3];
            for i in 0..3 {
                if i == 0 && two_d {
                    (input[i], kernel[i], stride[i], padding[i]) = (1, 1, 1, 0);
                    continue;
                }
                input[i] = dr.int(1, if two_d { 13 } else { 7 });
                kernel[i] = dr.int(1, 4);
                stride[i] = dr.int(1, 3);
                padding[i] = dr.int(0, kernel[i] / 2);
            }
            // Now and then, the named shapes of the brief.
            match case % 7 {
                1 if !two_d => (kernel, stride, padding) = ([1, 3, 3], [1, 2, 2], [0, 1, 1]),
                3 if !two_d => (kernel, stride, padding) = ([2, 1, 1], [2, 1, 1], [0, 0, 0]),
                4 => {
                    kernel[1..].copy_from_slice(&[3, 3]);
                    stride[1..].copy_from_slice(&[2, 2]);
                    padding[1..].copy_from_slice(&[dr.int(0, 1), dr.int(0, 1)]);
                }
                _ => {}
            }
            let out: Vec<Option<usize>> = (0..3)
                .map(|i| pool_out_size(input[i], kernel[i], stride[i], padding[i], ceil_mode))
                .collect();
            if out.iter().all(|o| o.is_some()) {
                let output = [out[0].unwrap(), out[1].unwrap(), out[2].unwrap()];
                let planes = dr.int(1, 3);
                return (
                    PoolGeom {
                        planes,
                        input,
                        output,
                        kernel,
                        stride,
                        padding,
                    },
                    ceil_mode,
                );
            }
        }
    }

    /// Offsets (within a plane) of the in-input taps of output o, in scan order, and the number of
    /// taps inside the padded input [−p, n + p).
    fn naive_taps(g: &PoolGeom, o: [usize; 3]) -> (Vec<usize>, usize) {
        let mut taps = vec![];
        let mut padded = 0;
        for kd in 0..g.kernel[0] {
            for kh in 0..g.kernel[1] {
                for kw in 0..g.kernel[2] {
                    let k = [kd, kh, kw];
                    let pos: Vec<isize> = (0..3)
                        .map(|i| (o[i] * g.stride[i] + k[i]) as isize - g.padding[i] as isize)
                        .collect();
                    let in_padded = (0..3).all(|i| {
                        pos[i] >= -(g.padding[i] as isize)
                            && pos[i] < (g.input[i] + g.padding[i]) as isize
                    });
                    padded += in_padded as usize;
                    if (0..3).all(|i| pos[i] >= 0 && pos[i] < g.input[i] as isize) {
                        taps.push(
                            (pos[0] as usize * g.input[1] + pos[1] as usize) * g.input[2]
                                + pos[2] as usize,
                        );
                    }
                }
            }
        }
        (taps, padded)
    }

    fn outputs(out: [usize; 3]) -> impl Iterator<Item = [usize; 3]> {
        (0..out[0])
            .flat_map(move |d| (0..out[1]).flat_map(move |h| (0..out[2]).map(move |w| [d, h, w])))
    }

    /// Naive max pool (forward, backward) in f64, PyTorch's first-maximum rule.
    fn naive_max(x: &[f32], dy: &[f32], g: &PoolGeom) -> (Vec<f64>, Vec<f64>) {
        let (iv, ov) = (volume(&g.input), volume(&g.output));
        let mut y = vec![0.0; g.planes * ov];
        let mut dx = vec![0.0; g.planes * iv];
        for p in 0..g.planes {
            for (oi, o) in outputs(g.output).enumerate() {
                let (taps, _) = naive_taps(g, o);
                let mut best: Option<usize> = None;
                let mut m = f64::NEG_INFINITY;
                for &t in &taps {
                    let v = x[p * iv + t] as f64;
                    if v > m || v.is_nan() {
                        m = v;
                        best = Some(t);
                    }
                }
                let best = best.unwrap_or(taps[0]);
                y[p * ov + oi] = m;
                dx[p * iv + best] += dy[p * ov + oi] as f64;
            }
        }
        (y, dx)
    }

    /// Naive average pool (forward, backward) in f64.
    fn naive_avg(x: &[f32], dy: &[f32], g: &PoolGeom, cip: bool) -> (Vec<f64>, Vec<f64>) {
        let (iv, ov) = (volume(&g.input), volume(&g.output));
        let mut y = vec![0.0; g.planes * ov];
        let mut dx = vec![0.0; g.planes * iv];
        for p in 0..g.planes {
            for (oi, o) in outputs(g.output).enumerate() {
                let (taps, padded) = naive_taps(g, o);
                let div = if cip { padded } else { taps.len() } as f64;
                y[p * ov + oi] = taps.iter().map(|&t| x[p * iv + t] as f64).sum::<f64>() / div;
                for &t in &taps {
                    dx[p * iv + t] += dy[p * ov + oi] as f64 / div;
                }
            }
        }
        (y, dx)
    }

    /// Naive adaptive average pool (forward, backward) in f64.
    fn naive_adaptive(x: &[f32], dy: &[f32], g: &AdaptivePoolGeom) -> (Vec<f64>, Vec<f64>) {
        let (iv, ov) = (volume(&g.input), volume(&g.output));
        let mut y = vec![0.0; g.planes * ov];
        let mut dx = vec![0.0; g.planes * iv];
        let range = |i: usize, o: usize| {
            let (n, m) = (g.input[i] as f64, g.output[i] as f64);
            let lo = (o as f64 * n / m).floor() as usize;
            let hi = ((o + 1) as f64 * n / m).ceil() as usize;
            lo..hi
        };
        for p in 0..g.planes {
            for (oi, o) in outputs(g.output).enumerate() {
                let mut taps = vec![];
                for d in range(0, o[0]) {
                    for h in range(1, o[1]) {
                        for w in range(2, o[2]) {
                            taps.push((d * g.input[1] + h) * g.input[2] + w);
                        }
                    }
                }
                let div = taps.len() as f64;
                y[p * ov + oi] = taps.iter().map(|&t| x[p * iv + t] as f64).sum::<f64>() / div;
                for &t in &taps {
                    dx[p * iv + t] += dy[p * ov + oi] as f64 / div;
                }
            }
        }
        (y, dx)
    }

    /// Max abs and max relative (to max(1, |ref|)) error.
    fn errors(got: &[f32], want: &[f64]) -> (f64, f64) {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .fold((0.0f64, 0.0f64), |(a, r), (&g, &w)| {
                let e = (g as f64 - w).abs();
                (a.max(e), r.max(e / w.abs().max(1.0)))
            })
    }

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
    }

    /// ⟨forward(x), dy⟩ against ⟨x, backward(dy)⟩, relative.
    fn adjoint_error(x: &[f32], y: &[f32], dy: &[f32], dx: &[f32]) -> f64 {
        let (a, b) = (dot(y, dy), dot(x, dx));
        (a - b).abs() / a.abs().max(b.abs()).max(1.0)
    }

    /// The training forward (saving the argmax) then the backward scattering through it; the training
    /// forward's y must be the inference forward's, bit for bit.
    fn argmax_backward(x: &[f32], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
        let (y, argmax) = max_forward_argmax(x, g);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&max_forward(x, g)), "{g:?}");
        assert_eq!(argmax.len(), g.argmax_words());
        max_backward(&argmax, dy, g)
    }

    #[test]
    fn max_pool_matches_naive() {
        let mut dr = Draw::new(11);
        let (mut ea, mut er, mut ceil_edges) = (0.0f64, 0.0f64, 0);
        for case in 0..60 {
            let (g, ceil_mode) = random_geom(&mut dr, case);
            let (iv, ov) = (volume(&g.input), volume(&g.output));
            let mut x = data(g.planes * iv, 100 + case as u64);
            // Every third case: few distinct values, so ties exercise the first-maximum rule.
            if case % 3 == 0 {
                x.iter_mut().for_each(|v| *v = (*v * 2.0).round());
            }
            let dy = data(g.planes * ov, 200 + case as u64);
            let y = max_forward(&x, &g);
            let dx = argmax_backward(&x, &dy, &g);
            let (ry, rdx) = naive_max(&x, &dy, &g);
            let (a1, r1) = errors(&y, &ry);
            let (a2, r2) = errors(&dx, &rdx);
            assert!(a1 == 0.0, "forward {g:?}: {a1}");
            assert!(a2 < 1e-6, "backward {g:?}: {a2}");
            (ea, er) = (ea.max(a1).max(a2), er.max(r1).max(r2));
            ceil_edges += (ceil_mode
                && (0..3).any(|i| {
                    pool_out_size(g.input[i], g.kernel[i], g.stride[i], g.padding[i], false)
                        != Some(g.output[i])
                })) as usize;
        }
        println!("max pool: max abs err {ea:.3e}, max rel err {er:.3e}, ceil-mode extra windows in {ceil_edges} cases");
        assert!(ceil_edges > 0);
    }

    /// Pools whose windows tile the input take [`backward_tiled`]: bit for bit the scatter's dx
    /// (ties, NaN, a −0 gradient), for u8 offsets, the shapes of the zoo and others (windows of 1, 2
    /// and 3 along W: each of its kernels). Their forward ([`plane_tiled`]) along rows, across rows
    /// and on the row path (groups under LANES windows), blocks overlapping at a group's end.
    #[test]
    fn tiled_backward_is_the_scatter() {
        let shapes = [
            ([1, 2, 2], [3, 8, 6]),
            ([1, 2, 2], [2, 4, 38]), // 19 windows a row: blocks at 0, 8 and 11 (overlapping)
            ([2, 1, 1], [4, 2, 5]),
            ([2, 1, 1], [2, 3, 21]),
            ([2, 2, 2], [2, 4, 6]),
            ([1, 3, 1], [1, 9, 4]),
            ([1, 1, 3], [2, 2, 9]),
            ([1, 1, 3], [2, 4, 9]), // 12 windows a depth slice, rows of 3: across rows
            ([1, 1, 1], [2, 3, 3]),
        ];
        for (case, (kernel, input)) in shapes.into_iter().enumerate() {
            let output: [usize; 3] = std::array::from_fn(|a| input[a] / kernel[a]);
            let g = PoolGeom {
                planes: 3,
                input,
                output,
                kernel,
                stride: kernel,
                padding: [0; 3],
            };
            assert!(windows_tile(&g), "{g:?}");
            let mut x = data(g.planes * volume(&input), 300 + case as u64);
            x.iter_mut().for_each(|v| *v = (*v * 2.0).round()); // ties
            x[1] = f32::NAN;
            let mut dy = data(g.output_len(), 400 + case as u64);
            dy[0] = -0.0;
            let (y, argmax) = max_forward_argmax(&x, &g);
            let idx = &bytemuck::cast_slice::<f32, u8>(&argmax)[..g.output_len()];
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let tiled = backward_tiled(idx, &dy, &g);
            assert_eq!(bits(&tiled), bits(&backward_scatter(idx, &dy, &g)), "{g:?}");
            // The forward's tiled path ([`plane_tiled`]): maxima and argmaxes (through dx) exact.
            let (ry, rdx) = naive_max(&x, &dy, &g);
            assert!(errors(&y, &ry).0 == 0.0, "{g:?}");
            assert!(
                y.iter().zip(&ry).all(|(a, b)| a.is_nan() == b.is_nan()),
                "{g:?}"
            );
            assert!(y.iter().any(|v| v.is_nan()), "{g:?}");
            assert_eq!(bits(&y), bits(&max_forward(&x, &g)), "{g:?}");
            assert!(errors(&tiled, &rdx).0 == 0.0, "{g:?}");
        }
    }

    /// [`backward_by_taps`] is bit for bit the scatter in output order (PyTorch's sums) on random
    /// geometries — overlapping windows, padding, ceil-mode edge windows, strides 1–3 — with ties,
    /// NaN and ±inf in x and −0, ±inf and NaN in dy (u8 offsets: the kernels have ≤ 64 taps; the
    /// wider offsets go through it in `max_pool_wide_windows_save_u16_and_u32_offsets`).
    #[test]
    fn backward_by_taps_is_the_scatter() {
        let mut dr = Draw::new(12);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut overlapping = 0;
        for case in 0..120 {
            let (g, _) = random_geom(&mut dr, case);
            let mut x = data(g.planes * volume(&g.input), 500 + case as u64);
            if case % 2 == 0 {
                x.iter_mut().for_each(|v| *v = (*v * 2.0).round()); // ties
            }
            let mut dy = data(g.output_len(), 600 + case as u64);
            for (i, special) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]
                .into_iter()
                .enumerate()
            {
                let at = (case * 7 + i * 13) % x.len();
                x[at] = special;
                let at = (case * 5 + i * 11) % dy.len();
                dy[at] = special;
            }
            let (_, argmax) = max_forward_argmax(&x, &g);
            let n = g.output_len();
            let got = match g.argmax_bytes() {
                1 => {
                    let idx = &bytemuck::cast_slice::<f32, u8>(&argmax)[..n];
                    (
                        backward_by_taps(idx, &dy, &g),
                        backward_scatter(idx, &dy, &g),
                    )
                }
                b => panic!("{b}-byte offsets for {g:?}"),
            };
            assert_eq!(bits(&got.0), bits(&got.1), "{g:?}");
            overlapping += (0..3).any(|a| g.kernel[a] > g.stride[a]) as usize;
        }
        assert!(
            overlapping > 20,
            "{overlapping} geometries with overlapping windows"
        );
    }

    #[test]
    fn max_pool_first_maximum_and_nan() {
        // One window over 2×2: ties go to the first; NaN wins (the last NaN, as in `val > max || isnan`).
        let g = PoolGeom {
            planes: 1,
            input: [1, 2, 2],
            output: [1, 1, 1],
            kernel: [1, 2, 2],
            stride: [1, 2, 2],
            padding: [0, 0, 0],
        };
        let dy = [1.0];
        assert_eq!(max_forward(&[1.0, 3.0, 3.0, 2.0], &g), vec![3.0]);
        assert_eq!(
            argmax_backward(&[1.0, 3.0, 3.0, 2.0], &dy, &g),
            vec![0.0, 1.0, 0.0, 0.0]
        );
        let x = [1.0, f32::NAN, 5.0, 2.0];
        assert!(max_forward(&x, &g)[0].is_nan());
        assert_eq!(argmax_backward(&x, &dy, &g), vec![0.0, 1.0, 0.0, 0.0]);
        let x = [f32::NAN, 1.0, f32::NAN, 2.0];
        assert_eq!(argmax_backward(&x, &dy, &g), vec![0.0, 0.0, 1.0, 0.0]);
        // All −inf: the window's first tap.
        let x = [f32::NEG_INFINITY; 4];
        assert_eq!(max_forward(&x, &g), vec![f32::NEG_INFINITY]);
        assert_eq!(argmax_backward(&x, &dy, &g), vec![1.0, 0.0, 0.0, 0.0]);
        // Overlapping windows accumulate into a shared maximum.
        let g = PoolGeom {
            planes: 1,
            input: [1, 1, 4],
            output: [1, 1, 3],
            kernel: [1, 1, 2],
            stride: [1, 1, 1],
            padding: [0, 0, 0],
        };
        let x = [0.0, 9.0, 1.0, 2.0];
        assert_eq!(max_forward(&x, &g), vec![9.0, 9.0, 2.0]);
        assert_eq!(
            argmax_backward(&x, &[1.0, 2.0, 4.0], &g),
            vec![0.0, 3.0, 0.0, 4.0]
        );
    }

    #[test]
    fn max_pool_wide_windows_save_u16_and_u32_offsets() {
        // 17×17 = 289 taps (u16 offsets) with padding, and one 1-d window of 70 001 taps (u32).
        for (input, kernel, stride, padding, bytes) in [
            ([1, 20, 21], [1, 17, 17], [1, 2, 3], [0, 8, 7], 2),
            ([1, 1, 70_001], [1, 1, 70_001], [1, 1, 1], [0, 0, 0], 4),
        ] {
            let output: [usize; 3] = std::array::from_fn(|i| {
                pool_out_size(input[i], kernel[i], stride[i], padding[i], false).unwrap()
            });
            let g = PoolGeom {
                planes: 2,
                input,
                output,
                kernel,
                stride,
                padding,
            };
            assert_eq!(g.argmax_bytes(), bytes);
            let x = data(g.planes * volume(&input), 7);
            let dy = data(g.output_len(), 8);
            let (ry, rdx) = naive_max(&x, &dy, &g);
            assert_eq!(errors(&max_forward(&x, &g), &ry).0, 0.0);
            assert!(
                errors(&argmax_backward(&x, &dy, &g), &rdx).0 < 1e-6,
                "{g:?}"
            );
        }
    }

    #[test]
    fn avg_pool_matches_naive() {
        let mut dr = Draw::new(23);
        let (mut ea, mut er, mut adj) = (0.0f64, 0.0f64, 0.0f64);
        for case in 0..60 {
            let (g, _) = random_geom(&mut dr, case);
            let (iv, ov) = (volume(&g.input), volume(&g.output));
            let x = data(g.planes * iv, 300 + case as u64);
            let dy = data(g.planes * ov, 400 + case as u64);
            for cip in [false, true] {
                let y = avg_forward(&x, &g, cip);
                let dx = avg_backward(&dy, &g, cip);
                let (ry, rdx) = naive_avg(&x, &dy, &g, cip);
                let (a1, r1) = errors(&y, &ry);
                let (a2, r2) = errors(&dx, &rdx);
                assert!(
                    a1 < 1e-5 && a2 < 1e-5,
                    "{g:?} cip={cip}: forward {a1}, backward {a2}"
                );
                let e = adjoint_error(&x, &y, &dy, &dx);
                assert!(e < 1e-5, "adjoint {g:?} cip={cip}: {e}");
                (ea, er, adj) = (ea.max(a1).max(a2), er.max(r1).max(r2), adj.max(e));
            }
        }
        println!("avg pool: max abs err {ea:.3e}, max rel err {er:.3e}, adjoint rel err {adj:.3e}");
    }

    #[test]
    fn avg_pool_ceil_mode_edge_window() {
        // PyTorch: avg_pool1d(arange(6), 3, 2, ceil_mode=True) = [1, 3, 4.5]; the last window [4, 7)
        // is cut at the input's end, so its divisor is 2 with or without count_include_pad.
        let out = pool_out_size(6, 3, 2, 0, true).unwrap();
        assert_eq!(out, 3);
        let g = PoolGeom {
            planes: 1,
            input: [1, 1, 6],
            output: [1, 1, out],
            kernel: [1, 1, 3],
            stride: [1, 1, 2],
            padding: [0, 0, 0],
        };
        let x: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(avg_forward(&x, &g, true), vec![1.0, 3.0, 4.5]);
        assert_eq!(avg_forward(&x, &g, false), vec![1.0, 3.0, 4.5]);
        // With padding 1: input 5, k 3, s 2, ceil → 3 windows starting at −1, 1, 3 (ends 2, 4, 6=n+p).
        let out = pool_out_size(5, 3, 2, 1, true).unwrap();
        let g = PoolGeom {
            planes: 1,
            input: [1, 1, 5],
            output: [1, 1, out],
            kernel: [1, 1, 3],
            stride: [1, 1, 2],
            padding: [0, 0, 1],
        };
        let x: Vec<f32> = (1..=5).map(|i| i as f32).collect();
        assert_eq!(avg_forward(&x, &g, true), vec![1.0, 3.0, 3.0]);
        assert_eq!(avg_forward(&x, &g, false), vec![1.5, 3.0, 4.5]);
    }

    #[test]
    fn adaptive_pool_matches_naive() {
        let mut dr = Draw::new(37);
        let (mut ea, mut er, mut adj) = (0.0f64, 0.0f64, 0.0f64);
        for case in 0..60 {
            let two_d = case % 2 == 0;
            let mut input = [1; 3];
            let mut output = [1; 3];
            for i in usize::from(two_d)..3 {
                input[i] = dr.int(1, 11);
                // Mostly non-dividing sizes, sometimes larger than the input, sometimes global.
                output[i] = match case % 5 {
                    0 => 1,
                    1 => dr.int(1, input[i] + 4),
                    _ => dr.int(1, input[i]),
                };
            }
            let g = AdaptivePoolGeom {
                planes: dr.int(1, 3),
                input,
                output,
            };
            let (iv, ov) = (volume(&g.input), volume(&g.output));
            let x = data(g.planes * iv, 500 + case as u64);
            let dy = data(g.planes * ov, 600 + case as u64);
            let y = adaptive_forward(&x, &g);
            let dx = adaptive_backward(&dy, &g);
            let (ry, rdx) = naive_adaptive(&x, &dy, &g);
            let (a1, r1) = errors(&y, &ry);
            let (a2, r2) = errors(&dx, &rdx);
            assert!(a1 < 1e-5 && a2 < 1e-5, "{g:?}: forward {a1}, backward {a2}");
            let e = adjoint_error(&x, &y, &dy, &dx);
            assert!(e < 1e-5, "adjoint {g:?}: {e}");
            (ea, er, adj) = (ea.max(a1).max(a2), er.max(r1).max(r2), adj.max(e));
        }
        println!(
            "adaptive pool: max abs err {ea:.3e}, max rel err {er:.3e}, adjoint rel err {adj:.3e}"
        );
    }

    #[test]
    fn adaptive_pool_overlapping_cells() {
        // 5 → 3: cells [0, 2), [1, 4), [3, 5) (PyTorch's floor/ceil rule).
        let g = AdaptivePoolGeom {
            planes: 1,
            input: [1, 1, 5],
            output: [1, 1, 3],
        };
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(adaptive_forward(&x, &g), vec![1.5, 3.0, 4.5]);
        assert_eq!(
            adaptive_backward(&[2.0, 3.0, 4.0], &g),
            vec![1.0, 2.0, 1.0, 3.0, 2.0]
        );
    }
}
