//! Data-parallel training: one process per device, joined by a [`Collective`].
//!
//! - [`placement`]: a process's rank, world size and local rank, from the environment that torchrun,
//!   Open MPI's `mpirun` and Slurm's `srun` set ([`Placement::from_env`]).
//! - [`Collective`]: the operations data parallelism needs (all-reduce, broadcast, all-gather,
//!   barrier) over host `f32` buffers, with two implementations: [`SingleProcess`] (world of one,
//!   every operation the identity) and, with the cargo feature `mpi`, [`MpiCollective`] over an
//!   installed MPI library (Open MPI, MPICH) through the `mpi` crate.
//! - [`ddp`]: PyTorch DistributedDataParallel's semantics on a [`crate::exec::Network`]: parameters and
//!   buffers broadcast from rank 0, gradients averaged in buckets of about 25 MB.
//! - [`launch`]: `--nproc-per-node`, the local processes of a job started through mpirun.
//! - [`sync_bn`]: synchronised batch norm (`--sync-bn`): batch statistics and their gradients over
//!   every rank's batch.
//!
//! [`init`] picks the implementation for a placement. A world of more than one process without the
//! `mpi` feature is an error naming the feature, never a silent single-process run.
//! docs/DISTRIBUTED.md says how to launch and what was run.

pub mod ddp;
pub mod device;
pub mod launch;
#[cfg(feature = "mpi")]
mod mpi_backend;
pub mod nccl;
pub mod placement;
pub mod rendezvous;
pub mod sync_bn;
mod watchdog;

pub use device::DeviceCollective;
#[cfg(feature = "mpi")]
pub use mpi_backend::MpiCollective;
pub use nccl::NcclCollective;
pub use placement::{Launcher, Placement};

use crate::device::Device;
use crate::error::{Error, Result};

/// Collective operations over the processes of one job. Every process must call the same operations
/// in the same order with buffers of the same length (the MPI rule); a length that differs between
/// ranks is undefined behaviour in MPI, so callers derive lengths from state every rank shares (the
/// model, the batch count).
pub trait Collective {
    /// This process's index in `0..world_size()`.
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Index among the processes on this machine (selects the GPU: `cuda:<local rank>`).
    fn local_rank(&self) -> usize;
    /// Every rank's `buf` replaced by the element-wise sum over ranks.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// As [`Collective::all_reduce_sum`] in f64 (counts and loss sums of the metrics, exact beyond
    /// f32's 2^24).
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Every rank's `buf` replaced by `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// `out` (world size × `mine.len()`) receives every rank's `mine`, in rank order.
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()>;
    /// Return when every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// End the whole job after an error on this rank (MPI_Abort), so that the other ranks do not wait
    /// in a collective forever. A single process returns.
    fn abort(&self, code: i32);

    /// Every rank's `buf` replaced by the mean over ranks: the sum, then × 1/world (in f32, as
    /// PyTorch's DDP divides the bucket before its sum).
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        scale_to_mean(buf, self.world_size());
        Ok(())
    }

    /// Start the element-wise sum of `buf` over the ranks and return without waiting for it
    /// (MPI_Iallreduce), so that computation goes on meanwhile; [`PendingSum::wait`] gives the sum.
    /// Collectives started this way count in the MPI order rule like blocking ones. The default
    /// completes it at once with [`Collective::all_reduce_sum`].
    fn start_all_reduce_sum(&self, mut buf: Vec<f32>) -> Result<Box<dyn PendingSum + '_>> {
        self.all_reduce_sum(&mut buf)?;
        Ok(Box::new(Summed(buf)))
    }

    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// What joins the processes: `single` (a world of one), `mpi` or `nccl` (recorded with the run).
    fn backend_name(&self) -> &'static str {
        "single"
    }

    /// This collective's own operations on tensors of `device` (NCCL on its GPU), if it has them;
    /// `device::for_device` stages through the host otherwise.
    fn device_collective(&self, _device: Device) -> Option<&dyn DeviceCollective> {
        None
    }
}

/// `buf` (a sum over `world` ranks) × 1/world, in f32 (the mean of [`Collective::all_reduce_mean`]).
pub(crate) fn scale_to_mean(buf: &mut [f32], world: usize) {
    if world > 1 {
        let inv = 1.0 / world as f32;
        buf.iter_mut().for_each(|v| *v *= inv);
    }
}

/// A sum started by [`Collective::start_all_reduce_sum`].
pub trait PendingSum {
    /// Whether it has completed (a test also lets MPI progress it: Open MPI moves a non-blocking
    /// collective on only inside MPI calls).
    fn test(&mut self) -> Result<bool>;
    /// Wait for it (under the watchdog's timeout): the element-wise sum over the ranks.
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

/// A sum that has completed.
struct Summed(Vec<f32>);

impl PendingSum for Summed {
    fn test(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn wait(self: Box<Self>) -> Result<Vec<f32>> {
        Ok(self.0)
    }
}

/// A world of one process: every collective is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather(mine.len(), out.len(), 1)?;
        out.copy_from_slice(mine);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, _code: i32) {}
}

