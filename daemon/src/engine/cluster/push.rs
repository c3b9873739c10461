//! IB Key push approval on the shared store.
//!
//! A phone subscribes on any node, which records in the store that the
//! device's phone is on it (withdrawn when the phone leaves; worth nothing
//! once the node stops saying it is alive, which it renews every second,
//! good for three). A push asked on any node is a
//! versioned session in the store; its notice is handed to the phone's
//! node (that node's inbox in the store, taken every relay round). The
//! phone answers on its node, which checks the number and the Ed25519
//! proof and settles the session together with the device's failure state
//! (the first answer wins). `AwaitPush` on any node takes a settled
//! verdict at once, or registers a local waiter and names its node in the
//! session; an answer that finds a waiter named takes the verdict for it
//! in the same write and hands it to that node's inbox. Either way taking
//! the verdict ends the session, so it is handed out once. (A gateway
//! whose node dies while it waits learns nothing; it asks again.)

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use rand::CryptoRng;

use super::super::push::{PushAnswer, answer, decide_push, draw_match_number};
use super::super::rules::verify::accepted_by;
use super::super::{Caller, Engine, Sink};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, PushId, Username};
use crate::otp::push::Signature;
use crate::profile::DeviceKind;
use crate::store::EXPIRED_GRACE;
use crate::store::StoreError;
use crate::store::cluster::redis::Op;
use crate::store::cluster::{ClusterStore, Handle, QueueWaiter, UserRecord, failure_state};
use crate::wire::codec::{Put, Reader};
use crate::wire::{ErrorCode, Reply, Response, Verdict};

/// How long a node's word that it is alive lasts (its phones' links count
/// only while it does); renewed every second.
const NODE_ALIVE: Duration = Duration::from_secs(3);

const NOTICE: u8 = 1;
const VERDICT: u8 = 2;

/// A gateway stream waiting here for a push's verdict.
pub(in crate::engine) struct Waiter {
    sink: Arc<dyn Sink>,
    request: u64,
    expires_at: Timestamp,
}

/// The gateways waiting on this node, by push.
pub(in crate::engine) type Waiters = HashMap<PushId, Waiter>;

/// A verdict in its wire form: one codec, already tested.
fn verdict_frame(verdict: &Verdict) -> Vec<u8> {
    Response {
        id: 0,
        reply: Reply::Verdict(verdict.clone()),
    }
    .to_frame()
}

fn verdict_from_frame(frame: &[u8]) -> Option<Verdict> {
    let (body, _) = crate::wire::split_frame(frame, crate::wire::MAX_FRAME_LIMIT)
        .ok()
        .flatten()?;
    match Response::decode(body).ok()?.reply {
        Reply::Verdict(verdict) => Some(verdict),
        _ => None,
    }
}

/// A push session as the store keeps it.
struct SharedPush {
    user: Username,
    device: DeviceId,
    match_number: u8,
    expires_at: Timestamp,
    verdict: Option<Verdict>,
    /// The node a gateway waits on, if any.
    waiter: Option<String>,
}

impl SharedPush {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.put_bytes(self.user.as_str().as_bytes());
        out.put_u64(self.device.0);
        out.put_u8(self.match_number);
        out.put_u64(self.expires_at.0);
        out.put_bytes(&self.verdict.as_ref().map_or_else(Vec::new, verdict_frame));
        out.put_bytes(self.waiter.as_deref().unwrap_or("").as_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let user = Username::new(r.str("user").ok()?).ok()?;
        let device = DeviceId(r.u64("device").ok()?);
        let match_number = r.u8("match number").ok()?;
        let expires_at = Timestamp(r.u64("expires at").ok()?);
        let verdict = match r.bytes("verdict").ok()? {
            [] => None,
            frame => Some(verdict_from_frame(frame)?),
        };
        let waiter = match r.str("waiter").ok()? {
            "" => None,
            node => Some(node.to_owned()),
        };
        r.finish().ok()?;
        Some(Self {
            user,
            device,
            match_number,
            expires_at,
            verdict,
            waiter,
        })
    }
}

/// What one node hands another through the store.
enum Handed {
    /// Show this push on the device's phone.
    Notice {
        push: PushId,
        user: Username,
        device: DeviceId,
        expires_at: Timestamp,
    },
    /// The verdict for the gateway waiting here on the push (taken from
    /// the session as it was settled: handed out once).
    Verdict(PushId, Verdict),
}

