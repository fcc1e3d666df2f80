//! Flows (docs/plan.md, "Flows"): a step whose `flow` is a list of named
//! requests sent in order in one user's session — cookies kept, values
//! captured from a response (`capture`) and used as `{{name}}` by the
//! requests after it, a request repeated until a check holds
//! (`repeat_until`, else the flow fails as `stuck`).
//!
//! Stats (contract F): the flow as a whole is recorded under its step's own
//! index, so reports, `step:` scopes and the judge see one request per
//! flow. Flow request k of the plan (in [`Plan::flow_requests`] order) is
//! recorded as step `steps + probes + k` in phase `phases + 1 + phase`:
//! beyond the load's phases and the probes' (`phases`), so every total of
//! the load leaves it out, and a flow's requests are never counted twice.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{Check, Expect, JsonCheck, Plan, Request, Step, MAX_CHECKS_PER_STEP};
use crate::units::Dur;

/// Most requests one flow may have.
pub const MAX_FLOW_REQUESTS: usize = 32;
/// Most flow requests a plan may have.
pub const MAX_PLAN_FLOW_REQUESTS: usize = 1_000;

/// One named request of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRequest {
    /// Unique in its flow, without `/`: reported as `STEP/NAME`.
    pub name: String,
    #[serde(default)]
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// Values taken from this request's response, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, Capture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_until: Option<RepeatUntil>,
}

/// Where a captured value comes from: exactly one of a JSON path into the
/// body, a response header, or a regex's first group over the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A capture once its fields are known to be consistent.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureKind {
    /// A singular JSON path (no comparison): a string is taken as is,
    /// any other value as its JSON text.
    Json(JsonCheck),
    /// The first header of that (lower-case) name.
    Header(String),
    /// The first match's first group.
    Regex(String),
}

impl Capture {
    pub fn kind(&self) -> Result<CaptureKind, String> {
        match (&self.json, &self.header, &self.regex) {
            (Some(j), None, None) => {
                let parsed = JsonCheck::parse(j)?;
                if parsed.compare.is_some() {
                    return Err(format!("`{j}`: a capture takes a path alone (`$.token`), no comparison"));
                }
                Ok(CaptureKind::Json(parsed))
            }
            (None, Some(h), None) => {
                if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                    return Err(format!("`{}` is not a header name", super::printable(h)));
                }
                Ok(CaptureKind::Header(h.to_ascii_lowercase()))
            }
            (None, None, Some(re)) => {
                let compiled = regex::Regex::new(re).map_err(|e| format!("`{}` is not a regex: {e}", super::printable(re)))?;
                if compiled.captures_len() < 2 {
                    return Err(format!("`{}` has no group: the value captured is its first group, e.g. `id=(\\d+)`", super::printable(re)));
                }
                Ok(CaptureKind::Regex(re.clone()))
            }
            _ => Err("a capture takes exactly one of `json`, `header`, `regex`".into()),
        }
    }
}

/// `repeat_until: { checks: ..., every: 500ms, for: 30s }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatUntil {
    /// One check or a list: the request is repeated until all hold.
    pub checks: OneOrMany,
    /// From one attempt's start to the next one's.
    pub every: Dur,
    /// Longest time from the first attempt's start; then the flow is `stuck`.
    #[serde(rename = "for")]
    pub within: Dur,
}

/// A check or a list of checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    Many(Vec<Check>),
    One(Box<Check>),
}

/// By hand rather than `untagged`: serde's untagged buffering loses the
/// loader's coercions (`status: 200` as a number) and the field path of an
/// error inside; a map or a list is read straight from the loader.
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a check or a list of checks")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<OneOrMany, A::Error> {
                Vec::<Check>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<OneOrMany, A::Error> {
                Check::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|c| OneOrMany::One(Box::new(c)))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[Check] {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(c) => std::slice::from_ref(c),
        }
    }
}

impl Plan {
    /// Every flow request of the plan with its step's index, in flow slot
    /// order (steps in order, each flow's requests in order).
    pub fn flow_requests(&self) -> impl Iterator<Item = (usize, &FlowRequest)> {
        self.steps.iter().enumerate().flat_map(|(i, s)| s.flow.iter().flatten().map(move |r| (i, r)))
    }

    pub fn has_flows(&self) -> bool {
        self.steps.iter().any(|s| s.flow.is_some())
    }

