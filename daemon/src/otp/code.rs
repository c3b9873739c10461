//! A computed one-time code, and the constant-time check of an answer.

use std::fmt;

use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use super::wiped::WipedBytes;

/// The longest code: an untruncated HMAC-SHA512 written in hex.
pub const MAX_CODE_LEN: usize = 128;

/// A one-time code as the device shows it: ASCII, at most [`MAX_CODE_LEN`]
/// characters, held on the stack and zeroized on drop (`WipedBytes`).
///
/// `Display` writes the code (the emulator prints it); `Debug` does not,
/// since an expected response is a secret until it has been used.
#[derive(Clone)]
pub struct Code(WipedBytes<MAX_CODE_LEN>);

impl Code {
    pub(crate) fn empty() -> Self {
        Self(WipedBytes::new())
    }

    /// `value` written as exactly `digits` decimal digits, zero-padded on
    /// the left (the HOTP rendering). `digits` is clamped to 20, enough for
    /// any `u64`; past [`MAX_CODE_LEN`] nothing is appended.
    pub(crate) fn decimal(value: u64, digits: usize) -> Self {
        let mut code = Self::empty();
        code.push_decimal(value, digits);
        code
    }

    /// `bytes` in lowercase hex (OCRA with truncation 0).
    pub(crate) fn hex(bytes: &[u8]) -> Self {
        fn nibble(value: u8) -> u8 {
            match value {
                0..=9 => b'0' + value,
                _ => b'a' + (value - 10),
            }
        }
        let mut code = Self::empty();
        for byte in bytes {
            code.push(nibble(byte >> 4));
            code.push(nibble(byte & 0x0f));
        }
        code
    }

    /// Appends `value` as `digits` decimal digits.
    pub(crate) fn push_decimal(&mut self, value: u64, digits: usize) {
        self.0
            .push_with(digits.min(DECIMAL_MAX), |slot| write_decimal(value, slot));
    }

    /// Appends another code (a card response is two codes in a row).
    pub(crate) fn push_code(&mut self, other: &Code) {
        for &byte in other.as_bytes() {
            self.push(byte);
        }
    }

    /// Appends one ASCII byte; silently stops at [`MAX_CODE_LEN`], which
    /// every producer in this module stays within by construction.
    pub(crate) fn push(&mut self, byte: u8) {
        self.0.push(byte);
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        // Every producer pushes ASCII only.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// Whether `given` is this code, in constant time (see [`codes_match`]).
    pub fn matches(&self, given: &[u8]) -> bool {
        codes_match(self.as_bytes(), given).into()
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code")
            .field("len", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// The most decimal digits one answer holds (a `u64` has at most 20).
const DECIMAL_MAX: usize = 20;

/// Fills `out` with the last `out.len()` decimal digits of `value`,
/// zero-padded on the left.
fn write_decimal(value: u64, out: &mut [u8]) {
    let mut rest = value;
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// Whether `given` is the decimal answer made of `parts` — each a value and
/// its digit count, written one after another — in constant time.
///
/// The verification path uses this instead of building a [`Code`]: the
/// expected answer stays in a small stack buffer (wiped afterwards) rather
/// than a 136-byte value moved through several calls.
pub(crate) fn decimal_answer_matches(parts: &[(u64, u8)], given: &[u8]) -> Choice {
    let mut expected = Zeroizing::new([0u8; DECIMAL_MAX]);
    let mut len = 0;
    for &(value, digits) in parts {
        let end = len + usize::from(digits);
        if let Some(slot) = expected.get_mut(len..end) {
            write_decimal(value, slot);
            len = end;
        }
    }
    codes_match(expected.get(..len).unwrap_or(&[]), given)
}

/// Compares an expected code with a given answer in constant time.
///
/// The work depends only on `expected.len()`, which the device's suite
/// already fixes and makes public; it never stops early at the first
/// differing byte, nor at a length mismatch. A `given` of another length is
/// compared byte-for-byte against the expected length (missing bytes read as
/// 0) and then rejected through the length check folded into the result.
pub fn codes_match(expected: &[u8], given: &[u8]) -> Choice {
    let same_len = (expected.len() as u64).ct_eq(&(given.len() as u64));
    let mut equal = Choice::from(1);
    for (index, want) in expected.iter().enumerate() {
        // `given`'s length is the caller's own, public input; indexing by it
        // leaks nothing about `expected`.
        let got = given.get(index).copied().unwrap_or(0);
        equal &= want.ct_eq(&got);
    }
    same_len & equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_codes_are_zero_padded() {
        assert_eq!(Code::decimal(1_984_843, 8).as_str(), "01984843");
        assert_eq!(Code::decimal(7, 3).as_str(), "007");
        assert_eq!(Code::decimal(123_456, 3).as_str(), "456");
    }

    #[test]
    fn codes_match_only_the_exact_answer() {
        let expected = b"12345678";
        assert!(bool::from(codes_match(expected, b"12345678")));
        assert!(!bool::from(codes_match(expected, b"12345679")));
        assert!(!bool::from(codes_match(expected, b"02345678")));
        // Prefixes, extensions and empty answers are all refused.
        assert!(!bool::from(codes_match(expected, b"1234567")));
        assert!(!bool::from(codes_match(expected, b"123456780")));
        assert!(!bool::from(codes_match(expected, b"12345678\0")));
        assert!(!bool::from(codes_match(expected, b"")));
        assert!(!bool::from(codes_match(b"", b"1")));
        assert!(bool::from(codes_match(b"", b"")));
    }

    #[test]
    fn debug_hides_the_code() {
        let code = Code::decimal(65_347_737, 8);
        assert_eq!(format!("{code:?}"), "Code { len: 8, .. }");
        assert_eq!(code.to_string(), "65347737");
    }
}
