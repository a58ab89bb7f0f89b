//! Every model of the zoo at its full input size against PyTorch: logits in eval and train mode, the
//! loss, and the gradients of named parameters after cross-entropy backward. Fixtures come from
//! tools/reference/gen_model_fixtures.py (float64 PyTorch, weights and inputs from the shared seeded
//! generator of src/models/fill.rs, so the fixtures hold no weights). One test per fixture file.

mod common;

use std::path::PathBuf;

use safetensors::SafeTensors;
use serde_json::Value;
use vidgrad::exec::Network;
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::{ops, Device};

/// Error measure: max |ours − PyTorch| / max |PyTorch| over a tensor, against PyTorch in float64.
/// Tolerance: the larger of a floor (2e-3 for outputs, 5e-3 for gradients) and 3× the error PyTorch's own
/// float32 makes on the same case (stored in the fixture: the largest of three runs, as given and with
/// every weight and the input nudged by one ulp, since one run can land low by luck): some gradients of
/// deep networks with train-mode batch norm are ill-conditioned, and no float32 implementation can do
/// better than that (gen_model_fixtures.py, F32_NUDGE_SEEDS).
const LOGITS_TOL: f32 = 2e-3;
const GRAD_TOL: f32 = 5e-3;
const F32_FACTOR: f32 = 3.0;

/// A fixture tensor: name, shape, values.
type Named = (String, Vec<usize>, Vec<f32>);

fn fixture(name: &str) -> (Value, Vec<Named>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/models/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta: Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["case"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, v.shape().to_vec(), data)
        })
        .collect();
    (meta, tensors)
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

fn check_model(case: &str) {
    check_model_on(case, Device::Cpu);
}

