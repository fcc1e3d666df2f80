//! Serving the coordinator's gRPC services on a listener until shutdown.

use std::net::SocketAddr;

use stampede_common::tls::{self, ServerTls, Token};
use stampede_proto::v1::agent_service_server::AgentServiceServer;
use stampede_proto::v1::control_service_server::ControlServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::control::Control;
use crate::fleet::Fleet;
use crate::service::AgentSessions;

/// A long run's reports, sent to the control client, can exceed tonic's
/// 4 MiB default; plans submitted there are as large as a user writes them.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The largest message an agent may send. tonic reads a message's length
/// from its frame header and refuses it before buffering it, so this is
/// also what one session can make the coordinator hold for one message.
/// A legitimate snapshot holds one entry per (phase, step, outcome) that
/// was active in its interval, three compressed histograms each (a few KiB
/// apiece, at most ~210 KiB inflated): a plan with 100 steps active in one
/// interval stays under a few MiB. A message over this ends the session as
/// refused (`service.rs`), and the run names the agent.
pub const MAX_AGENT_MESSAGE: usize = 16 * 1024 * 1024;

/// Who may talk to the coordinator. The default — no TLS, no token — is
/// `--insecure`; the in-process agents of `stampede run --local-agents` dial
/// plain text on 127.0.0.1 with a token made for the run (`local::security`).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Mutual TLS: every client (agent or control client) presents a
    /// certificate signed by the coordinator's CA.
    pub tls: Option<ServerTls>,
    /// The enrollment token agents must present on their session.
    pub token: Option<Token>,
}

/// Starts serving on `listener`; the task ends when `shutdown` is cancelled.
/// With `control`, also serves run submissions (a standing coordinator).
pub fn spawn(
    listener: TcpListener,
    fleet: Fleet,
    control: Option<Control>,
    security: Security,
    shutdown: CancellationToken,
) -> (SocketAddr, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let addr = listener.local_addr().expect("a bound listener has an address");
    let agents = AgentServiceServer::new(AgentSessions { fleet, token: security.token }).max_decoding_message_size(MAX_AGENT_MESSAGE);
    // HTTP/2 flow-control windows of 256 KiB a stream and 1 MiB a connection
    // (h2's default is 64 KiB): the coordinator sends a WINDOW_UPDATE when
    // half a window was read, so an agent's ~6 KB snapshots a second cost
    // one every ~20 s instead of every ~5 s — at 1 000 agents a fifth of
    // the writes that are left once heartbeats are skipped.
    let mut router = tonic::transport::Server::builder()
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .add_service(agents);
    if let Some(c) = control {
        router = router.add_service(ControlServiceServer::new(c).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE));
    }
    let task = match security.tls {
        Some(t) => tokio::spawn(router.serve_with_incoming_shutdown(tls::incoming(listener, t), shutdown.cancelled_owned())),
        None => tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())),
    };
    (addr, task)
}
