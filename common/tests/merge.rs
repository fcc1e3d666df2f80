//! The coordinator's merge is exact: percentiles of histograms recorded by
//! several agents, sent over the wire and added up, equal the percentiles of
//! one histogram that recorded every sample.

use proptest::prelude::*;
use stampede_common::histogram::accum::{self, Accum, Op};
use stampede_common::histogram::{self, Hist, HIGHEST_US};
use stampede_common::stats::{AccStats, ErrorKind, RunStats, StepKey, StepRecord};

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

/// The same wire bytes as the coordinator adds them: decoded straight
/// into its accumulators.
fn receive_into(w: &Wire, into: &mut AccStats) {
    let mut scratch = Vec::new();
    let r = into.steps.entry(KEY).or_default();
    r.latency.add_encoded(&w.latency, &mut scratch).unwrap();
    r.service.add_encoded(&w.service, &mut scratch).unwrap();
    r.dispatch.add_encoded(&w.dispatch, &mut scratch).unwrap();
    r.requests += w.requests;
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

        // The coordinator's own path: decoded straight into its accumulator.
        let mut acc_fleet = AccStats::default();
        for r in &records {
            receive_into(&send(r), &mut acc_fleet);
        }
        let fast = acc_fleet.to_run_stats().steps.get(&KEY).cloned().unwrap_or_default();
        prop_assert_eq!(fast.requests, merged.requests);
        assert_same(&fast.latency, &merged.latency);
        assert_same(&fast.service, &merged.service);
        assert_same(&fast.dispatch, &merged.dispatch);

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

/// One histogram's recorded values: anywhere, at both bounds and beyond
/// them (clamped, as agents record), few or huge counts. Counts stay below
/// 2^59 per entry so that no slot of a sent histogram passes i64::MAX (V2
/// cannot encode that; no agent records 2^63 requests in an interval).
fn a_histogram() -> impl Strategy<Value = Hist> {
    let value = prop_oneof![Just(0u64), Just(1u64), Just(HIGHEST_US), Just(u64::MAX), 1u64..=2_048, 100u64..=50_000, 1u64..=HIGHEST_US];
    let count = prop_oneof![4 => 1u64..=3, 1 => 1u64 << 40..1u64 << 59];
    prop::collection::vec((value, count), 0..40).prop_map(|entries| {
        let mut h = histogram::new_hist();
        for (v, n) in entries {
            h.saturating_record_n(v.clamp(1, HIGHEST_US), n);
        }
        h
    })
}

/// A histogram whose payload is mostly 1-byte numbers (many values close
/// together, small counts): the walk's eight-at-a-time path, near the
/// array's start, middle, or end (where it must hand over to the careful one).
fn a_dense_histogram() -> impl Strategy<Value = Hist> {
    let range = prop_oneof![Just((1u64, 3_000u64)), Just((100u64, 50_000u64)), Just((HIGHEST_US / 4, HIGHEST_US))];
    (range, prop::collection::vec((any::<u64>(), 1u64..=70), 0..600)).prop_map(|((lo, hi), entries)| {
        let mut h = histogram::new_hist();
        for (v, n) in entries {
            h.saturating_record_n(lo + v % (hi - lo + 1), n);
        }
        h
    })
}

fn plain_v2(h: &Hist) -> Vec<u8> {
    let mut plain = Vec::new();
    hdrhistogram::serialization::Serializer::serialize(&mut hdrhistogram::serialization::V2Serializer::new(), h, &mut plain).unwrap();
    plain
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The coordinator's accumulator path (the V2 payload decoded straight
    /// into a counts array, converted when read) gives exactly the
    /// histogram the stock path gives (decode a full histogram,
    /// `Histogram::add`), in either wire encoding, into an accumulator that
    /// may already hold anything — empty histograms, one value, both
    /// bounds, huge counts, so that saturation is compared too.
    #[test]
    fn the_accumulator_merges_exactly_like_the_stock_path(
        sent in prop::collection::vec((prop_oneof![a_histogram(), a_dense_histogram()], any::<bool>()), 0..6),
        already in a_histogram(),
        near_full in prop::option::of(1u64..=HIGHEST_US),
    ) {
        let mut stock = already.clone();
        if let Some(v) = near_full {
            stock.saturating_record_n(v, u64::MAX - 3);
        }
        let mut fast = Accum::from_hist(&stock);
        prop_assert!(fast.to_hist() == stock, "from_hist and to_hist round-trip");
        // A second accumulator added in the same walk, empty at first.
        let mut twin = Accum::default();
        let mut twin_stock = histogram::new_hist();
        let mut scratch = Vec::new();
        for (h, deflate) in &sent {
            let bytes = if *deflate { histogram::encode(h) } else { plain_v2(h) };
            histogram::add(&mut stock, &histogram::decode(&bytes).unwrap()).unwrap();
            histogram::add(&mut twin_stock, &histogram::decode(&bytes).unwrap()).unwrap();
            let before = fast.len();
            fast.add_encoded(&bytes, &mut scratch).unwrap();
            prop_assert_eq!(fast.len() == before, h.is_empty() || before == u64::MAX);
            if accum::apply(&bytes, [&mut twin], &mut scratch, Op::Add).unwrap() {
                accum::apply(&bytes, [&mut twin], &mut scratch, Op::Undo).unwrap();
                accum::apply(&bytes, [&mut twin], &mut scratch, Op::Saturate).unwrap();
            }
        }
        let merged = fast.to_hist();
        prop_assert!(merged == stock, "the histograms differ");
        prop_assert_eq!((merged.len(), merged.min(), merged.min_nz(), merged.max()), (stock.len(), stock.min(), stock.min_nz(), stock.max()));
        prop_assert!(twin.to_hist() == twin_stock);
        // hdrhistogram's quantiles sum counts unchecked: with saturated
        // totals they overflow, in either path.
        if stock.len() < u64::MAX / 2 {
            assert_same(&merged, &stock);
        }
    }

    /// One walk into two accumulators adds to each what a walk into each
    /// alone adds, and a payload cut anywhere is refused or accepted as the
    /// stock decoder does, leaving both accumulators as they were when refused.
    #[test]
    fn one_walk_into_two_accumulators_and_cut_payloads(h in prop_oneof![a_histogram(), a_dense_histogram()], other in a_histogram(), cut in 0usize..2000) {
        let bytes = plain_v2(&h);
        let mut scratch = Vec::new();
        let (mut a, mut b) = (Accum::from_hist(&other), Accum::default());
        let carried = accum::apply(&bytes, [&mut a, &mut b], &mut scratch, Op::Add).unwrap();
        prop_assume!(!carried);
        let mut alone = Accum::from_hist(&other);
        alone.add_encoded(&bytes, &mut scratch).unwrap();
        prop_assert!(a.to_hist() == alone.to_hist());
        prop_assert!(b.to_hist() == h);
        // Cut short: the header's claimed length made to match.
        let keep = bytes.len().min(40 + cut);
        let mut short = bytes[..keep].to_vec();
        if keep >= 40 {
            short[4..8].copy_from_slice(&((keep - 40) as u32).to_be_bytes());
        }
        let stock = histogram::decode(&short).map(|d| {
            let mut s = a.to_hist();
            histogram::add(&mut s, &d).map(|_| s)
        });
        let before = a.to_hist();
        match (a.add_encoded(&short, &mut scratch), stock) {
            (Ok(()), Ok(Ok(s))) => prop_assert!(a.to_hist() == s),
            (Err(_), Err(_) | Ok(Err(_))) => prop_assert!(a.to_hist() == before, "a refused payload leaves nothing"),
            (mine, theirs) => prop_assert!(false, "accum {:?}, stock {:?}", mine.is_ok(), theirs.is_ok()),
        }
    }
}
