//! The simulated CUDA device checked on its own: its model of CUDA (warp shuffles and votes following
//! the PTX ISA's shfl.sync/vote.sync, block-wide barrier reductions, dynamic shared memory, atomics
//! from blocks running in parallel) against semantics computed here, and every check it makes shown to
//! catch a deliberately broken kernel of kernels/sim/selftest.cu.

use std::ffi::c_void;

use vidgrad::backend::cuda::sim::{arg, LaunchOptions, SimChecks, Simulator, ThreadOrder};

fn sim() -> &'static Simulator {
    Simulator::get().expect("this build carries the CUDA simulator")
}

/// A device buffer of the simulator holding `v`.
struct Buf {
    ptr: u64,
    bytes: usize,
}
impl Buf {
    fn new<T: bytemuck::Pod>(v: &[T]) -> Buf {
        let bytes = std::mem::size_of_val(v);
        let ptr = sim().malloc(bytes).unwrap();
        // SAFETY: the block holds `bytes` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr() as *const u8, ptr as *mut u8, bytes);
        }
        Buf { ptr, bytes }
    }
    /// Uninitialised (the simulator's NaN pattern).
    fn uninit(bytes: usize) -> Buf {
        Buf {
            ptr: sim().malloc(bytes).unwrap(),
            bytes,
        }
    }
    fn read<T: bytemuck::Pod>(&self) -> Vec<T> {
        let mut v = vec![T::zeroed(); self.bytes / std::mem::size_of::<T>()];
        // SAFETY: as above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr as *const u8,
                v.as_mut_ptr() as *mut u8,
                self.bytes,
            );
        }
        v
    }
}
impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: nothing refers to the block after the test.
        unsafe { sim().free(self.ptr) }
    }
}

fn launch(
    kernel: &str,
    grid: u32,
    block: u32,
    shared: usize,
    args: &[(*mut c_void, usize)],
) -> vidgrad::Result<()> {
    // SAFETY: the tests pass buffers of this simulator.
    unsafe { sim().launch(kernel, (grid, 1, 1), (block, 1, 1), shared, args) }
}

