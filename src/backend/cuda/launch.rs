//! Launch-configuration arithmetic, kept apart from the driver so it can be tested without a GPU.

/// Threads per block of the elementwise / reduction kernels.
pub const BLOCK: u32 = 256;

/// Blocks for a grid-stride loop over `n` items: enough to fill the GPU several times, never more
/// than the items need, at least one.
pub fn grid_for(n: usize, sm_count: u32) -> u32 {
    let need = n.div_ceil(BLOCK as usize).max(1);
    need.min(sm_count.max(1) as usize * 32) as u32
}

/// Splits of a per-channel reduction over `count` values for `channels` channels: about four blocks
/// per SM in all, each split at least 2048 values, at most 256 splits.
pub fn channel_splits(channels: usize, count: usize, sm_count: u32) -> u32 {
    let want = (4 * sm_count.max(1) as usize).div_ceil(channels.max(1));
    let most = count.div_ceil(2048).max(1);
    want.clamp(1, most.min(256)) as u32
}

/// Split-K of the weight-gradient GEMM: (splits, reduction length per split, a multiple of 16), so
/// that `tiles`·splits blocks cover the GPU about twice, each split at least 256 reduction steps.
pub fn wgrad_splits(tiles: usize, reduction: usize, sm_count: u32) -> (usize, usize) {
    let want = (2 * sm_count.max(1) as usize).div_ceil(tiles.max(1));
    let most = reduction.div_ceil(256).max(1);
    let splits = want.clamp(1, most.min(1024));
    let per = reduction.div_ceil(splits).div_ceil(16) * 16;
    let per = per.max(16);
    (reduction.div_ceil(per).max(1), per)
}

/// ceil(a / b) as a grid dimension.
pub fn blocks(a: usize, b: usize) -> u32 {
    a.div_ceil(b).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_and_stay_bounded() {
        assert_eq!(grid_for(0, 132), 1);
        assert_eq!(grid_for(1, 132), 1);
        assert_eq!(grid_for(256, 132), 1);
        assert_eq!(grid_for(257, 132), 2);
        assert_eq!(grid_for(1 << 30, 132), 132 * 32);
    }

    #[test]
    fn channel_splits_are_sane() {
        assert_eq!(channel_splits(1024, 1 << 20, 132), 1);
        let s = channel_splits(64, 8 * 16 * 56 * 56, 132);
        assert!((8..=256).contains(&s), "{s}");
        assert_eq!(channel_splits(3, 10, 132), 1);
    }

    #[test]
    fn wgrad_splits_cover_the_reduction_exactly_once() {
        for (tiles, red) in [
            (1usize, 1usize),
            (4, 100_000),
            (1000, 50_000),
            (2, 17),
            (9, 401_408),
        ] {
            let (s, per) = wgrad_splits(tiles, red, 132);
            assert!(per % 16 == 0 && per > 0);
            assert!(
                s * per >= red && (s - 1) * per < red,
                "{tiles} {red}: {s} × {per}"
            );
        }
    }
}
