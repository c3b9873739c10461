//! The token inventory on the cluster (`store::inventory` has the rules).
//!
//! Everything lives under one hash tag, `{tokens}`: the inventory is an
//! operator's, not a login's, so one slot's master serving it costs
//! nothing on the hot path, and a batch is one atomic transaction. A
//! token's record `sls:{tokens}:t:<serial>` (tagged like every record)
//! is created only if absent; an import's record `sls:{tokens}:i:<id>`
//! counts its tokens and flips from staged to committed. Two sets index
//! them for listings and for dropping an import: `sls:{tokens}:serials`
//! (every serial, sorted by the node that lists) and
//! `sls:{tokens}:i:<id>:serials`; both are written before the records,
//! so an index never misses a record (an entry without one is skipped).

use rand::CryptoRng;

use super::ClusterStore;
use super::redis::{Key, Op};
use crate::clock::Timestamp;
use crate::identity::Serial;
use crate::otp::SecretKey;
use crate::store::inventory::{
    ImportId, ImportState, InventoryToken, Staged, TokenFilter, TokenState, decode_import,
    encode_import, encode_token_with,
};
use crate::store::{Actor, StoreError};
use crate::wire::token::TokenInfo;

const TAG: &str = "tokens";
/// Token records read per round trip when listing.
const LIST_CHUNK: usize = 256;

fn token_key(serial: &Serial) -> Key {
    Key::new(TAG, &format!("t:{serial}"))
}

fn import_key(import: ImportId) -> Key {
    Key::new(TAG, &format!("i:{}", import.0))
}

fn import_serials_key(import: ImportId) -> Key {
    Key::new(TAG, &format!("i:{}:serials", import.0))
}

fn serials_key() -> Key {
    Key::new(TAG, "serials")
}

fn imports_key() -> Key {
    Key::new(TAG, "imports")
}

impl ClusterStore {
    /// An import's state and its record's version (0: none).
    async fn import_state(
        &self,
        import: ImportId,
    ) -> Result<(u64, Option<ImportState>), StoreError> {
        let key = import_key(import);
        let read = self.read_checked(&[&key]).await?;
        let Some(record) = read.into_iter().next() else {
            return Err(StoreError::Database("a short read".into()));
        };
        let state = match &record.value {
            Some(bytes) => Some(decode_import(bytes).ok_or_else(|| StoreError::Corrupt {
                device: 0,
                problem: format!("import record {}", import.0),
            })?),
            None => None,
        };
        Ok((record.version, state))
    }

    pub async fn stage_tokens<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        tokens: &[(TokenInfo, SecretKey)],
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Staged, StoreError> {
        let serials: Vec<&[u8]> = tokens
            .iter()
            .map(|(info, _)| info.serial.as_str().as_bytes())
            .collect();
        let id = import.0.to_be_bytes();
        self.redis.set_add_all(&imports_key(), &[&id], true).await?;
        self.redis
            .set_add_all(&import_serials_key(import), &serials, true)
            .await?;
        self.redis
            .set_add_all(&serials_key(), &serials, true)
            .await?;
        let keys: Vec<Key> = tokens
            .iter()
            .map(|(info, _)| token_key(&info.serial))
            .collect();
        let mut records = Vec::with_capacity(tokens.len());
        for ((info, key), record_key) in tokens.iter().zip(&keys) {
            let token = InventoryToken {
                info: info.clone(),
                import,
                imported_at: now,
                state: TokenState::Unassigned,
            };
            let value = self.codec.encode_token(rng, &token, key)?;
            records.push(Op::Set(self.tagged(record_key, 1, &value), None));
        }
        let import_record = import_key(import);
        let mut rounds = self.rounds();
        while rounds.next().await {
            let (version, state) = self.import_state(import).await?;
            let (started, count) = match state {
                None => (now, 0),
                Some(ImportState::Staged { started, count }) => (started, count),
                Some(ImportState::Committed { .. }) => {
                    return Err(StoreError::Database(format!(
                        "import {} is committed already",
                        import.0
                    )));
                }
            };
            let count = count.saturating_add(tokens.len() as u64);
            let next = ImportState::Staged { started, count };
            let next = self.tagged(&import_record, version + 1, &encode_import(next));
            let mut changes: Vec<(&Key, u64, Op)> = keys
                .iter()
                .zip(&records)
                .map(|(key, op)| (key, 0, op.clone()))
                .collect();
            changes.push((&import_record, version, Op::Set(next, None)));
            if self.redis.transact(&changes, true).await? {
                return Ok(Staged::Done(count));
            }
            // A token exists (nothing was written), or another batch of
            // this import moved its record: then try again.
            let key_refs: Vec<&Key> = keys.iter().collect();
            let present = self.redis.read_many(&key_refs).await?;
            if let Some(((info, _), _)) = tokens
                .iter()
                .zip(&present)
                .find(|(_, record)| record.version != 0)
            {
                return Ok(Staged::Taken(info.serial.clone()));
            }
        }
        Err(StoreError::Database(format!(
            "import {} kept changing under its batches",
            import.0
        )))
    }

