//! Which fault kinds this node can do, sent at registration so the
//! coordinator's preflight can refuse a plan before any load starts.
//!
//! Capability names (what [`super::Driver::requires`] lists): the binaries
//! `tc`, `nft`, `ip`; `net_admin`; the kernel qdiscs `qdisc.prio`,
//! `qdisc.netem`, `qdisc.tbf`, `qdisc.htb`; what ingress shaping needs
//! (`link.ifb`, `qdisc.ingress`, `tc.mirred`); the CLIs `systemctl`,
//! `docker`, `incus`.
//!
//! A qdisc is in the kernel when tc can actually create it, so each one is
//! tried on the loopback of a throwaway network namespace (`stp-probe-<pid>-<n>`):
//! the host's devices are never touched, and the namespace is deleted by a
//! guard whatever happens. Where tc cannot create it, tc's own message is the
//! detail (`Error: Specified qdisc kind is unknown.`). The same namespace checks
//! that nf_tables accepts a rule of the shape the nft drivers use.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use stampede_proto::v1::Capability;

/// Each qdisc with the least arguments tc takes to create it.
pub const QDISCS: [(&str, &[&str]); 4] = [
    ("prio", &["prio"]),
    ("netem", &["netem", "delay", "1ms"]),
    ("tbf", &["tbf", "rate", "1mbit", "burst", "16kb", "latency", "50ms"]),
    ("htb", &["htb"]),
];

/// The capability probe's throwaway namespaces are `stp-probe-<agent pid>-<n>`;
/// `sweep` removes those whose agent is gone.
pub const PROBE_NETNS_PREFIX: &str = "stp-probe-";
/// The whole probe stays well under the 2 s registration budget.
const BUDGET: Duration = Duration::from_millis(1500);

fn cap(name: &str, available: bool, detail: impl Into<String>) -> Capability {
    Capability { name: name.to_string(), available, detail: detail.into() }
}

/// Everything this node can do, one entry per capability name.
pub fn probe() -> Vec<Capability> {
    let deadline = Instant::now() + BUDGET;
    let mut caps = Vec::new();
    let mut found = |name: &str| {
        let path = on_path(name);
        caps.push(match &path {
            Some(p) => cap(name, true, p.display().to_string()),
            None => cap(name, false, "not on PATH"),
        });
        path.is_some()
    };
    let (tc, nft, ip) = (found("tc"), found("nft"), found("ip"));
    let admin = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| has_net_admin(&s));
    caps.push(match admin {
        Some(true) => cap("net_admin", true, "CAP_NET_ADMIN is effective"),
        Some(false) => cap("net_admin", false, "CAP_NET_ADMIN is not effective (run as root or grant it)"),
        None => cap("net_admin", false, "cannot read CapEff from /proc/self/status"),
    });
    let blocked = match (ip, tc, admin) {
        (false, _, _) => Some("cannot probe: `ip` is not on PATH"),
        (_, false, _) => Some("cannot probe: `tc` is not on PATH"),
        (_, _, Some(true)) => None,
        _ => Some("cannot probe: needs CAP_NET_ADMIN"),
    };
    let mut kernel = match blocked {
        Some(why) => QDISCS.iter().map(|(q, _)| format!("qdisc.{q}")).chain(INGRESS.map(String::from)).map(|n| cap(&n, false, why)).collect(),
        None => probe_in_namespace(nft, deadline),
    };
    // `nft` is usable when the binary is there and, where it could be tried,
    // the kernel took a stampede-shaped table.
    if let Some(pos) = kernel.iter().position(|c| c.name == "nft") {
        let k = kernel.remove(pos);
        if let Some(bin) = caps.iter_mut().find(|c| c.name == "nft") {
            bin.available &= k.available;
            bin.detail = format!("{}; {}", bin.detail, k.detail);
        }
    }
    caps.append(&mut kernel);
    for cli in ["systemctl", "docker", "incus"] {
        let path = on_path(cli);
        caps.push(match path {
            Some(p) => cap(cli, true, p.display().to_string()),
            None => cap(cli, false, "not on PATH"),
        });
    }
    caps
}

