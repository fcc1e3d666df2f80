//! Issue 8, item 11 (roles) and the connection-message parts of item 13,
//! as a standing suite: a real `stampede coordinator` and real agents over
//! real TLS on 127.0.0.1, certificates from `stampede certs`, and hostile
//! clients and servers written here with plain tonic — an attacker does not
//! use our client code, so the coordinator's and the agent's own checks are
//! what is tested. Every process is killed when its test ends
//! (`support::Procs`).

mod support;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use stampede_proto::v1::control_service_client::ControlServiceClient;
use stampede_proto::v1::{AgentMessage, CoordinatorMessage, ListAgentsRequest, Register, SubmitRunRequest};
use support::{accepts, agent_bin, agent_ids, free_port, stampede, stampede_output, wait_until, Background, Procs};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// A fleet's CA and token, and the certificates issued from it.
struct Pki {
    ca: PathBuf,
    token: PathBuf,
}

fn certs(args: &[&str]) -> String {
    let mut all = vec!["certs"];
    all.extend_from_slice(args);
    let out = stampede_output(&all, Duration::from_secs(20));
    assert!(out.status.success(), "stampede {all:?}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let (ca, token) = (dir.join("ca"), dir.join("token"));
        certs(&["init", "--dir", ca.to_str().unwrap()]);
        certs(&["token", "--out", token.to_str().unwrap()]);
        Pki { ca, token }
    }

    /// `stampede certs issue` for `role`; returns its output.
    fn issue(&self, role: &str, name: &str, sans: &[&str]) -> String {
        let mut args = vec!["issue", "--dir", self.ca.to_str().unwrap(), "--role", role, "--name", name];
        for s in sans {
            args.extend(["--san", s]);
        }
        certs(&args)
    }

    fn file(&self, name: &str) -> String {
        self.ca.join(name).to_str().unwrap().to_string()
    }

    /// `--ca --cert --key` of certificate `name`.
    fn flags(&self, name: &str) -> Vec<String> {
        ["--ca", &self.file("ca.pem"), "--cert", &self.file(&format!("{name}.pem")), "--key", &self.file(&format!("{name}-key.pem"))].map(String::from).to_vec()
    }

    fn token_flag(&self) -> Vec<String> {
        vec!["--token-file".into(), self.token.to_str().unwrap().into()]
    }

    fn identity(&self, name: &str) -> Identity {
        Identity::from_pem(std::fs::read(self.file(&format!("{name}.pem"))).unwrap(), std::fs::read(self.file(&format!("{name}-key.pem"))).unwrap())
    }

    /// A hostile client's TLS: trusts the CA, presents certificate `name`.
    fn client_tls(&self, name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(self.file("ca.pem")).unwrap())).identity(self.identity(name)).domain_name("127.0.0.1")
    }

    fn token(&self) -> String {
        std::fs::read_to_string(&self.token).unwrap().trim().to_string()
    }
}

/// The fleet of most tests: a CA with a coordinator (valid for 127.0.0.1
/// because the test asks for it), an agent and an operator (`ci`).
fn fleet_pki(dir: &Path) -> Pki {
    let pki = Pki::new(dir);
    pki.issue("coordinator", "coordinator", &["127.0.0.1"]);
    pki.issue("agent", "agent1", &[]);
    pki.issue("operator", "ci", &[]);
    pki
}

