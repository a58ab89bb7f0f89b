//! The machine a run measured (device, peaks, date, commit) and the output files.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use vidgrad::backend::cuda::timing::DeviceProps;
use vidgrad::math_mode::MathMode;

use crate::fma_peak::FmaPeak;
use crate::stream::Stream;

/// FP32, dense tensor-core and memory peaks of a GPU, and where they come from.
#[derive(Debug, Clone)]
pub struct Peaks {
    pub fp32_flops: f64,
    /// Dense TF32 and BF16 tensor-core peaks (no 2:4 sparsity); None where no figure is known.
    pub tf32_flops: Option<f64>,
    pub bf16_flops: Option<f64>,
    pub mem_bytes_s: f64,
    pub source: String,
}

/// Peaks of the H100/H200 by name (NVIDIA's data sheets: FP32 without tensor cores; dense TF32 and BF16
/// from the H100 SXM5 column of the Hopper whitepaper's Table 3, 494.7 and 989.4 TFLOP/s at 132 SMs and
/// the 1830 MHz tensor clock, which the H200 SXM shares — docs/PERFORMANCE.md), else derived from the
/// driver's properties: SMs × FP32 lanes per SM (by compute capability) × 2 × peak clock, and 2 × memory
/// clock × bus width; tensor-core peaks unknown there (% of peak n/a).
pub fn peaks(p: &DeviceProps) -> Peaks {
    let name = p.name.to_uppercase();
    let table = |f: f64, tc: Option<(f64, f64)>, m: f64, what: &str| Peaks {
        fp32_flops: f * 1e12,
        tf32_flops: tc.map(|t| t.0 * 1e12),
        bf16_flops: tc.map(|t| t.1 * 1e12),
        mem_bytes_s: m * 1e12,
        source: format!("data sheet, {what}"),
    };
    const SXM_TENSOR: Option<(f64, f64)> = Some((494.7, 989.4));
    if name.contains("H200") {
        return if name.contains("NVL") {
            table(60.0, None, 4.8, "H200 NVL")
        } else {
            table(66.9, SXM_TENSOR, 4.8, "H200 SXM")
        };
    }
    if name.contains("H100") {
        return if name.contains("PCIE") {
            table(51.2, None, 2.0, "H100 PCIe")
        } else if name.contains("NVL") {
            table(60.0, None, 3.9, "H100 NVL")
        } else {
            table(66.9, SXM_TENSOR, 3.35, "H100 SXM")
        };
    }
    let lanes = match p.compute_capability {
        (8, 0) => 64.0,
        (major, _) if major >= 8 => 128.0,
        _ => 64.0,
    };
    Peaks {
        fp32_flops: p.sm_count as f64 * lanes * 2.0 * p.clock_khz as f64 * 1e3,
        tf32_flops: None,
        bf16_flops: None,
        mem_bytes_s: 2.0 * p.memory_clock_khz as f64 * 1e3 * p.memory_bus_bits as f64 / 8.0,
        source: format!(
            "from properties: {} SMs x {lanes} FP32 lanes x 2 x {:.0} MHz; 2 x {:.0} MHz x {} bit",
            p.sm_count,
            p.clock_khz as f64 / 1e3,
            p.memory_clock_khz as f64 / 1e3,
            p.memory_bus_bits
        ),
    }
}

/// What a run measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// "cpu" or "cuda".
    pub kind: &'static str,
    pub name: String,
    pub threads: usize,
    pub peaks: Option<Peaks>,
    pub props: Option<DeviceProps>,
    /// The CPU's STREAM-like bandwidth from this run: memory-bound rows are a % of its copy.
    pub stream: Option<Stream>,
    /// The CPU's FMA-loop FLOP/s from this run: FLOP rows are a % of it.
    pub fma_peak: Option<FmaPeak>,
    pub date: String,
    pub commit: String,
}

impl Machine {
    pub fn cpu(stream: Option<Stream>, fma_peak: Option<FmaPeak>) -> Machine {
        Machine {
            kind: "cpu",
            name: cpu_model(),
            threads: rayon::current_num_threads(),
            peaks: None,
            props: None,
            stream,
            fma_peak,
            date: today(),
            commit: commit(),
        }
    }

    pub fn cuda(props: DeviceProps) -> Machine {
        Machine {
            kind: "cuda",
            name: props.name.clone(),
            threads: rayon::current_num_threads(),
            peaks: Some(peaks(&props)),
            props: Some(props),
            stream: None,
            fma_peak: None,
            date: today(),
            commit: commit(),
        }
    }

    /// Bytes of last-level cache that input rotation must exceed (the GPU's L2; 0 on the CPU).
    pub fn l2_bytes(&self) -> usize {
        self.props.as_ref().map_or(0, |p| p.l2_bytes as usize)
    }

