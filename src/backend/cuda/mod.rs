//! The CUDA backend: a cudarc driver context (libcuda loaded at run time), one stream, the kernels of
//! `kernels/*.cu` (embedded by build.rs, loaded with cuModuleLoadData) and a caching allocator.
//!
//! Every method enqueues kernels on the one stream and returns; only `to_host` (the host needs the
//! values) synchronises. The kernels compute the CPU backend's semantics (see docs/CUDA.md).

pub mod alloc;
pub mod kernels;
pub mod launch;
pub mod sim;
pub mod timing;

use std::any::Any;
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};

use self::alloc::{CachingAllocator, MemoryStats, RawMemory};
use self::launch::{
    blocks, channel_splits, gemm_tiles, grid_for, wgrad_splits, BLOCK, MAX_ELEMENTS,
};
use super::*;
use crate::error::{Error, Result};

fn derr(what: &str) -> impl Fn(DriverError) -> Error + '_ {
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

/// The backend of device `ordinal`, created on first use and kept for the life of the process.
pub fn backend(ordinal: usize) -> Result<&'static CudaBackend> {
    static BACKENDS: OnceLock<Mutex<HashMap<usize, &'static CudaBackend>>> = OnceLock::new();
    let map = BACKENDS.get_or_init(Default::default);
    let mut map = map.lock().unwrap();
    if let Some(b) = map.get(&ordinal) {
        return Ok(b);
    }
    let b: &'static CudaBackend = Box::leak(Box::new(CudaBackend::new(ordinal)?));
    map.insert(ordinal, b);
    Ok(b)
}

/// Device memory from the driver.
#[derive(Debug)]
struct DriverMemory;

impl RawMemory for DriverMemory {
    type Error = DriverError;
    fn alloc(&mut self, bytes: usize) -> std::result::Result<u64, DriverError> {
        // SAFETY: a plain cuMemAlloc in the bound context.
        unsafe { result::malloc_sync(bytes) }
    }
    fn free(&mut self, ptr: u64) {
        // SAFETY: ptr came from cuMemAlloc, is no longer referenced by any buffer, and (see
        // `synchronize`) no queued work uses it any more.
        unsafe {
            let _ = result::free_sync(ptr);
        }
    }
    fn synchronize(&mut self) {
        // The whole context: a cached block may have been used by any work queued before its owner
        // was dropped. Called with the context bound (from `CudaBackend::alloc`/`empty_cache`).
        let _ = result::ctx::synchronize();
    }
}

type Pool = Mutex<CachingAllocator<DriverMemory>>;

/// A device buffer of `len` f32 values (a block of the caching allocator).
#[derive(Debug)]
pub struct CudaBuffer {
    ptr: u64,
    len: usize,
    class: usize,
    pool: &'static Pool,
}

impl BackendBuffer for CudaBuffer {
    fn len(&self) -> usize {
        self.len
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        if self.len > 0 {
            self.pool
                .lock()
                .unwrap()
                .release(self.ptr, self.len * 4, self.class);
        }
    }
}

impl CudaBuffer {
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }
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

/// The CUDA backend of one device.
#[derive(Debug)]
pub struct CudaBackend {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: HashMap<&'static str, Module>,
    funcs: Mutex<HashMap<&'static str, Func>>,
    pool: &'static Pool,
    sm_count: u32,
    device_name: String,
}

/// Kernel arguments: each expression is evaluated into a temporary whose address is passed.
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {
        &mut [$( &$a as *const _ as *mut c_void ),*]
    };
}

/// At most [`MAX_ELEMENTS`] (2^31 − 2^26) elements: the kernels index with 32-bit ints, with headroom
/// for the `i + stride` of their grid-stride loops.
fn i32_of(n: usize, what: &str) -> Result<i32> {
    if n > MAX_ELEMENTS {
        return Err(Error::Device(format!(
            "cuda: {what} has {n} elements; the CUDA kernels handle at most {MAX_ELEMENTS} \
             (2^31 - 2^26) per tensor"
        )));
    }
    Ok(n as i32)
}

/// Geometry of a convolution as the kernels read it (kernels/conv.cu `ConvP`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ConvP {
    n: i32,
    cin: i32,
    cout: i32,
    cin_g: i32,
    cout_g: i32,
    input: [i32; 3],
    output: [i32; 3],
    k: [i32; 3],
    s: [i32; 3],
    p: [i32; 3],
    d: [i32; 3],
    kvol: i32,
    in_vol: i32,
    out_vol: i32,
    m: i32,
    n_gemm: i32,
    k_gemm: i32,
    k_per_split: i32,
    splits: i32,
}

fn a3(v: [usize; 3]) -> [i32; 3] {
    [v[0] as i32, v[1] as i32, v[2] as i32]
}

impl ConvP {
    fn new(g: &ConvGeom) -> Result<ConvP> {
        i32_of(g.n * g.c_in * g.input_volume(), "conv input")?;
        i32_of(g.n * g.c_out * g.output_volume(), "conv output")?;
        i32_of(
            g.c_out * g.in_per_group() * g.kernel_volume(),
            "conv weight",
        )?;
        Ok(ConvP {
            n: g.n as i32,
            cin: g.c_in as i32,
            cout: g.c_out as i32,
            cin_g: g.in_per_group() as i32,
            cout_g: g.out_per_group() as i32,
            input: a3(g.input),
            output: a3(g.output),
            k: a3(g.kernel),
            s: a3(g.stride),
            p: a3(g.padding),
            d: a3(g.dilation),
            kvol: g.kernel_volume() as i32,
            in_vol: g.input_volume() as i32,
            out_vol: g.output_volume() as i32,
            ..Default::default()
        })
    }
}

/// kernels/pool.cu `PoolP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PoolP {
    planes: i32,
    input: [i32; 3],
    output: [i32; 3],
    k: [i32; 3],
    s: [i32; 3],
    p: [i32; 3],
    include_pad: i32,
}

/// kernels/pool.cu `AdaptP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdaptP {
    planes: i32,
    input: [i32; 3],
    output: [i32; 3],
}

/// kernels/upsample.cu `UpP`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UpP {
    planes: i32,
    input: [i32; 3],
    output: [i32; 3],
    scale: [f32; 3],
    align: i32,
}

/// kernels/layout.cu `PermP`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct PermP {
    rank: i32,
    out_shape: [i32; 6],
    src_stride: [i32; 6],
}

/// The upsampling scale along one dim, computed exactly as the CPU backend does.
pub fn upsample_scale(n: usize, out: usize, align_corners: bool) -> f32 {
    if align_corners {
        if out > 1 {
            (n - 1) as f32 / (out - 1) as f32
        } else {
            0.0
        }
    } else {
        n as f32 / out as f32
    }
}

fn cuda_buf(b: &dyn BackendBuffer) -> Result<&CudaBuffer> {
    b.as_any()
        .downcast_ref::<CudaBuffer>()
        .ok_or_else(|| Error::Device("a non-CUDA buffer was passed to the CUDA backend".into()))
}

