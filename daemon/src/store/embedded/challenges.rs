//! Open challenges: lock-sharded memory with expiry and a hard capacity.
//!
//! Ids are random, so the low bits of an id pick its shard without
//! hashing. Every change to one challenge happens under its shard's lock,
//! which is what makes "accepted at most once" and "attempts never exceed
//! the limit" hold under concurrent verifies of the same id.

use crate::store::model::*;
// foldhash, not SipHash: challenge ids are the server's random draws,
// so nobody picks their hashes, and every login inserts and resolves one.
use foldhash::{HashMap, HashMapExt};
use std::sync::PoisonError;

use crate::clock::Timestamp;
use crate::identity::ChallengeId;
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};

/// Why a challenge could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("the challenge table is full")]
    Full,
    #[error("a challenge with this id is open")]
    Taken,
}

/// The table of open challenges.
#[derive(Debug)]
pub struct ChallengeTable {
    shards: Box<[Mutex<HashMap<ChallengeId, OpenChallenge>>]>,
    mask: u64,
    len: AtomicUsize,
    capacity: AtomicUsize,
}

impl ChallengeTable {
    /// A table holding at most `capacity` challenges, in `shards` shards
    /// (rounded up to a power of two).
    pub fn new(capacity: usize, shards: usize) -> Self {
        let shards = shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            mask: shards as u64 - 1,
            len: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
        }
    }

    fn shard(
        &self,
        id: ChallengeId,
    ) -> Option<MutexGuard<'_, HashMap<ChallengeId, OpenChallenge>>> {
        let index = usize::try_from(id.0 & self.mask).ok()?;
        // A panic while holding a shard cannot leave a challenge half
        // changed (every change is one assignment), so a poisoned lock is
        // still consistent.
        Some(
            self.shards
                .get(index)?
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Holds at most `capacity` from now on; a smaller one than the
    /// challenges open refuses new ones until enough expire or are used.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Open challenges right now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores a new challenge under `id`.
    pub fn insert(&self, id: ChallengeId, challenge: OpenChallenge) -> Result<(), InsertError> {
        // Reserve a slot first so that concurrent inserts cannot overshoot.
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.capacity.load(Ordering::Relaxed) {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(InsertError::Full);
        }
        let Some(mut shard) = self.shard(id) else {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(InsertError::Full);
        };
        if shard.contains_key(&id) {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return Err(InsertError::Taken);
        }
        shard.insert(id, challenge);
        Ok(())
    }

    /// Runs `decide` on the challenge `id` under its shard's lock; removes
    /// it if `decide` says so. `None` if there is no such challenge.
    pub fn resolve<R>(
        &self,
        id: ChallengeId,
        decide: impl FnOnce(&mut OpenChallenge) -> (R, Disposition),
    ) -> Option<R> {
        let mut shard = self.shard(id)?;
        let challenge = shard.get_mut(&id)?;
        let (result, disposition) = decide(challenge);
        if disposition == Disposition::Remove && shard.remove(&id).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
        Some(result)
    }

    /// Drops every challenge that expired `EXPIRED_GRACE` or more before
    /// `now`; returns how many.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.len();
            // Kept past expiry as long as an answer still hears `Expired`.
            shard.retain(|_, c| !forgotten(c.expires_at, now));
            removed += before - shard.len();
        }
        self.len.fetch_sub(removed, Ordering::AcqRel);
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DeviceId, Username};
    use std::sync::Arc;

    fn challenge(expires_at: u64) -> OpenChallenge {
        OpenChallenge {
            user: Username::new("jdoe").unwrap(),
            device: DeviceId(1),
            question: Question::Ocra("123456".into()),
            expires_at: Timestamp(expires_at),
            attempts_left: 3,
        }
    }

    #[test]
    fn a_stored_challenge_reads_back_as_it_was() {
        let ocra = challenge(77);
        assert_eq!(OpenChallenge::decode(&ocra.encode()), Some(ocra));
        let card = crate::otp::card::CodeCard::new(
            &crate::otp::SecretKey::from_bytes(vec![7; 32]).unwrap(),
            20,
        )
        .unwrap();
        let card = OpenChallenge {
            question: Question::Card(card.challenge(3, 17).unwrap()),
            ..challenge(78)
        };
        assert_eq!(OpenChallenge::decode(&card.encode()), Some(card.clone()));
        // Damaged records read as nothing, never as another challenge.
        let bytes = card.encode();
        for cut in 0..bytes.len() {
            assert_eq!(OpenChallenge::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut unknown = challenge(1).encode();
        let tag = unknown.len() - 9; // the question tag before "123456"
        assert_eq!(unknown[tag], 1, "the OCRA question tag");
        unknown[tag] = 9;
        assert_eq!(OpenChallenge::decode(&unknown), None);
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let table = ChallengeTable::new(3, 4);
        table.insert(ChallengeId(0), challenge(10)).unwrap();
        table.insert(ChallengeId(1), challenge(10)).unwrap();
        assert_eq!(
            table.insert(ChallengeId(1), challenge(10)),
            Err(InsertError::Taken)
        );
        table.insert(ChallengeId(2), challenge(10)).unwrap();
        assert_eq!(
            table.insert(ChallengeId(9), challenge(10)),
            Err(InsertError::Full)
        );
        assert_eq!(table.len(), 3);
        table
            .resolve(ChallengeId(1), |_| ((), Disposition::Remove))
            .unwrap();
        assert_eq!(table.len(), 2);
        assert!(table.insert(ChallengeId(9), challenge(10)).is_ok());
    }

    #[test]
    fn sweep_drops_only_challenges_expired_longer_than_the_grace() {
        let table = ChallengeTable::new(10, 2);
        table.insert(ChallengeId(1), challenge(100)).unwrap();
        table.insert(ChallengeId(2), challenge(200)).unwrap();
        // Expired, but a late answer still hears so for EXPIRED_GRACE.
        assert_eq!(table.sweep(Timestamp(100)), 0);
        let grace = u64::try_from(EXPIRED_GRACE.as_millis()).unwrap();
        assert_eq!(table.sweep(Timestamp(100 + grace - 1)), 0);
        assert_eq!(table.sweep(Timestamp(100 + grace)), 1);
        assert_eq!(table.len(), 1);
        assert!(
            table
                .resolve(ChallengeId(1), |_| ((), Disposition::Keep))
                .is_none()
        );
        assert!(
            table
                .resolve(ChallengeId(2), |_| ((), Disposition::Keep))
                .is_some()
        );
    }

    #[test]
    fn concurrent_resolves_remove_a_challenge_once() {
        let table = Arc::new(ChallengeTable::new(10, 1));
        table.insert(ChallengeId(7), challenge(100)).unwrap();
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let table = Arc::clone(&table);
                    s.spawn(move || {
                        table
                            .resolve(ChallengeId(7), |_| ((), Disposition::Remove))
                            .is_some() as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
        assert!(table.is_empty());
    }
}
