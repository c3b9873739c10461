//! The at-rest keyring on the cluster: how every node learns a key
//! rotated on one of them, and the rotation's pass over the records.
//!
//! Each node keeps the keyring in its own key file. A rotation, and the
//! retirement that ends it, publish the keyring in `sls:{meta}:keyring`
//! (versioned and tagged like every record, written by compare-and-swap):
//! the key ids it holds, the active one, and each key sealed under each
//! other one — so a node that holds the key in use before learns the new
//! one, and no key crosses Redis in clear. Once the retiring keys are
//! dropped the record names the active key alone, with nothing sealed
//! under a retired key left in it. Every node reads the record every
//! `keys.poll` (`follow_keyring`).
//!
//! The pass goes through the cluster slot by slot (`CLUSTER
//! GETKEYSINSLOT`): every key of a kind that holds a sealed value is read,
//! re-sealed and written back only if it did not change meanwhile.

use rand::CryptoRng;

use super::redis::{Key, Op};
use super::{ClusterStore, SMS_CODE_KEY_CONTEXT};
use crate::identity::{DeviceId, Username};
use crate::store::StoreError;
use crate::store::change::{ResealCursor, ResealStep};
use crate::store::sealed::{Adopted, KeyId, KeyringState, Wrapped};
use crate::wire::codec::{Put, Reader};

fn keyring_key() -> Key {
    Key::new("meta", "keyring")
}

/// Keys one slot may hold for the pass to list them at once (a cluster of
/// ten million devices holds a few thousand a slot).
const MOST_KEYS_IN_SLOT: usize = 1_000_000;
/// Slots one step lists at most, however few keys they hold.
const SLOTS_PER_STEP: u16 = 512;

/// A record that holds a sealed value, by its key's name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sealed {
    Device(DeviceId),
    Phone(DeviceId),
    Account(Username),
    Life,
    Token,
    /// The deployment's SMS code key: versioned, not tagged.
    SmsCodeKey,
}

impl Sealed {
    /// Whether its record carries a tag (all but the SMS code key's).
    fn tagged(&self) -> bool {
        *self != Self::SmsCodeKey
    }

    fn of(key: &Key) -> Option<Self> {
        let rest = key.as_str().strip_prefix("sls:{")?;
        let (tag, record) = rest.split_once("}:")?;
        let device = || tag.strip_prefix('d')?.parse().ok().map(DeviceId);
        Some(match (tag, record) {
            (_, "device") => Self::Device(device()?),
            (_, "phone") => Self::Phone(device()?),
            (_, "account") => Self::Account(Username::new(tag.strip_prefix("u:")?).ok()?),
            (_, "life") if tag.starts_with("u:") => Self::Life,
            ("tokens", _) if record.starts_with("t:") => Self::Token,
            ("meta", "sms-code-key") => Self::SmsCodeKey,
            _ => return None,
        })
    }
}

impl ClusterStore {
    /// The deployment's keyring record as read: its version (0: none) and
    /// what it says.
    async fn published(&self) -> Result<(u64, Option<Published>), StoreError> {
        let key = keyring_key();
        let record = self
            .read_checked(&[&key])
            .await?
            .into_iter()
            .next()
            .unwrap_or_default();
        let Some(value) = &record.value else {
            return Ok((record.version, None));
        };
        let published = decode_keyring(value).ok_or(StoreError::Forged(key.as_str().to_owned()))?;
        Ok((record.version, Some(published)))
    }

    /// Writes `state` as the deployment's keyring if the record is still
    /// at `version`; whether it was.
    async fn publish<R: CryptoRng + ?Sized>(
        &self,
        version: u64,
        state: &KeyringState,
        rng: &mut R,
    ) -> Result<bool, StoreError> {
        let held = state.held();
        let wrapped = state.wrapped(rng)?;
        let mut value = vec![1u8];
        value.put_u64(u64::from(state.active()));
        value.put_u16(u16::try_from(held.len()).unwrap_or(u16::MAX));
        for id in &held {
            value.put_u64(u64::from(*id));
        }
        value.put_u16(u16::try_from(wrapped.len()).unwrap_or(u16::MAX));
        for entry in &wrapped {
            value.put_u64(u64::from(entry.key));
            value.put_u64(u64::from(entry.under));
            value.put_bytes(&entry.sealed);
        }
        let key = keyring_key();
        let write = Op::Set(self.tagged(&key, version + 1, &value), None);
        Ok(self.redis.transact(&[(&key, version, write)], true).await?)
    }

