//! A fleet's devices as the user holds them: given what the login page
//! shows, produce what the card or app shows.
//!
//! Built from the daemon's own `otp` code and the same device profiles the
//! daemon checks with, so an emulated device answers exactly as a real one
//! would — or, for an attacker, exactly as a real one would with the wrong
//! PIN.

use std::sync::Arc;

use slsd::otp::card::CodeCard;
use slsd::otp::ocra::{Ocra, OcraInput};
use slsd::otp::{Code, SecretKey};
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
            // Tokens come with their own algorithm (import and assign);
            // authenticator apps are not part of the fleets yet.
            Check::RandomCode(_) | Check::Token { .. } | Check::Totp { .. } => {
                return Err(DeviceError::NotEmulated(kind));
            }
        };
        Ok(Self { kind, check })
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Whether the user types a PIN into this device.
    pub fn takes_pin(&self) -> bool {
        matches!(&self.check, Emulation::Ocra { pin: Some(_), .. })
    }

    /// What the device shows for `shown`, with the holder's own PIN.
    pub fn answer(&self, shown: &ChallengeText, unix_secs: u64) -> Result<Code, DeviceError> {
        let pin = match &self.check {
            Emulation::Ocra { pin, .. } => pin.as_deref().map(|p| p.as_str()),
            Emulation::Card(_) => None,
        };
        self.answer_with_pin(shown, pin, unix_secs)
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
        let Emulation::Ocra { pin: Some(pin), .. } = &self.check else {
            return None;
        };
        if pin.is_empty() {
            return None;
        }
        let wrong = loop {
            let guess: String = (0..pin.len())
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            if guess != pin.as_str() {
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
                    },
                    digits => AnswerSpace {
                        symbols: 10,
                        length: usize::from(digits),
                    },
                }
            }
            // Two three-digit codes.
            Emulation::Card(_) => AnswerSpace {
                symbols: 10,
                length: 6,
            },
        }
    }
}

/// The answers a device can show: `symbols ^ length` equally likely ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerSpace {
    pub symbols: u32,
    pub length: usize,
}

impl AnswerSpace {
    /// The chance that one blind guess is right.
    pub fn guess_odds(self) -> f64 {
        f64::from(self.symbols).powi(-(self.length.min(300) as i32))
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
