//! How fast the simulated CUDA device runs: the reference convolution (conv fprop with
//! M = 64 output channels, N = 4096 output positions, K = 64·3·3·3 = 1728: 453 M multiply-adds) on
//! `--device cuda-sim`, and the cost of one fiber context switch (a kernel of nothing but barriers).
//! Host-CPU figures of the simulator, not GPU figures (docs/CUDA-SIM.md records them).
//!
//! `cargo run --release --example cuda_sim_speed [all|bounds|off]` (`VIDGRAD_SIM_THREADS=1` for one
//! core; an argument measures only that level of the checks, e.g. under a profiler).
//!
//! "Per core" is multiply-adds per second of process CPU time (`CLOCK_PROCESS_CPUTIME_ID`), which
//! stays meaningful on a machine that is busy with other work; the wall-clock rate is printed beside it.
//!
//! The reference convolution is the FP32 kernel (`conv_fprop`): the example pins `--math fp32`
//! unless `VIDGRAD_MATH` chooses a mode (CUDA's default is tf32, which runs the tensor-core kernel).

use std::time::Instant;

use vidgrad::backend::cuda::sim::{arg, SimChecks, Simulator};
use vidgrad::backend::ConvGeom;
use vidgrad::math_mode::{chosen_math_mode, set_math_mode, MathMode};
use vidgrad::{Device, Result};

fn main() -> Result<()> {
    let math = match chosen_math_mode()? {
        Some(m) => m,
        None => {
            set_math_mode(MathMode::Fp32);
            MathMode::Fp32
        }
    };
    let sim = Simulator::get()?;
    let be = Device::CudaSim.backend()?;
    // [1, 64, 4, 32, 32] ⊛ [64, 64, 3, 3, 3], padding 1: 64 × (4·32·32 = 4096) × 1728.
    let g = ConvGeom {
        n: 1,
        c_in: 64,
        c_out: 64,
        groups: 1,
        input: [4, 32, 32],
        output: [4, 32, 32],
        kernel: [3, 3, 3],
        stride: [1, 1, 1],
        padding: [1, 1, 1],
        dilation: [1, 1, 1],
    };
    let x: Vec<f32> = (0..64 * 4096)
        .map(|i| vidgrad::rng::uniform(1, i) - 0.5)
        .collect();
    let w: Vec<f32> = (0..64 * 1728)
        .map(|i| vidgrad::rng::uniform(2, i) - 0.5)
        .collect();
    let (xb, wb) = (be.from_host(&x)?, be.from_host(&w)?);
    let macs = 64.0 * 4096.0 * 1728.0;
    let settings = match std::env::args().nth(1).as_deref() {
        Some("all") => vec![SimChecks::All],
        Some("bounds") => vec![SimChecks::Bounds],
        Some("off") => vec![SimChecks::Off],
        _ => vec![SimChecks::All, SimChecks::Bounds, SimChecks::Off],
    };
    for checks in settings {
        sim.set_checks(checks);
        let _ = be.conv_forward(&*xb, &*wb, None, &g)?; // warm-up (fiber stacks, pool)
        let (t, cpu0) = (Instant::now(), process_cpu_seconds());
        let reps: usize = std::env::var("VIDGRAD_SPEED_REPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for _ in 0..reps {
            let _ = be.conv_forward(&*xb, &*wb, None, &g)?;
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        let cpu = (process_cpu_seconds() - cpu0) / reps as f64;
        println!(
            "conv fprop {} 64×4096×1728 ({:.0} M MAC), checks {:<6}: {:.2} G MAC/s per core ({:.3} CPU s); wall {:.3} s, {:.2} G MAC/s on {} host thread(s)",
            math.name(),
            macs / 1e6,
            format!("{checks:?}"),
            macs / cpu / 1e9,
            cpu,
            s,
            macs / s / 1e9,
            sim.threads(),
        );
    }
    sim.set_checks(SimChecks::All);

    // Context switches: 1024 threads × `iters` barriers, one block (one host thread).
    let iters = 200i32;
    let before = sim.context_switches();
    let t = Instant::now();
    // SAFETY: the kernel takes one int and touches no memory.
    unsafe {
        sim.launch(
            "st_barrier_loop",
            (1, 1, 1),
            (1024, 1, 1),
            0,
            &[arg(&iters)],
        )?
    };
    let s = t.elapsed().as_secs_f64();
    let switches = sim.context_switches() - before;
    println!(
        "context switch: {:.1} ns ({} switches in {:.3} s, barriers included)",
        s / switches as f64 * 1e9,
        switches,
        s
    );
    Ok(())
}

/// CPU time of the whole process (every host thread of the simulator), in seconds.
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
