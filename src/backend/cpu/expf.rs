//! exp(x − shift) over a row of f32 in place, eight lanes at a time in AVX-512 or four in AVX2, giving
//! libm's `expf` bit for bit (the attention's softmax: a scalar `expf` call per score, with the loop
//! around it, was a fifth of C2D-NL-R50's attention forward; four AVX2 lanes, with a gather for the
//! table, still a fifth of it on an AVX-512 Xeon).
//!
//! glibc's `expf` (from Arm's optimized-routines) works in f64: z = x·32/ln 2 = k + r with k the nearest
//! integer and |r| ≤ 1/2, exp(x) = 2^(k/32)·2^(r/32), 2^(k/32) from a table of 2^(i/32) (i = k mod 32)
//! whose exponent bits are raised by k div 32, and 2^(r/32) a cubic in r; then one rounding to f32.
//! Lanes here do the same operations in the same order, with the fused multiply-adds of glibc's FMA
//! build (the one x86-64 glibc runs where the CPU has FMA) — r = fma(32/ln 2, x, −k) among them — and
//! so give its results: every f32 below 88 in magnitude was checked against the system's `expf`
//! (`agrees_with_libm_on_every_input`, ignored by default: 2.2·10⁹ values; a sample runs always).
//! Lanes of 88 or more in magnitude, ±Inf and NaN (overflow, underflow to subnormals and 0) and CPUs
//! without AVX2/FMA take libm's `expf` itself. The AVX-512 lanes look the table up with two in-register
//! permutes (16 entries each) instead of a gather. The numeric constants are glibc's (its
//! `e_exp2f_data.c`), as bit-compatibility needs; the table is checked against 2^(i/32) in a test.

// (the constants are the AVX2 path's: unused on other targets)
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

/// 2^(i/32) as f64 bits, less i·2⁴⁷: adding k·2⁴⁷ (k ≡ i mod 32) multiplies it by 2^(k div 32).
const TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];
/// 32/ln 2 (1/ln 2 rounded to f64, times 32).
const INV_LN2_32: f64 = f64::from_bits(0x3ff71547652b82fe) * 32.0;
/// 1.5·2⁵²: z + SHIFT rounds z to an integer k, held in the low bits of the sum.
const SHIFT: f64 = f64::from_bits(0x4338000000000000);
/// 2^(r/32) ≈ 1 + C2·r + (C1 + C0·r)·r².
const C0: f64 = f64::from_bits(0x3fac6af84b912394) / 32768.0;
const C1: f64 = f64::from_bits(0x3fcebfce50fac4f3) / 1024.0;
const C2: f64 = f64::from_bits(0x3fe62e42ff0c52d6) / 32.0;

/// Lanes whose magnitude's top 12 bits are at least 88's (|x| ≥ 88, ±Inf, NaN) take libm's path.
const SPECIAL_TOP: u32 = (88f32.to_bits() >> 20) & 0x7ff;

/// row[j] = exp(row[j] − shift), the subtraction in f32 (as `(v - shift).exp()`).
pub(super) fn exp_shifted_in_place(row: &mut [f32], shift: f32) {
    let widest = *paths().last().expect("libm's path is always there");
    widest.1(row, shift)
}

