//! The verification state machine: request → role check → rate limit →
//! verify → store → reply.
//!
//! The decisions themselves are pure, in [`rules`]. Challenge/response
//! lives here; SMS and voice codes in [`sms`], IB Key push approval in
//! [`push`], the carrier channel's bridges and outbox in [`relay`]; the
//! same operations on a store shared by several nodes in [`cluster`].
//!
//! Deterministic given its inputs: time comes in as a [`Timestamp`] and
//! randomness as a `CryptoRng`, so tests and fuzzers drive it on a virtual
//! clock. On the embedded store it does no network I/O and never waits: a
//! change the reply depends on (a failure count, a lockout) is handed back
//! in [`Outcome::persist`] for the caller to commit before it sends the
//! reply.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rand::CryptoRng;
use siphasher::sip::SipHasher13;

mod activation;
mod cluster;
mod lifecycle;
mod node;
mod push;
mod relay;
mod rules;
mod sms;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::otp::push::BINDING_LEN;
use crate::phone::SendLimit;
use crate::ratelimit::{Decision, Gcra, Rate};
use crate::store::Disposition;
use crate::store::embedded::challenges::{ChallengeTable, InsertError};
use crate::store::embedded::registry::Registry;
use crate::store::{Device, DeviceLife, EnrollError, FailureState, NewDevice, StoreError};
use crate::wire::request::Answer;
use crate::wire::{EnrollRequest, ErrorCode, Operation, Reply, StatEntry, Verdict};

/// Shards of the open-challenge table.
const CHALLENGE_SHARDS: usize = 256;

/// Who is calling, as named by the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Admin,
    Carrier,
    Phone,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Gateway, Self::Admin, Self::Carrier, Self::Phone];

    /// This role's place in [`Self::ALL`], for per-role arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Gateway => 0,
            Self::Admin => 1,
            Self::Carrier => 2,
            Self::Phone => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Admin => "admin",
            Self::Carrier => "carrier",
            Self::Phone => "phone",
        }
    }
}

/// A stream of the server, as the engine knows it: where frames for a
/// subscription or a pending `AwaitPush` are written.
///
/// Frames are never dropped while the stream lives: a stream whose reader
/// is behind makes them wait, which the tables that hand out frames bound
/// (the outbox, pending pushes).
pub trait Sink: Send + Sync {
    /// Queues a frame; false if the stream has ended.
    fn deliver(&self, frame: Vec<u8>) -> bool;
    /// Whether the stream has ended.
    fn is_closed(&self) -> bool;
}

/// A sink that keeps the replies written to it, for callers that drive the
/// engine in-process (tests, fuzzing, loom models) and read what a bridge,
/// phone or waiting gateway would have received.
#[derive(Debug)]
pub struct ReplyLog(crate::sync::Mutex<Vec<Reply>>);

impl Default for ReplyLog {
    fn default() -> Self {
        Self(crate::sync::Mutex::new(Vec::new()))
    }
}

