//! At-rest key rotation, written once for both stores: after `Keyring {
//! rotate }` new seals use the new key, the pass re-seals every record
//! that holds a sealed value (each kind counted), logins go on before,
//! during and after, and once the old key is retired nothing in the store
//! opens under it. On the cluster every node follows the published
//! keyring, a node rotating behind it takes it first (no key id is made
//! twice), and a node that missed a whole rotation cannot learn the key.

mod common;

use common::hotp::{alice, enroll, enrolled, hotp_token, login};
use common::nodes::Node;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::phone::PhoneNumber;
use slsd::profile::DeviceKind;
use slsd::store::Store;
use slsd::store::cluster::memory::run_now;
use slsd::store::sealed::{Adopted, SecretCipher};
use slsd::wire::{Operation, Reply};

fn keyring(node: &Node, rotate: bool) -> (u32, Vec<u32>, u64) {
    match node.call(Operation::Keyring { rotate }) {
        Reply::Keyring {
            active,
            retiring,
            resealed,
        } => (active, retiring, resealed),
        other => panic!("{}: the keyring: {other:?}", node.name()),
    }
}

fn engine(node: &Node) -> &slsd::engine::Engine {
    match node {
        Node::Embedded(engine) | Node::Cluster(engine, _) => engine,
    }
}

/// A cluster node's store over `memory` with `cipher`, nothing cached.
fn fresh_store(
    memory: &std::sync::Arc<slsd::store::cluster::memory::MemoryRedis>,
    cipher: SecretCipher,
) -> slsd::store::cluster::ClusterStore {
    let redis = slsd::store::cluster::redis::RedisStore::in_memory(memory.clone());
    let profiles = slsd::config::Config::default().devices;
    let codec = slsd::store::records::DeviceCodec::new(cipher, profiles);
    slsd::store::cluster::ClusterStore::new(redis, codec, Default::default())
}

