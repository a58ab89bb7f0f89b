//! CPU convolution benchmark: conv3d 128→128, 3×3×3, padding 1, on [2, 128, 16, 28, 28] — forward and
//! backward (data + weight gradients). Prints a table and writes target/bench/conv_cpu.json, which
//! tools/bench/conv3d_cpu_torch.py reads to print the ratio against PyTorch on the same machine.
//!
//! `cargo bench --bench conv_cpu` (VIDGRAD_BENCH_RUNS sets the number of timed runs, default 7).

use std::time::Instant;

use vidgrad::ops::{self, ConvParams};
use vidgrad::{Device, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> vidgrad::Result<()> {
    let runs: usize = std::env::var("VIDGRAD_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let dev = Device::Cpu;
    let (xs, ws) = ([2, 128, 16, 28, 28], [128, 128, 3, 3, 3]);
    let p = ConvParams::default().padding(&[1, 1, 1]);
    let x = Tensor::randn(&xs, 1, dev)?.with_grad();
    let w = Tensor::randn(&ws, 2, dev)?.mul_scalar(0.02)?.with_grad();
    let gy = Tensor::randn(&xs, 3, dev)?;
    // Multiply-adds of one pass (the data and weight gradients cost the same each).
    let macs = (2 * 128 * 16 * 28 * 28) as f64 * (128 * 27) as f64;

    let (mut fwd, mut bwd) = (vec![], vec![]);
    for i in 0..runs + 1 {
        let t0 = Instant::now();
        let y = ops::conv(&x, &w, None, &p)?;
        let t1 = Instant::now();
        y.backward_with(&gy)?;
        let t2 = Instant::now();
        x.zero_grad();
        w.zero_grad();
        if i > 0 {
            // the first run warms caches and the thread pool
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
        }
    }
    let (f, b) = (median(fwd), median(bwd));
    let threads = rayon::current_num_threads();
    println!("conv3d 128->128 3x3x3 p1 on {xs:?}, CPU, {threads} threads, median of {runs}");
    println!("{:<22} {:>10} {:>10}", "pass", "ms", "GFLOP/s");
    println!(
        "{:<22} {:>10.1} {:>10.1}",
        "forward",
        f * 1e3,
        2.0 * macs / f / 1e9
    );
    println!(
        "{:<22} {:>10.1} {:>10.1}",
        "backward (dx + dw)",
        b * 1e3,
        4.0 * macs / b / 1e9
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).ok();
    let json = serde_json::json!({
        "bench": "conv3d_cpu",
        "input": xs, "weight": ws, "padding": [1, 1, 1],
        "threads": threads, "runs": runs,
        "forward_ms": f * 1e3, "backward_ms": b * 1e3,
    });
    let path = dir.join("conv_cpu.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).ok();
    println!("wrote {}", path.display());
    Ok(())
}
