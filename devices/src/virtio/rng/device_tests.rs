//! Queue-level tests: a driver writes real descriptor chains into guest
//! memory and the device fills them.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::block::test_utils::{guest_memory, test_queue, Driver, MEM_SIZE, SCRATCH};
use crate::virtio::rng::{HostEntropy, BYTES_PER_RUN};

const W: u16 = 2;

/// Always the same byte, so tests can see what was written.
struct Fixed(u8);

impl EntropySource for Fixed {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(self.0);
        Ok(())
    }
}

fn active(
    source: Box<dyn EntropySource>,
    queue_size: u16,
) -> (Rng, GuestMemoryMmap, Arc<VirtioInterrupt>) {
    let mut rng = Rng::new(source).unwrap();
    let mem = guest_memory();
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    rng.activate(Activation {
        mem: mem.clone(),
        interrupt: irq.clone(),
        queues: vec![test_queue(queue_size)],
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    (rng, mem, irq)
}

#[test]
fn fills_writable_buffers_across_descriptors() {
    let (mut rng, mem, irq) = active(Box::new(Fixed(0xa5)), 16);
    let mut driver = Driver::new(&mem);
    driver.add_chain(&[(SCRATCH, 16, W), (SCRATCH + 0x100, 48, W)]);
    rng.process_queue();
    assert_eq!(driver.used_idx(), 1);
    assert_eq!(driver.used(0), (0, 64));
    let mut got = [0u8; 16];
    mem.read_slice(&mut got, GuestAddress(SCRATCH)).unwrap();
    assert_eq!(got, [0xa5; 16]);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(SCRATCH + 0x100 + 47))
            .unwrap(),
        0xa5
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(SCRATCH + 0x100 + 48))
            .unwrap(),
        0
    );
    assert_ne!(irq.status() & INT_USED_RING, 0);
    assert_eq!(rng.bytes_served(), 64);
}

#[test]
fn host_entropy_reaches_the_guest() {
    let (mut rng, mem, _irq) = active(Box::new(HostEntropy), 16);
    let mut driver = Driver::new(&mem);
    driver.add_chain(&[(SCRATCH, 64, W)]);
    rng.process_queue();
    let mut got = [0u8; 64];
    mem.read_slice(&mut got, GuestAddress(SCRATCH)).unwrap();
    assert_ne!(got, [0u8; 64]);
}

#[test]
fn huge_buffers_get_one_chunk() {
    let (mut rng, mem, _irq) = active(Box::new(Fixed(1)), 16);
    let mut driver = Driver::new(&mem);
    driver.add_chain(&[(SCRATCH, u32::MAX, W)]);
    rng.process_queue();
    assert_eq!(driver.used(0).1, u32::try_from(BYTES_PER_CHAIN).unwrap());
    assert!(!rng.is_broken());
}

#[test]
fn readable_buffer_breaks_the_device() {
    let (mut rng, mem, irq) = active(Box::new(Fixed(1)), 16);
    let mut driver = Driver::new(&mem);
    driver.add_chain(&[(SCRATCH, 16, 0)]);
    rng.process_queue();
    assert!(rng.is_broken());
    assert!(irq.needs_reset());
    assert_eq!(mem.read_obj::<u8>(GuestAddress(SCRATCH)).unwrap(), 0);
    // Broken until reset: later chains are not served.
    driver.add_chain(&[(SCRATCH, 16, W)]);
    rng.process_queue();
    assert_eq!(driver.used_idx(), 0);
}

#[test]
fn buffer_outside_guest_memory_breaks_the_device() {
    let (mut rng, mem, irq) = active(Box::new(Fixed(1)), 16);
    let mut driver = Driver::new(&mem);
    driver.add_chain(&[(MEM_SIZE - 8, 64, W)]);
    rng.process_queue();
    assert!(rng.is_broken());
    assert!(irq.needs_reset());
}

/// A driver that keeps the whole ring full of big buffers is served
/// `BYTES_PER_RUN` per turn of the loop, and the device asks for another
/// turn instead of spinning.
#[test]
fn a_flood_is_served_in_bounded_turns() {
    let (mut rng, mem, _irq) = active(Box::new(Fixed(7)), 256);
    let mut driver = Driver::new(&mem);
    for _ in 0..64 {
        driver.add_chain(&[(SCRATCH, u32::try_from(BYTES_PER_CHAIN).unwrap(), W)]);
    }
    // Activation's own wake-up.
    let _ = rng.queue_events()[0].read();
    rng.process_queue();
    let per_run = u16::try_from(BYTES_PER_RUN / BYTES_PER_CHAIN).unwrap();
    assert_eq!(driver.used_idx(), per_run);
    assert_eq!(
        rng.queue_events()[0].read().unwrap(),
        1,
        "device must requeue itself"
    );
    rng.process_queue();
    assert_eq!(driver.used_idx(), 2 * per_run);
    assert!(!rng.is_broken());
}

#[test]
fn looping_avail_index_breaks_the_device() {
    let (mut rng, mem, irq) = active(Box::new(Fixed(7)), 16);
    let driver = Driver::new(&mem);
    // An avail index far beyond the ring size.
    driver.set_avail_idx(1000);
    rng.process_queue();
    assert!(rng.is_broken());
    assert!(irq.needs_reset());
}
