//! virtio-vsock (virtio 1.2, section 5.10) with the host side as Unix
//! sockets, Firecracker's "hybrid vsock" convention:
//!
//! - the host connects to the device's socket `PATH` and writes
//!   `CONNECT <port>\n`; once the guest accepts, herd answers
//!   `OK <host port>\n` and the stream carries the connection. If nobody
//!   listens on that guest port, herd closes the stream (EOF, no `OK`).
//! - a guest connecting to CID 2 (the host), port P, reaches whoever
//!   listens on the Unix socket `PATH_P`; if nobody does, the guest's
//!   connect fails with ECONNRESET.
//!
//! Split like the other devices: `packet` turns descriptor chains into
//! owned packets and back with rust-vmm's virtio-vsock crate, `muxer` is
//! the Unix-socket backend (protocol, credit, connections) and never sees a
//! descriptor, `device` is the virtio face and the event-loop subscriber.
//!
//! Hostile-driver policy: a TX chain the packet format cannot describe
//! (short header, write-only buffer, address outside guest memory) marks
//! the device broken (DEVICE_NEEDS_RESET). A well-framed packet with
//! nonsense in it (unknown op or type, wrong CID, data for a connection
//! that does not exist, more data than the credit it was given) is
//! answered with a reset of that connection; herd keeps running.

mod connection;
mod device;
mod muxer;
mod packet;

pub use device::{Vsock, VsockError};
pub use muxer::{Muxer, MuxerError};
pub use packet::{RxPacket, TxPacket};

pub const TYPE_VSOCK: u32 = 19;
pub const QUEUE_SIZE: u16 = 256;
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
/// The host's address; the guest's comes from the device config.
pub const HOST_CID: u64 = 2;
/// The CID every herd guest gets: each VM has its own device, so one
/// number does for all of them.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// Packet types and operations (virtio 1.2, 5.10.6).
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// Largest payload of one packet either way (Linux's own limit).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// What herd tells the guest it may have in flight per connection.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
