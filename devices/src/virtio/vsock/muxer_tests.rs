//! The muxer against real host Unix sockets, with the guest played by
//! hand-made packets and the event loop by `drive`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::virtio::vsock::DEFAULT_GUEST_CID;

const GUEST: u64 = DEFAULT_GUEST_CID;

struct TempSock(PathBuf);

impl TempSock {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempSock(std::env::temp_dir().join(format!("herd-vsock-{}-{n}.sock", std::process::id())))
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn guest_pkt(src_port: u32, dst_port: u32, op: u16) -> TxPacket {
    TxPacket {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
        data: Vec::new(),
    }
}

/// Plays the event loop: delivers readiness for every watched fd (by
/// polling them) until nothing changes, collecting what goes to the guest.
fn drive(m: &mut Muxer, watched: &mut HashMap<RawFd, EventSet>) -> Vec<RxPacket> {
    let mut out = Vec::new();
    for _ in 0..50 {
        for change in m.take_interest() {
            match change {
                Interest::Add(fd, s) | Interest::Modify(fd, s) => {
                    watched.insert(fd, s);
                }
                Interest::Remove(fd) => {
                    watched.remove(&fd);
                }
            }
        }
        m.close_retired();
        let mut fired = false;
        for (&fd, &set) in watched.iter() {
            let mut pfd = libc::pollfd {
                fd,
                events: (if set.contains(EventSet::IN) {
                    libc::POLLIN
                } else {
                    0
                }) | (if set.contains(EventSet::OUT) {
                    libc::POLLOUT
                } else {
                    0
                }),
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            let n = unsafe { libc::poll(&mut pfd, 1, 0) };
            if n == 1 {
                let mut ev = EventSet::empty();
                if pfd.revents & libc::POLLIN != 0 {
                    ev |= EventSet::IN;
                }
                if pfd.revents & libc::POLLOUT != 0 {
                    ev |= EventSet::OUT;
                }
                if pfd.revents & libc::POLLHUP != 0 {
                    ev |= EventSet::HANG_UP;
                }
                m.handle_event(fd, ev);
                fired = true;
                break;
            }
        }
        while let Some(p) = m.next_rx(4096) {
            out.push(p);
            fired = true;
        }
        if !fired {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    out
}

fn ops(pkts: &[RxPacket]) -> Vec<u16> {
    pkts.iter().map(|p| p.op).collect()
}

#[test]
fn host_connects_guest_accepts_and_lines_flow_both_ways() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    let mut host = UnixStream::connect(&sock.0).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_REQUEST]);
    let local = out[0].local_port;
    assert_eq!(out[0].peer_port, 52);
    assert!(local >= 1 << 30);

    m.handle_tx(guest_pkt(52, local, OP_RESPONSE));
    let mut reader = BufReader::new(host.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, format!("OK {local}\n"));

    // Guest to host.
    let mut rw = guest_pkt(52, local, OP_RW);
    rw.data = b"hello host\n".to_vec();
    m.handle_tx(rw);
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "hello host\n");

    // Host to guest.
    host.write_all(b"hello guest\n").unwrap();
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_RW]);
    assert_eq!(out[0].data, b"hello guest\n");
    assert_eq!((out[0].local_port, out[0].peer_port), (local, 52));

    // Host closes: the guest is told, answers RST, the connection goes.
    drop(reader);
    drop(host);
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_SHUTDOWN]);
    m.handle_tx(guest_pkt(52, local, OP_RST));
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_refusal_closes_the_host_stream() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    let mut host = UnixStream::connect(&sock.0).unwrap();
    host.write_all(b"CONNECT 9999\n").unwrap();
    let out = drive(&mut m, &mut w);
    m.handle_tx(guest_pkt(9999, out[0].local_port, OP_RST));
    // The event loop applies the watch changes, then the stream closes.
    drive(&mut m, &mut w);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        host.read_to_end(&mut buf).unwrap(),
        0,
        "expected EOF, got {buf:?}"
    );
}

#[test]
fn guest_connects_to_a_host_listener() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    let port_path = PathBuf::from(format!("{}_1234", sock.0.display()));
    let _cleanup = TempSock(port_path.clone());
    let listener = UnixListener::bind(&port_path).unwrap();

    m.handle_tx(guest_pkt(40000, 1234, OP_REQUEST));
    let (mut host, _) = listener.accept().unwrap();
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_RESPONSE]);
    assert_eq!((out[0].local_port, out[0].peer_port), (1234, 40000));

    host.write_all(b"ping\n").unwrap();
    let out = drive(&mut m, &mut w);
    assert_eq!(out[0].data, b"ping\n");

    // Nobody on port 1235: refused at once.
    m.handle_tx(guest_pkt(40001, 1235, OP_REQUEST));
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_RST]);
    assert_eq!((out[0].local_port, out[0].peer_port), (1235, 40001));
}

