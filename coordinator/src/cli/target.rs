//! `stampede target`: the built-in HTTP target as a process of its own.

use std::path::PathBuf;

use anyhow::Context;
use stampede_common::units::{Dur, Percent};

use crate::local;

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Latency added to every response (`5ms`).
    #[arg(long)]
    pub latency: Option<Dur>,
    /// With --latency: draw latency uniformly up to this.
    #[arg(long)]
    pub latency_max: Option<Dur>,
    /// Share of requests answered 500 (`1%`).
    #[arg(long)]
    pub error_rate: Option<Percent>,
    /// Stall period: every `--stall-every`, hold requests for `--stall-hold`.
    #[arg(long, requires = "stall_hold")]
    pub stall_every: Option<Dur>,
    #[arg(long, requires = "stall_every")]
    pub stall_hold: Option<Dur>,
    /// An outage window from the target's start, AT+FOR:ACTION with ACTION a
    /// status, `stall` or `refuse` (`--window 5s+7s:503 --window 30s+2s:refuse`).
    #[arg(long = "window", value_name = "AT+FOR:ACTION")]
    pub windows: Vec<stampede_common::plan::TargetWindow>,
    /// After the process is stopped and resumed, answer STATUS for FOR (`7s:503`).
    #[arg(long, value_name = "FOR:STATUS")]
    pub after_pause: Option<stampede_common::plan::AfterPauseSpec>,
    /// Response body size for GET requests, bytes.
    #[arg(long)]
    pub body_size: Option<usize>,
    /// Append `PEER_IP UNIX_NANOS` to FILE for the first request of each new
    /// peer address (e.g. to measure how closely a fleet's agents started).
    #[arg(long, value_name = "FILE")]
    pub arrivals: Option<PathBuf>,
    /// Serve HTTPS, with a certificate (for the --listen address and
    /// `localhost`) from a CA generated at start; the CA and a client
    /// certificate are written to --tls-dir.
    #[arg(long)]
    pub tls: bool,
    /// Where --tls writes `ca.pem`, `client.pem` and `client-key.pem`
    /// (default: `stampede-target-tls` in the temporary directory).
    #[arg(long, value_name = "DIR", requires = "tls")]
    pub tls_dir: Option<PathBuf>,
    /// With --tls: refuse clients without a certificate of that CA
    /// (`client.pem`, `client-key.pem`).
    #[arg(long, requires = "tls")]
    pub require_client_cert: bool,
    /// A submitted job (`POST /jobs`) is `done` this long after (default 1s).
    #[arg(long, value_name = "DUR")]
    pub jobs_done_after: Option<Dur>,
    /// Share of jobs that stay `pending` forever, every k-th (`25%`: jobs 4, 8, …).
    #[arg(long, value_name = "PCT")]
    pub jobs_never_finish: Option<Percent>,
}

pub(super) async fn target(args: TargetArgs) -> anyhow::Result<i32> {
    let spec = stampede_common::plan::BuiltinTarget {
        latency: args.latency,
        latency_max: args.latency_max,
        error_rate: args.error_rate,
        stall: args.stall_every.zip(args.stall_hold).map(|(every, hold)| stampede_common::plan::StallSpec { every, hold }),
        windows: args.windows,
        after_pause: args.after_pause,
        require_header: None,
        tls: args.tls,
        require_client_cert: args.require_client_cert,
        jobs: (args.jobs_done_after.is_some() || args.jobs_never_finish.is_some())
            .then_some(stampede_common::plan::TargetJobs { done_after: args.jobs_done_after, never_finish: args.jobs_never_finish }),
    };
    let mut behaviour = local::behaviour(&spec);
    if let Some(n) = args.body_size {
        behaviour.body_size = n;
    }
    let arrivals = match &args.arrivals {
        Some(path) => Some(stampede_target::ArrivalLog::create(path).with_context(|| format!("opening the arrivals file {}", path.display()))?),
        None => None,
    };
    let tls = if args.tls {
        let mut names = vec!["localhost".to_string(), args.listen.ip().to_string()];
        if args.listen.ip().is_unspecified() {
            names.push("127.0.0.1".into());
        }
        let material = stampede_target::TlsMaterial::generate(&names, args.require_client_cert).context("generating the target's certificates")?;
        let dir = args.tls_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("stampede-target-tls"));
        let files = material.write(&dir).with_context(|| format!("writing the target's certificates to {}", dir.display()))?;
        eprintln!("trust {} (plan: tls: {{ ca: {} }})", files.ca.display(), files.ca.display());
        if args.require_client_cert {
            eprintln!("clients need a certificate: tls: {{ cert: {}, key: {} }}", files.client_cert.display(), files.client_key.display());
        }
        Some(material.server_config().context("the target's TLS configuration")?)
    } else {
        None
    };
    let scheme = if args.tls { "https" } else { "http" };
    eprintln!("built-in target listening on {scheme}://{}", args.listen);
    stampede_target::serve_until_tls(args.listen, behaviour, arrivals, tls, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .with_context(|| format!("serving on {}", args.listen))?;
    Ok(0)
}
