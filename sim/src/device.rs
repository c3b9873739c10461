//! A fleet's devices as the user holds them: given what the login page
//! shows, produce what the card or app shows.
//!
//! Built from the daemon's own `otp` code and the same device profiles the
//! daemon checks with, so an emulated device answers exactly as a real one
//! would — or, for an attacker, exactly as a real one would with the wrong
//! PIN.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use slsd::otp::card::CodeCard;
use slsd::otp::hotp::{Digits, hotp};
use slsd::otp::ocra::{Ocra, OcraInput};
use slsd::otp::token::TokenAlgorithm;
use slsd::otp::totp::TimeStep;
use slsd::otp::{Code, HmacKey, SecretKey};
use slsd::profile::{Check, DeviceKind, DeviceProfiles};
use slsd::wire::ChallengeText;
use zeroize::Zeroizing;

/// Why a device could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{0} devices are not challenge/response devices the simulator can hold")]
    NotEmulated(DeviceKind),
    #[error("{kind}: the key does not fit the device: {reason}")]
    Key { kind: DeviceKind, reason: String },
    #[error("{kind} device got a challenge it cannot take: {shown}")]
    Challenge { kind: DeviceKind, shown: String },
    #[error("{0} device needs a PIN and the fleet has none for it")]
    MissingPin(DeviceKind),
    #[error("{0} device showed this time step's code already (no step is accepted twice)")]
    StepUsed(DeviceKind),
}

/// One emulated card or app.
#[derive(Clone)]
pub struct EmulatedDevice {
    kind: DeviceKind,
    check: Emulation,
}

#[derive(Clone)]
enum Emulation {
    /// An OCRA token; the PIN, when its suite binds one, is typed each time.
    Ocra {
        ocra: Ocra,
        pin: Option<Arc<Zeroizing<String>>>,
    },
    Card(CodeCard),
    /// A token or app whose code moves with an event counter or the clock.
    Moving(Moving),
}

#[derive(Clone)]
struct Moving {
    code: MovingCode,
    pin: Option<Arc<Zeroizing<String>>>,
    /// Event tokens: the counter value of the next press. Time tokens and
    /// apps: the first time step whose code was not shown yet (the daemon
    /// takes no step twice, so a holder who used this step's code waits
    /// for the next). Shared by the clones of one device and with its
    /// fleet entry, which saves it.
    next: Arc<AtomicU64>,
}

#[derive(Clone)]
enum MovingCode {
    Hotp {
        key: HmacKey,
        digits: Digits,
    },
    Totp {
        key: HmacKey,
        digits: Digits,
        step: TimeStep,
        origin: u64,
    },
    /// An OCRA suite with `C` or `T`.
    Ocra(Ocra),
}

impl MovingCode {
    fn counts_events(&self) -> bool {
        match self {
            Self::Hotp { .. } => true,
            Self::Totp { .. } => false,
            Self::Ocra(ocra) => ocra.suite().uses_counter(),
        }
    }

    /// The time step at `unix_secs` (time tokens).
    fn step_at(&self, unix_secs: u64) -> u64 {
        match self {
            Self::Totp { step, origin, .. } => step.count(unix_secs, *origin),
            Self::Ocra(ocra) => ocra
                .suite()
                .time_step()
                .map_or(0, |step| step.steps_at(unix_secs)),
            Self::Hotp { .. } => 0,
        }
    }

    fn digits(&self) -> u8 {
        match self {
            Self::Hotp { digits, .. } | Self::Totp { digits, .. } => digits.get(),
            Self::Ocra(ocra) => ocra.suite().digits(),
        }
    }
}

