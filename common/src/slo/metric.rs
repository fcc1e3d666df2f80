//! What an SLO rule measures: `p99`, `error_rate`, `status:5xx`,
//! `status_count:429`, `timeout_rate`, `drop_rate`, `check:NAME`,
//! `recovery_time`, `max_streak(COND)`. Written as one string, so a metric
//! reads the way people say it, and printed back the same way.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::threshold::{Threshold, Unit};
use crate::units::StatusSet;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Requests that timed out / all requests.
    TimeoutRate,
    /// Open-model arrivals not sent (`max_in_flight` reached) / arrivals due.
    DropRate,
    /// Responses with a status in the set / all requests.
    Status(StatusMatch),
    /// Responses with a status in the set.
    StatusCount(StatusMatch),
    /// Passes of the named check / its evaluations.
    Check(String),
    /// How many requests failed with this error kind (`errors:stuck`).
    Errors(crate::stats::ErrorKind),
    /// Seconds from a fault's revert until the rules hold again (`fault:` names it).
    RecoveryTime,
    /// The longest run of consecutive intervals in which the condition held.
    MaxStreak(Box<Condition>),
}

/// `429`, `5xx`, `500-503`: the statuses a `status:` metric counts.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMatch {
    pub set: StatusSet,
    text: String,
}

impl StatusMatch {
    pub fn contains(&self, status: u16) -> bool {
        self.set.contains(status)
    }
}

impl FromStr for StatusMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let class = s.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()).filter(|d| (1..=5).contains(d));
        let set = match class {
            Some(d) => format!("{}-{}", d * 100, d * 100 + 99).parse()?,
            None => s.parse().map_err(|e| format!("{e}, or a class such as `5xx`"))?,
        };
        Ok(StatusMatch { set, text: s.to_string() })
    }
}

/// `status:5xx > 0`: a metric of one interval and a threshold, for streaks.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub metric: Metric,
    pub threshold: Threshold,
}

impl Condition {
    /// The threshold must be in the metric's unit, except `0`, which is
    /// zero in every unit (`status:5xx > 0`).
    pub fn check_unit(&self) -> Result<(), String> {
        if self.threshold.unit() == Unit::Count && self.threshold.value == 0.0 {
            return Ok(());
        }
        self.threshold.check_unit(&self.metric)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.metric, self.threshold)
    }
}

const PLAIN: [(&str, Metric); 10] = [
    ("p50", Metric::P50),
    ("p90", Metric::P90),
    ("p95", Metric::P95),
    ("p99", Metric::P99),
    ("p999", Metric::P999),
    ("max", Metric::Max),
    ("error_rate", Metric::ErrorRate),
    ("throughput", Metric::Throughput),
    ("timeout_rate", Metric::TimeoutRate),
    ("drop_rate", Metric::DropRate),
];

impl Metric {
    /// The quantile of a latency metric, `None` for max and the non-latency metrics.
    pub fn quantile(&self) -> Option<f64> {
        match self {
            Metric::P50 => Some(0.50),
            Metric::P90 => Some(0.90),
            Metric::P95 => Some(0.95),
            Metric::P99 => Some(0.99),
            Metric::P999 => Some(0.999),
            _ => None,
        }
    }

    pub fn unit(&self) -> Unit {
        match self {
            Metric::ErrorRate | Metric::TimeoutRate | Metric::DropRate | Metric::Status(_) | Metric::Check(_) => Unit::Percent,
            Metric::Throughput => Unit::Rate,
            Metric::StatusCount(_) | Metric::Errors(_) => Unit::Count,
            _ => Unit::Millis,
        }
    }

