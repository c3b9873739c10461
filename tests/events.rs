//! The security event stream of a real daemon: a lockout, a registry
//! change, a role refused and a certificate refused each come out as one
//! ECS JSON line, with no secret, code or PIN in any; a sink that fails
//! loses events (counted) and no request.

mod support;

use std::time::Duration;

use slsd::engine::Role;
use slsd::wire::request::Answer;
use slsd::wire::{ErrorCode, Operation, Reply, Verdict};
use support::daemon::Daemon;
use support::load;

fn events(file: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON object a line"))
        .collect()
}

fn with_action<'e>(events: &'e [serde_json::Value], action: &str) -> Vec<&'e serde_json::Value> {
    events
        .iter()
        .filter(|e| e["event"]["action"] == action)
        .collect()
}

/// Wrong answers on `name`'s only device until it locks; the answers given
/// and the right ones.
async fn lock(daemon: &Daemon, name: &str) -> Vec<String> {
    let admin = daemon.client(Role::Admin).await;
    let gateway = daemon.client(Role::Gateway).await;
    let device = load::listed(&admin, name).await[0].device;
    let mut given = Vec::new();
    loop {
        let Reply::Challenge {
            challenge, text, ..
        } = gateway
            .call(Operation::Challenge {
                user: load::user(name),
                device,
            })
            .await
            .unwrap()
        else {
            panic!("challenge")
        };
        // Wrong, but shaped like the card's answers.
        let right = load::answer(&text);
        let wrong: String = right
            .chars()
            .map(|c| if c == '1' { '2' } else { '1' })
            .collect();
        given.push(right);
        given.push(wrong.clone());
        let verdict = gateway
            .call(Operation::Verify {
                challenge,
                response: Answer::new(&wrong),
            })
            .await
            .unwrap();
        if matches!(verdict, Reply::Verdict(Verdict::LockedOut { .. })) {
            return given;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockouts_changes_and_refusals_reach_the_stream_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "",
        &format!(
            "{}[events]\nsink = \"file:{}\"\n",
            load::CONFIG,
            file.display()
        ),
    );
    let admin = daemon.client(Role::Admin).await;
    let Reply::Enrolled { device, .. } = admin.call(load::enroll("erin")).await.unwrap() else {
        panic!("enrol")
    };
    let answers = lock(&daemon, "erin").await;
    // A gateway asking for an operator's operation.
    let gateway = daemon.client(Role::Gateway).await;
    let refused = gateway.call(Operation::Stats).await.unwrap();
    assert!(matches!(
        refused,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    // A client certificate from another CA (the client trusts the server).
    let other = tempfile::tempdir().unwrap();
    let stranger = Daemon::start(&other.path().join("data"), "", "");
    let (cert, key) = stranger.cert(Role::Admin);
    let foreign = slsd::server::pki::client_tls(&daemon.ca(), &cert, &key).unwrap();
    // TLS 1.3: the server checks the client's certificate after the
    // client's side of the handshake is done, so the refusal may come with
    // the first request.
    if let Ok(client) = daemon.connect(foreign).await {
        assert!(client.call(Operation::Stats).await.is_err());
    }
    drop(stranger);
    // The stream is flushed when the daemon stops.
    assert_eq!(daemon.stop(), Some(0));

    let written = std::fs::read_to_string(&file).unwrap();
    let events = events(&file);
    for event in &events {
        assert_eq!(event["ecs"]["version"], "8.11.0");
        assert!(event["@timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(event["event"]["outcome"].is_string());
    }

    let enrolled = with_action(&events, "enroll");
    assert_eq!(enrolled.len(), 1, "{written}");
    assert_eq!(enrolled[0]["user"]["name"], "erin");
    assert_eq!(enrolled[0]["sls"]["device"]["id"], device.0);
    assert_eq!(enrolled[0]["sls"]["actor"], "admin");
    assert_eq!(enrolled[0]["event"]["category"][0], "iam");

    let locked = with_action(&events, "device-locked");
    assert_eq!(locked.len(), 1, "{written}");
    assert_eq!(locked[0]["user"]["name"], "erin");
    assert_eq!(locked[0]["sls"]["device"]["id"], device.0);
    assert_eq!(locked[0]["event"]["outcome"], "failure");

    let role = with_action(&events, "role-refused");
    assert_eq!(role.len(), 1, "{written}");
    assert_eq!(role[0]["sls"]["actor"], "gateway");
    assert!(
        role[0]["event"]["reason"]
            .as_str()
            .unwrap()
            .contains("stats needs the admin role")
    );

    let certificate = with_action(&events, "certificate-refused");
    assert!(!certificate.is_empty(), "{written}");
    assert_eq!(certificate[0]["source"]["ip"], "127.0.0.1");

    // No key, PIN or answer anywhere in the stream.
    let key = hex::encode(load::KEY);
    assert!(!written.contains(&key));
    assert!(!written.contains(load::PIN));
    for answer in &answers {
        assert!(
            !written.contains(answer.as_str()),
            "answer {answer} in the stream"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_loses_events_not_logins() {
    let dir = tempfile::tempdir().unwrap();
    // Every write to /dev/full fails (no space left on the device).
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "",
        &format!("{}[events]\nsink = \"file:/dev/full\"\n", load::CONFIG),
    );
    let admin = daemon.client(Role::Admin).await;
    for n in 0..20 {
        let reply = admin.call(load::enroll(&format!("u{n}"))).await.unwrap();
        assert!(matches!(reply, Reply::Enrolled { .. }), "{reply:?}");
    }
    lock(&daemon, "u0").await;
    let lost = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lost = tokio::task::block_in_place(|| {
                daemon.series("sls_events_dropped_total{reason=\"sink_failed\"}")
            });
            if lost >= 21 {
                return lost;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the lost events are counted");
    assert_eq!(lost, 21, "20 enrolments and a lockout");
}
