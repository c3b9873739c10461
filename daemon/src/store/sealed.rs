//! Secrets at rest: sealed with XChaCha20-Poly1305 under the deployment's
//! key file, bound to what they belong to (the additional data).
//!
//! A sealed value is `nonce (24 bytes) | ciphertext | tag (16 bytes)`. The
//! nonce is random; 192 bits make reuse negligible without a counter.

use std::fmt;
use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key, KeyInit, XChaCha20Poly1305, XNonce};
use rand::CryptoRng;
use zeroize::Zeroizing;

const NONCE_BYTES: usize = 24;
const KEY_BYTES: usize = 32;

/// Why sealing, opening, or the key file failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {0} must hold exactly 32 bytes")]
    KeyLength(String),
    #[error("sealed value is damaged or was sealed under another key")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// The deployment's at-rest key, ready to seal and open, and a key derived
/// from it for digests of personal data and PINs (`digest`).
pub struct SecretCipher(XChaCha20Poly1305, Zeroizing<[u8; KEY_BYTES]>);

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretCipher(..)")
    }
}

impl SecretCipher {
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        let digest_key = keyed_digest(key, b"sls/1 digest key", &[]);
        Self(
            XChaCha20Poly1305::new(&Key::from(*key)),
            Zeroizing::new(digest_key),
        )
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed, so no two lists give
    /// the same input) under a key derived from the key file, bound to
    /// `purpose`. Identification data and app PINs are kept only as such
    /// digests: a copy of the database without the key file cannot test
    /// guesses against them.
    pub fn digest(&self, purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
        keyed_digest(self.1.as_slice(), purpose.as_bytes(), parts)
    }

    /// Loads the key file at `path`, creating it (mode 0600, from `rng`)
    /// if it does not exist.
    pub fn load_or_create<R: CryptoRng + ?Sized>(
        path: &Path,
        rng: &mut R,
    ) -> Result<Self, SealError> {
        let io = |source| SealError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        if !path.exists() {
            let mut key = Zeroizing::new([0u8; KEY_BYTES]);
            rng.fill_bytes(key.as_mut_slice());
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(io)?;
            file.write_all(key.as_slice()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let key: &[u8; KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| SealError::KeyLength(path.display().to_string()))?;
        Ok(Self::new(key))
    }

    /// Seals `secret`, bound to `context`.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        secret: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: secret,
                    aad: context,
                },
            )
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed with [`seal`](Self::seal) under the same context.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_BYTES>()
            .ok_or(SealError::Open)?;
        self.0
            .decrypt(
                &XNonce::from(*nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Open)
    }
}

fn keyed_digest(key: &[u8], purpose: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac};
    // HMAC takes keys of any length; the error arm cannot happen.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(key) else {
        return [0; 32];
    };
    mac.update(&(purpose.len() as u64).to_be_bytes());
    mac.update(purpose);
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn digests_depend_on_key_purpose_and_every_part() {
        let cipher = SecretCipher::new(&[7; 32]);
        let other = SecretCipher::new(&[8; 32]);
        let d = cipher.digest("identity", &[b"1970-01-01", b"CH"]);
        assert_eq!(d, cipher.digest("identity", &[b"1970-01-01", b"CH"]));
        assert_ne!(d, other.digest("identity", &[b"1970-01-01", b"CH"]));
        assert_ne!(d, cipher.digest("pin", &[b"1970-01-01", b"CH"]));
        assert_ne!(d, cipher.digest("identity", &[b"1970-01-0", b"1CH"]));
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_context() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let cipher = SecretCipher::new(&[7; 32]);
        let sealed = cipher.seal(&mut rng, b"card secret", b"device 1").unwrap();
        assert!(!sealed.windows(11).any(|w| w == b"card secret"));
        assert_eq!(
            cipher.open(&sealed, b"device 1").unwrap().as_slice(),
            b"card secret"
        );
        assert!(cipher.open(&sealed, b"device 2").is_err());
        assert!(
            SecretCipher::new(&[8; 32])
                .open(&sealed, b"device 1")
                .is_err()
        );
        let mut damaged = sealed.clone();
        damaged[30] ^= 1;
        assert!(cipher.open(&damaged, b"device 1").is_err());
        assert!(cipher.open(&sealed[..10], b"device 1").is_err());
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let first = SecretCipher::load_or_create(&path, &mut rng).unwrap();
        let sealed = first.seal(&mut rng, b"x", b"c").unwrap();
        let second = SecretCipher::load_or_create(&path, &mut rng).unwrap();
        assert_eq!(second.open(&sealed, b"c").unwrap().as_slice(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SecretCipher::load_or_create(&path, &mut rng),
            Err(SealError::KeyLength(_))
        ));
    }
}
