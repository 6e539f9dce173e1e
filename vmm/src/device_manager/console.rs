//! Where a named appliance's serial console goes besides the terminal: a
//! size-capped, rotated log file, and an attachable console socket
//! (`herd console NAME`). Nothing here can block a vCPU: output to an
//! attached client is non-blocking and dropped when the client is slow.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use devices::legacy::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::serial_input::{PendingInput, INPUT_CHUNK};

/// The console log rotates when it would pass this size; one previous
/// file (`.1`) is kept, so a log takes at most twice this on disk.
pub const CONSOLE_LOG_MAX_BYTES: u64 = 1 << 20;
/// Overrides CONSOLE_LOG_MAX_BYTES (bytes, at least 4096), like docker's
/// `max-size` log option.
pub const CONSOLE_LOG_MAX_ENV: &str = "HERD_CONSOLE_LOG_MAX_BYTES";

/// The console log's size cap: CONSOLE_LOG_MAX_ENV if set (at least 4096),
/// else CONSOLE_LOG_MAX_BYTES; an error naming the variable if it is not a
/// byte count. The CLI reads it into `ConsoleConfig::Log`, which carries it
/// into a jail (whose environment is cleared).
pub fn console_log_max() -> Result<u64, String> {
    match std::env::var(CONSOLE_LOG_MAX_ENV) {
        Err(_) => Ok(CONSOLE_LOG_MAX_BYTES),
        Ok(v) => v.trim().parse::<u64>().map(|n| n.max(4096)).map_err(|_| {
            format!("{CONSOLE_LOG_MAX_ENV}={v} is not a number of bytes (e.g. 1048576); unset it for 1 MiB")
        }),
    }
}

/// Appends to `path`, moving its contents to `path.1` when it is full.
/// Both files are opened up front and rotation copies between them by
/// descriptor: the threads that write the console (vCPUs, the event loop)
/// run under seccomp filters that allow neither open(2) nor rename(2).
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    previous: File,
    written: u64,
    max: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let previous = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::rotated_path(path))?;
        let written = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_owned(),
            file,
            previous,
            written,
            max,
        })
    }

    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".1");
        PathBuf::from(p)
    }

    fn rotate(&mut self) {
        use std::os::unix::fs::FileExt;
        let copy = || -> std::io::Result<()> {
            self.previous.set_len(0)?;
            let mut chunk = vec![0u8; 64 * 1024];
            let mut offset = 0;
            loop {
                let n = self.file.read_at(&mut chunk, offset)?;
                if n == 0 {
                    break;
                }
                self.previous.write_all_at(&chunk[..n], offset)?;
                offset += n as u64;
            }
            self.file.set_len(0)
        };
        if let Err(e) = copy() {
            log::warn!("cannot rotate console log {}: {e}", self.path.display());
        }
        self.written = 0;
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.max && self.written > 0 {
            self.rotate();
        }
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The attached console client, if any, shared by the serial writer (on a
/// vCPU thread) and the event loop.
#[derive(Default)]
pub struct ConsoleHub {
    attached: AtomicBool,
    client: Mutex<Option<UnixStream>>,
}

impl ConsoleHub {
    fn attach(&self, client: UnixStream) {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut old) = slot.replace(client) {
            let _ = old.write_all(b"\r\nherd: another console attached; detaching this one\r\n");
        }
        self.attached.store(true, Ordering::Release);
    }

    fn detach(&self) {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        *slot = None;
        self.attached.store(false, Ordering::Release);
    }

    /// Copies guest output to the client; a client that cannot keep up
    /// misses output rather than slowing the guest.
    pub fn send(&self, buf: &[u8]) {
        if !self.attached.load(Ordering::Acquire) {
            return;
        }
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = slot.as_mut() {
            match client.write(buf) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    *slot = None;
                    self.attached.store(false, Ordering::Release);
                }
            }
        }
    }
}

/// The serial console's output: the configured sink, then any attached
/// console client.
pub struct ConsoleTee {
    pub sink: Box<dyn Write + Send>,
    pub hub: Arc<ConsoleHub>,
}

impl Write for ConsoleTee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hub.send(buf);
        self.sink.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// Accepts console clients on a Unix socket and feeds what they type to
/// the guest's serial port. One client at a time; a new one replaces it.
pub struct ConsoleSocket {
    listener: UnixListener,
    client: Option<UnixStream>,
    hub: Arc<ConsoleHub>,
    pending: PendingInput,
}

impl ConsoleSocket {
    /// Binds `path` with mode 0600, replacing a stale socket.
    pub fn bind(
        path: &Path,
        hub: Arc<ConsoleHub>,
        serial: Arc<Mutex<SerialDevice>>,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket {
            listener,
            client: None,
            hub,
            pending: PendingInput::new(serial, false)?,
        })
    }

    fn drop_client(&mut self, ops: &mut EventOps) {
        self.pending.clear(ops);
        if let Some(client) = self.client.take() {
            let _ = ops.remove(Events::new(&client, EventSet::IN));
        }
        self.hub.detach();
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let Ok((stream, _)) = self.listener.accept() else {
            return;
        };
        let reader = match (stream.set_nonblocking(true), stream.try_clone()) {
            (Ok(()), Ok(reader)) => reader,
            _ => return,
        };
        self.pending.clear(ops);
        if let Some(old) = self.client.take() {
            let _ = ops.remove(Events::new(&old, EventSet::IN));
        }
        if let Err(e) = ops.add(Events::new(&reader, EventSet::IN)) {
            log::warn!("console: cannot watch the new client: {e:?}");
            return;
        }
        log::info!("console client attached");
        self.hub.attach(stream);
        self.client = Some(reader);
    }

    fn read_client(&mut self, ops: &mut EventOps) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        let mut buf = [0u8; INPUT_CHUNK];
        match client.read(&mut buf) {
            Ok(0) => {
                log::info!("console client detached");
                self.drop_client(ops);
            }
            Ok(n) => {
                let source = Events::new(&*client, EventSet::IN);
                self.pending.offer(&buf[..n], source, ops);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.drop_client(ops),
        }
    }
}

impl MutEventSubscriber for ConsoleSocket {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("cannot watch the console socket: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd: RawFd = events.fd();
        if self.pending.is_drained_event(&events) {
            if let Some(client) = &self.client {
                self.pending.retry(Events::new(client, EventSet::IN), ops);
            }
        } else if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if self.client.as_ref().map(AsRawFd::as_raw_fd) == Some(fd) {
            if events.event_set().contains(EventSet::IN) {
                self.read_client(ops);
            } else {
                self.drop_client(ops);
            }
        } else {
            // A replaced client's last event.
            let _ = ops.remove(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_its_cap() {
        let dir = std::env::temp_dir().join(format!("herd-console-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut log = RotatingLog::open(&path, 100).unwrap();
        log.write_all(&[b'a'; 60]).unwrap();
        log.write_all(&[b'b'; 60]).unwrap();
        log.write_all(&[b'c'; 10]).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [vec![b'b'; 60], vec![b'c'; 10]].concat()
        );
        assert_eq!(
            std::fs::read(RotatingLog::rotated_path(&path)).unwrap(),
            vec![b'a'; 60]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
