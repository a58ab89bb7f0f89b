//! The CPU backend: the reference implementation and the fallback without a GPU.
//!
//! Buffers are `Vec<f32>` behind a lock (in-place updates such as optimiser steps take the write lock).
//! Each op family's kernels live in a submodule as plain functions over slices, parallel with rayon;
//! this file only unwraps buffers and dispatches.

/// Runs `$body` — a call of an `#[inline(always)]` function — compiled for AVX2 and FMA where the CPU
/// has them (the crate is built for baseline x86-64, SSE2): the function and what it inlines then use
/// 8-lane f32 and 4-lane f64 registers (the Winograd transforms' eight lanes, batch norm's f64 sums,
/// max pooling's selects). A macro, not a function taking a closure: `$body` is written out once per
/// branch, so each closure has one call site and is inlined into the AVX2 function (a closure called
/// from both branches stays a separate function compiled for SSE2).
macro_rules! with_avx2 {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function is compiled for. The closure is
                // inlined into `avx2` by force: left to the inliner, large bodies stayed a call from
                // it and ran without AVX2 (a 5-byte `avx2` in the binary; perf showed xmm only).
                unsafe { avx2(#[inline(always)] || $body) }
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}

/// Test data: n deterministic values in [-1, 1) from stream `seed` of crate::rng.
#[cfg(test)]
fn test_data(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| 2.0 * crate::rng::uniform(seed, i as u64) - 1.0)
        .collect()
}

mod attention;
mod batchnorm;
mod conv;
mod conv_direct;
mod conv_winograd;
mod conv_winograd_depth;
mod elementwise;
mod expf;
mod layout;
mod linalg;
mod loss;
mod optimizer;
mod pool;
mod softmax;
mod upsample;

use crate::math_mode::{math_mode_on, round_operands, Hardware};

use std::any::Any;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use super::*;
use crate::error::{Error, Result};

/// A host buffer: values of its own, or a view of another buffer's (concat's backward hands out views
/// of the gradient, as PyTorch's `narrow`, rather than copies).
#[derive(Debug)]
pub struct CpuBuffer(Storage);

#[derive(Debug)]
enum Storage {
    Owned(RwLock<Vec<f32>>),
    View(Runs),
}

/// `runs` runs of `run_len` values, run r at `offset + r·stride` of `parent` (a buffer with values of
/// its own, kept alive by the view).
#[derive(Debug)]
struct Runs {
    parent: BufferRef,
    offset: usize,
    runs: usize,
    run_len: usize,
    stride: usize,
}

impl Runs {
    fn len(&self) -> usize {
        self.runs * self.run_len
    }
    /// Whether the runs follow each other: then the view is one slice of the parent.
    fn is_contiguous(&self) -> bool {
        self.runs <= 1 || self.stride == self.run_len
    }
    fn parent(&self) -> &RwLock<Vec<f32>> {
        match &cpu_unchecked(&*self.parent).0 {
            Storage::Owned(v) => v,
            Storage::View(_) => unreachable!("a view's parent owns its values (split_views)"),
        }
    }
    fn run(&self, r: usize) -> Range<usize> {
        let start = self.offset + r * self.stride;
        start..start + self.run_len
    }
}

/// Bytes held by live CPU buffers, now and at most (for memory tests and reports).
static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_alloc(len: usize) {
    let now = IN_USE.fetch_add(len * 4, Ordering::Relaxed) + len * 4;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        // a view holds no values of its own: its parent counts them
        if let Storage::Owned(v) = &mut self.0 {
            let bytes = v.get_mut().map(|v| v.len() * 4).unwrap_or(0);
            IN_USE.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

impl BackendBuffer for CpuBuffer {
    fn len(&self) -> usize {
        match &self.0 {
            Storage::Owned(v) => v.read().unwrap().len(),
            Storage::View(r) => r.len(),
        }
    }
    fn is_view(&self) -> bool {
        matches!(self.0, Storage::View(_))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A CPU buffer's values, read: a whole buffer, a slice of a view's parent, or the gathered runs of a
/// strided view (a copy, counted in the memory in use while it lives).
pub(super) enum CpuRead<'a> {
    Whole(RwLockReadGuard<'a, Vec<f32>>),
    Part(RwLockReadGuard<'a, Vec<f32>>, Range<usize>),
    Gathered(Vec<f32>),
}

impl Deref for CpuRead<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            CpuRead::Whole(g) => g,
            CpuRead::Part(g, r) => &g[r.clone()],
            CpuRead::Gathered(v) => v,
        }
    }
}

impl Drop for CpuRead<'_> {
    fn drop(&mut self) {
        if let CpuRead::Gathered(v) = self {
            IN_USE.fetch_sub(v.len() * 4, Ordering::Relaxed);
        }
    }
}

/// The size of the CPU's highest-level cache, from Linux's sysfs (None elsewhere): what the
/// elementwise kernels' streaming stores are sized by, and the bench's STREAM-like arrays.
pub fn last_level_cache_bytes() -> Option<usize> {
    let caches = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    caches
        .filter_map(|entry| {
            let dir = entry.ok()?.path();
            let level: u32 = std::fs::read_to_string(dir.join("level"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let size = parse_cache_size(&std::fs::read_to_string(dir.join("size")).ok()?)?;
            Some((level, size))
        })
        .max()
        .map(|(_, size)| size)
}

/// A sysfs cache size ("32768K", "1M", "512") in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// Makes the process's main thread, on its first use of the CPU backend, thread 0 of rayon's global
/// pool, as OpenMP's master thread is (PyTorch's CPU kernels run that way): a parallel kernel called
/// from it then starts on it at once and the other threads steal their parts. Outside the pool, the
/// caller handed every kernel to a pool thread and slept until it was done — two thread switches
/// per kernel call, 20–30 µs on the 2-vCPU host of docs/PERFORMANCE.md's stop 37, most of the time
/// of a ReLU or an add under 0.5 MB. Only with two threads or more (with one, a batch built by a
/// data-loader thread would wait for the main thread to yield), and only if nothing built the pool
/// before (then it stays as it is); `VIDGRAD_CPU_MAIN_THREAD_IN_POOL=0` turns it off.
pub fn join_thread_pool() {
    static TRIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // Only the main thread tries, once (a data-loader thread's first op leaves it its turn).
    if TRIED.load(Ordering::Relaxed) || std::thread::current().name() != Some("main") {
        return;
    }
    if !TRIED.swap(true, Ordering::Relaxed) {
        let on = std::env::var("VIDGRAD_CPU_MAIN_THREAD_IN_POOL").map_or(true, |v| v != "0");
        if !on {
            return;
        }
        let threads = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1);
        if threads >= 2 {
            // Err where the pool exists already: then it stays as it is.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .use_current_thread()
                .build_global();
        }
    }
}

/// Keep freed tensor memory in the process (glibc): by default blocks above 32 MB are mmap'ed and
/// unmapped again when freed, so every large output (a ReLU over 51 MB, say) page-faulted its memory
/// back in, zeroed by the kernel, 4 kB at a time — measured to cut a memory-bound kernel to a sixth of
/// its speed (docs/PERFORMANCE.md). With blocks up to 1 GiB from the heap and up to 1 GiB of free heap
/// kept, the next step's tensors reuse the last step's pages.
fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    ONCE.call_once(|| {
        // SAFETY: mallopt only sets two of glibc's allocation thresholds; both calls are valid at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    ONCE.call_once(|| {});
}

fn wrap(v: Vec<f32>) -> BufferRef {
    keep_freed_memory();
    count_alloc(v.len());
    Arc::new(CpuBuffer(Storage::Owned(RwLock::new(v))))
}

fn cpu(b: &dyn BackendBuffer) -> Result<&CpuBuffer> {
    b.as_any()
        .downcast_ref::<CpuBuffer>()
        .ok_or_else(|| Error::Device("a non-CPU buffer was passed to the CPU backend".into()))
}

/// [`cpu`] for a buffer the backend made itself (a view's parent).
fn cpu_unchecked(b: &dyn BackendBuffer) -> &CpuBuffer {
    cpu(b).expect("a CPU view's parent is a CPU buffer")
}

fn read(b: &dyn BackendBuffer) -> Result<CpuRead<'_>> {
    Ok(match &cpu(b)?.0 {
        Storage::Owned(v) => CpuRead::Whole(v.read().unwrap()),
        Storage::View(r) if r.is_contiguous() => {
            let start = r.offset;
            CpuRead::Part(r.parent().read().unwrap(), start..start + r.len())
        }
        Storage::View(r) => {
            let parent = r.parent().read().unwrap();
            let mut v = Vec::with_capacity(r.len());
            for i in 0..r.runs {
                v.extend_from_slice(&parent[r.run(i)]);
            }
            count_alloc(v.len());
            CpuRead::Gathered(v)
        }
    })
}

/// Read b as `outer` rows of `row_len` values in place: the values, the first row's start and the
/// distance between rows. A view of concat's gradient whose runs are the rows is read from its parent
/// with the parent's stride; any other buffer whole (a strided view of other runs gathered).
fn read_rows(b: &dyn BackendBuffer, row_len: usize) -> Result<(CpuRead<'_>, usize, usize)> {
    Ok(match &cpu(b)?.0 {
        Storage::View(r) if !r.is_contiguous() && r.run_len == row_len => (
            CpuRead::Whole(r.parent().read().unwrap()),
            r.offset,
            r.stride,
        ),
        _ => (read(b)?, 0, row_len),
    })
}

/// Read an optional buffer: `read_opt(b)?.as_deref()` is an `Option<&[f32]>`.
fn read_opt(b: Option<&dyn BackendBuffer>) -> Result<Option<CpuRead<'_>>> {
    b.map(read).transpose()
}

/// Which values b holds: its own, or its parent's for a view (buffers with one key share values, and
/// one must not be locked for writing while the other is locked).
fn storage_key(b: &dyn BackendBuffer) -> Result<*const CpuBuffer> {
    let buf = cpu(b)?;
    Ok(match &buf.0 {
        Storage::Owned(_) => buf as *const CpuBuffer,
        Storage::View(r) => cpu_unchecked(&*r.parent) as *const CpuBuffer,
    })
}

/// `f` on b's values, writable: in place for a buffer or a contiguous view; a strided view's runs are
/// gathered, and written back after `f`. b's lock is held while `f` runs.
fn with_values_mut<R>(b: &dyn BackendBuffer, f: impl FnOnce(&mut [f32]) -> R) -> Result<R> {
    Ok(match &cpu(b)?.0 {
        Storage::Owned(v) => f(&mut v.write().unwrap()),
        Storage::View(r) if r.is_contiguous() => {
            let mut parent = r.parent().write().unwrap();
            f(&mut parent[r.offset..r.offset + r.len()])
        }
        Storage::View(r) => {
            let mut parent = r.parent().write().unwrap();
            let mut values: Vec<f32> = (0..r.runs)
                .flat_map(|i| parent[r.run(i)].iter().copied())
                .collect();
            let out = f(&mut values);
            for (i, run) in values.chunks_exact(r.run_len).enumerate() {
                parent[r.run(i)].copy_from_slice(run);
            }
            out
        }
    })
}

/// Write to b in place: `f` gets each contiguous run of b's values and the run's first index in b (a
/// view writes through to its parent, as PyTorch's in-place ops on a view). Callers read any other
/// operand before: b's lock is held while `f` runs.
fn write_runs(b: &dyn BackendBuffer, mut f: impl FnMut(&mut [f32], usize)) -> Result<()> {
    match &cpu(b)?.0 {
        Storage::Owned(v) => f(&mut v.write().unwrap(), 0),
        Storage::View(r) => {
            let mut parent = r.parent().write().unwrap();
            for i in 0..r.runs {
                f(&mut parent[r.run(i)], i * r.run_len);
            }
        }
    }
    Ok(())
}

/// The pieces of x viewed as [outer, Σ inners] along its inner axis ([`Backend::split`]) as views of
/// x's values: piece i's run o is x's values o·Σinners + (Σ_(j<i) inner_j) .. + inner_i. A view of a
/// view refers to the same parent; x is copied first only when it is a strided view whose runs are
/// not the rows being split.
fn split_views(x: &BufferRef, outer: usize, inners: &[usize]) -> Result<Vec<BufferRef>> {
    let total: usize = inners.iter().sum();
    if x.len() != outer * total {
        return Err(Error::Shape {
            op: "split",
            msg: format!("{} values are not {outer} rows of {inners:?}", x.len()),
        });
    }
    let (parent, base, stride) = match &cpu(&**x)?.0 {
        Storage::Owned(_) => (x.clone(), 0, total),
        Storage::View(r) if r.is_contiguous() => (r.parent.clone(), r.offset, total),
        Storage::View(r) if r.runs == outer && r.run_len == total => {
            (r.parent.clone(), r.offset, r.stride)
        }
        Storage::View(_) => (wrap(read(&**x)?.to_vec()), 0, total),
    };
    let mut start = 0;
    Ok(inners
        .iter()
        .map(|&inner| {
            let runs = Runs {
                parent: parent.clone(),
                offset: base + start,
                runs: outer,
                run_len: inner,
                stride,
            };
            start += inner;
            Arc::new(CpuBuffer(Storage::View(runs))) as BufferRef
        })
        .collect())
}

/// The larger of a and b, NaN if either is NaN: PyTorch's max (f32::max returns the other operand).
#[inline]
pub(crate) fn nan_max(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

/// The CPU backend (stateless; parallelism from rayon's global pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// Convolution forward (with the ReLU epilogue of a fused conv→ReLU when `relu`): the math mode rounds
/// the product's operands (crate::math_mode; not for depthwise convolutions, `ConvGeom::math_mode`),
/// never the bias.
fn conv_forward_in_math_mode(
    x: &dyn BackendBuffer,
    w: &dyn BackendBuffer,
    bias: Option<&dyn BackendBuffer>,
    g: &ConvGeom,
    relu: bool,
) -> Result<BufferRef> {
    let m = g.math_mode(Hardware::Cpu)?;
    Ok(wrap(conv::forward(
        &round_operands(&read(x)?, m),
        &round_operands(&read(w)?, m),
        read_opt(bias)?.as_deref(),
        g,
        relu,
    )))
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn memory_in_use(&self) -> usize {
        IN_USE.load(Ordering::Relaxed)
    }
    fn memory_peak(&self) -> usize {
        PEAK.load(Ordering::Relaxed)
    }
    fn reset_memory_peak(&self) {
        PEAK.store(IN_USE.load(Ordering::Relaxed), Ordering::Relaxed);
    }
    fn available_memory(&self) -> Option<(u64, String)> {
        host_available_memory().map(|b| (b, "MemAvailable in /proc/meminfo".to_string()))
    }

    fn from_host(&self, data: &[f32]) -> Result<BufferRef> {
        Ok(wrap(data.to_vec()))
    }
    fn to_host(&self, x: &dyn BackendBuffer) -> Result<Vec<f32>> {
        Ok(read(x)?.to_vec())
    }
    fn full(&self, len: usize, value: f32) -> Result<BufferRef> {
        Ok(wrap(vec![value; len]))
    }
    fn copy(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        Ok(wrap(read(x)?.to_vec()))
    }
    fn copy_into(&self, dst: &dyn BackendBuffer, src: &dyn BackendBuffer) -> Result<()> {
        let src = read(src)?.to_vec(); // a copy first, so that dst == src cannot deadlock
        write_runs(dst, |run, at| run.copy_from_slice(&src[at..at + run.len()]))
    }

    fn unary(&self, x: &dyn BackendBuffer, op: UnaryOp) -> Result<BufferRef> {
        Ok(wrap(elementwise::unary(&read(x)?, op)))
    }
    fn binary(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        op: BinaryOp,
    ) -> Result<BufferRef> {
        Ok(wrap(elementwise::binary(&read(a)?, &read(b)?, op)))
    }
    fn relu_backward(&self, y: &dyn BackendBuffer, dy: &dyn BackendBuffer) -> Result<BufferRef> {
        Ok(wrap(elementwise::relu_backward(&read(y)?, &read(dy)?)))
    }
    fn relu_in_place(&self, x: &dyn BackendBuffer) -> Result<()> {
        write_runs(x, |run, _| elementwise::relu_in_place(run))
    }
    fn add_relu_in_place(&self, a: &dyn BackendBuffer, b: &dyn BackendBuffer) -> Result<()> {
        let b = read(b)?.to_vec(); // a may alias b (or share its parent)
        write_runs(a, |run, at| {
            elementwise::add_relu_in_place(run, &b[at..at + run.len()])
        })
    }
    fn axpby(&self, y: &dyn BackendBuffer, a: f32, x: &dyn BackendBuffer, b: f32) -> Result<()> {
        let x = read(x)?.to_vec(); // y may alias x
        write_runs(y, |run, at| {
            elementwise::axpby(run, a, &x[at..at + run.len()], b)
        })
    }
    fn sgd_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        momentum_buf: Option<&dyn BackendBuffer>,
        u: &SgdUpdate,
    ) -> Result<()> {
        optimizer::sgd_step(w, grad, momentum_buf, u)
    }
    fn adamw_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        m: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        c: &AdamWCoeffs,
    ) -> Result<()> {
        optimizer::adamw_step(w, grad, m, v, c)
    }
    fn sum_all(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        Ok(wrap(vec![elementwise::sum(&read(x)?)]))
    }
    fn broadcast_scalar(&self, s: &dyn BackendBuffer, len: usize, scale: f32) -> Result<BufferRef> {
        Ok(wrap(vec![read(s)?[0] * scale; len]))
    }
    fn sum_to_axis(&self, x: &dyn BackendBuffer, g: AxisGeom) -> Result<BufferRef> {
        Ok(wrap(elementwise::sum_to_axis(&read(x)?, g)))
    }
    fn add_axis_bias(
        &self,
        x: &dyn BackendBuffer,
        bias: &dyn BackendBuffer,
        g: AxisGeom,
    ) -> Result<BufferRef> {
        let mut y = read(x)?.to_vec();
        elementwise::add_axis_bias(&mut y, &read(bias)?, g);
        Ok(wrap(y))
    }

    fn dropout(&self, x: &dyn BackendBuffer, p: f32, seed: u64) -> Result<BufferRef> {
        Ok(wrap(elementwise::dropout(&read(x)?, p, seed)))
    }

    fn conv_forward(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        conv_forward_in_math_mode(x, w, bias, g, false)
    }
    fn conv_forward_relu(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        conv_forward_in_math_mode(x, w, bias, g, true)
    }
    fn conv_backward_data(
        &self,
        dy: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        let m = g.math_mode(Hardware::Cpu)?;
        Ok(wrap(conv::backward_data(
            &round_operands(&read(dy)?, m),
            &round_operands(&read(w)?, m),
            g,
        )))
    }
    fn conv_backward_weight(
        &self,
        x: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        let m = g.math_mode(Hardware::Cpu)?;
        Ok(wrap(conv::backward_weight(
            &round_operands(&read(x)?, m),
            &round_operands(&read(dy)?, m),
            g,
        )))
    }

    fn batch_norm_train(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        eps: f32,
        relu: bool,
    ) -> Result<(BufferRef, BnStats)> {
        let x = read(x)?;
        let (norm, stats) = batch_normalize(&x, weight, bias, g, eps, relu)?;
        Ok((wrap(norm.apply(&x, g)), stats))
    }
    fn batch_norm_train_into(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        eps: f32,
        relu: bool,
        out: &dyn BackendBuffer,
    ) -> Result<BnStats> {
        let x = read(x)?;
        if out.len() != x.len() {
            return Err(Error::Shape {
                op: "batch_norm",
                msg: format!(
                    "output buffer of {} values for {} inputs",
                    out.len(),
                    x.len()
                ),
            });
        }
        let (norm, stats) = batch_normalize(&x, weight, bias, g, eps, relu)?;
        // each run of `out` is whole rows of y (a slice of a concat's output: a sample's channels)
        write_runs(out, |run, at| {
            norm.apply_into(&x, g, run, at / g.inner.max(1))
        })?;
        Ok(stats)
    }
    fn batch_norm_eval(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
    ) -> Result<BufferRef> {
        let (w, b) = (read_opt(weight)?, read_opt(bias)?);
        let norm = batchnorm::Normalize::new(
            w.as_deref(),
            b.as_deref(),
            &read(mean)?,
            &read(var)?,
            eps,
            false,
        );
        Ok(wrap(norm.apply(&read(x)?, g)))
    }
    fn batch_norm_backward(
        &self,
        dy: &dyn BackendBuffer,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
        batch_stats: bool,
        relu_y: Option<&dyn BackendBuffer>,
    ) -> Result<BnGrads> {
        let mask = relu_y.map_or(MaskFrom::Nothing, MaskFrom::Output);
        bn_backward(dy, x, weight, (mean, var), g, eps, batch_stats, mask)
    }
    fn recomputes_relu_mask(&self) -> bool {
        true
    }
    fn batch_norm_relu_backward_from_input(
        &self,
        dy: &dyn BackendBuffer,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
    ) -> Result<BnGrads> {
        bn_backward(
            dy,
            x,
            weight,
            (mean, var),
            g,
            eps,
            true,
            MaskFrom::Input(bias),
        )
    }

    fn max_pool_forward(&self, x: &dyn BackendBuffer, g: &PoolGeom) -> Result<BufferRef> {
        Ok(wrap(pool::max_forward(&read(x)?, g)))
    }
    fn max_pool_forward_argmax(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        let (y, argmax) = pool::max_forward_argmax(&read(x)?, g);
        Ok((wrap(y), wrap(argmax)))
    }
    fn max_pool_backward(
        &self,
        argmax: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<BufferRef> {
        check_argmax(argmax, dy, g)?;
        Ok(wrap(pool::max_backward(&read(argmax)?, &read(dy)?, g)))
    }
    fn avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef> {
        Ok(wrap(pool::avg_forward(&read(x)?, g, count_include_pad)))
    }
    fn avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef> {
        Ok(wrap(pool::avg_backward(&read(dy)?, g, count_include_pad)))
    }
    fn adaptive_avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        Ok(wrap(pool::adaptive_forward(&read(x)?, g)))
    }
    fn adaptive_avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        Ok(wrap(pool::adaptive_backward(&read(dy)?, g)))
    }

    fn upsample_trilinear_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        Ok(wrap(upsample::forward(&read(x)?, g)))
    }
    fn upsample_trilinear_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        Ok(wrap(upsample::backward(&read(dy)?, g)))
    }

    fn softmax_forward(&self, x: &dyn BackendBuffer, g: AxisGeom, log: bool) -> Result<BufferRef> {
        Ok(wrap(softmax::forward(&read(x)?, g, log)))
    }
    fn softmax_backward(
        &self,
        y: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AxisGeom,
        log: bool,
    ) -> Result<BufferRef> {
        Ok(wrap(softmax::backward(&read(y)?, &read(dy)?, g, log)))
    }
    fn cross_entropy_forward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
    ) -> Result<BufferRef> {
        Ok(wrap(vec![loss::cross_entropy(
            &read(logits)?,
            labels,
            classes,
            smoothing,
        )]))
    }
    fn cross_entropy_backward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
        dloss: &dyn BackendBuffer,
    ) -> Result<BufferRef> {
        let scale = read(dloss)?[0];
        Ok(wrap(loss::cross_entropy_backward(
            &read(logits)?,
            labels,
            classes,
            smoothing,
            scale,
        )))
    }

    fn matmul(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        g: MatmulGeom,
    ) -> Result<BufferRef> {
        let m = math_mode_on(Hardware::Cpu)?;
        Ok(wrap(linalg::matmul(
            &round_operands(&read(a)?, m),
            &round_operands(&read(b)?, m),
            g,
        )))
    }
    fn attention_forward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        let (y, lse) = attention::forward(&read(q)?, &read(k)?, &read(v)?, g);
        Ok((wrap(y), wrap(lse)))
    }
    fn attention_backward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        y: &dyn BackendBuffer,
        lse: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<AttentionGrads> {
        let (dq, dk, dv) = attention::backward(
            &read(q)?,
            &read(k)?,
            &read(v)?,
            &read(y)?,
            &read(lse)?,
            &read(dy)?,
            g,
        );
        Ok(AttentionGrads {
            dq: wrap(dq),
            dk: wrap(dk),
            dv: wrap(dv),
        })
    }

    fn permute(&self, x: &dyn BackendBuffer, shape: &[usize], perm: &[usize]) -> Result<BufferRef> {
        Ok(wrap(layout::permute(&read(x)?, shape, perm)))
    }
    fn concat(
        &self,
        xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Result<BufferRef> {
        let guards = xs.iter().map(|b| read(*b)).collect::<Result<Vec<_>>>()?;
        let slices: Vec<&[f32]> = guards.iter().map(|g| &g[..]).collect();
        Ok(wrap(layout::concat(&slices, outer, inners)))
    }
    fn split(&self, x: &BufferRef, outer: usize, inners: &[usize]) -> Result<Vec<BufferRef>> {
        split_views(x, outer, inners)
    }
    fn splits_into_views(&self) -> bool {
        true
    }
    fn join_views(
        &self,
        xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Option<BufferRef> {
        joined_views(xs, outer, inners)
    }
}

/// x's batch statistics and the normalisation (+ReLU) they give: `batch_norm_train` and its `_into`
/// form.
fn batch_normalize(
    x: &[f32],
    weight: Option<&dyn BackendBuffer>,
    bias: Option<&dyn BackendBuffer>,
    g: AxisGeom,
    eps: f32,
    relu: bool,
) -> Result<(batchnorm::Normalize, BnStats)> {
    let (mean, var) = batchnorm::statistics(x, g);
    let (w, b) = (read_opt(weight)?, read_opt(bias)?);
    let norm = batchnorm::Normalize::new(w.as_deref(), b.as_deref(), &mean, &var, eps, relu);
    let stats = BnStats {
        mean: wrap(mean),
        var: wrap(var),
    };
    Ok((norm, stats))
}

/// [`Backend::batch_norm_backward`] and its mask-from-input form.
#[allow(clippy::too_many_arguments)]
fn bn_backward(
    dy: &dyn BackendBuffer,
    x: &dyn BackendBuffer,
    weight: Option<&dyn BackendBuffer>,
    (mean, var): (&dyn BackendBuffer, &dyn BackendBuffer),
    g: AxisGeom,
    eps: f32,
    batch_stats: bool,
    mask: MaskFrom,
) -> Result<BnGrads> {
    let (w, mean, var) = (read_opt(weight)?, read(mean)?, read(var)?);
    // dy may be a piece of concat's gradient, the saved output a slice of a concat's output: read in
    // place
    let rows = |b| read_rows(b, g.axis * g.inner);
    fn outer_rows<'a>(
        (data, offset, stride): &'a (CpuRead, usize, usize),
    ) -> batchnorm::OuterRows<'a> {
        batchnorm::OuterRows {
            data,
            offset: *offset,
            stride: *stride,
        }
    }
    let dy = rows(dy)?;
    let (y, norm) = match mask {
        MaskFrom::Nothing => (None, None),
        MaskFrom::Output(y) => (Some(rows(y)?), None),
        MaskFrom::Input(bias) => {
            let b = read_opt(bias)?;
            let norm =
                batchnorm::Normalize::new(w.as_deref(), b.as_deref(), &mean, &var, eps, true);
            (None, Some(norm))
        }
    };
    let mask = match (&y, &norm) {
        (Some(y), _) => batchnorm::ReluMask::Output(outer_rows(y)),
        (_, Some(norm)) => batchnorm::ReluMask::FromInput(norm),
        _ => batchnorm::ReluMask::None,
    };
    let (dx, dw, db) = batchnorm::backward(
        outer_rows(&dy),
        &read(x)?,
        w.as_deref(),
        &mean,
        &var,
        g,
        eps,
        batch_stats,
        mask,
    );
    Ok(BnGrads {
        dx: wrap(dx),
        dweight: wrap(dw),
        dbias: wrap(db),
    })
}

