//! systemd integration: readiness notification (`Type=notify`) and the
//! `herd@.service` template unit.

use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The template unit, installed by `herd install-unit`.
pub const UNIT_TEMPLATE: &str = include_str!("herd@.service");
pub const UNIT_NAME: &str = "herd@.service";

/// The socket systemd told us to notify, if any.
fn notify_socket() -> Option<String> {
    std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// The notify socket, connected once: a jailed herd can neither see its
/// path nor read `NOTIFY_SOCKET` (its environment is cleared), so it keeps
/// the connection made before it entered the jail.
static NOTIFY: OnceLock<Option<(String, UnixDatagram)>> = OnceLock::new();

fn connected() -> Option<&'static (String, UnixDatagram)> {
    NOTIFY
        .get_or_init(|| {
            let path = notify_socket()?;
            let connect = || {
                let socket = UnixDatagram::unbound()?;
                let addr = match path.strip_prefix('@') {
                    Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
                    None => SocketAddr::from_pathname(&path)?,
                };
                socket.connect_addr(&addr)?;
                Ok::<_, std::io::Error>(socket)
            };
            match connect() {
                Ok(socket) => Some((path, socket)),
                Err(e) => {
                    log::warn!("cannot reach systemd's notify socket {path}: {e}");
                    None
                }
            }
        })
        .as_ref()
}

/// Connects to systemd's notify socket (under a `Type=notify` unit) and
/// returns the descriptor a jail must keep open.
pub fn connect() -> Option<RawFd> {
    connected().map(|(_, socket)| socket.as_raw_fd())
}

/// Whether herd runs under a `Type=notify` unit.
pub fn is_notifying() -> bool {
    connected().is_some()
}

/// Sends `state` (e.g. "READY=1") to systemd; does nothing outside a
/// `Type=notify` unit. Failures are logged: the VM runs either way.
pub fn notify(state: &str) {
    let Some((path, socket)) = connected() else {
        return;
    };
    if let Err(e) = socket.send(state.as_bytes()) {
        log::warn!("cannot notify systemd at {path}: {e}");
    }
}

/// Writes the unit into `dir` with ExecStart/ExecStop pointing at `herd`.
pub fn install_unit(dir: &Path, herd: &Path) -> std::io::Result<PathBuf> {
    let text = UNIT_TEMPLATE.replace("/usr/local/bin/herd", &herd.display().to_string());
    std::fs::create_dir_all(dir)?;
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, text)?;
    Ok(path)
}
