//! `slsd admin import-tokens` and `slsd admin tokens` against a running
//! daemon, on files written by python-pskc — an RFC 6030 implementation
//! independent of sls, installed from PyPI by `cargo xtask test` — under a
//! PBKDF2 password and under a pre-shared key: the whole file imports, a
//! damaged one imports nothing, and the inventory lists what came in.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::daemon::{Daemon, admin, admin_failure as failure, admin_json as json};

/// A file python-pskc writes (see `support/pskc_write.py`).
fn vendor_file(out: &Path, opening: &[&str]) {
    let script = support::workspace().join("tests/support/pskc_write.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(out)
        .args(opening)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "python-pskc could not write the file (cargo xtask test installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn serials(listing: &Value) -> Vec<String> {
    listing["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["serial"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn vendor_files_import_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");

    // Under a password (the file holds it with a trailing newline).
    let by_password = dir.path().join("by-password.pskcxml");
    vendor_file(&by_password, &["--password", "correct horse"]);
    let password = dir.path().join("password");
    std::fs::write(&password, "correct horse\n").unwrap();
    let file = by_password.to_str().unwrap();
    let password = password.to_str().unwrap();

    // A wrong password imports nothing and says so.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "incorrect horse").unwrap();
    let refused = failure(
        &daemon,
        &[
            "import-tokens",
            file,
            "--password-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(refused.contains("nothing was imported"), "{refused}");
    // The file names what opens it.
    let refused = failure(&daemon, &["import-tokens", file]);
    assert!(refused.contains("--password-file"), "{refused}");

    let human = support::stdout_ok(&admin(
        &daemon,
        &["import-tokens", file, "--password-file", password],
    ));
    assert_eq!(human.trim_end(), "imported 3 tokens");
    let listing = json(&daemon, &["tokens"]);
    assert_eq!(serials(&listing), ["000101", "000102", "000103"]);
    let tokens = listing["tokens"].as_array().unwrap();
    assert_eq!(tokens[0]["algorithm"], "HOTP-SHA1-6");
    assert_eq!(tokens[1]["algorithm"], "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1");
    assert_eq!(tokens[2]["algorithm"], "TOTP-SHA1-8-60s");
    assert!(tokens.iter().all(|t| t["state"] == "unassigned"));
    assert!(tokens.iter().all(|t| t["manufacturer"] == "python-pskc"));

    // The same file again: every serial is taken, nothing more comes in.
    let refused = failure(
        &daemon,
        &["import-tokens", file, "--password-file", password],
    );
    assert!(
        refused.contains("000101") && refused.contains("nothing of it"),
        "{refused}"
    );

    // Under a pre-shared key, other serials; one flipped MAC byte first.
    let by_key = dir.path().join("by-key.pskcxml");
    vendor_file(&by_key, &["--psk", "00112233445566778899aabbccddeeff"]);
    let text = std::fs::read_to_string(&by_key)
        .unwrap()
        .replace("000101", "000201")
        .replace("000102", "000202")
        .replace("000103", "000203");
    std::fs::write(&by_key, &text).unwrap();
    let key_file = dir.path().join("psk.hex");
    std::fs::write(&key_file, "00112233445566778899aabbccddeeff").unwrap();
    let key_file = key_file.to_str().unwrap();
    let damaged = dir.path().join("damaged.pskcxml");
    let mac_at = text.rfind("<pskc:ValueMAC>").unwrap() + "<pskc:ValueMAC>".len();
    let mut bytes = text.clone().into_bytes();
    bytes[mac_at] = if bytes[mac_at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&damaged, bytes).unwrap();
    let refused = failure(
        &daemon,
        &[
            "import-tokens",
            damaged.to_str().unwrap(),
            "--psk-file",
            key_file,
        ],
    );
    assert!(
        refused.contains("key package 3") && refused.contains("MAC"),
        "{refused}"
    );
    assert_eq!(serials(&json(&daemon, &["tokens"])).len(), 3);

    let imported = json(
        &daemon,
        &[
            "import-tokens",
            by_key.to_str().unwrap(),
            "--psk-file",
            key_file,
        ],
    );
    assert_eq!(imported["imported"], 3);
    assert_eq!(
        imported["serials"],
        serde_json::json!(["000201", "000202", "000203"])
    );

    // Listings by range and state.
    let range = json(
        &daemon,
        &["tokens", "--serial-from", "000102", "--serial-to", "000201"],
    );
    assert_eq!(serials(&range), ["000102", "000103", "000201"]);
    let page = json(&daemon, &["tokens", "--after", "000103", "--limit", "2"]);
    assert_eq!(serials(&page), ["000201", "000202"]);
    let assigned = json(&daemon, &["tokens", "--state", "assigned"]);
    assert!(serials(&assigned).is_empty());
    let refused = admin(&daemon, &["tokens", "--state", "lost"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"lost\" is not unassigned"));

    // Assigned by serial: the OCRA card with its PIN.
    let refused = failure(&daemon, &["assign-token", "000102", "alice"]);
    assert!(refused.contains("PIN"), "{refused}");
    let assigned = json(
        &daemon,
        &[
            "assign-token",
            "000102",
            "alice",
            "--pin",
            "1234",
            "--label",
            "desk card",
        ],
    );
    let device = assigned["device"].as_u64().unwrap();
    let listing = json(&daemon, &["tokens", "--state", "assigned"]);
    assert_eq!(serials(&listing), ["000102"]);
    assert_eq!(listing["tokens"][0]["user"], "alice");
    assert_eq!(listing["tokens"][0]["device"], device);
    let devices = support::stdout_ok(&admin(&daemon, &["devices", "alice"]));
    assert!(devices.contains("kind=token"), "{devices}");
    // Two codes that are not this card's: no resync, nothing changed.
    let refused = failure(
        &daemon,
        &["resync", &device.to_string(), "000000", "000001"],
    );
    assert!(refused.contains("nothing changed"), "{refused}");

    // Retired: one by serial, then a range that holds the assigned card
    // (its device is revoked) and the one retired already.
    let human = support::stdout_ok(&admin(&daemon, &["retire-tokens", "000201"]));
    assert_eq!(human.trim(), "retired 1 tokens");
    let retired = json(
        &daemon,
        &[
            "retire-tokens",
            "--serial-from",
            "000102",
            "--serial-to",
            "000201",
        ],
    );
    assert_eq!(retired["retired"], 2);
    let listing = json(&daemon, &["tokens", "--state", "retired"]);
    assert_eq!(serials(&listing), ["000102", "000103", "000201"]);
    let devices = support::stdout_ok(&admin(&daemon, &["devices", "alice"]));
    assert!(!devices.contains("kind=token"), "{devices}");
    let refused = failure(&daemon, &["assign-token", "000103", "alice"]);
    assert!(refused.contains("retired"), "{refused}");
    let refused = admin(&daemon, &["retire-tokens", "--serial-from", "000102"]);
    assert!(!refused.status.success());

    // Each import and retirement is in the audit log.
    let audit = json(&daemon, &["audit"]);
    let count = |action: &str| {
        audit["audit"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .count()
    };
    assert_eq!(count("import-tokens"), 2);
    assert_eq!(count("retire-token"), 3);
    assert_eq!(count("revoke"), 1);
}
