//! Registry changes on the cluster: the operations written once against
//! [`Store`] (enrolment, revocation, unlock, shares, temporary codes,
//! replacement cards, identification and opt-out), with the cluster's
//! records under them.
//!
//! A user's lifecycle lives in one versioned record of their slot
//! ([`UserLife`]: each device's activation state and uses left, the share
//! the user asked for, devices being retired), beside their account. A
//! change reads both with the user's devices, runs the engine's decision
//! over that snapshot ([`ClusterChange`]), and writes what it decided in
//! one transaction on the slot — the account, the lifecycle record and the
//! change's audit entries — only if neither record changed meanwhile;
//! otherwise it decides again on what another node wrote.
//!
//! The audit entries are written with the change into the user's
//! `unlogged` record, so a change cannot be written without them; they are
//! then appended to the deployment's log and taken out of `unlogged`. A
//! node that stops between the two leaves them for the user's next change
//! to append (at least once: two nodes flushing one user at once can log
//! an entry twice; never none).
//!
//! What spans slots is written around the transaction, so that a record
//! never exists unreachable: indexes (the shares and the shipped cards,
//! for listing and auto-activation) and a share's id handle before it —
//! a listing skips an entry whose record says otherwise —, new device
//! records and retired devices' removal after it (a retired device is
//! unusable from the commit on: `UserLife::retired`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::CryptoRng;

use super::{ClusterStore, PLAIN, UserRecord, failure_state, phone_claim_key, phone_key};
use crate::clock::Timestamp;
use crate::identity::Serial;
use crate::identity::{DeviceId, ShareId, Username};
use crate::otp::SecretKey;
use crate::otp::push::PushKey;
use crate::phone::PhoneNumber;
use crate::profile::DeviceKind;
use crate::store::cluster::redis::{Key, Op, Versioned};
use crate::store::inventory::{ImportId, InventoryToken, Staged, TokenFilter, TokenState};
use crate::store::records::{
    Stored, decode_audit, decode_life, decode_share, encode_audit, encode_life, encode_share,
};
use crate::store::{
    Account, Actor, Device, DeviceLife, EnrollError, FailureState, NewDevice, RegistryChange,
    Share, Shipped, Store, StoreError, UserView, Verifier,
};
use crate::wire::AuditRecord;
use crate::wire::codec::{Put, Reader};
use crate::wire::token::TokenInfo;

/// A user's device lifecycle on the cluster, one record in their slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserLife {
    /// Devices whose state is not the default (active, no use limit).
    pub lives: BTreeMap<DeviceId, DeviceLife>,
    /// The share the user asked for, pending or in effect.
    pub share: Option<Share>,
    /// Devices a change removed: unusable from that change on, whether or
    /// not their records are gone yet.
    pub retired: BTreeSet<DeviceId>,
}

impl UserLife {
    pub fn life(&self, device: DeviceId) -> DeviceLife {
        self.lives.get(&device).cloned().unwrap_or_default()
    }

    /// Whether `device` of this user can be used at `now`.
    pub fn allows(&self, device: &Device, now: Timestamp) -> bool {
        !self.retired.contains(&device.id)
            && !device.expired_at(now)
            && self.life(device.id).allows_use(now)
    }

    /// The share in effect through which the user uses another's device.
    pub fn active_share(&self) -> Option<&Share> {
        self.share
            .as_ref()
            .filter(|s| s.state == crate::store::ShareState::Active)
    }

