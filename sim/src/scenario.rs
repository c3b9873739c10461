//! In-process mode (`sls-sim load --in-process`, `sls-sim replay`): the
//! daemon's engine driven directly on a virtual clock with seeded
//! randomness, so weeks of logins, attacks, lockouts and device expiries
//! run in seconds and the same seed replays the same run, reply for reply.
//!
//! Every reply is compared with a reference model written from the
//! specification, not from the engine: what `Devices` must list, when a
//! challenge must be refused, and (`model::verify`) which verdict an answer
//! must get and how long each lockout must last. Any difference is an
//! invariant violation. A digest of every reply proves a replay identical.
//!
//! Durability is not modelled here (failure states are not committed to
//! disk); the end-to-end tests cover it against the real daemon.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::{ChaCha8Rng, ChaCha20Rng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine, Role};
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::profile::DeviceKind;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;
use slsd::wire::request::Answer;
use slsd::wire::{ChallengeText, DeviceEntry, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

use crate::device::EmulatedDevice;
use crate::model;

/// Monday 2027-01-04 00:00 UTC: where the virtual clock starts.
const EPOCH: Timestamp = Timestamp(1_798_934_400_000);
const MINUTE: u64 = 60_000;
const DAY: u64 = 24 * 60 * MINUTE;
/// Violations kept for the report (all are counted).
const MAX_VIOLATIONS: usize = 50;

/// What an in-process run does.
#[derive(Debug, Clone)]
pub struct ScenarioPlan {
    pub seed: u64,
    /// Simulated time.
    pub duration: Duration,
    pub users: usize,
    /// The engine's configuration (the model reads the same numbers).
    pub config: Config,
    /// Where the engine keeps its state.
    pub store: ScenarioStore,
}

/// The store an in-process run's engine keeps its state in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ScenarioStore {
    /// The embedded store, as one node runs.
    #[default]
    Embedded,
    /// The cluster store on a Redis Cluster in memory
    /// (`slsd::store::cluster::memory`), as several nodes run.
    ClusterInMemory,
}

