//! The real device: a cudarc driver context (libcuda loaded at run time), one stream, and the kernels
//! of `kernels/*.cu` (embedded by build.rs, loaded with cuModuleLoadData).

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream, DriverError};

use super::driver::{
    DeviceProps, Driver, DriverEvent, KernelArg, LaunchConfig, DEFAULT_SHARED_PER_BLOCK,
};
use super::kernels;
use crate::error::{Error, Result};

pub(super) fn derr(what: &str) -> impl Fn(DriverError) -> Error + '_ {
    move |e| Error::Device(format!("cuda: {what}: {e:?}"))
}

/// Whether the driver library (libcuda) can be loaded at all.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// Number of CUDA devices usable by this build: 0 without kernels, driver library or devices.
pub fn device_count() -> usize {
    if !kernels::embedded() || !driver_present() {
        return 0;
    }
    if result::init().is_err() {
        return 0;
    }
    result::device::get_count().map_or(0, |n| n.max(0) as usize)
}

/// A kernel handle (CUfunction is a pointer into the loaded module, valid for the process).
#[derive(Debug, Clone, Copy)]
struct Func(sys::CUfunction);
// SAFETY: CUfunction handles may be used from any thread once the context is current.
unsafe impl Send for Func {}
unsafe impl Sync for Func {}

#[derive(Debug)]
struct Module(sys::CUmodule);
// SAFETY: as for Func; modules are never unloaded.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

/// A looked-up kernel and the dynamic shared memory it has been opted in to so far.
#[derive(Debug, Clone, Copy)]
struct Kernel {
    func: Func,
    shared_limit: u32,
}

/// Device `ordinal` through cudarc.
#[derive(Debug)]
pub struct CudarcDriver {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Module>,
    funcs: Mutex<HashMap<&'static str, Kernel>>,
    props: DeviceProps,
}

