//! What `stampede run` starts in its own process: the built-in target when
//! the plan asks for one, and `--local-agents N` agents that dial this
//! coordinator over real gRPC on loopback — the same code path as a fleet.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use stampede_agent::session::{self, AgentConfig};
use stampede_common::plan::{BuiltinTarget, Plan, TargetTls};
use stampede_common::tls::Token;
use stampede_target::{AfterPause, Behaviour, RequireHeader, Stall, TargetHandle, TlsMaterial, Window, WindowAction};
use tokio_util::sync::CancellationToken;

pub fn behaviour(b: &BuiltinTarget) -> Behaviour {
    Behaviour {
        latency: b.latency.map(|d| d.as_duration()).unwrap_or_default(),
        latency_max: b.latency_max.map(|d| d.as_duration()),
        error_ratio: b.error_rate.map_or(0.0, |p| p.ratio()),
        stall: b.stall.map(|s| Stall { every: s.every.as_duration(), hold: s.hold.as_duration() }),
        windows: b
            .windows
            .iter()
            .map(|w| Window {
                at: w.at.as_duration(),
                length: w.length.as_duration(),
                action: match (w.status, w.refuse == Some(true)) {
                    (Some(s), _) => WindowAction::Status(s),
                    (None, true) => WindowAction::Refuse,
                    (None, false) => WindowAction::Stall,
                },
            })
            .collect(),
        after_pause: b.after_pause.map(|p| AfterPause { length: p.length.as_duration(), status: p.status }),
        // The plan's secrets are resolved by now: the target wants the value as sent.
        require_header: b.require_header.as_ref().map(|h| RequireHeader { name: h.name.clone(), value: h.value.sent().as_bytes().to_vec() }),
        jobs: {
            let (spec, default) = (b.jobs.unwrap_or_default(), stampede_target::Jobs::default());
            stampede_target::Jobs {
                done_after: spec.done_after.map_or(default.done_after, |d| d.as_duration()),
                never_finish: spec.never_finish.map_or(default.never_finish, |p| p.ratio()),
            }
        },
        ..Behaviour::default()
    }
}

/// The plan's built-in target, and for an HTTPS one the directory holding
/// its generated CA and client certificate (removed with it).
pub struct LocalTarget {
    pub handle: TargetHandle,
    files: Option<tempfile::TempDir>,
}

impl LocalTarget {
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        drop(self.files);
    }
}

/// Starts the plan's built-in target, if it has one, on the target URL's
/// address, and points the plan at the port it actually got. With
/// `builtin_target.tls`, the target serves HTTPS with a certificate from a
/// CA generated now, and the plan trusts that CA (`tls.ca`, unless it
/// sets `ca` or `insecure_skip_verify` itself); with `require_client_cert`,
/// the plan's agents present a client certificate of that CA unless the
/// plan names one (`tls.cert`, `tls.key`). The in-process agents read those
/// files from this machine.
pub async fn start_builtin_target(plan: &mut Plan) -> anyhow::Result<Option<LocalTarget>> {
    let Some(b) = plan.builtin_target.clone() else { return Ok(None) };
    let authority = stampede_agent::engine::authority(&plan.target)?;
    let addr: SocketAddr = authority.parse().map_err(|_| {
        anyhow::anyhow!("builtin_target needs `target` to be an IP address and port, e.g. http://127.0.0.1:0 or https://127.0.0.1:0; got {}", plan.target)
    })?;
    let (tls, files) = if b.tls {
        let names = vec![addr.ip().to_string(), "localhost".to_string()];
        let material = TlsMaterial::generate(&names, b.require_client_cert).map_err(|e| anyhow::anyhow!("generating the built-in target's certificates: {e}"))?;
        let dir = tempfile::Builder::new().prefix("stampede-target-tls-").tempdir().map_err(|e| anyhow::anyhow!("a directory for the built-in target's certificates: {e}"))?;
        let written = material.write(dir.path()).map_err(|e| anyhow::anyhow!("writing the built-in target's certificates: {e}"))?;
        let t = plan.tls.get_or_insert_with(TargetTls::default);
        if t.ca.is_none() && !t.insecure_skip_verify {
            t.ca = Some(written.ca.display().to_string());
        }
        if b.require_client_cert && t.cert.is_none() {
            t.cert = Some(written.client_cert.display().to_string());
            t.key = Some(written.client_key.display().to_string());
        }
        (Some(material.server_config().map_err(|e| anyhow::anyhow!("the built-in target's TLS configuration: {e}"))?), Some(dir))
    } else {
        (None, None)
    };
    let handle = stampede_target::serve_tls(addr, behaviour(&b), None, tls).await.map_err(|e| anyhow::anyhow!("cannot start the built-in target on {addr}: {e}"))?;
    let scheme = if b.tls { "https" } else { "http" };
    plan.target = format!("{scheme}://{}", handle.local_addr);
    tracing::info!(message = "Built-in target listening.", addr = %handle.local_addr, tls = b.tls);
    Ok(Some(LocalTarget { handle, files }))
}

/// The in-process coordinator's guard: plain text on loopback, and a token
/// made for this run, so that another local process which finds the port
/// cannot register as an agent (and receive the plan, or send snapshots).
pub fn security() -> anyhow::Result<crate::server::Security> {
    let token = Token::new(&Token::generate()?)?;
    Ok(crate::server::Security { tls: None, token: Some(token) })
}

/// Spawns `n` agents in this process, splitting this machine's cores between them.
/// `probe`: whether they probe their fault capabilities (only a plan with
/// faults needs them).
pub fn spawn_agents(
    n: usize,
    coordinator: SocketAddr,
    token: Option<&Token>,
    workers: Option<usize>,
    state_dir: &std::path::Path,
    probe: bool,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let workers = workers.unwrap_or((cores / n.max(1)).max(1));
    (0..n)
        .map(|i| {
            let cfg = AgentConfig {
                // Loopback inside this process: plain text, this run's token.
                coordinator: format!("http://{coordinator}"),
                tls: None,
                token: token.cloned(),
                agent_id: format!("local-{i}"),
                labels: BTreeMap::from([("local".to_string(), i.to_string())]),
                capacity: 1,
                workers,
                node: session::host_name(),
                state_dir: state_dir.join(format!("local-{i}")),
                lease: session::DEFAULT_LEASE,
                probe_capabilities: probe,
            };
            tokio::spawn(session::run(cfg, shutdown.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use stampede_proto::v1::agent_service_client::AgentServiceClient;
    use stampede_proto::v1::AgentMessage;
    use tokio_stream::wrappers::ReceiverStream;

    use crate::fleet::Fleet;

    /// Issue 8 item 11: the coordinator of `stampede run --local-agents`
    /// served AgentService on loopback with no token, so any local process
    /// that found the port could register as an agent during the run.
    #[tokio::test]
    async fn the_in_process_coordinator_refuses_an_agent_without_its_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (addr, server) = crate::server::spawn(listener, Fleet::default(), None, super::security().unwrap(), shutdown.clone());
        let mut client = AgentServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let (_tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(1);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), client.session(ReceiverStream::new(rx))).await;
        let refused = answer.expect("the coordinator answers at once").expect_err("an agent without the run's token is refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        shutdown.cancel();
        let _ = server.await;
    }
}
