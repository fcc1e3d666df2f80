//! The standing coordinator's control API: `stampede run --coordinator URL`
//! submits a plan here and streams progress and the final reports back; each
//! run's reports are also kept in the run store (`store.rs`).

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stampede_common::plan::data::{DataFiles, DataSets};
use stampede_common::plan::{load_str_with, redact, Format, Params, SecretSource};
use stampede_common::tls::Role;
use stampede_proto::v1::control_service_server::ControlService;
use stampede_proto::v1::run_event::Event;
use stampede_proto::v1::{AgentInfo, HaltRequest, HaltResponse, ListAgentsRequest, ListAgentsResponse, RunEvent, RunResult, SubmitRunRequest};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::caller::{authorize, Caller};
use crate::fleet::Fleet;
use crate::halt::{self, CurrentRun};
use crate::orchestrate::{self, RunRequest};
use crate::report::{self, Report};
use crate::signals::Interrupt;
use crate::store::{RunStore, StoredRun};

#[derive(Clone)]
pub struct Control {
    pub fleet: Fleet,
    /// Where every run is kept when it ends (`--data DIR`).
    pub store: RunStore,
    /// Set when the coordinator stops: refuse new runs, interrupt the current one.
    stopping: Interrupt,
    /// Runs whose task has not ended yet (0 or 1: one run at a time).
    running: watch::Sender<usize>,
    /// The run in progress, for `halt`.
    current: Arc<Mutex<Option<CurrentRun>>>,
}

type Events = Pin<Box<dyn Stream<Item = Result<RunEvent, Status>> + Send>>;

/// Which submit RPC was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    DryRun,
    /// `--simulate-faults`: the load for real, the faults only announced.
    Simulate,
}

fn result(exit_code: i32, error: String) -> RunEvent {
    RunEvent { event: Some(Event::Result(RunResult { exit_code, error, ..Default::default() })) }
}

fn progress_event(line: String) -> Result<RunEvent, Status> {
    Ok(RunEvent { event: Some(Event::Progress(line)) })
}

impl Control {
    pub fn new(fleet: Fleet, store: RunStore) -> Control {
        Control { fleet, store, stopping: Interrupt::default(), running: watch::Sender::new(0), current: Arc::default() }
    }

    /// Stops the coordinator's runs: no new one is accepted, the one in
    /// progress is interrupted with `reason` (its agents revert their
    /// faults) and this waits, at most `limit`, until it has been stored and
    /// sent to its client. False if it had not ended by then.
    pub async fn shut_down(&self, reason: &str, limit: Duration) -> bool {
        self.stopping.trigger(reason);
        let mut running = self.running.subscribe();
        tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await.is_ok_and(|r| r.is_ok())
    }

