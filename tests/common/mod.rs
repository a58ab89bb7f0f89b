//! Shared test helpers: PyTorch fixtures (tests/fixtures/ops, written by tools/reference/gen_op_fixtures.py)
//! and tolerance checks that print the worst error.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use vidgrad::{Device, Tensor};

thread_local! {
    static CURRENT: std::cell::Cell<Device> = const { std::cell::Cell::new(Device::Cpu) };
}

/// The device the current test runs on (the CPU unless inside [`on_devices`]).
pub fn device() -> Device {
    CURRENT.with(|c| c.get())
}

/// Whether `VIDGRAD_REQUIRE_CUDA=1` makes the CUDA runs mandatory.
pub fn cuda_required() -> bool {
    std::env::var("VIDGRAD_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// The CUDA device the CUDA suites run on: the simulator under `VIDGRAD_CUDA_SIM=1`; else cuda:0 when
/// a GPU is usable; else the simulator when this build has it (so every CI run executes the kernels),
/// unless `VIDGRAD_CUDA_SIM=0`. `None` (printing why) when neither can run; fails under
/// `VIDGRAD_REQUIRE_CUDA=1` when no real GPU is usable.
///
/// The CUDA suites compare with the CPU and PyTorch's fixtures in FP32, while CUDA's default math mode is
/// tf32 (src/math_mode.rs): this sets the process's mode to fp32, explicitly; the checks of tf32 and bf16
/// pick theirs with `with_math_mode` (thread-scoped, so they are not affected).
pub fn cuda_device() -> Option<Device> {
    vidgrad::math_mode::set_math_mode(vidgrad::math_mode::MathMode::Fp32);
    let sim = std::env::var("VIDGRAD_CUDA_SIM").ok();
    if sim.as_deref() == Some("1") {
        return Some(Device::CudaSim);
    }
    if Device::cuda_available() {
        return Some(Device::Cuda(0));
    }
    let why = Device::Cuda(0)
        .backend()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        !cuda_required(),
        "VIDGRAD_REQUIRE_CUDA=1 but no CUDA device is usable: {why}"
    );
    static SAID: std::sync::Once = std::sync::Once::new();
    if sim.as_deref() != Some("0") && Device::cuda_sim_available() {
        SAID.call_once(|| println!("no CUDA device ({why}): running on the CUDA simulator"));
        return Some(Device::CudaSim);
    }
    SAID.call_once(|| println!("skipped: no CUDA device ({why})"));
    None
}

/// The devices the suite runs on: the CPU, plus the CUDA device of [`cuda_device`].
pub fn devices() -> Vec<Device> {
    let mut v = vec![Device::Cpu];
    v.extend(cuda_device());
    v
}

/// Run `f` once per device of [`devices`], with [`device`] returning that device.
pub fn on_devices(f: impl Fn()) {
    for d in devices() {
        CURRENT.with(|c| c.set(d));
        println!("== on {d}");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&f));
        CURRENT.with(|c| c.set(Device::Cpu));
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }
}

/// One fixture file: cases with their metadata and tensors.
pub struct Fixture {
    pub family: String,
    meta: BTreeMap<String, Value>,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// The `vidgrad` binary, to be given arguments and run or spawned.
pub fn vidgrad_command() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_vidgrad"))
}

/// Run the `vidgrad` binary: (success, stdout, stderr).
pub fn run_vidgrad(args: &[&str]) -> (bool, String, String) {
    run_vidgrad_env(args, &[])
}

/// [`run_vidgrad`] with environment variables set.
pub fn run_vidgrad_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = vidgrad_command()
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `vidgrad train` arguments for a run of a few hundred milliseconds per epoch on the CPU: a 4-stage
/// ct-sep with one block each, on 4 × 32² clips of the synthetic set (20 training, 10 validation
/// videos; `--data` added later wins).
pub fn tiny_train_args(out: &std::path::Path, epochs: usize) -> Vec<String> {
    let (epochs, out) = (epochs.to_string(), out.to_str().unwrap());
    #[rustfmt::skip]
    let args = [
        "train", "--model", "ct-sep", "--opt", "layers=1,1,1,1", "--synth-videos", "3",
        "--synth-frames", "8", "--frames", "4", "--size", "32", "--resize-short", "0",
        "--batch-size", "4", "--val-ratio", "0.34", "--epochs", &epochs, "--device", "cpu",
        "--workers", "1", "--quiet", "--out", out,
    ];
    args.map(String::from).to_vec()
}

/// The loss of every training step in a run folder's metrics.jsonl, as f32 bits.
pub fn step_losses(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| (v["loss"].as_f64().unwrap() as f32).to_bits())
        .collect()
}

