//! SMS and voice codes, and the carrier channel, on the shared store.
//!
//! A user's code session is a versioned record every node reads and
//! changes by compare-and-swap, under the same rules as on the embedded
//! store (`CodeSession::may_send`, checks per code, lockout). The code is
//! derived from its id with a key every node shares (`sms_code_key`, made
//! once and kept sealed in the store), so any node can check it and a
//! resend or voice call repeats it.
//!
//! Bridges connect to any node. A send queues its message, sealed, on the
//! store; each node that has bridges takes queued messages every relay
//! round (`Engine::cluster_relay`, every few milliseconds) and hands them to
//! its own bridges with the usual failover. Delivery reports and failovers
//! are written back to the code's session, where `CodeStatus` reads them
//! on any node. A node with bridges says so in the store (renewed every
//! second, good for three), so a send with no bridge anywhere is refused
//! at once (`DeliveryUnavailable`).

use std::sync::PoisonError;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rand::CryptoRng;

use super::super::Engine;
use super::super::relay::{DispatchError, Outbound, StatusChange};
use super::super::sms::{CodeSession, message_text};
use super::Caller;
use crate::clock::Timestamp;
use crate::identity::{CodeId, MessageId, Username};
use crate::phone::Channel;
use crate::store::Disposition;
use crate::store::EXPIRED_GRACE;
use crate::store::StoreError;
use crate::store::cluster::redis::Op;
use crate::store::cluster::{ClusterStore, Handle, QueueWaiter, UserRecord, failure_state};
use crate::wire::request::Answer;
use crate::wire::{DeliveryReport, DeliveryState, ErrorCode, Reply, Verdict};

/// How long a node's claim to have bridges lasts; renewed every second.
const BRIDGE_CLAIM: Duration = Duration::from_secs(3);
/// How often a node renews its claims (bridges, phone links).
const RENEWAL_MS: u64 = 1000;
/// Queued messages a node takes per relay round.
const TAKE_PER_ROUND: usize = 64;

/// A session written back at `now`, kept until it is forgotten (a minute
/// past its expiry, counted from its expiry however late the write).
fn kept(session: &CodeSession, now: Timestamp) -> Op {
    let until = session.expires_at.plus(EXPIRED_GRACE);
    Op::Set(session.encode(), Some(now.until(until)))
}

/// An ended session: an empty record, so that its version keeps counting
/// (a writer that read the old session cannot mistake a new one for it).
fn ended() -> Op {
    Op::Set(Vec::new(), Some(EXPIRED_GRACE))
}

impl Engine {
    /// Whether a carrier bridge is connected to this node or, as announced
    /// in the store, to another (this node's own need no round trip, and
    /// count before its next announcement).
    pub(in crate::engine) async fn cluster_bridges_anywhere(
        &self,
        store: &ClusterStore,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        Ok(self.outbox.bridges() > 0 || store.bridges_anywhere(now).await?)
    }

    pub(super) async fn cluster_send_code<R: CryptoRng + ?Sized>(
        &self,
        store: &ClusterStore,
        user: &Username,
        channel: Channel,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let sms = &self.config().sms;
        let Some(device) = self
            .cluster_login_devices(store, user, now)
            .await?
            .into_iter()
            .find(|d| d.phone().is_some())
        else {
            return Ok(Reply::error(
                ErrorCode::NoVerifiedNumber,
                "no verified phone number to send a code to",
            ));
        };
        let Some(to) = device.phone().cloned() else {
            return Ok(Reply::error(
                ErrorCode::NoVerifiedNumber,
                "no verified phone number",
            ));
        };
        let records = store
            .read_user(user, &[UserRecord::Sms, UserRecord::Failures(device.id)])
            .await?;
        let [session_record, failures_record] = records.as_slice() else {
            return Err(StoreError::Database("a short read".into()));
        };
        let failures = failure_state(device.id, failures_record)?;
        if let Some(retry_after) = super::super::rules::lockout::locked(&failures, now) {
            return Ok(Reply::rate_limited(
                retry_after,
                "the SMS device is locked out",
            ));
        }
        if !self.cluster_bridges_anywhere(store, now).await? {
            return Ok(Reply::error(
                ErrorCode::DeliveryUnavailable,
                "no carrier bridge is connected",
            ));
        }
        let version = session_record.version;
        let live = session_record
            .value
            .as_deref()
            .and_then(CodeSession::decode)
            .filter(|s| s.expires_at > now && s.device == device.id);
        let message = MessageId(rng.next_u64());
        let mut session = match live {
            Some(session) => {
                if let Err(refusal) = session.may_send(channel, now, sms) {
                    return Ok(refusal);
                }
                session
            }
            None => {
                let why = "too many codes for this user";
                if let Some(refusal) = self.cluster_issuance(store, user, now, why).await? {
                    return Ok(refusal);
                }
                let code = CodeId(rng.next_u64());
                let expires_at = now.plus(sms.ttl);
                CodeSession::new(
                    code,
                    device.id,
                    expires_at,
                    sms.max_checks,
                    channel,
                    message,
                    now,
                )
            }
        };
        if let Some(refusal) = super::super::sms::country_refused(sms, &to) {
            return Ok(refusal);
        }
        if let Err((retry_after, limit)) = store.count_send(&to, now, sms).await? {
            return Ok(Reply::rate_limited(retry_after, limit.refusal()));
        }
        let fresh = session.sends == 0;
        session.sent(channel, message, now);
        let left = now.until(session.expires_at);
        if fresh
            && !store
                .claim_handle(Handle::Code(session.code), user, None, left)
                .await?
        {
            return Ok(Reply::error(
                ErrorCode::Busy,
                "could not allocate a code id",
            ));
        }
        let write = (UserRecord::Sms, version, kept(&session, now));
        if !store.write_user(user, &[write], true).await? {
            return Ok(Reply::error(
                ErrorCode::Busy,
                "another send for this user is under way; retry",
            ));
        }
        let outbound = Outbound {
            code: session.code,
            to,
            channel,
            text: message_text(&self.codes.code(session.code), left),
        };
        store
            .enqueue_message(rng, &outbound.encode(message, session.expires_at))
            .await?;
        self.counters.codes_sent.fetch_add(1, Relaxed);
        Ok(Reply::CodeSent {
            code: session.code,
            expires_in: left,
            resend_after: sms.resend_interval,
        })
    }

