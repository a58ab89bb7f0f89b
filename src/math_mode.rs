//! Math modes of convolution and matrix products, as PyTorch has them: `fp32` (FP32 operands), `tf32`
//! (operands rounded to TF32 as PTX's `cvt.rna.tf32.f32`, FP32 accumulation) and `bf16` (operands
//! rounded to BF16, round to nearest even, FP32 accumulation). Tensors stay FP32 in memory; only the
//! operands of the products are rounded (each element once), never bias, outputs or accumulators.
//!
//! The mode is process-wide: `--math` on the CLI, `VIDGRAD_MATH`, or [`set_math_mode`]. When none is
//! chosen, each backend takes its default ([`MathMode::default_on`]): **tf32 on CUDA** (the simulated
//! device included) — PyTorch's default for convolutions (cuDNN with `allow_tf32 = True`), and what the
//! tensor cores are for — and **fp32 on the CPU**. `--math fp32` gives FP32 on CUDA. [`math_mode_on`] is
//! the mode a backend uses. The CPU backend implements every mode ([`round_operands`]), so
//! `--device cpu --math tf32` is the reference for a GPU's tensor-core result. The simulated CUDA device
//! rounds with the same bit formulas (kernels/sim/cudasim.h, `cudasim_cvt_rna_tf32`,
//! `cudasim_cvt_rn_bf16`). Depthwise convolutions multiply in FP32 in every mode on both backends
//! (`ConvGeom::math_mode`: no tensor-core GEMM there).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::{Device, Error, Result};

/// The kinds of hardware whose default math modes differ ([`MathMode::default_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hardware {
    /// The CPU backend (and the meta device, which computes nothing).
    Cpu,
    /// The CUDA backend: a GPU or the simulated device.
    Cuda,
}

impl Hardware {
    /// The hardware `dev` runs on.
    pub fn of(dev: Device) -> Hardware {
        match dev {
            Device::Cuda(_) | Device::CudaSim => Hardware::Cuda,
            Device::Cpu | Device::Meta => Hardware::Cpu,
        }
    }
}

/// How convolution and matmul treat their operands (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MathMode {
    /// FP32 operands and accumulation.
    #[default]
    Fp32,
    /// Operands rounded to TF32 (10-bit mantissa, [`round_tf32`]), FP32 accumulation.
    Tf32,
    /// Operands rounded to BF16 (7-bit mantissa, [`round_bf16`]), FP32 accumulation.
    Bf16,
}

impl MathMode {
    /// Every mode, in the order the CLI lists them.
    pub const ALL: [MathMode; 3] = [MathMode::Fp32, MathMode::Tf32, MathMode::Bf16];

    /// The mode of `hw` when none is chosen: tf32 on CUDA (PyTorch's cuDNN default), fp32 on the CPU.
    pub fn default_on(hw: Hardware) -> MathMode {
        match hw {
            Hardware::Cuda => MathMode::Tf32,
            Hardware::Cpu => MathMode::Fp32,
        }
    }

    /// `fp32`, `tf32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            MathMode::Fp32 => "fp32",
            MathMode::Tf32 => "tf32",
            MathMode::Bf16 => "bf16",
        }
    }

    /// `fp32`, `tf32` or `bf16` (case-insensitive); anything else is an error naming the choices.
    pub fn parse(s: &str) -> Result<MathMode> {
        MathMode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::InvalidArgument {
                op: "math mode",
                msg: format!("{s:?} is not one of fp32, tf32, bf16"),
            })
    }

    /// The unit roundoff of the operands: 2^-24 (fp32), 2^-11 (tf32), 2^-8 (bf16).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            MathMode::Fp32 => 2f64.powi(-24),
            MathMode::Tf32 => 2f64.powi(-11),
            MathMode::Bf16 => 2f64.powi(-8),
        }
    }

    /// One operand rounded as this mode rounds it.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            MathMode::Fp32 => x,
            MathMode::Tf32 => round_tf32(x),
            MathMode::Bf16 => round_bf16(x),
        }
    }
}

impl std::fmt::Display for MathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MathMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<MathMode> {
        MathMode::parse(s)
    }
}

/// 0: `VIDGRAD_MATH` not read yet; 1 + the mode when one is chosen; [`NONE_CHOSEN`]: each backend's
/// default.
static MODE: AtomicU8 = AtomicU8::new(0);
const NONE_CHOSEN: u8 = 1 + MathMode::ALL.len() as u8;

