//! Someone who can write to the deployment's Redis, but has no node's key
//! file, edits records in place: they flip a user's opt-out flag, move
//! their own card to another user, clear a lockout by rewriting the
//! failure state, and put back an account record as it was before a
//! change. Every node refuses each forged record (an error, counted in
//! `sls_store_records_refused_total`) instead of believing it.
//!
//! The link is secured too: nodes reach a cluster that speaks only TLS,
//! as an ACL user, with the password from a file or the environment,
//! which nothing they write shows.
//!
//! What a MAC cannot stop — deleting a record, or putting back an old
//! record together with its old version — is ARCHITECTURE.md's threat
//! model, not this test's.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use redis::Commands;
use slsd::engine::Role;
use slsd::store::FailureState;
use slsd::wire::{Operation, Reply, Verdict};
use support::deployment::*;

/// The intruder's hands on the cluster: one master's connection.
struct Intruder {
    masters: Vec<u16>,
}

/// A record as Redis holds it: a plain value, or a versioned record
/// (`v` its version, `d` its data).
#[derive(Debug, Clone)]
enum Raw {
    Plain(Vec<u8>),
    Versioned(u64, Vec<u8>),
}

impl Raw {
    fn data(&self) -> &[u8] {
        match self {
            Raw::Plain(data) | Raw::Versioned(_, data) => data,
        }
    }

    fn with_data(&self, data: Vec<u8>) -> Raw {
        match self {
            Raw::Plain(_) => Raw::Plain(data),
            Raw::Versioned(version, _) => Raw::Versioned(*version, data),
        }
    }
}

impl Intruder {
    fn new(deployment: &Deployment) -> Self {
        Self {
            masters: deployment.cluster.masters().unwrap(),
        }
    }

