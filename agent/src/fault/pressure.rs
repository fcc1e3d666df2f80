//! CPU and memory pressure on the agent's node.
//!
//! The pressure runs in a child process — the agent's own executable with the
//! hidden `stress` subcommand — never in the agent: burning the agent's cores
//! or memory would distort the load it measures, and a separate process
//! group can be killed as a whole on revert (`KillSpawned`).
//!
//! The child bounds its own life (a dead-man switch): it exits by itself at
//! the end of `--for`, the fault's window plus [`GRACE`], so the pressure
//! ends even when the agent hangs, crashes or is SIGKILLed and no revert
//! ever runs. The grace leaves the normal revert time to act first.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use stampede_common::plan::{parse_size, Fault, FaultKind};
use stampede_common::units::Dur;

use super::{Action, Driver, FaultActions, FaultError, Node};

/// CPU and memory faults.
pub struct PressureDriver;

/// How long a helper outlives its fault's window if nobody kills it.
pub const GRACE: Duration = Duration::from_secs(5);

/// The `Spawn` tag of a fault's helper; the journal finds it again by this.
pub fn tag(fault_name: &str) -> String {
    format!("stampede-pressure-{fault_name}")
}

impl Driver for PressureDriver {
    fn actions(&self, fault: &Fault, node: &Node) -> Result<FaultActions, FaultError> {
        let err = |message: String| FaultError::Plan { fault: fault.name.clone(), message };
        let exe = node
            .agent_exe
            .to_str()
            .ok_or_else(|| err(format!("the agent's path {} is not UTF-8", node.agent_exe.display())))?;
        let for_ = dur_arg(fault.duration.as_duration() + GRACE);
        let mut argv: Vec<String> = vec![exe.into(), "stress".into()];
        match (fault.kind, &fault.cpu, &fault.memory) {
            (FaultKind::Cpu, Some(cpu), _) => {
                if cpu.workers == 0 || cpu.load.ratio() <= 0.0 {
                    return Err(err("cpu pressure needs at least one worker and a load above 0%".into()));
                }
                // Percent prints as written (`80%`), never as a float product
                // such as 7.000000000000001.
                let load = cpu.load.to_string();
                let load = load.trim_end_matches('%');
                argv.extend(["cpu", "--workers", &cpu.workers.to_string(), "--load", load].map(String::from));
            }
            (FaultKind::Memory, _, Some(mem)) => {
                // Checked here so a bad size fails the preflight, not the helper.
                mem.bytes().map_err(err)?;
                argv.extend(["memory", "--size", mem.size.trim()].map(String::from));
            }
            (kind, _, _) => return Err(err(format!("`{}` is not a pressure fault, or lacks its `{}` block", kind.name(), kind.name()))),
        }
        argv.extend(["--for".to_string(), for_]);
        let tag = tag(&fault.name);
        Ok(FaultActions { apply: vec![Action::Spawn { argv, tag: tag.clone() }], revert: vec![Action::KillSpawned { tag }] })
    }

    fn requires(&self, _fault: &Fault) -> Vec<String> {
        // Only the agent's own executable is needed.
        vec![]
    }
}

/// A duration as `--for` takes it: whole seconds when exact, else
/// milliseconds rounded up (a helper may live a little longer, never shorter).
fn dur_arg(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_nanos().div_ceil(1_000_000))
    }
}

/// The hidden `stress` subcommand of `stampede-agent` and `stampede` (whose
/// in-process agents spawn helpers from the `stampede` executable).
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum StressCommand {
    /// Keep WORKERS threads busy LOAD percent of the time.
    Cpu {
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        workers: u32,
        /// Busy share of each worker: `80` or `80%`.
        #[arg(long, default_value = "100", value_parser = parse_load)]
        load: f64,
        /// Exit after this long (`30s`), whatever happens to the agent.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_for)]
        duration: Duration,
    },
    /// Hold SIZE bytes of resident memory.
    Memory {
        /// `512MiB`, `1GiB`, `200MB`.
        #[arg(long, value_parser = parse_bytes)]
        size: u64,
        /// Exit after this long (`30s`), whatever happens to the agent.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_for)]
        duration: Duration,
    },
}

