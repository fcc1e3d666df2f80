//! The small value types plans are written in: durations (`10s`), rates
//! (`200/s`), percentages (`0.5%`), sizes and status ranges. Each parses from
//! the text a user writes and prints back the same text, so a plan survives
//! the JSON round trip to the agents unchanged.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A duration written with a unit: `500ms`, `10s`, `1m30s`, `2h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Dur(pub Duration);

impl Dur {
    pub fn as_duration(self) -> Duration {
        self.0
    }
    pub fn from_secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }
    pub fn from_millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return Err(format!("`{s}` has no unit: write e.g. `{t}s` or `{t}ms`"));
        }
        humantime::parse_duration(t)
            .map(Dur)
            .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. `500ms`, `10s`, `2m`"))
    }
}

impl TryFrom<String> for Dur {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        d.to_string()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An arrival rate, stored per second: `200/s`, `12000/m`, `3/ms`, or a bare
/// number of requests per second.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Rate {
    per_second: f64,
}

impl Rate {
    pub fn per_second(per_second: f64) -> Self {
        Rate { per_second }
    }
    pub fn as_per_second(self) -> f64 {
        self.per_second
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a rate: write e.g. `200/s`, `6000/m` or `200`");
        let t = s.trim();
        let (num, unit) = match t.split_once('/') {
            Some((n, u)) => (n.trim(), u.trim()),
            None => (t, "s"),
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" | "sec" => 1.0,
            "ms" => 0.001,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        // `1e308/ms` is finite as written but not per second.
        let per_second = n / seconds;
        if !per_second.is_finite() || n < 0.0 {
            return Err(format!("`{s}` must be a finite rate >= 0"));
        }
        Ok(Rate { per_second })
    }
}

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Rate> for String {
    fn from(r: Rate) -> String {
        r.to_string()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.per_second)
    }
}

/// A fraction written as a percentage: `0.5%`. Kept as written (0.5) so it
/// prints back the same; [`Percent::ratio`] gives the fraction (0.005).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Percent {
    percent: f64,
}

impl Percent {
    pub fn from_ratio(ratio: f64) -> Self {
        Percent { percent: ratio * 100.0 }
    }
    pub fn ratio(self) -> f64 {
        self.percent / 100.0
    }
}

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let num = t
            .strip_suffix('%')
            .ok_or_else(|| format!("`{s}` is not a percentage: write e.g. `0.5%`"))?;
        let n: f64 = num
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a percentage: write e.g. `0.5%`"))?;
        if !(0.0..=100.0).contains(&n) {
            return Err(format!("`{s}` must be between 0% and 100%"));
        }
        Ok(Percent { percent: n })
    }
}

impl TryFrom<String> for Percent {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Percent> for String {
    fn from(p: Percent) -> String {
        p.to_string()
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent)
    }
}

/// Accepted HTTP statuses: `200`, `200-299`, or a comma list `200,201,204-206`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusSet {
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl Default for StatusSet {
    /// Like k6: any status below 400 is a success unless the plan says otherwise.
    fn default() -> Self {
        StatusSet { ranges: vec![(100, 399)] }
    }
}

impl FromStr for StatusSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a status set: write e.g. `200`, `200-299` or `200,204`");
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (part, part),
            };
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(format!("`{s}`: statuses are 100..=599 and ranges go low-high"));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusSet { ranges })
    }
}

impl TryFrom<String> for StatusSet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<StatusSet> for String {
    fn from(s: StatusSet) -> String {
        s.ranges
            .iter()
            .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units_and_round_trip() {
        assert_eq!("1m30s".parse::<Dur>().unwrap().0, Duration::from_secs(90));
        assert_eq!("500ms".parse::<Dur>().unwrap().0, Duration::from_millis(500));
        assert!("10".parse::<Dur>().unwrap_err().contains("no unit"));
        let d: Dur = "1m30s".parse().unwrap();
        assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
    }

    #[test]
    fn rates_in_every_unit() {
        assert_eq!("200/s".parse::<Rate>().unwrap().as_per_second(), 200.0);
        assert_eq!("6000/m".parse::<Rate>().unwrap().as_per_second(), 100.0);
        assert_eq!("2/ms".parse::<Rate>().unwrap().as_per_second(), 2000.0);
        assert_eq!("50".parse::<Rate>().unwrap().as_per_second(), 50.0);
        assert!("fast".parse::<Rate>().is_err());
        assert!("-1/s".parse::<Rate>().is_err());
        assert!("10/week".parse::<Rate>().is_err());
    }

    #[test]
    fn percentages_are_ratios() {
        assert_eq!("0.5%".parse::<Percent>().unwrap().ratio(), 0.005);
        assert!("0.5".parse::<Percent>().is_err());
        assert!("150%".parse::<Percent>().is_err());
        // Printed as written, not as ratio * 100 (0.05099999999999999%).
        assert_eq!("0.051%".parse::<Percent>().unwrap().to_string(), "0.051%");
    }

    #[test]
    fn status_sets() {
        let s: StatusSet = "200-299,304".parse().unwrap();
        assert!(s.contains(204) && s.contains(304) && !s.contains(302));
        assert_eq!(String::from(s), "200-299,304");
        assert!("299-200".parse::<StatusSet>().is_err());
        assert!(StatusSet::default().contains(302) && !StatusSet::default().contains(404));
    }
}
