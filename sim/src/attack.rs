//! The attacker fleet: it runs beside a load run against the fleet's
//! target users (every tenth) and must never win more than chance allows.
//!
//! Strategies, taken in turn by each attacker task:
//! - `guess`: a random answer of the right shape to a target's challenge;
//! - `wrong_pin`: a stolen DSC+ (the key is right) with a guessed PIN;
//! - `foreign_answer`: a target's challenge answered by another card;
//! - `foreign_device`: a challenge asked for a target with another user's
//!   device (must be refused outright);
//! - `replay`: a correct answer of a finished legitimate login, sent again
//!   (must never be accepted: no challenge is accepted twice);
//! - `used_factor`: a new challenge for a target's token or app answered
//!   with a copy of it at a counter value or time step the target already
//!   used (no code is accepted twice: only a chance collision within the
//!   token's window may win).
//!
//! Beside them the targets keep logging in with their own devices
//! (`victim logins`), which checks that a device the attackers locked stays
//! locked for the interval the daemon announced.

use std::time::Instant;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slsd::identity::DeviceId;
use slsd::wire::request::Answer;
use slsd::wire::{ChallengeText, ErrorCode, Operation, Reply, Verdict};

use crate::client::Pipeline;
use crate::device::EmulatedDevice;
use crate::load::{Shared, shown, unix_secs, verdict_name};

const STRATEGIES: [&str; 7] = [
    "guess",
    "wrong_pin",
    "foreign_answer",
    "foreign_device",
    "replay",
    "used_factor",
    "victim_login",
];

/// One attacker task: strategies in turn until the deadline.
pub(crate) async fn run(shared: &Shared, gateway: &Pipeline, part: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut turn = rng.random_range(0..STRATEGIES.len());
    while Instant::now() < shared.deadline && !shared.victims.is_empty() {
        let strategy = STRATEGIES[turn % STRATEGIES.len()];
        turn += 1;
        let attack = Attack {
            shared,
            gateway,
            part,
        };
        match strategy {
            "replay" => attack.replay(&mut rng).await,
            "used_factor" => attack.used_factor(&mut rng).await,
            "foreign_device" => attack.foreign_device(&mut rng).await,
            "victim_login" => attack.victim_login(&mut rng).await,
            strategy => attack.answer_challenge(strategy, &mut rng).await,
        }
    }
}

/// A target's device, by member and device index.
struct Target<'a> {
    user: &'a slsd::identity::Username,
    device: DeviceId,
    emulated: &'a EmulatedDevice,
    /// Where it is in the fleet: member, and device of the member.
    at: (usize, usize),
}

struct Attack<'a> {
    shared: &'a Shared,
    gateway: &'a Pipeline,
    part: usize,
}

