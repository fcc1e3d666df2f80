//! Broken plans, each a small edit of one valid plan, and the exact error
//! each one gets: field path, line (YAML) and a piece of the message. The
//! error is the user's only guide to the fix, so it is pinned here.

use std::path::Path;

use stampede_common::plan::{load_file, load_str, Format, PlanError};

/// The valid plan every case edits. Line numbers in the cases refer to it
/// (after the edit), so keep its layout stable.
const BASE: &str = r#"name: base
target: http://127.0.0.1:8080
phases:
  - name: warmup
    duration: 10s
    load:
      model: open
      rate: 100/s
  - name: hold
    duration: 20s
    load:
      model: closed
      concurrency: 10
  - name: spike
    duration: 5s
    load:
      model: open
      rate: 200/s
steps:
  - name: read
    weight: 3
    request:
      method: GET
      path: /items
      headers:
        accept: application/json
    expect:
      status: 200-299
  - name: write
    request:
      method: POST
      path: /items
slos:
  - metric: p99
    scope: run
    pass: "< 400ms"
    warn: "< 800ms"
  - metric: error_rate
    scope: phase:hold
    pass: "< 1%"
"#;

struct Case {
    name: &'static str,
    /// Text replacements applied to BASE in order; each `from` must occur exactly once.
    edits: &'static [(&'static str, &'static str)],
    path: &'static str,
    line: Option<usize>,
    message: &'static str,
}

