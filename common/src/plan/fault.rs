//! Faults in a plan: what to break, where, when and for how long.
//!
//! ```yaml
//! faults:
//!   - name: db-slow
//!     kind: netem
//!     at: 30s                  # offset from the run's start
//!     duration: 20s            # the fault is reverted at the window's end
//!     agents: { zone: a }      # label selector; default: every agent of the run
//!     scope: { dst: 198.18.0.2/32, port: 5432, dev: auto }
//!     netem: { delay: 200ms, jitter: 20ms, loss: 1% }
//! ```
//!
//! The model is flat — one optional block per kind — so a misplaced block is
//! an error naming the field, as everywhere else in a plan.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Plan;
use crate::units::{Dur, Percent};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub name: String,
    pub kind: FaultKind,
    pub at: Dur,
    pub duration: Dur,
    /// Label selector: the fault runs on every agent of the run whose labels
    /// include all of these. Empty: every agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<NetScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netem: Option<Netem>,
    /// `rate`: the bandwidth cap in tc's syntax (`1mbit`, `500kbit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// `loss`: share of the scoped packets dropped, both directions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Instance>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPressure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryPressure>,
    /// Run the plan's steady state just before applying: when it does not
    /// hold, `skip` leaves this fault out, `abort` stops the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless_unhealthy: Option<super::UnlessUnhealthy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Delay, jitter, loss, duplication, corruption, reordering (tc netem).
    Netem,
    /// Bandwidth cap on traffic to the scope (tc htb class with a u32 filter).
    Rate,
    /// Drop everything to and from the scope (nftables).
    Partition,
    /// Drop a share of the scoped packets (nftables numgen).
    Loss,
    /// Stop an instance for the window, start it again after.
    Stop,
    /// Freeze an instance for the window, thaw it after.
    Pause,
    /// Restart an instance at `at` (the window is how long recovery is watched).
    Restart,
    /// Burn CPU on the agent's node.
    Cpu,
    /// Hold memory on the agent's node.
    Memory,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Netem => "netem",
            FaultKind::Rate => "rate",
            FaultKind::Partition => "partition",
            FaultKind::Loss => "loss",
            FaultKind::Stop => "stop",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::Cpu => "cpu",
            FaultKind::Memory => "memory",
        }
    }

    pub fn is_network(self) -> bool {
        matches!(self, FaultKind::Netem | FaultKind::Rate | FaultKind::Partition | FaultKind::Loss)
    }

    pub fn is_instance(self) -> bool {
        matches!(self, FaultKind::Stop | FaultKind::Pause | FaultKind::Restart)
    }
}

/// Which traffic a network fault touches: only packets to (and, for
/// partitions, from) `dst`, optionally only one TCP/UDP port. Everything else,
/// above all the agent's control channel, is left alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetScope {
    /// IPv4 address or CIDR block: `198.18.0.2` or `198.18.0.0/24`.
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Network device; `auto` (the default) is the device of the route to `dst`.
    #[serde(default = "auto_dev")]
    pub dev: String,
    /// `netem` and `rate` only: `egress` (the default) shapes what this node
    /// sends to `dst`; `ingress` shapes what it receives from `dst` (`port`
    /// is then the source port), e.g. a download cap on the load agent.
    #[serde(default, skip_serializing_if = "Direction::is_egress")]
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Egress,
    Ingress,
}

impl Direction {
    pub fn is_egress(&self) -> bool {
        *self == Direction::Egress
    }
}

fn auto_dev() -> String {
    "auto".to_string()
}

impl NetScope {
    /// The destination as (network address, prefix length).
    pub fn cidr(&self) -> Result<(Ipv4Addr, u8), String> {
        let (addr, len) = match self.dst.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| format!("`{}`: bad prefix length", self.dst))?),
            None => (self.dst.as_str(), 32),
        };
        let ip: Ipv4Addr = addr.parse().map_err(|_| format!("`{}` is not an IPv4 address or CIDR block", self.dst))?;
        if len > 32 {
            return Err(format!("`{}`: prefix length must be 0–32", self.dst));
        }
        if len == 0 {
            return Err(format!("`{}` would match every address, the control channel included", self.dst));
        }
        Ok((ip, len))
    }
}

