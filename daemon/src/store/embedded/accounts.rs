//! The lifecycle side of the registry, in the same redb database: users
//! (identification digest, residence, opt-out, the verified number on
//! record), device activation states and temporary-code uses, device
//! shares, and the append-only audit log (the withdrawal ledger is
//! `ledger.rs`).
//!
//! Every change to the registry but the two hot writes of the commit
//! thread (failure states and withdrawal bookings, `committer.rs`) goes
//! through [`Registry::change`]: one write transaction holding the change
//! and its audit entries, committed (fsync) before the caller answers.
//! Changes are serialised (they are rare: operator calls, activations), so
//! a rule checked inside a change still holds when it commits.

use crate::store::model::*;
use crate::store::records::{decode_audit, encode_audit, encode_life, encode_share};
use std::fmt;

use rand::CryptoRng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::clock::Timestamp;
use crate::identity::{DeviceId, ShareId, Username};
use crate::otp::SecretKey;
use crate::otp::push::PushKey;
use crate::phone::PhoneNumber;
use crate::policy::calendar::Day;
use crate::profile::DeviceKind;
use crate::store::embedded::ledger::LEDGER;
use crate::store::embedded::registry::Registry;
use crate::store::records::Stored;
use crate::store::{Device, EnrollError, FailureState, NewDevice, StoreError, Verifier};
use crate::wire::AuditRecord;

pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const DEVICE_LIFE: TableDefinition<u64, &[u8]> = TableDefinition::new("device-life");
pub(super) const SHARES: TableDefinition<u64, &[u8]> = TableDefinition::new("shares");
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// What memory takes on once a change has committed.
enum Effect {
    Index(Box<Device>),
    Unindex(DeviceId),
    User(Username, Account),
    /// An erased user's account.
    Forget(Username),
    Life(DeviceId, DeviceLife),
    Share(Share),
    Unshare(ShareId),
    Failures(DeviceId, FailureState),
    PushKey(DeviceId, PushKey),
    /// An audit entry written: mirrored on the security event stream.
    Audited(Box<AuditRecord>),
}

/// One change to the registry under way: its writes go to `txn`, what
/// memory must show after the commit to `effects`.
pub struct Change<'r, R: CryptoRng + ?Sized> {
    registry: &'r Registry,
    pub(super) txn: WriteTransaction,
    rng: &'r mut R,
    now: Timestamp,
    actor: Actor,
    effects: Vec<Effect>,
    /// Whether anything was written, and whether an audit entry was.
    pub(super) wrote: bool,
    audited: bool,
}

impl<R: CryptoRng + ?Sized> fmt::Debug for Change<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Change")
            .field("actor", &self.actor)
            .field("effects", &self.effects.len())
            .finish_non_exhaustive()
    }
}

