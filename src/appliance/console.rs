//! `herd console NAME`: attach the terminal to a running appliance's
//! serial console. Ctrl-] detaches; the VM keeps running.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::runtime_dir::{self, Liveness, CONSOLE_SOCKET};
use crate::terminal::RawTerminal;

/// Ctrl-]: the same key leaves `herd run --console stdio`.
use vmm::device_manager::serial_input::ESCAPE_KEY;

/// How often the input loop checks whether the appliance went away.
const POLL_MS: i32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    RuntimeDir(#[from] runtime_dir::RuntimeDirError),
    #[error("appliance {0} is not running")]
    NotRunning(String),
    #[error("cannot attach to {path}: {source}")]
    Connect {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Copies the terminal to the console and back until Ctrl-] (true) or
/// until the appliance goes away (false).
pub fn attach(name: &str) -> Result<bool, ConsoleError> {
    let entry = runtime_dir::find(name)?;
    if entry.liveness != Liveness::Running {
        return Err(ConsoleError::NotRunning(name.to_owned()));
    }
    let path = entry.file(CONSOLE_SOCKET);
    let stream = UnixStream::connect(&path).map_err(|source| ConsoleError::Connect {
        path: path.clone(),
        source,
    })?;
    eprintln!("herd: attached to {name}'s console; press Ctrl-] to detach\r");
    let raw = RawTerminal::enable();
    let mut from_vm = stream.try_clone().map_err(|source| ConsoleError::Connect {
        path: path.clone(),
        source,
    })?;
    // Guest output on its own thread; it ends when herd closes the socket.
    let printer = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut to_vm = stream;
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    let detached = loop {
        if printer.is_finished() {
            break false;
        }
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd that lives for the call.
        if unsafe { libc::poll(&mut pfd, 1, POLL_MS) } == 0 {
            continue;
        }
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(n) => n,
        };
        let input = &buf[..n];
        if let Some(pos) = input.iter().position(|&b| b == ESCAPE_KEY) {
            let _ = to_vm.write_all(&input[..pos]);
            break true;
        }
        if to_vm.write_all(input).is_err() {
            break false;
        }
    };
    let _ = to_vm.shutdown(std::net::Shutdown::Both);
    drop(raw);
    // The printer sees EOF at once after the shutdown.
    let _ = to_vm.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = printer.join();
    if detached {
        eprintln!("\r\nherd: detached from {name}; it keeps running");
    } else {
        eprintln!("\r\nherd: {name} stopped");
    }
    Ok(detached)
}
