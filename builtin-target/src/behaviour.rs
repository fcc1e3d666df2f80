//! What the target does to each request: latency, error injection, periodic
//! stalls, timed windows of outage (a status, a stall, refused connections)
//! and a recovery period after the process was paused.
//!
//! Everything here is pure (no I/O, no clock reads) so the timing rules can be
//! unit-tested deterministically; the service feeds it instants it measured.

use std::io;
use std::time::Duration;

/// How the target behaves. All fields left at their default = answer 200 immediately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Behaviour {
    /// Fixed latency added to every response (after any stall).
    pub latency: Duration,
    /// When `Some(max)`: latency is uniform random in `[latency, max]`.
    pub latency_max: Option<Duration>,
    /// Fraction `0.0..=1.0` of requests answered `500` with body `"error"`.
    pub error_ratio: f64,
    /// Periodic stall: see [`Stall`].
    pub stall: Option<Stall>,
    /// Size in bytes of the response body for `GET`/`HEAD`. `0` (the default)
    /// means the 2-byte body `"ok"`; use `/bytes/0` for an empty body.
    pub body_size: usize,
    /// Timed outages from the server's start: see [`Window`].
    pub windows: Vec<Window>,
    /// Answer a status for a while after the process was stopped and resumed.
    pub after_pause: Option<AfterPause>,
    /// Answer 401 to every request but `/health` that lacks this header value.
    pub require_header: Option<RequireHeader>,
    /// Keep every load request's path and query (not `/health`'s), for
    /// tests that check what was sent: [`crate::TargetHandle::paths`]. Off
    /// by default: it takes a lock per request.
    pub record_paths: bool,
    /// The job API's knobs (`POST /jobs`, `GET /jobs/N`): see [`crate::Jobs`].
    pub jobs: crate::api::Jobs,
}

/// A header every request must carry with exactly this value (a test's
/// proof that a secret reached the target). Its Debug hides the value.
#[derive(Clone, PartialEq)]
pub struct RequireHeader {
    pub name: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for RequireHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireHeader").field("name", &self.name).field("value", &"***").finish()
    }
}

/// From `at` after the server started, for `length`: do `action` to every
/// request (the first window in the list that is on wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub at: Duration,
    pub length: Duration,
    pub action: WindowAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowAction {
    /// Answer this status (body `unavailable`), at once.
    Status(u16),
    /// Hold every request until the window ends, then answer normally.
    Stall,
    /// Close connections without answering (new ones and kept-alive ones).
    Refuse,
}

/// "A service that needs time to recover after a restart": once the process
/// resumes from a stop (SIGSTOP), answer `status` for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterPause {
    pub length: Duration,
    pub status: u16,
}

/// What the target does to a request arriving `since_start` after it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Whatever the other settings say.
    Normal,
    Status(u16),
    /// Hold for this long, then answer normally.
    Hold(Duration),
    Refuse,
}

/// The ticker that notices a pause checks the clock this often.
pub const PAUSE_TICK: Duration = Duration::from_millis(100);
/// A tick this much later than due means the process was stopped (a
/// scheduler hiccup on a loaded machine stays well under it).
pub const PAUSE_JUMP: Duration = Duration::from_secs(1);

/// Whether a tick that came `gap` after the previous one (due after
/// [`PAUSE_TICK`]) shows the process was paused.
pub fn was_paused(gap: Duration) -> bool {
    gap > PAUSE_TICK + PAUSE_JUMP
}

impl Window {
    fn on(&self, since_start: Duration) -> bool {
        since_start >= self.at && since_start - self.at < self.length
    }
}

