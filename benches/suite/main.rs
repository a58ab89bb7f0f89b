//! vidgrad's benchmark suite (`cargo bench`, or `cargo bench --bench suite -- [cpu|cuda] [kernels|models]
//! [fp32|tf32|bf16 ...] [MODEL ...|all]`).
//!
//! **Kernels.** For each model (default: the three — ECO-Lite, seed 000's C2D-NL-R50, R(2+1)D-18 —
//! as far as `models::MODELS` has them; `all` or `VIDGRAD_BENCH_MODELS=a,b` for others) the graph is built
//! and `vidgrad::bench::kernel_shapes` lists its distinct kernel calls with their counts; every pass of each
//! (forward, backward / dgrad / wgrad, batch norm's eval forward) is timed straight on the backend. CUDA:
//! batch 16, CUDA events around each run, 3 warm-up runs, median of ≥ 20 runs, inputs rotated over enough
//! copies that the data touched between two uses of one copy exceeds twice the L2. CPU: batch 1 (the big
//! 3-D convolutions at batch 16 would take minutes on two cores), wall clock, median of 3–15 runs after
//! one warm-up, glibc's allocator thresholds fixed (`settle_allocator`). Rows give µs, TFLOP/s (conv,
//! linear, matmul, attention) or GB/s (the rest) and the % of the device's peak for the row's math
//! mode — FP32, dense TF32 or dense BF16 — or of its memory peak (GPU); on the CPU memory-bound rows
//! are a % of a STREAM-like copy and FLOP rows a % of an FMA-bound loop's FLOP/s, both measured at the start of the same run with the same threads (`stream.rs`,
//! `fma_peak.rs`), and each model gets a table of kernel families (Σ bytes / Σ time over its calls).
//!
//! **Math modes.** The calls whose products the math mode changes (`Kernel::uses_math_mode`: convolutions
//! but depthwise, linear, matmul) are timed once per selected mode, every other call once (in FP32, which
//! is what it computes in every mode); each row records its mode (`math`). Selected: the bare words
//! `fp32`, `tf32`, `bf16`; else all three on CUDA and the process's mode (`VIDGRAD_MATH`, else the CPU's
//! default) on the CPU. Whole models are timed once per selected mode.
//!
//! **Whole models.** Inference (eval, no tape) and a training step (forward, cross entropy, backward, SGD
//! with momentum) in clips/s, and the device's peak memory: batch 16 on CUDA; batch 2 on the CPU.
//!
//! Writes target/bench/{shapes,kernels_<dev>,models_<dev>}.json and .md tables;
//! tools/bench/torch_side_by_side.py times PyTorch on the same rows and prints ratios. Without a CUDA
//! device the CUDA part is skipped with one line.
//!
//! Environment: `VIDGRAD_BENCH_MODELS`, `VIDGRAD_BENCH_CPU_BATCH` (kernel rows, default 1),
//! `VIDGRAD_BENCH_CPU_MODEL_BATCH` (default 2), `VIDGRAD_BENCH_TARGET_MS` (time per CPU kernel pass,
//! default 300), `VIDGRAD_BENCH_OUT` (output folder), `VIDGRAD_BENCH_NO_FUSE=1` (whole models without
//! the fusion pass, the CLI's `--no-fuse`: fused and unfused steps from one binary).

mod clock;
mod fma_peak;
mod kernels;
mod models;
mod report;
mod stream;

use std::process::ExitCode;
use std::time::Instant;

use serde_json::{json, Value};

use vidgrad::bench::{bench_models, kernel_shapes, BenchModel, Kernel, Pass, Work};
use vidgrad::math_mode::{with_math_mode, MathMode};
use vidgrad::{Device, Result};

use clock::{Clock, Plan};
use kernels::{make_set, run, Noise};
use report::{fmt_bytes, out_dir, write, write_tables, Machine};

const CUDA_BATCH: usize = 16;
/// Upper bound on the copies of one kernel's inputs (tiny kernels: 2·L2 / their bytes would be huge).
const MAX_SETS: usize = 4096;

struct Args {
    cpu: bool,
    cuda: bool,
    kernels: bool,
    models: bool,
    names: Vec<String>,
    /// The math modes asked for (empty: the device's default selection, [`Args::modes`]).
    math: Vec<MathMode>,
}