pub(crate) fn check_root(root: usize, world: usize) -> Result<()> {
    if root >= world {
        return Err(Error::Distributed(format!(
            "broadcast from rank {root} in a world of {world}"
        )));
    }
    Ok(())
}

pub(crate) fn check_gather(mine: usize, out: usize, world: usize) -> Result<()> {
    if out != mine * world {
        return Err(Error::Distributed(format!(
            "all_gather of {mine} values from each of {world} ranks into a buffer of {out}"
        )));
    }
    Ok(())
}

/// The collective for `placement`: [`SingleProcess`] for a world of one; with the `mpi` feature,
/// [`MpiCollective`] (MPI_Init, then a check that MPI sees the same rank and world size as the
/// launcher's variables); without it, an error naming the feature. (`--dist-backend mpi`; see
/// [`init_with`] for the choice of NCCL.)
pub fn init(placement: &Placement) -> Result<Box<dyn Collective>> {
    if placement.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    init_multi(placement)
}

/// Which library joins the processes (`--dist-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DistBackend {
    /// NCCL on a real CUDA device when libnccl loads, else MPI.
    #[default]
    Auto,
    /// NCCL (CUDA devices only): gradient buckets never leave the GPU.
    Nccl,
    /// MPI: tensors on a device are staged through host memory.
    Mpi,
}

impl DistBackend {
    pub fn name(self) -> &'static str {
        match self {
            DistBackend::Auto => "auto",
            DistBackend::Nccl => "nccl",
            DistBackend::Mpi => "mpi",
        }
    }
}

impl std::str::FromStr for DistBackend {
    type Err = Error;
    fn from_str(s: &str) -> Result<DistBackend> {
        match s {
            "auto" => Ok(DistBackend::Auto),
            "nccl" => Ok(DistBackend::Nccl),
            "mpi" => Ok(DistBackend::Mpi),
            _ => Err(Error::arg(
                "--dist-backend",
                format!("{s:?}: expected auto, nccl or mpi"),
            )),
        }
    }
}

/// What `requested` resolves to (NCCL or MPI) for a model on `device`; `nccl` says whether libnccl
/// can be used (`nccl::probe`). An explicit `nccl` where it cannot run is an error saying why.
pub fn choose_backend(
    requested: DistBackend,
    device: Device,
    nccl: impl FnOnce() -> std::result::Result<i32, String>,
) -> Result<DistBackend> {
    let refuse = |why: String| {
        Err(Error::arg(
            "--dist-backend",
            format!("nccl: {why}; use --dist-backend mpi (or auto), which stages device buffers through host memory"),
        ))
    };
    match (requested, device) {
        (DistBackend::Mpi, _) => Ok(DistBackend::Mpi),
        (DistBackend::Nccl, Device::Cuda(_)) => match nccl() {
            Ok(_) => Ok(DistBackend::Nccl),
            Err(why) => refuse(why),
        },
        (DistBackend::Nccl, Device::CudaSim) => refuse(
            "the simulated CUDA device (cuda-sim) runs kernels on the host; NCCL needs real GPUs"
                .into(),
        ),
        (DistBackend::Nccl, d) => refuse(format!("NCCL needs a CUDA GPU, and the device is {d}")),
        (DistBackend::Auto, Device::Cuda(_)) if nccl().is_ok() => Ok(DistBackend::Nccl),
        (DistBackend::Auto, _) => Ok(DistBackend::Mpi),
    }
}

/// The collective for `placement` and a model on `device`, through the backend `requested` resolves
/// to ([`choose_backend`]). NCCL's unique id goes over MPI when an MPI launcher started the job and
/// the `mpi` feature is built, else over the TCP rendezvous at `MASTER_ADDR`/`MASTER_PORT`.
pub fn init_with(
    placement: &Placement,
    requested: DistBackend,
    device: Device,
) -> Result<Box<dyn Collective>> {
    let chosen = choose_backend(requested, device, nccl::probe)?;
    if placement.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    match (chosen, device) {
        (DistBackend::Nccl, Device::Cuda(ordinal)) => {
            let bootstrap = if cfg!(feature = "mpi") && placement.launcher != Launcher::Torchrun {
                Some(init_multi(placement)?)
            } else {
                None
            };
            Ok(Box::new(NcclCollective::init(
                placement, ordinal, bootstrap,
            )?))
        }
        _ => init_multi(placement),
    }
}

#[cfg(feature = "mpi")]
fn init_multi(placement: &Placement) -> Result<Box<dyn Collective>> {
    Ok(Box::new(MpiCollective::init(placement)?))
}