fn parse_load(s: &str) -> Result<f64, String> {
    let n: f64 = s.trim().trim_end_matches('%').parse().map_err(|_| format!("`{s}` is not a percentage"))?;
    if n > 0.0 && n <= 100.0 {
        Ok(n / 100.0)
    } else {
        Err(format!("`{s}` must be more than 0 and at most 100"))
    }
}

fn parse_for(s: &str) -> Result<Duration, String> {
    s.parse::<Dur>().map(Dur::as_duration)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size(s).and_then(|n| if n == 0 { Err("the size must be more than 0".into()) } else { Ok(n) })
}

/// Runs a pressure helper until its deadline.
pub fn stress_main(cmd: StressCommand) -> anyhow::Result<()> {
    match cmd {
        StressCommand::Cpu { workers, load, duration } => {
            let deadline = Instant::now() + duration;
            let threads: Vec<_> = (0..workers)
                .map(|i| {
                    std::thread::Builder::new()
                        .name(format!("stress-cpu-{i}"))
                        .spawn(move || burn(load, deadline))
                        .context("starting a cpu worker")
                })
                .collect::<anyhow::Result<_>>()?;
            for t in threads {
                let _ = t.join();
            }
            Ok(())
        }
        StressCommand::Memory { size, duration } => {
            let deadline = Instant::now() + duration;
            let held = hold(size)?;
            sleep_until(deadline);
            drop(std::hint::black_box(held));
            Ok(())
        }
    }
}

/// One worker: in every 100 ms slice, spin `load` of it and sleep the rest.
/// A short slice keeps the pressure even at the scale of a request's latency.
fn burn(load: f64, deadline: Instant) {
    const SLICE: Duration = Duration::from_millis(100);
    let busy = SLICE.mul_f64(load);
    loop {
        let start = Instant::now();
        if start >= deadline {
            return;
        }
        let busy_end = (start + busy).min(deadline);
        while Instant::now() < busy_end {
            std::hint::spin_loop();
        }
        let slice_end = (start + SLICE).min(deadline);
        if let Some(rest) = slice_end.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
    }
}

/// Allocates `size` bytes and makes every page resident: writing a byte per
/// 4 KiB page forces the kernel to back it (an untouched allocation is only
/// address space and puts no pressure on anything).
fn hold(size: u64) -> anyhow::Result<Vec<u8>> {
    const PAGE: usize = 4096;
    let Ok(n) = usize::try_from(size) else { bail!("{size} bytes do not fit in this address space") };
    // If the node runs out of memory, the OOM killer should take this helper,
    // not the agent or the services under test. Best effort: it needs no
    // privilege to raise one's own score.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    let mut buf: Vec<u8> = Vec::new();
    buf.try_reserve_exact(n).with_context(|| format!("allocating {size} bytes"))?;
    // `resize` fills the buffer; the per-page writes below also keep pages
    // distinct, so same-page merging (KSM) cannot fold them back together.
    buf.resize(n, 0);
    for (i, page) in buf.chunks_mut(PAGE).enumerate() {
        page[0] = (i as u8) | 1;
    }
    Ok(std::hint::black_box(buf))
}

fn sleep_until(deadline: Instant) {
    while let Some(rest) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(rest.min(Duration::from_secs(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stress_arguments() {
        assert_eq!(parse_load("80").unwrap(), 0.8);
        assert_eq!(parse_load("12.5%").unwrap(), 0.125);
        assert!(parse_load("0").is_err() && parse_load("101").is_err());
        assert_eq!(parse_for("35s").unwrap(), Duration::from_secs(35));
        assert!(parse_for("35").is_err());
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert!(parse_bytes("0").is_err());
        assert_eq!(dur_arg(Duration::from_secs(35)), "35s");
        assert_eq!(dur_arg(Duration::from_micros(5_500_001)), "5501ms");
    }

    #[test]
    fn burn_respects_its_deadline() {
        let started = Instant::now();
        burn(0.5, started + Duration::from_millis(250));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(1), "{took:?}");
    }
}
