//! The CUDA backend: buffers from a caching allocator, the kernels of `kernels/*.cu` launched on one
//! stream, all through a [`Driver`] (the real device through cudarc, or the CUDA simulator).
//!
//! Every method enqueues kernels on the one stream and returns; only `to_host` (the host needs the
//! values) synchronises. The kernels compute the CPU backend's semantics (see docs/CUDA.md). Each op
//! family's launches live in a submodule mirroring kernels/<family>.cu and the CPU backend's files;
//! this file holds the buffers and launch helpers and dispatches.

pub mod alloc;
pub mod cudarc_driver;
pub mod driver;
pub mod kernels;
pub mod launch;
pub mod sim;
pub mod timing;

/// Kernel arguments: each expression is evaluated into a temporary that lives until the launch
/// returns; the driver gets its address and size.
macro_rules! kargs {
    ($($a:expr),* $(,)?) => {
        &[$( $crate::backend::cuda::driver::KernelArg::of(&$a) ),*]
    };
}

mod attention;
mod batchnorm;
mod conv;
mod elementwise;
mod gemm;
mod layout;
mod loss;
mod optimizer;
mod pool;
mod reduce;
mod softmax;
mod upsample;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use self::alloc::{CachingAllocator, MemoryStats, RawMemory};
pub use self::cudarc_driver::{device_count, driver_present, CudarcDriver};
use self::driver::{Driver, KernelArg, LaunchConfig};
use self::launch::{grid_for, BLOCK, MAX_ELEMENTS};
pub use self::upsample::upsample_scale;
use super::*;
use crate::error::{Error, Result};

/// The backend of device `ordinal`, created on first use and kept for the life of the process.
pub fn backend(ordinal: usize) -> Result<&'static CudaBackend> {
    static BACKENDS: OnceLock<Mutex<HashMap<usize, &'static CudaBackend>>> = OnceLock::new();
    let map = BACKENDS.get_or_init(Default::default);
    let mut map = map.lock().unwrap();
    if let Some(b) = map.get(&ordinal) {
        return Ok(b);
    }
    let driver = CudarcDriver::new(ordinal)?;
    let b: &'static CudaBackend = Box::leak(Box::new(CudaBackend::with_driver(
        Box::new(driver),
        format!("cuda:{ordinal}"),
    )));
    map.insert(ordinal, b);
    Ok(b)
}

/// The CUDA backend over the simulator (`Device::CudaSim`), created on first use.
pub fn sim_backend() -> Result<&'static CudaBackend> {
    static SIM: OnceLock<std::result::Result<&'static CudaBackend, String>> = OnceLock::new();
    SIM.get_or_init(|| {
        let driver = sim::SimDriver::new().map_err(|e| e.to_string())?;
        Ok(Box::leak(Box::new(CudaBackend::with_driver(
            Box::new(driver),
            "cuda-sim".into(),
        ))))
    })
    .clone()
    .map_err(Error::Device)
}

/// Device memory from the driver.
#[derive(Debug)]
struct DriverMemory(Arc<dyn Driver>);

impl RawMemory for DriverMemory {
    type Error = Error;
    fn alloc(&mut self, bytes: usize) -> Result<u64> {
        self.0.alloc(bytes)
    }
    fn free(&mut self, ptr: u64) {
        // No buffer references ptr any more and (see `synchronize`) no queued work uses it.
        self.0.free(ptr);
    }
    fn synchronize(&mut self) {
        // A cached block may have been used by any work queued before its owner was dropped.
        let _ = self.0.synchronize();
    }
    fn reused(&mut self, ptr: u64, bytes: usize) {
        self.0.block_reused(ptr, bytes);
    }
    fn released(&mut self, ptr: u64, bytes: usize) {
        self.0.block_released(ptr, bytes);
    }
}

/// Shared by the backend and its buffers (a buffer returns its block on drop, and may outlive the
/// backend value).
type Pool = Arc<Mutex<CachingAllocator<DriverMemory>>>;

