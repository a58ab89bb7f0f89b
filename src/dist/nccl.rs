//! [`Collective`] and [`DeviceCollective`] over NCCL (cudarc's `nccl` bindings; libnccl loaded at run
//! time like libcuda, so building needs no NCCL).
//!
//! One communicator per process on its GPU, created from a unique id that rank 0 makes
//! (ncclGetUniqueId) and shares over the MPI communicator (launched by mpirun or srun, `mpi` feature)
//! or over the TCP rendezvous at torchrun's `MASTER_ADDR`/`MASTER_PORT` ([`super::rendezvous`]).
//! Every collective is enqueued on the CUDA backend's one stream, so it is ordered with the kernels
//! that produce and consume its buffers: gradient buckets never leave the GPU. Host buffers (metrics,
//! sync batch norm's few statistics) are copied to the device, reduced there and copied back.
//!
//! Never run: there is no GPU (nor libnccl) where this was written; it is built in CI. The selection
//! ([`probe`], `super::choose_backend`) and the id exchange are tested; the NCCL calls are not.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};

use super::device::{DeviceCollective, PendingDeviceSum};
use super::rendezvous::Rendezvous;
use super::watchdog::{timeout_from_env, Watchdog};
use super::{check_gather, check_root, Collective, Placement};
use crate::backend::cuda::{device_ptr_mut, CudaBackend};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The NCCL functions this backend calls (checked by [`probe`] before any is called: cudarc's loader
/// panics on a missing symbol).
const SYMBOLS: &[&str] = &[
    "ncclGetVersion",
    "ncclGetUniqueId",
    "ncclCommInitRank",
    "ncclCommDestroy",
    "ncclCommAbort",
    "ncclAllReduce",
    "ncclBroadcast",
    "ncclAllGather",
    "ncclGetErrorString",
];

/// Whether libnccl can be used: its version, or why not. Never panics (the library is opened and
/// every symbol this backend calls looked up before cudarc's loader, which panics on failure, runs).
pub fn probe() -> std::result::Result<i32, String> {
    // SAFETY: only opens the library (dlopen) and closes it.
    if !unsafe { sys::is_culib_present() } {
        return Err(
            "libnccl.so could not be loaded (not installed, or not on LD_LIBRARY_PATH)".into(),
        );
    }
    // SAFETY: the library is present (checked above), so `culib` does not panic; `get` only looks up
    // symbols (dlsym).
    let lib = unsafe { sys::culib() };
    for s in SYMBOLS {
        if unsafe { lib.get::<*const c_void>(s.as_bytes()) }.is_err() {
            return Err(format!(
                "libnccl has no {s} (an NCCL older than the 2.30 API this build uses?)"
            ));
        }
    }
    result::get_nccl_version().map_err(|e| format!("ncclGetVersion failed: {}", nccl_msg(&e)))
}

fn nccl_msg(e: &result::NcclError) -> String {
    format!("{:?}", e.0)
}

fn nerr(what: &'static str) -> impl Fn(result::NcclError) -> Error {
    move |e| Error::Distributed(format!("nccl: {what}: {}", nccl_msg(&e)))
}

/// The port of the TCP rendezvous: `MASTER_PORT`, or the next one under torchrun, whose agent holds
/// `MASTER_PORT` for its own store (it sets `TORCHELASTIC_USE_AGENT_STORE=True` in its workers;
/// checked with PyTorch 2.9.1's torchrun: the port is bound in the workers, the next one free).
pub(crate) fn rendezvous_port(master_port: u16, agent_store: Option<&str>) -> Result<u16> {
    if agent_store != Some("True") {
        return Ok(master_port);
    }
    master_port.checked_add(1).ok_or_else(|| {
        Error::Distributed(
            "MASTER_PORT=65535: the NCCL rendezvous uses the port after torchrun's (MASTER_PORT + 1)"
                .into(),
        )
    })
}

/// An NCCL communicator (destroyed on drop).
struct Comm(sys::ncclComm_t);

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: the communicator came from ncclCommInitRank and is dropped once, after the last
        // collective was waited for (the owner synchronises before dropping).
        unsafe {
            let _ = result::comm_destroy(self.0);
        }
    }
}

