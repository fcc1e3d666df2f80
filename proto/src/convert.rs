//! Between the wire messages and the measurement types both sides compute
//! with: histograms travel as V2 bytes (deflated when large) and come back bit-exact.

mod hists;

use std::collections::BTreeMap;

use stampede_common::histogram::{self, CodecError};
use stampede_common::stats::{AccStats, CheckCount, ErrorKind, Record, RunStats, ScheduleStats, StepKey};

use crate::v1::{CheckTally, ErrorCount, FaultStatus, Outcome, PhaseSchedule, StatusCount, StepStats};

impl FaultStatus {
    /// The status as report.json and the progress lines spell it:
    /// lowercase, without the enum's prefix (`revert_failed`).
    pub fn name(self) -> &'static str {
        match self {
            FaultStatus::Unspecified => "unspecified",
            FaultStatus::Planned => "planned",
            FaultStatus::Applied => "applied",
            FaultStatus::Reverted => "reverted",
            FaultStatus::Failed => "failed",
            FaultStatus::RevertFailed => "revert_failed",
            FaultStatus::DryRun => "dry_run",
            FaultStatus::RevertedAtStartup => "reverted_at_startup",
            FaultStatus::Skipped => "skipped",
            FaultStatus::Simulated => "simulated",
        }
    }
}

/// A wall-clock instant as the wire carries it: unix nanoseconds (0 for an
/// instant before the epoch).
pub fn unix_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// A run's (or an interval's) stats as a snapshot carries them, each
/// histogram as [`histogram::encode_wire`] puts it on the wire.
pub fn encode_steps(stats: &RunStats) -> (Vec<StepStats>, Vec<PhaseSchedule>) {
    encode_steps_with(stats, histogram::encode_wire)
}

