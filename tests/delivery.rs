//! SMS/voice codes through emulated carrier bridges, and IB Key push
//! approval through emulated phone apps, against `slsd serve` over QUIC
//! (the round trips and the shutdown over the TCP/TLS fallback too).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sls_sim::carrier::{self, Bridge, Inbox};
use sls_sim::client::{Client, Transport};
use sls_sim::phone::{self, Matcher, PhoneApp};
use slsd::engine::Role;
use slsd::identity::{DeviceId, PushId, Username};
use slsd::otp::push::{PushKey, PushSigner, Signature};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::wire::request::Answer;
use slsd::wire::{DeliveryState, EnrollRequest, ErrorCode, Operation, Reply, Verdict};
use support::daemon::Daemon;
use support::over_both;

const CONFIG: &str = "[sms]\nttl = \"30s\"\nresend-interval = \"2s\"\nsends-per-number-per-hour = 100\n\
[carrier]\nack-timeout = \"500ms\"\n[push]\nttl = \"3s\"\n\
[challenges]\nper-user-per-minute = 1000\n[lockout]\nfailures = 3\nfirst = \"1s\"\nmax = \"4s\"\n";

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn number(text: &str) -> PhoneNumber {
    PhoneNumber::parse(text).unwrap()
}

async fn enroll_phone(admin: &Client, name: &str, to: &str) -> DeviceId {
    let operation = Operation::EnrollPhone {
        user: user(name),
        number: number(to),
        label: "mobile".into(),
    };
    match admin.call(operation).await.unwrap() {
        Reply::Enrolled { device, .. } => device,
        other => panic!("enrol phone: {other:?}"),
    }
}

/// Enrols an IB Key for `name` and binds a push key; returns the signer.
async fn enroll_ib_key(admin: &Client, name: &str, seed: u8) -> (DeviceId, Arc<PushSigner>) {
    let request = EnrollRequest {
        user: user(name),
        kind: DeviceKind::IbKey,
        secret: None,
        pin: None,
        label: "phone".into(),
    };
    let device = match admin.call(Operation::Enroll(request)).await.unwrap() {
        Reply::Enrolled { device, .. } => device,
        other => panic!("enrol: {other:?}"),
    };
    let signer = Arc::new(PushSigner::from_seed([seed; 32]));
    let bind = Operation::BindPushKey {
        device,
        key: signer.public(),
    };
    assert_eq!(admin.call(bind).await.unwrap(), Reply::Done);
    (device, signer)
}

async fn send(gateway: &Client, name: &str, channel: Channel) -> Reply {
    let operation = Operation::SendCode {
        user: user(name),
        channel,
    };
    gateway.call(operation).await.unwrap()
}