impl ReplyLog {
    /// The replies written since the last call.
    pub fn take(&self) -> Vec<Reply> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Sink for ReplyLog {
    fn deliver(&self, frame: Vec<u8>) -> bool {
        // The engine writes whole, well-formed frames; one that is not is
        // kept as an `Internal` error naming the problem, so that whatever
        // compares the replies fails on it.
        let reply = match crate::wire::split_frame(&frame, crate::wire::MAX_FRAME_LIMIT) {
            Ok(Some((body, _))) => crate::wire::Response::decode(body)
                .map(|response| response.reply)
                .unwrap_or_else(|e| Reply::error(ErrorCode::Internal, format!("bad frame: {e}"))),
            other => Reply::error(ErrorCode::Internal, format!("bad frame: {other:?}")),
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reply);
        true
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// Names one stream of one connection, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

/// Who sends a request, and where later frames for it go.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub role: Role,
    /// The connection, unique for the life of the process.
    pub connection: u64,
    pub stream: StreamId,
    /// The connection's TLS exporter value (what phone proofs sign).
    pub binding: &'a [u8; BINDING_LEN],
    /// The stream's writer; `None` for callers without one (tests driving
    /// the engine directly), who cannot subscribe or wait.
    pub sink: Option<&'a Arc<dyn Sink>>,
    /// The request's id: subscription frames and late verdicts carry it.
    pub request: u64,
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("role", &self.role)
            .field("connection", &self.connection)
            .field("stream", &self.stream)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Caller<'static> {
    /// A caller with no stream and no connection binding.
    pub fn detached(role: Role) -> Self {
        const NO_BINDING: [u8; BINDING_LEN] = [0; BINDING_LEN];
        Self {
            role,
            connection: 0,
            stream: StreamId(0),
            binding: &NO_BINDING,
            sink: None,
            request: 0,
        }
    }
}

/// Sizes of the ephemeral tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub open_challenges: usize,
    pub live_codes: usize,
    pub pending_pushes: usize,
    pub outbox: usize,
}

/// A reply, and the device whose failure state must be committed before
/// the reply is sent.
///
/// Only the device is named, not a snapshot of its state: the committer
/// writes the state as it is when it commits, so concurrent changes to one
/// device can never be written out of order.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub persist: Option<DeviceId>,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        Self {
            reply,
            persist: None,
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

/// Rate limits by key (a username, a phone number, a country code), in a
/// fixed array of GCRA buckets picked by a keyed hash of the key.
///
/// Every key is limited — a known username or not, so the limit reveals
/// nothing — and memory stays fixed however many keys an attacker invents.
/// The hash key (SipHash) is drawn from the engine's random source at
/// start, so nobody can aim at another key's bucket; two keys sharing a
/// bucket share its allowance.
struct KeyedLimits {
    key: [u8; 16],
    buckets: Box<[Mutex<Gcra>]>,
    rate: Rate,
}

impl KeyedLimits {
    fn new(rate: Rate, buckets: usize, key: [u8; 16]) -> Self {
        Self {
            key,
            buckets: (0..buckets.max(1))
                .map(|_| Mutex::new(Gcra::default()))
                .collect(),
            rate,
        }
    }

    fn check(&self, key: &[u8], now: Timestamp) -> Decision {
        self.check_index(keyed_hash(&self.key, key), now)
    }

    /// The bucket `index` (modulo the bucket count), for keys that are
    /// small numbers already (country codes: one bucket each).
    fn check_index(&self, index: usize, now: Timestamp) -> Decision {
        match self.buckets.get(index % self.buckets.len()) {
            Some(bucket) => bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check(self.rate, now),
            None => Decision::Allow,
        }
    }
}

/// SipHash of `bytes` under `key`: where a name lands among buckets or
/// shards, which nobody without the key can aim at.
fn keyed_hash(key: &[u8; 16], bytes: &[u8]) -> usize {
    let mut hasher = SipHasher13::new_with_key(key);
    hasher.write(bytes);
    hasher.finish() as usize
}

/// The per-user issuance limit of challenges, codes and pushes.
///
/// A user with devices has a limiter of their own, so nobody else's
/// requests can spend their allowance; its state lives while it holds
/// anything back (idle ones are swept). Names without devices — unknown
/// ones among them — draw from a separate fixed array of buckets
/// (`KeyedLimits`): however many names an attacker invents, memory stays
/// fixed, and what they drain is only the budget of names nobody logs in
/// with. Both answer the same way (a rate limit with `retry_after`, or on
/// to the same `NotFound` an unknown user gets), and both cost a hash and
/// a map lookup, so the limit does not tell which names exist.
struct UserLimits {
    rate: Rate,
    key: [u8; 16],
    enrolled: Box<[Mutex<std::collections::HashMap<Username, Gcra>>]>,
    unknown: KeyedLimits,
}

/// Shards of the enrolled users' limiters.
const USER_LIMIT_SHARDS: usize = 64;

impl UserLimits {
    fn new(rate: Rate, buckets: usize, key: [u8; 16], unknown_key: [u8; 16]) -> Self {
        Self {
            rate,
            key,
            enrolled: (0..USER_LIMIT_SHARDS)
                .map(|_| Mutex::new(std::collections::HashMap::new()))
                .collect(),
            unknown: KeyedLimits::new(rate, buckets, unknown_key),
        }
    }

