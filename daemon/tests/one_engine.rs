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
use slsd::store::cluster::ClusterStore;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::cluster::redis::RedisStore;
use slsd::store::records::DeviceCodec;
use slsd::store::sealed::SecretCipher;
use slsd::store::{Actor, Store};
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

/// jdoe with a card, an app, a number and identification; ann (whose name
/// is not jdoe's) and jdoe2 (whose name holds it) beside; jdoe erased, then
/// a new jdoe enrolled. The replies and audit log, the pseudonym written
/// as `<pseudonym>` (each store's key makes its own). `erased` looks at
/// the store right after the erasure.
fn erase(node: &Node, erased: impl Fn()) -> Transcript {
    let user = |name: &str| Username::new(name).unwrap();
    let enroll_as = |name: &str, kind, secret: Option<[u8; 32]>| {
        Operation::Enroll(EnrollRequest {
            user: user(name),
            kind,
            secret: secret.map(|s| SecretKey::from_bytes(s.to_vec()).unwrap()),
            pin: None,
            label: String::new(),
        })
    };
    let identity = slsd::wire::Identification {
        residence: "CH".into(),
        date_of_birth: "1980-01-01".into(),
        citizenship: "CH".into(),
        id_document: "passport X123".into(),
    };
    let mut replies = Vec::new();
    let mut pseudonym = None;
    for operation in [
        enroll_as("jdoe", DeviceKind::Scc, Some([9; 32])),
        enroll_as("jdoe", DeviceKind::IbKey, None),
        Operation::EnrollPhone {
            user: user("jdoe"),
            number: PhoneNumber::parse("+41 791234567").unwrap(),
            label: String::new(),
        },
        Operation::SetIdentity {
            user: user("jdoe"),
            identity: identity.clone(),
        },
        enroll_as("ann", DeviceKind::Scc, Some([8; 32])),
        enroll_as("jdoe2", DeviceKind::Scc, Some([7; 32])),
        Operation::Erase { user: user("jdoe") },
        Operation::ListDevices {
            user: user("jdoe"),
            page: slsd::wire::Page::first(10),
        },
        // Again: nothing left, nothing more rewritten.
        Operation::Erase { user: user("jdoe") },
        // The name is free for someone new, whose entries keep it.
        enroll_as("jdoe", DeviceKind::Scc, Some([6; 32])),
    ] {
        let reply = node.call(operation);
        if let Reply::Erased { pseudonym: p, .. } = &reply {
            assert!(p.as_str().starts_with("erased-"), "{p}");
            if pseudonym.is_none() {
                erased();
            }
            assert_eq!(
                pseudonym.get_or_insert_with(|| p.clone()),
                p,
                "one pseudonym"
            );
        }
        replies.push(match reply {
            Reply::Enrolled { .. } => "enrolled".to_owned(),
            Reply::Erased {
                devices,
                audit_entries,
                ..
            } => format!("erased {devices} devices, {audit_entries} entries"),
            other => format!("{other:?}"),
        });
    }
    let pseudonym = pseudonym.expect("erased").to_string();
    let Reply::Audit(entries) = node.call(Operation::AuditLog {
        after: 0,
        limit: 100,
    }) else {
        panic!("the audit log");
    };
    let hide = |text: String| text.replace(&pseudonym, "<pseudonym>");
    let audit = entries
        .into_iter()
        .map(|e| {
            (
                e.actor,
                e.action,
                e.user.map(|u| hide(u.to_string())),
                None,
                hide(e.detail),
            )
        })
        .collect();
    Transcript { replies, audit }
}

