//! The executor and the `Network` module: a [`Graph`] with materialised parameters, run forward.
//!
//! Training mode runs each node's op with recording on, so the tape is built as a side effect and
//! `loss.backward()` reaches every parameter. Inference mode runs under `no_grad`. In both, the
//! executor drops its reference to each value right after the value's last reader ran (liveness from the
//! graph), so in inference a buffer is freed as soon as it is dead. Scopes marked `checkpoint` are run
//! without recording and put on the tape as one entry whose backward recomputes the block from its
//! saved input (gradient checkpointing, mmaction2's `with_cp`).
//!
//! With [`Network::set_check_finite`] (the CLI's `--check-finite`, PyTorch's `detect_anomaly`), every
//! node's output is checked as soon as it is computed and every tape entry it records checks its
//! gradients in backward; the first that is not finite fails the run naming the node. Off (the
//! default), none of this runs.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::autograd::{self, non_finite, EnableGradGuard, LabelGuard};
use crate::backend::BufferRef;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::graph::{node_err, FusedOp, FusionPlan, Graph, Init, RunCtx, ValueId, WrittenConcat};
use crate::rng;
use crate::tensor::Tensor;

/// Whether new networks follow the fusion plan (the CLI's `--no-fuse` clears it).
static FUSE_BY_DEFAULT: AtomicBool = AtomicBool::new(true);

/// Make networks created from now on fuse (the default) or not; [`Network::set_fuse`] changes one.
pub fn set_fuse_by_default(on: bool) {
    FUSE_BY_DEFAULT.store(on, Ordering::Relaxed);
}
pub fn fuse_by_default() -> bool {
    FUSE_BY_DEFAULT.load(Ordering::Relaxed)
}

/// A contiguous run of nodes recomputed in backward.
#[derive(Debug, Clone)]
struct Segment {
    nodes: Range<usize>,
    /// Values read inside and produced outside (saved for the recomputation).
    inputs: Vec<ValueId>,
    output: ValueId,
    params: Vec<usize>,
}

/// Memory of the last forward pass on this network's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardStats {
    pub training: bool,
    /// Peak bytes above what was allocated before the forward (activations, saved tensors, output).
    pub peak_activation_bytes: usize,
    /// Bytes still held after the forward (saved for backward in training; the output in inference).
    pub held_bytes: usize,
    /// ReLUs (alone, or the fused add → ReLU) computed in place over a dead input (no new buffer).
    pub relus_in_place: usize,
    /// Concats whose inputs their producers wrote into the concat's output (no copy).
    pub concats_written: usize,
}

/// A network ready to run: graph + parameters + mode. PyTorch's `nn.Module` for whole models.
pub struct Network {
    graph: Arc<Graph>,
    params: Vec<Tensor>,
    device: Device,
    training: bool,
    checkpointing: bool,
    check_finite: bool,
    /// Follow the graph's fusion plan (on by default; `--no-fuse` turns it off).
    fuse: bool,
    /// The fusion pass's plans for inference and for training.
    eval_plan: FusionPlan,
    train_plan: FusionPlan,
    segments: Vec<Segment>,
    seed: u64,
    forwards: AtomicU64,
    stats: Mutex<Option<ForwardStats>>,
    /// Whether the memory plan was checked for a forward in (inference, training) mode.
    memory_checked: [AtomicBool; 2],
}

