//! Appliance disks with real Linux guests, inside the emulated test host
//! (QEMU TCG with nested KVM, see tests/support/testhost.rs; no /dev/kvm
//! needed here). One test-host boot runs every guest of the scenario below;
//! each test checks its part of it:
//!
//! - ten guests at once from ONE `base.erofs`, each with its own disk, each
//!   seeing only its own files in `/etc` and `/var`; they wait on their
//!   consoles until the test host has seen all ten waiting, then power off;
//! - the base image's sha256 is the same before, after, and on the outside;
//! - a restarted guest keeps its changes, a new disk sees the pristine base;
//! - `herd-reset-file` brings a changed base file back;
//! - a write to the read-only root fails in the guest, the image unchanged;
//! - a second herd is refused a writable disk that a running herd holds;
//! - data written and synced survives `kill -9` of herd.
//!
//! Guest disks are made here with `herd disk create` from small personality
//! directories; `/data/t.sh` (on every disk) is the guest side of each step.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::images::image_dir;
use crate::support::staging::{check, disk_create, write, TempDir};
use crate::support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

/// Guests started at once from the one base image.
const GUESTS: usize = 10;
const DISK_SIZE: &str = "16M";

/// The guest side of every step: `/data/t.sh STEP N` (busybox sh). Lines
/// start with `herd-test: `; whatever a test compares is printed as seen.
const GUEST_SCRIPT: &str = r#"# /data/t.sh STEP N: guest side of tests/appliance_disks/testhost.rs
say() { echo "herd-test: $*"; }
# names DIR PREFIX: the entries of DIR starting with PREFIX, space-separated
names() { ls -A "$1" | grep "^$2" | tr '\n' ' ' | sed 's/ $//'; }
testid() { cat /etc/herd-test-id 2>/dev/null || echo none; }
n=$2
case $1 in
conc)
	{ echo "$n" >/etc/herd-test-id && echo "$n" >"/var/herd-test-$n" && sync; } ||
		say "guest$n cannot write its files"
	say "guest$n id=$(testid) var=[$(names /var herd-test-)] host=$(hostname) mode=$(cat /run/herd/mode)"
	say "guest$n waiting"
	read -r go
	say "guest$n released by the test host: $go"
	;;
again)
	say "again id=$(testid) var=[$(names /var herd-test-)] host=$(hostname)"
	echo "changed by guest$n" >/etc/issue && sync
	say "again issue now [$(cat /etc/issue)]"
	;;
fresh)
	say "fresh id=$(testid) var=[$(names /var herd-test-)] host=$(hostname) mode=$(cat /run/herd/mode)"
	;;
reset)
	say "reset before issue=[$(cat /etc/issue)]"
	herd-reset-file --list | sed 's/^/herd-test: list /'
	herd-reset-file /etc/issue
	say "reset status=$?"
	if cmp -s /etc/issue /run/herd/base/etc/issue; then
		say "reset issue same as base"
	else
		say "reset issue still differs from base"
	fi
	say "reset after issue=[$(cat /etc/issue)] id=$(testid)"
	;;
rawwrite)
	say "rawwrite vda read-only flag=$(cat /sys/block/vda/ro)"
	dd if=/dev/urandom of=/dev/vda bs=512 seek=2 count=1 oflag=direct 2>&1 |
		grep -v records | sed 's/^/herd-test: /'
	/data/herd-rawwrite /dev/vda
	say "rawwrite tool exit=$?"
	say "rawwrite root still reads: $(head -n 1 /etc/issue)"
	;;
hold)
	say "holding the disk"
	read -r go
	say "hold released by the test host: $go"
	;;
kill9)
	v=$(cat /proc/sys/kernel/random/uuid)
	echo "$v" >/data/survivor && echo "$v" >/etc/herd-survivor && sync && say "synced $v"
	sleep 600
	;;
survive)
	say "survivor data=$(cat /data/survivor 2>&1) etc=$(cat /etc/herd-survivor 2>&1)"
	;;
*) say "unknown step $1" ;;
esac
"#;

