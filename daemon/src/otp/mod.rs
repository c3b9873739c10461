//! One-time-code algorithms: pure functions over keys and inputs.
//!
//! Everything here is deterministic and I/O-free: no state, no clock, no
//! sockets, no tokio. Time enters as a number (UNIX seconds or a time-step
//! count) and randomness as a `rand::CryptoRng` the caller passes in, so the
//! engine, the simulator and the fuzzers drive these functions the same way.
//!
//! - [`hotp`] / [`totp`]: RFC 4226 and RFC 6238.
//! - [`ocra`]: RFC 6287 in general — suite parser, data-input layout, responses.
//! - [`card`]: security code cards (codes derived from a per-card secret).
//! - [`generate`]: random codes for SMS and temporary access.
//! - [`push`]: Ed25519 proofs of IB Key push approval (ring).
//! - [`Code`] and [`codes_match`]: a computed code and its constant-time check.
//! - [`SecretKey`] and [`HmacKey`]: zeroizing key material and the precomputed
//!   per-key HMAC state that makes verification a single HMAC pass.

pub mod app;
pub mod card;
mod code;
pub mod generate;
pub mod hotp;
mod key;
pub mod ocra;
pub mod push;
pub mod token;
pub mod totp;
mod wiped;

pub use code::{Code, MAX_CODE_LEN, codes_match};
pub use key::{HashAlgorithm, HmacKey, KeyError, MAX_KEY_LEN, MacOutput, SecretKey};
