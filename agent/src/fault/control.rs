//! The control channel is out of every fault's reach (issue 8 item 8).
//!
//! Only `0.0.0.0/0` used to be refused: a partition of the coordinator's own
//! /32 and port, a /16 around it, or `0.0.0.0/1` + `128.0.0.0/1` were
//! applied and cut every agent's session (and with it the lease that
//! reverts faults). The agent knows the address and port it dials; before
//! any load, and again just before each apply, it refuses any network fault
//! whose scope covers one of them. Every network fault counts, whatever its
//! kind or direction: a partition or loss cuts the session, a netem or rate
//! fault on it delays heartbeats and snapshots. A scope without a port
//! covers every port; with a port it covers TCP and UDP (nft `th dport`,
//! tc `match ip dport`), so the TCP session on that port.
//!
//! The coordinator is one endpoint, so the union of the node's scopes
//! covers it exactly when one scope does: [`covering`] checks each against
//! each address, with exact prefix arithmetic in IPv4 and IPv6 (an
//! IPv4-mapped IPv6 address is compared as the IPv4 address it is).

use std::net::{IpAddr, SocketAddr};

use stampede_common::plan::Fault;

/// One network fault's reach: an address block and, optionally, one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub net: IpAddr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl Reach {
    /// The reach of a network fault; `None` for other kinds (or a scope
    /// that does not parse, which validation refuses anyway).
    pub fn of(fault: &Fault) -> Option<Reach> {
        if !fault.kind.is_network() {
            return None;
        }
        let scope = fault.scope.as_ref()?;
        let (ip, prefix) = scope.cidr().ok()?;
        Some(Reach { net: IpAddr::V4(ip), prefix, port: scope.port })
    }

    /// Whether this block and port take in `addr`.
    pub fn covers(&self, addr: SocketAddr) -> bool {
        if self.port.is_some_and(|p| p != addr.port()) {
            return false;
        }
        match (canonical(self.net), canonical(addr.ip())) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(u128::from(u32::from(net)), u128::from(u32::from(ip)), self.prefix.min(32), 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(u128::from(net), u128::from(ip), self.prefix.min(128), 128),
            _ => false,
        }
    }
}

/// `::ffff:a.b.c.d` is the IPv4 address a.b.c.d on the wire.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether the first `prefix` of `bits` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

/// The first fault (index into `faults`) whose reach covers one of the
/// control channel's addresses, and that address.
pub fn covering(faults: &[Fault], control: &[SocketAddr]) -> Option<(usize, SocketAddr)> {
    faults.iter().enumerate().find_map(|(i, f)| {
        let reach = Reach::of(f)?;
        control.iter().find(|a| reach.covers(**a)).map(|a| (i, *a))
    })
}

/// The refusal for fault `fault` covering `addr`, as the run reports it.
pub fn refusal(fault: &Fault, addr: SocketAddr) -> String {
    let scope = fault.scope.as_ref().map(|s| match s.port {
        Some(p) => format!("{} port {p}", s.dst),
        None => format!("{} (every port)", s.dst),
    });
    format!(
        "fault `{}`: its scope {} covers {addr}, the coordinator this agent dialed: it would cut the agent's control channel",
        fault.name,
        scope.unwrap_or_default()
    )
}

/// `host` and `port` of the coordinator's URL (`http://h:p`, `https://h`,
/// `[::1]:7000`), the port defaulting to the scheme's.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let (default, rest) = match url.split_once("://") {
        Some(("https", rest)) => (443, rest),
        Some((_, rest)) => (80, rest),
        None => (80, url),
    };
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default)),
    }
}

