//! `slsd admin`: every operation reaches the running daemon with the admin
//! certificate of its data directory; the output is readable or JSON, and
//! a failure is one line on stderr with a non-zero exit.

mod support;

use std::process::Command;

use serde_json::Value;
use slsd::policy::calendar::Day;
use support::daemon::{Daemon, admin, admin_asked, admin_failure as failure, admin_json as json};

#[test]
fn admin_operations_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");

    let enrolled = json(&daemon, &["enroll", "alice", "scc", "--label", "card"]);
    let card = enrolled["device"].as_u64().unwrap();
    assert_eq!(enrolled["secret"].as_str().unwrap().len() % 2, 0, "hex key");
    let human = support::stdout_ok(&admin(&daemon, &["devices", "alice"]));
    assert!(human.contains("second_factor_required: true"), "{human}");
    assert!(
        human.contains(&format!("device={card}")) && human.contains("status=active"),
        "{human}"
    );

    // Identification, and the opt-out refused for a Hong Kong resident.
    let identity = [
        "--residence",
        "HK",
        "--date-of-birth",
        "1980-04-02",
        "--citizenship",
        "CN",
        "--id-document",
        "P 1",
    ];
    let mut set = vec!["set-identity", "alice"];
    set.extend(identity);
    assert_eq!(json(&daemon, &set)["result"], "done");
    let refused = failure(&daemon, &["opt-out", "alice"]);
    assert!(
        refused.starts_with("error: refused (opt-out-forbidden)") && refused.contains("SFC"),
        "{refused}"
    );

    // A temporary code, listed among the devices; revoked again.
    let temporary = json(&daemon, &["temporary-code", "bob"]);
    assert_eq!(temporary["uses"], 5);
    let code_device = temporary["device"].as_u64().unwrap().to_string();
    assert_eq!(
        json(&daemon, &["devices", "bob"])["devices"][0]["kind"],
        "temporary"
    );
    assert_eq!(json(&daemon, &["revoke", &code_device])["result"], "done");
    let gone = failure(&daemon, &["revoke", &code_device]);
    assert_eq!(gone, "error: NotFound: no such device");

    // A replacement card, shipped yesterday: it activates itself 21 days
    // after shipment.
    let ordered = json(
        &daemon,
        &["order-replacement", &card.to_string(), "--pin", "4821"],
    );
    let new = ordered["device"].as_u64().unwrap().to_string();
    let yesterday = Day(Day::of(slsd::clock::now()).0 - 1);
    let shipped = yesterday.iso();
    let ship = ["ship-replacement", new.as_str(), "--shipped-at", &shipped];
    assert_eq!(json(&daemon, &ship)["result"], "done");
    let pending = json(&daemon, &["pending-activations"]);
    let activates = Day(yesterday.0 + 21).iso();
    assert_eq!(
        pending["pending_activations"][0]["activates_at"],
        format!("{activates}T00:00:00Z")
    );

    // Phone numbers, push keys, lockouts.
    let phone = json(&daemon, &["enroll-phone", "carol", "+41 446681800"]);
    assert!(phone["device"].as_u64().is_some());
    let ib = json(&daemon, &["enroll", "carol", "ib-key"])["device"]
        .as_u64()
        .unwrap()
        .to_string();
    let key = "ab".repeat(32);
    assert_eq!(
        json(&daemon, &["bind-push-key", &ib, &key])["result"],
        "done"
    );
    assert_eq!(json(&daemon, &["unlock", "carol"])["result"], "done");
    // No carrier bridge is connected: the confirm code cannot go out.
    let undelivered = failure(&daemon, &["verify-phone", "dave", "+41 446681801"]);
    assert!(
        undelivered.starts_with("error: DeliveryUnavailable"),
        "{undelivered}"
    );
    let unknown = failure(&daemon, &["approve-share", "00000000000000ff"]);
    assert!(unknown.starts_with("error: NotFound"), "{unknown}");

    // Shares and stats answer; the audit log lists what was done, in order.
    assert_eq!(json(&daemon, &["shares"])["shares"], Value::Array(vec![]));
    assert!(json(&daemon, &["stats"])["devices"].as_u64().is_some());
    let audit = json(&daemon, &["audit", "--limit", "500"]);
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"enroll"));
    for action in [
        "issue-temporary-code",
        "ship-replacement",
        "enroll-phone",
        "bind-push-key",
        "unlock",
    ] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
    assert!(audit["audit"][0]["actor"] == "admin");

    // carol asks to be forgotten: her number and app go, and the log names
    // her by a pseudonym only.
    let erased = json(&daemon, &["erase", "carol"]);
    assert_eq!(erased["devices"], 2);
    let pseudonym = erased["pseudonym"].as_str().unwrap();
    assert!(pseudonym.starts_with("erased-"), "{pseudonym}");
    assert_eq!(
        json(&daemon, &["devices", "carol"])["devices"],
        Value::Array(vec![])
    );
    let audit = json(&daemon, &["audit", "--limit", "500"]);
    let log = audit.to_string();
    assert!(!log.contains("carol"), "{log}");
    let theirs = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["user"] == pseudonym)
        .count();
    // Enrol phone, enrol app, bind, unlock, then the erasure.
    assert_eq!(theirs, 5, "{log}");
    assert_eq!(erased["audit_entries"], 4);

    // Bad input and an unreachable daemon: one line, non-zero exit.
    let usage = admin(&daemon, &["revoke", "many"]);
    assert_eq!(usage.status.code(), Some(2));
    let missing = Command::new(support::binary("slsd"))
        .args(["admin", "--data-dir"])
        .arg(dir.path().join("nowhere"))
        .arg("stats")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a data directory of slsd"));
}

