//! Upgrades across versions: the embedded database records its format. A
//! database an earlier release wrote (the fixture under
//! `tests/fixtures/registry-format-1`, written by `write_the_fixture`)
//! opens, is carried to this release's format, and its cards still
//! verify, its lockouts still hold; one without a recorded format (written
//! before formats were) is migrated; one of a newer format is refused with
//! a clear error, and nothing is written to it.
//!
//! When the format changes: keep the old fixture (it is what the
//! migration must read), add the new format's with `write_the_fixture`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::open_engine;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Engine, Role};
use slsd::identity::{DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::profile::DeviceKind;
use slsd::store::StoreError;
use slsd::store::embedded::registry::{FORMAT, Registry, stored_format};
use slsd::store::sealed::SecretCipher;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, EnrollRequest, Operation, Reply, Verdict};

/// When the fixture's changes were made.
const T0: Timestamp = Timestamp(1_800_000_000_000);
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const PIN: &str = "4821";
/// Wrong answers after which a device locks, and for how long.
const CONFIG: &str = "[lockout]\nfailures = 3\nfirst = \"1day\"\nmax = \"2days\"\n";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry-format-1")
}

/// A copy of the fixture to open (opening writes to it).
fn copy_of_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["registry.redb", "secrets.key"] {
        std::fs::copy(fixture().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn config() -> Config {
    Config::from_toml(CONFIG).unwrap()
}

fn call(engine: &Engine, role: Role, operation: Operation, now: Timestamp) -> Reply {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    engine.handle(role, operation, now, &mut rng).reply
}

fn enroll(engine: &Engine, user: &str) -> DeviceId {
    let request = EnrollRequest {
        user: Username::new(user).unwrap(),
        kind: DeviceKind::DscPlus,
        secret: Some(SecretKey::from_hex(KEY).unwrap()),
        pin: Some(Pin::new(PIN)),
        label: format!("card of {user}"),
    };
    match call(engine, Role::Admin, Operation::Enroll(request), T0) {
        Reply::Enrolled { device, .. } => device,
        other => panic!("enrol: {other:?}"),
    }
}

fn answer(text: &ChallengeText) -> String {
    let ChallengeText::Question(question) = text else {
        panic!("a DSC+ is asked a question")
    };
    let suite: Suite = "OCRA-1:HOTP-SHA256-8:QN06-PSHA1".parse().unwrap();
    let pin_hash = suite.hash_pin(PIN).unwrap();
    let input = OcraInput {
        question,
        pin_hash: Some(pin_hash.as_bytes()),
        ..OcraInput::default()
    };
    Ocra::new(suite, &SecretKey::from_hex(KEY).unwrap())
        .respond(&input)
        .unwrap()
        .to_string()
}

/// A challenge to `user`'s card answered right (or, `wrong`, not).
fn login(engine: &Engine, user: &str, device: DeviceId, wrong: bool, now: Timestamp) -> Verdict {
    let challenge = Operation::Challenge {
        user: Username::new(user).unwrap(),
        device,
    };
    let Reply::Challenge {
        challenge, text, ..
    } = call(engine, Role::Gateway, challenge, now)
    else {
        panic!("challenge")
    };
    let mut given = answer(&text);
    if wrong {
        given = given
            .chars()
            .map(|c| if c == '0' { '1' } else { '0' })
            .collect();
    }
    let verify = Operation::Verify {
        challenge,
        response: Answer::new(&given),
    };
    match call(engine, Role::Gateway, verify, now) {
        Reply::Verdict(verdict) => verdict,
        other => panic!("verify: {other:?}"),
    }
}

fn devices_of(engine: &Engine, user: &str) -> Vec<DeviceId> {
    let list = Operation::ListDevices {
        user: Username::new(user).unwrap(),
        page: slsd::wire::Page::first(100),
    };
    match call(engine, Role::Admin, list, T0) {
        Reply::Devices { devices, .. } => devices.into_iter().map(|d| d.device).collect(),
        other => panic!("list: {other:?}"),
    }
}

/// Writes the fixture with this release: `ann`'s card, and `bob`'s,
/// locked by three wrong answers. Run it only when the format changes
/// (`cargo test -p slsd --test format -- --ignored write_the_fixture`).
#[test]
#[ignore = "writes tests/fixtures; run it when the format changes"]
fn write_the_fixture() {
    let dir = fixture();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secrets.key"), [0x5a; 32]).unwrap();
    let engine = open_engine(&dir, config());
    enroll(&engine, "ann");
    let bob = enroll(&engine, "bob");
    let verdicts: Vec<Verdict> = (0..3)
        .map(|_| login(&engine, "bob", bob, true, T0))
        .collect();
    assert!(
        matches!(verdicts[2], Verdict::LockedOut { .. }),
        "{verdicts:?}"
    );
    // The server's commit thread writes failure states; here, this does.
    let registry = engine.registry();
    let state = *registry.device(bob).unwrap().failures();
    registry.save_failures(&[(bob, state)]).unwrap();
    drop(engine);
    assert_eq!(stored_format(&dir.join("registry.redb")).unwrap(), FORMAT);
}

/// What every test below checks of a database carried to this format.
fn holds_the_fixtures_registry(dir: &Path) {
    let engine = open_engine(dir, config());
    let later = T0.plus(Duration::from_secs(60));
    let ann = devices_of(&engine, "ann");
    assert_eq!(ann.len(), 1);
    assert!(matches!(
        login(&engine, "ann", ann[0], false, later),
        Verdict::Accepted { .. }
    ));
    let bob = devices_of(&engine, "bob");
    assert_eq!(bob.len(), 1);
    // Even the right answer is refused while the lockout lasts.
    let refused = login(&engine, "bob", bob[0], false, later);
    assert!(
        matches!(refused, Verdict::LockedOut { .. }),
        "bob's lockout was lost: {refused:?}"
    );
    drop(engine);
    assert_eq!(stored_format(&dir.join("registry.redb")).unwrap(), FORMAT);
}

#[test]
fn a_database_an_earlier_release_wrote_opens_and_its_cards_verify() {
    let dir = copy_of_fixture();
    holds_the_fixtures_registry(dir.path());
}

/// Sets (or, `None`, removes) the recorded format of the database at `path`.
fn set_format(path: &Path, format: Option<u64>) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn
            .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
            .unwrap();
        match format {
            Some(format) => meta.insert("format", format).unwrap(),
            None => meta.remove("format").unwrap(),
        };
    }
    txn.commit().unwrap();
}

