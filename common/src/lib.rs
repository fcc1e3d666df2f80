//! Shared by the coordinator and the agents.
//!
//! # Layout
//! - [`plan`]: the plan model, loading YAML/TOML/JSON through `config`, and
//!   validation with errors that name file, line and field path.
//! - [`units`]: durations, rates, percentages, status sets as plans write them.
//! - [`slo`]: SLO rules, thresholds and their pass/warn/fail bands.
//! - [`histogram`]: the one histogram shape and its V2+DEFLATE wire encoding.
//! - [`stats`]: per-step records and schedule counters, and how they add up.
//! - `telemetry` (feature): log set-up for the binaries, with OTLP export.
//! - `tls` (feature): mutual TLS, the enrollment token and the transport
//!   flags, shared by the coordinator and the agent.
#![forbid(unsafe_code)]

pub mod histogram;
pub mod plan;
pub mod slo;
pub mod stats;
#[cfg(feature = "telemetry")]
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;
pub mod units;
