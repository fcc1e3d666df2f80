//! What the target does to each request: latency, error injection, periodic stalls.
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
        assert_eq!(s.wait_for(50 * MS), 150 * MS);
        assert_eq!(s.wait_for(199 * MS), MS);
        assert_eq!(s.wait_for(200 * MS), Duration::ZERO);
        assert_eq!(s.wait_for(399 * MS), Duration::ZERO);
        // Second window behaves like the first.
        assert_eq!(s.wait_for(400 * MS), 200 * MS);
        assert_eq!(s.wait_for(450 * MS), 150 * MS);
        assert_eq!(s.wait_for(650 * MS), Duration::ZERO);
    }

    #[test]
    fn stall_degenerate_settings() {
        let always = Stall {
            every: 100 * MS,
            hold: 100 * MS,
        };
        assert_eq!(always.wait_for(30 * MS), 70 * MS);
        let never = Stall {
            every: 100 * MS,
            hold: Duration::ZERO,
        };
        assert_eq!(never.wait_for(30 * MS), Duration::ZERO);
        let zero_period = Stall {
            every: Duration::ZERO,
            hold: 100 * MS,
        };
        assert_eq!(zero_period.wait_for(30 * MS), Duration::ZERO);
    }

    #[test]
    fn latency_samples_stay_in_range() {
        let b = Behaviour {
            latency: 10 * MS,
            latency_max: Some(20 * MS),
            ..Default::default()
        };
        for _ in 0..1000 {
            let l = b.sample_latency();
            assert!((10 * MS..=20 * MS).contains(&l), "{l:?}");
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
            latency_max: Some(10 * MS),
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
