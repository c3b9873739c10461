//! A sequence of arbitrary operations — challenges (for one's own device
//! or another user's), right and wrong answers, replays of accepted
//! answers, SMS codes sent and entered right or wrong, pushes approved
//! with the right or a wrong number or proof, denied or awaited, time
//! passing, the sweeper, unlocks, imported tokens (an event token, a time
//! token, a counter OCRA card) answered at used, current and future
//! counters and steps, and resyncs of them — against the real engine over
//! a real registry, each verdict checked against the reference model
//! (`sls_sim::model`): no wrong answer is accepted, nothing is accepted
//! twice, no used counter or step comes back, attempts and lockouts follow
//! the rules, a resend is the same code, every push verdict reaches the
//! gateway exactly once.
//!
//! The input's first byte picks the store: the embedded one, or the
//! cluster store on Redis in memory (`store::cluster::memory`), whose
//! compare-and-swaps the input can make lose (as when another node wins a
//! race) — the same operations and the same model for both. On the
//! cluster the at-rest key is also rotated, the pass's steps interleaved
//! with everything else and the old keys retired after a pass that found
//! nothing left, as the server's pass does: no verdict may change.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sls_sim::device::EmulatedDevice;
use sls_sim::model::{self, Attempt, Failures, Holder};
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine, ReplyLog, Role, Sink, StreamId};
use slsd::identity::{ChallengeId, DeviceId, PushId, Serial, Username};
use slsd::otp::SecretKey;
use slsd::otp::push::{self, PushSigner};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::store::change::ResealCursor;
use slsd::store::cluster::QueueWaiter;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::embedded::registry::Registry;
use slsd::store::questions::QuestionMemory;
use slsd::store::sealed::SecretCipher;
use slsd::store::{FailureState, Store};
use slsd::wire::request::{Answer, Pin};
use slsd::wire::token::{NewToken, TokenInfo};
use slsd::wire::{ChallengeText, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

const CONFIG: &str = "[tokens]\nresync-window = 40\n[challenges]\nttl = \"30s\"\nattempts = 3\nper-user-per-minute = 100000\nuser-limit-buckets = 64\nper-device-per-day = 20\n[lockout]\nfailures = 3\nfirst = \"10s\"\nmax = \"40s\"\n[sms]\nttl = \"60s\"\nresend-interval = \"0s\"\nmax-sends = 20\nmax-checks = 3\nsends-per-number-per-hour = 1000000\nsends-per-prefix-per-minute = 1000000\n[push]\nttl = \"20s\"\npending-per-user = 3\n[lifecycle]\ntoken-ttl = \"60s\"\n";
/// Alice's verified number.
const ALICE_NUMBER: &str = "+41 791234567";
/// The seed of bob's IB Key push key.
const PUSH_SEED: [u8; 32] = [9; 32];
/// The TLS exporter value the phone's connection would have.
const BINDING: [u8; 32] = [7; 32];

/// Alice's live SMS code as the model knows it.
struct Sms {
    code: String,
    state: model::Challenge,
    sends: u8,
    alive: bool,
}

/// A push as the model knows it.
struct Push {
    id: PushId,
    match_number: u8,
    expires_at: u64,
    /// The phone's answer, until a gateway collects it.
    answered: Option<Verdict>,
    /// A gateway waits on it (its verdict will be written to the stream).
    waiting: bool,
    /// Its verdict reached the gateway (or it is gone).
    done: bool,
}
const START: u64 = 1_800_000_000_000;
/// How long past its expiry a challenge is still known (ms).
const GRACE: u64 = slsd::store::EXPIRED_GRACE.as_millis() as u64;
const USERS: [&str; 2] = ["alice", "bob"];
/// (owner, kind, PIN): alice holds a DSC+ and a card, bob an IB Key.
const DEVICES: [(usize, DeviceKind, Option<&str>); 3] = [
    (0, DeviceKind::DscPlus, Some("1234")),
    (0, DeviceKind::Scc, None),
    (1, DeviceKind::IbKey, None),
];

/// Bob's imported tokens: (serial, algorithm, PIN).
const TOKENS: [(&str, &str, Option<&str>); 3] = [
    ("F-001", "HOTP-SHA1-6", None),
    ("F-002", "TOTP-SHA1-6-30s", None),
    ("F-003", "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1", Some("5678")),
];

struct Device {
    id: DeviceId,
    owner: usize,
    emulated: EmulatedDevice,
    failures: Failures,
    questions: model::Questions,
    /// An imported token's moving factor, as the model follows it.
    token: Option<TokenModel>,
}

/// Where a token's codes stand: the first counter or step an answer may
/// still use (everything below was used or passed over), and for a time
/// token its step in seconds.
#[derive(Debug, Clone, Copy)]
struct TokenModel {
    from: u64,
    step_secs: Option<u64>,
}

impl TokenModel {
    /// The current step at `now` (ms) of a time token.
    fn step_at(&self, now: u64) -> Option<u64> {
        self.step_secs.map(|secs| now / 1000 / secs)
    }

    /// The counters or steps an answer may come from, `reach` wide
    /// (RFC 4226 §7.4's look-ahead, RFC 6238 §5.2's drift).
    fn window(&self, now: u64, reach: u64) -> std::ops::RangeInclusive<u64> {
        match self.step_at(now) {
            None => self.from..=self.from + reach,
            Some(step) => step.saturating_sub(reach).max(self.from)..=step + reach,
        }
    }

    /// A counter or step the input picks (`pick` in 0..=15) in units of
    /// `stride`: a few below where the token stands (used), then on past
    /// its window.
    fn pick(&self, now: u64, pick: u64, stride: u64) -> u64 {
        let base = self.step_at(now).unwrap_or(self.from);
        (base + pick * stride).saturating_sub(3 * stride)
    }
}

/// The code `device` shows for `text` at counter or step `at`.
fn code_at(device: &EmulatedDevice, text: &ChallengeText, at: u64) -> String {
    device
        .answer_at(text, at)
        .expect("a token")
        .expect("the token takes its challenge")
        .as_str()
        .to_owned()
}

/// Bob's tokens imported and assigned through `admin`: their ids and
/// emulations.
fn import_tokens(
    users: &[Username],
    mut admin: impl FnMut(Operation) -> Reply,
) -> Vec<(DeviceId, EmulatedDevice)> {
    let keyed = |n: usize| SecretKey::from_bytes(vec![0x40 + n as u8; 20]).unwrap();
    let tokens = TOKENS
        .iter()
        .enumerate()
        .map(|(n, (serial, algorithm, _))| NewToken {
            info: TokenInfo {
                serial: Serial::new(serial).unwrap(),
                algorithm: algorithm.parse().unwrap(),
                counter: 0,
                valid_from: None,
                valid_until: None,
                manufacturer: String::new(),
            },
            key: keyed(n),
        })
        .collect();
    let import = Operation::ImportTokens {
        import: 0,
        commit: true,
        tokens,
    };
    match admin(import) {
        Reply::TokensImported {
            committed: true, ..
        } => {}
        other => panic!("the tokens' import: {other:?}"),
    }
    TOKENS
        .iter()
        .enumerate()
        .map(|(n, (serial, algorithm, pin))| {
            let assign = Operation::AssignToken {
                serial: Serial::new(serial).unwrap(),
                user: users[1].clone(),
                pin: pin.map(Pin::new),
                label: String::new(),
            };
            let Reply::Enrolled { device, .. } = admin(assign) else {
                panic!("assigning {serial}");
            };
            let algorithm = algorithm.parse().unwrap();
            let emulated = EmulatedDevice::token(&algorithm, &keyed(n), *pin).unwrap();
            (device, emulated)
        })
        .collect()
}

/// A key rotation under way (on the cluster): the pass's cursor, what
/// this pass re-sealed so far, whether a pass found nothing left, and
/// when the rotation was.
struct Rotation {
    cursor: ResealCursor,
    resealed: u64,
    through: bool,
    since: u64,
}

struct Open {
    /// The model's handle of this challenge.
    key: u64,
    id: ChallengeId,
    device: usize,
    text: ChallengeText,
    state: model::Challenge,
    alive: bool,
}

struct World {
    engine: Engine,
    /// On the cluster store: Redis in memory, and this node's connection
    /// for its queues.
    cluster: Option<(Arc<MemoryRedis>, QueueWaiter)>,
    carrier: Arc<ReplyLog>,
    phone: Arc<ReplyLog>,
    gateway: Arc<ReplyLog>,
    sinks: [Arc<dyn Sink>; 3],
    sms_device: DeviceId,
    sms_failures: Failures,
    sms: Option<Sms>,
    pushes: Vec<Push>,
    rng: ChaCha20Rng,
    config: Config,
    users: Vec<Username>,
    devices: Vec<Device>,
    open: Vec<Open>,
    /// The last handle given to a challenge (`Open::key`).
    next_key: u64,
    accepted: Vec<(ChallengeId, String)>,
    now: u64,
    /// On the cluster: the last call lost a write to "another node"
    /// (`interfere`).
    lost_race: bool,
    /// The at-rest key new seals use, and the rotation under way.
    active_key: u32,
    rotation: Option<Rotation>,
}

/// A scratch directory in memory when the machine has one.
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

/// The registry and its devices, enrolled once per process: opening a
/// database and enrolling costs far more than a run of operations.
struct Fixture {
    config: Config,
    registry: Arc<Registry>,
    devices: Vec<(DeviceId, EmulatedDevice)>,
    users: Vec<Username>,
    sms_device: DeviceId,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let scratch = scratch();
        let dir = scratch.path();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let config = Config::from_toml(CONFIG).expect("the target's configuration");
        let cipher =
            SecretCipher::load_or_create(&dir.join("secrets.key"), &mut rng).expect("key file");
        let registry = Arc::new(
            Registry::open(&dir.join("registry.redb"), cipher, config.devices.clone())
                .expect("registry"),
        );
        let engine = Engine::new(Arc::new(config.clone()), Arc::clone(&registry), &mut rng);
        let users: Vec<Username> = USERS.iter().map(|u| Username::new(u).unwrap()).collect();
        let mut devices = Vec::new();
        for (n, (owner, kind, pin)) in DEVICES.into_iter().enumerate() {
            let secret = SecretKey::from_bytes(vec![n as u8 + 1; 32]).unwrap();
            let request = EnrollRequest {
                user: users[owner].clone(),
                kind,
                secret: Some(secret.clone()),
                pin: pin.map(Pin::new),
                label: String::new(),
            };
            let id = match engine
                .handle(
                    Role::Admin,
                    Operation::Enroll(request),
                    Timestamp(START),
                    &mut rng,
                )
                .reply
            {
                Reply::Enrolled { device, .. } => device,
                other => panic!("enrolment: {other:?}"),
            };
            let emulated = EmulatedDevice::new(kind, &secret, pin, &config.devices).unwrap();
            devices.push((id, emulated));
        }
        let mut admin = |operation| {
            engine
                .handle(Role::Admin, operation, Timestamp(START), &mut rng)
                .reply
        };
        let enrol_number = Operation::EnrollPhone {
            user: users[0].clone(),
            number: PhoneNumber::parse(ALICE_NUMBER).unwrap(),
            label: String::new(),
        };
        let sms_device = match admin(enrol_number) {
            Reply::Enrolled { device, .. } => device,
            other => panic!("alice's number: {other:?}"),
        };
        let bind = Operation::BindPushKey {
            device: devices[2].0,
            key: PushSigner::from_seed(PUSH_SEED).public(),
        };
        assert_eq!(admin(bind), Reply::Done, "bob's push key");
        devices.extend(import_tokens(&users, &mut admin));
        // The database stays open; its directory entry can go now, so no
        // run leaves files behind.
        drop(scratch);
        Fixture {
            config,
            registry,
            devices,
            users,
            sms_device,
        }
    })
}

