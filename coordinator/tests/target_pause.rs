//! The built-in target's `after_pause`: a real `stampede target` process,
//! stopped (SIGSTOP, as a process fault stops it) and resumed, answers the
//! configured status for the configured time after resuming, then recovers.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::Procs;

/// One `GET path` on a fresh connection; the status code.
fn status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[test]
fn a_paused_target_answers_its_after_pause_status_for_its_length_then_recovers() {
    let mut procs = Procs::new();
    let addr = procs.target("target", &["--after-pause", "2s:503"]);
    assert_eq!(status(addr, "/"), 200, "healthy before any pause");
    let pid = procs.pid("target");
    signal(pid, "-STOP");
    std::thread::sleep(Duration::from_millis(1800));
    signal(pid, "-CONT");
    let resumed = Instant::now();
    // The ticker notices the jump within a tick of resuming.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(status(addr, "/"), 503, "recovering after the pause; log:\n{}", procs.log("target"));
    assert_eq!(status(addr, "/health"), 503);
    std::thread::sleep(Duration::from_millis(2300).saturating_sub(resumed.elapsed()));
    assert_eq!(status(addr, "/"), 200, "recovered 2 s after resuming");
    assert_eq!(status(addr, "/health"), 200);
}
