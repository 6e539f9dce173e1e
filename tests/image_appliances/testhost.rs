//! Appliance images from `herd image build`, booted from the image store
//! inside the emulated test host (QEMU TCG with nested KVM; see
//! tests/support/testhost.rs). One test-host boot runs the scenario below;
//! each test checks its part of it:
//!
//! - the test store (redis:1, base:1 and their kernel) is HERD_HOME in the
//!   test host, and every guest is started as `herd run --root NAME`
//!   without a kernel path;
//! - a redis appliance (data disk from a small personality) answers SET
//!   and GET from a client appliance on the same bridge; after a clean
//!   poweroff and a new boot on the same disk the value is still there;
//! - the busybox base and the Debian-based redis image print the same
//!   `herd-init:` markers, ending in `ready mode=overlay`.

use std::sync::OnceLock;
use std::time::Duration;

use super::store::{example, herd, store_images};
use crate::support::staging::{disk_create, write, TempDir};
use crate::support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

/// Served by the nginx appliance from its data disk.
const NGINX_PAGE: &str = "herd nginx appliance page";

const SCRIPT: &str = r#"
export HERD_TIMEOUT=400 HERD_HOME=/store
say() { echo "img-test: $*"; }
# type_in NAME LINE: a line on that appliance's console (FIFO opened read-write: never blocks)
type_in() { echo "$2" 1<>"/tmp/$1.in"; }
cd /guest || exit 1
herd image ls | sed 's/^/img-test: ls: /'
herd net create imgnet --subnet 10.30.0.1/24
say "net create status=$?"
mkfifo /tmp/srv.in
IP="ip=10.30.0.3::10.30.0.1:255.255.255.0:client:eth0:off"
# serve RUN ROOT DISK READY CLIENT_RUN CLIENT_ROOT CLIENT_CMD: boot a server
# appliance (its disk sets 10.30.0.2) in the background until READY is on
# its console, run CLIENT_CMD in a client appliance (10.30.0.3, no disk),
# then power the server off cleanly from its console.
serve() {
	CPU=0 bg_guest "$1" "/tmp/$1" herd run --name srv --root "$2" --disk "$3" --mem 256 --net tap=srv,bridge=imgnet 0<>/tmp/srv.in &
	wait_for "/tmp/$1" "$4" 380 || say "$1 never got ready"
	run_guest "$5" run --name client --root "$6" --mem 256 --net tap=client,bridge=imgnet --cmdline "quiet $IP herd.run=\"$7\"" </dev/null
	type_in srv poweroff
	wait
	show "$1" "/tmp/$1"
}

# redis: a client sets and reads a key; after a clean restart on the same
# disk the value is still there.
serve redis-first redis redis1.img "Ready to accept connections" set redis:1 \
	"redis-cli -h 10.30.0.2 SET herdkey herdvalue | sed s/^/set:/; redis-cli -h 10.30.0.2 GET herdkey | sed s/^/get:/"
serve redis-second redis redis1.img "Ready to accept connections" get redis:1 \
	"redis-cli -h 10.30.0.2 GET herdkey | sed s/^/get:/"

# nginx serves the data disk's data/www to a client.
serve nginx-first nginx nginx1.img "herd-init: ready" page redis:1 \
	"for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://10.30.0.2/ && break; sleep 1; done | sed s/^/page:/"

# postgresql: the first boot initialises its data directory on the disk; a
# client creates a table; after a clean restart the row is still there.
serve pg-first postgresql pg1.img "database system is ready to accept connections" pg-write postgresql:1 \
	"psql -h 10.30.0.2 -U postgres -Atc 'CREATE TABLE herd(v int)' && psql -h 10.30.0.2 -U postgres -Atc 'INSERT INTO herd SELECT 40+2' && psql -h 10.30.0.2 -U postgres -Atc 'SELECT v FROM herd' | sed s/^/row:/"
serve pg-second postgresql pg1.img "database system is ready to accept connections" pg-read postgresql:1 \
	"psql -h 10.30.0.2 -U postgres -Atc 'SELECT v FROM herd' | sed s/^/row:/"

# The busybox base from the same store, same init.
run_guest base run --name base1 --root base --disk base1.img --cmdline 'herd.run="cat /run/herd/mode"' </dev/null
herd net rm imgnet
say "net rm status=$?"
exit 0
"#;

struct Suite {
    result: ScenarioResult,
}

