//! The seed corpus, as code: each seed is a well-formed input that reaches
//! deep into its target (a finished virtio handshake and a valid request, a
//! loadable kernel, a routed API call), so fuzzing starts from there.
//! `cargo run -p herd-fuzz --example make_seeds` writes them to `corpus/`.

use crate::input::Output;
use crate::virtio::{
    DATA, F_NEXT, F_WRITE, OP_DESC, OP_HOST, OP_MEM_WRITE, OP_NOTIFY, OP_PUBLISH, OP_SETUP,
    VSOCK_HOST_PORT,
};

/// (target, seed name, bytes)
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// A virtio driver program being written.
#[derive(Default)]
struct Program(Output);

impl Program {
    fn setup(mut self) -> Self {
        self.0.u8(OP_SETUP).u64(u64::MAX);
        self
    }

    fn mem(mut self, addr: u64, bytes: &[u8]) -> Self {
        for (i, chunk) in bytes.chunks(255).enumerate() {
            let at = addr + 255 * u64::try_from(i).unwrap_or(0);
            self.0
                .u8(OP_MEM_WRITE)
                .u16(u16::try_from(at).unwrap_or(0))
                .u8(u8::try_from(chunk.len()).unwrap_or(0))
                .bytes(chunk);
        }
        self
    }

    fn desc(mut self, q: u8, index: u8, addr: u64, len: u32, flags: u16, next: u16) -> Self {
        self.0
            .u8(OP_DESC)
            .u8(q)
            .u8(index)
            .u32(u32::try_from(addr).unwrap_or(0))
            .u32(len)
            .u16(flags)
            .u16(next);
        self
    }

    fn publish(mut self, q: u8, head: u16) -> Self {
        self.0.u8(OP_PUBLISH).u8(q).u16(head);
        self
    }

    fn notify(mut self, q: u8) -> Self {
        self.0.u8(OP_NOTIFY).u8(q);
        self
    }

    fn host(mut self, kind: u8, payload: &[u8]) -> Self {
        self.0
            .u8(OP_HOST)
            .u8(kind)
            .u8(u8::try_from(payload.len()).unwrap_or(0))
            .bytes(payload);
        self
    }

    fn done(self) -> Vec<u8> {
        self.0 .0
    }
}

/// A virtio-blk request: header, one data descriptor, status byte.
fn blk_request(kind: u32, sector: u64, data_flags: u16, data_len: u32) -> Vec<u8> {
    let mut header = Output::default();
    header.u32(kind).u32(0).u64(sector);
    let program = Program::default()
        .setup()
        .mem(DATA, &header.0)
        .desc(0, 0, DATA, 16, F_NEXT, 1)
        .desc(0, 1, DATA + 0x200, data_len, data_flags | F_NEXT, 2)
        .desc(0, 2, DATA + 0x1000, 1, F_WRITE, 0)
        .publish(0, 0)
        .notify(0)
        .done();
    // The first byte picks read-write.
    [vec![0u8], program].concat()
}

