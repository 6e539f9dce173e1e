//! `herd image build`: definition → root tree (cached mmdebstrap tarball)
//! → herd appliance init → extra files and default services → strip →
//! reproducible erofs → manifest → atomic publish into the store.
//!
//! Everything happens in a work directory inside the store (so the final
//! step is one rename on one filesystem); it is deleted on any error, and
//! a build interrupted harder than that leaves only a `.build-*`
//! directory that the next build removes. The store never holds half an
//! image.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::assets;
use super::definition::{Base, Definition, DefinitionError};
use super::manifest::{dpkg_packages, Manifest, Package};
use super::progress::Progress;
use super::rootfs::{self, hex};
use super::store::{Store, StoreError, StoredImage, IMAGE_FILE, MANIFEST_FILE, TMP_PREFIX};
use super::strip;

/// SOURCE_DATE_EPOCH when the environment sets none: every timestamp in
/// the image (2023-11-14). Not 0: shadow would read a password change
/// date of 0 as "must change now".
const DEFAULT_EPOCH: u64 = 1_700_000_000;

/// The Debian package that gives every base the busybox its init runs.
const BUSYBOX_PACKAGE: &str = "busybox-static";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("package {package:?} does not exist in Debian {suite} (apt: Unable to locate package); check its name (apt-cache search) and the definition's packages")]
    NoSuchPackage { package: String, suite: String },
    #[error("no space left on device ({detail}); free space or point HERD_HOME/HERD_CACHE elsewhere; nothing was written to the store")]
    NoSpace { detail: String },
    #[error("{tool}: {detail}")]
    Tool { tool: &'static str, detail: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{reference} is already in the store with another sha256 ({old}, this build {new}); give the definition a new version, or remove the old one first: herd image rm {reference}")]
    Exists {
        reference: String,
        old: String,
        new: String,
    },
    #[error("interrupted; nothing was written to the store")]
    Interrupted,
    #[error("herd image build needs root: mmdebstrap installs packages in a chroot and the image keeps their file owners; run it with sudo")]
    NotRoot,
    #[error("guest kernel build failed: {0}")]
    Kernel(String),
}

impl BuildError {
    pub fn io(what: &'static str, path: &Path, source: std::io::Error) -> BuildError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return BuildError::NoSpace {
                detail: format!("cannot {what} {}", path.display()),
            };
        }
        BuildError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

pub struct Options {
    /// Resolve packages again instead of using the cached root tree.
    pub pull: bool,
    pub quiet: bool,
}

pub struct Built {
    pub image: StoredImage,
    /// The store already had this exact image.
    pub unchanged: bool,
    /// The root tree came from the cache.
    pub cached: bool,
}

pub fn check_interrupt() -> Result<(), BuildError> {
    if crate::interrupt::interrupted() {
        Err(BuildError::Interrupted)
    } else {
        Ok(())
    }
}

