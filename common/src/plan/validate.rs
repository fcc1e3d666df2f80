//! Checks a plan's meaning once its shape is known: names unique and
//! referenced names existing, weights sensible; each phase's load for its
//! model and its step mix in `phase.rs`; the SLO rules in `slo_rules.rs`.

use std::collections::HashSet;
use std::time::Duration;

use super::limits::{MAX_BODY_BYTES, MAX_FAULTS, MAX_HEADERS, MAX_HEADER_BYTES, MAX_PHASES, MAX_SLOS, MAX_STEPS};
use super::{BuiltinTarget, Model, Plan, Request, MAX_CHECKS, MAX_CHECKS_PER_STEP};

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
    check_settings(plan)?;
    if let Some(b) = &plan.builtin_target {
        check_builtin_target(b)?;
    }
    check_phases(plan)?;
    check_steps(plan)?;
    super::phase::check_phase_steps(plan)?;
    super::flow::validate_flows(plan)?;
    check_checks(plan)?;
    super::fault::validate_faults(plan)?;
    super::probe::validate_probes(plan)?;
    super::slo_rules::validate_slos(plan)?;
    super::abort::validate_abort_rules(plan)?;
    Ok(())
}

fn fail(path: impl Into<String>, msg: &str) -> Result<(), (String, String)> {
    Err((path.into(), msg.to_string()))
}

/// The plan's name, target, TLS, agent count, interval and timeout.
fn check_settings(plan: &Plan) -> Result<(), (String, String)> {
    if plan.name.trim().is_empty() {
        return fail("name", "must not be empty");
    }
    check_target(&plan.target).map_err(|m| ("target".to_string(), m))?;
    super::tls::validate_tls(plan)?;
    if plan.agents.count == Some(0) {
        return fail("agents.count", "must be at least 1");
    }
    if plan.interval.as_duration() < std::time::Duration::from_millis(100) {
        return fail("interval", "must be at least 100ms");
    }
    if plan.interval.as_duration() > MAX_INTERVAL {
        return fail("interval", "must be at most 1h");
    }
    if plan.timeout.as_duration().is_zero() {
        return fail("timeout", "must be more than 0s");
    }
    if plan.timeout.as_duration() > MAX_TIMEOUT {
        return fail("timeout", "must be at most 1h, the longest latency stampede records");
    }
    Ok(())
}

/// The built-in target's latency range, stalls, windows and required header.
fn check_builtin_target(b: &BuiltinTarget) -> Result<(), (String, String)> {
    if let (Some(lo), Some(hi)) = (b.latency, b.latency_max) {
        if hi < lo {
            return fail("builtin_target.latency_max", "must not be below `latency`");
        }
    }
    if let Some(s) = b.stall {
        if s.every.as_duration().is_zero() || s.hold >= s.every {
            return fail("builtin_target.stall.hold", "must be shorter than `every`, which must be more than 0s");
        }
    }
    check_target_windows(b)?;
    if let Some(h) = &b.require_header {
        let token = !h.name.is_empty() && h.name.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        if !token {
            return fail("builtin_target.require_header.name", "is not a valid header name");
        }
        if h.value.sent().contains(['\r', '\n']) {
            return fail("builtin_target.require_header.value", "must not contain line breaks");
        }
    }
    Ok(())
}

/// At least one phase, within the counts; names unique; each phase's load
/// (`phase.rs`); all of them together at most [`MAX_RUN`].
fn check_phases(plan: &Plan) -> Result<(), (String, String)> {
    if plan.phases.is_empty() {
        return fail("phases", "a plan needs at least one phase");
    }
    check_counts(plan)?;
    let mut names = HashSet::new();
    let mut total = Duration::ZERO;
    for (i, phase) in plan.phases.iter().enumerate() {
        let at = |field: &str| format!("phases[{i}].{field}");
        if phase.name.trim().is_empty() {
            return fail(at("name"), "must not be empty");
        }
        if !names.insert(phase.name.as_str()) {
            return fail(at("name"), &format!("phase `{}` is defined twice", phase.name));
        }
        super::phase::check_phase(i, phase)?;
        total = total.saturating_add(phase.length());
        if total > MAX_RUN {
            let field = if phase.load.model == Model::Iterations { "load.max_duration" } else { "duration" };
            return fail(at(field), "makes the phases add up to more than 365 days");
        }
    }
    Ok(())
}

