//! Abort guardrails (`abort_when`): rules that stop a run early because it
//! is hurting what it tests — `{ metric: error_rate, scope: run, threshold:
//! "> 20%", for: 10s }`. They reuse the SLO language (metric, scope, a
//! threshold in the metric's unit); the coordinator evaluates them live
//! (`coordinator/src/guardrail.rs`), docs/plan.md "Abort guardrails" says how.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Plan;
use crate::slo::{Metric, Scope, Threshold};
use crate::units::Dur;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRule {
    pub metric: Metric,
    #[serde(default)]
    pub scope: Scope,
    /// The condition that, held long enough, stops the run (`> 20%`).
    pub threshold: Threshold,
    /// How long the condition must hold, on every interval, before the run
    /// stops (at least one interval; `0s` means the first interval that
    /// breaks it).
    #[serde(rename = "for", default = "zero")]
    pub hold: Dur,
}

fn zero() -> Dur {
    Dur(std::time::Duration::ZERO)
}

impl AbortRule {
    /// How many consecutive intervals of `interval` the condition must hold:
    /// `for` rounded up to whole intervals, at least one.
    pub fn intervals(&self, interval: std::time::Duration) -> u64 {
        let n = self.hold.as_duration().as_nanos().div_ceil(interval.as_nanos().max(1));
        (n as u64).max(1)
    }
}

/// The rule as the report and progress name it: `error_rate > 20% for 10s`,
/// with ` in SCOPE` when the scope is not the whole run.
impl fmt::Display for AbortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.metric, self.threshold)?;
        if self.scope != Scope::Run {
            write!(f, " in {}", self.scope)?;
        }
        write!(f, " for {}", self.hold)
    }
}

/// Checks every guardrail: its scope names a phase, step or probe of the
/// plan, its metric and threshold are the SLO language's, and `for` fits in
/// the run. A guardrail is judged live on each interval as it completes, so
/// what needs the whole series (fault windows, `recovery_time`,
/// `max_streak`) is refused here rather than never tripping.
pub(super) fn validate_abort_rules(plan: &Plan) -> Result<(), (String, String)> {
    for (i, rule) in plan.abort_when.iter().enumerate() {
        let at = |field: &str| format!("abort_when[{i}].{field}");
        let parts = super::slo_rules::check_scope_names(plan, &rule.scope).map_err(|m| (at("scope"), m))?;
        if let Some(window) = parts.window {
            return Err((
                at("scope"),
                format!("`{window}` is a fault window, known only once the fault is reverted: a guardrail is judged live, so scope it by phase, step or probe (or the whole run)"),
            ));
        }
        if rule.metric.is_time_rule() {
            return Err((at("metric"), format!("`{}` is judged over the whole series after the run: a guardrail takes a per-interval metric (error_rate, p99, status:5xx ...) and `for`", rule.metric)));
        }
        super::slo_rules::check_metric(plan, &rule.metric).map_err(|m| (at("metric"), m))?;
        rule.threshold.check_unit(&rule.metric).map_err(|m| (at("threshold"), m))?;
        if rule.hold.as_duration() > plan.duration() {
            return Err((at("for"), format!("{} is longer than the run ({:?}): the guardrail could never trip", rule.hold, plan.duration())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::plan::{load_str, Format};

    fn plan(rules: &str) -> Result<crate::plan::Plan, String> {
        let text = format!(
            "name: t\ntarget: http://127.0.0.1:9\nphases:\n  - {{ name: hold, duration: 30s, load: {{ model: open, rate: 1/s }} }}\nsteps:\n  - {{ name: s }}\nabort_when:\n{rules}"
        );
        load_str(&text, Format::Yaml, Path::new("p.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_guardrail_loads_and_names_itself_as_written() {
        let p = plan("  - { metric: error_rate, scope: run, threshold: \"> 20%\", for: 10s }\n  - { metric: p99, scope: phase:hold, threshold: \"> 2s\" }\n").unwrap();
        assert_eq!(p.abort_when[0].to_string(), "error_rate > 20% for 10s");
        assert_eq!(p.abort_when[0].intervals(Duration::from_secs(1)), 10);
        assert_eq!(p.abort_when[0].intervals(Duration::from_secs(3)), 4, "rounded up to whole intervals");
        assert_eq!(p.abort_when[1].to_string(), "p99 > 2s in phase:hold for 0s");
        assert_eq!(p.abort_when[1].intervals(Duration::from_secs(1)), 1, "at least one interval");
    }

    #[test]
    fn a_bad_guardrail_is_refused_with_line_and_field() {
        let e = plan("  - { metric: error_rate, threshold: \"> 20ms\", for: 10s }\n").unwrap_err();
        assert!(e.contains("p.yaml:8: abort_when[0].threshold:") && e.contains("percentage"), "{e}");
        let e = plan("  - { metric: error_rate, scope: phase:ramp, threshold: \"> 20%\" }\n").unwrap_err();
        assert!(e.contains("abort_when[0].scope: there is no phase `ramp`"), "{e}");
        let e = plan("  - { metric: error_rate, threshold: \"> 20%\", for: 1m }\n").unwrap_err();
        assert!(e.contains("abort_when[0].for:") && e.contains("never trip"), "{e}");
        let e = plan("  - { metric: recovery_time, threshold: \"< 20s\" }\n").unwrap_err();
        assert!(e.contains("abort_when[0].metric:") && e.contains("per-interval"), "{e}");
        let e = plan("  - { metric: error_rate, scope: outside:faults, threshold: \"> 20%\" }\n").unwrap_err();
        assert!(e.contains("abort_when[0].scope:") && e.contains("judged live"), "{e}");
        let e = plan("  - { metric: error_rate, threshold: \"> 20%\", after: 1m }\n").unwrap_err();
        assert!(e.contains("abort_when[0]") && e.contains("after"), "{e}");
    }
}
