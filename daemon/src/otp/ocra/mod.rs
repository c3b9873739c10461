//! OCRA (RFC 6287): challenge/response over any valid suite.
//!
//! [`Suite`] parses the suite string; [`OcraInput`] carries the counter,
//! question, PIN hash, session information and timestamp of one
//! computation; [`Ocra`] holds a suite with its precomputed key and computes
//! or verifies responses. The response is the HOTP truncation of
//! HMAC(key, data input) to the suite's digits, or the whole HMAC in
//! lowercase hex when the suite's truncation is 0.

mod input;
mod suite;

pub use input::{InputError, OcraInput, QUESTION_BYTES};
pub use suite::{OcraTimeStep, QuestionFormat, Suite, SuiteError, TimeUnit};

use std::sync::Arc;

use input::DataInput;

use super::code::decimal_answer_matches;
use super::hotp::{truncated_code, truncated_value};
use super::{Code, HmacKey, SecretKey};

/// An OCRA device key bound to its suite, ready to compute responses.
///
/// The suite is shared (`Arc`): every device of a kind uses the same one.
#[derive(Debug, Clone)]
pub struct Ocra {
    suite: Arc<Suite>,
    key: HmacKey,
}

impl Ocra {
    /// Precomputes the HMAC state of `key` for the suite's hash.
    pub fn new(suite: impl Into<Arc<Suite>>, key: &SecretKey) -> Self {
        let suite = suite.into();
        let key = HmacKey::new(suite.hash(), key);
        Self { suite, key }
    }

    pub fn suite(&self) -> &Suite {
        &self.suite
    }

    /// The response the device shows for `input`.
    pub fn respond(&self, input: &OcraInput<'_>) -> Result<Code, InputError> {
        let data = DataInput::new(&self.suite, input)?;
        let parts = data.parts();
        Ok(match self.suite.truncation() {
            Some(digits) => truncated_code(&self.key, &parts, digits),
            None => Code::hex(self.key.mac(&parts).as_bytes()),
        })
    }

    /// Whether `given` is the response to `input`, compared in constant time.
    pub fn verify(&self, input: &OcraInput<'_>, given: &[u8]) -> Result<bool, InputError> {
        let Some(digits) = self.suite.truncation() else {
            return Ok(self.respond(input)?.matches(given));
        };
        let data = DataInput::new(&self.suite, input)?;
        let value = truncated_value(&self.key, &data.parts(), digits);
        Ok(decimal_answer_matches(&[(value, digits.get())], given).into())
    }
}

/// The data input bytes for `input` under `suite` (for tests and tools; the
/// computation itself hashes the parts in place without building this).
pub fn data_input(suite: &Suite, input: &OcraInput<'_>) -> Result<Vec<u8>, InputError> {
    Ok(DataInput::new(suite, input)?.parts().concat())
}
