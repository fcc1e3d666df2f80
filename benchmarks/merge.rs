//! The coordinator's merge (issue 11, item 3): snapshot histograms per
//! second, on one core, decoded and added to a run's accumulator — the
//! stock path (`histogram::decode` + `Histogram::add`), the previous sparse
//! one (kept here, in `old_sparse`, for the ratio: (index, count) pairs,
//! then `saturating_record_n`), and the accumulator (`histogram::accum`:
//! the payload decoded straight into a counts array), for each wire
//! encoding (V2+DEFLATE, plain V2), on three kinds of snapshot.
//!
//! Run (see benchmarks/README.md, "Coordinator merge"):
//!   cargo bench -p stampede-common --bench merge            # 7 reps
//!   cargo bench -p stampede-common --bench merge -- --reps 9 --ms 500
//!
//! A `harness = false` bench of stampede-common: built only by `cargo bench`
//! (or `--all-targets`), never by the test run.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::serialization::{Serializer, V2Serializer};
use stampede_common::histogram::accum::{self, Accum, Op};
use stampede_common::histogram::{self, Hist};

/// The sparse path as it was before the accumulator (c72892a), for plain
/// V2 of stampede's shape only: the walk into (index, count) pairs, then
/// each added with hdrhistogram's `saturating_record_n`.
mod old_sparse {
    use stampede_common::histogram::accum::{value_at, SLOTS};
    use stampede_common::histogram::Hist;

    pub fn decode(bytes: &[u8]) -> Vec<(u32, u64)> {
        let payload = &bytes[40..];
        let mut counts = vec![(0u32, 0u64); payload.len().min(2 * SLOTS)];
        let mut kept = 0;
        let mut index: u64 = 0;
        let mut at = 0;
        while let Some(&first) = payload.get(at) {
            let zz = if first < 0x80 {
                at += 1;
                u64::from(first)
            } else {
                let mut value = 0u64;
                let mut shift = 0;
                loop {
                    let b = payload[at];
                    at += 1;
                    if shift == 56 {
                        value |= u64::from(b) << 56;
                        break;
                    }
                    value |= u64::from(b & 0x7f) << shift;
                    if b & 0x80 == 0 {
                        break;
                    }
                    shift += 7;
                }
                value
            };
            let n = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            counts[kept] = (index.min(u64::from(u32::MAX)) as u32, n as u64);
            kept += usize::from(n > 0);
            index = index.wrapping_add(if n < 0 { n.wrapping_neg() as u64 } else { 1 });
        }
        counts.truncate(kept);
        counts
    }

    pub fn add_to(counts: &[(u32, u64)], into: &mut Hist) {
        for &(i, n) in counts {
            into.saturating_record_n(value_at(i as usize), n);
        }
    }
}

/// xorshift64*: reproducible snapshots without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Log-uniform in [lo, hi] µs.
    fn log_uniform(&mut self, lo: f64, hi: f64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (lo * (hi / lo).powf(u)) as u64
    }
}

/// One agent's 1-s snapshot histogram: `n` requests, log-uniform latencies.
fn snapshot(rng: &mut Rng, n: usize, lo_us: f64, hi_us: f64) -> Hist {
    let mut h = histogram::new_hist();
    for _ in 0..n {
        histogram::record_us(&mut h, rng.log_uniform(lo_us, hi_us));
    }
    h
}

fn plain_v2(h: &Hist) -> Vec<u8> {
    let mut out = Vec::new();
    V2Serializer::new().serialize(h, &mut out).expect("a Vec");
    out
}

struct Kind {
    name: &'static str,
    /// 64 different snapshots of the kind, each encoded both ways.
    deflate: Vec<Vec<u8>>,
    plain: Vec<Vec<u8>>,
    nonzero: usize,
}

fn kind(name: &'static str, n: usize, lo: f64, hi: f64, seed: u64) -> Kind {
    let mut rng = Rng(seed);
    let hists: Vec<Hist> = (0..64).map(|_| snapshot(&mut rng, n, lo, hi)).collect();
    let nonzero = hists.iter().map(|h| h.iter_recorded().count()).sum::<usize>() / hists.len();
    Kind { name, deflate: hists.iter().map(histogram::encode).collect(), plain: hists.iter().map(plain_v2).collect(), nonzero }
}

