//! The CPU's FP32 multiply-add peak, measured in the same run as the kernel rows: every thread of
//! rayon's pool (the threads the kernels get) runs a loop of independent fused multiply-adds in the
//! widest vectors the CPU has — 512-bit with AVX-512F, else 256-bit with AVX2 and FMA — with more
//! accumulators than the FMA units' latency × ports, so the loop is bound by FMA throughput alone:
//! the ceiling for a kernel's FLOP/s on this machine, clock as it runs under this load (turbo and
//! AVX-512 licence included). Like STREAM beside the memory-bound rows, the FLOP rows give a % of it.

use std::time::Instant;

use serde_json::{json, Value};

/// Timed repetitions after one untimed one.
const RUNS: usize = 10;
/// Loop trips per thread and run, ~30 ms at 3 GHz with 512-bit FMAs.
const TRIPS: usize = 6_000_000;
/// Independent FMA chains per trip: 2 FMA ports × 4 cycles of latency need 8; 12 leave headroom and
/// fit AVX2's 16 registers with the two constants.
const CHAINS: usize = 12;

/// FLOP/s of all threads together: the fastest run and the median.
#[derive(Debug, Clone)]
pub struct FmaPeak {
    pub best: f64,
    pub median: f64,
    pub threads: usize,
    /// The vector width the loop ran ("avx512", "avx2").
    pub isa: &'static str,
}

impl FmaPeak {
    pub fn describe(&self) -> String {
        format!(
            "FP32 peak, FMA loop ({}, {} threads, median / best of {RUNS}): {:.3} / {:.3} TFLOP/s",
            self.isa,
            self.threads,
            self.median / 1e12,
            self.best / 1e12
        )
    }

    pub fn to_json(&self) -> Value {
        json!({"median_tflops": self.median / 1e12, "best_tflops": self.best / 1e12,
               "threads": self.threads, "isa": self.isa, "runs": RUNS,
               "reference": "pct_peak of FLOP rows: the median; fastest_pct_peak: the fastest run"})
    }
}

/// The peak where the CPU has AVX-512F or AVX2 and FMA; None elsewhere (rows then say n/a).
pub fn measure() -> Option<FmaPeak> {
    let (isa, lanes, run): (_, usize, fn(usize) -> f32) = widest()?;
    let threads = rayon::current_num_threads();
    let flops = (threads * TRIPS * CHAINS * lanes * 2) as f64;
    let mut secs: Vec<f64> = (0..=RUNS)
        .map(|_| {
            let t = Instant::now();
            let sums = rayon::broadcast(|_| run(TRIPS));
            std::hint::black_box(sums);
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    secs.sort_by(|a, b| a.total_cmp(b));
    Some(FmaPeak {
        best: flops / secs[0],
        median: flops / secs[secs.len() / 2],
        threads,
        isa,
    })
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn widest() -> Option<(&'static str, usize, fn(usize) -> f32)> {
    if is_x86_feature_detected!("avx512f") {
        // SAFETY (of the call): the CPU has AVX-512F.
        Some(("avx512", 16, |n| unsafe { fma_loop_avx512(n) }))
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY (of the call): the CPU has AVX2 and FMA.
        Some(("avx2", 8, |n| unsafe { fma_loop_avx2(n) }))
    } else {
        None
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::type_complexity)]
fn widest() -> Option<(&'static str, usize, fn(usize) -> f32)> {
    None
}

/// `trips` × [`CHAINS`] independent 512-bit FMAs; the sum so the loop is not optimised away.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(trips: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut c = [_mm512_set1_ps(1.0); CHAINS];
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    for _ in 0..trips {
        for v in c.iter_mut() {
            *v = _mm512_fmadd_ps(a, *v, b);
        }
    }
    let s = c
        .iter()
        .fold(_mm512_setzero_ps(), |s, &v| _mm512_add_ps(s, v));
    _mm512_reduce_add_ps(s)
}

/// `trips` × [`CHAINS`] independent 256-bit FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(trips: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut c = [_mm256_set1_ps(1.0); CHAINS];
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    for _ in 0..trips {
        for v in c.iter_mut() {
            *v = _mm256_fmadd_ps(a, *v, b);
        }
    }
    let mut lanes = [0.0f32; 8];
    let s = c
        .iter()
        .fold(_mm256_setzero_ps(), |s, &v| _mm256_add_ps(s, v));
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    lanes.iter().sum()
}
