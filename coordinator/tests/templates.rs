//! Templated requests end to end (docs/plan.md, "Templates"): `stampede
//! run` with two local agents against a built-in target this test starts,
//! which keeps every path it was sent (`Behaviour::record_paths`); and
//! `stampede validate` refusing an unknown template at its line.
//! Data files ("Data files"): `unique` rows over 3 agents each used once
//! (in a flow: once per flow, by all its requests), `sequential` walking
//! the file, a used-up `unique` file failing as kind `data`, no value in
//! the report, and bad data refused naming file, line and field.

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
    stampede_with(args, plan, &[], out)
}

/// [`stampede`] with `files` (name, text) beside the plan: its data files.
fn stampede_with(args: &[&str], plan: &str, files: &[(&str, &str)], out: bool) -> (i32, String, Option<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
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

/// How many times the target was sent each path.
fn counts(target: &Target) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in target.paths() {
        *out.entry(p).or_insert(0) += 1;
    }
    out
}

/// `id,secret` rows `0..n`, the secret a value that must not leak.
fn ids_csv(n: usize) -> String {
    let mut s = String::from("id,secret\n");
    for i in 0..n {
        s.push_str(&format!("{i},pw-{i}-leak\n"));
    }
    s
}

/// 90 unique rows, 90 flows over 3 agents: each flow's two requests use
/// the same row, and every row is used by exactly one flow in the fleet.
#[test]
fn unique_rows_are_used_once_across_three_agents() {
    let target = Target::start();
    let plan = format!(
        r#"
name: unique
target: {}
phases:
  - {{ name: users, load: {{ model: iterations, count: 90, concurrency: 6, max_duration: 60s }} }}
steps:
  - name: user
    data: {{ file: users.csv, order: unique }}
    flow:
      - {{ name: login, request: {{ path: "/login/{{{{data.id}}}}", headers: {{ x-password: "{{{{data.secret}}}}" }} }} }}
      - {{ name: me, request: {{ path: "/me/{{{{data.id}}}}" }} }}
"#,
        target.url()
    );
    let (code, stderr, report) = stampede_with(&["run", "--local-agents", "3"], &plan, &[("users.csv", &ids_csv(90))], true);
    let report = report.unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(code, 0, "{stderr}\n{}", report["slos"]);
    assert_eq!(report["totals"]["requests"], 90, "{}", report["totals"]);
    assert_eq!(report["totals"]["errors"], 0, "{}", report["totals"]);
    let counts = counts(&target);
    for i in 0..90 {
        for p in [format!("/login/{i}"), format!("/me/{i}")] {
            assert_eq!(counts.get(&p), Some(&1), "{p}: {counts:?}");
        }
    }
    assert_eq!(counts.len(), 180, "no other path: {counts:?}");
    assert!(stderr.contains("users.csv: 90 rows, unique"), "the run says how the file is used:\n{stderr}");
    // The plan in the report names the file; no value of it travels there.
    assert_eq!(report["plan"]["steps"][0]["data"]["file"], "users.csv");
    assert!(!report.to_string().contains("-leak"), "a data value reached the report");
    assert!(!stderr.contains("-leak"), "a data value reached the log");
}

/// 4 rows, 8 requests over 2 agents: each agent walks the file from its
/// own offset, so the fleet uses every row twice.
#[test]
fn sequential_rows_walk_the_file_from_each_agents_offset() {
    let target = Target::start();
    let plan = format!(
        r#"
name: sequential
target: {}
phases:
  - {{ name: p, load: {{ model: iterations, count: 8, concurrency: 2, max_duration: 60s }} }}
steps:
  - {{ name: s, request: {{ path: "/s/{{{{data.id}}}}" }}, data: {{ file: ids.jsonl }} }}
"#,
        target.url()
    );
    let rows: String = (0..4).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    let (code, stderr, report) = stampede_with(&["run", "--local-agents", "2"], &plan, &[("ids.jsonl", &rows)], true);
    let report = report.unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["totals"]["requests"], 8);
    let counts = counts(&target);
    let want: BTreeMap<String, usize> = (0..4).map(|i| (format!("/s/{i}"), 2)).collect();
    assert_eq!(counts, want);
}

/// 10 unique rows, 15 iterations at concurrency 2: 10 requests go out; each
/// connection then finds no row, fails once as `data` and stops.
#[test]
fn used_up_unique_rows_fail_as_data_and_stop_the_user() {
    let target = Target::start();
    let plan = format!(
        r#"
name: exhausted
target: {}
phases:
  - {{ name: p, load: {{ model: iterations, count: 15, concurrency: 2, max_duration: 60s }} }}
steps:
  - {{ name: s, request: {{ path: "/s/{{{{data.id}}}}" }}, data: {{ file: ids.csv, order: unique }} }}
slos:
  - {{ metric: "errors:data", pass: "< 1" }}
"#,
        target.url()
    );
    let (code, stderr, report) = stampede_with(&["run", "--local-agents", "1"], &plan, &[("ids.csv", &ids_csv(10))], true);
    let report = report.unwrap_or_else(|| panic!("no report: {stderr}"));
    assert_eq!(code, 1, "the SLO on used-up rows fails: {stderr}");
    assert_eq!(counts(&target).len(), 10);
    assert!(counts(&target).values().all(|&n| n == 1));
    assert_eq!(report["totals"]["requests"], 12, "10 sent and 2 with no row: {}", report["totals"]);
    assert_eq!(report["totals"]["errors_by_kind"]["data"], 2, "{}", report["totals"]);
}

/// `stampede validate`: a column the file lacks, a file that is missing,
/// and a bad line of a file, each named where it is; a dry run still
/// prints a plan whose file is missing.
#[test]
fn bad_data_is_refused_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let validate = |plan: &str| {
        let file = dir.path().join("plan.yaml");
        std::fs::write(&file, plan).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_stampede")).arg("validate").arg(&file).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    std::fs::write(dir.path().join("u.csv"), "user,password\nalice,pw-leak\nbob\n").unwrap();
    std::fs::write(dir.path().join("ok.csv"), "user,password\nalice,pw-leak\n").unwrap();
    let plan = |file: &str, path: &str| {
        format!("name: t\ntarget: http://127.0.0.1:1\nphases: [{{ name: p, duration: 1s, load: {{ model: closed, concurrency: 1 }} }}]\nsteps:\n  - name: s\n    data: {{ file: {file} }}\n    request: {{ path: \"{path}\" }}\n")
    };
    let (code, e) = validate(&plan("ok.csv", "/{{data.pass}}"));
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("plan.yaml:7") && e.contains("steps[0].request.path") && e.contains("no column `pass`; its columns: user, password"), "{e}");
    let (code, e) = validate(&plan("u.csv", "/{{data.user}}"));
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("steps[0].data.file") && e.contains("u.csv:3: 1 fields where the header has 2"), "{e}");
    assert!(!e.contains("pw-leak"), "{e}");
    let (code, e) = validate(&plan("missing.csv", "/{{data.user}}"));
    assert_eq!(code, Some(2), "{e}");
    assert!(e.contains("steps[0].data.file") && e.contains("missing.csv"), "{e}");
    let (code, e) = validate(&plan("ok.csv", "/{{data.user}}"));
    assert_eq!(code, Some(0), "{e}");
    // A dry run prints a plan whose data file is not on this machine.
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan("missing.csv", "/{{data.user}}")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stampede")).arg("run").arg(&file).arg("--dry-run").output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(e.contains("data: step `s` uses missing.csv (sequential): not read here"), "{e}");
}
