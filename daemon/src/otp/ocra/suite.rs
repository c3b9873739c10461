//! The OCRA suite string (RFC 6287 §6), parsed once into a typed value.
//!
//! Grammar accepted, exactly (no spaces, case as written):
//!
//! ```text
//! OCRA-1:HOTP-<SHA1|SHA256|SHA512>-<0|4..10>:[C-][QA|QN|QH]<04..64>[-P<SHA1|SHA256|SHA512>][-S<nnn>][-T<n><S|M|H>]
//! ```
//!
//! The optional parts come in that order, each at most once. `T` takes
//! 1..=59 seconds or minutes, or 1..=48 hours (RFC 6287 allows `0H`, a zero
//! time step that cannot be divided by; it is refused here). `S` takes three
//! digits, 001..=999 bytes. Because the parser admits exactly one spelling of
//! every suite, printing a parsed suite gives back the input.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::otp::HashAlgorithm;
use crate::otp::hotp::Digits;

/// What a malformed suite got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuiteError {
    #[error("suite must have three parts separated by ':' (algorithm:crypto-function:data-input)")]
    PartCount,
    #[error("unsupported algorithm {0:?} (expected OCRA-1)")]
    Algorithm(String),
    #[error("crypto function {0:?} is not HOTP-<SHA1|SHA256|SHA512>-<digits>")]
    CryptoFunction(String),
    #[error("truncation {0:?} is not 0 or 4..=10 digits")]
    Truncation(String),
    #[error("hash {0:?} is not SHA1, SHA256 or SHA512")]
    Hash(String),
    #[error("data input has no challenge question (QA, QN or QH with a length)")]
    MissingQuestion,
    #[error("question {0:?} is not Q<A|N|H><04..64>")]
    Question(String),
    #[error("PIN hash {0:?} is not P<SHA1|SHA256|SHA512>")]
    Pin(String),
    #[error("session info {0:?} is not S<001..999>")]
    Session(String),
    #[error("timestamp {0:?} is not T<1..59>S, T<1..59>M or T<1..48>H")]
    Timestamp(String),
    #[error("data input element {0:?} is unknown, repeated or out of order (order: C, Q, P, S, T)")]
    DataInput(String),
}

/// How the question is written and laid out in the data input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuestionFormat {
    /// `QA`: characters, laid out as their bytes.
    Alphanumeric,
    /// `QN`: a decimal number, laid out as its big-endian binary value.
    Numeric,
    /// `QH`: hex digits, laid out as the nibbles written.
    Hex,
}

impl QuestionFormat {
    fn letter(self) -> char {
        match self {
            Self::Alphanumeric => 'A',
            Self::Numeric => 'N',
            Self::Hex => 'H',
        }
    }
}

/// The unit of an OCRA time step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeUnit {
    Seconds,
    Minutes,
    Hours,
}

/// The `T` element: the time step the timestamp counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OcraTimeStep {
    pub count: u8,
    pub unit: TimeUnit,
}

impl OcraTimeStep {
    pub fn as_duration(self) -> Duration {
        let unit = match self.unit {
            TimeUnit::Seconds => 1,
            TimeUnit::Minutes => 60,
            TimeUnit::Hours => 3600,
        };
        Duration::from_secs(u64::from(self.count) * unit)
    }

    /// The T value for a UNIX time: whole steps since the epoch.
    pub fn steps_at(self, unix_time: u64) -> u64 {
        // count >= 1 by construction, so the divisor is never zero.
        unix_time / self.as_duration().as_secs().max(1)
    }
}

/// A parsed OCRA suite.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Suite {
    text: Box<str>,
    hash: HashAlgorithm,
    digits: u8,
    counter: bool,
    question_format: QuestionFormat,
    question_len: u8,
    pin: Option<HashAlgorithm>,
    session_len: Option<u16>,
    time_step: Option<OcraTimeStep>,
}

impl Suite {
    /// The suite as written; it is also the first field of the data input.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The HMAC hash function.
    pub fn hash(&self) -> HashAlgorithm {
        self.hash
    }

