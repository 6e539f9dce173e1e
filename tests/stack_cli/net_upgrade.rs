//! The stack's network (in a network namespace), data disks and hosts
//! file; upgrade with automatic rollback, and rollback.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::{probe, Dir, WAIT};
use crate::support::herd_run::{kvm_present, run_with_timeout, Run};
use crate::support::probes::{herd_bin, probe_path};

/// A network namespace for one test: the stack's bridge and TAPs live
/// (and die) in it.
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Self {
        let name = format!("herd-{test}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "ip netns add {name} (needs root)"
        );
        Netns(name)
    }

    fn herd(&self, d: &Dir, args: &[&str]) -> Run {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0])
            .arg(herd_bin())
            .args(args)
            .current_dir(&d.path)
            .env("HERD_RUNTIME", d.path.join("rt"))
            .env("HERD_HOME", d.path.join("store"))
            .stdin(Stdio::null());
        run_with_timeout(cmd, WAIT, &format!("herd {args:?} in {}", self.0))
    }

    fn links(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0, "-br", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn debugfs_cat(disk: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn network_disks_and_the_hosts_file() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("net");
    let ns = Netns::new("stack");
    let personality = d.path.join("pers");
    std::fs::create_dir_all(personality.join("config")).unwrap();
    std::fs::create_dir_all(personality.join("data")).unwrap();
    std::fs::write(personality.join("config/hostname"), "old\n").unwrap();
    d.write(&format!(
        "name = \"nt\"\n[network]\nname = \"hnt0\"\nsubnet = \"10.66.0.1/24\"\n\
         [defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
         health = {{ console = \"probe: kbd listening\", interval = 0.1 }}\n\
         [appliances.db]\naddress = \"10.66.0.10\"\npersonality = \"pers\"\ndisk_size = \"16M\"\n\
         [appliances.web]\npersonality = \"pers\"\ndisk_size = \"16M\"\nreplicas = 2\n",
        probe()
    ));
    let out = ns.herd(&d, &["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    let links = ns.links();
    assert!(links.contains("hnt0"), "{links}");
    assert_eq!(links.matches("hd-").count(), 3, "{links}");
    let db = d.path.join(".herd/nt/db.img");
    let hosts = debugfs_cat(&db, "config/hosts");
    for want in [
        "10.66.0.1\tgateway",
        "10.66.0.10\tdb",
        "10.66.0.2\tweb-1",
        "10.66.0.3\tweb-2",
    ] {
        assert!(hosts.contains(want), "{want:?} not in {hosts}");
    }
    assert_eq!(debugfs_cat(&db, "config/hostname"), "db\n");
    assert!(debugfs_cat(&db, "config/network").contains("ADDRESS=10.66.0.10/24"));
    let w2 = d.path.join(".herd/nt/web-2.img");
    assert!(debugfs_cat(&w2, "config/network").contains("ADDRESS=10.66.0.3/24"));
    let ps = ns.herd(&d, &["ps", "--json"]);
    assert!(ps.stdout.contains("\"10.66.0.10\""), "{}", ps.dump());
    // Each NIC its own MAC.
    let macs: std::collections::BTreeSet<String> = ["nt-db", "nt-web-1", "nt-web-2"]
        .iter()
        .map(|n| {
            let out = ns.herd(&d, &["inspect", n]);
            let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
            v["vm"]["nets"][0]["mac"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(macs.len(), 3, "{macs:?}");

    // down: no TAP, no bridge; disks kept, and the next up uses them as
    // they are (a file written on one survives), addresses unchanged.
    let out = ns.herd(&d, &["down"]);
    assert!(out.status.success(), "{}", out.dump());
    let links = ns.links();
    assert!(!links.contains("hnt0") && !links.contains("hd-"), "{links}");
    let marker = d.path.join("marker");
    std::fs::write(&marker, "kept\n").unwrap();
    let wrote = Command::new("debugfs")
        .args([
            "-w",
            "-R",
            &format!("write {} data/marker", marker.display()),
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(wrote.status.success());
    let out = ns.herd(&d, &["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(debugfs_cat(&db, "data/marker"), "kept\n");
    assert!(out.stdout.contains("10.66.0.3"), "{}", out.dump());

    let out = ns.herd(&d, &["down", "--volumes"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(
        !db.exists() && !w2.exists(),
        "down --volumes left the disks"
    );
    assert!(
        personality.join("config/hostname").exists(),
        "a personality was touched"
    );
}

/// A store with images app:1 and app:2 (the pvh probe as their kernel) and
/// app:3 (the linux64 probe: it fails a health check that wants pvh).
fn probe_store(d: &Dir) {
    let store = d.path.join("store");
    for (key, probe_file) in [("pvh", "probe-pvh.elf"), ("l64", "probe-linux64.elf")] {
        let dir = store.join("kernels").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(probe_path(probe_file), dir.join("vmlinux")).unwrap();
    }
    for (version, kernel) in [("1", "pvh"), ("2", "pvh"), ("3", "l64")] {
        let dir = store.join("images/app").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("image.erofs"), vec![0u8; 4096]).unwrap();
        let manifest = serde_json::json!({
            "name": "app", "version": version, "base": "busybox", "suite": "-",
            "sha256": "-", "size": 4096, "created": 0, "source_date_epoch": 0,
            "kernel": kernel, "definition_sha256": "-", "herd_version": "-",
            "services": {}, "stripped": [], "stripped_bytes": 0, "packages": []
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }
}

#[test]
fn upgrade_rolls_back_when_unhealthy_and_rollback_goes_back() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("upgrade");
    probe_store(&d);
    std::fs::create_dir_all(d.path.join("pers/data")).unwrap();
    d.write(
        "name = \"up\"\n[appliances.app]\nimage = \"app:1\"\nmem = 32\npersonality = \"pers\"\n\
         disk_size = \"16M\"\ncmdline = \"probe.action=kbd\"\n\
         health = { console = \"entry=pvh\", interval = 0.1, retries = 50 }\n",
    );
    let state = || std::fs::read_to_string(d.path.join("herd.state.json")).unwrap();
    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout.contains("app:1"), "{}", out.dump());

    let out = d.herd(&["upgrade", "app", "--image", "app:2", "--timeout", "30"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(state().contains("\"image\": \"app:2\""), "{}", state());
    let inspect = d.herd(&["inspect", "up-app"]);
    assert!(
        inspect.stdout.contains("app/2/image.erofs"),
        "{}",
        inspect.dump()
    );
    assert!(
        inspect.stdout.contains(".herd/up/app.img"),
        "same disk: {}",
        inspect.dump()
    );
    // `up` after an upgrade keeps it.
    let out = d.herd(&["up", "-d"]);
    assert!(
        out.stdout.contains("app:2") && out.stdout.contains("unchanged"),
        "{}",
        out.dump()
    );

    let out = d.herd(&["upgrade", "app", "--image", "app:3", "--timeout", "10"]);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(
        out.stderr.contains("upgrade of app to app:3 failed")
            && out.stderr.contains("rolled back: it runs app:2 again"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("entry=linux64"),
        "console tail: {}",
        out.dump()
    );
    let inspect = d.herd(&["inspect", "up-app"]);
    assert!(
        inspect.stdout.contains("app/2/image.erofs"),
        "{}",
        inspect.dump()
    );
    assert!(state().contains("\"image\": \"app:2\""), "{}", state());

    let out = d.herd(&["rollback", "app"]);
    assert!(out.status.success(), "{}", out.dump());
    let inspect = d.herd(&["inspect", "up-app"]);
    assert!(
        inspect.stdout.contains("app/1/image.erofs"),
        "{}",
        inspect.dump()
    );
    let out = d.herd(&["upgrade", "app", "--image", "app:9"]);
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(d.herd(&["down"]).status.success());
}

#[test]
fn replicas_upgrade_one_at_a_time_and_stop_at_the_first_unhealthy() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("upgrade-replicas");
    probe_store(&d);
    d.write(
        "name = \"ur\"\n[appliances.app]\nimage = \"app:1\"\nmem = 32\nreplicas = 3\n\
         cmdline = \"probe.action=kbd\"\n\
         health = { console = \"kbd listening\", interval = 0.1, retries = 50 }\n",
    );
    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    let pid = |name: &str| {
        d.ps()
            .iter()
            .find(|r| r["name"] == name && r["state"] == "running")
            .map(|r| r["pid"].clone())
    };
    let (p2, p3) = (pid("ur-app-2"), pid("ur-app-3"));
    // A check app:3 (the linux64 probe) fails and app:1 passes.
    d.write(
        "name = \"ur\"\n[appliances.app]\nimage = \"app:1\"\nmem = 32\nreplicas = 3\n\
         cmdline = \"probe.action=kbd\"\n\
         health = { console = \"entry=pvh\", interval = 0.1, retries = 50 }\n",
    );
    let out = d.herd(&["upgrade", "app", "--image", "app:3", "--timeout", "10"]);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(out.stderr.contains("app-1: app:3 failed"), "{}", out.dump());
    assert!(
        !out.stderr.contains("app-2: app:3"),
        "went on after the first: {}",
        out.dump()
    );
    // The two others were never touched.
    assert_eq!((pid("ur-app-2"), pid("ur-app-3")), (p2, p3));
    let inspect = d.herd(&["inspect", "ur-app-1"]);
    assert!(
        inspect.stdout.contains("app/1/image.erofs"),
        "{}",
        inspect.dump()
    );
    assert!(d.herd(&["down"]).status.success());
}
