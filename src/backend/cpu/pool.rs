//! Pooling kernels: max, average and adaptive average pooling over `planes` independent [D, H, W]
//! volumes, with PyTorch's window rules.
//!
//! Every window is separable: along each dim an output index o covers a clipped input range [lo, hi),
//! so the geometry is resolved once into three small tables of [`Span`]s and the kernels only walk
//! them. Planes run in parallel; within a plane the loops are plain (the max-pool backward gathers
//! into that plane's own slice of dx, so there are no races).

use std::mem::MaybeUninit;

use rayon::prelude::*;

#[cfg(test)]
use super::elementwise::par_new_planes;
use super::elementwise::{par_build, par_new, CHUNK};

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

/// Windows per step of the max pools' selects ([`take_block`]): one AVX vector.
const LANES: usize = 8;

fn volume(v: &[usize; 3]) -> usize {
    v.iter().product()
}

/// Per tap c along one axis (w for rows), the outputs j0..j1 whose tap lies inside the input
/// (0 ≤ j·s − p + c < n) and where their values start: in the row (stride 1) or in its phases
/// ([`split_phases`]) — the same for every row, so computed once per call.
struct TapRuns {
    /// (c, j0, j1, start of the values), taps with no output inside the input left out
    runs: Vec<(usize, usize, usize, usize)>,
    phase_len: usize,
}

impl TapRuns {
    fn new(g: &PoolGeom, axis: usize, outputs: usize) -> Self {
        let (n, k, s) = (g.input[axis], g.kernel[axis], g.stride[axis]);
        let p = g.padding[axis] as isize;
        let phase_len = n.div_ceil(s);
        let runs = (0..k)
            .filter_map(|c| {
                let first = (p - c as isize).max(0) as usize;
                let j0 = first.div_ceil(s);
                let last = n as isize - 1 + p - c as isize;
                let j1 = (last >= 0).then(|| (last as usize / s + 1).min(outputs))?;
                let first_tap = ((j0 * s) as isize - p + c as isize) as usize;
                let at = if s == 1 {
                    first_tap
                } else {
                    first_tap % s * phase_len + first_tap / s
                };
                (j0 < j1).then_some((c, j0, j1, at))
            })
            .collect();
        TapRuns { runs, phase_len }
    }

    /// Forward, per tap c increasing: the outputs j0..j1 it feeds and the shift from an output to
    /// its value, each index scaled by `unit` (a row's length, where the runs go over whole rows)
    /// and the shifts offset by `base`.
    fn gather(&self, unit: usize, base: isize) -> Vec<ShiftedRun> {
        (self.runs.iter())
            .map(|&(_, j0, j1, at)| ShiftedRun {
                lo: j0 * unit,
                hi: j1 * unit,
                shift: (at as isize - j0 as isize) * unit as isize + base,
            })
            .collect()
    }

    /// Backward (the adjoint of [`Self::gather`]), per tap c decreasing: the input positions it
    /// feeds and the shift from a position to its window's gradient, scaled the same way.
    fn scatter(&self, unit: usize, base: isize) -> Vec<ShiftedRun> {
        (self.runs.iter().rev())
            .map(|&(_, j0, j1, at)| ShiftedRun {
                lo: at * unit,
                hi: (at + j1 - j0) * unit,
                shift: (j0 as isize - at as isize) * unit as isize + base,
            })
            .collect()
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

/// One plane's window maxima into `y` (and their argmax offsets into `idx` when given), as offsets
/// (kd·kH + kh)·kW + kw from each window's padded start, with PyTorch's rule: start from −inf at the
/// window's first tap and take a tap when `val > max || isnan(val)`, scanning d, h, w increasing
/// (ties: the first; NaN: the last NaN).
#[inline(always)]
fn plane_argmax<I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    [td, th, tw]: &[&[Span]; 3],
    y: &mut [MaybeUninit<f32>],
    idx: Option<&mut [I]>,
    scratch: &mut PlaneScratch,
) {
    if along_depth_only(g) {
        return match idx {
            None => plane_depth::<false, I>(xp, g, td, y, None, &mut scratch.row_best),
            Some(idx) => plane_depth::<true, I>(xp, g, td, y, Some(idx), &mut scratch.row_best),
        };
    }
    #[cfg(target_arch = "x86_64")]
    if w3s2_forward(g) {
        // SAFETY: `w3s2_forward` checked that the CPU has AVX2.
        return unsafe {
            match idx {
                None => plane_w3s2::<false, I>(xp, g, [td, th, tw], y, None, scratch),
                Some(idx) => plane_w3s2::<true, I>(xp, g, [td, th, tw], y, Some(idx), scratch),
            }
        };
    }
    if windows_tile(g) && g.kernel[2] == 2 && tw.len() >= LANES {
        return match idx {
            None => plane_pairs::<false, I>(xp, g, y, None, scratch),
            Some(idx) => plane_pairs::<true, I>(xp, g, y, Some(idx), scratch),
        };
    }
    if windows_tile(g) && (tw.len() >= LANES || th.len() * tw.len() >= LANES) {
        return match (g.kernel[2], idx.is_some()) {
            (1, false) => plane_tiled::<1, false, I>(xp, g, y, idx, scratch),
            (2, false) => plane_tiled::<2, false, I>(xp, g, y, idx, scratch),
            (_, false) => plane_tiled::<3, false, I>(xp, g, y, idx, scratch),
            (1, true) => plane_tiled::<1, true, I>(xp, g, y, idx, scratch),
            (2, true) => plane_tiled::<2, true, I>(xp, g, y, idx, scratch),
            (_, true) => plane_tiled::<3, true, I>(xp, g, y, idx, scratch),
        };
    }
    match idx {
        None => plane_separable::<false, I>(xp, g, [td, th, tw], y, None, scratch),
        Some(idx) => plane_separable::<true, I>(xp, g, [td, th, tw], y, Some(idx), scratch),
    }
}

/// Whether every window lies along d alone (1×1 in h and w, stride 1 and no padding there): the
/// temporal pools (C2D-NL-R50's 2×1×1), whose taps are whole depth slices of the input.
fn along_depth_only(g: &PoolGeom) -> bool {
    (1..3).all(|a| g.kernel[a] == 1 && g.stride[a] == 1 && g.padding[a] == 0)
}

/// [`plane_argmax`] for windows along d alone ([`along_depth_only`]): each output depth slice is
/// its window's input slices' maximum element by element, LANES at a time along the whole slice
/// (contiguous loads, no tables), by the rule of [`take_block`] from the window's first slice inside
/// the input (the offset of a tap is its index in the window: kh = kw = 1). The argmaxes go to
/// `best` and are narrowed after the slice (narrowed block by block, the selects became scalar).
#[inline(always)]
fn plane_depth<const TRACK: bool, I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    td: &[Span],
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
    best: &mut Vec<u32>,
) {
    let slice = g.input[1] * g.input[2];
    best.resize(slice, 0);
    for (od, sd) in td.iter().enumerate() {
        let y = &mut y[od * slice..][..slice];
        let first = (sd.lo as isize - sd.start) as u32;
        let taps = &xp[sd.lo * slice..sd.hi.max(sd.lo) * slice];
        if slice < LANES {
            depth_blocks::<TRACK, 1>(taps, slice, first, 0..slice, y, best);
        } else {
            let starts = (0..slice).step_by(LANES).map(|j| j.min(slice - LANES));
            depth_blocks::<TRACK, LANES>(taps, slice, first, starts, y, best);
        }
        if let Some(idx) = idx.as_deref_mut() {
            for (i, &b) in idx[od * slice..][..slice].iter_mut().zip(best.iter()) {
                *i = I::from_offset(b as usize);
            }
        }
    }
}

/// [`plane_depth`]'s blocks of N outputs of one depth slice starting at `starts`: `taps` holds the
/// window's input slices of `slice` elements (none: an empty window, −inf at its first tap).
#[inline(always)]
fn depth_blocks<const TRACK: bool, const N: usize>(
    taps: &[f32],
    slice: usize,
    first: u32,
    starts: impl Iterator<Item = usize>,
    y: &mut [MaybeUninit<f32>],
    best: &mut [u32],
) {
    let mut taps = taps.chunks_exact(slice);
    let Some(first_tap) = taps.next() else {
        y.iter_mut().for_each(|v| _ = v.write(f32::NEG_INFINITY));
        best.fill(first);
        return;
    };
    for j in starts {
        let mut m: [f32; N] = first_tap[j..j + N].try_into().unwrap();
        let mut b = [first; N];
        for (t, tap) in taps.clone().enumerate() {
            let v: [f32; N] = tap[j..j + N].try_into().unwrap();
            take_block::<TRACK, N>(v, (&mut m, &mut b), [first + 1 + t as u32; N]);
        }
        store(&mut y[j..j + N], &m);
        if TRACK {
            best[j..j + N].copy_from_slice(&b);
        }
    }
}

/// Buffers of [`plane_argmax`]'s paths, kept from plane to plane by a task (resizing them on every
/// plane zero-filled each anew; allocating them per plane was 10 % of C2D-NL-R50's 14² pools).
#[derive(Default)]
struct PlaneScratch {
    phases: Vec<f32>,
    first_tap: Vec<u32>,
    /// [`plane_separable`]: where tap c starts in the phases; [`plane_tiled`]: where a window's
    /// rows start
    tap_at: Vec<usize>,
    row_max: Vec<f32>,
    row_best: Vec<u32>,
    window_rows: Vec<(usize, u32)>,
    /// [`plane_tiled`]: one group's argmaxes before they are narrowed
    out_best: Vec<u32>,
    /// [`plane_tiled`]: where each window of a group starts
    window_starts: Vec<usize>,
}

/// [`plane_argmax`] for windows 2 wide that tile the input in rows of LANES windows or more
/// (C2D-NL-R50's 1×2×2 pool on 28²; the rows are whole windows, w = 2·ow): first every input
/// pair's maximum and which of the two it was, along the whole plane at once (pairs never straddle
/// rows), then each output row its window rows' pair maxima in scan order ([`column_maxima`]) — one
/// scan's values and offsets, as [`plane_separable`] argues. 0.6× [`plane_tiled`]'s time in
/// inference, 0.9× in training; on rows of fewer windows (14²: 7) 1.4× its time, the second
/// pass going one window at a time.
#[inline(always)]
fn plane_pairs<const TRACK: bool, I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
    scratch: &mut PlaneScratch,
) {
    let h = g.input[1];
    let [_, oh, ow] = g.output;
    let [kd, kh, kw] = g.kernel;
    let PlaneScratch {
        row_max: pair_max,
        row_best: pair_best,
        window_rows,
        ..
    } = scratch;
    let pairs = xp.len() / 2;
    pair_max.resize(pairs, 0.0);
    pair_best.resize(pairs, 0);
    if pairs < LANES {
        pair_blocks::<TRACK, 1>(xp, 0..pairs, pair_max, pair_best);
    } else {
        let starts = (0..pairs).step_by(LANES).map(|j| j.min(pairs - LANES));
        pair_blocks::<TRACK, LANES>(xp, starts, pair_max, pair_best);
    }
    // An output row's window rows, from where its first starts among the pairs.
    window_rows.clear();
    for d in 0..kd {
        window_rows.extend((0..kh).map(|hh| ((d * h + hh) * ow, ((d * kh + hh) * kw) as u32)));
    }
    for (out, y_row) in y.chunks_exact_mut(ow).enumerate() {
        let (od, oi) = (out / oh, out % oh);
        let first = ((od * kd) * h + oi * kh) * ow;
        let idx_row = idx.as_deref_mut().map(|i| &mut i[out * ow..][..ow]);
        let (m, b) = (&pair_max[first..], &pair_best[first..]);
        column_maxima::<TRACK, I>(m, b, window_rows, y_row, idx_row);
    }
}

