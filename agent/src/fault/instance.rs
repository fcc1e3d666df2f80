//! Instance faults — stop, pause, restart — for a process, a systemd unit, a
//! docker container or an incus instance. Pure builders: every action is an
//! exact argument list, so what a dry run prints is what runs.
//!
//! Reverts must be idempotent (they run again after a crash, and may run
//! although the apply never did, because the journal is written first):
//! the CLIs' "already in that state" errors are accepted via `ok_if`, and
//! the process driver guards its `start` with "is it running already?".
//!
//! The process driver never signals by name (`pkill`): every stampede
//! process is named `stampede`. It resolves the exact pids at apply time,
//! journals them, and signals and resumes exactly those (`procs.rs`).

use stampede_common::plan::{Fault, FaultKind, Instance, InstanceDriver as Kind};

use super::procs::{self, Selector, COMM_MAX, PID_MAX};
use super::{Action, Driver, FaultActions, FaultError, Node, Runner};

/// Stop, pause and restart of one instance on the agent's node.
pub struct InstanceDriver;

/// Shell function: succeeds when one of its pids is a live process. A zombie
/// counts as gone: a stopped child of ours lingers as one until reaped, and
/// it serves nothing.
const ALIVE: &str = r#"alive() { for p in "$@"; do s=$(cat /proc/"$p"/stat 2>/dev/null) || continue; case "${s##*) }" in Z*|X*) ;; *) return 0 ;; esac; done; return 1; }"#;

impl Driver for InstanceDriver {
    fn actions(&self, fault: &Fault, _node: &Node) -> Result<FaultActions, FaultError> {
        let err = |message: String| FaultError::Plan { fault: fault.name.clone(), message };
        let inst = fault.instance.as_ref().ok_or_else(|| err("an instance fault needs an `instance` block".into()))?;
        if !fault.kind.is_instance() {
            return Err(err(format!("`{}` is not an instance fault", fault.kind.name())));
        }
        match inst.driver {
            Kind::Process => process(fault.kind, inst, &fault.name).map_err(err),
            driver => {
                let name = inst.name.as_deref().filter(|n| !n.trim().is_empty());
                let name = name.ok_or_else(|| err(format!("the {} driver needs the instance's `name`", driver.name())))?;
                // A leading `-` would be read as an option by every CLI below.
                if name.starts_with('-') {
                    return Err(err(format!("instance name `{name}` must not start with `-`")));
                }
                Ok(match driver {
                    Kind::Docker => docker(fault.kind, name, inst.force),
                    Kind::Incus => incus(fault.kind, name, inst.force),
                    _ => systemd(fault.kind, name, inst.force),
                })
            }
        }
    }

    /// The instance must exist now: a stop of nothing would otherwise fail
    /// only at its scheduled time, minutes into the load.
    fn check(&self, fault: &Fault, node: &Node, runner: &Runner) -> Result<(), String> {
        self.actions(fault, node).map_err(|e| e.to_string())?;
        let inst = fault.instance.as_ref().expect("actions() checked it");
        let name = inst.name.as_deref().unwrap_or_default();
        let (probe, missing) = match inst.driver {
            // Resolved as the apply will: none found, or stampede's own
            // among them, refuses the run before any load.
            Kind::Process => return procs::resolve(&Target::of(inst, &fault.name)?.select).map(drop).map_err(|e| format!("fault `{}`: {e}", fault.name)),
            Kind::Systemd => (Action::run(&["systemctl", "show", "--property=LoadState", "--value", name]), format!("no systemd unit `{name}`")),
            Kind::Docker => (Action::run(&["docker", "inspect", "--type", "container", name]), format!("no docker container `{name}`")),
            Kind::Incus => (Action::run(&["incus", "info", name]), format!("no incus instance `{name}`")),
        };
        match runner.output(&probe) {
            // systemctl answers for any name; an unknown unit is "not-found".
            Ok(out) if out.trim() == "not-found" => Err(format!("fault `{}`: {missing} on this node", fault.name)),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("fault `{}`: {missing} on this node ({e})", fault.name)),
        }
    }

    fn requires(&self, fault: &Fault) -> Vec<String> {
        match fault.instance.as_ref().map(|i| i.driver) {
            Some(Kind::Docker) => vec!["docker".into()],
            Some(Kind::Incus) => vec!["incus".into()],
            Some(Kind::Systemd) => vec!["systemctl".into()],
            // kill/pkill/pgrep (procps) and setsid (util-linux) are on every
            // host we target, so no capability is probed. Where one is missing,
            // the step that needs it fails loudly rather than silently.
            Some(Kind::Process) | None => vec![],
        }
    }
}

