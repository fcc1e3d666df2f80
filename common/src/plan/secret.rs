//! Secrets in plans: a header value or a body written as text, or taken from
//! an environment variable or a file (`{ secret_env: TOKEN, prefix: "Bearer " }`,
//! `{ secret_file: /run/secrets/x }`).
//!
//! The plan only ever holds the *reference*: serializing a plan (report.json,
//! the run store, `Assignment.plan_json`) writes `{ secret_env: TOKEN }`,
//! never the value. The value is resolved where `stampede run` runs, kept
//! beside the reference in memory ([`Secret::sent`], `Debug` prints `***`),
//! and travels to the agents that need it on their session, in
//! `Assignment.secrets` / `SteadyStateRequest.secrets`, keyed by
//! [`Secret::key`] (`env:TOKEN`, `file:/run/secrets/x`).

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::limits::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
use super::Plan;

/// What is printed instead of a secret's value.
pub const REDACTED: &str = "***";

/// A header value or a request body: literal text, or a [`Secret`].
#[derive(Clone, PartialEq)]
pub enum Text {
    Plain(String),
    Secret(Secret),
}

impl Text {
    /// The bytes that go on the wire: the literal text, or the secret's value
    /// with its prefix and suffix. Empty for a secret not resolved yet (an
    /// agent refuses such a plan before it sends anything).
    pub fn sent(&self) -> &str {
        match self {
            Text::Plain(s) => s,
            Text::Secret(s) => s.sent.as_ref().map_or("", |h| h.sent.as_str()),
        }
    }

    pub fn secret(&self) -> Option<&Secret> {
        match self {
            Text::Secret(s) => Some(s),
            Text::Plain(_) => None,
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::Plain(s.to_string())
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, Text::Plain(s) if s == other)
    }
}

/// A secret is never printed, even by `{:?}` of a whole plan.
impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Text::Plain(s) => fmt::Debug::fmt(s, f),
            Text::Secret(s) => fmt::Debug::fmt(s, f),
        }
    }
}

/// `{ secret_env: NAME }` or `{ secret_file: PATH }`, with an optional
/// `prefix` and `suffix` sent around the value (`prefix: "Bearer "`).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suffix: String,
    /// prefix + value + suffix once resolved; never serialized.
    #[serde(skip)]
    sent: Option<Hidden>,
}

/// A secret value as read and as sent: compared, cloned, never printed.
#[derive(Clone, PartialEq)]
struct Hidden {
    raw: String,
    sent: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret").field("source", &self.key()).field("value", &REDACTED).finish()
    }
}

impl Secret {
    /// The name the value travels under: `env:NAME` or `file:PATH`.
    pub fn key(&self) -> String {
        match (&self.secret_env, &self.secret_file) {
            (Some(name), _) => format!("env:{name}"),
            (None, Some(path)) => format!("file:{path}"),
            (None, None) => "none".to_string(),
        }
    }

    /// Where the value comes from, for messages: `environment variable TOKEN`.
    pub fn describe(&self) -> String {
        match (&self.secret_env, &self.secret_file) {
            (Some(name), _) => format!("environment variable {name}"),
            (None, Some(path)) => format!("file {path}"),
            (None, None) => "nothing".to_string(),
        }
    }

    pub fn is_resolved(&self) -> bool {
        self.sent.is_some()
    }

    /// The shape: exactly one source, a usable variable name.
    pub(super) fn check(&self) -> Result<(), String> {
        match (&self.secret_env, &self.secret_file) {
            (Some(_), Some(_)) | (None, None) => Err("a secret takes exactly one of `secret_env: NAME` and `secret_file: PATH`".into()),
            (Some(name), None) if !super::params::is_var_name(name) => {
                Err(format!("secret_env: `{name}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"))
            }
            (None, Some(path)) if path.is_empty() => Err("secret_file: must not be empty".into()),
            _ => Ok(()),
        }
    }

