//! Compiles every `kernels/*.cu` with nvcc and embeds the results (see docs/CUDA.md).
//!
//! Each family becomes one fatbin holding compute_80 PTX (JIT-compiled by the driver for any newer GPU),
//! sm_80 SASS (whose ptxas run gives the register/spill report) and one cubin per extra target named in
//! `VIDGRAD_CUDA_ARCHS` (e.g. `90a,100`). nvcc runs once per file, all files in parallel.
//!
//! nvcc is found through `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH` and `/usr/local/cuda`. Without it the
//! crate still builds (one cargo warning) and the CUDA device reports how to get the kernels;
//! `VIDGRAD_REQUIRE_NVCC=1` turns a missing nvcc into a build error. nvidia-smi is never called.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (family, Ok((fatbin, nvcc output)) or Err(nvcc output)).
type Built = (String, Result<(PathBuf, String), String>);

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let p = dir.join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/nvcc");
    p.is_file().then_some(p)
}

/// Extra SASS targets from VIDGRAD_CUDA_ARCHS ("90a,100" or "sm_90a sm_100").
fn extra_archs() -> Vec<String> {
    env::var("VIDGRAD_CUDA_ARCHS")
        .unwrap_or_default()
        .split([',', ' ', ';'])
        .map(|s| {
            s.trim()
                .trim_start_matches("sm_")
                .trim_start_matches("compute_")
        })
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = manifest.join("kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "VIDGRAD_CUDA_ARCHS",
        "VIDGRAD_REQUIRE_NVCC",
        "VIDGRAD_NVCC_FLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let mut sources: Vec<PathBuf> = fs::read_dir(&kdir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    // Headers shared by the kernels.
    if let Ok(rd) = fs::read_dir(&kdir) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "cuh") {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
    }

    let require = env::var("VIDGRAD_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc() else {
        if require {
            panic!(
                "VIDGRAD_REQUIRE_NVCC=1 but nvcc was not found (looked at $NVCC, $CUDA_HOME/bin, \
                 $CUDA_PATH/bin, $PATH and /usr/local/cuda/bin). Install the CUDA 13.0 compiler, e.g. \
                 `pip install nvidia-cuda-nvcc==13.0.* nvidia-cuda-crt==13.0.* nvidia-nvvm==13.0.* \
                 nvidia-cuda-runtime==13.0.* nvidia-cuda-cccl==13.0.*` and set NVCC (see .ci/run)."
            );
        }
        println!(
            "cargo:warning=nvcc not found: building vidgrad without CUDA kernels (the CPU backend works; \
             set NVCC or CUDA_HOME to build them, see docs/GPU.md)"
        );
        write_module(&out, None, &[], "");
        return;
    };

    let archs = extra_archs();
    let extra_flags: Vec<String> = env::var("VIDGRAD_NVCC_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // One thread per file: nvcc is single-threaded per input.
    let results: Vec<Built> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let (nvcc, out, archs, extra, kdir) = (&nvcc, &out, &archs, &extra_flags, &kdir);
                s.spawn(move || {
                    let family = src.file_stem().unwrap().to_string_lossy().to_string();
                    let dst = out.join(format!("{family}.fatbin"));
                    let mut cmd = Command::new(nvcc);
                    cmd.arg("-fatbin")
                        .arg("-O3")
                        .arg("-std=c++17")
                        .arg("-lineinfo")
                        .arg("-Xptxas")
                        .arg("-v")
                        .arg("-I")
                        .arg(kdir)
                        .arg("-gencode")
                        .arg("arch=compute_80,code=[compute_80,sm_80]");
                    for a in archs {
                        cmd.arg("-gencode")
                            .arg(format!("arch=compute_{a},code=sm_{a}"));
                    }
                    cmd.args(extra).arg("-o").arg(&dst).arg(src);
                    let r = match cmd.output() {
                        Err(e) => Err(format!("could not run {}: {e}", nvcc.display())),
                        Ok(o) => {
                            let stderr = String::from_utf8_lossy(&o.stderr).to_string();
                            let stdout = String::from_utf8_lossy(&o.stdout).to_string();
                            if o.status.success() {
                                Ok((dst, format!("{stdout}{stderr}")))
                            } else {
                                Err(format!("{stdout}{stderr}"))
                            }
                        }
                    };
                    (family, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut failed = String::new();
    let mut built = vec![];
    let mut report = String::new();
    for (family, r) in results {
        match r {
            Ok((path, log)) => {
                let _ = writeln!(report, "### {family}\n{log}");
                built.push((family, path));
            }
            Err(log) => {
                let _ = writeln!(failed, "nvcc failed on kernels/{family}.cu:\n{log}");
            }
        }
    }
    if !failed.is_empty() {
        // nvcc's messages carry "kernels/<file>.cu(<line>): error: ..."; show them as they are.
        for line in failed.lines() {
            eprintln!("{line}");
        }
        panic!("{failed}");
    }
    fs::write(out.join("ptxas_report.txt"), &report).unwrap();
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    write_module(&out, Some(&version), &built, &archs.join(","));
}

/// OUT_DIR/kernels.rs: the embedded fatbins, the ptxas report and how they were built.
fn write_module(out: &Path, nvcc_version: Option<&str>, built: &[(String, PathBuf)], archs: &str) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/// nvcc's version line, or None when the crate was built without nvcc."
    );
    let _ = writeln!(
        s,
        "pub const NVCC_VERSION: Option<&str> = {nvcc_version:?};"
    );
    let _ = writeln!(s, "/// Extra SASS targets (VIDGRAD_CUDA_ARCHS).");
    let _ = writeln!(s, "pub const EXTRA_ARCHS: &str = {archs:?};");
    let _ = writeln!(s, "/// (family, fatbin) for every kernels/<family>.cu.");
    let _ = writeln!(s, "pub const FATBINS: &[(&str, &[u8])] = &[");
    for (family, path) in built {
        let _ = writeln!(
            s,
            "    ({family:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    let _ = writeln!(s, "];");
    let _ = writeln!(
        s,
        "/// ptxas -v output of the sm_80 compilation, per family."
    );
    if nvcc_version.is_some() {
        let _ = writeln!(
            s,
            "pub const PTXAS_REPORT: &str = include_str!({:?});",
            out.join("ptxas_report.txt").display().to_string()
        );
    } else {
        let _ = writeln!(s, "pub const PTXAS_REPORT: &str = \"\";");
    }
    fs::write(out.join("kernels.rs"), s).unwrap();
}
