//! Secrets at rest: sealed with XChaCha20-Poly1305 under the deployment's
//! keyring, bound to what they belong to (the additional data).
//!
//! A sealed value is `nonce (24 bytes) | ciphertext | tag (16 bytes)`,
//! preceded, once the deployment has rotated its key, by `"slsk" | key id
//! (u32, big-endian)`. A value without that header was sealed under key 0,
//! the key of a deployment that never rotated: such a deployment writes
//! exactly what earlier releases read. The nonce is random; 192 bits make
//! reuse negligible without a counter.
//!
//! The keyring is the data directory's `secrets.key`: 32 bytes (key 0,
//! the file earlier releases made and read) until the first rotation, then
//! a short text file naming each key, the one new seals use (`active`) and
//! those still being re-sealed away from (`retiring`), and the digest key.
//! Rotation ([`SecretCipher::rotate`]) and retirement
//! ([`SecretCipher::retire`]) replace the file whole (a new file, fsync,
//! rename), so a crash leaves either the old keyring or the new one.
//!
//! The digest key (identification digests, erasure pseudonyms, record
//! tags, RADIUS states) is derived from key 0 once and kept as it is by
//! every rotation: a digest cannot be recomputed without what it digests,
//! which sls does not keep.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{Key as AeadKey, KeyInit, XChaCha20Poly1305, XNonce};
use rand::CryptoRng;
use zeroize::Zeroizing;

const NONCE_BYTES: usize = 24;
const KEY_BYTES: usize = 32;
/// What starts a value sealed under a key other than key 0.
const MAGIC: [u8; 4] = *b"slsk";
const HEADER_BYTES: usize = MAGIC.len() + 4;
/// The first line of a keyring file (a 32-byte file is key 0 alone).
const KEYRING_LINE: &str = "sls-keyring 1";

/// Which key of the keyring sealed a value.
pub type KeyId = u32;

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
    #[error("keyring {path}: {problem}")]
    Keyring { path: String, problem: String },
    #[error("sealed value is damaged or was sealed under another key")]
    Open,
    #[error("sealed under key {0}, which this node's keyring does not hold")]
    UnknownKey(KeyId),
    #[error("sealing failed")]
    Seal,
}

/// A key of the keyring sealed under another (`SecretCipher::wrapped`).
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub key: KeyId,
    pub under: KeyId,
    pub sealed: Vec<u8>,
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wrapped(key {} under {})", self.key, self.under)
    }
}

/// A keyring's keys, not necessarily the one in use (`SecretCipher::
/// rotated`, `SecretCipher::state`): what a cluster node publishes.
pub struct KeyringState(Ring);

impl fmt::Debug for KeyringState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyringState(active {}, {:?})",
            self.active(),
            self.held()
        )
    }
}

impl KeyringState {
    pub fn active(&self) -> KeyId {
        self.0.active
    }

    /// Every key id it holds, the active one among them.
    pub fn held(&self) -> Vec<KeyId> {
        self.0.keys.iter().map(|k| k.id).collect()
    }

    /// Every key sealed under every other one: what a node that holds any
    /// of them needs to learn the rest (`SecretCipher::adopt`), without a
    /// key ever leaving a node in clear.
    pub fn wrapped<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<Vec<Wrapped>, SealError> {
        let keys = &self.0.keys;
        let mut out = Vec::new();
        for key in keys {
            for under in keys.iter().filter(|k| k.id != key.id) {
                let context = wrap_context(key.id, under.id);
                out.push(Wrapped {
                    key: key.id,
                    under: under.id,
                    sealed: seal_under(under, rng, key.bytes.as_slice(), &context)?,
                });
            }
        }
        Ok(out)
    }
}

/// What following another node's keyring did (`SecretCipher::adopt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    Unchanged,
    Changed,
    /// The deployment's active key, which this node cannot learn: none of
    /// the keys it holds opens it.
    Missing(KeyId),
}

/// What a key sealed under another is bound to.
fn wrap_context(key: KeyId, under: KeyId) -> Vec<u8> {
    format!("sls/1 keyring key {key} under {under}").into_bytes()
}

