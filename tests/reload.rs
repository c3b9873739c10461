//! Reload without restart: on SIGHUP a real daemon takes its configuration
//! file's live values (the per-user and per-connection rates, the
//! challenge TTL, the lockout) from the next request on, and refuses a file
//! that changes what cannot change live (listen addresses, the store
//! backend) or does not parse, keeping the running configuration whole.
//! Each reload is logged to the security event stream.

mod support;

use std::time::Duration;

use sls_sim::client::Client;
use slsd::engine::Role;
use slsd::identity::{ChallengeId, DeviceId};
use slsd::wire::request::Answer;
use slsd::wire::{ErrorCode, Operation, Reply, Verdict};
use support::daemon::Daemon;
use support::load;

/// Blocking calls (metrics, the signal) off the runtime's workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

struct Logins {
    admin: Client,
    gateway: Client,
}

impl Logins {
    async fn new(daemon: &Daemon) -> Self {
        Self {
            admin: daemon.client(Role::Admin).await,
            gateway: daemon.client(Role::Gateway).await,
        }
    }

    async fn enroll(&self, name: &str) -> DeviceId {
        match self.admin.call(load::enroll(name)).await.unwrap() {
            Reply::Enrolled { device, .. } => device,
            other => panic!("enrol {name}: {other:?}"),
        }
    }

    /// A challenge for `name`'s card and its right answer, or the reply
    /// that refused it.
    async fn challenge(
        &self,
        name: &str,
        device: DeviceId,
    ) -> Result<(ChallengeId, String), Reply> {
        let reply = self
            .gateway
            .call(Operation::Challenge {
                user: load::user(name),
                device,
            })
            .await
            .unwrap();
        match reply {
            Reply::Challenge {
                challenge, text, ..
            } => Ok((challenge, load::answer(&text))),
            other => Err(other),
        }
    }

    async fn verify(&self, challenge: ChallengeId, answer: &str) -> Reply {
        self.gateway
            .call(Operation::Verify {
                challenge,
                response: Answer::new(answer),
            })
            .await
            .unwrap()
    }

    /// Wrong answers to one challenge for `name`: the verdict of each.
    async fn wrong_answers(&self, name: &str, device: DeviceId, count: usize) -> Vec<Reply> {
        let (challenge, right) = self.challenge(name, device).await.expect("a challenge");
        let wrong: String = right
            .chars()
            .map(|c| if c == '1' { '2' } else { '1' })
            .collect();
        let mut verdicts = Vec::new();
        for _ in 0..count {
            verdicts.push(self.verify(challenge, &wrong).await);
        }
        verdicts
    }

    /// Whether a right answer given `after` the challenge is accepted.
    async fn accepted_after(&self, name: &str, device: DeviceId, after: Duration) -> bool {
        let (challenge, right) = self.challenge(name, device).await.expect("a challenge");
        tokio::time::sleep(after).await;
        match self.verify(challenge, &right).await {
            Reply::Verdict(Verdict::Accepted { .. }) => true,
            Reply::Verdict(Verdict::Expired | Verdict::UnknownChallenge) => false,
            other => panic!("{other:?}"),
        }
    }
}

fn locked(verdict: &Reply) -> bool {
    matches!(verdict, Reply::Verdict(Verdict::LockedOut { .. }))
}

fn rate_limited(reply: &Reply) -> bool {
    matches!(
        reply,
        Reply::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    )
}

fn events_file(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let file = dir.join("events.jsonl");
    let section = format!("[events]\nsink = \"file:{}\"\n", file.display());
    (file, section)
}

/// The `config-reloaded` events written so far.
fn reloads(file: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["event"]["action"] == "config-reloaded")
        .collect()
}

