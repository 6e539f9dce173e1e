//! The checks behind `plan`: the network, dependency levels (and
//! cycles), addresses in the subnet, health checks; each error names the
//! stack file, the key and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use toml::Spanned;

use super::file::{Health, Located, Settings, StackFile, StackFileError};
use super::plan::{Instance, StackNetwork};
use super::state::StackState;
use crate::net_setup::Subnet;

pub(super) struct Planner<'a> {
    pub at: Located<'a>,
    pub dir: PathBuf,
    pub state: &'a StackState,
}

impl Planner<'_> {
    pub fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> Result<T, StackFileError> {
        Err(self.at.error(span, key, message))
    }

    pub fn network(&self, file: &StackFile) -> Result<Option<StackNetwork>, StackFileError> {
        let Some(net) = &file.network else {
            return Ok(None);
        };
        let n = net.get_ref();
        if let Err(e) = crate::net_setup::validate_name(n.name.get_ref()) {
            return self.err(n.name.span(), "network.name", e.to_string());
        }
        let subnet = match Subnet::parse(n.subnet.get_ref()) {
            Ok(s) => s,
            Err(_) => {
                return self.err(
                    n.subnet.span(),
                    "network.subnet",
                    format!(
                        "{:?} is not the host's address with a prefix, e.g. 10.20.0.1/24",
                        n.subnet.get_ref()
                    ),
                )
            }
        };
        Ok(Some(StackNetwork {
            bridge: n.name.get_ref().clone(),
            subnet,
            nat: n.nat,
        }))
    }

    /// Dependency levels per appliance key, or the cycle.
    pub fn levels(
        &self,
        groups: &BTreeMap<String, (Spanned<()>, Settings)>,
    ) -> Result<BTreeMap<String, usize>, StackFileError> {
        for (name, (_, s)) in groups {
            for dep in s.depends_on.iter().flatten() {
                if !groups.contains_key(dep.get_ref()) {
                    return self.err(
                        dep.span(),
                        "depends_on",
                        format!(
                            "{name} depends on {:?}, which is not an appliance in this file",
                            dep.get_ref()
                        ),
                    );
                }
                if dep.get_ref() == name {
                    return self.err(
                        dep.span(),
                        "depends_on",
                        format!("dependency cycle: {name} -> {name}"),
                    );
                }
            }
        }
        let mut levels = BTreeMap::new();
        for name in groups.keys() {
            let mut path = Vec::new();
            self.level(name, groups, &mut levels, &mut path)?;
        }
        Ok(levels)
    }

    fn level(
        &self,
        name: &str,
        groups: &BTreeMap<String, (Spanned<()>, Settings)>,
        levels: &mut BTreeMap<String, usize>,
        path: &mut Vec<String>,
    ) -> Result<usize, StackFileError> {
        if let Some(&l) = levels.get(name) {
            return Ok(l);
        }
        if let Some(start) = path.iter().position(|p| p == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_owned());
            let (_, s) = &groups[&path[path.len() - 1]];
            let span = s
                .depends_on
                .iter()
                .flatten()
                .find(|d| d.get_ref() == name)
                .map_or(0..0, Spanned::span);
            return self.err(
                span,
                "depends_on",
                format!("dependency cycle: {}", cycle.join(" -> ")),
            );
        }
        path.push(name.to_owned());
        let mut level = 0;
        for dep in groups[name].1.depends_on.iter().flatten() {
            level = level.max(self.level(dep.get_ref(), groups, levels, path)? + 1);
        }
        path.pop();
        levels.insert(name.to_owned(), level);
        Ok(level)
    }

    pub fn address(
        &self,
        s: &Spanned<String>,
        net: Option<&StackNetwork>,
    ) -> Result<Ipv4Addr, StackFileError> {
        let Some(net) = net else {
            return self.err(
                s.span(),
                "address",
                "an address needs a [network] section (name, subnet)",
            );
        };
        let Ok(a) = s.get_ref().parse::<Ipv4Addr>() else {
            return self.err(
                s.span(),
                "address",
                format!("{:?} is not an IPv4 address", s.get_ref()),
            );
        };
        if !usable(net.subnet, a) {
            return self.err(
                s.span(),
                "address",
                format!(
                    "{a} is outside the subnet {}/{} (or is its network, broadcast or the \
                     host's address {}); pick a free address in it or leave address out",
                    net.subnet.network(),
                    net.subnet.prefix,
                    net.subnet.host
                ),
            );
        }
        Ok(a)
    }
}

/// An address a guest may have in `subnet`.
pub fn usable(subnet: Subnet, a: Ipv4Addr) -> bool {
    let mask = subnet.mask();
    let net = u32::from(subnet.network());
    let a32 = u32::from(a);
    a32 & mask == net && a32 != net && a32 != net | !mask && a != subnet.host
}

/// The next usable address not in `taken`.
pub fn next_free(subnet: Subnet, taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let net = u32::from(subnet.network());
    let size = 1u32 << (32 - u32::from(subnet.prefix));
    (1..size - 1)
        .map(|i| Ipv4Addr::from(net + i))
        .find(|a| usable(subnet, *a) && !taken.contains(a))
}

pub fn check_health(p: &Planner, h: &Spanned<Health>) -> Result<(), StackFileError> {
    let v = h.get_ref();
    let kinds = [v.tcp.is_some(), v.http.is_some(), v.console.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return p.err(
            h.span(),
            "health",
            "give exactly one of tcp = PORT, http = \"/PATH\" (with port), console = \"LINE\"",
        );
    }
    if v.http.is_some() && v.port.is_none() {
        return p.err(h.span(), "health", "http needs port = N");
    }
    for (key, val) in [("interval", v.interval), ("timeout", v.timeout)] {
        if val.is_some_and(|s| !(0.01..=3600.0).contains(&s)) {
            return p.err(h.span(), key, "out of range: use 0.01 to 3600 seconds");
        }
    }
    Ok(())
}

/// Addresses for appliances without one: the state file's, else the next
/// free one.
pub fn assign_addresses(
    p: &Planner,
    net: &StackNetwork,
    instances: &mut [Instance],
    explicit: &BTreeMap<Ipv4Addr, String>,
) -> Result<(), StackFileError> {
    let mut taken: BTreeSet<Ipv4Addr> = explicit.keys().copied().collect();
    for inst in instances.iter_mut().filter(|i| i.address.is_none()) {
        let kept = p
            .state
            .appliances
            .get(&inst.name)
            .and_then(|s| s.address)
            .filter(|a| usable(net.subnet, *a) && !taken.contains(a));
        if let Some(a) = kept {
            inst.address = Some(a);
            taken.insert(a);
        }
    }
    for inst in instances.iter_mut().filter(|i| i.address.is_none()) {
        let Some(a) = next_free(net.subnet, &taken) else {
            return p.err(
                0..0,
                "network.subnet",
                format!(
                    "no free address left for {} in {}/{}; use a larger subnet",
                    inst.name,
                    net.subnet.network(),
                    net.subnet.prefix
                ),
            );
        };
        inst.address = Some(a);
        taken.insert(a);
    }
    Ok(())
}
