//! The stampede coordinator and the `stampede` CLI.
//!
//! # Layout
//! - [`cli`]: flags → validated values → library calls; the exit-code contract.
//! - [`fleet`]: connected agents and the route of run messages to the run in progress.
//! - [`service`]: the gRPC `AgentService` agents dial (one session each).
//! - [`orchestrate`]: one run: wait for agents, split, assign, then drive its [`run`].
//! - [`run`]: the run in progress as a state machine, one method per event.
//! - [`split`]: splitting rate and concurrency by capacity.
//! - [`faults`]: fault preflight (selection once per node, capabilities) and the fault log.
//! - [`dryrun`]: `--dry-run`: every agent's fault commands in time order, with the preflight's findings.
//! - [`load_bounds`]: refusing a share an agent cannot hold (its connection limit).
//! - [`aggregate`]: exact merging of snapshots; gaps and duplicates per agent.
//! - [`timeline`]: the run's intervals by due time, final after the timeout, compacted.
//! - [`judge`]: every SLO rule over the totals and the timeline: fault windows, streaks, recovery.
//! - [`guardrail`]: abort guardrails (`abort_when`) judged live, interval by interval.
//! - [`verdict`]: every trust decision (incomplete, invalid, aborted, interrupted) and the verdict from the judged SLOs.
//! - [`report`]: report.json / report.md / junit.xml and the terminal summary.
//! - [`local`]: in-process agents and built-in target for `--local-agents`.
//! - [`control`] / [`remote`]: the standing coordinator's submit API and its client.
//! - [`halt`]: `stampede halt`: stop the run in progress, say what each agent reverted.
//! - [`store`]: the standing coordinator's run store (`--data DIR`).
//! - [`server`]: serving the gRPC services until shutdown, with mutual TLS
//!   and the enrollment token ([`server::Security`]) or without.
//! - [`certs`]: `stampede certs`: the fleet's CA, its certificates, the token.
//! - [`caller`]: who calls a service, and whether their certificate's role may.
#![forbid(unsafe_code)]

pub mod active;
pub mod aggregate;
pub mod caller;
pub mod certs;
pub mod cli;
pub mod control;
pub mod dryrun;
pub mod faults;
pub mod fleet;
pub mod guardrail;
pub mod halt;
pub mod judge;
pub mod load_bounds;
pub mod local;
pub mod orchestrate;
pub mod remote;
pub mod report;
pub mod run;
pub mod server;
pub mod service;
pub mod signals;
pub mod split;
pub mod steady;
pub mod store;
pub mod timeline;
pub mod to_agent;
pub mod verdict;
