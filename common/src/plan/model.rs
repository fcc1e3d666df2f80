//! The plan as users write it (docs/plan.md is the reference). Every struct
//! denies unknown keys, so a typo is an error that names the field, never a
//! silently ignored setting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slo::Slo;
use crate::units::{Dur, Percent, Rate, StatusSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    /// Base URL every step's path is appended to: `http://host:port` or
    /// `https://host:port`.
    pub target: String,
    /// TLS towards an `https://` target: extra CA, client certificate,
    /// or no verification (`tls.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::TargetTls>,
    /// Which agents run the plan: a label selector and how many (default:
    /// every connected agent, or the number the CLI asks for).
    #[serde(default, skip_serializing_if = "AgentSelector::is_empty")]
    pub agents: AgentSelector,
    /// When present, `stampede run` starts the built-in target in-process with
    /// this behaviour, listening on `target`'s host and port (port 0 = any free port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin_target: Option<BuiltinTarget>,
    /// Snapshot interval: how often agents send measurements.
    #[serde(default = "default_interval")]
    pub interval: Dur,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    pub phases: Vec<Phase>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub slos: Vec<Slo>,
    /// Faults injected by the agents on the run's timeline (see `fault.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<super::Fault>,
    /// Requests on a fixed cadence beside the load (see `probe.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<super::Probe>,
    /// What must hold before any load or fault, and after the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steady_state: Option<super::SteadyState>,
    /// Guardrails that stop the run early (`abort.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abort_when: Vec<super::AbortRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSelector {
    /// How many agents the run needs; it waits for them and fails if too few match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Only agents whose labels include all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl AgentSelector {
    pub fn is_empty(&self) -> bool {
        self.count.is_none() && self.labels.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

fn default_interval() -> Dur {
    Dur::from_secs(1)
}

fn default_timeout() -> Dur {
    Dur::from_secs(10)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    /// Required for the open and closed models; an iterations phase lasts
    /// `load.max_duration` instead (see [`Phase::length`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
    pub load: Load,
    /// The steps this phase sends, with their weights (default: every step
    /// of the plan with its own weight). See `phase.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<super::PhaseStep>>,
}

impl Phase {
    /// The phase's length on the run's timeline: its `duration`, or for an
    /// iterations phase its `max_duration` (the next phase starts then on
    /// every agent, however early this one's count was done). Validation
    /// makes sure exactly one of them is set.
    pub fn length(&self) -> std::time::Duration {
        self.duration.or(self.load.max_duration).map_or(std::time::Duration::ZERO, |d| d.as_duration())
    }
}

/// Written `open`, `closed` or `iterations`. Parsed from a string rather than as a serde
/// enum so an unknown model gets our message, not the loader's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Model {
    /// Arrivals on a schedule, independent of responses (k6's arrival-rate executors).
    Open,
    /// A fixed number of connections, each sending its next request when the
    /// previous answered (wrk, k6's constant-vus).
    Closed,
    /// A fixed number of requests at a fixed concurrency, done as fast as
    /// the target answers, within `max_duration` (k6's shared-iterations
    /// and per-vu-iterations executors).
    Iterations,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Open => "open",
            Model::Closed => "closed",
            Model::Iterations => "iterations",
        }
    }
}

impl std::str::FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "open" => Ok(Model::Open),
            "closed" => Ok(Model::Closed),
            "iterations" => Ok(Model::Iterations),
            _ => Err(format!("unknown model `{s}`, expected `open`, `closed` or `iterations`")),
        }
    }
}

impl TryFrom<String> for Model {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Model> for String {
    fn from(m: Model) -> String {
        m.name().to_string()
    }
}

impl std::fmt::Display for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The load of a phase. A flat struct rather than an enum per model, so that
/// a missing or misplaced field gets an error naming exactly that field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub model: Model,
    /// Open model: arrivals per second (at the phase start, when ramping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Open model: ramp linearly from `rate` to this rate over the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Rate>,
    /// Closed and iterations models: connections kept busy, fleet-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Iterations model: requests in total over the fleet (k6's
    /// shared-iterations `iterations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Iterations model: requests per connection, so `concurrency ×
    /// per_worker` in total (k6's per-vu-iterations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_worker: Option<u32>,
    /// Iterations model: the phase's length on the timeline; iterations not
    /// started by then do not run (k6's `maxDuration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Dur>,
    /// Open model: most requests in flight per agent; an arrival beyond it is
    /// dropped and counted (k6's maxVUs). Default: [`default_max_in_flight`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Open model: the pacer starts the arrivals due within this window in
    /// one wake-up, at the last one's instant, so each starts at most this
    /// late (its lateness is in its latency, as always). Default none: each
    /// arrival at its own instant. At most [`MAX_BATCH_WINDOW`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window: Option<Dur>,
}