fn ptr(b: &dyn BackendBuffer) -> Result<u64> {
    Ok(cuda_buf(b)?.ptr)
}

fn opt_ptr(b: Option<&dyn BackendBuffer>) -> Result<u64> {
    b.map_or(Ok(0), ptr)
}

impl CudaBackend {
    fn new(ordinal: usize) -> Result<CudaBackend> {
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
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(derr("attribute"))? as u32;
        let device_name = ctx.name().unwrap_or_default();
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
        let pool: &'static Pool =
            Box::leak(Box::new(Mutex::new(CachingAllocator::new(DriverMemory))));
        Ok(CudaBackend {
            ordinal,
            ctx,
            stream,
            modules,
            funcs: Mutex::new(HashMap::new()),
            pool,
            sm_count,
            device_name,
        })
    }

    /// The GPU's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Allocator counters (requested, peak, reserved, cached bytes, driver allocations).
    pub fn memory_stats(&self) -> MemoryStats {
        self.pool.lock().unwrap().stats()
    }

    /// Return every cached block to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.bind()?;
        self.synchronize()?;
        self.pool.lock().unwrap().release_cache();
        Ok(())
    }

    /// Wait for all enqueued work.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.stream.synchronize().map_err(derr("synchronize"))
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(derr("bind context"))
    }

    fn func(&self, family: &'static str, name: &'static str) -> Result<Func> {
        let mut funcs = self.funcs.lock().unwrap();
        if let Some(f) = funcs.get(name) {
            return Ok(*f);
        }
        let module = self
            .modules
            .get(family)
            .ok_or_else(|| Error::Device(format!("cuda: kernels/{family}.cu was not embedded")))?;
        let cname = CString::new(name).unwrap();
        // SAFETY: the module is loaded and never unloaded.
        let f = unsafe { result::module::get_function(module.0, cname) }.map_err(derr(name))?;
        let f = Func(f);
        funcs.insert(name, f);
        Ok(f)
    }

    fn launch(
        &self,
        family: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.func(family, name)?;
        // The launching thread needs the context current (cheap when it already is); do not rely on
        // an earlier allocation in the same call having bound it.
        self.bind()?;
        // SAFETY: the argument list matches the kernel's signature (each call site mirrors its
        // kernels/*.cu declaration), and every pointer argument is a live buffer of this backend.
        unsafe { result::launch_kernel(f.0, grid, block, 0, self.stream.cu_stream(), args) }
            .map_err(derr(name))
    }

    /// A 1-d grid-stride launch over `n` items.
    fn launch1(
        &self,
        family: &'static str,
        name: &'static str,
        n: usize,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.launch(
            family,
            name,
            (grid_for(n, self.sm_count), 1, 1),
            (BLOCK, 1, 1),
            args,
        )
    }

    /// An uninitialised buffer of `len` floats.
    fn alloc(&self, len: usize) -> Result<Arc<CudaBuffer>> {
        i32_of(len, "buffer")?;
        if len == 0 {
            return Ok(Arc::new(CudaBuffer {
                ptr: 0,
                len: 0,
                class: 0,
                pool: self.pool,
            }));
        }
        self.bind()?;
        let (ptr, class) = self.pool.lock().unwrap().alloc(len * 4).map_err(|e| {
            Error::Device(format!(
                "cuda: out of device memory allocating {} bytes: {e:?}",
                len * 4
            ))
        })?;
        Ok(Arc::new(CudaBuffer {
            ptr,
            len,
            class,
            pool: self.pool,
        }))
    }

    fn zeros(&self, len: usize) -> Result<Arc<CudaBuffer>> {
        let b = self.alloc(len)?;
        if len > 0 {
            // SAFETY: the block holds len·4 bytes.
            unsafe { result::memset_d8_async(b.ptr, 0, len * 4, self.stream.cu_stream()) }
                .map_err(derr("memset"))?;
        }
        Ok(b)
    }

    fn upload_u32(&self, v: &[u32]) -> Result<Arc<CudaBuffer>> {
        self.upload(bytemuck::cast_slice::<u32, f32>(v))
    }

    fn upload(&self, data: &[f32]) -> Result<Arc<CudaBuffer>> {
        let b = self.alloc(data.len())?;
        if !data.is_empty() {
            // SAFETY: the block holds the data; a pageable source is staged before the call returns.
            unsafe { result::memcpy_htod_async(b.ptr, data, self.stream.cu_stream()) }
                .map_err(derr("copy to device"))?;
        }
        Ok(b)
    }

    fn dtod(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        if len == 0 || dst == src {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both blocks hold at least len floats.
        unsafe { result::memcpy_dtod_async(dst, src, len * 4, self.stream.cu_stream()) }
            .map_err(derr("device copy"))
    }

    /// Batched C = op(A)·op(B) into an existing buffer (see kernels/gemm.cu).
    fn gemm_into(&self, c: u64, a: u64, b: u64, g: MatmulGeom) -> Result<()> {
        let MatmulGeom {
            batch,
            m,
            k,
            n,
            trans_a,
            trans_b,
        } = g;
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // SAFETY: C holds batch·m·n floats.
            return unsafe {
                result::memset_d8_async(c, 0, batch * m * n * 4, self.stream.cu_stream())
            }
            .map_err(derr("memset"));
        }
        i32_of(batch * m * k, "matmul lhs")?;
        i32_of(batch * k * n, "matmul rhs")?;
        i32_of(batch * m * n, "matmul output")?;
        let (mi, ni, ki, ta, tb) = (m as i32, n as i32, k as i32, trans_a as i32, trans_b as i32);
        let tiles = gemm_tiles(m, n)
            .ok_or_else(|| Error::Device(format!("cuda: matmul of {m}×{n} has too many tiles")))?;
        let mut b0 = 0;
        while b0 < batch {
            let nb = (batch - b0).min(65535);
            let (cp, ap, bp) = (
                c + (b0 * m * n * 4) as u64,
                a + (b0 * m * k * 4) as u64,
                b + (b0 * k * n * 4) as u64,
            );
            self.launch(
                "gemm",
                "gemm_batched",
                (tiles, 1, nb as u32),
                (256, 1, 1),
                kargs![cp, ap, bp, mi, ni, ki, ta, tb],
            )?;
            b0 += nb;
        }
        Ok(())
    }

    // --- optimiser updates (fused; used by the trainer on CUDA tensors) ------------------------------

    /// SGD with momentum, in place on w and the momentum buffer (PyTorch's rule, see kernels/optimizer.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        momentum_buf: &dyn BackendBuffer,
        lr: f32,
        momentum: f32,
        dampening: f32,
        weight_decay: f32,
        nesterov: bool,
        first: bool,
    ) -> Result<()> {
        let n = i32_of(w.len(), "parameter")?;
        if n == 0 {
            return Ok(());
        }
        self.launch1(
            "optimizer",
            "opt_sgd",
            w.len(),
            kargs![
                ptr(w)?,
                ptr(grad)?,
                ptr(momentum_buf)?,
                n,
                lr,
                momentum,
                dampening,
                weight_decay,
                nesterov as i32,
                first as i32
            ],
        )
    }

    /// AdamW, in place on w and the moment buffers, as `crate::optim::AdamW` does it: `lr` already
    /// scaled by the group, `betas` in f64 like `AdamWConfig::betas` (the bias corrections 1 − βᵗ are
    /// computed in f64: with f32 betas 1 − β₂ᵗ is off by ~1e-5 relative early on), `step` counts from 1.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        m: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        lr: f32,
        betas: (f64, f64),
        eps: f32,
        weight_decay: f32,
        step: u64,
    ) -> Result<()> {
        let n = i32_of(w.len(), "parameter")?;
        if n == 0 {
            return Ok(());
        }
        let c = AdamWCoeffs::new(lr, betas, eps, weight_decay, step);
        self.launch1(
            "optimizer",
            "opt_adamw",
            w.len(),
            kargs![
                ptr(w)?,
                ptr(grad)?,
                ptr(m)?,
                ptr(v)?,
                n,
                c.a1,
                c.b1,
                c.a2,
                c.b2,
                c.inv_sqrt_bc2,
                c.eps,
                c.neg_step,
                c.decay
            ],
        )
    }

    fn channel_reduce(&self, x: u64, g: AxisGeom) -> Result<Arc<CudaBuffer>> {
        let out = self.alloc(g.axis)?;
        if g.axis == 0 {
            return Ok(out);
        }
        let count = g.outer * g.inner;
        if count == 0 {
            return self.zeros(g.axis);
        }
        let s = channel_splits(g.axis, count, self.sm_count);
        let ws = self.alloc(2 * g.axis * s as usize)?;
        let (o, a, i) = (g.outer as i32, g.axis as i32, g.inner as i32);
        self.launch(
            "reduce",
            "red_channel_sum_partial",
            (g.axis as u32, s, 1),
            (BLOCK, 1, 1),
            kargs![x, o, a, i, ws.ptr],
        )?;
        self.launch1(
            "reduce",
            "red_channel_sum_final",
            g.axis,
            kargs![ws.ptr, a, s as i32, out.ptr],
        )?;
        Ok(out)
    }

    fn conv_gemm_launch(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<()> {
        if grid.1 > 65535 || grid.2 > 65535 {
            return Err(Error::Device(format!(
                "cuda: {name}: grid {grid:?} too large"
            )));
        }
        self.launch("conv", name, grid, (256, 1, 1), args)
    }
}

