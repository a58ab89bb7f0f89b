//! Building a graph: models read like their papers' layer tables.
//!
//! ```
//! # use vidgrad::graph::{GraphBuilder, Conv, BatchNorm};
//! # use vidgrad::ops::PoolParams;
//! let mut g = GraphBuilder::new("tiny");
//! let x = g.input("input", &[2, 3, 8, 32, 32])?;
//! let y = g.module("stem", "Stem", x, |g, x| {
//!     let x = g.conv("conv", x, Conv::new(16, &[3, 7, 7]).stride(&[1, 2, 2]).padding(&[1, 3, 3]).no_bias())?;
//!     let x = g.batch_norm("bn", x, BatchNorm::new())?;
//!     let x = g.relu("relu", x)?;
//!     g.max_pool("pool", x, PoolParams::new(&[1, 3, 3]).stride(&[1, 2, 2]).padding(&[0, 1, 1]))
//! })?;
//! let graph = g.finish(&[y])?;
//! assert_eq!(graph.values[y].shape, vec![2, 16, 8, 8, 8]);
//! # Ok::<(), vidgrad::Error>(())
//! ```
//!
//! Every layer method names its module (the PyTorch attribute name); parameters get the full dotted path
//! of the enclosing scopes. Each op runs on meta tensors as it is added, so shapes are known and checked
//! at once, and an error names the node.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::device::Device;
use crate::error::Error;
use crate::no_grad;

/// A convolution layer: output channels, kernel and options (input channels come from the input).
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    pub out_channels: usize,
    pub kernel: Vec<usize>,
    pub params: ConvParams,
    pub bias: bool,
}

impl Conv {
    /// With a bias, as PyTorch's default.
    pub fn new(out_channels: usize, kernel: &[usize]) -> Self {
        Conv {
            out_channels,
            kernel: kernel.to_vec(),
            params: ConvParams::default(),
            bias: true,
        }
    }
    pub fn stride(mut self, s: &[usize]) -> Self {
        self.params.stride = s.to_vec();
        self
    }
    pub fn padding(mut self, p: &[usize]) -> Self {
        self.params.padding = p.to_vec();
        self
    }
    pub fn dilation(mut self, d: &[usize]) -> Self {
        self.params.dilation = d.to_vec();
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.params.groups = g;
        self
    }
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
    pub fn bias(mut self, b: bool) -> Self {
        self.bias = b;
        self
    }
}

/// A batch-norm layer (affine, with running statistics, as PyTorch's default).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    pub eps: f32,
    pub momentum: f32,
    /// Initial value of the scale γ (1 by default; 0 for zero-initialised residual branches).
    pub weight_init: f32,
}

impl BatchNorm {
    pub fn new() -> Self {
        BatchNorm {
            eps: 1e-5,
            momentum: 0.1,
            weight_init: 1.0,
        }
    }
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
    pub fn momentum(mut self, m: f32) -> Self {
        self.momentum = m;
        self
    }
    pub fn zero_init(mut self) -> Self {
        self.weight_init = 0.0;
        self
    }
}

impl Default for BatchNorm {
    fn default() -> Self {
        Self::new()
    }
}

/// A fully connected layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub out_features: usize,
    pub bias: bool,
}

impl Linear {
    pub fn new(out_features: usize) -> Self {
        Linear {
            out_features,
            bias: true,
        }
    }
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// Assembles a [`Graph`]; see the module docs.
pub struct GraphBuilder {
    graph: Graph,
    /// A meta tensor per value and per parameter: shapes, no data.
    meta: Vec<Tensor>,
    meta_params: Vec<Tensor>,
    stack: Vec<ScopeId>,
    param_names: HashSet<String>,
    node_names: HashSet<String>,
    /// Per scope and functional op: how many were added (for names like `add_1`).
    counters: HashMap<(ScopeId, &'static str), usize>,
    /// Multiply-adds of the nodes so far (checked: it must fit a u64).
    macs: u64,
}

fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => prefix.to_string(),
        _ => format!("{prefix}.{name}"),
    }
}

