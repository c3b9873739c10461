//! Two `slsd` nodes sharing one real Redis Cluster (three masters, three
//! replicas on loopback), and what the tests of such a deployment share:
//! a DSC+ enrolled and answered, challenges and verdicts.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sls_sim::client::Client;
use sls_sim::cluster::Cluster;
use sls_sim::token::DscPlus;
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

use super::daemon::Daemon;

pub const DSC_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
pub const PIN: &str = "4821";
pub const CACHE_TTL: Duration = Duration::from_millis(500);

/// Two nodes on one cluster; node B shares node A's CA, certificates and
/// key file, as a deployment's nodes do.
pub struct Deployment {
    // Dropped in this order: the nodes stop before the cluster goes, and
    // the next test's turn comes after both.
    pub a: Daemon,
    pub b: Daemon,
    pub cluster: Cluster,
    _dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

/// The tests take turns: each runs six Redis servers and two nodes, and
/// several at once on two cores would spoil each other's timings.
pub static TURN: Mutex<()> = Mutex::new(());

pub fn deploy(more: &str) -> Deployment {
    deploy_with("", more)
}

/// A deployment with more `[store]` keys (`store`) and tables (`more`).
pub fn deploy_with(store: &str, more: &str) -> Deployment {
    let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let cluster = Cluster::start(3, 1).expect("a Redis Cluster (apt-get install redis-server)");
    deploy_on(turn, cluster, store, more)
}

/// A deployment on a cluster reached over TLS as an ACL user
/// (`Cluster::start_secured`); the nodes read the password from its file.
pub fn deploy_secured(more: &str) -> Deployment {
    let turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let cluster =
        Cluster::start_secured(3, 1).expect("a Redis Cluster (apt-get install redis-server)");
    let secured = cluster.secured().expect("secured");
    let store = format!(
        "redis-user = \"{}\"\nredis-password-file = {:?}\nredis-ca-file = {:?}\n",
        sls_sim::cluster::SECURED_USER,
        secured.password_file,
        secured.ca_file,
    );
    deploy_on(turn, cluster, &store, more)
}

fn deploy_on(
    turn: MutexGuard<'static, ()>,
    cluster: Cluster,
    store: &str,
    more: &str,
) -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    // Short lockouts, unless the test sets its own.
    let lockout = if more.contains("[lockout]") {
        ""
    } else {
        "[lockout]\nfailures = 3\nfirst = \"1s\"\nmax = \"4s\"\n"
    };
    let sections = format!(
        "[store]\nbackend = \"redis\"\nredis-urls = [{}]\nredis-wait-replicas = 1\n\
         redis-wait-timeout = \"2s\"\ncache-ttl = \"{}ms\"\n{store}\n{lockout}{more}",
        urls.join(", "),
        CACHE_TTL.as_millis()
    );
    let a = Daemon::start(&dir.path().join("a"), "", &sections);
    share_identity(&dir.path().join("a"), &dir.path().join("b"));
    let b = Daemon::start(&dir.path().join("b"), "", &sections);
    Deployment {
        a,
        b,
        cluster,
        _dir: dir,
        _turn: turn,
    }
}

impl Deployment {
    /// Node A (`0`) or B (`1`) stopped cleanly — it drains — and started
    /// again on its data directory (on new ports), the other serving
    /// meanwhile: one step of a rolling restart.
    pub fn restart_node(self, node: usize) -> Self {
        let Self {
            a,
            b,
            cluster,
            _dir,
            _turn,
        } = self;
        let (a, b) = if node == 0 {
            (a.restart(), b)
        } else {
            (a, b.restart())
        };
        Self {
            a,
            b,
            cluster,
            _dir,
            _turn,
        }
    }

    /// Both nodes stopped cleanly and started again on their data
    /// directories (nothing remembered from before but what the store has).
    pub fn restart_nodes(self) -> Self {
        self.restart_node(0).restart_node(1)
    }
}

/// Copies the CA, the certificates and the key file: everything of a data
/// directory but its (unused) embedded database.
pub fn share_identity(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".pem") || name.ends_with(".key") {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

pub fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

pub async fn enroll_dsc(admin: &Client, name: &str) -> Result<DeviceId, Reply> {
    let request = EnrollRequest {
        user: user(name),
        kind: DeviceKind::DscPlus,
        secret: Some(SecretKey::from_hex(DSC_KEY).unwrap()),
        pin: Some(Pin::new(PIN)),
        label: "card".into(),
    };
    match admin.call(Operation::Enroll(request)).await {
        Ok(Reply::Enrolled { device, .. }) => Ok(device),
        Ok(other) => Err(other),
        Err(error) => Err(Reply::error(ErrorCode::Internal, error.to_string())),
    }
}

pub async fn challenge(gateway: &Client, name: &str, device: DeviceId) -> Reply {
    gateway
        .call(Operation::Challenge {
            user: user(name),
            device,
        })
        .await
        .unwrap()
}

/// A challenge that must be issued: its id and the right answer.
pub async fn open(gateway: &Client, name: &str, device: DeviceId) -> (ChallengeId, String) {
    match challenge(gateway, name, device).await {
        Reply::Challenge {
            challenge,
            text: ChallengeText::Question(question),
            ..
        } => (challenge, answer(&question)),
        other => panic!("challenge: {other:?}"),
    }
}

pub fn answer(question: &str) -> String {
    let card = DscPlus::new(
        &SecretKey::from_hex(DSC_KEY).unwrap(),
        &DeviceProfiles::defaults().unwrap(),
    )
    .unwrap();
    card.respond(PIN, question).unwrap().to_string()
}

pub fn wrong(answer: &str) -> String {
    answer
        .chars()
        .map(|c| if c == '9' { '0' } else { '9' })
        .collect()
}

pub async fn verify(gateway: &Client, challenge: ChallengeId, answer: &str) -> Verdict {
    match gateway
        .call(Operation::Verify {
            challenge,
            response: Answer::new(answer),
        })
        .await
        .unwrap()
    {
        Reply::Verdict(verdict) => verdict,
        other => panic!("verify: {other:?}"),
    }
}
