//! Parser tests: hand-built chains and arbitrary descriptor lists.

use super::*;
use crate::virtio::block::test_utils::{guest_memory, MEM_SIZE};
use proptest::prelude::*;

/// VRING_DESC_F_NEXT and VRING_DESC_F_WRITE.
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const HDR: u64 = 0x4000;

fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
    Descriptor::new(addr, len, flags, 0)
}

/// A header, then `data`, then a status byte; NEXT set on all but the last.
fn chain(data: &[Descriptor]) -> Vec<Descriptor> {
    let mut v = vec![d(HDR, 16, NEXT)];
    v.extend(
        data.iter()
            .map(|x| d(x.addr().0, x.len(), x.flags() | NEXT)),
    );
    v.push(d(0x5000, 1, WRITE));
    v
}

fn mem_with_header(request_type: u32, sector: u64) -> GuestMemoryMmap {
    let mem = guest_memory();
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&request_type.to_le_bytes());
    hdr[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(HDR)).unwrap();
    mem
}

#[test]
fn parses_reads_writes_and_others() {
    let mem = mem_with_header(VIRTIO_BLK_T_IN, 7);
    let r = Request::parse(
        &mem,
        chain(&[d(0x6000, 512, WRITE), d(0x7000, 1024, WRITE)]),
    )
    .unwrap();
    assert_eq!(r.kind, RequestKind::In);
    assert_eq!(r.sector, 7);
    assert_eq!(r.data_len, 1536);
    assert_eq!(
        r.data,
        vec![(GuestAddress(0x6000), 512), (GuestAddress(0x7000), 1024)]
    );
    assert_eq!(r.status_addr, GuestAddress(0x5000));
    assert_eq!(r.disk_offset(10), Ok(7 * 512));
    assert!(r.disk_offset(9).is_err());

    let mem = mem_with_header(VIRTIO_BLK_T_OUT, 0);
    let r = Request::parse(&mem, chain(&[d(0x6000, 512, 0)])).unwrap();
    assert_eq!(r.kind, RequestKind::Out);

    let mem = mem_with_header(VIRTIO_BLK_T_FLUSH, 0);
    // Data buffers of a flush are ignored, whatever their direction.
    let r = Request::parse(&mem, chain(&[d(u64::MAX, 9, 0)])).unwrap();
    assert_eq!((r.kind, r.data.len()), (RequestKind::Flush, 0));

    let mem = mem_with_header(99, 0);
    let r = Request::parse(&mem, chain(&[])).unwrap();
    assert_eq!(r.kind, RequestKind::Unsupported(99));
}

#[test]
fn status_byte_is_the_last_byte_of_the_status_descriptor() {
    let mem = mem_with_header(VIRTIO_BLK_T_GET_ID, 0);
    let mut c = chain(&[d(0x6000, 20, WRITE)]);
    c[2] = d(0x5000, 4, WRITE);
    assert_eq!(
        Request::parse(&mem, c).unwrap().status_addr,
        GuestAddress(0x5003)
    );
}

