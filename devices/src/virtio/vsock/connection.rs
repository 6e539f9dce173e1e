//! One vsock stream between a guest port and a host Unix stream: its
//! handshake state and both directions' flow control (virtio 1.2, 5.10.6.3).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use super::CONN_BUF_ALLOC;

/// Host reads go to the guest in chunks of this size at most (Linux posts
/// 4 KiB receive buffers).
pub const RX_CHUNK: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The host asked for this connection; the guest has not answered.
    AwaitingResponse,
    Established,
    /// We told the guest the host side closed and wait for its RST.
    Closing,
}

pub struct Connection {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: ConnState,
    /// The guest's receive buffer and how much of it it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    /// Bytes sent to the guest on this connection.
    pub rx_cnt: u32,
    /// Bytes of guest data written to the host stream.
    pub fwd_cnt: u32,
    /// `fwd_cnt` as the guest last heard it.
    pub fwd_cnt_told: u32,
    /// Guest data the host stream did not take yet.
    pub tx_buf: Vec<u8>,
    /// Host data read, waiting for a guest receive buffer.
    pub rx_chunk: Option<Vec<u8>>,
    /// The host stream hung up; read it directly (not via epoll) until EOF.
    pub hup: bool,
    /// The guest will not receive any more (SHUTDOWN RCV) or the host hit EOF.
    pub rx_closed: bool,
}

/// What reading the host side produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// A chunk is ready for the guest.
    Data,
    /// Nothing now: no credit, a chunk already waits, or the stream would block.
    Nothing,
    /// End of stream (or a read error): the host side is gone.
    Eof,
}

impl Connection {
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            tx_buf: Vec::new(),
            rx_chunk: None,
            hup: false,
            rx_closed: false,
        }
    }

    /// How many more bytes the guest can take on this connection.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    pub fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.rx_closed
            && self.rx_chunk.is_none()
            && self.peer_credit() > 0
    }

    /// Reads at most one chunk from the host stream.
    pub fn pump(&mut self) -> Pumped {
        if !self.wants_read() {
            return Pumped::Nothing;
        }
        let max = RX_CHUNK.min(usize::try_from(self.peer_credit()).unwrap_or(RX_CHUNK));
        // Read on the stack: most wake-ups of an idle or closing stream
        // find nothing (or EOF), and only data read needs a heap copy.
        let mut buf = [0u8; RX_CHUNK];
        match self.stream.read(&mut buf[..max]) {
            Ok(0) => Pumped::Eof,
            Ok(n) => {
                self.rx_chunk = Some(buf[..n].to_vec());
                Pumped::Data
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                Pumped::Nothing
            }
            Err(e) => {
                log::debug!(
                    "vsock: host stream of host:{} guest:{}: {e}",
                    self.local_port,
                    self.peer_port
                );
                Pumped::Eof
            }
        }
    }

    /// Takes guest data for the host. Err if the guest sent more than the
    /// buffer it was promised (a protocol violation) or the host is gone.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), String> {
        if self.tx_buf.len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(format!(
                "guest overran its credit ({} bytes buffered)",
                self.tx_buf.len() + data.len()
            ));
        }
        self.tx_buf.extend_from_slice(data);
        self.flush()
    }

    /// Writes what the host stream takes of `tx_buf`.
    pub fn flush(&mut self) -> Result<(), String> {
        while !self.tx_buf.is_empty() {
            match self.stream.write(&self.tx_buf) {
                Ok(0) => return Err("host stream closed".into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self
                        .fwd_cnt
                        .wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("host stream: {e}")),
            }
        }
        Ok(())
    }

    /// True when the guest should hear our `fwd_cnt` without waiting to ask.
    pub fn owes_credit_update(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= CONN_BUF_ALLOC / 4
    }
}
