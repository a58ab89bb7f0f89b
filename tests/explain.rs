//! 3D Grad-CAM (src/explain): against PyTorch hooks, on every zoo model, its error cases, the
//! `vidgrad explain` command, and on the synthetic action set (the heat lies on the moving object).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use safetensors::SafeTensors;
use serde_json::Value;
use vidgrad::data::{self, ClipSpec, CropMode, Dataset, Layout, Normalization, SynthConfig};
use vidgrad::exec::Network;
use vidgrad::explain::{self, grad_cam};
use vidgrad::graph::{BatchNorm, Conv, GraphBuilder, Linear};
use vidgrad::models::{self, fill, ModelOptions};
use vidgrad::ops::PoolParams;
use vidgrad::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
use vidgrad::{ops, Device, Tensor};

/// Tolerance on the normalised cam (values in [0, 1]): max |ours − PyTorch float64| ≤ the larger of
/// CAM_TOL and 10× PyTorch's own float32 error on the case (stored in the fixture, 4e-7 … 2e-6).
/// Logits and the cam at feature resolution: max |ours − PyTorch| / max |PyTorch| ≤ REL_TOL.
const CAM_TOL: f32 = 1e-4;
const F32_FACTOR: f32 = 10.0;
const REL_TOL: f32 = 1e-4;

struct Case {
    name: String,
    meta: Value,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

fn fixture() -> Vec<Case> {
    let path = common::fixture_root().join("tests/fixtures/explain/gradcam.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Value = serde_json::from_str(&header.metadata().as_ref().unwrap()["cases"]).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let all: Vec<(String, Vec<usize>, Vec<f32>)> = st
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
    cases
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, meta)| Case {
            name: name.clone(),
            meta: meta.clone(),
            tensors: all
                .iter()
                .filter_map(|(n, s, d)| {
                    n.strip_prefix(&format!("{name}."))
                        .map(|k| (k.to_string(), s.clone(), d.clone()))
                })
                .collect(),
        })
        .collect()
}

impl Case {
    fn get(&self, k: &str) -> (&[usize], &[f32]) {
        let t = self
            .tensors
            .iter()
            .find(|t| t.0 == k)
            .unwrap_or_else(|| panic!("{}: no {k}", self.name));
        (&t.1, &t.2)
    }
}

fn options(o: &Value) -> ModelOptions {
    ModelOptions {
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
                let s = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                (k.clone(), s)
            })
            .collect(),
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    max_abs(a, b) / b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12)
}

/// A zoo model with the shared seeded weights, in eval mode.
fn seeded(model: &str, opts: &ModelOptions, shape: &[usize], seed: u64, device: Device) -> Network {
    let graph = models::build(model, opts, shape).unwrap();
    let mut net = Network::new(graph, device, 0).unwrap();
    fill::fill_network(&net, seed).unwrap();
    net.eval();
    net
}

fn layout(shape: &[usize]) -> Layout {
    if shape[2] == 3 {
        Layout::BTCHW
    } else {
        Layout::BCTHW
    }
}

