//! The simulated CUDA device: the real `kernels/*.cu`, compiled by build.rs as host C++ against
//! `kernels/sim/cudasim.h`, run on the CPU by `kernels/sim/runtime.cpp` with the checks a GPU does not
//! make (docs/CUDA-SIM.md). This module is the Rust side: the C interface of the runtime, and
//! [`SimDriver`], the simulator behind the CUDA backend's driver seam, so that the backend executes
//! exactly what it would ask of a GPU.

use std::collections::HashMap;
#[cfg(vidgrad_cudasim)]
use std::ffi::c_char;
use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Without the simulator (no C++ compiler at build time) nothing reaches these: [`Simulator::get`]
/// fails first, so no `Simulator` exists to call them.
#[cfg(not(vidgrad_cudasim))]
#[allow(clippy::missing_safety_doc, clippy::too_many_arguments)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    macro_rules! absent {
        ($($name:ident($($a:ty),*) -> $r:ty;)*) => {$(
            pub unsafe fn $name($(_: $a),*) -> $r {
                unreachable!("the CUDA simulator is not built")
            }
        )*};
    }
    absent! {
        cudasim_kernel_launches(usize) -> u64;
        cudasim_set_max_dynamic_shared(usize, usize) -> ();
        cudasim_set_order(c_int, u64) -> ();
        cudasim_set_checks(c_int) -> ();
        cudasim_threads() -> c_int;
        cudasim_context_switches() -> u64;
        cudasim_malloc(usize) -> *mut c_void;
        cudasim_free(*mut c_void) -> c_int;
        cudasim_set_state(*mut c_void, c_int) -> c_int;
        cudasim_check_range(u64, usize, *mut c_char, usize) -> c_int;
        cudasim_launch(usize, *const u32, *const u32, usize, *const *mut c_void, *const usize, usize,
            c_int, u64, c_int, *mut c_char, usize) -> c_int;
    }
}

#[cfg(vidgrad_cudasim)]
mod ffi {
    use std::ffi::{c_char, c_int, c_void};
    extern "C" {
        pub fn cudasim_kernel_count() -> usize;
        pub fn cudasim_kernel_info(
            i: usize,
            name: *mut *const c_char,
            file: *mut *const c_char,
            max_threads: *mut c_int,
            nparams: *mut c_int,
        ) -> c_int;
        pub fn cudasim_kernel_launches(i: usize) -> u64;
        pub fn cudasim_set_max_dynamic_shared(i: usize, bytes: usize);
        pub fn cudasim_set_order(order: c_int, seed: u64);
        pub fn cudasim_set_checks(level: c_int);
        pub fn cudasim_threads() -> c_int;
        pub fn cudasim_context_switches() -> u64;
        pub fn cudasim_malloc(bytes: usize) -> *mut c_void;
        pub fn cudasim_free(p: *mut c_void) -> c_int;
        pub fn cudasim_set_state(p: *mut c_void, state: c_int) -> c_int;
        pub fn cudasim_check_range(p: u64, bytes: usize, err: *mut c_char, errlen: usize) -> c_int;
        pub fn cudasim_launch(
            index: usize,
            grid: *const u32,
            block: *const u32,
            shared_bytes: usize,
            args: *const *mut c_void,
            sizes: *const usize,
            nargs: usize,
            order: c_int,
            seed: u64,
            checks: c_int,
            err: *mut c_char,
            errlen: usize,
        ) -> c_int;
    }
}

/// The order in which the threads of a block run between two barriers. Every order is a legal
/// schedule; a kernel whose result depends on it is missing a barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadOrder {
    Forward,
    Reverse,
    /// A seeded random permutation, drawn anew after every barrier.
    Shuffled(u64),
}

/// Which memory checks the simulator makes (process-wide default: `VIDGRAD_SIM_CHECKS`, else `All`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimChecks {
    /// Nothing checked: only to show what a check-free run computes, and to measure the checks' cost.
    Off = 0,
    /// Global bounds (every access inside one live allocation), vector and atomic alignment, shared
    /// memory within the block's declared size; no racecheck shadow (races, uninitialised shared reads).
    Bounds = 1,
    /// Everything (the default).
    All = 2,
}

/// Settings of one launch that override the process-wide ones ([`Simulator::set_order`],
/// [`Simulator::set_checks`]) for that launch only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaunchOptions {
    pub order: Option<ThreadOrder>,
    pub checks: Option<SimChecks>,
}

fn order_code(order: ThreadOrder) -> (i32, u64) {
    match order {
        ThreadOrder::Forward => (0, 0),
        ThreadOrder::Reverse => (1, 0),
        ThreadOrder::Shuffled(s) => (2, s),
    }
}

