//! Loading every device at start, on every core.
//!
//! Startup is the time a restarted node cannot answer, and it grows with
//! the registry: ten million devices must be ready in seconds, not
//! minutes. Most of a device's load is opening its sealed key (XChaCha20-
//! Poly1305) and precomputing its HMAC state, which depend on nothing but
//! the device's own rows. So the id space is cut into one contiguous range
//! per core, and each range is read by its own thread in its own read
//! transaction (one snapshot: the database is not written before the
//! registry is open).
//!
//! The caller indexes the devices (the registry's maps, one thread's
//! work) while the ranges are still being read: each range hands over its
//! devices a chunk at a time through a bounded channel, so the indexing
//! overlaps the reading instead of following it with the other cores idle.
//!
//! Within a range the device rows and the rows that sit beside them in
//! other tables (failure state, number, push key, lifecycle), all keyed by
//! device id, are read as one merge join of ordered scans rather than four
//! B-tree lookups per device.

use std::ops::RangeInclusive;
use std::sync::Arc;

use redb::{AccessGuard, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable};

use crate::identity::DeviceId;
use crate::otp::push::PushKey;
use crate::store::embedded::accounts::DEVICE_LIFE;
use crate::store::embedded::registry::{DEVICES, FAILURES, PHONES, PUSH_KEYS};
use crate::store::model::{Device, FailureState, StoreError};
use crate::store::records::DeviceCodec;

type Row = AccessGuard<'static, &'static [u8]>;

/// One table's rows, read in id order beside the devices' own.
struct Beside {
    rows: redb::Range<'static, u64, &'static [u8]>,
    next: Option<(u64, Row)>,
}

impl Beside {
    fn open(
        txn: &ReadTransaction,
        table: redb::TableDefinition<u64, &[u8]>,
        ids: &RangeInclusive<u64>,
    ) -> Result<Self, StoreError> {
        let table: ReadOnlyTable<u64, &[u8]> = txn.open_table(table)?;
        let mut rows = table.range(ids.clone())?;
        let next = pull(&mut rows)?;
        Ok(Self { rows, next })
    }

    /// The row for `id`, if the table has one. Ids must be asked for in
    /// increasing order: rows before `id` (of devices that no longer
    /// exist) are passed over.
    fn take(&mut self, id: u64) -> Result<Option<Row>, StoreError> {
        while self.next.as_ref().is_some_and(|(key, _)| *key < id) {
            self.next = pull(&mut self.rows)?;
        }
        match self.next.take_if(|(key, _)| *key == id) {
            Some((_, row)) => {
                self.next = pull(&mut self.rows)?;
                Ok(Some(row))
            }
            None => Ok(None),
        }
    }
}

fn pull(
    rows: &mut redb::Range<'static, u64, &'static [u8]>,
) -> Result<Option<(u64, Row)>, StoreError> {
    match rows.next() {
        Some(row) => {
            let (key, value) = row?;
            Ok(Some((key.value(), value)))
        }
        None => Ok(None),
    }
}

/// The threads a start loads on: one per core. Under the loom models
/// devices hold loom's locks, which only the model's own thread may
/// create: one range, read on that thread.
pub(super) fn threads() -> usize {
    if cfg!(feature = "loom") {
        1
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

/// Devices handed to the caller at a time.
const CHUNK: usize = 4096;

/// Chunks each reading thread may have waiting for the caller: the
/// readers run a little ahead of the indexing, never a registry ahead.
const CHUNKS_AHEAD: usize = 4;

/// Every device in the database, decoded on `threads` threads and handed
/// to `index` on the calling thread, a chunk at a time: each chunk in id
/// order, chunks of different ranges in any order.
pub(super) fn devices(
    db: &redb::Database,
    codec: &DeviceCodec,
    threads: usize,
    mut index: impl FnMut(Vec<Arc<Device>>),
) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DEVICES)?;
    let (Some((first, _)), Some((last, _))) = (table.first()?, table.last()?) else {
        return Ok(());
    };
    let ranges = split(first.value()..=last.value(), threads);
    if let [ids] = ranges.as_slice() {
        // One range: read on this thread (no thread to start, and the
        // loom models need their devices made on the model's thread).
        return range(db, codec, ids.clone(), &mut |chunk| {
            index(chunk);
            Ok(())
        });
    }
    std::thread::scope(|scope| {
        let (chunks, arrived) = std::sync::mpsc::sync_channel(ranges.len() * CHUNKS_AHEAD);
        let readers: Vec<_> = ranges
            .into_iter()
            .map(|ids| {
                let chunks = chunks.clone();
                scope.spawn(move || {
                    range(db, codec, ids, &mut |chunk| {
                        chunks.send(chunk).map_err(|_| {
                            StoreError::Database("the load stopped taking devices".into())
                        })
                    })
                })
            })
            .collect();
        // The channel ends when every reader has ended, done or failed.
        drop(chunks);
        for chunk in arrived {
            index(chunk);
        }
        readers.into_iter().try_for_each(|reader| {
            reader
                .join()
                .unwrap_or_else(|_| Err(StoreError::Database("a loading thread panicked".into())))
        })
    })
}

