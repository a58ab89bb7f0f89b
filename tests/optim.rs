//! Optimisers, schedules and gradient clipping against PyTorch (tests/fixtures/optim/optim.safetensors,
//! written by tools/reference/gen_optim_fixture.py), plus resume-from-state and argument checks.
//!
//! The main check: ten steps of each optimiser configuration on a small conv net (conv → batch norm
//! (train) → ReLU → conv with bias → ReLU → global average pool → linear → cross entropy), from
//! PyTorch's initial parameters on PyTorch's batches, land on PyTorch's parameters. Both sides
//! compute in float32, so the two differ by accumulation order (conv, batch-norm and loss
//! reductions) and that rounding compounds over the steps.

mod common;

use std::collections::BTreeMap;

use common::{device, Report, Tol};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use vidgrad::ops::{self, elementwise, BatchNormArgs, ConvParams};
use vidgrad::optim::{
    clip_grad_norm, param_groups_no_decay, AdamW, AdamWConfig, LrSchedule, Optimizer,
    OptimizerState, ParamGroup, Sgd, SgdConfig,
};
use vidgrad::{Result, Tensor};

/// Parameters after ten steps: |vidgrad − PyTorch| ≤ atol + rtol·|PyTorch|, float32 on both sides.
/// Measured worst error 1.3e-7 (a few ulps; printed by the test) on parameters of O(0.1–1). The
/// mistakes this check exists for move parameters by 8× (Adam's eps 1e-6 → 1e-5) to 4000×
/// (dampening ignored) this tolerance; decaying biases and BN too, at wd 1e-4, by 20×.
const PARAM_TOL: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};
/// Optimiser state after ten steps: momentum buffers and Adam's first moments (gradient-sized;
/// measured worst 1.5e-7)...
const STATE_TOL: Tol = Tol {
    atol: 1e-6,
    rtol: 1e-4,
};
/// ...and Adam's second moments (gradient², down to ~1e-8).
const STATE_SQ_TOL: Tol = Tol {
    atol: 1e-10,
    rtol: 1e-4,
};
/// Per-step losses and gradient norms.
const LOSS_TOL: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};
/// Learning rates from the schedules vs PyTorch's (float64 there, float32 here).
const LR_RTOL: f64 = 1e-6;

const PARAM_NAMES: [&str; 7] = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc.weight",
    "fc.bias",
];

// --- the fixture --------------------------------------------------------------------------------------

struct Fx {
    meta: BTreeMap<String, Value>,
    /// name → (shape, values as f64)
    tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fx {
    fn load() -> Fx {
        let path = common::fixture_root().join("tests/fixtures/optim/optim.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).expect("safetensors header");
        let meta = header
            .metadata()
            .as_ref()
            .expect("fixture metadata")
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::from_str(v).expect("metadata json")))
            .collect();
        let st = SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            tensors.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        Fx { meta, tensors }
    }

    fn raw(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    fn f32s(&self, name: &str) -> Vec<f32> {
        self.raw(name).1.iter().map(|&v| v as f32).collect()
    }

    fn tensor(&self, name: &str) -> Tensor {
        let (shape, _) = self.raw(name);
        Tensor::from_vec(self.f32s(name), shape, device()).unwrap()
    }

    /// Fresh leaf parameters at PyTorch's initial values.
    fn init_params(&self) -> Vec<(String, Tensor)> {
        PARAM_NAMES
            .iter()
            .map(|n| (n.to_string(), self.tensor(&format!("init.{n}")).with_grad()))
            .collect()
    }

    fn batch(&self, s: usize) -> (Tensor, Vec<usize>) {
        let labels = self.raw(&format!("batch.{s}.labels")).1.iter();
        (
            self.tensor(&format!("batch.{s}.x")),
            labels.map(|&v| v as usize).collect(),
        )
    }

    fn steps(&self) -> usize {
        self.meta["model"]["steps"].as_u64().unwrap() as usize
    }

    fn configs(&self) -> Vec<(String, Value)> {
        self.meta
            .iter()
            .filter(|(_, m)| m.get("optimizer").is_some())
            .map(|(k, m)| (k.clone(), m.clone()))
            .collect()
    }
}

// --- the network, as in the generator's loss_fn ------------------------------------------------------

fn param<'a>(params: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &params.iter().find(|(n, _)| n == name).unwrap().1
}

