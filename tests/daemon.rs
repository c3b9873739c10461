//! The daemon over real QUIC on loopback: `slsd serve` in a temporary data
//! directory, driven by the simulator's client and emulated devices. The
//! core cases run over each transport: QUIC and the TCP/TLS fallback.

mod support;

use std::time::Duration;

use sls_sim::client::{Client, ClientError, Transport};
use sls_sim::token::DscPlus;
use slsd::engine::Role;
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::card::CodeCard;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::server::pki;
use slsd::wire::request::Pin;
use slsd::wire::{
    ChallengeText, EnrollRequest, ErrorCode, Operation, Reply, Request, Response, Verdict,
};
use support::daemon::Daemon;
use support::deployment::verify;
use support::over_both;

const DSC_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const FAST_LOCKOUT: &str = "[lockout]\nfailures = 3\nfirst = \"1s\"\nmax = \"4s\"\n[challenges]\nper-user-per-minute = 1000\n";

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

async fn enroll(
    admin: &Client,
    name: &str,
    kind: DeviceKind,
    secret: Option<&str>,
    pin: Option<&str>,
) -> (DeviceId, Option<SecretKey>) {
    let request = EnrollRequest {
        user: user(name),
        kind,
        secret: secret.map(|s| SecretKey::from_hex(s).unwrap()),
        pin: pin.map(Pin::new),
        label: format!("{kind}"),
    };
    match admin.call(Operation::Enroll(request)).await.unwrap() {
        Reply::Enrolled { device, secret } => (device, secret),
        other => panic!("enrol: {other:?}"),
    }
}

/// Enrols `name`'s DSC+ card (key DSC_KEY, PIN 4821).
async fn enroll_dsc(admin: &Client, name: &str) -> (DeviceId, Option<SecretKey>) {
    enroll(
        admin,
        name,
        DeviceKind::DscPlus,
        Some(DSC_KEY),
        Some("4821"),
    )
    .await
}

async fn challenge(gateway: &Client, name: &str, device: DeviceId) -> (ChallengeId, ChallengeText) {
    match gateway
        .call(Operation::Challenge {
            user: user(name),
            device,
        })
        .await
        .unwrap()
    {
        Reply::Challenge {
            challenge,
            text,
            expires_in,
        } => {
            assert!(expires_in > Duration::ZERO);
            (challenge, text)
        }
        other => panic!("challenge: {other:?}"),
    }
}

fn question(text: &ChallengeText) -> &str {
    match text {
        ChallengeText::Question(q) => q,
        other => panic!("expected a question, got {other:?}"),
    }
}

fn dsc_answer(pin: &str, text: &ChallengeText) -> String {
    let card = DscPlus::new(
        &SecretKey::from_hex(DSC_KEY).unwrap(),
        &DeviceProfiles::defaults().unwrap(),
    )
    .unwrap();
    card.respond(pin, question(text)).unwrap().to_string()
}

fn wrong(answer: &str) -> String {
    answer
        .chars()
        .map(|c| if c == '9' { '0' } else { '9' })
        .collect()
}

