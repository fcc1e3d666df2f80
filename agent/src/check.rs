//! A step's (or probe's) checks, compiled once per run — regexes built, JSON
//! paths parsed — and evaluated over each received response. A step without
//! checks has no `CompiledChecks` at all, and its requests never reach here.

use std::sync::atomic::{AtomicBool, Ordering};

use regex::bytes::Regex;
use stampede_common::plan::{Check, CheckKind, Cmp, HeaderTest, JsonCheck, MAX_CHECKED_BODY, MAX_CHECKS_PER_STEP};
use stampede_common::units::StatusSet;

/// A response as checks see it: the raw head (status line and headers) and
/// the first [`MAX_CHECKED_BODY`] bytes of the body.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub status: u16,
    pub head: &'a [u8],
    pub body: &'a [u8],
    /// The whole body's length, kept or not.
    pub body_len: u64,
}

impl Received<'_> {
    /// Whether the body was longer than what is kept for checks.
    pub fn truncated(&self) -> bool {
        self.body_len > self.body.len() as u64
    }

    /// The first header named `name` (lower case), parsed from the head on
    /// demand: only steps with header checks pay for it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(self.head).ok()?;
        resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }
}

/// How the checks of one response came out: bit i set = check i failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckBits {
    /// Plan-wide index of the first check.
    pub base: u32,
    /// How many checks were evaluated (0: the step has none).
    pub count: u8,
    pub failed: u64,
}

impl CheckBits {
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }

    /// Each check's plan-wide index and whether it passed.
    pub fn results(self) -> impl Iterator<Item = (u32, bool)> {
        (0..self.count).map(move |i| (self.base + u32::from(i), self.failed & (1 << i) == 0))
    }
}

enum Compiled {
    Status(StatusSet),
    HeaderPresent(String),
    HeaderEquals(String, Vec<u8>),
    HeaderMatches(String, Regex),
    Json(JsonCheck),
    BodyContains(Vec<u8>),
    BodyMatches(Regex),
    BodySize(Cmp, u64),
}

impl Compiled {
    fn reads_body(&self) -> bool {
        matches!(self, Compiled::Json(_) | Compiled::BodyContains(_) | Compiled::BodyMatches(_))
    }
}

pub struct CompiledChecks {
    base: u32,
    names: Vec<String>,
    checks: Vec<Compiled>,
    reads_body: bool,
    /// A body longer than what is kept fails its body checks; said once.
    warned_truncated: AtomicBool,
}

impl std::fmt::Debug for CompiledChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledChecks").field("base", &self.base).field("names", &self.names).finish()
    }
}