/// At least one step; names unique; weights at least 1 and adding up
/// within `u32`; a data file named; each request (with the step's data
/// columns as template names).
fn check_steps(plan: &Plan) -> Result<(), (String, String)> {
    if plan.steps.is_empty() {
        return fail("steps", "a plan needs at least one step");
    }
    let mut names = HashSet::new();
    let mut weights = 0u32;
    for (i, step) in plan.steps.iter().enumerate() {
        let at = |field: &str| format!("steps[{i}].{field}");
        if step.name.trim().is_empty() {
            return fail(at("name"), "must not be empty");
        }
        if !names.insert(step.name.as_str()) {
            return fail(at("name"), &format!("step `{}` is defined twice", step.name));
        }
        if step.weight == 0 {
            return fail(at("weight"), "must be at least 1 (remove the step to leave it out)");
        }
        weights = match weights.checked_add(step.weight) {
            Some(w) => w,
            None => return fail(at("weight"), "makes the weights add up to more than 4294967295"),
        };
        if step.data.as_ref().is_some_and(|d| d.file.trim().is_empty()) {
            return fail(at("data.file"), "must name a CSV or JSON lines file");
        }
        let names = super::template::Names { captures: &[], data: step.data_columns() };
        check_request_with(&step.request, &names).map_err(|(field, m)| (at(&format!("request{field}")), m))?;
    }
    Ok(())
}

/// A request's method, path, headers and body (a step's or a probe's):
/// `Err((field under `request`, message))`, the field starting with `.`.
pub(super) fn check_request(r: &Request) -> Result<(), (String, String)> {
    check_request_with(r, &super::template::Names::default())
}

/// [`check_request`] for a step's or flow's request: `names` are what its
/// templates may use besides the built-in ones (captures, data columns).
pub(super) fn check_request_with(r: &Request, names: &super::template::Names<'_>) -> Result<(), (String, String)> {
    let parse = |s: &str| super::template::parse_with(s, names);
    let fail = |field: &str, msg: &str| Err((field.to_string(), msg.to_string()));
    let method = &r.method;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return fail(".method", "must be an upper-case HTTP method such as GET or POST");
    }
    // Templates (`template.rs`) parse here; the checks below see each as `0`.
    let path = parse(&r.path).map_err(|m| (".path".to_string(), m))?;
    let path = super::template::sample(&path);
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace()) {
        return fail(".path", "must start with `/` and contain no spaces");
    }
    if let Some(super::Text::Plain(body)) = &r.body {
        parse(body).map_err(|m| (".body".to_string(), m))?;
    }
    if r.headers.len() > MAX_HEADERS {
        return fail(".headers", &format!("has {} headers; a request may have at most {MAX_HEADERS}", r.headers.len()));
    }
    if let Some(body) = r.body.as_ref().map(super::Text::sent) {
        if body.len() > MAX_BODY_BYTES {
            return fail(".body", &format!("is {} bytes; a body may be at most {MAX_BODY_BYTES} bytes (256 KiB)", body.len()));
        }
    }
    for (name, value) in &r.headers {
        // A secret not resolved yet reads as empty here; its value is checked when it is filled.
        // A secret is never templated; a plain value is, and is checked as rendered with `0`s.
        let value = match value {
            super::Text::Plain(v) => parse(v).map(|p| super::template::sample(&p)).map_err(|m| (format!(".headers.{name}"), m))?,
            secret => secret.sent().to_string(),
        };
        if name.len() + value.len() > MAX_HEADER_BYTES {
            return fail(".headers", &format!("a header is {} bytes; a header's name and value may be at most {MAX_HEADER_BYTES} bytes", name.len() + value.len()));
        }
        if name.contains(['\r', '\n']) {
            return fail(".headers", &format!("header name `{name}` must not contain line breaks"));
        }
        let token = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return fail(&format!(".headers.{name}"), "is not a valid header name");
        }
        if value.contains(['\r', '\n']) {
            return fail(&format!(".headers.{name}"), "must not contain line breaks");
        }
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("host") {
            return fail(&format!(".headers.{name}"), "is set by stampede itself");
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return fail(&format!(".headers.{name}"), "is not supported: stampede sends a body with Content-Length");
        }
    }
    Ok(())
}