/// Tries to write the read-only root two ways: write(2), which the guest
/// kernel already refuses (the disk has VIRTIO_BLK_F_RO), and BLKZEROOUT,
/// which Linux 6.1 does not check against the read-only flag, so the write
/// reaches herd. Sector 2 holds the erofs superblock: were the write to
/// land, the base image's hash would change.
const RAWWRITE_C: &str = r#"
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	const char *dev = argc > 1 ? argv[1] : "/dev/vda";
	char buf[512];
	uint64_t range[2] = { 1024, 512 };
	int landed = 0, fd;

	setvbuf(stdout, NULL, _IONBF, 0);
	fd = open(dev, O_RDWR);
	if (fd < 0) {
		printf("herd-rawwrite: open %s read-write: %s\n", dev, strerror(errno));
		return 2;
	}
	if (pread(fd, buf, sizeof buf, 1024) != (ssize_t)sizeof buf) {
		printf("herd-rawwrite: read sector 2: %s\n", strerror(errno));
		return 2;
	}
	if (pwrite(fd, buf, sizeof buf, 1024) == (ssize_t)sizeof buf && fsync(fd) == 0) {
		printf("herd-rawwrite: write(2) sector 2: succeeded\n");
		landed = 1;
	} else {
		printf("herd-rawwrite: write(2) sector 2: failed: %s\n", strerror(errno));
	}
	if (ioctl(fd, BLKZEROOUT, range) == 0) {
		printf("herd-rawwrite: BLKZEROOUT sector 2: succeeded\n");
		landed = 1;
	} else {
		printf("herd-rawwrite: BLKZEROOUT sector 2: failed: %s\n", strerror(errno));
	}
	return landed;
}
"#;

/// The scenario. `boot NAME DISK STEP N`: `herd run` on the shared base
/// with one disk, the guest running `/data/t.sh STEP N`; `bg_boot OUT …`
/// the same in the background.
const SCRIPT: &str = r#"
export HERD_TIMEOUT=150
G=/guest
B=$G/base.erofs
say() { echo "disks-test: $*"; }
args() {
	echo "run --kernel $G/vmlinux --root $B --disk $G/$1 --mem 96"
}
boot() {
	run_guest "$1" $(args "$2") --cmdline "quiet herd.run=\"sh /data/t.sh $3 $4\""
}
bg_boot() {
	bg_guest "$2" "$1" herd $(args "$3") --cmdline "quiet herd.run=\"sh /data/t.sh $4 $5\""
}

say "base sha256 before $(sha256sum $B | cut -d' ' -f1)"

# 1. Ten guests at once, one base image, one disk each. Each waits on its
# console (a FIFO as herd's stdin) until the test host has seen all ten
# waiting, and only then powers off.
N="1 2 3 4 5 6 7 8 9 10"
# The next guest starts once the previous one reached init: ten early
# boots at once (VM exits by the thousand) made the emulated test host's
# own KVM crash now and then (guest-images/testhost/README.md).
for i in $N; do
	mkfifo /tmp/in$i
	CPU=$((i % 2)) bg_boot /tmp/out$i conc$i g$i.img conc $i 0<>/tmp/in$i &
	wait_for /tmp/out$i "herd-init: reached init" 60
done
t0=$(date +%s)
while :; do
	n=0 ended=0
	for i in $N; do
		grep -q "herd-test: guest$i waiting" /tmp/out$i 2>/dev/null && n=$((n + 1))
		[ -e /tmp/out$i.end ] && ended=$((ended + 1))
	done
	[ $n = 10 ] || [ $((n + ended)) -ge 10 ] || [ $(($(date +%s) - t0)) -ge 240 ] && break
	sleep 0.5