fn store(node: &Node) -> &slsd::store::cluster::ClusterStore {
    engine(node).cluster_store().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_rotation_reseals_every_secret_while_logins_go_on_and_the_old_key_opens_nothing() {
    for (node, dir) in Node::both() {
        let name = node.name();
        // The key in use before: the key file's (embedded), the one every
        // in-memory cluster node is given (cluster).
        let old: [u8; 32] = match &node {
            Node::Embedded(_) => std::fs::read(dir.path().join("secrets.key"))
                .unwrap()
                .try_into()
                .unwrap(),
            Node::Cluster(..) => [5; 32],
        };
        // One record of each kind that holds a sealed value: a card's key,
        // a DSC+'s key and PIN hash (one record), a number, a token's key
        // in the inventory and on its device.
        enrolled(&node, enroll(DeviceKind::Scc, None));
        enrolled(&node, enroll(DeviceKind::DscPlus, Some("1234")));
        let phone = Operation::EnrollPhone {
            user: alice(),
            number: PhoneNumber::parse("+41 791234567").unwrap(),
            label: String::new(),
        };
        enrolled(&node, phone);
        let token = hotp_token(&node, "H1");
        assert!(login(&node, token, 0), "{name}");

        assert_eq!(keyring(&node, false), (0, vec![], 0), "{name}");
        assert_eq!(keyring(&node, true), (1, vec![0], 0), "{name}");
        // Sealed under the new key at once: nothing to re-seal.
        let after = enrolled(&node, enroll(DeviceKind::Scc, None));
        // What was sealed under the old key still opens meanwhile.
        assert!(login(&node, token, 1), "{name}");

        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let report = engine(&node).reseal_pass(&mut rng).await.unwrap().unwrap();
        // Three device records with a key, the number, the token in the
        // inventory; on the cluster the deployment's SMS code key too.
        let expected = match node {
            Node::Embedded(_) => 5,
            Node::Cluster(..) => 6,
        };
        assert_eq!(report.resealed, expected, "{name}: {report:?}");
        assert_eq!(report.retired, [0], "{name}");
        assert_eq!(keyring(&node, false), (1, vec![], expected), "{name}");
        assert!(login(&node, token, 2), "{name}");
        // Nothing left to do.
        assert_eq!(engine(&node).reseal_pass(&mut rng).await.unwrap(), None);

        match &node {
            Node::Embedded(_) => {
                let profiles = slsd::config::Config::default().devices;
                let path = dir.path().join("registry.redb");
                let file = dir.path().join("secrets.key");
                // The key file holds the new key alone now; the registry
                // opens under it, every device with it...
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(
                    text.contains("key 1 active") && !text.contains("key 0"),
                    "{text}"
                );
                drop(node);
                let keyring = SecretCipher::load_or_create(&file, &mut rng).unwrap();
                let registry = slsd::store::embedded::registry::Registry::open(
                    &path,
                    keyring,
                    profiles.clone(),
                )
                .unwrap();
                assert_eq!(registry.devices_of(&alice()).len(), 5);
                drop(registry);
                // ...and the old key alone opens none of it.
                let error = slsd::store::embedded::registry::Registry::open(
                    &path,
                    SecretCipher::new(&old),
                    profiles,
                )
                .unwrap_err();
                assert!(error.to_string().contains("sealed"), "{error}");
            }
            Node::Cluster(engine, memory) => {
                // A node of this cluster that reads every record afresh:
                // with the new key, every device; with the old alone, none.
                let store = engine.cluster_store().unwrap();
                let fresh = |cipher| fresh_store(memory, cipher);
                let current = fresh(store.keyring().clone());
                let devices = run_now(current.devices_of(&alice())).unwrap().unwrap();
                assert_eq!(devices.len(), 5);
                assert!(devices.iter().any(|d| d.id == after));
                let stale = fresh(SecretCipher::new(&old));
                for device in &devices {
                    assert!(
                        run_now(stale.device(device.id)).unwrap().is_err(),
                        "device {} opens under the old key",
                        device.id
                    );
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_cluster_node_follows_the_keyring_and_one_that_missed_a_rotation_cannot() {
    let (node, _dir) = Node::both().pop().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = node.another(other_dir.path()).unwrap();
    let token = hotp_token(&node, "H1");
    assert_eq!(
        run_now(store(&other).follow_keyring()).unwrap().unwrap(),
        Adopted::Unchanged
    );

    assert_eq!(keyring(&node, true), (1, vec![0], 0));
    // A rotation on the other node before it has followed: it takes key 1
    // from the deployment first, then makes key 2 (not a key 1 of its own).
    assert_eq!(keyring(&other, true), (2, vec![0, 1], 0));
    // The first node learns key 2 from the published keyring...
    assert_eq!(
        run_now(store(&node).follow_keyring()).unwrap().unwrap(),
        Adopted::Changed
    );
    assert_eq!(keyring(&node, false), (2, vec![0, 1], 0));
    // ...so what the other seals now, it opens, and a node that has the
    // old key alone does not.
    let card = enrolled(&other, enroll(DeviceKind::Scc, None));
    assert!(
        run_now(store(&node).device(card))
            .unwrap()
            .unwrap()
            .is_some()
    );
    assert!(login(&other, token, 0));

    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let report = engine(&node).reseal_pass(&mut rng).await.unwrap().unwrap();
    assert_eq!(report.retired, [0, 1]);
    assert_eq!(
        run_now(store(&other).follow_keyring()).unwrap().unwrap(),
        Adopted::Changed
    );
    assert_eq!(keyring(&other, false), (2, vec![], 0));
    assert!(login(&other, token, 1));

    // A node that was away for the whole rotation holds key 0 alone: the
    // published keyring no longer carries anything it could open.
    let Node::Cluster(_, memory) = &node else {
        unreachable!()
    };
    let away = fresh_store(memory, SecretCipher::new(&[5; 32]));
    assert_eq!(
        run_now(away.follow_keyring()).unwrap().unwrap(),
        Adopted::Missing(2)
    );
    assert!(run_now(away.device(card)).unwrap().is_err());
}
