//! At-rest key rotation, written once over [`Store`] for both stores.
//!
//! `Keyring { rotate: true }` (`slsd admin rotate-key`) adds a key to the
//! keyring and makes it the one new seals use; the keys held before keep
//! opening what they sealed, retiring. A background pass
//! ([`Engine::reseal_pass`]) then goes through every record that holds a
//! sealed value, in steps of `keys.reseal-batch` with `keys.reseal-pause`
//! between them, and seals each again under the new key; logins go on
//! meanwhile (a re-seal changes how a secret is stored, never the secret).
//! A pass that found nothing left to re-seal ends it: the retiring keys
//! are dropped from the keyring, and what they sealed cannot be opened by
//! anyone any more.
//!
//! A SIGKILL in the middle loses nothing: the keyring file names the
//! retiring keys, so the pass runs again at the next start, and it skips,
//! without opening them, the records already under the new key.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::store::change::{ResealCursor, ResealStep};
use crate::store::sealed::KeyId;
use crate::store::{Actor, Store, StoreError};
use crate::wire::Reply;

/// Passes a rotation makes at most before it gives up for now: each after
/// the first runs only because the one before still found records to
/// re-seal (sealed under a retiring key by a node that had not yet learned
/// the new one).
const MOST_PASSES: u32 = 3;

/// What a finished rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Records read, over every pass.
    pub examined: u64,
    /// Records sealed again under the active key.
    pub resealed: u64,
    /// The keys dropped from the keyring at the end.
    pub retired: Vec<KeyId>,
    pub took: Duration,
}

impl Engine {
    /// `Keyring`: the keyring's state, after a new key when `rotate`.
    pub(super) async fn keyring<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        rotate: bool,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let keyring = store.keyring();
        if rotate {
            let active = store.rotate_key(rng).await?;
            let retiring = keyring.retiring();
            let detail = format!("key {active} active; keys {retiring:?} retiring");
            store
                .audit_inventory(Self::actor(caller), now, rng, "rotate-key", detail.clone())
                .await?;
            tracing::info!(active, ?retiring, "at-rest key rotated: re-sealing");
            key_event(now, "key-rotated", detail);
            metrics::gauge!(crate::metrics::KEYS_RETIRING).set(retiring.len() as f64);
            self.rotation.notify_one();
        }
        Ok(Reply::Keyring {
            active: keyring.active(),
            retiring: keyring.retiring(),
            resealed: self.resealed.load(Ordering::Relaxed),
        })
    }

    /// Waits until a rotation asks for a pass.
    pub async fn rotation_requested(&self) {
        self.rotation.notified().await;
    }

    /// The re-seal pass, when the keyring holds a retiring key (after a
    /// rotation, or at a start after one was cut short); `None` when it
    /// holds none.
    ///
    /// On a shared store it first gives every node three `keys.poll`
    /// periods to learn the new key, and retires the old ones no sooner
    /// than the longest-lived short-lived sealed value made before the
    /// rotation has expired (a confirm code or activation token:
    /// `lifecycle.token-ttl`; a queued text message's code: `sms.ttl`),
    /// rather than re-sealing what expires anyway.
    pub async fn reseal_pass<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<Option<RotationReport>, StoreError> {
        match &self.cluster {
            Some(store) => {
                if store.keyring().retiring().is_empty() {
                    return Ok(None);
                }
                let config = self.config();
                let expired =
                    tokio::time::Instant::now() + config.lifecycle.token_ttl.max(config.sms.ttl);
                let grace = config.keys.poll * 3;
                drop(config);
                tokio::time::sleep(grace).await;
                self.reseal_over(store, expired, rng).await
            }
            None => {
                let store = self.registry.as_ref();
                self.reseal_over(store, tokio::time::Instant::now(), rng)
                    .await
            }
        }
    }

    /// Passes over `store` until one finds nothing to re-seal, then (not
    /// before `retire_after`) the retiring keys are dropped and the
    /// deployment told.
    async fn reseal_over<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        retire_after: tokio::time::Instant,
        rng: &mut R,
    ) -> Result<Option<RotationReport>, StoreError> {
        let keyring = store.keyring();
        let retiring = keyring.retiring();
        if retiring.is_empty() {
            return Ok(None);
        }
        metrics::gauge!(crate::metrics::KEYS_RETIRING).set(retiring.len() as f64);
        let started = Instant::now();
        let mut total = ResealStep::default();
        for pass in 1.. {
            let mut cursor = ResealCursor::default();
            let mut resealed = 0;
            loop {
                let keys = self.config().keys.clone();
                let step = store.reseal(&mut cursor, keys.reseal_batch, rng).await?;
                total.examined += step.examined;
                resealed += step.resealed;
                self.resealed.fetch_add(step.resealed, Ordering::Relaxed);
                metrics::counter!(crate::metrics::KEYS_RESEALED).increment(step.resealed);
                if step.done {
                    break;
                }
                if keys.reseal_pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(keys.reseal_pause).await;
                }
            }
            total.resealed += resealed;
            tracing::info!(pass, resealed, "re-seal pass done");
            if resealed == 0 {
                break;
            }
            if pass >= MOST_PASSES {
                return Err(StoreError::Database(format!(
                    "records are still being sealed under retiring keys after {pass} passes: \
                     the keys stay until the next start"
                )));
            }
        }
        tokio::time::sleep_until(retire_after).await;
        let retired = store.retire_keys(rng).await?;
        let took = started.elapsed();
        let detail = format!(
            "keys {retired:?} retired after {} records re-sealed in {:.1} s",
            total.resealed,
            took.as_secs_f64()
        );
        let now = crate::clock::now();
        store
            .audit_inventory(Actor::SYSTEM, now, rng, "retire-key", detail.clone())
            .await?;
        tracing::info!(
            ?retired,
            resealed = total.resealed,
            ?took,
            "key rotation finished"
        );
        key_event(now, "key-retired", detail);
        // Not 0 if another node rotated again meanwhile (its pass goes on).
        metrics::gauge!(crate::metrics::KEYS_RETIRING).set(keyring.retiring().len() as f64);
        Ok(Some(RotationReport {
            examined: total.examined,
            resealed: total.resealed,
            retired,
            took,
        }))
    }
}

/// A rotation's security event (the daemon's own settings).
fn key_event(now: Timestamp, action: &str, detail: String) {
    crate::events::emit(|| {
        let category = crate::events::Category::Configuration;
        crate::events::Event::new(now, action, category, crate::events::Outcome::Success)
            .reason(detail)
    });
}