impl Args {
    /// The math modes to time on `dev`: those asked for, else all three on CUDA and the process's mode
    /// on the CPU (whose rounding modes are reference arithmetic, not a speed path).
    fn modes(&self, dev: Device) -> Result<Vec<MathMode>> {
        Ok(if !self.math.is_empty() {
            self.math.clone()
        } else if matches!(dev, Device::Cuda(_)) {
            MathMode::ALL.to_vec()
        } else {
            vec![vidgrad::math_mode::math_mode_on(
                vidgrad::math_mode::Hardware::Cpu,
            )?]
        })
    }
}

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn parse_args(all: &[BenchModel]) -> std::result::Result<Args, String> {
    let mut a = Args {
        cpu: false,
        cuda: false,
        kernels: false,
        models: false,
        names: vec![],
        math: vec![],
    };
    // cargo passes --bench (and libtest-style flags); only bare words are ours
    for w in std::env::args().skip(1).filter(|w| !w.starts_with('-')) {
        match w.as_str() {
            "cpu" => a.cpu = true,
            "cuda" => a.cuda = true,
            "kernels" => a.kernels = true,
            "models" => a.models = true,
            "all" => a.names = all.iter().map(|m| m.name.to_string()).collect(),
            n if all.iter().any(|m| m.name == n) => a.names.push(n.to_string()),
            m if MathMode::ALL.iter().any(|x| x.name() == m) => {
                let mode = MathMode::parse(m).map_err(|e| e.to_string())?;
                if !a.math.contains(&mode) {
                    a.math.push(mode);
                }
            }
            other => {
                let names: Vec<&str> = all.iter().map(|m| m.name).collect();
                return Err(format!(
                    "unknown argument '{other}': expected cpu, cuda, kernels, models, fp32, tf32, bf16, all or a \
                     model ({})",
                    names.join(", ")
                ));
            }
        }
    }
    if !a.cpu && !a.cuda {
        (a.cpu, a.cuda) = (true, true);
    }
    if !a.kernels && !a.models {
        (a.kernels, a.models) = (true, true);
    }
    if a.names.is_empty() {
        if let Ok(v) = std::env::var("VIDGRAD_BENCH_MODELS") {
            a.names = if v == "all" {
                all.iter().map(|m| m.name.to_string()).collect()
            } else {
                v.split(',').map(|s| s.trim().to_string()).collect()
            };
        } else {
            a.names = all
                .iter()
                .filter(|m| m.primary)
                .map(|m| m.name.to_string())
                .collect();
        }
    }
    Ok(a)
}

/// Fixes glibc's allocator thresholds, so that a kernel row times its kernel, not page faults: by
/// default the threshold above which a buffer is mapped moves with the buffers freed, and in some
/// runs the first 5–12 calls of a row got their fresh outputs mapped or trimmed away and faulted in
/// again on every call (ECO-Lite's 3 × 3 average-pool backward, a probe of 20 calls: 0.87–0.97 ms
/// for the first 5, 0.45–0.53 after; with the thresholds fixed, 0.44–0.54 from the second call),
/// which a median of 3–15 runs can land on. A training step's heap settles likewise (the
/// whole-model rows do not change with this). torch_side_by_side.py sets the same for PyTorch.
fn settle_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of the allocator's parameters, before any thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

