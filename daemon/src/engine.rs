//! The verification state machine: request → role check → rate limit →
//! verify → store → reply.
//!
//! Deterministic given its inputs: time comes in as a [`Timestamp`] and
//! randomness as a `CryptoRng`, so tests and fuzzers drive it on a virtual
//! clock. It does no network I/O and never waits: a change the reply
//! depends on (a failure count, a lockout) is handed back in
//! [`Outcome::persist`] for the caller to commit before it sends the reply.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::CryptoRng;
use siphasher::sip::SipHasher13;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::otp::generate::Alphabet;
use crate::otp::ocra::{OcraInput, QuestionFormat};
use crate::ratelimit::{Decision, Gcra, Rate};
use crate::store::challenges::{ChallengeTable, Disposition, InsertError, OpenChallenge, Question};
use crate::store::registry::{Device, EnrollError, FailureState, NewDevice, Registry, Verifier};
use crate::wire::request::Answer;
use crate::wire::{
    ChallengeText, DeviceEntry, EnrollRequest, ErrorCode, Operation, Reply, StatEntry, Verdict,
};

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

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Admin => "admin",
            Self::Carrier => "carrier",
            Self::Phone => "phone",
        }
    }
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

/// Per-user challenge issuance limits, in a fixed array of GCRA buckets
/// picked by a keyed hash of the username.
///
/// Every username is limited — known or not, so the limit reveals nothing
/// — and memory stays fixed however many names an attacker invents. The
/// hash key (SipHash) is drawn from the engine's random source at start, so
/// nobody can aim at another user's bucket; two users sharing a bucket
/// share its allowance.
struct UserLimits {
    key: [u8; 16],
    buckets: Box<[Mutex<Gcra>]>,
    rate: Rate,
}

impl UserLimits {
    fn new(per_minute: u32, buckets: usize, key: [u8; 16]) -> Self {
        Self {
            key,
            buckets: (0..buckets.max(1))
                .map(|_| Mutex::new(Gcra::default()))
                .collect(),
            rate: Rate::new(per_minute, Duration::from_secs(60), per_minute),
        }
    }

