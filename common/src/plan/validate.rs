//! Checks a plan's meaning once its shape is known: names unique and
//! referenced names existing, every load complete for its model, weights and
//! rates sensible, SLO thresholds in their metric's unit.

use std::collections::HashSet;
use std::time::Duration;

use super::limits::{
    MAX_BODY_BYTES, MAX_CONCURRENCY, MAX_FAULTS, MAX_HEADERS, MAX_HEADER_BYTES, MAX_PHASES, MAX_RATE, MAX_SLOS, MAX_STEPS,
};
use super::{Load, Model, Plan};
use crate::slo::{Cmp, Scope, Threshold};

/// Requests slower than this are not measured (the histograms' range), so no
/// timeout may be longer.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Snapshots at least this often: the live view and guardrails depend on them.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Longest run, far beyond any real test; keeps every instant on the
/// timeline representable (a few `u64::MAX` seconds would overflow the clock).
const MAX_RUN: Duration = Duration::from_secs(365 * 24 * 3600);

/// `Err((field path, message))` for the first problem found.
pub fn validate(plan: &Plan) -> Result<(), (String, String)> {
    let err = |path: String, msg: &str| Err((path, msg.to_string()));

    if plan.name.trim().is_empty() {
        return err("name".into(), "must not be empty");
    }
    check_target(&plan.target).map_err(|m| ("target".to_string(), m))?;
    if plan.agents.count == Some(0) {
        return err("agents.count".into(), "must be at least 1");
    }
    if plan.interval.as_duration() < std::time::Duration::from_millis(100) {
        return err("interval".into(), "must be at least 100ms");
    }
    if plan.interval.as_duration() > MAX_INTERVAL {
        return err("interval".into(), "must be at most 1h");
    }
    if plan.timeout.as_duration().is_zero() {
        return err("timeout".into(), "must be more than 0s");
    }
    if plan.timeout.as_duration() > MAX_TIMEOUT {
        return err("timeout".into(), "must be at most 1h, the longest latency stampede records");
    }
    if let Some(b) = &plan.builtin_target {
        if let (Some(lo), Some(hi)) = (b.latency, b.latency_max) {
            if hi < lo {
                return err("builtin_target.latency_max".into(), "must not be below `latency`");
            }
        }
        if let Some(s) = b.stall {
            if s.every.as_duration().is_zero() || s.hold >= s.every {
                return err("builtin_target.stall.hold".into(), "must be shorter than `every`, which must be more than 0s");
            }
        }
    }

    if plan.phases.is_empty() {
        return err("phases".into(), "a plan needs at least one phase");
    }
    check_counts(plan)?;
    let mut names = HashSet::new();
    let mut total = Duration::ZERO;
    for (i, phase) in plan.phases.iter().enumerate() {
        let at = |field: &str| format!("phases[{i}].{field}");
        if phase.name.trim().is_empty() {
            return err(at("name"), "must not be empty");
        }
        if !names.insert(phase.name.as_str()) {
            return err(at("name"), &format!("phase `{}` is defined twice", phase.name));
        }
        if phase.duration.as_duration().is_zero() {
            return err(at("duration"), "must be more than 0s");
        }
        total = total.saturating_add(phase.duration.as_duration());
        if total > MAX_RUN {
            return err(at("duration"), "makes the phases add up to more than 365 days");
        }
        let load = &phase.load;
        match load.model {
            Model::Open => {
                match load.rate {
                    None => return err(at("load.rate"), "the open model needs a `rate`, e.g. `200/s`"),
                    Some(r) if r.as_per_second() <= 0.0 && load.to.is_none_or(|t| t.as_per_second() <= 0.0) => {
                        return err(at("load.rate"), "must be more than 0/s (or ramp `to` a rate above 0)")
                    }
                    Some(_) => {}
                }
                check_rates(load).map_err(|(field, m)| (at(field), m))?;
                if load.concurrency.is_some() {
                    return err(at("load.concurrency"), "belongs to the closed model; the open model takes `rate`");
                }
                if load.max_in_flight == Some(0) {
                    return err(at("load.max_in_flight"), "must be at least 1");
                }
            }
            Model::Closed => {
                match load.concurrency {
                    None => return err(at("load.concurrency"), "the closed model needs `concurrency`, e.g. 50"),
                    Some(0) => return err(at("load.concurrency"), "must be at least 1"),
                    Some(c) if c > MAX_CONCURRENCY => {
                        return err(
                            at("load.concurrency"),
                            &format!("{c} connections is more than stampede keeps busy ({MAX_CONCURRENCY} across the fleet): lower it, and spread large loads over more agents (each connection takes an open file on one)"),
                        )
                    }
                    Some(_) => {}
                }
                for (field, set) in [("rate", load.rate.is_some()), ("to", load.to.is_some()), ("max_in_flight", load.max_in_flight.is_some())] {
                    if set {
                        return err(at(&format!("load.{field}")), "belongs to the open model; the closed model takes `concurrency`");
                    }
                }
            }
        }
    }

    if plan.steps.is_empty() {
        return err("steps".into(), "a plan needs at least one step");
    }
    let mut names = HashSet::new();
    let mut weights = 0u32;
    for (i, step) in plan.steps.iter().enumerate() {
        let at = |field: &str| format!("steps[{i}].{field}");
        if step.name.trim().is_empty() {
            return err(at("name"), "must not be empty");
        }
        if !names.insert(step.name.as_str()) {
            return err(at("name"), &format!("step `{}` is defined twice", step.name));
        }
        if step.weight == 0 {
            return err(at("weight"), "must be at least 1 (remove the step to leave it out)");
        }
        weights = match weights.checked_add(step.weight) {
            Some(w) => w,
            None => return err(at("weight"), "makes the weights add up to more than 4294967295"),
        };
        let method = &step.request.method;
        if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
            return err(at("request.method"), "must be an upper-case HTTP method such as GET or POST");
        }
        if !step.request.path.starts_with('/') || step.request.path.bytes().any(|b| b.is_ascii_whitespace()) {
            return err(at("request.path"), "must start with `/` and contain no spaces");
        }
        if step.request.headers.len() > MAX_HEADERS {
            return err(at("request.headers"), &format!("has {} headers; a step may have at most {MAX_HEADERS}", step.request.headers.len()));
        }
        if let Some(body) = &step.request.body {
            if body.len() > MAX_BODY_BYTES {
                return err(at("request.body"), &format!("is {} bytes; a body may be at most {MAX_BODY_BYTES} bytes (256 KiB)", body.len()));
            }
        }
        for (name, value) in &step.request.headers {
            if name.len() + value.len() > MAX_HEADER_BYTES {
                return err(at("request.headers"), &format!("a header is {} bytes; a header's name and value may be at most {MAX_HEADER_BYTES} bytes", name.len() + value.len()));
            }
            if name.contains(['\r', '\n']) {
                return err(at("request.headers"), &format!("header name `{name}` must not contain line breaks"));
            }
            let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return err(at(&format!("request.headers.{name}")), "is not a valid header name");
            }
            if value.contains(['\r', '\n']) {
                return err(at(&format!("request.headers.{name}")), "must not contain line breaks");
            }
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("host") {
                return err(at(&format!("request.headers.{name}")), "is set by stampede itself");
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                return err(at(&format!("request.headers.{name}")), "is not supported: stampede sends a body with Content-Length");
            }
        }
    }

    super::fault::validate_faults(plan)?;

    for (i, slo) in plan.slos.iter().enumerate() {
        let at = |field: &str| format!("slos[{i}].{field}");
        match &slo.scope {
            Scope::Run => {}
            Scope::Phase(name) if plan.phase_index(name).is_none() => {
                return err(at("scope"), &format!("there is no phase `{name}`"));
            }
            Scope::Step(name) if plan.step_index(name).is_none() => {
                return err(at("scope"), &format!("there is no step `{name}`"));
            }
            _ => {}
        }
        slo.pass.check_unit(slo.metric).map_err(|m| (at("pass"), m))?;
        if let Some(w) = &slo.warn {
            w.check_unit(slo.metric).map_err(|m| (at("warn"), m))?;
            check_warn_band(&slo.pass, w).map_err(|m| (at("warn"), m))?;
        }
    }
    super::abort::validate_abort_rules(plan)?;
    Ok(())
}