    pub(super) async fn cluster_verify_code(
        &self,
        store: &ClusterStore,
        user: &Username,
        given: &Answer,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        let records = store.read_user(user, &[UserRecord::Sms]).await?;
        let Some(device_id) = records
            .first()
            .and_then(|r| r.value.as_deref())
            .and_then(CodeSession::decode)
            .map(|s| s.device)
        else {
            // Same work as a real check, so timing does not tell whether
            // the user exists or has a code.
            let _ = self.codes.code(CodeId(0)).matches(given.as_bytes());
            return Ok(Reply::Verdict(Verdict::UnknownChallenge));
        };
        let failures_of = UserRecord::Failures(device_id);
        let mut rounds = store.rounds();
        while rounds.next().await {
            // The session and its device's failure state, read and written
            // together: a lockout reached on another node counts here.
            let records = store
                .read_user(user, &[UserRecord::Sms, failures_of])
                .await?;
            let [record, failures_record] = records.as_slice() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let Some(mut session) = record
                .value
                .as_deref()
                .and_then(CodeSession::decode)
                .filter(|s| s.device == device_id)
            else {
                return Ok(Reply::Verdict(Verdict::UnknownChallenge));
            };
            let end = (UserRecord::Sms, record.version, ended());
            // The session ends with this answer; if it changed meanwhile
            // (another node answered or resent), decide again on it.
            if session.expires_at <= now {
                if !store
                    .write_user(user, std::slice::from_ref(&end), true)
                    .await?
                {
                    continue;
                }
                return Ok(Reply::Verdict(Verdict::Expired));
            }
            let Some(device) = store.device(device_id).await? else {
                if !store
                    .write_user(user, std::slice::from_ref(&end), true)
                    .await?
                {
                    continue;
                }
                return Ok(Reply::Verdict(Verdict::UnknownChallenge));
            };
            let failures = failure_state(device_id, failures_record)?;
            let mut after = failures;
            let code = session.code;
            let decided = super::super::rules::code::decide(
                user,
                &mut session,
                &device,
                &mut after,
                || self.codes.code(code).matches(given.as_bytes()),
                now,
                &self.config(),
            );
            if decided.session == Disposition::Keep && !decided.failures_changed {
                // A locked device: nothing changed, nothing to write.
                self.count_code_verdict(&decided, &device, now);
                return Ok(Reply::Verdict(decided.verdict));
            }
            // Of every node checking this code, one decides: the session
            // and the failure state change together or not at all.
            let session_change = match decided.session {
                Disposition::Remove => ended(),
                Disposition::Keep => kept(&session, now),
            };
            let failed = if decided.failures_changed {
                Op::Set(after.encode(), None)
            } else {
                Op::Keep
            };
            let changes = [
                (UserRecord::Sms, record.version, session_change),
                (failures_of, failures_record.version, failed),
            ];
            if !store.write_user(user, &changes, true).await? {
                continue;
            }
            self.count_code_verdict(&decided, &device, now);
            return Ok(Reply::Verdict(decided.verdict));
        }
        Ok(Reply::error(
            ErrorCode::Busy,
            "the code's session kept changing; retry",
        ))
    }