pub struct NcclCollective {
    // field order: the watchdog stops first; the communicator goes before the bootstrap collective
    // (MPI_Finalize)
    watchdog: Watchdog,
    comm: Comm,
    stream: Arc<CudaStream>,
    backend: &'static CudaBackend,
    ordinal: usize,
    rank: usize,
    size: usize,
    local_rank: usize,
    /// The collective that carried the unique id when it was MPI: kept for MPI_Abort (which ends the
    /// job under mpirun) and finalised last.
    bootstrap: Option<Box<dyn Collective>>,
}

impl NcclCollective {
    /// The communicator of rank `placement.rank` on `cuda:ordinal`. The unique id goes over
    /// `bootstrap` (an MPI collective) when given, else over the TCP rendezvous at the placement's
    /// `MASTER_ADDR`/`MASTER_PORT`.
    pub fn init(
        placement: &Placement,
        ordinal: usize,
        bootstrap: Option<Box<dyn Collective>>,
    ) -> Result<NcclCollective> {
        let (rank, size) = (placement.rank, placement.world_size);
        probe().map_err(|why| Error::Distributed(format!("--dist-backend nccl: {why}")))?;
        let backend = crate::backend::cuda::backend(ordinal)?;
        let stream = backend.cudarc_stream().ok_or_else(|| {
            Error::Distributed(format!("nccl: cuda:{ordinal} is not a real CUDA device"))
        })?;
        let timeout = timeout_from_env()?;
        let mine = if rank == 0 {
            let id = result::get_uniqueid().map_err(nerr("ncclGetUniqueId"))?;
            Some(id.internal.map(|c| c as u8))
        } else {
            None
        };
        let id = match &bootstrap {
            Some(b) => share_over(b.as_ref(), mine)?,
            None => {
                let (addr, port) = placement.master.clone().ok_or_else(|| {
                    Error::Distributed(format!(
                        "--dist-backend nccl: rank {rank} of {size} has no MPI communicator to share \
                         NCCL's id over and MASTER_ADDR/MASTER_PORT are not set for a TCP \
                         rendezvous: launch with torchrun, or with mpirun/srun in a build with the \
                         `mpi` feature"
                    ))
                })?;
                let agent = std::env::var("TORCHELASTIC_USE_AGENT_STORE").ok();
                let port = rendezvous_port(port, agent.as_deref())?;
                let r = Rendezvous {
                    addr,
                    port,
                    rank,
                    world_size: size,
                    timeout,
                };
                r.share(mine.as_ref().map(|m| &m[..]))?
            }
        };
        let internal: [std::ffi::c_char; 128] = id
            .as_slice()
            .try_into()
            .map(|a: [u8; 128]| a.map(|b| b as std::ffi::c_char))
            .map_err(|_| {
                Error::Distributed(format!(
                    "nccl: rank 0 shared a unique id of {} bytes (128 expected)",
                    id.len()
                ))
            })?;
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| Error::Device(format!("cuda: bind context: {e:?}")))?;
        let watchdog = Watchdog::start(
            format!("rank {rank} of {size} (pid {}, NCCL)", std::process::id()),
            timeout,
            Watchdog::exit_process(),
        )?;
        let mut comm = std::mem::MaybeUninit::<sys::ncclComm_t>::uninit();
        {
            let _w = watchdog.enter("ncclCommInitRank");
            // SAFETY: `comm` receives the communicator; every rank passes the same id and world size.
            unsafe {
                result::comm_init_rank(
                    comm.as_mut_ptr(),
                    size as i32,
                    sys::ncclUniqueId { internal },
                    rank as i32,
                )
            }
            .map_err(nerr("ncclCommInitRank"))?;
        }
        // SAFETY: initialised by the successful call above.
        let comm = Comm(unsafe { comm.assume_init() });
        Ok(NcclCollective {
            watchdog,
            comm,
            stream,
            backend,
            ordinal,
            rank,
            size,
            local_rank: placement.local_rank,
            bootstrap,
        })
    }

    fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// The device address of `t`, which must be a tensor of this collective's GPU whose values are
    /// one range (NCCL reads and writes them in place).
    fn ptr(&self, t: &Tensor, op: &str) -> Result<u64> {
        if t.device() != self.device() {
            return Err(Error::Distributed(format!(
                "nccl {op}: a tensor on {} given to the communicator of cuda:{}",
                t.device(),
                self.ordinal
            )));
        }
        device_ptr_mut(t.buf(), op)
    }

    fn cu_stream(&self) -> sys::cudaStream_t {
        self.stream.cu_stream() as sys::cudaStream_t
    }

    /// Enqueue an in-place sum of `count` values of `dtype` at `ptr` on the stream.
    fn enqueue_sum(&self, ptr: u64, count: usize, dtype: sys::ncclDataType_t) -> Result<()> {
        let p = ptr as *mut c_void;
        // SAFETY: `ptr` is a live device buffer of at least `count` values of `dtype` (the caller's
        // tensor, kept alive until the stream has passed the call), the stream is the backend's.
        unsafe {
            result::all_reduce(
                p,
                p,
                count,
                dtype,
                sys::ncclRedOp_t::ncclSum,
                self.comm.0,
                self.cu_stream(),
            )
        }
        .map_err(nerr("ncclAllReduce"))?;
        Ok(())
    }

    /// Wait for the stream under the watchdog (a peer that hangs leaves NCCL spinning).
    fn sync(&self, op: &'static str) -> Result<()> {
        let _w = self.watchdog.enter(op);
        self.backend.synchronize()
    }

    /// Host values (as f32 words) on this GPU.
    fn upload(&self, words: &[f32]) -> Result<Tensor> {
        Tensor::from_slice(words, &[words.len()], self.device())
    }

    /// Sum host `words` (f32 words holding `count` values of `dtype`) over the ranks on the GPU.
    fn sum_host_words(
        &self,
        words: &mut [f32],
        count: usize,
        dtype: sys::ncclDataType_t,
    ) -> Result<()> {
        if words.is_empty() {
            return Ok(());
        }
        let t = self.upload(words)?;
        self.enqueue_sum(self.ptr(&t, "all_reduce")?, count, dtype)?;
        self.sync("all_reduce")?;
        words.copy_from_slice(&t.to_vec()?);
        Ok(())
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // no collective may be in flight when the communicator is destroyed
        let _ = self.backend.synchronize();
    }
}