/// `stampede agents` with `flags`; (success, stdout, stderr).
fn list_agents(url: &str, flags: &[String]) -> (bool, String, String) {
    let mut args = vec!["agents".to_string(), "--coordinator".into(), url.into()];
    args.extend_from_slice(flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = stampede_output(&args, Duration::from_secs(15));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Starts `stampede coordinator FLAGS` on a free port; returns its URL
/// once `stampede agents` with `client` succeeds.
fn coordinator(procs: &mut Procs, name: &str, scheme: &str, flags: &[String], client: &[String]) -> String {
    for _ in 0..5 {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(stampede());
        cmd.args(["coordinator", "--listen", &addr.to_string()]).args(flags).arg("--data").arg(procs.data_dir(name));
        procs.spawn(name, cmd);
        let url = format!("{scheme}://{addr}");
        if wait_until(Duration::from_secs(10), || !procs.alive(name) || (accepts(addr) && list_agents(&url, client).0)) && procs.alive(name) {
            return url;
        }
    }
    panic!("no coordinator could start; last log:\n{}", procs.log(name));
}

fn tls_coordinator(procs: &mut Procs, pki: &Pki) -> String {
    let mut flags = pki.flags("coordinator");
    flags.extend(pki.token_flag());
    coordinator(procs, "coordinator", "https", &flags, &pki.flags("ci"))
}

fn insecure_coordinator(procs: &mut Procs) -> String {
    let flags = vec!["--insecure".to_string()];
    coordinator(procs, "coordinator", "http", &flags, &flags)
}

/// Starts `stampede-agent --coordinator URL --id ID FLAGS...`.
fn agent(procs: &mut Procs, id: &str, url: &str, flags: &[String]) {
    let state = procs.dir.path().join(format!("state-{id}"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--coordinator", url, "--id", id, "--workers", "1", "--state-dir"]).arg(state).args(flags).env("RUST_LOG", "info");
    procs.spawn(id, cmd);
}

fn log_says(procs: &Procs, name: &str, needle: &str, limit: Duration) -> bool {
    wait_until(limit, || procs.log(name).contains(needle))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A small open-model plan against `target`, `secs` long.
fn plan(dir: &Path, target: std::net::SocketAddr, secs: u32) -> PathBuf {
    let path = dir.join("plan.yaml");
    std::fs::write(
        &path,
        format!(
            "name: trust\ntarget: http://{target}\n\
             phases:\n  - {{ name: steady, duration: {secs}s, load: {{ model: open, rate: 20/s }} }}\n\
             steps:\n  - {{ name: get, request: {{ path: /items/1 }} }}\n"
        ),
    )
    .unwrap();
    path
}

/// Item 11, first attack: an agent's certificate (and key) submitted a run
/// with faults — ControlService never looked at its caller. It must answer
/// PERMISSION_DENIED naming the role it found, and start nothing.
#[test]
fn an_agent_certificate_cannot_submit_runs_or_list_agents() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    let url = tls_coordinator(&mut procs, &pki);
    let plan_text = "name: hostile\ntarget: http://127.0.0.1:9\n\
                     phases:\n  - { name: a, duration: 1s, load: { model: open, rate: 1/s } }\n\
                     steps:\n  - { name: get, request: { path: / } }\n\
                     faults:\n  - { name: cut, kind: partition, at: 0s, duration: 1s, scope: { dst: 198.18.0.2/32, port: 80 } }\n";
    let (submit, list) = runtime().block_on(async {
        let channel = Endpoint::from_shared(url.clone()).unwrap().tls_config(pki.client_tls("agent1")).unwrap().connect().await.expect("TLS with a certificate of the CA connects");
        let mut client = ControlServiceClient::new(channel);
        let request = SubmitRunRequest { plan_name: "hostile.yaml".into(), plan_text: plan_text.into(), plan_format: "yaml".into(), expect_agents: 0, wait_ms: 100, secrets: Vec::new(), data_files: Vec::new() };
        let submit = client.submit_run(request).await.map(|_| ());
        let list = client.list_agents(ListAgentsRequest {}).await.map(|_| ());
        (submit, list)
    });
    for (what, result) in [("SubmitRun", submit), ("ListAgents", list)] {
        let status = result.expect_err(&format!("{what} with an agent's certificate was accepted"));
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{what}: {status:?}");
        assert!(status.message().contains("agent"), "{what}: the message does not name the role found: {status:?}");
        assert!(status.message().contains("operator"), "{what}: the message does not name the role needed: {status:?}");
    }
    assert!(log_says(&procs, "coordinator", "Caller refused: wrong certificate role.", Duration::from_secs(5)), "{}", procs.log("coordinator"));
    assert!(!procs.log("coordinator").contains("Run submitted"), "{}", procs.log("coordinator"));
}

/// Item 11, second attack: a CI (operator) certificate plus the token
/// registered as an agent. The agents' service must refuse any certificate
/// but an agent's, before the token is even looked at.
#[test]
fn an_operator_certificate_with_the_token_cannot_register_as_an_agent() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    let url = tls_coordinator(&mut procs, &pki);
    let status = runtime().block_on(async {
        let channel = Endpoint::from_shared(url.clone()).unwrap().tls_config(pki.client_tls("ci")).unwrap().connect().await.expect("TLS with a certificate of the CA connects");
        let register = AgentMessage { msg: Some(Up::Register(Register { agent_id: "impostor".into(), capacity: 1, ..Default::default() })), delivery: 0 };
        let mut request = Request::new(tokio_stream::iter(vec![register]).chain(tokio_stream::pending()));
        request.metadata_mut().insert("authorization", format!("Bearer {}", pki.token()).parse().unwrap());
        AgentServiceClient::new(channel).session(request).await.map(|_| ())
    });
    let status = status.expect_err("a session with an operator's certificate and the token was accepted");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("operator") && status.message().contains("agent"), "{status:?}");
    let (_, table, _) = list_agents(&url, &pki.flags("ci"));
    assert!(agent_ids(&table).is_empty(), "the impostor is listed:\n{table}");
    assert!(!procs.log("coordinator").contains("Agent registered"), "{}", procs.log("coordinator"));
}

/// A hostile "coordinator": records the `authorization` header of every
/// session it is offered.
struct Rogue {
    tokens: Arc<Mutex<Vec<String>>>,
}

type Outbound = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Rogue {
    type SessionStream = Outbound;

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Outbound>, Status> {
        let presented = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or("?").to_string());
        self.tokens.lock().unwrap().push(presented.unwrap_or_default());
        Err(Status::unavailable("rogue"))
    }
}

/// Item 11, third attack: a process holding an *agent's* certificate served
/// it on 127.0.0.1, and the victim agent's check passed (every certificate
/// was a server certificate, named 127.0.0.1) — so the victim sent it the
/// enrollment token. An agent must dial only a coordinator's certificate.
/// The agent certificate here even names 127.0.0.1, as the old default did.
#[test]
fn an_agent_certificate_served_as_a_coordinator_receives_no_token() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    pki.issue("agent", "thief", &["127.0.0.1"]);
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new().identity(pki.identity("thief"));
    let server = tonic::transport::Server::builder().tls_config(tls).unwrap().add_service(AgentServiceServer::new(Rogue { tokens: tokens.clone() }));
    rt.spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));

    let mut flags = pki.flags("agent1");
    flags.extend(pki.token_flag());
    agent(&mut procs, "victim", &format!("https://{addr}"), &flags);
    assert!(
        log_says(&procs, "victim", "not a coordinator's certificate", Duration::from_secs(10)),
        "the agent does not say why it refused the server:\n{}",
        procs.log("victim")
    );
    // Several attempts (the agent retries with backoff), none with the token.
    std::thread::sleep(Duration::from_millis(1500));
    let seen = tokens.lock().unwrap().clone();
    assert!(seen.iter().all(|t| !t.contains(&pki.token())), "the rogue received the enrollment token: {seen:?}");
    assert!(seen.is_empty(), "the agent opened a session with the rogue: {seen:?}");
}

