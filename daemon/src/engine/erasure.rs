//! Erasure on request (`Erase`): everything sls holds about a user is
//! removed — their devices with what is kept beside each (secrets, the
//! number, the push key, failure states, questions), their account (the
//! residence, the identification digest, the number on record), their
//! withdrawals ledger, the share they asked for and the shares others
//! asked of their devices — and the audit log keeps its entries about
//! them with the name replaced by a keyed pseudonym. Written once over
//! [`Store`], for both stores.
//!
//! What lives only in memory for minutes (an open challenge, a code being
//! delivered, a limiter) is not searched for: it names devices that are
//! gone, and expires with its TTL.

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Serial, Username};
use crate::store::inventory::TokenState;
use crate::store::{Store, StoreError};
use crate::wire::Reply;

impl Engine {
    /// `Erase`: the registry changes (each audited; the user's own
    /// `erase` entry under the pseudonym), then the audit log rewritten.
    /// Run again after an interruption, it finishes the job: what is
    /// already gone is not found again, and the log is rewritten up to
    /// the last `erase` entry.
    pub(super) async fn erase<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let pseudonym = store.pseudonym(user);
        let actor = Self::actor(caller);
        // Shares others asked of this user's devices: each is a change of
        // its requester's records.
        for share in store.shares().await? {
            if share.owner != *user || share.requester == *user {
                continue;
            }
            store
                .change(&share.requester, actor, now, rng, |c| {
                    if c.share(share.id).is_none() {
                        return Ok(());
                    }
                    c.remove_share(share.id)?;
                    let detail = format!("owner {pseudonym} erased, share {}", share.id);
                    c.audit(
                        "share-removed",
                        Some(&share.requester),
                        Some(share.device),
                        detail,
                    )
                })
                .await?;
        }
        let ledger_days = self.config().withdrawals.ledger_days;
        let removed: Vec<(DeviceId, Option<Serial>)> = store
            .change(user, actor, now, rng, |c| {
                let devices = c.devices(user)?;
                for device in &devices {
                    c.remove_device(device.id)?;
                }
                if let Some(share) = c.share_of(user) {
                    c.remove_share(share.id)?;
                }
                c.erase_user(user, ledger_days)?;
                let detail = format!("{} devices", devices.len());
                let erase = crate::store::records::ERASE_ACTION;
                c.audit(erase, Some(&pseudonym), None, detail)?;
                Ok::<_, StoreError>(
                    devices
                        .iter()
                        .map(|d| (d.id, d.token.as_ref().map(|t| t.serial.clone())))
                        .collect(),
                )
            })
            .await?;
        // A token of theirs is retired, as a revoked one is: its key was
        // in their hands.
        for (device, serial) in &removed {
            if let Some(serial) = serial {
                let assigned = TokenState::Assigned {
                    user: user.clone(),
                    device: *device,
                };
                store
                    .swap_token_state(serial, &assigned, &TokenState::Retired { at: now })
                    .await?;
            }
        }
        let audit_entries = store.pseudonymize_audit(user, &pseudonym).await?;
        // The pseudonym only: the daemon's log outlives the erasure too.
        tracing::info!(%pseudonym, devices = removed.len(), audit_entries, "user erased");
        Ok(Reply::Erased {
            pseudonym,
            devices: removed.len() as u64,
            audit_entries,
        })
    }
}