fn check_model_on(case: &str, device: Device) {
    println!("== {case} on {device}");
    let (meta, tensors) = fixture(case);
    let get = |n: &str| {
        tensors
            .iter()
            .find(|t| t.0 == n)
            .unwrap_or_else(|| panic!("{case}: no {n}"))
    };
    let shape: Vec<usize> = meta["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let o = &meta["options"];
    let opts = ModelOptions {
        classes: o
            .get("classes")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize),
        dropout: o.get("dropout").and_then(|v| v.as_f64()).map(|v| v as f32),
        extra: o
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "classes" && *k != "dropout")
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
    };
    let seed = meta["seed"].as_u64().unwrap();
    let labels: Vec<usize> = meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut graph = models::build(meta["model"].as_str().unwrap(), &opts, &shape).unwrap();
    // `bn_calibration` (see calibrate_bn in gen_model_fixtures.py): running statistics := those of the
    // seed + 1 input, by one train-mode pass with every batch norm's momentum set to 1 (kept at 1 after:
    // only the outputs below are compared, not the later running statistics).
    let calibrate = meta["bn_calibration"].as_bool().unwrap_or(false);
    if calibrate {
        for n in &mut graph.nodes {
            if let vidgrad::graph::Op::BatchNorm { momentum, .. } = &mut n.op {
                *momentum = 1.0;
            }
        }
    }
    let mut net = Network::new(graph, device, 0).unwrap();
    // The PyTorch module's state_dict, key for key and shape for shape (PyTorch's 0-d
    // num_batches_tracked is [1] here, as vidgrad::io loads it).
    let ours: std::collections::BTreeMap<String, Vec<usize>> = net
        .state_dict()
        .iter()
        .map(|(k, v)| (k.clone(), v.shape().to_vec()))
        .collect();
    let theirs: std::collections::BTreeMap<String, Vec<usize>> = meta["state_dict"]
        .as_object()
        .expect("state_dict in fixture metadata")
        .iter()
        .map(|(k, v)| {
            let s: Vec<usize> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (k.clone(), if s.is_empty() { vec![1] } else { s })
        })
        .collect();
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let reshaped: Vec<_> = theirs
        .iter()
        .filter(|(k, s)| ours.get(*k).is_some_and(|o| o != *s))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && reshaped.is_empty(),
        "{case}: state_dict differs from PyTorch's: missing {missing:?}, extra {extra:?}, shapes {reshaped:?}"
    );
    fill::fill_network(&net, seed).unwrap();
    let x = fill::fill_input(seed, &shape, device).unwrap();
    if calibrate {
        net.train();
        let xc = fill::fill_input(seed + 1, &shape, device).unwrap();
        vidgrad::no_grad(|| net.forward(&[&xc])).unwrap();
    }

    let mut failures = vec![];
    let f32_err = |key: &str| meta["pytorch_f32_err"][key].as_f64().unwrap_or(0.0) as f32;
    let mut report = |what: &str, key: &str, err: f32, floor: f32| {
        let pt = f32_err(key);
        let tol = floor.max(F32_FACTOR * pt);
        println!("  {case} {what:<60} rel err {err:.2e} (PyTorch f32 {pt:.1e}, tol {tol:.1e})");
        if err.is_nan() || err > tol {
            failures.push(format!("{what}: {err:.3e} > {tol:.0e}"));
        }
    };
    net.eval();
    let eval = net.forward(&[&x]).unwrap();
    report(
        "logits (eval)",
        "logits_eval",
        rel_err(&eval.to_vec().unwrap(), &get("logits_eval").2),
        LOGITS_TOL,
    );

    net.train();
    let logits = net.forward(&[&x]).unwrap();
    report(
        "logits (train)",
        "logits_train",
        rel_err(&logits.to_vec().unwrap(), &get("logits_train").2),
        LOGITS_TOL,
    );
    let loss = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
    report(
        "loss (train)",
        "loss_train",
        rel_err(&loss.to_vec().unwrap(), &get("loss_train").2),
        LOGITS_TOL,
    );
    loss.backward().unwrap();
    let samples = meta["grad_samples"].as_u64().unwrap() as usize;
    for g in meta["grads"].as_array().unwrap() {
        let name = g.as_str().unwrap();
        let grad = net
            .param(name)
            .unwrap_or_else(|| panic!("{case}: no parameter {name}"))
            .grad()
            .unwrap()
            .to_vec()
            .unwrap();
        let stride = grad.len().div_ceil(samples);
        let picked: Vec<f32> = grad.iter().step_by(stride).copied().collect();
        let key = format!("grad.{name}");
        report(
            &format!("grad {name}"),
            &key,
            rel_err(&picked, &get(&key).2),
            GRAD_TOL,
        );
    }
    assert!(failures.is_empty(), "{case}: {failures:?}");
}

#[test]
fn eco_lite_matches_pytorch() {
    check_model("eco-lite");
}

#[test]
fn r2plus1d_18_matches_pytorch() {
    check_model("r2plus1d-18");
}

#[test]
fn ct_sep_matches_pytorch() {
    check_model("ct-sep");
}

#[test]
fn c2d_nl_r50_matches_pytorch() {
    check_model("c2d-nl-r50");
}

#[test]
fn i3d_nl_r50_matches_pytorch() {
    check_model("i3d-nl-r50");
}

#[test]
fn i3d_r50_matches_pytorch() {
    check_model("i3d-r50");
}

// mmaction2 ResNet3d + I3DHead (seed 004): I3D-R50 at the config's 32×224² clip, non-local variants
// (embedded gaussian with with_cp, dot product) and two nets through the remaining options.
#[test]
fn resnet3d_i3d_r50_matches_pytorch() {
    check_model("resnet3d-i3d-r50");
}

#[test]
fn resnet3d_i3d_nl_eg_cp_matches_pytorch() {
    check_model("resnet3d-i3d-nl-eg-cp");
}

#[test]
fn resnet3d_i3d_nl_dot_matches_pytorch() {
    check_model("resnet3d-i3d-nl-dot");
}

#[test]
fn resnet3d_r18_options_matches_pytorch() {
    check_model("resnet3d-r18-options");
}

