//! The coordinator's merge is exact: percentiles of histograms recorded by
//! several agents, sent over the wire and added up, equal the percentiles of
//! one histogram that recorded every sample.

use proptest::prelude::*;
use stampede_common::histogram::{self, Hist};
use stampede_common::stats::{ErrorKind, RunStats, StepKey, StepRecord};

const QUANTILES: [f64; 5] = [0.50, 0.90, 0.95, 0.99, 0.999];
const KEY: StepKey = StepKey { phase: 0, step: 0, ok: true };

/// What an agent sends: its record's histograms encoded, counters as they are.
struct Wire {
    latency: Vec<u8>,
    service: Vec<u8>,
    dispatch: Vec<u8>,
    requests: u64,
}

fn send(r: &StepRecord) -> Wire {
    Wire {
        latency: histogram::encode(&r.latency),
        service: histogram::encode(&r.service),
        dispatch: histogram::encode(&r.dispatch),
        requests: r.requests,
    }
}

fn receive(w: &Wire) -> RunStats {
    let record = StepRecord {
        latency: histogram::decode(&w.latency).unwrap(),
        service: histogram::decode(&w.service).unwrap(),
        dispatch: histogram::decode(&w.dispatch).unwrap(),
        requests: w.requests,
        ..StepRecord::default()
    };
    let mut stats = RunStats::default();
    stats.steps.insert(KEY, record);
    stats
}

fn record(r: &mut StepRecord, us: u64) {
    histogram::record_us(&mut r.latency, us);
    histogram::record_us(&mut r.service, us / 2);
    histogram::record_us(&mut r.dispatch, us - us / 2);
    r.requests += 1;
}

fn assert_same(merged: &Hist, single: &Hist) {
    assert_eq!(merged.len(), single.len());
    assert_eq!(merged.min(), single.min());
    assert_eq!(merged.max(), single.max());
    for q in QUANTILES {
        assert_eq!(merged.value_at_quantile(q), single.value_at_quantile(q), "quantile {q}");
    }
    assert_eq!(merged, single);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn merged_agents_equal_one_histogram(
        samples in prop::collection::vec(
            (prop_oneof![1u64..=1_000, 1_000u64..=1_000_000, 1u64..=60_000_000], any::<u8>()),
            0..5000,
        ),
        agents in 1usize..=8,
    ) {
        // Every agent records its own share, as it would on its node.
        let mut records: Vec<StepRecord> = (0..agents).map(|_| StepRecord::default()).collect();
        let mut all = StepRecord::default();
        for &(us, pick) in &samples {
            record(&mut records[pick as usize % agents], us);
            record(&mut all, us);
        }

        // The coordinator decodes what arrives and adds it up.
        let mut fleet = RunStats::default();
        for r in &records {
            fleet.add(&receive(&send(r))).unwrap();
        }
        let merged = fleet.steps.get(&KEY).cloned().unwrap_or_default();

        prop_assert_eq!(merged.requests, samples.len() as u64);
        prop_assert_eq!(merged.latency.len(), samples.len() as u64);
        assert_same(&merged.latency, &all.latency);
        assert_same(&merged.service, &all.service);
        assert_same(&merged.dispatch, &all.dispatch);

        // StepRecord::add directly gives the same.
        let mut direct = StepRecord::default();
        for r in &records {
            direct.add(r).unwrap();
        }
        assert_same(&direct.latency, &all.latency);

        // And the summary reads the same percentiles off the merge.
        let summary = fleet.summarize(|_| true);
        let single = all.latency.clone();
        for q in QUANTILES {
            prop_assert_eq!(summary.latency_ms(q), stampede_common::stats::quantile_ms(&single, q));
        }
        prop_assert_eq!(summary.max_ms(), (!single.is_empty()).then(|| single.max() as f64 / 1e3));
    }
}

#[test]
fn an_empty_histogram_may_be_sent_as_no_bytes() {
    let mut fleet = RunStats::default();
    fleet.add(&receive(&Wire { latency: Vec::new(), service: Vec::new(), dispatch: Vec::new(), requests: 0 })).unwrap();
    let mut r = StepRecord::default();
    record(&mut r, 1234);
    fleet.add(&receive(&send(&r))).unwrap();
    assert_same(&fleet.steps[&KEY].latency, &r.latency);
}

#[test]
fn summaries_measure_latency_over_successes_and_count_errors() {
    let mut stats = RunStats::default();
    let mut ok = StepRecord::default();
    for ms in [10u64, 20, 30, 40] {
        histogram::record_us(&mut ok.latency, ms * 1000);
        ok.requests += 1;
    }
    // Failures: a refused connection is fast, a timeout slow; neither may
    // move the latency percentiles.
    let mut failed = StepRecord::default();
    histogram::record_us(&mut failed.latency, 5);
    histogram::record_us(&mut failed.latency, 10_000_000);
    failed.requests = 2;
    failed.errors[ErrorKind::ALL.iter().position(|&k| k == ErrorKind::Connect).unwrap()] = 1;
    failed.errors[ErrorKind::ALL.iter().position(|&k| k == ErrorKind::Timeout).unwrap()] = 1;
    // Another phase, to check the filter.
    let mut other = StepRecord::default();
    histogram::record_us(&mut other.latency, 1);
    other.requests = 1;

    stats.steps.insert(StepKey { phase: 0, step: 0, ok: true }, ok.clone());
    stats.steps.insert(StepKey { phase: 0, step: 0, ok: false }, failed);
    stats.steps.insert(StepKey { phase: 1, step: 0, ok: true }, other);

    let s = stats.summarize(|k| k.phase == 0);
    assert_eq!(s.requests, 6);
    assert_eq!(s.errors, 2);
    assert_eq!(s.error_rate(), 2.0 / 6.0);
    assert_eq!(s.errors_by_kind.iter().sum::<u64>(), 2);
    assert_eq!(s.ok.latency.len(), 4);
    assert_eq!(s.ok.latency, ok.latency);
    assert_eq!(s.max_ms(), Some(ok.latency.max() as f64 / 1e3));
    assert!((s.max_ms().unwrap() - 40.0).abs() < 0.05);
    let p50 = s.latency_ms(0.5).unwrap();
    assert!((p50 - 20.0).abs() < 0.05, "{p50}");
    let low = s.latency_ms(0.0).unwrap();
    assert!((low - 10.0).abs() < 0.05, "{low}");

    // Only failures: no latency at all, every request an error.
    let only_failed = stats.summarize(|k| !k.ok);
    assert_eq!((only_failed.requests, only_failed.errors), (2, 2));
    assert_eq!(only_failed.error_rate(), 1.0);
    assert_eq!(only_failed.latency_ms(0.99), None);
    assert_eq!(only_failed.max_ms(), None);

    // Nothing selected: no requests, error rate 0, no latency.
    let none = stats.summarize(|_| false);
    assert_eq!((none.requests, none.errors, none.error_rate()), (0, 0, 0.0));
    assert_eq!(none.latency_ms(0.5), None);
}