/// [`plane_pairs`]' first pass for the blocks of N pairs starting at `starts`: each pair's maximum
/// (the first element, the second where it is greater or NaN: [`take_block`]) and which it was.
#[inline(always)]
fn pair_blocks<const TRACK: bool, const N: usize>(
    xp: &[f32],
    starts: impl Iterator<Item = usize>,
    pair_max: &mut [f32],
    pair_best: &mut [u32],
) {
    for j in starts {
        let src = &xp[2 * j..][..2 * N];
        let (mut m, mut v) = ([0f32; N], [0f32; N]);
        for l in 0..N {
            (m[l], v[l]) = (src[2 * l], src[2 * l + 1]);
        }
        let mut b = [0u32; N];
        take_block::<TRACK, N>(v, (&mut m, &mut b), [1; N]);
        pair_max[j..j + N].copy_from_slice(&m);
        if TRACK {
            pair_best[j..j + N].copy_from_slice(&b);
        }
    }
}

/// Whether [`plane_w3s2`] takes the planes: windows 3 wide with stride 2 along W, padding 0 or 1
/// (ECO-Lite's 3×3 s2 and C2D-NL-R50's 1×3×3 s2 pools), rows of at least LANES outputs, and AVX2.
#[cfg(target_arch = "x86_64")]
fn w3s2_forward(g: &PoolGeom) -> bool {
    g.kernel[2] == 3
        && g.stride[2] == 2
        && g.padding[2] <= 1
        && g.output[2] >= LANES
        && std::is_x86_feature_detected!("avx2")
}

/// [`plane_separable`] for windows 3 wide with stride 2 along W, in intrinsics: the generic passes
/// spent most of their time around the arithmetic (phase splits, block iterators, bounds checks;
/// docs/PERFORMANCE.md, stop 43). Per output depth slice, the window maxima along W of each input
/// row of its window's depth taps, 8 windows at a time: for rows of an even length with padding ≤ 1
/// (every such pool of the model zoo) over the whole slab at once ([`slab_w3s2_maxima`]), else row
/// by row from a copy between −inf (the padding, and past the row's end; [`row_w3s2_maxima`]); then
/// each output row takes its window rows' maxima in scan order ([`column_avx2`]). The same rule as
/// [`plane_separable`] in the same order: the same values and offsets bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn plane_w3s2<const TRACK: bool, I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    [td, th, tw]: [&[Span]; 3],
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
    scratch: &mut PlaneScratch,
) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let [_, h, w] = g.input;
    let (oh, ow) = (th.len(), tw.len());
    let pw = g.padding[2];
    // Row maxima are computed for whole blocks of LANES windows (those past ow unused).
    let blocks = ow.div_ceil(LANES) * LANES;
    let PlaneScratch {
        phases: padded,
        first_tap,
        row_max,
        row_best,
        window_rows,
        ..
    } = scratch;
    // padded[pw + x] = row[x]; window j's taps at 2j + c, read up to 2·blocks + 2.
    padded.clear();
    padded.resize((2 * blocks + 2).max(pw + w), f32::NEG_INFINITY);
    first_tap.clear();
    first_tap.extend(tw.iter().map(|s| (s.lo as isize - s.start) as u32));
    first_tap.resize(blocks, 0);
    // Rows of an even length and padding ≤ 1 go as one sequence ([`slab_w3s2_maxima`]).
    let flat = pw <= 1 && w.is_multiple_of(2) && ow <= w / 2;
    let row_len = if flat { w / 2 } else { blocks };
    for (od, sd) in td.iter().enumerate() {
        let depth_rows = (sd.hi - sd.lo) * h;
        row_max.resize(depth_rows * row_len, 0.0);
        row_best.resize(depth_rows * row_len, 0);
        let slab = &xp[sd.lo * h * w..][..depth_rows * w];
        if flat {
            // SAFETY: AVX2, as this function.
            unsafe { slab_w3s2_maxima::<TRACK>(slab, w, pw, ow, row_max, row_best) };
        } else {
            for (r, row) in slab.chunks_exact(w).enumerate() {
                // The hardware's prefetch fell behind these row-by-row reads (Zen 5: 4.0 → 2.6 ms on
                // ECO-Lite's first pool in training, 2.35 → 2.0 in inference).
                let ahead = (r * w + PREFETCH_AHEAD).min(slab.len())
                    ..((r + 1) * w + PREFETCH_AHEAD).min(slab.len());
                for line in slab[ahead].chunks(16) {
                    _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                }
                padded[pw..pw + w].copy_from_slice(row);
                let (m, b) = (
                    &mut row_max[r * blocks..][..blocks],
                    &mut row_best[r * blocks..][..blocks],
                );
                // SAFETY: AVX2, as this function.
                unsafe { row_w3s2_maxima::<TRACK>(padded, first_tap, m, b) };
            }
        }
        for (oi, sh) in th.iter().enumerate() {
            window_rows_of(g, sd, sh, row_len, window_rows);
            let out = od * oh + oi;
            let y_row = &mut y[out * ow..][..ow];
            let idx_row = idx.as_deref_mut().map(|i| &mut i[out * ow..][..ow]);
            if window_rows.is_empty() {
                empty_windows(g, sd, sh, tw, y_row, idx_row);
                continue;
            }
            // SAFETY: AVX2, as this function.
            unsafe { column_avx2::<TRACK, I>(row_max, row_best, window_rows, y_row, idx_row) };
        }
    }
}

/// How far ahead of the row it reads [`plane_w3s2`] prefetches its input, in floats (4 kB: 8 of
/// ECO-Lite's 112-wide rows; 2, 4, 8 and 16 rows tried, 8 the fastest).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 1024;

/// How far ahead [`slab_w3s2_maxima`] prefetches, in floats (16 kB: in the bench's ECO-Lite rows
/// 1024 to 16 384 tried; 4096 and up 10–20 % faster than 1024, within the host's noise of each
/// other).
#[cfg(target_arch = "x86_64")]
const SLAB_PREFETCH_AHEAD: usize = 4096;

/// One padded row's window maxima along W for [`plane_w3s2`], LANES windows a step: window j's taps
/// c = 0, 1, 2 at `padded[2j + c]` — the even and odd elements of two loads from 2j₀ and the even
/// ones of two from 2j₀ + 2, split in registers — each taken from −inf by the rule of [`take_block`],
/// the argmax starting at the window's first tap inside the row (`first_tap`). AVX-512 (16 windows a
/// step, two-source permutes, mask compares) was tried: no faster on the Zen 5 of stop 43.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_w3s2_maxima<const TRACK: bool>(
    padded: &[f32],
    first_tap: &[u32],
    max: &mut [f32],
    best: &mut [u32],
) {
    use std::arch::x86_64::*;
    let blocks = max.len();
    assert!(padded.len() >= 2 * blocks + 2 && first_tap.len() >= blocks && best.len() >= blocks);
    for j0 in (0..blocks).step_by(LANES) {
        let b = if TRACK {
            _mm256_loadu_si256(first_tap.as_ptr().add(j0).cast())
        } else {
            _mm256_setzero_si256()
        };
        // SAFETY: the 18 floats from 2·j0 lie inside `padded` (asserted above).
        let (m, b) = unsafe { w3s2_block::<TRACK>(padded.as_ptr().add(2 * j0), b) };
        _mm256_storeu_ps(max.as_mut_ptr().add(j0), m);
        if TRACK {
            _mm256_storeu_si256(best.as_mut_ptr().add(j0).cast(), b);
        }
    }
}

/// LANES windows 3 wide at stride 2, window l's taps at `p` + 2l + c (c = 0, 1, 2; 18 floats read
/// from `p`): the even and odd elements of two loads from `p` and the even ones of two from `p` + 2,
/// split in registers, each taken from −inf by the rule of [`take_block`], the argmaxes (tap c)
/// starting at `b`. For AVX2 functions only, into which it is inlined.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn w3s2_block<const TRACK: bool>(
    p: *const f32,
    mut b: std::arch::x86_64::__m256i,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // The even and odd elements of the 16 from p, each in order.
    let split = |p: *const f32| {
        // SAFETY: the caller's 18 floats.
        let (a, b) = unsafe { (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) };
        let in_order =
            |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(v)));
        (
            in_order(_mm256_shuffle_ps::<0x88>(a, b)),
            in_order(_mm256_shuffle_ps::<0xdd>(a, b)),
        )
    };
    let (c0, c1) = split(p);
    let (c2, _) = split(p.add(2));
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for (c, v) in [c0, c1, c2].into_iter().enumerate() {
        let take = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(v, m),
            _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
        );
        m = _mm256_blendv_ps(m, v, take);
        if TRACK {
            let tap = _mm256_castsi256_ps(_mm256_set1_epi32(c as i32));
            b = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), tap, take));
        }
    }
    (m, b)
}

/// [`row_w3s2_maxima`] for a whole slab of rows at once where the rows are an even number w of
/// floats and the padding pw ≤ 1: window j of row r has its taps at r·w − pw + 2j + c, so the rows'
/// windows continue one sequence, w/2 a row (window J = r·w/2 + j at 2J − pw), and the slab goes in
/// one loop of blocks, its input prefetched ahead — per-row copies and calls took most of the time
/// on ECO-Lite's 56-wide rows. Element by element ([`window_w3s2`]): the windows the loop leaves
/// (the first block at pw = 1, which would read before the slab; the last, which would read past
/// it) and those with a tap outside their row (window 0 at pw = 1, the last one clipped in ceil
/// mode), whose values the loop took from the rows around.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn slab_w3s2_maxima<const TRACK: bool>(
    slab: &[f32],
    w: usize,
    pw: usize,
    ow: usize,
    max: &mut [f32],
    best: &mut [u32],
) {
    use std::arch::x86_64::*;
    let half = w / 2;
    let windows = slab.len() / w * half;
    assert!(pw <= 1 && w.is_multiple_of(2) && ow <= half);
    assert!(max.len() >= windows && best.len() >= windows);
    let first = if pw > 0 { LANES.min(windows) } else { 0 };
    let mut j0 = first;
    // Block j0 reads slab[2·j0 − pw .. 2·j0 − pw + 18].
    while j0 + LANES <= windows && 2 * j0 + 18 <= slab.len() + pw {
        let p = slab.as_ptr().add(2 * j0 - pw);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(SLAB_PREFETCH_AHEAD).cast());
        // SAFETY: the 18 floats from p lie inside the slab (the loop's condition).
        let (m, b) = unsafe { w3s2_block::<TRACK>(p, _mm256_setzero_si256()) };
        _mm256_storeu_ps(max.as_mut_ptr().add(j0), m);
        if TRACK {
            _mm256_storeu_si256(best.as_mut_ptr().add(j0).cast(), b);
        }
        j0 += LANES;
    }
    let mut scalar = |wi: usize| (max[wi], best[wi]) = window_w3s2(slab, w, pw, wi);
    (0..first)
        .chain(j0..windows)
        .filter(|wi| wi % half < ow)
        .for_each(&mut scalar);
    // In the loop's range, window 0 of each row at pw = 1 and the last one if clipped.
    let clipped = 2 * (ow - 1) + 2 >= w + pw;
    for r in (0..slab.len() / w).map(|r| r * half) {
        let edges = [(pw > 0).then_some(r), clipped.then_some(r + ow - 1)];
        (edges.into_iter().flatten())
            .filter(|wi| (first..j0).contains(wi))
            .for_each(&mut scalar);
    }
}

/// Window `wi` (= r·w/2 + j) of [`slab_w3s2_maxima`] element by element: its taps inside row r from
/// −inf by the rule of [`take_block`], the argmax starting at its first tap inside the row.
fn window_w3s2(slab: &[f32], w: usize, pw: usize, wi: usize) -> (f32, u32) {
    let (r, j) = (wi / (w / 2), wi % (w / 2));
    let row = &slab[r * w..][..w];
    // taps c with 0 ≤ 2j − pw + c < w
    let inside = pw.saturating_sub(2 * j)..(w + pw - 2 * j).min(3);
    let (mut m, mut b) = (f32::NEG_INFINITY, inside.start as u32);
    for c in inside {
        let v = row[2 * j + c - pw];
        if v > m || v.is_nan() {
            (m, b) = (v, c as u32);
        }
    }
    (m, b)
}

