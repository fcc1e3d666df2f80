//! Issue 8, "trust under interruption and hostile input": the hostile and
//! absurd plans. Each test is named after what it guards and says which item
//! it pins. Every entry point (`stampede validate`, `stampede run` and the
//! standing coordinator's SubmitRun) reads plans through `load_file` or
//! `load_str`, which these tests call.

use std::path::Path;
use std::time::{Duration, Instant};

use stampede_common::plan::{load_file, load_str, Format, PlanError, MAX_DEPTH, MAX_NODES, MAX_PLAN_BYTES};

const HEAD: &str = "name: t\ntarget: http://127.0.0.1:9\nphases:\n  - name: p\n    duration: 1s\n    load: { model: open, rate: 10/s }\n";

fn yaml(text: &str) -> Result<(), PlanError> {
    load_str(text, Format::Yaml, Path::new("plan.yaml")).map(|_| ())
}

fn refused(text: &str, format: Format) -> PlanError {
    let started = Instant::now();
    // (No `expect_err`: it would print the whole plan that loaded.)
    let Err(e) = load_str(text, format, Path::new("plan")) else { panic!("the plan loaded; it must be refused") };
    // Refused from a pre-scan, not after building what it asks for.
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}: {e}", started.elapsed());
    e
}

/// Nine levels of nine aliases: 9^9 (387 million) strings once expanded.
fn billion_laughs() -> String {
    let mut text = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let refs = vec![format!("*{}", pair[0]); 9].join(",");
        text.push_str(&format!("{}: &{} [{refs}]\n", pair[1], pair[1]));
    }
    text
}

// Item 3: a 516-byte YAML alias bomb exhausted memory in `validate`, `run`
// and SubmitRun (yaml-rust2 copies the anchored node at every alias).
#[test]
fn yaml_alias_bomb_is_refused_before_it_is_expanded() {
    let bomb = billion_laughs();
    assert!(bomb.len() < 600, "{} bytes", bomb.len());
    let e = refused(&bomb, Format::Yaml);
    assert!(e.message.contains(&format!("more than {MAX_NODES} values once its aliases")), "{e}");
    assert!(e.line.is_some(), "{e}");

    // The same inside a plan, named at its field and line.
    let text = format!("{HEAD}steps:\n  - name: s\n    request: {{ method: GET, path: / }}\nslos: []\nx: \n{}", bomb.lines().map(|l| format!("  {l}\n")).collect::<String>());
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains("aliases"), "{e}");
    assert!(e.path.starts_with("x."), "{e}");
}

// Item 3: config's loader builds every document before it refuses a stream
// of several, so a bomb in the second document counts too.
#[test]
fn yaml_alias_bomb_in_a_later_document_is_refused() {
    let text = format!("{HEAD}steps: []\n---\n{}", billion_laughs());
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains("aliases"), "{e}");
}

// Item 3: a large string copied by aliases: few values, many bytes.
#[test]
fn yaml_aliases_that_copy_a_long_string_are_refused() {
    let long = "x".repeat(60_000);
    let mut text = format!("{HEAD}steps: []\nb: &b \"{long}\"\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n");
    text.push_str("d: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n");
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains("4 MiB"), "{e}");
}

// Item 3: a plan of 200 000 steps took 3.7 s and 700 MB to validate.
#[test]
fn a_plan_of_200_000_steps_is_refused_by_its_size() {
    let mut text = format!("{HEAD}steps:\n");
    for i in 0..200_000 {
        text.push_str(&format!("  - name: s{i}\n"));
    }
    assert!(text.len() > MAX_PLAN_BYTES);
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains("plans may be at most 1048576 bytes"), "{e}");

    // Through a file too (`stampede validate`, `stampede run`): the file is
    // read only up to the limit.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("steps.yaml");
    std::fs::write(&path, &text).unwrap();
    let e = load_file(&path).unwrap_err();
    assert!(e.message.contains("at most 1048576 bytes"), "{e}");
    assert_eq!(e.file, path);
}

// Item 3: within the size limit, the number of steps is bounded on its own,
// and the error names the list.
#[test]
fn the_number_of_steps_phases_slos_and_faults_is_bounded() {
    let steps: String = (0..1001).map(|i| format!("  - {{ name: s{i} }}\n")).collect();
    let e = yaml(&format!("{HEAD}steps:\n{steps}")).unwrap_err();
    assert_eq!(e.path, "steps", "{e}");
    assert!(e.message.contains("has 1001 entries; a plan may have at most 1000"), "{e}");

    let phases: String = (0..1001).map(|i| format!("  - {{ name: p{i}, duration: 1s, load: {{ model: closed, concurrency: 1 }} }}\n")).collect();
    let e = yaml(&format!("name: t\ntarget: http://127.0.0.1:9\nphases:\n{phases}steps: [{{ name: s }}]\n")).unwrap_err();
    assert_eq!((e.path.as_str(), e.line), ("phases", Some(3)), "{e}");
}

