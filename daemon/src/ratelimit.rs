//! Rate arithmetic: the generic cell rate algorithm (GCRA), pure.
//!
//! A limiter allows `rate` events per `period` with a burst of `burst`
//! events. It keeps one number, the theoretical arrival time of the next
//! event; the caller passes `now` and stores the state.

use std::time::Duration;

use crate::clock::Timestamp;

/// Whether an event may happen now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { retry_after: Duration },
}

/// A rate: `events` per `period`, with bursts up to `burst` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds between events at the steady rate (at least 1).
    interval_micros: u64,
    /// How far ahead of `now` the arrival time may run.
    tolerance_micros: u64,
}

impl Rate {
    /// `events` per `period`, allowing a burst of `burst` (both at least 1).
    pub fn new(events: u32, period: Duration, burst: u32) -> Self {
        let period_micros = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        let interval_micros = (period_micros / u64::from(events.max(1))).max(1);
        Self {
            interval_micros,
            tolerance_micros: interval_micros
                .saturating_mul(u64::from(burst.max(1)).saturating_sub(1)),
        }
    }
}

impl Rate {
    /// `events` per `period`, with a burst of as many.
    pub fn per(events: u32, period: Duration) -> Self {
        Self::new(events, period, events)
    }

    /// Microseconds between events at the steady rate.
    pub fn interval_micros(&self) -> u64 {
        self.interval_micros
    }

    /// How far ahead of now the theoretical arrival time may run, in
    /// microseconds (the burst).
    pub fn tolerance_micros(&self) -> u64 {
        self.tolerance_micros
    }
}

/// One limiter's state: the theoretical arrival time, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gcra {
    tat_micros: u64,
}

impl Gcra {
    /// Decides one event at `now` and, if allowed, records it.
    pub fn check(&mut self, rate: Rate, now: Timestamp) -> Decision {
        let now_micros = now.0.saturating_mul(1000);
        let tat = self.tat_micros.max(now_micros);
        let allow_at = tat.saturating_sub(rate.tolerance_micros);
        if allow_at > now_micros {
            return Decision::Deny {
                retry_after: Duration::from_micros(allow_at - now_micros),
            };
        }
        self.tat_micros = tat.saturating_add(rate.interval_micros);
        Decision::Allow
    }

    /// Whether this state no longer holds anything back at `now` (so it
    /// can be forgotten without changing any decision).
    pub fn is_idle(&self, now: Timestamp) -> bool {
        self.tat_micros <= now.0.saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_per_minute_allows_a_burst_of_ten_then_one_every_six_seconds() {
        let rate = Rate::new(10, Duration::from_secs(60), 10);
        let mut state = Gcra::default();
        let t0 = Timestamp(1_000_000);
        for _ in 0..10 {
            assert_eq!(state.check(rate, t0), Decision::Allow);
        }
        assert_eq!(
            state.check(rate, t0),
            Decision::Deny {
                retry_after: Duration::from_secs(6)
            }
        );
        assert!(matches!(
            state.check(rate, t0.plus(Duration::from_secs(5))),
            Decision::Deny { .. }
        ));
        assert_eq!(
            state.check(rate, t0.plus(Duration::from_secs(6))),
            Decision::Allow
        );
        assert!(!state.is_idle(t0.plus(Duration::from_secs(6))));
        // Eleven events at 6 s each: the state is idle from t0 + 66 s.
        assert!(!state.is_idle(t0.plus(Duration::from_secs(65))));
        assert!(state.is_idle(t0.plus(Duration::from_secs(66))));
    }

    #[test]
    fn high_rates_keep_their_precision() {
        let rate = Rate::new(200_000, Duration::from_secs(1), 200_000);
        let mut state = Gcra::default();
        let t0 = Timestamp(5_000);
        let allowed = (0..250_000)
            .filter(|_| state.check(rate, t0) == Decision::Allow)
            .count();
        assert_eq!(allowed, 200_000);
    }
}
