//! `cargo bench --bench images`: what `herd image build` costs and what the
//! images weigh. Build times: cached (root tree from HERD_CACHE, the usual
//! rebuild), `--pull` (mmdebstrap again, packages from the local .deb
//! cache) and cold (empty cache: every package downloaded; the guest
//! kernel still comes from its cache). Sizes: each example image, and
//! redis and postgresql with stripping off, to show what it buys. Prints a
//! table and appends it to benches/RESULTS.md.

#[path = "../results.rs"]
mod results;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const CACHED_RUNS: usize = 3;

fn herd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/herd")
        })
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p =
            std::env::temp_dir().join(format!("herd-bench-images-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `herd image build` into a fresh store: (seconds, image bytes).
fn build(def: &Path, extra: &[&str], cache_dir: Option<&Path>) -> (f64, u64) {
    let home = Scratch::new("home");
    let mut cmd = Command::new(herd());
    cmd.args(["image", "build", "-q"])
        .args(extra)
        .arg(def)
        .env("HERD_HOME", &home.0);
    if let Some(c) = cache_dir {
        cmd.env("HERD_CACHE", c);
    }
    let t = Instant::now();
    let out = cmd.output().expect("run herd image build");
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "herd image build {} failed: {}",
        def.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let reference = line.split_whitespace().next().unwrap_or("");
    let (name, version) = reference.split_once(':').unwrap_or((reference, ""));
    let size = std::fs::metadata(
        home.0
            .join("images")
            .join(name)
            .join(version)
            .join("image.erofs"),
    )
    .map_or(0, |m| m.len());
    (secs, size)
}

/// A copy of an example definition with every strip option off.
fn unstripped(name: &str, dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(repo().join(format!("guest-images/images/{name}.toml"))).unwrap();
    let kept: String = match text.find("[strip]") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let def = dir.join(format!("{name}.toml"));
    std::fs::write(
        &def,
        format!("{kept}\n[strip]\ndocs = false\nman = false\nlocales = false\napt_lists = false\n"),
    )
    .unwrap();
    let files = repo().join(format!("guest-images/images/{name}"));
    if files.is_dir() {
        let _ = Command::new("cp").arg("-a").arg(&files).arg(dir).status();
    }
    def
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benchmarks: nothing to run
    }
    let mut rows: Vec<String> = Vec::new();
    let mut row = |what: &str, unit: &str, v: (f64, f64, f64), runs: usize| {
        let line = format!(
            "| {what} | {unit} | {:.1} | {:.1} | {:.1} | {runs} |",
            v.0, v.1, v.2
        );
        println!("{line}");
        rows.push(line);
    };
    let def = |n: &str| repo().join(format!("guest-images/images/{n}.toml"));

    let mut sizes = Vec::new();
    for name in ["base", "redis", "nginx", "postgresql"] {
        build(&def(name), &[], None); // warm the root-tree cache
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..CACHED_RUNS {
            let (s, b) = build(&def(name), &[], None);
            times.push(s);
            size = b;
        }
        row(
            &format!("build {name}, root tree cached"),
            "s",
            median(times),
            CACHED_RUNS,
        );
        sizes.push((name, size));
    }
    let (s, _) = build(&def("redis"), &["--pull"], None);
    row(
        "build redis --pull (mmdebstrap again, .debs from the local cache)",
        "s",
        (s, s, s),
        1,
    );

    // Cold: an empty cache, except for the guest kernel (a 5-10 minute build
    // that image builds share, measured elsewhere).
    let cold = Scratch::new("cold");
    std::os::unix::fs::symlink(cache().join("kernel"), cold.0.join("kernel"))
        .expect("link kernel cache");
    let (s, _) = build(&def("redis"), &[], Some(&cold.0));
    row(
        "build redis cold (empty cache: every package downloaded)",
        "s",
        (s, s, s),
        1,
    );

    for (name, size) in &sizes {
        let m = mib(*size);
        row(
            &format!("image size {name} (stripped as defined)"),
            "MiB",
            (m, m, m),
            1,
        );
    }
    let dir = Scratch::new("unstripped");
    for name in ["redis", "postgresql"] {
        let (_, b) = build(&unstripped(name, &dir.0), &[], None);
        let m = mib(b);
        row(
            &format!("image size {name} without any stripping"),
            "MiB",
            (m, m, m),
            1,
        );
    }

    let table = format!(
        "Image builds (`cargo bench --bench images`; seconds wall clock, sizes of image.erofs, lz4hc)\n\n\
         | measurement | unit | median | min | max | runs |\n|---|---|---:|---:|---:|---:|\n{}\n",
        rows.join("\n")
    );
    match results::append_results(&table) {
        Ok(p) => println!("appended to {}", p.display()),
        Err(e) => eprintln!("{e}"),
    }
}
