//! The `grpc_message` target: any bytes as the message an agent sends on
//! its session (`AgentMessage`), through what the coordinator does with it:
//! the bounds of `stampede_proto::limits` against a fixed run, then, for a
//! snapshot that passes, `decode_steps` and the checked merge into the
//! run's totals (`RunStats::checked_add`), and the same through the sparse
//! path `aggregate.rs` takes (`convert::add_steps` into accumulators).
//!
//! Besides "no panic", it checks the promise of the bounds: a snapshot that
//! passes them can cost no more than the run allows (its seq within the
//! run's intervals, its steps within the plan), and adding it to totals
//! already near 2^64 is refused rather than wrapped.

use prost::Message;
use stampede_common::stats::{AccRecord, AccStats, RunStats, StepKey, StepRecord};
use stampede_proto::convert::add_steps;
use stampede_proto::limits::{self, RunBounds, RunTiming};
use stampede_proto::v1::agent_message::Msg as Up;
use stampede_proto::v1::{AgentMessage, Snapshot};

/// The run every input is checked against (the seeds are made for it):
/// 3 phases, 2 steps, faults `db-slow` and `split`, 30 s in 1 s intervals,
/// 2 s timeout, starting at [`START`]; the coordinator's clock reads
/// [`NOW`] and the agent's clock is [`OFFSET`] ahead of it.
pub const START: i64 = 1_700_000_000_000_000_000;
pub const NOW: i64 = START + 20_000_000_000;
pub const OFFSET: i64 = 5_000_000;
pub const PHASES: usize = 3;
pub const STEPS: usize = 2;
pub const FAULTS: [&str; 2] = ["db-slow", "split"];

pub fn bounds() -> RunBounds {
    let second = std::time::Duration::from_secs(1);
    let timing = RunTiming { duration: 30 * second, interval: second, timeout: 2 * second };
    RunBounds::new("run-0f3c", PHASES, STEPS, FAULTS.iter().map(|f| f.to_string()).collect(), timing, START)
}

/// A refusal's kind: its words without numbers or quoted values.
fn shape(text: &str) -> String {
    text.split(['`', '"', '\'']).next().unwrap_or("").chars().filter(|c| !c.is_ascii_digit()).take(60).collect()
}

/// The target, returning what happened in a few words (see `plan_parser_outcome`).
pub fn grpc_message_outcome(data: &[u8]) -> String {
    let Ok(msg) = AgentMessage::decode(data) else {
        return "not protobuf".into();
    };
    let b = bounds();
    let checked = match &msg.msg {
        None => return "empty".into(),
        Some(Up::Heartbeat(_)) => return "heartbeat".into(),
        Some(Up::ClockEcho(e)) => return format!("clock echo: {}", if limits::clock_sample(e, NOW).is_some() { "sample" } else { "no sample" }),
        Some(Up::Register(r)) => ("register", limits::check_register(r, NOW)),
        Some(Up::Finished(f)) => ("finished", limits::check_finished(f, &b, OFFSET, NOW)),
        Some(Up::Fault(ev)) => ("fault", limits::check_fault(ev, &b, OFFSET, NOW)),
        Some(Up::SteadyState(r)) => ("steady state", limits::check_steady_reply(r, 2)),
        Some(Up::Snapshot(s)) => match limits::check_snapshot(s, &b, OFFSET, NOW) {
            Ok(()) => return format!("snapshot: {}", accepted_snapshot(s, &b)),
            Err(refusal) => ("snapshot", Err(refusal)),
        },
    };
    match checked {
        (kind, Ok(())) => format!("{kind}: ok"),
        (kind, Err(refusal)) => format!("{kind}: refused: {}", shape(&refusal.0)),
    }
}

