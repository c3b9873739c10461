//! Time as the rest of the daemon sees it: a [`Timestamp`] passed in.
//!
//! [`now`] is the only place in the daemon that reads the wall clock; the
//! engine and the stores take timestamps as arguments, so tests and
//! fuzzers drive them on a virtual clock. Wall-clock (not monotonic) time
//! is used because lockouts are stored and must mean the same after a
//! restart.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the UNIX epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This moment plus `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long from this moment until `later`; zero if `later` has passed.
    pub fn until(self, later: Self) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

/// The wall clock, now.
pub fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Timestamp(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
}