done
say "guests waiting at once: $n of 10, herd processes running: $(herd_pids /guest/g | wc -l) (after $(($(date +%s) - t0)) s)"
# Released one at a time, each once the previous has stopped: ten guests
# taking their console input and shutting down at the same instant made a
# guest triple-fault now and then under the emulated test host (its nested
# SVM under QEMU TCG; guest-images/testhost/README.md). They all ran at once
# above, which is what this checks.
for i in $N; do
	release /tmp/in$i
	n=0
	while [ ! -e /tmp/out$i.end ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
done
wait
for i in $N; do show conc$i /tmp/out$i; done

# 2. The same disk again: its changes are still there. A new disk: none.
boot again g1.img again 1
boot fresh fresh.img fresh 0
# 3. Reset the base file that `again` changed.
boot reset g1.img reset 1
# 4. Writes to the read-only root.
boot rawwrite g3.img rawwrite 3
# 5. A writable disk is locked while a VM uses it.
mkfifo /tmp/hold
bg_boot /tmp/hold.out lock-holder g2.img hold 2 0<>/tmp/hold &
wait_for /tmp/hold.out "herd-test: holding" 240 || say "lock-holder never held its disk"
boot lock-second g2.img conc 2 </dev/null
release /tmp/hold
wait
show lock-holder /tmp/hold.out
# 6. kill -9 herd once the guest has synced; boot the disk again.
bg_boot /tmp/kill.out kill9 g4.img kill9 4 </dev/null &
if wait_for /tmp/kill.out "herd-test: synced" 240; then
	p=$(herd_pids g4.img)
	say "kill -9 herd pid $p"
	kill -9 $p
else
	say "kill9 guest never synced"
fi
wait
show kill9 /tmp/kill.out
boot survive g4.img survive 4

say "base sha256 after $(sha256sum $B | cut -d' ' -f1)"
exit 0
"#;

/// `herd disk create` from a personality with hostname `host`, the guest
/// script and the raw-write tool.
fn make_disk(herd: &Path, work: &Path, tool: &Path, host: &str) -> Result<PathBuf, String> {
    let dir = work.join(format!("p-{host}"));
    write(&dir.join("config/hostname"), &format!("{host}\n"))?;
    write(&dir.join("data/t.sh"), GUEST_SCRIPT)?;
    fs::copy(tool, dir.join("data/herd-rawwrite")).map_err(|e| format!("copy tool: {e}"))?;
    let img = work.join(format!("{host}.img"));
    disk_create(herd, &dir, DISK_SIZE, &img)?;
    Ok(img)
}

struct Suite {
    result: ScenarioResult,
    /// sha256 of base.erofs on the outer machine.
    outer_sha: String,
}

fn setup() -> Result<Suite, String> {
    TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
    let kernel = image_dir("kernel")?;
    let base = image_dir("base")?;
    let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
    let work =
        TempDir(std::env::temp_dir().join(format!("herd-appliance-disks-{}", std::process::id())));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0).map_err(|e| format!("{}: {e}", work.0.display()))?;

    let src = work.0.join("herd-rawwrite.c");
    write(&src, RAWWRITE_C)?;
    let tool = work.0.join("herd-rawwrite");
    check(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-o"])
            .arg(&tool)
            .arg(&src),
    )?;

    let base_img = base.join("base.erofs");
    let outer_sha = check(Command::new("sha256sum").arg(&base_img))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();

    let mut sc = Scenario::new("appliance_disks", SCRIPT)
        .herd(herd)
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base_img, "base.erofs")
        .timeout(Duration::from_secs(600));
    for i in 1..=GUESTS {
        let img = make_disk(herd, &work.0, &tool, &format!("guest{i}"))?;
        sc = sc.file(&img, &format!("g{i}.img"));
    }
    let fresh = make_disk(herd, &work.0, &tool, "fresh")?;
    sc = sc.file(&fresh, "fresh.img");
    sc.mem_mib = 3072;
    Ok(Suite {
        result: sc.run(),
        outer_sha,
    })
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Result<Suite, String>> = OnceLock::new();
    shared(&SUITE, "appliance_disks", setup)
}

/// The named run; it must have ended, and not by HERD_TIMEOUT.
fn run(name: &str) -> GuestRun<'static> {
    suite().result.finished_run(name)
}

/// The text after `prefix` on the first line of run `r` that has it.
fn after<'a>(r: &'a GuestRun, prefix: &str) -> &'a str {
    let line = r.assert_contains(prefix);
    let at = line.find(prefix).unwrap_or(0) + prefix.len();
    line[at..].trim()
}

/// `disks-test: TEXT…` printed by the scenario itself.
fn scenario_line(prefix: &str) -> &'static str {
    let res = &suite().result;
    let want = format!("disks-test: {prefix}");
    res.lines
        .iter()
        .find_map(|l| l.split_once(&want).map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| res.fail(&format!("the scenario never printed {want:?}")))
}

#[test]
fn ten_guests_run_at_once_from_one_base_each_seeing_only_its_own_files() {
    let res = &suite().result;
    for i in 1..=GUESTS {
        let r = run(&format!("conc{i}"));
        let seen = after(&r, &format!("herd-test: guest{i} id="));
        let want = format!("{i} var=[herd-test-{i}] host=guest{i} mode=overlay");
        if seen != want {
            r.fail(&format!(
                "guest {i} saw `id={seen}`, expected `id={want}` (only its own /etc and /var files)"
            ));
        }
        r.assert_contains(&format!("herd-test: guest{i} released by the test host"));
        r.assert_exit(0);
    }
    // Every guest was waiting on its console when the test host counted:
    // all ten herds ran at the same time.
    let line = scenario_line("guests waiting at once:");
    eprintln!("appliance_disks: guests waiting at once: {line}");
    if line.split(" (after").next() != Some("10 of 10, herd processes running: 10") {
        res.fail(&format!(
            "expected all 10 guests waiting and 10 herd processes at once, got `{line}`"
        ));
    }
}

#[test]
fn the_shared_base_image_is_never_modified() {
    let s = suite();
    let before = scenario_line("base sha256 before");
    let after = scenario_line("base sha256 after");
    eprintln!(
        "appliance_disks: base.erofs sha256 outside {} / test host before {before} / after {after}",
        s.outer_sha
    );
    if before != s.outer_sha || after != s.outer_sha {
        s.result.fail(&format!(
            "base.erofs changed: outside {}, in the test host before {before}, after {after}",
            s.outer_sha
        ));
    }
}

