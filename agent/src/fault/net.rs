//! netem and rate faults with `tc`, scoped to one destination.
//!
//! Only packets to the scope go through the fault: stampede installs its own
//! classful root qdisc whose default path leaves every other packet (the
//! control channel to the coordinator above all) as it was, and a `u32`
//! filter steers the scoped packets into one class that carries the fault.
//! The handles below are stampede's own, so revert removes exactly that tree.
//!
//! The plan
//! ```yaml
//! - { name: db-slow, kind: netem, scope: { dst: 198.18.0.2/32, port: 5432, dev: eth0 },
//!     netem: { delay: 200ms, jitter: 20ms, loss: 1% } }
//! - { name: cap, kind: rate, scope: { dst: 198.18.0.0/24, dev: eth0 }, rate: 1mbit }
//! ```
//! applies (netem)
//! ```text
//! tc qdisc add dev eth0 root handle 5ea7: prio bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1
//! tc qdisc add dev eth0 parent 5ea7:4 handle 5ea8: netem delay 200ms 20ms loss random 1%
//! tc filter add dev eth0 parent 5ea7: protocol ip prio 1 u32 match ip dst 198.18.0.2/32 match ip dport 5432 0xffff flowid 5ea7:4
//! ```
//! and (rate)
//! ```text
//! tc qdisc add dev eth0 root handle 5ea7: htb direct_qlen 1000
//! tc class add dev eth0 parent 5ea7: classid 5ea7:4 htb rate 1mbit ceil 1mbit burst 3200 cburst 3200
//! tc filter add dev eth0 parent 5ea7: protocol ip prio 1 u32 match ip dst 198.18.0.0/24 flowid 5ea7:4
//! ```
//! and both revert with `tc qdisc del dev eth0 root handle 5ea7:`.
//!
//! Why two roots: netem sits under `prio` (the priomap is pfifo_fast's, so
//! unscoped traffic keeps its usual bands 1–3, band 4 is only reachable by the
//! filter). The rate cap uses `htb` without a default class: unclassified
//! packets take htb's direct queue, unshaped, and the cap is the class itself
//! (htb copes with GSO super-packets, where a `tbf` leaf smaller than one of
//! them would drop it). It also runs on kernels built without `prio`.
//!
//! Not clobbering the operator: `tc qdisc add ... root` replaces only the
//! kernel's default root (handle `0:`: noqueue, pfifo_fast, mq, fq_codel). Any
//! root someone configured fails with `NLM_F_REPLACE needed to override`, and a
//! second stampede tc fault on the same device with `Exclusivity flag on,
//! cannot modify`; the apply then fails with tc's message and revert is a
//! no-op (`del ... handle 5ea7:` on someone else's root says `Invalid handle`
//! and deletes nothing). Verified in `agent/tests/netns_faults.rs`.
//!
//! `match ip dport` reads the port at the fixed offset of an IP header without
//! options (TCP and UDP alike), as tc's u32 shorthand does.
//!
//! `direction: ingress` shapes what the node receives from the scope (a
//! download cap on the load agent). tc shapes only on egress, so, as
//! everyone does it, the scope's incoming packets are redirected to an ifb
//! device of the fault's own (`stpifb` + a hash of its name) and the same
//! tree goes on the ifb's egress, matching the scope as the *source*:
//! ```text
//! ip link add stpifb1a2b3c4d type ifb
//! ip link set dev stpifb1a2b3c4d up
//! tc qdisc add dev eth0 handle ffff: ingress
//! tc filter add dev eth0 parent ffff: protocol ip prio 1 u32 match ip src 198.18.0.2/32 match ip sport 8080 0xffff action mirred egress redirect dev stpifb1a2b3c4d
//! tc qdisc add dev stpifb1a2b3c4d root handle 5ea7: htb direct_qlen 1000   (and the rest as above, `src`/`sport`)
//! ```
//! reverted with `tc qdisc del dev eth0 handle ffff: ingress` first (no
//! packet is ever redirected to a missing device), then `ip link del
//! stpifb1a2b3c4d` (which takes its tree). A device has one ingress qdisc:
//! the agent checks at assignment, and again 1.5 s before the window
//! (`injector.rs`), that the device has none, and refuses the fault if it
//! has: the revert never removes an operator's ingress qdisc unless one is
//! added in those last 1.5 s.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use stampede_common::plan::{Direction, Distribution, Fault, Netem};
use stampede_common::units::Percent;

