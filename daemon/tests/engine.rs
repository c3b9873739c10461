//! The engine in-process, on a virtual clock, with a real registry in a
//! temporary directory: the login flows, limits and durability that the
//! QUIC end-to-end tests then check over the network.

mod common;

use std::time::Duration;

use common::open_engine;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Engine, Outcome, Role};
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::card::CodeCard;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::profile::DeviceKind;
use slsd::wire::Page;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

const T0: Timestamp = Timestamp(1_800_000_000_000);
const DSC_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

struct World {
    dir: tempfile::TempDir,
    engine: Engine,
    rng: ChaCha20Rng,
}

const CONFIG: &str = "[challenges]\nttl = \"30s\"\nattempts = 3\nper-user-per-minute = 1000\n[lockout]\nfailures = 5\nfirst = \"60s\"\nmax = \"200s\"\ndecay-after = \"1h\"\n";

fn config() -> Config {
    Config::from_toml(CONFIG).unwrap()
}

impl World {
    fn new() -> Self {
        Self::with("")
    }

    /// A world whose configuration adds `extra` (whole sections) to the
    /// tests' one.
    fn with(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut merged: toml::Table = CONFIG.parse().unwrap();
        for (section, values) in extra.parse::<toml::Table>().unwrap() {
            match (merged.get_mut(&section), values) {
                (Some(toml::Value::Table(into)), toml::Value::Table(values)) => into.extend(values),
                (_, values) => {
                    merged.insert(section, values);
                }
            }
        }
        let config = Config::from_toml(&toml::to_string(&merged).unwrap()).unwrap();
        let engine = open_engine(dir.path(), config);
        Self {
            dir,
            engine,
            rng: ChaCha20Rng::seed_from_u64(11),
        }
    }

    /// The same data directory, reopened (a restart).
    fn restart(self) -> Self {
        let Self { dir, engine, rng } = self;
        drop(engine);
        let engine = open_engine(dir.path(), config());
        Self { dir, engine, rng }
    }

    fn call(&mut self, role: Role, operation: Operation, now: Timestamp) -> Outcome {
        self.engine.handle(role, operation, now, &mut self.rng)
    }

    fn gateway(&mut self, operation: Operation, now: Timestamp) -> Reply {
        self.call(Role::Gateway, operation, now).reply
    }

    fn enroll(
        &mut self,
        user: &str,
        kind: DeviceKind,
        secret: Option<&str>,
        pin: Option<&str>,
    ) -> (DeviceId, Option<SecretKey>) {
        let request = EnrollRequest {
            user: Username::new(user).unwrap(),
            kind,
            secret: secret.map(|s| SecretKey::from_hex(s).unwrap()),
            pin: pin.map(Pin::new),
            label: format!("{kind} of {user}"),
        };
        match self.call(Role::Admin, Operation::Enroll(request), T0).reply {
            Reply::Enrolled { device, secret } => (device, secret),
            other => panic!("enrol failed: {other:?}"),
        }
    }

    fn challenge(
        &mut self,
        user: &str,
        device: DeviceId,
        now: Timestamp,
    ) -> (ChallengeId, ChallengeText) {
        match self.gateway(
            Operation::Challenge {
                user: Username::new(user).unwrap(),
                device,
            },
            now,
        ) {
            Reply::Challenge {
                challenge, text, ..
            } => (challenge, text),
            other => panic!("challenge failed: {other:?}"),
        }
    }

    fn verify(&mut self, challenge: ChallengeId, answer: &str, now: Timestamp) -> Verdict {
        match self.gateway(
            Operation::Verify {
                challenge,
                response: Answer::new(answer),
            },
            now,
        ) {
            Reply::Verdict(v) => v,
            other => panic!("verify failed: {other:?}"),
        }
    }
}

impl World {
    /// One wrong answer to a fresh challenge of "jdoe"'s DSC+ `device`.
    fn fail_once(&mut self, device: DeviceId, now: Timestamp) -> Verdict {
        let (id, text) = self.challenge("jdoe", device, now);
        let right = dsc_plus(DSC_KEY, "4821", &text);
        self.verify(id, &wrong(&right), now)
    }