#[test]
fn a_restarted_guest_keeps_its_changes() {
    let r = run("again");
    let seen = after(&r, "herd-test: again id=");
    if seen != "1 var=[herd-test-1] host=guest1" {
        r.fail(&format!(
            "after a restart guest1 saw `id={seen}`, expected its own files from the first boot"
        ));
    }
    r.assert_exit(0);
}

#[test]
fn a_new_disk_sees_the_pristine_base() {
    let r = run("fresh");
    let seen = after(&r, "herd-test: fresh id=");
    if seen != "none var=[] host=fresh mode=overlay" {
        r.fail(&format!(
            "a new disk saw `id={seen}`, expected no file of any other guest"
        ));
    }
    r.assert_exit(0);
}

#[test]
fn herd_reset_file_restores_a_changed_base_file() {
    let changed = run("again");
    changed.assert_contains("herd-test: again issue now [changed by guest1]");
    let r = run("reset");
    // The change made in the previous boot is persistent…
    r.assert_contains("herd-test: reset before issue=[changed by guest1]");
    if !r
        .lines
        .iter()
        .any(|l| l.contains("herd-test: list changed") && l.ends_with("/etc/issue"))
    {
        r.fail("herd-reset-file --list does not list /etc/issue as changed");
    }
    // …and resetting it gives the base version back, keeping other files.
    r.assert_contains("herd-test: reset status=0");
    r.assert_contains("herd-test: reset issue same as base");
    let after_reset = after(&r, "herd-test: reset after issue=");
    if !after_reset.starts_with("[Herd base") || !after_reset.ends_with("id=1") {
        r.fail(&format!(
            "after the reset: `{after_reset}`, expected the base's /etc/issue and the guest's own id file"
        ));
    }
    r.assert_exit(0);
}

/// A Linux guest never gets a write to the root as far as herd: herd
/// offers the root with VIRTIO_BLK_F_RO, so the guest's block layer marks
/// it read-only and refuses write(2), mmap and BLKZEROOUT itself (EPERM;
/// Linux 6.1 checks every path a user can reach). Should a write get
/// through (herd no longer offering read-only), herd must fail it with an
/// I/O error and log it; herd's side alone is also driven by the probe
/// guest in `local` (`reads_writes_flushes_and_serials_reach_the_image_files`).
/// Either way the image stays unchanged (`the_shared_base_image_is_never_modified`,
/// sector 2 holds the erofs superblock).
#[test]
fn writes_to_the_read_only_root_fail_in_the_guest() {
    let r = run("rawwrite");
    r.assert_contains("herd-test: rawwrite vda read-only flag=1");
    let warned = r
        .find("guest wrote to read-only disk /guest/base.erofs")
        .is_some();
    for what in [
        "dd: error writing",
        "herd-rawwrite: write(2) sector 2: failed: ",
        "herd-rawwrite: BLKZEROOUT sector 2: failed: ",
    ] {
        let line = r.assert_contains(what);
        let refused_by_guest = line.ends_with("Operation not permitted");
        let failed_by_herd = line.ends_with("Input/output error") && warned;
        if !(refused_by_guest || failed_by_herd) {
            r.fail(&format!(
                "write to the read-only root: {line:?}; expected the guest kernel to refuse it \
                 (EPERM) or herd to fail it with an I/O error and log it"
            ));
        }
    }
    if let Some(l) = r.find("succeeded") {
        r.fail(&format!("a write to the read-only root succeeded: {l}"));
    }
    r.assert_contains("herd-test: rawwrite tool exit=0");
    r.assert_contains("herd-test: rawwrite root still reads: Herd base");
    r.assert_exit(0);
}

#[test]
fn a_writable_disk_in_use_is_refused_to_a_second_herd() {
    let holder = run("lock-holder");
    holder.assert_contains("herd-test: holding the disk");
    let second = run("lock-second");
    second.assert_exit_nonzero();
    second.assert_contains("/guest/g2.img is already in use by another VM (locked)");
    if second.find("herd-init:").is_some() {
        second.fail("the second herd booted a guest on a disk that was in use");
    }
    // The holder was not disturbed and powered off normally afterwards.
    holder.assert_contains("herd-test: hold released by the test host");
    holder.assert_exit(0);
}

#[test]
fn synced_data_survives_kill_9_of_herd() {
    let killed = run("kill9");
    let value = after(&killed, "herd-test: synced ").to_string();
    // 128 + SIGKILL: herd really was killed, the guest did not just exit.
    killed.assert_exit(137);
    let r = run("survive");
    let seen = after(&r, "herd-test: survivor data=");
    if seen != format!("{value} etc={value}") {
        r.fail(&format!(
            "after kill -9 the guest read `data={seen}`, expected `{value}` in /data/survivor and /etc/herd-survivor"
        ));
    }
    r.assert_exit(0);
}