impl<R: CryptoRng + ?Sized> Change<'_, R> {
    pub fn registry(&self) -> &Registry {
        self.registry
    }

    pub fn now(&self) -> Timestamp {
        self.now
    }

    pub fn rng(&mut self) -> &mut R {
        self.rng
    }

    /// Registers a device (as `Registry::enroll` does) within this change;
    /// with no `secret`, one is generated and returned.
    pub fn enroll(
        &mut self,
        new: NewDevice<'_>,
    ) -> Result<(DeviceId, Option<SecretKey>), EnrollError> {
        let detail = new.detail();
        let NewDevice {
            user,
            kind,
            secret,
            pin,
            label,
            token,
        } = new;
        let (secret, generated, verifier) = self
            .registry
            .codec
            .prepare(self.rng, kind, secret, pin, token)?;
        let id = self.add_device(
            Stored {
                user,
                kind,
                label,
                now: self.now,
                secret: Some(&secret),
                token,
            },
            verifier,
        )?;
        self.audit("enroll", Some(user), Some(id), detail)?;
        Ok((id, generated.then_some(secret)))
    }

    /// Registers a code typed as it is (a temporary code) for `user`.
    pub fn add_code(
        &mut self,
        user: &Username,
        kind: DeviceKind,
        code: SecretKey,
        label: &str,
    ) -> Result<DeviceId, StoreError> {
        let verifier = Verifier::Code(code.clone());
        self.add_device(
            Stored {
                user,
                kind,
                label,
                now: self.now,
                secret: Some(&code),
                token: None,
            },
            verifier,
        )
    }

    /// Registers `number` as an SMS device of `user`: one number per user,
    /// a second is refused until the first is revoked.
    pub fn add_phone(
        &mut self,
        user: &Username,
        number: PhoneNumber,
        label: &str,
    ) -> Result<DeviceId, EnrollError> {
        if let Some(existing) = self
            .registry
            .devices_of(user)
            .iter()
            .find(|d| d.phone().is_some())
        {
            return Err(EnrollError::Invalid(format!(
                "the user already has a verified number (device {}); revoke it first",
                existing.id
            )));
        }
        let id = self.add_device(
            Stored {
                user,
                kind: DeviceKind::Sms,
                label,
                now: self.now,
                secret: None,
                token: None,
            },
            Verifier::Phone(number),
        )?;
        self.audit("enroll-phone", Some(user), Some(id), "")?;
        Ok(id)
    }

    /// Adds a device; a phone verifier's number is sealed beside it.
    pub(super) fn add_device(
        &mut self,
        new: Stored<'_>,
        verifier: Verifier,
    ) -> Result<DeviceId, StoreError> {
        self.wrote = true;
        let id = {
            let mut meta = self
                .txn
                .open_table(crate::store::embedded::registry::META)?;
            let id = meta
                .get(crate::store::embedded::registry::NEXT_DEVICE_ID)?
                .map_or(1, |v| v.value())
                .max(1);
            meta.insert(crate::store::embedded::registry::NEXT_DEVICE_ID, id + 1)?;
            DeviceId(id)
        };
        let codec = &self.registry.codec;
        let record = codec.encode_device(self.rng, id, &new, &verifier)?;
        self.txn
            .open_table(crate::store::embedded::registry::DEVICES)?
            .insert(id.0, record.as_slice())?;
        if let Verifier::Phone(number) = &verifier {
            let sealed = codec.seal_phone(self.rng, id, number)?;
            self.txn
                .open_table(crate::store::embedded::registry::PHONES)?
                .insert(id.0, sealed.as_slice())?;
        }
        self.effects.push(Effect::Index(Box::new(
            Device::new(
                id,
                new.user.clone(),
                new.kind,
                new.label.to_owned(),
                new.now,
                codec.expiry(new.kind, new.now),
                verifier,
            )
            .with_token(new.token.cloned()),
        )));
        Ok(id)
    }

    /// Removes a device and everything kept beside it.
    pub fn remove_device(&mut self, id: DeviceId) -> Result<bool, StoreError> {
        self.wrote = true;
        let existed = self
            .txn
            .open_table(crate::store::embedded::registry::DEVICES)?
            .remove(id.0)?
            .is_some();
        self.txn
            .open_table(crate::store::embedded::registry::FAILURES)?
            .remove(id.0)?;
        self.txn
            .open_table(crate::store::embedded::registry::PHONES)?
            .remove(id.0)?;
        self.txn
            .open_table(crate::store::embedded::registry::PUSH_KEYS)?
            .remove(id.0)?;
        self.txn.open_table(DEVICE_LIFE)?.remove(id.0)?;
        self.effects.push(Effect::Unindex(id));
        Ok(existed)
    }

    pub fn set_user(&mut self, user: &Username, record: Account) -> Result<(), StoreError> {
        self.wrote = true;
        let bytes = self.registry.codec.encode_user(self.rng, user, &record)?;
        self.txn
            .open_table(USERS)?
            .insert(user.as_str(), bytes.as_slice())?;
        self.effects.push(Effect::User(user.clone(), record));
        Ok(())
    }

    pub fn set_life(&mut self, id: DeviceId, life: DeviceLife) -> Result<(), StoreError> {
        self.wrote = true;
        let mut table = self.txn.open_table(DEVICE_LIFE)?;
        if life == DeviceLife::default() {
            table.remove(id.0)?;
        } else {
            table.insert(id.0, encode_life(&life).as_slice())?;
        }
        drop(table);
        self.effects.push(Effect::Life(id, life));
        Ok(())
    }

    pub fn set_share(&mut self, share: Share) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn
            .open_table(SHARES)?
            .insert(share.id.0, encode_share(&share).as_slice())?;
        self.effects.push(Effect::Share(share));
        Ok(())
    }

    /// Removes `user`'s account and withdrawals ledger (every day kept).
    pub fn erase_user(&mut self, user: &Username) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn.open_table(USERS)?.remove(user.as_str())?;
        let mut ledger = self.txn.open_table(LEDGER)?;
        let days: Vec<u32> = ledger
            .range((user.as_str(), 0)..=(user.as_str(), u32::MAX))?
            .map(|entry| entry.map(|(key, _)| key.value().1))
            .collect::<Result<_, _>>()?;
        for day in days {
            ledger.remove((user.as_str(), day))?;
        }
        drop(ledger);
        self.effects.push(Effect::Forget(user.clone()));
        Ok(())
    }

    pub fn remove_share(&mut self, id: ShareId) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn.open_table(SHARES)?.remove(id.0)?;
        self.effects.push(Effect::Unshare(id));
        Ok(())
    }

    /// A device's failure state; its moving factor never goes back below
    /// what is stored (a login may have moved it since `state` was made).
    pub fn set_failures(&mut self, id: DeviceId, state: FailureState) -> Result<(), StoreError> {
        self.wrote = true;
        let mut table = self
            .txn
            .open_table(crate::store::embedded::registry::FAILURES)?;
        let stored = table
            .get(id.0)?
            .and_then(|v| FailureState::decode(v.value()))
            .map_or(0, |s| s.moving);
        let state = FailureState {
            moving: state.moving.max(stored),
            ..state
        };
        if state == FailureState::default() {
            table.remove(id.0)?;
        } else {
            table.insert(id.0, state.encode().as_slice())?;
        }
        drop(table);
        self.effects.push(Effect::Failures(id, state));
        Ok(())
    }

    pub fn set_push_key(&mut self, id: DeviceId, key: PushKey) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn
            .open_table(crate::store::embedded::registry::PUSH_KEYS)?
            .insert(id.0, key.0.as_slice())?;
        self.effects.push(Effect::PushKey(id, key));
        Ok(())
    }

    /// Records what this change did in the audit log (never a secret).
    pub fn audit(
        &mut self,
        action: &str,
        user: Option<&Username>,
        device: Option<DeviceId>,
        detail: impl Into<String>,
    ) -> Result<(), StoreError> {
        let entry = AuditRecord {
            seq: 0,
            at: self.now,
            actor: self.actor.0.to_owned(),
            action: action.to_owned(),
            user: user.cloned(),
            device,
            detail: detail.into(),
        };
        append_audit(&self.txn, entry.clone())?;
        self.effects.push(Effect::Audited(Box::new(entry)));
        self.audited = true;
        Ok(())
    }
}