impl std::fmt::Debug for EmulatedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys and PINs stay out of debug output.
        f.debug_struct("EmulatedDevice")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl EmulatedDevice {
    /// A device of `kind` with `secret` (and `pin` if its suite binds one),
    /// checked the way `profiles` says.
    pub fn new(
        kind: DeviceKind,
        secret: &SecretKey,
        pin: Option<&str>,
        profiles: &DeviceProfiles,
    ) -> Result<Self, DeviceError> {
        let check = match &profiles.get(kind).check {
            Check::Ocra { suite, .. } => {
                if suite.pin().is_some() && pin.is_none() {
                    return Err(DeviceError::MissingPin(kind));
                }
                Emulation::Ocra {
                    ocra: Ocra::new(Arc::clone(suite), secret),
                    pin: pin.map(|p| Arc::new(Zeroizing::new(p.to_owned()))),
                }
            }
            Check::CodeCard { positions } => {
                Emulation::Card(CodeCard::new(secret, *positions).map_err(|e| {
                    DeviceError::Key {
                        kind,
                        reason: e.to_string(),
                    }
                })?)
            }
            Check::Totp {
                hash, digits, step, ..
            } => Emulation::Moving(Moving {
                code: MovingCode::Totp {
                    key: HmacKey::new(*hash, secret),
                    digits: *digits,
                    step: *step,
                    origin: 0,
                },
                pin: None,
                next: Arc::default(),
            }),
            // Tokens come with their own algorithm: `EmulatedDevice::token`.
            Check::RandomCode(_) | Check::Token { .. } => {
                return Err(DeviceError::NotEmulated(kind));
            }
        };
        Ok(Self { kind, check })
    }

    /// An imported token (kind `token`) with its own algorithm, `secret`
    /// and the PIN its suite binds, if it does.
    pub fn token(
        algorithm: &TokenAlgorithm,
        secret: &SecretKey,
        pin: Option<&str>,
    ) -> Result<Self, DeviceError> {
        let kind = DeviceKind::Token;
        let pin = pin.map(|p| Arc::new(Zeroizing::new(p.to_owned())));
        let code = match algorithm {
            TokenAlgorithm::Ocra { suite } => {
                if suite.pin().is_some() && pin.is_none() {
                    return Err(DeviceError::MissingPin(kind));
                }
                let ocra = Ocra::new(Arc::clone(suite), secret);
                if !algorithm.counts_events() && !algorithm.counts_time() {
                    let check = Emulation::Ocra { ocra, pin };
                    return Ok(Self { kind, check });
                }
                MovingCode::Ocra(ocra)
            }
            TokenAlgorithm::Hotp { hash, digits } => MovingCode::Hotp {
                key: HmacKey::new(*hash, secret),
                digits: *digits,
            },
            TokenAlgorithm::Totp {
                hash,
                digits,
                step,
                origin,
            } => MovingCode::Totp {
                key: HmacKey::new(*hash, secret),
                digits: *digits,
                step: *step,
                origin: *origin,
            },
        };
        let check = Emulation::Moving(Moving {
            code,
            pin,
            next: Arc::default(),
        });
        Ok(Self { kind, check })
    }

    /// The device with its moving factor kept in `next` (the fleet's
    /// record of it); devices without one are unchanged.
    pub fn sharing(mut self, next: &Arc<AtomicU64>) -> Self {
        if let Emulation::Moving(moving) = &mut self.check {
            moving.next = Arc::clone(next);
        }
        self
    }

    /// A time token's or app's step in seconds; `None` for other devices.
    pub fn step_secs(&self) -> Option<u64> {
        match &self.check {
            Emulation::Moving(Moving {
                code: MovingCode::Totp { step, .. },
                ..
            }) => Some(step.as_duration().as_secs()),
            Emulation::Moving(Moving {
                code: MovingCode::Ocra(ocra),
                ..
            }) => ocra
                .suite()
                .time_step()
                .map(|step| step.as_duration().as_secs()),
            _ => None,
        }
    }

    /// Whether its code moves with a counter or the clock.
    pub fn moves(&self) -> bool {
        matches!(self.check, Emulation::Moving(_))
    }

    /// Whether it can show a code now: a time token or app that showed
    /// this time step's code waits for the next step.
    pub fn ready(&self, unix_secs: u64) -> bool {
        match &self.check {
            Emulation::Moving(moving) if !moving.code.counts_events() => {
                moving.code.step_at(unix_secs) >= moving.next.load(Ordering::Acquire)
            }
            _ => true,
        }
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Whether the user types a PIN into this device.
    pub fn takes_pin(&self) -> bool {
        self.pin().is_some()
    }

    fn pin(&self) -> Option<&str> {
        match &self.check {
            Emulation::Ocra { pin, .. } | Emulation::Moving(Moving { pin, .. }) => {
                pin.as_deref().map(|p| p.as_str())
            }
            Emulation::Card(_) => None,
        }
    }

    /// What the device shows for `shown`, with the holder's own PIN; a
    /// token's counter moves on (the button is pressed).
    pub fn answer(&self, shown: &ChallengeText, unix_secs: u64) -> Result<Code, DeviceError> {
        self.answer_moving(shown, unix_secs).map(|(code, _)| code)
    }

    /// [`Self::answer`], and the counter value or time step the code is
    /// for when the device has one.
    pub fn answer_moving(
        &self,
        shown: &ChallengeText,
        unix_secs: u64,
    ) -> Result<(Code, Option<u64>), DeviceError> {
        let Emulation::Moving(moving) = &self.check else {
            return Ok((self.answer_with_pin(shown, self.pin(), unix_secs)?, None));
        };
        let factor = if moving.code.counts_events() {
            moving.next.fetch_add(1, Ordering::AcqRel)
        } else {
            let step = moving.code.step_at(unix_secs);
            moving
                .next
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |next| {
                    (step >= next).then_some(step + 1)
                })
                .map_err(|_| DeviceError::StepUsed(self.kind))?;
            step
        };
        let code = self.code_at(moving, shown, self.pin(), factor)?;
        Ok((code, Some(factor)))
    }

    /// What the device would show now, and its counter value or time
    /// step, without moving on: the caller tells [`Self::used`] once the
    /// code was accepted. The attackers' targets answer this way: pressed
    /// for every challenge the attackers keep replacing, a real token
    /// would leave its window within seconds and need a resync.
    pub fn answer_unmoved(
        &self,
        shown: &ChallengeText,
        unix_secs: u64,
    ) -> Result<(Code, Option<u64>), DeviceError> {
        let Emulation::Moving(moving) = &self.check else {
            return Ok((self.answer_with_pin(shown, self.pin(), unix_secs)?, None));
        };
        let factor = if moving.code.counts_events() {
            moving.next.load(Ordering::Acquire)
        } else if self.ready(unix_secs) {
            moving.code.step_at(unix_secs)
        } else {
            return Err(DeviceError::StepUsed(self.kind));
        };
        let code = self.code_at(moving, shown, self.pin(), factor)?;
        Ok((code, Some(factor)))
    }

    /// The code of `factor` was accepted: the device moves past it.
    pub fn used(&self, factor: u64) {
        if let Emulation::Moving(moving) = &self.check {
            moving.next.fetch_max(factor + 1, Ordering::AcqRel);
        }
    }

    /// What a copy of the device (its key and the holder's PIN) shows for
    /// `shown` at counter value or time step `factor`: an attacker's
    /// replay of a used one. `None` for a device without a moving factor.
    pub fn answer_at(
        &self,
        shown: &ChallengeText,
        factor: u64,
    ) -> Option<Result<Code, DeviceError>> {
        let Emulation::Moving(moving) = &self.check else {
            return None;
        };
        Some(self.code_at(moving, shown, self.pin(), factor))
    }

    fn code_at(
        &self,
        moving: &Moving,
        shown: &ChallengeText,
        pin: Option<&str>,
        factor: u64,
    ) -> Result<Code, DeviceError> {
        let refused = || DeviceError::Challenge {
            kind: self.kind,
            shown: format!("{shown:?}"),
        };
        match (&moving.code, shown) {
            // RFC 6238: a TOTP code is the HOTP code of the time step.
            (
                MovingCode::Hotp { key, digits } | MovingCode::Totp { key, digits, .. },
                ChallengeText::EnterCode,
            ) => Ok(hotp(key, factor, *digits)),
            (MovingCode::Ocra(ocra), ChallengeText::Question(question)) => {
                let suite = ocra.suite();
                let pin_hash = match (suite.pin(), pin) {
                    (Some(_), Some(pin)) => suite.hash_pin(pin),
                    (Some(_), None) => return Err(DeviceError::MissingPin(self.kind)),
                    (None, _) => None,
                };
                let counts = moving.code.counts_events();
                let input = OcraInput {
                    question,
                    pin_hash: pin_hash.as_ref().map(|h| h.as_bytes()),
                    counter: counts.then_some(factor),
                    timestamp: (!counts).then_some(factor),
                    ..OcraInput::default()
                };
                ocra.respond(&input).map_err(|_| refused())
            }
            _ => Err(refused()),
        }
    }

    /// What the device shows when `pin` is typed into it instead of the
    /// holder's (an attacker holding a stolen card).
    pub fn answer_with_pin(
        &self,
        shown: &ChallengeText,
        pin: Option<&str>,
        unix_secs: u64,
    ) -> Result<Code, DeviceError> {
        let refused = || DeviceError::Challenge {
            kind: self.kind,
            shown: format!("{shown:?}"),
        };
        match (&self.check, shown) {
            (Emulation::Ocra { ocra, .. }, ChallengeText::Question(question)) => {
                let suite = ocra.suite();
                let pin_hash = match (suite.pin(), pin) {
                    (Some(_), Some(pin)) => suite.hash_pin(pin),
                    (Some(_), None) => return Err(DeviceError::MissingPin(self.kind)),
                    (None, _) => None,
                };
                let input = OcraInput {
                    question,
                    pin_hash: pin_hash.as_ref().map(|h| h.as_bytes()),
                    timestamp: suite.time_step().map(|step| step.steps_at(unix_secs)),
                    ..OcraInput::default()
                };
                ocra.respond(&input).map_err(|_| refused())
            }
            (Emulation::Card(card), ChallengeText::CardPositions(first, second)) => {
                card.codes_at(&[*first, *second]).map_err(|_| refused())
            }
            // The PIN typed with the next press (or this step), the card's
            // counter left where it was.
            (Emulation::Moving(moving), shown) => {
                let factor = if moving.code.counts_events() {
                    moving.next.load(Ordering::Acquire)
                } else {
                    moving.code.step_at(unix_secs)
                };
                self.code_at(moving, shown, pin, factor)
            }
            _ => Err(refused()),
        }
    }

    /// What the device shows when the wrong PIN (a random one, never the
    /// holder's) is typed into it; `None` if it takes no PIN.
    pub fn answer_with_wrong_pin<R: rand::Rng + ?Sized>(
        &self,
        shown: &ChallengeText,
        rng: &mut R,
        unix_secs: u64,
    ) -> Option<Result<Code, DeviceError>> {
        use rand::RngExt;
        let pin = self.pin().filter(|pin| !pin.is_empty())?;
        let wrong = loop {
            let guess: String = (0..pin.len())
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            if guess != pin {
                break Zeroizing::new(guess);
            }
        };
        Some(self.answer_with_pin(shown, Some(&wrong), unix_secs))
    }

    /// The length and alphabet size of an answer: what a guesser must hit.
    pub fn answer_space(&self) -> AnswerSpace {
        match &self.check {
            Emulation::Ocra { ocra, .. } => {
                let suite = ocra.suite();
                match suite.digits() {
                    // Untruncated: the HMAC in hex.
                    0 => AnswerSpace {
                        symbols: 16,
                        length: suite.response_len(),
                        accepted: 1,
                    },
                    digits => AnswerSpace {
                        symbols: 10,
                        length: usize::from(digits),
                        accepted: 1,
                    },
                }
            }
            // Two three-digit codes.
            Emulation::Card(_) => AnswerSpace {
                symbols: 10,
                length: 6,
                accepted: 1,
            },
            Emulation::Moving(moving) => {
                // The daemon's default windows (tokens.look-ahead,
                // tokens.drift-steps): that many codes are right at once.
                let windows = slsd::config::Config::default().tokens;
                let accepted = if moving.code.counts_events() {
                    windows.look_ahead + 1
                } else {
                    2 * windows.drift_steps + 1
                };
                AnswerSpace {
                    symbols: 10,
                    length: usize::from(moving.code.digits()),
                    accepted: u32::try_from(accepted).unwrap_or(u32::MAX),
                }
            }
        }
    }
}

