//! Crash points, for crash tests only: with `daemon --enable-crash-points`,
//! the hidden API command `crashat {"state": S, "delay_ms": D}` makes the
//! daemon kill itself with SIGKILL `D` ms after the next splice event
//! reporting state `S` is written (before the change it reports is acted
//! on, when `D` is 0). Nothing is flushed, as in a real crash.

use std::sync::Mutex;
use std::time::Duration;

use ldk_splice::SpliceEvent;

/// The armed crash point, if any.
#[derive(Default)]
pub struct CrashPoints {
    armed: Mutex<Option<(String, Duration)>>,
}

impl CrashPoints {
    /// Arms a crash at the next event reporting `state` (as the JSON names
    /// it: `negotiating`, `signed`, `confirmed`, ...).
    pub fn arm(&self, state: String, delay: Duration) {
        log::warn!("crash point armed: {state} + {} ms", delay.as_millis());
        *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = Some((state, delay));
    }

    /// Called with every splice event.
    pub fn observe(&self, event: &SpliceEvent) {
        let SpliceEvent::StateChanged { id, state, .. } = event else {
            return;
        };
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v["state"].as_str().map(str::to_string))
            .unwrap_or_default();
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let Some((wanted, delay)) = armed.as_ref() else {
            return;
        };
        if *wanted != name {
            return;
        }
        let delay = *delay;
        *armed = None;
        log::warn!("crash point reached: {id} {name}; killing the process");
        if delay.is_zero() {
            kill_now();
        }
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            kill_now();
        });
    }
}

fn kill_now() {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}
