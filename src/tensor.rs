//! The tensor: a contiguous block of a device buffer with a shape, a dtype and, when it takes part in
//! autograd, a link to the tape.
//!
//! Cloning a `Tensor` is cheap (it shares storage); [`Tensor::copy`] makes an independent copy.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::autograd::{AutogradMeta, GradCell};
use crate::backend::{Backend, BackendBuffer, BufferRef};
use crate::device::Device;
use crate::error::{shape_bail, Error, Result};
use crate::rng;

/// Element type. Only f32 today; kept explicit so that bf16 can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
}

/// Largest rank vidgrad handles (N, C, D, H, W).
pub const MAX_RANK: usize = 5;

/// The most elements a tensor may have: 2⁴⁰ (4 TiB of f32), beyond any video model's activations,
/// and small enough that sums of sizes, byte counts and FLOP counts cannot wrap a u64.
pub const MAX_NUMEL: usize = 1 << 40;

/// The element count of `shape`, or an error for `op` when it exceeds [`MAX_NUMEL`] (or would wrap).
pub fn checked_numel(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_NUMEL)
        .ok_or_else(|| Error::Shape {
            op,
            msg: format!("shape {shape:?} has more than 2^40 elements, the most a tensor may hold"),
        })
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A unique identity per tensor object (views get their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        TensorId(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
}

pub(crate) struct TensorImpl {
    pub(crate) id: TensorId,
    pub(crate) buffer: BufferRef,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) device: Device,
    pub(crate) backend: &'static dyn Backend,
    /// Present exactly when the tensor requires grad.
    pub(crate) autograd: Option<AutogradMeta>,
}

/// An n-dimensional array on a device. See the module docs.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorImpl>);

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor(shape={:?}, device={}, requires_grad={})",
            self.shape(),
            self.device(),
            self.requires_grad()
        )
    }
}

