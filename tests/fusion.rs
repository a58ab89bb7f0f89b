//! The graph's fusion pass: which chains it fuses, that the executor's fused inference agrees with the
//! unfused one on the CPU and on the CUDA device (the simulator without a GPU), and that summary and
//! DOT mark the fused nodes.

mod common;

use vidgrad::exec::Network;
use vidgrad::graph::{BatchNorm, Conv, FusedOp, Graph, GraphBuilder, Linear};
use vidgrad::{models, Device, Tensor};

/// conv→bn→relu (2-d part of a block), conv→relu, conv→bn whose output is also read elsewhere (not
/// fused past the batch norm), a depthwise conv→bn→relu, and a bn whose input conv output is shared.
fn net() -> Graph {
    net_with(true)
}

/// `net()`, or without its depthwise layer (`depthwise` false: the CUDA backend has no tensor-core
/// depthwise kernel, so the tf32/bf16 test leaves it out).
fn net_with(depthwise: bool) -> Graph {
    let mut g = GraphBuilder::new("FuseNet");
    let x = g.input("input", &[2, 6, 5, 13, 11]).unwrap();
    let a = g
        .conv("c1", x, Conv::new(12, &[3, 3, 3]).padding(&[1, 1, 1]))
        .unwrap();
    let a = g.batch_norm("bn1", a, BatchNorm::new()).unwrap();
    let a = g.relu("r1", a).unwrap();
    let b = g
        .conv(
            "c2",
            a,
            Conv::new(12, &[1, 3, 3])
                .stride(&[1, 2, 2])
                .padding(&[0, 1, 1])
                .no_bias(),
        )
        .unwrap();
    let b = g.relu("r2", b).unwrap();
    let c = g
        .conv("c3", b, Conv::new(12, &[1, 1, 1]).no_bias())
        .unwrap();
    let c = g.batch_norm("bn3", c, BatchNorm::new()).unwrap();
    let d = g.relu("r3", c).unwrap();
    let d = g.add(d, c).unwrap(); // c has two readers: bn3 → r3 is not fused
    let e = if depthwise {
        g.conv(
            "dw",
            d,
            Conv::new(12, &[3, 3, 3]).padding(&[1, 1, 1]).groups(12),
        )
        .unwrap()
    } else {
        d
    };
    let e = g.batch_norm("bn4", e, BatchNorm::new()).unwrap();
    let e = g.relu("r4", e).unwrap();
    let e = g.adaptive_avg_pool("pool", e, &[1, 1, 1]).unwrap();
    let e = g.flatten(e, 1, -1).unwrap();
    let y = g.linear("fc", e, Linear::new(4)).unwrap();
    g.finish(&[y]).unwrap()
}

fn node(g: &Graph, name: &str) -> usize {
    g.node_by_name(name).unwrap()
}

#[test]
fn plan_fuses_conv_bn_relu_chains_in_inference_only() {
    let g = net();
    let plan = g.fusion_plan(false);
    let want = vec![
        FusedOp::ConvBnRelu {
            conv: node(&g, "c1"),
            bn: Some(node(&g, "bn1")),
            relu: Some(node(&g, "r1")),
        },
        FusedOp::ConvBnRelu {
            conv: node(&g, "c2"),
            bn: None,
            relu: Some(node(&g, "r2")),
        },
        FusedOp::ConvBnRelu {
            conv: node(&g, "c3"),
            bn: Some(node(&g, "bn3")),
            relu: None,
        },
        FusedOp::ConvBnRelu {
            conv: node(&g, "dw"),
            bn: Some(node(&g, "bn4")),
            relu: Some(node(&g, "r4")),
        },
    ];
    assert_eq!(plan.chains, want);
    assert!(plan.head(node(&g, "c1")).is_some() && plan.absorbed(node(&g, "r1")));
    assert!(plan.chain_of[node(&g, "r3")].is_none());
    // Training: BN → ReLU where the batch norm's output has one reader (not bn3's), no conv chains.
    assert_eq!(
        g.fusion_plan(true).chains,
        vec![
            FusedOp::BnRelu {
                bn: node(&g, "bn1"),
                relu: node(&g, "r1"),
            },
            FusedOp::BnRelu {
                bn: node(&g, "bn4"),
                relu: node(&g, "r4"),
            },
        ]
    );

    let summary = g.summary(3);
    assert!(
        summary.contains("[fused 1]") && summary.contains("4 chains"),
        "{summary}"
    );
    assert!(
        summary.contains("[fused 1] [fused train 1]")
            && summary.contains(
                "Fused in training (rows marked [fused train k], k = chain): 2 chains: 2 × bn+relu"
            ),
        "{summary}"
    );
    let dot = g.to_dot();
    assert!(dot.contains("fused 1: conv+bn(folded)+relu"), "{dot}");
    assert!(dot.contains("fused 2: conv+relu"), "{dot}");
    assert!(dot.contains("fused train 2: bn+relu"), "{dot}");
}

