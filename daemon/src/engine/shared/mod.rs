//! The engine on the shared store (`store.backend = "redis"`): the same
//! rules as on the embedded store — the same questions, judgement of an
//! answer, lockout arithmetic and replies — with state that every node of
//! the deployment reads and changes atomically.
//!
//! A verify reads the challenge and the device's failure state, judges the
//! answer in Rust (secrets never leave the node), then makes its decision
//! stick with one atomic step: a right answer uses the challenge up (of
//! two nodes verifying at once, one gets it), a wrong one spends one of
//! its attempts and adds a failure by compare-and-swap. The changes a
//! reply depends on are replicated (`store.redis-wait-replicas`) before
//! the reply is sent.
//!
//! Here: challenge/response, devices, enrolment, revocation and unlocking;
//! SMS and voice codes and the carrier channel in [`sms`]; push approval
//! and the phone channel in [`push`]. Every operation of the protocol
//! works on either store.

mod push;
mod sms;

pub(super) use push::Waiters;

use std::sync::atomic::Ordering;

use rand::CryptoRng;

use super::{
    Caller, Engine, Judgement, accepted, enroll_error, forbidden, next_failure, phone_enrolled,
    push_key_bound, wrong_answer,
};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::ratelimit::Decision;
use crate::store::challenges::OpenChallenge;
use crate::store::registry::{FailureState, NewDevice, StoreError};
use crate::store::shared::SharedStore;
use crate::wire::request::Answer;
use crate::wire::{DeviceEntry, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

impl Engine {
    /// Whether this engine keeps its state in a shared store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Handles one operation on the shared store. Awaits the store; the
    /// caller runs it as a task of its own. `None`: the answer will be
    /// written to the caller's sink later (`AwaitPush` on a push not yet
    /// answered).
    pub async fn handle_shared<R: CryptoRng + Send + ?Sized>(
        &self,
        caller: &Caller<'_>,
        operation: Operation,
        now: Timestamp,
        rng: &mut R,
    ) -> Option<Reply> {
        if let Some(refusal) = forbidden(caller.role, &operation) {
            return Some(refusal);
        }
        let Some(store) = &self.shared else {
            return Some(Reply::error(
                ErrorCode::Internal,
                "this node has no shared store",
            ));
        };
        let name = operation.name();
        let result = match operation {
            Operation::Devices { user } => self.shared_devices(store, &user, now, false).await,
            Operation::ListDevices { user } => self.shared_devices(store, &user, now, true).await,
            Operation::Challenge { user, device } => {
                self.shared_challenge(store, &user, device, now, rng).await
            }
            Operation::Verify {
                challenge,
                response,
            } => self.shared_verify(store, challenge, &response, now).await,
            Operation::Enroll(request) => {
                return Some(self.shared_enroll(store, request, now, rng).await);
            }
            Operation::Revoke { device } => shared_revoke(store, device).await,
            Operation::BindPushKey { device, key } => {
                return Some(push_key_bound(
                    device,
                    store.bind_push_key(device, key).await,
                ));
            }
            Operation::Unlock { user, device } => shared_unlock(store, &user, device).await,
            Operation::Stats => Ok(self.stats()),
            Operation::EnrollPhone {
                user,
                number,
                label,
            } => {
                let enrolled = store.enroll_phone(rng, &user, number, &label, now).await;
                return Some(phone_enrolled(&user, enrolled));
            }
            Operation::SendCode { user, channel } => {
                self.shared_send_code(store, &user, channel, now, rng).await
            }
            Operation::VerifyCode { user, code } => {
                self.shared_verify_code(store, &user, &code, now).await
            }
            Operation::CodeStatus { code } => self.shared_code_status(store, code).await,
            Operation::CarrierSubscribe => Ok(self.carrier_subscribe(caller)),
            Operation::Ack { message, report } => {
                self.shared_ack(store, caller, message, report, now).await
            }
            Operation::PhoneSubscribe { device, proof } => {
                self.shared_phone_subscribe(store, caller, device, &proof)
                    .await
            }
            Operation::Push { user, device } => {
                self.shared_push(store, &user, device, now, rng).await
            }
            Operation::AwaitPush { push } => {
                match self.shared_await_push(store, caller, push, now).await {
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
                self.shared_answer_push(store, caller, push, approval, now)
                    .await
            }
            Operation::Deny { push } => {
                self.shared_answer_push(store, caller, push, None, now)
                    .await
            }
        };
        Some(result.unwrap_or_else(|error| {
            tracing::warn!(%error, operation = name, "shared store failed");
            Reply::error(
                ErrorCode::StoreUnavailable,
                "the shared store did not answer or did not replicate in time",
            )
        }))
    }

    async fn shared_devices(
        &self,
        store: &SharedStore,
        user: &Username,
        now: Timestamp,
        with_expired: bool,
    ) -> Result<Reply, StoreError> {
        let mut entries = Vec::new();
        for device in store.devices_of(user).await? {
            if !with_expired && device.expired_at(now) {
                continue;
            }
            let (_, failures) = store.failures(device.id).await?;
            entries.push(DeviceEntry {
                device: device.id,
                kind: device.kind,
                label: device.label.clone(),
                locked_for: now.until(failures.locked_until),
            });
        }
        Ok(Reply::Devices(entries))
    }

    async fn shared_challenge<R: CryptoRng + Send + ?Sized>(
        &self,
        store: &SharedStore,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let per_minute = self.config.challenges.per_user_per_minute;
        if let Decision::Deny { retry_after } = store.count_issuance(user, now, per_minute).await? {
            return Ok(Reply::rate_limited(
                retry_after,
                "too many challenges for this user",
            ));
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
        let (question, text) = match self.question_for(&device, rng) {
            Ok(question) => question,
            Err(refusal) => return Ok(refusal),
        };
        let ttl = self.config.challenges.ttl;
        let open = OpenChallenge {
            user: user.clone(),
            device: device.id,
            question,
            expires_at: now.plus(ttl),
            attempts_left: self.config.challenges.attempts,
        };
        // Ids are random 64-bit numbers; a collision is retried, twice.
        for _ in 0..3 {
            let id = ChallengeId(rng.next_u64());
            if store.open_challenge(id, &open, ttl).await? {
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                return Ok(Reply::Challenge {
                    challenge: id,
                    text,
                    expires_in: ttl,
                });
            }
        }
        Ok(Reply::error(
            ErrorCode::Busy,
            "could not allocate a challenge id",
        ))
    }

    async fn shared_verify(
        &self,
        store: &SharedStore,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
    ) -> Result<Reply, StoreError> {
        let verdict = self.shared_verdict(store, id, answer, now).await?;
        self.count_verdict(&verdict);
        Ok(Reply::Verdict(verdict))
    }

    async fn shared_verdict(
        &self,
        store: &SharedStore,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
    ) -> Result<Verdict, StoreError> {
        let Some(open) = store.challenge(id).await? else {
            return Ok(Verdict::UnknownChallenge);
        };
        let Some(device) = store.device(open.device).await? else {
            // Revoked since the challenge was issued.
            store.use_up(id).await?;
            return Ok(Verdict::UnknownChallenge);
        };
        let (_, failures) = store.failures(device.id).await?;
        match self.judge(&open, &device, &failures, answer, now) {
            Judgement::Expired => {
                store.use_up(id).await?;
                Ok(Verdict::Expired)
            }
            Judgement::LockedOut(retry_after) => Ok(Verdict::LockedOut { retry_after }),
            Judgement::Right => {
                // Of every verify of this challenge, on any node, one uses
                // it up; the others find it gone.
                if !store.use_up(id).await? {
                    return Ok(Verdict::UnknownChallenge);
                }
                if failures != FailureState::default() {
                    store
                        .update_failures(device.id, |state| *state = FailureState::default())
                        .await?;
                }
                Ok(accepted(&open, &device))
            }
            Judgement::Wrong => {
                let Some(attempts_left) = store.spend_attempt(id).await? else {
                    return Ok(Verdict::UnknownChallenge);
                };
                let lockout = &self.config.lockout;
                let locked = store
                    .update_failures(device.id, |state| next_failure(lockout, state, now))
                    .await?
                    .flatten();
                if locked.is_some() {
                    self.count_lockout();
                    // A locked device's challenge is of no further use.
                    store.use_up(id).await?;
                }
                Ok(wrong_answer(locked, attempts_left))
            }
        }
    }

    async fn shared_enroll<R: CryptoRng + Send + ?Sized>(
        &self,
        store: &SharedStore,
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

async fn shared_revoke(store: &SharedStore, device: DeviceId) -> Result<Reply, StoreError> {
    Ok(if store.revoke(device).await? {
        tracing::info!(%device, "device revoked");
        Reply::Done
    } else {
        Reply::error(ErrorCode::NotFound, "no such device")
    })
}

async fn shared_unlock(
    store: &SharedStore,
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
            .update_failures(d.id, |state| *state = FailureState::default())
            .await?;
    }
    tracing::info!(%user, devices = devices.len(), "lockouts cleared");
    Ok(Reply::Done)
}