    /// Sets the value (`raw`, without prefix and suffix). `header`: a
    /// header value must fit on its line. Errors never quote the value.
    fn fill(&mut self, raw: &str, header: bool) -> Result<(), String> {
        let sent = format!("{}{raw}{}", self.prefix, self.suffix);
        // The limits a plain value meets in validate.rs (which sees a
        // secret before it is filled, as empty): the same request must not
        // pass only because its big value is secret.
        let (limit, what) = if header { (MAX_HEADER_BYTES, "a header value") } else { (MAX_BODY_BYTES, "a body") };
        if sent.len() > limit {
            return Err(format!("the secret from {} is {} bytes with its prefix and suffix; {what} may be at most {limit} bytes", self.describe(), sent.len()));
        }
        if header && sent.contains(['\r', '\n', '\0']) {
            return Err(format!("the secret from {} has a line break or NUL, which a header value cannot have (value {REDACTED})", self.describe()));
        }
        self.sent = Some(Hidden { raw: raw.to_string(), sent });
        Ok(())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Text::Plain(t) => s.serialize_str(t),
            Text::Secret(secret) => secret.serialize(s),
        }
    }
}

/// Text, or a map for a secret. Scalars are taken as text (`x-n: 5`), as
/// everywhere else in a plan.
impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("text, or a secret: `{ secret_env: NAME }` or `{ secret_file: PATH }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text::Plain(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text::Plain(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text::Plain(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text::Plain(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text::Plain(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text::Plain(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Text, A::Error> {
                Secret::deserialize(de::value::MapAccessDeserializer::new(map)).map(Text::Secret)
            }
        }
        d.deserialize_any(V)
    }
}

/// Secret values by [`Secret::key`], as they travel to agents.
pub type SecretValues = BTreeMap<String, String>;

/// Where secret values come from when a plan is loaded.
pub enum SecretSource<'a> {
    /// Leave them unresolved (only their shape is checked).
    Unresolved,
    /// Read them here: environment variables through `env`, files relative
    /// to `dir` (the plan's folder).
    Local { env: &'a dyn Fn(&str) -> Option<String>, dir: &'a Path },
    /// Take them from what was sent (a standing coordinator, an agent).
    Given(&'a SecretValues),
}

impl SecretSource<'_> {
    fn value(&self, secret: &Secret) -> Result<String, String> {
        match self {
            SecretSource::Unresolved => unreachable!("checked by the caller"),
            SecretSource::Given(values) => values.get(&secret.key()).cloned().ok_or_else(|| format!("the value of the secret from {} was not sent", secret.describe())),
            SecretSource::Local { env, dir } => match (&secret.secret_env, &secret.secret_file) {
                (Some(name), _) => match env(name) {
                    None => Err(format!("environment variable {name} is not set (it holds a secret of the plan)")),
                    Some(v) if v.is_empty() => Err(format!("environment variable {name} is empty (it holds a secret of the plan)")),
                    Some(v) => Ok(v),
                },
                (None, Some(path)) => {
                    let full = dir.join(path);
                    // Read only up to the largest value a request may carry
                    // (a body): `secret_file: /dev/zero` or a log file by
                    // mistake must not fill memory nor travel to every agent.
                    let mut bytes = Vec::new();
                    let read = std::fs::File::open(&full).and_then(|f| f.take(MAX_BODY_BYTES as u64 + 1).read_to_end(&mut bytes));
                    read.map_err(|e| format!("cannot read the secret file {}: {e}", full.display()))?;
                    if bytes.len() > MAX_BODY_BYTES {
                        return Err(format!("the secret file {} is larger than {MAX_BODY_BYTES} bytes (256 KiB), the most a request's body may be", full.display()));
                    }
                    let text = String::from_utf8(bytes).map_err(|_| format!("the secret file {} is not UTF-8 text", full.display()))?;
                    // As `$(cat FILE)` in a shell: files written by `echo` or
                    // an editor end with a line break that is not part of a token.
                    let text = text.trim_end_matches(['\n', '\r']);
                    if text.is_empty() {
                        return Err(format!("the secret file {} is empty", full.display()));
                    }
                    Ok(text.to_string())
                }
                (None, None) => Err("a secret takes exactly one of `secret_env: NAME` and `secret_file: PATH`".into()),
            },
        }
    }
}