    fn set(&mut self, device: DeviceId, life: DeviceLife) {
        if life == DeviceLife::default() {
            self.lives.remove(&device);
        } else {
            self.lives.insert(device, life);
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        out.put_u64(self.lives.len() as u64);
        for (device, life) in &self.lives {
            out.put_u64(device.0);
            out.put_bytes(&encode_life(life));
        }
        match &self.share {
            Some(share) => {
                out.put_u64(share.id.0);
                out.put_bytes(&encode_share(share));
            }
            None => {
                out.put_u64(0);
                out.put_bytes(&[]);
            }
        }
        out.put_u64(self.retired.len() as u64);
        for device in &self.retired {
            out.put_u64(device.0);
        }
        out
    }

    fn decode(bytes: &[u8], codec: &crate::store::records::DeviceCodec) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8("version").ok()? != 1 {
            return None;
        }
        let mut life = Self::default();
        for _ in 0..r.u64("lives").ok()? {
            let device = DeviceId(r.u64("device").ok()?);
            life.lives.insert(
                device,
                decode_life(r.bytes("life").ok()?, |sealed| {
                    codec.open_changed_pin(device, sealed)
                })?,
            );
        }
        let share = r.u64("share").ok()?;
        let record = r.bytes("share record").ok()?;
        if share != 0 {
            life.share = Some(decode_share(ShareId(share), record)?);
        }
        for _ in 0..r.u64("retired").ok()? {
            life.retired.insert(DeviceId(r.u64("retired device").ok()?));
        }
        r.finish().ok()?;
        Some(life)
    }
}

/// A user's lifecycle record with the changed PINs in it sealed again
/// under the active key (a rotation's pass); `None` when each already is.
pub(super) fn reseal_user_life<R: CryptoRng + ?Sized>(
    codec: &crate::store::records::DeviceCodec,
    rng: &mut R,
    bytes: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut life = UserLife::decode(bytes, codec).ok_or_else(|| StoreError::Corrupt {
        device: 0,
        problem: "a lifecycle record".into(),
    })?;
    let mut changed = false;
    for (device, state) in &mut life.lives {
        changed |= codec.reseal_changed_pin(rng, *device, state)?;
    }
    Ok(changed.then(|| life.encode()))
}

impl ClusterStore {
    /// A user's lifecycle record as read (absent: nothing beyond
    /// defaults); a changed PIN in it unsealed.
    pub fn user_life(&self, user: &Username, record: &Versioned) -> Result<UserLife, StoreError> {
        match &record.value {
            Some(bytes) => {
                UserLife::decode(bytes, &self.codec).ok_or_else(|| StoreError::Corrupt {
                    device: 0,
                    problem: format!("lifecycle record of {user}"),
                })
            }
            None => Ok(UserLife::default()),
        }
    }
}

fn encode_unlogged(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.put_u64(entries.len() as u64);
    for entry in entries {
        out.put_bytes(entry);
    }
    out
}

fn decode_unlogged(user: &Username, record: &Versioned) -> Result<Vec<Vec<u8>>, StoreError> {
    let Some(bytes) = &record.value else {
        return Ok(Vec::new());
    };
    let corrupt = || StoreError::Corrupt {
        device: 0,
        problem: format!("unlogged audit entries of {user}"),
    };
    let mut r = Reader::new(bytes);
    if r.u8("version").ok() != Some(1) {
        return Err(corrupt());
    }
    let count = r.u64("entries").map_err(|_| corrupt())?;
    let mut entries = Vec::new();
    for _ in 0..count {
        entries.push(r.bytes("entry").map_err(|_| corrupt())?.to_vec());
    }
    r.finish().map_err(|_| corrupt())?;
    Ok(entries)
}

/// Share ids and who asked for each (`<id> <requester>`).
fn shares_index_key() -> Key {
    Key::new("shares", "index")
}

/// Shipped replacement cards and whose they are (`<device> <user>`).
fn shipped_index_key() -> Key {
    Key::new("shipped", "index")
}

/// Who asked for a share.
fn share_handle_key(id: ShareId) -> Key {
    Key::new(&format!("s{:016x}", id.0), "requester")
}

/// An entry of an index set: the set and the member.
type IndexEntry = (Key, Vec<u8>);

fn index_member(id: u64, user: &Username) -> Vec<u8> {
    format!("{id} {user}").into_bytes()
}

fn parse_member(member: &[u8]) -> Option<(u64, Username)> {
    let text = std::str::from_utf8(member).ok()?;
    let (id, user) = text.split_once(' ')?;
    Some((id.parse().ok()?, Username::new(user).ok()?))
}

fn is_shipped(life: &DeviceLife) -> bool {
    life.activation.is_shipped()
}