impl CudarcDriver {
    pub fn new(ordinal: usize) -> Result<CudarcDriver> {
        if !kernels::embedded() {
            return Err(Error::Device(kernels::NOT_BUILT.into()));
        }
        if !driver_present() {
            return Err(Error::Device(
                "cuda: no CUDA driver library (libcuda.so) on this machine; use --device cpu"
                    .into(),
            ));
        }
        result::init().map_err(derr("cuInit"))?;
        let count = result::device::get_count().map_err(derr("device count"))? as usize;
        if ordinal >= count {
            return Err(Error::Device(format!(
                "cuda:{ordinal} requested, but {count} CUDA device(s) are present"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(derr("context"))?;
        let stream = ctx.new_stream().map_err(derr("stream"))?;
        let props = read_props(&ctx)?;
        let mut modules = HashMap::new();
        for (family, image) in kernels::FATBINS {
            // The fatbin header is read through aligned loads: copy it into 8-byte-aligned memory.
            let mut aligned = vec![0u64; image.len().div_ceil(8) + 1];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..image.len()].copy_from_slice(image);
            // SAFETY: a complete fatbin image produced by nvcc.
            let m = unsafe { result::module::load_data(aligned.as_ptr() as *const c_void) }
                .map_err(|e| {
                    Error::Device(format!(
                        "cuda: loading kernels/{family}.cu failed ({e:?}); the driver may be older than \
                         the CUDA {} that compiled the kernels",
                        kernels::NVCC_VERSION.unwrap_or("?")
                    ))
                })?;
            modules.insert(*family, Module(m));
        }
        Ok(CudarcDriver {
            ctx,
            stream,
            modules,
            funcs: Mutex::new(HashMap::new()),
            props,
        })
    }

    /// The launching thread needs the context current (cheap when it already is); no call relies on
    /// an earlier one having bound it.
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(derr("bind context"))
    }

    /// The kernel, looked up once; opted in to `shared` bytes of dynamic shared memory when that is
    /// over the default 48 KiB (the driver refuses such launches otherwise).
    fn func(&self, family: &'static str, name: &'static str, shared: u32) -> Result<Func> {
        let mut funcs = self.funcs.lock().unwrap();
        let k = match funcs.get_mut(name) {
            Some(k) => k,
            None => {
                let module = self.modules.get(family).ok_or_else(|| {
                    Error::Device(format!("cuda: kernels/{family}.cu was not embedded"))
                })?;
                let cname = CString::new(name).unwrap();
                // SAFETY: the module is loaded and never unloaded.
                let f =
                    unsafe { result::module::get_function(module.0, cname) }.map_err(derr(name))?;
                funcs.entry(name).or_insert(Kernel {
                    func: Func(f),
                    shared_limit: DEFAULT_SHARED_PER_BLOCK,
                })
            }
        };
        if shared > k.shared_limit {
            // SAFETY: the function exists; the value is checked by the driver.
            unsafe {
                result::function::set_function_attribute(
                    k.func.0,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared as i32,
                )
            }
            .map_err(derr(name))?;
            k.shared_limit = shared;
        }
        Ok(k.func)
    }
}

fn read_props(ctx: &CudaContext) -> Result<DeviceProps> {
    use sys::CUdevice_attribute as A;
    let attr =
        |a: A| -> Result<u64> { Ok(ctx.attribute(a).map_err(derr("attribute"))?.max(0) as u64) };
    Ok(DeviceProps {
        name: ctx.name().unwrap_or_default(),
        sm_count: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
        compute_capability: (
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32,
            attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32,
        ),
        clock_khz: attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
        memory_clock_khz: attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?,
        memory_bus_bits: attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
        l2_bytes: attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
        total_memory: ctx.total_mem().map_err(derr("total memory"))? as u64,
        shared_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
        shared_per_block_optin: attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
        max_threads_per_block: attr(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)? as u32,
    })
}

/// A CUDA event with timing enabled, recorded on the driver's stream.
#[derive(Debug)]
struct CudarcEvent(CudaEvent);

impl DriverEvent for CudarcEvent {
    fn elapsed_ms(&self, end: &dyn DriverEvent) -> Result<f32> {
        let end = end.as_any().downcast_ref::<CudarcEvent>().ok_or_else(|| {
            Error::Device("cuda: event elapsed time: the end event is of another driver".into())
        })?;
        self.0
            .elapsed_ms(&end.0)
            .map_err(derr("event elapsed time"))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Driver for CudarcDriver {
    fn props(&self) -> &DeviceProps {
        &self.props
    }
    fn free_memory(&self) -> Option<u64> {
        self.ctx
            .mem_get_info()
            .ok()
            .map(|(free, _total)| free as u64)
    }
    fn is_simulator(&self) -> bool {
        false
    }
    fn cudarc_stream(&self) -> Option<Arc<CudaStream>> {
        Some(self.stream.clone())
    }
    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: a plain cuMemAlloc in the bound context (256-byte aligned).
        unsafe { result::malloc_sync(bytes) }.map_err(derr("cuMemAlloc"))
    }
    fn free(&self, ptr: u64) {
        // SAFETY: ptr came from cuMemAlloc, is no longer referenced by any buffer, and the caller
        // synchronised, so no queued work uses it any more.
        if self.bind().is_ok() {
            unsafe {
                let _ = result::free_sync(ptr);
            }
        }
    }
    fn memset_d8(&self, dst: u64, value: u8, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's block holds `bytes` bytes.
        unsafe { result::memset_d8_async(dst, value, bytes, self.stream.cu_stream()) }
            .map_err(derr("memset"))
    }
    fn copy_htod(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: the block holds src.len() bytes; a pageable source is staged before the call returns.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(derr("copy to device"))
    }
    fn copy_dtod(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both blocks hold at least `bytes` bytes.
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(derr("device copy"))
    }
    fn copy_dtoh(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: the block holds dst.len() bytes; the stream is synchronised before dst is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(derr("copy to host"))?;
        self.stream.synchronize().map_err(derr("synchronize"))
    }
    fn launch(
        &self,
        family: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        self.bind()?;
        let f = self.func(family, kernel, cfg.shared_bytes)?;
        // cuLaunchKernel takes the argument addresses only; on the stack for every kernel we have.
        let mut stack = [std::ptr::null_mut::<c_void>(); 24];
        let mut heap = Vec::new();
        let params: &mut [*mut c_void] = if args.len() <= stack.len() {
            for (p, a) in stack.iter_mut().zip(args) {
                *p = a.ptr;
            }
            &mut stack[..args.len()]
        } else {
            heap.extend(args.iter().map(|a| a.ptr));
            &mut heap
        };
        // SAFETY: the argument list matches the kernel's signature (each call site mirrors its
        // kernels/*.cu declaration), and every pointer argument is a live buffer of this backend.
        unsafe {
            result::launch_kernel(
                f.0,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(derr(kernel))
    }
    fn synchronize(&self) -> Result<()> {
        // The whole context, which covers the stream: the caching allocator also synchronises through
        // here before handing blocks back (it always waited for the context).
        self.bind()?;
        result::ctx::synchronize().map_err(derr("synchronize"))
    }
    fn record_event(&self) -> Result<Box<dyn DriverEvent>> {
        self.bind()?;
        let e = self
            .stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(derr("record event"))?;
        Ok(Box::new(CudarcEvent(e)))
    }
}
