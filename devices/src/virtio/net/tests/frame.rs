//! Frame gathering (TX) and delivery (RX) against hand-built and arbitrary
//! descriptor chains.

use std::io;
use std::sync::atomic::Ordering;

use proptest::prelude::*;
use virtio_queue::QueueT;

use super::*;
use crate::virtio::net::frame::{
    deliver_rx_frame, process_tx_queue, request_rx_kick, NetQueueError, RxOutcome, RxScratch,
    TxPass, FRAME_BUF_LEN,
};
use crate::virtio::net::{NetCounters, NetMetrics};

/// Runs a TX pass collecting what would go to the TAP.
fn tx_pass(
    dq: &DriverQueue,
    queue: &mut Queue,
    budget: usize,
    metrics: &NetMetrics,
) -> (Result<TxPass, NetQueueError>, Vec<Vec<u8>>) {
    let mem = guest_memory_of(dq);
    let mut sent = Vec::new();
    let mut buf = vec![0u8; FRAME_BUF_LEN];
    let r = process_tx_queue(queue, mem, &mut buf, budget, metrics, |f| {
        sent.push(f.to_vec());
        Ok(f.len())
    });
    (r, sent)
}

fn guest_memory_of<'a>(dq: &DriverQueue<'a>) -> &'a GuestMemoryMmap {
    dq.mem
}

#[test]
fn tx_gathers_a_frame_from_several_descriptors() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    let frame = test_frame(200, 7);
    write_guest(&mem, DATA, &frame[..5]);
    write_guest(&mem, DATA + 0x1000, &frame[5..100]);
    write_guest(&mem, DATA + 0x3000, &frame[100..]);
    let rest = u32::try_from(frame.len() - 100).unwrap();
    dq.add_chain(&[
        (DATA, 5, false),
        (DATA + 0x1000, 95, false),
        (DATA + 0x3000, rest, false),
    ]);
    let mut q = dq.queue();
    let metrics = NetMetrics::default();
    let (r, sent) = tx_pass(&dq, &mut q, 64, &metrics);
    assert_eq!(
        r.unwrap(),
        TxPass {
            used: 1,
            more: false
        }
    );
    assert_eq!(sent, vec![frame.clone()]);
    assert_eq!(dq.used(), vec![(0, 0)]);
    let c = metrics.snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 214, 0));
}

#[test]
fn tx_drops_and_counts_garbage_but_keeps_going() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    let good = test_frame(60, 1);
    write_guest(&mem, DATA, &good);
    let good_len = u32::try_from(good.len()).unwrap();
    dq.add_chain(&[(DATA, good_len, true)]); // device-writable
    dq.add_chain(&[(MEM_SIZE - 10, 100, false)]); // runs off the end of memory
    dq.add_chain(&[(DATA, 40_000, false), (DATA, 40_000, false)]); // oversized
    dq.add_chain(&[(DATA, 20, false)]); // shorter than the headers
    dq.add_chain(&[(DATA, u32::MAX, false)]); // absurd length
    dq.add_chain(&[(DATA, good_len, false)]);
    let mut q = dq.queue();
    let metrics = NetMetrics::default();
    let (r, sent) = tx_pass(&dq, &mut q, 64, &metrics);
    assert_eq!(r.unwrap().used, 6);
    assert_eq!(sent, vec![good]);
    // Every chain goes back to the guest, with length 0.
    let used = dq.used();
    assert_eq!(used.len(), 6);
    assert!(used.iter().all(|&(_, len)| len == 0));
    let c = metrics.snapshot();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, 5));
}

#[test]
fn tx_counts_frames_the_tap_refuses() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    write_guest(&mem, DATA, &test_frame(60, 1));
    dq.add_chain(&[(DATA, 86, false)]);
    let mut q = dq.queue();
    let metrics = NetMetrics::default();
    let mut buf = vec![0u8; FRAME_BUF_LEN];
    let r = process_tx_queue(&mut q, &mem, &mut buf, 8, &metrics, |_| {
        Err(io::Error::from_raw_os_error(libc::EIO))
    });
    assert_eq!(r.unwrap().used, 1);
    assert_eq!(metrics.snapshot().tx_dropped, 1);
    assert_eq!(dq.used(), vec![(0, 0)]);
}

#[test]
fn tx_budget_leaves_the_rest_for_the_next_pass() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    write_guest(&mem, DATA, &test_frame(60, 1));
    for _ in 0..5 {
        dq.add_chain(&[(DATA, 86, false)]);
    }
    let mut q = dq.queue();
    let metrics = NetMetrics::default();
    let (r, sent) = tx_pass(&dq, &mut q, 2, &metrics);
    assert_eq!(
        r.unwrap(),
        TxPass {
            used: 2,
            more: true
        }
    );
    assert_eq!(sent.len(), 2);
    let (r, sent) = tx_pass(&dq, &mut q, 8, &metrics);
    assert_eq!(
        r.unwrap(),
        TxPass {
            used: 3,
            more: false
        }
    );
    assert_eq!(sent.len(), 3);
    assert_eq!(metrics.snapshot().tx_frames, 5);
}