/// What a committed change writes beyond the user's slot.
struct Committed {
    created: Vec<(DeviceId, Vec<u8>)>,
    phone: Option<(DeviceId, Vec<u8>)>,
    push_keys: Vec<(DeviceId, PushKey)>,
    removed: Vec<DeviceId>,
}

/// A registry change of one user on the cluster: reads from the snapshot
/// it began with, writes into the records that will be committed.
pub struct ClusterChange<'a, R: ?Sized> {
    store: &'a ClusterStore,
    rng: &'a mut R,
    now: Timestamp,
    actor: Actor,
    user: Username,
    devices: Vec<Arc<Device>>,
    account: Account,
    account_next: Option<Account>,
    before: UserLife,
    after: UserLife,
    audits: Vec<AuditRecord>,
    /// Device ids taken for this change; `wanted` counts those a round
    /// asked for and did not have (the round runs again with them).
    ids: Vec<DeviceId>,
    wanted: usize,
    created: Vec<(DeviceId, Vec<u8>)>,
    /// The sealed number of an SMS device created, and whether the user's
    /// claim on a number was taken when the change began.
    phone: Option<(DeviceId, Vec<u8>)>,
    claimed: bool,
    push_keys: Vec<(DeviceId, PushKey)>,
    removed: Vec<DeviceId>,
    /// Devices whose failure state the change clears (in the same
    /// transaction: the failure records are of the user's slot).
    /// Devices whose failures are cleared, and the least moving factor
    /// each keeps.
    cleared: Vec<(DeviceId, u64)>,
    /// The user is erased: the account goes, and the ledger's days up to
    /// this many back.
    erased: Option<u32>,
    wrote: bool,
}

impl<R: ?Sized> std::fmt::Debug for ClusterChange<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterChange")
            .field("user", &self.user)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl<R: CryptoRng + ?Sized> ClusterChange<'_, R> {
    fn outside(&self, what: &str) -> StoreError {
        StoreError::Database(format!(
            "a change of {}'s records cannot write {what}",
            self.user
        ))
    }

    fn owns(&self, device: DeviceId) -> bool {
        self.devices.iter().any(|d| d.id == device)
            || self.created.iter().any(|(id, _)| *id == device)
    }

    fn take_id(&mut self) -> Result<DeviceId, StoreError> {
        match self.ids.get(self.created.len()) {
            Some(id) => Ok(*id),
            None => {
                self.wanted += 1;
                Err(StoreError::Database("a device id is being reserved".into()))
            }
        }
    }

    fn add_device(&mut self, new: Stored<'_>, verifier: &Verifier) -> Result<DeviceId, StoreError> {
        if new.user != &self.user {
            return Err(self.outside("another user's device"));
        }
        let id = self.take_id()?;
        let record = self
            .store
            .codec
            .encode_device(self.rng, id, &new, verifier)?;
        self.created.push((id, record));
        self.wrote = true;
        Ok(id)
    }
}