fn loss_fn(p: &[(String, Tensor)], x: &Tensor, labels: &[usize], bn_eps: f32) -> Result<Tensor> {
    let y = x.conv(
        param(p, "conv1.weight"),
        None,
        &ConvParams::default().padding(&[1, 1]),
    )?;
    let y = y.batch_norm(&BatchNormArgs {
        weight: Some(param(p, "bn1.weight")),
        bias: Some(param(p, "bn1.bias")),
        training: true,
        eps: bn_eps,
        ..Default::default()
    })?;
    let y = y.relu()?.conv(
        param(p, "conv2.weight"),
        Some(param(p, "conv2.bias")),
        &ConvParams::default().stride(&[2, 2]).padding(&[1, 1]),
    )?;
    let y = y.relu()?.global_avg_pool()?.flatten(1, -1)?;
    let y = y.linear(param(p, "fc.weight"), Some(param(p, "fc.bias")))?;
    ops::cross_entropy(&y, labels, 0.0)
}

// --- configurations from the fixture's metadata ------------------------------------------------------

fn f32_of(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn schedule_of(spec: &Value) -> LrSchedule {
    match spec["kind"].as_str().unwrap() {
        "step" => LrSchedule::step(
            spec["step_size"].as_u64().unwrap() as usize,
            f32_of(&spec["gamma"]),
        ),
        "multistep" => {
            let ms: Vec<usize> = common::usizes(&spec["milestones"]);
            LrSchedule::multi_step(&ms, f32_of(&spec["gamma"]))
        }
        "cosine" => LrSchedule::cosine(
            spec["t_max"].as_u64().unwrap() as usize,
            f32_of(&spec["eta_min"]),
        ),
        "warmup" => {
            let then = match &spec["then"] {
                Value::Null => LrSchedule::Constant,
                t => schedule_of(t),
            };
            then.with_warmup(
                f32_of(&spec["start_factor"]),
                spec["steps"].as_u64().unwrap() as usize,
            )
        }
        k => panic!("unknown schedule kind {k}"),
    }
}

fn optimizer_of(cfg: &Value, params: Vec<(String, Tensor)>) -> Box<dyn Optimizer> {
    let wd = f32_of(&cfg["weight_decay"]);
    let groups = match cfg["groups"].as_str().unwrap() {
        "no_decay" => param_groups_no_decay(params, wd),
        "single" => vec![ParamGroup::new(params, wd)],
        g => panic!("unknown grouping {g}"),
    };
    let lr = f32_of(&cfg["lr"]);
    match cfg["optimizer"].as_str().unwrap() {
        "sgd" => Box::new(
            Sgd::new(
                groups,
                SgdConfig {
                    lr,
                    momentum: f32_of(&cfg["momentum"]),
                    dampening: f32_of(&cfg["dampening"]),
                    nesterov: cfg["nesterov"].as_bool().unwrap(),
                },
            )
            .unwrap(),
        ),
        "adamw" => Box::new(
            AdamW::new(
                groups,
                AdamWConfig {
                    lr,
                    betas: (
                        cfg["betas"][0].as_f64().unwrap(),
                        cfg["betas"][1].as_f64().unwrap(),
                    ),
                    eps: f32_of(&cfg["eps"]),
                },
            )
            .unwrap(),
        ),
        o => panic!("unknown optimizer {o}"),
    }
}

/// What a run records per step.
#[derive(Default)]
struct Trace {
    losses: Vec<f32>,
    lrs: Vec<f32>,
    grad_norms: Vec<f32>,
}

/// Steps `from..to` of a configuration's training loop: schedule, forward, backward, clip, step.
fn train(
    fx: &Fx,
    cfg: &Value,
    opt: &mut dyn Optimizer,
    params: &[(String, Tensor)],
    steps: std::ops::Range<usize>,
    trace: &mut Trace,
) {
    let base_lr = f32_of(&cfg["lr"]);
    let schedule = cfg.get("schedule").map(schedule_of);
    let bn_eps = f32_of(&fx.meta["model"]["bn_eps"]);
    for s in steps {
        if let Some(sched) = &schedule {
            opt.set_lr(sched.lr(base_lr, s));
        }
        trace.lrs.push(opt.lr());
        opt.zero_grad();
        let (x, labels) = fx.batch(s);
        let loss = loss_fn(params, &x, &labels, bn_eps).unwrap();
        loss.backward().unwrap();
        trace.losses.push(loss.item().unwrap());
        if let Some(max_norm) = cfg.get("clip") {
            trace
                .grad_norms
                .push(opt.clip_grad_norm(f32_of(max_norm)).unwrap());
        }
        opt.step().unwrap();
    }
}

fn host_vec(xs: &[f32]) -> Tensor {
    Tensor::from_slice(xs, &[xs.len()], device()).unwrap()
}

#[test]
fn ten_steps_match_pytorch() {
    common::on_devices(|| {
        let fx = Fx::load();
        let steps = fx.steps();
        let mut report = Report::new("ten_steps_match_pytorch");
        let configs = fx.configs();
        assert!(configs.len() >= 5, "fixture has {} configs", configs.len());
        for (name, cfg) in &configs {
            println!("{name}: {cfg}");
            let params = fx.init_params();
            let mut opt = optimizer_of(cfg, params.clone());
            let mut trace = Trace::default();
            train(&fx, cfg, opt.as_mut(), &params, 0..steps, &mut trace);

            // The learning rates used at each step.
            let want_lr = &fx.raw(&format!("{name}.lr")).1;
            for (s, (&got, &want)) in trace.lrs.iter().zip(want_lr).enumerate() {
                if (got as f64 - want).abs() > LR_RTOL * want.abs() {
                    report.fail(format!("{name}: lr at step {s} is {got}, PyTorch {want}"));
                }
            }
            let key = format!("{name}.loss");
            report.close(
                &key,
                &host_vec(&trace.losses),
                &[steps],
                &fx.f32s(&key),
                LOSS_TOL,
            );
            if cfg.get("clip").is_some() {
                let key = format!("{name}.grad_norm");
                report.close(
                    &key,
                    &host_vec(&trace.grad_norms),
                    &[steps],
                    &fx.f32s(&key),
                    LOSS_TOL,
                );
            }
            // Every parameter.
            for (pname, p) in &params {
                let key = format!("{name}.param.{pname}");
                report.close(&key, p, &fx.raw(&key).0, &fx.f32s(&key), PARAM_TOL);
            }
            // The optimiser state, under PyTorch's names (PyTorch keeps `step` as a tensor).
            let state = opt.state_dict().unwrap();
            let prefix = format!("{name}.");
            let mut compared = 0;
            for (key, (shape, want)) in fx.tensors.range(format!("{name}.state.")..) {
                let Some(sname) = key.strip_prefix(&prefix) else {
                    break;
                };
                if !sname.starts_with("state.") {
                    break;
                }
                compared += 1;
                if let Some(t) = state.tensor(sname) {
                    let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
                    let tol = if sname.ends_with(".exp_avg_sq") {
                        STATE_SQ_TOL
                    } else {
                        STATE_TOL
                    };
                    report.close(key, t, shape, &want, tol);
                } else if let Some(v) = state.scalar(sname) {
                    if v != want[0] {
                        report.fail(format!("{key}: {v}, PyTorch {}", want[0]));
                    }
                } else {
                    report.fail(format!("{name}: state_dict has no '{sname}'"));
                }
            }
            let ours = state.tensors.len() + state.scalars.len() - 1; // less "lr"
            if compared != ours {
                report.fail(format!(
                    "{name}: PyTorch has {compared} state entries, vidgrad {ours}"
                ));
            }
        }
        report.finish();
    });
}

#[test]
fn schedules_match_pytorch() {
    let fx = Fx::load();
    let mut n = 0;
    for (key, meta) in fx.meta.iter().filter(|(k, _)| k.starts_with("schedule.")) {
        let sched = schedule_of(&meta["spec"]);
        let base = meta["base_lr"].as_f64().unwrap() as f32;
        let want = &fx.raw(key).1;
        let mut worst = 0f64;
        for (t, &w) in want.iter().enumerate() {
            let got = sched.lr(base, t) as f64;
            let rel = (got - w).abs() / w.abs().max(1e-12);
            worst = worst.max(if w == 0.0 { got.abs() } else { rel });
            assert!(
                (got - w).abs() <= LR_RTOL * w.abs() + 1e-12,
                "{key}: lr at {t} is {got}, PyTorch {w} ({sched:?})"
            );
        }
        println!("  {key:<28} {} epochs, max rel err {worst:.1e}", want.len());
        n += 1;
    }
    assert!(n >= 6, "only {n} schedules in the fixture");
}

/// Run 10 steps straight, and 5 steps + state_dict → new optimiser on copied parameters +
/// load_state_dict + 5 steps: the parameters must agree bit for bit. On the CPU only: bit-identity
/// also needs deterministic kernels, and some CUDA backward kernels accumulate with atomics.
#[test]
fn resume_from_state_dict_is_bit_identical() {
    let fx = Fx::load();
    let steps = fx.steps();
    let half = steps / 2;
    for (name, cfg) in fx.configs() {
        let params = fx.init_params();
        let mut opt = optimizer_of(&cfg, params.clone());
        train(
            &fx,
            &cfg,
            opt.as_mut(),
            &params,
            0..steps,
            &mut Trace::default(),
        );

        let first = fx.init_params();
        let mut opt1 = optimizer_of(&cfg, first.clone());
        train(
            &fx,
            &cfg,
            opt1.as_mut(),
            &first,
            0..half,
            &mut Trace::default(),
        );
        let state = opt1.state_dict().unwrap();
        let stateless = cfg["optimizer"] == "sgd" && cfg["momentum"] == 0.0;
        assert_eq!(state.tensors.is_empty(), stateless, "{name}");
        // A fresh model and optimiser, as after reading a checkpoint.
        let resumed: Vec<(String, Tensor)> = first
            .iter()
            .map(|(n, t)| (n.clone(), t.detach().copy().unwrap().with_grad()))
            .collect();
        drop(opt1);
        let mut opt2 = optimizer_of(&cfg, resumed.clone());
        opt2.load_state_dict(&state).unwrap();
        train(
            &fx,
            &cfg,
            opt2.as_mut(),
            &resumed,
            half..steps,
            &mut Trace::default(),
        );
        for ((pname, a), (_, b)) in params.iter().zip(&resumed) {
            assert_eq!(
                a.to_vec().unwrap(),
                b.to_vec().unwrap(),
                "{name}: {pname} differs after resuming"
            );
        }
        println!("  {name}: resumed at step {half}, bit-identical after {steps}");
    }
}

// --- pieces ----------------------------------------------------------------------------------------

fn leaf(values: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(values, shape, device())
        .unwrap()
        .with_grad()
}

fn named(pairs: &[(&str, &Tensor)]) -> Vec<(String, Tensor)> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), (*t).clone()))
        .collect()
}