/// The scalar coefficients of one AdamW step (kernels/optimizer.cu `opt_adamw`), computed exactly as
/// `crate::optim::AdamW::step` computes them (f64, then rounded to f32 once), so that the fused kernel
/// reproduces the CPU optimiser's chain of elementwise ops bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWCoeffs {
    /// 1 − β₁ and β₁: m = a1·g + b1·m.
    pub a1: f32,
    pub b1: f32,
    /// 1 − β₂ and β₂: v = a2·g² + b2·v.
    pub a2: f32,
    pub b2: f32,
    /// 1/√(1 − β₂ᵗ): denom = √v·inv_sqrt_bc2 + eps.
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    /// −lr/(1 − β₁ᵗ) and 1 − lr·wd: w = neg_step·(m/denom) + decay·w.
    pub neg_step: f32,
    pub decay: f32,
}

impl AdamWCoeffs {
    pub fn new(lr: f32, (b1, b2): (f64, f64), eps: f32, weight_decay: f32, step: u64) -> Self {
        let (lr, wd, t) = (lr as f64, weight_decay as f64, step as f64);
        let bias_correction1 = 1.0 - b1.powf(t);
        let bias_correction2 = 1.0 - b2.powf(t);
        AdamWCoeffs {
            a1: (1.0 - b1) as f32,
            b1: b1 as f32,
            a2: (1.0 - b2) as f32,
            b2: b2 as f32,
            inv_sqrt_bc2: (1.0 / bias_correction2.sqrt()) as f32,
            eps,
            neg_step: (-(lr / bias_correction1)) as f32,
            decay: (1.0 - lr * wd) as f32,
        }
    }
}

fn is_depthwise(g: &ConvGeom) -> bool {
    g.groups == g.c_in && g.groups > 1
}

/// Fewer splits (longer, still multiples of 16) until groups·splits fits gridDim.z and the workspace
/// [splits, wlen] fits the 32-bit index limit. Stops at one split: with more than 65535 groups the
/// launch itself reports the grid as too large (this loop used to spin forever there).
fn wgrad_split_limits(
    (mut splits, mut per): (usize, usize),
    red: usize,
    groups: usize,
    wlen: usize,
) -> (usize, usize) {
    while splits > 1 && (splits * groups > 65535 || splits * wlen > MAX_ELEMENTS) {
        per *= 2;
        splits = red.div_ceil(per);
    }
    (splits, per)
}

