//! The caching allocator: device blocks are rounded up to size classes and, when their buffer is
//! dropped, kept on a free list per class instead of being returned to the driver. A steady-state
//! training step (the same sizes every iteration) therefore makes no cuMemAlloc. Reuse needs no events:
//! every kernel and copy runs on the backend's one stream, so work on a recycled block is ordered after
//! the work on its previous owner. Handing blocks back to the driver is different: a dropped buffer's
//! block may still be read or written by kernels queued before the drop, so [`CachingAllocator::release_cache`]
//! waits for the device ([`RawMemory::synchronize`]) before the first free.

use std::collections::BTreeMap;

/// Smallest block handed out.
pub const MIN_BLOCK: usize = 512;

/// The size class of a request: at most 8 classes per power of two (≤ 12.5 % rounding), multiples of
/// 512 bytes.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_BLOCK {
        return MIN_BLOCK;
    }
    let step = (bytes.next_power_of_two() / 8).max(MIN_BLOCK);
    bytes.div_ceil(step) * step
}

/// Where the blocks come from (the driver, or a fake in tests).
pub trait RawMemory {
    type Error;
    fn alloc(&mut self, bytes: usize) -> Result<u64, Self::Error>;
    fn free(&mut self, ptr: u64);
    /// Wait until no queued work can touch a block any more (before blocks go back to the driver).
    fn synchronize(&mut self) {}
    /// A cached block of `bytes` (its class) is handed out again, to a new owner.
    fn reused(&mut self, _ptr: u64, _bytes: usize) {}
    /// A block of `bytes` (its class) goes back on the free list.
    fn released(&mut self, _ptr: u64, _bytes: usize) {}
}

/// Byte counts of an allocator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Requested bytes of live buffers.
    pub in_use: usize,
    /// Most `in_use` since start or the last reset.
    pub peak: usize,
    /// Bytes obtained from the driver (live blocks plus cached ones).
    pub reserved: usize,
    /// Bytes sitting on the free lists.
    pub cached: usize,
    /// Driver allocations made so far.
    pub driver_allocs: usize,
}

/// Size-bucketed free lists over a [`RawMemory`].
#[derive(Debug, Default)]
pub struct CachingAllocator<R> {
    raw: R,
    free: BTreeMap<usize, Vec<u64>>,
    stats: MemoryStats,
}

impl<R: RawMemory> CachingAllocator<R> {
    pub fn new(raw: R) -> Self {
        CachingAllocator {
            raw,
            free: BTreeMap::new(),
            stats: MemoryStats::default(),
        }
    }

    /// A block of at least `bytes`: (pointer, class). On a driver failure the cache is released and
    /// the allocation retried once.
    pub fn alloc(&mut self, bytes: usize) -> Result<(u64, usize), R::Error> {
        let class = size_class(bytes);
        let ptr = match self.free.get_mut(&class).and_then(Vec::pop) {
            Some(p) => {
                self.stats.cached -= class;
                self.raw.reused(p, class);
                p
            }
            None => {
                let p = match self.raw.alloc(class) {
                    Ok(p) => p,
                    Err(_) => {
                        self.release_cache();
                        self.raw.alloc(class)?
                    }
                };
                self.stats.reserved += class;
                self.stats.driver_allocs += 1;
                p
            }
        };
        self.stats.in_use += bytes;
        self.stats.peak = self.stats.peak.max(self.stats.in_use);
        Ok((ptr, class))
    }

    /// Return a block (from [`CachingAllocator::alloc`] with the same `bytes` and `class`) to its list.
    pub fn release(&mut self, ptr: u64, bytes: usize, class: usize) {
        self.stats.in_use -= bytes;
        self.stats.cached += class;
        self.raw.released(ptr, class);
        self.free.entry(class).or_default().push(ptr);
    }

    /// Give every cached block back to the driver, once the device is idle: a cached block's last owner
    /// may have been dropped while kernels using it were still queued (also on the out-of-memory retry
    /// of [`CachingAllocator::alloc`], which used to free without waiting).
    pub fn release_cache(&mut self) {
        if self.free.values().all(Vec::is_empty) {
            return;
        }
        self.raw.synchronize();
        for (class, ptrs) in std::mem::take(&mut self.free) {
            for p in ptrs {
                self.raw.free(p);
                self.stats.reserved -= class;
                self.stats.cached -= class;
            }
        }
    }

    pub fn stats(&self) -> MemoryStats {
        self.stats
    }

