//! The state of a deployment of several nodes, kept in a Redis (or
//! Valkey) Cluster through the primitives of [`redis`]: devices, failure
//! counts and lockouts, open challenges, SMS code and push sessions,
//! per-user issuance, and what nodes hand each other.
//!
//! Every node can verify any user. A user's versioned records (the failure
//! state of each device, open challenges, the code session, push
//! sessions: [`UserRecord`]) share one slot, so a decision reads the ones
//! it needs at one moment and writes them back together only if none
//! changed meanwhile ([`ClusterStore::write_user`]); of two nodes deciding
//! at once, one wins and the other decides again on what it finds. That
//! is what makes a challenge accepted once, and an answer judged before a
//! lockout unable to be accepted after it, across nodes. The random ids
//! clients hold (challenge, code, push) map to their user ([`Handle`]).
//!
//! Device records are the embedded registry's records (`records.rs`),
//! secrets sealed by the node under the deployment's key file before they
//! reach Redis. A node keeps the devices it has read, ready to verify, for
//! `store.cache-ttl`: the hot path does not fetch and unseal a record per
//! login, and a device revoked on another node stops working here within
//! that time. Failure states are never cached: a lockout counts at once
//! on every node.
//!
//! Every value a node writes carries a tag (`tagged`: HMAC-SHA256 under a
//! key derived from the key file, over the key's name, the version and the
//! value); a value whose tag does not match is refused (`checked`), so
//! whoever can write to Redis without the key file cannot edit, move or
//! replay a record. Counters Redis computes itself carry none
//! (ARCHITECTURE.md's threat model).
//!
//! Keys, one hash tag per thing so every operation stays in one slot:
//! `sls:{d<id>}:device`, `:push-key`, `:phone` (sealed number) and
//! `:phone-link` (the node its phone is on); `sls:{u:<user>}:devices` (the
//! user's device ids), `:f:<device>`, `:q:<device>`, `:c:<challenge>`,
//! `:sms`, `:p:<push>`, `:issued` (its GCRA), `:phone` (its one number's
//! device) and
//! `:pushes` (unanswered), `:w:<day>` (cents withdrawn on a UTC day),
//! `:account` (residence, identification digest, opt-out; the number sealed);
//! `sls:{c<id>}:owner`, `sls:{k<id>}:owner`,
//! `sls:{p<id>}:owner`; `sls:{carrier}:outbox` and `:bridges`;
//! `sls:{n:<node>}:inbox` and `:alive`; `sls:{meta}:next-device`, `:sms-code-key`,
//! `:keyring`, `:format` and `:releases`;
//! `sls:{audit}:seq` and `:log` (the audit log, numbered from 1).

mod change;
mod inventory;
mod keyring;
pub mod memory;
pub mod redis;
mod release;
mod seen;
pub mod slots;
mod tokens;

pub use change::UserLife;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rand::CryptoRng;

use crate::clock::Timestamp;
use crate::identity::{ActivationId, ChallengeId, CodeId, DeviceId, PushId, Username};
use crate::otp::SecretKey;
use crate::otp::push::PushKey;
use crate::phone::{PhoneNumber, SendLimit};
use crate::policy::calendar::Day;
use crate::policy::withdrawal::Withdrawn;
use crate::profile::DeviceKind;
use crate::ratelimit::{Decision, Rate};
use crate::store::cluster::redis::{Key, Op, RedisStore, Versioned};
use crate::store::questions::QuestionMemory;
use crate::store::records::DeviceCodec;
use crate::store::records::{decode_audit, encode_audit};
use crate::store::{Account, Actor, EXPIRED_GRACE};
use crate::store::{Device, EnrollError, FailureState, StoreError};
use crate::wire::AuditRecord;
pub use release::{FORMAT, RELEASE_POLLS, UpgradeState};

/// How long a queue (the carrier outbox, a node's inbox) outlives its last
/// item: a node that died leaves no queue behind for long.
const QUEUE_TTL: Duration = Duration::from_secs(3600);
/// What a queued message's sealing is bound to.
const OUTBOX_CONTEXT: &[u8] = b"sls/1 outbox message";
/// Compare-and-swap rounds of read, decide and write before an operation
/// gives up (`Busy`): each lost round means another node changed the same
/// records meanwhile.
const ROUNDS: usize = 16;
/// The longest pause before a retry (the pauses double from a tenth of it).
const MOST_PAUSE: Duration = Duration::from_millis(4);
/// Bytes of the tag that authenticates each record a node writes (a
/// truncated HMAC-SHA256: 128 bits).
const TAG_BYTES: usize = 16;
/// What the record tags are keyed for (a key derived from the key file).
const RECORD_TAG_PURPOSE: &str = "sls/1 shared-store record";
/// The version a plain (unversioned) value is tagged with.
const PLAIN: u64 = 0;

/// A connection of one task's own for waiting on a queue: a command that
/// waits holds its connection, so it never waits on the one requests share.
pub struct QueueWaiter(RedisStore);

impl std::fmt::Debug for QueueWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueWaiter")
    }
}

struct Cached {
    device: Arc<Device>,
    read_at: Instant,
}

/// Devices, failure states, challenges and issuance counts on a Redis
/// Cluster, with a per-node cache of device records.
pub struct ClusterStore {
    redis: RedisStore,
    codec: DeviceCodec,
    cache_ttl: Duration,
    cache: RwLock<HashMap<DeviceId, Cached>>,
    /// Users' records as this node lately read or wrote them.
    seen: seen::SeenRecords,
    /// The newest record format this node's release reads ([`FORMAT`]),
    /// and the one the deployment's records have, which it writes.
    release: u64,
    format: AtomicU64,
}

impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore")
            .field("redis", &self.redis)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

fn device_key(id: DeviceId) -> Key {
    Key::new(&format!("d{}", id.0), "device")
}

fn push_key_key(id: DeviceId) -> Key {
    Key::new(&format!("d{}", id.0), "push-key")
}

fn user_key(user: &Username) -> Key {
    Key::new(&format!("u:{user}"), "devices")
}

fn phone_key(id: DeviceId) -> Key {
    Key::new(&format!("d{}", id.0), "phone")
}

/// The SMS device a user's one verified number belongs to.
fn phone_claim_key(user: &Username) -> Key {
    Key::new(&format!("u:{user}"), "phone")
}

