//! The net device as an event-manager subscriber: it watches its two queue
//! eventfds and its activation eventfd from `init`, and the TAP fd only
//! while it can take frames from it (active, not broken, receive buffers
//! available). That is how RX waits for the guest without spinning: with
//! no buffers it keeps the frame it already read and drops the TAP from
//! the interest list until the guest kicks the receive queue.

use std::io;
use std::sync::atomic::Ordering;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::device::{Active, Net, RX_QUEUE, TX_QUEUE};
use super::frame::{deliver_rx_frame, process_tx_queue, request_rx_kick, NetQueueError, RxOutcome};
use super::VNET_HDR_LEN;
use crate::virtio::count;
use crate::virtio::interrupt::INT_USED_RING;
use crate::virtio::VirtioInterrupt;

const RX_QUEUE_EVENT: u32 = 0;
const TX_QUEUE_EVENT: u32 = 1;
const ACTIVATE_EVENT: u32 = 2;
const TAP_EVENT: u32 = 3;

/// Frames handled per event before yielding to other devices; what is
/// left is picked up on the next round (the TAP is level-triggered, TX
/// re-arms its own eventfd).
const RX_BUDGET: usize = 256;
const TX_BUDGET: usize = 256;

/// Empties an eventfd; "nothing to read" is fine.
fn drain(evt: &EventFd) {
    if let Err(e) = evt.read() {
        if e.kind() != io::ErrorKind::WouldBlock {
            log::warn!("virtio-net: cannot read an eventfd: {e}");
        }
    }
}

/// Raises the used-ring interrupt if the driver wants one.
fn notify(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &VirtioInterrupt,
) -> Result<(), NetQueueError> {
    if queue.needs_notification(mem)? {
        interrupt.trigger(INT_USED_RING);
    }
    Ok(())
}

impl Net {
    /// Sends what the guest queued for transmission.
    pub(super) fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let Some(Active {
            mem, interrupt, tx, ..
        }) = self.active.as_mut()
        else {
            return;
        };
        let tap = &self.tap;
        let warned = &mut self.tx_error_logged;
        let send = |frame: &[u8]| {
            let result = tap.write(frame);
            if let Err(e) = &result {
                // Counted as dropped each time; said once per activation.
                if !std::mem::replace(warned, true) {
                    let hint = if e.raw_os_error() == Some(libc::EIO) {
                        " (is the interface up?)"
                    } else {
                        ""
                    };
                    log::warn!("virtio-net: TAP {} refused a frame: {e}{hint}", tap.name());
                }
            }
            result
        };
        let result = process_tx_queue(tx, mem, &mut self.tx_buf, TX_BUDGET, &self.metrics, send)
            .and_then(|pass| {
                if pass.used > 0 {
                    notify(tx, mem, interrupt)?;
                }
                Ok(pass.more)
            });
        match result {
            // Come back for the rest after other events had their turn.
            Ok(true) => {
                if let Err(e) = self.queue_evts[TX_QUEUE].write(1) {
                    log::error!("virtio-net: cannot re-arm the transmit queue: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => self.mark_broken(e),
        }
    }

    /// Moves frames from the TAP into the guest's receive buffers until
    /// the TAP is empty, the buffers run out, or the budget is spent.
    pub(super) fn process_rx(&mut self) {
        if self.broken || self.tap_failed {
            return;
        }
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut delivered = 0usize;
        let mut result = Ok(());
        for _ in 0..RX_BUDGET {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.tap.read(&mut self.rx_buf) {
                    Ok(n) if (VNET_HDR_LEN..=self.rx_buf.len()).contains(&n) => n,
                    Ok(n) => {
                        // Truncated (larger than any frame we take) or headerless.
                        count(&self.metrics.rx_dropped, 1);
                        log::debug!("virtio-net: dropped a {n}-byte frame from the TAP");
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!(
                            "virtio-net: cannot read TAP {}: {e}; receiving stops",
                            self.tap.name()
                        );
                        self.tap_failed = true;
                        break;
                    }
                },
            };
            self.rx_pending = Some(len);
            let frame = &mut self.rx_buf[..len];
            if !st.guest_csum {
                // The TAP may mark checksums as verified; this guest did
                // not ask to be told.
                frame[0] = 0;
            }
            // How far the guest had posted before we looked.
            let seen = st.rx.avail_idx(&st.mem, Ordering::Acquire);
            match deliver_rx_frame(
                &mut st.rx,
                &st.mem,
                frame,
                st.mergeable,
                &mut self.rx_scratch,
            ) {
                Ok(RxOutcome::Delivered(_)) => {
                    self.rx_pending = None;
                    delivered += 1;
                    count(&self.metrics.rx_frames, 1);
                    count(&self.metrics.rx_bytes, len - VNET_HDR_LEN);
                }
                Ok(RxOutcome::Dropped(why)) => {
                    self.rx_pending = None;
                    count(&self.metrics.rx_dropped, 1);
                    log::debug!("virtio-net: dropped a {len}-byte received frame: {why}");
                }
                Ok(RxOutcome::NoBuffers) => {
                    match seen
                        .map_err(NetQueueError::from)
                        .and_then(|seen| request_rx_kick(&mut st.rx, &st.mem, seen))
                    {
                        Ok(true) => continue,
                        Ok(false) => self.rx_waiting = true,
                        Err(e) => result = Err(e),
                    }
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if delivered > 0 {
            result = result.and(notify(&mut st.rx, &st.mem, &st.interrupt));
        }
        if let Err(e) = result {
            self.mark_broken(e);
        }
    }

    /// Whether the TAP should be in the interest list right now.
    fn wants_tap(&self) -> bool {
        self.active.is_some() && !self.broken && !self.rx_waiting && !self.tap_failed
    }

    fn set_tap_listening(&mut self, ops: &mut EventOps, on: bool) {
        if on == self.tap_listening {
            return;
        }
        let events = Events::with_data(&self.tap, TAP_EVENT, EventSet::IN);
        let result = if on {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.tap_listening = on,
            Err(e) => log::error!(
                "virtio-net: cannot {} TAP {}: {e:?}",
                if on { "watch" } else { "unwatch" },
                self.tap.name()
            ),
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (&self.queue_evts[RX_QUEUE], RX_QUEUE_EVENT),
            (&self.queue_evts[TX_QUEUE], TX_QUEUE_EVENT),
            (&self.activate_evt, ACTIVATE_EVENT),
        ];
        for (evt, data) in fds {
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                log::error!("virtio-net: cannot watch an eventfd: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            RX_QUEUE_EVENT => {
                drain(&self.queue_evts[RX_QUEUE]);
                self.rx_waiting = false;
                self.process_rx();
            }
            TX_QUEUE_EVENT => {
                drain(&self.queue_evts[TX_QUEUE]);
                self.process_tx();
            }
            ACTIVATE_EVENT => {
                drain(&self.activate_evt);
                self.process_tx();
                self.process_rx();
            }
            TAP_EVENT => self.process_rx(),
            other => log::warn!("virtio-net: unexpected event {other}"),
        }
        let want = self.wants_tap();
        self.set_tap_listening(ops, want);
    }
}
