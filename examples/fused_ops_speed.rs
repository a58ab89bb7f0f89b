//! The training fusions' CPU kernels against the unfused pairs they replace, at ECO-Lite shapes
//! (batch 2: its 2-D part sees 32 frames): BN → ReLU forward and backward, add → ReLU, and ReLU in
//! place. Each variant runs `ROUNDS` times, the variants interleaved, and the fastest run is kept (the
//! development machine is shared: the minimum is what the kernel costs when it has the cores).
//!
//! `cargo run --release --example fused_ops_speed` (docs/PERFORMANCE.md records the figures).

use std::time::Instant;

use vidgrad::backend::{AxisGeom, Backend, BinaryOp, UnaryOp};
use vidgrad::{Device, Result};

const ROUNDS: usize = 9;

fn main() -> Result<()> {
    let be = Device::Cpu.backend()?;
    let threads = rayon::current_num_threads();
    println!("CPU, {threads} threads, fastest of {ROUNDS} interleaved runs, ms");
    // ECO-Lite at batch 2: its first BN (2-D, 32 frames), a BN of its Inception part, a 3-D block.
    for shape in [
        vec![32usize, 64, 112, 112],
        vec![32, 96, 28, 28],
        vec![2, 256, 8, 14, 14],
    ] {
        let n: usize = shape.iter().product();
        let g = AxisGeom {
            outer: shape[0],
            axis: shape[1],
            inner: n / (shape[0] * shape[1]),
        };
        let host: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let x = be.from_host(&host)?;
        let b = be.from_host(&host.iter().rev().copied().collect::<Vec<_>>())?;
        let dy = be.from_host(&host.iter().map(|v| v * 0.5).collect::<Vec<_>>())?;
        let w = be.full(g.axis, 1.5)?;
        let bias = be.full(g.axis, 0.1)?;
        let (yf, stats) = be.batch_norm_train(&*x, Some(&*w), Some(&*bias), g, 1e-5, true)?;
        let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        type Variant<'a> = (&'a str, Box<dyn FnMut() -> Result<()> + 'a>);
        let be: &dyn Backend = be;
        let (x, b, dy, w, bias, yf) = (&*x, &*b, &*dy, &*w, &*bias, &*yf);
        let (mean, var) = (&*stats.mean, &*stats.var);
        let mut variants: Vec<Variant> = vec![
            (
                "bn+relu fwd, fused",
                Box::new(|| {
                    be.batch_norm_train(x, Some(w), Some(bias), g, 1e-5, true)
                        .map(drop)
                }),
            ),
            (
                "bn+relu fwd, bn then relu",
                Box::new(|| {
                    let (y, _) = be.batch_norm_train(x, Some(w), Some(bias), g, 1e-5, false)?;
                    be.unary(&*y, UnaryOp::Relu).map(drop)
                }),
            ),
            (
                "bn+relu bwd, fused",
                Box::new(|| {
                    be.batch_norm_backward(dy, x, Some(w), mean, var, g, 1e-5, true, Some(yf))
                        .map(drop)
                }),
            ),
            (
                "bn+relu bwd, relu_backward then bn",
                Box::new(|| {
                    let d = be.relu_backward(yf, dy)?;
                    be.batch_norm_backward(&*d, x, Some(w), mean, var, g, 1e-5, true, None)
                        .map(drop)
                }),
            ),
            (
                "add+relu, fused",
                Box::new(|| be.binary(x, b, BinaryOp::AddRelu).map(drop)),
            ),
            (
                "add+relu, add then relu",
                Box::new(|| {
                    let s = be.binary(x, b, BinaryOp::Add)?;
                    be.unary(&*s, UnaryOp::Relu).map(drop)
                }),
            ),
            (
                "add+relu in place (incl. the copy it needs here)",
                Box::new(|| {
                    let a = be.copy(x)?;
                    be.add_relu_in_place(&*a, b)
                }),
            ),
            ("copy (reference)", Box::new(|| be.copy(x).map(drop))),
            (
                "relu in place (incl. copy)",
                Box::new(|| {
                    let a = be.copy(x)?;
                    be.relu_in_place(&*a)
                }),
            ),
            (
                "relu, new buffer",
                Box::new(|| be.unary(x, UnaryOp::Relu).map(drop)),
            ),
        ];
        let mut best = vec![f64::INFINITY; variants.len()];
        for _ in 0..ROUNDS {
            for (k, (_, f)) in variants.iter_mut().enumerate() {
                best[k] = best[k].min(time(f.as_mut())?);
            }
        }
        println!("{shape:?} ({:.1} MB per tensor)", n as f64 * 4e-6);
        for ((name, _), t) in variants.iter().zip(&best) {
            println!("  {name:<50} {t:>9.2}");
        }
    }
    Ok(())
}
