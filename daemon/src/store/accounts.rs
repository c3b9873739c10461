//! The lifecycle side of the registry, in the same redb database: users
//! (identification digest, residence, opt-out, the verified number on
//! record), device activation states and temporary-code uses, device
//! shares, the withdrawal ledger, and the append-only audit log.
//!
//! Every change to the registry goes through [`Registry::change`]: one
//! write transaction holding the change and its audit entries, committed
//! (fsync) before memory shows it and before the caller answers. Changes
//! are serialised (they are rare: operator calls, activations, approved
//! withdrawals), so a rule checked inside a change still holds when it
//! commits.

use std::fmt;

use rand::CryptoRng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::records::{DeviceCodec, Stored};
use super::registry::{
    Device, EnrollError, FailureState, NewDevice, Registry, StoreError, Verifier,
};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, ShareId, Username};
use crate::otp::SecretKey;
use crate::otp::push::PushKey;
use crate::phone::PhoneNumber;
use crate::policy::calendar::Day;
use crate::policy::withdrawal::Withdrawn;
use crate::profile::DeviceKind;
use crate::wire::AuditRecord;
use crate::wire::codec::{Put, Reader};

pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const DEVICE_LIFE: TableDefinition<u64, &[u8]> = TableDefinition::new("device-life");
pub(super) const SHARES: TableDefinition<u64, &[u8]> = TableDefinition::new("shares");
/// Cents approved per user and UTC day.
pub(super) const LEDGER: TableDefinition<(&str, u32), u64> = TableDefinition::new("ledger");
pub(super) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// Who made a change, for the audit log: the caller's role (operators
/// share the admin certificate, so the role is what sls can vouch for), or
/// `system` for what sls does by itself (auto-activation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor(pub &'static str);

impl Actor {
    pub const SYSTEM: Self = Self("system");
}

/// What sls keeps about a user besides devices.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserRecord {
    /// Country of residence, ISO 3166 alpha-2 (the opt-out rule needs it).
    pub residence: Option<[u8; 2]>,
    /// Keyed digest of the identification data (date of birth,
    /// citizenship, residence, ID document); the data itself is not kept.
    pub identity: Option<[u8; 32]>,
    /// Opted out of the Secure Login System.
    pub opted_out: bool,
    /// The number confirmed by `ConfirmPhone` (sealed at rest).
    pub number: Option<PhoneNumber>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field(
                "residence",
                &self
                    .residence
                    .map(|r| String::from_utf8_lossy(&r).into_owned()),
            )
            .field("identity", &self.identity.map(|_| ".."))
            .field("opted_out", &self.opted_out)
            .field("number", &self.number)
            .finish()
    }
}

/// Whether a device can be used yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Active,
    /// A replacement card ordered for `replaces`, not yet shipped.
    Ordered { replaces: DeviceId },
    /// Shipped: active at `activates_at`, or earlier once its holder
    /// answers a challenge with it.
    Shipped {
        replaces: DeviceId,
        shipped_at: Timestamp,
        activates_at: Timestamp,
    },
}

impl Activation {
    /// Whether the device counts as active at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        match self {
            Self::Active => true,
            Self::Ordered { .. } => false,
            Self::Shipped { activates_at, .. } => *activates_at <= now,
        }
    }
}

/// The mutable lifecycle state of a device.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceLife {
    pub activation: Activation,
    /// Uses left of a temporary code.
    pub uses_left: Option<u32>,
}

impl fmt::Debug for DeviceLife {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceLife")
            .field("activation", &self.activation)
            .field("uses_left", &self.uses_left)
            .finish()
    }
}

/// Where a share stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareState {
    /// Waiting for compliance approval.
    Pending,
    /// In effect: the requester uses the owner's device, and the
    /// requester's own devices are suspended.
    Active,
}

/// One user using another user's physical device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub id: ShareId,
    pub requester: Username,
    pub owner: Username,
    pub device: DeviceId,
    pub state: ShareState,
    pub created: Timestamp,
}

/// What memory takes on once a change has committed.
enum Effect {
    Index(Box<Device>),
    Unindex(DeviceId),
    User(Username, UserRecord),
    Life(DeviceId, DeviceLife),
    Share(Share),
    Unshare(ShareId),
    Failures(DeviceId, FailureState),
    PushKey(DeviceId, PushKey),
}

