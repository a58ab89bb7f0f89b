//! mmaction2's ResNet3d + I3DHead (src/models/resnet3d.rs): parameter counts and multiply-adds of the
//! presets against mmaction2's model zoo (measured on the PyTorch reference, tools/reference/models/
//! resnet3d.py), state_dict names, option parsing, and gradient checkpointing (`with_cp`) giving the same
//! gradients as a plain run. The PyTorch comparisons at full size are in tests/models.rs.

use std::collections::BTreeMap;

use vidgrad::exec::Network;
use vidgrad::graph::{Graph, Init};
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::{ops, Device};

fn opts(kv: &[(&str, &str)]) -> ModelOptions {
    ModelOptions {
        extra: kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

fn build(kv: &[(&str, &str)], shape: &[usize]) -> Graph {
    models::build("resnet3d", &opts(kv), shape).unwrap()
}

const CLIP: [usize; 5] = [1, 3, 32, 224, 224];

/// Parameter counts at 400 classes. mmaction2's metafile: I3D-R50 28.0 M, non-local (dot product or
/// embedded gaussian) 35.4 M, gaussian 31.7 M, heavy 33.0 M. PySlowFast's I3D-R50 (REFERENCES.md) has the
/// same 28,043,472; its non-local blocks' conv_out has a bias (35,401,936 = ours + 2·512 + 3·1024).
#[test]
fn parameter_counts() {
    for (preset, want) in [
        ("i3d-r50", 28_043_472),
        ("i3d-r50-nl-dot-product", 35_397_840),
        ("i3d-r50-nl-embedded-gaussian", 35_397_840),
        ("i3d-r50-nl-gaussian", 31_723_728),
        ("i3d-r50-heavy", 33_024_208),
        ("seed004", 33_024_208),
    ] {
        let g = build(&[("preset", preset)], &CLIP);
        assert_eq!(g.num_params(), want, "{preset}");
    }
    for (depth, want) in [
        ("18", 33_371_472),
        ("34", 63_681_104),
        ("50", 33_005_392),
        ("101", 60_910_416),
    ] {
        let g = build(&[("depth", depth)], &[1, 3, 8, 112, 112]);
        assert_eq!(g.num_params(), want, "depth {depth}");
    }
}

/// Forward multiply-adds at the configs' 32×224² clip: convolutions and fc_cls as counted on the PyTorch
/// reference, plus the non-local pairwise products 2·N·M·C' (layer2: N 4·28·28, M 4·14·14, C' 256, twice;
/// layer3: N 4·14·14, M 4·7·7, C' 512, three times). At 256² these give 43.27 / 59.11 / 56.29 / 165.6
/// GMAC against mmaction2's metafile 43.5 / 59.3 / 56.5 / 166.3 "GFLOPs" (its counter adds BN, ReLU, pools).
#[test]
fn multiply_adds() {
    let pairwise = 2 * (2 * 3136 * 784 * 256) + 3 * (2 * 784 * 196 * 512);
    for (preset, want) in [
        ("i3d-r50", 33_128_218_624u64),
        ("seed004", 36_416_552_960),
        ("i3d-r50-nl-dot-product", 41_349_054_464 + pairwise),
        ("i3d-r50-nl-embedded-gaussian", 41_349_054_464 + pairwise),
    ] {
        assert_eq!(build(&[("preset", preset)], &CLIP).macs(), want, "{preset}");
    }
}

#[test]
fn shapes_and_names() {
    let g = build(&[("preset", "i3d-r50-nl-dot-product")], &CLIP);
    let shape = |n: &str| g.values[g.value_by_name(n).unwrap()].shape.clone();
    assert_eq!(shape("backbone.maxpool"), vec![1, 64, 8, 56, 56]);
    assert_eq!(shape("backbone.layer1"), vec![1, 256, 8, 56, 56]);
    assert_eq!(shape("backbone.pool2"), vec![1, 256, 4, 56, 56]);
    assert_eq!(
        shape("backbone.layer2.1.non_local_block"),
        vec![1, 512, 4, 28, 28]
    );
    assert_eq!(shape("backbone.layer4"), vec![1, 2048, 4, 7, 7]);
    assert_eq!(g.values[g.outputs[0]].shape, vec![1, 400]);
    let names: Vec<&str> = g.params.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "backbone.conv1.conv.weight",
        "backbone.conv1.bn.num_batches_tracked",
        "backbone.layer1.0.conv1.conv.weight",
        "backbone.layer1.0.downsample.conv.weight",
        "backbone.layer1.0.downsample.bn.running_var",
        "backbone.layer2.1.non_local_block.g.0.conv.weight",
        "backbone.layer2.1.non_local_block.theta.conv.bias",
        "backbone.layer2.1.non_local_block.phi.0.conv.weight",
        "backbone.layer2.1.non_local_block.conv_out.conv.weight",
        "backbone.layer2.1.non_local_block.conv_out.bn.weight",
        "cls_head.fc_cls.weight",
        "cls_head.fc_cls.bias",
    ] {
        assert!(names.contains(&want), "missing {want}");
    }
    // conv_out has no bias under BN; backbone convs never have one
    assert!(!names.contains(&"backbone.layer2.1.non_local_block.conv_out.conv.bias"));
    assert!(!names
        .iter()
        .any(|n| n.starts_with("backbone.layer1") && n.ends_with("conv.bias")));
    // without sub_sample, g and phi are plain ConvModules
    let g = build(
        &[
            ("preset", "i3d-r50-nl-embedded-gaussian"),
            ("non_local_sub_sample", "false"),
        ],
        &[1, 3, 8, 64, 64],
    );
    assert!(g
        .params
        .iter()
        .any(|p| p.name == "backbone.layer3.5.non_local_block.phi.conv.weight"));
}

#[test]
fn option_syntax_and_errors() {
    let shape = [1, 3, 8, 64, 64];
    let a = build(
        &[
            ("inflate", "1,1,1;1,0,1,0;1,0,1,0,1,0;0,1,0"),
            ("conv1_kernel", "5,7,7"),
        ],
        &shape,
    );
    let b = build(
        &[
            (
                "inflate",
                "((1, 1, 1), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (0, 1, 0))",
            ),
            ("conv1_kernel", "(5, 7, 7)"),
        ],
        &shape,
    );
    assert_eq!(a, b);
    let c = build(
        &[
            ("inflate", "1;1,0,1,0;1,0,1,0,1,0;0,1,0"),
            ("conv1_kernel", "5,7,7"),
        ],
        &shape,
    );
    assert_eq!(a, c, "a single flag covers a whole stage");

    let err = |kv: &[(&str, &str)]| {
        models::build("resnet3d", &opts(kv), &shape)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[("inflate", "1,0;1;1;1")]).contains("layer1"));
    assert!(err(&[("inflat", "1")]).contains("unknown option 'inflat'"));
    assert!(err(&[("preset", "i3d")]).contains("unknown preset"));
    assert!(err(&[("non_local_mode", "concat")]).contains("non_local_mode"));
    assert!(err(&[("depth", "42")]).contains("depth"));
}