/// Every address the coordinator's URL resolves to (what the agent dials).
pub async fn resolve(url: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = host_port(url).ok_or_else(|| format!("cannot read host and port from the coordinator URL `{url}`"))?;
    let found = tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| format!("cannot resolve the coordinator `{host}`: {e}"))?;
    Ok(found.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(net: &str, prefix: u8, port: Option<u16>) -> Reach {
        Reach { net: net.parse().unwrap(), prefix, port }
    }

    fn fault(name: &str, kind: &str, dst: &str, port: Option<u16>) -> Fault {
        let mut v = serde_json::json!({"name": name, "kind": kind, "at": "1s", "duration": "1s", "scope": {"dst": dst}});
        if let Some(p) = port {
            v["scope"]["port"] = p.into();
        }
        match kind {
            "loss" => v["loss"] = "10%".into(),
            "rate" => v["rate"] = "1mbit".into(),
            "netem" => v["netem"] = serde_json::json!({"delay": "10ms"}),
            _ => {}
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn coverage_is_exact_prefix_and_port_arithmetic() {
        let at = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let coord = at("10.1.2.3:7000");
        let table: &[(Reach, SocketAddr, bool)] = &[
            (reach("10.1.2.3", 32, None), coord, true),
            (reach("10.1.2.3", 32, Some(7000)), coord, true),
            (reach("10.1.2.3", 32, Some(7001)), coord, false),
            (reach("10.1.0.0", 16, None), coord, true),
            (reach("10.1.0.0", 16, Some(7000)), coord, true),
            (reach("10.2.0.0", 16, None), coord, false),
            (reach("10.1.2.2", 31, None), coord, true),
            (reach("10.1.2.4", 31, None), coord, false),
            (reach("0.0.0.0", 1, None), coord, true),
            (reach("128.0.0.0", 1, None), coord, false),
            (reach("128.0.0.0", 1, None), at("200.0.0.1:7000"), true),
            (reach("0.0.0.0", 0, None), coord, true),
            (reach("127.0.0.1", 32, None), at("127.0.0.1:41234"), true),
            (reach("127.0.0.1", 32, Some(8080)), at("127.0.0.1:41234"), false),
            (reach("127.0.0.0", 8, None), at("127.0.0.1:41234"), true),
            // IPv4-mapped IPv6 is the IPv4 address on the wire.
            (reach("10.1.0.0", 16, None), at("[::ffff:10.1.2.3]:7000"), true),
            (reach("10.1.0.0", 16, None), at("[2001:db8::1]:7000"), false),
            (reach("2001:db8::", 32, None), at("[2001:db8::1]:7000"), true),
            (reach("2001:db8::", 33, None), at("[2001:db8:8000::1]:7000"), false),
            (reach("2001:db8::1", 128, Some(7000)), at("[2001:db8::1]:7000"), true),
            (reach("2001:db8::1", 128, Some(7000)), at("[2001:db8::2]:7000"), false),
        ];
        for (r, addr, want) in table {
            assert_eq!(r.covers(*addr), *want, "{r:?} covers {addr}");
        }
    }

    #[test]
    fn any_network_fault_of_the_node_covering_the_coordinator_is_found() {
        let control: Vec<SocketAddr> = vec!["10.1.2.3:7000".parse().unwrap()];
        let safe = fault("safe", "partition", "198.18.0.2", Some(80));
        let cpu: Fault = serde_json::from_value(serde_json::json!({"name": "cpu", "kind": "cpu", "at": "1s", "duration": "1s", "cpu": {"workers": 1}})).unwrap();
        assert_eq!(covering(&[safe.clone(), cpu.clone()], &control), None);
        // Two halves: together they cover everything, and one of them
        // always takes in the coordinator.
        let halves = [fault("lo", "partition", "0.0.0.0/1", None), fault("hi", "partition", "128.0.0.0/1", None)];
        assert_eq!(covering(&halves, &control).map(|(i, _)| i), Some(0));
        assert_eq!(covering(&halves, &["200.1.1.1:7000".parse().unwrap()]).map(|(i, _)| i), Some(1));
        for kind in ["partition", "loss", "netem", "rate"] {
            let f = fault("cut", kind, "10.1.0.0/16", Some(7000));
            assert_eq!(covering(&[safe.clone(), cpu.clone(), f], &control).map(|(i, _)| i), Some(2), "{kind}");
        }
        let msg = refusal(&fault("cut", "partition", "10.1.0.0/16", None), control[0]);
        assert!(msg.contains("fault `cut`: its scope 10.1.0.0/16 (every port) covers 10.1.2.3:7000"), "{msg}");
    }

    #[test]
    fn coordinator_urls_give_host_and_port() {
        assert_eq!(host_port("http://127.0.0.1:7000"), Some(("127.0.0.1".into(), 7000)));
        assert_eq!(host_port("https://coord.example"), Some(("coord.example".into(), 443)));
        assert_eq!(host_port("http://[::1]:7000/"), Some(("::1".into(), 7000)));
        assert_eq!(host_port("coord:7000"), Some(("coord".into(), 7000)));
        assert_eq!(host_port("http://h:notaport"), None);
    }
}