/// [`column_maxima`] in intrinsics, for rows of LANES outputs or more: LANES outputs a step (the last
/// overlapping the one before), in scan order by the rule of [`take_block`]; the argmaxes narrowed
/// into `idx` in registers ([`store_offsets`]). The same in plain Rust over arrays
/// ([`column_blocks`]) became partly scalar code, per-lane branches on the compare, when unrelated
/// code of this file changed (plane_pairs' training forward on 512 × 4 × 28²: 250 → 345 µs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn column_avx2<const TRACK: bool, I: WindowOffset>(
    row_max: &[f32],
    row_best: &[u32],
    window_rows: &[(usize, u32)],
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
) {
    use std::arch::x86_64::*;
    let ow = y.len();
    let end = window_rows.iter().map(|&(at, _)| at).max().unwrap_or(0) + ow;
    assert!(ow >= LANES && end <= row_max.len() && end <= row_best.len());
    assert!(idx.as_ref().is_none_or(|idx| idx.len() == ow));
    let (first, first_offset) = window_rows[0];
    for j in (0..ow).step_by(LANES).map(|j| j.min(ow - LANES)) {
        let tap = |at: usize, offset: u32| {
            let b = _mm256_loadu_si256(row_best.as_ptr().add(at + j).cast());
            _mm256_castsi256_ps(_mm256_add_epi32(b, _mm256_set1_epi32(offset as i32)))
        };
        let mut m = _mm256_loadu_ps(row_max.as_ptr().add(first + j));
        let mut b = if TRACK {
            tap(first, first_offset)
        } else {
            _mm256_setzero_ps()
        };
        for &(at, offset) in &window_rows[1..] {
            let v = _mm256_loadu_ps(row_max.as_ptr().add(at + j));
            let take = _mm256_or_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(v, m),
                _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
            );
            m = _mm256_blendv_ps(m, v, take);
            if TRACK {
                b = _mm256_blendv_ps(b, tap(at, offset), take);
            }
        }
        _mm256_storeu_ps(y.as_mut_ptr().add(j).cast(), m);
        if let (true, Some(idx)) = (TRACK, idx.as_deref_mut()) {
            // SAFETY: j + LANES ≤ ow, asserted idx's length.
            unsafe { store_offsets(&mut idx[j..], _mm256_castps_si256(b)) };
        }
    }
}

/// LANES argmax offsets (u32 lanes, each within `I`'s range) narrowed into `idx[..LANES]`: for u8
/// (every pool of the model zoo) each lane's low byte gathered in registers and stored as 8 bytes
/// (narrowing an output row element by element afterwards took a sixth of the training forward).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_offsets<I: WindowOffset>(idx: &mut [I], b: std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    assert!(idx.len() >= LANES);
    if size_of::<I>() == 1 {
        // (u8, the one one-byte WindowOffset.) The low byte of each lane to the first four bytes of its 128-bit half, then those two
        // words side by side.
        let pick = _mm256_setr_epi8(
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, //
            0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
        );
        let bytes = _mm256_shuffle_epi8(b, pick);
        let low = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
        // SAFETY: 8 bytes, idx's first LANES elements of one byte (asserted).
        unsafe { _mm_storel_epi64(idx.as_mut_ptr().cast(), _mm256_castsi256_si128(low)) };
    } else {
        let mut lanes = [0u32; LANES];
        // SAFETY: LANES u32s.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), b) };
        for (i, &o) in idx.iter_mut().zip(&lanes) {
            *i = I::from_offset(o as usize);
        }
    }
}

/// [`plane_argmax`] in two passes: every input row's maxima over the windows along w (with the tap
/// c < kW each came from), then each output row's over its window's rows. Scanning a window row by
/// row, the rule keeps a row's last NaN or else its first maximum, so taking the rows' winners in
/// order by the same rule gives the window's last NaN or else its first maximum in scan order: the
/// same value and offset as one scan, bit for bit. Overlapping windows share rows: ECO-Lite's 3×3 s2
/// pools compare each input row's taps once, not once per window row that covers it, and both passes
/// run LANES outputs at a time with the maxima in registers ([`row_maxima`], [`column_maxima`]).
/// The rows go by output depth slice (the rows of its window's depth taps), so the row maxima stay
/// in cache.
#[inline(always)]
fn plane_separable<const TRACK: bool, I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    [td, th, tw]: [&[Span]; 3],
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
    scratch: &mut PlaneScratch,
) {
    let [_, h, w] = g.input;
    let kw = g.kernel[2];
    let (oh, ow) = (th.len(), tw.len());
    let (sw, pw) = (g.stride[2], g.padding[2]);
    // A row padded with −inf to every tap of every window (a tap there is never taken: nothing is
    // above −inf, and a window's argmax starts at its first tap inside the row), split into its sw
    // phases of `phase_len` (tap c of output j: phase c mod sw, element j + c / sw).
    let phase_len = ow + (kw - 1) / sw;
    // The row's elements inside some window (floor mode may leave the last ones out).
    let inside = w.min((sw * phase_len).saturating_sub(pw));
    let PlaneScratch {
        phases,
        first_tap,
        tap_at,
        row_max,
        row_best,
        window_rows,
        ..
    } = scratch;
    first_tap.clear();
    first_tap.extend(tw.iter().map(|s| (s.lo as isize - s.start) as u32));
    tap_at.clear();
    tap_at.extend((0..kw).map(|c| c % sw * phase_len + c / sw));
    phases.resize(sw * phase_len, f32::NEG_INFINITY);
    for (od, sd) in td.iter().enumerate() {
        let depth_rows = (sd.hi - sd.lo) * h;
        row_max.resize(depth_rows * ow, 0.0);
        row_best.resize(depth_rows * ow, 0u32);
        for (r, row) in xp[sd.lo * h * w..][..depth_rows * w]
            .chunks_exact(w)
            .enumerate()
        {
            pad_and_split(&row[..inside], sw, pw, phase_len, phases);
            let (m, b) = (&mut row_max[r * ow..][..ow], &mut row_best[r * ow..][..ow]);
            row_maxima::<TRACK>(phases, tap_at, first_tap, m, b);
        }
        for (oi, sh) in th.iter().enumerate() {
            window_rows_of(g, sd, sh, ow, window_rows);
            let out = od * oh + oi;
            let y_row = &mut y[out * ow..][..ow];
            let idx_row = idx.as_deref_mut().map(|i| &mut i[out * ow..][..ow]);
            if window_rows.is_empty() {
                empty_windows(g, sd, sh, tw, y_row, idx_row);
                continue;
            }
            column_maxima::<TRACK, I>(row_max, row_best, window_rows, y_row, idx_row);
        }
    }
}

/// The rows of an output row's windows (depth slice `sd`, rows `sh`): where each row's maxima start
/// among one depth slice's row maxima ([`plane_separable`]), and the offset of its first tap.
fn window_rows_of(g: &PoolGeom, sd: &Span, sh: &Span, ow: usize, rows: &mut Vec<(usize, u32)>) {
    let [_, h, _] = g.input;
    let [_, kh, kw] = g.kernel;
    rows.clear();
    for d in sd.lo..sd.hi {
        for hh in sh.lo..sh.hi {
            let offset =
                ((d as isize - sd.start) as usize * kh + (hh as isize - sh.start) as usize) * kw;
            rows.push((((d - sd.lo) * h + hh) * ow, offset as u32));
        }
    }
}

/// An output row whose windows have no tap inside the input (no PyTorch geometry has one): −inf,
/// the argmax at each window's first tap.
fn empty_windows<I: WindowOffset>(
    g: &PoolGeom,
    sd: &Span,
    sh: &Span,
    tw: &[Span],
    y: &mut [MaybeUninit<f32>],
    idx: Option<&mut [I]>,
) {
    let [_, kh, kw] = g.kernel;
    y.iter_mut().for_each(|v| _ = v.write(f32::NEG_INFINITY));
    if let Some(idx) = idx {
        let first =
            ((sd.lo as isize - sd.start) as usize * kh + (sh.lo as isize - sh.start) as usize) * kw;
        for (i, s) in idx.iter_mut().zip(tw) {
            *i = I::from_offset(first + (s.lo as isize - s.start) as usize);
        }
    }
}

/// `row` after `pw` −inf, −inf to the end of `sw` phases of `phase_len`, as those phases (element
/// k of the padded row at phase k mod sw, index k / sw; the padded row itself when sw = 1). Stride
/// 2, the common case, as pairs (a vectorised deinterleave, [`split_phases`]) into the phases the
/// padding shifts them to.
#[inline(always)]
fn pad_and_split(row: &[f32], sw: usize, pw: usize, phase_len: usize, phases: &mut [f32]) {
    let inf = f32::NEG_INFINITY;
    match sw {
        1 => {
            phases[..pw].fill(inf);
            phases[pw..pw + row.len()].copy_from_slice(row);
            phases[pw + row.len()..].fill(inf);
        }
        2 => {
            let (even, odd) = phases.split_at_mut(phase_len);
            // row[2i] lands at padded index 2i + pw, row[2i + 1] at 2i + 1 + pw.
            let (first, second, shift) = if pw.is_multiple_of(2) {
                (even, odd, [pw / 2; 2])
            } else {
                (odd, even, [pw / 2, pw / 2 + 1])
            };
            let n = [row.len().div_ceil(2), row.len() / 2];
            first[..shift[0]].fill(inf);
            second[..shift[1]].fill(inf);
            let (a, b) = (&mut first[shift[0]..], &mut second[shift[1]..]);
            for ((pair, a), b) in row.chunks_exact(2).zip(a.iter_mut()).zip(b.iter_mut()) {
                (*a, *b) = (pair[0], pair[1]);
            }
            if row.len() % 2 == 1 {
                a[n[0] - 1] = row[row.len() - 1];
            }
            a[n[0]..].fill(inf);
            b[n[1]..].fill(inf);
        }
        _ => {
            phases.fill(inf);
            for (k, &v) in row.iter().enumerate() {
                phases[(k + pw) % sw * phase_len + (k + pw) / sw] = v;
            }
        }
    }
}

/// One input row's maxima over the windows along w and the tap c each came from, LANES outputs at
/// a time (one at a time in rows narrower than LANES): tap c of output j at `src[tap_at[c] + j]`
/// (in the padded row's phases, [`plane_separable`]), each window's argmax starting at its first tap
/// inside the row (`first_tap`).
#[inline(always)]
fn row_maxima<const TRACK: bool>(
    src: &[f32],
    tap_at: &[usize],
    first_tap: &[u32],
    max: &mut [f32],
    best: &mut [u32],
) {
    let tap = |c: usize| &src[tap_at[c]..];
    let mut taps = [&src[..0]; MAX_CONST_TAPS];
    let kw = tap_at.len();
    for (c, t) in taps.iter_mut().enumerate().take(kw) {
        *t = tap(c);
    }
    let n = max.len();
    if n < LANES {
        let all: Vec<_> = (0..kw).map(tap).collect();
        return row_blocks::<TRACK, 0, 1>(&all, 0..n, first_tap, max, best);
    }
    let starts = (0..n).step_by(LANES).map(|j| j.min(n - LANES)); // the last overlaps
    match kw {
        1 => row_blocks::<TRACK, 1, LANES>(&taps[..1], starts, first_tap, max, best),
        2 => row_blocks::<TRACK, 2, LANES>(&taps[..2], starts, first_tap, max, best),
        3 => row_blocks::<TRACK, 3, LANES>(&taps[..3], starts, first_tap, max, best),
        _ => {
            let all: Vec<_> = (0..kw).map(tap).collect();
            row_blocks::<TRACK, 0, LANES>(&all, starts, first_tap, max, best)
        }
    }
}

/// The kernels along w (and window rows, [`column_blocks`]) whose loops are unrolled: the zoo's.
const MAX_CONST_TAPS: usize = 3;

/// [`row_maxima`] for the blocks of N outputs starting at `starts`: tap c of output j at
/// `tap_src[c][j]`; K taps (0: `tap_src.len()`, not unrolled).
#[inline(always)]
fn row_blocks<const TRACK: bool, const K: usize, const N: usize>(
    tap_src: &[&[f32]],
    starts: impl Iterator<Item = usize>,
    first_tap: &[u32],
    max: &mut [f32],
    best: &mut [u32],
) {
    let taps = if K > 0 { K } else { tap_src.len() };
    for j in starts {
        let mut m: [f32; N] = tap_src[0][j..j + N].try_into().unwrap();
        let mut b = [0u32; N];
        if TRACK {
            b.copy_from_slice(&first_tap[j..j + N]);
        }
        for (c, src) in tap_src[1..taps].iter().enumerate() {
            let v: [f32; N] = src[j..j + N].try_into().unwrap();
            take_block::<TRACK, N>(v, (&mut m, &mut b), [c as u32 + 1; N]);
        }
        max[j..j + N].copy_from_slice(&m);
        if TRACK {
            best[j..j + N].copy_from_slice(&b);
        }
    }
}

