//! IB Key push approval ("seamless authentication"): phones subscribe with
//! a proof of their device key, a login asks (`Push`), the phone approves
//! with the number the login shows or denies, and the gateway learns the
//! verdict (`AwaitPush`).
//!
//! A waiting gateway costs an entry in its push session, not a task: the
//! verdict is written to the gateway's stream when the phone answers or the
//! push expires (the tick that expires pushes runs every 100 ms).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};

use rand::{CryptoRng, RngExt};

use super::{Caller, Engine, Outcome, Sink, StreamId};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, PushId, Username};
use crate::otp::push::{self, Signature};
use crate::profile::DeviceKind;
use crate::ratelimit::Decision;
use crate::store::{Device, FailureState};
use crate::sync::{Mutex, MutexGuard};
use crate::wire::{ErrorCode, Reply, Response, Verdict};

/// A subscribed phone, for one device.
struct PhoneLink {
    connection: u64,
    stream: StreamId,
    request: u64,
    sink: Arc<dyn Sink>,
}

struct PushSession {
    user: Username,
    device: DeviceId,
    match_number: u8,
    expires_at: Timestamp,
    /// Set when the phone answered; kept until a gateway collects it.
    verdict: Option<Verdict>,
    /// The gateway stream and request waiting for the verdict. One only:
    /// a verdict is handed out once.
    waiter: Option<(Arc<dyn Sink>, u64)>,
}

#[derive(Default)]
struct Sessions {
    pushes: HashMap<PushId, PushSession>,
    /// Unanswered pushes per user.
    pending: HashMap<Username, u8>,
}

impl Sessions {
    /// Removes push `id`, settling the user's count if it was unanswered;
    /// its waiting gateway, if any, for the caller to tell.
    fn forget(&mut self, id: PushId) -> Option<(Arc<dyn Sink>, u64)> {
        let session = self.pushes.remove(&id)?;
        if session.verdict.is_none() {
            self.settle(&session.user);
        }
        session.waiter
    }

    fn settle(&mut self, user: &Username) {
        if let Some(count) = self.pending.get_mut(user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.pending.remove(user);
            }
        }
    }
}

/// Push sessions and the phones subscribed for devices. The locks are
/// `crate::sync`'s, so the loom models explore them.
pub(super) struct PushTable {
    sessions: Mutex<Sessions>,
    phones: Mutex<HashMap<DeviceId, PhoneLink>>,
}

impl PushTable {
    pub(super) fn new() -> Self {
        Self {
            sessions: Mutex::new(Sessions::default()),
            phones: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn phones(&self) -> MutexGuard<'_, HashMap<DeviceId, PhoneLink>> {
        self.phones.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn pending(&self) -> usize {
        self.sessions().pushes.len()
    }

    pub(super) fn phones_connected(&self) -> usize {
        self.phones().len()
    }

    /// The stream's phones are gone; the devices they served.
    pub(super) fn stream_closed(&self, stream: StreamId) -> Vec<DeviceId> {
        let mut gone = Vec::new();
        self.phones().retain(|device, link| {
            let keep = link.stream != stream;
            if !keep {
                gone.push(*device);
            }
            keep
        });
        gone
    }

    /// Shows a push to the device's phone; false if none is subscribed here
    /// (or its stream has ended).
    pub(super) fn notify(
        &self,
        device: DeviceId,
        push: PushId,
        user: &Username,
        expires_in: std::time::Duration,
    ) -> bool {
        let phones = self.phones();
        phones.get(&device).is_some_and(|link| {
            let notice = Response {
                id: link.request,
                reply: Reply::PushNotice {
                    push,
                    user: user.clone(),
                    device,
                    expires_in,
                },
            };
            link.sink.deliver(notice.to_frame())
        })
    }

    /// Settles expired pushes: a waiting gateway learns `Expired`, and the
    /// push keeps it for the next to ask, once, until it is forgotten
    /// (`store::EXPIRED_GRACE`), as on the cluster.
    pub(super) fn sweep(&self, now: Timestamp) {
        let mut sessions = self.sessions();
        let expired: Vec<PushId> = sessions
            .pushes
            .iter()
            .filter(|(_, s)| s.expires_at <= now && s.verdict != Some(Verdict::Expired))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(session) = sessions.pushes.get_mut(&id) else {
                continue;
            };
            let waiter = if crate::store::forgotten(session.expires_at, now) {
                sessions.forget(id)
            } else {
                let waiter = session.waiter.take();
                if session.verdict.is_none() {
                    session.verdict = Some(Verdict::Expired);
                    let user = session.user.clone();
                    sessions.settle(&user);
                }
                waiter
            };
            if let Some((sink, request)) = waiter {
                answer(&sink, request, Verdict::Expired);
            }
        }
        sessions
            .pushes
            .retain(|_, s| !crate::store::forgotten(s.expires_at, now));
    }

    /// Tells every gateway waiting on a push that the server is stopping
    /// (`Error { ShuttingDown }`); the pushes stay, for another node or a
    /// restart cannot answer them anyway (they are ephemeral).
    pub(super) fn release_waiters(&self) {
        let mut sessions = self.sessions();
        for session in sessions.pushes.values_mut() {
            if let Some((sink, request)) = session.waiter.take() {
                shutting_down(&sink, request);
            }
        }
    }

    pub(super) fn linked_to(&self, device: DeviceId, connection: u64) -> bool {
        self.phones()
            .get(&device)
            .is_some_and(|link| link.connection == connection)
    }
}

/// Writes a verdict to a waiting gateway's stream.
pub(super) fn answer(sink: &Arc<dyn Sink>, request: u64, verdict: Verdict) {
    let frame = Response {
        id: request,
        reply: Reply::Verdict(verdict),
    }
    .to_frame();
    // A gateway whose stream has ended cannot be told; the push is spent.
    let _ = sink.deliver(frame);
}

/// Writes `Error { ShuttingDown }` to a waiting gateway's stream.
pub(super) fn shutting_down(sink: &Arc<dyn Sink>, request: u64) {
    let frame = Response {
        id: request,
        reply: Reply::error(ErrorCode::ShuttingDown, "the server is stopping"),
    }
    .to_frame();
    let _ = sink.deliver(frame);
}

/// The number the login page shows and the user types into the phone
/// (10–99): a blind approval guesses it once in 90.
pub(super) fn draw_match_number<R: CryptoRng + ?Sized>(rng: &mut R) -> u8 {
    rng.random_range(10..100)
}

/// What the phone answered to a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PushAnswer {
    /// "This was not me."
    Denied,
    /// An approval: whether its number and signature were right.
    Approved { right: bool },
}