#[test]
fn a_database_without_a_recorded_format_is_migrated() {
    let dir = copy_of_fixture();
    let path = dir.path().join("registry.redb");
    set_format(&path, None);
    assert_eq!(stored_format(&path).unwrap(), 0);
    holds_the_fixtures_registry(dir.path());
}

#[test]
fn a_database_of_a_newer_format_is_refused_and_left_as_it_was() {
    let dir = copy_of_fixture();
    let path = dir.path().join("registry.redb");
    set_format(&path, Some(FORMAT + 1));
    let cipher = SecretCipher::new(&[0x5a; 32]);
    let opened = Registry::open(&path, cipher, config().devices.clone());
    let Err(error) = opened else {
        panic!("a newer database was opened")
    };
    assert!(
        matches!(error, StoreError::NewerFormat { found, supported } if found == FORMAT + 1 && supported == FORMAT),
        "{error}"
    );
    assert!(error.to_string().contains("newer than this slsd reads"));
    // Nothing was written: it is still the newer format, with its devices.
    assert_eq!(stored_format(&path).unwrap(), FORMAT + 1);
    assert_eq!(Registry::stored_devices(&path).unwrap(), 2);
}

/// A node of a release whose record format is `supported`, on `memory`,
/// checking the deployment's format as a start does.
fn cluster_start(
    memory: &std::sync::Arc<slsd::store::cluster::memory::MemoryRedis>,
    key: [u8; 32],
    supported: u64,
) -> Result<u64, StoreError> {
    use slsd::store::cluster::ClusterStore;
    use slsd::store::cluster::redis::RedisStore;
    let codec =
        slsd::store::records::DeviceCodec::new(SecretCipher::new(&key), config().devices.clone());
    let store = ClusterStore::new(
        RedisStore::in_memory(std::sync::Arc::clone(memory)),
        codec,
        Duration::from_secs(1),
    )
    .playing_release(supported);
    slsd::store::cluster::memory::run_now(store.check_format())
        .expect("the in-memory store answers at once")
}

#[test]
fn the_shared_store_records_its_format_and_an_older_node_refuses_a_newer_one() {
    use slsd::store::cluster::FORMAT as CLUSTER_FORMAT;
    let memory = std::sync::Arc::new(slsd::store::cluster::memory::MemoryRedis::new());
    let key = [0x5a; 32];
    // The first node records its format; the next of the same release
    // finds it.
    assert_eq!(
        cluster_start(&memory, key, CLUSTER_FORMAT).unwrap(),
        CLUSTER_FORMAT
    );
    assert_eq!(
        cluster_start(&memory, key, CLUSTER_FORMAT).unwrap(),
        CLUSTER_FORMAT
    );
    // A node of the next release reads this format (older records are
    // its to carry up)...
    assert_eq!(
        cluster_start(&memory, key, CLUSTER_FORMAT + 1).unwrap(),
        CLUSTER_FORMAT
    );
    // ...and a deployment the next release made is refused by this one.
    let newer = std::sync::Arc::new(slsd::store::cluster::memory::MemoryRedis::new());
    cluster_start(&newer, key, CLUSTER_FORMAT + 1).unwrap();
    let refused = cluster_start(&newer, key, CLUSTER_FORMAT).unwrap_err();
    assert!(
        matches!(refused, StoreError::NewerFormat { found, supported }
            if found == CLUSTER_FORMAT + 1 && supported == CLUSTER_FORMAT),
        "{refused}"
    );
    // The record is tagged under the key file: another deployment's key
    // (or someone writing to Redis without one) cannot set it.
    let forged = cluster_start(&newer, [7; 32], CLUSTER_FORMAT + 1).unwrap_err();
    assert!(matches!(forged, StoreError::Forged(_)), "{forged}");
}