fn out(b: Arc<CudaBuffer>) -> BufferRef {
    b
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        format!("cuda:{}", self.ordinal)
    }
    fn memory_in_use(&self) -> usize {
        self.pool.lock().unwrap().stats().in_use
    }
    fn memory_peak(&self) -> usize {
        self.pool.lock().unwrap().stats().peak
    }
    fn reset_memory_peak(&self) {
        self.pool.lock().unwrap().reset_peak();
    }

    fn from_host(&self, data: &[f32]) -> Result<BufferRef> {
        Ok(out(self.upload(data)?))
    }
    fn to_host(&self, x: &dyn BackendBuffer) -> Result<Vec<f32>> {
        let b = cuda_buf(x)?;
        let mut v = vec![0.0f32; b.len];
        if b.len > 0 {
            self.bind()?;
            // SAFETY: the block holds len floats; the stream is synchronised before v is read.
            unsafe { result::memcpy_dtoh_async(&mut v, b.ptr, self.stream.cu_stream()) }
                .map_err(derr("copy to host"))?;
            self.stream.synchronize().map_err(derr("synchronize"))?;
        }
        Ok(v)
    }
    fn full(&self, len: usize, value: f32) -> Result<BufferRef> {
        if value == 0.0 && value.is_sign_positive() {
            return Ok(out(self.zeros(len)?));
        }
        let b = self.alloc(len)?;
        if len > 0 {
            self.launch1(
                "elementwise",
                "ew_fill",
                len,
                kargs![b.ptr, len as i32, value],
            )?;
        }
        Ok(out(b))
    }
    fn copy(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        let b = self.alloc(x.len())?;
        self.dtod(b.ptr, ptr(x)?, x.len())?;
        Ok(out(b))
    }
    fn copy_into(&self, dst: &dyn BackendBuffer, src: &dyn BackendBuffer) -> Result<()> {
        self.bind()?;
        self.dtod(ptr(dst)?, ptr(src)?, dst.len().min(src.len()))
    }

    fn unary(&self, x: &dyn BackendBuffer, op: UnaryOp) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(n)?;
        if n > 0 {
            let (code, s) = match op {
                UnaryOp::Relu => (0i32, 0.0f32),
                UnaryOp::Scale(s) => (1, s),
                UnaryOp::AddScalar(s) => (2, s),
                UnaryOp::Sqrt => (3, 0.0),
            };
            self.launch1(
                "elementwise",
                "ew_unary",
                n.div_ceil(4),
                kargs![y.ptr, ptr(x)?, n as i32, code, s],
            )?;
        }
        Ok(out(y))
    }
    fn binary(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        op: BinaryOp,
    ) -> Result<BufferRef> {
        let n = a.len();
        let y = self.alloc(n)?;
        if n > 0 {
            let code = match op {
                BinaryOp::Add => 0i32,
                BinaryOp::Sub => 1,
                BinaryOp::Mul => 2,
                BinaryOp::Div => 3,
            };
            self.launch1(
                "elementwise",
                "ew_binary",
                n.div_ceil(4),
                kargs![y.ptr, ptr(a)?, ptr(b)?, n as i32, code],
            )?;
        }
        Ok(out(y))
    }
    fn relu_backward(&self, y: &dyn BackendBuffer, dy: &dyn BackendBuffer) -> Result<BufferRef> {
        let n = y.len();
        let dx = self.alloc(n)?;
        if n > 0 {
            self.launch1(
                "elementwise",
                "ew_relu_backward",
                n.div_ceil(4),
                kargs![dx.ptr, ptr(y)?, ptr(dy)?, n as i32],
            )?;
        }
        Ok(out(dx))
    }
    fn axpby(&self, y: &dyn BackendBuffer, a: f32, x: &dyn BackendBuffer, b: f32) -> Result<()> {
        let n = y.len();
        if n > 0 {
            self.bind()?;
            i32_of(n, "axpby")?;
            self.launch1(
                "elementwise",
                "ew_axpby",
                n.div_ceil(4),
                kargs![ptr(y)?, a, ptr(x)?, b, n as i32],
            )?;
        }
        Ok(())
    }
    fn sum_all(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(1)?;
        let grid = grid_for(n.div_ceil(4), self.sm_count).min(1024);
        // [counter, pad, grid doubles], counter zeroed.
        let ws = self.zeros(2 + 2 * grid as usize)?;
        self.launch(
            "reduce",
            "red_sum_all",
            (grid, 1, 1),
            (BLOCK, 1, 1),
            kargs![ptr(x)?, n as i32, ws.ptr, y.ptr],
        )?;
        Ok(out(y))
    }
    fn broadcast_scalar(&self, s: &dyn BackendBuffer, len: usize, scale: f32) -> Result<BufferRef> {
        let y = self.alloc(len)?;
        if len > 0 {
            self.launch1(
                "elementwise",
                "ew_broadcast_scalar",
                len,
                kargs![y.ptr, ptr(s)?, len as i32, scale],
            )?;
        }
        Ok(out(y))
    }
    fn sum_to_axis(&self, x: &dyn BackendBuffer, g: AxisGeom) -> Result<BufferRef> {
        Ok(out(self.channel_reduce(ptr(x)?, g)?))
    }
    fn add_axis_bias(
        &self,
        x: &dyn BackendBuffer,
        bias: &dyn BackendBuffer,
        g: AxisGeom,
    ) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(n)?;
        if n > 0 {
            self.launch1(
                "elementwise",
                "ew_add_axis_bias",
                n,
                kargs![
                    y.ptr,
                    ptr(x)?,
                    ptr(bias)?,
                    n as i32,
                    g.axis as i32,
                    g.inner as i32
                ],
            )?;
        }
        Ok(out(y))
    }

    fn dropout(&self, x: &dyn BackendBuffer, p: f32, seed: u64) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(n)?;
        if n > 0 {
            let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
            self.launch1(
                "elementwise",
                "ew_dropout",
                n,
                kargs![y.ptr, ptr(x)?, n as i32, p, scale, seed],
            )?;
        }
        Ok(out(y))
    }

    fn conv_forward(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        let mut p = ConvP::new(g)?;
        let len = g.n * g.c_out * g.output_volume();
        let y = self.alloc(len)?;
        if len == 0 {
            return Ok(out(y));
        }
        let (xp, wp, bp) = (ptr(x)?, ptr(w)?, opt_ptr(bias)?);
        if is_depthwise(g) {
            self.launch1("conv", "conv_dw_fprop", len, kargs![y.ptr, xp, wp, bp, p])?;
            return Ok(out(y));
        }
        p.m = p.cout_g;
        p.n_gemm = p.n * p.out_vol;
        p.k_gemm = p.cin_g * p.kvol;
        let name = if p.k_gemm % 4 == 0 {
            "conv_fprop_vec"
        } else {
            "conv_fprop"
        };
        let grid = (
            blocks(p.n_gemm as usize, 64),
            blocks(p.m as usize, 64),
            g.groups as u32,
        );
        self.conv_gemm_launch(name, grid, kargs![y.ptr, xp, wp, bp, p])?;
        Ok(out(y))
    }
    fn conv_backward_data(
        &self,
        dy: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        let mut p = ConvP::new(g)?;
        let len = g.n * g.c_in * g.input_volume();
        if len == 0 || g.output_volume() == 0 {
            return Ok(out(self.zeros(len)?));
        }
        let dx = self.alloc(len)?;
        let (dyp, wp) = (ptr(dy)?, ptr(w)?);
        if is_depthwise(g) {
            self.launch1("conv", "conv_dw_dgrad", len, kargs![dx.ptr, dyp, wp, p])?;
            return Ok(out(dx));
        }
        p.m = p.cin_g;
        p.n_gemm = p.n * p.in_vol;
        p.k_gemm = p.cout_g * p.kvol;
        let grid = (
            blocks(p.n_gemm as usize, 64),
            blocks(p.m as usize, 64),
            g.groups as u32,
        );
        self.conv_gemm_launch("conv_dgrad", grid, kargs![dx.ptr, dyp, wp, p])?;
        Ok(out(dx))
    }
    fn conv_backward_weight(
        &self,
        x: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        let mut p = ConvP::new(g)?;
        let wlen = g.c_out * g.in_per_group() * g.kernel_volume();
        let red = g.n * g.output_volume();
        if wlen == 0 || red == 0 {
            return Ok(out(self.zeros(wlen)?));
        }
        let (xp, dyp) = (ptr(x)?, ptr(dy)?);
        if is_depthwise(g) {
            let dw = self.alloc(wlen)?;
            self.launch(
                "conv",
                "conv_dw_wgrad",
                (wlen as u32, 1, 1),
                (BLOCK, 1, 1),
                kargs![dw.ptr, xp, dyp, p],
            )?;
            return Ok(out(dw));
        }
        p.m = p.cout_g;
        p.n_gemm = p.cin_g * p.kvol;
        p.k_gemm = red as i32;
        let tiles =
            blocks(p.n_gemm as usize, 64) as usize * blocks(p.m as usize, 64) as usize * g.groups;
        let (splits, per) =
            wgrad_split_limits(wgrad_splits(tiles, red, self.sm_count), red, g.groups, wlen);
        p.splits = splits as i32;
        p.k_per_split = per as i32;
        let name = if p.out_vol % 4 == 0 {
            "conv_wgrad_vec"
        } else {
            "conv_wgrad"
        };
        let grid = (
            blocks(p.n_gemm as usize, 64),
            blocks(p.m as usize, 64),
            (splits * g.groups) as u32,
        );
        let dw = self.alloc(wlen)?;
        if splits == 1 {
            self.conv_gemm_launch(name, grid, kargs![dw.ptr, xp, dyp, p])?;
        } else {
            let ws = self.alloc(splits * wlen)?;
            self.conv_gemm_launch(name, grid, kargs![ws.ptr, xp, dyp, p])?;
            self.launch1(
                "conv",
                "conv_wgrad_reduce",
                wlen,
                kargs![dw.ptr, ws.ptr, wlen as i32, splits as i32],
            )?;
        }
        Ok(out(dw))
    }

    fn batch_norm_train(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        eps: f32,
    ) -> Result<(BufferRef, BnStats)> {
        let n = x.len();
        let (mean, var) = (self.alloc(g.axis)?, self.alloc(g.axis)?);
        let y = self.alloc(n)?;
        if g.axis == 0 {
            return Ok((
                out(y),
                BnStats {
                    mean: out(mean),
                    var: out(var),
                },
            ));
        }
        let count = g.outer * g.inner;
        let s = channel_splits(g.axis, count, self.sm_count);
        let ws = self.alloc(3 * g.axis * s as usize)?;
        let (o, a, i) = (g.outer as i32, g.axis as i32, g.inner as i32);
        let xp = ptr(x)?;
        self.launch(
            "batchnorm",
            "bn_stats_partial",
            (g.axis as u32, s, 1),
            (BLOCK, 1, 1),
            kargs![xp, o, a, i, ws.ptr],
        )?;
        self.launch1(
            "batchnorm",
            "bn_stats_final",
            g.axis,
            kargs![ws.ptr, a, s as i32, mean.ptr, var.ptr],
        )?;
        if n > 0 {
            let (wp, bp) = (opt_ptr(weight)?, opt_ptr(bias)?);
            self.launch1(
                "batchnorm",
                "bn_forward",
                n,
                kargs![y.ptr, xp, wp, bp, mean.ptr, var.ptr, n as i32, a, i, eps, 0i32],
            )?;
        }
        Ok((
            out(y),
            BnStats {
                mean: out(mean),
                var: out(var),
            },
        ))
    }
    fn batch_norm_eval(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
    ) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(n)?;
        if n > 0 {
            let (wp, bp) = (opt_ptr(weight)?, opt_ptr(bias)?);
            self.launch1(
                "batchnorm",
                "bn_forward",
                n,
                kargs![
                    y.ptr,
                    ptr(x)?,
                    wp,
                    bp,
                    ptr(mean)?,
                    ptr(var)?,
                    n as i32,
                    g.axis as i32,
                    g.inner as i32,
                    eps,
                    0i32
                ],
            )?;
        }
        Ok(out(y))
    }
    fn batch_norm_backward(
        &self,
        dy: &dyn BackendBuffer,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
        batch_stats: bool,
    ) -> Result<BnGrads> {
        let n = x.len();
        let (dw, db) = (self.zeros(g.axis)?, self.zeros(g.axis)?);
        let dx = self.alloc(n)?;
        let count = g.outer * g.inner;
        if g.axis > 0 && count > 0 {
            let s = channel_splits(g.axis, count, self.sm_count);
            let ws = self.alloc(4 * g.axis * s as usize)?;
            let (o, a, i) = (g.outer as i32, g.axis as i32, g.inner as i32);
            let (dyp, xp, mp, vp) = (ptr(dy)?, ptr(x)?, ptr(mean)?, ptr(var)?);
            self.launch(
                "batchnorm",
                "bn_backward_partial",
                (g.axis as u32, s, 1),
                (BLOCK, 1, 1),
                kargs![dyp, xp, mp, o, a, i, ws.ptr],
            )?;
            self.launch1(
                "batchnorm",
                "bn_backward_final",
                g.axis,
                kargs![ws.ptr, vp, a, s as i32, eps, dw.ptr, db.ptr],
            )?;
            self.launch1(
                "batchnorm",
                "bn_backward_dx",
                n,
                kargs![
                    dx.ptr,
                    dyp,
                    xp,
                    opt_ptr(weight)?,
                    mp,
                    vp,
                    dw.ptr,
                    db.ptr,
                    n as i32,
                    a,
                    i,
                    eps,
                    count as f32,
                    batch_stats as i32
                ],
            )?;
        }
        Ok(BnGrads {
            dx: out(dx),
            dweight: out(dw),
            dbias: out(db),
        })
    }

    fn max_pool_forward(&self, x: &dyn BackendBuffer, g: &PoolGeom) -> Result<BufferRef> {
        let len = g.planes * g.output.iter().product::<usize>();
        if g.input.iter().product::<usize>() == 0 {
            // The CPU backend's answer (its output is zero-filled); was left uninitialised.
            return Ok(out(self.zeros(len)?));
        }
        let y = self.alloc(len)?;
        if len > 0 {
            let p = pool_p(g, true);
            self.launch1("pool", "pool_max_forward", len, kargs![y.ptr, ptr(x)?, p])?;
        }
        Ok(out(y))
    }
    fn max_pool_backward(
        &self,
        x: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<BufferRef> {
        let len = g.planes * g.input.iter().product::<usize>();
        let dx = self.zeros(len)?;
        let olen = g.planes * g.output.iter().product::<usize>();
        if len > 0 && olen > 0 {
            let p = pool_p(g, true);
            self.launch1(
                "pool",
                "pool_max_backward",
                olen,
                kargs![dx.ptr, ptr(x)?, ptr(dy)?, p],
            )?;
        }
        Ok(out(dx))
    }
    fn avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef> {
        let len = g.planes * g.output.iter().product::<usize>();
        if g.input.iter().product::<usize>() == 0 {
            return Ok(out(self.zeros(len)?));
        }
        let y = self.alloc(len)?;
        if len > 0 {
            let p = pool_p(g, count_include_pad);
            self.launch1("pool", "pool_avg_forward", len, kargs![y.ptr, ptr(x)?, p])?;
        }
        Ok(out(y))
    }
    fn avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef> {
        let len = g.planes * g.input.iter().product::<usize>();
        if g.output.iter().product::<usize>() == 0 {
            return Ok(out(self.zeros(len)?));
        }
        let dx = self.alloc(len)?;
        if len > 0 {
            let p = pool_p(g, count_include_pad);
            self.launch1(
                "pool",
                "pool_avg_backward",
                len,
                kargs![dx.ptr, ptr(dy)?, p],
            )?;
        }
        Ok(out(dx))
    }
    fn adaptive_avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        let len = g.planes * g.output.iter().product::<usize>();
        if g.input.iter().product::<usize>() == 0 {
            return Ok(out(self.zeros(len)?));
        }
        let y = self.alloc(len)?;
        if len > 0 {
            let p = AdaptP {
                planes: g.planes as i32,
                input: a3(g.input),
                output: a3(g.output),
            };
            self.launch1(
                "pool",
                "pool_adaptive_forward",
                len,
                kargs![y.ptr, ptr(x)?, p],
            )?;
        }
        Ok(out(y))
    }
    fn adaptive_avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        let len = g.planes * g.input.iter().product::<usize>();
        if g.output.iter().product::<usize>() == 0 {
            return Ok(out(self.zeros(len)?));
        }
        let dx = self.alloc(len)?;
        if len > 0 {
            let p = AdaptP {
                planes: g.planes as i32,
                input: a3(g.input),
                output: a3(g.output),
            };
            self.launch1(
                "pool",
                "pool_adaptive_backward",
                len,
                kargs![dx.ptr, ptr(dy)?, p],
            )?;
        }
        Ok(out(dx))
    }

    fn upsample_trilinear_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        let len = g.planes * g.output.iter().product::<usize>();
        if g.input.iter().product::<usize>() == 0 {
            return Ok(out(self.zeros(len)?));
        }
        let y = self.alloc(len)?;
        if len > 0 {
            let p = up_p(g);
            self.launch1(
                "upsample",
                "upsample_forward",
                len,
                kargs![y.ptr, ptr(x)?, p],
            )?;
        }
        Ok(out(y))
    }
    fn upsample_trilinear_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        let len = g.planes * g.input.iter().product::<usize>();
        let dx = self.zeros(len)?;
        let olen = g.planes * g.output.iter().product::<usize>();
        if len > 0 && olen > 0 {
            let p = up_p(g);
            self.launch1(
                "upsample",
                "upsample_backward",
                olen,
                kargs![dx.ptr, ptr(dy)?, p],
            )?;
        }
        Ok(out(dx))
    }

    fn softmax_forward(&self, x: &dyn BackendBuffer, g: AxisGeom, log: bool) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(n)?;
        if n > 0 {
            let xp = ptr(x)?;
            if g.inner == 1 {
                self.launch1(
                    "softmax",
                    "softmax_rows_forward",
                    g.outer * 32,
                    kargs![y.ptr, xp, g.outer as i32, g.axis as i32, log as i32],
                )?;
            } else {
                self.launch1(
                    "softmax",
                    "softmax_cols_forward",
                    g.outer * g.inner,
                    kargs![
                        y.ptr,
                        xp,
                        g.outer as i32,
                        g.axis as i32,
                        g.inner as i32,
                        log as i32
                    ],
                )?;
            }
        }
        Ok(out(y))
    }
    fn softmax_backward(
        &self,
        y: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AxisGeom,
        log: bool,
    ) -> Result<BufferRef> {
        let n = y.len();
        let dx = self.alloc(n)?;
        if n > 0 {
            let (yp, dyp) = (ptr(y)?, ptr(dy)?);
            if g.inner == 1 {
                self.launch1(
                    "softmax",
                    "softmax_rows_backward",
                    g.outer * 32,
                    kargs![dx.ptr, yp, dyp, g.outer as i32, g.axis as i32, log as i32],
                )?;
            } else {
                self.launch1(
                    "softmax",
                    "softmax_cols_backward",
                    g.outer * g.inner,
                    kargs![
                        dx.ptr,
                        yp,
                        dyp,
                        g.outer as i32,
                        g.axis as i32,
                        g.inner as i32,
                        log as i32
                    ],
                )?;
            }
        }
        Ok(out(dx))
    }
    fn cross_entropy_forward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
    ) -> Result<BufferRef> {
        let y = self.alloc(1)?;
        let lab = self.upload_u32(labels)?;
        self.launch(
            "loss",
            "ce_forward",
            (1, 1, 1),
            (256, 1, 1),
            kargs![
                y.ptr,
                ptr(logits)?,
                lab.ptr,
                labels.len() as i32,
                classes as i32,
                smoothing
            ],
        )?;
        Ok(out(y))
    }
    fn cross_entropy_backward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
        dloss: &dyn BackendBuffer,
    ) -> Result<BufferRef> {
        let d = self.alloc(logits.len())?;
        if !labels.is_empty() && classes > 0 {
            let lab = self.upload_u32(labels)?;
            self.launch1(
                "loss",
                "ce_backward",
                labels.len() * 32,
                kargs![
                    d.ptr,
                    ptr(logits)?,
                    lab.ptr,
                    ptr(dloss)?,
                    labels.len() as i32,
                    classes as i32,
                    smoothing
                ],
            )?;
        }
        Ok(out(d))
    }

    fn matmul(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        g: MatmulGeom,
    ) -> Result<BufferRef> {
        let c = self.alloc(g.batch * g.m * g.n)?;
        self.gemm_into(c.ptr, ptr(a)?, ptr(b)?, g)?;
        Ok(out(c))
    }
    fn attention_forward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        i32_of(g.batch * g.c * g.n.max(g.m), "attention input")?;
        i32_of(g.batch * g.cv * g.n.max(g.m), "attention values")?;
        if g.m == 0 && g.batch * g.n > 0 {
            // A softmax over no keys (the ops reject it; the CPU backend cannot take it either).
            return Err(Error::Device("cuda: attention over zero keys".into()));
        }
        let y = self.alloc(g.batch * g.cv * g.n)?;
        let lse = self.alloc(g.batch * g.n)?;
        // cv == 0 still launches (one column tile, every y store masked): lse must be written.
        if g.batch > 0 && g.n > 0 && g.m > 0 {
            if g.batch > 65535 || g.cv.div_ceil(64) > 65535 {
                return Err(Error::Device("cuda: attention grid too large".into()));
            }
            self.launch(
                "attention",
                "attn_forward",
                (blocks(g.n, 64), blocks(g.cv, 64), g.batch as u32),
                (256, 1, 1),
                kargs![
                    y.ptr,
                    lse.ptr,
                    ptr(q)?,
                    ptr(k)?,
                    ptr(v)?,
                    g.c as i32,
                    g.cv as i32,
                    g.n as i32,
                    g.m as i32,
                    g.scale
                ],
            )?;
        }
        Ok((out(y), out(lse)))
    }
    fn attention_backward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        y: &dyn BackendBuffer,
        lse: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<AttentionGrads> {
        let (b, n, m, c, cv) = (g.batch, g.n, g.m, g.c, g.cv);
        let dq = self.zeros(b * c * n)?;
        let dk = self.zeros(b * c * m)?;
        let dv = self.zeros(b * cv * m)?;
        if b == 0 || n == 0 || m == 0 {
            return Ok(AttentionGrads {
                dq: out(dq),
                dk: out(dk),
                dv: out(dv),
            });
        }
        // The saved lse is not used: like the CPU backend, P is renormalised with each row's own max
        // and sum (exp(s − lse) with an f32 lse is off by a factor e^ulp(lse) when |s| is large).
        let _ = lse;
        let (qp, kp, vp, yp, dyp) = (ptr(q)?, ptr(k)?, ptr(v)?, ptr(y)?, ptr(dy)?);
        let rows = b * n;
        i32_of(rows * m, "attention scores")?;
        // P = softmax_m(scale·qᵀk)   [B, N, M]
        let p = self.alloc(rows * m)?;
        self.gemm_into(
            p.ptr,
            qp,
            kp,
            MatmulGeom {
                batch: b,
                m: n,
                k: c,
                n: m,
                trans_a: true,
                trans_b: false,
            },
        )?;
        self.launch1(
            "attention",
            "attn_probs",
            rows * 32,
            kargs![p.ptr, rows as i32, m as i32, g.scale],
        )?;
        // dv = dy·P                   [B, Cv, M]
        self.gemm_into(
            dv.ptr,
            dyp,
            p.ptr,
            MatmulGeom {
                batch: b,
                m: cv,
                k: n,
                n: m,
                trans_a: false,
                trans_b: false,
            },
        )?;
        // dP = dyᵀ·v                  [B, N, M], then dS in place
        let ds = self.alloc(rows * m)?;
        self.gemm_into(
            ds.ptr,
            dyp,
            vp,
            MatmulGeom {
                batch: b,
                m: n,
                k: cv,
                n: m,
                trans_a: true,
                trans_b: false,
            },
        )?;
        let d = self.alloc(rows)?;
        self.launch1(
            "attention",
            "attn_rowdot",
            rows,
            kargs![d.ptr, dyp, yp, b as i32, cv as i32, n as i32],
        )?;
        self.launch1(
            "attention",
            "attn_dscores",
            rows * m,
            kargs![ds.ptr, p.ptr, d.ptr, rows as i32, m as i32, g.scale],
        )?;
        // dq = k·dSᵀ, dk = q·dS
        self.gemm_into(
            dq.ptr,
            kp,
            ds.ptr,
            MatmulGeom {
                batch: b,
                m: c,
                k: m,
                n,
                trans_a: false,
                trans_b: true,
            },
        )?;
        self.gemm_into(
            dk.ptr,
            qp,
            ds.ptr,
            MatmulGeom {
                batch: b,
                m: c,
                k: n,
                n: m,
                trans_a: false,
                trans_b: false,
            },
        )?;
        Ok(AttentionGrads {
            dq: out(dq),
            dk: out(dk),
            dv: out(dv),
        })
    }

    fn permute(&self, x: &dyn BackendBuffer, shape: &[usize], perm: &[usize]) -> Result<BufferRef> {
        let n = x.len();
        let y = self.alloc(n)?;
        if n == 0 {
            return Ok(out(y));
        }
        let r = shape.len();
        if r > 6 {
            return Err(Error::Device(format!(
                "cuda: permute of rank {r} (at most 6)"
            )));
        }
        let xp = ptr(x)?;
        // The last two dims swapped, the rest in place: a tiled transpose.
        if r >= 2
            && perm[r - 2] == r - 1
            && perm[r - 1] == r - 2
            && (0..r - 2).all(|i| perm[i] == i)
        {
            let (rows, cols) = (shape[r - 2], shape[r - 1]);
            let batch = n / (rows * cols);
            if batch <= 65535 && rows.div_ceil(32) <= 65535 {
                self.launch(
                    "layout",
                    "layout_transpose",
                    (blocks(cols, 32), blocks(rows, 32), batch as u32),
                    (32, 8, 1),
                    kargs![y.ptr, xp, rows as i32, cols as i32],
                )?;
                return Ok(out(y));
            }
        }
        let mut in_strides = vec![1usize; r];
        for i in (0..r.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * shape[i + 1];
        }
        let mut p = PermP {
            rank: r as i32,
            ..Default::default()
        };
        for (i, &pi) in perm.iter().enumerate() {
            p.out_shape[i] = shape[pi] as i32;
            p.src_stride[i] = in_strides[pi] as i32;
        }
        self.launch1(
            "layout",
            "layout_permute",
            n,
            kargs![y.ptr, xp, n as i32, p],
        )?;
        Ok(out(y))
    }
    fn concat(
        &self,
        xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Result<BufferRef> {
        let total: usize = inners.iter().sum();
        let y = self.alloc(outer * total)?;
        let mut off = 0;
        for (x, &inner) in xs.iter().zip(inners) {
            if inner > 0 && outer > 0 {
                self.launch1(
                    "layout",
                    "layout_copy2d",
                    outer * inner,
                    kargs![
                        y.ptr,
                        total as i32,
                        off as i32,
                        ptr(*x)?,
                        inner as i32,
                        0i32,
                        outer as i32,
                        inner as i32
                    ],
                )?;
            }
            off += inner;
        }
        Ok(out(y))
    }
    fn split(
        &self,
        x: &dyn BackendBuffer,
        outer: usize,
        inners: &[usize],
    ) -> Result<Vec<BufferRef>> {
        let total: usize = inners.iter().sum();
        let xp = ptr(x)?;
        let mut off = 0;
        let mut parts = Vec::with_capacity(inners.len());
        for &inner in inners {
            let part = self.alloc(outer * inner)?;
            if inner > 0 && outer > 0 {
                self.launch1(
                    "layout",
                    "layout_copy2d",
                    outer * inner,
                    kargs![
                        part.ptr,
                        inner as i32,
                        0i32,
                        xp,
                        total as i32,
                        off as i32,
                        outer as i32,
                        inner as i32
                    ],
                )?;
            }
            off += inner;
            parts.push(out(part));
        }
        Ok(parts)
    }
}

