//! The withdrawal ledger on the embedded store: cents approved per user
//! and UTC day, decided in memory and written by the committer.
//!
//! A withdrawal is a login with an amount: it used to be a registry change
//! of its own (a write transaction, a blocking thread and a share of the
//! group fsync each), which held withdrawals to a few thousand a second.
//! Now the decision is taken in memory under the ledger's lock — so two
//! withdrawals of one user never both fit where only one does — the
//! booking shows at once, and its ledger row and audit entry go to the
//! single commit thread (`committer.rs`) with the failure states, many per
//! fsync. The reply waits for that commit, as a failure's does.
//!
//! A booking shown before it is durable is never less safe than the
//! booking itself: a withdrawal decided meanwhile sees less headroom, not
//! more. If the commit fails, the booking is taken back and its request
//! answered with an error, so memory never holds what disk does not.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::clock::Timestamp;
use crate::identity::{DeviceId, Username};
use crate::policy::calendar::Day;
use crate::policy::withdrawal::Withdrawn;
use crate::store::{Actor, StoreError};
use crate::wire::AuditRecord;

/// Cents approved per user and UTC day.
pub(super) const LEDGER: TableDefinition<(&str, u32), u64> = TableDefinition::new("ledger");

/// An approved withdrawal on its way to disk: its ledger row and the
/// audit entry that records it, written in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booking {
    pub user: Username,
    pub day: Day,
    pub cents: u64,
    /// Days of the user's ledger kept; older rows are forgotten with this
    /// booking's write.
    pub keep_days: u32,
    pub device: DeviceId,
    pub actor: Actor,
    pub at: Timestamp,
    /// The audit entry's detail (amount, kind, day; never a secret).
    pub detail: String,
}

impl Booking {
    /// The first day of the user's ledger kept once this booking is
    /// durable: earlier days are forgotten, on disk and in memory alike.
    fn first_kept_day(&self) -> u32 {
        self.day.0.saturating_sub(self.keep_days)
    }

    /// The audit entry that records this booking (numbered when written).
    pub(super) fn audit_entry(&self) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at: self.at,
            actor: self.actor.0.to_owned(),
            action: "withdrawal-approved".to_owned(),
            user: Some(self.user.clone()),
            device: Some(self.device),
            detail: self.detail.clone(),
        }
    }
}

/// The ledger in memory: every user's approved cents by day, as on disk
/// plus the bookings on their way there.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    days: Mutex<HashMap<Username, Vec<(Day, u64)>>>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<Username, Vec<(Day, u64)>>> {
        self.days.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads the ledger's rows (at start).
    pub(super) fn load(
        &self,
        table: &redb::ReadOnlyTable<(&'static str, u32), u64>,
    ) -> Result<(), StoreError> {
        let mut days = self.lock();
        for entry in table.iter()? {
            let (key, cents) = entry?;
            let (name, day) = key.value();
            let user = Username::new(name).map_err(|e| StoreError::Corrupt {
                device: 0,
                problem: format!("ledger user name: {e}"),
            })?;
            days.entry(user)
                .or_default()
                .push((Day(day), cents.value()));
        }
        Ok(())
    }

    /// Decides a withdrawal of `user` from what the user has withdrawn in
    /// `window_start..=today`: `decide` returns its answer and the cents to
    /// book (none when refused), booked before the lock is let go.
    pub(super) fn decide<T>(
        &self,
        user: &Username,
        window_start: Day,
        today: Day,
        decide: impl FnOnce(Withdrawn) -> (T, Option<u64>),
    ) -> T {
        let mut days = self.lock();
        let mut withdrawn = Withdrawn::default();
        for &(day, cents) in days.get(user).map_or(&[][..], Vec::as_slice) {
            if (window_start..=today).contains(&day) {
                withdrawn.five_days = withdrawn.five_days.saturating_add(cents);
                if day == today {
                    withdrawn.today = withdrawn.today.saturating_add(cents);
                }
            }
        }
        let (answer, book) = decide(withdrawn);
        if let Some(cents) = book {
            let booked = days.entry(user.clone()).or_default();
            match booked.iter_mut().find(|(day, _)| *day == today) {
                Some((_, total)) => *total = total.saturating_add(cents),
                None => booked.push((today, cents)),
            }
        }
        answer
    }

    /// Takes back a booking whose commit failed, and forgets the days its
    /// write would have forgotten once it is durable.
    pub(super) fn settle(&self, booking: &Booking, durable: bool) {
        let mut days = self.lock();
        let Some(booked) = days.get_mut(&booking.user) else {
            return;
        };
        if durable {
            let first = booking.first_kept_day();
            booked.retain(|(day, _)| day.0 >= first);
        } else if let Some((_, total)) = booked.iter_mut().find(|(day, _)| *day == booking.day) {
            *total = total.saturating_sub(booking.cents);
        }
        booked.retain(|&(_, cents)| cents > 0);
        if booked.is_empty() {
            days.remove(&booking.user);
        }
    }
}

