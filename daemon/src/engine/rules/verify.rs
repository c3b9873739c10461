//! Judging an answer to a challenge: expiry, lockout, the constant-time
//! check, attempts, and what follows (the verdict, the challenge kept or
//! removed, the failure state and question memory changed) — [`decide`],
//! which both stores run on the records they hold.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::otp::MacOutput;
use crate::otp::ocra::OcraInput;
use crate::store::questions::QuestionMemory;
use crate::store::{
    Device, DeviceLife, Disposition, FailureState, OpenChallenge, Question, Verifier, forgotten,
};
use crate::wire::Verdict;
use crate::wire::request::Answer;

/// What a verify decided: the verdict, what becomes of the challenge, and
/// whether the device's failure state changed (the store keeps it
/// durably before the reply).
#[derive(Debug)]
pub struct Decided {
    pub verdict: Verdict,
    pub challenge: Disposition,
    pub failures_changed: bool,
    /// This answer locked the device (a lockout to count).
    pub locked: bool,
}

/// The verdict on an answer to a challenge whose device is gone (revoked
/// since it was asked): the challenge goes.
pub fn revoked(open: &OpenChallenge, now: Timestamp) -> Decided {
    let verdict = if forgotten(open.expires_at, now) {
        Verdict::UnknownChallenge
    } else if open.expires_at <= now {
        Verdict::Expired
    } else {
        Verdict::UnknownChallenge
    };
    Decided {
        verdict,
        challenge: Disposition::Remove,
        failures_changed: false,
        locked: false,
    }
}

/// A PIN on trial (`ChangePin`, `ResetPin`): an answer to a challenge of
/// `device` is judged under `hash` in place of the device's PIN.
pub struct PinTrial {
    pub device: DeviceId,
    pub hash: MacOutput,
}

/// The PIN hash an answer with `device` is judged under, when not the one
/// it was enrolled with: the one on trial, else one chosen since (its
/// `life`). A trial of another device's PIN: `Err` (the challenge is not
/// the one the trial is for).
pub fn pin_for<'a>(
    trial: Option<&'a PinTrial>,
    device: DeviceId,
    life: &'a DeviceLife,
) -> Result<Option<&'a MacOutput>, ()> {
    match trial {
        Some(trial) if trial.device != device => Err(()),
        Some(trial) => Ok(Some(&trial.hash)),
        None => Ok(life.pin.as_ref().map(|p| &p.hash)),
    }
}

/// Decides an answer to challenge `id` (`open`) of `device`, on its
/// failure state and question memory as the store holds them now, and
/// changes all three as the decision requires: only the device's latest
/// challenge may be answered; an expired one or a locked device changes
/// nothing but the challenge's fate; a right answer clears the failures
/// and remembers the question; a wrong one spends an attempt and counts a
/// failure (which may lock the device). `pin`: see [`pin_for`].
#[allow(clippy::too_many_arguments)]
pub fn decide(
    id: ChallengeId,
    open: &mut OpenChallenge,
    (device, pin): (&Device, Option<&MacOutput>),
    failures: &mut FailureState,
    questions: &mut QuestionMemory,
    answer: &Answer,
    now: Timestamp,
    config: &Config,
) -> Decided {
    let decided = |verdict, challenge, failures_changed, locked| Decided {
        verdict,
        challenge,
        failures_changed,
        locked,
    };
    if !questions.is_current(id) || forgotten(open.expires_at, now) {
        // The device was asked again since: only its latest challenge may
        // be answered. Or it expired longer ago than stores remember.
        return decided(Verdict::UnknownChallenge, Disposition::Remove, false, false);
    }
    match judge(open, (device, pin), failures, answer, now, config) {
        Judgement::Expired => decided(Verdict::Expired, Disposition::Remove, false, false),
        Judgement::LockedOut(retry_after) => decided(
            Verdict::LockedOut { retry_after },
            Disposition::Keep,
            false,
            false,
        ),
        Judgement::Right { moving } => {
            questions.answered_right(id, config.challenges.question_limits());
            // A right answer clears the failures; a token's moving factor
            // goes past the code it used.
            let after = FailureState {
                moving: moving.unwrap_or(failures.moving),
                ..FailureState::default()
            };
            let changed = *failures != after;
            *failures = after;
            decided(accepted(open, device), Disposition::Remove, changed, false)
        }
        Judgement::Wrong => {
            open.attempts_left = open.attempts_left.saturating_sub(1);
            let locked = super::lockout::next_failure(&config.lockout, failures, now);
            questions.answered_wrong(id, locked.is_some());
            let verdict = wrong_answer(locked, open.attempts_left);
            let challenge = disposition_after(&verdict);
            decided(verdict, challenge, true, locked.is_some())
        }
    }
}