/// What a phone's answer decides, on either store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PushDecision {
    /// `None`: accepted (the caller names the user and device).
    pub refused: Option<Verdict>,
    /// The device's failure state changed (to persist).
    pub failures_changed: bool,
    /// The answer started a lockout.
    pub locked: bool,
}

/// Judges a phone's answer against the device's `failures` at `now`,
/// changing them as the rules say: a right approval clears them; a wrong
/// number, a bad signature or "not me" counts as a wrong answer (a denied
/// push is someone else's login attempt, and a phone that denies every
/// push is the owner saying so) — except while the device is locked, when
/// nothing counts, as for challenges.
pub(super) fn decide_push(
    lockout: &crate::config::LockoutConfig,
    failures: &mut FailureState,
    answer: PushAnswer,
    now: Timestamp,
) -> PushDecision {
    let locked_now = super::rules::lockout::locked(failures, now).is_some();
    let unchanged = |refused| PushDecision {
        refused,
        failures_changed: false,
        locked: false,
    };
    match answer {
        PushAnswer::Denied if locked_now => unchanged(Some(Verdict::Denied)),
        PushAnswer::Approved { .. } if locked_now => unchanged(Some(Verdict::LockedOut {
            retry_after: failures.locked_for(now),
        })),
        PushAnswer::Approved { right: true } => {
            let changed = *failures != FailureState::default();
            *failures = FailureState::default();
            PushDecision {
                refused: None,
                failures_changed: changed,
                locked: false,
            }
        }
        PushAnswer::Approved { right: false } | PushAnswer::Denied => {
            let lock = super::rules::lockout::next_failure(lockout, failures, now);
            let refused = match (answer, lock) {
                (PushAnswer::Denied, _) => Verdict::Denied,
                (_, Some(retry_after)) => Verdict::LockedOut { retry_after },
                (_, None) => Verdict::Rejected { attempts_left: 0 },
            };
            PushDecision {
                refused: Some(refused),
                failures_changed: true,
                locked: lock.is_some(),
            }
        }
    }
}

impl Engine {
    /// Counts a settled answer, on either store: the lockout it caused, how
    /// long the phone took (`sls_push_answer_seconds`: the push's lifetime
    /// less what was left of it), and a "not me" (`sls_push_denied_total`,
    /// and a security event).
    pub(super) fn count_answer(
        &self,
        decision: &PushDecision,
        (user, device): (&Username, DeviceId),
        expires_at: Timestamp,
        now: Timestamp,
    ) {
        if decision.locked {
            self.count_lockout(user, device, now);
        }
        let left = std::time::Duration::from_millis(expires_at.0.saturating_sub(now.0));
        metrics::histogram!(crate::metrics::PUSH_ANSWER_SECONDS)
            .record(self.config().push.ttl.saturating_sub(left).as_secs_f64());
        count_denied(decision, (user, device), now);
    }
}

