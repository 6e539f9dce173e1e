//! Guest console output leaves the vCPU through a bounded in-memory buffer
//! that a writer thread drains into the real sink (terminal, pipe, file).
//! A sink that blocks (a pipe nobody reads, a terminal on Ctrl-S, a file on
//! a hung filesystem) then costs the guest output, never a vCPU: when the
//! buffer is full, further output is dropped and counted.
//!
//! The thread is started once the vCPUs run ([`ConsoleWriter::start`]),
//! off the boot path; until then output goes to the sink directly.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::seccomp::{SeccompFilters, ThreadKind};

/// Output held for a slow sink before the guest's output is dropped.
pub const CONSOLE_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Default)]
struct State {
    /// The sink, until the writer thread takes it over.
    direct: Option<Box<dyn Write + Send>>,
    bytes: Vec<u8>,
    /// Bytes dropped since the writer last reported it.
    dropped: u64,
    /// The writer is busy with bytes it took out of `bytes`.
    writing: bool,
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
        let mut state = self.shared.lock();
        if let Some(sink) = state.direct.as_mut() {
            // A closed terminal or a full disk must not stop the guest.
            let _ = sink.write_all(buf);
            return Ok(buf.len());
        }
        let room = CONSOLE_BUFFER_BYTES.saturating_sub(state.bytes.len());
        let take = buf.len().min(room);
        let was_idle = state.bytes.is_empty();
        state.bytes.extend_from_slice(&buf[..take]);
        state.dropped += u64::try_from(buf.len() - take).unwrap_or(u64::MAX);
        drop(state);
        if was_idle && take > 0 {
            self.shared.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(sink) = self.shared.lock().direct.as_mut() {
            let _ = sink.flush();
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
        while !state.bytes.is_empty() || state.writing {
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
pub fn new(sink: Box<dyn Write + Send>) -> (ConsoleOut, ConsoleWriter) {
    let shared = Arc::new(Shared::default());
    shared.lock().direct = Some(sink);
    (
        ConsoleOut {
            shared: shared.clone(),
        },
        ConsoleWriter { shared },
    )
}

impl ConsoleWriter {
    /// Starts the writer thread; from then on output is buffered. The
    /// thread takes the sink over itself, so a caller never waits for a
    /// vCPU stuck in a direct write.
    pub fn start(&self, seccomp: Option<Arc<SeccompFilters>>) -> std::io::Result<()> {
        let writer = self.shared.clone();
        std::thread::Builder::new()
            .name("herd-console".into())
            .spawn(move || {
                if let Some(Err(e)) = seccomp.as_ref().map(|f| f.install(ThreadKind::Vmm)) {
                    log::error!("console output thread: {e}; guest output goes nowhere");
                    return;
                }
                let Some(mut sink) = writer.lock().direct.take() else {
                    return;
                };
                let mut chunk = Vec::new();
                loop {
                    let mut state = writer.lock();
                    while state.bytes.is_empty() {
                        state = match writer.changed.wait(state) {
                            Ok(s) => s,
                            Err(p) => p.into_inner(),
                        };
                    }
                    std::mem::swap(&mut chunk, &mut state.bytes);
                    let dropped = std::mem::take(&mut state.dropped);
                    state.writing = true;
                    drop(state);
                    if dropped > 0 {
                        log::warn!(
                            "console output could not keep up with the guest; {dropped} bytes dropped"
                        );
                    }
                    // A closed terminal or a full disk must not stop the guest.
                    let _ = sink.write_all(&chunk).and_then(|()| sink.flush());
                    chunk.clear();
                    writer.lock().writing = false;
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
        let (mut out, drain) = new(Box::new(Gate(gate, got.clone())));
        drain.start(None).unwrap();
        // The thread takes the sink over before the first write counts.
        while drain.shared.lock().direct.is_some() {
            std::thread::yield_now();
        }
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
}
