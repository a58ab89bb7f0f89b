//! The fusion pass: which chains of nodes run as one op, for both backends.
//!
//! The graph itself is not rewritten (parameter names, the summary's rows, checkpointed scopes and
//! Grad-CAM's layer names stay PyTorch's); the pass returns a [`FusionPlan`] that the executor follows
//! and that `vidgrad summary` and the DOT export show. Fusions so far:
//!
//! - **eval: conv → batch norm [→ ReLU]** (and conv → ReLU): the batch norm's running statistics are
//!   folded into the convolution's weights and bias for each forward (W·γ/√(σ²+ε) per output channel,
//!   (b − μ)·γ/√(σ²+ε) + β), and the ReLU is applied in place on the convolution's output, so the chain
//!   makes one buffer where it made three.
//! - **training and eval: batch norm → ReLU** (one normalising pass that applies the ReLU, one backward
//!   that masks dy by the saved output inside the batch norm's passes; `ops::fused::batch_norm_relu`)
//!   and **residual add → ReLU** (`ops::fused::add_relu`). In eval, a batch norm that follows a
//!   convolution is folded into it first; these take the rest.
//!
//! - **concat without copies**: a concat whose every input is made by a BN → ReLU chain read by
//!   nothing else gets its output allocated before the first of them runs; each chain writes into
//!   its slice (a view, on a backend whose `split` hands out views: the CPU), so the concat copies
//!   nothing and the forward never holds the chains' outputs and the concat's output at once
//!   (where a backend keeps a BN → ReLU's output for its backward, not twice either). ECO-Lite's
//!   inception blocks in training.
//!
//! Not chains but decided by the executor as it runs: a ReLU whose input no later node reads and no
//! tensor saved for backward shares is computed in place (`ops::elementwise::relu_consuming`).
//!
//! A chain is fused only when each intermediate value has its chain successor as its only reader and is
//! not a graph output; the executor also runs a chain unfused when one of its intermediates is asked for
//! by name (`forward_with`) or with `--check-finite` (which checks every node's own output).

use super::{Graph, Op, RunCtx, ValueId};
use crate::backend::BufferRef;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// One fused chain, run at its head node (the first of `nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FusedOp {
    /// Eval: conv with a following batch norm folded in (if `bn`) and a ReLU epilogue (if `relu`).
    ConvBnRelu {
        conv: usize,
        bn: Option<usize>,
        relu: Option<usize>,
    },
    /// Batch norm (batch statistics in training, running ones in eval) → ReLU.
    BnRelu { bn: usize, relu: usize },
    /// add → ReLU (a residual block's end).
    AddRelu { add: usize, relu: usize },
}

impl FusedOp {
    /// The chain's nodes in order (the head first).
    pub fn nodes(&self) -> Vec<usize> {
        match *self {
            FusedOp::ConvBnRelu { conv, bn, relu } => {
                std::iter::once(conv).chain(bn).chain(relu).collect()
            }
            FusedOp::BnRelu { bn, relu } => vec![bn, relu],
            FusedOp::AddRelu { add, relu } => vec![add, relu],
        }
    }
    /// A short label: "conv+bn+relu".
    pub fn label(&self) -> String {
        match self {
            FusedOp::ConvBnRelu { bn, relu, .. } => {
                let mut s = "conv".to_string();
                if bn.is_some() {
                    s += "+bn(folded)";
                }
                if relu.is_some() {
                    s += "+relu";
                }
                s
            }
            FusedOp::BnRelu { .. } => "bn+relu".into(),
            FusedOp::AddRelu { .. } => "add+relu".into(),
        }
    }
}

/// A concat whose inputs are written into their slices of its output by the chains that make them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenConcat {
    /// The concat node.
    pub concat: usize,
    /// For each input in order, the head node of the BN → ReLU chain that makes it.
    pub producers: Vec<usize>,
}

/// The fusion pass's answer for one mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FusionPlan {
    /// The fused chains, in graph order.
    pub chains: Vec<FusedOp>,
    /// For each node: the index in `chains` of the chain it belongs to.
    pub chain_of: Vec<Option<usize>>,
    /// The concats its producers write into, in graph order.
    pub written_concats: Vec<WrittenConcat>,
}

