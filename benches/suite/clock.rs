//! Timing: wall clock on the CPU, CUDA events on the GPU; median of the timed runs after warm-up.

use std::time::Instant;

use vidgrad::backend::cuda::CudaBackend;
use vidgrad::Result;

/// How many runs: `warmup` untimed, then enough to fill `target_s` (estimated from the warm-up),
/// clamped to `[min_runs, max_runs]`.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub warmup: usize,
    pub min_runs: usize,
    pub max_runs: usize,
    pub target_s: f64,
}

/// Per-run seconds of the timed runs.
#[derive(Debug, Clone)]
pub struct Timing {
    pub runs: Vec<f64>,
}

impl Timing {
    pub fn median(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        }
    }
    pub fn min(&self) -> f64 {
        self.runs.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Where time is read.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    Cpu,
    Cuda(&'static CudaBackend),
}

impl Clock {
    /// Time a kernel: `f(i)` enqueues run `i` (i counts warm-up and timed runs, for input rotation).
    /// CPU: `Instant` around each call. CUDA: an event before and after each call, all runs enqueued
    /// back to back, read after one synchronisation (stream time, no host round trip per run).
    pub fn kernel(&self, plan: Plan, mut f: impl FnMut(usize) -> Result<()>) -> Result<Timing> {
        match self {
            Clock::Cpu => wall(plan, &mut f, || Ok(())),
            Clock::Cuda(be) => {
                let mut i = 0;
                for _ in 0..plan.warmup {
                    f(i)?;
                    i += 1;
                }
                let a = be.record_event()?;
                f(i)?;
                i += 1;
                let b = be.record_event()?;
                let est = (a.elapsed_ms(&b)? as f64 / 1e3).max(1e-7);
                let runs = runs_for(plan, est);
                let mut events = Vec::with_capacity(runs);
                for _ in 0..runs {
                    let a = be.record_event()?;
                    f(i)?;
                    i += 1;
                    events.push((a, be.record_event()?));
                }
                be.synchronize()?;
                let runs = events
                    .iter()
                    .map(|(a, b)| Ok(a.elapsed_ms(b)? as f64 / 1e3))
                    .collect::<Result<Vec<f64>>>()?;
                Ok(Timing { runs })
            }
        }
    }

    /// Time a whole step as the host sees it: wall clock from the call to the device being idle again
    /// (CUDA: synchronise after each run), so host overhead counts.
    pub fn step(&self, plan: Plan, mut f: impl FnMut(usize) -> Result<()>) -> Result<Timing> {
        match self {
            Clock::Cpu => wall(plan, &mut f, || Ok(())),
            Clock::Cuda(be) => {
                be.synchronize()?;
                wall(plan, &mut f, || be.synchronize())
            }
        }
    }
}

fn runs_for(plan: Plan, est: f64) -> usize {
    ((plan.target_s / est).ceil() as usize).clamp(plan.min_runs, plan.max_runs)
}

fn wall(
    plan: Plan,
    f: &mut impl FnMut(usize) -> Result<()>,
    sync: impl Fn() -> Result<()>,
) -> Result<Timing> {
    let mut i = 0;
    let mut est = f64::INFINITY;
    for _ in 0..plan.warmup.max(1) {
        let t = Instant::now();
        f(i)?;
        sync()?;
        est = est.min(t.elapsed().as_secs_f64());
        i += 1;
    }
    let runs = runs_for(plan, est.max(1e-7));
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f(i)?;
        sync()?;
        out.push(t.elapsed().as_secs_f64());
        i += 1;
    }
    Ok(Timing { runs: out })
}