impl<R: CryptoRng + ?Sized> RegistryChange for ClusterChange<'_, R> {
    fn device(&self, id: DeviceId) -> Option<Arc<Device>> {
        self.devices
            .iter()
            .find(|d| d.id == id && !self.before.retired.contains(&id))
            .cloned()
    }

    fn devices(&self, user: &Username) -> Result<Vec<Arc<Device>>, StoreError> {
        if user != &self.user {
            return Err(self.outside("another user's devices"));
        }
        Ok(self
            .devices
            .iter()
            .filter(|d| !self.before.retired.contains(&d.id))
            .cloned()
            .collect())
    }

    fn life(&self, id: DeviceId) -> DeviceLife {
        self.before.life(id)
    }

    fn account(&self, user: &Username) -> Result<Account, StoreError> {
        if user == &self.user {
            Ok(self.account.clone())
        } else {
            Err(self.outside("another user's account"))
        }
    }

    fn share(&self, id: ShareId) -> Option<Share> {
        self.before.share.clone().filter(|s| s.id == id)
    }

    fn share_of(&self, requester: &Username) -> Option<Share> {
        self.before
            .share
            .clone()
            .filter(|s| &s.requester == requester)
    }

    fn enroll(&mut self, new: NewDevice<'_>) -> Result<(DeviceId, Option<SecretKey>), EnrollError> {
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
            .store
            .codec
            .prepare(self.rng, kind, secret, pin, token)?;
        let stored = Stored {
            user,
            kind,
            label,
            now: self.now,
            secret: Some(&secret),
            token,
        };
        let id = self.add_device(stored, &verifier)?;
        self.audit("enroll", Some(user), Some(id), detail)?;
        Ok((id, generated.then_some(secret)))
    }

    fn add_code(
        &mut self,
        user: &Username,
        kind: DeviceKind,
        code: SecretKey,
        label: &str,
    ) -> Result<DeviceId, StoreError> {
        let verifier = Verifier::Code(code.clone());
        let stored = Stored {
            user,
            kind,
            label,
            now: self.now,
            secret: Some(&code),
            token: None,
        };
        self.add_device(stored, &verifier)
    }

    fn add_phone(
        &mut self,
        user: &Username,
        number: PhoneNumber,
        label: &str,
    ) -> Result<DeviceId, EnrollError> {
        let existing = self.devices.iter().find(|d| d.phone().is_some());
        if self.claimed || existing.is_some() || self.phone.is_some() {
            return Err(EnrollError::Invalid(format!(
                "the user already has a verified number{}; revoke it first",
                existing.map_or(String::new(), |d| format!(" (device {})", d.id))
            )));
        }
        let stored = Stored {
            user,
            kind: DeviceKind::Sms,
            label,
            now: self.now,
            secret: None,
            token: None,
        };
        let verifier = Verifier::Phone(number.clone());
        let id = self.add_device(stored, &verifier)?;
        let sealed = self.store.codec.seal_phone(self.rng, id, &number)?;
        self.phone = Some((id, sealed));
        self.audit("enroll-phone", Some(user), Some(id), String::new())?;
        Ok(id)
    }

    fn set_push_key(&mut self, id: DeviceId, key: PushKey) -> Result<(), StoreError> {
        if !self.owns(id) {
            return Err(self.outside("another user's device"));
        }
        self.push_keys.push((id, key));
        self.wrote = true;
        Ok(())
    }

    fn remove_device(&mut self, id: DeviceId) -> Result<(), StoreError> {
        if !self.owns(id) {
            return Err(self.outside("another user's device"));
        }
        self.after.lives.remove(&id);
        self.after.retired.insert(id);
        self.removed.push(id);
        self.wrote = true;
        Ok(())
    }

    fn clear_failures(&mut self, id: DeviceId, moving: u64) -> Result<(), StoreError> {
        if !self.owns(id) {
            return Err(self.outside("another user's device"));
        }
        match self.cleared.iter_mut().find(|(d, _)| *d == id) {
            Some((_, least)) => *least = (*least).max(moving),
            None => self.cleared.push((id, moving)),
        }
        self.wrote = true;
        Ok(())
    }

    fn set_user(&mut self, user: &Username, record: Account) -> Result<(), StoreError> {
        if user != &self.user {
            return Err(self.outside("another user's account"));
        }
        self.account_next = Some(record);
        self.wrote = true;
        Ok(())
    }

    fn set_life(&mut self, id: DeviceId, life: DeviceLife) -> Result<(), StoreError> {
        if !self.owns(id) {
            return Err(self.outside("another user's device"));
        }
        self.after.set(id, life);
        self.wrote = true;
        Ok(())
    }

    fn set_share(&mut self, share: Share) -> Result<(), StoreError> {
        if share.requester != self.user {
            return Err(self.outside("a share another user asked for"));
        }
        self.after.share = Some(share);
        self.wrote = true;
        Ok(())
    }

    fn remove_share(&mut self, id: ShareId) -> Result<(), StoreError> {
        if self.after.share.as_ref().is_some_and(|s| s.id == id) {
            self.after.share = None;
            self.wrote = true;
        }
        Ok(())
    }

    fn erase_user(&mut self, user: &Username, ledger_days: u32) -> Result<(), StoreError> {
        if user != &self.user {
            return Err(self.outside("another user's account"));
        }
        self.erased = Some(ledger_days);
        self.account_next = None;
        self.wrote = true;
        Ok(())
    }

    fn audit(
        &mut self,
        action: &str,
        user: Option<&Username>,
        device: Option<DeviceId>,
        detail: String,
    ) -> Result<(), StoreError> {
        let entry = AuditRecord {
            seq: 0,
            at: self.now,
            actor: self.actor.0.to_owned(),
            action: action.to_owned(),
            user: user.cloned(),
            device,
            detail,
        };
        self.audits.push(entry);
        Ok(())
    }
}