/// One kernel the simulator carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimKernel {
    pub name: String,
    /// `kernels/<family>.cu` (or `kernels/sim/selftest.cu`).
    pub file: String,
    /// `__launch_bounds__` maximum threads per block, if declared.
    pub max_threads: Option<u32>,
    pub params: usize,
}

impl SimKernel {
    /// The family: the source file's stem.
    pub fn family(&self) -> &str {
        self.file
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".cu")
    }
}

/// The simulator's kernel table, read once.
#[derive(Debug)]
pub struct Simulator {
    kernels: Vec<SimKernel>,
    by_name: HashMap<String, usize>,
}

const NOT_BUILT: &str = "this build of vidgrad has no CUDA simulator: build.rs could not compile \
kernels/*.cu as C++ (is a C++ compiler, g++ or clang++, installed?); see docs/CUDA-SIM.md";

fn err_text(buf: &[u8]) -> String {
    CStr::from_bytes_until_nul(buf)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Simulator {
    /// Whether this build carries the simulator.
    pub fn available() -> bool {
        cfg!(vidgrad_cudasim)
    }

    /// The simulator (an error when this build has none).
    pub fn get() -> Result<&'static Simulator> {
        static SIM: OnceLock<Option<Simulator>> = OnceLock::new();
        SIM.get_or_init(Self::load)
            .as_ref()
            .ok_or_else(|| Error::Device(NOT_BUILT.into()))
    }

    #[cfg(vidgrad_cudasim)]
    fn load() -> Option<Simulator> {
        let mut kernels = vec![];
        // SAFETY: plain queries of the runtime's static kernel table.
        unsafe {
            for i in 0..ffi::cudasim_kernel_count() {
                let (mut name, mut file): (*const c_char, *const c_char) =
                    (std::ptr::null(), std::ptr::null());
                let (mut bounds, mut params) = (0, 0);
                if ffi::cudasim_kernel_info(i, &mut name, &mut file, &mut bounds, &mut params) != 0
                {
                    continue;
                }
                kernels.push(SimKernel {
                    name: CStr::from_ptr(name).to_string_lossy().into_owned(),
                    file: CStr::from_ptr(file).to_string_lossy().into_owned(),
                    max_threads: (bounds > 0).then_some(bounds as u32),
                    params: params as usize,
                });
            }
        }
        let by_name = kernels
            .iter()
            .enumerate()
            .map(|(i, k)| (k.name.clone(), i))
            .collect();
        Some(Simulator { kernels, by_name })
    }

    #[cfg(not(vidgrad_cudasim))]
    fn load() -> Option<Simulator> {
        None
    }

    /// Every kernel, in table order.
    pub fn kernels(&self) -> &[SimKernel] {
        &self.kernels
    }

    fn index(&self, kernel: &str) -> Result<usize> {
        self.by_name.get(kernel).copied().ok_or_else(|| {
            Error::Device(format!(
                "cuda-sim: no kernel named {kernel} (not an extern \"C\" __global__ of kernels/*.cu)"
            ))
        })
    }

    /// How often each kernel has been launched in this process (by name).
    pub fn launch_counts(&self) -> Vec<(&SimKernel, u64)> {
        self.kernels
            .iter()
            .enumerate()
            // SAFETY: a read of an atomic counter.
            .map(|(i, k)| (k, unsafe { ffi::cudasim_kernel_launches(i) }))
            .collect()
    }

    /// Host threads that run blocks in parallel (`VIDGRAD_SIM_THREADS`, default: all cores).
    pub fn threads(&self) -> usize {
        // SAFETY: a plain query.
        unsafe { ffi::cudasim_threads().max(1) as usize }
    }

    /// Fiber context switches so far (each resume and each yield counts one).
    pub fn context_switches(&self) -> u64 {
        // SAFETY: a plain query.
        unsafe { ffi::cudasim_context_switches() }
    }

    /// Set the order of the threads of a block between barriers (process-wide).
    pub fn set_order(&self, order: ThreadOrder) {
        let (o, seed) = order_code(order);
        // SAFETY: stores into the runtime's atomics.
        unsafe { ffi::cudasim_set_order(o, seed) }
    }

    /// Choose the memory checks (process-wide; [`SimChecks::All`] unless `VIDGRAD_SIM_CHECKS` says
    /// otherwise).
    pub fn set_checks(&self, checks: SimChecks) {
        // SAFETY: a store into the runtime's atomic.
        unsafe { ffi::cudasim_set_checks(checks as i32) }
    }

    /// Device memory: `bytes` (at least one), 256-byte aligned, filled with a NaN pattern.
    pub fn malloc(&self, bytes: usize) -> Result<u64> {
        // SAFETY: returns a fresh host block or null.
        let p = unsafe { ffi::cudasim_malloc(bytes.max(1)) } as u64;
        if p == 0 {
            return Err(Error::Device(format!(
                "cuda-sim: out of host memory allocating {bytes} bytes"
            )));
        }
        Ok(p)
    }

    /// Give a block of [`Simulator::malloc`] back.
    ///
    /// # Safety
    /// No buffer may refer to `ptr` any more.
    pub unsafe fn free(&self, ptr: u64) {
        ffi::cudasim_free(ptr as *mut c_void);
    }

    /// Mark a block as held by the caching allocator (`cached`: accesses are use-after-free) or handed
    /// out again (poisoned anew).
    pub fn set_cached(&self, ptr: u64, cached: bool) {
        // SAFETY: the runtime looks the pointer up and ignores unknown ones.
        unsafe { ffi::cudasim_set_state(ptr as *mut c_void, cached as i32) };
    }

    /// An error unless `[ptr, ptr + bytes)` lies inside one live allocation.
    pub fn check_range(&self, ptr: u64, bytes: usize, what: &str) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut buf = [0u8; 512];
        // SAFETY: buf outlives the call.
        if unsafe { ffi::cudasim_check_range(ptr, bytes, buf.as_mut_ptr().cast(), buf.len()) } == 0
        {
            return Ok(());
        }
        Err(Error::Device(format!(
            "cuda-sim: {what} of {bytes} bytes at 0x{ptr:x}: {}",
            err_text(&buf)
        )))
    }

    /// Grant `kernel` up to `bytes` of dynamic shared memory (cuFuncSetAttribute's
    /// MAX_DYNAMIC_SHARED_SIZE_BYTES).
    pub fn set_max_dynamic_shared(&self, kernel: &str, bytes: usize) -> Result<()> {
        let i = self.index(kernel)?;
        // SAFETY: a store into the runtime's table.
        unsafe { ffi::cudasim_set_max_dynamic_shared(i, bytes) };
        Ok(())
    }

    /// Launch `kernel` and run it to completion. `args`: the address and size of each argument value
    /// (sizes are checked against the kernel's parameters; see [`arg`]).
    ///
    /// # Safety
    /// Every pointer argument must be a device address of this simulator (or one the kernel never
    /// dereferences); the runtime checks each access, but only against the allocation table.
    pub unsafe fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: usize,
        args: &[(*mut c_void, usize)],
    ) -> Result<()> {
        self.launch_with(
            kernel,
            grid,
            block,
            shared_bytes,
            args,
            LaunchOptions::default(),
        )
    }

    /// [`Simulator::launch`] with per-launch settings.
    ///
    /// # Safety
    /// As for [`Simulator::launch`].
    pub unsafe fn launch_with(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: usize,
        args: &[(*mut c_void, usize)],
        opts: LaunchOptions,
    ) -> Result<()> {
        let i = self.index(kernel)?;
        let (order, seed) = opts.order.map_or((-1, 0), order_code);
        let checks = opts.checks.map_or(-1, |c| c as i32);
        let (ptrs, sizes): (Vec<_>, Vec<_>) = args.iter().copied().unzip();
        let mut buf = vec![0u8; 4096];
        let r = ffi::cudasim_launch(
            i,
            [grid.0, grid.1, grid.2].as_ptr(),
            [block.0, block.1, block.2].as_ptr(),
            shared_bytes,
            ptrs.as_ptr(),
            sizes.as_ptr(),
            ptrs.len(),
            order,
            seed,
            checks,
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        if r == 0 {
            Ok(())
        } else {
            Err(Error::Device(format!("cuda-sim: {}", err_text(&buf))))
        }
    }
}

