//! Why a VM stopped, and the one place every stop request goes through.
//!
//! vCPU threads, devices (i8042, exit device) and signal handlers can all
//! ask the VM to stop; the first reason recorded wins, later ones are only
//! logged, so the exit status reflects what actually ended the guest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// What ended a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042 0xFE, KVM system event reset).
    GuestReset,
    /// The guest powered off (KVM system event shutdown) or halted its last vCPU.
    GuestPowerOff,
    /// The guest wrote this byte to the exit device.
    GuestExitCode(u8),
    /// The host asked us to stop (SIGTERM, SIGINT).
    Signal(i32),
    /// The host stopped the VM on purpose (control API kill, a graceful
    /// stop that ran out of time); the text says how.
    HostRequest(String),
    /// The guest crashed: triple fault, KVM internal error, guest panic event.
    GuestCrash(String),
    /// KVM itself failed (an ioctl error, a failed VM entry).
    KvmFailure(String),
}

/// Shared handle used to request that the VM stops.
#[derive(Clone, Debug)]
pub struct VmStop {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    /// Checked by every vCPU before every KVM_RUN: a plain load, no lock.
    requested: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl VmStop {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmStop {
            inner: Arc::new(StopInner {
                requested: AtomicBool::new(false),
                reason: Mutex::new(None),
                evt: EventFd::new(libc::EFD_NONBLOCK)?,
            }),
        })
    }

    /// Records `reason` unless a reason is already recorded, and wakes the
    /// event loop.
    pub fn request(&self, reason: StopReason) {
        {
            let mut slot = self
                .inner
                .reason
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match slot.as_ref() {
                None => {
                    *slot = Some(reason);
                    self.inner.requested.store(true, Ordering::Release);
                }
                Some(first) => {
                    log::debug!("stop already requested ({first:?}); ignoring {reason:?}");
                }
            }
        }
        if let Err(e) = self.inner.evt.write(1) {
            log::error!("cannot wake the event loop to stop the VM: {e}");
        }
    }

    /// The reason recorded first, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn is_requested(&self) -> bool {
        self.inner.requested.load(Ordering::Acquire)
    }

    /// The eventfd the event loop polls.
    pub fn eventfd(&self) -> &EventFd {
        &self.inner.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let stop = VmStop::new().unwrap();
        assert!(!stop.is_requested());
        stop.request(StopReason::GuestExitCode(7));
        stop.request(StopReason::GuestReset);
        assert_eq!(stop.reason(), Some(StopReason::GuestExitCode(7)));
        assert_eq!(stop.eventfd().read().unwrap(), 2);
    }
}