impl FusionPlan {
    /// No fusion (`--no-fuse`).
    pub fn none(g: &Graph) -> FusionPlan {
        FusionPlan {
            chains: vec![],
            chain_of: vec![None; g.nodes.len()],
            written_concats: vec![],
        }
    }
    /// The chain whose head is node `i`.
    pub fn head(&self, i: usize) -> Option<&FusedOp> {
        self.chain_of
            .get(i)
            .copied()
            .flatten()
            .map(|c| &self.chains[c])
            .filter(|c| c.nodes()[0] == i)
    }
    /// Whether node `i` is a concat its producers write.
    pub fn written(&self, i: usize) -> bool {
        self.written_concats.iter().any(|w| w.concat == i)
    }
    /// Whether node `i` runs inside a chain headed by another node.
    pub fn absorbed(&self, i: usize) -> bool {
        self.chain_of.get(i).copied().flatten().is_some() && self.head(i).is_none()
    }
}

impl Graph {
    /// The readers of each value (node indices, in order; a node reading a value twice counts twice).
    fn readers(&self) -> Vec<Vec<usize>> {
        let mut r = vec![vec![]; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                r[v].push(i);
            }
        }
        r
    }

    /// The plan (inference with `training` false) that `summary` and `to_dot` show: empty when fusion
    /// is off by default (`--no-fuse`).
    pub fn shown_fusion_plan(&self, training: bool) -> FusionPlan {
        if crate::exec::fuse_by_default() {
            self.fusion_plan(training)
        } else {
            FusionPlan::none(self)
        }
    }

    /// The fusion plan for training (`training = true`) or inference.
    pub fn fusion_plan(&self, training: bool) -> FusionPlan {
        let mut plan = FusionPlan::none(self);
        let readers = self.readers();
        // The only reader of v, if v has exactly one and is not a graph output.
        let sole_reader = |v: ValueId| -> Option<usize> {
            match readers[v].as_slice() {
                [r] if !self.outputs.contains(&v) => Some(*r),
                _ => None,
            }
        };
        let add = |plan: &mut FusionPlan, chain: FusedOp| {
            for k in chain.nodes() {
                plan.chain_of[k] = Some(plan.chains.len());
            }
            plan.chains.push(chain);
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if training || !matches!(n.op, Op::Conv(_)) {
                continue;
            }
            let mut bn = None;
            let mut tail = n.output;
            if let Some(j) = sole_reader(tail) {
                if matches!(self.nodes[j].op, Op::BatchNorm { .. })
                    && self.nodes[j].inputs[0] == tail
                {
                    bn = Some(j);
                    tail = self.nodes[j].output;
                }
            }
            let relu = sole_reader(tail).filter(|&k| self.nodes[k].op == Op::Relu);
            if bn.is_none() && relu.is_none() {
                continue;
            }
            add(&mut plan, FusedOp::ConvBnRelu { conv: i, bn, relu });
        }
        // BN → ReLU and add → ReLU among the nodes left.
        for (i, n) in self.nodes.iter().enumerate() {
            if plan.chain_of[i].is_some() || !matches!(n.op, Op::BatchNorm { .. } | Op::Add) {
                continue;
            }
            let Some(relu) = sole_reader(n.output).filter(|&k| self.nodes[k].op == Op::Relu) else {
                continue;
            };
            if plan.chain_of[relu].is_some() {
                continue;
            }
            add(
                &mut plan,
                match n.op {
                    Op::Add => FusedOp::AddRelu { add: i, relu },
                    _ => FusedOp::BnRelu { bn: i, relu },
                },
            );
        }
        // In graph order (the numbers `summary` shows).
        let mut order: Vec<usize> = (0..plan.chains.len()).collect();
        order.sort_by_key(|&c| plan.chains[c].nodes()[0]);
        let chains: Vec<FusedOp> = order.iter().map(|&c| plan.chains[c].clone()).collect();
        let mut sorted = FusionPlan::none(self);
        for c in chains {
            add(&mut sorted, c);
        }
        sorted.written_concats = self.written_concats(&sorted, sole_reader);
        sorted
    }

    /// The concats of `plan` whose inputs are distinct, each made by a BN → ReLU chain whose output
    /// only the concat reads, joined along a dim after the batch (so a runtime batch size only
    /// changes the slices' count).
    fn written_concats(
        &self,
        plan: &FusionPlan,
        sole_reader: impl Fn(ValueId) -> Option<usize>,
    ) -> Vec<WrittenConcat> {
        let mut out = vec![];
        for (i, n) in self.nodes.iter().enumerate() {
            let Op::Concat { dim } = n.op else { continue };
            let rank = self.values[n.output].shape.len() as isize;
            let after_batch = (1..rank).contains(&if dim < 0 { dim + rank } else { dim });
            let distinct = (1..n.inputs.len()).all(|k| !n.inputs[..k].contains(&n.inputs[k]));
            if !after_batch || !distinct {
                continue;
            }
            let producer = |v: ValueId| -> Option<usize> {
                let made_by = self.values[v].producer?;
                let chain = &plan.chains[plan.chain_of[made_by]?];
                let head = chain.nodes()[0];
                (matches!(chain, FusedOp::BnRelu { .. })
                    && chain.output(self) == v
                    && sole_reader(v) == Some(i))
                .then_some(head)
            };
            if let Some(producers) = n.inputs.iter().map(|&v| producer(v)).collect() {
                out.push(WrittenConcat {
                    concat: i,
                    producers,
                });
            }
        }
        out
    }
}

