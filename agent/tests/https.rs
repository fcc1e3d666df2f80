//! Issue 10, "HTTPS (and what real endpoints need)": the load against the
//! built-in target serving TLS with a test CA generated per test, through
//! the agent's engine (closed model, 1 s, one agent):
//! - a certificate from the CA the plan trusts, for the name dialed, passes,
//!   and its handshakes are timed in their own histogram;
//! - a certificate for another name, or from a CA the plan does not trust,
//!   fails every request with kind `tls` (never `io` or `connect`);
//! - `insecure_skip_verify` passes against the wrong name (the report's
//!   warning is checked in coordinator/tests/https.rs);
//! - a target requiring a client certificate: with the CA's client
//!   certificate passes, without one fails with kind `tls`.
//!
//! And, with resolution injected, a name resolving to two loopback
//! addresses gets load on both.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use stampede_agent::connect::Resolver;
use stampede_agent::engine::{self, RunSpec};
use stampede_common::plan::{load_str, Format};
use stampede_common::stats::{ErrorKind, RunStats};
use stampede_target::{Behaviour, TlsMaterial};
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// Runs a 1 s closed phase of `concurrency` connections against `target`
/// with the plan's `tls` section `tls` (YAML flow text, or empty), and
/// returns everything measured.
fn load(rt: &tokio::runtime::Runtime, target: &str, tls: &str, concurrency: u32, resolver: Option<Resolver>) -> RunStats {
    let tls = if tls.is_empty() { String::new() } else { format!("tls: {tls}\n") };
    let text = format!(
        "name: t\ntarget: {target}\n{tls}timeout: 2s\nphases:\n  - name: p\n    duration: 1s\n    load: {{ model: closed, concurrency: {concurrency} }}\nsteps: [{{ name: s }}]\n"
    );
    let plan = load_str(&text, Format::Yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let spec = RunSpec {
        plan: Arc::new(plan),
        rate_share: 1.0,
        concurrency: vec![concurrency],
        iterations: vec![0],
        agent_index: 0,
        agent_count: 1,
        start: SystemTime::now() + Duration::from_millis(100),
        workers: 2,
    };
    let cancel = CancellationToken::new();
    let mut rx = rt
        .block_on(async {
            match resolver {
                Some(r) => engine::start_with_resolver(spec, cancel.clone(), r).await,
                None => engine::start(spec, cancel.clone()).await,
            }
        })
        .unwrap_or_else(|e| panic!("the engine starts: {e}"));
    let mut total = RunStats::default();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(i) = rx.recv().await {
                total.add(&i.stats).unwrap();
                for s in i.late.values() {
                    total.add(s).unwrap();
                }
                if i.last {
                    break;
                }
            }
        })
        .await
        .expect("the run ends within 15 s");
    });
    total
}

/// Requests, and errors by kind, over every record.
fn counts(s: &RunStats) -> (u64, Vec<(ErrorKind, u64)>, u64) {
    let sum = s.summarize(|_| true);
    let kinds = ErrorKind::ALL.iter().zip(sum.errors_by_kind).filter(|(_, n)| *n > 0).map(|(k, n)| (*k, n)).collect();
    let handshakes = s.steps.values().map(|r| r.handshake.len()).sum();
    (sum.requests, kinds, handshakes)
}

/// A TLS target on 127.0.0.1 with `material`; its URL.
fn serve(rt: &tokio::runtime::Runtime, material: &TlsMaterial) -> (stampede_target::TargetHandle, String) {
    let config = material.server_config().unwrap();
    let handle = rt.block_on(stampede_target::serve_tls("127.0.0.1:0".parse().unwrap(), Behaviour::default(), None, Some(config))).unwrap();
    let url = format!("https://{}", handle.local_addr);
    (handle, url)
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn assert_all_tls(what: &str, s: &RunStats) {
    let (requests, kinds, _) = counts(s);
    assert!(requests > 0, "{what}: no request was attempted");
    assert_eq!(kinds, vec![(ErrorKind::Tls, requests)], "{what}: every request fails with kind tls");
}

#[test]
fn https_targets_verify_their_certificate_and_fail_as_tls() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let good = TlsMaterial::generate(&names(&["127.0.0.1", "localhost"]), false).unwrap();
    let files = good.write(&dir.path().join("good")).unwrap();
    let ca = files.ca.display().to_string();

    // The CA the plan trusts, the name dialed: every request succeeds, and
    // each connection's handshake is timed.
    let (target, url) = serve(&rt, &good);
    let s = load(&rt, &url, &format!("{{ ca: {ca} }}"), 2, None);
    let (requests, kinds, handshakes) = counts(&s);
    assert!(requests > 50, "only {requests} requests in 1 s");
    assert!(kinds.is_empty(), "errors against a good certificate: {kinds:?}");
    assert!((2..=4).contains(&handshakes), "one handshake per connection (2, a stale retry at most doubling it): {handshakes}");
    let served = target.stats();
    assert_eq!((served.tls_failures, served.requests), (0, requests));
    rt.block_on(target.shutdown());

    // The same CA, a certificate for another name.
    let wrong_name = TlsMaterial::generate(&names(&["elsewhere.test"]), false).unwrap();
    let other_dir = dir.path().join("wrong-name");
    let wrong_ca = wrong_name.write(&other_dir).unwrap().ca.display().to_string();
    let (target, url) = serve(&rt, &wrong_name);
    assert_all_tls("wrong name", &load(&rt, &url, &format!("{{ ca: {wrong_ca} }}"), 2, None));

    // insecure_skip_verify accepts it (the report flags it).
    let s = load(&rt, &url, "{ insecure_skip_verify: true }", 2, None);
    let (requests, kinds, handshakes) = counts(&s);
    assert!(requests > 50 && kinds.is_empty() && handshakes >= 2, "insecure_skip_verify: {requests} requests, {kinds:?}, {handshakes} handshakes");
    rt.block_on(target.shutdown());

    // A good name from a CA the plan does not trust (it trusts `good`'s).
    let unknown = TlsMaterial::generate(&names(&["127.0.0.1"]), false).unwrap();
    let (target, url) = serve(&rt, &unknown);
    assert_all_tls("unknown CA", &load(&rt, &url, &format!("{{ ca: {ca} }}"), 2, None));
    // Nor do the system's roots know it.
    assert_all_tls("unknown CA, system roots", &load(&rt, &url, "", 1, None));
    rt.block_on(target.shutdown());
}

