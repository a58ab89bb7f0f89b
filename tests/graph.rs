//! Graph building (shape inference, names, init), summary and DOT, and the executor (training and
//! inference, liveness, state dicts) on a small network built from every listed layer.

mod common;

use common::device;
use vidgrad::exec::Network;
use vidgrad::graph::{BatchNorm, Conv, Graph, GraphBuilder, Linear};
use vidgrad::ops::{self, BatchNormArgs, ConvParams, PoolParams};
use vidgrad::{no_grad, Error, Tensor};

/// A little video net touching every layer kind: Conv3d, BatchNorm3d, ReLU, MaxPool3d, a two-branch
/// Inception-like concat with AvgPool3d, a 2-d part (Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d),
/// AdaptiveAvgPool3d, Dropout, Linear; Sequential-style numbered children.
fn tiny(batch: usize) -> vidgrad::Result<Graph> {
    let mut g = GraphBuilder::new("TinyNet");
    let x = g.input("input", &[batch, 3, 4, 12, 12])?;
    let x = g.module("stem", "Sequential", x, |g, x| {
        let x = g.conv(
            "0",
            x,
            Conv::new(8, &[3, 3, 3]).padding(&[1, 1, 1]).no_bias(),
        )?;
        let x = g.batch_norm("1", x, BatchNorm::new())?;
        let x = g.relu("2", x)?;
        g.max_pool(
            "3",
            x,
            PoolParams::new(&[1, 3, 3])
                .stride(&[1, 2, 2])
                .padding(&[0, 1, 1]),
        )
    })?;
    let x = g.module("mixed", "Inception", x, |g, x| {
        let a = g.conv("branch_a", x, Conv::new(4, &[1, 1, 1]))?;
        let p = g.avg_pool(
            "pool",
            x,
            PoolParams::new(&[3, 3, 3])
                .stride(&[1, 1, 1])
                .padding(&[1, 1, 1]),
            true,
        )?;
        let b = g.conv("branch_b", p, Conv::new(4, &[1, 1, 1]))?;
        g.concat(&[a, b], 1)
    })?;
    // a 2-d stretch: frames as images
    let x = g.permute(x, &[0, 2, 1, 3, 4])?; // [B, T, C, H, W]
    let x = g.reshape(x, &[-1, 8, 6, 6])?;
    let x = g.module("frame", "Frame2d", x, |g, x| {
        let x = g.conv("conv", x, Conv::new(8, &[3, 3]).padding(&[1, 1]))?;
        let x = g.batch_norm("bn", x, BatchNorm::new())?;
        let x = g.relu("relu", x)?;
        let x = g.max_pool("pool", x, PoolParams::new(&[2, 2]))?;
        g.avg_pool(
            "avg",
            x,
            PoolParams::new(&[3, 3]).stride(&[1, 1]).padding(&[1, 1]),
            false,
        )
    })?;
    let x = g.reshape(x, &[-1, 4, 8, 3, 3])?;
    let x = g.permute(x, &[0, 2, 1, 3, 4])?;
    let y = g.module("head", "Head", x, |g, x| {
        let x = g.adaptive_avg_pool("pool", x, &[1, 1, 1])?;
        let x = g.flatten(x, 1, -1)?;
        let x = g.dropout("dropout", x, 0.5)?;
        g.linear("fc", x, Linear::new(5))
    })?;
    g.finish(&[y])
}

#[test]
fn shapes_names_and_counts_are_inferred() {
    let g = tiny(2).unwrap();
    assert_eq!(g.values[g.outputs[0]].shape, vec![2, 5]);
    let names: Vec<&str> = g.params.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "stem.0.weight",
        "stem.1.running_var",
        "stem.1.num_batches_tracked",
        "mixed.branch_b.bias",
        "frame.bn.weight",
        "head.fc.weight",
    ] {
        assert!(names.contains(&want), "missing {want} in {names:?}");
    }
    // 8·3·27 + 2·8 + (4·8+4)·2 + (8·8·9+8) + 2·8 + 5·8+5
    assert_eq!(g.num_params(), 648 + 16 + 72 + 584 + 16 + 45);
    // conv MACs: stem 2·8·4·12·12 outputs × 81, branches 2·(2·4·4·6·6 × 8), frame 8·8·6·6 × 72, fc 2·5·8
    let want = 2 * 8 * 4 * 144 * 81 + 2 * (2 * 4 * 4 * 36 * 8) + 8 * 8 * 36 * 72 + 2 * 5 * 8;
    assert_eq!(g.macs(), want as u64);
}

#[test]
fn build_errors_name_the_node() {
    let mut g = GraphBuilder::new("bad");
    let x = g.input("input", &[1, 3, 4, 8, 8]).unwrap();
    let err = g
        .module("layer1", "Block", x, |g, x| {
            g.conv("conv", x, Conv::new(4, &[5, 3, 3]))
        })
        .unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains("layer1.conv") && msg.contains("larger than the padded input"),
        "{msg}"
    );
    // two layers with one name
    let mut g = GraphBuilder::new("dup");
    let x = g.input("input", &[1, 3, 8, 8]).unwrap();
    let y = g.relu("r", x).unwrap();
    assert!(matches!(g.relu("r", y), Err(Error::Node { .. })));
}

