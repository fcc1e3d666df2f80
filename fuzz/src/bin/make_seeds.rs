//! Writes the committed seed corpus, `fuzz/seeds/<target>/`:
//! - `plan_parser`: the repository's example plans (and a few test plans)
//!   behind their format selector line (`0` YAML, `1` TOML, `2` JSON), a
//!   plan with one fault of every kind, and small broken ones;
//! - `snapshot_decoder`: protobuf `Snapshot`s the way agents encode them,
//!   and bare histograms in V2+DEFLATE and plain V2;
//! - `grpc_message`: one `AgentMessage` of each kind, valid for the run of
//!   `stampede_fuzz::grpc_message`, and the forged ones of issue 8 item 2.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make_seeds` (rewrites the
//! files; their content is deterministic).

use std::path::Path;

use hdrhistogram::serialization::{Serializer, V2Serializer};
use prost::Message;
use stampede_common::histogram;
use stampede_common::stats::{ErrorKind, RunStats, ScheduleStats, StepKey, StepRecord};
use stampede_proto::convert::encode_steps;
use stampede_proto::v1::Snapshot;

const FAULTS_PLAN: &str = r#"name: every-fault
target: http://198.18.0.2:8080
agents: { count: 2, labels: { zone: a } }
interval: 1s
timeout: 2s
phases:
  - { name: warmup, duration: 10s, load: { model: open, rate: 100/s } }
  - { name: ramp,   duration: 20s, load: { model: open, rate: 100/s, to: 1000/s } }
  - { name: hold,   duration: 300s, load: { model: closed, concurrency: 8 } }
steps:
  - { name: read, weight: 1, request: { method: GET, path: /items/1 }, expect: { status: "200-299,304" } }
slos:
  - { metric: p99, scope: run, pass: "< 400ms", warn: "< 800ms" }
  - { metric: error_rate, scope: "phase:hold", pass: "< 0.5%" }
  - { metric: throughput, scope: "step:read", pass: "> 10/s" }
faults:
  - name: db-slow
    kind: netem
    at: 30s
    duration: 20s
    agents: { zone: a }
    scope: { dst: 198.18.0.2/32, port: 5432, dev: auto }
    netem: { delay: 200ms, jitter: 20ms, distribution: normal, loss: 1%, duplicate: 0.1%, corrupt: 0.1%, reorder: 5% }
  - { name: cap,   kind: rate,      at: 60s, duration: 20s, scope: { dst: 198.18.0.2/32 }, rate: 1mbit }
  - { name: split, kind: partition, at: 90s, duration: 20s, scope: { dst: 198.18.0.2/32, port: 8080 } }
  - { name: drop,  kind: loss,      at: 95s, duration: 10s, scope: { dst: 198.18.0.2/32 }, loss: 30% }
  - { name: api-1, kind: stop, at: 120s, duration: 60s, instance: { driver: incus, name: backend-api-1, force: true } }
  - { name: web,   kind: restart, at: 130s, duration: 5s, instance: { driver: process, name: web, start: [/usr/bin/web, --port, "9000"] } }
  - { name: pid,   kind: pause, at: 140s, duration: 5s, instance: { driver: process, pid: 4242 } }
  - { name: unit,  kind: stop, at: 150s, duration: 5s, instance: { driver: systemd, name: backend.service } }
  - { name: box,   kind: pause, at: 160s, duration: 5s, instance: { driver: docker, name: cache } }
  - { name: hog,   kind: cpu,  at: 200s, duration: 30s, cpu: { workers: 2, load: 80% } }
  - { name: fill,  kind: memory, at: 240s, duration: 30s, memory: { size: 1GiB } }
"#;

