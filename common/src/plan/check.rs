//! Checks on responses (k6's `check`, Gatling's `check`): each names one
//! assertion about a response — its status, a header, the body, a JSON
//! field, the body's size. A response the step accepts by status but that
//! fails a check is a failed request of kind `check`, counted per check.
//!
//! The model and the parsing of its small languages (JSON path expressions,
//! size comparisons) live here so that validation and the agent (which
//! compiles them once per run) read them the same way.

use serde::{Deserialize, Serialize};

use crate::units::StatusSet;

/// One named check. Exactly one of `status`, `header`, `json`,
/// `body_contains`, `body_matches`, `body_size` says what it checks;
/// `equals` / `matches` refine a `header` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Unique across the whole plan: reports and `check:NAME` SLOs use it.
    pub name: String,
    /// The response's status is in this set (`200`, `200-299`, `200,204`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusSet>,
    /// A header (case-insensitive name) is present; with `equals` or
    /// `matches`, its value equals that text or matches that regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// A JSON path into the body, alone (`$.ok`: the field exists) or
    /// compared to a JSON literal (`$.ok == true`, `$.queue.max >= 100`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// A regex the body (as UTF-8, lossily) matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_matches: Option<String>,
    /// The body's length compared to a size: `< 64KiB`, `>= 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_size: Option<String>,
}

/// The most body a check looks at: a longer body fails its body and JSON
/// checks, saying so, rather than growing the agent's memory per request.
pub const MAX_CHECKED_BODY: usize = 1 << 20;
/// Most checks a plan may have.
pub const MAX_CHECKS: usize = 1_000;

/// What a check is about, once its fields are known to be consistent.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Status(StatusSet),
    Header { name: String, test: HeaderTest },
    Json(JsonCheck),
    BodyContains(String),
    BodyMatches(String),
    BodySize(Cmp, u64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    Present,
    Equals(String),
    Matches(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    /// Splits a leading operator off `s` (two-character ones first).
    fn split(s: &str) -> Option<(Cmp, &str)> {
        let ops = [("==", Cmp::Eq), ("!=", Cmp::Ne), ("<=", Cmp::Le), (">=", Cmp::Ge), ("<", Cmp::Lt), (">", Cmp::Gt)];
        ops.iter().find_map(|(t, c)| s.strip_prefix(t).map(|rest| (*c, rest.trim())))
    }

    pub fn holds<T: PartialOrd>(self, a: &T, b: &T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

/// One step of a JSON path: a member name or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Member(String),
    Index(usize),
}

/// `$.a.b[0] OP literal`: a singular RFC 9535 query (the subset comparisons
/// allow: member names and indices) and an optional comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonCheck {
    pub path: Vec<Segment>,
    pub compare: Option<(Cmp, serde_json::Value)>,
}

impl JsonCheck {
    pub fn parse(text: &str) -> Result<JsonCheck, String> {
        let text = text.trim();
        let rest = text.strip_prefix('$').ok_or_else(|| format!("`{text}` must start with `$`, the document's root (e.g. `$.ok == true`)"))?;
        let (path, rest) = parse_path(rest).map_err(|m| format!("`{text}`: {m}"))?;
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(JsonCheck { path, compare: None });
        }
        let (cmp, literal) = Cmp::split(rest).ok_or_else(|| format!("`{text}`: expected a comparison (== != < <= > >=) after the path, found `{rest}`"))?;
        let value: serde_json::Value = serde_json::from_str(literal).map_err(|_| format!("`{text}`: `{literal}` is not a JSON value (strings take double quotes)"))?;
        if matches!(cmp, Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge) && !value.is_number() {
            return Err(format!("`{text}`: `{}` compares by order, so its value must be a number", literal));
        }
        Ok(JsonCheck { path, compare: Some((cmp, value)) })
    }

    /// The check over a parsed body: the path's value exists and, if asked,
    /// compares as said (numbers as numbers, anything else by equality).
    pub fn holds(&self, doc: &serde_json::Value) -> bool {
        let mut at = doc;
        for seg in &self.path {
            let next = match seg {
                Segment::Member(m) => at.get(m.as_str()),
                Segment::Index(i) => at.get(*i),
            };
            match next {
                Some(v) => at = v,
                None => return false,
            }
        }
        match &self.compare {
            None => true,
            Some((cmp, want)) => match (at.as_f64(), want.as_f64()) {
                (Some(a), Some(b)) if at.is_number() => cmp.holds(&a, &b),
                _ => match cmp {
                    Cmp::Eq => at == want,
                    Cmp::Ne => at != want,
                    _ => false,
                },
            },
        }
    }
}

/// `.name`, `['name']`, `["name"]` and `[N]` segments, up to the first
/// space or operator.
fn parse_path(mut s: &str) -> Result<(Vec<Segment>, &str), String> {
    let mut path = Vec::new();
    loop {
        if let Some(rest) = s.strip_prefix('.') {
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-')).unwrap_or(rest.len());
            if end == 0 {
                return Err("a `.` must be followed by a member name".into());
            }
            path.push(Segment::Member(rest[..end].to_string()));
            s = &rest[end..];
        } else if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']').ok_or("a `[` is never closed")?;
            let inner = rest[..end].trim();
            let quoted = inner.len() >= 2 && ((inner.starts_with('\'') && inner.ends_with('\'')) || (inner.starts_with('"') && inner.ends_with('"')));
            if quoted {
                path.push(Segment::Member(inner[1..inner.len() - 1].to_string()));
            } else {
                let i = inner.parse().map_err(|_| format!("`[{inner}]` is neither an index nor a quoted name (only singular paths: no wildcards or filters)"))?;
                path.push(Segment::Index(i));
            }
            s = &rest[end + 1..];
        } else {
            return Ok((path, s));
        }
    }
}