#[test]
fn summary_and_dot() {
    let g = tiny(2).unwrap();
    let s = g.summary(3);
    println!("{s}");
    assert!(s.starts_with("Layer (type:depth-idx)"));
    assert!(s.contains("├─Sequential: 1-1"));
    assert!(s.contains("│    └─Conv3d: 2-1"));
    assert!(s.contains("[2, 3, 4, 12, 12]"));
    assert!(s.contains(&format!("Total params: {}", {
        let n = g.num_params().to_string();
        // thousands separator
        format!("{},{}", &n[..n.len() - 3], &n[n.len() - 3..])
    })));
    let dot = g.to_dot();
    assert!(dot.starts_with("digraph \"TinyNet\""));
    assert!(dot.contains("head.fc\\nLinear\\n[2, 5]"));
    assert_eq!(
        dot.matches(" -> ").count(),
        g.nodes.iter().map(|n| n.inputs.len()).sum::<usize>() + 1
    );
}

#[test]
fn init_is_pytorch_default_and_seeded() {
    let net = Network::new(tiny(2).unwrap(), device(), 7).unwrap();
    let w = net.param("stem.0.weight").unwrap().to_vec().unwrap();
    let bound = 1.0 / (3.0f32 * 27.0).sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(
        w.iter().any(|v| v.abs() > 0.9 * bound),
        "uniform over the full range"
    );
    assert_eq!(
        net.param("stem.1.weight").unwrap().to_vec().unwrap(),
        vec![1.0; 8]
    );
    assert_eq!(
        net.param("stem.1.running_var").unwrap().to_vec().unwrap(),
        vec![1.0; 8]
    );
    let again = Network::new(tiny(2).unwrap(), device(), 7).unwrap();
    assert_eq!(
        again.param("head.fc.weight").unwrap().to_vec().unwrap(),
        net.param("head.fc.weight").unwrap().to_vec().unwrap()
    );
    let other = Network::new(tiny(2).unwrap(), device(), 8).unwrap();
    assert_ne!(
        other.param("head.fc.weight").unwrap().to_vec().unwrap(),
        net.param("head.fc.weight").unwrap().to_vec().unwrap()
    );
}

/// The same network written directly with ops, reading the executor's parameters.
fn by_hand(net: &Network, x: &Tensor, training: bool) -> Tensor {
    let p = |n: &str| net.param(n).unwrap().clone();
    let bn = |x: &Tensor, pre: &str| {
        let (w, b, m, v) = (
            p(&format!("{pre}.weight")),
            p(&format!("{pre}.bias")),
            p(&format!("{pre}.running_mean")),
            p(&format!("{pre}.running_var")),
        );
        let args = BatchNormArgs {
            weight: Some(&w),
            bias: Some(&b),
            running_mean: Some(&m),
            running_var: Some(&v),
            training,
            ..Default::default()
        };
        ops::batch_norm(x, &args).unwrap()
    };
    let x = ops::conv(
        x,
        &p("stem.0.weight"),
        None,
        &ConvParams::default().padding(&[1, 1, 1]),
    )
    .unwrap();
    let x = bn(&x, "stem.1").relu().unwrap();
    let x = ops::max_pool(
        &x,
        &PoolParams::new(&[1, 3, 3])
            .stride(&[1, 2, 2])
            .padding(&[0, 1, 1]),
    )
    .unwrap();
    let a = ops::conv(
        &x,
        &p("mixed.branch_a.weight"),
        Some(&p("mixed.branch_a.bias")),
        &ConvParams::default(),
    )
    .unwrap();
    let pooled = ops::avg_pool(
        &x,
        &PoolParams::new(&[3, 3, 3])
            .stride(&[1, 1, 1])
            .padding(&[1, 1, 1]),
        true,
    )
    .unwrap();
    let b = ops::conv(
        &pooled,
        &p("mixed.branch_b.weight"),
        Some(&p("mixed.branch_b.bias")),
        &ConvParams::default(),
    )
    .unwrap();
    let x = ops::concat(&[&a, &b], 1).unwrap();
    let bsz = x.shape()[0];
    let x = x
        .permute(&[0, 2, 1, 3, 4])
        .unwrap()
        .reshape(&[bsz * 4, 8, 6, 6])
        .unwrap();
    let x = ops::conv(
        &x,
        &p("frame.conv.weight"),
        Some(&p("frame.conv.bias")),
        &ConvParams::default().padding(&[1, 1]),
    )
    .unwrap();
    let x = bn(&x, "frame.bn").relu().unwrap();
    let x = ops::max_pool(&x, &PoolParams::new(&[2, 2])).unwrap();
    let x = ops::avg_pool(
        &x,
        &PoolParams::new(&[3, 3]).stride(&[1, 1]).padding(&[1, 1]),
        false,
    )
    .unwrap();
    let x = x
        .reshape(&[bsz, 4, 8, 3, 3])
        .unwrap()
        .permute(&[0, 2, 1, 3, 4])
        .unwrap();
    let x = x.global_avg_pool().unwrap().flatten(1, -1).unwrap();
    // dropout's mask differs from the executor's: compare in eval only, or with p = 0 effect removed
    x.linear(&p("head.fc.weight"), Some(&p("head.fc.bias")))
        .unwrap()
}

