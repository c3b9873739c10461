//! The simulator against a real daemon: `fleet create`, `load` with the
//! attacker fleet beside it, `bench`, and the invariant checks failing
//! when the service (here, a tampered fleet) breaks them.

mod support;

use std::path::Path;
use std::process::Output;

use serde_json::Value;
use support::daemon::Daemon;
use support::sls_sim;

/// Limits raised so that a short run is not throttled by its own load, and
/// a short lockout so that targets come out of it during the run.
const LOAD_CONFIG: &str = "[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n[lockout]\nfailures = 3\nfirst = \"1s\"\nmax = \"4s\"\n";

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("the JSON report")).expect("valid JSON")
}

fn create_fleet(daemon: &Daemon, users: &str, out: &Path) -> Output {
    create_fleet_of(daemon, users, "dscplus=40,ibkey=40,scc=20", out, &[])
}

fn create_fleet_of(daemon: &Daemon, users: &str, mix: &str, out: &Path, extra: &[&str]) -> Output {
    let addr = daemon.quic.to_string();
    let mut args = vec![
        "fleet",
        "create",
        "--users",
        users,
        "--mix",
        mix,
        "--second-device",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--addr",
        &addr,
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    sls_sim(&args)
}

fn load(daemon: &Daemon, fleet: &Path, report: &Path, extra: &[&str]) -> Output {
    let addr = daemon.quic.to_string();
    let pid = daemon.pid().to_string();
    let mut args = vec![
        "load",
        "--fleet",
        fleet.to_str().unwrap(),
        "--addr",
        &addr,
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
        "--daemon-pid",
        &pid,
        "--json",
        report.to_str().unwrap(),
        "--seed",
        "7",
    ];
    args.extend_from_slice(extra);
    sls_sim(&args)
}

#[test]
fn a_fleet_is_enrolled_and_its_load_keeps_every_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", LOAD_CONFIG);
    let fleet = dir.path().join("fleet.json");

    let created = create_fleet(&daemon, "200", &fleet);
    assert!(created.status.success(), "{}", text(&created));
    let summary = String::from_utf8_lossy(&created.stdout);
    assert!(summary.contains("200 users"), "{summary}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fleet).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the fleet file holds keys");
    }
    let saved = json(&fleet);
    let members = saved["members"].as_array().unwrap();
    assert_eq!(members.len(), 200);
    assert!(
        members
            .iter()
            .any(|m| m["devices"].as_array().unwrap().len() == 2)
    );

    // Open loop, 400 logins a second for 4 seconds, with attackers.
    let report_path = dir.path().join("report.json");
    let plot = dir.path().join("report.svg");
    let run = load(
        &daemon,
        &fleet,
        &report_path,
        &[
            "--rate",
            "400",
            "--duration",
            "4s",
            "--attackers",
            "2",
            "--plot",
            plot.to_str().unwrap(),
        ],
    );
    assert!(run.status.success(), "{}", text(&run));
    let report = json(&report_path);
    assert_eq!(report["invariant_violations"], Value::Array(vec![]));
    assert_eq!(report["errors"], 0, "{report:#}");
    // Every legitimate answer was accepted, and the schedule was kept.
    let verdicts = report["verdicts"].as_object().unwrap();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let logins = report["logins"].as_u64().unwrap();
    assert_eq!(verdicts["accepted"].as_u64().unwrap(), logins);
    assert!(
        (1400..=1600).contains(&logins),
        "{logins} logins of 1600 due"
    );
    // The attackers ran every strategy and met lockouts.
    let attacks = report["attacks"].as_object().unwrap();
    for strategy in [
        "guess",
        "wrong_pin",
        "foreign_answer",
        "foreign_device",
        "replay",
    ] {
        assert!(
            attacks[strategy]["requests"].as_u64().unwrap() > 0,
            "{strategy} never ran: {attacks:?}"
        );
    }
    assert!(
        report["victim_verdicts"]["locked_out"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{report:#}"
    );
    assert!(report["attacker_expected_accepts"].as_f64().unwrap() > 0.0);
    assert!(report["daemon_cpu_s"].as_f64().is_some());
    for field in ["p50", "p99", "p999", "max"] {
        assert!(report["latency_us"][field].as_u64().unwrap() > 0, "{field}");
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("p99"),
        "{}",
        &svg[..100]
    );

    // Closed loop on the same fleet.
    let run = load(
        &daemon,
        &fleet,
        &report_path,
        &[
            "--concurrency",
            "32",
            "--duration",
            "2s",
            "--attackers",
            "0",
        ],
    );
    assert!(run.status.success(), "{}", text(&run));
    let report = json(&report_path);
    assert!(report["logins"].as_u64().unwrap() > 0);
    assert_eq!(report["invariant_violations"], Value::Array(vec![]));
    assert_eq!(report["attacker_requests"], 0);
}

/// Every device of the fleet whose code moves: (algorithm or kind, where
/// it moved to).
fn moving_devices(fleet: &Value) -> Vec<(String, u64)> {
    fleet["members"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["devices"].as_array().unwrap())
        .filter(|d| d["kind"] == "token" || d["kind"] == "totp-app")
        .map(|d| {
            let name = d.get("algorithm").unwrap_or(&d["kind"]);
            (
                name.as_str().unwrap().to_owned(),
                d["moving"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn cards_from_a_vendors_file_tokens_and_apps_log_in_and_no_code_works_twice() {
    let dir = tempfile::tempdir().unwrap();
    // Lockouts late, so that the targets' own logins go through between
    // the attackers' tries and give them used counters and steps to replay.
    let config = LOAD_CONFIG.replace("failures = 3", "failures = 20\nhard-limit = 100");
    let daemon = Daemon::start(&dir.path().join("data"), "", &config);
    let fleet = dir.path().join("fleet.json");
    // Every tenth user is the attackers' target: with ten of them, some
    // surely hold a token or app whose code moves (a DSC+ has none).
    let mix = "dscplus=20,token=50,totp-app=30";
    let created = create_fleet_of(&daemon, "100", mix, &fleet, &["--via-pskc"]);
    assert!(created.status.success(), "{}", text(&created));

    // The cards came in an encrypted vendor's file, which an independent
    // RFC 6030 implementation (python-pskc) opens with the key beside it.
    let pskc = dir.path().join("fleet.pskc");
    let psk = std::fs::read_to_string(dir.path().join("fleet.psk")).unwrap();
    let script = "import sys, pskc\nf = pskc.PSKC(sys.argv[1])\nf.encryption.key = bytes.fromhex(sys.argv[2])\nfor k in f.keys: print(k.serial, k.algorithm.rsplit(':', 1)[-1], k.secret.hex())";
    let opened = std::process::Command::new("python3")
        .args(["-c", script, pskc.to_str().unwrap(), psk.trim()])
        .output()
        .unwrap();
    assert!(opened.status.success(), "{}", text(&opened));
    let listed = String::from_utf8(opened.stdout).unwrap();
    let saved = json(&fleet);
    let tokens: Vec<&Value> = saved["members"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|m| m["devices"].as_array().unwrap())
        .filter(|d| d["kind"] == "token")
        .collect();
    // 20 % of the users hold a DSC+ and 50 % a token (and some a second
    // device): all of these come from the file.
    assert!(tokens.len() >= 70, "{}", tokens.len());
    assert_eq!(listed.lines().count(), tokens.len(), "{listed}");
    for token in &tokens {
        let secret = token["secret"].as_str().unwrap();
        assert!(listed.contains(secret), "a token's key is not in the file");
    }
    for model in ["hotp", "totp", "ocra"] {
        assert!(listed.contains(&format!(" {model} ")), "{model}: {listed}");
    }
    let inventory = support::daemon::admin_json(
        &daemon,
        &["tokens", "--state", "assigned", "--limit", "500"],
    );
    assert_eq!(inventory["tokens"].as_array().unwrap().len(), tokens.len());

    // Two runs with attackers beside them: event tokens, time tokens,
    // apps and DSC+ cards from the file log in, replays of used counters
    // and steps are tried and never win.
    let report_path = dir.path().join("report.json");
    let mut replays = 0;
    for _ in 0..2 {
        let run = load(
            &daemon,
            &fleet,
            &report_path,
            &[
                "--concurrency",
                "16",
                "--duration",
                "2s",
                "--attackers",
                "2",
            ],
        );
        assert!(run.status.success(), "{}", text(&run));
        let report = json(&report_path);
        assert_eq!(report["invariant_violations"], Value::Array(vec![]));
        assert!(report["logins"].as_u64().unwrap() > 100, "{report}");
        // The attackers replay what the targets' own logins used; the
        // targets they locked for good in the first run (lockout.hard-limit)
        // may give them nothing new in the second.
        replays += report["attacks"]["used_factor"]["requests"]
            .as_u64()
            .unwrap_or(0);
        assert_eq!(report["attacker_accepts"], 0);
    }
    assert!(replays > 0, "no used counter or step was replayed");
    // The counters and used steps moved, and the fleet file kept them.
    let moved = moving_devices(&json(&fleet));
    for model in [
        "HOTP-SHA1-6",
        "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1",
        "TOTP-SHA1-6-30s",
        "totp-app",
    ] {
        assert!(
            moved.iter().any(|(name, at)| name == model && *at > 0),
            "{model}: {moved:?}"
        );
    }

    // Tokens reset to their first counter and apps to a step already
    // used show codes the daemon took before: each is refused, and the
    // run says so.
    let mut rewound = json(&fleet);
    for member in rewound["members"].as_array_mut().unwrap() {
        for device in member["devices"].as_array_mut().unwrap() {
            if let Some(moving) = device.get_mut("moving") {
                *moving = Value::from(0);
            }
        }
    }
    std::fs::write(&fleet, serde_json::to_vec(&rewound).unwrap()).unwrap();
    let run = load(
        &daemon,
        &fleet,
        &report_path,
        &[
            "--concurrency",
            "16",
            "--duration",
            "1s",
            "--attackers",
            "0",
        ],
    );
    assert!(!run.status.success(), "{}", text(&run));
    let violations = json(&report_path)["invariant_violations"].clone();
    assert!(
        violations[0].as_str().unwrap().contains("was refused"),
        "{violations}"
    );
}

#[test]
fn a_broken_invariant_fails_the_run_and_names_the_violation() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", LOAD_CONFIG);
    let fleet = dir.path().join("fleet.json");
    let created = create_fleet(&daemon, "20", &fleet);
    assert!(created.status.success(), "{}", text(&created));

    // The users forget their PINs: their right-looking DSC+ answers are
    // wrong, which the run must report as refused legitimate answers.
    let mut saved = json(&fleet);
    for member in saved["members"].as_array_mut().unwrap() {
        for device in member["devices"].as_array_mut().unwrap() {
            if let Some(pin) = device.get_mut("pin") {
                let wrong: String = pin
                    .as_str()
                    .unwrap()
                    .chars()
                    .map(|c| if c == '0' { '1' } else { '0' })
                    .collect();
                *pin = Value::String(wrong);
            }
        }
    }
    std::fs::write(&fleet, serde_json::to_vec(&saved).unwrap()).unwrap();

    let report_path = dir.path().join("report.json");
    let run = load(
        &daemon,
        &fleet,
        &report_path,
        &["--rate", "100", "--duration", "1s", "--attackers", "0"],
    );
    assert!(!run.status.success(), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("invariant violation"),
        "{}",
        text(&run)
    );
    let report = json(&report_path);
    let violations = report["invariant_violations"].as_array().unwrap();
    assert!(!violations.is_empty());
    assert!(
        violations[0].as_str().unwrap().contains("was refused"),
        "{violations:?}"
    );
}

#[test]
fn bench_starts_its_own_daemon_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("bench.json");
    let run = sls_sim(&[
        "bench",
        "--duration",
        "2s",
        "--users",
        "100",
        "--mix",
        "login=50,sms=20,push=20,withdrawal=10",
        "--ceiling",
        "1s",
        "--json",
        report_path.to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("invariants: all held"), "{stdout}");
    let report = json(&report_path);
    assert!(report["requests_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["cores"].as_u64().unwrap() >= 1);
    assert!(report["attacker_requests"].as_u64().unwrap() > 0);
    assert!(report["daemon_cpu_s"].as_f64().unwrap() > 0.0);
    // The run is set beside the quinn echo ceiling of the same machine.
    let ceiling = &report["ceiling"];
    assert!(
        ceiling["requests_per_sec"].as_f64().unwrap() > 0.0,
        "{ceiling}"
    );
    assert_eq!(ceiling["streams"], 4, "{ceiling}");
    assert!(stdout.contains("% of it"), "{stdout}");
    assert_eq!(report["mix"], "login=50,sms=20,push=20,withdrawal=10");
    // SMS codes went through the emulated carrier, pushes through the
    // emulated phones, withdrawals were confirmed, and every one of them
    // was accepted.
    for flow in ["login", "sms", "push", "withdrawal"] {
        assert!(
            report["flows"][flow]["count"].as_u64().unwrap() > 0,
            "{flow}: {}",
            report["flows"]
        );
    }
    for op in [
        "send_code",
        "verify_code",
        "push",
        "await_push",
        "authorize_withdrawal",
    ] {
        assert!(
            report["operations"][op]["count"].as_u64().unwrap() > 0,
            "{op}"
        );
    }
    assert_eq!(
        report["errors"].as_u64(),
        Some(0),
        "{}",
        report["errors_by_kind"]
    );
}

#[test]
fn a_registry_is_built_in_bulk_measured_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let report_path = dir.path().join("registry.json");
    let data = data_dir.to_str().unwrap();
    let report = report_path.to_str().unwrap();
    let build = sls_sim(&[
        "registry",
        "--devices",
        "2200",
        "--batch",
        "500",
        "--data-dir",
        data,
        "--json",
        report,
    ]);
    assert!(build.status.success(), "{}", text(&build));
    let built = json(&report_path);
    // Ten users hold eleven devices.
    assert_eq!(
        (built["devices"].as_u64(), built["users"].as_u64()),
        (Some(2200), Some(2000))
    );
    assert!(built["enrolments_per_second"].as_f64().unwrap() > 0.0);
    assert!(built["startup_seconds"].as_f64().unwrap() > 0.0);
    // The devices cost the daemon memory beside an empty one.
    let resident = built["resident_bytes"].as_u64().unwrap();
    assert!(
        resident > built["empty_resident_bytes"].as_u64().unwrap(),
        "{built}"
    );
    assert!(String::from_utf8_lossy(&build.stdout).contains("memory per enrolled device"));

    // Measured again, nothing added: the same registry.
    let again = sls_sim(&[
        "registry",
        "--devices",
        "0",
        "--data-dir",
        data,
        "--json",
        report,
    ]);
    assert!(again.status.success(), "{}", text(&again));
    let measured = json(&report_path);
    assert_eq!(
        (measured["devices"].as_u64(), measured["added"].as_u64()),
        (Some(2200), Some(0))
    );

    // A daemon on the directory serves the built users: the tenth holds an
    // IB Key and a code card.
    let daemon = Daemon::start(&data_dir, "", "");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let kinds = runtime.block_on(async {
        let gateway = daemon.client(slsd::engine::Role::Gateway).await;
        let user = slsd::identity::Username::new("scale000000009").unwrap();
        match gateway
            .call(slsd::wire::Operation::Devices { user })
            .await
            .unwrap()
        {
            slsd::wire::Reply::Devices { devices, .. } => devices
                .iter()
                .map(|d| d.kind.to_string())
                .collect::<Vec<_>>(),
            other => panic!("devices: {other:?}"),
        }
    });
    assert_eq!(kinds.len(), 2, "{kinds:?}");
}

#[test]
fn fleet_and_load_refuse_mixes_they_cannot_run() {
    let run = sls_sim(&[
        "fleet",
        "create",
        "--users",
        "10",
        "--mix",
        "sms=10",
        "--out",
        "/dev/null",
    ]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("--mix"),
        "{}",
        text(&run)
    );
    let run = sls_sim(&[
        "load",
        "--fleet",
        "/nonexistent",
        "--mix",
        "login=90,refund=10",
    ]);
    assert!(!run.status.success());
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("unknown flow \"refund\""),
        "{}",
        text(&run)
    );
}

/// `sls-sim load --in-process` or `sls-sim replay`, five weeks, 100 users.
fn scenario(command: &[&str], report: &Path) -> Output {
    let mut args = command.to_vec();
    args.extend_from_slice(&[
        "--seed",
        "2027",
        "--duration",
        "5weeks",
        "--users",
        "100",
        "--json",
        report.to_str().unwrap(),
    ]);
    sls_sim(&args)
}

#[test]
fn an_in_process_scenario_covers_weeks_and_replays_from_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.json");
    let again = dir.path().join("again.json");
    let run = scenario(&["load", "--in-process"], &first);
    assert!(run.status.success(), "{}", text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("sls-sim replay --seed 2027"), "{stdout}");
    let report = json(&first);
    assert_eq!(report["invariant_violations"], Value::Array(vec![]));
    assert!(report["simulated_days"].as_f64().unwrap() >= 35.0);
    // Challenges answered too late were refused.
    assert!(report["late_answers_expired"].as_u64().unwrap() > 0);
    // Online cards stopped working after their 21 days.
    assert!(report["expired_devices_refused"].as_u64().unwrap() > 0);
    // Lockouts grew from the first length to the cap.
    let lockouts = report["lockouts_by_seconds"].as_object().unwrap();
    for length in ["60", "120", "3600"] {
        assert!(lockouts.contains_key(length), "{lockouts:?}");
    }
    assert!(report["attacker_guesses"].as_u64().unwrap() > 1000);
    assert!(report["logins_accepted"].as_u64().unwrap() > 1000);

    let run = scenario(&["replay"], &again);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(json(&again)["digest"], report["digest"]);
    assert_eq!(json(&again)["requests"], report["requests"]);
}
