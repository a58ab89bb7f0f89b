//! The network graph: the single description of a network.
//!
//! Nodes are ops with attributes and named parameters; edges are tensors ([`ValueId`]). Every node
//! belongs to a module scope (PyTorch's module tree: `s2.pathway0_res0.branch2`), which gives parameter
//! names, the summary's rows and the units of gradient checkpointing. Shapes are inferred while the graph
//! is built, by running each op on meta tensors (no data) — the same code that runs it for real — so a
//! mis-wired network fails at build time with an error naming the node.
//!
//! From the graph come the summary ([`summary`]), the DOT export ([`dot`]), FLOPs, the memory plan and,
//! through [`crate::exec`], execution.

pub mod builder;
pub mod dot;
pub mod fuse;
pub mod summary;

pub use builder::{BatchNorm, Conv, GraphBuilder, Linear};
pub use fuse::{FusedOp, FusionPlan, WrittenConcat};

use crate::backend::BufferRef;
use crate::error::Result;
use crate::ops::{self, BatchNormArgs, ConvParams, PoolParams};
use crate::tensor::Tensor;

/// Index of a value (an edge: one tensor) in [`Graph::values`].
pub type ValueId = usize;
/// Index of a module scope in [`Graph::scopes`].
pub type ScopeId = usize;

/// How a parameter is initialised (PyTorch's defaults unless a model says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// U(−1/√fan_in, 1/√fan_in): PyTorch's kaiming_uniform(a=√5) for conv and linear weights, and
    /// their biases' default.
    FanInUniform {
        fan_in: usize,
    },
    /// N(0, std²).
    Normal {
        std: f32,
    },
    Const(f32),
}

/// A named parameter or buffer of the graph.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// Full dotted state_dict name, e.g. `s1.pathway0_stem.conv.weight`.
    pub name: String,
    pub shape: Vec<usize>,
    /// Trainable parameters get gradients; buffers (running statistics) do not.
    pub trainable: bool,
    pub init: Init,
}

/// A tensor flowing between nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub shape: Vec<usize>,
    /// The node that produces it; None for graph inputs.
    pub producer: Option<usize>,
}

/// What a node computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv(ConvParams),
    BatchNorm {
        eps: f32,
        momentum: f32,
    },
    Relu,
    MaxPool(PoolParams),
    AvgPool {
        pool: PoolParams,
        count_include_pad: bool,
    },
    AdaptiveAvgPool(Vec<usize>),
    Linear,
    Dropout {
        p: f32,
    },
    Softmax {
        dim: isize,
    },
    Add,
    Concat {
        dim: isize,
    },
    /// Target shape; one entry may be −1 (inferred), so graphs run at any batch size.
    Reshape(Vec<isize>),
    Permute(Vec<usize>),
    Flatten {
        start: isize,
        end: isize,
    },
    MulScalar(f32),
    MatMul,
    Attention {
        scale: f32,
    },
    Upsample {
        size: [usize; 3],
        align_corners: bool,
    },
}

impl Op {
    /// The short op name used in errors and DOT labels.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "conv",
            Op::BatchNorm { .. } => "batch_norm",
            Op::Relu => "relu",
            Op::MaxPool(_) => "max_pool",
            Op::AvgPool { .. } => "avg_pool",
            Op::AdaptiveAvgPool(_) => "adaptive_avg_pool",
            Op::Linear => "linear",
            Op::Dropout { .. } => "dropout",
            Op::Softmax { .. } => "softmax",
            Op::Add => "add",
            Op::Concat { .. } => "concat",
            Op::Reshape(_) => "reshape",
            Op::Permute(_) => "permute",
            Op::Flatten { .. } => "flatten",
            Op::MulScalar(_) => "mul_scalar",
            Op::MatMul => "matmul",
            Op::Attention { .. } => "attention",
            Op::Upsample { .. } => "upsample_trilinear",
        }
    }
}

/// One op applied to values and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Full dotted name: the module path for layers (`layer1.0.conv1`), or the enclosing scope's path
    /// plus the op and an index for functional ops (`layer1.0.add_0`).
    pub name: String,
    /// The PyTorch module type for layers ("Conv3d", "BatchNorm3d", "ReLU", ...); None for functional
    /// ops, which torchinfo does not list either.
    pub module_type: Option<String>,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// Indices into [`Graph::params`], in the op's order (conv/linear: weight, [bias]; batch norm:
    /// weight, bias, running_mean, running_var, num_batches_tracked).
    pub params: Vec<usize>,
    pub scope: ScopeId,
}

