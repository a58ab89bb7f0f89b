//! NaN and Inf through a whole network, and `Network::set_check_finite` (the CLI's `--check-finite`):
//! the first node whose output or gradient is not finite is named, on every device of the suite (the
//! CPU and the CUDA device of tests/common, the simulator without a GPU).

mod common;

use vidgrad::exec::Network;
use vidgrad::graph::{BatchNorm, Conv, Graph, GraphBuilder, Linear};
use vidgrad::io::StateDict;
use vidgrad::ops::PoolParams;
use vidgrad::{Error, Tensor};

/// conv → bn → relu → max pool → global pool → fc: every op family where NaN used to be dropped.
fn tiny() -> Graph {
    let mut g = GraphBuilder::new("tiny");
    let x = g.input("input", &[2, 3, 4, 8, 8]).unwrap();
    let x = g
        .conv("conv1", x, Conv::new(4, &[3, 3, 3]).padding(&[1, 1, 1]))
        .unwrap();
    let x = g.batch_norm("bn1", x, BatchNorm::new()).unwrap();
    let x = g.relu("relu", x).unwrap();
    let x = g
        .max_pool("pool", x, PoolParams::new(&[1, 2, 2]).stride(&[1, 2, 2]))
        .unwrap();
    let x = g.adaptive_avg_pool("avgpool", x, &[1, 1, 1]).unwrap();
    let x = g.flatten(x, 1, -1).unwrap();
    let y = g.linear("fc", x, Linear::new(3)).unwrap();
    g.finish(&[y]).unwrap()
}

fn input(v: impl Fn(usize) -> f32) -> Tensor {
    let n = 2 * 3 * 4 * 8 * 8;
    Tensor::from_vec((0..n).map(v).collect(), &[2, 3, 4, 8, 8], common::device()).unwrap()
}

fn finite_input() -> Tensor {
    input(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
}

/// `net` with one value of parameter `name` replaced.
fn poke_param(net: &Network, name: &str, at: usize, v: f32) {
    let t = net.param(name).unwrap();
    let mut data = t.to_vec().unwrap();
    data[at] = v;
    let mut sd: StateDict = net.state_dict();
    sd.insert(
        name.to_string(),
        Tensor::from_vec(data, t.shape(), t.device()).unwrap(),
    );
    net.load_state_dict(&sd, true).unwrap();
}

fn message(e: Error) -> String {
    assert!(
        matches!(e, Error::NonFinite(_)),
        "not a NonFinite error: {e}"
    );
    println!("  {e}");
    e.to_string()
}

#[test]
fn nan_input_gives_nan_logits_and_check_finite_names_the_input() {
    common::on_devices(|| {
        let mut net = Network::new(tiny(), common::device(), 1).unwrap();
        net.eval();
        // The observation: an all-NaN input gave finite logits (ReLU dropped the NaN).
        let x = input(|_| f32::NAN);
        let y = vidgrad::no_grad(|| net.forward(&[&x]))
            .unwrap()
            .to_vec()
            .unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
        let y = vidgrad::no_grad(|| net.forward(&[&finite_input()])).unwrap();
        assert!(y.to_vec().unwrap().iter().all(|v| v.is_finite()));

        net.set_check_finite(true);
        let e = message(vidgrad::no_grad(|| net.forward(&[&x])).unwrap_err());
        assert!(
            e.contains("input 0 [2, 3, 4, 8, 8]") && e.contains("1536 NaN"),
            "{e}"
        );
        // Finite input: the check passes and changes nothing but fusion: it runs every node by
        // itself, bit for bit as --no-fuse does (docs/GRAPH.md, "Fusion").
        let z = vidgrad::no_grad(|| net.forward(&[&finite_input()])).unwrap();
        net.set_check_finite(false);
        net.set_fuse(false);
        let unfused = vidgrad::no_grad(|| net.forward(&[&finite_input()])).unwrap();
        assert_eq!(z.to_vec().unwrap(), unfused.to_vec().unwrap());
    });
}

#[test]
fn check_finite_names_the_first_node_and_the_parameter() {
    common::on_devices(|| {
        let mut net = Network::new(tiny(), common::device(), 1).unwrap();
        net.eval();
        // NaN weights (a corrupt checkpoint): logits NaN, and the check names conv1 and its weight.
        poke_param(&net, "conv1.weight", 5, f32::NAN);
        let y = vidgrad::no_grad(|| net.forward(&[&finite_input()])).unwrap();
        assert!(y.to_vec().unwrap().iter().any(|v| v.is_nan()));
        net.set_check_finite(true);
        let e = message(vidgrad::no_grad(|| net.forward(&[&finite_input()])).unwrap_err());
        assert!(
            e.contains("node 'conv1' (conv, [2, 4, 4, 8, 8])")
                && e.contains("parameter 'conv1.weight' holds 1 NaN (first at [0, 0, 0, 1, 2])"),
            "{e}"
        );

        // An Inf running variance: bn1 is the first node out of range, named with its buffer.
        let mut net = Network::new(tiny(), common::device(), 1).unwrap();
        net.eval();
        net.set_check_finite(true);
        poke_param(&net, "bn1.running_mean", 2, f32::INFINITY);
        let e = message(vidgrad::no_grad(|| net.forward(&[&finite_input()])).unwrap_err());
        assert!(
            e.contains("node 'bn1' (batch_norm")
                && e.contains("parameter 'bn1.running_mean' holds 1 +Inf"),
            "{e}"
        );
    });
}

#[test]
fn check_finite_names_the_node_whose_gradient_overflows() {
    common::on_devices(|| {
        // Finite forward, but fc's gradient with respect to its input is w·gy = 1e38·10: +Inf.
        let mut net = Network::new(tiny(), common::device(), 1).unwrap();
        poke_param(&net, "fc.weight", 0, 1e38);
        let x = finite_input();
        let y = net.forward(&[&x]).unwrap();
        assert!(y.to_vec().unwrap().iter().all(|v| v.is_finite()));
        let gy = Tensor::full(&[2, 3], 10.0, common::device()).unwrap();
        // Without the check, backward runs through (PyTorch's default too).
        y.backward_with(&gy).unwrap();
        net.zero_grad();

        net.set_check_finite(true);
        let y = net.forward(&[&x]).unwrap();
        let e = message(y.backward_with(&gy).unwrap_err());
        assert!(
            e.contains("gradient of node 'fc' (linear")
                && e.contains("+Inf")
                && e.contains("the gradient it received is finite"),
            "{e}"
        );
        // A NaN gradient from outside the network: the output node says it received it.
        net.zero_grad();
        let y = net.forward(&[&x]).unwrap();
        let gy = Tensor::full(&[2, 3], f32::NAN, common::device()).unwrap();
        let e = message(y.backward_with(&gy).unwrap_err());
        assert!(
            e.contains("node 'fc'") && e.contains("the gradient it received already held 6 NaN"),
            "{e}"
        );
    });
}
