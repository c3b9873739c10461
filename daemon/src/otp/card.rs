//! Security code cards: a grid of 3-digit codes derived from a card secret.
//!
//! The code at position `i` is HOTP-SHA256 of the card secret with counter
//! `i` (8-byte big-endian), truncated to 3 digits — HMAC-SHA256(secret, i)
//! with RFC 4226 dynamic truncation. Positions are numbered from 1, as
//! printed on the card. A login challenge names two distinct positions and
//! the answer is their codes one after the other (6 digits).

use std::fmt;

use rand::CryptoRng;
use rand::distr::{Distribution, Uniform};

use super::code::decimal_answer_matches;
use super::hotp::{Digits, hotp, truncated_value};
use super::{Code, HashAlgorithm, HmacKey, SecretKey};

/// Positions on a card when configuration does not say otherwise.
pub const DEFAULT_POSITIONS: u16 = 224;
/// The largest card: positions are shown as at most four digits.
pub const MAX_POSITIONS: u16 = 9999;
/// Digits of each code on a card.
pub const CODE_DIGITS: u8 = 3;

/// A card problem: a layout or a position that cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    #[error("a card needs 2..={MAX_POSITIONS} positions, not {0}")]
    Positions(u16),
    #[error("position {index} is not on the card (1..={positions})")]
    Position { index: u16, positions: u16 },
    #[error("a challenge needs two different positions, got {0} twice")]
    SamePosition(u16),
}

/// Two distinct positions of a card, as a login shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CardChallenge {
    first: u16,
    second: u16,
}

impl CardChallenge {
    pub fn first(self) -> u16 {
        self.first
    }

    pub fn second(self) -> u16 {
        self.second
    }

    /// Two positions read back from a stored challenge; `None` if they are
    /// the same. Whether they are on the card is checked when it verifies.
    pub fn from_stored(first: u16, second: u16) -> Option<Self> {
        (first != second).then_some(Self { first, second })
    }
}

impl fmt::Display for CardChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.first, self.second)
    }
}

/// A security code card: its secret and its number of positions.
#[derive(Debug, Clone)]
pub struct CodeCard {
    key: HmacKey,
    positions: u16,
    pick: Uniform<u16>,
}

impl CodeCard {
    pub fn new(secret: &SecretKey, positions: u16) -> Result<Self, CardError> {
        if !(2..=MAX_POSITIONS).contains(&positions) {
            return Err(CardError::Positions(positions));
        }
        let pick =
            Uniform::new_inclusive(1, positions).map_err(|_| CardError::Positions(positions))?;
        Ok(Self {
            key: HmacKey::new(HashAlgorithm::Sha256, secret),
            positions,
            pick,
        })
    }

    pub fn positions(&self) -> u16 {
        self.positions
    }

    /// The code printed at `index`.
    pub fn code_at(&self, index: u16) -> Result<Code, CardError> {
        self.check(index)?;
        Ok(hotp(&self.key, u64::from(index), CARD_DIGITS))
    }

    /// The codes at `indices`, one after the other (what the user types).
    pub fn codes_at(&self, indices: &[u16]) -> Result<Code, CardError> {
        let mut answer = Code::empty();
        for &index in indices {
            answer.push_code(&self.code_at(index)?);
        }
        Ok(answer)
    }

    /// A challenge of two distinct positions of this card.
    pub fn challenge(&self, first: u16, second: u16) -> Result<CardChallenge, CardError> {
        self.check(first)?;
        self.check(second)?;
        if first == second {
            return Err(CardError::SamePosition(first));
        }
        Ok(CardChallenge { first, second })
    }

    /// A uniformly random challenge of two distinct positions.
    pub fn random_challenge<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> CardChallenge {
        let first = self.pick.sample(rng);
        // Redraw on a repeat: uniform over ordered pairs of distinct positions.
        let mut second = self.pick.sample(rng);
        while second == first {
            second = self.pick.sample(rng);
        }
        CardChallenge { first, second }
    }

    /// The expected answer to `challenge`.
    pub fn response(&self, challenge: CardChallenge) -> Result<Code, CardError> {
        self.codes_at(&[challenge.first, challenge.second])
    }