    /// The step index flow slot 0 is recorded under (contract F).
    pub fn flow_slot_base(&self) -> usize {
        self.steps.len() + self.probes.len()
    }

    /// The phase index a flow request sent in phase `phase` is recorded under.
    pub fn flow_phase(&self, phase: usize) -> u32 {
        (self.phases.len() + 1 + phase) as u32
    }

    /// The flow slot of step `step`'s first request.
    pub fn first_flow_slot(&self, step: usize) -> usize {
        self.steps[..step].iter().map(|s| s.flow.as_ref().map_or(0, Vec::len)).sum()
    }

    /// The plan-wide index of the first check of flow slot `slot` (`check_names`).
    pub fn flow_check_base(&self, slot: usize) -> u32 {
        let before: usize = self.steps.iter().map(|s| s.checks.len()).sum::<usize>() + self.probes.iter().map(|p| p.checks.len()).sum::<usize>();
        (before + self.flow_requests().take(slot).map(|(_, r)| r.checks.len()).sum::<usize>()) as u32
    }

    /// Each flow slot's name, `STEP/REQUEST`.
    pub fn flow_slot_names(&self) -> Vec<String> {
        self.flow_requests().map(|(i, r)| format!("{}/{}", self.steps[i].name, r.name)).collect()
    }

    /// The step index a `step:NAME` scope means: a step's, or for
    /// `STEP/REQUEST` a flow request's recorded index (contract F).
    pub fn stat_step_index(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.step_index(name) {
            return Some(i);
        }
        self.flow_slot_names().iter().position(|n| n == name).map(|k| self.flow_slot_base() + k)
    }

    /// The longest one recorded request may last: the plan's `timeout`,
    /// or a flow's requests one after the other (each at most a timeout; a
    /// `repeat_until`'s last attempt starts within its `for`). Everything
    /// sized by "a request lasts at most a timeout" — late completions, when
    /// an interval is final, the drain at the end, the run's deadline, the
    /// default in-flight bound — uses this; without flows it is `timeout`.
    pub fn longest_request(&self) -> std::time::Duration {
        let t = self.timeout.as_duration();
        let flow = |f: &Vec<FlowRequest>| f.iter().map(|r| r.repeat_until.as_ref().map_or(t, |u| u.within.as_duration() + t)).sum();
        self.steps.iter().filter_map(|s| s.flow.as_ref()).map(flow).fold(t, std::time::Duration::max)
    }

    /// How many (phase, step) indices a worker records: just the plan's,
    /// or with flows the flow requests' too (contract F).
    pub fn recorded_shape(&self) -> (usize, usize) {
        match self.flow_requests().count() {
            0 => (self.phases.len(), self.steps.len()),
            n => (2 * self.phases.len() + 1, self.flow_slot_base() + n),
        }
    }
}

/// A flow step's shape and every flow request: names, requests (with the
/// captures known at that point), captures, `repeat_until`.
pub(super) fn validate_flows(plan: &Plan) -> Result<(), (String, String)> {
    let mut total = 0usize;
    for (i, step) in plan.steps.iter().enumerate() {
        let Some(flow) = &step.flow else { continue };
        let at = |field: &str| format!("steps[{i}].{field}");
        validate_flow_step(step).map_err(|(f, m)| (at(&f), m))?;
        total += flow.len();
        if total > MAX_PLAN_FLOW_REQUESTS {
            return Err((at("flow"), format!("makes {total} flow requests; a plan may have at most {MAX_PLAN_FLOW_REQUESTS}")));
        }
    }
    Ok(())
}

