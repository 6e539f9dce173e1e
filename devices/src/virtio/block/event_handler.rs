//! The block device as an event-loop subscriber: a queue notification makes
//! it pop chains, parse them, serve them on the backend and publish the
//! results.

use std::os::unix::io::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::device::{ActiveState, Block};
use super::request::Request;
use super::QUEUE_SIZE;
use crate::virtio::interrupt::INT_USED_RING;

/// Chains served per wake-up before yielding to the other devices; the rest
/// wait for the next turn of the event loop.
const CHAINS_PER_RUN: u16 = QUEUE_SIZE;

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

enum Outcome {
    /// The ring is empty and notifications are back on.
    Done,
    /// The per-run budget ran out with chains left.
    Yield,
    Broken(String),
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
            Outcome::Done => {}
            Outcome::Yield => {
                if let Err(e) = self.queue_evts[0].write(1) {
                    log::error!("virtio-blk {}: cannot requeue: {e}", self.path().display());
                }
            }
            Outcome::Broken(why) => {
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

/// The usual virtio-queue loop: notifications off while draining, back on
/// at the end, and drain again if the driver slipped a chain in between.
fn serve(active: &mut ActiveState, backend: &mut super::device::Backend) -> (Outcome, u16) {
    let ActiveState { mem, queue, .. } = active;
    let mut served: u16 = 0;
    for _ in 0..CHAINS_PER_RUN {
        if let Err(e) = queue.disable_notification(&*mem) {
            return (Outcome::Broken(format!("used ring: {e}")), served);
        }
        // An avail index more than a ring ahead of us is nonsense that
        // virtio-queue would only log on every pop.
        if let Err(e) = queue.iter(&*mem) {
            return (Outcome::Broken(format!("available ring: {e}")), served);
        }
        while let Some(chain) = queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let req = match Request::parse(mem, chain) {
                Ok(req) => req,
                Err(e) => return (Outcome::Broken(format!("chain at {head}: {e}")), served),
            };
            let (status, written) = backend.execute(mem, &req);
            if let Err(e) = mem.write_obj(status, req.status_addr) {
                return (Outcome::Broken(format!("status byte: {e}")), served);
            }
            // Parsing capped the chain at 4 GiB, so + 1 fits.
            if let Err(e) = queue.add_used(&*mem, head, written.saturating_add(1)) {
                return (Outcome::Broken(format!("used ring: {e}")), served);
            }
            served += 1;
            if served >= CHAINS_PER_RUN {
                return (Outcome::Yield, served);
            }
        }
        match queue.enable_notification(&*mem) {
            Ok(true) => continue,
            Ok(false) => return (Outcome::Done, served),
            Err(e) => return (Outcome::Broken(format!("available ring: {e}")), served),
        }
    }
    // A driver that keeps re-adding chains as we re-enable notifications.
    (Outcome::Yield, served)
}

#[cfg(test)]
#[path = "event_handler_tests.rs"]
mod tests;
