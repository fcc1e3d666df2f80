//! What a coordinator accepts from an agent: every number, string and list
//! an `AgentMessage` carries is checked here against the run it claims to
//! belong to, *before* it costs memory or time (issue 8, item 2).
//!
//! The coordinator calls these checks on every message (`service.rs` for the
//! session's own messages, `orchestrate.rs` for run messages) and the fuzz
//! target `grpc_message` feeds decoded bytes through the same functions.
//! A message that fails is refused whole: nothing of it is counted.

use std::time::Duration;

use stampede_common::stats::ErrorKind;

use crate::v1::{ClockEcho, FaultEvent, Register, RunFinished, Snapshot, SteadyStateReply};

/// Ids (agent, run, node, fault names, label keys) and short words.
pub const MAX_ID: usize = 128;
/// Free text: error messages, capability details, commands, label values.
pub const MAX_TEXT: usize = 4096;
/// One command of a fault event (an nft script can run to a few KiB).
pub const MAX_COMMAND: usize = 64 << 10;
/// Labels and capabilities per agent; commands per fault event.
pub const MAX_LIST: usize = 64;
/// One encoded histogram (plain V2 up to 4 KiB, V2 + DEFLATE above).
/// stampede's histogram shape inflates to at most ~210 KiB, so its
/// compressed form is smaller still.
pub const MAX_HISTOGRAM: usize = 1 << 20;
/// The longest lease an agent may state: the coordinator waits this long
/// for a lost agent, and a larger value would overflow its deadlines.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);
/// Requests (and errors, schedule counts) per second of an interval that
/// one agent can plausibly have made: far beyond any real client.
pub const MAX_EVENTS_PER_SEC: u64 = 1_000_000_000;
/// Bytes per second of an interval, likewise (a 1 TB/s link).
pub const MAX_BYTES_PER_SEC: u64 = 1_000_000_000_000;
/// Clock slack around the run's window: the agent's clock offset is an
/// estimate, and an interval ends when the agent's clock says so.
pub const CLOCK_SLACK: Duration = Duration::from_secs(60);
/// Intervals beyond the planned ones that an agent may still send: the
/// last interval runs until in-flight requests end (one timeout), and the
/// agent's workers cross a boundary or two while they stop.
pub const SEQ_SLACK: u64 = 2;

/// Distinct status codes one step's record may count (100..=999).
pub const MAX_STATUSES: usize = 900;

/// What was wrong with a message, in words that name the field and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse<T>(text: String) -> Result<T, Refusal> {
    Err(Refusal(text))
}

/// How long a run lasts, its snapshot interval and its request timeout.
#[derive(Debug, Clone, Copy)]
pub struct RunTiming {
    pub duration: Duration,
    pub interval: Duration,
    pub timeout: Duration,
}

/// The run as the coordinator planned it: what run messages are checked against.
#[derive(Debug, Clone)]
pub struct RunBounds {
    pub run_id: String,
    pub phases: u32,
    pub steps: u32,
    /// The plan's probes: probe i reports as phase `phases`, step `steps + i`.
    pub probes: u32,
    /// The plan's flow requests: flow slot k of a request sent in phase p
    /// reports as phase `phases + 1 + p`, step `steps + probes + k`
    /// (contract F, `common/src/plan/flow.rs`).
    pub flows: u32,
    /// Checks in the plan (`Plan::check_names`): a check tally's index is below it.
    pub checks: u32,
    /// Names of the plan's faults.
    pub faults: Vec<String>,
    /// The highest interval number the run can have.
    pub max_seq: u64,
    /// The common start, in the coordinator's clock (unix nanoseconds).
    pub start_unix_nanos: i64,
    /// The planned end (start + duration + one timeout), likewise.
    pub end_unix_nanos: i64,
    /// Most requests one agent can report in one interval; most bytes.
    pub max_count: u64,
    pub max_bytes: u64,
    /// How many intervals before its own a snapshot may add late
    /// completions to (`StepStats.due_seq`): a request lasts at most one
    /// timeout, and its interval's snapshot may leave just before it ends.
    pub max_late: u64,
}

