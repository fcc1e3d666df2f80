//! What a phase does: its load for each model (open, closed, iterations)
//! and the steps it sends (`phases[i].steps`, the per-phase mix). The model
//! is in `model.rs`; here are the checks serde cannot express and the
//! helpers the coordinator and agents both read, so they agree.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::limits::{MAX_CONCURRENCY, MAX_RATE};
use super::{Load, Model, Phase, Plan, MAX_BATCH_WINDOW};

/// Most iterations one phase may ask for, fleet-wide: each is a request
/// (and later a flow), counted exactly. `1e12` is a typo, not a test.
pub const MAX_ITERATIONS: u64 = 1_000_000_000;

/// One entry of `phases[i].steps`: a step's name (with the step's own
/// weight), or `{ name, weight }` (this phase's weight for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a step's name, or `{ name: STEP, weight: N }`")]
pub enum PhaseStep {
    Name(String),
    Weighted {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u32>,
    },
}

impl PhaseStep {
    pub fn name(&self) -> &str {
        match self {
            PhaseStep::Name(n) | PhaseStep::Weighted { name: n, .. } => n,
        }
    }
    fn weight(&self) -> Option<u32> {
        match self {
            PhaseStep::Name(_) => None,
            PhaseStep::Weighted { weight, .. } => *weight,
        }
    }
}

impl Load {
    /// An iterations phase's requests in total over the fleet: `count`, or
    /// `per_worker × concurrency`. `None` for the other models.
    pub fn iterations(&self) -> Option<u64> {
        if self.model != Model::Iterations {
            return None;
        }
        let per_worker = self.per_worker.map(|p| u64::from(p) * u64::from(self.concurrency.unwrap_or(0)));
        self.count.or(per_worker)
    }
}

impl Plan {
    /// The steps phase `phase` sends, as (step index, weight): the phase's
    /// own list, or every step of the plan with its own weight.
    /// Validation has checked every name.
    pub fn phase_steps(&self, phase: usize) -> Vec<(usize, u32)> {
        match self.phases.get(phase).and_then(|p| p.steps.as_ref()) {
            None => self.steps.iter().enumerate().map(|(i, s)| (i, s.weight)).collect(),
            Some(list) => list
                .iter()
                .filter_map(|e| {
                    let i = self.step_index(e.name())?;
                    Some((i, e.weight().unwrap_or(self.steps[i].weight)))
                })
                .collect(),
        }
    }
}

/// Phase `i`'s duration and load, for its model: `Err((field path, message))`.
pub(super) fn check_phase(i: usize, phase: &Phase) -> Result<(), (String, String)> {
    let at = |field: &str| format!("phases[{i}].{field}");
    let err = |field: &str, msg: &str| Err((at(field), msg.to_string()));
    let load = &phase.load;
    if load.model == Model::Iterations {
        if phase.duration.is_some() {
            return err("duration", "an iterations phase lasts until its count is done, at most its `load.max_duration`: write the limit there");
        }
        match load.max_duration {
            None => return err("load.max_duration", "an iterations phase needs `max_duration`, its length on the run's timeline (e.g. `60s`)"),
            Some(d) if d.as_duration().is_zero() => return err("load.max_duration", "must be more than 0s"),
            Some(_) => {}
        }
    } else {
        match phase.duration {
            None => return err("duration", "is required but missing"),
            Some(d) if d.as_duration().is_zero() => return err("duration", "must be more than 0s"),
            Some(_) => {}
        }
        for (field, set) in [("count", load.count.is_some()), ("per_worker", load.per_worker.is_some()), ("max_duration", load.max_duration.is_some())] {
            if set {
                return err(&format!("load.{field}"), &format!("belongs to the iterations model; the {} model does not take it", load.model));
            }
        }
    }
    match load.model {
        Model::Open => check_open(load).map_err(|(field, m)| (at(field), m)),
        Model::Closed | Model::Iterations => check_concurrent(load).map_err(|(field, m)| (at(field), m)),
    }
}

