//! From a parsed stack file to the appliances `up` starts: defaults
//! applied, replicas expanded, addresses assigned (kept from the state
//! file), images resolved, disks found, dependency order. Every check runs
//! here, before anything starts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::checks::{assign_addresses, check_health, Planner};
use super::file::{Health, Located, Restart, Settings, StackFile, StackFileError};
use super::state::StackState;
use crate::net_setup::Subnet;

const DEFAULT_MEM_MIB: u64 = 128;
const DEFAULT_DISK_SIZE: &str = "64M";
const DEFAULT_STOP_TIMEOUT: f64 = 10.0;
const MAX_REPLICAS: u32 = 1000;

/// Where a data disk comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum DiskSource {
    /// Made from a personality directory on the first `up` into `out`.
    Personality {
        dir: PathBuf,
        size: u64,
        out: PathBuf,
    },
    Existing(PathBuf),
}

impl DiskSource {
    pub fn path(&self) -> &Path {
        match self {
            DiskSource::Personality { out, .. } => out,
            DiskSource::Existing(p) => p,
        }
    }
}

/// One appliance (one replica) as it will be launched.
#[derive(Clone, Debug)]
pub struct Instance {
    /// Its name in the stack (`web`, `client-3`).
    pub name: String,
    /// The appliance key it comes from (`client`).
    pub group: String,
    /// Its name on the host (`STACK-NAME`): `herd ps/logs/stop` take it.
    pub runtime_name: String,
    /// The image reference it runs, as written (or as upgraded).
    pub image: Option<String>,
    /// The image as the stack file says.
    pub file_image: Option<String>,
    pub root: Option<PathBuf>,
    pub kernel: PathBuf,
    pub disk: Option<DiskSource>,
    pub address: Option<Ipv4Addr>,
    pub tap: Option<String>,
    /// Its NIC's MAC (with a network): distinct within the stack.
    pub mac: Option<String>,
    pub mem: u64,
    pub cpus: u32,
    pub cmdline: Option<String>,
    pub run: Option<String>,
    pub restart: Restart,
    pub health: Option<Health>,
    pub depends_on: Vec<String>,
    pub stop_timeout: f64,
    /// 0 for appliances without dependencies, then one more per step.
    pub level: usize,
}

#[derive(Clone, Debug)]
pub struct StackNetwork {
    pub bridge: String,
    pub subnet: Subnet,
    pub nat: bool,
}

#[derive(Debug)]
pub struct Plan {
    pub stack: String,
    pub file: PathBuf,
    /// Disks, the hosts file: `DIR/.herd/STACK/`.
    pub work_dir: PathBuf,
    pub network: Option<StackNetwork>,
    /// In start order (by level, then name).
    pub instances: Vec<Instance>,
}

/// Finds an image: `(root image, kernel)` for a reference or path and an
/// optional kernel; an error message otherwise.
pub type ImageResolver<'a> =
    &'a dyn Fn(Option<&str>, Option<PathBuf>) -> Result<(Option<PathBuf>, PathBuf), String>;

fn tap_name(runtime_name: &str) -> String {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in runtime_name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("hd-{h:08x}")
}

/// The MAC `herd run --name RUNTIME_NAME` derives (the same on every
/// `up` and under a plain `herd run`), passed explicitly so `plan` can
/// check that no two appliances share one.
fn mac_for(runtime_name: &str, tap: &str) -> String {
    vmm::config::mac_text(vmm::config::derived_mac(Some(runtime_name), tap))
}

fn relative_to(dir: &Path, p: &Path) -> PathBuf {
    if p.is_relative() {
        dir.join(p)
    } else {
        p.to_owned()
    }
}

fn default_stack_name(file: &Path) -> String {
    let dir = std::fs::canonicalize(file)
        .ok()
        .and_then(|f| f.parent().map(Path::to_owned));
    dir.and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| {
            n.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .trim_matches('-')
                .to_owned()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "stack".into())
}

