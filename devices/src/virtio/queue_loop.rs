//! The usual virtio-queue service loop, for devices that answer each chain
//! on its own (block, rng, vsock TX): notifications off while draining,
//! back on at the end, and drain again if the driver slipped a chain in
//! between.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// How a turn of the loop ended.
#[derive(Debug)]
pub enum QueueOutcome {
    /// The ring is empty and notifications are back on.
    Done,
    /// The per-turn budget ran out with chains left: wake the device again.
    Yield,
    /// The driver broke the ring or a chain; the device must stop.
    Broken(String),
}

/// Serves chains until the ring is empty, `budget` says stop, or one ring's
/// worth of chains was served. `serve` returns how many bytes it wrote into
/// the chain (the used length), or why the chain is malformed. Also returns
/// how many chains were used.
///
/// The ring-size cap holds whatever `budget` counts: a driver can make an
/// empty buffer available again while the device drains, at no cost to a
/// byte budget, and the event loop (which stops the VM) must get its
/// thread back.
pub fn serve_chains<'m, F>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    mut budget: impl FnMut(u32) -> bool,
    mut serve: F,
) -> (QueueOutcome, usize)
where
    F: FnMut(DescriptorChain<&'m GuestMemoryMmap>) -> Result<u32, String>,
{
    let mut served = 0;
    let per_turn = usize::from(queue.size()).max(1);
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            return (QueueOutcome::Broken(format!("used ring: {e}")), served);
        }
        // An avail index more than a ring ahead of us is nonsense that
        // virtio-queue would only log on every pop.
        if let Err(e) = queue.iter(mem) {
            return (QueueOutcome::Broken(format!("available ring: {e}")), served);
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = match serve(chain) {
                Ok(used) => used,
                Err(why) => {
                    return (
                        QueueOutcome::Broken(format!("chain at {head}: {why}")),
                        served,
                    )
                }
            };
            if let Err(e) = queue.add_used(mem, head, used) {
                return (QueueOutcome::Broken(format!("used ring: {e}")), served);
            }
            served += 1;
            if !budget(used) || served >= per_turn {
                return (QueueOutcome::Yield, served);
            }
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => return (QueueOutcome::Done, served),
            Err(e) => return (QueueOutcome::Broken(format!("available ring: {e}")), served),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use virtio_queue::desc::split::Descriptor;

    use super::*;
    use crate::virtio::block::test_utils::{guest_memory, test_queue, Driver, SCRATCH};

    /// VRING_DESC_F_WRITE: a buffer the device writes.
    const WRITE: u16 = 2;

    #[test]
    fn a_driver_refilling_the_ring_cannot_hold_the_device() {
        let mem = guest_memory();
        let mut queue = test_queue(256);
        let driver = RefCell::new(Driver::new(&mem));
        driver
            .borrow()
            .write_desc(0, Descriptor::new(SCRATCH, 0, WRITE, 0));
        driver.borrow_mut().publish(0);
        let mut chains = 0;
        // An empty buffer costs a byte budget nothing, and a vCPU can make
        // it available again while the device drains: the loop must still
        // hand the thread back.
        let (outcome, served) = serve_chains(
            &mut queue,
            &mem,
            |_| true,
            |_chain| {
                chains += 1;
                if chains > 10 * 256 {
                    return Err("the loop never yielded".into());
                }
                driver.borrow_mut().publish(0);
                Ok(0)
            },
        );
        assert!(matches!(outcome, QueueOutcome::Yield), "{outcome:?}");
        assert_eq!(served, 256);
    }
}