fn names(g: &ParamGroup) -> Vec<&str> {
    g.params.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn no_decay_groups_take_biases_and_norm_weights() {
    let w4 = leaf(&[0.0; 8], &[2, 4]);
    let conv = leaf(&[0.0; 54], &[2, 3, 3, 3]);
    let v = leaf(&[0.0; 2], &[2]);
    let params = named(&[
        ("conv1.weight", &conv),
        ("bn1.weight", &v),
        ("bn1.bias", &v.detach().with_grad()),
        ("fc.weight", &w4),
        ("fc.bias", &v.detach().with_grad()),
        ("layer1.0.gn.weight", &v.detach().with_grad()),
    ]);
    let groups = param_groups_no_decay(params, 0.05);
    assert_eq!(groups.len(), 2);
    assert_eq!(names(&groups[0]), ["conv1.weight", "fc.weight"]);
    assert_eq!(groups[0].weight_decay, 0.05);
    assert_eq!(
        names(&groups[1]),
        ["bn1.weight", "bn1.bias", "fc.bias", "layer1.0.gn.weight"]
    );
    assert_eq!(groups[1].weight_decay, 0.0);
    // Only biases: one group.
    let only = param_groups_no_decay(named(&[("fc.bias", &v)]), 0.1);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].weight_decay, 0.0);
}

