//! The process's open-file limit and descriptor table, made ready for a run
//! before any load is sent.
//!
//! Why the table matters: Linux grows a process's descriptor table by
//! doubling (64, 128, 256 …) when a new descriptor does not fit, and in a
//! process with more than one thread it then waits for an RCU grace period
//! (`expand_files` → `synchronize_rcu`) before it returns from `socket()` or
//! `accept()`. On this project's 2-core VM that wait was 7–14 ms, measured
//! with `perf record -e sched:sched_switch --filter 'prev_state == 2' -g`
//! on a 50 000/s open run: the worker thread slept in `socket()` while its
//! pool grew past a power of two, and every arrival due meanwhile was sent
//! late — the once-a-run stall of `benchmarks/README.md` ("50 000 req/s per
//! core"). Growing the table once, while the process is still
//! single-threaded, costs no grace period and leaves nothing to grow later.

use std::os::fd::RawFd;

/// The descriptor table is grown up front to this many slots at most (or the
/// open-file limit, if lower): 65 536 slots are 512 KiB of table, enough for
/// an open phase holding tens of thousands of connections. A process that
/// goes past it grows the table the ordinary way.
pub const TABLE_SLOTS: u64 = 65_536;

/// Descriptors kept for everything a process has open besides a run's
/// connections (log files, the control channel, the run store, probes).
const RESERVE: u64 = 256;

/// Raises this process's soft limit on open files to its hard limit, and
/// returns how many connections a run may then hold (the limit less a
/// reserve for everything else the process has open). An open phase may
/// hold rate × timeout connections (the default in-flight bound,
/// `default_max_in_flight`), and the common soft limit of 1024 would turn
/// the excess into connect errors that look like the server's fault. wrk's
/// and k6's docs ask users for `ulimit -n`; the agent does it itself. The
/// session also calls it to declare the figure in its `Register`, so the
/// coordinator can refuse a share the agent cannot hold.
pub fn raise_limit() -> u32 {
    (open_files_limit().saturating_sub(RESERVE)).clamp(1, u64::from(u32::MAX)) as u32
}

/// Raises the soft open-files limit to the hard one and returns the soft
/// limit in force afterwards.
fn open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(message = "Cannot raise the open-files limit; open-model runs may be short of connections.", soft, hard, error = %e);
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(message = "Cannot read the open-files limit.", error = %e);
            1024
        }
    }
}

/// Raises the open-files limit and grows the descriptor table to
/// `min(limit, TABLE_SLOTS)` slots. Call it first thing in `main`, before a
/// runtime starts threads (see the module's comment for why). Failing is
/// harmless — the table then grows on demand as before — so it only says so
/// at debug level.
pub fn prepare_process() {
    let slots = open_files_limit().min(TABLE_SLOTS);
    if let Err(e) = grow_table(slots) {
        tracing::debug!(message = "Could not grow the descriptor table up front.", slots, error = %e);
    }
}

/// Makes the kernel allocate a descriptor table of at least `slots` slots by
/// duplicating a descriptor to the highest one, then closing it: the table
/// never shrinks.
fn grow_table(slots: u64) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let Ok(highest) = RawFd::try_from(slots.saturating_sub(1)) else {
        return Ok(());
    };
    let probe = std::fs::File::open("/dev/null")?;
    let dup = fcntl(&probe, FcntlArg::F_DUPFD_CLOEXEC(highest))?;
    // `dup` was returned by fcntl just now and nothing else holds it.
    nix::unistd::close(dup)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's size as the kernel reports it (`FDSize` in
    /// /proc/self/status).
    fn table_slots() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn the_descriptor_table_is_grown_once_and_stays_grown() {
        let limit = open_files_limit();
        let want = limit.min(4096);
        assert!(table_slots() < want || want <= 256, "the test needs a table that is not yet {want} slots: {}", table_slots());
        grow_table(want).unwrap();
        assert!(table_slots() >= want, "FDSize {} after growing to {want}", table_slots());
        // Nothing was left open: the next descriptor is a low one.
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        assert!((file.as_raw_fd() as u64) < want - 1);
        assert!(table_slots() >= want);
    }

    #[test]
    fn the_connections_a_run_may_hold_leave_a_reserve() {
        let limit = open_files_limit();
        assert_eq!(u64::from(raise_limit()), limit.saturating_sub(RESERVE).max(1));
    }
}