    /// One issuance for `user` at `now`; `enrolled` says whether the user
    /// has devices (the registry's index).
    fn check(&self, user: &Username, enrolled: bool, now: Timestamp) -> Decision {
        if !enrolled {
            return self.unknown.check(user.as_str().as_bytes(), now);
        }
        let shard = keyed_hash(&self.key, user.as_str().as_bytes()) % self.enrolled.len().max(1);
        let Some(shard) = self.enrolled.get(shard) else {
            return Decision::Allow;
        };
        let mut limiters = shard.lock().unwrap_or_else(PoisonError::into_inner);
        match limiters.get_mut(user) {
            Some(limiter) => limiter.check(self.rate, now),
            None => {
                let mut limiter = Gcra::default();
                let decision = limiter.check(self.rate, now);
                limiters.insert(user.clone(), limiter);
                decision
            }
        }
    }

    /// Forgets the limiters that hold nothing back any more.
    fn sweep(&self, now: Timestamp) -> usize {
        let mut swept = 0;
        for shard in self.enrolled.iter() {
            let mut limiters = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = limiters.len();
            limiters.retain(|_, limiter| !limiter.is_idle(now));
            swept += before - limiters.len();
        }
        swept
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
    config: Arc<Config>,
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
        let user_limits = UserLimits::new(config.challenges.issuance_rate(), buckets, key(), key());
        let send_rate = |limit| config.sms.send_rate(limit);
        let number_limits = KeyedLimits::new(send_rate(SendLimit::Number), buckets, key());
        let range_limits = KeyedLimits::new(send_rate(SendLimit::Range), buckets, key());
        // One bucket per country calling code (1..=999).
        let prefix_limits = KeyedLimits::new(send_rate(SendLimit::Country), 1000, key());
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
            codes: sms::CodeTable::new(
                &code_key,
                Self::sms_code_spec(&config),
                config.sms.capacity,
            ),
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
            config,
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
        let spec = Self::sms_code_spec(&self.config);
        self.codes = sms::CodeTable::new(code_key, spec, self.config.sms.capacity);
        self.cluster = Some(store);
        self.node = node;
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
    pub fn handle<R: CryptoRng + ?Sized>(
        &self,
        role: Role,
        operation: Operation,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        self.handle_from(&Caller::detached(role), operation, now, rng)
            .unwrap_or_else(|| {
                Reply::error(ErrorCode::InvalidArgument, "this operation needs a stream").into()
            })
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
        if let Some(refusal) = forbidden(caller.role, &operation) {
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
            Operation::Enroll(request) => self.enroll(caller, request, now, rng).into(),
            Operation::Revoke { device } => self.revoke(caller, device, now, rng).into(),
            Operation::Unlock { user, device } => {
                self.unlock(caller, &user, device, now, rng).into()
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
            Operation::Stats => self.stats().into(),
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
            } => self
                .enroll_phone(caller, &user, number, &label, now, rng)
                .into(),
            Operation::BindPushKey { device, key } => {
                self.bind_push_key(caller, device, key, now, rng).into()
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

    /// One issuance (challenge, code, push, token) for `user`, from their
    /// own limiter if they have devices.
    fn issuance(&self, user: &Username, now: Timestamp) -> Decision {
        let enrolled = self.registry.has_devices(user);
        self.user_limits.check(user, enrolled, now)
    }

    fn count_lockout(&self) {
        self.counters.lockouts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::metrics::LOCKOUTS).increment(1);
    }

    fn challenge<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        if let Decision::Deny { retry_after } = self.issuance(user, now) {
            return Reply::rate_limited(retry_after, "too many challenges for this user").into();
        }
        // An unknown user and another user's device answer the same way. A
        // shipped replacement may be challenged before it activates itself:
        // the right answer activates it.
        let shipped = || {
            self.registry.device(device).filter(|d| {
                &d.user == user
                    && !d.expired_at(now)
                    && matches!(
                        d.life().activation,
                        crate::store::Activation::Shipped { .. }
                    )
            })
        };
        let Some(device) = self.login_device(user, device, now).or_else(shipped) else {
            let expired = self
                .registry
                .device(device)
                .is_some_and(|d| &d.user == user && d.expired_at(now));
            return Reply::error(
                ErrorCode::NotFound,
                if expired {
                    "the device's validity has ended"
                } else {
                    "no such device for this user, or it cannot be used now"
                },
            )
            .into();
        };
        let ttl = self.config.challenges.ttl;
        let mut persist = None;
        // Ids are random 64-bit numbers; a collision is retried, twice.
        for _ in 0..3 {
            let id = ChallengeId(rng.next_u64());
            let asked = match self.ask(user, &device, id, now, rng) {
                Ok(asked) => asked,
                Err(refusal) => {
                    return Outcome {
                        reply: refusal,
                        persist,
                    };
                }
            };
            persist = persist.or(asked.charged.then_some(device.id));
            if asked.locked {
                self.count_lockout();
            }
            // After the device's locks are released (the table's shard lock
            // comes first in `verify`): the replaced challenge could no
            // longer be accepted anyway, this only frees its slot.
            if let Some(old) = asked.superseded {
                // Only if it is this device's (an id that collided was never
                // stored as ours).
                self.challenges.resolve(old, |open| {
                    let ours = open.device == device.id;
                    (
                        (),
                        if ours {
                            Disposition::Remove
                        } else {
                            Disposition::Keep
                        },
                    )
                });
            }
            let text = rules::ask::shown(&asked.open.question);
            let reply = match self.challenges.insert(id, asked.open) {
                Ok(()) => {
                    self.counters.issued.fetch_add(1, Ordering::Relaxed);
                    Reply::Challenge {
                        challenge: id,
                        text,
                        expires_in: ttl,
                    }
                }
                Err(InsertError::Taken) => continue,
                Err(InsertError::Full) => {
                    Reply::error(ErrorCode::TooManyChallenges, "the challenge table is full")
                }
            };
            return Outcome { reply, persist };
        }
        Outcome {
            reply: Reply::error(ErrorCode::Busy, "could not allocate a challenge id"),
            persist,
        }
    }

    /// Asks `device` the question of a new challenge `id` under its
    /// failure lock.
    fn ask<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: &Device,
        id: ChallengeId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<rules::ask::Asked, Reply> {
        let mut failures = device.failures();
        let mut questions = device.questions(&failures);
        rules::ask::ask_device(
            &self.config,
            &self.alphabets,
            user,
            device,
            &mut failures,
            &mut questions,
            id,
            now,
            rng,
        )
    }

    fn verify<R: CryptoRng + ?Sized>(
        &self,
        id: ChallengeId,
        answer: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        let resolved = self.challenges.resolve(id, |open| {
            let Some(device) = self.registry.device(open.device) else {
                let decided = rules::verify::revoked(open, now);
                let life = DeviceLife::default();
                return ((decided.verdict, None, life), decided.challenge);
            };
            let mut failures = device.failures();
            let mut questions = device.questions(&failures);
            let decided = rules::verify::decide(
                id,
                open,
                &device,
                &mut failures,
                &mut questions,
                answer,
                now,
                &self.config,
            );
            if decided.locked {
                self.count_lockout();
            }
            let persist = decided.failures_changed.then_some(device.id);
            ((decided.verdict, persist, device.life()), decided.challenge)
        });
        let (verdict, persist, life) =
            resolved.unwrap_or((Verdict::UnknownChallenge, None, DeviceLife::default()));
        let accepted = self.after_accept(self.registry.as_ref(), verdict, &life, now, rng);
        let verdict = ready(async { Ok(accepted.await) }).unwrap_or(Verdict::UnknownChallenge);
        self.count_verdict(&verdict);
        Outcome {
            reply: Reply::Verdict(verdict),
            persist,
        }
    }

    fn count_verdict(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Accepted { .. } => &self.counters.accepted,
            Verdict::Rejected { .. } => &self.counters.rejected,
            Verdict::Expired => &self.counters.expired,
            Verdict::LockedOut { .. } => &self.counters.locked_out,
            Verdict::UnknownChallenge | Verdict::Denied => &self.counters.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn enroll<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
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
        let pin = pin.as_ref().map(|p| p.as_str());
        let new = NewDevice {
            user: &user,
            kind,
            secret,
            pin,
            label: &label,
        };
        match self.registry.enroll(rng, new, now, Self::actor(caller)) {
            Ok((device, secret)) => {
                tracing::info!(%user, %device, %kind, "device enrolled");
                Reply::Enrolled { device, secret }
            }
            Err(error) => enroll_error(error),
        }
    }

    fn enroll_phone<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        number: crate::phone::PhoneNumber,
        label: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        phone_enrolled(
            user,
            self.registry
                .enroll_phone(rng, user, number, label, now, Self::actor(caller)),
        )
    }

    fn bind_push_key<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        key: crate::otp::push::PushKey,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        push_key_bound(
            device,
            self.registry
                .bind_push_key(rng, device, key, now, Self::actor(caller)),
        )
    }

