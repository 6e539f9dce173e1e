//! Upgrade and rollback of one appliance by hand, in the emulated test
//! host: the same data disk booted on `up:1`, then `up:2`, then `up:1`
//! again. Both images are redis (the example's packages, so the root tree
//! is the cached one) plus a few files under /etc/up that differ between
//! the versions; the guest changes some of them. Checked file by file:
//! what the guest changed, added or deleted stays so in every version;
//! files it never touched come from whichever image it booted; the redis
//! value written on version 1 is read on 2 and on 1 again.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use super::store::{build, herd, repo, store_images};
use crate::support::staging::{disk_create, write, TempDir};
use crate::support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

/// The guest side: `sh /data/up.sh STEP`, run by herd.run on each boot.
const UP_SH: &str = r#"# /data/up.sh STEP: guest side of tests/image_appliances/upgrade.rs
step=$1
say() { echo "up-test: step$step $*"; }
i=0
until redis-cli ping >/dev/null 2>&1; do
	i=$((i + 1)); [ $i -gt 120 ] && { say "redis never answered"; break; }
	sleep 0.5
done
if [ "$step" = 1 ]; then
	echo guest >/etc/up/changed
	echo guest >/etc/up/added-by-guest
	rm -f /etc/up/deleted-by-guest
	say "set $(redis-cli SET upkey upvalue)"
fi
say "image $(cat /etc/up/version)"
for f in untouched changed new-in-2 added-by-guest deleted-by-guest; do
	say "file $f=$(cat /etc/up/$f 2>/dev/null || echo ABSENT)"
done
say "redis upkey=$(redis-cli GET upkey)"
say "redis-server $(redis-server --version | cut -d' ' -f3)"
sync
"#;

const SCRIPT: &str = r#"
export HERD_TIMEOUT=300 HERD_HOME=/store
cd /guest || exit 1
run_guest step1 run --name up --root up:1 --disk up.img --mem 256 --cmdline 'herd.run="sh /data/up.sh 1"' </dev/null
run_guest step2 run --name up --root up:2 --disk up.img --mem 256 --cmdline 'herd.run="sh /data/up.sh 2"' </dev/null
run_guest step3 run --name up --root up:1 --disk up.img --mem 256 --cmdline 'herd.run="sh /data/up.sh 3"' </dev/null
exit 0
"#;

/// A definition `up:VERSION`: the redis example plus /etc/up files.
fn definition(dir: &Path, version: u32) -> Result<std::path::PathBuf, String> {
    let redis = std::fs::read_to_string(repo().join("guest-images/images/redis.toml"))
        .map_err(|e| format!("redis.toml: {e}"))?;
    let files = dir.join(format!("files{version}"));
    let conf =
        std::fs::read_to_string(repo().join("guest-images/images/redis/etc/redis/redis.conf"))
            .map_err(|e| format!("redis.conf: {e}"))?;
    write(&files.join("etc/redis/redis.conf"), &conf)?;
    let v = format!("v{version}\n");
    write(&files.join("etc/up/version"), &v)?;
    write(&files.join("etc/up/untouched"), &v)?;
    write(&files.join("etc/up/changed"), &v)?;
    write(&files.join("etc/up/deleted-by-guest"), &v)?;
    if version == 2 {
        write(&files.join("etc/up/new-in-2"), &v)?;
    }
    let def = redis
        .replace("name = \"redis\"", "name = \"up\"")
        .replace("version = \"1\"", &format!("version = \"{version}\""))
        .replace("files = \"redis\"", &format!("files = \"files{version}\""));
    if def == redis {
        return Err("redis.toml changed shape: cannot derive up:N from it".into());
    }
    let path = dir.join(format!("up{version}.toml"));
    write(&path, &def)?;
    Ok(path)
}

fn setup() -> Result<ScenarioResult, String> {
    TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
    let work = TempDir(std::env::temp_dir().join(format!("herd-image-up-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    for v in [1, 2] {
        build(&definition(&work.0, v)?)?;
    }
    let disk = work.0.join("up");
    write(&disk.join("config/hostname"), "up\n")?;
    write(&disk.join("data/up.sh"), UP_SH)?;
    let img = work.0.join("up.img");
    disk_create(herd(), &disk, "64M", &img)?;
    let sc = Scenario::new("image_upgrade", SCRIPT)
        .herd(herd())
        .file(&img, "up.img")
        .timeout(Duration::from_secs(900));
    Ok(sc.files(store_images(&[("up", "1"), ("up", "2")])?).run())
}

fn step(n: u32) -> GuestRun<'static> {
    static RESULT: OnceLock<Result<ScenarioResult, String>> = OnceLock::new();
    shared(&RESULT, "image_upgrade", setup).finished_run(&format!("step{n}"))
}

/// `(file, content)` as step `n` saw them.
fn expect(n: u32, image: &str, files: &[(&str, &str)]) {
    let run = step(n);
    run.assert_exit(0);
    run.assert_contains(&format!("up-test: step{n} image {image}"));
    for (f, want) in files {
        let line = run.assert_contains(&format!("up-test: step{n} file {f}="));
        let got = line.split_once('=').map_or("", |(_, v)| v.trim());
        if got != *want {
            run.fail(&format!(
                "step {n}: /etc/up/{f} is {got:?}, expected {want:?}"
            ));
        }
    }
    run.assert_contains(&format!("up-test: step{n} redis upkey=upvalue"));
    run.assert_contains("herd-init: ready mode=overlay");
}

/// /etc/up as the guest sees it on image v1, after its own writes.
const ON_V1: &[(&str, &str)] = &[
    ("untouched", "v1"),
    ("changed", "guest"),
    ("new-in-2", "ABSENT"),
    ("added-by-guest", "guest"),
    ("deleted-by-guest", "ABSENT"),
];

#[test]
fn upgrade_to_2_then_roll_back_to_1_file_by_file() {
    step(1).assert_contains("up-test: step1 set OK");
    expect(1, "v1", ON_V1);
    expect(
        2,
        "v2",
        &[
            ("untouched", "v2"),
            ("changed", "guest"),
            ("new-in-2", "v2"),
            ("added-by-guest", "guest"),
            ("deleted-by-guest", "ABSENT"),
        ],
    );
    // Rolled back: exactly what step 1 saw on v1.
    expect(3, "v1", ON_V1);
}
