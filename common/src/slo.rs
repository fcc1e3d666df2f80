//! SLO rules (`{ metric: p99, scope: run, pass: "< 400ms", warn: "< 800ms" }`)
//! and their evaluation against observed values.
//!
//! Units are fixed per metric so a rule can be checked when the plan loads:
//! latency metrics are in time (`400ms`), `error_rate` in percent, `throughput`
//! in requests per second (`100/s`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::{Dur, Percent, Rate};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    pub metric: Metric,
    #[serde(default)]
    pub scope: Scope,
    pub pass: Threshold,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<Threshold>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Metric {
    P50,
    P90,
    P95,
    P99,
    P999,
    Max,
    ErrorRate,
    Throughput,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::P50,
        Metric::P90,
        Metric::P95,
        Metric::P99,
        Metric::P999,
        Metric::Max,
        Metric::ErrorRate,
        Metric::Throughput,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P90 => "p90",
            Metric::P95 => "p95",
            Metric::P99 => "p99",
            Metric::P999 => "p999",
            Metric::Max => "max",
            Metric::ErrorRate => "error_rate",
            Metric::Throughput => "throughput",
        }
    }

    /// The quantile of a latency metric, `None` for max and the non-latency metrics.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Metric::P50 => Some(0.50),
            Metric::P90 => Some(0.90),
            Metric::P95 => Some(0.95),
            Metric::P99 => Some(0.99),
            Metric::P999 => Some(0.999),
            _ => None,
        }
    }

    fn unit(self) -> Unit {
        match self {
            Metric::ErrorRate => Unit::Percent,
            Metric::Throughput => Unit::Rate,
            _ => Unit::Millis,
        }
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Metric::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
            format!("unknown metric `{s}`, expected one of {}", names.join(", "))
        })
    }
}

impl TryFrom<String> for Metric {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.name().to_string()
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What part of the run a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    #[default]
    Run,
    Phase(String),
    Step(String),
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown scope `{s}`, expected `run`, `phase:NAME` or `step:NAME`");
        if s == "run" {
            return Ok(Scope::Run);
        }
        match s.split_once(':') {
            Some(("phase", name)) if !name.is_empty() => Ok(Scope::Phase(name.to_string())),
            Some(("step", name)) if !name.is_empty() => Ok(Scope::Step(name.to_string())),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Run => f.write_str("run"),
            Scope::Phase(n) => write!(f, "phase:{n}"),
            Scope::Step(n) => write!(f, "step:{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn symbol(self) -> &'static str {
        match self {
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
    fn holds(self, observed: f64, limit: f64) -> bool {
        match self {
            Cmp::Lt => observed < limit,
            Cmp::Le => observed <= limit,
            Cmp::Gt => observed > limit,
            Cmp::Ge => observed >= limit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Millis,
    Percent,
    Rate,
}

/// `< 400ms`, `<= 0.5%`, `>= 100/s`. The value is kept in the metric's base
/// unit: milliseconds, a ratio, or requests per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Threshold {
    pub cmp: Cmp,
    pub value: f64,
    text: String,
    unit: Unit,
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (cmp, rest) = if let Some(r) = t.strip_prefix("<=") {
            (Cmp::Le, r)
        } else if let Some(r) = t.strip_prefix(">=") {
            (Cmp::Ge, r)
        } else if let Some(r) = t.strip_prefix('<') {
            (Cmp::Lt, r)
        } else if let Some(r) = t.strip_prefix('>') {
            (Cmp::Gt, r)
        } else {
            return Err(format!("`{s}` is not a threshold: write e.g. `< 400ms`, `<= 0.5%`, `> 100/s`"));
        };
        let rest = rest.trim();
        if !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit() || c == '.') {
            // The metric decides the unit, and it is not known here: list them all.
            return Err(format!(
                "`{s}` has no unit: write a duration for latency (`{rest}ms`), a percentage for error_rate (`{rest}%`) or a rate for throughput (`{rest}/s`)"
            ));
        }
        let (value, unit) = if rest.ends_with('%') {
            (rest.parse::<Percent>()?.ratio(), Unit::Percent)
        } else if rest.contains('/') {
            (rest.parse::<Rate>()?.as_per_second(), Unit::Rate)
        } else {
            (rest.parse::<Dur>()?.as_duration().as_secs_f64() * 1e3, Unit::Millis)
        };
        Ok(Threshold { cmp, value, text: format!("{} {}", cmp.symbol(), rest), unit })
    }
}

impl TryFrom<String> for Threshold {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Threshold> for String {
    fn from(t: Threshold) -> String {
        t.text
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Threshold {
    pub fn holds(&self, observed: f64) -> bool {
        self.cmp.holds(observed, self.value)
    }

    /// Checks that the threshold is written in the metric's unit.
    pub fn check_unit(&self, metric: Metric) -> Result<(), String> {
        if self.unit == metric.unit() {
            return Ok(());
        }
        let want = match metric.unit() {
            Unit::Millis => "a duration such as `400ms`",
            Unit::Percent => "a percentage such as `0.5%`",
            Unit::Rate => "a rate such as `100/s`",
        };
        Err(format!("`{}` does not fit metric `{metric}`, which takes {want}", self.text))
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
        assert!("< 1%".parse::<Threshold>().unwrap().check_unit(Metric::P99).is_err());
    }

    #[test]
    fn bands() {
        let slo = Slo {
            metric: Metric::P99,
            scope: Scope::Run,
            pass: "< 400ms".parse().unwrap(),
            warn: Some("< 800ms".parse().unwrap()),
        };
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
