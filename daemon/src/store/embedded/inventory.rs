//! The token inventory on one node: two redb tables, tokens by serial
//! and imports by id (`store::inventory` has the rules). Tokens are not
//! held in memory: the inventory is read only by operators' listings and
//! assignments, so an imported token costs disk, not RAM, until it is
//! assigned.

use rand::CryptoRng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::accounts::Change;
use super::registry::Registry;
use crate::clock::Timestamp;
use crate::identity::Serial;
use crate::otp::SecretKey;
use crate::store::inventory::{
    ImportId, ImportState, InventoryToken, Staged, TokenFilter, TokenState, decode_import,
    encode_import, encode_token_with,
};
use crate::store::{Actor, StoreError};
use crate::wire::token::TokenInfo;

pub(super) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub(super) const IMPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("imports");

impl Registry {
    /// Writes a batch staged under `import`, all or none (one durable
    /// transaction, serialised with the registry's changes).
    pub fn stage_tokens<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        tokens: &[(TokenInfo, SecretKey)],
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Staged, StoreError> {
        let _serial = self.lock_changes();
        let txn = self.db.begin_write()?;
        let count;
        {
            let mut imports = txn.open_table(IMPORTS)?;
            let state = match imports.get(import.0)?.map(|v| decode_import(v.value())) {
                None => ImportState::Staged {
                    started: now,
                    count: 0,
                },
                Some(Some(state @ ImportState::Staged { .. })) => state,
                Some(_) => {
                    return Err(StoreError::Database(format!(
                        "import {} is not staged",
                        import.0
                    )));
                }
            };
            let mut table = txn.open_table(TOKENS)?;
            for (info, key) in tokens {
                if table.get(info.serial.as_str())?.is_some() {
                    // Nothing of the batch is written: the transaction is
                    // dropped, not committed.
                    return Ok(Staged::Taken(info.serial.clone()));
                }
                let token = InventoryToken {
                    info: info.clone(),
                    import,
                    imported_at: now,
                    state: TokenState::Unassigned,
                };
                let record = self.codec.encode_token(rng, &token, key)?;
                table.insert(info.serial.as_str(), record.as_slice())?;
            }
            let ImportState::Staged {
                started,
                count: before,
            } = state
            else {
                return Err(StoreError::Database("import state".into()));
            };
            count = before.saturating_add(tokens.len() as u64);
            imports.insert(
                import.0,
                encode_import(ImportState::Staged { started, count }).as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(Staged::Done(count))
    }

    /// Commits a staged import with its audit entry (one registry change).
    pub fn commit_import<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Option<u64>, StoreError> {
        self.change(rng, now, actor, |change| {
            let Some(count) = change.commit_import(import, now)? else {
                return Ok(None);
            };
            change.audit(
                "import-tokens",
                None,
                None,
                format!("import {}: {count} tokens", import.0),
            )?;
            Ok(Some(count))
        })
    }

    /// Drops a staged import and its tokens (a scan of the tokens: rare).
    pub fn drop_import(&self, import: ImportId) -> Result<(), StoreError> {
        let _serial = self.lock_changes();
        let txn = self.db.begin_write()?;
        {
            let mut imports = txn.open_table(IMPORTS)?;
            let staged = matches!(
                imports
                    .get(import.0)?
                    .and_then(|v| decode_import(v.value())),
                Some(ImportState::Staged { .. })
            );
            if !staged {
                return Ok(());
            }
            imports.remove(import.0)?;
            let mut table = txn.open_table(TOKENS)?;
            let mut doomed = Vec::new();
            for entry in table.iter()? {
                let (serial, record) = entry?;
                let (token, _) = self.codec.decode_token(record.value())?;
                if token.import == import {
                    doomed.push(serial.value().to_owned());
                }
            }
            for serial in doomed {
                table.remove(serial.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Imports staged before `before`.
    pub fn stale_imports(&self, before: Timestamp) -> Result<Vec<ImportId>, StoreError> {
        let txn = self.db.begin_read()?;
        let imports = txn.open_table(IMPORTS)?;
        let mut stale = Vec::new();
        for entry in imports.iter()? {
            let (id, record) = entry?;
            if let Some(ImportState::Staged { started, .. }) = decode_import(record.value())
                && started < before
            {
                stale.push(ImportId(id.value()));
            }
        }
        Ok(stale)
    }

    /// The inventory in serial order (see `Store::tokens`).
    pub fn inventory(
        &self,
        filter: &TokenFilter,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<InventoryToken>, StoreError> {
        let txn = self.db.begin_read()?;
        let imports = txn.open_table(IMPORTS)?;
        let table = txn.open_table(TOKENS)?;
        let start = match (after, &filter.from) {
            (Some(after), Some(from)) => after.max(from).as_str().to_owned(),
            (Some(after), None) => after.as_str().to_owned(),
            (None, Some(from)) => from.as_str().to_owned(),
            (None, None) => String::new(),
        };
        let mut committed = std::collections::HashMap::new();
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..)? {
            if out.len() >= limit {
                break;
            }
            let (serial, record) = entry?;
            if after.is_some_and(|after| serial.value() == after.as_str()) {
                continue;
            }
            if filter
                .to
                .as_ref()
                .is_some_and(|to| serial.value() > to.as_str())
            {
                break;
            }
            let (token, _) = self.codec.decode_token(record.value())?;
            let is_committed = match committed.get(&token.import) {
                Some(known) => *known,
                None => {
                    let known = matches!(
                        imports
                            .get(token.import.0)?
                            .and_then(|v| decode_import(v.value())),
                        Some(ImportState::Committed { .. })
                    );
                    committed.insert(token.import, known);
                    known
                }
            };
            if is_committed && filter.matches(&token.info.serial, &token.state) {
                out.push(token);
            }
        }
        Ok(out)
    }
}

impl Registry {
    /// A committed token and its key.
    pub fn token(
        &self,
        serial: &Serial,
    ) -> Result<Option<(InventoryToken, SecretKey)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let Some(record) = table.get(serial.as_str())? else {
            return Ok(None);
        };
        let (token, sealed) = self.codec.decode_token(record.value())?;
        let imports = txn.open_table(IMPORTS)?;
        let committed = matches!(
            imports
                .get(token.import.0)?
                .and_then(|v| decode_import(v.value())),
            Some(ImportState::Committed { .. })
        );
        if !committed {
            return Ok(None);
        }
        let key = self.codec.open_token_key(serial, &sealed)?;
        Ok(Some((token, key)))
    }

    /// Moves a token from `from` to `to` (see `Store::swap_token_state`).
    pub fn swap_token_state(
        &self,
        serial: &Serial,
        from: &TokenState,
        to: &TokenState,
    ) -> Result<bool, StoreError> {
        let _serial = self.lock_changes();
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TOKENS)?;
            let Some((mut token, sealed)) = table
                .get(serial.as_str())?
                .map(|v| self.codec.decode_token(v.value()))
                .transpose()?
            else {
                return Ok(false);
            };
            if &token.state != from {
                return Ok(false);
            }
            token.state = to.clone();
            let record = encode_token_with(&token, &sealed);
            table.insert(serial.as_str(), record.as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }
}

impl<R: CryptoRng + ?Sized> Change<'_, R> {
    /// Marks a staged import committed; its token count, or `None` when
    /// no such import is staged.
    fn commit_import(
        &mut self,
        import: ImportId,
        now: Timestamp,
    ) -> Result<Option<u64>, StoreError> {
        let mut imports = self.txn.open_table(IMPORTS)?;
        let Some(ImportState::Staged { count, .. }) = imports
            .get(import.0)?
            .and_then(|v| decode_import(v.value()))
        else {
            return Ok(None);
        };
        imports.insert(
            import.0,
            encode_import(ImportState::Committed { at: now, count }).as_slice(),
        )?;
        self.wrote = true;
        Ok(Some(count))
    }
}