    fn revoke<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        match self.registry.revoke(rng, device, now, Self::actor(caller)) {
            Ok(true) => {
                tracing::info!(%device, "device revoked");
                Reply::Done
            }
            Ok(false) => Reply::error(ErrorCode::NotFound, "no such device"),
            Err(error) => {
                tracing::error!(%error, "revoke failed");
                Reply::error(
                    ErrorCode::Internal,
                    "the registry could not revoke the device",
                )
            }
        }
    }

    fn unlock<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        device: Option<DeviceId>,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let devices: Vec<_> = self
            .registry
            .devices_of(user)
            .into_iter()
            .filter(|d| device.is_none_or(|id| d.id == id))
            .collect();
        if devices.is_empty() && device.is_some() {
            return Reply::error(ErrorCode::NotFound, "no such device for this user");
        }
        let cleared = self.registry.change(rng, now, Self::actor(caller), |c| {
            for d in &devices {
                c.set_failures(d.id, FailureState::default())?;
            }
            let detail = format!("{} devices", devices.len());
            c.audit("unlock", Some(user), device, detail)
        });
        if let Err(error) = cleared {
            tracing::error!(%error, "unlock failed");
            return Reply::error(
                ErrorCode::Internal,
                "the registry could not clear the lockout",
            );
        }
        tracing::info!(%user, devices = devices.len(), "lockouts cleared");
        Reply::Done
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

/// The largest amount one withdrawal may ask for, in cents (10 billion
/// USD): far above any limit, and exact in every store's arithmetic
/// (Lua's numbers are doubles).
pub const MAX_WITHDRAWAL_CENTS: u64 = 1_000_000_000_000;

/// The refusal of an amount no withdrawal can have.
fn invalid_amount(amount: u64) -> Option<Reply> {
    (amount == 0 || amount > MAX_WITHDRAWAL_CENTS).then(|| {
        Reply::error(
            ErrorCode::InvalidArgument,
            format!("the amount must be 1 to {MAX_WITHDRAWAL_CENTS} cents"),
        )
    })
}

/// What the server must know of an operation before it runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// It may write the registry on the embedded store (a commit, with
    /// fsync, before its reply): the server runs it off the threads that
    /// answer logins. `Verify` is not one: its rare writes (a temporary
    /// code's use, a replacement's activation) stay on the hot path.
    pub changes_registry: bool,
    /// It issues something a user is limited in (a challenge, a code, a
    /// push, a token), so it counts toward the connection's issuance quota
    /// as well as the user's.
    pub issues: bool,
}

