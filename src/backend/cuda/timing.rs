//! CUDA-event timing and device properties, for the benchmarks (benches/suite.rs). Nothing here launches
//! a kernel: events are recorded on the backend's one stream, between the calls being timed.

pub use super::driver::DeviceProps;
use super::driver::DriverEvent;
use super::CudaBackend;
use crate::error::Result;

/// A point on the backend's stream: a driver event with timing enabled.
#[derive(Debug)]
pub struct StreamEvent(Box<dyn DriverEvent>);

impl StreamEvent {
    /// Milliseconds of stream time from `self` to `end` (waits for both to complete).
    pub fn elapsed_ms(&self, end: &StreamEvent) -> Result<f32> {
        self.0.elapsed_ms(&*end.0)
    }
}

impl CudaBackend {
    /// Record an event on the stream now (after everything enqueued so far).
    pub fn record_event(&self) -> Result<StreamEvent> {
        self.driver.record_event().map(StreamEvent)
    }

    /// The device's properties from the driver (read when the backend was created).
    pub fn properties(&self) -> Result<DeviceProps> {
        Ok(self.driver.props().clone())
    }
}
