//! The stampede agent: dials the coordinator, runs its share of a plan, and
//! streams measurements back.
//!
//! # Layout
//! - [`session`]: the gRPC session with the coordinator (register, assignment,
//!   abort, heartbeats), with reconnect, backoff and the lease.
//! - `assignment`: one run on this agent: load, fault windows, and the
//!   messages reporting them.
//! - `outbox`: the resend buffer: run messages wait there, numbered, until
//!   the coordinator acknowledges them.
//! - [`engine`]: runs a share of a plan on worker threads and merges their
//!   parts into one interval at a time.
//! - `worker`: one thread, one current_thread runtime: the open-model pacer,
//!   closed-model connection loops, the connection pool.
//! - `schedule`: when each open-model arrival is due (pure arithmetic).
//! - `pacer`: the precise one-shot timer (a timerfd) the pacer sleeps on.
//! - `http`: the allocation-free HTTP/1.1 client, generic over its stream.
//! - `template`: a step's or probe's `{{seq}}`/`{{uuid}}`/... rendered per
//!   request (only for requests that have them).
//! - `data`: a step's data file rows on this agent, one drawn per execution.
//! - `flow`: a flow step's requests in one session (cookies, captures,
//!   `repeat_until`), compiled once per run.
//! - [`connect`]: the target's URL and addresses (all of them, resolved
//!   again on a period) and the dialer: TCP, and TLS for `https://`.
//! - `recorder`: a worker's per-interval histograms and counters.
//! - [`probe`]: the plan's probes on their cadence, and the steady-state
//!   check (on the coordinator's request, or before a fault).
#![forbid(unsafe_code)]

mod assignment;
pub mod check;
pub mod connect;
mod data;
pub mod engine;
pub mod fault;
mod flow;
mod http;
pub mod open_files;
pub mod outbox;
mod pacer;
pub mod probe;
mod recorder;
mod rxstamp;
mod schedule;
pub mod session;
mod template;
mod worker;