fn validate_flow_step(step: &Step) -> Result<(), (String, String)> {
    let flow = step.flow.as_deref().unwrap_or_default();
    let fail = |f: &str, m: String| Err((f.to_string(), m));
    if step.request != Request::default() {
        return fail("request", "a step has either `request` or `flow`, not both".into());
    }
    if step.expect.is_some() || !step.checks.is_empty() {
        let field = if step.expect.is_some() { "expect" } else { "checks" };
        return fail(field, "a flow step has none: put `expect` and `checks` on the flow's requests".into());
    }
    if flow.is_empty() {
        return fail("flow", "a flow needs at least one request".into());
    }
    if flow.len() > MAX_FLOW_REQUESTS {
        return fail("flow", format!("has {} requests; a flow may have at most {MAX_FLOW_REQUESTS}", flow.len()));
    }
    let all: Vec<(usize, &String)> = flow.iter().enumerate().flat_map(|(j, r)| r.capture.keys().map(move |n| (j, n))).collect();
    let mut names = HashSet::new();
    let mut known: Vec<String> = Vec::new();
    for (j, r) in flow.iter().enumerate() {
        let at = |field: &str| format!("flow[{j}].{field}");
        if r.name.trim().is_empty() || r.name.contains('/') {
            return fail(&at("name"), "must not be empty nor contain `/` (the request is reported as `STEP/NAME`)".into());
        }
        if !names.insert(r.name.as_str()) {
            return fail(&at("name"), format!("request `{}` is defined twice in this flow", super::printable(&r.name)));
        }
        super::validate::check_request_with(&r.request, &super::template::Names { captures: &known, data: step.data_columns() }).map_err(|(field, m)| {
            // A name captured by this or a later request: say so, not "unknown".
            let later = all.iter().find(|(k, n)| *k >= j && m.contains(&format!("`{{{{{n}}}}}`")));
            let m = match later {
                Some((k, n)) => format!("`{{{{{n}}}}}` is captured by `{}`, not before this request: a capture can be used only by the requests after it", flow[*k].name),
                None => m,
            };
            (at(&format!("request{field}")), m)
        })?;
        for (name, capture) in &r.capture {
            let field = at(&format!("capture.{name}"));
            let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ident {
                return fail(&field, format!("`{}` is not a capture name: letters, digits and `_`, not starting with a digit", super::printable(name)));
            }
            if super::template::RESERVED.contains(&name.as_str()) {
                return fail(&field, format!("`{name}` is a built-in template; choose another name"));
            }
            if known.contains(name) {
                return fail(&field, format!("`{name}` is captured twice in this flow"));
            }
            capture.kind().map_err(|m| (field.clone(), m))?;
        }
        if let Some(u) = &r.repeat_until {
            if u.every.as_duration().is_zero() {
                return fail(&at("repeat_until.every"), "must be more than 0s".into());
            }
            if u.within < u.every {
                return fail(&at("repeat_until.for"), "must be at least `every`".into());
            }
            let checks = u.checks.as_slice();
            if checks.is_empty() || checks.len() > MAX_CHECKS_PER_STEP {
                return fail(&at("repeat_until.checks"), format!("takes 1 to {MAX_CHECKS_PER_STEP} checks"));
            }
            for (k, c) in checks.iter().enumerate() {
                let field = match &u.checks {
                    OneOrMany::One(_) => "repeat_until.checks".to_string(),
                    OneOrMany::Many(_) => format!("repeat_until.checks[{k}]"),
                };
                c.kind().map_err(|(f, m)| (at(&format!("{field}.{f}")), m))?;
            }
        }
        known.extend(r.capture.keys().cloned());
    }
    Ok(())
}

/// The capture names of a flow in the order their values are kept:
/// [`super::template::Var::Capture`] indexes this list.
pub fn capture_names(flow: &[FlowRequest]) -> Vec<String> {
    flow.iter().flat_map(|r| r.capture.keys().cloned()).collect()
}

#[cfg(test)]
mod tests {
    use crate::plan::{load_str, Format};

    const HEAD: &str = "name: t\ntarget: http://127.0.0.1:1\nphases: [{ name: p, duration: 1s, load: { model: closed, concurrency: 1 } }]\nsteps:\n";

    fn load(steps: &str) -> Result<crate::plan::Plan, String> {
        load_str(&format!("{HEAD}{steps}"), Format::Yaml, std::path::Path::new("f.yaml")).map_err(|e| e.to_string())
    }

    const LOGIN: &str = r#"  - name: login_flow
    flow:
      - name: login
        request: { method: POST, path: /login, body: '{"user":"u{{worker}}"}' }
        capture: { token: { json: "$.token" }, where: { header: location } }
      - name: me
        request: { path: /me, headers: { authorization: "Bearer {{token}}" } }
        checks: [{ name: me-ok, status: 200 }]
      - name: poll
        request: { path: "/jobs/{{token}}" }
        repeat_until: { checks: { name: done, json: '$.status == "done"' }, every: 500ms, for: 30s }
"#;