/// Item 11 (and 13's "TLS handshake failed, with the reason"): a
/// coordinator's certificate is a server certificate only, so it cannot
/// dial its own or another coordinator, and the client is told why rather
/// than "connection closed" (with TLS 1.3 the refusal comes after the
/// client's side of the handshake).
#[test]
fn a_coordinator_certificate_cannot_dial_and_the_client_says_why() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    let url = tls_coordinator(&mut procs, &pki);
    let (ok, _, stderr) = list_agents(&url, &pki.flags("coordinator"));
    assert!(!ok, "a coordinator certificate listed the agents");
    assert!(stderr.contains("it is not a client certificate"), "{stderr}");
    assert!(log_says(&procs, "coordinator", "the client's certificate is not a client certificate", Duration::from_secs(5)), "{}", procs.log("coordinator"));
}

/// Item 11: `certs issue` put 127.0.0.1 and localhost into every certificate
/// unless told otherwise, so any coordinator certificate was valid for any
/// host's loopback. A coordinator certificate names only NAME and the
/// `--san`s asked for, and a client dialing 127.0.0.1 then refuses it.
#[test]
fn a_coordinator_certificate_names_no_loopback_unless_asked() {
    let mut procs = Procs::new();
    let pki = Pki::new(procs.dir.path());
    let out = pki.issue("coordinator", "coord", &[]);
    assert!(out.contains("SANs coord,") || out.contains("SANs coord "), "{out}");
    assert!(!out.contains("127.0.0.1") && !out.contains("localhost"), "loopback in a coordinator certificate nobody asked for: {out}");
    pki.issue("operator", "ci", &[]);
    let mut flags = pki.flags("coord");
    flags.extend(pki.token_flag());
    // Ready when it accepts TCP; its certificate is valid for `coord` only.
    let mut url = String::new();
    for _ in 0..5 {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(stampede());
        cmd.args(["coordinator", "--listen", &addr.to_string()]).args(&flags).arg("--data").arg(procs.data_dir("coordinator"));
        procs.spawn("coordinator", cmd);
        if wait_until(Duration::from_secs(10), || !procs.alive("coordinator") || accepts(addr)) && procs.alive("coordinator") {
            url = format!("https://{addr}");
            break;
        }
    }
    assert!(!url.is_empty(), "{}", procs.log("coordinator"));
    let (ok, _, stderr) = list_agents(&url, &pki.flags("ci"));
    assert!(!ok, "a coordinator certificate without --san 127.0.0.1 was accepted for 127.0.0.1");
    assert!(stderr.contains("does not name the URL's host"), "{stderr}");
}

