//! The fuzz targets on a stable toolchain, without libFuzzer: each target
//! runs every seed in `fuzz/seeds/<target>/`, then random mutations of the
//! corpus (deterministic for a given `--seed`) for a bounded time, or a
//! bounded number of mutations (`--runs`, the same run on every machine).
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --bin stable_fuzz -- --seconds 30 [--runs N]
//!     [--target plan_parser|snapshot_decoder]... [--seed N] [--max-len BYTES]
//!     [--malloc-limit-mb MB] [--timeout-secs S] [--artifacts DIR]
//! ```
//!
//! Findings and what happens to the input that made them:
//! - a panic: caught (`catch_unwind`), the input saved as
//!   `artifacts/<target>/crash-<hash>`, one per panic location; fuzzing goes on;
//! - an allocation beyond `--malloc-limit-mb` (one block, or all live
//!   blocks together): refused, which aborts; a stack overflow also aborts;
//!   an input running longer than `--timeout-secs` is aborted by a watchdog.
//!   Each saves the input as `artifacts/<target>/fatal-input` first.
//!
//! Without coverage feedback the harness keeps, as new corpus entries, the
//! inputs whose outcome (`ok`, or the error's field and message) it has not
//! seen yet. Exit status: 0 when nothing was found, 1 otherwise, 2 on usage.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stampede_fuzz::mutate::{mutate, Rng};
use stampede_fuzz::{OutcomeTarget, TARGETS_WITH_OUTCOME};

// ---- allocation limits ------------------------------------------------------

struct Limited;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > layout.size() {
                LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
            }
        } else if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Counts `size` more live bytes, or refuses when that passes the limit.
/// A refusal makes Rust report "memory allocation of N bytes failed" and
/// abort, which saves the input (see `on_fatal_signal`).
fn admit(size: usize) -> bool {
    let limit = LIMIT.load(Ordering::Relaxed);
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if size > limit || live > limit {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    true
}

#[global_allocator]
static ALLOC: Limited = Limited;

// ---- the input in flight, for fatal signals and the watchdog ---------------

static CURRENT_PTR: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static CURRENT_LEN: AtomicUsize = AtomicUsize::new(0);
/// NUL-terminated path of `artifacts/<target>/fatal-input`, leaked.
static FATAL_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());
static EXECS: AtomicU64 = AtomicU64::new(0);
static IN_TARGET: AtomicBool = AtomicBool::new(false);

/// Writes the input in flight to `FATAL_PATH`; async-signal-safe (open,
/// write, close only).
fn save_current_input() {
    let path = FATAL_PATH.load(Ordering::SeqCst);
    let ptr = CURRENT_PTR.load(Ordering::SeqCst);
    let len = CURRENT_LEN.load(Ordering::SeqCst);
    if path.is_null() || ptr.is_null() {
        return;
    }
    unsafe {
        let fd = libc::open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, 0o644);
        if fd >= 0 {
            let mut done = 0;
            while done < len {
                let n = libc::write(fd, ptr.add(done) as *const libc::c_void, len - done);
                if n <= 0 {
                    break;
                }
                done += n as usize;
            }
            libc::close(fd);
        }
    }
}

extern "C" fn on_fatal_signal(sig: libc::c_int) {
    save_current_input();
    let msg = b"\nstable_fuzz: fatal signal (abort: allocation limit, stack overflow or timeout); the input is saved as fatal-input in the target's artifacts folder\n";
    unsafe {
        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

fn install_fatal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_fatal_signal;
    for sig in [libc::SIGABRT, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
        unsafe {
            libc::signal(sig, handler as libc::sighandler_t);
        }
    }
}

fn start_watchdog(timeout: Duration) {
    std::thread::spawn(move || {
        let mut last = (u64::MAX, Instant::now());
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let execs = EXECS.load(Ordering::SeqCst);
            if execs != last.0 || !IN_TARGET.load(Ordering::SeqCst) {
                last = (execs, Instant::now());
            } else if last.1.elapsed() > timeout {
                eprintln!("\nstable_fuzz: one input has run for more than {timeout:?}: a hang or an exponential blow-up");
                std::process::abort();
            }
        }
    });
}

// ---- panics -----------------------------------------------------------------

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<(String, String)>> = const { std::cell::RefCell::new(None) };
}

/// Panics are findings, not noise: remember the message and location
/// instead of printing them at every execution.
fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let location = info.location().map_or_else(|| "unknown".to_string(), |l| format!("{}:{}", l.file(), l.line()));
        let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
            s.to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic payload)".to_string()
        };
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, message)));
    }));
}