    pub(super) async fn cluster_code_status(
        &self,
        store: &ClusterStore,
        code: CodeId,
    ) -> Result<Reply, StoreError> {
        let session = match store.handle_owner(Handle::Code(code)).await? {
            Some((user, _)) => store
                .read_user(&user, &[UserRecord::Sms])
                .await?
                .first()
                .and_then(|r| r.value.as_deref())
                .and_then(CodeSession::decode),
            None => None,
        };
        Ok(match session.filter(|s| s.code == code) {
            Some(s) => Reply::CodeStatus {
                channel: s.channel,
                sends: s.sends,
                delivery: s.delivery,
            },
            None => Reply::error(ErrorCode::NotFound, "no such live code"),
        })
    }

    pub(super) async fn cluster_ack(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        message: MessageId,
        report: DeliveryReport,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        match self.outbox.ack(caller.connection, message, report, now) {
            Some(change) => {
                self.cluster_delivery(store, change, now).await?;
                Ok(Reply::Done)
            }
            None => Ok(Reply::error(
                ErrorCode::NotFound,
                "no such message in flight on this connection",
            )),
        }
    }

    /// Writes what became of a message into its code's session; only the
    /// code's last message counts.
    async fn cluster_delivery(
        &self,
        store: &ClusterStore,
        (code, message, delivery): StatusChange,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let Some((user, _)) = store.handle_owner(Handle::Code(code)).await? else {
            return Ok(());
        };
        let mut rounds = store.rounds();
        while rounds.next().await {
            let records = store.read_user(&user, &[UserRecord::Sms]).await?;
            let Some(record) = records.first() else {
                return Ok(());
            };
            let Some(mut session) = record
                .value
                .as_deref()
                .and_then(CodeSession::decode)
                .filter(|s| s.code == code && s.message == message)
            else {
                return Ok(());
            };
            session.delivery = delivery.clone();
            let write = (UserRecord::Sms, record.version, kept(&session, now));
            if store.write_user(&user, &[write], true).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One round of this node's part in the channels shared between nodes:
    /// its phones' links, notices and waiting gateways (`push.rs`); then
    /// the delivery changes of failovers and timeouts, its claim to have
    /// bridges (renewed or withdrawn), and queued messages handed to its
    /// bridges. The server calls it every few milliseconds.
    pub async fn cluster_relay(&self, now: Timestamp) -> Result<(), StoreError> {
        let Some(store) = &self.cluster else {
            return Ok(());
        };
        let node = self.node.as_str();
        let gone = std::mem::take(
            &mut *self
                .relay_unlinks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let renewed = self.links_renewed.load(Relaxed);
        let renew = now.0 >= renewed.saturating_add(RENEWAL_MS);
        if renew {
            self.links_renewed.store(now.0, Relaxed);
        }
        self.relay_pushes(store, renew, gone).await?;
        let changes = std::mem::take(
            &mut *self
                .relay_changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for change in changes {
            self.cluster_delivery(store, change, now).await?;
        }
        let bridges = self.outbox.bridges();
        let renewed = self.bridges_announced.load(Relaxed);
        if bridges > 0 && now.0 >= renewed.saturating_add(RENEWAL_MS) {
            store
                .announce_bridges(node, Some(now.plus(BRIDGE_CLAIM)))
                .await?;
            self.bridges_announced.store(now.0, Relaxed);
        } else if bridges == 0 && renewed != 0 {
            store.announce_bridges(node, None).await?;
            self.bridges_announced.store(0, Relaxed);
        }
        Ok(())
    }

    /// On a cluster, while this node has carrier bridges: waits up to
    /// `wait` on `waiter` (a connection of the calling task's own) for
    /// messages queued by any node, and hands them to its bridges at
    /// `clock()` (read once the wait is over). Without
    /// bridges it answers at once, having taken nothing (the caller waits
    /// a little before asking again).
    pub async fn cluster_wait_outbox(
        &self,
        waiter: &QueueWaiter,
        wait: Duration,
        clock: impl FnOnce() -> Timestamp,
    ) -> Result<bool, StoreError> {
        let Some(store) = &self.cluster else {
            return Ok(false);
        };
        if self.outbox.bridges() == 0 {
            return Ok(false);
        }
        let queued = store.take_messages(waiter, TAKE_PER_ROUND, wait).await?;
        let now = clock();
        for queued in queued {
            let Some((id, until, outbound)) = Outbound::decode(&queued) else {
                tracing::warn!("a queued message did not parse; dropped");
                continue;
            };
            let code = outbound.code;
            let failed = |reason: &str| {
                (
                    code,
                    id,
                    DeliveryState::Failed {
                        reason: reason.into(),
                    },
                )
            };
            let outcome = if until <= now {
                Err("the code expired before a bridge took the message")
            } else {
                match self.outbox.dispatch_as(id, outbound, now) {
                    Ok(()) => Ok(()),
                    Err(DispatchError::NoBridge) => Err("no carrier bridge took the message"),
                    Err(DispatchError::Full) => Err("the carrier outbox is full"),
                }
            };
            if let Err(reason) = outcome {
                self.cluster_delivery(store, failed(reason), now).await?;
            }
        }
        Ok(true)
    }
}
