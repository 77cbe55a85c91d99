//! A function's network, enforced on the host.
//!
//! A function has no network unless its definition lists egress
//! destinations. For an instance that has some, [`Egress::attach`] gives the
//! instance's network namespace (that of a container's first process) a veth
//! pair to the host, with a `/30` of the node's egress subnet, and makes
//! nftables (Debian's `nftables`, driven through `nft`) pass exactly:
//!
//! - new connections from the instance to the listed address and port pairs
//!   (TCP and UDP), masqueraded behind the host;
//! - the replies to those.
//!
//! Everything else from the instance is rejected: other destinations,
//! anything addressed to the host itself (the `input` hook, whatever the
//! list says), other instances. Nothing may open a connection to an
//! instance. Host names are resolved by the platform when the instance
//! starts and pinned: the instance gets them in its `/etc/hosts`
//! ([`Resolved::hosts_file`]) and has no DNS.
//!
//! Each node has its own nftables table (`inet faas_<owner>`); each instance
//! its own chain, reached through a verdict map keyed by its interface.
//! Addresses come from slot files under `/run/faas/egress` (one per `/30`,
//! created exclusively), so nodes sharing a host never collide.
//! [`Attachment`] owns an instance's link, chain and slot and removes them
//! when dropped.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use faas_common::network::{Destination, EgressRule, Ipv4Net};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// The egress subnet when none is configured.
pub const DEFAULT_SUBNET: Ipv4Net = Ipv4Net {
    addr: Ipv4Addr::new(10, 203, 0, 0),
    len: 16,
};
/// Where slot files live when nothing else is configured.
pub const DEFAULT_SLOTS_DIR: &str = "/run/faas/egress";
/// Longest a host name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most addresses one host name may pin.
const MAX_ADDRESSES_PER_NAME: usize = 8;
/// Longest an `nft` or `ip` call may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Interface names of instances: this prefix and the slot number.
const LINK_PREFIX: &str = "faas-e";

/// Why a policy cannot be set up or enforced.
#[derive(Debug, thiserror::Error)]
pub enum NetPolicyError {
    /// A tool the enforcement needs is missing or fails to start.
    #[error("{tool} is needed for egress policies ({hint}): {source}")]
    Tool {
        /// The binary.
        tool: &'static str,
        /// How to get it.
        hint: &'static str,
        /// Why it did not run.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What was being done.
        what: String,
        /// Its exit status and stderr.
        detail: String,
    },
    /// A host name of the allow-list did not resolve to an IPv4 address.
    #[error("egress host {host:?}: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// Why.
        reason: String,
    },
    /// Every `/30` of the subnet is taken.
    #[error("no free address in the egress subnet {0}")]
    Exhausted(Ipv4Net),
    /// The configuration cannot work (a subnet too small, ...).
    #[error("egress configuration: {0}")]
    Config(String),
    /// A file under the slots directory.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a node's egress enforcement lives.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The node's owner label (a digest of its data directory): names its
    /// nftables table and marks its slots.
    pub owner: String,
    /// Addresses of instance links, split into `/30`s; shared by every node
    /// on the host.
    pub subnet: Ipv4Net,
    /// Slot files (one per `/30` in use), shared by every node on the host.
    pub slots_dir: PathBuf,
}

impl EgressConfig {
    /// Defaults for the node with owner label `owner`.
    pub fn new(owner: impl Into<String>) -> Self {
        EgressConfig {
            owner: owner.into(),
            subnet: DEFAULT_SUBNET,
            slots_dir: PathBuf::from(DEFAULT_SLOTS_DIR),
        }
    }
}

/// One allowed destination, addresses resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allowed {
    /// Destination network.
    pub net: Ipv4Net,
    /// Destination port.
    pub port: u16,
}

/// An allow-list with its host names resolved and pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// What may be reached.
    pub allowed: Vec<Allowed>,
    /// The names and the addresses they were pinned to.
    pub hosts: Vec<(String, Ipv4Addr)>,
}

impl Resolved {
    /// The instance's `/etc/hosts`: localhost and the pinned names.
    pub fn hosts_file(&self) -> String {
        let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        for (name, addr) in &self.hosts {
            out.push_str(&format!("{addr}\t{name}\n"));
        }
        out
    }
}

