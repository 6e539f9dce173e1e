//! `herd image`: build appliance images from definitions into the image
//! store, list and remove them; `herd run --root NAME[:VERSION]` resolves
//! through [`resolve_root`].

pub mod assets;
pub mod build;
pub mod definition;
pub mod manifest;
mod progress;
pub mod rootfs;
pub mod store;
mod strip;

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::exit_status::{EXIT_BAD_INPUT, EXIT_HOST_FAILURE, EXIT_OK};
use build::BuildError;
use definition::Definition;
use store::{Store, StoreError};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an image from a TOML definition (or one of the examples built
    /// into herd: base, redis, nginx, postgresql) into the image store.
    Build {
        /// Definition file, or an example's name.
        #[arg(value_name = "FILE|EXAMPLE")]
        definition: String,
        /// Resolve the packages again (newer versions) instead of reusing
        /// the cached root tree of an earlier build.
        #[arg(long)]
        pull: bool,
        /// Print only the result.
        #[arg(long, short)]
        quiet: bool,
    },
    /// List the images in the store.
    Ls {
        /// One JSON object per image (the manifest, plus path and users).
        #[arg(long)]
        json: bool,
    },
    /// Remove NAME:VERSION from the store (refused while an appliance runs
    /// on it).
    Rm {
        #[arg(value_name = "NAME:VERSION")]
        reference: String,
    },
    /// List the example definitions built into herd, or write them out.
    Examples {
        /// Write the definitions and their files into DIR.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

pub fn run(cmd: ImageCommand) -> u8 {
    let store = Store::from_env();
    let result = match cmd {
        ImageCommand::Build {
            definition,
            pull,
            quiet,
        } => build_cmd(&store, &definition, pull, quiet),
        ImageCommand::Ls { json } => ls(&store, json).map_err(BuildError::from),
        ImageCommand::Rm { reference } => store
            .remove(&reference)
            .map(|i| println!("herd: removed {}", i.reference()))
            .map_err(BuildError::from),
        ImageCommand::Examples { write } => examples(write.as_deref()),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("herd: error: {e}");
            match e {
                // As a shell reports a command killed by SIGINT.
                BuildError::Interrupted => 130,
                BuildError::Tool { .. }
                | BuildError::Kernel(_)
                | BuildError::Io { .. }
                | BuildError::NoSpace { .. } => EXIT_HOST_FAILURE,
                _ => EXIT_BAD_INPUT,
            }
        }
    }
}

/// A definition file; a bare example name (no such file) means the
/// embedded example, written to a temp dir first.
fn build_cmd(store: &Store, what: &str, pull: bool, quiet: bool) -> Result<(), BuildError> {
    let path = Path::new(what);
    let example = !path.exists() && assets::example_names().contains(&what);
    let tmp;
    let def = if example {
        tmp = TempDir::new("herd-example")?;
        assets::write_examples(&tmp.0).map_err(|e| BuildError::io("write", &tmp.0, e))?;
        Definition::load(&tmp.0.join(format!("{what}.toml")))?
    } else {
        Definition::load(path)?
    };
    let start = std::time::Instant::now();
    let built = build::build(&def, store, &build::Options { pull, quiet })?;
    let m = &built.image.manifest;
    if !quiet {
        eprintln!(
            "herd: {} {} in {:.1} s: {} packages, {:.1} MiB (stripping saved {:.1} MiB){}",
            if built.unchanged {
                "rebuilt identically (the store already has it)"
            } else {
                "built"
            },
            built.image.reference(),
            start.elapsed().as_secs_f64(),
            m.packages.len(),
            mib(m.size),
            mib(m.stripped_bytes),
            if built.cached {
                "; root tree from the cache (--pull to resolve packages again)"
            } else {
                ""
            }
        );
    }
    println!("{} sha256:{}", built.image.reference(), m.sha256);
    Ok(())
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir, BuildError> {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).map_err(|e| BuildError::io("create", &p, e))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn examples(write: Option<&Path>) -> Result<(), BuildError> {
    match write {
        Some(dir) => {
            assets::write_examples(dir).map_err(|e| BuildError::io("write", dir, e))?;
            println!("herd: examples written to {}", dir.display());
        }
        None => {
            for name in assets::example_names() {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ls(store: &Store, json: bool) -> Result<(), StoreError> {
    let images = store.list()?;
    if json {
        for i in &images {
            let mut v = serde_json::to_value(&i.manifest).unwrap_or_default();
            v["path"] = i.image().display().to_string().into();
            v["in_use_by"] = store::users_of(&i.image()).into();
            println!("{v}");
        }
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:>9} {:<17} {:>8}  IN USE BY",
        "NAME", "VERSION", "SIZE", "CREATED", "PACKAGES"
    );
    for i in &images {
        let m = &i.manifest;
        let users = store::users_of(&i.image());
        println!(
            "{:<16} {:<10} {:>6.1}MiB {:<17} {:>8}  {}",
            m.name,
            m.version,
            mib(m.size),
            utc(m.created),
            m.packages.len(),
            if users.is_empty() {
                "-".to_owned()
            } else {
                users.join(", ")
            }
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` (UTC) for Unix seconds.
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// What `herd run` boots: `--root` as a file path, or as NAME[:VERSION]
/// from the store; the kernel defaults to the one the store image was
/// built with.
#[derive(Debug)]
pub struct ResolvedRoot {
    pub root: Option<PathBuf>,
    pub kernel: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "--kernel is required unless --root names an image in the store (e.g. --root redis) \
         or --config names a file with a kernel key"
    )]
    NoKernel,
}

pub fn resolve_root(
    root: Option<&str>,
    kernel: Option<PathBuf>,
) -> Result<ResolvedRoot, ResolveError> {
    match root {
        Some(r) if store::looks_like_reference(r) => {
            let store = Store::from_env();
            let image = store.resolve(r)?;
            let kernel = match kernel {
                Some(k) => k,
                None => store.kernel_for(&image)?,
            };
            Ok(ResolvedRoot {
                root: Some(image.image()),
                kernel,
            })
        }
        _ => Ok(ResolvedRoot {
            root: root.map(PathBuf::from),
            kernel: kernel.ok_or(ResolveError::NoKernel)?,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
    }
}