over_both!(each_device_kind_logs_in_and_wrong_answers_are_rejected);
async fn each_device_kind_logs_in_and_wrong_answers_are_rejected(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "").over(transport);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;

    // DSC+: PIN and challenge into the card.
    let (dsc, _) = enroll_dsc(&admin, "jdoe").await;
    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    assert_eq!(
        verify(&gateway, id, &dsc_answer("4821", &text)).await,
        Verdict::Accepted {
            user: user("jdoe"),
            device: dsc,
            kind: DeviceKind::DscPlus
        }
    );
    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    assert_eq!(
        verify(&gateway, id, &dsc_answer("1111", &text)).await,
        Verdict::Rejected { attempts_left: 2 },
        "wrong PIN"
    );
    assert_eq!(
        verify(&gateway, id, &wrong(&dsc_answer("4821", &text))).await,
        Verdict::Rejected { attempts_left: 1 }
    );

    // Security code card with a server-generated secret.
    let (scc, secret) = enroll(&admin, "jdoe", DeviceKind::Scc, None, None).await;
    let card = CodeCard::new(&secret.unwrap(), 224).unwrap();
    let (id, text) = challenge(&gateway, "jdoe", scc).await;
    let ChallengeText::CardPositions(a, b) = text else {
        panic!("{text:?}")
    };
    let answer = card
        .response(card.challenge(a, b).unwrap())
        .unwrap()
        .to_string();
    assert_eq!(
        verify(&gateway, id, &wrong(&answer)).await,
        Verdict::Rejected { attempts_left: 2 }
    );
    assert!(matches!(
        verify(&gateway, id, &answer).await,
        Verdict::Accepted {
            kind: DeviceKind::Scc,
            ..
        }
    ));

    // IB Key, offline challenge/response.
    let (ibkey, secret) = enroll(&admin, "jdoe", DeviceKind::IbKey, None, None).await;
    let app = Ocra::new(
        "OCRA-1:HOTP-SHA256-8:QN06".parse::<Suite>().unwrap(),
        &secret.unwrap(),
    );
    let (id, text) = challenge(&gateway, "jdoe", ibkey).await;
    let answer = app
        .respond(&OcraInput {
            question: question(&text),
            ..OcraInput::default()
        })
        .unwrap()
        .to_string();
    assert_eq!(
        verify(&gateway, id, &wrong(&answer)).await,
        Verdict::Rejected { attempts_left: 2 }
    );
    assert!(matches!(
        verify(&gateway, id, &answer).await,
        Verdict::Accepted {
            kind: DeviceKind::IbKey,
            ..
        }
    ));

    // The selection list shows all three.
    let Reply::Devices { devices: list, .. } = gateway
        .call(Operation::Devices { user: user("jdoe") })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        list.iter().map(|d| d.device).collect::<Vec<_>>(),
        vec![dsc, scc, ibkey]
    );
    assert_eq!(daemon.stop(), Some(0));
}

over_both!(a_challenge_verified_by_16_tasks_at_once_is_accepted_once);
async fn a_challenge_verified_by_16_tasks_at_once_is_accepted_once(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "",
        "[challenges]\nper-user-per-minute = 1000\n",
    )
    .over(transport);
    let admin = daemon.client(Role::Admin).await;
    let gateway = std::sync::Arc::new(daemon.client(Role::Gateway).await);
    let (dsc, _) = enroll_dsc(&admin, "jdoe").await;
    for _ in 0..5 {
        let (id, text) = challenge(&gateway, "jdoe", dsc).await;
        let answer = dsc_answer("4821", &text);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let gateway = std::sync::Arc::clone(&gateway);
                let answer = answer.clone();
                tokio::spawn(async move { verify(&gateway, id, &answer).await })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Verdict::Accepted { .. } => accepted += 1,
                Verdict::UnknownChallenge => {}
                other => panic!("unexpected verdict {other:?}"),
            }
        }
        assert_eq!(accepted, 1);
    }
}

over_both!(lockout_clears_by_itself_and_by_unlock_and_survives_restart);
async fn lockout_clears_by_itself_and_by_unlock_and_survives_restart(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", FAST_LOCKOUT).over(transport);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let (dsc, _) = enroll_dsc(&admin, "jdoe").await;

    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    let bad = wrong(&dsc_answer("4821", &text));
    assert_eq!(
        verify(&gateway, id, &bad).await,
        Verdict::Rejected { attempts_left: 2 }
    );
    assert_eq!(
        verify(&gateway, id, &bad).await,
        Verdict::Rejected { attempts_left: 1 }
    );
    assert_eq!(
        verify(&gateway, id, &bad).await,
        Verdict::LockedOut {
            retry_after: Duration::from_secs(1)
        }
    );
    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    assert!(matches!(
        verify(&gateway, id, &dsc_answer("4821", &text)).await,
        Verdict::LockedOut { .. }
    ));

    // Clears by itself.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        verify(&gateway, id, &dsc_answer("4821", &text)).await,
        Verdict::Accepted { .. }
    ));

    // Lock again, then restart: the lockout is still there.
    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    let bad = wrong(&dsc_answer("4821", &text));
    for _ in 0..2 {
        verify(&gateway, id, &bad).await;
    }
    assert!(matches!(
        verify(&gateway, id, &bad).await,
        Verdict::LockedOut { .. }
    ));
    drop((admin, gateway));
    let daemon = daemon.restart();
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let Reply::Devices { devices: list, .. } = gateway
        .call(Operation::Devices { user: user("jdoe") })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(list.len(), 1, "the device survived the restart");
    assert!(list[0].locked_for > Duration::ZERO, "so did its lockout");
    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    assert!(matches!(
        verify(&gateway, id, &dsc_answer("4821", &text)).await,
        Verdict::LockedOut { .. }
    ));

    // An operator clears it.
    assert_eq!(
        admin
            .call(Operation::Unlock {
                user: user("jdoe"),
                device: Some(dsc)
            })
            .await
            .unwrap(),
        Reply::Done
    );
    assert!(matches!(
        verify(&gateway, id, &dsc_answer("4821", &text)).await,
        Verdict::Accepted { .. }
    ));
}