#[test]
fn tx_survives_a_descriptor_loop_and_a_corrupt_avail_index() {
    let mem = guest_memory();
    let dq = DriverQueue::new(&mem, 0, 16);
    write_guest(&mem, DATA, &test_frame(60, 1));
    // Descriptor 0 points at itself: the chain iterator stops after 16
    // descriptors, and the frame is dropped rather than sent as 16 copies.
    dq.set_desc(0, DATA, 100, VRING_DESC_F_NEXT, 0);
    dq.set_avail_slot(0, 0);
    dq.set_avail_idx(1);
    let mut q = dq.queue();
    let metrics = NetMetrics::default();
    let (r, sent) = tx_pass(&dq, &mut q, 8, &metrics);
    assert_eq!(r.unwrap().used, 1);
    assert!(sent.is_empty(), "a looping chain went out: {sent:?}");
    assert_eq!(metrics.snapshot().tx_dropped, 1);

    // The driver claims far more chains than the ring holds.
    dq.set_avail_idx(1 + 17);
    let (r, _) = tx_pass(&dq, &mut q, 8, &metrics);
    assert!(matches!(r, Err(NetQueueError::Queue(_))), "{r:?}");
}

fn deliver(
    dq: &DriverQueue,
    q: &mut Queue,
    frame: &[u8],
    mergeable: bool,
) -> Result<RxOutcome, NetQueueError> {
    let mut frame = frame.to_vec();
    deliver_rx_frame(
        q,
        guest_memory_of(dq),
        &mut frame,
        mergeable,
        &mut RxScratch::default(),
    )
}

/// The frame as the guest should see it: `num_buffers` filled in.
fn with_num_buffers(frame: &[u8], n: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[10..12].copy_from_slice(&n.to_le_bytes());
    f
}

#[test]
fn rx_fills_one_chain_without_mergeable_buffers() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    dq.add_chain(&[(DATA, 12, true), (DATA + 0x1000, 2000, true)]);
    let mut q = dq.queue();
    let frame = test_frame(100, 3);
    assert_eq!(
        deliver(&dq, &mut q, &frame, false).unwrap(),
        RxOutcome::Delivered(1)
    );
    let expect = with_num_buffers(&frame, 1);
    assert_eq!(read_guest(&mem, DATA, 12), expect[..12]);
    assert_eq!(read_guest(&mem, DATA + 0x1000, 114), expect[12..]);
    assert_eq!(dq.used(), vec![(0, 126)]);
}

#[test]
fn rx_spreads_a_frame_over_mergeable_buffers() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    for i in 0..4 {
        dq.add_chain(&[(DATA + i * 0x1000, 50, true)]);
    }
    let mut q = dq.queue();
    let frame = test_frame(120, 9); // 146 bytes: 50 + 50 + 46
    assert_eq!(
        deliver(&dq, &mut q, &frame, true).unwrap(),
        RxOutcome::Delivered(3)
    );
    let expect = with_num_buffers(&frame, 3);
    let mut got = read_guest(&mem, DATA, 50);
    got.extend(read_guest(&mem, DATA + 0x1000, 50));
    got.extend(read_guest(&mem, DATA + 0x2000, 46));
    assert_eq!(got, expect);
    assert_eq!(dq.used(), vec![(0, 50), (1, 50), (2, 46)]);
    assert_eq!(q.next_avail(), 3);
}

#[test]
fn rx_without_enough_buffers_consumes_nothing_and_resumes() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    dq.add_chain(&[(DATA, 50, true)]);
    let mut q = dq.queue();
    let frame = test_frame(120, 9);
    assert_eq!(
        deliver(&dq, &mut q, &frame, true).unwrap(),
        RxOutcome::NoBuffers
    );
    assert_eq!(q.next_avail(), 0);
    assert!(dq.used().is_empty());
    dq.add_chain(&[(DATA + 0x1000, 200, true)]);
    assert_eq!(
        deliver(&dq, &mut q, &frame, true).unwrap(),
        RxOutcome::Delivered(2)
    );
    assert_eq!(dq.used(), vec![(0, 50), (1, 96)]);
}

