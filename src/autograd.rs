//! Tape autograd.
//!
//! When an op runs with grad enabled and one of its inputs requires grad, it records a [`Node`] on the
//! tape: the op's name, a sequence number (its position on the tape), an edge to each input and a
//! backward closure holding the tensors the gradient needs. The output keeps its node alive; when the last
//! tensor that can reach a node is dropped, the node and everything it saved go with it, so an abandoned
//! forward pass leaks nothing.
//!
//! `backward` replays the tape backwards: it collects the nodes reachable from the root, runs them in
//! decreasing sequence number (a node always comes after the nodes of its inputs), sums the gradients of
//! tensors that feed several consumers (residual adds, Inception branches, concat) and hands leaves
//! their gradients. Each backward closure is consumed when it runs, which releases its saved tensors.
//!
//! [`no_grad`] (or [`NoGradGuard`]) switches recording off: inference keeps no activations.
//!
//! Tape entries recorded while a [`LabelGuard`] is alive carry that label (the graph node being run,
//! set by the executor under `--check-finite`); `backward` checks the gradients such entries produce and
//! fails naming the node at the first that is not finite, as `torch.autograd.detect_anomaly` does.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::BinaryOp;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A gradient computation: given the output's gradient, the gradient of each input (None where an
/// input needs none or the op passes nothing to it).
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send>;

/// Where a tensor's gradient is kept: leaves always, other tensors when retained.
#[derive(Default)]
pub struct GradCell {
    grad: Mutex<Option<Tensor>>,
    retain: AtomicBool,
}

impl GradCell {
    pub(crate) fn get(&self) -> Option<Tensor> {
        self.grad.lock().unwrap().clone()
    }
    pub(crate) fn clear(&self) {
        *self.grad.lock().unwrap() = None;
    }
    pub(crate) fn set_retain(&self) {
        self.retain.store(true, Ordering::Relaxed);
    }
    fn retained(&self) -> bool {
        self.retain.load(Ordering::Relaxed)
    }
    fn accumulate(&self, g: &Tensor) -> Result<()> {
        let mut slot = self.grad.lock().unwrap();
        *slot = Some(match slot.take() {
            None => g.clone(),
            Some(old) => add_raw(&old, g)?,
        });
        Ok(())
    }
}

/// Autograd state of a tensor that requires grad.
pub(crate) struct AutogradMeta {
    /// The op that produced the tensor; None for leaves.
    pub(crate) node: Option<Arc<Node>>,
    pub(crate) cell: Arc<GradCell>,
}

impl AutogradMeta {
    pub(crate) fn leaf() -> Self {
        AutogradMeta {
            node: None,
            cell: Arc::new(GradCell::default()),
        }
    }
}

/// Where an input's gradient goes: on to the node that made it, or into a leaf's cell.
struct Edge {
    node: Option<Arc<Node>>,
    cell: Arc<GradCell>,
    shape: Vec<usize>,
}

/// The graph node a tape entry was recorded for (see [`LabelGuard`]).
#[derive(Debug)]
pub(crate) struct NodeLabel {
    /// The graph node's full name, e.g. `layer1.0.conv1`.
    pub(crate) name: String,
    /// The graph op, e.g. "conv".
    pub(crate) op: &'static str,
}

/// One entry of the tape.
pub(crate) struct Node {
    seq: u64,
    op: &'static str,
    /// Set only under a [`LabelGuard`]: then backward checks that this entry's gradients are finite.
    label: Option<Arc<NodeLabel>>,
    inputs: Vec<Option<Edge>>,
    out_cell: Arc<GradCell>,
    backward: Mutex<Option<BackwardFn>>,
}

static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
    static LABEL: RefCell<Option<Arc<NodeLabel>>> = const { RefCell::new(None) };
}

/// Labels every tape entry recorded on this thread until dropped (then restores the previous label),
/// so that backward checks their gradients: the executor's `--check-finite` mode.
pub(crate) struct LabelGuard {
    prev: Option<Arc<NodeLabel>>,
}

impl LabelGuard {
    pub(crate) fn new(name: &str, op: &'static str) -> Self {
        let label = Arc::new(NodeLabel {
            name: name.to_string(),
            op,
        });
        LabelGuard {
            prev: LABEL.with(|l| l.replace(Some(label))),
        }
    }
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        LABEL.with(|l| *l.borrow_mut() = self.prev.take());
    }
}

