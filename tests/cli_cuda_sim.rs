//! The `vidgrad` command line on the CUDA device of the suite (the simulator without a GPU, see
//! tests/common `cuda_device`): two training steps of ECO-Lite on the synthetic set, and `forward`
//! against `--device cpu`. Measured: ~110 s in release mode on 2 shared cores (the training run: two
//! steps of 5 clips of 4×32² and the validation of 10 videos, all simulated).

mod common;

use std::path::Path;

use serde_json::Value;
use vidgrad::exec::Network;
use vidgrad::io::{load_safetensors, save_safetensors, StateDict};
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::Device;

/// `vidgrad ARGS`: (success, stderr).
fn vidgrad(args: &[&str]) -> (bool, String) {
    let (ok, _, err) = common::run_vidgrad(args);
    (ok, err)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vidgrad-cli-cuda-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `vidgrad train` for one epoch of exactly two steps: 10 classes × 2 videos, half held out for
/// validation, so 10 training videos in batches of 5.
#[test]
fn train_two_steps() {
    let Some(device) = common::cuda_device() else {
        return;
    };
    let dir = tmp("train");
    let dev = device.to_string();
    let (ok, err) = vidgrad(&[
        "train",
        "--model",
        "eco-lite",
        "--data",
        "synthetic",
        "--synth-classes",
        "10",
        "--synth-videos",
        "2",
        "--synth-frames",
        "4",
        "--val-ratio",
        "0.5",
        "--frames",
        "4",
        "--size",
        "32",
        "--resize-short",
        "0",
        "--epochs",
        "1",
        "--batch-size",
        "5",
        "--workers",
        "1",
        "--quiet",
        "--device",
        &dev,
        "--out",
        s(&dir),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains(&format!("on {dev}")), "{err}");
    // no --math: CUDA's default, tf32 (src/math_mode.rs)
    assert!(err.contains("math tf32"), "{err}");
    for f in ["last.safetensors", "best.safetensors", "metrics.jsonl"] {
        assert!(dir.join(f).exists(), "{f} not written");
    }
    let lines: Vec<Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<f64> = lines
        .iter()
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect();
    println!("step losses on {dev}: {steps:?}");
    assert_eq!(steps.len(), 2, "{lines:?}");
    // Cross-entropy of 10 classes starts near ln 10 ≈ 2.3; finite and positive is what is asserted.
    assert!(steps.iter().all(|l| l.is_finite() && *l > 0.0), "{steps:?}");
    let epoch = lines
        .iter()
        .find(|v| v["kind"] == "epoch")
        .expect("epoch record");
    assert!(epoch["train_loss"].as_f64().unwrap().is_finite());
    assert!(epoch["val_loss"].as_f64().unwrap().is_finite());
    std::fs::remove_dir_all(&dir).ok();
}

/// `vidgrad forward` on the CUDA device against `--device cpu`, same weights and input.
#[test]
fn forward_matches_cpu() {
    let Some(device) = common::cuda_device() else {
        return;
    };
    let dir = tmp("forward");
    let shape = [2, 4, 3, 32, 32];
    let opts = ModelOptions {
        classes: Some(5),
        ..Default::default()
    };
    let net = Network::new(
        models::build("eco-lite", &opts, &shape).unwrap(),
        Device::Cpu,
        0,
    )
    .unwrap();
    fill::fill_network(&net, 9).unwrap();
    let x = fill::fill_input(9, &shape, Device::Cpu).unwrap();
    let (w, i) = (dir.join("w.safetensors"), dir.join("x.safetensors"));
    save_safetensors(&w, &net.state_dict(), None).unwrap();
    let input: StateDict = [("input".to_string(), x)].into_iter().collect();
    save_safetensors(&i, &input, None).unwrap();
    let mut logits = vec![];
    for dev in ["cpu".to_string(), device.to_string()] {
        let o = dir.join(format!("y-{dev}.safetensors"));
        let (ok, err) = vidgrad(&[
            "forward",
            "--model",
            "eco-lite",
            "--classes",
            "5",
            "--weights",
            s(&w),
            "--input",
            s(&i),
            "--output",
            s(&o),
            "--device",
            &dev,
            // FP32 on both (CUDA's default is tf32)
            "--math",
            "fp32",
        ]);
        assert!(ok, "{dev}: {err}");
        let (y, _) = load_safetensors(&o, Device::Cpu).unwrap();
        assert_eq!(y["logits"].shape(), &[2, 5]);
        logits.push(y["logits"].to_vec().unwrap());
    }
    // Eval-mode ECO-Lite is 23 reduction layers deep (conv, linear) with reductions of at most
    // K = 512·27 (res5's 3×3×3 convolutions): summed in another order each layer differs by ~√K·u
    // relative, and the layers add up to ≤ 23·√K·u ≈ 1.6e-4 of the logits' scale.
    let u = f32::EPSILON / 2.0;
    let tol = 23.0 * ((512 * 27) as f32).sqrt() * u;
    let scale = logits[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = logits[0]
        .iter()
        .zip(&logits[1])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale;
    println!("forward on {device} vs cpu: max|err| / max|logit| {err:.2e} (tol {tol:.1e})");
    assert!(err <= tol, "{err:.3e} > {tol:.1e}");
    std::fs::remove_dir_all(&dir).ok();
}
