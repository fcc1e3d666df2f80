//! The judge against an in-memory timeline: exact windows, streaks and
//! recoveries, with every edge the grid has (mid-interval starts, a fault
//! that never reverted, recovery on a boundary, a streak at the run's end,
//! empty windows).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use stampede_common::histogram::record_us;
use stampede_common::plan::{load_str, Format, Plan};
use stampede_common::slo::Status;
use stampede_common::stats::{ErrorKind, RunStats, StepKey, StepRecord};

use super::*;

const START: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;

/// A 30 s run (phases `warm` 0–10 s, `hold` 10–30 s) with one fault, and `slos`.
fn plan(slos: &str) -> Plan {
    let text = format!(
        "name: t\ntarget: http://127.0.0.1:9\ninterval: 1s\nphases:\n  - {{ name: warm, duration: 10s, load: {{ model: open, rate: 10/s }} }}\n  - {{ name: hold, duration: 20s, load: {{ model: open, rate: 10/s }} }}\nsteps:\n  - {{ name: read, request: {{ path: / }} }}\n  - {{ name: write, request: {{ path: / }} }}\nfaults:\n  - {{ name: api-1, kind: cpu, at: 10s, duration: 5s, cpu: {{ workers: 1 }} }}\nslos:\n{slos}"
    );
    load_str(&text, Format::Yaml, Path::new("t.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

/// One interval's records: `ok` requests of `step` at `latency_ms`, `failed` ones answered 5xx.
fn interval(seq: u64, step: u32, ok: u64, failed: u64, latency_ms: u64) -> RunStats {
    let phase = if seq < 10 { 0 } else { 1 };
    let mut s = RunStats::default();
    let mut good = StepRecord { requests: ok, ..StepRecord::default() };
    for _ in 0..ok {
        record_us(&mut good.latency, latency_ms * 1000);
    }
    s.steps.insert(StepKey { phase, step, ok: true }, good);
    if failed > 0 {
        let mut bad = StepRecord { requests: failed, ..StepRecord::default() };
        bad.errors[ErrorKind::Http5xx as usize] = failed;
        s.steps.insert(StepKey { phase, step, ok: false }, bad);
    }
    s
}

struct Fake {
    intervals: BTreeMap<u64, RunStats>,
}

impl Fake {
    /// 30 one-second intervals from `each(seq)`.
    fn new(each: impl Fn(u64) -> RunStats) -> Self {
        Fake { intervals: (0..30).map(|s| (s, each(s))).collect() }
    }
    fn total(&self) -> RunStats {
        let mut t = RunStats::default();
        for s in self.intervals.values() {
            t.add(s).unwrap();
        }
        t
    }
}

impl IntervalSource for Fake {
    fn interval(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn seqs(&self) -> Vec<u64> {
        self.intervals.keys().copied().collect()
    }
    fn stats(&self, seq: u64) -> Option<RunStats> {
        self.intervals.get(&seq).cloned()
    }
}

fn window(applied_s: f64, reverted_s: Option<f64>) -> Vec<FaultWindow> {
    let at = |s: f64| START + (s * SEC as f64) as i64;
    vec![FaultWindow { fault: "api-1".into(), applied_unix_nanos: at(applied_s), reverted_unix_nanos: reverted_s.map(at) }]
}

fn judge(slos: &str, source: &Fake, windows: &[FaultWindow]) -> Vec<SloResult> {
    evaluate(&plan(slos), &source.total(), source, START, windows)
}

fn span(from_s: f64, to_s: f64) -> Option<Span> {
    Some(Span { from_s, to_s })
}

/// Slow (500 ms) during 10–15 s, fast (10 ms) otherwise.
fn slow_during_fault(seq: u64) -> RunStats {
    interval(seq, 0, 10, 0, if (10..15).contains(&seq) { 500 } else { 10 })
}

#[test]
fn during_and_before_judge_the_fault_window_and_its_baseline() {
    let source = Fake::new(slow_during_fault);
    let slos = "  - { metric: p99, scope: during:api-1, pass: \"< 100ms\" }\n  - { metric: p99, scope: before:api-1, pass: \"< 100ms\" }\n  - { metric: p99, scope: run, pass: \"< 100ms\" }\n";
    let r = judge(slos, &source, &window(10.0, Some(15.0)));
    assert_eq!(r[0].status, Status::Fail, "{:?}", r[0]);
    assert!(r[0].observed.unwrap() >= 500.0);
    assert_eq!((r[0].window, r[0].decided_by), (span(10.0, 15.0), span(10.0, 15.0)));
    // The baseline is as long as the fault, just before it, and clean.
    assert_eq!(r[1].status, Status::Pass, "{:?}", r[1]);
    assert_eq!((r[1].window, r[1].decided_by), (span(5.0, 10.0), span(5.0, 10.0)));
    // The whole run is judged on the totals: 5 slow intervals of 30 are over 1 %.
    assert_eq!(r[2].status, Status::Fail);
    assert_eq!(r[2].window, None);
}

#[test]
fn a_window_starting_mid_interval_takes_every_interval_it_overlaps() {
    let source = Fake::new(slow_during_fault);
    let r = judge("  - { metric: p50, scope: during:api-1, pass: \"< 100ms\" }\n", &source, &window(9.5, Some(14.2)));
    assert_eq!(r[0].window, span(9.5, 14.2));
    assert_eq!(r[0].decided_by, span(9.0, 15.0));
    // Six intervals, five of them slow: the median is slow.
    assert_eq!(r[0].status, Status::Fail);
}

#[test]
fn the_union_over_agents_is_the_fault_window() {
    let source = Fake::new(slow_during_fault);
    let mut w = window(10.0, Some(12.0));
    w.extend(window(11.0, Some(15.0)));
    let r = judge("  - { metric: p99, scope: during:api-1, pass: \"< 100ms\" }\n", &source, &w);
    assert_eq!(r[0].window, span(10.0, 15.0));
}

#[test]
fn after_judges_from_the_revert_for_the_rules_length() {
    // Errors for 2 s after the revert at 15 s, then clean.
    let source = Fake::new(|s| interval(s, 0, 10, if (15..17).contains(&s) { 10 } else { 0 }, 10));
    let slos = "  - { metric: error_rate, scope: after:api-1, for: 3s, pass: \"< 10%\" }\n  - { metric: error_rate, scope: after:api-1, for: 3s, pass: \"< 50%\" }\n";
    let r = judge(slos, &source, &window(10.0, Some(15.0)));
    assert_eq!((r[0].window, r[0].decided_by), (span(15.0, 18.0), span(15.0, 18.0)));
    let observed = r[0].observed.unwrap();
    assert!((observed - 20.0 / 50.0).abs() < 1e-9, "{observed}");
    assert_eq!((r[0].status, r[1].status), (Status::Fail, Status::Pass));
}

#[test]
fn outside_faults_leaves_out_every_interval_a_fault_touched() {
    let source = Fake::new(|s| interval(s, 0, 10, if (10..15).contains(&s) { 10 } else { 0 }, 10));
    let r = judge("  - { metric: error_rate, scope: outside:faults, pass: \"< 0.1%\" }\n", &source, &window(10.2, Some(14.8)));
    assert_eq!(r[0].status, Status::Pass, "{:?}", r[0]);
    assert_eq!(r[0].observed, Some(0.0));
    // Intervals 0–9 and 15–29: no one span says that.
    assert_eq!(r[0].decided_by, None);
    // A fault that never reverted takes the rest of the run with it.
    let r = judge("  - { metric: error_rate, scope: outside:faults, pass: \"< 0.1%\" }\n", &source, &window(10.2, None));
    assert_eq!(r[0].decided_by, span(0.0, 10.0));
}

#[test]
fn a_combined_scope_narrows_the_window_to_its_step() {
    // `read` is slow during the fault, `write` never.
    let source = Fake::new(|s| {
        let mut st = slow_during_fault(s);
        st.add(&interval(s, 1, 10, 0, 10)).unwrap();
        st
    });
    let slos = "  - { metric: p99, scope: step:write in during:api-1, pass: \"< 100ms\" }\n  - { metric: p99, scope: step:read in during:api-1, pass: \"< 100ms\" }\n  - { metric: p99, scope: step:write in phase:hold, pass: \"< 100ms\" }\n";
    let r = judge(slos, &source, &window(10.0, Some(15.0)));
    assert_eq!((r[0].status, r[1].status, r[2].status), (Status::Pass, Status::Fail, Status::Pass));
}

#[test]
fn a_fault_never_applied_or_never_reverted_fails_its_windows_saying_why() {
    let source = Fake::new(slow_during_fault);
    let slos = "  - { metric: p99, scope: during:api-1, pass: \"< 1s\" }\n  - { metric: error_rate, scope: after:api-1, for: 5s, pass: \"< 1%\" }\n  - { metric: error_rate, scope: outside:faults, pass: \"< 1%\" }\n  - { metric: recovery_time, fault: api-1, pass: \"< 60s\" }\n";
    let r = judge(slos, &source, &[]);
    assert_eq!(r[0].status, Status::Fail);
    assert!(r[0].detail.as_deref().unwrap().contains("never applied"), "{:?}", r[0]);
    let r = judge(slos, &source, &window(10.0, None));
    // During a fault that never ended: to the end of the run.
    assert_eq!((r[0].status, r[0].window), (Status::Pass, span(10.0, 30.0)));
    assert_eq!(r[1].status, Status::Fail);
    assert!(r[1].detail.as_deref().unwrap().contains("never reverted"), "{:?}", r[1]);
    assert_eq!(r[3].status, Status::Fail);
    assert!(r[3].detail.as_deref().unwrap().contains("never reverted"), "{:?}", r[3]);
}

#[test]
fn before_and_after_leave_out_the_intervals_the_fault_touched() {
    // Applied at 10.3 s (a little after its planned 10 s), reverted at 14.6 s:
    // interval 10 is partly before the fault, interval 14 partly after.
    let source = Fake::new(slow_during_fault);
    let slos = "  - { metric: p99, scope: before:api-1, pass: \"< 100ms\" }\n  - { metric: p99, scope: after:api-1, for: 3s, pass: \"< 100ms\" }\n  - { metric: p99, scope: during:api-1, pass: \"< 100ms\" }\n";
    let r = judge(slos, &source, &window(10.3, Some(14.6)));
    assert_eq!((r[0].status, r[0].window, r[0].decided_by), (Status::Pass, span(6.0, 10.3), span(6.0, 10.0)));
    assert_eq!((r[1].status, r[1].decided_by), (Status::Pass, span(15.0, 18.0)));
    assert_eq!((r[2].status, r[2].decided_by), (Status::Fail, span(10.0, 15.0)));
}

#[test]
fn an_empty_window_is_a_failure_not_a_pass() {
    let source = Fake::new(|s| interval(s, 0, 10, 0, 10));
    // Reverted at 29.9 s: the only interval after it is the one it touched.
    let r = judge("  - { metric: error_rate, scope: after:api-1, for: 5s, pass: \"< 1%\" }\n", &source, &window(25.0, Some(29.9)));
    assert_eq!((r[0].status, r[0].decided_by), (Status::Fail, None));
    assert!(r[0].detail.as_deref().unwrap().contains("no data"), "{:?}", r[0]);
    // The run's data ends before the window starts.
    let mut short = Fake::new(|s| interval(s, 0, 10, 0, 10));
    short.intervals.retain(|&s, _| s < 20);
    let r = judge("  - { metric: error_rate, scope: after:api-1, for: 5s, pass: \"< 1%\" }\n", &short, &window(22.0, Some(23.0)));
    assert_eq!(r[0].status, Status::Fail, "{:?}", r[0]);
    assert!(r[0].detail.as_deref().unwrap().contains("no data"), "{:?}", r[0]);
}

/// Errors from the fault's start until `healthy_from` (a second), clean after.
fn recovers_at(healthy_from: u64) -> Fake {
    Fake::new(move |s| interval(s, 0, 10, if (10..healthy_from).contains(&s) { 10 } else { 0 }, 10))
}

const RECOVERY: &str = "  - { name: ok, metric: error_rate, scope: outside:faults, pass: \"< 1%\" }\n  - { metric: recovery_time, fault: api-1, pass: \"< 10s\" }\n";

#[test]
fn recovery_on_an_interval_boundary_counts_from_the_revert_to_the_first_good_interval() {
    let r = judge(RECOVERY, &recovers_at(22), &window(10.0, Some(15.0)));
    assert_eq!(r[1].observed, Some(7000.0), "{:?}", r[1]);
    assert_eq!(r[1].decided_by, span(22.0, 25.0));
    assert_eq!((r[1].status, r[1].window), (Status::Pass, span(15.0, 30.0)));
    assert_eq!(r[1].rule, "recovery_time(api-1) < 10s");
    // A revert mid-interval: measured from the revert itself.
    let r = judge(RECOVERY, &recovers_at(22), &window(10.0, Some(15.4)));
    assert!((r[1].observed.unwrap() - 6600.0).abs() < 1e-6, "{:?}", r[1]);
    // Healthy in the interval the revert falls in: recovered at once.
    let r = judge(RECOVERY, &recovers_at(15), &window(10.0, Some(15.4)));
    assert_eq!(r[1].observed, Some(0.0));
}

#[test]
fn recovery_wants_its_consecutive_intervals_and_names_its_rules() {
    // Good at 20, bad at 21, good from 22: three in a row start at 22.
    let source = Fake::new(|s| interval(s, 0, 10, if (10..20).contains(&s) || s == 21 { 10 } else { 0 }, 10));
    let r = judge(RECOVERY, &source, &window(10.0, Some(15.0)));
    assert_eq!(r[1].observed, Some(7000.0));
    let one = "  - { name: ok, metric: error_rate, scope: outside:faults, pass: \"< 1%\" }\n  - { metric: recovery_time, fault: api-1, rules: [ok], consecutive: 1, pass: \"< 10s\" }\n";
    assert_eq!(judge(one, &source, &window(10.0, Some(15.0)))[1].observed, Some(5000.0));
    // A named rule of another scope: latency of `read` only.
    let latency = "  - { name: fast, metric: p99, scope: step:read, pass: \"< 100ms\" }\n  - { metric: recovery_time, fault: api-1, rules: [fast], pass: \"< 10s\" }\n";
    let r = judge(latency, &Fake::new(slow_during_fault), &window(10.0, Some(15.0)));
    assert_eq!(r[1].observed, Some(0.0), "{:?}", r[1]);
}

#[test]
fn a_fault_that_never_recovers_fails_saying_how_long_it_waited() {
    let r = judge(RECOVERY, &recovers_at(40), &window(10.0, Some(15.0)));
    assert_eq!(r[1].status, Status::Fail);
    assert_eq!(r[1].observed, None);
    assert!(r[1].detail.as_deref().unwrap().contains("not recovered after 15.0 s"), "{:?}", r[1]);
    // Two good intervals at the very end are not the three it wants.
    let r = judge(RECOVERY, &recovers_at(28), &window(10.0, Some(15.0)));
    assert!(r[1].detail.as_deref().unwrap().contains("not recovered after"), "{:?}", r[1]);
}

/// 5xx in `bad` (a range of seconds), clean otherwise.
fn errors_in(bad: std::ops::Range<u64>) -> Fake {
    Fake::new(move |s| interval(s, 0, 10, if bad.contains(&s) { 2 } else { 0 }, 10))
}

#[test]
fn a_streak_is_the_longest_run_of_intervals_where_the_condition_held() {
    let slos = "  - { metric: \"max_streak(error_rate > 0)\", pass: \"< 6s\" }\n  - { metric: \"max_streak(error_rate > 0)\", pass: \"< 5s\" }\n";
    let r = judge(slos, &errors_in(3..6), &[]);
    assert_eq!(r[0].observed, Some(3000.0));
    // At the end of the run: the streak is closed by the end.
    let r = judge(slos, &errors_in(25..30), &[]);
    assert_eq!((r[0].observed, r[0].decided_by), (Some(5000.0), span(25.0, 30.0)));
    assert_eq!((r[0].status, r[1].status), (Status::Pass, Status::Fail));
    assert_eq!(r[1].rule, "max_streak(error_rate > 0) < 5s");
    // None at all: 0 s, which passes.
    let r = judge(slos, &errors_in(0..0), &[]);
    assert_eq!((r[1].observed, r[1].status, r[1].decided_by), (Some(0.0), Status::Pass, None));
}

#[test]
fn a_missing_interval_ends_a_streak_and_a_window_narrows_it() {
    let mut source = errors_in(10..20);
    source.intervals.remove(&14);
    let r = judge("  - { metric: \"max_streak(error_rate > 0)\", pass: \"< 30s\" }\n", &source, &[]);
    assert_eq!((r[0].observed, r[0].decided_by), (Some(5000.0), span(15.0, 20.0)));
    let r = judge("  - { metric: \"max_streak(error_rate > 0)\", scope: during:api-1, pass: \"< 30s\" }\n", &errors_in(10..20), &window(12.0, Some(15.0)));
    assert_eq!((r[0].observed, r[0].window), (Some(3000.0), span(12.0, 15.0)));
    let r = judge("  - { metric: \"max_streak(error_rate > 0)\", scope: phase:warm, pass: \"< 30s\" }\n", &errors_in(5..20), &[]);
    assert_eq!(r[0].observed, Some(5000.0));
}

#[test]
fn a_streak_over_no_data_fails() {
    let mut source = errors_in(0..0);
    source.intervals.clear();
    let r = evaluate(&plan("  - { metric: \"max_streak(error_rate > 0)\", pass: \"< 30s\" }\n"), &RunStats::default(), &source, START, &[]);
    assert_eq!(r[0].status, Status::Fail);
    assert!(r[0].detail.is_some());
}

#[test]
fn timeout_and_drop_rates_count_their_kind_over_every_request() {
    let source = Fake::new(|s| {
        let mut st = interval(s, 0, 8, 0, 10);
        let mut bad = StepRecord { requests: 2, ..StepRecord::default() };
        bad.errors[ErrorKind::Timeout as usize] = 1;
        bad.errors[ErrorKind::Dropped as usize] = 1;
        st.steps.insert(StepKey { phase: if s < 10 { 0 } else { 1 }, step: 0, ok: false }, bad);
        st
    });
    let r = judge("  - { metric: timeout_rate, pass: \"< 5%\" }\n  - { metric: drop_rate, scope: during:api-1, pass: \"< 15%\" }\n", &source, &window(10.0, Some(15.0)));
    assert_eq!((r[0].observed, r[0].status), (Some(0.1), Status::Fail));
    assert_eq!((r[1].observed, r[1].status), (Some(0.1), Status::Pass));
    assert_eq!(r[1].unit, "ratio");
}

#[test]
fn throughput_over_a_window_counts_the_intervals_in_which_nothing_was_due() {
    // 10 requests in each interval, none due in 11 and 13 (a closed model
    // waiting out its timeouts): 30 requests over the 5 s of the fault.
    let mut source = Fake::new(slow_during_fault);
    source.intervals.remove(&11);
    source.intervals.remove(&13);
    let r = judge("  - { metric: throughput, scope: during:api-1, pass: \"> 1/s\" }\n", &source, &window(10.0, Some(15.0)));
    assert_eq!((r[0].observed, r[0].window), (Some(6.0), span(10.0, 15.0)), "{:?}", r[0]);
}