/// What a DSC+ with `key` shows for `question` with `pin` typed in.
fn dsc_plus(key: &str, pin: &str, question: &str) -> String {
    use slsd::otp::ocra::{Ocra, OcraInput, Suite};
    let suite: Suite = "OCRA-1:HOTP-SHA256-8:QN06-PSHA1".parse().unwrap();
    let pin_hash = suite.hash_pin(pin).unwrap();
    let ocra = Ocra::new(suite, &slsd::otp::SecretKey::from_hex(key).unwrap());
    let input = OcraInput {
        question,
        pin_hash: Some(pin_hash.as_bytes()),
        ..OcraInput::default()
    };
    ocra.respond(&input).unwrap().to_string()
}

#[test]
fn a_forgotten_pin_is_reset_at_the_help_desk() {
    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");
    let enroll = [
        "enroll", "erin", "dsc-plus", "--secret", KEY, "--pin", "4821",
    ];
    let device = json(&daemon, &enroll)["device"]
        .as_u64()
        .unwrap()
        .to_string();
    // The question comes first, on stderr; the PIN and the card's answer
    // are read from stdin, never from the command line.
    let question_of = |line: &str| {
        line.strip_prefix("Type ")
            .and_then(|rest| rest.split(' ').next())
            .unwrap_or_else(|| panic!("a question: {line}"))
            .to_owned()
    };
    let wrong = admin_asked(&daemon, &["reset-pin", &device], |line| {
        format!("2468\n{}\n", dsc_plus(KEY, "2469", &question_of(line)))
    });
    assert!(!wrong.status.success());
    assert!(wrong.stdout.is_empty());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(said.contains("wrong code"), "{said}");
    let reset = admin_asked(&daemon, &["reset-pin", &device, "--json"], |line| {
        format!("2468\n{}\n", dsc_plus(KEY, "2468", &question_of(line)))
    });
    assert!(reset.status.success(), "{reset:?}");
    let printed: Value = serde_json::from_slice(&reset.stdout).unwrap();
    assert_eq!(printed["pin"], "reset");
    assert_eq!(printed["device"].as_u64().unwrap().to_string(), device);
    let audit = json(&daemon, &["audit"]);
    let resets = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "reset-pin" && e["actor"] == "admin")
        .count();
    assert_eq!(resets, 1);
    // A device that takes no PIN has nothing to reset.
    let card = json(&daemon, &["enroll", "erin", "scc"])["device"]
        .as_u64()
        .unwrap()
        .to_string();
    let refused = failure(&daemon, &["reset-pin", &card]);
    assert!(refused.contains("takes no PIN"), "{refused}");
}

/// What pyotp, an implementation independent of sls, makes of `uri`: the
/// code now, and the issuer, account, digits and period it read.
fn pyotp(uri: &str) -> (String, String) {
    let script = "import pyotp, sys\n\
                  t = pyotp.parse_uri(sys.argv[1])\n\
                  print(t.now())\n\
                  print(t.issuer, t.name, t.digits, t.interval, t.digest().name)";
    let output = Command::new("python3")
        .args(["-c", script, uri])
        .output()
        .expect("python3");
    let text = support::stdout_ok(&output);
    let (code, read) = text.split_once('\n').unwrap();
    (code.to_owned(), read.to_owned())
}