/// Item 11: who submitted each run is logged and kept in the run store.
#[test]
fn each_submitted_run_records_its_submitter() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    let url = tls_coordinator(&mut procs, &pki);
    let target = procs.target("target", &[]);
    let mut flags = pki.flags("agent1");
    flags.extend(pki.token_flag());
    agent(&mut procs, "a1", &url, &flags);
    assert!(wait_until(Duration::from_secs(10), || agent_ids(&list_agents(&url, &pki.flags("ci")).1) == ["a1"]), "{}", procs.logs());
    let plan = plan(procs.dir.path(), target, 1);
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--expect-agents", "1", "--wait", "10s"]).args(pki.flags("ci"));
    let (code, stdout, stderr) = Background::start(cmd, procs.dir.path(), "run").finish(Duration::from_secs(30));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}\n{}", procs.logs());

    let log = procs.log("coordinator");
    let line = log.lines().find(|l| l.contains("Run submitted.")).unwrap_or_else(|| panic!("no `Run submitted.` line:\n{log}"));
    assert!(line.contains("operator ci") && line.contains("127.0.0.1:"), "{line}");
    let runs = procs.data_dir("coordinator").join("runs");
    let stored: Vec<PathBuf> = std::fs::read_dir(&runs).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stored[0].join("meta.json")).expect("meta.json in the stored run")).unwrap();
    assert_eq!(meta["submitted_by"]["role"], "operator", "{meta:#}");
    assert_eq!(meta["submitted_by"]["name"], "ci", "{meta:#}");
    assert!(meta["submitted_by"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{meta:#}");
}

/// Item 13: every connection failure got the "use https://" hint, even a
/// port nobody listens on. A refused connection says so, without the hint.
#[test]
fn a_refused_connection_says_refused_without_the_https_hint() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}", free_port());
    let insecure = vec!["--insecure".to_string()];
    let (ok, _, stderr) = list_agents(&url, &insecure);
    assert!(!ok);
    assert!(stderr.contains("connection refused") && stderr.contains("nothing listens"), "{stderr}");
    assert!(!stderr.contains("https://"), "the https hint on a refused connection:\n{stderr}");

    let plan = plan(dir.path(), "127.0.0.1:9".parse().unwrap(), 1);
    let out = stampede_output(&["run", plan.to_str().unwrap(), "--coordinator", &url, "--insecure"], Duration::from_secs(15));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("https://"), "{stderr}");

    let mut procs = Procs::new();
    agent(&mut procs, "lonely", &url, &insecure);
    assert!(log_says(&procs, "lonely", "connection refused", Duration::from_secs(10)), "{}", procs.log("lonely"));
    assert!(!procs.log("lonely").contains("https://"), "{}", procs.log("lonely"));
}

