//! The node's own rate limits: per key in fixed hashed buckets, and per
//! user with a limiter each for users with devices. All GCRA, as the
//! cluster's limits are (`store::cluster`'s scripts).

use std::hash::Hasher;
use std::sync::{Mutex, PoisonError};

use siphasher::sip::SipHasher13;

use crate::clock::Timestamp;
use crate::identity::Username;
use crate::ratelimit::{Decision, Gcra, Rate};

/// Rate limits by key (a username, a phone number, a country code), in a
/// fixed array of GCRA buckets picked by a keyed hash of the key.
///
/// Every key is limited — a known username or not, so the limit reveals
/// nothing — and memory stays fixed however many keys an attacker invents.
/// The hash key (SipHash) is drawn from the engine's random source at
/// start, so nobody can aim at another key's bucket; two keys sharing a
/// bucket share its allowance.
pub(super) struct KeyedLimits {
    key: [u8; 16],
    buckets: Box<[Mutex<Gcra>]>,
}

impl KeyedLimits {
    pub(super) fn new(buckets: usize, key: [u8; 16]) -> Self {
        Self {
            key,
            buckets: (0..buckets.max(1))
                .map(|_| Mutex::new(Gcra::default()))
                .collect(),
        }
    }

    /// One event for `key` at `now`, at `rate`: the configuration's as it
    /// is now, so a reload changes it from the next request on.
    pub(super) fn check(&self, rate: Rate, key: &[u8], now: Timestamp) -> Decision {
        self.check_index(rate, keyed_hash(&self.key, key), now)
    }

    /// The bucket `index` (modulo the bucket count), for keys that are
    /// small numbers already (country codes: one bucket each).
    pub(super) fn check_index(&self, rate: Rate, index: usize, now: Timestamp) -> Decision {
        match self.buckets.get(index % self.buckets.len()) {
            Some(bucket) => bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check(rate, now),
            None => Decision::Allow,
        }
    }
}

/// SipHash of `bytes` under `key`: where a name lands among buckets or
/// shards, which nobody without the key can aim at.
pub(super) fn keyed_hash(key: &[u8; 16], bytes: &[u8]) -> usize {
    let mut hasher = SipHasher13::new_with_key(key);
    hasher.write(bytes);
    hasher.finish() as usize
}

/// The per-user issuance limit of challenges, codes and pushes.
///
/// A user with devices has a limiter of their own, so nobody else's
/// requests can spend their allowance; its state lives while it holds
/// anything back (idle ones are swept). Names without devices — unknown
/// ones among them — draw from a separate fixed array of buckets
/// (`KeyedLimits`): however many names an attacker invents, memory stays
/// fixed, and what they drain is only the budget of names nobody logs in
/// with. Both answer the same way (a rate limit with `retry_after`, or on
/// to the same `NotFound` an unknown user gets), and both cost a hash and
/// a map lookup, so the limit does not tell which names exist.
pub(super) struct UserLimits {
    key: [u8; 16],
    /// foldhash, as the registry's maps: only enrolled users get an entry,
    /// so callers cannot fill it with colliding names.
    enrolled: Box<[Mutex<foldhash::HashMap<Username, Gcra>>]>,
    unknown: KeyedLimits,
}

/// Shards of the enrolled users' limiters.
pub(super) const USER_LIMIT_SHARDS: usize = 64;

impl UserLimits {
    pub(super) fn new(buckets: usize, key: [u8; 16], unknown_key: [u8; 16]) -> Self {
        Self {
            key,
            enrolled: (0..USER_LIMIT_SHARDS)
                .map(|_| Mutex::new(foldhash::HashMap::default()))
                .collect(),
            unknown: KeyedLimits::new(buckets, unknown_key),
        }
    }

    /// One issuance for `user` at `now`, at `rate`; `enrolled` says
    /// whether the user has devices (the registry's index).
    pub(super) fn check(
        &self,
        rate: Rate,
        user: &Username,
        enrolled: bool,
        now: Timestamp,
    ) -> Decision {
        if !enrolled {
            return self.unknown.check(rate, user.as_str().as_bytes(), now);
        }
        let shard = keyed_hash(&self.key, user.as_str().as_bytes()) % self.enrolled.len().max(1);
        let Some(shard) = self.enrolled.get(shard) else {
            return Decision::Allow;
        };
        let mut limiters = shard.lock().unwrap_or_else(PoisonError::into_inner);
        match limiters.get_mut(user) {
            Some(limiter) => limiter.check(rate, now),
            None => {
                let mut limiter = Gcra::default();
                let decision = limiter.check(rate, now);
                limiters.insert(user.clone(), limiter);
                decision
            }
        }
    }

    /// Forgets the limiters that hold nothing back any more.
    pub(super) fn sweep(&self, now: Timestamp) -> usize {
        let mut swept = 0;
        for shard in self.enrolled.iter() {
            let mut limiters = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = limiters.len();
            limiters.retain(|_, limiter| !limiter.is_idle(now));
            swept += before - limiters.len();
        }
        swept
    }
}
