//! A sequence of arbitrary operations — challenges (for one's own device
//! or another user's), right and wrong answers, replays of accepted
//! answers, time passing, the sweeper, unlocks — against the real engine
//! over a real registry, each reply checked against the reference model
//! (`sls_sim::model`): no wrong answer is accepted, nothing is accepted
//! twice, attempts and lockouts follow the rules.
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
use slsd::engine::{Engine, Role};
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::profile::DeviceKind;
use slsd::store::registry::{FailureState, Registry};
use slsd::store::sealed::SecretCipher;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

const CONFIG: &str = "[challenges]\nttl = \"30s\"\nattempts = 3\nper-user-per-minute = 100000\nuser-limit-buckets = 64\n[lockout]\nfailures = 3\nfirst = \"10s\"\nmax = \"40s\"\n";
const START: u64 = 1_800_000_000_000;
const USERS: [&str; 2] = ["alice", "bob"];
/// (owner, kind, PIN): alice holds a DSC+ and a card, bob an IB Key.
const DEVICES: [(usize, DeviceKind, Option<&str>); 3] = [
    (0, DeviceKind::DscPlus, Some("1234")),
    (0, DeviceKind::Scc, None),
    (1, DeviceKind::IbKey, None),
];

struct Device {
    id: DeviceId,
    owner: usize,
    emulated: EmulatedDevice,
    failures: Failures,
}

struct Open {
    id: ChallengeId,
    device: usize,
    text: ChallengeText,
    state: model::Challenge,
    alive: bool,
}

struct World {
    engine: Engine,
    rng: ChaCha20Rng,
    config: Config,
    users: Vec<Username>,
    devices: Vec<Device>,
    open: Vec<Open>,
    accepted: Vec<(ChallengeId, String)>,
    now: u64,
    last_sweep: u64,
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
        // The database stays open; its directory entry can go now, so no
        // run leaves files behind.
        drop(scratch);
        Fixture {
            config,
            registry,
            devices,
            users,
        }
    })
}

impl World {
    /// A fresh engine over the fixture's registry, every lockout cleared.
    fn new() -> Self {
        let fixture = fixture();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let config = fixture.config.clone();
        let engine = Engine::new(
            Arc::new(config.clone()),
            Arc::clone(&fixture.registry),
            &mut rng,
        );
        // Lockouts left by the previous run cleared in memory (an Unlock
        // would commit to the database each time).
        for (id, _) in &fixture.devices {
            if let Some(device) = fixture.registry.device(*id) {
                *device.failures() = FailureState::default();
            }
        }
        let devices = DEVICES
            .iter()
            .zip(&fixture.devices)
            .map(|((owner, _, _), (id, emulated))| Device {
                id: *id,
                owner: *owner,
                emulated: emulated.clone(),
                failures: Failures::default(),
            })
            .collect();
        Self {
            engine,
            rng,
            config,
            users: fixture.users.clone(),
            devices,
            open: Vec::new(),
            accepted: Vec::new(),
            now: START,
            last_sweep: 0,
        }
    }

    fn call(&mut self, role: Role, operation: Operation) -> Reply {
        self.engine
            .handle(role, operation, Timestamp(self.now), &mut self.rng)
            .reply
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        match u.int_in_range(0..=6)? {
            0 => {
                let user = u.int_in_range(0..=1)?;
                let device = u.choose_index(self.devices.len())?;
                let id = self.devices[device].id;
                let reply = self.call(
                    Role::Gateway,
                    Operation::Challenge {
                        user: self.users[user].clone(),
                        device: id,
                    },
                );
                match reply {
                    Reply::Challenge {
                        challenge, text, ..
                    } => {
                        assert_eq!(
                            self.devices[device].owner, user,
                            "a challenge was issued for another user's device"
                        );
                        let ttl = self.config.challenges.ttl.as_millis() as u64;
                        self.open.push(Open {
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
                    Reply::Error {
                        code: ErrorCode::NotFound,
                        ..
                    } => assert_ne!(self.devices[device].owner, user, "own device refused"),
                    other => panic!("Challenge answered {other:?}"),
                }
            }
            op @ (1 | 2) if !self.open.is_empty() => {
                let index = u.choose_index(self.open.len())?;
                let right = op == 1;
                self.answer(index, right);
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
            4 => self.now += u.int_in_range(0..=120_000)?,
            5 => {
                self.engine.sweep(Timestamp(self.now));
                self.last_sweep = self.now;
            }
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
            }
            _ => {}
        }
        Ok(())
    }

    fn answer(&mut self, index: usize, right: bool) {
        let open = &self.open[index];
        let device = &self.devices[open.device];
        let correct = device
            .emulated
            .answer(&open.text, self.now / 1000)
            .expect("the device takes its own challenge")
            .as_str()
            .to_owned();
        // A wrong answer: the right one with its first digit changed.
        let answer = if right {
            correct.clone()
        } else {
            let mut bytes = correct.clone().into_bytes();
            bytes[0] = b'0' + (bytes[0] - b'0' + 1) % 10;
            String::from_utf8(bytes).unwrap()
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
            swept: self.last_sweep >= open.state.expires_at,
            device_expired: false,
            now: self.now,
        };
        let (expected, stays, _) = model::verify(
            &self.config.lockout,
            &mut device.failures,
            &mut open.state,
            attempt,
            &holder,
        );
        assert_eq!(got, expected, "the engine and the model disagree");
        open.alive = stays;
        if matches!(got, Verdict::Accepted { .. }) {
            self.accepted.push((id, answer));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut world = World::new();
    while !u.is_empty() {
        if world.step(&mut u).is_err() {
            break;
        }
    }
});