/// How many values of a tensor are NaN, +Inf and −Inf, and where the first of them is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NonFinite {
    pub(crate) nan: usize,
    pub(crate) pos_inf: usize,
    pub(crate) neg_inf: usize,
    /// Multi-index of the first non-finite value.
    pub(crate) first: Vec<usize>,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            (self.nan, "NaN"),
            (self.pos_inf, "+Inf"),
            (self.neg_inf, "-Inf"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        write!(f, "{} (first at {:?})", parts.join(", "), self.first)
    }
}

/// The non-finite values of `t`, None when all are finite. Copies `t` to the host: only for the checks
/// `--check-finite` asks for.
pub(crate) fn non_finite(t: &Tensor) -> Result<Option<NonFinite>> {
    let v = t.to_vec()?;
    let Some(at) = v.iter().position(|x| !x.is_finite()) else {
        return Ok(None);
    };
    let mut first = vec![0; t.rank()];
    let mut rest = at;
    for (f, &d) in first.iter_mut().zip(t.shape()).rev() {
        *f = rest % d.max(1);
        rest /= d.max(1);
    }
    let count = |p: fn(&f32) -> bool| v[at..].iter().filter(|x| p(x)).count();
    Ok(Some(NonFinite {
        nan: count(|x| x.is_nan()),
        pos_inf: count(|x| *x == f32::INFINITY),
        neg_inf: count(|x| *x == f32::NEG_INFINITY),
        first,
    }))
}

/// Whether ops record on the tape on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Switches recording off until dropped (then restores the previous state).
pub struct NoGradGuard {
    prev: bool,
}

impl NoGradGuard {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let prev = GRAD_ENABLED.with(|g| g.replace(false));
        NoGradGuard { prev }
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Switches recording on until dropped (recomputing a checkpointed block inside backward).
pub(crate) struct EnableGradGuard {
    prev: bool,
}

impl EnableGradGuard {
    pub(crate) fn new() -> Self {
        EnableGradGuard {
            prev: GRAD_ENABLED.with(|g| g.replace(true)),
        }
    }
}

impl Drop for EnableGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Run `f` without recording: inference mode, no saved activations.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

/// Whether an op over `inputs` must record a node.
pub(crate) fn needs_grad(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}

/// Attach `out` to the tape as the result of `op` over `inputs`. Call only when
/// [`needs_grad`] is true; `backward` returns one entry per input.
pub(crate) fn record(
    op: &'static str,
    inputs: &[&Tensor],
    out: Tensor,
    backward: BackwardFn,
) -> Tensor {
    let edges = inputs
        .iter()
        .map(|t| {
            t.0.autograd.as_ref().map(|a| Edge {
                node: a.node.clone(),
                cell: a.cell.clone(),
                shape: t.shape().to_vec(),
            })
        })
        .collect();
    let cell = Arc::new(GradCell::default());
    let node = Arc::new(Node {
        seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
        op,
        label: LABEL.with(|l| l.borrow().clone()),
        inputs: edges,
        out_cell: cell.clone(),
        backward: Mutex::new(Some(backward)),
    });
    out.make(AutogradMeta {
        node: Some(node),
        cell,
    })
}

/// a + b without recording (gradient accumulation).
fn add_raw(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let buf = a.backend().binary(a.buf(), b.buf(), BinaryOp::Add)?;
    Ok(a.sibling(buf, a.shape().to_vec()))
}

/// What [`backward`] tells a gradient hook (`Tensor::backward_with_hook`), by leaf id (the address of
/// the leaf's gradient cell, `Tensor::grad_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GradEvent<'a> {
    /// Before any gradient is computed: the leaves this backward pass reaches.
    Plan(&'a [usize]),
    /// The leaf's gradient is final: the pass has run the last (lowest-numbered) tape entry that
    /// feeds it, so nothing adds to it any more (DDP launches a bucket's all-reduce once all its
    /// parameters are final, while backward goes on).
    Ready(usize),
}

/// A gradient hook: called on the backward pass's thread, between tape entries.
pub(crate) type GradHook<'h> = &'h mut dyn FnMut(GradEvent) -> Result<()>;

pub(crate) fn cell_id(cell: &Arc<GradCell>) -> usize {
    Arc::as_ptr(cell) as usize
}

pub(crate) fn backward(root: &Tensor, grad: Tensor) -> Result<()> {
    backward_with_hook(root, grad, None)
}

pub(crate) fn backward_with_hook(
    root: &Tensor,
    grad: Tensor,
    mut hook: Option<GradHook>,
) -> Result<()> {
    let meta = root.0.autograd.as_ref().ok_or_else(|| {
        Error::Autograd(format!(
            "backward from a tensor that does not require grad (shape {:?}); \
             was it computed under no_grad or from tensors without with_grad()?",
            root.shape()
        ))
    })?;
    let _guard = NoGradGuard::new();
    let Some(root_node) = &meta.node else {
        let id = cell_id(&meta.cell);
        if let Some(h) = hook.as_mut() {
            h(GradEvent::Plan(&[id]))?;
        }
        meta.cell.accumulate(&grad)?;
        return match hook {
            Some(h) => h(GradEvent::Ready(id)),
            None => Ok(()),
        };
    };

    // The reachable part of the tape, replayed newest first.
    let mut order: BTreeMap<u64, Arc<Node>> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root_node.clone()];
    while let Some(node) = stack.pop() {
        if !seen.insert(node.seq) {
            continue;
        }
        for e in node.inputs.iter().flatten() {
            if let Some(n) = &e.node {
                stack.push(n.clone());
            }
        }
        order.insert(node.seq, node);
    }
    // with a hook: the tape entry after which each reached leaf's gradient is final (its lowest
    // sequence number among the entries that feed it), by entry
    let mut final_at: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    if let Some(h) = hook.as_mut() {
        let mut last_use: BTreeMap<usize, u64> = BTreeMap::new();
        for (seq, node) in order.iter().rev() {
            for e in node.inputs.iter().flatten().filter(|e| e.node.is_none()) {
                last_use.insert(cell_id(&e.cell), *seq);
            }
        }
        let leaves: Vec<usize> = last_use.keys().copied().collect();
        h(GradEvent::Plan(&leaves))?;
        for (id, seq) in last_use {
            final_at.entry(seq).or_default().push(id);
        }
    }