    pub fn reset_peak(&mut self) {
        self.stats.peak = self.stats.in_use;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Fake {
        next: u64,
        live: usize,
        limit: usize,
        sizes: std::collections::HashMap<u64, usize>,
        /// "sync" and "free" in call order.
        log: Vec<&'static str>,
        /// (ptr, bytes) of every `reused` / `released` call, in order.
        reused: Vec<(u64, usize)>,
        released: Vec<(u64, usize)>,
    }
    impl RawMemory for Fake {
        type Error = ();
        fn alloc(&mut self, bytes: usize) -> Result<u64, ()> {
            if self.live + bytes > self.limit {
                return Err(());
            }
            self.live += bytes;
            self.next += 1 << 32;
            self.sizes.insert(self.next, bytes);
            Ok(self.next)
        }
        fn free(&mut self, ptr: u64) {
            self.live -= self.sizes.remove(&ptr).unwrap();
            self.log.push("free");
        }
        fn synchronize(&mut self) {
            self.log.push("sync");
        }
        fn reused(&mut self, ptr: u64, bytes: usize) {
            self.reused.push((ptr, bytes));
        }
        fn released(&mut self, ptr: u64, bytes: usize) {
            self.released.push((ptr, bytes));
        }
    }

    #[test]
    fn classes_are_monotone_bounded_and_aligned() {
        let mut prev = 0;
        for bytes in (1..200_000)
            .step_by(37)
            .chain([1 << 20, (1 << 20) + 1, 3 << 29])
        {
            let c = size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(MIN_BLOCK), "{bytes} -> {c}");
            assert!(c >= prev);
            prev = c;
            if bytes > 4096 {
                assert!((c - bytes) as f64 <= bytes as f64 * 0.25, "{bytes} -> {c}");
            }
        }
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(4096), 4096);
        assert_eq!(size_class(4097), 5120);
    }

    #[test]
    fn steady_state_makes_no_driver_allocation() {
        let mut a = CachingAllocator::new(Fake {
            limit: usize::MAX,
            ..Default::default()
        });
        let sizes = [4000usize, 1 << 20, 123_456, 4000, 77];
        for step in 0..5 {
            let blocks: Vec<_> = sizes.iter().map(|&s| (a.alloc(s).unwrap(), s)).collect();
            assert_eq!(a.stats().in_use, sizes.iter().sum::<usize>());
            for ((p, c), s) in blocks {
                a.release(p, s, c);
            }
            if step == 0 {
                assert_eq!(a.stats().driver_allocs, sizes.len());
            }
        }
        assert_eq!(a.stats().driver_allocs, sizes.len());
        assert_eq!(a.stats().in_use, 0);
        assert_eq!(a.stats().peak, sizes.iter().sum::<usize>());
        a.reset_peak();
        assert_eq!(a.stats().peak, 0);
        assert_eq!(a.stats().cached, a.stats().reserved);
    }

    #[test]
    fn out_of_memory_releases_the_cache_and_retries() {
        let mut a = CachingAllocator::new(Fake {
            limit: 3 << 20,
            ..Default::default()
        });
        let (p, c) = a.alloc(2 << 20).unwrap();
        a.release(p, 2 << 20, c);
        // Another class does not fit beside the cached block: the cache is released, the retry succeeds.
        assert!(a.alloc(3 << 20).is_ok());
        assert_eq!(a.stats().cached, 0);
        assert_eq!(a.stats().reserved, 3 << 20);
        assert!(a.alloc(1 << 20).is_err());
        // The cached block went back to the driver only after the device was synchronised.
        assert_eq!(a.raw.log, ["sync", "free"]);
    }

    #[test]
    fn release_cache_synchronises_before_freeing() {
        let mut a = CachingAllocator::new(Fake {
            limit: usize::MAX,
            ..Default::default()
        });
        // Nothing cached: no synchronisation needed.
        a.release_cache();
        assert!(a.raw.log.is_empty());
        let blocks: Vec<_> = (0..3).map(|_| a.alloc(1000).unwrap()).collect();
        for (p, c) in blocks {
            a.release(p, 1000, c);
        }
        a.release_cache();
        assert_eq!(a.raw.log, ["sync", "free", "free", "free"]);
        assert_eq!((a.stats().cached, a.stats().reserved), (0, 0));
    }

    #[test]
    fn reuse_and_release_are_reported_with_the_block_size() {
        let mut a = CachingAllocator::new(Fake {
            limit: usize::MAX,
            ..Default::default()
        });
        // A fresh block is not a reuse.
        let (p, c) = a.alloc(1000).unwrap();
        assert!(a.raw.reused.is_empty() && a.raw.released.is_empty());
        a.release(p, 1000, c);
        assert_eq!(a.raw.released, [(p, c)]);
        // Same class: the cached block comes back, reported with its class, not the request.
        let (q, c2) = a.alloc(900).unwrap();
        assert_eq!((q, c2), (p, c));
        assert_eq!(a.raw.reused, [(p, c)]);
        a.release(q, 900, c2);
        assert_eq!(a.raw.released, [(p, c), (p, c)]);
        // Giving the cache back to the driver is neither.
        a.release_cache();
        assert_eq!((a.raw.reused.len(), a.raw.released.len()), (1, 2));
    }
}
