//! A VM's configuration, validated before anything is built.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::arch::x86_64::layout::CMDLINE_MAX_SIZE;
use crate::arch::x86_64::mptable::MAX_CPUS;

pub const MIN_MEM_MIB: u64 = 16;
/// Beyond 64 TiB no x86 host can map the guest (user address space is
/// 128 TiB), so larger values are certainly typos.
pub const MAX_MEM_MIB: u64 = 64 << 20;

/// Kernel arguments every herd guest gets, before the user's own.
/// `reboot=a` makes Linux reboot through the FADT's reset register, falling
/// back to the i8042 when ACPI is off; without it, a kernel built with EFI
/// support (Debian's) treats a hardware-reduced ACPI machine as an EFI one,
/// and with no EFI firmware it ends up jumping to a BIOS reset vector that
/// is not there. `panic=1` turns a panic into a reboot herd can see,
/// `8250.nr_uarts=1` spares the guest probing three serial ports that are
/// not there.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=a panic=1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleConfig {
    /// The terminal: guest output to stdout, stdin to the guest.
    Stdio,
    /// Discarded.
    None,
    /// Appended to a file.
    File(PathBuf),
    /// A named appliance's console log: appended, rotated when it would
    /// pass `max_bytes`.
    Log { path: PathBuf, max_bytes: u64 },
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

/// A `--disk PATH[:ro]` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads from /sys/block/vdX/serial, taken from the path
    /// as the user gave it: a jail later rewrites `path` (symlinks resolved).
    pub serial: String,
}

impl FromStr for DiskSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, read_only) = match s.rsplit_once(':') {
            Some((path, "ro")) => (path, true),
            Some((path, "rw")) => (path, false),
            _ => (s, false),
        };
        if path.is_empty() {
            return Err(ConfigError::Disk(s.to_owned()));
        }
        Ok(DiskSpec {
            path: path.into(),
            read_only,
            serial: crate::device_manager::virtio_devices::disk_serial(Path::new(path)),
        })
    }
}

/// A `--net tap=NAME[,mac=MAC]` argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
    /// A host bridge to put the TAP on.
    pub bridge: Option<String>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The MAC of a NIC given none: derived from the appliance's name (the
/// TAP's name for an unnamed VM), stable across restarts. `herd up` derives
/// its appliances' MACs here too, so an appliance has the same MAC under
/// `herd up` as under `herd run --name`.
pub fn derived_mac(name: Option<&str>, tap: &str) -> [u8; 6] {
    devices::virtio::net::mac_from_name(name.unwrap_or(tap))
}

/// A MAC as `--net ...,mac=` takes it: `02:1a:2b:3c:4d:5e`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