/// The parent of `xs` if they are the views [`split_views`] makes of a whole buffer with values of
/// its own, in order ([`Backend::join_views`]).
fn joined_views(xs: &[&dyn BackendBuffer], outer: usize, inners: &[usize]) -> Option<BufferRef> {
    let total: usize = inners.iter().sum();
    let mut parent: Option<&BufferRef> = None;
    let mut start = 0;
    for (x, &inner) in xs.iter().zip(inners) {
        let Storage::View(r) = &cpu(*x).ok()?.0 else {
            return None;
        };
        let same = parent.is_none_or(|p| Arc::ptr_eq(p, &r.parent));
        let placed = r.offset == start
            && r.run_len == inner
            && r.runs == outer
            && (outer == 1 || r.stride == total);
        if !same || !placed {
            return None;
        }
        parent = Some(&r.parent);
        start += inner;
    }
    parent
        .filter(|p| xs.len() == inners.len() && p.len() == outer * total)
        .cloned()
}

/// The host's available memory (`MemAvailable` of /proc/meminfo, in bytes); `None` where there is no
/// such file (not Linux).
pub fn host_available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod cache_tests {
    use super::parse_cache_size;

    #[test]
    fn cache_sizes_parse_as_sysfs_writes_them() {
        assert_eq!(parse_cache_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1M"), Some(1 << 20));
        assert_eq!(parse_cache_size("2G"), Some(2 << 30));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size(""), None);
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("12x"), None);
    }
}

