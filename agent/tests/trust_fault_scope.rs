//! Issue 8, scope of harm of faults, on the agent: a fault's watchdog
//! process (item 6), and the process driver that must never hit stampede
//! itself and reverts exactly what it did (item 9). The plan and end-to-end
//! items live in `coordinator/tests/trust_fault_scope.rs`.
//!
//! The processes signalled here are `sleep`s started detached (not children
//! of this test process, which plays the agent) from a symlink whose name is
//! unique to this test process, so a by-name fault can only reach them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use stampede_agent::fault::instance::InstanceDriver;
use stampede_agent::fault::journal::{Entry, Journal};
use stampede_agent::fault::watchdog::Watchdog;
use stampede_agent::fault::{Action, Driver, Node, Runner};
use stampede_common::plan::{Fault, FaultKind, Instance, InstanceDriver as Kind};

/// `sleep 60` processes named `name` (a symlink to sleep), detached.
struct Sleepers {
    dir: tempfile::TempDir,
    name: String,
    pids: Vec<i32>,
}

impl Sleepers {
    fn new(label: &str) -> Sleepers {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("stp{label}{}", std::process::id() % 1_000_000);
        let sleep = String::from_utf8(Command::new("sh").args(["-c", "command -v sleep"]).output().unwrap().stdout).unwrap();
        std::os::unix::fs::symlink(std::fs::canonicalize(sleep.trim()).unwrap(), dir.path().join(&name)).unwrap();
        Sleepers { dir, name, pids: Vec::new() }
    }

