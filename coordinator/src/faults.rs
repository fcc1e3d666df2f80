//! Fault preflight on the coordinator: which agents apply which fault, and
//! whether they can — decided before any load starts, so a plan never fails
//! at minute 7 for a missing `tc`.

use std::collections::{BTreeMap, HashSet};

use stampede_common::plan::{FaultKind, Plan};
use stampede_proto::v1::{FaultEvent, FaultStatus, RecoveredFault};

use crate::fleet::AgentEntry;

/// Everything wrong with a plan's faults on this run's agents, all at once:
/// an operator fixing a plan should not discover problems one run at a time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct PreflightError(pub Vec<Problem>);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("fault `{fault}`: its selector {selector} matches none of this run's agents")]
    NoAgent { fault: String, selector: String },
    #[error("fault `{fault}` cannot run on agent {agent}: it needs {}, which that node lacks", .missing.join(", "))]
    Missing {
        fault: String,
        agent: String,
        missing: Vec<String>,
        /// The same in an operator's words (`no netem in this kernel`), for the dry run.
        plain: Vec<String>,
    },
    #[error("faults `{first}` and `{second}` both shape traffic with tc on node {node} at overlapping times ({first_window} and {second_window}); stampede keeps one tc tree per device and direction, so schedule them one after the other, at least 2s apart")]
    TcOverlap { first: String, second: String, node: String, first_window: String, second_window: String },
    #[error("agent {agent} cannot simulate faults (it does not register the `simulate_faults` capability: an older agent would apply them for real); upgrade it or leave it out of the run")]
    CannotSimulate { agent: String },
}

