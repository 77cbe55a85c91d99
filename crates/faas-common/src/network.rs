//! A function's network policy: by default a function has no network; an
//! egress allow-list (`network: {"egress": ["api.example.com:443",
//! "10.0.0.0/8:5432"]}`) opens exactly those destinations. This module only
//! parses and checks the list; enforcing it is `faas-netpolicy`'s job.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most destinations in one function's allow-list.
pub const MAX_EGRESS_RULES: usize = 32;
/// Longest host name (RFC 1035).
const MAX_HOST_LEN: usize = 253;

/// `network` in a function definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Destinations the function may open connections to (TCP or UDP):
    /// `host:port`, `a.b.c.d:port` or `a.b.c.d/len:port`.
    #[serde(default)]
    pub egress: Vec<String>,
}

/// Where an allow-list entry points: a name the platform resolves (and pins
/// for the instance's life), or IPv4 addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A DNS name.
    Host(String),
    /// An IPv4 network (`/32` for one address).
    Net(Ipv4Net),
}

/// An IPv4 network: an address whose bits past `len` are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    /// First address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0-32.
    pub len: u8,
}

impl Ipv4Net {
    /// `addr/len`, with the host bits cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Net> {
        if len > 32 {
            return None;
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Some(Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        })
    }

    /// Whether `ip` is in it.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        Ipv4Net::new(ip, self.len).is_some_and(|n| n.addr == self.addr)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One parsed allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressRule {
    /// Where.
    pub destination: Destination,
    /// Port, 1-65535.
    pub port: u16,
}

/// Why an allow-list entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress {entry:?}: {reason}")]
pub struct EgressError {
    /// The entry (cut short).
    pub entry: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for EgressRule {
    type Err = EgressError;

    fn from_str(entry: &str) -> Result<EgressRule, EgressError> {
        let err = |reason| EgressError {
            entry: crate::contract::truncate(entry, 80),
            reason,
        };
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| err("expected host:port, address:port or address/len:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err("the port must be 1-65535"))?;
        let destination = if let Some((addr, len)) = host.split_once('/') {
            let addr: Ipv4Addr = addr.parse().map_err(|_| err("not an IPv4 network"))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| err("the prefix length must be 0-32"))?;
            let net = Ipv4Net::new(addr, len).ok_or_else(|| err("not an IPv4 network"))?;
            if net.addr != addr {
                return Err(err("the address has bits set past the prefix length"));
            }
            Destination::Net(net)
        } else if let Ok(addr) = host.parse::<Ipv4Addr>() {
            Destination::Net(Ipv4Net { addr, len: 32 })
        } else if host_name(host) {
            Destination::Host(host.to_ascii_lowercase())
        } else {
            return Err(err(
                "not a host name or an IPv4 address (IPv6 is not supported)",
            ));
        };
        if let Destination::Net(net) = &destination {
            if unreachable_net(net) {
                return Err(err(
                    "loopback, unspecified and multicast addresses are not destinations",
                ));
            }
        }
        Ok(EgressRule { destination, port })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.destination {
            Destination::Host(h) => write!(f, "{h}:{}", self.port),
            Destination::Net(n) if n.len == 32 => write!(f, "{}:{}", n.addr, self.port),
            Destination::Net(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

/// Addresses no allow-list may name: the sandbox's own loopback, "any", and
/// multicast/broadcast. (The host's own addresses are refused at run time by
/// the enforcement itself, whatever the list says.)
pub fn unreachable_net(net: &Ipv4Net) -> bool {
    let a = net.addr;
    a.is_loopback()
        || a.is_multicast()
        || (net.len == 32 && (a.is_unspecified() || a.is_broadcast()))
}

/// A DNS name: dot-separated labels of letters, digits and `-`, 1-63 each,
/// not all-numeric at the end (which would be an address).
fn host_name(host: &str) -> bool {
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return false;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let ok = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    ok && !labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
}

/// Parse and check a whole allow-list.
pub fn parse_egress(policy: &NetworkPolicy) -> Result<Vec<EgressRule>, EgressError> {
    if policy.egress.len() > MAX_EGRESS_RULES {
        return Err(EgressError {
            entry: format!("{} entries", policy.egress.len()),
            reason: "an allow-list holds at most 32 destinations",
        });
    }
    let mut rules: Vec<EgressRule> = policy
        .egress
        .iter()
        .map(|e| e.parse())
        .collect::<Result<_, _>>()?;
    rules.sort();
    rules.dedup();
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Result<EgressRule, &'static str> {
        s.parse::<EgressRule>().map_err(|e| e.reason)
    }

    #[test]
    fn entries_parse_into_names_and_networks() {
        assert_eq!(
            rule("API.example.com:443").unwrap(),
            EgressRule {
                destination: Destination::Host("api.example.com".into()),
                port: 443
            }
        );
        let r = rule("10.1.2.3:5432").unwrap();
        assert_eq!(r.to_string(), "10.1.2.3:5432");
        let r = rule("10.0.0.0/8:80").unwrap();
        assert_eq!(r.to_string(), "10.0.0.0/8:80");
        assert!(
            matches!(r.destination, Destination::Net(n) if n.contains(Ipv4Addr::new(10, 9, 9, 9)))
        );
        // Every address, one port: a list may say so.
        assert_eq!(rule("0.0.0.0/0:443").unwrap().to_string(), "0.0.0.0/0:443");
    }

    #[test]
    fn bad_entries_say_why() {
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:70000",
            "example.com:-1",
            ":443",
            "10.0.0.1/8:80",
            "10.0.0.0/33:80",
            "127.0.0.1:80",
            "0.0.0.0:443",
            "224.0.0.1:5353",
            "[::1]:443",
            "bad_name.com:443",
            "-x.com:443",
            "1.2.3:80",
            "a..b:80",
        ] {
            assert!(rule(bad).is_err(), "{bad} passed");
        }
        let many = NetworkPolicy {
            egress: (0..33).map(|i| format!("10.0.0.{i}:80")).collect(),
        };
        assert!(parse_egress(&many).is_err());
    }

    #[test]
    fn lists_are_sorted_and_deduplicated() {
        let p = NetworkPolicy {
            egress: vec![
                "b.example:1".into(),
                "a.example:1".into(),
                "b.example:1".into(),
            ],
        };
        let rules = parse_egress(&p).unwrap();
        let shown: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["a.example:1", "b.example:1"]);
    }
}
