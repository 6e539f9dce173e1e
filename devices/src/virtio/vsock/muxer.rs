//! The host side of vsock: a Unix listener for host-initiated connections,
//! Unix streams for each connection, and the vsock stream protocol between
//! them and the guest. Consumes [`TxPacket`]s, produces [`RxPacket`]s and
//! never sees a descriptor. The device owns the event loop; the muxer says
//! which of its fds it wants watched through [`Interest`] changes.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnState, Connection, Pumped};
use super::packet::{RxPacket, TxPacket};
use super::{
    CONN_BUF_ALLOC, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Open connections plus host connections still sending `CONNECT`.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host ports herd picks for host-initiated connections, as Firecracker does.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// `CONNECT 4294967295\n` and some slack.
const MAX_CONNECT_LINE: usize = 32;
/// How long a host waits for the guest to accept (Firecracker's value): a
/// guest without a vsock driver, or one that ignores the request, must not
/// leave the host hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("vsock socket {0} exists and is not a Unix socket; remove it or pick another path")]
    NotASocket(PathBuf),
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the vsock connect timer: {0}")]
    Timer(vmm_sys_util::errno::Error),
}

/// A change to what the event loop should watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    Add(RawFd, EventSet),
    Modify(RawFd, EventSet),
    Remove(RawFd),
}

type Key = (u32, u32);

pub struct Muxer {
    path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Host streams that have not sent their `CONNECT` line yet.
    accepting: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    /// What each fd is registered for (absent: not registered).
    watched: HashMap<RawFd, EventSet>,
    interest: Vec<Interest>,
    /// Host streams whose connection ended, kept open until the event loop
    /// has applied their `Remove`: a closed fd cannot be unregistered (the
    /// event manager would then keep it, and refuse the next stream that
    /// gets the same number).
    retired: Vec<UnixStream>,
    control: VecDeque<RxPacket>,
    rx_ready: VecDeque<Key>,
    next_local_port: u32,
    /// Host-initiated connections the guest has not answered, and since when.
    pending_since: HashMap<Key, Instant>,
    timer: TimerFd,
}

