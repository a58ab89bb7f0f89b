//! PyTorch DistributedDataParallel's semantics on a network's tensors: [`broadcast_tensors`] makes
//! every rank start from rank 0's parameters and buffers; [`all_reduce_gradients`] averages the
//! gradients over the ranks in buckets of at most [`BUCKET_BYTES`].
//!
//! The buckets are reduced after `backward` returns, not during it: the tape
//! ([`crate::autograd`]) has no per-parameter hooks yet, so communication does not overlap the
//! backward computation (PyTorch's DDP launches a bucket's all-reduce as soon as its gradients are
//! ready). Buckets keep reverse parameter order, the order in which backward finishes them, so that
//! an overlapping version can keep the same buckets. Tensors on a device are staged through the host
//! (`to_vec`, then `assign`): the MPI collective works on host memory.

use super::Collective;
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

/// Copy `tensors` (every rank passes the same names and shapes, in the same order) from rank 0 to
/// every rank, bucket by bucket.
pub fn broadcast_tensors(dist: &dyn Collective, tensors: &[(String, Tensor)]) -> Result<()> {
    if dist.world_size() == 1 {
        return Ok(());
    }
    let sizes: Vec<usize> = tensors.iter().map(|(_, t)| t.numel()).collect();
    for range in buckets(&sizes, BUCKET_BYTES / 4) {
        let group = &tensors[range];
        let mut flat = concat_values(group.iter().map(|(_, t)| t))?;
        dist.broadcast(&mut flat, 0)?;
        scatter_back(group.iter().map(|(n, t)| (n.as_str(), t.clone())), &flat)?;
    }
    Ok(())
}

/// The values of `tensors`, one after the other, on the host (one bucket).
fn concat_values<'a>(tensors: impl Iterator<Item = &'a Tensor> + Clone) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(tensors.clone().map(|t| t.numel()).sum());
    for t in tensors {
        flat.extend(t.to_vec()?);
    }
    Ok(flat)
}

/// Write consecutive pieces of `flat` into `targets`, in place.
fn scatter_back<'a>(targets: impl Iterator<Item = (&'a str, Tensor)>, flat: &[f32]) -> Result<()> {
    let mut at = 0;
    for (name, t) in targets {
        let n = t.numel();
        let piece = Tensor::from_slice(&flat[at..at + n], t.shape(), t.device())
            .map_err(|e| Error::Distributed(format!("{name}: {e}")))?;
        t.assign(&piece)?;
        at += n;
    }
    Ok(())
}

/// Replace every parameter's gradient by its mean over the ranks. Parameters are bucketed in reverse
/// order. A parameter without a gradient (unused by this forward pass) is left out; every rank must
/// agree on which those are (checked: a disagreement is an error, as PyTorch's DDP reports unused
/// parameters, rather than ranks whose optimisers diverge).
pub fn all_reduce_gradients(dist: &dyn Collective, params: &[(String, Tensor)]) -> Result<()> {
    if dist.world_size() == 1 {
        return Ok(());
    }
    let grads: Vec<(&str, Tensor)> = params
        .iter()
        .rev()
        .filter_map(|(n, p)| Some((n.as_str(), p.grad()?)))
        .collect();
    let mut count = [grads.len() as f64];
    dist.all_reduce_sum_f64(&mut count)?;
    if count[0] != (grads.len() * dist.world_size()) as f64 {
        return Err(Error::Distributed(format!(
            "rank {} has gradients for {} of {} parameters but the ranks together have {}: the ranks \
             ran different graphs",
            dist.rank(),
            grads.len(),
            params.len(),
            count[0]
        )));
    }
    let sizes: Vec<usize> = grads.iter().map(|(_, g)| g.numel()).collect();
    for range in buckets(&sizes, BUCKET_BYTES / 4) {
        let group = &grads[range];
        let mut flat = concat_values(group.iter().map(|(_, g)| g))?;
        dist.all_reduce_mean(&mut flat)?;
        scatter_back(group.iter().cloned(), &flat)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_the_cap_and_keep_order() {
        assert_eq!(buckets(&[], 10), vec![]);
        assert_eq!(buckets(&[4, 4, 4], 10), vec![0..2, 2..3]);
        assert_eq!(buckets(&[4, 6, 11, 1], 10), vec![0..2, 2..3, 3..4]);
        assert_eq!(buckets(&[10, 10], 10), vec![0..1, 1..2]);
        assert_eq!(buckets(&[3, 3, 3], 100), vec![0..3]);
    }
}
