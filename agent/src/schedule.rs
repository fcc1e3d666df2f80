//! When each open-model arrival is due.
//!
//! A phase's fleet-wide rate goes linearly from `r0` to `r1` over `T`, so the
//! expected number of arrivals by `t` is `N(t) = r0·t + (r1 − r0)·t²/(2T)`.
//! An agent with share `f` of the rate takes arrivals `k = 0, 1, 2 …` at the
//! instant where `f·N(t) = k + φ`; the offset `φ = index / count` staggers the
//! agents so the fleet's arrivals interleave instead of landing in bursts.
//! Times are computed from the arrival number, never by adding up intervals,
//! so rounding never drifts and the count per phase is exact.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct ArrivalSchedule {
    /// Rates already multiplied by this agent's share, per second.
    r0: f64,
    r1: f64,
    duration: f64,
    offset: f64,
}

impl ArrivalSchedule {
    pub fn new(r0: f64, r1: f64, duration: Duration, share: f64, offset: f64) -> Self {
        ArrivalSchedule { r0: r0 * share, r1: r1 * share, duration: duration.as_secs_f64(), offset }
    }

    /// Expected arrivals by `t` seconds into the phase (this agent's share).
    fn cumulative(&self, t: f64) -> f64 {
        self.r0 * t + (self.r1 - self.r0) * t * t / (2.0 * self.duration)
    }

    /// How many arrivals fall inside the phase.
    pub fn count(&self) -> u64 {
        let n = self.cumulative(self.duration) - self.offset;
        if n <= 0.0 {
            0
        } else {
            // `ceil` counts arrival k when k + φ < N(T); a tiny epsilon keeps
            // an exact integer N(T) from counting one arrival at t = T.
            (n - 1e-9).ceil().max(0.0) as u64
        }
    }

    /// Offset of arrival `k` from the phase start.
    pub fn time_of(&self, k: u64) -> Duration {
        let n = k as f64 + self.offset;
        let a = (self.r1 - self.r0) / self.duration;
        // Solves r0·t + a·t²/2 = n. This form avoids cancellation when a ≈ 0
        // and handles ramps down (a < 0) and a start from rate 0.
        let disc = (self.r0 * self.r0 + 2.0 * a * n).max(0.0);
        let denom = self.r0 + disc.sqrt();
        let t = if denom > 0.0 { 2.0 * n / denom } else { 0.0 };
        Duration::from_secs_f64(t.clamp(0.0, self.duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_rate_is_evenly_spaced_and_exact() {
        let s = ArrivalSchedule::new(200.0, 200.0, Duration::from_secs(10), 1.0, 0.0);
        assert_eq!(s.count(), 2000);
        assert_eq!(s.time_of(0), Duration::ZERO);
        assert!((s.time_of(1).as_secs_f64() - 0.005).abs() < 1e-12);
        assert!((s.time_of(1999).as_secs_f64() - 9.995).abs() < 1e-9);
    }

    #[test]
    fn shares_add_up_to_the_fleet_count() {
        for agents in 1..=7u32 {
            let total: u64 = (0..agents)
                .map(|a| {
                    ArrivalSchedule::new(333.0, 333.0, Duration::from_secs(3), 1.0 / agents as f64, a as f64 / agents as f64)
                        .count()
                })
                .sum();
            assert!((total as i64 - 999).abs() <= 1, "{agents} agents: {total}");
        }
    }

    #[test]
    fn ramps_follow_the_integral() {
        // 200/s → 2000/s over 30 s: (200 + 2000) / 2 · 30 = 33 000 arrivals.
        let up = ArrivalSchedule::new(200.0, 2000.0, Duration::from_secs(30), 1.0, 0.0);
        assert_eq!(up.count(), 33_000);
        // Half the arrivals come after the instant where N(t) = 16 500.
        let mid = up.time_of(16_500).as_secs_f64();
        assert!((200.0 * mid + 1800.0 * mid * mid / 60.0 - 16_500.0).abs() < 1e-6);
        let down = ArrivalSchedule::new(2000.0, 0.0, Duration::from_secs(10), 1.0, 0.0);
        assert_eq!(down.count(), 10_000);
        let mut last = Duration::ZERO;
        for k in 0..down.count() {
            let t = down.time_of(k);
            assert!(t >= last && t <= Duration::from_secs(10));
            last = t;
        }
        let from_zero = ArrivalSchedule::new(0.0, 100.0, Duration::from_secs(10), 1.0, 0.0);
        assert_eq!(from_zero.count(), 500);
        assert!(from_zero.time_of(1).as_secs_f64() > 0.4);
    }
}
