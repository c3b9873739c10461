//! Secret key material, and the per-key HMAC state computed once.

use std::fmt;
use std::str::FromStr;

use hmac::block_api::HmacCore;
use hmac::digest::block_api::CoreProxy;
use hmac::{EagerHash, Hmac, KeyInit, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::wiped::WipedBytes;

/// The longest key accepted, in bytes. Longer than any hash block (SHA-512's
/// is 128 bytes) buys nothing: HMAC would hash it down first.
pub const MAX_KEY_LEN: usize = 128;

/// Why key material was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is {len} bytes, the limit is {MAX_KEY_LEN}")]
    TooLong { len: usize },
    #[error("key is not hexadecimal: {0}")]
    NotHex(hex::FromHexError),
}

/// Key material of a device: zeroized on drop, never printed, compared in
/// constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey(Box<[u8]>);

impl PartialEq for SecretKey {
    /// Constant time in the contents (the length is public: the device
    /// kind fixes it).
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SecretKey {}

impl SecretKey {
    /// Takes ownership of raw key bytes (1 to [`MAX_KEY_LEN`] bytes).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        // Wrap first so that the bytes are zeroized on the error paths too.
        let bytes = Zeroizing::new(bytes);
        match bytes.len() {
            0 => Err(KeyError::Empty),
            len if len > MAX_KEY_LEN => Err(KeyError::TooLong { len }),
            _ => Ok(Self(bytes.as_slice().into())),
        }
    }

    /// Takes a key of a length fixed at compile time (1 to
    /// [`MAX_KEY_LEN`] bytes, checked when this compiles); the array is
    /// wiped.
    pub fn from_array<const N: usize>(mut bytes: [u8; N]) -> Self {
        const { assert!(N >= 1 && N <= MAX_KEY_LEN) };
        let key = Self(bytes.as_slice().into());
        bytes.zeroize();
        key
    }

    /// Parses a key written in hexadecimal (either case).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(KeyError::NotHex)?;
        Self::from_bytes(bytes)
    }

    /// The raw key bytes. Named so that every use stands out in review.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Key length in bytes (not secret: it is fixed by the device kind).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: an empty key cannot be built.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("len", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// The hash functions that OCRA, HOTP and TOTP are defined over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Plain hash of `data` (OCRA hashes the PIN this way).
    pub fn hash(self, data: &[u8]) -> MacOutput {
        match self {
            Self::Sha1 => MacOutput::from_bytes(&Sha1::digest(data)),
            Self::Sha256 => MacOutput::from_bytes(&Sha256::digest(data)),
            Self::Sha512 => MacOutput::from_bytes(&Sha512::digest(data)),
        }
    }

    /// The name as OCRA suites spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown hash name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm {0:?} (expected SHA1, SHA256 or SHA512)")]
pub struct UnknownHash(pub String);

impl FromStr for HashAlgorithm {
    type Err = UnknownHash;

    /// Accepts `SHA1`, `SHA256`, `SHA512` in any case (the CLI's `sha256`
    /// and the suite's `SHA256` alike); the OCRA suite parser is stricter.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_uppercase().as_str() {
            "SHA1" => Ok(Self::Sha1),
            "SHA256" => Ok(Self::Sha256),
            "SHA512" => Ok(Self::Sha512),
            _ => Err(UnknownHash(text.to_owned())),
        }
    }
}

/// An HMAC key with its inner and outer hash states already computed.
///
/// HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)). The two key blocks do not
/// depend on the message, so hashing them once per key and cloning the state
/// per message saves two compression rounds per verification (see the
/// `verify` bench). The state is key-equivalent and is zeroized on drop.
///
/// Only the two chaining states are kept (the `hmac` crate's block-level
/// `HmacCore`: 80 bytes for SHA-256), not a whole `Hmac` with its empty
/// block buffer (144): every enrolled device holds one, ten million of
/// them in memory. SHA-512 keys, rare and twice the size, are boxed so
/// they do not set the size of every key.
#[derive(Clone)]
pub struct HmacKey(KeyedState);

#[derive(Clone)]
enum KeyedState {
    Sha1(HmacCore<Sha1>),
    Sha256(HmacCore<Sha256>),
    Sha512(Box<HmacCore<Sha512>>),
}