/// The fixture's devices enrolled anew on a cluster in memory (with the
/// same keys and PINs, so the same emulated devices answer): their ids,
/// then the SMS device's.
fn enrol_on_cluster(
    engine: &Engine,
    memory: &MemoryRedis,
    users: &[Username],
    rng: &mut ChaCha20Rng,
) -> (Vec<DeviceId>, DeviceId) {
    let caller = Caller::detached(Role::Admin);
    let mut admin = |operation| {
        memory.set_now(Timestamp(START));
        let handled = engine.handle_on_cluster(&caller, operation, Timestamp(START), rng);
        run_now(handled).flatten().expect("an answer at once")
    };
    let mut ids = Vec::new();
    for (n, (owner, kind, pin)) in DEVICES.into_iter().enumerate() {
        let request = EnrollRequest {
            user: users[owner].clone(),
            kind,
            secret: Some(SecretKey::from_bytes(vec![n as u8 + 1; 32]).unwrap()),
            pin: pin.map(Pin::new),
            label: String::new(),
        };
        match admin(Operation::Enroll(request)) {
            Reply::Enrolled { device, .. } => ids.push(device),
            other => panic!("enrolment on the cluster: {other:?}"),
        }
    }
    let phone = Operation::EnrollPhone {
        user: users[0].clone(),
        number: PhoneNumber::parse(ALICE_NUMBER).unwrap(),
        label: String::new(),
    };
    let Reply::Enrolled { device: sms, .. } = admin(phone) else {
        panic!("alice's number on the cluster");
    };
    let bind = Operation::BindPushKey {
        device: ids[2],
        key: PushSigner::from_seed(PUSH_SEED).public(),
    };
    assert_eq!(admin(bind), Reply::Done, "bob's push key on the cluster");
    ids.extend(
        import_tokens(users, &mut admin)
            .into_iter()
            .map(|(id, _)| id),
    );
    (ids, sms)
}