/// Appends `entry` to the audit log within `txn`, numbered after the last.
pub(super) fn append_audit(txn: &WriteTransaction, entry: AuditRecord) -> Result<(), StoreError> {
    let mut table = txn.open_table(AUDIT)?;
    let seq = table.last()?.map_or(1, |(key, _)| key.value() + 1);
    let entry = AuditRecord { seq, ..entry };
    table.insert(seq, encode_audit(&entry).as_slice())?;
    Ok(())
}

impl Registry {
    /// Runs `f` as one change: its writes and audit entries commit together
    /// or not at all, then memory shows them, and it returns once they are
    /// on disk (fsync, shared with the changes committed meanwhile:
    /// `flush.rs`). Changes run one at a time. A change that wrote no audit
    /// entry is refused (every registry change is audited).
    pub fn change<R, T, E>(
        &self,
        rng: &mut R,
        now: Timestamp,
        actor: Actor,
        f: impl FnOnce(&mut Change<'_, R>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        R: CryptoRng + ?Sized,
        E: From<StoreError>,
    {
        let ticket = self.flusher.enter();
        let serial = self.lock_changes();
        let mut txn = self.db.begin_write().map_err(StoreError::from)?;
        // With others under way: durable through the group flush below,
        // before the caller replies (`flush.rs`).
        let alone = ticket.alone();
        if !alone {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| StoreError::Database(e.to_string()))?;
        }
        let mut change = Change {
            registry: self,
            txn,
            rng,
            now,
            actor,
            effects: Vec::new(),
            wrote: false,
            audited: false,
        };
        let value = f(&mut change)?;
        let Change {
            txn,
            effects,
            wrote,
            audited,
            ..
        } = change;
        if !wrote && !audited {
            // Nothing to write (a refusal decided inside the change).
            txn.abort().map_err(StoreError::from)?;
            return Ok(value);
        }
        if !audited {
            return Err(
                StoreError::Database("a registry change without an audit entry".into()).into(),
            );
        }
        txn.commit().map_err(StoreError::from)?;
        let seq = ticket.committed(alone);
        for effect in effects {
            self.apply(effect);
        }
        // The next change may run while this one waits for the disk.
        drop(serial);
        self.flusher.wait_durable(&self.db, seq)?;
        Ok(value)
    }

    fn apply(&self, effect: Effect) {
        match effect {
            Effect::Index(device) => self.index(*device),
            Effect::Unindex(id) => self.unindex(id),
            Effect::User(user, record) => {
                self.users_mut().insert(user, record);
            }
            Effect::Forget(user) => {
                self.users_mut().remove(&user);
            }
            Effect::Life(id, life) => {
                if let Some(device) = self.device(id) {
                    let mut shipped = self.shipped_mut();
                    if life.activation.is_shipped() {
                        shipped.insert(id);
                    } else {
                        shipped.remove(&id);
                    }
                    *device.life_mut() = life;
                }
            }
            Effect::Share(share) => {
                self.shares_mut().insert(share.id, share);
            }
            Effect::Unshare(id) => {
                self.shares_mut().remove(&id);
            }
            Effect::Failures(id, state) => {
                if let Some(device) = self.device(id) {
                    // A login may have moved a token's counter or step
                    // since the change read it: that stays used.
                    let mut failures = device.failures();
                    let moving = failures.moving.max(state.moving);
                    *failures = FailureState { moving, ..state };
                }
            }
            Effect::Audited(entry) => {
                crate::events::emit(|| crate::events::Event::audited(&entry));
            }
            Effect::PushKey(id, key) => {
                if let Some(device) = self.device(id) {
                    device.set_push_key(Some(key));
                }
            }
        }
    }

    /// The audit log after entry `after`, oldest first, at most `limit`
    /// (and at most [`crate::wire::request::MAX_PAGE`]) entries.
    pub fn audit_log(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut entries = Vec::new();
        for entry in table.range(after.saturating_add(1)..)? {
            if entries.len() >= limit.min(crate::wire::request::MAX_PAGE) {
                break;
            }
            let (seq, bytes) = entry?;
            let seq = seq.value();
            entries.push(
                decode_audit(seq, bytes.value()).ok_or_else(|| StoreError::Corrupt {
                    device: 0,
                    problem: format!("audit entry {seq}"),
                })?,
            );
        }
        Ok(entries)
    }

    /// Rewrites the audit entries naming `user` before the last `erase`
    /// entry of `pseudonym` (`Store::pseudonymize_audit`), in one write
    /// transaction; how many.
    pub fn pseudonymize_audit(
        &self,
        user: &Username,
        pseudonym: &Username,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let mut table = txn.open_table(AUDIT)?;
        let decode = |seq: u64, bytes: &[u8]| {
            decode_audit(seq, bytes).ok_or_else(|| StoreError::Corrupt {
                device: 0,
                problem: format!("audit entry {seq}"),
            })
        };
        let mut erased_at = None;
        for entry in table.iter()?.rev() {
            let (seq, bytes) = entry?;
            let entry = decode(seq.value(), bytes.value())?;
            if crate::store::records::is_erasure_of(&entry, pseudonym) {
                erased_at = Some(entry.seq);
                break;
            }
        }
        let Some(erased_at) = erased_at else {
            return Ok(0);
        };
        let mut rewritten = Vec::new();
        for entry in table.range(..erased_at)? {
            let (seq, bytes) = entry?;
            let entry = decode(seq.value(), bytes.value())?;
            if let Some(new) = crate::store::records::pseudonymized(&entry, user, pseudonym) {
                rewritten.push(new);
            }
        }
        for entry in &rewritten {
            table.insert(entry.seq, encode_audit(entry).as_slice())?;
        }
        drop(table);
        txn.commit()?;
        Ok(rewritten.len() as u64)
    }

    /// The keyed digest of identification data: what sharing compares.
    /// Fields are compared as written, ignoring case and surrounding space.
    pub fn identity_digest(&self, identity: &crate::wire::Identification) -> [u8; 32] {
        self.codec.identity_digest(identity)
    }

    /// The cents approved for `user` on `day` (for reports and tests).
    pub fn withdrawn_on(&self, user: &Username, day: Day) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEDGER)?;
        Ok(table.get((user.as_str(), day.0))?.map_or(0, |v| v.value()))
    }
}