    #[test]
    fn a_flow_loads_and_its_slots_are_named() {
        let plan = load(&format!("  - name: plain\n{LOGIN}")).unwrap();
        assert_eq!(plan.flow_slot_names(), ["login_flow/login", "login_flow/me", "login_flow/poll"]);
        assert_eq!(plan.stat_step_index("login_flow/poll"), Some(2 + 2));
        assert_eq!(plan.stat_step_index("plain"), Some(0));
        assert_eq!(plan.recorded_shape(), (3, 2 + 3));
        // login, me (a timeout each), poll (30 s of attempts and its last one's timeout).
        assert_eq!(plan.longest_request(), std::time::Duration::from_secs(10 + 10 + 30 + 10));
        assert_eq!(plan.check_names(), ["me-ok"]);
        assert_eq!(plan.flow_check_base(1), 0);
        assert_eq!(plan.first_flow_slot(1), 0);
        assert_eq!(super::capture_names(plan.steps[1].flow.as_ref().unwrap()), ["token", "where"]);
        let mut without = plan.clone();
        without.steps.truncate(1);
        assert_eq!(without.recorded_shape(), (1, 1));
    }

    #[test]
    fn a_flow_plan_survives_the_trip_to_the_agents() {
        // The coordinator sends the plan as JSON; one check or a list of them
        // comes back as written.
        let plan = load(LOGIN).unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        let back: crate::plan::Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
        let many = load(&LOGIN.replace("checks: { name: done, json: '$.status == \"done\"' }", "checks: [{ name: done, json: '$.status == \"done\"' }, { name: ok, status: 200 }]")).unwrap();
        let until = many.steps[0].flow.as_ref().unwrap()[2].repeat_until.as_ref().unwrap();
        assert_eq!(until.checks.as_slice().len(), 2);
        assert_eq!(serde_json::from_str::<crate::plan::Plan>(&serde_json::to_string(&many).unwrap()).unwrap(), many);
    }

    #[test]
    fn bad_flows_name_the_field() {
        let cases = [
            (LOGIN.replace("{{token}}\" }", "{{tokn}}\" }"), "f.yaml:11: steps[0].flow[1].request.headers.authorization: `{{tokn}}` is not a known template"),
            (LOGIN.replace("where: {", "seq: {"), "steps[0].flow[0].capture.seq: `seq` is a built-in template"),
            (LOGIN.replace("name: me\n", "name: login\n"), "steps[0].flow[1].name: request `login` is defined twice"),
            (LOGIN.replace("{ json: \"$.token\" }", "{ json: \"$.token\", header: x }"), "steps[0].flow[0].capture.token: a capture takes exactly one of"),
            (LOGIN.replace("{ json: \"$.token\" }", "{ regex: \"id=\\\\d+\" }"), "has no group"),
            (LOGIN.replace("every: 500ms", "every: 0s"), "steps[0].flow[2].repeat_until.every: must be more than 0s"),
            (LOGIN.replace("json: '$.status == \"done\"'", "json: 'status'"), "steps[0].flow[2].repeat_until.checks.json"),
            (LOGIN.replace("    flow:\n", "    request: { path: /x }\n    flow:\n"), "steps[0].request: a step has either `request` or `flow`, not both"),
            ("  - name: f\n    flow: []\n".to_string(), "steps[0].flow: a flow needs at least one request"),
            (LOGIN.replace("checks: { name: done,", "checks: { name: done, nope: 1,"), "f.yaml:15: steps[0].flow[2].repeat_until.checks.nope: unknown field"),
        ];
        for (steps, want) in cases {
            let e = load(&steps).unwrap_err();
            assert!(e.contains(want), "{e}\nwanted: {want}");
        }
    }

    #[test]
    fn a_capture_used_before_it_is_captured_says_so() {
        let steps = LOGIN.replace("path: /login, body", "path: \"/login/{{where}}\", body");
        let e = load(&steps).unwrap_err();
        assert!(e.contains("f.yaml:8: steps[0].flow[0].request.path: `{{where}}` is captured by `login`, not before this request"), "{e}");
    }

    #[test]
    fn flow_request_checks_share_the_plan_wide_names() {
        let steps = format!("  - name: s\n    checks: [{{ name: me-ok, status: 200 }}]\n{LOGIN}");
        let e = load(&steps).unwrap_err();
        assert!(e.contains("steps[1].flow[1].checks[0].name: check `me-ok` is defined twice"), "{e}");
    }
}
