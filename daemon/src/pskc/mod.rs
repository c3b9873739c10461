//! PSKC (RFC 6030): a token vendor's key file, read into tokens ready to
//! import.
//!
//! [`read`] streams the file (a million key packages never sit in memory
//! as a tree: `xml`), opens its encrypted values with a pre-shared key or
//! a password (`crypto`), checks the MAC of every encrypted value before
//! decrypting it, and returns every token or one error that names the key
//! package and the reason: a file imports whole or not at all. What it
//! accepts beyond the RFC's letter, because vendors and common tools
//! write it: PBKDF2 parameters under the `pkcs5` or `xenc11` namespace or
//! none; the OCRA suite in `AlgorithmParameters/Suite`; a HOTP or TOTP
//! hash named there (`HMAC-SHA256`); the algorithm URIs of the RFC's
//! drafts; dates without a zone (read as UTC); a MAC under the encryption
//! key when the file has no `MACKey` (drafts). What it refuses: any
//! encrypted value without a MAC, a DTD, keys encrypted to a certificate,
//! algorithms other than HOTP, TOTP and OCRA (PIN key packages, which
//! carry a PIN checked on the token itself, are skipped).
//!
//! Decrypted keys leave as [`SecretKey`]s (zeroized on drop); the caller
//! seals them before anything is written.

mod crypto;
mod write;
mod xml;

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

pub use crypto::{MAX_PBKDF2_ITERATIONS, Opening};
pub use write::{TokenEntry, WriteError, Writer};

use crate::clock::Timestamp;
use crate::identity::Serial;
use crate::otp::hotp::Digits;
use crate::otp::ocra::Suite;
use crate::otp::token::TokenAlgorithm;
use crate::otp::totp::TimeStep;
use crate::otp::{HashAlgorithm, SecretKey};
use xml::{Fields, Part};

/// One token from the file.
#[derive(Debug)]
pub struct ImportedToken {
    pub serial: Serial,
    pub manufacturer: Option<String>,
    pub algorithm: TokenAlgorithm,
    pub key: SecretKey,
    /// The event counter the token starts at (HOTP, OCRA with `C`).
    pub counter: u64,
    /// `Policy/StartDate` and `Policy/ExpiryDate`.
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
}

/// What a file may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Tokens in one file.
    pub max_tokens: usize,
    /// The shortest key accepted (RFC 4226 asks for 128 bits).
    pub min_key_bytes: usize,
}

/// Why a file imports nothing.
#[derive(Debug, thiserror::Error)]
pub enum PskcError {
    #[error("not readable as XML (near byte {position}): {message}")]
    Xml { position: u64, message: String },
    #[error("not a PSKC file: {0}")]
    NotPskc(String),
    #[error("the file's encryption: {0}")]
    Encryption(String),
    #[error("key package {index} (serial {serial}): {problem}")]
    Package {
        /// The package's place in the file, from 1.
        index: usize,
        /// As written, or `?` when it has none.
        serial: String,
        problem: Problem,
    },
    #[error("the file holds more than {0} tokens (tokens.import-max)")]
    TooMany(usize),
    #[error("the file holds no token")]
    Empty,
}

/// What is wrong with one key package.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("its MAC does not match: the value was altered, or the key or password is wrong")]
    BadMac,
    #[error("an encrypted value carries no ValueMAC")]
    MissingMac,
    #[error("algorithm {0:?} is not HOTP, TOTP or OCRA")]
    UnknownAlgorithm(String),
    #[error("the serial number is used by key package {first} as well")]
    DuplicateSerial { first: usize },
    #[error("its key is {bytes} bytes; at least {min} are required")]
    KeyTooShort { bytes: usize, min: usize },
    #[error("{0}")]
    Invalid(String),
}

impl From<crypto::Problem> for Problem {
    fn from(problem: crypto::Problem) -> Self {
        match problem {
            crypto::Problem::BadMac => Self::BadMac,
            crypto::Problem::MissingMac => Self::MissingMac,
            crypto::Problem::Invalid(text) => Self::Invalid(text),
        }
    }
}