impl ClusterStore {
    /// Deletes `user`'s lifecycle record once it holds nothing but marks
    /// of devices whose records are gone (an erasure: its key names the
    /// user). A change another node made meanwhile keeps it.
    async fn drop_empty_life(&self, user: &Username) -> Result<(), StoreError> {
        let (_, _, life_read, life) = self.user_records(user).await?;
        let gone = async {
            for id in &life.retired {
                let record = self.redis.get(&super::device_key(*id)).await;
                if record.map_err(StoreError::from)?.is_some() {
                    return Ok::<_, StoreError>(false);
                }
            }
            Ok(true)
        };
        if life_read.value.is_some()
            && life.lives.is_empty()
            && life.share.is_none()
            && gone.await?
        {
            let delete = [(UserRecord::Life, life_read.version, Op::Delete)];
            self.write_user(user, &delete, true).await?;
        }
        Ok(())
    }

    /// A user's account and lifecycle records, read together.
    async fn user_records(
        &self,
        user: &Username,
    ) -> Result<(Versioned, Account, Versioned, UserLife), StoreError> {
        let records = [UserRecord::Account, UserRecord::Life];
        let mut read = self.read_user(user, &records).await?.into_iter();
        let (Some(account), Some(life)) = (read.next(), read.next()) else {
            return Err(StoreError::Database("a short read".into()));
        };
        let decoded = self.account(user, &account)?;
        let lives = self.user_life(user, &life)?;
        Ok((account, decoded, life, lives))
    }

    /// A user's lifecycle record (what a login needs of it besides the
    /// device: whether it may be used, the share in effect).
    pub async fn life_of(&self, user: &Username) -> Result<UserLife, StoreError> {
        let read = self.read_user(user, &[UserRecord::Life]).await?;
        match read.first() {
            Some(record) => self.user_life(user, record),
            None => Ok(UserLife::default()),
        }
    }

    /// A device's failure state, read on its own (a shared device listed
    /// for a user who is not its owner).
    pub async fn failures_of(&self, device: &Device) -> Result<FailureState, StoreError> {
        let read = self
            .read_user(&device.user, &[UserRecord::Failures(device.id)])
            .await?;
        match read.first() {
            Some(record) => failure_state(device.id, record),
            None => Ok(FailureState::default()),
        }
    }

    /// Appends the user's audit entries that are not in the deployment's
    /// log yet, and takes them out of the user's `unlogged` record.
    pub async fn flush_audit(&self, user: &Username) -> Result<(), StoreError> {
        let mut appended: Vec<Vec<u8>> = Vec::new();
        let mut rounds = self.rounds();
        while rounds.next().await {
            let read = self.read_user(user, &[UserRecord::Unlogged]).await?;
            let Some(record) = read.into_iter().next() else {
                return Ok(());
            };
            let entries = decode_unlogged(user, &record)?;
            if entries.is_empty() {
                return Ok(());
            }
            // What this flush appended already is not appended again.
            let skip = if entries.starts_with(&appended) {
                appended.len()
            } else {
                0
            };
            for bytes in entries.iter().skip(skip) {
                let entry = decode_audit(0, bytes).ok_or_else(|| StoreError::Corrupt {
                    device: 0,
                    problem: format!("an unlogged audit entry of {user}"),
                })?;
                self.audit(&entry).await?;
            }
            appended = entries;
            let taken = [(UserRecord::Unlogged, record.version, Op::Delete)];
            if self.write_user(user, &taken, true).await? {
                return Ok(());
            }
        }
        Err(StoreError::Database(format!(
            "the unlogged audit entries of {user} kept changing"
        )))
    }

