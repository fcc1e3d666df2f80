//! stampede's built-in HTTP/1.1 target: the server that tests, examples and
//! benchmarks put load on, with configurable latency, error ratio, periodic
//! stalls and body sizes.
//!
//! Layout:
//! - `behaviour` — [`Behaviour`] and [`Stall`]: the pure timing/error rules.
//! - `service` — per-request handling: routes (`/health`, `/bytes/N`, anything
//!   else), delays, error injection, counters.
//! - `api` — [`Jobs`]: the login/token/cookie and job API (`/login`, `/me`,
//!   `/session`, `/jobs`, `/jobs/N`) that flows are tested against.
//! - `body` — the allocation-free response body (slices of a static buffer).
//! - `stats` — [`TargetStats`] and the atomic counters behind it.
//! - `server` — [`serve`], [`serve_until`], [`TargetHandle`]: listener, accept
//!   loop, one task per keep-alive connection, shutdown.
//! - `tls` — [`TlsMaterial`]: HTTPS with a CA and certificates generated at
//!   start ([`serve_tls`]), optionally requiring a client certificate.
//! - `arrivals` — [`ArrivalLog`]: when each peer's first request arrived
//!   (`stampede target --arrivals FILE`, for measuring a fleet's start).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let target = stampede_target::serve(
//!     "127.0.0.1:0".parse().unwrap(),
//!     stampede_target::Behaviour::default(),
//! )
//! .await?;
//! println!("load http://{}/", target.local_addr);
//! target.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod api;
mod arrivals;
mod behaviour;
mod body;
mod server;
mod service;
mod stats;
mod tls;

pub use api::{Jobs, JOB_CAPACITY};
pub use arrivals::ArrivalLog;
pub use behaviour::{AfterPause, Behaviour, RequireHeader, Stall, Window, WindowAction};
pub use server::{serve, serve_tls, serve_until, serve_until_tls, serve_until_with, serve_with, TargetHandle};
pub use stats::TargetStats;
pub use tls::{TlsFiles, TlsMaterial};
