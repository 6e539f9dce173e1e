//! Appliance networking with real Linux guests, inside the emulated test
//! host (QEMU TCG with nested KVM, see tests/support/testhost.rs; no
//! /dev/kvm needed here). One test-host boot runs the whole scenario below;
//! each test checks its part of it:
//!
//! - the README's "Two appliances on one network" commands, run as written
//!   there: `herd net create appnet`, then `web` (the shipped web
//!   personality) and `db` on that bridge;
//! - the test host fetches web's page by IP through the bridge;
//! - web and db ping each other and fetch each other's page by hostname
//!   (from `config/hosts` on their disks), typed into their console shells;
//! - a third guest on the bridge sends oversized pings and a burst of junk
//!   frames (runts, random bytes, broken IPv4, UDP to web, frames up to the
//!   largest the guest can send, garbage virtio-net headers), after which
//!   web and db still serve each other and the host, and all three herds
//!   power off with status 0.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::images::image_dir;
use crate::support::staging::{check, disk_create, write, TempDir};
use crate::support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

const DISK_SIZE: &str = "16M";
/// Page served by the db appliance.
const DB_PAGE: &str = "db appliance page";

/// Typed into web's and db's console shells: `sh /data/net.sh PEER ROUND`.
/// The markers it prints never appear literally in the typed line (the
/// console echoes input), so a test cannot match its own typing.
const NET_SH: &str = r#"# /data/net.sh PEER ROUND: guest side of tests/appliance_net/testhost.rs
# (busybox wget -T crashes in busybox 1.35: timeout bounds it instead)
peer=$1 round=$2
say() { echo "net-test: $(hostname) round$round $*"; }
say "hosts entry for $peer: $(grep -w "$peer" /etc/hosts | tr -s ' \t' ' ')"
r=$(ping -c 3 -W 5 "$peer" 2>&1 | grep -c 'bytes from')
say "ping $peer replies=$r"
rm -f /tmp/page
if timeout 20 wget -q -O /tmp/page "http://$peer/"; then
	say "fetched http://$peer/: $(tr -d '\n' </tmp/page)"
else
	say "fetch http://$peer/ failed"
fi
say "done"
"#;

/// The junk guest's `herd.run`.
const JUNK_SH: &str = r#"# /data/junk.sh: guest side of tests/appliance_net/testhost.rs
say() { echo "junk-test: $*"; }
ping -c 2 -W 5 web >/dev/null 2>&1
say "ping web before: status $?"
mac=$(awk '$1 == "10.20.0.2" { print $4 }' /proc/net/arp)
say "web has MAC $mac"
# virtio-net lets the guest raise its MTU to 65535: frames up to 65549 bytes.
ip link set eth0 mtu 65535
say "mtu now $(cat /sys/class/net/eth0/mtu)"
ping -c 3 -s 65000 -W 3 10.20.0.1 2>&1 | grep -E 'transmitted|bad' | sed 's/^/junk-test: 65000-byte ping to the host: /'
ping -c 3 -s 65000 -W 3 web 2>&1 | grep -E 'transmitted|bad' | sed 's/^/junk-test: 65000-byte ping to web: /'
/data/herd-junk eth0 "${mac:-ff:ff:ff:ff:ff:ff}" 10.20.0.2 20
say "herd-junk exit=$?"
ip link set eth0 mtu 1500
ping -c 2 -W 5 web >/dev/null 2>&1
say "ping web after: status $?"
"#;

/// herd-junk IFACE DST-MAC DST-IP SECONDS: raw frames through an AF_PACKET
/// socket for SECONDS (or 6000 frames), cycling through kinds of junk; one
/// summary line per kind. Exit 0 if at least one frame of each kind the
/// guest kernel lets through went out.
const JUNK_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { RUNT, RANDOM, BAD_IPV4, UDP, OVERSIZE, VNET_HDR, KINDS };
static const char *names[KINDS] = {
	"runt frames (14-59 bytes, broadcast)",
	"random bytes (60-1514, random destination)",
	"broken IPv4 headers to web",
	"UDP to web on random ports",
	"oversized frames (1515-65549 bytes)",
	"garbage virtio-net headers (GSO/checksum offload)",
};
static unsigned long sent[KINDS], failed[KINDS];
static int last_err[KINDS];
static unsigned char buf[80000];
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fill(unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)rnd();
}