/// `< 64KiB`, `>= 1`, `== 0`: a comparison with a byte size (B, KiB, MiB,
/// KB, MB; no unit = bytes).
pub fn parse_size_cmp(text: &str) -> Result<(Cmp, u64), String> {
    let bad = || format!("`{text}` is not a size comparison: write e.g. `< 64KiB` or `>= 1`");
    let (cmp, rest) = Cmp::split(text.trim()).ok_or_else(bad)?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
    let unit = match rest[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "KB" => 1_000,
        "MB" => 1_000_000,
        _ => return Err(bad()),
    };
    Ok((cmp, n.checked_mul(unit).ok_or_else(bad)?))
}

impl Check {
    /// What the check is about, or `(field, message)` when its fields do
    /// not say exactly one thing (or say it in a form that does not parse).
    pub fn kind(&self) -> Result<CheckKind, (&'static str, String)> {
        let set: Vec<&str> = [
            ("status", self.status.is_some()),
            ("header", self.header.is_some()),
            ("json", self.json.is_some()),
            ("body_contains", self.body_contains.is_some()),
            ("body_matches", self.body_matches.is_some()),
            ("body_size", self.body_size.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
        if set.len() != 1 {
            let what = if set.is_empty() { "none".to_string() } else { set.join(" and ") };
            return Err(("name", format!("a check says what it checks with exactly one of status, header, json, body_contains, body_matches, body_size (found {what})")));
        }
        if self.header.is_none() {
            if self.equals.is_some() {
                return Err(("equals", "belongs to a `header` check".into()));
            }
            if self.matches.is_some() {
                return Err(("matches", "belongs to a `header` check".into()));
            }
        }
        let regex = |field: &'static str, re: &str| regex::Regex::new(re).map(|_| ()).map_err(|e| (field, format!("`{re}` is not a regex: {}", first_line(&e.to_string()))));
        Ok(match set[0] {
            "status" => CheckKind::Status(self.status.clone().expect("set")),
            "header" => {
                let name = self.header.clone().expect("set");
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
                    return Err(("header", format!("`{name}` is not a header name")));
                }
                let test = match (&self.equals, &self.matches) {
                    (Some(_), Some(_)) => return Err(("matches", "a header check takes `equals` or `matches`, not both".into())),
                    (Some(v), None) => HeaderTest::Equals(v.clone()),
                    (None, Some(re)) => {
                        regex("matches", re)?;
                        HeaderTest::Matches(re.clone())
                    }
                    (None, None) => HeaderTest::Present,
                };
                CheckKind::Header { name: name.to_ascii_lowercase(), test }
            }
            "json" => CheckKind::Json(JsonCheck::parse(self.json.as_deref().expect("set")).map_err(|m| ("json", m))?),
            "body_contains" => CheckKind::BodyContains(self.body_contains.clone().expect("set")),
            "body_matches" => {
                let re = self.body_matches.clone().expect("set");
                regex("body_matches", &re)?;
                CheckKind::BodyMatches(re)
            }
            _ => {
                let (cmp, n) = parse_size_cmp(self.body_size.as_deref().expect("set")).map_err(|m| ("body_size", m))?;
                CheckKind::BodySize(cmp, n)
            }
        })
    }
}

fn first_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_checks_read_paths_and_compare_numbers_as_numbers() {
        let doc = json!({"ok": true, "queue": {"max": 120}, "items": [{"id": "a"}]});
        let holds = |t: &str| JsonCheck::parse(t).unwrap().holds(&doc);
        assert!(holds("$.ok == true"));
        assert!(!holds("$.ok == false"));
        assert!(holds("$.queue.max >= 100"));
        assert!(!holds("$.queue.max < 100"));
        assert!(holds("$.queue.max == 120.0"));
        assert!(holds("$.items[0].id == \"a\""));
        assert!(holds("$['queue'].max"));
        assert!(!holds("$.missing"));
        assert!(!holds("$.ok > 1"), "a boolean has no order");
    }

    #[test]
    fn malformed_json_checks_say_what_is_wrong() {
        assert!(JsonCheck::parse("ok == true").unwrap_err().contains("must start with `$`"));
        assert!(JsonCheck::parse("$.ok = true").unwrap_err().contains("expected a comparison"));
        assert!(JsonCheck::parse("$.a == yes").unwrap_err().contains("not a JSON value"));
        assert!(JsonCheck::parse("$.a[*]").unwrap_err().contains("only singular paths"));
        assert!(JsonCheck::parse("$.a < \"x\"").unwrap_err().contains("must be a number"));
    }

    #[test]
    fn size_comparisons_take_units() {
        assert_eq!(parse_size_cmp("< 64KiB").unwrap(), (Cmp::Lt, 65_536));
        assert_eq!(parse_size_cmp(">= 1").unwrap(), (Cmp::Ge, 1));
        assert!(parse_size_cmp("64KiB").is_err());
        assert!(parse_size_cmp("< 3 parsecs").is_err());
    }
}
