//! A login through the engine in-process: `Challenge` then `Verify` with
//! the right DSC+ answer, on the embedded store (a real registry in a
//! temporary data directory, as `slsd serve` opens it), one login per
//! iteration over 1,000 enrolled users in turn. No network: this is the
//! engine's own cost of a login (the issuance limit, the device's question
//! memory, the challenge table, the OCRA check, the failure state) — the
//! figure the one-engine refactor must not make worse.
//!
//! Run: `cargo bench -p sls-benches --bench engine`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Engine, Role};
use slsd::identity::{DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::profile::{Check, DeviceKind};
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, EnrollRequest, Operation, Reply, Verdict};

const USERS: usize = 1_000;
const PIN: &str = "4821";

fn key() -> SecretKey {
    SecretKey::from_bytes((0u8..32).collect()).expect("32-byte key")
}

fn login(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let config = Config::from_toml(
        "[challenges]\nper-user-per-minute = 1000000\nper-device-per-day = 100000000\n",
    )
    .expect("configuration");
    let cipher =
        SecretCipher::load_or_create(&dir.path().join("secrets.key"), &mut rng).expect("key");
    let registry = Registry::open(
        &dir.path().join("registry.redb"),
        cipher,
        config.devices.clone(),
    )
    .expect("registry");
    let Check::Ocra { suite, .. } = &config.devices.get(DeviceKind::DscPlus).check else {
        panic!("the DSC+ profile checks OCRA");
    };
    let suite: Arc<Suite> = Arc::clone(suite);
    let engine = Engine::new(Arc::new(config), Arc::new(registry), &mut rng);
    let card = Ocra::new(Arc::clone(&suite), &key());
    let pin_hash = suite.hash_pin(PIN).expect("the suite binds a PIN");
    let now = Timestamp(1_800_000_000_000);
    let users: Vec<(Username, DeviceId)> = (0..USERS)
        .map(|i| {
            let user = Username::new(&format!("user{i}")).expect("name");
            let request = EnrollRequest {
                user: user.clone(),
                kind: DeviceKind::DscPlus,
                secret: Some(key()),
                pin: Some(Pin::new(PIN)),
                label: "card".into(),
            };
            match engine
                .handle(Role::Admin, Operation::Enroll(request), now, &mut rng)
                .reply
            {
                Reply::Enrolled { device, .. } => (user, device),
                other => panic!("enrol: {other:?}"),
            }
        })
        .collect();

    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    let mut tick = 0u64;
    group.bench_function("challenge_and_verify", |b| {
        b.iter(|| {
            let (user, device) = &users[next % USERS];
            next += 1;
            tick += 1;
            let at = Timestamp(now.0 + tick / 64);
            let challenge = Operation::Challenge {
                user: user.clone(),
                device: *device,
            };
            let Reply::Challenge {
                challenge,
                text: ChallengeText::Question(question),
                ..
            } = engine.handle(Role::Gateway, challenge, at, &mut rng).reply
            else {
                panic!("no challenge");
            };
            let input = OcraInput {
                question: &question,
                pin_hash: Some(pin_hash.as_bytes()),
                ..OcraInput::default()
            };
            let response = card.respond(&input).expect("answer");
            let verify = Operation::Verify {
                challenge,
                response: Answer::new(response.as_str()),
            };
            let verdict = engine.handle(Role::Gateway, verify, at, &mut rng).reply;
            assert!(
                matches!(verdict, Reply::Verdict(Verdict::Accepted { .. })),
                "{verdict:?}"
            );
            black_box(verdict)
        })
    });
    group.finish();
}

fn report_machine(_: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!("machine: {cores} cores");
}

criterion_group!(benches, report_machine, login);
criterion_main!(benches);
