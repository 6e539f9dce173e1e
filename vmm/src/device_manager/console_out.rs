//! Guest console output leaves the vCPU through a bounded in-memory buffer
//! that a writer thread drains into the real sink (terminal, pipe, file).
//! A sink that blocks (a pipe nobody reads, a terminal on Ctrl-S, a file on
//! a hung filesystem) then costs the guest output, never a vCPU: when the
//! buffer is full, further output is dropped and counted.
//!
//! Output after a quiet spell (the first byte of a burst, a prompt, an
//! echoed key) goes to a sink that can say when a write would block (pipes
//! and sockets, through `pwritev2(RWF_NOWAIT)`) from the vCPU itself: it
//! reaches the reader without waiting for the writer thread to wake up.
//! The rest of a burst is queued and written in chunks by the thread, as is
//! whatever the sink refused.
//!
//! The thread is started before the vCPUs run ([`ConsoleWriter::start`]);
//! until then output goes to the sink directly.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::seccomp::{self, ThreadKind};

/// Output held for a slow sink before the guest's output is dropped.
pub const CONSOLE_BUFFER_BYTES: usize = 256 * 1024;

/// At most one write from the vCPU per this interval: the serial port
/// hands over a byte at a time, and a system call (and a reader wake-up)
/// per byte would cost more than the writer thread's chunks.
const DIRECT_WRITE_INTERVAL: Duration = Duration::from_millis(1);

/// Where console output ends up.
pub trait ConsoleSink: Write + Send {
    /// Writes a prefix of `buf` if that cannot block, and says how long it
    /// was; None when the sink cannot tell (the writer thread writes it).
    fn write_now(&mut self, _buf: &[u8]) -> Option<usize> {
        None
    }
}

impl ConsoleSink for crate::device_manager::console::RotatingLog {}
impl ConsoleSink for std::io::Sink {}

/// A sink on a descriptor (stdout, a file), written unbuffered: the vCPU
/// writes to the same descriptor directly, and stdout is whatever fd 1 is
/// at the time (a detached appliance moves it to its log).
pub struct FdSink<F> {
    file: F,
    /// Cleared once the kernel says this file cannot do non-blocking
    /// writes (terminals, most file systems).
    nowait: bool,
}

impl<F: AsFd + Send> FdSink<F> {
    pub fn new(file: F) -> Self {
        FdSink { file, nowait: true }
    }
}