fn main() -> ExitCode {
    settle_allocator();
    // Before the STREAM copy touches rayon's pool: the main thread joins it, as it does on the CPU
    // backend's first use in a training run, so the copy and the kernels run on the same threads.
    vidgrad::backend::cpu::join_thread_pool();
    if std::env::var("VIDGRAD_BENCH_NO_FUSE").is_ok_and(|v| v == "1") {
        vidgrad::exec::set_fuse_by_default(false);
    }
    let all = bench_models();
    let args = match parse_args(&all) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let selected: Vec<&BenchModel> = args
        .names
        .iter()
        .filter_map(|n| all.iter().find(|m| m.name == n.as_str()))
        .collect();
    let out = out_dir();
    let t0 = Instant::now();
    let mut failed = false;
    write_shapes(&all, &out);
    if args.cpu {
        if let Err(e) = device_suite(&args, &selected, Device::Cpu, &out) {
            eprintln!("CPU benches failed: {e}");
            failed = true;
        }
    }
    if args.cuda {
        if Device::cuda_available() {
            if let Err(e) = device_suite(&args, &selected, Device::Cuda(0), &out) {
                eprintln!("CUDA benches failed: {e}");
                failed = true;
            }
        } else {
            println!(
                "CUDA benches skipped: no CUDA device ({})",
                no_cuda_reason()
            );
        }
    }
    println!("bench suite: {:.0} s", t0.elapsed().as_secs_f64());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn no_cuda_reason() -> &'static str {
    use vidgrad::backend::cuda::{driver_present, kernels};
    if !kernels::embedded() {
        "this build has no CUDA kernels: nvcc was not found when it was compiled, see docs/GPU.md"
    } else if !driver_present() {
        "no CUDA driver library (libcuda.so) on this machine"
    } else {
        "the CUDA driver reports no usable GPU"
    }
}

/// target/bench/shapes.json: every model's distinct kernel calls at its batch-16 benchmark input.
fn write_shapes(all: &[BenchModel], out: &std::path::Path) {
    let models: Vec<Value> = all
        .iter()
        .map(
            |m| match m.graph(CUDA_BATCH).and_then(|g| kernel_shapes(&g)) {
                Ok(shapes) => json!({
                "model": m.name, "input": m.input, "primary": m.primary,
                "options": {"classes": m.opts.classes, "dropout": m.opts.dropout},
                "kernels": shapes.iter().map(|s| s.to_json()).collect::<Vec<_>>()}),
                Err(e) => json!({"model": m.name, "input": m.input, "error": e.to_string()}),
            },
        )
        .collect();
    let doc = json!({"batch": CUDA_BATCH, "models": models});
    write(
        out,
        "shapes.json",
        &serde_json::to_string_pretty(&doc).unwrap(),
    );
}

fn device_suite(
    args: &Args,
    models: &[&BenchModel],
    dev: Device,
    out: &std::path::Path,
) -> Result<()> {
    let (machine, clock) = match dev {
        Device::Cuda(i) => {
            let be = vidgrad::backend::cuda::backend(i)?;
            (Machine::cuda(be.properties()?), Clock::Cuda(be))
        }
        // the bandwidth and FLOP/s the kernel rows are measured against, in this run
        _ => (
            Machine::cpu(
                args.kernels.then(stream::measure),
                args.kernels.then(fma_peak::measure).flatten(),
            ),
            Clock::Cpu,
        ),
    };
    let modes = args.modes(dev)?;
    println!(
        "\n=== {} benches: {}\nmath modes: {}",
        machine.kind,
        machine.describe(),
        mode_names(&modes).join(", ")
    );
    if args.kernels {
        kernel_suite(&machine, dev, clock, models, &modes, out)?;
    }
    if args.models {
        model_suite(&machine, dev, clock, models, &modes, out)?;
    }
    Ok(())
}

fn mode_names(modes: &[MathMode]) -> Vec<&'static str> {
    modes.iter().map(|m| m.name()).collect()
}

/// One timed pass, for the tables.
struct Row {
    family: &'static str,
    math: MathMode,
    shape: String,
    count: usize,
    rate: f64,
    is_flops: bool,
    pct: Option<f64>,
}

fn rate_str(r: &Row) -> String {
    if r.is_flops {
        format!("{:.3} TFLOP/s", r.rate / 1e12)
    } else {
        format!("{:.1} GB/s", r.rate / 1e9)
    }
}

fn pct_str(p: Option<f64>) -> String {
    p.map_or("n/a".into(), |p| format!("{p:.1}%"))
}

