//! The coordinator's merge (issue 11, item 3): snapshot histograms per
//! second, on one core, decoded and added to a run's accumulator — the
//! stock path (`histogram::decode` + `Histogram::add`) against the sparse
//! one (`histogram::sparse::decode` + `Sparse::add_to`), for each wire
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
use stampede_common::histogram::{self, sparse, Hist};

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

static EPOCH: OnceLock<Instant> = OnceLock::new();

#[derive(Clone, Copy)]
enum Path {
    Stock,
    Sparse,
    /// The sparse decode alone: how the sparse path's time splits.
    DecodeOnly,
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
    // The run's accumulator, as the coordinator's total has it.
    let mut acc = histogram::new_hist();
    let mut scratch = Vec::new();
    let mut done = 0u64;
    let start = clock();
    while clock() - start < budget {
        for bytes in snapshots {
            match path {
                Path::Stock => histogram::add(&mut acc, &histogram::decode(bytes).expect("decodes")).expect("fits"),
                Path::Sparse => sparse::decode(bytes, &mut scratch).expect("decodes").add_to(&mut acc),
                Path::DecodeOnly => {
                    black_box(sparse::decode(bytes, &mut scratch).expect("decodes"));
                }
            }
        }
        done += snapshots.len() as u64;
    }
    black_box(&acc);
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
    let paths: [(&str, Path, bool); 5] = [
        ("stock, V2+DEFLATE", Path::Stock, true),
        ("sparse, V2+DEFLATE", Path::Sparse, true),
        ("stock, plain V2", Path::Stock, false),
        ("sparse, plain V2", Path::Sparse, false),
        ("  (decode alone)", Path::DecodeOnly, false),
    ];
    println!("coordinator merge: snapshot histograms decoded and added per CPU-second of one thread");
    println!("{reps} interleaved reps of ~{ms} ms CPU per cell{}; median [min–max]\n", if cpu_time().is_some() { "" } else { " (wall time: no schedstat)" });
    for k in &kinds {
        let size = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() / v.len();
        println!("{} — {} non-zero counts; {} B as V2+DEFLATE, {} B as plain V2", k.name, k.nonzero, size(&k.deflate), size(&k.plain));
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
        for _ in 0..reps {
            for (i, (_, path, deflate)) in paths.iter().enumerate() {
                results[i].push(run(*path, if *deflate { &k.deflate } else { &k.plain }, budget));
            }
        }
        let stock = median_range(results[0].clone()).0;
        println!("  {:<20} {:>12} {:>23} {:>9} {:>9}", "path", "hist/s", "range", "µs/hist", "× stock");
        for ((name, _, _), r) in paths.iter().zip(results) {
            let (med, lo, hi) = median_range(r);
            println!("  {name:<20} {med:>12.0} {:>23} {:>9.2} {:>8.1}×", format!("[{lo:.0}–{hi:.0}]"), 1e6 / med, med / stock);
        }
        println!();
    }
}
