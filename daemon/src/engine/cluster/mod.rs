//! The engine on the shared store (`store.backend = "redis"`): the same
//! rules as on the embedded store — the same questions, judgement of an
//! answer, lockout arithmetic and replies — with state that every node of
//! the deployment reads and changes atomically.
//!
//! A verify reads the challenge and the device's failure state together,
//! judges the answer in Rust (secrets never leave the node), then writes
//! its outcome to both at once — the challenge used up and the failures
//! cleared, or an attempt spent and a failure counted — only if neither
//! changed meanwhile; otherwise it judges again on what another node
//! decided. The changes a reply depends on are replicated
//! (`store.redis-wait-replicas`) before the reply is sent.
//!
//! Here: challenge/response, devices, enrolment, revocation and unlocking,
//! identification and opt-out (the user's account record), withdrawals
//! (the ledger on the user's slot) and the deployment's audit log; SMS and
//! voice codes and the carrier channel in [`sms`]; push approval and the
//! phone channel in [`push`]. The rest of the device lifecycle (shares,
//! temporary codes, replacements, phone verification, IB Key activation)
//! answers `Unsupported` here for now.

mod push;
mod sms;

pub(super) use push::Waiters;

/// Rounds of read, judge and write on one user's records before giving up
/// (`Busy`): each lost round means another node changed them meanwhile.
const CHANGE_ROUNDS: usize = 8;

use std::sync::atomic::Ordering;

use rand::CryptoRng;