/// Deletes the probe namespace on every path out of the probe.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.0], None, Duration::from_secs(2));
    }
}

fn probe_in_namespace(nft: bool, deadline: Instant) -> Vec<Capability> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("{PROBE_NETNS_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let _ = run(&["ip", "netns", "del", &name], None, left()); // a leftover of a crashed probe
    // And those of agents killed mid-probe (SIGKILL runs no Drop): stale
    // ones only, so a probe running beside us is never touched.
    for (stale, _) in super::sweep::stale_probe_namespaces(super::sweep::PROBE_NETNS_MIN_AGE).unwrap_or_default() {
        let _ = run(&["ip", "netns", "del", &stale], None, left());
    }
    let ready = run(&["ip", "netns", "add", &name], None, left()).map(|_| Namespace(name.clone()));
    let ns = ready.and_then(|ns| run(&["ip", "-n", &name, "link", "set", "lo", "up"], None, left()).map(|_| ns));
    let mut caps = Vec::new();
    for (q, args) in QDISCS {
        let result = match &ns {
            Err(e) => Err(format!("cannot probe: no namespace: {e}")),
            Ok(_) => {
                let mut argv = vec!["tc", "-n", &name, "qdisc", "add", "dev", "lo", "root", "handle", "1:"];
                argv.extend(args);
                let added = run(&argv, None, left());
                if added.is_ok() {
                    let _ = run(&["tc", "-n", &name, "qdisc", "del", "dev", "lo", "root"], None, left());
                }
                added
            }
        };
        caps.push(match result {
            Ok(_) => cap(&format!("qdisc.{q}"), true, "in the kernel"),
            Err(e) => cap(&format!("qdisc.{q}"), false, e),
        });
    }
    caps.extend(probe_ingress(&ns.as_ref().map(|_| name.as_str()).map_err(Clone::clone), &left));
    if nft {
        let script = "table inet stampede_probe {\n\tchain output {\n\t\ttype filter hook output priority -150; policy accept;\n\
                      \t\tip daddr 198.18.0.1 meta l4proto { tcp, udp } th dport 9 numgen random mod 10000 < 1 drop\n\t}\n}\n";
        let result = match &ns {
            Err(e) => Err(format!("cannot probe: no namespace: {e}")),
            Ok(_) => run(&["ip", "netns", "exec", &name, "nft", "-f", "-"], Some(script), left()),
        };
        caps.push(match result {
            Ok(_) => cap("nft", true, "nf_tables takes stampede's rules"),
            Err(e) => cap("nft", false, format!("nf_tables refused a stampede table: {e}")),
        });
    }
    caps
}

/// What `direction: ingress` needs, in the order it is built.
const INGRESS: [&str; 3] = ["link.ifb", "qdisc.ingress", "tc.mirred"];

/// An ifb device, an ingress qdisc on loopback and a mirred redirect from
/// it to the ifb, in the probe's namespace `ns`.
fn probe_ingress(ns: &Result<&str, String>, left: &dyn Fn() -> Duration) -> Vec<Capability> {
    let name = match ns {
        Ok(name) => *name,
        Err(e) => return INGRESS.iter().map(|c| cap(c, false, format!("cannot probe: no namespace: {e}"))).collect(),
    };
    let ifb = run(&["ip", "-n", name, "link", "add", "stpifbprobe", "type", "ifb"], None, left());
    let ingress = run(&["tc", "-n", name, "qdisc", "add", "dev", "lo", "handle", "ffff:", "ingress"], None, left());
    let mirred = match (&ifb, &ingress) {
        (Ok(_), Ok(_)) => {
            let argv = ["tc", "-n", name, "filter", "add", "dev", "lo", "parent", "ffff:", "protocol", "ip", "prio", "1", "u32"];
            let action = ["match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", "stpifbprobe"];
            run(&[&argv[..], &action[..]].concat(), None, left())
        }
        _ => Err("cannot probe: needs link.ifb and qdisc.ingress".into()),
    };
    [(INGRESS[0], ifb, "ifb devices"), (INGRESS[1], ingress, "the ingress qdisc"), (INGRESS[2], mirred, "the mirred action")]
        .into_iter()
        .map(|(c, r, what)| match r {
            Ok(_) => cap(c, true, format!("{what} in the kernel")),
            Err(e) => cap(c, false, e),
        })
        .collect()
}