/// tc-netem(8) options. Percentages are written `1%`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Netem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Dur>,
    /// Delay correlation with the previous packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<Percent>,
    /// Jitter distribution: uniform (tc's default), normal, pareto, paretonormal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt: Option<Percent>,
    /// Share of packets sent at once while the rest are delayed (needs `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder: Option<Percent>,
    /// netem's own rate limit, tc syntax (`1mbit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Normal,
    Pareto,
    Paretonormal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub driver: InstanceDriver,
    /// Container, unit or process name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `process` driver: the process id (instead of a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `process` driver: a file holding the process id (a daemon's pid
    /// file), read when the fault is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<String>,
    /// Stop without a graceful shutdown (`incus stop --force`, SIGKILL).
    #[serde(default)]
    pub force: bool,
    /// `process` driver: the command that starts the process again after a stop
    /// or restart (a process that was killed cannot be resumed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceDriver {
    Process,
    Systemd,
    Docker,
    Incus,
}

impl InstanceDriver {
    pub fn name(self) -> &'static str {
        match self {
            InstanceDriver::Process => "process",
            InstanceDriver::Systemd => "systemd",
            InstanceDriver::Docker => "docker",
            InstanceDriver::Incus => "incus",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuPressure {
    pub workers: u32,
    /// Busy share of each worker's time.
    #[serde(default = "full_load")]
    pub load: Percent,
}

fn full_load() -> Percent {
    Percent::from_ratio(1.0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryPressure {
    /// `512MiB`, `1GiB`, `200MB`.
    pub size: String,
}

impl MemoryPressure {
    pub fn bytes(&self) -> Result<u64, String> {
        parse_size(&self.size)
    }
}

/// `1GiB`, `512MiB`, `200MB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size: write e.g. `512MiB` or `1GiB`"))?;
    let mult: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("`{s}`: unknown size unit; use B, KB, MB, GB, KiB, MiB or GiB")),
    };
    Ok((n * mult) as u64)
}

/// tc's rate syntax: a number and a unit (`bit`, `kbit`, `mbit`, `gbit`, `bps`, `kbps`, `mbps`).
pub fn check_tc_rate(s: &str) -> Result<(), String> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let ok_num = num.parse::<f64>().is_ok_and(|n| n > 0.0);
    let ok_unit = matches!(unit, "bit" | "kbit" | "mbit" | "gbit" | "tbit" | "bps" | "kbps" | "mbps" | "gbps" | "tbps");
    if ok_num && ok_unit {
        Ok(())
    } else {
        Err(format!("`{s}` is not a tc rate: write e.g. `1mbit`, `500kbit` or `2mbps`"))
    }
}

/// Checks every fault; `Err((field path, message))` for the first problem.
pub fn validate_faults(plan: &Plan) -> Result<(), (String, String)> {
    let mut names = std::collections::HashSet::new();
    let run = plan.duration();
    for (i, f) in plan.faults.iter().enumerate() {
        let at = |(field, msg): Problem| (format!("faults[{i}].{field}"), msg);
        if f.name.trim().is_empty() || !f.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(at(("name", "must be letters, digits, `-` or `_` (it names the fault's rules on the node)".into())));
        }
        if !names.insert(f.name.as_str()) {
            return Err(at(("name", format!("fault `{}` is defined twice", f.name))));
        }
        check_fault(f, run).map_err(at)?;
    }
    Ok(())
}