/// One key of the keyring.
struct RingKey {
    id: KeyId,
    aead: XChaCha20Poly1305,
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

impl RingKey {
    fn new(id: KeyId, bytes: &[u8; KEY_BYTES]) -> Self {
        Self {
            id,
            aead: XChaCha20Poly1305::new(&AeadKey::from(*bytes)),
            bytes: Zeroizing::new(*bytes),
        }
    }
}

/// The keys a node holds, swapped whole by a rotation or a retirement.
struct Ring {
    active: KeyId,
    /// Ordered by id; the active one among them.
    keys: Vec<Arc<RingKey>>,
}

impl Ring {
    fn key(&self, id: KeyId) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.id == id).map(|k| k.as_ref())
    }
}

struct Inner {
    ring: ArcSwap<Ring>,
    digest_key: Zeroizing<[u8; KEY_BYTES]>,
    /// Where the keyring is kept (`None`: in memory only, for tests).
    file: Option<PathBuf>,
    /// Held while the file is replaced: one rotation or retirement at a time.
    writing: Mutex<()>,
}

/// The deployment's at-rest keyring, ready to seal and open, and a key
/// derived from key 0 for digests of personal data and PINs (`digest`).
/// Clones share the keyring: a rotation is seen by every holder at once.
#[derive(Clone)]
pub struct SecretCipher(Arc<Inner>);

impl fmt::Debug for SecretCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretCipher(..)")
    }
}

impl SecretCipher {
    /// A keyring of key 0 alone, kept in memory.
    pub fn new(key: &[u8; KEY_BYTES]) -> Self {
        Self::from_parts(
            keyed_digest(key, b"sls/1 digest key", &[]),
            0,
            vec![Arc::new(RingKey::new(0, key))],
            None,
        )
    }

    fn from_parts(
        digest_key: [u8; KEY_BYTES],
        active: KeyId,
        keys: Vec<Arc<RingKey>>,
        file: Option<PathBuf>,
    ) -> Self {
        Self(Arc::new(Inner {
            ring: ArcSwap::from_pointee(Ring { active, keys }),
            digest_key: Zeroizing::new(digest_key),
            file,
            writing: Mutex::new(()),
        }))
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed, so no two lists give
    /// the same input) under a key derived from key 0, bound to `purpose`.
    /// Identification data and app PINs are kept only as such digests: a
    /// copy of the database without the key file cannot test guesses
    /// against them.
    pub fn digest(&self, purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
        keyed_digest(self.0.digest_key.as_slice(), purpose.as_bytes(), parts)
    }

    /// Loads the keyring at `path`, creating it (key 0, mode 0600, from
    /// `rng`) if it does not exist.
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
            let mut file = private_file(path).map_err(io)?;
            file.write_all(key.as_slice()).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
        if let Ok(key) = <&[u8; KEY_BYTES]>::try_from(bytes.as_slice()) {
            let cipher = Self::new(key);
            return Ok(Self::from_parts(
                *cipher.0.digest_key,
                0,
                cipher.0.ring.load().keys.clone(),
                Some(path.to_owned()),
            ));
        }
        if !bytes.starts_with(KEYRING_LINE.as_bytes()) {
            return Err(SealError::KeyLength(path.display().to_string()));
        }
        let (digest_key, active, keys) =
            parse_keyring(&bytes).map_err(|problem| SealError::Keyring {
                path: path.display().to_string(),
                problem,
            })?;
        Ok(Self::from_parts(
            digest_key,
            active,
            keys,
            Some(path.to_owned()),
        ))
    }

    /// The key new seals use.
    pub fn active(&self) -> KeyId {
        self.0.ring.load().active
    }

    /// The keys held besides the active one: values sealed under them are
    /// still opened, and re-sealed by the rotation pass.
    pub fn retiring(&self) -> Vec<KeyId> {
        let ring = self.0.ring.load();
        ring.keys
            .iter()
            .map(|k| k.id)
            .filter(|id| *id != ring.active)
            .collect()
    }

