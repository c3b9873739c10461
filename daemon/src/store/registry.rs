//! The durable registry: users, devices, sealed secrets and PIN hashes,
//! failure counters and lockouts, in an embedded redb database, with an
//! in-memory index that the hot path reads.
//!
//! Every device is loaded at start and kept ready to verify (its HMAC key
//! state precomputed). Changes are written to the database and committed
//! (fsync) before the in-memory index shows them and before the caller
//! answers; failure counters, the hot write, go through the group
//! committer (`committer.rs`) so a burst of them costs one commit.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use rand::CryptoRng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::records::{DeviceCodec, Stored};
use super::sealed::{SealError, SecretCipher};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Username};
use crate::otp::card::CodeCard;
use crate::otp::ocra::Ocra;
use crate::otp::push::PushKey;
use crate::otp::{MacOutput, SecretKey};
use crate::phone::PhoneNumber;
use crate::profile::{DeviceKind, DeviceProfiles};
use crate::wire::codec::{Put, Reader};

const DEVICES: TableDefinition<u64, &[u8]> = TableDefinition::new("devices");
const FAILURES: TableDefinition<u64, &[u8]> = TableDefinition::new("failures");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The verified number of each SMS device, sealed (it is personal data).
const PHONES: TableDefinition<u64, &[u8]> = TableDefinition::new("phones");
/// The push public key of IB Key devices that have one.
const PUSH_KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("push-keys");
const NEXT_DEVICE_ID: &str = "next-device-id";

/// A database or at-rest-encryption failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("stored record of device {device} is damaged: {problem}")]
    Corrupt { device: u64, problem: String },
    #[error(transparent)]
    Shared(#[from] super::redis::RedisError),
}

macro_rules! database_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for StoreError {
            fn from(error: $error) -> Self {
                Self::Database(error.to_string())
            }
        }
    )*};
}
database_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why an enrolment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Consecutive failures and lockout of one device; durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureState {
    /// Wrong answers since the last right one or the last lockout.
    pub consecutive: u32,
    /// Lockouts since the last right answer (each doubles the next).
    pub lockouts: u32,
    /// Locked until this moment (in the past when not locked).
    pub locked_until: Timestamp,
}

impl FailureState {
    /// The stored form (a shared store's record, the database's value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.put_u64(u64::from(self.consecutive) << 32 | u64::from(self.lockouts));
        out.put_u64(self.locked_until.0);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let counts = r.u64("counts").ok()?;
        let locked_until = Timestamp(r.u64("locked until").ok()?);
        r.finish().ok()?;
        Some(Self {
            consecutive: (counts >> 32) as u32,
            lockouts: (counts & 0xffff_ffff) as u32,
            locked_until,
        })
    }
}

/// How a device's answers are checked.
pub enum Verifier {
    /// OCRA, with the PIN hash for suites that bind a PIN.
    Ocra {
        ocra: Ocra,
        pin_hash: Option<MacOutput>,
    },
    Card(CodeCard),
    /// Codes sent by SMS or voice to this verified number.
    Phone(PhoneNumber),
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ocra { ocra, .. } => write!(f, "Verifier::Ocra({})", ocra.suite()),
            Self::Card(card) => write!(f, "Verifier::Card({} positions)", card.positions()),
            Self::Phone(number) => write!(f, "Verifier::Phone({number:?})"),
        }
    }
}

/// An enrolled device, ready to verify.
#[derive(Debug)]
pub struct Device {
    pub id: DeviceId,
    pub user: Username,
    pub kind: DeviceKind,
    pub label: String,
    pub created: Timestamp,
    /// When the device stops working: its kind's validity after activation
    /// (Online Security Code Cards, temporary codes), as configured now.
    pub expires: Option<Timestamp>,
    pub verifier: Verifier,
    failures: Mutex<FailureState>,
    /// The key push approvals are signed with (IB Key devices).
    push_key: Mutex<Option<PushKey>>,
}