fn setup() -> Result<Suite, String> {
    TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
    for name in ["redis", "base", "nginx", "postgresql"] {
        example(name)?;
    }
    let work =
        TempDir(std::env::temp_dir().join(format!("herd-image-apps-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    let redis = work.0.join("redis1");
    write(&redis.join("config/hostname"), "redis1\n")?;
    write(
        &redis.join("config/network"),
        "ADDRESS=10.30.0.2/24\nGATEWAY=10.30.0.1\n",
    )?;
    let nginx = work.0.join("nginx1");
    write(&nginx.join("config/hostname"), "nginx1\n")?;
    write(
        &nginx.join("config/network"),
        "ADDRESS=10.30.0.2/24\nGATEWAY=10.30.0.1\n",
    )?;
    write(
        &nginx.join("data/www/index.html"),
        &format!("{NGINX_PAGE}\n"),
    )?;
    let pg = work.0.join("pg1");
    write(&pg.join("config/hostname"), "pg1\n")?;
    write(
        &pg.join("config/network"),
        "ADDRESS=10.30.0.2/24\nGATEWAY=10.30.0.1\n",
    )?;
    let base = work.0.join("base1");
    write(&base.join("config/hostname"), "base1\n")?;
    let mut sc = Scenario::new("image_appliances", SCRIPT)
        .herd(herd())
        .timeout(Duration::from_secs(900));
    for (name, dir) in [
        ("redis1", &redis),
        ("base1", &base),
        ("nginx1", &nginx),
        ("pg1", &pg),
    ] {
        let img = work.0.join(format!("{name}.img"));
        disk_create(herd(), dir, "64M", &img)?;
        sc = sc.file(&img, &format!("{name}.img"));
    }
    let mut sc = sc.files(store_images(&[
        ("redis", "1"),
        ("base", "1"),
        ("nginx", "1"),
        ("postgresql", "1"),
    ])?);
    sc.mem_mib = 3072;
    Ok(Suite { result: sc.run() })
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Result<Suite, String>> = OnceLock::new();
    shared(&SUITE, "image_appliances", setup)
}

fn run(name: &str) -> GuestRun<'static> {
    suite().result.finished_run(name)
}

/// The `herd-init:` markers of a run, with the values that differ between
/// appliances (device, serial, times, counts, names) cut off.
fn markers(run: &GuestRun) -> Vec<String> {
    let mut out: Vec<String> = run
        .lines
        .iter()
        .filter_map(|l| l.split_once("herd-init: ").map(|(_, m)| m))
        .map(|m| {
            let m = m.split(" nproc=").next().unwrap_or(m);
            let m = m.split(" /dev/").next().unwrap_or(m);
            let m = m.split(" hostname=").next().unwrap_or(m);
            m.split(" (from").next().unwrap_or(m).to_owned()
        })
        .filter(|m| {
            !m.starts_with("service ")
                && !m.starts_with("hostname ")
                && !m.starts_with("network")
                && !m.starts_with("running herd.run")
                && !m.starts_with("command exited")
                && !m.starts_with("shutdown")
                && !m.starts_with("poweroff")
                && !m.starts_with("data disk clean")
        })
        .collect();
    out.dedup();
    out
}

#[test]
fn redis_answers_a_client_and_keeps_the_value_across_a_clean_restart() {
    let first = run("redis-first");
    first.assert_contains("herd-init: service redis started");
    first.assert_contains("redis: ");
    let set = run("set");
    set.assert_contains("set:OK");
    set.assert_contains("get:herdvalue");
    set.assert_exit(0);
    first.assert_contains("herd-init: data disk clean");
    first.assert_exit(0);

    let second = run("redis-second");
    second.assert_contains("Ready to accept connections");
    let get = run("get");
    get.assert_contains("get:herdvalue");
    get.assert_exit(0);
    second.assert_exit(0);
}

#[test]
fn guests_boot_from_the_store_by_name_without_a_kernel_path() {
    let res = &suite().result;
    let ls: Vec<&str> = res
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("img-test: ls: "))
        .collect();
    for name in ["base ", "redis "] {
        if !ls.iter().any(|l| l.starts_with(name)) {
            res.fail(&format!(
                "`herd image ls` in the test host does not list {name}: {ls:?}"
            ));
        }
    }
    run("redis-first").assert_contains("herd-init: ready mode=overlay");
    run("base").assert_contains("herd-init: ready mode=overlay");
}

#[test]
fn busybox_base_and_debian_image_give_the_same_init_markers() {
    let base = run("base");
    base.assert_contains("overlay");
    base.assert_exit(0);
    let redis = run("redis-first");
    let (b, r) = (markers(&base), markers(&redis));
    // The redis appliance has a default service; the base has none.
    let r: Vec<String> = r
        .into_iter()
        .filter(|m| !m.starts_with("ready mode=overlay"))
        .collect();
    let b: Vec<String> = b
        .into_iter()
        .filter(|m| !m.starts_with("ready mode=overlay"))
        .collect();
    assert_eq!(
        b, r,
        "the busybox base and the redis image printed different herd-init markers"
    );
    for run in [&base, &redis] {
        run.assert_contains("herd-init: reached init");
        run.assert_contains("herd-init: root: overlay");
        run.assert_contains("herd-init: ready mode=overlay");
    }
}

#[test]
fn nginx_serves_a_page_from_the_data_disk_to_a_client() {
    run("nginx-first").assert_contains("herd-init: service nginx started");
    let page = run("page");
    page.assert_contains(&format!("page:{NGINX_PAGE}"));
    page.assert_exit(0);
    run("nginx-first").assert_exit(0);
}

#[test]
fn postgresql_initialises_on_first_boot_and_answers_after_a_restart() {
    let first = run("pg-first");
    first.assert_contains("postgresql: first boot: initialising /data/postgresql");
    let write = run("pg-write");
    write.assert_contains("row:42");
    write.assert_exit(0);
    first.assert_exit(0);
    let second = run("pg-second");
    if second.find("first boot").is_some() {
        second.fail("the data directory was initialised again after a restart");
    }
    let read = run("pg-read");
    read.assert_contains("row:42");
    read.assert_exit(0);
    second.assert_exit(0);
}
