//! Elementwise kernels, full and per-axis sums, dropout.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use crate::backend::{AxisGeom, BinaryOp, UnaryOp};
use crate::rng;

/// Elements per rayon task: big enough that scheduling costs nothing, small enough to spread work.
/// A tensor of at most this many elements runs on the calling thread.
pub(super) const CHUNK: usize = 1 << 15;

/// A new vector of `len` values made in pieces of `piece` elements (the last may be shorter), in
/// parallel tasks of at least [`CHUNK`] elements (a tensor of at most [`CHUNK`] stays on the calling
/// thread). `write(r, out)` fills piece r and returns how many of its leading elements it wrote; the
/// values go straight into the new vector, which is not zero-filled first (a pass over memory that
/// costs as much as an elementwise kernel's own write).
pub(super) fn par_build(
    len: usize,
    piece: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) -> usize + Sync,
) -> Vec<f32> {
    let piece = piece.max(1);
    let mut y = Vec::with_capacity(len);
    let fill = |r: usize, out: &mut [MaybeUninit<f32>]| {
        let n = out.len();
        assert_eq!(
            write(r, out),
            n,
            "piece {r} of a new tensor was not written whole"
        );
    };
    let out = &mut y.spare_capacity_mut()[..len];
    if len <= CHUNK {
        out.chunks_mut(piece)
            .enumerate()
            .for_each(|(r, o)| fill(r, o));
    } else {
        out.par_chunks_mut(piece)
            .with_min_len(CHUNK.div_ceil(piece))
            .enumerate()
            .for_each(|(r, o)| fill(r, o));
    }
    // SAFETY: the pieces cover 0..len and each asserted that its `write` wrote every one of its
    // elements (the callers below count the elements they write; a failed assertion unwinds past this
    // line, dropping `y` with length 0).
    unsafe { y.set_len(len) };
    y
}

/// Floats in a 64-byte cache line.
pub(super) const LINE: usize = 16;

/// Whether a new tensor of `len` floats, made from two inputs at least as large (an add, a ReLU's or
/// a batch norm's backward), is written with non-temporal stores ([`stream_into`]): from half the
/// last-level cache on. The pass then moves at least 1.5 times the cache, so the output would not stay
/// there for the next op anyway, and an ordinary store first reads the line it writes (a fourth stream
/// beside the three). Measured on a Zen 5 with 32 MB of L3 (2 threads; the suite's C2D-NL-R50 rows, 6.4
/// M floats, three alternated pairs): add 1216–1444 → 1097–1119 µs, ReLU backward 1214–1358 →
/// 1059–1146; a ReLU forward (one input) 5 % slower with them, so one-input ops keep ordinary stores
/// (docs/PERFORMANCE.md, stop 47). Only on x86-64 CPUs with AVX2 (elsewhere [`stream_into`] has no
/// faster stores to offer than the callers' ordinary, vectorised paths).
pub(super) fn streams(len: usize) -> bool {
    len.saturating_mul(std::mem::size_of::<f32>()) >= stream_min_bytes() && has_stream_stores()
}

/// Whether [`stream_into`] writes with non-temporal stores on this CPU.
fn has_stream_stores() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn stream_min_bytes() -> usize {
    static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // unknown cache: never (ordinary stores are never far behind, and ahead while the data fits)
    *MIN.get_or_init(|| super::last_level_cache_bytes().map_or(usize::MAX, |b| b / 2))
}

/// A new vector of `len` values made in pieces of `piece` elements as [`par_build`], each piece by
/// [`stream_into`]: `value(r, i)` is element i of piece r, `line(r, i)` its 16 elements from i.
pub(super) fn par_stream(
    len: usize,
    piece: usize,
    value: impl Fn(usize, usize) -> f32 + Sync,
    line: impl Fn(usize, usize) -> [f32; LINE] + Sync,
) -> Vec<f32> {
    par_build(len, piece, |r, out| {
        stream_into(out, |i| value(r, i), |i| line(r, i))
    })
}

/// `out[i] = value(i)` for every i; how many were written. Where the CPU has AVX2, the 64-byte lines
/// that `out` covers whole go by non-temporal stores of `line(i)` (the values i..i + 16, computed in
/// registers), without first reading each line into the cache; elsewhere ordinary stores.
#[inline(always)]
pub(super) fn stream_into(
    out: &mut [MaybeUninit<f32>],
    value: impl Fn(usize) -> f32,
    line: impl Fn(usize) -> [f32; LINE],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if has_stream_stores() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { stream_fill(out, value, line) };
    }
    let _ = &line;
    for (i, o) in out.iter_mut().enumerate() {
        o.write(value(i));
    }
    out.len()
}