/// Resolve `rules`' host names (IPv4 only; loopback answers are dropped, as
/// they would reach only the sandbox itself).
pub async fn resolve(rules: &[EgressRule]) -> Result<Resolved, NetPolicyError> {
    let mut resolved = Resolved::default();
    for rule in rules {
        match &rule.destination {
            Destination::Net(net) => resolved.allowed.push(Allowed {
                net: *net,
                port: rule.port,
            }),
            Destination::Host(host) => {
                let fail = |reason: String| NetPolicyError::Resolve {
                    host: host.clone(),
                    reason,
                };
                let addrs = tokio::time::timeout(
                    RESOLVE_TIMEOUT,
                    tokio::net::lookup_host((host.as_str(), rule.port)),
                )
                .await
                .map_err(|_| fail(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
                .map_err(|e| fail(e.to_string()))?;
                let mut v4: Vec<Ipv4Addr> = addrs
                    .filter_map(|a| match a.ip() {
                        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                            Some(ip)
                        }
                        _ => None,
                    })
                    .collect();
                v4.sort();
                v4.dedup();
                v4.truncate(MAX_ADDRESSES_PER_NAME);
                if v4.is_empty() {
                    return Err(fail("it has no IPv4 address".into()));
                }
                for ip in v4 {
                    resolved.allowed.push(Allowed {
                        net: Ipv4Net { addr: ip, len: 32 },
                        port: rule.port,
                    });
                    if !resolved.hosts.contains(&(host.clone(), ip)) {
                        resolved.hosts.push((host.clone(), ip));
                    }
                }
            }
        }
    }
    resolved.allowed.sort();
    resolved.allowed.dedup();
    Ok(resolved)
}

/// A node's egress enforcement: its nftables table and its address slots.
#[derive(Debug)]
pub struct Egress {
    config: EgressConfig,
    table: String,
}

impl Egress {
    /// Check the tools and (re)create this node's table, removing what a
    /// previous run of it left (links, slots, rules).
    pub async fn open(config: EgressConfig) -> Result<Egress, NetPolicyError> {
        if config.subnet.len > 29 {
            return Err(NetPolicyError::Config(format!(
                "the egress subnet {} is too small (at most /29)",
                config.subnet
            )));
        }
        if config.owner.is_empty() || !config.owner.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(NetPolicyError::Config(format!(
                "owner label {:?} must be letters and digits",
                config.owner
            )));
        }
        for (tool, hint, arg) in [
            ("nft", "apt-get install nftables", "--version"),
            ("ip", "apt-get install iproute2", "-V"),
            ("nsenter", "apt-get install util-linux", "--version"),
        ] {
            Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map_err(|source| NetPolicyError::Tool { tool, hint, source })?;
        }
        tokio::fs::create_dir_all(&config.slots_dir)
            .await
            .map_err(|source| NetPolicyError::Io {
                what: format!("create {}", config.slots_dir.display()),
                source,
            })?;
        let egress = Egress {
            table: format!("faas_{}", config.owner),
            config,
        };
        egress.remove_leftovers().await?;
        egress
            .nft("create the egress table", &egress.table_script())
            .await?;
        Ok(egress)
    }

    /// The name of this node's nftables table (`inet` family).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Open exactly `allowed` to the network namespace of process `pid`
    /// (a container's first process, before it runs user code).
    pub async fn attach(
        &self,
        pid: u32,
        allowed: &[Allowed],
    ) -> Result<Attachment, NetPolicyError> {
        // Only once a function needs it: a node without allow-lists leaves
        // the host's forwarding as it found it.
        enable_forwarding().await?;
        let slot = self.take_slot().await?;
        let base = u32::from(self.config.subnet.addr) + slot.number * 4;
        let (host_ip, inner_ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let link = format!("{LINK_PREFIX}{}", slot.number);
        let attachment = Attachment {
            link: link.clone(),
            chain: format!("i{}", slot.number),
            table: self.table.clone(),
            slot: Some(slot),
            released: false,
        };
        // Rules first: the link never exists without them.
        self.nft(
            "add the instance's rules",
            &attachment.rules_script(allowed),
        )
        .await?;
        run_batch(
            Command::new("ip").args(["-batch", "-"]),
            &format!(
                "link add {link} type veth peer name eth0 netns {pid}\n\
                 addr add {host_ip}/30 dev {link}\n\
                 link set {link} up\n"
            ),
            "create the instance's link",
        )
        .await?;
        run_batch(
            Command::new("nsenter")
                .arg("-t")
                .arg(pid.to_string())
                .args(["-n", "ip", "-batch", "-"]),
            &format!(
                "addr add {inner_ip}/30 dev eth0\n\
                 link set lo up\n\
                 link set eth0 up\n\
                 route add default via {host_ip}\n"
            ),
            "configure the instance's side",
        )
        .await?;
        Ok(attachment)
    }

    /// Remove the table and every link and slot of this node (at shutdown).
    pub async fn close(&self) -> Result<(), NetPolicyError> {
        self.remove_leftovers().await
    }

    async fn remove_leftovers(&self) -> Result<(), NetPolicyError> {
        let mut entries = match tokio::fs::read_dir(&self.config.slots_dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(NetPolicyError::Io {
                    what: format!("list {}", self.config.slots_dir.display()),
                    source,
                })
            }
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Some(number) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let owner = tokio::fs::read_to_string(entry.path())
                .await
                .unwrap_or_default();
            if owner.trim() == self.config.owner {
                let _ = quiet(Command::new("ip").args([
                    "link",
                    "del",
                    &format!("{LINK_PREFIX}{number}"),
                ]))
                .await;
                let _ = tokio::fs::remove_file(entry.path()).await;
            }
        }
        let _ = quiet(Command::new("nft").args(["delete", "table", "inet", &self.table])).await;
        Ok(())
    }

    async fn take_slot(&self) -> Result<Slot, NetPolicyError> {
        let count = 1u32 << (32 - u32::from(self.config.subnet.len) - 2);
        // Start anywhere: nodes allocating at once rarely meet.
        let start = std::process::id().wrapping_mul(2_654_435_761) % count;
        for i in 0..count {
            let number = (start + i) % count;
            let path = self.config.slots_dir.join(number.to_string());
            let created = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await;
            match created {
                Ok(mut file) => {
                    file.write_all(self.config.owner.as_bytes())
                        .await
                        .map_err(|source| NetPolicyError::Io {
                            what: format!("write {}", path.display()),
                            source,
                        })?;
                    return Ok(Slot { number, path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(NetPolicyError::Io {
                        what: format!("create {}", path.display()),
                        source,
                    })
                }
            }
        }
        Err(NetPolicyError::Exhausted(self.config.subnet))
    }

    fn table_script(&self) -> String {
        let t = &self.table;
        format!(
            "table inet {t} {{
  set ifaces {{ type ifname; }}
  map instances {{ type ifname : verdict; }}
  chain forward {{
    type filter hook forward priority filter - 5; policy accept;
    oifname @ifaces ct state established,related accept
    oifname @ifaces drop
    iifname @ifaces ct state established,related accept
    iifname vmap @instances
    iifname @ifaces drop
  }}
  chain input {{
    type filter hook input priority filter - 5; policy accept;
    iifname @ifaces meta l4proto tcp reject with tcp reset
    iifname @ifaces drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    iifname @ifaces masquerade
  }}
}}
"
        )
    }

    async fn nft(&self, what: &str, script: &str) -> Result<(), NetPolicyError> {
        run_batch(Command::new("nft").args(["-f", "-"]), script, what).await
    }
}