fn virtio_seeds() -> Vec<Seed> {
    let mut seeds = vec![
        ("virtio_blk", "read", blk_request(0, 1, F_WRITE, 1024)),
        ("virtio_blk", "write", blk_request(1, 2, 0, 512)),
        ("virtio_blk", "flush", {
            let mut header = Output::default();
            header.u32(4).u32(0).u64(0);
            let p = Program::default()
                .setup()
                .mem(DATA, &header.0)
                .desc(0, 0, DATA, 16, F_NEXT, 1)
                .desc(0, 1, DATA + 0x1000, 1, F_WRITE, 0)
                .publish(0, 0)
                .notify(0)
                .done();
            [vec![0u8], p].concat()
        }),
        ("virtio_blk", "get_id", blk_request(8, 0, F_WRITE, 20)),
        (
            "virtio_rng",
            "two_buffers",
            Program::default()
                .setup()
                .desc(0, 0, DATA, 64, F_WRITE | F_NEXT, 1)
                .desc(0, 1, DATA + 0x100, 32, F_WRITE, 0)
                .publish(0, 0)
                .notify(0)
                .done(),
        ),
    ];

    // virtio-net: a receive buffer, then an ARP request on TX.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 0, 0, 1]);
    let frame_len = u32::try_from(frame.len()).unwrap_or(0);
    seeds.push((
        "virtio_net",
        "rx_buffer_and_tx_frame",
        Program::default()
            .setup()
            .desc(0, 0, DATA, 1526, F_WRITE, 0)
            .publish(0, 0)
            .notify(0)
            .mem(DATA + 0x1000, &frame)
            .desc(1, 0, DATA + 0x1000, 12, F_NEXT, 1)
            .desc(1, 1, DATA + 0x100c, frame_len - 12, 0, 0)
            .publish(1, 0)
            .notify(1)
            .done(),
    ));

    // vsock: RX buffers, a guest connection request to the host's
    // listener, and a host client asking for guest port 52.
    let mut hdr = Output::default();
    hdr.u64(3)
        .u64(2)
        .u32(49152)
        .u32(VSOCK_HOST_PORT)
        .u32(0)
        .u16(1)
        .u16(1)
        .u32(0)
        .u32(256 * 1024)
        .u32(0);
    let mut program = Program::default().setup();
    for i in 0..4u8 {
        program = program.desc(0, i, DATA + 0x100 * u64::from(i), 0x100, F_WRITE, 0);
        program = program.publish(0, u16::from(i));
    }
    seeds.push((
        "virtio_vsock",
        "connect_both_ways",
        program
            .notify(0)
            .mem(DATA + 0x2000, &hdr.0)
            .desc(1, 0, DATA + 0x2000, 44, 0, 0)
            .publish(1, 0)
            .notify(1)
            .host(0, b"CONNECT 52\n")
            .notify(0)
            .done(),
    ));
    seeds
}

fn port_seeds() -> Vec<Seed> {
    use crate::ports::{OP_CONSOLE_INPUT, OP_CTRL_ALT_DEL, OP_READ, OP_WRITE};
    let write = |o: &mut Output, sel: u8, offset: u8, bytes: &[u8]| {
        o.u8(OP_WRITE)
            .u8(sel)
            .u8(offset)
            .u8(u8::try_from(bytes.len()).unwrap_or(0))
            .bytes(bytes);
    };
    let read = |o: &mut Output, sel: u8, offset: u8, len: u8| {
        o.u8(OP_READ).u8(sel).u8(offset).u8(len);
    };
    // 8250: enable interrupts, 8N1, a line of output, input, read it back.
    let mut serial = Output::default();
    write(&mut serial, 0, 3, &[0x80]);
    write(&mut serial, 0, 0, &[0x01]);
    write(&mut serial, 0, 3, &[0x03]);
    write(&mut serial, 0, 1, &[0x0f]);
    for b in b"hello\n" {
        write(&mut serial, 0, 0, &[*b]);
    }
    serial.u8(OP_CONSOLE_INPUT).u8(3).bytes(b"go\n");
    for _ in 0..4 {
        read(&mut serial, 0, 5, 1);
        read(&mut serial, 0, 0, 1);
    }
    read(&mut serial, 0, 2, 1);
    // i8042: what Linux does to enable the keyboard, Ctrl-Alt-Del, reset.
    let mut kbd = Output::default();
    write(&mut kbd, 1, 4, &[0x20]);
    read(&mut kbd, 1, 4, 1);
    read(&mut kbd, 1, 0, 1);
    write(&mut kbd, 1, 4, &[0x60]);
    write(&mut kbd, 1, 0, &[0x47]);
    write(&mut kbd, 1, 0, &[0xf4]);
    kbd.u8(OP_CTRL_ALT_DEL);
    for _ in 0..8 {
        read(&mut kbd, 1, 0, 1);
    }
    write(&mut kbd, 1, 4, &[0xfe]);
    // CMOS time, boot timer, ACPI sleep then reset, exit device.
    let mut platform = Output::default();
    for reg in [0x00u8, 0x02, 0x04, 0x0a, 0x0b, 0x32] {
        write(&mut platform, 4, 0, &[reg]);
        read(&mut platform, 4, 1, 1);
    }
    write(&mut platform, 2, 0, &[123]);
    write(&mut platform, 2, 0, &[124]);
    write(&mut platform, 5, 0, &[5 << 2 | 1 << 5]);
    write(&mut platform, 5, 1, &[1]);
    write(&mut platform, 3, 0, &[7]);
    vec![
        ("port_io", "serial", serial.0),
        ("port_io", "i8042", kbd.0),
        ("port_io", "cmos_acpi_timer_exit", platform.0),
    ]
}

