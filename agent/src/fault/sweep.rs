//! `stampede-agent sweep`: removes everything stampede left on this node,
//! for an operator cleaning up after a crash the agent could not recover
//! from by itself (the agent is gone for good, its host was rebooted, the
//! state dir was lost):
//!
//! 1. every fault still pending in the journal of `--state-dir` is reverted
//!    with the exact actions journaled for it (and marked reverted);
//! 2. every nftables table `inet stampede_*` is deleted;
//! 3. stampede's root qdisc (handle [`ROOT_HANDLE`]) is deleted from every
//!    device that has one;
//!    An ingress fault's plumbing goes too: the ingress qdisc of any device
//!    whose ingress filters redirect to a `stpifb*` device, then every
//!    `stpifb*` ifb device (in that order: no packet is ever redirected to
//!    a device that is gone);
//! 4. pressure helpers (`…/stampede stress …`, `…/stampede-agent stress …`)
//!    still running are SIGKILLed, by their positive pid;
//! 5. the capability probe's throwaway network namespaces
//!    (`stp-probe-<pid>-<n>`) older than a minute (`--probe-min-age`) are deleted (an agent
//!    killed in the middle of its start-up probe leaves one; a probe lasts
//!    under 1.5 s). Age, not "is `<pid>` alive": a sweep run inside a pid
//!    namespace cannot see the agent that is probing right now.
//!
//! Only what stampede owns is touched: tables of other names or families,
//! qdiscs with other handles and other processes are left alone (the
//! parsers below are pure and tested on mixed input). `--dry-run` prints
//! what would be removed and changes nothing (it does not even create the
//! state dir or the journal).

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::action::{Action, Runner};
use super::injector::revert_all;
use super::journal::Journal;
use super::net::{IFB_PREFIX, ROOT_HANDLE, TREE_GONE};
use super::nft;

/// The journal's file name inside the state dir (as [`Journal::open`] names
/// it); checked first so that a sweep never creates a state dir or journal.
const JOURNAL_FILE: &str = "faults.journal";

/// What a sweep did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// One line per thing removed (or that would be removed).
    pub removed: Vec<String>,
    /// One line per thing that could not be checked or removed.
    pub failed: Vec<String>,
}

/// The devices where `tc qdisc show` lists stampede's root qdisc
/// (`qdisc prio 5ea7: dev eth0 root refcnt 2 …`). Qdiscs with another
/// handle, and stampede's handle anywhere but at the root, are skipped.
pub fn stampede_qdisc_devs(tc_qdisc_show: &str) -> Vec<String> {
    let mut devs: Vec<String> = Vec::new();
    for line in tc_qdisc_show.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [first, _kind, handle, rest @ ..] = &words[..] else { continue };
        if *first != "qdisc" || *handle != ROOT_HANDLE || !rest.contains(&"root") {
            continue;
        }
        let dev = rest.iter().position(|w| *w == "dev").and_then(|i| rest.get(i + 1));
        if let Some(dev) = dev {
            if !devs.iter().any(|d| d == dev) {
                devs.push(dev.to_string());
            }
        }
    }
    devs
}

/// Devices with an ingress qdisc (`qdisc ingress ffff: dev eth1 parent ffff:fff1`).
pub fn ingress_devs(tc_qdisc_show: &str) -> Vec<String> {
    let mut devs: Vec<String> = Vec::new();
    for line in tc_qdisc_show.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["qdisc", "ingress", "ffff:", "dev", dev, ..] = words[..] {
            if !devs.iter().any(|d| d == dev) {
                devs.push(dev.to_string());
            }
        }
    }
    devs
}

/// stampede's ifb devices in `ip -o link show` (`12: stpifb1a2b3c4d: <…>`).
pub fn stampede_ifbs(ip_o_link: &str) -> Vec<String> {
    ip_o_link
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches(':').split('@').next().unwrap_or_default())
        .filter(|n| n.starts_with(IFB_PREFIX))
        .map(str::to_string)
        .collect()
}

/// What deletes stampede's tree on `dev`; "already gone" counts as done.
pub fn qdisc_delete(dev: &str) -> Action {
    Action::run_ok_if(&["tc", "qdisc", "del", "dev", dev, "root", "handle", ROOT_HANDLE], &TREE_GONE)
}