const CASES: &[Case] = &[
    // ---- unknown keys, at every level
    Case {
        // `config` would read this key as "index 99999999999 of list x" and
        // try to allocate it (found by the fuzzer: the process aborted).
        name: "top-level key that looks like a path",
        edits: &[("target: http://127.0.0.1:8080\n", "target: http://127.0.0.1:8080\nx[99999999999]: 5s\n")],
        path: "",
        line: Some(3),
        message: "unknown field `x[99999999999]`",
    },
    Case {
        name: "unknown key at top level",
        edits: &[("target: http://127.0.0.1:8080\n", "target: http://127.0.0.1:8080\ntimout: 5s\n")],
        path: "timout",
        line: Some(3),
        message: "unknown field `timout`, expected one of `name`, `target`",
    },
    Case {
        name: "unknown key in a phase",
        edits: &[("    duration: 20s\n", "    duration: 20s\n    colour: red\n")],
        path: "phases[1].colour",
        line: Some(11),
        message: "unknown field `colour`, expected one of `name`, `duration`, `load`",
    },
    Case {
        name: "unknown key in a load",
        edits: &[("      rate: 100/s\n", "      rate: 100/s\n      max_inflight: 50\n")],
        path: "phases[0].load.max_inflight",
        line: Some(9),
        message: "unknown field `max_inflight`",
    },
    Case {
        name: "unknown key in a step",
        edits: &[("  - name: write\n", "  - name: write\n    wieght: 2\n")],
        path: "steps[1].wieght",
        line: Some(30),
        message: "unknown field `wieght`, expected one of `name`, `weight`, `request`, `expect`",
    },
    Case {
        name: "unknown key in an slo",
        edits: &[("    warn: \"< 800ms\"\n", "    warn: \"< 800ms\"\n    window: 1m\n")],
        path: "slos[0].window",
        line: Some(38),
        message: "unknown field `window`, expected one of `metric`, `scope`, `pass`, `warn`",
    },
    Case {
        name: "key in the wrong case",
        edits: &[("    duration: 20s\n", "    Duration: 20s\n")],
        path: "phases[1].Duration",
        line: Some(10),
        message: "unknown field `Duration`",
    },
    // ---- units
    Case {
        name: "duration without a unit",
        edits: &[("duration: 10s", "duration: 10")],
        path: "phases[0].duration",
        line: Some(5),
        message: "`10` has no unit: write e.g. `10s` or `10ms`",
    },
    Case {
        name: "duration in words",
        edits: &[("duration: 5s", "duration: ten seconds")],
        path: "phases[2].duration",
        line: Some(15),
        message: "`ten seconds` is not a duration",
    },
    Case {
        name: "rate in words",
        edits: &[("rate: 100/s", "rate: fast")],
        path: "phases[0].load.rate",
        line: Some(8),
        message: "`fast` is not a rate",
    },
    Case {
        name: "negative rate",
        edits: &[("rate: 200/s", "rate: -1/s")],
        path: "phases[2].load.rate",
        line: Some(18),
        message: "`-1/s` must be a finite rate >= 0",
    },
    Case {
        name: "rate per week",
        edits: &[("rate: 100/s", "rate: 10/week")],
        path: "phases[0].load.rate",
        line: Some(8),
        message: "`10/week` is not a rate",
    },
    Case {
        name: "weight 0",
        edits: &[("weight: 3", "weight: 0")],
        path: "steps[0].weight",
        line: Some(21),
        message: "must be at least 1",
    },
    Case {
        name: "weights overflow their sum",
        edits: &[("weight: 3", "weight: 4294967295")],
        // The second step (default weight 1) tips the sum over; it has no
        // `weight` line, so the error points at the step.
        path: "steps[1].weight",
        line: Some(29),
        message: "weights add up to more than 4294967295",
    },
    Case {
        name: "string where a number goes",
        edits: &[("concurrency: 10", "concurrency: ten")],
        path: "phases[1].load.concurrency",
        line: Some(13),
        message: "invalid type: string \"ten\", expected an integer",
    },
    // ---- SLOs
    Case {
        name: "unknown scope",
        edits: &[("scope: run", "scope: zone:a")],
        path: "slos[0].scope",
        line: Some(35),
        message: "unknown scope `zone:a`, expected `run`, `phase:NAME` or `step:NAME`",
    },
    Case {
        name: "slo on a phase that does not exist",
        edits: &[("scope: phase:hold", "scope: phase:cooldown")],
        path: "slos[1].scope",
        line: Some(39),
        message: "there is no phase `cooldown`",
    },
    Case {
        name: "slo on a step that does not exist",
        edits: &[("scope: run", "scope: step:delete")],
        path: "slos[0].scope",
        line: Some(35),
        message: "there is no step `delete`",
    },
    Case {
        name: "unknown metric",
        edits: &[("metric: p99", "metric: p98")],
        path: "slos[0].metric",
        line: Some(34),
        message: "unknown metric `p98`, expected one of p50, p90, p95, p99, p999, max, error_rate, throughput",
    },
    Case {
        name: "threshold in the wrong unit",
        edits: &[("pass: \"< 400ms\"", "pass: \"< 1%\"")],
        path: "slos[0].pass",
        line: Some(36),
        message: "`< 1%` does not fit metric `p99`, which takes a duration",
    },
    Case {
        name: "warn threshold in the wrong unit",
        edits: &[("warn: \"< 800ms\"", "warn: \"< 800/s\"")],
        path: "slos[0].warn",
        line: Some(37),
        message: "does not fit metric `p99`",
    },
    Case {
        name: "threshold without a comparison",
        edits: &[("pass: \"< 1%\"", "pass: 1%")],
        path: "slos[1].pass",
        line: Some(40),
        message: "`1%` is not a threshold",
    },
    Case {
        name: "threshold without a unit",
        edits: &[("pass: \"< 1%\"", "pass: \"< 1\"")],
        path: "slos[1].pass",
        line: Some(40),
        message: "`< 1` has no unit",
    },
    // ---- load models
    Case {
        name: "open model without rate",
        edits: &[("      rate: 200/s\n", "")],
        path: "phases[2].load.rate",
        line: Some(16),
        message: "the open model needs a `rate`",
    },
    Case {
        name: "closed model without concurrency",
        edits: &[("      concurrency: 10\n", "")],
        path: "phases[1].load.concurrency",
        line: Some(11),
        message: "the closed model needs `concurrency`",
    },
    Case {
        name: "closed model with rate",
        edits: &[("      concurrency: 10\n", "      concurrency: 10\n      rate: 50/s\n")],
        path: "phases[1].load.rate",
        line: Some(14),
        message: "belongs to the open model",
    },
    Case {
        name: "open model with concurrency",
        edits: &[("      rate: 100/s\n", "      rate: 100/s\n      concurrency: 5\n")],
        path: "phases[0].load.concurrency",
        line: Some(9),
        message: "belongs to the closed model",
    },
    Case {
        name: "concurrency 0",
        edits: &[("concurrency: 10", "concurrency: 0")],
        path: "phases[1].load.concurrency",
        line: Some(13),
        message: "must be at least 1",
    },
    Case {
        name: "unknown model",
        edits: &[("model: closed", "model: half")],
        path: "phases[1].load.model",
        line: Some(12),
        message: "unknown model `half`, expected `open` or `closed`",
    },
    // ---- names
    Case {
        name: "duplicate phase name",
        edits: &[("name: spike", "name: warmup")],
        path: "phases[2].name",
        line: Some(14),
        message: "phase `warmup` is defined twice",
    },
    Case {
        name: "duplicate step name",
        edits: &[("name: write", "name: read")],
        path: "steps[1].name",
        line: Some(29),
        message: "step `read` is defined twice",
    },
    Case {
        name: "empty phases",
        edits: &[(
            "phases:\n  - name: warmup\n    duration: 10s\n    load:\n      model: open\n      rate: 100/s\n  - name: hold\n    duration: 20s\n    load:\n      model: closed\n      concurrency: 10\n  - name: spike\n    duration: 5s\n    load:\n      model: open\n      rate: 200/s\n",
            "phases: []\n",
        )],
        path: "phases",
        line: Some(3),
        message: "a plan needs at least one phase",
    },
    Case {
        name: "missing plan name",
        edits: &[("name: base\n", "")],
        // Not written anywhere: the line is the document's first.
        path: "name",
        line: Some(1),
        message: "is required but missing",
    },
    Case {
        name: "phase without duration",
        edits: &[("    duration: 20s\n", "")],
        path: "phases[1].duration",
        line: Some(9),
        message: "is required but missing",
    },
    Case {
        name: "load without model",
        edits: &[("      model: closed\n", "")],
        path: "phases[1].load.model",
        line: Some(11),
        message: "is required but missing",
    },
    // ---- target and requests
    Case {
        name: "https target",
        edits: &[("http://127.0.0.1:8080", "https://127.0.0.1:8080")],
        path: "target",
        line: Some(2),
        message: "https targets are not supported yet",
    },
    Case {
        name: "target with a path",
        edits: &[("http://127.0.0.1:8080", "http://127.0.0.1:8080/api")],
        path: "target",
        line: Some(2),
        message: "must be a base URL without a path",
    },
    Case {
        name: "target with a bad port",
        edits: &[("http://127.0.0.1:8080", "http://127.0.0.1:80800")],
        path: "target",
        line: Some(2),
        message: "`80800` is not a port",
    },
    Case {
        name: "bad header name",
        edits: &[("accept: application/json", "\"x-trace id\": abc")],
        path: "steps[0].request.headers.x-trace id",
        line: Some(26),
        message: "is not a valid header name",
    },
    Case {
        name: "header stampede sets itself",
        edits: &[("accept: application/json", "Host: example.com")],
        path: "steps[0].request.headers.Host",
        line: Some(26),
        message: "is set by stampede itself",
    },
    Case {
        name: "chunked request body",
        edits: &[("accept: application/json", "transfer-encoding: chunked")],
        path: "steps[0].request.headers.transfer-encoding",
        line: Some(26),
        message: "stampede sends a body with Content-Length",
    },
    Case {
        name: "status range written backwards",
        edits: &[("status: 200-299", "status: 299-200")],
        path: "steps[0].expect.status",
        line: Some(28),
        message: "ranges go low-high",
    },
    Case {
        name: "lower-case method",
        edits: &[("method: GET", "method: get")],
        path: "steps[0].request.method",
        line: Some(23),
        message: "must be an upper-case HTTP method",
    },
    Case {
        name: "request path without a slash",
        edits: &[("      path: /items\n      headers", "      path: items\n      headers")],
        path: "steps[0].request.path",
        line: Some(24),
        message: "must start with `/`",
    },
    // ---- plan-wide settings
    Case {
        name: "timeout beyond the histogram range",
        edits: &[("name: base\n", "name: base\ntimeout: 2h\n")],
        path: "timeout",
        line: Some(2),
        message: "must be at most 1h",
    },
    Case {
        name: "interval too short",
        edits: &[("name: base\n", "name: base\ninterval: 50ms\n")],
        path: "interval",
        line: Some(2),
        message: "must be at least 100ms",
    },
    Case {
        name: "phases longer than a year",
        edits: &[("duration: 5s", "duration: 400days")],
        path: "phases[2].duration",
        line: Some(15),
        message: "more than 365 days",
    },
    Case {
        name: "stall hold as long as its period",
        edits: &[("name: base\n", "name: base\nbuiltin_target:\n  stall: { every: 1s, hold: 1s }\n")],
        path: "builtin_target.stall.hold",
        line: Some(3),
        message: "must be shorter than `every`",
    },
    Case {
        name: "builtin error rate without %",
        edits: &[("name: base\n", "name: base\nbuiltin_target:\n  error_rate: 0.5\n")],
        path: "builtin_target.error_rate",
        line: Some(3),
        message: "`0.5` is not a percentage",
    },
    // ---- YAML itself
    Case {
        name: "yaml syntax error",
        edits: &[("    duration: 20s\n", "    duration: 20s: x\n")],
        path: "",
        line: Some(10),
        message: "not valid yaml",
    },
    Case {
        name: "lines stay right after an alias",
        edits: &[
            ("    load:\n      model: open\n      rate: 100/s\n", "    load: &open\n      model: open\n      rate: 100/s\n"),
            ("    load:\n      model: open\n      rate: 200/s\n", "    load: *open\n    colour: red\n"),
        ],
        path: "phases[2].colour",
        line: Some(17),
        message: "unknown field `colour`",
    },
];