/// Per kernel family and pass, over a model's calls: Σ count × work and Σ count × median time, so the
/// family's rate is its total work over its total time (big calls weigh as much as they cost).
#[derive(Default)]
struct Families(std::collections::BTreeMap<(&'static str, &'static str, &'static str), FamilySum>);

#[derive(Default)]
struct FamilySum {
    calls: usize,
    work: f64,
    /// Σ count × median, Σ count × fastest run.
    secs: f64,
    fastest: f64,
    is_flops: bool,
    math: MathMode,
}

impl Families {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        family: &'static str,
        pass: Pass,
        math: MathMode,
        calls: usize,
        work: f64,
        (secs, fastest): (f64, f64),
        is_flops: bool,
    ) {
        let e = self
            .0
            .entry((family, pass.name(), math.name()))
            .or_default();
        e.calls += calls;
        e.work += work;
        e.secs += secs;
        e.fastest += fastest;
        e.is_flops = is_flops;
        e.math = math;
    }

    /// Each family's row at its median and at its fastest runs.
    fn rows(&self, machine: &Machine) -> Vec<(&'static str, &'static str, &FamilySum, [Row; 2])> {
        self.0
            .iter()
            .map(|(&(family, pass, _), f)| {
                let row = |secs: f64, fastest: bool| {
                    let rate = f.work / secs;
                    Row {
                        family,
                        math: f.math,
                        shape: String::new(),
                        count: f.calls,
                        rate,
                        is_flops: f.is_flops,
                        pct: machine.pct_at(rate, f.is_flops, f.math, fastest),
                    }
                };
                (family, pass, f, [row(f.secs, false), row(f.fastest, true)])
            })
            .collect()
    }

    /// Printed, and returned as a markdown table.
    fn report(&self, machine: &Machine) -> String {
        println!(
            "  per family (Σ count x work / Σ count x time), at the median and at the fastest runs:"
        );
        let mut md = "\n| kernel family | pass | math | calls | median | rate | % peak | fastest | rate | % peak |\n\
                      |---|---|---|---|---|---|---|---|---|---|\n"
            .to_string();
        // console column widths (the first three left-aligned)
        const WIDTHS: [usize; 10] = [18, 8, 4, 5, 11, 16, 7, 11, 16, 7];
        for (family, pass, f, [med, best]) in self.rows(machine) {
            let cells = [
                family.to_string(),
                pass.to_string(),
                f.math.name().to_string(),
                f.calls.to_string(),
                format!("{:.2} ms", f.secs * 1e3),
                rate_str(&med),
                pct_str(med.pct),
                format!("{:.2} ms", f.fastest * 1e3),
                rate_str(&best),
                pct_str(best.pct),
            ];
            let line: Vec<String> = cells
                .iter()
                .zip(WIDTHS)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i < 3 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            println!("  {}", line.join(" "));
            md += &format!("| {} |\n", cells.join(" | "));
        }
        md
    }

    fn to_json(&self, machine: &Machine) -> Value {
        self.rows(machine)
            .iter()
            .map(|(family, pass, f, [med, best])| {
                let unit = |r: &Row| {
                    if f.is_flops {
                        r.rate / 1e12
                    } else {
                        r.rate / 1e9
                    }
                };
                let rate_key = if f.is_flops { "tflops" } else { "gbps" };
                json!({"family": family, "pass": pass, "math": f.math.name(), "calls": f.calls,
                       "ms": f.secs * 1e3,
                       "fastest_ms": f.fastest * 1e3,
                       if f.is_flops { "flops" } else { "bytes" }: f.work,
                       rate_key: unit(med), format!("fastest_{rate_key}"): unit(best),
                       "pct_peak": med.pct, "fastest_pct_peak": best.pct})
            })
            .collect()
    }
}

fn kernel_suite(
    machine: &Machine,
    dev: Device,
    clock: Clock,
    models: &[&BenchModel],
    modes: &[MathMode],
    out: &std::path::Path,
) -> Result<()> {
    let be = dev.backend()?;
    let cuda = matches!(dev, Device::Cuda(_));
    let batch = if cuda {
        CUDA_BATCH
    } else {
        env_usize("VIDGRAD_BENCH_CPU_BATCH", 1)
    };
    let plan = if cuda {
        Plan {
            warmup: 3,
            min_runs: 20,
            max_runs: 200,
            target_s: 0.05,
        }
    } else {
        Plan {
            warmup: 1,
            min_runs: 3,
            max_runs: 15,
            target_s: env_usize("VIDGRAD_BENCH_TARGET_MS", 300) as f64 / 1e3,
        }
    };
    let l2 = machine.l2_bytes();
    println!(
        "kernels at batch {batch}{}: {}",
        if cuda {
            ""
        } else {
            " (CPU: batch reduced from 16)"
        },
        if cuda {
            format!(
                "CUDA events, {} warm-up, median of >= {} runs, inputs rotated over > 2 x L2 ({})",
                plan.warmup,
                plan.min_runs,
                fmt_bytes(l2)
            )
        } else {
            format!(
                "wall clock, {} warm-up, median of {}-{} runs, {} threads",
                plan.warmup, plan.min_runs, plan.max_runs, machine.threads
            )
        }
    );
    let mut noise = Noise::new(1);
    let mut json_models = vec![];
    let mut md = format!(
        "# vidgrad kernels, {}\n\n{}\n\nBatch {batch}{}. Math modes {} (conv but depthwise, linear and \
         matmul once per mode; the rest computes in FP32 in every mode). Median µs per call; TFLOP/s = \
         2·MACs/time, GB/s = bytes read + written once / time; % peak: {}.\n",
        machine.kind,
        machine.describe(),
        if cuda { "" } else { " (CPU rows: batch reduced from 16)" },
        mode_names(modes).join(", "),
        if cuda {
            "of the row's mode's peak, or of the memory peak"
        } else {
            "memory-bound rows as % of the STREAM-like copy's median above, FLOP rows as % of the \
             FMA loop's median (n/a where not measured)"
        }
    );
    for m in models {
        let t_model = Instant::now();
        let graph = m.graph(batch)?;
        let shapes = kernel_shapes(&graph)?;
        let input = m.input_at(batch);
        println!(
            "\n--- {} {:?}: {} distinct kernel calls from {} graph nodes",
            m.name,
            input,
            shapes.len(),
            graph.nodes.len()
        );
        println!(
            "  {:<18} {:<8} {:<4} {:<46} {:>5} {:>11} {:>16} {:>7}",
            "kernel", "pass", "math", "shape", "count", "µs", "rate", "% peak"
        );
        md += &format!(
            "\n## {} {:?}\n\n| kernel | pass | math | shape | count | µs | rate | % peak |\n\
             |---|---|---|---|---|---|---|---|\n",
            m.name, input
        );
        let mut rows_json = vec![];
        let mut families = Families::default();
        // per selected mode: the sums over the model's calls (inference, training step)
        let mut sums = vec![(0.0, 0.0); modes.len()];
        for ks in &shapes {
            let k = &ks.kernel;
            // a failing call (e.g. out of memory) is reported and the suite goes on
            let mut one = || -> Result<()> {
                let set0 = make_set(be, k, &mut noise)?;
                let n_sets = if l2 > 0 {
                    (2 * l2).div_ceil(set0.bytes().max(1)).clamp(1, MAX_SETS)
                } else {
                    1
                };
                let mut sets = vec![set0];
                for _ in 1..n_sets {
                    sets.push(sets[0].copy(be)?);
                }
                let set_bytes = sets[0].bytes();
                let row_modes = if k.uses_math_mode() {
                    modes.to_vec()
                } else {
                    vec![MathMode::Fp32]
                };
                for (&pass, &mode) in k
                    .passes()
                    .iter()
                    .flat_map(|p| row_modes.iter().map(move |m| (p, m)))
                {
                    let t = clock.kernel(plan, |i| {
                        with_math_mode(mode, || run(be, k, &sets[i % sets.len()], pass))
                    })?;
                    let secs = t.median();
                    let (work, is_flops) = match k.work(pass) {
                        Work::Flops(f) => (f, true),
                        Work::Bytes(b) => (b, false),
                    };
                    let row = Row {
                        family: k.family(),
                        math: mode,
                        shape: k.describe(),
                        count: ks.count,
                        rate: work / secs,
                        is_flops,
                        pct: machine.pct(work / secs, is_flops, mode),
                    };
                    let c = ks.count as f64;
                    families.add(
                        row.family,
                        pass,
                        mode,
                        ks.count,
                        c * work,
                        (c * secs, c * t.min()),
                        is_flops,
                    );
                    let inference = match (k, pass) {
                        (Kernel::BatchNorm { .. } | Kernel::MaxPool { .. }, Pass::FwdEval) => true,
                        (
                            Kernel::BatchNorm { .. }
                            | Kernel::MaxPool { .. }
                            | Kernel::Dropout { .. },
                            _,
                        ) => false,
                        (_, p) => p == Pass::Fwd,
                    };
                    // a row timed once counts in every mode's sums
                    for (i, _) in modes
                        .iter()
                        .enumerate()
                        .filter(|&(_, &m)| m == mode || !k.uses_math_mode())
                    {
                        if inference {
                            sums[i].0 += c * secs;
                        }
                        if pass != Pass::FwdEval {
                            sums[i].1 += c * secs;
                        }
                    }
                    println!(
                        "  {:<18} {:<8} {:<4} {:<46} {:>5} {:>11.1} {:>16} {:>7}",
                        row.family,
                        pass.name(),
                        row.math.name(),
                        row.shape,
                        row.count,
                        secs * 1e6,
                        rate_str(&row),
                        pct_str(row.pct)
                    );
                    md += &format!(
                        "| {} | {} | {} | {} | {} | {:.1} | {} | {} |\n",
                        row.family,
                        pass.name(),
                        row.math.name(),
                        row.shape,
                        row.count,
                        secs * 1e6,
                        rate_str(&row),
                        pct_str(row.pct)
                    );
                    let mut r = ks.to_json();
                    let o = r.as_object_mut().unwrap();
                    o.remove("passes");
                    o.insert("model".into(), json!(m.name));
                    o.insert("pass".into(), json!(pass.name()));
                    o.insert("math".into(), json!(mode.name()));
                    o.insert("us".into(), json!(secs * 1e6));
                    o.insert("min_us".into(), json!(t.min() * 1e6));
                    o.insert("runs".into(), json!(t.runs.len()));
                    o.insert("rotation_sets".into(), json!(sets.len()));
                    o.insert("set_bytes".into(), json!(set_bytes));
                    o.insert(if is_flops { "flops" } else { "bytes" }.into(), json!(work));
                    o.insert(
                        if is_flops { "tflops" } else { "gbps" }.into(),
                        json!(if is_flops {
                            row.rate / 1e12
                        } else {
                            row.rate / 1e9
                        }),
                    );
                    o.insert("pct_peak".into(), json!(row.pct));
                    o.insert(
                        "fastest_pct_peak".into(),
                        json!(machine.pct_at(work / t.min(), is_flops, mode, true)),
                    );
                    rows_json.push(r);
                }
                drop(sets);
                if let Clock::Cuda(cb) = clock {
                    cb.empty_cache()?; // the next call's sizes differ: keep the driver's pool small
                }
                Ok(())
            };
            if let Err(e) = one() {
                println!(
                    "  {:<18} {:<8} {:<46} failed: {e}",
                    k.family(),
                    "",
                    k.describe()
                );
                md += &format!(
                    "| {} | | | {} | {} | failed: {e} | | |\n",
                    k.family(),
                    k.describe(),
                    ks.count
                );
                rows_json.push(json!({"model": m.name, "family": k.family(), "shape": k.describe(),
                                      "args": k.to_json(), "count": ks.count, "error": e.to_string()}));
                if let Clock::Cuda(cb) = clock {
                    cb.empty_cache().ok();
                }
            }
        }
        let mut sums_json = serde_json::Map::new();
        md += "\n";
        for (mode, (t_inf, t_train)) in modes.iter().zip(&sums) {
            println!(
                "  {mode}: sum over the model's calls (count x median): inference {:.2} ms, training step \
                 {:.2} ms",
                t_inf * 1e3,
                t_train * 1e3,
            );
            md += &format!(
                "\n{mode}: sum over the model's calls (count × median): inference {:.2} ms, training step \
                 {:.2} ms.\n",
                t_inf * 1e3,
                t_train * 1e3
            );
            sums_json.insert(
                mode.name().into(),
                json!({"inference_ms": t_inf * 1e3, "train_ms": t_train * 1e3}),
            );
        }
        println!("  ({:.0} s to measure)", t_model.elapsed().as_secs_f64());
        md += &families.report(machine);
        json_models.push(json!({
            "model": m.name, "input": input, "batch": batch,
            "options": {"classes": m.opts.classes, "dropout": m.opts.dropout},
            "sums": sums_json, "families": families.to_json(machine), "rows": rows_json}));
        // rewritten after each model: a run cut short by a time limit keeps the models it finished
        let doc = json!({
            "device": machine.to_json(), "batch": batch,
            "math_modes": mode_names(modes),
            "timing": {"warmup": plan.warmup, "min_runs": plan.min_runs, "max_runs": plan.max_runs,
                       "clock": if cuda { "cuda events" } else { "wall" },
                       "rotation_bytes": 2 * l2},
            "models": &json_models});
        write_tables(out, &format!("kernels_{}", machine.kind), &doc, &md);
    }
    Ok(())
}

fn model_suite(
    machine: &Machine,
    dev: Device,
    clock: Clock,
    models: &[&BenchModel],
    modes: &[MathMode],
    out: &std::path::Path,
) -> Result<()> {
    let cuda = matches!(dev, Device::Cuda(_));
    let batch = if cuda {
        CUDA_BATCH
    } else {
        env_usize("VIDGRAD_BENCH_CPU_MODEL_BATCH", 2)
    };
    let plan = if cuda {
        Plan {
            warmup: 3,
            min_runs: 20,
            max_runs: 20,
            target_s: 0.0,
        }
    } else {
        Plan {
            warmup: 1,
            min_runs: 3,
            max_runs: 3,
            target_s: 0.0,
        }
    };
    println!(
        "\nwhole models at batch {batch}{}: wall clock{}, {} warm-up, median of {} steps; SGD momentum {} \
         weight decay {}",
        if cuda { "" } else { " (CPU: batch reduced from 16)" },
        if cuda { " with synchronisation" } else { "" },
        plan.warmup,
        plan.min_runs,
        models::SGD.momentum,
        models::WEIGHT_DECAY
    );
    models::header();
    let mut rows = vec![];
    let mut md = format!(
        "# vidgrad whole models, {}\n\n{}\n\nBatch {batch}. Inference: eval mode, no tape. Training step: forward, \
         cross entropy, backward, SGD (momentum {}, weight decay {}). Peak: the device's allocated bytes \
         (weights, gradients, optimiser state, activations).\n\n\
         | model | math | input | inference clips/s | ms | peak memory | training clips/s | ms | peak memory |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        machine.kind,
        machine.describe(),
        models::SGD.momentum,
        models::WEIGHT_DECAY
    );
    for (m, &mode) in models
        .iter()
        .flat_map(|m| modes.iter().map(move |mode| (m, mode)))
    {
        match with_math_mode(mode, || models::bench(m, batch, dev, clock, plan)) {
            Ok(r) => {
                md += &format!(
                    "| {} | {mode} | {:?} | {:.2} | {:.1} | {} | {:.2} | {:.1} | {} |\n",
                    m.name,
                    m.input_at(batch),
                    r["inference"]["clips_per_s"].as_f64().unwrap_or(0.0),
                    r["inference"]["ms"].as_f64().unwrap_or(0.0),
                    fmt_bytes(r["inference"]["peak_bytes"].as_u64().unwrap_or(0) as usize),
                    r["train"]["clips_per_s"].as_f64().unwrap_or(0.0),
                    r["train"]["ms"].as_f64().unwrap_or(0.0),
                    fmt_bytes(r["train"]["peak_bytes"].as_u64().unwrap_or(0) as usize),
                );
                rows.push(r);
            }
            Err(e) => {
                println!("  {:<14} {mode} failed: {e}", m.name);
                md += &format!(
                    "| {} | {mode} | {:?} | failed: {e} | | | | | |\n",
                    m.name,
                    m.input_at(batch)
                );
                rows.push(
                    json!({"model": m.name, "math": mode.name(), "input": m.input_at(batch),
                                 "error": e.to_string()}),
                );
            }
        }
        // rewritten after each row: a run cut short by a time limit keeps the rows it finished
        let doc = json!({"device": machine.to_json(), "batch": batch, "math_modes": mode_names(modes),
                         "timing": {"warmup": plan.warmup, "runs": plan.min_runs,
                                    "clock": if cuda { "wall, synchronised" } else { "wall" }},
                         "models": &rows});
        write_tables(out, &format!("models_{}", machine.kind), &doc, &md);
    }
    Ok(())
}