/// The answers a device can show: `symbols ^ length` equally likely ones,
/// of which `accepted` are right at a time (a token's window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSpace {
    pub symbols: u32,
    pub length: usize,
    pub accepted: u32,
}

impl AnswerSpace {
    /// The chance that one blind guess is right.
    pub fn guess_odds(self) -> f64 {
        let one = f64::from(self.symbols).powi(-(self.length.min(300) as i32));
        (one * f64::from(self.accepted)).min(1.0)
    }

    /// A uniformly random answer of the right shape.
    pub fn random_guess<R: rand::Rng + ?Sized>(self, rng: &mut R) -> String {
        use rand::RngExt;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        (0..self.length)
            .map(|_| char::from(HEX[rng.random_range(0..self.symbols.min(16) as usize)]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles() -> DeviceProfiles {
        DeviceProfiles::defaults().unwrap()
    }

    fn key() -> SecretKey {
        SecretKey::from_bytes(vec![7; 32]).unwrap()
    }

    #[test]
    fn a_dsc_plus_answer_depends_on_the_pin() {
        let card =
            EmulatedDevice::new(DeviceKind::DscPlus, &key(), Some("1234"), &profiles()).unwrap();
        let shown = ChallengeText::Question("123456".into());
        let right = card.answer(&shown, 0).unwrap();
        let wrong = card.answer_with_pin(&shown, Some("1235"), 0).unwrap();
        assert_eq!(right.as_str().len(), 8);
        assert_ne!(right.as_str(), wrong.as_str());
        assert!(card.takes_pin());
    }

    #[test]
    fn a_device_refuses_the_other_kind_of_challenge() {
        let scc = EmulatedDevice::new(DeviceKind::Scc, &key(), None, &profiles()).unwrap();
        let error = scc
            .answer(&ChallengeText::Question("123456".into()), 0)
            .unwrap_err();
        assert!(matches!(error, DeviceError::Challenge { .. }));
        assert_eq!(
            scc.answer(&ChallengeText::CardPositions(3, 9), 0)
                .unwrap()
                .as_str()
                .len(),
            6
        );
    }

    #[test]
    fn an_event_token_moves_on_with_each_press() {
        let hotp: TokenAlgorithm = "HOTP-SHA1-6".parse().unwrap();
        // RFC 4226's key and its first codes.
        let key = SecretKey::from_bytes(b"12345678901234567890".to_vec()).unwrap();
        let token = EmulatedDevice::token(&hotp, &key, None).unwrap();
        let shown = ChallengeText::EnterCode;
        let first = token.answer_moving(&shown, 0).unwrap();
        let second = token.answer_moving(&shown, 0).unwrap();
        assert_eq!((first.0.as_str(), first.1), ("755224", Some(0)));
        assert_eq!((second.0.as_str(), second.1), ("287082", Some(1)));
        // A copy replays a used counter without moving the token.
        let replayed = token.answer_at(&shown, 0).unwrap().unwrap();
        assert_eq!(replayed.as_str(), "755224");
        assert_eq!(token.answer(&shown, 0).unwrap().as_str(), "359152");
        // The counter lives where the fleet keeps it.
        let kept = Arc::new(AtomicU64::new(1));
        let shared = token.clone().sharing(&kept);
        assert_eq!(shared.answer(&shown, 0).unwrap().as_str(), "287082");
        assert_eq!(kept.load(Ordering::Acquire), 2);
        assert!(token.moves() && token.ready(0));
        // Unmoved until told the code was used.
        let (code, at) = shared.answer_unmoved(&shown, 0).unwrap();
        assert_eq!((code.as_str(), at), ("359152", Some(2)));
        assert_eq!(shared.answer_unmoved(&shown, 0).unwrap().1, Some(2));
        shared.used(2);
        assert_eq!(kept.load(Ordering::Acquire), 3);
    }

    #[test]
    fn a_time_token_shows_each_step_once() {
        let app = EmulatedDevice::new(DeviceKind::TotpApp, &key(), None, &profiles()).unwrap();
        let shown = ChallengeText::EnterCode;
        let at = 1_800_000_015;
        let (code, step) = app.answer_moving(&shown, at).unwrap();
        assert_eq!(step, Some(at / 30));
        let hmac = HmacKey::new(slsd::otp::HashAlgorithm::Sha1, &key());
        let expected = slsd::otp::totp::totp(
            &hmac,
            at,
            TimeStep::new(std::time::Duration::from_secs(30)).unwrap(),
            Digits::new(6).unwrap(),
        );
        assert_eq!(code.as_str(), expected.as_str());
        assert!(!app.ready(at + 10));
        assert!(matches!(
            app.answer(&shown, at + 10),
            Err(DeviceError::StepUsed(DeviceKind::TotpApp))
        ));
        assert!(app.ready(at + 15));
        assert_eq!(
            app.answer_moving(&shown, at + 15).unwrap().1,
            Some(at / 30 + 1)
        );
        // Six digits, three steps accepted at a time.
        assert!((app.answer_space().guess_odds() - 3e-6).abs() < 1e-12);
    }

    #[test]
    fn a_counter_ocra_card_answers_the_question_at_its_counter() {
        let suite: TokenAlgorithm = "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1".parse().unwrap();
        let card = EmulatedDevice::token(&suite, &key(), Some("1234")).unwrap();
        let shown = ChallengeText::Question("12345678".into());
        let (code, counter) = card.answer_moving(&shown, 0).unwrap();
        assert_eq!(counter, Some(0));
        assert_eq!(
            card.answer_at(&shown, 0).unwrap().unwrap().as_str(),
            code.as_str()
        );
        assert_ne!(card.answer(&shown, 0).unwrap().as_str(), code.as_str());
        assert!(card.takes_pin());
        let wrong = card.answer_with_pin(&shown, Some("9999"), 0).unwrap();
        assert_ne!(
            wrong.as_str(),
            card.answer_at(&shown, 2).unwrap().unwrap().as_str()
        );
        assert!(matches!(
            EmulatedDevice::token(&suite, &key(), None),
            Err(DeviceError::MissingPin(DeviceKind::Token))
        ));
    }

    #[test]
    fn random_code_kinds_are_not_held_by_the_simulator() {
        let error = EmulatedDevice::new(DeviceKind::Sms, &key(), None, &profiles()).unwrap_err();
        assert!(matches!(error, DeviceError::NotEmulated(DeviceKind::Sms)));
    }

    #[test]
    fn guess_odds_follow_the_answer_shape() {
        let ib_key = EmulatedDevice::new(DeviceKind::IbKey, &key(), None, &profiles()).unwrap();
        assert_eq!(ib_key.answer_space().guess_odds(), 1e-8);
        let scc = EmulatedDevice::new(DeviceKind::Scc, &key(), None, &profiles()).unwrap();
        assert!((scc.answer_space().guess_odds() - 1e-6).abs() < 1e-18);
        let mut rng = rand_chacha::ChaCha8Rng::from_seed([1; 32]);
        let guess = scc.answer_space().random_guess(&mut rng);
        assert_eq!(guess.len(), 6);
        assert!(guess.bytes().all(|b| b.is_ascii_digit()));
    }

    use rand::SeedableRng;
}