/// Where `tests/fixtures` lives: `VIDGRAD_FIXTURE_ROOT` (set by the GPU bundle's run script, see
/// docs/GPU.md), else the source tree.
pub fn fixture_root() -> PathBuf {
    std::env::var_os("VIDGRAD_FIXTURE_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

impl Fixture {
    pub fn load(family: &str) -> Fixture {
        let path = fixture_root().join(format!("tests/fixtures/ops/{family}.safetensors"));
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
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                d => panic!("{name}: unexpected dtype {d:?}"),
            };
            tensors.insert(name.to_string(), (view.shape().to_vec(), data));
        }
        Fixture {
            family: family.to_string(),
            meta,
            tensors,
        }
    }

    /// Number of cases in the file.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Case names whose "op" is `op`.
    pub fn cases(&self, op: &str) -> Vec<String> {
        let v: Vec<String> = self
            .meta
            .iter()
            .filter(|(_, m)| m["op"] == op)
            .map(|(k, _)| k.clone())
            .collect();
        assert!(
            !v.is_empty(),
            "no '{op}' cases in {}.safetensors",
            self.family
        );
        v
    }

    pub fn meta(&self, case: &str) -> &Value {
        &self.meta[case]
    }

    pub fn has(&self, case: &str, name: &str) -> bool {
        self.tensors.contains_key(&format!("{case}.{name}"))
    }

    pub fn raw(&self, case: &str, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(&format!("{case}.{name}"))
            .unwrap_or_else(|| panic!("fixture {}: no tensor {case}.{name}", self.family))
    }

    /// A tensor (no grad).
    pub fn t(&self, case: &str, name: &str) -> Tensor {
        let (shape, data) = self.raw(case, name);
        let shape = if shape.is_empty() {
            vec![1]
        } else {
            shape.clone()
        };
        Tensor::from_slice(data, &shape, device()).unwrap()
    }

    /// A leaf tensor that requires grad.
    pub fn leaf(&self, case: &str, name: &str) -> Tensor {
        self.t(case, name).with_grad()
    }

    pub fn labels(&self, case: &str) -> Vec<usize> {
        self.raw(case, "labels")
            .1
            .iter()
            .map(|&v| v as usize)
            .collect()
    }
}

pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("uint") as usize)
        .collect()
}

/// Tolerance: |got − want| ≤ atol + rtol·|want| elementwise where PyTorch's value is finite; where it is
/// NaN or ±Inf the value must be NaN, or the same infinity, exactly (and a non-finite value where PyTorch
/// has a finite one is a mismatch).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub atol: f32,
    pub rtol: f32,
}

/// Collects comparisons of one test and fails it at the end with every mismatch listed.
pub struct Report {
    name: String,
    failures: Vec<String>,
    checks: usize,
}

impl Report {
    pub fn new(name: &str) -> Self {
        Report {
            name: format!("{name} on {}", device()),
            failures: vec![],
            checks: 0,
        }
    }

    pub fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }

    /// Compare `got` with `want` (shape and values), printing the worst error.
    pub fn close(
        &mut self,
        what: &str,
        got: &Tensor,
        want_shape: &[usize],
        want: &[f32],
        tol: Tol,
    ) {
        self.checks += 1;
        let want_shape = if want_shape.is_empty() {
            &[1][..]
        } else {
            want_shape
        };
        if got.shape() != want_shape {
            self.fail(format!(
                "{what}: shape {:?}, expected {want_shape:?}",
                got.shape()
            ));
            return;
        }
        let g = got.to_vec().unwrap();
        let (mut worst, mut at, mut excess) = (0f32, 0usize, f32::NEG_INFINITY);
        let mut non_finite = 0;
        for (i, (&a, &b)) in g.iter().zip(want).enumerate() {
            if !a.is_finite() || !b.is_finite() {
                // NaN where PyTorch has NaN, the same infinity where it has one: nothing else.
                let same = (a.is_nan() && b.is_nan()) || a == b;
                non_finite += 1;
                if !same && excess != f32::INFINITY {
                    (excess, at) = (f32::INFINITY, i);
                }
                continue;
            }
            let err = (a - b).abs();
            let over = err - (tol.atol + tol.rtol * b.abs());
            if err > worst || err.is_nan() {
                worst = err;
            }
            if over > excess || over.is_nan() {
                excess = over;
                at = i;
            }
        }
        let nf = if non_finite > 0 {
            format!(", {non_finite} non-finite compared exactly")
        } else {
            String::new()
        };
        println!(
            "  {what:<48} max|err| {worst:.2e}  (atol {:.0e}, rtol {:.0e}){nf}",
            tol.atol, tol.rtol
        );
        if excess.is_nan() || excess > 0.0 {
            self.fail(format!(
                "{what}: element {at} is {} vs PyTorch {} (max|err| {worst:.3e}, tol {tol:?})",
                g[at], want[at]
            ));
        }
    }

    /// Compare with a fixture tensor.
    pub fn check(&mut self, fx: &Fixture, case: &str, name: &str, got: &Tensor, tol: Tol) {
        let (shape, data) = fx.raw(case, name);
        self.close(&format!("{case}.{name}"), got, shape, data, tol);
    }

    /// The gradient of leaf `input` against fixture tensor `g<input>`.
    pub fn check_grad(&mut self, fx: &Fixture, case: &str, input: &str, leaf: &Tensor, tol: Tol) {
        match leaf.grad() {
            Some(g) => self.check(fx, case, &format!("g{input}"), &g, tol),
            None => self.fail(format!("{case}: no gradient reached {input}")),
        }
    }

    pub fn finish(self) {
        println!(
            "{}: {} comparisons, {} failed",
            self.name,
            self.checks,
            self.failures.len()
        );
        assert!(self.checks > 0, "{}: nothing was compared", self.name);
        assert!(
            self.failures.is_empty(),
            "{} failed:\n  {}",
            self.name,
            self.failures.join("\n  ")
        );
    }
}

/// Whether ffmpeg and ffprobe are installed; prints why `test` is skipped when not (CI installs
/// ffmpeg; the video tests pass without it).
pub fn have_ffmpeg(test: &str) -> bool {
    let available = |name: &str| {
        std::process::Command::new(name)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ok = available("ffmpeg") && available("ffprobe");
    if !ok {
        println!("skipped: {test}: ffmpeg/ffprobe not found on the PATH (apt-get install ffmpeg)");
    }
    ok
}