#[cfg(test)]
mod view_tests {
    use super::*;

    /// x's values o·Σinners + start .. + inner for every o: what piece `start` of a split holds.
    fn runs_of(x: &[f32], outer: usize, total: usize, start: usize, inner: usize) -> Vec<f32> {
        (0..outer)
            .flat_map(|o| x[o * total + start..][..inner].to_vec())
            .collect()
    }

    /// The fused SGD step on a strided view (gathered, updated, written back: the rest of the parent
    /// untouched), with a gradient that shares the parameter's storage (copied before the write),
    /// and refusing a momentum buffer that is the parameter itself.
    #[test]
    fn sgd_step_on_views_and_aliased_gradients() {
        let be = CpuBackend;
        let (outer, inners) = (3, [2usize, 5]);
        let xv = test_data(outer * 7, 11);
        let x = be.from_host(&xv).unwrap();
        let pieces = be.split(&x, outer, &inners).unwrap();
        let w = &pieces[1]; // runs of 5 values, 7 apart: a strided view
        let gv = test_data(w.len(), 12);
        let g = be.from_host(&gv).unwrap();
        let buf = be.from_host(&vec![0.0; w.len()]).unwrap();
        let u = SgdUpdate {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.01,
            nesterov: false,
            first: true,
        };
        let before = be.to_host(&**w).unwrap();
        be.sgd_step(&**w, &*g, Some(&*buf), &u).unwrap();
        let want: Vec<f32> = before
            .iter()
            .zip(&gv)
            .map(|(&w, &g)| w + -0.1 * (0.01 * w + g))
            .collect();
        assert_eq!(be.to_host(&**w).unwrap(), want);
        assert_eq!(
            be.to_host(&*pieces[0]).unwrap(),
            runs_of(&xv, outer, 7, 0, 2)
        );
        // the gradient is the parameter's other piece: one storage, read before it is written
        let u = SgdUpdate { momentum: 0.0, ..u };
        let (w0, g0) = (be.to_host(&*pieces[0]).unwrap(), be.to_host(&**w).unwrap());
        let wide = be.split(&x, outer, &[2, 3, 2]).unwrap();
        let g2 = be.to_host(&*wide[0]).unwrap(); // a 2-wide gradient for the 2-wide piece
        be.sgd_step(&*pieces[0], &*wide[0], None, &u).unwrap();
        let want: Vec<f32> = w0
            .iter()
            .zip(&g2)
            .map(|(&w, &g)| w + -0.1 * (0.01 * w + g))
            .collect();
        assert_eq!(be.to_host(&*pieces[0]).unwrap(), want);
        assert_eq!(
            be.to_host(&**w).unwrap(),
            g0,
            "the other piece is untouched"
        );
        let err = be.sgd_step(&**w, &*g, Some(&**w), &u).unwrap_err();
        assert!(err.to_string().contains("share storage"), "{err}");
    }

