//! An appliance file (`/etc/herd/NAME.toml`): the per-appliance keys a
//! stack file's appliance also takes. `herd run --config FILE` reads it;
//! flags given on the command line win over it (`--disk`/`--net` add to
//! its lists). Relative paths are relative to the file's directory.
//!
//! ```toml
//! kernel = "/var/lib/herd/vmlinux"
//! root = "/var/lib/herd/base.erofs"
//! disks = ["/var/lib/herd/web1.img"]
//! nets = ["tap=web1,bridge=herd0"]
//! mem = 256          # MiB
//! cpus = 1
//! cmdline = "ip=10.20.0.2::10.20.0.1:255.255.255.0::eth0:off"
//! stop_timeout = 10  # seconds
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApplianceFile {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub root: Option<PathBuf>,
    #[serde(default)]
    pub disks: Vec<String>,
    #[serde(default)]
    pub nets: Vec<String>,
    pub mem: Option<u64>,
    pub cpus: Option<u32>,
    pub cmdline: Option<String>,
    pub stop_timeout: Option<Spanned<f64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplianceFileError {
    #[error("cannot read appliance file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("appliance file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value of the right type that herd does not take.
    #[error("appliance file {path}:{line}: {key}: {message}")]
    Value {
        path: PathBuf,
        line: usize,
        key: &'static str,
        message: String,
    },
}

fn resolve(dir: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = dir.join(&*p);
    }
}

impl ApplianceFile {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ApplianceFileError> {
        let mut file: ApplianceFile =
            toml::from_str(text).map_err(|e| ApplianceFileError::Parse {
                path: path.to_owned(),
                message: match e.span() {
                    Some(span) => {
                        let line = crate::toml_span::line(text, span.start);
                        let source = text.lines().nth(line - 1).unwrap_or("").trim();
                        format!("line {line} `{source}`: {}", e.message())
                    }
                    None => e.message().to_owned(),
                },
            })?;
        // Here, not where --stop-timeout is checked: the error names this
        // file and line, not a flag the user never typed.
        if let Some(t) = &file.stop_timeout {
            if let Err(e) = vmm::control::stop_timeout(*t.get_ref()) {
                return Err(ApplianceFileError::Value {
                    path: path.to_owned(),
                    line: crate::toml_span::line(text, t.span().start),
                    key: "stop_timeout",
                    message: e.to_string(),
                });
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.kernel, &mut file.initrd, &mut file.root]
            .into_iter()
            .flatten()
        {
            resolve(dir, p);
        }
        for disk in &mut file.disks {
            let mut p = PathBuf::from(&*disk);
            if p.is_relative() {
                resolve(dir, &mut p);
                *disk = p.display().to_string();
            }
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<Self, ApplianceFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ApplianceFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }
}

/// Fills `args` from an appliance file where the command line left them.
pub fn apply(
    args: &mut crate::RunArgs,
    path: &Path,
    given: &dyn Fn(&str) -> bool,
) -> Result<(), ApplianceFileError> {
    let file = ApplianceFile::load(path)?;
    if !given("kernel") && file.kernel.is_some() {
        args.kernel = file.kernel;
    }
    if !given("initrd") && file.initrd.is_some() {
        args.initrd = file.initrd;
    }
    if !given("root") && file.root.is_some() {
        args.root = file.root;
    }
    if !given("cmdline") && file.cmdline.is_some() {
        args.cmdline = file.cmdline;
    }
    if let (false, Some(mem)) = (given("mem"), file.mem) {
        args.mem = mem;
    }
    if let (false, Some(cpus)) = (given("cpus"), file.cpus) {
        args.cpus = cpus;
    }
    if let (false, Some(t)) = (given("stop_timeout"), file.stop_timeout) {
        args.stop_timeout = t.into_inner();
    }
    args.disks.splice(0..0, file.disks);
    args.nets.splice(0..0, file.nets);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_relative_paths() {
        let f = ApplianceFile::parse(
            Path::new("/etc/herd/web1.toml"),
            "kernel = \"vmlinux\"\ndisks = [\"web1.img:ro\"]\nmem = 256\n",
        )
        .unwrap();
        assert_eq!(f.kernel, Some(PathBuf::from("/etc/herd/vmlinux")));
        assert_eq!(f.disks, vec!["/etc/herd/web1.img:ro".to_owned()]);
        assert_eq!(f.mem, Some(256));
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let e = ApplianceFile::parse(Path::new("/etc/herd/a.toml"), "kernal = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/herd/a.toml") && e.contains("kernal"),
            "{e}"
        );
        let e = ApplianceFile::parse(Path::new("a.toml"), "mem = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mem"), "{e}");
    }

    #[test]
    fn stop_timeout_out_of_range_names_file_line_key_and_range() {
        let parse = |text: &str| ApplianceFile::parse(Path::new("/etc/herd/a.toml"), text);
        for (value, shown) in [
            ("-1.0", "-1"),
            ("3600.5", "3600.5"),
            ("nan", "NaN"),
            ("inf", "inf"),
        ] {
            let e = parse(&format!("mem = 64\nstop_timeout = {value}\n"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                e,
                format!(
                    "appliance file /etc/herd/a.toml:2: stop_timeout: {shown} is out of range: \
                     use 0 to 3600 seconds"
                )
            );
        }
        for ok in ["0", "0.5", "3600"] {
            let f = parse(&format!("stop_timeout = {ok}\n")).unwrap();
            let t = f.stop_timeout.map(Spanned::into_inner);
            assert_eq!(t, Some(ok.parse().unwrap()), "{ok}");
        }
    }
}
