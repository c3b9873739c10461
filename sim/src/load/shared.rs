//! What every task of a load run shares: the fleet as held, the recorder,
//! the lockouts the attackers saw, and the invariants' violations.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::wire::request::Answer;
use slsd::wire::{Reply, Verdict};
use tokio::sync::{Notify, Semaphore};

use super::{FlowMix, MAX_VIOLATIONS};
use crate::carrier::Inbox;
use crate::client::ClientError;
use crate::device::EmulatedDevice;
use crate::fleet::SmsNumber;
use crate::phone::Matcher;
use crate::report::{Op, Recorder};

/// A fleet member as the run holds them.
pub(crate) struct Holder {
    pub user: Username,
    pub devices: Vec<(DeviceId, EmulatedDevice)>,
    /// The verified number, for SMS logins.
    pub sms: Option<SmsNumber>,
    /// The IB Key device push logins use.
    pub push: Option<DeviceId>,
}

/// A lockout the attackers saw: the daemon said it was in force when
/// `seen` had passed, and it lasts at least `until`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenLock {
    pub seen: Instant,
    pub until: Instant,
}

/// What every task of a run shares.
pub(crate) struct Shared {
    pub start: Instant,
    pub deadline: Instant,
    pub members: Vec<Holder>,
    pub victims: Vec<usize>,
    /// Legitimate users with a verified number / with push, not in an SMS
    /// or push login now: one such login per user at a time, since a user
    /// has one live code and a bounded number of pending pushes. A login
    /// waits for a permit (there are as many as users), takes the
    /// longest-idle user and puts them back at the end.
    pub(super) sms_users: (Semaphore, Mutex<VecDeque<usize>>),
    pub(super) push_users: (Semaphore, Mutex<VecDeque<usize>>),
    /// Legitimate users not in a challenge login now, the same way: a
    /// device has one current challenge (asking again replaces it), so a
    /// user runs one challenge login at a time, as a person does.
    pub(super) login_users: (Semaphore, Mutex<VecDeque<usize>>),
    pub(super) inbox: Arc<Inbox>,
    pub(super) matcher: Arc<Matcher>,
    pub(super) flows: FlowMix,
    pub(super) recorders: Vec<Mutex<Recorder>>,
    /// Correct answers of finished logins, for replay attacks.
    pub observed: Mutex<VecDeque<(ChallengeId, Answer)>>,
    /// Counter values and time steps the victims' tokens and apps had
    /// accepted, for replays of used ones: (member, device index, factor).
    pub used_factors: Mutex<VecDeque<(usize, usize, u64)>>,
    /// Lockouts seen on the victims' devices.
    pub locks: Mutex<HashMap<DeviceId, SeenLock>>,
    pub(super) violations: Mutex<(usize, Vec<String>)>,
    pub(super) in_flight: AtomicUsize,
    pub(super) idle: Notify,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn record<T>(&self, part: usize, f: impl FnOnce(&mut Recorder) -> T) -> T {
        let index = part % self.recorders.len().max(1);
        match self.recorders.get(index) {
            Some(recorder) => f(&mut lock(recorder)),
            None => f(&mut Recorder::new(self.start)),
        }
    }

    pub fn violation(&self, text: String) {
        let mut v = lock(&self.violations);
        v.0 += 1;
        if v.1.len() < MAX_VIOLATIONS {
            v.1.push(text);
        }
    }

    /// A failed request of the legitimate load.
    pub(super) fn error(
        &self,
        part: usize,
        op: Op,
        result: &Result<Reply, ClientError>,
        at: Instant,
    ) {
        let kind = error_kind(op, result);
        self.record(part, |r| r.error(kind, at));
    }

    /// The lockout known for `device` at `at`, if any.
    pub fn locked_at(&self, device: DeviceId, at: Instant) -> Option<SeenLock> {
        lock(&self.locks)
            .get(&device)
            .copied()
            .filter(|l| l.until > at)
    }

    pub fn saw_lock(&self, device: DeviceId, sent: Instant, seen: Instant, retry: Duration) {
        // A device that waits for an operator says `Duration::MAX`: a
        // century is forever for a load run.
        const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
        // The daemon counts time in whole milliseconds (its clock read
        // truncated), so the time left it reports can be up to one more
        // than is really left: the least possible end is a millisecond
        // sooner.
        const CLOCK_GRAIN: Duration = Duration::from_millis(1);
        let until = sent + retry.min(FOREVER).saturating_sub(CLOCK_GRAIN);
        let mut locks = lock(&self.locks);
        let entry = locks.entry(device).or_insert(SeenLock { seen, until });
        if until > entry.until {
            *entry = SeenLock { seen, until };
        }
    }

    /// Checks an accept on `device` against the lockouts seen: an accept
    /// sent after a lockout was seen and answered before the lockout's
    /// least possible end happened while the device was locked.
    pub fn check_not_locked(&self, device: DeviceId, sent: Instant, got: Instant, who: &str) {
        if let Some(l) = self.locked_at(device, got)
            && sent > l.seen
        {
            self.violation(format!(
                "{who}: device {device} accepted an answer {:?} before the end of its lockout",
                l.until - got
            ));
        }
    }
}

/// `devices: RateLimited`, `verify: transport`, ...
pub(crate) fn error_kind(op: Op, result: &Result<Reply, ClientError>) -> String {
    let op = op.name();
    match result {
        Ok(Reply::Error { code, .. }) => format!("{op}: {code:?}"),
        Ok(_) => format!("{op}: unexpected reply"),
        Err(_) => format!("{op}: transport"),
    }
}

pub(crate) fn verdict_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Accepted { .. } => "accepted",
        Verdict::Rejected { .. } => "rejected",
        Verdict::Expired => "expired",
        Verdict::LockedOut { .. } => "locked_out",
        Verdict::Denied => "denied",
        Verdict::UnknownChallenge => "unknown_challenge",
    }
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
