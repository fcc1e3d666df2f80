//! The systemd, docker and incus drivers run through the real `Runner`
//! against recording shims: scripts named `docker`, `incus` and `systemctl`
//! first on PATH, which append their command line to a log. No daemon runs
//! on test machines; this checks that what the driver builds is exactly what
//! gets executed, and that `ok_if` keeps reverts idempotent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use stampede_agent::fault::instance::InstanceDriver;
use stampede_agent::fault::{Driver, Node, Runner};
use stampede_common::plan::{Fault, FaultKind, Instance, InstanceDriver as Kind};

/// A temp dir with shims; removed on drop.
struct Shims {
    dir: PathBuf,
}

impl Shims {
    /// `body` runs after the command line is logged; `$1` is the verb.
    fn new(label: &str, body: &str) -> Shims {
        let dir = std::env::temp_dir().join(format!("stampede-shims-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        for tool in ["docker", "incus", "systemctl"] {
            let path = dir.join(tool);
            let script = format!("#!/bin/sh\necho \"{tool} $*\" >> '{}'\n{body}\n", log.display());
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Shims { dir }
    }

    fn runner(&self) -> Runner {
        // `spawned` is private, so no struct-update syntax from outside the crate.
        let mut runner = Runner::default();
        runner.path_prefix = Some(self.dir.clone());
        runner
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default().lines().map(String::from).collect()
    }

    fn clear(&self) {
        let _ = std::fs::remove_file(self.dir.join("log"));
    }
}

impl Drop for Shims {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn node() -> Node {
    Node { route_dev: Box::new(|_| Ok("lo".into())), agent_exe: Path::new("/bin/false").into() }
}

fn fault(kind: FaultKind, driver: Kind, name: &str, force: bool) -> Fault {
    let mut f: Fault = serde_json::from_value(serde_json::json!({"name": "f", "kind": "stop", "at": "1s", "duration": "5s"})).unwrap();
    f.kind = kind;
    f.instance = Some(Instance { driver, name: Some(name.into()), pid: None, pid_file: None, force, start: vec![] });
    f
}

/// Applies then reverts; returns the logged command lines of each half.
fn run(shims: &Shims, f: &Fault) -> (Vec<String>, Vec<String>) {
    let actions = InstanceDriver.actions(f, &node()).unwrap();
    let runner = shims.runner();
    shims.clear();
    for a in &actions.apply {
        runner.execute(a).unwrap_or_else(|e| panic!("apply: {e}"));
    }
    let applied = shims.log();
    shims.clear();
    for a in &actions.revert {
        runner.execute(a).unwrap_or_else(|e| panic!("revert: {e}"));
    }
    (applied, shims.log())
}

/// kind, driver, force, expected apply lines, expected revert lines.
type Case = (FaultKind, Kind, bool, &'static [&'static str], &'static [&'static str]);

#[test]
fn every_driver_runs_exactly_its_command_lines() {
    use FaultKind::*;
    let shims = Shims::new("ok", "exit 0");
    let cases: &[Case] = &[
        (Stop, Kind::Docker, false, &["docker stop web"], &["docker start web"]),
        (Stop, Kind::Docker, true, &["docker kill web"], &["docker start web"]),
        (Pause, Kind::Docker, false, &["docker pause web"], &["docker unpause web"]),
        (Restart, Kind::Docker, false, &["docker restart web"], &["docker start web"]),
        (Restart, Kind::Docker, true, &["docker restart --time 0 web"], &["docker start web"]),
        (Stop, Kind::Incus, false, &["incus stop web"], &["incus start web"]),
        (Stop, Kind::Incus, true, &["incus stop --force web"], &["incus start web"]),
        (Pause, Kind::Incus, false, &["incus pause web"], &["incus start web"]),
        (Restart, Kind::Incus, true, &["incus restart --force web"], &["incus start web"]),
        (Stop, Kind::Systemd, false, &["systemctl stop web"], &["systemctl start web"]),
        (Stop, Kind::Systemd, true, &["systemctl kill --signal=SIGKILL web", "systemctl stop web"], &["systemctl start web"]),
        (Pause, Kind::Systemd, false, &["systemctl kill --signal=SIGSTOP web"], &["systemctl kill --signal=SIGCONT web"]),
        (Restart, Kind::Systemd, false, &["systemctl restart web"], &["systemctl start web"]),
    ];
    for (kind, driver, force, apply, revert) in cases {
        let (applied, reverted) = run(&shims, &fault(*kind, *driver, "web", *force));
        assert_eq!(applied, *apply, "apply of {kind:?} {driver:?} force={force}");
        assert_eq!(reverted, *revert, "revert of {kind:?} {driver:?} force={force}");
    }
}

#[test]
fn reverts_accept_already_done_and_report_real_failures() {
    // Every revert verb fails the way the real CLI does when the instance is
    // already in the wanted state; apply verbs succeed.
    let body = r#"case "$1" in
  start) echo "Error: The instance is already running" >&2; exit 1 ;;
  unpause) echo "Error response from daemon: Container web is not paused" >&2; exit 1 ;;
