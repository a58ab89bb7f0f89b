//! The executor's memory behaviour, measured with the CPU backend's byte counter (one test in its own
//! binary, since the counter is process-wide): inference frees each value after its last reader,
//! training keeps what backward needs, gradient checkpointing trades that memory for recomputation and
//! gives the same gradients, and a concat written by its producers holds its values once.

use vidgrad::exec::{ForwardStats, Network};
use vidgrad::graph::{BatchNorm, Conv, Graph, GraphBuilder, Linear};
use vidgrad::ops::PoolParams;
use vidgrad::{ops, Device, Tensor};

mod common;

/// The tests here measure the CPU backend's allocations, whose counters are process-wide: they run
/// one at a time (another test's CPU tensors would land in the measured peaks).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn net(checkpoint: bool) -> Graph {
    let mut g = GraphBuilder::new("CkptNet");
    let mut x = g.input("input", &[2, 8, 4, 16, 16]).unwrap();
    for i in 0..4 {
        x = g
            .module_checkpointed(&format!("layer{i}"), "Block", x, checkpoint, |g, x| {
                let y = g.conv(
                    "conv1",
                    x,
                    Conv::new(8, &[3, 3, 3]).padding(&[1, 1, 1]).no_bias(),
                )?;
                let y = g.batch_norm("bn1", y, BatchNorm::new())?;
                let y = g.relu("relu1", y)?;
                let y = g.conv(
                    "conv2",
                    y,
                    Conv::new(8, &[3, 3, 3]).padding(&[1, 1, 1]).no_bias(),
                )?;
                let y = g.batch_norm("bn2", y, BatchNorm::new())?;
                let y = g.add(y, x)?;
                g.relu("relu", y)
            })
            .unwrap();
    }
    let x = g.adaptive_avg_pool("pool", x, &[1, 1, 1]).unwrap();
    let x = g.flatten(x, 1, -1).unwrap();
    let y = g.linear("fc", x, Linear::new(3)).unwrap();
    g.finish(&[y]).unwrap()
}

/// Two BN → ReLU branches joined along channels, then a convolution: the concat is written by its
/// producers (each branch's fused BN → ReLU writes into its slice of the output).
fn branches_net() -> Graph {
    let mut g = GraphBuilder::new("BranchNet");
    let x = g.input("input", &[2, 8, 4, 16, 16]).unwrap();
    let mut outs = vec![];
    for (name, k) in [("a", 1), ("b", 3)] {
        let conv = Conv::new(8, &[1, k, k])
            .padding(&[0, k / 2, k / 2])
            .no_bias();
        let y = g.conv(&format!("conv_{name}"), x, conv).unwrap();
        let y = g
            .batch_norm(&format!("bn_{name}"), y, BatchNorm::new())
            .unwrap();
        outs.push(g.relu(&format!("relu_{name}"), y).unwrap());
    }
    let y = g.concat(&outs, 1).unwrap();
    let y = g.conv("conv_c", y, Conv::new(4, &[1, 1, 1])).unwrap();
    let y = g.adaptive_avg_pool("pool", y, &[1, 1, 1]).unwrap();
    let y = g.flatten(y, 1, -1).unwrap();
    let y = g.linear("fc", y, Linear::new(3)).unwrap();
    g.finish(&[y]).unwrap()
}

/// A training step of [`branches_net`], retaining the named values (a retained branch output keeps
/// the concat copying): the forward's statistics, and the output and every gradient.
fn branches_step(x: &Tensor, retain: &[&str]) -> (ForwardStats, Vec<Vec<f32>>) {
    branches_step_on(Device::Cpu, x, retain)
}

/// [`branches_step`] on `dev` (x is moved there).
fn branches_step_on(dev: Device, x: &Tensor, retain: &[&str]) -> (ForwardStats, Vec<Vec<f32>>) {
    let net = Network::new(branches_net(), dev, 5).unwrap();
    let x = x.to_device(dev).unwrap().with_grad();
    let (y, kept) = net.forward_with(&[&x], retain).unwrap();
    let stats = net.last_forward_stats().unwrap();
    drop(kept);
    ops::cross_entropy(&y, &[0, 2], 0.0)
        .unwrap()
        .backward()
        .unwrap();
    let mut values = vec![y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap()];
    values.extend(
        net.parameters()
            .iter()
            .map(|(_, p)| p.grad().unwrap().to_vec().unwrap()),
    );
    (stats, values)
}

