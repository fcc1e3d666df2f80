//! Probes and the steady state: requests on a fixed cadence, beside the
//! load, and the hypothesis a drill must hold before and after its faults.
//!
//! ```yaml
//! probes:
//!   - name: health
//!     every: 1s                 # cadence, per agent that runs it
//!     request: { path: /health }
//!     expect: { status: "200" } # optional; default: a status below 400
//!     agents: 1                 # the first N agents of the run (by index)
//! steady_state:
//!   probes: [health]            # must hold before any load or fault, and after
//!   within: 10s                 # retried every second up to this long
//! faults:
//!   - name: api-down
//!     unless_unhealthy: skip    # or abort: run the steady state just before applying
//! ```

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Expect, Plan, Request};
use crate::units::Dur;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub name: String,
    /// One request this often, on each agent that runs the probe.
    pub every: Dur,
    #[serde(default)]
    pub request: Request,
    /// Statuses that count as success (default: below 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// Checks on the response (as a step's, `check.rs`): a probe request
    /// whose status is accepted but that fails one fails as `check`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<super::Check>,
    /// How many of the run's agents run it: the first ones by index.
    #[serde(default = "one")]
    pub agents: u32,
    /// Per-request timeout; default: the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

fn one() -> u32 {
    1
}

/// Chaos Toolkit's steady-state hypothesis: these probes succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteadyState {
    /// Names of probes of the plan.
    pub probes: Vec<String>,
    /// How long the hypothesis may take to hold: it is tried every second up
    /// to this long before the run is refused (before) or failed (after).
    #[serde(default = "default_within")]
    pub within: Dur,
}

fn default_within() -> Dur {
    Dur::from_secs(10)
}

/// What a fault with `unless_unhealthy` does when the steady state does not
/// hold just before it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlessUnhealthy {
    /// Leave the fault out (status `skipped`); the run goes on.
    Skip,
    /// Stop the run: load stopped, every fault reverted, verdict `fail`.
    Abort,
}

impl UnlessUnhealthy {
    pub fn as_str(self) -> &'static str {
        match self {
            UnlessUnhealthy::Skip => "skip",
            UnlessUnhealthy::Abort => "abort",
        }
    }
}

/// Probe step indices start after the plan's steps; their phase index is
/// the plan's phase count (contract P).
impl Plan {
    /// The plan-wide index of probe `i`'s first check (`Plan::check_names`).
    pub fn probe_check_base(&self, i: usize) -> u32 {
        let steps: usize = self.steps.iter().map(|s| s.checks.len()).sum();
        (steps + self.probes[..i].iter().map(|p| p.checks.len()).sum::<usize>()) as u32
    }

    /// The phase index every probe record carries.
    pub fn probe_phase(&self) -> u32 {
        self.phases.len() as u32
    }

    /// The step index of probe `i`'s records.
    pub fn probe_step(&self, i: usize) -> u32 {
        (self.steps.len() + i) as u32
    }

    pub fn probe_index(&self, name: &str) -> Option<usize> {
        self.probes.iter().position(|p| p.name == name)
    }

    /// When the probes stop, from the run's start: after the last phase, and
    /// one `every` after the last fault window ends (so a drill sees the
    /// service recover), whichever is later.
    pub fn probe_end(&self, probe: &Probe) -> Duration {
        let faults_end = self.faults.iter().map(|f| f.at.as_duration() + f.duration.as_duration()).max();
        let after_faults = faults_end.map_or(Duration::ZERO, |end| end + probe.every.as_duration());
        self.duration().max(after_faults)
    }

    /// How long the run measures: its phases, or longer while probes run.
    pub fn measured_duration(&self) -> Duration {
        self.probes.iter().map(|p| self.probe_end(p)).fold(self.duration(), Duration::max)
    }
}

/// Most probes a plan may have.
pub const MAX_PROBES: usize = 100;
/// Most agents a probe may run on: each of them sends its requests.
const MAX_PROBE_AGENTS: u32 = 1_000;