    /// Whether `given` answers `challenge`, compared in constant time.
    pub fn verify(&self, challenge: CardChallenge, given: &[u8]) -> Result<bool, CardError> {
        self.check(challenge.first)?;
        self.check(challenge.second)?;
        let code = |index: u16| {
            truncated_value(&self.key, &[&u64::from(index).to_be_bytes()], CARD_DIGITS)
        };
        let parts = [
            (code(challenge.first), CODE_DIGITS),
            (code(challenge.second), CODE_DIGITS),
        ];
        Ok(decimal_answer_matches(&parts, given).into())
    }

    fn check(&self, index: u16) -> Result<(), CardError> {
        if (1..=self.positions).contains(&index) {
            Ok(())
        } else {
            Err(CardError::Position {
                index,
                positions: self.positions,
            })
        }
    }
}

const CARD_DIGITS: Digits = Digits::exactly(CODE_DIGITS);

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn card() -> CodeCard {
        let secret = SecretKey::from_hex("000102030405060708090a0b0c0d0e0f").unwrap();
        CodeCard::new(&secret, DEFAULT_POSITIONS).unwrap()
    }

    #[test]
    fn code_is_three_digits_of_hmac_sha256_of_the_index() {
        use hmac::{Hmac, KeyInit, Mac};
        let card = card();
        for index in [1u16, 2, 100, 224] {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(
                &hex::decode("000102030405060708090a0b0c0d0e0f").unwrap(),
            )
            .unwrap();
            mac.update(&u64::from(index).to_be_bytes());
            let digest = mac.finalize().into_bytes();
            let offset = usize::from(digest[31] & 0x0f);
            let value =
                u32::from_be_bytes(digest[offset..offset + 4].try_into().unwrap()) & 0x7fff_ffff;
            let expected = format!("{:03}", value % 1000);
            assert_eq!(
                card.code_at(index).unwrap().as_str(),
                expected,
                "index {index}"
            );
        }
    }

    #[test]
    fn response_is_the_two_codes_in_order() {
        let card = card();
        let challenge = card.challenge(17, 3).unwrap();
        let expected = format!("{}{}", card.code_at(17).unwrap(), card.code_at(3).unwrap());
        assert_eq!(card.response(challenge).unwrap().as_str(), expected);
        assert!(card.verify(challenge, expected.as_bytes()).unwrap());
        let swapped = format!("{}{}", card.code_at(3).unwrap(), card.code_at(17).unwrap());
        assert_eq!(
            swapped == expected,
            card.verify(challenge, swapped.as_bytes()).unwrap()
        );
    }

    #[test]
    fn positions_off_the_card_are_refused() {
        let card = card();
        assert_eq!(
            card.code_at(0).unwrap_err(),
            CardError::Position {
                index: 0,
                positions: 224
            }
        );
        assert_eq!(
            card.code_at(225).unwrap_err(),
            CardError::Position {
                index: 225,
                positions: 224
            }
        );
        assert_eq!(
            card.challenge(5, 5).unwrap_err(),
            CardError::SamePosition(5)
        );
        let secret = SecretKey::from_bytes(vec![1; 16]).unwrap();
        assert_eq!(
            CodeCard::new(&secret, 1).unwrap_err(),
            CardError::Positions(1)
        );
        assert_eq!(
            CodeCard::new(&secret, 10_000).unwrap_err(),
            CardError::Positions(10_000)
        );
    }

    #[test]
    fn random_challenges_are_distinct_and_cover_the_card() {
        let secret = SecretKey::from_bytes(vec![9; 16]).unwrap();
        let card = CodeCard::new(&secret, 5).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut seen = [[false; 6]; 6];
        for _ in 0..2000 {
            let c = card.random_challenge(&mut rng);
            assert_ne!(c.first(), c.second());
            assert!((1..=5).contains(&c.first()) && (1..=5).contains(&c.second()));
            seen[usize::from(c.first())][usize::from(c.second())] = true;
        }
        let pairs = seen.iter().flatten().filter(|s| **s).count();
        assert_eq!(
            pairs,
            5 * 4,
            "every ordered pair of distinct positions appears"
        );
    }
}