/// A minimal 64-bit ELF vmlinux: one PT_LOAD at 1 MiB.
fn elf64() -> Vec<u8> {
    let mut o = Output::default();
    o.bytes(b"\x7fELF").bytes(&[2, 1, 1, 0]).bytes(&[0; 8]);
    o.u16(2).u16(62).u32(1).u64(0x10_0000).u64(64).u64(0);
    o.u32(0).u16(64).u16(56).u16(1).u16(0).u16(0).u16(0);
    // PT_LOAD, R+X, offset 0x78, vaddr = paddr = 1 MiB, 16 bytes.
    o.u32(1).u32(5).u64(0x78).u64(0x10_0000).u64(0x10_0000);
    o.u64(16).u64(0x1000).u64(0x1000);
    o.bytes(&[0xf4; 16]);
    o.0
}

/// A minimal 32-bit ELF with the Xen PVH entry note.
fn elf32_pvh() -> Vec<u8> {
    let mut o = Output::default();
    o.bytes(b"\x7fELF").bytes(&[1, 1, 1, 0]).bytes(&[0; 8]);
    o.u16(2).u16(3).u32(1).u32(0x10_0000).u32(52).u32(0);
    o.u32(0).u16(52).u16(32).u16(2).u16(0).u16(0).u16(0);
    // PT_NOTE at 116 (20 bytes), PT_LOAD at 136 (16 bytes at 1 MiB).
    o.u32(4)
        .u32(116)
        .u32(0)
        .u32(0)
        .u32(20)
        .u32(20)
        .u32(4)
        .u32(4);
    o.u32(1)
        .u32(136)
        .u32(0x10_0000)
        .u32(0x10_0000)
        .u32(16)
        .u32(0x1000);
    o.u32(5).u32(0x1000);
    o.u32(4).u32(4).u32(18).bytes(b"Xen\0").u32(0x10_0000);
    o.bytes(&[0xf4; 16]);
    o.0
}

/// A bzImage: setup sectors with the "HdrS" header, then the kernel.
fn bzimage() -> Vec<u8> {
    let mut image = vec![0u8; 5 * 512 + 64];
    image[0x1f1] = 4;
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1;
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    image[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes());
    image[0x234] = 1;
    image
}

fn boot_seeds() -> Vec<Seed> {
    let with_initrd = |kernel: Vec<u8>| {
        let mut o = Output::default();
        o.u16(8).bytes(b"initrd!\n").bytes(&kernel);
        o.0
    };
    vec![
        ("boot_loader", "elf64", with_initrd(elf64())),
        ("boot_loader", "elf32_pvh", with_initrd(elf32_pvh())),
        ("boot_loader", "bzimage", with_initrd(bzimage())),
    ]
}

fn api_seeds() -> Vec<Seed> {
    let req = |chunk: u8, text: &str| [vec![chunk], text.as_bytes().to_vec()].concat();
    vec![
        (
            "api_http",
            "get_vm",
            req(255, "GET /v1/vm HTTP/1.1\r\nHost: herd\r\n\r\n"),
        ),
        (
            "api_http",
            "stop_with_timeout",
            req(
                1,
                "POST /v1/vm/stop HTTP/1.1\r\nHost: herd\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"timeout_s\": 3}\n",
            ),
        ),
        (
            "api_http",
            "metrics_query",
            req(4, "GET /v1/metrics?x=1 HTTP/1.1\r\n\r\n"),
        ),
    ]
}

fn image_seeds() -> Vec<Seed> {
    vec![
        (
            "image_definition",
            "base",
            include_bytes!("../../../guest-images/images/base.toml").to_vec(),
        ),
        (
            "image_definition",
            "redis",
            include_bytes!("../../../guest-images/images/redis.toml").to_vec(),
        ),
        (
            "image_definition",
            "postgresql",
            include_bytes!("../../../guest-images/images/postgresql.toml").to_vec(),
        ),
    ]
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    [
        virtio_seeds(),
        port_seeds(),
        boot_seeds(),
        api_seeds(),
        image_seeds(),
    ]
    .concat()
}