impl ScenarioPlan {
    /// `users` users over `duration` with the daemon's default configuration.
    pub fn new(seed: u64, duration: Duration, users: usize) -> Result<Self, ScenarioError> {
        Ok(Self {
            seed,
            duration,
            users,
            config: Config::from_toml("").map_err(|e| ScenarioError::Setup(e.to_string()))?,
            store: ScenarioStore::Embedded,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("in-process engine: {0}")]
    Setup(String),
    #[error("--users: an in-process run needs at least 10 users (every tenth is a target)")]
    TooFewUsers,
}

/// What an in-process run saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScenarioReport {
    pub seed: u64,
    pub simulated_days: f64,
    pub users: usize,
    pub requests: u64,
    pub logins_accepted: u64,
    /// Answers given after the challenge's TTL, refused as `Expired`.
    pub late_answers_expired: u64,
    /// Online cards refused after their validity.
    pub expired_devices_refused: u64,
    pub attacker_guesses: u64,
    pub attacker_accepts: u64,
    /// Lockouts by length in seconds: their growth, to the cap.
    pub lockouts_by_seconds: BTreeMap<u64, u64>,
    /// Logins of attacked users refused because the attackers had locked
    /// the device (the model says when).
    pub targets_locked_out: u64,
    /// Challenges refused because the device had been asked
    /// `challenges.per-device-per-day` times that day (attackers, mostly).
    pub challenges_over_daily_cap: u64,
    /// Answers to a challenge the device had been asked again since (an
    /// attacker asked meanwhile): only the latest can be answered.
    pub answers_superseded: u64,
    pub invariant_violations: Vec<String>,
    /// SHA-256 over every reply in order: equal digests, identical runs.
    pub digest: String,
}

impl ScenarioReport {
    pub fn render(&self) -> String {
        let lockouts: Vec<String> = self
            .lockouts_by_seconds
            .iter()
            .map(|(s, n)| format!("{s}s x{n}"))
            .collect();
        let mut out = format!(
            "in-process run, seed {seed}: {days:.1} simulated days, {users} users, {req} requests\n\
             logins accepted: {ok}; late answers refused as expired: {late}; \
             expired devices refused: {gone}\n\
             attackers: {guesses} guesses, {accepts} accepted; targets' logins refused while locked: {locked}\n\
             challenges over the daily cap: {capped}; answers to a superseded challenge: {superseded}\n\
             lockouts: {lockouts}\n\
             digest: {digest}\n",
            seed = self.seed,
            days = self.simulated_days,
            users = self.users,
            req = self.requests,
            ok = self.logins_accepted,
            late = self.late_answers_expired,
            gone = self.expired_devices_refused,
            guesses = self.attacker_guesses,
            accepts = self.attacker_accepts,
            locked = self.targets_locked_out,
            capped = self.challenges_over_daily_cap,
            superseded = self.answers_superseded,
            lockouts = lockouts.join(", "),
            digest = self.digest,
        );
        if self.invariant_violations.is_empty() {
            out.push_str("invariants: all held\n");
        } else {
            out.push_str(&format!(
                "invariants: {} VIOLATED\n",
                self.invariant_violations.len()
            ));
            for v in self.invariant_violations.iter().take(10) {
                out.push_str(&format!("  - {v}\n"));
            }
        }
        out
    }
}

struct ModelDevice {
    id: DeviceId,
    emulated: EmulatedDevice,
    expires: Option<u64>,
    failures: model::Failures,
    questions: model::Questions,
}

struct ModelUser {
    user: Username,
    devices: Vec<ModelDevice>,
    target: bool,
}

struct OpenChallenge {
    /// Its handle in `World::open` (the model's name for it).
    key: u64,
    user: usize,
    device: usize,
    text: ChallengeText,
    expires_at: u64,
    attempts_left: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A user starts a login.
    Login { user: usize },
    /// The user types the answer to `challenge` (sequence number).
    Answer { user: usize, challenge: u64 },
    /// An attacker works on a target's device.
    Attack { user: usize, device: usize },
    /// The daemon's sweeper runs.
    Sweep,
}

struct World {
    engine: Engine,
    /// The cluster in memory, when the engine is on one.
    cluster: Option<Arc<MemoryRedis>>,
    engine_rng: ChaCha20Rng,
    rng: ChaCha8Rng,
    config: Config,
    users: Vec<ModelUser>,
    open: BTreeMap<u64, (ChallengeId, OpenChallenge)>,
    next_open: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
    /// When the sweeper last ran: it forgets challenges expired by then.
    last_sweep: u64,
    digest: Sha256,
    report: ScenarioReport,
    violations: usize,
    _dir: tempfile::TempDir,
}

/// Runs the scenario and reports what it saw.
pub fn run(plan: &ScenarioPlan) -> Result<ScenarioReport, ScenarioError> {
    if plan.users < 10 {
        return Err(ScenarioError::TooFewUsers);
    }
    let mut world = World::new(plan)?;
    let end = EPOCH.0 + u64::try_from(plan.duration.as_millis()).unwrap_or(u64::MAX / 2);
    while let Some(Reverse((at, _, event))) = world.queue.pop() {
        if at >= end {
            break;
        }
        world.happen(Timestamp(at), event);
    }
    let mut report = std::mem::take(&mut world.report);
    report.seed = plan.seed;
    report.users = plan.users;
    report.simulated_days = plan.duration.as_secs_f64() / 86_400.0;
    report.digest = hex::encode(world.digest.clone().finalize());
    if world.violations > report.invariant_violations.len() {
        let more = world.violations - report.invariant_violations.len();
        report
            .invariant_violations
            .push(format!("... and {more} more"));
    }
    Ok(report)
}

impl World {
    fn new(plan: &ScenarioPlan) -> Result<Self, ScenarioError> {
        let setup = |e: &dyn std::fmt::Display| ScenarioError::Setup(e.to_string());
        let dir = tempfile::tempdir().map_err(|e| setup(&e))?;
        let mut engine_rng = ChaCha20Rng::seed_from_u64(plan.seed);
        let cipher = SecretCipher::load_or_create(&dir.path().join("secrets.key"), &mut engine_rng)
            .map_err(|e| setup(&e))?;
        let registry = Registry::open(
            &dir.path().join("registry.redb"),
            cipher,
            plan.config.devices.clone(),
        )
        .map_err(|e| setup(&e))?;
        let mut engine = Engine::new(
            Arc::new(plan.config.clone()),
            Arc::new(registry),
            &mut engine_rng,
        );
        let mut cluster = None;
        if plan.store == ScenarioStore::ClusterInMemory {
            let memory = Arc::new(MemoryRedis::new());
            memory.set_now(EPOCH);
            let cipher =
                SecretCipher::load_or_create(&dir.path().join("secrets.key"), &mut engine_rng)
                    .map_err(|e| setup(&e))?;
            engine = engine
                .with_memory_cluster(Arc::clone(&memory), cipher, &mut engine_rng)
                .map_err(|e| setup(&e))?;
            cluster = Some(memory);
        }
        let mut world = Self {
            engine,
            cluster,
            engine_rng,
            rng: ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5ce0_a710),
            config: plan.config.clone(),
            users: Vec::with_capacity(plan.users),
            open: BTreeMap::new(),
            next_open: 0,
            queue: BinaryHeap::new(),
            sequence: 0,
            last_sweep: 0,
            digest: Sha256::new(),
            report: ScenarioReport::default(),
            violations: 0,
            _dir: dir,
        };
        world.enrol(plan.users)?;
        for user in 0..world.users.len() {
            let first = world.rng.random_range(0..DAY / 3);
            world.schedule(EPOCH.0 + first, Event::Login { user });
            if world.users.get(user).is_some_and(|u| u.target) {
                let devices = world.users.get(user).map_or(0, |u| u.devices.len());
                for device in 0..devices {
                    let start = world.rng.random_range(0..60 * MINUTE);
                    world.schedule(EPOCH.0 + start, Event::Attack { user, device });
                }
            }
        }
        world.schedule(EPOCH.0 + MINUTE, Event::Sweep);
        Ok(world)
    }