#[test]
fn resnet3d_r50_3x3x3_caffe_matches_pytorch() {
    check_model("resnet3d-r50-3x3x3-caffe");
}

// The same full-size fixtures on the CUDA device (the simulator without a GPU: tests/common
// `cuda_device`). The tolerances are those above: relative to float64 PyTorch, at PyTorch's own float32
// error level, which the CUDA kernels' different summation orders stay within.
//
// On the simulator they run one at a time (it uses every core already) with `SimChecks::Bounds`: every
// global access is still checked against the live buffers — what matters at real shapes, where index
// arithmetic is largest — while the racecheck shadow, which depends on the kernels' block structure and
// not on tensor sizes, is exercised at small shapes by tests/cuda_ops.rs and tests/models_cuda.rs. All
// eleven run in CI where the simulator is fast enough (below). The six marked `big` (130–370 G
// multiply-adds each for eval, train and backward together; 10–13 CPU minutes each on the simulator
// of a Zen 5, about five times that on a 2 GHz Zen 1) can be skipped for a quick local run with
// VIDGRAD_SIM_FULL=0; a GPU runs them in seconds (docs/GPU.md). CI sets VIDGRAD_SIM_FULL=0 itself
// where the simulator is too slow for them to fit its time limit (.ci/run measures it first;
// docs/CUDA-SIM.md, "CI and slow machines").
fn check_model_on_cuda(case: &str, big: bool) {
    let Some(device) = common::cuda_device() else {
        return;
    };
    if device == Device::CudaSim {
        if big && std::env::var("VIDGRAD_SIM_FULL").as_deref() == Ok("0") {
            println!(
                "skipped on the simulator: {case} is a big fixture and VIDGRAD_SIM_FULL=0 (its CPU test \
                 still runs)"
            );
            return;
        }
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let sim = vidgrad::backend::cuda::sim::Simulator::get().unwrap();
        sim.set_checks(vidgrad::backend::cuda::sim::SimChecks::Bounds);
        check_model_on(case, device);
        return;
    }
    check_model_on(case, device);
}

macro_rules! on_cuda {
    ($($test:ident => $case:literal, $big:literal;)*) => {$(
        #[test]
        fn $test() {
            check_model_on_cuda($case, $big);
        }
    )*};
}
on_cuda! {
    eco_lite_matches_pytorch_on_cuda => "eco-lite", true;
    r2plus1d_18_matches_pytorch_on_cuda => "r2plus1d-18", true;
    ct_sep_matches_pytorch_on_cuda => "ct-sep", false;
    c2d_nl_r50_matches_pytorch_on_cuda => "c2d-nl-r50", true;
    i3d_nl_r50_matches_pytorch_on_cuda => "i3d-nl-r50", true;
    i3d_r50_matches_pytorch_on_cuda => "i3d-r50", true;
    resnet3d_i3d_r50_matches_pytorch_on_cuda => "resnet3d-i3d-r50", true;
    resnet3d_i3d_nl_eg_cp_matches_pytorch_on_cuda => "resnet3d-i3d-nl-eg-cp", false;
    resnet3d_i3d_nl_dot_matches_pytorch_on_cuda => "resnet3d-i3d-nl-dot", false;
    resnet3d_r18_options_matches_pytorch_on_cuda => "resnet3d-r18-options", false;
    resnet3d_r50_3x3x3_caffe_matches_pytorch_on_cuda => "resnet3d-r50-3x3x3-caffe", false;
}

/// The shared weight generator agrees with tools/reference/fill.py (values printed by it).
#[test]
fn fill_matches_python() {
    let w = fill::fill_values(5, "a.conv.weight", &[2, 3, 3]);
    assert_eq!(&w[..3], &[-0.4787439, -0.3057891, 0.1588511]);
    assert_eq!(
        fill::fill_values(5, "bn.running_var", &[3]),
        vec![0.76754117, 0.8985679, 1.1928768]
    );
}