impl Facts {
    const READS: Self = Self {
        changes_registry: false,
        issues: false,
    };
    const CHANGES: Self = Self {
        changes_registry: true,
        issues: false,
    };
    const ISSUES: Self = Self {
        changes_registry: false,
        issues: true,
    };
}

/// The facts of `operation`. Every operation is named, none by a
/// wildcard: a new one does not compile until it says what it is (left
/// off a positive list, a registry change would run its fsync on the
/// threads that answer logins, and an issuance would escape the
/// connection's quota).
pub fn facts(operation: &Operation) -> Facts {
    match operation {
        Operation::Enroll(_)
        | Operation::Revoke { .. }
        | Operation::Unlock { .. }
        | Operation::EnrollPhone { .. }
        | Operation::BindPushKey { .. }
        | Operation::AuthorizeWithdrawal { .. }
        | Operation::SetIdentity { .. }
        | Operation::SetOptOut { .. }
        | Operation::ShareDevice { .. }
        | Operation::DecideShare { .. }
        | Operation::CancelShare { .. }
        | Operation::IssueTemporaryCode { .. }
        | Operation::OrderReplacement { .. }
        | Operation::ShipReplacement { .. }
        | Operation::ConfirmPhone { .. }
        | Operation::CompleteActivation { .. } => Facts::CHANGES,
        Operation::Challenge { .. }
        | Operation::Push { .. }
        | Operation::SendCode { .. }
        | Operation::StartActivation { .. }
        | Operation::StartPhoneVerification { .. } => Facts::ISSUES,
        Operation::Devices { .. }
        | Operation::Verify { .. }
        | Operation::VerifyCode { .. }
        | Operation::CodeStatus { .. }
        | Operation::AwaitPush { .. }
        | Operation::ListDevices { .. }
        | Operation::Stats
        | Operation::Shares { .. }
        | Operation::PendingActivations { .. }
        | Operation::AuditLog { .. }
        | Operation::CarrierSubscribe
        | Operation::Ack { .. }
        | Operation::PhoneSubscribe { .. }
        | Operation::Approve { .. }
        | Operation::Deny { .. } => Facts::READS,
    }
}