    /// Enrols the users: DSC+, IB Key, SCC and Online SCC (which expires),
    /// some with two devices. Every tenth user is an attack target.
    fn enrol(&mut self, users: usize) -> Result<(), ScenarioError> {
        const KINDS: [DeviceKind; 4] = [
            DeviceKind::DscPlus,
            DeviceKind::IbKey,
            DeviceKind::Scc,
            DeviceKind::OnlineScc,
        ];
        for n in 0..users {
            let user = Username::new(&format!("user-{n}"))
                .map_err(|e| ScenarioError::Setup(e.to_string()))?;
            let mut kinds = vec![KINDS[n % KINDS.len()]];
            if n % 5 == 0 {
                kinds.push(KINDS[(n / 5 + 1) % KINDS.len()]);
            }
            kinds.dedup();
            let mut devices = Vec::new();
            for kind in kinds {
                let pin = (kind == DeviceKind::DscPlus)
                    .then(|| format!("{:04}", self.rng.random_range(0..10_000u32)));
                let request = EnrollRequest {
                    user: user.clone(),
                    kind,
                    secret: None,
                    pin: pin.as_deref().map(slsd::wire::request::Pin::new),
                    label: String::new(),
                };
                let reply = self.call(Role::Admin, Operation::Enroll(request), EPOCH);
                let Reply::Enrolled {
                    device,
                    secret: Some(secret),
                } = reply
                else {
                    return Err(ScenarioError::Setup(format!("enrolment: {reply:?}")));
                };
                let profiles = &self.config.devices;
                let emulated = EmulatedDevice::new(kind, &secret, pin.as_deref(), profiles)
                    .map_err(|e| ScenarioError::Setup(e.to_string()))?;
                let expires = profiles.get(kind).validity.map(|v| EPOCH.plus(v).0);
                devices.push(ModelDevice {
                    id: device,
                    emulated,
                    expires,
                    failures: model::Failures::default(),
                    questions: model::Questions::default(),
                });
            }
            self.users.push(ModelUser {
                user,
                devices,
                target: n % 10 == 9,
            });
        }
        Ok(())
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.sequence += 1;
        self.queue.push(Reverse((at, self.sequence, event)));
    }

