//! The injector's dead-man switch: when the agent's async side never
//! reverts a fault (its runtime hangs, or is gone), a plain thread reverts
//! it by itself at the window's end + `DEAD_MAN_GRACE`.
//!
//! The fault is a partition whose actions run against a recording `nft`
//! shim first on PATH (`Runner::path_prefix`), so nothing on the host is
//! touched and no privilege is needed: the revert is the `Action::Run` of
//! `nft delete table inet stampede_…`, and the shim records when it ran.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use stampede_agent::fault::injector::{Injector, DEAD_MAN_GRACE};
use stampede_agent::fault::journal::Journal;
use stampede_agent::fault::{Node, Runner};
use stampede_common::plan::Fault;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const AT: Duration = Duration::from_millis(300);
const WINDOW: Duration = Duration::from_secs(1);

/// A state dir and a shim dir whose `nft` appends its arguments to `log`.
struct Setup {
    dir: tempfile::TempDir,
    fault: Fault,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("bin/nft");
        std::fs::create_dir_all(shim.parent().unwrap()).unwrap();
        let log = dir.path().join("nft.log");
        std::fs::write(&shim, format!("#!/bin/sh\n[ \"$1\" = -f ] && cat >/dev/null\necho \"$*\" >> '{}'\n", log.display())).unwrap();
        std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
        // No port in the scope: no effect probe, nothing but the shim runs.
        let fault: Fault = serde_json::from_value(serde_json::json!({
            "name": format!("deadman-{label}-{}", std::process::id()), "kind": "partition",
            "at": format!("{}ms", AT.as_millis()), "duration": format!("{}ms", WINDOW.as_millis()),
            "scope": { "dst": "198.18.0.2/32" },
        }))
        .unwrap();
        Setup { dir, fault }
    }

    fn injector(&self) -> Arc<Injector> {
        let mut runner = Runner::default();
        runner.path_prefix = Some(self.dir.path().join("bin"));
        let node = Node { route_dev: Box::new(|_| Err("not used".into())), agent_exe: PathBuf::from("/bin/false") };
        Arc::new(Injector::new(&self.dir.path().join("state"), node, runner).unwrap())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nft.log")).unwrap_or_default()
    }

    fn applied(&self) -> bool {
        self.log().lines().any(|l| l.starts_with("-f -"))
    }

    fn reverts(&self) -> usize {
        self.log().lines().filter(|l| l.starts_with("delete table inet stampede_deadman_")).count()
    }

    fn pending(&self) -> usize {
        Journal::open(&self.dir.path().join("state")).unwrap().pending().unwrap().len()
    }
}

/// Starts the fault's window on a current-thread runtime in its own thread;
/// once the fault is applied, `then` makes the async side useless (it gets
/// the runtime, and must not return before the test is over). Returns the
/// window's start instant.
fn start(setup: &Setup, then: impl FnOnce(tokio::runtime::Runtime) + Send + 'static) -> SystemTime {
    let injector = setup.injector();
    let fault = setup.fault.clone();
    let log = setup.dir.path().join("nft.log");
    let start = SystemTime::now();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (tx, _updates) = mpsc::unbounded_channel();
        rt.block_on(async move {
            tokio::spawn(injector.run_window("run-1".into(), fault, start, CancellationToken::new(), tx));
            // Let the window run until its apply is done.
            let applied = || std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| l.starts_with("-f -"));
            while !applied() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        then(rt);
    });
    start
}

