//! Queue-level tests: a driver writes real descriptor chains into guest
//! memory and the device serves them against a temporary disk file.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use proptest::prelude::*;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::block::test_utils::*;
use crate::virtio::block::{
    BlockConfig, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use crate::virtio::{Activation, VirtioDevice, VirtioInterrupt, VIRTIO_RING_F_EVENT_IDX};

const W: u16 = 2;
const HDR: u64 = SCRATCH;
const STATUS: u64 = SCRATCH + 0x100;
const DATA: u64 = SCRATCH + 0x1000;
const DISK_SECTORS: u64 = 16;

struct Setup {
    block: Block,
    mem: GuestMemoryMmap,
    irq: Arc<VirtioInterrupt>,
    disk: TempDisk,
}

fn pattern() -> Vec<u8> {
    (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect()
}

fn setup_with(read_only: bool, features: u64) -> Setup {
    let disk = TempDisk::new(&pattern());
    let mut block = Block::new(BlockConfig {
        path: disk.path().to_owned(),
        read_only,
        serial: "herd-disk-1".into(),
    })
    .unwrap();
    let mem = guest_memory();
    let irq = Arc::new(VirtioInterrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    block
        .activate(Activation {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vec![test_queue(256)],
            acked_features: features,
        })
        .unwrap();
    Setup {
        block,
        mem,
        irq,
        disk,
    }
}

fn setup() -> Setup {
    setup_with(false, 0)
}

/// Adds a header / data / status chain of the given type.
fn request(drv: &mut Driver, t: u32, sector: u64, data: &[(u64, u32, u16)]) -> u16 {
    drv.write_header(HDR, t, sector);
    drv.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut chain = vec![(HDR, 16, 0)];
    chain.extend_from_slice(data);
    chain.push((STATUS, 1, W));
    drv.add_chain(&chain)
}

#[test]
fn reads_a_sector_range_into_guest_memory() {
    let mut s = setup();
    let mut drv = Driver::new(&s.mem);
    let head = request(
        &mut drv,
        VIRTIO_BLK_T_IN,
        1,
        &[(DATA, 512, W), (DATA + 512, 1024, W)],
    );
    s.block.process_queue();
    assert_eq!(drv.used_idx(), 1);
    assert_eq!(drv.used(0), (u32::from(head), 1537));
    assert_eq!(drv.read_byte(STATUS), VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 1536];
    s.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, pattern()[512..2048]);
    assert_ne!(s.irq.status() & INT_USED_RING, 0);
    assert_eq!(s.irq.irq_eventfd().read().unwrap(), 1);
}

#[test]
fn writes_and_flushes_reach_the_file() {
    let mut s = setup();
    let mut drv = Driver::new(&s.mem);
    s.mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    request(&mut drv, VIRTIO_BLK_T_OUT, 3, &[(DATA, 512, 0)]);
    s.block.process_queue();
    assert_eq!(drv.read_byte(STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(drv.used(0).1, 1);
    request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    s.block.process_queue();
    assert_eq!(drv.read_byte(STATUS), VIRTIO_BLK_S_OK);
    let on_disk = std::fs::read(s.disk.path()).unwrap();
    assert_eq!(on_disk[3 * 512..4 * 512], [0x5a; 512]);
    assert_eq!(on_disk[..3 * 512], pattern()[..3 * 512]);
    assert_eq!(drv.used_idx(), 2);
}

#[test]
fn get_id_returns_the_zero_padded_serial() {
    let mut s = setup();
    let mut drv = Driver::new(&s.mem);
    s.mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
    request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, &[(DATA, 32, W)]);
    s.block.process_queue();
    let mut id = [0u8; 32];
    s.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"herd-disk-1");
    assert_eq!(id[11..20], [0; 9]);
    assert_eq!(id[20..], [0xee; 12], "nothing past 20 bytes");
    assert_eq!(drv.used(0).1, 21);
    // A short buffer gets a prefix.
    request(&mut drv, VIRTIO_BLK_T_GET_ID, 0, &[(DATA + 0x100, 4, W)]);
    s.block.process_queue();
    assert_eq!(drv.used(1).1, 5);
    assert_eq!(drv.read_byte(STATUS), VIRTIO_BLK_S_OK);
}

#[test]
fn read_only_disks_fail_writes_but_serve_reads() {
    let mut s = setup_with(true, 0);
    let mut drv = Driver::new(&s.mem);
    request(&mut drv, VIRTIO_BLK_T_OUT, 0, &[(DATA, 512, 0)]);
    s.block.process_queue();
    assert_eq!(drv.read_byte(STATUS), VIRTIO_BLK_S_IOERR);
    request(&mut drv, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);
    s.block.process_queue();
    assert_eq!(drv.read_byte(STATUS), VIRTIO_BLK_S_OK);
    assert_eq!(std::fs::read(s.disk.path()).unwrap(), pattern());
    assert!(!s.block.is_broken());
}

#[test]
fn out_of_range_unaligned_and_unknown_requests_get_a_status() {
    let mut s = setup();
    let mut drv = Driver::new(&s.mem);
    let cases = [
        (VIRTIO_BLK_T_IN, DISK_SECTORS, 512, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 1024, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_OUT, u64::MAX, 512, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, 0, 100, VIRTIO_BLK_S_IOERR),
        (VIRTIO_BLK_T_IN, DISK_SECTORS - 1, 512, VIRTIO_BLK_S_OK),
        (99, 0, 512, VIRTIO_BLK_S_UNSUPP),
    ];
    for (i, &(t, sector, len, want)) in cases.iter().enumerate() {
        let flags = if t == VIRTIO_BLK_T_OUT { 0 } else { W };
        request(&mut drv, t, sector, &[(DATA, len, flags)]);
        s.block.process_queue();
        assert_eq!(drv.read_byte(STATUS), want, "case {i}");
        assert!(!s.block.is_broken());
    }
    assert_eq!(
        std::fs::metadata(s.disk.path()).unwrap().len(),
        DISK_SECTORS * 512
    );
}

#[test]
fn malformed_chain_breaks_the_device_until_reset() {
    let mut s = setup();
    let mut drv = Driver::new(&s.mem);
    // Header marked device-writable.
    drv.write_header(HDR, VIRTIO_BLK_T_IN, 0);
    drv.add_chain(&[(HDR, 16, W), (DATA, 512, W), (STATUS, 1, W)]);
    request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    s.block.process_queue();
    assert!(s.block.is_broken());
    assert_eq!(drv.used_idx(), 0, "nothing answered after the bad chain");
    // Further kicks are ignored.
    s.block.process_queue();
    assert_eq!(drv.used_idx(), 0);

    s.block.reset();
    assert!(!s.block.is_broken() && !s.block.is_activated());
    s.block.process_queue();
    let mem = s.mem.clone();
    s.block
        .activate(Activation {
            mem: mem.clone(),
            interrupt: s.irq.clone(),
            queues: vec![test_queue(256)],
            acked_features: 0,
        })
        .unwrap();
    let mut drv = Driver::new(&mem);
    request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    s.block.process_queue();
    assert_eq!(drv.used_idx(), 1);
}

#[test]
fn hostile_rings_break_the_device() {
    // Avail index far ahead of anything the driver could have published.
    let mut s = setup();
    let drv = Driver::new(&s.mem);
    drv.set_avail_idx(1000);
    s.block.process_queue();
    assert!(s.block.is_broken());

    // Head index outside the ring, and a descriptor linking to itself.
    for (head, desc) in [
        (300u16, Descriptor::new(HDR, 16, 0, 0)),
        (0, Descriptor::new(HDR, 16, 1, 0)),
    ] {
        let mut s = setup();
        let mut drv = Driver::new(&s.mem);
        drv.write_header(HDR, VIRTIO_BLK_T_FLUSH, 0);
        drv.write_desc(0, desc);
        drv.publish(head);
        s.block.process_queue();
        assert!(s.block.is_broken());
    }
}

#[test]
fn wrong_queue_count_fails_activation_and_idle_device_ignores_kicks() {
    let disk = TempDisk::new(&[0u8; 512]);
    let mut block = Block::new(BlockConfig {
        path: disk.path().to_owned(),
        read_only: true,
        serial: String::new(),
    })
    .unwrap();
    block.process_queue();
    let irq = Arc::new(VirtioInterrupt::new(EventFd::new(0).unwrap()));
    let err = block.activate(Activation {
        mem: guest_memory(),
        interrupt: irq,
        queues: vec![],
        acked_features: 0,
    });
    assert!(err.is_err());
    assert!(!block.is_activated());
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut s = setup_with(false, VIRTIO_RING_F_EVENT_IDX);
    let mut drv = Driver::new(&s.mem);
    // used_event sits right after the avail ring entries.
    let used_event = GuestAddress(AVAIL_RING + 4 + 2 * 256);
    s.mem.write_obj(4u16, used_event).unwrap();
    for _ in 0..2 {
        request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    }
    s.block.process_queue();
    assert_eq!(drv.used_idx(), 2);
    assert_eq!(s.irq.status(), 0, "driver asked to hear only after entry 4");
    for _ in 0..3 {
        request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    }
    s.block.process_queue();
    assert_eq!(drv.used_idx(), 5);
    assert_ne!(s.irq.status() & INT_USED_RING, 0);
}

#[test]
fn a_full_ring_is_served_then_the_device_yields() {
    let mut s = setup();
    let mut drv = Driver::new(&s.mem);
    let head = request(&mut drv, VIRTIO_BLK_T_FLUSH, 0, &[]);
    for _ in 1..256 {
        drv.publish(head);
    }
    // Drain the activation kick.
    let _ = s.block.queue_evts[0].read();
    s.block.process_queue();
    assert_eq!(drv.used_idx(), 256);
    assert_eq!(
        s.block.queue_evts[0].read().unwrap(),
        1,
        "asked to run again"
    );
    s.block.process_queue();
    assert!(s.block.queue_evts[0].read().is_err());
}

#[test]
fn served_from_the_event_loop() {
    let s = setup();
    let mut drv = Driver::new(&s.mem);
    request(&mut drv, VIRTIO_BLK_T_IN, 0, &[(DATA, 512, W)]);
    let mem = s.mem.clone();
    let block = Arc::new(Mutex::new(s.block));
    let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    manager.add_subscriber(block.clone());
    // The activation kick is pending; a guest kick on top changes nothing.
    block.lock().unwrap().queue_evts[0].write(1).unwrap();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
    assert_eq!(Driver::new(&mem).used_idx(), 1);
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "eventfd drained");
}

fn any_desc() -> impl Strategy<Value = Descriptor> {
    let addr = prop_oneof![
        Just(HDR),
        Just(STATUS),
        (DATA..DATA + 0x2000),
        0u64..MEM_SIZE + 0x1000,
        (MEM_SIZE - 0x400)..MEM_SIZE + 0x400,
        any::<u64>(),
    ];
    let len = prop_oneof![Just(16u32), Just(1), Just(512), 0u32..0x1000, any::<u32>()];
    let flags = prop_oneof![0u16..8, any::<u16>()];
    (addr, len, flags, 0u16..20).prop_map(|(a, l, f, n)| Descriptor::new(a, l, f, n))
}

/// A well-formed request: type, sector, data lengths.
fn good_request() -> impl Strategy<Value = (u32, u64, Vec<u32>)> {
    let t = prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()];
    let sector = prop_oneof![0u64..20, any::<u64>()];
    let lens = prop::collection::vec(prop_oneof![Just(512u32), Just(1024), 1u32..2048], 0..4);
    (t, sector, lens)
}