    fn call(&mut self, role: Role, operation: Operation, now: Timestamp) -> Reply {
        self.report.requests += 1;
        let reply = match &self.cluster {
            None => {
                self.engine
                    .handle(role, operation, now, &mut self.engine_rng)
                    .reply
            }
            Some(memory) => {
                memory.set_now(now);
                let caller = Caller::detached(role);
                let handled =
                    self.engine
                        .handle_on_cluster(&caller, operation, now, &mut self.engine_rng);
                match run_now(handled) {
                    Some(Some(reply)) => reply,
                    Some(None) => {
                        Reply::error(ErrorCode::InvalidArgument, "this operation needs a stream")
                    }
                    None => Reply::error(ErrorCode::Internal, "the in-memory store waited"),
                }
            }
        };
        self.digest
            .update(format!("{}:{reply:?}\n", now.0).as_bytes());
        reply
    }

    fn violation(&mut self, now: Timestamp, text: String) {
        self.violations += 1;
        if self.report.invariant_violations.len() < MAX_VIOLATIONS {
            let day = (now.0 - EPOCH.0) as f64 / DAY as f64;
            self.report
                .invariant_violations
                .push(format!("day {day:.3}: {text}"));
        }
    }

    fn happen(&mut self, now: Timestamp, event: Event) {
        match event {
            Event::Login { user } => self.login(user, now),
            Event::Answer { user, challenge } => self.answer(user, challenge, now),
            Event::Attack { user, device } => self.attack(user, device, now),
            Event::Sweep => {
                self.engine.sweep(now);
                self.last_sweep = now.0;
                self.schedule(now.0 + MINUTE, Event::Sweep);
            }
        }
    }

    /// What `Devices` must list for `user` at `now`.
    fn model_devices(&self, user: usize, now: Timestamp) -> Vec<(DeviceId, Duration)> {
        self.users.get(user).map_or_else(Vec::new, |u| {
            u.devices
                .iter()
                .filter(|d| d.expires.is_none_or(|end| end > now.0))
                .map(|d| (d.id, d.failures.locked_for(now.0)))
                .collect()
        })
    }

