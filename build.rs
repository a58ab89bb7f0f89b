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
        "VIDGRAD_REQUIRE_SIM",
        "VIDGRAD_SIM_MARCH",
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

    println!("cargo::rustc-check-cfg=cfg(vidgrad_cudasim)");
    if build_simulator(&manifest, &out) {
        println!("cargo:rustc-cfg=vidgrad_cudasim");
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

// ---------------------------------------------------------------------------------------------------
// The simulated CUDA device (docs/CUDA-SIM.md): the same kernels/*.cu compiled as host C++.
// ---------------------------------------------------------------------------------------------------

/// One `__global__` kernel found in a source: (name, __launch_bounds__ max threads or 0).
type KernelDecl = (String, u32);

/// The text with `//` and `/* */` comments blanked out (line structure kept).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                out.push(b[i] as char);
                i += 1;
            }
            if i < b.len() {
                out.push('"');
                i += 1;
            }
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Every `extern "C" __global__ void [__launch_bounds__(N[, M])] name(` of a source.
fn find_kernels(src: &str) -> Vec<KernelDecl> {
    let code = strip_comments(src);
    let mut out = vec![];
    let mut rest = code.as_str();
    while let Some(i) = rest.find("__global__") {
        let mut s = rest[i + "__global__".len()..].trim_start();
        rest = &rest[i + 1..];
        let Some(after_void) = s.strip_prefix("void") else {
            continue;
        };
        s = after_void.trim_start();
        let mut bounds = 0;
        if let Some(lb) = s.strip_prefix("__launch_bounds__") {
            let lb = lb.trim_start().trim_start_matches('(');
            let close = lb.find(')').unwrap_or(lb.len());
            bounds = lb[..close]
                .split(',')
                .next()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            s = lb[close..].trim_start_matches(')').trim_start();
        }
        let name = ident_at(s);
        if !name.is_empty() && s[name.len()..].trim_start().starts_with('(') {
            out.push((name.to_string(), bounds));
        }
    }
    out
}

/// `T name[dims]` → (type, name, dims); pointer stars stay with the type.
fn split_declarator(d: &str) -> Option<(String, String, String)> {
    let d = d.trim();
    let mut end = d.len();
    // Trailing [..] groups.
    while d[..end].trim_end().ends_with(']') {
        let e = d[..end].trim_end().len();
        let open = d[..e].rfind('[')?;
        end = open;
    }
    let dims = d[end..].trim().to_string();
    let head = d[..end].trim_end();
    let name_start = head
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let name = head[name_start..].to_string();
    let ty = head[..name_start].trim().to_string();
    (!name.is_empty()).then_some((ty, name, dims))
}

