//! Host input for the guest's serial port: from herd's stdin
//! ([`SerialInput`]) or an attached console client (`console.rs`).
//!
//! The guest's receive FIFO holds 64 bytes. Input that does not fit is
//! kept ([`PendingInput`], at most one read's worth) and its source is not
//! read again until the guest has emptied the FIFO, so nothing is dropped
//! and nothing is buffered without bound: a guest that never reads simply
//! stops herd reading, and the writer sees back-pressure.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::legacy::SerialDevice;
use devices::StopReason;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::control::VmControl;

/// How much is read from a source at a time.
pub const INPUT_CHUNK: usize = 64;
/// A terminal stays watched while input is pending (Ctrl-] must work
/// whatever the guest does); what it sends beyond this much is dropped.
const TERMINAL_PENDING_MAX: usize = 4096;

/// Input the guest's FIFO could not take yet, and whether its source is
/// paused (unwatched) while the event loop waits for the FIFO to drain.
pub struct PendingInput {
    serial: Arc<Mutex<SerialDevice>>,
    drained: EventFd,
    pending: Vec<u8>,
    waiting: bool,
    /// Keep reading the source while waiting (a terminal).
    keep_source: bool,
}

impl PendingInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, keep_source: bool) -> std::io::Result<Self> {
        let drained = serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .input_drained()
            .try_clone()?;
        Ok(PendingInput {
            serial,
            drained,
            pending: Vec::with_capacity(INPUT_CHUNK),
            waiting: false,
            keep_source,
        })
    }

    /// True if `events` is the FIFO-drained wake-up.
    pub fn is_drained_event(&self, events: &Events) -> bool {
        events.fd() == self.drained.as_raw_fd()
    }

    /// Offers `input` after whatever is still pending. While some is left,
    /// `source` is not watched; the event loop watches the drain instead.
    pub fn offer(&mut self, input: &[u8], source: Events, ops: &mut EventOps) {
        let room = TERMINAL_PENDING_MAX.saturating_sub(self.pending.len());
        if input.len() > room {
            log::debug!(
                "serial input: the guest is not reading; dropped {} bytes",
                input.len() - room
            );
        }
        self.pending
            .extend_from_slice(&input[..input.len().min(room)]);
        self.retry(source, ops);
    }

    /// Offers what is pending again (the guest emptied its FIFO).
    pub fn retry(&mut self, source: Events, ops: &mut EventOps) {
        let _ = self.drained.read();
        if !self.pending.is_empty() {
            let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            let taken = serial.enqueue_input(&self.pending);
            self.pending.drain(..taken);
        }
        let wait = !self.pending.is_empty();
        if wait == self.waiting {
            return;
        }
        let drained = Events::new(&self.drained, EventSet::IN);
        let result = match (wait, self.keep_source) {
            (true, false) => ops.remove(source).and_then(|()| ops.add(drained)),
            (false, false) => ops.remove(drained).and_then(|()| ops.add(source)),
            (true, true) => ops.add(drained),
            (false, true) => ops.remove(drained),
        };
        if let Err(e) = result {
            log::warn!("serial input: cannot switch watched descriptors: {e:?}");
        }
        self.waiting = wait;
    }

    /// Forgets pending input (its source went away).
    pub fn clear(&mut self, ops: &mut EventOps) {
        if self.waiting {
            let _ = ops.remove(Events::new(&self.drained, EventSet::IN));
        }
        self.pending.clear();
        self.waiting = false;
    }
}

/// The console escape key: Ctrl-] (as telnet and `herd console`).
pub const ESCAPE_KEY: u8 = 0x1d;

/// Feeds host stdin to the guest's serial port. On a terminal, Ctrl-]
/// stops the VM instead (gracefully; pressed again, at once), so a
/// terminal is read even while the guest is not reading.
pub struct SerialInput {
    pending: PendingInput,
    input: RawFd,
    escape: Option<(Arc<VmControl>, Duration)>,
}

impl SerialInput {
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        input: RawFd,
        escape: Option<(Arc<VmControl>, Duration)>,
    ) -> std::io::Result<Self> {
        Ok(SerialInput {
            pending: PendingInput::new(serial, escape.is_some())?,
            input,
            escape,
        })
    }

    fn source(&self) -> Events {
        Events::new_raw(self.input, EventSet::IN)
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled; the guest simply
        // gets no input then.
        if let Err(e) = ops.add(Events::new_raw(self.input, EventSet::IN)) {
            log::debug!("serial input: stdin is not pollable ({e:?}); guest gets no input");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.pending.is_drained_event(&events) {
            return self.pending.retry(self.source(), ops);
        }
        let mut buf = [0u8; INPUT_CHUNK];
        // `buf` is valid for writes of its full length and
        // `self.input` is a file descriptor this process owns (stdin).
        // SAFETY: sound for the reasons just given.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
        let n = match usize::try_from(n) {
            Ok(0) => {
                let _ = ops.remove(events);
                return;
            }
            Ok(n) => n,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted
                    && err.kind() != std::io::ErrorKind::WouldBlock
                {
                    log::debug!("serial input: stdin read failed ({err}); stopping input");
                    let _ = ops.remove(events);
                }
                return;
            }
        };
        let mut input = &buf[..n];
        if let Some((control, timeout)) = &self.escape {
            if let Some(pos) = input.iter().position(|&b| b == ESCAPE_KEY) {
                input = &input[..pos];
                let method = control.power_off(
                    *timeout,
                    "Ctrl-] on the console",
                    StopReason::HostRequest("stopped at once with Ctrl-] on the console".into()),
                );
                if method == crate::control::PowerOffMethod::AlreadyStopping {
                    control.kill("Ctrl-] pressed again on the console");
                }
            }
        }
        self.pending.offer(input, self.source(), ops);
    }
}
