//! The same plan written in YAML, TOML and JSON loads to the same `Plan`.

use std::path::{Path, PathBuf};

use stampede_common::plan::{load_file, load_str, Format, Model, Plan};
use stampede_common::slo::{Metric, Scope};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

fn load(name: &str) -> Plan {
    load_file(&example(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn quickstart_is_the_same_plan_in_every_format() {
    let yaml = load("quickstart.yaml");
    let toml = load("quickstart.toml");
    let json = load("quickstart.json");
    assert_eq!(toml, yaml);
    assert_eq!(json, yaml);
}

#[test]
fn quickstart_means_what_it_says() {
    let plan = load("quickstart.yaml");
    assert_eq!(plan.name, "quickstart");
    assert_eq!(plan.target, "http://127.0.0.1:0");
    assert_eq!(plan.interval.as_duration(), std::time::Duration::from_secs(1));
    assert_eq!(plan.timeout.as_duration(), std::time::Duration::from_secs(10));
    let names: Vec<_> = plan.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["warmup", "ramp", "hold"]);
    assert_eq!(plan.duration(), std::time::Duration::from_secs(11));
    let ramp = &plan.phases[1].load;
    assert_eq!(ramp.model, Model::Open);
    assert_eq!(ramp.rate.unwrap().as_per_second(), 200.0);
    assert_eq!(ramp.to.unwrap().as_per_second(), 1000.0);
    assert_eq!(plan.phases[2].load.model, Model::Closed);
    assert_eq!(plan.phases[2].load.concurrency, Some(12));
    let write = &plan.steps[1];
    assert_eq!((write.weight, write.request.method.as_str()), (60, "POST"));
    assert_eq!(write.request.body.as_ref().map(stampede_common::plan::Text::sent), Some(r#"{"x":1}"#));
    assert_eq!(write.request.headers["content-type"], "application/json");
    let status = &write.expect.as_ref().unwrap().status;
    assert!(status.contains(201) && !status.contains(302));
    // `read` has no `expect`: below 400 is a success.
    assert!(plan.steps[0].expect.is_none());
    assert_eq!(plan.builtin_target.as_ref().unwrap().error_rate.unwrap().ratio(), 0.001);
    assert_eq!(plan.slos[1].metric, Metric::ErrorRate);
    assert_eq!(plan.slos[1].scope, Scope::Phase("hold".into()));
    assert_eq!(plan.slos[1].pass.value, 0.005);
}

#[test]
fn plans_survive_the_json_trip_to_the_agents() {
    let plan = load("quickstart.yaml");
    let json = serde_json::to_string(&plan).unwrap();
    let back = load_str(&json, Format::Json, Path::new("wire.json")).unwrap();
    assert_eq!(back, plan);
    // Values print back as they were written.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["phases"][1]["load"]["to"], "1000/s");
    assert_eq!(v["phases"][0]["duration"], "3s");
    assert_eq!(v["phases"][2]["load"]["model"], "closed");
    assert_eq!(v["builtin_target"]["error_rate"], "0.1%");
    assert_eq!(v["steps"][1]["expect"]["status"], "200-299");
    assert_eq!(v["slos"][0]["pass"], "< 400ms");
    assert_eq!(v["slos"][1]["scope"], "phase:hold");
}

#[test]
fn every_example_plan_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(example("")).unwrap() {
        let path = entry.unwrap().path();
        if Format::from_path(&path).is_some() {
            load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 3);
}

/// `config` reads a top-level key as a path (`x[N]` = item N of list x) and
/// allocates the list up to N: such keys must be refused in every format
/// before `config` sees them, or a one-line plan aborts the process.
#[test]
fn a_top_level_key_that_looks_like_a_path_is_refused_in_every_format() {
    for (format, text) in [
        (Format::Yaml, "x[99999999999]: 1\n"),
        (Format::Toml, "\"x[-99999999999]\" = 1\n"),
        (Format::Json, r#"{"name": "n", "a.b[99999999999]": 1}"#),
    ] {
        let e = load_str(text, format, Path::new("plan")).unwrap_err();
        assert!(e.message.starts_with("unknown field `"), "{}: {e}", format.name());
    }
}

#[test]
fn drill_rules_survive_the_json_trip_to_the_agents() {
    let text = "name: drill\ntarget: http://127.0.0.1:9\nphases:\n  - { name: hold, duration: 60s, load: { model: open, rate: 10/s } }\nsteps:\n  - { name: read, request: { path: / } }\nfaults:\n  - { name: api-1, kind: cpu, at: 10s, duration: 20s, cpu: { workers: 1 } }\nslos:\n  - { name: ok, metric: error_rate, scope: outside:faults, pass: \"< 1%\" }\n  - { metric: p99, scope: step:read in during:api-1, pass: \"< 800ms\" }\n  - { metric: timeout_rate, scope: after:api-1, for: 30s, pass: \"< 1%\" }\n  - { metric: drop_rate, scope: before:api-1, pass: \"< 1%\", warn: \"< 2%\" }\n  - { metric: \"max_streak(error_rate > 0)\", pass: \"< 30s\" }\n  - { metric: recovery_time, fault: api-1, rules: [ok], consecutive: 2, pass: \"< 60s\" }\n";
    let plan = load_str(text, Format::Yaml, Path::new("drill.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let json = serde_json::to_string(&plan).unwrap();
    let back = load_str(&json, Format::Json, Path::new("wire.json")).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(back, plan);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["slos"][1]["scope"], "step:read in during:api-1");
    assert_eq!(v["slos"][2]["for"], "30s");
    assert_eq!(v["slos"][3]["warn"], "< 2%");
    assert_eq!(v["slos"][4]["metric"], "max_streak(error_rate > 0)");
    assert_eq!(plan.slos[5].metric, Metric::RecoveryTime);
    assert_eq!(plan.slos[1].scope, Scope::In(Box::new(Scope::Step("read".into())), Box::new(Scope::During("api-1".into()))));
}

/// `builtin_target.jobs`: both knobs parse, and survive the trip to the agents.
#[test]
fn builtin_target_jobs_parse_and_round_trip() {
    let text = "name: j\ntarget: http://127.0.0.1:0\nbuiltin_target: { jobs: { done_after: 2s, never_finish: 25% } }\nphases:\n  - { name: p, duration: 1s, load: { model: closed, concurrency: 1 } }\nsteps:\n  - { name: s, request: { path: / } }\n";
    let plan = load_str(text, Format::Yaml, Path::new("jobs.yaml")).unwrap();
    let jobs = plan.builtin_target.as_ref().unwrap().jobs.unwrap();
    assert_eq!(jobs.done_after.unwrap().as_duration(), std::time::Duration::from_secs(2));
    assert_eq!(jobs.never_finish.unwrap().ratio(), 0.25);
    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(load_str(&json, Format::Json, Path::new("wire.json")).unwrap(), plan);
}