/// Who sends a request that carries a secret.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Owner {
    Step,
    Probe(usize),
    BuiltinTarget,
}

/// Every secret of the plan with its field path, whether it is a header
/// value, and whose it is: steps', probes', the built-in target's.
fn secrets_mut(plan: &mut Plan) -> Vec<(String, &mut Secret, bool, Owner)> {
    let mut out = Vec::new();
    // Each step's request, then its flow's (`flow.rs`).
    let mut requests = Vec::new();
    for (i, s) in plan.steps.iter_mut().enumerate() {
        requests.push((format!("steps[{i}].request"), &mut s.request, Owner::Step));
        for (j, r) in s.flow.iter_mut().flatten().enumerate() {
            requests.push((format!("steps[{i}].flow[{j}].request"), &mut r.request, Owner::Step));
        }
    }
    let probes = plan.probes.iter_mut().enumerate().map(|(i, p)| (format!("probes[{i}].request"), &mut p.request, Owner::Probe(i)));
    for (at, request, owner) in requests.into_iter().chain(probes) {
        for (name, value) in request.headers.iter_mut() {
            if let Text::Secret(s) = value {
                out.push((format!("{at}.headers.{name}"), s, true, owner));
            }
        }
        if let Some(Text::Secret(s)) = &mut request.body {
            out.push((format!("{at}.body"), s, false, owner));
        }
    }
    if let Some(Text::Secret(s)) = plan.builtin_target.as_mut().and_then(|b| b.require_header.as_mut()).map(|r| &mut r.value) {
        out.push(("builtin_target.require_header.value".to_string(), s, true, Owner::BuiltinTarget));
    }
    out
}

/// Checks every secret's shape and, unless `source` is `Unresolved`, fills
/// its value. `Err((field path, message))`; no message quotes a value.
pub fn resolve_secrets(plan: &mut Plan, source: &SecretSource<'_>) -> Result<(), (String, String)> {
    resolve_where(plan, source, |_| true)
}

/// An agent's part: the secrets of the requests it sends — every step's
/// (with `steps`), and those of the probes `runs_probe` says it runs — from
/// the `values` the coordinator sent; the rest stay unresolved (it never
/// sends them).
pub fn fill_agent_secrets(plan: &mut Plan, values: &SecretValues, steps: bool, runs_probe: impl Fn(usize) -> bool) -> Result<(), (String, String)> {
    resolve_where(plan, &SecretSource::Given(values), |owner| match owner {
        Owner::Step => steps,
        Owner::Probe(i) => runs_probe(i),
        Owner::BuiltinTarget => false,
    })
}

fn resolve_where(plan: &mut Plan, source: &SecretSource<'_>, wanted: impl Fn(Owner) -> bool) -> Result<(), (String, String)> {
    for (path, secret, header, owner) in secrets_mut(plan) {
        secret.check().map_err(|m| (path.clone(), m))?;
        if matches!(source, SecretSource::Unresolved) || !wanted(owner) {
            continue;
        }
        let raw = source.value(secret).map_err(|m| (path.clone(), m))?;
        secret.fill(&raw, header).map_err(|m| (path.clone(), m))?;
    }
    Ok(())
}

impl Plan {
    /// Every resolved secret's raw value by key: what `stampede run` sends
    /// (to a standing coordinator, or to agents), and what reports redact.
    pub fn secret_values(&self) -> SecretValues {
        let flows = self.flow_requests().map(|(_, r)| &r.request);
        let requests = self.steps.iter().map(|s| &s.request).chain(flows).chain(self.probes.iter().map(|p| &p.request));
        let texts = requests.flat_map(|r| r.headers.values().chain(r.body.iter()));
        let target = self.builtin_target.as_ref().and_then(|b| b.require_header.as_ref()).map(|r| &r.value);
        let mut out = SecretValues::new();
        for s in texts.chain(target).filter_map(Text::secret) {
            if let Some(h) = &s.sent {
                out.insert(s.key(), h.raw.clone());
            }
        }
        out
    }

