//! The verification state machine: request → role check → rate limit →
//! verify → store → reply.
//!
//! Here: the engine's state and the dispatch of an operation on the
//! embedded store. The decisions themselves are pure, in `rules`; who
//! may ask what in `facts` and `caller`; the node's rate limits in
//! `limits`. Challenge/response in `login`; enrolment, revocation and
//! unlocking in `enrolment`; SMS and voice codes in `sms`; IB Key push
//! approval in `push`, its signatures checked in batches in `signatures`;
//! the carrier channel's bridges and outbox in `relay`; the Secure Login
//! System's device lifecycle in `lifecycle` and `activation`, written once
//! over the `node::Node` both stores implement; the same login operations
//! on a store shared by several nodes in `cluster`.
//!
//! Deterministic given its inputs: time comes in as a [`Timestamp`] and
//! randomness as a `CryptoRng`, so tests and fuzzers drive it on a virtual
//! clock. On the embedded store it does no network I/O and never waits: a
//! change the reply depends on (a failure count, a lockout) is handed back
//! in [`Outcome::persist`] for the caller to commit before it sends the
//! reply. The one exception is the server's [`Engine::approve`], which
//! waits for its batch of signature checks (`signatures`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::CryptoRng;

mod activation;
mod caller;
mod cluster;
mod enrolment;
mod erasure;
mod facts;
mod lifecycle;
mod limits;
mod login;
mod node;
mod pin;
mod push;
mod relay;
mod rotation;
mod rules;
mod signatures;
mod sms;
mod tokens;
mod upgrade;

pub use caller::{Caller, ReplyLog, Role, Sink, StreamId};
use facts::forbidden;
pub use facts::{Facts, facts};
pub use lifecycle::MAX_WITHDRAWAL_CENTS;
use limits::{KeyedLimits, UserLimits};

use crate::clock::Timestamp;
use crate::config::Config;
use crate::identity::DeviceId;
use crate::store::StoreError;
use crate::store::embedded::challenges::ChallengeTable;
use crate::store::embedded::ledger::Booking;
use crate::store::embedded::registry::Registry;
use crate::wire::{ErrorCode, Operation, Reply, StatEntry};

/// Shards of the open-challenge table.
const CHALLENGE_SHARDS: usize = 256;

/// Sizes of the ephemeral tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub open_challenges: usize,
    pub live_codes: usize,
    pub pending_pushes: usize,
    pub outbox: usize,
}

/// A reply, and what must be committed before the reply is sent: the
/// device whose failure state changed, and an approved withdrawal's
/// booking.
///
/// Only the device is named, not a snapshot of its state: the committer
/// writes the state as it is when it commits, so concurrent changes to one
/// device can never be written out of order.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub persist: Option<DeviceId>,
    pub booking: Option<Box<Booking>>,
}

impl Outcome {
    /// Whether the reply may go at once (nothing to commit first).
    pub fn is_final(&self) -> bool {
        self.persist.is_none() && self.booking.is_none()
    }
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Self {
            reply,
            persist: None,
            booking: None,
        }
    }
}

/// The reply of an operation written over [`crate::store::Store`], run on
/// the embedded store: its futures are ready at once (it never waits), so
/// one poll finishes it; a store failure is an `Internal` error.
fn at_once<T: Into<Reply>>(
    operation: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Reply {
    ready(operation).map_or_else(|e| lifecycle::store_failed(&e), Into::into)
}

/// The outcome of an operation over the embedded store, or its failure.
fn embedded_outcome(result: Result<Outcome, StoreError>) -> Outcome {
    result.unwrap_or_else(|e| lifecycle::store_failed(&e).into())
}

/// The output of a future of the embedded store, which is ready at once.
fn ready<T>(
    future: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => output,
        std::task::Poll::Pending => Err(StoreError::Database(
            "the embedded store waited, which it never does".into(),
        )),
    }
}

#[derive(Default)]
struct Counters {
    issued: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    locked_out: AtomicU64,
    lockouts: AtomicU64,
    codes_sent: AtomicU64,
    pushes: AtomicU64,
}