    /// concat's gradient pieces are views of the gradient's values (no copy) and read, gathered, read
    /// as rows in place and split again as the copies they replace; a view of a view refers to the
    /// first buffer.
    #[test]
    fn split_hands_out_views_of_the_rows() {
        let be = CpuBackend;
        let cases: [(usize, &[usize]); 4] =
            [(1, &[3, 0, 5]), (4, &[2, 6, 1]), (3, &[4]), (2, &[0])];
        for (outer, inners) in cases {
            let total: usize = inners.iter().sum();
            let xv = test_data(outer * total, 7);
            let x = be.from_host(&xv).unwrap();
            let pieces = be.split(&x, outer, inners).unwrap();
            let mut start = 0;
            for (p, &inner) in pieces.iter().zip(inners) {
                let want = runs_of(&xv, outer, total, start, inner);
                assert!(p.is_view() && p.len() == want.len());
                assert_eq!(be.to_host(&**p).unwrap(), want, "{outer} x {inners:?}");
                let doubled = be.unary(&**p, UnaryOp::Scale(2.0)).unwrap();
                let want2: Vec<f32> = want.iter().map(|v| v * 2.0).collect();
                assert_eq!(be.to_host(&*doubled).unwrap(), want2);
                let (rows, first, stride) = read_rows(&**p, inner).unwrap();
                for o in 0..outer {
                    assert_eq!(
                        &rows[first + o * stride..][..inner],
                        &want[o * inner..][..inner]
                    );
                }
                // split again along the same rows (a view of the parent), and as one flat row
                // (contiguous pieces only; a strided piece is gathered first)
                let halves = [inner / 2, inner - inner / 2];
                for (sub_outer, sub) in [(outer, halves), (1, [0, outer * inner])] {
                    let again = be.split(p, sub_outer, &sub).unwrap();
                    let sub_total = sub[0] + sub[1];
                    for (k, q) in again.iter().enumerate() {
                        let at = if k == 0 { 0 } else { sub[0] };
                        let w = runs_of(&want, sub_outer, sub_total, at, sub[k]);
                        assert_eq!(be.to_host(&**q).unwrap(), w, "{outer} x {inners:?} again");
                    }
                }
                start += inner;
            }
        }
    }

