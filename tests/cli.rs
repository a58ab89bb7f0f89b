//! The `vidgrad` command line as a user runs it.

mod common;

use vidgrad::exec::Network;
use vidgrad::io::{load_safetensors, save_safetensors, StateDict};
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::Device;

use common::run_vidgrad as vidgrad;

#[test]
fn models_summary_and_graph() {
    let (ok, out, _) = vidgrad(&["models"]);
    assert!(ok && out.contains("eco-lite"));
    let (ok, out, err) = vidgrad(&[
        "summary",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,16,3,224,224",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Total params: 37,503,856") && out.contains("Forward mult-adds (G): 46.49"),
        "{out}"
    );
    // Fused chains are marked (fusion is on by default), inference and training apart; --no-fuse
    // marks nothing. ECO-Lite's 3-D part has batch norm → ReLU after each residual add.
    assert!(
        out.contains("Conv2d: 3-1 [fused 1]")
            && out.contains("30 chains: 24 × conv+bn(folded)+relu, 6 × bn+relu")
            && out.contains("BatchNorm2d: 3-13 [fused 4] [fused train 4] [16, 64, 28, 28]")
            && out.contains("Fused in training (rows marked [fused train k], k = chain): 30 chains: 30 × bn+relu"),
        "{out}"
    );
    let (ok, out, err) = vidgrad(&[
        "--no-fuse",
        "summary",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,16,3,224,224",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Fused in inference: nothing")
            && out.contains("Fused in training: nothing")
            && !out.contains("[fused"),
        "{out}"
    );
    let (ok, out, _) = vidgrad(&[
        "graph",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,4,3,64,64",
        "--classes",
        "5",
    ]);
    assert!(ok && out.starts_with("digraph") && out.contains("fc_final"));
    assert!(
        out.contains("fused 1: conv+bn(folded)+relu\", style=filled"),
        "{out}"
    );
    let (ok, _, err) = vidgrad(&["summary", "--model", "nope", "--input-shape", "1,2,3"]);
    assert!(!ok && err.contains("unknown model 'nope'"), "{err}");
    let (ok, _, err) = vidgrad(&[
        "summary",
        "--model",
        "eco-lite",
        "--input-shape",
        "1,6,3,64,64",
    ]);
    assert!(!ok && err.contains("multiple of 4"), "{err}");
}

