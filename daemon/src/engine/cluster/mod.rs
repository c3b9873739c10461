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
//! withdrawals (the ledger on the user's slot), the deployment's audit log
//! and which devices a login may use (the user's lifecycle record); SMS
//! and voice codes and the carrier channel in [`sms`]; push approval and
//! the phone channel in [`push`]. The device lifecycle (`lifecycle.rs`)
//! and phone verification and IB Key activation (`activation.rs`) are
//! written once for both stores and run here over the cluster store
//! (`store::Store`, `node::Clustered`).

mod push;
mod sms;

pub(super) use push::Waiters;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::CryptoRng;

use super::lifecycle::{invalid_amount, withdrawal_detail, withdrawal_device};
use super::node::Clustered;
use super::rules;
use super::rules::ask::shown;
use super::{Caller, Engine, forbidden};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::policy::calendar::Day;
use crate::ratelimit::Decision;
use crate::store::Device;
use crate::store::EXPIRED_GRACE;
use crate::store::cluster::redis::Op;
use crate::store::cluster::{
    ClusterStore, IssuedWrite, UserRecord, failure_state, question_memory, slots,
};
use crate::store::{DeviceLife, Disposition, FailureState, OpenChallenge, StoreError};
use crate::wire::request::{Answer, Page};
use crate::wire::{AuditRecord, DeviceEntry, ErrorCode, Operation, Reply, Verdict};

impl Engine {
    /// Whether this engine keeps its state in a shared store.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// The shared store, when this engine keeps its state in one.
    pub fn cluster_store(&self) -> Option<&ClusterStore> {
        self.cluster.as_ref()
    }