fn edited(case: &Case) -> String {
    let mut text = BASE.to_string();
    for (from, to) in case.edits {
        assert_eq!(text.matches(from).count(), 1, "{}: `{from}` must occur exactly once", case.name);
        text = text.replacen(from, to, 1);
    }
    text
}

#[test]
fn the_base_plan_is_valid() {
    let plan = load_str(BASE, Format::Yaml, Path::new("base.yaml")).unwrap();
    assert_eq!(plan.phases.len(), 3);
    assert_eq!(plan.steps.len(), 2);
}

#[test]
fn every_broken_plan_names_its_field_and_line() {
    assert!(CASES.len() >= 20);
    let mut failures = Vec::new();
    for case in CASES {
        let text = edited(case);
        match load_str(&text, Format::Yaml, Path::new("plan.yaml")) {
            Ok(_) => failures.push(format!("{}: loaded, expected an error at `{}`", case.name, case.path)),
            Err(e) => {
                if e.path != case.path || e.line != case.line || !e.message.contains(case.message) {
                    failures.push(format!(
                        "{}:\n   got  path={:?} line={:?} message={:?}\n   want path={:?} line={:?} message containing {:?}",
                        case.name, e.path, e.line, e.message, case.path, case.line, case.message
                    ));
                }
                assert_eq!(e.file, Path::new("plan.yaml"), "{}", case.name);
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn errors_print_as_file_line_path_message() {
    let text = BASE.replacen("weight: 3", "weight: 0", 1);
    let e = load_str(&text, Format::Yaml, Path::new("plans/nightly.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "plans/nightly.yaml:21: steps[0].weight: must be at least 1 (remove the step to leave it out)"
    );
    let e = PlanError { file: "p.toml".into(), line: None, path: String::new(), message: "boom".into() };
    assert_eq!(e.to_string(), "p.toml: boom");
}

#[test]
fn broken_toml_names_the_field() {
    let text = r#"
name = "base"
target = "http://127.0.0.1:8080"

[[phases]]
name = "warmup"
duration = "10s"
load = { model = "open", rate = "100/s" }

[[phases]]
name = "hold"
duration = "20s"
load = { model = "closed", concurrency = 10, rate = "5/s" }

[[steps]]
name = "read"
"#;
    let e = load_str(text, Format::Toml, Path::new("plan.toml")).unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("phases[1].load.rate", None));
    assert!(e.message.contains("belongs to the open model"), "{e}");

    let e = load_str(&text.replace("\"10s\"", "\"10\""), Format::Toml, Path::new("plan.toml")).unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("phases[0].duration", None));
    assert!(e.message.contains("has no unit"), "{e}");

    let e = load_str("name = \"x\"\ntarget = [", Format::Toml, Path::new("plan.toml")).unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("", None));
    assert!(e.message.contains("not valid toml"), "{e}");
}

#[test]
fn broken_json_names_the_field() {
    let text = r#"{
  "name": "base",
  "target": "http://127.0.0.1:8080",
  "phases": [{ "name": "warmup", "duration": "10s", "load": { "model": "open", "rate": "100/s" } }],
  "steps": [{ "name": "read" }, { "name": "write", "weight": 0 }]
}"#;
    let e = load_str(text, Format::Json, Path::new("plan.json")).unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("steps[1].weight", None));
    assert!(e.message.contains("must be at least 1"), "{e}");

    let e = load_str(&text.replace("\"read\" }", "\"read\", \"colour\": 1 }"), Format::Json, Path::new("plan.json"))
        .unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("steps[0].colour", None));
    assert!(e.message.contains("unknown field `colour`"), "{e}");

    let e = load_str("{ \"name\": ", Format::Json, Path::new("plan.json")).unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("", None));
    assert!(e.message.contains("not valid json"), "{e}");
}

