//! The seam between the CUDA backend and a CUDA driver. The backend sizes buffers, picks kernels and
//! grids; a [`Driver`] only moves bytes and launches kernels by name on its one stream. Two
//! implementations: [`super::cudarc_driver::CudarcDriver`] (the real device through libcuda) and the
//! CUDA simulator (C++ behind an FFI), which runs the same kernels on the host.

use std::any::Any;
use std::ffi::c_void;
use std::fmt::Debug;

use crate::error::Result;

/// One kernel argument as the driver receives it: the address of the value and its size in bytes
/// (the simulator checks the size against the kernel's parameter; cudarc ignores it).
#[derive(Debug, Clone, Copy)]
pub struct KernelArg {
    pub ptr: *mut c_void,
    pub size: usize,
}

impl KernelArg {
    /// The argument `v`: its address and `size_of_val`. `v` must outlive the launch call.
    #[inline]
    pub fn of<T>(v: &T) -> KernelArg {
        KernelArg {
            ptr: v as *const T as *mut c_void,
            size: std::mem::size_of_val(v),
        }
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A launch without dynamic shared memory (every kernel of kernels/*.cu today).
    pub fn new(grid: (u32, u32, u32), block: (u32, u32, u32)) -> LaunchConfig {
        LaunchConfig {
            grid,
            block,
            shared_bytes: 0,
        }
    }
}

/// Dynamic shared memory a kernel gets without opting in (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).
pub const DEFAULT_SHARED_PER_BLOCK: u32 = 48 << 10;

/// What the driver reports about the device, enough to derive its FP32 and memory peaks and to check
/// launch limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProps {
    pub name: String,
    pub sm_count: u32,
    pub compute_capability: (u32, u32),
    /// Peak SM clock.
    pub clock_khz: u64,
    /// Peak memory clock.
    pub memory_clock_khz: u64,
    pub memory_bus_bits: u64,
    pub l2_bytes: u64,
    pub total_memory: u64,
    /// Shared memory per block without opting in (48 KiB).
    pub shared_per_block: u64,
    /// Shared memory per block a kernel can opt in to (227 KiB on H100).
    pub shared_per_block_optin: u64,
    pub max_threads_per_block: u32,
}

/// A recorded point on the stream (timing).
pub trait DriverEvent: Debug + Send + Sync {
    /// Milliseconds from self to `end` (waits for both).
    fn elapsed_ms(&self, end: &dyn DriverEvent) -> Result<f32>;
    fn as_any(&self) -> &dyn Any;
}

/// What the CUDA backend asks of a CUDA driver: one stream, device memory, kernels by name.
pub trait Driver: Send + Sync + Debug {
    /// Device properties (read once at creation).
    fn props(&self) -> &DeviceProps;
    /// Whether this is the simulated device (its timings are never GPU figures).
    fn is_simulator(&self) -> bool;
    /// `bytes` of device memory, at least 256-byte aligned.
    fn alloc(&self, bytes: usize) -> Result<u64>;
    /// Give a block back (no queued work may still use it: the caller synchronised).
    fn free(&self, ptr: u64);
    /// Asynchronous (stream-ordered): set `bytes` bytes at `dst` to `value`.
    fn memset_d8(&self, dst: u64, value: u8, bytes: usize) -> Result<()>;
    /// Asynchronous (stream-ordered): `src` may be pageable; it is staged before the call returns.
    fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()>;
    /// Asynchronous (stream-ordered) device-to-device copy.
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    /// Synchronous: waits for the stream, then copies.
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()>;
    /// Launch `kernel` of kernels/<family>.cu.
    fn launch(
        &self,
        family: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()>;
    /// Wait for all enqueued work.
    fn synchronize(&self) -> Result<()>;
    /// Record an event on the stream now.
    fn record_event(&self) -> Result<Box<dyn DriverEvent>>;
    /// The caching allocator hands `ptr` (a block of `bytes`) out again to a new owner. Default:
    /// nothing (the simulator poisons reused blocks with NaN).
    /// Free device memory as the driver reports it (`cuMemGetInfo`); `None` when unknown (the
    /// simulator).
    fn free_memory(&self) -> Option<u64> {
        None
    }
    fn block_reused(&self, _ptr: u64, _bytes: usize) {}
    /// The real device's stream, on which NCCL enqueues its collectives (`crate::dist::nccl`); `None`
    /// for the simulator, which NCCL cannot drive.
    fn cudarc_stream(&self) -> Option<std::sync::Arc<cudarc::driver::CudaStream>> {
        None
    }
    /// The caching allocator takes `ptr` (a block of `bytes`) back from its owner. Default: nothing
    /// (the simulator treats cached blocks as freed).
    fn block_released(&self, _ptr: u64, _bytes: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_carry_address_and_size() {
        let (a, b, c) = (7i32, 2.5f32, 1u64 << 40);
        let p = [1i32; 13];
        let args = [
            KernelArg::of(&a),
            KernelArg::of(&b),
            KernelArg::of(&c),
            KernelArg::of(&p),
        ];
        assert_eq!(
            args.map(|a| a.size),
            [4, 4, 8, 52],
            "sizes as the kernels declare them"
        );
        // SAFETY: the addresses are of the live locals above.
        unsafe {
            assert_eq!(*(args[0].ptr as *const i32), 7);
            assert_eq!(*(args[2].ptr as *const u64), 1 << 40);
        }
        assert_eq!(LaunchConfig::new((1, 2, 3), (256, 1, 1)).shared_bytes, 0);
    }
}