/// A way to compute [`exp_shifted_in_place`]: its name and function.
type Path = (&'static str, fn(&mut [f32], f32));

/// The paths this CPU runs, libm's first and the widest last (the tests check each).
fn paths() -> &'static [Path] {
    static PATHS: std::sync::OnceLock<Vec<Path>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let mut paths: Vec<Path> = vec![("libm", |row, shift| {
            row.iter_mut().for_each(|v| *v = (*v - shift).exp())
        })];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY (both): pushed only where the CPU has the features they are compiled for.
            paths.push(("avx2", |row, shift| unsafe {
                avx2::exp_shifted_in_place(row, shift)
            }));
            if std::is_x86_feature_detected!("avx512f") {
                paths.push(("avx512", |row, shift| unsafe {
                    avx512::exp_shifted_in_place(row, shift)
                }));
            }
        }
        paths
    })
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    /// [`super::exp_shifted_in_place`], four lanes at a time; a group of four with a special lane, and
    /// the tail, call libm.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_in_place(row: &mut [f32], shift: f32) {
        let mut groups = row.chunks_exact_mut(4);
        for group in &mut groups {
            let x = _mm_sub_ps(_mm_loadu_ps(group.as_ptr()), _mm_set1_ps(shift));
            let top = _mm_and_si128(
                _mm_srli_epi32::<20>(_mm_castps_si128(x)),
                _mm_set1_epi32(0x7ff),
            );
            let special = _mm_cmpgt_epi32(top, _mm_set1_epi32(SPECIAL_TOP as i32 - 1));
            if _mm_movemask_epi8(special) != 0 {
                let mut xs = [0f32; 4];
                _mm_storeu_ps(xs.as_mut_ptr(), x);
                for (v, x) in group.iter_mut().zip(xs) {
                    *v = x.exp();
                }
                continue;
            }
            _mm_storeu_ps(group.as_mut_ptr(), lanes(x));
        }
        for v in groups.into_remainder() {
            *v = (*v - shift).exp();
        }
    }

    /// exp of four non-special lanes (glibc's operations, module comment).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes(x: __m128) -> __m128 {
        let xd = _mm256_cvtps_pd(x);
        let z = _mm256_mul_pd(_mm256_set1_pd(INV_LN2_32), xd);
        let shifted = _mm256_add_pd(z, _mm256_set1_pd(SHIFT));
        let ki = _mm256_castpd_si256(shifted);
        let kd = _mm256_sub_pd(shifted, _mm256_set1_pd(SHIFT));
        // r = 32/ln 2 · x − k in one rounding, as glibc's FMA build computes it
        let r = _mm256_fmsub_pd(_mm256_set1_pd(INV_LN2_32), xd, kd);
        let index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        // SAFETY: every index is below 32, the table's length.
        let t = unsafe { _mm256_i64gather_epi64::<8>(TABLE.as_ptr() as *const i64, index) };
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let p = _mm256_fmadd_pd(_mm256_set1_pd(C0), r, _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(_mm256_set1_pd(C2), r, _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(p, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// [`super::exp_shifted_in_place`], eight lanes at a time; a group of eight with a special lane,
    /// and the tail, call libm.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn exp_shifted_in_place(row: &mut [f32], shift: f32) {
        let mut groups = row.chunks_exact_mut(8);
        for group in &mut groups {
            let x = _mm256_sub_ps(_mm256_loadu_ps(group.as_ptr()), _mm256_set1_ps(shift));
            let top = _mm256_and_si256(
                _mm256_srli_epi32::<20>(_mm256_castps_si256(x)),
                _mm256_set1_epi32(0x7ff),
            );
            let special = _mm256_cmpgt_epi32(top, _mm256_set1_epi32(SPECIAL_TOP as i32 - 1));
            if _mm256_movemask_epi8(special) != 0 {
                let mut xs = [0f32; 8];
                _mm256_storeu_ps(xs.as_mut_ptr(), x);
                for (v, x) in group.iter_mut().zip(xs) {
                    *v = x.exp();
                }
                continue;
            }
            _mm256_storeu_ps(group.as_mut_ptr(), lanes(x));
        }
        for v in groups.into_remainder() {
            *v = (*v - shift).exp();
        }
    }

    /// exp of eight non-special lanes: the AVX2 lanes' operations, eight wide, the table entry picked
    /// by index bits 0–3 from each half of the table and bit 4 between the halves.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn lanes(x: __m256) -> __m256 {
        // SAFETY: TABLE holds 32 u64, four vectors of eight. (Indexed loads, not `array::from_fn`:
        // core's generics are compiled without AVX-512, see conv_winograd.rs's `input_rows_2d`.)
        let load = |i: usize| unsafe { _mm512_loadu_si512(TABLE.as_ptr().add(8 * i).cast()) };
        let table: [__m512i; 4] = [load(0), load(1), load(2), load(3)];
        let xd = _mm512_cvtps_pd(x);
        let z = _mm512_mul_pd(_mm512_set1_pd(INV_LN2_32), xd);
        let shifted = _mm512_add_pd(z, _mm512_set1_pd(SHIFT));
        let ki = _mm512_castpd_si512(shifted);
        let kd = _mm512_sub_pd(shifted, _mm512_set1_pd(SHIFT));
        // r = 32/ln 2 · x − k in one rounding, as glibc's FMA build computes it
        let r = _mm512_fmsub_pd(_mm512_set1_pd(INV_LN2_32), xd, kd);
        let low = _mm512_permutex2var_epi64(table[0], ki, table[1]);
        let high = _mm512_permutex2var_epi64(table[2], ki, table[3]);
        let upper_half = _mm512_test_epi64_mask(ki, _mm512_set1_epi64(16));
        let t = _mm512_mask_blend_epi64(upper_half, low, high);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let p = _mm512_fmadd_pd(_mm512_set1_pd(C0), r, _mm512_set1_pd(C1));
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(_mm512_set1_pd(C2), r, _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(p, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each entry is 2^(i/32) (to within the last bit of f64's exp2, which rounds it correctly here)
    /// less i·2⁴⁷.
    #[test]
    fn table_is_two_to_the_i_over_32() {
        for (i, &t) in TABLE.iter().enumerate() {
            let want = (i as f64 / 32.0).exp2().to_bits();
            assert_eq!(t.wrapping_add((i as u64) << 47), want, "entry {i}");
        }
    }

    /// Every path's exp_shifted_in_place against libm's expf on the bit patterns `bits`, in rows of 37
    /// (groups of four or eight and a tail), shift 0 and a shift that the subtraction rounds; returns
    /// the values checked per path.
    fn check(bits: impl Iterator<Item = u32>) -> usize {
        let mut checked = 0;
        let mut bits = bits.map(f32::from_bits).peekable();
        while bits.peek().is_some() {
            let row: Vec<f32> = bits.by_ref().take(37).collect();
            for shift in [0.0f32, 0.375] {
                for &(name, path) in paths() {
                    let mut got = row.to_vec();
                    path(&mut got, shift);
                    for (&x, &y) in row.iter().zip(&got) {
                        let want = (x - shift).exp();
                        assert!(
                            y.to_bits() == want.to_bits() || (y.is_nan() && want.is_nan()),
                            "{name}: exp({x:e} - {shift}) = {y:e}, libm {want:e}"
                        );
                    }
                }
                checked += row.len();
            }
        }
        checked
    }

    /// Every 251st f32 bit pattern (17 million values over the whole range: both signs, subnormals,
    /// the special lanes) and the two inputs where glibc's non-FMA operations would differ by an ulp.
    #[test]
    fn agrees_with_libm_on_a_sample() {
        let n = check((0..=u32::MAX).step_by(251).chain([0x4202422f, 0xc27c65d9]));
        assert!(n > 30_000_000);
    }

    /// Every f32 (90 s in release on the development machine).
    #[test]
    #[ignore]
    fn agrees_with_libm_on_every_input() {
        check(0..=u32::MAX);
    }
}
