//! `herd image` on the host (no VM): bad definitions, unknown packages and
//! images, a full disk mid-build, reproducible builds, and a herd binary
//! that runs without its checkout. Builds go through the real command and
//! mmdebstrap, with root trees cached in HERD_CACHE (~/.cache/herd).
#[path = "image_appliances/store.rs"]
mod store;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use store::{example, herd, repo, store_dir};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        // Not under the checkout: one test hides the checkout.
        let p = std::env::temp_dir().join(format!("herd-image-cli-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn herd_in(home: &Path, args: &[&str]) -> Output {
    Command::new(herd())
        .args(args)
        .env("HERD_HOME", home)
        .output()
        .expect("run herd")
}

/// Everything in HOME/images (work directories too).
fn store_entries(home: &Path) -> Vec<String> {
    fs::read_dir(home.join("images"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn build_def(home: &Path, def: &Path, text: &str) -> Output {
    fs::write(def, text).unwrap();
    herd_in(home, &["image", "build", def.to_str().unwrap()])
}

#[test]
fn unknown_key_invalid_toml_and_missing_file_are_named() {
    let t = Tmp::new("bad");
    let def = t.0.join("bad.toml");
    let o = build_def(
        &t.0,
        &def,
        "name = \"x\"\nversion = \"1\"\npackages = [\"redis-server\"]\nservice = \"oops\"\n",
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains(&format!("{}:4:1:", def.display())) && e.contains("unknown field `service`"),
        "{e}"
    );

    let o = build_def(
        &t.0,
        &def,
        "name = \"x\"\nversion = \"1\"\npackages = [\"a\" \"b\"]\n",
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains(&format!("{}:3:", def.display())), "{e}");

    let missing = t.0.join("nope.toml");
    let o = herd_in(&t.0, &["image", "build", missing.to_str().unwrap()]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("nope.toml") && e.contains("No such file"), "{e}");
    assert!(!t.0.join("images").exists(), "a failed build left images/");
}

#[test]
fn a_package_that_does_not_exist_is_named() {
    let t = Tmp::new("nopkg");
    let def = t.0.join("nopkg.toml");
    let o = build_def(
        &t.0,
        &def,
        "name = \"nopkg\"\nversion = \"1\"\npackages = [\"herd-no-such-package\"]\n",
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("package \"herd-no-such-package\" does not exist in Debian bookworm"),
        "{e}"
    );
    let left = store_entries(&t.0);
    assert!(left.is_empty(), "a failed build left {left:?} in the store");
}

#[test]
fn unknown_root_lists_what_the_store_has() {
    example("base").unwrap();
    let o = herd_in(&store_dir(), &["run", "--root", "unknown:9", "--mem", "64"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("no image unknown:9") && e.contains("base:1"),
        "{e}"
    );
    // A path that does not exist is still a path, not a store name.
    let o = herd_in(&store_dir(), &["run", "--root", "./unknown.erofs"]);
    assert!(
        stderr(&o).contains("--kernel is required"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn image_ls_and_rm() {
    let t = Tmp::new("lsrm");
    let o = herd_in(&t.0, &["image", "build", "-q", "base"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ls = herd_in(&t.0, &["image", "ls"]);
    let out = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("base ") && l.contains(" 1 ")),
        "{out}"
    );
    let json = herd_in(&t.0, &["image", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["name"], "base");
    assert_eq!(v["packages"][0]["name"], "busybox-static");
    let o = herd_in(&t.0, &["image", "rm", "base:1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!t.0.join("images/base").exists());
    let o = herd_in(&t.0, &["image", "rm", "base:1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no image base:1"), "{}", stderr(&o));
}

#[test]
fn rm_refuses_an_image_in_use() {
    let t = Tmp::new("inuse");
    let o = herd_in(&t.0, &["image", "build", "-q", "base"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let image = t.0.join("images/base/1/image.erofs");
    // Any process holding the image open counts (herd keeps its root open).
    let mut holder = Command::new("sleep")
        .arg("30")
        .stdin(fs::File::open(&image).unwrap())
        .spawn()
        .unwrap();
    let o = herd_in(&t.0, &["image", "rm", "base:1"]);
    let ls = herd_in(&t.0, &["image", "ls"]);
    let _ = holder.kill();
    let _ = holder.wait();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("in use by") && e.contains(&format!("pid {}", holder.id())),
        "{e}"
    );
    assert!(image.is_file());
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains(&format!("pid {}", holder.id())),
        "ls does not show the user"
    );
}

#[test]
fn no_space_left_leaves_no_partial_image() {
    example("redis").unwrap(); // the root tree is cached; only the store is small
    let t = Tmp::new("nospace");
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m", "herd-test-full"])
        .arg(&t.0)
        .output()
        .unwrap();
    assert!(
        m.status.success(),
        "cannot mount a small tmpfs (this test needs root): {}",
        stderr(&m)
    );
    let def = repo().join("guest-images/images/redis.toml");
    let o = herd_in(&t.0, &["image", "build", def.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(!o.status.success(), "redis fitted in 48 MiB?");
    assert!(e.contains("no space left on device"), "{e}");
    let left = store_entries(&t.0);
    assert!(
        left.is_empty(),
        "the store kept {left:?} after a failed build"
    );
}

/// Same definition, packages resolved again by a fresh mmdebstrap run
/// (`--pull`) into another store: byte for byte the same image.
#[test]
fn redis_builds_reproducibly_and_lists_its_packages() {
    let first = example("redis").unwrap();
    let t = Tmp::new("repro");
    let def = repo().join("guest-images/images/redis.toml");
    let o = herd_in(
        &t.0,
        &["image", "build", "--pull", "-q", def.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let second = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(first.starts_with("redis:1 sha256:"), "{first}");
    assert_eq!(first, second, "two builds of redis.toml differ");
    let m: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(t.0.join("images/redis/1/manifest.json")).unwrap(),
    )
    .unwrap();
    let sha = first.split("sha256:").nth(1).unwrap();
    assert_eq!(m["sha256"], sha);
    let pkgs = m["packages"].as_array().unwrap();
    let redis = pkgs
        .iter()
        .find(|p| p["name"] == "redis-server")
        .expect("manifest lists redis-server");
    assert!(redis["version"].as_str().unwrap().contains(':'), "{redis}");
    assert!(pkgs.iter().any(|p| p["name"] == "busybox-static"));
    assert!(pkgs.len() > 50, "{} packages", pkgs.len());
}

/// A copy of herd outside the checkout, with the checkout hidden (a tmpfs
/// over it in a private mount namespace), builds the embedded example.
#[test]
fn installed_herd_builds_without_its_checkout() {
    let t = Tmp::new("installed");
    let bin = t.0.join("bin/herd");
    fs::create_dir_all(bin.parent().unwrap()).unwrap();
    fs::copy(herd(), &bin).unwrap();
    let home = t.0.join("home");
    let script = format!(
        "mount -t tmpfs none '{repo}' && cd / && test ! -e '{repo}/Cargo.toml' && \
         '{bin}' image examples && '{bin}' image build -q base && '{bin}' image ls",
        repo = repo().display(),
        bin = bin.display()
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("HERD_HOME", &home)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{out}", stderr(&o));
    assert!(out.contains("redis") && out.contains("postgresql"), "{out}");
    assert!(out.contains("base:1 sha256:"), "{out}");
    assert!(home.join("images/base/1/image.erofs").is_file());
    assert!(repo().join("Cargo.toml").is_file(), "the checkout is back");
}

/// Ctrl-C (SIGINT to the build's process group) while the root tree is
/// unpacked: herd says so and the store has no image and no work files.
#[test]
fn an_interrupted_build_leaves_nothing_in_the_store() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    example("redis").unwrap(); // root tree cached: unpacking starts at once
    let t = Tmp::new("interrupt");
    let def = repo().join("guest-images/images/redis.toml");
    let mut child = Command::new(herd())
        .args(["image", "build"])
        .arg(&def)
        .env("HERD_HOME", &t.0)
        .process_group(0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let unpacking = line.starts_with("herd: unpacking ...");
        seen.push(line);
        if unpacking {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pgid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) with a process group we created; no memory involved.
    unsafe { libc::kill(-pgid, libc::SIGINT) };
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    let all = seen.join("\n");
    assert!(!status.success(), "{all}");
    assert!(
        all.contains("herd: error: interrupted; nothing was written"),
        "{all}"
    );
    let left = store_entries(&t.0);
    assert!(left.is_empty(), "an interrupted build left {left:?}");
}
