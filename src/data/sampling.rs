//! ECO/TSN segment sampling: which frames of a video make a clip of T frames.
//!
//! The video's `n` frames are split into T equal segments (TSN's `_sample_indices` /
//! `_get_test_indices`, which ECO uses):
//! - train: `avg = n / T` (integer division); frame `k·avg + r_k` with `r_k` uniform in `0..avg`;
//! - test: `tick = n / T` (real); frame `floor(tick/2 + tick·k)`, the centre of segment k. With C clips
//!   per video, clip c takes `floor(tick·k + tick·(c + 0.5)/C)` (C = 1 is the centre);
//! - a video shorter than T (`n < T`): frames `0, 1, …, n-1` and then the last frame repeated, as ECO
//!   does.

use crate::rng;

/// Which frames of a segment a clip takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// A random frame in every segment, drawn from the counter-based stream `seed`.
    Train { seed: u64 },
    /// Clip `clip` of `clips` evenly spaced ones (clip 0 of 1: the centre frames).
    Test { clip: usize, clips: usize },
}

/// A counter-based random stream (see [`crate::rng`]): the i-th draw is a pure function of (seed, i).
#[derive(Debug, Clone)]
pub struct Stream {
    seed: u64,
    i: u64,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream { seed, i: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        let v = rng::mix(self.seed, self.i);
        self.i += 1;
        v
    }

    /// Uniform in `0..n` (`n ≥ 1`), by multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }
}

/// The T = `segments` frame indices (0-based, non-decreasing) of one clip of a video with `num_frames`
/// frames. `num_frames == 0` gives an empty list. Train draws come from `Stream::new(seed)`.
pub fn segment_indices(num_frames: usize, segments: usize, mode: Sampling) -> Vec<usize> {
    let (n, t) = (num_frames, segments);
    if n == 0 || t == 0 {
        return Vec::new();
    }
    if n < t {
        return (0..t).map(|k| k.min(n - 1)).collect();
    }
    match mode {
        Sampling::Train { seed } => {
            let mut s = Stream::new(seed);
            let avg = n / t;
            (0..t).map(|k| k * avg + s.below(avg)).collect()
        }
        Sampling::Test { clip, clips } => {
            let tick = n as f64 / t as f64;
            let clips = clips.max(1);
            let off = if clips == 1 {
                tick / 2.0
            } else {
                tick * (clip as f64 + 0.5) / clips as f64
            };
            (0..t)
                .map(|k| ((off + tick * k as f64) as usize).min(n - 1))
                .collect()
        }
    }
}

/// Fisher–Yates shuffle driven by `Stream::new(seed)`.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = Stream::new(seed);
    for i in (1..v.len()).rev() {
        let j = s.below(i + 1);
        v.swap(i, j);
    }
}

/// Rank `rank`'s part of `order` among `world` ranks, as PyTorch's `DistributedSampler`: with `pad`,
/// `order` is first extended by repeating its beginning (cyclically, when it is shorter than the
/// padding) to `ceil(len / world) · world` entries, so that every rank gets the same number; then
/// rank r takes entries r, r + world, r + 2·world, … Without `pad` (evaluation: no video counted
/// twice) the ranks' parts differ by at most one entry.
pub fn distributed_shard(order: &[usize], rank: usize, world: usize, pad: bool) -> Vec<usize> {
    let world = world.max(1);
    if order.is_empty() {
        return vec![];
    }
    let total = if pad {
        order.len().div_ceil(world) * world
    } else {
        order.len()
    };
    (rank..total)
        .step_by(world)
        .map(|i| order[i % order.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every video exactly once per epoch across the ranks, plus the padding (the first
    /// `padded - n` videos of the order once more), every rank the same count; without padding
    /// exactly once.
    #[test]
    fn distributed_shards_cover_every_video_once_per_epoch() {
        for n in [1usize, 2, 5, 7, 16, 17] {
            for world in 1..=5 {
                for epoch in 0..3u64 {
                    let mut order: Vec<usize> = (0..n).collect();
                    shuffle(&mut order, rng::mix(11, epoch));
                    let padded = n.div_ceil(world) * world;
                    let mut seen = vec![0usize; n];
                    for rank in 0..world {
                        let part = distributed_shard(&order, rank, world, true);
                        assert_eq!(part.len(), padded / world, "n {n} world {world}");
                        part.iter().for_each(|&v| seen[v] += 1);
                    }
                    let mut expect = vec![1usize; n];
                    for i in 0..padded - n {
                        expect[order[i % n]] += 1;
                    }
                    assert_eq!(seen, expect, "n {n} world {world} epoch {epoch}");
                    let mut once: Vec<usize> = (0..world)
                        .flat_map(|r| distributed_shard(&order, r, world, false))
                        .collect();
                    once.sort_unstable();
                    assert_eq!(once, (0..n).collect::<Vec<_>>());
                }
            }
        }
        // PyTorch's interleaving: rank r takes r, r + world, ... of the padded order
        assert_eq!(
            distributed_shard(&[9, 8, 7, 6, 5], 1, 2, true),
            vec![8, 6, 9]
        );
        assert_eq!(
            distributed_shard(&[9, 8, 7, 6, 5], 0, 2, true),
            vec![9, 7, 5]
        );
    }
}