#[test]
fn clip_grad_norm_scales_only_above_max_norm() {
    common::on_devices(|| {
        // Two parameters whose gradients are one shared tensor (the inputs of an add): clipping must
        // scale each exactly once.
        let a = leaf(&[1.0, 2.0], &[2]);
        let b = leaf(&[3.0, 4.0], &[2]);
        let c = leaf(&[0.5], &[1]);
        let gy = Tensor::from_slice(&[3.0, 4.0], &[2], device()).unwrap();
        ops::add(&a, &b).unwrap().backward_with(&gy).unwrap();
        c.mul_scalar(12.0)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        // |g| = sqrt(25 + 25 + 144) = sqrt(194)
        let total = clip_grad_norm([&a, &b, &c], 100.0).unwrap();
        assert!((total - 194f32.sqrt()).abs() < 1e-5, "{total}");
        assert_eq!(a.grad().unwrap().to_vec().unwrap(), [3.0, 4.0]);

        let total = clip_grad_norm([&a, &b, &c], 1.0).unwrap();
        assert!((total - 194f32.sqrt()).abs() < 1e-5);
        let coef = 1.0 / (194f32.sqrt() + 1e-6);
        for (t, want) in [(&a, [3.0, 4.0]), (&b, [3.0, 4.0])] {
            let got = t.grad().unwrap().to_vec().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w * coef).abs() < 1e-6, "{got:?}");
            }
        }
        assert!((c.grad().unwrap().item().unwrap() - 12.0 * coef).abs() < 1e-6);
        assert_eq!(
            gy.to_vec().unwrap(),
            [3.0, 4.0],
            "the upstream gradient was modified"
        );
        // The norm after clipping is max_norm.
        let after = clip_grad_norm([&a, &b, &c], 10.0).unwrap();
        assert!((after - 1.0).abs() < 1e-5, "{after}");
        // Nothing with a gradient: 0.
        assert_eq!(clip_grad_norm([&leaf(&[1.0], &[1])], 1.0).unwrap(), 0.0);
    });
}