/// Counts a "not me" (`sls_push_denied_total`, and a security event).
fn count_denied(decision: &PushDecision, (user, device): (&Username, DeviceId), now: Timestamp) {
    if decision.refused == Some(Verdict::Denied) {
        metrics::counter!(crate::metrics::PUSH_DENIED).increment(1);
        let denied = crate::events::Outcome::Failure;
        crate::events::emit(|| {
            crate::events::Event::new(
                now,
                "push-denied",
                crate::events::Category::Authentication,
                denied,
            )
            .user(user)
            .device(device)
            .reason("the phone's holder answered that the login was not theirs")
        });
    }
}

/// The one refusal of a subscription whose proof does not verify, whether
/// or not the device exists.
const BAD_SUBSCRIBE_PROOF: &str = "the proof does not verify for this device";

impl Engine {
    /// Whether a reply is the refusal of a subscription's proof (what the
    /// server's per-connection limit of failed proofs counts).
    pub fn is_bad_proof(reply: &Reply) -> bool {
        matches!(reply, Reply::Error { code: ErrorCode::Forbidden, message, .. } if message == BAD_SUBSCRIBE_PROOF)
    }

    pub(super) fn phone_subscribe(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        proof: &Signature,
    ) -> Reply {
        let key = self
            .registry
            .device(device)
            .filter(|d| d.kind == DeviceKind::IbKey)
            .and_then(|d| d.push_key());
        match self.subscribe_phone(caller, device, key, proof) {
            Ok(()) => Reply::Subscribed,
            Err(refusal) => refusal,
        }
    }

    /// Links the caller's stream to `device` once its proof verifies with
    /// the device's push key (`None`: the device has none).
    pub(super) fn subscribe_phone(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        key: Option<push::PushKey>,
        proof: &Signature,
    ) -> Result<(), Reply> {
        let Some(sink) = caller.sink else {
            return Err(Reply::error(
                ErrorCode::InvalidArgument,
                "subscribing needs a stream",
            ));
        };
        // A device that is not an IB Key with a push key is answered as a
        // bad proof is, after the same Ed25519 work against a key nobody
        // holds: neither the answer nor its time tells which device ids
        // are IB Keys.
        let (key, exists) = match key {
            Some(key) => (key, true),
            None => (self.decoy_push_key, false),
        };
        let verified = key.verifies(&push::subscribe_message(caller.binding, device), proof);
        if !(verified && exists) {
            metrics::counter!(crate::metrics::BAD_PROOFS, "operation" => "phone_subscribe")
                .increment(1);
            return Err(Reply::error(ErrorCode::Forbidden, BAD_SUBSCRIBE_PROOF));
        }
        // The newest subscription wins: one phone per device.
        self.pushes.phones().insert(
            device,
            PhoneLink {
                connection: caller.connection,
                stream: caller.stream,
                request: caller.request,
                sink: Arc::clone(sink),
            },
        );
        Ok(())
    }

    pub(super) fn push<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        if let Decision::Deny { retry_after } = self.issuance(user, now) {
            return Reply::rate_limited(
                retry_after,
                "too many challenges and pushes for this user",
            );
        }
        let device = self
            .login_device(user, device, now)
            .filter(|d| d.kind == DeviceKind::IbKey)
            .filter(|d| d.push_key().is_some());
        let Some(device) = device else {
            return Reply::error(
                ErrorCode::NotFound,
                "no IB Key device with push for this user",
            );
        };
        let failures = *device.failures();
        if let Some(retry_after) = super::rules::lockout::locked(&failures, now) {
            return Reply::rate_limited(retry_after, "the device is locked out");
        }
        let push_config = &self.config().push;
        let mut sessions = self.pushes.sessions();
        let limit = push_config.pending_per_user;
        // The count is kept as pushes come and go; when it is at the limit,
        // pushes that expired since the last sweep are not held against
        // the user.
        if sessions.pending.get(user).copied().unwrap_or(0) >= limit {
            let live: Vec<Timestamp> = sessions
                .pushes
                .values()
                .filter(|s| &s.user == user && s.verdict.is_none() && s.expires_at > now)
                .map(|s| s.expires_at)
                .collect();
            if live.len() >= usize::from(limit) {
                let soonest = live.into_iter().min().unwrap_or(now);
                return Reply::rate_limited(
                    now.until(soonest),
                    "too many unanswered pushes for this user",
                );
            }
        }
        if sessions.pushes.len() >= push_config.capacity {
            // Expired pushes kept to say `Expired` make room first: a live
            // push matters more than a late answer's precision.
            let expired: Vec<PushId> = sessions
                .pushes
                .iter()
                .filter(|(_, s)| s.expires_at <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some((sink, request)) = sessions.forget(id) {
                    answer(&sink, request, Verdict::Expired);
                }
            }
        }
        if sessions.pushes.len() >= push_config.capacity {
            return Reply::error(ErrorCode::Busy, "the push table is full");
        }
        let mut id = PushId(rng.next_u64());
        while sessions.pushes.contains_key(&id) {
            id = PushId(rng.next_u64());
        }
        let match_number = draw_match_number(rng);

