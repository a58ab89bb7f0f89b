//! The CPU's memory bandwidth, measured in the same run as the kernel rows: STREAM's four loops (copy
//! c = a, scale b = s·c, add c = a + b, triad a = b + s·c) over f32 arrays far larger than the last-level
//! cache, parallel over rayon's pool in the backend's chunking (the same threads the kernels get).
//! Bytes are STREAM's: each array element read or written once (copy and scale 2 × 4 B per element, add
//! and triad 3 × 4 B), no write-allocate traffic counted, as the kernel rows count theirs.

use std::time::Instant;

use rayon::prelude::*;
use serde_json::{json, Value};

/// Elements per rayon task, as the backend's elementwise kernels (src/backend/cpu/elementwise.rs).
const CHUNK: usize = 1 << 15;
/// Timed repetitions of each loop after one untimed one.
const RUNS: usize = 10;
/// Each array is at least this large, and at least 4 × the last-level cache (STREAM's rule).
const MIN_ARRAY_BYTES: usize = 64 << 20;

/// One loop's rates in bytes/s: the fastest run (STREAM's figure) and the median (the statistic the
/// kernel rows use).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub best: f64,
    pub median: f64,
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub copy: Rate,
    pub scale: Rate,
    pub add: Rate,
    pub triad: Rate,
    pub array_bytes: usize,
    pub threads: usize,
}

impl Stream {
    pub fn describe(&self) -> String {
        format!(
            "STREAM-like ({} threads, 3 x {} arrays, median / best of {RUNS}): copy {:.1} / {:.1} GB/s, \
             scale {:.1} / {:.1}, add {:.1} / {:.1}, triad {:.1} / {:.1}",
            self.threads,
            super::report::fmt_bytes(self.array_bytes),
            self.copy.median / 1e9,
            self.copy.best / 1e9,
            self.scale.median / 1e9,
            self.scale.best / 1e9,
            self.add.median / 1e9,
            self.add.best / 1e9,
            self.triad.median / 1e9,
            self.triad.best / 1e9,
        )
    }

    pub fn to_json(&self) -> Value {
        let r = |r: Rate| json!({"median_gbps": r.median / 1e9, "best_gbps": r.best / 1e9});
        json!({"copy": r(self.copy), "scale": r(self.scale), "add": r(self.add),
               "triad": r(self.triad), "array_bytes": self.array_bytes, "threads": self.threads,
               "runs": RUNS,
               "reference": "pct_peak: the copy's median; fastest_pct_peak: its fastest run"})
    }
}

fn rate(mut secs: Vec<f64>, bytes: f64) -> Rate {
    secs.sort_by(|a, b| a.total_cmp(b));
    Rate {
        best: bytes / secs[0],
        median: bytes / secs[secs.len() / 2],
    }
}

/// Time `f` once untimed, then `RUNS` times.
fn time(mut f: impl FnMut()) -> Vec<f64> {
    f();
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect()
}

pub fn measure() -> Stream {
    let array_bytes =
        (4 * vidgrad::backend::cpu::last_level_cache_bytes().unwrap_or(0)).max(MIN_ARRAY_BYTES);
    let n = array_bytes / 4;
    // first touch in parallel, as the loops will touch the pages
    let init = |v: f32| -> Vec<f32> {
        let mut a = vec![0.0f32; n];
        a.par_chunks_mut(CHUNK)
            .for_each(|c| c.iter_mut().for_each(|x| *x = v));
        a
    };
    let (mut a, mut b, mut c) = (init(1.0), init(2.0), init(0.0));
    let s = 3.0f32;
    let copy = time(|| {
        c.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .for_each(|(c, a)| c.copy_from_slice(a))
    });
    let scale = time(|| {
        b.par_chunks_mut(CHUNK)
            .zip(c.par_chunks(CHUNK))
            .for_each(|(b, c)| b.iter_mut().zip(c).for_each(|(b, &c)| *b = s * c))
    });
    let add = time(|| {
        c.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(c, (a, b))| {
                c.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(c, (&a, &b))| *c = a + b)
            })
    });
    let triad = time(|| {
        a.par_chunks_mut(CHUNK)
            .zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK)))
            .for_each(|(a, (b, c))| {
                a.iter_mut()
                    .zip(b.iter().zip(c))
                    .for_each(|(a, (&b, &c))| *a = b + s * c)
            })
    });
    std::hint::black_box((&a, &b, &c));
    let bytes = |arrays: f64| arrays * array_bytes as f64;
    Stream {
        copy: rate(copy, bytes(2.0)),
        scale: rate(scale, bytes(2.0)),
        add: rate(add, bytes(3.0)),
        triad: rate(triad, bytes(3.0)),
        array_bytes,
        threads: rayon::current_num_threads(),
    }
}
