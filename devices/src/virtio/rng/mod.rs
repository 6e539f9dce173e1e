//! virtio-rng (virtio 1.2, section 5.4): entropy for the guest at first
//! boot (TLS keys, ssh host keys) without waiting for the guest's own pool.
//! `device` is the virtio face and the queue handling, `entropy` the
//! backend (the host's getrandom), which never sees a descriptor.
//!
//! Hostile-driver policy: a chain with a device-readable descriptor or an
//! address outside guest memory marks the device broken (DEVICE_NEEDS_RESET)
//! until the driver resets it. A driver flooding the queue gets at most
//! [`BYTES_PER_CHAIN`] per request and [`BYTES_PER_RUN`] per event-loop turn,
//! so the other devices keep their share of the loop.

mod device;
mod entropy;

pub use device::{Rng, RngError};
pub use entropy::{EntropySource, HostEntropy};

pub const TYPE_RNG: u32 = 4;
pub const QUEUE_SIZE: u16 = 64;
/// Linux asks for at most 64 bytes at a time; larger buffers get this much.
pub const BYTES_PER_CHAIN: usize = 4096;
/// Bytes handed out per wake-up before yielding to the rest of the loop.
pub const BYTES_PER_RUN: usize = 64 * 1024;