/// What the aggregation does with a snapshot that passed the bounds.
fn accepted_snapshot(s: &Snapshot, b: &RunBounds) -> String {
    assert!(s.seq <= b.max_seq, "a snapshot beyond the run's intervals passed: seq {}", s.seq);
    let stats = match crate::stock_decode_steps(s) {
        Ok(stats) => stats,
        Err(e) => return format!("does not decode: {}", shape(&e)),
    };
    for k in stats.steps.keys() {
        assert!((k.phase as usize) < PHASES && (k.step as usize) < STEPS, "a step outside the plan passed: {k:?}");
    }
    let mut total = RunStats::default();
    total.checked_add(&stats).expect("a checked snapshot adds to empty totals");
    // The coordinator's own path (`aggregate.rs`): decoded straight into
    // the run's total and an interval's accumulator, to the same totals.
    let (mut fast, mut interval) = (AccStats::default(), AccStats::default());
    add_steps(&s.steps, &s.phases, Some(&mut fast), &mut [&mut interval], |_| 0, &mut Vec::new()).expect("decodes as the stock path did");
    let (fast, interval) = (fast.to_run_stats(), interval.to_run_stats());
    for (k, r) in &total.steps {
        for f in [&fast, &interval] {
            assert!(f.steps.get(k).is_some_and(|f| f.latency == r.latency && f.service == r.service && f.requests == r.requests), "{k:?}: the accumulator's merge differs");
        }
    }
    // The same snapshot again, as a second agent's: still checked.
    let twice = total.checked_add(&stats).is_ok();
    // Totals already near 2^64: a non-zero count must be refused, never wrapped.
    let mut near_max = RunStats::default();
    for k in stats.steps.keys() {
        near_max.steps.insert(*k, StepRecord { requests: u64::MAX - 1, ..StepRecord::default() });
    }
    let any_requests = stats.steps.values().any(|r| r.requests > 1);
    let mut near_acc = AccStats::default();
    for k in stats.steps.keys() {
        near_acc.steps.insert(*k, AccRecord { requests: u64::MAX - 1, ..AccRecord::default() });
    }
    let near = near_max.checked_add(&stats);
    assert!(!(any_requests && near.is_ok()), "a count past 2^64 was added");
    let mut part = AccStats::default();
    let added = add_steps(&s.steps, &s.phases, Some(&mut near_acc), &mut [&mut part], |_| 0, &mut Vec::new());
    assert_eq!(added.is_ok(), near.is_ok(), "the accumulator's merge checks counts like the stock one");
    if added.is_err() {
        assert!(part.steps.is_empty() && near_acc.steps.values().all(|r| r.requests == u64::MAX - 1 && r.latency.is_empty()), "a refused snapshot left counts behind");
    }
    let key = StepKey { phase: 0, step: 0, ok: true };
    format!("ok steps={} twice={twice} near_max={} has_first={}", stats.steps.len().min(3), near.is_ok(), stats.steps.contains_key(&key))
}

