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
fn reads_settled_without_a_record_keep_every_race_and_report_none_that_is_not() {
    // Reads settled without a word-by-word record must still be seen by a write in the same epoch, and
    // words nobody read must not be reported (the modes: selftest.cu, st_read_record_race).
    let x = Buf::new(&(0..64).map(|i| i as f32).collect::<Vec<f32>>());
    let y = Buf::uninit(64 * 4);
    let run = |mode: i32| {
        launch(
            "st_read_record_race",
            1,
            64,
            0,
            &[arg(&y.ptr), arg(&x.ptr), arg(&mode)],
        )
    };
    // Every launch runs in another shuffled order (in mode 5, thread 0 reads first in some of them).
    for order in 0..24 {
        for mode in [0, 2, 4] {
            run(mode).unwrap_or_else(|e| panic!("mode {mode} (run {order}) has no race: {e}"));
        }
        for mode in [1, 3, 5] {
            expect_error(run(mode), &["st_read_record_race", "race", "tile"]);
        }
    }
    // Mode 0's sums: thread t read its own granule before writing to it.
    let sums: Vec<f32> = (0..16)
        .map(|t| (0..4).map(|i| (4 * t + i) as f32).sum())
        .collect();
    run(0).unwrap();
    assert_eq!(y.read::<f32>()[..16], sums);
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

// ---- tensor cores (kernels/mma.cuh) ------------------------------------------------------------------
//
// The fragment layouts as the PTX ISA gives them (section "Warp Level Matrix Multiply-Accumulate
// Instructions": "Matrix Fragments for mma.m16n8k8" for .tf32, "Matrix Fragments for mma.m16n8k16 with
// floating point type" for .bf16; "ldmatrix" for the 8×8 loads), written here independently of the
// simulator: (row, col) of fragment element `e` of lane `lane`, with groupID = lane >> 2 and
// threadID_in_group = lane % 4.

/// m16n8k8 .tf32, A (16×8): row groupID for a0, a2 and groupID + 8 for a1, a3; col threadID_in_group for
/// a0, a1 and threadID_in_group + 4 for a2, a3.
fn tf32_a(lane: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (
        if e.is_multiple_of(2) { g } else { g + 8 },
        if e < 2 { t } else { t + 4 },
    )
}
/// m16n8k8 .tf32, B (8×8): row threadID_in_group for b0, + 4 for b1; col groupID.
fn tf32_b(lane: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (if e == 0 { t } else { t + 4 }, g)
}
/// m16n8k16 .bf16, A (16×16): row groupID for a0, a1, a4, a5 and groupID + 8 otherwise; col
/// threadID_in_group · 2 + (e & 1), plus 8 for a4..a7.
fn bf16_a(lane: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    let row = if e < 2 || (4..6).contains(&e) {
        g
    } else {
        g + 8
    };
    (row, t * 2 + (e & 1) + if e >= 4 { 8 } else { 0 })
}
/// m16n8k16 .bf16, B (16×8): row threadID_in_group · 2 + (e & 1), plus 8 for b2, b3; col groupID.
fn bf16_b(lane: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (t * 2 + (e & 1) + if e >= 2 { 8 } else { 0 }, g)
}
/// C and D (16×8, f32) of both shapes: row groupID for c0, c1 and groupID + 8 for c2, c3; col
/// threadID_in_group · 2 + (e & 1).
fn acc_cd(lane: usize, e: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane % 4);
    (if e < 2 { g } else { g + 8 }, t * 2 + (e & 1))
}

/// The row-major index of every fragment element of every lane, for `cols` columns.
fn frag_table(n: usize, cols: usize, f: fn(usize, usize) -> (usize, usize)) -> Vec<i32> {
    let mut v = vec![];
    for lane in 0..32 {
        for e in 0..n {
            let (r, c) = f(lane, e);
            v.push((r * cols + c) as i32);
        }
    }
    v
}

