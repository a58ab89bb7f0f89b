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
pub mod launch;
#[cfg(feature = "mpi")]
mod mpi_backend;
pub mod placement;
pub mod sync_bn;
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
mod watchdog;

#[cfg(feature = "mpi")]
pub use mpi_backend::MpiCollective;
pub use placement::{Launcher, Placement};

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
/// launcher's variables); without it, an error naming the feature.
pub fn init(placement: &Placement) -> Result<Box<dyn Collective>> {
    if placement.world_size == 1 {
        return Ok(Box::new(SingleProcess));
    }
    init_multi(placement)
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
