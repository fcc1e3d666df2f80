//! The run, as `stampede run --coordinator URL` submits it: the plan over
//! `ControlService.SubmitRun`, then its progress lines and its result.
//!
//! The merge lag comes from the progress lines. The coordinator prints the
//! line of interval `seq` from `Run::on_snapshot` (coordinator/src/run.rs)
//! right after `Aggregate::add_snapshot` merged the snapshot that completed
//! the interval — the last of its agents to arrive. So a line's arrival
//! here, less the interval's end, is the lag from the interval's end to the
//! merge of all of it (plus one loopback hop of the control stream).

use std::time::SystemTime;

use anyhow::Context;
use stampede_proto::convert::unix_nanos;
use stampede_proto::v1::control_service_client::ControlServiceClient;
use stampede_proto::v1::run_event::Event;
use stampede_proto::v1::{RunResult, SubmitRunRequest};

/// The plan: two open-model phases of the benchmark's steps (the target
/// is never contacted: the simulated agents send no HTTP, and the plan
/// has no probe, steady state or built-in target the coordinator would
/// reach or start).
pub fn plan(agents: usize, seconds: u64, warmup: u64, interval_ms: u64, rate_per_agent: u64) -> String {
    let rate = agents as u64 * rate_per_agent;
    let steps: String = crate::payload::STEPS
        .iter()
        .map(|(name, share, _, _)| format!("  - {{ name: {name}, weight: {}, request: {{ method: GET, path: /{name} }} }}\n", (share * 100.0) as u32))
        .collect();
    format!(
        "name: fleet-bench\n\
         target: http://127.0.0.1:9\n\
         interval: {interval_ms}ms\n\
         phases:\n  \
         - {{ name: warmup, duration: {warmup}s, load: {{ model: open, rate: {rate}/s }} }}\n  \
         - {{ name: steady, duration: {}s, load: {{ model: open, rate: {rate}/s }} }}\n\
         steps:\n{steps}\
         slos:\n  \
         - {{ metric: p99, scope: run, pass: \"< 200ms\" }}\n  \
         - {{ metric: error_rate, scope: run, pass: \"< 1%\" }}\n",
        seconds - warmup
    )
}

/// One progress line and when it arrived (unix nanoseconds, this clock).
pub struct Line {
    pub at: i64,
    pub text: String,
}

pub struct Submitted {
    pub lines: Vec<Line>,
    pub result: RunResult,
}

pub async fn submit(url: &str, plan: String, agents: usize) -> anyhow::Result<Submitted> {
    let mut client = ControlServiceClient::connect(url.to_string()).await.context("connecting to the coordinator's control service")?;
    let req = SubmitRunRequest {
        plan_name: "fleet-bench.yaml".into(),
        plan_text: plan,
        plan_format: "yaml".into(),
        expect_agents: agents as u32,
        wait_ms: 120_000,
        secrets: Vec::new(),
        data_files: Vec::new(),
    };
    let mut events = client.submit_run(req).await.context("SubmitRun")?.into_inner();
    let mut lines = Vec::new();
    while let Some(ev) = events.message().await.context("the run's event stream")? {
        match ev.event {
            Some(Event::Progress(text)) => lines.push(Line { at: unix_nanos(SystemTime::now()), text }),
            Some(Event::Result(result)) => return Ok(Submitted { lines, result }),
            None => {}
        }
    }
    anyhow::bail!("the coordinator ended the run's stream without a result")
}

/// Waits until `agents` agents are registered (ListAgents polled every
/// 200 ms), at most `limit`.
pub async fn wait_registered(url: &str, agents: usize, limit: std::time::Duration) -> anyhow::Result<()> {
    let mut client = ControlServiceClient::connect(url.to_string()).await.context("connecting to the coordinator's control service")?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = client.list_agents(stampede_proto::v1::ListAgentsRequest {}).await.context("ListAgents")?.into_inner().agents.len();
        if n >= agents {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("only {n} of {agents} agents registered within {limit:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The interval a progress line is about: the line starts `[  T s]`, T
/// being the end of interval `seq` after the start.
pub fn interval_of(text: &str, interval_s: f64) -> Option<u64> {
    let t: f64 = text.strip_prefix('[')?.split_once("s]")?.0.trim().parse().ok()?;
    let k = (t / interval_s).round();
    (k >= 1.0).then(|| k as u64 - 1)
}