// ---- the loop -----------------------------------------------------------------

struct Options {
    seconds: f64,
    /// Stop a target after this many mutations (seeds not counted), when
    /// that comes before `seconds`: a fixed count makes a run the same on
    /// every machine, which is what CI needs to be reproducible.
    runs: Option<u64>,
    targets: Vec<String>,
    seed: u64,
    max_len: usize,
    malloc_limit_mb: usize,
    timeout_secs: u64,
    artifacts: PathBuf,
    seeds: PathBuf,
    /// Write the distinct outcomes seen to `<this>.<target>` (to tune them).
    dump_outcomes: Option<PathBuf>,
}

fn usage(error: &str) -> ! {
    eprintln!("error: {error}");
    eprintln!(
        "usage: stable_fuzz [--seconds S] [--runs N] [--target NAME]... [--seed N] [--max-len BYTES] [--malloc-limit-mb MB] \
         [--timeout-secs S] [--artifacts DIR] [--seeds DIR] [--dump-outcomes FILE]\ntargets: {}",
        TARGETS_WITH_OUTCOME.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    );
    std::process::exit(2);
}

fn parse_args() -> Options {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        seconds: 30.0,
        runs: None,
        targets: Vec::new(),
        seed: 1,
        max_len: 64 * 1024,
        malloc_limit_mb: 2048,
        timeout_secs: 10,
        artifacts: root.join("artifacts"),
        seeds: root.join("seeds"),
        dump_outcomes: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: String| v.parse::<u64>().unwrap_or_else(|_| usage(&format!("{flag}: `{v}` is not a number")));
        match flag.as_str() {
            "--seconds" => o.seconds = value().parse().unwrap_or_else(|_| usage("--seconds: not a number")),
            "--runs" => o.runs = Some(number(value())),
            "--target" => o.targets.push(value()),
            "--seed" => o.seed = number(value()),
            "--max-len" => o.max_len = number(value()) as usize,
            "--malloc-limit-mb" => o.malloc_limit_mb = number(value()) as usize,
            "--timeout-secs" => o.timeout_secs = number(value()),
            "--artifacts" => o.artifacts = PathBuf::from(value()),
            "--seeds" => o.seeds = PathBuf::from(value()),
            "--dump-outcomes" => o.dump_outcomes = Some(PathBuf::from(value())),
            "-h" | "--help" => usage("help requested"),
            other => usage(&format!("unknown argument `{other}`")),
        }
    }
    if o.targets.is_empty() {
        o.targets = TARGETS_WITH_OUTCOME.iter().map(|(n, _)| n.to_string()).collect();
    }
    for t in &o.targets {
        if !TARGETS_WITH_OUTCOME.iter().any(|(n, _)| n == t) {
            usage(&format!("unknown target `{t}`"));
        }
    }
    o
}

/// FNV-1a, for artifact names.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

struct Report {
    execs: u64,
    seeds: usize,
    corpus: usize,
    outcomes: usize,
    panics: BTreeMap<String, (String, PathBuf, u64)>,
    slowest: Duration,
    elapsed: Duration,
    /// `--seconds` ran out before `--runs`: the run is not the reproducible one.
    out_of_time: bool,
}

