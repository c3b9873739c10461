//! TOTP (RFC 6238): HOTP over the number of time steps since an epoch.

use std::time::Duration;

use super::hotp::{Digits, hotp};
use super::{Code, HmacKey};

/// A TOTP time step: a whole, non-zero number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeStep(u64);

/// A time step that is zero or not whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("time step {0:?} must be a whole, non-zero number of seconds")]
pub struct TimeStepError(pub Duration);

impl TimeStep {
    /// RFC 6238's recommended default.
    pub const THIRTY_SECONDS: Self = Self(30);

    pub fn new(step: Duration) -> Result<Self, TimeStepError> {
        if step.subsec_nanos() != 0 || step.as_secs() == 0 {
            return Err(TimeStepError(step));
        }
        Ok(Self(step.as_secs()))
    }

    pub fn as_duration(self) -> Duration {
        Duration::from_secs(self.0)
    }

    /// Steps elapsed from `t0` to `unix_time` (both UNIX seconds); 0 before `t0`.
    pub fn count(self, unix_time: u64, t0: u64) -> u64 {
        unix_time.saturating_sub(t0) / self.0
    }
}

/// TOTP value at `unix_time` with epoch T0 = 0 (RFC 6238 §4).
pub fn totp(key: &HmacKey, unix_time: u64, step: TimeStep, digits: Digits) -> Code {
    hotp(key, step.count(unix_time, 0), digits)
}
