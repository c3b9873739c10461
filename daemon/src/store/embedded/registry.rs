//! The durable registry: users, devices, sealed secrets and PIN hashes,
//! failure counters and lockouts, in an embedded redb database, with an
//! in-memory index that the hot path reads.
//!
//! Every device is loaded at start and kept ready to verify (its HMAC key
//! state precomputed). Changes are written to the database and committed
//! (fsync) before the in-memory index shows them and before the caller
//! answers; failure counters, the hot write, go through the group
//! committer (`committer.rs`) so a burst of them costs one commit.

use crate::store::model::*;
use std::collections::BTreeSet;
// foldhash, not SipHash: these maps hold every device and user and are
// read on every login (and filled at start, ten million inserts). Their
// keys are ids the registry assigns and names only an operator adds, so
// no caller can fill them with colliding keys; a lookup of a chosen name
// costs what any lookup does. foldhash is seeded per process.
use foldhash::{HashMap, HashMapExt};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use rand::CryptoRng;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::clock::Timestamp;
use crate::identity::{DeviceId, Serial, ShareId, Username};
use crate::otp::SecretKey;
use crate::profile::DeviceProfiles;
use crate::store::embedded::accounts::{AUDIT, DEVICE_LIFE, SHARES, USERS};
use crate::store::embedded::ledger::{Booking, LEDGER, Ledger};
use crate::store::inventory::{ImportId, InventoryToken, Staged, TokenFilter, TokenState};
use crate::store::records::DeviceCodec;
use crate::store::sealed::SecretCipher;
use crate::store::{Account, Actor, Share};
use crate::wire::token::TokenInfo;

pub(super) const DEVICES: TableDefinition<u64, &[u8]> = TableDefinition::new("devices");
pub(super) const FAILURES: TableDefinition<u64, &[u8]> = TableDefinition::new("failures");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The verified number of each SMS device, sealed (it is personal data).
pub(super) const PHONES: TableDefinition<u64, &[u8]> = TableDefinition::new("phones");
/// The push public key of IB Key devices that have one.
pub(super) const PUSH_KEYS: TableDefinition<u64, &[u8]> = TableDefinition::new("push-keys");
pub(super) const NEXT_DEVICE_ID: &str = "next-device-id";
/// The meta key holding the database's format.
const FORMAT_KEY: &str = "format";
/// The layout of the database this release writes. A database without
/// the key is of format 0 (written before formats were recorded; its
/// layout is format 1's). A newer one is refused: its rows may mean
/// something this release would misread.
pub const FORMAT: u64 = 1;
/// A user's device ids, oldest first.
type UserDevices = smallvec::SmallVec<[DeviceId; 2]>;
/// `store.database-cache-mb`'s default.
const DEFAULT_CACHE_BYTES: usize = 32 << 20;

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

/// Brings the database in `txn` to [`FORMAT`], or refuses a newer one.
/// Each step from one format to the next goes here, in order, so that a
/// database of any older format is carried up to this one.
fn migrate(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    let found = meta.get(FORMAT_KEY)?.map_or(0, |v| v.value());
    if found > FORMAT {
        return Err(StoreError::NewerFormat {
            found,
            supported: FORMAT,
        });
    }
    if found < FORMAT {
        // 0 -> 1: the layout is the same; only the format is recorded.
        let existing = meta.get(NEXT_DEVICE_ID)?.is_some();
        meta.insert(FORMAT_KEY, FORMAT)?;
        if existing {
            tracing::info!(from = found, to = FORMAT, "database migrated");
        }
    }
    Ok(())
}

/// Something done to each of the registry's tables in turn.
pub(super) trait EachTable {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &mut self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError>;
}

/// Every table of the registry, in one list: the tables a start makes
/// and a backup copies (and the only ones it knows).
pub(super) fn every_table(each: &mut impl EachTable) -> Result<(), StoreError> {
    each.table(DEVICES)?;
    each.table(FAILURES)?;
    each.table(META)?;
    each.table(PHONES)?;
    each.table(PUSH_KEYS)?;
    each.table(USERS)?;
    each.table(DEVICE_LIFE)?;
    each.table(SHARES)?;
    each.table(LEDGER)?;
    each.table(AUDIT)?;
    each.table(super::inventory::TOKENS)?;
    each.table(super::inventory::IMPORTS)
}