pub fn plan(
    path: &Path,
    text: &str,
    file: &StackFile,
    state: &StackState,
    resolve: ImageResolver,
) -> Result<Plan, StackFileError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let p = Planner {
        at: Located { path, text },
        dir: dir.clone(),
        state,
    };
    let stack = match &file.name {
        Some(n) => n.get_ref().clone(),
        None => default_stack_name(path),
    };
    if let Err(e) = crate::appliance::runtime_dir::validate_name(&format!("{stack}-x")) {
        let span = file.name.as_ref().map_or(0..0, Spanned::span);
        return p.err(span, "name", format!("stack name {stack:?}: {e}"));
    }
    let network = p.network(file)?;
    if file.appliances.is_empty() {
        return p.err(
            0..0,
            "appliances",
            "the stack has no appliances: add an [appliances.NAME] table",
        );
    }
    let groups: BTreeMap<String, (Spanned<()>, Settings)> = file
        .appliances
        .iter()
        .map(|(k, v)| {
            (
                k.get_ref().clone(),
                (Spanned::new(k.span(), ()), v.get_ref().or(&file.defaults)),
            )
        })
        .collect();
    let levels = p.levels(&groups)?;
    let work_dir = dir.join(".herd").join(&stack);

    let mut instances = Vec::new();
    let mut names: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
    let mut disks: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut explicit: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (group, (key, s)) in &groups {
        let replicas = s.replicas.as_ref().map_or(1, |r| *r.get_ref());
        if let Some(r) = &s.replicas {
            if !(1..=MAX_REPLICAS).contains(r.get_ref()) {
                return p.err(
                    r.span(),
                    "replicas",
                    format!("{} is out of range: use 1 to {MAX_REPLICAS}", r.get_ref()),
                );
            }
        }
        // Checked here (as `herd run --stop-timeout` checks it) so the
        // error names the stack file's line instead of failing the launch.
        let stop_timeout = match &s.stop_timeout {
            Some(t) => match vmm::control::stop_timeout(*t.get_ref()) {
                Ok(_) => *t.get_ref(),
                Err(e) => return p.err(t.span(), "stop_timeout", e.to_string()),
            },
            None => DEFAULT_STOP_TIMEOUT,
        };
        let state_image =
            p.state.appliances.get(group).filter(|a| {
                a.file_image.as_deref() == s.image.as_ref().map(|i| i.get_ref().as_str())
            });
        let image = state_image
            .and_then(|a| a.image.clone())
            .or_else(|| s.image.as_ref().map(|i| i.get_ref().clone()));
        let kernel = s.kernel.as_ref().map(|k| relative_to(&p.dir, k.get_ref()));
        let (root, kernel) = match resolve(image.as_deref(), kernel) {
            Ok(r) => r,
            Err(e) => {
                let (span, key) = match (&s.image, &s.kernel) {
                    (Some(i), _) => (i.span(), "image"),
                    (None, Some(k)) => (k.span(), "kernel"),
                    (None, None) => (key.span(), group.as_str()),
                };
                return p.err(span, key, e);
            }
        };
        if let (Some(d), Some(_)) = (&s.disk, &s.personality) {
            return p.err(
                d.span(),
                "disk",
                "give either disk (an existing disk) or personality (a directory), not both",
            );
        }
        if let Some(d) = &s.disk {
            let disk = relative_to(&p.dir, d.get_ref());
            if replicas > 1 {
                return p.err(
                    d.span(),
                    "disk",
                    format!(
                        "two appliances on one disk: the {replicas} replicas of {group} would \
                         share {}; use personality (each replica gets its own disk)",
                        disk.display()
                    ),
                );
            }
            let canonical = std::fs::canonicalize(&disk).unwrap_or_else(|_| disk.clone());
            if let Some(other) = disks.insert(canonical, group.clone()) {
                return p.err(
                    d.span(),
                    "disk",
                    format!(
                        "two appliances on one disk: {other} and {group} both use {}; give \
                         each its own disk",
                        disk.display()
                    ),
                );
            }
            if !disk.is_file() {
                return p.err(
                    d.span(),
                    "disk",
                    format!(
                        "{} does not exist; create it (herd disk create) or use personality",
                        disk.display()
                    ),
                );
            }
        }
        let size = match &s.disk_size {
            Some(sz) => crate::disk::parse_size(sz.get_ref())
                .map_err(|e| p.at.error(sz.span(), "disk_size", e.to_string()))?,
            None => crate::disk::parse_size(DEFAULT_DISK_SIZE).unwrap_or(64 << 20),
        };
        if let Some(pd) = &s.personality {
            let d = relative_to(&p.dir, pd.get_ref());
            if !d.is_dir() {
                return p.err(
                    pd.span(),
                    "personality",
                    format!("{} is not a directory", d.display()),
                );
            }
        }
        let address = match &s.address {
            Some(a) if replicas > 1 => {
                return p.err(
                    a.span(),
                    "address",
                    "replicas get an address each: leave address out",
                )
            }
            Some(a) => Some(p.address(a, network.as_ref())?),
            None => None,
        };
        if let (Some(a), Some(spec)) = (address, &s.address) {
            if let Some(other) = explicit.insert(a, group.clone()) {
                return p.err(
                    spec.span(),
                    "address",
                    format!("{a} is already {other}'s address"),
                );
            }
        }
        for (k, text) in [("run", &s.run), ("cmdline", &s.cmdline)] {
            let Some(text) = text else { continue };
            if text.chars().any(|c| !(' '..='~').contains(&c)) {
                return p.err(
                    key.span(),
                    k,
                    format!(
                        "{group}'s {k} has a control or non-ASCII character (a TOML \"\\r\" or \
                         \"\\n\" escape?); the kernel command line takes printable ASCII only: \
                         write \\\\r to pass a backslash"
                    ),
                );
            }
        }
        if s.run.as_ref().is_some_and(|r| r.contains('"')) {
            return p.err(
                key.span(),
                "run",
                "the command cannot contain double quotes (it goes on the kernel command \
                 line as herd.run=\"...\"); use single quotes",
            );
        }
        for i in 1..=replicas {
            let name = if replicas > 1 || s.replicas.is_some() {
                format!("{group}-{i}")
            } else {
                group.clone()
            };
            if let Some(first) = names.insert(name.clone(), key.span()) {
                let line = p.at.line(first.start);
                return p.err(
                    key.span(),
                    group,
                    format!("duplicate name {name} (also made at line {line})"),
                );
            }
            let runtime_name = format!("{stack}-{name}");
            if let Err(e) = crate::appliance::runtime_dir::validate_name(&runtime_name) {
                return p.err(key.span(), group, e.to_string());
            }
            let disk = match (&s.disk, &s.personality) {
                (Some(d), _) => Some(DiskSource::Existing(relative_to(&p.dir, d.get_ref()))),
                (None, Some(pd)) => Some(DiskSource::Personality {
                    dir: relative_to(&p.dir, pd.get_ref()),
                    size,
                    out: work_dir.join(format!("{name}.img")),
                }),
                (None, None) => None,
            };
            let tap = network.as_ref().map(|_| tap_name(&runtime_name));
            instances.push(Instance {
                mac: tap.as_deref().map(|t| mac_for(&runtime_name, t)),
                tap,
                name,
                group: group.clone(),
                runtime_name,
                image: image.clone(),
                file_image: s.image.as_ref().map(|i| i.get_ref().clone()),
                root: root.clone(),
                kernel: kernel.clone(),
                disk,
                address,
                mem: s.mem.unwrap_or(DEFAULT_MEM_MIB),
                cpus: s.cpus.unwrap_or(1),
                cmdline: s.cmdline.clone(),
                run: s.run.clone(),
                restart: s.restart.unwrap_or_default(),
                health: s.health.as_ref().map(|h| h.get_ref().clone()),
                depends_on: s
                    .depends_on
                    .iter()
                    .flatten()
                    .map(|d| d.get_ref().clone())
                    .collect(),
                stop_timeout,
                level: levels[group],
            });
        }
        if let Some(h) = &s.health {
            check_health(&p, h)?;
        }
    }
    if let Some(net) = &network {
        assign_addresses(&p, net, &mut instances, &explicit)?;
    }
    let mut seen: BTreeMap<(String, String), &str> = BTreeMap::new();
    for i in &instances {
        for (kind, v) in [("MAC", &i.mac), ("TAP", &i.tap)] {
            let Some(v) = v else { continue };
            if let Some(other) = seen.insert((kind.to_owned(), v.clone()), &i.name) {
                let span = file
                    .appliances
                    .keys()
                    .find(|k| k.get_ref() == &i.group)
                    .map_or(0..0, Spanned::span);
                return p.err(
                    span,
                    &i.group,
                    format!(
                        "{} and {other} would share the {kind} {v}; rename one",
                        i.name
                    ),
                );
            }
        }
    }
    instances.sort_by(|a, b| a.level.cmp(&b.level).then_with(|| a.name.cmp(&b.name)));
    Ok(Plan {
        stack,
        file: path.to_owned(),
        work_dir,
        network,
        instances,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn resolver(
        image: Option<&str>,
        kernel: Option<PathBuf>,
    ) -> Result<(Option<PathBuf>, PathBuf), String> {
        match image {
            Some("missing") => Err("image missing is not in the store (herd image ls)".into()),
            Some(i) => Ok((
                Some(PathBuf::from(format!("/store/{i}"))),
                PathBuf::from("/k"),
            )),
            None => kernel.map(|k| (None, k)).ok_or_else(|| "no kernel".into()),
        }
    }

    fn plan_text(text: &str) -> Result<Plan, String> {
        let path = Path::new("/nonexistent/s/herd.toml");
        let file = StackFile::parse(path, text).map_err(|e| e.to_string())?;
        plan(path, text, &file, &StackState::default(), &resolver).map_err(|e| e.to_string())
    }

    const NET: &str = "name = \"t\"\n[network]\nname = \"tnet\"\nsubnet = \"10.9.0.1/24\"\n";

    #[test]
    fn replicas_addresses_and_order() {
        let p = plan_text(&format!(
            "{NET}[appliances.db]\nimage = \"redis\"\naddress = \"10.9.0.2\"\n\
             [appliances.cl]\nimage = \"base\"\nreplicas = 3\ndepends_on = [\"db\"]\n"
        ))
        .unwrap();
        let names: Vec<_> = p.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["db", "cl-1", "cl-2", "cl-3"]);
        let addrs: Vec<_> = p
            .instances
            .iter()
            .map(|i| i.address.unwrap().to_string())
            .collect();
        assert_eq!(addrs, ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"]);
        assert_eq!(p.instances[1].runtime_name, "t-cl-1");
        let taps: BTreeSet<_> = p.instances.iter().map(|i| i.tap.clone()).collect();
        assert_eq!(taps.len(), 4);
        let macs: BTreeSet<_> = p.instances.iter().map(|i| i.mac.clone().unwrap()).collect();
        assert_eq!(macs.len(), 4);
        assert!(macs.iter().all(|m| m.starts_with("02:") && m.len() == 17));
    }

    /// `herd up` launches `herd run --name RUNTIME --net tap=..,mac=M`; M
    /// must be the MAC that run derives for RUNTIME when given no mac=, or
    /// an appliance's MAC would change between `herd up` and `herd run`.
    #[test]
    fn stack_macs_are_the_ones_herd_run_derives() {
        let p = plan_text(&format!("{NET}[appliances.web]\nimage = \"base\"\n")).unwrap();
        let inst = &p.instances[0];
        let args = crate::stack::launch::run_args(&p, inst);
        let after = |flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].clone()
        };
        let net: vmm::config::NetSpec = after("--net").parse().unwrap();
        let bare = vmm::config::NetSpec {
            mac: None,
            ..net.clone()
        };
        let run = vmm::VmConfig {
            name: Some(after("--name")),
            root: None,
            disks: Vec::new(),
            nets: vec![bare.clone()],
            kernel: PathBuf::from("/k"),
            initrd: None,
            cmdline: None,
            mem_mib: 128,
            cpus: 1,
            console: vmm::ConsoleConfig::None,
            boot_report: None,
            rng: false,
            vsock: None,
        };
        assert_eq!(net.mac, Some(run.nic_mac(&bare)), "{args:?}");
        // FNV-1a of the runtime name "t-web" (not of its TAP's name): the
        // MAC appliances had under `herd run --name` before stacks shared
        // its derivation.
        assert_eq!(inst.mac.as_deref(), Some("02:0c:f4:ef:5c:77"));
    }

    #[test]
    fn each_bad_file_names_line_and_key() {
        let cases = [
            ("[appliances.a]\nimage = \"missing\"\n", "herd.toml:2: image: image missing"),
            (
                &format!("{NET}[appliances.a]\nimage = \"b\"\naddress = \"10.8.0.2\"\n"),
                "herd.toml:7: address: 10.8.0.2 is outside the subnet",
            ),
            (
                "[appliances.a]\nimage = \"b\"\ndepends_on = [\"c\"]\n[appliances.c]\nimage = \"b\"\ndepends_on = [\"a\"]\n",
                "depends_on: dependency cycle: a -> c -> a",
            ),
            (
                "[appliances.a]\nimage = \"b\"\nreplicas = 2\n[appliances.a-1]\nimage = \"b\"\n",
                "duplicate name a-1",
            ),
            (
                "[appliances.a]\nimage = \"b\"\ndisk = \"/etc/hostname\"\n[appliances.c]\nimage = \"b\"\ndisk = \"/etc/hostname\"\n",
                "herd.toml:6: disk: two appliances on one disk",
            ),
            (
                "[defaults]\nstop_timeout = -1.0\n[appliances.a]\nimage = \"b\"\n",
                "herd.toml:2: stop_timeout: -1 is out of range",
            ),
            (
                "[appliances.a]\nimage = \"b\"\nstop_timeout = nan\n",
                "herd.toml:3: stop_timeout: NaN is out of range",
            ),
        ];
        let control = "[appliances.a]\nimage = \"b\"\nrun = \"tr -d '\\r'\"\n";
        let e = plan_text(control).unwrap_err();
        assert!(e.contains("herd.toml:1: run: a's run has a control"), "{e}");
        for (text, want) in cases {
            let e = plan_text(text).unwrap_err();
            assert!(e.contains(want), "{e} !~ {want}");
            assert!(e.starts_with("/nonexistent/s/herd.toml:"), "{e}");
        }
    }
}