/// Rewrite the `__shared__` declarations of one source line into references to the block's shared
/// arena (see kernels/sim/cudasim.h); `sites` collects "file:line name" per declaration.
fn rewrite_shared_line(line: &str, file: &str, lineno: usize, sites: &mut Vec<String>) -> String {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    let (is_extern, rest) = if let Some(r) = trimmed.strip_prefix("extern __shared__") {
        (true, r)
    } else if let Some(r) = trimmed.strip_prefix("__shared__") {
        (false, r)
    } else {
        return line.to_string();
    };
    let Some(semi) = rest.find(';') else {
        panic!("{file}:{lineno}: a __shared__ declaration must end on its line (the simulator rewrites it)");
    };
    let (decl, tail) = (&rest[..semi], &rest[semi + 1..]);
    let mut decl = decl.trim().to_string();
    let mut align = "0".to_string();
    if let Some(a) = decl.find("__align__(") {
        let close = a + decl[a..].find(')').unwrap();
        align = decl[a + "__align__(".len()..close].trim().to_string();
        decl = format!("{}{}", &decl[..a], &decl[close + 1..]);
    }
    // Declarators at bracket depth 0.
    let mut parts = vec![];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in decl.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(decl[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(decl[start..].to_string());
    let (base_ty, first_name, first_dims) = split_declarator(&parts[0])
        .unwrap_or_else(|| panic!("{file}:{lineno}: cannot read the __shared__ declaration"));
    let mut out = indent.to_string();
    for (k, p) in parts.iter().enumerate() {
        let (ty, name, dims) = if k == 0 {
            (base_ty.clone(), first_name.clone(), first_dims.clone())
        } else {
            let p = p.trim();
            let stars = p.len() - p.trim_start_matches('*').len();
            let (_, n, d) = split_declarator(p.trim_start_matches('*')).unwrap_or_else(|| {
                panic!("{file}:{lineno}: cannot read the __shared__ declaration")
            });
            (format!("{base_ty}{}", "*".repeat(stars)), n, d)
        };
        if is_extern {
            let _ = write!(
                out,
                "{ty}* {name} = cudasim_dynamic_shared_var<{ty}>({align}); "
            );
        } else {
            let site = sites.len();
            sites.push(format!("{name} ({file}:{lineno})"));
            let _ = write!(
                out,
                "auto& {name} = cudasim_shared_var<{ty}{dims}>({site}, {align}); "
            );
        }
    }
    out.push_str(tail);
    out
}

/// nvcc's `#pragma unroll [N]` as GCC's `#pragma GCC unroll N` (GCC ignores the former): a tile loop left
/// rolled keeps its accumulators in memory, and the simulator runs several times slower.
fn rewrite_unroll_line(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    let rest = trimmed.strip_prefix("#pragma unroll")?;
    let count = rest.trim();
    let count = if count.is_empty() { "64" } else { count };
    Some(format!(
        "{}#pragma GCC unroll {count}",
        &line[..line.len() - trimmed.len()]
    ))
}

/// The simulator's copy of one source: `#line` back to the original, `__shared__` and `#pragma unroll`
/// rewritten.
fn rewrite_for_sim(src: &str, file: &str, sites: &mut Vec<String>) -> String {
    let mut out = format!("#line 1 \"{file}\"\n");
    for (i, line) in src.lines().enumerate() {
        match rewrite_unroll_line(line) {
            Some(l) => out.push_str(&l),
            None => out.push_str(&rewrite_shared_line(line, file, i + 1, sites)),
        }
        out.push('\n');
    }
    out
}

/// Compile the simulator: kernels/*.cu (+ kernels/sim/selftest.cu) instrumented, the runtime not.
/// Returns false (with a warning) when no C++ compiler could build it.
fn build_simulator(manifest: &Path, out: &Path) -> bool {
    let kdir = manifest.join("kernels");
    let simdir = kdir.join("sim");
    let gen = out.join("sim");
    let gen_src = gen.join("src");
    fs::create_dir_all(&gen_src).unwrap();
    for f in ["cudasim.h", "runtime.cpp", "selftest.cu"] {
        println!("cargo:rerun-if-changed={}", simdir.join(f).display());
    }
    let mut sources: Vec<(String, PathBuf)> = fs::read_dir(&kdir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
        .map(|p| {
            (
                format!("kernels/{}", p.file_name().unwrap().to_string_lossy()),
                p,
            )
        })
        .collect();
    sources.push(("kernels/sim/selftest.cu".into(), simdir.join("selftest.cu")));
    sources.sort();
    let mut sites = vec![];
    let mut families: Vec<(String, Vec<KernelDecl>)> = vec![];
    let mut units = vec![];
    for (rel, path) in &sources {
        let src = fs::read_to_string(path).unwrap();
        let mut text = rewrite_for_sim(&src, rel, &mut sites);
        let file_name = path.file_name().unwrap().to_string_lossy().to_string();
        if rel.ends_with(".cuh") {
            fs::write(gen_src.join(&file_name), text).unwrap();
            continue;
        }
        let family = path.file_stem().unwrap().to_string_lossy().to_string();
        let kernels = find_kernels(&src);
        let _ = writeln!(
            text,
            "extern \"C\" const cudasim::KernelEntry cudasim_family_{family}[] = {{"
        );
        for (name, bounds) in &kernels {
            let _ = writeln!(text, "    CUDASIM_KERNEL({name}, {bounds}, \"{rel}\"),");
        }
        let _ = writeln!(text, "}};");
        let unit = gen_src.join(format!("{family}.cu.cpp"));
        fs::write(&unit, text).unwrap();
        units.push(unit);
        families.push((family, kernels));
    }
    // The table of every family and the names of the __shared__ declarations.
    let mut reg = String::from("#include \"cudasim.h\"\n");
    for (f, _) in &families {
        let _ = writeln!(
            reg,
            "extern \"C\" const cudasim::KernelEntry cudasim_family_{f}[];"
        );
    }
    let _ = writeln!(
        reg,
        "extern \"C\" const cudasim::KernelEntry* const cudasim_families[] = {{"
    );
    for (f, _) in &families {
        let _ = writeln!(reg, "    cudasim_family_{f},");
    }
    let _ = writeln!(
        reg,
        "}};\nextern \"C\" const int cudasim_family_sizes[] = {{"
    );
    for (_, k) in &families {
        let _ = writeln!(reg, "    {},", k.len());
    }
    let _ = writeln!(
        reg,
        "}};\nextern \"C\" const int cudasim_family_count = {};",
        families.len()
    );
    let _ = writeln!(
        reg,
        "extern \"C\" const char* const cudasim_site_names[] = {{"
    );
    for s in &sites {
        let _ = writeln!(reg, "    {s:?},");
    }
    let _ = writeln!(
        reg,
        "    nullptr,\n}};\nextern \"C\" const int cudasim_site_count = {};",
        sites.len()
    );
    let registry = gen_src.join("registry.cpp");
    fs::write(&registry, reg).unwrap();

    // nvcc's default -fmad=true contracts a·b + c; so does GCC with -ffp-contract=fast, and with FMA
    // instructions fmaf is one instruction instead of a libm call. When the simulator is built for the
    // machine that builds it (CI builds and tests on one machine) the kernels get every instruction set
    // it has (-march=native): AVX2/FMA, and on AVX-512 machines 32 vector registers, so the 4×4 register
    // tiles of the GEMMs spill less (docs/CUDA-SIM.md, Speed). The numerics do not change: no
    // -ffast-math, so GCC never reassociates; contraction is the same -ffp-contract=fast either way.
    // Elsewhere (cross builds) the target's baseline, with fmaf as a (correct, slower) libm call.
    // VIDGRAD_SIM_MARCH=<arch> chooses another -march (e.g. x86-64-v3 for valgrind, which does not
    // decode AVX-512), VIDGRAD_SIM_MARCH= (empty) none.
    let host_native = env::var("TARGET").ok() == env::var("HOST").ok();
    let march = env::var("VIDGRAD_SIM_MARCH").ok();
    let header = simdir.join("cudasim.h");
    let mut kb = cc::Build::new();
    kb.cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .include(&gen_src)
        .include(&simdir)
        .flag("-include")
        .flag(header.to_str().unwrap())
        .flag("-fsanitize=thread")
        .flag("--param=tsan-instrument-func-entry-exit=0")
        .flag("-ffp-contract=fast")
        .flag("-fno-exceptions")
        .flag("-Wno-unknown-pragmas")
        .flag("-Wno-tsan")
        .files(&units);
    match march.as_deref() {
        Some("") => {}
        Some(arch) => {
            kb.flag(format!("-march={arch}"));
        }
        None if host_native => {
            kb.flag_if_supported("-march=native");
        }
        None => {}
    }
    let objects = match kb.try_compile_intermediates() {
        Ok(o) => o,
        Err(e) => return sim_not_built(e),
    };
    let mut rb = cc::Build::new();
    rb.cpp(true)
        .std("c++17")
        .opt_level(2)
        .debug(false)
        .include(&simdir)
        .flag("-fno-exceptions")
        .flag("-Wno-unused-parameter")
        .file(simdir.join("runtime.cpp"))
        .file(&registry)
        .objects(&objects);
    if let Err(e) = rb.try_compile("vidgrad_cudasim") {
        return sim_not_built(e);
    }
    true
}

/// A warning (the CPU backend still builds), or with `VIDGRAD_REQUIRE_SIM=1` (CI) an error.
fn sim_not_built(e: cc::Error) -> bool {
    if env::var("VIDGRAD_REQUIRE_SIM").is_ok_and(|v| v == "1") {
        panic!("VIDGRAD_REQUIRE_SIM=1 but the CUDA simulator could not be built: {e}");
    }
    println!(
        "cargo:warning=the CUDA simulator was not built ({e}); --device cuda-sim is unavailable"
    );
    false
}
