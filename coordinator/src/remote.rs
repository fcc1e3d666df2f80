//! The client side of a standing coordinator: submit a run and stream its
//! progress, or list the connected agents.

use stampede_common::plan::{Format, Plan};
use stampede_common::tls::{self, ClientTls};
use stampede_proto::v1::control_service_client::ControlServiceClient;
use stampede_proto::v1::run_event::Event;
use stampede_proto::v1::{AgentInfo, HaltRequest, ListAgentsRequest, RunResult, SubmitRunRequest};
use tonic::transport::Channel;

use crate::cli::{progress_printer, PlanParams, RunArgs, EXIT_ERROR};
use crate::signals::StopSignals;
use crate::verdict::Verdict;

/// Dials the control API: `https://` with a client certificate, `http://` with `--insecure`.
async fn connect(url: &str, tls: Option<&ClientTls>) -> anyhow::Result<ControlServiceClient<Channel>> {
    let channel = tls::endpoint(url, tls)?.connect().await.map_err(|e| anyhow::anyhow!("connecting to the coordinator at {url}: {}", tls::describe(&e)))?;
    // The result carries every report of a run: accept what the server may send.
    Ok(ControlServiceClient::new(channel).max_decoding_message_size(crate::server::MAX_MESSAGE))
}

/// A failed call: the coordinator's own message, or what broke the
/// connection — with TLS 1.3 a refused client certificate only shows here,
/// at the first call, not when connecting.
fn call_failed(url: &str, status: tonic::Status) -> anyhow::Error {
    if std::error::Error::source(&status).is_none() {
        return anyhow::anyhow!("{}", status.message());
    }
    anyhow::anyhow!("the connection to the coordinator at {url} failed: {}", tls::describe_call(&status))
}

/// What is sent to a standing coordinator for one plan.
pub struct Submission<'a> {
    /// The plan file's own name and text (written to `--out` as given).
    pub file_name: &'a str,
    pub text: &'a str,
    /// What the coordinator gets: the file as written, or — when `${NAME}`,
    /// `--set` or `--target` changed it — the plan as resolved here, as JSON.
    /// The coordinator takes it literally: it never substitutes again, and a
    /// coordinator older than these flags runs exactly what was resolved.
    sent_name: String,
    sent_text: String,
    sent_format: Format,
    /// The secrets' values, read here; sent beside the plan, never in it.
    secrets: stampede_common::plan::SecretValues,
    /// The data files' rows, read here (relative to the plan), sent beside it.
    data_files: Vec<stampede_proto::v1::DataFile>,
}

impl<'a> Submission<'a> {
    pub fn new(plan: &Plan, file_name: &'a str, text: &'a str, format: Format, params: &PlanParams) -> Submission<'a> {
        let literal = params.sets.is_empty() && params.target.is_none() && !text.contains("${");
        let (sent_name, sent_text, sent_format) = if literal {
            (file_name.to_string(), text.to_string(), format)
        } else {
            let stem = std::path::Path::new(file_name).file_stem().map_or("plan".into(), |s| s.to_string_lossy().into_owned());
            (format!("{stem}.resolved.json"), serde_json::to_string_pretty(plan).expect("plans serialize") + "\n", Format::Json)
        };
        let data_files = plan.data_sets().iter().map(|(file, set)| stampede_proto::data_to_wire(file, 0, set, 0..set.rows.len())).collect();
        Submission { file_name, text, sent_name, sent_text, sent_format, secrets: plan.secret_values(), data_files }
    }
}

/// Submits the run (or the dry run) and streams it. A stop signal here
/// hangs up: the coordinator then interrupts the run, its agents revert
/// their faults, and it keeps the reports in its run store.
pub async fn submit(url: &str, tls: Option<&ClientTls>, plan: &Submission<'_>, args: &RunArgs, mut signals: StopSignals) -> anyhow::Result<i32> {
    let mut client = connect(url, tls).await?;
    let (file_name, text) = (plan.file_name, plan.text);
    let request = SubmitRunRequest {
        plan_name: plan.sent_name.clone(),
        plan_text: plan.sent_text.clone(),
        plan_format: plan.sent_format.name().to_string(),
        expect_agents: args.expect_agents as u32,
        wait_ms: args.wait.as_duration().as_millis() as u64,
        secrets: stampede_proto::secrets_to_wire(&plan.secrets),
        data_files: plan.data_files.clone(),
    };
    let events = if args.dry_run {
        client.submit_dry_run(request).await
    } else if args.simulate_faults {
        client.submit_simulated_run(request).await
    } else {
        client.submit_run(request).await
    };
    let mut events = match events {
        Ok(e) => e.into_inner(),
        Err(s) if args.dry_run && s.code() == tonic::Code::Unimplemented => {
            eprintln!("error: the coordinator at {url} cannot do a dry run (it is older than SubmitDryRun); nothing was run");
            return Ok(EXIT_ERROR);
        }
        Err(s) if args.simulate_faults && s.code() == tonic::Code::Unimplemented => {
            eprintln!("error: the coordinator at {url} cannot simulate faults (it is older than SubmitSimulatedRun); nothing was run");
            return Ok(EXIT_ERROR);
        }
        Err(s) => return Err(call_failed(url, s)),
    };
    let progress = progress_printer();
    loop {
        let event = tokio::select! {
            event = events.message() => event.map_err(|s| went_away(url, s))?,
            name = signals.recv() => {
                eprintln!("\n{name}: hanging up; the coordinator interrupts the run, its agents revert their faults, and the coordinator keeps its reports in its run store");
                return Ok(Verdict::Incomplete.exit_code());
            }
        };
        let Some(event) = event else { break };
        match event.event {
            Some(Event::Progress(line)) => progress(line),
            Some(Event::Result(r)) => return write_result(&r, args, file_name, text, &plan.secrets),
            None => {}
        }
    }
    eprintln!("error: the coordinator at {url} went away before the run's result (it shut down or crashed); if it is back, its run store may hold what it kept");
    Ok(EXIT_ERROR)
}