/// How the payloads' numbers split by encoded length (1, 2, 3+ bytes), in
/// percent: what the walk's fast paths are for.
fn varint_lengths(plain: &[Vec<u8>]) -> String {
    let mut by_len = [0u64; 3];
    for bytes in plain {
        let mut len = 0;
        for &b in &bytes[40..] {
            len += 1;
            if b < 0x80 {
                by_len[(len - 1).min(2)] += 1;
                len = 0;
            }
        }
    }
    let all = by_len.iter().sum::<u64>() as f64;
    by_len.map(|n| format!("{:.0}%", n as f64 * 100.0 / all)).join("/")
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

#[derive(Clone, Copy)]
enum Path {
    Stock,
    /// The previous sparse path (plain V2 only).
    OldSparse,
    /// Decoded straight into one accumulator (`Accum::add_encoded`).
    Accum,
    /// The walk with no accumulator to add to: the decode alone.
    DecodeOnly,
    /// One walk into two accumulators: what the coordinator does with each
    /// histogram (the run's total and the due interval's).
    AccumTwo,
}

/// This thread's CPU time (`/proc/thread-self/schedstat`, nanoseconds on
/// a CPU): a shared machine's other work does not count against a path.
/// None where the kernel does not say; then wall time is used.
fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

/// Decodes and adds the snapshots round and round for about `budget` of
/// CPU time; histograms per CPU-second.
fn run(path: Path, snapshots: &[Vec<u8>], budget: Duration) -> f64 {
    let clock = || cpu_time().unwrap_or_else(|| Instant::now().duration_since(*EPOCH.get_or_init(Instant::now)));
    // The run's accumulator, as the coordinator's total had it.
    let mut acc = histogram::new_hist();
    let (mut mine, mut other) = (Accum::default(), Accum::default());
    let mut scratch = Vec::new();
    let mut done = 0u64;
    let start = clock();
    while clock() - start < budget {
        for bytes in snapshots {
            match path {
                Path::Stock => histogram::add(&mut acc, &histogram::decode(bytes).expect("decodes")).expect("fits"),
                Path::OldSparse => old_sparse::add_to(&old_sparse::decode(bytes), &mut acc),
                Path::Accum => mine.add_encoded(bytes, &mut scratch).expect("decodes"),
                Path::DecodeOnly => {
                    black_box(accum::apply(bytes, [], &mut scratch, Op::Add).expect("decodes"));
                }
                Path::AccumTwo => {
                    black_box(accum::apply(bytes, [&mut mine, &mut other], &mut scratch, Op::Add).expect("decodes"));
                }
            }
        }
        done += snapshots.len() as u64;
    }
    black_box((&acc, &mine, &other));
    // The reads: what the coordinator converts once per report or interval.
    if let Path::Accum = path {
        let h = mine.to_hist();
        debug_assert!(!h.is_empty());
    }
    done as f64 / (clock() - start).as_secs_f64()
}

fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let mut reps = 7usize;
    let mut ms = 300u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|v| v.parse::<usize>().ok()).expect("--reps N").max(1),
            "--ms" => ms = args.next().and_then(|v| v.parse().ok()).expect("--ms N"),
            _ => {} // `cargo bench` passes --bench
        }
    }
    let budget = Duration::from_millis(ms);
    let kinds = [
        // 1 s of 3 000 requests, 0.1–50 ms: the typical snapshot.
        kind("typical", 3_000, 100.0, 50_000.0, 1),
        // 200 requests, all near 1 ms: a quiet step.
        kind("sparse", 200, 900.0, 1_100.0, 2),
        // 50 000 requests, 1 µs – 10 s: about as full as a snapshot gets.
        kind("dense", 50_000, 1.0, 10_000_000.0, 3),
    ];
    let paths: [(&str, Path, bool); 7] = [
        ("stock, V2+DEFLATE", Path::Stock, true),
        ("accum, V2+DEFLATE", Path::Accum, true),
        ("stock, plain V2", Path::Stock, false),
        ("old sparse, plain V2", Path::OldSparse, false),
        ("accum, plain V2", Path::Accum, false),
        ("  (decode alone)", Path::DecodeOnly, false),
        ("accum x2, plain V2", Path::AccumTwo, false),
    ];
    println!("coordinator merge: snapshot histograms decoded and added per CPU-second of one thread");
    println!("{reps} interleaved reps of ~{ms} ms CPU per cell{}; median [min–max]\n", if cpu_time().is_some() { "" } else { " (wall time: no schedstat)" });
    for k in &kinds {
        let size = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() / v.len();
        println!("{} — {} non-zero counts; {} B as V2+DEFLATE, {} B as plain V2; numbers of 1/2/3+ bytes: {}", k.name, k.nonzero, size(&k.deflate), size(&k.plain), varint_lengths(&k.plain));
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for _ in 0..reps {
            for (i, (_, path, deflate)) in paths.iter().enumerate() {
                results[i].push(run(*path, if *deflate { &k.deflate } else { &k.plain }, budget));
            }
        }
        let stock = median_range(results[0].clone()).0;
        println!("  {:<20} {:>12} {:>23} {:>9} {:>9} {:>9}", "path", "hist/s", "range", "µs/hist", "ns/count", "× stock");
        for ((name, _, _), r) in paths.iter().zip(results) {
            let (med, lo, hi) = median_range(r);
            let per_count = 1e9 / med / k.nonzero as f64;
            println!("  {name:<20} {med:>12.0} {:>23} {:>9.2} {per_count:>9.2} {:>8.1}×", format!("[{lo:.0}–{hi:.0}]"), 1e6 / med, med / stock);
        }
        println!();
    }
    // A read: the accumulator of a run's 64 typical snapshots made a
    // `Histogram` (reports, the timeline, SLO judging: per read, never per
    // snapshot).
    let mut acc = Accum::default();
    let mut scratch = Vec::new();
    for bytes in &kinds[0].plain {
        acc.add_encoded(bytes, &mut scratch).expect("decodes");
    }
    let mut per_read = Vec::new();
    for _ in 0..reps {
        let clock = || cpu_time().unwrap_or_else(|| Instant::now().duration_since(*EPOCH.get_or_init(Instant::now)));
        let (start, mut n) = (clock(), 0u32);
        while clock() - start < budget / 10 {
            black_box(acc.to_hist());
            n += 1;
        }
        per_read.push((clock() - start).as_secs_f64() * 1e6 / f64::from(n));
    }
    let (med, lo, hi) = median_range(per_read);
    println!("read: Accum::to_hist of 64 typical snapshots added up: {med:.1} µs [{lo:.1}–{hi:.1}] per conversion");
}
