//! The table of broken plans: one valid plan, BASE, and the cases that
//! each break it in one place, with the error each must get.

/// The valid plan every case edits. Line numbers in the cases refer to it
/// (after the edit), so keep its layout stable.
pub const BASE: &str = r#"name: base
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

pub struct Case {
    pub name: &'static str,
    /// Text replacements applied to BASE in order; each `from` must occur exactly once.
    pub edits: &'static [(&'static str, &'static str)],
    pub path: &'static str,
    pub line: Option<usize>,
    pub message: &'static str,
}

pub const CASES: &[Case] = &[
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
        name: "batch window over 5 ms",
        edits: &[("      rate: 100/s\n", "      rate: 100/s\n      batch_window: 6ms\n")],
        path: "phases[0].load.batch_window",
        line: Some(9),
        message: "6ms is more than 5ms",
    },
    Case {
        name: "closed model with a batch window",
        edits: &[("      concurrency: 10\n", "      concurrency: 10\n      batch_window: 1ms\n")],
        path: "phases[1].load.batch_window",
        line: Some(14),
        message: "belongs to the open model",
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
        message: "unknown model `half`, expected `open`, `closed` or `iterations`",
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
        name: "ftp target",
        edits: &[("http://127.0.0.1:8080", "ftp://127.0.0.1:8080")],
        path: "target",
        line: Some(2),
        message: "is not an http:// or https:// URL",
    },
    Case {
        name: "tls section on a plain target",
        edits: &[("target: http://127.0.0.1:8080\n", "target: http://127.0.0.1:8080\ntls: { ca: ca.pem }\n")],
        path: "tls",
        line: Some(3),
        message: "applies to https:// targets only",
    },
    Case {
        name: "client certificate without its key",
        edits: &[("target: http://127.0.0.1:8080\n", "target: https://127.0.0.1:8080\ntls:\n  cert: client.pem\n")],
        path: "tls.key",
        line: Some(3),
        message: "needs its private key",
    },
    Case {
        name: "insecure_skip_verify beside a ca",
        edits: &[("target: http://127.0.0.1:8080\n", "target: https://127.0.0.1:8080\ntls:\n  ca: ca.pem\n  insecure_skip_verify: true\n")],
        path: "tls.insecure_skip_verify",
        line: Some(5),
        message: "`ca` would be ignored",
    },
    Case {
        name: "builtin tls target on http",
        edits: &[("target: http://127.0.0.1:8080\n", "target: http://127.0.0.1:8080\nbuiltin_target: { tls: true }\n")],
        path: "target",
        line: Some(2),
        message: "write `target: https://",
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
    Case {
        name: "builtin jobs never_finish without %",
        edits: &[("name: base\n", "name: base\nbuiltin_target:\n  jobs: { never_finish: 0.25 }\n")],
        path: "builtin_target.jobs.never_finish",
        line: Some(3),
        message: "`0.25` is not a percentage",
    },
    Case {
        name: "builtin jobs unknown knob",
        edits: &[("name: base\n", "name: base\nbuiltin_target:\n  jobs: { done: 1s }\n")],
        path: "builtin_target.jobs.done",
        line: Some(3),
        message: "unknown field `done`",
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
    Case {
        name: "warn band on the other side of pass",
        edits: &[("    warn: \"< 800ms\"", "    warn: \"> 800ms\"")],
        path: "slos[0].warn",
        line: Some(37),
        message: "bounds the other side from pass `< 400ms`",
    },
    Case {
        name: "warn band stricter than pass",
        edits: &[("    warn: \"< 800ms\"", "    warn: \"< 200ms\"")],
        path: "slos[0].warn",
        line: Some(37),
        message: "`< 200ms` is stricter than pass `< 400ms`",
    },
    Case {
        name: "warn band equal to pass (no value could warn)",
        edits: &[("    warn: \"< 800ms\"", "    warn: \"< 400ms\"")],
        path: "slos[0].warn",
        line: Some(37),
        message: "`< 400ms` is stricter than pass `< 400ms`",
    },
    Case {
        name: "check json path without root",
        edits: &[("    request:\n      method: POST\n      path: /items\n", "    request:\n      method: POST\n      path: /items\n    checks:\n      - name: says-ok\n        json: \"ok == true\"\n")],
        path: "steps[1].checks[0].json",
        line: Some(35),
        message: "must start with `$`",
    },
    Case {
        name: "check regex that does not compile",
        edits: &[("    request:\n      method: POST\n      path: /items\n", "    request:\n      method: POST\n      path: /items\n    checks:\n      - name: looks-ok\n        body_matches: \"(ok\"\n")],
        path: "steps[1].checks[0].body_matches",
        line: Some(35),
        message: "is not a regex",
    },
    Case {
        name: "check name defined twice",
        edits: &[("    request:\n      method: POST\n      path: /items\n", "    request:\n      method: POST\n      path: /items\n    checks:\n      - name: same\n        status: 200\n      - name: same\n        body_contains: ok\n")],
        path: "steps[1].checks[1].name",
        line: Some(36),
        message: "check `same` is defined twice",
    },
    Case {
        name: "check that says two things",
        edits: &[("    request:\n      method: POST\n      path: /items\n", "    request:\n      method: POST\n      path: /items\n    checks:\n      - name: both\n        status: 200\n        body_contains: ok\n")],
        path: "steps[1].checks[0].name",
        line: Some(34),
        message: "exactly one of status",
    },
    Case {
        name: "check header matches without a header",
        edits: &[("    request:\n      method: POST\n      path: /items\n", "    request:\n      method: POST\n      path: /items\n    checks:\n      - name: typed\n        body_contains: ok\n        matches: json\n")],
        path: "steps[1].checks[0].matches",
        line: Some(36),
        message: "belongs to a `header` check",
    },
    Case {
        name: "check body size without operator",
        edits: &[("    request:\n      method: POST\n      path: /items\n", "    request:\n      method: POST\n      path: /items\n    checks:\n      - name: small\n        body_size: 64KiB\n")],
        path: "steps[1].checks[0].body_size",
        line: Some(35),
        message: "is not a size comparison",
    },
    // ---- SLOs around faults, over time (issue 9)
    Case {
        name: "slo during a fault that does not exist",
        edits: &[("scope: run", "scope: during:db-1")],
        path: "slos[0].scope",
        line: Some(35),
        message: "there is no fault `db-1`",
    },
    Case {
        name: "after-scope without its length",
        edits: &[("slos:\n", "faults:\n  - { name: api-1, kind: cpu, at: 1s, duration: 2s, cpu: { workers: 1 } }\nslos:\n"), ("scope: run", "scope: after:api-1")],
        path: "slos[0].scope",
        line: Some(37),
        message: "`after:api-1` needs `for`",
    },
    Case {
        name: "for on a scope that is not after",
        edits: &[("    warn: \"< 800ms\"\n", "    warn: \"< 800ms\"\n    for: 30s\n")],
        path: "slos[0].for",
        line: Some(38),
        message: "only an `after:FAULT` scope takes `for`",
    },
    Case {
        name: "two time windows in one scope",
        edits: &[("scope: run", "scope: during:a in after:b")],
        path: "slos[0].scope",
        line: Some(35),
        message: "a scope takes one time window",
    },
    Case {
        name: "recovery_time without its fault",
        edits: &[("metric: p99", "metric: recovery_time")],
        path: "slos[0].fault",
        line: Some(34),
        message: "`recovery_time` needs `fault`",
    },
    Case {
        name: "recovery_time waiting for a rule that does not exist",
        edits: &[("slos:\n", "faults:\n  - { name: api-1, kind: cpu, at: 1s, duration: 2s, cpu: { workers: 1 } }\nslos:\n"), ("metric: p99", "metric: recovery_time\n    fault: api-1\n    rules: [fast]")],
        path: "slos[0].rules",
        line: Some(38),
        message: "there is no rule named `fast`",
    },
    Case {
        name: "recovery_time with nothing to recover to",
        edits: &[("slos:\n", "faults:\n  - { name: api-1, kind: cpu, at: 1s, duration: 2s, cpu: { workers: 1 } }\nslos:\n"), ("metric: p99", "metric: recovery_time\n    fault: api-1")],
        path: "slos[0].rules",
        line: Some(36),
        message: "no rule is scoped `outside:faults`",
    },
    Case {
        name: "fault on a rule that is not recovery_time",
        edits: &[("    warn: \"< 800ms\"\n", "    warn: \"< 800ms\"\n    fault: api-1\n")],
        path: "slos[0].fault",
        line: Some(38),
        message: "only a `recovery_time` rule takes it",
    },
    Case {
        name: "streak condition in the wrong unit",
        edits: &[("metric: p99", "metric: \"max_streak(p99 > 5%)\"")],
        path: "slos[0].metric",
        line: Some(34),
        message: "`> 5%` does not fit metric `p99`",
    },
    Case {
        name: "slo on a check that does not exist",
        edits: &[("metric: error_rate", "metric: check:says-ok")],
        path: "slos[1].metric",
        line: Some(38),
        message: "there is no check `says-ok`",
    },
    Case {
        name: "rate in a duration",
        edits: &[("metric: error_rate", "metric: timeout_rate"), ("pass: \"< 1%\"", "pass: \"< 10ms\"")],
        path: "slos[1].pass",
        line: Some(40),
        message: "`< 10ms` does not fit metric `timeout_rate`, which takes a percentage",
    },
    Case {
        name: "check metric naming no check of the plan",
        edits: &[("metric: error_rate", "metric: check:says-ok")],
        path: "slos[1].metric",
        line: Some(38),
        message: "there is no check `says-ok`",
    },
    Case {
        name: "status class that does not exist",
        edits: &[("metric: error_rate", "metric: status:6xx")],
        path: "slos[1].metric",
        line: Some(38),
        message: "`6xx` is not a status set",
    },
    Case {
        name: "two rules of one name",
        edits: &[("scope: run", "scope: run\n    name: fast"), ("scope: phase:hold", "scope: phase:hold\n    name: fast")],
        path: "slos[1].name",
        line: Some(41),
        message: "rule `fast` is defined twice",
    },
];