impl Handed {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Self::Notice {
                push,
                user,
                device,
                expires_at,
            } => {
                out.put_u8(NOTICE);
                out.put_u64(push.0);
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
                out.put_u64(expires_at.0);
            }
            Self::Verdict(push, verdict) => {
                out.put_u8(VERDICT);
                out.put_u64(push.0);
                out.put_bytes(&verdict_frame(verdict));
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let handed = match r.u8("kind").ok()? {
            NOTICE => Self::Notice {
                push: PushId(r.u64("push").ok()?),
                user: Username::new(r.str("user").ok()?).ok()?,
                device: DeviceId(r.u64("device").ok()?),
                expires_at: Timestamp(r.u64("expires at").ok()?),
            },
            VERDICT => Self::Verdict(
                PushId(r.u64("push").ok()?),
                verdict_from_frame(r.bytes("verdict").ok()?)?,
            ),
            _ => return None,
        };
        r.finish().ok()?;
        Some(handed)
    }
}

/// A push session written back at `now`, kept until it is forgotten (a
/// minute past its expiry, however late the write).
fn kept(session: &SharedPush, now: Timestamp) -> Op {
    let until = session.expires_at.plus(EXPIRED_GRACE);
    Op::Set(session.encode(), Some(now.until(until)))
}

/// An ended session (empty, so its version keeps counting).
fn ended() -> Op {
    Op::Set(Vec::new(), Some(EXPIRED_GRACE))
}

/// A push session and its version; `None` if there is none (or it ended).
async fn read_push(
    store: &ClusterStore,
    user: &Username,
    id: PushId,
) -> Result<Option<(u64, SharedPush)>, StoreError> {
    let records = store.read_user(user, &[UserRecord::Push(id)]).await?;
    Ok(records.first().and_then(|record| {
        let session = record.value.as_deref().and_then(SharedPush::decode)?;
        Some((record.version, session))
    }))
}