impl<'a> Attack<'a> {
    fn target(&self, rng: &mut ChaCha8Rng) -> Option<Target<'a>> {
        let shared: &'a Shared = self.shared;
        let member = *shared
            .victims
            .get(rng.random_range(0..shared.victims.len().max(1)))?;
        let index = rng.random_range(0..shared.members.get(member)?.devices.len().max(1));
        self.target_at((member, index))
    }

    fn target_at(&self, (member, index): (usize, usize)) -> Option<Target<'a>> {
        let shared: &'a Shared = self.shared;
        let holder = shared.members.get(member)?;
        let (device, emulated) = holder.devices.get(index)?;
        Some(Target {
            user: &holder.user,
            device: *device,
            emulated,
            at: (member, index),
        })
    }

    fn tally(&self, strategy: &'static str, f: impl FnOnce(&mut crate::report::AttackTally)) {
        self.shared.record(self.part, |r| f(r.attack(strategy)));
    }

    /// Asks a challenge for `target`; `None` (counted as refused) if the
    /// daemon gave none.
    async fn challenge(
        &self,
        strategy: &'static str,
        target: &Target<'_>,
    ) -> Option<(slsd::identity::ChallengeId, ChallengeText)> {
        self.tally(strategy, |t| t.requests += 1);
        match self
            .gateway
            .call(Operation::Challenge {
                user: target.user.clone(),
                device: target.device,
            })
            .await
        {
            Ok(Reply::Challenge {
                challenge, text, ..
            }) => Some((challenge, text)),
            _ => {
                self.tally(strategy, |t| t.refused += 1);
                None
            }
        }
    }

    /// `guess`, `wrong_pin` and `foreign_answer`: a challenge for a
    /// target, answered by something other than the target's own device.
    async fn answer_challenge(&self, strategy: &str, rng: &mut ChaCha8Rng) {
        let strategy: &'static str = match strategy {
            "wrong_pin" => "wrong_pin",
            "foreign_answer" => "foreign_answer",
            _ => "guess",
        };
        let Some(target) = self.target(rng) else {
            return;
        };
        let other = self.target(rng);
        // Strategies that do not fit this device become a blind guess.
        let strategy = match strategy {
            "wrong_pin" if !target.emulated.takes_pin() => "guess",
            "foreign_answer" if other.as_ref().is_none_or(|o| o.device == target.device) => "guess",
            s => s,
        };
        let Some((challenge, text)) = self.challenge(strategy, &target).await else {
            return;
        };
        let space = target.emulated.answer_space();
        let guess: String = match strategy {
            "wrong_pin" => target
                .emulated
                .answer_with_wrong_pin(&text, rng, unix_secs())
                .and_then(Result::ok)
                .map(|code| code.as_str().to_owned()),
            "foreign_answer" => other
                .and_then(|o| o.emulated.answer(&text, unix_secs()).ok())
                .map(|code| code.as_str().to_owned()),
            _ => None,
        }
        .unwrap_or_else(|| space.random_guess(rng));
        self.verify_guess(strategy, &target, challenge, &guess)
            .await;
    }

    /// Sends an attacker's answer to `challenge` and tallies the verdict
    /// against the odds of a blind guess at `target`'s device.
    async fn verify_guess(
        &self,
        strategy: &'static str,
        target: &Target<'_>,
        challenge: slsd::identity::ChallengeId,
        guess: &str,
    ) {
        let sent = Instant::now();
        self.tally(strategy, |t| t.requests += 1);
        let result = self
            .gateway
            .call(Operation::Verify {
                challenge,
                response: Answer::new(guess),
            })
            .await;
        let got = Instant::now();
        let odds = target.emulated.answer_space().guess_odds();
        let checked = |t: &mut crate::report::AttackTally| {
            t.evaluated += 1;
            t.expected_accepts += odds;
        };
        match result {
            Ok(Reply::Verdict(Verdict::Accepted { .. })) => {
                self.tally(strategy, |t| {
                    checked(t);
                    t.accepts += 1;
                });
                self.shared
                    .check_not_locked(target.device, sent, got, strategy);
            }
            Ok(Reply::Verdict(Verdict::Rejected { .. })) => self.tally(strategy, checked),
            Ok(Reply::Verdict(Verdict::LockedOut { retry_after })) => {
                // The guess was checked (and locked the device) unless the
                // device was already known to be locked.
                if self.shared.locked_at(target.device, sent).is_none() {
                    self.tally(strategy, checked);
                } else {
                    self.tally(strategy, |t| t.refused += 1);
                }
                self.shared.saw_lock(target.device, sent, got, retry_after);
            }
            _ => self.tally(strategy, |t| t.refused += 1),
        }
    }

    /// A target's token or app copied, answering a new challenge at a
    /// counter value or time step the target already used.
    async fn used_factor(&self, rng: &mut ChaCha8Rng) {
        let used = {
            let pool = self
                .shared
                .used_factors
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pool.get(rng.random_range(0..pool.len().max(1))).copied()
        };
        let Some((member, index, factor)) = used else {
            return;
        };
        let Some(target) = self.target_at((member, index)) else {
            return;
        };
        let Some((challenge, text)) = self.challenge("used_factor", &target).await else {
            return;
        };
        let Some(Ok(code)) = target.emulated.answer_at(&text, factor) else {
            return;
        };
        self.verify_guess("used_factor", &target, challenge, code.as_str())
            .await;
    }

    /// A challenge for a target with another user's device must be refused.
    async fn foreign_device(&self, rng: &mut ChaCha8Rng) {
        let (Some(target), Some(other)) = (self.target(rng), self.target(rng)) else {
            return;
        };
        if other.user == target.user {
            return;
        }
        self.tally("foreign_device", |t| t.requests += 1);
        let result = self
            .gateway
            .call(Operation::Challenge {
                user: target.user.clone(),
                device: other.device,
            })
            .await;
        match result {
            Ok(Reply::Challenge { text, .. }) => {
                self.tally("foreign_device", |t| t.accepts += 1);
                self.shared.violation(format!(
                    "a challenge ({}) was issued for {} with {}'s device {}",
                    shown(&text),
                    target.user,
                    other.user,
                    other.device
                ));
            }
            Ok(Reply::Error {
                code: ErrorCode::NotFound | ErrorCode::RateLimited,
                ..
            }) => self.tally("foreign_device", |t| t.refused += 1),
            other => self.shared.violation(format!(
                "a challenge for another user's device got {other:?} instead of NotFound"
            )),
        }
    }

    /// A correct answer already accepted once must not be accepted again.
    async fn replay(&self, rng: &mut ChaCha8Rng) {
        let observed = {
            let pool = self
                .shared
                .observed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pool.get(rng.random_range(0..pool.len().max(1))).cloned()
        };
        let Some((challenge, answer)) = observed else {
            return;
        };
        self.tally("replay", |t| t.requests += 1);
        match self
            .gateway
            .call(Operation::Verify {
                challenge,
                response: answer,
            })
            .await
        {
            Ok(Reply::Verdict(Verdict::Accepted { user, .. })) => {
                self.tally("replay", |t| t.accepts += 1);
                self.shared.violation(format!(
                    "challenge {challenge} of {user} was accepted a second time"
                ));
            }
            _ => self.tally("replay", |t| t.refused += 1),
        }
    }

    /// A target logs in with their own device: accepted unless the
    /// attackers locked it, and never while a lockout they saw lasts.
    async fn victim_login(&self, rng: &mut ChaCha8Rng) {
        let Some(target) = self.target(rng) else {
            return;
        };
        let Ok(Reply::Challenge {
            challenge, text, ..
        }) = self
            .gateway
            .call(Operation::Challenge {
                user: target.user.clone(),
                device: target.device,
            })
            .await
        else {
            return;
        };
        let Ok((code, factor)) = target.emulated.answer_unmoved(&text, unix_secs()) else {
            return;
        };
        let sent = Instant::now();
        let result = self
            .gateway
            .call(Operation::Verify {
                challenge,
                response: Answer::new(code.as_str()),
            })
            .await;
        let got = Instant::now();
        let Ok(Reply::Verdict(verdict)) = result else {
            return;
        };
        self.shared
            .record(self.part, |r| r.victim_verdict(verdict_name(&verdict)));
        match verdict {
            Verdict::Accepted { .. } => {
                self.shared
                    .check_not_locked(target.device, sent, got, "a target's own login");
                if let Some(factor) = factor {
                    target.emulated.used(factor);
                    let mut used = self
                        .shared
                        .used_factors
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if used.len() == crate::load::OBSERVED {
                        used.pop_front();
                    }
                    used.push_back((target.at.0, target.at.1, factor));
                }
            }
            Verdict::LockedOut { retry_after } => {
                self.shared.saw_lock(target.device, sent, got, retry_after);
            }
            _ => {}
        }
    }
}