/// [`stream_into`] with AVX2.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn stream_fill(
    out: &mut [MaybeUninit<f32>],
    value: impl Fn(usize) -> f32,
    line: impl Fn(usize) -> [f32; LINE],
) -> usize {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_stream_ps, _mm_sfence};
    let n = out.len();
    let head = out.as_ptr().align_offset(64).min(n);
    let body_end = head + (n - head) / LINE * LINE;
    for (i, o) in out[..head].iter_mut().enumerate() {
        o.write(value(i));
    }
    let mut i = head;
    while i < body_end {
        let v = line(i);
        let p = out[i..i + LINE].as_mut_ptr().cast::<f32>();
        // SAFETY: p..p + 16 lies in `out` (sliced above) and starts a 64-byte line (head), so both
        // halves are 32-byte aligned as the stores require.
        unsafe {
            _mm256_stream_ps(p, _mm256_loadu_ps(v.as_ptr()));
            _mm256_stream_ps(p.add(8), _mm256_loadu_ps(v.as_ptr().add(8)));
        }
        i += LINE;
    }
    for (k, o) in out[body_end..].iter_mut().enumerate() {
        o.write(value(body_end + k));
    }
    // The stores are weakly ordered: visible before the task ends and another thread reads them.
    _mm_sfence();
    n
}

/// Write `values` into the front of `out`; how many were written.
#[inline(always)]
fn write_values(out: &mut [MaybeUninit<f32>], values: impl Iterator<Item = f32>) -> usize {
    let mut written = 0;
    for (o, v) in out.iter_mut().zip(values) {
        o.write(v);
        written += 1;
    }
    written
}

/// `len` zeros, written in parallel: a large output that its kernel's tasks then fill through
/// `&mut` pieces (a zero-fill on one thread ran at about half the memory bandwidth of two).
pub(super) fn par_zeros(len: usize) -> Vec<f32> {
    par_build(len, CHUNK, |_, out| {
        for v in out.iter_mut() {
            v.write(0.0);
        }
        out.len()
    })
}

/// [`par_build`] with piece r's values given by `values(r, range)` (range: its elements' indices).
pub(super) fn par_new<I: Iterator<Item = f32>>(
    len: usize,
    piece: usize,
    values: impl Fn(usize, Range<usize>) -> I + Sync,
) -> Vec<f32> {
    let piece = piece.max(1);
    par_build(len, piece, |r, out| {
        let start = r * piece;
        let n = out.len();
        // AVX2 where the CPU has it: the closures' loops otherwise compile for the crate's baseline
        // (SSE2, 4 lanes), which halved the rate of an add whose operands are in cache
        with_avx2!(write_values(out, values(r, start..start + n)))
    })
}

/// [`par_new`] into memory that exists: `out` holds pieces `first_piece`.. of a tensor, `piece`
/// elements each (a whole number of them), piece r's values `values(r, range)` with range its
/// elements' indices in the tensor. For a producer writing into its slice of a concat's output.
pub(super) fn par_fill<I: Iterator<Item = f32>>(
    out: &mut [f32],
    piece: usize,
    first_piece: usize,
    values: impl Fn(usize, Range<usize>) -> I + Sync,
) {
    let piece = piece.max(1);
    assert_eq!(
        out.len() % piece,
        0,
        "par_fill: {} values are not whole pieces of {piece}",
        out.len()
    );
    let fill = |k: usize, o: &mut [f32]| {
        let r = first_piece + k;
        let start = r * piece;
        let written = with_avx2!(overwrite_values(o, values(r, start..start + piece)));
        assert_eq!(
            written, piece,
            "piece {r} of a tensor was not written whole"
        );
    };
    if out.len() <= CHUNK {
        out.chunks_mut(piece)
            .enumerate()
            .for_each(|(k, o)| fill(k, o));
    } else {
        out.par_chunks_mut(piece)
            .with_min_len(CHUNK.div_ceil(piece))
            .enumerate()
            .for_each(|(k, o)| fill(k, o));
    }
}

/// Overwrite the front of `out` with `values`; how many were written.
#[inline(always)]
fn overwrite_values(out: &mut [f32], values: impl Iterator<Item = f32>) -> usize {
    let mut written = 0;
    for (o, v) in out.iter_mut().zip(values) {
        *o = v;
        written += 1;
    }
    written
}

