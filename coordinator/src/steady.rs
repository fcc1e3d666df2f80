//! The plan's steady state (docs/plan.md "Steady state"), asked of the
//! run's probe agent (its first) over the session: before any assignment —
//! the run is refused when it does not hold — and after every agent has
//! finished and reverted its faults — the verdict fails when it does not.
//! The agent reaches the target; the coordinator might not, so it asks.

use std::time::Duration;

use stampede_common::plan::Plan;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{CoordinatorMessage, SteadyStateReply, SteadyStateRequest};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::fleet::{AgentEvent, Fleet};

/// Between two tries of a steady state that did not hold.
const RETRY: Duration = Duration::from_secs(1);
/// Beyond the probes' timeout, how long an answer may take to arrive.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// One steady-state question to one agent.
pub struct Ask<'a> {
    pub fleet: &'a Fleet,
    pub agent_id: &'a str,
    pub run_id: &'a str,
    pub plan: &'a Plan,
    pub plan_json: &'a str,
}

/// Tries the steady state every second until it holds or `within` has
/// passed; `Err` says why it did not hold on the last try, naming the probe
/// (`health: status 503 is not one the probe accepts`). `events` is the
/// run's event stream; a `None` plan steady state holds at once.
pub async fn hold(ask: &Ask<'_>, events: &mut UnboundedReceiver<AgentEvent>) -> Result<(), String> {
    let Some(steady) = &ask.plan.steady_state else {
        return Ok(());
    };
    let probes: Vec<u32> = steady.probes.iter().filter_map(|n| ask.plan.probe_index(n)).map(|i| i as u32).collect();
    let until = tokio::time::Instant::now() + steady.within.as_duration();
    let mut id = 0;
    loop {
        id += 1;
        let why = match try_once(ask, &probes, id, events).await {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if tokio::time::Instant::now() + RETRY > until {
            return Err(why);
        }
        tracing::info!(message = "Steady state does not hold yet; trying again.", run = %ask.run_id, reason = %why);
        tokio::time::sleep(RETRY).await;
    }
}

async fn try_once(ask: &Ask<'_>, probes: &[u32], id: u64, events: &mut UnboundedReceiver<AgentEvent>) -> Result<(), String> {
    let agent = ask.fleet.agent(ask.agent_id).ok_or_else(|| format!("agent {} (which runs the steady-state probes) is not connected", ask.agent_id))?;
    let indices: Vec<usize> = probes.iter().map(|&i| i as usize).collect();
    let secrets = stampede_proto::secrets_to_wire(&ask.plan.secrets_for_probes(&indices, &ask.plan.secret_values()));
    let req = SteadyStateRequest { run_id: ask.run_id.to_string(), id, plan_json: ask.plan_json.to_string(), probes: probes.to_vec(), secrets };
    let msg = CoordinatorMessage { msg: Some(Down::SteadyState(req)) };
    tokio::time::timeout(Duration::from_secs(1), agent.tx.send(Ok(msg)))
        .await
        .map_err(|_| format!("agent {}'s session is stalled", ask.agent_id))?
        .map_err(|_| format!("agent {}'s session closed", ask.agent_id))?;
    let timeout = ask.plan.probes.iter().map(|p| p.timeout.unwrap_or(ask.plan.timeout).as_duration()).max().unwrap_or_default();
    let answer = async {
        while let Some(event) = events.recv().await {
            if let AgentEvent::SteadyState { agent_id, reply } = event {
                if agent_id == ask.agent_id && reply.id == id {
                    return Some(reply);
                }
            }
            // Nothing else is expected now: no assignment is out (before),
            // or every agent has finished (after).
        }
        None
    };
    let reply = tokio::time::timeout(timeout + ANSWER_GRACE, answer)
        .await
        .map_err(|_| format!("agent {} did not answer the steady-state request within {:?}", ask.agent_id, timeout + ANSWER_GRACE))?
        .ok_or_else(|| "the run's event stream ended".to_string())?;
    if reply.error.is_empty() && reply.probes.len() < probes.len() {
        return Err(format!("agent {} answered for {} of the {} steady-state probes", ask.agent_id, reply.probes.len(), probes.len()));
    }
    verdict_of(ask.plan, &reply)
}

/// Whether an answer says the steady state holds; `Err` names the first
/// probe that failed, or the agent's error.
pub fn verdict_of(plan: &Plan, reply: &SteadyStateReply) -> Result<(), String> {
    if !reply.error.is_empty() {
        return Err(reply.error.clone());
    }
    match reply.probes.iter().find(|p| !p.ok) {
        Some(p) => Err(format!("{}: {}", plan.probes.get(p.probe as usize).map_or("?", |p| p.name.as_str()), p.detail)),
        None => Ok(()),
    }
}
