//! PySlowFast's ResNet (src/models/slowfast_resnet.rs): seed 000's torchinfo table row by row, parameter
//! counts, forward multiply-adds, options, checkpointing and a few SGD steps. The full-size comparisons
//! against PyTorch (state_dict keys and shapes, logits, loss, gradients) are in tests/models.rs.

use std::path::PathBuf;

use vidgrad::exec::Network;
use vidgrad::graph::Graph;
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::optim::{param_groups_no_decay, Optimizer, Sgd, SgdConfig};
use vidgrad::{ops, Device};

fn fixture_text(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn build(model: &str, classes: usize, extra: &[(&str, &str)], shape: &[usize]) -> Graph {
    let opts = ModelOptions {
        classes: Some(classes),
        dropout: None,
        extra: extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    models::build(model, &opts, shape).unwrap()
}

/// One table row: (name with its tree prefix and depth-idx, input shape, output shape, params).
#[derive(Debug, PartialEq)]
struct Row {
    name: String,
    input: String,
    output: String,
    params: String,
}

/// The rows of a torchinfo-style table (between the header's rule and the next rule, or the end).
fn rows(table: &str) -> Vec<Row> {
    let mut out = vec![];
    let (mut header, mut in_body) = (false, false);
    for line in table.lines() {
        if line.starts_with("Layer (type:depth-idx)") {
            header = true;
            continue;
        }
        if line.starts_with("====") {
            if in_body {
                break;
            }
            in_body = header;
            continue;
        }
        if !in_body || line.trim().is_empty() {
            continue;
        }
        // `summary` marks the rows the fusion pass runs as one op (" [fused k]" after the name; the
        // table's header says so); torchinfo has no such thing, so the mark is not part of the row.
        // Inference and training marks (" [fused k]", " [fused train k]") are blanked one by one.
        let mut unmarked = line.to_string();
        while let Some(at) = unmarked.find(" [fused ") {
            let end = at + unmarked[at..].find(']').expect("a closed fusion mark") + 1;
            unmarked = format!(
                "{}{}{}",
                &unmarked[..at],
                " ".repeat(end - at),
                &unmarked[end..]
            );
        }
        let line = unmarked.as_str();
        let open: Vec<usize> = line.match_indices('[').map(|(i, _)| i).collect();
        let close: Vec<usize> = line.match_indices(']').map(|(i, _)| i).collect();
        assert!(open.len() == 2 && close.len() == 2, "bad row: {line}");
        out.push(Row {
            name: line[..open[0]].trim_end().to_string(),
            input: line[open[0]..=close[0]].to_string(),
            output: line[open[1]..=close[1]].to_string(),
            params: line[close[1] + 1..].trim().to_string(),
        });
    }
    out
}

fn count(s: &str) -> usize {
    if s == "--" {
        0
    } else {
        s.replace(',', "").parse().unwrap()
    }
}

/// Seed 000's table (tests/fixtures/seed000_table.txt, verbatim) is the specification: every row's
/// tree position, type, depth-idx, input and output shape and parameter count. The only difference is
/// the input of the two rows that receive PySlowFast's list of pathways (`ResNet`, `VideoModelStem`):
/// torchinfo prints the one-element list [x] as [1, 16, 3, 8, 224, 224]; the graph takes the tensor.
#[test]
fn seed000_table_row_by_row() {
    let seed = rows(&fixture_text("seed000_table.txt"));
    assert_eq!(seed.len(), 108, "rows in seed 000's table");
    let g = build(
        "c2d-nl-r50",
        2,
        &[("softmax", "true")],
        &[16, 3, 8, 224, 224],
    );
    let ours = rows(&g.summary(3));
    assert_eq!(ours.len(), seed.len(), "row count");
    for (i, (s, o)) in seed.iter().zip(&ours).enumerate() {
        if i < 2 {
            assert_eq!(s.input, "[1, 16, 3, 8, 224, 224]");
            assert_eq!(o.input, "[16, 3, 8, 224, 224]", "row {i} {}", s.name);
            assert_eq!(
                (&s.name, &s.output, &s.params),
                (&o.name, &o.output, &o.params),
                "row {i}"
            );
        } else {
            assert_eq!(s, o, "row {i}");
        }
    }
    let seed_total: usize = seed.iter().map(|r| count(&r.params)).sum();
    assert_eq!(seed_total, 30_870_594);
    assert_eq!(g.num_params(), seed_total);
    // Without the option, the head ends at the projection: logits, no Softmax row.
    let logits = build("c2d-nl-r50", 2, &[], &[16, 3, 8, 224, 224]);
    assert!(!logits.summary(3).contains("Softmax"));
    assert_eq!(logits.values[logits.outputs[0]].shape, vec![16, 2]);
}

/// REFERENCES.md's counts: seed 000's C2D+NL with 2 classes, I3D-R50 and I3D-NL-R50 at 400 classes
/// (with the PyTorch reference's figure for C2D+NL at 400).
#[test]
fn parameter_counts() {
    let s = [1, 3, 8, 224, 224];
    assert_eq!(build("c2d-nl-r50", 2, &[], &s).num_params(), 30_870_594);
    assert_eq!(build("c2d-nl-r50", 400, &[], &s).num_params(), 31_686_096);
    assert_eq!(build("i3d-r50", 400, &[], &s).num_params(), 28_043_472);
    assert_eq!(build("i3d-nl-r50", 400, &[], &s).num_params(), 35_401_936);
    // the presets through options reach the same networks
    let via_opts = build(
        "c2d-nl-r50",
        400,
        &[("preset", "i3d"), ("nonlocal", "false")],
        &s,
    );
    assert_eq!(via_opts.num_params(), 28_043_472);
}

/// Forward multiply-adds for one 8×224² clip equal torch.utils.flop_counter's count on the PyTorch
/// reference (`python tools/reference/models/slowfast_resnet.py`; FLOPs / 2): convolutions, the
/// projection and the non-local blocks' two einsums. REFERENCES.md gives no GMACs for these models.
#[test]
fn forward_macs() {
    let s = [1, 3, 8, 224, 224];
    assert_eq!(build("c2d-nl-r50", 400, &[], &s).macs(), 27_620_900_864);
    assert_eq!(build("i3d-r50", 400, &[], &s).macs(), 28_407_660_544);
    assert_eq!(build("i3d-nl-r50", 400, &[], &s).macs(), 36_535_369_728);
    assert_eq!(build("c2d-nl-r50", 2, &[], &s).macs(), 27_620_085_760);
    // linear in the batch
    let b16 = build("c2d-nl-r50", 2, &[], &[16, 3, 8, 224, 224]).macs();
    assert_eq!(b16, 16 * 27_620_085_760);
}

/// Options: presets, non-local on/off, dropout (a Dropout row only when > 0, as PySlowFast), the
/// softmax head, depth 101, and errors for bad values.
#[test]
fn options_and_errors() {
    let s = [2, 3, 8, 224, 224];
    let g = build("i3d-r50", 400, &[], &s);
    let sum = g.summary(3);
    assert!(!sum.contains("Nonlocal"));
    assert!(sum.contains("Dropout"), "PySlowFast's default dropout 0.5");
    assert_eq!(g.params[0].shape, vec![64, 3, 5, 7, 7], "I3D stem kernel");
    let no_drop = models::build(
        "i3d-r50",
        &ModelOptions {
            dropout: Some(0.0),
            ..Default::default()
        },
        &s,
    )
    .unwrap();
    assert!(!no_drop.summary(3).contains("Dropout"));
    // I3D temporal kernels of the `a` convs: res3 [3,1,3,1], res5 [1,3,1]
    let kt = |g: &Graph, name: &str| {
        g.params
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name}"))
            .shape[2]
    };
    assert_eq!(
        (0..4)
            .map(|i| kt(&g, &format!("s3.pathway0_res{i}.branch2.a.weight")))
            .collect::<Vec<_>>(),
        vec![3, 1, 3, 1]
    );
    assert_eq!(
        (0..3)
            .map(|i| kt(&g, &format!("s5.pathway0_res{i}.branch2.a.weight")))
            .collect::<Vec<_>>(),
        vec![1, 3, 1]
    );
    let r101 = build("i3d-nl-r50", 400, &[("depth", "101")], &s);
    assert!(r101
        .params
        .iter()
        .any(|p| p.name.starts_with("s4.pathway0_res22.")));
    // T 8 → pathway0_pool → 4; the head pools the whole res5 map at other sizes too
    let small = build("c2d-nl-r50", 5, &[], &[1, 3, 4, 96, 128]);
    assert_eq!(small.values[small.outputs[0]].shape, vec![1, 5]);

    let err = |model: &str, extra: &[(&str, &str)], shape: &[usize]| {
        let opts = ModelOptions {
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        models::build(model, &opts, shape).unwrap_err().to_string()
    };
    assert!(err("c2d-nl-r50", &[("preset", "x3d")], &s).contains("preset"));
    assert!(err("c2d-nl-r50", &[("nonlcal", "true")], &s).contains("unknown option"));
    assert!(err("c2d-nl-r50", &[("depth", "34")], &s).contains("depth"));
    assert!(err("c2d-nl-r50", &[], &[2, 3, 7, 224, 224]).contains("even"));
    assert!(err("c2d-nl-r50", &[], &[2, 8, 3, 224, 224]).contains("3 channels"));
}

/// With `softmax=true` the head ends with PySlowFast's inference activation: rows sum to 1.
#[test]
fn softmax_head() {
    let g = build("c2d-nl-r50", 7, &[("softmax", "true")], &[2, 3, 4, 64, 64]);
    let mut net = Network::new(g, Device::Cpu, 3).unwrap();
    fill::fill_network(&net, 3).unwrap();
    net.eval();
    let x = fill::fill_input(3, &[2, 3, 4, 64, 64], Device::Cpu).unwrap();
    let y = vidgrad::no_grad(|| net.forward(&[&x]))
        .unwrap()
        .to_vec()
        .unwrap();
    for row in y.chunks(7) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
}

/// `checkpoint=true` (PySlowFast's ACT_CHECKPOINT: s1 and s2 recomputed in backward) gives the same
/// loss and gradients.
#[test]
fn checkpointing_gives_the_same_gradients() {
    let shape = [2, 3, 4, 64, 64];
    let run = |ck: &str| {
        let g = build(
            "i3d-nl-r50",
            3,
            &[("checkpoint", ck), ("softmax", "false")],
            &shape,
        );
        let mut net = Network::new(g, Device::Cpu, 1).unwrap();
        fill::fill_network(&net, 11).unwrap();
        net.train();
        let x = fill::fill_input(11, &shape, Device::Cpu).unwrap();
        let logits = net.forward(&[&x]).unwrap();
        let loss = ops::cross_entropy(&logits, &[0, 2], 0.0).unwrap();
        loss.backward().unwrap();
        let grad = |n: &str| net.param(n).unwrap().grad().unwrap().to_vec().unwrap();
        (
            loss.to_vec().unwrap()[0],
            grad("s1.pathway0_stem.conv.weight"),
            grad("s2.pathway0_res2.branch2.b.weight"),
            net.param("s2.pathway0_res0.branch1_bn.running_var")
                .unwrap()
                .to_vec()
                .unwrap(),
        )
    };
    let (a, b) = (run("false"), run("true"));
    assert_eq!(a.0, b.0);
    assert_eq!(a.1, b.1);
    assert_eq!(a.2, b.2);
    assert_eq!(a.3, b.3, "running statistics updated once");
}

/// Trainable from PySlowFast's initialisation: a few SGD steps on one small batch lower the loss.
#[test]
fn sgd_steps_lower_the_loss() {
    let shape = [2, 3, 4, 64, 64];
    let g = models::build(
        "c2d-nl-r50",
        &ModelOptions {
            classes: Some(2),
            dropout: Some(0.0),
            ..Default::default()
        },
        &shape,
    )
    .unwrap();
    let mut net = Network::new(g, Device::Cpu, 5).unwrap();
    net.train();
    let x = fill::fill_input(5, &shape, Device::Cpu).unwrap();
    let groups = param_groups_no_decay(net.parameters(), 1e-4);
    let mut sgd = Sgd::new(
        groups,
        SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..Default::default()
        },
    )
    .unwrap();
    let mut losses = vec![];
    for _ in 0..4 {
        net.zero_grad();
        let loss = ops::cross_entropy(&net.forward(&[&x]).unwrap(), &[0, 1], 0.0).unwrap();
        loss.backward().unwrap();
        losses.push(loss.to_vec().unwrap()[0]);
        sgd.step().unwrap();
    }
    assert!(losses[3] < losses[0] * 0.9, "{losses:?}");
}
