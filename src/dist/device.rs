//! Collectives over tensors where they live (the device seam of data parallelism).
//!
//! DDP's gradient buckets are packed into one tensor on the model's device ([`pack`]: the backend's
//! `concat`, device-to-device copies at offsets on the device's stream), summed over the ranks by a
//! [`DeviceCollective`], scaled by 1/world on the device ([`mean_of_sum`]: the backend's scale
//! kernel) and unpacked into the gradients ([`unpack`]: the backend's `split`, then copies). Two
//! implementations of the seam:
//!
//! - `NcclCollective` (`super::nccl`): ncclAllReduce / ncclBroadcast on the device pointers, on the
//!   CUDA backend's stream (a real GPU with libnccl).
//! - [`Staged`]: the tensor copied to the host, the host [`Collective`] (MPI) run on it, the result
//!   copied back. The CPU, the simulated CUDA device and a GPU without libnccl use it.
//!
//! [`for_device`] picks: the collective's own device seam when it has one for that device, else
//! [`Staged`] over the collective.

use super::{Collective, PendingSum};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Collective operations on 1-d tensors of one device. Every rank calls the same operations in the
/// same order with tensors of the same length (as [`Collective`]).
pub trait DeviceCollective {
    /// What carries the data: `nccl` or `staged` (recorded with the run).
    fn name(&self) -> &'static str;
    /// Start the element-wise sum of `buf` over the ranks and return without waiting for it, so that
    /// backward goes on meanwhile; [`PendingDeviceSum::wait`] gives the sum, on `buf`'s device.
    fn start_all_reduce_sum(&self, buf: Tensor) -> Result<Box<dyn PendingDeviceSum + '_>>;
    /// Every rank's `buf` replaced by `root`'s, in place.
    fn broadcast(&self, buf: &Tensor, root: usize) -> Result<()>;
}

/// A sum started by [`DeviceCollective::start_all_reduce_sum`].
pub trait PendingDeviceSum {
    /// Whether it has completed (and a chance for the transport to progress it).
    fn test(&mut self) -> Result<bool>;
    /// The element-wise sum over the ranks, on the device (under the watchdog's timeout).
    fn wait(self: Box<Self>) -> Result<Tensor>;
}

/// The device seam through the host: device → host, the host collective, host → device.
pub struct Staged<'a>(pub &'a dyn Collective);

impl DeviceCollective for Staged<'_> {
    fn name(&self) -> &'static str {
        "staged"
    }
    fn start_all_reduce_sum(&self, buf: Tensor) -> Result<Box<dyn PendingDeviceSum + '_>> {
        start_staged(self.0, buf)
    }
    fn broadcast(&self, buf: &Tensor, root: usize) -> Result<()> {
        let mut v = buf.to_vec()?;
        self.0.broadcast(&mut v, root)?;
        buf.assign(&Tensor::from_vec(v, buf.shape(), buf.device())?)
    }
}

/// `buf` copied to the host and its sum started by `host` (the sum comes back to `buf`'s device).
fn start_staged<'a>(
    host: &'a dyn Collective,
    buf: Tensor,
) -> Result<Box<dyn PendingDeviceSum + 'a>> {
    let host = host.start_all_reduce_sum(buf.to_vec()?)?;
    Ok(Box::new(StagedSum { host, like: buf }))
}

struct StagedSum<'a> {
    host: Box<dyn PendingSum + 'a>,
    /// The tensor that was sent: its shape and device receive the sum.
    like: Tensor,
}

impl PendingDeviceSum for StagedSum<'_> {
    fn test(&mut self) -> Result<bool> {
        self.host.test()
    }
    fn wait(self: Box<Self>) -> Result<Tensor> {
        let sum = self.host.wait()?;
        Tensor::from_vec(sum, self.like.shape(), self.like.device())
    }
}

/// The device seam for tensors on `device`: `dist`'s own (NCCL) when it has one there, else
/// [`Staged`] through `dist`'s host collectives.
pub enum Seam<'a> {
    Native(&'a dyn DeviceCollective),
    Staged(Staged<'a>),
}

impl<'a> Seam<'a> {
    pub fn get(&self) -> &dyn DeviceCollective {
        match self {
            Seam::Native(d) => *d,
            Seam::Staged(s) => s,
        }
    }

    /// As [`DeviceCollective::start_all_reduce_sum`], the sum borrowing the collective (not the
    /// seam), so that it can be kept beside the seam.
    pub fn start_all_reduce_sum(&self, buf: Tensor) -> Result<Box<dyn PendingDeviceSum + 'a>> {
        match *self {
            Seam::Native(d) => d.start_all_reduce_sum(buf),
            Seam::Staged(Staged(host)) => start_staged(host, buf),
        }
    }
}

pub fn for_device(dist: &dyn Collective, device: Device) -> Seam<'_> {
    match dist.device_collective(device) {
        Some(d) => Seam::Native(d),
        None => Seam::Staged(Staged(dist)),
    }
}

