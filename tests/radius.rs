//! The RADIUS front end driven by a real RADIUS client: `radclient` from
//! FreeRADIUS's utilities (`apt-get install freeradius-utils`; `.ci/run`
//! installs it), against `slsd serve` with a RADIUS listener. Devices are
//! the simulator's emulated cards, phone app and carrier.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sls_sim::carrier::{self, Bridge, Inbox};
use sls_sim::phone::{Matcher, PhoneApp};
use slsd::engine::Role;
use slsd::otp::card::CodeCard;
use slsd::otp::push::PushSigner;
use slsd::phone::PhoneNumber;
use slsd::profile::DeviceKind;
use slsd::radius::packet::{Packet, access_request, attribute, code, verify_reply};
use slsd::wire::{EnrollRequest, Operation, Reply};
use support::daemon::Daemon;
use support::deployment::{answer, enroll_dsc, user, wrong};

const SECRET: &str = "a radius secret of thirty bytes";

/// Where a RADIUS client sends: a node's RADIUS address, and the file
/// with the shared secret.
struct Nas {
    radius: SocketAddr,
    secret_file: PathBuf,
}

/// A daemon with a RADIUS listener for one client, 127.0.0.1.
struct Front {
    daemon: Daemon,
    nas: Nas,
    _dir: tempfile::TempDir,
}

/// The `[radius]` table of a node whose one client is this machine.
fn radius_section(secret_file: &Path) -> String {
    format!(
        "[radius]\nlisten = \"127.0.0.1:0\"\npush-wait = \"5s\"\n\
         clients = [{{ name = \"vpn\", addresses = [\"127.0.0.1\"], secret-file = {secret_file:?} }}]\n"
    )
}

fn secret_in(dir: &Path) -> PathBuf {
    let secret_file = dir.join("vpn.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    secret_file
}

fn start(more: &str) -> Front {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = secret_in(dir.path());
    let sections = format!(
        "{}[lockout]\nfailures = 3\nfirst = \"30s\"\n\
         [challenges]\nper-user-per-minute = 1000\n{more}",
        radius_section(&secret_file)
    );
    let daemon = Daemon::start(&dir.path().join("data"), "", &sections);
    let radius = daemon.radius.expect("the daemon says where RADIUS listens");
    Front {
        daemon,
        nas: Nas {
            radius,
            secret_file,
        },
        _dir: dir,
    }
}

/// What radclient printed of the answer it received.
#[derive(Debug, Default)]
struct Answer {
    /// `Access-Accept`, `Access-Reject`, `Access-Challenge`; empty: none came.
    code: String,
    messages: Vec<String>,
    /// As radclient prints it: `0x…`.
    state: Option<String>,
    output: String,
}

impl Answer {
    fn message(&self) -> String {
        self.messages.concat()
    }
}

/// Sends one Access-Request with `radclient`: the attribute lines given,
/// plus a Message-Authenticator unless `sign` is false; no retransmission.
async fn radclient(nas: &Nas, secret_file: &Path, lines: &[String], sign: bool) -> Answer {
    let mut lines = lines.to_vec();
    if sign {
        lines.push("Message-Authenticator = 0x00".into());
    }
    radclient_at(nas.radius, secret_file, &lines, &["-r", "1", "-t", "2"]).await
}

/// Runs `radclient OPTIONS -S SECRET_FILE ADDR auth` with `lines` on its
/// standard input, and reads what it printed of the answer (off the
/// runtime: it blocks until radclient gives up).
async fn radclient_at(
    addr: SocketAddr,
    secret_file: &Path,
    lines: &[String],
    options: &[&str],
) -> Answer {
    let secret_file = secret_file.to_path_buf();
    let input = format!("{}\n", lines.join("\n"));
    let options: Vec<String> = options.iter().map(|o| (*o).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_radclient(addr, &secret_file, &input, &options))
        .await
        .unwrap()
}

fn run_radclient(addr: SocketAddr, secret_file: &Path, input: &str, options: &[String]) -> Answer {
    let mut command = Command::new("radclient");
    // An unpacked radclient (cargo xtask test fetches one) reads its
    // dictionaries where it was unpacked.
    if let Some(dir) = std::env::var_os("SLS_RADCLIENT_DICTIONARIES") {
        command.arg("-D").arg(dir);
    }
    if let Some(dir) = std::env::var_os("SLS_RADCLIENT_RADDB") {
        command.arg("-d").arg(dir);
    }
    // -x prints the attributes of the answer.
    let mut child = command
        .arg("-x")
        .args(options)
        .arg("-S")
        .arg(secret_file)
        .arg(addr.to_string())
        .arg("auth")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("radclient (cargo xtask test fetches it; or apt-get install freeradius-utils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answer = Answer {
        output: text.clone(),
        ..Answer::default()
    };
    // The attributes after "Received …" are the answer's (those after
    // "Sent …" the request's).
    let mut received = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Received ") {
            answer.code = rest.split(' ').next().unwrap_or_default().to_owned();
            received = true;
        } else if line.starts_with("Sent ") {
            received = false;
        } else if !received {
        } else if let Some(rest) = line.strip_prefix("Reply-Message = ") {
            let text = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"'));
            answer
                .messages
                .push(text.unwrap_or(rest).replace("\\\"", "\""));
        } else if let Some(rest) = line.strip_prefix("State = ") {
            answer.state = Some(rest.to_owned());
        }
    }
    answer
}