over_both!(roles_and_certificates_are_enforced);
async fn roles_and_certificates_are_enforced(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "").over(transport);
    let gateway = daemon.client(Role::Gateway).await;
    let enroll = Operation::Enroll(EnrollRequest {
        user: user("mallory"),
        kind: DeviceKind::Scc,
        secret: None,
        pin: None,
        label: String::new(),
    });
    let Reply::Error { code, .. } = gateway.call(enroll).await.unwrap() else {
        panic!()
    };
    assert_eq!(code, ErrorCode::Forbidden);
    let carrier = daemon.client(Role::Carrier).await;
    let Reply::Error { code, .. } = carrier
        .call(Operation::Devices { user: user("jdoe") })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(code, ErrorCode::Forbidden);

    // No client certificate: refused in the handshake.
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pki::load_certs(&daemon.ca()).unwrap() {
            roots.add(cert).unwrap();
        }
        roots
    };
    let mut anonymous = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    anonymous.alpn_protocols = vec![b"sls/1".to_vec()];
    assert!(refused(daemon.connect(anonymous).await).await);

    // A gateway certificate from another CA: refused too.
    let other = tempfile::tempdir().unwrap();
    let other_pki = pki::PkiPaths::new(other.path());
    other_pki.ensure("localhost").unwrap();
    let foreign = pki::client_tls(
        &daemon.ca(),
        &other_pki.client_cert(Role::Gateway),
        &other_pki.client_key(Role::Gateway),
    )
    .unwrap();
    assert!(refused(daemon.connect(foreign).await).await);

    // A client that offers no ALPN (not the protocol's version): refused.
    let mut unversioned = daemon.tls(Role::Gateway);
    unversioned.alpn_protocols.clear();
    assert!(refused(daemon.connect(unversioned).await).await);

    // A gateway of a later release offers its version first and this one
    // after it (a rolling upgrade): the two agree on this one, and it is
    // served.
    assert_eq!(gateway.protocol().as_deref(), Some(&b"sls/1"[..]));
    let mut later = daemon.tls(Role::Gateway);
    later.alpn_protocols = vec![b"sls/2".to_vec(), b"sls/1".to_vec()];
    let later = daemon.connect(later).await.unwrap();
    assert_eq!(later.protocol().as_deref(), Some(&b"sls/1"[..]));
    assert!(matches!(
        later
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap(),
        Reply::Devices { .. }
    ));
    // One that speaks only a version this release does not: refused.
    let mut only_later = daemon.tls(Role::Gateway);
    only_later.alpn_protocols = vec![b"sls/2".to_vec()];
    assert!(refused(daemon.connect(only_later).await).await);

    // The legitimate clients still work.
    assert_eq!(
        gateway
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap(),
        Reply::Devices {
            required: true,
            devices: vec![]
        }
    );
}