    /// Writes what a committed change created and removed beyond the
    /// user's slot, then its audit entries to the deployment's log.
    async fn finish_change(
        &self,
        user: &Username,
        done: Committed,
        unlisted: &[IndexEntry],
    ) -> Result<(), StoreError> {
        let Committed {
            created,
            phone,
            push_keys,
            removed,
        } = done;
        // A number's record before its device's: a device is never read
        // without it.
        if let Some((id, sealed)) = &phone {
            self.create(&phone_key(*id), sealed).await?;
        }
        for (id, record) in &created {
            self.add(*id, user, record).await?;
        }
        for (id, key) in push_keys {
            self.bind_push_key(id, key)
                .await
                .map_err(|error| match error {
                    EnrollError::Store(error) => error,
                    EnrollError::Invalid(why) => StoreError::Database(why),
                })?;
        }
        for id in removed {
            self.revoke(id).await?;
        }
        for (index, member) in unlisted {
            self.redis.set_remove(index, member, false).await?;
        }
        self.flush_audit(user).await
    }

    /// The index entries a committed change adds (written before it) and
    /// removes (after it): shares and shipped cards.
    fn index_changes(
        user: &Username,
        before: &UserLife,
        after: &UserLife,
    ) -> (Vec<IndexEntry>, Vec<IndexEntry>) {
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        match (&before.share, &after.share) {
            (Some(old), new) if new.as_ref().is_none_or(|n| n.id != old.id) => {
                removed.push((shares_index_key(), index_member(old.id.0, user)));
            }
            _ => {}
        }
        if let Some(new) = &after.share {
            added.push((shares_index_key(), index_member(new.id.0, user)));
        }
        let devices: BTreeSet<DeviceId> = before
            .lives
            .keys()
            .chain(after.lives.keys())
            .copied()
            .collect();
        for device in devices {
            let member = index_member(device.0, user);
            match (
                is_shipped(&before.life(device)),
                is_shipped(&after.life(device)),
            ) {
                (false, true) => added.push((shipped_index_key(), member)),
                (true, false) => removed.push((shipped_index_key(), member)),
                _ => {}
            }
        }
        (added, removed)
    }
}

impl Store for ClusterStore {
    fn identity_digest(&self, identity: &crate::wire::Identification) -> [u8; 32] {
        ClusterStore::identity_digest(self, identity)
    }

    fn pseudonym(&self, user: &Username) -> Username {
        self.codec.pseudonym(user)
    }

    fn keyring(&self) -> &crate::store::sealed::SecretCipher {
        self.codec.keyring()
    }

    async fn rotate_key<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<crate::store::sealed::KeyId, StoreError> {
        ClusterStore::rotate_key(self, rng).await
    }

    async fn retire_keys<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<Vec<crate::store::sealed::KeyId>, StoreError> {
        ClusterStore::retire_keys(self, rng).await
    }

    async fn reseal<R: CryptoRng + ?Sized>(
        &self,
        cursor: &mut crate::store::change::ResealCursor,
        limit: usize,
        rng: &mut R,
    ) -> Result<crate::store::change::ResealStep, StoreError> {
        self.reseal_step(cursor, limit, rng).await
    }

    async fn pseudonymize_audit(
        &self,
        user: &Username,
        pseudonym: &Username,
    ) -> Result<u64, StoreError> {
        ClusterStore::pseudonymize_audit(self, user, pseudonym).await
    }

    async fn stage_tokens<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        tokens: &[(TokenInfo, SecretKey)],
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Staged, StoreError> {
        ClusterStore::stage_tokens(self, import, tokens, now, rng).await
    }

