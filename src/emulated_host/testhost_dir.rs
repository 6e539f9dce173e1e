//! Finding the test host's build (a directory holding vmlinuz + base.cpio).
//!
//! In order: `$HERD_TESTHOST_DIR`; the output of a build script given by
//! `$HERD_TESTHOST_BUILD` or found beside the running binary (the source
//! checkout it was built in: `<checkout>/target/<profile>/herd`, or an
//! installed `<prefix>/bin/herd` with `<prefix>/share/herd/guest-images`);
//! else the newest complete build in `${HERD_CACHE:-~/.cache/herd}/testhost`.
//!
//! herd runs that script with bash, so it must be as trusted as herd: the
//! script and every directory above it must belong to root or to us and be
//! writable by no one else (as OpenSSH checks its key files). A path merely
//! compiled into the binary is never used: its checkout may be gone and the
//! path taken over by another user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::machine::{io_err, EmulatedHostError};

const SCRIPT: &str = "guest-images/testhost/build.sh";

fn complete(dir: &Path) -> bool {
    dir.join("vmlinuz").is_file() && dir.join("base.cpio").is_file()
}

/// The test host's build directory, built first if a trusted build script
/// is found.
pub fn find_testhost() -> Result<PathBuf, EmulatedHostError> {
    if let Some(dir) = std::env::var_os("HERD_TESTHOST_DIR") {
        let dir = PathBuf::from(dir);
        if complete(&dir) {
            return Ok(dir);
        }
        return Err(EmulatedHostError::NoTestHost(format!(
            "HERD_TESTHOST_DIR={} holds no vmlinuz and base.cpio; point it at a directory \
             printed by guest-images/testhost/build.sh, or unset it",
            dir.display()
        )));
    }
    if let Some(script) = build_script()? {
        return run_build(&script);
    }
    let cache = match std::env::var_os("HERD_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/herd"),
    }
    .join("testhost");
    let newest = fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|d| d.join("done").is_file() && complete(d))
        .filter_map(|d| Some((fs::metadata(d.join("done")).ok()?.modified().ok()?, d)))
        .max();
    newest.map(|(_, d)| d).ok_or_else(|| {
        EmulatedHostError::NoTestHost(format!(
            "none in {} and no {SCRIPT} beside this herd binary; build one with \
             guest-images/testhost/build.sh from herd's sources, or set HERD_TESTHOST_DIR \
             to a directory holding vmlinuz and base.cpio (or HERD_TESTHOST_BUILD to the \
             build script)",
            cache.display()
        ))
    })
}

/// `$HERD_TESTHOST_BUILD`, else the first trusted candidate beside the
/// binary. An untrusted script given explicitly is an error; one found
/// beside the binary is skipped with a warning.
fn build_script() -> Result<Option<PathBuf>, EmulatedHostError> {
    if let Some(script) = std::env::var_os("HERD_TESTHOST_BUILD") {
        let script = PathBuf::from(script);
        let script = fs::canonicalize(&script).map_err(io_err(&script))?;
        trusted(&script, current_uid())
            .map_err(|why| EmulatedHostError::BadInput(format!("HERD_TESTHOST_BUILD: {why}")))?;
        return Ok(Some(script));
    }
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    for script in candidates(&exe) {
        if !script.is_file() {
            continue;
        }
        match trusted(&script, current_uid()) {
            Ok(()) => return Ok(Some(script)),
            Err(why) => log::warn!("not running the test host's build script: {why}"),
        }
    }
    Ok(None)
}

/// Where a build script may sit relative to herd at `exe`: the checkout
/// above `target/<profile>/` (also `target/<triple>/<profile>/`), or
/// `<prefix>/share/herd/` for an installed `<prefix>/bin/herd`.
fn candidates(exe: &Path) -> Vec<PathBuf> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut out = Vec::new();
    for up in dir.ancestors().skip(1).take(2) {
        if up.file_name().is_some_and(|n| n == "target") {
            if let Some(checkout) = up.parent() {
                out.push(checkout.join(SCRIPT));
            }
        }
    }
    if let Some(prefix) = dir.parent() {
        out.push(prefix.join("share/herd").join(SCRIPT));
    }
    out
}