#[test]
fn an_erased_user_is_gone_from_both_stores_and_only_a_pseudonym_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml("").unwrap();
    let embedded_engine = common::open_engine(dir.path(), config.clone());
    let cluster_dir = tempfile::tempdir().unwrap();
    let (engine, memory) = common::open_cluster_engine(cluster_dir.path(), config, T0);
    let name = Username::new("jdoe").unwrap();
    let registry = Arc::clone(embedded_engine.registry());
    let embedded = Node::Embedded(embedded_engine);
    let cluster = Node::Cluster(engine, Arc::clone(&memory));

    let on_one_node = erase(&embedded, || {
        assert!(registry.devices_of(&name).is_empty());
        assert_eq!(registry.user(&name), slsd::store::Account::default());
    });
    // Nothing in Redis names jdoe any more but the audit log (whose
    // entries the transcript shows) and jdoe2's records.
    let on_the_cluster = erase(&cluster, || {
        let holding: Vec<String> = memory
            .keys_holding(b"jdoe")
            .into_iter()
            .filter(|key| key != "sls:{audit}:log")
            .filter(|key| !memory.keys_holding(b"jdoe2").contains(key))
            .collect();
        assert_eq!(holding, Vec::<String>::new());
        assert!(
            !memory.keys_holding(b"jdoe2").is_empty(),
            "the search finds names"
        );
    });
    assert_eq!(on_one_node, on_the_cluster);
    assert_eq!(
        on_one_node.replies[6..9],
        [
            "erased 3 devices, 4 entries",
            "Devices { required: true, devices: [] }",
            "erased 0 devices, 0 entries",
        ]
    );
    let jdoe = Some("jdoe".to_owned());
    let who: Vec<(&str, Option<&str>)> = on_one_node
        .audit
        .iter()
        .map(|e| (e.1.as_str(), e.2.as_deref()))
        .collect();
    assert_eq!(
        who,
        [
            ("enroll", Some("<pseudonym>")),
            ("enroll", Some("<pseudonym>")),
            ("enroll-phone", Some("<pseudonym>")),
            ("set-identity", Some("<pseudonym>")),
            ("enroll", Some("ann")),
            ("enroll", Some("jdoe2")),
            ("erase", Some("<pseudonym>")),
            ("erase", Some("<pseudonym>")),
            ("enroll", jdoe.as_deref()),
        ]
    );

    assert_eq!(registry.devices_of(&name).len(), 1, "the new jdoe");
}

/// An entry appended by `user`'s change on the cluster `store`.
fn append_audit(store: &ClusterStore, user: &Username, action: &str, detail: &str) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    run_now(store.change(user, Actor("admin"), T0, &mut rng, |c| {
        c.audit(action, Some(user), None, detail.to_owned())
    }))
    .unwrap()
    .unwrap();
}

/// A share's entry names its requester and its owner. Both erased at once
/// through two nodes, one rewrites the entry after the other read it: it
/// finds the entry changed, reads it again and keeps the other's
/// pseudonym. (Written back as first read, the owner's name would return
/// to the log.)
#[test]
fn two_erasures_at_once_on_the_cluster_leave_neither_name_in_an_entry_of_both() {
    let memory = Arc::new(MemoryRedis::new());
    memory.set_now(T0);
    let config = Config::from_toml("").unwrap();
    let codec = DeviceCodec::new(SecretCipher::new(&[5; 32]), config.devices.clone());
    let store = ClusterStore::new(
        RedisStore::in_memory(Arc::clone(&memory)),
        codec,
        config.store.cache_ttl,
    );
    let (owner, requester) = (
        Username::new("jdoe").unwrap(),
        Username::new("ann").unwrap(),
    );
    let (owner_pseudonym, requester_pseudonym) =
        (store.pseudonym(&owner), store.pseudonym(&requester));
    append_audit(&store, &requester, "share-active", "owner jdoe, share 1");
    append_audit(&store, &owner_pseudonym, "erase", "1 devices");
    append_audit(&store, &requester_pseudonym, "erase", "0 devices");

    // The requester's erasure reads the log; the owner's finishes (its
    // first round lost to "another node"); then the requester's writes.
    let requester_found = run_now(store.audit_naming(&requester, &requester_pseudonym))
        .unwrap()
        .unwrap();
    memory.interfere(1);
    let rewritten = run_now(store.pseudonymize_audit(&owner, &owner_pseudonym));
    assert_eq!(rewritten.unwrap().unwrap(), 1);
    assert_eq!(memory.interfering(), 0, "a round was lost");
    let rewritten = run_now(store.rewrite_audit(requester_found));
    assert_eq!(rewritten.unwrap().unwrap(), 1);

    let log = run_now(store.audit_log(0, 10)).unwrap().unwrap();
    let share = log.first().expect("the share's entry");
    assert_eq!(share.user.as_ref(), Some(&requester_pseudonym));
    assert_eq!(share.detail, format!("owner {owner_pseudonym}, share 1"));
    // Neither erasure finds anything more to rewrite.
    let again = run_now(store.pseudonymize_audit(&owner, &owner_pseudonym));
    assert_eq!(again.unwrap().unwrap(), 0);
    let again = run_now(store.pseudonymize_audit(&requester, &requester_pseudonym));
    assert_eq!(again.unwrap().unwrap(), 0);
}
