//! A fake agent: a small real tonic client of `AgentService.Session` that
//! registers and then sends whatever messages a test hands it — forged,
//! oversize, in another agent's name — and shows what the coordinator
//! answered. It heartbeats every second, so the coordinator keeps its
//! session until the test or the coordinator ends it.
//!
//! ```ignore
//! let mut fake = FakeAgent::connect(&url, FakeAgent::register("forger", 7)).await?;
//! let run = fake.assignment(Duration::from_secs(10)).await;
//! fake.send(Up::Snapshot(Snapshot { run_id: run.run_id.clone(), ..fake.snapshot(&run, 0) })).await;
//! let status = fake.closed(Duration::from_secs(5)).await;
//! ```

use std::time::{Duration, SystemTime};

use stampede_proto::convert::unix_nanos;
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::agent_service_client::AgentServiceClient;
use stampede_proto::v1::coordinator_message::Msg as Down;
use stampede_proto::v1::{AgentMessage, Assignment, CoordinatorMessage, Heartbeat, Register, Snapshot};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

pub struct FakeAgent {
    pub id: String,
    tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<CoordinatorMessage>,
    /// The last delivery number used (run messages are numbered 1, 2, ...).
    delivery: u64,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl FakeAgent {
    /// A plausible registration: capacity 1, one worker, a 1 s lease, our clock.
    pub fn register(id: &str, instance: u64) -> Register {
        Register {
            agent_id: id.to_string(),
            capacity: 1,
            workers: 1,
            instance,
            lease_ms: 1000,
            version: "fake".into(),
            clock_unix_nanos: unix_nanos(SystemTime::now()),
            ..Default::default()
        }
    }

    /// Dials `url` (plain text), sends `register` and waits for
    /// `Registered`; a refused session is the coordinator's status.
    pub async fn connect(url: &str, register: Register) -> Result<FakeAgent, Status> {
        let mut client = AgentServiceClient::connect(url.to_string())
            .await
            .map_err(|e| Status::unavailable(format!("cannot dial {url}: {e}")))?
            // Senders set no limit of their own: the coordinator's is under test.
            .max_encoding_message_size(usize::MAX);
        let (tx, rx) = mpsc::channel(64);
        let id = register.agent_id.clone();
        tx.send(AgentMessage { msg: Some(Up::Register(register)), delivery: 0 }).await.expect("the queue is open");
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        match tokio::time::timeout(Duration::from_secs(5), inbound.next()).await {
            Ok(Some(Ok(CoordinatorMessage { msg: Some(Down::Registered(_)) }))) => {}
            Ok(Some(Err(status))) => return Err(status),
            other => return Err(Status::unknown(format!("expected Registered, got {other:?}"))),
        }
        let beat = tx.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let msg = AgentMessage { msg: Some(Up::Heartbeat(Heartbeat { clock_unix_nanos: unix_nanos(SystemTime::now()) })), delivery: 0 };
                if beat.send(msg).await.is_err() {
                    return;
                }
            }
        });
        Ok(FakeAgent { id, tx, inbound, delivery: 0, heartbeat })
    }

    /// Sends a message; run messages (snapshot, finished, fault) get the
    /// next delivery number, as a real agent's outbox numbers them.
    pub async fn send(&mut self, msg: Up) {
        let delivery = match msg {
            Up::Snapshot(_) | Up::Finished(_) | Up::Fault(_) => {
                self.delivery += 1;
                self.delivery
            }
            _ => 0,
        };
        self.send_raw(AgentMessage { msg: Some(msg), delivery }).await;
    }

    /// Sends exactly this message (a session that already ended ignores it).
    pub async fn send_raw(&self, msg: AgentMessage) {
        let _ = self.tx.send(msg).await;
    }

    /// The next message from the coordinator other than heartbeats, clock
    /// probes and delivery receipts; `None` when the stream ended cleanly or
    /// nothing came within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Result<CoordinatorMessage, Status>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.inbound.next()).await.ok()??;
            match &msg {
                Ok(CoordinatorMessage { msg: Some(Down::Heartbeat(_) | Down::ClockProbe(_) | Down::Delivered(_)) }) => continue,
                _ => return Some(msg),
            }
        }
    }

    /// Waits for this agent's assignment; panics on anything else.
    pub async fn assignment(&mut self, within: Duration) -> Assignment {
        match self.next(within).await {
            Some(Ok(CoordinatorMessage { msg: Some(Down::Assignment(a)) })) => a,
            other => panic!("{}: expected an Assignment within {within:?}, got {other:?}", self.id),
        }
    }

    /// Waits until the coordinator ends the session; returns the final
    /// status (`None` for a clean end). Panics if it is still open after
    /// `within`: a session the coordinator should have closed.
    pub async fn closed(&mut self, within: Duration) -> Option<Status> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.next()).await {
                Err(_) => panic!("{}: the coordinator kept the session open for {within:?}", self.id),
                Ok(None) => return None,
                Ok(Some(Err(status))) => return Some(status),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Whether the session is still open: a heartbeat arrives within `within`.
    pub async fn alive(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.inbound.next()).await {
                Ok(Some(Ok(CoordinatorMessage { msg: Some(Down::Heartbeat(_)) }))) => return true,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_)) | None) | Err(_) => return false,
            }
        }
    }

    /// A well-formed, empty snapshot of interval `seq` of the assigned run,
    /// with interval bounds as a real agent computes them.
    pub fn snapshot(&self, run: &Assignment, seq: u64, interval: Duration) -> Snapshot {
        // Wrapping: tests forge seqs far beyond any real interval.
        let start = (run.start_unix_nanos + run.clock_offset_nanos).wrapping_add((interval.as_nanos() as i64).wrapping_mul(seq as i64));
        Snapshot {
            run_id: run.run_id.clone(),
            agent_id: self.id.clone(),
            seq,
            interval_start_unix_nanos: start,
            interval_end_unix_nanos: start.wrapping_add(interval.as_nanos() as i64),
            ..Default::default()
        }
    }
}