/// What the deployment's SMS code key is sealed to.
const SMS_CODE_KEY_CONTEXT: &[u8] = b"sls/1 sms code key";

fn sms_code_key_key() -> Key {
    Key::new("meta", "sms-code-key")
}

/// Messages waiting for a node with a carrier bridge.
fn outbox_key() -> Key {
    Key::new("carrier", "outbox")
}

/// Nodes with carrier bridges, each with the moment its claim ends.
fn bridges_key() -> Key {
    Key::new("carrier", "bridges")
}

/// The node a device's phone is subscribed on.
fn phone_link_key(device: DeviceId) -> Key {
    Key::new(&format!("d{}", device.0), "phone-link")
}

/// A user's unanswered pushes, each until it expires.
fn pending_pushes_key(user: &Username) -> Key {
    Key::new(&format!("u:{user}"), "pushes")
}

/// What other nodes hand this node: push notices for its phones, word that
/// a push it waits on was answered.
fn inbox_key(node: &str) -> Key {
    Key::new(&format!("n:{node}"), "inbox")
}

/// One of a user's versioned records. All of a user's records share a
/// slot, so a decision that touches several (a challenge and its device's
/// failure state) reads them together and changes them together, or not
/// at all, whichever node makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRecord {
    /// The failure state (consecutive failures, lockout) of a device.
    Failures(DeviceId),
    /// What a device was asked (`store::questions`).
    Questions(DeviceId),
    /// An open challenge, with its attempts left.
    Challenge(ChallengeId),
    /// The user's SMS code session.
    Sms,
    /// A push session.
    Push(PushId),
    /// What sls keeps about the user besides devices: residence, the
    /// identification digest, opt-out (`store::Account`).
    Account,
    /// The user's device lifecycle: activation states, uses left, the
    /// share they asked for, devices being retired (`change::UserLife`).
    Life,
    /// Audit entries of the user's changes not yet in the deployment's
    /// log (`change`).
    Unlogged,
    /// The number being added to the user, waiting for its confirm code
    /// (`tokens`).
    NumberToken,
    /// An IB Key activation of the user under way (`tokens`).
    Activation(ActivationId),
}

/// The hash tag of a user's records.
fn user_tag(user: &Username) -> String {
    format!("u:{user}")
}

/// What the names of a device's failure-state and question records start
/// with (the device id follows): `read_set` names them from the user's
/// device set.
fn per_device_prefixes(user: &Username) -> [String; 2] {
    let tag = user_tag(user);
    [Key::new(&tag, "f:"), Key::new(&tag, "q:")].map(|key| key.as_str().to_owned())
}

/// A challenge's record, named by its id alone.
fn user_record_key_of_challenge(id: ChallengeId) -> Key {
    Key::new(
        slots::tag_for(slots::slot_of_challenge(id)),
        &format!("c:{:016x}", id.0),
    )
}

/// The keys of `records` of `user`, in order.
fn user_record_keys<'r>(
    user: &Username,
    records: impl IntoIterator<Item = &'r UserRecord>,
) -> Vec<Key> {
    records
        .into_iter()
        .map(|record| user_record_key(user, *record))
        .collect()
}

/// `user`'s issuance limiter (a GCRA; it lapses when idle).
fn issued_key(user: &Username) -> Key {
    Key::new(&user_tag(user), "issued")
}

fn user_record_key(user: &Username, record: UserRecord) -> Key {
    let tag = user_tag(user);
    match record {
        UserRecord::Failures(device) => Key::new(&tag, &format!("f:{}", device.0)),
        UserRecord::Questions(device) => Key::new(&tag, &format!("q:{}", device.0)),
        // Named by the slot its id carries (the user's): `Verify` needs
        // only the id.
        UserRecord::Challenge(id) => user_record_key_of_challenge(id),
        UserRecord::Sms => Key::new(&tag, "sms"),
        UserRecord::Push(id) => Key::new(&tag, &format!("p:{:016x}", id.0)),
        UserRecord::Account => Key::new(&tag, "account"),
        UserRecord::Life => Key::new(&tag, "life"),
        UserRecord::Unlogged => Key::new(&tag, "unlogged"),
        UserRecord::NumberToken => Key::new(&tag, "number-token"),
        UserRecord::Activation(id) => Key::new(&tag, &format!("a:{:016x}", id.0)),
    }
}

/// What `issue_and_write` did.
#[derive(Debug)]
pub enum IssuedWrite {
    /// The issuance limit held it back (nothing written) for this long.
    Denied(Duration),
    /// Counted and written.
    Written,
    /// Counted, not written: a record had moved; the records asked back,
    /// as they are now.
    Moved(Vec<Versioned>),
}

/// A random handle a client holds, whose records live with a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    Code(CodeId),
    Push(PushId),
    Activation(ActivationId),
}

fn handle_key(handle: Handle) -> Key {
    match handle {
        Handle::Code(id) => Key::new(&format!("k{:016x}", id.0), "owner"),
        Handle::Push(id) => Key::new(&format!("p{:016x}", id.0), "owner"),
        Handle::Activation(id) => Key::new(&format!("a{:016x}", id.0), "owner"),
    }
}

/// Present while a node is alive (renewed every second, good for three).
fn alive_key(node: &str) -> Key {
    Key::new(&format!("n:{node}"), "alive")
}

/// The deployment's audit log (entries numbered by `sls:{audit}:seq`).
fn audit_log_key() -> Key {
    Key::new("audit", "log")
}

fn next_device_key() -> Key {
    Key::new("meta", "next-device")
}

/// A device's record as read: `decode`d, the default when absent, and a
/// `Corrupt` error naming `what` when it does not decode.
fn device_record<T: Default>(
    device: DeviceId,
    record: &Versioned,
    decode: impl FnOnce(&[u8]) -> Option<T>,
    what: &str,
) -> Result<T, StoreError> {
    match &record.value {
        Some(bytes) => decode(bytes).ok_or_else(|| StoreError::Corrupt {
            device: device.0,
            problem: what.into(),
        }),
        None => Ok(T::default()),
    }
}

/// A failure-state record as read (absent: never failed).
pub fn failure_state(device: DeviceId, record: &Versioned) -> Result<FailureState, StoreError> {
    device_record(device, record, FailureState::decode, "failure state")
}

