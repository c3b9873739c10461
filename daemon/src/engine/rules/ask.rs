//! Asking a device a question: the daily cap, an expired unanswered
//! challenge charged as a wrong answer, the pending question kept or one
//! not answered lately drawn (`store::questions` has the rules in words).

use std::time::Duration;

use rand::CryptoRng;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::identity::{ChallengeId, Username};
use crate::otp::generate::Alphabet;
use crate::otp::ocra::QuestionFormat;
use crate::store::questions::{IssueRefused, QuestionMemory};
use crate::store::{Device, FailureState, OpenChallenge, Question, Verifier};
use crate::wire::{ChallengeText, ErrorCode, Reply};

/// A new challenge a device was asked: what is kept open, the challenge it
/// replaces, and whether an expired unanswered challenge was charged as a
/// failure on the way.
pub struct Asked {
    pub open: OpenChallenge,
    pub superseded: Option<ChallengeId>,
    pub charged: bool,
    /// That failure locked the device (the caller counts the lockout once
    /// the change is kept).
    pub locked: bool,
}

/// The refusal of a challenge past `challenges.per-device-per-day`.
pub fn daily_cap(refused: IssueRefused) -> Reply {
    let IssueRefused::DailyCap { retry_after_millis } = refused;
    Reply::rate_limited(
        Duration::from_millis(retry_after_millis),
        "too many challenges for this device today",
    )
}

/// How the login shows a question.
pub fn shown(question: &Question) -> ChallengeText {
    match question {
        Question::Ocra(text) => ChallengeText::Question(text.clone()),
        Question::Card(pick) => ChallengeText::CardPositions(pick.first(), pick.second()),
        Question::Code => ChallengeText::EnterCode,
    }
}

/// The alphabets questions are drawn from, by OCRA question format.
pub struct QuestionAlphabets {
    numeric: Alphabet,
    hex: Alphabet,
    /// Letters and digits a person reads without confusion (no I, O, 0, 1).
    alphanumeric: Alphabet,
}

impl QuestionAlphabets {
    pub fn new() -> Self {
        // Both literals pass `Alphabet::new`'s checks; digits stand in if not.
        let or_digits = |symbols| Alphabet::new(symbols).unwrap_or_else(|_| Alphabet::digits());
        Self {
            numeric: Alphabet::digits(),
            hex: or_digits("0123456789ABCDEF"),
            alphanumeric: or_digits("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"),
        }
    }
}

/// The rules of asking `user`'s (own or shared) device a new challenge
/// `id`, on either store (`store::questions` has them in words): the
/// daily cap; a pending
/// challenge that expired unanswered counts as a wrong answer (and
/// forgets its question if that locks the device); then the pending
/// question is kept, or one not answered lately is drawn. Changes
/// `failures` and `questions` as the decision requires; a refusal
/// changes nothing.
#[allow(clippy::too_many_arguments)]
pub fn ask_device<R: CryptoRng + ?Sized>(
    config: &Config,
    alphabets: &QuestionAlphabets,
    user: &Username,
    device: &Device,
    failures: &mut FailureState,
    questions: &mut QuestionMemory,
    id: ChallengeId,
    now: Timestamp,
    rng: &mut R,
) -> Result<Asked, Reply> {
    if let Verifier::Phone(_) = device.verifier {
        return Err(Reply::error(
            ErrorCode::InvalidArgument,
            "an SMS device is not challenged: use SendCode",
        ));
    }
    let limits = config.challenges.question_limits();
    if let Some(refused) = questions.cap_reached(now, limits) {
        return Err(daily_cap(refused));
    }
    // As a wrong answer given now would be: not counted while the
    // device is locked (asking during a lockout must not add failures
    // faster than answering could).
    let charged =
        questions.expired_unanswered(now) && super::lockout::locked(failures, now).is_none();
    let locked = charged && super::lockout::next_failure(&config.lockout, failures, now).is_some();
    if locked {
        questions.forget_pending();
    }
    let expires_at = now.plus(config.challenges.ttl);
    let draw = || question_for(alphabets, device, rng);
    // Not refused: the cap was checked on this same state.
    let issued = questions
        .issue(id, now, expires_at, limits, draw)
        .map_err(daily_cap)?;
    Ok(Asked {
        open: OpenChallenge {
            user: user.clone(),
            device: device.id,
            question: issued.question,
            expires_at,
            attempts_left: config.challenges.attempts,
        },
        superseded: issued.superseded,
        charged,
        locked,
    })
}

/// A new question for `device` (an SMS device is refused before).
pub fn question_for<R: CryptoRng + ?Sized>(
    alphabets: &QuestionAlphabets,
    device: &Device,
    rng: &mut R,
) -> Question {
    match &device.verifier {
        Verifier::Ocra { ocra, .. } => {
            let suite = ocra.suite();
            let alphabet = match suite.question_format() {
                QuestionFormat::Numeric => &alphabets.numeric,
                QuestionFormat::Hex => &alphabets.hex,
                QuestionFormat::Alphanumeric => &alphabets.alphanumeric,
            };
            let text = alphabet.generate(rng, usize::from(suite.question_len()));
            Question::Ocra(text.as_str().to_owned())
        }
        Verifier::Card(card) => Question::Card(card.random_challenge(rng)),
        // HOTP and TOTP tokens show their code unasked.
        Verifier::Code(_) | Verifier::Phone(_) | Verifier::Hotp { .. } | Verifier::Totp { .. } => {
            Question::Code
        }
    }
}
