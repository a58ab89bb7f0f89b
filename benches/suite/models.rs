//! Whole models: inference and a training step (forward + cross entropy + backward + SGD step) through
//! `exec::Network`, as the training loop runs them.

use serde_json::{json, Value};

use vidgrad::bench::BenchModel;
use vidgrad::exec::Network;
use vidgrad::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
use vidgrad::{ops, Device, Result, Tensor};

use crate::clock::{Clock, Plan};
use crate::report::fmt_bytes;

/// The optimiser of the training step (the PyTorch script uses the same).
pub const SGD: SgdConfig = SgdConfig {
    lr: 1e-3,
    momentum: 0.9,
    dampening: 0.0,
    nesterov: false,
};
pub const WEIGHT_DECAY: f32 = 1e-4;

/// Time model `m` at batch `batch` on `dev` in the calling thread's math mode; one JSON row.
pub fn bench(m: &BenchModel, batch: usize, dev: Device, clock: Clock, plan: Plan) -> Result<Value> {
    if let Clock::Cuda(cb) = clock {
        cb.empty_cache()?; // "reserved" then counts this model only
    }
    let mode = vidgrad::math_mode::math_mode_on(vidgrad::math_mode::Hardware::of(dev))?;
    let input = m.input_at(batch);
    let graph = m.graph(batch)?;
    let macs = graph.macs() as f64;
    let params = graph.num_params();
    let dropout = graph
        .nodes
        .iter()
        .find_map(|n| match n.op {
            vidgrad::graph::Op::Dropout { p } => Some(p),
            _ => None,
        })
        .unwrap_or(0.0);
    let classes = *graph.values[graph.outputs[0]].shape.last().unwrap_or(&1);
    let mut net = Network::new(graph, dev, 0)?;
    let x = Tensor::rand_uniform(&input, -1.0, 1.0, 1, dev)?;
    let labels: Vec<usize> = (0..batch).map(|i| (i * 7919) % classes).collect();

    // inference: eval mode, no tape
    net.eval();
    let infer = clock.step(plan, |_| vidgrad::no_grad(|| net.forward(&[&x])).map(drop))?;
    dev.reset_memory_peak()?;
    let base = dev.memory_in_use()?;
    vidgrad::no_grad(|| net.forward(&[&x]))?;
    let infer_peak = dev.memory_peak()?;

    // training step
    net.train();
    let mut opt = Sgd::new(vec![ParamGroup::new(net.parameters(), WEIGHT_DECAY)], SGD)?;
    let mut step = || -> Result<()> {
        opt.zero_grad();
        let logits = net.forward(&[&x])?;
        let loss = ops::cross_entropy(&logits, &labels, 0.0)?;
        loss.backward()?;
        opt.step()
    };
    let train = clock.step(plan, |_| step())?;
    // one more step for the memory peak (momentum buffers exist by now; the forward resets the peak)
    step()?;
    let train_peak = dev.memory_peak()?;
    let reserved = match clock {
        Clock::Cuda(be) => Some(be.memory_stats().reserved),
        Clock::Cpu => None,
    };

    let (ti, tt) = (infer.median(), train.median());
    let b = batch as f64;
    let row = json!({
        "model": m.name, "math": mode.name(), "input": input, "batch": batch, "classes": classes,
        "fused": vidgrad::exec::fuse_by_default(),
        "options": {"classes": m.opts.classes, "dropout": m.opts.dropout},
        "extra": m.opts.extra, "dropout": dropout, "params": params, "fwd_gmacs_per_clip": macs / b / 1e9,
        "inference": {"ms": ti * 1e3, "clips_per_s": b / ti, "runs": infer.runs.len(),
                      "tflops": 2.0 * macs / ti / 1e12, "peak_bytes": infer_peak,
                      "peak_above_weights_bytes": infer_peak.saturating_sub(base)},
        "train": {"ms": tt * 1e3, "clips_per_s": b / tt, "runs": train.runs.len(),
                  "tflops_3x_fwd": 6.0 * macs / tt / 1e12, "peak_bytes": train_peak},
        "reserved_bytes": reserved,
        "sgd": {"lr": r6(SGD.lr), "momentum": r6(SGD.momentum), "weight_decay": r6(WEIGHT_DECAY)},
    });
    println!(
        "  {:<14} {:<4} {:<22} {:>9.2} {:>9.1} {:>7.3} {:>10} | {:>9.2} {:>9.1} {:>10}",
        m.name,
        mode.name(),
        format!("{input:?}"),
        b / ti,
        ti * 1e3,
        2.0 * macs / ti / 1e12,
        fmt_bytes(infer_peak),
        b / tt,
        tt * 1e3,
        fmt_bytes(train_peak),
    );
    Ok(row)
}

/// An f32 constant as the decimal it was written as.
fn r6(x: f32) -> f64 {
    (x as f64 * 1e6).round() / 1e6
}

pub fn header() {
    println!(
        "  {:<14} {:<4} {:<22} {:>9} {:>9} {:>7} {:>10} | {:>9} {:>9} {:>10}",
        "model",
        "math",
        "input",
        "infer c/s",
        "ms",
        "TFLOP/s",
        "peak mem",
        "train c/s",
        "ms",
        "peak mem"
    );
}