fn selector_text(sel: &BTreeMap<String, String>) -> String {
    let parts: Vec<_> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// Who would apply what, and everything that stands in the way.
#[derive(Debug)]
pub struct Preflight {
    /// For each agent (by index), the plan's fault indices it is chosen
    /// for, whether or not it can do them: the dry run lists what each
    /// would run, the simulated run announces each there.
    pub per_agent: Vec<Vec<u32>>,
    pub problems: Vec<Problem>,
}

/// The capability an agent registers when it knows `simulate_faults` on its
/// Assignment: an older agent would drop that field and apply the faults.
pub use stampede_agent::session::SIMULATE_CAPABILITY;

impl Preflight {
    /// A real run: every problem refuses it.
    pub fn for_run(&self) -> Result<Vec<Vec<u32>>, PreflightError> {
        if self.problems.is_empty() {
            Ok(self.per_agent.clone())
        } else {
            Err(PreflightError(self.problems.clone()))
        }
    }

    /// A run with simulated faults touches nothing, so what a node lacks is
    /// no obstacle; a fault that no agent would announce still is (its
    /// window would judge nothing), and so is an agent too old to simulate.
    pub fn for_simulation(&self, agents: &[AgentEntry]) -> Result<Vec<Vec<u32>>, PreflightError> {
        let mut problems: Vec<Problem> = self.problems.iter().filter(|p| matches!(p, Problem::NoAgent { .. })).cloned().collect();
        for (i, faults) in self.per_agent.iter().enumerate() {
            let a = &agents[i];
            if !faults.is_empty() && !a.capabilities.iter().any(|c| c.name == SIMULATE_CAPABILITY && c.available) {
                problems.push(Problem::CannotSimulate { agent: a.id.clone() });
            }
        }
        if problems.is_empty() {
            Ok(self.per_agent.clone())
        } else {
            Err(PreflightError(problems))
        }
    }

    /// Why `agent` (on `node`) would be refused `fault`, in plain words;
    /// empty when it would run.
    pub fn findings(&self, agent: &str, node: &str, fault: &str) -> Vec<String> {
        self.problems
            .iter()
            .filter_map(|p| match p {
                Problem::Missing { fault: f, agent: a, plain, .. } if f == fault && a == agent => Some(plain.join("; ")),
                Problem::TcOverlap { first, second, node: n, .. } if n == node && (first == fault || second == fault) => Some(p.to_string()),
                _ => None,
            })
            .collect()
    }

    /// The problems that belong to no agent: a selector that matches none.
    pub fn unplaced(&self) -> Vec<String> {
        self.problems.iter().filter(|p| matches!(p, Problem::NoAgent { .. })).map(ToString::to_string).collect()
    }
}

/// A missing capability as an operator says it (`no netem in this
/// kernel`), with what the agent's probe found.
fn plain(capability: &str, detail: &str) -> String {
    let why = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
    match capability {
        "net_admin" => format!("no CAP_NET_ADMIN{why}"),
        "link.ifb" => format!("no ifb devices in this kernel{why}"),
        "tc.mirred" => format!("no tc mirred action in this kernel{why}"),
        // The probe could not try it (no `tc`, no NET_ADMIN): the kernel may have it.
        c if c.starts_with("qdisc.") && detail.starts_with("cannot probe") => format!("cannot tell whether this kernel has {}{why}", &c["qdisc.".len()..]),
        c if c.starts_with("qdisc.") => format!("no {} in this kernel{why}", &c["qdisc.".len()..]),
        c if detail.is_empty() => format!("`{c}` was not reported by this agent"),
        c => format!("no `{c}` on this node{why}"),
    }
}

/// For each agent (by index), the plan's fault indices it applies. A fault
/// runs once per node: on the first selected agent of each node, so three
/// agents on one host do not stack three copies of the same rule.
pub fn assign(plan: &Plan, agents: &[AgentEntry]) -> Result<Vec<Vec<u32>>, PreflightError> {
    preflight(plan, agents).for_run()
}

/// [`assign`] without refusing: every fault placed on the agents its
/// selector picks (one per node), and every problem found.
pub fn preflight(plan: &Plan, agents: &[AgentEntry]) -> Preflight {
    let mut per_agent = vec![Vec::new(); agents.len()];
    let mut problems = Vec::new();
    for (fi, fault) in plan.faults.iter().enumerate() {
        let mut nodes = HashSet::new();
        let chosen: Vec<usize> = agents
            .iter()
            .enumerate()
            .filter(|(_, a)| fault.agents.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .filter(|(_, a)| nodes.insert(a.node.clone()))
            .map(|(i, _)| i)
            .collect();
        if chosen.is_empty() {
            problems.push(Problem::NoAgent { fault: fault.name.clone(), selector: selector_text(&fault.agents) });
            continue;
        }
        let needs = stampede_agent::fault::driver_for(fault.kind).requires(fault);
        for &ai in &chosen {
            let agent = &agents[ai];
            let lacks: Vec<(&String, String)> = needs
                .iter()
                .filter_map(|capability| {
                    let found = agent.capabilities.iter().find(|c| &c.name == capability);
                    (!found.is_some_and(|c| c.available)).then(|| (capability, found.map(|c| c.detail.clone()).unwrap_or_default()))
                })
                .collect();
            per_agent[ai].push(fi as u32);
            if !lacks.is_empty() {
                let missing = lacks.iter().map(|(c, d)| if d.is_empty() { format!("`{c}`") } else { format!("`{c}` ({d})") }).collect();
                let plain = lacks.iter().map(|(c, d)| plain(c, d)).collect();
                problems.push(Problem::Missing { fault: fault.name.clone(), agent: agent.id.clone(), missing, plain });
            }
        }
    }
    problems.extend(tc_overlaps(plan, agents, &per_agent));
    Preflight { per_agent, problems }
}

/// Between two tc faults of one node and direction: the first must be
/// reverted before the agent checks the second again, 1.5 s before its
/// window (an ingress fault's check refuses a device whose ingress qdisc is
/// taken), with half a second for the revert itself.
const TC_GAP: std::time::Duration = stampede_agent::fault::injector::RECHECK_LEAD.saturating_add(std::time::Duration::from_millis(500));

/// Two tc faults (netem, rate) on one node at once: the second would find
/// the first's root qdisc in place and fail mid-run, so refuse it up front.
fn tc_overlaps(plan: &Plan, agents: &[AgentEntry], per_agent: &[Vec<u32>]) -> Vec<Problem> {
    let window = |i: u32| {
        let f = &plan.faults[i as usize];
        (f.at.as_duration(), f.at.as_duration() + f.duration.as_duration())
    };
    let text = |i: u32| {
        let (from, to) = window(i);
        format!("`{}` {:?}-{:?}", plan.faults[i as usize].name, from, to)
    };
    // Trees belong to a node, not to an agent: faults with different
    // selectors can land on two agents of one node.
    let mut per_node: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (ai, faults) in per_agent.iter().enumerate() {
        let tc = faults.iter().copied().filter(|&i| matches!(plan.faults[i as usize].kind, FaultKind::Netem | FaultKind::Rate));
        per_node.entry(agents[ai].node.as_str()).or_default().extend(tc);
    }
    let mut problems = Vec::new();
    for (node, tc) in per_node {
        for (x, &a) in tc.iter().enumerate() {
            for &b in &tc[x + 1..] {
                let ((a0, a1), (b0, b1)) = (window(a), window(b));
                // Egress trees sit on the device, ingress ones on their own
                // ifb behind the device's one ingress qdisc: each direction
                // takes one fault at a time. The gap leaves the first's
                // revert time to finish and the second a clean baseline.
                let direction = |i: u32| plan.faults[i as usize].scope.as_ref().map(|s| s.direction);
                if direction(a) == direction(b) && a0 < b1 + TC_GAP && b0 < a1 + TC_GAP {
                    problems.push(Problem::TcOverlap {
                        first: plan.faults[a as usize].name.clone(),
                        second: plan.faults[b as usize].name.clone(),
                        node: node.to_string(),
                        first_window: text(a),
                        second_window: text(b),
                    });
                }
            }
        }
    }
    problems
}

/// The latest state of each (agent, fault), as the agents reported it.
#[derive(Debug, Default)]
pub struct FaultLog {
    pub events: BTreeMap<(String, String), FaultEvent>,
}

impl FaultLog {
    pub fn record(&mut self, ev: FaultEvent) {
        self.events.insert((ev.agent_id.clone(), ev.fault.clone()), ev);
    }

    /// Each fault's actual window on each agent that applied it, for the
    /// judge (`during:`, `after:`, `recovery_time`): a fault never applied
    /// has none, one never reverted is open-ended.
    pub fn windows(&self) -> Vec<crate::judge::FaultWindow> {
        self.events
            .values()
            .filter(|e| e.applied_unix_nanos > 0)
            .map(|e| crate::judge::FaultWindow {
                fault: e.fault.clone(),
                applied_unix_nanos: e.applied_unix_nanos,
                reverted_unix_nanos: (e.reverted_unix_nanos > 0).then_some(e.reverted_unix_nanos),
            })
            .collect()
    }

    /// A restarted agent on the node of `on_node`'s agents reverted `f` at
    /// start-up (`reverted_nanos`, our clock): the entry of the agent that
    /// applied it says so — `reverted_at_startup`, or `revert_failed` — rather
    /// than the `applied` its dead process last sent. Without such an entry
    /// (the process died before its event arrived), the run's agent on that
    /// node gets one (`agent_id`, the reporting agent, if none).
    pub fn recovered(&mut self, on_node: &[String], agent_id: &str, f: &RecoveredFault, reverted_nanos: i64) {
        let (status, error) =
            if f.error.is_empty() { (FaultStatus::RevertedAtStartup, String::new()) } else { (FaultStatus::RevertFailed, format!("start-up recovery could not revert it: {}", f.error)) };
        let mut hit = false;
        for ((agent, fault), ev) in self.events.iter_mut() {
            if fault == &f.fault && on_node.contains(agent) && ev.fault_status() != FaultStatus::Reverted {
                ev.set_fault_status(status);
                ev.reverted_unix_nanos = if f.error.is_empty() { reverted_nanos } else { 0 };
                ev.error = error.clone();
                hit = true;
            }
        }
        if !hit {
            let ev = FaultEvent {
                run_id: f.run_id.clone(),
                agent_id: on_node.first().map_or(agent_id, String::as_str).to_string(),
                fault: f.fault.clone(),
                kind: f.kind.clone(),
                fault_status: status as i32,
                reverted_unix_nanos: if f.error.is_empty() { reverted_nanos } else { 0 },
                error,
                ..Default::default()
            };
            self.record(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::SystemTime;

    use stampede_common::plan::{load_str, Format};
    use stampede_proto::v1::Capability;

    use super::*;

    fn plan(faults: &str) -> Plan {
        let text = format!(
            "name: t\ntarget: http://127.0.0.1:9\nphases:\n  - {{ name: p, duration: 60s, load: {{ model: open, rate: 1/s }} }}\nsteps:\n  - {{ name: s, request: {{ method: GET, path: / }} }}\nfaults:\n{faults}"
        );
        load_str(&text, Format::Yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn agent(id: &str, node: &str, available: &[&str], lacking: &[(&str, &str)]) -> AgentEntry {
        let mut capabilities: Vec<Capability> = available.iter().map(|n| Capability { name: n.to_string(), available: true, detail: String::new() }).collect();
        capabilities.extend(lacking.iter().map(|(n, d)| Capability { name: n.to_string(), available: false, detail: d.to_string() }));
        AgentEntry {
            id: id.into(),
            labels: BTreeMap::new(),
            capacity: 1,
            workers: 1,
            max_connections: 0,
            capabilities,
            clock_offset_nanos: 0,
            clock_rtt_nanos: 0,
            clock_sampled_at: SystemTime::now(),
            clock_samples: 0,
            last_seen: SystemTime::now(),
            version: String::new(),
            node: node.into(),
            tx: tokio::sync::mpsc::channel(1).0,
            session: 0,
            instance: 0,
            lease: std::time::Duration::from_secs(10),
            cut: Default::default(),
            registered_at: SystemTime::now(),
        }
    }

    const TC: &[&str] = &["tc", "qdisc.prio", "qdisc.netem", "qdisc.htb", "net_admin", "nft"];

    // Issue 10: a dry run shows what a run would refuse, per agent and fault,
    // in an operator's words; a simulated run needs no tool on the node,
    // only an agent that announces the fault and knows how to simulate it.
    #[test]
    fn the_preflight_finds_in_plain_words_and_a_simulation_needs_only_an_agent_that_simulates() {
        let slow = "  - { name: slow, kind: netem, at: 1s, duration: 5s, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n";
        let nowhere = "  - { name: nowhere, kind: cpu, at: 1s, duration: 2s, agents: { zone: z }, cpu: { workers: 1 } }\n";
        let p = plan(&format!("{slow}{nowhere}"));
        let a = agent("a", "n1", &["tc", "net_admin", "qdisc.prio"], &[("qdisc.netem", "Error: Specified qdisc kind is unknown.")]);
        let found = preflight(&p, std::slice::from_ref(&a));
        assert_eq!(found.per_agent, vec![vec![0]], "placed even where it cannot run");
        assert_eq!(found.findings("a", "n1", "slow"), ["no netem in this kernel (Error: Specified qdisc kind is unknown.)"]);
        assert_eq!(found.findings("b", "n1", "slow"), Vec::<String>::new());
        assert_eq!(found.unplaced(), ["fault `nowhere`: its selector {zone=z} matches none of this run's agents"]);
        assert!(found.for_run().is_err());
        let refused = found.for_simulation(std::slice::from_ref(&a)).unwrap_err().to_string();
        assert!(refused.contains("fault `nowhere`") && refused.contains("agent a cannot simulate faults"), "{refused}");
        assert!(!refused.contains("netem"), "a simulation needs no netem: {refused}");

        let mut simulating = a.clone();
        simulating.capabilities.push(Capability { name: SIMULATE_CAPABILITY.into(), available: true, detail: String::new() });
        let p = plan(slow);
        let agents = [simulating];
        assert_eq!(preflight(&p, &agents).for_simulation(&agents).unwrap(), vec![vec![0]]);
        assert_eq!(plain("incus", "not on PATH"), "no `incus` on this node (not on PATH)");
        assert_eq!(plain("docker", ""), "`docker` was not reported by this agent");
    }

    #[test]
    fn every_missing_capability_of_every_agent_is_named_at_once() {
        let p = plan("  - { name: slow, kind: netem, at: 1s, duration: 5s, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n");
        let a = agent("a", "n1", &["tc", "net_admin"], &[("qdisc.prio", "not in this kernel"), ("qdisc.netem", "not in this kernel")]);
        let b = agent("b", "n2", &[], &[("tc", "not installed")]);
        let err = assign(&p, &[a, b]).unwrap_err().to_string();
        assert!(err.contains("agent a: it needs `qdisc.prio` (not in this kernel), `qdisc.netem` (not in this kernel),"), "{err}");
        assert!(err.contains("agent b: it needs `tc` (not installed), `qdisc.prio`, `qdisc.netem`, `net_admin`"), "{err}");
    }

    #[test]
    fn overlapping_tc_faults_on_one_node_are_refused_but_sequential_ones_pass() {
        let overlapping = plan(
            "  - { name: slow, kind: netem, at: 10s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n  - { name: cap, kind: rate, at: 20s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0 }, rate: 1mbit }\n  - { name: cut, kind: partition, at: 20s, duration: 5s, scope: { dst: 10.0.0.1/32 } }\n",
        );
        let err = assign(&overlapping, &[agent("a", "n1", TC, &[])]).unwrap_err();
        assert_eq!(err.0.len(), 1, "only the two tc faults clash: {err}");
        let text = err.to_string();
        assert!(text.contains("faults `slow` and `cap` both shape traffic with tc on node n1") && text.contains("`slow` 10s-40s") && text.contains("`cap` 20s-50s"), "{text}");

        let sequential = plan(
            "  - { name: slow, kind: netem, at: 10s, duration: 8s, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n  - { name: cap, kind: rate, at: 20s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0 }, rate: 1mbit }\n",
        );
        assert_eq!(assign(&sequential, &[agent("a", "n1", TC, &[])]).unwrap(), vec![vec![0, 1]]);
        // One second apart: the agent checks the second fault again 1.5 s
        // before its window, while the first one's qdisc is still there.
        let one_second_apart = plan(
            "  - { name: slow, kind: netem, at: 10s, duration: 9s, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n  - { name: cap, kind: rate, at: 20s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0 }, rate: 1mbit }\n",
        );
        assert!(assign(&one_second_apart, &[agent("a", "n1", TC, &[])]).is_err());
        // Back to back, with no gap, the second would race the first's revert.
        let back_to_back = plan(
            "  - { name: slow, kind: netem, at: 10s, duration: 10s, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n  - { name: cap, kind: rate, at: 20s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0 }, rate: 1mbit }\n",
        );
        assert!(assign(&back_to_back, &[agent("a", "n1", TC, &[])]).is_err());
        // Two agents of one node, picked by different selectors: one node's tree.
        let split = plan(
            "  - { name: slow, kind: netem, at: 10s, duration: 30s, agents: { role: x }, scope: { dst: 10.0.0.1/32, dev: eth0 }, netem: { delay: 10ms } }\n  - { name: cap, kind: rate, at: 20s, duration: 30s, agents: { role: y }, scope: { dst: 10.0.0.1/32, dev: eth0 }, rate: 1mbit }\n",
        );
        let (mut x, mut y) = (agent("ax", "n1", TC, &[]), agent("ay", "n1", TC, &[]));
        x.labels.insert("role".into(), "x".into());
        y.labels.insert("role".into(), "y".into());
        let err = assign(&split, &[x, y]).unwrap_err().to_string();
        assert!(err.contains("on node n1"), "{err}");

        // An upload cap and a download cap at once: one tree each way.
        let both_ways = plan(
            "  - { name: up, kind: rate, at: 10s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0 }, rate: 1mbit }\n  - { name: down, kind: rate, at: 10s, duration: 30s, scope: { dst: 10.0.0.1/32, dev: eth0, direction: ingress }, rate: 1mbit }\n",
        );
        let mut caps = TC.to_vec();
        caps.extend(["ip", "link.ifb", "qdisc.ingress", "tc.mirred"]);
        assert_eq!(assign(&both_ways, &[agent("a", "n1", &caps, &[])]).unwrap(), vec![vec![0, 1]]);
    }
}
