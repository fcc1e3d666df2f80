//! Broken plans, each a small edit of one valid plan, and the exact error
//! each one gets: field path, line (YAML) and a piece of the message. The
//! error is the user's only guide to the fix, so it is pinned here.

use std::path::Path;

use stampede_common::plan::{load_file, load_str, Format, PlanError};

#[path = "bad_plans/cases.rs"]
mod cases;

use cases::{Case, BASE, CASES};

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