    /// Takes what the deployment published when it is ahead of this node
    /// (a newer active key).
    fn catch_up(&self, published: &Published) -> Result<(), StoreError> {
        let keyring = self.codec.keyring();
        if published.active > keyring.active()
            && let Adopted::Missing(id) =
                keyring.adopt(published.active, &published.held, &published.wrapped)?
        {
            return Err(StoreError::Database(format!(
                "the deployment's active key {id} is not in this node's keyring"
            )));
        }
        Ok(())
    }

    /// Rotates the deployment's key: the new keyring is published first,
    /// only over the record this node read (two nodes rotating at once
    /// cannot both make a key of one id), and used here once it is; a
    /// node stopped in between learns it back from the record.
    pub async fn rotate_key<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<KeyId, StoreError> {
        let keyring = self.codec.keyring();
        let mut rounds = self.rounds();
        while rounds.next().await {
            let (version, published) = self.published().await?;
            if let Some(published) = &published {
                self.catch_up(published)?;
            }
            let rotated = keyring.rotated(rng)?;
            let active = rotated.active();
            if self.publish(version, &rotated, rng).await? {
                keyring.apply(rotated)?;
                return Ok(active);
            }
        }
        Err(StoreError::Database(
            "the deployment's keyring kept changing: no key rotated".into(),
        ))
    }

    /// Drops the retiring keys from the deployment's keyring, then here
    /// (in this order: a node following the record meanwhile could learn
    /// them back from it otherwise). A newer rotation published meanwhile
    /// is taken instead; its pass retires the keys.
    pub async fn retire_keys<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<Vec<KeyId>, StoreError> {
        let keyring = self.codec.keyring();
        let mut rounds = self.rounds();
        while rounds.next().await {
            let (version, published) = self.published().await?;
            if let Some(published) = &published {
                if published.active > keyring.active() {
                    self.catch_up(published)?;
                    return Ok(Vec::new());
                }
                if published.active == keyring.active() && published.held == [published.active] {
                    return Ok(keyring.retire()?);
                }
            }
            if self.publish(version, &keyring.retired_state(), rng).await? {
                return Ok(keyring.retire()?);
            }
        }
        Err(StoreError::Database(
            "the deployment's keyring kept changing: the retired keys are still published".into(),
        ))
    }

    /// Takes the deployment's keyring as published (nothing when no node
    /// has rotated yet).
    pub async fn follow_keyring(&self) -> Result<Adopted, StoreError> {
        let (_, Some(published)) = self.published().await? else {
            return Ok(Adopted::Unchanged);
        };
        Ok(self
            .codec
            .keyring()
            .adopt(published.active, &published.held, &published.wrapped)?)
    }

    /// One step of the pass: the slots after the cursor's, until `limit`
    /// sealed records are read (or `SLOTS_PER_STEP` slots).
    pub(super) async fn reseal_step<R: CryptoRng + ?Sized>(
        &self,
        cursor: &mut ResealCursor,
        limit: usize,
        rng: &mut R,
    ) -> Result<ResealStep, StoreError> {
        use super::slots::SLOTS;
        let mut step = ResealStep::default();
        let mut slot = match cursor.after.as_deref().map(<[u8; 2]>::try_from) {
            Some(Ok(last)) => u16::from_be_bytes(last).saturating_add(1),
            _ => 0,
        };
        let first = slot;
        while cursor.stage == 0
            && slot < SLOTS
            && step.examined < limit as u64
            && slot - first < SLOTS_PER_STEP
        {
            let keys = self.redis.keys_in_slot(slot, MOST_KEYS_IN_SLOT).await?;
            if keys.len() >= MOST_KEYS_IN_SLOT {
                return Err(StoreError::Database(format!(
                    "slot {slot} holds more than {MOST_KEYS_IN_SLOT} keys: the pass cannot list them"
                )));
            }
            let sealed: Vec<(Key, Sealed)> = keys
                .into_iter()
                .filter_map(|key| Sealed::of(&key).map(|kind| (key, kind)))
                .collect();
            step.examined += sealed.len() as u64;
            step.resealed += self.reseal_slot(&sealed, rng).await?;
            cursor.after = Some(slot.to_be_bytes().to_vec());
            slot += 1;
        }
        if slot >= SLOTS || cursor.stage > 0 {
            // Every write of the pass waited for its replicas.
            cursor.stage = 1;
            cursor.after = None;
            step.done = true;
        }
        Ok(step)
    }

