//! The open-model pacer's numbers, end to end through the real binary.
//!
//! At 1 010 arrivals/s the pacer sleeps through responses: a response is
//! read when the worker wakes for the next arrival, up to 0.99 ms after it
//! came. Its latency must still end when it arrived (the kernel's receive
//! timestamp, `agent/src/rxstamp.rs`), not when it was read: against the
//! built-in target on loopback, which answers in about 0.1 ms, a latency
//! taken at the read would have a median near 0.9 ms.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `plan` (relative to the crate) on one in-process agent with one
/// worker and returns its report.json.
fn run_report(plan: &str) -> Value {
    let out = tempfile::tempdir().unwrap();
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join(plan);
    let output = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["run"])
        .arg(&plan)
        .args(["--local-agents", "1", "--workers", "1", "--out"])
        .arg(out.path())
        .output()
        .expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(out.path().join("report.json")).unwrap_or_else(|_| panic!("no report; stderr:\n{stderr}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn a_response_read_late_is_timed_at_its_arrival() {
    let r = run_report("tests/plans/open-1000.yaml");
    assert_eq!(r["totals"]["errors"], 0, "{}", r["totals"]);
    assert_eq!(r["totals"]["requests"], 2020, "{}", r["totals"]);
    let p50 = r["latency_ms"]["p50"].as_f64().unwrap();
    let service = r["service_ms"]["p50"].as_f64().unwrap();
    let schedule = &r["phases"][0]["schedule"];
    println!("latency p50 {p50} ms, service p50 {service} ms, schedule {schedule}");
    // Half the gap between arrivals: well above a loopback answer even on
    // a busy machine, well below what reading time would give.
    assert!(p50 < 0.5, "latency p50 {p50} ms: responses timed when read, not when they arrived (service p50 {service} ms)");
    assert!(service <= p50 + 0.01, "service p50 {service} ms above latency p50 {p50} ms");
    let lag = schedule["dispatch_lag_p50_ms"].as_f64().expect("dispatch_lag_p50_ms");
    assert!(lag < 0.5, "dispatch lag p50 {lag} ms");
}

/// With `batch_window: 2ms` at 4 000/s, about 8 arrivals share a wake-up,
/// started at the last one's instant: the first ~1.75 ms late, the last on
/// time. So the dispatch lag's median is near 0.9 ms, where the precise
/// pacer's is a few µs (a busy machine only adds lateness: the lower bound
/// holds), and every arrival is still sent and answered.
#[test]
fn a_batch_window_starts_arrivals_together_and_charges_their_lateness() {
    let r = run_report("tests/plans/open-batched.yaml");
    assert_eq!(r["totals"]["errors"], 0, "{}", r["totals"]);
    assert_eq!(r["totals"]["requests"], 4000, "{}", r["totals"]);
    let schedule = &r["phases"][0]["schedule"];
    let lag = schedule["dispatch_lag_p50_ms"].as_f64().expect("dispatch_lag_p50_ms");
    println!("schedule {schedule}, latency p50 {}", r["latency_ms"]["p50"]);
    assert!(lag >= 0.4, "dispatch lag p50 {lag} ms: the arrivals were not batched");
    assert_eq!(schedule["batch_window_ms"], 2.0, "the report names the window");
    let latency = r["latency_ms"]["p50"].as_f64().unwrap();
    assert!(latency >= lag, "latency p50 {latency} ms leaves out the dispatch lag p50 {lag} ms");
}

/// A keep-alive HTTP listener that answers every request with 200 and
/// notes when each connection was accepted and when the first request
/// bytes of the whole run arrived.
struct Watch {
    port: u16,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    first_request: std::sync::Arc<std::sync::OnceLock<std::time::Instant>>,
}

fn watch() -> Watch {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let first_request = std::sync::Arc::new(std::sync::OnceLock::new());
    let (acc, first) = (accepted.clone(), first_request.clone());
    // Ends with the test process (a detached thread blocked in accept).
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            acc.lock().unwrap().push(std::time::Instant::now());
            let first = first.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut tail = Vec::new();
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let _ = first.set(std::time::Instant::now());
                    tail.extend_from_slice(&buf[..n]);
                    while let Some(end) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
                        tail.drain(..end + 4);
                        if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Watch { port, accepted, first_request }
}

/// At 50 000/s a connect per early arrival put the pacer behind for good
/// (issue 11, item 1), so an open first phase opens its share of 1 ms of
/// arrivals (at most 64 a worker) before the start: at 3 000/s, 3 idle
/// connections are there before the first request is sent.
#[test]
fn an_open_first_phase_has_connections_before_its_start() {
    let target = watch();
    let out = tempfile::tempdir().unwrap();
    let plan = out.path().join("warm.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: warm\ntarget: http://127.0.0.1:{}\nphases:\n  - {{ name: hold, duration: 300ms, load: {{ model: open, rate: 3000/s }} }}\nsteps:\n  - {{ name: get, request: {{ method: GET, path: \"/\" }} }}\n",
            target.port
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_stampede"))
        .args(["run"])
        .arg(&plan)
        .args(["--local-agents", "1", "--workers", "1", "--out"])
        .arg(out.path().join("out"))
        .output()
        .expect("stampede runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let text = std::fs::read_to_string(out.path().join("out/report.json")).unwrap_or_else(|_| panic!("no report; stderr:\n{stderr}"));
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["totals"]["errors"], 0, "{}", r["totals"]);
    let first = *target.first_request.get().expect("a request reached the target");
    let accepted = target.accepted.lock().unwrap().clone();
    // Well before: not the connection a first request opened for itself
    // (accepted just before its bytes). Without the warm-up only the
    // coordinator's own check of the target comes that early.
    let early = first - std::time::Duration::from_millis(2);
    let before = accepted.iter().filter(|&&t| t < early).count();
    assert!(before >= 3, "{before} connections accepted 2 ms or more before the first request (of {}), want >= 3", accepted.len());
}
