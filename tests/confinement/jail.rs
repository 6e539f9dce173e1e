//! The jail, checked from outside as root: the VM process's root, ids,
//! capabilities, limits, mounts and open files; bad jail inputs; the
//! unprivileged line; joining a network namespace; early signals.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::support::herd_run::{self, drain};
use super::support::probes::{herd_bin, probe_path};
use super::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no failure modes.
    unsafe { libc::geteuid() == 0 }
}

/// The jail tests need root (herd jails only then) and the jail's user.
fn jail_testable() -> bool {
    if !kvm_present() {
        return false;
    }
    if !is_root() {
        herd_run::skip_notice("not root", "jail tests in confinement");
        return false;
    }
    let out = Command::new("id").arg("herd").output().expect("run id");
    assert!(
        out.status.success(),
        "the jail's user is missing: useradd --system --no-create-home --shell \
         /usr/sbin/nologin herd (.ci/run does this)"
    );
    true
}

fn status_field(pid: u32, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read status")
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn herd_ids() -> (String, String) {
    let id = |flag| {
        let out = Command::new("id").args([flag, "herd"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    (id("-u"), id("-g"))
}

/// Every entry under `dir`, as paths relative to it (not following
/// links or crossing into bound directories' contents).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .flatten()
        {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            // The jail's own procfs: only its own process, checked apart.
            let descend = rel != "proc";
            out.push(rel);
            if descend && e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn jailed_vm_sees_only_its_files_as_the_herd_user() {
    if !jail_testable() {
        return;
    }
    let dir = scratch("jail");
    let (ro, rw) = (dir.0.join("base.img"), dir.0.join("data.img"));
    fs::write(&ro, vec![0u8; 1 << 20]).unwrap();
    fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    let jail_dir = dir.0.join("jails");
    let mut herd = Spinning::start(&[
        "--jail-dir",
        jail_dir.to_str().unwrap(),
        "--file-size-limit",
        "64",
        "--disk",
        &format!("{}:ro", ro.display()),
        "--disk",
        rw.to_str().unwrap(),
    ]);
    let (herd_pid, vm) = (herd.pid(), vm_process(herd.pid()));
    let result = std::panic::catch_unwind(|| {
        assert_ne!(vm, herd_pid, "a jailed VM runs in a child of herd");
        // New PID namespace: the VM process is its pid 1.
        assert!(
            status_field(vm, "NSpid").ends_with("\t1"),
            "{}",
            status_field(vm, "NSpid")
        );
        let (uid, gid) = herd_ids();
        assert_eq!(status_field(vm, "Uid"), [uid.as_str(); 4].join("\t"));
        assert_eq!(status_field(vm, "Gid"), [gid.as_str(); 4].join("\t"));
        assert_eq!(status_field(vm, "Groups"), "");
        assert_eq!(status_field(vm, "CapEff"), "0000000000000000");
        assert_eq!(status_field(vm, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(vm, "NoNewPrivs"), "1");
        // rlimits: open files, file size (--file-size-limit), no core dumps.
        let limits = fs::read_to_string(format!("/proc/{vm}/limits")).unwrap();
        let limit = |name: &str| {
            let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(limit("Max open files"), "2048", "{limits}");
        assert_eq!(
            limit("Max file size"),
            (64u64 << 20).to_string(),
            "{limits}"
        );
        assert_eq!(limit("Max core file size"), "0", "{limits}");
        // A cleared environment, down to the strings herd started with.
        let environ = fs::read(format!("/proc/{vm}/environ")).unwrap();
        assert!(
            environ.iter().all(|&b| b == 0),
            "{}",
            String::from_utf8_lossy(&environ)
        );

        // Its root holds the VM's files and devices and nothing else.
        let root = PathBuf::from(format!("/proc/{vm}/root"));
        let kernel = probe_path(PROBE).canonicalize().unwrap();
        let mut want: Vec<String> = ["dev", "dev/kvm", "proc"].map(String::from).to_vec();
        for file in [
            &kernel,
            &ro.canonicalize().unwrap(),
            &rw.canonicalize().unwrap(),
        ] {
            let mut p = file.strip_prefix("/").unwrap().to_path_buf();
            loop {
                want.push(p.display().to_string());
                if !p.pop() || p.as_os_str().is_empty() {
                    break;
                }
            }
        }
        want.sort();
        want.dedup();
        assert_eq!(tree(&root), want);
        assert!(!root.join("etc/passwd").exists());
        // Its /proc shows its own process alone, and no kernel files.
        let procs: Vec<String> = fs::read_dir(root.join("proc"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.parse::<u32>().is_ok_and(|pid| pid == 1))
            .collect();
        let mut procs = procs;
        procs.sort();
        assert_eq!(procs, ["self", "thread-self"]);

        // Read-only where the VM only reads.
        let mounts = fs::read_to_string(format!("/proc/{vm}/mountinfo")).unwrap();
        let opts = |path: &Path| {
            let path = path.canonicalize().unwrap();
            mounts
                .lines()
                .find(|l| l.split_whitespace().nth(4) == path.to_str())
                .map(|l| l.split_whitespace().nth(5).unwrap().to_owned())
                .unwrap_or_else(|| panic!("{} not mounted in the jail:\n{mounts}", path.display()))
        };
        assert!(opts(&ro).starts_with("ro,"), "{}", opts(&ro));
        assert!(opts(&kernel).starts_with("ro,"), "{}", opts(&kernel));
        assert!(opts(&rw).starts_with("rw,"), "{}", opts(&rw));

        // No host file open but the VM's own.
        let allowed = [ro.canonicalize().unwrap(), rw.canonicalize().unwrap()];
        for fd in fs::read_dir(format!("/proc/{vm}/fd")).unwrap().flatten() {
            let target = fs::read_link(fd.path()).unwrap();
            let t = target.display().to_string();
            let ok = t.starts_with("pipe:")
                || t.starts_with("anon_inode:")
                || t.starts_with("socket:")
                || t == "/dev/null"
                || t == "/dev/kvm"
                // Its own memory map, in the jail's procfs (metrics).
                || t.ends_with("/proc/1/smaps")
                || allowed.contains(&target);
            assert!(ok, "fd {:?} -> {t}", fd.file_name());
        }
    });
    let out = herd.finish();
    if let Err(panic) = result {
        eprintln!("{out}");
        std::panic::resume_unwind(panic);
    }
    let left: Vec<_> = fs::read_dir(&jail_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "jail directory left behind: {left:?}\n{out}"
    );
}

fn herd_fails(extra: &[&str]) -> support::herd_run::Run {
    herd_run::run_with_timeout(
        herd_cmd("exit:0", extra),
        TIMEOUT,
        "herd with bad jail input",
    )
}

fn assert_bad_input(run: &support::herd_run::Run, want: &str) {
    assert_eq!(run.code(), Some(2), "{}", run.dump());
    assert!(run.stderr.contains(want), "want {want:?}\n{}", run.dump());
    assert!(
        !run.stdout.contains("probe:"),
        "the VM started\n{}",
        run.dump()
    );
}

#[test]
fn unknown_jail_user_is_a_clear_error() {
    if !jail_testable() {
        return;
    }
    let run = herd_fails(&["--jail-user", "no-such-herd-user"]);
    assert_bad_input(&run, "user \"no-such-herd-user\" does not exist: create");
}

#[test]
fn cgroup_parent_that_is_not_a_cgroup_is_a_clear_error() {
    if !jail_testable() {
        return;
    }
    let dir = scratch("cgroup");
    let run = herd_fails(&["--cgroup-parent", dir.0.join("herd").to_str().unwrap()]);
    assert_bad_input(&run, "not a cgroup v2 directory");
    // A cgroup v2 directory without the controllers (a hybrid host's
    // unified hierarchy, as on our CI machine) is refused the same way.
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.controllers").exists()
        && !fs::read_to_string(hybrid.join("cgroup.controllers"))
            .unwrap()
            .contains("memory")
    {
        let run = herd_fails(&["--cgroup-parent", "/sys/fs/cgroup/unified/herd"]);
        assert_bad_input(&run, "does not offer the memory, cpu, pids controller(s)");
    }
}

#[test]
fn live_jail_directory_is_refused() {
    if !jail_testable() {
        return;
    }
    let dir = scratch("live");
    let jails = dir.0.join("jails");
    let jails = jails.to_str().unwrap();
    // Two runtime directories (so the name's own lock does not refuse the
    // second first), one jail directory.
    let with_runtime = |mut cmd: Command, which: &str| {
        cmd.env("HERD_RUNTIME", dir.0.join(which));
        cmd
    };
    let mut first = Spinning::spawn(with_runtime(
        herd_cmd("spin", &["--name", "twin", "--jail-dir", jails]),
        "run-a",
    ));
    let second = || {
        herd_run::run_with_timeout(
            with_runtime(
                herd_cmd("exit:0", &["--name", "twin", "--jail-dir", jails]),
                "run-b",
            ),
            TIMEOUT,
            "a second twin",
        )
    };
    let run = second();
    let out = first.finish();
    assert_bad_input(&run, "belongs to a running appliance named \"twin\"");
    // Once the first is gone the name is free again.
    let run = second();
    assert_eq!(run.code(), Some(0), "{}\n{out}", run.dump());
}

#[test]
fn kernel_that_cannot_be_bound_is_a_clear_error() {
    if !jail_testable() {
        return;
    }
    // A kernel inside the jail's own mount point is hidden by the jail's
    // tmpfs, so it cannot be bound into it.
    let dir = scratch("unbindable");
    let root = dir.0.join("jails/hidden/root");
    fs::create_dir_all(&root).unwrap();
    let kernel = root.join("kernel.elf");
    fs::copy(probe_path(PROBE), &kernel).unwrap();
    let mut cmd = Command::new(herd_bin());
    cmd.args(["run", "--name", "hidden", "--jail-dir"])
        .env("HERD_RUNTIME", dir.0.join("run"))
        .arg(dir.0.join("jails"))
        .arg("--kernel")
        .arg(&kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = herd_run::run_with_timeout(cmd, TIMEOUT, "herd with an unbindable kernel");
    assert_bad_input(&run, &format!("cannot bind {}", kernel.display()));
}

#[test]
fn unprivileged_herd_says_once_that_the_jail_needs_root() {
    if !jail_testable() {
        return;
    }
    // As the herd user (no root, no capabilities). /dev/kvm may well be
    // root-only here, so the VM itself may not start; the line must come
    // first either way.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=herd", "--regid=herd", "--clear-groups", "--"])
        .arg(herd_bin())
        .args(["run", "--kernel"])
        .arg(probe_path(PROBE))
        .args(["--cmdline", "probe.action=exit:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = herd_run::run_with_timeout(cmd, TIMEOUT, "herd as the herd user");
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("jail")).collect();
    assert_eq!(
        lines,
        [
            "herd: jail off: namespaces, a cgroup and a uid drop need root; running \
             unjailed, under seccomp only (--no-jail silences this)"
        ],
        "{}",
        run.dump()
    );
    let kvm_usable = run.code() == Some(0);
    assert!(
        kvm_usable || run.stderr.contains("cannot open /dev/kvm"),
        "{}",
        run.dump()
    );
}

/// A network namespace made for one test, removed on drop.
struct TestNetns(String);

impl TestNetns {
    fn new(tag: &str) -> TestNetns {
        let name = format!("herd-cf-{tag}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(ok.is_ok_and(|s| s.success()), "ip netns add {name}");
        TestNetns(name)
    }

    fn has_link(&self, link: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "ip", "link", "show", link])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn jail_joins_the_given_network_namespace() {
    if !jail_testable() {
        return;
    }
    let ns = TestNetns::new("ns");
    let tap = format!("cf{}", std::process::id() % 100_000);
    let mut herd = Spinning::start(&[
        "--netns",
        &format!("/run/netns/{}", ns.0),
        "--net",
        &format!("tap={tap}"),
    ]);
    // herd made the TAP inside the namespace it joined, not on the host.
    let (in_ns, on_host) = (
        ns.has_link(&tap),
        Path::new("/sys/class/net").join(&tap).exists(),
    );
    let out = herd.finish();
    assert!(
        in_ns && !on_host,
        "TAP {tap}: in netns {in_ns}, on host {on_host}\n{out}"
    );
}

#[test]
fn sigterm_right_after_start_stops_a_jailed_herd() {
    if !jail_testable() {
        return;
    }
    // The jailed VM process is pid 1 of its namespace, which drops signals
    // it has no handler for yet: an early SIGTERM must still stop it.
    for delay_ms in [1, 3, 10, 30] {
        let mut child = herd_cmd("spin", &[]).spawn().expect("spawn herd");
        let out = drain(child.stdout.take().expect("stdout"));
        let err = drain(child.stderr.take().expect("stderr"));
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = herd_run::wait_until(
            &mut child,
            std::time::Instant::now() + Duration::from_secs(5),
        );
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        assert!(
            status.is_some(),
            "SIGTERM {delay_ms} ms after start was lost\n{out}\n{err}"
        );
    }
}
