//! The OCRA data input (RFC 6287 §5.1): what the HMAC is computed over.
//!
//! ```text
//! suite bytes | 0x00 | C (8 bytes) | Q (128 bytes) | P (hash length) | S (nnn bytes) | T (8 bytes)
//! ```
//!
//! C, P, S and T are present only when the suite names them. The question
//! is left-aligned in its 128 bytes and padded with zeros: QA as its bytes,
//! QH as the nibbles written, QN as the hex digits of its value (so
//! `12345678` = 0xBC614E becomes `BC 61 4E 00 …`). Session information is
//! right-aligned in its nnn bytes (zeros in front), as in the RFC's
//! reference code. Nothing here allocates: the parts are laid out on the
//! stack and fed to the HMAC one after another.

use super::suite::{QuestionFormat, Suite};
use crate::otp::MacOutput;

/// Bytes the question occupies in the data input.
pub const QUESTION_BYTES: usize = 128;

/// The variable inputs of one OCRA computation.
///
/// Every field the suite names must be present and every field it does not
/// name must be absent; the mismatch is a typed error, not a silent default.
#[derive(Debug, Clone, Copy, Default)]
pub struct OcraInput<'a> {
    /// `C`: the counter, for suites with `C`.
    pub counter: Option<u64>,
    /// `Q`: the question as typed (digits for QN, characters for QA, hex for QH).
    pub question: &'a str,
    /// `P`: the hash of the PIN, for suites with `P` (see [`Suite::hash_pin`]).
    pub pin_hash: Option<&'a [u8]>,
    /// `S`: session information, at most the suite's nnn bytes.
    pub session: Option<&'a [u8]>,
    /// `T`: the number of time steps since the UNIX epoch, for suites with `T`.
    pub timestamp: Option<u64>,
}

/// Why an input does not fit its suite.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("suite has a counter (C) but none was given")]
    MissingCounter,
    #[error("suite has no counter (C) but one was given")]
    UnexpectedCounter,
    #[error("question is empty")]
    EmptyQuestion,
    #[error("question has a character not allowed by {format:?} format at position {position}")]
    QuestionCharacter {
        format: QuestionFormat,
        position: usize,
    },
    #[error("question does not fit the {QUESTION_BYTES} bytes of the data input")]
    QuestionTooLong,
    #[error("suite binds a PIN (P) but no PIN hash was given")]
    MissingPin,
    #[error("suite binds no PIN (P) but a PIN hash was given")]
    UnexpectedPin,
    #[error("PIN hash is {got} bytes, the suite's hash gives {expected}")]
    PinHashLength { expected: usize, got: usize },
    #[error("suite has session information (S) but none was given")]
    MissingSession,
    #[error("suite has no session information (S) but some was given")]
    UnexpectedSession,
    #[error("session information is {got} bytes, the suite allows {max}")]
    SessionTooLong { max: usize, got: usize },
    #[error("suite has a timestamp (T) but none was given")]
    MissingTimestamp,
    #[error("suite has no timestamp (T) but one was given")]
    UnexpectedTimestamp,
}

impl Suite {
    /// Hashes a PIN as the suite's `P` element binds it; `None` if the suite
    /// binds no PIN.
    pub fn hash_pin(&self, pin: &str) -> Option<MacOutput> {
        self.pin().map(|hash| hash.hash(pin.as_bytes()))
    }
}

/// Zeros to left-pad session information (longest S is 999 bytes).
static ZEROS: [u8; 999] = [0; 999];

/// A data input laid out for hashing; borrows the caller's PIN hash and session.
pub(crate) struct DataInput<'a> {
    suite: &'a [u8],
    counter: Option<[u8; 8]>,
    question: [u8; QUESTION_BYTES],
    pin_hash: &'a [u8],
    session_padding: &'static [u8],
    session: &'a [u8],
    timestamp: Option<[u8; 8]>,
}

