//! Data files end to end (docs/plan.md, "Data files"): `stampede run` with
//! local agents against a listener of this test that records every
//! request's path, so which row each request used can be counted.
//! `unique` rows over 3 agents are each used once (in a flow: once per
//! flow, by all its requests), `sequential` walks the file, a used-up
//! `unique` file fails as kind `data`, and no value reaches the report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A keep-alive HTTP/1.1 listener on 127.0.0.1 answering 200 to every
/// request (bodies are not sent by these plans), keeping each request's
/// path. Its threads end with the test process.
struct Recorder {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let kept = paths.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(conn, &kept));
            }
        });
        Recorder { addr, paths }
    }

    /// How many times each path was requested.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for p in self.paths.lock().unwrap().iter() {
            *out.entry(p.clone()).or_insert(0) += 1;
        }
        out
    }
}

fn serve(conn: TcpStream, paths: &Mutex<Vec<String>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = conn.try_clone().unwrap();
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("").to_string();
        // The rest of the head, up to its blank line.
        loop {
            let mut header = String::new();
            if lines.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
        }
        paths.lock().unwrap().push(path);
        if writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").is_err() {
            return;
        }
    }
}

/// `stampede run PLAN --local-agents N --out DIR` with `files` beside the
/// plan: exit code, stderr, report.
fn run(plan: &str, files: &[(&str, &str)], agents: &str) -> (i32, String, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plan.yaml");
    std::fs::write(&file, plan).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out_dir = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_stampede")).args(["run", "--local-agents", agents]).arg(&file).arg("--out").arg(&out_dir).output().expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let text = std::fs::read_to_string(Path::new(&out_dir).join("report.json")).unwrap_or_else(|_| panic!("no report; stderr:\n{stderr}"));
    (output.status.code().unwrap_or(-1), stderr, serde_json::from_str(&text).unwrap())
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
    let server = Recorder::start();
    let plan = format!(
        r#"
name: unique
target: http://{}
phases:
  - {{ name: users, load: {{ model: iterations, count: 90, concurrency: 6, max_duration: 60s }} }}
steps:
  - name: user
    data: {{ file: users.csv, order: unique }}
    flow:
      - {{ name: login, request: {{ path: "/login/{{{{data.id}}}}", headers: {{ x-password: "{{{{data.secret}}}}" }} }} }}
      - {{ name: me, request: {{ path: "/me/{{{{data.id}}}}" }} }}
"#,
        server.addr
    );
    let (code, stderr, report) = run(&plan, &[("users.csv", &ids_csv(90))], "3");
    assert_eq!(code, 0, "{stderr}\n{}", report["slos"]);
    assert_eq!(report["totals"]["requests"], 90, "{}", report["totals"]);
    assert_eq!(report["totals"]["errors"], 0, "{}", report["totals"]);
    let counts = server.counts();
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
    let server = Recorder::start();
    let plan = format!(
        r#"
name: sequential
target: http://{}
phases:
  - {{ name: p, load: {{ model: iterations, count: 8, concurrency: 2, max_duration: 60s }} }}
steps:
  - {{ name: s, request: {{ path: "/s/{{{{data.id}}}}" }}, data: {{ file: ids.jsonl }} }}
"#,
        server.addr
    );
    let rows: String = (0..4).map(|i| format!("{{\"id\": {i}}}\n")).collect();
    let (code, stderr, report) = run(&plan, &[("ids.jsonl", &rows)], "2");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["totals"]["requests"], 8);
    let counts = server.counts();
    let want: BTreeMap<String, usize> = (0..4).map(|i| (format!("/s/{i}"), 2)).collect();
    assert_eq!(counts, want);
}

/// 10 unique rows, 15 iterations at concurrency 2: 10 requests go out; each
/// connection then finds no row, fails once as `data` and stops.
#[test]
fn used_up_unique_rows_fail_as_data_and_stop_the_user() {
    let server = Recorder::start();
    let plan = format!(
        r#"
name: exhausted
target: http://{}
phases:
  - {{ name: p, load: {{ model: iterations, count: 15, concurrency: 2, max_duration: 60s }} }}
steps:
  - {{ name: s, request: {{ path: "/s/{{{{data.id}}}}" }}, data: {{ file: ids.csv, order: unique }} }}
slos:
  - {{ metric: "errors:data", pass: "< 1" }}
"#,
        server.addr
    );
    let (code, stderr, report) = run(&plan, &[("ids.csv", &ids_csv(10))], "1");
    assert_eq!(code, 1, "the SLO on used-up rows fails: {stderr}");
    assert_eq!(server.counts().len(), 10);
    assert!(server.counts().values().all(|&n| n == 1));
    assert_eq!(report["totals"]["requests"], 12, "10 sent and 2 with no row: {}", report["totals"]);
    assert_eq!(report["totals"]["errors_by_kind"]["data"], 2, "{}", report["totals"]);
}

/// `stampede validate`: a column the file lacks, a file that is missing,
/// and a bad line of a file, each named where it is.
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
}