/// The refusal of an operation that is not the caller's role's.
fn forbidden(role: Role, operation: &Operation) -> Option<Reply> {
    let needed = operation.role();
    (role != needed).then(|| {
        Reply::error(
            ErrorCode::Forbidden,
            format!("{} needs the {} role", operation.name(), needed.as_str()),
        )
    })
}

/// The reply to `EnrollPhone`, from either store.
fn phone_enrolled(user: &Username, enrolled: Result<DeviceId, EnrollError>) -> Reply {
    match enrolled {
        Ok(device) => {
            tracing::info!(%user, %device, "phone number enrolled");
            Reply::Enrolled {
                device,
                secret: None,
            }
        }
        Err(error) => enroll_error(error),
    }
}

/// The reply to `BindPushKey`, from either store.
fn push_key_bound(device: DeviceId, bound: Result<bool, EnrollError>) -> Reply {
    match bound {
        Ok(true) => {
            tracing::info!(%device, "push key bound");
            Reply::Done
        }
        Ok(false) => Reply::error(ErrorCode::NotFound, "no such device"),
        Err(error) => enroll_error(error),
    }
}

fn enroll_error(error: EnrollError) -> Reply {
    match error {
        EnrollError::Invalid(problem) => Reply::error(ErrorCode::InvalidArgument, problem),
        EnrollError::Store(error @ crate::store::StoreError::Shared(_)) => {
            tracing::warn!(%error, "shared store failed");
            Reply::error(
                ErrorCode::StoreUnavailable,
                "the shared store did not answer or did not replicate in time",
            )
        }
        EnrollError::Store(error) => {
            tracing::error!(%error, "registry change failed");
            Reply::error(
                ErrorCode::Internal,
                "the registry could not store the change",
            )
        }
    }
}