    /// Adds a new key, from `rng`, and makes it the one new seals use; the
    /// keys held before stay, retiring, until [`retire`](Self::retire).
    /// The file is replaced before memory changes: a crash in between
    /// starts with the new key.
    pub fn rotate<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<KeyId, SealError> {
        // Held from reading the ring to replacing it: two rotations at
        // once cannot both make a key of one id.
        let _writing = self
            .0
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let rotated = self.rotated(rng)?;
        let id = rotated.active();
        self.replace(rotated.0)?;
        Ok(id)
    }

    /// The keyring a rotation would make (a new key, from `rng`, active),
    /// not yet in use: a cluster node publishes it first
    /// ([`apply`](Self::apply) once the deployment has it).
    pub fn rotated<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<KeyringState, SealError> {
        let ring = self.0.ring.load();
        let id = ring
            .keys
            .iter()
            .map(|k| k.id)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or(SealError::Seal)?;
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        rng.fill_bytes(bytes.as_mut_slice());
        let mut keys = ring.keys.clone();
        keys.push(Arc::new(RingKey::new(id, &bytes)));
        Ok(KeyringState(Ring { active: id, keys }))
    }

    /// Makes `state` (from [`rotated`](Self::rotated)) the keyring, the
    /// file first, then memory — unless the keyring has meanwhile moved to
    /// a newer active key (learned from the deployment), which holds
    /// every key `state` does: a keyring never goes back.
    pub fn apply(&self, state: KeyringState) -> Result<(), SealError> {
        let _writing = self
            .0
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.active() <= self.active() {
            return Ok(());
        }
        self.replace(state.0)
    }

    /// The keyring as it will be once the retiring keys are dropped.
    pub fn retired_state(&self) -> KeyringState {
        let ring = self.0.ring.load();
        KeyringState(Ring {
            active: ring.active,
            keys: ring
                .keys
                .iter()
                .filter(|k| k.id == ring.active)
                .cloned()
                .collect(),
        })
    }

    /// The keyring as it is now.
    pub fn state(&self) -> KeyringState {
        let ring = self.0.ring.load();
        KeyringState(Ring {
            active: ring.active,
            keys: ring.keys.clone(),
        })
    }

    /// Drops every key but the active one: call it once nothing sealed
    /// under them is left. Which keys were dropped.
    pub fn retire(&self) -> Result<Vec<KeyId>, SealError> {
        let _writing = self
            .0
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ring = self.0.ring.load();
        let (kept, dropped): (Vec<_>, Vec<_>) =
            ring.keys.iter().cloned().partition(|k| k.id == ring.active);
        if dropped.is_empty() {
            return Ok(Vec::new());
        }
        self.replace(Ring {
            active: ring.active,
            keys: kept,
        })?;
        Ok(dropped.iter().map(|k| k.id).collect())
    }

    /// Writes `ring` to the keyring file (whole: a new file, fsync, rename,
    /// the directory's fsync), then makes it the one in use.
    fn replace(&self, ring: Ring) -> Result<(), SealError> {
        if let Some(path) = &self.0.file {
            let io = |source| SealError::KeyFile {
                path: path.display().to_string(),
                source,
            };
            let text = keyring_text(&self.0.digest_key, &ring);
            let fresh = path.with_extension("key.new");
            let _ = std::fs::remove_file(&fresh);
            let mut file = private_file(&fresh).map_err(io)?;
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            drop(file);
            std::fs::rename(&fresh, path).map_err(io)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
        }
        self.0.ring.store(Arc::new(ring));
        Ok(())
    }