/// `ids` cut into at most `parts` contiguous ranges of about equal width
/// (device ids are handed out in sequence, so width is about count).
fn split(ids: RangeInclusive<u64>, parts: usize) -> Vec<RangeInclusive<u64>> {
    let (first, last) = (*ids.start(), *ids.end());
    let width = (last - first) / u64::try_from(parts.max(1)).unwrap_or(1) + 1;
    let mut ranges = Vec::new();
    let mut start = first;
    loop {
        let end = start.saturating_add(width - 1).min(last);
        ranges.push(start..=end);
        if end == last {
            return ranges;
        }
        start = end + 1;
    }
}

/// The devices with ids in `ids`, in its own read transaction, handed to
/// `emit` in id order, [`CHUNK`] at a time.
fn range(
    db: &redb::Database,
    codec: &DeviceCodec,
    ids: RangeInclusive<u64>,
    emit: &mut dyn FnMut(Vec<Arc<Device>>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let txn = db.begin_read()?;
    let mut failures = Beside::open(&txn, FAILURES, &ids)?;
    let mut phones = Beside::open(&txn, PHONES, &ids)?;
    let mut push_keys = Beside::open(&txn, PUSH_KEYS, &ids)?;
    let mut lives = Beside::open(&txn, DEVICE_LIFE, &ids)?;
    let corrupt = |id: DeviceId, problem: &str| StoreError::Corrupt {
        device: id.0,
        problem: problem.into(),
    };
    let mut devices = Vec::with_capacity(CHUNK);
    for entry in txn.open_table(DEVICES)?.range(ids)? {
        let (id, record) = entry?;
        let id = DeviceId(id.value());
        let phone = match phones.take(id.0)? {
            Some(sealed) => Some(codec.open_phone(id, sealed.value())?),
            None => None,
        };
        let device = codec.decode_device(id, record.value(), phone)?;
        if let Some(bytes) = failures.take(id.0)? {
            *device.failures() =
                FailureState::decode(bytes.value()).ok_or_else(|| corrupt(id, "failure state"))?;
        }
        if let Some(key) = push_keys.take(id.0)? {
            let key = key
                .value()
                .try_into()
                .map_err(|_| corrupt(id, "push key"))?;
            device.set_push_key(Some(PushKey(key)));
        }
        if let Some(life) = lives.take(id.0)? {
            *device.life_mut() = crate::store::records::decode_life(life.value(), |sealed| {
                codec.open_changed_pin(id, sealed)
            })
            .ok_or_else(|| corrupt(id, "lifecycle state"))?;
        }
        // Into its `Arc` at once: a registry's worth of devices is never
        // held twice.
        devices.push(Arc::new(device));
        if devices.len() == CHUNK {
            emit(std::mem::replace(&mut devices, Vec::with_capacity(CHUNK)))?;
        }
    }
    if devices.is_empty() {
        return Ok(());
    }
    emit(devices)
}

#[cfg(test)]
mod tests {
    use super::{devices, split};
    use crate::clock::Timestamp;
    use crate::identity::Username;
    use crate::otp::push::PushKey;
    use crate::phone::PhoneNumber;
    use crate::profile::{DeviceKind, DeviceProfiles};
    use crate::store::embedded::registry::Registry;
    use crate::store::sealed::SecretCipher;
    use crate::store::{Activation, Actor, DeviceLife, EnrollError, FailureState, NewDevice};
    use rand::SeedableRng;

    #[test]
    fn ranges_cover_the_ids_once_in_order() {
        for (first, last, parts) in [
            (1, 1, 2),
            (1, 2, 2),
            (1, 10, 3),
            (5, 1_000_003, 2),
            (0, u64::MAX, 4),
            (7, 9, 8),
        ] {
            let ranges = split(first..=last, parts);
            assert!(
                ranges.len() <= parts,
                "{first}..={last} in {parts}: {ranges:?}"
            );
            assert_eq!(*ranges[0].start(), first);
            assert_eq!(*ranges[ranges.len() - 1].end(), last);
            for pair in ranges.windows(2) {
                assert_eq!(*pair[0].end() + 1, *pair[1].start(), "{ranges:?}");
            }
        }
    }

    /// Loaded on several threads, every device comes back as one thread
    /// loads it, with the rows of the other tables beside it joined to the
    /// right device, and removed devices (whose ids leave holes) absent.
    #[test]
    fn every_thread_count_loads_the_same_devices_with_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.redb");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let registry = Registry::open(
            &path,
            SecretCipher::new(&[9; 32]),
            DeviceProfiles::defaults().unwrap(),
        )
        .unwrap();
        let kinds = [DeviceKind::DscPlus, DeviceKind::IbKey, DeviceKind::Scc];
        let now = Timestamp(1_800_000_000_000);
        registry
            .change(&mut rng, now, Actor::SYSTEM, |c| {
                for n in 0..60u64 {
                    let user = Username::new(&format!("user{}", n / 3)).unwrap();
                    let kind = kinds[(n % 3) as usize];
                    let (id, _) = c.enroll(NewDevice {
                        user: &user,
                        kind,
                        secret: None,
                        pin: (kind == DeviceKind::DscPlus).then_some("4821"),
                        label: "loaded",
                        token: None,
                    })?;
                    if n % 7 == 0 {
                        c.remove_device(id)?;
                        continue;
                    }
                    if n % 5 == 0 {
                        let failures = FailureState {
                            consecutive: 2,
                            last_failure: Timestamp(n),
                            ..FailureState::default()
                        };
                        c.set_failures(id, failures)?;
                    }
                    if kind == DeviceKind::IbKey && n % 2 == 0 {
                        c.set_push_key(id, PushKey([n as u8; 32]))?;
                    }
                    if n % 4 == 0 {
                        let life = DeviceLife {
                            activation: Activation::Pending,
                            ..DeviceLife::default()
                        };
                        c.set_life(id, life)?;
                    }
                }
                let user = Username::new("user99").unwrap();
                c.add_phone(&user, PhoneNumber::parse("+41 791234567").unwrap(), "phone")?;
                Ok::<_, EnrollError>(())
            })
            .unwrap();
        let print = |threads| -> Vec<String> {
            let mut loaded = Vec::new();
            devices(&registry.db, &registry.codec, threads, |chunk| {
                loaded.extend(chunk)
            })
            .unwrap();
            // Ranges hand their chunks over in any order.
            loaded.sort_by_key(|d| d.id);
            loaded.iter().map(|d| format!("{d:?}")).collect()
        };
        let one = print(1);
        // 60 enrolled, ids 0, 7, ..., 56 removed, and the phone.
        assert_eq!(one.len(), 60 - 9 + 1);
        for threads in [2, 3, 8] {
            assert_eq!(print(threads), one, "{threads} threads");
        }
        let joined = |what: &str| one.iter().filter(|d| d.contains(what)).count();
        assert_eq!(joined("consecutive: 2"), 10, "failure states");
        assert_eq!(joined("PushKey("), 9, "push keys");
        assert_eq!(joined("Pending"), 12, "lifecycle states");
        assert_eq!(joined("PhoneNumber(+41 …67)"), 1, "the number");
    }
}
