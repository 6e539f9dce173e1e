//! A VM's configuration, validated before anything is built.

use std::path::PathBuf;
use std::str::FromStr;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::arch::x86_64::mptable::MAX_CPUS;

pub const MIN_MEM_MIB: u64 = 16;
/// Beyond 64 TiB no x86 host can map the guest (user address space is
/// 128 TiB), so larger values are certainly typos.
pub const MAX_MEM_MIB: u64 = 64 << 20;

/// Kernel arguments every herd guest gets, before the user's own.
/// `reboot=k` makes Linux reboot through the i8042 (herd has no ACPI),
/// `panic=1` turns a panic into a reboot herd can see.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The terminal: guest output to stdout, stdin to the guest.
    Stdio,
    /// Discarded.
    None,
    /// Appended to a file.
    File(PathBuf),
}

impl FromStr for ConsoleConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(ConsoleConfig::Stdio),
            "none" => Ok(ConsoleConfig::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(path.into())),
                _ => Err(ConfigError::Console(s.to_owned())),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Arguments appended to `DEFAULT_CMDLINE`.
    pub cmdline: Option<String>,
    pub mem_mib: u64,
    pub cpus: u32,
    pub console: ConsoleConfig,
    pub boot_report: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--mem {0} MiB is too small: a guest needs at least {MIN_MEM_MIB} MiB")]
    MemTooSmall(u64),
    #[error("--mem {0} MiB is too large: herd supports at most {MAX_MEM_MIB} MiB (64 TiB)")]
    MemTooLarge(u64),
    #[error("--cpus {0} is out of range: use 1 to {MAX_CPUS}")]
    Cpus(u32),
    #[error("--console {0:?} is not valid: use stdio, none or file:PATH")]
    Console(String),
    #[error("kernel {0} does not exist; pass the path to a vmlinux or bzImage with --kernel")]
    KernelMissing(PathBuf),
    #[error("kernel {0} is not a regular file")]
    KernelNotFile(PathBuf),
    #[error("initrd {0} does not exist")]
    InitrdMissing(PathBuf),
    #[error("initrd {0} is not a regular file")]
    InitrdNotFile(PathBuf),
    #[error(
        "the kernel command line is {0} bytes with herd's defaults; Linux accepts at most {max}",
        max = CMDLINE_MAX_SIZE - 1
    )]
    CmdlineTooLong(usize),
}

impl VmConfig {
    /// Checks everything that can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemTooSmall(self.mem_mib));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::MemTooLarge(self.mem_mib));
        }
        if self.cpus == 0 || self.cpus > u32::from(MAX_CPUS) {
            return Err(ConfigError::Cpus(self.cpus));
        }
        match std::fs::metadata(&self.kernel) {
            Err(_) => return Err(ConfigError::KernelMissing(self.kernel.clone())),
            Ok(m) if !m.is_file() => return Err(ConfigError::KernelNotFile(self.kernel.clone())),
            Ok(_) => {}
        }
        if let Some(initrd) = &self.initrd {
            match std::fs::metadata(initrd) {
                Err(_) => return Err(ConfigError::InitrdMissing(initrd.clone())),
                Ok(m) if !m.is_file() => return Err(ConfigError::InitrdNotFile(initrd.clone())),
                Ok(_) => {}
            }
        }
        let len = self.full_cmdline().len();
        if len >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(len));
        }
        Ok(())
    }

    /// The vCPU count; only meaningful after `validate`.
    pub fn cpu_count(&self) -> u8 {
        u8::try_from(self.cpus).unwrap_or(MAX_CPUS)
    }

    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }

    /// herd's defaults followed by the user's arguments, so the user's win
    /// where the kernel takes the last occurrence.
    pub fn full_cmdline(&self) -> String {
        match self.cmdline.as_deref().map(str::trim) {
            Some(extra) if !extra.is_empty() => format!("{DEFAULT_CMDLINE} {extra}"),
            _ => DEFAULT_CMDLINE.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: std::env::current_exe().unwrap(),
            initrd: None,
            cmdline: None,
            mem_mib: 128,
            cpus: 1,
            console: ConsoleConfig::None,
            boot_report: None,
        }
    }

    #[test]
    fn console_parsing() {
        assert_eq!("stdio".parse(), Ok(ConsoleConfig::Stdio));
        assert_eq!("none".parse(), Ok(ConsoleConfig::None));
        assert_eq!(
            "file:/tmp/x".parse(),
            Ok(ConsoleConfig::File("/tmp/x".into()))
        );
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        assert!(config().validate().is_ok());
        let c = VmConfig {
            mem_mib: 0,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::MemTooSmall(0)));
        let c = VmConfig {
            cpus: 0,
            ..config()
        };
        assert_eq!(c.validate(), Err(ConfigError::Cpus(0)));
        let c = VmConfig {
            cpus: 255,
            ..config()
        };
        assert!(c.validate().unwrap_err().to_string().contains("1 to 254"));
        let c = VmConfig {
            kernel: "/nonexistent/vmlinux".into(),
            ..config()
        };
        assert!(matches!(c.validate(), Err(ConfigError::KernelMissing(_))));
        let c = VmConfig {
            cmdline: Some("x".repeat(3000)),
            ..config()
        };
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineTooLong(_))));
    }

    #[test]
    fn user_arguments_follow_defaults() {
        let c = VmConfig {
            cmdline: Some("  quiet init=/bin/sh ".into()),
            ..config()
        };
        assert_eq!(
            c.full_cmdline(),
            format!("{DEFAULT_CMDLINE} quiet init=/bin/sh")
        );
        assert_eq!(config().full_cmdline(), DEFAULT_CMDLINE);
    }
}