impl<'a> DataInput<'a> {
    pub(crate) fn new(suite: &'a Suite, input: &OcraInput<'a>) -> Result<Self, InputError> {
        let counter = match (suite.uses_counter(), input.counter) {
            (true, Some(c)) => Some(c.to_be_bytes()),
            (true, None) => return Err(InputError::MissingCounter),
            (false, Some(_)) => return Err(InputError::UnexpectedCounter),
            (false, None) => None,
        };
        let question = encode_question(suite.question_format(), input.question)?;
        let pin_hash = match (suite.pin(), input.pin_hash) {
            (Some(hash), Some(given)) if given.len() == hash.output_len() => given,
            (Some(hash), Some(given)) => {
                return Err(InputError::PinHashLength {
                    expected: hash.output_len(),
                    got: given.len(),
                });
            }
            (Some(_), None) => return Err(InputError::MissingPin),
            (None, Some(_)) => return Err(InputError::UnexpectedPin),
            (None, None) => &[],
        };
        let (session_padding, session) = match (suite.session_len(), input.session) {
            (Some(max), Some(given)) => {
                let max = usize::from(max);
                let padding = max
                    .checked_sub(given.len())
                    .and_then(|pad| ZEROS.get(..pad))
                    .ok_or(InputError::SessionTooLong {
                        max,
                        got: given.len(),
                    })?;
                (padding, given)
            }
            (Some(_), None) => return Err(InputError::MissingSession),
            (None, Some(_)) => return Err(InputError::UnexpectedSession),
            (None, None) => (&[][..], &[][..]),
        };
        let timestamp = match (suite.time_step(), input.timestamp) {
            (Some(_), Some(t)) => Some(t.to_be_bytes()),
            (Some(_), None) => return Err(InputError::MissingTimestamp),
            (None, Some(_)) => return Err(InputError::UnexpectedTimestamp),
            (None, None) => None,
        };
        Ok(Self {
            suite: suite.as_str().as_bytes(),
            counter,
            question,
            pin_hash,
            session_padding,
            session,
            timestamp,
        })
    }

    /// The data input as consecutive slices, absent parts empty.
    pub(crate) fn parts(&self) -> [&[u8]; 8] {
        [
            self.suite,
            &[0],
            self.counter.as_ref().map_or(&[], |c| c.as_slice()),
            &self.question,
            self.pin_hash,
            self.session_padding,
            self.session,
            self.timestamp.as_ref().map_or(&[], |t| t.as_slice()),
        ]
    }
}

/// The question laid out in its 128 bytes.
fn encode_question(
    format: QuestionFormat,
    question: &str,
) -> Result<[u8; QUESTION_BYTES], InputError> {
    if question.is_empty() {
        return Err(InputError::EmptyQuestion);
    }
    let mut out = [0u8; QUESTION_BYTES];
    let bad_char = |position| InputError::QuestionCharacter { format, position };
    match format {
        QuestionFormat::Alphanumeric => {
            // Printable ASCII: what a person can type from the login screen.
            if let Some(position) = question.bytes().position(|b| !b.is_ascii_graphic()) {
                return Err(bad_char(position));
            }
            let bytes = question.as_bytes();
            out.get_mut(..bytes.len())
                .ok_or(InputError::QuestionTooLong)?
                .copy_from_slice(bytes);
        }
        QuestionFormat::Hex => {
            let mut nibbles = NibbleWriter::new(&mut out);
            for (position, byte) in question.bytes().enumerate() {
                let nibble = hex_value(byte).ok_or_else(|| bad_char(position))?;
                nibbles.push(nibble)?;
            }
        }
        QuestionFormat::Numeric => {
            if let Some(position) = question.bytes().position(|b| !b.is_ascii_digit()) {
                return Err(bad_char(position));
            }
            encode_decimal(question.as_bytes(), &mut out)?;
        }
    }
    Ok(out)
}

/// Writes the value of a decimal string as hex nibbles from the left, with
/// no leading zero nibbles (the RFC's `BigInteger(q).toString(16)`).
fn encode_decimal(digits: &[u8], out: &mut [u8; QUESTION_BYTES]) -> Result<(), InputError> {
    // Fast path for the common short challenge: 19 digits always fit a u64.
    if digits.len() <= 19 {
        let value = digits
            .iter()
            .fold(0u64, |value, digit| value * 10 + u64::from(digit - b'0'));
        let mut nibbles = NibbleWriter::new(out);
        let significant = 16 - (value.leading_zeros() / 4).min(15) as usize;
        for shift in (0..significant).rev() {
            nibbles.push(((value >> (shift * 4)) & 0x0f) as u8)?;
        }
        return Ok(());
    }
    // Big-endian binary value, built by value = value * 10 + digit over
    // only the `used` low-order bytes that can be non-zero yet (a 6-digit
    // challenge touches 3 bytes, not 128). A question that does not fit 128
    // bytes of value cannot fit 256 nibbles either.
    let mut value = [0u8; QUESTION_BYTES];
    let mut used = 0;
    for digit in digits {
        let span = (used + 1).min(QUESTION_BYTES);
        let mut carry = u16::from(digit - b'0');
        for byte in value.iter_mut().rev().take(span) {
            let product = u16::from(*byte) * 10 + carry;
            *byte = (product & 0xff) as u8;
            carry = product >> 8;
        }
        if carry != 0 {
            return Err(InputError::QuestionTooLong);
        }
        if value
            .get(QUESTION_BYTES - span)
            .is_some_and(|top| *top != 0)
        {
            used = span;
        }
    }
    let mut nibbles = NibbleWriter::new(out);
    let mut leading = true;
    for &byte in value.iter().skip(QUESTION_BYTES - used) {
        for nibble in [byte >> 4, byte & 0x0f] {
            leading &= nibble == 0;
            if !leading {
                nibbles.push(nibble)?;
            }
        }
    }
    // Zero's hex form is "0": one zero nibble, already in place.
    Ok(())
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Fills a buffer with nibbles from the left, high nibble first.
struct NibbleWriter<'a> {
    out: &'a mut [u8; QUESTION_BYTES],
    written: usize,
}