impl World {
    /// A fresh engine over the fixture's registry, every lockout cleared;
    /// or, `on_cluster`, over a fresh cluster in memory.
    fn new(on_cluster: bool) -> Self {
        let fixture = fixture();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let config = fixture.config.clone();
        let mut engine = Engine::new(
            Arc::new(config.clone()),
            Arc::clone(&fixture.registry),
            &mut rng,
        );
        let mut ids: Vec<DeviceId> = fixture.devices.iter().map(|(id, _)| *id).collect();
        let mut sms_device = fixture.sms_device;
        let mut cluster = None;
        if on_cluster {
            let memory = Arc::new(MemoryRedis::new());
            memory.set_now(Timestamp(START));
            let cipher = SecretCipher::new(&[3; 32]);
            engine = engine
                .with_memory_cluster(Arc::clone(&memory), cipher, &mut rng)
                .expect("an engine on the cluster in memory");
            (ids, sms_device) = enrol_on_cluster(&engine, &memory, &fixture.users, &mut rng);
            let waiter = run_now(engine.cluster_queue_waiter())
                .and_then(Result::ok)
                .expect("a queue connection");
            cluster = Some((memory, waiter));
        }
        // Lockouts left by the previous run cleared in memory (an Unlock
        // would commit to the database each time). A token's moving factor
        // stays: what a run used stays used on disk, and the model starts
        // where the token stands.
        let enrolled = fixture.devices.iter().map(|(id, _)| *id);
        let mut moving = Vec::new();
        for id in enrolled.chain([fixture.sms_device]) {
            if let Some(device) = fixture.registry.device(id) {
                let mut failures = device.failures();
                *device.questions(&failures) = QuestionMemory::default();
                *failures = FailureState {
                    moving: failures.moving,
                    ..FailureState::default()
                };
                moving.push(if on_cluster { 0 } else { failures.moving });
            }
        }
        let owners = DEVICES
            .iter()
            .map(|(owner, _, _)| *owner)
            .chain(TOKENS.iter().map(|_| 1));
        let devices = owners
            .zip(&fixture.devices)
            .zip(ids)
            .zip(moving)
            .map(|(((owner, (_, emulated)), id), from)| Device {
                id,
                owner,
                emulated: emulated.clone(),
                failures: Failures::default(),
                questions: model::Questions::default(),
                token: emulated.moves().then(|| TokenModel {
                    from,
                    step_secs: emulated.step_secs(),
                }),
            })
            .collect();
        let (carrier, phone, gateway) = (
            Arc::new(ReplyLog::default()),
            Arc::new(ReplyLog::default()),
            Arc::new(ReplyLog::default()),
        );
        let sinks: [Arc<dyn Sink>; 3] = [carrier.clone(), phone.clone(), gateway.clone()];
        let mut world = Self {
            engine,
            cluster,
            carrier,
            phone,
            gateway,
            sinks,
            sms_device,
            sms_failures: Failures::default(),
            sms: None,
            pushes: Vec::new(),
            rng,
            config,
            users: fixture.users.clone(),
            devices,
            open: Vec::new(),
            next_key: 0,
            accepted: Vec::new(),
            now: START,
            lost_race: false,
            active_key: 0,
            rotation: None,
        };
        let bridge = world.stream(Role::Carrier, 0, Operation::CarrierSubscribe);
        assert_eq!(bridge, Some(Reply::Subscribed));
        let ib_key = world.devices[2].id;
        let proof =
            PushSigner::from_seed(PUSH_SEED).sign(&push::subscribe_message(&BINDING, ib_key));
        let subscribe = Operation::PhoneSubscribe {
            device: ib_key,
            proof,
        };
        assert_eq!(
            world.stream(Role::Phone, 1, subscribe),
            Some(Reply::Subscribed)
        );
        world
    }