#[derive(Clone, Debug)]
enum Damage {
    Addr(u64),
    Len(u32),
    Flags(u16),
    Next(u16),
}

/// One damaged descriptor field: (descriptor index, new value).
fn mutation() -> impl Strategy<Value = (u16, Damage)> {
    let damage = prop_oneof![
        prop_oneof![0u64..0x20, DATA..DATA + 0x800, any::<u64>()].prop_map(Damage::Addr),
        prop_oneof![0u32..0x20, any::<u32>()].prop_map(Damage::Len),
        prop_oneof![0u16..8, any::<u16>()].prop_map(Damage::Flags),
        prop_oneof![0u16..0x20, any::<u16>()].prop_map(Damage::Next),
    ];
    (0u16..64, damage)
}

fn check_invariants(s: &Setup, largest: usize) -> Result<(), TestCaseError> {
    // Parsing holds at most 256 descriptors and 254 (address, length)
    // pairs, whatever lengths the guest claims.
    prop_assert!(largest <= 8192, "allocated {largest} bytes at once");
    let q = &s.block.active.as_ref().unwrap().queue;
    prop_assert!(
        s.block.is_broken() || q.next_used() == q.next_avail(),
        "every chain taken is answered unless the device broke"
    );
    prop_assert_eq!(
        std::fs::metadata(s.disk.path()).unwrap().len(),
        DISK_SECTORS * 512
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Well-formed chains with a few damaged fields: exercises both the
    /// serving paths and the malformed ones.
    #[test]
    fn damaged_chains_are_answered_or_break_the_device(
        requests in prop::collection::vec(good_request(), 1..8),
        mutations in prop::collection::vec(mutation(), 0..3),
        event_idx in any::<bool>(),
    ) {
        let features = if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
        let mut s = setup_with(false, features);
        let mut drv = Driver::new(&s.mem);
        let mut n_descs = 0u16;
        for (i, (t, sector, lens)) in requests.iter().enumerate() {
            let i = u64::try_from(i).unwrap();
            drv.write_header(HDR + 16 * i, *t, *sector);
            let dir = if *t == VIRTIO_BLK_T_OUT { 0 } else { W };
            let mut chain = vec![(HDR + 16 * i, 16, 0)];
            let mut off = 0;
            for &len in lens {
                chain.push((DATA + off, len, dir));
                off += u64::from(len);
            }
            chain.push((STATUS + i, 1, W));
            n_descs += u16::try_from(chain.len()).unwrap();
            drv.add_chain(&chain);
        }
        for (index, damage) in &mutations {
            let index = *index % n_descs;
            let at = GuestAddress(DESC_TABLE + u64::from(index) * 16);
            let d: Descriptor = s.mem.read_obj(at).unwrap();
            let (mut a, mut l, mut f, mut n) = (d.addr().0, d.len(), d.flags(), d.next());
            match *damage {
                Damage::Addr(v) => a = v,
                Damage::Len(v) => l = v,
                Damage::Flags(v) => f = v,
                Damage::Next(v) => n = v,
            }
            drv.write_desc(index, Descriptor::new(a, l, f, n));
        }
        let ((), largest) = largest_allocation_in(|| s.block.process_queue());
        check_invariants(&s, largest)?;
        if mutations.is_empty() {
            prop_assert!(!s.block.is_broken());
            prop_assert_eq!(usize::from(drv.used_idx()), requests.len());
        }
    }

    /// Descriptor tables and avail rings of pure noise.
    #[test]
    fn arbitrary_rings_never_panic_hang_or_overallocate(
        request_type in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), any::<u32>()],
        sector in prop_oneof![0u64..20, any::<u64>()],
        descs in prop::collection::vec(any_desc(), 0..20),
        heads in prop::collection::vec(prop_oneof![0u16..20, any::<u16>()], 0..40),
        extra_avail in prop_oneof![Just(0u16), any::<u16>()],
        event_idx in any::<bool>(),
    ) {
        let features = if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
        let mut s = setup_with(false, features);
        let mut drv = Driver::new(&s.mem);
        drv.write_header(HDR, request_type, sector);
        for (i, d) in descs.iter().enumerate() {
            drv.write_desc(u16::try_from(i).unwrap(), *d);
        }
        for &h in &heads {
            drv.publish(h);
        }
        if extra_avail != 0 {
            drv.set_avail_idx(extra_avail);
        }
        let ((), largest) = largest_allocation_in(|| s.block.process_queue());
        check_invariants(&s, largest)?;
    }
}
