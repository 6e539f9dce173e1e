//! `herd net create|rm`: a host bridge that appliances' TAP devices join,
//! with the host's address on it and optional NAT to the outside. Uses
//! iproute2 (`ip`) and nftables (`nft`), the tools an admin would use.

use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum NetSetupError {
    #[error("network name {0:?} is not valid: use 1-15 letters, digits, '-' or '_'")]
    BadName(String),
    #[error(
        "--subnet {0:?} is not valid: give the host's address with a prefix, e.g. 10.20.0.1/24"
    )]
    BadSubnet(String),
    #[error("cannot run {tool} ({source}); install {package}")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error(
        "`{command}` failed: {detail}{hint}",
        hint = if detail.contains("Operation not permitted") {
            "; this needs CAP_NET_ADMIN (run as root)"
        } else {
            ""
        }
    )]
    Failed { command: String, detail: String },
    #[error("{0} exists but is not a bridge herd can manage")]
    NotABridge(String),
}

/// `addr/prefix` with the network it is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub host: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Self, NetSetupError> {
        let bad = || NetSetupError::BadSubnet(text.to_owned());
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let host: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        Ok(Subnet { host, prefix })
    }

    pub fn network(&self) -> Ipv4Addr {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        Ipv4Addr::from(u32::from(self.host) & mask)
    }
}

pub fn validate_name(name: &str) -> Result<(), NetSetupError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(NetSetupError::BadName(name.to_owned()))
    }
}

fn run(tool: &'static str, package: &'static str, args: &[&str]) -> Result<String, NetSetupError> {
    let output =
        Command::new(tool)
            .args(args)
            .output()
            .map_err(|source| NetSetupError::MissingTool {
                tool,
                package,
                source,
            })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetSetupError::Failed {
            command: format!("{tool} {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<String, NetSetupError> {
    run("ip", "iproute2", args)
}

fn nft(args: &[&str]) -> Result<String, NetSetupError> {
    run("nft", "nftables", args)
}

fn nat_table(name: &str) -> String {
    format!("herd-{name}")
}

/// Creates bridge `name` with the host at `subnet`, optionally masquerading
/// the subnet's traffic to other interfaces. Idempotent for the bridge.
pub fn create(name: &str, subnet: Subnet, nat: bool) -> Result<(), NetSetupError> {
    validate_name(name)?;
    let exists = ip(&["-d", "link", "show", name]);
    match exists {
        Ok(details) if !details.contains("bridge") => {
            return Err(NetSetupError::NotABridge(name.to_owned()))
        }
        Ok(_) => {}
        Err(_) => {
            ip(&["link", "add", name, "type", "bridge"])?;
        }
    }
    let cidr = format!("{}/{}", subnet.host, subnet.prefix);
    if !ip(&["-4", "addr", "show", "dev", name])?.contains(&cidr) {
        ip(&["addr", "add", &cidr, "dev", name])?;
    }
    ip(&["link", "set", name, "up"])?;
    if nat {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| {
            NetSetupError::Failed {
                command: "enable net.ipv4.ip_forward".into(),
                detail: e.to_string(),
            }
        })?;
        let table = nat_table(name);
        let source = format!("{}/{}", subnet.network(), subnet.prefix);
        let _ = nft(&["delete", "table", "ip", &table]);
        nft(&["add", "table", "ip", &table])?;
        nft(&[
            "add",
            "chain",
            "ip",
            &table,
            "postrouting",
            "{ type nat hook postrouting priority srcnat ; }",
        ])?;
        nft(&[
            "add",
            "rule",
            "ip",
            &table,
            "postrouting",
            "ip",
            "saddr",
            &source,
            "oifname",
            "!=",
            name,
            "masquerade",
        ])?;
    }
    Ok(())
}

/// Removes bridge `name` and its NAT table, if any.
pub fn remove(name: &str) -> Result<(), NetSetupError> {
    validate_name(name)?;
    match ip(&["-d", "link", "show", name]) {
        Ok(details) if !details.contains("bridge") => {
            return Err(NetSetupError::NotABridge(name.to_owned()))
        }
        Ok(_) => {
            ip(&["link", "del", name])?;
        }
        Err(_) => log::info!("network {name} does not exist"),
    }
    // The NAT table only exists with --nat; nft may not even be installed.
    let _ = nft(&["delete", "table", "ip", &nat_table(name)]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_names() {
        let s = Subnet::parse("10.20.0.1/24").unwrap();
        assert_eq!(s.network(), Ipv4Addr::new(10, 20, 0, 0));
        assert!(Subnet::parse("10.20.0.1").is_err());
        assert!(Subnet::parse("10.20.0.1/33").is_err());
        assert!(Subnet::parse("banana/24").is_err());
        assert!(validate_name("appnet").is_ok());
        assert!(validate_name("a-very-long-bridge-name").is_err());
        assert!(validate_name("bad name").is_err());
    }
}