/// One change to the registry under way: its writes go to `txn`, what
/// memory must show after the commit to `effects`.
pub struct Change<'r, R: CryptoRng + ?Sized> {
    registry: &'r Registry,
    txn: WriteTransaction,
    rng: &'r mut R,
    now: Timestamp,
    actor: Actor,
    effects: Vec<Effect>,
    /// Whether anything was written, and whether an audit entry was.
    wrote: bool,
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
        let NewDevice {
            user,
            kind,
            secret,
            pin,
            label,
        } = new;
        let (secret, generated, verifier) =
            self.registry.codec.prepare(self.rng, kind, secret, pin)?;
        let id = self.add_device(
            Stored {
                user,
                kind,
                label,
                now: self.now,
                secret: Some(&secret),
            },
            verifier,
        )?;
        self.audit("enroll", Some(user), Some(id), kind.to_string())?;
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
            let mut meta = self.txn.open_table(super::registry::META)?;
            let id = meta
                .get(super::registry::NEXT_DEVICE_ID)?
                .map_or(1, |v| v.value())
                .max(1);
            meta.insert(super::registry::NEXT_DEVICE_ID, id + 1)?;
            DeviceId(id)
        };
        let codec = &self.registry.codec;
        let record = codec.encode_device(self.rng, id, &new, &verifier)?;
        self.txn
            .open_table(super::registry::DEVICES)?
            .insert(id.0, record.as_slice())?;
        if let Verifier::Phone(number) = &verifier {
            let sealed = codec.seal_phone(self.rng, id, number)?;
            self.txn
                .open_table(super::registry::PHONES)?
                .insert(id.0, sealed.as_slice())?;
        }
        self.effects.push(Effect::Index(Box::new(Device::new(
            id,
            new.user.clone(),
            new.kind,
            new.label.to_owned(),
            new.now,
            codec.expiry(new.kind, new.now),
            verifier,
        ))));
        Ok(id)
    }

    /// Removes a device and everything kept beside it.
    pub fn remove_device(&mut self, id: DeviceId) -> Result<bool, StoreError> {
        self.wrote = true;
        let existed = self
            .txn
            .open_table(super::registry::DEVICES)?
            .remove(id.0)?
            .is_some();
        self.txn
            .open_table(super::registry::FAILURES)?
            .remove(id.0)?;
        self.txn.open_table(super::registry::PHONES)?.remove(id.0)?;
        self.txn
            .open_table(super::registry::PUSH_KEYS)?
            .remove(id.0)?;
        self.txn.open_table(DEVICE_LIFE)?.remove(id.0)?;
        self.effects.push(Effect::Unindex(id));
        Ok(existed)
    }

    pub fn set_user(&mut self, user: &Username, record: UserRecord) -> Result<(), StoreError> {
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

    pub fn remove_share(&mut self, id: ShareId) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn.open_table(SHARES)?.remove(id.0)?;
        self.effects.push(Effect::Unshare(id));
        Ok(())
    }

    pub fn set_failures(&mut self, id: DeviceId, state: FailureState) -> Result<(), StoreError> {
        self.wrote = true;
        let mut table = self.txn.open_table(super::registry::FAILURES)?;
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
            .open_table(super::registry::PUSH_KEYS)?
            .insert(id.0, key.0.as_slice())?;
        self.effects.push(Effect::PushKey(id, key));
        Ok(())
    }

    /// What `user` has withdrawn on `today` and from `window_start` to
    /// `today`, as this change sees the ledger.
    pub fn withdrawn(
        &self,
        user: &Username,
        window_start: Day,
        today: Day,
    ) -> Result<Withdrawn, StoreError> {
        let table = self.txn.open_table(LEDGER)?;
        let mut withdrawn = Withdrawn::default();
        for entry in table.range((user.as_str(), window_start.0)..=(user.as_str(), today.0))? {
            let (key, cents) = entry?;
            let cents = cents.value();
            withdrawn.five_days = withdrawn.five_days.saturating_add(cents);
            if key.value().1 == today.0 {
                withdrawn.today = withdrawn.today.saturating_add(cents);
            }
        }
        Ok(withdrawn)
    }

    /// Books `cents` for `user` on `today`, and forgets the user's days
    /// older than `keep_days`.
    pub fn book_withdrawal(
        &mut self,
        user: &Username,
        today: Day,
        cents: u64,
        keep_days: u32,
    ) -> Result<(), StoreError> {
        self.wrote = true;
        let mut table = self.txn.open_table(LEDGER)?;
        let key = (user.as_str(), today.0);
        let before = table.get(key)?.map_or(0, |v| v.value());
        table.insert(key, before.saturating_add(cents))?;
        let cutoff = today.0.saturating_sub(keep_days);
        let old: Vec<u32> = table
            .range((user.as_str(), 0)..(user.as_str(), cutoff))?
            .filter_map(|entry| entry.ok().map(|(key, _)| key.value().1))
            .collect();
        for day in old {
            table.remove((user.as_str(), day))?;
        }
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
        let mut table = self.txn.open_table(AUDIT)?;
        let seq = table.last()?.map_or(1, |(key, _)| key.value() + 1);
        let entry = AuditRecord {
            seq,
            at: self.now,
            actor: self.actor.0.to_owned(),
            action: action.to_owned(),
            user: user.cloned(),
            device,
            detail: detail.into(),
        };
        table.insert(seq, encode_audit(&entry).as_slice())?;
        self.audited = true;
        Ok(())
    }
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
            Effect::Life(id, life) => {
                if let Some(device) = self.device(id) {
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
                    *device.failures() = state;
                }
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

impl DeviceCodec {
    /// The keyed digest of identification data: what sharing compares.
    /// Fields are compared as written, ignoring case and surrounding space.
    pub(super) fn identity_digest(&self, identity: &crate::wire::Identification) -> [u8; 32] {
        let norm = |text: &str| text.trim().to_uppercase();
        let fields = [
            norm(&identity.date_of_birth),
            norm(&identity.citizenship),
            norm(&identity.residence),
            norm(&identity.id_document),
        ];
        let parts: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        self.cipher.digest("sls/1 identification", &parts)
    }

    /// A user record as either store keeps it, the number sealed.
    pub(super) fn encode_user<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        user: &Username,
        record: &UserRecord,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![1u8];
        out.put_u8(u8::from(record.opted_out));
        out.put_bytes(record.residence.as_ref().map_or(&[][..], |r| r.as_slice()));
        out.put_bytes(record.identity.as_ref().map_or(&[][..], |d| d.as_slice()));
        let sealed = match &record.number {
            Some(number) => self.cipher.seal(
                rng,
                number.to_string().as_bytes(),
                &user_context(user, "number"),
            )?,
            None => Vec::new(),
        };
        out.put_bytes(&sealed);
        Ok(out)
    }

    pub(super) fn decode_user(
        &self,
        user: &Username,
        bytes: &[u8],
    ) -> Result<UserRecord, StoreError> {
        let corrupt = || StoreError::Corrupt {
            device: 0,
            problem: format!("user record of {user}"),
        };
        let mut r = Reader::new(bytes);
        if r.u8("version").ok() != Some(1) {
            return Err(corrupt());
        }
        let opted_out = r.u8("opted out").map_err(|_| corrupt())? != 0;
        let residence = match r.bytes("residence").map_err(|_| corrupt())? {
            [] => None,
            code => Some(code.try_into().map_err(|_| corrupt())?),
        };
        let identity = match r.bytes("identity").map_err(|_| corrupt())? {
            [] => None,
            digest => Some(digest.try_into().map_err(|_| corrupt())?),
        };
        let number = match r.bytes("number").map_err(|_| corrupt())? {
            [] => None,
            sealed => {
                let text = self.cipher.open(sealed, &user_context(user, "number"))?;
                let text = std::str::from_utf8(&text).map_err(|_| corrupt())?;
                Some(PhoneNumber::parse(text).map_err(|_| corrupt())?)
            }
        };
        r.finish().map_err(|_| corrupt())?;
        Ok(UserRecord {
            residence,
            identity,
            opted_out,
            number,
        })
    }
}