impl Network {
    /// Materialise the graph's parameters on `device`, initialised from `seed` (reproducible: the same
    /// seed gives the same values on every device).
    pub fn new(graph: Graph, device: Device, seed: u64) -> Result<Network> {
        let mut params = Vec::with_capacity(graph.params.len());
        for p in &graph.params {
            // each parameter's initial values depend on (seed, name) only, not on build order
            let s = rng::mix(seed, rng::fnv1a(&p.name));
            let t = match p.init {
                Init::FanInUniform { fan_in } => {
                    let b = 1.0 / (fan_in.max(1) as f32).sqrt();
                    Tensor::rand_uniform(&p.shape, -b, b, s, device)?
                }
                Init::Normal { std } => Tensor::randn(&p.shape, s, device)?.mul_scalar(std)?,
                Init::Const(v) => Tensor::full(&p.shape, v, device)?,
            };
            params.push(if p.trainable { t.with_grad() } else { t });
        }
        let segments = find_segments(&graph);
        let eval_plan = graph.fusion_plan(false);
        let train_plan = graph.fusion_plan(true);
        Ok(Network {
            graph: Arc::new(graph),
            params,
            device,
            training: true,
            checkpointing: true,
            check_finite: false,
            fuse: fuse_by_default(),
            eval_plan,
            train_plan,
            segments,
            seed,
            forwards: AtomicU64::new(0),
            stats: Mutex::new(None),
            memory_checked: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn train(&mut self) {
        self.training = true;
    }
    pub fn eval(&mut self) {
        self.training = false;
    }
    pub fn is_training(&self) -> bool {
        self.training
    }
    /// Use the graph's checkpointed scopes (on by default; off runs them like any other block).
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }
    /// Check every node's output (forward) and gradients (backward) for NaN/Inf and fail at the first
    /// that is not finite, naming the node (off by default: each check copies the tensor to the host).
    pub fn set_check_finite(&mut self, on: bool) {
        self.check_finite = on;
    }
    /// Run fused chains as one op (the default; docs/GRAPH.md, "Fusion"). Off runs every node by
    /// itself (`--no-fuse`, for debugging and for comparing the two).
    pub fn set_fuse(&mut self, on: bool) {
        self.fuse = on;
    }
    pub fn fuses(&self) -> bool {
        self.fuse
    }
    /// The fusion plan a forward in the current mode follows (empty with fusion off). With fusion on,
    /// the executor also computes a ReLU in place when its input is dead (see [`ForwardStats`]).
    pub fn fusion_plan(&self) -> FusionPlan {
        match (self.fuse, self.training) {
            (false, _) => FusionPlan::none(&self.graph),
            (true, false) => self.eval_plan.clone(),
            (true, true) => self.train_plan.clone(),
        }
    }

    /// Number of forward passes so far: with the seed, it fixes the dropout masks (RNG state).
    pub fn forward_count(&self) -> u64 {
        self.forwards.load(Ordering::Relaxed)
    }
    pub fn set_forward_count(&self, n: u64) {
        self.forwards.store(n, Ordering::Relaxed);
    }
    /// Compare the executor's memory plan for one forward pass with the memory the device can still
    /// allocate (host: `MemAvailable`; CUDA: the driver's free memory), before anything is allocated
    /// for it: an error giving both figures instead of an allocation failure (an abort) or a machine
    /// driven into swap. The plan is the graph's activation bytes at its input shape: everything kept
    /// for backward in training without gradient checkpointing, else the inference peak (the least
    /// any forward needs). Unknown available memory (the simulator, no /proc) passes.
    pub fn check_memory(&self, training: bool) -> Result<()> {
        self.check_memory_for_batch(training, self.planned_batch())
    }

    /// The batch size the graph was built for (its first input's first dimension).
    fn planned_batch(&self) -> usize {
        self.graph
            .inputs
            .first()
            .and_then(|&v| self.graph.values[v].shape.first().copied())
            .unwrap_or(1)
    }

    /// [`Network::check_memory`] for a forward on `batch` samples instead of the graph's planned
    /// batch (activations scale with the batch): `predict` runs all views of a video at once.
    pub fn check_memory_for_batch(&self, training: bool, batch: usize) -> Result<()> {
        let Some((available, source)) = self.device.backend()?.available_memory() else {
            return Ok(());
        };
        let (train, infer) = self.graph.activation_bytes();
        let (need, what) = if training && self.segments.is_empty() {
            (train, "training forward (activations kept for backward)")
        } else {
            (infer, "forward (peak of live activations)")
        };
        let planned = self.planned_batch().max(1) as u128;
        let need = u64::try_from(need as u128 * batch as u128 / planned).unwrap_or(u64::MAX);
        if need > available {
            let inputs: Vec<Vec<usize>> = self
                .graph
                .inputs
                .iter()
                .map(|&v| {
                    let mut s = self.graph.values[v].shape.clone();
                    if let Some(b) = s.first_mut() {
                        *b = batch;
                    }
                    s
                })
                .collect();
            return Err(Error::Device(format!(
                "not enough memory on {}: a {what} of {} on input {inputs:?} needs {} by the executor's memory plan, {} available ({source}); use a smaller batch, fewer frames or smaller frames",
                self.device,
                self.graph.name,
                gib(need),
                gib(available)
            )));
        }
        Ok(())
    }

    /// Memory of the last forward pass.
    pub fn last_forward_stats(&self) -> Option<ForwardStats> {
        *self.stats.lock().unwrap()
    }

    /// Trainable parameters with their state_dict names, in graph order.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.named(true)
    }
    /// Buffers (running statistics, num_batches_tracked).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        self.named(false)
    }
    fn named(&self, trainable: bool) -> Vec<(String, Tensor)> {
        self.graph
            .params
            .iter()
            .zip(&self.params)
            .filter(|(s, _)| s.trainable == trainable)
            .map(|(s, t)| (s.name.clone(), t.clone()))
            .collect()
    }
    /// Parameters and buffers by name (sharing storage with the network).
    pub fn state_dict(&self) -> BTreeMap<String, Tensor> {
        self.graph
            .params
            .iter()
            .zip(&self.params)
            .map(|(s, t)| (s.name.clone(), t.detach()))
            .collect()
    }
    /// The tensor of a parameter or buffer.
    pub fn param(&self, name: &str) -> Option<&Tensor> {
        self.graph
            .params
            .iter()
            .position(|p| p.name == name)
            .map(|i| &self.params[i])
    }