    /// Response digits; 0 means the untruncated HMAC (given in hex).
    pub fn digits(&self) -> u8 {
        self.digits
    }

    /// The truncation to decimal digits, or `None` for the untruncated HMAC.
    pub fn truncation(&self) -> Option<Digits> {
        Digits::new(u32::from(self.digits)).ok()
    }

    /// Whether the data input carries a counter `C`.
    pub fn uses_counter(&self) -> bool {
        self.counter
    }

    pub fn question_format(&self) -> QuestionFormat {
        self.question_format
    }

    /// The challenge length `xx` a verifier issues (4..=64 characters).
    pub fn question_len(&self) -> u8 {
        self.question_len
    }

    /// The hash the PIN is bound through, if the suite binds one.
    pub fn pin(&self) -> Option<HashAlgorithm> {
        self.pin
    }

    /// Session-information length in bytes, if the suite carries it.
    pub fn session_len(&self) -> Option<u16> {
        self.session_len
    }

    pub fn time_step(&self) -> Option<OcraTimeStep> {
        self.time_step
    }

    /// Response length in characters (hex of the full HMAC when digits is 0).
    pub fn response_len(&self) -> usize {
        match self.digits {
            0 => self.hash.output_len() * 2,
            digits => usize::from(digits),
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OCRA-1:HOTP-{}-{}:", self.hash, self.digits)?;
        if self.counter {
            f.write_str("C-")?;
        }
        write!(
            f,
            "Q{}{:02}",
            self.question_format.letter(),
            self.question_len
        )?;
        if let Some(pin) = self.pin {
            write!(f, "-P{pin}")?;
        }
        if let Some(len) = self.session_len {
            write!(f, "-S{len:03}")?;
        }
        if let Some(step) = self.time_step {
            let unit = match step.unit {
                TimeUnit::Seconds => 'S',
                TimeUnit::Minutes => 'M',
                TimeUnit::Hours => 'H',
            };
            write!(f, "-T{}{unit}", step.count)?;
        }
        Ok(())
    }
}

impl FromStr for Suite {
    type Err = SuiteError;

    fn from_str(text: &str) -> Result<Self, SuiteError> {
        let mut parts = text.split(':');
        let (Some(algorithm), Some(function), Some(data), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SuiteError::PartCount);
        };
        if algorithm != "OCRA-1" {
            return Err(SuiteError::Algorithm(algorithm.to_owned()));
        }
        let (hash, digits) = parse_crypto_function(function)?;

        let mut elements = data.split('-').peekable();
        let counter = elements.next_if_eq(&"C").is_some();
        let question = elements.next().ok_or(SuiteError::MissingQuestion)?;
        let (question_format, question_len) = parse_question(question)?;

        let mut pin = None;
        let mut session_len = None;
        let mut time_step = None;
        // Each optional element must come after the ones before it in C, Q,
        // P, S, T order; `rank` remembers how far along we are.
        let mut rank = 0;
        for element in elements {
            let (element_rank, kind) = match element.chars().next() {
                Some('P') => (1, 'P'),
                Some('S') => (2, 'S'),
                Some('T') => (3, 'T'),
                _ => (0, '?'),
            };
            if element_rank <= rank {
                return Err(SuiteError::DataInput(element.to_owned()));
            }
            rank = element_rank;
            let body = element.get(1..).unwrap_or("");
            match kind {
                'P' => pin = Some(parse_hash(body).map_err(|_| SuiteError::Pin(element.into()))?),
                'S' => session_len = Some(parse_session(body, element)?),
                _ => time_step = Some(parse_time_step(body, element)?),
            }
        }

        Ok(Self {
            text: text.into(),
            hash,
            digits,
            counter,
            question_format,
            question_len,
            pin,
            session_len,
            time_step,
        })
    }
}