/// Waits for the dead-man's revert; checks it came from the dead-man (not
/// before its deadline) and in time (within a second after it).
fn expect_dead_man_revert(setup: &Setup, start: SystemTime) {
    let began = Instant::now();
    while !setup.applied() {
        assert!(began.elapsed() < Duration::from_secs(5), "the fault was never applied: {}", setup.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(setup.pending(), 1, "the applied fault is journaled");
    let deadline = start + AT + WINDOW + DEAD_MAN_GRACE;
    let limit = deadline + Duration::from_secs(1);
    while setup.reverts() == 0 {
        assert!(SystemTime::now() < limit, "no revert by window end + grace + 1 s: {}", setup.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let at = SystemTime::now();
    let early = deadline.duration_since(at).unwrap_or_default();
    assert!(early < Duration::from_millis(50), "reverted {early:?} before the dead-man's deadline: not the dead-man");
    let late = at.duration_since(deadline).unwrap_or_default();
    println!("dead-man reverted {late:?} after window end + {DEAD_MAN_GRACE:?}");
    // It also journals the revert, so a restart does not revert it again.
    let began = Instant::now();
    while setup.pending() != 0 {
        assert!(began.elapsed() < Duration::from_secs(1), "the dead-man's revert was not journaled");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(setup.reverts(), 1, "{}", setup.log());
}

#[test]
fn dead_man_reverts_when_the_runtime_hangs() {
    let setup = Setup::new("hung");
    // A task that blocks the runtime's only thread: the window's timer never fires.
    let start = start(&setup, |rt| {
        rt.block_on(async { std::thread::sleep(Duration::from_secs(30)) });
    });
    expect_dead_man_revert(&setup, start);
}

#[test]
fn dead_man_reverts_when_the_runtime_is_gone() {
    let setup = Setup::new("gone");
    // Dropping the runtime drops the window's task mid-hold, without a revert.
    let start = start(&setup, drop);
    expect_dead_man_revert(&setup, start);
}

#[test]
fn the_normal_path_reverts_once_and_the_dead_man_stays_quiet() {
    let setup = Setup::new("normal");
    let injector = setup.injector();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let start = SystemTime::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    rt.block_on(injector.run_window("run-1".into(), setup.fault.clone(), start, CancellationToken::new(), tx));
    let reverted_at = SystemTime::now();
    let last = std::iter::from_fn(|| rx.try_recv().ok()).last().unwrap();
    assert_eq!(last.status.name(), "reverted", "{last:?}");
    assert!(reverted_at.duration_since(start + AT + WINDOW).unwrap_or_default() < Duration::from_millis(500));
    assert_eq!(setup.pending(), 0);
    // Past the dead-man's deadline: it saw the revert and did nothing.
    std::thread::sleep((start + AT + WINDOW + DEAD_MAN_GRACE + Duration::from_millis(300)).duration_since(SystemTime::now()).unwrap_or_default());
    assert_eq!(setup.reverts(), 1, "{}", setup.log());
}

/// What shutting down relies on (`session::run` before the runtime goes):
/// a window cancelled in the middle of a slow apply still finishes it and
/// reverts, and `settle` waits for exactly that.
#[test]
fn settle_waits_for_a_cancelled_window_to_revert() {
    let setup = Setup::new("settle");
    // This `nft` takes 1 s to apply.
    let shim = setup.dir.path().join("bin/nft");
    let log = setup.dir.path().join("nft.log");
    std::fs::write(&shim, format!("#!/bin/sh\n[ \"$1\" = -f ] && {{ cat >/dev/null; sleep 1; }}\necho \"$*\" >> '{}'\n", log.display())).unwrap();
    let injector = setup.injector();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cancel = CancellationToken::new();
    let (tx, _updates) = mpsc::unbounded_channel();
    let start = SystemTime::now();
    rt.block_on(async {
        assert!(injector.settle(Duration::from_secs(1)).await, "nothing runs yet");
        tokio::spawn(injector.clone().run_window("run-1".into(), setup.fault.clone(), start, cancel.clone(), tx));
        // Cancel while the apply is under way (it starts at AT and takes 1 s).
        tokio::time::sleep(AT + Duration::from_millis(300)).await;
        cancel.cancel();
        let began = Instant::now();
        assert!(injector.settle(Duration::from_secs(5)).await, "the window did not finish");
        println!("settled {:?} after the cancel", began.elapsed());
    });
    drop(rt);
    assert!(setup.applied(), "{}", setup.log());
    assert_eq!(setup.reverts(), 1, "settled before the revert: {}", setup.log());
    assert_eq!(setup.pending(), 0);
}