    fn login(&mut self, user: usize, now: Timestamp) {
        // About three logins a day each.
        let next = now.0 + self.rng.random_range(2 * 60 * MINUTE..14 * 60 * MINUTE);
        self.schedule(next, Event::Login { user });
        let Some(name) = self.users.get(user).map(|u| u.user.clone()) else {
            return;
        };
        let listed = match self.call(
            Role::Gateway,
            Operation::Devices { user: name.clone() },
            now,
        ) {
            Reply::Devices { devices, .. } => devices,
            other => return self.violation(now, format!("{name}: Devices answered {other:?}")),
        };
        let expected = self.model_devices(user, now);
        let got: Vec<(DeviceId, Duration)> = listed
            .iter()
            .map(|d: &DeviceEntry| (d.device, d.locked_for))
            .collect();
        if got != expected {
            return self.violation(
                now,
                format!("{name}: Devices listed {got:?}, the model says {expected:?}"),
            );
        }
        // A device whose validity ended must be refused outright.
        let gone: Vec<DeviceId> = self.users.get(user).map_or_else(Vec::new, |u| {
            u.devices
                .iter()
                .filter(|d| d.expires.is_some_and(|end| end <= now.0))
                .map(|d| d.id)
                .collect()
        });
        for device in gone {
            match self.call(
                Role::Gateway,
                Operation::Challenge {
                    user: name.clone(),
                    device,
                },
                now,
            ) {
                Reply::Error {
                    code: ErrorCode::NotFound,
                    ..
                } => self.report.expired_devices_refused += 1,
                other => self.violation(
                    now,
                    format!("{name}: expired device {device} got {other:?}"),
                ),
            }
        }
        // The user picks a device that is not locked, as a login page offers.
        let usable: Vec<DeviceId> = expected
            .iter()
            .filter(|(_, locked)| locked.is_zero())
            .map(|(id, _)| *id)
            .collect();
        if usable.is_empty() {
            if !expected.is_empty() {
                self.report.targets_locked_out += 1;
            }
            return;
        }
        let pick = usable[self.rng.random_range(0..usable.len())];
        let Some(device) = self
            .users
            .get(user)
            .and_then(|u| u.devices.iter().position(|d| d.id == pick))
        else {
            return;
        };
        let Some(key) = self.challenge(user, device, now) else {
            return;
        };
        // Most answer within a minute; one in ten walks away and answers
        // after the challenge expired.
        let ttl = u64::try_from(self.config.challenges.ttl.as_millis()).unwrap_or(u64::MAX / 4);
        let delay = if self.rng.random_range(0..10) == 0 {
            ttl + self.rng.random_range(1_000..600_000)
        } else {
            self.rng.random_range(5_000..60_000)
        };
        self.schedule(
            now.0 + delay,
            Event::Answer {
                user,
                challenge: key,
            },
        );
    }

    /// Asks a challenge; the model says whether it must be issued, and
    /// with which question. The issued challenge is remembered under the
    /// key returned.
    fn challenge(&mut self, user: usize, device: usize, now: Timestamp) -> Option<u64> {
        let (name, id) = self
            .users
            .get(user)
            .and_then(|u| Some((u.user.clone(), u.devices.get(device)?.id)))?;
        let (rules, lockout) = (self.config.challenges.clone(), self.config.lockout.clone());
        let model = self.users.get_mut(user)?.devices.get_mut(device)?;
        let asking = model
            .questions
            .ask(&rules, &lockout, &mut model.failures, now.0);
        let reply = self.call(
            Role::Gateway,
            Operation::Challenge {
                user: name.clone(),
                device: id,
            },
            now,
        );
        match (asking, reply) {
            (
                model::Asking::Issued { same, locked },
                Reply::Challenge {
                    challenge, text, ..
                },
            ) => {
                if let Some(length) = locked {
                    self.count_lockout(length);
                }
                if same.as_ref().is_some_and(|same| *same != text) {
                    self.violation(
                        now,
                        format!("{name}: device {id} was asked {text:?}, not its pending {same:?}"),
                    );
                }
                let key = self.remember(user, device, challenge, text.clone(), now);
                let expires_at = self.open.get(&key).map_or(0, |(_, o)| o.expires_at);
                let model = self.users.get_mut(user)?.devices.get_mut(device)?;
                if !model.questions.issued(key, text.clone(), expires_at) {
                    self.violation(
                        now,
                        format!("{name}: device {id} was asked {text:?} again after answering it"),
                    );
                }
                Some(key)
            }
            (
                model::Asking::DailyCap,
                Reply::Error {
                    code: ErrorCode::RateLimited,
                    ..
                },
            ) => {
                self.report.challenges_over_daily_cap += 1;
                None
            }
            (asking, other) => {
                self.violation(
                    now,
                    format!("{name}: Challenge on {id} got {other:?}, the model says {asking:?}"),
                );
                None
            }
        }
    }

    fn count_lockout(&mut self, length: Duration) {
        *self
            .report
            .lockouts_by_seconds
            .entry(length.as_secs())
            .or_default() += 1;
    }