/// A device buffer of `len` f32 values (a block of the caching allocator).
#[derive(Debug)]
pub struct CudaBuffer {
    ptr: u64,
    len: usize,
    class: usize,
    pool: Pool,
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

/// A piece of a block, as [`Backend::split`] hands it out: `runs` rows of `run_len` values, row r at
/// `offset + r·stride` of `parent` (a concat's output viewed as [outer, Σ inners], piece i its
/// columns of inner_i). Kernels with a row stride use it in place — batch norm writes its output into
/// one (the executor's concat without copies) and reads dy from one (that concat's backward); every
/// other kernel reads a strided view through a contiguous copy made when first needed and kept with
/// the view. Writing in place into a strided view is an error (see [`ptr_mut`]).
#[derive(Debug)]
pub struct CudaView {
    /// A [`CudaBuffer`] (a view of a view refers to the same block).
    parent: BufferRef,
    offset: usize,
    runs: usize,
    run_len: usize,
    stride: usize,
    /// The view's values packed, once a kernel without a row stride has read them.
    packed: OnceLock<Arc<CudaBuffer>>,
    /// To pack on demand (a launch and an allocation of the view's own backend).
    backend: CudaBackend,
}

impl BackendBuffer for CudaView {
    fn len(&self) -> usize {
        self.runs * self.run_len
    }
    fn is_view(&self) -> bool {
        true
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CudaView {
    /// Whether the values lie in one range of the parent.
    fn is_contiguous(&self) -> bool {
        self.runs <= 1 || self.stride == self.run_len
    }

    /// The address of row 0's first value.
    fn base(&self) -> Result<u64> {
        Ok(cuda_buf(&*self.parent)?.ptr + 4 * self.offset as u64)
    }

    /// The address of the values as one range a kernel may read with float4 loads, as it reads any
    /// block: in the parent when they are one range starting 16-byte aligned, else a packed copy
    /// (made by the first call, on the stream, so ordered before the caller's launch).
    fn read_ptr(&self) -> Result<u64> {
        if let Some(p) = self.in_place()? {
            return Ok(p);
        }
        if let Some(p) = self.packed.get() {
            return Ok(p.ptr);
        }
        let packed = self.backend.alloc(self.len())?;
        self.backend.copy_rows(
            (packed.ptr, self.run_len, 0),
            (cuda_buf(&*self.parent)?.ptr, self.stride, self.offset),
            (self.runs, self.run_len),
        )?;
        // Another thread may have packed it first: either copy holds the same values.
        let _ = self.packed.set(packed);
        Ok(self.packed.get().expect("set above").ptr)
    }

    /// [`CudaView::base`] for a write through the view: an error once it has been packed (the
    /// packed copy, which later reads would return, would not see the write). The executor writes
    /// its views before anything reads them.
    fn base_for_write(&self, op: &str) -> Result<u64> {
        if self.packed.get().is_some() {
            return Err(Error::Device(format!(
                "cuda: {op} writes through a view that a kernel has already read as a packed copy"
            )));
        }
        self.base()
    }

    /// [`CudaView::base`] where any kernel may use it as a block's address: one range, 16-byte aligned.
    fn in_place(&self) -> Result<Option<u64>> {
        let base = self.base()?;
        Ok((self.is_contiguous() && base % 16 == 0).then_some(base))
    }
}

/// The CUDA backend of one device.
#[derive(Debug, Clone)]
pub struct CudaBackend {
    name: String,
    driver: Arc<dyn Driver>,
    pool: Pool,
    /// From the driver's properties; sizes the grid-stride and split grids.
    sm_count: u32,
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

fn a3(v: [usize; 3]) -> [i32; 3] {
    [v[0] as i32, v[1] as i32, v[2] as i32]
}

fn cuda_buf(b: &dyn BackendBuffer) -> Result<&CudaBuffer> {
    b.as_any()
        .downcast_ref::<CudaBuffer>()
        .ok_or_else(|| Error::Device("a non-CUDA buffer was passed to the CUDA backend".into()))
}

/// The device address of b's values for a kernel that reads them as one contiguous range (a strided
/// view is packed first, see [`CudaView`]).
fn ptr(b: &dyn BackendBuffer) -> Result<u64> {
    if let Some(v) = b.as_any().downcast_ref::<CudaView>() {
        return v.read_ptr();
    }
    Ok(cuda_buf(b)?.ptr)
}

/// The device address of b's values for a kernel that writes them in place as one contiguous range
/// (with float4 stores): an error for a view that is not one aligned range (writing a packed copy
/// would lose the writes).
fn ptr_mut(b: &dyn BackendBuffer, op: &str) -> Result<u64> {
    let Some(v) = b.as_any().downcast_ref::<CudaView>() else {
        return Ok(cuda_buf(b)?.ptr);
    };
    // (an aligned single range is never packed: in_place is what reads of it get too)
    v.in_place()?.ok_or_else(|| {
        Error::Device(format!(
            "cuda: {op} writes in place into a strided or unaligned view ({} rows of {} values, \
             {} apart, from value {}: a piece of a split); only batch norm and copy_into write \
             through such views",
            v.runs, v.run_len, v.stride, v.offset
        ))
    })
}

/// b's values as `rows` rows of `row_len`: the address of row 0 and the distance between rows in
/// values, for the kernels that take a row stride (batch norm's, which check alignment themselves).
/// A view split along those rows is used in place; anything else is read as a block ([`ptr`]).
fn rows(b: &dyn BackendBuffer, rows: usize, row_len: usize) -> Result<(u64, usize)> {
    match b.as_any().downcast_ref::<CudaView>() {
        Some(v) if v.runs == rows && v.run_len == row_len => Ok((v.base()?, v.stride)),
        _ => Ok((ptr(b)?, row_len)),
    }
}

/// [`rows`] for a kernel that writes the rows: a view not split along them is an error
/// ([`ptr_mut`]).
fn rows_mut(b: &dyn BackendBuffer, rows: usize, row_len: usize, op: &str) -> Result<(u64, usize)> {
    match b.as_any().downcast_ref::<CudaView>() {
        Some(v) if v.runs == rows && v.run_len == row_len => Ok((v.base_for_write(op)?, v.stride)),
        _ => Ok((ptr_mut(b, op)?, row_len)),
    }
}

/// The device address of a CUDA buffer's values for a library that reads and writes them in place
/// (NCCL): a block, or a view that is one aligned range.
pub fn device_ptr_mut(b: &dyn BackendBuffer, op: &str) -> Result<u64> {
    ptr_mut(b, op)
}

fn opt_ptr(b: Option<&dyn BackendBuffer>) -> Result<u64> {
    b.map_or(Ok(0), ptr)
}

/// The address of b's first value where b is one range, aligned or not (a view's in its parent), for
/// the copies that take any address (`dtod`, `copy_rows`, the host copy); a strided view packed.
fn range_ptr(b: &dyn BackendBuffer) -> Result<u64> {
    match b.as_any().downcast_ref::<CudaView>() {
        Some(v) if v.is_contiguous() => v.base(),
        _ => ptr(b),
    }
}

impl CudaBackend {
    /// The backend over `driver`; `name` is what [`Backend::name`] reports (`cuda:0`, `cuda-sim`).
    pub fn with_driver(driver: Box<dyn Driver>, name: String) -> CudaBackend {
        let driver: Arc<dyn Driver> = Arc::from(driver);
        let pool = Arc::new(Mutex::new(CachingAllocator::new(DriverMemory(
            driver.clone(),
        ))));
        CudaBackend {
            name,
            sm_count: driver.props().sm_count,
            driver,
            pool,
        }
    }

    /// The GPU's name as the driver reports it.
    pub fn device_name(&self) -> &str {
        &self.driver.props().name
    }

    /// Whether this runs on the CUDA simulator (its timings are not GPU figures).
    pub fn is_simulator(&self) -> bool {
        self.driver.is_simulator()
    }

    /// The stream every launch of this backend goes on, when the device is real (NCCL's collectives
    /// are enqueued on it, ordered with the kernels); `None` on the simulator.
    pub fn cudarc_stream(&self) -> Option<Arc<cudarc::driver::CudaStream>> {
        self.driver.cudarc_stream()
    }

    /// Allocator counters (requested, peak, reserved, cached bytes, driver allocations).
    pub fn memory_stats(&self) -> MemoryStats {
        self.pool.lock().unwrap().stats()
    }

    /// Return every cached block to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.synchronize()?;
        self.pool.lock().unwrap().release_cache();
        Ok(())
    }

    /// Wait for all enqueued work.
    pub fn synchronize(&self) -> Result<()> {
        self.driver.synchronize()
    }

    /// Launch `kernel` of kernels/<family>.cu (every launch of the backend goes through here).
    fn launch(
        &self,
        family: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        self.driver.launch(family, kernel, cfg, args)
    }

    /// A 1-d grid-stride launch over `n` items.
    fn launch1(
        &self,
        family: &'static str,
        kernel: &'static str,
        n: usize,
        args: &[KernelArg],
    ) -> Result<()> {
        self.launch(
            family,
            kernel,
            LaunchConfig::new((grid_for(n, self.sm_count), 1, 1), (BLOCK, 1, 1)),
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
                pool: self.pool.clone(),
            }));
        }
        let (ptr, class) = self.pool.lock().unwrap().alloc(len * 4).map_err(|e| {
            Error::Device(format!(
                "cuda: out of device memory allocating {} bytes: {e}",
                len * 4
            ))
        })?;
        Ok(Arc::new(CudaBuffer {
            ptr,
            len,
            class,
            pool: self.pool.clone(),
        }))
    }