/// A question-memory record as read (absent: never asked).
pub fn question_memory(device: DeviceId, record: &Versioned) -> Result<QuestionMemory, StoreError> {
    device_record(device, record, QuestionMemory::decode, "question memory")
}

/// Audit entries that name a user being erased, as stored when read
/// ([`ClusterStore::audit_naming`]), to be rewritten under their
/// pseudonym ([`ClusterStore::rewrite_audit`]).
#[derive(Debug)]
pub struct AuditNaming {
    user: Username,
    pseudonym: Username,
    /// Sequence number (from 1) and the entry as stored.
    entries: Vec<(u64, Vec<u8>)>,
}

/// The rounds of one compare-and-swap loop (`while rounds.next().await`,
/// from [`ClusterStore::rounds`]): `ROUNDS` of them, each retry after a
/// short random pause, so that contenders on the same records (a burst of
/// logins on one device through several nodes) spread out instead of
/// colliding again in step.
#[derive(Debug)]
pub struct Rounds {
    taken: u32,
    /// Off in memory (`memory.rs`): a lost round there was made to lose,
    /// nobody else is writing, and the models run without a timer.
    pause: bool,
}

impl Rounds {
    /// Whether another round may run (after its pause).
    pub async fn next(&mut self) -> bool {
        if self.taken as usize >= ROUNDS {
            return false;
        }
        if self.taken > 0 {
            metrics::counter!(crate::metrics::STORE_CONFLICTS).increment(1);
        }
        if self.taken > 0 && self.pause {
            let most = (MOST_PAUSE / 10)
                .saturating_mul(1 << self.taken.min(4))
                .min(MOST_PAUSE);
            // Jitter, not a secret: the standard library's per-instance
            // random hash keys.
            let draw = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                self.taken,
            );
            let pause = most.mul_f64((draw >> 11) as f64 / (1u64 << 53) as f64);
            tokio::time::sleep(pause).await;
        }
        self.taken += 1;
        true
    }
}

impl ClusterStore {
    pub fn new(redis: RedisStore, codec: DeviceCodec, cache_ttl: Duration) -> Self {
        Self {
            redis,
            codec,
            cache_ttl,
            cache: RwLock::new(HashMap::new()),
            seen: seen::SeenRecords::new(cache_ttl),
            release: FORMAT,
            format: AtomicU64::new(FORMAT),
        }
    }

    /// A compare-and-swap loop's rounds on this store.
    pub fn rounds(&self) -> Rounds {
        Rounds {
            taken: 0,
            pause: !self.redis.is_in_memory(),
        }
    }

    /// The tag of `value` stored under `key` at `version`: HMAC-SHA256
    /// under a key derived from the deployment's key file, over the key's
    /// name, the version and the value, so a record cannot be edited,
    /// moved to another key, or put back at a later version by anyone
    /// without the key file.
    fn tag(&self, key: &Key, version: u64, value: &[u8]) -> [u8; 32] {
        self.codec.cipher.digest(
            RECORD_TAG_PURPOSE,
            &[key.as_str().as_bytes(), &version.to_be_bytes(), value],
        )
    }

    /// `value` as stored under `key` at `version`: followed by its tag.
    fn tagged(&self, key: &Key, version: u64, value: &[u8]) -> Vec<u8> {
        let tag = self.tag(key, version, value);
        let mut out = Vec::with_capacity(value.len() + TAG_BYTES);
        out.extend_from_slice(value);
        out.extend_from_slice(tag.get(..TAG_BYTES).unwrap_or(&tag));
        out
    }

    /// The value stored under `key` at `version` if its tag is right;
    /// otherwise the record is refused (counted and logged), never used.
    fn checked(&self, key: &Key, version: u64, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let refused = || Self::refused(key);
        let split = stored.len().checked_sub(TAG_BYTES).ok_or_else(refused)?;
        let (value, tag) = stored.split_at(split);
        let expected = self.tag(key, version, value);
        let expected = expected.get(..TAG_BYTES).unwrap_or(&expected);
        if bool::from(subtle::ConstantTimeEq::ct_eq(tag, expected)) {
            Ok(value.to_vec())
        } else {
            Err(refused())
        }
    }

    /// A record that failed its check: counted, logged, never used.
    fn refused(key: &Key) -> StoreError {
        metrics::counter!(crate::metrics::STORE_RECORDS_REFUSED).increment(1);
        crate::events::emit(|| {
            let refused = crate::events::Outcome::Failure;
            let category = crate::events::Category::Database;
            crate::events::Event::new(crate::clock::now(), "record-refused", category, refused)
                .reason(format!("{} failed its integrity check", key.as_str()))
        });
        tracing::warn!(
            key = key.as_str(),
            "a shared-store record failed its integrity check"
        );
        StoreError::Forged(key.as_str().to_owned())
    }

    /// A connection of a task's own, to wait on a queue with
    /// (`take_messages`, `node_inbox`).
    pub async fn queue_waiter(&self) -> Result<QueueWaiter, StoreError> {
        Ok(QueueWaiter(self.redis.dedicated().await?))
    }

    /// Versioned records of one slot as read, each checked (absent ones
    /// stay absent).
    async fn read_checked(&self, keys: &[&Key]) -> Result<Vec<Versioned>, StoreError> {
        let records = self.redis.read_many(keys).await?;
        self.checked_all(keys, records)
    }

    /// A plain value as read, checked.
    async fn get_checked(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        match self.redis.get(key).await? {
            Some(stored) => Ok(Some(self.checked(key, PLAIN, &stored)?)),
            None => Ok(None),
        }
    }

    /// Creates a versioned record (version 1) that must not exist yet.
    async fn create(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
        let change = Op::Set(self.tagged(key, 1, value), None);
        if self.redis.transact(&[(key, 0, change)], true).await? {
            Ok(())
        } else {
            Err(StoreError::Database(format!(
                "{} exists already",
                key.as_str()
            )))
        }
    }

