//! Host side of a guest NIC: bring its TAP up and put it on a bridge, so
//! `herd run --net tap=web1,bridge=appnet` is all a user needs after
//! `herd net create appnet`. Done with two ioctls rather than by running
//! `ip`, which would cost milliseconds on every boot.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFNAMSIZ: usize = 16;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("cannot open a control socket: {0}")]
    Socket(std::io::Error),
    #[error("interface name {0:?} is too long")]
    Name(String),
    #[error(
        "cannot bring TAP {tap} up: {source}; bring it up beforehand (`ip link set {tap} up`) \
         or run herd with CAP_NET_ADMIN"
    )]
    Up { tap: String, source: std::io::Error },
    #[error(
        "cannot add TAP {tap} to bridge {bridge}: {source}; create the bridge with \
         `herd net create {bridge} --subnet CIDR` and run herd with CAP_NET_ADMIN"
    )]
    Bridge {
        tap: String,
        bridge: String,
        source: std::io::Error,
    },
}

/// `struct ifreq`: a name and a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<Self, HostNetError> {
        if name.len() >= IFNAMSIZ {
            return Err(HostNetError::Name(name.to_owned()));
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }
}

fn control_socket() -> Result<OwnedFd, HostNetError> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(HostNetError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(sock: &OwnedFd, request: libc::c_ulong, req: &mut IfReq) -> std::io::Result<()> {
    // `req` is a live, initialised `struct ifreq` the kernel reads
    // and writes within its size; the result is checked.
    // SAFETY: sound for the reasons just given.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), request, std::ptr::from_mut(req)) };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Brings `tap` up if it is down, then adds it to `bridge` if given.
pub fn connect_tap(tap: &str, bridge: Option<&str>) -> Result<(), HostNetError> {
    let sock = control_socket()?;
    let mut req = IfReq::new(tap)?;
    let up_err = |source| HostNetError::Up {
        tap: tap.to_owned(),
        source,
    };
    ioctl(&sock, SIOCGIFFLAGS, &mut req).map_err(up_err)?;
    let flags = i16::from_ne_bytes([req.data[0], req.data[1]]);
    let up = i16::try_from(libc::IFF_UP).unwrap_or(1);
    if flags & up == 0 {
        req.data[..2].copy_from_slice(&(flags | up).to_ne_bytes());
        ioctl(&sock, SIOCSIFFLAGS, &mut req).map_err(up_err)?;
    }
    if let Some(bridge) = bridge {
        let bridge_err = |source| HostNetError::Bridge {
            tap: tap.to_owned(),
            bridge: bridge.to_owned(),
            source,
        };
        let name = std::ffi::CString::new(tap).map_err(|_| HostNetError::Name(tap.to_owned()))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(bridge_err(std::io::Error::last_os_error()));
        }
        let mut req = IfReq::new(bridge)?;
        let index = i32::try_from(index)
            .map_err(|_| bridge_err(std::io::ErrorKind::InvalidInput.into()))?;
        req.data[..4].copy_from_slice(&index.to_ne_bytes());
        match ioctl(&sock, SIOCBRADDIF, &mut req) {
            // Already on this bridge: a restart with the same TAP.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            other => other.map_err(bridge_err)?,
        }
    }
    Ok(())
}
