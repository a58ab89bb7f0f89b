//! The forward pass Grad-CAM needs: inference semantics (batch norm on running statistics, dropout
//! off, nothing updated) *and* a tape from the feature map to the class score.
//!
//! [`Network::forward_with`] keeps a named value with `retain_grad`, but records only in training
//! mode, whose batch statistics would both change the prediction being explained and update the
//! running statistics. So this module walks the same graph with the same per-node function
//! ([`crate::graph::Node::run`]) in eval mode: the nodes up to the chosen layer run under `no_grad`;
//! the layer's value A is then made a gradient leaf, and the rest runs with recording on. The
//! parameters are used detached, so backward computes ∂score/∂A and nothing else (no parameter
//! gradients, no change to the network), and only the part of the network after A is on the tape.
//! Values are released after their last reader as in the executor.

use crate::autograd::EnableGradGuard;
use crate::error::{Error, Result};
use crate::exec::Network;
use crate::graph::{Graph, Op, RunCtx, ValueId};
use crate::tensor::Tensor;

/// What [`forward_to_layer`] returns.
pub struct CamForward {
    /// The network's output (logits, or probabilities when the graph ends in a softmax).
    pub output: Tensor,
    /// The class scores backpropagated from: the pre-softmax logits (the output itself unless the graph
    /// ends in softmax, possibly followed by reshapes).
    pub score: Tensor,
    /// The feature map A, a gradient leaf: after `score.backward_with(..)`, `features.grad()` is
    /// ∂score/∂A.
    pub features: Tensor,
}

/// The value the class score is read from: the graph output, or the input of a final softmax
/// (looking through reshape/flatten nodes after it).
pub fn score_value(g: &Graph) -> ValueId {
    let out = g.outputs[0];
    let mut v = out;
    while let Some(p) = g.values[v].producer {
        let n = &g.nodes[p];
        match n.op {
            Op::Reshape(_) | Op::Flatten { .. } => v = n.inputs[0],
            Op::Softmax { .. } => return n.inputs[0],
            _ => break,
        }
    }
    out
}

/// The value of `layer` (a node or module name), with an error listing the top-level modules.
pub fn layer_value(g: &Graph, layer: &str) -> Result<ValueId> {
    let v = g.value_by_name(layer).ok_or_else(|| {
        let top: Vec<&str> = g
            .scopes
            .iter()
            .filter(|s| s.parent == Some(0))
            .map(|s| s.path.as_str())
            .collect();
        Error::arg(
            "explain",
            format!(
                "network '{}' has no node or module named '{layer}' (top-level modules: {})",
                g.name,
                top.join(", ")
            ),
        )
    })?;
    if g.values[v].producer.is_none() {
        return Err(Error::arg(
            "explain",
            format!("'{layer}' is a network input, not a feature layer"),
        ));
    }
    Ok(v)
}

/// Run `net` (its parameters as they are, in inference semantics whatever its mode) on `inputs`,
/// recording from the value of `layer` on: see the module docs.
pub fn forward_to_layer(net: &Network, inputs: &[&Tensor], layer: &str) -> Result<CamForward> {
    let g = net.graph();
    if inputs.len() != g.inputs.len() {
        return Err(Error::arg(
            "explain",
            format!(
                "network '{}' takes {} inputs, got {}",
                g.name,
                g.inputs.len(),
                inputs.len()
            ),
        ));
    }
    let a = layer_value(g, layer)?;
    let a_node = g.values[a].producer.expect("checked by layer_value");
    let score = score_value(g);
    let out = g.outputs[0];
    let sd = net.state_dict(); // detached, sharing storage
    let params: Vec<Tensor> = g.params.iter().map(|p| sd[&p.name].clone()).collect();
    let last = g.last_uses();
    let keep = |v: ValueId| v == a || v == score || v == out;
    let mut values: Vec<Option<Tensor>> = vec![None; g.values.len()];
    for (&v, &t) in g.inputs.iter().zip(inputs) {
        values[v] = Some(t.detach());
    }
    let ctx = RunCtx {
        training: false,
        update_stats: false,
        seed: 0,
    };
    let mut grad_guard = None;
    let mut guard_off = Some(crate::NoGradGuard::new());
    for (i, n) in g.nodes.iter().enumerate() {
        let xs: Vec<&Tensor> = n
            .inputs
            .iter()
            .map(|&v| {
                values[v].as_ref().ok_or_else(|| {
                    Error::arg(
                        "explain",
                        format!("node '{}': input released before use", n.name),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let ps: Vec<&Tensor> = n.params.iter().map(|&p| &params[p]).collect();
        let y = n.run(&xs, &ps, &ctx).map_err(|e| Error::Node {
            node: n.name.clone(),
            source: Box::new(e),
        })?;
        values[n.output] = Some(y);
        if i == a_node {
            // A becomes the leaf the tape starts from.
            let leaf = values[a]
                .as_ref()
                .expect("just computed")
                .detach()
                .with_grad();
            values[a] = Some(leaf);
            guard_off = None;
            grad_guard = Some(EnableGradGuard::new());
        }
        for &v in &n.inputs {
            if !keep(v) && last[v].is_some_and(|l| l <= i) {
                values[v] = None;
            }
        }
        if !keep(n.output) && last[n.output].is_none() {
            values[n.output] = None;
        }
    }
    drop(guard_off);
    drop(grad_guard);
    let take = |v: ValueId| values[v].clone().expect("computed");
    let (output, score, features) = (take(out), take(score), take(a));
    if !score.requires_grad() {
        return Err(Error::arg(
            "explain",
            format!(
                "the class scores of network '{}' do not depend on layer '{layer}'",
                g.name
            ),
        ));
    }
    Ok(CamForward {
        output,
        score,
        features,
    })
}