#[test]
fn sgd_update_by_hand_and_zero_grad() {
    common::on_devices(|| {
        // p = 1, g = 2 (loss 2p), momentum 0.9, dampening 0.5, wd 0.1, lr 0.1:
        // step 1: d = 2 + 0.1·1 = 2.1, buf = 2.1, p = 1 − 0.21 = 0.79
        // step 2: d = 2 + 0.079 = 2.079, buf = 0.9·2.1 + 0.5·2.079 = 2.9295, p = 0.79 − 0.29295
        let p = leaf(&[1.0], &[1]);
        let frozen = leaf(&[5.0], &[1]);
        let mut opt = Sgd::new(
            vec![ParamGroup::new(
                named(&[("p", &p), ("frozen", &frozen)]),
                0.1,
            )],
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                dampening: 0.5,
                nesterov: false,
            },
        )
        .unwrap();
        for _ in 0..2 {
            opt.zero_grad();
            p.mul_scalar(2.0)
                .unwrap()
                .sum()
                .unwrap()
                .backward()
                .unwrap();
            opt.step().unwrap();
        }
        assert!((p.item().unwrap() - (0.79 - 0.29295)).abs() < 1e-6);
        assert_eq!(
            frozen.item().unwrap(),
            5.0,
            "a parameter without grad moved"
        );
        let st = opt.state_dict().unwrap();
        assert_eq!(st.tensors.len(), 1, "only p has a momentum buffer");
        assert!(
            (st.tensor("state.p.momentum_buffer")
                .unwrap()
                .item()
                .unwrap()
                - 2.9295)
                .abs()
                < 1e-6
        );
        assert_eq!(st.scalar("lr"), Some(0.1f32 as f64));
        opt.zero_grad();
        assert!(p.grad().is_none());
    });
}

