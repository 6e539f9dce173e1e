//! The virtio-rng device: one request queue of device-writable buffers,
//! filled from the entropy backend.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::entropy::EntropySource;
use super::{BYTES_PER_CHAIN, BYTES_PER_RUN, QUEUE_SIZE, TYPE_RNG};
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::queue_loop::{serve_chains, QueueOutcome};
use crate::virtio::{ActivateError, Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("cannot create the virtio-rng queue eventfd: {0}")]
    EventFd(std::io::Error),
}

struct ActiveState {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queue: Queue,
}

pub struct Rng {
    source: Box<dyn EntropySource>,
    queue_evts: [EventFd; 1],
    active: Option<ActiveState>,
    broken: bool,
    /// Bytes handed to the guest since the device was created.
    served: u64,
}

impl Rng {
    pub fn new(source: Box<dyn EntropySource>) -> Result<Rng, RngError> {
        Ok(Rng {
            source,
            queue_evts: [EventFd::new(libc::EFD_NONBLOCK).map_err(RngError::EventFd)?],
            active: None,
            broken: false,
            served: 0,
        })
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn bytes_served(&self) -> u64 {
        self.served
    }

    /// Serves what the driver made available, if active and not broken.
    pub fn process_queue(&mut self) {
        if self.broken {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (outcome, chains, bytes) = serve(active, self.source.as_mut());
        self.served += bytes;
        if chains > 0 {
            match active.queue.needs_notification(&active.mem) {
                Ok(false) => {}
                Ok(true) | Err(_) => active.interrupt.trigger(INT_USED_RING),
            }
        }
        match outcome {
            QueueOutcome::Done => {}
            QueueOutcome::Yield => {
                if let Err(e) = self.queue_evts[0].write(1) {
                    log::error!("virtio-rng: cannot requeue: {e}");
                }
            }
            QueueOutcome::Broken(why) => {
                log::error!(
                    "virtio-rng: malformed request from the driver: {why}; the device stops until the driver resets it"
                );
                self.broken = true;
                active.interrupt.signal_needs_reset();
            }
        }
    }
}

/// Fills every chain the driver made available, within the per-run budget.
fn serve(active: &mut ActiveState, source: &mut dyn EntropySource) -> (QueueOutcome, usize, u64) {
    let ActiveState { mem, queue, .. } = active;
    let mut bytes: usize = 0;
    let mut buf = [0u8; BYTES_PER_CHAIN];
    let budget = |used: u32| {
        bytes += used as usize;
        bytes < BYTES_PER_RUN
    };
    let (outcome, chains) = serve_chains(queue, mem, budget, |chain| {
        let mut written: usize = 0;
        for desc in chain {
            if !desc.is_write_only() {
                return Err("device-readable buffer".into());
            }
            let room = BYTES_PER_CHAIN - written;
            let len = usize::try_from(desc.len()).unwrap_or(usize::MAX).min(room);
            if len == 0 {
                continue;
            }
            let chunk = &mut buf[..len];
            if let Err(e) = source.fill(chunk) {
                // Better no bytes than predictable ones: this request gets
                // none, the driver will ask again.
                log::warn!("virtio-rng: the host's entropy source failed: {e}");
                break;
            }
            mem.write_slice(chunk, desc.addr())
                .map_err(|e| e.to_string())?;
            written += len;
        }
        // At most BYTES_PER_CHAIN.
        Ok(u32::try_from(written).unwrap_or(0))
    });
    (outcome, chains, bytes as u64)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no config space.
        data.fill(0);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let [queue] = activation.take_queues("virtio-rng")?;
        self.active = Some(ActiveState {
            mem: activation.mem,
            interrupt: activation.interrupt,
            queue,
        });
        self.broken = false;
        if let Err(e) = self.queue_evts[0].write(1) {
            log::warn!("virtio-rng: cannot wake the queue: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evts[0], EventSet::IN)) {
            log::error!("virtio-rng: cannot watch the queue notifications: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.queue_evts[0].as_raw_fd() {
            log::warn!("virtio-rng: event on unknown fd {}", events.fd());
            return;
        }
        let _ = self.queue_evts[0].read();
        self.process_queue();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
