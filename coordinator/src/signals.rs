//! The stop signals every long-running `stampede` command obeys alike:
//! SIGINT (Ctrl-C), SIGTERM (systemd, Kubernetes, CI runners cancelling a
//! job) and SIGHUP (a closed terminal or ssh session). Before this, only
//! Ctrl-C stopped a run gracefully; SIGTERM killed the process with its
//! faults still applied and no report (issue 8, item 4).
//!
//! Handlers are installed once, as early as possible: from then on none of
//! these signals kills the process by default, so a stop always goes
//! through the graceful path that reverts faults.

use std::sync::{Arc, OnceLock};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

pub struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())?, hup: signal(SignalKind::hangup())? })
    }

    /// The next stop signal's name (`SIGTERM`).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// A request to stop a run early, with why: the report's `interrupted`
/// reason names it (a signal, the client going away, a shutdown).
#[derive(Clone, Default)]
pub struct Interrupt {
    token: CancellationToken,
    reason: Arc<OnceLock<String>>,
}

impl Interrupt {
    /// The first reason given wins; later calls change nothing.
    pub fn trigger(&self, reason: impl Into<String>) {
        let _ = self.reason.set(reason.into());
        self.token.cancel();
    }

    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn reason(&self) -> &str {
        self.reason.get().map_or("stopped", String::as_str)
    }
}