#[test]
fn adamw_update_by_hand_with_lr_scale() {
    common::on_devices(|| {
        // One step from m = v = 0: m̂ = g and √v̂ = |g|, so the step is lr·g/(|g| + eps) ≈ lr·sign(g),
        // after the decay p·(1 − lr·wd).
        let p = leaf(&[1.0, -2.0], &[2]);
        let q = leaf(&[3.0], &[1]);
        let mut opt = AdamW::new(
            vec![
                ParamGroup::new(named(&[("p", &p)]), 0.5),
                ParamGroup::new(named(&[("q", &q)]), 0.0).with_lr_scale(0.5),
            ],
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let g = Tensor::from_slice(&[0.3, -4.0], &[2], device()).unwrap();
        p.mul(&g).unwrap().sum().unwrap().backward().unwrap();
        q.mul_scalar(-1.0)
            .unwrap()
            .sum()
            .unwrap()
            .backward()
            .unwrap();
        opt.step().unwrap();
        let got = p.to_vec().unwrap();
        let want = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        assert!((q.item().unwrap() - (3.0 + 0.05)).abs() < 1e-6);
        let st = opt.state_dict().unwrap();
        assert_eq!(st.scalar("state.p.step"), Some(1.0));
        assert_eq!(st.tensors.len(), 4);
    });
}

#[test]
fn sqrt_and_div_forward_and_backward() {
    common::on_devices(|| {
        let a = leaf(&[1.0, 4.0, 9.0], &[3]);
        let b = leaf(&[2.0, -0.5, 4.0], &[3]);
        let y = elementwise::div(&elementwise::sqrt(&a).unwrap(), &b).unwrap();
        assert_eq!(y.to_vec().unwrap(), [0.5, -4.0, 0.75]);
        let z = elementwise::add_scalar(&y, 1.0).unwrap();
        assert_eq!(z.to_vec().unwrap(), [1.5, -3.0, 1.75]);
        z.sum().unwrap().backward().unwrap();
        // d/da √a/b = 1/(2√a·b);  d/db √a/b = −√a/b²
        let ga = a.grad().unwrap().to_vec().unwrap();
        let gb = b.grad().unwrap().to_vec().unwrap();
        let (av, bv) = ([1.0f32, 4.0, 9.0], [2.0f32, -0.5, 4.0]);
        for i in 0..3 {
            let (s, bb) = (av[i].sqrt(), bv[i]);
            assert!((ga[i] - 1.0 / (2.0 * s * bb)).abs() < 1e-6, "{ga:?}");
            assert!((gb[i] + s / (bb * bb)).abs() < 1e-5, "{gb:?}");
        }
    });
}

#[test]
fn invalid_arguments_are_errors() {
    let p = leaf(&[1.0, 2.0], &[2]);
    let sgd = |groups, cfg| Sgd::new(groups, cfg).map(|_| ()).unwrap_err().to_string();
    let nesterov = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        dampening: 0.1,
        nesterov: true,
    };
    let e = sgd(vec![ParamGroup::new(named(&[("p", &p)]), 0.0)], nesterov);
    assert!(e.contains("nesterov"), "{e}");
    let no_grad = Tensor::zeros(&[2], device()).unwrap();
    let e = sgd(
        vec![ParamGroup::new(named(&[("x", &no_grad)]), 0.0)],
        SgdConfig::default(),
    );
    assert!(e.contains("'x'") && e.contains("grad"), "{e}");
    let e = sgd(
        vec![
            ParamGroup::new(named(&[("p", &p)]), 0.0),
            ParamGroup::new(named(&[("p", &leaf(&[0.0], &[1]))]), 0.0),
        ],
        SgdConfig::default(),
    );
    assert!(e.contains("twice"), "{e}");
    let e = sgd(
        vec![ParamGroup::new(named(&[("p", &p), ("q", &p)]), 0.0)],
        SgdConfig::default(),
    );
    assert!(e.contains("twice"), "{e}");
    let e = AdamW::new(
        vec![ParamGroup::new(named(&[("p", &p)]), 0.0)],
        AdamWConfig {
            betas: (0.9, 1.0),
            ..Default::default()
        },
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("betas"), "{e}");
    assert!(clip_grad_norm([&p], -1.0).is_err());

    // load_state_dict: wrong shape, unknown parameter, incomplete Adam state; nothing changes on error.
    let mut opt = AdamW::new(
        vec![ParamGroup::new(named(&[("p", &p)]), 0.0)],
        AdamWConfig::default(),
    )
    .unwrap();
    let t2 = Tensor::zeros(&[2], device()).unwrap();
    let t3 = Tensor::zeros(&[3], device()).unwrap();
    let state = |tensors: Vec<(&str, &Tensor)>, scalars: Vec<(&str, f64)>| OptimizerState {
        tensors: tensors
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
        scalars: scalars
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    };
    let cases = [
        (
            state(
                vec![("state.p.exp_avg", &t3), ("state.p.exp_avg_sq", &t2)],
                vec![("state.p.step", 1.0)],
            ),
            "shape",
        ),
        (
            state(
                vec![("state.q.exp_avg", &t2), ("state.q.exp_avg_sq", &t2)],
                vec![("state.q.step", 1.0)],
            ),
            "unknown parameter 'q'",
        ),
        (state(vec![("state.p.exp_avg", &t2)], vec![]), "together"),
        (
            state(vec![("state.p.momentum_buffer", &t2)], vec![]),
            "unknown state",
        ),
    ];
    for (st, want) in cases {
        let e = opt.load_state_dict(&st).unwrap_err().to_string();
        assert!(e.contains(want), "{e} (expected '{want}')");
    }
    let ok = state(
        vec![("state.p.exp_avg", &t2), ("state.p.exp_avg_sq", &t2)],
        vec![("state.p.step", 3.0), ("lr", 0.5)],
    );
    opt.load_state_dict(&ok).unwrap();
    assert_eq!(opt.lr(), 0.5);
    assert_eq!(opt.state_dict().unwrap().scalar("state.p.step"), Some(3.0));
}

