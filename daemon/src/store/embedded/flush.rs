//! Group durability for registry changes: each change commits without an
//! fsync (`Durability::None`), then waits until a commit with
//! `Durability::Immediate` has followed it — redb persists every earlier
//! commit with that one. One waiter leads each flush; so N changes waiting
//! together cost one fsync, not N, and none is acknowledged before it is
//! on disk.
//!
//! redb runs one write transaction at a time, and a flush holds it for its
//! fsync: a leader that flushed at once would leave the changes queued
//! behind it to flush one by one. So the leader first lets the changes
//! already under way commit (up to `store.commit-interval`), then flushes
//! them all.
//!
//! A change with no other under way commits with fsync at once: alone, it
//! would wait for nobody.
//!
//! A change is visible in memory once committed, before its flush: what
//! another request decides from it (a withdrawal refused because of one
//! still flushing) is never less safe than the change itself, and a change
//! lost to a crash before its flush was never acknowledged.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable};

use crate::store::StoreError;
use crate::store::embedded::registry::META;

/// The meta key a flush writes, so that its commit is never empty.
const FLUSHES: &str = "flushes";

#[derive(Default)]
struct State {
    /// Changes under way (entered, not yet committed or given up).
    under_way: u64,
    /// Commits made so far (their sequence numbers are 1..=committed).
    committed: u64,
    /// Every commit up to this one is durable.
    flushed: u64,
    /// A waiter is flushing now.
    flushing: bool,
    /// Flushes done.
    flushes: u64,
}

pub(super) struct Flusher {
    state: Mutex<State>,
    changed: Condvar,
    /// How long a leader waits for the changes under way to commit.
    gather: Duration,
}

/// A change under way; `committed` numbers its commit, dropping it
/// without one gives up.
pub(super) struct Ticket<'f> {
    flusher: &'f Flusher,
    open: bool,
}

impl Ticket<'_> {
    /// Whether this change is the only one under way: then it commits with
    /// fsync itself (one commit, not a commit and a flush), as nothing
    /// would ride along. Ask holding the lock that orders changes.
    pub(super) fn alone(&self) -> bool {
        self.flusher.lock().under_way == 1
    }

    /// Numbers the commit this change just made, `durable` if it was made
    /// with fsync (which persisted every earlier commit too). Call it right
    /// after the commit, still holding the lock that orders changes.
    pub(super) fn committed(mut self, durable: bool) -> u64 {
        self.open = false;
        let mut state = self.flusher.lock();
        state.under_way -= 1;
        state.committed += 1;
        let seq = state.committed;
        if durable {
            state.flushed = seq;
            state.flushes += 1;
        }
        drop(state);
        self.flusher.changed.notify_all();
        seq
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.open {
            self.flusher.lock().under_way -= 1;
            self.flusher.changed.notify_all();
        }
    }
}

impl Flusher {
    pub(super) fn new(gather: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            gather,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes committed and flushes done since the start: how many
    /// changes one fsync carries.
    pub(super) fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.committed, state.flushes)
    }

    /// A change begins (before it waits for its turn).
    pub(super) fn enter(&self) -> Ticket<'_> {
        self.lock().under_way += 1;
        Ticket {
            flusher: self,
            open: true,
        }
    }

    /// Returns once commit `seq` is durable: leads a flush, or waits for
    /// the one under way and then the next.
    pub(super) fn wait_durable(&self, db: &Database, seq: u64) -> Result<(), StoreError> {
        let mut state = self.lock();
        loop {
            if state.flushed >= seq {
                return Ok(());
            }
            if state.flushing {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.flushing = true;
            // Gather: the changes under way commit first, and ride along.
            let until = Instant::now() + self.gather;
            while state.under_way > 0 {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .changed
                    .wait_timeout(state, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let target = state.committed;
            drop(state);
            let flushed = flush(db);
            state = self.lock();
            state.flushing = false;
            if flushed.is_ok() {
                state.flushed = state.flushed.max(target);
                state.flushes += 1;
            }
            // Woken waiters find their commit durable, or lead a new
            // flush (after a failure, each tries again for itself).
            self.changed.notify_all();
            flushed?;
        }
    }
}

/// One commit with fsync, which makes every earlier commit durable.
pub(super) fn flush(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let count = meta.get(FLUSHES)?.map_or(0, |v| v.value());
        meta.insert(FLUSHES, count.wrapping_add(1))?;
    }
    txn.commit()?;
    Ok(())
}
