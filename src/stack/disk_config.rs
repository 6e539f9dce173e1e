//! Data disks of a stack: made from a personality directory on the first
//! `up` (never overwritten later), and at every `up` the stack's hosts
//! file, the appliance's address and hostname written into the disk's
//! `config/` (the appliance contract, guest-images/README.md). Uses
//! e2fsprogs' debugfs, which edits an unmounted ext4 image without root.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::plan::{DiskSource, Instance, Plan};

#[derive(Debug, thiserror::Error)]
pub enum DiskConfigError {
    #[error("{name}: cannot make its data disk: {source}")]
    Create {
        name: String,
        source: crate::disk::DiskCreateError,
    },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {tool} ({source}); install e2fsprogs")]
    NoTool {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{name}: cannot write config/{file} into {disk} (is it an ext4 data disk, made by `herd disk create`?): {detail}")]
    Write {
        name: String,
        file: &'static str,
        disk: PathBuf,
        detail: String,
    },
}

/// `ADDRESS NAME` for every appliance, the host as `gateway`.
pub fn hosts_file(plan: &Plan) -> String {
    let mut out = String::from("# the stack's hosts file, written by herd up\n");
    if let Some(net) = &plan.network {
        out.push_str(&format!("{}\tgateway\n", net.subnet.host));
    }
    for i in &plan.instances {
        if let Some(a) = i.address {
            out.push_str(&format!("{a}\t{}\n", i.name));
        }
    }
    out
}

fn network_file(plan: &Plan, address: Ipv4Addr) -> String {
    let Some(net) = &plan.network else {
        return String::new();
    };
    format!(
        "# written by herd up from the stack file\nADDRESS={address}/{}\nGATEWAY={}\n",
        net.subnet.prefix, net.subnet.host
    )
}

/// Makes the disk on the first `up`. True if it was made now.
pub fn ensure_disk(inst: &Instance) -> Result<bool, DiskConfigError> {
    let Some(DiskSource::Personality { dir, size, out }) = &inst.disk else {
        return Ok(false);
    };
    if out.exists() {
        return Ok(false);
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DiskConfigError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    crate::disk::create(dir, *size, out).map_err(|source| DiskConfigError::Create {
        name: inst.name.clone(),
        source,
    })?;
    Ok(true)
}

/// Writes config/hosts, config/hostname and (with a network)
/// config/network into the appliance's data disk, which must not be in use.
pub fn write_config(plan: &Plan, inst: &Instance) -> Result<(), DiskConfigError> {
    let Some(disk) = inst.disk.as_ref().map(DiskSource::path) else {
        return Ok(());
    };
    let mut files: Vec<(&'static str, String)> = vec![
        ("hosts", hosts_file(plan)),
        ("hostname", format!("{}\n", inst.name)),
    ];
    if let Some(a) = inst.address {
        files.push(("network", network_file(plan, a)));
    }
    // A disk whose appliance was killed has a journal to replay first, or
    // the replay at the next mount could undo these writes.
    let _ = Command::new("e2fsck").arg("-p").arg(disk).output();
    let scratch = plan.work_dir.join(format!(".{}.config", inst.name));
    std::fs::create_dir_all(&scratch).map_err(|source| DiskConfigError::Io {
        path: scratch.clone(),
        source,
    })?;
    let mut commands = String::from("mkdir config\n");
    for (name, contents) in &files {
        let local = scratch.join(name);
        std::fs::write(&local, contents).map_err(|source| DiskConfigError::Io {
            path: local.clone(),
            source,
        })?;
        commands.push_str(&format!(
            "rm config/{name}\nwrite {} config/{name}\n",
            local.display()
        ));
    }
    let written = debugfs(disk, &commands);
    let _ = std::fs::remove_dir_all(&scratch);
    let failed = |file: &'static str, detail: String| DiskConfigError::Write {
        name: inst.name.clone(),
        file,
        disk: disk.to_owned(),
        detail,
    };
    written.map_err(|detail| failed("hosts", detail))?;
    // debugfs reports some failures only on stderr: read each file back.
    for (name, contents) in &files {
        if debugfs_cat(disk, &format!("config/{name}"))? != *contents {
            return Err(failed(name, "it reads back differently".into()));
        }
    }
    Ok(())
}

/// Runs debugfs commands on `disk`; Err(stderr) if debugfs fails.
fn debugfs(disk: &Path, commands: &str) -> Result<(), String> {
    let mut child = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run debugfs ({e}); install e2fsprogs"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(commands.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("debugfs: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn debugfs_cat(disk: &Path, file: &str) -> Result<String, DiskConfigError> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(disk)
        .output()
        .map_err(|source| DiskConfigError::NoTool {
            tool: "debugfs",
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