fn check_open(load: &Load) -> Result<(), (&'static str, String)> {
    match load.rate {
        None => return Err(("load.rate", "the open model needs a `rate`, e.g. `200/s`".into())),
        Some(r) if r.as_per_second() <= 0.0 && load.to.is_none_or(|t| t.as_per_second() <= 0.0) => {
            return Err(("load.rate", "must be more than 0/s (or ramp `to` a rate above 0)".into()))
        }
        Some(_) => {}
    }
    // `Rate` itself refuses NaN, infinities and negatives. `1e12/s` used to
    // be attempted, sent nothing and left a worker spinning (issue 8, item 10).
    for (field, rate) in [("load.rate", load.rate), ("load.to", load.to)] {
        if let Some(r) = rate.map(|r| r.as_per_second()).filter(|&r| r > MAX_RATE) {
            return Err((
                field,
                format!("{r}/s is more than stampede sends ({MAX_RATE}/s across the fleet): lower the rate, and spread large loads over more agents (one agent sends far less)"),
            ));
        }
    }
    if load.concurrency.is_some() {
        return Err(("load.concurrency", "belongs to the closed model (and the iterations model); the open model takes `rate`".into()));
    }
    if load.max_in_flight == Some(0) {
        return Err(("load.max_in_flight", "must be at least 1".into()));
    }
    if let Some(w) = load.batch_window.map(|w| w.as_duration()).filter(|&w| w > MAX_BATCH_WINDOW) {
        return Err((
            "load.batch_window",
            format!("{w:?} is more than {MAX_BATCH_WINDOW:?}: an arrival more than 10 ms late is a schedule miss, so a window is at most half of that"),
        ));
    }
    Ok(())
}

/// The closed and iterations models: `concurrency`, and for iterations
/// exactly one of `count` and `per_worker`.
fn check_concurrent(load: &Load) -> Result<(), (&'static str, String)> {
    let model = load.model;
    let concurrency = match load.concurrency {
        None => return Err(("load.concurrency", format!("the {model} model needs `concurrency`, e.g. 50"))),
        Some(0) => return Err(("load.concurrency", "must be at least 1".into())),
        Some(c) if c > MAX_CONCURRENCY => {
            return Err((
                "load.concurrency",
                format!("{c} connections is more than stampede keeps busy ({MAX_CONCURRENCY} across the fleet): lower it, and spread large loads over more agents (each connection takes an open file on one)"),
            ))
        }
        Some(c) => c,
    };
    for (field, set) in [("load.rate", load.rate.is_some()), ("load.to", load.to.is_some()), ("load.max_in_flight", load.max_in_flight.is_some()), ("load.batch_window", load.batch_window.is_some())] {
        if set {
            return Err((field, format!("belongs to the open model; the {model} model takes `concurrency`")));
        }
    }
    if model != Model::Iterations {
        return Ok(());
    }
    let total = match (load.count, load.per_worker) {
        (Some(_), Some(_)) => return Err(("load.per_worker", "an iterations phase takes `count` (in total) or `per_worker` (per connection), not both".into())),
        (None, None) => return Err(("load.count", "an iterations phase needs `count` (requests in total, e.g. 100) or `per_worker` (requests per connection)".into())),
        (Some(0), _) => return Err(("load.count", "must be at least 1".into())),
        (_, Some(0)) => return Err(("load.per_worker", "must be at least 1".into())),
        (Some(n), None) => ("load.count", n),
        (None, Some(p)) => ("load.per_worker", u64::from(p) * u64::from(concurrency)),
    };
    if total.1 > MAX_ITERATIONS {
        return Err((total.0, format!("asks for {} iterations, more than stampede counts in one phase ({MAX_ITERATIONS}): split it into several phases", total.1)));
    }
    Ok(())
}