    pub async fn commit_import(
        &self,
        import: ImportId,
        actor: Actor,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let key = import_key(import);
        let mut rounds = self.rounds();
        while rounds.next().await {
            let (version, state) = self.import_state(import).await?;
            let Some(ImportState::Staged { count, .. }) = state else {
                return Ok(None);
            };
            let next = ImportState::Committed { at: now, count };
            let value = self.tagged(&key, version + 1, &encode_import(next));
            if self
                .redis
                .transact(&[(&key, version, Op::Set(value, None))], true)
                .await?
            {
                // Committed, then audited (as withdrawals are): an audit
                // that fails fails the request; the tokens stay imported.
                let detail = format!("import {}: {count} tokens", import.0);
                self.audit_deployment(actor, now, "import-tokens", detail)
                    .await?;
                return Ok(Some(count));
            }
        }
        Err(StoreError::Database(format!(
            "import {} kept changing",
            import.0
        )))
    }

    pub async fn drop_import(&self, import: ImportId) -> Result<(), StoreError> {
        let key = import_key(import);
        // The record first: from then on no batch can add to the import.
        let mut rounds = self.rounds();
        loop {
            if !rounds.next().await {
                return Err(StoreError::Database(format!(
                    "import {} kept changing while it was dropped",
                    import.0
                )));
            }
            let (version, state) = self.import_state(import).await?;
            if !matches!(state, Some(ImportState::Staged { .. })) {
                return Ok(());
            }
            if self
                .redis
                .transact(&[(&key, version, Op::Delete)], true)
                .await?
            {
                break;
            }
        }
        let members = self.redis.members(&import_serials_key(import)).await?;
        for chunk in members.chunks(LIST_CHUNK) {
            let keys: Vec<Key> = chunk
                .iter()
                .filter_map(|m| Serial::new(&String::from_utf8_lossy(m)).ok())
                .map(|s| token_key(&s))
                .collect();
            let refs: Vec<&Key> = keys.iter().collect();
            let records = self.read_checked(&refs).await?;
            let mut doomed = Vec::new();
            let mut unindexed: Vec<&[u8]> = Vec::new();
            for ((key, record), member) in keys.iter().zip(&records).zip(chunk) {
                let Some(bytes) = &record.value else {
                    unindexed.push(member.as_slice());
                    continue;
                };
                let (token, _) = self.codec.decode_token(bytes)?;
                if token.import == import {
                    doomed.push(key);
                    unindexed.push(member.as_slice());
                }
            }
            if !doomed.is_empty() {
                self.redis.delete(&doomed, true).await?;
            }
            self.redis
                .set_remove_all(&serials_key(), &unindexed, true)
                .await?;
        }
        self.redis
            .delete(&[&import_serials_key(import)], true)
            .await?;
        self.redis
            .set_remove_all(&imports_key(), &[&import.0.to_be_bytes()], true)
            .await?;
        Ok(())
    }

