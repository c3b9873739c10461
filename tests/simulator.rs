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
    let addr = daemon.quic.to_string();
    sls_sim(&[
        "fleet",
        "create",
        "--users",
        users,
        "--mix",
        "dscplus=40,ibkey=40,scc=20",
        "--second-device",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--addr",
        &addr,
        "--data-dir",
        daemon.data_dir.to_str().unwrap(),
    ])
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
