//! Online backup and restore (`slsd admin backup`, `slsd restore`): a
//! backup taken while enrolments, lockouts and logins go on restores to a
//! daemon that has every change acknowledged before the backup began and
//! none asked for after it ended, and whose cards still verify; a damaged,
//! cut-off or foreign file, or the wrong key file, is refused and installs
//! nothing.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use slsd::engine::Role;
use slsd::wire::{Operation, Reply, Verdict};
use support::daemon::{Daemon, admin_failure, admin_json};
use support::load::{self, Load};
use support::{binary, stdout_ok};

fn restore(file: &Path, data_dir: &Path, key: &Path) -> Output {
    Command::new(binary("slsd"))
        .arg("restore")
        .arg(file)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--key")
        .arg(key)
        .output()
        .expect("run slsd restore")
}

/// The error a refused restore printed; nothing may be installed.
fn refused(file: &Path, data_dir: &Path, key: &Path) -> String {
    let output = restore(file, data_dir, key);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "restored: {stderr}");
    let installed: Vec<_> = std::fs::read_dir(data_dir)
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("registry.redb"))
                .collect()
        })
        .unwrap_or_default();
    assert!(installed.is_empty(), "{installed:?} left after: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_what_was_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, "", load::CONFIG);
    let load = Load::start(&daemon).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let before = load.acknowledged();
    let file = dir.path().join("backup.redb");
    let written =
        tokio::task::block_in_place(|| admin_json(&daemon, &["backup", file.to_str().unwrap()]));
    let after = load.acknowledged();
    // The load goes on after the backup: what it adds must not be in it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = load.stop();
    eprintln!(
        "acknowledged before the backup: {} enrolments, {} lockouts; after it: {}, {}; at the end {}",
        before.enrolled.len(),
        before.locked.len(),
        after.enrolled.len(),
        after.locked.len(),
        end.enrolled.len()
    );
    assert!(!before.enrolled.is_empty() && !before.locked.is_empty());
    assert_eq!(written["backup"], file.to_str().unwrap());
    assert!(
        written["key_file"]
            .as_str()
            .unwrap()
            .contains("not in the backup"),
        "{written}"
    );
    let devices = written["devices"].as_u64().unwrap();
    assert!(written["bytes"].as_u64().unwrap() > 0);
    // Readable by its owner only, and nothing half-written beside it.
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!dir.path().join("backup.redb.partial").exists());
    // A backup never overwrites.
    let again = admin_failure(&daemon, &["backup", file.to_str().unwrap()]);
    assert!(again.contains("exists"), "{again}");
    let key = data.join("secrets.key");
    assert!(
        !std::fs::read(&file)
            .unwrap()
            .windows(32)
            .any(|w| w == std::fs::read(&key).unwrap()),
        "the key file's bytes are in the backup"
    );
    assert_eq!(daemon.stop(), Some(0));

    let restored = dir.path().join("restored");
    let said = stdout_ok(&restore(&file, &restored, &key));
    assert!(said.contains(&format!("devices {devices}")), "{said}");
    let daemon = Daemon::start(&restored, "", load::CONFIG);
    load::assert_kept(&daemon, &before).await;

    // Enrolments are asked one at a time: the one after the last
    // acknowledged before the backup returned may have been under way; every
    // later one was asked after the backup ended.
    let admin = daemon.client(Role::Admin).await;
    let asked_after = after.enrolled.len() + 1;
    assert!(
        end.enrolled.len() > asked_after,
        "the load enrolled nothing after the backup: the check below would be empty"
    );
    for (name, _) in &end.enrolled[asked_after..] {
        assert!(
            load::listed(&admin, name).await.is_empty(),
            "{name}, enrolled after the backup ended, is in it"
        );
    }
    let Reply::Stats(stats) = admin.call(Operation::Stats).await.unwrap() else {
        panic!("stats")
    };
    let held = stats.iter().find(|s| s.name == "devices").unwrap().value;
    assert_eq!(
        held, devices,
        "the restored daemon holds what the backup said"
    );

    // The key file opens the restored cards: a login goes through.
    let gateway = daemon.client(Role::Gateway).await;
    let happy = load::listed(&admin, "happy").await[0].device;
    let verdict = load::log_in(&gateway, "happy", happy).await;
    assert!(
        matches!(verdict, Reply::Verdict(Verdict::Accepted { .. })),
        "{verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_cut_off_or_foreign_file_and_a_wrong_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Daemon::start(&data, "", "");
    let admin = daemon.client(Role::Admin).await;
    let marker = "label-that-marks-the-bytes-to-damage";
    let mut enrol = load::enroll("marked");
    if let Operation::Enroll(request) = &mut enrol {
        request.label = marker.into();
    }
    assert!(matches!(
        admin.call(enrol).await.unwrap(),
        Reply::Enrolled { .. }
    ));
    let file = dir.path().join("backup.redb");
    tokio::task::block_in_place(|| admin_json(&daemon, &["backup", file.to_str().unwrap()]));
    assert_eq!(daemon.stop(), Some(0));
    let key = data.join("secrets.key");
    let bytes = std::fs::read(&file).unwrap();

    // The intact file restores: each refusal below is the fault's.
    stdout_ok(&restore(&file, &dir.path().join("intact"), &key));

    // One bit flipped in a device's record.
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the label is in the backup");
    let mut damaged = bytes.clone();
    damaged[at + 3] ^= 0x01;
    let damaged_file = dir.path().join("damaged.redb");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let error = refused(&damaged_file, &dir.path().join("from-damaged"), &key);
    assert!(error.contains("is damaged"), "{error}");

    // Cut off half way.
    let cut = dir.path().join("cut.redb");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let error = refused(&cut, &dir.path().join("from-cut"), &key);
    assert!(
        error.contains("is damaged") || error.contains("not a complete sls backup"),
        "{error}"
    );

    // A database that is not a backup: the daemon's own.
    let error = refused(
        &data.join("registry.redb"),
        &dir.path().join("from-live"),
        &key,
    );
    assert!(error.contains("not a complete sls backup"), "{error}");

    // Another deployment's key file.
    let other = dir.path().join("other.key");
    std::fs::write(&other, [7u8; 32]).unwrap();
    let error = refused(&file, &dir.path().join("other-key"), &other);
    assert!(error.contains("does not open it"), "{error}");

    // A data directory that already holds a database keeps it.
    let output = restore(&file, &data, &key);
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && error.contains("already holds a database"),
        "{error}"
    );
}