/// conv → BN → ReLU → max pool: the pool keeps only its argmax, so the ReLU's output is needed by
/// nothing but the fused BN → ReLU's backward mask.
fn pooled_net() -> Graph {
    let mut g = GraphBuilder::new("PoolNet");
    let x = g.input("input", &[2, 8, 4, 16, 16]).unwrap();
    let conv = Conv::new(8, &[1, 3, 3]).padding(&[0, 1, 1]).no_bias();
    let y = g.conv("conv", x, conv).unwrap();
    let y = g.batch_norm("bn", y, BatchNorm::new()).unwrap();
    let y = g.relu("relu", y).unwrap();
    let y = g
        .max_pool("pool", y, PoolParams::new(&[1, 2, 2]).stride(&[1, 2, 2]))
        .unwrap();
    let y = g.flatten(y, 1, -1).unwrap();
    let y = g.linear("fc", y, Linear::new(3)).unwrap();
    g.finish(&[y]).unwrap()
}

/// A training step of [`pooled_net`] with fusion on or off: the forward's statistics, and the output
/// and every gradient.
fn pooled_step(x: &Tensor, fuse: bool) -> (ForwardStats, Vec<Vec<f32>>) {
    pooled_step_on(Device::Cpu, x, fuse)
}

/// [`pooled_step`] on `dev` (x is moved there).
fn pooled_step_on(dev: Device, x: &Tensor, fuse: bool) -> (ForwardStats, Vec<Vec<f32>>) {
    let mut net = Network::new(pooled_net(), dev, 6).unwrap();
    let x = x.to_device(dev).unwrap();
    net.set_fuse(fuse);
    let x = x.with_grad();
    let y = net.forward(&[&x]).unwrap();
    let stats = net.last_forward_stats().unwrap();
    ops::cross_entropy(&y, &[1, 2], 0.0)
        .unwrap()
        .backward()
        .unwrap();
    let mut values = vec![y.to_vec().unwrap(), x.grad().unwrap().to_vec().unwrap()];
    values.extend(
        net.parameters()
            .iter()
            .map(|(_, p)| p.grad().unwrap().to_vec().unwrap()),
    );
    (stats, values)
}

fn mb(b: usize) -> f64 {
    b as f64 / 1e6
}

/// Train step; returns (peak bytes during forward + backward, parameter gradients, running mean).
fn train_step(checkpoint: bool, x: &Tensor) -> (usize, Vec<Vec<f32>>, Vec<f32>) {
    let (peak, grads, stats, _) = train_step_fused(checkpoint, true, x);
    (peak, grads, stats)
}

/// [`train_step`] with fusion on or off, and the forward's own statistics.
fn train_step_fused(
    checkpoint: bool,
    fuse: bool,
    x: &Tensor,
) -> (usize, Vec<Vec<f32>>, Vec<f32>, ForwardStats) {
    let dev = Device::Cpu;
    let mut net = Network::new(net(checkpoint), dev, 3).unwrap();
    net.set_fuse(fuse);
    let base = dev.memory_in_use().unwrap();
    dev.reset_memory_peak().unwrap();
    let y = net.forward(&[x]).unwrap();
    let forward = net.last_forward_stats().unwrap();
    let loss = ops::cross_entropy(&y, &[0, 2], 0.0).unwrap();
    loss.backward().unwrap();
    let peak = dev.memory_peak().unwrap() - base;
    let grads = net
        .parameters()
        .iter()
        .map(|(_, p)| p.grad().unwrap().to_vec().unwrap())
        .collect();
    let stats = net
        .param("layer0.bn1.running_mean")
        .unwrap()
        .to_vec()
        .unwrap();
    (peak, grads, stats, forward)
}

