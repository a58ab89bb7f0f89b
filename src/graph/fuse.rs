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
//!
//! A chain is fused only when each intermediate value has its chain successor as its only reader and is
//! not a graph output; the executor also runs a chain unfused when one of its intermediates is asked for
//! by name (`forward_with`) or with `--check-finite` (which checks every node's own output).

use super::{Graph, Op, ValueId};
use crate::error::Result;
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
}

impl FusedOp {
    /// The chain's nodes in order (the head first).
    pub fn nodes(&self) -> Vec<usize> {
        match *self {
            FusedOp::ConvBnRelu { conv, bn, relu } => {
                std::iter::once(conv).chain(bn).chain(relu).collect()
            }
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
        }
    }
}

/// The fusion pass's answer for one mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FusionPlan {
    /// The fused chains, in graph order.
    pub chains: Vec<FusedOp>,
    /// For each node: the index in `chains` of the chain it belongs to.
    pub chain_of: Vec<Option<usize>>,
}

impl FusionPlan {
    /// No fusion (`--no-fuse`).
    pub fn none(g: &Graph) -> FusionPlan {
        FusionPlan {
            chains: vec![],
            chain_of: vec![None; g.nodes.len()],
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

    /// The inference plan that `summary` and `to_dot` show: empty when fusion is off by default
    /// (`--no-fuse`).
    pub fn shown_fusion_plan(&self) -> FusionPlan {
        if crate::exec::fuse_by_default() {
            self.fusion_plan(false)
        } else {
            FusionPlan::none(self)
        }
    }

    /// The fusion plan for training (`training = true`) or inference.
    pub fn fusion_plan(&self, training: bool) -> FusionPlan {
        let mut plan = FusionPlan::none(self);
        if training {
            return plan;
        }
        let readers = self.readers();
        // The only reader of v, if v has exactly one and is not a graph output.
        let sole_reader = |v: ValueId| -> Option<usize> {
            match readers[v].as_slice() {
                [r] if !self.outputs.contains(&v) => Some(*r),
                _ => None,
            }
        };
        for (i, n) in self.nodes.iter().enumerate() {
            if !matches!(n.op, Op::Conv(_)) {
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
            let chain = FusedOp::ConvBnRelu { conv: i, bn, relu };
            for k in chain.nodes() {
                plan.chain_of[k] = Some(plan.chains.len());
            }
            plan.chains.push(chain);
        }
        plan
    }
}

impl FusedOp {
    /// The value the chain produces (its last node's output).
    pub fn output(&self, g: &Graph) -> ValueId {
        g.nodes[*self.nodes().last().expect("a chain has nodes")].output
    }

    /// The chain's input (its head's first input).
    pub fn input(&self, g: &Graph) -> ValueId {
        g.nodes[self.nodes()[0]].inputs[0]
    }

    /// Run the chain as one op on its input, with the network's parameters (indexed as
    /// [`Graph::params`]).
    pub fn run(&self, g: &Graph, x: &Tensor, params: &[Tensor]) -> Result<Tensor> {
        match *self {
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