    fn check(&self, user: &Username, now: Timestamp) -> Decision {
        let mut hasher = SipHasher13::new_with_key(&self.key);
        hasher.write(user.as_str().as_bytes());
        let index = (hasher.finish() as usize) % self.buckets.len();
        match self.buckets.get(index) {
            Some(bucket) => bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check(self.rate, now),
            None => Decision::Allow,
        }
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
}

/// The engine: shared by every connection.
pub struct Engine {
    config: Arc<Config>,
    registry: Arc<Registry>,
    challenges: ChallengeTable,
    user_limits: UserLimits,
    alphabets: QuestionAlphabets,
    counters: Counters,
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
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        Self {
            challenges: ChallengeTable::new(config.challenges.capacity, CHALLENGE_SHARDS),
            user_limits: UserLimits::new(
                config.challenges.per_user_per_minute,
                config.challenges.user_limit_buckets,
                key,
            ),
            alphabets: QuestionAlphabets::new(),
            counters: Counters::default(),
            config,
            registry,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn open_challenges(&self) -> usize {
        self.challenges.len()
    }

    /// Drops expired challenges; call it every few seconds.
    pub fn sweep(&self, now: Timestamp) -> usize {
        self.challenges.sweep(now)
    }

    /// Handles one operation from a caller of `role`.
    pub fn handle<R: CryptoRng + ?Sized>(
        &self,
        role: Role,
        operation: Operation,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        let needed = if operation.is_gateway() {
            Role::Gateway
        } else {
            Role::Admin
        };
        if role != needed {
            return Reply::error(
                ErrorCode::Forbidden,
                format!("{} needs the {} role", operation.name(), needed.as_str()),
            )
            .into();
        }
        match operation {
            Operation::Devices { user } => self.devices(&user, now, false).into(),
            Operation::ListDevices { user } => self.devices(&user, now, true).into(),
            Operation::Challenge { user, device } => self.challenge(&user, device, now, rng).into(),
            Operation::Verify {
                challenge,
                response,
            } => self.verify(challenge, &response, now),
            Operation::Enroll(request) => self.enroll(request, now, rng).into(),
            Operation::Revoke { device } => self.revoke(device).into(),
            Operation::Unlock { user, device } => self.unlock(&user, device).into(),
            Operation::Stats => self.stats().into(),
        }
    }

    /// A user's devices; a login (`with_expired` false) is offered only
    /// those still valid, an operator sees all.
    fn devices(&self, user: &Username, now: Timestamp, with_expired: bool) -> Reply {
        let entries = self
            .registry
            .devices_of(user)
            .iter()
            .filter(|d| with_expired || !d.expired_at(now))
            .map(|d| DeviceEntry {
                device: d.id,
                kind: d.kind,
                label: d.label.clone(),
                locked_for: now.until(d.failures().locked_until),
            })
            .collect();
        Reply::Devices(entries)
    }

    fn challenge<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        if let Decision::Deny { retry_after } = self.user_limits.check(user, now) {
            return Reply::Error {
                code: ErrorCode::RateLimited,
                retry_after,
                message: "too many challenges for this user".into(),
            };
        }
        // An unknown user and another user's device answer the same way.
        let Some(device) = self.registry.device(device).filter(|d| &d.user == user) else {
            return Reply::error(ErrorCode::NotFound, "no such device for this user");
        };
        if device.expired_at(now) {
            return Reply::error(ErrorCode::NotFound, "the device's validity has ended");
        }
        let (question, text) = match &device.verifier {
            Verifier::Ocra { ocra, .. } => {
                let suite = ocra.suite();
                let alphabet = match suite.question_format() {
                    QuestionFormat::Numeric => &self.alphabets.numeric,
                    QuestionFormat::Hex => &self.alphabets.hex,
                    QuestionFormat::Alphanumeric => &self.alphabets.alphanumeric,
                };
                let text = alphabet
                    .generate(rng, usize::from(suite.question_len()))
                    .as_str()
                    .to_owned();
                (Question::Ocra(text.clone()), ChallengeText::Question(text))
            }
            Verifier::Card(card) => {
                let pick = card.random_challenge(rng);
                (
                    Question::Card(pick),
                    ChallengeText::CardPositions(pick.first(), pick.second()),
                )
            }
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
            match self.challenges.insert(id, open.clone()) {
                Ok(()) => {
                    self.counters.issued.fetch_add(1, Ordering::Relaxed);
                    return Reply::Challenge {
                        challenge: id,
                        text,
                        expires_in: ttl,
                    };
                }
                Err(InsertError::Taken) => continue,
                Err(InsertError::Full) => {
                    return Reply::error(
                        ErrorCode::TooManyChallenges,
                        "the challenge table is full",
                    );
                }
            }
        }
        Reply::error(ErrorCode::Busy, "could not allocate a challenge id")
    }

    fn verify(&self, id: ChallengeId, answer: &Answer, now: Timestamp) -> Outcome {
        let lockout = &self.config.lockout;
        let resolved = self.challenges.resolve(id, |open| {
            if open.expires_at <= now {
                return ((Verdict::Expired, None), Disposition::Remove);
            }
            let Some(device) = self.registry.device(open.device) else {
                // Revoked since the challenge was issued.
                return ((Verdict::UnknownChallenge, None), Disposition::Remove);
            };
            if device.expired_at(now) {
                return ((Verdict::Expired, None), Disposition::Remove);
            }
            let mut failures = device.failures();
            if failures.locked_until > now {
                let retry_after = now.until(failures.locked_until);
                return (
                    (Verdict::LockedOut { retry_after }, None),
                    Disposition::Keep,
                );
            }
            if answer_is_right(&device, &open.question, answer, now) {
                let persist = (*failures != FailureState::default()).then(|| {
                    *failures = FailureState::default();
                    device.id
                });
                let verdict = Verdict::Accepted {
                    user: open.user.clone(),
                    device: device.id,
                    kind: device.kind,
                };
                return ((verdict, persist), Disposition::Remove);
            }
            open.attempts_left = open.attempts_left.saturating_sub(1);
            failures.consecutive += 1;
            let verdict = if failures.consecutive >= lockout.failures {
                let doublings = failures.lockouts.min(20);
                let length = lockout
                    .first
                    .saturating_mul(1 << doublings)
                    .min(lockout.max);
                failures.lockouts = failures.lockouts.saturating_add(1);
                failures.consecutive = 0;
                failures.locked_until = now.plus(length);
                self.counters.lockouts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::LOCKOUTS).increment(1);
                Verdict::LockedOut {
                    retry_after: length,
                }
            } else {
                Verdict::Rejected {
                    attempts_left: open.attempts_left,
                }
            };
            let disposition = match verdict {
                Verdict::Rejected { attempts_left } if attempts_left > 0 => Disposition::Keep,
                _ => Disposition::Remove,
            };
            ((verdict, Some(device.id)), disposition)
        });
        let (verdict, persist) = resolved.unwrap_or((Verdict::UnknownChallenge, None));
        let counter = match verdict {
            Verdict::Accepted { .. } => &self.counters.accepted,
            Verdict::Rejected { .. } => &self.counters.rejected,
            Verdict::Expired => &self.counters.expired,
            Verdict::LockedOut { .. } => &self.counters.locked_out,
            Verdict::UnknownChallenge => &self.counters.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Outcome {
            reply: Reply::Verdict(verdict),
            persist,
        }
    }

