//! virtio targets: a small "driver program" interpreter that plays the
//! guest against a real device behind the real MMIO transport, with the
//! device's queues served by a real event-manager loop, exactly as herd
//! wires them (minus KVM: MMIO exits become direct bus calls, ioeventfds
//! become eventfd writes).
//!
//! A program is a sequence of operations (register accesses, guest-memory
//! writes, descriptors, avail-ring entries, queue notifications, host-side
//! events); see [`Op`]. `Setup` performs the whole handshake in one step so
//! the fuzzer reaches queue processing at once, while raw register writes
//! still let it explore every order of the handshake.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::net::{Net, NetConfig};
use devices::virtio::rng::{EntropySource, Rng};
use devices::virtio::vsock::Vsock;
use devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt};
use devices::BusDevice;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::input::{Input, Output};

/// Guest RAM: two adjacent regions, so buffers can straddle a boundary.
pub const MEM_SIZE: u64 = 0x1_0000;
const REGION_SPLIT: u64 = 0x8000;
/// Queue size the `Setup` operation programs.
pub const QUEUE_SIZE: u16 = 16;
/// Where buffers usually go (below it: the rings of queues 0..3).
pub const DATA: u64 = 0x4000;
/// Event-loop turns after a notification (devices yield and requeue).
const LOOP_TURNS: usize = 4;
/// Operations per program: bounds the work one input can ask for.
const MAX_OPS: usize = 256;

pub const OP_MMIO_WRITE: u8 = 0;
pub const OP_MMIO_ACCESS: u8 = 1;
pub const OP_MEM_WRITE: u8 = 2;
pub const OP_NOTIFY: u8 = 3;
pub const OP_SETUP: u8 = 4;
pub const OP_DESC: u8 = 5;
pub const OP_PUBLISH: u8 = 6;
pub const OP_HOST: u8 = 7;
const OP_COUNT: u8 = 8;

/// Descriptor flags (virtio 1.2, 2.7.5).
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// The split-ring layout `Setup` gives queue `q`.
pub fn desc_table(q: u8) -> u64 {
    0x1000 * (u64::from(q) + 1)
}

fn avail_ring(q: u8) -> u64 {
    desc_table(q) + 0x400
}

fn used_ring(q: u8) -> u64 {
    desc_table(q) + 0x800
}

fn guest_memory() -> GuestMemoryMmap {
    let split = usize::try_from(REGION_SPLIT).unwrap_or(0);
    let rest = usize::try_from(MEM_SIZE - REGION_SPLIT).unwrap_or(0);
    match GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), split),
        (GuestAddress(REGION_SPLIT), rest),
    ]) {
        Ok(mem) => mem,
        Err(e) => panic!("fuzz harness: cannot map guest memory: {e}"),
    }
}

/// A scratch directory for this process (disk image, vsock sockets).
fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("herd-fuzz-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("fuzz harness: cannot create {}: {e}", dir.display());
        }
        // libFuzzer ends the process with exit(): clean up there.
        // SAFETY: remove_scratch_dir is a plain extern "C" fn.
        unsafe { libc::atexit(remove_scratch_dir) };
        dir
    })
}

