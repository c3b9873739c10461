//! The state of a deployment of several nodes, kept in a Redis (or
//! Valkey) Cluster through the primitives of [`super::redis`]: devices,
//! failure counts and lockouts, open challenges, per-user issuance.
//!
//! Every node can verify any user: a challenge issued by one node is a
//! record any node reads; using it up is one `GETDEL` (one caller of many
//! gets it) and a wrong answer spends one attempt of the record's budget
//! atomically; failure states are versioned records changed by
//! compare-and-swap, so failures on different nodes add up to one lockout.
//!
//! Device records are the embedded registry's records (`records.rs`),
//! secrets sealed by the node under the deployment's key file before they
//! reach Redis. A node keeps the devices it has read, ready to verify, for
//! `store.cache-ttl`: the hot path does not fetch and unseal a record per
//! login, and a device revoked on another node stops working here within
//! that time. Failure states are never cached: a lockout counts at once
//! on every node.
//!
//! Keys, one hash tag per thing so every operation stays in one slot:
//! `sls:{d<id>}:device`, `:failures` and `:push-key`, `sls:{u:<user>}:devices` (the
//! user's device ids) and `:issued:<minute>`, `sls:{c<id>}:challenge`,
//! `sls:{meta}:next-device`.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rand::CryptoRng;

use super::challenges::OpenChallenge;
use super::records::{DeviceCodec, Stored};
use super::redis::{Key, RedisStore, Swap};
use super::registry::{Device, EnrollError, FailureState, NewDevice, StoreError};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::otp::SecretKey;
use crate::otp::push::PushKey;
use crate::profile::DeviceKind;
use crate::ratelimit::Decision;

/// How long past its expiry a challenge record is kept, so that a late
/// answer hears `Expired` rather than `UnknownChallenge`.
const EXPIRED_GRACE: Duration = Duration::from_secs(60);
/// The per-user issuance window.
const MINUTE_MS: u64 = 60_000;
/// Compare-and-swap rounds before a failure-state change gives up (each
/// conflict means another node changed the same device meanwhile).
const SWAP_ROUNDS: usize = 16;

struct Cached {
    device: Arc<Device>,
    read_at: Instant,
}