// Item 3: a step's headers and body are bounded.
#[test]
fn headers_and_bodies_are_bounded() {
    let headers: String = (0..101).map(|i| format!("        h{i}: v\n")).collect();
    let e = yaml(&format!("{HEAD}steps:\n  - name: s\n    request:\n      headers:\n{headers}")).unwrap_err();
    assert_eq!(e.path, "steps[0].request.headers", "{e}");
    assert!(e.message.contains("at most 100"), "{e}");

    let body = "b".repeat(300 * 1024);
    let e = yaml(&format!("{HEAD}steps:\n  - name: s\n    request: {{ method: POST, body: \"{body}\" }}\n")).unwrap_err();
    assert_eq!(e.path, "steps[0].request.body", "{e}");
    assert!(e.message.contains("at most 262144 bytes"), "{e}");
}

// Item 3: nesting deeper than the stack overflowed the recursive tree
// conversion and drop (YAML has no depth limit of its own).
#[test]
fn deep_nesting_is_refused_in_every_format() {
    let text = format!("{HEAD}steps: []\nx: {}{}\n", "[".repeat(100), "]".repeat(100));
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains(&format!("nested more than {MAX_DEPTH} deep")), "{e}");
    assert_eq!(e.line, Some(8), "{e}");
    // yaml-rust2 stops flow nesting itself somewhat deeper; block nesting
    // (indentation) it does not.
    let text = format!("{HEAD}steps: []\nx:\n{}", (1..=40).map(|d| format!("{}- \n", "  ".repeat(d))).collect::<String>());
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains("nested more than"), "{e}");

    // JSON and TOML parsers stop at 128 and 80 levels; below that, our limit.
    let json = format!("{{\"name\":\"t\",\"x\":{}{}}}", "[".repeat(60), "]".repeat(60));
    let e = refused(&json, Format::Json);
    assert!(e.message.contains("nested more than"), "{e}");
    assert!(e.path.starts_with("x[0][0]"), "{e}");
    let toml = format!("name = \"t\"\nx = {}{}\n", "[".repeat(60), "]".repeat(60));
    let e = refused(&toml, Format::Toml);
    assert!(e.message.contains("nested more than"), "{e}");
    let toml = format!("name = \"t\"\n[{}]\nv = 1\n", vec!["k"; 60].join("."));
    let e = refused(&toml, Format::Toml);
    assert!(e.message.contains("nested more than"), "{e}");
    // Far past the parsers' own limits: still an error, never a crash.
    let deep = 200_000;
    refused(&format!("x: {}{}\n", "[".repeat(deep), "]".repeat(deep)), Format::Yaml);
    let text: String = (0..1_000).map(|d| format!("{}- \n", " ".repeat(d))).collect();
    let e = refused(&text, Format::Yaml);
    assert!(e.message.contains("nested more than"), "{e}");
    let json = format!("{}{}", "[".repeat(deep), "]".repeat(deep));
    refused(&json, Format::Json);
}

// Item 3: a real plan with anchors still loads: the limits are generous.
#[test]
fn plans_with_anchors_within_the_limits_still_load() {
    let text = format!(
        "{HEAD}steps:\n  - name: a\n    request: &r {{ method: GET, path: /, headers: {{ accept: text/plain }} }}\n  - name: b\n    request: *r\n"
    );
    yaml(&text).unwrap_or_else(|e| panic!("{e}"));
}

