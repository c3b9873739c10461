//! `sls-sim token ...` driven as a user would: the real binary, its stdout,
//! stderr and exit status. The RFC vectors are the daemon's data files.

mod support;

use support::{sls_sim, stdout_ok, workspace};
use toml::{Table, Value};

fn vectors(name: &str) -> Table {
    let path = workspace().join("daemon/tests/vectors").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .unwrap()
}

fn text<'a>(table: &'a Table, key: &str) -> Option<&'a str> {
    table.get(key).and_then(Value::as_str)
}

fn rows(table: &Table) -> impl Iterator<Item = &Table> {
    table["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_table().unwrap())
}

#[test]
fn ocra_form_reproduces_every_rfc6287_vector() {
    let file = vectors("rfc6287.toml");
    let mut checked = 0;
    for (number, group) in file["group"].as_array().unwrap().iter().enumerate() {
        let group = group.as_table().unwrap();
        let timestamp =
            text(group, "timestamp").map(|t| u64::from_str_radix(t, 16).unwrap().to_string());
        for row in rows(group) {
            let mut args = vec![
                "token".to_string(),
                "ocra".into(),
                "--suite".into(),
                text(group, "suite").unwrap().into(),
                "--key".into(),
                text(group, "key").unwrap().into(),
                "--challenge".into(),
                text(row, "question").unwrap().into(),
            ];
            if let Some(counter) = row.get("counter").and_then(Value::as_integer) {
                args.extend(["--counter".into(), counter.to_string()]);
            }
            // Alternate the two ways of giving the PIN.
            if number % 2 == 0 {
                if let Some(pin) = text(group, "pin") {
                    args.extend(["--pin".into(), pin.into()]);
                }
            } else if let Some(hash) = text(group, "pin-hash") {
                args.extend(["--pin-hash".into(), hash.into()]);
            }
            if let Some(t) = &timestamp {
                args.extend(["--time-step".into(), t.clone()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_eq!(
                stdout_ok(&sls_sim(&args)),
                text(row, "response").unwrap(),
                "{args:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 70);
}

#[test]
fn hotp_form_reproduces_rfc4226() {
    let file = vectors("rfc4226.toml");
    let key = text(&file, "key").unwrap();
    for row in rows(&file) {
        let counter = row["counter"].as_integer().unwrap().to_string();
        let output = sls_sim(&["token", "hotp", "--key", key, "--counter", &counter]);
        assert_eq!(stdout_ok(&output), text(row, "code").unwrap());
    }
}

#[test]
fn totp_form_reproduces_rfc6238() {
    let file = vectors("rfc6238.toml");
    let keys = file["keys"].as_table().unwrap();
    for row in rows(&file) {
        let algorithm = text(row, "algorithm").unwrap();
        let time = row["time"].as_integer().unwrap().to_string();
        let output = sls_sim(&[
            "token",
            "totp",
            "--key",
            text(keys, algorithm).unwrap(),
            "--time",
            &time,
            "--step",
            "30",
            "--digits",
            "8",
            "--algorithm",
            algorithm,
        ]);
        assert_eq!(
            stdout_ok(&output),
            text(row, "code").unwrap(),
            "{algorithm} at {time}"
        );
    }
}

#[test]
fn dscplus_form_is_ocra_with_the_dsc_plus_suite() {
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let card = stdout_ok(&sls_sim(&[
        "token",
        "dscplus",
        "--key",
        key,
        "--pin",
        "4821",
        "--challenge",
        "031337",
    ]));
    let generic = stdout_ok(&sls_sim(&[
        "token",
        "ocra",
        "--suite",
        "OCRA-1:HOTP-SHA256-8:QN06-PSHA1",
        "--key",
        key,
        "--challenge",
        "031337",
        "--pin",
        "4821",
    ]));
    assert_eq!(card.len(), 8);
    assert_eq!(card, generic);
    // A wrong PIN gives a different response: the PIN is bound in.
    let wrong_pin = stdout_ok(&sls_sim(&[
        "token",
        "dscplus",
        "--key",
        key,
        "--pin",
        "4822",
        "--challenge",
        "031337",
    ]));
    assert_ne!(card, wrong_pin);
}

#[test]
fn card_form_concatenates_the_codes_at_each_index() {
    let key = "6b6579206f6620612073656375726974792063617264";
    let first = stdout_ok(&sls_sim(&["token", "card", "--key", key, "--index", "7"]));
    let second = stdout_ok(&sls_sim(&["token", "card", "--key", key, "--index", "224"]));
    let both = stdout_ok(&sls_sim(&[
        "token", "card", "--key", key, "--index", "7", "--index", "224",
    ]));
    assert_eq!(first.len(), 3);
    assert!(first.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(both, format!("{first}{second}"));
}

#[test]
fn bad_input_fails_with_a_message_and_no_code() {
    // Each command line, split on spaces, with a piece of the expected message.
    let cases = [
        (
            "ocra --suite OCRA-1:HOTP-MD5-6:QN08 --key 31 --challenge 1",
            "--suite: hash \"MD5\"",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:QN08 --key 3x --challenge 1",
            "--key: key is not hexadecimal",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:QN08 --key 31",
            "question is empty (--challenge)",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:QN08 --key 31 --challenge 12a",
            "(--challenge)",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:C-QN08 --key 31 --challenge 1",
            "pass --counter N",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:QN08-PSHA1 --key 31 --challenge 1 --pin-hash 00",
            "PIN hash is 1 bytes, the suite's hash gives 20",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:QN08-T1M --key 31 --challenge 1",
            "pass --time-step N",
        ),
        (
            "ocra --suite OCRA-1:HOTP-SHA1-6:QN08-S002 --key 31 --challenge 1 --session aabbcc",
            "session information is 3 bytes, the suite allows 2",
        ),
        (
            "hotp --key 31 --counter 1 --digits 11",
            "--digits: 11 digits is outside 1..=10",
        ),
        ("totp --key 31 --time 1 --step 0", "--step: time step"),
        (
            "dscplus --key 31 --pin 1234 --challenge 12345",
            "a DSC+ challenge is exactly 6 digits",
        ),
        (
            "dscplus --key 31 --pin 12a4 --challenge 123456",
            "a DSC+ PIN is exactly 4 digits",
        ),
        (
            "card --key 31 --index 0",
            "position 0 is not on the card (1..=224)",
        ),
        (
            "card --key 00 --index 1 --positions 1",
            "--positions: a card needs 2..=9999 positions, not 1",
        ),
        // Usage errors come from the argument parser.
        ("card --key 31", "--index"),
        ("hotp --key 31 --counter 1 --algorithm md5", "--algorithm"),
    ];
    for (command, message) in cases {
        let mut args = vec!["token"];
        args.extend(command.split(' '));
        let output = sls_sim(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command} should fail");
        assert!(output.stdout.is_empty(), "{command} printed a code");
        assert!(
            stderr.contains(message),
            "{command}: stderr {stderr:?} lacks {message:?}"
        );
    }
    // An empty key cannot be written with split(' '); test it on its own.
    let output = sls_sim(&["token", "card", "--key", "", "--index", "1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--key: key is empty"));
}
