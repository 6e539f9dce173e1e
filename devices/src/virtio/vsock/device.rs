//! The virtio-vsock device: RX, TX and event queues, the guest's CID in
//! config space, and the event-loop glue between the queues and the muxer.

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Interest, Muxer, MuxerError};
use super::packet::{read_tx, rx_capacity, write_rx};
use super::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE, TYPE_VSOCK};
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::queue_loop::{serve_chains, QueueOutcome};
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

/// Chains handled per queue per wake-up before yielding to other devices.
const CHAINS_PER_RUN: usize = QUEUE_SIZE as usize;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("cannot create a virtio-vsock queue eventfd: {0}")]
    EventFd(std::io::Error),
}

struct ActiveState {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: [Queue; 3],
}

pub struct Vsock {
    muxer: Muxer,
    config_space: [u8; 8],
    queue_evts: [EventFd; 3],
    active: Option<ActiveState>,
    broken: bool,
}

impl Vsock {
    /// A device for guest CID `guest_cid` whose host side listens on `path`.
    pub fn new(path: &Path, guest_cid: u64) -> Result<Vsock, VsockError> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        Ok(Vsock {
            muxer: Muxer::new(path, guest_cid)?,
            config_space: guest_cid.to_le_bytes(),
            queue_evts: [evt()?, evt()?, evt()?],
            active: None,
            broken: false,
        })
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    fn give_up(&mut self, why: &str) {
        log::error!(
            "virtio-vsock: malformed packet from the driver: {why}; the device stops until the driver resets it"
        );
        self.broken = true;
        if let Some(active) = &self.active {
            active.interrupt.signal_needs_reset();
        }
    }

    fn finish(&mut self, queue: usize, outcome: QueueOutcome) {
        match outcome {
            QueueOutcome::Done => {}
            QueueOutcome::Yield => {
                if let Err(e) = self.queue_evts[queue].write(1) {
                    log::error!("virtio-vsock: cannot requeue: {e}");
                }
            }
            QueueOutcome::Broken(why) => self.give_up(&why),
        }
    }

    /// Hands every TX packet the driver made available to the muxer.
    pub fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (outcome, served) = serve_tx(active, &mut self.muxer);
        if served > 0 {
            notify(active, TX_QUEUE);
        }
        self.finish(TX_QUEUE, outcome);
    }

    /// Fills the driver's receive buffers with what the muxer has for it.
    pub fn process_rx(&mut self) {
        if self.broken || !self.muxer.has_rx() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (outcome, served) = serve_rx(active, &mut self.muxer);
        if served > 0 {
            notify(active, RX_QUEUE);
        }
        self.finish(RX_QUEUE, outcome);
    }
}

fn notify(active: &mut ActiveState, queue: usize) {
    match active.queues[queue].needs_notification(&active.mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => active.interrupt.trigger(INT_USED_RING),
    }
}

fn serve_tx(active: &mut ActiveState, muxer: &mut Muxer) -> (QueueOutcome, usize) {
    let ActiveState { mem, queues, .. } = active;
    serve_chains(
        &mut queues[TX_QUEUE],
        mem,
        |_| true,
        |mut chain| {
            let pkt = read_tx(mem, &mut chain).map_err(|e| e.to_string())?;
            muxer.handle_tx(pkt);
            Ok(0)
        },
    )
}

fn serve_rx(active: &mut ActiveState, muxer: &mut Muxer) -> (QueueOutcome, usize) {
    let ActiveState { mem, queues, .. } = active;
    let queue = &mut queues[RX_QUEUE];
    let guest_cid = muxer.guest_cid();
    let mut served = 0;
    loop {
        if let Err(e) = queue.disable_notification(&*mem) {
            return (QueueOutcome::Broken(format!("RX used ring: {e}")), served);
        }
        if let Err(e) = queue.iter(&*mem) {
            return (
                QueueOutcome::Broken(format!("RX available ring: {e}")),
                served,
            );
        }
        while muxer.has_rx() {
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else {
                break;
            };
            let head = chain.head_index();
            let capacity = match rx_capacity(mem, &mut chain.clone()) {
                Ok(c) => c,
                Err(e) => {
                    return (
                        QueueOutcome::Broken(format!("RX chain at {head}: {e}")),
                        served,
                    )
                }
            };
            let Some(pkt) = muxer.next_rx(capacity) else {
                // Only data is waiting and this buffer has no room for any.
                queue.go_to_previous_position();
                return (QueueOutcome::Done, served);
            };
            let used = match write_rx(mem, &mut chain.clone(), guest_cid, &pkt) {
                Ok(used) => used,
                Err(e) => {
                    return (
                        QueueOutcome::Broken(format!("RX chain at {head}: {e}")),
                        served,
                    )
                }
            };
            if let Err(e) = queue.add_used(&*mem, head, used) {
                return (QueueOutcome::Broken(format!("RX used ring: {e}")), served);
            }
            served += 1;
            if served >= CHAINS_PER_RUN {
                return (QueueOutcome::Yield, served);
            }
        }
        if !muxer.has_rx() {
            // Nothing to send: leave notifications off; the muxer wakes us.
            return (QueueOutcome::Done, served);
        }
        // Out of buffers with packets waiting: hear about the next ones.
        match queue.enable_notification(&*mem) {
            Ok(true) => continue,
            Ok(false) => return (QueueOutcome::Done, served),
            Err(e) => {
                return (
                    QueueOutcome::Broken(format!("RX available ring: {e}")),
                    served,
                )
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let queues = activation.take_queues("virtio-vsock")?;
        self.active = Some(ActiveState {
            mem: activation.mem,
            interrupt: activation.interrupt,
            queues,
        });
        self.broken = false;
        for queue in [RX_QUEUE, TX_QUEUE] {
            if let Err(e) = self.queue_evts[queue].write(1) {
                log::warn!("virtio-vsock: cannot wake queue {queue}: {e}");
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }
}

impl Vsock {
    fn apply_interest(&mut self, ops: &mut EventOps) {
        for change in self.muxer.take_interest() {
            let result = match change {
                Interest::Add(fd, set) => ops.add(Events::new_raw(fd, set)),
                Interest::Modify(fd, set) => ops.modify(Events::new_raw(fd, set)),
                Interest::Remove(fd) => ops.remove(Events::empty_raw(fd)),
            };
            if let Err(e) = result {
                log::error!(
                    "virtio-vsock: cannot change what the event loop watches ({change:?}): {e:?}"
                );
            }
        }
        self.muxer.close_retired();
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_evts.iter().enumerate() {
            let data = u32::try_from(queue).unwrap_or(u32::MAX);
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                log::error!("virtio-vsock: cannot watch queue {queue}: {e:?}");
            }
        }
        self.apply_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let queue = self.queue_evts.iter().position(|e| e.as_raw_fd() == fd);
        match queue {
            Some(q) => {
                let _ = self.queue_evts[q].read();
                // RX kicks (new buffers) are served below for every event;
                // the event queue only carries transport resets, which herd
                // never sends, so its buffers just wait.
                if q == TX_QUEUE {
                    self.process_tx();
                }
            }
            None => self.muxer.handle_event(fd, events.event_set()),
        }
        self.process_rx();
        self.apply_interest(ops);
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