impl<R: CryptoRng + ?Sized> crate::store::RegistryChange for Change<'_, R> {
    fn device(&self, id: DeviceId) -> Option<std::sync::Arc<Device>> {
        self.registry.device(id)
    }

    fn devices(&self, user: &Username) -> Result<Vec<std::sync::Arc<Device>>, StoreError> {
        Ok(self.registry.devices_of(user))
    }

    fn life(&self, id: DeviceId) -> DeviceLife {
        self.registry
            .device(id)
            .map(|d| d.life())
            .unwrap_or_default()
    }

    fn account(&self, user: &Username) -> Result<Account, StoreError> {
        Ok(self.registry.user(user))
    }

    fn share(&self, id: ShareId) -> Option<Share> {
        self.registry.share(id)
    }

    fn share_of(&self, requester: &Username) -> Option<Share> {
        self.registry.share_of(requester)
    }

    fn enroll(&mut self, new: NewDevice<'_>) -> Result<(DeviceId, Option<SecretKey>), EnrollError> {
        Change::enroll(self, new)
    }

    fn add_code(
        &mut self,
        user: &Username,
        kind: DeviceKind,
        code: SecretKey,
        label: &str,
    ) -> Result<DeviceId, StoreError> {
        Change::add_code(self, user, kind, code, label)
    }

    fn add_phone(
        &mut self,
        user: &Username,
        number: PhoneNumber,
        label: &str,
    ) -> Result<DeviceId, EnrollError> {
        Change::add_phone(self, user, number, label)
    }

    fn set_push_key(&mut self, id: DeviceId, key: PushKey) -> Result<(), StoreError> {
        Change::set_push_key(self, id, key)
    }

    fn remove_device(&mut self, id: DeviceId) -> Result<(), StoreError> {
        Change::remove_device(self, id).map(drop)
    }

    fn clear_failures(&mut self, id: DeviceId, moving: u64) -> Result<(), StoreError> {
        let kept = self.registry.device(id).map_or(0, |d| d.failures().moving);
        let state = FailureState {
            moving: kept.max(moving),
            ..FailureState::default()
        };
        Change::set_failures(self, id, state)
    }

    fn set_user(&mut self, user: &Username, record: Account) -> Result<(), StoreError> {
        Change::set_user(self, user, record)
    }

    fn set_life(&mut self, id: DeviceId, life: DeviceLife) -> Result<(), StoreError> {
        Change::set_life(self, id, life)
    }

    fn set_share(&mut self, share: Share) -> Result<(), StoreError> {
        Change::set_share(self, share)
    }

    fn remove_share(&mut self, id: ShareId) -> Result<(), StoreError> {
        Change::remove_share(self, id)
    }

    fn erase_user(&mut self, user: &Username, _ledger_days: u32) -> Result<(), StoreError> {
        Change::erase_user(self, user)
    }

    fn audit(
        &mut self,
        action: &str,
        user: Option<&Username>,
        device: Option<DeviceId>,
        detail: String,
    ) -> Result<(), StoreError> {
        Change::audit(self, action, user, device, detail)
    }
}