impl FusedOp {
    /// The value the chain produces (its last node's output).
    pub fn output(&self, g: &Graph) -> ValueId {
        g.nodes[*self.nodes().last().expect("a chain has nodes")].output
    }

    /// The chain's inputs (its head's inputs).
    pub fn inputs<'g>(&self, g: &'g Graph) -> &'g [ValueId] {
        &g.nodes[self.nodes()[0]].inputs
    }

    /// Run the chain as one op on its inputs, with the network's parameters (indexed as
    /// [`Graph::params`]), recording one tape entry when gradients are on (the BN and add chains; the
    /// conv chain is inference only). With `out` (a BN → ReLU chain only), the output is written
    /// into that buffer: the chain's slice of a [`WrittenConcat`]'s output.
    pub fn run(
        &self,
        g: &Graph,
        xs: &[&Tensor],
        params: &[Tensor],
        ctx: &RunCtx,
        out: Option<&BufferRef>,
    ) -> Result<Tensor> {
        let x = xs[0];
        if out.is_some() && !matches!(self, FusedOp::BnRelu { .. }) {
            return Err(Error::arg(
                "fusion",
                format!(
                    "{} writes a new buffer; only a bn+relu chain writes into a given one",
                    self.label()
                ),
            ));
        }
        match *self {
            FusedOp::BnRelu { bn, .. } => {
                let n = &g.nodes[bn];
                let ps: Vec<&Tensor> = n.params.iter().map(|&p| &params[p]).collect();
                n.run_batch_norm(x, &ps, ctx, true, out)
            }
            FusedOp::AddRelu { .. } => ops::fused::add_relu(x, xs[1]),
            FusedOp::ConvBnRelu { conv, bn, relu } => {
                let n = &g.nodes[conv];
                let Op::Conv(p) = &n.op else {
                    unreachable!("a conv chain starts at a conv node")
                };
                let bn = bn.map(|j| {
                    let b = &g.nodes[j];
                    let eps = match b.op {
                        Op::BatchNorm { eps, .. } => eps,
                        _ => unreachable!("a conv chain's second node is a batch norm"),
                    };
                    ops::fused::FoldedBn {
                        weight: &params[b.params[0]],
                        bias: &params[b.params[1]],
                        running_mean: &params[b.params[2]],
                        running_var: &params[b.params[3]],
                        eps,
                    }
                });
                ops::fused::conv_bn_relu_eval(
                    x,
                    &params[n.params[0]],
                    n.params.get(1).map(|&b| &params[b]),
                    p,
                    bn,
                    relu.is_some(),
                )
            }
        }
    }
}
