//! Queue-level tests: hostile TX chains written into guest memory.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::block::test_utils::{guest_memory, test_queue, Driver, MEM_SIZE, SCRATCH};
use crate::virtio::vsock::{DEFAULT_GUEST_CID, HOST_CID, OP_REQUEST, TYPE_STREAM};

const W: u16 = 2;
const HDR_LEN: u32 = 44;

/// A queue whose rings sit at `base` (the fixed-address driver owns TX).
fn idle_queue(base: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_size(16);
    let low = |a: u64| Some(u32::try_from(a).unwrap());
    q.set_desc_table_address(low(base), Some(0));
    q.set_avail_ring_address(low(base + 0x1000), Some(0));
    q.set_used_ring_address(low(base + 0x2000), Some(0));
    q.set_ready(true);
    q
}

fn device() -> (
    Vsock,
    GuestMemoryMmap,
    Arc<VirtioInterrupt>,
    std::path::PathBuf,
) {
    let path = std::env::temp_dir().join(format!(
        "herd-vsock-dev-{}-{:?}.sock",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut dev = Vsock::new(&path, DEFAULT_GUEST_CID).unwrap();
    let mem = guest_memory();
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    dev.activate(Activation {
        mem: mem.clone(),
        interrupt: irq.clone(),
        queues: vec![idle_queue(0x8_0000), test_queue(16), idle_queue(0x9_0000)],
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    (dev, mem, irq, path)
}

fn write_header(mem: &GuestMemoryMmap, addr: u64, op: u16, len: u32) {
    let mut h = [0u8; HDR_LEN as usize];
    h[0..8].copy_from_slice(&DEFAULT_GUEST_CID.to_le_bytes());
    h[8..16].copy_from_slice(&HOST_CID.to_le_bytes());
    h[16..20].copy_from_slice(&1000u32.to_le_bytes());
    h[20..24].copy_from_slice(&5u32.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
}

#[test]
fn well_formed_packets_are_consumed() {
    let (mut dev, mem, _irq, _path) = device();
    let mut driver = Driver::new(&mem);
    write_header(&mem, SCRATCH, OP_REQUEST, 0);
    driver.add_chain(&[(SCRATCH, HDR_LEN, 0)]);
    dev.process_tx();
    assert_eq!(driver.used_idx(), 1);
    assert!(!dev.is_broken());
    // Nobody listens on the host port: a reset is waiting for the guest.
    assert!(dev.muxer().has_rx());
}

#[test]
fn malformed_tx_chains_stop_the_device() {
    // (what is wrong, the chain's descriptors, what the driver expects used)
    type Case<'a> = (&'a str, &'a [(u64, u32, u16)], u32);
    let cases: &[Case] = &[
        ("short header", &[(SCRATCH, 20, 0)], 0),
        ("write-only header", &[(SCRATCH, HDR_LEN, W)], 0),
        ("header outside memory", &[(MEM_SIZE - 8, HDR_LEN, 0)], 0),
        (
            "len beyond the data buffer",
            &[(SCRATCH, HDR_LEN, 0), (SCRATCH + 0x100, 8, 0)],
            64,
        ),
        (
            "len beyond the limit",
            &[(SCRATCH, HDR_LEN, 0), (SCRATCH + 0x100, 8, 0)],
            u32::MAX,
        ),
        (
            "write-only data",
            &[(SCRATCH, HDR_LEN, 0), (SCRATCH + 0x100, 8, W)],
            8,
        ),
    ];
    for (name, chain, len) in cases {
        let (mut dev, mem, irq, _path) = device();
        let mut driver = Driver::new(&mem);
        write_header(&mem, SCRATCH, OP_REQUEST, *len);
        driver.add_chain(chain);
        dev.process_tx();
        assert!(dev.is_broken(), "{name}: device kept going");
        assert!(irq.needs_reset(), "{name}: no DEVICE_NEEDS_RESET");
        // Broken until reset: nothing more is consumed.
        write_header(&mem, SCRATCH, OP_REQUEST, 0);
        driver.add_chain(&[(SCRATCH, HDR_LEN, 0)]);
        dev.process_tx();
        assert_eq!(driver.used_idx(), 0, "{name}");
    }
}
