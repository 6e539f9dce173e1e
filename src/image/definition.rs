//! Image definitions: a small TOML file per image (name, version, what goes
//! into the root, which services start by default, what to strip).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What the root is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// A Debian minbase (mmdebstrap `--variant=minbase`) plus `packages`.
    Debian,
    /// Only busybox-static (extracted, not installed) and the herd init: the
    /// smallest appliance base.
    Busybox,
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Base::Debian => "debian",
            Base::Busybox => "busybox",
        })
    }
}

/// What to delete from the root before it becomes an image: files nothing
/// reads at run time.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Strip {
    /// /usr/share/doc (copyright files too: the manifest names every package)
    #[serde(default = "yes")]
    pub docs: bool,
    /// /usr/share/man, /usr/share/info
    #[serde(default = "yes")]
    pub man: bool,
    /// /usr/share/locale, /usr/share/i18n (except C.UTF-8)
    #[serde(default = "yes")]
    pub locales: bool,
    /// apt's package lists and caches
    #[serde(default = "yes")]
    pub apt_lists: bool,
    /// More paths under the root that nothing needs at run time; `*` matches
    /// within the last component (e.g. "usr/lib/postgresql/15/lib/llvmjit*").
    #[serde(default)]
    pub paths: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for Strip {
    fn default() -> Self {
        Strip {
            docs: true,
            man: true,
            locales: true,
            apt_lists: true,
            paths: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    version: String,
    #[serde(default = "default_base")]
    base: Base,
    #[serde(default = "default_suite")]
    suite: String,
    #[serde(default)]
    packages: Vec<String>,
    files: Option<PathBuf>,
    #[serde(default)]
    services: BTreeMap<String, String>,
    #[serde(default)]
    strip: Strip,
}

fn default_base() -> Base {
    Base::Debian
}

fn default_suite() -> String {
    "bookworm".to_owned()
}

/// A parsed and checked image definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The definition file (for messages).
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    pub base: Base,
    pub suite: String,
    /// Sorted, without duplicates.
    pub packages: Vec<String>,
    /// Directory copied over the root, resolved against the file's directory.
    pub files: Option<PathBuf>,
    /// Default services (NAME → COMMAND), written to /etc/herd/services.
    pub services: BTreeMap<String, String>,
    pub strip: Strip,
}

#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read image definition {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl Definition {
    pub fn load(path: &Path) -> Result<Definition, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path` (relative `files` resolve
    /// against `path`'s directory).
    pub fn parse(path: &Path, text: &str) -> Result<Definition, DefinitionError> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| crate::toml_span::line_column(text, s.start))
                .unwrap_or((1, 1));
            DefinitionError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        let invalid = |key: &str, message: String| DefinitionError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        check_word("name", &raw.name).map_err(|m| invalid("name", m))?;
        check_word("version", &raw.version).map_err(|m| invalid("version", m))?;
        if raw.version == "latest" {
            return Err(invalid(
                "version",
                "\"latest\" is not a version: it always means the newest one in the store".into(),
            ));
        }
        check_word("suite", &raw.suite).map_err(|m| invalid("suite", m))?;
        let mut packages = raw.packages;
        for p in &packages {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
            {
                return Err(invalid(
                    "packages",
                    format!(
                        "{p:?} is not a Debian package name (lowercase letters, digits, + - .)"
                    ),
                ));
            }
        }
        packages.sort();
        packages.dedup();
        if raw.base == Base::Busybox && !packages.is_empty() {
            return Err(invalid(
                "packages",
                "base = \"busybox\" takes no packages; use base = \"debian\"".into(),
            ));
        }
        for (name, command) in &raw.services {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(invalid(
                    &format!("services.{name}"),
                    "a service name has letters, digits, _ . - only".into(),
                ));
            }
            if command.trim().is_empty() || command.contains('\n') {
                return Err(invalid(
                    &format!("services.{name}"),
                    "the command must be one non-empty line".into(),
                ));
            }
        }
        for p in &raw.strip.paths {
            if p.is_empty()
                || p.starts_with('/')
                || p.split('/').any(|c| c == ".." || c.is_empty())
                || p[..p.rfind('/').unwrap_or(0)].contains('*')
            {
                return Err(invalid(
                    "strip.paths",
                    format!(
                        "{p:?}: want a relative path without .. (a * only in its last component)"
                    ),
                ));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let files = raw.files.map(|f| dir.join(f));
        Ok(Definition {
            path: path.to_owned(),
            name: raw.name,
            version: raw.version,
            base: raw.base,
            suite: raw.suite,
            packages,
            files,
            services: raw.services,
            strip: raw.strip,
        })
    }

    /// `NAME:VERSION`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.version)
    }
}

/// Names and versions become directory names in the store.
pub fn check_word(key: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with(['.', '-'])
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid {key}: 1-64 letters, digits, _ . - +, not starting with . or -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Definition, DefinitionError> {
        Definition::parse(Path::new("/defs/x.toml"), text)
    }

    #[test]
    fn full_definition() {
        let d = parse(
            r#"
name = "redis"
version = "1"
suite = "bookworm"
packages = ["redis-server", "busybox-static", "redis-server"]
files = "redis"
[services]
redis = "redis-server /etc/redis/redis.conf"
[strip]
docs = false
"#,
        )
        .unwrap();
        assert_eq!(d.reference(), "redis:1");
        assert_eq!(d.base, Base::Debian);
        assert_eq!(d.packages, ["busybox-static", "redis-server"]);
        assert_eq!(d.files.as_deref(), Some(Path::new("/defs/redis")));
        assert_eq!(d.services["redis"], "redis-server /etc/redis/redis.conf");
        assert!(!d.strip.docs && d.strip.man && d.strip.locales && d.strip.apt_lists);
    }

    #[test]
    fn unknown_key_names_key_file_and_place() {
        let e = parse("name = \"a\"\nversion = \"1\"\npackage = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/defs/x.toml:3:1: "), "{e}");
        assert!(e.contains("unknown field `package`"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\n[strip]\nmanpages = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/defs/x.toml:4:1: ") && e.contains("`manpages`"),
            "{e}"
        );
    }

    #[test]
    fn invalid_toml_gives_line_and_column() {
        let e = parse("name = \"a\"\nversion = 1.\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/defs/x.toml:2:"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\npackages = [\"x\",\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/defs/x.toml:"), "{e}");
    }

    #[test]
    fn missing_fields_and_bad_values_are_named() {
        let e = parse("name = \"a\"\n").unwrap_err().to_string();
        assert!(e.contains("missing field `version`"), "{e}");
        let e = parse("name = \"a/b\"\nversion = \"1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/defs/x.toml: name: "), "{e}");
        let e = parse("name = \"a\"\nversion = \"latest\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("version"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\npackages = [\"Redis Server\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("packages") && e.contains("Redis Server"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\nbase = \"alpine\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpine") && e.contains("debian"), "{e}");
        let e = parse("name = \"a\"\nversion = \"1\"\n[services]\n\"x y\" = \"z\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services.x y"), "{e}");
    }

    #[test]
    fn missing_file_is_named() {
        let e = Definition::load(Path::new("/nonexistent/redis.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/redis.toml") && e.contains("No such file"),
            "{e}"
        );
    }
}
