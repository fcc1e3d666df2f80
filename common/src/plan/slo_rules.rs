//! Checks a plan's SLO rules: every name a rule refers to exists (phase,
//! step, probe, fault, check, other rules), scopes combine sensibly,
//! thresholds are in their metric's unit, and the fields of one kind of rule
//! (`for`, `fault`, `rules`, `consecutive`) appear only on it.

use std::collections::HashSet;

use super::Plan;
use crate::slo::{Cmp, Metric, Parts, Scope, Slo, Threshold};

type Problem = (String, String);

/// The plan's check names (contract S, `Plan::check_names`).
fn check_names(plan: &Plan) -> Vec<&str> {
    plan.check_names()
}

/// The plan's probe names (contract P, `Plan.probes`).
pub fn probe_names(plan: &Plan) -> Vec<&str> {
    plan.probes.iter().map(|p| p.name.as_str()).collect()
}

pub fn validate_slos(plan: &Plan) -> Result<(), Problem> {
    let mut names = HashSet::new();
    for (i, slo) in plan.slos.iter().enumerate() {
        let at = |field: &str| format!("slos[{i}].{field}");
        if let Some(name) = &slo.name {
            if name.trim().is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if !names.insert(name.as_str()) {
                return Err((at("name"), format!("rule `{name}` is defined twice")));
            }
        }
        check_scope(plan, slo).map_err(|(f, m)| (at(f), m))?;
        check_metric(plan, &slo.metric).map_err(|m| (at("metric"), m))?;
        check_recovery(plan, slo).map_err(|(f, m)| (at(f), m))?;
        slo.pass.check_unit(&slo.metric).map_err(|m| (at("pass"), m))?;
        if let Some(w) = &slo.warn {
            w.check_unit(&slo.metric).map_err(|m| (at("warn"), m))?;
            check_warn_band(&slo.pass, w).map_err(|m| (at("warn"), m))?;
        }
    }
    Ok(())
}

fn check_scope(plan: &Plan, slo: &Slo) -> Result<(), (&'static str, String)> {
    let parts = check_scope_names(plan, &slo.scope).map_err(|m| ("scope", m))?;
    match (parts.window, slo.length) {
        (Some(Scope::After(f)), None) => {
            Err(("scope", format!("`after:{f}` needs `for`: how long after the revert to look, e.g. `for: 30s`")))
        }
        (Some(Scope::After(_)), Some(d)) if d.as_duration().is_zero() => Err(("for", "must be more than 0s".into())),
        (Some(Scope::After(_)), Some(_)) | (_, None) => Ok(()),
        (_, Some(_)) => Err(("for", "only an `after:FAULT` scope takes `for`".into())),
    }
}

/// The scope parses, and every phase, step, probe and fault it names exists.
pub(super) fn check_scope_names<'a>(plan: &Plan, scope: &'a Scope) -> Result<Parts<'a>, String> {
    let parts = scope.parts()?;
    let missing = |kind: &str, name: &str| Err(format!("there is no {kind} `{name}`"));
    if let Some(name) = parts.phase.filter(|n| plan.phase_index(n).is_none()) {
        return missing("phase", name);
    }
    if let Some(name) = parts.step.filter(|n| plan.stat_step_index(n).is_none()) {
        return missing("step", name);
    }
    if let Some(name) = parts.probe.filter(|n| !probe_names(plan).contains(n)) {
        return missing("probe", name);
    }
    if let Some(Scope::During(f) | Scope::After(f) | Scope::Before(f)) = parts.window {
        if !plan.faults.iter().any(|x| &x.name == f) {
            return missing("fault", f);
        }
    }
    Ok(parts)
}

pub(super) fn check_metric(plan: &Plan, metric: &Metric) -> Result<(), String> {
    match metric {
        Metric::Check(name) if !check_names(plan).contains(&name.as_str()) => Err(format!("there is no check `{name}`")),
        Metric::MaxStreak(c) => {
            check_metric(plan, &c.metric)?;
            c.check_unit()
        }
        _ => Ok(()),
    }
}

/// `recovery_time`'s own fields, and that no other rule has them.
fn check_recovery(plan: &Plan, slo: &Slo) -> Result<(), (&'static str, String)> {
    if slo.metric != Metric::RecoveryTime {
        for (field, set) in [("fault", slo.fault.is_some()), ("rules", slo.rules.is_some()), ("consecutive", slo.consecutive.is_some())] {
            if set {
                return Err((field, "only a `recovery_time` rule takes it".into()));
            }
        }
        return Ok(());
    }
    match &slo.fault {
        None => return Err(("fault", "`recovery_time` needs `fault`: the fault whose revert starts the clock".into())),
        Some(f) if !plan.faults.iter().any(|x| &x.name == f) => return Err(("fault", format!("there is no fault `{f}`"))),
        Some(_) => {}
    }
    if slo.scope != Scope::Run {
        return Err(("scope", "`recovery_time` is judged from the fault's revert on, over the scopes of its `rules`: leave `scope` out".into()));
    }
    if slo.consecutive == Some(0) {
        return Err(("consecutive", "must be at least 1".into()));
    }
    match &slo.rules {
        Some(rules) if rules.is_empty() => Err(("rules", "must name at least one rule (or leave `rules` out for every rule scoped `outside:faults`)".into())),
        Some(rules) => {
            for name in rules {
                match plan.slos.iter().find(|r| r.name.as_deref() == Some(name.as_str())) {
                    None => return Err(("rules", format!("there is no rule named `{name}`"))),
                    Some(r) if r.metric.is_time_rule() => {
                        return Err(("rules", format!("rule `{name}` ({}) is judged over a series, not per interval: it cannot be waited for", r.metric)))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        None if outside_fault_rules(plan).next().is_none() => Err((
            "rules",
            "no rule is scoped `outside:faults`, so there is nothing to recover to: name the rules that must hold again in `rules`".into(),
        )),
        None => Ok(()),
    }
}

/// The rules `recovery_time` waits for when it names none: every rule whose
/// time window is `outside:faults`.
pub fn outside_fault_rules(plan: &Plan) -> impl Iterator<Item = &Slo> {
    plan.slos.iter().filter(|r| !r.metric.is_time_rule() && r.scope.parts().is_ok_and(|p| p.window == Some(&Scope::OutsideFaults)))
}

/// Warn is the band between pass and fail: it bounds the same side as pass
/// and is looser, or a value that fails pass could land in warn from the
/// other side (`pass: > 100/s`, `warn: < 50/s` would call 30/s a warning).
fn check_warn_band(pass: &Threshold, warn: &Threshold) -> Result<(), String> {
    let upper = |t: &Threshold| matches!(t.cmp, Cmp::Lt | Cmp::Le);
    if upper(pass) != upper(warn) {
        return Err(format!("`{warn}` bounds the other side from pass `{pass}`: warn must be a looser limit in the same direction"));
    }
    // Strictly: an equal limit leaves no value that warns.
    let looser = if upper(pass) { warn.value > pass.value } else { warn.value < pass.value };
    if !looser {
        return Err(format!("`{warn}` is stricter than pass `{pass}`, or the same: warn must be a looser limit in the same direction"));
    }
    Ok(())
}
