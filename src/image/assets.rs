//! Files `herd image build` needs besides the definition, embedded in the
//! binary so an installed herd (no checkout) builds images exactly as the
//! checkout does: the appliance init, the kernel build, the example images.

use std::path::Path;

macro_rules! repo_file {
    ($path:literal) => {
        (
            $path,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)),
        )
    };
}

/// (path in the checkout, contents)
pub type Asset = (&'static str, &'static [u8]);

/// The appliance init and the script that installs it into a root.
pub const INIT_FILES: &[Asset] = &[
    repo_file!("guest-images/base/herd-root.sh"),
    repo_file!("guest-images/base/init"),
    repo_file!("guest-images/base/config.sh"),
    repo_file!("guest-images/base/herd-power"),
    repo_file!("guest-images/base/herd-reset-file"),
    repo_file!("guest-images/base/herd-outb.c"),
];

/// The guest kernel's build script and config.
pub const KERNEL_FILES: &[Asset] = &[
    repo_file!("guest-images/kernel/build.sh"),
    repo_file!("guest-images/kernel/config-6.1-x86_64"),
    repo_file!("guest-images/kernel/herd.fragment"),
];

/// Example image definitions and their extra files (paths under
/// guest-images/images/).
pub const EXAMPLES: &[Asset] = &[
    repo_file!("guest-images/images/base.toml"),
    repo_file!("guest-images/images/redis.toml"),
    repo_file!("guest-images/images/redis/etc/redis/redis.conf"),
    repo_file!("guest-images/images/nginx.toml"),
    repo_file!("guest-images/images/nginx/etc/nginx/sites-available/default"),
    repo_file!("guest-images/images/postgresql.toml"),
    repo_file!("guest-images/images/postgresql/usr/local/sbin/herd-postgresql"),
];

const EXAMPLES_DIR: &str = "guest-images/images/";

/// Names of the example images (`herd image build redis`).
pub fn example_names() -> Vec<&'static str> {
    EXAMPLES
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(EXAMPLES_DIR)?.strip_suffix(".toml"))
        .filter(|n| !n.contains('/'))
        .collect()
}

/// Writes `files` (checkout paths) under `dir`, with `strip` removed from
/// the front of each path; scripts (a `#!` first line) become executable.
pub fn write(files: &[Asset], strip: &str, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (path, bytes) in files {
        let rel = path.strip_prefix(strip).unwrap_or(path);
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, bytes)?;
        let mode = if bytes.starts_with(b"#!") {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Writes every example (definitions and their file trees) into `dir`.
pub fn write_examples(dir: &Path) -> std::io::Result<()> {
    write(EXAMPLES, EXAMPLES_DIR, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLES_DIR);
        let mut on_disk = Vec::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk.push(p.strip_prefix(&dir).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = EXAMPLES
            .iter()
            .map(|(p, _)| p.strip_prefix(EXAMPLES_DIR).unwrap().to_owned())
            .collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "assets::EXAMPLES must list every file of {EXAMPLES_DIR}"
        );
        assert_eq!(example_names(), ["base", "redis", "nginx", "postgresql"]);
    }
}