/// Every phase's `steps` names existing steps, once each, with weights that
/// add up; an empty list is refused (leave `steps` out for every step).
pub(super) fn check_phase_steps(plan: &Plan) -> Result<(), (String, String)> {
    for (i, phase) in plan.phases.iter().enumerate() {
        let Some(list) = &phase.steps else { continue };
        if list.is_empty() {
            return Err((format!("phases[{i}].steps"), "names no step; leave `steps` out to send every step of the plan".into()));
        }
        let mut seen = HashSet::new();
        let mut weights = 0u32;
        for (j, entry) in list.iter().enumerate() {
            let at = |field: &str| format!("phases[{i}].steps[{j}]{field}");
            let Some(step) = plan.step_index(entry.name()) else {
                let known: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
                return Err((at(""), format!("no step is named `{}` (steps: {})", entry.name(), known.join(", "))));
            };
            if !seen.insert(step) {
                return Err((at(""), format!("step `{}` is named twice in this phase", entry.name())));
            }
            let weight = entry.weight().unwrap_or(plan.steps[step].weight);
            if weight == 0 {
                return Err((at(".weight"), "must be at least 1 (leave the step out of the phase instead)".into()));
            }
            weights = weights.checked_add(weight).ok_or_else(|| (at(".weight"), "makes this phase's weights add up to more than 4294967295".to_string()))?;
        }
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::plan::{load_str, Format};

    fn load(phases: &str) -> Result<crate::plan::Plan, String> {
        let text = format!("name: t\ntarget: http://127.0.0.1:1\nphases:\n{phases}steps:\n  - {{ name: read, weight: 2 }}\n  - {{ name: write }}\n");
        load_str(&text, Format::Yaml, Path::new("p.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn iterations_phases_load_and_count() {
        let p = load("  - { name: a, load: { model: iterations, count: 100, concurrency: 4, max_duration: 60s } }\n  - { name: b, load: { model: iterations, per_worker: 3, concurrency: 20, max_duration: 5s }, steps: [write, { name: read, weight: 5 }] }\n").unwrap();
        assert_eq!(p.phases[0].load.iterations(), Some(100));
        assert_eq!(p.phases[1].load.iterations(), Some(60));
        assert_eq!(p.duration(), std::time::Duration::from_secs(65));
        assert_eq!(p.phase_steps(0), vec![(0, 2), (1, 1)]);
        assert_eq!(p.phase_steps(1), vec![(1, 1), (0, 5)]);
        // The coordinator sends the plan as JSON: it comes back the same.
        let back: crate::plan::Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn bad_iterations_and_mixes_name_their_field() {
        let cases = [
            ("  - { name: a, duration: 5s, load: { model: iterations, count: 1, concurrency: 1, max_duration: 5s } }\n", "p.yaml:4: phases[0].duration: an iterations phase lasts"),
            ("  - { name: a, load: { model: iterations, count: 1, concurrency: 1 } }\n", "phases[0].load.max_duration: an iterations phase needs `max_duration`"),
            ("  - { name: a, load: { model: iterations, concurrency: 1, max_duration: 5s } }\n", "phases[0].load.count: an iterations phase needs `count`"),
            ("  - { name: a, load: { model: iterations, count: 2, per_worker: 1, concurrency: 1, max_duration: 5s } }\n", "phases[0].load.per_worker: "),
            ("  - { name: a, load: { model: iterations, count: 2, max_duration: 5s } }\n", "phases[0].load.concurrency: the iterations model needs `concurrency`"),
            ("  - { name: a, load: { model: iterations, count: 2000000000, concurrency: 1, max_duration: 5s } }\n", "phases[0].load.count: asks for 2000000000 iterations"),
            ("  - { name: a, duration: 5s, load: { model: closed, concurrency: 1, count: 3 } }\n", "phases[0].load.count: belongs to the iterations model"),
            ("  - { name: a, load: { model: closed, concurrency: 1 } }\n", "phases[0].duration: is required but missing"),
            ("  - { name: a, duration: 5s, load: { model: closed, concurrency: 1 }, steps: [read, nope] }\n", "p.yaml:4: phases[0].steps[1]: no step is named `nope`"),
            ("  - { name: a, duration: 5s, load: { model: closed, concurrency: 1 }, steps: [read, read] }\n", "phases[0].steps[1]: step `read` is named twice"),
            ("  - { name: a, duration: 5s, load: { model: closed, concurrency: 1 }, steps: [] }\n", "phases[0].steps: names no step"),
            ("  - { name: a, duration: 5s, load: { model: closed, concurrency: 1 }, steps: [{ name: read, weight: 0 }] }\n", "phases[0].steps[0].weight: must be at least 1"),
        ];
        for (phases, want) in cases {
            let e = load(phases).expect_err(want);
            assert!(e.contains(want), "{want}\n got: {e}");
        }
    }
}
