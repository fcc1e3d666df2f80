//! `stampede run PLAN --dry-run`: what each agent would run, in time order,
//! and beside every fault what the preflight would say of it — on any
//! machine, whatever its nodes lack (a laptop with no `incus` prints a
//! production plan). Nothing is refused here: a finding is shown, not
//! enforced, and the dry run exits 0 for a valid plan. The same value is
//! printed (`listing`) and written as `dry-run.json` with `--out`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::faults::Preflight;
use crate::fleet::AgentEntry;
use crate::report::{FaultReport, Report};

/// The file `--out DIR` gets for a dry run.
pub const FILE: &str = "dry-run.json";

/// A dry run's findings; `dry-run.json` (schema: docs/plan.md, "Dry run").
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub plan: String,
    pub run_id: String,
    /// Whether the real run would start: no finding anywhere.
    pub would_run: bool,
    /// What would refuse the run as a whole (a selector that matches no
    /// agent, no agent to generate the load).
    pub refusals: Vec<String>,
    pub agents: Vec<DryAgent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryAgent {
    pub id: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    /// Capacity 0: it would take its node's faults and no load.
    pub fault_only: bool,
    /// The fault capabilities its node lacks, as its probe found them.
    pub missing_capabilities: Vec<String>,
    /// Its faults by start time.
    pub faults: Vec<DryFault>,
    /// Every apply and revert of its faults, in time order.
    pub events: Vec<DryEvent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryFault {
    pub name: String,
    pub kind: String,
    /// The window, in seconds from the run's start.
    pub at_s: f64,
    pub until_s: f64,
    /// `ok`, or `would be refused: WHY; WHY`.
    pub preflight: String,
    pub findings: Vec<String>,
    pub apply_commands: Vec<String>,
    pub revert_commands: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DryEvent {
    pub at_s: f64,
    /// `apply` or `revert`.
    pub action: &'static str,
    pub fault: String,
    pub kind: String,
    pub commands: Vec<String>,
}

impl DryRun {
    /// From the report of a dry run (the agents' listings, as fault
    /// events), the coordinator's preflight and the run's agents.
    pub fn new(report: &Report, preflight: &Preflight, agents: &[AgentEntry]) -> DryRun {
        let mut refusals = preflight.unplaced();
        if agents.iter().all(|a| a.capacity == 0) {
            let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
            refusals.push(format!("every agent has capacity 0 ({}): nothing would generate the load", ids.join(", ")));
        }
        let agents: Vec<DryAgent> = agents.iter().map(|a| dry_agent(a, &report.faults, preflight)).collect();
        let would_run = refusals.is_empty() && agents.iter().all(|a| a.faults.iter().all(|f| f.findings.is_empty()));
        DryRun { plan: report.plan.name.clone(), run_id: report.run_id.clone(), would_run, refusals, agents }
    }
}

fn dry_agent(a: &AgentEntry, faults: &[FaultReport], preflight: &Preflight) -> DryAgent {
    let mut mine: Vec<DryFault> = faults
        .iter()
        .filter(|f| f.agent == a.id)
        .map(|f| {
            let mut findings = preflight.findings(&a.id, &a.node, &f.name);
            // What the agent itself found: the actions cannot be built
            // (no route to the scope), the scope covers its coordinator.
            if !f.error.is_empty() {
                findings.push(f.error.clone());
            }
            DryFault {
                name: f.name.clone(),
                kind: f.kind.clone(),
                at_s: f.offset_s,
                until_s: f.offset_s + f.duration_s,
                preflight: if findings.is_empty() { "ok".to_string() } else { format!("would be refused: {}", findings.join("; ")) },
                findings,
                apply_commands: f.apply_commands.clone(),
                revert_commands: f.revert_commands.clone(),
            }
        })
        .collect();
    mine.sort_by(|x, y| x.at_s.total_cmp(&y.at_s).then(x.name.cmp(&y.name)));
    let mut events: Vec<DryEvent> = mine
        .iter()
        .flat_map(|f| {
            let event = |at_s, action, commands: &Vec<String>| DryEvent { at_s, action, fault: f.name.clone(), kind: f.kind.clone(), commands: commands.clone() };
            [event(f.at_s, "apply", &f.apply_commands), event(f.until_s, "revert", &f.revert_commands)]
        })
        .collect();
    // At one instant a revert goes first: the window that ends makes room
    // for the one that starts (two tc faults back to back).
    events.sort_by(|x, y| x.at_s.total_cmp(&y.at_s).then((x.action == "apply").cmp(&(y.action == "apply"))));
    DryAgent {
        id: a.id.clone(),
        node: a.node.clone(),
        labels: a.labels.clone(),
        capacity: a.capacity,
        fault_only: a.capacity == 0,
        missing_capabilities: a.capabilities.iter().filter(|c| !c.available).map(|c| c.name.clone()).collect(),
        faults: mine,
        events,
    }
}

/// The terminal listing: per agent, every apply and revert in time order,
/// each apply with its preflight finding; then what refuses the whole run.
pub fn listing(d: &DryRun) -> String {
    let mut out = String::new();
    let count: usize = d.agents.iter().map(|a| a.faults.len()).sum();
    let _ = writeln!(out, "dry run of {}: {count} fault(s) on {} agent(s); nothing was touched", d.plan, d.agents.len());
    for a in &d.agents {
        let role = if a.fault_only { ", fault-only (capacity 0)" } else { "" };
        let _ = writeln!(out, "\nagent {} (node {}{role}): {} fault(s)", a.id, a.node, a.faults.len());
        for e in &a.events {
            let finding = a.faults.iter().find(|f| f.name == e.fault).map_or("", |f| f.preflight.as_str());
            match e.action {
                "apply" => {
                    let _ = writeln!(out, "+{:.1}s  agent {}  apply {} ({})  preflight: {finding}", e.at_s, a.id, e.fault, e.kind);
                }
                _ => {
                    let _ = writeln!(out, "+{:.1}s  agent {}  revert {}", e.at_s, a.id, e.fault);
                }
            }
            for c in &e.commands {
                let _ = writeln!(out, "    {c}");
            }
        }
    }
    if !d.refusals.is_empty() {
        let _ = writeln!(out);
        for r in &d.refusals {
            let _ = writeln!(out, "would be refused: {r}");
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        if d.would_run { "preflight: the run would start".to_string() } else { "preflight: the run WOULD BE REFUSED as it stands (see the findings above)".to_string() }
    );
    out
}