use super::{Action, Driver, FaultActions, FaultError, Node, Runner};

/// stampede's root qdisc on a device (`5ea7` ≈ "seat"; any fixed handle works).
pub const ROOT_HANDLE: &str = "5ea7:";
/// The class (prio band 4, or the htb class) the filter sends scoped packets to.
pub const FAULT_CLASS: &str = "5ea7:4";
/// The netem qdisc under [`FAULT_CLASS`].
pub const FAULT_HANDLE: &str = "5ea8:";
/// pfifo_fast's map, so unscoped traffic keeps its usual bands (1–3, never 4).
pub const PRIOMAP: [&str; 16] = ["1", "2", "2", "2", "1", "2", "0", "0", "1", "1", "1", "1", "1", "1", "1", "1"];
/// What `tc qdisc del ... root handle 5ea7:` prints when our tree is already
/// gone: `Invalid handle` (the root is the default or someone else's: nothing
/// is deleted), older kernels' wording, and a device that no longer exists.
pub const TREE_GONE: [&str; 4] = ["Invalid handle", "Cannot find specified qdisc", "No such file or directory", "Cannot find device"];

/// Netem faults: delay, jitter, loss, duplication, corruption, reordering, rate.
pub struct NetemDriver;
/// Bandwidth cap (htb class) on the scoped traffic.
pub struct RateDriver;

/// A network fault's scope, checked and normalised for tc and nft.
pub(crate) struct Scoped {
    /// `network/len`, host bits cleared: `198.18.0.0/24`, `198.18.0.2/32`.
    pub cidr: String,
    pub net: Ipv4Addr,
    pub port: Option<u16>,
    /// As written in the plan (`auto` or a device name).
    pub dev: String,
    pub direction: Direction,
}

pub(crate) fn plan_error(fault: &Fault, message: impl Into<String>) -> FaultError {
    FaultError::Plan { fault: fault.name.clone(), message: message.into() }
}

pub(crate) fn scoped(fault: &Fault) -> Result<Scoped, FaultError> {
    let scope = fault.scope.as_ref().ok_or_else(|| plan_error(fault, "a network fault needs `scope`"))?;
    let (ip, len) = scope.cidr().map_err(|m| plan_error(fault, m))?;
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let net = Ipv4Addr::from(u32::from(ip) & mask);
    Ok(Scoped { cidr: format!("{net}/{len}"), net, port: scope.port, dev: scope.dev.clone(), direction: scope.direction })
}

/// The device to put the tree on: the plan's, or the route's for `auto`.
fn device(fault: &Fault, s: &Scoped, node: &Node) -> Result<String, FaultError> {
    if s.dev != "auto" {
        return Ok(s.dev.clone());
    }
    (node.route_dev)(s.net).map_err(|m| plan_error(fault, format!("no device for `{}`: {m}", s.cidr)))
}

