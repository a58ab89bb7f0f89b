//! Every model of the zoo on the CUDA device against the CPU, at a small input: the same graph with the
//! same seeded weights (src/models/fill.rs) and input on both, compared in eval-mode logits, train-mode
//! logits (batch-norm batch statistics, dropout masks), the loss, the gradients of the first, a middle
//! and the last parameter, then one SGD step and, from the same start, one AdamW step (crate::optim);
//! then the eval logits at batch 1 with `--math tf32` and `--math bf16` (tensor cores) against FP32.
//! And 20 training steps of a small model in tf32 against the FP32 loss curve.
//! Without a GPU this runs the CUDA backend and kernels on the simulator (tests/common `cuda_device`),
//! so every CI run executes the kernels of whole networks, forward and backward.
//!
//! Inputs: batch 2, 4 frames, 32² (the smallest the 3D ResNets take: their last stage is 1×1), 10
//! classes; the resnet3d non-local presets are left out (another ~50 s; the kernels are those of
//! i3d-nl-r50). Cost: the simulator is far slower than 1 G multiply-adds/s per core on these networks
//! (~50–100 M/s: per-thread fiber and warp-collective overhead dominates, e.g. batch-norm statistics run
//! 256 simulated threads per channel whatever the input size), so a ResNet-50 takes ~40 s of simulation
//! (eval forward, train forward and backward, two optimiser steps over ~30 M parameters). Measured: the
//! whole file takes ~250 s in release mode on 2 shared cores
//! (`cargo test --release --test models_cuda`).

mod common;

use vidgrad::exec::Network;
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::optim::{self, AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig};
use vidgrad::{ops, Device, Tensor};

/// f32 unit roundoff, 2⁻²⁴.
const U: f32 = f32::EPSILON / 2.0;

/// One model at a small input.
struct Case {
    model: &'static str,
    opts: &'static [(&'static str, &'static str)],
    /// Native layout: [B, T, 3, H, W] for eco-lite, [B, 3, T, H, W] for the others.
    shape: [usize; 5],
}

const SEED: u64 = 11;
const CLASSES: usize = 10;

