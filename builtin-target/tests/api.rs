//! The login/token/cookie and job API: each endpoint, its 401s and 404s, the
//! `jobs` knob, and the counters tests assert on.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{RawClient, RawResponse};
use stampede_target::{serve, Behaviour, Jobs};

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// One request with extra header lines (`name: value\r\n` each).
async fn with_headers(client: &mut RawClient, method: &str, path: &str, headers: &str) -> RawResponse {
    let raw = format!("{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n{headers}\r\n");
    client.send(raw.as_bytes()).await;
    client.read_response(false).await
}

fn body(r: &RawResponse) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

/// The string value of `"key":"VALUE"` in a flat JSON object.
fn field(json: &str, key: &str) -> String {
    let start = json.find(&format!(r#""{key}":""#)).unwrap_or_else(|| panic!("no {key} in {json}")) + key.len() + 4;
    json[start..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn login_token_and_session_cookie() {
    let target = serve(any_port(), Behaviour::default()).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    let login = client.request("POST", "/login", br#"{"user":"a"}"#).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.header("content-type"), Some("application/json"));
    let token = field(&body(&login), "token");
    let cookie = login.header("set-cookie").expect("a session cookie").to_string();
    assert!(cookie.starts_with("session=") && cookie.ends_with("; Path=/; HttpOnly"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();

    let me = with_headers(&mut client, "GET", "/me", &format!("authorization: Bearer {token}\r\n")).await;
    assert_eq!((me.status, body(&me)), (200, r#"{"user":"user-1"}"#.to_string()));
    let s = with_headers(&mut client, "GET", "/session", &format!("cookie: other=1; {session}\r\n")).await;
    assert_eq!((s.status, body(&s)), (200, r#"{"user":"user-1"}"#.to_string()));

    // 401s: nothing, someone else's credential, the wrong kind of credential.
    assert_eq!(client.get("/me").await.status, 401);
    assert_eq!(client.get("/session").await.status, 401);
    assert_eq!(with_headers(&mut client, "GET", "/me", "authorization: Bearer 1.0123456789abcdef\r\n").await.status, 401);
    assert_eq!(with_headers(&mut client, "GET", "/me", &format!("authorization: {token}\r\n")).await.status, 401);
    let sid = session.trim_start_matches("session=");
    assert_eq!(with_headers(&mut client, "GET", "/me", &format!("authorization: Bearer {sid}\r\n")).await.status, 401);
    assert_eq!(with_headers(&mut client, "GET", "/session", &format!("cookie: session={token}\r\n")).await.status, 401);

    // A second login is another user.
    let second = client.request("POST", "/login", b"").await;
    let token2 = field(&body(&second), "token");
    assert_ne!(token, token2);
    let me2 = with_headers(&mut client, "GET", "/me", &format!("authorization: Bearer {token2}\r\n")).await;
    assert_eq!(body(&me2), r#"{"user":"user-2"}"#);

    let stats = target.stats();
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.client_errors_4xx, 6);
    assert_eq!(stats.requests, stats.ok_2xx + stats.client_errors_4xx);
    target.shutdown().await;
}

#[tokio::test]
async fn jobs_finish_after_done_after_except_never_finishing_ones() {
    let behaviour = Behaviour { jobs: Jobs { done_after: Duration::from_millis(300), never_finish: 0.25 }, ..Behaviour::default() };
    let target = serve(any_port(), behaviour).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let submitted = client.request("POST", "/jobs", b"{}").await;
        assert_eq!(submitted.status, 202);
        ids.push(field(&body(&submitted), "id"));
    }
    assert_eq!(ids, ["1", "2", "3", "4", "5", "6", "7", "8"]);
    let status = |r: &RawResponse| field(&body(r), "status");
    // Before the wait only a never-finishing job is asserted: on a loaded
    // machine 300 ms may already have passed for the first ones.
    let early = client.get("/jobs/4").await;
    assert_eq!((early.status, status(&early)), (200, "pending".to_string()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    for id in &ids {
        let r = client.get(&format!("/jobs/{id}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(field(&body(&r), "id"), *id);
        let want = if id == "4" || id == "8" { "pending" } else { "done" };
        assert_eq!(status(&r), want, "job {id}");
    }
    for unknown in ["9", "0", "x", "-1"] {
        assert_eq!(client.get(&format!("/jobs/{unknown}")).await.status, 404, "job {unknown}");
    }
    let stats = target.stats();
    assert_eq!((stats.jobs_submitted, stats.jobs_never_finishing, stats.job_polls), (8, 2, 13));
    assert_eq!(stats.client_errors_4xx, 4);
    target.shutdown().await;
}

#[tokio::test]
async fn a_fresh_job_is_pending_by_default() {
    // Default done_after: 1 s, far longer than one round trip on loopback.
    let target = serve(any_port(), Behaviour::default()).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    let id = field(&body(&client.request("POST", "/jobs", b"").await), "id");
    let r = client.get(&format!("/jobs/{id}")).await;
    assert_eq!(field(&body(&r), "status"), "pending");
    target.shutdown().await;
}

#[tokio::test]
async fn other_methods_and_paths_keep_the_plain_behaviour() {
    let target = serve(any_port(), Behaviour::default()).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    assert_eq!(body(&client.get("/login").await), "ok");
    assert_eq!(body(&client.request("POST", "/me", b"").await), "ok");
    assert_eq!(body(&client.get("/jobs").await), "ok");
    assert_eq!(target.stats().logins, 0);
    target.shutdown().await;
}

#[tokio::test]
async fn injected_errors_apply_to_the_api() {
    let target = serve(any_port(), Behaviour { error_ratio: 1.0, ..Behaviour::default() }).await.unwrap();
    let mut client = RawClient::connect(target.local_addr).await;
    assert_eq!(client.request("POST", "/login", b"").await.status, 500);
    assert_eq!(client.request("POST", "/jobs", b"").await.status, 500);
    let stats = target.stats();
    assert_eq!((stats.logins, stats.jobs_submitted, stats.errors_500), (0, 0, 2));
    target.shutdown().await;
}
