//! Jailed Linux appliances inside the emulated test host (QEMU TCG with
//! nested KVM and a unified cgroup v2 hierarchy, see
//! tests/support/testhost.rs). One test-host boot runs the scenario below;
//! each test checks its part of it:
//!
//! - `web` (the shipped web personality: root image, data disk, NIC on a
//!   bridge) runs jailed and filtered by default (no flags); from outside, its VM process runs as
//!   the `herd` user in its own cgroup with the limits herd set, sees only
//!   the jail, has every thread under seccomp, and serves its page by IP;
//! - `hog`, a Linux guest that fills 200 MiB of tmpfs with memory.max at
//!   96 MiB, is killed by the kernel and herd says so (status 137) while
//!   `web` keeps serving;
//! - stopping `web` with SIGTERM removes its cgroup and jail directory.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::images::image_dir;
use support::staging::{check, disk_create, TempDir};
use support::testhost::{shared, GuestRun, Scenario, ScenarioResult};

const SCRIPT: &str = r#"
export HERD_TIMEOUT=240
say() { echo "jail-test: $*"; }
cd /guest || exit 1
mkfifo /tmp/web.in
herd net create appnet --subnet 10.20.0.1/24
say "net create status=$?"
CPU=0 bg_guest web /tmp/web herd run --name web --root base.erofs --disk web.img --kernel vmlinux --net tap=web,bridge=appnet 0<>/tmp/web.in &
wait_for /tmp/web "herd-init: ready" 180 || say "web never got ready"
sup=$(herd_pids "--name web")
vm=$(herd_vm "$sup")
say "supervisor=$sup vm=$vm"
say "vm Uid: $(awk '/^Uid:/ { print $2, $3, $4, $5 }' /proc/$vm/status)"
say "vm cgroup: $(cat /proc/$vm/cgroup)"
cg=/sys/fs/cgroup/herd/web
say "memory.max: $(cat $cg/memory.max)"
say "cpu.max: $(cat $cg/cpu.max)"
say "pids.max: $(cat $cg/pids.max)"
say "root: $(cd /proc/$vm/root && find . -path ./proc -prune -o -print | sort | tr '\n' ' ')"
say "seccomp: $(cat /proc/$vm/task/*/status | grep ^Seccomp: | tr -s '\t' ' ' | sort | uniq -c | tr -s ' \n' '  ')"
say "fds: $(for f in /proc/$vm/fd/*; do readlink $f; done | sort -u | tr '\n' ' ')"
timeout 30 wget -q -O /tmp/page http://10.20.0.2/
say "fetch before status=$?"

HERD_TIMEOUT=120 run_guest hog run --name hog --kernel vmlinux --initrd initrd.cpio.gz --mem 256 --memory-max 96 \
	--cmdline 'console=ttyS0 herd.run="mount -t tmpfs -o size=240m tmpfs /mnt && dd if=/dev/zero of=/mnt/fill bs=1M count=200 && echo hog-surviv$((0))ed"'
say "hog cgroup after: $([ -e /sys/fs/cgroup/herd/hog ] && echo present || echo removed)"

rm -f /tmp/page
timeout 30 wget -q -O /tmp/page http://10.20.0.2/
say "fetch after status=$?"
kill -TERM $sup
wait_for /tmp/web "VM stopped" 60 || say "web did not stop"
sleep 1
say "web cgroup after: $([ -e $cg ] && echo present || echo removed)"
say "web jail after: $([ -e /run/herd/.jail/web ] && echo present || echo removed)"
show web /tmp/web
exit 0
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn setup() -> Result<ScenarioResult, String> {
    let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
    let kernel = image_dir("kernel")?;
    let base = image_dir("base")?;
    let work = TempDir(std::env::temp_dir().join(format!("herd-jail-th-{}", std::process::id())));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0).map_err(|e| format!("{}: {e}", work.0.display()))?;
    let web = work.0.join("web");
    check(
        Command::new("cp")
            .arg("-a")
            .arg(repo().join("guest-images/personalities/web"))
            .arg(&web),
    )?;
    let img = work.0.join("web.img");
    disk_create(herd, &web, "16M", &img)?;
    let mut sc = Scenario::new("jail", SCRIPT)
        .herd(herd)
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base.join("base.erofs"), "base.erofs")
        .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
        .file(&img, "web.img")
        .timeout(Duration::from_secs(600));
    sc.mem_mib = 2048;
    Ok(sc.run())
}