#[tokio::test]
async fn a_client_falls_back_to_tcp_when_quic_gets_no_answer() {
    use sls_sim::client::Endpoints;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");
    // A UDP port that takes datagrams and never answers: a network that
    // drops QUIC.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent = black_hole.local_addr().unwrap();
    let wait = Duration::from_millis(500);
    let tls = || daemon.tls(Role::Gateway);
    let devices = Operation::Devices { user: user("jdoe") };

    let reachable = Endpoints {
        quic: daemon.quic,
        tcp: Some(daemon.tcp),
        wait,
    };
    let client = Client::connect_to(&reachable, "localhost", tls())
        .await
        .unwrap();
    assert_eq!(
        client.transport(),
        Transport::Quic,
        "QUIC first when it works"
    );

    let blocked = Endpoints {
        quic: silent,
        tcp: Some(daemon.tcp),
        wait,
    };
    let started = std::time::Instant::now();
    let client = Client::connect_to(&blocked, "localhost", tls())
        .await
        .unwrap();
    assert_eq!(client.transport(), Transport::Tcp);
    assert!(started.elapsed() >= wait, "QUIC was given its time");
    assert!(matches!(
        client.call(devices.clone()).await,
        Ok(Reply::Devices { .. })
    ));

    // Without a fallback the wait is all there is.
    let quic_only = Endpoints {
        quic: silent,
        tcp: None,
        wait,
    };
    let failed = Client::connect_to(&quic_only, "localhost", tls()).await;
    assert!(
        matches!(failed, Err(ClientError::TimedOut(_))),
        "{failed:?}"
    );
    // Neither answers: both failures are named.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = nowhere.local_addr().unwrap();
    drop(nowhere);
    let neither = Endpoints {
        quic: silent,
        tcp: Some(closed),
        wait,
    };
    let failed = Client::connect_to(&neither, "localhost", tls()).await;
    assert!(
        matches!(failed, Err(ClientError::Unreachable { .. })),
        "{failed:?}"
    );
    drop(black_hole);
}

/// Whether a connection attempt ended up refused: in TLS 1.3 the client may
/// finish its handshake before the server rejects its certificate, so the
/// refusal can show on the first request instead.
async fn refused(connected: Result<Client, ClientError>) -> bool {
    match connected {
        Err(_) => true,
        Ok(client) => tokio::time::timeout(Duration::from_secs(5), client.call(Operation::Stats))
            .await
            .map_or(true, |reply| reply.is_err()),
    }
}

over_both!(malformed_and_oversized_frames_do_not_stop_the_service);
async fn malformed_and_oversized_frames_do_not_stop_the_service(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "max-frame = 256", "").over(transport);
    let gateway = daemon.client(Role::Gateway).await;
    let mut stream = gateway.stream().await.unwrap();

    // A body that does not parse: an error reply with its id, stream goes on.
    stream
        .send_raw(&[0, 0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 42, 0x01, 0xff])
        .await
        .unwrap();
    let Response { id, reply } = stream.receive().await.unwrap();
    assert_eq!(id, 42);
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::Malformed,
                ..
            }
        ),
        "{reply:?}"
    );
    // An unknown operation.
    stream
        .send_raw(&[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 43, 0x99])
        .await
        .unwrap();
    let Response { id, reply } = stream.receive().await.unwrap();
    assert_eq!(id, 43);
    assert!(matches!(
        reply,
        Reply::Error {
            code: ErrorCode::UnknownOperation,
            ..
        }
    ));
    // Same stream, a good request.
    assert_eq!(
        stream
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap(),
        Reply::Devices {
            required: true,
            devices: vec![]
        }
    );

    // A frame over the limit breaks only its own stream.
    // A request before it in the same write is still answered.
    let mut broken = gateway.stream().await.unwrap();
    let mut bytes = Request {
        id: 7,
        operation: Operation::Devices { user: user("jdoe") },
    }
    .to_frame();
    bytes.extend_from_slice(&[0, 0, 1, 1]);
    bytes.extend_from_slice(&[0; 257]);
    broken.send_raw(&bytes).await.ok();
    let answered = broken.receive().await.unwrap();
    assert_eq!(
        (answered.id, answered.reply),
        (
            7,
            Reply::Devices {
                required: true,
                devices: vec![]
            }
        )
    );
    assert!(
        matches!(broken.receive().await, Err(ClientError::Closed)),
        "then the server finishes the stream"
    );
    // Over QUIC the client's side was stopped with the framing code; over
    // TCP the connection (the stream's own) has ended, read above.
    if transport == Transport::Quic {
        let stopped = broken.send_raw(&[0; 8]).await;
        let code = stopped.as_ref().err().and_then(ClientError::stopped_code);
        assert_eq!(
            code,
            Some(1),
            "writes to a stopped stream fail: {stopped:?}"
        );
    }
    assert_eq!(
        stream
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap(),
        Reply::Devices {
            required: true,
            devices: vec![]
        }
    );
    let other = daemon.client(Role::Gateway).await;
    assert_eq!(
        other
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap(),
        Reply::Devices {
            required: true,
            devices: vec![]
        }
    );
}