    /// Copy values from a state dict, in place. Every missing, unexpected or mis-shaped key is reported
    /// by name; with `strict = false` missing and unexpected keys are allowed (and returned).
    pub fn load_state_dict(
        &self,
        sd: &crate::io::StateDict,
        strict: bool,
    ) -> Result<crate::io::StateDictDiff> {
        let targets: Vec<(String, Tensor)> = self
            .graph
            .params
            .iter()
            .zip(&self.params)
            .map(|(s, t)| (s.name.clone(), t.detach()))
            .collect();
        crate::io::assign_state_dict(&targets, sd, strict)
    }

    /// Clear every parameter's gradient.
    pub fn zero_grad(&self) {
        self.params.iter().for_each(|p| p.zero_grad());
    }

    /// Move parameters and buffers to `device` (their values, not their gradients).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for (spec, t) in self.graph.params.iter().zip(self.params.iter_mut()) {
            let moved = t.detach().to_device(device)?;
            *t = if spec.trainable {
                moved.with_grad()
            } else {
                moved
            };
        }
        self.device = device;
        Ok(())
    }

    /// Run the network on its inputs; returns the first output.
    pub fn forward(&self, inputs: &[&Tensor]) -> Result<Tensor> {
        Ok(self.forward_with(inputs, &[])?.0)
    }

    /// Run the network and also return the values produced by the named nodes or scopes (kept alive;
    /// in training mode with `retain_grad`, so their gradients are readable after backward).
    pub fn forward_with(
        &self,
        inputs: &[&Tensor],
        retain: &[&str],
    ) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let g = &*self.graph;
        self.check_inputs(inputs)?;
        if !self.memory_checked[self.training as usize].swap(true, Ordering::Relaxed) {
            let batch = inputs.first().and_then(|x| x.shape().first().copied());
            self.check_memory_for_batch(self.training, batch.unwrap_or(self.planned_batch()))?;
        }
        let mut keep = vec![false; g.values.len()];
        let mut retained_ids = vec![];
        for name in retain {
            let v = g.value_by_name(name).ok_or_else(|| {
                Error::arg(
                    "forward",
                    format!("network '{}' has no node or module named '{name}'", g.name),
                )
            })?;
            keep[v] = true;
            retained_ids.push((name.to_string(), v));
        }
        for &o in &g.outputs {
            keep[o] = true;
        }
        let step = self.forwards.fetch_add(1, Ordering::Relaxed);
        let base_seed = rng::mix(self.seed, step);
        let recording = self.training && autograd::is_grad_enabled();

        let before = self.device.memory_in_use().unwrap_or(0);
        self.device.reset_memory_peak().ok();
        let mut values: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for (i, (&v, &t)) in g.inputs.iter().zip(inputs).enumerate() {
            if self.check_finite {
                if let Some(bad) = non_finite(t)? {
                    return Err(Error::NonFinite(format!(
                        "check-finite: input {i} {:?} of network '{}' holds {bad}",
                        t.shape(),
                        g.name
                    )));
                }
            }
            values[v] = Some(t.clone());
        }
        let check = self.check_finite;
        let checkpointed = recording && self.checkpointing;
        // The chains this forward fuses: none while checking every node's output, none whose
        // intermediate values are asked for by name, and none reaching into a checkpointed block
        // (its nodes run, and are recomputed, by themselves).
        let mut plan = if check {
            FusionPlan::none(g)
        } else {
            self.fusion_plan()
        };
        let in_segment =
            |n: usize| checkpointed && self.segments.iter().any(|s| s.nodes.contains(&n));
        let kept_inside = |c: &crate::graph::FusedOp| {
            let nodes = c.nodes();
            nodes[..nodes.len() - 1]
                .iter()
                .any(|&n| keep[g.nodes[n].output])
                || nodes.iter().any(|&n| in_segment(n))
        };
        if plan.chains.iter().any(kept_inside) {
            let chains: Vec<_> = plan
                .chains
                .into_iter()
                .filter(|c| !kept_inside(c))
                .collect();
            let written = std::mem::take(&mut plan.written_concats);
            plan = FusionPlan::none(g);
            for (k, c) in chains.iter().enumerate() {
                for n in c.nodes() {
                    plan.chain_of[n] = Some(k);
                }
            }
            plan.chains = chains;
            plan.written_concats = written;
        }
        // Concats written by their producers: on a backend with views, with every producer still a
        // chain here, outside checkpointed blocks, and no input asked for by name.
        let views = self.device.backend()?.splits_into_views();
        let mut written = std::mem::take(&mut plan.written_concats);
        written.retain(|w| {
            let inputs = &g.nodes[w.concat].inputs;
            views
                && !in_segment(w.concat)
                && inputs.iter().all(|&v| !keep[v])
                && w.producers
                    .iter()
                    .all(|&p| plan.head(p).is_some() && !in_segment(p))
        });
        plan.written_concats = written;
        let last = g.last_uses();
        // Which input a ReLU (or a fused add → ReLU) may overwrite: one that is dead after it
        // (liveness) and not a network input or a value asked for by name; at run time
        // `relu_consuming` / `add_relu_consuming` also check that no tensor saved for backward (or any
        // other handle) shares the buffer.
        let dead =
            |v: ValueId, i: usize| !keep[v] && last[v] == Some(i) && g.values[v].producer.is_some();
        let consumable: Vec<Option<usize>> = g
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                if !self.fuse || check {
                    return None;
                }
                match n.op {
                    crate::graph::Op::Relu => dead(n.inputs[0], i).then_some(0),
                    crate::graph::Op::Add
                        if matches!(plan.head(i), Some(FusedOp::AddRelu { .. }))
                            && n.inputs[0] != n.inputs[1] =>
                    {
                        (0..2).find(|&k| dead(n.inputs[k], i))
                    }
                    _ => None,
                }
            })
            .collect();
        let in_place = AtomicU64::new(0);
        let written = AtomicU64::new(0);
        let run = |values: &mut Vec<Option<Tensor>>| -> Result<()> {
            let ctx = RunCtx {
                training: self.training,
                update_stats: true,
                seed: base_seed,
            };
            let mut slabs = ConcatSlabs::new(g, &plan.written_concats);
            let mut i = 0;
            while i < g.nodes.len() {
                let seg = (recording && self.checkpointing)
                    .then(|| self.segments.iter().find(|s| s.nodes.start == i))
                    .flatten();
                let range = match seg {
                    Some(seg) => {
                        let out = self.run_checkpointed(seg, values, ctx)?;
                        values[seg.output] = Some(out);
                        seg.nodes.clone()
                    }
                    None => {
                        let (n_in_place, n_written) = run_nodes(
                            g,
                            &self.params,
                            i..i + 1,
                            values,
                            ctx,
                            check,
                            Schedule {
                                plan: &plan,
                                consumable: &consumable,
                                slabs: Some(&mut slabs),
                            },
                        )?;
                        in_place.fetch_add(n_in_place as u64, Ordering::Relaxed);
                        written.fetch_add(n_written as u64, Ordering::Relaxed);
                        i..i + 1
                    }
                };
                // Liveness: drop every value whose last reader has run.
                for n in range.clone() {
                    for &v in &g.nodes[n].inputs {
                        if !keep[v] && last[v].is_some_and(|l| l < range.end) {
                            values[v] = None;
                        }
                    }
                    let o = g.nodes[n].output;
                    if !keep[o] && last[o].is_none_or(|l| l < range.end) {
                        values[o] = None;
                    }
                }
                i = range.end;
            }
            Ok(())
        };
        if self.training {
            run(&mut values)?;
        } else {
            crate::no_grad(|| run(&mut values))?;
        }
        let out = values[g.outputs[0]].clone().expect("graph output computed");
        let mut retained = vec![];
        for (name, v) in retained_ids {
            let t = values[v].clone().expect("retained value computed");
            if t.requires_grad() {
                t.retain_grad()?;
            }
            retained.push((name, t));
        }
        drop(values);
        let peak = self
            .device
            .memory_peak()
            .unwrap_or(0)
            .saturating_sub(before);
        let held = self
            .device
            .memory_in_use()
            .unwrap_or(0)
            .saturating_sub(before);
        *self.stats.lock().unwrap() = Some(ForwardStats {
            training: self.training,
            peak_activation_bytes: peak,
            held_bytes: held,
            relus_in_place: in_place.into_inner() as usize,
            concats_written: written.into_inner() as usize,
        });
        Ok((out, retained))
    }

    fn check_inputs(&self, inputs: &[&Tensor]) -> Result<()> {
        let g = &*self.graph;
        if inputs.len() != g.inputs.len() {
            return Err(Error::arg(
                "forward",
                format!(
                    "network '{}' takes {} inputs, got {}",
                    g.name,
                    g.inputs.len(),
                    inputs.len()
                ),
            ));
        }
        for (&v, t) in g.inputs.iter().zip(inputs) {
            let want = &g.values[v].shape;
            let ok = t.rank() == want.len() && t.shape()[1..] == want[1..];
            if !ok {
                return Err(Error::shape(
                    "forward",
                    format!(
                        "network '{}' expects input [N, {}], got {:?}",
                        g.name,
                        want[1..]
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        t.shape()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Run a segment without recording and put one tape entry in its place whose backward recomputes
    /// the segment (with recording) from the saved inputs and backpropagates through it.
    fn run_checkpointed(
        &self,
        seg: &Segment,
        values: &[Option<Tensor>],
        ctx: RunCtx,
    ) -> Result<Tensor> {
        let g = self.graph.clone();
        let xs: Vec<Tensor> = seg
            .inputs
            .iter()
            .map(|&v| values[v].clone().expect("segment input"))
            .collect();
        let params = self.params.clone();
        let check = self.check_finite;
        let run_segment = {
            let (g, seg) = (g.clone(), seg.clone());
            move |xs: &[Tensor], ctx: RunCtx| -> Result<Tensor> {
                let mut local: Vec<Option<Tensor>> = vec![None; g.values.len()];
                for (&v, x) in seg.inputs.iter().zip(xs) {
                    local[v] = Some(x.clone());
                }
                let none = FusionPlan::none(&g);
                run_nodes(
                    &g,
                    &params,
                    seg.nodes.clone(),
                    &mut local,
                    ctx,
                    check,
                    Schedule {
                        plan: &none,
                        consumable: &[],
                        slabs: None,
                    },
                )?;
                Ok(local[seg.output].take().expect("segment output"))
            }
        };
        let out = crate::no_grad(|| run_segment(&xs, ctx))?;
        let seg_params: Vec<Tensor> = seg.params.iter().map(|&p| self.params[p].clone()).collect();
        let mut rec: Vec<&Tensor> = xs.iter().collect();
        rec.extend(seg_params.iter());
        if !autograd::needs_grad(&rec) {
            return Ok(out);
        }
        let saved: Vec<Tensor> = xs.iter().map(|x| x.detach()).collect();
        let n_params = seg_params.len();
        let recompute_ctx = RunCtx {
            update_stats: false,
            ..ctx
        };
        Ok(autograd::record(
            "checkpoint",
            &rec,
            out,
            Box::new(move |gy| {
                let _grad = EnableGradGuard::new();
                let leaves: Vec<Tensor> = saved.iter().map(|x| x.with_grad()).collect();
                let y = run_segment(&leaves, recompute_ctx)?;
                // Parameters are leaves of this inner tape too: their gradients accumulate directly.
                y.backward_with(gy)?;
                let mut grads: Vec<Option<Tensor>> = leaves.iter().map(|x| x.grad()).collect();
                grads.extend((0..n_params).map(|_| None));
                Ok(grads)
            }),
        ))
    }
}

/// How [`run_nodes`] runs the graph's nodes: the fusion plan, each node's input it may overwrite, and
/// the buffers of the concats written by their producers (none in a checkpointed block).
struct Schedule<'a> {
    plan: &'a FusionPlan,
    consumable: &'a [Option<usize>],
    slabs: Option<&'a mut ConcatSlabs>,
}

/// The output buffers of the plan's [`WrittenConcat`]s during one forward: allocated when a concat's
/// first producer runs, split into one view per input, each handed to its producer to write into.
struct ConcatSlabs {
    /// Per node: the written concat (index) and input position it produces.
    writes_into: Vec<Option<(usize, usize)>>,
    /// Per node: the written concat it is.
    joins: Vec<Option<usize>>,
    /// Per written concat: its node, and its output's views once allocated.
    concats: Vec<usize>,
    views: Vec<Option<Vec<BufferRef>>>,
}

impl ConcatSlabs {
    fn new(g: &Graph, written: &[WrittenConcat]) -> ConcatSlabs {
        let mut s = ConcatSlabs {
            writes_into: vec![None; g.nodes.len()],
            joins: vec![None; g.nodes.len()],
            concats: written.iter().map(|c| c.concat).collect(),
            views: vec![None; written.len()],
        };
        for (w, c) in written.iter().enumerate() {
            s.joins[c.concat] = Some(w);
            for (k, &p) in c.producers.iter().enumerate() {
                s.writes_into[p] = Some((w, k));
            }
        }
        s
    }

    /// The buffer node `i` writes its output into, if it is a written concat's producer: its slice
    /// of the concat's output (allocated now for the first producer, for the batch size of `x`, the
    /// producer's input). `None` when the slice would not hold x's values (the producer then makes
    /// its own buffer and the concat copies).
    fn slice_for(&mut self, g: &Graph, i: usize, x: &Tensor) -> Result<Option<BufferRef>> {
        let Some((w, k)) = self.writes_into[i] else {
            return Ok(None);
        };
        if self.views[w].is_none() {
            let concat = &g.nodes[self.concats[w]];
            let crate::graph::Op::Concat { dim } = concat.op else {
                unreachable!("a written concat is a concat node")
            };
            let shape = &g.values[concat.output].shape;
            let d = crate::ops::resolve_dim("concat", dim, shape)?;
            let batch = x.shape().first().copied().unwrap_or(0);
            let outer = batch * shape[1..d].iter().product::<usize>();
            let tail: usize = shape[d + 1..].iter().product();
            let inners: Vec<usize> = concat
                .inputs
                .iter()
                .map(|&v| g.values[v].shape[d] * tail)
                .collect();
            let be = x.backend();
            let slab = be.full(outer * inners.iter().sum::<usize>(), 0.0)?;
            self.views[w] = Some(be.split(&slab, outer, &inners)?);
        }
        let view = &self.views[w].as_ref().expect("allocated above")[k];
        Ok((view.len() == x.numel()).then(|| view.clone()))
    }

    /// Whether node `i` is a written concat (its inputs joined without a copy); forgets its views.
    fn join(&mut self, i: usize) -> bool {
        match self.joins[i] {
            Some(w) => {
                self.views[w] = None;
                true
            }
            None => false,
        }
    }
}

/// Run nodes `range` reading and writing `values`; with `check`, label their tape entries and fail at
/// the first output that is not finite. A node heading a chain of the schedule's plan runs the whole
/// chain (its output is the chain's last value; a written concat's producer writes it into its slice
/// of the concat's output); the chain's other nodes are skipped. A ReLU node (or an add → ReLU chain)
/// with an input index in `consumable` takes that input out of `values` and overwrites it when
/// nothing else shares it. Returns how many ran in place, and how many concats were joined without a
/// copy.
fn run_nodes(
    g: &Graph,
    params: &[Tensor],
    range: Range<usize>,
    values: &mut [Option<Tensor>],
    ctx: RunCtx,
    check: bool,
    schedule: Schedule,
) -> Result<(usize, usize)> {
    let Schedule {
        plan,
        consumable,
        mut slabs,
    } = schedule;
    let (mut in_place, mut written) = (0, 0);
    for i in range {
        let n = &g.nodes[i];
        if plan.absorbed(i) {
            continue;
        }
        let released = || {
            node_err(
                &n.name,
                Error::Autograd("input value was released before use".into()),
            )
        };
        let node_ctx = RunCtx {
            seed: rng::mix(ctx.seed, i as u64),
            ..ctx
        };
        let consume = consumable.get(i).copied().flatten();
        if let Some(chain) = plan.head(i) {
            let y = match (chain, consume) {
                (FusedOp::AddRelu { .. }, Some(k)) => {
                    let a = values[n.inputs[k]].take().ok_or_else(released)?;
                    let b = values[n.inputs[1 - k]].as_ref().ok_or_else(released)?;
                    let (y, reused) = crate::ops::elementwise::add_relu_consuming(a, b)
                        .map_err(|e| node_err(&n.name, e))?;
                    in_place += reused as usize;
                    y
                }
                _ => {
                    let xs: Vec<&Tensor> = chain
                        .inputs(g)
                        .iter()
                        .map(|&v| values[v].as_ref().ok_or_else(released))
                        .collect::<Result<_>>()?;
                    let out = match slabs.as_deref_mut() {
                        Some(s) => s.slice_for(g, i, xs[0]).map_err(|e| node_err(&n.name, e))?,
                        None => None,
                    };
                    chain
                        .run(g, &xs, params, &node_ctx, out.as_ref())
                        .map_err(|e| node_err(&n.name, e))?
                }
            };
            values[chain.output(g)] = Some(y);
            continue;
        }
        if consume.is_some() {
            let x = values[n.inputs[0]].take().ok_or_else(released)?;
            let (y, reused) =
                crate::ops::elementwise::relu_consuming(x).map_err(|e| node_err(&n.name, e))?;
            in_place += reused as usize;
            values[n.output] = Some(y);
            continue;
        }
        let xs: Vec<&Tensor> = n
            .inputs
            .iter()
            .map(|&v| values[v].as_ref().ok_or_else(released))
            .collect::<Result<_>>()?;
        let ps: Vec<&Tensor> = n.params.iter().map(|&p| &params[p]).collect();
        let joined = slabs.as_deref_mut().is_some_and(|s| s.join(i));
        let y = if joined {
            let crate::graph::Op::Concat { dim } = n.op else {
                unreachable!("a written concat is a concat node")
            };
            let (y, joined) =
                crate::ops::layout::concat_written(&xs, dim).map_err(|e| node_err(&n.name, e))?;
            written += joined as usize;
            y
        } else if check {
            let _label = LabelGuard::new(&n.name, n.op.name());
            let y = n
                .run(&xs, &ps, &node_ctx)
                .map_err(|e| node_err(&n.name, e))?;
            check_output(g, n, &y, &xs, &ps)?;
            y
        } else {
            n.run(&xs, &ps, &node_ctx)
                .map_err(|e| node_err(&n.name, e))?
        };
        values[n.output] = Some(y);
    }
    Ok((in_place, written))
}

/// `--check-finite` in forward: fail if `y`, the output of `n`, is not finite, saying which of the
/// node's inputs and parameters already were not (none: the op itself overflowed or divided 0 by 0).
fn check_output(
    g: &Graph,
    n: &crate::graph::Node,
    y: &Tensor,
    xs: &[&Tensor],
    ps: &[&Tensor],
) -> Result<()> {
    let Some(bad) = non_finite(y)? else {
        return Ok(());
    };
    let mut causes = vec![];
    for (k, x) in xs.iter().enumerate() {
        if let Some(b) = non_finite(x)? {
            causes.push(format!("input {k} {:?} holds {b}", x.shape()));
        }
    }
    for (&p, t) in n.params.iter().zip(ps) {
        if let Some(b) = non_finite(t)? {
            causes.push(format!("parameter '{}' holds {b}", g.params[p].name));
        }
    }
    let cause = if causes.is_empty() {
        "its inputs and parameters are finite".to_string()
    } else {
        causes.join("; ")
    };
    Err(Error::NonFinite(format!(
        "check-finite: the output of node '{}' ({}, {:?}) holds {bad}; {cause}",
        n.name,
        n.op.name(),
        y.shape()
    )))
}

/// The outermost checkpointed scopes as node ranges with one output each.
fn find_segments(g: &Graph) -> Vec<Segment> {
    let mut segs: Vec<Segment> = vec![];
    for (s, scope) in g.scopes.iter().enumerate() {
        if !scope.checkpoint {
            continue;
        }
        // outermost only
        let mut p = scope.parent;
        let mut nested = false;
        while let Some(q) = p {
            nested |= g.scopes[q].checkpoint;
            p = g.scopes[q].parent;
        }
        if nested {
            continue;
        }
        let inside: Vec<usize> = (0..g.nodes.len())
            .filter(|&i| g.scope_contains(s, g.nodes[i].scope))
            .collect();
        let (Some(&start), Some(&end)) = (inside.first(), inside.last()) else {
            continue;
        };
        let Some(output) = scope.output else { continue };
        let nodes = start..end + 1;
        if inside.len() != nodes.len() {
            continue; // not contiguous: run normally
        }
        let produced_inside = |v: ValueId| g.values[v].producer.is_some_and(|p| nodes.contains(&p));
        // Only the scope's output may be read after the segment.
        let leaks = g.nodes[nodes.end..]
            .iter()
            .flat_map(|n| &n.inputs)
            .any(|&v| produced_inside(v) && v != output)
            || g.outputs.iter().any(|&v| produced_inside(v) && v != output);
        if leaks {
            continue;
        }
        let mut inputs = vec![];
        let mut params = vec![];
        for n in &g.nodes[nodes.clone()] {
            for &v in &n.inputs {
                if !produced_inside(v) && !inputs.contains(&v) {
                    inputs.push(v);
                }
            }
            params.extend(n.params.iter().copied());
        }
        segs.push(Segment {
            nodes,
            inputs,
            output,
            params,
        });
    }
    segs
}

/// Bytes as GiB (MiB below one GiB), for messages.
fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