/// The optimisers' fused steps (each backend's `sgd_step` / `adamw_step`: one pass over a parameter,
/// its gradient and its state) against the chain of elementwise tensor ops that defines them — the
/// ops the fixture tests check against PyTorch — bit for bit, including ±Inf and NaN in parameters
/// and gradients, over lengths around the CPU's parallel chunk (2¹⁵) and every configuration switch.
#[test]
fn fused_steps_equal_the_elementwise_chain() {
    common::on_devices(|| {
        let dev = device();
        let specials = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0];
        let values = |n: usize, seed: u64| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let u = vidgrad::rng::uniform(seed, i as u64);
                    if i % 997 == 13 {
                        specials[(i / 997) % specials.len()]
                    } else {
                        4.0 * u - 2.0
                    }
                })
                .collect()
        };
        let same_bits = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
        };
        let sgd_cases = [
            (0.0f32, 0.0f32, false, 0.0f32),
            (0.0, 0.0, false, 1e-4),
            (0.9, 0.0, false, 0.0),
            (0.9, 0.1, false, 1e-4),
            (0.9, 0.0, true, 0.05),
        ];
        for (case, &n) in [1usize, 7, 1000, (1 << 15) + 3, 70_001].iter().enumerate() {
            let init = values(n, 100 + case as u64);
            for (k, &(momentum, dampening, nesterov, wd)) in sgd_cases.iter().enumerate() {
                let p = Tensor::from_slice(&init, &[n], dev).unwrap().with_grad();
                let cfg = SgdConfig {
                    lr: 0.05,
                    momentum,
                    dampening,
                    nesterov,
                };
                let mut opt = Sgd::new(
                    vec![ParamGroup::new(vec![("p".into(), p.clone())], wd)],
                    cfg,
                )
                .unwrap();
                let want = Tensor::from_slice(&init, &[n], dev).unwrap();
                let mut buf: Option<Tensor> = None;
                for step in 0..3u64 {
                    let g = values(n, 1000 + 10 * case as u64 + step);
                    p.zero_grad();
                    p.backward_with(&Tensor::from_slice(&g, &[n], dev).unwrap())
                        .unwrap();
                    opt.step().unwrap();
                    // the chain: d = wd·w + g; buf = (1 − dampening)·d + momentum·buf (d first);
                    // d = nesterov ? momentum·buf + d : buf; w = −lr·d + w
                    let g = Tensor::from_slice(&g, &[n], dev).unwrap();
                    let mut d = g.copy().unwrap();
                    if wd != 0.0 {
                        d.axpby_(wd, &want, 1.0).unwrap();
                    }
                    if momentum != 0.0 {
                        let b = match &buf {
                            None => buf.insert(d.copy().unwrap()),
                            Some(b) => {
                                b.axpby_(1.0 - dampening, &d, momentum).unwrap();
                                b
                            }
                        };
                        d = if nesterov {
                            let e = d.copy().unwrap();
                            e.axpby_(momentum, b, 1.0).unwrap();
                            e
                        } else {
                            b.clone()
                        };
                    }
                    want.axpby_(-cfg.lr, &d, 1.0).unwrap();
                    assert!(
                        same_bits(&p.to_vec().unwrap(), &want.to_vec().unwrap()),
                        "sgd n {n} case {k} step {step} on {dev}"
                    );
                }
            }
            // AdamW: m = (1 − β₁)·g + β₁·m; v = (1 − β₂)·g² + β₂·v;
            // w = −lr/(1 − β₁ᵗ)·(m / (√v/√(1 − β₂ᵗ) + eps)) + (1 − lr·wd)·w
            for wd in [0.0f32, 0.01] {
                let p = Tensor::from_slice(&init, &[n], dev).unwrap().with_grad();
                let cfg = AdamWConfig {
                    lr: 1e-2,
                    betas: (0.9, 0.999),
                    eps: 1e-8,
                };
                let mut opt = AdamW::new(
                    vec![ParamGroup::new(vec![("p".into(), p.clone())], wd)],
                    cfg,
                )
                .unwrap();
                let want = Tensor::from_slice(&init, &[n], dev).unwrap();
                let m = Tensor::zeros(&[n], dev).unwrap();
                let v = Tensor::zeros(&[n], dev).unwrap();
                for step in 1..=3u64 {
                    let g = values(n, 5000 + 10 * case as u64 + step);
                    p.zero_grad();
                    p.backward_with(&Tensor::from_slice(&g, &[n], dev).unwrap())
                        .unwrap();
                    opt.step().unwrap();
                    let g = Tensor::from_slice(&g, &[n], dev).unwrap();
                    let (b1, b2) = cfg.betas;
                    let (lr, t) = (cfg.lr as f64, step as f64);
                    m.axpby_((1.0 - b1) as f32, &g, b1 as f32).unwrap();
                    v.axpby_(
                        (1.0 - b2) as f32,
                        &elementwise::mul(&g, &g).unwrap(),
                        b2 as f32,
                    )
                    .unwrap();
                    let denom = elementwise::add_scalar(
                        &elementwise::sqrt(&v)
                            .unwrap()
                            .mul_scalar((1.0 / (1.0 - b2.powf(t)).sqrt()) as f32)
                            .unwrap(),
                        cfg.eps,
                    )
                    .unwrap();
                    want.axpby_(
                        (-(lr / (1.0 - b1.powf(t)))) as f32,
                        &elementwise::div(&m, &denom).unwrap(),
                        (1.0 - lr * wd as f64) as f32,
                    )
                    .unwrap();
                    assert!(
                        same_bits(&p.to_vec().unwrap(), &want.to_vec().unwrap()),
                        "adamw n {n} wd {wd} step {step} on {dev}"
                    );
                }
            }
        }
    });
}
