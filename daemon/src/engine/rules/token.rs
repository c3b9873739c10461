//! Whether an answer is a token's code, and where the token's moving
//! factor goes: event tokens (HOTP, OCRA with `C`) within a look-ahead of
//! their counter, time tokens (TOTP, OCRA with `T`) within a drift of the
//! current step, never below the moving factor (what was used stays used:
//! RFC 4226 §7.2, RFC 6238 §5.2), and resynchronisation by two
//! consecutive codes within a larger window.

use std::ops::RangeInclusive;

use crate::clock::Timestamp;
use crate::config::TokensConfig;
use crate::otp::MacOutput;
use crate::otp::hotp::hotp;
use crate::otp::ocra::{Ocra, OcraInput};
use crate::store::{Device, PinHash, Verifier};

/// What moves a token's codes, and the value it is at now.
enum Moving {
    /// A counter; `from` is the first one not used.
    Events { from: u64 },
    /// Time steps; `now` is the current step, `from` the first one unused.
    Time { now: u64, from: u64 },
}

/// The counters or steps an answer may come from, widened by `reach`.
fn window(moving: &Moving, reach: u64) -> RangeInclusive<u64> {
    match *moving {
        Moving::Events { from } => from..=from.saturating_add(reach),
        Moving::Time { now, from } => {
            now.saturating_sub(reach).max(from)..=now.saturating_add(reach)
        }
    }
}

/// How `device` moves, given its moving factor `moving` (as stored; an
/// imported token starts at its file's counter); `None` for devices whose
/// codes do not move.
fn moving_of(device: &Device, moving: u64, now: Timestamp) -> Option<Moving> {
    let start = device.token.as_ref().map_or(0, |t| t.counter);
    let events = Moving::Events {
        from: moving.max(start),
    };
    let seconds = now.0 / 1000;
    match &device.verifier {
        Verifier::Hotp { .. } => Some(events),
        Verifier::Totp { step, origin, .. } => Some(Moving::Time {
            now: step.count(seconds, *origin),
            from: moving,
        }),
        Verifier::Ocra { ocra, .. } if ocra.suite().uses_counter() => Some(events),
        Verifier::Ocra { ocra, .. } => ocra.suite().time_step().map(|step| Moving::Time {
            now: step.steps_at(seconds),
            from: moving,
        }),
        _ => None,
    }
}

/// Whether `device`'s codes move with a counter or the clock.
pub fn moves(device: &Device) -> bool {
    moving_of(device, 0, Timestamp(0)).is_some()
}

/// The PIN hash an OCRA answer takes: none when the suite binds no PIN
/// (`own` is `None`), else `changed` when the PIN changed or is on trial,
/// else the one the device was enrolled with.
pub fn pin_of<'a>(own: Option<&'a PinHash>, changed: Option<&'a MacOutput>) -> Option<&'a [u8]> {
    own.map(|own| changed.map_or(own.as_bytes(), MacOutput::as_bytes))
}

/// Whether `given` is the code of `device` (under `pin`, see
/// `verify::pin_for`) at counter or step `at` (for OCRA, to `question`).
/// Constant time in the answer.
fn code_at(
    (device, pin): (&Device, Option<&MacOutput>),
    at: u64,
    question: &str,
    given: &[u8],
) -> bool {
    match &device.verifier {
        Verifier::Hotp { key, digits } => hotp(key, at, *digits).matches(given),
        Verifier::Totp { key, digits, .. } => hotp(key, at, *digits).matches(given),
        Verifier::Ocra { ocra, pin_hash } => {
            ocra_at(ocra, pin_of(pin_hash.as_ref(), pin), at, question, given)
        }
        _ => false,
    }
}

fn ocra_at(ocra: &Ocra, pin_hash: Option<&[u8]>, at: u64, question: &str, given: &[u8]) -> bool {
    let suite = ocra.suite();
    let input = OcraInput {
        counter: suite.uses_counter().then_some(at),
        question,
        pin_hash,
        timestamp: (!suite.uses_counter() && suite.time_step().is_some()).then_some(at),
        ..OcraInput::default()
    };
    ocra.verify(&input, given).unwrap_or(false)
}

/// The first of `candidates` where `is_code` holds. Every candidate is
/// tried, so how long it takes does not tell which one matched.
fn first(candidates: RangeInclusive<u64>, is_code: impl Fn(u64) -> bool) -> Option<u64> {
    let mut found = None;
    for at in candidates {
        if is_code(at) && found.is_none() {
            found = Some(at);
        }
    }
    found
}

/// A moving token's answer: `Some(Some(next))` when it is the code at a
/// counter or step the windows allow (`next` is the moving factor after
/// it), `Some(None)` when the device's codes do not move (the caller
/// checks those), `None` when it is not a right code.
pub fn matched(
    (device, pin): (&Device, Option<&MacOutput>),
    question: &str,
    given: &[u8],
    moving: u64,
    now: Timestamp,
    config: &TokensConfig,
) -> Option<Option<u64>> {
    let Some(how) = moving_of(device, moving, now) else {
        return Some(None);
    };
    let reach = match how {
        Moving::Events { .. } => config.look_ahead,
        Moving::Time { .. } => config.drift_steps,
    };
    let at = first(window(&how, reach), |at| {
        code_at((device, pin), at, question, given)
    })?;
    Some(Some(at.saturating_add(1)))
}

/// A resynchronisation: the moving factor after two consecutive codes
/// (`first` at some counter or step, `second` at the next) found within
/// `tokens.resync-window` of where the token is, never below its moving
/// factor (a used code cannot bring the token back). `None` when no such
/// pair is found, or the device's codes do not move.
pub fn resync(
    (device, pin): (&Device, Option<&MacOutput>),
    question: &str,
    first_code: &[u8],
    second_code: &[u8],
    moving: u64,
    now: Timestamp,
    config: &TokensConfig,
) -> Option<u64> {
    let how = moving_of(device, moving, now)?;
    let candidates = window(&how, config.resync_window);
    let at = first(candidates, |at| {
        // Both checked, always: the time does not tell which failed.
        let one = code_at((device, pin), at, question, first_code);
        let two = code_at((device, pin), at.saturating_add(1), question, second_code);
        one & two
    })?;
    Some(at.saturating_add(2))
}