    /// Wrong answers until the device locks; the lockout's length.
    fn fail_until_locked(&mut self, device: DeviceId, now: Timestamp) -> Duration {
        loop {
            match self.fail_once(device, now) {
                Verdict::LockedOut { retry_after } => return retry_after,
                Verdict::Rejected { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }

    fn right_answer(&mut self, device: DeviceId, now: Timestamp) -> Verdict {
        let (id, text) = self.challenge("jdoe", device, now);
        let right = dsc_plus(DSC_KEY, "4821", &text);
        self.verify(id, &right, now)
    }
}

/// Enrols a security code card for "jdoe" straight through the engine.
fn enroll_card(engine: &Engine, rng: &mut ChaCha20Rng) -> DeviceId {
    let enroll = EnrollRequest {
        user: Username::new("jdoe").unwrap(),
        kind: DeviceKind::Scc,
        secret: None,
        pin: None,
        label: String::new(),
    };
    match engine
        .handle(Role::Admin, Operation::Enroll(enroll), T0, rng)
        .reply
    {
        Reply::Enrolled { device, .. } => device,
        other => panic!("enrol failed: {other:?}"),
    }
}

/// Asks "jdoe"'s challenge for `device` at `now`.
fn ask_challenge(
    engine: &Engine,
    rng: &mut ChaCha20Rng,
    device: DeviceId,
    now: Timestamp,
) -> Reply {
    let operation = Operation::Challenge {
        user: Username::new("jdoe").unwrap(),
        device,
    };
    engine.handle(Role::Gateway, operation, now, rng).reply
}

/// What a DSC+ with `key` and `pin` shows for `question`.
fn dsc_plus(key: &str, pin: &str, text: &ChallengeText) -> String {
    let ChallengeText::Question(question) = text else {
        panic!("DSC+ gets a question, not {text:?}")
    };
    let suite: Suite = "OCRA-1:HOTP-SHA256-8:QN06-PSHA1".parse().unwrap();
    let pin_hash = suite.hash_pin(pin).unwrap();
    let ocra = Ocra::new(suite, &SecretKey::from_hex(key).unwrap());
    let input = OcraInput {
        question,
        pin_hash: Some(pin_hash.as_bytes()),
        ..OcraInput::default()
    };
    ocra.respond(&input).unwrap().to_string()
}

fn later(seconds: u64) -> Timestamp {
    T0.plus(Duration::from_secs(seconds))
}

fn wrong(answer: &str) -> String {
    answer
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect()
}

#[test]
fn dsc_plus_login_accepts_the_card_and_rejects_a_wrong_pin() {
    let mut w = World::new();
    let (device, generated) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    assert!(generated.is_none(), "a supplied key is not echoed back");

    let (id, text) = w.challenge("jdoe", device, T0);
    let ChallengeText::Question(q) = &text else {
        panic!()
    };
    assert_eq!(q.len(), 6);
    assert!(q.bytes().all(|b| b.is_ascii_digit()));
    let right = dsc_plus(DSC_KEY, "4821", &text);
    assert_eq!(
        w.verify(id, &right, later(1)),
        Verdict::Accepted {
            user: Username::new("jdoe").unwrap(),
            device,
            kind: DeviceKind::DscPlus
        }
    );
    // Single use: the same answer again finds no challenge.
    assert_eq!(w.verify(id, &right, later(1)), Verdict::UnknownChallenge);

    let (id, text) = w.challenge("jdoe", device, later(2));
    let wrong_pin = dsc_plus(DSC_KEY, "4822", &text);
    assert_eq!(
        w.verify(id, &wrong_pin, later(3)),
        Verdict::Rejected { attempts_left: 2 }
    );
}

#[test]
fn code_card_login_with_a_generated_secret() {
    let mut w = World::new();
    let (device, secret) = w.enroll("amy", DeviceKind::Scc, None, None);
    let secret = secret.expect("a generated secret is returned once");
    let card = CodeCard::new(&secret, 224).unwrap();
    let (id, text) = w.challenge("amy", device, T0);
    let ChallengeText::CardPositions(a, b) = text else {
        panic!("{text:?}")
    };
    assert_ne!(a, b);
    let answer = card
        .response(card.challenge(a, b).unwrap())
        .unwrap()
        .to_string();
    assert!(matches!(
        w.verify(id, &answer, later(1)),
        Verdict::Accepted {
            kind: DeviceKind::Scc,
            ..
        }
    ));
}

#[test]
fn ib_key_offline_response_is_accepted() {
    let mut w = World::new();
    let (device, secret) = w.enroll("bob", DeviceKind::IbKey, None, None);
    let ocra = Ocra::new(
        "OCRA-1:HOTP-SHA256-8:QN06".parse::<Suite>().unwrap(),
        &secret.unwrap(),
    );
    let (id, text) = w.challenge("bob", device, T0);
    let ChallengeText::Question(q) = text else {
        panic!()
    };
    let answer = ocra
        .respond(&OcraInput {
            question: &q,
            ..OcraInput::default()
        })
        .unwrap()
        .to_string();
    assert!(matches!(
        w.verify(id, &answer, later(1)),
        Verdict::Accepted {
            kind: DeviceKind::IbKey,
            ..
        }
    ));
}

#[test]
fn challenges_expire_and_attempts_run_out() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let (id, text) = w.challenge("jdoe", device, T0);
    let right = dsc_plus(DSC_KEY, "4821", &text);
    assert_eq!(
        w.verify(id, &right, later(30)),
        Verdict::Expired,
        "TTL is 30 s"
    );

    let (id, text) = w.challenge("jdoe", device, later(40));
    let right = dsc_plus(DSC_KEY, "4821", &text);
    for left in [2, 1, 0] {
        assert_eq!(
            w.verify(id, &wrong(&right), later(41)),
            Verdict::Rejected {
                attempts_left: left
            }
        );
    }
    assert_eq!(
        w.verify(id, &right, later(42)),
        Verdict::UnknownChallenge,
        "used up after 3 attempts"
    );
}

#[test]
fn lockout_grows_clears_by_itself_and_by_unlock_and_survives_restart() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let mut now = T0;
    let fail_until_locked = |w: &mut World, now: &mut Timestamp| -> Verdict {
        loop {
            let (id, text) = w.challenge("jdoe", device, *now);
            let right = dsc_plus(DSC_KEY, "4821", &text);
            let outcome = w.call(
                Role::Gateway,
                Operation::Verify {
                    challenge: id,
                    response: Answer::new(&wrong(&right)),
                },
                *now,
            );
            assert!(outcome.persist.is_some(), "a failure is a durable change");
            let Reply::Verdict(verdict) = outcome.reply else {
                panic!()
            };
            if let Verdict::LockedOut { .. } = verdict {
                return verdict;
            }
            assert!(matches!(verdict, Verdict::Rejected { .. }));
        }
    };
    assert_eq!(
        fail_until_locked(&mut w, &mut now),
        Verdict::LockedOut {
            retry_after: Duration::from_secs(60)
        }
    );

    // Locked: even the right answer is refused until the lockout ends.
    let (id, text) = w.challenge("jdoe", device, later(10));
    let right = dsc_plus(DSC_KEY, "4821", &text);
    assert_eq!(
        w.verify(id, &right, later(10)),
        Verdict::LockedOut {
            retry_after: Duration::from_secs(50)
        }
    );

    // The failure state was persisted by the caller in production; here the
    // committer is not running, so persist it the same way it would.
    let persist_all = |w: &World| {
        let registry = w.engine.registry();
        let state = *registry.device(device).unwrap().failures();
        registry.save_failures(&[(device, state)]).unwrap();
    };
    persist_all(&w);
    let mut w = w.restart();
    let (id, text) = w.challenge("jdoe", device, later(20));
    let right = dsc_plus(DSC_KEY, "4821", &text);
    assert_eq!(
        w.verify(id, &right, later(20)),
        Verdict::LockedOut {
            retry_after: Duration::from_secs(40)
        },
        "lockout survives restart"
    );

    // It clears by itself; the next lockout doubles, capped at 200 s.
    now = later(61);
    assert_eq!(
        fail_until_locked(&mut w, &mut now),
        Verdict::LockedOut {
            retry_after: Duration::from_secs(120)
        }
    );
    now = later(61 + 121);
    assert_eq!(
        fail_until_locked(&mut w, &mut now),
        Verdict::LockedOut {
            retry_after: Duration::from_secs(200)
        }
    );

    // An operator clears it at once.
    let unlock = Operation::Unlock {
        user: Username::new("jdoe").unwrap(),
        device: None,
    };
    assert_eq!(w.call(Role::Admin, unlock, now).reply, Reply::Done);
    let (id, text) = w.challenge("jdoe", device, now);
    let right = dsc_plus(DSC_KEY, "4821", &text);
    assert!(matches!(
        w.verify(id, &right, now),
        Verdict::Accepted { .. }
    ));
}

#[test]
fn devices_survive_restart_and_revoke_is_final() {
    let mut w = World::new();
    let (dsc, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let (card, _) = w.enroll("jdoe", DeviceKind::Scc, None, None);
    let mut w = w.restart();
    let Reply::Devices { devices: list, .. } = w.gateway(
        Operation::Devices {
            user: Username::new("jdoe").unwrap(),
        },
        T0,
    ) else {
        panic!()
    };
    assert_eq!(
        list.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![dsc, card]
    );
    // The restored device still verifies with its sealed key and PIN hash.
    let (id, text) = w.challenge("jdoe", dsc, T0);
    assert!(matches!(
        w.verify(id, &dsc_plus(DSC_KEY, "4821", &text), later(1)),
        Verdict::Accepted { .. }
    ));

    let (id, text) = w.challenge("jdoe", dsc, later(2));
    assert_eq!(
        w.call(Role::Admin, Operation::Revoke { device: dsc }, later(2))
            .reply,
        Reply::Done
    );
    assert_eq!(
        w.verify(id, &dsc_plus(DSC_KEY, "4821", &text), later(3)),
        Verdict::UnknownChallenge
    );
    let mut w = w.restart();
    let Reply::Devices { devices: list, .. } = w.gateway(
        Operation::Devices {
            user: Username::new("jdoe").unwrap(),
        },
        T0,
    ) else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    assert!(matches!(
        w.gateway(
            Operation::Challenge {
                user: Username::new("jdoe").unwrap(),
                device: dsc
            },
            T0
        ),
        Reply::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));
}

#[test]
fn unknown_users_look_like_users_without_devices() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::Scc, None, None);
    assert_eq!(
        w.gateway(
            Operation::Devices {
                user: Username::new("nobody").unwrap()
            },
            T0
        ),
        Reply::Devices {
            required: true,
            devices: vec![]
        }
    );
    let nobody = w.gateway(
        Operation::Challenge {
            user: Username::new("nobody").unwrap(),
            device,
        },
        T0,
    );
    let Reply::Error { code, message, .. } = nobody else {
        panic!()
    };
    let other = w.gateway(
        Operation::Challenge {
            user: Username::new("jdoe").unwrap(),
            device: DeviceId(999),
        },
        T0,
    );
    assert_eq!(
        other,
        Reply::Error {
            code,
            retry_after: Duration::ZERO,
            message
        }
    );
}

