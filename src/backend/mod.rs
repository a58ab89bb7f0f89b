//! The one seam between the engine and the hardware.
//!
//! Ops (`crate::ops`) check shapes, resolve the geometry of a call into the plain structs below and then
//! call a [`Backend`] method. A backend owns its buffers ([`BackendBuffer`]) and never sees a `Tensor`, so a
//! new backend (CUDA) is one more implementation of this trait: op call sites, autograd and models stay as
//! they are. Every method works on contiguous f32 buffers in PyTorch's layouts.
//!
//! Spatial geometry is always given in three dimensions (D, H, W): a 2-d op is the 3-d op with D = 1 and
//! kernel, stride and padding 1, 1, 0 along D. That is how conv2d and conv3d share one implementation.

pub mod cpu;
pub mod cuda;
pub mod meta;

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Where a batch-norm backward takes a fused ReLU's mask from (both backends' implementations of
/// [`Backend::batch_norm_backward`] and [`Backend::batch_norm_relu_backward_from_input`]).
pub(crate) enum MaskFrom<'a> {
    Nothing,
    /// The saved output.
    Output(&'a dyn BackendBuffer),
    /// x, through the forward's affine (needs the bias).
    Input(Option<&'a dyn BackendBuffer>),
}

/// A block of device memory holding `len()` f32 values, owned by one backend.
pub trait BackendBuffer: Send + Sync + Debug {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the buffer is a view of another's values (both backends' [`Backend::split`]): an
    /// in-place write would reach the other buffer, which may be shared.
    fn is_view(&self) -> bool {
        false
    }
    fn as_any(&self) -> &dyn Any;
}

/// Shared handle on a buffer. Tensors that are views of each other (reshape) share one.
pub type BufferRef = Arc<dyn BackendBuffer>;

/// Elementwise functions of one argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Relu,
    /// x * s
    Scale(f32),
    /// x + s
    AddScalar(f32),
    /// √x (NaN for x < 0, as IEEE)
    Sqrt,
}

/// Elementwise functions of two same-shaped arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// a / b (IEEE: ±inf or NaN where b = 0)
    Div,
    /// max(a + b, 0), NaN kept (the fusion pass's residual add → ReLU)
    AddRelu,
}

/// A convolution over [N, C, D, H, W] with weights [Cout, Cin/groups, kD, kH, kW].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub groups: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
}

impl ConvGeom {
    pub fn in_per_group(&self) -> usize {
        self.c_in / self.groups
    }
    pub fn out_per_group(&self) -> usize {
        self.c_out / self.groups
    }
    pub fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn input_volume(&self) -> usize {
        self.input.iter().product()
    }
    pub fn output_volume(&self) -> usize {
        self.output.iter().product()
    }
    /// Multiply-adds of the forward pass (dgrad and wgrad cost the same).
    pub fn macs(&self) -> u64 {
        (self.n * self.c_out * self.output_volume()) as u64
            * (self.in_per_group() * self.kernel_volume()) as u64
    }
    /// One input channel per group (groups == C_in > 1): direct kernels rather than an implicit GEMM.
    pub fn is_depthwise(&self) -> bool {
        self.groups == self.c_in && self.groups > 1
    }
    /// The math mode of this convolution's products on `hw` ([`crate::math_mode::math_mode_on`]),
    /// except that depthwise convolutions always multiply in FP32 — their CUDA kernels run on CUDA cores
    /// (a reduction of one kernel volume has no GEMM for tensor cores), and the CPU backend, the
    /// reference, computes the same.
    pub fn math_mode(
        &self,
        hw: crate::math_mode::Hardware,
    ) -> crate::Result<crate::math_mode::MathMode> {
        if self.is_depthwise() {
            return Ok(crate::math_mode::MathMode::Fp32);
        }
        crate::math_mode::math_mode_on(hw)
    }
}

/// A pooling window over `planes` = N·C independent [D, H, W] volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolGeom {
    pub planes: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