/// The longest `batch_window`: half the 10 ms lateness past which an
/// arrival counts as a schedule miss (and 1 % of them make a run invalid),
/// so a batched arrival is never one.
pub const MAX_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// The in-flight bound of an open phase without `max_in_flight`, per agent:
/// its peak arrival rate times the request timeout plus a second (at least
/// 1 000). No request outlives the timeout, so by Little's law at most rate
/// × timeout are waiting; the extra second covers a timed-out request whose
/// task has not run yet and the timer's 1 ms rounding. The bound is then
/// not reached: a stalled or partitioned server shows up as timeouts —
/// errors the SLOs judge, with latency from the intended time — and not as
/// drops that would make the client look saturated. A bound set in the plan
/// is the user's choice of how much the client may hold, and is kept. The
/// agent also keeps it under its open-files limit (`engine.rs`).
pub fn default_max_in_flight(peak_rate_per_second: f64, timeout: std::time::Duration) -> u32 {
    let held = (peak_rate_per_second * (timeout.as_secs_f64() + 1.0)).ceil();
    (held.min(u32::MAX as f64) as u32).max(1_000)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub request: Request,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
    /// Checks on every response (see `check.rs` and docs/plan.md, "Checks").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<super::Check>,
    /// Instead of `request`: named requests sent in order in one user's
    /// session (`flow.rs`, docs/plan.md "Flows").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Vec<super::FlowRequest>>,
    /// A data file whose rows its requests use as `{{data.COLUMN}}`, one
    /// row per execution (`data.rs`, docs/plan.md "Data files").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<super::data::DataSource>,
}

impl Step {
    /// What `{{data.COL}}` may name in this step's requests.
    pub fn data_columns(&self) -> super::template::Columns<'_> {
        use super::template::Columns;
        match &self.data {
            None => Columns::None,
            Some(d) => d.set.as_ref().map_or(Columns::Unknown, |s| Columns::Known(&s.columns)),
        }
    }
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default = "default_path")]
    pub path: String,
    /// Values are text or a secret (`{ secret_env: TOKEN }`, `secret.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, super::Text>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<super::Text>,
}

impl Default for Request {
    fn default() -> Self {
        Request { method: default_method(), path: default_path(), headers: BTreeMap::new(), body: None }
    }
}

fn default_method() -> String {
    "GET".to_string()
}

fn default_path() -> String {
    "/".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Statuses that count as success (default: below 400).
    #[serde(default)]
    pub status: StatusSet,
}

/// Behaviour of the built-in target (`stampede target`), set from the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BuiltinTarget {
    /// Added to every response; with `latency_max`, the lower bound of a uniform draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Dur>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_max: Option<Dur>,
    /// Share of requests answered 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<Percent>,
    /// "Hold every request for `hold` every `every`."
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<StallSpec>,
    /// Timed outages from the target's start (`at`, `for`, and one of
    /// `status`, `stall: true`, `refuse: true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<TargetWindow>,
    /// After the target's process is stopped and resumed, answer `status`
    /// for `for` (a service recovering from a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_pause: Option<AfterPauseSpec>,
    /// Serve HTTPS with a certificate generated at start, from a CA
    /// generated with it; `stampede run` makes the plan trust that CA.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// With `tls`: refuse clients without a certificate from that CA
    /// (`stampede run` gives its agents one when the plan has none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_client_cert: bool,
    /// Answer 401 to every request (but `/health`) without this header
    /// value: how a test shows a secret reached the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_header: Option<RequiredHeader>,
    /// The job API (`POST /jobs`, `GET /jobs/N`): when a job is done, and
    /// which share of jobs never finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<TargetJobs>,
}