    /// A call from a stream (0: the carrier's, 1: the phone's, 2: the
    /// gateway's); `None` when the answer comes later on the stream.
    fn stream(&mut self, role: Role, stream: usize, operation: Operation) -> Option<Reply> {
        let caller = Caller {
            role,
            connection: stream as u64 + 1,
            stream: StreamId(stream as u64 + 1),
            binding: &BINDING,
            sink: Some(&self.sinks[stream]),
            request: 1,
        };
        let now = Timestamp(self.now);
        let Some((memory, _)) = &self.cluster else {
            return self
                .engine
                .handle_from(&caller, operation, now, &mut self.rng)
                .map(|outcome| outcome.reply);
        };
        memory.set_now(now);
        let handled = self
            .engine
            .handle_on_cluster(&caller, operation, now, &mut self.rng);
        let reply = run_now(handled).expect("the in-memory store answers at once");
        self.relay();
        reply
    }

    fn call(&mut self, role: Role, operation: Operation) -> Reply {
        let now = Timestamp(self.now);
        let Some((memory, _)) = &self.cluster else {
            return self
                .engine
                .handle(role, operation, now, &mut self.rng)
                .reply;
        };
        memory.set_now(now);
        let interfering = memory.interfering();
        let caller = Caller::detached(role);
        let handled = self
            .engine
            .handle_on_cluster(&caller, operation, now, &mut self.rng);
        let reply = run_now(handled).expect("the in-memory store answers at once");
        self.lost_race = memory.interfering() < interfering;
        self.relay();
        reply.unwrap_or_else(|| Reply::error(ErrorCode::InvalidArgument, "needs a stream"))
    }

    /// On the cluster: what the node's relay round and queue tasks do at
    /// once (carrier messages to the bridge, push notices to the phone,
    /// verdicts to the waiting gateway), as the server runs them.
    fn relay(&self) {
        let Some((memory, waiter)) = &self.cluster else {
            return;
        };
        let now = Timestamp(self.now);
        memory.set_now(now);
        let engine = &self.engine;
        let at_once = "the in-memory store answers at once";
        run_now(engine.cluster_relay(now))
            .expect(at_once)
            .expect("a relay round");
        let inbox = engine.cluster_wait_inbox(waiter, std::time::Duration::ZERO, || now);
        run_now(inbox).expect(at_once).expect("the inbox");
        let outbox = engine.cluster_wait_outbox(waiter, std::time::Duration::ZERO, || now);
        run_now(outbox).expect(at_once).expect("the outbox");
    }

    /// The sweeper and the tick, as the server runs them every second and
    /// every 100 ms: a waiting gateway learns its push expired; the push
    /// says so once more to the next to ask, until it is forgotten
    /// (`await_push`).
    fn sweep(&mut self) {
        self.engine.sweep(Timestamp(self.now));
        self.engine.tick(Timestamp(self.now));
        self.relay();
        let now = self.now;
        let expired = self.gateway.take();
        let mut told = 0;
        for p in self
            .pushes
            .iter_mut()
            .filter(|p| !p.done && p.waiting && p.expires_at <= now)
        {
            told += 1;
            p.waiting = false;
        }
        assert_eq!(expired.len(), told, "{expired:?}");
        assert!(
            expired
                .iter()
                .all(|r| *r == Reply::Verdict(Verdict::Expired))
        );
    }

