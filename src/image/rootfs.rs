//! The root file system of an image before herd's own steps: a tarball
//! made by mmdebstrap from the host's apt sources, cached under
//! `${HERD_CACHE:-~/.cache/herd}/rootfs/KEY.tar`. KEY hashes everything
//! that decides which packages land in it (base, suite, packages,
//! SOURCE_DATE_EPOCH, the host's apt sources), so a cached tarball has the
//! same package versions as the first build; `--pull` resolves them again.
//! Downloaded packages are kept in `HERD_CACHE/debs` for every image.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::build::BuildError;
use super::definition::Base;
use super::progress::Progress;

/// Host files that decide where packages come from.
const APT_SOURCES: &[&str] = &["/etc/apt/sources.list", "/etc/apt/sources.list.d"];

pub struct Request<'a> {
    pub base: Base,
    pub suite: &'a str,
    /// Everything to install, sorted.
    pub packages: &'a [String],
    pub epoch: u64,
    pub pull: bool,
}

/// `${HERD_CACHE:-~/.cache/herd}`
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("HERD_CACHE").filter(|c| !c.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/herd")
        }
    }
}

/// The host's apt source files (one-line `.list` and deb822 `.sources`),
/// in a fixed order; they become mmdebstrap's mirrors.
fn apt_source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for src in APT_SOURCES {
        let p = Path::new(src);
        if p.is_file() {
            files.push(p.to_owned());
        } else if let Ok(dir) = std::fs::read_dir(p) {
            let mut in_dir: Vec<PathBuf> = dir
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        }
    }
    // An empty or all-comment sources.list would make mmdebstrap fail.
    files.retain(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
    });
    files
}

pub fn key(req: &Request) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "herd rootfs 1\nbase {}\nsuite {}\nepoch {}\n",
        req.base, req.suite, req.epoch
    ));
    for p in req.packages {
        h.update(format!("package {p}\n"));
    }
    for f in apt_source_files() {
        h.update(format!("source {}\n", f.display()));
        h.update(std::fs::read(&f).unwrap_or_default());
    }
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached tarball for `req`, made with mmdebstrap if needed.
pub fn get(req: &Request, progress: &mut Progress) -> Result<(PathBuf, bool), BuildError> {
    let cache = cache_dir();
    let dir = cache.join("rootfs");
    let key = key(req);
    let tar = dir.join(format!("{key}.tar"));
    if tar.is_file() && !req.pull {
        return Ok((tar, true));
    }
    let debs = cache.join("debs");
    for d in [&dir, &debs] {
        std::fs::create_dir_all(d).map_err(|e| BuildError::io("create", d, e))?;
    }
    // mmdebstrap picks the output format from the name: keep `.tar` last.
    let partial = dir.join(format!(".{key}.{}.tar", std::process::id()));
    let result = mmdebstrap(req, &partial, &debs, progress);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &tar).map_err(|e| BuildError::io("rename", &partial, e))?;
    Ok((tar, false))
}

fn mmdebstrap(
    req: &Request,
    out: &Path,
    debs: &Path,
    progress: &mut Progress,
) -> Result<(), BuildError> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", req.epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .arg("--format=tar")
        .arg(format!("--include={}", req.packages.join(",")));
    match req.base {
        // Unpacked, never installed: the busybox base takes one binary.
        Base::Busybox => {
            cmd.arg("--variant=extract");
        }
        Base::Debian => {
            let q = shell_quote(&debs.to_string_lossy());
            cmd.arg("--variant=minbase")
                .arg("--skip=essential/unlink")
                .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
                .arg(format!("--setup-hook=sync-in {q} /var/cache/apt/archives/"))
                .arg(format!(
                    "--customize-hook=sync-out /var/cache/apt/archives {q}"
                ))
                // Copied from the host by mmdebstrap; herd's init makes them.
                .arg("--customize-hook=rm -f \"$1\"/etc/resolv.conf \"$1\"/etc/hostname");
        }
    }
    cmd.arg(req.suite).arg(out).args(apt_source_files());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| BuildError::Tool {
        tool: "mmdebstrap",
        detail: format!("{e}; install it: apt-get install mmdebstrap"),
    })?;
    let mut log = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if let Some(status) = line.strip_prefix("I: ") {
                progress.detail(&format!("mmdebstrap: {status}"));
            }
            log.push(line);
        }
    }
    let status = child
        .wait()
        .map_err(|e| BuildError::io("wait for", Path::new("mmdebstrap"), e))?;
    if status.success() {
        return Ok(());
    }
    super::build::check_interrupt()?;
    Err(mmdebstrap_error(req, &log))
}

/// The most useful error from mmdebstrap's log: a package apt cannot find
/// is named; no space left is said plainly.
fn mmdebstrap_error(req: &Request, log: &[String]) -> BuildError {
    for line in log {
        if let Some(rest) = line.split("Unable to locate package ").nth(1) {
            return BuildError::NoSuchPackage {
                package: rest.trim().to_owned(),
                suite: req.suite.to_owned(),
            };
        }
        if let Some(rest) = line.split("Package '").nth(1) {
            if line.contains("has no installation candidate") {
                let name = rest.split('\'').next().unwrap_or(rest);
                return BuildError::NoSuchPackage {
                    package: name.to_owned(),
                    suite: req.suite.to_owned(),
                };
            }
        }
        if line.contains("No space left on device") {
            return BuildError::NoSpace {
                detail: format!("mmdebstrap under {}: {line}", cache_dir().display()),
            };
        }
    }
    let tail: Vec<&str> = log
        .iter()
        .filter(|l| !l.starts_with("I: "))
        .map(String::as_str)
        .collect();
    let tail = tail[tail.len().saturating_sub(12)..].join("\n  ");
    BuildError::Tool {
        tool: "mmdebstrap",
        detail: format!("failed:\n  {tail}"),
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(packages: &[String]) -> Request<'_> {
        Request {
            base: Base::Debian,
            suite: "bookworm",
            packages,
            epoch: 1,
            pull: false,
        }
    }

    #[test]
    fn unknown_package_is_named() {
        let p = vec!["redis-servr".to_owned()];
        let log = vec![
            "I: downloading packages with apt...".to_owned(),
            "E: Unable to locate package redis-servr".to_owned(),
            "E: apt-get --yes install failed".to_owned(),
        ];
        let e = mmdebstrap_error(&req(&p), &log).to_string();
        assert!(e.contains("redis-servr") && e.contains("bookworm"), "{e}");
    }

    #[test]
    fn key_depends_on_packages() {
        let a = vec!["a".to_owned()];
        let b = vec!["b".to_owned()];
        assert_ne!(key(&req(&a)), key(&req(&b)));
        assert_eq!(key(&req(&a)), key(&req(&a)));
    }
}
