//! The TAP backend: a non-blocking `/dev/net/tun` file attached to one TAP
//! interface. It moves whole frames, each with a `virtio_net_hdr_v1` in
//! front, and never sees a descriptor.
//!
//! Attaching to a persistent TAP that was created for herd's user
//! (`ip tuntap add NAME mode tap user $USER`) needs no privilege; without
//! such a TAP, `TUNSETIFF` creates a transient one, which needs
//! CAP_NET_ADMIN.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::raw::{c_int, c_short, c_ulong};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::VNET_HDR_LEN;

/// Offload flags for `TUNSETOFFLOAD` (linux/if_tun.h): which kinds of
/// unfinished packets the TAP may hand us for the guest.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_UFO: u32 = 0x10;

const IFNAMSIZ: usize = 16;
const IFF_TAP: c_short = 0x0002;
const IFF_NO_PI: c_short = 0x1000;
const IFF_VNET_HDR: c_short = 0x4000;

/// ioctl numbers from linux/if_tun.h, kept private (the macro makes them `pub`).
mod ioctls {
    use std::os::raw::{c_int, c_uint};
    const TUNTAP: c_uint = 0x54; // 'T'
    vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, c_int);
    vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, c_uint);
    vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, c_int);
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "invalid TAP name {0:?}: it must be 1 to 15 bytes without '/', ':', '%' or whitespace"
    )]
    InvalidName(String),
    #[error("cannot open TAP {name}: /dev/net/tun: {source} (is the tun module loaded?)")]
    OpenTun { name: String, source: io::Error },
    #[error("cannot open TAP {name}: {source}{hint}")]
    Attach {
        name: String,
        source: io::Error,
        hint: String,
    },
    #[error("TAP {name}: cannot set the virtio-net header size to {VNET_HDR_LEN}: {source}")]
    VnetHdrSize { name: String, source: io::Error },
    #[error("TAP {name}: cannot set offloads {flags:#x}: {source}")]
    Offload {
        name: String,
        flags: u32,
        source: io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF uses it: a name and the flags member of the
/// union (the union is 24 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: c_short,
    pad: [u8; 22],
}

/// One queue of a TAP interface, opened non-blocking.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    (1..IFNAMSIZ).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '%' || c == '\0' || c.is_whitespace())
}

fn attach_hint(name: &str, err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            " (create it with `ip tuntap add {name} mode tap user $USER`, \
             or run herd with CAP_NET_ADMIN)"
        ),
        Some(libc::EBUSY) => " (another process has it open)".to_string(),
        Some(libc::EINVAL) => format!(
            " ({name} exists but is not a single-queue TAP; \
             recreate it with `ip tuntap add {name} mode tap user $USER`)"
        ),
        _ => String::new(),
    }
}

impl Tap {
    /// Attaches to the TAP called `name` (creating it if it does not exist
    /// and we may), with a 12-byte virtio-net header on every frame and no
    /// offloads until [`Tap::set_offload`].
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if !valid_name(name) {
            return Err(TapError::InvalidName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;

        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            pad: [0; 22],
        };
        // `valid_name` keeps the name below IFNAMSIZ, leaving the final NUL.
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // `file` is an open /dev/net/tun descriptor and `req` is a
        // live, fully initialised 40-byte `struct ifreq` that the kernel
        // reads and writes back within its size. The result is checked.
        // SAFETY: sound for the reasons just given.
        let ret = unsafe { ioctl_with_mut_ref(&file, ioctls::TUNSETIFF(), &mut req) };
        if ret < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::Attach {
                name: name.to_string(),
                hint: attach_hint(name, &source),
                source,
            });
        }

        let tap = Tap {
            file,
            name: name.to_string(),
        };
        let size = c_int::try_from(VNET_HDR_LEN).unwrap_or(c_int::MAX);
        // the descriptor is a TAP queue and `size` is a live c_int
        // the kernel only reads. The result is checked.
        // SAFETY: sound for the reasons just given.
        let ret = unsafe { ioctl_with_ref(&tap.file, ioctls::TUNSETVNETHDRSZ(), &size) };
        if ret < 0 {
            return Err(TapError::VnetHdrSize {
                name: tap.name,
                source: io::Error::last_os_error(),
            });
        }
        tap.set_offload(0)?;
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the TAP which unfinished packets (partial checksums, GSO
    /// super-packets) the guest accepts; `flags` is a set of `TUN_F_*`.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: the descriptor is a TAP queue and TUNSETOFFLOAD takes its
        // argument by value. The result is checked.
        let ret =
            unsafe { ioctl_with_val(&self.file, ioctls::TUNSETOFFLOAD(), c_ulong::from(flags)) };
        if ret < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads one frame (header included). `WouldBlock` when none is queued.
    /// A result larger than `buf` means the frame was truncated.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (header included).
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_syscall() {
        for bad in [
            "",
            "a/b",
            "a:b",
            "tap%d",
            "sixteen-bytes-xx",
            "a b",
            ".",
            "..",
        ] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(valid_name("tap0"));
        assert!(valid_name("fifteen-bytes-x"));
    }

    #[test]
    fn permission_errors_explain_how_to_fix_them() {
        let err = TapError::Attach {
            name: "tap0".into(),
            source: io::Error::from_raw_os_error(libc::EPERM),
            hint: attach_hint("tap0", &io::Error::from_raw_os_error(libc::EPERM)),
        };
        let msg = err.to_string();
        assert!(msg.starts_with("cannot open TAP tap0: "), "{msg}");
        assert!(
            msg.contains("ip tuntap add tap0 mode tap user $USER"),
            "{msg}"
        );
        assert!(msg.contains("CAP_NET_ADMIN"), "{msg}");
    }

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