pub(super) fn validate_probes(plan: &Plan) -> Result<(), (String, String)> {
    if plan.probes.len() > MAX_PROBES {
        return Err(("probes".into(), format!("has {} entries; a plan may have at most {MAX_PROBES}", plan.probes.len())));
    }
    let mut names = HashSet::new();
    for (i, p) in plan.probes.iter().enumerate() {
        let at = |field: &str| format!("probes[{i}].{field}");
        if p.name.trim().is_empty() {
            return Err((at("name"), "must not be empty".into()));
        }
        if !names.insert(p.name.as_str()) {
            return Err((at("name"), format!("probe `{}` is defined twice", p.name)));
        }
        if plan.step_index(&p.name).is_some() {
            return Err((at("name"), format!("`{}` already names a step; a probe's name must differ from every step's", p.name)));
        }
        if p.every.as_duration() < Duration::from_millis(100) {
            return Err((at("every"), "must be at least 100ms".into()));
        }
        if p.agents == 0 || p.agents > MAX_PROBE_AGENTS {
            return Err((at("agents"), format!("must be 1–{MAX_PROBE_AGENTS} (how many of the run's agents run the probe)")));
        }
        if let Some(t) = p.timeout {
            if t.as_duration().is_zero() || t.as_duration() > plan.timeout.as_duration() {
                // The run's timeline waits one plan `timeout` for late answers.
                return Err((at("timeout"), format!("must be more than 0s and at most the plan's `timeout` ({}), which is how long the run waits for late answers", plan.timeout)));
            }
        }
        super::validate::check_request(&p.request).map_err(|(field, m)| (at(&format!("request{field}")), m))?;
    }
    if let Some(s) = &plan.steady_state {
        if s.probes.is_empty() {
            return Err(("steady_state.probes".into(), "names no probe: list the probes that must succeed".into()));
        }
        for (i, name) in s.probes.iter().enumerate() {
            if plan.probe_index(name).is_none() {
                return Err((format!("steady_state.probes[{i}]"), format!("there is no probe `{name}` (define it under `probes`)")));
            }
        }
        if s.within.as_duration() < Duration::from_secs(1) || s.within.as_duration() > Duration::from_secs(3600) {
            return Err(("steady_state.within".into(), "must be 1s–1h".into()));
        }
    }
    for (i, f) in plan.faults.iter().enumerate() {
        if f.unless_unhealthy.is_some() && plan.steady_state.is_none() {
            return Err((format!("faults[{i}].unless_unhealthy"), "needs a `steady_state` in the plan to check".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::plan::{load_str, Format};

    const BASE: &str = "name: p\ntarget: http://127.0.0.1:9\nphases:\n  - { name: a, duration: 10s, load: { model: open, rate: 1/s } }\nsteps:\n  - { name: s }\n";

    fn load(extra: &str) -> Result<crate::plan::Plan, String> {
        load_str(&format!("{BASE}{extra}"), Format::Yaml, std::path::Path::new("p.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn probes_and_a_steady_state_that_name_each_other_load() {
        let plan = load(
            "probes:\n  - { name: health, every: 1s, request: { path: /health } }\nsteady_state: { probes: [health] }\nfaults:\n  - { name: f, kind: cpu, at: 8s, duration: 2s, cpu: { workers: 1 }, unless_unhealthy: abort }\n",
        )
        .unwrap();
        assert_eq!((plan.probe_phase(), plan.probe_step(0)), (1, 1));
        assert_eq!(plan.steady_state.as_ref().unwrap().within.as_duration(), Duration::from_secs(10));
        // The probe runs one `every` past the last fault's end (10 s), past the phases.
        assert_eq!(plan.probe_end(&plan.probes[0]), Duration::from_secs(11));
        assert_eq!(plan.measured_duration(), Duration::from_secs(11));
    }

    #[test]
    fn bad_probes_and_steady_states_are_refused_naming_the_field() {
        let cases = [
            ("probes:\n  - { name: s, every: 1s }\n", "p.yaml:8: probes[0].name: `s` already names a step"),
            ("probes:\n  - { name: h, every: 1s }\n  - { name: h, every: 2s }\n", "p.yaml:9: probes[1].name: probe `h` is defined twice"),
            ("probes:\n  - { name: h, every: 10ms }\n", "p.yaml:8: probes[0].every: must be at least 100ms"),
            ("probes:\n  - { name: h, every: 1s, agents: 0 }\n", "p.yaml:8: probes[0].agents: must be 1–1000"),
            ("probes:\n  - { name: h, every: 1s, request: { path: health } }\n", "p.yaml:8: probes[0].request.path: must start with `/`"),
            ("probes:\n  - { name: h, every: 1s }\nsteady_state: { probes: [x] }\n", "p.yaml:9: steady_state.probes[0]: there is no probe `x`"),
            (
                "faults:\n  - { name: f, kind: cpu, at: 1s, duration: 1s, cpu: { workers: 1 }, unless_unhealthy: skip }\n",
                "p.yaml:8: faults[0].unless_unhealthy: needs a `steady_state`",
            ),
        ];
        for (extra, want) in cases {
            let e = load(extra).expect_err(want);
            assert!(e.starts_with(want), "{e}\nwanted: {want}");
        }
    }
}