    /// A device, from this node's cache while it is younger than the TTL.
    /// Absent devices are not cached: a device enrolled on another node
    /// works here at once.
    pub async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError> {
        if let Some(cached) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .filter(|c| c.read_at.elapsed() < self.cache_ttl)
        {
            return Ok(Some(Arc::clone(&cached.device)));
        }
        let read_at = Instant::now();
        // The record, its sealed number and its push key: one slot, one read.
        let keys = [&device_key(id), &phone_key(id), &push_key_key(id)];
        let mut values = self.read_checked(&keys).await?.into_iter();
        let mut next = || values.next().and_then(|record| record.value);
        let (Some(record), phone, push_key) = (next(), next(), next()) else {
            self.forget(id);
            return Ok(None);
        };
        let phone = match phone {
            Some(sealed) => Some(self.codec.open_phone(id, &sealed)?),
            None => None,
        };
        let device = self.codec.decode_device(id, &record, phone)?;
        if let Some(key) = push_key.filter(|_| device.kind == DeviceKind::IbKey) {
            let key = key.try_into().map_err(|_| StoreError::Corrupt {
                device: id.0,
                problem: "push key".into(),
            })?;
            device.set_push_key(Some(PushKey(key)));
        }
        let device = Arc::new(device);
        self.remember(Arc::clone(&device), read_at);
        Ok(Some(device))
    }

    fn remember(&self, device: Arc<Device>, read_at: Instant) {
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(device.id, Cached { device, read_at });
    }