async fn verify_code(gateway: &Client, name: &str, code: &str) -> Reply {
    let operation = Operation::VerifyCode {
        user: user(name),
        code: Answer::new(code),
    };
    gateway.call(operation).await.unwrap()
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// `retry_after` of a RateLimited reply.
fn retry_after(reply: &Reply) -> Duration {
    match reply {
        Reply::Error {
            code: ErrorCode::RateLimited,
            retry_after,
            ..
        } => *retry_after,
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

async fn bridge(daemon: &Daemon, behaviour: carrier::Behaviour, inbox: &Arc<Inbox>) -> Bridge {
    Bridge::start(
        daemon.client(Role::Carrier).await,
        behaviour,
        Arc::clone(inbox),
    )
    .await
    .unwrap()
}

/// Polls `CodeStatus` until `want` says yes (or 10 s pass: a delivery's
/// failover takes about one `ack-timeout`, 500 ms here, but a loaded CI
/// machine running a dozen daemons at once can be much slower).
async fn status_until(
    gateway: &Client,
    code: slsd::identity::CodeId,
    want: impl Fn(&DeliveryState) -> bool,
) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gateway.call(Operation::CodeStatus { code }).await.unwrap();
        if let Reply::CodeStatus { delivery, .. } = &reply
            && want(delivery)
        {
            return reply;
        }
        assert!(Instant::now() < deadline, "status stayed {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

over_both!(sms_round_trip_with_resend_rules_voice_fallback_and_single_use);
async fn sms_round_trip_with_resend_rules_voice_fallback_and_single_use(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", CONFIG).over(transport);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let alice_number = number("+41 446681800");
    let alice_phone = enroll_phone(&admin, "alice", "+41 446681800").await;

    // No bridge yet: said plainly, nothing pretends to be sent.
    let reply = send(&gateway, "alice", Channel::Sms).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::DeliveryUnavailable));
    // Users without a verified number, known or not, get the same answer.
    for name in ["bob", "nobody-at-all"] {
        let reply = send(&gateway, name, Channel::Sms).await;
        assert_eq!(
            error_code(&reply),
            Some(ErrorCode::NoVerifiedNumber),
            "{name}"
        );
    }
    // A second number for the same user is refused.
    let again = Operation::EnrollPhone {
        user: user("alice"),
        number: number("+41 446681801"),
        label: String::new(),
    };
    let reply = admin.call(again).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::InvalidArgument));

    let inbox = Arc::new(Inbox::default());
    let _bridge = bridge(&daemon, carrier::Behaviour::Deliver, &inbox).await;
    let Reply::CodeSent {
        code: code_id,
        expires_in,
        resend_after,
    } = send(&gateway, "alice", Channel::Sms).await
    else {
        panic!("not sent");
    };
    assert!(expires_in <= Duration::from_secs(30) && expires_in > Duration::from_secs(25));
    assert_eq!(resend_after, Duration::from_secs(2));
    let text = inbox
        .next(&alice_number, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(text.channel, Channel::Sms);
    let code = text.code().unwrap();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    let delivered = status_until(&gateway, code_id, |d| *d == DeliveryState::Delivered).await;
    assert_eq!(
        delivered,
        Reply::CodeStatus {
            channel: Channel::Sms,
            sends: 1,
            delivery: DeliveryState::Delivered
        }
    );

    // A new SMS only after the resend interval...
    let wait = retry_after(&send(&gateway, "alice", Channel::Sms).await);
    assert!(
        wait > Duration::from_secs(1) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );
    // ... but the voice call is the fallback and does not wait, once.
    let Reply::CodeSent { code: voice_id, .. } = send(&gateway, "alice", Channel::Voice).await
    else {
        panic!("voice refused");
    };
    assert_eq!(
        voice_id, code_id,
        "the voice call re-delivers the live code"
    );
    let call = inbox
        .next(&alice_number, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(call.channel, Channel::Voice);
    assert_eq!(call.code().unwrap(), code);
    retry_after(&send(&gateway, "alice", Channel::Voice).await);
    // After the interval, a resend is the same code again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let Reply::CodeSent { code: resent, .. } = send(&gateway, "alice", Channel::Sms).await else {
        panic!("resend refused");
    };
    assert_eq!(resent, code_id);
    let resent = inbox
        .next(&alice_number, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(resent.code().unwrap(), code);
    let status = status_until(&gateway, code_id, |d| *d == DeliveryState::Delivered).await;
    assert!(
        matches!(status, Reply::CodeStatus { sends: 3, .. }),
        "{status:?}"
    );

    // A wrong code costs a check; the right one is accepted once.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        verify_code(&gateway, "alice", wrong).await,
        Reply::Verdict(Verdict::Rejected { attempts_left: 2 })
    );
    assert_eq!(
        verify_code(&gateway, "alice", &code).await,
        Reply::Verdict(Verdict::Accepted {
            user: user("alice"),
            device: alice_phone,
            kind: DeviceKind::Sms
        })
    );
    assert_eq!(
        verify_code(&gateway, "alice", &code).await,
        Reply::Verdict(Verdict::UnknownChallenge),
        "a code is accepted once only"
    );

    // Wrong entries are bounded: three, then the code is used up.
    let Reply::CodeSent { code: second, .. } = send(&gateway, "alice", Channel::Sms).await else {
        panic!("a new code after the last was used");
    };
    assert_ne!(second, code_id);
    let code = inbox
        .next(&alice_number, Duration::from_secs(5))
        .await
        .unwrap()
        .code()
        .unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in [2, 1] {
        assert_eq!(
            verify_code(&gateway, "alice", wrong).await,
            Reply::Verdict(Verdict::Rejected {
                attempts_left: left
            })
        );
    }
    // The third wrong entry uses the code up, and (three failures in a
    // row here) locks the device for a second.
    assert!(matches!(
        verify_code(&gateway, "alice", wrong).await,
        Reply::Verdict(Verdict::LockedOut { .. })
    ));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        verify_code(&gateway, "alice", &code).await,
        Reply::Verdict(Verdict::UnknownChallenge),
        "a used-up code stays used up"
    );
}