/// A problem in one fault: the field's path within it, and the message.
type Problem = (&'static str, String);

/// One fault's window and blocks, in the order a reader fixes them: when,
/// which blocks, then what each block says.
fn check_fault(f: &Fault, run: std::time::Duration) -> Result<(), Problem> {
    check_window(f, run)?;
    check_blocks(f)?;
    if let Some(scope) = &f.scope {
        check_scope(f.kind, scope)?;
    }
    if let Some(n) = &f.netem {
        check_netem(n)?;
    }
    if let Some(r) = &f.rate {
        check_tc_rate(r).map_err(|m| ("rate", m))?;
    }
    if let Some(inst) = &f.instance {
        check_instance(f.kind, inst)?;
    }
    if let Some(c) = &f.cpu {
        if c.workers == 0 || c.workers > 1024 {
            return Err(("cpu.workers", "must be 1–1024".into()));
        }
        if c.load.ratio() <= 0.0 {
            return Err(("cpu.load", "must be more than 0%".into()));
        }
    }
    if let Some(m) = &f.memory {
        let bytes = m.bytes().map_err(|e| ("memory.size", e))?;
        if bytes == 0 {
            return Err(("memory.size", "must be more than 0".into()));
        }
    }
    Ok(())
}

/// The window lasts, and starts and ends within the run.
fn check_window(f: &Fault, run: std::time::Duration) -> Result<(), Problem> {
    if f.duration.as_duration().is_zero() {
        return Err(("duration", "must be more than 0s".into()));
    }
    if f.at.as_duration() >= run {
        return Err(("at", format!("starts at {} but the run lasts only {}", f.at, Dur(run))));
    }
    // Issue 8 item 6: a fault never outlives the run that asked for it
    // (a 100-day partition was accepted). Chaos Mesh ends an experiment
    // with its duration; here the run's planned end bounds every window.
    let end = f.at.as_duration().saturating_add(f.duration.as_duration());
    if end > run {
        return Err(("duration", format!("the window ends at {} (at {} + {}), after the run's planned end at {}", Dur(end), f.at, f.duration, Dur(run))));
    }
    Ok(())
}

/// Each kind takes exactly its own block.
fn check_blocks(f: &Fault) -> Result<(), Problem> {
    let blocks = [
        ("netem", f.netem.is_some(), f.kind == FaultKind::Netem),
        ("rate", f.rate.is_some(), f.kind == FaultKind::Rate),
        ("loss", f.loss.is_some(), f.kind == FaultKind::Loss),
        ("instance", f.instance.is_some(), f.kind.is_instance()),
        ("cpu", f.cpu.is_some(), f.kind == FaultKind::Cpu),
        ("memory", f.memory.is_some(), f.kind == FaultKind::Memory),
        ("scope", f.scope.is_some(), f.kind.is_network()),
    ];
    for (block, present, wanted) in blocks {
        if present && !wanted {
            return Err((block, format!("does not apply to a `{}` fault", f.kind.name())));
        }
        if !present && wanted {
            return Err((block, format!("a `{}` fault needs `{block}`", f.kind.name())));
        }
    }
    Ok(())
}

/// A network fault's scope: a destination, a port, a device, a direction its kind supports.
fn check_scope(kind: FaultKind, scope: &NetScope) -> Result<(), Problem> {
    scope.cidr().map_err(|m| ("scope.dst", m))?;
    if scope.port == Some(0) {
        return Err(("scope.port", "must be 1–65535".into()));
    }
    if scope.dev.is_empty() || scope.dev.contains(char::is_whitespace) {
        return Err(("scope.dev", "must be a device name or `auto`".into()));
    }
    if scope.direction == Direction::Ingress && !matches!(kind, FaultKind::Netem | FaultKind::Rate) {
        return Err(("scope.direction", format!("`ingress` is for netem and rate faults; a `{}` fault covers both directions", kind.name())));
    }
    Ok(())
}

/// A netem block sets something, and what it sets is what tc-netem takes.
fn check_netem(n: &Netem) -> Result<(), Problem> {
    if n.delay.is_none() && n.loss.is_none() && n.duplicate.is_none() && n.corrupt.is_none() && n.rate.is_none() {
        return Err(("netem", "sets nothing: give at least one of delay, loss, duplicate, corrupt, rate".into()));
    }
    if (n.jitter.is_some() || n.correlation.is_some() || n.distribution.is_some()) && n.delay.is_none() {
        return Err(("netem.delay", "jitter, correlation and distribution need a `delay`".into()));
    }
    if n.reorder.is_some() && n.delay.is_none() {
        return Err(("netem.reorder", "reordering needs a `delay` (tc-netem sends the rest delayed)".into()));
    }
    if let Some(r) = &n.rate {
        check_tc_rate(r).map_err(|m| ("netem.rate", m))?;
    }
    Ok(())
}

/// An instance names exactly what its driver needs to find it (and, for a
/// stopped process, how to start it again).
fn check_instance(kind: FaultKind, inst: &Instance) -> Result<(), Problem> {
    match inst.driver {
        InstanceDriver::Process => {
            if [inst.name.is_some(), inst.pid.is_some(), inst.pid_file.is_some()].iter().filter(|set| **set).count() != 1 {
                return Err(("instance", "the process driver takes exactly one of `name`, `pid` or `pid_file`".into()));
            }
            if matches!(kind, FaultKind::Stop | FaultKind::Restart) && inst.start.is_empty() {
                return Err(("instance.start", "a stopped process cannot be resumed: give the command that starts it again".into()));
            }
        }
        _ => {
            if inst.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
                return Err(("instance.name", format!("the {} driver needs the instance's `name`", inst.driver.name())));
            }
            if inst.pid.is_some() || inst.pid_file.is_some() || !inst.start.is_empty() {
                return Err(("instance", format!("`pid`, `pid_file` and `start` belong to the process driver, not {}", inst.driver.name())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("200MB").unwrap(), 200_000_000);
        assert!(parse_size("lots").is_err());
        assert!(check_tc_rate("1mbit").is_ok());
        assert!(check_tc_rate("1 mbit").is_err());
        assert!(check_tc_rate("fast").is_err());
    }

    #[test]
    fn scopes_parse_and_refuse_everything() {
        let s = |d: &str| NetScope { dst: d.into(), port: None, dev: "auto".into(), direction: Direction::Egress };
        assert_eq!(s("198.18.0.2").cidr().unwrap(), (Ipv4Addr::new(198, 18, 0, 2), 32));
        assert_eq!(s("198.18.0.0/15").cidr().unwrap().1, 15);
        assert!(s("0.0.0.0/0").cidr().is_err());
        assert!(s("example.com").cidr().is_err());
    }

    /// Every refusal of `validate_faults`, by field path and message: pins
    /// the checks' order and wording (they were split into one function per
    /// block; a plan author reads these).
    #[test]
    fn each_fault_refusal_names_its_field() {
        const NET: &str = "scope: { dst: 198.18.0.2 }";
        let cases: &[(&str, &str, &str)] = &[
            ("{ name: 'a b', kind: cpu, at: 1s, duration: 1s, cpu: { workers: 1 } }", "faults[0].name", "must be letters, digits"),
            ("{ name: '', kind: cpu, at: 1s, duration: 1s, cpu: { workers: 1 } }", "faults[0].name", "must be letters, digits"),
            ("{ name: a, kind: cpu, at: 1s, duration: 1s, cpu: { workers: 1 } }\n  - { name: a, kind: cpu, at: 2s, duration: 1s, cpu: { workers: 1 } }", "faults[1].name", "fault `a` is defined twice"),
            ("{ name: a, kind: cpu, at: 1s, duration: 0s, cpu: { workers: 1 } }", "faults[0].duration", "must be more than 0s"),
            ("{ name: a, kind: cpu, at: 10s, duration: 1s, cpu: { workers: 1 } }", "faults[0].at", "starts at 10s but the run lasts only 10s"),
            ("{ name: a, kind: cpu, at: 5s, duration: 6s, cpu: { workers: 1 } }", "faults[0].duration", "the window ends at 11s (at 5s + 6s), after the run's planned end at 10s"),
            ("{ name: a, kind: cpu, at: 1s, duration: 1s, cpu: { workers: 1 }, netem: { delay: 1ms } }", "faults[0].netem", "does not apply to a `cpu` fault"),
            ("{ name: a, kind: netem, at: 1s, duration: 1s }", "faults[0].netem", "a `netem` fault needs `netem`"),
            ("{ name: a, kind: partition, at: 1s, duration: 1s }", "faults[0].scope", "a `partition` fault needs `scope`"),
            ("{ name: a, kind: partition, at: 1s, duration: 1s, scope: { dst: 0.0.0.0/0 } }", "faults[0].scope.dst", ""),
            ("{ name: a, kind: partition, at: 1s, duration: 1s, scope: { dst: 198.18.0.2, port: 0 } }", "faults[0].scope.port", "must be 1–65535"),
            ("{ name: a, kind: partition, at: 1s, duration: 1s, scope: { dst: 198.18.0.2, dev: 'e th0' } }", "faults[0].scope.dev", "must be a device name or `auto`"),
            ("{ name: a, kind: loss, at: 1s, duration: 1s, loss: 5%, scope: { dst: 198.18.0.2, direction: ingress } }", "faults[0].scope.direction", "`ingress` is for netem and rate faults; a `loss` fault covers both directions"),
            ("{ name: a, kind: netem, at: 1s, duration: 1s, netem: {}, NET }", "faults[0].netem", "sets nothing"),
            ("{ name: a, kind: netem, at: 1s, duration: 1s, netem: { loss: 1%, jitter: 1ms }, NET }", "faults[0].netem.delay", "jitter, correlation and distribution need a `delay`"),
            ("{ name: a, kind: netem, at: 1s, duration: 1s, netem: { loss: 1%, reorder: 1% }, NET }", "faults[0].netem.reorder", "reordering needs a `delay`"),
            ("{ name: a, kind: netem, at: 1s, duration: 1s, netem: { rate: fast }, NET }", "faults[0].netem.rate", "`fast` is not a tc rate"),
            ("{ name: a, kind: rate, at: 1s, duration: 1s, rate: fast, NET }", "faults[0].rate", "`fast` is not a tc rate"),
            ("{ name: a, kind: pause, at: 1s, duration: 1s, instance: { driver: process, name: x, pid: 1 } }", "faults[0].instance", "the process driver takes exactly one of `name`, `pid` or `pid_file`"),
            ("{ name: a, kind: stop, at: 1s, duration: 1s, instance: { driver: process, name: x } }", "faults[0].instance.start", "a stopped process cannot be resumed"),
            ("{ name: a, kind: pause, at: 1s, duration: 1s, instance: { driver: docker } }", "faults[0].instance.name", "the docker driver needs the instance's `name`"),
            ("{ name: a, kind: pause, at: 1s, duration: 1s, instance: { driver: docker, name: x, pid: 1 } }", "faults[0].instance", "`pid`, `pid_file` and `start` belong to the process driver, not docker"),
            ("{ name: a, kind: cpu, at: 1s, duration: 1s, cpu: { workers: 0 } }", "faults[0].cpu.workers", "must be 1–1024"),
            ("{ name: a, kind: cpu, at: 1s, duration: 1s, cpu: { workers: 1, load: 0% } }", "faults[0].cpu.load", "must be more than 0%"),
            ("{ name: a, kind: memory, at: 1s, duration: 1s, memory: { size: 0MB } }", "faults[0].memory.size", "must be more than 0"),
            ("{ name: a, kind: memory, at: 1s, duration: 1s, memory: { size: lots } }", "faults[0].memory.size", ""),
        ];
        for (fault, path, message) in cases {
            let text = format!(
                "name: f\ntarget: http://127.0.0.1:1\nphases:\n  - {{ name: p, duration: 10s, load: {{ model: open, rate: 1/s }} }}\nsteps: [{{ name: s }}]\nfaults:\n  - {}\n",
                fault.replace("NET", NET)
            );
            let err = match crate::plan::load_str(&text, crate::plan::Format::Yaml, std::path::Path::new("p.yaml")) {
                Ok(_) => panic!("accepted: {fault}"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(&format!(" {path}: {message}")), "{fault}\n  wanted {path}: {message}\n  got {err}");
        }
        let ok = "{ name: a, kind: netem, at: 1s, duration: 1s, netem: { delay: 5ms, jitter: 1ms }, scope: { dst: 198.18.0.2, port: 80 } }";
        let text = format!("name: f\ntarget: http://127.0.0.1:1\nphases:\n  - {{ name: p, duration: 10s, load: {{ model: open, rate: 1/s }} }}\nsteps: [{{ name: s }}]\nfaults:\n  - {ok}\n");
        crate::plan::load_str(&text, crate::plan::Format::Yaml, std::path::Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"));
    }
}
