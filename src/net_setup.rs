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

    /// The netmask as a number (`prefix` is 8..=30, so the shift is in range).
    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host) & self.mask())
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

/// What kind of link `name` is: None if there is no such link, else the
/// kernel's `info_kind` ("bridge", "tun", "veth", ...; "" for a plain
/// device). Read from `ip -j -d link` in the caller's network namespace; a
/// bridge *port* is a "tun" or "veth" with `info_slave_kind` "bridge".
fn link_kind(name: &str) -> Result<Option<String>, NetSetupError> {
    match ip(&["-j", "-d", "link", "show", "dev", name]) {
        Ok(json) => parse_link_kind(&json).map(Some),
        // `ip` says "Device ... does not exist" and exits 1.
        Err(NetSetupError::Failed { detail, .. }) if detail.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_link_kind(json: &str) -> Result<String, NetSetupError> {
    let bad = |detail: String| NetSetupError::Failed {
        command: "ip -j -d link show".into(),
        detail,
    };
    let links: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("unreadable JSON: {e}")))?;
    let link = links
        .get(0)
        .ok_or_else(|| bad("no link in the answer".into()))?;
    Ok(link
        .pointer("/linkinfo/info_kind")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned())
}

/// Fails unless `name` is missing or a bridge.
fn check_bridge(name: &str) -> Result<bool, NetSetupError> {
    match link_kind(name)? {
        None => Ok(false),
        Some(kind) if kind == "bridge" => Ok(true),
        Some(_) => Err(NetSetupError::NotABridge(name.to_owned())),
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Where herd remembers the ip_forward value it found before `--nat`
/// turned forwarding on, so the last `herd net rm` can put it back.
fn ip_forward_marker() -> std::path::PathBuf {
    crate::appliance::runtime_dir::base_dir()
        .join("net")
        .join("ip_forward.before")
}

fn sysctl_error(what: &str, e: &std::io::Error) -> NetSetupError {
    NetSetupError::Failed {
        command: what.into(),
        detail: e.to_string(),
    }
}

fn enable_ip_forward() -> Result<(), NetSetupError> {
    let before = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| sysctl_error("read net.ipv4.ip_forward", &e))?;
    let marker = ip_forward_marker();
    if before.trim() != "1" && !marker.exists() {
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).map_err(|e| sysctl_error("remember ip_forward", &e))?;
        }
        std::fs::write(&marker, before.trim())
            .map_err(|e| sysctl_error("remember ip_forward", &e))?;
    }
    std::fs::write(IP_FORWARD, "1").map_err(|e| sysctl_error("enable net.ipv4.ip_forward", &e))
}

/// Puts ip_forward back as herd found it once no herd NAT table is left.
fn restore_ip_forward() -> Result<(), NetSetupError> {
    let marker = ip_forward_marker();
    let Ok(before) = std::fs::read_to_string(&marker) else {
        return Ok(());
    };
    let tables = nft(&["list", "tables", "ip"]).unwrap_or_default();
    if tables
        .lines()
        .any(|l| l.trim().starts_with("table ip herd-"))
    {
        return Ok(());
    }
    std::fs::write(IP_FORWARD, before.trim())
        .map_err(|e| sysctl_error("restore net.ipv4.ip_forward", &e))?;
    let _ = std::fs::remove_file(&marker);
    log::info!("net.ipv4.ip_forward restored to {}", before.trim());
    Ok(())
}

/// Creates bridge `name` with the host at `subnet`, optionally masquerading
/// the subnet's traffic to other interfaces. Idempotent for the bridge.
pub fn create(name: &str, subnet: Subnet, nat: bool) -> Result<(), NetSetupError> {
    validate_name(name)?;
    if !check_bridge(name)? {
        ip(&["link", "add", name, "type", "bridge"])?;
    }
    let cidr = format!("{}/{}", subnet.host, subnet.prefix);
    if !ip(&["-4", "addr", "show", "dev", name])?.contains(&cidr) {
        ip(&["addr", "add", &cidr, "dev", name])?;
    }
    ip(&["link", "set", name, "up"])?;
    if nat {
        enable_ip_forward()?;
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

/// Removes bridge `name` and its NAT table, if any; the last one gone puts
/// ip_forward back as `--nat` found it.
pub fn remove(name: &str) -> Result<(), NetSetupError> {
    validate_name(name)?;
    if check_bridge(name)? {
        ip(&["link", "del", name])?;
    } else {
        log::info!("network {name} does not exist");
    }
    // The NAT table only exists with --nat; nft may not even be installed.
    let _ = nft(&["delete", "table", "ip", &nat_table(name)]);
    restore_ip_forward()
}

/// Removes TAP `name` (one a killed herd left behind); a missing link is
/// fine, a link of another kind is left alone.
pub fn remove_tap(name: &str) -> Result<(), NetSetupError> {
    validate_name(name)?;
    match link_kind(name)?.as_deref() {
        None => Ok(()),
        Some("tun") => ip(&["link", "del", name]).map(drop),
        Some(kind) => Err(NetSetupError::Failed {
            command: format!("ip link del {name}"),
            detail: format!("it is a {kind:?} link, not a TAP; herd leaves it alone"),
        }),
    }
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

    #[test]
    fn remove_tap_removes_only_taps() {
        // In a network namespace of this thread's own (inherited by the
        // `ip` it runs), so no host link is touched.
        std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers; it moves only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "SKIPPED remove_tap_removes_only_taps: cannot unshare a network namespace ({}); run as root",
                    std::io::Error::last_os_error()
                );
                return;
            }
            ip(&["tuntap", "add", "hdtest0", "mode", "tap"]).unwrap();
            ip(&["link", "add", "hdtestbr", "type", "bridge"]).unwrap();
            assert!(remove_tap("hdtestbr").is_err());
            assert_eq!(link_kind("hdtestbr").unwrap().as_deref(), Some("bridge"));
            remove_tap("hdtest0").unwrap();
            assert_eq!(link_kind("hdtest0").unwrap(), None);
            remove_tap("hdtest0").unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn link_kinds_come_from_the_kernel_not_substrings() {
        let bridge = r#"[{"ifname":"appnet","linkinfo":{"info_kind":"bridge"}}]"#;
        assert_eq!(parse_link_kind(bridge).unwrap(), "bridge");
        // A TAP enslaved to a bridge mentions "bridge" everywhere.
        let port = r#"[{"ifname":"vm0","master":"bridge0","linkinfo":{"info_kind":"tun",
            "info_slave_kind":"bridge","info_slave_data":{"bridge_id":"8000.x"}}}]"#;
        assert_eq!(parse_link_kind(port).unwrap(), "tun");
        assert_eq!(parse_link_kind(r#"[{"ifname":"eth0"}]"#).unwrap(), "");
        assert!(parse_link_kind("[]").is_err());
        assert!(parse_link_kind("bridge").is_err());
    }
}
