//! Deleting what an image's services never read at run time: docs, man
//! pages, translations, apt's lists, and the definition's own paths.

use std::fs;
use std::path::{Path, PathBuf};

use super::build::BuildError;
use super::definition::Strip;

/// (what, paths under the root whose contents go)
fn rules(strip: &Strip) -> Vec<(&'static str, &'static [&'static str])> {
    let mut rules: Vec<(&str, &[&str])> = Vec::new();
    if strip.docs {
        rules.push((
            "docs",
            &["usr/share/doc", "usr/share/doc-base", "usr/share/lintian"],
        ));
    }
    if strip.man {
        rules.push((
            "man",
            &["usr/share/man", "usr/share/info", "usr/share/groff"],
        ));
    }
    if strip.locales {
        rules.push(("locales", &["usr/share/locale", "usr/share/i18n"]));
    }
    if strip.apt_lists {
        rules.push((
            "apt_lists",
            &[
                "var/lib/apt/lists",
                "var/cache/apt",
                "var/cache/debconf/templates.dat",
            ],
        ));
    }
    rules
}

/// Deletes what the definition strips (the listed directories stay,
/// empty); returns what was stripped and the bytes it freed.
pub fn strip(root: &Path, strip: &Strip) -> Result<(Vec<String>, u64), BuildError> {
    let mut done = Vec::new();
    let mut bytes = 0;
    for (what, paths) in rules(strip) {
        for rel in paths {
            let p = root.join(rel);
            if p.is_file() {
                bytes += remove(&p)?;
                continue;
            }
            let Ok(entries) = fs::read_dir(&p) else {
                continue;
            };
            for e in entries.flatten() {
                bytes += remove(&e.path())?;
            }
        }
        done.push(what.to_owned());
    }
    for pattern in &strip.paths {
        for p in matches(root, pattern) {
            bytes += remove(&p)?;
        }
        done.push(pattern.clone());
    }
    Ok((done, bytes))
}

/// Removes a file, link or tree; returns its size.
fn remove(path: &Path) -> Result<u64, BuildError> {
    let size = tree_size(path);
    let removed = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| BuildError::io("remove", path, e))?;
    Ok(size)
}

/// Paths under `root` matching `pattern` (`*` only in the last component).
fn matches(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let (dir, name) = match pattern.rsplit_once('/') {
        Some((d, n)) => (root.join(d), n),
        None => (root.to_owned(), pattern),
    };
    if !name.contains('*') {
        let p = dir.join(name);
        return if p.symlink_metadata().is_ok() {
            vec![p]
        } else {
            Vec::new()
        };
    }
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter(|e| wildcard(name, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `*` matches any run of characters.
fn wildcard(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| wildcard(rest, &tail[i..]))
        }
    }
}

fn tree_size(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if !m.is_dir() {
        return m.len();
    }
    fs::read_dir(p).map_or(0, |d| d.flatten().map(|e| tree_size(&e.path())).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard("llvmjit*", "llvmjit.so"));
        assert!(wildcard("libLLVM-*.so.1", "libLLVM-14.so.1"));
        assert!(wildcard("*", "x"));
        assert!(!wildcard("llvmjit*", "plpgsql.so"));
        assert!(!wildcard("a*b", "ab-c"));
    }

    #[test]
    fn strips_rules_and_paths() {
        let root = std::env::temp_dir().join(format!("herd-strip-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for f in [
            "usr/share/doc/a/copyright",
            "usr/lib/x/llvmjit.so",
            "usr/lib/x/keep.so",
        ] {
            let p = root.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, b"12345").unwrap();
        }
        let s = Strip {
            paths: vec!["usr/lib/x/llvmjit*".into()],
            ..Strip::default()
        };
        let (what, bytes) = strip(&root, &s).unwrap();
        assert_eq!(bytes, 10);
        assert!(
            what.contains(&"docs".to_owned()) && what.contains(&"usr/lib/x/llvmjit*".to_owned())
        );
        assert!(root.join("usr/share/doc").is_dir());
        assert!(!root.join("usr/share/doc/a").exists());
        assert!(!root.join("usr/lib/x/llvmjit.so").exists());
        assert!(root.join("usr/lib/x/keep.so").exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
