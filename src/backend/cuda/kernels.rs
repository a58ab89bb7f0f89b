//! The kernels embedded by build.rs: one fatbin per `kernels/<family>.cu` (compute_80 PTX, sm_80 SASS
//! and any `VIDGRAD_CUDA_ARCHS` cubins), and ptxas's register/spill report of the sm_80 compilation.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));

/// The kernel families every build with nvcc must carry.
pub const FAMILIES: &[&str] = &[
    "attention",
    "batchnorm",
    "conv",
    "elementwise",
    "gemm",
    "layout",
    "loss",
    "optimizer",
    "pool",
    "reduce",
    "softmax",
    "upsample",
];

/// Whether this build carries the kernels (nvcc was found at build time).
pub fn embedded() -> bool {
    NVCC_VERSION.is_some() && !FATBINS.is_empty()
}

/// The message given when the CUDA device is asked for but the kernels were not built.
pub const NOT_BUILT: &str = "this build of vidgrad has no CUDA kernels: nvcc was not found when it was \
compiled. Install the CUDA 13.0 compiler (e.g. `pip install nvidia-cuda-nvcc==13.0.* nvidia-cuda-crt==13.0.* \
nvidia-nvvm==13.0.* nvidia-cuda-runtime==13.0.* nvidia-cuda-cccl==13.0.*`), point NVCC (or CUDA_HOME) at it \
and rebuild; see docs/GPU.md. Use --device cpu meanwhile.";

/// One kernel's line of the ptxas report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelUsage {
    pub kernel: String,
    pub arch: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
    pub stack_frame: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let i = line.find(unit)?;
    line[..i].split_whitespace().last()?.parse().ok()
}

/// Parse `nvcc -Xptxas -v` output: "Compiling entry function 'k' for 'sm_80'", then the stack/spill
/// line and the "Used N registers" line.
pub fn parse_ptxas(report: &str) -> Vec<KernelUsage> {
    let mut out: Vec<KernelUsage> = vec![];
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let mut parts = rest.split('\'');
            let kernel = parts.next().unwrap_or("").to_string();
            let arch = parts.nth(1).unwrap_or("").to_string();
            out.push(KernelUsage {
                kernel,
                arch,
                registers: 0,
                spill_stores: 0,
                spill_loads: 0,
                stack_frame: 0,
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("spill stores") {
                k.stack_frame = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report() {
        let r = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'conv_fprop' for 'sm_80'\n\
ptxas info    : Function properties for conv_fprop\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 40 registers, used 1 barriers, 17024 bytes smem, 508 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'ew_fill' for 'sm_90a'\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 8 registers, used 0 barriers, 368 bytes cmem[0]\n";
        let k = parse_ptxas(r);
        assert_eq!(k.len(), 2);
        assert_eq!(
            k[0],
            KernelUsage {
                kernel: "conv_fprop".into(),
                arch: "sm_80".into(),
                registers: 40,
                spill_stores: 4,
                spill_loads: 12,
                stack_frame: 8
            }
        );
        assert_eq!(
            (k[1].registers, k[1].spill_stores, k[1].arch.as_str()),
            (8, 0, "sm_90a")
        );
    }

    #[test]
    fn embedded_families_are_complete() {
        if !embedded() {
            return;
        }
        for f in FAMILIES {
            assert!(
                FATBINS.iter().any(|(n, b)| n == f && !b.is_empty()),
                "kernels/{f}.cu not embedded"
            );
        }
    }
}
