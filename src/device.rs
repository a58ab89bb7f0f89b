//! Where a tensor lives.

use crate::backend::{cpu::CpuBackend, meta::MetaBackend, Backend};
use crate::error::{Error, Result};

/// A compute device. The CPU is always present; CUDA arrives with its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
    /// The simulated CUDA device: the CUDA backend and its real kernels, run on the host CPU with
    /// memory and synchronisation checks (docs/CUDA-SIM.md). For testing; never chosen by
    /// [`Device::best`], and its timings are not GPU figures.
    CudaSim,
    /// Shapes without data: runs every shape check of the ops, allocates nothing (shape inference).
    Meta,
}

static CPU: CpuBackend = CpuBackend;
static META: MetaBackend = MetaBackend;

impl Device {
    /// The backend that runs ops on this device.
    pub fn backend(&self) -> Result<&'static dyn Backend> {
        match self {
            Device::Cpu => {
                crate::backend::cpu::join_thread_pool();
                Ok(&CPU)
            }
            Device::Meta => Ok(&META),
            Device::Cuda(i) => Ok(crate::backend::cuda::backend(*i).map_err(|e| match e {
                Error::Device(msg) => Error::Device(format!("cuda:{i}: {msg}")),
                e => e,
            })?),
            Device::CudaSim => Ok(crate::backend::cuda::sim_backend()?),
        }
    }

    /// Bytes held by live tensors (and saved activations) on this device.
    pub fn memory_in_use(&self) -> Result<usize> {
        Ok(self.backend()?.memory_in_use())
    }
    /// Peak of [`Device::memory_in_use`] since start or the last reset.
    pub fn memory_peak(&self) -> Result<usize> {
        Ok(self.backend()?.memory_peak())
    }
    pub fn reset_memory_peak(&self) -> Result<()> {
        self.backend()?.reset_memory_peak();
        Ok(())
    }

    /// Whether a CUDA device can be used: this build carries the kernels, the driver library loads and
    /// reports at least one GPU. Never panics.
    pub fn cuda_available() -> bool {
        crate::backend::cuda::device_count() > 0
    }

    /// The default device: `cuda:0` when [`Device::cuda_available`], else the CPU.
    pub fn best() -> Device {
        if Device::cuda_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }

    /// Whether this build carries the CUDA simulator (`--device cuda-sim`).
    pub fn cuda_sim_available() -> bool {
        crate::backend::cuda::sim::Simulator::available()
    }

    /// Parse "cpu", "cuda", "cuda:N" or "cuda-sim".
    pub fn parse(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "cuda-sim" => Ok(Device::CudaSim),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::Device(format!(
                        "unknown device '{s}' (expected cpu, cuda, cuda:N or cuda-sim)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Meta => write!(f, "meta"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::CudaSim => write!(f, "cuda-sim"),
        }
    }
}