#[tokio::test]
async fn sends_per_code_and_per_number_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[sms]\nresend-interval = \"200ms\"\nmax-sends = 3\nsends-per-number-per-hour = 5\n\
        [challenges]\nper-user-per-minute = 1000\n";
    let daemon = Daemon::start(&dir.path().join("data"), "", config);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    // Two users share one number (a family phone).
    enroll_phone(&admin, "carol", "+44 7700900123").await;
    enroll_phone(&admin, "dan", "+44 7700900123").await;
    let inbox = Arc::new(Inbox::default());
    let _bridge = bridge(&daemon, carrier::Behaviour::Deliver, &inbox).await;

    for _ in 0..3 {
        let reply = send(&gateway, "carol", Channel::Sms).await;
        assert!(matches!(reply, Reply::CodeSent { .. }), "{reply:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reply = send(&gateway, "carol", Channel::Sms).await;
    let Reply::Error {
        code: ErrorCode::RateLimited,
        message,
        retry_after,
    } = reply
    else {
        panic!("{reply:?}");
    };
    assert!(message.contains("as often as allowed"), "{message}");
    assert!(
        retry_after > Duration::from_secs(200),
        "until the code expires"
    );

    // The number has had 3 of its 5 sends an hour: dan gets two more.
    for _ in 0..2 {
        let reply = send(&gateway, "dan", Channel::Sms).await;
        assert!(matches!(reply, Reply::CodeSent { .. }), "{reply:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reply = send(&gateway, "dan", Channel::Sms).await;
    let Reply::Error {
        code: ErrorCode::RateLimited,
        message,
        ..
    } = reply
    else {
        panic!("{reply:?}");
    };
    assert!(message.contains("this number"), "{message}");
}

#[tokio::test]
async fn per_country_code_velocity_refuses_a_flood_to_one_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        "[sms]\nsends-per-prefix-per-minute = 3\n[challenges]\nper-user-per-minute = 1000\n";
    let daemon = Daemon::start(&dir.path().join("data"), "", config);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    for i in 0..4 {
        enroll_phone(&admin, &format!("premium{i}"), &format!("+882 1655500{i}")).await;
    }
    enroll_phone(&admin, "local", "+41 446681800").await;
    let inbox = Arc::new(Inbox::default());
    let _bridge = bridge(&daemon, carrier::Behaviour::Deliver, &inbox).await;
    for i in 0..3 {
        let reply = send(&gateway, &format!("premium{i}"), Channel::Sms).await;
        assert!(matches!(reply, Reply::CodeSent { .. }), "{reply:?}");
    }
    let reply = send(&gateway, "premium3", Channel::Sms).await;
    assert!(retry_after(&reply) > Duration::ZERO);
    assert!(matches!(&reply, Reply::Error { message, .. } if message.contains("country code")));
    // Other prefixes are not held back by it.
    let reply = send(&gateway, "local", Channel::Sms).await;
    assert!(matches!(reply, Reply::CodeSent { .. }), "{reply:?}");
}

#[tokio::test]
async fn unacknowledged_and_failed_messages_fail_over_to_another_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", CONFIG);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let erin = number("+33 612345678");
    enroll_phone(&admin, "erin", "+33 612345678").await;
    enroll_phone(&admin, "frank", "+33 612345679").await;
    let inbox = Arc::new(Inbox::default());
    // The first bridge takes messages and never answers; it is the first
    // choice while both are idle.
    let hanging = bridge(&daemon, carrier::Behaviour::Silent, &inbox).await;
    let working = bridge(&daemon, carrier::Behaviour::Deliver, &inbox).await;

    let started = Instant::now();
    let Reply::CodeSent { code, .. } = send(&gateway, "erin", Channel::Sms).await else {
        panic!("not sent");
    };
    let text = inbox
        .next(&erin, Duration::from_secs(5))
        .await
        .expect("failed over");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "after the ack timeout"
    );
    assert!(text.code().is_some());
    assert_eq!((hanging.handed(), working.handed()), (1, 1));
    status_until(&gateway, code, |d| *d == DeliveryState::Delivered).await;
    assert_eq!(
        daemon.series("sls_sms_failovers_total{cause=\"timeout\"}"),
        1
    );
    assert_eq!(
        daemon.series("sls_sms_deliveries_total{result=\"delivered\"}"),
        1
    );

    // A bridge that reports a failure hands the message on at once; when
    // no bridge is left to try, the status says why.
    hanging.set_behaviour(carrier::Behaviour::Fail("no route to +33".into()));
    working.stop();
    // The stopped bridge may not be gone yet: its message would then fail
    // over to the failing one, so the outcome is the same.
    let reply = send(&gateway, "frank", Channel::Sms).await;
    let Reply::CodeSent { code, .. } = reply else {
        panic!("{reply:?}");
    };
    let failed = status_until(&gateway, code, |d| {
        matches!(d, DeliveryState::Failed { .. })
    })
    .await;
    assert!(
        matches!(&failed, Reply::CodeStatus { delivery: DeliveryState::Failed { reason }, .. }
            if reason.contains("no route") || reason.contains("disconnected") || reason.contains("in time")),
        "{failed:?}"
    );
    assert_eq!(
        daemon.series("sls_sms_deliveries_total{result=\"failed\"}"),
        1
    );

    // With no bridge at all, SendCode says so.
    hanging.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = send(&gateway, "erin", Channel::Voice).await;
        if error_code(&reply) == Some(ErrorCode::DeliveryUnavailable) {
            break;
        }
        assert!(Instant::now() < deadline, "still {reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn push(gateway: &Client, name: &str, device: DeviceId) -> Reply {
    let operation = Operation::Push {
        user: user(name),
        device,
    };
    gateway.call(operation).await.unwrap()
}

/// Push, show the number to the emulated user, and wait for the verdict.
async fn push_and_wait(
    gateway: &Client,
    matcher: &Matcher,
    name: &str,
    device: DeviceId,
) -> Verdict {
    let reply = push(gateway, name, device).await;
    let Reply::PushSent {
        push: id,
        match_number,
        expires_in,
    } = reply
    else {
        panic!("push refused: {reply:?}");
    };
    assert!((10..100).contains(&match_number));
    assert_eq!(expires_in, Duration::from_secs(3));
    matcher.shown(id, match_number);
    match gateway
        .call(Operation::AwaitPush { push: id })
        .await
        .unwrap()
    {
        Reply::Verdict(verdict) => verdict,
        other => panic!("await: {other:?}"),
    }
}

over_both!(push_approval_with_number_matching_and_every_refusal);
async fn push_approval_with_number_matching_and_every_refusal(transport: Transport) {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", CONFIG).over(transport);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let (gina, gina_key) = enroll_ib_key(&admin, "gina", 1).await;
    let (hugo, hugo_key) = enroll_ib_key(&admin, "hugo", 2).await;

    // No phone connected: the login falls back at once.
    let started = Instant::now();
    let reply = push(&gateway, "gina", gina).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::PhoneUnreachable));
    assert!(started.elapsed() < Duration::from_secs(1));

    let matcher = Arc::new(Matcher::default());
    let app = PhoneApp::connect(daemon.client(Role::Phone).await, Arc::clone(&matcher))
        .await
        .unwrap();
    // A proof signed by another key is refused.
    let impostor = PushSigner::from_seed([9; 32]);
    let refused = app
        .subscribe_proving(&[(gina, &impostor, Arc::clone(&gina_key))])
        .await
        .unwrap();
    assert_eq!(error_code(&refused[0]), Some(ErrorCode::Forbidden));
    // One app, two users.
    let replies = app
        .subscribe(&[(gina, Arc::clone(&gina_key)), (hugo, Arc::clone(&hugo_key))])
        .await
        .unwrap();
    assert_eq!(replies, vec![Reply::Subscribed, Reply::Subscribed]);

    let accepted = |name: &str, device| Verdict::Accepted {
        user: user(name),
        device,
        kind: DeviceKind::IbKey,
    };
    assert_eq!(
        push_and_wait(&gateway, &matcher, "gina", gina).await,
        accepted("gina", gina)
    );
    assert_eq!(
        push_and_wait(&gateway, &matcher, "hugo", hugo).await,
        accepted("hugo", hugo)
    );
    // Each answer's time is on the dashboard's histogram.
    assert_eq!(daemon.series("sls_push_answer_seconds_count"), 2);
    // "Not me", a wrong number and a bad proof each count toward the
    // lockout (three failures here); denials are counted in a metric.
    app.set_behaviour(gina, phone::Behaviour::Deny);
    assert_eq!(
        push_and_wait(&gateway, &matcher, "gina", gina).await,
        Verdict::Denied
    );
    // (A brief blocking read: the daemon is another process.)
    let metrics = daemon.metrics_text();
    assert!(
        metrics.lines().any(|l| l == "sls_push_denied_total 1"),
        "{metrics}"
    );
    app.set_behaviour(gina, phone::Behaviour::WrongNumber);
    assert_eq!(
        push_and_wait(&gateway, &matcher, "gina", gina).await,
        Verdict::Rejected { attempts_left: 0 }
    );
    app.set_behaviour(gina, phone::Behaviour::BadProof);
    assert!(matches!(
        push_and_wait(&gateway, &matcher, "gina", gina).await,
        Verdict::LockedOut { .. }
    ));
    let locked = push(&gateway, "gina", gina).await;
    assert!(retry_after(&locked) > Duration::ZERO);
    assert!(matches!(&locked, Reply::Error { message, .. } if message.contains("locked out")));

    // Unanswered pushes expire, and a user may have only three pending.
    app.set_behaviour(hugo, phone::Behaviour::Ignore);
    let started = Instant::now();
    assert_eq!(
        push_and_wait(&gateway, &matcher, "hugo", hugo).await,
        Verdict::Expired
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    for _ in 0..3 {
        assert!(matches!(
            push(&gateway, "hugo", hugo).await,
            Reply::PushSent { .. }
        ));
    }
    let fatigue = push(&gateway, "hugo", hugo).await;
    assert!(
        matches!(&fatigue, Reply::Error { code: ErrorCode::RateLimited, message, .. }
        if message.contains("unanswered pushes"))
    );
    assert_eq!(
        gateway
            .call(Operation::AwaitPush { push: PushId(42) })
            .await
            .unwrap(),
        Reply::Verdict(Verdict::UnknownChallenge)
    );

    // Another phone connection cannot answer pushes for devices it did not
    // prove; approving with a valid signature is not enough.
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.set_behaviour(hugo, phone::Behaviour::Ignore);
    let Reply::PushSent {
        push: id,
        match_number,
        ..
    } = push(&gateway, "hugo", hugo).await
    else {
        panic!("push refused");
    };
    let other = daemon.client(Role::Phone).await;
    let approve = Operation::Approve {
        push: id,
        chosen: match_number,
        proof: hugo_key.sign(&slsd::otp::push::approve_message(id, hugo, match_number)),
    };
    assert_eq!(
        error_code(&other.call(approve).await.unwrap()),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        error_code(&other.call(Operation::Deny { push: id }).await.unwrap()),
        Some(ErrorCode::Forbidden)
    );

    // The phone goes away: pushes say so at once again.
    app.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = push(&gateway, "hugo", hugo).await;
        if error_code(&reply) == Some(ErrorCode::PhoneUnreachable) {
            break;
        }
        assert!(Instant::now() < deadline, "still {reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Push keys are for IB Key devices only, and a bound key is durable.
    let phone = enroll_phone(&admin, "gina", "+41 791234567").await;
    let bind = Operation::BindPushKey {
        device: phone,
        key: PushKey([1; 32]),
    };
    assert_eq!(
        error_code(&admin.call(bind).await.unwrap()),
        Some(ErrorCode::InvalidArgument)
    );
    let daemon = daemon.restart();
    let gateway = daemon.client(Role::Gateway).await;
    let app = PhoneApp::connect(daemon.client(Role::Phone).await, Arc::clone(&matcher))
        .await
        .unwrap();
    let replies = app
        .subscribe(&[(hugo, Arc::clone(&hugo_key))])
        .await
        .unwrap();
    assert_eq!(
        replies,
        vec![Reply::Subscribed],
        "the push key survived the restart"
    );
    assert_eq!(
        push_and_wait(&gateway, &matcher, "hugo", hugo).await,
        accepted("hugo", hugo)
    );
}

#[tokio::test]
async fn approvals_arriving_together_are_each_judged_on_their_own_signature() {
    // Approvals that arrive together are checked in batches on the
    // daemon's checking threads; a bad proof among them fails alone.
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", CONFIG);
    let admin = daemon.client(Role::Admin).await;
    let gateway = Arc::new(daemon.client(Role::Gateway).await);
    let matcher = Arc::new(Matcher::default());
    let app = PhoneApp::connect(daemon.client(Role::Phone).await, Arc::clone(&matcher))
        .await
        .unwrap();
    let mut devices = Vec::new();
    for n in 0..24u8 {
        let name = format!("user{n}");
        let (device, key) = enroll_ib_key(&admin, &name, n + 1).await;
        assert_eq!(
            app.subscribe(&[(device, key)]).await.unwrap(),
            vec![Reply::Subscribed]
        );
        // Every third phone signs badly.
        if n % 3 == 0 {
            app.set_behaviour(device, phone::Behaviour::BadProof);
        }
        devices.push((name, device, n % 3 != 0));
    }
    let logins: Vec<_> = devices
        .into_iter()
        .map(|(name, device, good)| {
            let (gateway, matcher) = (Arc::clone(&gateway), Arc::clone(&matcher));
            tokio::spawn(async move {
                let verdict = push_and_wait(&gateway, &matcher, &name, device).await;
                let expected = if good {
                    Verdict::Accepted {
                        user: user(&name),
                        device,
                        kind: DeviceKind::IbKey,
                    }
                } else {
                    // A push is answered once: no attempts are left.
                    Verdict::Rejected { attempts_left: 0 }
                };
                assert_eq!(verdict, expected, "{name}");
            })
        })
        .collect();
    for login in logins {
        login.await.unwrap();
    }
    // Every approval went through the checking threads (signatures checked
    // inline are not counted there).
    let metrics = tokio::task::spawn_blocking(move || daemon.metrics_text())
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "sls_push_signature_batch_size_sum 24"),
        "{metrics}"
    );
}

