//! virtio-net on the local /dev/kvm, driven by the probe guest's polling
//! driver (`probe.action=net` / `net-garbage`, see guest-images/probes/README.md).
//!
//! Each test makes its own network namespace with a TAP in it and runs herd
//! there (`ip netns exec`), so nothing touches the host's interfaces. On
//! the host side of the TAP a small Python responder (AF_PACKET socket on
//! the TAP) waits for the probe's broadcast frame (ethertype 0x88b5,
//! "herd-probe-ping") and answers with a "herd-host-pong" frame, which the
//! probe must receive intact. The namespace is deleted by a Drop guard, so
//! also when a test fails.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::herd_run::{
    drain, output_within, skip_notice, wait_until, watch_lines, ChildGuard, Run,
};
use crate::support::probes::{herd_bin, kvm_available, probe_path};

/// Every child (herd, ip, the responder) is killed after this.
const TIMEOUT: Duration = Duration::from_secs(20);
const PROBE: &str = "probe-pvh.elf";
/// Same name in every namespace: they cannot collide.
const TAP: &str = "herdtap0";
/// How long the responder waits for the ping (less than TIMEOUT, so it
/// reports "timeout" itself rather than being killed).
const RESPONDER_SECS: &str = "15";
const VNET_HDR_LEN: usize = 12;

/// The host side. Prints `ready` once bound, `frame <hex>` for every 0x88b5
/// frame the guest sends, and on the ping sends the pong (to the ping's
/// source MAC, padded to the requested size with byte i = i * 13 mod 256)
/// and prints `pong <hex>`.
const RESPONDER: &str = r#"
import select, socket, sys, time
ifname, size, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((ifname, 0))
print("ready", flush=True)
end = time.monotonic() + timeout
while True:
    left = end - time.monotonic()
    if left <= 0:
        print("timeout", flush=True)
        sys.exit(2)
    if not select.select([s], [], [], left)[0]:
        continue
    f = s.recv(65536)
    print("frame", f.hex(), flush=True)
    if f[14:].startswith(b"herd-probe-ping"):
        pong = f[6:12] + bytes.fromhex("020000000001") + b"\x88\xb5" + b"herd-host-pong\0"
        pong += bytes((i * 13) & 0xff for i in range(len(pong), size))
        s.send(pong)
        print("pong", pong.hex(), flush=True)
        sys.exit(0)
"#;

/// Why these tests cannot run here, if they cannot; said once per binary.
fn skip_reason() -> Option<&'static str> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let reason = REASON.get_or_init(|| {
        let has = |program: &str, arg: &str| {
            Command::new(program)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let reason = if !Path::new("/dev/kvm").exists() {
            Some("/dev/kvm absent".to_owned())
        } else if !Path::new("/dev/net/tun").exists() {
            Some("/dev/net/tun absent".to_owned())
        } else if !has("ip", "-V") {
            Some("the `ip` command (iproute2) is absent".to_owned())
        } else if !has("python3", "--version") {
            Some("python3 is absent".to_owned())
        // SAFETY: geteuid has no preconditions and cannot fail.
        } else if unsafe { libc::geteuid() } != 0 {
            Some("network namespaces need root".to_owned())
        } else {
            None
        };
        if let Some(why) = &reason {
            skip_notice(why, "VM network tests in appliance_net::local");
        } else {
            assert!(
                kvm_available(),
                "/dev/kvm exists but cannot be opened read-write"
            );
        }
        reason
    });
    reason.as_deref()
}

/// Runs `cmd` to completion within TIMEOUT; None if it had to be killed.
fn output(cmd: &mut Command) -> Option<Run> {
    output_within(cmd, TIMEOUT)
}

fn checked(cmd: &mut Command) {
    let what = format!("{cmd:?}");
    match output(cmd) {
        Some(run) if run.status.success() => {}
        Some(run) => panic!("{what} failed\n{}", run.dump()),
        None => panic!("{what} still running after {TIMEOUT:?}; killed"),
    }
}