/// One output row from the row maxima of its window's rows (`window_rows`: where each row's maxima
/// start, and the offset of its first tap), in scan order by the rule of [`plane_argmax`]; with the
/// argmaxes, in intrinsics where the CPU has AVX2 and the row LANES outputs or more
/// ([`column_avx2`]: without them, the call per row made 28²'s inference 12 % slower than the
/// inlined plain code).
#[inline(always)]
fn column_maxima<const TRACK: bool, I: WindowOffset>(
    row_max: &[f32],
    row_best: &[u32],
    window_rows: &[(usize, u32)],
    y: &mut [MaybeUninit<f32>],
    idx: Option<&mut [I]>,
) {
    let n = y.len();
    #[cfg(target_arch = "x86_64")]
    if TRACK && n >= LANES && std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { column_avx2::<TRACK, I>(row_max, row_best, window_rows, y, idx) };
    }
    if n < LANES {
        let all = 0..n;
        return column_blocks::<TRACK, 1, 0, I>(row_max, row_best, window_rows, all, y, idx);
    }
    let starts = (0..n).step_by(LANES).map(|j| j.min(n - LANES));
    match window_rows.len() {
        1 => column_blocks::<TRACK, LANES, 1, I>(row_max, row_best, window_rows, starts, y, idx),
        2 => column_blocks::<TRACK, LANES, 2, I>(row_max, row_best, window_rows, starts, y, idx),
        3 => column_blocks::<TRACK, LANES, 3, I>(row_max, row_best, window_rows, starts, y, idx),
        _ => column_blocks::<TRACK, LANES, 0, I>(row_max, row_best, window_rows, starts, y, idx),
    }
}

/// [`column_maxima`] for the blocks of N outputs starting at `starts`, over R window rows (0:
/// `window_rows.len()`, not unrolled).
#[inline(always)]
fn column_blocks<const TRACK: bool, const N: usize, const R: usize, I: WindowOffset>(
    row_max: &[f32],
    row_best: &[u32],
    window_rows: &[(usize, u32)],
    starts: impl Iterator<Item = usize>,
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
) {
    let rows = if R > 0 { R } else { window_rows.len() };
    let (first, first_offset) = window_rows[0];
    for j in starts {
        let mut m: [f32; N] = row_max[first + j..][..N].try_into().unwrap();
        let mut b = [0u32; N];
        if TRACK {
            b = std::array::from_fn(|l| first_offset + row_best[first + j + l]);
        }
        for &(at, offset) in &window_rows[1..rows] {
            let v: [f32; N] = row_max[at + j..][..N].try_into().unwrap();
            let tap = if TRACK {
                std::array::from_fn(|l| offset + row_best[at + j + l])
            } else {
                [0; N]
            };
            take_block::<TRACK, N>(v, (&mut m, &mut b), tap);
        }
        store(&mut y[j..j + N], &m);
        if let Some(idx) = idx.as_deref_mut() {
            // Narrowed as a whole block (per lane, the compiler fused it with the last select
            // into scalar code).
            let narrow: [I; N] = std::array::from_fn(|l| I::from_offset(b[l] as usize));
            idx[j..j + N].copy_from_slice(&narrow);
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
/// divide it (those windows computed twice, the same way). Groups smaller than LANES take the two-pass
/// path ([`plane_separable`]).
#[inline(always)]
fn plane_tiled<const KW: usize, const TRACK: bool, I: WindowOffset>(
    xp: &[f32],
    g: &PoolGeom,
    y: &mut [MaybeUninit<f32>],
    mut idx: Option<&mut [I]>,
    scratch: &mut PlaneScratch,
) {
    let [_, h, w] = g.input;
    let [_, oh, ow] = g.output;
    let [kd, kh, _] = g.kernel;
    let PlaneScratch {
        tap_at: tap_rows,
        window_starts: starts,
        out_best: best,
        ..
    } = scratch;
    // Where a window's input rows start, from its first (the same for every window).
    tap_rows.clear();
    tap_rows.extend((0..kd).flat_map(|d| (0..kh).map(move |hh| (d * h + hh) * w)));
    let by_rows = ow >= LANES;
    let group = if by_rows { ow } else { oh * ow };
    // Where each window of a group starts, from the group's first input element.
    starts.clear();
    starts.extend((0..group).map(|q| q / ow * kh * w + q % ow * KW));
    best.resize(group, 0);
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
                    // Plain loops: `array::from_fn` here was left a call once the function grew.
                    let mut v = [0f32; LANES];
                    if by_rows {
                        let row = &xp[top + at + q0 * KW..][..LANES * KW];
                        for (l, v) in v.iter_mut().enumerate() {
                            *v = row[l * KW + c];
                        }
                    } else {
                        for (v, &start) in v.iter_mut().zip(&starts[q0..q0 + LANES]) {
                            *v = xp[top + start + at + c];
                        }
                    }
                    take_block::<TRACK, LANES>(v, (&mut m, &mut b), [tap; LANES]);
                }
            }
            store(&mut max[q0..q0 + LANES], &m);
            best[q0..q0 + LANES].copy_from_slice(&b);
        }
        if let Some(idx) = idx.as_deref_mut() {
            for (i, &b) in idx[r * group..][..group].iter_mut().zip(best.iter()) {
                *i = I::from_offset(b as usize);
            }
        }
    }
}

/// `v` into the first `v.len()` outputs of `out`.
#[inline(always)]
fn store(out: &mut [MaybeUninit<f32>], v: &[f32]) {
    for (o, &v) in out.iter_mut().zip(v) {
        o.write(v);
    }
}

/// One tap of N windows (N = LANES but where a row has fewer): `v` replaces the running maximum `m`
/// (and `tap` the argmax `b` when `TRACK`) where `v > m || isnan(v)`, the condition as all-ones /
/// all-zeros lane masks (kept as bools, it was packed to bytes and back between the compare and the
/// blends: a third of the loop's instructions).
#[inline(always)]
fn take_block<const TRACK: bool, const N: usize>(
    v: [f32; N],
    (m, b): (&mut [f32; N], &mut [u32; N]),
    tap: [u32; N],
) {
    let take: [u32; N] =
        std::array::from_fn(|l| (((v[l] > m[l]) | v[l].is_nan()) as u32).wrapping_neg());
    *m = std::array::from_fn(|l| {
        f32::from_bits((v[l].to_bits() & take[l]) | (m[l].to_bits() & !take[l]))
    });
    if TRACK {
        *b = std::array::from_fn(|l| (tap[l] & take[l]) | (b[l] & !take[l]));
    }
}

pub(super) fn max_forward(x: &[f32], g: &PoolGeom) -> Vec<f32> {
    forward_planes::<u32>(x, g, None)
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
    let mut words = vec![0.0f32; g.argmax_words()];
    let n = g.output_len();
    let y = match g.argmax_bytes() {
        1 => forward_planes::<u8>(x, g, Some(&mut bytemuck::cast_slice_mut(&mut words)[..n])),
        2 => forward_planes::<u16>(x, g, Some(&mut bytemuck::cast_slice_mut(&mut words)[..n])),
        _ => forward_planes::<u32>(x, g, Some(&mut bytemuck::cast_slice_mut(&mut words)[..n])),
    };
    (y, words)
}