pub(crate) fn numel_of(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    // --- construction -------------------------------------------------------------------------------

    /// Wrap a backend buffer. The caller guarantees `buffer.len() == numel(shape)`.
    pub(crate) fn from_buffer(
        buffer: BufferRef,
        shape: Vec<usize>,
        device: Device,
        backend: &'static dyn Backend,
    ) -> Tensor {
        debug_assert_eq!(buffer.len(), numel_of(&shape));
        Tensor(Arc::new(TensorImpl {
            id: TensorId::new(),
            buffer,
            shape,
            dtype: DType::F32,
            device,
            backend,
            autograd: None,
        }))
    }

    /// A tensor on the same device as `self`, holding `buffer`.
    pub(crate) fn sibling(&self, buffer: BufferRef, shape: Vec<usize>) -> Tensor {
        Tensor::from_buffer(buffer, shape, self.device(), self.backend())
    }

    fn check_shape(op: &'static str, shape: &[usize]) -> Result<()> {
        if shape.is_empty() || shape.len() > MAX_RANK {
            shape_bail!(
                op,
                "rank {} (shape {shape:?}) is not in 1..={MAX_RANK}",
                shape.len()
            );
        }
        checked_numel(op, shape).map(|_| ())
    }

    /// A tensor from host data in row-major order.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: Device) -> Result<Tensor> {
        Self::from_slice(&data, shape, device)
    }

    /// A tensor from host data in row-major order.
    pub fn from_slice(data: &[f32], shape: &[usize], device: Device) -> Result<Tensor> {
        Self::check_shape("from_slice", shape)?;
        if data.len() != numel_of(shape) {
            shape_bail!(
                "from_slice",
                "{} values cannot fill shape {shape:?} ({} elements)",
                data.len(),
                numel_of(shape)
            );
        }
        let backend = device.backend()?;
        Ok(Tensor::from_buffer(
            backend.from_host(data)?,
            shape.to_vec(),
            device,
            backend,
        ))
    }

    pub fn full(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        Self::check_shape("full", shape)?;
        let backend = device.backend()?;
        let buf = backend.full(numel_of(shape), value)?;
        Ok(Tensor::from_buffer(buf, shape.to_vec(), device, backend))
    }

    pub fn zeros(shape: &[usize], device: Device) -> Result<Tensor> {
        Self::full(shape, 0.0, device)
    }

    pub fn ones(shape: &[usize], device: Device) -> Result<Tensor> {
        Self::full(shape, 1.0, device)
    }

    /// Standard normal values from the counter-based generator of [`crate::rng`]: reproducible.
    pub fn randn(shape: &[usize], seed: u64, device: Device) -> Result<Tensor> {
        Self::check_shape("randn", shape)?;
        let data: Vec<f32> = (0..numel_of(shape) as u64)
            .map(|i| rng::normal(seed, i))
            .collect();
        Self::from_vec(data, shape, device)
    }

    /// Uniform values in [lo, hi) from the counter-based generator: reproducible.
    pub fn rand_uniform(
        shape: &[usize],
        lo: f32,
        hi: f32,
        seed: u64,
        device: Device,
    ) -> Result<Tensor> {
        Self::check_shape("rand_uniform", shape)?;
        let data: Vec<f32> = (0..numel_of(shape) as u64)
            .map(|i| lo + (hi - lo) * rng::uniform(seed, i))
            .collect();
        Self::from_vec(data, shape, device)
    }

    // --- inspection ---------------------------------------------------------------------------------

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    pub fn rank(&self) -> usize {
        self.0.shape.len()
    }
    pub fn numel(&self) -> usize {
        numel_of(&self.0.shape)
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub(crate) fn backend(&self) -> &'static dyn Backend {
        self.0.backend
    }
    pub(crate) fn buf(&self) -> &dyn BackendBuffer {
        &*self.0.buffer
    }
    pub(crate) fn buffer(&self) -> &BufferRef {
        &self.0.buffer
    }
    /// Size of dimension `d`; negative `d` counts from the end.
    pub fn dim(&self, d: isize) -> Result<usize> {
        let r = self.rank() as isize;
        let i = if d < 0 { d + r } else { d };
        if !(0..r).contains(&i) {
            shape_bail!(
                "dim",
                "dimension {d} out of range for shape {:?}",
                self.shape()
            );
        }
        Ok(self.0.shape[i as usize])
    }

    /// Copy the values to the host, row-major.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.backend().to_host(self.buf())
    }

    /// The value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            shape_bail!(
                "item",
                "needs a one-element tensor, got shape {:?}",
                self.shape()
            );
        }
        Ok(self.to_vec()?[0])
    }

    /// An independent copy on the same device (no autograd history).
    pub fn copy(&self) -> Result<Tensor> {
        Ok(self.sibling(self.backend().copy(self.buf())?, self.shape().to_vec()))
    }

    /// A copy on `device` (the same tensor, shared, when it is already there).
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        Tensor::from_vec(self.to_vec()?, self.shape(), device)
    }

    /// Overwrite this tensor's values with `src`'s, in place, outside autograd (loading weights,
    /// optimiser updates). Views sharing the storage see the change.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() {
            shape_bail!(
                "assign",
                "source shape {:?} != destination shape {:?}",
                src.shape(),
                self.shape()
            );
        }
        crate::ops::same_device("assign", &[self, src])?;
        self.backend().copy_into(self.buf(), src.buf())
    }

    /// In place, outside autograd: self = a·x + b·self.
    pub fn axpby_(&self, a: f32, x: &Tensor, b: f32) -> Result<()> {
        if x.shape() != self.shape() {
            shape_bail!(
                "axpby_",
                "x shape {:?} != self shape {:?}",
                x.shape(),
                self.shape()
            );
        }
        crate::ops::same_device("axpby_", &[self, x])?;
        self.backend().axpby(self.buf(), a, x.buf(), b)
    }

    // --- autograd -----------------------------------------------------------------------------------

    /// Whether gradients flow to this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.autograd.is_some()
    }

    /// A leaf that shares this tensor's storage and accumulates a gradient in `backward` (a parameter).
    pub fn with_grad(&self) -> Tensor {
        self.make(AutogradMeta::leaf())
    }

    /// Whether this handle is the only one on this tensor and the tensor the only one on its storage
    /// (no clone, view, detached copy or saved-for-backward tensor shares it) and the storage is not a
    /// view of another's values (a piece of concat's gradient): then it may be overwritten in place.
    pub(crate) fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.0) == 1
            && Arc::weak_count(&self.0) == 0
            && Arc::strong_count(&self.0.buffer) == 1
            && Arc::weak_count(&self.0.buffer) == 0
            && !self.0.buffer.is_view()
    }

    /// The same storage, cut off from autograd.
    pub fn detach(&self) -> Tensor {
        self.sibling(self.0.buffer.clone(), self.shape().to_vec())
    }

    pub(crate) fn make(&self, autograd: AutogradMeta) -> Tensor {
        Tensor(Arc::new(TensorImpl {
            id: TensorId::new(),
            buffer: self.0.buffer.clone(),
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            device: self.0.device,
            backend: self.0.backend,
            autograd: Some(autograd),
        }))
    }

    pub(crate) fn grad_cell(&self) -> Option<&Arc<GradCell>> {
        self.0.autograd.as_ref().map(|a| &a.cell)
    }

    /// The accumulated gradient: for leaves after `backward`, for other tensors only after
    /// [`Tensor::retain_grad`].
    pub fn grad(&self) -> Option<Tensor> {
        self.grad_cell().and_then(|c| c.get())
    }

    /// Clear the accumulated gradient.
    pub fn zero_grad(&self) {
        if let Some(c) = self.grad_cell() {
            c.clear();
        }
    }

    /// Ask `backward` to keep this intermediate tensor's gradient (Grad-CAM's ∂y/∂A).
    pub fn retain_grad(&self) -> Result<()> {
        match self.grad_cell() {
            Some(c) => {
                c.set_retain();
                Ok(())
            }
            None => Err(Error::Autograd(format!(
                "retain_grad on a tensor that does not require grad (shape {:?})",
                self.shape()
            ))),
        }
    }

    /// Backpropagate from this one-element tensor (gradient 1).
    pub fn backward(&self) -> Result<()> {
        self.backward_hooked(None)
    }

    /// [`Tensor::backward`], telling `hook` which leaves the pass reaches and when each leaf's
    /// gradient is final (data parallelism's gradient buckets, `dist::ddp`).
    pub(crate) fn backward_with_hook(&self, hook: crate::autograd::GradHook) -> Result<()> {
        self.backward_hooked(Some(hook))
    }

    fn backward_hooked(&self, hook: Option<crate::autograd::GradHook>) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a scalar (one-element) tensor, got shape {:?}; use backward_with",
                self.shape()
            )));
        }
        let one = Tensor::full(self.shape(), 1.0, self.device())?;
        crate::autograd::backward_with_hook(self, one, hook)
    }

    /// The id [`crate::autograd::GradEvent`] gives this tensor's gradient (None: it needs none).
    pub(crate) fn grad_id(&self) -> Option<usize> {
        self.grad_cell().map(crate::autograd::cell_id)
    }

    /// Backpropagate an upstream gradient of this tensor's shape.
    pub fn backward_with(&self, grad: &Tensor) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(Error::Autograd(format!(
                "backward_with: gradient shape {:?} != tensor shape {:?}",
                grad.shape(),
                self.shape()
            )));
        }
        crate::autograd::backward(self, grad.detach())
    }
}