/// Running statistics away from (0, 1), so the fold does something: a few training forwards.
fn warmed_network(device: Device, x: &Tensor) -> Network {
    warmed(net(), device, x)
}
fn warmed(graph: Graph, device: Device, x: &Tensor) -> Network {
    let net = Network::new(graph, device, 11).unwrap();
    for _ in 0..3 {
        net.forward(&[x]).unwrap();
    }
    net
}

/// |fused − unfused| ≤ tol·(1 + |unfused|) elementwise. The fold rounds W·s and (b − μ)·s + β once
/// each (≤ 1 ulp) and the convolution then sums K = Cin·kvol ≤ 162 products in another order than
/// conv-then-normalise: relative error of order K·u ≈ 1e-5; 1e-4 leaves a margin for the three
/// stacked layers.
fn assert_close(what: &str, fused: &[f32], plain: &[f32], tol: f32) -> f32 {
    assert_eq!(fused.len(), plain.len());
    let mut worst = 0.0f32;
    for (i, (a, b)) in fused.iter().zip(plain).enumerate() {
        let e = (a - b).abs() / (1.0 + b.abs());
        assert!(e <= tol, "{what}: element {i}: fused {a}, unfused {b}");
        worst = worst.max(e);
    }
    worst
}

fn input(device: Device) -> Tensor {
    Tensor::randn(&[2, 6, 5, 13, 11], 5, device).unwrap()
}

#[test]
fn fused_inference_matches_unfused_on_cpu() {
    let x = input(Device::Cpu);
    let mut net = warmed_network(Device::Cpu, &x);
    net.eval();
    assert!(net.fuses());
    assert_eq!(net.fusion_plan().chains.len(), 4);
    let fused = net.forward(&[&x]).unwrap().to_vec().unwrap();
    // A chain whose intermediate is asked for by name runs unfused, and the answer is the same.
    let (y, kept) = net.forward_with(&[&x], &["bn1"]).unwrap();
    assert_eq!(kept.len(), 1);
    assert_close("retained", &y.to_vec().unwrap(), &fused, 1e-4);
    net.set_fuse(false);
    assert!(net.fusion_plan().chains.is_empty());
    let plain = net.forward(&[&x]).unwrap().to_vec().unwrap();
    let worst = assert_close("cpu", &fused, &plain, 1e-4);
    println!("fused vs unfused (cpu): worst relative difference {worst:.2e}");
    // (The memory a fused chain saves is measured in tests/exec_memory.rs, whose binary has the
    // process-wide byte counter to itself.)
}

#[test]
fn fused_inference_on_cuda_matches_cpu() {
    let Some(dev) = common::cuda_device() else {
        return;
    };
    let x = input(Device::Cpu);
    let mut cpu = warmed_network(Device::Cpu, &x);
    cpu.eval();
    let want = cpu.forward(&[&x]).unwrap().to_vec().unwrap();
    let mut gpu = Network::new(net(), dev, 11).unwrap();
    gpu.load_state_dict(&cpu.state_dict(), true).unwrap();
    gpu.eval();
    let xg = x.to_device(dev).unwrap();
    let got = gpu.forward(&[&xg]).unwrap().to_vec().unwrap();
    let worst = assert_close(&format!("{dev}"), &got, &want, 1e-4);
    println!("fused inference, {dev} vs cpu: worst relative difference {worst:.2e}");
}

