//! stampede's fuzz targets as plain functions, shared by the libFuzzer
//! binaries (`fuzz_targets/`, run with cargo-fuzz on nightly) and the stable
//! harness (`src/bin/stable_fuzz.rs`, no libFuzzer). A target returns
//! normally for every input; a panic is a finding.
//!
//! - [`plan_parser`]: bytes → a plan in YAML, TOML or JSON
//!   (`stampede_common::plan::load_str`), the path every plan file and every
//!   plan submitted to a standing coordinator takes.
//! - [`snapshot_decoder`]: bytes → a protobuf `Snapshot` → the measurement
//!   types (`stampede_proto::convert::decode_steps`), and bytes → one
//!   histogram (`stampede_common::histogram::decode`): what a coordinator
//!   does with every message an agent sends — both now the coordinator's
//!   accumulator path (`convert::add_steps`, `histogram::accum`), which
//!   must accept and refuse the same inputs as the stock one (hdrhistogram's
//!   decoder, `Histogram::add`: [`stock_decode_steps`]), merge to the same
//!   histograms, and leave an accumulator as it was when it refuses.
//! - [`grpc_message`]: bytes → the `AgentMessage` of a session → the
//!   coordinator's bounds (`stampede_proto::limits`) → decode and checked
//!   merge (see the module).

pub mod grpc_message;
pub mod mutate;

use std::path::Path;

use prost::Message;
use stampede_common::histogram;
use stampede_common::plan::{load_str, Format, Plan};
use stampede_common::histogram::accum::Accum;
use stampede_common::stats::{RunStats, ScheduleStats, StepRecord};
use stampede_proto::convert::{decode_counts, decode_steps};
use stampede_proto::v1::Snapshot;

/// A fuzz target: returns for every input; a panic is a finding.
pub type Target = fn(&[u8]);
/// A fuzz target that also says what happened (see [`plan_parser_outcome`]).
pub type OutcomeTarget = fn(&[u8]) -> String;

/// The targets by name, as the harness and the seed folders call them.
pub const TARGETS: [(&str, Target); 3] = [("plan_parser", plan_parser), ("snapshot_decoder", snapshot_decoder), ("grpc_message", grpc_message)];

/// The same targets, returning their outcome (for the stable harness).
pub const TARGETS_WITH_OUTCOME: [(&str, OutcomeTarget); 3] = [
    ("plan_parser", plan_parser_outcome),
    ("snapshot_decoder", snapshot_decoder_outcome),
    ("grpc_message", grpc_message::grpc_message_outcome),
];

/// Bytes as an agent's session message, through the coordinator's checks.
pub fn grpc_message(data: &[u8]) {
    grpc_message::grpc_message_outcome(data);
}

/// The format a `plan_parser` input is read in: its first byte modulo 3.
/// Seed files start with the line `0`, `1` or `2`; the newline after it is
/// part of the text, where every format ignores it.
pub fn plan_format(selector: u8) -> Format {
    match selector % 3 {
        0 => Format::Yaml,
        1 => Format::Toml,
        _ => Format::Json,
    }
}

/// First byte: the format ([`plan_format`]); the rest: the plan text. Bytes
/// that are not UTF-8 are replaced (a plan file that is not UTF-8 is refused
/// when it is read, before the parser).
///
/// Besides "no panic", a plan that loads must make the trip every run makes:
/// the coordinator serializes it to JSON (`orchestrate.rs`, with `expect`)
/// and each agent deserializes that JSON into the same plan (`session.rs`).
pub fn plan_parser(data: &[u8]) {
    plan_parser_outcome(data);
}

/// [`plan_parser`], returning what happened in a few words (the format, and
/// `ok` or the error's field path and message without numbers): the stable
/// harness keeps an input that makes a new outcome, as a cheap stand-in for
/// coverage feedback.
pub fn plan_parser_outcome(data: &[u8]) -> String {
    let Some((&selector, text)) = data.split_first() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(text);
    let format = plan_format(selector);
    match load_str(&text, format, Path::new("fuzz.plan")) {
        Ok(plan) => {
            let json = serde_json::to_string(&plan).expect("a loaded plan serializes to JSON (the coordinator expects it)");
            let back: Plan = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("an agent refuses the JSON of a plan that loaded: {e}\n{json}"));
            // NaN is the one value that is not equal to itself.
            if back != plan && format!("{back:?}") != format!("{plan:?}") {
                panic!("a plan changes on its way to the agents:\nbefore: {plan:?}\nafter:  {back:?}");
            }
            format!("{} ok phases={} faults={}", format.name(), plan.phases.len().min(3), plan.faults.len().min(3))
        }
        Err(e) => {
            // The message users see must render.
            let shown = e.to_string();
            format!("{} {} {}", format.name(), path_shape(&e.path), message_shape(&e.message))
                + if shown.is_empty() { " (empty)" } else { "" }
        }
    }
}