    fn connection(port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The one key matching `pattern`, and the master that holds it.
    fn find(&self, pattern: &str) -> (u16, String) {
        let mut found = Vec::new();
        for &port in &self.masters {
            let mut connection = Self::connection(port);
            let keys: Vec<String> = connection
                .scan_match::<_, String>(pattern)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            found.extend(keys.into_iter().map(|key| (port, key)));
        }
        assert_eq!(found.len(), 1, "keys matching {pattern}: {found:?}");
        found.pop().unwrap()
    }

    fn read(&self, pattern: &str) -> Raw {
        let (port, key) = self.find(pattern);
        let mut connection = Self::connection(port);
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
        match kind.as_str() {
            "string" => Raw::Plain(connection.get(&key).unwrap()),
            "hash" => {
                let (version, data): (u64, Vec<u8>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg("v")
                    .arg("d")
                    .query(&mut connection)
                    .unwrap();
                Raw::Versioned(version, data)
            }
            other => panic!("{key} is a {other}"),
        }
    }

    fn write(&self, pattern: &str, raw: &Raw) {
        let (port, key) = self.find(pattern);
        let mut connection = Self::connection(port);
        match raw {
            Raw::Plain(data) => connection.set::<_, _, ()>(&key, data).unwrap(),
            Raw::Versioned(version, data) => redis::cmd("HSET")
                .arg(&key)
                .arg("v")
                .arg(version)
                .arg("d")
                .arg(data)
                .query::<()>(&mut connection)
                .unwrap(),
        }
    }

    /// Lists `device` among `user`'s devices.
    fn add_device(&self, user: &str, device: u64) {
        let (port, key) = self.find(&format!("*{{u:{user}}}:devices"));
        let mut connection = Self::connection(port);
        connection
            .sadd::<_, _, ()>(&key, device.to_string())
            .unwrap();
    }
}

/// A login with the card's right answer: the verdict, or the reply that
/// refused the challenge.
async fn right_answer(
    gateway: &sls_sim::client::Client,
    name: &str,
    device: slsd::identity::DeviceId,
) -> Result<Verdict, Reply> {
    match challenge(gateway, name, device).await {
        Reply::Challenge {
            challenge,
            text: slsd::wire::ChallengeText::Question(question),
            ..
        } => Ok(verify(gateway, challenge, &answer(&question)).await),
        other => Err(other),
    }
}

fn is_error(reply: &Reply) -> bool {
    matches!(reply, Reply::Error { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_forged_in_redis_are_refused_on_every_node() {
    let deployment = deploy("[lockout]\nfailures = 3\nfirst = \"1h\"\nmax = \"4h\"\n");
    let intruder = Intruder::new(&deployment);
    let admin = deployment.a.client(Role::Admin).await;
    let gateway = deployment.b.client(Role::Gateway).await;
    let devices = |name: &str| Operation::Devices { user: user(name) };
    let identity = |residence: &str| slsd::wire::Identification {
        residence: residence.into(),
        date_of_birth: "1980-04-02".into(),
        citizenship: "CH".into(),
        id_document: "P 1".into(),
    };
    let set_identity = |name: &str, residence: &str| Operation::SetIdentity {
        user: user(name),
        identity: identity(residence),
    };
    let opt_out = |name: &str, opted_out| Operation::SetOptOut {
        user: user(name),
        opted_out,
    };

    // 1. A Hong Kong resident may not opt out; the intruder flips the flag.
    enroll_dsc(&admin, "hkuser1").await.unwrap();
    assert_eq!(
        admin.call(set_identity("hkuser1", "HK")).await.unwrap(),
        Reply::Done
    );
    let refused = admin.call(opt_out("hkuser1", true)).await.unwrap();
    assert!(matches!(refused, Reply::Refused { .. }), "{refused:?}");
    let account = intruder.read("*{u:hkuser1}:account");
    let mut flipped = account.data().to_vec();
    flipped[1] = 1; // version byte, then the opt-out flag
    intruder.write("*{u:hkuser1}:account", &account.with_data(flipped));
    let reply = gateway.call(devices("hkuser1")).await.unwrap();
    assert!(
        is_error(&reply),
        "a flipped opt-out flag was believed: {reply:?}"
    );

    // 2. The intruder moves their own card to another user: the user
    // named in the device record, and the victim's list of devices.
    let mallory = enroll_dsc(&admin, "mallory").await.unwrap();
    enroll_dsc(&admin, "victim1").await.unwrap();
    let pattern = format!("*{{d{}}}:device", mallory.0);
    let record = intruder.read(&pattern);
    let moved: Vec<u8> = {
        let data = record.data();
        let at = data
            .windows(7)
            .position(|w| w == b"mallory")
            .expect("the record names its user");
        [&data[..at], b"victim1", &data[at + 7..]].concat()
    };
    intruder.write(&pattern, &record.with_data(moved));
    intruder.add_device("victim1", mallory.0);
    tokio::time::sleep(CACHE_TTL * 2).await;
    match right_answer(&gateway, "victim1", mallory).await {
        Ok(verdict) => panic!("the moved card was challenged for its new user: {verdict:?}"),
        Err(reply) => assert!(is_error(&reply), "{reply:?}"),
    }

    // 3. A card locked for an hour; the intruder writes a clean failure
    // state over its lockout.
    let locked = enroll_dsc(&admin, "locked1").await.unwrap();
    for _ in 0..3 {
        let (id, right) = open(&gateway, "locked1", locked).await;
        verify(&gateway, id, &wrong(&right)).await;
    }
    let (id, right) = open(&gateway, "locked1", locked).await;
    let verdict = verify(&gateway, id, &right).await;
    assert!(matches!(verdict, Verdict::LockedOut { .. }), "{verdict:?}");
    let pattern = format!("*{{u:locked1}}:f:{}", locked.0);
    let state = intruder.read(&pattern);
    intruder.write(&pattern, &state.with_data(FailureState::default().encode()));
    // Refused where the forged state is first read: at the challenge, or
    // at the answer (a node that has just seen the true state asks on it,
    // and the forgery, which kept the version, is read with the answer).
    let reply = match challenge(&gateway, "locked1", locked).await {
        Reply::Challenge {
            challenge,
            text: slsd::wire::ChallengeText::Question(question),
            ..
        } => gateway
            .call(Operation::Verify {
                challenge,
                response: slsd::wire::request::Answer::new(&answer(&question)),
            })
            .await
            .unwrap(),
        other => other,
    };
    assert!(
        !matches!(reply, Reply::Verdict(Verdict::Accepted { .. })),
        "a cleared lockout was believed: {reply:?}"
    );

    // 4. An account record put back as it was before a change: opted out,
    // then in again; the intruder restores the opted-out record.
    enroll_dsc(&admin, "replay1").await.unwrap();
    assert_eq!(
        admin.call(set_identity("replay1", "CH")).await.unwrap(),
        Reply::Done
    );
    assert_eq!(
        admin.call(opt_out("replay1", true)).await.unwrap(),
        Reply::Done
    );
    let opted_out = intruder.read("*{u:replay1}:account");
    assert_eq!(
        admin.call(opt_out("replay1", false)).await.unwrap(),
        Reply::Done
    );
    let now = intruder.read("*{u:replay1}:account");
    intruder.write(
        "*{u:replay1}:account",
        &now.with_data(opted_out.data().to_vec()),
    );
    let reply = gateway.call(devices("replay1")).await.unwrap();
    assert!(
        is_error(&reply),
        "a replayed record was believed: {reply:?}"
    );

    // Each refusal is counted on the node that read the record.
    let node = &deployment.b;
    let refused =
        tokio::task::block_in_place(|| node.metric_total("sls_store_records_refused_total"));
    assert!(refused >= 4, "{refused} records refused");
    // The nodes still serve the records nobody touched.
    match gateway.call(devices("victim1")).await.unwrap() {
        Reply::Devices { devices, .. } => {
            assert_eq!(devices.len(), 1, "{devices:?}");
            assert_ne!(devices[0].device, mallory);
        }
        other => panic!("{other:?}"),
    }
}

/// Runs `slsd serve` on `data_dir` with `config` (and `env`) until it is
/// ready, then stops it: whether it became ready, and everything it wrote
/// to stdout and stderr (logs at debug level).
fn serve_once(data_dir: &Path, config: &str, env: &[(&str, &str)]) -> (bool, String) {
    let config_file = data_dir.with_extension("toml");
    std::fs::write(&config_file, config).unwrap();
    let mut child = Command::new(support::binary("slsd"))
        .args(["serve", "--config"])
        .arg(&config_file)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut output = String::new();
    let mut ready = false;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap_or_default();
        output.push_str(&line);
        output.push('\n');
        if line == "slsd: ready" {
            ready = true;
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
    }
    let _ = child.wait();
    output.push_str(&errors.join().unwrap_or_default());
    (ready, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_the_cluster_over_tls_as_an_acl_user_and_never_show_the_password() {
    let deployment = deploy_secured("");
    let admin = deployment.a.client(Role::Admin).await;
    let gateway = deployment.b.client(Role::Gateway).await;
    let device = enroll_dsc(&admin, "jdoe").await.unwrap();
    let (id, right) = open(&gateway, "jdoe", device).await;
    assert!(matches!(
        verify(&gateway, id, &right).await,
        Verdict::Accepted { .. }
    ));

    let secured = deployment.cluster.secured().unwrap();
    let password = secured.password().unwrap();
    let urls: Vec<String> = deployment
        .cluster
        .urls()
        .iter()
        .map(|u| format!("{u:?}"))
        .collect();
    let config = |store: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n\
             [store]\nbackend = \"redis\"\nredis-urls = [{}]\n{store}",
            urls.join(", ")
        )
    };
    let ca = format!("redis-ca-file = {:?}\n", secured.ca_file);
    let user = format!("redis-user = \"{}\"\n", sls_sim::cluster::SECURED_USER);
    let node = |name: &str| {
        let dir = deployment.a.data_dir.with_file_name(name);
        share_identity(&deployment.a.data_dir, &dir);
        dir
    };

    // The password from the environment: the node starts, and nothing it
    // writes, at debug level, shows the password.
    let (ready, output) = tokio::task::block_in_place(|| {
        serve_once(
            &node("c"),
            &config(&format!("{user}{ca}")),
            &[("SLS_REDIS_PASSWORD", password.as_str())],
        )
    });
    assert!(ready, "{output}");
    assert!(!output.contains(&password), "the password shows: {output}");

    // A wrong password, a CA the cluster's certificate does not chain to
    // (the system's roots), or no TLS at all: the node does not start, and
    // says why.
    let wrong = format!("{user}{ca}");
    let (ready, output) = tokio::task::block_in_place(|| {
        serve_once(
            &node("d"),
            &config(&wrong),
            &[("SLS_REDIS_PASSWORD", "guess")],
        )
    });
    assert!(!ready, "{output}");
    assert!(output.to_lowercase().contains("pass"), "{output}");
    let (ready, output) = tokio::task::block_in_place(|| {
        serve_once(
            &node("e"),
            &config(&user),
            &[("SLS_REDIS_PASSWORD", password.as_str())],
        )
    });
    assert!(!ready, "{output}");
    assert!(!output.contains(&password), "{output}");
    let plain: Vec<String> = urls
        .iter()
        .map(|u| u.replace("rediss://", "redis://"))
        .collect();
    let plain_config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\n\
         [store]\nbackend = \"redis\"\nredis-urls = [{}]\n{user}",
        plain.join(", ")
    );
    let (ready, output) = tokio::task::block_in_place(|| {
        serve_once(
            &node("f"),
            &plain_config,
            &[("SLS_REDIS_PASSWORD", password.as_str())],
        )
    });
    assert!(!ready, "{output}");
}