fn parse_crypto_function(function: &str) -> Result<(HashAlgorithm, u8), SuiteError> {
    let bad = || SuiteError::CryptoFunction(function.to_owned());
    let rest = function.strip_prefix("HOTP-").ok_or_else(bad)?;
    let (hash, digits) = rest.split_once('-').ok_or_else(bad)?;
    let hash = parse_hash(hash)?;
    let digits = match digits {
        "0" => 0,
        "4" | "5" | "6" | "7" | "8" | "9" | "10" => digits
            .parse()
            .map_err(|_| SuiteError::Truncation(digits.to_owned()))?,
        _ => return Err(SuiteError::Truncation(digits.to_owned())),
    };
    Ok((hash, digits))
}

/// Exactly `SHA1`, `SHA256` or `SHA512` (suites are case-sensitive).
fn parse_hash(name: &str) -> Result<HashAlgorithm, SuiteError> {
    match name {
        "SHA1" => Ok(HashAlgorithm::Sha1),
        "SHA256" => Ok(HashAlgorithm::Sha256),
        "SHA512" => Ok(HashAlgorithm::Sha512),
        _ => Err(SuiteError::Hash(name.to_owned())),
    }
}

fn parse_question(element: &str) -> Result<(QuestionFormat, u8), SuiteError> {
    let bad = || SuiteError::Question(element.to_owned());
    let rest = element
        .strip_prefix('Q')
        .ok_or(SuiteError::MissingQuestion)?;
    let mut chars = rest.chars();
    let format = match chars.next() {
        Some('A') => QuestionFormat::Alphanumeric,
        Some('N') => QuestionFormat::Numeric,
        Some('H') => QuestionFormat::Hex,
        _ => return Err(bad()),
    };
    let len = exact_digits(chars.as_str(), 2).ok_or_else(bad)?;
    match u8::try_from(len) {
        Ok(len @ 4..=64) => Ok((format, len)),
        _ => Err(bad()),
    }
}

fn parse_session(body: &str, element: &str) -> Result<u16, SuiteError> {
    match exact_digits(body, 3).and_then(|n| u16::try_from(n).ok()) {
        Some(len @ 1..=999) => Ok(len),
        _ => Err(SuiteError::Session(element.to_owned())),
    }
}

fn parse_time_step(body: &str, element: &str) -> Result<OcraTimeStep, SuiteError> {
    let bad = || SuiteError::Timestamp(element.to_owned());
    let split = body.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = (body.get(..split).ok_or_else(bad)?, body.get(split..));
    let (unit, max) = match unit {
        Some("S") => (TimeUnit::Seconds, 59),
        Some("M") => (TimeUnit::Minutes, 59),
        Some("H") => (TimeUnit::Hours, 48),
        _ => return Err(bad()),
    };
    // One or two digits, no leading zero: one spelling per value.
    if number.starts_with('0') {
        return Err(bad());
    }
    let count = exact_digits(number, 1)
        .or_else(|| exact_digits(number, 2))
        .ok_or_else(bad)?;
    match u8::try_from(count) {
        Ok(count) if (1..=max).contains(&count) => Ok(OcraTimeStep { count, unit }),
        _ => Err(bad()),
    }
}