async fn first(nas: &Nas, name: &str, password: &str) -> Answer {
    let lines = [
        format!("User-Name = \"{name}\""),
        format!("User-Password = \"{password}\""),
    ];
    radclient(nas, &nas.secret_file, &lines, true).await
}

async fn next(nas: &Nas, name: &str, state: &str, password: &str) -> Answer {
    radclient(
        nas,
        &nas.secret_file,
        &next_lines(name, state, password),
        false,
    )
    .await
}

/// The attribute lines of a request that goes on with `state`, signed.
fn next_lines(name: &str, state: &str, password: &str) -> [String; 4] {
    [
        format!("User-Name = \"{name}\""),
        format!("User-Password = \"{password}\""),
        format!("State = {state}"),
        "Message-Authenticator = 0x00".to_owned(),
    ]
}

/// The challenge's digits in a Reply-Message ("Challenge 123456: ...").
fn question(answer: &Answer) -> String {
    let message = answer.message();
    message
        .strip_prefix("Challenge ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no challenge in {answer:?}"))
        .to_owned()
}

/// The two card positions in a Reply-Message.
fn positions(answer: &Answer) -> (u16, u16) {
    let message = answer.message();
    let numbers: Vec<u16> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dsc_plus_and_a_code_card_log_in_and_wrong_answers_lock_the_card() {
    let front = start("");
    let admin = front.daemon.client(Role::Admin).await;
    enroll_dsc(&admin, "gina").await.unwrap();
    let request = EnrollRequest {
        user: user("gina"),
        kind: DeviceKind::Scc,
        secret: None,
        pin: None,
        label: "codes".into(),
    };
    let Reply::Enrolled {
        device: _,
        secret: Some(card_key),
    } = admin.call(Operation::Enroll(request)).await.unwrap()
    else {
        panic!("enrol a code card")
    };

    // An empty password: the first device (the DSC+), and the others.
    let challenged = first(&front.nas, "gina", "").await;
    assert_eq!(challenged.code, "Access-Challenge", "{challenged:?}");
    assert!(
        challenged
            .message()
            .contains("2 your security code card \"codes\""),
        "{challenged:?}"
    );
    let state = challenged.state.clone().expect("a State");
    let accepted = next(&front.nas, "gina", &state, &answer(&question(&challenged))).await;
    assert_eq!(accepted.code, "Access-Accept", "{accepted:?}");
    // The State is used up with its challenge.
    let again = next(&front.nas, "gina", &state, &answer(&question(&challenged))).await;
    assert_eq!(again.code, "Access-Reject", "{again:?}");
    assert!(again.message().contains("no longer open"), "{again:?}");

    // The code card, chosen by its number.
    let challenged = first(&front.nas, "gina", "2").await;
    assert_eq!(challenged.code, "Access-Challenge", "{challenged:?}");
    let (a, b) = positions(&challenged);
    let card = CodeCard::new(&card_key, 224).unwrap();
    let code = card
        .response(card.challenge(a, b).unwrap())
        .unwrap()
        .to_string();
    let accepted = next(
        &front.nas,
        "gina",
        challenged.state.as_ref().unwrap(),
        &code,
    )
    .await;
    assert_eq!(accepted.code, "Access-Accept", "{accepted:?}");

    // Three wrong answers lock the DSC+ (lockout.failures = 3): the right
    // answer is then refused, with how long, and the card is not offered.
    for _ in 0..3 {
        let challenged = first(&front.nas, "gina", "1").await;
        assert_eq!(challenged.code, "Access-Challenge", "{challenged:?}");
        let refused = next(
            &front.nas,
            "gina",
            challenged.state.as_ref().unwrap(),
            &wrong(&answer(&question(&challenged))),
        )
        .await;
        assert_eq!(refused.code, "Access-Reject", "{refused:?}");
    }
    let locked = first(&front.nas, "gina", "1").await;
    assert_eq!(locked.code, "Access-Reject", "{locked:?}");
    assert!(locked.message().contains("locked"), "{locked:?}");
    let fallback = first(&front.nas, "gina", "").await;
    assert_eq!(fallback.code, "Access-Challenge", "{fallback:?}");
    assert!(
        fallback.message().contains("positions"),
        "the code card now: {fallback:?}"
    );
    // A user nobody enrolled reads what a user without devices reads.
    let unknown = first(&front.nas, "nobody", "").await;
    assert_eq!(unknown.code, "Access-Reject");
    assert_eq!(unknown.messages, ["No device can answer for this login."]);
    let lockouts = metric(&front, "sls_lockouts_total").await;
    assert_eq!(lockouts, 1);
}

/// A metric's total, read off the runtime.
async fn metric(front: &Front, name: &'static str) -> u64 {
    let metrics = front.daemon.metrics;
    tokio::task::spawn_blocking(move || support::daemon::metric_at(metrics, name))
        .await
        .unwrap()
}

/// The number a push's Reply-Message asks the user to choose on the phone.
fn match_number(answer: &Answer) -> u8 {
    let message = answer.message();
    let after = message
        .split("choosing ")
        .nth(1)
        .unwrap_or_else(|| panic!("no number in {answer:?}"));
    after[..2].parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn push_and_sms_logins_retransmissions_answered_once_and_unsigned_requests_dropped() {
    let front = start("[push]\nttl = \"30s\"\n[sms]\nresend-interval = \"1s\"\n");
    let admin = front.daemon.client(Role::Admin).await;
    // An IB Key with a push key, and its phone app connected.
    let request = EnrollRequest {
        user: user("hugo"),
        kind: DeviceKind::IbKey,
        secret: None,
        pin: None,
        label: "phone".into(),
    };
    let Reply::Enrolled { device, .. } = admin.call(Operation::Enroll(request)).await.unwrap()
    else {
        panic!("enrol an IB Key")
    };
    let signer = Arc::new(PushSigner::from_seed([5; 32]));
    let bind = Operation::BindPushKey {
        device,
        key: signer.public(),
    };
    assert_eq!(admin.call(bind).await.unwrap(), Reply::Done);
    let matcher = Arc::new(Matcher::default());
    let app = PhoneApp::connect(front.daemon.client(Role::Phone).await, Arc::clone(&matcher))
        .await
        .unwrap();
    assert_eq!(
        app.subscribe(&[(device, Arc::clone(&signer))])
            .await
            .unwrap(),
        vec![Reply::Subscribed]
    );

    // push: the number to choose, then the wait for the approval. The
    // phone approves after radclient has retransmitted (every 0.5 s):
    // the retransmissions are not answered twice.
    let pushed = first(&front.nas, "hugo", "push").await;
    assert_eq!(pushed.code, "Access-Challenge", "{pushed:?}");
    let number = match_number(&pushed);
    let state = pushed.state.clone().unwrap();
    let lines = next_lines("hugo", &state, "");
    let waiting = {
        let front_radius = front.nas.radius;
        let secret_file = front.nas.secret_file.clone();
        tokio::spawn(async move {
            let options = ["-r", "5", "-t", "0.5"];
            radclient_at(front_radius, &secret_file, &lines, &options).await
        })
    };
    // Past radclient's second retransmission, the person approves (as
    // soon as the notice is open on the phone).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while matcher.shown_to_waiting(number) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the phone shows the push"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let approved = waiting.await.unwrap();
    assert_eq!(approved.code, "Access-Accept", "{approved:?}");
    assert!(metric(&front, "sls_radius_duplicates_total").await >= 1);
    let answers = metric(&front, "sls_radius_answers_total").await;
    assert_eq!(
        answers, 2,
        "one answer a request, whatever the retransmissions"
    );
    let awaited = metric_series(&front, "sls_requests_total", "operation=\"await_push\"").await;
    assert_eq!(awaited, 1, "one wait on the push");

    // A phone slower than radius.push-wait: the same State is asked
    // again ("not approved yet"), the push stays open, and the next
    // request's wait takes the first one's place on it.
    let pushed = first(&front.nas, "hugo", "push").await;
    assert_eq!(pushed.code, "Access-Challenge", "{pushed:?}");
    let number = match_number(&pushed);
    let state = pushed.state.clone().unwrap();
    let lines = next_lines("hugo", &state, "");
    // A NAS timeout above push-wait (5 s here), as PROTOCOL.md asks.
    let patient = ["-r", "1", "-t", "8"];
    let secret_file = &front.nas.secret_file;
    let slow = radclient_at(front.nas.radius, secret_file, &lines, &patient).await;
    assert_eq!(slow.code, "Access-Challenge", "{slow:?}");
    assert!(slow.message().starts_with("Not approved yet."), "{slow:?}");
    assert_eq!(slow.state.as_deref(), Some(state.as_str()));
    assert_eq!(match_number(&slow), number);
    assert!(
        matcher.shown_to_waiting(number) >= 1,
        "the notice is still open"
    );
    let approved = next(&front.nas, "hugo", &state, "").await;
    assert_eq!(approved.code, "Access-Accept", "{approved:?}");

    // sms: a code goes through the carrier, then it is typed.
    let inbox = Arc::new(Inbox::default());
    let _bridge = Bridge::start(
        front.daemon.client(Role::Carrier).await,
        carrier::Behaviour::Deliver,
        Arc::clone(&inbox),
    )
    .await
    .unwrap();
    let number = PhoneNumber::parse("+41 446681800").unwrap();
    let enroll = Operation::EnrollPhone {
        user: user("hugo"),
        number: number.clone(),
        label: "mobile".into(),
    };
    assert!(matches!(
        admin.call(enroll).await.unwrap(),
        Reply::Enrolled { .. }
    ));
    let sent = first(&front.nas, "hugo", "sms").await;
    assert_eq!(sent.code, "Access-Challenge", "{sent:?}");
    let received = inbox
        .next(&number, Duration::from_secs(5))
        .await
        .expect("an SMS");
    let code = received.code().unwrap();
    let wrong_code = next(
        &front.nas,
        "hugo",
        sent.state.as_ref().unwrap(),
        &wrong(&code),
    )
    .await;
    assert_eq!(wrong_code.code, "Access-Reject", "{wrong_code:?}");
    // A new code once sms.resend-interval (1 s here) has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = first(&front.nas, "hugo", "sms").await;
    assert_eq!(sent.code, "Access-Challenge", "{sent:?}");
    let received = inbox
        .next(&number, Duration::from_secs(5))
        .await
        .expect("an SMS");
    let accepted = next(
        &front.nas,
        "hugo",
        sent.state.as_ref().unwrap(),
        &received.code().unwrap(),
    )
    .await;
    assert_eq!(accepted.code, "Access-Accept", "{accepted:?}");

    // Without a Message-Authenticator, or under another secret: no answer
    // at all, each counted.
    let lines = [
        "User-Name = \"hugo\"".to_owned(),
        "User-Password = \"\"".to_owned(),
    ];
    let unsigned = radclient(&front.nas, &front.nas.secret_file, &lines, false).await;
    assert_eq!(unsigned.code, "", "{unsigned:?}");
    assert!(unsigned.output.contains("No reply"), "{unsigned:?}");
    let other = front._dir.path().join("other.secret");
    std::fs::write(&other, "another secret of thirty bytes!").unwrap();
    let forged = radclient(&front.nas, &other, &lines, true).await;
    assert_eq!(forged.code, "", "{forged:?}");
    assert!(forged.output.contains("No reply"), "{forged:?}");
    assert_eq!(
        metric_series(
            &front,
            "sls_radius_dropped_total",
            "reason=\"no_message_authenticator\""
        )
        .await,
        1
    );
    assert_eq!(
        metric_series(
            &front,
            "sls_radius_dropped_total",
            "reason=\"bad_message_authenticator\""
        )
        .await,
        1
    );

    // A retransmission after the answer gets the same bytes, and the
    // answer is not checked a second time (sls's own codec as the client:
    // radclient stops at the first answer).
    let verifies = || metric_series(&front, "sls_requests_total", "operation=\"verify\"");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(front.nas.radius).await.unwrap();
    let challenge = access_request(
        (1, [1; 16]),
        SECRET.as_bytes(),
        Some(b""),
        &[(attribute::USER_NAME, b"hugo")],
        true,
    )
    .unwrap();
    let reply = exchange(&socket, &challenge).await;
    let reply = Packet::decode(&reply).unwrap();
    assert_eq!(reply.code(), code::ACCESS_CHALLENGE);
    let state = reply
        .single(attribute::STATE, "State")
        .unwrap()
        .unwrap()
        .to_vec();
    let before = verifies().await;
    let wrong_answer = access_request(
        (2, [2; 16]),
        SECRET.as_bytes(),
        Some(b"00000000"),
        &[(attribute::USER_NAME, b"hugo"), (attribute::STATE, &state)],
        true,
    )
    .unwrap();
    let first_reply = exchange(&socket, &wrong_answer).await;
    let again = exchange(&socket, &wrong_answer).await;
    assert_eq!(first_reply, again, "the same answer, byte for byte");
    let decoded = Packet::decode(&first_reply).unwrap();
    assert_eq!(decoded.code(), code::ACCESS_REJECT);
    assert!(verify_reply(
        &decoded,
        &Packet::decode(&wrong_answer).unwrap(),
        SECRET.as_bytes()
    ));
    assert_eq!(verifies().await, before + 1, "verified once");
    drop(app);
}

/// Sends a datagram and waits (up to 5 s) for the answer.
async fn exchange(socket: &tokio::net::UdpSocket, request: &[u8]) -> Vec<u8> {
    socket.send(request).await.unwrap();
    let mut buffer = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    buffer.truncate(len);
    buffer
}

/// A metric's series whose labels contain `labels`, summed.
async fn metric_series(front: &Front, name: &'static str, labels: &'static str) -> u64 {
    let metrics = front.daemon.metrics;
    tokio::task::spawn_blocking(move || {
        support::daemon::metrics_at(metrics)
            .lines()
            .filter(|line| line.starts_with(name) && line.contains(labels))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    })
    .await
    .unwrap()
}

/// Two nodes sharing a Redis Cluster, each with a RADIUS listener: a NAS
/// that fails over between them (as NAS do when one server is slow) gets
/// its challenge from one node and gives the answer to the other. The
/// `State` is signed under the deployment's key, not kept by a node.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_the_answer_may_go_to_another_node() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = secret_in(dir.path());
    let deployment = support::deployment::deploy(&radius_section(&secret_file));
    let nas_of = |daemon: &Daemon| Nas {
        radius: daemon.radius.expect("RADIUS listens"),
        secret_file: secret_file.clone(),
    };
    let (a, b) = (nas_of(&deployment.a), nas_of(&deployment.b));
    let admin = deployment.a.client(Role::Admin).await;
    enroll_dsc(&admin, "gina").await.unwrap();

    let challenged = first(&a, "gina", "").await;
    assert_eq!(challenged.code, "Access-Challenge", "{challenged:?}");
    let state = challenged.state.clone().unwrap();
    let accepted = next(&b, "gina", &state, &answer(&question(&challenged))).await;
    assert_eq!(accepted.code, "Access-Accept", "{accepted:?}");
    // Used up on every node.
    let again = next(&a, "gina", &state, &answer(&question(&challenged))).await;
    assert_eq!(again.code, "Access-Reject", "{again:?}");
    // A wrong answer on one node counts on the other: three lock the card
    // (the deployment's lockout.failures), wherever they were typed.
    for round in 0..3 {
        let (asking, answering) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let challenged = first(asking, "gina", "").await;
        assert_eq!(challenged.code, "Access-Challenge", "{challenged:?}");
        let state = challenged.state.clone().unwrap();
        let wrong_answer = wrong(&answer(&question(&challenged)));
        let refused = next(answering, "gina", &state, &wrong_answer).await;
        assert_eq!(refused.code, "Access-Reject", "{refused:?}");
    }
    for nas in [&a, &b] {
        let locked = first(nas, "gina", "").await;
        assert_eq!(locked.code, "Access-Reject", "{locked:?}");
        assert_eq!(locked.messages, ["No device can answer for this login."]);
    }
}

/// A shared secret shorter than 16 bytes, or a missing secret file, stops
/// the daemon at start with the client named.
#[test]
fn a_short_or_missing_secret_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "too short\n").unwrap();
    for (file, says) in [
        (short, "is 9 bytes; at least 16 are needed"),
        (dir.path().join("missing.secret"), "missing.secret"),
    ] {
        let config = dir.path().join("slsd.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n{}",
                radius_section(&file)
            ),
        )
        .unwrap();
        let output = Command::new(support::binary("slsd"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("radius.clients \"vpn\"") && stderr.contains(says),
            "{stderr}"
        );
    }
}
