//! Controlling a running VM from outside: pause/resume, graceful power-off
//! with a deadline, immediate stop. Shared by the control API, signal
//! handling and the console escape; none of it makes a vCPU wait for the
//! caller, the vCPUs only check atomics before each KVM_RUN.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use devices::legacy::{BootTimerReading, GuestReady, I8042Error, I8042};
use devices::{StopReason, VmStop};
use serde::Serialize;

use crate::signals;

/// How long `pause` waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// Parked vCPUs re-check the stop flag this often (a stop does not go
/// through the pause gate's condition variable).
const PARK_RECHECK: Duration = Duration::from_millis(50);
/// herd's default for how long a guest gets to power off when asked.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest it may get (one hour).
pub const MAX_STOP_TIMEOUT_S: f64 = 3600.0;

/// A stop timeout out of range; the caller puts the flag, key or file
/// that gave it in front ("--stop-timeout -1 is out of range: …").
#[derive(Debug, thiserror::Error)]
#[error("{0} is out of range: use 0 to {MAX_STOP_TIMEOUT_S} seconds")]
pub struct StopTimeoutError(pub f64);

/// The one check of a stop timeout in seconds, wherever it comes from
/// (`herd run --stop-timeout`, `herd stop --timeout`, a stack's or an
/// appliance file's `stop_timeout`, the API's `timeout_s`): 0 to
/// [`MAX_STOP_TIMEOUT_S`]; NaN is out of range.
pub fn stop_timeout(secs: f64) -> Result<Duration, StopTimeoutError> {
    if (0.0..=MAX_STOP_TIMEOUT_S).contains(&secs) {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(StopTimeoutError(secs))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM is stopping; it cannot be paused or resumed")]
    Stopping,
    #[error("vCPUs did not pause within {0:?}; the VM keeps running")]
    PauseTimeout(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
    /// A graceful stop is under way (or the VM is being torn down).
    Stopping,
}

/// How a power-off request was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerOffMethod {
    /// Ctrl-Alt-Del pressed; forced at the deadline if the guest ignores it.
    CtrlAltDel,
    /// The guest cannot be asked (no keyboard driver): stopped at once.
    Immediate,
    /// A stop was already under way; nothing new was done.
    AlreadyStopping,
}

/// Lets the control side park every vCPU outside KVM_RUN.
#[derive(Default)]
pub struct PauseGate {
    requested: AtomicBool,
    parked: Mutex<usize>,
    changed: Condvar,
}

impl PauseGate {
    /// The vCPU hot path: one atomic load.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread that saw `is_requested`: blocks until resumed
    /// or stopped.
    pub fn park(&self, stop: &VmStop) {
        let mut parked = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        *parked += 1;
        self.changed.notify_all();
        while self.is_requested() && !stop.is_requested() {
            parked = self
                .changed
                .wait_timeout(parked, PARK_RECHECK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *parked -= 1;
        self.changed.notify_all();
    }

    fn parked(&self) -> usize {
        *self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self) {
        let _guard = self.parked.lock().unwrap_or_else(|p| p.into_inner());
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }
}

/// When the VM got where, for `GET /v1/vm`.
pub struct BootClock {
    pub process_start: Instant,
    pub first_guest_entry: Arc<OnceLock<Instant>>,
    pub boot_timer: Arc<Mutex<Option<BootTimerReading>>>,
    pub ready: Arc<GuestReady>,
}

pub struct VmControl {
    stop: VmStop,
    i8042: Arc<Mutex<I8042>>,
    pub pause: Arc<PauseGate>,
    /// Threads to kick out of KVM_RUN; emptied (under the lock) before they
    /// are joined, so a kick never targets a finished thread.
    vcpu_threads: Mutex<Vec<libc::pthread_t>>,
    /// A graceful stop is under way (set once, never cleared).
    stop_pending: AtomicBool,
    pub boot: BootClock,
}

impl VmControl {
    pub fn new(stop: VmStop, i8042: Arc<Mutex<I8042>>, boot: BootClock) -> Self {
        VmControl {
            stop,
            i8042,
            pause: Arc::default(),
            vcpu_threads: Mutex::new(Vec::new()),
            stop_pending: AtomicBool::new(false),
            boot,
        }
    }

    pub fn stop_handle(&self) -> &VmStop {
        &self.stop
    }

    pub(crate) fn set_vcpu_threads(&self, threads: Vec<libc::pthread_t>) {
        *self.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner()) = threads;
    }

    /// Forgets the vCPU threads (they are about to be joined) and lets any
    /// parked one go.
    pub(crate) fn release_vcpus(&self) {
        self.vcpu_threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.pause.release();
    }

    pub fn state(&self) -> VmState {
        if self.stop_pending.load(Ordering::Acquire) || self.stop.is_requested() {
            VmState::Stopping
        } else if self.pause.is_requested() {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// Parks every vCPU; returns once none of them runs guest code.
    pub fn pause(&self) -> Result<(), ControlError> {
        if self.state() == VmState::Stopping {
            return Err(ControlError::Stopping);
        }
        self.pause.requested.store(true, Ordering::Release);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            let threads = self.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner());
            if self.pause.parked() >= threads.len() {
                return Ok(());
            }
            if Instant::now() > deadline || self.stop.is_requested() {
                drop(threads);
                self.pause.release();
                return Err(ControlError::PauseTimeout(PAUSE_TIMEOUT));
            }
            // A vCPU that checked the flag just before KVM_RUN misses one
            // kick, so kicks repeat until all are parked.
            kick(&threads);
            drop(threads);
            std::thread::sleep(KICK_INTERVAL);
        }
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        if self.stop.is_requested() {
            return Err(ControlError::Stopping);
        }
        self.pause.release();
        Ok(())
    }

    /// Stops the VM at once.
    pub fn kill(&self, why: &str) {
        log::info!("stopping the VM at once: {why}");
        self.stop.request(StopReason::HostRequest(why.to_owned()));
    }

    /// Asks the guest to power off and forces it off if it has not within
    /// `timeout`. `why` names the requester for the log ("SIGTERM", "API");
    /// `immediate` is the stop reason when the guest cannot be asked.
    pub fn power_off(
        self: &Arc<Self>,
        timeout: Duration,
        why: &str,
        immediate: StopReason,
    ) -> PowerOffMethod {
        // Only the first request goes on; later ones see it under way.
        if self.stop_pending.swap(true, Ordering::AcqRel) || self.stop.is_requested() {
            return PowerOffMethod::AlreadyStopping;
        }
        // A paused guest cannot shut down.
        self.pause.release();
        if let Err(e) = self.press_power_button() {
            log::info!("{why}: {e}; stopping the VM at once");
            self.stop.request(immediate);
            return PowerOffMethod::Immediate;
        }
        log::info!(
            "{why}: asked the guest to power off (Ctrl-Alt-Del); forcing it off in {} s",
            timeout.as_secs_f64()
        );
        let control = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("herd-stop-timer".into())
            .spawn(move || control.force_after(timeout));
        if let Err(e) = spawned {
            self.kill(&format!("{why}: cannot start the stop timer ({e})"));
        }
        PowerOffMethod::CtrlAltDel
    }

    /// The guest-visible power request. Today the i8042 Ctrl-Alt-Del (what
    /// Linux without ACPI understands); an ACPI power button would go here.
    fn press_power_button(&self) -> Result<(), I8042Error> {
        self.i8042
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ctrl_alt_del()
    }

    fn force_after(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stop.is_requested() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.stop.is_requested() {
            return;
        }
        let secs = timeout.as_secs_f64();
        log::warn!(
            "the guest did not power off within {secs} s of the power-off request; forcing it off"
        );
        self.stop.request(StopReason::HostRequest(format!(
            "forced off: the guest did not power off within {secs} s of the power-off request"
        )));
    }
}

fn kick(threads: &[libc::pthread_t]) {
    for &thread in threads {
        // the ids come from live JoinHandles; they are removed
        // under the same lock before the threads are joined.
        // SAFETY: sound for the reasons just given.
        unsafe { libc::pthread_kill(thread, signals::vcpu_kick_signal()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_timeouts_from_zero_to_an_hour() {
        assert_eq!(stop_timeout(0.0).unwrap(), Duration::ZERO);
        assert_eq!(stop_timeout(2.5).unwrap(), Duration::from_millis(2500));
        assert_eq!(stop_timeout(3600.0).unwrap(), Duration::from_secs(3600));
        for bad in [-0.001, 3600.001, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = stop_timeout(bad).unwrap_err();
            assert!(
                e.to_string()
                    .ends_with(" is out of range: use 0 to 3600 seconds"),
                "{e}"
            );
        }
        assert_eq!(
            stop_timeout(-1.0).unwrap_err().to_string(),
            "-1 is out of range: use 0 to 3600 seconds"
        );
    }
}
