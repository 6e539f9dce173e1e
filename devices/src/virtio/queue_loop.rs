//! The usual virtio-queue service loop, for devices that answer each chain
//! on its own (block, rng, vsock TX): notifications off while draining,
//! back on at the end, and drain again if the driver slipped a chain in
//! between.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// How a turn of the loop ended.
pub enum QueueOutcome {
    /// The ring is empty and notifications are back on.
    Done,
    /// The per-turn budget ran out with chains left: wake the device again.
    Yield,
    /// The driver broke the ring or a chain; the device must stop.
    Broken(String),
}

/// Serves chains until the ring is empty or `budget` says stop. `serve`
/// returns how many bytes it wrote into the chain (the used length), or
/// why the chain is malformed. Also returns how many chains were used.
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
            if !budget(used) {
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
