//! Issue 8, item 10: "a worker never outlives its run". `rate: 1e12/s` left
//! a worker thread spinning at 100 % CPU into later runs: the open-model
//! pacer started every arrival that had come due in one loop with no await,
//! so with more arrivals due than it could start it never returned to its
//! runtime, and neither the abort nor the phase's end was seen.
//!
//! Plans are validated before they reach an agent, so these use the largest
//! rate a plan may ask (10 000 000/s) on one agent with one worker: far more
//! than a worker can start, which is what any agent meets when it is
//! overloaded.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stampede_agent::engine::{self, RunSpec};
use stampede_common::plan::{load_str, Format};
use tokio_util::sync::CancellationToken;

/// Worker threads of this process (`stampede-worker-N`, 15 characters in `comm`).
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("stampede-worke")))
                .count()
        })
        .unwrap_or(0)
}

fn spec(phase: &str) -> RunSpec {
    // Nothing listens on the target: every request is a fast connect error,
    // and `max_in_flight` keeps the tasks the pacer starts few.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let text = format!(
        "name: t\ntarget: http://127.0.0.1:{port}\ntimeout: 1s\nphases:\n  - name: p\n    duration: {phase}\n    load: {{ model: open, rate: 10000000/s, max_in_flight: 64 }}\nsteps: [{{ name: s }}]\n"
    );
    let plan = load_str(&text, Format::Yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    RunSpec {
        plan: Arc::new(plan),
        rate_share: 1.0,
        concurrency: vec![0],
        iterations: vec![0],
        agent_index: 0,
        agent_count: 1,
        start: SystemTime::now() + Duration::from_millis(100),
        workers: 1,
    }
}

/// Waits for the engine's last interval and for the worker threads to end;
/// returns how long that took from `from`, or None past `bound`.
fn ended_within(rt: &tokio::runtime::Runtime, mut rx: tokio::sync::mpsc::UnboundedReceiver<engine::Interval>, from: Instant, bound: Duration) -> Option<Duration> {
    let last = rt.block_on(async {
        tokio::time::timeout_at((from + bound).into(), async {
            while let Some(i) = rx.recv().await {
                if i.last {
                    return true;
                }
            }
            false
        })
        .await
    });
    if last != Ok(true) {
        return None;
    }
    while worker_threads() > 0 {
        if from.elapsed() > bound {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(from.elapsed())
}

// Both cases in one test: they count this process's worker threads.
#[test]
fn a_worker_never_outlives_its_run() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    assert_eq!(worker_threads(), 0);

    // Aborted in the middle of a 60 s phase: gone within a second.
    let cancel = CancellationToken::new();
    let rx = rt.block_on(engine::start(spec("60s"), cancel.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(worker_threads() > 0, "the worker has started");
    let aborted = Instant::now();
    cancel.cancel();
    let took = ended_within(&rt, rx, aborted, Duration::from_secs(1));
    assert!(took.is_some(), "a worker still ran 1 s after its run was aborted ({} threads)", worker_threads());

    // Not aborted: a 1 s phase (timeout 1 s) ends within its phase, the
    // drain of one timeout and a margin, however far behind the pacer is.
    let rx = rt.block_on(engine::start(spec("1s"), CancellationToken::new())).unwrap();
    let started = Instant::now();
    let took = ended_within(&rt, rx, started, Duration::from_secs(3));
    assert!(took.is_some(), "a worker still ran 3 s after the start of its 1 s run ({} threads)", worker_threads());
}