#[test]
fn eco_lite_fuses_every_conv_bn_relu_and_agrees_unfused() {
    let g = models::build("eco-lite", &Default::default(), &[1, 16, 3, 64, 64]).unwrap();
    let plan = g.fusion_plan(false);
    use vidgrad::graph::Op;
    let convs: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| matches!(g.nodes[i].op, Op::Conv(_)))
        .collect();
    // Every convolution whose output only a batch norm or a ReLU reads heads a chain (the others feed
    // a residual add or several branches).
    for &i in &convs {
        let readers: Vec<&vidgrad::graph::Node> = g
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&g.nodes[i].output))
            .collect();
        let fusable =
            matches!(readers.as_slice(), [r] if matches!(r.op, Op::BatchNorm { .. } | Op::Relu));
        assert_eq!(plan.head(i).is_some(), fusable, "{}", g.nodes[i].name);
    }
    println!(
        "eco-lite: {} of {} convolutions fused",
        convs.iter().filter(|&&i| plan.head(i).is_some()).count(),
        convs.len()
    );
    let x = Tensor::randn(&[1, 16, 3, 64, 64], 9, Device::Cpu).unwrap();
    let mut net = Network::new(g, Device::Cpu, 4).unwrap();
    net.forward(&[&x]).unwrap(); // running statistics away from their initial values
    net.eval();
    let fused = net.forward(&[&x]).unwrap().to_vec().unwrap();
    net.set_fuse(false);
    let plain = net.forward(&[&x]).unwrap().to_vec().unwrap();
    let worst = assert_close("eco-lite", &fused, &plain, 1e-3);
    println!("eco-lite fused vs unfused logits: worst relative difference {worst:.2e}");
}

/// ECO-Lite's inception blocks in training: each concat is written by its four BN → ReLU branches (no
/// copy), and the step equals the one where the concats copy (a branch output retained by name)
/// bit for bit: the branches write the same values, and their backward reads the same values in
/// place. In inference the branches end in conv → BN → ReLU chains, which make their own buffers.
/// On the CPU and on the CUDA device of the suite (the simulator in CI).
#[test]
fn eco_lite_concats_are_written_by_their_branches_in_training() {
    let shape = [2, 4, 3, 32, 32];
    let g = models::build("eco-lite", &Default::default(), &shape).unwrap();
    let written = g.fusion_plan(true).written_concats;
    let names: Vec<&str> = written
        .iter()
        .map(|w| g.nodes[w.concat].name.as_str())
        .collect();
    assert_eq!(written.len(), 2, "{names:?}");
    assert!(
        written.iter().all(|w| w.producers.len() == 4),
        "{written:?}"
    );
    assert!(g.fusion_plan(false).written_concats.is_empty());
    let summary = g.summary(3);
    assert!(
        summary.contains(
            "; 2 concats written by their producers (no copy): \
             eco_2d.inception_a.concat_0, eco_2d.inception_b.concat_0"
        ),
        "{summary}"
    );
    assert!(g.to_dot().contains("written by its producers (train)"));
    // The step's output, input gradient, parameter gradients and buffers, by name.
    let step = |dev: Device, retain: &[&str]| {
        let net = Network::new(g.clone(), dev, 8).unwrap();
        let x = Tensor::randn(&shape, 2, Device::Cpu).unwrap();
        let x = x.to_device(dev).unwrap().with_grad();
        let (y, kept) = net.forward_with(&[&x], retain).unwrap();
        drop(kept);
        let stats = net.last_forward_stats().unwrap();
        assert_eq!(stats.concats_written, if retain.is_empty() { 2 } else { 0 });
        let r = Tensor::randn(y.shape(), 4, Device::Cpu).unwrap();
        let r = r.to_device(dev).unwrap();
        let loss = vidgrad::ops::sum(&vidgrad::ops::mul(&y, &r).unwrap()).unwrap();
        loss.backward().unwrap();
        let mut out = vec![
            ("output".to_string(), y.to_vec().unwrap()),
            (
                "input gradient".to_string(),
                x.grad().unwrap().to_vec().unwrap(),
            ),
        ];
        for (name, p) in net.parameters() {
            out.push((
                format!("{name} gradient"),
                p.grad().unwrap().to_vec().unwrap(),
            ));
        }
        for (name, b) in net.buffers() {
            out.push((name.to_string(), b.to_vec().unwrap()));
        }
        (out, stats)
    };
    // the first input of each concat, by name
    let first_inputs: Vec<&str> = written
        .iter()
        .map(|w| {
            let v = g.nodes[w.concat].inputs[0];
            let made_by = g.values[v].producer.unwrap();
            g.nodes[made_by].name.as_str()
        })
        .collect();
    println!("eco-lite: concats {names:?} written; copied when {first_inputs:?} are retained");
    for dev in std::iter::once(Device::Cpu).chain(common::cuda_device()) {
        let (in_place, written_stats) = step(dev, &[]);
        let (copied, copied_stats) = step(dev, &first_inputs);
        println!(
            "eco-lite {shape:?} on {dev}: forward peak {:.2} MB written, {:.2} MB copied; held for backward {:.2} / {:.2} MB",
            written_stats.peak_activation_bytes as f64 / 1e6,
            copied_stats.peak_activation_bytes as f64 / 1e6,
            written_stats.held_bytes as f64 / 1e6,
            copied_stats.held_bytes as f64 / 1e6,
        );
        assert_eq!(in_place.len(), copied.len());
        // On CUDA the stem's max pools (3×3, stride 2: overlapping windows) add their backward
        // with atomicAdd, whose order varies from run to run in the last bits (docs/CUDA.md):
        // the gradients below them (the stem's parameters, the input's) are not compared there.
        // Everything the concats touch — from the first Inception block on — is.
        let stem = if dev == Device::Cpu {
            0
        } else {
            in_place
                .iter()
                .position(|(name, _)| name.contains("inception_a"))
                .expect("the first Inception block's parameters")
        };
        for (k, ((name, a), (_, b))) in in_place.iter().zip(&copied).enumerate() {
            if k < stem && name != "output" {
                continue;
            }
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "{dev}: {name} differs");
        }
    }
}