over_both!(pipelined_requests_are_all_answered_by_id);
async fn pipelined_requests_are_all_answered_by_id(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "").over(transport);
    let gateway = daemon.client(Role::Gateway).await;
    let mut stream = gateway.stream().await.unwrap();
    let operations = (0..2000)
        .map(|i| Operation::Devices {
            user: user(&format!("user{i}")),
        })
        .collect();
    let ids = stream.send_batch(operations).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..ids.len() {
        let response = stream.receive().await.unwrap();
        assert_eq!(
            response.reply,
            Reply::Devices {
                required: true,
                devices: vec![]
            }
        );
        assert!(seen.insert(response.id));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_format() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");
    let gateway = daemon.client(Role::Gateway).await;
    gateway
        .call(Operation::Devices { user: user("jdoe") })
        .await
        .unwrap();
    let text = tokio::task::block_in_place(|| daemon.metrics_text());
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("sls_requests_total{operation=\"devices\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(text.contains("sls_request_seconds"), "{text}");
}

#[test]
fn a_request_frame_is_what_protocol_md_says() {
    // The client writes exactly the documented bytes (see PROTOCOL.md).
    let frame = Request {
        id: 1,
        operation: Operation::Devices { user: user("jdoe") },
    }
    .to_frame();
    assert_eq!(
        frame,
        [
            0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 4, b'j', b'd', b'o', b'e'
        ]
    );
}

over_both!(connection_limits_hold);
async fn connection_limits_hold(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "max-connections = 1\nrequests-per-connection-per-second = 5",
        "",
    )
    .over(transport);
    let gateway = daemon.client(Role::Gateway).await;
    // Five requests per second with a burst of five: the sixth at once is refused.
    let mut stream = gateway.stream().await.unwrap();
    let ids = stream
        .send_batch(
            (0..6)
                .map(|_| Operation::Devices { user: user("jdoe") })
                .collect(),
        )
        .await
        .unwrap();
    let mut limited = 0;
    for _ in &ids {
        match stream.receive().await.unwrap().reply {
            Reply::Devices { .. } => {}
            Reply::Error {
                code: ErrorCode::RateLimited,
                retry_after,
                ..
            } => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200));
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(limited, 1);
    // A second connection is closed once its role is known, while the
    // first is open (code 6, "too many connections"; TCP ends it without
    // a reason).
    let second = daemon.connect(daemon.tls(Role::Gateway)).await;
    let refused = match second {
        Err(_) => true,
        Ok(second) => {
            let call = second.call(Operation::Devices { user: user("jdoe") }).await;
            call.is_err()
                && (transport == Transport::Tcp
                    || second
                        .close_reason()
                        .is_some_and(|r| r.contains("too many connections")))
        }
    };
    assert!(refused, "max-connections = 1");
}

#[tokio::test]
async fn challenges_expire_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "[challenges]\nttl = \"1s\"\n");
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let (dsc, _) = enroll_dsc(&admin, "jdoe").await;
    let (id, text) = challenge(&gateway, "jdoe", dsc).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        verify(&gateway, id, &dsc_answer("4821", &text)).await,
        Verdict::Expired
    );
}

#[tokio::test]
async fn streams_per_connection_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "max-streams-per-connection = 2",
        "",
    );
    let gateway = daemon.client(Role::Gateway).await;
    let mut first = gateway.stream().await.unwrap();
    let mut second = gateway.stream().await.unwrap();
    // Streams exist for the server once they carry data.
    for stream in [&mut first, &mut second] {
        assert_eq!(
            stream
                .call(Operation::Devices { user: user("jdoe") })
                .await
                .unwrap(),
            Reply::Devices {
                required: true,
                devices: vec![]
            }
        );
    }
    let third = tokio::time::timeout(Duration::from_millis(500), gateway.stream()).await;
    assert!(third.is_err(), "a third concurrent stream must wait");
    first.finish().await;
    assert!(
        first.receive().await.is_err(),
        "the server finishes the stream after its last reply"
    );
    let mut third = tokio::time::timeout(Duration::from_secs(5), gateway.stream())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        third
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap(),
        Reply::Devices {
            required: true,
            devices: vec![]
        }
    );
}