    /// The secrets the agent at `index` needs: every step's if it sends
    /// load (`load`: a fault-only agent, `--capacity 0`, sends none — it
    /// sits on a service node and must not hold the load's tokens), and
    /// those of the probes it runs (the first `probe.agents` agents run a
    /// probe) or that gate the faults it applies (`faults`, indices into the
    /// plan's). Never the built-in target's: it runs beside the coordinator.
    pub fn secrets_for_agent(&self, index: usize, load: bool, faults: &[u32], all: &SecretValues) -> SecretValues {
        let flows = self.flow_requests().map(|(_, r)| &r.request);
        let steps = self.steps.iter().map(|s| &s.request).chain(flows).filter(|_| load);
        let probes = self.probes.iter().enumerate().filter(|&(i, _)| self.agent_sends_probe(index, i, faults)).map(|(_, p)| &p.request);
        pick(steps.chain(probes), all)
    }

    /// Whether the agent at `index`, applying `faults` (indices into the
    /// plan's), may send probe `probe`'s request: it runs the probe (the
    /// first `agents` agents do), or the probe is part of the steady state
    /// that gates one of its faults (`unless_unhealthy`), which the agent
    /// applying the fault checks itself. An agent with no such fault never
    /// sends the steady state's probes, and gets none of their secrets.
    pub fn agent_sends_probe(&self, index: usize, probe: usize, faults: &[u32]) -> bool {
        let Some(p) = self.probes.get(probe) else { return false };
        let gates = faults.iter().any(|&f| self.faults.get(f as usize).is_some_and(|f| f.unless_unhealthy.is_some()));
        index < p.agents as usize || (gates && self.steady_state.as_ref().is_some_and(|s| s.probes.contains(&p.name)))
    }

    /// The secrets of the probes at `indices` (a steady-state request).
    pub fn secrets_for_probes(&self, indices: &[usize], all: &SecretValues) -> SecretValues {
        pick(indices.iter().filter_map(|&i| self.probes.get(i)).map(|p| &p.request), all)
    }
}

fn pick<'a>(requests: impl Iterator<Item = &'a super::Request>, all: &SecretValues) -> SecretValues {
    let mut out = SecretValues::new();
    for r in requests {
        for s in r.headers.values().chain(r.body.iter()).filter_map(Text::secret) {
            if let Some(v) = all.get(&s.key()) {
                out.insert(s.key(), v.clone());
            }
        }
    }
    out
}