/// One `/30` of the subnet, held through its slot file.
#[derive(Debug)]
struct Slot {
    number: u32,
    path: PathBuf,
}

/// An instance's network: its host link, its chain and its slot. Dropping
/// it (or [`Attachment::release`]) removes all three; the link first, so
/// that no packet ever leaves it unfiltered.
#[derive(Debug)]
pub struct Attachment {
    link: String,
    chain: String,
    table: String,
    slot: Option<Slot>,
    released: bool,
}

impl Attachment {
    /// The host side of the instance's link.
    pub fn link(&self) -> &str {
        &self.link
    }

    fn rules_script(&self, allowed: &[Allowed]) -> String {
        let (t, c, l) = (&self.table, &self.chain, &self.link);
        let mut s = format!("add chain inet {t} {c}\n");
        for a in allowed {
            for proto in ["tcp", "udp"] {
                s.push_str(&format!(
                    "add rule inet {t} {c} ip daddr {} {proto} dport {} accept\n",
                    a.net, a.port
                ));
            }
        }
        s.push_str(&format!(
            "add rule inet {t} {c} meta l4proto tcp reject with tcp reset\n\
             add rule inet {t} {c} reject with icmpx type admin-prohibited\n\
             add element inet {t} ifaces {{ \"{l}\" }}\n\
             add element inet {t} instances {{ \"{l}\" : jump {c} }}\n"
        ));
        s
    }

    fn teardown_script(&self) -> String {
        let (t, c, l) = (&self.table, &self.chain, &self.link);
        format!(
            "delete element inet {t} instances {{ \"{l}\" }}\n\
             delete element inet {t} ifaces {{ \"{l}\" }}\n\
             delete chain inet {t} {c}\n"
        )
    }