fn dims_suffix(rank: usize) -> &'static str {
    match rank {
        5 => "3d",
        4 => "2d",
        _ => "1d",
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        let root = Scope {
            path: String::new(),
            type_name: name.to_string(),
            parent: None,
            input: None,
            output: None,
            checkpoint: false,
        };
        GraphBuilder {
            graph: Graph {
                name: name.to_string(),
                values: vec![],
                nodes: vec![],
                scopes: vec![root],
                params: vec![],
                inputs: vec![],
                outputs: vec![],
            },
            meta: vec![],
            meta_params: vec![],
            stack: vec![0],
            param_names: HashSet::new(),
            node_names: HashSet::new(),
            macs: 0,
            counters: HashMap::new(),
        }
    }

    fn scope(&self) -> ScopeId {
        *self.stack.last().unwrap()
    }

    fn path(&self, name: &str) -> String {
        join(&self.graph.scopes[self.scope()].path, name)
    }

    /// The shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.graph.values[v].shape
    }

    /// A graph input.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Result<ValueId> {
        let t = Tensor::zeros(shape, Device::Meta).map_err(|e| node_err(name, e))?;
        let v = self.graph.values.len();
        self.graph.values.push(Value {
            shape: shape.to_vec(),
            producer: None,
        });
        self.meta.push(t);
        self.graph.inputs.push(v);
        if self.graph.scopes[0].input.is_none() {
            self.graph.scopes[0].input = Some(v);
        }
        Ok(v)
    }

    /// A module scope named `name` of PyTorch type `type_name` (e.g. "ResBlock") wrapping `body`.
    pub fn module<F>(&mut self, name: &str, type_name: &str, x: ValueId, body: F) -> Result<ValueId>
    where
        F: FnOnce(&mut Self, ValueId) -> Result<ValueId>,
    {
        self.module_checkpointed(name, type_name, x, false, body)
    }

    /// As [`GraphBuilder::module`]; with `checkpoint`, the executor recomputes this block in backward
    /// instead of keeping its activations.
    pub fn module_checkpointed<F>(
        &mut self,
        name: &str,
        type_name: &str,
        x: ValueId,
        checkpoint: bool,
        body: F,
    ) -> Result<ValueId>
    where
        F: FnOnce(&mut Self, ValueId) -> Result<ValueId>,
    {
        let id = self.graph.scopes.len();
        self.graph.scopes.push(Scope {
            path: self.path(name),
            type_name: type_name.to_string(),
            parent: Some(self.scope()),
            input: Some(x),
            output: None,
            checkpoint,
        });
        self.stack.push(id);
        let out = body(self, x);
        self.stack.pop();
        let out = out?;
        self.graph.scopes[id].output = Some(out);
        Ok(out)
    }

    fn add_param(
        &mut self,
        name: String,
        shape: Vec<usize>,
        trainable: bool,
        init: Init,
    ) -> Result<usize> {
        if !self.param_names.insert(name.clone()) {
            return Err(node_err(
                &name,
                Error::arg("graph", "a parameter with this name already exists"),
            ));
        }
        self.meta_params.push(Tensor::zeros(&shape, Device::Meta)?);
        self.graph.params.push(ParamSpec {
            name,
            shape,
            trainable,
            init,
        });
        Ok(self.graph.params.len() - 1)
    }

    /// Add a node and infer its output shape by running it on meta tensors.
    fn push(
        &mut self,
        name: String,
        module_type: Option<String>,
        op: Op,
        inputs: &[ValueId],
        params: Vec<usize>,
    ) -> Result<ValueId> {
        if !self.node_names.insert(name.clone()) {
            return Err(node_err(
                &name,
                Error::arg("graph", "a node with this name already exists"),
            ));
        }
        let node = Node {
            name,
            module_type,
            op,
            inputs: inputs.to_vec(),
            output: self.graph.values.len(),
            params,
            scope: self.scope(),
        };
        let xs: Vec<&Tensor> = inputs.iter().map(|&v| &self.meta[v]).collect();
        let ps: Vec<&Tensor> = node.params.iter().map(|&p| &self.meta_params[p]).collect();
        let ctx = RunCtx {
            training: false,
            update_stats: false,
            seed: 0,
        };
        let y = no_grad(|| node.run(&xs, &ps, &ctx)).map_err(|e| node_err(&node.name, e))?;
        // shapes and counts are bounded so that no size, byte or FLOP figure of the graph wraps
        crate::tensor::checked_numel("graph", y.shape()).map_err(|e| node_err(&node.name, e))?;
        let name = node.name.clone();
        self.graph.values.push(Value {
            shape: y.shape().to_vec(),
            producer: Some(self.graph.nodes.len()),
        });
        self.meta.push(y);
        self.graph.nodes.push(node);
        let i = self.graph.nodes.len() - 1;
        let total = self
            .graph
            .checked_node_macs(i)
            .and_then(|m| self.macs.checked_add(m));
        if let Some(t) = total {
            self.macs = t;
        } else {
            let n = &self.graph.nodes[i];
            let inputs: Vec<&[usize]> = n.inputs.iter().map(|&v| self.shape(v)).collect();
            return Err(node_err(
                &name,
                Error::arg(
                    "graph",
                    format!(
                        "the multiply-add count overflows a u64 (inputs {inputs:?}, output {:?}): the shapes are too large",
                        self.graph.values[n.output].shape
                    ),
                ),
            ));
        }
        Ok(self.graph.values.len() - 1)
    }

    fn functional(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let key = (self.scope(), op.name());
        let k = *self
            .counters
            .entry(key)
            .and_modify(|c| *c += 1)
            .or_insert(0);
        let name = self.path(&format!("{}_{k}", op.name()));
        self.push(name, None, op, inputs, vec![])
    }

    // --- layers (PyTorch modules) -------------------------------------------------------------------

    /// Conv2d or Conv3d (by the input's rank), PyTorch's default initialisation.
    pub fn conv(&mut self, name: &str, x: ValueId, c: Conv) -> Result<ValueId> {
        let path = self.path(name);
        let xs = self.shape(x).to_vec();
        if xs.len() < 3 {
            return Err(node_err(
                &path,
                Error::shape("conv", format!("input {xs:?} has no channel/spatial dims")),
            ));
        }
        let groups = c.params.groups.max(1);
        let mut wshape = vec![c.out_channels, xs[1] / groups];
        wshape.extend_from_slice(&c.kernel);
        let fan_in: usize = wshape[1..].iter().product();
        let mut params = vec![self.add_param(
            join(&path, "weight"),
            wshape,
            true,
            Init::FanInUniform { fan_in },
        )?];
        if c.bias {
            params.push(self.add_param(
                join(&path, "bias"),
                vec![c.out_channels],
                true,
                Init::FanInUniform { fan_in },
            )?);
        }
        let ty = format!("Conv{}", dims_suffix(xs.len()));
        self.push(path, Some(ty), Op::Conv(c.params), &[x], params)
    }

    /// BatchNorm1d/2d/3d (by the input's rank) with running statistics.
    pub fn batch_norm(&mut self, name: &str, x: ValueId, bn: BatchNorm) -> Result<ValueId> {
        let path = self.path(name);
        let xs = self.shape(x).to_vec();
        let c = *xs.get(1).ok_or_else(|| {
            node_err(
                &path,
                Error::shape("batch_norm", format!("input {xs:?} has no channel dim")),
            )
        })?;
        let params = vec![
            self.add_param(
                join(&path, "weight"),
                vec![c],
                true,
                Init::Const(bn.weight_init),
            )?,
            self.add_param(join(&path, "bias"), vec![c], true, Init::Const(0.0))?,
            self.add_param(
                join(&path, "running_mean"),
                vec![c],
                false,
                Init::Const(0.0),
            )?,
            self.add_param(join(&path, "running_var"), vec![c], false, Init::Const(1.0))?,
            self.add_param(
                join(&path, "num_batches_tracked"),
                vec![1],
                false,
                Init::Const(0.0),
            )?,
        ];
        let ty = format!("BatchNorm{}", dims_suffix(xs.len()));
        self.push(
            path,
            Some(ty),
            Op::BatchNorm {
                eps: bn.eps,
                momentum: bn.momentum,
            },
            &[x],
            params,
        )
    }

    pub fn relu(&mut self, name: &str, x: ValueId) -> Result<ValueId> {
        let path = self.path(name);
        self.push(path, Some("ReLU".into()), Op::Relu, &[x], vec![])
    }

    pub fn max_pool(&mut self, name: &str, x: ValueId, p: PoolParams) -> Result<ValueId> {
        let path = self.path(name);
        let ty = format!("MaxPool{}", dims_suffix(self.shape(x).len()));
        self.push(path, Some(ty), Op::MaxPool(p), &[x], vec![])
    }

    pub fn avg_pool(
        &mut self,
        name: &str,
        x: ValueId,
        p: PoolParams,
        count_include_pad: bool,
    ) -> Result<ValueId> {
        let path = self.path(name);
        let ty = format!("AvgPool{}", dims_suffix(self.shape(x).len()));
        self.push(
            path,
            Some(ty),
            Op::AvgPool {
                pool: p,
                count_include_pad,
            },
            &[x],
            vec![],
        )
    }

    pub fn adaptive_avg_pool(
        &mut self,
        name: &str,
        x: ValueId,
        output: &[usize],
    ) -> Result<ValueId> {
        let path = self.path(name);
        let ty = format!("AdaptiveAvgPool{}", dims_suffix(self.shape(x).len()));
        self.push(
            path,
            Some(ty),
            Op::AdaptiveAvgPool(output.to_vec()),
            &[x],
            vec![],
        )
    }

    pub fn linear(&mut self, name: &str, x: ValueId, l: Linear) -> Result<ValueId> {
        let path = self.path(name);
        let fan_in = *self.shape(x).last().unwrap();
        let mut params = vec![self.add_param(
            join(&path, "weight"),
            vec![l.out_features, fan_in],
            true,
            Init::FanInUniform { fan_in },
        )?];
        if l.bias {
            params.push(self.add_param(
                join(&path, "bias"),
                vec![l.out_features],
                true,
                Init::FanInUniform { fan_in },
            )?);
        }
        self.push(path, Some("Linear".into()), Op::Linear, &[x], params)
    }

    pub fn dropout(&mut self, name: &str, x: ValueId, p: f32) -> Result<ValueId> {
        let path = self.path(name);
        self.push(
            path,
            Some("Dropout".into()),
            Op::Dropout { p },
            &[x],
            vec![],
        )
    }

    pub fn softmax(&mut self, name: &str, x: ValueId, dim: isize) -> Result<ValueId> {
        let path = self.path(name);
        self.push(
            path,
            Some("Softmax".into()),
            Op::Softmax { dim },
            &[x],
            vec![],
        )
    }

    // --- functional ops (not modules) --------------------------------------------------------------

    pub fn add(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.functional(Op::Add, &[a, b])
    }
    pub fn concat(&mut self, xs: &[ValueId], dim: isize) -> Result<ValueId> {
        self.functional(Op::Concat { dim }, xs)
    }
    /// Reshape; one entry may be −1. Use −1 for the batch dim so the graph runs at any batch size.
    pub fn reshape(&mut self, x: ValueId, shape: &[isize]) -> Result<ValueId> {
        self.functional(Op::Reshape(shape.to_vec()), &[x])
    }
    pub fn permute(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        self.functional(Op::Permute(perm.to_vec()), &[x])
    }
    pub fn flatten(&mut self, x: ValueId, start: isize, end: isize) -> Result<ValueId> {
        self.functional(Op::Flatten { start, end }, &[x])
    }
    pub fn mul_scalar(&mut self, x: ValueId, s: f32) -> Result<ValueId> {
        self.functional(Op::MulScalar(s), &[x])
    }
    pub fn matmul(&mut self, a: ValueId, b: ValueId) -> Result<ValueId> {
        self.functional(Op::MatMul, &[a, b])
    }
    pub fn attention(&mut self, q: ValueId, k: ValueId, v: ValueId, scale: f32) -> Result<ValueId> {
        self.functional(Op::Attention { scale }, &[q, k, v])
    }
    pub fn upsample_trilinear(
        &mut self,
        x: ValueId,
        size: [usize; 3],
        align_corners: bool,
    ) -> Result<ValueId> {
        self.functional(
            Op::Upsample {
                size,
                align_corners,
            },
            &[x],
        )
    }

    /// Change how a parameter (by full name) is initialised.
    pub fn set_init(&mut self, name: &str, init: Init) -> Result<()> {
        let p = self
            .graph
            .params
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| Error::arg("graph", format!("set_init: no parameter named '{name}'")))?;
        p.init = init;
        Ok(())
    }

    /// The finished graph, with `outputs` as its results.
    pub fn finish(mut self, outputs: &[ValueId]) -> Result<Graph> {
        if outputs.is_empty() {
            return Err(Error::arg("graph", "a graph needs at least one output"));
        }
        self.graph.outputs = outputs.to_vec();
        self.graph.scopes[0].output = Some(outputs[0]);
        Ok(self.graph)
    }
}
