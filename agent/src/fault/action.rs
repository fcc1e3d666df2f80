//! What a fault does on a node, as data: a list of [`Action`]s to apply and
//! a list to revert. Drivers only *build* actions (pure functions, tested
//! against exact argument lists); [`Runner`] executes them. The same data is
//! journaled before it runs and printed by `--dry-run`, so what is shown,
//! what is recorded and what runs can never differ.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::procs::{self, ProcRef, Selector};

/// One step of applying or reverting a fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Run a program (looked up on PATH) and wait for it. When it fails with
    /// stderr containing one of `ok_if`, the step still counts as done: that
    /// is how reverts stay idempotent ("already gone" is success).
    Run {
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdin: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ok_if: Vec<String>,
    },
    /// Start a long-running helper (CPU or memory pressure) in its own process
    /// group, tagged so it can be found again. It must bound its own life.
    Spawn { argv: Vec<String>, tag: String },
    /// Kill the process group started by the `Spawn` with this tag, if alive.
    KillSpawned { tag: String },
    /// Send `signal` (`STOP`, `TERM`, …) to the processes `select` names,
    /// resolved to exact pids at apply time and recorded under `tag`
    /// (journaled, see `procs.rs`); refused if stampede's own are among them.
    Signal { select: Selector, signal: String, tag: String },
    /// Send `signal` to exactly the processes recorded under `tag`, skipping
    /// any gone or reused since; nothing recorded is nothing to do.
    SignalRecorded { tag: String, signal: String },
    /// Wait (8 s at most) until the processes recorded under `tag` are gone.
    WaitRecordedGone { tag: String },
}

impl Action {
    pub fn run(argv: &[&str]) -> Action {
        Action::Run { argv: argv.iter().map(|s| s.to_string()).collect(), stdin: None, ok_if: Vec::new() }
    }

    /// A revert step that also succeeds when what it removes is already gone.
    pub fn run_ok_if(argv: &[&str], ok_if: &[&str]) -> Action {
        Action::Run {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            stdin: None,
            ok_if: ok_if.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The action as a shell line, for dry runs, journals and logs.
    pub fn display(&self) -> String {
        match self {
            Action::Run { argv, stdin: None, .. } => shell_join(argv),
            Action::Run { argv, stdin: Some(input), .. } => format!("{} <<'EOF'\n{}EOF", shell_join(argv), ensure_newline(input)),
            Action::Spawn { argv, tag } => format!("{} &  # process group tagged {tag}", shell_join(argv)),
            Action::KillSpawned { tag } => format!("kill -KILL -- -<process group of {tag}>"),
            Action::Signal { select, signal, tag } => format!("kill -{signal} <{}, resolved at apply as {tag}>", select.describe()),
            Action::SignalRecorded { tag, signal } => format!("kill -{signal} <the processes of {tag}>"),
            Action::WaitRecordedGone { tag } => format!("wait until the processes of {tag} are gone"),
        }
    }
}

fn ensure_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=%,+@".contains(&b)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What applying or reverting a fault takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultActions {
    pub apply: Vec<Action>,
    /// Undoes `apply` exactly; safe to run more than once.
    pub revert: Vec<Action>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("`{command}` failed: {detail}")]
    Failed { command: String, detail: String },
    #[error("`{command}` did not finish within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
}

/// Executes actions. `bin_dir`, when set, is searched before PATH — tests put
/// recording shims there.
#[derive(Debug, Clone)]
pub struct Runner {
    pub timeout: Duration,
    pub path_prefix: Option<PathBuf>,
    /// Process groups started by `Spawn`, by tag.
    spawned: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, i32>>>,
    /// Processes resolved by `Signal`, by tag.
    signalled: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<ProcRef>>>>,
}

/// How long `WaitRecordedGone` waits, under the runner's 10 s timeout.
const GONE_LIMIT: Duration = Duration::from_secs(8);

impl Default for Runner {
    fn default() -> Self {
        Runner { timeout: Duration::from_secs(10), path_prefix: None, spawned: Default::default(), signalled: Default::default() }
    }
}

impl Runner {
    /// The process group of a spawned helper (for journals and crash recovery).
    pub fn spawned_pgid(&self, tag: &str) -> Option<i32> {
        self.spawned.lock().unwrap_or_else(|e| e.into_inner()).get(tag).copied()
    }

    /// Remembers a helper spawned by an earlier agent process (from the journal).
    pub fn adopt(&self, tag: &str, pgid: i32) {
        self.spawned.lock().unwrap_or_else(|e| e.into_inner()).insert(tag.to_string(), pgid);
    }

    /// Remembers the processes an earlier agent process signalled (from the journal).
    pub fn adopt_procs(&self, tag: &str, procs: Vec<ProcRef>) {
        self.signalled.lock().unwrap_or_else(|e| e.into_inner()).insert(tag.to_string(), procs);
    }

    /// The processes recorded under `tag` (empty when none).
    pub fn recorded(&self, tag: &str) -> Vec<ProcRef> {
        self.signalled.lock().unwrap_or_else(|e| e.into_inner()).get(tag).cloned().unwrap_or_default()
    }

    /// For a `Signal` action: resolves its selector to exact processes now
    /// and records them under its tag (the injector journals them before
    /// the signal is sent). `None` for any other action.
    pub fn resolve(&self, action: &Action) -> Option<Result<Vec<ProcRef>, ActionError>> {
        let Action::Signal { select, tag, .. } = action else { return None };
        Some(match procs::resolve(select) {
            Ok(found) => {
                self.adopt_procs(tag, found.clone());
                Ok(found)
            }
            Err(detail) => Err(ActionError::Failed { command: action.display(), detail }),
        })
    }