/// One kernel argument for [`Simulator::launch`]: the value's address and size.
pub fn arg<T>(v: &T) -> (*mut c_void, usize) {
    (v as *const T as *mut c_void, std::mem::size_of::<T>())
}

// ---------------------------------------------------------------------------------------------------
// The simulator behind the driver seam
// ---------------------------------------------------------------------------------------------------

use std::sync::Mutex;
use std::time::Instant;

use super::driver::{
    DeviceProps, Driver, DriverEvent, KernelArg, LaunchConfig, DEFAULT_SHARED_PER_BLOCK,
};

/// The name [`SimDriver`] reports: never mistaken for a GPU in logs, benchmarks or checkpoints.
pub const SIM_DEVICE_NAME: &str = "vidgrad CUDA simulator (host CPU, not a GPU)";

/// SMs the simulated device reports (`VIDGRAD_SIM_SM_COUNT`, default 8). The backend sizes its
/// grid-stride grids and split-K/split-channel grids from it, so a small value keeps grids small on
/// the host; the launch arithmetic is the same code a GPU gets.
fn sim_sm_count() -> u32 {
    std::env::var("VIDGRAD_SIM_SM_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &u32| n > 0)
        .unwrap_or(8)
}

/// The CUDA simulator as a [`Driver`]: launches run to completion on the host before `launch` returns
/// (one stream, in order); copies and memsets check their ranges against the live allocations.
#[derive(Debug)]
pub struct SimDriver {
    sim: &'static Simulator,
    props: DeviceProps,
    /// Kernels granted more than 48 KiB of dynamic shared memory (as the cudarc driver does on demand).
    optin: Mutex<HashMap<&'static str, u32>>,
}

impl SimDriver {
    pub fn new() -> Result<SimDriver> {
        let sim = Simulator::get()?;
        Ok(SimDriver {
            sim,
            props: DeviceProps {
                name: SIM_DEVICE_NAME.into(),
                sm_count: sim_sm_count(),
                compute_capability: (8, 0),
                clock_khz: 0,
                memory_clock_khz: 0,
                memory_bus_bits: 0,
                l2_bytes: 40 << 20,
                total_memory: 0,
                shared_per_block: DEFAULT_SHARED_PER_BLOCK as u64,
                shared_per_block_optin: 227 << 10,
                max_threads_per_block: 1024,
            },
            optin: Mutex::new(HashMap::new()),
        })
    }
}

/// A host clock reading: simulator timings are host times, never GPU figures.
#[derive(Debug)]
struct SimEvent(Instant);

impl DriverEvent for SimEvent {
    fn elapsed_ms(&self, end: &dyn DriverEvent) -> Result<f32> {
        let end = end
            .as_any()
            .downcast_ref::<SimEvent>()
            .ok_or_else(|| Error::Device("cuda-sim: event of another driver".into()))?;
        Ok(end.0.saturating_duration_since(self.0).as_secs_f32() * 1e3)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Driver for SimDriver {
    fn props(&self) -> &DeviceProps {
        &self.props
    }
    fn is_simulator(&self) -> bool {
        true
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.sim.malloc(bytes)
    }
    fn free(&self, ptr: u64) {
        // SAFETY: the caching allocator frees a block only once no buffer refers to it.
        unsafe { self.sim.free(ptr) }
    }
    fn memset_d8(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.sim.check_range(dst, bytes, "memset")?;
        // SAFETY: the range lies in one live allocation (checked above).
        unsafe { std::ptr::write_bytes(dst as *mut u8, value, bytes) };
        Ok(())
    }
    fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.sim.check_range(dst, src.len(), "copy to device")?;
        // SAFETY: as above; src is a host slice.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.sim
            .check_range(dst, bytes, "device copy destination")?;
        self.sim.check_range(src, bytes, "device copy source")?;
        // SAFETY: both ranges are live allocations; cuMemcpy allows neither overlap, copy handles it.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.sim.check_range(src, dst.len(), "copy to host")?;
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
    fn launch(
        &self,
        _family: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        if cfg.shared_bytes > DEFAULT_SHARED_PER_BLOCK {
            let mut optin = self.optin.lock().unwrap();
            if optin.get(kernel).is_none_or(|&b| b < cfg.shared_bytes) {
                self.sim
                    .set_max_dynamic_shared(kernel, cfg.shared_bytes as usize)?;
                optin.insert(kernel, cfg.shared_bytes);
            }
        }
        let args: Vec<(*mut c_void, usize)> = args.iter().map(|a| (a.ptr, a.size)).collect();
        // SAFETY: the backend passes device addresses of its live buffers; the runtime checks every
        // access against the allocation table anyway.
        unsafe {
            self.sim.launch(
                kernel,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes as usize,
                &args,
            )
        }
    }
    fn synchronize(&self) -> Result<()> {
        Ok(()) // every launch has completed when `launch` returns
    }
    fn record_event(&self) -> Result<Box<dyn DriverEvent>> {
        Ok(Box::new(SimEvent(Instant::now())))
    }
    fn block_reused(&self, ptr: u64, _bytes: usize) {
        self.sim.set_cached(ptr, false);
    }
    fn block_released(&self, ptr: u64, _bytes: usize) {
        self.sim.set_cached(ptr, true);
    }
}