impl Behaviour {
    /// The timed rules for a request arriving `since_start` after the start,
    /// when the process last resumed from a pause `resumed` after the start.
    pub fn verdict(&self, since_start: Duration, resumed: Option<Duration>) -> Verdict {
        if let Some(w) = self.windows.iter().find(|w| w.on(since_start)) {
            return match w.action {
                WindowAction::Status(s) => Verdict::Status(s),
                WindowAction::Stall => Verdict::Hold(w.at + w.length - since_start),
                WindowAction::Refuse => Verdict::Refuse,
            };
        }
        match (self.after_pause, resumed) {
            (Some(p), Some(r)) if since_start >= r && since_start - r < p.length => Verdict::Status(p.status),
            _ => Verdict::Normal,
        }
    }

    /// Whether `/health` reports the service down: inside a status or
    /// refuse window, or recovering from a pause. A stall is not an outage
    /// the service knows about.
    pub fn unhealthy(&self, since_start: Duration, resumed: Option<Duration>) -> bool {
        matches!(self.verdict(since_start, resumed), Verdict::Status(_) | Verdict::Refuse)
    }

    /// Whether answering depends on the time since the start (a clock read per request).
    pub(crate) fn timed(&self) -> bool {
        !self.windows.is_empty() || self.after_pause.is_some()
    }
}

/// "Hold every request for `hold` every `every`".
///
/// Time is cut into windows of length `every` starting at the server's start
/// instant ([`crate::TargetHandle::started_at`]); the first `hold` of each window
/// is a stall. A request that *arrives* (its head is parsed) during a stall is
/// answered only when that stall ends, so its wait is uniform in `[0, hold]`;
/// requests arriving outside stalls are answered normally. A configured
/// [`Behaviour::latency`] is added on top of the stall wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// Period of the stall windows; must be non-zero.
    pub every: Duration,
    /// Length of the stall at the start of each window (`>= every` = always stalled).
    pub hold: Duration,
}

impl Stall {
    /// How long a request arriving `since_start` after the server started is held:
    /// `hold - (since_start mod every)` inside a stall, zero outside.
    pub fn wait_for(&self, since_start: Duration) -> Duration {
        let every = self.every.as_nanos();
        if every == 0 {
            // Rejected by `Behaviour::validate`; treated as "no stall" rather than dividing by zero.
            return Duration::ZERO;
        }
        // `pos < every`, so it fits in u64 unless `every` is centuries long; saturate then.
        let pos = u64::try_from(since_start.as_nanos() % every).unwrap_or(u64::MAX);
        self.hold.saturating_sub(Duration::from_nanos(pos))
    }
}