fn suite() -> &'static ScenarioResult {
    static SUITE: OnceLock<Result<ScenarioResult, String>> = OnceLock::new();
    shared(&SUITE, "jail", setup)
}

/// The value of the scenario's line `jail-test: PREFIX…`.
fn line(prefix: &str) -> &'static str {
    let want = format!("jail-test: {prefix}");
    suite()
        .lines
        .iter()
        .find_map(|l| l.strip_prefix(&want))
        .unwrap_or_else(|| {
            suite().fail(&format!("the scenario never printed `jail-test: {prefix}`"))
        })
        .trim()
}

fn web() -> GuestRun<'static> {
    suite().finished_run("web")
}

#[test]
fn jailed_web_appliance_runs_as_herd_in_its_cgroup_and_serves() {
    let res = suite();
    if !line("vm Uid:").starts_with("998 998 998 998") {
        res.fail("the VM process does not run as the herd user (uid 998)");
    }
    if line("vm cgroup:") != "0::/herd/web" {
        res.fail("the VM process is not in cgroup /herd/web");
    }
    // --mem 128 (default) + 64 MiB allowance; 1 vCPU; 1 + 16 pids.
    if line("memory.max:") != (192u64 << 20).to_string() {
        res.fail("memory.max is not guest RAM + 64 MiB");
    }
    if line("cpu.max:") != "100000 100000" || line("pids.max:") != "17" {
        res.fail("cpu.max or pids.max wrong");
    }
    if line("fetch before status=") != "0" {
        res.fail("the jailed web appliance did not serve its page");
    }
    web().assert_contains("herd-init: ready");
}

#[test]
fn jailed_vm_sees_only_the_jail_and_holds_only_its_files() {
    let res = suite();
    let root = line("root:");
    for want in [
        "./dev/kvm",
        "./dev/net/tun",
        "/guest/web.img",
        "/guest/vmlinux",
    ] {
        if !root.contains(want) {
            res.fail(&format!("{want} missing from the VM's root: {root}"));
        }
    }
    if root.contains("./etc") || root.contains("./bin") || root.contains("./proc") {
        res.fail(&format!("host files visible in the jail: {root}"));
    }
    for fd in line("fds:").split_whitespace() {
        let ok = fd.starts_with("pipe:")
            || fd.starts_with("anon_inode:")
            || fd.starts_with("socket:")
            || [
                "/dev/kvm",
                "/dev/net/tun",
                "/guest/web.img",
                "/guest/base.erofs",
            ]
            .contains(&fd)
            // stdin and stdout/stderr, as the scenario redirected them.
            || fd.starts_with("/tmp/web")
            // Its runtime directory (console log, boot report) and its
            // own memory map in the jail's procfs (metrics).
            || fd.starts_with("/run/herd/web/")
            || fd.ends_with("/proc/1/smaps");
        if !ok {
            res.fail(&format!("the VM holds {fd} open"));
        }
    }
    let seccomp = line("seccomp:");
    if !seccomp.contains("Seccomp: 2") || seccomp.contains("Seccomp: 0") {
        res.fail(&format!("not every thread is filtered: {seccomp}"));
    }
}

#[test]
fn memory_hog_is_killed_by_the_kernel_and_the_neighbour_keeps_serving() {
    let res = suite();
    let hog = res.expect_run("hog");
    if hog.exit_code != Some(137) {
        hog.fail("herd did not exit 137 for an appliance the OOM killer struck");
    }
    hog.assert_contains("appliance hog was killed by the kernel's OOM killer");
    // The marker as printed, not as on the (echoed) kernel command line.
    if hog.find("hog-surviv0ed").is_some() {
        hog.fail("the guest filled 200 MiB under a 96 MiB memory.max");
    }
    if line("hog cgroup after:") != "removed" {
        res.fail("the hog's cgroup was left behind");
    }
    if line("fetch after status=") != "0" {
        res.fail("the neighbour stopped serving after the hog was killed");
    }
}

#[test]
fn stopping_removes_cgroup_and_jail_directory() {
    let res = suite();
    if line("web cgroup after:") != "removed" || line("web jail after:") != "removed" {
        res.fail("web's cgroup or jail directory outlived it");
    }
    if web().exit_code != Some(0) {
        web().fail("a jailed appliance stopped by SIGTERM did not exit 0");
    }
}
