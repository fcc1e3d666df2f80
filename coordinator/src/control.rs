//! The standing coordinator's control API: `stampede run --coordinator URL`
//! submits a plan here and streams progress and the final reports back; each
//! run's reports are also kept in the run store (`store.rs`).

use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use stampede_common::plan::{load_str, Format};
use stampede_common::tls::Role;
use stampede_proto::v1::control_service_server::ControlService;
use stampede_proto::v1::run_event::Event;
use stampede_proto::v1::{AgentInfo, ListAgentsRequest, ListAgentsResponse, RunEvent, RunResult, SubmitRunRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::caller::{authorize, Caller};
use crate::fleet::Fleet;
use crate::orchestrate::{self, RunRequest};
use crate::report::{self, Report};
use crate::store::{RunStore, StoredRun};

#[derive(Clone)]
pub struct Control {
    pub fleet: Fleet,
    /// Where every run is kept when it ends (`--data DIR`).
    pub store: RunStore,
}

type Events = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;

fn result(exit_code: i32, error: String) -> RunEvent {
    RunEvent { event: Some(Event::Result(RunResult { exit_code, error, ..Default::default() })) }
}

#[tonic::async_trait]
impl ControlService for Control {
    type SubmitRunStream = Events;

    async fn submit_run(&self, request: Request<SubmitRunRequest>) -> Result<Response<Events>, Status> {
        let caller = authorize(&request, "the control API (ControlService.SubmitRun)", Role::Operator)?;
        let req = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<RunEvent, Status>>(256);
        let format = Format::from_name(&req.plan_format).ok_or_else(|| Status::invalid_argument(format!("unknown plan format `{}`", req.plan_format)))?;
        let mut plan = match load_str(&req.plan_text, format, Path::new(&req.plan_name)) {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Ok(result(2, e.to_string()))).await;
                return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
            }
        };
        if self.fleet.is_busy() {
            return Err(Status::failed_precondition("another run is in progress on this coordinator; try again when it ends"));
        }
        tracing::info!(message = "Run submitted.", submitter = %caller, plan = %req.plan_name);
        let fleet = self.fleet.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            let target = match crate::local::start_builtin_target(&mut plan).await {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send(Ok(result(2, format!("{e:#}")))).await;
                    return;
                }
            };
            let progress_tx = tx.clone();
            let progress = move |line: String| {
                let _ = progress_tx.try_send(Ok(RunEvent { event: Some(Event::Progress(line)) }));
            };
            // A client that hangs up aborts its run rather than leaving it orphaned.
            let abort = CancellationToken::new();
            let watch = {
                let abort = abort.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    tx.closed().await;
                    abort.cancel();
                })
            };
            let request = RunRequest { plan, expect_agents: req.expect_agents as usize, wait: Duration::from_millis(req.wait_ms.max(1)), dry_run: false };
            let event = match orchestrate::execute(&fleet, request, abort, &progress).await {
                Ok(r) => {
                    let result = RunResult {
                        exit_code: r.verdict.exit_code(),
                        verdict: r.verdict.as_str().into(),
                        report_json: serde_json::to_string_pretty(&r).expect("reports serialize"),
                        report_md: report::markdown(&r),
                        report_junit: report::junit_xml(&r),
                        report_html: report::html(&r),
                        error: String::new(),
                    };
                    // The run's last progress line says where it was kept; the
                    // client gets its result whether or not that worked.
                    let line = store_run(&store, &r, &result, &req.plan_name, &req.plan_text, &caller).await;
                    let _ = tx.send(Ok(RunEvent { event: Some(Event::Progress(line)) })).await;
                    RunEvent { event: Some(Event::Result(result)) }
                }
                Err(e) => result(2, e.to_string()),
            };
            watch.abort();
            let _ = tx.send(Ok(event)).await;
            if let Some(t) = target {
                t.shutdown().await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_agents(&self, request: Request<ListAgentsRequest>) -> Result<Response<ListAgentsResponse>, Status> {
        authorize(&request, "the control API (ControlService.ListAgents)", Role::Operator)?;
        let agents = self
            .fleet
            .agents()
            .into_iter()
            .map(|a| AgentInfo {
                busy: self.fleet.in_run(&a.id),
                agent_id: a.id,
                labels: a.labels.into_iter().collect(),
                capacity: a.capacity,
                capabilities: a.capabilities,
                clock_offset_nanos: a.clock_offset_nanos,
                last_seen_unix_nanos: stampede_proto::convert::unix_nanos(a.last_seen),
            })
            .collect();
        Ok(Response::new(ListAgentsResponse { agents }))
    }
}

/// Keeps a finished run in the store; returns the line that tells the client
/// where, or — loudly, in the coordinator's log too — why not.
async fn store_run(store: &RunStore, r: &Report, res: &RunResult, plan_name: &str, plan_text: &str, caller: &Caller) -> String {
    let (store, run_id, started_at) = (store.clone(), r.run_id.clone(), r.started_at.clone());
    let (json, md, junit, html) = (res.report_json.clone(), res.report_md.clone(), res.report_junit.clone(), res.report_html.clone());
    let (plan_name, plan_text, submitted_by) = (plan_name.to_string(), plan_text.to_string(), caller.to_json());
    let runs = store.runs_dir().to_path_buf();
    let saved = tokio::task::spawn_blocking(move || {
        let run = StoredRun {
            run_id: &run_id,
            started_at: &started_at,
            report_json: &json,
            report_md: &md,
            report_html: &html,
            junit_xml: &junit,
            plan_name: &plan_name,
            plan_text: &plan_text,
            submitted_by: &submitted_by,
        };
        store.save(&run)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(format!("the writer failed: {e}"))));
    match saved {
        Ok(dir) => {
            tracing::info!(message = "Run stored.", run_id = %r.run_id, path = %dir.display());
            format!("run {}: stored in {}", r.run_id, dir.display())
        }
        Err(e) => {
            tracing::error!(message = "Could not store the run; the client's copy is the only one.", run_id = %r.run_id, store = %runs.display(), error = %e);
            format!("run {}: ERROR: could not store the run in {}: {e}; the reports sent to this client are the only copy", r.run_id, runs.display())
        }
    }
}