#[cfg(not(feature = "mpi"))]
fn init_multi(placement: &Placement) -> Result<Box<dyn Collective>> {
    Err(Error::Distributed(format!(
        "{} started this process as rank {} of {}, but this vidgrad was built without distributed \
         training: rebuild with the cargo feature `mpi` (`cargo build --release --features mpi`, \
         which needs an MPI library such as Debian's libopenmpi-dev) and launch with mpirun or srun \
         (docs/DISTRIBUTED.md). Refusing to train as a single process.",
        placement.launcher.name(),
        placement.rank,
        placement.world_size
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Rank 0 of two whose peer holds the same values: a sum doubles, a gather or broadcast changes
    /// nothing, and every sum started is logged (its length).
    #[derive(Default)]
    pub(crate) struct Twin {
        pub(crate) log: RefCell<Vec<usize>>,
    }

    impl Collective for Twin {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn local_rank(&self) -> usize {
            0
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            buf.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
        fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
            buf.iter_mut().for_each(|v| *v *= 2.0);
            Ok(())
        }
        fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
            Ok(())
        }
        fn all_gather(&self, _: &[f32], _: &mut [f32]) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn abort(&self, _: i32) {}
        fn start_all_reduce_sum(&self, mut buf: Vec<f32>) -> Result<Box<dyn PendingSum + '_>> {
            self.log.borrow_mut().push(buf.len());
            self.all_reduce_sum(&mut buf)?;
            Ok(Box::new(Summed(buf)))
        }
    }

    #[test]
    fn single_process_collectives_are_the_identity() {
        let d = SingleProcess;
        let mut v = vec![1.5f32, -2.0, 3.25];
        d.all_reduce_sum(&mut v).unwrap();
        d.all_reduce_mean(&mut v).unwrap();
        d.broadcast(&mut v, 0).unwrap();
        assert_eq!(v, [1.5, -2.0, 3.25]);
        let mut out = vec![0.0; 3];
        d.all_gather(&v, &mut out).unwrap();
        assert_eq!(out, v);
        assert!(d.broadcast(&mut v, 1).is_err());
        assert!(d.all_gather(&v, &mut [0.0; 4]).is_err());
        d.barrier().unwrap();
        assert_eq!((d.rank(), d.world_size(), d.local_rank()), (0, 1, 0));
    }

    #[test]
    fn auto_takes_nccl_only_on_a_gpu_where_libnccl_loads() {
        let has = || Ok(22_903);
        let lacks = || Err("libnccl.so could not be loaded".to_string());
        let auto = DistBackend::Auto;
        assert_eq!(
            choose_backend(auto, Device::Cuda(1), has).unwrap(),
            DistBackend::Nccl
        );
        assert_eq!(
            choose_backend(auto, Device::Cuda(1), lacks).unwrap(),
            DistBackend::Mpi
        );
        for d in [Device::Cpu, Device::CudaSim] {
            assert_eq!(choose_backend(auto, d, has).unwrap(), DistBackend::Mpi);
        }
        let mpi = DistBackend::Mpi;
        assert_eq!(
            choose_backend(mpi, Device::Cuda(0), has).unwrap(),
            DistBackend::Mpi
        );
    }

    #[test]
    fn explicit_nccl_where_it_cannot_run_is_an_error_naming_the_flag_and_why() {
        let nccl = DistBackend::Nccl;
        let has = || Ok(22_903);
        let e = |d, probe: fn() -> std::result::Result<i32, String>| {
            choose_backend(nccl, d, probe).unwrap_err().to_string()
        };
        let cpu = e(Device::Cpu, || Ok(1));
        assert!(
            cpu.contains("--dist-backend") && cpu.contains("the device is cpu"),
            "{cpu}"
        );
        let sim = e(Device::CudaSim, || Ok(1));
        assert!(
            sim.contains("--dist-backend") && sim.contains("cuda-sim"),
            "{sim}"
        );
        let lib = e(Device::Cuda(0), || {
            Err("libnccl.so could not be loaded".into())
        });
        assert!(
            lib.contains("--dist-backend") && lib.contains("libnccl.so"),
            "{lib}"
        );
        assert_eq!(choose_backend(nccl, Device::Cuda(0), has).unwrap(), nccl);
        // the real probe on this machine, and a world of one: still refused on the CPU
        let e = init_with(&Placement::single(), nccl, Device::Cpu)
            .err()
            .unwrap();
        assert!(e.to_string().contains("--dist-backend"), "{e}");
        assert!(init_with(&Placement::single(), DistBackend::Auto, Device::Cpu).is_ok());
    }

    #[test]
    fn the_flag_values_parse_and_others_are_errors() {
        for b in [DistBackend::Auto, DistBackend::Nccl, DistBackend::Mpi] {
            assert_eq!(b.name().parse::<DistBackend>().unwrap(), b);
        }
        let e = "gloo".parse::<DistBackend>().unwrap_err().to_string();
        assert!(
            e.contains("--dist-backend") && e.contains("\"gloo\""),
            "{e}"
        );
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn a_world_of_two_without_the_mpi_feature_is_an_error_naming_it() {
        let p = Placement {
            rank: 1,
            world_size: 2,
            local_rank: 1,
            launcher: Launcher::OpenMpi,
            master: None,
        };
        let e = init(&p).err().expect("must refuse").to_string(); // Box<dyn Collective> is not Debug
        assert!(e.contains("`mpi`") && e.contains("rank 1 of 2"), "{e}");
        assert!(init(&Placement::single()).is_ok());
    }
}