/// The work directory; removed when dropped (success renames its result
/// out of it first).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes work directories of builds whose process is gone.
fn remove_stale_work_dirs(images: &Path) {
    let Ok(entries) = fs::read_dir(images) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
            continue;
        };
        let pid = rest.rsplit('-').next().unwrap_or("");
        if !Path::new("/proc").join(pid).exists() || pid == std::process::id().to_string() {
            log::info!(
                "removing {} (left by an interrupted build)",
                e.path().display()
            );
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

pub fn build(def: &Definition, store: &Store, opts: &Options) -> Result<Built, BuildError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::NotRoot);
    }
    crate::interrupt::catch();
    let mut progress = Progress::new(opts.quiet);
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse().map_err(|_| BuildError::Tool {
            tool: "SOURCE_DATE_EPOCH",
            detail: format!("{v:?} is not a number of seconds"),
        })?,
        Err(_) => DEFAULT_EPOCH,
    };
    let images = store.images_dir();
    fs::create_dir_all(&images).map_err(|e| BuildError::io("create", &images, e))?;
    remove_stale_work_dirs(&images);
    let work = WorkDir(images.join(format!(
        "{TMP_PREFIX}{}-{}-{}",
        def.name,
        def.version,
        std::process::id()
    )));
    fs::create_dir(&work.0).map_err(|e| BuildError::io("create", &work.0, e))?;

    progress.step("guest kernel");
    let kernel = ensure_kernel(store, &work.0)?;
    check_interrupt()?;

    let mut packages = def.packages.clone();
    if !packages.iter().any(|p| p == BUSYBOX_PACKAGE) {
        packages.push(BUSYBOX_PACKAGE.to_owned());
        packages.sort();
    }
    progress.step(&format!(
        "root tree: {} {} with {}",
        def.base,
        def.suite,
        packages.join(" ")
    ));
    let req = rootfs::Request {
        base: def.base,
        suite: &def.suite,
        packages: &packages,
        epoch,
        pull: opts.pull,
    };
    let (tar, cached) = rootfs::get(&req, &mut progress)?;
    check_interrupt()?;

    progress.step("unpacking");
    let root = work.0.join("root");
    fs::create_dir(&root).map_err(|e| BuildError::io("create", &root, e))?;
    unpack(def.base, &tar, &root, &work.0)?;
    check_interrupt()?;

    progress.step("installing the herd appliance init");
    let src = work.0.join("herd-src");
    assets::write(assets::INIT_FILES, "guest-images/base/", &src)
        .map_err(|e| BuildError::io("write", &src, e))?;
    let kind = def.base.to_string();
    run(Command::new("bash")
        .arg(src.join("herd-root.sh"))
        .arg(&root)
        .arg(&src)
        .arg(&kind))?;
    let package_list = installed_packages(&root)?;
    if let Some(files) = &def.files {
        copy_tree(files, &root)?;
    }
    write_services(&root, def)?;
    check_interrupt()?;

    progress.step("stripping");
    let (stripped, stripped_bytes) = strip::strip(&root, &def.strip)?;

    progress.step("writing the erofs image");
    let out = work.0.join("out");
    fs::create_dir(&out).map_err(|e| BuildError::io("create", &out, e))?;
    let image = out.join(IMAGE_FILE);
    mkfs_erofs(def, &packages, epoch, &root, &image)?;
    check_interrupt()?;
    let sha256 = sha256_file(&image)?;
    let size = fs::metadata(&image)
        .map_err(|e| BuildError::io("stat", &image, e))?
        .len();
    let manifest = Manifest {
        name: def.name.clone(),
        version: def.version.clone(),
        base: kind,
        suite: def.suite.clone(),
        sha256,
        size,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source_date_epoch: epoch,
        kernel,
        definition_sha256: sha256_file(&def.path).unwrap_or_default(),
        herd_version: env!("CARGO_PKG_VERSION").to_owned(),
        services: def.services.clone(),
        stripped,
        stripped_bytes,
        packages: package_list,
    };
    let json = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    let mpath = out.join(MANIFEST_FILE);
    fs::write(&mpath, json).map_err(|e| BuildError::io("write", &mpath, e))?;
    check_interrupt()?;

    progress.step("publishing");
    let unchanged = publish(store, def, &out, &manifest)?;
    progress.finish();
    let dir = store.image_dir(&def.name, &def.version);
    Ok(Built {
        image: StoredImage {
            manifest: if unchanged {
                Manifest::load(&dir.join(MANIFEST_FILE))?
            } else {
                manifest
            },
            dir,
        },
        unchanged,
        cached,
    })
}