/// Reads every token of a PSKC file, or none.
pub fn read<R: BufRead>(
    input: R,
    opening: Opening<'_>,
    limits: &Limits,
) -> Result<Vec<ImportedToken>, PskcError> {
    let mut keys = None;
    let mut tokens = Vec::new();
    let mut serials: HashMap<Serial, usize> = HashMap::new();
    let mut index = 0;
    xml::read_parts(input, |part| match part {
        Part::Header(header) => {
            keys = crypto::open_header(&header, opening).map_err(PskcError::Encryption)?;
            Ok(())
        }
        Part::Package(fields) => {
            index += 1;
            let failed = |serial: &str, problem| PskcError::Package {
                index,
                serial: serial.to_owned(),
                problem,
            };
            let written = fields
                .get("DeviceInfo/SerialNo")
                .ok()
                .flatten()
                .unwrap_or("?");
            let written = written.to_owned();
            let Some(token) = package(&fields, keys.as_ref(), limits)
                .map_err(|problem| failed(&written, problem))?
            else {
                return Ok(());
            };
            if let Some(&first) = serials.get(&token.serial) {
                return Err(failed(&written, Problem::DuplicateSerial { first }));
            }
            if tokens.len() >= limits.max_tokens {
                return Err(PskcError::TooMany(limits.max_tokens));
            }
            serials.insert(token.serial.clone(), index);
            tokens.push(token);
            Ok(())
        }
    })?;
    if tokens.is_empty() {
        return Err(PskcError::Empty);
    }
    Ok(tokens)
}

/// The pre-shared key of a `--psk-file`: hex, 16, 24 or 32 bytes (an AES
/// key), with or without a trailing newline.
pub fn pre_shared_key(text: &str) -> Result<SecretKey, String> {
    let hex = text.trim_end_matches(['\n', '\r']);
    let key =
        SecretKey::from_hex(hex).map_err(|e| format!("the pre-shared key is not hex: {e}"))?;
    if !matches!(key.len(), 16 | 24 | 32) {
        return Err(format!(
            "the pre-shared key is {} bytes; an AES key is 16, 24 or 32",
            key.len()
        ));
    }
    Ok(key)
}