    pub async fn stale_imports(&self, before: Timestamp) -> Result<Vec<ImportId>, StoreError> {
        let mut stale = Vec::new();
        for member in self.redis.members(&imports_key()).await? {
            let Ok(id) = <[u8; 8]>::try_from(member.as_slice()) else {
                continue;
            };
            let import = ImportId(u64::from_be_bytes(id));
            if let (_, Some(ImportState::Staged { started, .. })) =
                self.import_state(import).await?
                && started < before
            {
                stale.push(import);
            }
        }
        Ok(stale)
    }

    /// A committed token and its key.
    pub async fn token(
        &self,
        serial: &Serial,
    ) -> Result<Option<(InventoryToken, SecretKey)>, StoreError> {
        let key = token_key(serial);
        let Some(record) = self.read_checked(&[&key]).await?.into_iter().next() else {
            return Err(StoreError::Database("a short read".into()));
        };
        let Some(bytes) = &record.value else {
            return Ok(None);
        };
        let (token, sealed) = self.codec.decode_token(bytes)?;
        let (_, state) = self.import_state(token.import).await?;
        if !matches!(state, Some(ImportState::Committed { .. })) {
            return Ok(None);
        }
        let secret = self.codec.open_token_key(serial, &sealed)?;
        Ok(Some((token, secret)))
    }

    /// Moves a token from `from` to `to` (see `Store::swap_token_state`).
    pub async fn swap_token_state(
        &self,
        serial: &Serial,
        from: &TokenState,
        to: &TokenState,
    ) -> Result<bool, StoreError> {
        let key = token_key(serial);
        let mut rounds = self.rounds();
        while rounds.next().await {
            let Some(record) = self.read_checked(&[&key]).await?.into_iter().next() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let Some(bytes) = &record.value else {
                return Ok(false);
            };
            let (mut token, sealed) = self.codec.decode_token(bytes)?;
            if &token.state != from {
                return Ok(false);
            }
            token.state = to.clone();
            let value = encode_token_with(&token, &sealed);
            let tagged = self.tagged(&key, record.version + 1, &value);
            if self
                .redis
                .transact(&[(&key, record.version, Op::Set(tagged, None))], true)
                .await?
            {
                return Ok(true);
            }
        }
        Err(StoreError::Database(format!(
            "token {serial} kept changing"
        )))
    }

    pub async fn inventory(
        &self,
        filter: &TokenFilter,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<InventoryToken>, StoreError> {
        let mut serials: Vec<Serial> = self
            .redis
            .members(&serials_key())
            .await?
            .iter()
            .filter_map(|m| Serial::new(&String::from_utf8_lossy(m)).ok())
            .filter(|s| after.is_none_or(|after| s > after))
            .filter(|s| filter.from.as_ref().is_none_or(|from| s >= from))
            .filter(|s| filter.to.as_ref().is_none_or(|to| s <= to))
            .collect();
        serials.sort_unstable();
        let mut committed = std::collections::HashMap::new();
        let mut out = Vec::new();
        for chunk in serials.chunks(LIST_CHUNK) {
            let keys: Vec<Key> = chunk.iter().map(token_key).collect();
            let refs: Vec<&Key> = keys.iter().collect();
            for record in self.read_checked(&refs).await? {
                let Some(bytes) = &record.value else {
                    continue;
                };
                let (token, _) = self.codec.decode_token(bytes)?;
                let is_committed = match committed.get(&token.import) {
                    Some(known) => *known,
                    None => {
                        let (_, state) = self.import_state(token.import).await?;
                        let known = matches!(state, Some(ImportState::Committed { .. }));
                        committed.insert(token.import, known);
                        known
                    }
                };
                if is_committed && filter.matches(&token.info.serial, &token.state) {
                    out.push(token);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}