fn run_target(name: &str, target: OutcomeTarget, o: &Options) -> Report {
    let artifacts = o.artifacts.join(name);
    std::fs::create_dir_all(&artifacts).unwrap_or_else(|e| usage(&format!("{}: {e}", artifacts.display())));
    let fatal = CString::new(artifacts.join("fatal-input").to_string_lossy().as_bytes()).expect("no NUL in paths");
    FATAL_PATH.store(fatal.into_raw(), Ordering::SeqCst);

    let seed_dir = o.seeds.join(name);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&seed_dir)
        .unwrap_or_else(|e| usage(&format!("{}: {e}", seed_dir.display())))
        .map(|e| {
            let path = e.expect("readable seed folder").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| usage(&format!("{}: {e}", path.display())));
            (path.file_name().unwrap().to_string_lossy().to_string(), data)
        })
        .collect();
    seeds.sort();
    if seeds.is_empty() {
        usage(&format!("no seeds in {}", seed_dir.display()));
    }

    let mut report = Report {
        execs: 0,
        seeds: seeds.len(),
        corpus: 0,
        outcomes: 0,
        panics: BTreeMap::new(),
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
        out_of_time: false,
    };
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|(_, d)| d.clone()).collect();
    let mut outcomes: HashSet<String> = HashSet::new();
    let mut rng = Rng::new(o.seed ^ hash(name.as_bytes()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.seconds);
    let mut input = Vec::new();
    let mut next_seed = 0;

    loop {
        // Every seed first, as it is; then mutations.
        if next_seed < seeds.len() {
            input.clear();
            input.extend_from_slice(&seeds[next_seed].1);
            next_seed += 1;
        } else {
            if Instant::now() >= deadline {
                report.out_of_time = o.runs.is_some();
                break;
            }
            if o.runs.is_some_and(|runs| report.execs - seeds.len() as u64 >= runs) {
                break;
            }
            let base = rng.below(corpus.len());
            let other = rng.below(corpus.len());
            input.clear();
            input.extend_from_slice(&corpus[base]);
            mutate(&mut rng, &mut input, &corpus[other], o.max_len);
        }

        CURRENT_PTR.store(input.as_mut_ptr(), Ordering::SeqCst);
        CURRENT_LEN.store(input.len(), Ordering::SeqCst);
        IN_TARGET.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| target(&input)));
        let took = t0.elapsed();
        IN_TARGET.store(false, Ordering::SeqCst);
        EXECS.fetch_add(1, Ordering::SeqCst);
        report.execs += 1;
        report.slowest = report.slowest.max(took);

        match result {
            Ok(outcome) => {
                if outcomes.insert(outcome) && corpus.len() < 10_000 {
                    corpus.push(input.clone());
                }
            }
            Err(_) => {
                let (location, message) = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
                match report.panics.get_mut(&location) {
                    Some(seen) => seen.2 += 1,
                    None => {
                        let file = artifacts.join(format!("crash-{:016x}", hash(&input)));
                        std::fs::write(&file, &input).unwrap_or_else(|e| eprintln!("cannot save {}: {e}", file.display()));
                        eprintln!("{name}: PANIC at {location}: {message}\n  input saved as {}", file.display());
                        report.panics.insert(location, (message, file, 1));
                    }
                }
            }
        }
    }
    CURRENT_PTR.store(std::ptr::null_mut(), Ordering::SeqCst);
    report.elapsed = started.elapsed();
    report.corpus = corpus.len();
    report.outcomes = outcomes.len();
    if let Some(dump) = &o.dump_outcomes {
        let mut list: Vec<&String> = outcomes.iter().collect();
        list.sort();
        let text: String = list.iter().map(|l| format!("{l}\n")).collect();
        let file = dump.with_extension(name);
        std::fs::write(&file, text).unwrap_or_else(|e| eprintln!("cannot write {}: {e}", file.display()));
    }
    report
}

fn main() {
    let o = parse_args();
    LIMIT.store(o.malloc_limit_mb.saturating_mul(1024 * 1024), Ordering::Relaxed);
    install_panic_hook();
    install_fatal_handlers();
    start_watchdog(Duration::from_secs(o.timeout_secs));

    let mut found = 0;
    let mut failed_targets = 0;
    for name in &o.targets {
        let target = TARGETS_WITH_OUTCOME.iter().find(|(n, _)| n == name).expect("checked in parse_args").1;
        let r = run_target(name, target, &o);
        let secs = r.elapsed.as_secs_f64();
        println!(
            "{name}: {} executions in {secs:.1} s ({:.0}/s), {} seeds, corpus {} ({} distinct outcomes), slowest input {:.1} ms, {} panics",
            r.execs,
            r.execs as f64 / secs.max(1e-9),
            r.seeds,
            r.corpus,
            r.outcomes,
            r.slowest.as_secs_f64() * 1e3,
            r.panics.len(),
        );
        if r.out_of_time {
            println!("  --seconds ran out before --runs: this run stopped early and is not reproducible by count");
        }
        for (location, (message, file, times)) in &r.panics {
            println!("  panic at {location} ({times} inputs): {message}\n    reproduce: cargo run --release --manifest-path fuzz/Cargo.toml --bin {name} -- {}", file.display());
        }
        found += r.panics.len();
        failed_targets += usize::from(!r.panics.is_empty());
    }
    // A closing line in the form CI logs are read for: targets without and
    // with findings.
    println!("stable_fuzz: {} passed, {failed_targets} failed", o.targets.len() - failed_targets);
    if found > 0 {
        std::process::exit(1);
    }
}