#[test]
fn forward_writes_the_networks_logits() {
    let dir = std::env::temp_dir().join(format!("vidgrad-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shape = [2, 4, 3, 64, 64];
    let opts = ModelOptions {
        classes: Some(5),
        ..Default::default()
    };
    let mut net = Network::new(
        models::build("eco-lite", &opts, &shape).unwrap(),
        Device::Cpu,
        0,
    )
    .unwrap();
    fill::fill_network(&net, 9).unwrap();
    let x = fill::fill_input(9, &shape, Device::Cpu).unwrap();
    let (w, i, o) = (
        dir.join("w.safetensors"),
        dir.join("x.safetensors"),
        dir.join("y.safetensors"),
    );
    save_safetensors(&w, &net.state_dict(), None).unwrap();
    save_safetensors(
        &i,
        &[("input".to_string(), x.clone())]
            .into_iter()
            .collect::<StateDict>(),
        None,
    )
    .unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = [
        "forward",
        "--model",
        "eco-lite",
        "--classes",
        "5",
        "--weights",
        &s(&w),
        "--input",
        &s(&i),
        "--output",
        &s(&o),
        "--device",
        "cpu",
    ];
    let (ok, _, err) = vidgrad(&args);
    assert!(ok, "{err}");
    net.eval();
    let want = vidgrad::no_grad(|| net.forward(&[&x]))
        .unwrap()
        .to_vec()
        .unwrap();
    let (got, _) = load_safetensors(&o, Device::Cpu).unwrap();
    assert_eq!(got["logits"].shape(), &[2, 5]);
    assert_eq!(got["logits"].to_vec().unwrap(), want);

    // Weights missing a key: an error naming it.
    let mut sd = net.state_dict();
    sd.remove("fc_final.bias");
    save_safetensors(&w, &sd, None).unwrap();
    let (ok, _, err) = vidgrad(&args);
    assert!(!ok && err.contains("fc_final.bias"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// NaN weights (issue 14 §5): `predict` and `eval` fail naming the non-finite logits instead of
/// printing "NaN%" with exit 0; `--check-finite` names the first layer and the parameter; `forward`
/// writes NaN logits for an all-NaN input (as PyTorch) with a warning, and `--check-finite` names the
/// input.
#[test]
fn non_finite_logits_are_errors_and_check_finite_names_the_layer() {
    let dir = std::env::temp_dir().join(format!("vidgrad-cli-nan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let shape = [1, 4, 3, 32, 32];
    let opts = ModelOptions {
        classes: Some(2),
        ..Default::default()
    };
    let net = Network::new(
        models::build("eco-lite", &opts, &shape).unwrap(),
        Device::Cpu,
        0,
    )
    .unwrap();
    let mut sd = net.state_dict();
    let fc = &sd["fc_final.weight"];
    let mut v = fc.to_vec().unwrap();
    v[3] = f32::NAN;
    let fc = vidgrad::Tensor::from_vec(v, fc.shape(), Device::Cpu).unwrap();
    sd.insert("fc_final.weight".into(), fc);
    let w = dir.join("w.safetensors");
    save_safetensors(&w, &sd, None).unwrap();
    let ws = s(&w);
    let clip = [
        "--model",
        "eco-lite",
        "--frames",
        "4",
        "--size",
        "32",
        "--resize-short",
        "0",
        "--device",
        "cpu",
    ];

    // eval on the built-in synthetic set.
    let mut args = vec!["eval", "--weights", &ws];
    args.extend(clip);
    let synth = [
        "--data",
        "synthetic",
        "--synth-classes",
        "2",
        "--synth-videos",
        "4",
        "--synth-frames",
        "4",
        "--val-ratio",
        "0.5",
    ];
    args.extend(synth);
    let (ok, out, err) = vidgrad(&args);
    assert!(
        !ok && err.contains("logits") && err.contains("not finite"),
        "{out}\n{err}"
    );
    assert!(!out.contains("NaN"), "{out}");
    args.push("--check-finite");
    let (ok, _, err) = vidgrad(&args);
    assert!(
        !ok && err.contains("node 'fc_final'")
            && err.contains("parameter 'fc_final.weight' holds 1 NaN"),
        "{err}"
    );

    // predict on frame folders.
    let data = dir.join("data");
    let (ok, _, err) = vidgrad(&[
        "dataset",
        "synth",
        "--out",
        &s(&data),
        "--classes",
        "2",
        "--videos-per-class",
        "1",
        "--frames",
        "4",
        "--size",
        "32",
    ]);
    assert!(ok, "{err}");
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "a\nb\n").unwrap();
    let mut args = vec!["predict", "--weights", &ws];
    args.extend(clip);
    let (d, l) = (s(&data), s(&labels));
    args.extend(["--labels", &l, &d]);
    let (ok, out, err) = vidgrad(&args);
    assert!(
        !ok && err.contains("logits") && err.contains("(view 0 of 1) are not finite"),
        "{out}\n{err}"
    );
    assert!(!out.contains("NaN%"), "{out}");

    // forward: an all-NaN input gives NaN logits (not finite ones), with a warning.
    let x = vidgrad::Tensor::full(&shape, f32::NAN, Device::Cpu).unwrap();
    let (i, o) = (dir.join("x.safetensors"), dir.join("y.safetensors"));
    save_safetensors(
        &i,
        &[("input".to_string(), x)]
            .into_iter()
            .collect::<StateDict>(),
        None,
    )
    .unwrap();
    save_safetensors(&w, &net.state_dict(), None).unwrap();
    let mut args = vec![
        "forward".to_string(),
        "--model".into(),
        "eco-lite".into(),
        "--classes".into(),
        "2".into(),
        "--weights".into(),
        s(&w),
        "--input".into(),
        s(&i),
        "--output".into(),
        s(&o),
        "--device".into(),
        "cpu".into(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = vidgrad(&argv);
    assert!(
        ok && err.contains("2 of the 2 logits are not finite"),
        "{err}"
    );
    let (got, _) = load_safetensors(&o, Device::Cpu).unwrap();
    assert!(got["logits"].to_vec().unwrap().iter().all(|v| v.is_nan()));
    args.push("--check-finite".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = vidgrad(&argv);
    assert!(!ok && err.contains("input 0 [1, 4, 3, 32, 32]"), "{err}");

    // train: a step at lr 1e30 blows the weights up; --check-finite names the first layer whose
    // output overflows in the next step (without it, the loss check stops the run).
    let run = s(&dir.join("run"));
    let mut args = vec!["train"];
    args.extend(clip);
    args.extend(synth);
    args.extend([
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "1",
        "--quiet",
        "--lr",
        "1e30",
        "--out",
        &run,
    ]);
    let (ok, _, err) = vidgrad(&args);
    assert!(!ok && err.contains("the loss is NaN"), "{err}");
    // (the failed run left its metrics: replacing them needs --overwrite)
    args.extend(["--check-finite", "--overwrite"]);
    let (ok, _, err) = vidgrad(&args);
    assert!(
        !ok && err.contains("check-finite: the output of node 'eco_2d.")
            && err.contains("its inputs and parameters are finite"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
