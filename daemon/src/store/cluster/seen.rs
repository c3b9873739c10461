//! Records of users this node has lately read or written, as they were
//! (checked): a `Challenge` after `Devices` on the same node decides on
//! them and writes in the round trip that counts the issuance, the
//! versions checked there. A copy that has changed meanwhile costs only a
//! retry (the write's answer carries the records as they are), so a stale
//! one is never decided on. Kept for `store.cache-ttl`, swept with the
//! device cache: the map holds at most the records used within it.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::redis::{Key, Op, Versioned};

#[derive(Debug)]
pub struct SeenRecords {
    ttl: Duration,
    records: RwLock<HashMap<String, (Versioned, Instant)>>,
}

impl SeenRecords {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            records: RwLock::new(HashMap::new()),
        }
    }

    /// Records as read (checked), in the order of `keys`.
    pub fn read(&self, keys: &[&Key], records: &[Versioned]) {
        let at = Instant::now();
        let mut map = self.records.write().unwrap_or_else(PoisonError::into_inner);
        for (key, record) in keys.iter().zip(records) {
            map.insert(key.as_str().to_owned(), (record.clone(), at));
        }
    }

    /// A transaction that was made: each `(key, version it was at, what
    /// was done)`, the values plain (as decided, before their tags).
    pub fn written<'a>(&self, changes: impl IntoIterator<Item = (&'a Key, u64, &'a Op)>) {
        let at = Instant::now();
        let mut map = self.records.write().unwrap_or_else(PoisonError::into_inner);
        for (key, version, op) in changes {
            let record = match op {
                Op::Keep => continue,
                Op::Set(value, _) | Op::Link(value, _, _) => Versioned {
                    version: version + 1,
                    value: Some(value.clone()),
                },
                Op::Delete => Versioned {
                    version: 0,
                    value: None,
                },
            };
            map.insert(key.as_str().to_owned(), (record, at));
        }
    }

    /// Every one of `keys` as lately seen, or `None` if one was not.
    pub fn recall(&self, keys: &[&Key]) -> Option<Vec<Versioned>> {
        let map = self.records.read().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .map(|key| {
                map.get(key.as_str())
                    .filter(|(_, at)| at.elapsed() < self.ttl)
                    .map(|(record, _)| record.clone())
            })
            .collect()
    }

    /// Drops what is older than the TTL; answers how many went.
    pub fn sweep(&self) -> usize {
        let mut map = self.records.write().unwrap_or_else(PoisonError::into_inner);
        let before = map.len();
        map.retain(|_, (_, at)| at.elapsed() < self.ttl);
        before - map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, value: &[u8]) -> Versioned {
        Versioned {
            version,
            value: Some(value.to_vec()),
        }
    }

    #[test]
    fn what_was_read_or_written_is_recalled_until_it_ages_out() {
        let seen = SeenRecords::new(Duration::from_millis(50));
        let (a, b) = (Key::named("{u:x}:a".into()), Key::named("{u:x}:b".into()));
        seen.read(&[&a], &[record(3, b"three")]);
        // Not every record seen: nothing to decide on.
        assert_eq!(seen.recall(&[&a, &b]), None);
        seen.written([
            (&a, 3, &Op::Set(b"four".to_vec(), None)),
            (&b, 0, &Op::Keep),
        ]);
        assert_eq!(seen.recall(&[&a, &b]), None, "a kept record is not learnt");
        seen.written([(&b, 7, &Op::Delete)]);
        assert_eq!(
            seen.recall(&[&a, &b]),
            Some(vec![
                record(4, b"four"),
                Versioned {
                    version: 0,
                    value: None
                }
            ])
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(seen.recall(&[&a]), None);
        assert_eq!(seen.sweep(), 2);
    }
}
