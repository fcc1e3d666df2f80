//! Pressure helpers for real: the agent binary's hidden `stress` subcommand,
//! spawned and killed through the `Runner` as a fault would be. Figures come
//! from /proc, as an operator would read them.

use std::time::{Duration, Instant};

use stampede_agent::fault::{Action, Runner};

const AGENT: &str = env!("CARGO_BIN_EXE_stampede-agent");

fn spawn(runner: &Runner, tag: &str, args: &[&str]) -> i32 {
    let mut argv = vec![AGENT.to_string(), "stress".into()];
    argv.extend(args.iter().map(|s| s.to_string()));
    runner.execute(&Action::Spawn { argv, tag: tag.into() }).unwrap();
    // The helper leads its own process group: pgid == pid.
    runner.spawned_pgid(tag).unwrap()
}

/// Fields of /proc/PID/stat after the command name; None once gone.
fn stat(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z" && f[0] != "X")
}

/// utime + stime, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let f = stat(pid).expect("helper gone");
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// (on-CPU, waiting-for-a-CPU) nanoseconds, summed over the helper's threads.
fn sched_ns(pid: i32) -> (u64, u64) {
    let mut sum = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        let f: Vec<u64> = text.split_whitespace().map(|w| w.parse().unwrap()).collect();
        sum = (sum.0 + f[0], sum.1 + f[1]);
    }
    sum
}

fn clk_tck() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

fn vm_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn gone_within(pid: i32, limit: Duration) -> Duration {
    let t = Instant::now();
    while alive(pid) {
        assert!(t.elapsed() < limit, "helper {pid} still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

#[test]
fn cpu_helper_burns_its_share_of_one_core_and_dies_on_revert() {
    let runner = Runner::default();
    let pid = spawn(&runner, "t-cpu", &["cpu", "--workers", "1", "--load", "80", "--for", "3s"]);
    std::thread::sleep(Duration::from_millis(300));
    let (t0, c0, s0) = (Instant::now(), cpu_ticks(pid), sched_ns(pid));
    std::thread::sleep(Duration::from_secs(1));
    let (wall, c1, s1) = (t0.elapsed().as_secs_f64(), cpu_ticks(pid), sched_ns(pid));
    let share = (c1 - c0) as f64 / clk_tck() / wall;
    // What the helper asked for: time running plus time runnable but waiting
    // for a core. It is the load setting whatever else runs on the node.
    let waiting = (s1.1 - s0.1) as f64 / 1e9 / wall;
    let demand = (s1.0 - s0.0) as f64 / 1e9 / wall + waiting;
    eprintln!("cpu helper --load 80: {:.0}% of one core (/proc/PID/stat); wanted {:.0}%, waited {:.0}% for a core", share * 100.0, demand * 100.0, waiting * 100.0);
    assert!((0.5..=1.05).contains(&demand), "the helper wanted {demand:.2} of a core, not ~0.8");
    if waiting < 0.1 {
        assert!((0.5..=1.0).contains(&share), "cpu share {share:.2} outside 50–100 %");
    } else {
        // Other work saturates the cores (a parallel build): the kernel gives
        // the helper its fair share only, which is all a real fault gets too.
        assert!(share > 0.05 && share <= 1.0, "cpu share {share:.2}");
        eprintln!("(cores contended: the 50–100 % bound applies only on an idle node)");
    }

    runner.execute(&Action::KillSpawned { tag: "t-cpu".into() }).unwrap();
    let took = gone_within(pid, Duration::from_secs(1));
    eprintln!("cpu helper gone {took:?} after revert");
}

#[test]
fn memory_helper_holds_resident_memory_and_dies_on_revert() {
    let runner = Runner::default();
    let pid = spawn(&runner, "t-mem", &["memory", "--size", "64MiB", "--for", "10s"]);
    let t = Instant::now();
    let mut rss = 0;
    while t.elapsed() < Duration::from_secs(5) {
        rss = vm_rss_kib(pid);
        if rss >= 60 * 1024 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("memory helper --size 64MiB: VmRSS {:.1} MiB after {:?}", rss as f64 / 1024.0, t.elapsed());
    assert!(rss >= 60 * 1024, "VmRSS {rss} KiB < 60 MiB");
    // It raised its own OOM score so the kernel takes it before anything else.
    let adj = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(adj.trim(), "1000");

    runner.execute(&Action::KillSpawned { tag: "t-mem".into() }).unwrap();
    let took = gone_within(pid, Duration::from_secs(1));
    eprintln!("memory helper gone {took:?} after revert");
    // Reverting again is a no-op.
    runner.execute(&Action::KillSpawned { tag: "t-mem".into() }).unwrap();
}

#[test]
fn helper_exits_by_itself_when_nobody_reverts() {
    // The dead-man switch: no KillSpawned is ever sent. A memory helper, so
    // that it does not compete for the cores the cpu test measures.
    let runner = Runner::default();
    let started = Instant::now();
    let pid = spawn(&runner, "t-deadman", &["memory", "--size", "1MiB", "--for", "1s"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(pid), "helper died before its deadline");
    gone_within(pid, Duration::from_millis(2200));
    let lived = started.elapsed();
    eprintln!("dead-man helper (--for 1s) exited on its own after {lived:?}");
    assert!(lived >= Duration::from_secs(1), "{lived:?}");
}

#[test]
fn bad_stress_arguments_are_refused() {
    for args in [&["cpu", "--load", "0", "--for", "1s"][..], &["cpu", "--for", "10"], &["memory", "--size", "lots", "--for", "1s"], &["memory", "--for", "1s"]] {
        let out = std::process::Command::new(AGENT).arg("stress").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} should be a usage error");
    }
    // The subcommand is hidden from the help a user reads.
    let help = std::process::Command::new(AGENT).arg("--help").output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("stress"));
}
