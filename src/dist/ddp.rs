//! PyTorch DistributedDataParallel's semantics on a network's tensors: [`broadcast_tensors`] makes
//! every rank start from rank 0's parameters and buffers; [`backward_averaged`] runs backward and
//! averages the gradients over the ranks in buckets of at most [`BUCKET_BYTES`].
//!
//! Buckets hold the parameters that get a gradient in reverse order (the order in which backward
//! finishes them). With overlap (the trainer's default), the tape tells [`GradientAverager`] when each
//! parameter's gradient is final (`crate::autograd::GradEvent`), and a bucket's sum is started
//! (MPI_Iallreduce) as soon as all its gradients are, while backward goes on; buckets are started in
//! bucket order on every rank (the MPI order rule), and waited for after backward. Without overlap
//! the same buckets are started, the same way, after backward: the results are bit-identical.
//!
//! A bucket is one tensor on the model's device ([`super::device::pack`]: copies at offsets on the
//! device), summed by the device seam ([`super::device::for_device`]: NCCL on a GPU with libnccl,
//! otherwise staged through the host collective), scaled by 1/world on the device and unpacked into
//! the gradients.

use std::collections::HashMap;
use std::ops::Range;

use super::device::{for_device, mean_of_sum, pack, unpack, PendingDeviceSum, Seam};
use super::Collective;
use crate::autograd::GradEvent;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The most bytes of gradients in one all-reduce (PyTorch DDP's `bucket_cap_mb` default, 25 MiB).
pub const BUCKET_BYTES: usize = 25 << 20;

/// Consecutive runs of `sizes` (element counts) whose total stays within `cap` elements; an item
/// larger than `cap` forms a bucket of its own. Returns index ranges into `sizes`.
pub fn buckets(sizes: &[usize], cap: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = vec![];
    let (mut start, mut total) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && total + n > cap {
            out.push(start..i);
            (start, total) = (i, 0);
        }
        total += n;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

/// Copy `tensors` (every rank passes the same names and shapes, in the same order, on one device)
/// from rank 0 to every rank, bucket by bucket, through the device seam.
pub fn broadcast_tensors(dist: &dyn Collective, tensors: &[(String, Tensor)]) -> Result<()> {
    if dist.world_size() == 1 || tensors.is_empty() {
        return Ok(());
    }
    let seam = for_device(dist, tensors[0].1.device());
    let sizes: Vec<usize> = tensors.iter().map(|(_, t)| t.numel()).collect();
    for range in buckets(&sizes, BUCKET_BYTES / 4) {
        let group: Vec<&Tensor> = tensors[range.clone()].iter().map(|(_, t)| t).collect();
        let flat = pack(&group)?;
        seam.get().broadcast(&flat, 0)?;
        unpack(&flat, &group).map_err(|e| {
            Error::Distributed(format!("broadcast of {}: {e}", tensors[range.start].0))
        })?;
    }
    Ok(())
}

/// Replace every parameter's gradient by its mean over the ranks, after backward. Parameters are
/// bucketed in reverse order. A parameter without a gradient (unused by this forward pass) is left
/// out; every rank must agree on which those are (checked: a disagreement is an error, as PyTorch's
/// DDP reports unused parameters, rather than ranks whose optimisers diverge).
pub fn all_reduce_gradients(dist: &dyn Collective, params: &[(String, Tensor)]) -> Result<()> {
    if dist.world_size() == 1 {
        return Ok(());
    }
    let mut avg = GradientAverager::new(dist, params, BUCKET_BYTES);
    avg.plan_from_gradients()?;
    avg.finish()
}

/// `loss.backward()`, then every parameter's gradient replaced by its mean over the ranks, in
/// buckets of at most `bucket_bytes`; with `overlap`, each bucket's sum starts as soon as backward
/// has finished its gradients (the same buckets and sums as without: bit-identical results). In a
/// world of one: `loss.backward()`.
pub fn backward_averaged(
    dist: &dyn Collective,
    params: &[(String, Tensor)],
    loss: &Tensor,
    overlap: bool,
    bucket_bytes: usize,
) -> Result<()> {
    if dist.world_size() == 1 {
        return loss.backward();
    }
    let mut avg = GradientAverager::new(dist, params, bucket_bytes);
    if overlap {
        loss.backward_with_hook(&mut |e| avg.on_event(e))?;
    } else {
        loss.backward()?;
        avg.plan_from_gradients()?;
    }
    avg.finish()
}

/// One step's gradient buckets: which parameters are in them, which gradients are final, and the
/// sums started so far (in bucket order).
pub struct GradientAverager<'d> {
    dist: &'d dyn Collective,
    /// The sums' transport for the parameters' device.
    seam: Seam<'d>,
    /// Every parameter, in reverse order.
    params: Vec<(String, Tensor)>,
    /// Bucket capacity in values.
    cap: usize,
    /// Indices into `params` of the parameters that get a gradient, in bucket order.
    members: Vec<usize>,
    /// Member index by gradient id.
    member_of: HashMap<usize, usize>,
    ready: Vec<bool>,
    buckets: Vec<Range<usize>>,
    started: Vec<Box<dyn PendingDeviceSum + 'd>>,
}

impl<'d> GradientAverager<'d> {
    pub fn new(
        dist: &'d dyn Collective,
        params: &[(String, Tensor)],
        bucket_bytes: usize,
    ) -> GradientAverager<'d> {
        let device = params
            .first()
            .map_or(crate::device::Device::Cpu, |(_, p)| p.device());
        GradientAverager {
            dist,
            seam: for_device(dist, device),
            params: params.iter().rev().cloned().collect(),
            cap: (bucket_bytes / 4).max(1),
            members: vec![],
            member_of: HashMap::new(),
            ready: vec![],
            buckets: vec![],
            started: vec![],
        }
    }

    /// A backward pass's event: the plan (the parameters it reaches, with those that hold a
    /// gradient already, make the buckets), or a parameter whose gradient is final (its bucket is
    /// started when complete, and the sums in flight are given a chance to progress).
    pub(crate) fn on_event(&mut self, e: GradEvent) -> Result<()> {
        match e {
            GradEvent::Plan(reached) => {
                let reached: std::collections::HashSet<usize> = reached.iter().copied().collect();
                let ids: Vec<Option<usize>> =
                    self.params.iter().map(|(_, p)| p.grad_id()).collect();
                let gets = |i: usize, p: &Tensor| {
                    let r = ids[i].is_some_and(|id| reached.contains(&id));
                    (r || p.grad().is_some(), r)
                };
                let (mut members, mut ready) = (vec![], vec![]);
                for (i, (_, p)) in self.params.iter().enumerate() {
                    let (member, reached) = gets(i, p);
                    if member {
                        members.push(i);
                        ready.push(!reached); // a gradient no entry of this pass adds to
                    }
                }
                self.set_members(members, ready)?;
            }
            GradEvent::Ready(id) => {
                if let Some(&m) = self.member_of.get(&id) {
                    self.ready[m] = true;
                }
            }
        }
        self.start_ready_buckets()?;
        for s in &mut self.started {
            s.test()?;
        }
        Ok(())
    }

    /// The buckets of the parameters that hold a gradient (after a backward without events).
    pub fn plan_from_gradients(&mut self) -> Result<()> {
        let members: Vec<usize> = (0..self.params.len())
            .filter(|&i| self.params[i].1.grad().is_some())
            .collect();
        let ready = vec![true; members.len()];
        self.set_members(members, ready)
    }

    fn set_members(&mut self, members: Vec<usize>, ready: Vec<bool>) -> Result<()> {
        let dist = self.dist;
        let mut count = [members.len() as f64];
        dist.all_reduce_sum_f64(&mut count)?;
        if count[0] != (members.len() * dist.world_size()) as f64 {
            return Err(Error::Distributed(format!(
                "rank {} has gradients for {} of {} parameters but the ranks together have {}: the \
                 ranks ran different graphs",
                dist.rank(),
                members.len(),
                self.params.len(),
                count[0]
            )));
        }
        let sizes: Vec<usize> = members.iter().map(|&i| self.params[i].1.numel()).collect();
        self.buckets = buckets(&sizes, self.cap);
        self.member_of = members
            .iter()
            .enumerate()
            .filter_map(|(m, &i)| Some((self.params[i].1.grad_id()?, m)))
            .collect();
        self.members = members;
        self.ready = ready;
        Ok(())
    }

    /// The gradients of bucket `b`'s parameters (an error names one that has none).
    fn bucket_grads(&self, b: usize) -> Result<Vec<(&str, Tensor)>> {
        self.members[self.buckets[b].clone()]
            .iter()
            .map(|&i| {
                let (name, p) = &self.params[i];
                let g = p.grad().ok_or_else(|| {
                    Error::Distributed(format!(
                        "rank {}: backward reached parameter {name} but gave it no gradient",
                        self.dist.rank()
                    ))
                })?;
                Ok((name.as_str(), g))
            })
            .collect()
    }

    /// Start, in bucket order, every next bucket whose gradients are all final.
    fn start_ready_buckets(&mut self) -> Result<()> {
        while let Some(range) = self.buckets.get(self.started.len()).cloned() {
            if !self.ready[range].iter().all(|&r| r) {
                break;
            }
            self.start_next()?;
        }
        Ok(())
    }

    fn start_next(&mut self) -> Result<()> {
        let grads = self.bucket_grads(self.started.len())?;
        let flat = pack(&grads.iter().map(|(_, g)| g).collect::<Vec<_>>())?;
        let pending = self.seam.start_all_reduce_sum(flat)?;
        self.started.push(pending);
        Ok(())
    }

    /// Start the buckets not started yet, wait for every sum in bucket order, and write each
    /// parameter's mean gradient back.
    pub fn finish(mut self) -> Result<()> {
        while self.started.len() < self.buckets.len() {
            self.start_next()?;
        }
        let started = std::mem::take(&mut self.started);
        for (b, pending) in started.into_iter().enumerate() {
            let mean = mean_of_sum(pending.wait()?, self.dist.world_size())?;
            let grads = self.bucket_grads(b)?;
            unpack(&mean, &grads.iter().map(|(_, g)| g).collect::<Vec<_>>())
                .map_err(|e| Error::Distributed(format!("gradients of {}: {e}", grads[0].0)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::dist::tests::Twin;

    /// Three parameters of 3, 2 and 4 values with gradients 1, 2, 3 (from one backward).
    fn three_params() -> Vec<(String, Tensor)> {
        three_params_on(Device::Cpu)
    }

    fn three_params_on(device: Device) -> Vec<(String, Tensor)> {
        let p: Vec<(String, Tensor)> = [3usize, 2, 4]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let t = Tensor::zeros(&[n], device).unwrap().with_grad();
                (format!("p{i}"), t)
            })
            .collect();
        let mut loss = p[0].1.sum().unwrap();
        for (k, (_, t)) in p.iter().enumerate().skip(1) {
            loss = loss
                .add(&t.sum().unwrap().mul_scalar(k as f32 + 1.0).unwrap())
                .unwrap();
        }
        loss.backward().unwrap();
        p
    }

    #[test]
    fn a_bucket_starts_when_its_last_gradient_is_final_and_in_bucket_order() {
        let params = three_params();
        let id = |i: usize| params[i].1.grad_id().unwrap();
        let twin = Twin::default();
        // 5 values a bucket: reverse order p2 (4) | p1 (2) + p0 (3) ... 2 + 3 = 5
        let mut avg = GradientAverager::new(&twin, &params, 5 * 4);
        let all = [id(0), id(1), id(2)];
        avg.on_event(GradEvent::Plan(&all)).unwrap();
        assert_eq!(*twin.log.borrow(), Vec::<usize>::new());
        avg.on_event(GradEvent::Ready(id(0))).unwrap(); // bucket 1's, bucket 0 not ready
        assert_eq!(*twin.log.borrow(), Vec::<usize>::new());
        avg.on_event(GradEvent::Ready(id(2))).unwrap(); // bucket 0 complete
        assert_eq!(*twin.log.borrow(), [4]);
        avg.on_event(GradEvent::Ready(id(1))).unwrap(); // bucket 1 complete
        assert_eq!(*twin.log.borrow(), [4, 5]);
        avg.finish().unwrap();
        // sums of equal gradients over two ranks, × 1/2: unchanged
        for (i, (_, p)) in params.iter().enumerate() {
            let g = p.grad().unwrap().to_vec().unwrap();
            assert!(g.iter().all(|&v| v == i as f32 + 1.0), "{g:?}");
        }
    }

    #[test]
    fn on_cuda_sim_the_buckets_are_device_tensors_with_the_cpus_results() {
        let params = three_params_on(Device::CudaSim);
        assert_eq!(params[0].1.grad().unwrap().device(), Device::CudaSim);
        let twin = Twin::default();
        let mut avg = GradientAverager::new(&twin, &params, 5 * 4);
        assert_eq!(avg.seam.get().name(), "staged");
        avg.plan_from_gradients().unwrap();
        avg.finish().unwrap();
        assert_eq!(*twin.log.borrow(), [4, 5]);
        for (i, (_, p)) in params.iter().enumerate() {
            let g = p.grad().unwrap();
            assert_eq!(g.device(), Device::CudaSim);
            // sum over the twin ranks, × 1/2 on the device: the gradient (exact in f32)
            let g = g.to_vec().unwrap();
            assert!(g.iter().all(|&v| v == i as f32 + 1.0), "{g:?}");
        }
    }

    #[test]
    fn without_events_the_same_buckets_start_after_backward() {
        let params = three_params();
        let twin = Twin::default();
        let mut avg = GradientAverager::new(&twin, &params, 5 * 4);
        avg.plan_from_gradients().unwrap();
        avg.finish().unwrap();
        assert_eq!(*twin.log.borrow(), [4, 5]);
    }

    #[test]
    fn overlapped_backward_starts_buckets_during_the_pass() {
        // y = Σ (x·a)·b: backward finishes b's gradient before a's; a bucket per parameter
        let x = Tensor::from_slice(&[1.0, 2.0], &[2], Device::Cpu).unwrap();
        let a = Tensor::from_slice(&[3.0, 4.0], &[2], Device::Cpu)
            .unwrap()
            .with_grad();
        let b = Tensor::from_slice(&[5.0, 6.0, 7.0], &[3], Device::Cpu)
            .unwrap()
            .with_grad();
        let params = vec![("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
        let twin = Twin::default();
        let loss = x
            .mul(&a)
            .unwrap()
            .sum()
            .unwrap()
            .mul(&b.sum().unwrap())
            .unwrap();
        let mut avg = GradientAverager::new(&twin, &params, 4);
        let mut seen = vec![];
        loss.backward_with_hook(&mut |e| {
            avg.on_event(e)?;
            seen.push((a.grad().is_some(), twin.log.borrow().clone()));
            Ok(())
        })
        .unwrap();
        avg.finish().unwrap();
        // after the plan nothing; b's bucket (3 values, reverse order first) starts once b is final,
        // before a has a gradient; a's after a is final
        assert_eq!(seen.first(), Some(&(false, vec![])));
        assert!(seen.contains(&(false, vec![3])), "{seen:?}");
        assert_eq!(seen.last(), Some(&(true, vec![3, 2])));
        assert_eq!(a.grad().unwrap().to_vec().unwrap(), [18.0, 36.0]);
    }

    #[test]
    fn buckets_respect_the_cap_and_keep_order() {
        assert_eq!(buckets(&[], 10), vec![]);
        assert_eq!(buckets(&[4, 4, 4], 10), vec![0..2, 2..3]);
        assert_eq!(buckets(&[4, 6, 11, 1], 10), vec![0..2, 2..3, 3..4]);
        assert_eq!(buckets(&[10, 10], 10), vec![0..1, 1..2]);
        assert_eq!(buckets(&[3, 3, 3], 100), vec![0..3]);
    }
}