#[test]
fn a_target_requiring_a_client_certificate_takes_only_the_cas() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let material = TlsMaterial::generate(&names(&["127.0.0.1"]), true).unwrap();
    let files = material.write(dir.path()).unwrap();
    let (target, url) = serve(&rt, &material);
    let ca = files.ca.display();

    let with = load(&rt, &url, &format!("{{ ca: {ca}, cert: {}, key: {} }}", files.client_cert.display(), files.client_key.display()), 2, None);
    let (requests, kinds, _) = counts(&with);
    assert!(requests > 50 && kinds.is_empty(), "with the client certificate: {requests} requests, {kinds:?}");

    // TLS 1.3: the client finishes its handshake before the server refuses
    // it, and learns why from the alert on its first read: still `tls`.
    assert_all_tls("no client certificate", &load(&rt, &url, &format!("{{ ca: {ca} }}"), 2, None));
    assert!(target.stats().tls_failures > 0);
    rt.block_on(target.shutdown());
}

#[test]
fn a_name_resolving_to_two_addresses_gets_load_on_both() {
    let rt = runtime();
    // The same port on two loopback addresses, as a load balancer's name
    // would resolve (127.0.0.0/8 is loopback on Linux).
    let (a, b) = rt.block_on(async {
        for _ in 0..20 {
            let a = stampede_target::serve("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await.unwrap();
            let port = a.local_addr.port();
            match stampede_target::serve(SocketAddr::from(([127, 0, 0, 2], port)), Behaviour::default()).await {
                Ok(b) => return (a, b),
                Err(_) => a.shutdown().await,
            }
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2");
    });
    let port = a.local_addr.port();
    let expected = format!("svc.stampede.test:{port}");
    let addrs = vec![a.local_addr, b.local_addr];
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = asked.clone();
    let resolver: Resolver = Arc::new(move |host_port: &str| {
        assert_eq!(host_port, expected);
        seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(addrs.clone())
    });
    // Two connections on two workers, and an open-model-like spread is
    // not needed: new connections take the addresses in turn.
    let s = load(&rt, &format!("http://svc.stampede.test:{port}"), "", 2, Some(resolver));
    let (requests, kinds, _) = counts(&s);
    assert!(kinds.is_empty(), "{kinds:?}");
    let (sa, sb) = (a.stats(), b.stats());
    assert!(sa.requests > 0 && sb.requests > 0, "both addresses get load: {} and {} of {requests}", sa.requests, sb.requests);
    assert_eq!(sa.requests + sb.requests, requests);
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// A fault-only agent (`--capacity 0`: no rate share, no connection, no
/// probe) sends nothing, so it must not need what only sending needs: a
/// target name it can resolve, or the plan's TLS files on its node (a
/// service node has no reason to hold the load's CA or client key). It
/// still delivers its (empty) intervals to the run's end.
#[test]
fn a_fault_only_agent_needs_neither_the_targets_address_nor_its_tls_files() {
    let rt = runtime();
    let text = "name: t\ntarget: https://load-only.invalid:8443\ntls: { ca: /nonexistent/ca.pem, cert: /nonexistent/client.pem, key: /nonexistent/client-key.pem }\n\
                phases:\n  - { name: p, duration: 1s, load: { model: open, rate: 10/s } }\n  - { name: c, duration: 1s, load: { model: closed, concurrency: 2 } }\nsteps: [{ name: s }]\n";
    let plan = load_str(text, Format::Yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let spec = RunSpec {
        plan: Arc::new(plan),
        rate_share: 0.0,
        concurrency: vec![0, 0],
        iterations: vec![0, 0],
        agent_index: 1,
        agent_count: 2,
        start: SystemTime::now() + Duration::from_millis(100),
        workers: 1,
    };
    let unresolvable: Resolver = Arc::new(|name: &str| Err(std::io::Error::other(format!("{name}: resolved by a fault-only agent"))));
    let cancel = CancellationToken::new();
    let mut rx = rt.block_on(engine::start_with_resolver(spec, cancel.clone(), unresolvable)).unwrap_or_else(|e| panic!("a fault-only agent starts: {e}"));
    let (mut intervals, mut requests) = (0, 0);
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(i) = rx.recv().await {
                intervals += 1;
                requests += i.stats.summarize(|_| true).requests;
                if i.last {
                    break;
                }
            }
        })
        .await
        .expect("the run ends within 15 s");
    });
    assert!(intervals >= 2, "its intervals to the run's end: {intervals}");
    assert_eq!(requests, 0);
}