/// The device of the route to `addr`, from `ip -o route get ADDR`.
pub fn route_dev(addr: Ipv4Addr) -> Result<String, String> {
    let out = Command::new("ip").args(["-o", "route", "get", &addr.to_string()]).output();
    let out = out.map_err(|e| format!("cannot run `ip route get {addr}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("no route to {addr}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    parse_route_dev(&String::from_utf8_lossy(&out.stdout))
}

/// `198.18.0.2 via 10.0.0.1 dev eth0 src 10.0.0.5 uid 0 \    cache` → `eth0`.
pub fn parse_route_dev(output: &str) -> Result<String, String> {
    let mut words = output.split_whitespace();
    let dev = words.by_ref().find(|w| *w == "dev").and_then(|_| words.next());
    dev.map(str::to_string).ok_or_else(|| format!("no device in `{}`", output.trim()))
}

/// A time as tc reads it: `200ms`, `1.5ms`, `500us` (microsecond resolution).
pub fn tc_time(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else if us < 1000 {
        format!("{us}us")
    } else {
        let frac = format!("{:03}", us % 1000);
        format!("{}.{}ms", us / 1000, frac.trim_end_matches('0'))
    }
}

/// A percentage as tc reads it: `1%`, `0.1%` — at most 4 decimals, so float
/// noise from the ratio never reaches the command line.
pub fn tc_percent(p: Percent) -> String {
    let s = format!("{:.4}", p.ratio() * 100.0);
    format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
}

/// What [`netem_args`] cannot express; the plan's validation covers the rest.
pub fn check_netem(n: &Netem) -> Result<(), String> {
    match (n.jitter, n.correlation, n.distribution) {
        (None, Some(_), _) | (None, _, Some(_)) => Err("netem.correlation and netem.distribution shape the jitter: they need `jitter`".into()),
        _ => Ok(()),
    }
}

/// The tc-netem(8) options, in the order of its grammar:
/// `[delay TIME [JITTER [CORRELATION]] [distribution D]] [loss random P]
/// [corrupt P] [duplicate P] [reorder P] [rate RATE]`. `uniform` is netem's
/// default distribution and tc ships no `uniform.dist` table (it refuses
/// `distribution uniform`), so it is written by leaving it out.
pub fn netem_args(n: &Netem) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if let Some(delay) = n.delay {
        a.extend(["delay".into(), tc_time(delay.0)]);
        if let Some(jitter) = n.jitter {
            a.push(tc_time(jitter.0));
            if let Some(c) = n.correlation {
                a.push(tc_percent(c));
            }
            let dist = match n.distribution {
                None | Some(Distribution::Uniform) => None,
                Some(Distribution::Normal) => Some("normal"),
                Some(Distribution::Pareto) => Some("pareto"),
                Some(Distribution::Paretonormal) => Some("paretonormal"),
            };
            if let Some(d) = dist {
                a.extend(["distribution".into(), d.into()]);
            }
        }
    }
    if let Some(p) = n.loss {
        a.extend(["loss".into(), "random".into(), tc_percent(p)]);
    }
    for (word, value) in [("corrupt", n.corrupt), ("duplicate", n.duplicate)] {
        if let Some(p) = value {
            a.extend([word.into(), tc_percent(p)]);
        }
    }
    if let (Some(p), Some(_)) = (n.reorder, n.delay) {
        a.extend(["reorder".into(), tc_percent(p)]);
    }
    if let Some(r) = &n.rate {
        a.extend(["rate".into(), r.clone()]);
    }
    a
}

/// Bits per second of a tc rate (`1mbit`, `2mbps` = 2 MB/s, as tc reads them).
pub fn tc_rate_bits(rate: &str) -> Result<f64, String> {
    stampede_common::plan::check_tc_rate(rate)?;
    let split = rate.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rate.len());
    let (num, unit) = rate.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{rate}`: bad number"))?;
    // tc's units are decimal; `bps` is bytes per second.
    const UNITS: [(&str, f64); 10] =
        [("bit", 1.0), ("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9), ("tbit", 1e12), ("bps", 8.0), ("kbps", 8e3), ("mbps", 8e6), ("gbps", 8e9), ("tbps", 8e12)];
    let scale = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(|| format!("`{rate}`: unknown unit"))?.1;
    Ok(n * scale)
}

/// The htb bucket for a cap: 10 ms of traffic, at least two full frames, so
/// the cap holds at the scale of a request while tiny rates still pass a frame.
pub fn burst_bytes(bits_per_second: f64) -> u64 {
    ((bits_per_second / 8.0 / 100.0).ceil() as u64).max(3200)
}

fn owned(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn run(argv: Vec<String>) -> Action {
    Action::Run { argv, stdin: None, ok_if: Vec::new() }
}

/// `u32` matches for the scope: as destination (what we send), or as
/// source (what we receive, on the ifb).
fn scope_matches(s: &Scoped, from_scope: bool) -> Vec<String> {
    let (addr, port) = if from_scope { ("src", "sport") } else { ("dst", "dport") };
    let mut m = owned(&["match", "ip", addr, &s.cidr]);
    if let Some(p) = s.port {
        m.extend(owned(&["match", "ip", port, &p.to_string(), "0xffff"]));
    }
    m
}

/// The filter that sends the scope's packets to [`FAULT_CLASS`].
fn filter(p: &Placement, s: &Scoped) -> Action {
    let mut argv = owned(&["tc", "filter", "add", "dev", &p.tree_dev, "parent", ROOT_HANDLE, "protocol", "ip", "prio", "1", "u32"]);
    argv.extend(scope_matches(s, p.from_scope));
    argv.extend(owned(&["flowid", FAULT_CLASS]));
    run(argv)
}

/// The ifb device of an ingress fault: `stpifb` and 8 hex digits of an
/// FNV-1a hash of its name (15 bytes at most, a device name's limit).
pub fn ifb_name(fault: &str) -> String {
    let hash = fault.bytes().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("{IFB_PREFIX}{hash:08x}")
}

/// Every ifb device stampede makes starts with this; `sweep` looks for it.
pub const IFB_PREFIX: &str = "stpifb";

/// Where a tc fault's tree goes, and the plumbing around it.
struct Placement {
    /// The device whose root gets the tree: the scope's device, or the ifb.
    tree_dev: String,
    /// Match the scope as the packets' source (ingress, on the ifb).
    from_scope: bool,
    /// What comes before the tree (ingress: the ifb and the redirect).
    before: Vec<Action>,
    revert: Vec<Action>,
}

fn placement(fault: &Fault, s: &Scoped, node: &Node) -> Result<Placement, FaultError> {
    let dev = device(fault, s, node)?;
    if s.direction == Direction::Egress {
        let revert = vec![Action::run_ok_if(&["tc", "qdisc", "del", "dev", &dev, "root", "handle", ROOT_HANDLE], &TREE_GONE)];
        return Ok(Placement { tree_dev: dev, from_scope: false, before: Vec::new(), revert });
    }
    let ifb = ifb_name(&fault.name);
    let mut redirect = owned(&["tc", "filter", "add", "dev", &dev, "parent", "ffff:", "protocol", "ip", "prio", "1", "u32"]);
    redirect.extend(scope_matches(s, true));
    redirect.extend(owned(&["action", "mirred", "egress", "redirect", "dev", &ifb]));
    let before = vec![
        Action::run(&["ip", "link", "add", &ifb, "type", "ifb"]),
        Action::run(&["ip", "link", "set", "dev", &ifb, "up"]),
        Action::run(&["tc", "qdisc", "add", "dev", &dev, "handle", "ffff:", "ingress"]),
        run(redirect),
    ];
    // The redirect goes first, so no packet is ever sent to a missing device.
    let revert = vec![
        Action::run_ok_if(&["tc", "qdisc", "del", "dev", &dev, "handle", "ffff:", "ingress"], &TREE_GONE),
        Action::run_ok_if(&["ip", "link", "del", &ifb], &["Cannot find device"]),
    ];
    Ok(Placement { tree_dev: ifb, from_scope: true, before, revert })
}

/// An ingress fault needs the device's ingress qdisc to itself: one that is
/// there already is someone else's, and the revert would remove it.
fn check_ingress(fault: &Fault, node: &Node, runner: &Runner) -> Result<(), String> {
    let s = scoped(fault).map_err(|e| e.to_string())?;
    if s.direction == Direction::Egress {
        return Ok(());
    }
    let dev = device(fault, &s, node).map_err(|e| e.to_string())?;
    let shown = runner.output(&Action::run(&["tc", "qdisc", "show", "dev", &dev, "ingress"])).map_err(|e| e.to_string())?;
    if shown.contains("ingress") {
        return Err(format!("fault `{}`: {dev} already has an ingress qdisc (not stampede's): an ingress fault would have to share it", fault.name));
    }
    Ok(())
}

/// `ip` resolves `dev: auto`; the rest is what the tree itself needs.
fn requires(fault: &Fault, tree: &[&str]) -> Vec<String> {
    let mut r = owned(tree);
    if fault.scope.as_ref().is_some_and(|s| s.dev == "auto") {
        r.push("ip".into());
    }
    if fault.scope.as_ref().is_some_and(|s| s.direction == Direction::Ingress) {
        r.extend(owned(&["ip", "link.ifb", "qdisc.ingress", "tc.mirred"]));
        r.dedup();
    }
    r
}

impl Driver for NetemDriver {
    fn actions(&self, fault: &Fault, node: &Node) -> Result<FaultActions, FaultError> {
        let netem = fault.netem.as_ref().ok_or_else(|| plan_error(fault, "a netem fault needs `netem`"))?;
        check_netem(netem).map_err(|m| plan_error(fault, m))?;
        let s = scoped(fault)?;
        let p = placement(fault, &s, node)?;
        let dev = &p.tree_dev;
        let mut root = owned(&["tc", "qdisc", "add", "dev", dev, "root", "handle", ROOT_HANDLE, "prio", "bands", "4", "priomap"]);
        root.extend(owned(&PRIOMAP));
        let mut leaf = owned(&["tc", "qdisc", "add", "dev", dev, "parent", FAULT_CLASS, "handle", FAULT_HANDLE, "netem"]);
        leaf.extend(netem_args(netem));
        let mut apply = p.before.clone();
        apply.extend([run(root), run(leaf), filter(&p, &s)]);
        Ok(FaultActions { apply, revert: p.revert })
    }

    fn requires(&self, fault: &Fault) -> Vec<String> {
        requires(fault, &["tc", "qdisc.prio", "qdisc.netem", "net_admin"])
    }

    fn check(&self, fault: &Fault, node: &Node, runner: &Runner) -> Result<(), String> {
        self.actions(fault, node).map_err(|e| e.to_string())?;
        check_ingress(fault, node, runner)
    }
}

impl Driver for RateDriver {
    fn actions(&self, fault: &Fault, node: &Node) -> Result<FaultActions, FaultError> {
        let rate = fault.rate.as_deref().ok_or_else(|| plan_error(fault, "a rate fault needs `rate`"))?;
        let burst = burst_bytes(tc_rate_bits(rate).map_err(|m| plan_error(fault, m))?).to_string();
        let s = scoped(fault)?;
        let p = placement(fault, &s, node)?;
        let dev = &p.tree_dev;
        // No `default`: unclassified packets use htb's direct queue, unshaped.
        // Its length is set because htb would otherwise take the device's
        // txqueuelen, which is tiny (or 0 → 2) on some tunnels.
        let root = owned(&["tc", "qdisc", "add", "dev", dev, "root", "handle", ROOT_HANDLE, "htb", "direct_qlen", "1000"]);
        let mut class = owned(&["tc", "class", "add", "dev", dev, "parent", ROOT_HANDLE, "classid", FAULT_CLASS, "htb"]);
        class.extend(owned(&["rate", rate, "ceil", rate, "burst", &burst, "cburst", &burst]));
        let mut apply = p.before.clone();
        apply.extend([run(root), run(class), filter(&p, &s)]);
        Ok(FaultActions { apply, revert: p.revert })
    }

    fn check(&self, fault: &Fault, node: &Node, runner: &Runner) -> Result<(), String> {
        self.actions(fault, node).map_err(|e| e.to_string())?;
        check_ingress(fault, node, runner)
    }

    fn requires(&self, fault: &Fault) -> Vec<String> {
        requires(fault, &["tc", "qdisc.htb", "net_admin"])
    }

    /// The cap's own class counters: what went through it, and how often
    /// the cap held traffic back. Passive: measuring a cap with a bulk
    /// transfer would compete with the load it is meant to shape.
    fn observe(&self, fault: &Fault, node: &Node) -> Option<Action> {
        let s = scoped(fault).ok()?;
        let p = placement(fault, &s, node).ok()?;
        Some(Action::run(&["tc", "-s", "class", "show", "dev", &p.tree_dev, "classid", FAULT_CLASS]))
    }
}

/// An htb class's counters, from `tc -s class show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassStats {
    pub bytes: u64,
    pub packets: u64,
    pub dropped: u64,
    /// Times the class was over its rate and had to hold a packet back.
    pub overlimits: u64,
}

/// Parses ` Sent 123 bytes 4 pkt (dropped 0, overlimits 5 requeues 0)`.
pub fn parse_class_stats(shown: &str) -> Option<ClassStats> {
    let line = shown.lines().map(str::trim).find(|l| l.starts_with("Sent "))?;
    let words: Vec<&str> = line.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',').filter(|w| !w.is_empty()).collect();
    let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).and_then(|v| v.parse::<u64>().ok());
    Some(ClassStats { bytes: after("Sent")?, packets: after("bytes")?, dropped: after("dropped")?, overlimits: after("overlimits")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(v: serde_json::Value) -> Fault {
        let mut f = serde_json::json!({ "name": "db-slow", "at": "1s", "duration": "5s" });
        f.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        serde_json::from_value(f).unwrap()
    }

    fn node() -> Node {
        Node { route_dev: Box::new(|a| if a.octets()[0] == 198 { Ok("veth9".into()) } else { Err("unreachable".into()) }), agent_exe: "/bin/false".into() }
    }

    fn argv(actions: &[Action]) -> Vec<String> {
        actions.iter().map(Action::display).collect()
    }

    #[test]
    fn netem_options_follow_the_grammar() {
        use serde_json::json;
        let golden = [
            (json!({"delay": "200ms"}), "delay 200ms"),
            (json!({"delay": "200ms", "jitter": "20ms"}), "delay 200ms 20ms"),
            (json!({"delay": "200ms", "jitter": "20ms", "correlation": "25%"}), "delay 200ms 20ms 25%"),
            (json!({"delay": "200ms", "jitter": "20ms", "distribution": "normal"}), "delay 200ms 20ms distribution normal"),
            (json!({"delay": "1s", "jitter": "1ms", "correlation": "5%", "distribution": "pareto"}), "delay 1000ms 1ms 5% distribution pareto"),
            (json!({"delay": "10ms", "jitter": "2ms", "distribution": "paretonormal"}), "delay 10ms 2ms distribution paretonormal"),
            // netem's default; tc has no uniform.dist table and refuses the word.
            (json!({"delay": "10ms", "jitter": "2ms", "distribution": "uniform"}), "delay 10ms 2ms"),
            (json!({"loss": "1%"}), "loss random 1%"),
            (json!({"duplicate": "0.1%"}), "duplicate 0.1%"),
            (json!({"corrupt": "0.1%"}), "corrupt 0.1%"),
            (json!({"delay": "10ms", "reorder": "25%"}), "delay 10ms reorder 25%"),
            (json!({"rate": "1mbit"}), "rate 1mbit"),
            (
                json!({"delay": "200ms", "jitter": "20ms", "correlation": "25%", "distribution": "normal", "loss": "1%",
                       "duplicate": "0.1%", "corrupt": "0.05%", "reorder": "5%", "rate": "10mbit"}),
                "delay 200ms 20ms 25% distribution normal loss random 1% corrupt 0.05% duplicate 0.1% reorder 5% rate 10mbit",
            ),
        ];
        for (input, want) in golden {
            assert_eq!(netem_args(&serde_json::from_value(input.clone()).unwrap()).join(" "), want, "{input}");
        }
    }

    #[test]
    fn times_and_percents_have_no_noise() {
        let ms = |us: u64| tc_time(Duration::from_micros(us));
        assert_eq!([ms(200_000), ms(1_500), ms(500), ms(1_001), ms(2_000_000), ms(0)], ["200ms", "1.5ms", "500us", "1.001ms", "2000ms", "0ms"]);
        let pc = |s: &str| tc_percent(s.parse().unwrap());
        assert_eq!([pc("0.1%"), pc("1%"), pc("0.05%"), pc("33.333333%"), pc("100%"), pc("0.0001%")], ["0.1%", "1%", "0.05%", "33.3333%", "100%", "0.0001%"]);
        assert_eq!(tc_percent(Percent::from_ratio(0.07)), "7%"); // 0.07 * 100 = 7.000000000000001
    }

    #[test]
    fn correlation_and_distribution_need_jitter() {
        for v in [serde_json::json!({"delay": "1ms", "correlation": "5%"}), serde_json::json!({"delay": "1ms", "distribution": "normal"})] {
            assert!(check_netem(&serde_json::from_value(v).unwrap()).unwrap_err().contains("jitter"));
        }
        let f = fault(serde_json::json!({"kind": "netem", "scope": {"dst": "198.18.0.2"}, "netem": {"delay": "1ms", "correlation": "5%"}}));
        assert!(matches!(NetemDriver.actions(&f, &node()), Err(FaultError::Plan { .. })));
    }

    #[test]
    fn scoped_netem_with_port_exactly() {
        let f = fault(serde_json::json!({"kind": "netem", "scope": {"dst": "198.18.0.2/32", "port": 5432, "dev": "eth0"},
                                          "netem": {"delay": "200ms", "jitter": "20ms", "loss": "1%"}}));
        let a = NetemDriver.actions(&f, &node()).unwrap();
        assert_eq!(argv(&a.apply), [
            "tc qdisc add dev eth0 root handle 5ea7: prio bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1",
            "tc qdisc add dev eth0 parent 5ea7:4 handle 5ea8: netem delay 200ms 20ms loss random 1%",
            "tc filter add dev eth0 parent 5ea7: protocol ip prio 1 u32 match ip dst 198.18.0.2/32 match ip dport 5432 0xffff flowid 5ea7:4",
        ]);
        assert_eq!(a.revert, [Action::run_ok_if(&["tc", "qdisc", "del", "dev", "eth0", "root", "handle", "5ea7:"], &TREE_GONE)]);
        assert_eq!(NetemDriver.requires(&f), ["tc", "qdisc.prio", "qdisc.netem", "net_admin"]);
    }

    #[test]
    fn scoped_netem_without_port_on_the_route_device() {
        // Host bits of the CIDR are cleared; `auto` asks the node for the route's device.
        let f = fault(serde_json::json!({"kind": "netem", "scope": {"dst": "198.18.0.7/24"}, "netem": {"duplicate": "1%"}}));
        let a = NetemDriver.actions(&f, &node()).unwrap();
        assert_eq!(argv(&a.apply), [
            "tc qdisc add dev veth9 root handle 5ea7: prio bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1",
            "tc qdisc add dev veth9 parent 5ea7:4 handle 5ea8: netem duplicate 1%",
            "tc filter add dev veth9 parent 5ea7: protocol ip prio 1 u32 match ip dst 198.18.0.0/24 flowid 5ea7:4",
        ]);
        assert_eq!(argv(&a.revert), ["tc qdisc del dev veth9 root handle 5ea7:"]);
        assert_eq!(NetemDriver.requires(&f), ["tc", "qdisc.prio", "qdisc.netem", "net_admin", "ip"]);
        let unroutable = fault(serde_json::json!({"kind": "netem", "scope": {"dst": "10.0.0.1"}, "netem": {"loss": "1%"}}));
        let err = NetemDriver.actions(&unroutable, &node()).unwrap_err().to_string();
        assert_eq!(err, "fault `db-slow`: no device for `10.0.0.1/32`: unreachable");
    }

    #[test]
    fn rate_cap_exactly() {
        let f = fault(serde_json::json!({"kind": "rate", "scope": {"dst": "198.18.0.1", "port": 80, "dev": "v1"}, "rate": "2mbit"}));
        let a = RateDriver.actions(&f, &node()).unwrap();
        assert_eq!(argv(&a.apply), [
            "tc qdisc add dev v1 root handle 5ea7: htb direct_qlen 1000",
            "tc class add dev v1 parent 5ea7: classid 5ea7:4 htb rate 2mbit ceil 2mbit burst 3200 cburst 3200",
            "tc filter add dev v1 parent 5ea7: protocol ip prio 1 u32 match ip dst 198.18.0.1/32 match ip dport 80 0xffff flowid 5ea7:4",
        ]);
        assert_eq!(argv(&a.revert), ["tc qdisc del dev v1 root handle 5ea7:"]);
        assert_eq!(RateDriver.requires(&f), ["tc", "qdisc.htb", "net_admin"]);
        assert_eq!(tc_rate_bits("2mbps").unwrap(), 16e6);
        assert_eq!(burst_bytes(tc_rate_bits("1gbit").unwrap()), 1_250_000);
    }

    #[test]
    fn ingress_goes_through_the_faults_own_ifb() {
        let f = fault(serde_json::json!({"name": "slow-download", "kind": "rate", "scope": {"dst": "198.18.0.2", "port": 8080, "direction": "ingress"}, "rate": "2mbit"}));
        let ifb = ifb_name("slow-download");
        assert!(ifb.starts_with("stpifb") && ifb.len() == 14, "{ifb}");
        assert_ne!(ifb, ifb_name("slow-download2"));
        let a = RateDriver.actions(&f, &node()).unwrap();
        assert_eq!(argv(&a.apply), [
            format!("ip link add {ifb} type ifb"),
            format!("ip link set dev {ifb} up"),
            "tc qdisc add dev veth9 handle ffff: ingress".to_string(),
            format!("tc filter add dev veth9 parent ffff: protocol ip prio 1 u32 match ip src 198.18.0.2/32 match ip sport 8080 0xffff action mirred egress redirect dev {ifb}"),
            format!("tc qdisc add dev {ifb} root handle 5ea7: htb direct_qlen 1000"),
            format!("tc class add dev {ifb} parent 5ea7: classid 5ea7:4 htb rate 2mbit ceil 2mbit burst 3200 cburst 3200"),
            format!("tc filter add dev {ifb} parent 5ea7: protocol ip prio 1 u32 match ip src 198.18.0.2/32 match ip sport 8080 0xffff flowid 5ea7:4"),
        ]);
        // The redirect goes before the device it points to.
        assert_eq!(argv(&a.revert), ["tc qdisc del dev veth9 handle ffff: ingress".to_string(), format!("ip link del {ifb}")]);
        assert_eq!(RateDriver.requires(&f), ["tc", "qdisc.htb", "net_admin", "ip", "link.ifb", "qdisc.ingress", "tc.mirred"]);
        assert_eq!(RateDriver.observe(&f, &node()).map(|o| o.display()), Some(format!("tc -s class show dev {ifb} classid 5ea7:4")));

        let n = fault(serde_json::json!({"name": "lag", "kind": "netem", "scope": {"dst": "198.18.0.0/24", "dev": "v1", "direction": "ingress"}, "netem": {"delay": "50ms"}}));
        let a = NetemDriver.actions(&n, &node()).unwrap();
        let ifb = ifb_name("lag");
        assert_eq!(argv(&a.apply)[3], format!("tc filter add dev v1 parent ffff: protocol ip prio 1 u32 match ip src 198.18.0.0/24 action mirred egress redirect dev {ifb}"));
        assert_eq!(argv(&a.apply)[5], format!("tc qdisc add dev {ifb} parent 5ea7:4 handle 5ea8: netem delay 50ms"));
    }

    #[test]
    fn an_ingress_fault_refuses_a_device_whose_ingress_qdisc_is_someone_elses() {
        let dir = tempfile::tempdir().unwrap();
        let tc = dir.path().join("tc");
        std::fs::write(&tc, "#!/bin/sh\necho 'qdisc ingress ffff: dev veth9 parent ffff:fff1 ----------------'\n").unwrap();
        std::fs::set_permissions(&tc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let mut runner = Runner::default();
        runner.path_prefix = Some(dir.path().to_path_buf());
        let f = fault(serde_json::json!({"kind": "rate", "scope": {"dst": "198.18.0.2", "direction": "ingress"}, "rate": "2mbit"}));
        let err = RateDriver.check(&f, &node(), &runner).unwrap_err();
        assert!(err.contains("veth9 already has an ingress qdisc"), "{err}");
        // Egress faults do not look at ingress at all.
        let egress = fault(serde_json::json!({"kind": "rate", "scope": {"dst": "198.18.0.2"}, "rate": "2mbit"}));
        assert_eq!(RateDriver.check(&egress, &node(), &runner), Ok(()));
    }

    #[test]
    fn route_output_parses() {
        let dev = parse_route_dev;
        assert_eq!(dev("198.18.0.2 dev veth0 src 198.18.0.1 uid 0 \\    cache ").unwrap(), "veth0");
        assert_eq!(dev("8.8.8.8 via 10.0.0.1 dev eth0 src 10.0.0.5 uid 0 \\    cache ").unwrap(), "eth0");
        assert_eq!(dev("local 127.0.0.1 dev lo table local src 127.0.0.1 uid 0 \\    cache <local> ").unwrap(), "lo");
        assert!(dev("RTNETLINK answers: Network is unreachable").is_err());
        assert!(dev("1.2.3.4 dev").is_err());
    }
}