/// Field names a plan has (docs/plan.md), to tell a path from fuzz bytes.
const PLAN_FIELDS: &[&str] = &[
    "name", "target", "agents", "count", "labels", "builtin_target", "latency", "latency_max", "error_rate", "stall_every",
    "stall_hold", "body_size", "interval", "timeout", "phases", "duration", "load", "model", "rate", "to", "concurrency", "steps",
    "weight", "request", "method", "path", "body", "headers", "expect", "status", "slos", "metric", "scope", "pass", "warn",
    "faults", "kind", "at", "netem", "delay", "jitter", "correlation", "distribution", "loss", "duplicate", "corrupt", "reorder",
    "dst", "port", "dev", "instance", "driver", "pid", "force", "start", "cpu", "workers", "memory", "size",
    "per_worker", "max_duration", "probes", "every", "steady_state", "within", "abort_when", "threshold", "for",
    "checks", "json", "header", "equals", "matches", "body_contains", "body_matches", "fault", "rules", "consecutive",
    "windows", "after_pause", "require_header", "unless_unhealthy", "value", "tls", "ca", "cert", "key",
    "insecure_skip_verify", "require_client_cert", "secret_env", "secret_file", "prefix", "suffix",
];

/// An error's field path without indices, and with `?` for what is not a
/// plan field (an unknown key made of fuzz bytes):
/// `phases[12].load.rate` → `phases[].load.rate`, `phases[0].lod` → `phases[].?`.
fn path_shape(path: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    // A key of fuzz bytes may hold dots itself: 4 segments say enough.
    for seg in path.split('.').take(4) {
        let seg: String = seg.chars().filter(|c| !c.is_ascii_digit()).collect();
        let shape = if PLAN_FIELDS.contains(&seg.trim_end_matches("[]")) { seg } else { "?".to_string() };
        if !(shape == "?" && out.last().is_some_and(|l| l == "?")) {
            out.push(shape);
        }
    }
    out.join(".")
}

/// The kind of an error message: up to its first quoted value, without
/// digits (`` `fast` is not a rate`` and `` `slow` is not a rate`` are one).
fn message_shape(message: &str) -> String {
    message.split(['`', '"', '\'']).next().unwrap_or("").chars().filter(|c| !c.is_ascii_digit()).take(48).collect()
}

/// The input as a protobuf `Snapshot`, then its steps and phases as the
/// coordinator's aggregation decodes them; and the input as one histogram.
pub fn snapshot_decoder(data: &[u8]) {
    snapshot_decoder_outcome(data);
}

/// [`snapshot_decoder`], returning what happened in a few words (see
/// [`plan_parser_outcome`]).
pub fn snapshot_decoder_outcome(data: &[u8]) -> String {
    let snapshot = match Snapshot::decode(data) {
        Err(_) => "snapshot: not protobuf".to_string(),
        Ok(snapshot) => match same_as_stock(&snapshot) {
            Err(e) => format!("snapshot: {}", message_shape(&e.to_string())),
            Ok(stats) => {
                let mut seen = 0;
                for record in stats.steps.values() {
                    // What the report reads from every decoded histogram.
                    for h in [&record.latency, &record.service, &record.dispatch] {
                        if !h.is_empty() {
                            let _ = (h.value_at_quantile(0.99), h.max(), h.len());
                            seen += 1;
                        }
                    }
                }
                format!("snapshot: ok steps={} phases={} hists={}", stats.steps.len().min(4), stats.schedule.len().min(2), seen.min(4))
            }
        },
    };
    // The coordinator's accumulator, already holding counts (one close to
    // 2^64): the same verdict, the same sum, nothing left of a refusal.
    // Bytes without a V2 cookie are refused (or, empty, accepted) before
    // anything is allocated: checked on an empty accumulator, so that
    // the many such inputs cost no 184 KiB arrays.
    let v2 = data.get(..4).is_some_and(|c| c == [0x1c, 0x84, 0x93, 0x13] || c == [0x1c, 0x84, 0x93, 0x14]);
    let stock = if v2 {
        let mut total = histogram::new_hist();
        for (v, n) in [(1, 3), (1_000, 7), (2_000_000, u64::MAX - 5)] {
            total.saturating_record_n(v, n);
        }
        let mut fast = Accum::from_hist(&total);
        let stock = histogram::decode(data).and_then(|h| histogram::add(&mut total, &h));
        let quick = fast.add_encoded(data, &mut Vec::new());
        assert_eq!(stock.is_ok(), quick.is_ok(), "stock {stock:?}, accum {quick:?}");
        assert!(fast.to_hist() == total, "the accumulator merged another histogram");
        stock
    } else {
        let stock = histogram::decode(data).map(|_| ());
        let mut fast = Accum::default();
        let quick = fast.add_encoded(data, &mut Vec::new());
        assert_eq!(stock.is_ok(), quick.is_ok(), "stock {stock:?}, accum {quick:?}");
        assert!(fast.is_empty(), "bytes without a cookie added counts");
        stock
    };
    let hist = match histogram::decode(data) {
        Err(e) => format!("hist: {}", message_shape(&e.to_string())),
        Ok(h) => {
            let fits = stock.is_ok();
            if !h.is_empty() {
                let _ = (h.value_at_quantile(0.5), h.max(), h.min());
            }
            format!("hist: ok empty={} fits={fits}", h.is_empty())
        }
    };
    format!("{snapshot}; {hist}")
}