fn user_context(user: &Username, what: &str) -> Vec<u8> {
    format!("sls/1 user {user} {what}").into_bytes()
}

pub(super) fn encode_life(life: &DeviceLife) -> Vec<u8> {
    let mut out = vec![1u8];
    match life.activation {
        Activation::Active => out.put_u8(0),
        Activation::Ordered { replaces } => {
            out.put_u8(1);
            out.put_u64(replaces.0);
        }
        Activation::Shipped {
            replaces,
            shipped_at,
            activates_at,
        } => {
            out.put_u8(2);
            out.put_u64(replaces.0);
            out.put_u64(shipped_at.0);
            out.put_u64(activates_at.0);
        }
    }
    out.put_u64(life.uses_left.map_or(u64::MAX, u64::from));
    // Where earlier versions kept a digest of the IB Key app's PIN: the
    // PIN stays on the phone, so the field is written empty.
    out.put_bytes(&[]);
    out
}

pub(super) fn decode_life(bytes: &[u8]) -> Option<DeviceLife> {
    let mut r = Reader::new(bytes);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let activation = match r.u8("activation").ok()? {
        0 => Activation::Active,
        1 => Activation::Ordered {
            replaces: DeviceId(r.u64("replaces").ok()?),
        },
        2 => Activation::Shipped {
            replaces: DeviceId(r.u64("replaces").ok()?),
            shipped_at: Timestamp(r.u64("shipped at").ok()?),
            activates_at: Timestamp(r.u64("activates at").ok()?),
        },
        _ => return None,
    };
    let uses_left = match r.u64("uses left").ok()? {
        u64::MAX => None,
        uses => Some(u32::try_from(uses).ok()?),
    };
    // An app PIN digest an earlier version kept is dropped unread.
    r.bytes("app pin").ok()?;
    r.finish().ok()?;
    Some(DeviceLife {
        activation,
        uses_left,
    })
}