/// The fused conv→BN→ReLU in the tensor-core math modes: the CUDA tf32/bf16 kernels apply the ReLU
/// epilogue too, against the CPU backend with the same operand rounding. Both fold BN into the weights
/// before rounding them; a folded weight that differs by an ulp between the backends can round to the
/// neighbouring TF32/BF16 value, so each product may differ by 2u of itself (u = 2^-11 for TF32, 2^-8
/// for BF16) and the sum by 2u·Σ|w·x|, which stays below 4u·(1 + |y|) at these magnitudes.
#[test]
fn fused_inference_on_cuda_matches_cpu_in_tensor_core_modes() {
    use vidgrad::math_mode::{with_math_mode, MathMode};
    let Some(dev) = common::cuda_device() else {
        return;
    };
    for (mode, u) in [
        (MathMode::Tf32, 2f32.powi(-11)),
        (MathMode::Bf16, 2f32.powi(-8)),
    ] {
        with_math_mode(mode, || {
            let x = input(Device::Cpu);
            let mut cpu = warmed(net_with(false), Device::Cpu, &x);
            cpu.eval();
            let want = cpu.forward(&[&x]).unwrap().to_vec().unwrap();
            let mut gpu = Network::new(net_with(false), dev, 11).unwrap();
            gpu.load_state_dict(&cpu.state_dict(), true).unwrap();
            gpu.eval();
            assert!(gpu.fuses());
            let xg = x.to_device(dev).unwrap();
            let got = gpu.forward(&[&xg]).unwrap().to_vec().unwrap();
            let worst = assert_close(&format!("{dev} {mode:?}"), &got, &want, 4.0 * u);
            println!(
                "fused inference {mode:?}, {dev} vs cpu: worst relative difference {worst:.2e}"
            );
        });
    }
}