    fn command(&self, argv: &[String]) -> Command {
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        if let Some(dir) = &self.path_prefix {
            let path = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{path}", dir.display()));
        }
        cmd
    }

    /// Runs one action to completion (blocking: call from `spawn_blocking`).
    pub fn execute(&self, action: &Action) -> Result<(), ActionError> {
        match action {
            Action::Run { argv, stdin, ok_if } => self.run(argv, stdin.as_deref(), ok_if).map(drop),
            Action::Spawn { argv, tag } => {
                use std::os::unix::process::CommandExt;
                let child = self
                    .command(argv)
                    .process_group(0)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| ActionError::Failed { command: action.display(), detail: e.to_string() })?;
                self.adopt(tag, child.id() as i32);
                // The child is reaped by whoever waits on it; a detached
                // thread does, so no zombie is left behind.
                std::thread::spawn(move || {
                    let mut child = child;
                    let _ = child.wait();
                });
                Ok(())
            }
            Action::KillSpawned { tag } => {
                let Some(pgid) = self.spawned.lock().unwrap_or_else(|e| e.into_inner()).remove(tag) else {
                    return Ok(()); // never started, or already killed
                };
                // Signalled directly, never through kill(1): procps reads
                // `kill -KILL -123` as a signal list and can end up at `-1`,
                // which is every process the caller may signal.
                if pgid <= 1 {
                    return Err(ActionError::Failed { command: action.display(), detail: format!("refusing to signal process group {pgid}") });
                }
                match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
                    Err(e) => Err(ActionError::Failed { command: action.display(), detail: e.to_string() }),
                }
            }
            Action::Signal { tag, signal, .. } => {
                // Resolved already when the injector journaled the pids;
                // resolved here when run on its own.
                let mut found = self.recorded(tag);
                if found.is_empty() {
                    found = self.resolve(action).expect("a Signal action")?;
                }
                procs::signal_all(&found, signal).map_err(|detail| ActionError::Failed { command: action.display(), detail })
            }
            Action::SignalRecorded { tag, signal } => {
                procs::signal_all(&self.recorded(tag), signal).map_err(|detail| ActionError::Failed { command: action.display(), detail })
            }
            Action::WaitRecordedGone { tag } => {
                procs::wait_gone(&self.recorded(tag), GONE_LIMIT).map_err(|detail| ActionError::Failed { command: action.display(), detail })
            }
        }
    }

    /// Runs a read-only `Run` action (e.g. a statistics listing) and returns
    /// its standard output.
    pub fn output(&self, action: &Action) -> Result<String, ActionError> {
        match action {
            Action::Run { argv, stdin, ok_if } => self.run(argv, stdin.as_deref(), ok_if),
            other => Err(ActionError::Failed { command: other.display(), detail: "only a command has an output".into() }),
        }
    }

    fn run(&self, argv: &[String], stdin: Option<&str>, ok_if: &[String]) -> Result<String, ActionError> {
        let command = shell_join(argv);
        let fail = |detail: String| ActionError::Failed { command: command.clone(), detail };
        let mut child = self
            .command(argv)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(|e| fail(e.to_string()))?;
        }
        let started = Instant::now();
        loop {
            match child.try_wait().map_err(|e| fail(e.to_string()))? {
                Some(_) => break,
                None if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ActionError::Timeout { command, timeout: self.timeout });
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if ok_if.iter().any(|pattern| stderr.contains(pattern.as_str())) {
            return Ok(String::new());
        }
        Err(fail(format!("{}: {}", out.status, stderr.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_a_shell_line() {
        assert_eq!(Action::run(&["tc", "qdisc", "del", "dev", "eth0", "root"]).display(), "tc qdisc del dev eth0 root");
        assert_eq!(Action::run(&["sh", "-c", "echo it's"]).display(), r"sh -c 'echo it'\''s'");
        let a = Action::Run { argv: vec!["nft".into(), "-f".into(), "-".into()], stdin: Some("add table inet x".into()), ok_if: vec![] };
        assert_eq!(a.display(), "nft -f - <<'EOF'\nadd table inet x\nEOF");
    }

    #[test]
    fn runner_reports_failures_and_accepts_known_ones() {
        let r = Runner::default();
        assert!(r.execute(&Action::run(&["true"])).is_ok());
        let err = r.execute(&Action::run(&["sh", "-c", "echo nope >&2; exit 3"])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(r.execute(&Action::run_ok_if(&["sh", "-c", "echo 'No such file or directory' >&2; exit 1"], &["No such file"])).is_ok());
        let input = Action::Run { argv: vec!["grep".into(), "-q".into(), "hello".into()], stdin: Some("hello\n".into()), ok_if: vec![] };
        assert!(r.execute(&input).is_ok());
        let slow = Runner { timeout: Duration::from_millis(100), ..Runner::default() };
        assert!(matches!(slow.execute(&Action::run(&["sleep", "5"])), Err(ActionError::Timeout { .. })));
    }

    #[test]
    fn spawned_groups_are_killed_by_tag() {
        let r = Runner::default();
        r.execute(&Action::Spawn { argv: vec!["sleep".into(), "30".into()], tag: "t1".into() }).unwrap();
        let pgid = r.spawned_pgid("t1").unwrap();
        assert!(std::path::Path::new(&format!("/proc/{pgid}")).exists());
        r.execute(&Action::KillSpawned { tag: "t1".into() }).unwrap();
        // Killing twice is fine: revert is idempotent.
        r.execute(&Action::KillSpawned { tag: "t1".into() }).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let alive = std::fs::read_to_string(format!("/proc/{pgid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false);
        assert!(!alive, "pressure helper still running");
    }
}