    pub fn describe(&self) -> String {
        match (&self.props, &self.peaks) {
            (Some(p), Some(k)) => format!(
                "{} ({} SMs, compute {}.{}, L2 {}, {}); peaks FP32 {:.1}, dense TF32 {}, dense BF16 {} \
                 TFLOP/s, memory {:.2} TB/s ({}); date {}, commit {}",
                p.name,
                p.sm_count,
                p.compute_capability.0,
                p.compute_capability.1,
                fmt_bytes(p.l2_bytes as usize),
                fmt_bytes(p.total_memory as usize),
                k.fp32_flops / 1e12,
                tflops_or_na(k.tf32_flops),
                tflops_or_na(k.bf16_flops),
                k.mem_bytes_s / 1e12,
                k.source,
                self.date,
                self.commit
            ),
            _ => format!(
                "CPU {} ({} threads); {}; memory: {}; date {}, commit {}",
                self.name,
                self.threads,
                self.fma_peak.as_ref().map_or(
                    "FP32 peak not measured (n/a)".to_string(),
                    |p| format!("{}; FLOP rows as % of its median", p.describe())
                ),
                self.stream.as_ref().map_or(
                    "not measured (n/a)".to_string(),
                    |s| format!("{}; memory-bound rows as % of the copy's median", s.describe())
                ),
                self.date,
                self.commit
            ),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "kind": self.kind, "name": self.name, "threads": self.threads,
            "peaks": self.peaks.as_ref().map(|p| json!({
                "fp32_tflops": p.fp32_flops / 1e12, "tf32_dense_tflops": p.tf32_flops.map(|f| f / 1e12),
                "bf16_dense_tflops": p.bf16_flops.map(|f| f / 1e12), "memory_tbps": p.mem_bytes_s / 1e12, "source": p.source})),
            "properties": self.props.as_ref().map(|p| json!({
                "sm_count": p.sm_count, "compute_capability": [p.compute_capability.0, p.compute_capability.1],
                "clock_khz": p.clock_khz, "memory_clock_khz": p.memory_clock_khz,
                "memory_bus_bits": p.memory_bus_bits, "l2_bytes": p.l2_bytes, "total_memory": p.total_memory})),
            "stream": self.stream.as_ref().map(|s| s.to_json()),
            "fma_peak": self.fma_peak.as_ref().map(|p| p.to_json()),
            "date": self.date, "commit": self.commit,
        })
    }

    /// Percent of the peak of `mode`'s products (FP32, dense TF32 or dense BF16; flops) or of the memory
    /// peak (bytes); on the CPU, bytes against the STREAM-like copy's median and flops against the FMA
    /// loop's (either None where it was not measured). None where the peak is unknown.
    pub fn pct(&self, rate: f64, is_flops: bool, mode: MathMode) -> Option<f64> {
        self.pct_at(rate, is_flops, mode, false)
    }

    /// [`Machine::pct`]; with `fastest` (a rate from a kernel's fastest run), against the copy's or the
    /// FMA loop's fastest run on the CPU (like against like: under load the medians of both move).
    pub fn pct_at(&self, rate: f64, is_flops: bool, mode: MathMode, fastest: bool) -> Option<f64> {
        if let Some(s) = self.stream.as_ref().filter(|_| !is_flops) {
            let copy = if fastest { s.copy.best } else { s.copy.median };
            return Some(100.0 * rate / copy);
        }
        // the CPU's products are FP32 FMAs in every math mode (tf32 and bf16 round the operands)
        if let Some(p) = self.fma_peak.as_ref().filter(|_| is_flops) {
            let peak = if fastest { p.best } else { p.median };
            return Some(100.0 * rate / peak);
        }
        let p = self.peaks.as_ref()?;
        let peak = match (is_flops, mode) {
            (false, _) => p.mem_bytes_s,
            (true, MathMode::Fp32) => p.fp32_flops,
            (true, MathMode::Tf32) => p.tf32_flops?,
            (true, MathMode::Bf16) => p.bf16_flops?,
        };
        Some(100.0 * rate / peak)
    }
}

fn tflops_or_na(f: Option<f64>) -> String {
    f.map_or("n/a".into(), |f| format!("{:.1}", f / 1e12))
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|n| n.trim() == k))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(n), Some(f), Some(m)) => format!("{n} (family {f}, model {m})"),
        (Some(n), _, _) => n,
        _ => std::env::consts::ARCH.to_string(),
    }
}

/// The commit measured: VIDGRAD_COMMIT, else git (with "+dirty" when tracked files differ), else a
/// COMMIT file next to the binary's working directory (the GPU bundle writes one).
fn commit() -> String {
    if let Ok(c) = std::env::var("VIDGRAD_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR")])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(h) = git(&["rev-parse", "--short=12", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        return if dirty { format!("{h}+dirty") } else { h };
    }
    for p in ["COMMIT", "../COMMIT"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            return s.trim().chars().take(12).collect();
        }
    }
    "unknown".into()
}

/// Today's date (UTC), YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // civil_from_days (H. Hinnant)
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
}

pub fn fmt_bytes(b: usize) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

/// Where results go: VIDGRAD_BENCH_OUT, else `target/bench` of the source tree when it exists (cargo
/// bench), else `./target/bench` (a bundled binary on another machine).
pub fn out_dir() -> PathBuf {
    let dir = match std::env::var_os("VIDGRAD_BENCH_OUT") {
        Some(d) => PathBuf::from(d),
        None => {
            let src = Path::new(env!("CARGO_MANIFEST_DIR"));
            if src.join("Cargo.toml").exists() {
                src.join("target/bench")
            } else {
                PathBuf::from("target/bench")
            }
        }
    };
    std::fs::create_dir_all(&dir).ok();
    dir
}

pub fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    match std::fs::write(&p, text) {
        Ok(()) => println!("wrote {}", p.display()),
        Err(e) => eprintln!("could not write {}: {e}", p.display()),
    }
}

/// `name`.json (the document) and `name`.md (its tables).
pub fn write_tables(dir: &Path, name: &str, doc: &Value, md: &str) {
    write(
        dir,
        &format!("{name}.json"),
        &serde_json::to_string_pretty(doc).unwrap(),
    );
    write(dir, &format!("{name}.md"), md);
}