/// A training block with every training fusion: conv → BN → ReLU (BN+ReLU), conv → BN → add(skip) →
/// ReLU (add+ReLU, in place over the BN's output), conv → ReLU (in place: the conv keeps its input,
/// not its output) and softmax → ReLU (not in place: softmax keeps its output for its backward, so the
/// buffer is shared).
fn train_net() -> Graph {
    let mut g = GraphBuilder::new("TrainFuseNet");
    let x = g.input("input", &[2, 4, 4, 9, 9]).unwrap();
    let a = g
        .conv("c1", x, Conv::new(8, &[3, 3, 3]).padding(&[1, 1, 1]))
        .unwrap();
    let a = g.batch_norm("bn1", a, BatchNorm::new()).unwrap();
    let a = g.relu("r1", a).unwrap();
    let b = g
        .conv(
            "c2",
            a,
            Conv::new(8, &[1, 3, 3]).padding(&[0, 1, 1]).no_bias(),
        )
        .unwrap();
    let b = g.batch_norm("bn2", b, BatchNorm::new()).unwrap();
    let b = g.add(b, a).unwrap();
    let b = g.relu("r2", b).unwrap();
    let c = g.conv("c3", b, Conv::new(8, &[1, 1, 1])).unwrap();
    let c = g.relu("r3", c).unwrap();
    let c = g.softmax("sm", c, 1).unwrap();
    let c = g.relu("r4", c).unwrap();
    let c = g.adaptive_avg_pool("pool", c, &[1, 1, 1]).unwrap();
    let c = g.flatten(c, 1, -1).unwrap();
    let y = g.linear("fc", c, Linear::new(3)).unwrap();
    g.finish(&[y]).unwrap()
}

/// One training step (forward, Σ y·r, backward) with fusion on or off: the output, every parameter's
/// and buffer's value after the step's statistics update, every gradient (parameters and input), and
/// the ReLUs run in place.
fn train_step(dev: Device, fuse: bool) -> (Vec<(String, Vec<f32>)>, usize) {
    use vidgrad::ops;
    let mut net = Network::new(train_net(), dev, 21).unwrap();
    net.set_fuse(fuse);
    net.train();
    let x = Tensor::randn(&[2, 4, 4, 9, 9], 3, Device::Cpu)
        .unwrap()
        .to_device(dev)
        .unwrap()
        .with_grad();
    let y = net.forward(&[&x]).unwrap();
    let r = Tensor::randn(y.shape(), 4, dev).unwrap();
    ops::sum(&ops::mul(&y, &r).unwrap())
        .unwrap()
        .backward()
        .unwrap();
    let mut out = vec![("output".to_string(), y.to_vec().unwrap())];
    out.push(("input grad".into(), x.grad().unwrap().to_vec().unwrap()));
    for (name, p) in net.parameters() {
        out.push((format!("{name} grad"), p.grad().unwrap().to_vec().unwrap()));
    }
    for (name, b) in net.buffers() {
        out.push((name, b.to_vec().unwrap()));
    }
    (out, net.last_forward_stats().unwrap().relus_in_place)
}

/// Fused and unfused training agree bit for bit: BN+ReLU applies max(·, 0) to the value the unfused BN
/// writes, its backward masks dy exactly as ReLU's backward does before the same sums in the same
/// order, add+ReLU rounds a + b once as add does, and a ReLU in place computes what ReLU computes. So
/// the tolerance derived is 0 (the CUDA kernels are checked against the CPU in tests/cuda_ops.rs).
fn fused_training_matches_unfused_on(dev: Device) {
    let g = train_net();
    let plan = g.fusion_plan(true);
    let labels: Vec<String> = plan.chains.iter().map(|c| c.label()).collect();
    assert_eq!(labels, ["bn+relu", "add+relu"]);
    let (fused, in_place) = train_step(dev, true);
    let (plain, none) = train_step(dev, false);
    // In place: r3 over c3's output and the add+relu over bn2's output (both dead and kept by no
    // backward); not r4, whose input softmax keeps for its backward.
    assert_eq!((in_place, none), (2, 0));
    assert_eq!(fused.len(), plain.len());
    for ((name, a), (_, b)) in fused.iter().zip(&plain) {
        assert_eq!(a.len(), b.len(), "{name}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                x.to_bits() == y.to_bits(),
                "{dev} {name}: element {i}: fused {x}, unfused {y}"
            );
        }
    }
    println!(
        "fused training on {dev}: {} tensors equal bit for bit",
        fused.len()
    );
}

#[test]
fn fused_training_matches_unfused_on_cpu() {
    fused_training_matches_unfused_on(Device::Cpu);
}

#[test]
fn fused_training_matches_unfused_on_cuda() {
    if let Some(dev) = common::cuda_device() {
        fused_training_matches_unfused_on(dev);
    }
}