    /// Re-seals the records of one slot: read together, written back
    /// together if none changed meanwhile (two round trips), else one by
    /// one. How many were re-sealed.
    async fn reseal_slot<R: CryptoRng + ?Sized>(
        &self,
        sealed: &[(Key, Sealed)],
        rng: &mut R,
    ) -> Result<u64, StoreError> {
        if sealed.is_empty() {
            return Ok(0);
        }
        let keys: Vec<&Key> = sealed.iter().map(|(key, _)| key).collect();
        let records = self.redis.read_many(&keys).await?;
        let mut writes = Vec::new();
        for ((key, kind), record) in sealed.iter().zip(records) {
            let Some(stored) = &record.value else {
                continue;
            };
            let value = if kind.tagged() {
                match self.checked(key, record.version, stored) {
                    Ok(value) => value,
                    Err(StoreError::Forged(_)) => continue,
                    Err(error) => return Err(error),
                }
            } else {
                stored.clone()
            };
            if let Some(resealed) = self.resealed(kind, &value, rng)? {
                let stored = self.stored(key, kind, record.version, resealed);
                writes.push((key, record.version, Op::Set(stored, None)));
            }
        }
        if writes.is_empty() {
            return Ok(0);
        }
        if self.redis.transact(&writes, true).await? {
            return Ok(writes.len() as u64);
        }
        // Another node changed one of them meanwhile.
        let mut resealed = 0;
        for (key, kind) in sealed {
            if self.reseal_record(key, kind, rng).await? {
                resealed += 1;
            }
        }
        Ok(resealed)
    }

    /// `value` of a record of `kind` re-sealed; `None` when it already is
    /// under the active key.
    fn resealed<R: CryptoRng + ?Sized>(
        &self,
        kind: &Sealed,
        value: &[u8],
        rng: &mut R,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let codec = &self.codec;
        match kind {
            Sealed::Device(id) => codec.reseal_device(rng, *id, value),
            Sealed::Phone(id) => codec.reseal_phone(rng, *id, value),
            Sealed::Account(user) => codec.reseal_user(rng, user, value),
            Sealed::Life => super::change::reseal_user_life(codec, rng, value),
            Sealed::Token => codec.reseal_token(rng, value),
            Sealed::SmsCodeKey => Ok(codec.keyring().reseal(rng, value, SMS_CODE_KEY_CONTEXT)?),
        }
    }

    /// A record's new value as stored at `version + 1`: tagged, but for
    /// the SMS code key.
    fn stored(&self, key: &Key, kind: &Sealed, version: u64, value: Vec<u8>) -> Vec<u8> {
        if kind.tagged() {
            self.tagged(key, version + 1, &value)
        } else {
            value
        }
    }

    /// Re-seals one record, written back only if unchanged meanwhile;
    /// whether it was. A record that fails its tag is left as it is
    /// (refused and counted when read: nothing uses it).
    async fn reseal_record<R: CryptoRng + ?Sized>(
        &self,
        key: &Key,
        kind: &Sealed,
        rng: &mut R,
    ) -> Result<bool, StoreError> {
        let mut rounds = self.rounds();
        while rounds.next().await {
            let record = if kind.tagged() {
                match self.read_checked(&[key]).await {
                    Ok(records) => records.into_iter().next().unwrap_or_default(),
                    Err(StoreError::Forged(_)) => return Ok(false),
                    Err(error) => return Err(error),
                }
            } else {
                self.redis.read(key).await?
            };
            let Some(value) = &record.value else {
                return Ok(false);
            };
            let Some(resealed) = self.resealed(kind, value, rng)? else {
                return Ok(false);
            };
            let write = Op::Set(self.stored(key, kind, record.version, resealed), None);
            if self
                .redis
                .transact(&[(key, record.version, write)], true)
                .await?
            {
                return Ok(true);
            }
        }
        Err(StoreError::Database(format!(
            "{} kept changing while it was re-sealed",
            key.as_str()
        )))
    }
}

/// A keyring as the deployment's record has it.
struct Published {
    active: KeyId,
    held: Vec<KeyId>,
    wrapped: Vec<Wrapped>,
}

/// The published keyring: the active key, the keys held, the wrapped keys.
fn decode_keyring(value: &[u8]) -> Option<Published> {
    let mut r = Reader::new(value);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let id = |r: &mut Reader<'_>| KeyId::try_from(r.u64("key").ok()?).ok();
    let active = id(&mut r)?;
    let mut held = Vec::new();
    for _ in 0..r.u16("held").ok()? {
        held.push(id(&mut r)?);
    }
    let mut wrapped = Vec::new();
    for _ in 0..r.u16("wrapped").ok()? {
        let key = id(&mut r)?;
        let under = id(&mut r)?;
        let sealed = r.bytes("sealed").ok()?.to_vec();
        wrapped.push(Wrapped { key, under, sealed });
    }
    r.finish().ok()?;
    Some(Published {
        active,
        held,
        wrapped,
    })
}