fn pool_p(g: &PoolGeom, include_pad: bool) -> PoolP {
    PoolP {
        planes: g.planes as i32,
        input: a3(g.input),
        output: a3(g.output),
        k: a3(g.kernel),
        s: a3(g.stride),
        p: a3(g.padding),
        include_pad: include_pad as i32,
    }
}

fn up_p(g: &UpsampleGeom) -> UpP {
    UpP {
        planes: g.planes as i32,
        input: a3(g.input),
        output: a3(g.output),
        scale: std::array::from_fn(|i| upsample_scale(g.input[i], g.output[i], g.align_corners)),
        align: g.align_corners as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_structs_have_c_layout() {
        // Sizes of the kernels' by-value parameter structs (all 4-byte fields, no padding).
        assert_eq!(std::mem::size_of::<ConvP>(), (5 + 18 + 3 + 5) * 4);
        assert_eq!(std::mem::size_of::<PoolP>(), (1 + 15 + 1) * 4);
        assert_eq!(std::mem::size_of::<AdaptP>(), 7 * 4);
        assert_eq!(std::mem::size_of::<UpP>(), (1 + 6 + 3 + 1) * 4);
        assert_eq!(std::mem::size_of::<PermP>(), 13 * 4);
    }

    #[test]
    fn element_limit_leaves_grid_stride_headroom() {
        assert_eq!(i32_of(0, "x").unwrap(), 0);
        assert_eq!(i32_of(MAX_ELEMENTS, "x").unwrap() as usize, MAX_ELEMENTS);
        let e = i32_of(MAX_ELEMENTS + 1, "conv input")
            .unwrap_err()
            .to_string();
        assert!(e.contains("conv input") && e.contains("at most"), "{e}");
        // Formerly accepted (< 2^31) but a grid-stride loop's i + stride would overflow.
        assert!(i32_of(i32::MAX as usize, "x").is_err());
        let g = ConvGeom {
            n: 1 << 12,
            c_in: 1 << 10,
            c_out: 1,
            groups: 1,
            input: [1, 1, 512],
            output: [1, 1, 512],
            kernel: [1; 3],
            stride: [1; 3],
            padding: [0; 3],
            dilation: [1; 3],
        };
        assert!(ConvP::new(&g).is_err());
    }

    #[test]
    fn wgrad_split_limits_terminate_and_respect_grid_and_workspace() {
        // More than 65535 groups: nothing can make groups·splits fit; stop at one split (the launch
        // then reports the grid) rather than loop forever as before.
        let (s, per) = wgrad_split_limits((8, 64), 500, 70_000, 70_000 * 9);
        assert_eq!(s, 1);
        assert!(per >= 500 && per % 16 == 0);
        // groups·splits must fit gridDim.z.
        let (s, per) = wgrad_split_limits((1024, 16), 16 * 1024, 100, 100 * 27);
        assert!(s * 100 <= 65535 && s * per >= 16 * 1024 && (s - 1) * per < 16 * 1024);
        assert_eq!(per % 16, 0);
        // The workspace [splits, wlen] must fit the index limit.
        let wlen = 1 << 28;
        let (s, _) = wgrad_split_limits((64, 256), 64 * 256, 1, wlen);
        assert!(s * wlen <= MAX_ELEMENTS, "{s}");
        // Already fine: unchanged.
        assert_eq!(wgrad_split_limits((12, 512), 6000, 2, 1000), (12, 512));
    }

    /// The `opt_adamw` kernel's arithmetic, on the host (Rust does not contract a·b + c into an FMA,
    /// so this is the kernel's __fmul_rn/__fadd_rn chain).
    fn adamw_kernel(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: AdamWCoeffs) {
        for i in 0..w.len() {
            m[i] = c.a1 * g[i] + c.b1 * m[i];
            v[i] = c.a2 * (g[i] * g[i]) + c.b2 * v[i];
            let denom = v[i].sqrt() * c.inv_sqrt_bc2 + c.eps;
            w[i] = c.neg_step * (m[i] / denom) + c.decay * w[i];
        }
    }

    /// The `opt_sgd` kernel's arithmetic, on the host.
    #[allow(clippy::too_many_arguments)]
    fn sgd_kernel(
        w: &mut [f32],
        g: &[f32],
        buf: &mut [f32],
        lr: f32,
        momentum: f32,
        dampening: f32,
        wd: f32,
        nesterov: bool,
        first: bool,
    ) {
        for i in 0..w.len() {
            let mut d = if wd != 0.0 { wd * w[i] + g[i] } else { g[i] };
            if momentum != 0.0 {
                let b = if first {
                    d
                } else {
                    (1.0 - dampening) * d + momentum * buf[i]
                };
                buf[i] = b;
                d = if nesterov { momentum * b + d } else { b };
            }
            w[i] += -lr * d;
        }
    }

    /// Grad of sum(p ⊙ g) is g exactly.
    fn set_grad(p: &crate::Tensor, g: &[f32]) {
        let gt = crate::Tensor::from_slice(g, p.shape(), crate::Device::Cpu).unwrap();
        p.zero_grad();
        p.mul(&gt).unwrap().sum().unwrap().backward().unwrap();
    }

    #[test]
    fn fused_adamw_coefficients_reproduce_the_cpu_optimizer_bit_for_bit() {
        use crate::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
        let init: Vec<f32> = (0..37).map(|i| crate::rng::normal(5, i)).collect();
        let p = crate::Tensor::from_slice(&init, &[37], crate::Device::Cpu)
            .unwrap()
            .with_grad();
        let cfg = AdamWConfig {
            lr: 3e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
        };
        let (wd, lr_scale) = (0.05f32, 0.5f32);
        let mut opt = AdamW::new(
            vec![ParamGroup::new(vec![("p".into(), p.clone())], wd).with_lr_scale(lr_scale)],
            cfg,
        )
        .unwrap();
        let (mut w, mut m, mut v) = (init.clone(), vec![0.0; 37], vec![0.0; 37]);
        for step in 1..=6u64 {
            let g: Vec<f32> = (0..37)
                .map(|i| crate::rng::normal(100 + step, i) * 0.1)
                .collect();
            set_grad(&p, &g);
            opt.step().unwrap();
            let c = AdamWCoeffs::new(cfg.lr * lr_scale, cfg.betas, cfg.eps, wd, step);
            adamw_kernel(&mut w, &g, &mut m, &mut v, c);
            assert_eq!(p.to_vec().unwrap(), w, "step {step}");
        }
    }

    #[test]
    fn fused_sgd_reproduces_the_cpu_optimizer_bit_for_bit() {
        use crate::optim::{Optimizer, ParamGroup, Sgd, SgdConfig};
        for (momentum, dampening, nesterov, wd) in [
            (0.0f32, 0.0f32, false, 0.0f32),
            (0.9, 0.0, false, 1e-4),
            (0.9, 0.1, false, 0.0),
            (0.9, 0.0, true, 5e-4),
        ] {
            let init: Vec<f32> = (0..29).map(|i| crate::rng::normal(9, i)).collect();
            let p = crate::Tensor::from_slice(&init, &[29], crate::Device::Cpu)
                .unwrap()
                .with_grad();
            let lr = 0.05f32;
            let mut opt = Sgd::new(
                vec![ParamGroup::new(vec![("p".into(), p.clone())], wd)],
                SgdConfig {
                    lr,
                    momentum,
                    dampening,
                    nesterov,
                },
            )
            .unwrap();
            let (mut w, mut buf) = (init.clone(), vec![0.0; 29]);
            for step in 0..5u64 {
                let g: Vec<f32> = (0..29).map(|i| crate::rng::normal(50 + step, i)).collect();
                set_grad(&p, &g);
                opt.step().unwrap();
                sgd_kernel(
                    &mut w,
                    &g,
                    &mut buf,
                    lr,
                    momentum,
                    dampening,
                    wd,
                    nesterov,
                    step == 0,
                );
                assert_eq!(
                    p.to_vec().unwrap(),
                    w,
                    "{momentum} {dampening} {nesterov} {wd}"
                );
            }
        }
    }

    #[test]
    fn no_device_is_an_error_not_a_panic() {
        if device_count() == 0 {
            let e = backend(0).unwrap_err().to_string();
            assert!(e.contains("cuda") || e.contains("CUDA"), "{e}");
        }
    }
}