#[test]
fn load_file_checks_the_extension_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("plan.txt");
    std::fs::write(&txt, BASE).unwrap();
    let e = load_file(&txt).unwrap_err();
    assert_eq!((e.file.as_path(), e.path.as_str(), e.line), (txt.as_path(), "", None));
    assert!(e.message.contains("unknown plan format"), "{e}");
    assert!(e.message.contains(".yaml, .yml, .toml or .json"), "{e}");

    let missing = dir.path().join("nope.yaml");
    let e = load_file(&missing).unwrap_err();
    assert_eq!((e.file.as_path(), e.path.as_str(), e.line), (missing.as_path(), "", None));
    assert!(e.message.contains("cannot read the plan"), "{e}");

    let good = dir.path().join("plan.yml");
    std::fs::write(&good, BASE).unwrap();
    assert!(load_file(&good).is_ok());
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BASE.replacen("method: GET", "method: get", 1)).unwrap();
    let e = load_file(&bad).unwrap_err();
    assert_eq!((e.file.as_path(), e.path.as_str(), e.line), (bad.as_path(), "steps[0].request.method", Some(23)));
}

/// A tiny deterministic generator (Knuth's MMIX LCG); no dependency needed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that mean something to YAML or to our value syntaxes.
const NOISE: &[u8] = b" \n\t:-[]{},'\"&*!|>#%@`?0123456789/.smhxyz<=~";

