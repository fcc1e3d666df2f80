//! Issue 8, "trust under interruption and hostile input": forged and hostile
//! gRPC messages from an enrolled agent (items 2 and 12). A standing suite:
//! each test is named after what it guards.
//!
//! Every test runs a real coordinator in this process (the gRPC server of
//! `server.rs`, the orchestration of `orchestrate.rs`) on 127.0.0.1, and
//! the fake agent of `support/fake_agent.rs` over real gRPC. The item 2
//! tests run a real plan with one real in-process agent (the same
//! `session::run` as `stampede-agent`) beside the fake one, so the report
//! must name the fake agent and still count the real one whole.

mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stampede_agent::session::{self, AgentConfig};
use stampede_common::plan::{load_str, Format};
use stampede_coordinator::fleet::Fleet;
use stampede_coordinator::orchestrate::{self, RunRequest};
use stampede_coordinator::report::Report;
use stampede_coordinator::server::{self, Security};
use stampede_coordinator::verdict::Verdict;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::{Assignment, RunFinished, Snapshot, StepStats};
use support::fake_agent::FakeAgent;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// 2 s of open load at 20/s, 1 s intervals, on the built-in target.
const PLAN: &str = "name: trust-messages
target: http://127.0.0.1:0
builtin_target: {}
interval: 1s
timeout: 1s
phases:
  - { name: steady, duration: 2s, load: { model: open, rate: 20/s } }
steps:
  - { name: root, request: { method: GET, path: / } }
";
const INTERVAL: Duration = Duration::from_secs(1);
const FAKE: &str = "forger";
const REAL: &str = "real-1";