/// Item 13: a plain-text agent against a TLS coordinator got only
/// `h2 FRAME_SIZE_ERROR`. It must say that the server speaks TLS.
#[test]
fn plain_text_against_a_tls_coordinator_says_the_server_speaks_tls() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    let url = tls_coordinator(&mut procs, &pki);
    let plain = url.replace("https://", "http://");
    let insecure = vec!["--insecure".to_string()];
    let (ok, _, stderr) = list_agents(&plain, &insecure);
    assert!(!ok);
    assert!(stderr.contains("speaks TLS, but we dialed plain text"), "{stderr}");
    assert!(stderr.contains("https://"), "the hint belongs here:\n{stderr}");

    agent(&mut procs, "plain", &plain, &insecure);
    assert!(log_says(&procs, "plain", "speaks TLS, but we dialed plain text", Duration::from_secs(10)), "{}", procs.log("plain"));
    assert!(!procs.log("plain").contains("FRAME_SIZE_ERROR"), "{}", procs.log("plain"));
}

/// Item 13: TLS against a plain-text coordinator says the server is plain text.
#[test]
fn tls_against_a_plain_text_coordinator_says_the_server_is_plain_text() {
    let mut procs = Procs::new();
    let pki = fleet_pki(procs.dir.path());
    let url = insecure_coordinator(&mut procs);
    let tls = url.replace("http://", "https://");
    let (ok, _, stderr) = list_agents(&tls, &pki.flags("ci"));
    assert!(!ok);
    assert!(stderr.contains("speaks plain text, but we dialed TLS"), "{stderr}");

    let mut flags = pki.flags("agent1");
    flags.extend(pki.token_flag());
    agent(&mut procs, "tls", &tls, &flags);
    assert!(log_says(&procs, "tls", "speaks plain text, but we dialed TLS", Duration::from_secs(10)), "{}", procs.log("tls"));
}

/// Item 13: a coordinator killed mid-run was reported with the "use
/// https://" hint, to the agent and to `stampede run --coordinator`. The
/// client must say that the connection broke, the agent (reconnecting)
/// that it is refused, and neither gives the hint.
#[test]
fn a_killed_coordinator_is_reported_as_gone_without_the_https_hint() {
    let mut procs = Procs::new();
    let url = insecure_coordinator(&mut procs);
    let target = procs.target("target", &[]);
    agent(&mut procs, "a1", &url, &["--insecure".to_string()]);
    procs.wait_for_agents(&url, &["a1"], Duration::from_secs(10));
    let plan = plan(procs.dir.path(), target, 10);
    let mut cmd = Command::new(stampede());
    cmd.arg("run").arg(&plan).args(["--coordinator", &url, "--insecure", "--expect-agents", "1"]);
    let mut run = Background::start(cmd, procs.dir.path(), "run");
    assert!(wait_until(Duration::from_secs(10), || run.stderr_text().contains('[')), "the run did not start:\n{}\n{}", run.stderr_text(), procs.logs());
    let coordinator = procs.get("coordinator");
    coordinator.child.kill().unwrap();
    coordinator.child.wait().unwrap();

    let (code, _, stderr) = run.finish(Duration::from_secs(15));
    assert_eq!(code, 2, "{stderr}");
    let last = stderr.lines().rev().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    assert!(last.contains("the connection to the coordinator") && last.contains("the connection broke"), "{last}");
    assert!(!last.contains("https://"), "{last}");
    assert!(log_says(&procs, "a1", "connection refused", Duration::from_secs(10)), "{}", procs.log("a1"));
    assert!(!procs.log("a1").contains("https://"), "{}", procs.log("a1"));
}