    /// Time passes. On the cluster the node's relay rounds run through it,
    /// once a second as the server's do at least (they renew the phone's
    /// link, which lapses in the store without them).
    fn pass(&mut self, millis: u64) {
        let end = self.now + millis;
        if self.cluster.is_some() {
            while self.now + 1000 < end {
                self.now += 1000;
                self.relay();
            }
        }
        self.now = end;
    }

    /// Makes the cluster's next `writes` compare-and-swaps lose, as when
    /// another node wins the race (nothing on the embedded store).
    fn interfere(&self, writes: u32) {
        if let Some((memory, _)) = &self.cluster {
            memory.interfere(writes);
        }
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let op = u.int_in_range(0..=15)?;
        match op {
            // Key rotation on the cluster only: the embedded registry's
            // keyring is the fixture's, shared by every run.
            14 if self.cluster.is_some() => self.rotate_key(),
            15 if self.cluster.is_some() => {
                let (steps, limit) = (u.int_in_range(1..=64)?, u.int_in_range(1..=64)?);
                self.reseal_steps(steps, limit);
            }
            // At most 15: a loop has 16 rounds, so an operation still ends.
            12 => self.interfere(u.int_in_range(1..=15)?),
            7 => self.send_code(),
            op @ (8 | 9) => self.enter_code(op == 8),
            10 => self.push(),
            11 if !self.pushes.is_empty() => {
                let index = u.choose_index(self.pushes.len())?;
                match u.int_in_range(0..=4)? {
                    4 => self.await_push(index),
                    how => self.answer_push(index, how),
                }
            }
            0 => {
                let user = u.int_in_range(0..=1)?;
                let device = u.choose_index(self.devices.len())?;
                let id = self.devices[device].id;
                let owned = self.devices[device].owner == user;
                let asking = owned.then(|| {
                    let model = &mut self.devices[device];
                    let (rules, lockout) = (&self.config.challenges, &self.config.lockout);
                    model
                        .questions
                        .ask(rules, lockout, &mut model.failures, self.now)
                });
                let reply = self.call(
                    Role::Gateway,
                    Operation::Challenge {
                        user: self.users[user].clone(),
                        device: id,
                    },
                );
                match (asking, reply) {
                    (
                        Some(model::Asking::Issued { same, .. }),
                        Reply::Challenge {
                            challenge, text, ..
                        },
                    ) => {
                        if let Some(same) = same {
                            assert_eq!(text, same, "the pending question was not asked again");
                        }
                        let ttl = self.config.challenges.ttl.as_millis() as u64;
                        self.next_key += 1;
                        let key = self.next_key;
                        let fresh = self.devices[device].questions.issued(
                            key,
                            text.clone(),
                            self.now + ttl,
                        );
                        // A token's "enter your code" is the same each
                        // time: its moving factor keeps used codes out.
                        let token = self.devices[device].token.is_some();
                        assert!(
                            fresh || (token && text == ChallengeText::EnterCode),
                            "a question answered right was asked again"
                        );
                        self.open.push(Open {
                            key,
                            id: challenge,
                            device,
                            text,
                            state: model::Challenge {
                                expires_at: self.now + ttl,
                                attempts_left: self.config.challenges.attempts,
                            },
                            alive: true,
                        });
                    }
                    (
                        Some(model::Asking::DailyCap),
                        Reply::Error {
                            code: ErrorCode::RateLimited,
                            ..
                        },
                    ) => {}
                    (
                        None,
                        Reply::Error {
                            code: ErrorCode::NotFound,
                            ..
                        },
                    ) => {}
                    (asking, other) => {
                        panic!("Challenge answered {other:?}, the model says {asking:?}")
                    }
                }
            }
            op @ (1 | 2) if !self.open.is_empty() => {
                let index = u.choose_index(self.open.len())?;
                let right = op == 1;
                let pick = u.int_in_range(0..=15)?;
                self.answer(index, right, pick);
            }
            13 => {
                let token = u.int_in_range(0..=TOKENS.len() as u64 - 1)? as usize;
                let pick = u.int_in_range(0..=15)?;
                self.resync(DEVICES.len() + token, pick, u.arbitrary()?);
            }
            3 if !self.accepted.is_empty() => {
                let (challenge, answer) =
                    self.accepted[u.choose_index(self.accepted.len())?].clone();
                let reply = self.call(
                    Role::Gateway,
                    Operation::Verify {
                        challenge,
                        response: Answer::new(&answer),
                    },
                );
                assert_eq!(
                    reply,
                    Reply::Verdict(Verdict::UnknownChallenge),
                    "an accepted answer was replayed"
                );
            }
            4 => self.pass(u.int_in_range(0..=120_000)?),
            5 => self.sweep(),
            6 => {
                let user = u.int_in_range(0..=1)?;
                let reply = self.call(
                    Role::Admin,
                    Operation::Unlock {
                        user: self.users[user].clone(),
                        device: None,
                    },
                );
                assert_eq!(reply, Reply::Done);
                for device in self.devices.iter_mut().filter(|d| d.owner == user) {
                    device.failures = Failures::default();
                }
                if user == 0 {
                    self.sms_failures = Failures::default();
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `Keyring { rotate }`: a new key seals from now on, the keys before
    /// it keep opening what they sealed, and the pass starts over.
    fn rotate_key(&mut self) {
        let reply = self.call(Role::Admin, Operation::Keyring { rotate: true });
        let Reply::Keyring {
            active, retiring, ..
        } = reply
        else {
            panic!("a rotation: {reply:?}")
        };
        assert_eq!(active, self.active_key + 1);
        assert!(retiring.contains(&self.active_key), "{retiring:?}");
        self.active_key = active;
        self.rotation = Some(Rotation {
            cursor: ResealCursor::default(),
            resealed: 0,
            through: false,
            since: self.now,
        });
    }

    /// Up to `steps` steps of the re-seal pass, `limit` records each (a
    /// pass over the cluster's slots takes 32 at least). A pass that
    /// re-sealed something is followed by another (a record whose write
    /// kept losing is left for it); after one that found nothing, once the
    /// short-lived values sealed before the rotation have expired, the old
    /// keys retire.
    fn reseal_steps(&mut self, steps: u32, limit: usize) {
        let Some(rotation) = self.rotation.as_mut() else {
            return;
        };
        let store = self.engine.cluster_store().expect("on the cluster");
        let at_once = "the in-memory store answers at once";
        for _ in 0..steps {
            if rotation.through {
                break;
            }
            let step = run_now(store.reseal(&mut rotation.cursor, limit, &mut self.rng))
                .expect(at_once)
                .expect("a re-seal step");
            rotation.resealed += step.resealed;
            if step.done {
                if rotation.resealed == 0 {
                    // Nothing left: only the wait remains.
                    rotation.through = true;
                } else {
                    rotation.cursor = ResealCursor::default();
                    rotation.resealed = 0;
                }
            }
        }
        if !rotation.through {
            return;
        }
        let lifetime = self.config.lifecycle.token_ttl.max(self.config.sms.ttl);
        if self.now < rotation.since + lifetime.as_millis() as u64 {
            return;
        }
        let retired = run_now(store.retire_keys(&mut self.rng))
            .expect(at_once)
            .expect("the old keys retire");
        assert!(retired.contains(&(self.active_key - 1)), "{retired:?}");
        assert_eq!(store.keyring().retiring(), Vec::<u32>::new());
        self.rotation = None;
    }

    /// Answers open challenge `index` with the device's answer, or
    /// (`!right`) that answer with its first digit changed. A token
    /// answers at a counter or step `pick` chooses (used, in its window,
    /// past it); whether that is right is the model's window search.
    fn answer(&mut self, index: usize, right: bool, pick: u64) {
        let open = &self.open[index];
        let device = &self.devices[open.device];
        let now = self.now;
        let correct = match &device.token {
            None => device
                .emulated
                .answer(&open.text, now / 1000)
                .expect("the device takes its own challenge")
                .as_str()
                .to_owned(),
            Some(token) => code_at(&device.emulated, &open.text, token.pick(now, pick, 1)),
        };
        // A wrong answer: the right one with its first digit changed.
        let answer = if right {
            correct.clone()
        } else {
            let mut bytes = correct.clone().into_bytes();
            bytes[0] = b'0' + (bytes[0] - b'0' + 1) % 10;
            String::from_utf8(bytes).unwrap()
        };
        // A token's answer is right when it is the code of a counter or
        // step its window allows (the first such moves the token on).
        let matched = device.token.map(|token| {
            let reach = match token.step_secs {
                None => self.config.tokens.look_ahead,
                Some(_) => self.config.tokens.drift_steps,
            };
            token
                .window(now, reach)
                .find(|&at| code_at(&device.emulated, &open.text, at) == answer)
        });
        let right = match matched {
            Some(found) => found.is_some(),
            None => right,
        };
        let (id, alive) = (open.id, open.alive);
        let reply = self.call(
            Role::Gateway,
            Operation::Verify {
                challenge: id,
                response: Answer::new(&answer),
            },
        );
        let Reply::Verdict(got) = reply else {
            panic!("Verify answered {reply:?}");
        };
        if !alive {
            assert_eq!(
                got,
                Verdict::UnknownChallenge,
                "a closed challenge answered"
            );
            return;
        }
        let open = &mut self.open[index];
        let device = &mut self.devices[open.device];
        let user = &self.users[device.owner];
        let holder = Holder {
            user,
            device: device.id,
            kind: device.emulated.kind(),
        };
        let attempt = Attempt {
            right,
            forgotten: self.now >= open.state.expires_at + GRACE,
            device_expired: false,
            current: device.questions.is_current(open.key),
            now: self.now,
        };
        let (expected, stays, locked) = model::verify(
            &self.config.lockout,
            &mut device.failures,
            &mut open.state,
            attempt,
            &holder,
        );
        let remembered = self.config.challenges.remembered_questions;
        device
            .questions
            .answered(open.key, &expected, locked.is_some(), remembered);
        assert_eq!(got, expected, "the engine and the model disagree");
        open.alive = stays;
        if matches!(got, Verdict::Accepted { .. }) {
            if let (Some(token), Some(Some(at))) = (device.token.as_mut(), matched) {
                token.from = at + 1;
            }
            self.accepted.push((id, answer));
        }
    }

    /// An operator resyncs token `index` with its codes at a counter or
    /// step `pick` chooses and the next one (or, `!consecutive`, the one
    /// after): found within `tokens.resync-window` and not below what was
    /// used, the token moves past them and its failures clear; else
    /// nothing changes.
    fn resync(&mut self, index: usize, pick: u64, consecutive: bool) {
        let window = self.config.tokens.resync_window;
        let now = self.now;
        let device = &mut self.devices[index];
        let token = device.token.as_mut().expect("a token");
        // An OCRA card's codes answer the question of all zeros (its
        // suite's QN08).
        let text = if TOKENS[index - DEVICES.len()].1.starts_with("OCRA-") {
            ChallengeText::Question("0".repeat(8))
        } else {
            ChallengeText::EnterCode
        };
        let at = token.pick(now, pick, window / 8 + 1);
        let first = code_at(&device.emulated, &text, at);
        let second = code_at(
            &device.emulated,
            &text,
            at + if consecutive { 1 } else { 2 },
        );
        let found = token.window(now, window).find(|&c| {
            code_at(&device.emulated, &text, c) == first
                && code_at(&device.emulated, &text, c + 1) == second
        });
        let id = device.id;
        let reply = self.call(
            Role::Admin,
            Operation::Resync {
                device: id,
                first: Answer::new(&first),
                second: Answer::new(&second),
            },
        );
        let device = &mut self.devices[index];
        match found {
            Some(c) => {
                assert_eq!(reply, Reply::Done, "a resync the model finds");
                if let Some(token) = device.token.as_mut() {
                    token.from = c + 2;
                }
                device.failures = Failures::default();
            }
            None => assert!(
                matches!(
                    reply,
                    Reply::Error {
                        code: ErrorCode::InvalidArgument,
                        ..
                    }
                ),
                "a resync the model does not find: {reply:?}"
            ),
        }
    }
}

impl World {
    fn send_code(&mut self) {
        let operation = Operation::SendCode {
            user: self.users[0].clone(),
            channel: Channel::Sms,
        };
        let reply = self.call(Role::Gateway, operation);
        if self.lost_race
            && matches!(
                reply,
                Reply::Error {
                    code: ErrorCode::Busy,
                    ..
                }
            )
        {
            // A send that finds the code session changed by another node
            // under it sends nothing and says so (the gateway retries).
            assert!(self.carrier.take().is_empty(), "a refused send was sent");
            return;
        }
        if !self.sms_failures.locked_for(self.now).is_zero() {
            assert!(
                matches!(
                    reply,
                    Reply::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                ),
                "a locked SMS device was sent a code: {reply:?}"
            );
            return;
        }
        let live = self
            .sms
            .as_ref()
            .filter(|s| s.alive && s.state.expires_at > self.now);
        if live.is_some_and(|s| s.sends >= self.config.sms.max_sends) {
            assert!(matches!(
                reply,
                Reply::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            ));
            return;
        }
        assert!(
            matches!(reply, Reply::CodeSent { .. }),
            "SendCode: {reply:?}"
        );
        let Some(Reply::Message { text, .. }) = self.carrier.take().pop() else {
            panic!("the bridge was handed nothing");
        };
        let code: String = text
            .as_str()
            .split("code is ")
            .nth(1)
            .expect("the text carries the code")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        match self
            .sms
            .as_mut()
            .filter(|s| s.alive && s.state.expires_at > self.now)
        {
            Some(sms) => {
                assert_eq!(
                    sms.code, code,
                    "a resend while the code lives is the same code"
                );
                sms.sends += 1;
            }
            None => {
                self.sms = Some(Sms {
                    code,
                    state: model::Challenge {
                        expires_at: self.now + self.config.sms.ttl.as_millis() as u64,
                        attempts_left: self.config.sms.max_checks,
                    },
                    sends: 1,
                    alive: true,
                });
            }
        }
    }

    fn enter_code(&mut self, right: bool) {
        let entered = match &self.sms {
            Some(sms) if right => sms.code.clone(),
            Some(sms) => {
                let mut bytes = sms.code.clone().into_bytes();
                bytes[0] = b'0' + (bytes[0] - b'0' + 1) % 10;
                String::from_utf8(bytes).unwrap()
            }
            None => "000000".into(),
        };
        let operation = Operation::VerifyCode {
            user: self.users[0].clone(),
            code: Answer::new(&entered),
        };
        let Reply::Verdict(got) = self.call(Role::Gateway, operation) else {
            panic!("VerifyCode answered with no verdict");
        };
        let Some(sms) = self.sms.as_mut().filter(|s| s.alive) else {
            assert_eq!(got, Verdict::UnknownChallenge, "no live code, yet {got:?}");
            return;
        };
        let holder = Holder {
            user: &self.users[0],
            device: self.sms_device,
            kind: DeviceKind::Sms,
        };
        let attempt = Attempt {
            right,
            forgotten: self.now >= sms.state.expires_at + GRACE,
            device_expired: false,
            current: true,
            now: self.now,
        };
        let (expected, stays, _) = model::verify(
            &self.config.lockout,
            &mut self.sms_failures,
            &mut sms.state,
            attempt,
            &holder,
        );
        assert_eq!(
            got, expected,
            "VerifyCode: the engine and the model disagree"
        );
        sms.alive = stays;
    }

    fn push(&mut self) {
        let ib_key = self.devices[2].id;
        let operation = Operation::Push {
            user: self.users[1].clone(),
            device: ib_key,
        };
        let reply = self.call(Role::Gateway, operation);
        let now = self.now;
        let pending = self
            .pushes
            .iter()
            .filter(|p| !p.done && p.answered.is_none() && p.expires_at > now)
            .count();
        if !self.devices[2].failures.locked_for(now).is_zero()
            || pending >= usize::from(self.config.push.pending_per_user)
        {
            assert!(
                matches!(
                    reply,
                    Reply::Error {
                        code: ErrorCode::RateLimited,
                        ..
                    }
                ),
                "Push: {reply:?}"
            );
            return;
        }
        let Reply::PushSent {
            push: id,
            match_number,
            ..
        } = reply
        else {
            panic!("Push: {reply:?}");
        };
        let Some(Reply::PushNotice { push, .. }) = self.phone.take().pop() else {
            panic!("the phone got no notice");
        };
        assert_eq!(push, id);
        assert!((10..100).contains(&match_number), "a two-digit number");
        self.pushes.push(Push {
            id,
            match_number,
            expires_at: now + self.config.push.ttl.as_millis() as u64,
            answered: None,
            waiting: false,
            done: false,
        });
    }

    /// The phone answers: 0 right, 1 a wrong number, 2 a bad proof, 3 deny.
    fn answer_push(&mut self, index: usize, how: u8) {
        let device = self.devices[2].id;
        let (id, shown) = {
            let p = &self.pushes[index];
            (p.id, p.match_number)
        };
        // The number typed: another two-digit one for a wrong number.
        let chosen = match how {
            1 => 10 + (shown - 10 + 1) % 90,
            _ => shown,
        };
        let signer = PushSigner::from_seed(if how == 2 { [1; 32] } else { PUSH_SEED });
        let operation = match how {
            3 => Operation::Deny { push: id },
            _ => Operation::Approve {
                push: id,
                chosen,
                proof: signer.sign(&push::approve_message(id, device, chosen)),
            },
        };
        let reply = self
            .stream(Role::Phone, 1, operation)
            .expect("answered at once");
        let now = self.now;
        let p = &mut self.pushes[index];
        if p.done || p.answered.is_some() || p.expires_at <= now {
            assert!(
                matches!(
                    reply,
                    Reply::Error {
                        code: ErrorCode::NotFound,
                        ..
                    }
                ),
                "a spent push answered: {reply:?}"
            );
            return;
        }
        let verdict = if how == 3 {
            assert_eq!(reply, Reply::Done);
            // "Not me" counts as a wrong answer, unless the device is locked.
            let failures = &mut self.devices[2].failures;
            if failures.locked_for(now).is_zero() {
                model::fail(&self.config.lockout, failures, now);
            }
            Verdict::Denied
        } else {
            let holder = Holder {
                user: &self.users[1],
                device,
                kind: DeviceKind::IbKey,
            };
            let attempt = Attempt {
                right: how == 0,
                forgotten: false,
                device_expired: false,
                current: true,
                now,
            };
            let mut state = model::Challenge {
                expires_at: p.expires_at,
                attempts_left: 1,
            };
            let failures = &mut self.devices[2].failures;
            let (expected, _, _) =
                model::verify(&self.config.lockout, failures, &mut state, attempt, &holder);
            assert_eq!(
                reply,
                Reply::Verdict(expected.clone()),
                "Approve: engine and model disagree"
            );
            expected
        };
        if p.waiting {
            assert_eq!(
                self.gateway.take(),
                vec![Reply::Verdict(verdict)],
                "the waiting gateway"
            );
            p.done = true;
        } else {
            p.answered = Some(verdict);
        }
    }

    fn await_push(&mut self, index: usize) {
        // The server's tick tells a waiting gateway within 100 ms that its
        // push expired: long before another wait could come.
        let now = self.now;
        if self
            .pushes
            .iter()
            .any(|p| !p.done && p.waiting && p.expires_at <= now)
        {
            self.sweep();
        }
        let id = self.pushes[index].id;
        let got = self.stream(Role::Gateway, 2, Operation::AwaitPush { push: id });
        let now = self.now;
        let p = &mut self.pushes[index];
        let forgotten = now >= p.expires_at + GRACE;
        if p.done || (forgotten && !p.waiting) {
            // Handed out, or forgotten.
            assert_eq!(got, Some(Reply::Verdict(Verdict::UnknownChallenge)));
            p.done = true;
        } else if let Some(verdict) = p.answered.take() {
            assert_eq!(got, Some(Reply::Verdict(verdict)), "a settled push");
            p.done = true;
        } else if p.expires_at <= now {
            let expected = if forgotten {
                Verdict::UnknownChallenge
            } else {
                Verdict::Expired
            };
            assert_eq!(got, Some(Reply::Verdict(expected)));
            if p.waiting {
                // The earlier wait is still registered; it is not told.
                p.waiting = false;
            }
            p.done = true;
        } else if p.waiting {
            assert!(
                matches!(
                    got,
                    Some(Reply::Error {
                        code: ErrorCode::Busy,
                        ..
                    })
                ),
                "a second waiter: {got:?}"
            );
        } else {
            assert_eq!(got, None, "a pending push is answered later");
            p.waiting = true;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let on_cluster = u.arbitrary::<bool>().unwrap_or(false);
    let mut world = World::new(on_cluster);
    while !u.is_empty() {
        if world.step(&mut u).is_err() {
            break;
        }
    }
});