fn encode(m: MathMode) -> u8 {
    1 + MathMode::ALL.iter().position(|&x| x == m).unwrap() as u8
}

/// Sets the process-wide math mode (the CLI's `--math`).
pub fn set_math_mode(m: MathMode) {
    MODE.store(encode(m), Ordering::Relaxed);
}

thread_local! {
    static SCOPED: std::cell::Cell<Option<MathMode>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with math mode `m` on this thread only (the backends read the mode on the calling thread):
/// tests compare one mode's kernels while other tests of the process run in theirs.
pub fn with_math_mode<R>(m: MathMode, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<MathMode>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCOPED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(SCOPED.with(|c| c.replace(Some(m))));
    f()
}

/// The chosen math mode, if any: inside [`with_math_mode`] its mode; else the process-wide one, the last
/// [`set_math_mode`], else `VIDGRAD_MATH`; `None` when nothing chose one. An invalid `VIDGRAD_MATH` is an
/// error.
pub fn chosen_math_mode() -> Result<Option<MathMode>> {
    if let Some(m) = SCOPED.with(|c| c.get()) {
        return Ok(Some(m));
    }
    match MODE.load(Ordering::Relaxed) {
        0 => {
            let m = match std::env::var("VIDGRAD_MATH") {
                Ok(v) if !v.trim().is_empty() => {
                    Some(MathMode::parse(&v).map_err(|_| Error::InvalidArgument {
                        op: "VIDGRAD_MATH",
                        msg: format!("{v:?} is not one of fp32, tf32, bf16"),
                    })?)
                }
                _ => None,
            };
            // a racing set_math_mode wins over the environment
            let code = m.map_or(NONE_CHOSEN, encode);
            let _ = MODE.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
            chosen_math_mode()
        }
        NONE_CHOSEN => Ok(None),
        v => Ok(Some(MathMode::ALL[v as usize - 1])),
    }
}

/// The math mode of the products `hw` computes: the chosen one ([`chosen_math_mode`]), else `hw`'s
/// default ([`MathMode::default_on`]).
pub fn math_mode_on(hw: Hardware) -> Result<MathMode> {
    Ok(chosen_math_mode()?.unwrap_or(MathMode::default_on(hw)))
}

/// `x` with every element rounded as `mode` rounds operands: borrowed unchanged in fp32.
pub fn round_operands(x: &[f32], mode: MathMode) -> std::borrow::Cow<'_, [f32]> {
    match mode {
        MathMode::Fp32 => std::borrow::Cow::Borrowed(x),
        m => std::borrow::Cow::Owned(x.iter().map(|&v| m.round(v)).collect()),
    }
}

/// `x` rounded to TF32 (8-bit exponent, 10-bit mantissa) as `cvt.rna.tf32.f32`: to nearest, ties away
/// from zero, returned as the f32 whose low 13 mantissa bits are zero.
///
/// Bits: add `0x1000` (half of the 13 dropped bits) to the pattern and clear the low 13 bits; a carry
/// into the exponent rounds up, and from the largest finite values to ±Inf. Subnormals round the same
/// way (no flush). ±Inf stays; NaN becomes the canonical NaN `0x7fffffff`.
#[inline]
pub fn round_tf32(x: f32) -> f32 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return f32::from_bits(0x7fff_ffff);
    }
    f32::from_bits(b.wrapping_add(0x1000) & 0xffff_e000)
}