    async fn commit_import<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        actor: Actor,
        now: Timestamp,
        _rng: &mut R,
    ) -> Result<Option<u64>, StoreError> {
        ClusterStore::commit_import(self, import, actor, now).await
    }

    async fn drop_import(&self, import: ImportId) -> Result<(), StoreError> {
        ClusterStore::drop_import(self, import).await
    }

    async fn failure_state(&self, device: &Device) -> Result<FailureState, StoreError> {
        Ok(self.failures(&device.user, device.id).await?.1)
    }

    async fn token(
        &self,
        serial: &Serial,
    ) -> Result<Option<(InventoryToken, SecretKey)>, StoreError> {
        ClusterStore::token(self, serial).await
    }

    async fn swap_token_state(
        &self,
        serial: &Serial,
        from: &TokenState,
        to: &TokenState,
    ) -> Result<bool, StoreError> {
        ClusterStore::swap_token_state(self, serial, from, to).await
    }

    async fn stale_imports(&self, before: Timestamp) -> Result<Vec<ImportId>, StoreError> {
        ClusterStore::stale_imports(self, before).await
    }

    fn changed_pin<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        device: &Device,
        pin: &str,
    ) -> Result<crate::store::ChangedPin, EnrollError> {
        self.codec.changed_pin(rng, device, pin)
    }

    async fn audit_inventory<R: CryptoRng + ?Sized>(
        &self,
        actor: Actor,
        now: Timestamp,
        _rng: &mut R,
        action: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        self.audit_deployment(actor, now, action, detail).await
    }

    async fn tokens(
        &self,
        filter: &TokenFilter,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<InventoryToken>, StoreError> {
        self.inventory(filter, after, limit).await
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError> {
        ClusterStore::device(self, id).await
    }

    async fn user_view(&self, user: &Username) -> Result<UserView, StoreError> {
        let devices = self.devices_of(user).await?;
        let (_, account, _, life) = self.user_records(user).await?;
        Ok(UserView {
            account,
            devices: devices
                .into_iter()
                .filter(|d| !life.retired.contains(&d.id))
                .map(|d| {
                    let state = life.life(d.id);
                    (d, state)
                })
                .collect(),
            share: life.share,
        })
    }

    async fn share_requester(&self, id: ShareId) -> Result<Option<Username>, StoreError> {
        Ok(self
            .get_checked(&share_handle_key(id))
            .await?
            .and_then(|name| Username::new(&String::from_utf8_lossy(&name)).ok()))
    }

    async fn shares(&self) -> Result<Vec<Share>, StoreError> {
        let mut shares = Vec::new();
        for member in self.redis.members(&shares_index_key()).await? {
            let Some((id, requester)) = parse_member(&member) else {
                continue;
            };
            // An entry whose change never committed, or was undone since.
            if let Some(share) = self
                .life_of(&requester)
                .await?
                .share
                .filter(|s| s.id.0 == id)
            {
                shares.push(share);
            }
        }
        shares.sort_by_key(|s| (s.created, s.id.0));
        Ok(shares)
    }

    async fn shipped(&self) -> Result<Vec<Shipped>, StoreError> {
        let mut shipped = Vec::new();
        for member in self.redis.members(&shipped_index_key()).await? {
            let Some((device, user)) = parse_member(&member) else {
                continue;
            };
            let device = DeviceId(device);
            let life = self.life_of(&user).await?.life(device);
            if is_shipped(&life) {
                shipped.push(Shipped { device, user, life });
            }
        }
        Ok(shipped)
    }

    async fn change<R, T, E>(
        &self,
        user: &Username,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
        mut decide: impl FnMut(&mut dyn RegistryChange) -> Result<T, E>,
    ) -> Result<T, E>
    where
        R: CryptoRng + ?Sized,
        E: From<StoreError>,
    {
        let mut ids: Vec<DeviceId> = Vec::new();
        let mut rounds = self.rounds();
        while rounds.next().await {
            let devices = self.devices_of(user).await?;
            let (account_read, account, life_read, life) = self.user_records(user).await?;
            let unlogged_read = self.read_user(user, &[UserRecord::Unlogged]).await?;
            let claimed = self.get_checked(&phone_claim_key(user)).await?.is_some();
            let Some(unlogged_read) = unlogged_read.into_iter().next() else {
                return Err(StoreError::Database("a short read".into()).into());
            };
            let mut change = ClusterChange {
                store: self,
                rng: &mut *rng,
                now,
                actor,
                user: user.clone(),
                devices,
                account,
                account_next: None,
                before: life.clone(),
                after: life,
                audits: Vec::new(),
                ids: ids.clone(),
                wanted: 0,
                created: Vec::new(),
                phone: None,
                claimed,
                push_keys: Vec::new(),
                removed: Vec::new(),
                cleared: Vec::new(),
                erased: None,
                wrote: false,
            };
            let decided = decide(&mut change);
            if change.wanted > 0 {
                for _ in 0..change.wanted {
                    ids.push(self.next_device_id().await?);
                }
                continue;
            }
            let value = decided?;
            let ClusterChange {
                account_next,
                before,
                mut after,
                audits,
                created,
                phone,
                push_keys,
                removed,
                cleared,
                erased,
                wrote,
                devices,
                ..
            } = change;
            if !wrote && audits.is_empty() {
                return Ok(value);
            }
            if audits.is_empty() {
                return Err(StoreError::Database(
                    "a registry change without an audit entry".into(),
                )
                .into());
            }
            // Retired devices whose records are gone need no mark.
            after
                .retired
                .retain(|id| devices.iter().any(|d| d.id == *id) || removed.contains(id));
            let (index_added, index_removed) = Self::index_changes(user, &before, &after);
            for (key, member) in &index_added {
                self.redis
                    .set_add(key, member, true)
                    .await
                    .map_err(StoreError::from)?;
            }
            if let Some(share) = &after.share
                && before.share.as_ref().is_none_or(|s| s.id != share.id)
            {
                let key = share_handle_key(share.id);
                let value = self.tagged(&key, PLAIN, user.as_str().as_bytes());
                self.redis
                    .put(&key, &value, true)
                    .await
                    .map_err(StoreError::from)?;
            }
            let mut pending = decode_unlogged(user, &unlogged_read)?;
            pending.extend(audits.iter().map(encode_audit));
            let account_op = match (&account_next, erased) {
                (_, Some(_)) => Op::Delete,
                (Some(next), None) => Op::Set(self.codec.encode_user(&mut *rng, user, next)?, None),
                (None, None) => Op::Keep,
            };
            let life_op = if after == before {
                Op::Keep
            } else {
                Op::Set(after.encode(), None)
            };
            let mut writes = vec![
                (UserRecord::Account, account_read.version, account_op),
                (UserRecord::Life, life_read.version, life_op),
                (
                    UserRecord::Unlogged,
                    unlogged_read.version,
                    Op::Set(encode_unlogged(&pending), None),
                ),
            ];
            // A cleared failure state depends on what it was only for the
            // moving factor it keeps: read now, at the version the write
            // must find.
            if !cleared.is_empty() {
                let records: Vec<_> = cleared
                    .iter()
                    .map(|(id, _)| UserRecord::Failures(*id))
                    .collect();
                let read = self.read_user(user, &records).await?;
                for ((record, state), (id, least)) in records.into_iter().zip(read).zip(&cleared) {
                    let kept = super::failure_state(*id, &state)?.moving;
                    let after = FailureState {
                        moving: kept.max(*least),
                        ..FailureState::default()
                    };
                    if state.value.is_some() || after != FailureState::default() {
                        writes.push((record, state.version, Op::Set(after.encode(), None)));
                    }
                }
            }
            // One number per user across the deployment: the claim is taken
            // before the change commits, and let go if it does not.
            let claim = match &phone {
                Some((id, _)) => {
                    let key = phone_claim_key(user);
                    let value = self.tagged(&key, PLAIN, id.0.to_string().as_bytes());
                    if !self
                        .redis
                        .put_if_absent(&key, &value, true)
                        .await
                        .map_err(StoreError::from)?
                    {
                        continue;
                    }
                    Some((key, value))
                }
                None => None,
            };
            if !self.write_user(user, &writes, true).await? {
                if let Some((key, value)) = claim {
                    self.redis
                        .delete_if(&key, &value)
                        .await
                        .map_err(StoreError::from)?;
                }
                continue;
            }
            let done = Committed {
                created,
                phone,
                push_keys,
                removed,
            };
            self.finish_change(user, done, &index_removed).await?;
            if let Some(days) = erased {
                self.erase_ledger(user, now, days).await?;
                self.drop_empty_life(user).await?;
            }
            for entry in &audits {
                crate::events::emit(|| crate::events::Event::audited(entry));
            }
            return Ok(value);
        }
        Err(StoreError::Database(format!("the registry records of {user} kept changing")).into())
    }
}