    fn forget(&self, id: DeviceId) {
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Drops cached devices older than the TTL; the cache holds at most the
    /// devices used within the last TTL.
    pub fn sweep(&self) -> usize {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let before = cache.len();
        cache.retain(|_, c| c.read_at.elapsed() < self.cache_ttl);
        before - cache.len() + self.seen.sweep()
    }

    /// The user's devices, oldest first; empty for an unknown user.
    pub async fn devices_of(&self, user: &Username) -> Result<Vec<Arc<Device>>, StoreError> {
        let mut ids: Vec<DeviceId> = self
            .redis
            .members(&user_key(user))
            .await?
            .iter()
            .filter_map(|member| std::str::from_utf8(member).ok()?.parse().ok())
            .map(DeviceId)
            .collect();
        ids.sort_unstable();
        let mut devices = Vec::with_capacity(ids.len());
        for id in ids {
            // An id whose record is gone (a revoke cut short) is skipped,
            // and so is one whose record is forged (refused and counted:
            // the user's other devices still work).
            match self.device(id).await {
                Ok(Some(device)) if &device.user == user => devices.push(device),
                Ok(_) | Err(StoreError::Forged(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(devices)
    }

    /// A new device id from the cluster-wide counter.
    async fn next_device_id(&self) -> Result<DeviceId, StoreError> {
        Ok(DeviceId(
            self.redis.increment(&next_device_key(), true).await?,
        ))
    }

    /// Writes a new device's record, then lists it among the user's
    /// devices, each durable before the next.
    async fn add(&self, id: DeviceId, user: &Username, record: &[u8]) -> Result<(), StoreError> {
        // Created, never overwritten: an id handed out twice (a counter
        // set back) is an error, not a device replaced.
        self.create(&device_key(id), record).await?;
        self.redis
            .set_add(&user_key(user), id.0.to_string().as_bytes(), true)
            .await?;
        Ok(())
    }

    /// The key SMS codes are derived with, the same on every node: made by
    /// the first node that asks, kept sealed under the key file.
    pub async fn sms_code_key<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<SecretKey, StoreError> {
        const CONTEXT: &[u8] = SMS_CODE_KEY_CONTEXT;
        let key = sms_code_key_key();
        let mut rounds = self.rounds();
        while rounds.next().await {
            if let Some(sealed) = self.redis.read(&key).await?.value {
                let bytes = self.codec.cipher.open(&sealed, CONTEXT)?;
                return SecretKey::from_bytes(bytes.to_vec())
                    .map_err(|e| StoreError::Database(format!("the SMS code key: {e}")));
            }
            let mut fresh = zeroize::Zeroizing::new([0u8; 32]);
            rng.fill_bytes(fresh.as_mut());
            let sealed = self.codec.cipher.seal(rng, fresh.as_ref(), CONTEXT)?;
            // Another node may make one at the same moment: the first wins
            // and both read it back.
            self.redis.swap(&key, 0, &sealed, None, true).await?;
        }
        Err(StoreError::Database(
            "the SMS code key could not be made".into(),
        ))
    }

    /// Queues a message for whichever node has a carrier bridge; sealed,
    /// since it carries a code.
    pub async fn enqueue_message<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        message: &[u8],
    ) -> Result<(), StoreError> {
        let sealed = self.codec.cipher.seal(rng, message, OUTBOX_CONTEXT)?;
        Ok(self
            .redis
            .push_back(&outbox_key(), &sealed, QUEUE_TTL)
            .await?)
    }

    /// Takes up to `count` queued messages (each goes to one node only),
    /// waiting up to `wait` for one to come. One that does not open under
    /// the key file is refused (counted) and left out.
    pub async fn take_messages(
        &self,
        waiter: &QueueWaiter,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<zeroize::Zeroizing<Vec<u8>>>, StoreError> {
        let key = outbox_key();
        let sealed = waiter.0.pop_front_waiting(&key, count, wait).await?;
        Ok(sealed
            .iter()
            .filter_map(
                |bytes| match self.codec.cipher.open(bytes, OUTBOX_CONTEXT) {
                    Ok(message) => Some(message),
                    Err(_) => {
                        Self::refused(&key);
                        None
                    }
                },
            )
            .collect())
    }

    /// Says this node has carrier bridges until `until` (or, `None`, no
    /// longer has any).
    pub async fn announce_bridges(
        &self,
        node: &str,
        until: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        Ok(self
            .redis
            .set_field(&bridges_key(), node, until.map(|t| t.0))
            .await?)
    }

    /// Whether some node has a carrier bridge at `now`.
    pub async fn bridges_anywhere(&self, now: Timestamp) -> Result<bool, StoreError> {
        Ok(self
            .redis
            .field_values(&bridges_key())
            .await?
            .into_iter()
            .any(|until| until > now.0))
    }

    /// Says a device's phone is subscribed on `node` (until another node
    /// says so, or `unlink_phone`; a link to a node that stopped saying it
    /// is alive counts for nothing).
    pub async fn link_phone(&self, device: DeviceId, node: &str) -> Result<(), StoreError> {
        let key = phone_link_key(device);
        let value = self.tagged(&key, PLAIN, node.as_bytes());
        Ok(self.redis.put(&key, &value, false).await?)
    }

    /// Withdraws the link if it is still `node`'s.
    pub async fn unlink_phone(&self, device: DeviceId, node: &str) -> Result<(), StoreError> {
        let key = phone_link_key(device);
        let value = self.tagged(&key, PLAIN, node.as_bytes());
        self.redis.delete_if(&key, &value).await?;
        Ok(())
    }

    /// Says `node` is alive for `ttl` (renewed while it is).
    pub async fn node_alive(&self, node: &str, ttl: Duration) -> Result<(), StoreError> {
        Ok(self.redis.put_with_ttl(&alive_key(node), b"1", ttl).await?)
    }

    /// The live node a device's phone is subscribed on, if any.
    pub async fn phone_node(&self, device: DeviceId) -> Result<Option<String>, StoreError> {
        let Some(node) = self.get_checked(&phone_link_key(device)).await? else {
            return Ok(None);
        };
        let node = String::from_utf8_lossy(&node).into_owned();
        Ok(self.redis.get(&alive_key(&node)).await?.map(|_| node))
    }

    /// Counts a push as unanswered for its user until `until`, unless
    /// `limit` are already: then `Err(soonest)`, when one of them lapses.
    pub async fn hold_push(
        &self,
        user: &Username,
        id: PushId,
        limit: u8,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Result<(), Timestamp>, StoreError> {
        let key = pending_pushes_key(user);
        let member = id.0.to_be_bytes();
        let held = self
            .redis
            .hold(&key, &member, u32::from(limit), now.0, until.0)
            .await?;
        Ok(held.map_or(Ok(()), |soonest| Err(Timestamp(soonest))))
    }

    /// The push is answered: no longer held against its user.
    pub async fn release_push(&self, user: &Username, id: PushId) -> Result<(), StoreError> {
        let key = pending_pushes_key(user);
        Ok(self.redis.release(&key, &id.0.to_be_bytes()).await?)
    }

    /// Hands `item` to `node` (its next relay round takes it).
    pub async fn send_to_node(&self, node: &str, item: &[u8]) -> Result<(), StoreError> {
        let key = inbox_key(node);
        let item = self.tagged(&key, PLAIN, item);
        Ok(self.redis.push_back(&key, &item, QUEUE_TTL).await?)
    }

    /// What other nodes handed this node, waiting up to `wait` for
    /// something to come (an item that fails its check is refused, counted
    /// and left out).
    pub async fn node_inbox(
        &self,
        waiter: &QueueWaiter,
        node: &str,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let key = inbox_key(node);
        let items = waiter.0.pop_front_waiting(&key, count, wait).await?;
        Ok(items
            .iter()
            .filter_map(|item| self.checked(&key, PLAIN, item).ok())
            .collect())
    }

    /// Sets the push key of an IB Key device; `Ok(false)`: no such device.
    pub async fn bind_push_key(&self, id: DeviceId, key: PushKey) -> Result<bool, EnrollError> {
        let Some(device) = self.device(id).await? else {
            return Ok(false);
        };
        if device.kind != DeviceKind::IbKey {
            return Err(EnrollError::Invalid(format!(
                "push keys are for IB Key devices, not {}",
                device.kind
            )));
        }
        // Versioned, so the key a device was bound to before cannot be put
        // back in place of a newer one.
        let record = push_key_key(id);
        let mut rounds = self.rounds();
        while rounds.next().await {
            let version = self
                .redis
                .read(&record)
                .await
                .map_err(StoreError::from)?
                .version;
            let value = self.tagged(&record, version + 1, &key.0);
            let swapped = self.redis.swap(&record, version, &value, None, true).await;
            if let crate::store::cluster::redis::Swap::Done(_) =
                swapped.map_err(StoreError::from)?
            {
                self.forget(id);
                return Ok(true);
            }
        }
        Err(StoreError::Database(format!("the push key of device {id} kept changing")).into())
    }

    /// Removes a device for good; false if there was none. Other nodes stop
    /// using it when their cached copy ages out (`store.cache-ttl`).
    pub async fn revoke(&self, id: DeviceId) -> Result<bool, StoreError> {
        let Some(device) = self.device(id).await? else {
            return Ok(false);
        };
        self.forget(id);
        let keys = [
            &device_key(id),
            &push_key_key(id),
            &phone_key(id),
            &phone_link_key(id),
        ];
        let deleted = self.redis.delete(&keys, true).await?;
        // What the user's slot keeps of the device: its failure state and
        // the questions it was asked.
        let failures = user_record_key(&device.user, UserRecord::Failures(id));
        let questions = user_record_key(&device.user, UserRecord::Questions(id));
        self.redis.delete(&[&failures, &questions], true).await?;
        if device.kind == DeviceKind::Sms {
            // The user may now register another number.
            let claim = phone_claim_key(&device.user);
            self.redis.delete(&[&claim], true).await?;
        }
        self.redis
            .set_remove(&user_key(&device.user), id.0.to_string().as_bytes(), true)
            .await?;
        self.forget(id);
        Ok(deleted > 0)
    }

    /// Books `amount` cents for `user` on `today` if what they withdrew
    /// today and since `window_start` still leaves room under `limits`
    /// (cents per day and per window; `None`: none), in one step on the
    /// user's slot, so concurrent requests on any node never together pass
    /// a limit. Answers whether it was booked and what was withdrawn
    /// before. A day's total is kept `keep_days`.
    pub async fn book_withdrawal(
        &self,
        user: &Username,
        window_start: Day,
        today: Day,
        amount: u64,
        limits: (Option<u64>, Option<u64>),
        keep_days: u32,
    ) -> Result<(bool, Withdrawn), StoreError> {
        let tag = format!("u:{user}");
        let day_key = |day: u32| Key::new(&tag, &format!("w:{day}"));
        let earlier: Vec<Key> = (window_start.0..today.0).map(day_key).collect();
        let keep = Duration::from_secs(u64::from(keep_days) * 86_400);
        let (booked, today, five_days) = self
            .redis
            .add_under_limits(&day_key(today.0), &earlier, amount, limits, keep)
            .await?;
        Ok((booked, Withdrawn { today, five_days }))
    }

    /// Appends an entry to the deployment's audit log (its `seq` is
    /// assigned here).
    pub async fn audit(&self, entry: &AuditRecord) -> Result<u64, StoreError> {
        let log = audit_log_key();
        let encoded = self.tagged(&log, PLAIN, &encode_audit(entry));
        Ok(self
            .redis
            .append_log(&Key::new("audit", "seq"), &log, &encoded)
            .await?)
    }

    /// Appends an entry about the deployment (no user's, no device's).
    pub async fn audit_deployment(
        &self,
        actor: Actor,
        now: Timestamp,
        action: &str,
        detail: String,
    ) -> Result<(), StoreError> {
        let entry = AuditRecord {
            seq: 0,
            at: now,
            actor: actor.0.to_owned(),
            action: action.into(),
            user: None,
            device: None,
            detail,
        };
        self.audit(&entry).await.map(|_| ())
    }

    /// Deletes `user`'s withdrawals ledger (the days from `days` before
    /// `now`'s to today; older ones expired) and their issuance limiter.
    pub(super) async fn erase_ledger(
        &self,
        user: &Username,
        now: Timestamp,
        days: u32,
    ) -> Result<(), StoreError> {
        let tag = format!("u:{user}");
        let today = Day::of(now).0;
        let keys: Vec<Key> = (today.saturating_sub(days)..=today)
            .map(|day| Key::new(&tag, &format!("w:{day}")))
            .chain([issued_key(user)])
            .collect();
        let keys: Vec<&Key> = keys.iter().collect();
        self.redis.delete(&keys, true).await?;
        Ok(())
    }

    /// Rewrites the deployment's audit entries that name `user`, before
    /// the last `erase` entry of `pseudonym` (`Store::pseudonymize_audit`):
    /// each in place, tagged anew; how many. Entries are only ever
    /// appended, so their places hold while this runs.
    pub async fn pseudonymize_audit(
        &self,
        user: &Username,
        pseudonym: &Username,
    ) -> Result<u64, StoreError> {
        let found = self.audit_naming(user, pseudonym).await?;
        self.rewrite_audit(found).await
    }

    /// The first half of [`Self::pseudonymize_audit`]: the entries that
    /// name `user` before the last `erase` entry of `pseudonym` (none
    /// without one), as stored when read.
    pub async fn audit_naming(
        &self,
        user: &Username,
        pseudonym: &Username,
    ) -> Result<AuditNaming, StoreError> {
        let log = audit_log_key();
        let mut entries = Vec::new();
        let mut erased_at = None;
        let mut after = 0;
        loop {
            let page = self
                .redis
                .range(&log, after, crate::wire::request::MAX_PAGE)
                .await?;
            if page.is_empty() {
                break;
            }
            for (stored, seq) in page.into_iter().zip(after + 1..) {
                let entry = self.audit_entry(&log, seq, &stored)?;
                if crate::store::records::is_erasure_of(&entry, pseudonym) {
                    erased_at = Some(seq);
                }
                if crate::store::records::pseudonymized(&entry, user, pseudonym).is_some() {
                    entries.push((seq, stored));
                }
                after = seq;
            }
        }
        entries.retain(|(seq, _)| erased_at.is_some_and(|at| *seq < at));
        Ok(AuditNaming {
            user: user.clone(),
            pseudonym: pseudonym.clone(),
            entries,
        })
    }

    /// The second half of [`Self::pseudonymize_audit`]: each entry found
    /// rewritten if it still holds what was read. An entry can name two
    /// users (a share's requester and owner) erased at once through two
    /// nodes: when the other erasure rewrote it meanwhile, it is read
    /// again and its other name kept, never written back.
    pub async fn rewrite_audit(&self, found: AuditNaming) -> Result<u64, StoreError> {
        let log = audit_log_key();
        let mut rewritten = 0;
        for (seq, mut stored) in found.entries {
            let mut rounds = self.rounds();
            loop {
                let entry = self.audit_entry(&log, seq, &stored)?;
                let Some(new) =
                    crate::store::records::pseudonymized(&entry, &found.user, &found.pseudonym)
                else {
                    break;
                };
                if !rounds.next().await {
                    return Err(StoreError::Database(format!(
                        "audit entry {seq} kept changing while it was being pseudonymized"
                    )));
                }
                let tagged = self.tagged(&log, PLAIN, &encode_audit(&new));
                // The list is numbered from 0, the log from 1.
                let index = seq - 1;
                if self.redis.set_at_if(&log, index, &stored, &tagged).await? {
                    rewritten += 1;
                    break;
                }
                let again = self.redis.range(&log, index, 1).await?;
                stored = again
                    .into_iter()
                    .next()
                    .ok_or_else(|| StoreError::Corrupt {
                        device: 0,
                        problem: format!("audit entry {seq} is gone"),
                    })?;
            }
        }
        Ok(rewritten)
    }

    /// The audit log after entry `after`, at most `limit` entries.
    pub async fn audit_log(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let log = audit_log_key();
        let raw = self
            .redis
            .range(&log, after, limit.min(crate::wire::request::MAX_PAGE))
            .await?;
        raw.iter()
            .zip(after + 1..)
            .map(|(stored, seq)| self.audit_entry(&log, seq, stored))
            .collect()
    }

    /// Audit entry `seq` as stored in `log`, checked and decoded.
    fn audit_entry(&self, log: &Key, seq: u64, stored: &[u8]) -> Result<AuditRecord, StoreError> {
        let bytes = self.checked(log, PLAIN, stored)?;
        decode_audit(seq, &bytes).ok_or_else(|| StoreError::Corrupt {
            device: 0,
            problem: format!("audit entry {seq}"),
        })
    }

    /// The keyed digest of identification data (as the embedded registry
    /// makes it: the deployment's nodes share the key file).
    pub fn identity_digest(&self, identity: &crate::wire::Identification) -> [u8; 32] {
        self.codec.identity_digest(identity)
    }

    /// The account record of `user` as read (absent: the default).
    pub fn account(&self, user: &Username, record: &Versioned) -> Result<Account, StoreError> {
        match &record.value {
            Some(bytes) => self.codec.decode_user(user, bytes),
            None => Ok(Account::default()),
        }
    }

    /// The slot a user's records live in.
    pub fn user_slot(user: &Username) -> u16 {
        slots::slot_of(&user_tag(user))
    }

    /// One issuance for `user` counted (`count_issuance`) and some of the
    /// user's records read, in one round trip.
    pub async fn issue_and_read(
        &self,
        user: &Username,
        rate: Rate,
        now: Timestamp,
        records: &[UserRecord],
    ) -> Result<(Decision, Vec<Versioned>), StoreError> {
        let limit = issued_key(user);
        let keys = user_record_keys(user, records);
        let keys: Vec<&Key> = keys.iter().collect();
        let (decision, read) = self.redis.gcra_and_read(&limit, rate, now, &keys).await?;
        let read = self.checked_all(&keys, read)?;
        self.seen.read(&keys, &read);
        Ok((decision, read))
    }

    /// Some of a user's records as this node lately read or wrote them
    /// (`None`: not every one): what a change may be decided on and then
    /// made by `issue_and_write`, whose versions it checks.
    pub fn recalled(&self, user: &Username, records: &[UserRecord]) -> Option<Vec<Versioned>> {
        let keys = user_record_keys(user, records);
        self.seen.recall(&keys.iter().collect::<Vec<_>>())
    }

    /// A challenge as this node lately wrote or read it (`None`: not
    /// seen, or seen gone): a `Verify` on the node that asked decides on
    /// it, the write checking its version.
    pub fn recalled_challenge(&self, id: ChallengeId) -> Option<Versioned> {
        let key = user_record_key_of_challenge(id);
        self.seen
            .recall(&[&key])?
            .pop()
            .filter(|record| record.value.is_some())
    }

    /// One issuance for `user` counted (`count_issuance`) and, when it is
    /// allowed, `changes` made as `write_user` makes them (durably), in
    /// one round trip; when a version had moved, `back` read as they are.
    pub async fn issue_and_write(
        &self,
        user: &Username,
        rate: Rate,
        now: Timestamp,
        changes: &[(UserRecord, u64, Op)],
        back: &[UserRecord],
    ) -> Result<IssuedWrite, StoreError> {
        let limit = issued_key(user);
        let keys = user_record_keys(user, changes.iter().map(|(record, _, _)| record));
        let tagged = self.tagged_changes(&keys, changes);
        let back_keys = user_record_keys(user, back);
        let back_keys: Vec<&Key> = back_keys.iter().collect();
        let (decision, changed, read) = self
            .redis
            .gcra_and_transact(&limit, rate, now, &tagged, &back_keys, true)
            .await?;
        if let Decision::Deny { retry_after } = decision {
            return Ok(IssuedWrite::Denied(retry_after));
        }
        if changed {
            self.learn_written(&keys, changes);
            return Ok(IssuedWrite::Written);
        }
        let read = self.checked_all(&back_keys, read)?;
        self.seen.read(&back_keys, &read);
        Ok(IssuedWrite::Moved(read))
    }

    /// The user's device ids, some of the user's records, and each
    /// device's failure state, in one round trip.
    pub async fn read_devices(
        &self,
        user: &Username,
        records: &[UserRecord],
    ) -> Result<(Vec<(DeviceId, FailureState)>, Vec<Versioned>), StoreError> {
        let keys = user_record_keys(user, records);
        let keys: Vec<&Key> = keys.iter().collect();
        let prefixes = per_device_prefixes(user);
        let (ids, read, per_device) = self
            .redis
            .read_set(
                &user_key(user),
                &keys,
                &prefixes.each_ref().map(String::as_str),
            )
            .await?;
        let read = self.checked_all(&keys, read)?;
        self.seen.read(&keys, &read);
        let mut devices = Vec::with_capacity(ids.len());
        for (id, records) in ids.iter().zip(per_device.chunks(prefixes.len())) {
            let Some(id) = std::str::from_utf8(id).ok().and_then(|id| id.parse().ok()) else {
                continue;
            };
            let id = DeviceId(id);
            let keys = [UserRecord::Failures(id), UserRecord::Questions(id)]
                .map(|record| user_record_key(user, record));
            let keys = keys.each_ref();
            let records = self.checked_all(&keys, records.to_vec())?;
            self.seen.read(&keys, &records);
            let state = records
                .first()
                .map_or(Ok(FailureState::default()), |r| failure_state(id, r))?;
            devices.push((id, state));
        }
        devices.sort_unstable_by_key(|(id, _)| *id);
        Ok((devices, read))
    }

    /// A challenge record and the records it was written with
    /// (`Op::Link`), in one round trip; `None`: no such challenge. The
    /// linked records are checked when they are claimed
    /// (`linked_records`).
    pub async fn read_challenge(
        &self,
        id: ChallengeId,
    ) -> Result<Option<(Versioned, Vec<(String, Versioned)>)>, StoreError> {
        let key = user_record_key_of_challenge(id);
        let (record, linked) = self.redis.read_linked(&key).await?;
        if record.value.is_none() {
            return Ok(None);
        }
        let record = self.checked_all(&[&key], vec![record])?;
        Ok(record.into_iter().next().map(|record| (record, linked)))
    }

    /// The records of `user` a challenge was linked to, in the order of
    /// `wanted`, each checked; refused (`Forged`) unless the links name
    /// exactly those records.
    pub fn linked_records(
        &self,
        user: &Username,
        wanted: &[UserRecord],
        linked: Vec<(String, Versioned)>,
    ) -> Result<Vec<Versioned>, StoreError> {
        let keys = user_record_keys(user, wanted);
        let names_match = linked.len() == keys.len()
            && keys
                .iter()
                .zip(&linked)
                .all(|(key, (name, _))| key.as_str() == name);
        if !names_match {
            let first = keys.first().map_or("", Key::as_str);
            return Err(Self::refused(&Key::named(first.to_owned())));
        }
        let keys: Vec<&Key> = keys.iter().collect();
        self.checked_all(
            &keys,
            linked.into_iter().map(|(_, record)| record).collect(),
        )
    }

    /// The names of `records` of `user`, for `Op::Link`.
    pub fn record_names(user: &Username, records: &[UserRecord]) -> Vec<String> {
        records
            .iter()
            .map(|r| user_record_key(user, *r).as_str().to_owned())
            .collect()
    }

    /// Versioned records as read, each checked against its key.
    fn checked_all(
        &self,
        keys: &[&Key],
        read: Vec<Versioned>,
    ) -> Result<Vec<Versioned>, StoreError> {
        keys.iter()
            .zip(read)
            .map(|(key, record)| {
                Ok(Versioned {
                    version: record.version,
                    value: match record.value {
                        Some(stored) => Some(self.checked(key, record.version, &stored)?),
                        None => None,
                    },
                })
            })
            .collect()
    }

    /// Some of a user's records, read at one moment (version 0: absent).
    pub async fn read_user(
        &self,
        user: &Username,
        records: &[UserRecord],
    ) -> Result<Vec<Versioned>, StoreError> {
        let keys = user_record_keys(user, records);
        let keys: Vec<&Key> = keys.iter().collect();
        let read = self.read_checked(&keys).await?;
        self.seen.read(&keys, &read);
        Ok(read)
    }

    /// Changes some of a user's records at once if each is still at the
    /// version given; false (nothing changed) if one is not. `durable`: the
    /// change reaches the replicas before this answers (whatever a reply
    /// depends on: a used-up challenge, a failure count, a settled push).
    pub async fn write_user(
        &self,
        user: &Username,
        changes: &[(UserRecord, u64, Op)],
        durable: bool,
    ) -> Result<bool, StoreError> {
        let keys = user_record_keys(user, changes.iter().map(|(record, _, _)| record));
        let tagged = self.tagged_changes(&keys, changes);
        let made = self.redis.transact(&tagged, durable).await?;
        if made {
            self.learn_written(&keys, changes);
        }
        Ok(made)
    }

    /// A change made to the records `keys`, remembered as this node wrote it.
    fn learn_written(&self, keys: &[Key], changes: &[(UserRecord, u64, Op)]) {
        self.seen.written(
            keys.iter()
                .zip(changes)
                .map(|(key, (_, version, op))| (key, *version, op)),
        );
    }

    /// `changes` to the records `keys`, each value written carrying its
    /// tag for the version it gets.
    fn tagged_changes<'k>(
        &self,
        keys: &'k [Key],
        changes: &[(UserRecord, u64, Op)],
    ) -> Vec<(&'k Key, u64, Op)> {
        keys.iter()
            .zip(changes)
            .map(|(key, (_, version, change))| {
                let change = match change {
                    Op::Set(value, ttl) => Op::Set(self.tagged(key, version + 1, value), *ttl),
                    Op::Link(value, ttl, links) => {
                        Op::Link(self.tagged(key, version + 1, value), *ttl, links.clone())
                    }
                    other => other.clone(),
                };
                (key, *version, change)
            })
            .collect()
    }

    /// A device's failure state and its version (0: never failed).
    pub async fn failures(
        &self,
        user: &Username,
        device: DeviceId,
    ) -> Result<(u64, FailureState), StoreError> {
        let records = self
            .read_user(user, &[UserRecord::Failures(device)])
            .await?;
        let record = records.first().cloned().unwrap_or(Versioned {
            version: 0,
            value: None,
        });
        Ok((record.version, failure_state(device, &record)?))
    }

    /// Changes a device's failure state with `change`, applied to the state
    /// as it is in the store, retried when another node changed it
    /// meanwhile; durable. Answers what `change` answered on the state that
    /// was written (`None` when `change` left the state as it was: nothing
    /// is written).
    pub async fn update_failures<T>(
        &self,
        user: &Username,
        device: DeviceId,
        mut change: impl FnMut(&mut FailureState) -> T,
    ) -> Result<Option<T>, StoreError> {
        let mut rounds = self.rounds();
        while rounds.next().await {
            let (version, before) = self.failures(user, device).await?;
            let mut after = before;
            let answer = change(&mut after);
            if after == before {
                return Ok(None);
            }
            let write = (
                UserRecord::Failures(device),
                version,
                Op::Set(after.encode(), None),
            );
            if self.write_user(user, &[write], true).await? {
                return Ok(Some(answer));
            }
        }
        Err(StoreError::Database(format!(
            "the failure state of device {device} kept changing under {ROUNDS} attempts"
        )))
    }

    /// Takes a random handle for `user` (and a device) for `ttl` (plus a
    /// grace, so that late answers hear `Expired`); false if it is taken.
    pub async fn claim_handle(
        &self,
        handle: Handle,
        user: &Username,
        device: Option<DeviceId>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let owner = match device {
            Some(device) => format!("{user} {}", device.0),
            None => user.to_string(),
        };
        let key = handle_key(handle);
        let owner = self.tagged(&key, PLAIN, owner.as_bytes());
        Ok(self
            .redis
            .put_new(&key, &owner, ttl + EXPIRED_GRACE, false)
            .await?)
    }

    /// Whose a handle is: the user, and the device if one was named.
    pub async fn handle_owner(
        &self,
        handle: Handle,
    ) -> Result<Option<(Username, Option<DeviceId>)>, StoreError> {
        let Some(owner) = self.get_checked(&handle_key(handle)).await? else {
            return Ok(None);
        };
        let owner = String::from_utf8_lossy(&owner);
        let mut parts = owner.split(' ');
        let user = parts.next().and_then(|u| Username::new(u).ok());
        let device = parts.next().and_then(|d| d.parse().ok()).map(DeviceId);
        Ok(user.map(|user| (user, device)))
    }

    /// One issuance (challenge, code, push) for the user across the
    /// deployment, by the same GCRA as one node's (`ratelimit`): each user
    /// has a limiter of their own in their slot.
    pub async fn count_issuance(
        &self,
        user: &Username,
        now: Timestamp,
        rate: Rate,
    ) -> Result<Decision, StoreError> {
        let key = issued_key(user);
        Ok(self.redis.gcra(&key, rate, now).await?)
    }

    /// Counts one send to a phone number (per hour), to its range and to
    /// its country code (per minute), across the deployment, by the same
    /// GCRA as one node's; the first limit without room is the refusal.
    pub async fn count_send(
        &self,
        number: &PhoneNumber,
        now: Timestamp,
        sms: &crate::config::SmsConfig,
    ) -> Result<Result<(), (Duration, SendLimit)>, StoreError> {
        let quotas = [
            (format!("n:{number}"), SendLimit::Number),
            (format!("r:{}", number.range()), SendLimit::Range),
            (format!("cc:{}", number.country()), SendLimit::Country),
        ];
        for (tag, limit) in quotas {
            let key = Key::new(&tag, "sent");
            let rate = sms.send_rate(limit);
            if let Decision::Deny { retry_after } = self.redis.gcra(&key, rate, now).await? {
                return Ok(Err((retry_after, limit)));
            }
        }
        Ok(Ok(()))
    }
}