impl PoolGeom {
    pub fn kernel_volume(&self) -> usize {
        self.kernel.iter().product()
    }
    pub fn output_len(&self) -> usize {
        self.planes * self.output.iter().product::<usize>()
    }
    /// Bytes of one saved max-pool argmax (its offset inside the kernel window): u8 for windows of at
    /// most 256 taps (every pool of the model zoo), u16 up to 65 536, else u32.
    pub fn argmax_bytes(&self) -> usize {
        match self.kernel_volume() {
            0..=256 => 1,
            257..=65536 => 2,
            _ => 4,
        }
    }
    /// Length in f32 words of the buffer holding every output's argmax, packed `argmax_bytes` wide in
    /// output order (buffers are f32 words; the offsets reinterpret them, little-endian).
    pub fn argmax_words(&self) -> usize {
        (self.output_len() * self.argmax_bytes()).div_ceil(4)
    }
}

/// The buffers a max-pool backward gets must be the forward's (a wrong argmax buffer would scatter
/// out of its planes).
pub(crate) fn check_argmax(
    argmax: &dyn BackendBuffer,
    dy: &dyn BackendBuffer,
    g: &PoolGeom,
) -> Result<()> {
    if argmax.len() != g.argmax_words() || dy.len() != g.output_len() {
        return Err(crate::error::Error::Device(format!(
            "max_pool backward: argmax buffer of {} words and dy of {} values do not fit {g:?} ({} and {} expected)",
            argmax.len(),
            dy.len(),
            g.argmax_words(),
            g.output_len()
        )));
    }
    Ok(())
}

/// Adaptive average pooling: output cell o covers [floor(o·in/out), ceil((o+1)·in/out)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdaptivePoolGeom {
    pub planes: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
}

/// Trilinear resampling of `planes` [D, H, W] volumes (PyTorch's `F.interpolate` index rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsampleGeom {
    pub planes: usize,
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub align_corners: bool,
}

/// A tensor viewed as [outer, channels, inner]: batch norm's channel axis, softmax's reduced axis,
/// bias broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisGeom {
    pub outer: usize,
    pub axis: usize,
    pub inner: usize,
}

impl AxisGeom {
    pub fn numel(&self) -> usize {
        self.outer * self.axis * self.inner
    }
}

/// `batch` independent products C[m, n] = Σ_k A[m, k] B[k, n]. With `trans_a`, A is stored [k, m];
/// with `trans_b`, B is stored [n, k]. All row-major, batches contiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulGeom {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

/// Non-local attention in channel-first layout: q [B, C, N], k [B, C, M], v [B, Cv, M] → y [B, Cv, N],
/// y[b, :, n] = Σ_m softmax_m(scale · Σ_c q[b,c,n] k[b,c,m]) · v[b, :, m].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionGeom {
    pub batch: usize,
    pub c: usize,
    pub cv: usize,
    pub n: usize,
    pub m: usize,
    pub scale: f32,
}

/// Batch-norm statistics of one forward pass: per-channel mean and biased variance.
#[derive(Debug, Clone)]
pub struct BnStats {
    pub mean: BufferRef,
    pub var: BufferRef,
}

/// Gradients of batch norm.
#[derive(Debug, Clone)]
pub struct BnGrads {
    pub dx: BufferRef,
    pub dweight: BufferRef,
    pub dbias: BufferRef,
}

/// Gradients of attention.
#[derive(Debug, Clone)]
pub struct AttentionGrads {
    pub dq: BufferRef,
    pub dk: BufferRef,
    pub dv: BufferRef,
}

/// Everything a device must do for the ops. Grouped by op family, in the order of `src/ops/`.
/// Inputs are assumed valid: shape checks happen in the ops before a backend is called.
/// One SGD update (PyTorch's rule, [`Backend::sgd_step`]): d = g + wd·w (only where wd ≠ 0: 0·Inf
/// would be NaN); with momentum, buf = momentum·buf + (1 − dampening)·d (buf = d on the `first` step)
/// and d = nesterov ? d + momentum·buf : buf; then w −= lr·d.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdUpdate {
    pub lr: f32,
    pub momentum: f32,
    pub dampening: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// The momentum buffer holds nothing yet: it is set to d.
    pub first: bool,
}

/// The scalar coefficients of one AdamW step ([`Backend::adamw_step`]), computed as PyTorch's AdamW
/// computes them (f64, each rounded to f32 once).
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
    /// Step `step` (from 1) at learning rate `lr` (already scaled by the parameter's group).
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