/// `tensors` (one device), one after the other in one new 1-d tensor: the backend's concat, which
/// on a CUDA device copies each at its offset on the device's stream.
pub fn pack(tensors: &[&Tensor]) -> Result<Tensor> {
    crate::autograd::no_grad(|| {
        let flat: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.reshape(&[t.numel()]))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = flat.iter().collect();
        crate::ops::layout::concat(&refs, 0)
    })
}

/// Write consecutive pieces of `flat` (as made by [`pack`]) into `targets`, in place.
pub fn unpack(flat: &Tensor, targets: &[&Tensor]) -> Result<()> {
    let sizes: Vec<usize> = targets.iter().map(|t| t.numel()).collect();
    if flat.shape() != [sizes.iter().sum::<usize>()] {
        return Err(Error::Distributed(format!(
            "unpacking a bucket of shape {:?} into tensors of {sizes:?} values",
            flat.shape()
        )));
    }
    crate::ops::same_device("unpack", &[flat])?;
    let parts = flat.backend().split(flat.buffer(), 1, &sizes)?;
    for (t, part) in targets.iter().zip(parts) {
        t.assign(&flat.sibling(part, t.shape().to_vec()))?;
    }
    Ok(())
}

/// `sum` (a sum over `world` ranks) × 1/world in f32 on its device (PyTorch's DDP mean; the same
/// products as [`super::scale_to_mean`] on the host).
pub fn mean_of_sum(sum: Tensor, world: usize) -> Result<Tensor> {
    if world == 1 {
        return Ok(sum);
    }
    crate::autograd::no_grad(|| sum.mul_scalar(1.0 / world as f32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::tests::Twin;
    use crate::dist::SingleProcess;

    /// Three tensors of awkward sizes (not multiples of a block) with distinct values.
    fn parts(device: Device) -> Vec<Tensor> {
        [vec![3usize, 5], vec![1], vec![2, 2, 67]]
            .iter()
            .enumerate()
            .map(|(k, shape)| Tensor::randn(shape, 11 + k as u64, device).unwrap())
            .collect()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect()
    }

    /// pack, the twin's sum (× 2), the mean, unpack, on `device`: the packed values and the results.
    fn round_trip(device: Device) -> (Vec<u32>, Vec<Vec<u32>>) {
        let ps = parts(device);
        let refs: Vec<&Tensor> = ps.iter().collect();
        let packed = pack(&refs).unwrap();
        let packed_bits = bits(&packed);
        let twin = Twin::default();
        let seam = for_device(&twin, device);
        assert_eq!(seam.get().name(), "staged");
        let sum = seam
            .get()
            .start_all_reduce_sum(packed)
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(sum.device(), device);
        let mean = mean_of_sum(sum, 2).unwrap();
        // into fresh targets (different from the sources) of the same shapes
        let out: Vec<Tensor> = ps
            .iter()
            .map(|p| Tensor::zeros(p.shape(), device).unwrap())
            .collect();
        unpack(&mean, &out.iter().collect::<Vec<_>>()).unwrap();
        (packed_bits, out.iter().map(bits).collect())
    }

    #[test]
    fn packing_on_cuda_sim_is_bit_identical_to_the_cpu() {
        let (cpu_packed, cpu_out) = round_trip(Device::Cpu);
        // the packed values are the parts in order, and the mean of two equal sums is the part
        let ps = parts(Device::Cpu);
        let expect: Vec<u32> = ps.iter().flat_map(bits).collect();
        assert_eq!(cpu_packed, expect);
        assert_eq!(cpu_out, ps.iter().map(bits).collect::<Vec<_>>());
        let sim = match crate::backend::cuda::sim_backend() {
            Ok(_) => Device::CudaSim,
            Err(e) if std::env::var_os("VIDGRAD_REQUIRE_SIM").is_none() => {
                eprintln!("skipping the cuda-sim half: {e}");
                return;
            }
            Err(e) => panic!("VIDGRAD_REQUIRE_SIM is set but the simulator is missing: {e}"),
        };
        // randn is the same on both devices (host-generated), so are the buckets, bit for bit
        assert_eq!(bits(&parts(sim)[2]), bits(&ps[2]));
        let (sim_packed, sim_out) = round_trip(sim);
        assert_eq!(sim_packed, cpu_packed);
        assert_eq!(sim_out, cpu_out);
    }

    #[test]
    fn unpacking_the_wrong_size_is_an_error() {
        let ps = parts(Device::Cpu);
        let flat = Tensor::zeros(&[4], Device::Cpu).unwrap();
        let e = unpack(&flat, &ps.iter().collect::<Vec<_>>())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[4]") && e.contains("[15, 1, 268]"), "{e}");
    }

    #[test]
    fn staged_broadcast_from_a_single_process_keeps_the_values() {
        let t = Tensor::from_slice(&[1.0, 2.0], &[2], Device::Cpu).unwrap();
        Staged(&SingleProcess).broadcast(&t, 0).unwrap();
        assert_eq!(t.to_vec().unwrap(), [1.0, 2.0]);
        assert!(Staged(&SingleProcess).broadcast(&t, 1).is_err());
    }
}