#[test]
fn memory_liveness_and_checkpointing() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dev = Device::Cpu;
    let x = Tensor::randn(&[2, 8, 4, 16, 16], 1, dev).unwrap();

    // Inference: the measured peak follows the graph's liveness plan, far below training's.
    let mut infer = Network::new(net(false), dev, 3).unwrap();
    infer.eval();
    infer.forward(&[&x]).unwrap();
    let s = infer.last_forward_stats().unwrap();
    // Fusion (on by default) makes each conv→bn→relu chain one buffer where unfused it made two or
    // three; here the peak (block input, branch, sum: three activations) is the same either way, plus
    // one layer's folded weights and bias while its convolution runs (ECO-Lite's inference peak drops
    // by a fifth: docs/PERFORMANCE.md).
    infer.set_fuse(false);
    infer.forward(&[&x]).unwrap();
    let unfused = infer.last_forward_stats().unwrap();
    infer.set_fuse(true);
    println!(
        "inference peak fused {} B, unfused {} B",
        s.peak_activation_bytes, unfused.peak_activation_bytes
    );
    let folded = (8 * 8 * 27 + 2 * 8) * 4;
    assert!(
        s.peak_activation_bytes <= unfused.peak_activation_bytes + folded,
        "fused {} B, unfused {} B",
        s.peak_activation_bytes,
        unfused.peak_activation_bytes
    );
    let (train_est, infer_est) = infer.graph().activation_bytes();
    infer.train();
    let y = infer.forward(&[&x]).unwrap();
    let t = infer.last_forward_stats().unwrap();
    drop(y);
    println!(
        "inference peak {:.2} MB (plan {:.2} MB); training forward peak {:.2} MB, held for backward {:.2} MB (plan {:.2} MB)",
        mb(s.peak_activation_bytes),
        mb(infer_est as usize),
        mb(t.peak_activation_bytes),
        mb(t.held_bytes),
        mb(train_est as usize)
    );
    assert!(
        s.peak_activation_bytes * 3 < t.peak_activation_bytes,
        "inference must keep far less than training"
    );
    // The plan counts values only; ops add small temporaries (batch-norm statistics, ...). The input
    // was allocated before the forward, so it is in the plan but not in the measurement.
    println!(
        "inference: measured {} B, plan {infer_est} B",
        s.peak_activation_bytes
    );
    assert!(
        (s.peak_activation_bytes as f64) <= 1.1 * infer_est as f64,
        "inference peak above the liveness plan"
    );

    // Checkpointing: same gradients and running statistics, less memory.
    let (plain_peak, plain_grads, plain_stats) = train_step(false, &x);
    let (ckpt_peak, ckpt_grads, ckpt_stats) = train_step(true, &x);
    println!(
        "train step peak: plain {:.2} MB, checkpointed {:.2} MB",
        mb(plain_peak),
        mb(ckpt_peak)
    );
    assert!(
        ckpt_peak * 10 < plain_peak * 8,
        "checkpointing should save at least 20 % here"
    );
    for (a, b) in plain_grads.iter().zip(&ckpt_grads) {
        for (p, q) in a.iter().zip(b) {
            assert!(
                (p - q).abs() <= 1e-5 * (1.0 + p.abs()),
                "gradients differ: {p} vs {q}"
            );
        }
    }
    // running statistics updated once, not again by the recomputation
    assert_eq!(plain_stats, ckpt_stats);

    // Training fusion (docs/GRAPH.md "Fusion"): each block's bn1 → relu1 is one op, and its
    // bn2 → add → relu writes the sum over bn2's output (dead after the add, saved by nobody), so the
    // same values are kept for backward but no block makes a transient activation: the forward's peak
    // is what it holds at its end, one activation below the unfused forward's (whose last block has
    // bn2's output, the sum and the ReLU's output alive at once). The step's peak is in backward,
    // where the fused ops make the same buffers (ReLU's gradient feeds both branches of the add), so
    // it is no higher. Same gradients bit for bit (tests/fusion.rs says why).
    let (fused_peak, fused_grads, fused_stats, fused_fwd) = train_step_fused(false, true, &x);
    let (unfused_peak, unfused_grads, unfused_stats, unfused_fwd) =
        train_step_fused(false, false, &x);
    let activation = x.numel() * 4;
    println!(
        "training forward peak: fused {:.3} MB, unfused {:.3} MB (one activation {:.3} MB; {} ReLUs in place); step peak: fused {:.3} MB, unfused {:.3} MB",
        mb(fused_fwd.peak_activation_bytes),
        mb(unfused_fwd.peak_activation_bytes),
        mb(activation),
        fused_fwd.relus_in_place,
        mb(fused_peak),
        mb(unfused_peak),
    );
    assert_eq!(
        fused_fwd.relus_in_place, 4,
        "each block's add+relu in place"
    );
    assert_eq!(fused_fwd.held_bytes, unfused_fwd.held_bytes);
    // (Up to 1 KiB of per-channel buffers, batch-norm statistics, differ between the two peaks'
    // moments: 8 channels here.)
    assert!(
        fused_fwd.peak_activation_bytes + activation <= unfused_fwd.peak_activation_bytes + 1024,
        "fused forward peak {} B, unfused {} B",
        fused_fwd.peak_activation_bytes,
        unfused_fwd.peak_activation_bytes
    );
    assert!(
        fused_peak <= unfused_peak,
        "fused {fused_peak} B, unfused {unfused_peak} B"
    );
    assert_eq!(fused_grads, unfused_grads);
    assert_eq!(fused_stats, unfused_stats);

    // Concat without copies (docs/GRAPH.md "Fusion"): the branches write their outputs into the
    // concat's output, so the forward never holds them and the concat's output at once — the copy's
    // transient: its peak is the two branch outputs higher, less the next convolution's output where
    // the written forward peaks. For backward both hold the same: the concat's output (which conv_c
    // keeps), the branches' outputs not (their BN → ReLU keeps x and recomputes the ReLU mask) —
    // except the branch output retained by name, which keeps the concat copying here. The same values
    // either way: the same output and gradients bit for bit.
    let (written, written_values) = branches_step(&x, &[]);
    let (copied, copied_values) = branches_step(&x, &["relu_a"]);
    let concat_bytes = 2 * 16 * 4 * 16 * 16 * 4;
    let conv_c_bytes = concat_bytes / 4;
    println!(
        "concat written by its producers: forward peak {:.3} MB, copied {:.3} MB (concat output {:.3} MB); held for backward {:.3} / {:.3} MB",
        mb(written.peak_activation_bytes),
        mb(copied.peak_activation_bytes),
        mb(concat_bytes),
        mb(written.held_bytes),
        mb(copied.held_bytes),
    );
    assert_eq!((written.concats_written, copied.concats_written), (1, 0));
    assert!(
        // (up to 1 KiB of per-channel buffers, BN statistics, differ between the peaks' moments)
        written.peak_activation_bytes + concat_bytes - conv_c_bytes
            <= copied.peak_activation_bytes + 1024,
        "written forward peak {} B, copied {} B",
        written.peak_activation_bytes,
        copied.peak_activation_bytes
    );
    assert_eq!(written.held_bytes + concat_bytes / 2, copied.held_bytes);
    assert_eq!(written_values, copied_values);

    // The fused BN → ReLU recomputes its backward mask from x (docs/GRAPH.md "Fusion"), so where its
    // output feeds a max pool (which keeps its argmax, not its input) the output is not held: one
    // activation less than the unfused pair, whose ReLU keeps its output. Same values bit for bit.
    let (fused, fused_values) = pooled_step(&x, true);
    let (unfused, unfused_values) = pooled_step(&x, false);
    let relu_bytes = x.numel() * 4;
    println!(
        "conv-bn-relu-pool: held for backward fused {:.3} MB, unfused {:.3} MB (ReLU output {:.3} MB)",
        mb(fused.held_bytes),
        mb(unfused.held_bytes),
        mb(relu_bytes)
    );
    assert_eq!(fused.held_bytes + relu_bytes, unfused.held_bytes);
    assert_eq!(fused_values, unfused_values);
}