/// Devices, failure states, challenges and issuance counts on a Redis
/// Cluster, with a per-node cache of device records.
pub struct SharedStore {
    redis: RedisStore,
    codec: DeviceCodec,
    cache_ttl: Duration,
    cache: RwLock<HashMap<DeviceId, Cached>>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("redis", &self.redis)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

fn device_key(id: DeviceId) -> Key {
    Key::new(&format!("d{}", id.0), "device")
}

fn failures_key(id: DeviceId) -> Key {
    Key::new(&format!("d{}", id.0), "failures")
}

fn push_key_key(id: DeviceId) -> Key {
    Key::new(&format!("d{}", id.0), "push-key")
}

fn user_key(user: &Username) -> Key {
    Key::new(&format!("u:{user}"), "devices")
}

fn issued_key(user: &Username, window: u64) -> Key {
    Key::new(&format!("u:{user}"), &format!("issued:{window}"))
}

fn challenge_key(id: ChallengeId) -> Key {
    Key::new(&format!("c{:016x}", id.0), "challenge")
}

fn next_device_key() -> Key {
    Key::new("meta", "next-device")
}

impl SharedStore {
    pub fn new(redis: RedisStore, codec: DeviceCodec, cache_ttl: Duration) -> Self {
        Self {
            redis,
            codec,
            cache_ttl,
            cache: RwLock::new(HashMap::new()),
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
        let Some(record) = self.redis.get(&device_key(id)).await? else {
            self.forget(id);
            return Ok(None);
        };
        let device = self.codec.decode_device(id, &record, None)?;
        if device.kind == DeviceKind::IbKey
            && let Some(key) = self.redis.get(&push_key_key(id)).await?
        {
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
        before - cache.len()
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
            // An id whose record is gone (a revoke cut short) is skipped.
            if let Some(device) = self.device(id).await?.filter(|d| &d.user == user) {
                devices.push(device);
            }
        }
        Ok(devices)
    }

    /// Registers a device: the id from a cluster-wide counter, the sealed
    /// record, then the user's index, each durable before the next.
    pub async fn enroll<R: CryptoRng + Send + ?Sized>(
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
        let id = DeviceId(
            self.redis
                .increment(&next_device_key(), true)
                .await
                .map_err(StoreError::from)?,
        );
        let stored = Stored {
            user,
            kind,
            label,
            now,
            secret: Some(&secret),
        };
        let record = self.codec.encode_device(rng, id, &stored, &verifier)?;
        self.redis
            .put(&device_key(id), &record, true)
            .await
            .map_err(StoreError::from)?;
        self.redis
            .set_add(&user_key(user), id.0.to_string().as_bytes(), true)
            .await
            .map_err(StoreError::from)?;
        Ok((id, generated.then_some(secret)))
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
        self.redis
            .put(&push_key_key(id), &key.0, true)
            .await
            .map_err(StoreError::from)?;
        self.forget(id);
        Ok(true)
    }

    /// Removes a device for good; false if there was none. Other nodes stop
    /// using it when their cached copy ages out (`store.cache-ttl`).
    pub async fn revoke(&self, id: DeviceId) -> Result<bool, StoreError> {
        let Some(device) = self.device(id).await? else {
            return Ok(false);
        };
        self.forget(id);
        let deleted = self
            .redis
            .delete(
                &[&device_key(id), &failures_key(id), &push_key_key(id)],
                true,
            )
            .await?;
        self.redis
            .set_remove(&user_key(&device.user), id.0.to_string().as_bytes(), true)
            .await?;
        self.forget(id);
        Ok(deleted > 0)
    }

    /// A device's failure state and its version (0: never failed).
    pub async fn failures(&self, id: DeviceId) -> Result<(u64, FailureState), StoreError> {
        let record = self.redis.read(&failures_key(id)).await?;
        let state = match &record.value {
            Some(bytes) => FailureState::decode(bytes).ok_or_else(|| StoreError::Corrupt {
                device: id.0,
                problem: "failure state".into(),
            })?,
            None => FailureState::default(),
        };
        Ok((record.version, state))
    }

    /// Changes a device's failure state with `change`, applied to the state
    /// as it is in the store, retried when another node changed it
    /// meanwhile; durable. Answers what `change` answered on the state that
    /// was written (`None` when `change` left the state as it was: nothing
    /// is written).
    pub async fn update_failures<T>(
        &self,
        id: DeviceId,
        mut change: impl FnMut(&mut FailureState) -> T,
    ) -> Result<Option<T>, StoreError> {
        for _ in 0..SWAP_ROUNDS {
            let (version, before) = self.failures(id).await?;
            let mut after = before;
            let answer = change(&mut after);
            if after == before {
                return Ok(None);
            }
            let key = failures_key(id);
            if let Swap::Done(_) = self
                .redis
                .swap(&key, version, &after.encode(), None, true)
                .await?
            {
                return Ok(Some(answer));
            }
        }
        Err(StoreError::Database(format!(
            "the failure state of device {id} kept changing under {SWAP_ROUNDS} attempts"
        )))
    }

    /// Opens a challenge for its TTL (plus a grace to tell late answers it
    /// expired); false if the id is taken. Not replicated before the answer:
    /// a challenge lost in a failover is one the user asks for again.
    pub async fn open_challenge(
        &self,
        id: ChallengeId,
        open: &OpenChallenge,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self
            .redis
            .put_budget(
                &challenge_key(id),
                &open.encode(),
                open.attempts_left,
                ttl + EXPIRED_GRACE,
            )
            .await?)
    }

    /// An open challenge with its attempts left, if it is there.
    pub async fn challenge(&self, id: ChallengeId) -> Result<Option<OpenChallenge>, StoreError> {
        let Some((attempts, record)) = self.redis.read_budget(&challenge_key(id)).await? else {
            return Ok(None);
        };
        OpenChallenge::decode(&record, attempts)
            .map(Some)
            .ok_or_else(|| StoreError::Database(format!("challenge {id} is damaged")))
    }

    /// Uses a challenge up: true for the one caller that did. Durable, so
    /// a failover cannot bring an answered challenge back.
    pub async fn use_up(&self, id: ChallengeId) -> Result<bool, StoreError> {
        // DEL is atomic: of many callers, one deletes the record.
        Ok(self.redis.delete(&[&challenge_key(id)], true).await? == 1)
    }

    /// Spends one attempt; `Some(left)` (the challenge is gone at 0), or
    /// `None` if it was gone already.
    pub async fn spend_attempt(&self, id: ChallengeId) -> Result<Option<u8>, StoreError> {
        Ok(self.redis.take_attempt(&challenge_key(id)).await?)
    }

    /// Counts one issuance (challenge) for the user in the current minute,
    /// across the deployment; denied past `per_minute`.
    pub async fn count_issuance(
        &self,
        user: &Username,
        now: Timestamp,
        per_minute: u32,
    ) -> Result<Decision, StoreError> {
        let window = now.0 / MINUTE_MS;
        let key = issued_key(user, window);
        let ttl = Duration::from_millis(MINUTE_MS) + EXPIRED_GRACE;
        let counted = self
            .redis
            .add_if_under(&key, 1, u64::from(per_minute), Some(ttl), false)
            .await?;
        Ok(match counted {
            Some(_) => Decision::Allow,
            None => Decision::Deny {
                retry_after: Duration::from_millis((window + 1) * MINUTE_MS - now.0),
            },
        })
    }
}