#[test]
fn roles_may_call_only_their_operations() {
    let mut w = World::new();
    let stats = w.call(Role::Gateway, Operation::Stats, T0).reply;
    assert!(matches!(
        stats,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    let devices = w
        .call(
            Role::Admin,
            Operation::Devices {
                user: Username::new("x").unwrap(),
            },
            T0,
        )
        .reply;
    assert!(matches!(
        devices,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    for role in [Role::Carrier, Role::Phone] {
        assert!(matches!(
            w.call(role, Operation::Stats, T0).reply,
            Reply::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ));
    }
}

#[test]
fn enrolment_refuses_what_the_kind_does_not_take() {
    let mut w = World::new();
    let cases = [
        (DeviceKind::DscPlus, None, "needs its PIN"),
        (DeviceKind::DscPlus, Some("12345"), "exactly 4 digits"),
        (DeviceKind::Scc, Some("1234"), "takes no PIN"),
        (DeviceKind::Sms, None, "hold no key"),
    ];
    for (kind, pin, message) in cases {
        let request = EnrollRequest {
            user: Username::new("jdoe").unwrap(),
            kind,
            secret: None,
            pin: pin.map(Pin::new),
            label: String::new(),
        };
        let Reply::Error {
            code, message: got, ..
        } = w.call(Role::Admin, Operation::Enroll(request), T0).reply
        else {
            panic!()
        };
        assert_eq!(code, ErrorCode::InvalidArgument);
        assert!(got.contains(message), "{got}");
    }
    // Keys shorter than 128 bits are refused; 16 bytes are enough.
    for (kind, pin) in [(DeviceKind::DscPlus, Some("4821")), (DeviceKind::Scc, None)] {
        for (bytes, accepted) in [(1, false), (15, false), (16, true)] {
            let request = EnrollRequest {
                user: Username::new("keys").unwrap(),
                kind,
                secret: Some(SecretKey::from_bytes(vec![7; bytes]).unwrap()),
                pin: pin.map(Pin::new),
                label: String::new(),
            };
            match w.call(Role::Admin, Operation::Enroll(request), T0).reply {
                Reply::Enrolled { .. } if accepted => {}
                Reply::Error { code, message, .. } if !accepted => {
                    assert_eq!(code, ErrorCode::InvalidArgument);
                    assert!(
                        message.contains("at least 16 bytes (128 bits)"),
                        "{message}"
                    );
                }
                other => panic!("{kind} with {bytes} bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn challenge_issuance_is_rate_limited_per_user() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(
        dir.path(),
        Config::from_toml("[challenges]\nper-user-per-minute = 3\n").unwrap(),
    );
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let device = enroll_card(&engine, &mut rng);
    let mut ask = |now| ask_challenge(&engine, &mut rng, device, now);
    for _ in 0..3 {
        assert!(matches!(ask(T0), Reply::Challenge { .. }));
    }
    assert_eq!(
        ask(T0),
        Reply::Error {
            code: ErrorCode::RateLimited,
            retry_after: Duration::from_secs(20),
            message: "too many challenges for this user".into()
        }
    );
    assert!(matches!(ask(later(20)), Reply::Challenge { .. }));
}

#[test]
fn unknown_names_cannot_drain_an_enrolled_users_allowance() {
    // The attack: one caller asks challenges for random names, as fast as
    // it likes. With one bucket for names nobody enrolled, every unknown
    // name is refused soon, and still twenty enrolled users each get
    // their whole allowance, first challenge included.
    let first_refused = drain_attack(
        "[challenges]\nper-user-per-minute = 2\nuser-limit-buckets = 1\n",
        10_000,
        Some(2),
    );
    assert_eq!(first_refused, 0, "every enrolled user's first challenge");
    // The same at the default configuration (65,536 buckets of 10 a
    // minute for unknown names): a million random names first.
    let first_refused = drain_attack("", 1_000_000, None);
    eprintln!(
        "after 1,000,000 challenges for random names: {first_refused} of 20 enrolled users' first challenge refused"
    );
    assert_eq!(first_refused, 0, "every enrolled user's first challenge");
}

/// Asks challenges for `names` random names, then three for each of 20
/// enrolled users (the first two must be issued at a per-user limit of 2,
/// or at least the first); returns how many users' first was refused.
/// `allowed`: how many of the random names' challenges may get past the
/// limit (to NotFound), when known.
fn drain_attack(config: &str, names: usize, allowed: Option<usize>) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), Config::from_toml(config).unwrap());
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut users = Vec::new();
    for n in 0..20 {
        let enroll = EnrollRequest {
            user: Username::new(&format!("user{n}")).unwrap(),
            kind: DeviceKind::Scc,
            secret: None,
            pin: None,
            label: String::new(),
        };
        let Reply::Enrolled { device, .. } = engine
            .handle(Role::Admin, Operation::Enroll(enroll), T0, &mut rng)
            .reply
        else {
            panic!("enrol")
        };
        users.push((Username::new(&format!("user{n}")).unwrap(), device));
    }
    let challenge = |engine: &Engine, rng: &mut ChaCha20Rng, user: &Username, device| {
        let operation = Operation::Challenge {
            user: user.clone(),
            device,
        };
        engine.handle(Role::Gateway, operation, T0, rng).reply
    };
    let mut limited = 0;
    for n in 0..names {
        let name = Username::new(&format!("nobody{n}")).unwrap();
        match challenge(&engine, &mut rng, &name, DeviceId(1)) {
            Reply::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    if let Some(allowed) = allowed {
        assert_eq!(
            limited,
            names - allowed,
            "unknown names share one small budget"
        );
    }
    let mut first_refused = 0;
    for (user, device) in &users {
        match challenge(&engine, &mut rng, user, *device) {
            Reply::Challenge { .. } => {}
            _ => first_refused += 1,
        }
        if allowed.is_some() {
            // Each has the whole allowance of two, and no more.
            assert!(matches!(
                challenge(&engine, &mut rng, user, *device),
                Reply::Challenge { .. }
            ));
            assert!(matches!(
                challenge(&engine, &mut rng, user, *device),
                Reply::Error {
                    code: ErrorCode::RateLimited,
                    ..
                }
            ));
        }
    }
    first_refused
}

#[test]
fn the_challenge_table_refuses_past_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(
        dir.path(),
        Config::from_toml("[challenges]\ncapacity = 2\nper-user-per-minute = 100\n").unwrap(),
    );
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let cards: Vec<_> = (0..3).map(|_| enroll_card(&engine, &mut rng)).collect();
    let mut ask = |card: usize, now| ask_challenge(&engine, &mut rng, cards[card], now);
    assert!(matches!(ask(0, T0), Reply::Challenge { .. }));
    assert!(matches!(ask(1, T0), Reply::Challenge { .. }));
    assert!(matches!(
        ask(2, T0),
        Reply::Error {
            code: ErrorCode::TooManyChallenges,
            ..
        }
    ));
    // Asking a device again replaces its challenge: no second slot.
    assert!(matches!(ask(0, T0), Reply::Challenge { .. }));
    // A reload to three makes room for the third card.
    let roomier =
        Config::from_toml("[challenges]\ncapacity = 3\nper-user-per-minute = 100\n").unwrap();
    assert_eq!(
        engine.reconfigure(roomier).unwrap(),
        ["challenges.capacity"]
    );
    assert!(matches!(ask(2, T0), Reply::Challenge { .. }));
    // Expired ones are kept while a late answer still hears `Expired`
    // (`store::EXPIRED_GRACE`, 60 s), then swept.
    assert_eq!(engine.sweep(later(121)), 0, "expired, within the grace");
    assert_eq!(engine.sweep(later(181)), 3, "expired challenges are swept");
    assert!(matches!(ask(2, later(181)), Reply::Challenge { .. }));
}

/// The card login an attacker watched: its question and answer.
struct Observed {
    question: ChallengeText,
    answer: String,
}

/// "jdoe"'s card of `positions` and one right login the attacker saw.
fn card_and_an_observed_login(w: &mut World, positions: u16) -> (DeviceId, CodeCard, Observed) {
    let (card, secret) = w.enroll("jdoe", DeviceKind::Scc, None, None);
    let secret = CodeCard::new(&secret.unwrap(), positions).unwrap();
    let (id, question) = w.challenge("jdoe", card, T0);
    let answer = card_answer(&secret, &question);
    assert!(matches!(
        w.verify(id, &answer, T0),
        Verdict::Accepted { .. }
    ));
    (card, secret, Observed { question, answer })
}

fn card_answer(card: &CodeCard, text: &ChallengeText) -> String {
    let ChallengeText::CardPositions(a, b) = text else {
        panic!("a card gets positions, not {text:?}")
    };
    card.response(card.challenge(*a, *b).unwrap())
        .unwrap()
        .to_string()
}

/// Challenge shopping (asking until the positions of a login one saw come
/// up again, then replaying its answer). Before, every ask drew fresh
/// positions for free: of the 49,952 ordered pairs of a 224-position card
/// the observed one came back, and its answer was accepted, after 34,632
/// asks in the probe. Now asking again shows the same question
/// until it is answered right or the device locks, so each new question
/// costs a lockout; the observed one is never asked again; and every
/// replay is a recorded failure, up to the hard limit.
#[test]
fn challenge_shopping_never_brings_back_an_observed_question() {
    let mut w = World::with(
        "[challenges]\nper-user-per-minute = 100000000\nper-device-per-day = 100000000\n",
    );
    let (card, _, observed) = card_and_an_observed_login(&mut w, 224);
    // 50,000 free asks: one question, and not the observed one.
    let mut asked = std::collections::HashSet::new();
    let key = |text: ChallengeText| format!("{text:?}");
    for _ in 0..50_000 {
        asked.insert(key(w.challenge("jdoe", card, later(1)).1));
    }
    assert_eq!(asked.len(), 1, "asking again drew a new question");
    assert!(!asked.contains(&key(observed.question.clone())));
    // Replaying the observed answer to whatever is asked, waiting out
    // every lockout, until only an operator can unlock the card.
    let (mut now, mut replays) = (later(2), 0);
    loop {
        let (id, question) = w.challenge("jdoe", card, now);
        assert_ne!(
            question, observed.question,
            "an answered question came back"
        );
        asked.insert(key(question));
        replays += 1;
        match w.verify(id, &observed.answer, now) {
            Verdict::Rejected { .. } => {}
            Verdict::LockedOut { retry_after } if retry_after == Duration::MAX => break,
            Verdict::LockedOut { retry_after } => now = now.plus(retry_after),
            other => panic!("a replay answered {other:?}"),
        }
    }
    // Every replay was a failure: the hard limit (100) counts them all.
    assert_eq!(replays, 100);
    println!(
        "challenge shopping: {} distinct questions seen in 50,000 asks and {replays} replays \
         (one per lockout), the observed one never; no replay accepted",
        asked.len()
    );
    assert!(asked.len() <= 21, "{} questions", asked.len());
}

#[test]
fn a_question_answered_right_is_not_asked_again() {
    // A card of 3 positions has 6 questions: without the memory the
    // observed one would come back about once in 6 fresh draws.
    let mut w = World::with(
        "[devices.scc]\ncheck = { method = \"code-card\", positions = 3 }\n\
         [lockout]\nfailures = 1\n",
    );
    let (card, secret, observed) = card_and_an_observed_login(&mut w, 3);
    for round in 0..40 {
        let (id, question) = w.challenge("jdoe", card, later(round));
        assert_ne!(question, observed.question, "round {round}");
        // A wrong answer locks (one failure allowed), which lets the next
        // challenge ask anew; the operator unlocks at once.
        let right = card_answer(&secret, &question);
        assert!(matches!(
            w.verify(id, &wrong(&right), later(round)),
            Verdict::LockedOut { .. }
        ));
        let unlock = Operation::Unlock {
            user: Username::new("jdoe").unwrap(),
            device: Some(card),
        };
        assert_eq!(w.call(Role::Admin, unlock, later(round)).reply, Reply::Done);
    }
}

#[test]
fn only_the_latest_challenge_of_a_device_can_be_answered() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let (first, text) = w.challenge("jdoe", device, T0);
    let (second, again) = w.challenge("jdoe", device, T0);
    assert_eq!(text, again, "the unanswered question is asked again");
    let right = dsc_plus(DSC_KEY, "4821", &text);
    assert_eq!(w.verify(first, &right, T0), Verdict::UnknownChallenge);
    assert!(matches!(
        w.verify(second, &right, T0),
        Verdict::Accepted { .. }
    ));
    // Answered: the next question is another.
    let (_, next) = w.challenge("jdoe", device, T0);
    assert_ne!(next, text);
}

#[test]
fn a_challenge_that_expires_unanswered_counts_as_a_wrong_answer() {
    let mut w = World::with("[lockout]\nfailures = 3\n");
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    // Two abandoned challenges (TTL 30 s), then a right answer: accepted,
    // and the count starts again.
    let mut now = T0;
    for _ in 0..2 {
        w.challenge("jdoe", device, now);
        now = now.plus(Duration::from_secs(31));
    }
    assert!(matches!(
        w.right_answer(device, now),
        Verdict::Accepted { .. }
    ));
    // Three abandoned ones lock the device, as three wrong answers would.
    for _ in 0..3 {
        w.challenge("jdoe", device, now);
        now = now.plus(Duration::from_secs(31));
    }
    assert!(matches!(
        w.right_answer(device, now),
        Verdict::LockedOut { .. }
    ));
    // A challenge answered wrong and left to expire counts once, not twice.
    let mut w = World::with("[lockout]\nfailures = 2\n");
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    assert!(matches!(w.fail_once(device, T0), Verdict::Rejected { .. }));
    assert!(matches!(
        w.right_answer(device, later(31)),
        Verdict::Accepted { .. }
    ));
}

#[test]
fn a_device_is_challenged_at_most_per_device_per_day() {
    let mut w = World::with("[challenges]\nper-device-per-day = 3\n");
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let (other, _) = w.enroll("jdoe", DeviceKind::Scc, None, None);
    for _ in 0..3 {
        w.challenge("jdoe", device, T0);
    }
    let ask = |device| Operation::Challenge {
        user: Username::new("jdoe").unwrap(),
        device,
    };
    let Reply::Error {
        code: ErrorCode::RateLimited,
        retry_after,
        ..
    } = w.gateway(ask(device), T0)
    else {
        panic!("a fourth challenge today")
    };
    // T0 is 08:00 UTC: the next day starts in 16 hours.
    assert_eq!(retry_after, Duration::from_secs(16 * 3600));
    // The cap is the device's: the user's other device is still asked.
    assert!(matches!(w.gateway(ask(other), T0), Reply::Challenge { .. }));
    assert!(matches!(
        w.gateway(ask(device), T0.plus(retry_after)),
        Reply::Challenge { .. }
    ));
}

#[test]
fn a_challenge_is_accepted_at_most_once_under_concurrent_verifies() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    for round in 0..20 {
        let (id, text) = w.challenge("jdoe", device, later(round));
        let right = dsc_plus(DSC_KEY, "4821", &text);
        let engine = &w.engine;
        let accepted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16u64)
                .map(|seed| {
                    let right = right.clone();
                    s.spawn(move || {
                        let mut rng = ChaCha20Rng::seed_from_u64(seed);
                        let op = Operation::Verify {
                            challenge: id,
                            response: Answer::new(&right),
                        };
                        matches!(
                            engine
                                .handle(Role::Gateway, op, later(round), &mut rng)
                                .reply,
                            Reply::Verdict(Verdict::Accepted { .. })
                        ) as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(accepted, 1, "round {round}");
    }
}

#[test]
fn an_online_card_stops_working_when_its_validity_ends() {
    const DAY: u64 = 24 * 3600;
    let mut world = World::new();
    let (card, secret) = world.enroll("jdoe", DeviceKind::OnlineScc, None, None);
    let (dsc, _) = world.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("1234"));
    let card_key = CodeCard::new(&secret.unwrap(), 224).unwrap();
    let answer = |text: &ChallengeText| match text {
        ChallengeText::CardPositions(a, b) => card_key.codes_at(&[*a, *b]).unwrap().to_string(),
        other => panic!("a card gets positions, not {other:?}"),
    };
    let listed = |world: &mut World, now| match world.gateway(
        Operation::Devices {
            user: Username::new("jdoe").unwrap(),
        },
        now,
    ) {
        Reply::Devices { devices: list, .. } => list.iter().map(|d| d.device).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };

    // Usable on its 20th day.
    let day20 = later(20 * DAY);
    let (challenge, text) = world.challenge("jdoe", card, day20);
    let verdict = world.verify(challenge, &answer(&text), day20);
    assert!(matches!(verdict, Verdict::Accepted { .. }), "{verdict:?}");
    assert_eq!(listed(&mut world, day20), vec![card, dsc]);

    // A challenge issued 10 s before the end is refused after it.
    let end = later(21 * DAY);
    let (challenge, text) = world.challenge("jdoe", card, Timestamp(end.0 - 10_000));
    assert_eq!(
        world.verify(challenge, &answer(&text), end),
        Verdict::Expired
    );
    // After 21 days the login no longer offers it and it gets no challenge;
    // the user's other device still works and the operator still sees both.
    assert_eq!(listed(&mut world, end), vec![dsc]);
    let refused = world.gateway(
        Operation::Challenge {
            user: Username::new("jdoe").unwrap(),
            device: card,
        },
        end,
    );
    assert!(
        matches!(&refused, Reply::Error { code: ErrorCode::NotFound, message, .. } if message.contains("validity")),
        "{refused:?}"
    );
    let (challenge, text) = world.challenge("jdoe", dsc, end);
    let verdict = world.verify(challenge, &dsc_plus(DSC_KEY, "1234", &text), end);
    assert!(matches!(verdict, Verdict::Accepted { .. }), "{verdict:?}");
    let all = match world
        .call(
            Role::Admin,
            Operation::ListDevices {
                user: Username::new("jdoe").unwrap(),
                page: Page::first(500),
            },
            end,
        )
        .reply
    {
        Reply::Devices { devices: list, .. } => list.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(all, 2);
}

#[test]
fn lockout_escalation_decays_in_quiet_periods_and_resets_on_success() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let hour = 3600;
    assert_eq!(w.fail_until_locked(device, T0), Duration::from_secs(60));
    assert_eq!(
        w.fail_until_locked(device, later(60)),
        Duration::from_secs(120)
    );
    // Without decay the next would be 240 s, capped at 200 s. One quiet
    // hour after the lockout ended takes one doubling off.
    let mut now = 60 + 120 + hour;
    assert_eq!(
        w.fail_until_locked(device, later(now)),
        Duration::from_secs(120)
    );
    now += 120;
    assert_eq!(
        w.fail_until_locked(device, later(now)),
        Duration::from_secs(200)
    );
    // Five quiet hours: the escalation starts over.
    now += 200 + 5 * hour;
    assert_eq!(
        w.fail_until_locked(device, later(now)),
        Duration::from_secs(60)
    );

    // Four wrong answers, then an hour's quiet: the count starts over, so
    // four more do not lock the device.
    now += 60 + 5 * hour;
    for _ in 0..4 {
        assert!(matches!(
            w.fail_once(device, later(now)),
            Verdict::Rejected { .. }
        ));
    }
    now += hour;
    for _ in 0..4 {
        assert!(matches!(
            w.fail_once(device, later(now)),
            Verdict::Rejected { .. }
        ));
    }
    assert!(matches!(
        w.fail_once(device, later(now)),
        Verdict::LockedOut { .. }
    ));

    // A right answer clears the escalation at once.
    now += 60;
    assert_eq!(
        w.fail_until_locked(device, later(now)),
        Duration::from_secs(120)
    );
    now += 120;
    assert!(matches!(
        w.right_answer(device, later(now)),
        Verdict::Accepted { .. }
    ));
    assert_eq!(
        w.fail_until_locked(device, later(now)),
        Duration::from_secs(60)
    );
}

#[test]
fn a_hundred_wrong_answers_without_a_right_one_need_an_operator() {
    let mut w = World::new();
    let (device, _) = w.enroll("jdoe", DeviceKind::DscPlus, Some(DSC_KEY), Some("4821"));
    let (card, card_secret) = w.enroll("jdoe", DeviceKind::Scc, None, None);
    let card_secret = CodeCard::new(&card_secret.unwrap(), 224).unwrap();
    let mut now = T0;
    let mut failures = 0;
    let last = loop {
        let verdict = w.fail_once(device, now);
        failures += 1;
        match verdict {
            Verdict::Rejected { .. } => {}
            Verdict::LockedOut { retry_after } if retry_after == Duration::MAX => break failures,
            // A timed lockout: wait it out, as a patient guesser would.
            Verdict::LockedOut { retry_after } => now = now.plus(retry_after),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(last, 100, "the default lockout.hard-limit");

    // A year later it is still locked, and says so; the right answer too.
    let year = now.plus(Duration::from_secs(365 * 86_400));
    assert_eq!(
        w.right_answer(device, year),
        Verdict::LockedOut {
            retry_after: Duration::MAX
        }
    );
    let devices = w.gateway(
        Operation::Devices {
            user: Username::new("jdoe").unwrap(),
        },
        year,
    );
    let Reply::Devices { devices, .. } = devices else {
        panic!("{devices:?}")
    };
    let locked: Vec<_> = devices.iter().map(|d| (d.device, d.locked_for)).collect();
    assert_eq!(
        locked,
        vec![(device, Duration::MAX), (card, Duration::ZERO)]
    );

    // It survives a restart.
    let state = *w.engine.registry().device(device).unwrap().failures();
    w.engine
        .registry()
        .save_failures(&[(device, state)])
        .unwrap();
    let mut w = w.restart();
    assert_eq!(
        w.right_answer(device, year),
        Verdict::LockedOut {
            retry_after: Duration::MAX
        }
    );

    // The owner logs in with the other device meanwhile.
    let (id, text) = w.challenge("jdoe", card, year);
    let ChallengeText::CardPositions(a, b) = text else {
        panic!("{text:?}")
    };
    let codes = card_secret.challenge(a, b).unwrap();
    let answer = card_secret.response(codes).unwrap().to_string();
    assert!(matches!(
        w.verify(id, &answer, year),
        Verdict::Accepted { device, .. } if device == card
    ));
    // An operator unlocks it.
    let unlock = Operation::Unlock {
        user: Username::new("jdoe").unwrap(),
        device: Some(device),
    };
    assert_eq!(w.call(Role::Admin, unlock, year).reply, Reply::Done);
    assert!(matches!(
        w.right_answer(device, year),
        Verdict::Accepted { .. }
    ));
}