    fn remember(
        &mut self,
        user: usize,
        device: usize,
        id: ChallengeId,
        text: ChallengeText,
        now: Timestamp,
    ) -> u64 {
        let ttl = u64::try_from(self.config.challenges.ttl.as_millis()).unwrap_or(u64::MAX / 4);
        self.next_open += 1;
        self.open.insert(
            self.next_open,
            (
                id,
                OpenChallenge {
                    key: self.next_open,
                    user,
                    device,
                    text,
                    expires_at: now.0 + ttl,
                    attempts_left: self.config.challenges.attempts,
                },
            ),
        );
        self.next_open
    }

    /// The user's own, right answer.
    fn answer(&mut self, user: usize, key: u64, now: Timestamp) {
        let Some((id, open)) = self.open.remove(&key) else {
            return;
        };
        let current = self
            .users
            .get(user)
            .and_then(|u| u.devices.get(open.device))
            .is_some_and(|d| d.questions.is_current(key));
        let Some(code) = self
            .users
            .get(user)
            .and_then(|u| u.devices.get(open.device))
            .and_then(|d| d.emulated.answer(&open.text, now.0 / 1000).ok())
        else {
            return;
        };
        let (verdict, _) = self.verify(id, open, code.as_str(), now);
        match verdict {
            Verdict::Accepted { .. } => self.report.logins_accepted += 1,
            Verdict::UnknownChallenge if !current => self.report.answers_superseded += 1,
            // Refused for lateness: expired, or expired long ago.
            Verdict::Expired | Verdict::UnknownChallenge => self.report.late_answers_expired += 1,
            Verdict::LockedOut { .. } => self.report.targets_locked_out += 1,
            _ => {}
        }
    }

    /// An attacker asks a challenge for a target's device and guesses
    /// until the challenge is used up or the device locks.
    fn attack(&mut self, user: usize, device: usize, now: Timestamp) {
        let next = now.0 + self.rng.random_range(MINUTE..20 * MINUTE);
        self.schedule(next, Event::Attack { user, device });
        let expired = self
            .users
            .get(user)
            .and_then(|u| u.devices.get(device))
            .is_none_or(|d| d.expires.is_some_and(|end| end <= now.0));
        if expired {
            return;
        }
        let Some(key) = self.challenge(user, device, now) else {
            return;
        };
        let Some((id, mut open)) = self.open.remove(&key) else {
            return;
        };
        let Some(space) = self
            .users
            .get(user)
            .and_then(|u| u.devices.get(device))
            .map(|d| d.emulated.answer_space())
        else {
            return;
        };
        loop {
            let guess = space.random_guess(&mut self.rng);
            self.report.attacker_guesses += 1;
            let (verdict, left) = self.verify(id, open, &guess, now);
            match (verdict, left) {
                (Verdict::Accepted { .. }, _) => self.report.attacker_accepts += 1,
                (Verdict::Rejected { .. }, Some(still_open)) => {
                    open = still_open;
                    continue;
                }
                _ => {}
            }
            break;
        }
    }

