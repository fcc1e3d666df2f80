//! Templated requests end to end (docs/plan.md, "Templates"): `stampede
//! run` with two local agents against a built-in target this test starts,
//! which keeps every path it was sent (`Behaviour::record_paths`); and
//! `stampede validate` refusing an unknown template at its line.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use stampede_target::{Behaviour, TargetHandle};

struct Target {
    rt: tokio::runtime::Runtime,
    handle: Option<TargetHandle>,
}

impl Target {
    fn start() -> Target {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let behaviour = Behaviour { latency: Duration::from_millis(2), record_paths: true, ..Behaviour::default() };
        let handle = rt.block_on(stampede_target::serve("127.0.0.1:0".parse().unwrap(), behaviour)).unwrap();
        Target { rt, handle: Some(handle) }
    }
    fn url(&self) -> String {
        format!("http://{}", self.handle.as_ref().unwrap().local_addr)
    }
    fn paths(&self) -> Vec<String> {
        self.handle.as_ref().unwrap().paths()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

/// `stampede ARGS.. FILE` with `plan` written to FILE; exit code, stderr, and the report if any.
fn stampede(args: &[&str], plan: &str, out: bool) -> (i32, String, Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    let out_dir = dir.path().join("out");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stampede"));
    cmd.args(args).arg(&file);
    if out {
        cmd.arg("--out").arg(&out_dir);
    }
    let output = cmd.output().expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = std::fs::read_to_string(Path::new(&out_dir).join("report.json")).ok().map(|t| serde_json::from_str(&t).unwrap());
    (output.status.code().unwrap_or(-1), stderr, report)
}

/// 200 iterations at concurrency 4 over two agents: every `{{seq}}` reached
/// the target once (both agents' residues present: fleet-unique, not
/// per-agent), every `{{uuid}}` differs, `{{worker}}` names the fleet's 4
/// virtual users 0..=3, and each user's `{{iteration}}`s run 0, 1, 2, ...
/// A step without templates is sent as written, beside them.
#[test]
fn two_agents_never_send_the_same_seq_and_every_uuid_differs() {
    let target = Target::start();
    let plan = r#"
name: templates
target: TARGET
phases:
  - { name: ids, load: { model: iterations, count: 200, concurrency: 4, max_duration: 60s } }
steps:
  - name: create
    weight: 3
    request:
      method: POST
      path: "/items/{{seq}}?id={{uuid}}&w={{ worker }}&i={{iteration}}&r={{random_int(1,100)}}&t={{now_ms}}"
      headers: { x-id: "item-{{seq}}" }
      body: '{"id": {{seq}}, "literal": "\{{seq}}"}'
  - name: plain
    request: { path: /plain }
"#
    .replace("TARGET", &target.url());
    let (code, stderr, report) = stampede(&["run", "--local-agents", "2"], &plan, true);
    let report = report.unwrap_or_else(|| panic!("no report; stderr:\n{stderr}"));
    assert_eq!(code, 0, "stderr:\n{stderr}\n{report:#}");
    assert_eq!(report["totals"]["requests"], 200, "{report:#}");

    let paths = target.paths();
    assert_eq!(paths.len(), 200, "{paths:?}");
    let (plain, templated): (Vec<_>, Vec<_>) = paths.iter().partition(|p| p.starts_with("/plain"));
    assert!(plain.iter().all(|p| *p == "/plain"), "{plain:?}");
    assert!(!templated.is_empty() && !plain.is_empty(), "both steps ran: {} and {}", templated.len(), plain.len());

    let mut seqs = HashSet::new();
    let mut uuids = HashSet::new();
    let mut iterations: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for p in &templated {
        let (seq, query) = p.strip_prefix("/items/").and_then(|r| r.split_once('?')).unwrap_or_else(|| panic!("path {p}"));
        let q: BTreeMap<&str, &str> = query.split('&').map(|kv| kv.split_once('=').unwrap()).collect();
        assert!(seqs.insert(seq.parse::<u64>().unwrap()), "seq {seq} sent twice");
        let id = uuid::Uuid::parse_str(q["id"]).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(uuids.insert(id), "uuid {id} sent twice");
        let r: i64 = q["r"].parse().unwrap();
        assert!((1..=100).contains(&r), "{p}");
        assert!(q["t"].parse::<u64>().unwrap() > 1_600_000_000_000, "{p}");
        iterations.entry(q["w"].parse().unwrap()).or_default().push(q["i"].parse().unwrap());
    }
    // Agent i of 2 takes the numbers i + 2n: both kinds reached the target.
    assert!(seqs.iter().any(|s| s % 2 == 0) && seqs.iter().any(|s| s % 2 == 1), "{seqs:?}");
    assert_eq!(iterations.keys().copied().collect::<BTreeSet<_>>(), (0..4).collect(), "the fleet's 4 users: {iterations:?}");
    // A user's iterations count its requests of both steps; its templated
    // ones are a subset of 0.., each seen once.
    for (w, its) in &iterations {
        let unique: BTreeSet<_> = its.iter().collect();
        assert_eq!(unique.len(), its.len(), "user {w} repeated an iteration: {its:?}");
        assert!(its.iter().all(|&i| i < 200), "{its:?}");
    }
}

/// An unknown template is refused when the plan loads, at its line.
#[test]
fn an_unknown_template_is_refused_at_its_line() {
    let plan = "name: t\ntarget: http://127.0.0.1:9\nphases:\n  - { name: p, duration: 1s, load: { model: closed, concurrency: 1 } }\nsteps:\n  - name: s\n    request:\n      path: /a/{{sequence}}\n";
    let (code, stderr, _) = stampede(&["validate"], plan, false);
    assert_ne!(code, 0);
    assert!(stderr.contains("plan.yaml:8: steps[0].request.path: `{{sequence}}` is not a known template"), "{stderr}");
    let plan = plan.replace("path: /a/{{sequence}}", "path: /a\n      body: \"{{random_int(9,1)}}\"");
    let (code, stderr, _) = stampede(&["validate"], &plan, false);
    assert_ne!(code, 0);
    assert!(stderr.contains("steps[0].request.body: `{{random_int(9,1)}}`: random_int takes two integers"), "{stderr}");
}