    /// A concat written by its producers: each batch norm (+ReLU) writes into its slice of the output
    /// exactly the values `batch_norm_train` makes (and nothing outside it), and `join_views` gives the
    /// output back only for the views of one whole buffer in split order.
    #[test]
    fn producers_write_their_slices_and_join_without_a_copy() {
        let be = CpuBackend;
        let (outer, inner, channels) = (3, 7, [2, 5]);
        let inners = channels.map(|c| c * inner);
        let out = be.full(outer * (inners[0] + inners[1]), f32::NAN).unwrap();
        let views = be.split(&out, outer, &inners).unwrap();
        let mut want = vec![vec![]; 2];
        for (k, &c) in channels.iter().enumerate() {
            let x = be
                .from_host(&test_data(outer * c * inner, 20 + k as u64))
                .unwrap();
            let w = be.from_host(&test_data(c, 30 + k as u64)).unwrap();
            let g = AxisGeom {
                outer,
                axis: c,
                inner,
            };
            let relu = k == 1;
            let (y, _) = be
                .batch_norm_train(&*x, Some(&*w), None, g, 1e-5, relu)
                .unwrap();
            let stats = be
                .batch_norm_train_into(&*x, Some(&*w), None, g, 1e-5, relu, &*views[k])
                .unwrap();
            want[k] = be.to_host(&*y).unwrap();
            assert_eq!(be.to_host(&*stats.mean).unwrap().len(), c);
            let wrong = be.from_host(&[0.0; 4]).unwrap();
            let err = be.batch_norm_train_into(&*x, None, None, g, 1e-5, false, &*wrong);
            assert!(err
                .unwrap_err()
                .to_string()
                .contains("output buffer of 4 values"));
        }
        // every value of the output written, each slice bit for bit the producer's own result
        let all = be.to_host(&*out).unwrap();
        for o in 0..outer {
            for (k, &n) in inners.iter().enumerate() {
                let at = o * (inners[0] + inners[1]) + if k == 0 { 0 } else { inners[0] };
                let (got, exp) = (&all[at..at + n], &want[k][o * n..(o + 1) * n]);
                assert!(got.iter().zip(exp).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
        let parts: Vec<&dyn BackendBuffer> = views.iter().map(|v| &**v).collect();
        let joined = be.join_views(&parts, outer, &inners).unwrap();
        assert!(Arc::ptr_eq(&joined, &out));
        let swapped = [parts[1], parts[0]];
        assert!(be
            .join_views(&swapped, outer, &[inners[1], inners[0]])
            .is_none());
        assert!(be.join_views(&parts[..1], outer, &inners[..1]).is_none());
        let other = be
            .split(&be.full(out.len(), 0.0).unwrap(), outer, &inners)
            .unwrap();
        assert!(be
            .join_views(&[parts[0], &*other[1]], outer, &inners)
            .is_none());
        let whole = be.copy(&*out).unwrap();
        assert!(be.join_views(&[&*whole], 1, &[out.len()]).is_none());
    }

    /// A split whose pieces do not cover x is an error, not views reaching past it.
    #[test]
    fn split_checks_the_length() {
        let be = CpuBackend;
        let x = be.from_host(&[1.0; 10]).unwrap();
        let err = be.split(&x, 3, &[2, 1]).unwrap_err().to_string();
        assert!(err.contains("split") && err.contains("10 values"), "{err}");
    }

    /// In-place writes to a view reach its runs of the parent and nothing else (PyTorch's in-place
    /// ops on a view), through every write path.
    #[test]
    fn writes_to_a_view_go_through_to_its_runs() {
        let be = CpuBackend;
        let (outer, inners) = (3, [2, 4, 3]);
        let xv = test_data(outer * 9, 8);
        let x = be.from_host(&xv).unwrap();
        let pieces = be.split(&x, outer, &inners).unwrap();
        let ones = be.full(outer * 4, 1.0).unwrap();
        be.axpby(&*pieces[1], 0.5, &*ones, 2.0).unwrap(); // 0.5 + 2·x
        let after = be.to_host(&*x).unwrap();
        for (i, (&a, &b)) in after.iter().zip(&xv).enumerate() {
            let in_piece = (2..6).contains(&(i % 9));
            let want = if in_piece { 0.5 + 2.0 * b } else { b };
            assert_eq!(a, want, "value {i}");
        }
        be.relu_in_place(&*pieces[2]).unwrap();
        be.add_relu_in_place(&*pieces[0], &*pieces[0]).unwrap();
        let src = be.from_host(&[7.0; 12]).unwrap();
        be.copy_into(&*pieces[1], &*src).unwrap();
        let done = be.to_host(&*x).unwrap();
        for (i, (&a, &b)) in done.iter().zip(&xv).enumerate() {
            let want = match i % 9 {
                0..=1 => (b + b).max(0.0),
                2..=5 => 7.0,
                _ => b.max(0.0),
            };
            assert_eq!(a, want, "value {i}");
        }
    }
}