/// [`par_build`] with piece r the concatenation of the slices `segments(r)` (copied slice by slice:
/// concat, split, permute's contiguous rows).
pub(super) fn par_new_copies<'a, I: Iterator<Item = &'a [f32]>>(
    len: usize,
    piece: usize,
    segments: impl Fn(usize) -> I + Sync,
) -> Vec<f32> {
    par_build(len, piece, |r, out| {
        let (n, mut written) = (out.len(), 0);
        for seg in segments(r) {
            written += write_values(&mut out[written.min(n)..], seg.iter().copied());
        }
        written
    })
}

/// A new vector of `len` values made a plane of `plane` elements at a time (`len` a multiple of it),
/// planes in parallel: `fill(p, scratch)` computes plane p into a zeroed per-task scratch plane (hot in
/// cache, so a scatter such as a pooling backward's `+=` does not stream the output twice), which is
/// then written once into the new vector, as [`par_new`] does. `plane_work`: the elements one plane
/// touches (a pooling window's input plane can be far larger than its output plane), which sizes the
/// tasks and decides whether to run on the calling thread.
#[cfg(test)] // the max pool's reference scatter (pool.rs)
pub(super) fn par_new_planes(
    len: usize,
    plane: usize,
    plane_work: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let (plane, plane_work) = (plane.max(1), plane_work.max(plane).max(1));
    let mut y = Vec::with_capacity(len);
    let out = &mut y.spare_capacity_mut()[..len];
    let one = |scratch: &mut Vec<f32>, p: usize, out: &mut [MaybeUninit<f32>]| {
        assert_eq!(
            out.len(),
            plane,
            "par_new_planes: {len} is not a multiple of {plane}"
        );
        scratch.clear();
        scratch.resize(plane, 0.0);
        fill(p, scratch);
        for (o, &v) in out.iter_mut().zip(scratch.iter()) {
            o.write(v);
        }
    };
    if len / plane * plane_work <= CHUNK {
        let mut scratch = vec![];
        out.chunks_mut(plane)
            .enumerate()
            .for_each(|(p, o)| one(&mut scratch, p, o));
    } else {
        out.par_chunks_mut(plane)
            .with_min_len(CHUNK.div_ceil(plane_work))
            .enumerate()
            .for_each_init(Vec::new, |scratch, (p, o)| one(scratch, p, o));
    }
    // SAFETY: the planes cover 0..len (each asserted its full length) and each was written whole from
    // its scratch plane of that length; a failed assertion unwinds past this line, dropping `y` empty.
    unsafe { y.set_len(len) };
    y
}

/// y = f(x) elementwise, into a new vector.
fn map1(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    par_new(x.len(), CHUNK, |_, r| x[r].iter().map(|&v| f(v)))
}

/// y = f(a, b) elementwise, into a new vector (`a` and `b` of one length).
fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "map2: operands of different lengths");
    if streams(a.len()) {
        return par_stream(
            a.len(),
            CHUNK,
            |r, i| f(a[r * CHUNK + i], b[r * CHUNK + i]),
            |r, i| {
                let (a, b) = (&a[r * CHUNK + i..][..LINE], &b[r * CHUNK + i..][..LINE]);
                let mut v = [0.0; LINE];
                for k in 0..LINE {
                    v[k] = f(a[k], b[k]);
                }
                v
            },
        );
    }
    par_new(a.len(), CHUNK, |_, r| {
        a[r.clone()].iter().zip(&b[r]).map(|(&a, &b)| f(a, b))
    })
}

/// max(x, 0) keeping NaN, as PyTorch (f32::max would turn NaN into 0).
#[inline]
pub(super) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

/// One loop per op (the match outside it), so that each compiles to its own vector loop.
pub(super) fn unary(x: &[f32], op: UnaryOp) -> Vec<f32> {
    match op {
        UnaryOp::Relu => map1(x, relu),
        UnaryOp::Scale(s) => map1(x, |x| x * s),
        UnaryOp::AddScalar(s) => map1(x, |x| x + s),
        UnaryOp::Sqrt => map1(x, f32::sqrt),
    }
}

pub(super) fn binary(a: &[f32], b: &[f32], op: BinaryOp) -> Vec<f32> {
    match op {
        BinaryOp::Add => map2(a, b, |a, b| a + b),
        BinaryOp::Sub => map2(a, b, |a, b| a - b),
        BinaryOp::Mul => map2(a, b, |a, b| a * b),
        BinaryOp::Div => map2(a, b, |a, b| a / b),
        BinaryOp::AddRelu => map2(a, b, |a, b| relu(a + b)),
    }
}

pub(super) fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK)
        .for_each(|x| x.iter_mut().for_each(|v| *v = relu(*v)));
}