/// Every (row, col) of an m×n matrix appears exactly once in a table (the formulas above are a layout).
fn assert_is_layout(t: &[i32], m: usize, n: usize) {
    let mut seen = vec![false; m * n];
    for &i in t {
        assert!(!seen[i as usize], "element {i} held twice");
        seen[i as usize] = true;
    }
    assert!(seen.iter().all(|&s| s));
}

/// Runs one warp-wide mma per warp (two warps) on random operands loaded through the PTX tables, and
/// compares D (read back through the table) with a host matmul of the same rounded operands.
fn check_mma(kernel: &str, k: usize, na: usize, round: fn(f32) -> f32, seed: u64) {
    let a_t = frag_table(na, k, if k == 8 { tf32_a } else { bf16_a });
    let b_t = frag_table(na / 2, 8, if k == 8 { tf32_b } else { bf16_b });
    let c_t = frag_table(4, 8, acc_cd);
    assert_is_layout(&a_t, 16, k);
    assert_is_layout(&b_t, k, 8);
    assert_is_layout(&c_t, 16, 8);
    let warps = 2;
    let rnd = |s: u64, n: usize| -> Vec<f32> {
        (0..n).map(|i| vidgrad::rng::normal(s, i as u64)).collect()
    };
    let (a, b, c) = (
        rnd(seed, warps * 16 * k),
        rnd(seed + 1, warps * k * 8),
        rnd(seed + 2, warps * 128),
    );
    let d = Buf::uninit(warps * 128 * 4);
    let (ab, bb, cb) = (Buf::new(&a), Buf::new(&b), Buf::new(&c));
    let (at, bt, ct) = (Buf::new(&a_t), Buf::new(&b_t), Buf::new(&c_t));
    launch(
        kernel,
        1,
        32 * warps as u32,
        0,
        &[
            arg(&d.ptr),
            arg(&ab.ptr),
            arg(&bb.ptr),
            arg(&cb.ptr),
            arg(&at.ptr),
            arg(&bt.ptr),
            arg(&ct.ptr),
        ],
    )
    .unwrap();
    let got: Vec<f32> = d.read();
    let mut max_rounding_effect = 0.0f64;
    for w in 0..warps {
        let (a, b, c) = (&a[w * 16 * k..], &b[w * k * 8..], &c[w * 128..]);
        for lane in 0..32 {
            for e in 0..4 {
                let (r, n) = acc_cd(lane, e);
                // The simulator's model (runtime.cpp, complete_mma): the exact sum of the exact products of
                // the rounded operands plus c, rounded once to f32. A wrong layout scrambles operands and is
                // off by O(1), not by an ulp.
                let mut s = c[r * 8 + n] as f64;
                let mut s_fp32 = s;
                for kk in 0..k {
                    s += round(a[r * k + kk]) as f64 * round(b[kk * 8 + n]) as f64;
                    s_fp32 += a[r * k + kk] as f64 * b[kk * 8 + n] as f64;
                }
                let g = got[w * 128 + lane * 4 + e];
                assert_eq!(
                    g, s as f32,
                    "{kernel} warp {w} lane {lane} d{e} (row {r}, col {n})"
                );
                max_rounding_effect = max_rounding_effect.max((s - s_fp32).abs());
            }
        }
    }
    // The operands were rounded: the result differs from the unrounded product somewhere.
    assert!(
        max_rounding_effect > 1e-4,
        "{kernel}: operand rounding had no effect ({max_rounding_effect})"
    );
}

#[test]
fn mma_tf32_and_bf16_follow_the_ptx_fragment_layouts() {
    check_mma("st_mma_tf32", 8, 4, vidgrad::math_mode::round_tf32, 1200);
    check_mma("st_mma_bf16", 16, 8, vidgrad::math_mode::round_bf16, 1300);
}

