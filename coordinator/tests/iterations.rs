//! The iterations model and the per-phase step mix, end to end: `stampede
//! run` with local agents against a built-in target this test starts and
//! reads (it counts every load request it received, and the most it was
//! handling at once).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_target::{Behaviour, TargetHandle, TargetStats};
use support::{run_plan, step};

struct Target {
    rt: tokio::runtime::Runtime,
    handle: Option<TargetHandle>,
}

impl Target {
    fn start(latency: Duration) -> Target {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let behaviour = Behaviour { latency, ..Behaviour::default() };
        let handle = rt.block_on(stampede_target::serve("127.0.0.1:0".parse().unwrap(), behaviour)).unwrap();
        Target { rt, handle: Some(handle) }
    }
    fn url(&self) -> String {
        format!("http://{}", self.handle.as_ref().unwrap().local_addr)
    }
    fn stats(&self) -> TargetStats {
        self.handle.as_ref().unwrap().stats()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }
}

fn step_requests(r: &Value, name: &str) -> u64 {
    step(r, name)["requests"].as_u64().unwrap()
}

/// The chat-bridge runbook's "100 messages at concurrency 4": exactly 100
/// reach the target, never more than 4 at once, over 3 agents (shares 2, 1,
/// 1 connections and 50, 25, 25 iterations); the phase names one step of
/// two, so the other is never sent; the run ends when the count is done,
/// not at max_duration.
#[test]
fn count_100_at_concurrency_4_sends_exactly_100_never_more_than_4_at_once() {
    let target = Target::start(Duration::from_millis(20));
    let plan = format!(
        "name: hundred\ntarget: {}\nphases:\n  - {{ name: send, load: {{ model: iterations, count: 100, concurrency: 4, max_duration: 30s }}, steps: [message] }}\nsteps:\n  - {{ name: message, request: {{ method: POST, path: /messages, body: hi }} }}\n  - {{ name: other, request: {{ path: /other }} }}\nslos:\n  - {{ metric: error_rate, pass: \"< 1%\" }}\n",
        target.url()
    );
    let began = Instant::now();
    let (code, stderr, r) = run_plan(&plan, 3);
    let took = began.elapsed();
    assert_eq!(code, 0, "stderr:\n{stderr}\n{r:#}");
    assert_eq!(r["verdict"], "pass");
    let stats = target.stats();
    assert_eq!(stats.requests, 100, "{stats:?}");
    assert!(stats.max_in_flight <= 4 && stats.max_in_flight >= 2, "{stats:?}");
    assert_eq!(r["totals"]["requests"], 100);
    let it = &r["phases"][0]["iterations"];
    assert_eq!((it["planned"].as_u64(), it["done"].as_u64(), it["not_run"].as_u64()), (Some(100), Some(100), Some(0)), "{it}");
    assert_eq!(r["phases"][0]["model"], "iterations");
    assert_eq!(step_requests(&r, "message"), 100);
    assert_eq!(step_requests(&r, "other"), 0);
    let per_agent: Vec<u64> = r["agents"].as_array().unwrap().iter().map(|a| a["requests"].as_u64().unwrap()).collect();
    assert_eq!(per_agent, vec![50, 25, 25]);
    // 25 rounds of 20 ms: the run ended with its count, far before 30 s.
    assert!(took < Duration::from_secs(20), "the run took {took:?}");
    // Its throughput is over the time it took (start to last completion),
    // not over max_duration: 100 / active_s, and active_s is at least the
    // 25 rounds and at most the whole run's wall time.
    let phase = &r["phases"][0];
    let active = phase["active_s"].as_f64().unwrap_or_else(|| panic!("no active_s: {phase:#}"));
    assert!(active >= 0.5 && active <= took.as_secs_f64(), "active {active}s, run {took:?}");
    let rps = phase["throughput_rps"].as_f64().unwrap();
    assert!((rps - 100.0 / active).abs() < 1e-6 * rps, "{rps} vs 100 / {active}");
    assert!(rps > 100.0 / 20.0, "{rps}: not over max_duration (30 s)");
    assert_eq!(phase["duration_s"], 30.0, "the timeline length is unchanged");
    // The run's is over the same time (the phase is the run).
    assert!((r["totals"]["throughput_rps"].as_f64().unwrap() - rps).abs() < 1e-6 * rps, "{:#}", r["totals"]);
}

/// k6's per-vu-iterations: 20 connections × 3 rounds = 60, over 2 agents.
#[test]
fn per_worker_3_at_concurrency_20_sends_60() {
    let target = Target::start(Duration::from_millis(5));
    let plan = format!(
        "name: rounds\ntarget: {}\nphases:\n  - {{ name: rounds, load: {{ model: iterations, per_worker: 3, concurrency: 20, max_duration: 30s }} }}\nsteps:\n  - {{ name: s, request: {{ path: /x }} }}\n",
        target.url()
    );
    let (code, stderr, r) = run_plan(&plan, 2);
    assert_eq!(code, 0, "stderr:\n{stderr}\n{r:#}");
    let stats = target.stats();
    assert_eq!(stats.requests, 60, "{stats:?}");
    assert!(stats.max_in_flight <= 20, "{stats:?}");
    assert_eq!(r["phases"][0]["iterations"]["done"], 60);
}

/// A count that max_duration cuts short: the report counts the iterations
/// that did not run, the run fails (exit 1) and no rule passes on the
/// partial count. Then a phase after it starts at its planned offset.
#[test]
fn a_count_cut_short_by_max_duration_fails_and_says_how_many_did_not_run() {
    let target = Target::start(Duration::from_millis(50));
    let plan = format!(
        "name: short\ntarget: {}\nphases:\n  - {{ name: slow, load: {{ model: iterations, count: 1000, concurrency: 1, max_duration: 1s }}, steps: [a] }}\n  - {{ name: after, duration: 1s, load: {{ model: closed, concurrency: 1 }}, steps: [b] }}\nsteps:\n  - {{ name: a, request: {{ path: /a }} }}\n  - {{ name: b, request: {{ path: /b }} }}\nslos:\n  - {{ metric: error_rate, pass: \"< 1%\" }}\n",
        target.url()
    );
    let (code, stderr, r) = run_plan(&plan, 1);
    assert_eq!(code, 1, "stderr:\n{stderr}\n{r:#}");
    assert_eq!(r["verdict"], "fail");
    assert!(r["phases"][0].get("active_s").is_none(), "cut short: it lasted max_duration");
    let it = &r["phases"][0]["iterations"];
    let (done, not_run) = (it["done"].as_u64().unwrap(), it["not_run"].as_u64().unwrap());
    assert!(done > 0 && done < 100 && done + not_run == 1000, "{it}");
    assert_eq!(r["slos"][0]["status"], "not_evaluated");
    let reasons = r["verdict_reasons"].to_string();
    assert!(reasons.contains(&format!("{not_run} of 1000 iterations did not run")), "{reasons}");
    // The second phase ran, on its own steps only.
    assert!(step_requests(&r, "b") > 0);
    assert_eq!(step_requests(&r, "a"), done);
}