fn expect_error(r: vidgrad::Result<()>, needles: &[&str]) -> String {
    let msg = match r {
        Ok(()) => panic!("the simulator did not report the broken kernel ({needles:?})"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    println!("reported as expected: {msg}");
    msg
}

#[test]
fn warp_shuffles_and_votes_follow_the_ptx_semantics() {
    let out = Buf::uninit(13 * 32 * 4);
    let outd = Buf::uninit(32 * 8);
    launch("st_warp_ops", 1, 32, 0, &[arg(&out.ptr), arg(&outd.ptr)]).unwrap();
    let o: Vec<i32> = out.read();
    let v = |l: i32| 100 + l;
    // CUDA's definitions (programming guide, warp shuffle functions): width-sized segments; idx reads
    // srcLane % width within the segment; up/down keep their own value when the source leaves it; xor
    // reads lane ^ mask, own value when that lies in a later segment.
    for l in 0..32i32 {
        let seg = |w: i32| l / w * w;
        let idx = |src: i32, w: i32| v(seg(w) + src % w);
        let up = |d: i32, w: i32| if l - d >= seg(w) { v(l - d) } else { v(l) };
        let down = |d: i32, w: i32| if l + d < seg(w) + w { v(l + d) } else { v(l) };
        let xor = |m: i32, w: i32| {
            let j = l ^ m;
            if j < seg(w) + w {
                v(j)
            } else {
                v(l)
            }
        };
        let row = |r: usize| o[r * 32 + l as usize];
        assert_eq!(row(0), idx((l * 7) % 32, 32), "shfl idx lane {l}");
        assert_eq!(row(1), idx(3, 8), "shfl idx width 8 lane {l}");
        assert_eq!(row(2), up(3, 32), "shfl up lane {l}");
        assert_eq!(row(3), up(2, 8), "shfl up width 8 lane {l}");
        assert_eq!(row(4), down(5, 32), "shfl down lane {l}");
        assert_eq!(row(5), down(1, 4), "shfl down width 4 lane {l}");
        assert_eq!(row(6), xor(9, 32), "shfl xor lane {l}");
        assert_eq!(row(7), xor(3, 16), "shfl xor width 16 lane {l}");
        let ballot = (0..32).filter(|i| i % 3 == 0).fold(0u32, |m, i| m | 1 << i);
        assert_eq!(row(8) as u32, ballot, "ballot lane {l}");
        assert_eq!(row(9), 1, "any lane {l}");
        assert_eq!(row(10), 1, "all lane {l}");
        assert_eq!(row(11), 0, "all (one false) lane {l}");
        assert_eq!(
            row(12),
            if l % 2 == 0 { v(l ^ 2) } else { -1 },
            "partial mask lane {l}"
        );
    }
    let d: Vec<f64> = outd.read();
    for (l, v) in d.iter().enumerate() {
        assert_eq!(*v, (l ^ 1) as f64 + 0.5, "double shuffle lane {l}");
    }
}

#[test]
fn barrier_reductions_and_dynamic_shared_memory() {
    let out = Buf::uninit(3 * 4);
    launch("st_barrier_votes", 1, 100, 0, &[arg(&out.ptr)]).unwrap();
    assert_eq!(out.read::<i32>(), vec![20, 1, 1]);

    let x: Vec<f32> = (0..3 * 96).map(|i| i as f32).collect();
    let (xb, yb) = (Buf::new(&x), Buf::uninit(x.len() * 4));
    launch(
        "st_dynamic_shared",
        3,
        96,
        96 * 4,
        &[arg(&yb.ptr), arg(&xb.ptr)],
    )
    .unwrap();
    let y: Vec<f32> = yb.read();
    for b in 0..3 {
        for t in 0..96 {
            assert_eq!(y[b * 96 + t], x[b * 96 + 95 - t]);
        }
    }
}

#[test]
fn atomics_are_atomic_across_blocks_running_in_parallel() {
    let (blocks, threads) = (64u32, 128u32);
    let total = blocks * threads;
    let counters = Buf::new(&[0u32; 5]);
    let f = Buf::new(&[0.0f32]);
    let d = Buf::new(&[0.0f64]);
    launch(
        "st_atomics",
        blocks,
        threads,
        0,
        &[arg(&counters.ptr), arg(&f.ptr), arg(&d.ptr)],
    )
    .unwrap();
    let c: Vec<u32> = counters.read();
    assert_eq!(c[0], total, "atomicAdd count");
    assert_eq!(c[1], total - 1, "atomicMax");
    assert_eq!(c[2], total % 1000, "atomicInc wraps at 999 → 0");
    assert_eq!(c[3], 1, "exactly one CAS wins");
    // 0.5 and 0.25 sums of up to 8192 terms are exact in f32/f64.
    assert_eq!(f.read::<f32>()[0], total as f32 * 0.5);
    assert_eq!(d.read::<f64>()[0], total as f64 * 0.25);
    println!(
        "simulator: {} host threads, {} context switches so far",
        sim().threads(),
        sim().context_switches()
    );
}

#[test]
fn uninitialised_device_memory_reads_as_nan() {
    let x = Buf::uninit(64 * 4);
    let y = Buf::uninit(64 * 4);
    let n = 64i32;
    launch("st_copy", 1, 64, 0, &[arg(&y.ptr), arg(&x.ptr), arg(&n)]).unwrap();
    assert!(y.read::<f32>().iter().all(|v| v.is_nan()));
}

#[test]
fn out_of_bounds_global_accesses_are_reported() {
    let n = 100i32;
    let (x, y) = (Buf::new(&vec![1.0f32; 100]), Buf::uninit(100 * 4));
    let msg = expect_error(
        launch(
            "st_oob_read",
            1,
            128,
            0,
            &[arg(&y.ptr), arg(&x.ptr), arg(&n)],
        ),
        &[
            "st_oob_read",
            "block (0,0,0)",
            "thread (100,0,0)",
            "read of 4 bytes",
            "offset 400 of buffer",
            "(400 bytes)",
        ],
    );
    assert!(msg.contains("4 bytes past the end"), "{msg}");
    expect_error(
        launch("st_oob_write", 1, 128, 0, &[arg(&y.ptr), arg(&n)]),
        &["st_oob_write", "thread (100,0,0)", "write of 4 bytes"],
    );
}

#[test]
fn freed_and_cached_buffers_and_gaps_between_buffers_are_reported() {
    let y = Buf::uninit(4);
    let x = sim().malloc(256).unwrap();
    // SAFETY: x is not used after the free except as an address the kernel must be refused.
    unsafe { sim().free(x) };
    let off = 0i64;
    expect_error(
        launch("st_read_at", 1, 32, 0, &[arg(&y.ptr), arg(&x), arg(&off)]),
        &["st_read_at", "freed"],
    );
    // A block the caching allocator took back.
    let z = Buf::new(&[1.0f32; 64]);
    sim().set_cached(z.ptr, true);
    expect_error(
        launch(
            "st_read_at",
            1,
            32,
            0,
            &[arg(&y.ptr), arg(&z.ptr), arg(&off)],
        ),
        &["caching allocator"],
    );
    sim().set_cached(z.ptr, false);
    // Just past a buffer (allocations are 256-byte aligned, so 64 floats + 1 lies in the gap).
    let off = 64i64 + 1;
    expect_error(
        launch(
            "st_read_at",
            1,
            32,
            0,
            &[arg(&y.ptr), arg(&z.ptr), arg(&off)],
        ),
        &["st_read_at", "thread (0,0,0)"],
    );
}

#[test]
fn shared_memory_races_are_reported() {
    let x = Buf::new(&vec![1.0f32; 64 * 8]);
    let y = Buf::uninit(256 * 4);
    expect_error(
        launch("st_missing_sync", 1, 256, 0, &[arg(&y.ptr), arg(&x.ptr)]),
        &["st_missing_sync", "race", "tile"],
    );
    let steps = 8i32;
    expect_error(
        launch(
            "st_single_buffer",
            1,
            64,
            0,
            &[arg(&y.ptr), arg(&x.ptr), arg(&steps)],
        ),
        &["st_single_buffer", "race", "tile"],
    );
}

// The racecheck's clean marks (a granule read by two or more threads is settled inline) must not hide
// a race on a tile that every thread has read.
#[test]
fn races_on_a_tile_read_by_every_thread_are_reported() {
    let x = Buf::new(&(0..64).map(|i| i as f32).collect::<Vec<f32>>());
    let y = Buf::uninit(64 * 4);
    let run = |mode: i32| {
        launch(
            "st_clean_tile_race",
            1,
            64,
            0,
            &[arg(&y.ptr), arg(&x.ptr), arg(&mode)],
        )
    };
    run(0).expect("no race without a broken mode");
    let sum: f32 = (0..64).map(|i| i as f32).sum();
    assert!(
        y.read::<f32>().iter().all(|&v| v == sum),
        "every thread sums the whole tile"
    );
    // Which of the two accesses comes second depends on the thread order; the word does not.
    expect_error(run(1), &["st_clean_tile_race", "race", "tile", "byte 20"]);
    expect_error(
        run(2),
        &["st_clean_tile_race", "write after write", "tile", "byte 36"],
    );
    expect_error(run(3), &["st_clean_tile_race", "race", "tile", "byte 52"]);
}

#[test]
fn bounds_checks_alone_keep_the_bounds_and_drop_the_racecheck() {
    // VIDGRAD_SIM_CHECKS=bounds (the full-size model fixtures): global bounds still reported, the
    // shared-memory shadow not consulted.
    let bounds = LaunchOptions {
        order: None,
        checks: Some(SimChecks::Bounds),
    };
    let n = 100i32;
    let (x, y) = (Buf::new(&vec![1.0f32; 100]), Buf::uninit(100 * 4));
    expect_error(
        // SAFETY: buffers of this simulator.
        unsafe {
            sim().launch_with(
                "st_oob_read",
                (1, 1, 1),
                (128, 1, 1),
                0,
                &[arg(&y.ptr), arg(&x.ptr), arg(&n)],
                bounds,
            )
        },
        &["st_oob_read", "thread (100,0,0)", "offset 400 of buffer"],
    );
    let x = Buf::new(&vec![1.0f32; 64 * 8]);
    let y = Buf::uninit(256 * 4);
    // SAFETY: as above.
    unsafe {
        sim().launch_with(
            "st_missing_sync",
            (1, 1, 1),
            (256, 1, 1),
            0,
            &[arg(&y.ptr), arg(&x.ptr)],
            bounds,
        )
    }
    .expect("without the racecheck the missing barrier goes unreported");
}

#[test]
fn a_missing_barrier_changes_the_result_under_another_thread_order() {
    // With the checks off, a schedule-dependent kernel computes different things in forward and reverse
    // order: the second order is what makes a missing __syncthreads visible in results.
    let y = Buf::uninit(128 * 4);
    let run = |order| {
        let opts = LaunchOptions {
            order: Some(order),
            checks: Some(SimChecks::Off),
        };
        // SAFETY: a buffer of this simulator.
        unsafe {
            sim().launch_with(
                "st_order_dependent",
                (1, 1, 1),
                (128, 1, 1),
                0,
                &[arg(&y.ptr)],
                opts,
            )
        }
        .unwrap();
        y.read::<f32>()
    };
    let fwd = run(ThreadOrder::Forward);
    let rev = run(ThreadOrder::Reverse);
    assert!(
        fwd[..127].iter().all(|v| v.is_nan()),
        "forward: t reads t+1 before it is written"
    );
    assert!(rev[..127]
        .iter()
        .enumerate()
        .all(|(t, v)| *v == (t + 1) as f32));
}

#[test]
fn barrier_misuse_is_an_error_not_a_hang() {
    let y = Buf::uninit(64 * 4);
    expect_error(
        launch("st_divergent_barrier", 1, 64, 0, &[arg(&y.ptr)]),
        &[
            "st_divergent_barrier",
            "block (0,0,0)",
            "not reached by every thread",
            "threads 32-63 exited",
        ],
    );
    expect_error(
        launch("st_two_barriers", 1, 64, 0, &[arg(&y.ptr)]),
        &["st_two_barriers", "different barriers"],
    );
}

#[test]
fn warp_collective_misuse_is_reported() {
    let y = Buf::uninit(64 * 4);
    expect_error(
        launch("st_shfl_skipped_lane", 1, 64, 0, &[arg(&y.ptr)]),
        &["st_shfl_skipped_lane", "lane 5"],
    );
    expect_error(
        launch("st_shfl_outside_mask", 1, 32, 0, &[arg(&y.ptr)]),
        &["st_shfl_outside_mask", "not in the mask"],
    );
}

#[test]
fn misaligned_vector_loads_are_reported_before_they_are_made() {
    let x = Buf::new(&[0.0f32; 16]);
    let y = Buf::uninit(32 * 4);
    expect_error(
        launch("st_misaligned", 1, 32, 0, &[arg(&y.ptr), arg(&x.ptr)]),
        &["st_misaligned", "misaligned 16-byte vector load"],
    );
}

#[test]
fn uninitialised_shared_memory_reads_are_reported() {
    let y = Buf::uninit(64 * 4);
    // Forward order, so that the first thread to read an unwritten word is thread 32.
    let opts = LaunchOptions {
        order: Some(ThreadOrder::Forward),
        checks: None,
    };
    expect_error(
        // SAFETY: a buffer of this simulator.
        unsafe {
            sim().launch_with(
                "st_uninit_shared",
                (1, 1, 1),
                (64, 1, 1),
                0,
                &[arg(&y.ptr)],
                opts,
            )
        },
        &[
            "st_uninit_shared",
            "uninitialised shared memory",
            "thread (32,0,0)",
        ],
    );
}

#[test]
fn launch_limits_are_checked_like_the_driver() {
    let y = Buf::uninit(2048 * 4);
    let n = 1i32;
    let x = Buf::uninit(4);
    let args = [arg(&y.ptr), arg(&x.ptr), arg(&n)];
    expect_error(
        launch("st_copy", 1, 1025, 0, &args),
        &["CUDA_ERROR_INVALID_VALUE", "block"],
    );
    expect_error(launch("st_copy", 0, 32, 0, &args), &["zero-sized grid"]);
    // SAFETY: as above.
    expect_error(
        unsafe { sim().launch("st_copy", (1, 65536, 1), (32, 1, 1), 0, &args) },
        &["grid"],
    );
    expect_error(
        launch("st_bounded", 1, 128, 0, &[arg(&y.ptr)]),
        &["__launch_bounds__(64)"],
    );
    launch("st_bounded", 1, 64, 0, &[arg(&y.ptr)]).unwrap();
    // Dynamic shared memory past 48 KiB needs the opt-in; static shared memory past 48 KiB never fits.
    let big = 64 * 1024;
    let xs = Buf::new(&vec![0.0f32; 1024]);
    let dyn_args = [arg(&y.ptr), arg(&xs.ptr)];
    expect_error(
        launch("st_dynamic_shared", 1, 32, big, &dyn_args),
        &["dynamic shared memory"],
    );
    sim()
        .set_max_dynamic_shared("st_dynamic_shared", 100 * 1024)
        .unwrap();
    launch("st_dynamic_shared", 1, 32, big, &dyn_args).unwrap();
    expect_error(
        launch("st_big_static_shared", 1, 32, 0, &[arg(&y.ptr)]),
        &["48 KiB"],
    );
    // Argument count and sizes are checked against the kernel's parameters.
    let small = 1i16;
    expect_error(
        launch(
            "st_copy",
            1,
            32,
            0,
            &[arg(&y.ptr), arg(&x.ptr), arg(&small)],
        ),
        &["argument 2 has 2 bytes", "has 4"],
    );
    expect_error(
        launch("st_copy", 1, 32, 0, &[arg(&y.ptr)]),
        &["1 arguments passed, the kernel takes 3"],
    );
}