impl RunBounds {
    /// The bounds of a run of `phases` and `steps` with `faults` (names),
    /// timed by `timing`, starting at `start_unix_nanos`.
    pub fn new(run_id: &str, phases: usize, steps: usize, faults: Vec<String>, timing: RunTiming, start_unix_nanos: i64) -> Self {
        let RunTiming { duration, interval, timeout } = timing;
        let interval_nanos = interval.as_nanos().max(1);
        let intervals = (duration + timeout).as_nanos().div_ceil(interval_nanos);
        // The last interval can last until the in-flight requests end.
        let longest = (interval + timeout + Duration::from_secs(1)).as_secs().max(1);
        RunBounds {
            run_id: run_id.to_string(),
            phases: u32::try_from(phases).unwrap_or(u32::MAX),
            steps: u32::try_from(steps).unwrap_or(u32::MAX),
            probes: 0,
            flows: 0,
            checks: 0,
            faults,
            max_seq: u64::try_from(intervals).unwrap_or(u64::MAX).saturating_add(SEQ_SLACK),
            start_unix_nanos,
            end_unix_nanos: start_unix_nanos.saturating_add(i64::try_from((duration + timeout).as_nanos()).unwrap_or(i64::MAX)),
            max_count: MAX_EVENTS_PER_SEC.saturating_mul(longest),
            max_bytes: MAX_BYTES_PER_SEC.saturating_mul(longest),
            max_late: late_intervals(interval, timeout).saturating_add(SEQ_SLACK),
        }
    }

    /// The same bounds for a plan with `probes` probes (contract P: their
    /// records carry phase index `phases` and step indices from `steps` on).
    pub fn with_probes(mut self, probes: usize) -> Self {
        self.probes = u32::try_from(probes).unwrap_or(u32::MAX);
        self
    }

    /// The same bounds for a plan with `flows` flow requests (contract F).
    pub fn with_flows(mut self, flows: usize) -> Self {
        self.flows = u32::try_from(flows).unwrap_or(u32::MAX);
        self
    }

    /// Whether a record's (phase, step) is the plan's: a load step in a
    /// phase, a probe, or a flow request in a phase.
    fn knows_step(&self, phase: u32, step: u32) -> bool {
        let flow_base = u64::from(self.steps) + u64::from(self.probes);
        let flow = phase > self.phases && u64::from(phase) <= 2 * u64::from(self.phases) && u64::from(step) >= flow_base && u64::from(step) - flow_base < u64::from(self.flows);
        (phase < self.phases && step < self.steps) || (phase == self.phases && step >= self.steps && step - self.steps < self.probes) || flow
    }

    /// The same bounds for a plan with `checks` checks (none unless said).
    pub fn with_checks(mut self, checks: usize) -> Self {
        self.checks = u32::try_from(checks).unwrap_or(u32::MAX);
        self
    }

    /// Whether `t` (the agent's clock, unix nanoseconds) falls in the run's
    /// window once the agent's `offset` is taken off: from the start (less
    /// the slack) to `until` in the coordinator's clock (plus the slack) —
    /// `now` for what already happened, the planned end for a schedule.
    fn check_instant(&self, what: &str, t: i64, offset: i64, until: i64) -> Result<(), Refusal> {
        let slack = CLOCK_SLACK.as_nanos() as i64;
        let Some(ours) = t.checked_sub(offset) else {
            return refuse(format!("{what} {t} is not a time (with the clock offset {offset} ns it overflows)"));
        };
        let (from, to) = (self.start_unix_nanos.saturating_sub(slack), until.saturating_add(slack));
        if ours < from || ours > to {
            return refuse(format!("{what} {t} lies outside the run's window ({from}..={to} in the coordinator's clock, after the agent's offset {offset} ns)"));
        }
        Ok(())
    }
}

fn check_len(what: &str, text: &str, max: usize) -> Result<(), Refusal> {
    if text.len() > max {
        return refuse(format!("{what} is {} bytes long, over the limit of {max}", text.len()));
    }
    Ok(())
}

