//! The stack file (`herd.toml` by default): its TOML shape, and errors that
//! name the file, the key and the line.
//!
//! ```toml
//! name = "demo"                      # default: the file's directory name
//! [network]
//! name = "herd-demo"                 # the bridge (at most 15 characters)
//! subnet = "10.20.0.1/24"            # the host's address on it
//! nat = false
//! [defaults]
//! image = "base"                     # any appliance key below
//! mem = 128
//! [appliances.web]
//! image = "nginx:1"
//! personality = "personalities/web"  # becomes the data disk on the first up
//! address = "10.20.0.2"              # default: the next free one, kept
//! depends_on = ["redis"]
//! restart = "on-failure"
//! health = { http = "/", port = 80 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackFile {
    pub name: Option<Spanned<String>>,
    pub network: Option<Spanned<Network>>,
    #[serde(default)]
    pub defaults: Settings,
    #[serde(default)]
    pub appliances: BTreeMap<Spanned<String>, Spanned<Settings>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub name: Spanned<String>,
    pub subnet: Spanned<String>,
    #[serde(default)]
    pub nat: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    No,
    OnFailure,
    Always,
}

/// An appliance's keys; `[defaults]` takes the same ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `NAME[:VERSION]` in the image store, or a path to an image file.
    pub image: Option<Spanned<String>>,
    /// A kernel to boot instead of the image's own (or with no image).
    pub kernel: Option<Spanned<PathBuf>>,
    /// A directory that becomes the data disk on the first `up`.
    pub personality: Option<Spanned<PathBuf>>,
    /// An existing data disk.
    pub disk: Option<Spanned<PathBuf>>,
    /// Size of a data disk made from a personality (default 64M).
    pub disk_size: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub mem: Option<u64>,
    pub cpus: Option<u32>,
    pub depends_on: Option<Vec<Spanned<String>>>,
    pub restart: Option<Restart>,
    pub health: Option<Spanned<Health>>,
    pub replicas: Option<Spanned<u32>>,
    /// Kernel command-line additions.
    pub cmdline: Option<String>,
    /// A command that ends (`herd.run`): the appliance is a job.
    pub run: Option<String>,
    pub stop_timeout: Option<Spanned<f64>>,
}

/// Exactly one of `tcp`, `http` (with `port`), `console`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// A TCP port that must accept connections.
    pub tcp: Option<u16>,
    /// An HTTP path that must answer `status` (default 200) on `port`.
    pub http: Option<String>,
    pub port: Option<u16>,
    pub status: Option<u16>,
    /// A line (substring) the appliance's console must print.
    pub console: Option<String>,
    /// Seconds between attempts, per attempt, and how many attempts.
    pub interval: Option<f64>,
    pub timeout: Option<f64>,
    pub retries: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StackFileError {
    #[error("cannot read stack file {path}: {source}; create it or pass -f FILE")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `FILE:LINE: key: message` — the one-line form every check uses.
    #[error("{path}:{line}: {key}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Turns a byte offset into a 1-based line number.
pub struct Located<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Located<'_> {
    pub fn line(&self, offset: usize) -> usize {
        crate::toml_span::line(self.text, offset)
    }

    pub fn error(
        &self,
        span: std::ops::Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> StackFileError {
        StackFileError::At {
            path: self.path.to_owned(),
            line: self.line(span.start),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The key a TOML error is about: the backquoted field name serde names,
/// else the text at the error's position.
fn error_key(message: &str, text: &str, span: Option<std::ops::Range<usize>>) -> String {
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        return field.to_owned();
    }
    span.and_then(|s| text.get(s))
        .map(|t| t.trim().trim_matches(['[', ']', '"']).to_owned())
        .filter(|t| !t.is_empty() && !t.contains('\n'))
        .unwrap_or_else(|| "-".into())
}

impl StackFile {
    pub fn parse(path: &Path, text: &str) -> Result<Self, StackFileError> {
        toml::from_str(text).map_err(|e| {
            let at = Located { path, text };
            let message = e.message().trim().replace('\n', " ");
            let key = error_key(&message, text, e.span());
            at.error(e.span().unwrap_or(0..0), key, message)
        })
    }

    pub fn load(path: &Path) -> Result<(Self, String), StackFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| StackFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok((Self::parse(path, &text)?, text))
    }
}

impl Settings {
    /// These settings over `defaults` (which fill what is missing).
    pub fn or(&self, defaults: &Settings) -> Settings {
        let s = self.clone();
        let d = defaults.clone();
        Settings {
            image: s.image.or(d.image),
            kernel: s.kernel.or(d.kernel),
            personality: s.personality.or(d.personality),
            disk: s.disk.or(d.disk),
            disk_size: s.disk_size.or(d.disk_size),
            address: s.address.or(d.address),
            mem: s.mem.or(d.mem),
            cpus: s.cpus.or(d.cpus),
            depends_on: s.depends_on.or(d.depends_on),
            restart: s.restart.or(d.restart),
            health: s.health.or(d.health),
            replicas: s.replicas.or(d.replicas),
            cmdline: s.cmdline.or(d.cmdline),
            run: s.run.or(d.run),
            stop_timeout: s.stop_timeout.or(d.stop_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        StackFile::parse(Path::new("/s/herd.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn unknown_keys_and_duplicates_name_file_key_and_line() {
        let e = err("[appliances.web]\nimage = \"base\"\nmemory = 3\n");
        assert!(
            e.starts_with("/s/herd.toml:3: memory: unknown field"),
            "{e}"
        );
        let e = err("[appliances.web]\nimage = \"a\"\n\n[appliances.web]\nimage = \"b\"\n");
        assert!(e.starts_with("/s/herd.toml:4: web: duplicate key"), "{e}");
        let e = err("[appliances.web]\nrestart = \"sometimes\"\n");
        assert!(e.starts_with("/s/herd.toml:2: "), "{e}");
    }

    #[test]
    fn defaults_fill_gaps() {
        let f = StackFile::parse(
            Path::new("h.toml"),
            "[defaults]\nmem = 64\nimage = \"base\"\n[appliances.a]\nmem = 32\n",
        )
        .unwrap();
        let (_, a) = f.appliances.iter().next().unwrap();
        let s = a.get_ref().or(&f.defaults);
        assert_eq!(s.mem, Some(32));
        assert_eq!(s.image.unwrap().into_inner(), "base");
    }
}
