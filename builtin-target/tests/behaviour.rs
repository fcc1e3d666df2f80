//! Injected behaviour seen from the wire: error ratio, latency, stalls.
//!
//! Timing assertions are written to hold on a loaded machine: lower bounds are
//! exact (the server cannot answer before its deadline, and it learns of a request
//! only after we sent it), and "not delayed" checks retry and allow wide margins.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::RawClient;
use stampede_target::{serve, Behaviour, Stall};

const MS: Duration = Duration::from_millis(1);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn error_ratio_one_answers_every_request_500() {
    let target = serve(
        any_port(),
        Behaviour {
            error_ratio: 1.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for _ in 0..50 {
        let resp = client.get("/").await;
        assert_eq!((resp.status, resp.body.as_slice()), (500, &b"error"[..]));
    }
    let stats = target.stats();
    assert_eq!(
        (stats.requests, stats.errors_500, stats.ok_2xx),
        (50, 50, 0)
    );
    target.shutdown().await;
}

#[tokio::test]
async fn error_ratio_zero_answers_no_500() {
    let target = serve(
        any_port(),
        Behaviour {
            error_ratio: 0.0,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for _ in 0..50 {
        assert_eq!(client.get("/").await.status, 200);
    }
    let stats = target.stats();
    assert_eq!(
        (stats.requests, stats.errors_500, stats.ok_2xx),
        (50, 0, 50)
    );
    target.shutdown().await;
}

#[tokio::test]
async fn error_ratio_half_mixes_statuses() {
    let target = serve(
        any_port(),
        Behaviour {
            error_ratio: 0.5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for _ in 0..200 {
        client.get("/").await;
    }
    // P(all 200 draws on one side) = 2^-199: not a flake source.
    let stats = target.stats();
    assert!(stats.errors_500 > 0 && stats.ok_2xx > 0, "{stats:?}");
    assert_eq!(stats.errors_500 + stats.ok_2xx, 200);
    target.shutdown().await;
}

#[tokio::test]
async fn fixed_latency_is_a_lower_bound() {
    let target = serve(
        any_port(),
        Behaviour {
            latency: 100 * MS,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for _ in 0..3 {
        let sent = Instant::now();
        assert_eq!(client.get("/").await.status, 200);
        let took = sent.elapsed();
        assert!(took >= 100 * MS, "answered after {took:?}");
        assert!(took < 5000 * MS, "answered after {took:?}");
    }
    target.shutdown().await;
}

#[tokio::test]
async fn random_latency_stays_within_range() {
    let behaviour = Behaviour {
        latency: 30 * MS,
        latency_max: Some(80 * MS),
        ..Default::default()
    };
    let target = serve(any_port(), behaviour).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for _ in 0..5 {
        let sent = Instant::now();
        client.get("/").await;
        let took = sent.elapsed();
        // Upper bound only catches gross errors (e.g. seconds instead of ms).
        assert!(
            took >= 30 * MS && took < 5000 * MS,
            "answered after {took:?}"
        );
    }
    target.shutdown().await;
}

/// Start of the first stall window that begins at or after `now`.
fn next_window(started: Instant, every: Duration, now: Instant) -> Instant {
    let since = now.duration_since(started).as_nanos();
    let every_ns = every.as_nanos();
    let k = since.div_ceil(every_ns);
    started + Duration::from_nanos(u64::try_from(k * every_ns).unwrap())
}

#[tokio::test]
async fn stall_holds_requests_arriving_inside_until_its_end() {
    let stall = Stall {
        every: 400 * MS,
        hold: 200 * MS,
    };
    let target = serve(
        any_port(),
        Behaviour {
            stall: Some(stall),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let started = target.started_at();
    // Connect first so connection setup is not part of any measurement.
    let mut client = RawClient::connect(target.local_addr).await;

    // Inside a stall: aim 50 ms into a window. If the scheduler makes us miss the
    // stall, the attempt proves nothing, so retry; a hit gives an exact bound.
    let mut checked_inside = false;
    for _ in 0..5 {
        let window = next_window(started, stall.every, Instant::now());
        tokio::time::sleep_until((window + 50 * MS).into()).await;
        let sent = Instant::now();
        let since_window = sent.duration_since(window);
        assert_eq!(client.get("/").await.status, 200);
        let answered = Instant::now();
        if since_window >= stall.hold {
            continue;
        }
        let stall_end = window + stall.hold;
        // Exact: the server saw the request no earlier than `sent`, inside this stall.
        assert!(
            answered >= stall_end,
            "answered {:?} before the stall ended",
            stall_end - answered
        );
        assert!(
            answered - stall_end < 2000 * MS,
            "held {:?} past the stall",
            answered - stall_end
        );
        checked_inside = true;
        break;
    }
    assert!(
        checked_inside,
        "never managed to send a request inside a stall"
    );

    // Outside a stall: aim 20 ms after a stall ends, leaving 180 ms before the
    // next one. Any attempt answered well under a stall's length passes.
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let window = next_window(started, stall.every, Instant::now());
        tokio::time::sleep_until((window + stall.hold + 20 * MS).into()).await;
        let sent = Instant::now();
        assert_eq!(client.get("/").await.status, 200);
        best = best.min(sent.elapsed());
        if best < 100 * MS {
            break;
        }
    }
    assert!(
        best < 100 * MS,
        "requests outside stalls were delayed, best {best:?}"
    );
    target.shutdown().await;
}

#[tokio::test]
async fn require_header_answers_401_without_the_exact_value() {
    let behaviour = Behaviour {
        require_header: Some(stampede_target::RequireHeader { name: "authorization".into(), value: b"Bearer t0k3n".to_vec() }),
        ..Default::default()
    };
    // Its Debug never shows the value.
    assert!(!format!("{behaviour:?}").contains("t0k3n"));
    let target = serve(any_port(), behaviour).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    assert_eq!(client.get("/items/1").await.status, 401);
    client.send(b"GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n").await;
    assert_eq!(client.read_response(false).await.status, 401);
    client.send(b"GET /items/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0k3n\r\n\r\n").await;
    assert_eq!(client.read_response(false).await.status, 200);
    // /health answers whatever the header.
    assert_eq!(client.get("/health").await.status, 200);
    let stats = target.stats();
    assert_eq!((stats.requests, stats.client_errors_4xx, stats.ok_2xx), (3, 2, 1));
    target.shutdown().await;
}
