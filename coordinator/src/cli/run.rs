//! `stampede run`: a plan run with in-process agents, or submitted to a
//! standing coordinator; the report printed and written.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use stampede_common::plan::{redact, Format, Plan};
use stampede_common::tls::TlsArgs;
use stampede_common::units::Dur;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{client_tls, load_plan, PlanParams, EXIT_ERROR};
use crate::fleet::Fleet;
use crate::orchestrate::{self, RunRequest};
use crate::report::{self, Report};
use crate::signals::{Interrupt, StopSignals};
use crate::{local, remote, server};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The plan file (.yaml, .yml, .toml or .json).
    pub plan: PathBuf,
    #[command(flatten)]
    pub params: PlanParams,
    /// Start N agents in this process, dialing it over gRPC on loopback (default 1
    /// when --coordinator is not given).
    #[arg(long)]
    pub local_agents: Option<usize>,
    /// Submit the run to a standing coordinator instead.
    #[arg(long, conflicts_with = "local_agents")]
    pub coordinator: Option<String>,
    /// Write report.json, report.md, junit.xml and the plan here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// With --coordinator: how many agents to run on (default: all connected).
    #[arg(long, default_value_t = 0)]
    pub expect_agents: usize,
    /// How long to wait for the agents.
    #[arg(long, default_value = "30s")]
    pub wait: Dur,
    /// Worker threads per local agent (default: cores / agents).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Print, per agent and in time order, the exact commands each fault would
    /// run and what the preflight would say of it; generate no load and touch
    /// nothing. With --out, also write DIR/dry-run.json.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the load for real but only announce each fault at its time
    /// (logged, and `simulated` in the report): nothing is touched.
    #[arg(long, conflicts_with = "dry_run")]
    pub simulate_faults: bool,
    /// Where local agents keep their fault journals (default: a folder under the system temp dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// With --coordinator: mutual TLS (a client certificate signed by the
    /// coordinator's CA) or --insecure.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Live progress: one self-overwriting line on a terminal, a line per
/// interval in a CI log.
pub fn progress_printer() -> impl Fn(String) + Send + Sync {
    let tty = std::io::stderr().is_terminal();
    move |line: String| {
        if tty && line.starts_with('[') {
            eprint!("\r{line}\x1b[K");
        } else {
            if tty {
                eprintln!();
            }
            eprintln!("{line}");
        }
    }
}

/// Whether the in-process agents probe this node's fault capabilities at
/// start: only for a plan with faults that may apply them (or, in a dry
/// run, show what would refuse them). The probe runs `ip netns add`, `tc`
/// and `nft` in a throwaway namespace; a simulated run touches nothing, and
/// needs only the `simulate_faults` capability every agent declares.
fn probes_capabilities(plan: &Plan, simulate_faults: bool) -> bool {
    !plan.faults.is_empty() && !simulate_faults
}

/// `print` with every secret value in the line replaced by `***`: the
/// same last defence a standing coordinator applies to the progress it
/// sends (control.rs), for a run with in-process agents.
pub fn redacting(print: impl Fn(String) + Send + Sync, secrets: stampede_common::plan::SecretValues) -> impl Fn(String) + Send + Sync {
    move |line: String| print(redact(&line, &secrets))
}

pub(super) async fn run(args: RunArgs) -> anyhow::Result<i32> {
    // First: from here on a stop signal goes through the graceful path.
    let signals = StopSignals::install().context("installing the stop-signal handlers")?;
    // A dry run lists commands and sends nothing: it needs no secret, so it works anywhere.
    let plan = match load_plan(&args.plan, &args.params, !args.dry_run) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_ERROR);
        }
    };
    let text = std::fs::read_to_string(&args.plan).with_context(|| format!("reading {}", args.plan.display()))?;
    let file_name = args.plan.file_name().map_or("plan".into(), |n| n.to_string_lossy().into_owned());
    if let Some(url) = &args.coordinator {
        let format = Format::from_path(&args.plan).expect("load_file checked the extension");
        let tls = client_tls(&args.tls)?;
        let submission = remote::Submission::new(&plan, &file_name, &text, format, &args.params);
        return remote::submit(url, tls.as_ref(), &submission, &args, signals).await;
    }
    let secrets = plan.secret_values();
    let report = match run_local(plan, &args, signals).await? {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            // As a standing coordinator does before it sends an error.
            eprintln!("error: {}", redact(&e.to_string(), &secrets));
            return Ok(EXIT_ERROR);
        }
        None => {
            eprintln!("error: stopped by a second signal before the report was complete: no report written; every fault was reverted");
            return Ok(crate::verdict::Verdict::Incomplete.exit_code());
        }
    };
    if let Some(dry) = report.dry_run.as_ref().filter(|_| args.dry_run) {
        print!("{}", crate::dryrun::listing(dry));
        if let Some(out) = &args.out {
            write_dry_run(out, &serde_json::to_string_pretty(dry).expect("dry runs serialize"))?;
        }
        return Ok(0);
    }
    print!("{}", redact(&report::terminal_summary(&report), &secrets));
    if let Some(out) = &args.out {
        report::write_all(&report, &text, &file_name, out, &secrets).with_context(|| format!("writing reports to {}", out.display()))?;
        println!("\nreports written to {}", out.display());
    }
    Ok(report.verdict.exit_code())
}