    /// Verifies `answer` and checks the verdict against the model; returns
    /// the verdict and the challenge if it stays open.
    fn verify(
        &mut self,
        id: ChallengeId,
        mut open: OpenChallenge,
        answer: &str,
        now: Timestamp,
    ) -> (Verdict, Option<OpenChallenge>) {
        let got = match self.call(
            Role::Gateway,
            Operation::Verify {
                challenge: id,
                response: Answer::new(answer),
            },
            now,
        ) {
            Reply::Verdict(verdict) => verdict,
            other => {
                self.violation(now, format!("Verify answered {other:?}"));
                return (Verdict::UnknownChallenge, None);
            }
        };
        let lockout = self.config.lockout.clone();
        let forgotten = now >= Timestamp(open.expires_at).plus(slsd::store::EXPIRED_GRACE);
        let Some(user) = self.users.get_mut(open.user) else {
            return (got, None);
        };
        let name = user.user.clone();
        let Some(device) = user.devices.get_mut(open.device) else {
            return (got, None);
        };
        let right = device
            .emulated
            .answer(&open.text, now.0 / 1000)
            .is_ok_and(|code| code.as_str() == answer);
        let mut challenge = model::Challenge {
            expires_at: open.expires_at,
            attempts_left: open.attempts_left,
        };
        let attempt = model::Attempt {
            right,
            forgotten,
            device_expired: device.expires.is_some_and(|end| end <= now.0),
            current: device.questions.is_current(open.key),
            now: now.0,
        };
        let holder = model::Holder {
            user: &name,
            device: device.id,
            kind: device.emulated.kind(),
        };
        let (expected, stays, locked) = model::verify(
            &lockout,
            &mut device.failures,
            &mut challenge,
            attempt,
            &holder,
        );
        open.attempts_left = challenge.attempts_left;
        let remembered = self.config.challenges.remembered_questions;
        device
            .questions
            .answered(open.key, &expected, locked.is_some(), remembered);
        let id = device.id;
        if let Some(length) = locked {
            self.count_lockout(length);
        }
        if got != expected {
            self.violation(
                now,
                format!("{name}: device {id} answered {got:?}, the model says {expected:?}"),
            );
        }
        (got, stays.then_some(open))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, days: u64) -> ScenarioPlan {
        ScenarioPlan::new(seed, Duration::from_secs(days * 86_400), 20).unwrap()
    }

    #[test]
    fn a_seed_replays_the_same_run() {
        let a = run(&plan(5, 2)).unwrap();
        let b = run(&plan(5, 2)).unwrap();
        let c = run(&plan(6, 2)).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.requests, b.requests);
        assert_ne!(a.digest, c.digest);
        assert!(
            a.invariant_violations.is_empty(),
            "{:?}",
            a.invariant_violations
        );
    }

    /// The cluster store's logic (on Redis in memory) under the same
    /// scenario and model: its own digest, replayed alike, every invariant
    /// held, and the same logins, attacks and lockouts as the embedded
    /// store's run sees (the same rules; only ids and hence the digest
    /// differ).
    #[test]
    fn the_cluster_store_replays_under_the_same_model() {
        let mut on_cluster = plan(5, 2);
        on_cluster.store = ScenarioStore::ClusterInMemory;
        let a = run(&on_cluster).unwrap();
        let b = run(&on_cluster).unwrap();
        assert_eq!(a.digest, b.digest);
        assert!(
            a.invariant_violations.is_empty(),
            "{:?}",
            a.invariant_violations
        );
        let embedded = run(&plan(5, 2)).unwrap();
        assert_ne!(a.digest, embedded.digest);
        assert_eq!(a.requests, embedded.requests);
        assert_eq!(a.logins_accepted, embedded.logins_accepted);
        assert_eq!(a.lockouts_by_seconds, embedded.lockouts_by_seconds);
        assert!(a.logins_accepted > 0 && !a.lockouts_by_seconds.is_empty());
    }

    #[test]
    fn the_model_catches_an_engine_that_differs_from_it() {
        // The engine locks for 60 s first; a model told 30 s must object.
        let mut plan = plan(1, 1);
        let mut world = World::new(&plan).unwrap();
        world.config.lockout.first = Duration::from_secs(30);
        let end = EPOCH.0 + DAY;
        while let Some(Reverse((at, _, event))) = world.queue.pop() {
            if at >= end {
                break;
            }
            world.happen(Timestamp(at), event);
        }
        assert!(world.violations > 0);
        assert!(
            world.report.invariant_violations[0].contains("the model says"),
            "{:?}",
            world.report.invariant_violations
        );
        plan.users = 3;
        assert!(matches!(run(&plan), Err(ScenarioError::TooFewUsers)));
    }
}
