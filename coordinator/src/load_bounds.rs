//! Refusing a share of the load an agent cannot hold (issue 8 item 10).
//! Validation caps the fleet-wide numbers; this checks each agent's share,
//! after the split and before any assignment is sent, against the number
//! of connections the agent declared (its open-files limit less a reserve).
//! Without it an agent asked for more than it can open turns the excess
//! into connect errors or dropped arrivals that look like the server's fault.

use stampede_common::plan::{Model, Plan};

use crate::fleet::AgentEntry;

/// Every share that does not fit, all at once (like the fault preflight).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct LoadBoundError(pub Vec<Overload>);

/// One agent's share of one phase that exceeds its connection limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("agent {agent} cannot hold its share of phase `{phase}`: it would need {needs} connections ({what}) but can hold {holds} (its open-files limit less a reserve); {advice}")]
pub struct Overload {
    pub agent: String,
    pub phase: String,
    pub what: &'static str,
    pub needs: u64,
    pub holds: u32,
    pub advice: String,
}

/// Checks each agent's closed-model connections (`concurrency[phase][agent]`)
/// and, where the plan sets it, the open model's per-agent `max_in_flight`
/// against its declared limit. An agent that declared none (0, an older
/// agent) is not checked.
pub fn check(plan: &Plan, agents: &[AgentEntry], concurrency: &[Vec<u32>]) -> Result<(), LoadBoundError> {
    let mut problems = Vec::new();
    for (pi, phase) in plan.phases.iter().enumerate() {
        let load = &phase.load;
        for (ai, agent) in agents.iter().enumerate() {
            let holds = agent.max_connections;
            // 0: declared none (an older agent); capacity 0: fault-only, no load.
            if holds == 0 || agent.capacity == 0 {
                continue;
            }
            let (needs, what, advice) = match load.model {
                Model::Closed | Model::Iterations => {
                    let needs = u64::from(concurrency[pi][ai]);
                    let total = u64::from(load.concurrency.unwrap_or(0));
                    (needs, "closed-model concurrency", spread(total, holds, "concurrency"))
                }
                Model::Open => match load.max_in_flight {
                    // Per agent by definition: more agents do not shrink it.
                    Some(m) => (u64::from(m), "the plan's max_in_flight", format!("lower max_in_flight to at most {holds}")),
                    // The default bound (rate share x (timeout + 1 s)) is a
                    // ceiling, not a need: the agent lowers it to its limit
                    // with a warning, and a target that answers keeps far
                    // fewer requests in flight (5 000/s against a 1 ms
                    // service needs about 5). Refusing on it refused plain
                    // 5 000/s runs on one agent (the benchmark's plan).
                    None => continue,
                },
            };
            if needs > u64::from(holds) {
                problems.push(Overload { agent: agent.id.clone(), phase: phase.name.clone(), what, needs, holds, advice });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LoadBoundError(problems))
    }
}

/// How many agents of `holds` connections the phase's `total` needs.
fn spread(total: u64, holds: u32, lower: &str) -> String {
    let n = total.div_ceil(u64::from(holds)).max(1);
    format!("the phase needs at least {n} agents of that size: spread it over at least {n} agents or lower the {lower}")
}