#[test]
fn rx_waiting_on_too_few_buffers_still_gets_a_kick() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    dq.add_chain(&[(DATA, 50, true)]);
    let mut q = dq.queue();
    q.set_event_idx(true);
    let seen = q.avail_idx(&mem, Ordering::Acquire).unwrap();
    let frame = test_frame(120, 9);
    assert_eq!(
        deliver(&dq, &mut q, &frame, true).unwrap(),
        RxOutcome::NoBuffers
    );
    assert!(!request_rx_kick(&mut q, &mem, seen).unwrap());
    // Past what the device saw (1), not past what it consumed (0): the
    // next buffer the driver posts triggers a notification.
    assert_eq!(dq.avail_event(), 1);
    assert_eq!(q.next_avail(), 0);
    // Posted between the attempt and the request: try again at once.
    dq.add_chain(&[(DATA + 0x1000, 200, true)]);
    assert!(request_rx_kick(&mut q, &mem, seen).unwrap());
    assert_eq!(
        deliver(&dq, &mut q, &frame, true).unwrap(),
        RxOutcome::Delivered(2)
    );
}

#[test]
fn rx_drops_frames_no_buffer_can_hold() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 4);
    dq.add_chain(&[(DATA, 100, true)]);
    let mut q = dq.queue();
    // One chain per frame without mergeable buffers: too big, buffer kept.
    let big = test_frame(200, 1);
    let r = deliver(&dq, &mut q, &big, false).unwrap();
    assert!(matches!(r, RxOutcome::Dropped(_)), "{r:?}");
    assert_eq!(q.next_avail(), 0);
    let small = test_frame(50, 1);
    assert_eq!(
        deliver(&dq, &mut q, &small, false).unwrap(),
        RxOutcome::Delivered(1)
    );
    assert_eq!(q.next_avail(), 1);
    // Mergeable, but the whole ring is too small: waiting would never help.
    let mut dq = DriverQueue::new(&mem, 0, 4);
    for i in 0..4 {
        dq.add_chain(&[(DATA + i * 0x1000, 20, true)]);
    }
    let mut q = dq.queue();
    let r = deliver(&dq, &mut q, &big, true).unwrap();
    assert!(matches!(r, RxOutcome::Dropped(_)), "{r:?}");
    assert_eq!(q.next_avail(), 0);
    assert_eq!(
        deliver(&dq, &mut q, &[0; 5], true).unwrap(),
        RxOutcome::Dropped("shorter than the virtio-net header")
    );
}

#[test]
fn rx_rejects_unusable_buffers() {
    let mem = guest_memory();
    let mut dq = DriverQueue::new(&mem, 0, 16);
    dq.add_chain(&[(DATA, 2000, false)]); // read-only
    let mut q = dq.queue();
    let r = deliver(&dq, &mut q, &test_frame(60, 0), true);
    assert!(
        matches!(r, Err(NetQueueError::BadRxBuffer { head: 0, .. })),
        "{r:?}"
    );

    let mut dq = DriverQueue::new(&mem, 0, 16);
    dq.add_chain(&[(MEM_SIZE - 16, 2000, true)]); // past the end of memory
    let mut q = dq.queue();
    let r = deliver(&dq, &mut q, &test_frame(60, 0), true);
    assert!(matches!(r, Err(NetQueueError::BadRxBuffer { .. })), "{r:?}");
    assert!(dq.used().is_empty());
}

/// One raw descriptor: address (some near or past the end of memory),
/// length (small, large or absurd), flags (NEXT, WRITE, INDIRECT) and next.
fn arb_descriptor() -> impl Strategy<Value = RawDesc> {
    (
        prop_oneof![
            3 => DATA..DATA + 0x8000,
            1 => MEM_SIZE - 0x100..MEM_SIZE + 0x100,
            1 => any::<u64>(),
        ],
        prop_oneof![3 => 0u32..2000, 1 => 0u32..70_000, 1 => any::<u32>()],
        prop_oneof![
            3 => Just(VRING_DESC_F_NEXT),
            2 => Just(0),
            2 => Just(VRING_DESC_F_WRITE),
            2 => Just(VRING_DESC_F_WRITE | VRING_DESC_F_NEXT),
            1 => 0u16..8,
        ],
        prop_oneof![4 => 0u16..16, 1 => 0u16..20],
    )
}

/// (address, length, flags, next) of one descriptor.
type RawDesc = (u64, u32, u16, u16);

/// A descriptor table of 16 entries, an avail ring naming arbitrary heads
/// (some out of range), and how many stale slots the avail index adds.
fn arb_ring() -> impl Strategy<Value = (Vec<RawDesc>, Vec<u16>, u16)> {
    (
        proptest::collection::vec(arb_descriptor(), 16),
        proptest::collection::vec(prop_oneof![4 => 0u16..16, 1 => 0u16..20], 0..16),
        0u16..4,
    )
}