#[tokio::test]
async fn each_role_calls_only_its_own_operations() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", CONFIG);
    let gateway_ops = || {
        vec![
            Operation::Devices { user: user("x") },
            Operation::Challenge {
                user: user("x"),
                device: DeviceId(1),
            },
            Operation::SendCode {
                user: user("x"),
                channel: Channel::Sms,
            },
            Operation::VerifyCode {
                user: user("x"),
                code: Answer::new("123456"),
            },
            Operation::Push {
                user: user("x"),
                device: DeviceId(1),
            },
        ]
    };
    let admin_ops = || {
        vec![
            Operation::Stats,
            Operation::EnrollPhone {
                user: user("x"),
                number: number("+41 446681800"),
                label: String::new(),
            },
            Operation::BindPushKey {
                device: DeviceId(1),
                key: PushKey([0; 32]),
            },
        ]
    };
    let carrier_ops = || {
        vec![
            Operation::CarrierSubscribe,
            Operation::Ack {
                message: slsd::identity::MessageId(1),
                report: slsd::wire::DeliveryReport::Delivered,
            },
        ]
    };
    let phone_ops = || {
        vec![
            Operation::PhoneSubscribe {
                device: DeviceId(1),
                proof: Signature([0; 64]),
            },
            Operation::Deny { push: PushId(1) },
        ]
    };
    for role in Role::ALL {
        let client = daemon.client(role).await;
        let mut forbidden = Vec::new();
        for (owner, operations) in [
            (Role::Gateway, gateway_ops()),
            (Role::Admin, admin_ops()),
            (Role::Carrier, carrier_ops()),
            (Role::Phone, phone_ops()),
        ] {
            if owner != role {
                forbidden.extend(operations);
            }
        }
        for operation in forbidden {
            let name = operation.name();
            let reply = client.call(operation).await.unwrap();
            assert_eq!(
                error_code(&reply),
                Some(ErrorCode::Forbidden),
                "{} calling {name}: {reply:?}",
                role.as_str()
            );
        }
    }
}

