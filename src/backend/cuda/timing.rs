//! CUDA-event timing and device properties, for the benchmarks (benches/suite.rs). Nothing here launches
//! a kernel: events are recorded on the backend's one stream, between the calls being timed.

use cudarc::driver::{sys, CudaEvent};

use super::{derr, CudaBackend};
use crate::error::Result;

/// A point on the backend's stream: a CUDA event with timing enabled.
#[derive(Debug)]
pub struct StreamEvent(CudaEvent);

impl StreamEvent {
    /// Milliseconds of stream time from `self` to `end` (waits for both to complete).
    pub fn elapsed_ms(&self, end: &StreamEvent) -> Result<f32> {
        self.0
            .elapsed_ms(&end.0)
            .map_err(derr("event elapsed time"))
    }
}

/// What the driver reports about the device, enough to derive its FP32 and memory peaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceProps {
    pub name: String,
    pub sm_count: u32,
    pub compute_capability: (u32, u32),
    /// Peak SM clock.
    pub clock_khz: u64,
    /// Peak memory clock.
    pub memory_clock_khz: u64,
    pub memory_bus_bits: u64,
    pub l2_bytes: u64,
    pub total_memory: u64,
}

impl CudaBackend {
    /// Record an event on the stream now (after everything enqueued so far).
    pub fn record_event(&self) -> Result<StreamEvent> {
        self.bind()?;
        self.stream
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map(StreamEvent)
            .map_err(derr("record event"))
    }

    /// The device's properties from the driver.
    pub fn properties(&self) -> Result<DeviceProps> {
        use sys::CUdevice_attribute as A;
        self.bind()?;
        let attr = |a: A| -> Result<u64> {
            Ok(self.ctx.attribute(a).map_err(derr("attribute"))?.max(0) as u64)
        };
        Ok(DeviceProps {
            name: self.device_name.clone(),
            sm_count: self.sm_count,
            compute_capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)? as u32,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)? as u32,
            ),
            clock_khz: attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)?,
            memory_clock_khz: attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)?,
            memory_bus_bits: attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)?,
            l2_bytes: attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?,
            total_memory: self.ctx.total_mem().map_err(derr("total memory"))? as u64,
        })
    }
}