/// Every check says one thing that parses, under a name unique in the plan.
fn check_checks(plan: &Plan) -> Result<(), (String, String)> {
    let mut names = HashSet::new();
    let mut count = 0usize;
    // Steps', probes', then flow requests' checks: the order of `Plan::check_names`.
    let steps = plan.steps.iter().enumerate().map(|(i, s)| (format!("steps[{i}]"), &s.checks));
    let probes = plan.probes.iter().enumerate().map(|(i, p)| (format!("probes[{i}]"), &p.checks));
    let flows = plan.steps.iter().enumerate().flat_map(|(i, s)| s.flow.iter().flatten().enumerate().map(move |(j, r)| (format!("steps[{i}].flow[{j}]"), &r.checks)));
    for (owner, checks) in steps.chain(probes).chain(flows) {
        for (j, check) in checks.iter().enumerate() {
            let at = |field: &str| format!("{owner}.checks[{j}].{field}");
            count += 1;
            if j >= MAX_CHECKS_PER_STEP {
                return Err((at("name"), format!("is one check too many; a step may have at most {MAX_CHECKS_PER_STEP}")));
            }
            if count > MAX_CHECKS {
                return Err((at("name"), format!("is one check too many; a plan may have at most {MAX_CHECKS}")));
            }
            if check.name.trim().is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if !names.insert(check.name.as_str()) {
                return Err((at("name"), format!("check `{}` is defined twice (check names are unique across the plan)", check.name)));
            }
            check.kind().map_err(|(field, m)| (at(field), m))?;
        }
    }
    Ok(())
}

/// Each window lasts, and does one thing; statuses are statuses.
fn check_target_windows(b: &BuiltinTarget) -> Result<(), (String, String)> {
    let status_ok = |s: u16| (100..=599).contains(&s);
    for (i, w) in b.windows.iter().enumerate() {
        let at = |field: &str| format!("builtin_target.windows[{i}].{field}");
        if w.length.as_duration().is_zero() {
            return Err((at("for"), "must be more than 0s".into()));
        }
        let actions = [w.status.is_some(), w.stall == Some(true), w.refuse == Some(true)].iter().filter(|on| **on).count();
        if actions != 1 {
            return Err((at("at"), "a window does exactly one of `status: CODE`, `stall: true`, `refuse: true`".into()));
        }
        if w.status.is_some_and(|s| !status_ok(s)) {
            return Err((at("status"), "must be an HTTP status, 100..=599".into()));
        }
    }
    if let Some(p) = b.after_pause {
        if p.length.as_duration().is_zero() {
            return Err(("builtin_target.after_pause.for".into(), "must be more than 0s".into()));
        }
        if !status_ok(p.status) {
            return Err(("builtin_target.after_pause.status".into(), "must be an HTTP status, 100..=599".into()));
        }
    }
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

/// A base URL, `http://host[:port]` or `https://host[:port]`.
fn check_target(target: &str) -> Result<(), String> {
    let Some(rest) = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://")) else {
        return Err(format!("`{target}` is not an http:// or https:// URL"));
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
