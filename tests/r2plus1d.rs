//! R(2+1)D-18 and CT-sep (seed 001): parameter counts, multiply-adds, torchvision's midplanes rule and
//! names, options, and a few training steps at a small input. The full-size comparison with PyTorch is
//! tests/models.rs (`r2plus1d-18`, `ct-sep`).

use std::collections::BTreeMap;

use vidgrad::exec::Network;
use vidgrad::models::{self, fill, r2plus1d::midplanes, ModelOptions};
use vidgrad::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
use vidgrad::{ops, Device};

fn params(model: &str, opts: &ModelOptions, shape: &[usize]) -> BTreeMap<String, Vec<usize>> {
    let g = models::build(model, opts, shape).unwrap();
    g.params
        .iter()
        .map(|p| (p.name.clone(), p.shape.clone()))
        .collect()
}

#[test]
fn r2plus1d_18_params_and_macs() {
    // REFERENCES.md: 31,505,325 parameters, 40.5 GMAC per 16×112² clip.
    let g = models::build(
        "r2plus1d-18",
        &ModelOptions::default(),
        &[1, 3, 16, 112, 112],
    )
    .unwrap();
    assert_eq!(g.num_params(), 31_505_325);
    // Conv and fc multiply-adds, counted independently by forward hooks on torchvision's r2plus1d_18.
    assert_eq!(g.macs(), 40_519_080_960);
    assert_eq!(format!("{:.1}", g.macs() as f64 / 1e9), "40.5");
    assert_eq!(g.values[g.outputs[0]].shape, vec![1, 400]);
    // Linear in the batch.
    let g2 = models::build(
        "r2plus1d-18",
        &ModelOptions::default(),
        &[2, 3, 16, 112, 112],
    )
    .unwrap();
    assert_eq!(g2.macs(), 2 * 40_519_080_960);
}

#[test]
fn r2plus1d_18_midplanes_and_names() {
    assert_eq!(
        [(64, 64), (64, 128), (128, 128), (128, 256), (256, 512)].map(|(i, p)| midplanes(i, p)),
        [144, 230, 288, 460, 921]
    );
    let p = params(
        "r2plus1d-18",
        &ModelOptions::default(),
        &[1, 3, 16, 112, 112],
    );
    let want: &[(&str, &[usize])] = &[
        ("stem.0.weight", &[45, 3, 1, 7, 7]),
        ("stem.1.running_var", &[45]),
        ("stem.3.weight", &[64, 45, 3, 1, 1]),
        ("stem.4.num_batches_tracked", &[1]),
        ("layer1.0.conv1.0.0.weight", &[144, 64, 1, 3, 3]),
        ("layer1.0.conv1.0.1.weight", &[144]),
        ("layer1.0.conv1.0.3.weight", &[64, 144, 3, 1, 1]),
        ("layer1.0.conv1.1.bias", &[64]),
        // The first block of layer2 goes 64 → 128: both of its Conv2Plus1D use mid(64, 128) = 230,
        // conv2 too although its input has 128 channels.
        ("layer2.0.conv1.0.0.weight", &[230, 64, 1, 3, 3]),
        ("layer2.0.conv2.0.0.weight", &[230, 128, 1, 3, 3]),
        ("layer2.0.conv2.0.3.weight", &[128, 230, 3, 1, 1]),
        ("layer2.0.conv2.1.running_mean", &[128]),
        ("layer2.1.conv1.0.0.weight", &[288, 128, 1, 3, 3]),
        ("layer2.0.downsample.0.weight", &[128, 64, 1, 1, 1]),
        ("layer2.0.downsample.1.weight", &[128]),
        ("layer4.1.conv2.0.3.weight", &[512, 1152, 3, 1, 1]),
        ("fc.weight", &[400, 512]),
        ("fc.bias", &[400]),
    ];
    for (name, shape) in want {
        assert_eq!(p.get(*name).map(Vec::as_slice), Some(*shape), "{name}");
    }
    assert!(!p.contains_key("layer1.0.downsample.0.weight"));
    // Stem 2 convs + 2 BNs; 8 blocks of 4 convs and 4 BNs; 3 downsamples; fc: as torchvision's state_dict.
    assert_eq!(p.len(), 2 + 2 * 5 + 8 * (4 + 4 * 5) + 3 * (1 + 5) + 2);
}