impl Device {
    /// Whether the device's validity has ended at `now`.
    pub fn expired_at(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|end| end <= now)
    }

    /// The failure state, locked for reading and changing.
    pub fn failures(&self) -> MutexGuard<'_, FailureState> {
        // Every change is a whole-value assignment; a poisoned lock holds a
        // consistent value.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The public key this device signs push approvals with, if bound.
    pub fn push_key(&self) -> Option<PushKey> {
        *self.push_key.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the push key, as read from a store.
    pub(super) fn set_push_key(&self, key: Option<PushKey>) {
        *self.push_key.lock().unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// The verified number of an SMS device.
    pub fn phone(&self) -> Option<&PhoneNumber> {
        match &self.verifier {
            Verifier::Phone(number) => Some(number),
            _ => None,
        }
    }

    pub(super) fn new(
        id: DeviceId,
        user: Username,
        kind: DeviceKind,
        label: String,
        created: Timestamp,
        expires: Option<Timestamp>,
        verifier: Verifier,
    ) -> Self {
        Self {
            id,
            user,
            kind,
            label,
            created,
            expires,
            verifier,
            failures: Mutex::new(FailureState::default()),
            push_key: Mutex::new(None),
        }
    }
}

/// What an operator enrols.
#[derive(Debug)]
pub struct NewDevice<'a> {
    pub user: &'a Username,
    pub kind: DeviceKind,
    /// The device's key; `None` generates one.
    pub secret: Option<SecretKey>,
    pub pin: Option<&'a str>,
    pub label: &'a str,
}

/// The registry of devices.
pub struct Registry {
    db: Database,
    codec: DeviceCodec,
    devices: RwLock<HashMap<DeviceId, Arc<Device>>>,
    by_user: RwLock<HashMap<Username, Vec<DeviceId>>>,
    /// Held from a per-user rule's check to the index update, so that two
    /// racing enrolments cannot both pass it (one number per user).
    enrolling: Mutex<()>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("devices", &self.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens (or creates) the database at `path` and loads every device.
    pub fn open(
        path: &Path,
        cipher: SecretCipher,
        profiles: DeviceProfiles,
    ) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        {
            // Make sure the tables exist, so that reads never fail on a new file.
            let txn = db.begin_write()?;
            txn.open_table(DEVICES)?;
            txn.open_table(FAILURES)?;
            txn.open_table(META)?;
            txn.open_table(PHONES)?;
            txn.open_table(PUSH_KEYS)?;
            txn.commit()?;
        }
        let registry = Self {
            db,
            codec: DeviceCodec::new(cipher, profiles),
            devices: RwLock::new(HashMap::new()),
            by_user: RwLock::new(HashMap::new()),
            enrolling: Mutex::new(()),
        };
        registry.load()?;
        Ok(registry)
    }

    fn load(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let failures_table = txn.open_table(FAILURES)?;
        let phones = txn.open_table(PHONES)?;
        let push_keys = txn.open_table(PUSH_KEYS)?;
        let mut devices = HashMap::new();
        let mut by_user: HashMap<Username, Vec<DeviceId>> = HashMap::new();
        for entry in txn.open_table(DEVICES)?.iter()? {
            let (id, record) = entry?;
            let id = DeviceId(id.value());
            let failures = match failures_table.get(id.0)? {
                Some(bytes) => {
                    FailureState::decode(bytes.value()).ok_or_else(|| StoreError::Corrupt {
                        device: id.0,
                        problem: "failure state".into(),
                    })?
                }
                None => FailureState::default(),
            };
            let phone = match phones.get(id.0)? {
                Some(sealed) => Some(self.codec.open_phone(id, sealed.value())?),
                None => None,
            };
            let device = self.codec.decode_device(id, record.value(), phone)?;
            *device.failures() = failures;
            if let Some(key) = push_keys.get(id.0)? {
                let key = key.value().try_into().map_err(|_| StoreError::Corrupt {
                    device: id.0,
                    problem: "push key".into(),
                })?;
                *device
                    .push_key
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(PushKey(key));
            }
            by_user.entry(device.user.clone()).or_default().push(id);
            devices.insert(id, Arc::new(device));
        }
        *self.devices.write().unwrap_or_else(PoisonError::into_inner) = devices;
        *self.by_user.write().unwrap_or_else(PoisonError::into_inner) = by_user;
        Ok(())
    }

    /// Devices registered.
    pub fn len(&self) -> usize {
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self, id: DeviceId) -> Option<Arc<Device>> {
        self.devices
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// The user's devices, oldest first; empty for an unknown user.
    pub fn devices_of(&self, user: &Username) -> Vec<Arc<Device>> {
        let ids = self
            .by_user
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned()
            .unwrap_or_default();
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        ids.iter()
            .filter_map(|id| devices.get(id).cloned())
            .collect()
    }

    /// Registers a device. With no `secret`, one is generated and returned.
    pub fn enroll<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        new: NewDevice<'_>,
        now: Timestamp,
    ) -> Result<(DeviceId, Option<SecretKey>), EnrollError> {
        let NewDevice {
            user,
            kind,
            secret,
            pin,
            label,
        } = new;
        let (secret, generated, verifier) = self.codec.prepare(rng, kind, secret, pin)?;
        let new = Stored {
            user,
            kind,
            label,
            now,
            secret: Some(&secret),
        };
        let id = self.add(rng, new, verifier, |_, _, _| Ok(()))?;
        Ok((id, generated.then_some(secret)))
    }