/// `text` with every secret value replaced by `***`: the last line of
/// defence for what is written or logged (a target that echoes a header
/// into a check's detail). Values shorter than 4 bytes are left alone:
/// replacing every `1` would corrupt a report more than it protects.
///
/// Reports are JSON, HTML and XML: a value with a `"`, `\`, `<` or `&`
/// is written escaped there, so each value is also looked for as JSON and
/// as markup escape it (`report::escape_markup`).
pub fn redact(text: &str, values: &SecretValues) -> String {
    let mut out = text.to_string();
    for v in values.values().filter(|v| v.len() >= 4) {
        let json = serde_json::to_string(v).map(|q| q[1..q.len() - 1].to_string()).unwrap_or_default();
        let markup = v.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;");
        for form in [v.as_str(), json.as_str(), markup.as_str()] {
            if !form.is_empty() && out.contains(form) {
                out = out.replace(form, REDACTED);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t-value".into()),
            "EMPTY" => Some(String::new()),
            "CRLF" => Some("a\r\nInjected: 1".into()),
            _ => None,
        }
    }

    fn plan(header: &str) -> Plan {
        let text = format!(
            "name: s\ntarget: http://127.0.0.1:1\nphases:\n  - {{ name: p, duration: 1s, load: {{ model: open, rate: 1/s }} }}\nsteps:\n  - name: a\n    request:\n      headers:\n        authorization: {header}\n        accept: text/plain\n"
        );
        crate::plan::load_str(&text, crate::plan::Format::Yaml, Path::new("p.yaml")).unwrap()
    }

    #[test]
    fn a_secret_is_resolved_sent_and_never_serialized_or_printed() {
        let mut p = plan("{ secret_env: TOKEN, prefix: \"Bearer \" }");
        resolve_secrets(&mut p, &SecretSource::Local { env: &env, dir: Path::new(".") }).unwrap();
        let h = &p.steps[0].request.headers["authorization"];
        assert_eq!(h.sent(), "Bearer s3cr3t-value");
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(json.contains(r#""authorization":{"secret_env":"TOKEN","prefix":"Bearer "}"#), "{json}");
        assert!(!format!("{p:?}").contains("s3cr3t"));
        assert_eq!(p.secret_values(), [("env:TOKEN".to_string(), "s3cr3t-value".to_string())].into_iter().collect());
        // What an agent does with plan_json and the values sent beside it.
        let mut again: Plan = serde_json::from_str(&json).unwrap();
        assert_eq!(again.steps[0].request.headers["authorization"].sent(), "");
        let values = p.secret_values();
        resolve_secrets(&mut again, &SecretSource::Given(&values)).unwrap();
        assert_eq!(again.steps[0].request.headers["authorization"].sent(), "Bearer s3cr3t-value");
        assert_eq!(again.steps[0].request.headers["accept"], "text/plain");
    }

    #[test]
    fn a_flow_requests_secret_is_resolved_and_never_serialized() {
        let text = "name: s\ntarget: http://127.0.0.1:1\nphases:\n  - { name: p, duration: 1s, load: { model: open, rate: 1/s } }\nsteps:\n  - name: f\n    flow:\n      - { name: a, request: { body: { secret_env: TOKEN } } }\n";
        let mut p = crate::plan::load_str(text, crate::plan::Format::Yaml, Path::new("p.yaml")).unwrap();
        resolve_secrets(&mut p, &SecretSource::Local { env: &env, dir: Path::new(".") }).unwrap();
        let body = |p: &Plan| p.steps[0].flow.as_ref().unwrap()[0].request.body.as_ref().unwrap().sent().to_string();
        assert_eq!(body(&p), "s3cr3t-value");
        let json = serde_json::to_string(&p).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        let mut again: Plan = serde_json::from_str(&json).unwrap();
        resolve_secrets(&mut again, &SecretSource::Given(&p.secret_values())).unwrap();
        assert_eq!(body(&again), "s3cr3t-value");
        assert_eq!(p.secrets_for_agent(0, true, &[], &p.secret_values()).len(), 1, "every agent gets a flow's secret");
    }

    #[test]
    fn missing_empty_or_broken_secrets_are_refused_without_their_value() {
        let local = SecretSource::Local { env: &env, dir: Path::new("/nonexistent") };
        let cases = [
            ("{ secret_env: UNSET }", "environment variable UNSET is not set"),
            ("{ secret_env: EMPTY }", "environment variable EMPTY is empty"),
            ("{ secret_env: CRLF }", "has a line break or NUL"),
            ("{ secret_file: x.txt }", "cannot read the secret file /nonexistent/x.txt"),
            ("{ secret_env: TOKEN, secret_file: x }", "exactly one of"),
            ("{ secret_env: \"1A\" }", "is not an environment variable name"),
        ];
        for (header, want) in cases {
            // A bad shape is refused by the loader already, a bad value when resolved.
            let text = format!("name: s\ntarget: http://127.0.0.1:1\nphases:\n  - {{ name: p, duration: 1s, load: {{ model: open, rate: 1/s }} }}\nsteps:\n  - name: a\n    request:\n      headers:\n        authorization: {header}\n");
            let loaded = crate::plan::load_str(&text, crate::plan::Format::Yaml, Path::new("p.yaml")).map_err(|e| (e.path, e.message));
            let (path, msg) = loaded.and_then(|mut p| resolve_secrets(&mut p, &local)).unwrap_err();
            assert_eq!(path, "steps[0].request.headers.authorization");
            assert!(msg.contains(want), "{header}: {msg}");
            assert!(!msg.contains("Injected"), "{msg}");
        }
        let mut p = plan("{ secret_env: TOKEN }");
        let (_, msg) = resolve_secrets(&mut p, &SecretSource::Given(&SecretValues::new())).unwrap_err();
        assert!(msg.contains("was not sent"), "{msg}");
    }

    #[test]
    fn a_secret_file_loses_its_trailing_line_break() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tok"), "abc-123\n").unwrap();
        let mut p = plan("{ secret_file: tok }");
        resolve_secrets(&mut p, &SecretSource::Local { env: &env, dir: dir.path() }).unwrap();
        assert_eq!(p.steps[0].request.headers["authorization"].sent(), "abc-123");
        assert_eq!(p.secret_values()["file:tok"], "abc-123");
    }

    #[test]
    fn a_secret_is_held_to_the_limits_of_a_plain_value_and_a_huge_file_is_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let local = SecretSource::Local { env: &env, dir: dir.path() };
        // A header value over 8 KiB, as a plain one would be refused.
        std::fs::write(dir.path().join("long"), "x".repeat(MAX_HEADER_BYTES + 1)).unwrap();
        let (path, msg) = resolve_secrets(&mut plan("{ secret_file: long }"), &local).unwrap_err();
        assert_eq!(path, "steps[0].request.headers.authorization");
        assert!(msg.contains("a header value may be at most 8192 bytes"), "{msg}");
        assert!(!msg.contains("xxxx"), "{msg}");
        // A file far past any request's size: refused, read only up to the limit.
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(1 << 40).unwrap(); // 1 TiB, sparse: reading it whole would never end
        let (_, msg) = resolve_secrets(&mut plan("{ secret_file: big }"), &local).unwrap_err();
        assert!(msg.contains("is larger than 262144 bytes"), "{msg}");
        // A body secret may be as large as a plain body.
        let text = "name: s\ntarget: http://127.0.0.1:1\nphases:\n  - { name: p, duration: 1s, load: { model: open, rate: 1/s } }\nsteps:\n  - { name: a, request: { method: POST, body: { secret_file: body } } }\n";
        std::fs::write(dir.path().join("body"), "y".repeat(MAX_BODY_BYTES)).unwrap();
        let mut p = crate::plan::load_str(text, crate::plan::Format::Yaml, Path::new("p.yaml")).unwrap();
        resolve_secrets(&mut p, &local).unwrap();
        assert_eq!(p.steps[0].request.body.as_ref().unwrap().sent().len(), MAX_BODY_BYTES);
    }

    #[test]
    fn each_agent_gets_only_the_secrets_of_what_it_sends() {
        let text = "name: s\ntarget: http://127.0.0.1:0
builtin_target: { require_header: { name: x, value: { secret_env: TARGET_ONLY } } }
phases:\n  - { name: p, duration: 1s, load: { model: open, rate: 1/s } }
steps:\n  - { name: a, request: { headers: { x: { secret_env: TOKEN } } } }
probes:\n  - { name: h, every: 1s, agents: 1, request: { body: { secret_env: PROBE_ONLY } } }\n";
        let mut p = crate::plan::load_str(text, crate::plan::Format::Yaml, Path::new("p.yaml")).unwrap();
        let env = |n: &str| Some(format!("value-of-{n}"));
        resolve_secrets(&mut p, &SecretSource::Local { env: &env, dir: Path::new(".") }).unwrap();
        let all = p.secret_values();
        assert_eq!(all.len(), 3);
        let keys = |v: SecretValues| v.into_keys().collect::<Vec<_>>();
        assert_eq!(keys(p.secrets_for_agent(0, true, &[], &all)), ["env:PROBE_ONLY", "env:TOKEN"]);
        assert_eq!(keys(p.secrets_for_agent(1, true, &[], &all)), ["env:TOKEN"], "agent 1 runs no probe");
        // A fault-only agent sends no load: it gets no step's secret.
        assert_eq!(keys(p.secrets_for_agent(1, false, &[], &all)), Vec::<String>::new());
        assert_eq!(keys(p.secrets_for_agent(0, false, &[], &all)), ["env:PROBE_ONLY"], "but it gets its probes'");
        assert_eq!(keys(p.secrets_for_probes(&[0], &all)), ["env:PROBE_ONLY"]);
        // Agent 1 fills what it sends; the rest stays unresolved, without error.
        let mut on_agent: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        fill_agent_secrets(&mut on_agent, &p.secrets_for_agent(1, true, &[], &all), true, |i| p.agent_sends_probe(1, i, &[])).unwrap();
        assert_eq!(on_agent.steps[0].request.headers["x"].sent(), "value-of-TOKEN");
        assert_eq!(on_agent.probes[0].request.body.as_ref().unwrap().sent(), "");
        // Agent 0 must have the probe's: without it, it refuses.
        let err = fill_agent_secrets(&mut on_agent, &p.secrets_for_agent(1, true, &[], &all), true, |i| p.agent_sends_probe(0, i, &[])).unwrap_err();
        assert_eq!(err.0, "probes[0].request.body");
        // A fault-only agent fills no step secret, and needs none.
        let mut fault_only: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        fill_agent_secrets(&mut fault_only, &p.secrets_for_agent(1, false, &[], &all), false, |i| p.agent_sends_probe(1, i, &[])).unwrap();
        assert_eq!(fault_only.steps[0].request.headers["x"].sent(), "");
    }

    #[test]
    fn only_an_agent_whose_fault_is_gated_gets_the_steady_states_probe_secrets() {
        let text = "name: s\ntarget: http://127.0.0.1:1
phases:\n  - { name: p, duration: 5s, load: { model: open, rate: 1/s } }
steps:\n  - { name: a, request: { headers: { x: { secret_env: TOKEN } } } }
probes:\n  - { name: h, every: 1s, agents: 1, request: { headers: { x: { secret_env: PROBE_ONLY } } } }
steady_state: { probes: [h], within: 5s }
faults:
  - { name: gated, kind: pause, at: 1s, duration: 1s, instance: { driver: process, pid: 4000000 }, unless_unhealthy: skip }
  - { name: plain, kind: pause, at: 1s, duration: 1s, instance: { driver: process, pid: 4000001 } }\n";
        let mut p = crate::plan::load_str(text, crate::plan::Format::Yaml, Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let env = |n: &str| Some(format!("value-of-{n}"));
        resolve_secrets(&mut p, &SecretSource::Local { env: &env, dir: Path::new(".") }).unwrap();
        let all = p.secret_values();
        let keys = |v: SecretValues| v.into_keys().collect::<Vec<_>>();
        // Agent 1 runs no probe: the probe's secret only with the gated fault.
        assert_eq!(keys(p.secrets_for_agent(1, true, &[0], &all)), ["env:PROBE_ONLY", "env:TOKEN"]);
        assert_eq!(keys(p.secrets_for_agent(1, true, &[1], &all)), ["env:TOKEN"]);
        assert_eq!(keys(p.secrets_for_agent(1, true, &[], &all)), ["env:TOKEN"]);
        assert_eq!(keys(p.secrets_for_agent(1, false, &[0, 1], &all)), ["env:PROBE_ONLY"], "a fault-only agent checking its gate");
        // Agent 0 runs the probe, faults or not.
        assert_eq!(keys(p.secrets_for_agent(0, true, &[], &all)), ["env:PROBE_ONLY", "env:TOKEN"]);
    }

    #[test]
    fn redaction_replaces_values_but_not_tiny_ones() {
        let values: SecretValues = [("env:A".to_string(), "s3cr3t".to_string()), ("env:B".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(redact("x s3cr3t y 1", &values), "x *** y 1");
    }

    #[test]
    fn redaction_finds_a_value_as_json_and_markup_write_it() {
        let v = r#"a"b\c<d>&'e"#;
        let values: SecretValues = [("env:A".to_string(), v.to_string())].into_iter().collect();
        let json = serde_json::to_string(&serde_json::json!({ "error": format!("echoed {v}") })).unwrap();
        assert!(!json.contains(v), "the JSON writes it escaped: {json}");
        assert_eq!(redact(&json, &values), r#"{"error":"echoed ***"}"#);
        let html = "<td>echoed a&quot;b\\c&lt;d&gt;&amp;&#39;e</td>";
        assert_eq!(redact(html, &values), "<td>echoed ***</td>");
    }
}
