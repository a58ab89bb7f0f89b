//! Operand rounding of the tensor-core math modes (issue 12): TF32 as PTX's `cvt.rna.tf32.f32`, BF16 as
//! `cvt.rn.bf16.f32`. The simulated CUDA device implements the same bit formulas
//! (kernels/sim/cudasim.h, `cudasim_cvt_rna_tf32`, `cudasim_cvt_rn_bf16`).

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
