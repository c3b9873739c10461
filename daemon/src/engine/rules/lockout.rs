//! Lockouts: what a wrong answer does to a device's failure state, and
//! whether a device is locked now. Every path that judges an answer (a
//! challenge, an SMS code, a push) uses these two.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::config::LockoutConfig;
use crate::store::{FailureState, LOCKED_UNTIL_UNLOCKED};

/// How long the device stays locked, if it is locked at `now`.
pub fn locked(failures: &FailureState, now: Timestamp) -> Option<Duration> {
    (failures.locked_until > now).then(|| failures.locked_for(now))
}

/// A wrong answer's change to a device's failure state; `Some(length)` when
/// it locks the device.
///
/// Each lockout doubles the next, up to `lockout.max`. The escalation is
/// not forever: every `lockout.decay-after` without a wrong answer (counted
/// from the end of the last lockout) takes one doubling off and forgets the
/// consecutive count, and a right answer clears it all. Independently of
/// time, `lockout.hard-limit` wrong answers without a right one lock the
/// device until an operator unlocks it (NIST SP 800-63B §5.2.2: at most 100
/// consecutive failed attempts), which bounds what any number of timed
/// lockouts lets a patient guesser try.
pub fn next_failure(
    lockout: &LockoutConfig,
    failures: &mut FailureState,
    now: Timestamp,
) -> Option<Duration> {
    decay(lockout, failures, now);
    failures.last_failure = now;
    failures.since_success = failures.since_success.saturating_add(1);
    failures.consecutive += 1;
    if failures.since_success >= lockout.hard_limit {
        failures.lockouts = failures.lockouts.saturating_add(1);
        failures.consecutive = 0;
        failures.locked_until = LOCKED_UNTIL_UNLOCKED;
        return Some(Duration::MAX);
    }
    if failures.consecutive < lockout.failures {
        return None;
    }
    let doublings = failures.lockouts.min(20);
    let length = lockout
        .first
        .saturating_mul(1 << doublings)
        .min(lockout.max);
    failures.lockouts = failures.lockouts.saturating_add(1);
    failures.consecutive = 0;
    failures.locked_until = now.plus(length);
    Some(length)
}

/// Steps the escalation down for the quiet periods since the last failure
/// or the end of the last lockout, whichever is later.
fn decay(lockout: &LockoutConfig, failures: &mut FailureState, now: Timestamp) {
    let quiet_since = failures.last_failure.max(failures.locked_until);
    let period = u64::try_from(lockout.decay_after.as_millis()).unwrap_or(u64::MAX);
    if failures.needs_operator() || quiet_since >= now || period == 0 {
        return;
    }
    let periods = (now.0 - quiet_since.0) / period;
    if periods > 0 {
        failures.consecutive = 0;
        failures.lockouts = failures
            .lockouts
            .saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX));
    }
}