#[test]
fn gradcam_matches_pytorch_hooks() {
    common::on_devices(|| {
        let device = common::device();
        for case in fixture() {
            let m = &case.meta;
            let shape: Vec<usize> = m["input_shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let seed = m["seed"].as_u64().unwrap();
            let model = m["model"].as_str().unwrap();
            let net = seeded(model, &options(&m["options"]), &shape, seed, device);
            let x = fill::fill_input(seed, &shape, device).unwrap();
            let want_class = m["class"].as_u64().unwrap() as usize;
            let given = m["class_given"].as_bool().unwrap().then_some(want_class);
            let layer = m["layer"].as_str().unwrap();
            let cam = grad_cam(&net, &x, layout(&shape), layer, given).unwrap();
            assert_eq!(cam.class, want_class, "{}: predicted class", case.name);
            let (cs, want_cam) = case.get("cam");
            assert_eq!(&cam.size[..], cs, "{}", case.name);
            let (fs, want_f) = case.get("cam_features");
            assert_eq!(&cam.feature_shape[1..], fs, "{}", case.name);
            let e_cam = max_abs(&cam.cam, want_cam);
            let e_f = rel(&cam.cam_features, want_f);
            let e_logits = rel(&cam.logits, case.get("logits").1);
            let f32_err = m["pytorch_f32_err"].as_f64().unwrap() as f32;
            let tol = CAM_TOL.max(F32_FACTOR * f32_err);
            println!(
                "{:<22} {layer:<20} A {:?}: cam max abs err {e_cam:.2e} (tol {tol:.1e}; PyTorch f32 {f32_err:.1e}), \
                 cam at feature resolution rel {e_f:.2e}, logits rel {e_logits:.2e}",
                case.name, cam.feature_shape
            );
            assert!(e_cam <= tol, "{}: cam error {e_cam} > {tol}", case.name);
            assert!(
                e_f <= REL_TOL,
                "{}: feature-resolution cam error {e_f}",
                case.name
            );
            assert!(
                e_logits <= REL_TOL,
                "{}: logits error {e_logits}",
                case.name
            );
            // normalised: spans [0, 1]
            let (lo, hi) = cam
                .cam
                .iter()
                .fold((1f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(
                lo == 0.0 && (hi - 1.0).abs() < 1e-6,
                "{}: range {lo}..{hi}",
                case.name
            );
        }
    });
}

/// Small inputs for every zoo model (native layout).
fn zoo_input(model: &str) -> Vec<usize> {
    match model {
        "eco-lite" => vec![1, 8, 3, 64, 64],
        _ => vec![1, 3, 8, 32, 32],
    }
}

#[test]
fn every_zoo_model_default_layer() {
    common::on_devices(|| {
        let device = common::device();
        for (model, _) in models::MODELS {
            let t0 = Instant::now();
            let shape = zoo_input(model);
            let opts = ModelOptions {
                classes: Some(6),
                dropout: Some(0.0),
                ..Default::default()
            };
            let net = seeded(model, &opts, &shape, 11, device);
            let layer = explain::default_layer(model).unwrap();
            let v = net
                .graph()
                .value_by_name(layer)
                .unwrap_or_else(|| panic!("{model}: no {layer}"));
            assert_eq!(
                net.graph().values[v].shape.len(),
                5,
                "{model}: {layer} is not 5-D"
            );
            let x = fill::fill_input(12, &shape, device).unwrap();
            let before: Vec<Vec<f32>> = net
                .state_dict()
                .values()
                .map(|t| t.to_vec().unwrap())
                .collect();
            let cam =
                grad_cam(&net, &x, models::native_layout(model).unwrap(), layer, None).unwrap();
            assert_eq!(cam.cam.len(), 8 * shape[3] * shape[4]);
            assert!(cam.cam.iter().all(|v| (0.0..=1.0).contains(v)), "{model}");
            assert!(
                cam.cam.contains(&1.0),
                "{model}: cam not normalised (flat?)"
            );
            // no side effects: no parameter gradients, parameters and buffers unchanged, mode kept
            assert!(
                net.parameters().iter().all(|(_, p)| p.grad().is_none()),
                "{model}"
            );
            let after: Vec<Vec<f32>> = net
                .state_dict()
                .values()
                .map(|t| t.to_vec().unwrap())
                .collect();
            assert!(before == after, "{model}: state changed");
            assert!(!net.is_training());
            // the same logits as a plain inference forward
            let y = vidgrad::no_grad(|| net.forward(&[&x]))
                .unwrap()
                .to_vec()
                .unwrap();
            assert!(
                rel(&cam.logits, &y) < 1e-5,
                "{model}: logits differ from forward"
            );
            println!(
                "{model:<12} {layer:<16} A {:?} → cam {:?}, class {}, {:.2} s",
                cam.feature_shape,
                cam.size,
                cam.class,
                t0.elapsed().as_secs_f32()
            );
        }
    });
}

#[test]
fn softmax_head_explains_the_logit() {
    // PySlowFast's inference softmax (`--opt softmax=true`): the cam uses the pre-softmax logit, so it
    // is the same as without the softmax.
    let shape = [1, 3, 8, 32, 32];
    let mk = |softmax: bool| {
        let mut o = ModelOptions {
            classes: Some(5),
            dropout: Some(0.0),
            ..Default::default()
        };
        o.extra.insert("softmax".into(), softmax.to_string());
        seeded("i3d-r50", &o, &shape, 21, Device::Cpu)
    };
    let x = fill::fill_input(22, &shape, Device::Cpu).unwrap();
    let a = grad_cam(&mk(false), &x, Layout::BCTHW, "s5", Some(1)).unwrap();
    let b = grad_cam(&mk(true), &x, Layout::BCTHW, "s5", Some(1)).unwrap();
    assert!(max_abs(&a.cam, &b.cam) < 1e-6 && max_abs(&a.logits, &b.logits) < 1e-6);
}

#[test]
fn layer_and_class_errors() {
    let shape = [1, 3, 8, 32, 32];
    let opts = ModelOptions {
        classes: Some(4),
        dropout: Some(0.0),
        ..Default::default()
    };
    let net = seeded("r2plus1d-18", &opts, &shape, 5, Device::Cpu);
    let x = fill::fill_input(6, &shape, Device::Cpu).unwrap();
    let err = |layer: &str, class: Option<usize>| {
        grad_cam(&net, &x, Layout::BCTHW, layer, class)
            .unwrap_err()
            .to_string()
    };
    let e = err("layer9", None);
    assert!(
        e.contains("no node or module named 'layer9'") && e.contains("layer4"),
        "{e}"
    );
    let e = err("fc", None);
    assert!(e.contains("needs a 5-D"), "{e}");
    let e = err("layer4", Some(4));
    assert!(
        e.contains("class 4 is out of range") && e.contains("4 classes"),
        "{e}"
    );
    let e = grad_cam(
        &net,
        &Tensor::zeros(&[2, 3, 8, 32, 32], Device::Cpu).unwrap(),
        Layout::BCTHW,
        "layer4",
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("one clip"), "{e}");
    // a 4-D map of a [B, 3, T, H, W] model: a 2D (per-image) map
    let mut g = GraphBuilder::new("Frames2d");
    let xin = g.input("input", &[1, 3, 4, 16, 16]).unwrap();
    let y = g.permute(xin, &[0, 2, 1, 3, 4]).unwrap();
    let y = g.reshape(y, &[4, 3, 16, 16]).unwrap();
    let y = g
        .conv("conv2d", y, Conv::new(8, &[3, 3]).padding(&[1, 1]))
        .unwrap();
    let y = g.adaptive_avg_pool("pool", y, &[1, 1]).unwrap();
    let y = g.reshape(y, &[1, 32]).unwrap();
    let y = g.linear("fc", y, Linear::new(3)).unwrap();
    let mut net2 = Network::new(g.finish(&[y]).unwrap(), Device::Cpu, 0).unwrap();
    net2.eval();
    let x2 = Tensor::randn(&[1, 3, 4, 16, 16], 1, Device::Cpu).unwrap();
    let e = grad_cam(&net2, &x2, Layout::BCTHW, "conv2d", None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("2D feature map") && e.contains("[B, T, 3, H, W]"),
        "{e}"
    );
    assert!(explain::default_layer("nope")
        .unwrap_err()
        .to_string()
        .contains("--layer"));
}

#[test]
fn min_max_normalisation() {
    assert_eq!(explain::min_max_normalise(&[0.0; 5]), vec![0.0; 5]);
    assert_eq!(explain::min_max_normalise(&[2.0; 3]), vec![0.0; 3]);
    assert_eq!(
        explain::min_max_normalise(&[1.0, 3.0, 2.0]),
        vec![0.0, 1.0, 0.5]
    );
    assert_eq!(explain::min_max_normalise(&[f32::NAN, 1.0]), vec![0.0, 0.0]);
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vidgrad-explain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn explain_command_writes_frames_gif_and_contact_sheet() {
    let dir = tmp_dir("cli");
    let cfg = SynthConfig {
        classes: 3,
        videos_per_class: 1,
        frames: 12,
        size: 40,
        seed: 3,
    };
    data::write_synthetic(&cfg, &dir.join("data")).unwrap();
    // weights: ct-sep [1,1,1,1] with 3 classes, seeded; class names from a labels file
    let opts = ModelOptions {
        classes: Some(3),
        dropout: Some(0.0),
        extra: [("layers".to_string(), "1,1,1,1".to_string())]
            .into_iter()
            .collect(),
    };
    let net = seeded("ct-sep", &opts, &[1, 3, 8, 32, 32], 9, Device::Cpu);
    let weights = dir.join("w.safetensors");
    vidgrad::io::save_safetensors(&weights, &net.state_dict(), None).unwrap();
    std::fs::write(dir.join("labels.txt"), "move_left\nmove_right\nmove_up\n").unwrap();
    let out = dir.join("out");
    let video = dir.join("data/move_right/v_0000");
    let run = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "explain",
            "--model",
            "ct-sep",
            "--opt",
            "layers=1,1,1,1",
            "--weights",
            weights.to_str().unwrap(),
            "--labels",
            dir.join("labels.txt").to_str().unwrap(),
            "--frames",
            "8",
            "--size",
            "32",
            "--resize-short",
            "36",
            "--device",
            "cpu",
            "--out",
            out.to_str().unwrap(),
            video.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vidgrad"))
            .args(&args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(&["--class", "move_up"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Grad-CAM of \"move_up\"") && stdout.contains("layer4"),
        "{stdout}"
    );
    for k in 0..8 {
        let p = out.join(format!("frame_{k:03}.png"));
        let img = image::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!((img.width(), img.height()), (160, 160)); // 32 px × 5
    }
    let sheet = image::open(out.join("contact_sheet.png")).unwrap();
    assert!(sheet.width() >= 8 * 160 && sheet.height() > 160);
    let gif = std::fs::File::open(out.join("clip.gif")).unwrap();
    use image::AnimationDecoder;
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(gif))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 8);
    let j: Value =
        serde_json::from_slice(&std::fs::read(out.join("explain.json")).unwrap()).unwrap();
    assert_eq!(j["class"], 2);
    assert_eq!(j["class_name"], "move_up");
    assert_eq!(j["layer"], "layer4");
    assert_eq!(j["top5"].as_array().unwrap().len(), 3);
    let (cams, _) =
        vidgrad::io::load_safetensors(out.join("cam.safetensors"), Device::Cpu).unwrap();
    assert_eq!(cams["cam"].shape(), &[8, 32, 32]);
    // no temp files left behind
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('.') && !n.contains("tmp")),
        "{names:?}"
    );
    // another layer and the tile option; errors name the problem
    let (ok, stdout, stderr) = run(&["--layer", "layer3", "--tile", "64"]);
    assert!(ok && stdout.contains("layer3"), "{stderr}");
    assert_eq!(image::open(out.join("frame_000.png")).unwrap().width(), 64);
    let (ok, _, stderr) = run(&["--class", "jump"]);
    assert!(!ok && stderr.contains("--class jump"), "{stderr}");
    let (ok, _, stderr) = run(&["--layer", "fc"]);
    assert!(!ok && stderr.contains("needs a 5-D"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------------
// Heat on the moving object.

#[test]
fn object_mask_follows_the_object() {
    // move_right: the mask's centre of mass moves right; it goes through resize and crop like the frames
    let cfg = SynthConfig {
        classes: 2,
        videos_per_class: 2,
        frames: 16,
        size: 48,
        seed: 5,
    };
    let ds = Dataset::synthetic(&cfg);
    let centroid = |m: &[f32], w: usize| {
        let (mut sx, mut s) = (0f64, 0f64);
        for (i, &v) in m.iter().enumerate() {
            sx += (i % w) as f64 * v as f64;
            s += v as f64;
        }
        (sx / s, s)
    };
    let f0 = data::render_mask(&cfg, 1, 0, 0);
    let f1 = data::render_mask(&cfg, 1, 0, 15);
    let (x0, a0) = centroid(
        &f0.data
            .iter()
            .step_by(3)
            .map(|&v| v as f32 / 255.0)
            .collect::<Vec<_>>(),
        48,
    );
    let (x1, a1) = centroid(
        &f1.data
            .iter()
            .step_by(3)
            .map(|&v| v as f32 / 255.0)
            .collect::<Vec<_>>(),
        48,
    );
    assert!(
        a0 > 10.0 && a1 > 10.0 && x1 > x0 + 48.0 * 0.25,
        "{x0} → {x1} (areas {a0}, {a1})"
    );
    assert_eq!(f0, data::render_mask(&cfg, 1, 0, 0), "deterministic");
    let spec = ClipSpec {
        segments: 4,
        size: 32,
        resize_short: 40,
        train: false,
        clips_per_video: 1,
        crop: CropMode::Center,
        flip: false,
        norm: Normalization::Unit,
        layout: Layout::BCTHW,
    };
    let m = data::load_mask_clip(&ds, 2, &spec).unwrap(); // class 1, video 0
    assert_eq!(m.len(), 4 * 32 * 32);
    assert!(m.iter().all(|v| (0.0..=1.0).contains(v)));
    let (c0, _) = centroid(&m[..32 * 32], 32);
    let (c3, _) = centroid(&m[3 * 32 * 32..], 32);
    assert!(c3 > c0, "{c0} → {c3}");
    // a frame-folder dataset has no masks
    let dir = tmp_dir("mask");
    let small = SynthConfig {
        classes: 1,
        videos_per_class: 1,
        frames: 4,
        size: 40,
        seed: 1,
    };
    data::write_synthetic(&small, &dir).unwrap();
    let folder = Dataset::open(&dir, &Default::default()).unwrap();
    let e = data::load_mask_clip(&folder, 0, &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("synthetic videos only"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The synthetic set for the heat test: the four translation classes (the class is the direction the
/// main object moves; distractors and background move too, but not with the class), 32×32 frames.
const HEAT_CLASSES: usize = 4;
const HEAT_SIZE: usize = 32;
const HEAT_FRAMES: usize = 8;
/// Mean cam inside the object's mask over mean cam outside it, pooled over the validation clips: at
/// least HEAT_RATIO_MIN after training, and at least HEAT_GAIN_MIN × what the same net gives before
/// training (random conv features already like the object's high-contrast edges: about 2).
const HEAT_RATIO_MIN: f64 = 2.5;
const HEAT_GAIN_MIN: f64 = 1.5;

/// A small 3D CNN: three conv–BN–ReLU blocks (16, 32, 64 channels), the last one (`features`, at
/// [64, T/2, H/4, W/4]) is the Grad-CAM layer; global average pool and a linear classifier.
fn tiny_c3d(batch: usize, classes: usize) -> vidgrad::graph::Graph {
    let mut g = GraphBuilder::new("TinyC3D");
    let x = g
        .input("input", &[batch, 3, HEAT_FRAMES, HEAT_SIZE, HEAT_SIZE])
        .unwrap();
    let block = |g: &mut GraphBuilder, name: &str, x, c: usize| {
        g.module(name, "Sequential", x, |g, x| {
            let x = g.conv(
                "conv",
                x,
                Conv::new(c, &[3, 3, 3]).padding(&[1, 1, 1]).no_bias(),
            )?;
            let x = g.batch_norm("bn", x, BatchNorm::new())?;
            g.relu("relu", x)
        })
        .unwrap()
    };
    let x = block(&mut g, "block1", x, 16);
    let x = g
        .max_pool("pool1", x, PoolParams::new(&[1, 2, 2]).stride(&[1, 2, 2]))
        .unwrap();
    let x = block(&mut g, "block2", x, 32);
    let x = g
        .max_pool("pool2", x, PoolParams::new(&[2, 2, 2]).stride(&[2, 2, 2]))
        .unwrap();
    let x = block(&mut g, "features", x, 64);
    let x = g.adaptive_avg_pool("avgpool", x, &[1, 1, 1]).unwrap();
    let x = g.flatten(x, 1, -1).unwrap();
    let y = g.linear("fc", x, Linear::new(classes)).unwrap();
    g.finish(&[y]).unwrap()
}

/// Pooled mean cam inside / outside the (soft) object masks, and the fraction of clips whose inside
/// mean is above their outside mean.
fn heat_ratio(net: &Network, val: &Dataset, spec: &ClipSpec) -> (f64, f64, usize) {
    let (mut cin, mut win, mut cout, mut wout) = (0f64, 0f64, 0f64, 0f64);
    let (mut above, mut correct) = (0usize, 0usize);
    for v in 0..val.len() {
        let clip = data::load_clip(val, v, spec, 0).unwrap();
        let mut shape = vec![1];
        shape.extend(spec.clip_shape());
        let x = Tensor::from_vec(clip, &shape, net.device()).unwrap();
        let label = val.label(v);
        let cam = grad_cam(net, &x, spec.layout, "features", Some(label)).unwrap();
        correct += (vidgrad::train::metrics::top_k(&cam.logits, 1)[0] == label) as usize;
        let mask = data::load_mask_clip(val, v, spec).unwrap();
        let (mut a, mut wa, mut b, mut wb) = (0f64, 0f64, 0f64, 0f64);
        for (&c, &m) in cam.cam.iter().zip(&mask) {
            a += (c * m) as f64;
            wa += m as f64;
            b += (c * (1.0 - m)) as f64;
            wb += (1.0 - m) as f64;
        }
        above += (a / wa > b / wb) as usize;
        cin += a;
        win += wa;
        cout += b;
        wout += wb;
    }
    (
        (cin / win) / (cout / wout),
        above as f64 / val.len() as f64,
        correct,
    )
}

#[test]
fn heat_concentrates_on_the_moving_object() {
    let t0 = Instant::now();
    let cfg = SynthConfig {
        classes: HEAT_CLASSES,
        videos_per_class: 60,
        frames: 16,
        size: HEAT_SIZE,
        seed: 7,
    };
    let (train, val) = Dataset::synthetic(&cfg).split(0.25, 1);
    let (train, val) = (Arc::new(train), Arc::new(val));
    let spec = ClipSpec {
        segments: HEAT_FRAMES,
        size: HEAT_SIZE,
        resize_short: 0,
        train: true,
        clips_per_video: 1,
        crop: CropMode::Center,
        flip: false,
        norm: Normalization::R2plus1d,
        layout: Layout::BCTHW,
    };
    let val_spec = ClipSpec {
        train: false,
        ..spec.clone()
    };
    let batch = 16;
    let steps = 150;
    let mut net = Network::new(tiny_c3d(batch, HEAT_CLASSES), Device::Cpu, 1).unwrap();
    net.eval();
    let (r0, _, _) = heat_ratio(&net, &val, &val_spec);
    let mut opt = AdamW::new(
        vec![ParamGroup::new(net.parameters(), 1e-4)],
        AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
    )
    .unwrap();
    net.train();
    let mut rng = 0u64;
    let mut last = vec![];
    for step in 0..steps {
        let mut data = Vec::with_capacity(batch * spec.clip_len());
        let mut labels = vec![];
        for _ in 0..batch {
            rng += 1;
            let v = (vidgrad::rng::mix(99, rng) % train.len() as u64) as usize;
            data.extend(data::load_clip(&train, v, &spec, rng).unwrap());
            labels.push(train.label(v));
        }
        let x = Tensor::from_vec(
            data,
            &[batch, 3, HEAT_FRAMES, HEAT_SIZE, HEAT_SIZE],
            Device::Cpu,
        )
        .unwrap();
        let loss = ops::cross_entropy(&net.forward(&[&x]).unwrap(), &labels, 0.0).unwrap();
        let l = loss.item().unwrap();
        loss.backward().unwrap();
        opt.step().unwrap();
        opt.zero_grad();
        last.push(l);
        if step % 25 == 0 {
            println!(
                "step {step}: loss {l:.3} ({:.0} s)",
                t0.elapsed().as_secs_f32()
            );
        }
    }
    net.eval();
    let (ratio, above, correct) = heat_ratio(&net, &val, &val_spec);
    println!(
        "trained {steps} steps of batch {batch} in {:.0} s; validation: {correct}/{} correct; \
         mean cam inside the object mask / outside = {ratio:.2} (untrained net: {r0:.2}); \
         inside > outside in {:.0}% of the clips",
        t0.elapsed().as_secs_f32(),
        val.len(),
        100.0 * above
    );
    assert!(
        correct * 10 >= val.len() * 7,
        "the net did not learn the task: {correct}/{}",
        val.len()
    );
    assert!(
        ratio >= HEAT_RATIO_MIN,
        "heat ratio {ratio:.2} < {HEAT_RATIO_MIN}"
    );
    assert!(
        ratio >= HEAT_GAIN_MIN * r0,
        "heat ratio {ratio:.2} < {HEAT_GAIN_MIN} × untrained {r0:.2}"
    );
    assert!(
        above >= 0.9,
        "inside > outside in only {:.0}% of the clips",
        100.0 * above
    );
}

/// The same measure for a trained ECO-Lite checkpoint on its validation split (not run by default:
/// it needs a checkpoint). `VIDGRAD_ECO_CHECKPOINT=runs/train_eco/best.safetensors cargo test --release
/// --test explain -- --ignored --nocapture eco_checkpoint_heat` (the CPU preset: 8 frames × 64²,
/// synthetic set of 10 classes, 32 frames, seed 0, val ratio 0.2). `VIDGRAD_ECO_LAYERS` (comma
/// separated) picks the layers, default the three 3D stages.
#[test]
#[ignore]
fn eco_checkpoint_heat() {
    let Some(path) = std::env::var_os("VIDGRAD_ECO_CHECKPOINT") else {
        println!("skipped: set VIDGRAD_ECO_CHECKPOINT");
        return;
    };
    let (sd, meta) =
        vidgrad::train::checkpoint::load_weights(std::path::Path::new(&path), Device::Cpu).unwrap();
    let cfg = &meta.expect("a vidgrad training checkpoint")["config"];
    let get = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (frames, size) = (get("segments"), get("size"));
    let synth = SynthConfig {
        classes: 10,
        videos_per_class: 100,
        frames: 32,
        size,
        seed: 0,
    };
    let (_, val) = Dataset::synthetic(&synth).split(0.2, 0);
    let spec = ClipSpec {
        segments: frames,
        size,
        resize_short: 0,
        train: false,
        clips_per_video: 1,
        crop: CropMode::Center,
        flip: false,
        norm: Normalization::Eco,
        layout: Layout::BTCHW,
    };
    let opts = ModelOptions {
        classes: Some(10),
        ..Default::default()
    };
    let mut net = Network::new(
        models::build("eco-lite", &opts, &[1, frames, 3, size, size]).unwrap(),
        Device::Cpu,
        0,
    )
    .unwrap();
    net.load_state_dict(&sd, true).unwrap();
    net.eval();
    let layers = std::env::var("VIDGRAD_ECO_LAYERS")
        .unwrap_or_else(|_| "eco_3d.res_3d_5,eco_3d.res_3d_4,eco_3d.res_3d_3".into());
    for layer in layers.split(',') {
        let (mut cin, mut win, mut cout, mut wout, mut above, mut zero, mut correct) =
            (0f64, 0f64, 0f64, 0f64, 0, 0, 0);
        for v in 0..val.len() {
            let x = Tensor::from_vec(
                data::load_clip(&val, v, &spec, 0).unwrap(),
                &[1, frames, 3, size, size],
                Device::Cpu,
            )
            .unwrap();
            let label = val.label(v);
            let cam = grad_cam(&net, &x, Layout::BTCHW, layer, Some(label)).unwrap();
            correct += (vidgrad::train::metrics::top_k(&cam.logits, 1)[0] == label) as usize;
            zero += cam.cam.iter().all(|&c| c == 0.0) as usize;
            let mask = data::load_mask_clip(&val, v, &spec).unwrap();
            let (mut a, mut wa, mut b, mut wb) = (0f64, 0f64, 0f64, 0f64);
            for (&c, &m) in cam.cam.iter().zip(&mask) {
                a += (c * m) as f64;
                wa += m as f64;
                b += (c * (1.0 - m)) as f64;
                wb += (1.0 - m) as f64;
            }
            above += (a / wa > b / wb) as usize;
            (cin, win, cout, wout) = (cin + a, win + wa, cout + b, wout + wb);
        }
        println!(
            "{layer}: {correct}/{} correct; mean cam inside / outside the object = {:.2}; inside > outside in {above} clips; all-zero cam in {zero}",
            val.len(),
            (cin / win) / (cout / wout)
        );
    }
}