/// mmaction2's init: zero_init_residual zeroes each block's last BN γ by default; the I3D configs turn it
/// off; the non-local conv_out's BN γ starts at zero.
#[test]
fn initialisation() {
    let init = |g: &Graph, n: &str| g.params.iter().find(|p| p.name == n).unwrap().init.clone();
    let d = build(&[], &[1, 3, 8, 64, 64]);
    assert_eq!(
        init(&d, "backbone.layer1.0.conv3.bn.weight"),
        Init::Const(0.0)
    );
    let i3d = build(&[("preset", "i3d-r50-nl-dot-product")], &[1, 3, 8, 64, 64]);
    assert_eq!(
        init(&i3d, "backbone.layer1.0.conv3.bn.weight"),
        Init::Const(1.0)
    );
    assert_eq!(
        init(&i3d, "backbone.layer2.1.non_local_block.conv_out.bn.weight"),
        Init::Const(0.0)
    );
    assert_eq!(
        init(&i3d, "cls_head.fc_cls.weight"),
        Init::Normal { std: 0.01 }
    );
}

/// One training step; (loss, every parameter gradient by name, bytes held for backward after forward).
fn train_step(with_cp: bool) -> (Vec<f32>, BTreeMap<String, Vec<f32>>, usize) {
    let shape = [2, 3, 8, 64, 64];
    let cp = if with_cp { "true" } else { "false" };
    let graph = build(
        &[
            ("preset", "i3d-r50-nl-embedded-gaussian"),
            ("with_cp", cp),
            ("non_local", "0;0,1,0,1;0,0,0,0,0,1;0"),
        ],
        &shape,
    );
    if with_cp {
        assert!(graph.scopes.iter().filter(|s| s.checkpoint).count() == 16);
    }
    let net = Network::new(graph, Device::Cpu, 0).unwrap();
    fill::fill_network(&net, 7).unwrap();
    let x = fill::fill_input(7, &shape, Device::Cpu).unwrap();
    let y = net.forward(&[&x]).unwrap();
    let held = net.last_forward_stats().unwrap().held_bytes;
    let loss = ops::cross_entropy(&y, &[3, 300], 0.0).unwrap();
    loss.backward().unwrap();
    let grads = net
        .parameters()
        .into_iter()
        .map(|(n, p)| (n, p.grad().unwrap().to_vec().unwrap()))
        .collect();
    (loss.to_vec().unwrap(), grads, held)
}

/// `with_cp=true` recomputes each block in backward: the same loss and gradients for every parameter,
/// with less memory held between forward and backward.
#[test]
fn with_cp_gives_the_same_gradients() {
    let (loss, plain, held_plain) = train_step(false);
    let (loss_cp, cp, held_cp) = train_step(true);
    assert_eq!(loss, loss_cp);
    assert_eq!(plain.len(), cp.len());
    for (name, a) in &plain {
        let b = &cp[name];
        let scale = a.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err <= 1e-5, "{name}: with_cp gradient differs by {err:e}");
    }
    assert!(
        held_cp * 2 < held_plain,
        "checkpointing should hold far less: {held_cp} vs {held_plain} bytes"
    );
}