/// The engine: shared by every connection.
pub struct Engine {
    /// The running configuration, swapped whole by a reload
    /// ([`Engine::reconfigure`]): read it where it is used, never copy it.
    config: arc_swap::ArcSwap<Config>,
    registry: Arc<Registry>,
    challenges: ChallengeTable,
    user_limits: UserLimits,
    /// SMS and voice sends per phone number and per country code.
    number_limits: KeyedLimits,
    range_limits: KeyedLimits,
    prefix_limits: KeyedLimits,
    codes: sms::CodeTable,
    /// Phone confirm codes and IB Key activation tokens.
    tokens: activation::TokenTable,
    outbox: relay::Outbox,
    pushes: push::PushTable,
    alphabets: rules::ask::QuestionAlphabets,
    counters: Counters,
    /// The deployment's shared store, when it has one (`shared/`).
    cluster: Option<crate::store::cluster::ClusterStore>,
    /// On a shared store: delivery changes from timeouts and disconnects,
    /// waiting for the next relay round to write them.
    relay_changes: Mutex<Vec<relay::StatusChange>>,
    /// On a shared store: when this node last said it has bridges (0: it
    /// has not, or has withdrawn it).
    bridges_announced: AtomicU64,
    /// On a shared store: this node's name in it, when it last renewed its
    /// phones' links, the devices whose phones left since the last relay
    /// round, and the gateways waiting here on pushes.
    node: String,
    links_renewed: AtomicU64,
    relay_unlinks: Mutex<Vec<DeviceId>>,
    push_waiters: Mutex<cluster::Waiters>,
    /// A push key nobody holds the private half of: subscriptions for
    /// devices without a key are checked against it, so they cost what a
    /// real one costs.
    decoy_push_key: crate::otp::push::PushKey,
    /// Approvals' signatures, checked together on threads of their own.
    signatures: signatures::SignatureChecks,
    /// Woken by a key rotation: the re-seal pass's task waits on it.
    rotation: tokio::sync::Notify,
    /// Records this node's re-seal passes sealed again.
    resealed: AtomicU64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("open_challenges", &self.challenges.len())
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine over `registry`; `rng` keys the per-user limiter's hash
    /// (the server passes the OS generator, replayable runs a seeded one).
    pub fn new<R: CryptoRng + ?Sized>(
        config: Arc<Config>,
        registry: Arc<Registry>,
        rng: &mut R,
    ) -> Self {
        let mut key = || {
            let mut key = [0u8; 16];
            rng.fill_bytes(&mut key);
            key
        };
        let buckets = config.challenges.user_limit_buckets;
        let user_limits = UserLimits::new(buckets, key(), key());
        let number_limits = KeyedLimits::new(buckets, key());
        let range_limits = KeyedLimits::new(buckets, key());
        // One bucket per country calling code (1..=999).
        let prefix_limits = KeyedLimits::new(1000, key());
        let mut decoy_seed = [0u8; 32];
        rng.fill_bytes(&mut decoy_seed);
        let decoy_push_key = crate::otp::push::PushSigner::from_seed(decoy_seed).public();
        let mut code_key = [0u8; 32];
        rng.fill_bytes(&mut code_key);
        let code_key = crate::otp::SecretKey::from_array(code_key);
        Self {
            challenges: ChallengeTable::new(config.challenges.capacity, CHALLENGE_SHARDS),
            user_limits,
            number_limits,
            range_limits,
            prefix_limits,
            tokens: activation::TokenTable::new(config.lifecycle.token_capacity),
            codes: sms::CodeTable::new(&code_key, Self::sms_code_spec(&config)),
            outbox: relay::Outbox::new(config.carrier.clone()),
            pushes: push::PushTable::new(),
            alphabets: rules::ask::QuestionAlphabets::new(),
            counters: Counters::default(),
            cluster: None,
            relay_changes: Mutex::new(Vec::new()),
            bridges_announced: AtomicU64::new(0),
            node: String::new(),
            links_renewed: AtomicU64::new(0),
            relay_unlinks: Mutex::new(Vec::new()),
            push_waiters: Mutex::new(cluster::Waiters::new()),
            decoy_push_key,
            signatures: signatures::SignatureChecks::Inline,
            rotation: tokio::sync::Notify::new(),
            resealed: AtomicU64::new(0),
            config: arc_swap::ArcSwap::new(config),
            registry,
        }
    }