    /// Registers a verified phone number for a user: an SMS device. One
    /// number per user; a second is refused until the first is revoked.
    pub fn enroll_phone<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        user: &Username,
        number: PhoneNumber,
        label: &str,
        now: Timestamp,
    ) -> Result<DeviceId, EnrollError> {
        let _enrolling = self
            .enrolling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = self.devices_of(user).iter().find(|d| d.phone().is_some()) {
            return Err(EnrollError::Invalid(format!(
                "the user already has a verified number (device {}); revoke it first",
                existing.id
            )));
        }
        let new = Stored {
            user,
            kind: DeviceKind::Sms,
            label,
            now,
            secret: None,
        };
        let sealed_number = number.clone();
        let id = self.add(rng, new, Verifier::Phone(number), |txn, id, rng| {
            let sealed = self.codec.seal_phone(rng, id, &sealed_number)?;
            txn.open_table(PHONES)?.insert(id.0, sealed.as_slice())?;
            Ok(())
        })?;
        Ok(id)
    }

    /// Sets the push key of an IB Key device. `Ok(false)`: no such device.
    pub fn bind_push_key(&self, id: DeviceId, key: PushKey) -> Result<bool, EnrollError> {
        let Some(device) = self.device(id) else {
            return Ok(false);
        };
        if device.kind != DeviceKind::IbKey {
            return Err(EnrollError::Invalid(format!(
                "push keys are for IB Key devices, not {}",
                device.kind
            )));
        }
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        txn.open_table(PUSH_KEYS)
            .map_err(StoreError::from)?
            .insert(id.0, key.0.as_slice())
            .map_err(StoreError::from)?;
        txn.commit().map_err(StoreError::from)?;
        *device
            .push_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(key);
        Ok(true)
    }

    /// Allocates a device id, writes the device's record and what `also`
    /// adds in one transaction, commits (fsync), then shows the device to
    /// readers.
    fn add<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        new: Stored<'_>,
        verifier: Verifier,
        also: impl FnOnce(&redb::WriteTransaction, DeviceId, &mut R) -> Result<(), StoreError>,
    ) -> Result<DeviceId, StoreError> {
        let txn = self.db.begin_write()?;
        let id = {
            let mut meta = txn.open_table(META)?;
            let id = meta.get(NEXT_DEVICE_ID)?.map_or(1, |v| v.value()).max(1);
            meta.insert(NEXT_DEVICE_ID, id + 1)?;
            DeviceId(id)
        };
        let record = self.codec.encode_device(rng, id, &new, &verifier)?;
        txn.open_table(DEVICES)?.insert(id.0, record.as_slice())?;
        also(&txn, id, rng)?;
        txn.commit()?;
        self.index(Device::new(
            id,
            new.user.clone(),
            new.kind,
            new.label.to_owned(),
            new.now,
            self.codec.expiry(new.kind, new.now),
            verifier,
        ));
        Ok(id)
    }

    /// Makes a stored device visible to readers.
    fn index(&self, device: Device) {
        let (id, user) = (device.id, device.user.clone());
        self.devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::new(device));
        self.by_user
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user)
            .or_default()
            .push(id);
    }

    /// Removes a device for good; false if there was none.
    pub fn revoke(&self, id: DeviceId) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let existed = txn.open_table(DEVICES)?.remove(id.0)?.is_some();
        txn.open_table(FAILURES)?.remove(id.0)?;
        txn.open_table(PHONES)?.remove(id.0)?;
        txn.open_table(PUSH_KEYS)?.remove(id.0)?;
        txn.commit()?;
        let removed = self
            .devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(device) = removed {
            let mut by_user = self.by_user.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(ids) = by_user.get_mut(&device.user) {
                ids.retain(|d| *d != id);
                if ids.is_empty() {
                    by_user.remove(&device.user);
                }
            }
        }
        Ok(existed)
    }

    /// Writes failure states in one transaction (one fsync for the batch).
    pub fn save_failures(&self, batch: &[(DeviceId, FailureState)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(FAILURES)?;
            for (id, state) in batch {
                if *state == FailureState::default() {
                    table.remove(id.0)?;
                } else {
                    table.insert(id.0, state.encode().as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}
