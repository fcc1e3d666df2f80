//! Listener, accept loop, per-connection tasks and shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::arrivals::ArrivalLog;
use crate::behaviour::Behaviour;
use crate::service::{handle, Shared};
use crate::stats::TargetStats;

/// How long shutdown lets in-flight requests finish before aborting their
/// connections: long enough for typical injected latencies, short enough that a
/// 10 s latency setting cannot hang a test's teardown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a client may take over its TLS handshake (HTTPS targets).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Back-off after a failed `accept` (e.g. EMFILE) so the loop does not spin hot.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// A running target. Dropping it stops the server (without waiting); call
/// [`TargetHandle::shutdown`] to stop and wait.
#[derive(Debug)]
#[must_use = "dropping the handle stops the target"]
pub struct TargetHandle {
    /// The bound address (with the real port when bound to port 0).
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    accept_loop: JoinHandle<()>,
}

impl TargetHandle {
    /// Counters the target saw so far (requests, by status class).
    pub fn stats(&self) -> TargetStats {
        self.shared.counters.snapshot()
    }

    /// Every load request's path and query so far, in arrival order (empty
    /// unless [`crate::Behaviour::record_paths`]).
    pub fn paths(&self) -> Vec<String> {
        self.shared.paths.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The instant the server started: origin of the [`crate::Stall`] windows.
    pub fn started_at(&self) -> Instant {
        self.shared.started_at
    }

    /// Graceful stop: stop accepting, let in-flight requests finish for up to
    /// one second, close every connection, and wait for all of it.
    pub async fn shutdown(self) {
        // Err only if the accept loop already ended, which is the goal anyway.
        let _ = self.stop.send(true);
        if let Err(e) = self.accept_loop.await {
            tracing::warn!(error = %e, "target accept loop ended abnormally");
        }
    }
}

/// Binds `addr` (port 0 = ephemeral) and serves on the current tokio runtime;
/// returns once listening. Fails with `InvalidInput` on a nonsensical [`Behaviour`].
pub async fn serve(addr: SocketAddr, behaviour: Behaviour) -> io::Result<TargetHandle> {
    serve_with(addr, behaviour, None).await
}

/// [`serve`], also appending the first request of every new peer IP to
/// `arrivals` (see [`ArrivalLog`]).
pub async fn serve_with(
    addr: SocketAddr,
    behaviour: Behaviour,
    arrivals: Option<ArrivalLog>,
) -> io::Result<TargetHandle> {
    serve_tls(addr, behaviour, arrivals, None).await
}

/// [`serve_with`], serving HTTPS with `tls` when given (see
/// [`crate::TlsMaterial`]): each connection's handshake runs in its own
/// task, and one that fails is closed (and counted in `tls_failures`).
pub async fn serve_tls(
    addr: SocketAddr,
    behaviour: Behaviour,
    arrivals: Option<ArrivalLog>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<TargetHandle> {
    behaviour.validate()?;
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let after_pause = behaviour.after_pause.is_some();
    let shared = Arc::new(Shared::new(behaviour, Instant::now(), arrivals));
    if after_pause {
        spawn_pause_ticker(Arc::downgrade(&shared))?;
    }
    let (stop, stop_rx) = watch::channel(false);
    let tls = tls.map(TlsAcceptor::from);
    let accept_loop = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx, tls));
    tracing::debug!(%local_addr, "target bound");
    Ok(TargetHandle {
        local_addr,
        shared,
        stop,
        accept_loop,
    })
}

/// Serves until `shutdown` completes, then shuts down gracefully. For the
/// `stampede target --listen ADDR` subcommand; logs "Target listening." via tracing.
pub async fn serve_until(
    addr: SocketAddr,
    behaviour: Behaviour,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_until_with(addr, behaviour, None, shutdown).await
}

/// [`serve_until`] with an [`ArrivalLog`].
pub async fn serve_until_with(
    addr: SocketAddr,
    behaviour: Behaviour,
    arrivals: Option<ArrivalLog>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_until_tls(addr, behaviour, arrivals, None, shutdown).await
}

/// [`serve_until_with`], serving HTTPS with `tls` when given.
pub async fn serve_until_tls(
    addr: SocketAddr,
    behaviour: Behaviour,
    arrivals: Option<ArrivalLog>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let handle = serve_tls(addr, behaviour, arrivals, tls).await?;
    tracing::info!(addr = %handle.local_addr, "Target listening.");
    shutdown.await;
    tracing::info!(addr = %handle.local_addr, "Target stopping.");
    handle.shutdown().await;
    Ok(())
}