fn check_id(what: &str, text: &str) -> Result<(), Refusal> {
    check_len(what, text, MAX_ID)?;
    // Ids end up in logs, progress lines and reports: no line breaks or
    // escapes that could forge a line there.
    if text.chars().any(char::is_control) {
        return refuse(format!("{what} {text:?} holds control characters"));
    }
    Ok(())
}

fn check_count(what: &str, n: u64, max: u64) -> Result<(), Refusal> {
    if n > max {
        return refuse(format!("{what} {n} is beyond what one agent can measure in an interval ({max})"));
    }
    Ok(())
}

/// A registration: sizes of every field, the lease, and a clock that can be
/// compared with ours (`now`) without overflowing.
pub fn check_register(r: &Register, now: i64) -> Result<(), Refusal> {
    if r.agent_id.is_empty() {
        return refuse("Register.agent_id is empty".into());
    }
    check_id("Register.agent_id", &r.agent_id)?;
    check_id("Register.node", &r.node)?;
    check_id("Register.version", &r.version)?;
    check_id("Register.active_run_id", &r.active_run_id)?;
    if r.labels.len() > MAX_LIST {
        return refuse(format!("Register.labels has {} entries, over the limit of {MAX_LIST}", r.labels.len()));
    }
    for (k, v) in &r.labels {
        check_id("a label key", k)?;
        check_len("a label value", v, MAX_TEXT)?;
    }
    if r.capabilities.len() > MAX_LIST {
        return refuse(format!("Register.capabilities has {} entries, over the limit of {MAX_LIST}", r.capabilities.len()));
    }
    for c in &r.capabilities {
        check_id("a capability name", &c.name)?;
        check_len("a capability detail", &c.detail, MAX_TEXT)?;
    }
    if r.recovered.len() > MAX_LIST {
        return refuse(format!("Register.recovered has {} entries, over the limit of {MAX_LIST}", r.recovered.len()));
    }
    for f in &r.recovered {
        check_id("a recovered fault's run id", &f.run_id)?;
        check_id("a recovered fault's name", &f.fault)?;
        check_id("a recovered fault's kind", &f.kind)?;
        check_len("a recovered fault's error", &f.error, MAX_TEXT)?;
    }
    if Duration::from_millis(r.lease_ms) > MAX_LEASE {
        return refuse(format!("Register.lease_ms {} is longer than the coordinator's limit of {MAX_LEASE:?}", r.lease_ms));
    }
    if r.clock_unix_nanos.checked_sub(now).is_none() {
        return refuse(format!("Register.clock_unix_nanos {} is not a time", r.clock_unix_nanos));
    }
    Ok(())
}

/// A clock echo's offset and round trip, or None when its times are not
/// times (their differences overflow).
pub fn clock_sample(e: &ClockEcho, t4: i64) -> Option<(i64, i64)> {
    let rtt = t4.checked_sub(e.t1_unix_nanos)?.checked_sub(e.t3_unix_nanos.checked_sub(e.t2_unix_nanos)?)?;
    let offset = e.t2_unix_nanos.checked_sub(e.t1_unix_nanos)?.checked_add(e.t3_unix_nanos.checked_sub(t4)?)? / 2;
    Some((offset, rtt))
}

/// A snapshot of `agent_id` (whose clock is `offset` ahead of ours), at our
/// time `now`: its seq, interval bounds, indices, list lengths, counts and
/// histogram sizes. Checked before any histogram is decoded.
/// How many intervals back a request due in one interval may complete: a
/// timeout's worth. The agent files anything later into the oldest of
/// them (a pacer far behind its schedule), so a saturated client shows as
/// such instead of sending a snapshot this side must refuse.
pub fn late_intervals(interval: Duration, timeout: Duration) -> u64 {
    u64::try_from(timeout.as_nanos().div_ceil(interval.as_nanos().max(1))).unwrap_or(u64::MAX)
}