impl Muxer {
    /// Listens on `path`; a stale socket there (a herd that was killed) is
    /// replaced, anything else is an error.
    pub fn new(path: &Path, guest_cid: u64) -> Result<Muxer, MuxerError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(MuxerError::NotASocket(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| MuxerError::Bind {
            path: path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let mut muxer = Muxer {
            path: path.to_owned(),
            guest_cid,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            accepting: HashMap::new(),
            watched: HashMap::new(),
            interest: Vec::new(),
            retired: Vec::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            pending_since: HashMap::new(),
            timer: TimerFd::new().map_err(MuxerError::Timer)?,
        };
        let fd = muxer.listener.as_raw_fd();
        muxer.watch(fd, Some(EventSet::IN));
        let fd = muxer.timer.as_raw_fd();
        muxer.watch(fd, Some(EventSet::IN));
        Ok(muxer)
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Watch changes since the last call, for the event loop.
    pub fn take_interest(&mut self) -> Vec<Interest> {
        std::mem::take(&mut self.interest)
    }

    /// Closes the streams whose `Remove` the event loop has now applied.
    pub fn close_retired(&mut self) {
        self.retired.clear();
    }

    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rx_ready.is_empty()
    }

    fn watch(&mut self, fd: RawFd, want: Option<EventSet>) {
        // An fd registered with an empty set would still report HUP, level
        // triggered: unregister it instead.
        let want = want.filter(|s| !s.is_empty());
        let change = match (self.watched.get(&fd).copied(), want) {
            (None, Some(s)) => Interest::Add(fd, s),
            (Some(old), Some(s)) if old != s => Interest::Modify(fd, s),
            (Some(_), None) => Interest::Remove(fd),
            _ => return,
        };
        match want {
            Some(s) => self.watched.insert(fd, s),
            None => self.watched.remove(&fd),
        };
        self.interest.push(change);
    }

    fn packet(key: Key, op: u16, flags: u32, fwd_cnt: u32) -> RxPacket {
        RxPacket {
            local_port: key.0,
            peer_port: key.1,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
            data: Vec::new(),
        }
    }

    fn reply(&mut self, key: Key, op: u16, flags: u32) {
        let fwd_cnt = match self.conns.get_mut(&key) {
            Some(conn) => {
                conn.fwd_cnt_told = conn.fwd_cnt;
                conn.fwd_cnt
            }
            None => 0,
        };
        self.control
            .push_back(Self::packet(key, op, flags, fwd_cnt));
    }

    fn remove(&mut self, key: Key) {
        self.pending_since.remove(&key);
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.watch(fd, None);
            self.by_fd.remove(&fd);
            self.retired.push(conn.stream);
            log::debug!("vsock: connection host:{} guest:{} closed", key.0, key.1);
        }
    }

    /// Resets the connection towards the guest and drops the host side.
    fn reset(&mut self, key: Key) {
        self.reply(key, OP_RST, 0);
        self.remove(key);
    }

    /// One packet from the guest.
    pub fn handle_tx(&mut self, pkt: TxPacket) {
        let key = (pkt.dst_port, pkt.src_port);
        if pkt.src_cid != self.guest_cid || pkt.dst_cid != HOST_CID || pkt.type_ != TYPE_STREAM {
            log::debug!(
                "vsock: packet from cid {} to cid {} type {} dropped",
                pkt.src_cid,
                pkt.dst_cid,
                pkt.type_
            );
            if pkt.op != OP_RST {
                self.reply(key, OP_RST, 0);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            match pkt.op {
                OP_REQUEST => self.guest_connect(key, &pkt),
                OP_RST => {}
                _ => self.reply(key, OP_RST, 0),
            }
            return;
        };
        conn.peer_buf_alloc = pkt.buf_alloc;
        conn.peer_fwd_cnt = pkt.fwd_cnt;
        match (conn.state, pkt.op) {
            (ConnState::AwaitingResponse, OP_RESPONSE) => {
                let line = format!("OK {}\n", conn.local_port);
                if let Err(e) = conn.stream.write_all(line.as_bytes()) {
                    log::debug!("vsock: host went away before the guest accepted: {e}");
                    return self.reset(key);
                }
                conn.state = ConnState::Established;
                self.pending_since.remove(&key);
            }
            (ConnState::Established, OP_RW) => {
                if let Err(why) = conn.send_to_host(&pkt.data) {
                    log::debug!("vsock: guest port {}: {why}", key.1);
                    return self.reset(key);
                }
                if conn.owes_credit_update() {
                    self.reply(key, OP_CREDIT_UPDATE, 0);
                }
            }
            (ConnState::Established | ConnState::Closing, OP_CREDIT_REQUEST) => {
                self.reply(key, OP_CREDIT_UPDATE, 0);
            }
            (ConnState::Established | ConnState::Closing, OP_CREDIT_UPDATE) => {}
            (ConnState::Established | ConnState::Closing, OP_SHUTDOWN) => {
                if pkt.flags & SHUTDOWN_RCV != 0 {
                    conn.rx_closed = true;
                }
                if pkt.flags & SHUTDOWN_SEND != 0 {
                    let _ = conn.flush();
                    let _ = conn.stream.shutdown(Shutdown::Write);
                }
                if pkt.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    return self.reset(key);
                }
            }
            (_, OP_RST) => return self.remove(key),
            (state, op) => {
                log::debug!("vsock: op {op} in state {state:?} for guest port {}", key.1);
                return self.reset(key);
            }
        }
        self.refresh(key);
    }

    fn guest_connect(&mut self, key: Key, pkt: &TxPacket) {
        if self.conns.len() + self.accepting.len() >= MAX_CONNECTIONS {
            log::warn!("vsock: {MAX_CONNECTIONS} connections open; refusing the guest's");
            return self.reply(key, OP_RST, 0);
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{}", key.0));
        let stream = match UnixStream::connect(&target) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            Ok(_) | Err(_) => {
                log::debug!(
                    "vsock: guest connect to host port {}: nobody listens on {}",
                    key.0,
                    PathBuf::from(&target).display()
                );
                return self.reply(key, OP_RST, 0);
            }
        };
        let mut conn = Connection::new(stream, key.0, key.1, ConnState::Established);
        conn.peer_buf_alloc = pkt.buf_alloc;
        conn.peer_fwd_cnt = pkt.fwd_cnt;
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.reply(key, OP_RESPONSE, 0);
        self.refresh(key);
    }

    /// Re-reads the host side if it can go on without epoll, and brings the
    /// watch set in line with what the connection can do now.
    fn refresh(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.hup {
            match conn.pump() {
                Pumped::Data => self.rx_ready.push_back(key),
                Pumped::Eof => return self.host_eof(key),
                Pumped::Nothing => {}
            }
        }
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let mut want = EventSet::empty();
        if conn.wants_read() && !conn.hup {
            want |= EventSet::IN;
        }
        if !conn.tx_buf.is_empty() && !conn.hup {
            want |= EventSet::OUT;
        }
        let fd = conn.stream.as_raw_fd();
        self.watch(fd, Some(want));
    }

    fn host_eof(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.rx_closed = true;
        conn.hup = true;
        match conn.state {
            ConnState::Established => {
                conn.state = ConnState::Closing;
                self.reply(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.refresh(key);
            }
            ConnState::AwaitingResponse => self.reset(key),
            // Waiting for the guest's RST already.
            ConnState::Closing => self.refresh(key),
        }
    }

    /// An event on one of the fds the muxer asked to watch.
    pub fn handle_event(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            return self.accept();
        }
        if fd == self.timer.as_raw_fd() {
            return self.expire_requests();
        }
        if self.accepting.contains_key(&fd) {
            return self.read_connect_line(fd);
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            log::debug!("vsock: event on unknown fd {fd}");
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) {
            if let Err(why) = conn.flush() {
                log::debug!("vsock: guest port {}: {why}", key.1);
                return self.reset(key);
            }
        }
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            match conn.pump() {
                Pumped::Data => self.rx_ready.push_back(key),
                Pumped::Eof => return self.host_eof(key),
                Pumped::Nothing => {
                    if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                        conn.hup = true;
                    }
                }
            }
        }
        self.refresh(key);
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        log::warn!("vsock: accept on {}: {e}", self.path.display());
                    }
                    return;
                }
            };
            if self.conns.len() + self.accepting.len() >= MAX_CONNECTIONS
                || stream.set_nonblocking(true).is_err()
            {
                log::warn!("vsock: refusing a host connection ({MAX_CONNECTIONS} open)");
                continue;
            }
            let fd = stream.as_raw_fd();
            self.accepting.insert(fd, (stream, Vec::new()));
            self.watch(fd, Some(EventSet::IN));
        }
    }

    /// Reads the host's `CONNECT <port>\n`; anything else closes the stream.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some((stream, line)) = self.accepting.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte: data after the newline belongs to the connection.
        let done = loop {
            match stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err("read error"),
            }
        };
        self.watch(fd, None);
        let Some((stream, line)) = self.accepting.remove(&fd) else {
            return;
        };
        let port = done.and_then(|()| parse_connect(&line).ok_or("not `CONNECT <port>`"));
        let peer_port = match port {
            Ok(p) => p,
            Err(why) => {
                log::debug!("vsock: host connection dropped: {why}");
                self.retired.push(stream);
                return;
            }
        };
        let local_port = self.allocate_local_port();
        let key = (local_port, peer_port);
        let conn = Connection::new(stream, local_port, peer_port, ConnState::AwaitingResponse);
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.reply(key, OP_REQUEST, 0);
        self.pending_since.insert(key, Instant::now());
        self.arm_timer();
    }

    /// Fires when the oldest unanswered host request times out.
    fn arm_timer(&mut self) {
        let Some(oldest) = self.pending_since.values().min() else {
            return;
        };
        let left = CONNECT_TIMEOUT.saturating_sub(oldest.elapsed());
        // A zero duration would disarm the timer.
        let left = left.max(Duration::from_millis(1));
        if let Err(e) = self.timer.reset(left, None) {
            log::error!("vsock: cannot arm the connect timer: {e}");
        }
    }

    /// Closes host connections the guest did not answer in time: the host
    /// sees EOF instead of `OK`, as for a refusal.
    fn expire_requests(&mut self) {
        let _ = self.timer.wait();
        let expired: Vec<Key> = self
            .pending_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= CONNECT_TIMEOUT)
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            log::debug!(
                "vsock: guest did not answer the host's connect to port {}",
                key.1
            );
            self.reset(key);
        }
        self.arm_timer();
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|k| k.0 == port) {
                return port;
            }
        }
    }

    /// The next packet for the guest, whose receive buffer takes at most
    /// `max_data` payload bytes.
    pub fn next_rx(&mut self, max_data: usize) -> Option<RxPacket> {
        if let Some(p) = self.control.pop_front() {
            return Some(p);
        }
        if max_data == 0 {
            return None;
        }
        while let Some(key) = self.rx_ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let Some(mut chunk) = conn.rx_chunk.take() else {
                continue;
            };
            if chunk.len() > max_data {
                conn.rx_chunk = Some(chunk.split_off(max_data));
                self.rx_ready.push_front(key);
            }
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            conn.rx_cnt = conn.rx_cnt.wrapping_add(len);
            conn.fwd_cnt_told = conn.fwd_cnt;
            let mut pkt = Self::packet(key, OP_RW, 0, conn.fwd_cnt);
            pkt.data = chunk;
            if conn.rx_chunk.is_none() {
                self.refresh(key);
            }
            return Some(pkt);
        }
        None
    }
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let port = text.strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