/// A coordinator serving on 127.0.0.1; everything stops when dropped.
struct Coordinator {
    fleet: Fleet,
    url: String,
    shutdown: CancellationToken,
    _state: tempfile::TempDir,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Coordinator {
    async fn start() -> Coordinator {
        let fleet = Fleet::default();
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let (addr, _task) = server::spawn(listener, fleet.clone(), None, Security::default(), shutdown.clone());
        Coordinator { fleet, url: format!("http://{addr}"), shutdown, _state: tempfile::tempdir().expect("a temp dir") }
    }

    /// Starts a real agent in this process, as `--local-agents` does.
    fn real_agent(&self, id: &str) {
        let cfg = AgentConfig {
            coordinator: self.url.clone(),
            tls: None,
            token: None,
            agent_id: id.to_string(),
            labels: Default::default(),
            capacity: 1,
            workers: 1,
            node: session::host_name(),
            state_dir: self._state.path().join(id),
            lease: session::DEFAULT_LEASE,
            probe_capabilities: false,
        };
        tokio::spawn(session::run(cfg, self.shutdown.clone()));
    }

    async fn wait_for_agents(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.fleet.agents().len() < n {
            assert!(Instant::now() < deadline, "only {} of {n} agents registered", self.fleet.agents().len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a run with one forging agent came to.
struct Outcome {
    report: Report,
    /// How the coordinator ended the fake agent's session.
    fake_status: Option<Status>,
    progress: String,
}

/// Runs [`PLAN`] on one real agent and the fake one; the fake agent sends
/// what `forge` makes of its assignment, then waits for its session to end.
async fn forged_run(forge: impl FnOnce(&FakeAgent, &Assignment) -> Vec<Up>) -> Outcome {
    let coordinator = Coordinator::start().await;
    coordinator.real_agent(REAL);
    let mut fake = FakeAgent::connect(&coordinator.url, FakeAgent::register(FAKE, 7)).await.expect("the fake agent registers");
    coordinator.wait_for_agents(2).await;

    let mut plan = load_str(PLAN, Format::Yaml, Path::new("trust.yaml")).expect("the plan loads");
    let _target = stampede_coordinator::local::start_builtin_target(&mut plan).await.expect("the built-in target starts");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let run = {
        let (fleet, lines) = (coordinator.fleet.clone(), lines.clone());
        tokio::spawn(async move {
            let req = RunRequest { plan, expect_agents: 2, wait: Duration::from_secs(10), dry_run: false, simulate_faults: false };
            let progress = move |line: String| lines.lock().unwrap().push(line);
            orchestrate::execute(&fleet, req, &stampede_coordinator::signals::Interrupt::default(), &progress).await
        })
    };
    let assignment = fake.assignment(Duration::from_secs(10)).await;
    for msg in forge(&fake, &assignment) {
        fake.send(msg).await;
    }
    // The run ends about 4 s after its start; a refused agent hears at once.
    let fake_status = fake.closed(Duration::from_secs(15)).await;
    let report = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run ends")
        .expect("the run does not panic")
        .expect("the run reaches a report");
    let progress = lines.lock().unwrap().join("\n");
    Outcome { report, fake_status, progress }
}

/// The report is `incomplete` (exit 3), its reasons name the fake agent and
/// `what` it sent, the fake agent was told why its session ended, and the
/// real agent's data is whole.
fn assert_refused(o: &Outcome, what: &str) {
    let r = &o.report;
    let context = format!("verdict {:?}, reasons {:#?}\nprogress:\n{}", r.verdict, r.verdict_reasons, o.progress);
    assert_eq!(r.verdict, Verdict::Incomplete, "{context}");
    assert_eq!(r.verdict.exit_code(), 3);
    let reason = r.verdict_reasons.iter().find(|l| l.contains(FAKE)).unwrap_or_else(|| panic!("no reason names {FAKE}: {context}"));
    assert!(reason.contains(what), "the reason does not say what {FAKE} sent ({what}): {reason}");
    let fake = r.agents.iter().find(|a| a.id == FAKE).expect("the fake agent is in the report");
    assert!(!fake.complete, "{context}");
    assert!(fake.lost.as_deref().is_some_and(|l| l.contains(what)), "{FAKE}'s entry does not say why: {:?}", fake.lost);
    let real = r.agents.iter().find(|a| a.id == REAL).expect("the real agent is in the report");
    assert!(real.complete && real.requests > 0, "the real agent's data suffered: {real:?}\n{context}");
    // Nothing of the fake agent's refused message was counted.
    assert_eq!(r.totals.requests, real.requests, "{context}");
    let status = o.fake_status.as_ref().unwrap_or_else(|| panic!("{FAKE}'s session ended without a reason"));
    assert!(status.message().contains("refused"), "{FAKE} was not told it was refused: {status:?}");
}

/// A forged snapshot of interval `seq` carrying `steps`, marked last, and
/// the matching RunFinished: a complete agent, if the coordinator believed it.
fn forged(fake: &FakeAgent, run: &Assignment, seq: u64, steps: Vec<StepStats>) -> Vec<Up> {
    let requests = steps.iter().fold(0u64, |a, s| a.wrapping_add(s.requests));
    let snapshot = Snapshot { steps, last: true, ..fake.snapshot(run, seq, INTERVAL) };
    let finished = RunFinished { run_id: run.run_id.clone(), agent_id: fake.id.clone(), snapshots_sent: 1, requests, ..Default::default() };
    vec![Up::Snapshot(snapshot), Up::Finished(finished)]
}

fn step(phase: u32, step: u32, requests: u64) -> StepStats {
    StepStats { phase, step, outcome: 1, requests, ..Default::default() }
}

/// Stops the process if the test's memory passes `limit_mb`: the hole this
/// guards grew a coordinator to 17 GB, which must not happen to the machine
/// running the test on a build that has the hole.
fn memory_guard(limit_mb: u64) -> Arc<std::sync::atomic::AtomicBool> {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    std::thread::spawn(move || {
        let page_kb = 4;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
            let rss_mb = statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * page_kb / 1024;
            if rss_mb > limit_mb {
                eprintln!("FAILED: the coordinator's memory grew past {limit_mb} MB ({rss_mb} MB resident) on forged input");
                std::process::exit(101);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    done
}

/// Item 2: one snapshot with `seq = 2^63` made `aggregate.rs` list every
/// interval number up to it as missing (17 GB in 40 s). A seq beyond the
/// run's intervals is refused before it costs anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_seq_2_pow_63_is_refused_within_bounded_memory() {
    let guard = memory_guard(1024);
    let started = Instant::now();
    let o = forged_run(|fake, run| forged(fake, run, 1 << 63, vec![step(0, 0, 1)])).await;
    guard.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_refused(&o, "seq 9223372036854775808");
    assert!(started.elapsed() < Duration::from_secs(20), "the run took {:?}", started.elapsed());
}

/// Item 2: a phase index the plan does not have was counted in the run's
/// totals but in no phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_for_a_phase_the_plan_lacks_is_refused() {
    let o = forged_run(|fake, run| forged(fake, run, 0, vec![step(5, 0, 10)])).await;
    assert_refused(&o, "phase 5 step 0");
}

/// Item 2: a step index the plan does not have, likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_for_a_step_the_plan_lacks_is_refused() {
    let o = forged_run(|fake, run| forged(fake, run, 0, vec![step(0, 9, 10)])).await;
    assert_refused(&o, "phase 0 step 9");
}

/// Item 2: two `u64::MAX` counts wrapped the totals (a panic where overflow
/// is checked, as in the tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_u64_max_counts_are_refused_not_wrapped() {
    let o = forged_run(|fake, run| {
        let errors = StepStats { outcome: 2, ..step(0, 0, u64::MAX) };
        forged(fake, run, 0, vec![step(0, 0, u64::MAX), errors])
    })
    .await;
    assert_refused(&o, "request count 18446744073709551615");
}

/// Item 2: interval bounds outside the run (here 1970) were taken as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_interval_bounds_outside_the_run_is_refused() {
    let o = forged_run(|fake, run| {
        let mut msgs = forged(fake, run, 0, vec![step(0, 0, 10)]);
        if let Up::Snapshot(s) = &mut msgs[0] {
            s.interval_start_unix_nanos = 0;
            s.interval_end_unix_nanos = 1_000_000_000;
        }
        msgs
    })
    .await;
    assert_refused(&o, "interval start 0 lies outside the run's window");
}

/// Item 2: a message over the agent message limit (16 MiB) is refused
/// before it is buffered, and the run names the agent that sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_refused_and_names_its_agent() {
    let o = forged_run(|fake, run| {
        let huge = StepStats { latency_hist: vec![0u8; (16 << 20) + 1024], ..step(0, 0, 10) };
        forged(fake, run, 0, vec![huge])
    })
    .await;
    assert_refused(&o, "over the coordinator's limit");
}

/// Item 2: a run message in another agent's name was counted as that
/// agent's; the session that sent it is refused instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_message_in_another_agents_name_is_refused() {
    let o = forged_run(|fake, run| {
        let mut msgs = forged(fake, run, 0, vec![step(0, 0, 10)]);
        if let Up::Snapshot(s) = &mut msgs[0] {
            s.agent_id = REAL.to_string();
        }
        msgs
    })
    .await;
    assert_refused(&o, "in the name of agent \"real-1\"");
}

/// Item 12: a second session with a live id, from another agent process,
/// replaced the registry entry and left the first session open but
/// unlisted — a ghost that heartbeats forever. Now the second is refused
/// with a message that says why, and the first keeps its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_agent_id_from_another_process_is_refused() {
    let coordinator = Coordinator::start().await;
    let mut first = FakeAgent::connect(&coordinator.url, FakeAgent::register("twin", 1)).await.expect("the first registers");
    let refused = FakeAgent::connect(&coordinator.url, FakeAgent::register("twin", 2)).await;
    let status = refused.err().expect("a second process with a live id is refused");
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("agent id twin is already connected"), "{status:?}");
    assert!(first.alive(Duration::from_secs(3)).await, "the first session was closed");
    let listed = coordinator.fleet.agents();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, 1, "the registry lists the refused process");
}

/// Item 12: the same agent process (same instance) reconnecting, after a
/// network cut, still takes over its id — and its old session is closed,
/// so no stream stays open that the registry does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_agent_process_closes_its_old_session() {
    let coordinator = Coordinator::start().await;
    let mut old = FakeAgent::connect(&coordinator.url, FakeAgent::register("twin", 1)).await.expect("the first session registers");
    let mut new = FakeAgent::connect(&coordinator.url, FakeAgent::register("twin", 1)).await.expect("the same process may resume");
    let status = old.closed(Duration::from_secs(3)).await;
    assert!(status.as_ref().is_some_and(|s| s.message().contains("newer session")), "the old session was not told why: {status:?}");
    assert!(new.alive(Duration::from_secs(3)).await, "the new session was closed");
    let listed = coordinator.fleet.agents();
    assert_eq!(listed.len(), 1);
}