    fn enroll<R: CryptoRng + ?Sized>(
        &self,
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
        match self.registry.enroll(rng, new, now) {
            Ok((device, secret)) => {
                tracing::info!(%user, %device, %kind, "device enrolled");
                Reply::Enrolled { device, secret }
            }
            Err(EnrollError::Invalid(problem)) => Reply::error(ErrorCode::InvalidArgument, problem),
            Err(EnrollError::Store(error)) => {
                tracing::error!(%error, "enrolment failed");
                Reply::error(
                    ErrorCode::Internal,
                    "the registry could not store the device",
                )
            }
        }
    }

    fn revoke(&self, device: DeviceId) -> Reply {
        match self.registry.revoke(device) {
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

    fn unlock(&self, user: &Username, device: Option<DeviceId>) -> Reply {
        let devices: Vec<_> = self
            .registry
            .devices_of(user)
            .into_iter()
            .filter(|d| device.is_none_or(|id| d.id == id))
            .collect();
        if devices.is_empty() && device.is_some() {
            return Reply::error(ErrorCode::NotFound, "no such device for this user");
        }
        let cleared: Vec<_> = devices
            .iter()
            .map(|d| (d.id, FailureState::default()))
            .collect();
        if let Err(error) = self.registry.save_failures(&cleared) {
            tracing::error!(%error, "unlock failed");
            return Reply::error(
                ErrorCode::Internal,
                "the registry could not clear the lockout",
            );
        }
        for d in &devices {
            *d.failures() = FailureState::default();
        }
        tracing::info!(%user, devices = devices.len(), "lockouts cleared");
        Reply::Done
    }

    fn stats(&self) -> Reply {
        let c = &self.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let entries = [
            ("devices", self.registry.len() as u64),
            ("open_challenges", self.challenges.len() as u64),
            ("challenges_issued", read(&c.issued)),
            ("verify_accepted", read(&c.accepted)),
            ("verify_rejected", read(&c.rejected)),
            ("verify_expired", read(&c.expired)),
            ("verify_locked_out", read(&c.locked_out)),
            ("lockouts", read(&c.lockouts)),
        ];
        Reply::Stats(
            entries
                .into_iter()
                .map(|(name, value)| StatEntry {
                    name: name.into(),
                    value,
                })
                .collect(),
        )
    }
}

/// The alphabets questions are drawn from, by OCRA question format.
struct QuestionAlphabets {
    numeric: Alphabet,
    hex: Alphabet,
    /// Letters and digits a person reads without confusion (no I, O, 0, 1).
    alphanumeric: Alphabet,
}

impl QuestionAlphabets {
    fn new() -> Self {
        // Both literals pass `Alphabet::new`'s checks; digits stand in if not.
        let or_digits = |symbols| Alphabet::new(symbols).unwrap_or_else(|_| Alphabet::digits());
        Self {
            numeric: Alphabet::digits(),
            hex: or_digits("0123456789ABCDEF"),
            alphanumeric: or_digits("ABCDEFGHJKLMNPQRSTUVWXYZ23456789"),
        }
    }
}

/// Checks an answer against the device, in constant time.
fn answer_is_right(device: &Device, question: &Question, answer: &Answer, now: Timestamp) -> bool {
    match (&device.verifier, question) {
        (Verifier::Ocra { ocra, pin_hash }, Question::Ocra(text)) => {
            let input = OcraInput {
                question: text,
                pin_hash: pin_hash.as_ref().map(|h| h.as_bytes()),
                timestamp: ocra
                    .suite()
                    .time_step()
                    .map(|step| step.steps_at(now.0 / 1000)),
                ..OcraInput::default()
            };
            ocra.verify(&input, answer.as_bytes()).unwrap_or(false)
        }
        (Verifier::Card(card), Question::Card(pick)) => {
            card.verify(*pick, answer.as_bytes()).unwrap_or(false)
        }
        // A question of the other kind cannot be answered by this device.
        _ => false,
    }
}