/// A module scope (a PyTorch container module).
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// Full dotted path ("" for the root).
    pub path: String,
    pub type_name: String,
    pub parent: Option<ScopeId>,
    pub input: Option<ValueId>,
    pub output: Option<ValueId>,
    /// Recompute this scope in backward instead of keeping its activations (mmaction2's `with_cp`).
    pub checkpoint: bool,
}

/// A whole network. Built by [`GraphBuilder`]; nodes are in execution (topological) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    pub nodes: Vec<Node>,
    pub scopes: Vec<Scope>,
    pub params: Vec<ParamSpec>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// How a node runs: mode and per-node dropout seed.
#[derive(Debug, Clone, Copy)]
pub struct RunCtx {
    pub training: bool,
    /// Update batch-norm running statistics (false when a checkpointed block is recomputed).
    pub update_stats: bool,
    pub seed: u64,
}

impl Node {
    /// Run this batch-norm node, fused with the ReLU that follows it when `relu` (the fusion pass's
    /// BN → ReLU): batch statistics in training, updating the running statistics and
    /// num_batches_tracked unless `ctx` says not to (a checkpointed block's recomputation). With
    /// `out`, the output is written there (a slice of a concat's output) and shares it.
    pub(crate) fn run_batch_norm(
        &self,
        x: &Tensor,
        params: &[&Tensor],
        ctx: &RunCtx,
        relu: bool,
        out: Option<&BufferRef>,
    ) -> Result<Tensor> {
        let Op::BatchNorm { eps, momentum } = self.op else {
            unreachable!("run_batch_norm on a {} node", self.op.name())
        };
        let args = BatchNormArgs {
            weight: Some(params[0]),
            bias: Some(params[1]),
            running_mean: (!ctx.training || ctx.update_stats).then_some(params[2]),
            running_var: (!ctx.training || ctx.update_stats).then_some(params[3]),
            training: ctx.training,
            momentum,
            eps,
        };
        let y = match (relu, out) {
            (true, Some(out)) => ops::fused::batch_norm_relu_into(x, &args, out)?,
            (true, None) => ops::fused::batch_norm_relu(x, &args)?,
            (false, out) => ops::batchnorm::batch_norm_then("batch_norm", x, &args, false, out)?,
        };
        if ctx.training && ctx.update_stats {
            let nbt = params[4];
            nbt.axpby_(1.0, &Tensor::ones(nbt.shape(), nbt.device())?, 1.0)?;
        }
        Ok(y)
    }

    /// Run this node's op on tensors (real or meta). Records on the tape like any op call.
    pub fn run(&self, inputs: &[&Tensor], params: &[&Tensor], ctx: &RunCtx) -> Result<Tensor> {
        let x = inputs[0];
        match &self.op {
            Op::Conv(p) => ops::conv(x, params[0], params.get(1).copied(), p),
            Op::BatchNorm { .. } => self.run_batch_norm(x, params, ctx, false, None),
            Op::Relu => ops::relu(x),
            Op::MaxPool(p) => ops::max_pool(x, p),
            Op::AvgPool {
                pool,
                count_include_pad,
            } => ops::avg_pool(x, pool, *count_include_pad),
            Op::AdaptiveAvgPool(out) => ops::adaptive_avg_pool(x, out),
            Op::Linear => ops::linear(x, params[0], params.get(1).copied()),
            Op::Dropout { p } => ops::dropout(x, *p, ctx.training, ctx.seed),
            Op::Softmax { dim } => ops::softmax(x, *dim),
            Op::Add => ops::add(x, inputs[1]),
            Op::Concat { dim } => ops::concat(inputs, *dim),
            Op::Reshape(shape) => ops::reshape(x, &resolve_shape(shape, x)?),
            Op::Permute(perm) => ops::permute(x, perm),
            Op::Flatten { start, end } => ops::flatten(x, *start, *end),
            Op::MulScalar(s) => ops::mul_scalar(x, *s),
            Op::MatMul => ops::matmul(x, inputs[1]),
            Op::Attention { scale } => ops::attention(x, inputs[1], inputs[2], *scale),
            Op::Upsample {
                size,
                align_corners,
            } => ops::upsample_trilinear(x, *size, *align_corners),
        }
    }
}

/// Attribute an error to graph node `node` (once: an error already naming a node keeps it).
pub(crate) fn node_err(node: &str, e: crate::Error) -> crate::Error {
    match e {
        crate::Error::Node { .. } => e,
        e => crate::Error::Node {
            node: node.to_string(),
            source: Box::new(e),
        },
    }
}