extern "C" fn remove_scratch_dir() {
    let dir = std::env::temp_dir().join(format!("herd-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// What a device target needs besides the device: a host-side action for
/// `OP_HOST` and cleanup at the end of the run.
trait Host {
    fn act(&mut self, _input: &mut Input) {}
    fn finish(&mut self) {}
}

struct NoHost;
impl Host for NoHost {}

/// One device under test, wired as herd wires it.
struct Bench<H: Host> {
    transport: MmioTransport,
    device: Arc<Mutex<dyn VirtioDevice>>,
    events: EventManager<Subscriber>,
    mem: GuestMemoryMmap,
    queues: u8,
    host: H,
    recovery: Option<&'static Recovery>,
}

impl<H: Host> Bench<H> {
    fn new<D>(device: D, mem: GuestMemoryMmap, host: H, recovery: Option<&'static Recovery>) -> Self
    where
        D: VirtioDevice + MutEventSubscriber + 'static,
    {
        let device = Arc::new(Mutex::new(device));
        let mut events = match EventManager::<Subscriber>::new() {
            Ok(events) => events,
            Err(e) => panic!("fuzz harness: event manager: {e:?}"),
        };
        events.add_subscriber(device.clone());
        let irq = match EventFd::new(EFD_NONBLOCK) {
            Ok(evt) => evt,
            Err(e) => panic!("fuzz harness: eventfd: {e}"),
        };
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device;
        let queues = u8::try_from(lock(&as_virtio).queue_max_sizes().len()).unwrap_or(u8::MAX);
        Bench {
            transport: MmioTransport::new(as_virtio.clone(), mem.clone(), interrupt),
            device: as_virtio,
            events,
            mem,
            queues,
            host,
            recovery,
        }
    }

    fn mmio_write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn run_loop(&mut self) {
        for _ in 0..LOOP_TURNS {
            match self.events.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn notify(&mut self, q: u8) {
        {
            let device = lock(&self.device);
            if let Some(evt) = device.queue_events().get(usize::from(q)) {
                let _ = evt.write(1);
            }
        }
        self.run_loop();
    }

    /// The handshake a Linux driver does, with `features` as the driver's
    /// wish list, and every queue at its fixed layout.
    fn setup(&mut self, features: u64) {
        self.mmio_write(0x70, 0);
        self.mmio_write(0x70, 1 | 2);
        for half in 0..2u32 {
            self.mmio_write(0x24, half);
            let wish = (features >> (32 * half)) & 0xffff_ffff;
            self.mmio_write(0x20, u32::try_from(wish).unwrap_or(0));
        }
        self.mmio_write(0x70, 1 | 2 | 8);
        for q in 0..self.queues {
            let low = |a: u64| u32::try_from(a & 0xffff_ffff).unwrap_or(0);
            self.mmio_write(0x30, u32::from(q));
            self.mmio_write(0x38, u32::from(QUEUE_SIZE));
            self.mmio_write(0x80, low(desc_table(q)));
            self.mmio_write(0x84, 0);
            self.mmio_write(0x90, low(avail_ring(q)));
            self.mmio_write(0x94, 0);
            self.mmio_write(0xa0, low(used_ring(q)));
            self.mmio_write(0xa4, 0);
            self.mmio_write(0x44, 1);
        }
        self.mmio_write(0x70, 1 | 2 | 8 | 4);
    }

    fn op(&mut self, input: &mut Input) {
        match input.u8() % OP_COUNT {
            OP_MMIO_WRITE => {
                let offset = u64::from(input.u16() % 0x200);
                let value = input.u32();
                self.mmio_write(offset, value);
            }
            OP_MMIO_ACCESS => {
                let offset = u64::from(input.u16() % 0x200);
                let how = input.u8();
                let len = [1usize, 2, 4, 8][usize::from(how & 3)];
                if how & 4 == 0 {
                    let mut data = [0u8; 8];
                    self.transport.read(offset, &mut data[..len]);
                } else {
                    let data = input.bytes(len);
                    self.transport.write(offset, data);
                }
            }
            OP_MEM_WRITE => {
                let addr = u64::from(input.u16());
                let len = usize::from(input.u8());
                let data = input.bytes(len);
                let _ = self.mem.write_slice(data, GuestAddress(addr));
            }
            OP_NOTIFY => {
                let q = input.u8();
                self.notify(q);
            }
            OP_SETUP => {
                let features = input.u64();
                self.setup(features);
            }
            OP_DESC => {
                let q = input.u8() % self.queues.max(1);
                let index = u64::from(input.u8() % 16);
                let mut desc = Output::default();
                desc.u64(u64::from(input.u32()))
                    .u32(input.u32())
                    .u16(input.u16())
                    .u16(input.u16());
                let _ = self
                    .mem
                    .write_slice(&desc.0, GuestAddress(desc_table(q) + 16 * index));
            }
            OP_PUBLISH => {
                let q = input.u8() % self.queues.max(1);
                let head = input.u16();
                publish(&self.mem, q, head);
            }
            _ => {
                self.host.act(input);
                self.run_loop();
            }
        }
    }

    fn run(mut self, data: &[u8]) -> Outcome {
        let mut input = Input::new(data);
        for _ in 0..MAX_OPS {
            if input.is_empty() {
                break;
            }
            self.op(&mut input);
        }
        self.run_loop();
        let outcome = Outcome {
            used: (0..self.queues)
                .map(|q| {
                    self.mem
                        .read_obj(GuestAddress(used_ring(q) + 2))
                        .unwrap_or(0)
                })
                .collect(),
            needs_reset: self.transport.needs_reset(),
        };
        // A driver reset must always be accepted, whatever came before,
        // and must give the driver a working device again.
        self.mmio_write(0x70, 0);
        if let Some(check) = self.recovery.take() {
            self.check_recovery(check);
        }
        self.host.finish();
        outcome
    }

    /// After the reset: fresh rings, the handshake, one good chain; the
    /// device must serve it.
    fn check_recovery(&mut self, check: &Recovery) {
        let rings = vec![0u8; usize::try_from(DATA - desc_table(0)).unwrap_or(0)];
        let _ = self.mem.write_slice(&rings, GuestAddress(desc_table(0)));
        self.setup(u64::MAX);
        for (addr, bytes) in check.memory {
            let _ = self.mem.write_slice(bytes, GuestAddress(*addr));
        }
        for (i, &(addr, len, flags, next)) in (0u64..).zip(check.chain) {
            let mut desc = Output::default();
            desc.u64(addr).u32(len).u16(flags).u16(next);
            let at = desc_table(check.queue) + 16 * i;
            let _ = self.mem.write_slice(&desc.0, GuestAddress(at));
        }
        publish(&self.mem, check.queue, 0);
        self.notify(check.queue);
        let used: u16 = self
            .mem
            .read_obj(GuestAddress(used_ring(check.queue) + 2))
            .unwrap_or(0);
        assert!(
            used == 1 && !self.transport.needs_reset(),
            "the device did not recover after a driver reset: used idx {used}, needs reset {}",
            self.transport.needs_reset()
        );
        self.mmio_write(0x70, 0);
    }
}

/// A known-good request a device must serve after any reset.
pub struct Recovery {
    queue: u8,
    /// (address, bytes) written to guest memory first.
    memory: &'static [(u64, &'static [u8])],
    /// Descriptors 0.. of the chain: (address, length, flags, next).
    chain: &'static [(u64, u32, u16, u16)],
}

/// virtio-blk: read sector 0 (header, 512-byte buffer, status).
const BLK_READ: Recovery = Recovery {
    queue: 0,
    memory: &[(DATA, &[0; 16])],
    chain: &[
        (DATA, 16, F_NEXT, 1),
        (DATA + 0x200, 512, F_WRITE | F_NEXT, 2),
        (DATA + 0x1000, 1, F_WRITE, 0),
    ],
};

/// virtio-rng: one 64-byte buffer.
const RNG_READ: Recovery = Recovery {
    queue: 0,
    memory: &[],
    chain: &[(DATA, 64, F_WRITE, 0)],
};

/// virtio-net: a minimal frame on TX (virtio header + Ethernet header).
const NET_SEND: Recovery = Recovery {
    queue: 1,
    memory: &[(DATA, &[0; 26])],
    chain: &[(DATA, 12, F_NEXT, 1), (DATA + 12, 14, 0, 0)],
};

/// What a program achieved, for checking that the seeds reach the device.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Each queue's used index at its fixed layout: chains the device served.
    pub used: Vec<u16>,
    /// The device gave up (DEVICE_NEEDS_RESET) or the driver failed it.
    pub needs_reset: bool,
}

/// Appends `head` to queue `q`'s avail ring, as a driver does.
pub fn publish(mem: &GuestMemoryMmap, q: u8, head: u16) {
    let idx_addr = GuestAddress(avail_ring(q) + 2);
    let idx: u16 = mem.read_obj(idx_addr).unwrap_or(0);
    let slot = avail_ring(q) + 4 + 2 * u64::from(idx % QUEUE_SIZE);
    let _ = mem.write_obj(head, GuestAddress(slot));
    let _ = mem.write_obj(idx.wrapping_add(1), idx_addr);
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// virtio-blk on a 64 KiB image file; the first byte picks read-only.
pub fn blk(data: &[u8]) {
    let _ = blk_outcome(data);
}

pub fn blk_outcome(data: &[u8]) -> Outcome {
    // One image per thread: a writable disk is locked by the device that has it.
    thread_local! {
        static DISK: PathBuf = {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = scratch_dir().join(format!("disk-{n}.img"));
            if let Err(e) = std::fs::write(&path, vec![0u8; 64 * 1024]) {
                panic!("fuzz harness: cannot write {}: {e}", path.display());
            }
            path
        };
    }
    let path = DISK.with(PathBuf::clone);
    let mut input = Input::new(data);
    let read_only = input.u8() & 1 == 1;
    let block = match Block::new(BlockConfig {
        path,
        read_only,
        serial: "fuzz".into(),
    }) {
        Ok(block) => block,
        Err(e) => panic!("fuzz harness: block device: {e}"),
    };
    Bench::new(block, guest_memory(), NoHost, Some(&BLK_READ)).run(input.rest())
}

/// Entropy the fuzzer can reproduce.
struct Zeroes;

impl EntropySource for Zeroes {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
}

pub fn rng(data: &[u8]) {
    let _ = rng_outcome(data);
}

pub fn rng_outcome(data: &[u8]) -> Outcome {
    let rng = match Rng::new(Box::new(Zeroes)) {
        Ok(rng) => rng,
        Err(e) => panic!("fuzz harness: rng device: {e}"),
    };
    Bench::new(rng, guest_memory(), NoHost, Some(&RNG_READ)).run(data)
}

/// The host side of vsock: clients connecting to the device's socket and
/// sending the handshake line (or anything), and a listener on port
/// [`VSOCK_HOST_PORT`] for guest-initiated connections.
struct VsockHost {
    path: PathBuf,
    clients: Vec<UnixStream>,
    listener: &'static UnixListener,
}

pub const VSOCK_HOST_PORT: u32 = 1024;

impl Host for VsockHost {
    fn act(&mut self, input: &mut Input) {
        let kind = input.u8();
        let len = usize::from(input.u8());
        let payload = input.bytes(len);
        use std::io::Write;
        if kind & 1 == 0 || self.clients.is_empty() {
            if self.clients.len() >= 4 {
                return;
            }
            let Ok(stream) = UnixStream::connect(&self.path) else {
                return;
            };
            let _ = stream.set_nonblocking(true);
            self.clients.push(stream);
        }
        if let Some(stream) = self.clients.last_mut() {
            let _ = stream.write_all(payload);
        }
    }

    fn finish(&mut self) {
        self.clients.clear();
        while let Ok((stream, _)) = self.listener.accept() {
            drop(stream);
        }
    }
}

pub fn vsock(data: &[u8]) {
    let _ = vsock_outcome(data);
}

pub fn vsock_outcome(data: &[u8]) -> Outcome {
    static LISTENER: OnceLock<UnixListener> = OnceLock::new();
    let path = scratch_dir().join("vsock.sock");
    let listener = LISTENER.get_or_init(|| {
        let peer = scratch_dir().join(format!("vsock.sock_{VSOCK_HOST_PORT}"));
        let _ = std::fs::remove_file(&peer);
        match UnixListener::bind(&peer) {
            Ok(l) => {
                let _ = l.set_nonblocking(true);
                l
            }
            Err(e) => panic!("fuzz harness: cannot listen on {}: {e}", peer.display()),
        }
    });
    let vsock = match Vsock::new(&path, devices::virtio::vsock::DEFAULT_GUEST_CID) {
        Ok(v) => v,
        Err(e) => panic!("fuzz harness: vsock device: {e}"),
    };
    let host = VsockHost {
        path,
        clients: Vec::new(),
        listener,
    };
    Bench::new(vsock, guest_memory(), host, None).run(data)
}

/// virtio-net on a real TAP, created inside a network namespace of the
/// fuzzing thread's own so nothing reaches the host's network.
pub fn net(data: &[u8]) {
    let _ = net_outcome(data);
}

/// None when this thread cannot have a network namespace of its own.
pub fn net_outcome(data: &[u8]) -> Option<Outcome> {
    thread_local! {
        static NETNS: bool = enter_private_netns();
    }
    if !NETNS.with(|ok| *ok) {
        return None;
    }
    let net = match Net::new(NetConfig {
        tap_name: TAP_NAME.into(),
        mac: [2, 0, 0, 0, 0, 1],
    }) {
        Ok(net) => net,
        Err(e) => panic!("fuzz harness: net device: {e}"),
    };
    Some(Bench::new(net, guest_memory(), NoHost, Some(&NET_SEND)).run(data))
}

const TAP_NAME: &str = "herdfuzz0";

/// Moves this thread into a new network namespace (needs CAP_NET_ADMIN)
/// and makes a persistent TAP there: attaching to an existing TAP is ~100
/// times cheaper than creating one per input. It goes with the namespace.
fn enter_private_netns() -> bool {
    // SAFETY: unshare takes no pointers; it only changes this thread's
    // namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
        return make_persistent_tap();
    }
    eprintln!(
        "SKIP virtio_net fuzzing: cannot create a network namespace for the TAP ({}); run as root",
        std::io::Error::last_os_error()
    );
    false
}

fn make_persistent_tap() -> bool {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    const IFF_VNET_HDR: libc::c_short = 0x4000;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let Ok(tun) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    else {
        eprintln!("SKIP virtio_net fuzzing: cannot open /dev/net/tun");
        return false;
    };
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        pad: [0; 22],
    };
    req.name[..TAP_NAME.len()].copy_from_slice(TAP_NAME.as_bytes());
    use std::os::fd::AsRawFd;
    // SAFETY: tun is an open /dev/net/tun and req a live ifreq of the
    // size the kernel reads and writes; results are checked.
    let ok = unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) == 0
            && libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) == 0
    };
    if !ok {
        eprintln!(
            "SKIP virtio_net fuzzing: cannot create a TAP: {}",
            std::io::Error::last_os_error()
        );
    }
    ok
}