pub fn check_snapshot(s: &Snapshot, b: &RunBounds, offset: i64, now: i64) -> Result<(), Refusal> {
    if s.seq > b.max_seq {
        return refuse(format!("a snapshot with seq {}, beyond the run's last possible interval ({})", s.seq, b.max_seq));
    }
    b.check_instant("a snapshot's interval start", s.interval_start_unix_nanos, offset, now)?;
    b.check_instant("a snapshot's interval end", s.interval_end_unix_nanos, offset, now)?;
    if s.interval_end_unix_nanos < s.interval_start_unix_nanos {
        return refuse(format!("a snapshot (seq {}) whose interval ends ({}) before it starts ({})", s.seq, s.interval_end_unix_nanos, s.interval_start_unix_nanos));
    }
    // One entry per (phase, step, outcome) at most (and per probe, contract
    // P), for its own interval and each earlier one it may add late
    // completions to.
    let max_steps = (u64::from(b.phases) * (u64::from(b.steps) + u64::from(b.flows)) + u64::from(b.probes)) * 2 * (1 + b.max_late);
    if s.steps.len() as u64 > max_steps {
        return refuse(format!("a snapshot (seq {}) with {} step entries; the plan has room for {max_steps}", s.seq, s.steps.len()));
    }
    if s.phases.len() as u64 > u64::from(b.phases) {
        return refuse(format!("a snapshot (seq {}) with {} phase schedules; the plan has {} phases", s.seq, s.phases.len(), b.phases));
    }
    for st in &s.steps {
        if let Some(due) = st.due_seq.filter(|&due| due > s.seq || due < s.seq.saturating_sub(b.max_late)) {
            return refuse(format!("a snapshot (seq {}) adding to interval {due}; late completions belong to the {} intervals before it", s.seq, b.max_late));
        }
        if !b.knows_step(st.phase, st.step) {
            return refuse(format!(
                "a snapshot (seq {}) for phase {} step {}; the plan has {} phases, {} steps and {} probes",
                s.seq, st.phase, st.step, b.phases, b.steps, b.probes
            ));
        }
        for (name, h) in [("latency", &st.latency_hist), ("service", &st.service_hist), ("dispatch", &st.dispatch_hist), ("handshake", &st.handshake_hist)] {
            if h.len() > MAX_HISTOGRAM {
                return refuse(format!("a snapshot (seq {}) with a {} KiB {name} histogram, over the limit of {} KiB", s.seq, h.len() >> 10, MAX_HISTOGRAM >> 10));
            }
        }
        check_count("a snapshot's request count", st.requests, b.max_count)?;
        check_count("a snapshot's bytes sent", st.bytes_sent, b.max_bytes)?;
        check_count("a snapshot's bytes received", st.bytes_received, b.max_bytes)?;
        if st.errors.len() > ErrorKind::ALL.len() {
            return refuse(format!("a snapshot (seq {}) with {} error counts for one step; there are {} kinds", s.seq, st.errors.len(), ErrorKind::ALL.len()));
        }
        let mut errors = 0u64;
        for e in &st.errors {
            check_id("an error kind", &e.kind)?;
            check_count("a snapshot's error count", e.count, b.max_count)?;
            errors = errors.saturating_add(e.count);
        }
        check_count("a snapshot's error count", errors, b.max_count)?;
        // Every error is a failed request (dropped and aborted ones too).
        if errors > st.requests {
            return refuse(format!("a snapshot (seq {}) with {errors} errors for one step but {} requests", s.seq, st.requests));
        }
        // One entry per status code at most; one per check.
        if st.statuses.len() > MAX_STATUSES {
            return refuse(format!("a snapshot (seq {}) with {} status counts for one step, over the limit of {MAX_STATUSES}", s.seq, st.statuses.len()));
        }
        for c in &st.statuses {
            if !(100..=999).contains(&c.status) {
                return refuse(format!("a snapshot (seq {}) counting status {}, which is not an HTTP status code", s.seq, c.status));
            }
            check_count("a snapshot's status count", c.count, b.max_count)?;
        }
        if st.checks.len() as u64 > u64::from(b.checks) {
            return refuse(format!("a snapshot (seq {}) with {} check tallies for one step; the plan has {} checks", s.seq, st.checks.len(), b.checks));
        }
        for c in &st.checks {
            if c.check >= b.checks {
                return refuse(format!("a snapshot (seq {}) with a tally of check {}; the plan has {} checks", s.seq, c.check, b.checks));
            }
            check_count("a snapshot's passed checks", c.passed, b.max_count)?;
            check_count("a snapshot's failed checks", c.failed, b.max_count)?;
        }
    }
    for p in &s.phases {
        if p.phase >= b.phases {
            return refuse(format!("a snapshot (seq {}) with the schedule of phase {}; the plan has {} phases", s.seq, p.phase, b.phases));
        }
        for (name, n) in [("scheduled", p.scheduled), ("dropped", p.dropped), ("late", p.late)] {
            check_count(&format!("a snapshot's {name} arrivals"), n, b.max_count)?;
        }
    }
    Ok(())
}

