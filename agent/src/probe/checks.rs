//! A probe's checks (`Check`, `common/src/plan/check.rs`) over its whole
//! response: compiled once per probe (regexes, JSON paths), evaluated on
//! every response it gets — the JSON of a 503 is worth checking too.
//!
//! The load's own evaluator (`agent/src/check.rs`, engineer B's) works on
//! the hot path's borrowed buffers; a probe keeps its response whole, so
//! this small one reads it as it is. Both read the same `CheckKind`.

use regex::Regex;
use stampede_common::plan::{Check, CheckKind, Cmp, HeaderTest, JsonCheck, MAX_CHECKED_BODY};
use stampede_common::units::StatusSet;

use super::client::ProbeResponse;

#[derive(Clone)]
enum Test {
    Status(StatusSet),
    HeaderPresent(String),
    HeaderEquals(String, String),
    HeaderMatches(String, Regex),
    Json(JsonCheck),
    BodyContains(String),
    BodyMatches(Regex),
    BodySize(Cmp, u64),
}

/// One probe's checks; `base` is the first one's plan-wide index.
#[derive(Clone)]
pub struct ProbeChecks {
    base: u32,
    checks: Vec<(String, Test)>,
}

/// What one response made of the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Plan-wide index and result, for every check.
    pub results: Vec<(u32, bool)>,
    /// The first check that failed, and why when the reason is not the check itself.
    pub failed: Option<String>,
}

impl ProbeChecks {
    /// Compiles `checks` (validated with the plan, so they compile).
    pub fn new(checks: &[Check], base: u32) -> Result<ProbeChecks, String> {
        let compile = |re: &str| Regex::new(re).map_err(|e| format!("`{re}`: {e}"));
        let checks = checks
            .iter()
            .map(|c| {
                let test = match c.kind().map_err(|(field, m)| format!("check {}: {field}: {m}", c.name))? {
                    CheckKind::Status(set) => Test::Status(set),
                    CheckKind::Header { name, test: HeaderTest::Present } => Test::HeaderPresent(name),
                    CheckKind::Header { name, test: HeaderTest::Equals(v) } => Test::HeaderEquals(name, v),
                    CheckKind::Header { name, test: HeaderTest::Matches(re) } => Test::HeaderMatches(name, compile(&re)?),
                    CheckKind::Json(j) => Test::Json(j),
                    CheckKind::BodyContains(s) => Test::BodyContains(s),
                    CheckKind::BodyMatches(re) => Test::BodyMatches(compile(&re)?),
                    CheckKind::BodySize(cmp, n) => Test::BodySize(cmp, n),
                };
                Ok((c.name.clone(), test))
            })
            .collect::<Result<_, String>>()?;
        Ok(ProbeChecks { base, checks })
    }

    /// Every check over `r`.
    pub fn evaluate(&self, r: &ProbeResponse) -> Outcome {
        let header = |name: &str| r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let whole = !r.truncated && r.body.len() <= MAX_CHECKED_BODY;
        let text = String::from_utf8_lossy(&r.body);
        let json: Option<serde_json::Value> = if whole { serde_json::from_slice(&r.body).ok() } else { None };
        let mut out = Outcome::default();
        for (i, (name, test)) in self.checks.iter().enumerate() {
            let (passed, why) = match test {
                Test::Status(set) => (set.contains(r.status), None),
                Test::HeaderPresent(h) => (header(h).is_some(), None),
                Test::HeaderEquals(h, v) => (header(h) == Some(v.as_str()), None),
                Test::HeaderMatches(h, re) => (header(h).is_some_and(|v| re.is_match(v)), None),
                Test::BodySize(cmp, n) if whole => (cmp.holds(&(r.body.len() as u64), n), None),
                Test::BodySize(..) => (false, Some("the body is over 1 MiB")),
                _ if !whole => (false, Some("the body is over 1 MiB, more than checks read")),
                Test::Json(j) => match &json {
                    Some(doc) => (j.holds(doc), None),
                    None => (false, Some("the body is not JSON")),
                },
                Test::BodyContains(s) => (text.contains(s.as_str()), None),
                Test::BodyMatches(re) => (re.is_match(&text), None),
            };
            out.results.push((self.base + i as u32, passed));
            if !passed && out.failed.is_none() {
                out.failed = Some(match why {
                    Some(why) => format!("{name} failed ({why})"),
                    None => format!("{name} failed"),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str) -> ProbeResponse {
        ProbeResponse { status, headers: vec![("Content-Type".into(), "application/json".into())], body: body.as_bytes().to_vec(), received: 0, truncated: false }
    }

    #[test]
    fn a_json_field_check_passes_and_fails_both_ways_naming_the_check() {
        let checks: Vec<Check> = serde_json::from_str(
            r#"[{"name": "says-ok", "json": "$.ok == true"}, {"name": "is-json", "header": "content-type", "matches": "json"}, {"name": "small", "body_size": "< 1KiB"}]"#,
        )
        .unwrap();
        let c = ProbeChecks::new(&checks, 7).unwrap();
        let ok = c.evaluate(&response(200, r#"{"ok": true}"#));
        assert_eq!(ok, Outcome { results: vec![(7, true), (8, true), (9, true)], failed: None });
        let down = c.evaluate(&response(503, r#"{"ok": false}"#));
        assert_eq!(down.results[0], (7, false));
        assert_eq!(down.failed.as_deref(), Some("says-ok failed"));
        let text = c.evaluate(&response(200, "ok"));
        assert_eq!(text.failed.as_deref(), Some("says-ok failed (the body is not JSON)"));
    }
}