pub(super) fn encode_share(share: &Share) -> Vec<u8> {
    let mut out = vec![1u8];
    out.put_bytes(share.requester.as_str().as_bytes());
    out.put_bytes(share.owner.as_str().as_bytes());
    out.put_u64(share.device.0);
    out.put_u8(match share.state {
        ShareState::Pending => 0,
        ShareState::Active => 1,
    });
    out.put_u64(share.created.0);
    out
}

pub(super) fn decode_share(id: ShareId, bytes: &[u8]) -> Option<Share> {
    let mut r = Reader::new(bytes);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let requester = Username::new(r.str("requester").ok()?).ok()?;
    let owner = Username::new(r.str("owner").ok()?).ok()?;
    let device = DeviceId(r.u64("device").ok()?);
    let state = match r.u8("state").ok()? {
        0 => ShareState::Pending,
        1 => ShareState::Active,
        _ => return None,
    };
    let created = Timestamp(r.u64("created").ok()?);
    r.finish().ok()?;
    Some(Share {
        id,
        requester,
        owner,
        device,
        state,
        created,
    })
}

pub(super) fn encode_audit(entry: &AuditRecord) -> Vec<u8> {
    let mut out = vec![1u8];
    out.put_u64(entry.at.0);
    out.put_bytes(entry.actor.as_bytes());
    out.put_bytes(entry.action.as_bytes());
    out.put_bytes(entry.user.as_ref().map_or("", Username::as_str).as_bytes());
    out.put_u64(entry.device.map_or(0, |d| d.0));
    out.put_bytes(entry.detail.as_bytes());
    out
}

pub(super) fn decode_audit(seq: u64, bytes: &[u8]) -> Option<AuditRecord> {
    let mut r = Reader::new(bytes);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let at = Timestamp(r.u64("at").ok()?);
    let actor = r.str("actor").ok()?.to_owned();
    let action = r.str("action").ok()?.to_owned();
    let user = match r.str("user").ok()? {
        "" => None,
        name => Some(Username::new(name).ok()?),
    };
    let device = match r.u64("device").ok()? {
        0 => None,
        id => Some(DeviceId(id)),
    };
    let detail = r.str("detail").ok()?.to_owned();
    r.finish().ok()?;
    Some(AuditRecord {
        seq,
        at,
        actor,
        action,
        user,
        device,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let life = DeviceLife {
            activation: Activation::Shipped {
                replaces: DeviceId(4),
                shipped_at: Timestamp(10),
                activates_at: Timestamp(20),
            },
            uses_left: Some(3),
        };
        assert_eq!(decode_life(&encode_life(&life)), Some(life));
        let share = Share {
            id: ShareId(7),
            requester: Username::new("amy").unwrap(),
            owner: Username::new("bob").unwrap(),
            device: DeviceId(3),
            state: ShareState::Pending,
            created: Timestamp(5),
        };
        assert_eq!(decode_share(ShareId(7), &encode_share(&share)), Some(share));
        let entry = AuditRecord {
            seq: 1,
            at: Timestamp(1),
            actor: "admin".into(),
            action: "enroll".into(),
            user: Username::new("amy").ok(),
            device: Some(DeviceId(2)),
            detail: "dsc-plus".into(),
        };
        assert_eq!(decode_audit(1, &encode_audit(&entry)), Some(entry));
        assert_eq!(decode_life(&[2]), None);
        assert_eq!(decode_share(ShareId(1), &[1, 0]), None);
    }

    #[test]
    fn a_shipped_card_is_active_from_its_activation_time() {
        let shipped = Activation::Shipped {
            replaces: DeviceId(1),
            shipped_at: Timestamp(0),
            activates_at: Timestamp(100),
        };
        assert!(!shipped.is_active(Timestamp(99)));
        assert!(shipped.is_active(Timestamp(100)));
        assert!(
            !Activation::Ordered {
                replaces: DeviceId(1)
            }
            .is_active(Timestamp(u64::MAX))
        );
    }
}