/// A steady-state answer to a request for `probes` probes: one outcome per
/// probe of the plan at most, short texts.
pub fn check_steady_reply(r: &SteadyStateReply, probes: usize) -> Result<(), Refusal> {
    check_id("SteadyStateReply.run_id", &r.run_id)?;
    check_len("SteadyStateReply.error", &r.error, MAX_TEXT)?;
    if r.probes.len() > probes {
        return refuse(format!("a steady-state answer with {} probe outcomes; the plan has {probes} probes", r.probes.len()));
    }
    for p in &r.probes {
        if p.probe as usize >= probes {
            return refuse(format!("a steady-state answer for probe #{}; the plan has {probes} probes", p.probe));
        }
        check_len("ProbeOutcome.detail", &p.detail, MAX_TEXT)?;
    }
    Ok(())
}

/// An agent's closing message: its totals fit the run, its times its window.
pub fn check_finished(f: &RunFinished, b: &RunBounds, offset: i64, now: i64) -> Result<(), Refusal> {
    let intervals = b.max_seq.saturating_add(1);
    let most = b.max_count.saturating_mul(intervals).saturating_mul((u64::from(b.phases.max(1)) * (u64::from(b.steps.max(1)) + u64::from(b.flows)) + u64::from(b.probes)) * 2);
    if f.snapshots_sent > intervals {
        return refuse(format!("RunFinished.snapshots_sent {} is more than the run's {intervals} intervals", f.snapshots_sent));
    }
    for (name, n) in [("requests", f.requests), ("errors", f.errors), ("evicted", f.evicted)] {
        if n > most {
            return refuse(format!("RunFinished.{name} {n} is beyond what one agent can measure in this run ({most})"));
        }
    }
    check_len("RunFinished.error", &f.error, MAX_TEXT)?;
    if f.first_request_unix_nanos != 0 {
        b.check_instant("RunFinished.first_request_unix_nanos", f.first_request_unix_nanos, offset, now)?;
    }
    Ok(())
}