static uint16_t csum(const unsigned char *p, size_t n)
{
	uint32_t s = 0;
	for (size_t i = 0; i + 1 < n; i += 2)
		s += (uint32_t)(p[i] << 8 | p[i + 1]);
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

int main(int argc, char **argv)
{
	unsigned char dst[6], me[6];
	struct ifreq ifr;
	struct sockaddr_ll sll;
	int raw, vnet, one = 1, secs;
	uint32_t dip;
	time_t end;
	unsigned long i;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc != 5 || sscanf(argv[2], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &dst[0], &dst[1],
				&dst[2], &dst[3], &dst[4], &dst[5]) != 6) {
		printf("usage: herd-junk IFACE DST-MAC DST-IP SECONDS\n");
		return 2;
	}
	dip = inet_addr(argv[3]);
	secs = atoi(argv[4]);
	raw = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	vnet = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (raw < 0 || vnet < 0) {
		printf("herd-junk: packet socket: %s\n", strerror(errno));
		return 2;
	}
	if (setsockopt(vnet, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) != 0)
		printf("herd-junk: PACKET_VNET_HDR: %s\n", strerror(errno));
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", argv[1]);
	if (ioctl(raw, SIOCGIFHWADDR, &ifr) != 0) {
		printf("herd-junk: %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	memcpy(me, ifr.ifr_hwaddr.sa_data, 6);
	memset(&sll, 0, sizeof sll);
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = (int)if_nametoindex(argv[1]);
	sll.sll_halen = 6;

	end = time(NULL) + secs;
	for (i = 0; i < 6000 && time(NULL) < end; i++) {
		int kind = (int)(i % KINDS), fd = raw;
		unsigned char *f = buf;
		size_t len;

		switch (kind) {
		case RUNT:
			len = 14 + rnd() % 46;
			fill(f, len);
			memset(f, 0xff, 6);
			break;
		case RANDOM:
			len = 60 + rnd() % (1514 - 60 + 1);
			fill(f, len);
			break;
		case BAD_IPV4:
			len = 34 + rnd() % (1514 - 34 + 1);
			fill(f, len);
			memcpy(f, dst, 6);
			f[12] = 0x08, f[13] = 0x00;
			f[14] = (unsigned char)(0x40 | (rnd() & 0x0f)); /* any IHL */
			memcpy(f + 30, &dip, 4);
			break;
		case UDP: {
			size_t payload = rnd() % 1473;
			len = 14 + 20 + 8 + payload;
			fill(f, len);
			memcpy(f, dst, 6);
			f[12] = 0x08, f[13] = 0x00;
			f[14] = 0x45, f[15] = 0;
			f[16] = (unsigned char)((len - 14) >> 8), f[17] = (unsigned char)(len - 14);
			f[20] = 0x40, f[21] = 0; /* DF */
			f[22] = 64, f[23] = 17;
			f[24] = f[25] = 0;
			f[26] = 10, f[27] = 20, f[28] = 0, f[29] = 9;
			memcpy(f + 30, &dip, 4);
			uint16_t c = csum(f + 14, 20);
			f[24] = (unsigned char)(c >> 8), f[25] = (unsigned char)c;
			f[38] = (unsigned char)((8 + payload) >> 8), f[39] = (unsigned char)(8 + payload);
			f[40] = f[41] = 0; /* no UDP checksum */
			break;
		}
		case OVERSIZE:
			len = 1515 + rnd() % (65549 - 1515 + 1);
			fill(f, len);
			memcpy(f, (i / KINDS) % 2 ? dst : (const unsigned char *)"\xff\xff\xff\xff\xff\xff", 6);
			break;
		default: /* VNET_HDR: 10-byte virtio_net_hdr, then a frame */
			fd = vnet;
			len = 10 + 14 + rnd() % ((i / KINDS) % 4 ? 1500 : 70000);
			fill(f, len);
			f[0] &= 1;                                          /* NEEDS_CSUM or not */
			f[1] = (unsigned char[]){ 0, 1, 3, 4, 0x81 }[rnd() % 5]; /* GSO type */
			memcpy(f + 10, dst, 6);
			memcpy(f + 16, me, 6);
			f[22] = 0x08, f[23] = 0x00;
			break;
		}
		if (kind != VNET_HDR && kind != RANDOM && kind != RUNT)
			memcpy(f + 6, me, 6);
		if (sendto(fd, f, len, 0, (struct sockaddr *)&sll, sizeof sll) == (ssize_t)len) {
			sent[kind]++;
		} else {
			failed[kind]++;
			last_err[kind] = errno;
		}
	}
	int gaps = 0;
	unsigned long total = 0;
	for (int k = 0; k < KINDS; k++) {
		printf("herd-junk: %s: sent %lu, refused by the guest kernel %lu%s%s\n", names[k],
		       sent[k], failed[k], failed[k] ? ", last error: " : "",
		       failed[k] ? strerror(last_err[k]) : "");
		total += sent[k];
		gaps += sent[k] == 0;
	}
	printf("herd-junk: sent %lu junk frames in total\n", total);
	return gaps ? 1 : 0;
}
"#;

/// The scenario. The three lines marked README are the commands of
/// README.md's "Two appliances on one network" (the test
/// `readme_network_commands_are_the_ones_tested` holds them to it), run in
/// /guest where the images are, each appliance's console on a FIFO so the
/// scenario can type into its shell.
const SCRIPT: &str = r#"
export HERD_TIMEOUT=240
say() { echo "net-test: $*"; }
# type_in NAME LINE: a line on that appliance's console (FIFO opened read-write: never blocks)
type_in() { echo "$2" 1<>"/tmp/$1.in"; }
# host_fetch ROUND: the test host fetches web's page by IP
host_fetch() {
	rm -f /tmp/page
	timeout 30 wget -q -O /tmp/page http://10.20.0.2/
	say "host round$1 fetch status=$?"
	sed "s/^/net-test: host round$1 page: /" /tmp/page
}
# serving ADDRESS SECONDS: until ADDRESS answers HTTP. herd-init says
# "ready" once it has started the services, not once they listen: the
# first fetch waits for web's httpd, bounded.
serving() {
	_t0=$(date +%s)
	until timeout 3 wget -q -O /dev/null "http://$1/" 2>/dev/null; do
		[ $(($(date +%s) - _t0)) -ge "$2" ] && return 1
		sleep 0.5
	done
	say "web serving $(($(date +%s) - _t0)) s after ready"
}
# round N: web and db ping and fetch each other by name
round() {
	type_in web "sh /data/net.sh db $1"
	type_in db "sh /data/net.sh web $1"
	wait_for /tmp/web "net-test: web round$1 done" 90 || say "web never finished round $1"
	wait_for /tmp/db "net-test: db round$1 done" 90 || say "db never finished round $1"
}

cd /guest || exit 1
mkfifo /tmp/web.in /tmp/db.in
herd net create appnet --subnet 10.20.0.1/24 # README
say "net create status=$?"
CPU=0 bg_guest web /tmp/web herd run --name web --root base.erofs --disk web.img --kernel vmlinux --net tap=web,bridge=appnet 0<>/tmp/web.in & # README
CPU=1 bg_guest db /tmp/db herd run --name db  --root base.erofs --disk db.img  --kernel vmlinux --net tap=db,bridge=appnet 0<>/tmp/db.in & # README
wait_for /tmp/web "herd-init: ready" 180 || say "web never got ready"
wait_for /tmp/db "herd-init: ready" 180 || say "db never got ready"
say "bridge appnet: $(ls /sys/class/net/appnet/brif | tr '\n' ' ')"

serving 10.20.0.2 60 || say "web never served its page"
host_fetch 1
round 1

run_guest junk run --name junk --root base.erofs --disk junk.img --kernel vmlinux \
	--net tap=junk,bridge=appnet --cmdline 'quiet herd.run="sh /data/junk.sh"' </dev/null
say "after junk: web herd pids [$(herd_pids web.img)] db herd pids [$(herd_pids db.img)]"

host_fetch 2
round 2

type_in web poweroff
type_in db poweroff
wait
show web /tmp/web
show db /tmp/db
herd net rm appnet
say "net rm status=$?"
exit 0
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `dir` as a personality: hostname, static address, hosts lines, services.
fn personality(
    dir: &Path,
    host: &str,
    addr: &str,
    hosts: &str,
    services: &str,
) -> Result<(), String> {
    write(&dir.join("config/hostname"), &format!("{host}\n"))?;
    write(
        &dir.join("config/network"),
        &format!("ADDRESS={addr}/24\nGATEWAY=10.20.0.1\nDNS=10.20.0.1\n"),
    )?;
    write(&dir.join("config/hosts"), hosts)?;
    write(&dir.join("config/services"), services)?;
    write(&dir.join("data/net.sh"), NET_SH)
}

struct Suite {
    result: ScenarioResult,
    /// The shipped web personality's page, as the test host should get it.
    web_page: String,
}

fn setup() -> Result<Suite, String> {
    TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
    let kernel = image_dir("kernel")?;
    let base = image_dir("base")?;
    let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
    let work =
        TempDir(std::env::temp_dir().join(format!("herd-appliance-net-{}", std::process::id())));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0).map_err(|e| format!("{}: {e}", work.0.display()))?;

    // web: the shipped personality as it is, plus db in its hosts file.
    let shipped = repo().join("guest-images/personalities/web");
    let web = work.0.join("web");
    check(Command::new("cp").arg("-a").arg(&shipped).arg(&web))?;
    let hosts =
        fs::read_to_string(web.join("config/hosts")).map_err(|e| format!("web hosts: {e}"))?;
    write(
        &web.join("config/hosts"),
        &format!("{hosts}10.20.0.3\tdb\n"),
    )?;
    write(&web.join("data/net.sh"), NET_SH)?;
    let web_page = fs::read_to_string(web.join("data/www/index.html"))
        .map_err(|e| format!("web index.html: {e}"))?;

    let db = work.0.join("db");
    personality(
        &db,
        "db",
        "10.20.0.3",
        "10.20.0.1\tgateway\n10.20.0.2\tweb\n",
        "httpd busybox httpd -f -vv -p 80 -h /data/www\n",
    )?;
    write(&db.join("data/www/index.html"), &format!("{DB_PAGE}\n"))?;

    let junk = work.0.join("junk");
    personality(&junk, "junk", "10.20.0.9", "10.20.0.2\tweb\n", "")?;
    write(&junk.join("data/junk.sh"), JUNK_SH)?;
    let src = work.0.join("herd-junk.c");
    write(&src, JUNK_C)?;
    check(
        Command::new("gcc")
            .args(["-static", "-Os", "-s", "-Wall", "-o"])
            .arg(junk.join("data/herd-junk"))
            .arg(&src),
    )?;

    let mut sc = Scenario::new("appliance_net", SCRIPT)
        .herd(herd)
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base.join("base.erofs"), "base.erofs")
        .timeout(Duration::from_secs(600));
    for name in ["web", "db", "junk"] {
        let img = work.0.join(format!("{name}.img"));
        disk_create(herd, &work.0.join(name), DISK_SIZE, &img)?;
        sc = sc.file(&img, &format!("{name}.img"));
    }
    sc.mem_mib = 2048;
    Ok(Suite {
        result: sc.run(),
        web_page,
    })
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Result<Suite, String>> = OnceLock::new();
    shared(&SUITE, "appliance_net", setup)
}

