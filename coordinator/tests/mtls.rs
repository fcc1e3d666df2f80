//! Mutual TLS and the enrollment token through the real binaries, as
//! separate processes on 127.0.0.1: `stampede certs` makes a CA, a
//! coordinator certificate, agent and control-client certificates and a
//! token; a TLS coordinator then enrolls only agents with a certificate from
//! its CA and its token, serves control clients only with such a
//! certificate, and an agent obeys only a coordinator whose CA it trusts.
//! `--insecure` works and says so; neither TLS nor `--insecure` is a usage
//! error. Every process is killed when the test ends (`support::Procs`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::control_service_client::ControlServiceClient;
use stampede_proto::v1::{AgentMessage, ListAgentsRequest};
use support::{accepts, agent_bin, agent_ids, free_port, stampede, stampede_output, wait_until, Background, Procs};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const INSECURE_WARNING: &str = "Plain-text gRPC: no TLS, no client certificates. Use only on a trusted network.";

/// The files `stampede certs` made: the fleet's CA in `ca/` (with the
/// coordinator's, agent1's and the CI client's certificates) and the token,
/// plus an unrelated CA in `other/` with a `rogue` certificate.
struct Pki {
    ca: PathBuf,
    other: PathBuf,
    token: PathBuf,
}

fn certs(args: &[&str]) -> std::process::Output {
    let mut all = vec!["certs"];
    all.extend_from_slice(args);
    let out = stampede_output(&all, Duration::from_secs(20));
    assert!(out.status.success(), "stampede {all:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn pki(dir: &Path) -> Pki {
    let (ca, other, token) = (dir.join("ca"), dir.join("other"), dir.join("token"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    certs(&["init", "--dir", &s(&ca)]);
    // The coordinator is dialed as 127.0.0.1, which must be asked for.
    certs(&["issue", "--dir", &s(&ca), "--role", "coordinator", "--name", "coordinator", "--san", "127.0.0.1"]);
    certs(&["issue", "--dir", &s(&ca), "--role", "agent", "--name", "agent1"]);
    certs(&["issue", "--dir", &s(&ca), "--role", "operator", "--name", "ci"]);
    certs(&["token", "--out", &s(&token)]);
    certs(&["init", "--dir", &s(&other)]);
    certs(&["issue", "--dir", &s(&other), "--role", "agent", "--name", "rogue"]);
    Pki { ca, other, token }
}

/// `--ca CA/ca.pem --cert DIR/NAME.pem --key DIR/NAME-key.pem`.
fn tls_flags(ca: &Path, dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--ca".into(),
        ca.join("ca.pem").to_str().unwrap().into(),
        "--cert".into(),
        dir.join(format!("{name}.pem")).to_str().unwrap().into(),
        "--key".into(),
        dir.join(format!("{name}-key.pem")).to_str().unwrap().into(),
    ]
}

impl Pki {
    /// The flags of a process holding certificate `name` of the fleet's CA.
    fn flags(&self, name: &str) -> Vec<String> {
        tls_flags(&self.ca, &self.ca, name)
    }

    fn token_flag(&self) -> Vec<String> {
        vec!["--token-file".into(), self.token.to_str().unwrap().into()]
    }

    /// `stampede agents` over TLS as the CI client; None if it failed.
    fn list_agents(&self, url: &str) -> Option<String> {
        let mut args = vec!["agents".to_string(), "--coordinator".into(), url.into()];
        args.extend(self.flags("ci"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = stampede_output(&args, Duration::from_secs(10));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A coordinator the test started: its URL and its process name in `Procs`.
struct Coord {
    url: String,
    name: String,
}

/// Starts a coordinator with `flags` on a free port; returns once
/// `ready(url)` says it serves. A port taken in the meantime makes the
/// coordinator exit; the next attempt, under another name, takes another.
fn coordinator(procs: &mut Procs, scheme: &str, flags: &[String], ready: impl Fn(&str) -> bool) -> Coord {
    let mut name = String::new();
    for attempt in 0..5 {
        name = if attempt == 0 { "coordinator".to_string() } else { format!("coordinator-{attempt}") };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(stampede());
        cmd.args(["coordinator", "--listen", &addr.to_string()]).args(flags).arg("--data").arg(procs.data_dir(&name));
        procs.spawn(&name, cmd);
        let url = format!("{scheme}://{addr}");
        let up = wait_until(Duration::from_secs(10), || !procs.alive(&name) || (accepts(addr) && ready(&url)));
        if up && procs.alive(&name) {
            return Coord { url, name };
        }
    }
    panic!("no coordinator could start; last log:\n{}", procs.log(&name));
}

fn tls_coordinator(procs: &mut Procs, pki: &Pki) -> Coord {
    let mut flags = pki.flags("coordinator");
    flags.extend(pki.token_flag());
    coordinator(procs, "https", &flags, |url| pki.list_agents(url).is_some())
}

/// Starts `stampede-agent --coordinator URL --id ID FLAGS...`.
fn agent(procs: &mut Procs, id: &str, url: &str, flags: &[String]) {
    let state = procs.dir.path().join(format!("state-{id}"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--coordinator", url, "--id", id, "--workers", "1", "--state-dir"]).arg(state).args(flags).env("RUST_LOG", "info");
    procs.spawn(id, cmd);
}

/// Waits until `name`'s log contains `needle`.
fn log_says(procs: &Procs, name: &str, needle: &str, limit: Duration) -> bool {
    wait_until(limit, || procs.log(name).contains(needle))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn certs_commands_write_the_files_and_refuse_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    for f in ["ca.pem", "coordinator.pem", "agent1.pem", "ci.pem"] {
        assert!(pki.ca.join(f).exists(), "{f}");
    }
    for f in ["ca-key.pem", "coordinator-key.pem", "agent1-key.pem"] {
        assert_eq!(mode(pki.ca.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(pki.token.clone()), 0o600);
    let token = std::fs::read_to_string(&pki.token).unwrap();
    assert!(token.trim().len() == 64 && token.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{token:?}");

    let again = stampede_output(&["certs", "init", "--dir", pki.ca.to_str().unwrap()], Duration::from_secs(10));
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"), "{again:?}");
    // --out: the files go elsewhere, signed by the same CA.
    let elsewhere = dir.path().join("elsewhere");
    let out = certs(&["issue", "--dir", pki.ca.to_str().unwrap(), "--role", "agent", "--name", "node7", "--san", "10.9.8.7", "--san", "node7.example", "--out", elsewhere.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SANs node7, 10.9.8.7, node7.example"), "{out:?}");
    assert!(elsewhere.join("node7.pem").exists() && elsewhere.join("node7-key.pem").exists());
}

/// (a) An agent with a certificate from the coordinator's CA and its token
/// registers, and a run submitted over TLS by another client runs on it.
#[test]
fn an_agent_with_a_valid_certificate_and_token_registers_and_runs() {
    let mut procs = Procs::new();
    let pki = pki(procs.dir.path());
    let Coord { url, name: coord } = tls_coordinator(&mut procs, &pki);
    let target = procs.target("target", &["--latency", "1ms"]);
    let mut flags = pki.flags("agent1");
    flags.extend(pki.token_flag());
    agent(&mut procs, "a1", &url, &flags);
    let mut table = String::new();
    let listed = wait_until(Duration::from_secs(10), || {
        table = pki.list_agents(&url).unwrap_or_default();
        agent_ids(&table) == ["a1"]
    });
    assert!(listed, "a1 did not register over TLS; `stampede agents` said:\n{table}\n{}", procs.logs());

    let plan = procs.dir.path().join("open.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: mtls\ntarget: http://{target}\n\
             phases:\n  - {{ name: steady, duration: 2s, load: {{ model: open, rate: 50/s }} }}\n\
             steps:\n  - {{ name: get, request: {{ path: /items/1 }} }}\n\
             slos:\n  - {{ metric: error_rate, pass: \"< 1%\" }}\n"
        ),
    )
    .unwrap();
    let out = procs.dir.path().join("out");
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--expect-agents", "1", "--wait", "10s", "--out", out.to_str().unwrap()]).args(pki.flags("ci"));
    let (code, stdout, stderr) = Background::start(cmd, procs.dir.path(), "run").finish(Duration::from_secs(30));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", procs.logs());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"], "pass", "{report:#}");
    assert!(report["totals"]["requests"].as_u64().unwrap() >= 90, "{report:#}");
    assert!(!procs.log(&coord).contains("Plain-text"), "{}", procs.log(&coord));
}

/// (b) An agent that trusts another CA does not obey this coordinator, and
/// an agent whose certificate another CA signed is refused by it; each side
/// says why.
#[test]
fn a_certificate_from_another_ca_is_refused_on_both_sides() {
    let mut procs = Procs::new();
    let pki = pki(procs.dir.path());
    let Coord { url, name: coord } = tls_coordinator(&mut procs, &pki);

    // Trusts the other CA: the coordinator's certificate is not from it.
    let mut distrustful = tls_flags(&pki.other, &pki.ca, "agent1");
    distrustful.extend(pki.token_flag());
    agent(&mut procs, "distrustful", &url, &distrustful);
    // Trusts our CA, but holds a certificate from the other one.
    let mut rogue = tls_flags(&pki.ca, &pki.other, "rogue");
    rogue.extend(pki.token_flag());
    agent(&mut procs, "rogue", &url, &rogue);

    assert!(
        log_says(&procs, "distrustful", "this is not the coordinator we trust", Duration::from_secs(10)),
        "the agent does not say it distrusts the coordinator:\n{}",
        procs.logs()
    );
    assert!(log_says(&procs, "distrustful", "UnknownIssuer", Duration::from_secs(1)), "{}", procs.log("distrustful"));
    assert!(
        log_says(&procs, &coord, "the client's certificate is not signed by this coordinator's --ca", Duration::from_secs(10)),
        "the coordinator does not say it refused the rogue certificate:\n{}",
        procs.logs()
    );
    assert!(log_says(&procs, "rogue", "Session with the coordinator failed.", Duration::from_secs(10)), "{}", procs.log("rogue"));
    // Both keep retrying, and neither is ever enrolled.
    std::thread::sleep(Duration::from_secs(1));
    assert!(procs.alive("distrustful") && procs.alive("rogue"), "{}", procs.logs());
    let table = pki.list_agents(&url).expect("stampede agents over TLS");
    assert!(agent_ids(&table).is_empty(), "{table}");
    assert!(!procs.log(&coord).contains("Agent registered"), "{}", procs.log(&coord));
}

/// (c) A client without a certificate is refused at the handshake — for the
/// agents' service and the control API alike — and the coordinator logs who
/// and why. So is a plain-text client.
#[test]
fn a_client_without_a_certificate_is_refused_at_the_handshake() {
    let mut procs = Procs::new();
    let pki = pki(procs.dir.path());
    let Coord { url, name: coord } = tls_coordinator(&mut procs, &pki);
    let ca = std::fs::read(pki.ca.join("ca.pem")).unwrap();

    // A TLS client that trusts the CA but presents no certificate.
    let (list, session) = runtime().block_on(async {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).domain_name("127.0.0.1");
        let endpoint = Endpoint::from_shared(url.clone()).unwrap().tls_config(tls).unwrap().connect_timeout(Duration::from_secs(5));
        let list = match endpoint.connect().await {
            Ok(ch) => ControlServiceClient::new(ch).list_agents(ListAgentsRequest {}).await.map(|_| ()).map_err(|s| format!("{s}")),
            Err(e) => Err(format!("{e:?}")),
        };
        let session = match endpoint.connect().await {
            Ok(ch) => AgentServiceClient::new(ch).session(tokio_stream::iter(Vec::<AgentMessage>::new())).await.map(|_| ()).map_err(|s| format!("{s}")),
            Err(e) => Err(format!("{e:?}")),
        };
        (list, session)
    });
    assert!(list.is_err(), "ListAgents without a client certificate succeeded");
    assert!(session.is_err(), "Session without a client certificate succeeded");
    assert!(
        log_says(&procs, &coord, "the client presented no certificate", Duration::from_secs(5)),
        "the coordinator does not say why it refused:\n{}",
        procs.log(&coord)
    );
    assert!(procs.log(&coord).contains("peer=127.0.0.1:"), "{}", procs.log(&coord));

    // Plain text against TLS: refused, with a hint on both sides.
    let out = stampede_output(&["agents", "--coordinator", &url.replace("https://", "http://"), "--insecure"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("use an https:// URL"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(log_says(&procs, &coord, "the client does not speak TLS", Duration::from_secs(5)), "{}", procs.log(&coord));
}

/// (d) A valid certificate with the wrong token, or none, is refused with
/// `unauthenticated` and the coordinator's warning.
#[test]
fn a_wrong_token_is_refused_as_unauthenticated() {
    let mut procs = Procs::new();
    let pki = pki(procs.dir.path());
    let Coord { url, name: coord } = tls_coordinator(&mut procs, &pki);
    let bad = procs.dir.path().join("bad-token");
    certs(&["token", "--out", bad.to_str().unwrap()]);
    let mut flags = pki.flags("agent1");
    flags.extend(["--token-file".to_string(), bad.to_str().unwrap().to_string()]);
    agent(&mut procs, "impostor", &url, &flags);

    assert!(log_says(&procs, "impostor", "unauthenticated", Duration::from_secs(10)), "the agent does not say it was refused:\n{}", procs.logs());
    assert!(procs.log("impostor").contains("check --token-file"), "{}", procs.log("impostor"));
    assert!(
        log_says(&procs, &coord, "Agent refused: bad enrollment token.", Duration::from_secs(5)),
        "no warning from the coordinator:\n{}",
        procs.log(&coord)
    );
    assert!(procs.log(&coord).contains("reason=wrong token"), "{}", procs.log(&coord));
    let table = pki.list_agents(&url).expect("stampede agents over TLS");
    assert!(agent_ids(&table).is_empty(), "{table}");

    // A session with a valid certificate and no token at all.
    let identity = Identity::from_pem(std::fs::read(pki.ca.join("agent1.pem")).unwrap(), std::fs::read(pki.ca.join("agent1-key.pem")).unwrap());
    let ca = std::fs::read(pki.ca.join("ca.pem")).unwrap();
    let status = runtime().block_on(async {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)).identity(identity).domain_name("127.0.0.1");
        let channel = Endpoint::from_shared(url.clone()).unwrap().tls_config(tls).unwrap().connect().await.expect("TLS with a valid certificate connects");
        AgentServiceClient::new(channel).session(tokio_stream::iter(Vec::<AgentMessage>::new())).await.expect_err("a session without a token is refused")
    });
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(log_says(&procs, &coord, "reason=no token", Duration::from_secs(5)), "{}", procs.log(&coord));
}

/// (e) `--insecure` works on both sides and both warn; a token given to an
/// insecure coordinator is still checked.
#[test]
fn insecure_works_warns_and_still_checks_a_token() {
    let mut procs = Procs::new();
    let pki = pki(procs.dir.path());
    let insecure = |extra: &[String]| {
        let mut v = vec!["--insecure".to_string()];
        v.extend_from_slice(extra);
        v
    };
    let list = |url: &str| {
        let out = stampede_output(&["agents", "--coordinator", url, "--insecure"], Duration::from_secs(10));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let Coord { url, name: coord } = coordinator(&mut procs, "http", &insecure(&pki.token_flag()), |u| list(u).is_some());
    agent(&mut procs, "plain", &url, &insecure(&pki.token_flag()));
    agent(&mut procs, "tokenless", &url, &insecure(&[]));
    let mut table = String::new();
    let listed = wait_until(Duration::from_secs(10), || {
        table = list(&url).unwrap_or_default();
        agent_ids(&table) == ["plain"]
    });
    assert!(listed, "`stampede agents` said:\n{table}\n{}", procs.logs());
    for name in [coord.as_str(), "plain"] {
        assert!(procs.log(name).contains(INSECURE_WARNING), "{name} does not warn:\n{}", procs.log(name));
    }
    assert!(log_says(&procs, "tokenless", "unauthenticated", Duration::from_secs(10)), "{}", procs.logs());
    assert!(log_says(&procs, &coord, "Agent refused: bad enrollment token.", Duration::from_secs(5)), "{}", procs.log(&coord));
    let out = stampede_output(&["agents", "--coordinator", &url, "--insecure"], Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains(INSECURE_WARNING), "{out:?}");
    assert!(agent_ids(&table) == ["plain"], "{table}");
}

/// (f) Neither TLS flags nor --insecure: exit 2 with a message naming the
/// flags, before anything starts.
#[test]
fn no_transport_flags_is_a_usage_error_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("p.yaml");
    std::fs::write(&plan, "name: p\ntarget: http://127.0.0.1:9\nphases:\n  - { name: a, duration: 1s, load: { model: open, rate: 1/s } }\nsteps:\n  - { name: get, request: { path: / } }\n").unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://{listen}");
    let cases: Vec<(&str, Vec<&str>, bool)> = vec![
        ("coordinator", vec!["coordinator", "--listen", &listen], true),
        ("agents", vec!["agents", "--coordinator", &url], false),
        ("run", vec!["run", plan.to_str().unwrap(), "--coordinator", &url], false),
    ];
    for (what, args, token) in cases {
        let out = stampede_output(&args, Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        for flag in ["--ca", "--cert", "--key", "--insecure"] {
            assert!(stderr.contains(flag), "{what}: {flag} not named:\n{stderr}");
        }
        assert_eq!(stderr.contains("--token-file"), token, "{what}:\n{stderr}");
    }
    assert!(!accepts(listen.parse().unwrap()), "the coordinator started anyway");

    // The agent binary, and TLS flags given only in part.
    let run = |args: &[&str]| {
        let mut cmd = Command::new(agent_bin());
        cmd.args(args).arg("--state-dir").arg(dir.path().join("state"));
        Background::start(cmd, dir.path(), "agent").finish(Duration::from_secs(10))
    };
    let (code, _, stderr) = run(&["--coordinator", &url]);
    assert_eq!(code, 2, "{stderr}");
    for flag in ["--ca", "--cert", "--key", "--token-file", "--insecure"] {
        assert!(stderr.contains(flag), "agent: {flag} not named:\n{stderr}");
    }
    let (code, _, stderr) = run(&["--coordinator", &url, "--ca", "ca.pem"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("missing: --cert, --key"), "{stderr}");
    let (code, _, stderr) = run(&["--coordinator", &url, "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--token-file"), "{stderr}");
    let (code, _, stderr) = run(&["--coordinator", &url, "--ca", "ca.pem", "--insecure"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // The URL's scheme must match the transport, or the agent would retry a
    // connection that can never work.
    let (code, _, stderr) = run(&["--coordinator", &url, "--insecure"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--insecure takes an http:// URL"), "{stderr}");
    let out = stampede_output(&["agents", "--coordinator", &url.replace("https://", "http://"), "--ca", "a", "--cert", "b", "--key", "c"], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be https://"), "{out:?}");
}