#[test]
fn rounding_conversions_match_the_cpu_formulas() {
    let mut x: Vec<f32> = [
        0x3f80_1000u32,
        0xbf80_1000,
        0x3f80_0fff,
        0x3f80_3000,
        0x3fff_f000,
        0x7f7f_ffff,
        0xff7f_ffff,
        0x7f7f_e000,
        0x7f80_0000,
        0xff80_0000,
        0x7f80_0001,
        0xffc0_0000,
        0x0000_0fff,
        0x0000_1000,
        0x807f_f000,
        0x0000_0000,
        0x8000_0000,
        0x3f80_8000,
        0x3f81_8000,
        0x3f80_8001,
        0x0001_8000,
    ]
    .iter()
    .map(|&b| f32::from_bits(b))
    .collect();
    x.extend((0..1000).map(|i| vidgrad::rng::normal(77, i) * 10f32.powi((i % 20) as i32 - 10)));
    let n = x.len() as i32;
    let xb = Buf::new(&x);
    let (tf, bf) = (Buf::uninit(x.len() * 4), Buf::uninit(x.len() * 4));
    launch(
        "st_round",
        1,
        128,
        0,
        &[arg(&tf.ptr), arg(&bf.ptr), arg(&xb.ptr), arg(&n)],
    )
    .unwrap();
    let (tf, bf): (Vec<u32>, Vec<u32>) = (tf.read(), bf.read());
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(
            tf[i],
            vidgrad::math_mode::round_tf32(v).to_bits(),
            "tf32 of {v:e} ({:#x})",
            v.to_bits()
        );
        assert_eq!(
            bf[i],
            vidgrad::math_mode::bf16_bits(v) as u32,
            "bf16 of {v:e} ({:#x})",
            v.to_bits()
        );
    }
}

#[test]
fn ldmatrix_follows_the_ptx_layout() {
    let out = Buf::uninit(6 * 32 * 4 * 4);
    launch("st_ldmatrix", 1, 32, 0, &[arg(&out.ptr)]).unwrap();
    let o: Vec<u32> = out.read();
    // Element (m, r, c) of the shared matrices holds m·64 + r·8 + c. PTX ISA, ldmatrix: lane l holds, in
    // register m, row l/4 and columns 2(l%4), 2(l%4)+1 of matrix m (the lower column in the low half);
    // with .trans the matrix is read transposed: rows 2(l%4), 2(l%4)+1 of column l/4.
    for (v, (num, trans)) in [
        (1, false),
        (1, true),
        (2, false),
        (2, true),
        (4, false),
        (4, true),
    ]
    .into_iter()
    .enumerate()
    {
        for lane in 0..32u32 {
            for reg in 0..4u32 {
                let got = o[((v * 32) as u32 + lane) as usize * 4 + reg as usize];
                if reg >= num {
                    assert_eq!(got, 0xffff_ffff);
                    continue;
                }
                let (i, j) = (lane / 4, 2 * (lane % 4));
                let at = |r: u32, c: u32| reg * 64 + r * 8 + c;
                let (lo, hi) = if trans {
                    (at(j, i), at(j + 1, i))
                } else {
                    (at(i, j), at(i, j + 1))
                };
                assert_eq!(
                    got,
                    lo | hi << 16,
                    "x{num} trans={trans} lane {lane} register {reg}"
                );
            }
        }
    }
}

#[test]
fn cp_async_copies_in_committed_groups_with_zero_fill() {
    let x: Vec<f32> = (0..768).map(|i| i as f32 + 1.0).collect();
    let xb = Buf::new(&x);
    let (y, own) = (Buf::uninit(768 * 4), Buf::uninit(256 * 4));
    launch(
        "st_cp_async",
        1,
        64,
        0,
        &[arg(&y.ptr), arg(&own.ptr), arg(&xb.ptr)],
    )
    .unwrap();
    // What each group leaves in shared memory (see the kernel's comment).
    let mut s = vec![0.0f32; 768];
    for t in 0..64 {
        let src0 = [16, 8, 0, 12][t % 4] / 4;
        for i in 0..src0 {
            s[4 * t + i] = x[4 * t + i];
        }
        for i in 0..4 {
            s[256 + 4 * t + i] = x[256 + 4 * t + i];
        }
        let n8 = if t % 3 == 0 { 1 } else { 2 };
        for i in 0..n8 {
            s[512 + 4 * t + i] = x[512 + 4 * t + i];
        }
        s[512 + 4 * t + 2] = x[512 + 4 * t + 2];
        if t % 2 == 0 {
            s[512 + 4 * t + 3] = x[512 + 4 * t + 3];
        }
    }
    let y: Vec<f32> = y.read();
    for g in 0..3 {
        for i in 0..256 {
            assert_eq!(
                y[g * 256 + i],
                s[g * 256 + 255 - i],
                "group {g} element {i}"
            );
        }
    }
    assert_eq!(own.read::<f32>(), s[..256].to_vec());
}