/// The stream broke after the coordinator accepted the run: the
/// connection worked (so it is not a certificate), the coordinator went away.
fn went_away(url: &str, status: tonic::Status) -> anyhow::Error {
    if std::error::Error::source(&status).is_none() {
        return anyhow::anyhow!("{}", status.message());
    }
    anyhow::anyhow!("the coordinator went away during the run (it shut down or crashed); {}", call_failed(url, status))
}

fn write_result(r: &RunResult, args: &RunArgs, file_name: &str, text: &str, secrets: &stampede_common::plan::SecretValues) -> anyhow::Result<i32> {
    // The coordinator redacts too; this covers one older than secrets.
    let clean = |t: &str| stampede_common::plan::redact(t, secrets);
    if !r.error.is_empty() {
        eprintln!("error: {}", clean(&r.error));
        return Ok(r.exit_code);
    }
    if args.dry_run {
        // The same listing the local dry run prints; its findings as JSON.
        print!("{}", r.report_md);
        if let Some(out) = &args.out {
            crate::cli::write_dry_run(out, &r.report_json)?;
        }
        return Ok(r.exit_code);
    }
    print!("\n{}", clean(&r.report_md));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("report.json"), clean(&r.report_json))?;
        std::fs::write(out.join("report.md"), clean(&r.report_md))?;
        // An older coordinator sends no HTML report.
        if !r.report_html.is_empty() {
            std::fs::write(out.join("report.html"), clean(&r.report_html))?;
        }
        std::fs::write(out.join("junit.xml"), clean(&r.report_junit))?;
        std::fs::write(out.join(file_name), text)?;
        println!("\nreports written to {}", out.display());
    }
    Ok(r.exit_code)
}

/// `stampede halt`: stops the coordinator's run in progress and prints what
/// each agent reverted. Exit 0 when nothing is left applied (or nothing was
/// running), 3 when an agent did not confirm or a fault is not reverted.
pub async fn halt(url: &str, tls: Option<&ClientTls>) -> anyhow::Result<i32> {
    let mut client = connect(url, tls).await?;
    let h = client.halt(HaltRequest {}).await.map_err(|s| call_failed(url, s))?.into_inner();
    print!("{}", crate::halt::text(url, &h));
    Ok(if crate::halt::all_clear(&h) { 0 } else { 3 })
}

pub async fn list_agents(url: &str, tls: Option<&ClientTls>) -> anyhow::Result<i32> {
    let mut client = connect(url, tls).await?;
    let agents = client.list_agents(ListAgentsRequest {}).await.map_err(|s| call_failed(url, s))?.into_inner().agents;
    let now = stampede_proto::convert::unix_nanos(std::time::SystemTime::now());
    print!("{}", agents_table(&agents, now));
    Ok(0)
}

/// `stampede agents`' table: one agent per line, whitespace-separated
/// columns (a label list or capability list never contains a space, so
/// `awk` can take it apart). Capabilities are the fault tools a node has
/// (`AVAILABLE`) and lacks (`MISSING`); `-` when none.
pub fn agents_table(agents: &[AgentInfo], now_unix_nanos: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:<30} {:>8} {:>14} {:>10} {:<5} {:<40} MISSING", "AGENT", "LABELS", "CAPACITY", "CLOCK OFFSET", "LAST SEEN", "STATE", "AVAILABLE");
    let list = |v: Vec<&str>| if v.is_empty() { "-".to_string() } else { v.join(",") };
    for a in agents {
        let mut labels: Vec<_> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let labels = if labels.is_empty() { "-".to_string() } else { labels.join(",") };
        let available = list(a.capabilities.iter().filter(|c| c.available).map(|c| c.name.as_str()).collect());
        let missing = list(a.capabilities.iter().filter(|c| !c.available).map(|c| c.name.as_str()).collect());
        let _ = writeln!(
            out,
            "{:<24} {:<30} {:>8} {:>12.3}ms {:>9.1}s {:<5} {:<40} {}",
            a.agent_id,
            labels,
            a.capacity,
            a.clock_offset_nanos as f64 / 1e6,
            (now_unix_nanos - a.last_seen_unix_nanos).max(0) as f64 / 1e9,
            if a.busy { "busy" } else { "idle" },
            available,
            missing
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_proto::v1::Capability;

    #[test]
    fn every_column_is_printed() {
        let cap = |name: &str, available| Capability { name: name.into(), available, detail: String::new() };
        let a = AgentInfo {
            agent_id: "a1".into(),
            labels: [("zone".to_string(), "z1".to_string()), ("role".to_string(), "load".to_string())].into_iter().collect(),
            capacity: 4,
            capabilities: vec![cap("tc", true), cap("nft", true), cap("docker", false)],
            clock_offset_nanos: -1_500_000,
            last_seen_unix_nanos: 1_000_000_000,
            busy: false,
        };
        let table = agents_table(&[a], 3_500_000_000);
        let lines: Vec<&str> = table.lines().collect();
        let head: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(head, ["AGENT", "LABELS", "CAPACITY", "CLOCK", "OFFSET", "LAST", "SEEN", "STATE", "AVAILABLE", "MISSING"]);
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(row, ["a1", "role=load,zone=z1", "4", "-1.500ms", "2.5s", "idle", "tc,nft", "docker"]);
    }
}
