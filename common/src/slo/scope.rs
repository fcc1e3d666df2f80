//! What part of a run a rule looks at: which records (`phase:X`, `step:X`,
//! `probe:X`) and which stretch of time (`during:F`, `after:F`, `before:F`,
//! `outside:faults`), combined with `in`: `step:read in during:api-1`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    #[default]
    Run,
    Phase(String),
    Step(String),
    /// The named probe's own records (contract P), never the load's.
    Probe(String),
    /// The fault's actual window: first apply to last revert over the
    /// agents that applied it.
    During(String),
    /// From the fault's revert to the rule's `for` later.
    After(String),
    /// As long as the fault's window, just before it: the baseline.
    Before(String),
    /// Every interval that touches no fault's window.
    OutsideFaults,
    /// `A in B`: both parts at once, e.g. `step:read in phase:hold`.
    In(Box<Scope>, Box<Scope>),
}

/// A scope taken apart: at most one of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parts<'a> {
    pub phase: Option<&'a str>,
    pub step: Option<&'a str>,
    pub probe: Option<&'a str>,
    pub window: Option<&'a Scope>,
}

impl Scope {
    fn is_window(&self) -> bool {
        matches!(self, Scope::During(_) | Scope::After(_) | Scope::Before(_) | Scope::OutsideFaults)
    }

    /// The scope's parts, or why they do not combine: two of one kind
    /// (`phase:a in phase:b`), a probe with load records, `run` in a combination.
    pub fn parts(&self) -> Result<Parts<'_>, String> {
        let mut parts = Parts::default();
        self.collect(&mut parts, true)?;
        if parts.probe.is_some() && (parts.phase.is_some() || parts.step.is_some()) {
            return Err(format!("`{self}`: a probe's records belong to no phase or step; scope a probe alone or with a time window"));
        }
        Ok(parts)
    }

    fn collect<'a>(&'a self, parts: &mut Parts<'a>, alone: bool) -> Result<(), String> {
        let twice = |kind: &str| Err(format!("`{kind}` appears twice in the scope; a combination takes at most one of each kind"));
        match self {
            Scope::Run if alone => Ok(()),
            Scope::Run => Err("`run` is the whole run and cannot be combined with `in`; leave it out".into()),
            Scope::Phase(n) => parts.phase.replace(n).map_or(Ok(()), |_| twice("phase")),
            Scope::Step(n) => parts.step.replace(n).map_or(Ok(()), |_| twice("step")),
            Scope::Probe(n) => parts.probe.replace(n).map_or(Ok(()), |_| twice("probe")),
            w if w.is_window() => match parts.window.replace(w) {
                None => Ok(()),
                Some(_) => Err("a scope takes one time window (`during:`, `after:`, `before:` or `outside:faults`)".into()),
            },
            Scope::In(a, b) => {
                a.collect(parts, false)?;
                b.collect(parts, false)
            }
            _ => unreachable!("every kind is matched above"),
        }
    }
}

const EXPECTED: &str = "expected `run`, `phase:NAME` or `step:NAME`, `probe:NAME`, `during:FAULT`, `after:FAULT`, `before:FAULT`, `outside:faults`, or two joined with `in`";

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((a, b)) = s.split_once(" in ") {
            return Ok(Scope::In(Box::new(a.trim().parse()?), Box::new(b.trim().parse()?)));
        }
        let bad = || format!("unknown scope `{s}`, {EXPECTED}");
        if s == "run" {
            return Ok(Scope::Run);
        }
        if s == "outside:faults" {
            return Ok(Scope::OutsideFaults);
        }
        let (kind, name) = s.split_once(':').filter(|(_, n)| !n.is_empty()).ok_or_else(bad)?;
        let name = name.to_string();
        Ok(match kind {
            "phase" => Scope::Phase(name),
            "step" => Scope::Step(name),
            "probe" => Scope::Probe(name),
            "during" => Scope::During(name),
            "after" => Scope::After(name),
            "before" => Scope::Before(name),
            _ => return Err(bad()),
        })
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
            Scope::Probe(n) => write!(f, "probe:{n}"),
            Scope::During(n) => write!(f, "during:{n}"),
            Scope::After(n) => write!(f, "after:{n}"),
            Scope::Before(n) => write!(f, "before:{n}"),
            Scope::OutsideFaults => f.write_str("outside:faults"),
            Scope::In(a, b) => write!(f, "{a} in {b}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_parse_and_print_back() {
        for text in ["step:read in phase:hold", "step:read in during:api-1", "probe:health in after:api-1", "outside:faults", "before:db"] {
            let s: Scope = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
            s.parts().unwrap();
        }
        let s: Scope = "step:read in during:api-1".parse().unwrap();
        let p = s.parts().unwrap();
        assert_eq!((p.step, p.phase), (Some("read"), None));
        assert_eq!(p.window, Some(&Scope::During("api-1".into())));
    }

    #[test]
    fn combinations_that_mean_nothing_are_refused() {
        let refused = |text: &str| text.parse::<Scope>().unwrap().parts().unwrap_err();
        assert!(refused("phase:a in phase:b").contains("twice"));
        assert!(refused("during:a in after:b").contains("one time window"));
        assert!(refused("probe:health in step:read").contains("no phase or step"));
        assert!(refused("run in during:a").contains("cannot be combined"));
        assert!("zone:a".parse::<Scope>().is_err());
        assert!("after:".parse::<Scope>().is_err());
    }
}
