//! A watchdog process per applied fault, so that no fault outlives its
//! window when the agent cannot act: SIGSTOPped, SIGKILLed, hung or
//! crashed (issue 8 item 6). The dead-man thread of the injector dies or
//! freezes with the agent; this does not.
//!
//! The agent re-executes its own binary (`stampede-agent` or, for
//! `--local-agents`, `stampede`) with the hidden `fault-watchdog`
//! subcommand, in a process group of its own, so a signal to the agent's
//! group (Ctrl-C, `kill -STOP -PGID`) does not reach it. At the deadline
//! (window end + [`GRACE`]) it reads the journal and, only if the fault's
//! entry is still pending, runs the journaled revert and records it as
//! reverted. So it is idempotent with the agent's own revert and with
//! start-up recovery (both record `reverted`), and it can never undo a
//! newer fault that reused the same table or qdisc: that one has another
//! journal id.
//!
//! On the normal path the agent disarms it by writing one byte to its
//! stdin; the watchdog then exits without doing anything. End of file
//! without that byte means the agent is gone, and the watchdog keeps its
//! deadline. No signal is ever sent to it, so no reused pid can be hit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::action::Runner;
use super::injector::revert_all;
use super::journal::{Journal, Pending};

/// How long after the window's end the watchdog reverts: enough for the
/// agent's own revert to come first when it is alive.
pub const GRACE: Duration = Duration::from_millis(300);
/// The byte that disarms a watchdog.
const DISARM: u8 = b'd';

/// The hidden `fault-watchdog` subcommand of `stampede-agent` and `stampede`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct WatchdogCommand {
    /// The agent's state directory, holding the fault journal.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The journal id of the fault (`run_id/fault`).
    #[arg(long)]
    pub id: String,
    /// When to revert, in milliseconds since the Unix epoch.
    #[arg(long)]
    pub at_unix_ms: u64,
}

/// Waits until the deadline or until disarmed; at the deadline reverts the
/// fault if the journal still has it pending.
pub fn watchdog_main(cmd: WatchdogCommand) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        if matches!(std::io::stdin().read(&mut byte), Ok(1) if byte[0] == DISARM) {
            let _ = tx.send(());
        }
        // End of file: the agent is gone; keep the deadline (tx dropped
        // only makes recv_timeout report Disconnected, handled below).
        std::thread::sleep(Duration::MAX);
    });
    let deadline = UNIX_EPOCH + Duration::from_millis(cmd.at_unix_ms);
    let wait = deadline.duration_since(SystemTime::now()).unwrap_or_default();
    if rx.recv_timeout(wait).is_ok() {
        return Ok(());
    }
    let journal = Journal::open(&cmd.state_dir)?;
    let Some(pending) = journal.pending()?.into_iter().find(|p| p.entry.id == cmd.id) else {
        return Ok(()); // reverted already, by the agent or by recovery
    };
    let runner = Runner::default();
    adopt(&runner, &pending);
    match revert_all(&runner, &pending.entry.revert) {
        Ok(()) => {
            journal.record_reverted(&cmd.id)?;
            Ok(())
        }
        Err(e) => anyhow::bail!("watchdog: reverting fault {} failed: {e}", cmd.id),
    }
}

/// Hands a runner what an earlier process recorded for a fault: its
/// pressure helpers (only if the group leader is still one: after a
/// reboot the number may belong to anything) and the processes it signalled.
pub fn adopt(runner: &Runner, pending: &Pending) {
    for (tag, pgid) in &pending.spawned {
        let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg == b"stress") {
            runner.adopt(tag, *pgid);
        }
    }
    for (tag, procs) in &pending.signalled {
        runner.adopt_procs(tag, procs.clone());
    }
}

/// An armed watchdog process; [`Watchdog::disarm`] once the fault is reverted.
pub struct Watchdog {
    stdin: ChildStdin,
}

impl Watchdog {
    /// Starts `exe fault-watchdog` for journal entry `id` in `state_dir`, in
    /// its own process group, reverting at `deadline`.
    pub fn spawn(exe: &Path, state_dir: &Path, id: &str, deadline: SystemTime) -> std::io::Result<Watchdog> {
        use std::os::unix::process::CommandExt;
        let at = deadline.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut child: Child = Command::new(exe)
            .arg("fault-watchdog")
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--id", id, "--at-unix-ms", &at.to_string()])
            .process_group(0)
            .stdin(Stdio::piped())
            // Never an inherited pipe: a caller waiting for our output's
            // end of file would wait for the watchdog too.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        // Reaped whenever it exits, so no zombie stays behind.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(Watchdog { stdin })
    }

    /// Tells the watchdog the fault is reverted; it exits without acting.
    pub fn disarm(mut self) {
        // A watchdog that already exited (an agent executable without the
        // subcommand, in tests) makes this fail; there is nothing to disarm.
        let _ = self.stdin.write_all(&[DISARM]);
    }
}