/// Runs a command to completion within `timeout`; Err carries its stderr.
fn run(argv: &[&str], stdin: Option<&str>, timeout: Duration) -> Result<String, String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`{}` did not finish within {timeout:?}", argv.join(" ")));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().next().unwrap_or("failed").trim().to_string())
    }
}

/// Whether `CapEff` in /proc/self/status has CAP_NET_ADMIN (bit 12). Read
/// rather than assumed from uid 0: root in a container often lacks it.
pub fn has_net_admin(status: &str) -> Option<bool> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok().map(|bits| bits & (1 << 12) != 0)
}

/// The executable `name` on PATH, as `Command` would find it.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_bit_12() {
        assert_eq!(has_net_admin("Name:\tx\nCapEff:\t000001ffffffffff\n"), Some(true));
        assert_eq!(has_net_admin("CapEff:\t0000000000000000\n"), Some(false));
        assert_eq!(has_net_admin("CapEff:\t0000000000001000\n"), Some(true));
        assert_eq!(has_net_admin("CapEff:\t0000000000000fff\n"), Some(false));
        assert_eq!(has_net_admin("Name:\tx\n"), None);
    }

    /// `CONFIG_NET_SCH_<Q>` from the running kernel's config, when exposed.
    fn kernel_config() -> Option<String> {
        let out = Command::new("zcat").arg("/proc/config.gz").output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn probe_is_fast_complete_and_leaves_nothing() {
        let started = Instant::now();
        let caps = probe();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "probe took {took:?}");
        let names: Vec<&str> = caps.iter().map(|c| c.name.as_str()).collect();
        let want = [
            "tc", "nft", "ip", "net_admin", "qdisc.prio", "qdisc.netem", "qdisc.tbf", "qdisc.htb", "link.ifb", "qdisc.ingress", "tc.mirred", "systemctl", "docker", "incus",
        ];
        assert_eq!(names, want);
        for c in &caps {
            assert!(c.available || !c.detail.is_empty(), "{c:?} gives no reason");
            println!("{:<12} {:<5} {}", c.name, c.available, c.detail);
        }
        let netns = Command::new("ip").args(["netns", "list"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        assert!(!netns.unwrap_or_default().contains(&format!("stp-probe-{}-", std::process::id())), "probe left a namespace");

        let get = |n: &str| caps.iter().find(|c| c.name == n).unwrap();
        if !get("net_admin").available || !get("tc").available || !get("ip").available {
            println!("skipping the kernel checks: not root, or tc / ip missing");
            return;
        }
        // This machine's kernel (DESIGN.md) has tbf and htb but no netem.
        assert!(get("qdisc.tbf").available && get("qdisc.htb").available, "{caps:?}");
        // And ingress shaping's pieces.
        assert!(get("link.ifb").available && get("qdisc.ingress").available && get("tc.mirred").available, "{caps:?}");
        let Some(config) = kernel_config() else {
            println!("skipping the cross-check: /proc/config.gz is not readable");
            return;
        };
        for (q, _) in QDISCS {
            let key = format!("CONFIG_NET_SCH_{}", q.to_uppercase());
            let c = get(&format!("qdisc.{q}"));
            if config.contains(&format!("# {key} is not set")) {
                assert!(!c.available && c.detail.contains("unknown"), "{c:?}");
            } else if config.contains(&format!("{key}=y")) {
                assert!(c.available, "{c:?}");
            }
        }
    }
}
