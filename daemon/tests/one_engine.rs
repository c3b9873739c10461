//! The registry changes an operator makes — `Enroll`, `EnrollPhone`,
//! `BindPushKey`, `Revoke`, `Unlock` — are written once over the store, so
//! the embedded store and the cluster store (Redis in memory) must answer
//! the same sequence alike and leave the same audit log: the same
//! entries, each once, with the same details. On the cluster the writes are
//! also made to lose to "another node" before each change, and each entry
//! must still be in the log exactly once (it is written with its change).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine, Role};
use slsd::identity::{DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::push::PushSigner;
use slsd::phone::PhoneNumber;
use slsd::profile::DeviceKind;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::wire::{EnrollRequest, Operation, Reply};

const T0: Timestamp = Timestamp(1_800_000_000_000);

/// One store under test.
enum Node {
    Embedded(Engine),
    Cluster(Engine, Arc<MemoryRedis>),
}

impl Node {
    fn call(&self, operation: Operation) -> Reply {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let caller = Caller::detached(Role::Admin);
        match self {
            Node::Embedded(engine) => {
                engine
                    .handle_from(&caller, operation, T0, &mut rng)
                    .unwrap()
                    .reply
            }
            Node::Cluster(engine, memory) => {
                // Another node wins the next writes on existing records.
                memory.interfere(3);
                let handled = engine.handle_on_cluster(&caller, operation, T0, &mut rng);
                run_now(handled).unwrap().unwrap()
            }
        }
    }
}

fn enroll(kind: DeviceKind, secret: Option<[u8; 32]>) -> Operation {
    Operation::Enroll(EnrollRequest {
        user: Username::new("jdoe").unwrap(),
        kind,
        secret: secret.map(|s| SecretKey::from_bytes(s.to_vec()).unwrap()),
        pin: None,
        label: String::new(),
    })
}

/// An audit entry without its number and time: actor, action, user,
/// device (as an ordinal), detail.
type Entry = (String, String, Option<String>, Option<usize>, String);

/// Replies and audit entries with each device id replaced by the order in
/// which it first appeared (the stores number devices differently).
#[derive(Debug, PartialEq)]
struct Transcript {
    replies: Vec<String>,
    audit: Vec<Entry>,
}

fn run(node: &Node) -> Transcript {
    let mut ids: HashMap<DeviceId, usize> = HashMap::new();
    let mut ordinal = |id: DeviceId| {
        let next = ids.len();
        *ids.entry(id).or_insert(next)
    };
    let mut replies = Vec::new();
    let mut say = |reply: Reply, ordinal: &mut dyn FnMut(DeviceId) -> usize| {
        replies.push(match reply {
            Reply::Enrolled { device, secret } => {
                format!("enrolled #{} secret {}", ordinal(device), secret.is_some())
            }
            Reply::Error { code, .. } => format!("error {code:?}"),
            other => format!("{other:?}"),
        });
    };
    let card = match node.call(enroll(DeviceKind::Scc, Some([9; 32]))) {
        reply @ Reply::Enrolled { device, .. } => {
            say(reply, &mut ordinal);
            device
        }
        other => panic!("the card: {other:?}"),
    };
    let app = match node.call(enroll(DeviceKind::IbKey, None)) {
        reply @ Reply::Enrolled { device, .. } => {
            say(reply, &mut ordinal);
            device
        }
        other => panic!("the app: {other:?}"),
    };
    let phone = |number: &str| Operation::EnrollPhone {
        user: Username::new("jdoe").unwrap(),
        number: PhoneNumber::parse(number).unwrap(),
        label: String::new(),
    };
    let key = PushSigner::from_seed([4; 32]).public();
    let bind = |device| Operation::BindPushKey { device, key };
    let unlock = |device| Operation::Unlock {
        user: Username::new("jdoe").unwrap(),
        device,
    };
    let nobody = DeviceId(0xdead_beef);
    for operation in [
        phone("+41 791234567"),
        // One number per user.
        phone("+41 797654321"),
        bind(app),
        // Push keys are for IB Key devices.
        bind(card),
        bind(nobody),
        unlock(None),
        unlock(Some(card)),
        unlock(Some(nobody)),
        Operation::Revoke { device: card },
        Operation::Revoke { device: card },
        Operation::Revoke { device: nobody },
    ] {
        let reply = node.call(operation);
        say(reply, &mut ordinal);
    }
    let Reply::Audit(entries) = node.call(Operation::AuditLog {
        after: 0,
        limit: 100,
    }) else {
        panic!("the audit log");
    };
    let audit = entries
        .into_iter()
        .map(|e| {
            (
                e.actor,
                e.action,
                e.user.map(|u| u.to_string()),
                e.device.map(&mut ordinal),
                e.detail,
            )
        })
        .collect();
    Transcript { replies, audit }
}

#[test]
fn operator_changes_answer_and_audit_alike_on_both_stores() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml("").unwrap();
    let embedded = Node::Embedded(common::open_engine(dir.path(), config.clone()));

    let cluster_dir = tempfile::tempdir().unwrap();
    let (engine, memory) = common::open_cluster_engine(cluster_dir.path(), config, T0);
    let cluster = Node::Cluster(engine, memory);

    let on_one_node = run(&embedded);
    let on_the_cluster = run(&cluster);
    assert_eq!(on_one_node, on_the_cluster);

    // What both said, so that agreeing on nothing cannot pass.
    let actions: Vec<&str> = on_one_node.audit.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        actions,
        [
            "enroll",
            "enroll",
            "enroll-phone",
            "bind-push-key",
            "unlock",
            "unlock",
            "revoke"
        ]
    );
    assert_eq!(
        on_one_node.replies[2..],
        [
            "enrolled #2 secret false",
            "error InvalidArgument",
            "Done",
            "error InvalidArgument",
            "error NotFound",
            "Done",
            "Done",
            "error NotFound",
            "Done",
            "error NotFound",
            "error NotFound",
        ]
    );
}