pub(super) fn add_relu_in_place(a: &mut [f32], b: &[f32]) {
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(a, b)| {
            for (a, &b) in a.iter_mut().zip(b) {
                *a = relu(*a + b);
            }
        });
}

/// PyTorch's threshold_backward: 0 where y <= 0, so a NaN output passes dy on.
#[inline]
pub(super) fn relu_grad(y: f32, dy: f32) -> f32 {
    if y <= 0.0 {
        0.0
    } else {
        dy
    }
}

pub(super) fn relu_backward(y: &[f32], dy: &[f32]) -> Vec<f32> {
    map2(y, dy, relu_grad)
}

pub(super) fn axpby(y: &mut [f32], a: f32, x: &[f32], b: f32) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = a * x + b * *y;
            }
        });
}

/// Whether every value of x is finite: in parallel chunks, each a branch-free fold the compiler
/// vectorises (an `all` stops at each value to test it; over a 16 MB weight that was milliseconds).
pub(super) fn all_finite(x: &[f32]) -> bool {
    x.par_chunks(CHUNK)
        .all(|c| c.iter().fold(true, |all, v| all & v.is_finite()))
}

/// Σ x, accumulated in f64 per chunk.
pub(super) fn sum(x: &[f32]) -> f32 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
        .sum::<f64>() as f32
}

