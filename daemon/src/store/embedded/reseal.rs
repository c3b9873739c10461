//! A rotation's re-seal pass over the embedded store (`Store::reseal`):
//! the tables that hold sealed values, in batches, each batch one write
//! transaction serialised with the registry's changes.
//!
//! Every seal of the embedded store is made under the lock that orders
//! changes (`Registry::lock_changes`), and a step takes it too: once the
//! keyring has turned to a new key, a change that sealed under the old one
//! has committed before the pass's first step, and none seals under it
//! afterwards. So one pass leaves nothing under a retiring key.

use std::ops::Bound;

use rand::CryptoRng;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::accounts::{DEVICE_LIFE, USERS};
use super::inventory::TOKENS;
use super::registry::{DEVICES, PHONES, Registry};
use crate::identity::{DeviceId, Username};
use crate::store::change::{ResealCursor, ResealStep};
use crate::store::{DeviceLife, StoreError};

/// The tables a pass goes through, in this order (`ResealCursor::stage`).
const STAGES: u8 = 5;

type Resealed = Result<Option<Vec<u8>>, StoreError>;

impl Registry {
    /// One step of the pass: up to `limit` records of the cursor's table.
    /// The last step makes everything the pass wrote durable.
    pub(super) fn reseal_step<R: CryptoRng + ?Sized>(
        &self,
        cursor: &mut ResealCursor,
        limit: usize,
        rng: &mut R,
    ) -> Result<ResealStep, StoreError> {
        if cursor.stage >= STAGES {
            super::flush::flush(&self.db)?;
            return Ok(ResealStep {
                done: true,
                ..ResealStep::default()
            });
        }
        let _serial = self.lock_changes();
        let mut txn = self.db.begin_write()?;
        // Made durable by the next flush, the last step's at the latest; a
        // step lost to a crash is done again by the pass after the restart.
        txn.set_durability(redb::Durability::None)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let codec = &self.codec;
        let mut step = ResealStep::default();
        let mut lives: Vec<(DeviceId, DeviceLife)> = Vec::new();
        match cursor.stage {
            0 => reseal_table(&txn, DEVICES, cursor, limit, &mut step, |id, record| {
                codec.reseal_device(rng, DeviceId(id), record)
            })?,
            1 => reseal_table(&txn, PHONES, cursor, limit, &mut step, |id, sealed| {
                codec.reseal_phone(rng, DeviceId(id), sealed)
            })?,
            2 => reseal_table(&txn, DEVICE_LIFE, cursor, limit, &mut step, |id, record| {
                let resealed = codec.reseal_life(rng, DeviceId(id), record)?;
                Ok(resealed.map(|(bytes, life)| {
                    lives.push((DeviceId(id), life));
                    bytes
                }))
            })?,
            3 => reseal_table(&txn, USERS, cursor, limit, &mut step, |name, record| {
                let user = Username::new(name).map_err(|e| StoreError::Corrupt {
                    device: 0,
                    problem: format!("user name: {e}"),
                })?;
                codec.reseal_user(rng, &user, record)
            })?,
            _ => reseal_table(&txn, TOKENS, cursor, limit, &mut step, |_, record| {
                codec.reseal_token(rng, record)
            })?,
        }
        txn.commit()?;
        // The lifecycle held in memory carries its sealed PIN: a later
        // change writes that copy back, so it must be the new one.
        for (id, life) in lives {
            if let Some(device) = self.device(id) {
                *device.life_mut() = life;
            }
        }
        Ok(step)
    }
}

/// Records read for each one re-sealed, at most, in a step: reading one
/// already under the new key (a header compared) costs little next to a
/// re-seal, and records enrolled since the rotation must not hold the
/// pass back, however fast they come.
const READ_PER_RESEAL: usize = 16;

/// What a step may do: re-seal `limit` records, read `READ_PER_RESEAL`
/// times as many.
struct Budget {
    limit: usize,
    read: usize,
    /// Spent before the table ran out.
    exhausted: bool,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            read: 0,
            exhausted: false,
        }
    }

    /// One more record read, `resealed` so far: whether the step ends.
    fn spent(&mut self, resealed: usize) -> bool {
        self.read += 1;
        self.exhausted =
            resealed >= self.limit || self.read >= self.limit.saturating_mul(READ_PER_RESEAL);
        self.exhausted
    }

    fn account(&self, step: &mut ResealStep, resealed: usize) {
        step.examined += self.read as u64;
        step.resealed += resealed as u64;
    }
}

/// A step over one table, from past the cursor's key: each record
/// `reseal` re-seals is written back, and the cursor moves past the last
/// key read (kept as the key type's own bytes), or to the next table when
/// this one ran out.
fn reseal_table<K: redb::Key + 'static>(
    txn: &WriteTransaction,
    table: TableDefinition<K, &[u8]>,
    cursor: &mut ResealCursor,
    limit: usize,
    step: &mut ResealStep,
    mut reseal: impl for<'k> FnMut(K::SelfType<'k>, &[u8]) -> Resealed,
) -> Result<(), StoreError> {
    let after = cursor.after.clone();
    let start = after.as_deref().map_or(Bound::Unbounded, |bytes| {
        Bound::Excluded(K::from_bytes(bytes))
    });
    let mut table = txn.open_table(table)?;
    let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut last = None;
    let mut budget = Budget::new(limit);
    for entry in table.range::<K::SelfType<'_>>((start, Bound::Unbounded))? {
        let (key, value) = entry?;
        let bytes = K::as_bytes(&key.value()).as_ref().to_vec();
        if let Some(new) = reseal(key.value(), value.value())? {
            writes.push((bytes.clone(), new));
        }
        last = Some(bytes);
        if budget.spent(writes.len()) {
            break;
        }
    }
    for (key, value) in &writes {
        table.insert(K::from_bytes(key), value.as_slice())?;
    }
    budget.account(step, writes.len());
    if budget.exhausted {
        cursor.after = last;
    } else {
        cursor.stage += 1;
        cursor.after = None;
    }
    Ok(())
}