/// A snapshot decoded the stock way: each histogram by hdrhistogram's
/// decoder, added with `Histogram::add`, counts checked as the coordinator
/// checks them. The reference the accumulator path is compared to.
pub fn stock_decode_steps(s: &Snapshot) -> Result<RunStats, String> {
    let mut out = RunStats::default();
    for st in &s.steps {
        let (key, c) = decode_counts(st).map_err(|e| e.to_string())?;
        let h = |bytes: &[u8]| histogram::decode(bytes).map_err(|e| e.to_string());
        let record = StepRecord {
            latency: h(&st.latency_hist)?,
            service: h(&st.service_hist)?,
            dispatch: h(&st.dispatch_hist)?,
            handshake: h(&st.handshake_hist)?,
            requests: c.requests,
            errors: c.errors,
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            statuses: c.statuses,
            checks: c.checks,
        };
        let slot = out.steps.entry(key).or_default();
        if !slot.fits(&record) {
            return Err("overflow".into());
        }
        slot.add(&record).map_err(|e| e.to_string())?;
    }
    for p in &s.phases {
        let add = ScheduleStats { scheduled: p.scheduled, dropped: p.dropped, late: p.late, max_lag_us: p.max_lag_us, last_done_us: p.last_done_us };
        let slot = out.schedule.entry(p.phase).or_default();
        if !slot.fits(&add) {
            return Err("schedule overflow".into());
        }
        slot.add(&add);
    }
    Ok(out)
}

/// `decode_steps` (the accumulator path) of a snapshot, after checking that
/// it accepts the snapshot exactly when the stock decode does, with the
/// same records.
fn same_as_stock(s: &Snapshot) -> Result<RunStats, stampede_proto::convert::DecodeError> {
    let stock = stock_decode_steps(s);
    let quick = decode_steps(&s.steps, &s.phases);
    match (&stock, &quick) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.steps.len(), b.steps.len());
            for ((ka, x), (kb, y)) in a.steps.iter().zip(&b.steps) {
                assert_eq!(ka, kb);
                assert!(x.latency == y.latency && x.service == y.service && x.dispatch == y.dispatch && x.handshake == y.handshake, "{ka:?}: histograms differ");
                assert_eq!((x.requests, x.errors, x.bytes_sent, x.bytes_received), (y.requests, y.errors, y.bytes_sent, y.bytes_received));
                assert_eq!((&x.statuses, &x.checks), (&y.statuses, &y.checks));
            }
            assert_eq!(a.schedule, b.schedule);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("stock {:?}, accum {:?}", stock.as_ref().err(), quick.as_ref().err()),
    }
    quick
}

/// The reproducer behind the target binaries on stable: runs `target` on
/// each file named on the command line and prints its outcome; a panic
/// shows as usual, with its backtrace under `RUST_BACKTRACE=1`.
pub fn reproduce(target: OutcomeTarget) {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: {} FILE... (runs the target on each file; fuzz with cargo-fuzz or stable_fuzz)", env!("CARGO_PKG_NAME"));
        std::process::exit(2);
    }
    for file in files {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        println!("{file}: {}", target(&data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed seed runs clean: the corpus is a regression suite.
    #[test]
    fn seeds_run_clean() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.unwrap().path();
                target(&std::fs::read(&path).unwrap());
                n += 1;
            }
            assert!(n >= 3, "{}: only {n} seeds", dir.display());
        }
    }

    #[test]
    fn plan_seeds_load() {
        // The example plans among the seeds are valid: mutations start from
        // inputs that reach validation, not from syntax errors.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/plan_parser");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("valid-") {
                continue;
            }
            let data = std::fs::read(&path).unwrap();
            let text = std::str::from_utf8(&data[1..]).unwrap();
            load_str(text, plan_format(data[0]), &path).unwrap_or_else(|e| panic!("{name}: {e}"));
            loaded += 1;
        }
        assert!(loaded >= 3, "only {loaded} valid plan seeds");
    }
}
