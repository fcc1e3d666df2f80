//! Outage windows seen from the wire: a status window, a stall window and a
//! refuse window, each from the target's start, and `/health` following them.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{within, RawClient, STEP_TIMEOUT};
use stampede_target::{serve, Behaviour, Window, WindowAction};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn window(at_ms: u64, for_ms: u64, action: WindowAction) -> Behaviour {
    Behaviour { windows: vec![Window { at: Duration::from_millis(at_ms), length: Duration::from_millis(for_ms), action }], ..Default::default() }
}

#[tokio::test]
async fn a_status_window_answers_its_status_and_health_says_not_ok_until_it_ends() {
    let target = serve(any_port(), window(0, 1500, WindowAction::Status(503))).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    // Well inside the window (it started with the target, a moment ago).
    let resp = client.get("/").await;
    assert_eq!(resp.status, 503);
    let health = client.get("/health").await;
    assert_eq!((health.status, health.body.as_slice()), (503, &br#"{"ok": false}"#[..]));
    let end = target.started_at() + Duration::from_millis(1500);
    tokio::time::sleep_until(end.into()).await;
    assert_eq!(client.get("/").await.status, 200);
    let health = client.get("/health").await;
    assert_eq!(health.status, 200);
    assert!(health.body.starts_with(br#"{"ok": true"#), "{:?}", String::from_utf8_lossy(&health.body));
    target.shutdown().await;
}

#[tokio::test]
async fn a_stall_window_holds_requests_until_it_ends_and_health_stays_ok() {
    let target = serve(any_port(), window(0, 800, WindowAction::Stall)).await.unwrap();
    let end = target.started_at() + Duration::from_millis(800);
    let mut client = RawClient::connect(target.local_addr).await;
    let health = client.get("/health").await;
    assert_eq!(health.status, 200, "a stall is not an outage the service reports");
    let resp = client.get("/").await;
    assert_eq!(resp.status, 200);
    assert!(Instant::now() >= end, "answered {:?} before the stall window ended", end - Instant::now());
    target.shutdown().await;
}

#[tokio::test]
async fn a_refuse_window_closes_connections_unanswered_then_serves_again() {
    let target = serve(any_port(), window(0, 1500, WindowAction::Refuse)).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    client.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert!(client.closed_within(STEP_TIMEOUT).await, "the connection stayed open in a refuse window");
    let end = target.started_at() + Duration::from_millis(1500);
    tokio::time::sleep_until(end.into()).await;
    let mut client = within(STEP_TIMEOUT, "reconnect", RawClient::connect(target.local_addr)).await;
    assert_eq!(client.get("/").await.status, 200);
    target.shutdown().await;
}