    /// Keeps state in `store`, shared with the deployment's other nodes,
    /// instead of this node's memory and database; SMS codes are derived
    /// with `code_key`, the deployment's (`ClusterStore::sms_code_key`);
    /// `node` names this process to the others (unique, e.g. random).
    pub fn with_cluster(
        mut self,
        store: crate::store::cluster::ClusterStore,
        code_key: &crate::otp::SecretKey,
        node: String,
    ) -> Self {
        let spec = Self::sms_code_spec(&self.config());
        self.codes = sms::CodeTable::new(code_key, spec);
        self.cluster = Some(store);
        self.node = node;
        self
    }

    /// Checks push approvals' signatures in batches on threads of their
    /// own (`signatures`), for [`Engine::approve`] and the cluster's
    /// approvals, instead of inline: the server's engine.
    pub fn check_signatures_in_batches(mut self) -> Self {
        self.signatures = signatures::SignatureChecks::batched(&self.config().push);
        self
    }

    /// What a bridge's report, a timeout or a disconnect did to deliveries:
    /// into the code table, or on a shared store into the queue the next
    /// relay round writes.
    fn delivery_changed(&self, changes: Vec<relay::StatusChange>) {
        if self.cluster.is_some() {
            self.relay_changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(changes);
        } else {
            self.codes.update(changes);
        }
    }