        let delivered = self.pushes.notify(device.id, id, user, push_config.ttl);
        if !delivered {
            return Reply::error(
                ErrorCode::PhoneUnreachable,
                "the phone is not connected; use challenge/response",
            );
        }
        sessions.pushes.insert(
            id,
            PushSession {
                user: user.clone(),
                device: device.id,
                match_number,
                expires_at: now.plus(push_config.ttl),
                verdict: None,
                waiter: None,
            },
        );
        let pending = sessions.pending.entry(user.clone()).or_default();
        *pending = pending.saturating_add(1);
        self.counters.pushes.fetch_add(1, Relaxed);
        Reply::PushSent {
            push: id,
            match_number,
            expires_in: push_config.ttl,
        }
    }

    /// `None`: the verdict will be written to the caller's stream later.
    pub(super) fn await_push(
        &self,
        caller: &Caller<'_>,
        id: PushId,
        now: Timestamp,
    ) -> Option<Reply> {
        let mut sessions = self.pushes.sessions();
        // Expired longer ago than either store remembers: as if swept.
        // (Its waiter, if any, was told at expiry by the sweep.)
        if sessions
            .pushes
            .get(&id)
            .is_some_and(|s| crate::store::forgotten(s.expires_at, now))
        {
            sessions.forget(id);
        }
        let Some(session) = sessions.pushes.get_mut(&id) else {
            return Some(Reply::Verdict(Verdict::UnknownChallenge));
        };
        if let Some(verdict) = session.verdict.take() {
            sessions.pushes.remove(&id);
            return Some(Reply::Verdict(verdict));
        }
        if session.expires_at <= now {
            let user = session.user.clone();
            sessions.pushes.remove(&id);
            sessions.settle(&user);
            return Some(Reply::Verdict(Verdict::Expired));
        }
        let Some(sink) = caller.sink else {
            return Some(Reply::error(
                ErrorCode::InvalidArgument,
                "waiting on a push needs a stream",
            ));
        };
        // A waiter whose stream has gone may be replaced (a gateway that
        // reconnected); a live one may not.
        if session.waiter.as_ref().is_some_and(|(s, _)| !s.is_closed()) {
            return Some(Reply::error(
                ErrorCode::Busy,
                "another caller already waits on this push",
            ));
        }
        session.waiter = Some((Arc::clone(sink), caller.request));
        None
    }

    /// The phone's answer: `chosen` with a proof approves, `None` denies;
    /// the signature checked here, on the caller's thread.
    pub(super) fn answer_push(
        &self,
        caller: &Caller<'_>,
        id: PushId,
        approval: Option<(u8, &Signature)>,
        now: Timestamp,
    ) -> Outcome {
        let answering = match self.open_answer(caller, id, now) {
            Ok(answering) => answering,
            Err(refusal) => return refusal.into(),
        };
        let signed = approval.map(|(chosen, proof)| {
            approval_signed(&answering.device, id, chosen, proof)
                .is_some_and(|signed| signed.verifies())
        });
        self.settle_answer(id, answering, approval, signed, now)
    }

    /// `Approve` from a server's stream: as [`Engine::answer_push`], with
    /// the signature checked in a batch with the approvals arriving beside
    /// it (`signatures`), off the threads that answer logins.
    pub async fn approve(
        &self,
        caller: &Caller<'_>,
        id: PushId,
        chosen: u8,
        proof: &Signature,
        now: Timestamp,
    ) -> Outcome {
        let answering = match self.open_answer(caller, id, now) {
            Ok(answering) => answering,
            Err(refusal) => return refusal.into(),
        };
        let signed = match self
            .check_approval(&answering.device, id, chosen, proof)
            .await
        {
            Ok(signed) => signed,
            Err(refusal) => return refusal.into(),
        };
        self.settle_answer(id, answering, Some((chosen, proof)), Some(signed), now)
    }

    /// Whether `proof` is `device`'s signature of approving `id` with
    /// `chosen`, checked in a batch; a full queue is refused Busy. The
    /// cluster's approvals are checked here too.
    pub(super) async fn check_approval(
        &self,
        device: &Device,
        id: PushId,
        chosen: u8,
        proof: &Signature,
    ) -> Result<bool, Reply> {
        let Some(signed) = approval_signed(device, id, chosen, proof) else {
            return Ok(false);
        };
        self.signatures
            .check(signed)
            .await
            .map_err(|unchecked| Reply::error(ErrorCode::Busy, unchecked.to_string()))
    }

    /// The push `id` checked before its answer is: open, unanswered, and
    /// its device's phone subscribed on this connection. Checked under the
    /// lock, the signature outside it (an Ed25519 verification is the
    /// costliest step of a push), then the push is settled under the lock
    /// again ([`Engine::settle_answer`]): the first answer wins.
    fn open_answer(
        &self,
        caller: &Caller<'_>,
        id: PushId,
        now: Timestamp,
    ) -> Result<Answering, Reply> {
        let (device, match_number) = {
            let sessions = self.pushes.sessions();
            let Some(session) = sessions.pushes.get(&id) else {
                return Err(Reply::error(ErrorCode::NotFound, "no such push"));
            };
            if session.verdict.is_some() || session.expires_at <= now {
                return Err(Reply::error(
                    ErrorCode::NotFound,
                    "the push was answered or expired",
                ));
            }
            if !self.pushes.linked_to(session.device, caller.connection) {
                return Err(Reply::error(
                    ErrorCode::Forbidden,
                    "this connection has not subscribed for the push's device",
                ));
            }
            (session.device, session.match_number)
        };
        let Some(device) = self.registry.device(device) else {
            return Err(Reply::error(ErrorCode::NotFound, "the device was revoked"));
        };
        Ok(Answering {
            device,
            match_number,
        })
    }

    /// Settles the push with the phone's answer, `signed` saying whether
    /// an approval's proof verified.
    fn settle_answer(
        &self,
        id: PushId,
        answering: Answering,
        approval: Option<(u8, &Signature)>,
        signed: Option<bool>,
        now: Timestamp,
    ) -> Outcome {
        let Answering {
            device,
            match_number,
        } = answering;
        let mut sessions = self.pushes.sessions();
        let Some(session) = sessions
            .pushes
            .get_mut(&id)
            .filter(|s| s.verdict.is_none() && s.expires_at > now)
        else {
            return Reply::error(ErrorCode::NotFound, "the push was answered or expired").into();
        };
        let given = match (approval, signed) {
            (Some((chosen, _)), Some(signed)) => {
                if !signed {
                    metrics::counter!(crate::metrics::BAD_PROOFS, "operation" => "approve")
                        .increment(1);
                }
                PushAnswer::Approved {
                    right: signed & (chosen == match_number),
                }
            }
            _ => PushAnswer::Denied,
        };
        let decision = decide_push(&self.config().lockout, &mut device.failures(), given, now);
        self.count_answer(
            &decision,
            (&session.user, device.id),
            session.expires_at,
            now,
        );
        let persist = decision.failures_changed.then_some(device.id);
        let verdict = decision.refused.unwrap_or_else(|| Verdict::Accepted {
            user: session.user.clone(),
            device: device.id,
            kind: device.kind,
        });
        let user = session.user.clone();
        match session.waiter.take() {
            Some((sink, request)) if !sink.is_closed() => {
                sessions.pushes.remove(&id);
                answer(&sink, request, verdict.clone());
            }
            _ => session.verdict = Some(verdict.clone()),
        }
        sessions.settle(&user);
        let reply = match approval {
            None => Reply::Done,
            Some(_) => Reply::Verdict(verdict),
        };
        Outcome {
            reply,
            persist,
            booking: None,
        }
    }
}

/// A push whose answer is being checked, and its device.
struct Answering {
    device: Arc<Device>,
    match_number: u8,
}

/// What `device`'s phone signs to approve `id` with `chosen`, and the
/// key it must verify under; `None` for a device without a push key.
fn approval_signed(
    device: &Device,
    id: PushId,
    chosen: u8,
    proof: &Signature,
) -> Option<push::SignedMessage> {
    Some(push::SignedMessage {
        key: device.push_key()?,
        message: push::approve_message(id, device.id, chosen),
        signature: *proof,
    })
}