/// The planes' maxima (and argmaxes into `idx`), planes in parallel tasks of at least [`CHUNK`]
/// input elements, written straight into the new vector (not zero-filled first: on a reused heap
/// block a serial memset, 10 % of ECO-Lite's pool).
fn forward_planes<I: WindowOffset>(x: &[f32], g: &PoolGeom, idx: Option<&mut [I]>) -> Vec<f32> {
    let (iv, ov, len) = (volume(&g.input), volume(&g.output), g.output_len());
    if iv == 0 || ov == 0 {
        return vec![0.0f32; len];
    }
    let [td, th, tw] = pool_tables(g, true);
    let tables = [&td[..], &th[..], &tw[..]];
    let mut y = Vec::with_capacity(len);
    let per_task = CHUNK.div_ceil(iv);
    let ys = y.spare_capacity_mut()[..len]
        .par_chunks_mut(ov)
        .with_min_len(per_task);
    let xs = x.par_chunks(iv);
    match idx {
        None => ys
            .zip(xs)
            .for_each_init(PlaneScratch::default, |scratch, (yp, xp)| {
                with_avx2!(plane_argmax::<I>(xp, g, &tables, yp, None, scratch))
            }),
        Some(idx) => ys.zip(idx.par_chunks_mut(ov)).zip(xs).for_each_init(
            PlaneScratch::default,
            |scratch, ((yp, ip), xp)| {
                with_avx2!(plane_argmax(xp, g, &tables, yp, Some(ip), scratch))
            },
        ),
    }
    // SAFETY: the planes cover 0..len and `plane_argmax` writes every output of its plane: the
    // tiled path every group of a plane (groups ≥ LANES windows, blocks from the group's start to
    // its end), the separable one every output row (blocks or single outputs from 0 to the row's
    // end, or the −inf of an empty window). A panic unwinds past this line, dropping `y` empty.
    unsafe { y.set_len(len) };
    y
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
    #[cfg(target_arch = "x86_64")]
    if g.kernel[2] == 3
        && g.stride[2] == 2
        && g.padding[2] <= 1
        && size_of::<I>() == 1
        && std::is_x86_feature_detected!("avx2")
    {
        return backward_w3s2(bytemuck::cast_slice(idx), dy, g);
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

/// dx of a max pool whose windows along W are 3 wide with stride 2 and padding 0 or 1 (the zoo's
/// overlapping pools: 3×3 and 1×3×3, stride 2), byte offsets, on AVX2: input row by input row with
/// nothing in between, each row's gradients summed in registers, 8 column pairs at a time, from the
/// output rows whose windows cover it, and written once. [`backward_by_taps`] does the same sums
/// through a zero-filled plane in phase layout and a final interleave, one short masked pass per
/// window tap (ECO-Lite's 3×3 s2 pools at 1.7× PyTorch's time; 25–40 % faster this way,
/// docs/PERFORMANCE.md, stop 39).
///
/// Column x = 2j + e (e = 0, 1) lies in window j' at tap c = x + pw − 2j'. Without padding: x = 2j in
/// windows j − 1 (c = 2) and j (c = 0), x = 2j + 1 in window j (c = 1); with padding 1: x = 2j in
/// window j (c = 1), x = 2j + 1 in windows j (c = 2) and j + 1 (c = 0). Output rows are taken in
/// order and, within one, the earlier window first, so each dx element adds its windows' gradients
/// in output order — the sums of [`backward_scatter`] (PyTorch's order) bit for bit.
#[cfg(target_arch = "x86_64")]
fn backward_w3s2(idx: &[u8], dy: &[f32], g: &PoolGeom) -> Vec<f32> {
    let (iv, ov) = (volume(&g.input), volume(&g.output));
    let [d, h, w] = g.input;
    let [_, kh, kw] = g.kernel;
    let ow = g.output[2];
    let [td, th, _] = pool_tables(g, true);
    // for each input row (d, h): the (output row, window row's first tap) pairs covering it, in
    // output order
    let mut covering: Vec<Vec<(usize, usize)>> = vec![vec![]; d * h];
    let out_rows = td.iter().flat_map(|sd| th.iter().map(move |sh| (sd, sh)));
    for (o_row, (sd, sh)) in out_rows.enumerate() {
        for (dd, hh) in (sd.lo..sd.hi).flat_map(|dd| (sh.lo..sh.hi).map(move |hh| (dd, hh))) {
            let window_row =
                (dd as isize - sd.start) as usize * kh + (hh as isize - sh.start) as usize;
            covering[dd * h + hh].push((o_row, window_row * kw));
        }
    }
    let padded = g.padding[2] == 1;
    // per step of PAIRS column pairs from j0: which of the windows j0 − 1 + k + lane (k = 0, 1, 2)
    // exist, as bit masks
    let steps: Vec<[[u32; PAIRS]; 3]> = (0..w.div_ceil(2))
        .step_by(PAIRS)
        .map(|j0| {
            std::array::from_fn(|k| {
                std::array::from_fn(|lane| {
                    let j = (j0 + k + lane) as isize - 1;
                    ((j >= 0 && j < ow as isize) as u32).wrapping_neg()
                })
            })
        })
        .collect();
    par_build(g.planes * iv, iv, |p, out| {
        let rows = |out: &mut [MaybeUninit<f32>], pi: &[u8], pd: &[f32]| {
            for (row, cover) in out.chunks_exact_mut(w).zip(&covering) {
                // SAFETY: the caller checked that the CPU has AVX2.
                unsafe { row_w3s2(row, (pi, pd), ow, cover, &steps, padded) };
            }
        };
        // Every step reads its windows as whole vectors from the element before the plane's first
        // to PAIRS + 2 past its last, those outside a row masked off: straight from dy and the
        // offsets where the planes around hold those elements, else from a padded copy.
        let (len, end) = (ov + PAIRS + 3, idx.len().min(dy.len()));
        match (p * ov).checked_sub(1).filter(|start| start + len <= end) {
            Some(start) => rows(out, &idx[start..], &dy[start..]),
            None => PLANE_WINDOWS.with_borrow_mut(|(pi, pd)| {
                pi.resize(len, 0);
                pd.resize(len, 0.0);
                pi[1..=ov].copy_from_slice(&idx[p * ov..][..ov]);
                pd[1..=ov].copy_from_slice(&dy[p * ov..][..ov]);
                rows(out, pi, pd);
            }),
        }
        out.len()
    })
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// [`backward_w3s2`]'s padded copy of one plane's saved offsets and gradients (the first and
    /// last planes, whose steps would read past the buffers' ends).
    static PLANE_WINDOWS: std::cell::RefCell<(Vec<u8>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Column pairs per step of [`row_w3s2`] (one AVX2 register of each phase).
#[cfg(target_arch = "x86_64")]
const PAIRS: usize = 8;

/// One input row of [`backward_w3s2`] from its covering output rows (`cover`: each one's index and
/// its window row's first tap; the plane's saved offsets and gradients from the element before its
/// first window, rows `ow` apart, in place or padded); `steps`: the masks of the windows that exist,
/// per step. In intrinsics: the same in plain Rust over arrays compiled to partly scalar byte
/// compares and ran slower than [`backward_by_taps`]. The bounds checked once per row, not per step
/// and covering row (those checks and the row iterator were a third of its instructions).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_w3s2(
    row: &mut [MaybeUninit<f32>],
    (pi, pd): (&[u8], &[f32]),
    ow: usize,
    cover: &[(usize, usize)],
    steps: &[[[u32; PAIRS]; 3]],
    padded: bool,
) {
    use std::arch::x86_64::*;
    let w = row.len();
    let last_step = (w.div_ceil(2).max(1) - 1) / PAIRS * PAIRS;
    let reach = |o_row: usize| o_row * ow + last_step + PAIRS + 2;
    assert!(cover
        .iter()
        .all(|&(o_row, _)| reach(o_row) <= pi.len().min(pd.len())));
    for (j0, valid) in (0..w.div_ceil(2)).step_by(PAIRS).zip(steps) {
        let mask = |k: usize| _mm256_loadu_si256(valid[k].as_ptr().cast());
        let masks = [mask(0), mask(1), mask(2)];
        let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for &(o_row, tap0) in cover {
            let at_row = o_row * ow + j0;
            // windows j0 − 1 + k + lane: offsets widened to 32 bits, gradients
            let at = |k: usize| {
                // SAFETY: within the slices (asserted above: j0 ≤ last_step, k + 8 ≤ PAIRS + 2).
                unsafe {
                    let bytes = _mm_loadl_epi64(pi.as_ptr().add(at_row + k).cast());
                    (
                        _mm256_cvtepu8_epi32(bytes),
                        _mm256_loadu_ps(pd.as_ptr().add(at_row + k)),
                        masks[k],
                    )
                }
            };
            let add = |acc: __m256, (ips, dys, ok): (__m256i, __m256, __m256i), c: usize| {
                let tap = _mm256_set1_epi32((tap0 + c) as i32);
                let take = _mm256_and_si256(_mm256_cmpeq_epi32(ips, tap), ok);
                _mm256_add_ps(acc, _mm256_and_ps(dys, _mm256_castsi256_ps(take)))
            };
            let (prev, this, next) = (at(0), at(1), at(2));
            if padded {
                even = add(even, this, 1);
                odd = add(odd, this, 2);
                odd = add(odd, next, 0);
            } else {
                even = add(even, prev, 2);
                even = add(even, this, 0);
                odd = add(odd, this, 1);
            }
        }
        // interleave: e0 o0 e1 o1 … e7 o7
        let (lo, hi) = (_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd));
        let first = _mm256_permute2f128_ps::<0x20>(lo, hi);
        let second = _mm256_permute2f128_ps::<0x31>(lo, hi);
        let dst = &mut row[2 * j0..w.min(2 * (j0 + PAIRS))];
        if dst.len() == 2 * PAIRS {
            // SAFETY: dst holds 16 elements.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr().cast(), first);
                _mm256_storeu_ps(dst.as_mut_ptr().add(PAIRS).cast(), second);
            }
        } else {
            let mut pairs = [0f32; 2 * PAIRS];
            // SAFETY: pairs holds 16 elements.
            unsafe {
                _mm256_storeu_ps(pairs.as_mut_ptr(), first);
                _mm256_storeu_ps(pairs.as_mut_ptr().add(PAIRS), second);
            }
            for (o, &v) in dst.iter_mut().zip(&pairs) {
                o.write(v);
            }
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
    let taps = TapRuns::new(g, 2, tw.len());
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
    taps: &TapRuns,
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

/// How [`span_avg_forward`] and [`span_avg_backward`] walk an input row along w: by taps for pooling
/// windows (every window k taps apart by the stride: one shifted slice per tap, in the row itself at
/// stride 1 or in its phases, [`TapRuns`] — a vector loop each), window by window for adaptive cells
/// (whose sizes vary; only the models' global pools, [`is_global`], are adaptive in the zoo).
enum AlongW<'a> {
    Taps {
        /// forward: per tap c increasing, the outputs j0..j1 it feeds and the shift from an output
        /// to its value in the row (or its phases)
        gather: SumPlan,
        /// backward: per tap c decreasing, the row (or phase) positions it feeds and the shift from
        /// a position to its window's gradient
        scatter: SumPlan,
        stride: usize,
        phase_len: usize,
    },
    Spans(&'a [Span]),
}

/// Positions lo..hi of a destination that take `src[i + shift]`.
#[derive(Clone, Copy)]
struct ShiftedRun {
    lo: usize,
    hi: usize,
    shift: isize,
}

impl AlongW<'_> {
    fn taps(g: &PoolGeom) -> Self {
        let taps = TapRuns::new(g, 2, g.output[2]);
        let row_len = g.stride[2] * taps.phase_len;
        AlongW::Taps {
            gather: SumPlan::new(g.output[2], &taps.gather(1, 0)),
            scatter: SumPlan::new(row_len, &taps.scatter(1, 0)),
            stride: g.stride[2],
            phase_len: taps.phase_len,
        }
    }

    /// The layout of a row as [`Self::sum_row`] reads it and [`Self::spread_row`] writes it: its
    /// (stride, phase length) — the row itself, (1, w), for stride 1 and adaptive cells.
    fn phases(&self, w: usize) -> (usize, usize) {
        match self {
            AlongW::Taps {
                stride, phase_len, ..
            } => (*stride, *phase_len),
            AlongW::Spans(_) => (1, w),
        }
    }

    /// `sums[j]` = Σ of row over window j, adding its taps in index order from −0 (what
    /// `iter().sum()` over the window adds: the same bits).
    #[inline(always)]
    fn sum_row(&self, row: &[f32], phases: &mut Vec<f32>, sums: &mut [f32]) {
        match self {
            AlongW::Taps {
                gather,
                stride,
                phase_len,
                ..
            } => {
                let src = if *stride == 1 {
                    row
                } else {
                    split_phases(row, *stride, *phase_len, phases);
                    &phases[..]
                };
                shifted_sums(sums, src, gather, -0.0);
            }
            AlongW::Spans(spans) => {
                for (s, sw) in sums.iter_mut().zip(spans.iter()) {
                    *s = row[sw.lo..sw.hi].iter().sum();
                }
            }
        }
    }

    /// [`Self::sum_row`] for consecutive input rows of `w` into rows of `sums`: across the rows at
    /// once where the stride is 1 and the output rows are as long ([`shifted_sums_rows`]).
    #[inline(always)]
    fn sum_rows(&self, rows: &[f32], w: usize, phases: &mut Vec<f32>, sums: &mut [f32]) {
        match self {
            AlongW::Taps {
                gather, stride: 1, ..
            } if gather.n == w => shifted_sums_rows(sums, rows, gather, -0.0),
            _ => {
                let ow = sums.len() / (rows.len() / w).max(1);
                for (row, sums) in rows.chunks_exact(w).zip(sums.chunks_exact_mut(ow)) {
                    self.sum_row(row, phases, sums);
                }
            }
        }
    }

    /// [`Self::spread_row`] for consecutive rows of `grads` into rows of `out` (each as
    /// [`Self::phases`] lays it out), across the rows at once as [`Self::sum_rows`] sums them.
    #[inline(always)]
    fn spread_rows(&self, grads: &[f32], ow: usize, out: &mut [f32]) {
        match self {
            AlongW::Taps {
                scatter, stride: 1, ..
            } if scatter.n == ow => shifted_sums_rows(out, grads, scatter, 0.0),
            _ => {
                let row_len = out.len() / (grads.len() / ow).max(1);
                for (grads, row) in grads.chunks_exact(ow).zip(out.chunks_exact_mut(row_len)) {
                    self.spread_row(grads, row);
                }
            }
        }
    }

    /// The adjoint of [`Self::sum_row`]: `row` (laid out as [`Self::phases`] says) with each element
    /// the sum of its windows' `grads` from +0, in increasing window order, as a window-by-window
    /// loop adds them.
    #[inline(always)]
    fn spread_row(&self, grads: &[f32], row: &mut [f32]) {
        match self {
            AlongW::Taps { scatter, .. } => shifted_sums(row, grads, scatter, 0.0),
            AlongW::Spans(spans) => {
                row.fill(0.0);
                for (sw, &g) in spans.iter().zip(grads) {
                    row[sw.lo..sw.hi].iter_mut().for_each(|a| *a += g);
                }
            }
        }
    }
}

/// A destination of `n` positions cut by its runs' ends into segments held by the same runs, for
/// [`shifted_sums`]: built once per call, used for every row (or depth slice).
struct SumPlan {
    n: usize,
    /// (a, b, the runs holding a..b in their order)
    segments: Vec<(usize, usize, Vec<ShiftedRun>)>,
}

impl SumPlan {
    fn new(n: usize, runs: &[ShiftedRun]) -> Self {
        let mut cuts: Vec<usize> = (runs.iter())
            .flat_map(|r| [r.lo, r.hi])
            .chain([0, n])
            .filter(|&e| e <= n)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let segments = (cuts.windows(2))
            .map(|ab| {
                let (a, b) = (ab[0], ab[1]);
                let held = runs.iter().filter(|r| r.lo <= a && b <= r.hi).copied();
                (a, b, held.collect())
            })
            .collect();
        SumPlan { n, segments }
    }
}

/// `out[i]` = `init` + Σ over the runs holding i, in their order, of `src[i + shift]`, segment by
/// segment of the plan: one of LANES or more positions LANES at a time in registers (a pass per run
/// over a short row, reading and writing it back, ran at a third of the speed: ECO-Lite's pools have
/// 28-wide rows), one shorter (a row's edges) element by element.
#[inline(always)]
fn shifted_sums(out: &mut [f32], src: &[f32], plan: &SumPlan, init: f32) {
    debug_assert_eq!(out.len(), plan.n);
    for (a, b, runs) in &plan.segments {
        sums_from(&mut out[*a..*b], src, *a, runs, init);
    }
}

/// [`shifted_sums`] over consecutive rows of `plan.n` positions, `src` in rows of the same length
/// (a stride-1 pool whose output rows are as long as its input's): the plan's widest segment as one
/// loop across all the rows — the positions between, the other segments', computed from the next
/// row's values and then overwritten row by row — so 28-wide rows go mostly in one vector loop.
#[inline(always)]
fn shifted_sums_rows(out: &mut [f32], src: &[f32], plan: &SumPlan, init: f32) {
    let n = plan.n;
    let widest = (0..plan.segments.len()).max_by_key(|&k| plan.segments[k].1 - plan.segments[k].0);
    let (Some(widest), true) = (widest, out.len() >= n) else {
        return;
    };
    debug_assert!(out.len().is_multiple_of(n) && src.len() == out.len());
    // Each run's taps lie inside a row for positions a..b of it, so inside `src` over this span.
    let (a, b, runs) = &plan.segments[widest];
    let across = *a..out.len() - n + b;
    sums_from(&mut out[across.clone()], src, across.start, runs, init);
    for (k, (a, b, runs)) in plan.segments.iter().enumerate() {
        if k == widest {
            continue;
        }
        match runs.len() {
            _ if b - a >= LANES => {
                for r in (0..out.len() / n).map(|r| r * n) {
                    sums_from(&mut out[r + a..r + b], src, r + a, runs, init);
                }
            }
            1 => narrow_sums_rows::<1>(out, src, n, *a..*b, runs, init),
            2 => narrow_sums_rows::<2>(out, src, n, *a..*b, runs, init),
            3 => narrow_sums_rows::<3>(out, src, n, *a..*b, runs, init),
            _ => narrow_sums_rows::<0>(out, src, n, *a..*b, runs, init),
        }
    }
}

/// One segment of fewer than LANES positions (a row's edge) of [`shifted_sums_rows`], in every row
/// of `n`: element by element with the K runs' shifts in registers (a [`sums_from`] call per row and
/// edge took a third of the time of ECO-Lite's stride-1 pools, whose rows are 28 wide).
#[inline(always)]
fn narrow_sums_rows<const K: usize>(
    out: &mut [f32],
    src: &[f32],
    n: usize,
    segment: std::ops::Range<usize>,
    runs: &[ShiftedRun],
    init: f32,
) {
    let runs = &runs[..if K > 0 { K } else { runs.len() }];
    for r in (0..out.len() / n).map(|r| r * n) {
        for i in r + segment.start..r + segment.end {
            let tap = |run: &ShiftedRun| src[(i as isize + run.shift) as usize];
            out[i] = runs.iter().fold(init, |acc, run| acc + tap(run));
        }
    }
}

/// `out[i]` = `init` + Σ over `runs` in order of `src[at + i + shift]`: one segment of
/// [`shifted_sums`] starting at position `at`, by [`segment_sums`] (unrolled for up to 3 runs).
#[inline(always)]
fn sums_from<O: Slot>(out: &mut [O], src: &[f32], at: usize, runs: &[ShiftedRun], init: f32) {
    let tap = |r: &ShiftedRun| &src[(at as isize + r.shift) as usize..][..out.len()];
    match runs.len() {
        1 => segment_sums::<1, O>(out, &[tap(&runs[0])], init),
        2 => segment_sums::<2, O>(out, &[tap(&runs[0]), tap(&runs[1])], init),
        3 => segment_sums::<3, O>(out, &[tap(&runs[0]), tap(&runs[1]), tap(&runs[2])], init),
        _ => segment_sums::<0, O>(out, &runs.iter().map(tap).collect::<Vec<_>>(), init),
    }
}

/// One segment of [`shifted_sums`]: `out[i]` = `init` + Σ over `taps` in order of `tap[i]` (every
/// tap as long as `out`), K taps (0: `taps.len()`, not unrolled); LANES at a time, the last block
/// overlapping the one before, or element by element when `out` is shorter than LANES.
#[inline(always)]
fn segment_sums<const K: usize, O: Slot>(out: &mut [O], taps: &[&[f32]], init: f32) {
    let n = out.len();
    let taps = &taps[..if K > 0 { K } else { taps.len() }];
    if n < LANES {
        for (i, o) in out.iter_mut().enumerate() {
            o.set(taps.iter().fold(init, |acc, t| acc + t[i]));
        }
        return;
    }
    let mut i0 = 0;
    loop {
        let start = i0.min(n - LANES);
        let mut acc = [init; LANES];
        for t in taps {
            let v: &[f32; LANES] = t[start..start + LANES].try_into().unwrap();
            for l in 0..LANES {
                acc[l] += v[l];
            }
        }
        for (o, &v) in out[start..start + LANES].iter_mut().zip(&acc) {
            o.set(v);
        }
        if start == n - LANES {
            break;
        }
        i0 += LANES;
    }
}

/// A position the shifted sums write: a buffer's f32, or an output not yet written.
trait Slot {
    fn set(&mut self, v: f32);
}

impl Slot for f32 {
    #[inline(always)]
    fn set(&mut self, v: f32) {
        *self = v;
    }
}

impl Slot for MaybeUninit<f32> {
    #[inline(always)]
    fn set(&mut self, v: f32) {
        self.write(v);
    }
}

/// Per output of a plane, its window's divisor (the product of the spans' counts), or 0 for a window
/// with no tap inside the input (its average is 0, as PyTorch's kernels skip it): the same for every
/// plane.
fn divisors(t: &[Vec<Span>; 3]) -> Vec<f32> {
    let mut div = Vec::with_capacity(t.iter().map(Vec::len).product());
    for sd in &t[0] {
        for sh in &t[1] {
            div.extend(t[2].iter().map(|sw| {
                let empty = sd.is_empty() || sh.is_empty() || sw.is_empty();
                let n = sd.count * sh.count * sw.count;
                if empty {
                    0.0
                } else {
                    n as f32
                }
            }));
        }
    }
    div
}

/// Buffers of one task of [`span_avg_forward`] or [`span_avg_backward`], kept from plane to plane.
#[derive(Default)]
struct AvgScratch {
    phases: Vec<f32>,
    /// forward: every input row's sums over the w-windows; backward: the gradients spread along d
    rows: Vec<f32>,
    /// backward: spread along h
    by_h: Vec<f32>,
    /// backward: one input row spread along w
    row: Vec<f32>,
    /// forward: where an output row's window rows start in `rows`
    window_rows: Vec<usize>,
    /// forward: one output depth slice's window sums ([`HSteps`])
    sums: Vec<f32>,
}

/// The h step of pooling windows at stride 1 along h, over whole depth slices: output row i + 1's
/// window rows are row i's shifted by one, so each tap is one [`ShiftedRun`] over all output rows
/// and a slice of ECO-Lite's 28-wide rows sums in one vector loop, not 28 short ones.
struct HSteps {
    /// per output depth slice: its windows' sums of the row sums of every input depth slice
    /// ([din][h][ow]), its depth taps in order and in each the h taps in order
    gather: Vec<SumPlan>,
}

impl HSteps {
    fn new(g: &PoolGeom, td: &[Span]) -> Option<Self> {
        if g.stride[1] != 1 {
            return None;
        }
        let h = g.input[1];
        let [_, oh, ow] = g.output;
        let taps = TapRuns::new(g, 1, oh);
        let gather = (td.iter())
            .map(|sd| {
                let runs: Vec<ShiftedRun> = (sd.lo..sd.hi)
                    .flat_map(|d| taps.gather(ow, (d * h * ow) as isize))
                    .collect();
                SumPlan::new(oh * ow, &runs)
            })
            .collect();
        Some(HSteps { gather })
    }
}

/// Where [`span_avg_backward`] keeps a plane's g = dy / divisor: per depth slice, `rows` rows of
/// `pitch` with g's (oh, ow) block at (`top`, `left`) among zeros. Along an axis at stride 1 the
/// zeros are the k − 1 − p positions before g and those after up to the input's length + k − 1, so
/// input position i takes its windows' g, in window order, from positions i..i + k: k shifted sums
/// over every position, no edges (the sums start from +0, and adding +0 changes none).
struct GradLayout {
    rows: usize,
    pitch: usize,
    top: usize,
    left: usize,
    /// at stride 1 along h: the k_h taps, each a shift by a row
    box_h: Option<Vec<ShiftedRun>>,
    /// at stride 1 along w: the k_w taps, each a shift by one
    box_w: Option<Vec<ShiftedRun>>,
}

impl GradLayout {
    /// g's block alone (adaptive cells, strides above 1).
    fn plain(oh: usize, ow: usize) -> Self {
        GradLayout {
            rows: oh,
            pitch: ow,
            top: 0,
            left: 0,
            box_h: None,
            box_w: None,
        }
    }

    fn of(g: &PoolGeom) -> Self {
        let mut layout = GradLayout::plain(g.output[1], g.output[2]);
        // (the zeros before, the length along the axis, its k taps: every input position, in
        // units of `unit`, from g's shifted by c units)
        let boxed = |axis: usize, unit: usize| {
            let k = g.kernel[axis];
            let before = k - 1 - g.padding[axis];
            let taps = (0..k).map(|c| ShiftedRun {
                lo: 0,
                hi: g.input[axis] * unit,
                shift: (c * unit) as isize,
            });
            (before, g.input[axis] + k - 1, taps.collect())
        };
        // (PyTorch's pools keep p ≤ k / 2; the layout needs p < k)
        let at_stride_one = |axis: usize| g.stride[axis] == 1 && g.padding[axis] < g.kernel[axis];
        if at_stride_one(2) {
            let (left, pitch, taps) = boxed(2, 1);
            (layout.left, layout.pitch, layout.box_w) = (left, pitch, Some(taps));
        }
        if at_stride_one(1) {
            let (top, rows, taps) = boxed(1, layout.pitch);
            (layout.top, layout.rows, layout.box_h) = (top, rows, Some(taps));
        }
        layout
    }

    fn slice(&self) -> usize {
        self.rows * self.pitch
    }

    /// Where row i of g's block in depth slice d starts.
    fn row_at(&self, d: usize, i: usize) -> usize {
        d * self.slice() + (self.top + i) * self.pitch + self.left
    }
}

/// A window's average: its sum over its divisor, +0 for an empty window (divisor 0). Without a
/// branch, so that a loop of fixed length over it becomes vector code.
#[inline(always)]
fn average(sum: f32, n: f32) -> f32 {
    let inside = ((n != 0.0) as u32).wrapping_neg();
    f32::from_bits((sum / n).to_bits() & inside)
}

/// One output row of [`span_avg_forward`]: `out[j]` = (0 + Σ over the window's rows, in order, of
/// `rows[at + j]`) / `div[j]` (0 where `div[j]` is 0), LANES outputs at a time in registers (the last
/// block overlapping the one before), so the row is written once: adding row by row into a sum, a
/// read and write back per row, then dividing ran at 0.8× the speed on ECO-Lite's 28-wide rows.
#[inline(always)]
fn average_row(rows: &[f32], window_rows: &[usize], div: &[f32], out: &mut [MaybeUninit<f32>]) {
    let ow = out.len();
    if ow < LANES {
        for (j, o) in out.iter_mut().enumerate() {
            let sum = window_rows.iter().fold(0.0, |acc, &at| acc + rows[at + j]);
            o.write(average(sum, div[j]));
        }
        return;
    }
    let mut j0 = 0;
    loop {
        let start = j0.min(ow - LANES);
        let mut acc = [0.0f32; LANES];
        for &at in window_rows {
            let v: &[f32; LANES] = rows[at + start..][..LANES].try_into().unwrap();
            for l in 0..LANES {
                acc[l] += v[l];
            }
        }
        for l in 0..LANES {
            out[start + l].write(average(acc[l], div[start + l]));
        }
        if start == ow - LANES {
            break;
        }
        j0 += LANES;
    }
}

/// Window averages over separable span tables; the divisor is the product of the spans' counts.
/// An empty window gives 0 (as PyTorch's kernels skip it). Separably: first every input row's sums
/// over the w-windows ([`AlongW::sum_rows`]), then the (d, h) rows of each window added across all w
/// at once — a whole depth slice at a time at stride 1 along h ([`average_slices`]), else output row
/// by output row ([`average_rows`]) — in the order a window-by-window sum would add them (the same
/// bits).
fn span_avg_forward(
    x: &[f32],
    planes: usize,
    input: [usize; 3],
    t: &[Vec<Span>; 3],
    along_w: AlongW,
    along_h: Option<HSteps>,
) -> Vec<f32> {
    let [_, h, w] = input;
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
    let div = divisors(t);
    let len = planes * ov;
    let mut y = Vec::with_capacity(len);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(ov)
        .with_min_len(CHUNK.div_ceil(iv))
        .zip(x.par_chunks(iv))
        .for_each_init(AvgScratch::default, |s, (yp, xp)| {
            with_avx2!({
                s.rows.resize(iv / w * ow, 0.0);
                along_w.sum_rows(xp, w, &mut s.phases, &mut s.rows);
                match &along_h {
                    Some(hs) => average_slices(hs, &s.rows, &div, &mut s.sums, yp),
                    None => average_rows(t, h, &s.rows, &div, &mut s.window_rows, yp),
                }
            })
        });
    // SAFETY: the planes cover 0..len and every output row of a plane is written whole above (the
    // tables have t[0].len() · t[1].len() rows of ow). A panic unwinds past this line, dropping `y`
    // empty.
    unsafe { y.set_len(len) };
    y
}

/// [`span_avg_forward`]'s output plane by [`HSteps`]: each output depth slice's window sums of the
/// row sums `rows` in one [`shifted_sums`] (through `sums`), divided as they are written.
#[inline(always)]
fn average_slices(
    hs: &HSteps,
    rows: &[f32],
    div: &[f32],
    sums: &mut Vec<f32>,
    y: &mut [MaybeUninit<f32>],
) {
    let slice = y.len() / hs.gather.len();
    sums.resize(slice, 0.0);
    let outputs = y.chunks_exact_mut(slice).zip(div.chunks_exact(slice));
    for (plan, (out, div)) in hs.gather.iter().zip(outputs) {
        shifted_sums(sums, rows, plan, 0.0);
        for ((o, &sum), &n) in out.iter_mut().zip(sums.iter()).zip(div) {
            o.write(average(sum, n));
        }
    }
}

/// [`span_avg_forward`]'s output plane row by row ([`average_row`]) from the row sums `rows` of an
/// input plane `h` rows high: where the windows move along h by more than one row, or are adaptive.
#[inline(always)]
fn average_rows(
    t: &[Vec<Span>; 3],
    h: usize,
    rows: &[f32],
    div: &[f32],
    window_rows: &mut Vec<usize>,
    y: &mut [MaybeUninit<f32>],
) {
    let ow = t[2].len();
    let mut outputs = y.chunks_exact_mut(ow).zip(div.chunks_exact(ow));
    for sd in &t[0] {
        for sh in &t[1] {
            let (out, div) = outputs.next().unwrap();
            window_rows.clear();
            for d in sd.lo..sd.hi {
                window_rows.extend((sh.lo..sh.hi).map(|hh| (d * h + hh) * ow));
            }
            average_row(rows, window_rows, div, out);
        }
    }
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
/// over whole (h, w)-output rows ([`spread_along_d`]) into the [`GradLayout`], then along h (at
/// stride 1 a depth slice at a time as k_h shifted sums over the zero-padded rows, else
/// [`spread_along_h`]), then along w into the plane (at stride 1 row by row as k_w shifted sums,
/// else [`AlongW::spread_rows`] and [`merge_phases`]), all vector loops; a window of k_d·k_h·k_w
/// taps costs k_d + k_h + k_w additions per element instead of their product.
fn span_avg_backward(
    dy: &[f32],
    planes: usize,
    input: [usize; 3],
    t: &[Vec<Span>; 3],
    along_w: AlongW,
    layout: GradLayout,
) -> Vec<f32> {
    let [din, h, w] = input;
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
    let div = divisors(t);
    // Windows one depth slice deep, output slice d on input slice d (2D pools): no spread along d.
    let depth_is_identity =
        t[0].len() == din && (t[0].iter().enumerate()).all(|(i, sd)| (sd.lo, sd.hi) == (i, i + 1));
    let (stride, phase_len) = along_w.phases(w);
    let len = planes * iv;
    let mut dx = Vec::with_capacity(len);
    dx.spare_capacity_mut()[..len]
        .par_chunks_mut(iv)
        .with_min_len(CHUNK.div_ceil(iv + ov))
        .zip(dy.par_chunks(ov))
        .for_each_init(AvgScratch::default, |s, (dxp, dyp)| {
            with_avx2!({
                let (by_d, by_h) = (&mut s.rows, &mut s.by_h);
                spread_along_d(t, din, dyp, &div, depth_is_identity, &layout, by_d);
                let pitch = layout.pitch;
                match &layout.box_h {
                    Some(taps) => {
                        by_h.resize(din * h * pitch, 0.0);
                        for (d, dst) in by_h.chunks_exact_mut(h * pitch).enumerate() {
                            sums_from(dst, by_d, d * layout.slice(), taps, 0.0);
                        }
                    }
                    None => spread_along_h(t, din, h, pitch, by_d, by_h),
                }
                // along w, into the plane
                let rows = dxp.chunks_exact_mut(w);
                match &layout.box_w {
                    Some(taps) => {
                        for (out, row) in rows.zip(by_h.chunks_exact(pitch)) {
                            sums_from(out, row, 0, taps, 0.0);
                        }
                    }
                    None => {
                        let row_len = stride * phase_len;
                        s.row.resize(din * h * row_len, 0.0);
                        along_w.spread_rows(by_h, ow, &mut s.row);
                        for (out, row) in rows.zip(s.row.chunks_exact(row_len)) {
                            merge_phases(row, stride, phase_len, out);
                        }
                    }
                }
            })
        });
    // SAFETY: the planes cover 0..len and every input row of a plane is written whole above
    // (`sums_from` and `merge_phases` write every element of their row). A panic unwinds past this
    // line, dropping `dx` empty.
    unsafe { dx.set_len(len) };
    dx
}

/// [`span_avg_backward`]'s first step: g = dy / divisor (0 for an empty window) spread along d
/// into `layout`'s rows, `by_d`[d][oh][ow] = (0 + Σ over the output slices whose windows hold d, in
/// order, of g) — g itself where each window is one depth slice deep on its own slice
/// (`depth_is_identity`). The layout's zeros are written with the buffer (it keeps its length
/// from plane to plane).
#[inline(always)]
fn spread_along_d(
    t: &[Vec<Span>; 3],
    din: usize,
    dy: &[f32],
    div: &[f32],
    depth_is_identity: bool,
    layout: &GradLayout,
    by_d: &mut Vec<f32>,
) {
    let (oh, ow) = (t[1].len(), t[2].len());
    let rows_of = |o: usize| (dy.chunks_exact(ow).zip(div.chunks_exact(ow))).skip(o * oh);
    if depth_is_identity {
        by_d.resize(din * layout.slice(), 0.0);
        for d in 0..din {
            for (i, (gy, n)) in rows_of(d).take(oh).enumerate() {
                averages(&mut by_d[layout.row_at(d, i)..][..ow], gy, n);
            }
        }
        return;
    }
    by_d.clear();
    by_d.resize(din * layout.slice(), 0.0);
    for (o, sd) in t[0].iter().enumerate() {
        for (i, (gy, n)) in rows_of(o).take(oh).enumerate() {
            for d in sd.lo..sd.hi {
                let dst = &mut by_d[layout.row_at(d, i)..][..ow];
                for ((a, &gy), &n) in dst.iter_mut().zip(gy).zip(n) {
                    *a += average(gy, n);
                }
            }
        }
    }
}

/// `dst[j]` = average(`gy[j]`, `n[j]`), LANES at a time (the last block overlapping the one before:
/// ECO-Lite's rows are 28 wide, and the loop's remainder took a third of this step's time).
#[inline(always)]
fn averages(dst: &mut [f32], gy: &[f32], n: &[f32]) {
    let len = dst.len();
    if len < LANES {
        for ((a, &gy), &n) in dst.iter_mut().zip(gy).zip(n) {
            *a = average(gy, n);
        }
        return;
    }
    let mut j0 = 0;
    loop {
        let start = j0.min(len - LANES);
        let gy: &[f32; LANES] = gy[start..][..LANES].try_into().unwrap();
        let n: &[f32; LANES] = n[start..][..LANES].try_into().unwrap();
        let a: &mut [f32; LANES] = (&mut dst[start..][..LANES]).try_into().unwrap();
        for l in 0..LANES {
            a[l] = average(gy[l], n[l]);
        }
        if start == len - LANES {
            break;
        }
        j0 += LANES;
    }
}

/// [`span_avg_backward`]'s h step output row by output row, where the windows move along h by more
/// than a row (or are adaptive): `by_h`[d][h] = 0 + Σ over the output rows whose windows hold h, in
/// order, of `by_d`'s rows (each `pitch` long, g's block at their start).
#[inline(always)]
fn spread_along_h(
    t: &[Vec<Span>; 3],
    din: usize,
    h: usize,
    pitch: usize,
    by_d: &[f32],
    by_h: &mut Vec<f32>,
) {
    let oh = t[1].len();
    by_h.clear();
    by_h.resize(din * h * pitch, 0.0);
    for d in 0..din {
        for (i, sh) in t[1].iter().enumerate() {
            let src = &by_d[(d * oh + i) * pitch..][..pitch];
            for hh in sh.lo..sh.hi {
                let dst = &mut by_h[(d * h + hh) * pitch..][..pitch];
                dst.iter_mut().zip(src).for_each(|(a, &b)| *a += b);
            }
        }
    }
}

pub(super) fn avg_forward(x: &[f32], g: &PoolGeom, count_include_pad: bool) -> Vec<f32> {
    let t = pool_tables(g, count_include_pad);
    let along_h = HSteps::new(g, &t[0]);
    span_avg_forward(x, g.planes, g.input, &t, AlongW::taps(g), along_h)
}

pub(super) fn avg_backward(dy: &[f32], g: &PoolGeom, count_include_pad: bool) -> Vec<f32> {
    let t = pool_tables(g, count_include_pad);
    span_avg_backward(
        dy,
        g.planes,
        g.input,
        &t,
        AlongW::taps(g),
        GradLayout::of(g),
    )
}

pub(super) fn adaptive_forward(x: &[f32], g: &AdaptivePoolGeom) -> Vec<f32> {
    let t = adaptive_tables(g);
    span_avg_forward(x, g.planes, g.input, &t, AlongW::Spans(&t[2]), None)
}

pub(super) fn adaptive_backward(dy: &[f32], g: &AdaptivePoolGeom) -> Vec<f32> {
    let t = adaptive_tables(g);
    let layout = GradLayout::plain(t[1].len(), t[2].len());
    span_avg_backward(dy, g.planes, g.input, &t, AlongW::Spans(&t[2]), layout)
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
        let two_d = case.is_multiple_of(2);
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
    /// and on the two-pass path (groups under LANES windows), blocks overlapping at a group's end;
    /// by pairs for rows of LANES windows 2 wide or more ([`plane_pairs`]), along depth alone
    /// ([`plane_depth`]).
    #[test]
    fn tiled_backward_is_the_scatter() {
        let shapes = [
            ([1, 2, 2], [3, 8, 6]),
            ([1, 2, 2], [2, 4, 38]), // 19 windows a row: blocks at 0, 8 and 11 (overlapping)
            ([2, 1, 1], [4, 2, 5]),
            ([2, 1, 1], [2, 3, 21]),
            ([2, 2, 2], [2, 4, 6]),
            ([2, 2, 2], [4, 4, 20]), // 10 windows a row, over depth: plane_pairs
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

    /// x and dy for the backward-against-scatter tests: ties in x for even cases, and NaN, ±inf
    /// and −0 placed in both (streams `seed`, `seed + 100`).
    /// The two forms of a column pass agree bit for bit, values and offsets (u8 and u16), where
    /// both run: [`column_avx2`] (what AVX2 CPUs run with argmaxes) and [`column_blocks`] (the
    /// others), over 1–4 window rows of row maxima with ties, NaN, ±inf and ±0, rows of 8–40.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn column_avx2_is_column_blocks() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        fn both<I: WindowOffset + Copy + Default + PartialEq + std::fmt::Debug>(
            (row_max, row_best): (&[f32], &[u32]),
            rows: &[(usize, u32)],
            ow: usize,
        ) {
            let run = |avx2: bool| {
                let mut y = vec![MaybeUninit::new(0.0f32); ow];
                let mut idx = vec![I::default(); ow];
                if avx2 {
                    // SAFETY: the CPU has AVX2 (checked by the test).
                    unsafe {
                        column_avx2::<true, I>(row_max, row_best, rows, &mut y, Some(&mut idx))
                    };
                } else {
                    let starts = (0..ow).step_by(LANES).map(|j| j.min(ow - LANES));
                    column_blocks::<true, LANES, 0, I>(
                        row_max,
                        row_best,
                        rows,
                        starts,
                        &mut y,
                        Some(&mut idx),
                    );
                }
                // SAFETY: every output was initialised above.
                let bits: Vec<u32> = y
                    .iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits())
                    .collect();
                (bits, idx)
            };
            assert_eq!(run(true), run(false), "{rows:?} ow {ow}");
        }
        let mut dr = Draw::new(61);
        for case in 0..100 {
            let ow = dr.int(LANES, 40);
            let n_rows = dr.int(1, 4);
            let len = n_rows * ow + dr.int(0, 5);
            let mut row_max = data(len, 900 + case as u64);
            if case % 2 == 0 {
                row_max.iter_mut().for_each(|v| *v = (*v * 2.0).round()); // ties, ±0
            }
            for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0] {
                row_max[dr.int(0, len - 1)] = special;
            }
            let row_best: Vec<u32> = (0..len).map(|_| dr.int(0, 2) as u32).collect();
            let rows: Vec<(usize, u32)> = (0..n_rows)
                .map(|r| (r * ow + dr.int(0, len - n_rows * ow), (r * 3) as u32))
                .collect();
            both::<u8>((&row_max, &row_best), &rows, ow);
            both::<u16>((&row_max, &row_best), &rows, ow);
        }
    }

    fn scatter_inputs(g: &PoolGeom, case: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut x = data(g.planes * volume(&g.input), seed + case as u64);
        if case.is_multiple_of(2) {
            x.iter_mut().for_each(|v| *v = (*v * 2.0).round()); // ties
        }
        let mut dy = data(g.output_len(), seed + 100 + case as u64);
        for (i, special) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0]
            .into_iter()
            .enumerate()
        {
            let at = (case * 7 + i * 13) % x.len();
            x[at] = special;
            let at = (case * 5 + i * 11) % dy.len();
            dy[at] = special;
        }
        (x, dy)
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
            let (x, dy) = scatter_inputs(&g, case, 500);
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

    /// The 3-wide, stride-2 backward ([`backward_w3s2`], reached through [`max_backward`] on AVX2
    /// machines) is bit for bit the scatter in output order on random geometries whose W windows are
    /// 3 wide with stride 2 and padding 0 or 1 — widths 3–45 (one to three steps of 8 column pairs,
    /// ragged ends, ceil-mode windows), random D and H windows (overlapping, padded, 3-D) — with
    /// ties, NaN and ±inf in x and −0, ±inf and NaN in dy.
    #[test]
    fn w3s2_backward_is_the_scatter() {
        let mut dr = Draw::new(39);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut padded = 0;
        for case in 0..150 {
            let (mut g, ceil_mode) = random_geom(&mut dr, case);
            g.input[2] = dr.int(3, 45);
            (g.kernel[2], g.stride[2], g.padding[2]) = (3, 2, dr.int(0, 1));
            g.output[2] = pool_out_size(g.input[2], 3, 2, g.padding[2], ceil_mode).unwrap();
            padded += g.padding[2];
            let (x, dy) = scatter_inputs(&g, case, 700);
            let (_, argmax) = max_forward_argmax(&x, &g);
            assert_eq!(g.argmax_bytes(), 1, "{g:?}");
            let idx = &bytemuck::cast_slice::<f32, u8>(&argmax)[..g.output_len()];
            let got = max_backward(&argmax, &dy, &g);
            assert_eq!(bits(&got), bits(&backward_scatter(idx, &dy, &g)), "{g:?}");
        }
        assert!(
            padded > 30 && padded < 120,
            "{padded} geometries padded along W"
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

    /// One scan of each window in d, h, w order by PyTorch's rule: its maximum and the offset of
    /// the tap taken ((kd·kH + kh)·kW + kw from the window's padded start), starting at its first
    /// tap inside the input.
    fn naive_scan(xp: &[f32], g: &PoolGeom, o: [usize; 3]) -> (f32, usize) {
        let (mut m, mut best) = (f32::NEG_INFINITY, None);
        for t in 0..g.kernel_volume() {
            let k = [
                t / (g.kernel[1] * g.kernel[2]),
                t / g.kernel[2] % g.kernel[1],
                t % g.kernel[2],
            ];
            let pos: [isize; 3] = std::array::from_fn(|i| {
                (o[i] * g.stride[i] + k[i]) as isize - g.padding[i] as isize
            });
            if (0..3).any(|i| pos[i] < 0 || pos[i] >= g.input[i] as isize) {
                continue;
            }
            let v =
                xp[(pos[0] as usize * g.input[1] + pos[1] as usize) * g.input[2] + pos[2] as usize];
            best.get_or_insert(t);
            if v > m || v.is_nan() {
                (m, best) = (v, Some(t));
            }
        }
        (m, best.unwrap())
    }

    /// The two-pass forward ([`plane_separable`]: row maxima, then over the window's rows) gives
    /// each window's value and argmax offset of one scan exactly — ties (the first), NaN (the last),
    /// ±inf, windows whose taps inside the input are all −inf (the first of them), at padded and
    /// ceil-mode edges — on rows of 1 to 70 windows (one at a time, LANES at a time with the last
    /// block overlapping), kernels of 1 to 5 along w (unrolled and not) and windows over depth; one
    /// case in five 3 wide with stride 2 along w on rows of LANES windows or more ([`plane_w3s2`]),
    /// one in five along depth alone ([`plane_depth`]).
    #[test]
    fn separable_forward_is_one_scan() {
        let mut dr = Draw::new(41);
        for case in 0..200 {
            let ceil_mode = dr.bool();
            let mut kernel = [
                if case % 3 == 0 { dr.int(1, 3) } else { 1 },
                dr.int(1, 4),
                dr.int(1, 5),
            ];
            let mut stride = [dr.int(1, 2), dr.int(1, 3), dr.int(1, 3)];
            let mut padding: [usize; 3] = std::array::from_fn(|i| dr.int(0, kernel[i] / 2));
            let mut input = [dr.int(1, 3), dr.int(1, 9), dr.int(1, 150)];
            match case % 5 {
                3 => {
                    kernel = [dr.int(1, 3), 1, 1];
                    (stride[1], stride[2]) = (1, 1);
                    padding = [dr.int(0, kernel[0] / 2), 0, 0];
                    input[0] = dr.int(1, 6);
                }
                4 => {
                    (kernel[2], stride[2], padding[2]) = (3, 2, dr.int(0, 1));
                    input[2] = dr.int(2 * LANES + 1, 150);
                }
                _ => {}
            }
            let out: Vec<_> = (0..3)
                .map(|i| pool_out_size(input[i], kernel[i], stride[i], padding[i], ceil_mode))
                .collect();
            let Some(output) = out.iter().copied().collect::<Option<Vec<_>>>() else {
                continue;
            };
            let g = PoolGeom {
                planes: 2,
                input,
                output: [output[0], output[1], output[2]],
                kernel,
                stride,
                padding,
            };
            if windows_tile(&g) && !along_depth_only(&g) {
                continue; // plane_tiled's, tested in tiled_backward_is_the_scatter
            }
            let iv = volume(&input);
            let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
            let x: Vec<f32> = data(g.planes * iv, 500 + case as u64)
                .iter()
                .enumerate()
                .map(
                    |(i, &v)| match (case % 4, (v * 1000.0).abs() as usize % 16) {
                        (0, _) => f32::NEG_INFINITY, // every window all −inf
                        (1, r) if r < 5 => specials[r],
                        (2, _) => (v * 2.0).round(), // ties
                        _ if i % 7 == 0 => f32::NEG_INFINITY,
                        _ => v,
                    },
                )
                .collect();
            let (y, words) = max_forward_argmax(&x, &g);
            let offsets: Vec<usize> = match g.argmax_bytes() {
                1 => bytemuck::cast_slice::<f32, u8>(&words)
                    .iter()
                    .map(|&o| o as usize)
                    .collect(),
                _ => unreachable!("kernels here have at most 60 taps"),
            };
            let eval = max_forward(&x, &g);
            let ov = volume(&g.output);
            for p in 0..g.planes {
                for (oi, o) in outputs(g.output).enumerate() {
                    let (m, t) = naive_scan(&x[p * iv..][..iv], &g, o);
                    let at = p * ov + oi;
                    let same = |a: f32| a.to_bits() == m.to_bits() || a.is_nan() && m.is_nan();
                    assert!(
                        same(y[at]) && same(eval[at]),
                        "{g:?} output {o:?}: {} {} {m}",
                        y[at],
                        eval[at]
                    );
                    assert_eq!(offsets[at], t, "{g:?} plane {p} output {o:?}");
                }
            }
        }
    }

    #[test]
    fn max_pool_wide_windows_save_u16_and_u32_offsets() {
        // 17×17 = 289 taps (u16 offsets) with padding, 87×3 = 261 3 wide at stride 2 (u16, by
        // `plane_w3s2`), and one 1-d window of 70 001 taps (u32).
        for (input, kernel, stride, padding, bytes) in [
            ([1, 20, 21], [1, 17, 17], [1, 2, 3], [0, 8, 7], 2),
            ([1, 88, 40], [1, 87, 3], [1, 1, 2], [0, 0, 1], 2),
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

    /// Rows wide enough for several register blocks of the interior (the last overlapping the one
    /// before) and edges on both sides, at stride 1 (ECO-Lite's 3×3 s1 p1 on 28²) and 2 (phases).
    #[test]
    fn avg_pool_wide_rows_match_naive() {
        let geoms = [
            ([1, 28, 28], [1, 3, 3], [1, 1, 1], [0, 1, 1]),
            ([2, 9, 37], [2, 3, 5], [1, 1, 1], [1, 1, 2]),
            ([1, 12, 29], [1, 3, 3], [1, 2, 2], [0, 1, 1]),
            ([1, 5, 40], [1, 1, 4], [1, 1, 3], [0, 0, 2]),
        ];
        for (case, (input, kernel, stride, padding)) in geoms.into_iter().enumerate() {
            let output: [usize; 3] = std::array::from_fn(|i| {
                pool_out_size(input[i], kernel[i], stride[i], padding[i], false).unwrap()
            });
            let g = PoolGeom {
                planes: 3,
                input,
                output,
                kernel,
                stride,
                padding,
            };
            let (iv, ov) = (volume(&g.input), volume(&g.output));
            let x = data(g.planes * iv, 500 + case as u64);
            let dy = data(g.planes * ov, 600 + case as u64);
            for cip in [false, true] {
                let (ry, rdx) = naive_avg(&x, &dy, &g, cip);
                let (a1, _) = errors(&avg_forward(&x, &g, cip), &ry);
                let (a2, _) = errors(&avg_backward(&dy, &g, cip), &rdx);
                // sums of at most 30 values in [-1, 1), each within 30 u of the f64 sum
                assert!(
                    a1 < 1e-5 && a2 < 1e-5,
                    "{g:?} cip={cip}: forward {a1}, backward {a2}"
                );
            }
        }
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