    /// Follows a keyring another node published: learns the keys of
    /// `wrapped` this node can open (under keys it holds, or learns on the
    /// way), makes `active` the active key, and drops the keys `listed`
    /// does not name (retired there). Nothing changes when `active` cannot
    /// be learned: this node then needs the keyring file copied to it.
    pub fn adopt(
        &self,
        active: KeyId,
        listed: &[KeyId],
        wrapped: &[Wrapped],
    ) -> Result<Adopted, SealError> {
        let _writing = self
            .0
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ring = self.0.ring.load();
        if active < ring.active {
            // A record older than what this node holds: never go back.
            return Ok(Adopted::Unchanged);
        }
        let mut keys = ring.keys.clone();
        // A key learned may open another: go round until nothing is new.
        loop {
            let mut learned = false;
            for entry in wrapped {
                if keys.iter().any(|k| k.id == entry.key) {
                    continue;
                }
                let Some(under) = keys.iter().find(|k| k.id == entry.under) else {
                    continue;
                };
                let context = wrap_context(entry.key, entry.under);
                let body = match entry.under {
                    0 => entry.sealed.as_slice(),
                    _ => split_header(&entry.sealed).ok_or(SealError::Open)?.1,
                };
                let opened = decrypt(under, body, &context)?;
                let bytes: &[u8; KEY_BYTES] =
                    opened.as_slice().try_into().map_err(|_| SealError::Open)?;
                keys.push(Arc::new(RingKey::new(entry.key, bytes)));
                learned = true;
            }
            if !learned {
                break;
            }
        }
        if !keys.iter().any(|k| k.id == active) {
            return Ok(Adopted::Missing(active));
        }
        keys.retain(|k| k.id == active || listed.contains(&k.id));
        keys.sort_by_key(|k| k.id);
        let same =
            ring.active == active && keys.iter().map(|k| k.id).eq(ring.keys.iter().map(|k| k.id));
        if same {
            return Ok(Adopted::Unchanged);
        }
        self.replace(Ring { active, keys })?;
        Ok(Adopted::Changed)
    }

    /// Seals `secret`, bound to `context`, under the active key.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        secret: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let ring = self.0.ring.load();
        let key = ring.key(ring.active).ok_or(SealError::Seal)?;
        seal_under(key, rng, secret, context)
    }

    /// Opens a value sealed with [`seal`](Self::seal) under the same
    /// context, by any key the keyring holds.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let ring = self.0.ring.load();
        let mut unknown = None;
        if let Some((id, rest)) = split_header(sealed) {
            match ring.key(id) {
                Some(key) => {
                    if let Ok(opened) = decrypt(key, rest, context) {
                        return Ok(opened);
                    }
                }
                None => unknown = Some(id),
            }
        }
        // No header (or one that a random nonce happened to start with):
        // key 0's, if it is still held. The tag decides either way.
        if let Some(key) = ring.key(0)
            && let Ok(opened) = decrypt(key, sealed, context)
        {
            return Ok(opened);
        }
        Err(unknown.map_or(SealError::Open, SealError::UnknownKey))
    }

    /// Whether `sealed` is under a key other than the active one (read from
    /// its header, without opening it).
    pub fn needs_reseal(&self, sealed: &[u8]) -> bool {
        let active = self.active();
        match split_header(sealed) {
            Some((id, _)) => id != active,
            // A deployment that never rotated seals without a header.
            None => active != 0,
        }
    }

    /// `sealed` opened and sealed again under the active key, bound to the
    /// same `context`; `None` when it already is under the active key.
    pub fn reseal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        sealed: &[u8],
        context: &[u8],
    ) -> Result<Option<Vec<u8>>, SealError> {
        if sealed.is_empty() || !self.needs_reseal(sealed) {
            return Ok(None);
        }
        let opened = self.open(sealed, context)?;
        self.seal(rng, &opened, context).map(Some)
    }
}

/// `secret` sealed under `key`, with the key's header unless it is key 0.
fn seal_under<R: CryptoRng + ?Sized>(
    key: &RingKey,
    rng: &mut R,
    secret: &[u8],
    context: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_BYTES];
    rng.fill_bytes(&mut nonce);
    let sealed = key
        .aead
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: secret,
                aad: context,
            },
        )
        .map_err(|_| SealError::Seal)?;
    let mut out = Vec::with_capacity(HEADER_BYTES + NONCE_BYTES + sealed.len());
    if key.id != 0 {
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&key.id.to_be_bytes());
    }
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A key id and the rest, if `sealed` starts with a header.
fn split_header(sealed: &[u8]) -> Option<(KeyId, &[u8])> {
    let (magic, rest) = sealed.split_first_chunk::<4>()?;
    if *magic != MAGIC {
        return None;
    }
    let (id, rest) = rest.split_first_chunk::<4>()?;
    Some((KeyId::from_be_bytes(*id), rest))
}