/// [`encode_steps`] with each histogram encoded by `encode`.
pub fn encode_steps_with(stats: &RunStats, encode: fn(&histogram::Hist) -> Vec<u8>) -> (Vec<StepStats>, Vec<PhaseSchedule>) {
    let steps = stats
        .steps
        .iter()
        .map(|(k, r)| StepStats {
            phase: k.phase,
            step: k.step,
            outcome: if k.ok { Outcome::Ok } else { Outcome::Error } as i32,
            latency_hist: encode(&r.latency),
            service_hist: encode(&r.service),
            dispatch_hist: encode(&r.dispatch),
            // Plain HTTP records no handshake: send nothing rather than an
            // encoded empty histogram.
            handshake_hist: if r.handshake.is_empty() { Vec::new() } else { encode(&r.handshake) },
            requests: r.requests,
            errors: ErrorKind::ALL
                .iter()
                .zip(r.errors)
                .filter(|(_, n)| *n > 0)
                .map(|(k, count)| ErrorCount { kind: k.as_str().to_string(), count })
                .collect(),
            bytes_sent: r.bytes_sent,
            bytes_received: r.bytes_received,
            due_seq: None,
            // Zero entries stay behind (the recorder zeroes rather than
            // clears them, so as not to allocate): they carry nothing.
            statuses: r.statuses.iter().filter(|(_, n)| **n > 0).map(|(s, n)| StatusCount { status: u32::from(*s), count: *n }).collect(),
            checks: r
                .checks
                .iter()
                .filter(|(_, c)| c.passed > 0 || c.failed > 0)
                .map(|(i, c)| CheckTally { check: *i, passed: c.passed, failed: c.failed })
                .collect(),
        })
        .collect();
    let phases = stats
        .schedule
        .iter()
        .map(|(p, s)| PhaseSchedule { phase: *p, scheduled: s.scheduled, dropped: s.dropped, late: s.late, max_lag_us: s.max_lag_us, last_done_us: s.last_done_us })
        .collect();
    (steps, phases)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Histogram(#[from] CodecError),
    #[error("unknown outcome {0}")]
    Outcome(i32),
    #[error("unknown error kind `{0}`")]
    ErrorKind(String),
    #[error("the counts of phase {phase}, step {step} add up past 2^64")]
    Overflow { phase: u32, step: u32 },
    #[error("status {0} is not an HTTP status code")]
    Status(u32),
    #[error("the schedule counts of phase {0} add up past 2^64")]
    ScheduleOverflow(u32),
}

/// A step entry's key and counters, checked (histograms aside).
pub fn decode_counts(s: &StepStats) -> Result<(StepKey, Record<()>), DecodeError> {
    let ok = match Outcome::try_from(s.outcome) {
        Ok(Outcome::Ok) => true,
        Ok(Outcome::Error) => false,
        _ => return Err(DecodeError::Outcome(s.outcome)),
    };
    let overflow = || DecodeError::Overflow { phase: s.phase, step: s.step };
    let mut r = Record::<()> { requests: s.requests, bytes_sent: s.bytes_sent, bytes_received: s.bytes_received, ..Default::default() };
    for e in &s.errors {
        let kind = ErrorKind::parse(&e.kind).ok_or_else(|| DecodeError::ErrorKind(e.kind.clone()))?;
        r.errors[kind as usize] = r.errors[kind as usize].checked_add(e.count).ok_or_else(overflow)?;
    }
    for c in &s.statuses {
        let status = u16::try_from(c.status).ok().filter(|s| (100..=999).contains(s)).ok_or(DecodeError::Status(c.status))?;
        let n: &mut u64 = r.statuses.entry(status).or_default();
        *n = n.checked_add(c.count).ok_or_else(overflow)?;
    }
    for c in &s.checks {
        let n: &mut CheckCount = r.checks.entry(c.check).or_default();
        n.passed = n.passed.checked_add(c.passed).ok_or_else(overflow)?;
        n.failed = n.failed.checked_add(c.failed).ok_or_else(overflow)?;
    }
    Ok((StepKey { phase: s.phase, step: s.step, ok }, r))
}

fn decode_schedules(phases: &[PhaseSchedule], schedule: &mut BTreeMap<u32, ScheduleStats>) -> Result<(), DecodeError> {
    for p in phases {
        let s = ScheduleStats { scheduled: p.scheduled, dropped: p.dropped, late: p.late, max_lag_us: p.max_lag_us, last_done_us: p.last_done_us };
        let slot = schedule.entry(p.phase).or_default();
        if !slot.fits(&s) {
            return Err(DecodeError::ScheduleOverflow(p.phase));
        }
        slot.add(&s);
    }
    Ok(())
}

/// A snapshot's entries decoded to `Histogram`s (the timeline's final
/// intervals, tests): [`add_steps`] into an empty accumulator, converted.
pub fn decode_steps(steps: &[StepStats], phases: &[PhaseSchedule]) -> Result<RunStats, DecodeError> {
    let mut acc = AccStats::default();
    add_steps(steps, phases, None, &mut [&mut acc], |_| 0, &mut Vec::new())?;
    Ok(acc.to_run_stats())
}

/// Adds a snapshot's entries, each decoded straight into the accumulators
/// (`histogram::accum`): every entry to `total` (when given) and to
/// `parts[part_of(entry)]`; the schedules to `total` and `parts[0]`.
/// All or nothing: counts that would pass 2^64 in the snapshot or in a
/// target, or a histogram that does not decode, and nothing was added
/// anywhere. `scratch` holds inflated histograms.
pub fn add_steps(
    steps: &[StepStats],
    phases: &[PhaseSchedule],
    mut total: Option<&mut AccStats>,
    parts: &mut [&mut AccStats],
    part_of: impl Fn(&StepStats) -> usize,
    scratch: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    // Counters first, all checked before anything is added: per part and
    // key within the snapshot, then against the targets.
    let mut counts: BTreeMap<(usize, StepKey), Record<()>> = BTreeMap::new();
    let mut routed = Vec::with_capacity(steps.len());
    for s in steps {
        let (key, r) = decode_counts(s)?;
        let part = part_of(s);
        assert!(part < parts.len(), "part_of names a part");
        let slot = counts.entry((part, key)).or_default();
        if !slot.fits(&r) {
            return Err(DecodeError::Overflow { phase: s.phase, step: s.step });
        }
        slot.add_counters(&r);
        routed.push((part, key));
    }
    let mut schedule = BTreeMap::new();
    decode_schedules(phases, &mut schedule)?;
    let mut by_key: BTreeMap<StepKey, Record<()>> = BTreeMap::new();
    for ((part, key), r) in &counts {
        let overflow = DecodeError::Overflow { phase: key.phase, step: key.step };
        let all = by_key.entry(*key).or_default();
        if !all.fits(r) || !parts[*part].steps.get(key).is_none_or(|mine| mine.fits(r)) {
            return Err(overflow);
        }
        all.add_counters(r);
    }
    for (key, r) in &by_key {
        if total.as_ref().is_some_and(|t| !t.steps.get(key).is_none_or(|mine| mine.fits(r))) {
            return Err(DecodeError::Overflow { phase: key.phase, step: key.step });
        }
    }
    for (p, s) in &schedule {
        let fits = |t: &AccStats| t.schedule.get(p).copied().unwrap_or_default().fits(s);
        if total.as_deref().is_some_and(|t| !fits(t)) || parts.first().is_some_and(|t| !fits(t)) {
            return Err(DecodeError::ScheduleOverflow(*p));
        }
    }
    // Then the histograms (which may still be refused): undone on error.
    hists::add_all(steps, &routed, total.as_deref_mut(), parts, scratch)?;
    for ((part, key), r) in &counts {
        parts[*part].steps.entry(*key).or_default().add_counters(r);
    }
    for (key, r) in &by_key {
        if let Some(t) = total.as_deref_mut() {
            t.steps.entry(*key).or_default().add_counters(r);
        }
    }
    for (p, s) in &schedule {
        if let Some(t) = total.as_deref_mut() {
            t.schedule.entry(*p).or_default().add(s);
        }
        if let Some(t) = parts.first_mut() {
            t.schedule.entry(*p).or_default().add(s);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_common::stats::StepRecord;

    /// A plain V2 histogram of stampede's shape with this payload.
    fn v2(payload: &[u8]) -> Vec<u8> {
        let mut b = 0x1c84_9313u32.to_be_bytes().to_vec();
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&histogram::HIGHEST_US.to_be_bytes());
        b.extend_from_slice(&1.0f64.to_bits().to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn a_snapshot_is_added_whole_or_not_at_all() {
        let mut stats = RunStats::default();
        for step in 0..3 {
            let mut r = StepRecord { requests: 10 + u64::from(step), ..Default::default() };
            for v in [100, 2_000, 30_000] {
                histogram::record_us(&mut r.latency, v * u64::from(step + 1));
                histogram::record_us(&mut r.service, v);
            }
            stats.steps.insert(StepKey { phase: 0, step, ok: true }, r);
        }
        stats.schedule.insert(0, ScheduleStats { scheduled: 5, ..Default::default() });
        let (steps, phases) = encode_steps(&stats);
        let mut scratch = Vec::new();
        let (mut total, mut first) = (AccStats::default(), AccStats::default());
        add_steps(&steps[..1], &phases, Some(&mut total), &mut [&mut first], |_| 0, &mut scratch).unwrap();
        let before = total.to_run_stats();
        // The last entry's dispatch histogram holds a count one past the
        // array, after counts that fit: refused, and nothing of the
        // snapshot stays anywhere, no record created for its steps.
        let mut forged = steps.clone();
        forged[2].dispatch_hist = v2(&[0x05, 0x0a, 0xff, 0xef, 0x02, 0x02]);
        let mut part = AccStats::default();
        let err = add_steps(&forged, &phases, Some(&mut total), &mut [&mut part], |_| 0, &mut scratch);
        assert!(err.is_err());
        let mut other = AccStats::default();
        let err = add_steps(&forged, &phases, Some(&mut total), &mut [&mut part, &mut other], |s| s.step as usize % 2, &mut scratch);
        assert!(matches!(err, Err(DecodeError::Histogram(_))), "{err:?}");
        assert!(part.steps.is_empty() && part.schedule.is_empty() && other.steps.is_empty());
        let after = total.to_run_stats();
        assert_eq!(after.steps.keys().collect::<Vec<_>>(), before.steps.keys().collect::<Vec<_>>());
        for (k, r) in &after.steps {
            let b = &before.steps[k];
            assert!(r.latency == b.latency && r.service == b.service && r.dispatch == b.dispatch && r.requests == b.requests, "{k:?}");
        }
        assert_eq!(after.schedule, before.schedule);
        // Whole: each entry to the total and its part, the schedule to part 0.
        add_steps(&steps, &phases, Some(&mut total), &mut [&mut part, &mut other], |s| s.step as usize % 2, &mut scratch).unwrap();
        let total = total.to_run_stats();
        let k0 = StepKey { phase: 0, step: 0, ok: true };
        assert_eq!(total.steps[&k0].requests, 20);
        assert_eq!(total.steps[&k0].latency.len(), 6);
        assert_eq!(part.to_run_stats().steps.keys().map(|k| k.step).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(other.to_run_stats().steps[&StepKey { phase: 0, step: 1, ok: true }].service, stats.steps[&StepKey { phase: 0, step: 1, ok: true }].service);
        assert_eq!((part.schedule.len(), other.schedule.len(), total.schedule[&0].scheduled), (1, 0, 10));
        // Counts that would pass 2^64 in the total: refused before any histogram is read.
        let mut full = AccStats::default();
        full.steps.insert(k0, stampede_common::stats::AccRecord { requests: u64::MAX, ..Default::default() });
        let err = add_steps(&steps, &phases, Some(&mut full), &mut [&mut AccStats::default()], |_| 0, &mut scratch);
        assert!(matches!(err, Err(DecodeError::Overflow { phase: 0, step: 0 })), "{err:?}");
        assert!(full.steps[&k0].latency.is_empty() && full.steps.len() == 1);
    }

    #[test]
    fn run_stats_survive_the_wire() {
        let mut stats = RunStats::default();
        let mut r = StepRecord::default();
        histogram::record_us(&mut r.latency, 1234);
        histogram::record_us(&mut r.service, 999);
        histogram::record_us(&mut r.handshake, 4321);
        r.requests = 3;
        r.errors[ErrorKind::Timeout as usize] = 2;
        r.count_status(504);
        r.count_status(504);
        r.count_check(3, false);
        stats.steps.insert(StepKey { phase: 1, step: 0, ok: false }, r);
        stats.schedule.insert(1, ScheduleStats { scheduled: 5, dropped: 1, late: 2, max_lag_us: 77, last_done_us: 1_234_567 });
        let (steps, phases) = encode_steps(&stats);
        let back = decode_steps(&steps, &phases).unwrap();
        let (k, r2) = back.steps.iter().next().unwrap();
        assert_eq!(*k, StepKey { phase: 1, step: 0, ok: false });
        assert_eq!(r2.latency, stats.steps[k].latency);
        assert_eq!(r2.handshake, stats.steps[k].handshake);
        assert_eq!(r2.errors, stats.steps[k].errors);
        assert_eq!(back.schedule, stats.schedule);
        assert_eq!(r2.statuses, stats.steps[k].statuses);
        assert_eq!(r2.checks, stats.steps[k].checks);
    }
}
