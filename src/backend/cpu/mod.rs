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
                // SAFETY: the CPU has the features the function is compiled for.
                unsafe { avx2(|| $body) }
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
mod layout;
mod linalg;
mod loss;
mod pool;
mod softmax;
mod upsample;

use crate::math_mode::{math_mode_on, round_operands, Hardware};

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use super::*;
use crate::error::{Error, Result};

/// A host buffer.
#[derive(Debug)]
pub struct CpuBuffer(RwLock<Vec<f32>>);

/// Bytes held by live CPU buffers, now and at most (for memory tests and reports).
static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

impl Drop for CpuBuffer {
    fn drop(&mut self) {
        let bytes = self.0.get_mut().map(|v| v.len() * 4).unwrap_or(0);
        IN_USE.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl BackendBuffer for CpuBuffer {
    fn len(&self) -> usize {
        self.0.read().unwrap().len()
    }
    fn as_any(&self) -> &dyn Any {
        self
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
    let now = IN_USE.fetch_add(v.len() * 4, Ordering::Relaxed) + v.len() * 4;
    PEAK.fetch_max(now, Ordering::Relaxed);
    Arc::new(CpuBuffer(RwLock::new(v)))
}

fn cpu(b: &dyn BackendBuffer) -> Result<&CpuBuffer> {
    b.as_any()
        .downcast_ref::<CpuBuffer>()
        .ok_or_else(|| Error::Device("a non-CPU buffer was passed to the CPU backend".into()))
}

fn read(b: &dyn BackendBuffer) -> Result<RwLockReadGuard<'_, Vec<f32>>> {
    Ok(cpu(b)?.0.read().unwrap())
}

/// Read an optional buffer: `opt!(x)` gives an `Option<guard>` whose `as_deref()` is `Option<&[f32]>`.
fn read_opt(b: Option<&dyn BackendBuffer>) -> Result<Option<RwLockReadGuard<'_, Vec<f32>>>> {
    b.map(read).transpose()
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
        read_opt(bias)?.as_deref().map(|v| &v[..]),
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
        Ok(read(x)?.clone())
    }
    fn full(&self, len: usize, value: f32) -> Result<BufferRef> {
        Ok(wrap(vec![value; len]))
    }
    fn copy(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        Ok(wrap(read(x)?.clone()))
    }
    fn copy_into(&self, dst: &dyn BackendBuffer, src: &dyn BackendBuffer) -> Result<()> {
        let src = read(src)?.clone(); // a copy first, so that dst == src cannot deadlock
        cpu(dst)?.0.write().unwrap().copy_from_slice(&src);
        Ok(())
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
        elementwise::relu_in_place(&mut cpu(x)?.0.write().unwrap());
        Ok(())
    }
    fn add_relu_in_place(&self, a: &dyn BackendBuffer, b: &dyn BackendBuffer) -> Result<()> {
        let b = read(b)?;
        elementwise::add_relu_in_place(&mut cpu(a)?.0.write().unwrap(), &b);
        Ok(())
    }
    fn axpby(&self, y: &dyn BackendBuffer, a: f32, x: &dyn BackendBuffer, b: f32) -> Result<()> {
        let x = read(x)?.clone(); // y may alias x
        elementwise::axpby(&mut cpu(y)?.0.write().unwrap(), a, &x, b);
        Ok(())
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
        let mut y = read(x)?.clone();
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
        let (mean, var) = batchnorm::statistics(&x, g);
        let (w, b) = (read_opt(weight)?, read_opt(bias)?);
        let y = batchnorm::normalize(
            &x,
            w.as_deref().map(|v| &v[..]),
            b.as_deref().map(|v| &v[..]),
            &mean,
            &var,
            g,
            eps,
            relu,
        );
        Ok((
            wrap(y),
            BnStats {
                mean: wrap(mean),
                var: wrap(var),
            },
        ))
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
        Ok(wrap(batchnorm::normalize(
            &read(x)?,
            w.as_deref().map(|v| &v[..]),
            b.as_deref().map(|v| &v[..]),
            &read(mean)?,
            &read(var)?,
            g,
            eps,
            false,
        )))
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
        let w = read_opt(weight)?;
        let relu_y = read_opt(relu_y)?;
        let (dx, dw, db) = batchnorm::backward(
            &read(dy)?,
            &read(x)?,
            w.as_deref().map(|v| &v[..]),
            &read(mean)?,
            &read(var)?,
            g,
            eps,
            batch_stats,
            relu_y.as_deref().map(|v| &v[..]),
        );
        Ok(BnGrads {
            dx: wrap(dx),
            dweight: wrap(dw),
            dbias: wrap(db),
        })
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
    fn split(
        &self,
        x: &dyn BackendBuffer,
        outer: usize,
        inners: &[usize],
    ) -> Result<Vec<BufferRef>> {
        Ok(layout::split(&read(x)?, outer, inners)
            .into_iter()
            .map(wrap)
            .collect())
    }
}

/// The host's available memory (`MemAvailable` of /proc/meminfo, in bytes); `None` where there is no
/// such file (not Linux).
pub fn host_available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