    /// Starts one more, detached; returns its pid.
    fn spawn(&mut self) -> i32 {
        let out = Command::new("sh").args(["-c", r#""$1" 60 </dev/null >/dev/null 2>&1 & echo $!"#, "sh"]).arg(self.dir.path().join(&self.name)).output().unwrap();
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        self.pids.push(pid);
        // Until exec, the child is still `sh`: wait for its name.
        let until = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim() != self.name && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        pid
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if pid > 1 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()).unwrap_or('?')
}

/// Waits a little for `pid` to reach `want` (signals are asynchronous).
fn reaches(pid: i32, want: impl Fn(char) -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if want(state(pid)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn node() -> Node {
    Node { route_dev: Box::new(|_| Err("not used".into())), agent_exe: PathBuf::from("/bin/false") }
}

fn process_fault(kind: FaultKind, name: Option<&str>, pid: Option<u32>, pid_file: Option<&Path>) -> Fault {
    let mut f: Fault = serde_json::from_value(serde_json::json!({"name": "p", "kind": "pause", "at": "1s", "duration": "5s"})).unwrap();
    f.kind = kind;
    f.instance = Some(Instance {
        driver: Kind::Process,
        name: name.map(str::to_string),
        pid,
        pid_file: pid_file.map(|p| p.display().to_string()),
        force: false,
        start: vec!["true".into()],
    });
    f
}

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_string()
}

fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ").unwrap().1.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Item 9: every stampede process is named `stampede`, and a by-name stop
/// was a `pkill -x`: it would have stopped the agent itself and the
/// `stampede` running it. A selector whose match includes this process (the
/// agent, by name) or its parent (the stampede/test runner above it, by pid)
/// is refused at the check before any load, and at apply.
#[test]
fn a_process_fault_matching_stampede_itself_is_refused() {
    let me = std::process::id();
    let by_own_name = process_fault(FaultKind::Pause, Some(&comm_of(me)), None, None);
    let err = InstanceDriver.check(&by_own_name, &node(), &Runner::default()).unwrap_err();
    assert!(err.contains("this agent itself"), "{err}");
    let by_parent = process_fault(FaultKind::Stop, None, Some(parent_of(me)), None);
    let err = InstanceDriver.check(&by_parent, &node(), &Runner::default()).unwrap_err();
    assert!(err.contains("an ancestor of this agent"), "{err}");
    // And at apply, whatever the check said: nothing is signalled.
    let runner = Runner::default();
    let apply = InstanceDriver.actions(&by_own_name, &node()).unwrap().apply;
    let refused = apply.iter().map(|a| runner.execute(a)).find(Result::is_err).expect("the apply is refused");
    assert!(refused.unwrap_err().to_string().contains("never signals its own processes"));
}

/// Item 9: the revert resumes exactly the processes the apply stopped,
/// resolved once at apply. Before, it was `pkill -CONT -x NAME`: a process
/// of that name started (and stopped by someone else) during the window was
/// thawed too.
#[test]
fn a_process_fault_reverts_exactly_the_pids_it_stopped() {
    let mut sleepers = Sleepers::new("x");
    let first = sleepers.spawn();
    let fault = process_fault(FaultKind::Pause, Some(&sleepers.name.clone()), None, None);
    let actions = InstanceDriver.actions(&fault, &node()).unwrap();
    let runner = Runner::default();
    for a in &actions.apply {
        runner.execute(a).unwrap();
    }
    assert!(reaches(first, |s| s == 'T'), "the fault did not stop {first}");
    // Another process of the same name, stopped by its owner, not by us.
    let other = sleepers.spawn();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(other), nix::sys::signal::Signal::SIGSTOP).unwrap();
    assert!(reaches(other, |s| s == 'T'));
    for a in &actions.revert {
        runner.execute(a).unwrap();
    }
    assert!(reaches(first, |s| s != 'T'), "the revert did not resume {first}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(other), 'T', "the revert resumed {other}, which the fault never stopped");
}

/// Item 9: a `pid_file` selector signals the pid in the file, read when the
/// fault is applied, and nothing else.
#[test]
fn a_process_fault_by_pid_file_signals_that_pid() {
    let mut sleepers = Sleepers::new("f");
    let target = sleepers.spawn();
    let bystander = sleepers.spawn();
    let pid_file = sleepers.dir.path().join("app.pid");
    std::fs::write(&pid_file, format!("{target}\n")).unwrap();
    let fault = process_fault(FaultKind::Pause, None, None, Some(&pid_file));
    InstanceDriver.check(&fault, &node(), &Runner::default()).unwrap();
    let actions = InstanceDriver.actions(&fault, &node()).unwrap();
    let runner = Runner::default();
    for a in &actions.apply {
        runner.execute(a).unwrap();
    }
    assert!(reaches(target, |s| s == 'T'));
    assert_ne!(state(bystander), 'T');
    for a in &actions.revert {
        runner.execute(a).unwrap();
    }
    assert!(reaches(target, |s| s != 'T'));
    let missing = process_fault(FaultKind::Pause, None, None, Some(&sleepers.dir.path().join("none.pid")));
    assert!(InstanceDriver.check(&missing, &node(), &Runner::default()).unwrap_err().contains("cannot read the pid file"));
}

fn entry(id: &str, marker: &Path) -> Entry {
    Entry {
        id: id.into(),
        run_id: id.split('/').next().unwrap().into(),
        fault: "f".into(),
        kind: "partition".into(),
        revert: vec![Action::run(&["touch", marker.to_str().unwrap()])],
        deadline_unix_ms: 0,
    }
}

/// Item 6: the watchdog process reverts a fault still pending in the
/// journal at its deadline, and leaves alone one already reverted (a newer
/// fault may have reused its table or qdisc) or one it was disarmed for.
#[test]
fn the_watchdog_reverts_only_its_own_pending_fault() {
    let exe = Path::new(env!("CARGO_BIN_EXE_stampede-agent"));
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let journal = Journal::open(&state_dir).unwrap();
    let (old, new, kept) = (dir.path().join("old"), dir.path().join("new"), dir.path().join("kept"));
    journal.record_apply(&entry("run1/f", &old)).unwrap();
    journal.record_reverted("run1/f").unwrap();
    journal.record_apply(&entry("run2/f", &new)).unwrap();
    journal.record_apply(&entry("run3/f", &kept)).unwrap();
    let soon = SystemTime::now() + Duration::from_millis(200);
    let _stale = Watchdog::spawn(exe, &state_dir, "run1/f", soon).unwrap();
    let _live = Watchdog::spawn(exe, &state_dir, "run2/f", soon).unwrap();
    Watchdog::spawn(exe, &state_dir, "run3/f", soon).unwrap().disarm();
    let until = Instant::now() + Duration::from_secs(5);
    while !new.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(new.exists(), "the pending fault was not reverted by its watchdog");
    assert!(!old.exists(), "a watchdog reverted a fault that was reverted already");
    assert!(!kept.exists(), "a disarmed watchdog reverted its fault");
    let pending: Vec<String> = journal.pending().unwrap().into_iter().map(|p| p.entry.id).collect();
    assert_eq!(pending, ["run3/f"]);
}

/// Item 9: a coordinator on this host is a `stampede` process too, and
/// neither its child nor its parent: a name or pid that matches it is
/// refused. It is recognised as the process listening on the port this
/// agent dials (given to the injector at assignment). A stand-in listener
/// plays the coordinator here.
#[test]
fn a_process_fault_on_the_coordinator_this_agent_dials_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    let script = "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nopen(sys.argv[1],'w').write(str(s.getsockname()[1]))\ntime.sleep(60)\n";
    let out = Command::new("sh")
        .args(["-c", r#"python3 -c "$1" "$2" </dev/null >/dev/null 2>&1 & echo $!"#, "sh", script])
        .arg(&port_file)
        .output()
        .unwrap();
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let mut guard = Sleepers::new("c");
    guard.pids.push(pid);
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&port_file).is_ok_and(|p| !p.is_empty()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let port: u16 = std::fs::read_to_string(&port_file).unwrap().parse().unwrap();
    let fault = process_fault(FaultKind::Pause, None, Some(pid as u32), None);
    // Before the agent knows where its coordinator is, the process is fair game.
    InstanceDriver.check(&fault, &node(), &Runner::default()).unwrap();
    let injector = stampede_agent::fault::injector::Injector::new(&dir.path().join("state"), node(), Runner::default()).unwrap();
    injector.set_control(vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]);
    let err = injector.check(&fault).unwrap_err();
    injector.set_control(Vec::new());
    assert!(err.contains("the coordinator this agent dials"), "{err}");
}