use super::lifecycle::{residence_code, withdrawal_detail, withdrawal_device};
use super::rules;
use super::rules::ask::shown;
use super::{
    Caller, Engine, enroll_error, forbidden, invalid_amount, phone_enrolled, push_key_bound,
};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::policy::calendar::Day;
use crate::ratelimit::Decision;
use crate::store::Account;
use crate::store::cluster::redis::Op;
use crate::store::cluster::{
    ClusterStore, EXPIRED_GRACE, Handle, UserRecord, failure_state, question_memory,
};
use crate::store::{Disposition, FailureState, NewDevice, OpenChallenge, StoreError};
use crate::wire::request::{Answer, Page};
use crate::wire::{AuditRecord, DeviceEntry, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

impl Engine {
    /// Whether this engine keeps its state in a shared store.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// A connection of the calling task's own for waiting on a queue
    /// (`cluster_wait_inbox`, `cluster_wait_outbox`).
    pub async fn cluster_queue_waiter(
        &self,
    ) -> Result<crate::store::cluster::QueueWaiter, StoreError> {
        match &self.cluster {
            Some(store) => store.queue_waiter().await,
            None => Err(StoreError::Database(
                "this node has no cluster store".into(),
            )),
        }
    }

    /// Handles one operation on the shared store. Awaits the store; the
    /// caller runs it as a task of its own. `None`: the answer will be
    /// written to the caller's sink later (`AwaitPush` on a push not yet
    /// answered).
    pub async fn handle_on_cluster<R: CryptoRng + Send + ?Sized>(
        &self,
        caller: &Caller<'_>,
        operation: Operation,
        now: Timestamp,
        rng: &mut R,
    ) -> Option<Reply> {
        if let Some(refusal) = forbidden(caller.role, &operation) {
            return Some(refusal);
        }
        let Some(store) = &self.cluster else {
            return Some(Reply::error(
                ErrorCode::Internal,
                "this node has no shared store",
            ));
        };
        let name = operation.name();
        let mut audited = audit_subject(&operation);
        let result = match operation {
            Operation::Devices { user } => self.cluster_devices(store, &user, now, None).await,
            Operation::ListDevices { user, page } => {
                self.cluster_devices(store, &user, now, Some(page)).await
            }
            Operation::Challenge { user, device } => {
                self.cluster_challenge(store, &user, device, now, rng).await
            }
            Operation::Verify {
                challenge,
                response,
            } => self.cluster_verify(store, challenge, &response, now).await,
            Operation::Enroll(request) => Ok(self.cluster_enroll(store, request, now, rng).await),
            Operation::Revoke { device } => match store.device(device).await {
                Ok(found) => {
                    // The audit entry names whose device it was.
                    if let Some(subject) = audited.as_mut() {
                        subject.user = found.map(|d| d.user.clone());
                    }
                    cluster_revoke(store, device).await
                }
                Err(error) => Err(error),
            },
            Operation::BindPushKey { device, key } => Ok(push_key_bound(
                device,
                store.bind_push_key(device, key).await,
            )),
            Operation::Unlock { user, device } => cluster_unlock(store, &user, device).await,
            Operation::Stats => Ok(self.stats()),
            Operation::EnrollPhone {
                user,
                number,
                label,
            } => {
                let enrolled = store.enroll_phone(rng, &user, number, &label, now).await;
                Ok(phone_enrolled(&user, enrolled))
            }
            Operation::SendCode { user, channel } => {
                self.cluster_send_code(store, &user, channel, now, rng)
                    .await
            }
            Operation::VerifyCode { user, code } => {
                self.cluster_verify_code(store, &user, &code, now).await
            }
            Operation::CodeStatus { code } => self.cluster_code_status(store, code).await,
            Operation::CarrierSubscribe => Ok(self.carrier_subscribe(caller)),
            Operation::Ack { message, report } => {
                self.cluster_ack(store, caller, message, report, now).await
            }
            Operation::PhoneSubscribe { device, proof } => {
                self.cluster_phone_subscribe(store, caller, device, &proof)
                    .await
            }
            Operation::Push { user, device } => {
                self.cluster_push(store, &user, device, now, rng).await
            }
            Operation::AwaitPush { push } => {
                match self.cluster_await_push(store, caller, push, now).await {
                    Ok(None) => return None,
                    Ok(Some(reply)) => Ok(reply),
                    Err(error) => Err(error),
                }
            }
            Operation::Approve {
                push,
                chosen,
                proof,
            } => {
                let approval = Some((chosen, &proof));
                self.cluster_answer_push(store, caller, push, approval, now)
                    .await
            }
            Operation::Deny { push } => {
                self.cluster_answer_push(store, caller, push, None, now)
                    .await
            }
            Operation::AuthorizeWithdrawal {
                user,
                amount_cents,
                challenge,
                response,
            } => {
                self.cluster_authorize_withdrawal(
                    store,
                    caller,
                    &user,
                    amount_cents,
                    challenge,
                    &response,
                    now,
                )
                .await
            }
            Operation::AuditLog { after, limit } => store
                .audit_log(after, usize::from(limit))
                .await
                .map(Reply::Audit),
            Operation::SetIdentity { user, identity } => match residence_code(&identity) {
                Ok(residence) => {
                    let identity = Some(store.identity_digest(&identity));
                    let set = |account: Account| {
                        let next = Account {
                            residence: Some(residence),
                            identity,
                            ..account
                        };
                        (Some(next), Reply::Done)
                    };
                    kept_changing(store.update_account(rng, &user, set).await)
                }
                Err(refusal) => Ok(refusal),
            },
            Operation::SetOptOut { user, opted_out } => {
                let set = |account: Account| match self.opt_out_refusal(&account, opted_out) {
                    Some(refusal) => (None, refusal),
                    None => (
                        Some(Account {
                            opted_out,
                            ..account
                        }),
                        Reply::Done,
                    ),
                };
                kept_changing(store.update_account(rng, &user, set).await)
            }
            // The rest of the device lifecycle (shares, temporary codes,
            // replacements, phone verification, IB Key activation) lives in
            // the embedded registry only so far.
            Operation::ShareDevice { .. }
            | Operation::DecideShare { .. }
            | Operation::CancelShare { .. }
            | Operation::Shares { .. }
            | Operation::IssueTemporaryCode { .. }
            | Operation::OrderReplacement { .. }
            | Operation::ShipReplacement { .. }
            | Operation::PendingActivations { .. }
            | Operation::StartPhoneVerification { .. }
            | Operation::ConfirmPhone { .. }
            | Operation::StartActivation { .. }
            | Operation::CompleteActivation { .. } => Ok(Reply::error(
                ErrorCode::Unsupported,
                format!("{name} is not available on the shared store yet: use the embedded store"),
            )),
        };
        // Registry changes are audited once they are made.
        let result = match (result, audited) {
            (Ok(reply), Some(subject)) => self
                .audit_change(store, caller, subject, &reply, now)
                .await
                .map(|()| reply),
            (result, _) => result,
        };
        Some(result.unwrap_or_else(|error| cluster_store_failed(name, &error)))
    }

    /// Counts one issuance (challenge, code, push) for the user across the
    /// deployment (`challenges.per-user-per-minute`); the refusal, saying
    /// `why`, when the user is past it.
    async fn cluster_issuance(
        &self,
        store: &ClusterStore,
        user: &Username,
        now: Timestamp,
        why: &str,
    ) -> Result<Option<Reply>, StoreError> {
        let rate = self.config.challenges.issuance_rate();
        Ok(match store.count_issuance(user, now, rate).await? {
            Decision::Deny { retry_after } => Some(Reply::rate_limited(retry_after, why)),
            Decision::Allow => None,
        })
    }

    async fn cluster_devices(
        &self,
        store: &ClusterStore,
        user: &Username,
        now: Timestamp,
        page: Option<Page>,
    ) -> Result<Reply, StoreError> {
        // An operator's list (`Some(page)`): expired devices too, a page at
        // a time by device id.
        let devices: Vec<_> = store
            .devices_of(user)
            .await?
            .into_iter()
            .filter(|d| page.is_some() || !d.expired_at(now))
            .collect();
        let devices = match page {
            Some(page) => page.select(devices, |d| d.id.0),
            None => devices,
        };
        // Every failure state, and the account (opt-out), in one read: they
        // live with the user.
        let mut records: Vec<UserRecord> =
            devices.iter().map(|d| UserRecord::Failures(d.id)).collect();
        records.push(UserRecord::Account);
        let mut states = store.read_user(user, &records).await?;
        let account = match states.pop() {
            Some(record) => store.account(user, &record)?,
            None => Account::default(),
        };
        let mut entries = Vec::with_capacity(devices.len());
        for (device, record) in devices.iter().zip(&states) {
            let failures = failure_state(device.id, record)?;
            entries.push(DeviceEntry {
                device: device.id,
                kind: device.kind,
                label: device.label.clone(),
                locked_for: failures.locked_for(now),
                status: if device.expired_at(now) {
                    crate::wire::DeviceStatus::Expired
                } else {
                    crate::wire::DeviceStatus::Active
                },
                owner: None,
            });
        }
        Ok(Reply::Devices {
            required: !account.opted_out,
            devices: entries,
        })
    }

    async fn cluster_challenge<R: CryptoRng + Send + ?Sized>(
        &self,
        store: &ClusterStore,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        if let Some(refusal) = self
            .cluster_issuance(store, user, now, "too many challenges for this user")
            .await?
        {
            return Ok(refusal);
        }
        // An unknown user and another user's device answer the same way.
        let Some(device) = store.device(device).await?.filter(|d| &d.user == user) else {
            return Ok(Reply::error(
                ErrorCode::NotFound,
                "no such device for this user",
            ));
        };
        if device.expired_at(now) {
            return Ok(Reply::error(
                ErrorCode::NotFound,
                "the device's validity has ended",
            ));
        }
        let ttl = self.config.challenges.ttl;
        let failures_of = UserRecord::Failures(device.id);
        let questions_of = UserRecord::Questions(device.id);
        // Ids are random 64-bit numbers (a collision takes another), and
        // the device's records change under a verify on any node (decided
        // again on what changed).
        for _ in 0..CHANGE_ROUNDS {
            let id = ChallengeId(rng.next_u64());
            let handle = Handle::Challenge(id);
            if !store
                .claim_handle(handle, user, Some(device.id), ttl)
                .await?
            {
                continue;
            }
            let records = store.read_user(user, &[failures_of, questions_of]).await?;
            let [failures_record, questions_record] = records.as_slice() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let mut failures = failure_state(device.id, failures_record)?;
            let mut questions = question_memory(device.id, questions_record)?;
            let asked = match rules::ask::ask_device(
                &self.config,
                &self.alphabets,
                user,
                &device,
                &mut failures,
                &mut questions,
                id,
                now,
                rng,
            ) {
                Ok(asked) => asked,
                Err(refusal) => return Ok(refusal),
            };
            let charged = if asked.charged {
                Op::Set(failures.encode(), None)
            } else {
                Op::Keep
            };
            // The challenge itself is not replicated before the answer (one
            // lost in a failover is asked again, the same question); what
            // was asked is, and the failure a late challenge cost.
            let changes = [
                (
                    UserRecord::Challenge(id),
                    0,
                    Op::Set(asked.open.encode(), Some(ttl + EXPIRED_GRACE)),
                ),
                (
                    questions_of,
                    questions_record.version,
                    Op::Set(questions.encode(), None),
                ),
                (failures_of, failures_record.version, charged),
            ];
            if store.write_user(user, &changes, true).await? {
                if asked.locked {
                    self.count_lockout();
                }
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                return Ok(Reply::Challenge {
                    challenge: id,
                    text: shown(&asked.open.question),
                    expires_in: ttl,
                });
            }
        }
        Ok(Reply::error(
            ErrorCode::Busy,
            "could not allocate a challenge id",
        ))
    }

    async fn cluster_verify(
        &self,
        store: &ClusterStore,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        let verdict = self.cluster_verdict(store, id, answer, now).await?;
        if let Some(verdict) = &verdict {
            self.count_verdict(verdict);
        }
        Ok(verdict.map_or_else(
            || Reply::error(ErrorCode::Busy, "the challenge kept changing; retry"),
            Reply::Verdict,
        ))
    }

    /// Reads the challenge and its device's failure state together, judges
    /// the answer, and writes the outcome to both at once if neither
    /// changed meanwhile (another verify, on any node, of this challenge
    /// or another of the device's); otherwise judges again on what changed.
    /// `None`: it kept changing.
    async fn cluster_verdict(
        &self,
        store: &ClusterStore,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
    ) -> Result<Option<Verdict>, StoreError> {
        let Some((user, Some(device_id))) = store.handle_owner(Handle::Challenge(id)).await? else {
            return Ok(Some(Verdict::UnknownChallenge));
        };
        let challenge = UserRecord::Challenge(id);
        let failures_of = UserRecord::Failures(device_id);
        let questions_of = UserRecord::Questions(device_id);
        for _ in 0..CHANGE_ROUNDS {
            let records = store
                .read_user(&user, &[challenge, failures_of, questions_of])
                .await?;
            let [record, failures_record, questions_record] = records.as_slice() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let Some(open) = record.value.as_deref().and_then(OpenChallenge::decode) else {
                return Ok(Some(Verdict::UnknownChallenge));
            };
            let Some(device) = store.device(open.device).await? else {
                // Revoked since the challenge was issued: it goes.
                let used_up = (challenge, record.version, Op::Delete);
                store.write_user(&user, &[used_up], true).await?;
                return Ok(Some(rules::verify::revoked(&open, now).verdict));
            };
            let failures = failure_state(device.id, failures_record)?;
            let questions = question_memory(device.id, questions_record)?;
            let (mut after, mut asked, mut judged) = (failures, questions.clone(), open.clone());
            let decided = rules::verify::decide(
                id,
                &mut judged,
                &device,
                &mut after,
                &mut asked,
                answer,
                now,
                &self.config,
            );
            // Only what the decision changed is written, each only if it is
            // still as read; nothing changed (a locked device), nothing
            // written.
            let kept = match decided.challenge {
                Disposition::Remove => Op::Delete,
                Disposition::Keep if judged == open => Op::Keep,
                Disposition::Keep => {
                    let ttl = now.until(judged.expires_at) + EXPIRED_GRACE;
                    Op::Set(judged.encode(), Some(ttl))
                }
            };
            let failed = if decided.failures_changed {
                Op::Set(after.encode(), None)
            } else {
                Op::Keep
            };
            let remembered = if asked == questions {
                Op::Keep
            } else {
                Op::Set(asked.encode(), None)
            };
            let changes = [
                (challenge, record.version, kept),
                (failures_of, failures_record.version, failed),
                (questions_of, questions_record.version, remembered),
            ];
            if changes.iter().all(|(_, _, op)| *op == Op::Keep) {
                return Ok(Some(decided.verdict));
            }
            if store.write_user(&user, &changes, true).await? {
                if decided.locked {
                    self.count_lockout();
                }
                return Ok(Some(decided.verdict));
            }
        }
        Ok(None)
    }

    async fn cluster_enroll<R: CryptoRng + Send + ?Sized>(
        &self,
        store: &ClusterStore,
        request: EnrollRequest,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let EnrollRequest {
            user,
            kind,
            secret,
            pin,
            label,
        } = request;
        let new = NewDevice {
            user: &user,
            kind,
            secret,
            pin: pin.as_ref().map(|p| p.as_str()),
            label: &label,
        };
        match store.enroll(rng, new, now).await {
            Ok((device, secret)) => {
                tracing::info!(%user, %device, %kind, "device enrolled");
                Reply::Enrolled { device, secret }
            }
            Err(error) => enroll_error(error),
        }
    }
}

/// What an audit entry of a registry change says, known before the change
/// (an enrolled device's id comes from its reply).
struct AuditSubject {
    action: &'static str,
    user: Option<Username>,
    device: Option<DeviceId>,
    detail: String,
}

/// The audit entry an operation makes when it succeeds, if it changes the
/// registry (the same actions as the embedded registry's).
fn audit_subject(operation: &Operation) -> Option<AuditSubject> {
    let subject = |action, user: Option<&Username>, device, detail: String| AuditSubject {
        action,
        user: user.cloned(),
        device,
        detail,
    };
    Some(match operation {
        Operation::Enroll(request) => subject(
            "enroll",
            Some(&request.user),
            None,
            request.kind.to_string(),
        ),
        Operation::EnrollPhone { user, .. } => {
            subject("enroll-phone", Some(user), None, String::new())
        }
        Operation::BindPushKey { device, .. } => {
            subject("bind-push-key", None, Some(*device), String::new())
        }
        Operation::Revoke { device } => subject("revoke", None, Some(*device), String::new()),
        Operation::Unlock { user, device } => subject("unlock", Some(user), *device, String::new()),
        Operation::SetIdentity { user, identity } => subject(
            "set-identity",
            Some(user),
            None,
            format!("residence {}", identity.residence),
        ),
        Operation::SetOptOut { user, opted_out } => {
            let action = if *opted_out { "opt-out" } else { "opt-in" };
            subject(action, Some(user), None, String::new())
        }
        // Registry changes audited in their own step (withdrawals, with
        // the amount booked) or not yet available on a cluster.
        Operation::AuthorizeWithdrawal { .. }
        | Operation::ShareDevice { .. }
        | Operation::DecideShare { .. }
        | Operation::CancelShare { .. }
        | Operation::IssueTemporaryCode { .. }
        | Operation::OrderReplacement { .. }
        | Operation::ShipReplacement { .. }
        | Operation::ConfirmPhone { .. }
        | Operation::CompleteActivation { .. } => return None,
        // Named one by one, never by a wildcard: a new operation does not
        // compile until it says whether it changes the registry.
        Operation::Devices { .. }
        | Operation::Challenge { .. }
        | Operation::Verify { .. }
        | Operation::SendCode { .. }
        | Operation::VerifyCode { .. }
        | Operation::CodeStatus { .. }
        | Operation::Push { .. }
        | Operation::AwaitPush { .. }
        | Operation::StartActivation { .. }
        | Operation::ListDevices { .. }
        | Operation::Stats
        | Operation::Shares { .. }
        | Operation::PendingActivations { .. }
        | Operation::AuditLog { .. }
        | Operation::StartPhoneVerification { .. }
        | Operation::CarrierSubscribe
        | Operation::Ack { .. }
        | Operation::PhoneSubscribe { .. }
        | Operation::Approve { .. }
        | Operation::Deny { .. } => return None,
    })
}

impl Engine {
    /// Appends the audit entry of a change that succeeded (`Enrolled` or
    /// `Done`); a refused change is not one.
    async fn audit_change(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        subject: AuditSubject,
        reply: &Reply,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let device = match reply {
            Reply::Enrolled { device, .. } => Some(*device),
            Reply::Done => subject.device,
            _ => return Ok(()),
        };
        self.append_audit(store, caller, AuditSubject { device, ..subject }, now)
            .await
    }

    /// Appends `subject` to the deployment's audit log, by `caller`.
    async fn append_audit(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        subject: AuditSubject,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let entry = AuditRecord {
            seq: 0,
            at: now,
            actor: Self::actor(caller).0.to_owned(),
            action: subject.action.to_owned(),
            user: subject.user,
            device: subject.device,
            detail: subject.detail,
        };
        store.audit(&entry).await.map(drop)
    }

    /// `AuthorizeWithdrawal` on the shared store: the answer is verified
    /// as by `Verify` (on any node), then the amount is booked on the
    /// user's slot in one step against both limits.
    #[allow(clippy::too_many_arguments)]
    async fn cluster_authorize_withdrawal(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        user: &Username,
        amount: u64,
        challenge: ChallengeId,
        response: &Answer,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        if let Some(refusal) = invalid_amount(amount) {
            return Ok(refusal);
        }
        let verdict = self.cluster_verify(store, challenge, response, now).await?;
        let (device, kind) = match withdrawal_device(&verdict, user) {
            Ok(answered) => answered,
            Err(refusal) => return Ok(refusal.unwrap_or(verdict)),
        };
        let today = Day::of(now);
        let start = self.config.withdrawals.holidays.window_start(today, 5);
        let limit = self.config.devices.get(kind).withdrawal_limit;
        let cents = |dollars: Option<u64>| dollars.map(|d| d.saturating_mul(100));
        let limits = (cents(limit.per_day), cents(limit.per_five_business_days));
        let (booked, withdrawn) = store
            .book_withdrawal(
                user,
                start,
                today,
                amount,
                limits,
                self.config.withdrawals.ledger_days,
            )
            .await?;
        // The kinds the user holds matter only to a refusal.
        let holds: Vec<_> = if booked {
            Vec::new()
        } else {
            store
                .devices_of(user)
                .await?
                .iter()
                .map(|d| d.kind)
                .collect()
        };
        // The store decided with the same limits; this says it in a reply.
        let decision = self.withdrawal_decision((device, kind), amount, withdrawn, &holds);
        if booked {
            // Booked first: if the audit entry cannot be written the
            // request fails, and the amount still counts (the safe side of
            // a limit).
            let subject = AuditSubject {
                action: "withdrawal-approved",
                user: Some(user.clone()),
                device: Some(device),
                detail: withdrawal_detail(amount, kind, today),
            };
            self.append_audit(store, caller, subject, now).await?;
        }
        Ok(decision)
    }
}

/// The reply of a change that another node kept changing first.
fn kept_changing(decided: Result<Option<Reply>, StoreError>) -> Result<Reply, StoreError> {
    decided.map(|reply| {
        reply.unwrap_or_else(|| Reply::error(ErrorCode::Busy, "the record kept changing; retry"))
    })
}

async fn cluster_revoke(store: &ClusterStore, device: DeviceId) -> Result<Reply, StoreError> {
    Ok(if store.revoke(device).await? {
        tracing::info!(%device, "device revoked");
        Reply::Done
    } else {
        Reply::error(ErrorCode::NotFound, "no such device")
    })
}

async fn cluster_unlock(
    store: &ClusterStore,
    user: &Username,
    device: Option<DeviceId>,
) -> Result<Reply, StoreError> {
    let devices: Vec<_> = store
        .devices_of(user)
        .await?
        .into_iter()
        .filter(|d| device.is_none_or(|id| d.id == id))
        .collect();
    if devices.is_empty() && device.is_some() {
        return Ok(Reply::error(
            ErrorCode::NotFound,
            "no such device for this user",
        ));
    }
    for d in &devices {
        store
            .update_failures(user, d.id, |state| *state = FailureState::default())
            .await?;
    }
    tracing::info!(%user, devices = devices.len(), "lockouts cleared");
    Ok(Reply::Done)
}

/// The reply when the shared store failed an operation: it did not answer
/// in time, or a record it holds failed its integrity check (refused, and
/// the operation with it: nothing is decided on a forged record).
fn cluster_store_failed(operation: &str, error: &StoreError) -> Reply {
    match error {
        StoreError::Forged(_) => Reply::error(
            ErrorCode::Internal,
            "a record in the shared store failed its integrity check",
        ),
        _ => {
            tracing::warn!(%error, operation, "shared store failed");
            Reply::error(
                ErrorCode::StoreUnavailable,
                "the shared store did not answer or did not replicate in time",
            )
        }
    }
}