fn decrypt(key: &RingKey, sealed: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let (nonce, ciphertext) = sealed
        .split_first_chunk::<NONCE_BYTES>()
        .ok_or(SealError::Open)?;
    key.aead
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

/// A new file only its owner may read.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// The keyring file's text: its first line, the digest key, each key with
/// its state.
fn keyring_text(digest_key: &[u8; KEY_BYTES], ring: &Ring) -> Zeroizing<String> {
    let mut text = Zeroizing::new(format!(
        "{KEYRING_LINE}\n# sls at-rest keys: keep this file private, and beside (not inside) backups\n"
    ));
    text.push_str("digest ");
    text.push_str(&Zeroizing::new(hex::encode(digest_key)));
    text.push('\n');
    for key in &ring.keys {
        let state = if key.id == ring.active {
            "active"
        } else {
            "retiring"
        };
        text.push_str(&format!("key {} {state} ", key.id));
        text.push_str(&Zeroizing::new(hex::encode(key.bytes.as_slice())));
        text.push('\n');
    }
    text
}

type Parsed = ([u8; KEY_BYTES], KeyId, Vec<Arc<RingKey>>);

/// Reads a keyring file's text (the digest key, the active key, the keys).
fn parse_keyring(bytes: &[u8]) -> Result<Parsed, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?;
    let key_bytes = |hex_text: &str| -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
        let mut out = Zeroizing::new([0u8; KEY_BYTES]);
        hex::decode_to_slice(hex_text, out.as_mut_slice())
            .map_err(|_| "a key is not 64 hex digits".to_owned())?;
        Ok(out)
    };
    let mut digest_key = None;
    let mut active = None;
    let mut keys: Vec<Arc<RingKey>> = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["digest", hex_text] => digest_key = Some(*key_bytes(hex_text)?),
            ["key", id, state, hex_text] => {
                let id: KeyId = id
                    .parse()
                    .map_err(|_| format!("line {}: key id {id:?}", number + 1))?;
                if keys.iter().any(|k| k.id == id) {
                    return Err(format!("line {}: key {id} twice", number + 1));
                }
                match *state {
                    "active" if active.is_some() => {
                        return Err(format!("line {}: a second active key", number + 1));
                    }
                    "active" => active = Some(id),
                    "retiring" => {}
                    other => return Err(format!("line {}: state {other:?}", number + 1)),
                }
                keys.push(Arc::new(RingKey::new(id, &*key_bytes(hex_text)?)));
            }
            _ => return Err(format!("line {}: not understood", number + 1)),
        }
    }
    let digest_key = digest_key.ok_or("no digest key")?;
    let active = active.ok_or("no active key")?;
    keys.sort_by_key(|k| k.id);
    Ok((digest_key, active, keys))
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
    fn a_rotation_seals_under_the_new_key_and_retiring_drops_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let cipher = SecretCipher::load_or_create(&path, &mut rng).unwrap();
        let digest = cipher.digest("identity", &[b"x"]);
        // Before any rotation: no header, what earlier releases read.
        let old = cipher.seal(&mut rng, b"card secret", b"device 1").unwrap();
        assert_eq!(old.len(), 24 + 11 + 16);
        assert!(!cipher.needs_reseal(&old));

        assert_eq!(cipher.rotate(&mut rng).unwrap(), 1);
        assert_eq!((cipher.active(), cipher.retiring()), (1, vec![0]));
        let new = cipher.seal(&mut rng, b"card secret", b"device 1").unwrap();
        assert_eq!(new.get(..8).unwrap(), b"slsk\0\0\0\x01");
        assert!(cipher.needs_reseal(&old) && !cipher.needs_reseal(&new));
        assert_eq!(
            cipher.open(&old, b"device 1").unwrap().as_slice(),
            b"card secret"
        );
        let resealed = cipher.reseal(&mut rng, &old, b"device 1").unwrap().unwrap();
        assert!(
            cipher
                .reseal(&mut rng, &resealed, b"device 1")
                .unwrap()
                .is_none()
        );
        assert!(cipher.open(&resealed, b"device 2").is_err());

        // The file holds the new keyring: a restart reads it back.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("sls-keyring 1\n"), "{text}");
        let again = SecretCipher::load_or_create(&path, &mut rng).unwrap();
        assert_eq!((again.active(), again.retiring()), (1, vec![0]));
        assert_eq!(
            again.open(&old, b"device 1").unwrap().as_slice(),
            b"card secret"
        );

        assert_eq!(cipher.retire().unwrap(), vec![0]);
        assert!(matches!(
            cipher.open(&old, b"device 1"),
            Err(SealError::Open)
        ));
        assert_eq!(
            cipher.open(&resealed, b"device 1").unwrap().as_slice(),
            b"card secret"
        );
        // Digests do not change with the keys that seal.
        assert_eq!(cipher.digest("identity", &[b"x"]), digest);
        let restarted = SecretCipher::load_or_create(&path, &mut rng).unwrap();
        assert_eq!((restarted.active(), restarted.retiring()), (1, vec![]));
        assert!(restarted.open(&old, b"device 1").is_err());
        assert_eq!(
            restarted.open(&new, b"device 1").unwrap().as_slice(),
            b"card secret"
        );
        assert_eq!(restarted.digest("identity", &[b"x"]), digest);
        assert!(!std::fs::read_to_string(&path).unwrap().contains("retiring"));

        // A value under a key this node does not hold says which.
        let other = SecretCipher::new(&[1; 32]);
        other.rotate(&mut rng).unwrap();
        other.rotate(&mut rng).unwrap();
        let foreign = other.seal(&mut rng, b"x", b"c").unwrap();
        assert!(matches!(
            restarted.open(&foreign, b"c"),
            Err(SealError::UnknownKey(2))
        ));
    }

    /// What another node publishes is followed forward, never back: an
    /// older keyring, or a rotation overtaken by a newer one, changes
    /// nothing.
    #[test]
    fn a_keyring_never_goes_back() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let here = SecretCipher::new(&[1; 32]);
        let there = SecretCipher::new(&[1; 32]);
        let before = there.state();
        let stale = here.rotated(&mut rng).unwrap();
        there.rotate(&mut rng).unwrap();
        there.rotate(&mut rng).unwrap();
        let published = there.state();
        let wrapped = published.wrapped(&mut rng).unwrap();
        assert_eq!(
            here.adopt(2, &published.held(), &wrapped).unwrap(),
            Adopted::Changed
        );
        assert_eq!((here.active(), here.retiring()), (2, vec![0, 1]));
        // Its own rotation to key 1, made before it learned key 2.
        here.apply(stale).unwrap();
        assert_eq!((here.active(), here.retiring()), (2, vec![0, 1]));
        let old = before.wrapped(&mut rng).unwrap();
        assert_eq!(
            here.adopt(0, &before.held(), &old).unwrap(),
            Adopted::Unchanged
        );
        assert_eq!(here.active(), 2);
        // Retired there: dropped here, and not learned back.
        there.retire().unwrap();
        let retired = there.state();
        assert_eq!(
            here.adopt(2, &retired.held(), &retired.wrapped(&mut rng).unwrap())
                .unwrap(),
            Adopted::Changed
        );
        assert_eq!((here.active(), here.retiring()), (2, vec![]));
    }

    #[test]
    fn a_damaged_keyring_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let digest = "00".repeat(32);
        for (text, reason) in [
            (format!("sls-keyring 1\ndigest {digest}\n"), "no active key"),
            (
                format!("sls-keyring 1\nkey 1 active {digest}\n"),
                "no digest key",
            ),
            (
                format!("sls-keyring 1\ndigest {digest}\nkey 1 active 00ff\n"),
                "64 hex",
            ),
            (
                format!(
                    "sls-keyring 1\ndigest {digest}\nkey 1 active {digest}\nkey 2 active {digest}\n"
                ),
                "second active",
            ),
            (
                format!("sls-keyring 1\ndigest {digest}\nkey 1 spare {digest}\n"),
                "state",
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            let error = SecretCipher::load_or_create(&path, &mut rng).unwrap_err();
            assert!(error.to_string().contains(reason), "{error}");
        }
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
