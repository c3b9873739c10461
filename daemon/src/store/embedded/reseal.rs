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
            0 => by_id(&txn, DEVICES, cursor, limit, &mut step, |id, record| {
                codec.reseal_device(rng, DeviceId(id), record)
            })?,
            1 => by_id(&txn, PHONES, cursor, limit, &mut step, |id, sealed| {
                codec.reseal_phone(rng, DeviceId(id), sealed)
            })?,
            2 => by_id(&txn, DEVICE_LIFE, cursor, limit, &mut step, |id, record| {
                let resealed = codec.reseal_life(rng, DeviceId(id), record)?;
                Ok(resealed.map(|(bytes, life)| {
                    lives.push((DeviceId(id), life));
                    bytes
                }))
            })?,
            3 => by_name(&txn, USERS, cursor, limit, &mut step, |name, record| {
                let user = Username::new(name).map_err(|e| StoreError::Corrupt {
                    device: 0,
                    problem: format!("user name: {e}"),
                })?;
                codec.reseal_user(rng, &user, record)
            })?,
            _ => by_name(&txn, TOKENS, cursor, limit, &mut step, |_, record| {
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

/// Moves `cursor` past `last`, or to the next table when this one ran out.
fn advance(cursor: &mut ResealCursor, last: Option<Vec<u8>>, ran_out: bool) {
    if ran_out {
        cursor.stage += 1;
        cursor.after = None;
    } else {
        cursor.after = last;
    }
}

/// A step over a table keyed by device id.
fn by_id(
    txn: &WriteTransaction,
    table: TableDefinition<u64, &[u8]>,
    cursor: &mut ResealCursor,
    limit: usize,
    step: &mut ResealStep,
    mut reseal: impl FnMut(u64, &[u8]) -> Resealed,
) -> Result<(), StoreError> {
    let after = cursor
        .after
        .as_deref()
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes);
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut table = txn.open_table(table)?;
    let mut writes = Vec::new();
    let mut last = None;
    let mut budget = Budget::new(limit);
    for entry in table.range::<u64>((start, Bound::Unbounded))? {
        let (key, value) = entry?;
        last = Some(key.value());
        if let Some(new) = reseal(key.value(), value.value())? {
            writes.push((key.value(), new));
        }
        if budget.spent(writes.len()) {
            break;
        }
    }
    for (key, value) in &writes {
        table.insert(*key, value.as_slice())?;
    }
    budget.account(step, writes.len());
    advance(
        cursor,
        last.map(|id| id.to_be_bytes().to_vec()),
        !budget.exhausted,
    );
    Ok(())
}

/// A step over a table keyed by name (users, token serials).
fn by_name(
    txn: &WriteTransaction,
    table: TableDefinition<&str, &[u8]>,
    cursor: &mut ResealCursor,
    limit: usize,
    step: &mut ResealStep,
    mut reseal: impl FnMut(&str, &[u8]) -> Resealed,
) -> Result<(), StoreError> {
    let after = cursor
        .after
        .as_deref()
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    let mut table = txn.open_table(table)?;
    let mut writes = Vec::new();
    let mut last = None;
    let mut budget = Budget::new(limit);
    for entry in table.range::<&str>((start, Bound::Unbounded))? {
        let (key, value) = entry?;
        last = Some(key.value().to_owned());
        if let Some(new) = reseal(key.value(), value.value())? {
            writes.push((key.value().to_owned(), new));
        }
        if budget.spent(writes.len()) {
            break;
        }
    }
    for (key, value) in &writes {
        table.insert(key.as_str(), value.as_slice())?;
    }
    budget.account(step, writes.len());
    advance(cursor, last.map(String::into_bytes), !budget.exhausted);
    Ok(())
}
