//! Emulated tokens: what a physical card or a phone app would show.
//!
//! Each emulator is built from the same `slsd::otp` code the daemon verifies
//! with, so the simulator plays a device exactly. `sls-sim token ...` is the
//! command-line face of this module (see `main.rs`).

use std::sync::Arc;

use slsd::otp::card::{self, CardError, CodeCard};
use slsd::otp::hotp::{Digits, DigitsError, hotp};
use slsd::otp::ocra::{InputError, Ocra, OcraInput, QuestionFormat, Suite, SuiteError};
use slsd::otp::totp::{TimeStep, TimeStepError, totp};
use slsd::otp::{Code, HashAlgorithm, HmacKey, KeyError, SecretKey};
use slsd::profile::{Check, DeviceKind, DeviceProfiles, ProfileError};

/// Why a token could not produce a code; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--key: {0}")]
    Key(#[from] KeyError),
    #[error("--suite: {0}")]
    Suite(#[from] SuiteError),
    #[error("{error}{hint}", hint = input_hint(.error))]
    Input { error: InputError },
    #[error("--pin-hash: not hexadecimal")]
    PinHashHex,
    #[error("--session: not hexadecimal")]
    SessionHex,
    #[error("--pin: the suite binds no PIN (it has no P element)")]
    PinWithoutP,
    #[error("--digits: {0}")]
    Digits(#[from] DigitsError),
    #[error("--step: {0}")]
    Step(#[from] TimeStepError),
    #[error("--index: {0}")]
    Card(#[from] CardError),
    #[error("--positions: {0}")]
    Positions(CardError),
    #[error("--index: give at least one position")]
    NoIndex,
    #[error("--challenge: a DSC+ challenge is exactly {0} digits")]
    DscChallenge(usize),
    #[error("--pin: a DSC+ PIN is exactly {0} digits")]
    DscPin(u8),
    #[error("device profiles: {0}")]
    Profile(#[from] ProfileError),
    #[error("device profiles: dsc-plus is not an OCRA device with a PIN")]
    DscProfile,
}

impl From<InputError> for TokenError {
    fn from(error: InputError) -> Self {
        Self::Input { error }
    }
}

/// Which flag supplies the missing or refused input.
fn input_hint(error: &InputError) -> &'static str {
    use InputError as E;
    match error {
        E::MissingCounter => " (pass --counter N)",
        E::UnexpectedCounter => " (drop --counter)",
        E::EmptyQuestion | E::QuestionCharacter { .. } | E::QuestionTooLong => " (--challenge)",
        E::MissingPin => " (pass --pin PIN or --pin-hash HEX)",
        E::UnexpectedPin => " (drop --pin-hash)",
        E::PinHashLength { .. } => " (--pin-hash)",
        E::MissingSession => " (pass --session HEX)",
        E::UnexpectedSession => " (drop --session)",
        E::SessionTooLong { .. } => " (--session)",
        E::MissingTimestamp => " (pass --time-step N)",
        E::UnexpectedTimestamp => " (drop --time-step)",
    }
}

/// How the PIN reaches an OCRA token.
#[derive(Debug, Clone, Copy)]
pub enum PinEntry<'a> {
    /// Typed PIN; hashed with the suite's P hash.
    Pin(&'a str),
    /// The PIN's hash in hex, as a verifier stores it.
    Hash(&'a str),
}

/// Inputs of `sls-sim token ocra`, as given on the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct OcraRequest<'a> {
    pub suite: &'a str,
    pub key: &'a str,
    pub counter: Option<u64>,
    pub challenge: Option<&'a str>,
    pub pin: Option<PinEntry<'a>>,
    pub session: Option<&'a str>,
    pub time_step: Option<u64>,
}

/// The response of a generic OCRA token.
pub fn ocra(request: &OcraRequest<'_>) -> Result<Code, TokenError> {
    let suite: Suite = request.suite.parse()?;
    let key = SecretKey::from_hex(request.key)?;
    let pin_hash = match request.pin {
        None => None,
        Some(PinEntry::Hash(text)) => Some(hex::decode(text).map_err(|_| TokenError::PinHashHex)?),
        Some(PinEntry::Pin(pin)) => {
            let hash = suite.hash_pin(pin).ok_or(TokenError::PinWithoutP)?;
            Some(hash.as_bytes().to_vec())
        }
    };
    let session = request
        .session
        .map(hex::decode)
        .transpose()
        .map_err(|_| TokenError::SessionHex)?;
    let input = OcraInput {
        counter: request.counter,
        question: request.challenge.unwrap_or(""),
        pin_hash: pin_hash.as_deref(),
        session: session.as_deref(),
        timestamp: request.time_step,
    };
    Ok(Ocra::new(suite, &key).respond(&input)?)
}

/// A Digital Security Card+: PIN typed into the card, then the challenge.
#[derive(Debug, Clone)]
pub struct DscPlus {
    ocra: Ocra,
    pin_digits: u8,
}

impl DscPlus {
    /// A card with `key`, checked the way `profiles` says DSC+ is checked.
    pub fn new(key: &SecretKey, profiles: &DeviceProfiles) -> Result<Self, TokenError> {
        match &profiles.get(DeviceKind::DscPlus).check {
            Check::Ocra {
                suite,
                pin_digits: Some(pin_digits),
            } if suite.question_format() == QuestionFormat::Numeric => Ok(Self {
                ocra: Ocra::new(Arc::clone(suite), key),
                pin_digits: *pin_digits,
            }),
            _ => Err(TokenError::DscProfile),
        }
    }

    /// What the card shows after `pin` and `challenge` are typed into it.
    pub fn respond(&self, pin: &str, challenge: &str) -> Result<Code, TokenError> {
        let suite = self.ocra.suite();
        if pin.len() != usize::from(self.pin_digits) || !pin.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::DscPin(self.pin_digits));
        }
        let challenge_len = usize::from(suite.question_len());
        if challenge.len() != challenge_len || !challenge.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::DscChallenge(challenge_len));
        }
        let pin_hash = suite.hash_pin(pin).ok_or(TokenError::DscProfile)?;
        let input = OcraInput {
            question: challenge,
            pin_hash: Some(pin_hash.as_bytes()),
            ..OcraInput::default()
        };
        Ok(self.ocra.respond(&input)?)
    }
}