/// A network namespace with an up TAP in it, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("herd-t-{}-{n}", std::process::id());
        checked(Command::new("ip").args(["netns", "add", &name]));
        // From here on, Drop removes it whatever fails next.
        let ns = Netns { name };
        checked(ns.command("ip").args(["link", "set", "lo", "up"]));
        checked(ns.command("ip").args(["tuntap", "add", TAP, "mode", "tap"]));
        checked(ns.command("ip").args(["link", "set", TAP, "up"]));
        ns
    }

    /// `program` run inside the namespace (`ip netns exec` execs it, so
    /// the child's pid is the program's own).
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The TAP goes with the namespace.
        let deleted = output(Command::new("ip").args(["netns", "del", &self.name]));
        if !deleted.as_ref().is_some_and(|r| r.status.success()) {
            let _ = writeln!(
                std::io::stderr(),
                "WARNING: could not delete network namespace {}: {}",
                self.name,
                deleted.map_or_else(|| "timed out".to_owned(), |r| r.dump())
            );
        }
    }
}

/// What the responder saw and sent.
struct HostSide {
    /// 0x88b5 frames from the guest, in order.
    frames: Vec<Vec<u8>>,
    pong: Option<Vec<u8>>,
    log: String,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("responder printed hex"))
        .collect()
}