/// A fault event: a fault of the plan, a known status, bounded texts, times
/// in the run's window.
pub fn check_fault(ev: &FaultEvent, b: &RunBounds, offset: i64, now: i64) -> Result<(), Refusal> {
    check_id("FaultEvent.fault", &ev.fault)?;
    if !b.faults.contains(&ev.fault) {
        return refuse(format!("a fault event for {:?}, which is not a fault of the plan", ev.fault));
    }
    // An agent reports what its own process did; `reverted_at_startup` is
    // the coordinator's word for a successor's journal recovery.
    match crate::v1::FaultStatus::try_from(ev.fault_status) {
        Ok(crate::v1::FaultStatus::Unspecified | crate::v1::FaultStatus::RevertedAtStartup) | Err(_) => {
            return refuse(format!("a fault event with status {}, which an agent does not report", ev.fault_status));
        }
        Ok(_) => {}
    }
    check_id("FaultEvent.kind", &ev.kind)?;
    check_len("FaultEvent.error", &ev.error, MAX_TEXT)?;
    for (name, list) in [("apply_commands", &ev.apply_commands), ("revert_commands", &ev.revert_commands)] {
        if list.len() > MAX_LIST {
            return refuse(format!("FaultEvent.{name} has {} entries, over the limit of {MAX_LIST}", list.len()));
        }
        for c in list {
            check_len("a fault command", c, MAX_COMMAND)?;
        }
    }
    if let Some(e) = &ev.effect {
        check_id("FaultEffect.measure", &e.measure)?;
        check_len("FaultEffect.detail", &e.detail, MAX_TEXT)?;
    }
    // A schedule may lie ahead (a dry run reports every fault at once);
    // what was applied or reverted has happened.
    let planned = now.max(b.end_unix_nanos);
    for (name, t, until) in [("scheduled", ev.scheduled_unix_nanos, planned), ("applied", ev.applied_unix_nanos, now), ("reverted", ev.reverted_unix_nanos, now)] {
        if t != 0 {
            b.check_instant(&format!("FaultEvent.{name}_unix_nanos"), t, offset, until)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ErrorCount, StepStats};

    fn bounds() -> RunBounds {
        let timing = RunTiming { duration: Duration::from_secs(10), interval: Duration::from_secs(1), timeout: Duration::from_secs(2) };
        RunBounds::new("r", 2, 3, vec!["f".into()], timing, 1_000_000_000_000)
    }

    fn snapshot(seq: u64) -> Snapshot {
        let t = 1_000_000_000_000i64.wrapping_add((seq as i64).wrapping_mul(1_000_000_000));
        Snapshot { run_id: "r".into(), agent_id: "a".into(), seq, interval_start_unix_nanos: t, interval_end_unix_nanos: t.wrapping_add(1_000_000_000), ..Default::default() }
    }

    #[test]
    fn a_snapshot_with_more_errors_than_requests_is_refused() {
        let b = RunBounds::new("r", 1, 1, vec![], RunTiming { duration: Duration::from_secs(10), interval: Duration::from_secs(1), timeout: Duration::from_secs(2) }, 0);
        let step = |requests, errors| StepStats { requests, errors: vec![ErrorCount { kind: "dropped".into(), count: errors }], ..StepStats::default() };
        let snapshot = |st| Snapshot { run_id: "r".into(), seq: 1, steps: vec![st], ..Snapshot::default() };
        assert!(check_snapshot(&snapshot(step(5, 5)), &b, 0, 0).is_ok());
        let e = check_snapshot(&snapshot(step(5, 6)), &b, 0, 0).unwrap_err();
        assert!(format!("{e:?}").contains("6 errors for one step but 5 requests"), "{e:?}");
    }

    #[test]
    fn late_additions_pass_within_a_timeout_of_their_snapshot_and_nowhere_else() {
        let b = bounds();
        let now = 1_000_000_000_000 + 12_000_000_000;
        // 2 s timeout at 1 s intervals: up to 2 + SEQ_SLACK intervals back.
        assert_eq!(b.max_late, 2 + SEQ_SLACK);
        let with_due = |seq: u64, due: u64| {
            let mut s = snapshot(seq);
            s.steps.push(StepStats { due_seq: Some(due), ..Default::default() });
            s
        };
        for due in 10 - b.max_late..=10 {
            check_snapshot(&with_due(10, due), &b, 0, now).unwrap();
        }
        assert!(check_snapshot(&with_due(10, 11), &b, 0, now).unwrap_err().0.contains("adding to interval 11"), "not into the future");
        assert!(check_snapshot(&with_due(10, 9 - b.max_late), &b, 0, now).is_err(), "not further back than a request can last");
    }

    #[test]
    fn the_runs_own_intervals_pass_and_others_do_not() {
        let b = bounds();
        let now = 1_000_000_000_000 + 12_000_000_000;
        assert_eq!(b.max_seq, 12 + SEQ_SLACK);
        for seq in 0..=b.max_seq.min(13) {
            check_snapshot(&snapshot(seq), &b, 0, now).unwrap();
        }
        assert!(check_snapshot(&snapshot(1 << 63), &b, 0, now).is_err());
        let mut s = snapshot(0);
        s.steps.push(StepStats { phase: 2, ..Default::default() });
        assert!(check_snapshot(&s, &b, 0, now).unwrap_err().0.contains("phase 2"));
        s.steps[0] = StepStats { requests: u64::MAX, ..Default::default() };
        assert!(check_snapshot(&s, &b, 0, now).is_err());
        // Probe records (contract P): phase = the plan's phase count, step
        // from the step count on, only as many as the plan has probes.
        let probe = |step| StepStats { phase: b.phases, step, ..Default::default() };
        let mut s = snapshot(0);
        s.steps.push(probe(b.steps));
        assert!(check_snapshot(&s, &b, 0, now).unwrap_err().0.contains("0 probes"));
        let b = b.clone().with_probes(1);
        check_snapshot(&s, &b, 0, now).unwrap();
        s.steps[0] = probe(b.steps + 1);
        assert!(check_snapshot(&s, &b, 0, now).is_err());
        s.steps[0] = StepStats { phase: b.phases, step: 0, ..Default::default() };
        assert!(check_snapshot(&s, &b, 0, now).is_err());
        // Flow request records (contract F): phase `phases + 1 + p`, step
        // from `steps + probes` on, as many as the plan has flow requests.
        let flow = |phase, step| StepStats { phase, step, ..Default::default() };
        s.steps[0] = flow(b.phases + 1, b.steps + 1);
        assert!(check_snapshot(&s, &b, 0, now).is_err(), "no flows in the plan");
        let b = b.clone().with_flows(2);
        for (phase, step) in [(b.phases + 1, b.steps + 1), (2 * b.phases, b.steps + 2)] {
            s.steps[0] = flow(phase, step);
            check_snapshot(&s, &b, 0, now).unwrap();
        }
        for (phase, step) in [(2 * b.phases + 1, b.steps + 1), (b.phases + 1, b.steps + 3), (b.phases + 1, b.steps)] {
            s.steps[0] = flow(phase, step);
            assert!(check_snapshot(&s, &b, 0, now).is_err(), "phase {phase} step {step}");
        }
        let mut s = snapshot(0);
        s.interval_start_unix_nanos = i64::MIN;
        assert!(check_snapshot(&s, &b, 0, now).is_err());
        assert!(check_snapshot(&snapshot(1), &b, i64::MIN, now).is_err());
    }

    #[test]
    fn check_tallies_must_name_a_check_of_the_plan_and_statuses_a_status() {
        use crate::v1::{CheckTally, StatusCount};
        let b = bounds().with_checks(2);
        let now = 1_000_000_000_000 + 12_000_000_000;
        let mut s = snapshot(0);
        s.steps.push(StepStats { checks: vec![CheckTally { check: 1, passed: 3, failed: 1 }], statuses: vec![StatusCount { status: 503, count: 4 }], ..Default::default() });
        check_snapshot(&s, &b, 0, now).unwrap();
        s.steps[0].checks[0].check = 2;
        assert!(check_snapshot(&s, &b, 0, now).unwrap_err().0.contains("check 2"));
        s.steps[0].checks[0].check = 0;
        s.steps[0].statuses[0].status = 70_000;
        assert!(check_snapshot(&s, &b, 0, now).unwrap_err().0.contains("status 70000"));
    }

    #[test]
    fn a_dry_runs_fault_schedule_may_lie_ahead_but_not_outside_the_plan() {
        let b = bounds();
        let now = b.start_unix_nanos;
        let ev = |scheduled: i64, applied: i64| FaultEvent { fault: "f".into(), fault_status: crate::v1::FaultStatus::DryRun as i32, scheduled_unix_nanos: scheduled, applied_unix_nanos: applied, ..Default::default() };
        check_fault(&ev(now + 11_000_000_000, 0), &b, 0, now).unwrap();
        assert!(check_fault(&ev(now + 3_600_000_000_000, 0), &b, 0, now).is_err());
        assert!(check_fault(&ev(now, now + 3_600_000_000_000), &b, 0, now).is_err());
        assert!(check_fault(&FaultEvent { fault: "other".into(), ..ev(now, 0) }, &b, 0, now).is_err());
    }

    #[test]
    fn clock_samples_that_overflow_are_no_samples() {
        assert_eq!(clock_sample(&ClockEcho { t1_unix_nanos: 10, t2_unix_nanos: 15, t3_unix_nanos: 16 }, 20), Some((0, 9)));
        assert_eq!(clock_sample(&ClockEcho { t1_unix_nanos: i64::MIN, t2_unix_nanos: i64::MAX, t3_unix_nanos: 0 }, 20), None);
    }
}
