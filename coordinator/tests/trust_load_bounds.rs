//! Issue 8, "trust under interruption and hostile input", item 10: absurd
//! load is refused before it is attempted. Validation caps the fleet-wide
//! numbers (see `standing.rs`); this pins the per-agent bound: an agent's
//! share must fit in the connections it can hold (its open-files limit).

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TCP target on 127.0.0.1 that only counts the connections it accepts.
fn counting_target() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if conn.is_ok() {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (port, count)
}

/// Item 10: a closed phase of 1 000 connections on two agents whose
/// open-files limit is 400 (144 connections after the reserve) was sent
/// out, and each agent tried to open 500 connections: the excess became
/// connect errors blamed on the server. Now the coordinator refuses it
/// after the split, before any assignment: exit 2, naming the agent, the
/// phase, what it needs and holds, and how many agents it would take.
#[test]
fn a_share_larger_than_an_agents_connection_limit_is_refused_before_any_load() {
    let dir = tempfile::tempdir().unwrap();
    let (port, accepted) = counting_target();
    let plan = dir.path().join("plan.yaml");
    let text = format!(
        "name: bounds\ntarget: http://127.0.0.1:{port}\nphases:\n  - {{ name: crowd, duration: 3s, load: {{ model: closed, concurrency: 1000 }} }}\nsteps:\n  - {{ name: get, request: {{ method: GET, path: / }} }}\n"
    );
    std::fs::write(&plan, text).unwrap();
    // `ulimit -n` in sh lowers both the soft and the hard limit, so the
    // in-process agents cannot raise it back: each declares 400 - 256 = 144.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -n 400 && exec \"$0\" \"$@\""]).arg(support::stampede());
    cmd.args(["run", plan.to_str().unwrap(), "--local-agents", "2", "--state-dir", dir.path().join("state").to_str().unwrap()]);
    cmd.current_dir(dir.path()).env("NO_COLOR", "1");
    let out = support::fleet::run_bounded(cmd, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}\nstderr:\n{stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("cannot hold its share of phase `crowd`: it would need 500 connections"), "{stderr}");
    assert!(stderr.contains("but can hold 144"), "{stderr}");
    assert!(stderr.contains("spread it over at least 7 agents or lower the concurrency"), "{stderr}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a request reached the target: {stderr}");
}