/// Max |got − want| / max |want|.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn options(case: &Case) -> ModelOptions {
    ModelOptions {
        classes: Some(CLASSES),
        dropout: None,
        extra: case
            .opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

struct Side {
    net: Network,
    x: Tensor,
}

/// Batch norms whose batch statistics cover fewer values per channel than this get [`FEW_EPS`] in the
/// train-mode part (see [`check_model`]).
const FEW: usize = 64;
const FEW_EPS: f32 = 1.0;

impl Side {
    /// The zoo network; with `tame`, every batch norm over fewer than [`FEW`] values per channel uses
    /// eps = [`FEW_EPS`].
    fn new(case: &Case, device: Device, tame: bool) -> Side {
        let mut graph = models::build(case.model, &options(case), &case.shape).unwrap();
        if tame {
            for i in 0..graph.nodes.len() {
                let s = &graph.values[graph.nodes[i].inputs[0]].shape;
                let per_channel = s[0] * s[2..].iter().product::<usize>();
                if let vidgrad::graph::Op::BatchNorm { eps, .. } = &mut graph.nodes[i].op {
                    if per_channel < FEW {
                        *eps = FEW_EPS;
                    }
                }
            }
        }
        let net = Network::new(graph, device, 0).unwrap();
        fill::fill_network(&net, SEED).unwrap();
        let x = fill::fill_input(SEED, &case.shape, device).unwrap();
        Side { net, x }
    }
    fn params(&self) -> Vec<(String, Tensor)> {
        self.net.parameters()
    }
    fn values(&self) -> Vec<Vec<f32>> {
        self.params()
            .iter()
            .map(|(_, t)| t.to_vec().unwrap())
            .collect()
    }
    fn grads(&self) -> Vec<Vec<f32>> {
        self.params()
            .iter()
            .map(|(n, t)| {
                t.grad()
                    .unwrap_or_else(|| panic!("no gradient reached {n}"))
                    .to_vec()
                    .unwrap()
            })
            .collect()
    }
    fn restore(&self, values: &[Vec<f32>]) {
        for ((_, t), v) in self.params().iter().zip(values) {
            let v = Tensor::from_slice(v, t.shape(), t.device()).unwrap();
            vidgrad::no_grad(|| t.assign(&v)).unwrap();
        }
    }
}

struct Failures(Vec<String>);
impl Failures {
    fn check(&mut self, model: &str, what: &str, err: f32, tol: f32) {
        println!("  {model:<12} {what:<52} rel err {err:.2e} (tol {tol:.1e})");
        if err.is_nan() || err > tol {
            self.0.push(format!("{what}: {err:.3e} > {tol:.1e}"));
        }
    }
}

/// The error model's inputs, read off the graph: `depth` = the most reduction layers (convolution,
/// linear, matmul, attention) on a path from the input to the logits; `k` = the longest forward
/// reduction (a weight's fan-in, an attention's channels or keys); `n` = the longest weight-gradient
/// reduction (a layer's output positions, B·T·H·W).
fn error_model(graph: &vidgrad::graph::Graph) -> (usize, usize, usize) {
    use vidgrad::graph::Op;
    let (mut depth_of, mut k, mut n) = (vec![0usize; graph.values.len()], 1usize, 1usize);
    for node in &graph.nodes {
        let shape = |i: usize| &graph.values[node.inputs[i]].shape;
        let out = &graph.values[node.output].shape;
        let red = match &node.op {
            Op::Conv(_) => {
                let w = &graph.params[node.params[0]].shape;
                n = n.max(out[0] * out[2..].iter().product::<usize>());
                Some(w[1..].iter().product())
            }
            Op::Linear => {
                n = n.max(out[..out.len() - 1].iter().product());
                Some(*shape(0).last().unwrap())
            }
            Op::MatMul => Some(*shape(0).last().unwrap()),
            Op::Attention { .. } => Some(shape(0)[1].max(shape(2)[2])),
            _ => None,
        };
        let d = node.inputs.iter().map(|&v| depth_of[v]).max().unwrap_or(0);
        depth_of[node.output] = d + red.is_some() as usize;
        k = k.max(red.unwrap_or(1));
    }
    (depth_of[graph.outputs[0]], k, n)
}

/// ‖got − want‖₂ / ‖want‖₂.
fn rel_err2(got: &[f32], want: &[f32]) -> f32 {
    let (mut d, mut w) = (0f64, 0f64);
    for (a, b) in got.iter().zip(want) {
        d += ((a - b) as f64).powi(2);
        w += (*b as f64).powi(2);
    }
    (d.sqrt() / w.sqrt().max(1e-300)) as f32
}

fn check_model(case: &Case) {
    let Some(device) = common::cuda_device() else {
        println!("skipped {}: no CUDA device", case.model);
        return;
    };
    let t0 = std::time::Instant::now();
    let name = format!(
        "{}{}",
        case.model,
        case.opts
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect::<String>()
    );
    let mut f = Failures(vec![]);

    // Error model: a length-K dot product summed in another order differs by ~√K·u relative (its
    // rounding errors add as a random walk); a network L reduction layers deep, normalised between
    // them, passes each layer's error on with gain ~1, so the logits differ by ≲ L·√K·u of their scale
    // (the layers' errors add linearly here, where they too would add as a random walk, ~√L: the margin).
    // Backward is twice as deep, and its weight-gradient reductions run over the N output positions.
    let (cpu, gpu) = (
        Side::new(case, Device::Cpu, false),
        Side::new(case, device, false),
    );
    let (depth, k, n_pos) = error_model(cpu.net.graph());
    let fwd_tol = depth as f32 * (k as f32).sqrt() * U;
    let bwd_tol = 2.0 * depth as f32 * (k.max(n_pos) as f32).sqrt() * U;
    println!("  {name:<12} error model: depth {depth}, K {k}, N {n_pos}: tolerances {fwd_tol:.1e} (forward), {bwd_tol:.1e} (gradients)");

    let b = case.shape[0];
    let (mut cpu, mut gpu) = (cpu, gpu);
    cpu.net.eval();
    gpu.net.eval();
    let want = vidgrad::no_grad(|| cpu.net.forward(&[&cpu.x])).unwrap();
    let got = vidgrad::no_grad(|| gpu.net.forward(&[&gpu.x])).unwrap();
    assert_eq!(got.shape(), &[b, CLASSES]);
    f.check(
        &name,
        "logits (eval)",
        rel_err(&got.to_vec().unwrap(), &want.to_vec().unwrap()),
        fwd_tol,
    );

    // Train mode normalises with batch statistics; at these inputs the last stages hold 2–32 values per
    // channel (B·T·H·W), and a channel whose values nearly coincide turns rounding errors into O(1)
    // output errors: (x − mean)/√(var + eps) amplifies an input error by up to max|x|/√eps ≈ 300 per
    // layer, on the CPU as on the GPU. Batch norms over fewer than FEW values per channel get eps = 1
    // here (amplification ≤ max|x| ≈ 10); the ops, kernels and shapes stay those of the zoo network.
    drop((cpu, gpu));
    let (mut cpu, mut gpu) = (
        Side::new(case, Device::Cpu, true),
        Side::new(case, device, true),
    );
    cpu.net.train();
    gpu.net.train();
    let relus: Vec<String> = cpu
        .net
        .graph()
        .nodes
        .iter()
        .filter(|n| matches!(n.op, vidgrad::graph::Op::Relu))
        .map(|n| n.name.clone())
        .collect();
    // The producers of max-pool inputs (a max pool's input gradient shows where each window routed
    // its gradient; see the kink term below).
    // (producer's name, the max pool's node index)
    let pool_inputs: Vec<(String, usize)> = {
        let g = cpu.net.graph();
        g.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.op, vidgrad::graph::Op::MaxPool(_)))
            .filter_map(|(i, n)| {
                let p = g.nodes.iter().find(|p| p.output == n.inputs[0])?;
                Some((p.name.clone(), i))
            })
            .filter(|(name, _)| !relus.contains(name))
            .collect()
    };
    let relu_names: Vec<&str> = relus
        .iter()
        .chain(pool_inputs.iter().map(|(n, _)| n))
        .map(String::as_str)
        .collect();
    let labels: Vec<usize> = (0..b).map(|i| (3 * i + 1) % CLASSES).collect();
    let mut runs = vec![];
    for side in [&cpu, &gpu] {
        let (logits, kept) = side.net.forward_with(&[&side.x], &relu_names).unwrap();
        let loss = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
        loss.backward().unwrap();
        runs.push((logits.to_vec().unwrap(), loss.to_vec().unwrap(), kept));
    }
    f.check(
        &name,
        "logits (train)",
        rel_err(&runs[1].0, &runs[0].0),
        fwd_tol,
    );
    f.check(
        &name,
        "loss (train)",
        rel_err(&runs[1].1, &runs[0].1),
        fwd_tol,
    );

    // ReLU's derivative jumps at 0: where a pre-activation lies within rounding distance of 0 the two
    // devices may gate it differently (a "flip"), and the gradient behind it then differs by that
    // element's gradient g_i. Every flip must be such a tie (both values within the forward tolerance
    // of 0, relative to the layer's scale). To first order a flip at layer l moves every gradient
    // read before l by |g_i|/‖g_l‖₂ of its 2-norm (the backward map carries all of g_l into them), so
    // the gradients are compared in the 2-norm, allowing the rounding model plus twice the sum over
    // the flips after the parameter (measured: c2d-nl-r50's stem, 4 flips: 1.3e-2 for a sum of 1.5e-2).
    // A max pool jumps the same way where two inputs of a window tie within rounding: the devices
    // route the window's gradient to different elements. Its input gradient then is zero on one
    // device and not on the other at both elements, each such element i adding |g_i|/‖g_l‖₂ (both
    // ends of the move, as the factor 2 above; c2d-nl-r50's non-local blocks max-pool φ and g).
    let graph = cpu.net.graph();
    let node_of = |name: &str| graph.nodes.iter().position(|n| n.name == name).unwrap();
    // (node index, |g_i|/‖g_l‖₂) of every flip
    let (mut flips, mut worst_tie, mut pool_moves) = (vec![], 0f32, 0);
    for ((n_relu, tc), (_, tg)) in runs[0].2.iter().zip(&runs[1].2) {
        let (vc, vg) = (tc.to_vec().unwrap(), tg.to_vec().unwrap());
        let Some(g) = tc.grad() else { continue };
        let g = g.to_vec().unwrap();
        if let Some(&(_, pool)) = pool_inputs.iter().find(|(n, _)| n == n_relu) {
            let Some(gg) = tg.grad() else { continue };
            let gg = gg.to_vec().unwrap();
            let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
            for i in 0..g.len() {
                if (g[i] == 0.0) != (gg[i] == 0.0) {
                    let moved = g[i].abs().max(gg[i].abs());
                    flips.push((pool, moved / norm.max(f32::MIN_POSITIVE)));
                    pool_moves += 1;
                }
            }
            continue;
        }
        let scale = vc.iter().fold(0f32, |m, v| m.max(v.abs()));
        let norm = g.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt() as f32;
        for i in 0..vc.len() {
            if (vc[i] > 0.0) != (vg[i] > 0.0) {
                let tie = vc[i].max(vg[i]) / scale;
                worst_tie = worst_tie.max(tie);
                if tie > fwd_tol {
                    f.0.push(format!(
                        "{n_relu}[{i}]: ReLU input {} on the CPU, {} on the CUDA device: not a tie",
                        vc[i], vg[i]
                    ));
                }
                flips.push((node_of(n_relu), g[i].abs() / norm.max(f32::MIN_POSITIVE)));
            }
        }
    }
    // The kink term of a parameter: the flips at ReLUs after the (first) node that reads it.
    let first_reader = |param: &str| {
        graph
            .nodes
            .iter()
            .position(|n| n.params.iter().any(|&p| graph.params[p].name == param))
            .unwrap()
    };
    let kink = |param: &str| {
        let p = first_reader(param);
        flips
            .iter()
            .filter(|(r, _)| *r > p)
            .map(|(_, k)| k)
            .sum::<f32>()
    };
    println!(
        "  {name:<12} ReLU flips: {} (all within {worst_tie:.1e} of 0 relative), max-pool gradient moves: {pool_moves}, kink term {:.1e}",
        flips.len() - pool_moves,
        flips.iter().fold(0f32, |a, (_, k)| a + k)
    );
    drop(runs);

    let names: Vec<String> = cpu.params().into_iter().map(|(n, _)| n).collect();
    let (g_cpu, g_gpu) = (cpu.grads(), gpu.grads());
    let n = names.len();
    for i in [0, n / 2, n - 1] {
        f.check(
            &name,
            &format!("grad {} (2-norm)", names[i]),
            rel_err2(&g_gpu[i], &g_cpu[i]),
            bwd_tol + 2.0 * kink(&names[i]),
        );
    }
    let worst_grad = (0..n)
        .map(|i| (rel_err2(&g_gpu[i], &g_cpu[i]), i))
        .fold((0f32, 0), |a, b| if b.0 > a.0 { b } else { a });
    println!(
        "  {name:<12} (not asserted: worst gradient of all {n}, {}: 2-norm rel err {:.2e}, max|g| {:.1e})",
        names[worst_grad.1],
        worst_grad.0,
        g_cpu[worst_grad.1].iter().fold(0f32, |m, v| m.max(v.abs()))
    );
    // The optimisers run the same elementwise sequence on both devices (bit-identical for equal
    // inputs, tests/cuda_ops.rs), so the updated parameters may differ only by what the gradients'
    // difference makes of them, plus the rounding of the update on each side.
    let p0 = cpu.values();
    assert_eq!(p0, gpu.values(), "{name}: the seeded weights differ");
    let (lr, momentum, wd) = (0.01f32, 0.9f32, 1e-4f32);
    let mut worst = (0f32, String::new());
    for side in [&cpu, &gpu] {
        let mut opt = Sgd::new(
            optim::param_groups_no_decay(side.params(), wd),
            SgdConfig {
                lr,
                momentum,
                ..Default::default()
            },
        )
        .unwrap();
        opt.step().unwrap();
    }
    let (p_cpu, p_gpu) = (cpu.values(), gpu.values());
    let mut bad = vec![];
    for i in 0..n {
        let decay = if optim::is_no_decay(&names[i], &cpu.params()[i].1) {
            0.0
        } else {
            wd
        };
        for j in 0..p0[i].len() {
            // First step with momentum: d = g + wd·p (the buffer is d), p' = p − lr·d. A gradient
            // difference δg moves p' by lr·δg; each side rounds d and p' (≤ u·|d|, u·|p'| each, twice).
            let d = (g_cpu[i][j].abs().max(g_gpu[i][j].abs()) + decay * p0[i][j].abs()) * lr;
            let tol = lr * (g_gpu[i][j] - g_cpu[i][j]).abs() * (1.0 + 2.0 * U)
                + 4.0 * U * (p_cpu[i][j].abs().max(p_gpu[i][j].abs()) + d);
            let err = (p_gpu[i][j] - p_cpu[i][j]).abs();
            if err > tol || err.is_nan() {
                bad.push(format!(
                    "{}[{j}]: {} vs {} (tol {tol:.2e})",
                    names[i], p_gpu[i][j], p_cpu[i][j]
                ));
            }
            let r = err / tol.max(f32::MIN_POSITIVE);
            if r > worst.0 {
                worst = (r, names[i].clone());
            }
        }
    }
    println!(
        "  {name:<12} SGD step: {} parameters, worst error / tolerance {:.2} ({})",
        p0.iter().map(Vec::len).sum::<usize>(),
        worst.0,
        worst.1
    );
    if !bad.is_empty() {
        f.0.push(format!(
            "SGD step: {} elements out of tolerance, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        ));
    }

    cpu.restore(&p0);
    gpu.restore(&p0);
    let (lr, wd, eps) = (1e-3f32, 0.05f32, 1e-8f32);
    for side in [&cpu, &gpu] {
        let mut opt = AdamW::new(
            optim::param_groups_no_decay(side.params(), wd),
            AdamWConfig {
                lr,
                eps,
                ..Default::default()
            },
        )
        .unwrap();
        opt.step().unwrap();
    }
    let (p_cpu, p_gpu) = (cpu.values(), gpu.values());
    let mut worst = (0f32, String::new());
    let mut bad = vec![];
    for i in 0..n {
        for j in 0..p0[i].len() {
            // First step: p' = p·(1 − lr·wd) − lr·g/(|g| + eps) up to rounding (m̂ = g, √v̂ = |g|);
            // g ↦ g/(|g| + eps) moves by at most 2|δg|/(max(|g|, |g'|) + eps), and each side rounds
            // the update in ~8 operations (≤ 8u·lr) and p' (≤ u·|p'|, twice).
            let (a, c) = (g_cpu[i][j], g_gpu[i][j]);
            let tol = lr * 2.0 * (c - a).abs() / (a.abs().max(c.abs()) + eps)
                + 2.0 * (8.0 * U * lr + 2.0 * U * p_cpu[i][j].abs().max(p_gpu[i][j].abs()));
            let err = (p_gpu[i][j] - p_cpu[i][j]).abs();
            if err > tol || err.is_nan() {
                bad.push(format!(
                    "{}[{j}]: {} vs {} (grads {c} vs {a}, tol {tol:.2e})",
                    names[i], p_gpu[i][j], p_cpu[i][j]
                ));
            }
            let r = err / tol;
            if r > worst.0 {
                worst = (r, names[i].clone());
            }
        }
    }
    println!(
        "  {name:<12} AdamW step: worst error / tolerance {:.2} ({})",
        worst.0, worst.1
    );
    if !bad.is_empty() {
        f.0.push(format!(
            "AdamW step: {} elements out of tolerance, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        ));
    }
    let t1 = std::time::Instant::now();
    check_logits_in_tensor_core_modes(case, device, &name, &mut f);
    println!(
        "{name} on {device}: {:.1} s (tf32/bf16 logits {:.1} s)",
        t0.elapsed().as_secs_f64(),
        t1.elapsed().as_secs_f64()
    );
    assert!(
        f.0.is_empty(),
        "{name} on {device}:\n  {}",
        f.0.join("\n  ")
    );
}

#[test]
fn eco_lite_matches_cpu() {
    check_model(&Case {
        model: "eco-lite",
        opts: &[],
        shape: [2, 4, 3, 32, 32],
    });
}

#[test]
fn c2d_nl_r50_matches_cpu() {
    check_model(&Case {
        model: "c2d-nl-r50",
        opts: &[],
        shape: [2, 3, 4, 32, 32],
    });
}

#[test]
fn i3d_r50_matches_cpu() {
    check_model(&Case {
        model: "i3d-r50",
        opts: &[],
        shape: [2, 3, 4, 32, 32],
    });
}

#[test]
fn i3d_nl_r50_matches_cpu() {
    check_model(&Case {
        model: "i3d-nl-r50",
        opts: &[],
        shape: [2, 3, 4, 32, 32],
    });
}

#[test]
fn r2plus1d_18_matches_cpu() {
    check_model(&Case {
        model: "r2plus1d-18",
        opts: &[],
        shape: [2, 3, 4, 32, 32],
    });
}

#[test]
fn ct_sep_matches_cpu() {
    check_model(&Case {
        model: "ct-sep",
        opts: &[],
        shape: [2, 3, 4, 32, 32],
    });
}

#[test]
fn resnet3d_matches_cpu() {
    check_model(&Case {
        model: "resnet3d",
        opts: &[],
        shape: [2, 3, 4, 32, 32],
    });
}

/// `check_model`'s model at batch 1 in eval mode with `--math tf32` and
/// `--math bf16` on the CUDA device (tensor-core convolutions and matmuls) against plain FP32 (the
/// CPU's). Error model: rounding both operands of a product changes it by at most 2u_mode + u_mode²
/// relative, so a layer's output by ≲ 2u_mode of its scale (less when the terms' errors cancel), passed
/// on with gain ~1 through L reduction layers and added linearly as in `check_model` (u_mode = 2⁻¹¹
/// tf32, 2⁻⁸ bf16): tolerance L·2u_mode, plus `check_model`'s L·√K·u for the accumulation order on the
/// device. The CPU in the same mode must be within L·2u_mode of FP32 too, and the device's logits must
/// differ from FP32 by more than the accumulation-order tolerance (the rounding happened). Not checked:
/// device vs CPU in the same mode at this depth. Both round the same operands, but an activation that
/// differs by an FP32 rounding error can round to the other TF32/BF16 neighbour (a tie flip: a 2u_mode
/// change of that element), so the two drift apart at up to the mode's own error scale (measured:
/// eco-lite 5.7e-4 in tf32, 3.9e-3 in bf16); the op-level suites (tests/cuda_ops.rs) check that
/// comparison tightly. Depthwise convolutions stay FP32 in every mode (`ConvGeom::math_mode`).
fn check_logits_in_tensor_core_modes(case: &Case, device: Device, name: &str, f: &mut Failures) {
    use vidgrad::math_mode::{with_math_mode, MathMode};
    let mut shape = case.shape;
    shape[0] = 1;
    let case = Case {
        model: case.model,
        opts: case.opts,
        shape,
    };
    let (mut cpu, mut gpu) = (
        Side::new(&case, Device::Cpu, false),
        Side::new(&case, device, false),
    );
    cpu.net.eval();
    gpu.net.eval();
    let (depth, k, _) = error_model(cpu.net.graph());
    let fwd_tol = depth as f32 * (k as f32).sqrt() * U;
    let logits = |side: &Side| {
        vidgrad::no_grad(|| side.net.forward(&[&side.x]))
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let fp32 = with_math_mode(MathMode::Fp32, || logits(&cpu));
    for mode in [MathMode::Tf32, MathMode::Bf16] {
        let (cpu_mode, got) = with_math_mode(mode, || (logits(&cpu), logits(&gpu)));
        let mode_tol = depth as f32 * 2.0 * mode.unit_roundoff() as f32;
        f.check(
            name,
            &format!("logits (eval, batch 1, {mode}) on cpu vs fp32"),
            rel_err(&cpu_mode, &fp32),
            mode_tol,
        );
        let err = rel_err(&got, &fp32);
        f.check(
            name,
            &format!("logits (eval, batch 1, {mode}) vs cpu fp32"),
            err,
            fwd_tol + mode_tol,
        );
        if err <= fwd_tol {
            f.0.push(format!(
                "{mode}: logits within FP32's accumulation tolerance of fp32 ({err:.2e}): not rounded?"
            ));
        }
        println!(
            "  {name:<12} (logits {mode} on {device} vs cpu {mode}: rel err {:.2e}, not checked)",
            rel_err(&got, &cpu_mode)
        );
    }
}

/// 20 plain-SGD training steps of a small model (ct-sep, one block per stage, 2×3×4×16²; batch norms over few
/// values tamed as in `check_model`) on one fixed batch: `--math tf32` on the CUDA device against FP32
/// on the CPU. Error model: at equal parameters the logits differ by ≲ L·2u (u = 2⁻¹¹, L reduction
/// layers deep, as in `check_logits_in_tensor_core_modes`) of their scale, so the loss (whose
/// gradient in the logits has L1 norm ≤ 2) by ≤ 2·L·2u·max|z|; each step's gradient is off by ≲ 2L·2u
/// relative (backward is twice as deep), so the parameters drift by lr·Σ_j|δg_j|, which moves the loss
/// by ≲ lr·Σ_j ‖g_j‖·‖δg_j‖ ≤ 4L·u·Σ_j lr‖g_j‖² ≈ 4L·u·(ℓ_0 − ℓ_i) (plain SGD: each step lowers the
/// loss by ≈ lr‖g_j‖²). Bound per step: 4L·u·(max|z_i| + |ℓ_0 − ℓ_i|), FP32's z and ℓ. And the tf32
/// curve must go down as FP32's does (it learns). Measured: |diff| ≤ 5.3e-2 (step 2, tol 3.0e-1), then
/// ≤ 2e-3; the test took 486 s beside the zoo tests under a load average of about 8 on 2 cores.
#[test]
fn training_in_tf32_tracks_the_fp32_loss_curve() {
    use vidgrad::math_mode::{with_math_mode, MathMode};
    let Some(device) = common::cuda_device() else {
        println!("skipped: no CUDA device");
        return;
    };
    let case = Case {
        model: "ct-sep",
        opts: &[("layers", "1,1,1,1")],
        shape: [2, 3, 4, 16, 16],
    };
    let labels = [3usize, 8];
    let (steps, lr) = (20, 0.05f32);
    let curve = |device: Device, mode: MathMode| {
        let side = Side::new(&case, device, true);
        let mut side = side;
        side.net.train();
        let mut opt = Sgd::new(
            optim::param_groups_no_decay(side.params(), 0.0),
            SgdConfig {
                lr,
                ..Default::default()
            },
        )
        .unwrap();
        let mut out = vec![];
        with_math_mode(mode, || {
            for _ in 0..steps {
                opt.zero_grad();
                let logits = side.net.forward(&[&side.x]).unwrap();
                let loss = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
                loss.backward().unwrap();
                opt.step().unwrap();
                let z = logits.to_vec().unwrap();
                out.push((
                    loss.to_vec().unwrap()[0],
                    z.iter().fold(0f32, |m, v| m.max(v.abs())),
                ));
            }
        });
        (out, error_model(side.net.graph()).0)
    };
    let (fp32, depth) = curve(Device::Cpu, MathMode::Fp32);
    let (tf32, _) = curve(device, MathMode::Tf32);
    let u = MathMode::Tf32.unit_roundoff() as f32;
    let mut bad = vec![];
    for (i, (&(l, z), &(lt, _))) in fp32.iter().zip(&tf32).enumerate() {
        let tol = 4.0 * depth as f32 * u * (z + (fp32[0].0 - l).abs());
        println!(
            "  step {i:>2}: loss fp32 {l:.5} tf32 {lt:.5} |diff| {:.2e} (tol {tol:.2e})",
            (l - lt).abs()
        );
        if (l - lt).abs() > tol || lt.is_nan() {
            bad.push(i);
        }
    }
    assert!(bad.is_empty(), "steps off the fp32 curve: {bad:?}");
    let (first, last) = (fp32[0].0, fp32[steps - 1].0);
    assert!(last < 0.8 * first, "fp32 does not learn: {first} → {last}");
    assert!(tf32[steps - 1].0 < 0.8 * tf32[0].0, "tf32 does not learn");
}