impl FromStr for NetSpec {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        let mut bridge = None;
        for item in s.split(',') {
            match item.split_once('=') {
                // Linux interface names are at most 15 bytes.
                Some(("tap", name)) if !name.is_empty() && name.len() <= 15 => {
                    tap = Some(name.to_owned());
                }
                Some(("bridge", name)) if !name.is_empty() && name.len() <= 15 => {
                    bridge = Some(name.to_owned());
                }
                Some(("mac", m)) => {
                    let parsed = parse_mac(m).ok_or_else(|| ConfigError::Mac(m.to_owned()))?;
                    if parsed[0] & 1 != 0 {
                        return Err(ConfigError::Mac(m.to_owned()));
                    }
                    mac = Some(parsed);
                }
                _ => return Err(ConfigError::Net(s.to_owned())),
            }
        }
        match tap {
            Some(tap) => Ok(NetSpec { tap, mac, bridge }),
            None => Err(ConfigError::Net(s.to_owned())),
        }
    }
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The appliance's name: logs, and the default MAC address.
    pub name: Option<String>,
    /// The shared read-only root image, attached first (/dev/vda).
    pub root: Option<PathBuf>,
    pub disks: Vec<DiskSpec>,
    pub nets: Vec<NetSpec>,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Arguments appended to `DEFAULT_CMDLINE`.
    pub cmdline: Option<String>,
    pub mem_mib: u64,
    pub cpus: u32,
    pub console: ConsoleConfig,
    pub boot_report: Option<PathBuf>,
    /// A virtio-rng device fed by the host's getrandom (after the NICs).
    pub rng: bool,
    /// A virtio-vsock device (guest CID 3) whose host side is this Unix
    /// socket, Firecracker's hybrid-vsock convention (after the rng).
    pub vsock: Option<PathBuf>,
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
    #[error("--disk {0:?} is not valid: use PATH or PATH:ro")]
    Disk(String),
    #[error("disk image {0} does not exist; create one with `herd disk create`")]
    DiskMissing(PathBuf),
    #[error("disk image {0} is neither a regular file nor a block device")]
    DiskNotFile(PathBuf),
    #[error(
        "--net {0:?} is not valid: use tap=NAME[,mac=02:xx:xx:xx:xx:xx] (NAME at most 15 bytes)"
    )]
    Net(String),
    #[error("MAC address {0:?} is not valid: use six hex bytes like 02:00:00:00:00:01, unicast")]
    Mac(String),
    #[error("too many virtio devices ({0}): herd supports at most {max} (root, disks and NICs)", max = crate::device_manager::mmio::MAX_MMIO_DEVICES)]
    TooManyDevices(usize),
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
        let images = self.root.iter().chain(self.disks.iter().map(|d| &d.path));
        for image in images {
            use std::os::unix::fs::FileTypeExt;
            match std::fs::metadata(image) {
                Err(_) => return Err(ConfigError::DiskMissing(image.clone())),
                Ok(m) if !m.is_file() && !m.file_type().is_block_device() => {
                    return Err(ConfigError::DiskNotFile(image.clone()))
                }
                Ok(_) => {}
            }
        }
        if self.virtio_device_count() > crate::device_manager::mmio::MAX_MMIO_DEVICES {
            return Err(ConfigError::TooManyDevices(self.virtio_device_count()));
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

    /// A NIC's MAC address: the one given, else [`derived_mac`].
    pub fn nic_mac(&self, spec: &NetSpec) -> [u8; 6] {
        spec.mac
            .unwrap_or_else(|| derived_mac(self.name.as_deref(), &spec.tap))
    }

    /// Root, then disks, then NICs, then the rng and vsock: the order of
    /// their MMIO slots.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.root.is_some())
            + self.disks.len()
            + self.nets.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some())
    }

    /// herd's defaults, the root and the virtio devices, then the user's
    /// arguments: the user's win where the kernel takes the last
    /// occurrence, and a `--` in them cannot hide herd's device entries.
    pub fn full_cmdline(&self) -> String {
        let mut parts = vec![DEFAULT_CMDLINE.to_owned()];
        if self.root.is_some() {
            parts.push("root=/dev/vda ro".to_owned());
        }
        for index in 0..self.virtio_device_count() {
            if let Ok(slot) = crate::device_manager::mmio_slot(index) {
                parts.push(slot.cmdline_entry());
            }
        }
        if let Some(extra) = self.cmdline.as_deref().map(str::trim) {
            if !extra.is_empty() {
                parts.push(extra.to_owned());
            }
        }
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            name: None,
            root: None,
            disks: Vec::new(),
            nets: Vec::new(),
            kernel: std::env::current_exe().unwrap(),
            initrd: None,
            cmdline: None,
            mem_mib: 128,
            cpus: 1,
            console: ConsoleConfig::None,
            boot_report: None,
            rng: false,
            vsock: None,
        }
    }

    #[test]
    fn nic_macs_come_from_the_spec_else_the_name_else_the_tap() {
        let spec: NetSpec = "tap=tap7".parse().unwrap();
        let given: NetSpec = "tap=tap7,mac=02:00:00:00:00:09".parse().unwrap();
        let mut c = config();
        assert_eq!(
            c.nic_mac(&spec),
            devices::virtio::net::mac_from_name("tap7")
        );
        c.name = Some("web".into());
        assert_eq!(c.nic_mac(&spec), devices::virtio::net::mac_from_name("web"));
        assert_eq!(c.nic_mac(&given), [2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn mac_text_round_trips_through_net_specs() {
        let mac = derived_mac(Some("web"), "tap7");
        let text = mac_text(mac);
        assert_eq!(text.len(), 17);
        let spec: NetSpec = format!("tap=tap7,mac={text}").parse().unwrap();
        assert_eq!(spec.mac, Some(mac));
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
    fn disk_and_net_arguments() {
        assert_eq!(
            "/a/b.img:ro".parse(),
            Ok(DiskSpec {
                path: "/a/b.img".into(),
                read_only: true,
                serial: "b".into(),
            })
        );
        assert!(!"b.img".parse::<DiskSpec>().unwrap().read_only);
        assert!("".parse::<DiskSpec>().is_err());
        let n: NetSpec = "tap=tap0,mac=02:00:00:00:00:0a".parse().unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tap0", Some([2, 0, 0, 0, 0, 10])));
        assert!("tap=".parse::<NetSpec>().is_err());
        let n: NetSpec = "tap=web1,bridge=appnet".parse().unwrap();
        assert_eq!(n.bridge.as_deref(), Some("appnet"));
        assert!("mac=02:00:00:00:00:01".parse::<NetSpec>().is_err());
        assert!("tap=t,mac=01:00:00:00:00:01".parse::<NetSpec>().is_err());
        assert!("tap=t,mac=02:00:00:00:00".parse::<NetSpec>().is_err());
        assert!("tap=averyveryverylongname".parse::<NetSpec>().is_err());
    }

    #[test]
    fn devices_appear_on_the_command_line_before_user_arguments() {
        let c = VmConfig {
            root: Some("/base.erofs".into()),
            nets: vec!["tap=t0".parse().unwrap()],
            cmdline: Some("-- init-arg".into()),
            ..config()
        };
        let line = c.full_cmdline();
        let root = line.find("root=/dev/vda ro").unwrap();
        let dev0 = line.find("virtio_mmio.device=4K@0xd0000000:5").unwrap();
        let dev1 = line.find("virtio_mmio.device=4K@0xd0001000:6").unwrap();
        let c = VmConfig {
            rng: true,
            vsock: Some("/tmp/v.sock".into()),
            ..config()
        };
        assert_eq!(c.virtio_device_count(), 2);
        assert!(c
            .full_cmdline()
            .contains("virtio_mmio.device=4K@0xd0001000:6"));
        let user = line.find("-- init-arg").unwrap();
        assert!(root < dev0 && dev0 < dev1 && dev1 < user, "{line}");
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