fn mutate(rng: &mut Lcg, text: &str) -> String {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(2) {
        let at = rng.below(b.len() + 1).min(b.len());
        match rng.below(7) {
            0 => b.insert(at, NOISE[rng.below(NOISE.len())]),
            1 if at < b.len() => b[at] = NOISE[rng.below(NOISE.len())],
            2 => {
                let end = (at + 1 + rng.below(12)).min(b.len());
                b.drain(at..end);
            }
            3 => b.truncate(at),
            4 => {
                // Duplicate or move a whole line.
                let lines: Vec<&[u8]> = b.split_inclusive(|&c| c == b'\n').collect();
                let mut lines: Vec<Vec<u8>> = lines.into_iter().map(<[u8]>::to_vec).collect();
                if !lines.is_empty() {
                    let from = rng.below(lines.len());
                    let to = rng.below(lines.len());
                    let line = if rng.below(2) == 0 { lines[from].clone() } else { lines.remove(from) };
                    lines.insert(to.min(lines.len()), line);
                }
                b = lines.concat();
            }
            5 => {
                // Swap a value for another one from the plan.
                let s = String::from_utf8(b.clone()).unwrap();
                let words: Vec<&str> = s.split([' ', '\n']).filter(|w| !w.is_empty()).collect();
                if words.len() > 1 {
                    let (w1, w2) = (words[rng.below(words.len())], words[rng.below(words.len())]);
                    b = s.replacen(w1, w2, 1).into_bytes();
                }
            }
            _ => {
                let indent = b"  ";
                b.splice(at..at, indent.iter().copied());
            }
        }
    }
    // Only ASCII goes in, so the text stays UTF-8.
    String::from_utf8(b).expect("ascii edits keep utf-8")
}

