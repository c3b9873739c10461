//! The token inventory's operations, written once over [`Store`]:
//! importing a vendor's tokens batch by batch, all or nothing, and listing
//! them by serial (`store::inventory` has the rules).

use rand::CryptoRng;

use super::rules;
use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Serial, Username};
use crate::profile::DeviceKind;
use crate::store::Verifier;
use crate::store::inventory::{ImportId, Staged};
use crate::store::{NewDevice, Store, StoreError};
use crate::wire::request::{Answer, Pin};
use crate::wire::token::{NewToken, TokenEntry, TokenFilter, TokenState};
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
        let limits = &self.config().tokens;
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
        if let Some((token, why)) = tokens
            .iter()
            .find_map(|t| Some((t, t.info.algorithm.unsupported()?)))
        {
            return refuse(format!("token {}: {why}", token.info.serial)).await;
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

    /// `AssignToken`: an unassigned token enrolled as a device of `user`,
    /// with its imported key and algorithm. The token is claimed first
    /// (assigned to the user, device not yet known), then enrolled, then
    /// settled with its device: a run cut off in between is finished by
    /// assigning the same token to the same user again, and never leaves
    /// one token enrolled for two users.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn assign_token<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        serial: &Serial,
        user: &Username,
        pin: Option<&Pin>,
        label: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let Some((token, key)) = store.token(serial).await? else {
            return Ok(Reply::error(
                ErrorCode::NotFound,
                format!("no token {serial} in the inventory"),
            ));
        };
        let claimed = TokenState::Assigned {
            user: user.clone(),
            device: DeviceId(0),
        };
        match &token.state {
            TokenState::Unassigned => {
                if !store
                    .swap_token_state(serial, &TokenState::Unassigned, &claimed)
                    .await?
                {
                    return Ok(Reply::error(
                        ErrorCode::Busy,
                        format!("token {serial} is being assigned by someone else; look again"),
                    ));
                }
            }
            // This user's assignment, cut off before it finished.
            state if *state == claimed => {}
            TokenState::Assigned { device, .. } => {
                return Ok(Reply::error(
                    ErrorCode::InvalidArgument,
                    format!("token {serial} is assigned already (device {device})"),
                ));
            }
            TokenState::Retired { .. } => {
                return Ok(Reply::error(
                    ErrorCode::InvalidArgument,
                    format!("token {serial} is retired"),
                ));
            }
        }
        let pin = pin.map(Pin::as_str);
        let enrolled = store
            .change(user, Self::actor(caller), now, rng, |c| {
                // Enrolled by the run that was cut off: that device.
                if let Some(device) = c
                    .devices(user)?
                    .iter()
                    .find(|d| d.token.as_ref().is_some_and(|t| &t.serial == serial))
                {
                    return Ok(device.id);
                }
                let (device, _) = c.enroll(NewDevice {
                    user,
                    kind: DeviceKind::Token,
                    secret: Some(key.clone()),
                    pin,
                    label,
                    token: Some(&token.info),
                })?;
                Ok(device)
            })
            .await;
        let device = match enrolled {
            Ok(device) => device,
            Err(refused) => {
                // Not enrolled (a wrong PIN, say): the token goes back.
                store
                    .swap_token_state(serial, &claimed, &TokenState::Unassigned)
                    .await?;
                return super::enrolment::refused_or(Err::<DeviceId, _>(refused), |_| Reply::Done);
            }
        };
        let assigned = TokenState::Assigned {
            user: user.clone(),
            device,
        };
        if !store.swap_token_state(serial, &claimed, &assigned).await? {
            // Retired while it was being enrolled: the device goes too.
            self.revoke(store, caller, device, now, rng).await?;
            return Ok(Reply::error(
                ErrorCode::InvalidArgument,
                format!("token {serial} was retired while it was being assigned"),
            ));
        }
        tracing::info!(%serial, %user, %device, "token assigned");
        Ok(Reply::Enrolled {
            device,
            secret: None,
        })
    }

    /// `Resync`: a token whose counter or clock drifted past the windows
    /// of a login, found again by two consecutive codes (an OCRA card's
    /// answers to the question of all zeros) within
    /// `tokens.resync-window`; never below the codes already used.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn resync<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        device: DeviceId,
        first: &Answer,
        second: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let Some(found) = store.device(device).await? else {
            return Ok(Reply::error(
                ErrorCode::NotFound,
                format!("no device {device}"),
            ));
        };
        if !rules::token::moves(&found) {
            return Ok(Reply::error(
                ErrorCode::InvalidArgument,
                format!("device {device}'s codes move with no counter or clock: nothing to resync"),
            ));
        }
        let question = match &found.verifier {
            Verifier::Ocra { ocra, .. } => "0".repeat(usize::from(ocra.suite().question_len())),
            _ => String::new(),
        };
        let state = store.failure_state(&found).await?;
        // A PIN chosen since enrolment is the one the card now takes.
        let life = store
            .user_view(&found.user)
            .await?
            .devices
            .into_iter()
            .find_map(|(d, life)| (d.id == device).then_some(life))
            .unwrap_or_default();
        let pin = life.pin.as_ref().map(|p| &p.hash);
        let config = &self.config().tokens;
        let (one, two) = (first.as_bytes(), second.as_bytes());
        let found_at = rules::token::resync(
            (&found, pin),
            &question,
            one,
            two,
            state.moving,
            now,
            config,
        );
        let Some(moving) = found_at else {
            return Ok(Reply::error(
                ErrorCode::InvalidArgument,
                "the two codes are not consecutive codes of this device within tokens.resync-window past its last use; nothing changed",
            ));
        };
        let user = found.user.clone();
        store
            .change(&user, Self::actor(caller), now, rng, |c| {
                c.clear_failures(device, moving)?;
                c.audit("resync", Some(&user), Some(device), String::new())
            })
            .await?;
        tracing::info!(%device, "token resynchronised");
        Ok(Reply::Done)
    }

    /// `RetireTokens`: the tokens of a serial range retired, a page of
    /// `MAX_PAGE` looked at per request. An unassigned token is retired at
    /// once; an assigned one by revoking its device (which retires it, as
    /// every revoked token is); a claim whose device never came, or whose
    /// device is gone, directly. Each retirement is audited.
    pub(super) async fn retire_tokens<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        (from, to, after): (&Serial, &Serial, Option<&Serial>),
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let filter = TokenFilter {
            from: Some(from.clone()),
            to: Some(to.clone()),
            state: None,
        };
        let page = store.tokens(&filter, after, MAX_PAGE).await?;
        let retired_state = TokenState::Retired { at: now };
        let mut retired = 0;
        for token in &page {
            let serial = &token.info.serial;
            let by_revoking = match &token.state {
                TokenState::Retired { .. } => continue,
                TokenState::Assigned { device, .. } if device.0 != 0 => {
                    let revoked = self.revoke(store, caller, *device, now, rng).await?;
                    // Revoked now: the revocation retired the token.
                    (revoked == Reply::Done).then_some(*device)
                }
                _ => None,
            };
            if by_revoking.is_none()
                && !store
                    .swap_token_state(serial, &token.state, &retired_state)
                    .await?
            {
                // Changed since it was listed: left as it now is.
                continue;
            }
            let how = match by_revoking {
                Some(device) => format!("{serial}, device {device} revoked"),
                None => serial.to_string(),
            };
            store
                .audit_inventory(Self::actor(caller), now, rng, "retire-token", how)
                .await?;
            retired += 1;
        }
        let last = (page.len() == MAX_PAGE)
            .then(|| page.last().map(|t| t.info.serial.clone()))
            .flatten();
        tracing::info!(%from, %to, retired, "tokens retired");
        Ok(Reply::TokensRetired { retired, last })
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
