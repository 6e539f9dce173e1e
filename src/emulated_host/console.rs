//! The test host's two output channels: its console (ttyS0, QEMU's stdout),
//! parsed line by line, and the command's stdout (ttyS1, a Unix socket QEMU
//! serves), copied raw to herd's stdout or a file.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::machine::{io_err, EmulatedHostError};

const EXIT_MARK: &str = "testhost: scenario exit=";
const KVM_READY_MARK: &str = "testhost: kvm ready";
pub const SETUP_FAILED_MARK: &str = "testhost: setup failed: ";
pub const STDERR_PREFIX: &str = "[stderr] ";
pub const REPORT_PREFIX: &str = "[report] ";
/// Console lines kept for an error message.
const TAIL: usize = 40;
/// How long QEMU may take to open the stdout socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the command's stdout goes.
pub enum Output {
    Stdout,
    File(File),
}

/// What the test host's console said.
#[derive(Default)]
pub struct Console {
    pub status: Option<i32>,
    pub kvm_ready: bool,
    pub setup_failed: Option<String>,
    pub report: Option<String>,
    pub tail: VecDeque<String>,
}

/// Reads the console until QEMU closes it; `ready` gets one message when
/// the test host's KVM is up (the command starts right after).
pub fn read_console(stdout: impl Read, ready: &Sender<()>) -> Console {
    let mut c = Console::default();
    let start = Instant::now();
    // Serial output may hold stray non-UTF-8 bytes: read raw lines.
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if let Some(err) = line.strip_prefix(STDERR_PREFIX) {
            eprintln!("{err}");
            continue;
        }
        if let Some(r) = line.strip_prefix(REPORT_PREFIX) {
            let report = c.report.get_or_insert_with(String::new);
            report.push_str(r);
            report.push('\n');
            continue;
        }
        log::debug!("test host: {line} [{:.1?}]", start.elapsed());
        if line.contains(KVM_READY_MARK) && !c.kvm_ready {
            c.kvm_ready = true;
            log::info!("test host up after {:.1?}", start.elapsed());
            let _ = ready.send(());
        }
        if let Some(code) = line.trim().strip_prefix(EXIT_MARK) {
            c.status = code.trim().parse().ok();
        }
        if let Some(why) = line.strip_prefix(SETUP_FAILED_MARK) {
            c.setup_failed = Some(why.to_owned());
        }
        if line.starts_with("testhost: the command left")
            || line.starts_with("testhost: stopping the command")
        {
            log::info!("{}", line.trim_start_matches("testhost: "));
        }
        if c.tail.len() == TAIL {
            c.tail.pop_front();
        }
        c.tail.push_back(line.to_owned());
    }
    c
}

/// Connects to a socket QEMU serves (it waits on the stdout one before
/// booting). `None` if QEMU exits first (its stderr says why).
pub fn connect(sock: &Path, child: &mut Child) -> Option<UnixStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(stream) = UnixStream::connect(sock) {
            return Some(stream);
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

/// Copies ttyS1 to `out` until QEMU closes it; with `stdin`, also our
/// terminal (raw mode, restored when the copy ends) to ttyS1.
pub fn forward(
    stream: UnixStream,
    mut out: Output,
    stdin: bool,
) -> Result<JoinHandle<()>, EmulatedHostError> {
    let raw = stdin.then(crate::terminal::RawTerminal::enable).flatten();
    if raw.is_some() {
        let mut to_guest = stream
            .try_clone()
            .map_err(io_err(Path::new("stdout socket")))?;
        // Blocks in read(2) until herd exits; nothing to join.
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut to_guest);
        });
    }
    Ok(std::thread::spawn(move || {
        let _raw = raw;
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            let chunk = &buf[..n];
            let written = match &mut out {
                Output::Stdout => {
                    let mut o = io::stdout().lock();
                    o.write_all(chunk).and_then(|()| o.flush())
                }
                Output::File(f) => f.write_all(chunk),
            };
            if written.is_err() {
                break;
            }
        }
    }))
}
