//! The reference model of a verification: what the rules say a `Verify`
//! must answer, written from the specification (DESIGN.md, "Bound
//! guessing") and not from the engine, so that comparing the two finds
//! where either is wrong.
//!
//! The in-process scenario (`scenario.rs`) and the `engine_ops` fuzz target
//! both check the engine against it.

use std::collections::VecDeque;
use std::time::Duration;

use slsd::config::{ChallengeConfig, LockoutConfig};
use slsd::identity::{DeviceId, Username};
use slsd::profile::DeviceKind;
use slsd::wire::{ChallengeText, Verdict};

/// A device's failures as the model counts them: a timed throttle that
/// doubles with each lockout, up to a cap, steps down by one doubling per
/// quiet period, clears on success, and past the hard limit of wrong
/// answers without a right one waits for an operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    pub consecutive: u32,
    pub lockouts: u32,
    /// Milliseconds since the epoch.
    pub locked_until: u64,
    /// When the last wrong answer came (milliseconds since the epoch).
    pub last_failure: u64,
    /// Wrong answers since the last right one.
    pub since_success: u32,
    /// Locked until an operator unlocks it.
    pub needs_operator: bool,
}

impl Failures {
    /// How long the device is still locked at `now` (zero if it is not).
    pub fn locked_for(&self, now: u64) -> Duration {
        if self.needs_operator {
            return Duration::MAX;
        }
        Duration::from_millis(self.locked_until.saturating_sub(now))
    }

    fn is_locked(&self, now: u64) -> bool {
        self.needs_operator || self.locked_until > now
    }

    /// The quiet periods since the later of the last failure and the end of
    /// the last lockout: each forgets the consecutive count and one doubling.
    fn quiet_periods(&mut self, rules: &LockoutConfig, now: u64) {
        let period = u64::try_from(rules.decay_after.as_millis()).unwrap_or(u64::MAX);
        let mut quiet_since = self.last_failure.max(self.locked_until);
        while quiet_since.saturating_add(period) <= now && self.lockouts + self.consecutive > 0 {
            self.consecutive = 0;
            self.lockouts = self.lockouts.saturating_sub(1);
            quiet_since += period;
        }
    }
}

/// An open challenge as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// Milliseconds since the epoch.
    pub expires_at: u64,
    pub attempts_left: u8,
}

/// What the facts of one `Verify` are.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    /// The answer is the device's answer to the challenge.
    pub right: bool,
    /// The challenge (code, push) is forgotten: it expired more than
    /// `EXPIRED_GRACE` ago, or (codes and pushes on the embedded store)
    /// the sweeper ran after it expired.
    pub forgotten: bool,
    /// The device's validity has ended.
    pub device_expired: bool,
    /// The challenge is its device's latest (an earlier one is refused).
    pub current: bool,
    pub now: u64,
}

/// Who a right answer is accepted for.
#[derive(Debug, Clone)]
pub struct Holder<'a> {
    pub user: &'a Username,
    pub device: DeviceId,
    pub kind: DeviceKind,
}

/// One wrong answer (or a challenge that expired unanswered) on a device
/// at `now`; the length of the lockout it starts (`Duration::MAX`: until an
/// operator unlocks it).
pub fn fail(rules: &LockoutConfig, failures: &mut Failures, now: u64) -> Option<Duration> {
    failures.quiet_periods(rules, now);
    failures.last_failure = now;
    failures.since_success += 1;
    failures.consecutive += 1;
    if failures.since_success >= rules.hard_limit {
        failures.needs_operator = true;
        failures.lockouts += 1;
        failures.consecutive = 0;
        return Some(Duration::MAX);
    }
    if failures.consecutive >= rules.failures {
        let length = rules
            .first
            .saturating_mul(1 << failures.lockouts.min(20))
            .min(rules.max);
        failures.lockouts += 1;
        failures.consecutive = 0;
        failures.locked_until = now + u64::try_from(length.as_millis()).unwrap_or(u64::MAX / 2);
        return Some(length);
    }
    None
}

/// What a device is asked, as the rules against challenge shopping say
/// (DESIGN.md, "Bound guessing"): it keeps an unanswered question until it
/// is answered right or the device locks, and only its latest challenge
/// may be answered; a challenge that expired without any answer counts as
/// a wrong answer when the device is next asked; a question answered right
/// is not asked again while it is among the last `remembered`; at most
/// `per_day` challenges a UTC day.
#[derive(Debug, Clone, Default)]
pub struct Questions {
    pending: Option<PendingQuestion>,
    answered: VecDeque<ChallengeText>,
    day: u64,
    today: u32,
}

#[derive(Debug, Clone)]
struct PendingQuestion {
    text: ChallengeText,
    /// The caller's handle of the one challenge that may answer it.
    challenge: u64,
    expires_at: u64,
    tried: bool,
}

/// What asking a device must give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asking {
    /// Refused: the device's challenges for today are used up.
    DailyCap,
    /// Issued: with this question if it is `Some` (the pending one), and
    /// the lockout that charging an expired unanswered challenge started.
    Issued {
        same: Option<ChallengeText>,
        locked: Option<Duration>,
    },
}