/// VERSION_1 drivers may lay `struct virtio_blk_req` out over descriptors
/// as they like (virtio 1.2, 2.7.4): the same requests in other shapes.
#[test]
fn any_descriptor_layout_is_accepted() {
    // OUT: header and data in one descriptor, status on its own.
    let mem = guest_memory();
    let mut hdr_and_data = vec![0u8; 16 + 512];
    hdr_and_data[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    hdr_and_data[8..16].copy_from_slice(&3u64.to_le_bytes());
    mem.write_slice(&hdr_and_data, GuestAddress(0x6000))
        .unwrap();
    let r = Request::parse(&mem, vec![d(0x6000, 528, NEXT), d(0x5000, 1, WRITE)]).unwrap();
    assert_eq!((r.kind, r.sector), (RequestKind::Out, 3));
    assert_eq!(r.data, vec![(GuestAddress(0x6010), 512)]);
    assert_eq!(r.status_addr, GuestAddress(0x5000));

    // IN: header split over two descriptors, data and status in one.
    let mem = mem_with_header(VIRTIO_BLK_T_IN, 9);
    let r = Request::parse(
        &mem,
        vec![
            d(HDR, 10, NEXT),
            d(HDR + 10, 6, NEXT),
            d(0x6000, 513, WRITE),
        ],
    )
    .unwrap();
    assert_eq!((r.kind, r.sector), (RequestKind::In, 9));
    assert_eq!(r.data, vec![(GuestAddress(0x6000), 512)]);
    assert_eq!(r.data_len, 512);
    assert_eq!(r.status_addr, GuestAddress(0x6200));

    // FLUSH: header then status, with an empty writable descriptor between.
    let mem = mem_with_header(VIRTIO_BLK_T_FLUSH, 0);
    let r = Request::parse(
        &mem,
        vec![
            d(HDR, 16, NEXT),
            d(0x5000, 1, WRITE | NEXT),
            d(0x7000, 0, WRITE),
        ],
    )
    .unwrap();
    assert_eq!(
        (r.kind, r.status_addr),
        (RequestKind::Flush, GuestAddress(0x5000))
    );
}

#[test]
fn range_checks() {
    let mem = mem_with_header(VIRTIO_BLK_T_OUT, u64::MAX / 256);
    let r = Request::parse(&mem, chain(&[d(0x6000, 512, 0)])).unwrap();
    assert!(matches!(
        r.disk_offset(u64::MAX),
        Err(RequestError::OutOfRange { .. })
    ));
    let mem = mem_with_header(VIRTIO_BLK_T_OUT, 1);
    let r = Request::parse(&mem, chain(&[d(0x6000, 100, 0)])).unwrap();
    assert_eq!(r.disk_offset(100), Err(RequestError::UnalignedLength(100)));
    assert!(!RequestError::UnalignedLength(100).is_malformed());
    // Capacity so large that it has no byte count is still handled.
    let r = Request::parse(&mem, chain(&[d(0x6000, 512, 0)])).unwrap();
    assert!(r.disk_offset(u64::MAX).is_err());
}

#[test]
fn malformed_chains() {
    use RequestError as E;
    let mem = mem_with_header(VIRTIO_BLK_T_IN, 0);
    let p = |c: Vec<Descriptor>| Request::parse(&mem, c).unwrap_err();
    assert_eq!(p(vec![]), E::EmptyChain);
    assert_eq!(p(vec![d(HDR, 16, 0)]), E::MissingStatus);
    assert_eq!(p(vec![d(HDR, 16, NEXT)]), E::BrokenLink);
    assert_eq!(
        p(vec![d(HDR, 16, WRITE | NEXT), d(0x5000, 1, WRITE)]),
        E::HeaderWritable
    );
    assert_eq!(
        p(vec![d(HDR, 8, NEXT), d(0x5000, 1, WRITE)]),
        E::HeaderLength(8)
    );
    // Readable bytes after the header are data, which an IN must not have.
    assert!(matches!(
        p(vec![d(HDR, 32, NEXT), d(0x5000, 1, WRITE)]),
        E::DataDirection { index: 0, .. }
    ));
    assert_eq!(
        p(vec![
            d(HDR, 16, NEXT),
            d(0x5000, 1, WRITE | NEXT),
            d(0x6000, 512, 0)
        ]),
        E::ReadableAfterWritable(2)
    );
    let far = MEM_SIZE + 0x1000;
    assert_eq!(
        p(vec![d(far, 16, NEXT), d(0x5000, 1, WRITE)]),
        E::HeaderAddress(far)
    );
    assert_eq!(
        p(vec![d(HDR, 16, NEXT), d(0x5000, 1, 0)]),
        E::StatusReadOnly
    );
    assert_eq!(
        p(vec![d(HDR, 16, NEXT), d(0x5000, 0, WRITE)]),
        E::StatusEmpty
    );
    assert!(matches!(
        p(vec![d(HDR, 16, NEXT), d(u64::MAX, 2, WRITE)]),
        E::StatusAddress(..)
    ));
    assert!(matches!(
        p(chain(&[d(0x6000, 512, 0)])),
        E::DataDirection { index: 1, .. }
    ));
    assert!(matches!(
        p(chain(&[d(far, 512, WRITE)])),
        E::DataAddress { .. }
    ));
    // Straddles the end of guest memory.
    let edge = MEM_SIZE - 256;
    assert!(matches!(
        p(chain(&[d(edge, 512, WRITE)])),
        E::DataAddress { .. }
    ));
    assert!(matches!(
        p(chain(&[d(u64::MAX - 10, 512, WRITE)])),
        E::DataAddress { .. }
    ));
    let long = vec![d(0x6000, 1, WRITE); MAX_DESCRIPTORS];
    assert_eq!(p(chain(&long)), E::TooManyDescriptors);
    assert_eq!(p(chain(&[d(0x6000, u32::MAX, WRITE)])), E::TooLong);
    assert!(E::TooLong.is_malformed());
}

#[test]
fn longest_chain_allowed() {
    let mem = mem_with_header(VIRTIO_BLK_T_IN, 0);
    let segs = vec![d(0x6000, 512, WRITE); MAX_DESCRIPTORS - 2];
    let r = Request::parse(&mem, chain(&segs)).unwrap();
    assert_eq!(
        r.data.len(),
        usize::try_from(super::super::SEG_MAX).unwrap()
    );
}

fn any_descriptor() -> impl Strategy<Value = Descriptor> {
    let addr = prop_oneof![
        Just(HDR),
        0u64..MEM_SIZE + 0x1000,
        (MEM_SIZE - 0x200)..(MEM_SIZE + 0x200),
        (u64::MAX - 0x1000)..=u64::MAX,
        any::<u64>(),
    ];
    let len = prop_oneof![Just(16u32), Just(1), Just(0), 0u32..0x2000, any::<u32>()];
    (addr, len, any::<u16>()).prop_map(|(a, l, f)| Descriptor::new(a, l, f, 0))
}

proptest! {
    #[test]
    fn parser_never_panics_and_results_are_consistent(
        request_type in prop_oneof![0u32..10, any::<u32>()],
        sector in prop_oneof![0u64..64, any::<u64>()],
        descs in prop::collection::vec(any_descriptor(), 0..300),
    ) {
        let mem = mem_with_header(request_type, sector);
        match Request::parse(&mem, descs.clone()) {
            Ok(r) => {
                prop_assert!(r.data.len() < MAX_DESCRIPTORS);
                let sum: u64 = r.data.iter().map(|&(_, l)| u64::from(l)).sum();
                prop_assert_eq!(sum, u64::from(r.data_len));
                for &(a, l) in &r.data {
                    prop_assert!(in_memory(&mem, a, l, Permissions::Read));
                }
                prop_assert!(in_memory(&mem, r.status_addr, 1, Permissions::Write));
                if let Ok(off) = r.disk_offset(64) {
                    prop_assert!(off + u64::from(r.data_len) <= 64 * 512);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}