    /// The configuration as it is now.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Runs on `new` from the next request on, if a running daemon may
    /// take every key it changes (`config::LIVE_KEYS`); answers those
    /// keys. Otherwise nothing changes, and the refusal names the keys.
    ///
    /// The few numbers a table keeps of its own (its capacity, the
    /// carrier's attempts) are handed to it here; everything else is read
    /// from the configuration where it is used.
    pub fn reconfigure(&self, new: Config) -> Result<Vec<String>, crate::config::ReloadRefused> {
        let changed = self.config.load().live_changes(&new)?;
        self.challenges.set_capacity(new.challenges.capacity);
        self.tokens.set_capacity(new.lifecycle.token_capacity);
        self.outbox.reconfigure(new.carrier.clone());
        self.config.store(Arc::new(new));
        Ok(changed)
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn open_challenges(&self) -> usize {
        self.challenges.len()
    }

    /// The sizes of the ephemeral tables, for gauges.
    pub fn gauges(&self) -> Gauges {
        Gauges {
            open_challenges: self.challenges.len(),
            live_codes: self.codes.len(),
            pending_pushes: self.pushes.pending(),
            outbox: self.outbox.in_flight(),
        }
    }

    /// Drops expired challenges and codes (and a cluster store's cached
    /// devices and remembered records older than `cache-ttl`); call it
    /// every second or so.
    pub fn sweep(&self, now: Timestamp) -> usize {
        let cached = self.cluster.as_ref().map_or(0, |store| store.sweep());
        self.user_limits.sweep(now);
        self.challenges.sweep(now) + self.codes.sweep(now) + self.tokens.sweep(now) + cached
    }

    /// Fails over unacknowledged messages and expires pushes (waiting
    /// gateways learn `Expired`); call it every 100 ms or so.
    pub fn tick(&self, now: Timestamp) {
        self.delivery_changed(self.outbox.sweep(now));
        self.pushes.sweep(now);
        if self.cluster.is_some() {
            self.expire_waiters(now);
        }
    }

    /// The server is stopping: every gateway waiting on a push hears
    /// `Error { ShuttingDown }` now, not nothing when the connection closes.
    pub fn shutting_down(&self) {
        self.pushes.release_waiters();
        if self.cluster.is_some() {
            self.release_cluster_waiters();
        }
    }

    /// A stream ended: its subscriptions end, and a bridge's unacknowledged
    /// messages go to the other bridges.
    pub fn stream_closed(&self, stream: StreamId, now: Timestamp) {
        let gone = self.pushes.stream_closed(stream);
        if self.cluster.is_some() {
            self.relay_unlinks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(gone);
        }
        self.delivery_changed(self.outbox.stream_closed(stream, now));
    }

    /// Handles one operation from a caller of `role` that has no stream
    /// (it cannot subscribe, and `AwaitPush` answers only a settled push).
    /// An approved withdrawal is durable when it returns; a failure state
    /// in [`Outcome::persist`] is the caller's to commit.
    pub fn handle<R: CryptoRng + ?Sized>(
        &self,
        role: Role,
        operation: Operation,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        let Some(mut outcome) = self.handle_from(&Caller::detached(role), operation, now, rng)
        else {
            return Reply::error(ErrorCode::InvalidArgument, "this operation needs a stream")
                .into();
        };
        // No committer here: a booking is written before the reply, as the
        // server's committer would (failure states stay the caller's).
        if let Some(booking) = outcome.booking.take()
            && let Err(error) = self.registry.save(&[], &[&booking])
        {
            outcome.reply = lifecycle::store_failed(&error);
        }
        outcome
    }

    /// Handles one operation. `None`: the answer will be written to the
    /// caller's sink later (`AwaitPush` on a push not yet answered).
    pub fn handle_from<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        operation: Operation,
        now: Timestamp,
        rng: &mut R,
    ) -> Option<Outcome> {
        if let Some(refusal) = forbidden(caller.role, &operation, now) {
            return Some(refusal.into());
        }
        Some(match operation {
            Operation::Devices { user } => self.device_list(&user, now, None).into(),
            Operation::ListDevices { user, page } => {
                self.device_list(&user, now, Some(page)).into()
            }
            Operation::Challenge { user, device } => self.challenge(&user, device, now, rng),
            Operation::Verify {
                challenge,
                response,
            } => self.verify(challenge, &response, now, rng),
            Operation::Enroll(request) => {
                let store = self.registry.as_ref();
                at_once(self.enroll(store, caller, request, now, rng)).into()
            }
            Operation::Revoke { device } => {
                at_once(self.revoke(self.registry.as_ref(), caller, device, now, rng)).into()
            }
            Operation::Erase { user } => {
                at_once(self.erase(self.registry.as_ref(), caller, &user, now, rng)).into()
            }
            Operation::Keyring { rotate } => {
                let store = self.registry.as_ref();
                at_once(self.keyring(store, caller, rotate, now, rng)).into()
            }
            Operation::Upgrade { finish } => at_once(self.upgrade(caller, finish, now, rng)).into(),
            Operation::Unlock { user, device } => {
                let store = self.registry.as_ref();
                at_once(self.unlock(store, caller, &user, device, now, rng)).into()
            }
            Operation::AuthorizeWithdrawal {
                user,
                amount_cents,
                challenge,
                response,
            } => self.authorize_withdrawal(
                caller,
                &user,
                amount_cents,
                challenge,
                &response,
                now,
                rng,
            ),
            Operation::SetIdentity { user, identity } => {
                let store = self.registry.as_ref();
                at_once(self.set_identity(store, caller, &user, &identity, now, rng)).into()
            }
            Operation::SetOptOut { user, opted_out } => {
                let store = self.registry.as_ref();
                at_once(self.set_opt_out(store, caller, &user, opted_out, now, rng)).into()
            }
            Operation::ShareDevice {
                requesting_user,
                owner_user,
                device,
                challenge,
                response,
            } => {
                let store = self.registry.as_ref();
                let asked =
                    self.share_request_refusal(store, &requesting_user, &owner_user, device);
                match ready(asked) {
                    Ok(None) => {}
                    Ok(Some(refusal)) => return Some(refusal.into()),
                    Err(error) => return Some(lifecycle::store_failed(&error).into()),
                }
                // The proof: the device itself answers a challenge opened for it.
                let mut outcome = self.verify(challenge, &response, now, rng);
                let proof = std::mem::replace(&mut outcome.reply, Reply::Done);
                let shared = self.share_proven(
                    store,
                    caller,
                    &requesting_user,
                    &owner_user,
                    device,
                    proof,
                    now,
                    rng,
                );
                outcome.reply = at_once(shared);
                outcome
            }
            Operation::DecideShare { share, approve } => {
                let store = self.registry.as_ref();
                at_once(self.decide_share(store, caller, share, approve, now, rng)).into()
            }
            Operation::CancelShare { share } => {
                let store = self.registry.as_ref();
                at_once(self.cancel_share(store, caller, share, now, rng)).into()
            }
            Operation::Shares { page } => {
                at_once(self.list_shares(self.registry.as_ref(), page)).into()
            }
            Operation::IssueTemporaryCode { user } => {
                let store = self.registry.as_ref();
                at_once(self.issue_temporary_code(store, caller, &user, now, rng)).into()
            }
            Operation::OrderReplacement { lost, pin, label } => {
                let store = self.registry.as_ref();
                let pin = pin.as_ref();
                at_once(self.order_replacement(store, caller, lost, pin, &label, now, rng)).into()
            }
            Operation::ShipReplacement { device, shipped_at } => {
                let store = self.registry.as_ref();
                at_once(self.ship_replacement(store, caller, device, shipped_at, now, rng)).into()
            }
            Operation::PendingActivations { page } => {
                at_once(self.pending_activations(self.registry.as_ref(), now, page)).into()
            }
            Operation::StartPhoneVerification { user, number } => {
                let node = node::Embedded(self);
                at_once(self.start_phone_verification(&node, &user, number, now, rng)).into()
            }
            Operation::ConfirmPhone { user, code } => {
                let node = node::Embedded(self);
                at_once(self.confirm_phone(&node, caller, &user, &code, now, rng)).into()
            }
            Operation::ChangePin {
                user,
                device,
                challenge,
                pin,
                response,
            } => {
                let node = node::Embedded(self);
                let new = pin::NewPin {
                    user: Some(&user),
                    device,
                    challenge,
                    pin: &pin,
                    response: &response,
                };
                let by_user = pin::PinChange::ByUser;
                embedded_outcome(ready(
                    self.change_pin(&node, caller, by_user, new, now, rng),
                ))
            }
            Operation::ResetPin {
                device,
                challenge,
                pin,
                response,
            } => {
                let node = node::Embedded(self);
                let pin = pin.as_ref();
                embedded_outcome(ready(
                    self.reset_pin(&node, caller, device, challenge, pin, &response, now, rng),
                ))
            }
            Operation::StartActivation { user } => {
                let node = node::Embedded(self);
                embedded_outcome(ready(self.start_activation(&node, &user, now, rng)))
            }
            Operation::CompleteActivation {
                activation,
                token,
                key,
                pin,
                previous,
                sms_token,
            } => {
                let node = node::Embedded(self);
                embedded_outcome(ready(self.complete_activation(
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
                )))
            }
            Operation::AuditLog { after, limit } => self.audit_log(after, limit).into(),
            Operation::ImportTokens {
                import,
                commit,
                tokens,
            } => {
                let store = self.registry.as_ref();
                at_once(self.import_tokens(store, caller, import, commit, tokens, now, rng)).into()
            }
            Operation::AssignToken {
                serial,
                user,
                pin,
                label,
            } => {
                let store = self.registry.as_ref();
                let pin = pin.as_ref();
                at_once(self.assign_token(store, caller, &serial, &user, pin, &label, now, rng))
                    .into()
            }
            Operation::Resync {
                device,
                first,
                second,
            } => {
                let store = self.registry.as_ref();
                at_once(self.resync(store, caller, device, &first, &second, now, rng)).into()
            }
            Operation::RetireTokens { from, to, after } => {
                let store = self.registry.as_ref();
                let range = (&from, &to, after.as_ref());
                at_once(self.retire_tokens(store, caller, range, now, rng)).into()
            }
            Operation::Tokens {
                filter,
                after,
                limit,
            } => {
                let store = self.registry.as_ref();
                at_once(self.list_tokens(store, &filter, after.as_ref(), limit)).into()
            }
            Operation::Stats => self.stats().into(),
            Operation::Backup { path } => self.backup(&path, now).into(),
            Operation::SendCode { user, channel } => {
                self.send_code(&user, channel, now, rng).into()
            }
            Operation::VerifyCode { user, code } => self.verify_code(&user, &code, now),
            Operation::CodeStatus { code } => self.code_status(code).into(),
            Operation::Push { user, device } => self.push(&user, device, now, rng).into(),
            Operation::AwaitPush { push } => {
                return self.await_push(caller, push, now).map(Into::into);
            }
            Operation::EnrollPhone {
                user,
                number,
                label,
            } => {
                let store = self.registry.as_ref();
                at_once(self.enroll_phone(store, caller, &user, number, &label, now, rng)).into()
            }
            Operation::BindPushKey { device, key } => {
                let store = self.registry.as_ref();
                at_once(self.bind_push_key(store, caller, device, key, now, rng)).into()
            }
            Operation::CarrierSubscribe => self.carrier_subscribe(caller).into(),
            Operation::Ack { message, report } => {
                match self.outbox.ack(caller.connection, message, report, now) {
                    Some(change) => {
                        self.codes.update(vec![change]);
                        Reply::Done.into()
                    }
                    None => Reply::error(
                        ErrorCode::NotFound,
                        "no such message in flight on this connection",
                    )
                    .into(),
                }
            }
            Operation::PhoneSubscribe { device, proof } => {
                self.phone_subscribe(caller, device, &proof).into()
            }
            Operation::Approve {
                push,
                chosen,
                proof,
            } => self.answer_push(caller, push, Some((chosen, &proof)), now),
            Operation::Deny { push } => self.answer_push(caller, push, None, now),
        })
    }