    let mut pending: BTreeMap<u64, Tensor> = BTreeMap::new();
    pending.insert(root_node.seq, grad);
    for (seq, node) in order.iter().rev() {
        if let Some(g) = pending.remove(seq) {
            run_entry(node, g, &mut pending)?;
        }
        if let (Some(h), Some(ids)) = (hook.as_mut(), final_at.remove(seq)) {
            for id in ids {
                h(GradEvent::Ready(id))?;
            }
        }
    }
    Ok(())
}

/// Run one tape entry's backward with its output gradient `g`: its inputs' gradients go on to the
/// entries that made them (summed in `pending`) or into leaves' cells.
fn run_entry(node: &Node, g: Tensor, pending: &mut BTreeMap<u64, Tensor>) -> Result<()> {
    if node.out_cell.retained() {
        node.out_cell.accumulate(&g)?;
    }
    let f = node.backward.lock().unwrap().take().ok_or_else(|| {
        Error::Autograd(format!(
            "backward through '{}' a second time: its saved tensors were released by the first \
             backward",
            node.op
        ))
    })?;
    let grads = f(&g)?;
    if let Some(label) = &node.label {
        check_grads(node, label, &g, &grads)?;
    }
    if grads.len() != node.inputs.len() {
        return Err(Error::Autograd(format!(
            "'{}' returned {} gradients for {} inputs",
            node.op,
            grads.len(),
            node.inputs.len()
        )));
    }
    for (edge, gi) in node.inputs.iter().zip(grads) {
        let (Some(edge), Some(gi)) = (edge, gi) else {
            continue;
        };
        if gi.shape() != edge.shape.as_slice() {
            return Err(Error::Autograd(format!(
                "'{}' produced a gradient of shape {:?} for an input of shape {:?}",
                node.op,
                gi.shape(),
                edge.shape
            )));
        }
        match &edge.node {
            Some(n) => {
                let acc = match pending.remove(&n.seq) {
                    None => gi,
                    Some(prev) => add_raw(&prev, &gi)?,
                };
                pending.insert(n.seq, acc);
            }
            None => edge.cell.accumulate(&gi)?,
        }
    }
    Ok(())
}

