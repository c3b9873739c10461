//! At-rest key rotation on a real daemon under a load of enrolments,
//! lockouts and logins: `slsd admin rotate-key`, then SIGKILL while the
//! re-seal pass runs. The restarted daemon finishes the pass without
//! redoing what was done, no login fails at any point, every device logs
//! in afterwards, and the key file no longer holds the old key, under
//! which nothing in the database opens.

mod support;

use std::time::Duration;

use slsd::engine::Role;
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;
use slsd::wire::{Reply, Verdict};
use support::daemon::{Daemon, admin_json, keyring};
use support::load::{self, Load};

/// A slow pass (20 records a step, 50 ms apart), so that the SIGKILL
/// lands in the middle of it.
const SLOW_PASS: &str = "[keys]\nreseal-batch = 20\nreseal-pause = \"50ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_under_load_survives_a_sigkill_and_the_old_key_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, "", &format!("{}{SLOW_PASS}", load::CONFIG));
    let old: [u8; 32] = std::fs::read(data.join("secrets.key"))
        .unwrap()
        .try_into()
        .expect("a first start makes the 32-byte key file");
    let load = Load::start(&daemon).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The targets, happy, and the enrolments so far: sealed under key 0.
    let sealed_before = 201 + load.acknowledged().enrolled.len() as u64;
    let rotated = tokio::task::block_in_place(|| admin_json(&daemon, &["rotate-key"]));
    assert_eq!(rotated["active_key"], 1, "{rotated}");
    assert_eq!(
        rotated["retiring_keys"],
        serde_json::json!([0]),
        "{rotated}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = daemon.metric_total("sls_keys_resealed_total");
    let daemon = tokio::task::block_in_place(|| daemon.crash_and_restart());
    let first = load.stop();
    assert!(before_kill > 0, "the pass had begun");
    assert!(before_kill < sealed_before, "the pass had not ended");
    assert_eq!(first.refused, Vec::<String>::new(), "logins failed");
    assert!(!first.accepted.is_empty());

    // The restarted daemon goes on with the pass, logins with it.
    let admin = daemon.client(Role::Admin).await;
    assert_eq!(keyring(&admin).await, (1, vec![0]), "the pass resumes");
    let load = Load::start(&daemon).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while keyring(&admin).await != (1, vec![]) {
        assert!(std::time::Instant::now() < deadline, "the pass never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = load.stop();
    let shown = tokio::task::block_in_place(|| admin_json(&daemon, &["keyring"]));
    assert_eq!(shown["retiring_keys"], serde_json::json!([]), "{shown}");
    assert_eq!(second.refused, Vec::<String>::new(), "logins failed");
    assert!(!second.accepted.is_empty());
    // What the first run re-sealed was not done again.
    let after_restart = daemon.metric_total("sls_keys_resealed_total");
    assert!(
        after_restart > 0 && after_restart < sealed_before,
        "{after_restart} re-sealed after the restart, {sealed_before} sealed under key 0"
    );
    eprintln!(
        "re-sealed: {before_kill} before the SIGKILL, {after_restart} after; {sealed_before} devices under key 0"
    );

    // Every device enrolled before the crash logs in.
    let gateway = daemon.client(Role::Gateway).await;
    for (name, device) in first.enrolled.iter().take(300) {
        let verdict = load::log_in(&gateway, name, *device).await;
        assert!(
            matches!(verdict, Reply::Verdict(Verdict::Accepted { .. })),
            "{name}: {verdict:?}"
        );
    }

    let data = daemon.data_dir.clone();
    daemon.stop();
    let text = std::fs::read_to_string(data.join("secrets.key")).unwrap();
    assert!(
        text.contains("key 1 active") && !text.contains("key 0"),
        "the old key is still in the keyring"
    );
    let profiles = slsd::config::Config::default().devices;
    let path = data.join("registry.redb");
    let mut rng = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
    let keyring = SecretCipher::load_or_create(&data.join("secrets.key"), &mut rng).unwrap();
    let registry = Registry::open(&path, keyring, profiles.clone()).unwrap();
    assert!(registry.len() as u64 >= sealed_before);
    drop(registry);
    let error = Registry::open(&path, SecretCipher::new(&old), profiles).unwrap_err();
    assert!(error.to_string().contains("sealed"), "{error}");
}
