//! Where a key lives in a Redis Cluster — its hash slot, CRC16 (XMODEM) of
//! its hash tag modulo 16,384, as every cluster client computes it — and
//! a hash tag for each slot. A challenge's id carries the slot of its
//! user's records, and its record is named with that slot's tag: a
//! `Verify`, knowing only the id, reads the challenge and the records it
//! goes with in one round trip, with no lookup of whose it is.

use std::sync::OnceLock;

use rand::CryptoRng;

use crate::identity::ChallengeId;

/// Hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;
/// Bits of a challenge id below its slot: random.
const RANDOM_BITS: u32 = 50;

/// The hash slot of keys tagged `tag`.
pub fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS
}

/// The hash slot of the key named `name`: of its hash tag (what stands
/// between its first `{` and the next `}`, if not empty), or of the whole
/// name.
pub fn slot_of_key(name: &[u8]) -> u16 {
    let tag = name
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = name.get(open + 1..)?;
            let close = rest.iter().position(|&b| b == b'}')?;
            rest.get(..close).filter(|tag| !tag.is_empty())
        })
        .unwrap_or(name);
    crc16::State::<crc16::XMODEM>::calculate(tag) % SLOTS
}

/// A hash tag whose keys live in `slot`: `s<n>` for the first `n` that
/// lands there (found once, for every slot).
pub fn tag_for(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<String>> = vec![None; usize::from(SLOTS)];
        let mut left = tags.len();
        let mut n = 0u64;
        while left > 0 {
            let tag = format!("s{n}");
            if let Some(free) = tags.get_mut(usize::from(slot_of(&tag)))
                && free.is_none()
            {
                *free = Some(tag);
                left -= 1;
            }
            n += 1;
        }
        tags.into_iter().map(Option::unwrap_or_default).collect()
    });
    tags.get(usize::from(slot % SLOTS))
        .map_or("", String::as_str)
}

/// A fresh challenge id whose records live in `slot`: the slot in its top
/// 14 bits, 50 random bits below.
pub fn challenge_id<R: CryptoRng + ?Sized>(slot: u16, rng: &mut R) -> ChallengeId {
    ChallengeId((u64::from(slot % SLOTS) << RANDOM_BITS) | (rng.next_u64() >> (64 - RANDOM_BITS)))
}

/// The slot a challenge id names.
pub fn slot_of_challenge(id: ChallengeId) -> u16 {
    u16::try_from(id.0 >> RANDOM_BITS).unwrap_or(0) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn slots_are_the_clusters_and_every_slot_has_a_tag() {
        // Redis Cluster's specification: "123456789" hashes to 0x31C3.
        assert_eq!(slot_of("123456789"), 0x31C3);
        assert_eq!(slot_of_key(b"sls:{123456789}:device"), 0x31C3);
        assert_eq!(slot_of_key(b"123456789"), 0x31C3);
        assert_eq!(slot_of_key(b"{}123456789"), slot_of("{}123456789"));
        for slot in [0, 1, 12_182, SLOTS - 1] {
            assert_eq!(slot_of(tag_for(slot)), slot);
        }
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let id = challenge_id(12_182, &mut rng);
        assert_eq!(slot_of_challenge(id), 12_182);
        assert_ne!(challenge_id(12_182, &mut rng), id);
    }
}