    fn zeros(&self, len: usize) -> Result<Arc<CudaBuffer>> {
        let b = self.alloc(len)?;
        if len > 0 {
            // The block holds len·4 bytes.
            self.driver.memset_d8(b.ptr, 0, len * 4)?;
        }
        Ok(b)
    }

    fn upload_u32(&self, v: &[u32]) -> Result<Arc<CudaBuffer>> {
        self.upload(bytemuck::cast_slice::<u32, f32>(v))
    }

    fn upload(&self, data: &[f32]) -> Result<Arc<CudaBuffer>> {
        let b = self.alloc(data.len())?;
        if !data.is_empty() {
            self.driver
                .copy_htod(b.ptr, bytemuck::cast_slice::<f32, u8>(data))?;
        }
        Ok(b)
    }

    /// dst[r·dst_ld + dst_off + j] = src[r·src_ld + src_off + j] for `rows` rows of `cols` values
    /// (kernels/layout.cu `layout_copy2d`): concat, split, packing and filling views.
    fn copy_rows(
        &self,
        (dst, dst_ld, dst_off): (u64, usize, usize),
        (src, src_ld, src_off): (u64, usize, usize),
        (rows, cols): (usize, usize),
    ) -> Result<()> {
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        self.launch1(
            "layout",
            "layout_copy2d",
            rows * cols,
            kargs![
                dst,
                dst_ld as i32,
                dst_off as i32,
                src,
                src_ld as i32,
                src_off as i32,
                rows as i32,
                cols as i32
            ],
        )
    }