    /// Remove the link, the rules and the slot.
    pub async fn release(mut self) {
        self.released = true;
        let _ = quiet(Command::new("ip").args(["link", "del", &self.link])).await;
        let _ = run_batch(
            Command::new("nft").args(["-f", "-"]),
            &self.teardown_script(),
            "remove rules",
        )
        .await;
        if let Some(slot) = self.slot.take() {
            let _ = tokio::fs::remove_file(&slot.path).await;
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (link, script, slot) = (self.link.clone(), self.teardown_script(), self.slot.take());
        // Drop cannot await: a thread runs the same steps as `release`.
        std::thread::spawn(move || {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &link])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Ok(mut child) = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                if let Some(mut stdin) = child.stdin.take() {
                    use std::io::Write;
                    let _ = stdin.write_all(script.as_bytes());
                }
                let _ = child.wait();
            }
            if let Some(slot) = slot {
                let _ = std::fs::remove_file(slot.path);
            }
        });
    }
}

/// IPv4 forwarding on, or the instance's packets never leave the host.
async fn enable_forwarding() -> Result<(), NetPolicyError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    let now = tokio::fs::read_to_string(path).await.unwrap_or_default();
    if now.trim() != "1" {
        tracing::warn!("egress policies: turning on IPv4 forwarding (net.ipv4.ip_forward = 1)");
        tokio::fs::write(path, b"1")
            .await
            .map_err(|source| NetPolicyError::Io {
                what: "turn on IPv4 forwarding".into(),
                source,
            })?;
    }
    Ok(())
}

/// Run `cmd` with `input` on stdin; a non-zero exit is an error with stderr.
async fn run_batch(cmd: &mut Command, input: &str, what: &str) -> Result<(), NetPolicyError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NetPolicyError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    let written = stdin.write_all(input.as_bytes()).await;
    drop(stdin);
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| NetPolicyError::Command {
            what: what.to_string(),
            detail: format!("no answer within {COMMAND_TIMEOUT:?}"),
        })?
        .map_err(|e| NetPolicyError::Command {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if !out.status.success() || written.is_err() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(NetPolicyError::Command {
            what: what.to_string(),
            detail: format!("{}: {}", out.status, stderr.trim()),
        });
    }
    Ok(())
}

/// Run `cmd`, ignoring its output; whether it succeeded.
async fn quiet(cmd: &mut Command) -> bool {
    tokio::time::timeout(
        COMMAND_TIMEOUT,
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).status(),
    )
    .await
    .is_ok_and(|s| s.is_ok_and(|s| s.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_resolve_to_themselves_and_names_are_pinned() {
        let rules: Vec<EgressRule> = ["10.1.2.3:80", "10.0.0.0/8:443", "10.1.2.3:80"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let r = resolve(&rules).await.unwrap();
        assert_eq!(r.allowed.len(), 2);
        assert!(r.hosts.is_empty());
        // `localhost` answers only loopback: nothing the sandbox could use.
        let local: EgressRule = "localhost:80".parse().unwrap();
        assert!(matches!(
            resolve(&[local]).await,
            Err(NetPolicyError::Resolve { .. })
        ));
        let pinned = Resolved {
            allowed: vec![],
            hosts: vec![("api.example".into(), Ipv4Addr::new(192, 0, 2, 7))],
        };
        assert!(pinned.hosts_file().ends_with("192.0.2.7\tapi.example\n"));
    }

    #[test]
    fn rules_name_the_instance_link_and_end_in_a_refusal() {
        let a = Attachment {
            link: "faas-e7".into(),
            chain: "i7".into(),
            table: "faas_ab12".into(),
            slot: None,
            released: true,
        };
        let s = a.rules_script(&[Allowed {
            net: Ipv4Net::new(Ipv4Addr::new(192, 0, 2, 1), 32).unwrap(),
            port: 443,
        }]);
        assert!(
            s.contains("ip daddr 192.0.2.1/32 tcp dport 443 accept"),
            "{s}"
        );
        assert!(
            s.contains("ip daddr 192.0.2.1/32 udp dport 443 accept"),
            "{s}"
        );
        let refusal = s.find("reject with tcp reset").unwrap();
        assert!(s.find("accept").unwrap() < refusal);
        assert!(s.ends_with("add element inet faas_ab12 instances { \"faas-e7\" : jump i7 }\n"));
    }

    #[tokio::test]
    async fn a_tiny_subnet_or_a_strange_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = EgressConfig::new("abc");
        c.slots_dir = dir.path().to_path_buf();
        c.subnet = Ipv4Net::new(Ipv4Addr::new(10, 9, 9, 0), 30).unwrap();
        assert!(matches!(
            Egress::open(c.clone()).await,
            Err(NetPolicyError::Config(_))
        ));
        c.subnet = DEFAULT_SUBNET;
        c.owner = "a b".into();
        assert!(matches!(
            Egress::open(c).await,
            Err(NetPolicyError::Config(_))
        ));
    }
}