/// How many of each list a plan may have: every later stage (the split,
/// the assignment JSON sent to each agent, the reports) is sized by them.
fn check_counts(plan: &Plan) -> Result<(), (String, String)> {
    let lists = [
        ("phases", plan.phases.len(), MAX_PHASES),
        ("steps", plan.steps.len(), MAX_STEPS),
        ("slos", plan.slos.len(), MAX_SLOS),
        ("abort_when", plan.abort_when.len(), MAX_SLOS),
        ("faults", plan.faults.len(), MAX_FAULTS),
    ];
    match lists.into_iter().find(|&(_, n, max)| n > max) {
        Some((field, n, max)) => Err((field.to_string(), format!("has {n} entries; a plan may have at most {max}"))),
        None => Ok(()),
    }
}

/// An open phase's rates (`Rate` itself refuses NaN, infinities and
/// negatives): at most [`MAX_RATE`] fleet-wide. `1e12/s` used to be
/// attempted, sent nothing and left a worker spinning (issue 8, item 10).
fn check_rates(load: &Load) -> Result<(), (&'static str, String)> {
    for (field, rate) in [("load.rate", load.rate), ("load.to", load.to)] {
        if let Some(r) = rate.map(|r| r.as_per_second()).filter(|&r| r > MAX_RATE) {
            return Err((
                field,
                format!("{r}/s is more than stampede sends ({MAX_RATE}/s across the fleet): lower the rate, and spread large loads over more agents (one agent sends far less)"),
            ));
        }
    }
    Ok(())
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

/// Only plain `http://host:port` is supported so far; say so rather than
/// failing at the first request.
fn check_target(target: &str) -> Result<(), String> {
    let rest = if let Some(r) = target.strip_prefix("http://") {
        r
    } else if target.starts_with("https://") {
        return Err("https targets are not supported yet; use http://".into());
    } else {
        return Err(format!("`{target}` is not an http:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("`{target}` has no host"));
    }
    if rest.len() > authority.len() && rest != format!("{authority}/") {
        return Err(format!("`{target}` must be a base URL without a path; put paths in steps"));
    }
    if let Some((_, port)) = authority.rsplit_once(':') {
        port.parse::<u16>().map_err(|_| format!("`{port}` is not a port"))?;
    }
    Ok(())
}