/// The named run; it must have ended, and not by HERD_TIMEOUT.
fn run(name: &str) -> GuestRun<'static> {
    suite().result.finished_run(name)
}

/// Lines `net-test: PREFIX…` the scenario printed itself, prefix removed.
fn scenario_lines(prefix: &str) -> Vec<&'static str> {
    let want = format!("net-test: {prefix}");
    suite()
        .result
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix(&want))
        .collect()
}

fn scenario_line(prefix: &str) -> &'static str {
    scenario_lines(prefix).first().copied().unwrap_or_else(|| {
        suite()
            .result
            .fail(&format!("the scenario never printed `net-test: {prefix}`"))
    })
}

/// The host fetched web's page by IP in `round`, and got the shipped page.
fn assert_host_fetch(round: u32) {
    let s = suite();
    let status = scenario_line(&format!("host round{round} fetch status="));
    let page = scenario_lines(&format!("host round{round} page: ")).join("\n");
    let want = s.web_page.trim_end();
    if status != "0" || page != want {
        s.result.fail(&format!(
            "round {round}: the test host's `wget http://10.20.0.2/` exited {status} and got {page:?}, expected {want:?}"
        ));
    }
}

/// `me` pinged and fetched `peer` by name in `round`.
fn assert_peer_round(me: &str, peer: &str, page: &str, round: u32) {
    let r = run(me);
    let tag = format!("net-test: {me} round{round} ");
    let hosts = r.assert_contains(&format!("{tag}hosts entry for {peer}: "));
    if !hosts.trim_end().ends_with(&format!(" {peer}")) {
        r.fail(&format!(
            "{me} has no /etc/hosts entry for {peer}: {hosts:?}"
        ));
    }
    r.assert_contains(&format!("{tag}ping {peer} replies=3"));
    r.assert_contains(&format!("{tag}fetched http://{peer}/: {page}"));
}