/// Makes each table that does not exist yet.
struct Make<'t>(&'t redb::WriteTransaction);

impl EachTable for Make<'_> {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &mut self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError> {
        self.0.open_table(table)?;
        Ok(())
    }
}

/// The format recorded in the database at `path` (0: none recorded).
pub fn stored_format(path: &Path) -> Result<u64, StoreError> {
    let db = Database::open(path)?;
    let txn = db.begin_read()?;
    Ok(txn
        .open_table(META)?
        .get(FORMAT_KEY)?
        .map_or(0, |v| v.value()))
}

/// The in-memory indexes a start builds as the devices arrive.
struct Loaded {
    devices: HashMap<DeviceId, Arc<Device>>,
    by_user: HashMap<Username, UserDevices>,
    shipped: BTreeSet<DeviceId>,
}

impl Loaded {
    fn with_capacity(devices: usize) -> Self {
        Self {
            devices: HashMap::with_capacity(devices),
            by_user: HashMap::new(),
            shipped: BTreeSet::new(),
        }
    }

    fn add(&mut self, chunk: Vec<Arc<Device>>) {
        for device in chunk {
            if device.life_mut().activation.is_shipped() {
                self.shipped.insert(device.id);
            }
            // A user's devices oldest first, though chunks come in any order.
            let ids = self.by_user.entry(device.user.clone()).or_default();
            ids.insert(ids.partition_point(|id| *id < device.id), device.id);
            self.devices.insert(device.id, device);
        }
    }
}