/// The TOML twin of BASE's first lines, for mutating TOML.
const TOML_BASE: &str = r#"name = "base"
target = "http://127.0.0.1:8080"
timeout = "5s"

[builtin_target]
latency = "2ms"
error_rate = "0.1%"

[[phases]]
name = "warmup"
duration = "10s"
load = { model = "open", rate = "100/s", to = "200/s" }

[[phases]]
name = "hold"
duration = "20s"
load = { model = "closed", concurrency = 10 }

[[steps]]
name = "read"
weight = 3
request = { method = "GET", path = "/items", headers = { accept = "application/json" } }
expect = { status = "200-299" }

[[slos]]
metric = "p99"
scope = "step:read"
pass = "< 400ms"
warn = "< 800ms"
"#;

#[test]
fn random_mutations_never_panic_the_loader() {
    let json_base = serde_json::to_string_pretty(&load_str(BASE, Format::Yaml, Path::new("base.yaml")).unwrap()).unwrap();
    assert!(load_str(TOML_BASE, Format::Toml, Path::new("base.toml")).is_ok());
    // STAMPEDE_FUZZ_SCALE=1000 for a long hunt; the default keeps `cargo test` quick.
    let scale: usize = std::env::var("STAMPEDE_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut rng = Lcg(0x5eed_f00d_57a3_0ede);
    for (base, format, runs) in [(BASE, Format::Yaml, 400), (json_base.as_str(), Format::Json, 150), (TOML_BASE, Format::Toml, 150)] {
        let runs = runs * scale;
        let (mut ok, mut err) = (0, 0);
        for i in 0..runs {
            let text = mutate(&mut rng, base);
            let lines = text.lines().count() + 1;
            let result = std::panic::catch_unwind(|| load_str(&text, format, Path::new("fuzz")));
            match result {
                Err(_) => panic!("{} mutation {i} panicked the loader:\n{text}", format.name()),
                Ok(Ok(plan)) => {
                    ok += 1;
                    // What loads must survive the JSON trip to the agents unchanged.
                    let json = serde_json::to_string(&plan).unwrap();
                    let back = load_str(&json, Format::Json, Path::new("agent.json"))
                        .unwrap_or_else(|e| panic!("{} mutation {i}: {e}\n{json}", format.name()));
                    assert_eq!(back, plan, "{} mutation {i}", format.name());
                }
                Ok(Err(e)) => {
                    err += 1;
                    assert!(!e.message.is_empty(), "{} mutation {i}: empty message", format.name());
                    if let Some(line) = e.line {
                        assert!((1..=lines).contains(&line), "mutation {i}: line {line} of {lines}: {e}\n{text}");
                    }
                    let _ = e.to_string();
                }
            }
        }
        eprintln!("{}: {ok} loaded, {err} rejected", format.name());
        // The mutations must exercise both outcomes to be worth anything.
        assert!(ok >= runs / 20 && err >= runs / 2, "{}: ok {ok}, err {err}", format.name());
    }
}