/// The password of a `--password-file`: its bytes less one trailing
/// newline (editors add one).
pub fn password(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// The algorithm URIs' prefixes: RFC 6030's and its drafts'.
const ALGORITHM_PREFIXES: [&str; 3] = [
    "urn:ietf:params:xml:ns:keyprov:pskc:",
    "urn:ietf:params:xml:ns:keyprov:pskc#",
    "http://www.ietf.org/keyprov/pskc#",
];

/// The token of one key package; `None` for a PIN key package.
fn package(
    fields: &Fields,
    keys: Option<&crypto::Keys>,
    limits: &Limits,
) -> Result<Option<ImportedToken>, Problem> {
    let get = |path: &str| fields.get(path).map_err(Problem::Invalid);
    let uri =
        get("Key@Algorithm")?.ok_or_else(|| Problem::Invalid("Key has no Algorithm".into()))?;
    let name = ALGORITHM_PREFIXES
        .iter()
        .find_map(|prefix| uri.strip_prefix(prefix))
        .map(str::to_ascii_lowercase);
    let serial = get("DeviceInfo/SerialNo")?
        .ok_or_else(|| Problem::Invalid("DeviceInfo has no SerialNo".into()))?;
    let serial = Serial::new(serial).map_err(|e| Problem::Invalid(e.to_string()))?;
    let algorithm = match name.as_deref() {
        Some("pin") => return Ok(None),
        Some("hotp") => TokenAlgorithm::Hotp {
            hash: hash(fields)?,
            digits: digits(fields)?,
        },
        Some("totp") => TokenAlgorithm::Totp {
            hash: hash(fields)?,
            digits: digits(fields)?,
            step: time_step(fields, keys)?,
            origin: number(fields, keys, "Key/Data/Time")?.unwrap_or(0),
        },
        Some("ocra") => ocra(fields)?,
        _ => return Err(Problem::UnknownAlgorithm(uri.to_owned())),
    };
    let key = value(fields, keys, "Key/Data/Secret")?
        .ok_or_else(|| Problem::Invalid("Key/Data has no Secret".into()))?;
    if key.len() < limits.min_key_bytes {
        return Err(Problem::KeyTooShort {
            bytes: key.len(),
            min: limits.min_key_bytes,
        });
    }
    let key = SecretKey::from_bytes(key.to_vec()).map_err(|e| Problem::Invalid(e.to_string()))?;
    let valid_from = get("Key/Policy/StartDate")?.map(date_time).transpose()?;
    let valid_until = get("Key/Policy/ExpiryDate")?.map(date_time).transpose()?;
    if let (Some(from), Some(until)) = (valid_from, valid_until)
        && until <= from
    {
        return Err(Problem::Invalid("ExpiryDate is not after StartDate".into()));
    }
    let manufacturer =
        get("DeviceInfo/Manufacturer")?.map(|name| name.chars().take(64).collect::<String>());
    Ok(Some(ImportedToken {
        serial,
        manufacturer,
        algorithm,
        key,
        counter: number(fields, keys, "Key/Data/Counter")?.unwrap_or(0),
        valid_from,
        valid_until,
    }))
}

/// The OCRA suite of `AlgorithmParameters/Suite`, checked against the
/// `ResponseFormat` when the file gives one.
fn ocra(fields: &Fields) -> Result<TokenAlgorithm, Problem> {
    let text = fields
        .get("Key/AlgorithmParameters/Suite")
        .map_err(Problem::Invalid)?
        .ok_or_else(|| Problem::Invalid("an OCRA key has no AlgorithmParameters/Suite".into()))?;
    let suite: Suite = text
        .parse()
        .map_err(|e| Problem::Invalid(format!("OCRA suite {text:?}: {e}")))?;
    if let Some(length) = response_length(fields)?
        && u32::from(suite.digits()) != length
    {
        return Err(Problem::Invalid(format!(
            "ResponseFormat Length {length} differs from the suite's {} digits",
            suite.digits()
        )));
    }
    let algorithm = TokenAlgorithm::Ocra {
        suite: Arc::new(suite),
    };
    match algorithm.unsupported() {
        Some(why) => Err(Problem::Invalid(why)),
        None => Ok(algorithm),
    }
}

/// A HOTP or TOTP hash: SHA1 unless `AlgorithmParameters/Suite` names
/// another (`HMAC-SHA256`, `SHA256`).
fn hash(fields: &Fields) -> Result<HashAlgorithm, Problem> {
    match fields
        .get("Key/AlgorithmParameters/Suite")
        .map_err(Problem::Invalid)?
    {
        None => Ok(HashAlgorithm::Sha1),
        Some(name) => {
            let bare = name.strip_prefix("HMAC-").unwrap_or(name);
            bare.parse().map_err(|_| {
                Problem::Invalid(format!(
                    "hash {name:?} is not HMAC-SHA1, -SHA256 or -SHA512"
                ))
            })
        }
    }
}

/// `ResponseFormat@Length`, in decimal digits.
fn response_length(fields: &Fields) -> Result<Option<u32>, Problem> {
    const FORMAT: &str = "Key/AlgorithmParameters/ResponseFormat";
    let encoding = fields
        .get(&format!("{FORMAT}@Encoding"))
        .map_err(Problem::Invalid)?;
    if encoding.is_some_and(|e| e != "DECIMAL") {
        return Err(Problem::Invalid(format!(
            "ResponseFormat Encoding {encoding:?} is not DECIMAL"
        )));
    }
    fields
        .get(&format!("{FORMAT}@Length"))
        .map_err(Problem::Invalid)?
        .map(|text| {
            text.parse().map_err(|_| {
                Problem::Invalid(format!("ResponseFormat Length {text:?} is not a number"))
            })
        })
        .transpose()
}

/// The digits of a HOTP or TOTP code: 6 to 10 (RFC 4226 §5.3 asks for at
/// least 6).
fn digits(fields: &Fields) -> Result<Digits, Problem> {
    let length = response_length(fields)?
        .ok_or_else(|| Problem::Invalid("no ResponseFormat Length".into()))?;
    match Digits::new(length) {
        Ok(digits) if length >= 6 => Ok(digits),
        _ => Err(Problem::Invalid(format!(
            "{length} digits is outside 6..=10"
        ))),
    }
}

/// `Data/TimeInterval`: 30 seconds unless given.
fn time_step(fields: &Fields, keys: Option<&crypto::Keys>) -> Result<TimeStep, Problem> {
    let seconds = number(fields, keys, "Key/Data/TimeInterval")?.unwrap_or(30);
    TimeStep::new(Duration::from_secs(seconds))
        .map_err(|_| Problem::Invalid("TimeInterval is 0".into()))
}

/// A data value (`Secret`, `Counter`, …): plain (base64 for the secret,
/// decimal for numbers) or encrypted, MAC checked.
fn value(
    fields: &Fields,
    keys: Option<&crypto::Keys>,
    base: &str,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Problem> {
    if fields.has(&format!("{base}/EncryptedValue")) {
        let keys = keys.ok_or_else(|| {
            Problem::Invalid(format!(
                "{base} is encrypted but the file has no EncryptionKey"
            ))
        })?;
        return Ok(Some(keys.open(fields, base)?));
    }
    match fields
        .get(&format!("{base}/PlainValue"))
        .map_err(Problem::Invalid)?
    {
        Some(text) => crypto::base64(text)
            .map(|bytes| Some(zeroize::Zeroizing::new(bytes)))
            .map_err(|e| Problem::Invalid(format!("{base}/PlainValue: {e}"))),
        None => Ok(None),
    }
}

/// A number (`Counter`, `Time`, `TimeInterval`): decimal when plain, the
/// big-endian bytes when encrypted.
fn number(
    fields: &Fields,
    keys: Option<&crypto::Keys>,
    base: &str,
) -> Result<Option<u64>, Problem> {
    if fields.has(&format!("{base}/EncryptedValue")) {
        let bytes = value(fields, keys, base)?.unwrap_or_default();
        if bytes.len() > 8 {
            return Err(Problem::Invalid(format!("{base} is longer than 8 bytes")));
        }
        return Ok(Some(bytes.iter().fold(0u64, |n, b| n << 8 | u64::from(*b))));
    }
    match fields
        .get(&format!("{base}/PlainValue"))
        .map_err(Problem::Invalid)?
    {
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| Problem::Invalid(format!("{base} {text:?} is not a whole number"))),
        None => Ok(None),
    }
}

/// An `xs:dateTime`; one without a zone is read as UTC.
fn date_time(text: &str) -> Result<Timestamp, Problem> {
    use time::format_description::well_known::Rfc3339;
    let zoned = text.ends_with(['Z', 'z'])
        || text
            .len()
            .checked_sub(6)
            .and_then(|at| text.get(at..))
            .is_some_and(|tail| tail.starts_with(['+', '-']) && tail.get(3..4) == Some(":"));
    let full = if zoned {
        text.to_owned()
    } else {
        format!("{text}Z")
    };
    let when = time::OffsetDateTime::parse(&full, &Rfc3339)
        .map_err(|e| Problem::Invalid(format!("date {text:?}: {e}")))?;
    let millis = when.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(millis)
        .map(Timestamp)
        .map_err(|_| Problem::Invalid(format!("date {text:?} is before 1970")))
}