pub trait Backend: Send + Sync + Debug {
    /// Human-readable name, e.g. "cpu" or "cuda:0".
    fn name(&self) -> String;
    /// Bytes held by this backend's live buffers.
    fn memory_in_use(&self) -> usize;
    /// Most bytes held at once since start or the last [`Backend::reset_memory_peak`].
    fn memory_peak(&self) -> usize;
    fn reset_memory_peak(&self);
    /// Bytes this device can still allocate, with where the figure comes from; `None` when unknown.
    /// Compared with a network's memory plan before it runs.
    fn available_memory(&self) -> Option<(u64, String)> {
        None
    }

    // --- memory -------------------------------------------------------------------------------------
    #[allow(clippy::wrong_self_convention)] // "from host memory", not a constructor
    fn from_host(&self, data: &[f32]) -> Result<BufferRef>;
    fn to_host(&self, x: &dyn BackendBuffer) -> Result<Vec<f32>>;
    fn full(&self, len: usize, value: f32) -> Result<BufferRef>;
    /// An independent copy of `x`.
    fn copy(&self, x: &dyn BackendBuffer) -> Result<BufferRef>;
    /// Overwrite `dst` with `src` (same length).
    fn copy_into(&self, dst: &dyn BackendBuffer, src: &dyn BackendBuffer) -> Result<()>;