#[tokio::test]
async fn a_restart_makes_every_live_code_worthless() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", CONFIG);
    let admin = daemon.client(Role::Admin).await;
    let ivy = number("+49 15112345678");
    let device = enroll_phone(&admin, "ivy", "+49 15112345678").await;
    let inbox = Arc::new(Inbox::default());
    let bridge_before = bridge(&daemon, carrier::Behaviour::Deliver, &inbox).await;
    let gateway = daemon.client(Role::Gateway).await;
    assert!(matches!(
        send(&gateway, "ivy", Channel::Sms).await,
        Reply::CodeSent { .. }
    ));
    let code = inbox
        .next(&ivy, Duration::from_secs(5))
        .await
        .unwrap()
        .code()
        .unwrap();
    bridge_before.stop();

    // Codes are ephemeral: after a crash the old one is unknown, never
    // accepted; the number (durable) still works for a new code.
    let daemon = daemon.crash_and_restart();
    let gateway = daemon.client(Role::Gateway).await;
    assert_eq!(
        verify_code(&gateway, "ivy", &code).await,
        Reply::Verdict(Verdict::UnknownChallenge)
    );
    let _bridge = bridge(&daemon, carrier::Behaviour::Deliver, &inbox).await;
    assert!(matches!(
        send(&gateway, "ivy", Channel::Sms).await,
        Reply::CodeSent { .. }
    ));
    let fresh = inbox
        .next(&ivy, Duration::from_secs(5))
        .await
        .unwrap()
        .code()
        .unwrap();
    assert_eq!(
        verify_code(&gateway, "ivy", &fresh).await,
        Reply::Verdict(Verdict::Accepted {
            user: user("ivy"),
            device,
            kind: DeviceKind::Sms
        })
    );
}