/// Notices the process being stopped and resumed (SIGSTOP/SIGCONT, as a
/// process fault does): the monotonic clock runs on while the process is
/// stopped, so the tick after a resume comes late. A thread, not a task, so
/// a busy runtime is not mistaken for a pause. Ends with the server.
fn spawn_pause_ticker(shared: std::sync::Weak<Shared>) -> io::Result<()> {
    std::thread::Builder::new().name("target-pause-ticker".into()).spawn(move || {
        let mut last = Instant::now();
        loop {
            std::thread::sleep(crate::behaviour::PAUSE_TICK);
            let Some(shared) = shared.upgrade() else { return };
            let now = Instant::now();
            if crate::behaviour::was_paused(now - last) {
                let since = now.saturating_duration_since(shared.started_at);
                let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1);
                shared.resumed_nanos.store(nanos + 1, Ordering::Relaxed);
                tracing::info!(paused_ms = (now - last).as_millis() as u64, "Target resumed after a pause; answering the after_pause status for a while.");
            }
            last = now;
        }
    })?;
    Ok(())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>, tls: Option<TlsAcceptor>) {
    let mut builder = http1::Builder::new();
    builder
        // No header-read timeout: it would arm a timer per request, and slowloris
        // protection is pointless for a test target facing our own load generator.
        .header_read_timeout(None)
        // Minimal responses: fewer bytes per request, no date formatting.
        .auto_date_header(false);
    // Owning the connection tasks lets shutdown abort the stragglers and wait.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Stop wins over a ready accept so shutdown is not starved under load.
            biased;
            // Err = handle dropped: stop as well rather than serve forever unowned.
            res = stop.changed() => if res.is_err() || *stop.borrow() { break },
            // Reap finished connections so the set does not grow without bound.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined {
                    tracing::warn!(error = %e, "target connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                // A refuse window: close at once, answering nothing.
                Ok((stream, _)) if shared.refusing() => drop(stream),
                Ok((stream, peer)) => {
                    crate::stats::Counters::bump(&shared.counters.connections);
                    let conn = serve_connection(&builder, stream, peer, shared.clone(), stop.clone(), tls.clone());
                    connections.spawn(conn);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "target accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    // Closing the listener first makes new connects fail fast during the grace period.
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(
            left = connections.len(),
            "target aborting connections after grace period"
        );
    }
    connections.shutdown().await;
}

/// Drives one keep-alive connection until the client closes it or shutdown asks
/// hyper to finish the in-flight request and close.
fn serve_connection(
    builder: &http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    tls: Option<TlsAcceptor>,
) -> impl Future<Output = ()> + Send + 'static {
    // Small responses must not wait for Nagle/delayed-ACK (~40 ms stalls).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "target could not set TCP_NODELAY");
    }
    // Only a connection's first request can be its peer's first: later ones
    // skip the arrivals log's lock (`logged` starts true when there is none).
    let logged = AtomicBool::new(shared.arrivals.is_none());
    let shared_for_count = shared.clone();
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        if !logged.load(Ordering::Relaxed) && req.uri().path() != "/health" {
            logged.store(true, Ordering::Relaxed);
            if let Some(log) = &shared.arrivals {
                log.first_request(peer.ip(), SystemTime::now());
            }
        }
        handle(shared.clone(), req)
    });
    let builder = builder.clone();
    let open = shared_for_count.open_connections.fetch_add(1, Ordering::Relaxed) + 1;
    shared_for_count.max_connections.fetch_max(open, Ordering::Relaxed);
    async move {
        // The same driving for either stream type (hyper's connection is
        // generic over it).
        macro_rules! drive {
            ($io:expr) => {{
                let conn = builder.serve_connection(TokioIo::new($io), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => res,
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }};
        }
        let result = match tls {
            None => drive!(stream),
            Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => drive!(tls_stream),
                failed => {
                    crate::stats::Counters::bump(&shared_for_count.counters.tls_failures);
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::debug!(%peer, error = %why, "target TLS handshake failed");
                    Ok(())
                }
            },
        };
        shared_for_count.open_connections.fetch_sub(1, Ordering::Relaxed);
        // Client resets and half-finished requests are routine under load tests.
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "target connection ended with error");
        }
    }
}
