//! Launch-configuration arithmetic, kept apart from the driver so it can be tested without a GPU.

/// Threads per block of the elementwise / reduction kernels.
pub const BLOCK: u32 = 256;

/// Most blocks of a grid-stride launch ([`grid_for`]), whatever the GPU: bounds the stride of every
/// grid-stride loop to `MAX_GRID_STRIDE_BLOCKS · BLOCK` (4 Mi) threads.
pub const MAX_GRID_STRIDE_BLOCKS: usize = 16_384;

/// Most elements of one tensor (or of any index range a kernel walks). Kernels index with 32-bit ints,
/// and a grid-stride loop computes `i + stride` once past the end: with `n ≤ 2^31 − 2^26` and a stride
/// of at most 4 Mi that sum stays below 2^31, where n close to 2^31 would overflow it (undefined
/// behaviour; in practice a negative index and stores outside the buffer).
pub const MAX_ELEMENTS: usize = (1 << 31) - (1 << 26);

/// Blocks for a grid-stride loop over `n` items: enough to fill the GPU several times, never more
/// than the items need, at least one, at most [`MAX_GRID_STRIDE_BLOCKS`].
pub fn grid_for(n: usize, sm_count: u32) -> u32 {
    let need = n.div_ceil(BLOCK as usize).max(1);
    need.min(sm_count.max(1) as usize * 32)
        .min(MAX_GRID_STRIDE_BLOCKS) as u32
}

/// The one-dimensional grid of a 64×64-tiled GEMM (kernels/gemm.cu): every (row tile, column tile)
/// pair on `gridDim.x`, column tiles fastest, so that no row count can exceed gridDim.y's 65535 limit
/// (ceil(M / 64) > 65535 for M > 4 194 240). `None` if even gridDim.x (2^31 − 1) is too small.
pub fn gemm_tiles(m: usize, n: usize) -> Option<u32> {
    let t = m.div_ceil(64).max(1).checked_mul(n.div_ceil(64).max(1))?;
    u32::try_from(t).ok().filter(|&t| t <= i32::MAX as u32)
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
        // A (hypothetical) huge GPU still gets a bounded stride.
        assert_eq!(grid_for(1 << 30, 100_000), MAX_GRID_STRIDE_BLOCKS as u32);
    }

    #[test]
    fn grid_stride_loops_cannot_overflow_i32() {
        // The largest index a grid-stride loop forms is (last valid i) + stride < n + stride.
        let stride = MAX_GRID_STRIDE_BLOCKS * BLOCK as usize;
        assert!(MAX_ELEMENTS + stride <= i32::MAX as usize);
        // Likewise the conv/gemm tiles: a column tile starts below n and spans 64.
        assert!(MAX_ELEMENTS + 64 <= i32::MAX as usize);
    }

    #[test]
    fn gemm_tiles_fold_rows_into_x() {
        assert_eq!(gemm_tiles(1, 1), Some(1));
        assert_eq!(gemm_tiles(64, 65), Some(2));
        assert_eq!(gemm_tiles(65, 130), Some(6));
        // 8 Mi rows: ceil(M/64) = 131072 would not fit gridDim.y; folded it is fine.
        assert_eq!(gemm_tiles(8 << 20, 64), Some(131_072));
        assert_eq!(gemm_tiles(1 << 40, 1 << 40), None);
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