/// `x` rounded to BF16 (8-bit exponent, 7-bit mantissa) as `cvt.rn.bf16.f32`: to nearest, ties to even;
/// the 16 bits of the result. NaN becomes the canonical `0x7fff`.
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        return 0x7fff;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// `x` rounded to BF16 (see [`bf16_bits`]) as the f32 it stands for.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_rounds_to_nearest_ties_away() {
        // 1 + 2^-11 is half way between 1 and 1 + 2^-10: away from zero (RNE would keep the even 1).
        assert_eq!(
            round_tf32(f32::from_bits(0x3f80_1000)).to_bits(),
            0x3f80_2000
        );
        assert_eq!(
            round_tf32(f32::from_bits(0xbf80_1000)).to_bits(),
            0xbf80_2000
        );
        // Just below half way: down.
        assert_eq!(
            round_tf32(f32::from_bits(0x3f80_0fff)).to_bits(),
            0x3f80_0000
        );
        // A tie above an odd TF32 value: up as well.
        assert_eq!(
            round_tf32(f32::from_bits(0x3f80_3000)).to_bits(),
            0x3f80_4000
        );
        // Carry into the exponent.
        assert_eq!(
            round_tf32(f32::from_bits(0x3fff_f000)).to_bits(),
            0x4000_0000
        );
        // Overflow: the largest float rounds to Inf; the largest TF32 stays.
        assert_eq!(round_tf32(f32::MAX), f32::INFINITY);
        assert_eq!(round_tf32(-f32::MAX), f32::NEG_INFINITY);
        assert_eq!(
            round_tf32(f32::from_bits(0x7f7f_e000)).to_bits(),
            0x7f7f_e000
        );
        assert_eq!(
            round_tf32(f32::from_bits(0x7f7f_efff)).to_bits(),
            0x7f7f_e000
        );
        assert_eq!(round_tf32(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_tf32(f32::NEG_INFINITY), f32::NEG_INFINITY);
        // NaN, including one whose payload lies only in the dropped bits.
        assert_eq!(
            round_tf32(f32::from_bits(0x7f80_0001)).to_bits(),
            0x7fff_ffff
        );
        assert_eq!(
            round_tf32(f32::from_bits(0xffc0_0000)).to_bits(),
            0x7fff_ffff
        );
        // Subnormals keep 10 mantissa bits and round like normals; the smallest ones round to 0 or up.
        assert_eq!(round_tf32(f32::from_bits(0x0000_0fff)).to_bits(), 0);
        assert_eq!(
            round_tf32(f32::from_bits(0x0000_1000)).to_bits(),
            0x0000_2000
        );
        assert_eq!(
            round_tf32(f32::from_bits(0x807f_f000)).to_bits(),
            0x8080_0000
        );
        assert_eq!(round_tf32(0.0).to_bits(), 0);
        assert_eq!(round_tf32(-0.0).to_bits(), 0x8000_0000);
    }

    #[test]
    fn defaults_are_tf32_on_cuda_and_fp32_on_the_cpu() {
        assert_eq!(MathMode::default_on(Hardware::Cuda), MathMode::Tf32);
        assert_eq!(MathMode::default_on(Hardware::Cpu), MathMode::Fp32);
        assert_eq!(Hardware::of(Device::CudaSim), Hardware::Cuda);
        assert_eq!(Hardware::of(Device::Cuda(1)), Hardware::Cuda);
        assert_eq!(Hardware::of(Device::Meta), Hardware::Cpu);
        // a scoped choice wins over every default
        with_math_mode(MathMode::Fp32, || {
            assert_eq!(math_mode_on(Hardware::Cuda).unwrap(), MathMode::Fp32);
            assert_eq!(chosen_math_mode().unwrap(), Some(MathMode::Fp32));
        });
        with_math_mode(MathMode::Bf16, || {
            assert_eq!(math_mode_on(Hardware::Cpu).unwrap(), MathMode::Bf16)
        });
    }

    #[test]
    fn modes_parse_and_name_themselves() {
        for m in MathMode::ALL {
            assert_eq!(MathMode::parse(m.name()).unwrap(), m);
            assert_eq!(m.to_string().parse::<MathMode>().unwrap(), m);
        }
        assert_eq!(MathMode::parse("TF32").unwrap(), MathMode::Tf32);
        let e = MathMode::parse("fp16").unwrap_err().to_string();
        assert!(e.contains("fp32, tf32, bf16"), "{e}");
        assert_eq!(round_operands(&[1.0, 1.0 + 1e-4], MathMode::Tf32)[1], 1.0);
        assert_eq!(round_operands(&[1.0 + 1e-4], MathMode::Fp32)[0], 1.0 + 1e-4);
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // Ties: 1 + 2^-8 is half way between 1 and 1 + 2^-7: to the even 1.
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        // 1 + 3·2^-8: half way between 0x3f81 and 0x3f82, to the even 0x3f82.
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(bf16_bits(f32::from_bits(0x7f7f_7fff)), 0x7f7f);
        assert_eq!(bf16_bits(f32::NEG_INFINITY), 0xff80);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fff);
        assert_eq!(bf16_bits(f32::from_bits(0x0000_8000)), 0x0000);
        assert_eq!(bf16_bits(f32::from_bits(0x0001_8000)), 0x0002);
        assert_eq!(round_bf16(-2.0), -2.0);
    }
}
