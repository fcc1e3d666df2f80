//! The steady state (docs/plan.md "Steady state"): the named probes, each
//! tried once now. The coordinator asks for it over the session before it
//! assigns anything and after the run; a fault with `unless_unhealthy` asks
//! for it just before it is applied.

use stampede_common::plan::Plan;
use stampede_proto::v1::{ProbeOutcome, SteadyStateReply, SteadyStateRequest};

use super::{attempt, Attempt, CompiledProbe};
use crate::engine;

/// Tries each of `probes` (indices into the plan's) once, at the same time.
pub async fn try_probes(plan: &Plan, probes: &[usize]) -> Result<Vec<(usize, Attempt)>, String> {
    let target = engine::target(plan, &crate::connect::system_resolver()).await.map_err(|e| e.to_string())?;
    let addr = target.addrs[0];
    let mut tries = tokio::task::JoinSet::new();
    for &i in probes {
        let probe = CompiledProbe::new(plan, i, &target.endpoint.authority)?;
        let dialer = target.dialer.clone();
        tries.spawn(async move { (i, attempt(&probe, &dialer, addr).await) });
    }
    let mut out = Vec::with_capacity(probes.len());
    while let Some(done) = tries.join_next().await {
        out.push(done.map_err(|e| e.to_string())?);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

/// Whether the plan's steady state holds now: `Err` names the first probe
/// that failed and why (`health: status 503 is not one the probe accepts`).
pub async fn holds(plan: &Plan) -> Result<(), String> {
    let Some(steady) = &plan.steady_state else {
        return Ok(());
    };
    let probes: Vec<usize> = steady.probes.iter().filter_map(|n| plan.probe_index(n)).collect();
    for (i, a) in try_probes(plan, &probes).await? {
        if !a.ok() {
            return Err(format!("{}: {}", plan.probes[i].name, a.detail));
        }
    }
    Ok(())
}

/// The answer to the coordinator's request.
pub async fn answer(req: SteadyStateRequest) -> SteadyStateReply {
    let mut reply = SteadyStateReply { run_id: req.run_id.clone(), id: req.id, ..Default::default() };
    let plan: Plan = match serde_json::from_str(&req.plan_json) {
        Ok(p) => p,
        Err(e) => {
            reply.error = format!("the plan of the steady-state request does not parse: {e}");
            return reply;
        }
    };
    if let Err((path, msg)) = stampede_common::plan::validate(&plan) {
        reply.error = format!("the plan of the steady-state request is invalid: {path}: {msg}");
        return reply;
    }
    let secrets = stampede_proto::secrets_from_wire(&req.secrets);
    let mut plan = plan;
    let asked: Vec<usize> = req.probes.iter().map(|&i| i as usize).collect();
    if let Err((path, msg)) = stampede_common::plan::fill_agent_secrets(&mut plan, &secrets, false, |p| asked.contains(&p)) {
        reply.error = format!("the steady-state request's secrets: {path}: {msg}");
        return reply;
    }
    let probes: Vec<usize> = req.probes.iter().map(|&i| i as usize).collect();
    if probes.iter().any(|&i| i >= plan.probes.len()) {
        reply.error = "the steady-state request names a probe the plan lacks".into();
        return reply;
    }
    match try_probes(&plan, &probes).await {
        Ok(tries) => {
            reply.probes = tries.into_iter().map(|(i, a)| ProbeOutcome { probe: i as u32, ok: a.ok(), detail: a.detail, status: u32::from(a.status) }).collect();
        }
        Err(e) => reply.error = e,
    }
    reply
}
