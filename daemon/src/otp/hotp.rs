//! HOTP (RFC 4226): an HMAC of a counter, truncated to a few decimal digits.

use std::fmt;

use super::{Code, HmacKey};

/// How many decimal digits a truncated code has: 1 to 10 (a 31-bit value
/// has at most 10 digits, so more would only add leading zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digits(u8);

/// A digit count outside 1..=10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} digits is outside 1..=10")]
pub struct DigitsError(pub u32);

impl Digits {
    pub const MAX: u8 = 10;

    pub fn new(digits: u32) -> Result<Self, DigitsError> {
        match u8::try_from(digits) {
            Ok(d @ 1..=Self::MAX) => Ok(Self(d)),
            _ => Err(DigitsError(digits)),
        }
    }

    /// For constants: a digit count checked when the constant is evaluated.
    pub const fn exactly(digits: u8) -> Self {
        assert!(digits >= 1 && digits <= Self::MAX, "digits outside 1..=10");
        Self(digits)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Digits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Dynamic truncation (RFC 4226 §5.3): the 31-bit number at the offset named
/// by the low nibble of the last byte. Every HMAC output here is at least 20
/// bytes, so offset + 4 <= 19 is always in range; a shorter input gives 0.
pub fn dynamic_truncation(mac: &[u8]) -> u32 {
    let offset = mac.last().map_or(0, |last| usize::from(last & 0x0f));
    match mac.get(offset..offset + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a & 0x7f, b, c, d]),
        _ => 0,
    }
}

/// The value of the code for `message`: its HMAC truncated, modulo 10^digits.
pub(crate) fn truncated_value(key: &HmacKey, message: &[&[u8]], digits: Digits) -> u64 {
    let mac = key.mac(message);
    u64::from(dynamic_truncation(mac.as_bytes())) % 10u64.pow(u32::from(digits.0))
}

/// The code for `message`: truncate its HMAC and keep `digits` digits.
pub(crate) fn truncated_code(key: &HmacKey, message: &[&[u8]], digits: Digits) -> Code {
    Code::decimal(truncated_value(key, message, digits), usize::from(digits.0))
}

/// HOTP value for `counter` (RFC 4226 §5.3), with any HMAC hash.
pub fn hotp(key: &HmacKey, counter: u64, digits: Digits) -> Code {
    truncated_code(key, &[&counter.to_be_bytes()], digits)
}