impl CompiledChecks {
    /// Compiles `checks`, the first of which has plan-wide index `base`.
    /// The plan was validated, so an error here names a plan that skipped it.
    pub fn new(checks: &[Check], base: u32) -> Result<CompiledChecks, String> {
        if checks.len() > MAX_CHECKS_PER_STEP {
            return Err(format!("{} checks on one step; at most {MAX_CHECKS_PER_STEP}", checks.len()));
        }
        let regex = |re: &str| Regex::new(re).map_err(|e| format!("`{re}` is not a regex: {e}"));
        let compiled = checks
            .iter()
            .map(|c| {
                let kind = c.kind().map_err(|(field, m)| format!("check `{}`: {field}: {m}", c.name))?;
                Ok(match kind {
                    CheckKind::Status(set) => Compiled::Status(set),
                    CheckKind::Header { name, test: HeaderTest::Present } => Compiled::HeaderPresent(name),
                    CheckKind::Header { name, test: HeaderTest::Equals(v) } => Compiled::HeaderEquals(name, v.into_bytes()),
                    CheckKind::Header { name, test: HeaderTest::Matches(re) } => Compiled::HeaderMatches(name, regex(&re)?),
                    CheckKind::Json(j) => Compiled::Json(j),
                    CheckKind::BodyContains(t) => Compiled::BodyContains(t.into_bytes()),
                    CheckKind::BodyMatches(re) => Compiled::BodyMatches(regex(&re)?),
                    CheckKind::BodySize(cmp, n) => Compiled::BodySize(cmp, n),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(CompiledChecks {
            base,
            names: checks.iter().map(|c| c.name.clone()).collect(),
            reads_body: compiled.iter().any(Compiled::reads_body),
            checks: compiled,
            warned_truncated: AtomicBool::new(false),
        })
    }

    /// Whether any check looks at the body's bytes (else only its length is kept).
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Runs every check over `r`.
    pub fn evaluate(&self, r: &Received<'_>) -> CheckBits {
        let truncated = r.truncated();
        if truncated && self.reads_body && !self.warned_truncated.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                checks = ?self.names,
                body_len = r.body_len,
                kept = MAX_CHECKED_BODY,
                "A response body is longer than what checks look at; its body and JSON checks fail."
            );
        }
        // Parsed once for all of this response's JSON checks.
        let mut doc: Option<Option<serde_json::Value>> = None;
        let mut failed = 0u64;
        for (i, c) in self.checks.iter().enumerate() {
            let passed = match c {
                Compiled::Status(set) => set.contains(r.status),
                Compiled::HeaderPresent(name) => r.header(name).is_some(),
                Compiled::HeaderEquals(name, want) => r.header(name).is_some_and(|v| v == want.as_slice()),
                Compiled::HeaderMatches(name, re) => r.header(name).is_some_and(|v| re.is_match(v)),
                _ if truncated && c.reads_body() => false,
                Compiled::Json(j) => doc.get_or_insert_with(|| serde_json::from_slice(r.body).ok()).as_ref().is_some_and(|d| j.holds(d)),
                Compiled::BodyContains(t) => t.is_empty() || r.body.windows(t.len()).any(|w| w == t.as_slice()),
                Compiled::BodyMatches(re) => re.is_match(r.body),
                Compiled::BodySize(cmp, n) => cmp.holds(&r.body_len, n),
            };
            if !passed {
                failed |= 1 << i;
            }
        }
        CheckBits { base: self.base, count: self.checks.len() as u8, failed }
    }
}

/// Appends what of `bytes` still fits under [`MAX_CHECKED_BODY`] to `kept`.
pub fn keep_body(kept: &mut Vec<u8>, bytes: &[u8]) {
    let room = MAX_CHECKED_BODY.saturating_sub(kept.len());
    kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(yaml_like: &str) -> CompiledChecks {
        let list: Vec<Check> = serde_json::from_str(yaml_like).unwrap();
        CompiledChecks::new(&list, 10).unwrap()
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 38\r\n\r\n";

    #[test]
    fn each_kind_of_check_passes_and_fails() {
        let c = checks(
            r#"[{"name":"s","status":"200-299"},{"name":"h","header":"content-type","matches":"json"},
                {"name":"e","header":"Content-Type","equals":"text/plain"},{"name":"j","json":"$.ok == true"},
                {"name":"q","json":"$.queue.max >= 100"},{"name":"b","body_contains":"queue"},
                {"name":"r","body_matches":"\"max\": *\\d+"},{"name":"z","body_size":"< 64KiB"},{"name":"p","header":"x-missing"}]"#,
        );
        let body = br#"{"ok": true, "queue": {"max": 12}}"#;
        let bits = c.evaluate(&Received { status: 200, head: HEAD, body, body_len: body.len() as u64 });
        let failed: Vec<u32> = bits.results().filter(|(_, ok)| !ok).map(|(i, _)| i).collect();
        // equals text/plain (12), max >= 100 (14), x-missing present (18).
        assert_eq!(failed, vec![12, 14, 18]);
        assert_eq!(bits.results().count(), 9);
        assert_eq!(bits.results().next(), Some((10, true)));
    }

    #[test]
    fn a_body_longer_than_what_is_kept_fails_body_checks_but_not_its_size() {
        let c = checks(r#"[{"name":"b","body_contains":"x"},{"name":"z","body_size":"> 1MiB"}]"#);
        let body = vec![b'x'; MAX_CHECKED_BODY];
        let bits = c.evaluate(&Received { status: 200, head: HEAD, body: &body, body_len: MAX_CHECKED_BODY as u64 + 10 });
        assert_eq!(bits.failed, 0b01);
    }

    #[test]
    fn kept_body_stops_at_the_bound() {
        let mut kept = vec![0; MAX_CHECKED_BODY - 3];
        keep_body(&mut kept, b"abcdef");
        assert_eq!(kept.len(), MAX_CHECKED_BODY);
        assert!(kept.ends_with(b"abc"));
    }
}