/// Rank 0's 128 id bytes to every rank over `dist` (as 32 f32 words: MPI copies the bits).
fn share_over(dist: &dyn Collective, mine: Option<[u8; 128]>) -> Result<Vec<u8>> {
    let mut words = [0f32; 32];
    if let Some(id) = mine {
        bytemuck::cast_slice_mut::<f32, u8>(&mut words).copy_from_slice(&id);
    }
    dist.broadcast(&mut words, 0)?;
    Ok(bytemuck::cast_slice::<f32, u8>(&words).to_vec())
}

impl Collective for NcclCollective {
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
        let n = buf.len();
        self.sum_host_words(buf, n, sys::ncclDataType_t::ncclFloat32)
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        let n = buf.len();
        let words = bytemuck::cast_slice_mut::<f64, f32>(buf);
        self.sum_host_words(words, n, sys::ncclDataType_t::ncclFloat64)
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.size)?;
        if buf.is_empty() {
            return Ok(());
        }
        let t = self.upload(buf)?;
        DeviceCollective::broadcast(self, &t, root)?;
        self.sync("broadcast")?;
        buf.copy_from_slice(&t.to_vec()?);
        Ok(())
    }
    fn all_gather(&self, mine: &[f32], out: &mut [f32]) -> Result<()> {
        check_gather(mine.len(), out.len(), self.size)?;
        if mine.is_empty() {
            return Ok(());
        }
        let send = self.upload(mine)?;
        let recv = Tensor::zeros(&[out.len()], self.device())?;
        // SAFETY: `send` holds mine.len() values and `recv` world × that, both alive until the
        // synchronisation below.
        unsafe {
            result::all_gather(
                self.ptr(&send, "all_gather")? as *const c_void,
                self.ptr(&recv, "all_gather")? as *mut c_void,
                mine.len(),
                sys::ncclDataType_t::ncclFloat32,
                self.comm.0,
                self.cu_stream(),
            )
        }
        .map_err(nerr("ncclAllGather"))?;
        self.sync("all_gather")?;
        out.copy_from_slice(&recv.to_vec()?);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        let mut one = [0f32];
        self.all_reduce_sum(&mut one)
    }
    fn abort(&self, code: i32) {
        // SAFETY: ends the communicator's work in flight; nothing uses it after (the process ends).
        unsafe {
            let _ = result::comm_abort(self.comm.0);
        }
        match &self.bootstrap {
            Some(b) => b.abort(code),
            // torchrun ends the other ranks when one exits with an error
            None => std::process::exit(code),
        }
    }
    fn backend_name(&self) -> &'static str {
        "nccl"
    }
    fn device_collective(&self, device: Device) -> Option<&dyn DeviceCollective> {
        (device == self.device()).then_some(self as &dyn DeviceCollective)
    }
}