fn acts(apply: Vec<Action>, revert: Vec<Action>) -> FaultActions {
    FaultActions { apply, revert }
}

fn docker(kind: FaultKind, name: &str, force: bool) -> FaultActions {
    // `docker start` on a running container succeeds silently, so it needs no
    // `ok_if`; a loose one ("already") would even hide a real failure such as
    // "port is already allocated" and report a dead container as restored.
    let start = Action::run(&["docker", "start", name]);
    match kind {
        FaultKind::Pause => acts(
            vec![Action::run(&["docker", "pause", name])],
            vec![Action::run_ok_if(&["docker", "unpause", name], &["is not paused"])],
        ),
        FaultKind::Restart if force => acts(vec![Action::run(&["docker", "restart", "--time", "0", name])], vec![start]),
        FaultKind::Restart => acts(vec![Action::run(&["docker", "restart", name])], vec![start]),
        _ if force => acts(vec![Action::run(&["docker", "kill", name])], vec![start]),
        _ => acts(vec![Action::run(&["docker", "stop", name])], vec![start]),
    }
}

fn incus(kind: FaultKind, name: &str, force: bool) -> FaultActions {
    // `incus start` both starts a stopped instance and thaws a frozen one:
    // lxc/incus cmd/incus/action.go, cmdAction.doAction: `"start" for a
    // frozen instance means "unfreeze"` (docs: linuxcontainers.org/incus/docs/
    // main/reference/manpages/incus/pause/). Unlike `incus resume` it also
    // brings back an instance that died while paused, so one revert fits
    // stop, pause and restart. On a running instance it fails with
    // "The instance is already running", which is the state we want.
    let start = Action::run_ok_if(&["incus", "start", name], &["already running"]);
    let verb = match kind {
        FaultKind::Pause => return acts(vec![Action::run(&["incus", "pause", name])], vec![start]),
        FaultKind::Restart => "restart",
        _ => "stop",
    };
    let apply = if force { Action::run(&["incus", verb, "--force", name]) } else { Action::run(&["incus", verb, name]) };
    acts(vec![apply], vec![start])
}

fn systemd(kind: FaultKind, name: &str, force: bool) -> FaultActions {
    // `systemctl start` is idempotent by itself.
    let start = Action::run(&["systemctl", "start", name]);
    let kill = |sig: &str| Action::run(&["systemctl", "kill", &format!("--signal={sig}"), name]);
    match kind {
        FaultKind::Pause => acts(vec![kill("SIGSTOP")], vec![kill("SIGCONT")]),
        // systemd has no forced stop; SIGKILL the unit's processes first. The
        // `stop` after it matters: with Restart=on-failure systemd would bring
        // a killed unit back on its own, `stop` cancels that.
        FaultKind::Stop if force => acts(vec![kill("SIGKILL"), Action::run(&["systemctl", "stop", name])], vec![start]),
        FaultKind::Stop => acts(vec![Action::run(&["systemctl", "stop", name])], vec![start]),
        FaultKind::Restart if force => acts(vec![kill("SIGKILL"), Action::run(&["systemctl", "restart", name])], vec![start]),
        _ => acts(vec![Action::run(&["systemctl", "restart", name])], vec![start]),
    }
}

/// The process the plan names, as a /proc selector (see `procs.rs`), and
/// the tag its resolved pids are journaled under.
struct Target {
    select: Selector,
    tag: String,
}

impl Target {
    fn of(inst: &Instance, fault: &str) -> Result<Target, String> {
        let select = match (inst.pid, inst.name.as_deref(), inst.pid_file.as_deref()) {
            (Some(pid), None, None) => {
                if pid <= 1 || pid > PID_MAX {
                    return Err(format!("pid {pid} is not a process stampede may signal (2–{PID_MAX})"));
                }
                if pid == std::process::id() {
                    return Err(format!("pid {pid} is this agent itself"));
                }
                Selector::Pid(pid)
            }
            (None, Some(name), None) => {
                if name.is_empty() || name.len() > COMM_MAX || name.contains('/') {
                    return Err(format!("process name `{name}` must be 1–{COMM_MAX} bytes without `/` (the kernel's `comm`, as `ps -o comm` shows it)"));
                }
                Selector::Name(name.to_string())
            }
            (None, None, Some(path)) => {
                if !path.starts_with('/') {
                    return Err(format!("pid file `{path}` must be an absolute path"));
                }
                Selector::PidFile(path.to_string())
            }
            _ => return Err("the process driver takes exactly one of `name`, `pid` or `pid_file`".into()),
        };
        Ok(Target { select, tag: format!("stampede-process-{fault}") })
    }

