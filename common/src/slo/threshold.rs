//! Thresholds: `< 400ms`, `<= 0.5%`, `>= 100/s`, `< 10` (a count). The
//! value is kept in the unit's base: milliseconds, a ratio, requests per
//! second, or a plain number.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::units::{Dur, Percent, Rate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    pub fn symbol(self) -> &'static str {
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

/// What a metric's values (and so its thresholds) are measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unit {
    /// A duration, compared in milliseconds.
    Millis,
    /// A percentage, compared as a ratio.
    Percent,
    /// Requests per second.
    Rate,
    /// A number of requests or responses, written without a unit.
    Count,
}

impl Unit {
    /// How report.json names the unit of an observed value.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Millis => "ms",
            Unit::Percent => "ratio",
            Unit::Rate => "req/s",
            Unit::Count => "count",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Unit::Millis => "a duration such as `400ms`",
            Unit::Percent => "a percentage such as `0.5%`",
            Unit::Rate => "a rate such as `100/s`",
            Unit::Count => "a number such as `10`",
        }
    }
}

/// `< 400ms`, `<= 0.5%`, `>= 100/s`, `< 10`. The value is kept in the
/// metric's base unit: milliseconds, a ratio, requests per second, a count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Threshold {
    pub cmp: Cmp,
    pub value: f64,
    text: String,
    unit: Unit,
}

impl Threshold {
    /// Parses a threshold whose bare number (`< 10`) is a count. A plan's
    /// thresholds are read this way, because only the metric (known later,
    /// at validation) says whether a count fits; [`Threshold::check_unit`]
    /// then refuses a count for any other metric, with the message
    /// `from_str` gives.
    pub fn parse_with_counts(s: &str) -> Result<Self, String> {
        let (cmp, rest) = split_cmp(s)?;
        if is_number(rest) {
            let value: f64 = rest.parse().map_err(|_| format!("`{s}` is not a number"))?;
            return Ok(Threshold { cmp, value, text: format!("{} {}", cmp.symbol(), rest), unit: Unit::Count });
        }
        s.parse()
    }

    pub fn holds(&self, observed: f64) -> bool {
        self.cmp.holds(observed, self.value)
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Checks that the threshold is written in the metric's unit.
    pub fn check_unit(&self, metric: &super::Metric) -> Result<(), String> {
        self.check_unit_of(metric.unit(), &metric.to_string())
    }

    /// [`Threshold::check_unit`] for a value of `unit` named `what`.
    pub fn check_unit_of(&self, unit: Unit, what: &str) -> Result<(), String> {
        if self.unit == unit {
            return Ok(());
        }
        if self.unit == Unit::Count {
            return Err(no_unit(&self.text, self.text[self.cmp.symbol().len()..].trim()));
        }
        Err(format!("`{}` does not fit metric `{what}`, which takes {}", self.text, unit.example()))
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

fn split_cmp(s: &str) -> Result<(Cmp, &str), String> {
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
    Ok((cmp, rest.trim()))
}

fn no_unit(s: &str, rest: &str) -> String {
    // The metric decides the unit, and it is not known here: list them all.
    format!(
        "`{s}` has no unit: write a duration for latency (`{rest}ms`), a percentage for error_rate (`{rest}%`) or a rate for throughput (`{rest}/s`); only counts (`status_count:5xx`) take a bare number"
    )
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (cmp, rest) = split_cmp(s)?;
        if is_number(rest) {
            return Err(no_unit(s, rest));
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
        Threshold::parse_with_counts(&s)
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
