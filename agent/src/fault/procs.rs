//! The processes a `process` instance fault signals, resolved to exact pids
//! from /proc (issue 8 item 9). Every stampede process is named `stampede`:
//! a `pkill -x stampede` would have stopped the coordinator running the plan
//! and the agent itself. So the selector is resolved once, at apply time; the
//! pids, each with its start time (field 22 of /proc/PID/stat), are
//! journaled; apply and revert signal exactly those, and a pid reused since
//! (another start time) is never signalled. A match that includes this
//! agent, one of its ancestors (the `stampede` that runs in-process agents,
//! a supervisor), one of its descendants (its helpers) or the coordinator
//! it dials, when that runs on this host (the process listening on the
//! coordinator's port in this network namespace), is refused whole.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Linux truncates a process name (`comm`) to 15 bytes.
pub const COMM_MAX: usize = 15;
/// `/proc/sys/kernel/pid_max` can be at most 2^22.
pub const PID_MAX: u32 = 1 << 22;

/// How a plan names the processes of a `process` fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    Pid(u32),
    /// Every process whose `comm` is exactly this name.
    Name(String),
    /// The pid written in this file (a daemon's pid file).
    PidFile(String),
}

impl Selector {
    pub fn describe(&self) -> String {
        match self {
            Selector::Pid(pid) => format!("pid {pid}"),
            Selector::Name(name) => format!("processes named `{name}`"),
            Selector::PidFile(path) => format!("the pid in {path}"),
        }
    }
}

/// One process, as it was when resolved: a pid alone may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: i32,
    /// Clock ticks since boot at which it started (/proc/PID/stat field 22).
    pub start: u64,
}

/// What /proc says about one process: its parent, start time and state.
struct Stat {
    ppid: i32,
    start: u64,
    state: char,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` may hold spaces and parentheses: the fields follow the last `)`.
    let (_, rest) = text.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); ppid is field 4, starttime field 22.
    Some(Stat { state: fields.first()?.chars().next()?, ppid: fields.get(1)?.parse().ok()?, start: fields.get(19)?.parse().ok()? })
}

/// The process as it is now, if it is alive (a zombie serves nothing).
pub fn current(pid: i32) -> Option<ProcRef> {
    stat(pid).filter(|s| !matches!(s.state, 'Z' | 'X')).map(|s| ProcRef { pid, start: s.start })
}

/// Whether `p` is still the very process that was resolved.
pub fn is_same(p: &ProcRef) -> bool {
    current(p.pid).is_some_and(|now| now.start == p.start)
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect()
}

/// This process and its ancestors, up to (not including) pid 1.
fn ancestors_of(pid: i32) -> Vec<i32> {
    let mut chain = vec![pid];
    let mut at = pid;
    while let Some(s) = stat(at) {
        if s.ppid <= 1 || chain.contains(&s.ppid) {
            break;
        }
        chain.push(s.ppid);
        at = s.ppid;
    }
    chain
}

/// The ports of the coordinator this agent dials (set at each assignment):
/// a process listening on one of them here is that coordinator.
static CONTROL_PORTS: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

pub fn set_control_ports(ports: Vec<u16>) {
    *CONTROL_PORTS.lock().unwrap_or_else(|e| e.into_inner()) = ports;
}

/// Inodes of the TCP sockets listening on one of `ports` in this network
/// namespace (/proc/net/tcp and tcp6: state 0A is LISTEN).
fn listening_inodes(ports: &[u16]) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = f.get(1).and_then(|local| local.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if f.get(3) == Some(&"0A") && port.is_some_and(|p| ports.contains(&p)) {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    inodes
}

/// Whether `pid` holds one of the sockets in `inodes`.
fn holds(pid: i32, inodes: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str())))
}

/// Why a process may not be signalled by a fault of this agent, if it may not.
pub fn protected(pid: i32) -> Option<&'static str> {
    let me = std::process::id() as i32;
    if pid == me {
        return Some("this agent itself");
    }
    if ancestors_of(me).contains(&pid) {
        return Some("an ancestor of this agent (the stampede running it, or its supervisor)");
    }
    if ancestors_of(pid).contains(&me) {
        return Some("a child of this agent");
    }
    // The coordinator on this host: it listens on the port the agent dials.
    let ports = CONTROL_PORTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !ports.is_empty() && holds(pid, &listening_inodes(&ports)) {
        return Some("the coordinator this agent dials (it listens on the coordinator's port here)");
    }
    None
}

/// The live processes `selector` names now; refused (`Err`) when one of them
/// is stampede's own (see [`protected`]) or when there is none.
pub fn resolve(selector: &Selector) -> Result<Vec<ProcRef>, String> {
    let pids: Vec<i32> = match selector {
        Selector::Pid(pid) => vec![checked_pid(*pid)?],
        Selector::PidFile(path) => vec![read_pid_file(Path::new(path))?],
        Selector::Name(name) => all_pids()
            .into_iter()
            // pid 1, and kernel threads (children of kthreadd, pid 2), never.
            .filter(|&pid| pid > 2 && stat(pid).is_some_and(|s| s.ppid != 2))
            .filter(|&pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end_matches('\n') == name))
            .collect(),
    };
    let mut procs = Vec::new();
    for pid in pids {
        if let Some(why) = protected(pid) {
            return Err(format!("{} include pid {pid}, {why}: stampede never signals its own processes", selector.describe()));
        }
        if let Some(p) = current(pid) {
            procs.push(p);
        }
    }
    if procs.is_empty() {
        return Err(match selector {
            Selector::Pid(pid) => format!("no process with pid {pid} on this node"),
            Selector::Name(name) => format!("no process named `{name}` on this node"),
            Selector::PidFile(path) => format!("no live process has the pid in {path} on this node"),
        });
    }
    Ok(procs)
}

fn checked_pid(pid: u32) -> Result<i32, String> {
    if pid <= 1 || pid > PID_MAX {
        return Err(format!("pid {pid} is not a process stampede may signal (2–{PID_MAX})"));
    }
    Ok(pid as i32)
}

fn read_pid_file(path: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the pid file {}: {e}", path.display()))?;
    let pid: u32 = text.trim().parse().map_err(|_| format!("the pid file {} holds `{}`, not a pid", path.display(), text.trim()))?;
    checked_pid(pid)
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`) to each process that is
/// still the one resolved; gone or reused pids are skipped.
pub fn signal_all(procs: &[ProcRef], signal: &str) -> Result<(), String> {
    let sig: Signal = format!("SIG{signal}").parse().map_err(|_| format!("`{signal}` is not a signal"))?;
    for p in procs {
        if !is_same(p) {
            continue;
        }
        match kill(Pid::from_raw(p.pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(format!("kill -{signal} {}: {e}", p.pid)),
        }
    }
    Ok(())
}

/// Waits until none of `procs` is alive (a stop's TERM/KILL took effect),
/// so a `start` right after does not race the old process for its port.
pub fn wait_gone(procs: &[ProcRef], limit: Duration) -> Result<(), String> {
    let until = Instant::now() + limit;
    loop {
        let alive: Vec<i32> = procs.iter().filter(|p| is_same(p)).map(|p| p.pid).collect();
        if alive.is_empty() {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!("processes {alive:?} still running {limit:?} after the signal"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stampede_own_processes_are_protected() {
        let me = std::process::id() as i32;
        assert!(protected(me).is_some());
        let parent = stat(me).unwrap().ppid;
        assert!(protected(parent).is_some());
        assert!(resolve(&Selector::Pid(me as u32)).unwrap_err().contains("this agent itself"));
        assert!(resolve(&Selector::Pid(1)).is_err());
    }
}