    /// The three submit RPCs: a real run, one (`Mode::DryRun`) that lists
    /// the faults' commands and touches nothing, or one whose faults are
    /// only announced (`Mode::Simulate`).
    async fn submit(&self, req: SubmitRunRequest, caller: Caller, mode: Mode) -> Result<Response<Events>, Status> {
        let dry_run = mode == Mode::DryRun;
        let (tx, rx) = mpsc::channel::<Result<RunEvent, Status>>(256);
        let format = Format::from_name(&req.plan_format).ok_or_else(|| Status::invalid_argument(format!("unknown plan format `{}`", req.plan_format)))?;
        // Taken literally (the client substituted `${NAME}` and applied its
        // flags); secrets come from the request, in memory for this run only.
        // A dry run sends none and needs none.
        let loaded = {
            let secrets = stampede_proto::secrets_from_wire(&req.secrets);
            let source = if dry_run { SecretSource::Unresolved } else { SecretSource::Given(&secrets) };
            match data_from_wire(&req.data_files) {
                Ok(sets) => {
                    // A dry run's client may lack a data file; it prints the plan anyway.
                    let given = DataFiles::Given(&sets);
                    let data = if dry_run { DataFiles::IfPresent(&given) } else { given };
                    load_str_with(&req.plan_text, format, Path::new(&req.plan_name), &Params { secrets: source, data, ..Params::default() })
                }
                Err(message) => Err(stampede_common::plan::PlanError { file: req.plan_name.clone().into(), line: None, path: String::new(), message }),
            }
        };
        let mut plan = match loaded {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Ok(result(2, e.to_string()))).await;
                return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
            }
        };
        if self.stopping.is_triggered() {
            return Err(Status::unavailable(format!("{}: it accepts no new runs", self.stopping.reason())));
        }
        if self.fleet.is_busy() {
            return Err(Status::failed_precondition("another run is in progress on this coordinator; try again when it ends"));
        }
        tracing::info!(message = "Run submitted.", submitter = %caller, plan = %req.plan_name, dry_run, simulate_faults = mode == Mode::Simulate);
        let this = self.clone();
        self.running.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            // A dry run contacts no target: its built-in one is not started.
            let target = if dry_run { Ok(None) } else { crate::local::start_builtin_target(&mut plan).await };
            match target {
                Ok(target) => {
                    this.execute(req, plan, &caller, mode, &tx).await;
                    if let Some(t) = target {
                        t.shutdown().await;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Ok(result(2, format!("{e:#}")))).await;
                }
            }
            this.running.send_modify(|n| *n -= 1);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn execute(&self, req: SubmitRunRequest, plan: stampede_common::plan::Plan, caller: &Caller, mode: Mode, tx: &mpsc::Sender<Result<RunEvent, Status>>) {
        let dry_run = mode == Mode::DryRun;
        let progress_tx = tx.clone();
        // Whatever echoes a secret's value (a target quoting a header) is
        // redacted before it leaves: progress, reports, the run store.
        let secrets = plan.secret_values();
        let clean = move |text: String| redact(&text, &secrets);
        let progress = {
            let clean = clean.clone();
            move |line: String| {
                let _ = progress_tx.try_send(progress_event(clean(line)));
            }
        };
        // A client that hangs up aborts its run rather than leaving it
        // orphaned; a coordinator that stops aborts it too.
        let abort = Interrupt::default();
        let watch = {
            let (abort, tx, stopping) = (abort.clone(), tx.clone(), self.stopping.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tx.closed() => abort.trigger("the client went away"),
                    _ = stopping.triggered() => {
                        let _ = tx.send(progress_event(format!("{}: aborting the run, reverting its faults and storing it", stopping.reason()))).await;
                        abort.trigger(stopping.reason());
                    }
                }
            })
        };
        let request = RunRequest { plan, expect_agents: req.expect_agents as usize, wait: Duration::from_millis(req.wait_ms.max(1)), dry_run, simulate_faults: mode == Mode::Simulate };
        // `halt` interrupts it through the same `abort`, and waits on `done`.
        let (done, done_rx) = watch::channel(None);
        *self.current.lock().expect("the current run's lock is never held across a panic") = Some(CurrentRun { abort: abort.clone(), done: done_rx });
        let outcome = orchestrate::execute(&self.fleet, request, &abort, &progress).await.map(Arc::new);
        *self.current.lock().expect("the current run's lock is never held across a panic") = None;
        done.send_replace(Some(outcome.as_ref().map(Arc::clone).map_err(ToString::to_string)));
        let event = match outcome {
            Ok(r) if dry_run => {
                // Nothing ran, so nothing is stored; the listing is the
                // result, and its findings are the JSON (`dry-run.json`).
                let dry = r.dry_run.as_ref().expect("a dry run's report carries its findings");
                let result = RunResult {
                    exit_code: 0,
                    verdict: "dry_run".into(),
                    report_json: serde_json::to_string_pretty(dry).expect("dry runs serialize"),
                    report_md: crate::dryrun::listing(dry),
                    ..Default::default()
                };
                RunEvent { event: Some(Event::Result(result)) }
            }
            Ok(r) => {
                let result = RunResult {
                    exit_code: r.verdict.exit_code(),
                    verdict: r.verdict.as_str().into(),
                    report_json: clean(serde_json::to_string_pretty(&*r).expect("reports serialize")),
                    report_md: clean(report::markdown(&r)),
                    report_junit: clean(report::junit_xml(&r)),
                    report_html: clean(report::html(&r)),
                    error: String::new(),
                };
                // The run's last progress line says where it was kept; the
                // client gets its result whether or not that worked.
                let line = store_run(&self.store, &r, &result, &req.plan_name, &req.plan_text, caller).await;
                let _ = tx.send(progress_event(line)).await;
                RunEvent { event: Some(Event::Result(result)) }
            }
            Err(e) => result(2, clean(e.to_string())),
        };
        watch.abort();
        let _ = tx.send(Ok(event)).await;
    }
}

#[tonic::async_trait]
impl ControlService for Control {
    type SubmitRunStream = Events;
    type SubmitDryRunStream = Events;
    type SubmitSimulatedRunStream = Events;

    async fn submit_run(&self, request: Request<SubmitRunRequest>) -> Result<Response<Events>, Status> {
        let caller = authorize(&request, "the control API (ControlService.SubmitRun)", Role::Operator)?;
        self.submit(request.into_inner(), caller, Mode::Run).await
    }

    async fn submit_dry_run(&self, request: Request<SubmitRunRequest>) -> Result<Response<Events>, Status> {
        let caller = authorize(&request, "the control API (ControlService.SubmitDryRun)", Role::Operator)?;
        self.submit(request.into_inner(), caller, Mode::DryRun).await
    }

    async fn submit_simulated_run(&self, request: Request<SubmitRunRequest>) -> Result<Response<Events>, Status> {
        let caller = authorize(&request, "the control API (ControlService.SubmitSimulatedRun)", Role::Operator)?;
        self.submit(request.into_inner(), caller, Mode::Simulate).await
    }

    async fn halt(&self, request: Request<HaltRequest>) -> Result<Response<HaltResponse>, Status> {
        let caller = authorize(&request, "the control API (ControlService.Halt)", Role::Operator)?;
        let current = self.current.lock().expect("the current run's lock is never held across a panic").clone();
        Ok(Response::new(halt::halt(current, &caller.subject()).await?))
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

/// The data files a client sent, by the name the plan gives them.
fn data_from_wire(files: &[stampede_proto::v1::DataFile]) -> Result<DataSets, String> {
    files.iter().map(|f| Ok((f.file.clone(), std::sync::Arc::new(stampede_proto::data_from_wire(f)?)))).collect()
}