    /// Makes the caller's stream a carrier bridge: messages go to it.
    fn carrier_subscribe(&self, caller: &Caller<'_>) -> Reply {
        match caller.sink {
            Some(sink) => {
                self.outbox.subscribe(
                    caller.stream,
                    caller.connection,
                    caller.request,
                    Arc::clone(sink),
                );
                Reply::Subscribed
            }
            None => Reply::error(ErrorCode::InvalidArgument, "subscribing needs a stream"),
        }
    }

    /// Writes a backup of the embedded store (`store::embedded::backup`).
    fn backup(&self, path: &str, now: Timestamp) -> Reply {
        use crate::store::embedded::backup::BackupError;
        match self.registry.backup(std::path::Path::new(path), now) {
            Ok(done) => {
                tracing::info!(
                    path = %done.path.display(),
                    bytes = done.bytes,
                    devices = done.devices,
                    took = ?done.took,
                    "backup written"
                );
                Reply::BackedUp {
                    path: done.path.display().to_string(),
                    bytes: done.bytes,
                    devices: done.devices,
                    rows: done.rows,
                    last_audit: done.last_audit,
                    took: done.took,
                }
            }
            Err(error @ (BackupError::Relative(_) | BackupError::Exists(_))) => {
                Reply::error(ErrorCode::InvalidArgument, error.to_string())
            }
            Err(error) => {
                tracing::error!(%error, "backup failed");
                Reply::error(ErrorCode::Internal, format!("backup failed: {error}"))
            }
        }
    }