impl Questions {
    /// Asks the device at `now` (charging `failures` as the rules say).
    pub fn ask(
        &mut self,
        rules: &ChallengeConfig,
        lockout: &LockoutConfig,
        failures: &mut Failures,
        now: u64,
    ) -> Asking {
        let day = now / DAY_MILLIS;
        if self.day == day && self.today >= rules.per_device_per_day {
            return Asking::DailyCap;
        }
        if self.day != day {
            self.day = day;
            self.today = 0;
        }
        self.today += 1;
        let mut locked = None;
        if let Some(pending) = &self.pending
            && pending.expires_at <= now
            && !pending.tried
            && !failures.is_locked(now)
        {
            locked = fail(lockout, failures, now);
            if locked.is_some() {
                self.pending = None;
            }
        }
        Asking::Issued {
            same: self.pending.as_ref().map(|p| p.text.clone()),
            locked,
        }
    }

    /// The engine asked `text` as challenge `handle`, open until
    /// `expires_at`; false if that question was answered right lately.
    pub fn issued(&mut self, handle: u64, text: ChallengeText, expires_at: u64) -> bool {
        let fresh = !self.answered.contains(&text);
        self.pending = Some(PendingQuestion {
            text,
            challenge: handle,
            expires_at,
            tried: false,
        });
        fresh
    }

    /// Whether `handle` is the device's latest challenge.
    pub fn is_current(&self, handle: u64) -> bool {
        self.pending.as_ref().is_some_and(|p| p.challenge == handle)
    }

    /// The current challenge `handle` got `verdict`; `locked` says whether
    /// that answer started a lockout.
    pub fn answered(&mut self, handle: u64, verdict: &Verdict, locked: bool, remembered: usize) {
        if !self.is_current(handle) {
            return;
        }
        match verdict {
            Verdict::Accepted { .. } => {
                if let Some(pending) = self.pending.take() {
                    self.answered.push_back(pending.text);
                }
                while self.answered.len() > remembered {
                    self.answered.pop_front();
                }
            }
            _ if locked => self.pending = None,
            Verdict::Rejected { .. } => {
                if let Some(pending) = self.pending.as_mut() {
                    pending.tried = true;
                }
            }
            _ => {}
        }
    }
}

const DAY_MILLIS: u64 = 86_400_000;

/// The verdict the rules require, whether the challenge stays open, and
/// the length of a lockout this attempt starts. Updates `failures` and
/// `challenge` as the attempt must.
pub fn verify(
    rules: &LockoutConfig,
    failures: &mut Failures,
    challenge: &mut Challenge,
    attempt: Attempt,
    holder: &Holder<'_>,
) -> (Verdict, bool, Option<Duration>) {
    let now = attempt.now;
    if attempt.forgotten || !attempt.current {
        return (Verdict::UnknownChallenge, false, None);
    }
    if challenge.expires_at <= now || attempt.device_expired {
        return (Verdict::Expired, false, None);
    }
    if failures.is_locked(now) {
        let retry_after = failures.locked_for(now);
        return (Verdict::LockedOut { retry_after }, true, None);
    }
    if attempt.right {
        *failures = Failures::default();
        let verdict = Verdict::Accepted {
            user: holder.user.clone(),
            device: holder.device,
            kind: holder.kind,
        };
        return (verdict, false, None);
    }
    challenge.attempts_left = challenge.attempts_left.saturating_sub(1);
    if let Some(length) = fail(rules, failures, now) {
        let verdict = Verdict::LockedOut {
            retry_after: length,
        };
        return (verdict, false, Some(length));
    }
    let left = challenge.attempts_left;
    (
        Verdict::Rejected {
            attempts_left: left,
        },
        left > 0,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_double_to_the_cap_and_clear_on_success() {
        let rules = LockoutConfig {
            failures: 2,
            first: Duration::from_secs(10),
            max: Duration::from_secs(25),
            decay_after: Duration::from_secs(3600),
            hard_limit: 100,
        };
        let user = Username::new("u").unwrap();
        let holder = Holder {
            user: &user,
            device: DeviceId(1),
            kind: DeviceKind::Scc,
        };
        let mut f = Failures::default();
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            let mut c = Challenge {
                expires_at: now + 1_000,
                attempts_left: 3,
            };
            let wrong = Attempt {
                right: false,
                forgotten: false,
                device_expired: false,
                current: true,
                now,
            };
            let (v, stays, _) = verify(&rules, &mut f, &mut c, wrong, &holder);
            assert_eq!(v, Verdict::Rejected { attempts_left: 2 });
            assert!(stays);
            let (_, _, locked) = verify(&rules, &mut f, &mut c, wrong, &holder);
            lengths.push(locked.unwrap().as_secs());
            now = f.locked_until;
        }
        assert_eq!(lengths, [10, 20, 25, 25, 25, 25]);
        let mut c = Challenge {
            expires_at: now + 1_000,
            attempts_left: 3,
        };
        let right = Attempt {
            right: true,
            forgotten: false,
            device_expired: false,
            current: true,
            now,
        };
        let (v, _, _) = verify(&rules, &mut f, &mut c, right, &holder);
        assert!(matches!(v, Verdict::Accepted { .. }));
        assert_eq!(f, Failures::default());
    }
}