/// What a verify finds about an open challenge before anything changes.
pub enum Judgement {
    Expired,
    LockedOut(Duration),
    /// With a token's moving factor after the code it used.
    Right {
        moving: Option<u64>,
    },
    Wrong,
}

/// Looks at an answer to an open challenge of `device` (under `pin`, see
/// [`pin_for`]) whose failure state is `failures`; changes nothing.
pub fn judge(
    open: &OpenChallenge,
    (device, pin): (&Device, Option<&MacOutput>),
    failures: &FailureState,
    answer: &Answer,
    now: Timestamp,
    config: &Config,
) -> Judgement {
    if open.expires_at <= now || device.expired_at(now) {
        return Judgement::Expired;
    }
    if let Some(retry_after) = super::lockout::locked(failures, now) {
        return Judgement::LockedOut(retry_after);
    }
    let question = match &open.question {
        Question::Ocra(text) => text.as_str(),
        _ => "",
    };
    let given = answer.as_bytes();
    match super::token::matched(
        (device, pin),
        question,
        given,
        failures.moving,
        now,
        &config.tokens,
    ) {
        Some(Some(next)) => Judgement::Right { moving: Some(next) },
        Some(None) if answer_is_right((device, pin), &open.question, answer, now) => {
            Judgement::Right { moving: None }
        }
        _ => Judgement::Wrong,
    }
}

pub fn accepted(open: &OpenChallenge, device: &Device) -> Verdict {
    accepted_by(&open.user, device)
}

pub fn accepted_by(user: &Username, device: &Device) -> Verdict {
    Verdict::Accepted {
        user: user.clone(),
        device: device.id,
        kind: device.kind,
    }
}

/// The verdict on a wrong answer: the lockout it caused, or the attempts
/// the challenge has left.
pub fn wrong_answer(locked: Option<Duration>, attempts_left: u8) -> Verdict {
    match locked {
        Some(retry_after) => Verdict::LockedOut { retry_after },
        None => Verdict::Rejected { attempts_left },
    }
}

/// Whether a challenge stays open after a wrong answer.
pub fn disposition_after(verdict: &Verdict) -> Disposition {
    match verdict {
        Verdict::Rejected { attempts_left } if *attempts_left > 0 => Disposition::Keep,
        _ => Disposition::Remove,
    }
}

/// Checks an answer against the device, in constant time.
pub fn answer_is_right(
    (device, pin): (&Device, Option<&MacOutput>),
    question: &Question,
    answer: &Answer,
    now: Timestamp,
) -> bool {
    match (&device.verifier, question) {
        (Verifier::Ocra { ocra, pin_hash }, Question::Ocra(text)) => {
            let input = OcraInput {
                question: text,
                pin_hash: super::token::pin_of(pin_hash.as_ref(), pin),
                timestamp: ocra
                    .suite()
                    .time_step()
                    .map(|step| step.steps_at(now.0 / 1000)),
                ..OcraInput::default()
            };
            ocra.verify(&input, answer.as_bytes()).unwrap_or(false)
        }
        (Verifier::Card(card), Question::Card(pick)) => {
            card.verify(*pick, answer.as_bytes()).unwrap_or(false)
        }
        (Verifier::Code(code), Question::Code) => {
            crate::otp::codes_match(code.expose_secret(), answer.as_bytes()).into()
        }
        // A question of the other kind cannot be answered by this device
        // (nor can an SMS device answer a challenge: it has none).
        _ => false,
    }
}