fn current_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether `path` (absolute, symlinks resolved) and every directory above it
/// are owned by root or `uid` and writable by nobody else (a sticky
/// directory such as /tmp may be writable by all: its entries can only be
/// replaced by their owners).
fn trusted(path: &Path, uid: u32) -> Result<(), String> {
    const STICKY: u32 = 0o1000;
    for p in path.ancestors() {
        let m = fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if m.uid() != 0 && m.uid() != uid {
            return Err(format!(
                "{} belongs to uid {}, neither root nor us (uid {uid}); build the test host \
                 yourself and set HERD_TESTHOST_DIR",
                p.display(),
                m.uid()
            ));
        }
        let others_write = m.mode() & 0o022 != 0;
        let sticky_dir = m.is_dir() && m.mode() & STICKY != 0;
        if others_write && !(sticky_dir && p != path) {
            return Err(format!(
                "{} is writable by other users (mode {:o}); chmod go-w it, or set \
                 HERD_TESTHOST_DIR",
                p.display(),
                m.mode() & 0o7777
            ));
        }
        // A sticky directory protects the entries it holds, but only those
        // owned by us: the entry below it was checked in the previous step.
    }
    Ok(())
}

fn run_build(script: &Path) -> Result<PathBuf, EmulatedHostError> {
    log::debug!("preparing the test host with {}", script.display());
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(io_err(script))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if out.status.success() && complete(&dir) {
        return Ok(dir);
    }
    Err(EmulatedHostError::NoTestHost(format!(
        "{} failed ({}); see its messages above (it needs root to install QEMU \
         and download Debian's kernel the first time)",
        script.display(),
        out.status
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn build_scripts_are_looked_for_beside_the_binary_only() {
        assert_eq!(
            candidates(Path::new("/src/herd/target/debug/herd")),
            vec![
                PathBuf::from("/src/herd/guest-images/testhost/build.sh"),
                PathBuf::from("/src/herd/target/share/herd/guest-images/testhost/build.sh"),
            ]
        );
        assert_eq!(
            candidates(Path::new(
                "/src/herd/target/x86_64-unknown-linux-gnu/release/herd"
            ))[0],
            PathBuf::from("/src/herd/guest-images/testhost/build.sh")
        );
        assert_eq!(
            candidates(Path::new("/usr/local/bin/herd")),
            vec![PathBuf::from(
                "/usr/local/share/herd/guest-images/testhost/build.sh"
            )]
        );
    }

    #[test]
    fn scripts_others_can_change_are_not_trusted() {
        let d = std::env::temp_dir().join(format!("herd-trust-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("dir");
        let d = fs::canonicalize(&d).expect("canonical");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
        let script = d.join("build.sh");
        fs::write(&script, "exit 0\n").expect("script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
        let me = current_uid();
        let mode_ok = trusted(&script, me);
        // Only meaningful when the directories above the temp dir are sound
        // (they are on any normal system: / and /tmp are root's).
        assert!(mode_ok.is_ok(), "{mode_ok:?}");
        let stranger = me.wrapping_add(4242);
        if me != 0 {
            assert!(
                trusted(&script, stranger).is_err(),
                "a file of another user"
            );
        } else {
            // As root: owned by root is trusted for anyone; chown to a
            // stranger to see it refused.
            std::os::unix::fs::chown(&script, Some(stranger), None).expect("chown");
            let e = trusted(&script, me).expect_err("owned by a stranger");
            assert!(e.contains("belongs to uid"), "{e}");
            std::os::unix::fs::chown(&script, Some(me), None).expect("chown back");
        }
        fs::set_permissions(&script, fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = trusted(&script, me).expect_err("world-writable script");
        assert!(e.contains("writable by other users"), "{e}");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = trusted(&script, me).expect_err("world-writable directory");
        assert!(e.contains("writable by other users"), "{e}");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(trusted(&script, me).is_ok(), "sticky directory like /tmp");
        let _ = fs::remove_dir_all(&d);
    }
}