/// Runs `slsd serve` with `args` on `data_dir` until it is ready, stops it
/// with SIGTERM, and returns what it logged on stderr (a file, as under a
/// service manager, not a terminal).
fn serve_and_collect_logs(data_dir: &std::path::Path, args: &[&str]) -> String {
    use std::io::BufRead;
    let config = data_dir.with_extension("toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let log = data_dir.with_extension("log");
    let mut child = std::process::Command::new(support::binary("slsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.unwrap() == "slsd: ready" {
            break;
        }
    }
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log).unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_data_directory_is_private_and_logs_to_a_file_have_no_colour_codes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // An operator's directory, made with the usual umask.
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = serve_and_collect_logs(&data, &[]);
    assert_eq!(mode(&data), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        files += 1;
    }
    // CA, server and four role certificates with keys, the key file, the database.
    assert!(files >= 14, "{files} files");
    assert!(
        logs.contains("mode tightened") && logs.contains("was=755"),
        "the fix is logged: {logs}"
    );
    assert!(logs.contains("serving"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no ANSI codes in a file: {logs:?}"
    );

    // A file made open after the first start is found again at the next.
    let db = data.join("registry.redb");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let logs = serve_and_collect_logs(&data, &["--log-format", "json"]);
    assert_eq!(mode(&db), 0o600);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(lines.iter().any(|l| {
        l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("mode tightened"))
            && l["fields"]["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("registry.redb"))
    }));
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "serving" && l["level"] == "INFO")
    );
}

#[tokio::test]
async fn phones_cannot_take_the_gateways_connection_slots() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "max-connections = 4\nmax-phone-connections = 2",
        "",
    );
    let mut phones = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let phone = daemon.client(Role::Phone).await;
        // A phone's first request: Deny of a push that does not exist.
        let answered = phone
            .call(Operation::Deny {
                push: slsd::identity::PushId(1),
            })
            .await;
        if answered.is_err() {
            assert_eq!(
                phone.close_reason().as_deref(),
                Some("too many connections")
            );
            refused += 1;
        }
        phones.push(phone);
    }
    assert_eq!(refused, 2, "the phones' quota is two");
    // Two slots are left, and they are the gateways'.
    for _ in 0..2 {
        let gateway = daemon.client(Role::Gateway).await;
        assert!(matches!(
            gateway.call(Operation::Devices { user: user("x") }).await,
            Ok(Reply::Devices { .. })
        ));
        phones.push(gateway);
    }
}

#[tokio::test]
async fn a_connection_has_an_issuance_quota_below_its_request_rate() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "issuance-per-connection-per-second = 2",
        "",
    );
    let first = daemon.client(Role::Gateway).await;
    let mut stream = first.stream().await.unwrap();
    let challenges = (0..3)
        .map(|n| Operation::Challenge {
            user: user(&format!("nobody{n}")),
            device: DeviceId(1),
        })
        .collect();
    stream.send_batch(challenges).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(match stream.receive().await.unwrap().reply {
            Reply::Error { code, message, .. } => (code, message),
            other => panic!("{other:?}"),
        });
    }
    let limited: Vec<_> = answers
        .iter()
        .filter(|(code, _)| *code == ErrorCode::RateLimited)
        .collect();
    assert_eq!(limited.len(), 1, "{answers:?}");
    assert!(limited[0].1.contains("on this connection"), "{answers:?}");
    let not_found = answers
        .iter()
        .filter(|(code, _)| *code == ErrorCode::NotFound)
        .count();
    assert_eq!(not_found, 2, "{answers:?}");
    // Other requests on it, and other connections, are not held back.
    assert!(matches!(
        stream
            .call(Operation::Devices { user: user("x") })
            .await
            .unwrap(),
        Reply::Devices { .. }
    ));
    let second = daemon.client(Role::Gateway).await;
    let reply = second
        .call(Operation::Challenge {
            user: user("nobody9"),
            device: DeviceId(1),
        })
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{reply:?}"
    );
}