impl DeviceCollective for NcclCollective {
    fn name(&self) -> &'static str {
        "nccl"
    }
    fn start_all_reduce_sum(&self, buf: Tensor) -> Result<Box<dyn PendingDeviceSum + '_>> {
        self.enqueue_sum(
            self.ptr(&buf, "all_reduce")?,
            buf.numel(),
            sys::ncclDataType_t::ncclFloat32,
        )?;
        Ok(Box::new(NcclSum { owner: self, buf }))
    }
    fn broadcast(&self, buf: &Tensor, root: usize) -> Result<()> {
        check_root(root, self.size)?;
        let p = self.ptr(buf, "broadcast")? as *mut c_void;
        // SAFETY: `buf` is a live buffer of this GPU holding numel values; the stream orders the
        // call after the kernels that wrote it and before those that read it.
        unsafe {
            result::broadcast(
                p,
                p,
                buf.numel(),
                sys::ncclDataType_t::ncclFloat32,
                root as i32,
                self.comm.0,
                self.cu_stream(),
            )
        }
        .map_err(nerr("ncclBroadcast"))?;
        Ok(())
    }
}

/// An ncclAllReduce enqueued on the stream; the buffer stays alive until it is waited for.
struct NcclSum<'c> {
    owner: &'c NcclCollective,
    buf: Tensor,
}

impl PendingDeviceSum for NcclSum<'_> {
    fn test(&mut self) -> Result<bool> {
        // NCCL progresses on the GPU by itself; later kernels are ordered after it on the stream
        Ok(false)
    }
    fn wait(self: Box<Self>) -> Result<Tensor> {
        self.owner.sync("all_reduce (gradient bucket)")?;
        Ok(self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rendezvous_moves_past_torchruns_agent_store() {
        assert_eq!(rendezvous_port(29500, None).unwrap(), 29500);
        assert_eq!(rendezvous_port(29500, Some("False")).unwrap(), 29500);
        assert_eq!(rendezvous_port(29500, Some("True")).unwrap(), 29501);
        let e = rendezvous_port(65535, Some("True"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MASTER_PORT=65535"), "{e}");
    }

    #[test]
    fn probing_without_libnccl_is_an_error_not_a_panic() {
        // this machine has no libnccl; where it has one, the probe gives its version
        match probe() {
            Ok(v) => assert!(v > 0),
            Err(e) => assert!(e.contains("libnccl"), "{e}"),
        }
    }
}