/// `text` as a number if it is exactly `width` ASCII digits.
fn exact_digits(text: &str, width: usize) -> Option<u32> {
    if text.len() != width || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Suite, SuiteError> {
        text.parse()
    }

    #[test]
    fn parses_every_part_of_a_full_suite() {
        let suite = parse("OCRA-1:HOTP-SHA512-10:C-QH64-PSHA256-S512-T48H").unwrap();
        assert_eq!(suite.hash(), HashAlgorithm::Sha512);
        assert_eq!(suite.digits(), 10);
        assert!(suite.uses_counter());
        assert_eq!(suite.question_format(), QuestionFormat::Hex);
        assert_eq!(suite.question_len(), 64);
        assert_eq!(suite.pin(), Some(HashAlgorithm::Sha256));
        assert_eq!(suite.session_len(), Some(512));
        assert_eq!(
            suite.time_step().map(OcraTimeStep::as_duration),
            Some(Duration::from_secs(48 * 3600))
        );
        assert_eq!(suite.to_string(), suite.as_str());
    }

    #[test]
    fn dsc_plus_suite() {
        let suite = parse("OCRA-1:HOTP-SHA256-8:QN06-PSHA1").unwrap();
        assert_eq!(suite.response_len(), 8);
        assert_eq!(suite.question_len(), 6);
        assert_eq!(suite.pin(), Some(HashAlgorithm::Sha1));
        assert!(!suite.uses_counter());
    }

    #[test]
    fn untruncated_suite_answers_in_hex() {
        let suite = parse("OCRA-1:HOTP-SHA256-0:QA10").unwrap();
        assert_eq!(suite.response_len(), 64);
    }

    #[test]
    fn every_malformed_suite_names_its_fault() {
        use SuiteError as E;
        let cases: &[(&str, SuiteError)] = &[
            ("", E::PartCount),
            ("OCRA-1:HOTP-SHA1-6", E::PartCount),
            ("OCRA-1:HOTP-SHA1-6:QN08:X", E::PartCount),
            ("OCRA-2:HOTP-SHA1-6:QN08", E::Algorithm("OCRA-2".into())),
            ("ocra-1:HOTP-SHA1-6:QN08", E::Algorithm("ocra-1".into())),
            (
                "OCRA-1:TOTP-SHA1-6:QN08",
                E::CryptoFunction("TOTP-SHA1-6".into()),
            ),
            (
                "OCRA-1:HOTP-SHA1:QN08",
                E::CryptoFunction("HOTP-SHA1".into()),
            ),
            ("OCRA-1:HOTP-MD5-6:QN08", E::Hash("MD5".into())),
            ("OCRA-1:HOTP-sha1-6:QN08", E::Hash("sha1".into())),
            ("OCRA-1:HOTP-SHA1-3:QN08", E::Truncation("3".into())),
            ("OCRA-1:HOTP-SHA1-11:QN08", E::Truncation("11".into())),
            ("OCRA-1:HOTP-SHA1-06:QN08", E::Truncation("06".into())),
            ("OCRA-1:HOTP-SHA1-6:", E::MissingQuestion),
            ("OCRA-1:HOTP-SHA1-6:C", E::MissingQuestion),
            ("OCRA-1:HOTP-SHA1-6:C-PSHA1", E::MissingQuestion),
            ("OCRA-1:HOTP-SHA1-6:QX08", E::Question("QX08".into())),
            ("OCRA-1:HOTP-SHA1-6:QN03", E::Question("QN03".into())),
            ("OCRA-1:HOTP-SHA1-6:QN65", E::Question("QN65".into())),
            ("OCRA-1:HOTP-SHA1-6:QN8", E::Question("QN8".into())),
            ("OCRA-1:HOTP-SHA1-6:QN008", E::Question("QN008".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-PMD5", E::Pin("PMD5".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-P", E::Pin("P".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-S64", E::Session("S64".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-S000", E::Session("S000".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-S1024", E::Session("S1024".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-T", E::Timestamp("T".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-T0H", E::Timestamp("T0H".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-T60S", E::Timestamp("T60S".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-T49H", E::Timestamp("T49H".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-T01M", E::Timestamp("T01M".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-T1D", E::Timestamp("T1D".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-TM", E::Timestamp("TM".into())),
            (
                "OCRA-1:HOTP-SHA1-6:QN08-T1M-PSHA1",
                E::DataInput("PSHA1".into()),
            ),
            (
                "OCRA-1:HOTP-SHA1-6:QN08-S064-PSHA1",
                E::DataInput("PSHA1".into()),
            ),
            (
                "OCRA-1:HOTP-SHA1-6:QN08-PSHA1-PSHA1",
                E::DataInput("PSHA1".into()),
            ),
            ("OCRA-1:HOTP-SHA1-6:QN08-C", E::DataInput("C".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-", E::DataInput("".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-X", E::DataInput("X".into())),
            ("OCRA-1:HOTP-SHA1-6:QN08-PSHA1-é", E::DataInput("é".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text).as_ref(), Err(expected), "{text}");
        }
    }
}