/// The README's "Two appliances on one network" block, command by command,
/// is what the scenario runs (without `sudo`, the scenario's framing and
/// console redirection).
#[test]
fn readme_network_commands_are_the_ones_tested() {
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md");
    let block = readme
        .split("### Two appliances on one network")
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("README.md has a ```sh block under \"### Two appliances on one network\"");
    let norm = |s: &str| {
        let s = s.split(" #").next().unwrap_or(s).trim();
        let s = s.trim_end_matches('&').trim();
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let documented: Vec<String> = block
        .lines()
        .map(|l| norm(l.trim().trim_start_matches("sudo ")))
        .filter(|l| !l.is_empty())
        .collect();
    let tested: Vec<String> = SCRIPT
        .lines()
        .filter(|l| l.trim_end().ends_with("# README"))
        .map(|l| {
            let l = match l.split_once("bg_guest ") {
                // `CPU=N bg_guest NAME OUT herd run … 0<>FIFO &`: the command.
                Some((_, rest)) => rest.splitn(3, ' ').nth(2).unwrap_or(rest),
                None => l,
            };
            norm(l.split(" 0<>").next().unwrap_or(l))
        })
        .collect();
    assert_eq!(documented.len(), 3, "README block: {block}");
    assert_eq!(
        documented, tested,
        "README.md's network commands and the ones this scenario runs differ"
    );
}

#[test]
fn herd_net_create_makes_the_bridge_both_appliances_join() {
    let res = &suite().result;
    if scenario_line("net create status=") != "0" {
        res.fail("`herd net create appnet --subnet 10.20.0.1/24` failed");
    }
    let ports = scenario_line("bridge appnet: ");
    let mut ports: Vec<&str> = ports.split_whitespace().collect();
    ports.sort_unstable();
    if ports != ["db", "web"] {
        res.fail(&format!(
            "bridge appnet has ports {ports:?}, expected the TAPs db and web"
        ));
    }
    for name in ["web", "db"] {
        run(name).assert_contains("herd-init: network eth0 address=10.20.0.");
    }
    if scenario_line("net rm status=") != "0" {
        res.fail("`herd net rm appnet` failed");
    }
}

#[test]
fn the_test_host_fetches_the_web_appliance_page_by_ip() {
    run("web").assert_contains("herd-init: service httpd started");
    assert_host_fetch(1);
}

#[test]
fn two_appliances_ping_and_fetch_each_other_by_hostname() {
    let web_page = suite().web_page.trim_end().replace('\n', "");
    assert_peer_round("web", "db", DB_PAGE, 1);
    assert_peer_round("db", "web", &web_page, 1);
}

#[test]
fn junk_frames_disturb_neither_herd_nor_the_neighbours() {
    let junk = run("junk");
    // The junk really went out: every kind of frame at least once.
    junk.assert_contains("junk-test: mtu now 65535");
    junk.assert_contains("junk-test: 65000-byte ping to the host: ");
    let total = junk.assert_contains("herd-junk: sent ");
    let n: u64 = total
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(0);
    if n < 1000 {
        junk.fail(&format!("only {n} junk frames were sent: {total:?}"));
    }
    junk.assert_contains("junk-test: herd-junk exit=0");
    // The junk guest's own herd still works, and the guest still reaches web.
    junk.assert_contains("junk-test: ping web after: status 0");
    junk.assert_exit(0);

    // Neighbours: web and db herds were still running after the junk…
    let after = scenario_line("after junk: ");
    if after.contains("[]") {
        suite()
            .result
            .fail(&format!("a neighbour's herd died during the junk: {after}"));
    }
    // …still serve the host and each other…
    assert_host_fetch(2);
    let web_page = suite().web_page.trim_end().replace('\n', "");
    assert_peer_round("web", "db", DB_PAGE, 2);
    assert_peer_round("db", "web", &web_page, 2);
    // …and power off cleanly, without a herd error.
    for name in ["web", "db", "junk"] {
        let r = run(name);
        r.assert_exit(0);
        if let Some(l) = r
            .lines
            .iter()
            .find(|l| l.contains("panicked") || l.contains(" ERROR "))
        {
            r.fail(&format!("herd reported an error: {l}"));
        }
    }
}