#[tokio::test]
async fn bad_subscription_proofs_are_throttled_and_do_not_tell_which_devices_exist() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "failed-proofs-per-connection-per-minute = 5",
        CONFIG,
    );
    let admin = daemon.client(Role::Admin).await;
    let (ib_key, key) = enroll_ib_key(&admin, "ivy", 4).await;
    let card = match admin
        .call(Operation::Enroll(EnrollRequest {
            user: user("ivy"),
            kind: DeviceKind::Scc,
            secret: None,
            pin: None,
            label: "card".into(),
        }))
        .await
        .unwrap()
    {
        Reply::Enrolled { device, .. } => device,
        other => panic!("{other:?}"),
    };
    let impostor = Arc::new(PushSigner::from_seed([9; 32]));
    let app = PhoneApp::connect(
        daemon.client(Role::Phone).await,
        Arc::new(Matcher::default()),
    )
    .await
    .unwrap();
    // An IB Key with someone else's proof, a code card, and no device at
    // all: one answer, word for word.
    let replies = app
        .subscribe(&[
            (ib_key, Arc::clone(&impostor)),
            (card, Arc::clone(&impostor)),
            (DeviceId(999_999), Arc::clone(&impostor)),
        ])
        .await
        .unwrap();
    assert_eq!(error_code(&replies[0]), Some(ErrorCode::Forbidden));
    assert!(
        replies.iter().all(|r| *r == replies[0]),
        "one refusal for all three: {replies:?}"
    );
    // Two more failures use up the connection's five; then even the right
    // proof is not checked on this connection.
    let more = app
        .subscribe(&[
            (DeviceId(1_000_000), Arc::clone(&impostor)),
            (DeviceId(1_000_001), Arc::clone(&impostor)),
            (ib_key, Arc::clone(&key)),
        ])
        .await
        .unwrap();
    assert_eq!(error_code(&more[0]), Some(ErrorCode::Forbidden));
    assert_eq!(error_code(&more[1]), Some(ErrorCode::Forbidden));
    assert_eq!(
        error_code(&more[2]),
        Some(ErrorCode::RateLimited),
        "{more:?}"
    );
    assert!(retry_after(&more[2]) > Duration::from_secs(1));
    // Another connection with the right proof is served.
    let other = PhoneApp::connect(
        daemon.client(Role::Phone).await,
        Arc::new(Matcher::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        other.subscribe(&[(ib_key, key)]).await.unwrap(),
        vec![Reply::Subscribed]
    );
}