    /// The first positional argument of the start script, and the shell
    /// expression listing the pids that count as "running already".
    fn shell(&self) -> (String, &'static str) {
        match &self.select {
            Selector::Pid(pid) => (pid.to_string(), r#""$1""#),
            Selector::Name(name) => (literal_pattern(name), r#"$(pgrep -x -- "$1")"#),
            Selector::PidFile(path) => (path.clone(), r#"$(cat -- "$1" 2>/dev/null)"#),
        }
    }

    /// Sends `sig` (STOP, TERM, KILL) to the processes resolved at apply.
    fn signal(&self, sig: &str) -> Action {
        Action::Signal { select: self.select.clone(), signal: sig.into(), tag: self.tag.clone() }
    }

    /// SIGCONT for the revert, to exactly the processes the apply stopped.
    fn resume(&self) -> Action {
        Action::SignalRecorded { tag: self.tag.clone(), signal: "CONT".into() }
    }

    /// Waits until the signalled processes are gone, so a `start` right
    /// after does not race the old instance for its port.
    fn wait_gone(&self) -> Action {
        Action::WaitRecordedGone { tag: self.tag.clone() }
    }

    /// Runs the plan's `start` command unless the target is alive already.
    ///
    /// Detached with util-linux `setsid -f` (fork, new session), not with
    /// `nohup … &`: the restarted instance must outlive the fault, the
    /// agent and its terminal. `&` would leave it in the agent's process
    /// group, where a Ctrl-C meant for the agent reaches it too. Its output
    /// goes to /dev/null: an inherited pipe would keep the runner waiting
    /// for EOF until the instance exits.
    fn start(&self, argv: &[String]) -> Action {
        let (arg, pids) = self.shell();
        let script = format!(
            r#"{ALIVE}; if alive {pids}; then exit 0; fi; shift; command -v -- "$1" >/dev/null || {{ echo "$1: command not found" >&2; exit 127; }}; setsid -f -- "$@" </dev/null >/dev/null 2>&1"#
        );
        sh(&script, &arg, argv)
    }
}

/// `sh -c SCRIPT sh ARG ARGV...`: values reach the script as positional
/// parameters, never spliced into its text, so no name or argument can
/// inject shell syntax.
fn sh(script: &str, arg: &str, rest: &[String]) -> Action {
    let mut argv = vec!["sh".to_string(), "-c".into(), script.into(), "sh".into(), arg.into()];
    argv.extend(rest.iter().cloned());
    Action::Run { argv, stdin: None, ok_if: Vec::new() }
}

/// pgrep/pkill take an extended regex; escaping its metacharacters makes
/// `-x NAME` match exactly that name (`python3.11` would otherwise match
/// `python3x11`).
fn literal_pattern(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        if r"\.^$*+?()[]{}|".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn process(kind: FaultKind, inst: &Instance, fault: &str) -> Result<FaultActions, String> {
    let target = Target::of(inst, fault)?;
    if kind == FaultKind::Pause {
        return Ok(acts(vec![target.signal("STOP")], vec![target.resume()]));
    }
    if inst.start.is_empty() {
        return Err("a stopped process cannot be resumed: give the command that starts it again (`start`)".into());
    }
    let mut apply = vec![target.signal(if inst.force { "KILL" } else { "TERM" }), target.wait_gone()];
    let start = target.start(&inst.start);
    if kind == FaultKind::Stop {
        return Ok(acts(apply, vec![start]));
    }
    apply.push(start.clone());
    // A restart's revert makes sure the process runs, as `docker start` does.
    // By pid it cannot: the restarted process has a new pid, so the revert
    // could not tell "restarted" from "never came back" and would start a
    // second copy. The restart is complete in the apply; nothing to undo.
    let revert = match target.select {
        Selector::Name(_) | Selector::PidFile(_) => vec![start],
        Selector::Pid(_) => vec![],
    };
    Ok(acts(apply, revert))
}
