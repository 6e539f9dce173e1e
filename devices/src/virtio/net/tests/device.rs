//! The device and the TAP backend against a real TAP interface (created
//! per test with a unique name, removed by a guard even when a test
//! fails), plus the pure helpers of `device.rs`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::net::device::tap_offloads;
use crate::virtio::net::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use crate::virtio::net::{
    mac_from_name, Net, NetConfig, NetError, Tap, TapError, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::virtio::{
    Activation, VirtioDevice, VirtioInterrupt, TYPE_NET, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

const ETHERTYPE_TEST: u16 = 0x88b5;

#[test]
fn macs_are_stable_local_and_unicast() {
    let a = mac_from_name("web-1");
    assert_eq!(a, mac_from_name("web-1"));
    assert_ne!(a, mac_from_name("web-2"));
    assert_eq!(a[0], 0x02, "locally administered, unicast");
    // FNV-1a is fixed, so addresses survive herd upgrades.
    assert_eq!(mac_from_name(""), [0x02, 0x25, 0x23, 0x22, 0x84, 0xe4]);
}

#[test]
fn tap_offloads_follow_the_guest_features() {
    let f = |bits: &[u32]| bits.iter().fold(0u64, |acc, b| acc | (1 << b));
    assert_eq!(tap_offloads(0), 0);
    // TSO without checksum offload is not valid for the TAP.
    assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
    assert_eq!(tap_offloads(f(&[VIRTIO_NET_F_GUEST_CSUM])), TUN_F_CSUM);
    let all = f(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
    ]);
    assert_eq!(
        tap_offloads(all),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
    );
}

#[test]
fn bad_tap_names_fail_before_touching_the_host() {
    let r = Net::new(NetConfig {
        tap_name: "no/slash".into(),
        mac: [2, 0, 0, 0, 0, 1],
    });
    assert!(matches!(r, Err(NetError::Tap(TapError::InvalidName(_)))));
}

/// A TAP interface that exists for one test.
struct TestTap {
    name: String,
}

impl TestTap {
    /// None (after one loud line) where TAP tests cannot run.
    fn create() -> Option<TestTap> {
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("SKIP: /dev/net/tun absent — virtio-net TAP tests did not run");
            return None;
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: not root — virtio-net TAP tests did not run");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tap = TestTap {
            name: format!("herdt{}x{n}", std::process::id()),
        };
        tap.ip(&["tuntap", "add", "dev", &tap.name, "mode", "tap"]);
        // No IPv6 autoconfiguration chatter on the test interface.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.name),
            "1",
        );
        tap.ip(&["link", "set", "dev", &tap.name, "up"]);
        Some(tap)
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.name])
            .output();
    }
}

fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid pollfd that outlives the call.
    unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
}

/// An AF_PACKET socket on the test interface that sees only frames with
/// the test ethertype: the host end of the wire.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifname: &str) -> PacketSocket {
        let proto = ETHERTYPE_TEST.to_be();
        // SAFETY: plain socket creation; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` was just created and nothing else owns it.
        let sock = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        let name = CString::new(ifname).unwrap();
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        addr.sll_protocol = proto;
        addr.sll_ifindex = i32::try_from(ifindex).unwrap();
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
        let ret = unsafe {
            libc::bind(
                sock.0.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        sock
    }

    /// Sends one frame, retrying briefly while the link comes up.
    fn send(&self, frame: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            // SAFETY: `frame` is valid for reads of its length.
            let n =
                unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if n == isize::try_from(frame.len()).unwrap() {
                return;
            }
            let err = std::io::Error::last_os_error();
            assert!(Instant::now() < deadline, "send: {err}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The next frame equal to `want`, waiting up to two seconds.
    fn expect(&self, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 70_000];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if !poll_readable(self.0.as_raw_fd(), left) {
                break;
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if usize::try_from(n).is_ok_and(|n| &buf[..n] == want) {
                return;
            }
        }
        panic!("the frame never reached the host side of the TAP");
    }
}

/// Reads the TAP until a frame with the test ethertype comes.
fn read_test_frame(tap: &Tap) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; 70_000];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if !poll_readable(tap.as_raw_fd(), left) {
            break;
        }
        match tap.read(&mut buf) {
            Ok(n) if n >= VNET_HDR_LEN + 14 && buf[VNET_HDR_LEN + 12..][..2] == [0x88, 0xb5] => {
                return buf[..n].to_vec();
            }
            _ => {}
        }
    }
    panic!("no test frame came out of the TAP");
}

#[test]
fn tap_exchanges_frames_with_the_host() {
    let Some(tt) = TestTap::create() else { return };
    let tap = Tap::open(&tt.name).unwrap();
    assert_eq!(tap.name(), tt.name);
    tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO)
        .unwrap();
    let sock = PacketSocket::bind(&tt.name);

    let out = test_frame(100, 7);
    assert_eq!(tap.write(&out).unwrap(), out.len());
    sock.expect(&out[VNET_HDR_LEN..]);

    let inbound = test_frame(80, 9);
    sock.send(&inbound[VNET_HDR_LEN..]);
    let got = read_test_frame(&tap);
    assert_eq!(got[VNET_HDR_LEN..], inbound[VNET_HDR_LEN..]);
    assert_eq!(got[1], 0, "a plain frame carries no GSO type");

    // A second opener is refused with a clear reason.
    let err = Tap::open(&tt.name).unwrap_err().to_string();
    assert!(
        err.contains(&format!("cannot open TAP {}", tt.name)),
        "{err}"
    );
    assert!(err.contains("another process has it open"), "{err}");
}

