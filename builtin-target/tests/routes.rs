//! Wire-level behaviour: keep-alive, routes, bodies, stats, shutdown.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{within, RawClient, STEP_TIMEOUT};
use stampede_target::{serve, serve_until, Behaviour, Stall, TargetStats};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn keep_alive_serves_two_requests_on_one_connection() {
    let target = serve(any_port(), Behaviour::default()).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for _ in 0..2 {
        let resp = client.get("/").await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"ok");
        assert_eq!(resp.header("content-length"), Some("2"));
        assert_eq!(
            resp.header("connection"),
            None,
            "keep-alive is the HTTP/1.1 default"
        );
    }
    // Pipelined: both requests in one write, both responses in order.
    client
        .send(b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /bytes/3 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await;
    assert_eq!(client.read_response(false).await.body, b"ok");
    assert_eq!(client.read_response(false).await.body, b"xxx");
    let stats = target.stats();
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.ok_2xx, 4);
    target.shutdown().await;
}

#[tokio::test]
async fn bytes_path_returns_n_bytes() {
    let target = serve(any_port(), Behaviour::default()).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    for n in [0usize, 5, 65_536, 200_000] {
        let resp = client.get(&format!("/bytes/{n}")).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), n);
        assert_eq!(resp.header("content-length"), Some(n.to_string().as_str()));
    }
    let bad = client.get("/bytes/lots").await;
    assert_eq!(bad.status, 400);
    // The connection survives the 400.
    assert_eq!(client.get("/bytes/1").await.body, b"x");
    let stats = target.stats();
    assert_eq!(
        (stats.requests, stats.ok_2xx, stats.client_errors_4xx),
        (6, 5, 1)
    );
    target.shutdown().await;
}

#[tokio::test]
async fn get_uses_body_size_and_uploads_are_discarded() {
    let behaviour = Behaviour {
        body_size: 1000,
        ..Default::default()
    };
    let target = serve(any_port(), behaviour).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    assert_eq!(client.get("/anything").await.body.len(), 1000);
    assert_eq!(
        client
            .request("HEAD", "/", b"")
            .await
            .header("content-length"),
        Some("1000")
    );
    let upload = vec![b'u'; 100_000];
    let post = client.request("POST", "/upload", &upload).await;
    assert_eq!((post.status, post.body.as_slice()), (200, &b"ok"[..]));
    // Chunked upload: must be fully consumed or the next request would be garbage.
    client
        .send(b"PUT /p HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(client.read_response(false).await.body, b"ok");
    assert_eq!(client.get("/again").await.body.len(), 1000);
    assert_eq!(target.stats().connections, 1);
    target.shutdown().await;
}

#[tokio::test]
async fn health_ignores_behaviour_and_is_counted_apart() {
    let behaviour = Behaviour {
        latency: Duration::from_secs(30),
        error_ratio: 1.0,
        stall: Some(Stall {
            every: Duration::from_secs(60),
            hold: Duration::from_secs(60),
        }),
        ..Default::default()
    };
    let target = serve(any_port(), behaviour).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    let started = Instant::now();
    let resp = client.get("/health").await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.starts_with(br#"{"ok": true, "queue": {"max": "#), "{:?}", String::from_utf8_lossy(&resp.body));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "health waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        target.stats(),
        TargetStats {
            health_checks: 1,
            connections: 1,
            ..Default::default()
        }
    );
    target.shutdown().await;
}

#[tokio::test]
async fn invalid_behaviour_is_rejected() {
    let bad = Behaviour {
        error_ratio: 2.0,
        ..Default::default()
    };
    let err = serve(any_port(), bad).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_closes_idle_and_busy_connections() {
    let behaviour = Behaviour {
        latency: Duration::from_secs(30),
        ..Default::default()
    };
    let target = serve(any_port(), behaviour).await.unwrap();
    let addr = target.local_addr;
    let mut idle = RawClient::connect(addr).await;
    assert_eq!(idle.get("/health").await.status, 200);
    let mut busy = RawClient::connect(addr).await;
    busy.send(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    within(STEP_TIMEOUT, "request to arrive", async {
        while target.stats().requests == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    let started = Instant::now();
    // The 30 s request cannot finish: shutdown must abort it after its grace period.
    within(Duration::from_secs(10), "shutdown", target.shutdown()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(
        idle.closed_within(STEP_TIMEOUT).await,
        "idle connection left open"
    );
    assert!(
        busy.closed_within(STEP_TIMEOUT).await,
        "busy connection left open"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let target = serve(any_port(), Behaviour::default()).await.unwrap();
    let addr = target.local_addr;
    drop(target);
    within(STEP_TIMEOUT, "listener to close", async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn serve_until_returns_when_its_future_completes() {
    // Port 0 hides the address from us, so reserve one then release it; a
    // clash with another process in between is possible but vanishingly rare.
    let addr = std::net::TcpListener::bind(any_port())
        .unwrap()
        .local_addr()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_until(addr, Behaviour::default(), async {
        let _ = rx.await;
    }));
    let mut client = within(STEP_TIMEOUT, "server to listen", async {
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
                drop(stream);
                break RawClient::connect(addr).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(client.get("/").await.status, 200);
    tx.send(()).unwrap();
    within(STEP_TIMEOUT, "serve_until", server)
        .await
        .unwrap()
        .unwrap();
    assert!(client.closed_within(STEP_TIMEOUT).await);
}