// Item 10: `rate: 1e12/s` (and 1e308) was attempted: 0 requests, and a
// worker kept spinning; `concurrency: 4294967295` aborted the agent.
#[test]
fn absurd_rates_and_concurrency_are_refused_at_validation() {
    let plan = |load: &str| {
        format!("name: t\ntarget: http://127.0.0.1:9\nphases:\n  - name: p\n    duration: 1s\n    load: {load}\nsteps: [{{ name: s }}]\n")
    };
    for rate in ["1e12/s", "1e308", "10000001/s", "20000/ms"] {
        let e = yaml(&plan(&format!("{{ model: open, rate: {rate} }}"))).unwrap_err();
        assert_eq!((e.path.as_str(), e.line), ("phases[0].load.rate", Some(6)), "{rate}: {e}");
        assert!(e.message.contains("spread large loads over more agents"), "{rate}: {e}");
    }
    let e = yaml(&plan("{ model: open, rate: 10/s, to: 1e12/s }")).unwrap_err();
    assert_eq!(e.path, "phases[0].load.to", "{e}");
    for rate in ["1e308/ms", "NaN", "inf", "-inf", "-5/s", "1e999"] {
        let e = yaml(&plan(&format!("{{ model: open, rate: \"{rate}\" }}"))).unwrap_err();
        assert_eq!(e.path, "phases[0].load.rate", "{rate}: {e}");
        assert!(e.message.contains("finite rate") || e.message.contains("is not a rate"), "{rate}: {e}");
    }
    for c in ["4294967295", "1000001"] {
        let e = yaml(&plan(&format!("{{ model: closed, concurrency: {c} }}"))).unwrap_err();
        assert_eq!(e.path, "phases[0].load.concurrency", "{e}");
        assert!(e.message.contains("spread large loads over more agents"), "{e}");
    }
    // The largest allowed still loads.
    yaml(&plan("{ model: open, rate: 10000000/s }")).unwrap();
    yaml(&plan("{ model: closed, concurrency: 1000000 }")).unwrap();
}

// Item 10: durations that overflow are refused, with a message.
#[test]
fn durations_that_overflow_are_refused() {
    for d in ["99999999999999999999999s", "18446744073709551615h"] {
        let text = format!("name: t\ntarget: http://127.0.0.1:9\nphases:\n  - name: p\n    duration: {d}\n    load: {{ model: closed, concurrency: 1 }}\nsteps: [{{ name: s }}]\n");
        let e = yaml(&text).unwrap_err();
        assert_eq!(e.path, "phases[0].duration", "{d}: {e}");
    }
    let phases: String = (0..3).map(|i| format!("  - {{ name: p{i}, duration: 6000000h, load: {{ model: closed, concurrency: 1 }} }}\n")).collect();
    let e = yaml(&format!("name: t\ntarget: http://127.0.0.1:9\nphases:\n{phases}steps: [{{ name: s }}]\n")).unwrap_err();
    assert!(e.message.contains("365 days"), "{e}");
}

// Item 13: a raw CR/LF in a header *name* was echoed into the error.
#[test]
fn header_names_with_line_breaks_are_refused_and_never_echoed_raw() {
    let text = format!("{HEAD}steps:\n  - name: s\n    request:\n      headers:\n        \"X-A\\r\\nInjected: 1\": v\n");
    let e = yaml(&text).unwrap_err();
    let shown = e.to_string();
    assert!(!shown.contains(['\r', '\n']), "{shown:?}");
    assert!(!e.path.contains(['\r', '\n']) && !e.message.contains(['\r', '\n']), "{e:?}");
    assert!(shown.contains("X-A\\r\\nInjected: 1"), "{shown}");
    assert!(shown.contains("must not contain line breaks"), "{shown}");

    let text = format!("{HEAD}steps:\n  - name: s\n    request:\n      headers:\n        x-a: \"v\\r\\nInjected: 1\"\n");
    let e = yaml(&text).unwrap_err();
    assert!(e.message.contains("line breaks") && !e.to_string().contains(['\r', '\n']), "{e:?}");
}

// Item 13 (audit): every other place an error quotes what the user wrote.
#[test]
fn plan_errors_never_echo_control_characters() {
    let cases = [
        // unknown key, rate, duration, model, phase name, target
        format!("{HEAD}steps: [{{ name: s }}]\n\"bad\\rkey\\u001b[2J\": 1\n"),
        HEAD.replace("10/s", "\"fast\\r\\n\"") + "steps: [{ name: s }]\n",
        HEAD.replace("1s", "\"1\\nx\"") + "steps: [{ name: s }]\n",
        HEAD.replace("model: open", "model: \"op\\u0007en\"") + "steps: [{ name: s }]\n",
        format!("{HEAD}  - {{ name: p, duration: 1s, load: {{ model: closed, concurrency: 1 }} }}\nsteps: [{{ name: s }}]\nslos: [{{ metric: p99, scope: \"phase:x\\r\\ny\", pass: \"< 1s\" }}]\n"),
        HEAD.replace("http://127.0.0.1:9", "\"ftp://a\\r\\nb\"") + "steps: [{ name: s }]\n",
    ];
    for text in &cases {
        let e = yaml(text).unwrap_err();
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{text}\n{shown:?}");
    }
    // Nor the file name, which SubmitRun takes from the client.
    let e = load_str("name: [", Format::Yaml, Path::new("a\r\nb.yaml")).unwrap_err();
    assert!(!e.to_string().chars().any(char::is_control), "{:?}", e.to_string());
}