/// The CUDA backend's fused BN → ReLU also recomputes its backward mask from x (kernels/batchnorm.cu
/// `mask_x`): conv → BN → ReLU → max pool holds one ReLU output less fused than unfused on the
/// simulated device too, and the fused step computes the same values as the unfused one (within
/// the kernels' reassociation: the unfused ReLU backward is its own pass there, the fused one masks
/// inside the batch norm's reductions — in the same order, so here bit for bit as well).
#[test]
fn cuda_batch_norm_relu_keeps_x_not_y() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dev) = common::cuda_device() else {
        return;
    };
    let x = Tensor::randn(&[2, 8, 4, 16, 16], 1, Device::Cpu).unwrap();
    let (fused, fused_values) = pooled_step_on(dev, &x, true);
    let (unfused, unfused_values) = pooled_step_on(dev, &x, false);
    let relu_bytes = x.numel() * 4; // the conv keeps x's shape
    assert_eq!(fused.held_bytes + relu_bytes, unfused.held_bytes);
    assert_eq!(fused_values, unfused_values);
}

/// The concat without copies on the CUDA backend (its `split` hands out views of one block, the
/// fused BN → ReLU writes y into its rows and its backward reads dy from them: kernels/batchnorm.cu
/// `ldy`, `ld_dy`): on the simulated device the two branches write the concat's output, nothing is
/// held twice, and the step computes the output and every gradient bit for bit as with the concat
/// copying (a branch output retained by name), as on the CPU.
#[test]
fn cuda_concat_is_written_by_its_producers() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dev) = common::cuda_device() else {
        return;
    };
    let x = Tensor::randn(&[2, 8, 4, 16, 16], 1, Device::Cpu).unwrap();
    let (written, written_values) = branches_step_on(dev, &x, &[]);
    let (copied, copied_values) = branches_step_on(dev, &x, &["relu_a"]);
    let concat_bytes = 2 * 16 * 4 * 16 * 16 * 4;
    println!(
        "cuda: concat written by its producers: forward peak {:.3} MB, copied {:.3} MB; held for backward {:.3} / {:.3} MB",
        mb(written.peak_activation_bytes),
        mb(copied.peak_activation_bytes),
        mb(written.held_bytes),
        mb(copied.held_bytes),
    );
    assert_eq!((written.concats_written, copied.concats_written), (1, 0));
    assert_eq!(written.held_bytes + concat_bytes / 2, copied.held_bytes);
    assert!(
        written.peak_activation_bytes < copied.peak_activation_bytes,
        "written forward peak {} B, copied {} B",
        written.peak_activation_bytes,
        copied.peak_activation_bytes
    );
    assert_eq!(written_values, copied_values);
}
