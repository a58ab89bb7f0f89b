//! A collective that does not complete within a timeout ends the process with an error.
//!
//! MPI's blocking collectives wait forever for a rank that hangs (a rank that dies is noticed by
//! mpirun, which ends the job). The watchdog thread watches the collective in flight and, after
//! `VIDGRAD_DIST_TIMEOUT` seconds (default [`DEFAULT_TIMEOUT_S`], PyTorch's NCCL default), prints an
//! error naming this rank and the operation and exits the process with status 1; the launcher then
//! ends the other ranks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Seconds a collective may take before the watchdog ends the process.
pub const DEFAULT_TIMEOUT_S: f64 = 600.0;

/// The timeout of `VIDGRAD_DIST_TIMEOUT` (seconds, > 0), else the default.
pub(crate) fn timeout_from_env() -> Result<Duration> {
    match std::env::var("VIDGRAD_DIST_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs_f64(DEFAULT_TIMEOUT_S)),
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(Duration::from_secs_f64(v)),
            _ => Err(Error::Distributed(format!(
                "VIDGRAD_DIST_TIMEOUT={s:?}: expected a positive number of seconds"
            ))),
        },
    }
}

type OnTimeout = Box<dyn Fn(String) + Send>;

struct State {
    in_flight: Mutex<Option<(Instant, &'static str)>>,
    stop: AtomicBool,
}

pub(crate) struct Watchdog {
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Marks a collective in flight until dropped.
pub(crate) struct InFlight<'a>(&'a Watchdog);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        *self
            .0
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Watchdog {
    /// Watch with `timeout`; `who` names this process in the message ("rank 1 of 2").
    pub(crate) fn start(who: String, timeout: Duration, on_timeout: OnTimeout) -> Result<Watchdog> {
        let state = Arc::new(State {
            in_flight: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let thread = std::thread::Builder::new()
            .name("vidgrad-dist-watchdog".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    let late = s
                        .in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .filter(|(t, _)| t.elapsed() > timeout);
                    if let Some((t, op)) = late {
                        on_timeout(format!(
                            "{who}: the collective {op} has not completed after {:.0} s \
                             (VIDGRAD_DIST_TIMEOUT={}): another rank died or hangs; ending this \
                             process so that the job stops (the last checkpoint is intact)",
                            t.elapsed().as_secs_f64(),
                            timeout.as_secs_f64()
                        ));
                        return;
                    }
                }
            })
            .map_err(|e| Error::Distributed(format!("cannot start the watchdog thread: {e}")))?;
        Ok(Watchdog {
            state,
            thread: Some(thread),
        })
    }

    /// The ending used by training: the message on stderr, then `_exit(1)` (no atexit handlers: MPI's
    /// could wait for the dead peer).
    pub(crate) fn exit_process() -> OnTimeout {
        Box::new(|msg| {
            eprintln!("error: {msg}");
            // SAFETY: _exit ends the process at once; nothing of this process runs afterwards.
            unsafe { libc::_exit(1) }
        })
    }

    pub(crate) fn enter(&self, op: &'static str) -> InFlight<'_> {
        *self
            .state
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), op));
        InFlight(self)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_collective_past_the_timeout_is_reported_and_a_quick_one_is_not() {
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let w = Watchdog::start(
            "rank 1 of 2".into(),
            Duration::from_millis(100),
            Box::new(move |m| tx.lock().unwrap().send(m).unwrap()),
        )
        .unwrap();
        {
            let _g = w.enter("all_reduce");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            rx.try_recv().is_err(),
            "a completed collective was reported"
        );
        let _g = w.enter("broadcast");
        let msg = rx.recv_timeout(Duration::from_secs(5)).expect("no report");
        assert!(
            msg.contains("rank 1 of 2") && msg.contains("broadcast"),
            "{msg}"
        );
    }
}