const BEFORE: &str = "[challenges]\nper-user-per-minute = 1000\nttl = \"120s\"\n[lockout]\nfailures = 5\nfirst = \"10m\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_rates_ttls_and_the_lockout_from_the_next_request_on() {
    let dir = tempfile::tempdir().unwrap();
    let (events, sink) = events_file(dir.path());
    let daemon = Daemon::start(&dir.path().join("data"), "", &format!("{BEFORE}{sink}"));
    let logins = Logins::new(&daemon).await;
    let names = ["ann", "bob", "cat", "dan", "eve"];
    let mut devices = Vec::new();
    for name in names {
        devices.push(logins.enroll(name).await);
    }
    let [ann, bob, cat, dan, eve] = [devices[0], devices[1], devices[2], devices[3], devices[4]];

    // Before: two wrong answers do not lock a card, a user is issued
    // challenges in a row, a right answer 1.5 s late is taken, and a
    // connection's requests are not limited.
    let verdicts = logins.wrong_answers("ann", ann, 2).await;
    assert!(!verdicts.iter().any(locked), "{verdicts:?}");
    for _ in 0..3 {
        assert!(logins.challenge("cat", cat).await.is_ok());
    }
    assert!(
        logins
            .accepted_after("cat", cat, Duration::from_millis(1500))
            .await
    );
    for _ in 0..5 {
        assert!(!rate_limited(
            &logins.admin.call(Operation::Stats).await.unwrap()
        ));
    }

    let after = "[challenges]\nper-user-per-minute = 1\nttl = \"1s\"\n[lockout]\nfailures = 2\nfirst = \"10m\"\n";
    let result = blocking(|| daemon.reload("", &format!("{after}{sink}")));
    assert_eq!(result, "applied");

    // After, on the same connections: the second wrong answer locks.
    let verdicts = logins.wrong_answers("bob", bob, 2).await;
    assert!(locked(&verdicts[1]), "{verdicts:?}");
    // One challenge a minute for a user.
    assert!(logins.challenge("dan", dan).await.is_ok());
    let second = logins.challenge("dan", dan).await.unwrap_err();
    assert!(rate_limited(&second), "{second:?}");
    // A challenge lives 1 s.
    assert!(
        !logins
            .accepted_after("eve", eve, Duration::from_millis(1500))
            .await
    );

    // Two requests a second on a connection, the open ones included.
    let result = blocking(|| {
        daemon.reload(
            "requests-per-connection-per-second = 2",
            &format!("{after}{sink}"),
        )
    });
    assert_eq!(result, "applied");
    let mut limited = 0;
    for _ in 0..5 {
        limited += usize::from(rate_limited(
            &logins.admin.call(Operation::Stats).await.unwrap(),
        ));
    }
    assert!(limited >= 2, "{limited} of 5 limited");

    let reloaded = blocking(|| reloads(&events));
    assert_eq!(reloaded.len(), 2);
    for event in &reloaded {
        assert_eq!(event["event"]["outcome"], "success");
        assert_eq!(event["event"]["category"][0], "configuration");
    }
    let reason = |i: usize| reloaded[i]["event"]["reason"].as_str().unwrap().to_owned();
    assert_eq!(
        reason(0),
        "changed: challenges.per-user-per-minute, challenges.ttl, lockout.failures"
    );
    assert_eq!(
        reason(1),
        "changed: server.requests-per-connection-per-second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_what_cannot_change_live_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (events, sink) = events_file(dir.path());
    let daemon = Daemon::start(&dir.path().join("data"), "", &format!("{BEFORE}{sink}"));
    let logins = Logins::new(&daemon).await;
    let lower = format!("[lockout]\nfailures = 2\nfirst = \"10m\"\n{sink}");

    // Each beside a live change (the lockout), which must not apply either.
    let listen = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\ntcp-listen = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n{lower}"
    );
    assert_eq!(blocking(|| daemon.reload_file(&listen)), "refused");
    let backend =
        format!("[store]\nbackend = \"redis\"\nredis-urls = [\"redis://127.0.0.1:7000\"]\n{lower}");
    assert_eq!(blocking(|| daemon.reload("", &backend)), "refused");
    let broken = format!("[lockout]\nfailures = 0\n{sink}");
    assert_eq!(blocking(|| daemon.reload("", &broken)), "invalid");

    // Still serving where it was, on the lockout it started with.
    let fresh = Logins::new(&daemon).await;
    let ann = fresh.enroll("ann").await;
    let verdicts = fresh.wrong_answers("ann", ann, 2).await;
    assert!(!verdicts.iter().any(locked), "{verdicts:?}");
    drop(logins);

    let refused = blocking(|| reloads(&events));
    assert_eq!(refused.len(), 3);
    for (event, key) in refused
        .iter()
        .zip(["server.listen", "store.backend", "lockout.failures"])
    {
        assert_eq!(event["event"]["outcome"], "failure");
        let reason = event["event"]["reason"].as_str().unwrap();
        assert!(reason.contains(key), "{key} in {reason}");
        if key != "lockout.failures" {
            // Only what cannot change is named; nothing applied.
            assert!(!reason.contains("lockout"), "{reason}");
        }
    }

    // The same lockout alone applies: the refusals were what kept it.
    assert_eq!(blocking(|| daemon.reload("", &lower)), "applied");
    let bob = fresh.enroll("bob").await;
    let verdicts = fresh.wrong_answers("bob", bob, 2).await;
    assert!(locked(&verdicts[1]), "{verdicts:?}");
}