impl<F: AsFd + Send> Write for FdSink<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // `buf` is readable for its length during the call; the
        // descriptor is borrowed from `self.file`, open for the call.
        // SAFETY: sound for the reasons just given.
        let written = unsafe {
            libc::write(
                self.file.as_fd().as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
            )
        };
        usize::try_from(written).map_err(|_| std::io::Error::last_os_error())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<F: AsFd + Send> ConsoleSink for FdSink<F> {
    fn write_now(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.nowait {
            return None;
        }
        let iov = libc::iovec {
            iov_base: buf.as_ptr().cast_mut().cast(),
            iov_len: buf.len(),
        };
        // The one iovec points into `buf`, readable for its length during
        // the call; the kernel only reads it. Offset -1: the file position,
        // as write(2).
        // SAFETY: sound for the reasons just given.
        let written =
            unsafe { libc::pwritev2(self.file.as_fd().as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
        if let Ok(written) = usize::try_from(written) {
            return Some(written);
        }
        // EAGAIN: full for now. Anything else (EOPNOTSUPP, ENOSYS, a closed
        // reader) is for the writer thread from now on.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
            self.nowait = false;
        }
        None
    }
}

#[derive(Default)]
struct State {
    /// Out while the writer thread writes to it.
    sink: Option<Box<dyn ConsoleSink>>,
    /// The writer thread runs: output is no longer written directly.
    started: bool,
    /// When the vCPU last wrote to the sink itself.
    last_direct: Option<Instant>,
    bytes: Vec<u8>,
    /// Bytes dropped since the writer last reported it.
    dropped: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the writer (output arrived) and `drain` callers (written).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The serial port's end: never blocks on the sink.
pub struct ConsoleOut {
    shared: Arc<Shared>,
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.shared.lock();
        let state = &mut *guard;
        let idle = state.bytes.is_empty();
        let mut rest = buf;
        if let Some(sink) = state.sink.as_mut() {
            if !state.started {
                // A closed terminal or a full disk must not stop the guest.
                let _ = sink.write_all(buf);
                return Ok(buf.len());
            }
            // Only with nothing queued, which would otherwise go after.
            if idle {
                let now = Instant::now();
                let quiet = state
                    .last_direct
                    .is_none_or(|t| now.duration_since(t) >= DIRECT_WRITE_INTERVAL);
                if quiet {
                    let written = sink.write_now(buf).unwrap_or(0);
                    rest = buf.get(written..).unwrap_or_default();
                    state.last_direct = Some(now);
                }
            }
        }
        let room = CONSOLE_BUFFER_BYTES.saturating_sub(state.bytes.len());
        let take = rest.len().min(room);
        state.bytes.extend_from_slice(&rest[..take]);
        state.dropped += u64::try_from(rest.len() - take).unwrap_or(u64::MAX);
        drop(guard);
        if idle && take > 0 {
            self.shared.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut state = self.shared.lock();
        if !state.started {
            if let Some(sink) = state.sink.as_mut() {
                let _ = sink.flush();
            }
        }
        Ok(())
    }
}

/// Starts the writer thread and waits for buffered output to reach the
/// sink, for a bounded time.
pub struct ConsoleWriter {
    shared: Arc<Shared>,
}

impl ConsoleWriter {
    /// True if everything was written within `timeout`.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        // The sink is out while the writer writes to it.
        while !state.bytes.is_empty() || (state.started && state.sink.is_none()) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// The serial port's writer for `sink`, and the handle that starts the
/// thread behind it.
pub fn new(sink: Box<dyn ConsoleSink>) -> (ConsoleOut, ConsoleWriter) {
    let shared = Arc::new(Shared::default());
    shared.lock().sink = Some(sink);
    (
        ConsoleOut {
            shared: shared.clone(),
        },
        ConsoleWriter { shared },
    )
}

impl ConsoleWriter {
    /// Starts the writer thread, under the caller's (vmm) seccomp filter if
    /// it has one. The thread marks itself started, so a caller never waits
    /// for a vCPU stuck in a direct write; from then on output is buffered
    /// unless it goes at once (see the module's documentation).
    pub fn start(&self) -> std::io::Result<()> {
        let writer = self.shared.clone();
        std::thread::Builder::new()
            .name("herd-console".into())
            .spawn(move || {
                seccomp::note_inherited(ThreadKind::Vmm);
                writer.lock().started = true;
                let mut chunk = Vec::new();
                loop {
                    let mut state = writer.lock();
                    while state.bytes.is_empty() {
                        state = match writer.changed.wait(state) {
                            Ok(s) => s,
                            Err(p) => p.into_inner(),
                        };
                    }
                    let Some(mut sink) = state.sink.take() else {
                        return;
                    };
                    std::mem::swap(&mut chunk, &mut state.bytes);
                    let dropped = std::mem::take(&mut state.dropped);
                    drop(state);
                    if dropped > 0 {
                        log::warn!(
                            "console output could not keep up with the guest; {dropped} bytes dropped"
                        );
                    }
                    // A closed terminal or a full disk must not stop the guest.
                    let _ = sink.write_all(&chunk).and_then(|()| sink.flush());
                    chunk.clear();
                    writer.lock().sink = Some(sink);
                    writer.changed.notify_all();
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that blocks until told to go on.
    struct Gate(mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>);
    impl ConsoleSink for Gate {}
    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_costs_output_not_the_writer() {
        let (go, gate) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut out, drain) = started(Box::new(Gate(gate, got.clone())));
        let start = Instant::now();
        for _ in 0..(4 * CONSOLE_BUFFER_BYTES / 64) {
            assert_eq!(out.write(&[b'x'; 64]).unwrap(), 64);
        }
        assert!(start.elapsed() < Duration::from_secs(5), "writes blocked");
        assert!(
            !drain.drain(Duration::from_millis(50)),
            "nothing was written yet"
        );
        for _ in 0..4 {
            let _ = go.send(());
        }
        assert!(drain.drain(Duration::from_secs(5)));
        let written = got.lock().unwrap().len();
        // The first chunk, then at most one buffer's worth; the rest dropped.
        assert!(written <= 2 * CONSOLE_BUFFER_BYTES, "{written}");
        assert!(written >= CONSOLE_BUFFER_BYTES / 2, "{written}");
        out.write_all(b"after").unwrap();
        let _ = go.send(());
        assert!(drain.drain(Duration::from_secs(5)));
        assert!(got.lock().unwrap().ends_with(b"after"));
    }

    /// The serial port's end, with the writer thread already running.
    fn started(sink: Box<dyn ConsoleSink>) -> (ConsoleOut, ConsoleWriter) {
        let (out, drain) = new(sink);
        drain.start().unwrap();
        // The thread has started before the first write counts.
        while !drain.shared.lock().started {
            std::thread::yield_now();
        }
        (out, drain)
    }

    type Bytes = Arc<Mutex<Vec<u8>>>;

    /// A sink that takes at most `now` bytes at once, and the rest only
    /// through the writer thread.
    struct Partial {
        now: usize,
        direct: Bytes,
        got: Bytes,
    }

    impl Partial {
        /// The sink, what it took at once, and everything it got.
        fn taking(now: usize) -> (Self, Bytes, Bytes) {
            let (direct, got) = (Bytes::default(), Bytes::default());
            let sink = Partial {
                now,
                direct: direct.clone(),
                got: got.clone(),
            };
            (sink, direct, got)
        }
    }
    impl ConsoleSink for Partial {
        fn write_now(&mut self, buf: &[u8]) -> Option<usize> {
            let n = buf.len().min(self.now);
            self.direct.lock().unwrap().extend_from_slice(&buf[..n]);
            self.got.lock().unwrap().extend_from_slice(&buf[..n]);
            Some(n)
        }
    }
    impl Write for Partial {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn what_the_sink_takes_at_once_skips_the_thread_and_order_holds() {
        let (sink, direct, got) = Partial::taking(4);
        let (mut out, drain) = started(Box::new(sink));
        out.write_all(b"abc").unwrap();
        assert!(drain.drain(Duration::from_secs(5)));
        std::thread::sleep(DIRECT_WRITE_INTERVAL);
        out.write_all(b"defghij").unwrap();
        // Right after a direct write: queued, whatever the sink takes.
        out.write_all(b"kl").unwrap();
        assert!(drain.drain(Duration::from_secs(5)));
        assert_eq!(got.lock().unwrap().as_slice(), b"abcdefghijkl");
        // "abc" and "defg" went at once, "hij" through the thread; "kl" too,
        // unless this thread was held up past the interval meanwhile.
        let direct = direct.lock().unwrap().clone();
        assert!(direct == b"abcdefg" || direct == b"abcdefgkl", "{direct:?}");
    }

    #[test]
    fn a_full_pipe_is_not_written_at_once() {
        let (reader, writer) = std::io::pipe().unwrap();
        let mut sink = FdSink::new(writer);
        let mut total = 0;
        while let Some(n) = sink.write_now(&[b'x'; 4096]) {
            assert!(n > 0);
            total += n;
            assert!(total <= 16 << 20, "the pipe never filled");
        }
        assert!(total >= 4096);
        drop(reader);
    }

    #[test]
    fn a_burst_of_bytes_is_written_in_chunks_not_one_call_each() {
        let (sink, direct, got) = Partial::taking(usize::MAX);
        let (mut out, drain) = started(Box::new(sink));
        let start = Instant::now();
        // As the serial port hands bytes over: one call each.
        for i in 0..5000u32 {
            out.write_all(&[b'a' + (i % 26) as u8]).unwrap();
        }
        let elapsed = start.elapsed();
        assert!(drain.drain(Duration::from_secs(5)));
        assert_eq!(got.lock().unwrap().len(), 5000);
        let most = elapsed.as_millis() + 1;
        let direct = direct.lock().unwrap().len();
        assert!(
            u128::try_from(direct).unwrap() <= most,
            "{direct} direct writes in {elapsed:?}"
        );
    }
}