/// `--dry-run --out DIR`: the findings as `DIR/dry-run.json`.
pub fn write_dry_run(out: &Path, json: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join(crate::dryrun::FILE);
    std::fs::write(&path, format!("{json}\n")).with_context(|| format!("writing {}", path.display()))?;
    println!("\ndry run written to {}", path.display());
    Ok(())
}

/// Runs with in-process agents: a coordinator on loopback, N agents dialing
/// it, and the built-in target if the plan wants one.
///
/// A first stop signal interrupts the run: agents stop and revert, and the
/// report (incomplete, `interrupted`) is built from what arrived. A second
/// one stops waiting for that report (`None`), as k6's second Ctrl-C does —
/// but the agents still revert their faults before this returns: a tool that
/// can cut networks never leaves one cut because someone pressed twice.
async fn run_local(mut plan: Plan, args: &RunArgs, mut signals: StopSignals) -> anyhow::Result<Option<Result<Report, orchestrate::RunError>>> {
    let n = args.local_agents.unwrap_or(1).max(1);
    let target = local::start_builtin_target(&mut plan).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the coordinator on loopback")?;
    let fleet = Fleet::default();
    let shutdown = CancellationToken::new();
    // In-process agents dial 127.0.0.1 inside this process: plain text, with a token of this run's.
    let security = local::security()?;
    let token = security.token.clone();
    let (addr, server) = server::spawn(listener, fleet.clone(), None, security, shutdown.clone());
    let agents_stop = CancellationToken::new();
    let state_dir = args.state_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("stampede-state"));
    let agents = local::spawn_agents(n, addr, token.as_ref(), args.workers, &state_dir, probes_capabilities(&plan, args.simulate_faults), &agents_stop);

    let abort = Interrupt::default();
    let progress = redacting(progress_printer(), plan.secret_values());
    let request = RunRequest { plan, expect_agents: n, wait: args.wait.as_duration(), dry_run: args.dry_run, simulate_faults: args.simulate_faults };
    let execute = orchestrate::execute(&fleet, request, &abort, &progress);
    tokio::pin!(execute);
    let outcome = tokio::select! {
        outcome = &mut execute => Some(outcome),
        name = signals.recv() => {
            abort.trigger(format!("stopped by {name}"));
            tokio::select! {
                outcome = &mut execute => Some(outcome),
                name = signals.recv() => {
                    progress(format!("{name} again: not waiting for the last measurements; reverting every fault, then exiting"));
                    None
                }
            }
        }
    };

    // The agents revert their faults before their tasks end (further
    // signals are caught and ignored meanwhile).
    agents_stop.cancel();
    for a in agents {
        let _ = a.await;
    }
    shutdown.cancel();
    let _ = server.await;
    if let Some(t) = target {
        t.shutdown().await;
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use stampede_common::plan::Format;

    #[test]
    fn a_simulated_local_run_does_not_probe_the_nodes_fault_tools() {
        let with_fault = "name: s\ntarget: http://127.0.0.1:1\nphases:\n  - { name: p, duration: 5s, load: { model: open, rate: 1/s } }\nsteps: [{ name: a }]\n\
                          faults:\n  - { name: f, kind: pause, at: 1s, duration: 1s, instance: { driver: process, pid: 4000000 } }\n";
        let plan = stampede_common::plan::load_str(with_fault, Format::Yaml, std::path::Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(super::probes_capabilities(&plan, false), "a real run or a dry run needs the findings");
        assert!(!super::probes_capabilities(&plan, true), "a simulated run runs no command on the node");
        let mut none = plan.clone();
        none.faults.clear();
        assert!(!super::probes_capabilities(&none, false));
    }

    #[test]
    fn local_progress_lines_are_redacted_like_a_standing_coordinators() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            move |line: String| seen.lock().unwrap().push(line)
        };
        let secrets = [("env:TOKEN".to_string(), "tok-3141592".to_string())].into_iter().collect();
        let progress = super::redacting(sink, secrets);
        progress("steady state did not hold after the run: health: body echoed tok-3141592".to_string());
        assert_eq!(*seen.lock().unwrap(), ["steady state did not hold after the run: health: body echoed ***"]);
    }
}