#[test]
fn ct_sep_params_macs_and_names() {
    let g = models::build("ct-sep", &ModelOptions::default(), &[1, 3, 16, 112, 112]).unwrap();
    // Both counted independently with PyTorch on tools/reference/models/ct_sep.py.
    assert_eq!(g.num_params(), 1_670_273);
    assert_eq!(g.macs(), 2_510_183_936);
    let p = params("ct-sep", &ModelOptions::default(), &[1, 3, 16, 112, 112]);
    let want: &[(&str, &[usize])] = &[
        ("stem.0.weight", &[45, 3, 1, 7, 7]),
        ("stem.3.weight", &[64, 45, 3, 1, 1]),
        ("layer1.0.conv1.depthwise_spatial.weight", &[64, 1, 1, 3, 3]),
        ("layer1.0.conv1.bn_spatial.running_var", &[64]),
        (
            "layer1.0.conv1.depthwise_temporal.weight",
            &[64, 1, 3, 1, 1],
        ),
        ("layer1.0.conv1.pointwise.weight", &[64, 64, 1, 1, 1]),
        ("layer1.0.bn1.weight", &[64]),
        ("layer1.0.bn2.num_batches_tracked", &[1]),
        // The first conv of a stage works at the input width, its pointwise changes it.
        ("layer2.0.conv1.depthwise_spatial.weight", &[64, 1, 1, 3, 3]),
        ("layer2.0.conv1.pointwise.weight", &[128, 64, 1, 1, 1]),
        (
            "layer2.0.conv2.depthwise_temporal.weight",
            &[128, 1, 3, 1, 1],
        ),
        ("layer2.0.downsample.0.weight", &[128, 64, 1, 1, 1]),
        ("layer4.1.conv2.pointwise.weight", &[512, 512, 1, 1, 1]),
        ("fc.weight", &[400, 512]),
    ];
    for (name, shape) in want {
        assert_eq!(p.get(*name).map(Vec::as_slice), Some(*shape), "{name}");
    }
    // Stem; 8 blocks of (3 convs + BN) × 2 + 2 BNs; 3 downsamples; fc.
    assert_eq!(
        p.len(),
        2 + 2 * 5 + 8 * (2 * (3 + 5) + 2 * 5) + 3 * (1 + 5) + 2
    );
}

#[test]
fn options_and_input_shapes() {
    let o = ModelOptions {
        classes: Some(101),
        extra: [("layers".to_string(), "1,1,1,1".to_string())].into(),
        ..Default::default()
    };
    // Any clip length and frame size: the stride-2 stages round up and the pool is adaptive.
    let g = models::build("ct-sep", &o, &[3, 3, 8, 64, 48]).unwrap();
    assert_eq!(g.values[g.outputs[0]].shape, vec![3, 101]);
    assert!(g.params.iter().all(|p| !p.name.starts_with("layer1.1.")));
    let c101 = ModelOptions {
        classes: Some(101),
        ..Default::default()
    };
    let g = models::build("r2plus1d-18", &c101, &[1, 3, 4, 32, 32]).unwrap();
    assert_eq!(g.values[g.outputs[0]].shape, vec![1, 101]);

    let d = ModelOptions {
        dropout: Some(0.5),
        ..Default::default()
    };
    let g = models::build("r2plus1d-18", &d, &[1, 3, 4, 32, 32]).unwrap();
    assert!(g.nodes.iter().any(|n| n.name == "dropout"));

    let err = |model: &str, o: &ModelOptions, shape: &[usize]| {
        models::build(model, o, shape).unwrap_err().to_string()
    };
    let mut bad = ModelOptions::default();
    bad.extra.insert("layers".into(), "2,2,2".into());
    assert!(err("ct-sep", &bad, &[1, 3, 16, 112, 112]).contains("4 block counts"));
    bad.extra.insert("layers".into(), "2,0,2,2".into());
    assert!(err("ct-sep", &bad, &[1, 3, 16, 112, 112]).contains("at least one block"));
    assert!(err("r2plus1d-18", &o, &[1, 3, 16, 112, 112]).contains("unknown option 'layers'"));
    assert!(err(
        "r2plus1d-18",
        &ModelOptions::default(),
        &[1, 16, 3, 112, 112]
    )
    .contains("[B, 3, T, H, W]"));
}

/// A few SGD steps on one small batch lower the loss (everything trainable gets a gradient).
#[test]
fn both_train_on_a_small_clip() {
    for model in ["r2plus1d-18", "ct-sep"] {
        let shape = [2, 3, 4, 32, 32];
        let o = ModelOptions {
            classes: Some(5),
            ..Default::default()
        };
        let mut net =
            Network::new(models::build(model, &o, &shape).unwrap(), Device::Cpu, 0).unwrap();
        fill::fill_network(&net, 7).unwrap();
        net.train();
        let x = fill::fill_input(7, &shape, Device::Cpu).unwrap();
        let mut opt = Sgd::new(
            vec![ParamGroup::new(net.parameters(), 0.0)],
            SgdConfig {
                lr: 0.05,
                momentum: 0.9,
                ..Default::default()
            },
        )
        .unwrap();
        let mut losses = vec![];
        for step in 0..5 {
            opt.zero_grad();
            let loss = ops::cross_entropy(&net.forward(&[&x]).unwrap(), &[1, 3], 0.0).unwrap();
            loss.backward().unwrap();
            if step == 0 {
                for (name, p) in net.parameters() {
                    assert!(p.grad().is_some(), "{model}: no gradient for {name}");
                }
            }
            losses.push(loss.item().unwrap());
            opt.step().unwrap();
        }
        println!("{model}: losses {losses:?}");
        assert!(losses.iter().all(|l| l.is_finite()));
        assert!(losses[4] < 0.5 * losses[0], "{model}: {losses:?}");
    }
}
