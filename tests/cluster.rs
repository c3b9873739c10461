//! Two `slsd` nodes sharing one real Redis Cluster (three masters, three
//! replicas on loopback): any node verifies any user, a challenge is
//! accepted once however many nodes verify it, failures on both nodes add
//! up to one lockout, the per-user issuance limit holds across nodes, a
//! revoke on one node stops the other within the cache TTL, and a master
//! killed under load fails over without losing an acknowledged enrolment;
//! SMS codes and push approvals cross from node to node; the simulator's
//! flows and attackers pass against both nodes; withdrawals on both nodes
//! never together pass a limit, and the audit log is one for both; an
//! opt-out set on one node holds on the other; an idle node waits on the
//! store instead of asking it a hundred times a second; temporary codes,
//! replacement cards and shares work from either node; the registry comes
//! back from an RDB backup of the cluster with the deployment's key file;
//! a key rotated on one node reaches the other, and the old key is gone
//! from both once every record is re-sealed, logins passing throughout;
//! each node says which release it runs, and both stop once a node of a
//! newer release finished an upgrade; a rolling restart under logins fails
//! none that gateways take to the other node.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sls_sim::carrier::{self, Bridge, Inbox};
use sls_sim::client::{Client, ClientError};
use sls_sim::phone::{self, Matcher, PhoneApp};
use slsd::engine::Role;
use slsd::identity::{CodeId, DeviceId};
use slsd::otp::push::PushSigner;
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::wire::request::Answer;
use slsd::wire::{
    ChallengeText, DeliveryState, EnrollRequest, ErrorCode, Operation, Reply, Verdict,
};
use support::daemon::Daemon;
use support::deployment::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_verifies_any_user_and_a_challenge_is_accepted_once() {
    let deployment = deploy("[challenges]\nper-user-per-minute = 1000\n");
    let admin_a = deployment.a.client(Role::Admin).await;
    let gateway_a = Arc::new(deployment.a.client(Role::Gateway).await);
    let gateway_b = Arc::new(deployment.b.client(Role::Gateway).await);
    let device = enroll_dsc(&admin_a, "jdoe").await.unwrap();

    // Enrolled on A, listed and challenged on B, answered on A.
    let Reply::Devices { devices: list, .. } = gateway_b
        .call(Operation::Devices { user: user("jdoe") })
        .await
        .unwrap()
    else {
        panic!("devices")
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].device, device);
    let (id, right) = open(&gateway_b, "jdoe", device).await;
    assert!(matches!(
        verify(&gateway_a, id, &right).await,
        Verdict::Accepted { device: d, .. } if d == device
    ));
    assert_eq!(
        verify(&gateway_b, id, &right).await,
        Verdict::UnknownChallenge,
        "used up on every node"
    );

    // Each of 20 challenges is verified 4 times at once on each node:
    // accepted exactly once.
    for round in 0..20 {
        let issuer = if round % 2 == 0 {
            &gateway_a
        } else {
            &gateway_b
        };
        let (id, right) = open(issuer, "jdoe", device).await;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let gateway = Arc::clone(if i % 2 == 0 { &gateway_a } else { &gateway_b });
                let right = right.clone();
                tokio::spawn(async move { verify(&gateway, id, &right).await })
            })
            .collect();
        let mut accepted = 0;
        for task in tasks {
            match task.await.unwrap() {
                Verdict::Accepted { .. } => accepted += 1,
                Verdict::UnknownChallenge => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(accepted, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_the_store_are_bounded() {
    // One request at a time may wait on the store: of 64 sent at once on
    // one connection, the ones that find it taken are told `Busy` at once.
    let deployment = deploy_with("redis-in-flight = 1", "");
    let gateway = Arc::new(deployment.a.client(Role::Gateway).await);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let gateway = Arc::clone(&gateway);
            tokio::spawn(async move {
                gateway
                    .call(Operation::Devices { user: user("jdoe") })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let (mut answered, mut busy) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Reply::Devices { devices: list, .. } => {
                assert!(list.is_empty());
                answered += 1;
            }
            reply if error_code(&reply) == Some(ErrorCode::Busy) => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(answered > 0 && busy > 0, "answered {answered}, busy {busy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_on_both_nodes_add_up_to_one_lockout() {
    let deployment = deploy("[challenges]\nper-user-per-minute = 1000\n");
    let admin_b = deployment.b.client(Role::Admin).await;
    let gateway_a = deployment.a.client(Role::Gateway).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;
    let device = enroll_dsc(&admin_b, "jdoe").await.unwrap();

    // One wrong answer on A; asked again on B: the same question, and only
    // B's challenge may be answered now. One wrong answer there, and the
    // third (on A, to B's challenge) locks the device everywhere.
    let (id, right) = open(&gateway_a, "jdoe", device).await;
    assert_eq!(
        verify(&gateway_a, id, &wrong(&right)).await,
        Verdict::Rejected { attempts_left: 2 }
    );
    let (other, other_right) = open(&gateway_b, "jdoe", device).await;
    assert_eq!(other_right, right, "the unanswered question, asked again");
    assert_eq!(
        verify(&gateway_a, id, &right).await,
        Verdict::UnknownChallenge
    );
    assert_eq!(
        verify(&gateway_b, other, &wrong(&right)).await,
        Verdict::Rejected { attempts_left: 2 }
    );
    assert_eq!(
        verify(&gateway_a, other, &wrong(&right)).await,
        Verdict::LockedOut {
            retry_after: Duration::from_secs(1)
        }
    );
    // The right answer is locked out on both nodes, and both list the lock.
    let (third, third_right) = open(&gateway_b, "jdoe", device).await;
    assert!(matches!(
        verify(&gateway_a, third, &third_right).await,
        Verdict::LockedOut { .. }
    ));
    for gateway in [&gateway_a, &gateway_b] {
        let Reply::Devices { devices: list, .. } = gateway
            .call(Operation::Devices { user: user("jdoe") })
            .await
            .unwrap()
        else {
            panic!("devices")
        };
        assert!(list[0].locked_for > Duration::ZERO);
    }
    // An operator on B clears it; A accepts at once.
    assert_eq!(
        admin_b
            .call(Operation::Unlock {
                user: user("jdoe"),
                device: Some(device),
            })
            .await
            .unwrap(),
        Reply::Done
    );
    assert!(matches!(
        verify(&gateway_a, third, &third_right).await,
        Verdict::Accepted { .. }
    ));
}

/// Challenge shopping across nodes: what a device was asked is shared, so
/// asking on another node gives nothing new either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_device_was_asked_holds_on_every_node() {
    let deployment =
        deploy("[challenges]\nper-user-per-minute = 1000\nttl = \"1s\"\nper-device-per-day = 12\n");
    let admin = deployment.a.client(Role::Admin).await;
    let gateway_a = deployment.a.client(Role::Gateway).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;
    let device = enroll_dsc(&admin, "jdoe").await.unwrap();
    let mut asked = 0;

    // Answered right on B, the question is not asked again on A.
    let (first, right) = open(&gateway_a, "jdoe", device).await;
    let (second, again) = open(&gateway_b, "jdoe", device).await;
    asked += 2;
    assert_eq!(again, right);
    assert_eq!(
        verify(&gateway_b, first, &right).await,
        Verdict::UnknownChallenge
    );
    assert!(matches!(
        verify(&gateway_b, second, &right).await,
        Verdict::Accepted { .. }
    ));
    let (_, next) = open(&gateway_a, "jdoe", device).await;
    asked += 1;
    assert_ne!(next, right, "an answered question was asked again");

    // Three challenges left to expire (TTL 1 s), on either node, count as
    // the three wrong answers that lock the device.
    for gateway in [&gateway_b, &gateway_a, &gateway_b] {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        open(gateway, "jdoe", device).await;
        asked += 1;
    }
    let (id, right) = open(&gateway_a, "jdoe", device).await;
    asked += 1;
    assert!(
        matches!(
            verify(&gateway_a, id, &right).await,
            Verdict::LockedOut { .. }
        ),
        "three expired challenges lock the device"
    );

    // The daily cap counts the challenges of both nodes.
    while asked < 12 {
        assert!(matches!(
            challenge(&gateway_b, "jdoe", device).await,
            Reply::Challenge { .. }
        ));
        asked += 1;
    }
    for gateway in [&gateway_a, &gateway_b] {
        assert_eq!(
            error_code(&challenge(gateway, "jdoe", device).await),
            Some(ErrorCode::RateLimited)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuance_limit_holds_across_nodes_under_concurrent_requests() {
    let deployment = deploy("[challenges]\nper-user-per-minute = 10\n");
    let admin = deployment.a.client(Role::Admin).await;
    let gateway_a = Arc::new(deployment.a.client(Role::Gateway).await);
    let gateway_b = Arc::new(deployment.b.client(Role::Gateway).await);
    let device = enroll_dsc(&admin, "jdoe").await.unwrap();

    // 40 challenges at once, half on each node: 10 are issued. (A minute
    // window may turn over during the burst, so at most 20; and each node
    // takes a request's time before it waits for the CPU, so a request
    // stamped a moment before the first one counted can find the burst
    // full one short: GCRA measures from the times it is given. The limit
    // is what must hold: never more.)
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let gateway = Arc::clone(if i % 2 == 0 { &gateway_a } else { &gateway_b });
            tokio::spawn(async move { challenge(&gateway, "jdoe", device).await })
        })
        .collect();
    let mut issued = 0;
    let mut limited = 0;
    for task in tasks {
        match task.await.unwrap() {
            Reply::Challenge { .. } => issued += 1,
            Reply::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!((9..=20).contains(&issued), "issued {issued}");
    assert_eq!(issued + limited, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_on_one_node_stops_the_other_within_the_cache_ttl() {
    let deployment =
        deploy("[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n");
    let admin_a = deployment.a.client(Role::Admin).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;
    let device = enroll_dsc(&admin_a, "jdoe").await.unwrap();
    // B has the device in its cache.
    let (id, right) = open(&gateway_b, "jdoe", device).await;
    assert!(matches!(
        verify(&gateway_b, id, &right).await,
        Verdict::Accepted { .. }
    ));

    assert_eq!(
        admin_a.call(Operation::Revoke { device }).await.unwrap(),
        Reply::Done
    );
    let revoked = Instant::now();
    // Logins on B until it refuses; none succeeds later than the TTL.
    let stopped = loop {
        let elapsed = revoked.elapsed();
        assert!(elapsed < CACHE_TTL * 4, "B still accepts after {elapsed:?}");
        match challenge(&gateway_b, "jdoe", device).await {
            Reply::Challenge {
                challenge: id,
                text: ChallengeText::Question(question),
                ..
            } => match verify(&gateway_b, id, &answer(&question)).await {
                Verdict::Accepted { .. } => {
                    let at = revoked.elapsed();
                    assert!(
                        at < CACHE_TTL + Duration::from_millis(250),
                        "accepted {at:?} after the revoke"
                    );
                }
                Verdict::UnknownChallenge => break revoked.elapsed(),
                other => panic!("{other:?}"),
            },
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            } => break revoked.elapsed(),
            other => panic!("{other:?}"),
        }
    };
    assert!(
        stopped < CACHE_TTL + Duration::from_millis(250),
        "{stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_over_and_loses_no_enrolment() {
    let mut deployment =
        deploy("[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n");
    let admin_a = deployment.a.client(Role::Admin).await;
    let admin_b = deployment.b.client(Role::Admin).await;
    let gateway_a = Arc::new(deployment.a.client(Role::Gateway).await);
    let gateway_b = Arc::new(deployment.b.client(Role::Gateway).await);

    // 60 users enrolled on alternate nodes, each acknowledged (so written
    // to a master and one replica).
    let mut enrolled = Vec::new();
    for n in 0..60 {
        let admin = if n % 2 == 0 { &admin_a } else { &admin_b };
        let name = format!("user{n}");
        enrolled.push((name.clone(), enroll_dsc(admin, &name).await.unwrap()));
    }
    let enrolled = Arc::new(enrolled);

    // Logins on both nodes while a master dies.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = [&gateway_a, &gateway_b]
        .into_iter()
        .map(|gateway| {
            let (gateway, enrolled, stop) = (
                Arc::clone(gateway),
                Arc::clone(&enrolled),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let (mut accepted, mut unavailable) = (Vec::new(), 0u32);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (name, device) = &enrolled[n % enrolled.len()];
                    n += 1;
                    let reply = challenge(&gateway, name, *device).await;
                    let (id, question) = match reply {
                        Reply::Challenge {
                            challenge,
                            text: ChallengeText::Question(q),
                            ..
                        } => (challenge, q),
                        Reply::Error {
                            code: ErrorCode::StoreUnavailable,
                            ..
                        } => {
                            unavailable += 1;
                            continue;
                        }
                        other => panic!("{other:?}"),
                    };
                    match gateway
                        .call(Operation::Verify {
                            challenge: id,
                            response: Answer::new(&answer(&question)),
                        })
                        .await
                        .unwrap()
                    {
                        Reply::Verdict(Verdict::Accepted { .. }) => accepted.push(Instant::now()),
                        // The challenge lived on the master that died.
                        Reply::Verdict(Verdict::UnknownChallenge)
                        | Reply::Error {
                            code: ErrorCode::StoreUnavailable,
                            ..
                        } => unavailable += 1,
                        other => panic!("{other:?}"),
                    }
                }
                (accepted, unavailable)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let masters = deployment.cluster.masters().unwrap();
    deployment.cluster.kill(masters[0]);
    let killed = Instant::now();
    tokio::task::block_in_place(|| deployment.cluster.wait_until_healthy().unwrap());
    let healthy = Instant::now();
    // The promoted replica has none of its own until the dead master comes
    // back as one; until then durable writes to its slots are refused
    // (`StoreUnavailable`), not pretended.
    tokio::task::block_in_place(|| {
        deployment.cluster.restart(masters[0]).unwrap();
        deployment.cluster.wait_for_replicas(1).unwrap();
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        let (accepted, unavailable) = task.await.unwrap();
        let before = accepted.iter().filter(|t| **t < killed).count();
        let after = accepted.iter().filter(|t| **t > healthy).count();
        assert!(before > 0 && after >= 10, "before {before}, after {after}");
        eprintln!(
            "logins accepted before the kill {before}, after failover {after}; \
             refused meanwhile {unavailable}; failover took {:?}",
            healthy - killed
        );
    }

    // Every acknowledged enrolment is there, on both nodes, and works.
    for (name, device) in enrolled.iter() {
        for gateway in [&gateway_a, &gateway_b] {
            let Reply::Devices { devices: list, .. } = gateway
                .call(Operation::Devices { user: user(name) })
                .await
                .unwrap()
            else {
                panic!("devices of {name}")
            };
            assert_eq!(list.len(), 1, "{name}");
            assert_eq!(list[0].device, *device);
        }
        let (id, right) = open(&gateway_a, name, *device).await;
        assert!(matches!(
            verify(&gateway_b, id, &right).await,
            Verdict::Accepted { .. }
        ));
    }
}

/// Polls `CodeStatus` on `gateway` until the delivery is `want` (or 5 s).
async fn status_until(gateway: &Client, code: CodeId, want: DeliveryState) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = gateway.call(Operation::CodeStatus { code }).await.unwrap();
        if matches!(&reply, Reply::CodeStatus { delivery, .. } if *delivery == want) {
            return reply;
        }
        assert!(Instant::now() < deadline, "status stayed {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(gateway: &Client, name: &str, channel: Channel) -> Reply {
    gateway
        .call(Operation::SendCode {
            user: user(name),
            channel,
        })
        .await
        .unwrap()
}

async fn verify_code(gateway: &Client, name: &str, code: &str) -> Reply {
    gateway
        .call(Operation::VerifyCode {
            user: user(name),
            code: Answer::new(code),
        })
        .await
        .unwrap()
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_code_sent_by_one_node_goes_out_through_a_bridge_on_the_other() {
    let deployment = deploy("[sms]\nresend-interval = \"2s\"\n");
    let admin_a = deployment.a.client(Role::Admin).await;
    let admin_b = deployment.b.client(Role::Admin).await;
    let gateway_a = deployment.a.client(Role::Gateway).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;
    let alice_number = PhoneNumber::parse("+41 446681800").unwrap();
    let enroll = |number: &str| Operation::EnrollPhone {
        user: user("alice"),
        number: PhoneNumber::parse(number).unwrap(),
        label: String::new(),
    };
    let Reply::Enrolled { device: phone, .. } =
        admin_a.call(enroll("+41 446681800")).await.unwrap()
    else {
        panic!("phone enrolment")
    };
    // One number per user across the deployment.
    let again = admin_b.call(enroll("+41 446681801")).await.unwrap();
    assert_eq!(
        error_code(&again),
        Some(ErrorCode::InvalidArgument),
        "{again:?}"
    );

    // No bridge on any node: refused at once.
    let reply = send(&gateway_a, "alice", Channel::Sms).await;
    assert_eq!(error_code(&reply), Some(ErrorCode::DeliveryUnavailable));

    // The bridge is on B; A sends; the code arrives; B accepts it once.
    let inbox = Arc::new(Inbox::default());
    let bridge = Bridge::start(
        deployment.b.client(Role::Carrier).await,
        carrier::Behaviour::Deliver,
        Arc::clone(&inbox),
    )
    .await
    .unwrap();
    let sent = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // B says it has a bridge within its first relay rounds.
            match send(&gateway_a, "alice", Channel::Sms).await {
                Reply::CodeSent { code, .. } => break code,
                reply if error_code(&reply) == Some(ErrorCode::DeliveryUnavailable) => {
                    assert!(Instant::now() < deadline, "B's bridge never counted");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("{other:?}"),
            }
        }
    };
    let text = inbox
        .next(&alice_number, Duration::from_secs(5))
        .await
        .expect("the SMS arrives");
    let code = text.code().unwrap();
    // Both nodes see it delivered.
    status_until(&gateway_b, sent, DeliveryState::Delivered).await;
    assert_eq!(
        status_until(&gateway_a, sent, DeliveryState::Delivered).await,
        Reply::CodeStatus {
            channel: Channel::Sms,
            sends: 1,
            delivery: DeliveryState::Delivered,
        }
    );
    // The resend interval holds on the other node; the voice call goes out
    // at once with the same code.
    let reply = send(&gateway_b, "alice", Channel::Sms).await;
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::RateLimited),
        "{reply:?}"
    );
    let Reply::CodeSent { code: voice, .. } = send(&gateway_b, "alice", Channel::Voice).await
    else {
        panic!("voice refused")
    };
    assert_eq!(voice, sent);
    let call = inbox
        .next(&alice_number, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(call.channel, Channel::Voice);
    assert_eq!(call.code().unwrap(), code);

    // A wrong code on A costs a check on B's view too; the right code is
    // accepted once, whichever node gets it first.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        verify_code(&gateway_a, "alice", wrong).await,
        Reply::Verdict(Verdict::Rejected { attempts_left: 2 })
    );
    let (on_a, on_b) = tokio::join!(
        verify_code(&gateway_a, "alice", &code),
        verify_code(&gateway_b, "alice", &code)
    );
    let accepted = [&on_a, &on_b]
        .iter()
        .filter(
            |r| matches!(r, Reply::Verdict(Verdict::Accepted { device, .. }) if *device == phone),
        )
        .count();
    assert_eq!(accepted, 1, "{on_a:?} {on_b:?}");
    assert_eq!(
        verify_code(&gateway_b, "alice", &code).await,
        Reply::Verdict(Verdict::UnknownChallenge)
    );

    // The bridge leaves: the next send is refused within the claim's life.
    bridge.stop();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = send(&gateway_a, "alice", Channel::Sms).await;
        if error_code(&reply) == Some(ErrorCode::DeliveryUnavailable) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still sending without a bridge: {reply:?}"
        );
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
    let Reply::Enrolled { device, .. } = admin.call(Operation::Enroll(request)).await.unwrap()
    else {
        panic!("enrol")
    };
    let signer = Arc::new(PushSigner::from_seed([seed; 32]));
    let bind = Operation::BindPushKey {
        device,
        key: signer.public(),
    };
    assert_eq!(admin.call(bind).await.unwrap(), Reply::Done);
    (device, signer)
}

async fn ask_push(gateway: &Client, name: &str, device: DeviceId) -> Result<Reply, ClientError> {
    gateway
        .call(Operation::Push {
            user: user(name),
            device,
        })
        .await
}

/// Pushes on `asker`, shows the number to the phone's person, and waits
/// for the verdict on `waiter`.
async fn push_and_wait(
    asker: &Client,
    waiter: &Client,
    matcher: &Matcher,
    name: &str,
    device: DeviceId,
) -> Verdict {
    let reply = ask_push(asker, name, device).await.unwrap();
    let Reply::PushSent {
        push, match_number, ..
    } = reply
    else {
        panic!("push refused: {reply:?}")
    };
    matcher.shown(push, match_number);
    match waiter.call(Operation::AwaitPush { push }).await.unwrap() {
        Reply::Verdict(verdict) => verdict,
        other => panic!("await: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_asked_on_one_node_is_approved_by_a_phone_on_the_other() {
    let deployment = deploy(
        "[challenges]\nper-user-per-minute = 1000\n[push]\nttl = \"3s\"\npending-per-user = 2\n",
    );
    let admin = deployment.a.client(Role::Admin).await;
    let gateway_a = deployment.a.client(Role::Gateway).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;
    let (gina, gina_key) = enroll_ib_key(&admin, "gina", 1).await;
    let push = |gateway| ask_push(gateway, "gina", gina);

    // No phone on any node: the login falls back at once, on either node.
    for gateway in [&gateway_a, &gateway_b] {
        let reply = push(gateway).await.unwrap();
        assert_eq!(error_code(&reply), Some(ErrorCode::PhoneUnreachable));
    }

    // The phone is on B. A asks; the phone approves on B; A's gateway
    // waiting on A hears it, and so does one waiting on B.
    let matcher = Arc::new(Matcher::default());
    let app = PhoneApp::connect(deployment.b.client(Role::Phone).await, Arc::clone(&matcher))
        .await
        .unwrap();
    let replies = app
        .subscribe(&[(gina, Arc::clone(&gina_key))])
        .await
        .unwrap();
    assert_eq!(replies, vec![Reply::Subscribed]);
    let accepted = Verdict::Accepted {
        user: user("gina"),
        device: gina,
        kind: DeviceKind::IbKey,
    };
    assert_eq!(
        push_and_wait(&gateway_a, &gateway_a, &matcher, "gina", gina).await,
        accepted
    );
    assert_eq!(
        push_and_wait(&gateway_a, &gateway_b, &matcher, "gina", gina).await,
        accepted
    );
    app.set_behaviour(gina, phone::Behaviour::Deny);
    assert_eq!(
        push_and_wait(&gateway_b, &gateway_a, &matcher, "gina", gina).await,
        Verdict::Denied
    );
    // "Not me" and a wrong number count toward the lockout: the third
    // failure (deploy's `lockout.failures`) locks the device.
    app.set_behaviour(gina, phone::Behaviour::WrongNumber);
    assert_eq!(
        push_and_wait(&gateway_a, &gateway_a, &matcher, "gina", gina).await,
        Verdict::Rejected { attempts_left: 0 }
    );
    assert!(matches!(
        push_and_wait(&gateway_b, &gateway_b, &matcher, "gina", gina).await,
        Verdict::LockedOut { .. }
    ));
    // An operator unlocks it for what follows.
    let unlock = Operation::Unlock {
        user: user("gina"),
        device: Some(gina),
    };
    assert_eq!(admin.call(unlock).await.unwrap(), Reply::Done);

    // A verdict is handed out once: the second waiter of an answered push
    // finds nothing.
    app.set_behaviour(gina, phone::Behaviour::Approve);
    let Reply::PushSent {
        push: id,
        match_number,
        ..
    } = push(&gateway_a).await.unwrap()
    else {
        panic!("push")
    };
    matcher.shown(id, match_number);
    let first = gateway_b
        .call(Operation::AwaitPush { push: id })
        .await
        .unwrap();
    assert_eq!(first, Reply::Verdict(accepted.clone()));
    let second = gateway_a
        .call(Operation::AwaitPush { push: id })
        .await
        .unwrap();
    assert_eq!(second, Reply::Verdict(Verdict::UnknownChallenge));

    // Unanswered pushes expire for a gateway waiting on the other node,
    // and count against the user on both nodes until then.
    app.set_behaviour(gina, phone::Behaviour::Ignore);
    let started = Instant::now();
    assert_eq!(
        push_and_wait(&gateway_a, &gateway_b, &matcher, "gina", gina).await,
        Verdict::Expired
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(matches!(
        push(&gateway_a).await.unwrap(),
        Reply::PushSent { .. }
    ));
    assert!(matches!(
        push(&gateway_b).await.unwrap(),
        Reply::PushSent { .. }
    ));
    let fatigue = push(&gateway_a).await.unwrap();
    assert!(
        matches!(&fatigue, Reply::Error { code: ErrorCode::RateLimited, message, .. }
            if message.contains("unanswered pushes")),
        "{fatigue:?}"
    );

    // Only the subscribed connection may answer.
    let other = deployment.a.client(Role::Phone).await;
    let Reply::PushSent { push: id, .. } = ({
        tokio::time::sleep(Duration::from_secs(3)).await;
        push(&gateway_a).await.unwrap()
    }) else {
        panic!("push")
    };
    let reply = other.call(Operation::Deny { push: id }).await.unwrap();
    assert_eq!(error_code(&reply), Some(ErrorCode::Forbidden), "{reply:?}");

    // The phone leaves: pushes are refused at once again.
    app.stop();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let reply = push(&gateway_a).await.unwrap();
        if error_code(&reply) == Some(ErrorCode::PhoneUnreachable) {
            break;
        }
        assert!(Instant::now() < deadline, "{reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn the_simulators_load_and_attackers_pass_against_two_nodes() {
    let deployment =
        deploy("[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n");
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.json");
    let report = dir.path().join("report.json");
    let nodes = format!("{},{}", deployment.a.quic, deployment.b.quic);
    let certs = deployment.a.data_dir.to_str().unwrap().to_owned();
    let created = support::sls_sim(&[
        "fleet",
        "create",
        "--users",
        "200",
        "--mix",
        "dscplus=40,ibkey=40,scc=20",
        "--out",
        fleet.to_str().unwrap(),
        "--addr",
        &nodes,
        "--data-dir",
        &certs,
    ]);
    succeeded(&created);
    // Two connections, one per node: each login is verified by the node
    // that did not issue its challenge. SMS and push logins go through
    // bridges and phone apps spread over both nodes.
    let run = support::sls_sim(&[
        "load",
        "--fleet",
        fleet.to_str().unwrap(),
        "--addr",
        &nodes,
        "--data-dir",
        &certs,
        "--connections",
        "2",
        "--rate",
        "300",
        "--duration",
        "4s",
        "--attackers",
        "2",
        "--mix",
        "login=60,sms=20,push=20",
        "--json",
        report.to_str().unwrap(),
        "--seed",
        "7",
    ]);
    succeeded(&run);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["invariant_violations"], serde_json::json!([]));
    assert_eq!(report["errors"], 0, "{report:#}");
    let logins = report["logins"].as_u64().unwrap();
    assert_eq!(report["verdicts"]["accepted"].as_u64().unwrap(), logins);
    assert!(
        (1000..=1201).contains(&logins),
        "{logins} logins of 1200 due"
    );
    assert!(
        report["victim_verdicts"]["locked_out"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "the attackers met lockouts: {report:#}"
    );
}

fn succeeded(output: &std::process::Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The deployment's audit log after entry `after`, as a node lists it.
async fn audit_log(admin: &Client, after: u64) -> Vec<slsd::wire::AuditRecord> {
    let listing = Operation::AuditLog { after, limit: 100 };
    match admin.call(listing).await.unwrap() {
        Reply::Audit(entries) => entries,
        other => panic!("audit log: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_on_both_nodes_never_together_pass_a_limit_and_are_audited_once() {
    // The DSC+ limited to 200,000 USD a day for this test.
    let deployment = deploy(
        "[challenges]\nper-user-per-minute = 1000\n\
         [devices.dsc-plus]\nwithdrawal-limit = { per-day = 200_000, per-five-business-days = 600_000 }\n",
    );
    let admin_b = deployment.b.client(Role::Admin).await;
    let admin = deployment.a.client(Role::Admin).await;
    let gateway_a = Arc::new(deployment.a.client(Role::Gateway).await);
    let gateway_b = Arc::new(deployment.b.client(Role::Gateway).await);
    // A device has one current challenge: one DSC+ (all with the same
    // key) per concurrent login.
    let mut devices = Vec::new();
    for _ in 0..16 {
        devices.push(enroll_dsc(&admin, "jdoe").await.unwrap());
    }
    let device = devices[0];

    // 16 withdrawals of 20,000 USD at once, half on each node (each
    // answering a challenge the other node issued): exactly 10 fit.
    let mut tasks = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let (issuer, checker) = if i % 2 == 0 {
            (&gateway_a, &gateway_b)
        } else {
            (&gateway_b, &gateway_a)
        };
        let (challenge, answer) = open(issuer, "jdoe", *device).await;
        let checker = Arc::clone(checker);
        tasks.push(tokio::spawn(async move {
            checker
                .call(Operation::AuthorizeWithdrawal {
                    user: user("jdoe"),
                    amount_cents: 2_000_000,
                    challenge,
                    response: Answer::new(&answer),
                })
                .await
                .unwrap()
        }));
    }
    let mut approved = 0;
    for task in tasks {
        match task.await.unwrap() {
            Reply::WithdrawalApproved { .. } => approved += 1,
            Reply::OverLimit {
                device_kind: DeviceKind::DscPlus,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(approved, 10);
    // Either node sees the same ledger: nothing left today.
    let (challenge, answer) = open(&gateway_b, "jdoe", device).await;
    let over = gateway_b
        .call(Operation::AuthorizeWithdrawal {
            user: user("jdoe"),
            amount_cents: 1,
            challenge,
            response: Answer::new(&answer),
        })
        .await
        .unwrap();
    assert!(
        matches!(
            over,
            Reply::OverLimit {
                remaining_today: Some(0),
                remaining_5d: Some(40_000_000),
                ..
            }
        ),
        "{over:?}"
    );
    // One audit log for the deployment, read from either node: the 16
    // enrolments and the ten withdrawals, numbered without gaps.
    for admin in [&admin, &admin_b] {
        let entries = audit_log(admin, 0).await;
        let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions[..16], ["enroll"; 16]);
        assert_eq!(
            actions
                .iter()
                .filter(|a| **a == "withdrawal-approved")
                .count(),
            10
        );
        assert_eq!(entries.len(), 26);
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=26).collect::<Vec<_>>());
        assert_eq!(audit_log(admin, 25).await, entries[25..].to_vec());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_on_one_node_holds_on_the_other_and_hong_kong_is_refused() {
    let deployment = deploy("");
    let admin_a = deployment.a.client(Role::Admin).await;
    let admin_b = deployment.b.client(Role::Admin).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;
    enroll_dsc(&admin_a, "jdoe").await.unwrap();
    let identity = |residence: &str| slsd::wire::Identification {
        residence: residence.into(),
        date_of_birth: "1980-04-02".into(),
        citizenship: "CH".into(),
        id_document: "P 1".into(),
    };
    let set = |name: &str, residence: &str| Operation::SetIdentity {
        user: user(name),
        identity: identity(residence),
    };
    let opt = |name: &str, opted_out| Operation::SetOptOut {
        user: user(name),
        opted_out,
    };
    let required = |reply: Reply| match reply {
        Reply::Devices { required, .. } => required,
        other => panic!("{other:?}"),
    };
    let devices = || Operation::Devices { user: user("jdoe") };

    assert_eq!(admin_a.call(set("jdoe", "CH")).await.unwrap(), Reply::Done);
    assert!(required(gateway_b.call(devices()).await.unwrap()));
    assert_eq!(admin_a.call(opt("jdoe", true)).await.unwrap(), Reply::Done);
    assert!(!required(gateway_b.call(devices()).await.unwrap()));
    assert_eq!(admin_b.call(opt("jdoe", false)).await.unwrap(), Reply::Done);
    assert!(required(gateway_b.call(devices()).await.unwrap()));

    // A Hong Kong resident, recorded on one node, is refused on the other.
    assert_eq!(admin_a.call(set("hk", "HK")).await.unwrap(), Reply::Done);
    let refused = admin_b.call(opt("hk", true)).await.unwrap();
    assert!(
        matches!(&refused, Reply::Refused { reason: slsd::wire::Refusal::OptOutForbidden, message } if message.contains("SFC")),
        "{refused:?}"
    );
    let entries = audit_log(&admin_b, 0).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "enroll",
            "set-identity",
            "opt-out",
            "opt-in",
            "set-identity"
        ]
    );
    assert!(entries.iter().all(|e| !e.detail.contains("P 1")));
}

/// The store round trips a node has made, from its metrics.
fn round_trips(daemon: &Daemon) -> u64 {
    tokio::task::block_in_place(|| daemon.metric_total("sls_store_round_trips_total"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_waits_on_the_store_instead_of_asking_it() {
    let deployment = deploy("");
    // A node waits in Redis for what other nodes hand it (push notices,
    // verdicts, carrier messages) and renews its presence once a second:
    // a few round trips a second, where asking every 10 ms made a hundred.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = round_trips(&deployment.b);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let idle = round_trips(&deployment.b) - before;
    assert!(idle <= 20, "{idle} store round trips in 4 idle seconds");
}

/// `ListDevices` of `name` as (device, status, owner).
async fn listed(
    admin: &Client,
    name: &str,
) -> Vec<(
    DeviceId,
    slsd::wire::DeviceStatus,
    Option<slsd::identity::Username>,
)> {
    let list = Operation::ListDevices {
        user: user(name),
        page: slsd::wire::request::Page::first(100),
    };
    match admin.call(list).await.unwrap() {
        Reply::Devices { devices, .. } => devices
            .into_iter()
            .map(|d| (d.device, d.status, d.owner))
            .collect(),
        other => panic!("list: {other:?}"),
    }
}

/// `Devices` of `name` (what a login may use) as (device, owner).
async fn usable(gateway: &Client, name: &str) -> Vec<(DeviceId, Option<slsd::identity::Username>)> {
    match gateway
        .call(Operation::Devices { user: user(name) })
        .await
        .unwrap()
    {
        Reply::Devices { devices, .. } => {
            devices.into_iter().map(|d| (d.device, d.owner)).collect()
        }
        other => panic!("devices: {other:?}"),
    }
}

fn not_found(reply: &Reply) -> bool {
    error_code(reply) == Some(ErrorCode::NotFound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_lifecycle_works_on_a_cluster_from_either_node() {
    use slsd::wire::DeviceStatus;
    let deployment =
        deploy("[challenges]\nper-user-per-minute = 1000\n[lifecycle]\ntemporary-code-uses = 2\n");
    let admin_a = deployment.a.client(Role::Admin).await;
    let admin_b = deployment.b.client(Role::Admin).await;
    let gateway_a = deployment.a.client(Role::Gateway).await;
    let gateway_b = deployment.b.client(Role::Gateway).await;

    // A temporary code issued on one node logs in on the other, its two
    // uses and no more.
    let issued = admin_a
        .call(Operation::IssueTemporaryCode { user: user("amy") })
        .await
        .unwrap();
    let Reply::TemporaryCode {
        device: code_device,
        code,
        uses: 2,
        ..
    } = issued
    else {
        panic!("{issued:?}")
    };
    for _ in 0..2 {
        let asked = challenge(&gateway_a, "amy", code_device).await;
        let Reply::Challenge {
            challenge,
            text: ChallengeText::EnterCode,
            ..
        } = asked
        else {
            panic!("{asked:?}")
        };
        let verdict = verify(&gateway_b, challenge, code.as_str()).await;
        assert!(
            matches!(
                verdict,
                Verdict::Accepted {
                    kind: DeviceKind::Temporary,
                    ..
                }
            ),
            "{verdict:?}"
        );
    }
    assert!(not_found(&challenge(&gateway_b, "amy", code_device).await));
    assert_eq!(
        listed(&admin_b, "amy").await,
        [(code_device, DeviceStatus::Expired, None)]
    );

    // A replacement card ordered on one node, shipped on the other, listed
    // as pending, and activated by its first right answer, which retires
    // the lost card.
    let lost = enroll_dsc(&admin_a, "bob").await.unwrap();
    let ordered = admin_b
        .call(Operation::OrderReplacement {
            lost,
            pin: Some(slsd::wire::request::Pin::new(PIN)),
            label: "new card".into(),
        })
        .await
        .unwrap();
    let Reply::Enrolled {
        device: card,
        secret: Some(secret),
    } = ordered
    else {
        panic!("{ordered:?}")
    };
    assert_eq!(
        listed(&admin_a, "bob").await,
        [
            (lost, DeviceStatus::Active, None),
            (card, DeviceStatus::Ordered, None)
        ]
    );
    assert!(not_found(&challenge(&gateway_a, "bob", card).await));
    let shipped_at = slsd::clock::now();
    let ship = Operation::ShipReplacement {
        device: card,
        shipped_at,
    };
    assert_eq!(admin_a.call(ship).await.unwrap(), Reply::Done);
    let pending = Operation::PendingActivations {
        page: slsd::wire::request::Page::first(10),
    };
    let Reply::PendingActivations(listing) = admin_b.call(pending.clone()).await.unwrap() else {
        panic!("pending activations")
    };
    assert_eq!(
        listing
            .iter()
            .map(|p| (p.device, p.replaces, p.shipped_at))
            .collect::<Vec<_>>(),
        [(card, lost, shipped_at)]
    );
    let new_card =
        sls_sim::token::DscPlus::new(&secret, &slsd::profile::DeviceProfiles::defaults().unwrap())
            .unwrap();
    let Reply::Challenge {
        challenge: asked,
        text: ChallengeText::Question(question),
        ..
    } = challenge(&gateway_b, "bob", card).await
    else {
        panic!("the shipped card is not asked")
    };
    let right = new_card.respond(PIN, &question).unwrap().to_string();
    let verdict = verify(&gateway_a, asked, &right).await;
    assert!(matches!(verdict, Verdict::Accepted { .. }), "{verdict:?}");
    assert_eq!(
        listed(&admin_b, "bob").await,
        [(card, DeviceStatus::Active, None)]
    );
    assert!(not_found(&challenge(&gateway_a, "bob", lost).await));
    assert_eq!(
        admin_a.call(pending).await.unwrap(),
        Reply::PendingActivations(Vec::new())
    );

    // A share asked for on one node, approved on the other: the requester
    // logs in with the owner's card on any node, their own suspended, until
    // it is cancelled.
    let owner_card = enroll_dsc(&admin_a, "carol").await.unwrap();
    let own_card = enroll_dsc(&admin_a, "dave").await.unwrap();
    for name in ["carol", "dave"] {
        let identity = slsd::wire::Identification {
            residence: "CH".into(),
            date_of_birth: "1980-04-02".into(),
            citizenship: "CH".into(),
            id_document: "P 1".into(),
        };
        let set = Operation::SetIdentity {
            user: user(name),
            identity,
        };
        assert_eq!(admin_b.call(set).await.unwrap(), Reply::Done);
    }
    let (proof, response) = open(&gateway_a, "carol", owner_card).await;
    let asked = admin_b
        .call(Operation::ShareDevice {
            requesting_user: user("dave"),
            owner_user: user("carol"),
            device: owner_card,
            challenge: proof,
            response: Answer::new(&response),
        })
        .await
        .unwrap();
    let Reply::Share {
        share,
        active: false,
    } = asked
    else {
        panic!("{asked:?}")
    };
    let shares = Operation::Shares {
        page: slsd::wire::request::Page::first(10),
    };
    let Reply::Shares(entries) = admin_a.call(shares.clone()).await.unwrap() else {
        panic!("shares")
    };
    assert_eq!(
        entries
            .iter()
            .map(|s| (s.share, s.device, s.active))
            .collect::<Vec<_>>(),
        [(share, owner_card, false)]
    );
    assert_eq!(usable(&gateway_b, "dave").await, [(own_card, None)]);
    let approve = Operation::DecideShare {
        share,
        approve: true,
    };
    assert_eq!(
        admin_a.call(approve).await.unwrap(),
        Reply::Share {
            share,
            active: true
        }
    );
    assert_eq!(
        usable(&gateway_b, "dave").await,
        [(owner_card, Some(user("carol")))]
    );
    assert_eq!(
        listed(&admin_a, "dave").await,
        [
            (owner_card, DeviceStatus::Active, Some(user("carol"))),
            (own_card, DeviceStatus::Suspended, None)
        ]
    );
    let (login, answer) = open(&gateway_a, "dave", owner_card).await;
    let verdict = verify(&gateway_b, login, &answer).await;
    assert!(
        matches!(&verdict, Verdict::Accepted { user: u, device, .. } if u == &user("dave") && *device == owner_card),
        "{verdict:?}"
    );
    assert!(not_found(&challenge(&gateway_b, "dave", own_card).await));
    assert_eq!(
        admin_b
            .call(Operation::CancelShare { share })
            .await
            .unwrap(),
        Reply::Done
    );
    assert_eq!(usable(&gateway_a, "dave").await, [(own_card, None)]);
    assert!(not_found(&challenge(&gateway_a, "dave", owner_card).await));
    assert_eq!(
        admin_b.call(shares).await.unwrap(),
        Reply::Shares(Vec::new())
    );

    // Every change in the one log, numbered without gaps, the temporary
    // code never in it.
    let entries = audit_log(&admin_a, 0).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "issue-temporary-code",
            "temporary-code-used",
            "temporary-code-used",
            "enroll",
            "enroll",
            "order-replacement",
            "ship-replacement",
            "replacement-activated",
            "enroll",
            "enroll",
            "set-identity",
            "set-identity",
            "share-pending",
            "share-approved",
            "share-cancelled",
        ]
    );
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
    assert!(entries.iter().all(|e| !e.detail.contains(code.as_str())));
}

/// A cluster lost and rebuilt from its RDB backup (`dump.rdb` and
/// `nodes.conf` of every node, README "Backup and restore") serves the
/// devices enrolled before the backup to nodes that hold the deployment's
/// key file, and has none enrolled after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_comes_back_from_an_rdb_backup_of_the_cluster() {
    let d = deploy("");
    let admin = d.a.client(Role::Admin).await;
    let mut kept = Vec::new();
    for n in 0..20 {
        let name = format!("kept-{n}");
        kept.push((name.clone(), enroll_dsc(&admin, &name).await.unwrap()));
    }
    let backup = tempfile::tempdir().unwrap();
    tokio::task::block_in_place(|| d.cluster.backup_rdb(backup.path())).unwrap();
    let lost = enroll_dsc(&admin, "after-the-backup").await.unwrap();
    assert_eq!(listed(&admin, "after-the-backup").await.len(), 1);
    drop(admin);

    let mut d = d;
    tokio::task::block_in_place(|| d.cluster.restore_rdb(backup.path())).unwrap();
    let d = tokio::task::block_in_place(|| d.restart_nodes());
    let admin = d.b.client(Role::Admin).await;
    let gateway = d.a.client(Role::Gateway).await;
    assert!(
        listed(&admin, "after-the-backup").await.is_empty(),
        "device {lost} was enrolled after the backup"
    );
    for (name, device) in &kept {
        let devices = listed(&admin, name).await;
        assert_eq!(devices.len(), 1, "{name} lost");
        assert_eq!(devices[0].0, *device);
        // Its sealed key opens under the key file and its records' tags
        // check: a login goes through.
        let (challenge, right) = open(&gateway, name, *device).await;
        assert!(matches!(
            verify(&gateway, challenge, &right).await,
            Verdict::Accepted { .. }
        ));
    }
}

/// Every key on the cluster's masters whose name holds `needle`.
fn keys_naming(cluster: &sls_sim::cluster::Cluster, needle: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for port in cluster.masters().unwrap() {
        let found = cluster
            .cli(port, &format!("--scan --pattern *{needle}*"))
            .unwrap();
        keys.extend(found.lines().filter(|l| !l.is_empty()).map(str::to_owned));
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_on_one_node_leaves_no_key_naming_the_user_and_a_pseudonymous_log() {
    let d = deploy("");
    let admin_a = d.a.client(Role::Admin).await;
    let erin = enroll_dsc(&admin_a, "erin").await.unwrap();
    let other = enroll_dsc(&admin_a, "frank").await.unwrap();
    let gateway = d.b.client(Role::Gateway).await;
    // A login on the other node leaves records of its own (the issuance
    // limiter, the question asked).
    let (challenge, right) = open(&gateway, "erin", erin).await;
    assert!(matches!(
        verify(&gateway, challenge, &right).await,
        Verdict::Accepted { .. }
    ));
    let named = tokio::task::block_in_place(|| keys_naming(&d.cluster, "erin"));
    assert!(!named.is_empty(), "the scan finds her keys");

    let admin_b = d.b.client(Role::Admin).await;
    let Reply::Erased {
        pseudonym,
        devices: 1,
        audit_entries: 1,
    } = admin_b
        .call(Operation::Erase {
            user: slsd::identity::Username::new("erin").unwrap(),
        })
        .await
        .unwrap()
    else {
        panic!("erase")
    };
    let named = tokio::task::block_in_place(|| keys_naming(&d.cluster, "erin"));
    assert_eq!(named, Vec::<String>::new());
    assert!(listed(&admin_a, "erin").await.is_empty());
    let log = audit_log(&admin_a, 0).await;
    assert!(
        log.iter()
            .all(|e| e.user.as_ref().map(|u| u.as_str()) != Some("erin"))
    );
    let theirs: Vec<&str> = log
        .iter()
        .filter(|e| e.user.as_ref() == Some(&pseudonym))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(theirs, ["enroll", "erase"]);
    // frank is untouched.
    assert_eq!(listed(&admin_a, "frank").await[0].0, other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_on_one_node_reaches_the_other_and_the_old_key_is_gone_from_both() {
    // Nodes read the deployment's keyring every 200 ms; the old key is
    // retired no sooner than the shortest confirm-code lifetime allowed.
    let d = deploy(
        "[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n\
         [keys]\npoll = \"200ms\"\n[lifecycle]\ntoken-ttl = \"30s\"\n[sms]\nttl = \"10s\"\nresend-interval = \"5s\"\n",
    );
    let old_key = std::fs::read(d.a.data_dir.join("secrets.key")).unwrap();
    let admin_a = d.a.client(Role::Admin).await;
    let admin_b = d.b.client(Role::Admin).await;
    let mut devices = Vec::new();
    for n in 0..40 {
        let name = format!("k{n}");
        devices.push((name.clone(), enroll_dsc(&admin_a, &name).await.unwrap()));
    }
    // Logins on node B all through the rotation; every one must pass.
    let gateway_b = d.b.client(Role::Gateway).await;
    let (k0, device) = devices[0].clone();
    let logins = tokio::spawn(async move {
        let (mut passed, mut failed) = (0u32, Vec::new());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(40) {
            let (id, right) = open(&gateway_b, &k0, device).await;
            match verify(&gateway_b, id, &right).await {
                Verdict::Accepted { .. } => passed += 1,
                other => failed.push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (passed, failed)
    });

    let rotated = admin_a.call(Operation::Keyring { rotate: true }).await;
    assert!(
        matches!(&rotated, Ok(Reply::Keyring { active: 1, retiring, .. }) if retiring == &[0]),
        "{rotated:?}"
    );
    // B learns the new key within a few polls, and seals with it.
    let learned = Instant::now();
    while support::daemon::keyring(&admin_b).await != (1, vec![0]) {
        assert!(
            learned.elapsed() < Duration::from_secs(5),
            "B never learned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = enroll_dsc(&admin_b, "late").await.unwrap();
    devices.push(("late".into(), late));

    // The pass ends, and both nodes drop key 0.
    let deadline = Instant::now() + Duration::from_secs(90);
    while support::daemon::keyring(&admin_a).await != (1, vec![])
        || support::daemon::keyring(&admin_b).await != (1, vec![])
    {
        assert!(Instant::now() < deadline, "the rotation never ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (passed, failed) = logins.await.unwrap();
    assert_eq!(
        failed,
        Vec::<String>::new(),
        "logins failed during the rotation"
    );
    assert!(passed > 10, "{passed} logins");
    let resealed = d.a.metric_total("sls_keys_resealed_total");
    // The 40 devices enrolled before and the SMS code key, at least.
    assert!(resealed >= 41, "{resealed} re-sealed");

    // Every device logs in on either node afterwards.
    for node in [&d.a, &d.b] {
        let gateway = node.client(Role::Gateway).await;
        for (name, device) in &devices {
            let (id, right) = open(&gateway, name, *device).await;
            assert!(
                matches!(verify(&gateway, id, &right).await, Verdict::Accepted { .. }),
                "{name}"
            );
        }
    }
    for node in [&d.a, &d.b] {
        let text = std::fs::read_to_string(node.data_dir.join("secrets.key")).unwrap();
        assert!(
            text.contains("key 1 active") && !text.contains("key 0"),
            "{text}"
        );
    }
    // A node that still has the old key file alone cannot join: nothing
    // in the store or the published keyring opens under it.
    let stale = d.a.data_dir.with_file_name("stale");
    share_identity(&d.a.data_dir, &stale);
    std::fs::write(stale.join("secrets.key"), &old_key).unwrap();
    let config = d.a.data_dir.with_extension("toml");
    let out = std::process::Command::new(support::binary("slsd"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&stale)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not in this node's keyring"), "{stderr}");
}

/// The deployment's store as a node of the next release opens it: the
/// deployment's configuration and key file, a release whose record format
/// is newer than this one's.
async fn next_release_store(d: &Deployment) -> slsd::store::cluster::ClusterStore {
    use slsd::store::cluster::redis::{Durability, RedisAccess, RedisStore};
    let text = std::fs::read_to_string(d.a.data_dir.with_extension("toml")).unwrap();
    let config = slsd::config::Config::from_toml(&text).unwrap();
    let access = RedisAccess::from_config(&config.store, None).unwrap();
    let durability = Durability {
        replicas: 0,
        timeout: Duration::from_secs(1),
    };
    let redis = RedisStore::connect(&config.store.redis_urls, durability, &access)
        .await
        .unwrap();
    let mut rng = rand::rand_core::UnwrapErr(rand::rngs::SysRng);
    let cipher = slsd::store::sealed::SecretCipher::load_or_create(
        &d.a.data_dir.join("secrets.key"),
        &mut rng,
    )
    .unwrap();
    let codec = slsd::store::records::DeviceCodec::new(cipher, config.devices.clone());
    slsd::store::cluster::ClusterStore::new(redis, codec, config.store.cache_ttl)
        .playing_release(slsd::store::cluster::FORMAT + 1)
}

/// Whether the process `pid` has ended (gone, or a zombie not yet reaped).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_say_their_release_and_stop_once_a_newer_release_finished_an_upgrade() {
    use slsd::store::cluster::FORMAT;
    let d = deploy("[keys]\npoll = \"200ms\"\n");
    let admin_a = d.a.client(Role::Admin).await;
    // Both nodes run this release: nothing under way, nothing to finish.
    let same = Reply::Upgrade {
        format: FORMAT,
        release: FORMAT,
        nodes: 2,
        behind: 0,
    };
    let asked = admin_a.call(Operation::Upgrade { finish: false }).await;
    assert_eq!(asked.unwrap(), same);
    let finished = admin_a.call(Operation::Upgrade { finish: true }).await;
    assert_eq!(finished.unwrap(), same);
    let shown = tokio::task::block_in_place(|| support::daemon::admin_json(&d.b, &["upgrade"]));
    assert_eq!(shown["nodes"], 2, "{shown}");
    assert_eq!(shown["records_format"], FORMAT, "{shown}");

    // A node of the next release reads the deployment's format, and
    // counts both nodes as behind it.
    let next = next_release_store(&d).await;
    assert_eq!(next.check_format().await.unwrap(), FORMAT);
    assert_eq!(next.format(), FORMAT);
    let now = slsd::clock::now();
    let state = next.upgrade_state(now).await.unwrap();
    assert_eq!((state.nodes, state.behind), (2, 2), "{state:?}");

    // It finishes the upgrade anyway (as a node of it that started while
    // they were down would): both nodes find the newer format at their
    // next poll and stop, failing.
    assert_eq!(next.raise_format(FORMAT).await.unwrap(), FORMAT + 1);
    let (a_pid, b_pid) = (d.a.pid(), d.b.pid());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(exited(a_pid) && exited(b_pid)) {
        assert!(
            Instant::now() < deadline,
            "the nodes of the older release kept serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Gone from the nodes alive (each withdrew its word as it stopped).
    let state = next.upgrade_state(slsd::clock::now()).await.unwrap();
    assert_eq!((state.format, state.nodes), (FORMAT + 1, 0), "{state:?}");
    // And one of this release cannot start on it.
    let out = std::process::Command::new(support::binary("slsd"))
        .args(["serve", "--config"])
        .arg(d.a.data_dir.with_extension("toml"))
        .arg("--data-dir")
        .arg(&d.a.data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("newer than this slsd reads"), "{stderr}");
}

/// One login of `name`'s DSC+ on `gateway`, answered right: the verify's
/// reply, or the challenge's when no question came; an error when the
/// connection is lost or silent for a second.
async fn log_in_dsc(gateway: &Client, name: &str, device: DeviceId) -> Result<Reply, ClientError> {
    let within = |call| async move {
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .unwrap_or(Err(ClientError::Closed))
    };
    let reply = within(gateway.call(Operation::Challenge {
        user: user(name),
        device,
    }))
    .await?;
    let Reply::Challenge {
        challenge,
        text: ChallengeText::Question(question),
        ..
    } = reply
    else {
        return Ok(reply);
    };
    within(gateway.call(Operation::Verify {
        challenge,
        response: Answer::new(&answer(&question)),
    }))
    .await
}

/// What one gateway saw through a rolling restart.
#[derive(Debug, Default)]
struct Rolled {
    /// Logins accepted before the first restart, between the two, after
    /// the second.
    accepted: [u32; 3],
    /// Logins the gateway took to the other node (told `ShuttingDown`,
    /// or its connection lost).
    moved: u32,
    /// Logins no node accepted.
    failed: u32,
}

/// A rolling restart as README's "Upgrades" has it, under logins: node A
/// is stopped (it drains) and started again, then node B. Two gateways log
/// in, each on its node until told `ShuttingDown` or cut off, then on the
/// other (as a gateway with two nodes configured does): no login fails,
/// and logins go on through both restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_logins_fails_none_that_gateways_take_to_the_other_node() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let mut deployment =
        deploy("[challenges]\nper-user-per-minute = 100000\nper-device-per-day = 100000000\n");
    let admin = deployment.a.client(Role::Admin).await;
    let mut users = Vec::new();
    for n in 0..20 {
        let name = format!("roll{n}");
        users.push((name.clone(), enroll_dsc(&admin, &name).await.unwrap()));
    }
    drop(admin);
    // Node B holds node A's certificates (`share_identity`).
    let tls = deployment.a.tls(Role::Gateway);
    let addrs = Arc::new(std::sync::Mutex::new([
        deployment.a.quic,
        deployment.b.quic,
    ]));
    let (phase, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let gateways: Vec<_> = (0..2)
        .map(|home: usize| {
            let users: Vec<(String, DeviceId)> =
                users.iter().skip(home).step_by(2).cloned().collect();
            let (addrs, phase, stop, tls) = (
                Arc::clone(&addrs),
                Arc::clone(&phase),
                Arc::clone(&stop),
                tls.clone(),
            );
            tokio::spawn(async move {
                let mut rolled = Rolled::default();
                let mut clients: [Option<Client>; 2] = [None, None];
                let mut node = home;
                let mut n = 0;
                while !stop.load(Relaxed) {
                    let (name, device) = &users[n % users.len()];
                    n += 1;
                    let mut accepted = false;
                    // Each node twice at most: one restarts at a time.
                    for _ in 0..4 {
                        if clients[node].is_none() {
                            let addr = addrs.lock().unwrap()[node];
                            let connect = Client::connect_with(addr, tls.clone());
                            clients[node] = tokio::time::timeout(Duration::from_secs(1), connect)
                                .await
                                .ok()
                                .and_then(Result::ok);
                        }
                        let reply = match &clients[node] {
                            Some(client) => log_in_dsc(client, name, *device).await,
                            None => Err(ClientError::Closed),
                        };
                        match reply {
                            Ok(Reply::Verdict(Verdict::Accepted { .. })) => {
                                rolled.accepted[phase.load(Relaxed)] += 1;
                                accepted = true;
                                break;
                            }
                            Ok(Reply::Error {
                                code: ErrorCode::ShuttingDown,
                                ..
                            })
                            | Err(_) => {
                                clients[node] = None;
                                node = 1 - node;
                                rolled.moved += 1;
                            }
                            Ok(other) => panic!("{name} on node {node}: {other:?}"),
                        }
                    }
                    if !accepted {
                        rolled.failed += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                rolled
            })
        })
        .collect();

    for node in [0, 1] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        deployment = tokio::task::block_in_place(|| deployment.restart_node(node));
        *addrs.lock().unwrap() = [deployment.a.quic, deployment.b.quic];
        phase.store(node + 1, Relaxed);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Relaxed);
    let mut moved = 0;
    for gateway in gateways {
        let rolled = gateway.await.unwrap();
        eprintln!("{rolled:?}");
        assert_eq!(rolled.failed, 0, "logins no node accepted: {rolled:?}");
        assert!(
            rolled.accepted.iter().all(|&n| n > 0),
            "logins stopped for a while: {rolled:?}"
        );
        moved += rolled.moved;
    }
    // Each restart cut both gateways' connections to the node (or told
    // them it was draining).
    assert!(
        moved >= 2,
        "no gateway was moved: the nodes did not restart"
    );
}
