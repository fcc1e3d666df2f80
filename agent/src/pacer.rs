//! The open-model pacer's clock: a one-shot `timerfd` per worker.
//!
//! tokio's timer wheel ticks every millisecond and rounds a deadline up to
//! its next tick, so an arrival paced with `sleep_until` started on average
//! about half a tick late — and, by the coordinated-omission rule, that wait
//! is charged to the server: issue 11 measured stampede's open-model p50
//! 0.60 ms above `oha --latency-correction`'s against the same target.
//!
//! A timerfd armed for the arrival's instant fires from the kernel's
//! high-resolution timer (`timerfd_settime` starts an hrtimer with no slack,
//! unlike `epoll_wait`'s timeout or `nanosleep`, which get the thread's
//! 50 µs timer slack), and its readiness wakes the worker's epoll like any
//! socket's: no extra thread, no spinning, the runtime stays free for the
//! requests in flight while the pacer waits. The cost is two syscalls per
//! wake-up (arm, read).
//!
//! Where a timerfd cannot be made (a seccomp profile that forbids it), the
//! pacer falls back to tokio's timer and says so once in the log.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

pub struct PreciseTimer {
    fd: Option<AsyncFd<Fd>>,
}

/// The timerfd, owned: its descriptor stays open, and the same, for as long
/// as the `AsyncFd` that registered it lives (what `AsyncFd` needs).
struct Fd(TimerFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl PreciseTimer {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> PreciseTimer {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
            .map_err(io::Error::from)
            // `new` is deprecated for an `AsRawFd` that may close its
            // descriptor behind tokio's back (tokio#8587); `Fd` owns it and
            // never does, and its replacement `register` is `unsafe`, which
            // this crate forbids.
            .and_then(|fd| {
                #[allow(deprecated)]
                AsyncFd::new(Fd(fd))
            });
        match fd {
            Ok(fd) => PreciseTimer { fd: Some(fd) },
            Err(error) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(message = "No timerfd: the open-model pacer falls back to tokio's 1 ms timer, and latencies include up to 1 ms of pacing lag.", %error)
                });
                PreciseTimer { fd: None }
            }
        }
    }

    /// Returns at `due` (within the kernel's wake-up latency), or at once
    /// when it has passed. Dropping the future leaves the timer armed; the
    /// next call re-arms it, which discards the old expiry, so a stale
    /// expiry never ends a wait early. Syscalls per wait: one arm and one
    /// read of the expiry (plus one read returning EAGAIN after a dropped
    /// wait that fired).
    pub async fn sleep_until(&self, due: Instant) {
        let Some(fd) = &self.fd else {
            return tokio::time::sleep_until(due.into()).await;
        };
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // No read to drain an expiry of a dropped wait first: arming resets
        // the expiry count (`timerfd_setup` zeroes `ticks`; checked on this
        // kernel), so a stale expiry cannot end this wait early. What can be
        // stale is tokio's readiness flag, and the loop below clears it.
        if let Err(error) = fd.get_ref().0.set(Expiration::OneShot(TimeSpec::from_duration(left)), TimerSetTimeFlags::empty()) {
            tracing::debug!(message = "Arming the timerfd failed; tokio's timer instead.", %error);
            return tokio::time::sleep_until(due.into()).await;
        }
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return tokio::time::sleep_until(due.into()).await;
            };
            // `wait` reads the expiry count: EAGAIN (not expired yet, the
            // readiness was stale) clears the readiness and we wait again.
            match ready.try_io(|inner| inner.get_ref().0.wait().map_err(io::Error::from)) {
                Ok(_) => {
                    // Read, so no longer readable: say so, or the next wait
                    // would see this readiness and spend a read on EAGAIN
                    // (strace: 3 reads per arming before, 1 now).
                    ready.clear_ready();
                    return;
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How late `timer` wakes for `n` waits of `gap` each: the lags, sorted.
    async fn lags(timer: &PreciseTimer, n: u32, gap: Duration) -> Vec<Duration> {
        let start = Instant::now();
        let mut out = Vec::new();
        for k in 1..=n {
            let due = start + gap * k;
            timer.sleep_until(due).await;
            out.push(Instant::now().saturating_duration_since(due));
        }
        out.sort();
        out
    }

    /// Not a timing assertion (the test machine may be loaded): it checks
    /// that every wait ends at or after its instant, that a past instant
    /// returns at once, and that a dropped wait does not end the next early.
    #[tokio::test(flavor = "current_thread")]
    async fn waits_end_at_or_after_their_instant() {
        let timer = PreciseTimer::new();
        assert!(timer.fd.is_some(), "this kernel has timerfd");
        let lags = lags(&timer, 20, Duration::from_micros(300)).await;
        assert_eq!(lags.len(), 20);
        let past = Instant::now() - Duration::from_millis(5);
        let t0 = Instant::now();
        timer.sleep_until(past).await;
        assert!(t0.elapsed() < Duration::from_millis(50));
        // A wait dropped before its instant, then a later one.
        let _ = tokio::time::timeout(Duration::from_millis(1), timer.sleep_until(Instant::now() + Duration::from_millis(3))).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let due = Instant::now() + Duration::from_millis(20);
        timer.sleep_until(due).await;
        assert!(Instant::now() >= due, "a stale expiry ended the wait early");
    }
}

#[cfg(test)]
mod cost {
    use std::time::Duration;

    use super::*;

    fn cpu() -> Duration {
        let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_THREAD).unwrap();
        let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
        t(u.user_time()) + t(u.system_time())
    }

    #[tokio::test(flavor = "current_thread")]
    #[ignore]
    async fn what_a_wait_costs() {
        let timer = PreciseTimer::new();
        for (name, gap) in [("timerfd 200us", 200u64), ("timerfd 1000us", 1000)] {
            let c0 = cpu();
            let start = Instant::now();
            let n = 1_000_000 / gap as u32;
            let mut lags = Vec::new();
            for k in 1..=n {
                let due = start + Duration::from_micros(gap) * k;
                timer.sleep_until(due).await;
                lags.push(Instant::now() - due);
            }
            lags.sort();
            println!("{name}: {n} waits, CPU {:?} = {:?}/wait, lag p50 {:?} p99 {:?}", cpu() - c0, (cpu() - c0) / n, lags[lags.len() / 2], lags[lags.len() * 99 / 100]);
        }
        // What the open model's sleep-through pacer does instead (worker/open.rs):
        // a blocking nanosleep, with the worker threads' 1 ns timer slack.
        let _ = nix::sys::prctl::set_timerslack(1);
        for (name, gap) in [("nanosleep 200us", 200u64), ("nanosleep 1000us", 1000)] {
            let c0 = cpu();
            let start = Instant::now();
            let n = 1_000_000 / gap as u32;
            let mut lags = Vec::new();
            for k in 1..=n {
                let due = start + Duration::from_micros(gap) * k;
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                lags.push(Instant::now() - due);
            }
            lags.sort();
            println!("{name}: {n} waits, CPU {:?} = {:?}/wait, lag p50 {:?} p99 {:?}", cpu() - c0, (cpu() - c0) / n, lags[lags.len() / 2], lags[lags.len() * 99 / 100]);
        }
        for (name, gap) in [("tokio 200us", 200u64), ("tokio 1000us", 1000)] {
            let c0 = cpu();
            let start = Instant::now();
            let n = 1_000_000 / gap as u32;
            for k in 1..=n {
                tokio::time::sleep_until((start + Duration::from_micros(gap) * k).into()).await;
            }
            println!("{name}: {n} waits, CPU {:?} = {:?}/wait", cpu() - c0, (cpu() - c0) / n);
        }
    }
}