impl<'a> NibbleWriter<'a> {
    fn new(out: &'a mut [u8; QUESTION_BYTES]) -> Self {
        Self { out, written: 0 }
    }

    fn push(&mut self, nibble: u8) -> Result<(), InputError> {
        let byte = self
            .out
            .get_mut(self.written / 2)
            .ok_or(InputError::QuestionTooLong)?;
        if self.written.is_multiple_of(2) {
            *byte = nibble << 4;
        } else {
            *byte |= nibble;
        }
        self.written += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(format: QuestionFormat, text: &str) -> Result<Vec<u8>, InputError> {
        encode_question(format, text).map(|q| q.to_vec())
    }

    fn padded(prefix: &[u8]) -> Vec<u8> {
        let mut out = prefix.to_vec();
        out.resize(QUESTION_BYTES, 0);
        out
    }

    #[test]
    fn numeric_questions_are_their_value_in_hex_from_the_left() {
        use QuestionFormat::Numeric;
        assert_eq!(
            question(Numeric, "12345678").unwrap(),
            padded(&[0xbc, 0x61, 0x4e])
        );
        // 11111111 = 0xA98AC7; 22222222 = 0x15315 8E: odd nibble count.
        assert_eq!(
            question(Numeric, "11111111").unwrap(),
            padded(&[0xa9, 0x8a, 0xc7])
        );
        assert_eq!(
            question(Numeric, "22222222").unwrap(),
            padded(&[0x15, 0x31, 0x58, 0xe0])
        );
        assert_eq!(question(Numeric, "00000000").unwrap(), padded(&[]));
        assert_eq!(question(Numeric, "0015").unwrap(), padded(&[0xf0]));
    }

    #[test]
    fn hex_and_alphanumeric_questions_keep_what_was_typed() {
        assert_eq!(
            question(QuestionFormat::Hex, "0aBc1").unwrap(),
            padded(&[0x0a, 0xbc, 0x10])
        );
        assert_eq!(
            question(QuestionFormat::Alphanumeric, "SIG1").unwrap(),
            padded(b"SIG1")
        );
    }

    #[test]
    fn bad_questions_are_refused() {
        use QuestionFormat::*;
        assert_eq!(question(Numeric, ""), Err(InputError::EmptyQuestion));
        assert_eq!(
            question(Numeric, "12a4"),
            Err(InputError::QuestionCharacter {
                format: Numeric,
                position: 2
            })
        );
        assert_eq!(
            question(Hex, "12g4"),
            Err(InputError::QuestionCharacter {
                format: Hex,
                position: 2
            })
        );
        assert_eq!(
            question(Alphanumeric, "a b"),
            Err(InputError::QuestionCharacter {
                format: Alphanumeric,
                position: 1
            })
        );
        assert_eq!(question(Hex, &"f".repeat(256)).unwrap(), vec![0xff; 128]);
        assert_eq!(
            question(Hex, &"f".repeat(257)),
            Err(InputError::QuestionTooLong)
        );
        assert_eq!(
            question(Alphanumeric, &"z".repeat(129)),
            Err(InputError::QuestionTooLong)
        );
        // 2^1024 - 1 fills the field exactly; one more digit overflows it.
        let max = "9".repeat(308);
        assert!(question(Numeric, &max).is_ok());
        assert_eq!(
            question(Numeric, &"9".repeat(309)),
            Err(InputError::QuestionTooLong)
        );
    }
}
