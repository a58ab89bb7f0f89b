//! The CPU backend makes the process's main thread thread 0 of rayon's pool on its first use
//! (`backend::cpu::join_thread_pool`, docs/PERFORMANCE.md stop 37), and a parallel kernel called on
//! another thread — a data loader's — still runs while the main thread waits for its result. Its own
//! test binary without libtest's harness (Cargo.toml: `harness = false`), so that `main` is the
//! process's main thread, as in a training run.

use std::sync::mpsc;
use std::time::Duration;

use vidgrad::{Device, Tensor};

/// The threads rayon's global pool gets: RAYON_NUM_THREADS, else the CPUs available.
fn pool_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

fn relu_sum(seed: u64) -> f32 {
    // 2^20 elements: above the elementwise kernels' single-thread size, so the ReLU runs in parallel
    let x = Tensor::randn(&[1 << 20], seed, Device::Cpu).unwrap();
    x.relu().unwrap().to_vec().unwrap().iter().sum()
}

fn main() {
    let on_main = relu_sum(1);
    let joined = std::env::var("VIDGRAD_CPU_MAIN_THREAD_IN_POOL").map_or(true, |v| v != "0")
        && pool_threads() >= 2;
    assert_eq!(
        rayon::current_thread_index(),
        joined.then_some(0),
        "the main thread is thread 0 of the pool exactly when there are two threads or more ({} here)",
        pool_threads()
    );
    // A loader-like thread runs the same kernel while the main thread blocks on a channel: its
    // kernel is injected into the pool, whose other threads must take it (no deadlock).
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("vidgrad-loader-test".into())
        .spawn(move || tx.send(relu_sum(1)).unwrap())
        .unwrap();
    let on_loader = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("a parallel kernel called from a non-main thread finished within 120 s");
    assert_eq!(on_loader, on_main, "the same ReLU on either thread");
    println!(
        "main_thread_pool: main thread in the pool: {joined} ({} threads); a loader thread's kernel ran",
        pool_threads()
    );
}