/// Σ over outer and inner of x viewed as [outer, axis, inner] → [axis].
/// Σ over outer and inner per axis index, in f64. On the calling thread up to [`CHUNK`] values (a
/// linear layer's bias gradient at batch 1: handing two sums to the pool took 10 µs).
pub(super) fn sum_to_axis(x: &[f32], g: AxisGeom) -> Vec<f32> {
    let channel = |c: usize| {
        let mut s = 0f64;
        for o in 0..g.outer {
            let base = (o * g.axis + c) * g.inner;
            s += x[base..base + g.inner]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
        s as f32
    };
    if x.len() <= CHUNK {
        (0..g.axis).map(channel).collect()
    } else {
        (0..g.axis).into_par_iter().map(channel).collect()
    }
}

/// y += bias along the axis; on the calling thread up to [`CHUNK`] values (as [`sum_to_axis`]).
pub(super) fn add_axis_bias(y: &mut [f32], bias: &[f32], g: AxisGeom) {
    let add = |(row, y): (usize, &mut [f32])| {
        let b = bias[row % g.axis];
        y.iter_mut().for_each(|v| *v += b);
    };
    let inner = g.inner.max(1);
    if y.len() <= CHUNK {
        y.chunks_mut(inner).enumerate().for_each(add);
    } else {
        y.par_chunks_mut(inner)
            .with_min_len(CHUNK.div_ceil(inner))
            .enumerate()
            .for_each(add);
    }
}

pub(super) fn dropout(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    let mut y = vec![0.0; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (y, x))| {
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let idx = (c * CHUNK + i) as u64;
                // x·0 for a dropped element, not 0: NaN and ±Inf give NaN, as PyTorch's x·mask·scale.
                *y = x * if rng::dropout_keep(seed, idx, p) {
                    scale
                } else {
                    0.0
                };
            }
        });
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        (0..n)
            .map(|i| match i % 97 {
                0 => f32::NAN,
                1 => -0.0,
                _ => uniform(seed, i as u64) * 2.0 - 1.0,
            })
            .collect()
    }

    /// Bit patterns, so that NaN == NaN and -0 != +0.
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Lengths on both sides of the single-thread limit, with ragged last pieces.
    const LENS: [usize; 6] = [0, 1, 1000, CHUNK, CHUNK + 1, 3 * CHUNK + 17];

    #[test]
    fn par_new_writes_every_element_in_order() {
        for len in LENS {
            for piece in [1, 7, 1000, CHUNK, 5 * CHUNK] {
                let v = par_new(len, piece, |_, r| r.map(|i| i as f32));
                assert_eq!(
                    v,
                    (0..len).map(|i| i as f32).collect::<Vec<_>>(),
                    "{len} {piece}"
                );
            }
        }
    }

    /// Every element written with its value, whatever the output's alignment (heads of 0 to 15
    /// elements before the first whole line) and length (no whole line, one, several, a tail); on an
    /// AVX2 CPU the whole lines, and only they, from `line` (a line function that read one place off
    /// fails).
    #[test]
    fn stream_into_writes_every_element() {
        let src = data(2000, 7);
        let avx2 = has_stream_stores();
        let mut buf = vec![MaybeUninit::<f32>::uninit(); 1100];
        for shift in 0..LINE {
            for len in [0, 1, 15, 16, 17, 31, 47, 100, 1000, 1040] {
                let start = buf.as_ptr().align_offset(64) + shift;
                let out = &mut buf[start..start + len];
                let lines = std::cell::Cell::new(0);
                let written = stream_into(
                    out,
                    |i| src[i] * 2.0,
                    |i| {
                        lines.set(lines.get() + 1);
                        let mut v = [0.0; LINE];
                        for k in 0..LINE {
                            v[k] = src[i + k] * 2.0;
                        }
                        v
                    },
                );
                assert_eq!(written, len);
                // SAFETY: stream_into wrote all `len` elements (asserted above).
                let got: Vec<f32> = out.iter().map(|v| unsafe { v.assume_init() }).collect();
                let want: Vec<f32> = src[..len].iter().map(|v| v * 2.0).collect();
                assert_eq!(bits(&got), bits(&want), "shift {shift}, {len} elements");
                let head = (LINE - shift) % LINE;
                let whole = if len > head { (len - head) / LINE } else { 0 };
                assert_eq!(
                    lines.get(),
                    if avx2 { whole } else { 0 },
                    "shift {shift}, {len}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "was not written whole")]
    fn par_new_refuses_a_short_piece() {
        par_new(10, 5, |r, range| {
            range.take(if r == 1 { 4 } else { 5 }).map(|i| i as f32)
        });
    }

    #[test]
    fn par_new_copies_concatenates_the_segments() {
        let src: Vec<f32> = (0..100).map(|i| i as f32).collect();
        for len in LENS {
            // piece r = [r, r + 1, ..., r + 9] in two segments
            let v = par_new_copies(len, 10, |r| {
                [&src[r % 90..r % 90 + 4], &src[r % 90 + 4..r % 90 + 10]].into_iter()
            });
            let want: Vec<f32> = (0..len).map(|i| ((i / 10) % 90 + i % 10) as f32).collect();
            assert_eq!(v, want, "{len}");
        }
    }

    #[test]
    fn par_new_planes_starts_each_plane_at_zero() {
        for (planes, plane) in [(0, 5), (1, 3), (3, 1000), (40, 1000), (7, CHUNK + 3)] {
            let v = par_new_planes(planes * plane, plane, plane, |p, out| {
                assert!(out.iter().all(|&x| x == 0.0));
                out[p % plane] += p as f32 + 1.0;
                out[0] += 0.5;
            });
            for p in 0..planes {
                let mut want = vec![0.0f32; plane];
                want[p % plane] += p as f32 + 1.0;
                want[0] += 0.5;
                assert_eq!(v[p * plane..(p + 1) * plane], want[..], "plane {p}");
            }
        }
    }

    /// The vectorised, parallel kernels against the scalar formula, bit for bit (same arithmetic).
    #[test]
    fn elementwise_kernels_match_the_scalar_formulas_bit_for_bit() {
        // and one length past the size from which two-input kernels stream their output (where this
        // CPU's last-level cache is known and not so large that the test would take gigabytes)
        let streamed = (stream_min_bytes() <= 64 << 20)
            .then(|| stream_min_bytes() / std::mem::size_of::<f32>() + 3 * CHUNK / 2 + 7);
        for len in LENS.into_iter().chain(streamed) {
            let (a, b) = (data(len, 1), data(len, 2));
            let one = |f: fn(f32) -> f32| bits(&a.iter().map(|&x| f(x)).collect::<Vec<_>>());
            let two = |f: fn(f32, f32) -> f32| {
                bits(&a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect::<Vec<_>>())
            };
            assert_eq!(bits(&unary(&a, UnaryOp::Relu)), one(relu));
            assert_eq!(bits(&unary(&a, UnaryOp::Scale(0.3))), one(|x| x * 0.3));
            assert_eq!(bits(&unary(&a, UnaryOp::AddScalar(0.3))), one(|x| x + 0.3));
            assert_eq!(bits(&unary(&a, UnaryOp::Sqrt)), one(f32::sqrt));
            assert_eq!(bits(&binary(&a, &b, BinaryOp::Add)), two(|x, y| x + y));
            assert_eq!(bits(&binary(&a, &b, BinaryOp::Sub)), two(|x, y| x - y));
            assert_eq!(bits(&binary(&a, &b, BinaryOp::Mul)), two(|x, y| x * y));
            assert_eq!(bits(&binary(&a, &b, BinaryOp::Div)), two(|x, y| x / y));
            assert_eq!(
                bits(&binary(&a, &b, BinaryOp::AddRelu)),
                two(|x, y| relu(x + y))
            );
            assert_eq!(bits(&relu_backward(&a, &b)), two(relu_grad));
        }
    }
}