    // --- elementwise --------------------------------------------------------------------------------
    fn unary(&self, x: &dyn BackendBuffer, op: UnaryOp) -> Result<BufferRef>;
    fn binary(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        op: BinaryOp,
    ) -> Result<BufferRef>;
    /// dx = 0 where y <= 0, else dy (from ReLU's output, so its input need not be kept); a NaN output
    /// passes dy on, as PyTorch's threshold_backward.
    fn relu_backward(&self, y: &dyn BackendBuffer, dy: &dyn BackendBuffer) -> Result<BufferRef>;
    /// In place: x = max(x, 0), NaN kept (a ReLU whose input nothing else reads or saved).
    fn relu_in_place(&self, x: &dyn BackendBuffer) -> Result<()>;
    /// In place: a = max(a + b, 0), NaN kept (the fused add → ReLU over a dead, unshared `a`; `b` is
    /// another buffer).
    fn add_relu_in_place(&self, a: &dyn BackendBuffer, b: &dyn BackendBuffer) -> Result<()>;
    /// In place: y = a·x + b·y.
    fn axpby(&self, y: &dyn BackendBuffer, a: f32, x: &dyn BackendBuffer, b: f32) -> Result<()>;
    /// SGD's update in place on w and, with momentum, its momentum buffer: one pass over w, grad and
    /// the buffer ([`SgdUpdate`]; each product rounded on its own, as a chain of [`Backend::axpby`]s
    /// would). The buffers are distinct (grad may not be w or the momentum buffer).
    fn sgd_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        momentum_buf: Option<&dyn BackendBuffer>,
        u: &SgdUpdate,
    ) -> Result<()>;
    /// AdamW's update in place on w and its moment buffers m and v, one pass ([`AdamWCoeffs`]; each
    /// product rounded on its own).
    fn adamw_step(
        &self,
        w: &dyn BackendBuffer,
        grad: &dyn BackendBuffer,
        m: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        c: &AdamWCoeffs,
    ) -> Result<()>;
    /// A one-element buffer holding Σ x.
    fn sum_all(&self, x: &dyn BackendBuffer) -> Result<BufferRef>;
    /// `len` copies of scale · s[0] (the backward of a sum), without a round trip to the host.
    fn broadcast_scalar(&self, s: &dyn BackendBuffer, len: usize, scale: f32) -> Result<BufferRef>;
    /// Per-channel sums of x viewed as [outer, axis, inner] → [axis] (bias gradients).
    fn sum_to_axis(&self, x: &dyn BackendBuffer, g: AxisGeom) -> Result<BufferRef>;
    /// x + bias broadcast along the axis of [outer, axis, inner].
    fn add_axis_bias(
        &self,
        x: &dyn BackendBuffer,
        bias: &dyn BackendBuffer,
        g: AxisGeom,
    ) -> Result<BufferRef>;

    // --- dropout ------------------------------------------------------------------------------------
    /// Inverted dropout with the counter-based mask of [`crate::rng::dropout_keep`]: x[i]·1/(1-p) where
    /// the mask keeps index i, x[i]·0 elsewhere (NaN for NaN/Inf, as PyTorch's x·mask·scale). Applying
    /// it to dy with the same seed is its backward.
    fn dropout(&self, x: &dyn BackendBuffer, p: f32, seed: u64) -> Result<BufferRef>;

    // --- convolution --------------------------------------------------------------------------------
    fn conv_forward(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef>;
    /// `conv_forward` with ReLU applied to each output as the epilogue writes it (the fusion pass's
    /// conv+relu: no second pass over y).
    fn conv_forward_relu(
        &self,
        x: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        bias: Option<&dyn BackendBuffer>,
        g: &ConvGeom,
    ) -> Result<BufferRef>;
    fn conv_backward_data(
        &self,
        dy: &dyn BackendBuffer,
        w: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef>;
    fn conv_backward_weight(
        &self,
        x: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &ConvGeom,
    ) -> Result<BufferRef>;

    // --- batch norm ---------------------------------------------------------------------------------
    /// Normalise with the batch's statistics; returns y and the (mean, biased var) used. With `relu`,
    /// y = max(normalised, 0) in the same pass (the fusion pass's BN → ReLU).
    fn batch_norm_train(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        g: AxisGeom,
        eps: f32,
        relu: bool,
    ) -> Result<(BufferRef, BnStats)>;
    /// [`Backend::batch_norm_train`] with y written into `out` (x's length; a view, such as a
    /// producer's slice of a concat's output from [`Backend::split`], is written through). This
    /// default computes y and copies it; a backend with views writes in place.
    #[allow(clippy::too_many_arguments)]
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
        let (y, stats) = self.batch_norm_train(x, weight, bias, g, eps, relu)?;
        self.copy_into(out, &*y)?;
        Ok(stats)
    }
    /// Normalise with given (running) statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        x: &dyn BackendBuffer,
        weight: Option<&dyn BackendBuffer>,
        bias: Option<&dyn BackendBuffer>,
        mean: &dyn BackendBuffer,
        var: &dyn BackendBuffer,
        g: AxisGeom,
        eps: f32,
    ) -> Result<BufferRef>;
    /// Gradients of either mode. With `batch_stats`, mean/var are the batch's own and dx carries their
    /// dependence on x; without, they are constants (eval mode). With `relu_y` (the output of a fused
    /// BN → ReLU), dy is first masked as ReLU's backward masks it (0 where relu_y <= 0), inside the
    /// same passes.
    #[allow(clippy::too_many_arguments)]
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
    ) -> Result<BnGrads>;

    /// Whether [`Backend::batch_norm_relu_backward_from_input`] is implemented (the CPU's and the
    /// CUDA backend's): then a fused BN → ReLU in training need not keep its output for the backward.
    fn recomputes_relu_mask(&self) -> bool {
        false
    }
    /// The backward of a fused BN → ReLU in training (batch statistics) with ReLU's mask recomputed
    /// from x: y = max(v, 0) with v = x·s + t (s = w·rsqrt(var + eps), t = b − mean·s, the forward's
    /// f32 arithmetic), so y <= 0 exactly where v <= 0 — the mask of the saved output, bit for bit.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_relu_backward_from_input(
        &self,
        _dy: &dyn BackendBuffer,
        _x: &dyn BackendBuffer,
        _weight: Option<&dyn BackendBuffer>,
        _bias: Option<&dyn BackendBuffer>,
        _mean: &dyn BackendBuffer,
        _var: &dyn BackendBuffer,
        _g: AxisGeom,
        _eps: f32,
    ) -> Result<BnGrads> {
        Err(Error::Device(format!(
            "{}: the batch norm + ReLU backward takes its mask from the saved output here",
            self.name()
        )))
    }

    // --- pooling ------------------------------------------------------------------------------------
    /// Max pooling without saving anything (inference).
    fn max_pool_forward(&self, x: &dyn BackendBuffer, g: &PoolGeom) -> Result<BufferRef>;
    /// Max pooling in training: y and each window's argmax, the offset (kd·kH + kh)·kW + kw of the
    /// window's first maximum (NaN wins: PyTorch's `val > max || isnan(val)` scan in d, h, w order)
    /// from the window's padded start, packed as [`PoolGeom::argmax_bytes`]-wide integers in a
    /// buffer of [`PoolGeom::argmax_words`] words.
    fn max_pool_forward_argmax(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<(BufferRef, BufferRef)>;
    /// Scatters dy to the saved argmax of each window (PyTorch's approach: no recomputation).
    fn max_pool_backward(
        &self,
        argmax: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
    ) -> Result<BufferRef>;
    fn avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef>;
    fn avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &PoolGeom,
        count_include_pad: bool,
    ) -> Result<BufferRef>;
    fn adaptive_avg_pool_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef>;
    fn adaptive_avg_pool_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &AdaptivePoolGeom,
    ) -> Result<BufferRef>;

    // --- resampling ---------------------------------------------------------------------------------
    fn upsample_trilinear_forward(
        &self,
        x: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef>;
    fn upsample_trilinear_backward(
        &self,
        dy: &dyn BackendBuffer,
        g: &UpsampleGeom,
    ) -> Result<BufferRef>;

    // --- softmax, loss ------------------------------------------------------------------------------
    /// Softmax (or log-softmax) along the axis of [outer, axis, inner].
    fn softmax_forward(&self, x: &dyn BackendBuffer, g: AxisGeom, log: bool) -> Result<BufferRef>;
    /// From the forward's output y.
    fn softmax_backward(
        &self,
        y: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AxisGeom,
        log: bool,
    ) -> Result<BufferRef>;
    /// Mean over the batch of label-smoothed cross entropy of logits [n, classes]; a one-element buffer.
    fn cross_entropy_forward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
    ) -> Result<BufferRef>;
    /// dlogits = dloss · (softmax(logits) − target) / n, dloss a one-element buffer.
    fn cross_entropy_backward(
        &self,
        logits: &dyn BackendBuffer,
        labels: &[u32],
        classes: usize,
        smoothing: f32,
        dloss: &dyn BackendBuffer,
    ) -> Result<BufferRef>;

    // --- linear algebra, attention ------------------------------------------------------------------
    fn matmul(
        &self,
        a: &dyn BackendBuffer,
        b: &dyn BackendBuffer,
        g: MatmulGeom,
    ) -> Result<BufferRef>;
    /// Returns y and the per-query log-sum-exp of the scaled scores [B, N], which is all the backward
    /// needs besides q, k, v to recompute the attention weights.
    fn attention_forward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<(BufferRef, BufferRef)>;
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &dyn BackendBuffer,
        k: &dyn BackendBuffer,
        v: &dyn BackendBuffer,
        y: &dyn BackendBuffer,
        lse: &dyn BackendBuffer,
        dy: &dyn BackendBuffer,
        g: AttentionGeom,
    ) -> Result<AttentionGrads>;

    // --- layout -------------------------------------------------------------------------------------
    /// Contiguous copy of x (with `shape`) with its dimensions reordered: y.shape[i] = shape[perm[i]].
    fn permute(&self, x: &dyn BackendBuffer, shape: &[usize], perm: &[usize]) -> Result<BufferRef>;
    /// Join tensors viewed as [outer, inner_i] along the inner axis → [outer, Σ inner_i].
    fn concat(
        &self,
        xs: &[&dyn BackendBuffer],
        outer: usize,
        inners: &[usize],
    ) -> Result<BufferRef>;
    /// The inverse of `concat`. The pieces may be views of x (the CPU backend's are: no copy, x's
    /// values stay alive while a piece does).
    fn split(&self, x: &BufferRef, outer: usize, inners: &[usize]) -> Result<Vec<BufferRef>>;
    /// Whether `split` hands out views: then producers can write into their slices of a concat's
    /// output and [`Backend::join_views`] joins them without a copy.
    fn splits_into_views(&self) -> bool {
        false
    }
    /// The buffer `xs` are the pieces of, if they are exactly the views `split(x, outer, inners)`
    /// made, in order, covering all of x: their concatenation without a copy. `None` otherwise (the
    /// caller copies with `concat`).
    fn join_views(
        &self,
        _xs: &[&dyn BackendBuffer],
        _outer: usize,
        _inners: &[usize],
    ) -> Option<BufferRef> {
        None
    }
}