/// Resolve a −1 entry of a reshape target against x's size.
fn resolve_shape(shape: &[isize], x: &Tensor) -> Result<Vec<usize>> {
    let known: usize = shape
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let holes = shape.iter().filter(|&&d| d < 0).count();
    if holes > 1 || (holes == 1 && (known == 0 || !x.numel().is_multiple_of(known))) {
        return Err(crate::Error::shape(
            "reshape",
            format!("cannot view {:?} as {shape:?}", x.shape()),
        ));
    }
    Ok(shape
        .iter()
        .map(|&d| if d < 0 { x.numel() / known } else { d as usize })
        .collect())
}

impl Graph {
    /// Parameter count (trainable parameters only, as torchinfo's "Total params").
    pub fn num_params(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// Forward multiply-adds of one node: convolutions, linear layers, matmuls and attention (the
    /// counting convention of fvcore and of the model papers). Saturates at `u64::MAX`; the graph
    /// builder refuses a node whose count does not fit (see [`Graph::checked_node_macs`]).
    pub fn node_macs(&self, i: usize) -> u64 {
        self.checked_node_macs(i).unwrap_or(u64::MAX)
    }

    /// [`Graph::node_macs`], or `None` when it does not fit a u64.
    pub fn checked_node_macs(&self, i: usize) -> Option<u64> {
        let n = &self.nodes[i];
        let shape = |v: ValueId| &self.values[v].shape;
        // u128: each factor is below 2^64, so the products of two cannot wrap
        let prod = |s: &[usize]| s.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        let out = prod(shape(n.output))?;
        let m: u128 = match &n.op {
            Op::Conv(_) => {
                // each output element: Cin/groups · kernel volume multiply-adds
                let w = &self.params[n.params[0]].shape;
                out.checked_mul(prod(&w[1..])?)?
            }
            Op::Linear => {
                out.checked_mul(shape(n.inputs[0]).last().copied().unwrap_or(0) as u128)?
            }
            Op::MatMul => {
                let a = shape(n.inputs[0]);
                out.checked_mul(a[a.len() - 1] as u128)?
            }
            Op::Attention { .. } => {
                let (q, v) = (shape(n.inputs[0]), shape(n.inputs[2]));
                // scores: B·N·M·C, weighted sum: B·Cv·N·M
                prod(&[q[0], q[2], v[2]])?.checked_mul(q[1] as u128 + v[1] as u128)?
            }
            _ => 0,
        };
        u64::try_from(m).ok()
    }

    /// Forward multiply-adds of the whole network.
    pub fn macs(&self) -> u64 {
        (0..self.nodes.len())
            .map(|i| self.node_macs(i))
            .fold(0u64, |a, b| a.saturating_add(b))
    }

    /// For each value, the index of the last node that reads it (None: never read, or a graph output).
    pub fn last_uses(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last[v] = Some(i);
            }
        }
        for &o in &self.outputs {
            last[o] = None;
        }
        last
    }

    /// Activation memory in bytes: (training, inference). Training keeps every node's output for
    /// backward; inference frees each value after its last reader, so its figure is the peak of the
    /// live set in execution order.
    pub fn activation_bytes(&self) -> (u64, u64) {
        let bytes = |v: ValueId| self.values[v].shape.iter().product::<usize>() as u64 * 4;
        let training = self.nodes.iter().map(|n| bytes(n.output)).sum::<u64>()
            + self.inputs.iter().map(|&v| bytes(v)).sum::<u64>();
        let last = self.last_uses();
        let mut live: u64 = self.inputs.iter().map(|&v| bytes(v)).sum();
        let mut peak = live;
        for (i, n) in self.nodes.iter().enumerate() {
            live += bytes(n.output);
            peak = peak.max(live);
            let mut freed = std::collections::HashSet::new();
            for &v in &n.inputs {
                if last[v] == Some(i) && freed.insert(v) {
                    live -= bytes(v);
                }
            }
            if last[n.output].is_none() && !self.outputs.contains(&n.output) {
                live -= bytes(n.output);
            }
        }
        (training, peak)
    }

    /// The node whose name is `name`.
    pub fn node_by_name(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The value a scope or node called `name` produces (Grad-CAM picks feature maps this way).
    pub fn value_by_name(&self, name: &str) -> Option<ValueId> {
        self.node_by_name(name)
            .map(|i| self.nodes[i].output)
            .or_else(|| {
                self.scopes
                    .iter()
                    .find(|s| s.path == name)
                    .and_then(|s| s.output)
            })
    }

    /// Scopes that are children of `parent`, in creation order.
    pub fn children(&self, parent: ScopeId) -> impl Iterator<Item = ScopeId> + '_ {
        (0..self.scopes.len()).filter(move |&s| self.scopes[s].parent == Some(parent))
    }
}
