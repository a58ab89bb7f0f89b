//! [`Collective`] over MPI (the `mpi` crate: bindings of the installed MPI library, Open MPI or
//! MPICH). Built with the cargo feature `mpi`.
//!
//! The process calls MPI_Init once (with MPI_THREAD_FUNNELED: only the training thread calls MPI) and
//! MPI_Finalize when the collective is dropped. Every operation runs under the [`Watchdog`].

use std::time::Duration;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::Equivalence;
use mpi::environment::Universe;
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::watchdog::{timeout_from_env, Watchdog};
use super::{check_gather, check_root, Collective, Launcher, PendingSum, Placement};
use crate::error::{Error, Result};

pub struct MpiCollective {
    // field order: the watchdog stops before MPI_Finalize (the universe's drop)
    watchdog: Watchdog,
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    _universe: Universe,
}

impl MpiCollective {
    /// MPI_Init, then a check that MPI sees the rank and world size of `placement` (a process started
    /// by torchrun has no MPI job around it: MPI_Init makes a world of one, which would train alone).
    pub fn init(placement: &Placement) -> Result<MpiCollective> {
        let (universe, _threading) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| {
                Error::Distributed("MPI is already initialised in this process".into())
            })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if (rank, size) != (placement.rank, placement.world_size) {
            let hint = if placement.launcher == Launcher::Torchrun {
                "under torchrun only the NCCL backend joins the processes (CUDA GPUs with libnccl: \
                 --dist-backend nccl or auto); for MPI launch them with mpirun or srun instead \
                 (docs/DISTRIBUTED.md)"
            } else {
                "launch every process with the same mpirun or srun (with --mpi=pmix for srun)"
            };
            return Err(Error::Distributed(format!(
                "{} placed this process as rank {} of {}, but MPI sees rank {rank} of {size}: {hint}",
                placement.launcher.name(),
                placement.rank,
                placement.world_size
            )));
        }
        let timeout: Duration = timeout_from_env()?;
        let watchdog = Watchdog::start(
            format!("rank {rank} of {size} (pid {})", std::process::id()),
            timeout,
            Watchdog::exit_process(),
        )?;
        Ok(MpiCollective {
            watchdog,
            world,
            rank,
            size,
            local_rank: placement.local_rank,
            _universe: universe,
        })
    }
}

impl MpiCollective {
    /// MPI_Allreduce(MPI_SUM) of `buf` into itself (through a copy: the crate has no MPI_IN_PLACE).
    fn sum_in_place<T: Equivalence + Copy>(&self, buf: &mut [T]) -> Result<()> {
        let _w = self.watchdog.enter("all_reduce");
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        self.sum_in_place(buf)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.sum_in_place(buf)
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.size)?;
        let _w = self.watchdog.enter("broadcast");
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather(mine.len(), out.len(), self.size)?;
        let _w = self.watchdog.enter("all_gather");
        self.world.all_gather_into(mine, out);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let _w = self.watchdog.enter("barrier");
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) {
        self.world.abort(code)
    }
    fn backend_name(&self) -> &'static str {
        "mpi"
    }
    fn start_all_reduce_sum(&self, buf: Vec<f32>) -> Result<Box<dyn PendingSum + '_>> {
        let n = buf.len();
        let send: *mut [f32] = Box::into_raw(buf.into_boxed_slice());
        let recv: *mut [f32] = Box::into_raw(vec![0f32; n].into_boxed_slice());
        // SAFETY: both boxes stay allocated, and are not touched by this process, until the request
        // has completed: `MpiSum` frees them only after `wait` (or its drop, which waits first); a
        // leaked `MpiSum` leaks them, it never frees them early.
        let (s, r): (&'static [f32], &'static mut [f32]) = unsafe { (&*send, &mut *recv) };
        let request =
            self.world
                .immediate_all_reduce_into(StaticScope, s, r, SystemOperation::sum());
        Ok(Box::new(MpiSum {
            owner: self,
            request: Some(request),
            send,
            recv,
        }))
    }
}

/// An MPI_Iallreduce in flight: the request and the two heap buffers MPI reads and writes.
struct MpiSum<'c> {
    owner: &'c MpiCollective,
    request: Option<Request<'static, [f32], StaticScope>>,
    send: *mut [f32],
    recv: *mut [f32],
}

impl MpiSum<'_> {
    /// Wait for the request (under the watchdog) if it is still in flight.
    fn complete(&mut self) {
        if let Some(r) = self.request.take() {
            let _w = self.owner.watchdog.enter("all_reduce (gradient bucket)");
            r.wait_without_status();
        }
    }
}

impl PendingSum for MpiSum<'_> {
    fn test(&mut self) -> Result<bool> {
        if let Some(r) = self.request.take() {
            if let Err(still) = r.test() {
                self.request = Some(still);
            }
        }
        Ok(self.request.is_none())
    }
    fn wait(mut self: Box<Self>) -> Result<Vec<f32>> {
        self.complete();
        // SAFETY: the request has completed; `recv` came from Box::into_raw in
        // `start_all_reduce_sum` and is taken once (drop below frees only `send` then).
        let out = unsafe { Box::from_raw(self.recv) }.into_vec();
        self.recv = std::ptr::slice_from_raw_parts_mut(std::ptr::null_mut(), 0);
        Ok(out)
    }
}

impl Drop for MpiSum<'_> {
    fn drop(&mut self) {
        self.complete();
        // SAFETY: the request has completed; each pointer is from Box::into_raw and freed once
        // (`wait` nulls `recv` when it takes it).
        unsafe {
            drop(Box::from_raw(self.send));
            if !self.recv.is_null() {
                drop(Box::from_raw(self.recv));
            }
        }
    }
}