#[test]
fn executor_matches_ops_in_eval_and_backward_reaches_every_parameter() {
    let mut net = Network::new(tiny(3).unwrap(), device(), 1).unwrap();
    let x = Tensor::randn(&[3, 3, 4, 12, 12], 5, device()).unwrap();
    net.eval();
    let y = net.forward(&[&x]).unwrap();
    let want = no_grad(|| by_hand(&net, &x, false));
    let (a, b) = (y.to_vec().unwrap(), want.to_vec().unwrap());
    assert!(
        a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-5),
        "{a:?} vs {b:?}"
    );
    assert!(!y.requires_grad(), "eval forward records nothing");

    // A batch size other than the one the graph was built with runs too (reshape uses −1).
    assert_eq!(
        net.forward(&[&Tensor::randn(&[1, 3, 4, 12, 12], 6, device()).unwrap()])
            .unwrap()
            .shape(),
        [1, 5]
    );

    net.train();
    let y = net.forward(&[&x]).unwrap();
    ops::cross_entropy(&y, &[0, 3, 4], 0.0)
        .unwrap()
        .backward()
        .unwrap();
    for (name, p) in net.parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
        assert!(
            g.to_vec().unwrap().iter().any(|v| *v != 0.0),
            "{name}: zero gradient"
        );
    }
    // training forward updated running statistics and counted the batch
    assert_eq!(
        net.param("stem.1.num_batches_tracked")
            .unwrap()
            .to_vec()
            .unwrap(),
        vec![1.0]
    );
    assert_ne!(
        net.param("stem.1.running_mean").unwrap().to_vec().unwrap(),
        vec![0.0; 8]
    );
}

#[test]
fn wrong_input_shape_is_a_clear_error() {
    let net = Network::new(tiny(2).unwrap(), device(), 1).unwrap();
    let msg = net
        .forward(&[&Tensor::zeros(&[2, 3, 4, 10, 12], device()).unwrap()])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("TinyNet")
            && msg.contains("[N, 3, 4, 12, 12]")
            && msg.contains("[2, 3, 4, 10, 12]"),
        "{msg}"
    );
}

#[test]
fn state_dict_round_trip_through_safetensors() {
    let a = Network::new(tiny(2).unwrap(), device(), 1).unwrap();
    let b = Network::new(tiny(2).unwrap(), device(), 2).unwrap();
    let dir = std::env::temp_dir().join(format!("vidgrad-graph-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tiny.safetensors");
    vidgrad::io::save_safetensors(&path, &a.state_dict(), None).unwrap();
    let (sd, _) = vidgrad::io::load_safetensors(&path, device()).unwrap();
    b.load_state_dict(&sd, true).unwrap();
    for (k, v) in a.state_dict() {
        assert_eq!(
            v.to_vec().unwrap(),
            b.state_dict()[&k].to_vec().unwrap(),
            "{k}"
        );
    }
    // strict loading names the bad keys
    let mut bad = sd.clone();
    bad.remove("head.fc.bias");
    bad.insert(
        "head.fc.extra".into(),
        Tensor::zeros(&[1], device()).unwrap(),
    );
    let msg = b.load_state_dict(&bad, true).unwrap_err().to_string();
    assert!(
        msg.contains("head.fc.bias") && msg.contains("head.fc.extra"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 14 §6: shape arithmetic is bounded and checked. A tensor of more than 2^40 elements is an
/// error naming the node and shape, and so is a graph whose multiply-add count would wrap a u64
/// (here 17 matmuls of 2^60 each), so `summary` never prints wrapped figures.
#[test]
fn sizes_and_flop_counts_cannot_wrap() {
    let mut g = GraphBuilder::new("Huge");
    let e = g.input("x", &[1 << 21, 1 << 20]).unwrap_err().to_string();
    assert!(
        e.contains("more than 2^40 elements") && e.contains("[2097152, 1048576]"),
        "{e}"
    );

    let mut g = GraphBuilder::new("Huge");
    let a = g.input("a", &[1, 1 << 20, 1 << 20]).unwrap();
    let mut err = None;
    for _ in 0..17 {
        match g.matmul(a, a) {
            Ok(_) => {}
            Err(e) => {
                err = Some(e.to_string());
                break;
            }
        }
    }
    let e = err.expect("17 matmuls of 2^60 multiply-adds were accepted");
    assert!(
        e.contains("multiply-add count overflows a u64") && e.contains("[1, 1048576, 1048576]"),
        "{e}"
    );
}