/// The seed corpus (`make_seeds` writes it to `seeds/grpc_message/`): one
/// valid message of each kind for [`bounds`], and the forged messages of
/// issue 8 item 2 (`regress-*`), which must be refused.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use stampede_common::histogram;
    use stampede_common::stats::{ErrorKind, ScheduleStats};
    use stampede_proto::convert::encode_steps;
    use stampede_proto::v1::{Capability, ClockEcho, FaultEffect, FaultEvent, FaultStatus, Register, RunFinished};

    let mut stats = RunStats::default();
    let mut ok = StepRecord { requests: 40, bytes_sent: 4_800, bytes_received: 20_480, ..StepRecord::default() };
    for v in [150, 900, 1_200, 45_000] {
        histogram::record_us(&mut ok.latency, v);
        histogram::record_us(&mut ok.service, v / 2 + 1);
        histogram::record_us(&mut ok.dispatch, 1 + v % 7);
    }
    stats.steps.insert(StepKey { phase: 1, step: 0, ok: true }, ok);
    let mut failed = StepRecord { requests: 2, ..StepRecord::default() };
    failed.errors[ErrorKind::Timeout as usize] = 2;
    stats.steps.insert(StepKey { phase: 1, step: 1, ok: false }, failed);
    stats.schedule.insert(1, ScheduleStats { scheduled: 42, dropped: 0, late: 1, max_lag_us: 900, last_done_us: 0 });
    let (steps, phases) = encode_steps(&stats);
    let at = |seq: i64| START + OFFSET + seq * 1_000_000_000;
    let snapshot = Snapshot {
        run_id: "run-0f3c".into(),
        agent_id: "agent-a".into(),
        seq: 12,
        interval_start_unix_nanos: at(12),
        interval_end_unix_nanos: at(13),
        steps,
        phases,
        last: false,
        in_flight: 3,
    };
    let msg = |m: Up, delivery: u64| AgentMessage { msg: Some(m), delivery }.encode_to_vec();
    let forged = |f: &dyn Fn(&mut Snapshot)| {
        let mut s = snapshot.clone();
        f(&mut s);
        msg(Up::Snapshot(s), 9)
    };
    let register = Register {
        agent_id: "agent-a".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        capacity: 2,
        capabilities: vec![Capability { name: "nft".into(), available: true, detail: "nftables v1.0.9".into() }],
        clock_unix_nanos: NOW + OFFSET,
        version: "0.1.0".into(),
        workers: 2,
        node: "node-1".into(),
        instance: 0x5eed,
        active_run_id: String::new(),
        lease_ms: 10_000,
        recovered: Vec::new(),
        max_connections: 65_000,
    };
    let finished = RunFinished { run_id: "run-0f3c".into(), agent_id: "agent-a".into(), snapshots_sent: 13, requests: 520, errors: 4, first_request_unix_nanos: at(0) + 300_000, ..Default::default() };
    let fault = FaultEvent {
        run_id: "run-0f3c".into(),
        agent_id: "agent-a".into(),
        fault: "split".into(),
        kind: "partition".into(),
        fault_status: FaultStatus::Applied as i32,
        scheduled_unix_nanos: at(5),
        applied_unix_nanos: at(5) + 2_000_000,
        apply_commands: vec!["nft -f -".into()],
        revert_commands: vec!["nft delete table inet stampede_split".into()],
        effect: Some(FaultEffect { measure: "connect_failures".into(), baseline: 0.0, during: 12.0, effective: true, detail: String::new() }),
        ..Default::default()
    };
    let echo = ClockEcho { t1_unix_nanos: NOW - 1_000_000, t2_unix_nanos: NOW + OFFSET - 500_000, t3_unix_nanos: NOW + OFFSET - 400_000 };
    vec![
        ("register.bin", msg(Up::Register(register), 0)),
        ("snapshot.bin", msg(Up::Snapshot(snapshot.clone()), 7)),
        ("finished.bin", msg(Up::Finished(finished), 8)),
        ("fault.bin", msg(Up::Fault(fault), 6)),
        ("clock-echo.bin", msg(Up::ClockEcho(echo), 0)),
        ("regress-seq-2-pow-63.bin", forged(&|s| s.seq = 1 << 63)),
        ("regress-phase-out-of-range.bin", forged(&|s| s.steps[0].phase = 5)),
        ("regress-step-out-of-range.bin", forged(&|s| s.steps[0].step = 9)),
        (
            "regress-two-u64-max-counts.bin",
            forged(&|s| {
                let twin = s.steps[0].clone();
                s.steps.push(twin);
                for st in &mut s.steps {
                    st.requests = u64::MAX;
                }
            }),
        ),
        ("regress-interval-in-1970.bin", forged(&|s| s.interval_start_unix_nanos = 0)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_seeds_pass_and_forged_ones_are_refused() {
        for (name, data) in seeds() {
            let outcome = grpc_message_outcome(&data);
            if name.starts_with("regress-") {
                assert!(outcome.contains("refused"), "{name}: {outcome}");
            } else {
                assert!(!outcome.contains("refused") && !outcome.contains("not protobuf"), "{name}: {outcome}");
            }
        }
    }
}