/// Runs the event loop until `done` holds or a second passes.
fn run_until(em: &mut EventManager<Arc<Mutex<Net>>>, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        em.run_with_timeout(50).unwrap();
    }
}

#[test]
fn net_device_moves_frames_between_guest_and_tap() {
    device_round_trip(false);
}

#[test]
fn net_device_moves_frames_with_event_idx() {
    device_round_trip(true);
}

fn device_round_trip(event_idx: bool) {
    let Some(tt) = TestTap::create() else { return };
    let mac = mac_from_name("herd-test");
    let net = Net::new(NetConfig {
        tap_name: tt.name.clone(),
        mac,
    })
    .unwrap();
    assert_eq!(net.device_type(), TYPE_NET);
    assert_eq!(net.queue_max_sizes(), [QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(net.queue_events().len(), 2);
    let offered = net.avail_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_TSO4,
    ] {
        assert_ne!(offered & (1 << bit), 0, "feature {bit}");
    }
    let mut cfg = [0u8; 8];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], mac);
    assert_eq!(cfg[6..], [1, 0], "link up");
    let metrics = net.metrics();

    let mem = guest_memory();
    let mut rxq = DriverQueue::new(&mem, 0, QUEUE_SIZE);
    let mut txq = DriverQueue::new(&mem, 0x4000, QUEUE_SIZE);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(VirtioInterrupt::new(irq.try_clone().unwrap()));
    let net = Arc::new(Mutex::new(net));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(net.clone());
    let sock = PacketSocket::bind(&tt.name);

    let mut acked = offered | VIRTIO_F_VERSION_1;
    if !event_idx {
        acked &= !VIRTIO_RING_F_EVENT_IDX;
    }
    net.lock()
        .unwrap()
        .activate(Activation {
            mem: mem.clone(),
            interrupt,
            queues: vec![rxq.queue(), txq.queue()],
            acked_features: acked,
        })
        .unwrap();
    run_until(&mut em, || net.lock().unwrap().tap_listening);

    // Guest to host.
    let out = test_frame(300, 4);
    write_guest(&mem, DATA, &out[..VNET_HDR_LEN]);
    write_guest(&mem, DATA + 0x100, &out[VNET_HDR_LEN..]);
    let body = u32::try_from(out.len() - VNET_HDR_LEN).unwrap();
    txq.add_chain(&[(DATA, 12, false), (DATA + 0x100, body, false)]);
    let kick = |q: usize| net.lock().unwrap().queue_events()[q].write(1).unwrap();
    kick(TX_QUEUE);
    run_until(&mut em, || !txq.used().is_empty());
    sock.expect(&out[VNET_HDR_LEN..]);
    assert_eq!(txq.used(), vec![(0, 0)]);
    assert_eq!(irq.read().unwrap(), 1);

    // Host to guest, with no receive buffers yet: the device holds the
    // frame and stops watching the TAP instead of spinning.
    let inbound = test_frame(500, 8);
    sock.send(&inbound[VNET_HDR_LEN..]);
    run_until(&mut em, || net.lock().unwrap().rx_waiting);
    assert!(!net.lock().unwrap().tap_listening);
    assert_eq!(em.run_with_timeout(100).unwrap(), 0, "idle while waiting");

    // Too small a buffer for this mergeable frame: still waiting, and
    // asking for a kick at the next buffer.
    rxq.add_chain(&[(DATA + 0x10_000, 50, true)]);
    kick(RX_QUEUE);
    assert_eq!(em.run_with_timeout(1000).unwrap(), 1, "the kick");
    assert!(net.lock().unwrap().rx_waiting);
    assert!(rxq.used().is_empty());
    if event_idx {
        assert_eq!(rxq.avail_event(), 1);
    }
    rxq.add_chain(&[(DATA + 0x20_000, 4096, true)]);
    kick(RX_QUEUE);
    run_until(&mut em, || !rxq.used().is_empty());
    let rest = u32::try_from(inbound.len() - 50).unwrap();
    assert_eq!(rxq.used(), vec![(0, 50), (1, rest)]);
    let mut got = read_guest(&mem, DATA + 0x10_000, 50);
    got.extend(read_guest(&mem, DATA + 0x20_000, inbound.len() - 50));
    assert_eq!(got[10..12], [2, 0], "num_buffers");
    assert_eq!(got[VNET_HDR_LEN..], inbound[VNET_HDR_LEN..]);
    assert!(net.lock().unwrap().tap_listening);

    let c = metrics.snapshot();
    assert_eq!((c.tx_frames, c.tx_bytes, c.tx_dropped), (1, 314, 0));
    assert_eq!((c.rx_frames, c.rx_bytes, c.rx_dropped), (1, 514, 0));

    // A TAP that is down refuses frames: dropped and counted.
    tt.ip(&["link", "set", "dev", &tt.name, "down"]);
    txq.add_chain(&[(DATA, 12, false), (DATA + 0x100, body, false)]);
    kick(TX_QUEUE);
    run_until(&mut em, || txq.used().len() == 2);
    assert_eq!(metrics.snapshot().tx_dropped, 1);
    tt.ip(&["link", "set", "dev", &tt.name, "up"]);

    // After a reset the device lets go of the TAP at its next frame.
    net.lock().unwrap().reset();
    sock.send(&inbound[VNET_HDR_LEN..]);
    run_until(&mut em, || !net.lock().unwrap().tap_listening);
    assert_eq!(em.run_with_timeout(100).unwrap(), 0, "idle after reset");
}
