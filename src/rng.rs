//! A tiny counter-based random generator: value i of stream `seed` is a pure function of (seed, i), so
//! the CPU and CUDA backends (and Python scripts) produce identical numbers in any order, in parallel.
//!
//! `mix(seed, i)` is splitmix64's output function applied to `seed + (i + 1) · GOLDEN`.

/// splitmix64's increment, 2^64 / φ.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The i-th 64-bit value of stream `seed`.
#[inline]
pub fn mix(seed: u64, i: u64) -> u64 {
    splitmix64(seed.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The i-th uniform float of stream `seed` in [0, 1), with 24 random bits.
#[inline]
pub fn uniform(seed: u64, i: u64) -> f32 {
    (mix(seed, i) >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// The i-th standard normal of stream `seed` (Box–Muller on two uniforms of the stream).
#[inline]
pub fn normal(seed: u64, i: u64) -> f32 {
    let u1 = ((mix(seed, 2 * i) >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    let u2 = (mix(seed, 2 * i + 1) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// FNV-1a (64-bit) of a string: turns a parameter name into a stream id.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether dropout with probability `p` keeps element i of stream `seed`.
#[inline]
pub fn dropout_keep(seed: u64, i: u64, p: f32) -> bool {
    uniform(seed, i) >= p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| uniform(7, i) as f64).sum::<f64>() / n as f64;
        assert!((0..n).all(|i| (0.0..1.0).contains(&uniform(7, i))));
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn normal_has_unit_variance() {
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|i| normal(3, i) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "mean {mean} var {var}"
        );
    }
}