/// Small inputs: YAML anchors, and broken ones that stop at different checks.
const BROKEN: &[(&str, &str)] = &[
    ("broken-syntax.yaml", "0\nname: [unclosed\n"),
    ("broken-rate.yaml", "0\nname: x\ntarget: http://h:1\nphases:\n  - { name: a, duration: 1s, load: { model: open, rate: fast } }\nsteps:\n  - { name: s, weight: 1, request: { method: GET, path: / } }\n"),
    ("valid-anchors.yaml", "0\nname: &n x\ntarget: http://h:1\nphases: &p\n  - { name: *n, duration: 1s, load: { model: closed, concurrency: 1 } }\nsteps:\n  - { name: s, weight: 1, request: { method: GET, path: / } }\nslos: []\n"),
    ("broken-types.toml", "1\nname = 3\ntarget = []\n[[phases]]\nname = \"a\"\nduration = \"1s\"\n"),
    ("broken-nesting.json", "2\n{\"name\":\"x\",\"target\":\"http://h:1\",\"phases\":[{\"name\":\"a\",\"duration\":\"1s\",\"load\":{\"model\":\"open\",\"rate\":\"1/s\",\"to\":\"0/s\"}}],\"steps\":[[[]]]}"),
    // Issue 8, item 3: a billion-laughs alias bomb (9^9 values once expanded)
    // and nesting past the depth limit in each format.
    ("regress-alias-bomb.yaml", "0\na: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\nh: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"),
    ("regress-deep-flow.yaml", concat!("0\nname: x\nx: ", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", "\n")),
    ("regress-deep-block.yaml", "0\nx:\n - \n  - \n   - \n    - \n     - \n      - \n       - \n        - \n         - \n          - \n           - \n            - \n             - \n              - \n               - \n                - \n                 - \n                  - \n                   - \n                    - \n                     - \n                      - \n                       - \n                        - \n                         - \n                          - \n                           - \n                            - \n                             - \n                              - \n                               - \n                                - \n                                 - \n                                  - \n                                   - \n"),
    ("regress-deep.json", concat!("2\n{\"name\":\"x\",\"x\":", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", "}")),
    ("regress-deep-keys.toml", "1\nname = \"x\"\n[a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a]\nv = 1\n"),
];

fn write(dir: &Path, name: &str, data: &[u8]) {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("{} ({} bytes)", path.display(), data.len());
}

fn plan_seeds(repo: &Path, dir: &Path) {
    let sources = [
        "examples/quickstart.yaml",
        "examples/quickstart.toml",
        "examples/quickstart.json",
        "examples/mesh-mix.yaml",
        "examples/chat-soak.yaml",
        "examples/staging-load.yaml",
        "coordinator/tests/plans/stall-open.yaml",
        "deploy/compose/plan.yaml",
    ];
    for source in sources {
        let text = std::fs::read_to_string(repo.join(source)).unwrap_or_else(|e| panic!("{source}: {e}"));
        let (selector, ext) = match Path::new(source).extension().and_then(|e| e.to_str()) {
            Some("toml") => ('1', "toml"),
            Some("json") => ('2', "json"),
            _ => ('0', "yaml"),
        };
        let stem = source.replace('/', "-");
        let stem = stem.rsplit_once('.').map_or(stem.as_str(), |(s, _)| s);
        write(dir, &format!("valid-{stem}.{ext}"), format!("{selector}\n{text}").as_bytes());
    }
    write(dir, "valid-every-fault.yaml", format!("0\n{FAULTS_PLAN}").as_bytes());
    for (name, text) in BROKEN {
        write(dir, name, text.as_bytes());
    }
}

fn record(values: &[u64], requests: u64) -> StepRecord {
    let mut r = StepRecord::default();
    for &v in values {
        histogram::record_us(&mut r.latency, v);
        histogram::record_us(&mut r.service, v / 2 + 1);
        histogram::record_us(&mut r.dispatch, 1 + v % 7);
    }
    r.requests = requests;
    r.bytes_sent = requests * 120;
    r.bytes_received = requests * 512;
    r
}

fn snapshot_seeds(dir: &Path) {
    let mut stats = RunStats::default();
    stats.steps.insert(StepKey { phase: 0, step: 0, ok: true }, record(&[150, 900, 1_200, 45_000, 3_000_000], 5));
    let mut failed = record(&[10_000_000], 3);
    failed.errors[ErrorKind::Timeout as usize] = 2;
    failed.errors[ErrorKind::Http5xx as usize] = 1;
    stats.steps.insert(StepKey { phase: 1, step: 2, ok: false }, failed);
    stats.schedule.insert(0, ScheduleStats { scheduled: 200, dropped: 1, late: 3, max_lag_us: 12_000, last_done_us: 0 });
    stats.schedule.insert(1, ScheduleStats { scheduled: 1_000, dropped: 0, late: 0, max_lag_us: 900, last_done_us: 0 });
    let (steps, phases) = encode_steps(&stats);
    let full = Snapshot {
        run_id: "run-0f3c".into(),
        agent_id: "agent-a".into(),
        seq: 7,
        interval_start_unix_nanos: 1_700_000_000_000_000_000,
        interval_end_unix_nanos: 1_700_000_001_000_000_000,
        steps,
        phases,
        last: false,
        in_flight: 3,
    };
    write(dir, "snapshot-full.bin", &full.encode_to_vec());

    // Histograms left empty, as senders may do for what recorded nothing.
    let mut sparse = full.clone();
    for s in &mut sparse.steps {
        s.service_hist.clear();
        s.dispatch_hist.clear();
    }
    sparse.last = true;
    write(dir, "snapshot-sparse.bin", &sparse.encode_to_vec());
    write(dir, "snapshot-header-only.bin", &Snapshot { run_id: "r".into(), agent_id: "a".into(), seq: 1, ..Default::default() }.encode_to_vec());

    let h = &stats.steps[&StepKey { phase: 0, step: 0, ok: true }].latency;
    write(dir, "hist-v2-deflate.bin", &histogram::encode(h));
    write(dir, "hist-v2-deflate-empty.bin", &histogram::encode(&histogram::new_hist()));
    let mut plain = Vec::new();
    V2Serializer::new().serialize(h, &mut plain).expect("writing to a Vec cannot fail");
    write(dir, "hist-v2-plain.bin", &plain);
}

fn grpc_seeds(dir: &Path) {
    for (name, data) in stampede_fuzz::grpc_message::seeds() {
        write(dir, name, &data);
    }
}

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().expect("fuzz/ is inside the repository");
    for (target, make) in [("plan_parser", plan_seeds as fn(&Path, &Path)), ("snapshot_decoder", |_: &Path, d: &Path| snapshot_seeds(d)), ("grpc_message", |_: &Path, d: &Path| grpc_seeds(d))] {
        let dir = fuzz.join("seeds").join(target);
        std::fs::create_dir_all(&dir).expect("can create the seed folder");
        make(repo, &dir);
    }
}