/// `--check-finite` in backward: the first tape entry (in backward order) whose input gradients are not
/// finite, named by its graph node.
fn check_grads(
    node: &Node,
    label: &NodeLabel,
    gy: &Tensor,
    grads: &[Option<Tensor>],
) -> Result<()> {
    for (k, gi) in grads.iter().enumerate() {
        let Some(gi) = gi else { continue };
        let Some(bad) = non_finite(gi)? else { continue };
        let received = match non_finite(gy)? {
            None => "the gradient it received is finite".to_string(),
            Some(b) => format!("the gradient it received already held {b}"),
        };
        return Err(Error::NonFinite(format!(
            "check-finite: the gradient of node '{}' ({}, output {:?}) with respect to input {k} of \
             its '{}' step ({:?}) holds {bad}; {received}",
            label.name,
            label.op,
            gy.shape(),
            node.op,
            gi.shape(),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;

    #[test]
    fn gradient_hooks_fire_after_a_leafs_last_use_in_backward_order() {
        let t = |v: &[f32]| Tensor::from_slice(v, &[2], Device::Cpu).unwrap();
        // loss = Σ ((x·a)·b)·a + c: `a` feeds the first and the last product (its gradient is final
        // only after the first, which backward runs last), `b` the middle one, `c` only the sum
        let (x, a, b, c) = (
            t(&[1.0, 2.0]),
            t(&[3.0, -1.0]),
            t(&[0.5, 4.0]),
            t(&[1.0, 1.0]),
        );
        let (a, b, c) = (a.with_grad(), b.with_grad(), c.with_grad());
        let y = x.mul(&a).unwrap().mul(&b).unwrap().mul(&a).unwrap();
        let loss = y.add(&c).unwrap().sum().unwrap();
        let ids = [&a, &b, &c].map(|p| p.grad_id().unwrap());
        let name = |id: usize| ["a", "b", "c"][ids.iter().position(|&i| i == id).unwrap()];
        let mut events: Vec<String> = vec![];
        let mut hook = |e: GradEvent| {
            match e {
                GradEvent::Plan(leaves) => {
                    let mut n: Vec<&str> = leaves.iter().map(|&id| name(id)).collect();
                    n.sort();
                    events.push(format!("plan {}", n.join(",")));
                }
                GradEvent::Ready(id) => {
                    // at the time it fires: the leaf's gradient is there and is the final one
                    let p = [&a, &b, &c][ids.iter().position(|&i| i == id).unwrap()];
                    let g = p
                        .grad()
                        .expect("ready without a gradient")
                        .to_vec()
                        .unwrap();
                    // which of the others already have theirs
                    let have: Vec<&str> = [&a, &b, &c]
                        .iter()
                        .zip(["a", "b", "c"])
                        .filter(|(p, _)| p.grad().is_some())
                        .map(|(_, n)| n)
                        .collect();
                    events.push(format!("{} {g:?} [{}]", name(id), have.join(",")));
                }
            }
            Ok(())
        };
        loss.backward_with_hook(&mut hook).unwrap();
        // d/da Σ x·a²·b = 2·x·a·b = [3, -16]; d/db = x·a² = [9, 2]; d/dc = 1. `a` gets its first
        // part (x·a·b = [1.5, -8], from the last product) before `b` is final, and its sum last.
        assert_eq!(
            events,
            [
                "plan a,b,c",
                "c [1.0, 1.0] [c]",
                "b [9.0, 2.0] [a,b,c]",
                "a [3.0, -16.0] [a,b,c]",
            ]
        );
        // the same gradients as a plain backward
        for p in [&a, &b, &c] {
            p.zero_grad();
        }
        let loss2 = x.mul(&a).unwrap().mul(&b).unwrap().mul(&a).unwrap();
        loss2.add(&c).unwrap().sum().unwrap().backward().unwrap();
        assert_eq!(a.grad().unwrap().to_vec().unwrap(), [3.0, -16.0]);
    }
}