#[test]
fn an_authenticator_app_enrols_by_qr_code_and_is_pending_until_its_first_code() {
    use slsd::engine::Role;
    use slsd::identity::{DeviceId, Username};
    use slsd::wire::request::Answer;
    use slsd::wire::{ChallengeText, Operation, Reply, Verdict};
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");
    let qr = dir.path().join("frank.svg");
    let qr_arg = qr.to_str().unwrap();
    // --qr is refused for a kind that is not an app, before anything is
    // enrolled.
    let refused = failure(&daemon, &["enroll", "frank", "scc", "--qr", qr_arg]);
    assert!(refused.contains("totp-app"), "{refused}");
    assert!(!qr.exists());
    let enroll = [
        "enroll", "frank", "totp-app", "--label", "phone", "--qr", qr_arg,
    ];
    let enrolled = json(&daemon, &enroll);
    let device = enrolled["device"].as_u64().unwrap();
    let uri = enrolled["uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/sls:frank?secret="), "{uri}");
    assert_eq!(enrolled["qr"], qr_arg);
    let svg = std::fs::read_to_string(&qr).unwrap();
    assert!(
        svg.starts_with("<?xml") && svg.contains("<svg"),
        "{svg:.80}"
    );
    let mode = std::fs::metadata(&qr).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the QR code holds the key");
    // The file is never overwritten, and no device is made then.
    let exists = failure(&daemon, &enroll);
    assert!(exists.contains("exists"), "{exists}");
    let (code, read) = pyotp(uri);
    assert_eq!(read, "sls frank 6 30 sha1");

    let listed = json(&daemon, &["devices", "frank"]);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["devices"][0]["status"], "pending its first code");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let gateway = daemon.client(Role::Gateway).await;
        let frank = Username::new("frank").unwrap();
        let devices = |reply: Reply| match reply {
            Reply::Devices { devices, .. } => devices.len(),
            other => panic!("devices: {other:?}"),
        };
        let ask = Operation::Devices {
            user: frank.clone(),
        };
        // Pending: not offered to a login yet, but it can be challenged.
        assert_eq!(devices(gateway.call(ask.clone()).await.unwrap()), 0);
        let login = |code: String| {
            let gateway = &gateway;
            let frank = frank.clone();
            async move {
                let challenge = Operation::Challenge {
                    user: frank,
                    device: DeviceId(device),
                };
                let Reply::Challenge {
                    challenge, text, ..
                } = gateway.call(challenge).await.unwrap()
                else {
                    panic!("a challenge")
                };
                assert_eq!(text, ChallengeText::EnterCode);
                let answer = Operation::Verify {
                    challenge,
                    response: Answer::new(&code),
                };
                match gateway.call(answer).await.unwrap() {
                    Reply::Verdict(verdict) => verdict,
                    other => panic!("a verdict: {other:?}"),
                }
            }
        };
        assert!(matches!(
            login(code.clone()).await,
            Verdict::Accepted { .. }
        ));
        assert_eq!(devices(gateway.call(ask).await.unwrap()), 1);
        // The step is used: the same code again is refused (RFC 6238 §5.2).
        assert!(matches!(login(code).await, Verdict::Rejected { .. }));
    });
    let listed = json(&daemon, &["devices", "frank"]);
    assert_eq!(listed["devices"][0]["status"], "active");
}

#[test]
fn admin_falls_back_to_tcp_when_quic_gets_no_answer() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");
    // A UDP port that never answers: a network that drops QUIC.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = black_hole.local_addr().unwrap().to_string();
    let run = |more: &[&str]| {
        Command::new(support::binary("slsd"))
            .arg("admin")
            .arg("--data-dir")
            .arg(&daemon.data_dir)
            .args(["--addr", &silent, "--connect-wait", "300ms"])
            .args(more)
            .args(["--json", "stats"])
            .output()
            .unwrap()
    };
    let tcp = daemon.tcp.to_string();
    let stats: Value =
        serde_json::from_str(&support::stdout_ok(&run(&["--tcp-addr", &tcp]))).unwrap();
    assert!(stats.is_object(), "{stats}");
    let alone = run(&[]);
    assert!(!alone.status.success());
    let said = String::from_utf8_lossy(&alone.stderr);
    assert!(said.contains("no answer within 300ms"), "{said}");
}