fn install(dq: &DriverQueue, descs: &[RawDesc], heads: &[u16], extra_idx: u16) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        dq.set_desc(u16::try_from(i).unwrap(), addr, len, flags, next);
    }
    for (i, &h) in heads.iter().enumerate() {
        dq.set_avail_slot(u16::try_from(i).unwrap(), h);
    }
    // Sometimes claim more entries than were written (stale ring slots).
    dq.set_avail_idx(u16::try_from(heads.len()).unwrap() + extra_idx);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the guest puts in the TX ring: no panic, no hang, and
    /// every chain it posted is either sent or counted as dropped.
    #[test]
    fn tx_accounts_for_every_arbitrary_chain((descs, heads, extra) in arb_ring()) {
        let mem = guest_memory();
        let dq = DriverQueue::new(&mem, 0, 16);
        write_guest(&mem, DATA, &test_frame(0x7000, 5));
        install(&dq, &descs, &heads, extra);
        let mut q = dq.queue();
        let metrics = NetMetrics::default();
        let (r, sent) = tx_pass(&dq, &mut q, 1000, &metrics);
        let posted = heads.len() + usize::from(extra);
        // Out-of-range heads and avail indices break the queue (the device
        // stops); anything else is per-frame.
        let malformed = posted > 16 || heads.iter().any(|&h| h >= 16);
        let Ok(pass) = r else {
            prop_assert!(malformed);
            return Ok(());
        };
        prop_assert!(!malformed);
        prop_assert_eq!(pass.used, posted);
        let NetCounters { tx_frames, tx_dropped, .. } = metrics.snapshot();
        prop_assert_eq!(tx_frames + tx_dropped, u64::try_from(posted).unwrap());
        prop_assert_eq!(usize::try_from(tx_frames).unwrap(), sent.len());
        for f in &sent {
            prop_assert!(f.len() >= VNET_HDR_LEN + 14 && f.len() <= FRAME_BUF_LEN);
        }
        prop_assert_eq!(dq.used().len(), posted);
    }

    /// Whatever the guest puts in the RX ring: delivery either places the
    /// whole frame and returns exactly the chains it used, or consumes
    /// nothing (or reports a broken ring).
    #[test]
    fn rx_never_half_delivers(
        (descs, heads, extra) in arb_ring(),
        payload in 0usize..3000,
        mergeable in any::<bool>(),
    ) {
        let mem = guest_memory();
        let dq = DriverQueue::new(&mem, 0, 16);
        install(&dq, &descs, &heads, extra);
        let mut q = dq.queue();
        let frame = test_frame(payload, 1);
        match deliver(&dq, &mut q, &frame, mergeable) {
            Ok(RxOutcome::Delivered(n)) => {
                let used = dq.used();
                prop_assert_eq!(used.len(), usize::from(n));
                let total: u64 = used.iter().map(|&(_, l)| u64::from(l)).sum();
                prop_assert_eq!(total, u64::try_from(frame.len()).unwrap());
                prop_assert_eq!(q.next_avail(), n);
            }
            Ok(_) => {
                prop_assert!(dq.used().is_empty());
                prop_assert_eq!(q.next_avail(), 0);
            }
            Err(_) => prop_assert!(dq.used().is_empty()),
        }
    }
}

/// herd never offers VIRTIO_RING_F_INDIRECT_DESC, so a transmit chain using
/// an indirect table is a driver bug: dropped, not followed (a 64 Ki-entry
/// table would otherwise cost a walk of 64 Ki descriptors per chain).
#[test]
fn tx_drops_indirect_chains_without_following_them() {
    const VRING_DESC_F_INDIRECT: u16 = 4;
    let mem = guest_memory();
    let dq = DriverQueue::new(&mem, 0, 16);
    let frame = test_frame(60, 3);
    write_guest(&mem, DATA, &frame);
    // The indirect table at DATA + 0x4000 holds one good frame descriptor.
    let table = DATA + 0x4000;
    write_guest(&mem, table, &DATA.to_le_bytes());
    write_guest(
        &mem,
        table + 8,
        &u32::try_from(frame.len()).unwrap().to_le_bytes(),
    );
    write_guest(&mem, table + 12, &[0, 0, 0, 0]);
    dq.set_desc(0, table, 16, VRING_DESC_F_INDIRECT, 0);
    dq.set_avail_slot(0, 0);
    dq.set_avail_idx(1);
    let mut q = dq.queue();
    let metrics = NetMetrics::default();
    let (r, sent) = tx_pass(&dq, &mut q, 64, &metrics);
    assert_eq!(r.unwrap().used, 1);
    assert!(sent.is_empty(), "an indirect chain was followed and sent");
    assert_eq!(dq.used(), vec![(0, 0)]);
    assert_eq!(metrics.snapshot().tx_dropped, 1);
}