/// The HOTP code of a counter-based token.
pub fn hotp_code(
    key: &str,
    counter: u64,
    digits: u32,
    algorithm: HashAlgorithm,
) -> Result<Code, TokenError> {
    let key = HmacKey::new(algorithm, &SecretKey::from_hex(key)?);
    Ok(hotp(&key, counter, Digits::new(digits)?))
}

/// The TOTP code of a time-based token at `unix_time`.
pub fn totp_code(
    key: &str,
    unix_time: u64,
    step_seconds: u64,
    digits: u32,
    algorithm: HashAlgorithm,
) -> Result<Code, TokenError> {
    let key = HmacKey::new(algorithm, &SecretKey::from_hex(key)?);
    let step = TimeStep::new(std::time::Duration::from_secs(step_seconds))?;
    Ok(totp(&key, unix_time, step, Digits::new(digits)?))
}

/// The codes printed on a security code card at `indices`, in order.
pub fn card_codes(key: &str, indices: &[u16], positions: u16) -> Result<Code, TokenError> {
    if indices.is_empty() {
        return Err(TokenError::NoIndex);
    }
    let card =
        CodeCard::new(&SecretKey::from_hex(key)?, positions).map_err(TokenError::Positions)?;
    Ok(card.codes_at(indices)?)
}

/// Positions on a card when `--positions` is not given.
pub const DEFAULT_CARD_POSITIONS: u16 = card::DEFAULT_POSITIONS;
