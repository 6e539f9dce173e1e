//! systemd integration: readiness notification (`Type=notify`) and the
//! `herd@.service` template unit.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

/// The template unit, installed by `herd install-unit`.
pub const UNIT_TEMPLATE: &str = include_str!("herd@.service");
pub const UNIT_NAME: &str = "herd@.service";

/// The socket systemd told us to notify, if any.
pub fn notify_socket() -> Option<String> {
    std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Sends `state` (e.g. "READY=1") to systemd; does nothing outside a
/// `Type=notify` unit. Failures are logged: the VM runs either way.
pub fn notify(state: &str) {
    let Some(path) = notify_socket() else { return };
    let result = (|| {
        let socket = UnixDatagram::unbound()?;
        let addr = match path.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
    })();
    if let Err(e) = result {
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