impl Engine {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.push_waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) async fn cluster_phone_subscribe(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        device: DeviceId,
        proof: &Signature,
    ) -> Result<Reply, StoreError> {
        let key = store
            .device(device)
            .await?
            .filter(|d| d.kind == DeviceKind::IbKey)
            .and_then(|d| d.push_key());
        if let Err(refusal) = self.subscribe_phone(caller, device, key, proof) {
            return Ok(refusal);
        }
        // Alive first, so the link never points to a node not yet alive.
        store.node_alive(&self.node, NODE_ALIVE).await?;
        store.link_phone(device, &self.node).await?;
        Ok(Reply::Subscribed)
    }

    pub(super) async fn cluster_push<R: CryptoRng + ?Sized>(
        &self,
        store: &ClusterStore,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let why = "too many challenges and pushes for this user";
        if let Some(refusal) = self.cluster_issuance(store, user, now, why).await? {
            return Ok(refusal);
        }
        let device = self
            .cluster_login_device(store, user, device, now)
            .await?
            .filter(|d| d.kind == DeviceKind::IbKey)
            .filter(|d| d.push_key().is_some());
        let Some(device) = device else {
            return Ok(Reply::error(
                ErrorCode::NotFound,
                "no IB Key device with push for this user",
            ));
        };
        let (_, failures) = store.failures(user, device.id).await?;
        if let Some(retry_after) = super::super::rules::lockout::locked(&failures, now) {
            return Ok(Reply::rate_limited(retry_after, "the device is locked out"));
        }
        let Some(node) = store.phone_node(device.id).await? else {
            return Ok(Reply::error(
                ErrorCode::PhoneUnreachable,
                "the phone is not connected; use challenge/response",
            ));
        };
        let ttl = self.config().push.ttl;
        let expires_at = now.plus(ttl);
        let id = PushId(rng.next_u64());
        let limit = self.config().push.pending_per_user;
        if let Err(soonest) = store.hold_push(user, id, limit, now, expires_at).await? {
            return Ok(Reply::rate_limited(
                now.until(soonest),
                "too many unanswered pushes for this user",
            ));
        }
        let match_number = draw_match_number(rng);
        let session = SharedPush {
            user: user.clone(),
            device: device.id,
            match_number,
            expires_at,
            verdict: None,
            waiter: None,
        };
        let claimed = store
            .claim_handle(Handle::Push(id), user, Some(device.id), ttl)
            .await?;
        let opened = (UserRecord::Push(id), 0, kept(&session, now));
        if !claimed || !store.write_user(user, &[opened], false).await? {
            store.release_push(user, id).await?;
            return Ok(Reply::error(
                ErrorCode::Busy,
                "could not allocate a push id",
            ));
        }
        let notice = Handed::Notice {
            push: id,
            user: user.clone(),
            device: device.id,
            expires_at,
        };
        store.send_to_node(&node, &notice.encode()).await?;
        self.counters.pushes.fetch_add(1, Relaxed);
        Ok(Reply::PushSent {
            push: id,
            match_number,
            expires_in: ttl,
        })
    }

    /// `None`: the verdict will be written to the caller's stream later.
    pub(super) async fn cluster_await_push(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        id: PushId,
        now: Timestamp,
    ) -> Result<Option<Reply>, StoreError> {
        let Some((user, _)) = store.handle_owner(Handle::Push(id)).await? else {
            return Ok(Some(Reply::Verdict(Verdict::UnknownChallenge)));
        };
        let record_of = UserRecord::Push(id);
        let mut rounds = store.rounds();
        while rounds.next().await {
            let Some((version, mut session)) = read_push(store, &user, id).await? else {
                return Ok(Some(Reply::Verdict(Verdict::UnknownChallenge)));
            };
            if let Some(verdict) = session.verdict.take() {
                // Taking the verdict ends the session: it is handed out once.
                if !store
                    .write_user(&user, &[(record_of, version, ended())], true)
                    .await?
                {
                    continue;
                }
                return Ok(Some(Reply::Verdict(verdict)));
            }
            if session.expires_at <= now {
                // Told once: if the session changed meanwhile, decide again.
                if !store
                    .write_user(&user, &[(record_of, version, ended())], true)
                    .await?
                {
                    continue;
                }
                store.release_push(&session.user, id).await?;
                return Ok(Some(Reply::Verdict(Verdict::Expired)));
            }
            let Some(sink) = caller.sink else {
                return Ok(Some(Reply::error(
                    ErrorCode::InvalidArgument,
                    "waiting on a push needs a stream",
                )));
            };
            {
                let mut waiters = self.waiters();
                // A waiter whose stream has gone may be replaced (a gateway
                // that reconnected); a live one may not.
                if waiters.get(&id).is_some_and(|w| !w.sink.is_closed()) {
                    return Ok(Some(Reply::error(
                        ErrorCode::Busy,
                        "another caller already waits on this push",
                    )));
                }
                // Registered before the session names this node, so word of
                // an answer can never arrive before the waiter.
                waiters.insert(
                    id,
                    Waiter {
                        sink: Arc::clone(sink),
                        request: caller.request,
                        expires_at: session.expires_at,
                    },
                );
            }
            session.waiter = Some(self.node.clone());
            let named = (record_of, version, kept(&session, now));
            if store.write_user(&user, &[named], true).await? {
                return Ok(None);
            }
            self.waiters().remove(&id);
        }
        Ok(Some(Reply::error(
            ErrorCode::Busy,
            "the push kept changing; retry",
        )))
    }

    /// The phone's answer: `chosen` with a proof approves, `None` denies.
    pub(super) async fn cluster_answer_push(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        id: PushId,
        approval: Option<(u8, &Signature)>,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        let Some((user, Some(device_id))) = store.handle_owner(Handle::Push(id)).await? else {
            return Ok(Reply::error(ErrorCode::NotFound, "no such push"));
        };
        if !self.pushes.linked_to(device_id, caller.connection) {
            return Ok(Reply::error(
                ErrorCode::Forbidden,
                "this connection has not subscribed for the push's device",
            ));
        }
        let Some(device) = store.device(device_id).await? else {
            return Ok(Reply::error(ErrorCode::NotFound, "the device was revoked"));
        };
        // The Ed25519 check, the costliest step, once, outside the rounds,
        // in a batch with the approvals arriving beside it.
        let signed = match approval {
            Some((chosen, proof)) => match self.check_approval(&device, id, chosen, proof).await {
                Ok(signed) => Some(signed),
                Err(refusal) => return Ok(refusal),
            },
            None => None,
        };
        if signed == Some(false) {
            metrics::counter!(crate::metrics::BAD_PROOFS, "operation" => "approve").increment(1);
        }
        let record_of = UserRecord::Push(id);
        let failures_of = UserRecord::Failures(device_id);
        let mut rounds = store.rounds();
        while rounds.next().await {
            // The push and the device's failure state, read and settled
            // together: the first answer wins, and a wrong one counts
            // toward the lockout only if it is that answer.
            let records = store.read_user(&user, &[record_of, failures_of]).await?;
            let [record, failures_record] = records.as_slice() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let Some(mut session) = record.value.as_deref().and_then(SharedPush::decode) else {
                return Ok(Reply::error(ErrorCode::NotFound, "no such push"));
            };
            if session.verdict.is_some() || session.expires_at <= now {
                return Ok(Reply::error(
                    ErrorCode::NotFound,
                    "the push was answered or expired",
                ));
            }
            let mut failures = failure_state(device_id, failures_record)?;
            let given = match (approval, signed) {
                (Some((chosen, _)), Some(signed)) => PushAnswer::Approved {
                    right: signed & (chosen == session.match_number),
                },
                _ => PushAnswer::Denied,
            };
            let decision = decide_push(&self.config().lockout, &mut failures, given, now);
            let failures_change = if decision.failures_changed {
                Op::Set(failures.encode(), None)
            } else {
                Op::Keep
            };
            let verdict = decision
                .refused
                .clone()
                .unwrap_or_else(|| accepted_by(&session.user, &device));
            // With a gateway waiting, the verdict is taken for it here, in
            // the same write (the session ends), and handed to its node;
            // otherwise it stays in the session for an `AwaitPush` to take.
            let waiter = session.waiter.take();
            let session_change = match &waiter {
                Some(_) => ended(),
                None => {
                    session.verdict = Some(verdict.clone());
                    kept(&session, now)
                }
            };
            let changes = [
                (record_of, record.version, session_change),
                (failures_of, failures_record.version, failures_change),
            ];
            if !store.write_user(&user, &changes, true).await? {
                continue;
            }
            self.count_answer(&decision, (&user, device_id), session.expires_at, now);
            store.release_push(&session.user, id).await?;
            if let Some(node) = waiter {
                let handed = Handed::Verdict(id, verdict.clone());
                store.send_to_node(&node, &handed.encode()).await?;
            }
            return Ok(match approval {
                None => Reply::Done,
                Some(_) => Reply::Verdict(verdict),
            });
        }
        Ok(Reply::error(
            ErrorCode::Busy,
            "the push kept changing; retry",
        ))
    }

    /// This node's part of push approval in a relay round: say it is alive
    /// (every `renew` round) and withdraw the links of phones that left.
    pub(super) async fn relay_pushes(
        &self,
        store: &ClusterStore,
        renew: bool,
        gone: Vec<DeviceId>,
    ) -> Result<(), StoreError> {
        for device in gone {
            store.unlink_phone(device, &self.node).await?;
        }
        if renew {
            store.node_alive(&self.node, NODE_ALIVE).await?;
        }
        Ok(())
    }

    /// On a cluster: waits up to `wait` on `waiter` (a connection of the
    /// calling task's own) for what other nodes hand this node — push
    /// notices for its phones, verdicts for the gateways waiting here —
    /// and acts on it at `clock()` (read once the wait is over). The server runs it in a loop: an idle node waits in
    /// Redis rather than asking a hundred times a second.
    pub async fn cluster_wait_inbox(
        &self,
        waiter: &QueueWaiter,
        wait: Duration,
        clock: impl FnOnce() -> Timestamp,
    ) -> Result<(), StoreError> {
        let Some(store) = &self.cluster else {
            return Ok(());
        };
        let handed = store.node_inbox(waiter, &self.node, 256, wait).await?;
        let now = clock();
        for item in handed {
            match Handed::decode(&item) {
                Some(Handed::Notice {
                    push,
                    user,
                    device,
                    expires_at,
                }) => {
                    // A phone that left meanwhile misses it; the push expires.
                    self.pushes
                        .notify(device, push, &user, now.until(expires_at));
                }
                Some(Handed::Verdict(push, verdict)) => {
                    // A gateway that left meanwhile cannot be told.
                    if let Some(waiter) = self.waiters().remove(&push) {
                        answer(&waiter.sink, waiter.request, verdict);
                    }
                }
                None => tracing::warn!("a handed item did not parse; dropped"),
            }
        }
        Ok(())
    }

    /// Tells gateways waiting here on pushes that expired.
    /// Tells every gateway waiting here that the server is stopping.
    pub(in crate::engine) fn release_cluster_waiters(&self) {
        let waiting: Vec<Waiter> = self.waiters().drain().map(|(_, w)| w).collect();
        for waiter in waiting {
            super::super::push::shutting_down(&waiter.sink, waiter.request);
        }
    }

    pub(in crate::engine) fn expire_waiters(&self, now: Timestamp) {
        let expired: Vec<Waiter> = {
            let mut waiters = self.waiters();
            let ids: Vec<PushId> = waiters
                .iter()
                .filter(|(_, w)| w.expires_at <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| waiters.remove(id)).collect()
        };
        for waiter in expired {
            answer(&waiter.sink, waiter.request, Verdict::Expired);
        }
    }
}