    fn dtod(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        if len == 0 || dst == src {
            return Ok(());
        }
        self.driver.copy_dtod(dst, src, len * 4)
    }
}

fn out(b: Arc<CudaBuffer>) -> BufferRef {
    b
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn memory_in_use(&self) -> usize {
        self.pool.lock().unwrap().stats().in_use
    }
    fn memory_peak(&self) -> usize {
        self.pool.lock().unwrap().stats().peak
    }
    fn available_memory(&self) -> Option<(u64, String)> {
        // blocks cached by the allocator are free for this process though not for the driver
        let free = self.driver.free_memory()?;
        let cached = self.pool.lock().unwrap().stats().cached as u64;
        Some((
            free + cached,
            format!("free memory reported by the CUDA driver on {}, plus blocks cached by vidgrad's allocator", self.name),
        ))
    }
    fn reset_memory_peak(&self) {
        self.pool.lock().unwrap().reset_peak();
    }

    fn from_host(&self, data: &[f32]) -> Result<BufferRef> {
        Ok(out(self.upload(data)?))
    }
    fn to_host(&self, x: &dyn BackendBuffer) -> Result<Vec<f32>> {
        let mut v = vec![0.0f32; x.len()];
        if !v.is_empty() {
            self.driver
                .copy_dtoh(bytemuck::cast_slice_mut::<f32, u8>(&mut v), range_ptr(x)?)?;
        }
        Ok(v)
    }
    fn full(&self, len: usize, value: f32) -> Result<BufferRef> {
        elementwise::full(self, len, value)
    }
    fn copy(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        let b = self.alloc(x.len())?;
        self.dtod(b.ptr, range_ptr(x)?, x.len())?;
        Ok(out(b))
    }
    fn copy_into(&self, dst: &dyn BackendBuffer, src: &dyn BackendBuffer) -> Result<()> {
        let n = dst.len().min(src.len());
        match dst.as_any().downcast_ref::<CudaView>() {
            // a strided view is written row by row (src's first runs·run_len values)
            Some(v) if !v.is_contiguous() && src.len() >= v.len() => self.copy_rows(
                (v.base_for_write("copy_into")?, v.stride, 0),
                (range_ptr(src)?, v.run_len, 0),
                (v.runs, v.run_len),
            ),
            Some(v) if v.is_contiguous() => {
                self.dtod(v.base_for_write("copy_into")?, range_ptr(src)?, n)
            }
            Some(_) => self.dtod(ptr_mut(dst, "copy_into")?, range_ptr(src)?, n),
            None => self.dtod(cuda_buf(dst)?.ptr, range_ptr(src)?, n),
        }
    }

    fn unary(&self, x: &dyn BackendBuffer, op: UnaryOp) -> Result<BufferRef> {
        elementwise::unary(self, x, op)
    }
    fn binary(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        op: BinaryOp,
    ) -> Result<BufferRef> {
        elementwise::binary(self, a, b, op)
    }
    fn relu_backward(&self, y: &dyn BackendBuffer, dy: &dyn BackendBuffer) -> Result<BufferRef> {
        elementwise::relu_backward(self, y, dy)
    }
    fn relu_in_place(&self, x: &dyn BackendBuffer) -> Result<()> {
        elementwise::relu_in_place(self, x)
    }
    fn add_relu_in_place(&self, a: &dyn BackendBuffer, b: &dyn BackendBuffer) -> Result<()> {
        elementwise::add_relu_in_place(self, a, b)
    }
    fn axpby(&self, y: &dyn BackendBuffer, a: f32, x: &dyn BackendBuffer, b: f32) -> Result<()> {
        elementwise::axpby(self, y, a, x, b)
    }
    fn sgd_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        momentum_buf: Option<&dyn BackendBuffer>,
        u: &SgdUpdate,
    ) -> Result<()> {
        optimizer::sgd_step(self, w, grad, momentum_buf, u)
    }
    fn adamw_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        m: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        c: &AdamWCoeffs,
    ) -> Result<()> {
        optimizer::adamw_step(self, w, grad, m, v, c)
    }
    fn sum_all(&self, x: &dyn BackendBuffer) -> Result<BufferRef> {
        reduce::sum_all(self, x)
    }
    fn broadcast_scalar(&self, s: &dyn BackendBuffer, len: usize, scale: f32) -> Result<BufferRef> {
        elementwise::broadcast_scalar(self, s, len, scale)
    }
    fn sum_to_axis(&self, x: &dyn BackendBuffer, g: AxisGeom) -> Result<BufferRef> {
        reduce::sum_to_axis(self, x, g)
    }
    fn add_axis_bias(
        &self,
        x: &dyn BackendBuffer,
        bias: &dyn BackendBuffer,
        g: AxisGeom,
    ) -> Result<BufferRef> {
        elementwise::add_axis_bias(self, x, bias, g)
    }

    fn dropout(&self, x: &dyn BackendBuffer, p: f32, seed: u64) -> Result<BufferRef> {
        elementwise::dropout(self, x, p, seed)
    }

    fn conv_forward(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        conv::forward(self, x, w, bias, g, false)
    }
    fn conv_forward_relu(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        conv::forward(self, x, w, bias, g, true)
    }
    fn conv_backward_data(
        &self,
        dy: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        conv::backward_data(self, dy, w, g)
    }
    fn conv_backward_weight(
        &self,
        x: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef> {
        conv::backward_weight(self, x, dy, g)
    }

    fn batch_norm_train(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        eps: f32,
        relu: bool,
    ) -> Result<(BufferRef, BnStats)> {
        batchnorm::train(self, x, weight, bias, g, eps, relu)
    }
    fn batch_norm_train_into(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        eps: f32,
        relu: bool,
        out: &dyn BackendBuffer,
    ) -> Result<BnStats> {
        if out.len() != x.len() {
            return Err(Error::Shape {
                op: "batch_norm_train_into",
                msg: format!("{} values into {}", x.len(), out.len()),
            });
        }
        match rows_mut(out, g.outer, g.axis * g.inner, "batch_norm_train_into") {
            Ok(y) => batchnorm::train_into(self, x, weight, bias, g, eps, relu, y),
            // a view split along other rows: y, then copied in row by row
            Err(_) => {
                let (y, stats) = batchnorm::train(self, x, weight, bias, g, eps, relu)?;
                self.copy_into(out, &*y)?;
                Ok(stats)
            }
        }
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
        batchnorm::eval(self, x, weight, bias, mean, var, g, eps)
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
        relu_y: Option<&dyn BackendBuffer>,
    ) -> Result<BnGrads> {
        let mask = relu_y.map_or(MaskFrom::Nothing, MaskFrom::Output);
        batchnorm::backward(self, dy, x, weight, (mean, var), g, eps, batch_stats, mask)
    }
    fn recomputes_relu_mask(&self) -> bool {
        true
    }
    fn batch_norm_relu_backward_from_input(
        &self,
        dy: &dyn BackendBuffer,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
    ) -> Result<BnGrads> {
        let mask = MaskFrom::Input(bias);
        batchnorm::backward(self, dy, x, weight, (mean, var), g, eps, true, mask)
    }

    fn max_pool_forward(&self, x: &dyn BackendBuffer, g: &PoolGeom) -> Result<BufferRef> {
        pool::max_forward(self, x, g)
    }
    fn max_pool_forward_argmax(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        pool::max_forward_argmax(self, x, g)
    }
    fn max_pool_backward(
        &self,
        argmax: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<BufferRef> {
        pool::max_backward(self, argmax, dy, g)
    }
    fn avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef> {
        pool::avg_forward(self, x, g, count_include_pad)
    }
    fn avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef> {
        pool::avg_backward(self, dy, g, count_include_pad)
    }
    fn adaptive_avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        pool::adaptive_forward(self, x, g)
    }
    fn adaptive_avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef> {
        pool::adaptive_backward(self, dy, g)
    }

    fn upsample_trilinear_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        upsample::forward(self, x, g)
    }
    fn upsample_trilinear_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef> {
        upsample::backward(self, dy, g)
    }

    fn softmax_forward(&self, x: &dyn BackendBuffer, g: AxisGeom, log: bool) -> Result<BufferRef> {
        softmax::forward(self, x, g, log)
    }
    fn softmax_backward(
        &self,
        y: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AxisGeom,
        log: bool,
    ) -> Result<BufferRef> {
        softmax::backward(self, y, dy, g, log)
    }
    fn cross_entropy_forward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
    ) -> Result<BufferRef> {
        loss::cross_entropy(self, logits, labels, classes, smoothing)
    }
    fn cross_entropy_backward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
        dloss: &dyn BackendBuffer,
    ) -> Result<BufferRef> {
        loss::cross_entropy_backward(self, logits, labels, classes, smoothing, dloss)
    }

    fn matmul(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        g: MatmulGeom,
    ) -> Result<BufferRef> {
        gemm::matmul(self, a, b, g)
    }
    fn attention_forward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<(BufferRef, BufferRef)> {
        attention::forward(self, q, k, v, g)
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
        attention::backward(self, q, k, v, y, lse, dy, g)
    }

    fn permute(&self, x: &dyn BackendBuffer, shape: &[usize], perm: &[usize]) -> Result<BufferRef> {
        layout::permute(self, x, shape, perm)
    }
    fn concat(
        &self,
        xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Result<BufferRef> {
        layout::concat(self, xs, outer, inners)
    }
    fn split(&self, x: &BufferRef, outer: usize, inners: &[usize]) -> Result<Vec<BufferRef>> {
        layout::split_views(self, x, outer, inners)
    }
    fn splits_into_views(&self) -> bool {
        true
    }
    fn join_views(
        &self,
        xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Option<BufferRef> {
        layout::joined_views(xs, outer, inners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn no_device_is_an_error_not_a_panic() {
        if device_count() == 0 {
            let e = backend(0).unwrap_err().to_string();
            assert!(e.contains("cuda") || e.contains("CUDA"), "{e}");
        }
    }
}
