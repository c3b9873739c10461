//! The token inventory's operations, written once over [`Store`]:
//! importing a vendor's tokens batch by batch, all or nothing, and listing
//! them by serial (`store::inventory` has the rules).

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::identity::Serial;
use crate::store::inventory::{ImportId, Staged};
use crate::store::{Store, StoreError};
use crate::wire::token::{NewToken, TokenEntry, TokenFilter};
use crate::wire::{ErrorCode, MAX_PAGE, Reply};

impl Engine {
    /// `ImportTokens`: a batch staged under its import (a new one when
    /// `import` is 0), and the import committed when `commit`. A refused
    /// batch drops the whole import: nothing of it is ever imported.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn import_tokens<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        import: u64,
        commit: bool,
        tokens: Vec<NewToken>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let limits = &self.config.tokens;
        let import = if import == 0 {
            // A new import: first drop those whose importers are gone.
            let stale_before = Timestamp(now.0.saturating_sub(
                u64::try_from(limits.import_stale_after.as_millis()).unwrap_or(u64::MAX),
            ));
            for stale in store.stale_imports(stale_before).await? {
                store.drop_import(stale).await?;
                tracing::info!(import = stale.0, "an unfinished token import was dropped");
            }
            // Never 0, which asks for a new import.
            ImportId(rng.next_u64().max(1))
        } else {
            ImportId(import)
        };
        let refuse = async |problem: String| -> Result<Reply, StoreError> {
            store.drop_import(import).await?;
            Ok(Reply::error(
                ErrorCode::InvalidArgument,
                format!(
                    "{problem}: import {} dropped, nothing of it was imported",
                    import.0
                ),
            ))
        };
        if let Some(short) = tokens.iter().find(|t| t.key.len() < limits.min_key_bytes) {
            let (serial, bytes) = (&short.info.serial, short.key.len());
            let least = limits.min_key_bytes;
            return refuse(format!("token {serial}: its key is {bytes} bytes, at least {least} are required (tokens.min-key-bytes)")).await;
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = tokens.iter().find(|t| !seen.insert(&t.info.serial)) {
            let serial = &twice.info.serial;
            return refuse(format!("serial {serial} appears twice in one batch")).await;
        }
        let batch = tokens.len() as u64;
        if !tokens.is_empty() {
            let pairs: Vec<_> = tokens.into_iter().map(|t| (t.info, t.key)).collect();
            match store.stage_tokens(import, &pairs, now, rng).await? {
                Staged::Done(count) if count > limits.import_max => {
                    let max = limits.import_max;
                    return refuse(format!(
                        "more than {max} tokens in one import (tokens.import-max)"
                    ))
                    .await;
                }
                Staged::Done(_) => {}
                Staged::Taken(serial) => {
                    return refuse(format!("serial {serial} is in the inventory already, or in another import under way")).await;
                }
            }
        }
        if !commit {
            return Ok(Reply::TokensImported {
                import: import.0,
                count: batch,
                committed: false,
            });
        }
        match store
            .commit_import(import, Self::actor(caller), now, rng)
            .await?
        {
            Some(count) => {
                tracing::info!(import = import.0, count, "tokens imported");
                Ok(Reply::TokensImported {
                    import: import.0,
                    count,
                    committed: true,
                })
            }
            None => Ok(Reply::error(
                ErrorCode::InvalidArgument,
                format!("no import {} is under way", import.0),
            )),
        }
    }

    /// `Tokens`: the inventory in serial order, a page at a time.
    pub(super) async fn list_tokens<S: Store>(
        &self,
        store: &S,
        filter: &TokenFilter,
        after: Option<&Serial>,
        limit: u16,
    ) -> Result<Reply, StoreError> {
        let limit = usize::from(limit).min(MAX_PAGE);
        let tokens = store.tokens(filter, after, limit).await?;
        Ok(Reply::Tokens(
            tokens
                .into_iter()
                .map(|token| TokenEntry {
                    info: token.info,
                    state: token.state,
                    imported_at: token.imported_at,
                })
                .collect(),
        ))
    }
}
