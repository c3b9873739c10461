//! Judging a code typed from an SMS or a voice call, on a live code
//! session: a locked device hears so before the code is compared; a right
//! code ends the session and clears the failures; a wrong one spends a
//! check and counts a failure (a session out of checks, or whose device
//! it locked, ends).

use crate::clock::Timestamp;
use crate::config::Config;
use crate::identity::Username;
use crate::store::{Device, Disposition, FailureState};
use crate::wire::Verdict;

use super::super::sms::CodeSession;

/// What a code check decided: the verdict, what becomes of the session,
/// and whether the device's failure state changed (kept durably before
/// the reply).
#[derive(Debug)]
pub struct CodeDecided {
    pub verdict: Verdict,
    pub session: Disposition,
    pub failures_changed: bool,
    /// This code locked the device (a lockout to count).
    pub locked: bool,
}

/// Decides a code typed for `user`'s live `session` on `device`, whose
/// failure state is `failures`; `matches` compares it with the session's
/// code in constant time, and runs only if the device is not locked.
pub fn decide(
    user: &Username,
    session: &mut CodeSession,
    device: &Device,
    failures: &mut FailureState,
    matches: impl FnOnce() -> bool,
    now: Timestamp,
    config: &Config,
) -> CodeDecided {
    if let Some(retry_after) = super::lockout::locked(failures, now) {
        return CodeDecided {
            verdict: Verdict::LockedOut { retry_after },
            session: Disposition::Keep,
            failures_changed: false,
            locked: false,
        };
    }
    if matches() {
        let changed = *failures != FailureState::default();
        *failures = FailureState::default();
        return CodeDecided {
            verdict: super::verify::accepted_by(user, device),
            session: Disposition::Remove,
            failures_changed: changed,
            locked: false,
        };
    }
    session.checks_left = session.checks_left.saturating_sub(1);
    let locked = super::lockout::next_failure(&config.lockout, failures, now);
    let verdict = super::verify::wrong_answer(locked, session.checks_left);
    CodeDecided {
        session: super::verify::disposition_after(&verdict),
        verdict,
        failures_changed: true,
        locked: locked.is_some(),
    }
}
