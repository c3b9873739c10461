//! `slsd` as a systemd service: the unit file in `contrib/systemd` is one
//! systemd accepts, and the daemon speaks the notify protocol to whatever
//! `NOTIFY_SOCKET` names (readiness, the watchdog, reloads, the drain),
//! checked here on a real Unix datagram socket as systemd listens on one.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{binary, workspace};

/// Waits for the next datagram that has `line` among its lines, skipping
/// others (watchdog pings arrive between everything); all of them are kept.
fn wait_for(socket: &UnixDatagram, line: &str, within: Duration, seen: &mut Vec<String>) {
    let until = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {line:?} from the daemon within {within:?}; it sent {seen:?}"
        );
        socket.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = message.lines().any(|l| l == line);
        seen.push(message);
        if found {
            return;
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `slsd serve` in `dir` as systemd starts it: `NOTIFY_SOCKET` names the
/// socket the test listens on (returned), with `more` environment.
fn serve_notifying(dir: &Path, more: &[(&str, &str)]) -> (Child, UnixDatagram) {
    let socket_path = dir.join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.join("slsd.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let child = Command::new(binary("slsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("RUST_LOG", "warn")
        .env("NOTIFY_SOCKET", &socket_path)
        .envs(more.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    (child, socket)
}

#[test]
fn readiness_the_watchdog_a_reload_and_the_drain_reach_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    // Pings every 200 ms (half the timeout).
    let (mut child, socket) = serve_notifying(dir.path(), &[("WATCHDOG_USEC", "400000")]);
    let mut seen = Vec::new();
    wait_for(&socket, "READY=1", Duration::from_secs(60), &mut seen);
    // Ready means serving: the line that says where it listens was
    // written before, and the status says how many devices it holds.
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let said: Vec<String> = stdout
        .lines()
        .map(Result::unwrap)
        .take_while(|l| l != "slsd: ready")
        .collect();
    assert!(
        said.iter().any(|l| l.starts_with("slsd: listening on ")),
        "{said:?}"
    );
    let ready = seen.last().unwrap();
    assert!(ready.contains("STATUS=serving, 0 devices"), "{ready:?}");

    // The watchdog: pings keep coming at about half the timeout.
    seen.clear();
    let start = Instant::now();
    for _ in 0..4 {
        wait_for(&socket, "WATCHDOG=1", Duration::from_secs(2), &mut seen);
    }
    let four = start.elapsed();
    assert!(
        four >= Duration::from_millis(500),
        "four pings in {four:?}: faster than every 200 ms"
    );

    // SIGHUP: RELOADING=1 with the monotonic time systemd 253 wants, then
    // READY=1 again.
    signal(child.id(), "HUP");
    seen.clear();
    wait_for(&socket, "RELOADING=1", Duration::from_secs(10), &mut seen);
    let reloading = seen.last().unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    wait_for(&socket, "READY=1", Duration::from_secs(10), &mut seen);

    // SIGTERM: STOPPING=1 when the drain begins, then a clean exit.
    signal(child.id(), "TERM");
    wait_for(&socket, "STOPPING=1", Duration::from_secs(10), &mut seen);
    assert!(child.wait().unwrap().success());
}

#[test]
fn without_a_watchdog_nothing_pings() {
    let dir = tempfile::tempdir().unwrap();
    // A watchdog for another process (a wrapper's) is not this one's.
    let (mut child, socket) = serve_notifying(
        dir.path(),
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    let mut seen = Vec::new();
    wait_for(&socket, "READY=1", Duration::from_secs(60), &mut seen);
    socket
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let after = socket.recv(&mut buf).map(|n| buf[..n].to_vec());
    signal(child.id(), "TERM");
    assert!(child.wait().unwrap().success());
    assert!(
        after.is_err(),
        "a datagram without a watchdog: {:?}",
        after.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
}

/// The unit in `contrib/systemd` passes `systemd-analyze verify` (its
/// directives, sandboxing and command line), with `ExecStart` pointed at the
/// binary this run built. Skipped with a note where systemd is not
/// installed, unless `SLS_REQUIRE_SYSTEMD` is set (as CI sets it).
#[test]
fn the_unit_file_is_one_systemd_accepts() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        assert!(
            std::env::var_os("SLS_REQUIRE_SYSTEMD").is_none(),
            "{} is missing: install Debian's systemd",
            analyze.display()
        );
        eprintln!("skipping: no {}", analyze.display());
        return;
    }
    let unit = std::fs::read_to_string(workspace().join("contrib/systemd/slsd.service")).unwrap();
    let installed = "/usr/local/bin/slsd";
    assert!(unit.contains(&format!("ExecStart={installed} serve")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slsd.service");
    std::fs::write(
        &path,
        unit.replace(installed, &binary("slsd").display().to_string()),
    )
    .unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The hardening the unit promises stays in it.
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "DynamicUser=yes",
        "StateDirectory=slsd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line} missing");
    }
}