esac
exit 0"#;
    let shims = Shims::new("already", body);
    let (_, reverted) = run(&shims, &fault(FaultKind::Pause, Kind::Incus, "web", false));
    assert_eq!(reverted, ["incus start web"]);
    let (_, reverted) = run(&shims, &fault(FaultKind::Stop, Kind::Incus, "web", true));
    assert_eq!(reverted, ["incus start web"]);
    let (_, reverted) = run(&shims, &fault(FaultKind::Pause, Kind::Docker, "web", false));
    assert_eq!(reverted, ["docker unpause web"]);

    // Any other failure is a failure: a revert that did not happen must say so.
    let shims = Shims::new("broken", r#"[ "$1" = start ] && { echo "Error: storage pool is gone" >&2; exit 1; }; exit 0"#);
    let f = fault(FaultKind::Stop, Kind::Incus, "web", false);
    let actions = InstanceDriver.actions(&f, &node()).unwrap();
    let err = shims.runner().execute(&actions.revert[0]).unwrap_err();
    assert!(err.to_string().contains("storage pool is gone"), "{err}");
    // Docker's start has no ok_if: "port is already allocated" is a real failure.
    let shims = Shims::new("port", r#"[ "$1" = start ] && { echo "Bind for 0.0.0.0:80 failed: port is already allocated" >&2; exit 1; }; exit 0"#);
    let f = fault(FaultKind::Stop, Kind::Docker, "web", false);
    let actions = InstanceDriver.actions(&f, &node()).unwrap();
    assert!(shims.runner().execute(&actions.revert[0]).is_err());
}

#[test]
fn the_check_at_assignment_finds_missing_instances_with_read_only_commands() {
    // Every CLI knows the instance: the check passes, and only looks.
    let present = Shims::new("check-ok", "exit 0");
    for (driver, expect) in [
        (Kind::Docker, "docker inspect --type container web"),
        (Kind::Incus, "incus info web"),
        (Kind::Systemd, "systemctl show --property=LoadState --value web"),
    ] {
        present.clear();
        let f = fault(FaultKind::Stop, driver, "web", false);
        assert_eq!(InstanceDriver.check(&f, &node(), &present.runner()), Ok(()), "{driver:?}");
        assert_eq!(present.log(), [expect], "{driver:?}");
    }
    // No such instance: docker and incus fail, systemctl says not-found.
    let absent = Shims::new("check-missing", "[ \"$1\" = show ] && { echo not-found; exit 0; }\necho \"Error: No such object: $4\" >&2; exit 1");
    for (driver, says) in [(Kind::Docker, "no docker container `web`"), (Kind::Incus, "no incus instance `web`"), (Kind::Systemd, "no systemd unit `web`")] {
        let f = fault(FaultKind::Stop, driver, "web", false);
        let err = InstanceDriver.check(&f, &node(), &absent.runner()).unwrap_err();
        assert!(err.contains("fault `f`") && err.contains(says) && err.contains("on this node"), "{driver:?}: {err}");
    }
    // A process by name that is not running (no comm in /proc matches).
    let mut p = fault(FaultKind::Pause, Kind::Process, "nosuchproc9", false);
    p.instance.as_mut().unwrap().start = vec!["true".into()];
    let err = InstanceDriver.check(&p, &node(), &Runner::default()).unwrap_err();
    assert!(err.contains("no process named `nosuchproc9`"), "{err}");
}

/// The instance existed when the run was assigned but is gone when its
/// window comes: the injector checks again just before the window, and the
/// fault fails with nothing applied — no stop, no revert, nothing journaled.
#[test]
fn an_instance_gone_by_its_window_is_not_applied_and_nothing_is_reverted() {
    use stampede_agent::fault::injector::{FaultStatus, Injector};
    use stampede_agent::fault::journal::Journal;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    let absent = Shims::new("gone-by-window", "echo \"Error: No such object: $4\" >&2; exit 1");
    let state = tempfile::tempdir().unwrap();
    let injector = Arc::new(Injector::new(state.path(), node(), absent.runner()).unwrap());
    let mut f = fault(FaultKind::Stop, Kind::Docker, "web", false);
    // The check runs 1.5 s before the window: 0.2 s from now.
    f.at = "1700ms".parse().unwrap();
    let (tx, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let began = std::time::Instant::now();
    rt.block_on(injector.run_window("run-1".into(), f, SystemTime::now(), tokio_util::sync::CancellationToken::new(), tx));
    let update = updates.try_recv().expect("one update");
    assert_eq!(update.status, FaultStatus::Failed);
    assert!(update.error.contains("checked again") && update.error.contains("no docker container `web`"), "{}", update.error);
    assert!(update.applied.is_none() && update.reverted.is_none());
    assert!(began.elapsed() < Duration::from_millis(1500), "failed at the check, not at the window: {:?}", began.elapsed());
    assert_eq!(absent.log(), ["docker inspect --type container web"], "only the read-only check ran");
    assert!(Journal::open(state.path()).unwrap().pending().unwrap().is_empty(), "nothing journaled");
}