#[test]
fn the_guest_never_exceeds_its_credit() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    let port_path = PathBuf::from(format!("{}_7", sock.0.display()));
    let _cleanup = TempSock(port_path.clone());
    let listener = UnixListener::bind(&port_path).unwrap();
    let mut req = guest_pkt(500, 7, OP_REQUEST);
    req.buf_alloc = 10;
    m.handle_tx(req);
    let (mut host, _) = listener.accept().unwrap();
    drive(&mut m, &mut w);
    host.write_all(&[7u8; 100]).unwrap();
    let out = drive(&mut m, &mut w);
    let sent: usize = out.iter().map(|p| p.data.len()).sum();
    assert_eq!(sent, 10, "only the guest's 10-byte buffer may be filled");
    // The guest consumed them: 10 more.
    let mut update = guest_pkt(500, 7, OP_CREDIT_UPDATE);
    update.buf_alloc = 10;
    update.fwd_cnt = 10;
    m.handle_tx(update);
    let out = drive(&mut m, &mut w);
    assert_eq!(out.iter().map(|p| p.data.len()).sum::<usize>(), 10);
}

#[test]
fn garbage_from_the_guest_is_reset_not_fatal() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    // Data, responses and unknown ops for connections that do not exist.
    for op in [
        OP_RW,
        OP_RESPONSE,
        OP_SHUTDOWN,
        OP_CREDIT_UPDATE,
        0,
        99,
        u16::MAX,
    ] {
        let mut p = guest_pkt(1, 2, op);
        p.data = vec![1; 100];
        m.handle_tx(p);
    }
    // Wrong CIDs and a datagram type.
    let mut p = guest_pkt(1, 2, OP_REQUEST);
    p.src_cid = 77;
    m.handle_tx(p);
    let mut p = guest_pkt(1, 2, OP_REQUEST);
    p.dst_cid = 5;
    m.handle_tx(p);
    let mut p = guest_pkt(1, 2, OP_REQUEST);
    p.type_ = 2;
    m.handle_tx(p);
    let out = drive(&mut m, &mut w);
    assert_eq!(out.len(), 10);
    assert!(out.iter().all(|p| p.op == OP_RST), "{:?}", ops(&out));
    assert_eq!(m.connection_count(), 0);

    // A guest that overruns the buffer it was promised loses the connection.
    let port_path = PathBuf::from(format!("{}_8", sock.0.display()));
    let _cleanup = TempSock(port_path.clone());
    let listener = UnixListener::bind(&port_path).unwrap();
    m.handle_tx(guest_pkt(600, 8, OP_REQUEST));
    let (_host, _) = listener.accept().unwrap();
    drive(&mut m, &mut w);
    // Nobody reads on the host side, so the data piles up in herd.
    for _ in 0..(2 * CONN_BUF_ALLOC / MAX_PKT_DATA_FOR_TEST) {
        let mut p = guest_pkt(600, 8, OP_RW);
        p.data = vec![0; MAX_PKT_DATA_FOR_TEST as usize];
        m.handle_tx(p);
    }
    let out = drive(&mut m, &mut w);
    assert_eq!(out.last().map(|p| p.op), Some(OP_RST));
    assert_eq!(m.connection_count(), 0);
}

const MAX_PKT_DATA_FOR_TEST: u32 = super::super::MAX_PKT_DATA;

#[test]
fn junk_instead_of_connect_is_dropped() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    for junk in [&b"HELLO\n"[..], b"CONNECT x\n", &[b'A'; 100]] {
        let mut host = UnixStream::connect(&sock.0).unwrap();
        host.write_all(junk).unwrap();
        let out = drive(&mut m, &mut w);
        assert!(out.is_empty(), "{:?}", ops(&out));
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        assert_eq!(host.read_to_end(&mut buf).unwrap_or(0), 0);
    }
}

#[test]
fn a_stale_socket_is_replaced_and_a_file_is_not() {
    let sock = TempSock::new();
    drop(UnixListener::bind(&sock.0).unwrap());
    assert!(Muxer::new(&sock.0, GUEST).is_ok());
    let file = TempSock::new();
    std::fs::write(&file.0, b"data").unwrap();
    assert!(matches!(
        Muxer::new(&file.0, GUEST),
        Err(MuxerError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&file.0).unwrap(), b"data");
}

/// A guest that never answers (no vsock driver, or a hung one): the host
/// gets EOF after CONNECT_TIMEOUT, and the guest a reset.
#[test]
fn unanswered_connect_times_out() {
    let sock = TempSock::new();
    let mut m = Muxer::new(&sock.0, GUEST).unwrap();
    let mut w = HashMap::new();
    let mut host = UnixStream::connect(&sock.0).unwrap();
    host.write_all(b"CONNECT 80\n").unwrap();
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_REQUEST]);
    std::thread::sleep(CONNECT_TIMEOUT);
    let out = drive(&mut m, &mut w);
    assert_eq!(ops(&out), [OP_RST]);
    assert_eq!(m.connection_count(), 0);
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    assert_eq!(host.read_to_end(&mut buf).unwrap(), 0);
}