#[test]
fn tensor_core_misuse_is_reported() {
    let y = Buf::uninit(256 * 4);
    let x = Buf::new(&(0..512).map(|i| i as f32).collect::<Vec<f32>>());
    let msg = expect_error(
        launch("st_mma_skipped_lane", 1, 32, 0, &[arg(&y.ptr)]),
        &[
            "st_mma_skipped_lane",
            "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32",
        ],
    );
    assert!(
        msg.contains("lane 3") || msg.contains("thread 3 exited"),
        "{msg}"
    );
    expect_error(
        launch("st_ldmatrix_half_warp", 1, 16, 0, &[arg(&y.ptr)]),
        &[
            "st_ldmatrix_half_warp",
            "ldmatrix.sync.aligned.m8n8.x1.shared.b16",
            "beyond the block's 16 threads",
        ],
    );
    expect_error(
        launch("st_ldmatrix_misaligned", 1, 32, 0, &[arg(&y.ptr)]),
        &["st_ldmatrix_misaligned", "not 16-byte aligned"],
    );
    expect_error(
        launch("st_cp_async_no_wait", 1, 64, 0, &[arg(&y.ptr), arg(&x.ptr)]),
        &[
            "st_cp_async_no_wait",
            "a cp.async is still copying",
            "which no cp.async.wait_group",
        ],
    );
    expect_error(
        launch(
            "st_cp_async_wait_too_few",
            1,
            64,
            0,
            &[arg(&y.ptr), arg(&x.ptr)],
        ),
        &["st_cp_async_wait_too_few", "a cp.async is still copying"],
    );
    let short = Buf::new(&[1.0f32; 255]);
    expect_error(
        launch("st_cp_async_oob", 1, 64, 0, &[arg(&y.ptr), arg(&short.ptr)]),
        &["st_cp_async_oob", "invalid global read of 16 bytes"],
    );
    expect_error(
        launch(
            "st_cp_async_misaligned",
            1,
            64,
            0,
            &[arg(&y.ptr), arg(&x.ptr)],
        ),
        &["st_cp_async_misaligned", "misaligned 16-byte copy"],
    );
    expect_error(
        launch(
            "st_cp_async_overwrite",
            1,
            64,
            0,
            &[arg(&y.ptr), arg(&x.ptr)],
        ),
        &[
            "st_cp_async_overwrite",
            "shared-memory race",
            "__shared__ s",
        ],
    );
    expect_error(
        launch("st_ldmatrix_missing_sync", 1, 32, 0, &[arg(&y.ptr)]),
        // Read after write or write after read: which comes second depends on the (shuffled) order.
        &[
            "st_ldmatrix_missing_sync",
            "shared-memory race",
            "__shared__ s",
        ],
    );
    // Without the racecheck (bounds only) a copy not waited for reads as NaN.
    let opts = LaunchOptions {
        order: None,
        checks: Some(SimChecks::Bounds),
    };
    // SAFETY: buffers of this simulator.
    unsafe {
        sim().launch_with(
            "st_cp_async_no_wait",
            (1, 1, 1),
            (64, 1, 1),
            0,
            &[arg(&y.ptr), arg(&x.ptr)],
            opts,
        )
    }
    .unwrap();
    assert!(y.read::<f32>()[..64].iter().any(|v| v.is_nan()));
}
