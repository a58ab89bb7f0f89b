//! How fast the simulated CUDA device runs: the reference convolution (conv fprop with
//! M = 64 output channels, N = 4096 output positions, K = 64·3·3·3 = 1728: 453 M multiply-adds) on
//! `--device cuda-sim`, and the cost of one fiber context switch (a kernel of nothing but barriers).
//! Host-CPU figures of the simulator, not GPU figures (docs/CUDA-SIM.md records them).
//!
//! `cargo run --release --example cuda_sim_speed` (`VIDGRAD_SIM_THREADS=1` for one core).

use std::time::Instant;

use vidgrad::backend::cuda::sim::{arg, Simulator};
use vidgrad::backend::ConvGeom;
use vidgrad::{Device, Result};

fn main() -> Result<()> {
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
    for checks in [true, false] {
        sim.set_checks(checks);
        let _ = be.conv_forward(&*xb, &*wb, None, &g)?; // warm-up (fiber stacks, pool)
        let t = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            let _ = be.conv_forward(&*xb, &*wb, None, &g)?;
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "conv fprop 64×4096×1728 ({:.0} M MAC), checks {}: {:.3} s, {:.2} G MAC/s on {} host thread(s) ({:.2} per thread)",
            macs / 1e6,
            if checks { "on " } else { "off" },
            s,
            macs / s / 1e9,
            sim.threads(),
            macs / s / 1e9 / sim.threads() as f64
        );
    }
    sim.set_checks(true);

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