over_both!(a_graceful_shutdown_answers_waiting_and_new_requests_then_closes_with_code_3);
async fn a_graceful_shutdown_answers_waiting_and_new_requests_then_closes_with_code_3(
    transport: Transport,
) {
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start(&dir.path().join("data"), "shutdown-grace = \"3s\"", CONFIG).over(transport);
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let (device, key) = enroll_ib_key(&admin, "kim", 5).await;
    let app = PhoneApp::connect(
        daemon.client(Role::Phone).await,
        Arc::new(Matcher::default()),
    )
    .await
    .unwrap();
    app.set_behaviour(device, phone::Behaviour::Ignore);
    assert_eq!(
        app.subscribe(&[(device, key)]).await.unwrap(),
        vec![Reply::Subscribed]
    );
    let Reply::PushSent { push, .. } = push(&gateway, "kim", device).await else {
        panic!("push")
    };
    // One stream waits on the push; another is idle, after one answer.
    let mut waiting = gateway.stream().await.unwrap();
    waiting.send(Operation::AwaitPush { push }).await.unwrap();
    let mut idle = gateway.stream().await.unwrap();
    assert!(matches!(
        idle.call(Operation::Devices { user: user("kim") }).await,
        Ok(Reply::Devices { .. })
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sigterm = Instant::now();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.pid().to_string())
        .status()
        .unwrap();
    // The waiting gateway hears ShuttingDown, at once.
    let heard = tokio::time::timeout(Duration::from_secs(2), waiting.receive())
        .await
        .expect("the waiting AwaitPush is answered")
        .unwrap();
    assert_eq!(error_code(&heard.reply), Some(ErrorCode::ShuttingDown));
    // A new request on the idle stream, and on a new stream, too.
    let again = idle
        .call(Operation::Devices { user: user("kim") })
        .await
        .unwrap();
    assert_eq!(error_code(&again), Some(ErrorCode::ShuttingDown));
    // A new stream: on the open QUIC connection it is answered the same;
    // over TCP a new stream is a new connection, which is refused.
    match transport {
        Transport::Quic => {
            let mut fresh = gateway.stream().await.unwrap();
            let fresh_reply = fresh
                .call(Operation::Devices { user: user("kim") })
                .await
                .unwrap();
            assert_eq!(error_code(&fresh_reply), Some(ErrorCode::ShuttingDown));
        }
        Transport::Tcp => assert!(gateway.stream().await.is_err(), "no new connections"),
    }
    // Nothing else is in flight: the connection closes with code 3.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while idle.receive().await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "the connection closed");
    assert!(
        sigterm.elapsed() < Duration::from_secs(4),
        "within the grace"
    );
    if transport == Transport::Quic {
        assert_eq!(gateway.close_reason().as_deref(), Some("shutting down"));
        assert_eq!(gateway.close_code(), Some(3));
    }
    assert_eq!(daemon.stop(), Some(0), "a clean exit");
}