    /// Whether the metric is judged over a series of intervals rather than
    /// one merged window: it cannot be a streak's condition or a rule that
    /// `recovery_time` waits for.
    pub fn is_time_rule(&self) -> bool {
        matches!(self, Metric::RecoveryTime | Metric::MaxStreak(_))
    }
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some((_, m)) = PLAIN.iter().find(|(name, _)| *name == s) {
            return Ok(m.clone());
        }
        if s == "recovery_time" {
            return Ok(Metric::RecoveryTime);
        }
        if let Some(inner) = s.strip_prefix("max_streak(").and_then(|r| r.strip_suffix(')')) {
            return parse_condition(inner).map(|c| Metric::MaxStreak(Box::new(c)));
        }
        match s.split_once(':') {
            Some(("status", set)) => set.parse().map(Metric::Status),
            Some(("status_count", set)) => set.parse().map(Metric::StatusCount),
            Some(("check", name)) if !name.is_empty() => Ok(Metric::Check(name.to_string())),
            Some(("errors", kind)) => crate::stats::ErrorKind::parse(kind).map(Metric::Errors).ok_or_else(|| {
                let kinds: Vec<_> = crate::stats::ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("`errors:{kind}`: unknown error kind; known: {}", kinds.join(", "))
            }),
            _ => {
                let names: Vec<_> = PLAIN.iter().map(|(n, _)| *n).collect();
                Err(format!(
                    "unknown metric `{s}`, expected one of {}, status:CODE, status_count:CODE, check:NAME, errors:KIND, recovery_time, max_streak(CONDITION)",
                    names.join(", ")
                ))
            }
        }
    }
}

/// `status:5xx > 0` → the metric and its threshold.
fn parse_condition(s: &str) -> Result<Condition, String> {
    let at = s.find(['<', '>']).ok_or_else(|| format!("`max_streak({s})` needs a condition such as `max_streak(status:5xx > 0)`"))?;
    let metric: Metric = s[..at].parse()?;
    if metric.is_time_rule() {
        return Err(format!("`{metric}` is judged over a whole series, not per interval: it cannot be a streak's condition"));
    }
    let threshold = Threshold::parse_with_counts(&s[at..])?;
    Ok(Condition { metric, threshold })
}

impl TryFrom<String> for Metric {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.to_string()
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((name, _)) = PLAIN.iter().find(|(_, m)| m == self) {
            return f.write_str(name);
        }
        match self {
            Metric::Status(m) => write!(f, "status:{}", m.text),
            Metric::StatusCount(m) => write!(f, "status_count:{}", m.text),
            Metric::Check(name) => write!(f, "check:{name}"),
            Metric::Errors(kind) => write!(f, "errors:{}", kind.as_str()),
            Metric::RecoveryTime => f.write_str("recovery_time"),
            Metric::MaxStreak(c) => write!(f, "max_streak({c})"),
            _ => unreachable!("plain metrics are printed above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_print_back_as_written() {
        for text in ["p99", "drop_rate", "status:5xx", "status_count:429", "status:500-503", "check:says-ok", "errors:stuck", "recovery_time", "max_streak(status:5xx > 0)", "max_streak(p99 >= 500ms)"] {
            let m: Metric = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(m.to_string(), text);
        }
        let Metric::Status(five) = "status:5xx".parse::<Metric>().unwrap() else { panic!() };
        assert!(five.contains(503) && !five.contains(499));
    }

    #[test]
    fn count_thresholds_print_back_as_written() {
        let t = Threshold::try_from("< 10".to_string()).unwrap();
        assert_eq!((t.unit(), t.value), (Unit::Count, 10.0));
        assert_eq!(Threshold::try_from(String::from(t.clone())).unwrap(), t);
        assert!(t.check_unit(&"status_count:5xx".parse().unwrap()).is_ok());
        assert!(t.check_unit(&Metric::ErrorRate).unwrap_err().contains("has no unit"));
    }

    #[test]
    fn streak_conditions_take_zero_in_any_unit_and_otherwise_the_metrics() {
        let Metric::MaxStreak(c) = "max_streak(status:5xx > 0)".parse::<Metric>().unwrap() else { panic!() };
        assert!(c.check_unit().is_ok());
        let Metric::MaxStreak(c) = "max_streak(p99 > 5)".parse::<Metric>().unwrap() else { panic!() };
        assert!(c.check_unit().unwrap_err().contains("has no unit"));
        assert!("max_streak(recovery_time > 1s)".parse::<Metric>().unwrap_err().contains("per interval"));
        assert!("max_streak(status:5xx)".parse::<Metric>().unwrap_err().contains("needs a condition"));
        assert!("status:6xx".parse::<Metric>().is_err());
    }
}
