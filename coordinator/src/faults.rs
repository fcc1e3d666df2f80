//! Fault preflight on the coordinator: which agents apply which fault, and
//! whether they can — decided before any load starts, so a plan never fails
//! at minute 7 for a missing `tc`.

use std::collections::{BTreeMap, HashSet};

use stampede_common::plan::Plan;
use stampede_proto::v1::FaultEvent;

use crate::fleet::AgentEntry;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    #[error("fault `{fault}`: its selector {selector} matches none of this run's agents")]
    NoAgent { fault: String, selector: String },
    #[error("fault `{fault}` cannot run on agent {agent}: it needs `{capability}`, which that node lacks{detail}")]
    Missing { fault: String, agent: String, capability: String, detail: String },
}

fn selector_text(sel: &BTreeMap<String, String>) -> String {
    let parts: Vec<_> = sel.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// For each agent (by index), the plan's fault indices it applies. A fault
/// runs once per node: on the first selected agent of each node, so three
/// agents on one host do not stack three copies of the same rule.
pub fn assign(plan: &Plan, agents: &[AgentEntry]) -> Result<Vec<Vec<u32>>, PreflightError> {
    let mut per_agent = vec![Vec::new(); agents.len()];
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
            return Err(PreflightError::NoAgent { fault: fault.name.clone(), selector: selector_text(&fault.agents) });
        }
        let needs = stampede_agent::fault::driver_for(fault.kind).requires(fault);
        for &ai in &chosen {
            let agent = &agents[ai];
            for capability in &needs {
                let found = agent.capabilities.iter().find(|c| &c.name == capability);
                if !found.is_some_and(|c| c.available) {
                    let detail = found.filter(|c| !c.detail.is_empty()).map(|c| format!(" ({})", c.detail)).unwrap_or_default();
                    return Err(PreflightError::Missing { fault: fault.name.clone(), agent: agent.id.clone(), capability: capability.clone(), detail });
                }
            }
            per_agent[ai].push(fi as u32);
        }
    }
    Ok(per_agent)
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
}