/// Starts the responder in `ns`, runs herd there with the probe, and
/// collects both sides.
fn exchange(ns: &Netns, cmdline: &str, herd_args: &[&str], pong_len: usize) -> (Run, HostSide) {
    let mut responder = ns.command("python3");
    responder
        .args([
            "-u",
            "-c",
            RESPONDER,
            TAP,
            &pong_len.to_string(),
            RESPONDER_SECS,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut responder = ChildGuard(responder.spawn().expect("spawn python3 responder"));
    let err = drain(responder.0.stderr.take().expect("stderr"));
    let (rx, reader) = watch_lines(responder.0.stdout.take().expect("stdout"), |l| l == "ready");
    if rx.recv_timeout(TIMEOUT).is_err() {
        drop(responder);
        panic!(
            "responder never became ready\n{}{}",
            reader.join().unwrap(),
            err.join().unwrap()
        );
    }

    // A named herd has a runtime directory: one per namespace, so tests
    // running at once with the same --name do not collide.
    let runtime = std::env::temp_dir().join(format!("herd-rt-{}", ns.name));
    let mut herd = ns.command(herd_bin());
    herd.arg("run")
        .env("HERD_RUNTIME", &runtime)
        .arg("--kernel")
        .arg(probe_path(PROBE))
        .args(["--mem", "64", "--cmdline", cmdline])
        .args(herd_args);
    let run = output(&mut herd);
    let _ = std::fs::remove_dir_all(&runtime);
    // The responder exits once it answered; if herd failed early, stop it.
    if run.as_ref().is_none_or(|r| !r.status.success()) {
        let _ = responder.0.kill();
    }
    let status = wait_until(&mut responder.0, Instant::now() + TIMEOUT);
    let log = format!(
        "responder {status:?}\n{}{}",
        reader.join().unwrap(),
        err.join().unwrap()
    );
    let Some(run) = run else {
        panic!("herd still running after {TIMEOUT:?}; killed\n{log}");
    };
    let field = |key: &str| {
        log.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(unhex)
            .collect::<Vec<_>>()
    };
    let host = HostSide {
        frames: field("frame "),
        pong: field("pong ").pop(),
        log,
    };
    (run, host)
}

/// devices::virtio::net::mac_from_name (the root package does not depend
/// on `devices`): 02 and five bytes of the name's FNV-1a 64-bit hash. A
/// copy on purpose: the derived MAC must stay stable across versions.
fn mac_from_name(name: &str) -> [u8; 6] {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let h = hash.to_le_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The checks every exchange shares: herd and the probe succeeded, the
/// guest had `mac`, its one frame was the ping, and the pong arrived
/// whole, spread over `buffers` receive buffers.
fn assert_ping_pong(run: &Run, host: &HostSide, mac: [u8; 6], mrg: bool, buffers: usize) {
    let ctx = || format!("{}\n--- host side ---\n{}", run.dump(), host.log);
    assert_eq!(run.status.code(), Some(0), "{}", ctx());
    assert!(run.has_line("probe: net ok"), "{}", ctx());
    assert!(!run.stdout.contains("probe: FAIL"), "{}", ctx());
    assert!(!run.stderr.contains("panicked"), "{}", ctx());
    let mac_line = format!(
        "probe: net mac={} mrg={} link=1",
        mac_string(&mac),
        u8::from(mrg)
    );
    assert!(run.has_line(&mac_line), "want {mac_line:?}\n{}", ctx());

    assert_eq!(host.frames.len(), 1, "one frame from the guest\n{}", ctx());
    let ping = &host.frames[0];
    assert_eq!(ping.len(), 60, "{}", ctx());
    assert_eq!(&ping[..6], &[0xff; 6], "broadcast\n{}", ctx());
    assert_eq!(&ping[6..12], &mac, "source MAC\n{}", ctx());
    assert_eq!(&ping[12..14], &[0x88, 0xb5], "{}", ctx());
    assert!(ping[14..].starts_with(b"herd-probe-ping\0"), "{}", ctx());
    assert!(run.has_line("probe: net sent 60 bytes"), "{}", ctx());

    let pong = host
        .pong
        .as_ref()
        .unwrap_or_else(|| panic!("no pong\n{}", ctx()));
    let rx = format!("probe: net rx {} bytes \"herd-host-pong\"", pong.len());
    assert!(run.has_line(&rx), "want {rx:?}\n{}", ctx());
    let detail = format!(
        "probe: net rx-detail buffers={buffers} fnv1a={:#x} ignored=",
        fnv1a32(pong)
    );
    assert!(
        run.lines().any(|l| l.starts_with(&detail)),
        "want {detail:?}…\n{}",
        ctx()
    );
}

#[test]
fn mergeable_rx_spreads_a_frame_over_small_buffers() {
    if skip_reason().is_some() {
        return;
    }
    let ns = Netns::new();
    let pong_len = 400;
    let rxbuf = 128;
    let (run, host) = exchange(
        &ns,
        &format!("probe.action=net probe.net_rxbuf={rxbuf}"),
        &["--name", "web1", "--net", &format!("tap={TAP}")],
        pong_len,
    );
    // num_buffers: header and frame, cut into 128-byte buffers.
    let buffers = (VNET_HDR_LEN + pong_len).div_ceil(rxbuf);
    assert_ping_pong(&run, &host, mac_from_name("web1"), true, buffers);
}

#[test]
fn without_mrg_rxbuf_a_full_frame_fits_one_buffer() {
    if skip_reason().is_some() {
        return;
    }
    let ns = Netns::new();
    let (run, host) = exchange(
        &ns,
        "probe.action=net probe.net_mrg=0",
        &[
            // Not web1: names are unique per host (jail directory) and
            // the other test may be running.
            "--name",
            "web2",
            "--net",
            &format!("tap={TAP},mac=02:aa:bb:cc:dd:ee"),
        ],
        1514,
    );
    assert_ping_pong(&run, &host, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], false, 1);
}

#[test]
fn garbage_tx_chains_are_dropped_and_the_next_frame_goes_out() {
    if skip_reason().is_some() {
        return;
    }
    let ns = Netns::new();
    // No --name: the MAC comes from the TAP's name.
    let (run, host) = exchange(
        &ns,
        "probe.action=net-garbage",
        &["--net", &format!("tap={TAP}")],
        60,
    );
    for case in ["oversized", "huge-len", "bad-addr", "write-only", "short"] {
        let line = format!("probe: net-garbage {case} returned len=0");
        assert!(
            run.has_line(&line),
            "want {line:?}\n{}\n--- host side ---\n{}",
            run.dump(),
            host.log
        );
    }
    // Exactly one frame (the ping) left the guest: none of the garbage.
    assert_ping_pong(&run, &host, mac_from_name(TAP), true, 1);
}

#[test]
fn looping_tx_chain_is_dropped() {
    if skip_reason().is_some() {
        return;
    }
    let ns = Netns::new();
    let (run, host) = exchange(
        &ns,
        "probe.action=net-garbage probe.net_loop=1",
        &["--net", &format!("tap={TAP}")],
        60,
    );
    assert!(
        run.has_line("probe: net-garbage loop returned len=0"),
        "{}\n--- host side ---\n{}",
        run.dump(),
        host.log
    );
    // The ping must be the only frame: "herd-probe-loop" never leaves.
    assert_ping_pong(&run, &host, mac_from_name(TAP), true, 1);
}