/// Writes `booking`'s ledger row within `txn` (adding to the day's total
/// on disk) and forgets the user's days older than its `keep_days`; the
/// caller writes its audit entry in the same transaction.
pub(super) fn write(txn: &WriteTransaction, booking: &Booking) -> Result<(), StoreError> {
    let mut table = txn.open_table(LEDGER)?;
    let user = booking.user.as_str();
    let key = (user, booking.day.0);
    let before = table.get(key)?.map_or(0, |v| v.value());
    table.insert(key, before.saturating_add(booking.cents))?;
    let old: Vec<u32> = table
        .range((user, 0)..(user, booking.first_kept_day()))?
        .filter_map(|entry| entry.ok().map(|(key, _)| key.value().1))
        .collect();
    for day in old {
        table.remove((user, day))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Username {
        Username::new(name).unwrap()
    }

    fn booking(cents: u64, day: u32) -> Booking {
        Booking {
            user: user("amy"),
            day: Day(day),
            cents,
            keep_days: 10,
            device: DeviceId(1),
            actor: Actor::SYSTEM,
            at: Timestamp(0),
            detail: String::new(),
        }
    }

    /// Withdraws `cents` on `day` if the day's total stays within `limit`.
    fn withdraw(ledger: &Ledger, cents: u64, day: u32, limit: u64) -> Withdrawn {
        ledger.decide(&user("amy"), Day(day.saturating_sub(4)), Day(day), |w| {
            let fits = w.today + cents <= limit;
            (w, fits.then_some(cents))
        })
    }

    #[test]
    fn a_booking_counts_at_once_and_only_inside_the_window() {
        let ledger = Ledger::default();
        assert_eq!(withdraw(&ledger, 30, 100, 100), Withdrawn::default());
        assert_eq!(
            withdraw(&ledger, 50, 100, 100),
            Withdrawn {
                today: 30,
                five_days: 30
            }
        );
        // 80 booked: 30 more does not fit, and is not booked.
        assert_eq!(withdraw(&ledger, 30, 100, 100).today, 80);
        assert_eq!(withdraw(&ledger, 0, 100, 100).today, 80);
        // Two days later: today is empty, the window still holds day 100.
        assert_eq!(
            withdraw(&ledger, 0, 102, 100),
            Withdrawn {
                today: 0,
                five_days: 80
            }
        );
        // Out of the window.
        assert_eq!(withdraw(&ledger, 0, 105, 100), Withdrawn::default());
    }

    #[test]
    fn a_failed_commit_takes_its_booking_back_and_a_durable_one_forgets_old_days() {
        let ledger = Ledger::default();
        withdraw(&ledger, 30, 100, 100);
        withdraw(&ledger, 50, 100, 100);
        ledger.settle(&booking(50, 100), false);
        assert_eq!(withdraw(&ledger, 0, 100, 100).today, 30);
        ledger.settle(&booking(30, 100), false);
        assert!(ledger.lock().is_empty(), "nothing left is nothing kept");

        withdraw(&ledger, 10, 100, 100);
        withdraw(&ledger, 20, 111, 100);
        ledger.settle(&booking(20, 111), true);
        let days = ledger.lock();
        assert_eq!(days.get(&user("amy")).unwrap(), &vec![(Day(111), 20)]);
    }
}