/// `jobs: { done_after: 1s, never_finish: 25% }` (both optional).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetJobs {
    /// A job is `done` this long after it was submitted (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_after: Option<Dur>,
    /// Share of jobs that stay `pending` forever, every k-th (default 0%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub never_finish: Option<Percent>,
}

/// `require_header: { name: authorization, value: { secret_env: TOKEN, prefix: "Bearer " } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredHeader {
    pub name: String,
    pub value: super::Text,
}

/// One outage window of the built-in target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetWindow {
    pub at: Dur,
    #[serde(rename = "for")]
    pub length: Dur,
    /// Answer this status to every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Hold every request until the window ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<bool>,
    /// Close connections without answering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse: Option<bool>,
}

/// `AT+FOR:ACTION` on the command line: `5s+7s:503`, `20s+3s:stall`, `30s+2s:refuse`.
impl std::str::FromStr for TargetWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a window: write AT+FOR:ACTION, e.g. `5s+7s:503`, `20s+3s:stall` or `30s+2s:refuse`");
        let (times, action) = s.split_once(':').ok_or_else(bad)?;
        let (at, length) = times.split_once('+').ok_or_else(bad)?;
        let mut w = TargetWindow { at: at.parse().map_err(|_| bad())?, length: length.parse().map_err(|_| bad())?, status: None, stall: None, refuse: None };
        match action {
            "stall" => w.stall = Some(true),
            "refuse" => w.refuse = Some(true),
            n => w.status = Some(n.parse().map_err(|_| bad())?),
        }
        Ok(w)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterPauseSpec {
    #[serde(rename = "for")]
    pub length: Dur,
    pub status: u16,
}

/// `FOR:STATUS` on the command line: `7s:503`.
impl std::str::FromStr for AfterPauseSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not FOR:STATUS, e.g. `7s:503`");
        let (length, status) = s.split_once(':').ok_or_else(bad)?;
        Ok(AfterPauseSpec { length: length.parse().map_err(|_| bad())?, status: status.parse().map_err(|_| bad())? })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StallSpec {
    pub every: Dur,
    pub hold: Dur,
}

impl Plan {
    pub fn phase_index(&self, name: &str) -> Option<usize> {
        self.phases.iter().position(|p| p.name == name)
    }
    pub fn step_index(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
    /// Every check's name in the plan-wide check index order: every step's
    /// checks in step order, then every probe's in probe order, then every
    /// flow request's in flow slot order (`flow.rs`). Snapshots and reports
    /// key check counts by this index.
    pub fn check_names(&self) -> Vec<&str> {
        let steps = self.steps.iter().flat_map(|s| s.checks.iter());
        let flows = self.flow_requests().flat_map(|(_, r)| r.checks.iter());
        steps.chain(self.probes.iter().flat_map(|p| p.checks.iter())).chain(flows).map(|c| c.name.as_str()).collect()
    }
    /// Total planned duration of all phases.
    pub fn duration(&self) -> std::time::Duration {
        self.phases.iter().map(Phase::length).sum()
    }
    /// Offset of each phase's start from the run start.
    pub fn phase_offsets(&self) -> Vec<std::time::Duration> {
        let mut at = std::time::Duration::ZERO;
        self.phases
            .iter()
            .map(|p| {
                let start = at;
                at += p.length();
                start
            })
            .collect()
    }
}

#[cfg(test)]
mod in_flight_tests {
    use std::time::Duration;

    use super::default_max_in_flight;

    #[test]
    fn the_default_in_flight_bound_covers_rate_times_timeout() {
        // 5000/s for 10 s of timeout: 50 000 requests can be waiting at
        // once, and a second's more for the ones timing out right now.
        assert_eq!(default_max_in_flight(5000.0, Duration::from_secs(10)), 55_000);
        assert_eq!(default_max_in_flight(250.1, Duration::from_secs(3)), 1_001);
        // Never below the floor, never past u32.
        assert_eq!(default_max_in_flight(10.0, Duration::from_secs(10)), 1_000);
        assert_eq!(default_max_in_flight(1e12, Duration::from_secs(3600)), u32::MAX);
    }
}