impl HmacKey {
    /// Runs the key schedule for `algorithm` once.
    pub fn new(algorithm: HashAlgorithm, key: &SecretKey) -> Self {
        let key = key.expose_secret();
        let state = match algorithm {
            HashAlgorithm::Sha1 => KeyedState::Sha1(keyed(key)),
            HashAlgorithm::Sha256 => KeyedState::Sha256(keyed(key)),
            HashAlgorithm::Sha512 => KeyedState::Sha512(Box::new(keyed(key))),
        };
        Self(state)
    }

    /// The hash this key computes HMACs with.
    pub fn algorithm(&self) -> HashAlgorithm {
        match self.0 {
            KeyedState::Sha1(_) => HashAlgorithm::Sha1,
            KeyedState::Sha256(_) => HashAlgorithm::Sha256,
            KeyedState::Sha512(_) => HashAlgorithm::Sha512,
        }
    }

    /// HMAC of the concatenation of `parts`, in one pass from the saved state.
    pub fn mac(&self, parts: &[&[u8]]) -> MacOutput {
        fn run<D: EagerHash>(state: &HmacCore<D>, parts: &[&[u8]]) -> MacOutput
        where
            Hmac<D>: Mac + CoreProxy<Core = HmacCore<D>>,
        {
            // The saved chaining states with a fresh, empty block buffer:
            // exactly what `Hmac::new_from_slice` would have built.
            let mut mac = Hmac::<D>::compose(state.clone(), Default::default());
            for part in parts {
                mac.update(part);
            }
            MacOutput::from_bytes(&mac.finalize().into_bytes())
        }
        match &self.0 {
            KeyedState::Sha1(state) => run(state, parts),
            KeyedState::Sha256(state) => run(state, parts),
            KeyedState::Sha512(state) => run(state, parts),
        }
    }
}

// HMAC accepts keys of any length (RFC 2104 §3) and the `hmac` crate's
// `new_from_slice` has no error path. A fallback key would be far worse than
// this unreachable panic: it would verify answers made without the secret.
#[allow(clippy::expect_used)]
fn keyed<M: KeyInit>(key: &[u8]) -> M {
    M::new_from_slice(key).expect("HMAC accepts keys of any length")
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// A hash or HMAC output (at most 64 bytes), held on the stack and wiped
/// on drop.
#[derive(Clone)]
pub struct MacOutput(WipedBytes<64>);

impl MacOutput {
    /// Holds a copy of `bytes` (at most 64 are kept).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut out = WipedBytes::new();
        out.push_with(bytes.len().min(64), |slot| {
            for (to, from) in slot.iter_mut().zip(bytes) {
                *to = *from;
            }
        });
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for MacOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MacOutput")
            .field("len", &self.0.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_key_bytes() {
        let key = SecretKey::from_hex("3132333435363738393031323334353637383930").unwrap();
        let hmac = HmacKey::new(HashAlgorithm::Sha256, &key);
        for text in [format!("{key:?}"), format!("{hmac:?}")] {
            assert!(!text.contains("31"), "{text}");
            assert!(!text.contains("49"), "{text}");
        }
        assert_eq!(format!("{key:?}"), "SecretKey { len: 20, .. }");
    }

    #[test]
    fn a_fixed_size_key_is_the_same_key() {
        let key = SecretKey::from_array([7u8; 32]);
        assert_eq!(key, SecretKey::from_bytes(vec![7; 32]).unwrap());
    }

    #[test]
    fn key_length_is_bounded() {
        assert_eq!(SecretKey::from_bytes(vec![]).unwrap_err(), KeyError::Empty);
        assert_eq!(
            SecretKey::from_bytes(vec![7; MAX_KEY_LEN]).unwrap().len(),
            MAX_KEY_LEN
        );
        assert_eq!(
            SecretKey::from_bytes(vec![7; MAX_KEY_LEN + 1]).unwrap_err(),
            KeyError::TooLong {
                len: MAX_KEY_LEN + 1
            }
        );
        assert!(matches!(
            SecretKey::from_hex("zz"),
            Err(KeyError::NotHex(_))
        ));
    }

    #[test]
    fn precomputed_state_equals_fresh_hmac() {
        // RFC 4231 test case 2: key "Jefe".
        let key = SecretKey::from_bytes(b"Jefe".to_vec()).unwrap();
        let hmac = HmacKey::new(HashAlgorithm::Sha256, &key);
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        let whole = hmac.mac(&[b"what do ya want for nothing?"]);
        let split = hmac.mac(&[b"what do ya ", b"", b"want for nothing?"]);
        assert_eq!(hex::encode(whole.as_bytes()), expected);
        assert_eq!(hex::encode(split.as_bytes()), expected);
    }
}