/// Renames `out` to images/NAME/VERSION. An identical image already there
/// is kept (`true`); a different one is an error.
fn publish(
    store: &Store,
    def: &Definition,
    out: &Path,
    manifest: &Manifest,
) -> Result<bool, BuildError> {
    let dest = store.image_dir(&def.name, &def.version);
    if dest.join(MANIFEST_FILE).is_file() {
        let old = super::manifest::Manifest::load(&dest.join(MANIFEST_FILE))?;
        if old.sha256 == manifest.sha256 {
            return Ok(true);
        }
        return Err(BuildError::Exists {
            reference: def.reference(),
            old: old.sha256,
            new: manifest.sha256.clone(),
        });
    }
    let parent = store.images_dir().join(&def.name);
    fs::create_dir_all(&parent).map_err(|e| BuildError::io("create", &parent, e))?;
    // Syncing before the rename: after a crash the store has the whole
    // image or none of it.
    for f in [IMAGE_FILE, MANIFEST_FILE] {
        let p = out.join(f);
        fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| BuildError::io("sync", &p, e))?;
    }
    fs::rename(out, &dest).map_err(|e| BuildError::io("rename into", &dest, e))?;
    Ok(false)
}

/// Puts the kernel the images boot with into the store (built, or taken
/// from the kernel cache, by the embedded guest-images/kernel/build.sh);
/// returns its key.
fn ensure_kernel(store: &Store, work: &Path) -> Result<String, BuildError> {
    let src = work.join("kernel-src");
    assets::write(assets::KERNEL_FILES, "guest-images/kernel/", &src)
        .map_err(|e| BuildError::io("write", &src, e))?;
    let out = Command::new("bash")
        .arg(src.join("build.sh"))
        .env("HERD_CACHE", rootfs::cache_dir())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| BuildError::Kernel(format!("cannot run bash: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Kernel(format!(
            "build.sh exited with {} (messages above)",
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    let key = dir
        .file_name()
        .map(|k| k.to_string_lossy().into_owned())
        .filter(|_| dir.join("vmlinux").is_file())
        .ok_or_else(|| BuildError::Kernel(format!("build.sh printed {dir:?}, no kernel there")))?;
    let dest = store.kernel(&key);
    if dest.is_file() {
        return Ok(key);
    }
    let kernels = store.kernels_dir();
    let tmp = kernels.join(format!("{TMP_PREFIX}{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| BuildError::io("create", &tmp, e))?;
    let copied = fs::copy(dir.join("vmlinux"), tmp.join("vmlinux"))
        .and_then(|_| fs::rename(&tmp, kernels.join(&key)));
    if let Err(e) = copied {
        let _ = fs::remove_dir_all(&tmp);
        if !dest.is_file() {
            return Err(BuildError::io("copy the kernel into", &kernels, e));
        }
    }
    Ok(key)
}

fn run(cmd: &mut Command) -> Result<String, BuildError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Tool {
            tool: "exec",
            detail: format!("cannot run {tool}: {e}"),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    // Ctrl-C reached the step too: that, not the step, is the reason.
    check_interrupt()?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if err.contains("No space left on device") {
        let line = err
            .lines()
            .find(|l| l.contains("No space left"))
            .unwrap_or("");
        return Err(BuildError::NoSpace {
            detail: format!("{tool}: {}", line.trim()),
        });
    }
    Err(BuildError::Tool {
        tool: "build step",
        detail: format!("{cmd:?} failed ({}): {}", out.status, err.trim()),
    })
}

/// The cached tarball into `root`: the whole tree for Debian, only
/// busybox for the busybox base.
fn unpack(base: Base, tar: &Path, root: &Path, work: &Path) -> Result<(), BuildError> {
    match base {
        Base::Debian => {
            run(Command::new("tar")
                .args([
                    "-x",
                    "-p",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "-f",
                ])
                .arg(tar)
                .arg("-C")
                .arg(root))?;
        }
        Base::Busybox => {
            let x = work.join("extract");
            fs::create_dir(&x).map_err(|e| BuildError::io("create", &x, e))?;
            run(Command::new("tar")
                .args(["-x", "--wildcards", "-f"])
                .arg(tar)
                .arg("-C")
                .arg(&x)
                .arg("*bin/busybox"))?;
            let found = ["usr/bin/busybox", "bin/busybox"]
                .iter()
                .map(|p| x.join(p))
                .find(|p| p.is_file() && !p.is_symlink())
                .ok_or_else(|| BuildError::Tool {
                    tool: "tar",
                    detail: format!("{} has no bin/busybox", tar.display()),
                })?;
            let bin = root.join("bin");
            fs::create_dir(&bin).map_err(|e| BuildError::io("create", &bin, e))?;
            fs::rename(&found, bin.join("busybox"))
                .map_err(|e| BuildError::io("move", &found, e))?;
        }
    }
    Ok(())
}

/// The packages in the root: dpkg's status for a Debian root; for the
/// busybox base, busybox-static's version read from the binary itself.
fn installed_packages(root: &Path) -> Result<Vec<Package>, BuildError> {
    let status = root.join("var/lib/dpkg/status");
    if status.is_file() {
        let text = fs::read_to_string(&status).map_err(|e| BuildError::io("read", &status, e))?;
        return Ok(dpkg_packages(&text));
    }
    let banner = run(Command::new(root.join("bin/busybox")).arg("--help")).unwrap_or_default();
    // "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary."
    let version = banner
        .split("(Debian ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or("unknown");
    Ok(vec![Package {
        name: BUSYBOX_PACKAGE.to_owned(),
        version: version.to_owned(),
    }])
}

/// The definition's `files` directory over the root, owned by root (the
/// checkout's owner means nothing in the guest); existing directories keep
/// their metadata.
fn copy_tree(files: &Path, root: &Path) -> Result<(), BuildError> {
    if !files.is_dir() {
        return Err(BuildError::Tool {
            tool: "files",
            detail: format!(
                "{} is not a directory (the definition's `files` is relative to the definition file)",
                files.display()
            ),
        });
    }
    let sh = "tar -C \"$1\" --owner=0 --group=0 --numeric-owner -cf - . | tar -C \"$2\" -xpf - --no-overwrite-dir";
    run(Command::new("sh")
        .args(["-c", sh, "copy"])
        .arg(files)
        .arg(root))
    .map(drop)
}

fn write_services(root: &Path, def: &Definition) -> Result<(), BuildError> {
    let path = root.join("etc/herd/services");
    if def.services.is_empty() {
        return Ok(());
    }
    let mut text = format!(
        "# Default services of {} (herd image build); a line with the same\n# NAME in the data disk's config/services replaces one of these.\n",
        def.reference()
    );
    for (name, command) in &def.services {
        text.push_str(&format!("{name} {command}\n"));
    }
    fs::write(&path, text).map_err(|e| BuildError::io("write", &path, e))
}

/// A reproducible erofs: every timestamp SOURCE_DATE_EPOCH, a UUID derived
/// from the definition and package set, lz4hc.
fn mkfs_erofs(
    def: &Definition,
    packages: &[String],
    epoch: u64,
    root: &Path,
    image: &Path,
) -> Result<(), BuildError> {
    let mut h = Sha256::new();
    h.update(format!(
        "{}\n{}\n{}\n",
        def.reference(),
        def.base,
        def.suite
    ));
    for p in packages {
        h.update(format!("{p}\n"));
    }
    let d = hex(&h.finalize());
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &d[0..8],
        &d[8..12],
        &d[12..16],
        &d[16..20],
        &d[20..32]
    );
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(["--quiet", "-zlz4hc"])
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"));
    if def.base == Base::Busybox {
        cmd.arg("--all-root");
    }
    cmd.arg(image).arg(root);
    run(&mut cmd).map_err(|e| match e {
        BuildError::Tool { detail, .. } if detail.contains("No such file") => BuildError::Tool {
            tool: "mkfs.erofs",
            detail: format!("{detail}; install it: apt-get install erofs-utils"),
        },
        e => e,
    })?;
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String, BuildError> {
    let mut f = fs::File::open(path).map_err(|e| BuildError::io("open", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| BuildError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}
