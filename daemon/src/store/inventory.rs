//! The token inventory both stores keep: imported hardware tokens by
//! serial, each unassigned, assigned to a user's device, or retired, and
//! the imports that brought them.
//!
//! An import arrives in batches (a million tokens do not fit one frame)
//! and is all or nothing: its tokens are written *staged* under its id,
//! invisible to listings and assignment, and become the inventory's when
//! the import commits — one small record, whatever the import's size. A
//! serial already held by the inventory, or by another import under way,
//! refuses the batch, and the engine then drops the whole import. An
//! import left staged longer than `tokens.import-stale-after` (its
//! importer gone) is dropped when the next import begins.
//!
//! A token's key is sealed into its record, bound to its serial; it is
//! opened only to enrol the token as a device.

use rand::CryptoRng;

use crate::clock::Timestamp;
use crate::identity::Serial;
use crate::otp::SecretKey;
use crate::store::StoreError;
use crate::store::records::DeviceCodec;
use crate::wire::codec::{Put, Reader};
use crate::wire::token::TokenInfo;
pub use crate::wire::token::{TokenFilter, TokenState};

/// An import's number, chosen at random when its first batch arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImportId(pub u64);

/// A token as the inventory keeps it (its key stays sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryToken {
    pub info: TokenInfo,
    pub import: ImportId,
    pub imported_at: Timestamp,
    pub state: TokenState,
}

/// Whether an import's tokens are the inventory's yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportState {
    /// Batches arriving: `count` tokens so far.
    Staged { started: Timestamp, count: u64 },
    /// The inventory's: `count` tokens.
    Committed { at: Timestamp, count: u64 },
}

impl ImportState {
    pub fn count(self) -> u64 {
        match self {
            Self::Staged { count, .. } | Self::Committed { count, .. } => count,
        }
    }
}

/// What staging a batch found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// Every token written; the import holds this many now.
    Done(u64),
    /// This serial is the inventory's, or another import's: nothing written.
    Taken(Serial),
}

const TOKEN_V1: u8 = 1;

fn token_context(serial: &Serial) -> Vec<u8> {
    format!("sls/1 token {serial} secret").into_bytes()
}

impl DeviceCodec {
    /// A token's record, its key sealed to its serial.
    pub(in crate::store) fn encode_token<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        token: &InventoryToken,
        key: &SecretKey,
    ) -> Result<Vec<u8>, StoreError> {
        let sealed =
            self.cipher
                .seal(rng, key.expose_secret(), &token_context(&token.info.serial))?;
        Ok(encode_token_with(token, &sealed))
    }

    /// A token record read back, and its key still sealed.
    pub(in crate::store) fn decode_token(
        &self,
        bytes: &[u8],
    ) -> Result<(InventoryToken, Vec<u8>), StoreError> {
        let corrupt = |problem: String| StoreError::Corrupt { device: 0, problem };
        let mut r = Reader::new(bytes);
        let read =
            |r: &mut Reader<'_>| -> Result<(InventoryToken, Vec<u8>), crate::wire::DecodeError> {
                if r.u8("version")? != TOKEN_V1 {
                    return Err(crate::wire::DecodeError::invalid("version", "unknown"));
                }
                let import = ImportId(r.u64("import")?);
                let imported_at = Timestamp(r.u64("imported at")?);
                let state = TokenState::read(r)?;
                let info = TokenInfo::read(r)?;
                let sealed = r.bytes("key")?.to_vec();
                Ok((
                    InventoryToken {
                        info,
                        import,
                        imported_at,
                        state,
                    },
                    sealed,
                ))
            };
        let decoded = read(&mut r).map_err(|e| corrupt(format!("token record: {e}")))?;
        r.finish()
            .map_err(|e| corrupt(format!("token record: {e}")))?;
        Ok(decoded)
    }

    /// A token record with its key re-sealed under the active key
    /// (`records`' re-seals); `None` when it already is.
    pub(in crate::store) fn reseal_token<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (token, sealed) = self.decode_token(bytes)?;
        let resealed = self
            .cipher
            .reseal(rng, &sealed, &token_context(&token.info.serial))?;
        Ok(resealed.map(|sealed| encode_token_with(&token, &sealed)))
    }

    /// The key of a token record, opened.
    pub(in crate::store) fn open_token_key(
        &self,
        serial: &Serial,
        sealed: &[u8],
    ) -> Result<SecretKey, StoreError> {
        let key = self.cipher.open(sealed, &token_context(serial))?;
        SecretKey::from_bytes(key.to_vec()).map_err(|e| StoreError::Corrupt {
            device: 0,
            problem: format!("token {serial} key: {e}"),
        })
    }
}

/// A token's record around an already sealed key (a state change keeps
/// the sealed key as it is).
pub(in crate::store) fn encode_token_with(token: &InventoryToken, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.put_u8(TOKEN_V1);
    out.put_u64(token.import.0);
    out.put_u64(token.imported_at.0);
    token.state.put(&mut out);
    token.info.put(&mut out);
    out.put_bytes(sealed);
    out
}

pub(in crate::store) fn encode_import(state: ImportState) -> Vec<u8> {
    let mut out = vec![1u8];
    let (tag, at, count) = match state {
        ImportState::Staged { started, count } => (0, started, count),
        ImportState::Committed { at, count } => (1, at, count),
    };
    out.put_u8(tag);
    out.put_u64(at.0);
    out.put_u64(count);
    out
}

pub(in crate::store) fn decode_import(bytes: &[u8]) -> Option<ImportState> {
    let mut r = Reader::new(bytes);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let tag = r.u8("state").ok()?;
    let at = Timestamp(r.u64("at").ok()?);
    let count = r.u64("count").ok()?;
    let state = match tag {
        0 => ImportState::Staged { started: at, count },
        1 => ImportState::Committed { at, count },
        _ => return None,
    };
    r.finish().ok()?;
    Some(state)
}