impl Behaviour {
    /// Rejects settings that would make the target misbehave silently
    /// (NaN ratio, inverted latency range, zero stall period).
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if !(0.0..=1.0).contains(&self.error_ratio) {
            return invalid(format!(
                "error_ratio must be within 0.0..=1.0, got {}",
                self.error_ratio
            ));
        }
        if let Some(max) = self.latency_max {
            if max < self.latency {
                return invalid(format!(
                    "latency_max ({max:?}) must not be below latency ({:?})",
                    self.latency
                ));
            }
        }
        if let Some(stall) = self.stall {
            if stall.every.is_zero() {
                return invalid("stall.every must be non-zero".to_owned());
            }
        }
        if !(0.0..=1.0).contains(&self.jobs.never_finish) {
            return invalid(format!("jobs.never_finish must be within 0.0..=1.0, got {}", self.jobs.never_finish));
        }
        let bad_status = |s: u16| !(100..=599).contains(&s);
        for w in &self.windows {
            if w.length.is_zero() {
                return invalid(format!("a window at {:?} must last more than 0s", w.at));
            }
            if let WindowAction::Status(s) = w.action {
                if bad_status(s) {
                    return invalid(format!("a window's status {s} is not within 100..=599"));
                }
            }
        }
        if let Some(p) = self.after_pause {
            if p.length.is_zero() || bad_status(p.status) {
                return invalid(format!("after_pause needs a length above 0s and a status within 100..=599, got {:?} and {}", p.length, p.status));
            }
        }
        Ok(())
    }

    /// True when answering needs a clock read and maybe a timer; lets the hot path
    /// skip both for the common "answer immediately" configuration.
    pub(crate) fn delays(&self) -> bool {
        !self.latency.is_zero()
            || self.latency_max.is_some_and(|m| !m.is_zero())
            || self.stall.is_some_and(|s| !s.hold.is_zero())
    }

    /// One latency draw: fixed, or uniform in `[latency, latency_max]`.
    pub(crate) fn sample_latency(&self) -> Duration {
        match self.latency_max {
            Some(max) if max > self.latency => {
                let span = u64::try_from((max - self.latency).as_nanos()).unwrap_or(u64::MAX);
                self.latency + Duration::from_nanos(fastrand::u64(0..=span))
            }
            _ => self.latency,
        }
    }

    /// One error-injection draw. `fastrand::f64()` is in `[0, 1)`, so ratio 1.0
    /// always errs and 0.0 never does; the 0.0 check skips the RNG on the hot path.
    pub(crate) fn sample_error(&self) -> bool {
        self.error_ratio > 0.0 && fastrand::f64() < self.error_ratio
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn stall_wait_inside_and_outside_windows() {
        let s = Stall {
            every: 400 * MS,
            hold: 200 * MS,
        };
        assert_eq!(s.wait_for(Duration::ZERO), 200 * MS);
        assert_eq!(s.wait_for(Duration::from_millis(50)), 150 * MS);
        assert_eq!(s.wait_for(Duration::from_millis(199)), MS);
        assert_eq!(s.wait_for(Duration::from_millis(200)), Duration::ZERO);
        assert_eq!(s.wait_for(Duration::from_millis(399)), Duration::ZERO);
        // Second window behaves like the first.
        assert_eq!(s.wait_for(Duration::from_millis(400)), 200 * MS);
        assert_eq!(s.wait_for(Duration::from_millis(450)), 150 * MS);
        assert_eq!(s.wait_for(Duration::from_millis(650)), Duration::ZERO);
    }

    #[test]
    fn stall_degenerate_settings() {
        let always = Stall {
            every: 100 * MS,
            hold: 100 * MS,
        };
        assert_eq!(always.wait_for(Duration::from_millis(30)), 70 * MS);
        let never = Stall {
            every: 100 * MS,
            hold: Duration::ZERO,
        };
        assert_eq!(never.wait_for(Duration::from_millis(30)), Duration::ZERO);
        let zero_period = Stall {
            every: Duration::ZERO,
            hold: 100 * MS,
        };
        assert_eq!(zero_period.wait_for(Duration::from_millis(30)), Duration::ZERO);
    }

    #[test]
    fn latency_samples_stay_in_range() {
        let b = Behaviour {
            latency: 10 * MS,
            latency_max: Some(Duration::from_millis(20)),
            ..Default::default()
        };
        for _ in 0..1000 {
            let l = b.sample_latency();
            assert!((Duration::from_millis(10)..=20 * MS).contains(&l), "{l:?}");
        }
        let fixed = Behaviour {
            latency: 10 * MS,
            ..Default::default()
        };
        assert_eq!(fixed.sample_latency(), 10 * MS);
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(Behaviour::default().validate().is_ok());
        let bad_ratio = Behaviour {
            error_ratio: f64::NAN,
            ..Default::default()
        };
        assert!(bad_ratio.validate().is_err());
        let above_one = Behaviour {
            error_ratio: 1.5,
            ..Default::default()
        };
        assert!(above_one.validate().is_err());
        let inverted = Behaviour {
            latency: 20 * MS,
            latency_max: Some(Duration::from_millis(10)),
            ..Default::default()
        };
        assert!(inverted.validate().is_err());
        let zero_every = Behaviour {
            stall: Some(Stall {
                every: Duration::ZERO,
                hold: MS,
            }),
            ..Default::default()
        };
        assert!(zero_every.validate().is_err());
    }

    fn windows() -> Behaviour {
        let w = |at: u64, length: u64, action| Window { at: Duration::from_millis(at), length: Duration::from_millis(length), action };
        Behaviour {
            windows: vec![w(5000, 7000, WindowAction::Status(503)), w(20_000, 3000, WindowAction::Stall), w(30_000, 2000, WindowAction::Refuse)],
            after_pause: Some(AfterPause { length: 7000 * MS, status: 503 }),
            ..Default::default()
        }
    }

    #[test]
    fn windows_apply_from_their_start_for_their_length() {
        let b = windows();
        assert_eq!(b.verdict(Duration::from_millis(4999), None), Verdict::Normal);
        assert_eq!(b.verdict(Duration::from_millis(5000), None), Verdict::Status(503));
        assert_eq!(b.verdict(Duration::from_millis(11_999), None), Verdict::Status(503));
        assert_eq!(b.verdict(Duration::from_millis(12_000), None), Verdict::Normal);
        // A stall holds until its window ends.
        assert_eq!(b.verdict(Duration::from_millis(20_000), None), Verdict::Hold(Duration::from_millis(3000)));
        assert_eq!(b.verdict(Duration::from_millis(22_500), None), Verdict::Hold(Duration::from_millis(500)));
        assert_eq!(b.verdict(Duration::from_millis(23_000), None), Verdict::Normal);
        assert_eq!(b.verdict(Duration::from_millis(31_000), None), Verdict::Refuse);
        assert_eq!(b.verdict(Duration::from_millis(32_000), None), Verdict::Normal);
    }

    #[test]
    fn health_is_down_in_status_and_refuse_windows_and_while_recovering() {
        let b = windows();
        assert!(!b.unhealthy(MS, None));
        assert!(b.unhealthy(Duration::from_millis(6000), None));
        assert!(!b.unhealthy(Duration::from_millis(21_000), None), "a stall is not an outage the service knows of");
        assert!(b.unhealthy(Duration::from_millis(31_000), None));
        assert!(b.unhealthy(Duration::from_millis(40_000), Some(Duration::from_millis(34_000))));
        assert!(!b.unhealthy(Duration::from_millis(41_000), Some(Duration::from_millis(34_000))));
    }

    #[test]
    fn after_a_pause_the_status_lasts_its_length_from_the_resume() {
        let b = windows();
        assert_eq!(b.verdict(Duration::from_millis(40_000), None), Verdict::Normal);
        assert_eq!(b.verdict(Duration::from_millis(40_000), Some(Duration::from_millis(40_000))), Verdict::Status(503));
        assert_eq!(b.verdict(Duration::from_millis(46_999), Some(Duration::from_millis(40_000))), Verdict::Status(503));
        assert_eq!(b.verdict(Duration::from_millis(47_000), Some(Duration::from_millis(40_000))), Verdict::Normal);
        let plain = Behaviour::default();
        assert_eq!(plain.verdict(Duration::from_millis(40_000), Some(Duration::from_millis(40_000))), Verdict::Normal);
    }

    #[test]
    fn only_a_tick_late_by_more_than_a_second_is_a_pause() {
        assert!(!was_paused(PAUSE_TICK));
        assert!(!was_paused(PAUSE_TICK + 900 * MS));
        assert!(was_paused(PAUSE_TICK + 1500 * MS));
    }

    #[test]
    fn delays_only_when_something_waits() {
        assert!(!Behaviour::default().delays());
        assert!(!Behaviour {
            error_ratio: 1.0,
            body_size: 9,
            ..Default::default()
        }
        .delays());
        assert!(Behaviour {
            latency: MS,
            ..Default::default()
        }
        .delays());
        assert!(Behaviour {
            latency_max: Some(MS),
            ..Default::default()
        }
        .delays());
        let stall = Some(Stall {
            every: 10 * MS,
            hold: MS,
        });
        assert!(Behaviour {
            stall,
            ..Default::default()
        }
        .delays());
    }
}