/// The registry of devices.
pub struct Registry {
    pub(super) db: Database,
    pub(super) codec: DeviceCodec,
    devices: RwLock<HashMap<DeviceId, Arc<Device>>>,
    /// Most users have one or two devices: held inline, no allocation.
    by_user: RwLock<HashMap<Username, UserDevices>>,
    users: RwLock<HashMap<Username, Account>>,
    shares: RwLock<HashMap<ShareId, Share>>,
    /// The replacement cards shipped and not yet active: what the
    /// minute's activation check reads (`Store::shipped`), instead of
    /// every device's state (a second of a runtime thread at ten million
    /// devices, every minute). Kept with each device's state: at load,
    /// and by every change that sets or removes it.
    shipped: Mutex<BTreeSet<DeviceId>>,
    /// Held for the whole of a change (`Registry::change`), so that a rule
    /// checked inside it (one number per user, a withdrawal limit) still
    /// holds when it commits.
    changing: Mutex<()>,
    /// Approved withdrawals by user and day (`ledger.rs`).
    ledger: Ledger,
    /// Makes committed changes durable, many per fsync.
    pub(super) flusher: crate::store::embedded::flush::Flusher,
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
        Self::open_with_cache(path, cipher, profiles, DEFAULT_CACHE_BYTES)
    }

    /// [`open`](Self::open), with `cache_bytes` for the database's page
    /// cache (`store.database-cache-mb`).
    pub fn open_with_cache(
        path: &Path,
        cipher: SecretCipher,
        profiles: DeviceProfiles,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)?;
        {
            // The format first: a newer database is not written to at all.
            // Then make sure the tables exist, so that reads never fail on
            // a new file.
            let txn = db.begin_write()?;
            migrate(&txn)?;
            every_table(&mut Make(&txn))?;
            txn.commit()?;
        }
        let registry = Self {
            db,
            codec: DeviceCodec::new(cipher, profiles),
            devices: RwLock::new(HashMap::new()),
            by_user: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            shares: RwLock::new(HashMap::new()),
            shipped: Mutex::new(BTreeSet::new()),
            changing: Mutex::new(()),
            ledger: Ledger::default(),
            // `store.commit-interval`'s default; `with_commit_interval` sets it.
            flusher: crate::store::embedded::flush::Flusher::new(std::time::Duration::from_millis(
                2,
            )),
        };
        registry.load()?;
        Ok(registry)
    }

    /// How many devices the database at `path` holds, without loading
    /// them (a registry too large to load twice is counted this way).
    pub fn stored_devices(path: &Path) -> Result<u64, StoreError> {
        let db = Database::open(path)?;
        let txn = db.begin_read()?;
        Ok(redb::ReadableTableMetadata::len(&txn.open_table(DEVICES)?)?)
    }

    /// Changes committed and flushes (fsyncs) that made them durable,
    /// since the registry was opened.
    pub fn change_counts(&self) -> (u64, u64) {
        self.flusher.counts()
    }

    /// How long a flush waits for the changes under way to commit and
    /// ride along (`store.commit-interval`).
    pub fn with_commit_interval(mut self, interval: std::time::Duration) -> Self {
        self.flusher = crate::store::embedded::flush::Flusher::new(interval);
        self
    }

    fn load(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let stored = redb::ReadableTableMetadata::len(&txn.open_table(DEVICES)?)?;
        let mut loaded = Loaded::with_capacity(usize::try_from(stored).unwrap_or(0));
        super::load::devices(&self.db, &self.codec, super::load::threads(), |chunk| {
            loaded.add(chunk)
        })?;
        let mut users = HashMap::new();
        for entry in txn.open_table(USERS)?.iter()? {
            let (name, record) = entry?;
            let user = Username::new(name.value()).map_err(|e| StoreError::Corrupt {
                device: 0,
                problem: format!("user name: {e}"),
            })?;
            let record = self.codec.decode_user(&user, record.value())?;
            users.insert(user, record);
        }
        let mut shares = HashMap::new();
        for entry in txn.open_table(SHARES)?.iter()? {
            let (id, record) = entry?;
            let id = ShareId(id.value());
            let share =
                crate::store::records::decode_share(id, record.value()).ok_or_else(|| {
                    StoreError::Corrupt {
                        device: 0,
                        problem: format!("share {id}"),
                    }
                })?;
            shares.insert(id, share);
        }
        *self.devices.write().unwrap_or_else(PoisonError::into_inner) = loaded.devices;
        *self.by_user.write().unwrap_or_else(PoisonError::into_inner) = loaded.by_user;
        *self.users.write().unwrap_or_else(PoisonError::into_inner) = users;
        *self.shares.write().unwrap_or_else(PoisonError::into_inner) = shares;
        *self.shipped_mut() = loaded.shipped;
        self.ledger.load(&txn.open_table(LEDGER)?)?;
        Ok(())
    }

    pub(super) fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn users_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Username, Account>> {
        self.users.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn shares_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ShareId, Share>> {
        self.shares.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn shipped_mut(&self) -> MutexGuard<'_, BTreeSet<DeviceId>> {
        self.shipped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What sls keeps about `user` (the default for a user it has none of).
    pub fn user(&self, user: &Username) -> Account {
        self.users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Every share, pending or in effect.
    pub fn shares(&self) -> Vec<Share> {
        let mut shares: Vec<_> = self
            .shares
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        shares.sort_by_key(|s| (s.created, s.id.0));
        shares
    }

    /// Whether `user` opted out of the Secure Login System ([`Self::user`]
    /// without copying the account: every `Devices` asks).
    pub fn opted_out(&self, user: &Username) -> bool {
        self.users
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .is_some_and(|account| account.opted_out)
    }

    /// The share in effect through which `user` uses another's device.
    /// (Scans the shares, which are few; the login path calls it.)
    pub fn active_share_of(&self, user: &Username) -> Option<Share> {
        self.shares
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|s| &s.requester == user && s.state == crate::store::ShareState::Active)
            .cloned()
    }

    /// The share (pending or in effect) `requester` asked for: a user has
    /// at most one.
    pub fn share_of(&self, requester: &Username) -> Option<Share> {
        self.shares
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .find(|s| &s.requester == requester)
            .cloned()
    }

    pub fn share(&self, id: ShareId) -> Option<Share> {
        self.shares
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
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

    /// Whether `user` has any device (revoked ones are gone).
    pub fn has_devices(&self, user: &Username) -> bool {
        self.by_user
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .is_some_and(|ids| !ids.is_empty())
    }

    /// The user's devices, oldest first; empty for an unknown user.
    pub fn devices_of(&self, user: &Username) -> Vec<Arc<Device>> {
        // Both read locks at once (always this order; writers take one at
        // a time), rather than a copy of the ids: this is every login's.
        let by_user = self.by_user.read().unwrap_or_else(PoisonError::into_inner);
        let Some(ids) = by_user.get(user) else {
            return Vec::new();
        };
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        ids.iter()
            .filter_map(|id| devices.get(id).cloned())
            .collect()
    }

    /// Makes a device stored by a change visible to readers.
    pub(super) fn index(&self, device: Device) {
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

    /// Hides a device removed by a change.
    pub(super) fn unindex(&self, id: DeviceId) {
        let removed = self
            .devices
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.shipped_mut().remove(&id);
        if let Some(device) = removed {
            let mut by_user = self.by_user.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(ids) = by_user.get_mut(&device.user) {
                ids.retain(|d| *d != id);
                if ids.is_empty() {
                    by_user.remove(&device.user);
                }
            }
        }
    }

    /// Writes failure states in one transaction (one fsync for the batch).
    /// A moving factor stored higher (by a registry change that ran
    /// meanwhile) is kept: what was used stays used.
    pub fn save_failures(&self, batch: &[(DeviceId, FailureState)]) -> Result<(), StoreError> {
        self.save(batch, &[])
    }

    /// Decides a withdrawal of `user` from what the user has withdrawn in
    /// `window_start..=today`, bookings not yet durable included: `decide`
    /// returns its answer and the cents to book, if any. A booking shows
    /// at once; [`Registry::save`] makes it durable (or takes it back).
    pub fn decide_withdrawal<T>(
        &self,
        user: &Username,
        window_start: crate::policy::calendar::Day,
        today: crate::policy::calendar::Day,
        decide: impl FnOnce(crate::policy::withdrawal::Withdrawn) -> (T, Option<u64>),
    ) -> T {
        self.ledger.decide(user, window_start, today, decide)
    }

    /// Writes failure states (each at least as far as the stored one moved)
    /// and withdrawal bookings with their audit entries in one transaction
    /// with fsync; a booking that could not be written is taken back from
    /// memory.
    pub fn save(
        &self,
        failures: &[(DeviceId, FailureState)],
        bookings: &[&Booking],
    ) -> Result<(), StoreError> {
        let saved = self.write_batch(failures, bookings);
        for booking in bookings {
            self.ledger.settle(booking, saved.is_ok());
        }
        saved
    }

    fn write_batch(
        &self,
        failures: &[(DeviceId, FailureState)],
        bookings: &[&Booking],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        for booking in bookings {
            super::ledger::write(&txn, booking)?;
            super::accounts::append_audit(&txn, booking.audit_entry())?;
        }
        {
            let mut table = txn.open_table(FAILURES)?;
            for (id, state) in failures {
                let stored = table
                    .get(id.0)?
                    .and_then(|v| FailureState::decode(v.value()))
                    .map_or(0, |s| s.moving);
                let state = FailureState {
                    moving: state.moving.max(stored),
                    ..*state
                };
                if state == FailureState::default() {
                    table.remove(id.0)?;
                } else {
                    table.insert(id.0, state.encode().as_slice())?;
                }
            }
        }
        txn.commit()?;
        for booking in bookings {
            crate::events::emit(|| crate::events::Event::audited(&booking.audit_entry()));
        }
        Ok(())
    }
}

/// The embedded store's side of the lifecycle operations: memory answers
/// at once, and a change is one serialised write transaction.
impl crate::store::Store for Registry {
    fn identity_digest(&self, identity: &crate::wire::Identification) -> [u8; 32] {
        Registry::identity_digest(self, identity)
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
        Ok(self.codec.keyring().rotate(rng)?)
    }

    async fn retire_keys<R: CryptoRng + ?Sized>(
        &self,
        _: &mut R,
    ) -> Result<Vec<crate::store::sealed::KeyId>, StoreError> {
        Ok(self.codec.keyring().retire()?)
    }

    async fn reseal<R: CryptoRng + ?Sized>(
        &self,
        cursor: &mut crate::store::change::ResealCursor,
        limit: usize,
        rng: &mut R,
    ) -> Result<crate::store::change::ResealStep, StoreError> {
        self.reseal_step(cursor, limit, rng)
    }

    async fn pseudonymize_audit(
        &self,
        user: &Username,
        pseudonym: &Username,
    ) -> Result<u64, StoreError> {
        Registry::pseudonymize_audit(self, user, pseudonym)
    }

    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError> {
        Ok(Registry::device(self, id))
    }

    async fn user_view(&self, user: &Username) -> Result<crate::store::UserView, StoreError> {
        Ok(crate::store::UserView {
            account: self.user(user),
            devices: self
                .devices_of(user)
                .into_iter()
                .map(|d| {
                    let life = d.life();
                    (d, life)
                })
                .collect(),
            share: self.share_of(user),
        })
    }

    async fn share_requester(&self, id: ShareId) -> Result<Option<Username>, StoreError> {
        Ok(self.share(id).map(|s| s.requester))
    }

    async fn shares(&self) -> Result<Vec<Share>, StoreError> {
        Ok(Registry::shares(self))
    }

    async fn shipped(&self) -> Result<Vec<crate::store::Shipped>, StoreError> {
        let ids: Vec<DeviceId> = self.shipped_mut().iter().copied().collect();
        Ok(ids
            .into_iter()
            .filter_map(|id| self.device(id))
            .map(|d| crate::store::Shipped {
                device: d.id,
                user: d.user.clone(),
                life: d.life(),
            })
            .filter(|s| s.life.activation.is_shipped())
            .collect())
    }

    async fn stage_tokens<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        tokens: &[(TokenInfo, SecretKey)],
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Staged, StoreError> {
        Registry::stage_tokens(self, import, tokens, now, rng)
    }

    async fn commit_import<R: CryptoRng + ?Sized>(
        &self,
        import: ImportId,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Option<u64>, StoreError> {
        Registry::commit_import(self, import, actor, now, rng)
    }

    async fn drop_import(&self, import: ImportId) -> Result<(), StoreError> {
        Registry::drop_import(self, import)
    }

    async fn stale_imports(&self, before: Timestamp) -> Result<Vec<ImportId>, StoreError> {
        Registry::stale_imports(self, before)
    }

    async fn tokens(
        &self,
        filter: &TokenFilter,
        after: Option<&Serial>,
        limit: usize,
    ) -> Result<Vec<InventoryToken>, StoreError> {
        self.inventory(filter, after, limit)
    }

    async fn failure_state(&self, device: &Device) -> Result<FailureState, StoreError> {
        Ok(*device.failures())
    }

    async fn token(
        &self,
        serial: &Serial,
    ) -> Result<Option<(InventoryToken, SecretKey)>, StoreError> {
        Registry::token(self, serial)
    }

    async fn swap_token_state(
        &self,
        serial: &Serial,
        from: &TokenState,
        to: &TokenState,
    ) -> Result<bool, StoreError> {
        Registry::swap_token_state(self, serial, from, to)
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
        rng: &mut R,
        action: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        Registry::change(self, rng, now, actor, |c| {
            c.audit(action, None, None, detail.clone())
        })
    }

    async fn change<R, T, E>(
        &self,
        _user: &Username,
        actor: Actor,
        now: Timestamp,
        rng: &mut R,
        mut decide: impl FnMut(&mut dyn crate::store::RegistryChange) -> Result<T, E>,
    ) -> Result<T, E>
    where
        R: CryptoRng + ?Sized,
        E: From<StoreError>,
    {
        Registry::change(self, rng, now, actor, |c| decide(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start hands over each loading thread's devices as they come, so a
    /// user whose devices fell in two threads' ranges may see the later
    /// one first; the list still comes out oldest first.
    #[test]
    fn a_user_s_devices_are_listed_oldest_first_whatever_order_they_load_in() {
        let amy = Username::new("amy").unwrap();
        let device = |id, user: &Username| {
            Arc::new(Device::new(
                DeviceId(id),
                user.clone(),
                crate::profile::DeviceKind::Temporary,
                String::new(),
                Timestamp(0),
                None,
                Verifier::Code(SecretKey::from_bytes(vec![7; 16]).unwrap()),
            ))
        };
        let bob = Username::new("bob").unwrap();
        let mut loaded = Loaded::with_capacity(4);
        loaded.add(vec![device(900, &amy), device(901, &bob)]);
        loaded.add(vec![device(3, &amy), device(500, &amy)]);
        assert_eq!(
            loaded.by_user[&amy].as_slice(),
            [DeviceId(3), DeviceId(500), DeviceId(900)]
        );
        assert_eq!(loaded.by_user[&bob].as_slice(), [DeviceId(901)]);
        assert_eq!(loaded.devices.len(), 4);
    }
}
