//! SLO rules (`{ metric: p99, scope: run, pass: "< 400ms", warn: "< 800ms" }`)
//! and their evaluation against observed values.
//!
//! Units are fixed per metric so a rule can be checked when the plan loads:
//! latency, `recovery_time` and `max_streak` are in time (`400ms`, `30s`),
//! the rates (`error_rate`, `status:5xx`, `check:NAME`, …) in percent,
//! `throughput` in requests per second (`100/s`), `status_count:` a number.
//! The rules are judged by the coordinator (`coordinator/src/judge/`).

mod metric;
mod scope;
mod threshold;

use serde::{Deserialize, Serialize};

pub use metric::{Condition, Metric, StatusMatch};
pub use scope::{Parts, Scope};
pub use threshold::{Cmp, Threshold, Unit};

use crate::units::Dur;

/// How many consecutive intervals `recovery_time` wants by default.
pub const DEFAULT_CONSECUTIVE: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub metric: Metric,
    #[serde(default)]
    pub scope: Scope,
    pub pass: Threshold,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<Threshold>,
    /// Names the rule, so `recovery_time` can list it in `rules`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `after:FAULT` scopes: how long after the revert the window lasts.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub length: Option<Dur>,
    /// `recovery_time`: the fault whose revert starts the clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// `recovery_time`: the names of the rules that must hold again
    /// (default: every rule scoped `outside:faults`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<String>>,
    /// `recovery_time`: how many consecutive intervals they must hold
    /// ([`DEFAULT_CONSECUTIVE`] by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
}

impl Slo {
    /// A rule of `metric` over `scope` with a pass threshold and nothing else.
    pub fn new(metric: Metric, scope: Scope, pass: Threshold) -> Self {
        Slo { metric, scope, pass, warn: None, name: None, length: None, fault: None, rules: None, consecutive: None }
    }

    /// The rule as a line of a report: `p99 < 400ms`, `recovery_time(api-1) < 60s`.
    pub fn rule_text(&self) -> String {
        match (&self.metric, &self.fault) {
            (Metric::RecoveryTime, Some(f)) => format!("recovery_time({f}) {}", self.pass),
            (m, _) => format!("{m} {}", self.pass),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
    /// The run is incomplete (interrupted, an agent lost): its numbers are
    /// partial, so a rule they satisfy cannot vouch for anything and is not
    /// reported as passed (issue 8, item 5). A failed rule stays failed.
    #[serde(rename = "not_evaluated")]
    NotEvaluated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::NotEvaluated => "not_evaluated",
        }
    }
}

impl Slo {
    /// The band an observed value falls in; no data at all is a failure,
    /// because a rule that saw nothing cannot vouch for anything.
    pub fn evaluate(&self, observed: Option<f64>) -> Status {
        match observed {
            None => Status::Fail,
            Some(v) if self.pass.holds(v) => Status::Pass,
            Some(v) if self.warn.as_ref().is_some_and(|w| w.holds(v)) => Status::Warn,
            Some(_) => Status::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_in_base_units() {
        let t: Threshold = "< 400ms".parse().unwrap();
        assert_eq!((t.cmp, t.value), (Cmp::Lt, 400.0));
        let t: Threshold = "<=0.5%".parse().unwrap();
        assert_eq!((t.cmp, t.value), (Cmp::Le, 0.005));
        let t: Threshold = ">= 100/s".parse().unwrap();
        assert_eq!((t.cmp, t.value), (Cmp::Ge, 100.0));
        assert!("400ms".parse::<Threshold>().is_err());
        assert!("> 190".parse::<Threshold>().unwrap_err().contains("`190/s`"));
        assert!("< 1%".parse::<Threshold>().unwrap().check_unit(&Metric::P99).is_err());
    }

    #[test]
    fn bands() {
        let slo = Slo { warn: Some("< 800ms".parse().unwrap()), ..Slo::new(Metric::P99, Scope::Run, "< 400ms".parse().unwrap()) };
        assert_eq!(slo.evaluate(Some(399.0)), Status::Pass);
        assert_eq!(slo.evaluate(Some(400.0)), Status::Warn);
        assert_eq!(slo.evaluate(Some(800.0)), Status::Fail);
        assert_eq!(slo.evaluate(None), Status::Fail);
    }

    #[test]
    fn scopes() {
        assert_eq!("phase:hold".parse::<Scope>().unwrap(), Scope::Phase("hold".into()));
        assert!("zone:a".parse::<Scope>().is_err());
        assert!("phase:".parse::<Scope>().is_err());
    }
}