/// `slsd cert issue` with the CA key kept out of the data directory; the
/// serial number it prints.
fn issue(data: &std::path::Path, ca_key: &std::path::Path, role: &str, name: &str) -> String {
    let out = std::process::Command::new(support::binary("slsd"))
        .args([
            "cert",
            "issue",
            "--role",
            role,
            "--name",
            name,
            "--data-dir",
        ])
        .arg(data)
        .arg("--ca-key")
        .arg(ca_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    printed
        .lines()
        .find_map(|l| l.strip_prefix("serial "))
        .expect("a serial number")
        .to_owned()
}

over_both!(
    client_certificates_are_issued_per_client_and_revoked_on_sighup,
    (flavor = "multi_thread", worker_threads = 2)
);
async fn client_certificates_are_issued_per_client_and_revoked_on_sighup(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let revoked = dir.path().join("revoked.txt");
    std::fs::write(&revoked, "# revoked client certificates\n").unwrap();
    let daemon = Daemon::start(
        &data,
        &format!("name = \"sls.example\"\nrevoked-serials = {revoked:?}"),
        "",
    )
    .over(transport);
    // The CA key moves out of the data directory; the daemon runs without it.
    let vault = dir.path().join("vault");
    std::fs::create_dir(&vault).unwrap();
    std::fs::rename(data.join("ca.key"), vault.join("ca.key")).unwrap();
    let daemon = daemon.restart();
    let branch_a = issue(&data, &vault.join("ca.key"), "gateway", "branch-a");
    issue(&data, &vault.join("ca.key"), "gateway", "branch-b");
    let tls = |name: &str| {
        pki::client_tls(
            &daemon.ca(),
            &data.join(format!("{name}.pem")),
            &data.join(format!("{name}.key")),
        )
        .unwrap()
    };
    // Each gateway connects with its own certificate, by the configured name.
    let a = daemon
        .connect_named("sls.example", tls("branch-a"))
        .await
        .unwrap();
    let b = daemon
        .connect_named("sls.example", tls("branch-b"))
        .await
        .unwrap();
    // A stream A keeps open: its connection must close on revocation.
    let mut held = a.stream().await.unwrap();
    for client in [&a, &b] {
        assert!(
            matches!(
                client.call(Operation::Stats).await,
                Err(_) | Ok(Reply::Error { .. })
            ),
            "Stats is the operator's"
        );
        assert!(matches!(
            client.call(Operation::Devices { user: user("jdoe") }).await,
            Ok(Reply::Devices { .. })
        ));
    }
    // Its name shows in the metrics.
    let metrics = tokio::task::block_in_place(|| daemon.metrics_text());
    assert!(metrics.contains("client=\"branch-a\""), "{metrics}");

    // Revoked and SIGHUP: A's open connection closes and A cannot connect
    // again; B goes on.
    std::fs::write(&revoked, format!("{branch_a}  # branch A, lost\n")).unwrap();
    let hangup = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(daemon.pid().to_string())
        .status()
        .unwrap();
    assert!(hangup.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held
        .call(Operation::Devices { user: user("jdoe") })
        .await
        .is_ok()
    {
        assert!(std::time::Instant::now() < deadline, "A is still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused(daemon.connect_named("sls.example", tls("branch-a")).await).await);
    assert!(matches!(
        b.call(Operation::Devices { user: user("jdoe") }).await,
        Ok(Reply::Devices { .. })
    ));
    // A new server certificate (another name) is taken on SIGHUP; the open
    // connection goes on (over TCP a new stream is a new connection, which
    // checks the new certificate: the open one is a stream held from now).
    let mut b_held = b.stream().await.unwrap();
    let renewed = std::process::Command::new(support::binary("slsd"))
        .args(["cert", "server", "--name", "new.example", "--data-dir"])
        .arg(&data)
        .arg("--ca-key")
        .arg(vault.join("ca.key"))
        .output()
        .unwrap();
    assert!(renewed.status.success(), "{renewed:?}");
    let new_name = || daemon.connect_named("new.example", tls("branch-b"));
    assert!(refused(new_name().await).await, "not before the SIGHUP");
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(daemon.pid().to_string())
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused(new_name().await).await {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        b_held.call(Operation::Devices { user: user("jdoe") }).await,
        Ok(Reply::Devices { .. })
    ));
    // `slsd admin` checks the certificate against `server.name` of its
    // configuration: another name is refused.
    for (name, works) in [("new.example", true), ("other.example", false)] {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, format!("[server]\nname = \"{name}\"\n")).unwrap();
        let stats = std::process::Command::new(support::binary("slsd"))
            .args(["admin", "--addr", &daemon.quic.to_string(), "--data-dir"])
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("stats")
            .output()
            .unwrap();
        assert_eq!(stats.status.success(), works, "{name}: {stats:?}");
    }
}