    fn stats(&self) -> Reply {
        let c = &self.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (changes, flushes) = self.registry.change_counts();
        let entries = [
            ("devices", self.registry.len() as u64),
            ("open_challenges", self.challenges.len() as u64),
            ("challenges_issued", read(&c.issued)),
            ("verify_accepted", read(&c.accepted)),
            ("verify_rejected", read(&c.rejected)),
            ("verify_expired", read(&c.expired)),
            ("verify_locked_out", read(&c.locked_out)),
            ("lockouts", read(&c.lockouts)),
            ("codes_sent", read(&c.codes_sent)),
            ("live_codes", self.codes.len() as u64),
            ("pending_tokens", self.tokens.len() as u64),
            ("carrier_bridges", self.outbox.bridges() as u64),
            ("outbox", self.outbox.in_flight() as u64),
            ("pushes_sent", read(&c.pushes)),
            ("pending_pushes", self.pushes.pending() as u64),
            ("phones_connected", self.pushes.phones_connected() as u64),
            ("registry_changes", changes),
            ("registry_flushes", flushes),
        ];
        // On a shared store the device count and the tables live in the
        // store, not here: this node's counters and connections only.
        let in_store = [
            "devices",
            "open_challenges",
            "live_codes",
            "pending_pushes",
            "registry_changes",
            "registry_flushes",
        ];
        Reply::Stats(
            entries
                .into_iter()
                .filter(|(name, _)| self.cluster.is_none() || !in_store.contains(name))
                .map(|(name, value)| StatEntry {
                    name: name.into(),
                    value,
                })
                .collect(),
        )
    }
}