    /// This engine over a Redis Cluster in this process's memory
    /// (`store::cluster::memory`), device secrets sealed under `cipher`:
    /// the fuzz target, the replay, the loom models and tests run the
    /// cluster's logic on it. Drive it with `memory::run_now`, after
    /// `MemoryRedis::set_now`.
    pub fn with_memory_cluster<R: CryptoRng + ?Sized>(
        self,
        memory: Arc<crate::store::cluster::memory::MemoryRedis>,
        cipher: crate::store::sealed::SecretCipher,
        rng: &mut R,
    ) -> Result<Self, StoreError> {
        use crate::store::cluster::memory::run_now;
        let redis = crate::store::cluster::redis::RedisStore::in_memory(memory);
        let codec = crate::store::records::DeviceCodec::new(cipher, self.config().devices.clone());
        let store = ClusterStore::new(redis, codec, self.config().store.cache_ttl);
        let code_key = run_now(store.sms_code_key(rng)).ok_or_else(|| {
            StoreError::Database("the in-memory store's key could not be made at once".into())
        })??;
        Ok(self.with_cluster(store, &code_key, "in-memory".into()))
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
        if let Some(refusal) = forbidden(caller.role, &operation, now) {
            return Some(refusal);
        }
        let Some(store) = &self.cluster else {
            return Some(Reply::error(
                ErrorCode::Internal,
                "this node has no shared store",
            ));
        };
        let name = operation.name();
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
            } => {
                self.cluster_verify(store, challenge, &response, now, rng)
                    .await
            }
            Operation::Enroll(request) => self.enroll(store, caller, request, now, rng).await,
            Operation::Revoke { device } => self.revoke(store, caller, device, now, rng).await,
            Operation::Erase { user } => self.erase(store, caller, &user, now, rng).await,
            Operation::Keyring { rotate } => self.keyring(store, caller, rotate, now, rng).await,
            Operation::Upgrade { finish } => self.upgrade(caller, finish, now, rng).await,
            Operation::BindPushKey { device, key } => {
                self.bind_push_key(store, caller, device, key, now, rng)
                    .await
            }
            Operation::Unlock { user, device } => {
                self.unlock(store, caller, &user, device, now, rng).await
            }
            Operation::Stats => Ok(self.stats()),
            Operation::Backup { .. } => Ok(Reply::error(
                ErrorCode::Unsupported,
                "a cluster's state lives in Redis: back it up with Redis persistence \
                 (RDB or AOF) and the deployment's key file (README)",
            )),
            Operation::EnrollPhone {
                user,
                number,
                label,
            } => {
                self.enroll_phone(store, caller, &user, number, &label, now, rng)
                    .await
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
                    rng,
                )
                .await
            }
            Operation::ImportTokens {
                import,
                commit,
                tokens,
            } => {
                self.import_tokens(store, caller, import, commit, tokens, now, rng)
                    .await
            }
            Operation::AssignToken {
                serial,
                user,
                pin,
                label,
            } => {
                let pin = pin.as_ref();
                self.assign_token(store, caller, &serial, &user, pin, &label, now, rng)
                    .await
            }
            Operation::Resync {
                device,
                first,
                second,
            } => {
                self.resync(store, caller, device, &first, &second, now, rng)
                    .await
            }
            Operation::RetireTokens { from, to, after } => {
                let range = (&from, &to, after.as_ref());
                self.retire_tokens(store, caller, range, now, rng).await
            }
            Operation::Tokens {
                filter,
                after,
                limit,
            } => {
                self.list_tokens(store, &filter, after.as_ref(), limit)
                    .await
            }
            Operation::AuditLog { after, limit } => store
                .audit_log(after, usize::from(limit))
                .await
                .map(Reply::Audit),
            Operation::SetIdentity { user, identity } => {
                self.set_identity(store, caller, &user, &identity, now, rng)
                    .await
            }
            Operation::SetOptOut { user, opted_out } => {
                self.set_opt_out(store, caller, &user, opted_out, now, rng)
                    .await
            }
            Operation::ShareDevice {
                requesting_user,
                owner_user,
                device,
                challenge,
                response,
            } => {
                let (requester, owner) = (&requesting_user, &owner_user);
                match self
                    .share_request_refusal(store, requester, owner, device)
                    .await
                {
                    Ok(Some(refusal)) => Ok(refusal),
                    Ok(None) => match self
                        .cluster_verify(store, challenge, &response, now, rng)
                        .await
                    {
                        Ok(proof) => {
                            self.share_proven(
                                store, caller, requester, owner, device, proof, now, rng,
                            )
                            .await
                        }
                        Err(error) => Err(error),
                    },
                    Err(error) => Err(error),
                }
            }
            Operation::DecideShare { share, approve } => {
                self.decide_share(store, caller, share, approve, now, rng)
                    .await
            }
            Operation::CancelShare { share } => {
                self.cancel_share(store, caller, share, now, rng).await
            }
            Operation::Shares { page } => self.list_shares(store, page).await,
            Operation::IssueTemporaryCode { user } => {
                self.issue_temporary_code(store, caller, &user, now, rng)
                    .await
            }
            Operation::OrderReplacement { lost, pin, label } => {
                let pin = pin.as_ref();
                self.order_replacement(store, caller, lost, pin, &label, now, rng)
                    .await
            }
            Operation::ShipReplacement { device, shipped_at } => {
                self.ship_replacement(store, caller, device, shipped_at, now, rng)
                    .await
            }
            Operation::PendingActivations { page } => {
                self.pending_activations(store, now, page).await
            }
            Operation::StartPhoneVerification { user, number } => {
                let node = Clustered {
                    engine: self,
                    store,
                };
                self.start_phone_verification(&node, &user, number, now, rng)
                    .await
            }
            Operation::ConfirmPhone { user, code } => {
                let node = Clustered {
                    engine: self,
                    store,
                };
                self.confirm_phone(&node, caller, &user, &code, now, rng)
                    .await
            }
            Operation::ChangePin {
                user,
                device,
                challenge,
                pin,
                response,
            } => {
                let node = Clustered {
                    engine: self,
                    store,
                };
                let new = super::pin::NewPin {
                    user: Some(&user),
                    device,
                    challenge,
                    pin: &pin,
                    response: &response,
                };
                let by_user = super::pin::PinChange::ByUser;
                self.change_pin(&node, caller, by_user, new, now, rng)
                    .await
                    .map(|outcome| outcome.reply)
            }
            Operation::ResetPin {
                device,
                challenge,
                pin,
                response,
            } => {
                let node = Clustered {
                    engine: self,
                    store,
                };
                let pin = pin.as_ref();
                self.reset_pin(&node, caller, device, challenge, pin, &response, now, rng)
                    .await
                    .map(|outcome| outcome.reply)
            }
            Operation::StartActivation { user } => {
                let node = Clustered {
                    engine: self,
                    store,
                };
                self.start_activation(&node, &user, now, rng)
                    .await
                    .map(|outcome| outcome.reply)
            }
            Operation::CompleteActivation {
                activation,
                token,
                key,
                pin,
                previous,
                sms_token,
            } => {
                let node = Clustered {
                    engine: self,
                    store,
                };
                self.complete_activation(
                    &node,
                    caller,
                    activation,
                    &token,
                    sms_token.as_ref(),
                    key,
                    &pin,
                    previous,
                    now,
                    rng,
                )
                .await
                .map(|outcome| outcome.reply)
            }
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
        let rate = self.config().challenges.issuance_rate();
        Ok(match store.count_issuance(user, now, rate).await? {
            Decision::Deny { retry_after } => Some(Reply::rate_limited(retry_after, why)),
            Decision::Allow => None,
        })
    }

    /// The devices `user` may log in with at `now`: their own usable ones,
    /// or, while they use a shared device, that device instead (the choice
    /// `Engine::login_devices` makes on the embedded store).
    pub(super) async fn cluster_login_devices(
        &self,
        store: &ClusterStore,
        user: &Username,
        now: Timestamp,
    ) -> Result<Vec<Arc<Device>>, StoreError> {
        let life = store.life_of(user).await?;
        if let Some(share) = life.active_share() {
            return Ok(self
                .shared_device(store, share.device, now)
                .await?
                .into_iter()
                .collect());
        }
        let devices = store.devices_of(user).await?;
        Ok(devices
            .into_iter()
            .filter(|d| life.allows(d, now))
            .collect())
    }

    /// `device` if `user` may log in with it at `now` (what
    /// `cluster_login_devices` would list, without listing).
    pub(super) async fn cluster_login_device(
        &self,
        store: &ClusterStore,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<Option<Arc<Device>>, StoreError> {
        let life = store.life_of(user).await?;
        match life.active_share() {
            Some(share) if share.device == device => self.shared_device(store, device, now).await,
            Some(_) => Ok(None),
            None => Ok(store
                .device(device)
                .await?
                .filter(|d| &d.user == user && life.allows(d, now))),
        }
    }

    /// Another user's device used through a share, if its owner's records
    /// let it be used at `now`.
    async fn shared_device(
        &self,
        store: &ClusterStore,
        device: DeviceId,
        now: Timestamp,
    ) -> Result<Option<Arc<Device>>, StoreError> {
        let Some(device) = store.device(device).await? else {
            return Ok(None);
        };
        let owner = store.life_of(&device.user).await?;
        Ok(owner.allows(&device, now).then_some(device))
    }

    /// `Devices` (a login: the devices it may use) and `ListDevices` (an
    /// operator, `Some(page)`: every device with its status, a page at a
    /// time by device id), with the statuses `rules::devices` gives on
    /// either store.
    async fn cluster_devices(
        &self,
        store: &ClusterStore,
        user: &Username,
        now: Timestamp,
        page: Option<Page>,
    ) -> Result<Reply, StoreError> {
        // The device ids, every failure state, the account (opt-out) and
        // the lifecycle record in one round trip: they live with the user.
        let (ids, records) = store
            .read_devices(user, &[UserRecord::Account, UserRecord::Life])
            .await?;
        let [account, life] = records.as_slice() else {
            return Err(StoreError::Database("a short read".into()));
        };
        let account = store.account(user, account)?;
        let life = store.user_life(user, life)?;
        // The devices themselves from this node's cache (a forged one is
        // left out: the user's other devices still work).
        let mut own = Vec::with_capacity(ids.len());
        for (id, failures) in ids {
            match store.device(id).await {
                Ok(Some(device)) if &device.user == user => own.push((device, failures)),
                Ok(_) | Err(StoreError::Forged(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let share = life.active_share();
        let shared = match (share, page) {
            (Some(share), Some(_)) => store.device(share.device).await?,
            (Some(share), None) => self.shared_device(store, share.device, now).await?,
            (None, _) => None,
        };
        let mut entries = Vec::with_capacity(own.len() + 1);
        for (device, failures) in &own {
            if life.retired.contains(&device.id) {
                continue;
            }
            let state = life.life(device.id);
            let status = rules::devices::status(device, &state, share.is_some(), now);
            let listed = match page {
                Some(_) => true,
                None => share.is_none() && life.allows(device, now),
            };
            if listed {
                entries.push(device_entry(device, failures, status, None, now));
            }
        }
        if let Some(device) = &shared {
            let failures = store.failures_of(device).await?;
            let owner = Some(device.user.clone());
            let status = crate::wire::DeviceStatus::Active;
            entries.push(device_entry(device, &failures, status, owner, now));
        }
        let devices = match page {
            Some(page) => page.select(entries, |d| d.device.0),
            None => entries,
        };
        Ok(Reply::Devices {
            required: !account.opted_out,
            devices,
        })
    }

    pub(super) async fn cluster_challenge<R: CryptoRng + ?Sized>(
        &self,
        store: &ClusterStore,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let why = "too many challenges for this user";
        // An unknown user and another user's device answer the same way;
        // another user's device only through the user's share in effect.
        // Either way the issuance counts first, as on the embedded store
        // (the limit tells nothing about which names exist); on the way to
        // a challenge it is counted in the read of the device's records.
        let refused = |reply: Reply| async move {
            Ok(match self.cluster_issuance(store, user, now, why).await? {
                Some(limited) => limited,
                None => reply,
            })
        };
        let unusable = || {
            Reply::error(
                ErrorCode::NotFound,
                "no such device for this user, or it cannot be used now",
            )
        };
        let Some(device) = store.device(device).await? else {
            return refused(unusable()).await;
        };
        let shared = &device.user != user;
        if shared
            && store
                .life_of(user)
                .await?
                .active_share()
                .is_none_or(|s| s.device != device.id)
        {
            return refused(unusable()).await;
        }
        if device.expired_at(now) {
            let ended = Reply::error(ErrorCode::NotFound, "the device's validity has ended");
            return refused(ended).await;
        }
        // A shared device's records live in another slot than the
        // requester's limit: counted on its own.
        let mut counted = false;
        if shared {
            if let Some(limited) = self.cluster_issuance(store, user, now, why).await? {
                return Ok(limited);
            }
            counted = true;
        }
        let ttl = self.config().challenges.ttl;
        let failures_of = UserRecord::Failures(device.id);
        let questions_of = UserRecord::Questions(device.id);
        // The device's records live with its owner, whoever asks.
        let owner = &device.user;
        let read = [failures_of, questions_of, UserRecord::Life];
        let rate = self.config().challenges.issuance_rate();
        // Ids carry the slot of the owner's records and 50 random bits (a
        // collision takes another), and the device's records change under
        // a verify on any node (decided again on what changed).
        //
        // The records as this node last saw them (a `Devices` just before
        // read them) are decided on, and the issuance counted in the write
        // that checks their versions: one round trip. A refusal is never
        // decided on them: it is read again, counted, first.
        let mut known = if counted {
            None
        } else {
            store.recalled(owner, &read)
        };
        let mut rounds = store.rounds();
        while rounds.next().await {
            let remembered = known.is_some() && !counted;
            let records = match known.take() {
                Some(records) => records,
                None if counted => store.read_user(owner, &read).await?,
                None => {
                    counted = true;
                    let (decision, records) = store.issue_and_read(owner, rate, now, &read).await?;
                    if let Decision::Deny { retry_after } = decision {
                        return Ok(Reply::rate_limited(retry_after, why));
                    }
                    records
                }
            };
            let [failures_record, questions_record, life_record] = records.as_slice() else {
                return Err(StoreError::Database("a short read".into()));
            };
            // A shipped replacement may be asked before it activates
            // itself: the right answer activates it.
            let lives = store.user_life(owner, life_record)?;
            let life = lives.life(device.id);
            let allowed = !lives.retired.contains(&device.id)
                && if shared {
                    lives.allows(&device, now)
                } else {
                    let suspended = lives.active_share().is_some();
                    rules::devices::challengeable(&device, &life, suspended, now)
                };
            if !allowed {
                if remembered {
                    continue;
                }
                return Ok(unusable());
            }
            let id = slots::challenge_id(ClusterStore::user_slot(owner), rng);
            let mut failures = failure_state(device.id, failures_record)?;
            let mut questions = question_memory(device.id, questions_record)?;
            let asked = match rules::ask::ask_device(
                &self.config(),
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
                Err(_) if remembered => continue,
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
                // New (version 0: a colliding id is a conflict), naming the
                // records a verify reads with it.
                (
                    UserRecord::Challenge(id),
                    0,
                    Op::Link(
                        asked.open.encode(),
                        Some(ttl + EXPIRED_GRACE),
                        ClusterStore::record_names(owner, &read),
                    ),
                ),
                (
                    questions_of,
                    questions_record.version,
                    Op::Set(questions.encode(), None),
                ),
                (failures_of, failures_record.version, charged),
                // Asked on the device's state as read: a change that
                // retires or suspends it meanwhile decides again.
                (UserRecord::Life, life_record.version, Op::Keep),
            ];
            let written = if remembered {
                counted = true;
                match store
                    .issue_and_write(owner, rate, now, &changes, &read)
                    .await?
                {
                    IssuedWrite::Denied(retry_after) => {
                        return Ok(Reply::rate_limited(retry_after, why));
                    }
                    IssuedWrite::Written => true,
                    IssuedWrite::Moved(records) => {
                        known = Some(records);
                        false
                    }
                }
            } else {
                store.write_user(owner, &changes, true).await?
            };
            if written {
                if asked.locked {
                    self.count_lockout(&device.user, device.id, now);
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
            "the device's records kept changing; retry",
        ))
    }

    pub(super) async fn cluster_verify<R: CryptoRng + ?Sized>(
        &self,
        store: &ClusterStore,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        self.cluster_verify_with(store, id, answer, None, now, rng)
            .await
    }

    /// `Verify`, or with a PIN on `trial` (a PIN change).
    pub(super) async fn cluster_verify_with<R: CryptoRng + ?Sized>(
        &self,
        store: &ClusterStore,
        id: ChallengeId,
        answer: &Answer,
        trial: Option<&rules::verify::PinTrial>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let verdict = self.cluster_verdict(store, id, answer, trial, now).await?;
        let Some((verdict, life)) = verdict else {
            return Ok(Reply::error(
                ErrorCode::Busy,
                "the challenge kept changing; retry",
            ));
        };
        let verdict = self.after_accept(store, verdict, &life, now, rng).await;
        self.count_verdict(&verdict);
        Ok(Reply::Verdict(verdict))
    }

    /// Reads the challenge and its device's failure state together, judges
    /// the answer, and writes the outcome to both at once if neither
    /// changed meanwhile (another verify, on any node, of this challenge
    /// or another of the device's); otherwise judges again on what changed.
    /// With the verdict, the device's lifecycle state as read with it (what
    /// an accepted answer does to the device). `None`: it kept changing.
    async fn cluster_verdict(
        &self,
        store: &ClusterStore,
        id: ChallengeId,
        answer: &Answer,
        trial: Option<&rules::verify::PinTrial>,
        now: Timestamp,
    ) -> Result<Option<(Verdict, DeviceLife)>, StoreError> {
        let unknown = Some((Verdict::UnknownChallenge, DeviceLife::default()));
        let challenge = UserRecord::Challenge(id);
        // On the node that asked, the challenge and its device's records as
        // it wrote them are decided on first: the write, which checks
        // their versions, is then the only round trip. Anything but a
        // write decided on them is read again.
        let mut recall = true;
        let mut rounds = store.rounds();
        while rounds.next().await {
            let recalled = std::mem::take(&mut recall)
                .then(|| store.recalled_challenge(id))
                .flatten();
            // Else the challenge and the records it was written with, by
            // its id alone (it carries their slot).
            let (record, linked) = match recalled {
                Some(record) => (record, None),
                None => match store.read_challenge(id).await? {
                    Some((record, linked)) => (record, Some(linked)),
                    None => return Ok(unknown),
                },
            };
            let remembered = linked.is_none();
            let Some(open) = record.value.as_deref().and_then(OpenChallenge::decode) else {
                return Ok(unknown);
            };
            let failures_of = UserRecord::Failures(open.device);
            let questions_of = UserRecord::Questions(open.device);
            let found = store.device(open.device).await?;
            if remembered && found.is_none() {
                continue;
            }
            let Some(device) = found else {
                // Revoked since the challenge was issued: it goes.
                let used_up = (challenge, record.version, Op::Delete);
                store.write_user(&open.user, &[used_up], true).await?;
                let verdict = rules::verify::revoked(&open, now).verdict;
                return Ok(Some((verdict, DeviceLife::default())));
            };
            let user = device.user.clone();
            let wanted = [failures_of, questions_of, UserRecord::Life];
            let records = match linked {
                Some(linked) => store.linked_records(&user, &wanted, linked)?,
                None => match store.recalled(&user, &wanted) {
                    Some(records) => records,
                    None => continue,
                },
            };
            let [failures_record, questions_record, life_record] = records.as_slice() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let lives = store.user_life(&user, life_record)?;
            let retired = lives.retired.contains(&device.id);
            if remembered && retired {
                continue;
            }
            if retired {
                // Retired since the challenge was issued: it goes.
                let used_up = (challenge, record.version, Op::Delete);
                store.write_user(&user, &[used_up], true).await?;
                let verdict = rules::verify::revoked(&open, now).verdict;
                return Ok(Some((verdict, DeviceLife::default())));
            }
            let life = lives.life(device.id);
            let Ok(pin) = rules::verify::pin_for(trial, device.id, &life) else {
                return Ok(unknown);
            };
            let failures = failure_state(device.id, failures_record)?;
            let questions = question_memory(device.id, questions_record)?;
            let (mut after, mut asked, mut judged) = (failures, questions.clone(), open.clone());
            let decided = rules::verify::decide(
                id,
                &mut judged,
                (&device, pin),
                &mut after,
                &mut asked,
                answer,
                now,
                &self.config(),
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
            let asked_now = if asked == questions {
                Op::Keep
            } else {
                Op::Set(asked.encode(), None)
            };
            let changes = [
                (challenge, record.version, kept),
                (failures_of, failures_record.version, failed),
                (questions_of, questions_record.version, asked_now),
                // Judged on the device's lifecycle as read: a change that
                // retires it meanwhile decides again.
                (UserRecord::Life, life_record.version, Op::Keep),
            ];
            if changes.iter().all(|(_, _, op)| *op == Op::Keep) {
                if remembered {
                    continue;
                }
                return Ok(Some((decided.verdict, life)));
            }
            if store.write_user(&user, &changes, true).await? {
                if decided.locked {
                    self.count_lockout(&device.user, device.id, now);
                }
                return Ok(Some((decided.verdict, life)));
            }
        }
        Ok(None)
    }
}

impl Engine {
    /// `AuthorizeWithdrawal` on the shared store: the answer is verified
    /// as by `Verify` (on any node), then the amount is booked on the
    /// user's slot in one step against both limits.
    #[allow(clippy::too_many_arguments)]
    async fn cluster_authorize_withdrawal<R: CryptoRng + ?Sized>(
        &self,
        store: &ClusterStore,
        caller: &Caller<'_>,
        user: &Username,
        amount: u64,
        challenge: ChallengeId,
        response: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        if let Some(refusal) = invalid_amount(amount) {
            return Ok(refusal);
        }
        let verdict = self
            .cluster_verify(store, challenge, response, now, rng)
            .await?;
        let (device, kind) = match withdrawal_device(&verdict, user) {
            Ok(answered) => answered,
            Err(refusal) => return Ok(refusal.unwrap_or(verdict)),
        };
        let today = Day::of(now);
        let start = self.config().withdrawals.holidays.window_start(today, 5);
        let limit = self.config().devices.get(kind).withdrawal_limit;
        let cents = |dollars: Option<u64>| dollars.map(|d| d.saturating_mul(100));
        let limits = (cents(limit.per_day), cents(limit.per_five_business_days));
        let (booked, withdrawn) = store
            .book_withdrawal(
                user,
                start,
                today,
                amount,
                limits,
                self.config().withdrawals.ledger_days,
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
            let entry = AuditRecord {
                seq: 0,
                at: now,
                actor: Self::actor(caller).0.to_owned(),
                action: "withdrawal-approved".to_owned(),
                user: Some(user.clone()),
                device: Some(device),
                detail: withdrawal_detail(amount, kind, today),
            };
            store.audit(&entry).await?;
        }
        Ok(decision)
    }
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

/// How a device shows in `Devices` and `ListDevices`.
fn device_entry(
    device: &Device,
    failures: &FailureState,
    status: crate::wire::DeviceStatus,
    owner: Option<Username>,
    now: Timestamp,
) -> DeviceEntry {
    DeviceEntry {
        device: device.id,
        kind: device.kind,
        label: device.label.to_string(),
        locked_for: failures.locked_for(now),
        status,
        owner,
    }
}
