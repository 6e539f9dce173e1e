//! The block device as an event-loop subscriber: a queue notification makes
//! it pop chains, parse them, serve them on the backend and publish the
//! results.

use std::os::unix::io::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vm_memory::Bytes;

use super::device::{ActiveState, Backend, Block};
use super::request::Request;
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::queue_loop::{serve_chains, QueueOutcome};

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            log::error!(
                "virtio-blk {}: cannot watch the queue notifications: {e:?}",
                self.path().display()
            );
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.queue_evts[0].as_raw_fd() {
            log::warn!(
                "virtio-blk {}: event on unknown fd {}",
                self.path().display(),
                events.fd()
            );
            return;
        }
        // Drain first: epoll is level-triggered, so an undrained kick (even
        // one we ignore) would spin the loop.
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }
}

impl Block {
    /// Serves what the driver made available, if the device is active and
    /// not broken.
    pub(super) fn process_queue(&mut self) {
        if self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (outcome, served) = serve(active, &mut self.backend);
        if served > 0 {
            // With EVENT_IDX, the driver may not want to hear about these yet.
            match active.queue.needs_notification(&active.mem) {
                Ok(false) => {}
                Ok(true) | Err(_) => active.interrupt.trigger(INT_USED_RING),
            }
        }
        match outcome {
            QueueOutcome::Done => {}
            QueueOutcome::Yield => {
                if let Err(e) = self.queue_evts[0].write(1) {
                    log::error!("virtio-blk {}: cannot requeue: {e}", self.path().display());
                }
            }
            QueueOutcome::Broken(why) => {
                // Logged once: a broken device ignores its queue until reset.
                log::error!(
                    "virtio-blk {}: malformed request from the driver: {why}; the device stops until the driver resets it",
                    self.path().display()
                );
                self.broken = true;
                self.backend.metrics.record_malformed();
                if let Some(active) = &self.active {
                    active.interrupt.signal_needs_reset();
                }
            }
        }
    }
}

/// Serves chains through the shared queue loop (at most a ring's worth
/// per wake-up).
fn serve(active: &mut ActiveState, backend: &mut Backend) -> (QueueOutcome, usize) {
    let ActiveState { mem, queue, .. } = active;
    let mem = &*mem;
    serve_chains(
        queue,
        mem,
        |_| true,
        |chain| {
            let req = Request::parse(mem, chain).map_err(|e| e.to_string())?;
            let (status, written) = backend.execute(mem, &req);
            mem.write_obj(status, req.status_addr)
                .map_err(|e| format!("status byte: {e}"))?;
            // Parsing capped the chain at 4 GiB, so + 1 fits.
            Ok(written.saturating_add(1))
        },
    )
}

#[cfg(test)]
#[path = "event_handler_tests.rs"]
mod tests;