/// Whether a `/proc/PID/cmdline` (NUL-separated arguments) is a pressure
/// helper: `stampede` or `stampede-agent` (a bare name or a path ending in
/// one) with `stress` as its first argument.
pub fn is_pressure_helper(cmdline: &[u8]) -> bool {
    let mut args = cmdline.split(|b| *b == 0);
    let (Some(exe), Some(sub)) = (args.next(), args.next()) else { return false };
    let name = exe.rsplit(|b| *b == b'/').next().unwrap_or_default();
    (name == b"stampede" || name == b"stampede-agent") && sub == b"stress"
}

/// A command line for display: arguments joined by spaces.
fn cmdline_text(cmdline: &[u8]) -> String {
    let args: Vec<String> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    args.join(" ")
}

/// Pressure helpers running now: (pid, command line).
pub fn pressure_helpers() -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found: Vec<(i32, String)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid > 1 && *pid != me)
        .filter_map(|pid| {
            // A zombie's cmdline is empty: it is dead already and not matched.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            is_pressure_helper(&cmdline).then(|| (pid, cmdline_text(&cmdline)))
        })
        .collect();
    found.sort();
    found
}

/// Runs a listing command; `Ok(None)` when the tool is not installed (so
/// nothing of ours can exist), `Err` when it is there but failed.
fn list(argv: &[&str]) -> Result<Option<String>, String> {
    match Command::new(argv[0]).args(&argv[1..]).output() {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot run `{}`: {e}", argv.join(" "))),
        Ok(out) if out.status.success() => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Ok(out) => Err(format!("`{}` failed: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// SIGKILL to one positive pid; a process already gone counts as done.
fn kill_pid(pid: i32) -> Result<(), String> {
    if pid <= 1 {
        return Err(format!("refusing to signal pid {pid}"));
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sweeps this node (see the module docs). Never panics on a missing tool
/// or permission: those become `failed` lines.
pub fn sweep(state_dir: &Path, dry_run: bool, runner: &Runner, probe_min_age: Duration) -> Swept {
    let mut s = Swept::default();
    // The directory's journal and its siblings' (`DIR-2` …: agents that
    // found DIR held by another live agent journal there, journal.rs).
    let killed_groups: Vec<i32> = Journal::dirs_beside(state_dir).flat_map(|dir| sweep_journal(&dir, dry_run, runner, &mut s)).collect();
    sweep_tables(dry_run, runner, &mut s);
    sweep_qdiscs(dry_run, runner, &mut s);
    sweep_ingress(dry_run, runner, &mut s);
    sweep_helpers(dry_run, &killed_groups, &mut s);
    sweep_probe_namespaces(dry_run, runner, probe_min_age, &mut s);
    s
}

fn verb(dry_run: bool, did: &str, would: &str) -> String {
    if dry_run { would.to_string() } else { did.to_string() }
}

/// Step 1, the journal: exact reverts of what an agent applied and never
/// undid. Returns the pressure helpers' process groups the reverts killed.
fn sweep_journal(state_dir: &Path, dry_run: bool, runner: &Runner, s: &mut Swept) -> Vec<i32> {
    let mut killed_groups = Vec::new();
    if !state_dir.join(JOURNAL_FILE).exists() {
        return killed_groups;
    }
    let (journal, pending) = match Journal::open(state_dir).and_then(|j| j.pending().map(|p| (j, p))) {
        Ok(found) => found,
        Err(e) => {
            s.failed.push(format!("cannot read the fault journal in {}: {e}", state_dir.display()));
            return killed_groups;
        }
    };
    for p in pending {
        let what = format!("fault {} ({}) of run {} from the journal", p.entry.fault, p.entry.kind, p.entry.run_id);
        let commands: Vec<String> = p.entry.revert.iter().map(Action::display).collect();
        if dry_run {
            s.removed.push(format!("would revert {what}: {}", commands.join("; ")));
            continue;
        }
        for (tag, pgid) in &p.spawned {
            // Only if the group leader is still a pressure helper: after a
            // reboot the number may belong to anything.
            let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
            if is_pressure_helper(&cmdline) {
                runner.adopt(tag, *pgid);
                killed_groups.push(*pgid);
            }
        }
        for (tag, procs) in &p.signalled {
            runner.adopt_procs(tag, procs.clone());
        }
        match revert_all(runner, &p.entry.revert) {
            Ok(()) => {
                if let Err(e) = journal.record_reverted(&p.entry.id) {
                    s.failed.push(format!("reverted {what} but could not journal it: {e}"));
                }
                s.removed.push(format!("reverted {what}: {}", commands.join("; ")));
            }
            Err(e) => s.failed.push(format!("could not revert {what}: {e}")),
        }
    }
    if !dry_run {
        let _ = journal.compact();
    }
    killed_groups
}

/// Step 2: nftables tables `inet stampede_*`.
fn sweep_tables(dry_run: bool, runner: &Runner, s: &mut Swept) {
    let listed = match list(&["nft", "list", "tables"]) {
        Ok(Some(listed)) => listed,
        Ok(None) => return,
        Err(e) => return s.failed.push(format!("cannot list nftables tables: {e}")),
    };
    for table in nft::stampede_tables(&listed) {
        let Some(action) = nft::sweep_actions(std::slice::from_ref(&table)).pop() else { continue };
        let line = format!("{} nft table inet {table}", verb(dry_run, "deleted", "would delete"));
        if dry_run {
            s.removed.push(line);
            continue;
        }
        match runner.execute(&action) {
            Ok(()) => s.removed.push(line),
            Err(e) => s.failed.push(format!("could not delete nft table inet {table}: {e}")),
        }
    }
}

/// Step 3: stampede's root qdisc, on any device.
fn sweep_qdiscs(dry_run: bool, runner: &Runner, s: &mut Swept) {
    let listed = match list(&["tc", "qdisc", "show"]) {
        Ok(Some(listed)) => listed,
        Ok(None) => return,
        Err(e) => return s.failed.push(format!("cannot list qdiscs: {e}")),
    };
    for dev in stampede_qdisc_devs(&listed) {
        let line = format!("{} qdisc {ROOT_HANDLE} (root) on dev {dev}", verb(dry_run, "deleted", "would delete"));
        if dry_run {
            s.removed.push(line);
            continue;
        }
        match runner.execute(&qdisc_delete(&dev)) {
            Ok(()) => s.removed.push(line),
            Err(e) => s.failed.push(format!("could not delete qdisc {ROOT_HANDLE} on dev {dev}: {e}")),
        }
    }
}

/// Step 3, ingress: redirects to stampede's ifb devices, then the devices.
fn sweep_ingress(dry_run: bool, runner: &Runner, s: &mut Swept) {
    let (Ok(Some(qdiscs)), Ok(Some(links))) = (list(&["tc", "qdisc", "show"]), list(&["ip", "-o", "link", "show"])) else { return };
    for dev in ingress_devs(&qdiscs) {
        // Only an ingress qdisc that redirects to one of ours is ours.
        let Ok(Some(filters)) = list(&["tc", "filter", "show", "dev", &dev, "ingress"]) else { continue };
        if !filters.contains(IFB_PREFIX) {
            continue;
        }
        let line = format!("{} ingress qdisc on dev {dev} (redirecting to a stampede ifb)", verb(dry_run, "deleted", "would delete"));
        if dry_run {
            s.removed.push(line);
            continue;
        }
        match runner.execute(&Action::run_ok_if(&["tc", "qdisc", "del", "dev", &dev, "handle", "ffff:", "ingress"], &TREE_GONE)) {
            Ok(()) => s.removed.push(line),
            Err(e) => s.failed.push(format!("could not delete the ingress qdisc on dev {dev}: {e}")),
        }
    }
    for ifb in stampede_ifbs(&links) {
        let line = format!("{} ifb device {ifb}", verb(dry_run, "deleted", "would delete"));
        if dry_run {
            s.removed.push(line);
            continue;
        }
        match runner.execute(&Action::run_ok_if(&["ip", "link", "del", &ifb], &["Cannot find device"])) {
            Ok(()) => s.removed.push(line),
            Err(e) => s.failed.push(format!("could not delete ifb device {ifb}: {e}")),
        }
    }
}

/// Step 4: pressure helpers nobody killed (`already` were, by the journal step).
fn sweep_helpers(dry_run: bool, already: &[i32], s: &mut Swept) {
    for (pid, cmdline) in pressure_helpers() {
        if already.contains(&pid) {
            continue;
        }
        let line = format!("{} pressure helper pid {pid}: {cmdline}", verb(dry_run, "killed", "would kill"));
        if dry_run {
            s.removed.push(line);
            continue;
        }
        match kill_pid(pid) {
            Ok(()) => s.removed.push(line),
            Err(e) => s.failed.push(format!("could not kill pressure helper pid {pid}: {e}")),
        }
    }
}

/// The probe's namespaces in an `ip netns list` listing, with the pid of the
/// agent that made each (`stp-probe-<pid>-<n>`, possibly followed by
/// `(id: N)`). Any other name is not ours.
pub fn probe_namespaces(ip_netns_list: &str) -> Vec<(String, i32)> {
    ip_netns_list
        .lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?;
            let (pid, n) = name.strip_prefix(super::probe::PROBE_NETNS_PREFIX)?.split_once('-')?;
            n.parse::<u32>().ok()?;
            Some((name.to_string(), pid.parse::<i32>().ok().filter(|p| *p > 0)?))
        })
        .collect()
}

/// A probe namespace younger than this may be in use.
pub const PROBE_NETNS_MIN_AGE: Duration = Duration::from_secs(60);

/// Probe namespaces old enough that no probe can be using them:
/// (name, pid of the agent that made it).
pub fn stale_probe_namespaces(min_age: Duration) -> Result<Vec<(String, i32)>, String> {
    let listed = list(&["ip", "netns", "list"])?.unwrap_or_default();
    Ok(probe_namespaces(&listed)
        .into_iter()
        .filter(|(name, _)| {
            // `ip netns add` makes /run/netns/NAME when it creates the namespace.
            let age = std::fs::metadata(format!("/run/netns/{name}")).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            age.is_some_and(|a| a >= min_age)
        })
        .collect())
}

/// Step 5: the probe namespaces nobody is using any more.
fn sweep_probe_namespaces(dry_run: bool, runner: &Runner, min_age: Duration, s: &mut Swept) {
    let stale = match stale_probe_namespaces(min_age) {
        Ok(stale) => stale,
        Err(e) => return s.failed.push(format!("cannot list network namespaces: {e}")),
    };
    for (name, pid) in stale {
        let line = format!("{} probe namespace {name} (left by agent pid {pid})", verb(dry_run, "deleted", "would delete"));
        if dry_run {
            s.removed.push(line);
            continue;
        }
        match runner.execute(&Action::run(&["ip", "netns", "del", &name])) {
            Ok(()) => s.removed.push(line),
            Err(e) => s.failed.push(format!("could not delete probe namespace {name}: {e}")),
        }
    }
}

/// `stampede-agent sweep`: prints one line per removed thing (or "nothing to
/// sweep") and each failure on stderr; the exit code is 0, or 1 when
/// something could not be checked or removed.
pub fn main(state_dir: &Path, dry_run: bool, probe_min_age: Duration) -> i32 {
    let s = sweep(state_dir, dry_run, &Runner::default(), probe_min_age);
    if s.removed.is_empty() && s.failed.is_empty() {
        println!("nothing to sweep");
    }
    for line in &s.removed {
        println!("{line}");
    }
    for line in &s.failed {
        eprintln!("error: {line}");
    }
    if s.failed.is_empty() {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingress_parsers_find_only_stampede_plumbing() {
        let qdiscs = "qdisc noqueue 0: dev lo root refcnt 2\nqdisc ingress ffff: dev eth0 parent ffff:fff1 ----------------\nqdisc ingress ffff: dev op-a parent ffff:fff1 ----------------\nqdisc htb 5ea7: dev stpifb0badcafe root refcnt 2\n";
        assert_eq!(ingress_devs(qdiscs), ["eth0", "op-a"]);
        let links = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536\n7: stpifb0badcafe: <BROADCAST,NOARP,UP,LOWER_UP> mtu 1500\n8: ifb0: <BROADCAST,NOARP> mtu 1500\n9: veth1@if10: <BROADCAST> mtu 1500\n";
        assert_eq!(stampede_ifbs(links), ["stpifb0badcafe"]);
    }

    #[test]
    fn probe_namespace_parser_finds_only_the_probes() {
        let listed = "stp-probe-4242-0 (id: 7)\nstp-probe-17-3\nstpf99-0-agent1 (id: 2)\nstp-probe-x-1\nstp-probe-5\nprod-ns\n";
        assert_eq!(probe_namespaces(listed), [("stp-probe-4242-0".to_string(), 4242), ("stp-probe-17-3".to_string(), 17)]);
        assert!(probe_namespaces("").is_empty());
    }

    #[test]
    fn qdisc_parser_finds_only_stampede_roots() {
        let shown = "\
qdisc noqueue 0: dev lo root refcnt 2 
qdisc prio 5ea7: dev eth0 root refcnt 2 bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1
qdisc netem 5ea8: dev eth0 parent 5ea7:4 limit 1000 delay 200ms  20ms loss 1%
qdisc htb 5ea7: dev veth-a root refcnt 2 r2q 10 default 0 direct_packets_stat 0 direct_qlen 1000
qdisc htb 1: dev veth-b root refcnt 2 r2q 10 default 0x30 direct_packets_stat 0 direct_qlen 1000
qdisc fq_codel 0: dev veth-b parent 1:10 limit 10240p flows 1024 quantum 1514
qdisc tbf 5ea7: dev veth-c parent 1:1 rate 1Mbit burst 16Kb lat 50ms
qdisc ingress ffff: dev eth1 parent ffff:fff1 ----------------
qdisc pfifo_fast 0: dev eth1 root refcnt 2 bands 3 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1
qdisc prio 5ea77: dev eth2 root refcnt 2 bands 3
";
        // The operator's `1:` htb, the default roots, ingress, a 5ea7: that is
        // not a root and a longer handle that only starts like ours: untouched.
        assert_eq!(stampede_qdisc_devs(shown), ["eth0", "veth-a"]);
        assert!(stampede_qdisc_devs("").is_empty());
        assert_eq!(qdisc_delete("eth0").display(), "tc qdisc del dev eth0 root handle 5ea7:");
    }

    /// A `/proc/PID/cmdline`: each argument followed by a NUL.
    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn helper_parser_matches_only_stampede_stress() {
        let yes: [&[&str]; 5] = [
            &["/usr/local/bin/stampede-agent", "stress", "cpu", "--workers", "2", "--for", "15s"],
            &["/work/target/debug/stampede", "stress", "memory", "--size", "64MiB", "--for", "5s"],
            &["stampede-agent", "stress", "cpu"],
            &["./stampede", "stress"],
            &["/opt/stampede/bin/stampede", "stress", "cpu", "--for", "1s"],
        ];
        for c in yes {
            assert!(is_pressure_helper(&cmdline(c)), "{c:?}");
        }
        let no: [&[&str]; 9] = [
            &["stress", "--cpu", "2"], // the operator's stress(1)
            &["/usr/bin/stress-ng", "--cpu", "4"],
            &["/usr/local/bin/stampede-agent", "--coordinator", "http://c:7000"], // an agent
            &["/usr/local/bin/stampede-agent", "sweep"], // this command
            &["/usr/bin/notstampede", "stress", "cpu"],
            &["/usr/bin/stampede-agent-old", "stress"],
            &["/bin/sh", "-c", "stampede stress cpu"],
            &[], // a zombie
            &["/usr/bin/stampede"],
        ];
        for c in no {
            assert!(!is_pressure_helper(&cmdline(c)), "{c:?}");
        }
        assert_eq!(cmdline_text(&cmdline(&["/x/stampede", "stress", "cpu"])), "/x/stampede stress cpu");
    }

    #[test]
    fn journal_file_name_matches_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.path(), dir.path().join(JOURNAL_FILE));
    }

    /// Only the journal step: the others act on the whole node, where other
    /// tests may own tables and helpers right now (`coordinator/tests/crash_sweep.rs`
    /// runs the whole sweep in throwaway namespaces).
    #[test]
    fn journal_step_dry_run_touches_nothing_then_reverts_once() {
        use super::super::journal::Entry;
        let journal_lines = |dir: &Path, dry_run: bool| {
            let mut s = Swept::default();
            sweep_journal(dir, dry_run, &Runner::default(), &mut s);
            assert!(s.failed.is_empty(), "{s:?}");
            s.removed
        };
        let dir = tempfile::tempdir().unwrap();
        // No journal: nothing is created.
        let missing = dir.path().join("never");
        assert!(journal_lines(&missing, true).is_empty());
        assert!(journal_lines(&missing, false).is_empty());
        assert!(!missing.exists());

        let marker = dir.path().join("reverted");
        let j = Journal::open(dir.path()).unwrap();
        let entry = Entry {
            id: "r1/f1".into(),
            run_id: "r1".into(),
            fault: "f1".into(),
            kind: "partition".into(),
            revert: vec![Action::run(&["touch", marker.to_str().unwrap()])],
            deadline_unix_ms: 1,
        };
        j.record_apply(&entry).unwrap();
        let want = format!("fault f1 (partition) of run r1 from the journal: touch {}", marker.display());
        assert_eq!(journal_lines(dir.path(), true), [format!("would revert {want}")]);
        assert!(!marker.exists(), "a dry run ran the revert");
        assert_eq!(j.pending().unwrap().len(), 1);

        // For real: the revert runs once and the journal says so.
        assert_eq!(journal_lines(dir.path(), false), [format!("reverted {want}")]);
        assert!(marker.exists());
        assert!(j.pending().unwrap().is_empty());
        assert!(journal_lines(dir.path(), false).is_empty());
    }
}
