//! What a login costs the cluster store, counted exactly: two nodes of one
//! deployment on a Redis Cluster in memory (`store::cluster::memory`, the
//! same commands and scripts a real cluster answers, one command per round
//! trip), a code card enrolled, and `Devices`, `Challenge` and `Verify`
//! with the commands each sends. The goal (issue "one engine"): a complete
//! login in at most four round trips. It fails when a step costs one more.

use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine, Role};
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::card::CodeCard;
use slsd::profile::DeviceKind;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;
use slsd::wire::request::Answer;
use slsd::wire::{ChallengeText, EnrollRequest, Operation, Reply, Verdict};

const T0: Timestamp = Timestamp(1_800_000_000_000);
const KEY: [u8; 32] = [9; 32];

struct Deployment {
    memory: Arc<MemoryRedis>,
    nodes: [Engine; 2],
    card: CodeCard,
    device: DeviceId,
    _dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml("").unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let cipher = SecretCipher::load_or_create(&dir.path().join("k"), &mut rng).unwrap();
        let registry = Arc::new(
            Registry::open(&dir.path().join("r.redb"), cipher, config.devices.clone()).unwrap(),
        );
        let memory = Arc::new(MemoryRedis::new());
        memory.set_now(T0);
        let node = |seed| {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            Engine::new(Arc::new(config.clone()), Arc::clone(&registry), &mut rng)
                .with_memory_cluster(Arc::clone(&memory), SecretCipher::new(&[5; 32]), &mut rng)
                .unwrap()
        };
        let mut deployment = Self {
            nodes: [node(2), node(3)],
            memory,
            card: CodeCard::new(&SecretKey::from_bytes(KEY.to_vec()).unwrap(), 224).unwrap(),
            device: DeviceId(0),
            _dir: dir,
        };
        let enrol = Operation::Enroll(EnrollRequest {
            user: Username::new("jdoe").unwrap(),
            kind: DeviceKind::Scc,
            secret: Some(SecretKey::from_bytes(KEY.to_vec()).unwrap()),
            pin: None,
            label: String::new(),
        });
        let Reply::Enrolled { device, .. } = deployment.call(0, Role::Admin, enrol) else {
            panic!("enrolled");
        };
        deployment.device = device;
        deployment
    }

    fn call(&self, node: usize, role: Role, operation: Operation) -> Reply {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let caller = Caller::detached(role);
        let handled = self.nodes[node].handle_on_cluster(&caller, operation, T0, &mut rng);
        run_now(handled).unwrap().unwrap()
    }

    /// `operation` on `node`, and the store commands it sent.
    fn counted(&self, node: usize, operation: Operation) -> (Reply, u64) {
        let before = self.memory.commands();
        let reply = self.call(node, Role::Gateway, operation);
        (reply, self.memory.commands() - before)
    }

    /// A login: `Devices` on `listing`, `Challenge` on `asking`, `Verify`
    /// on `verifying`; the round trips of each step.
    fn login(&self, listing: usize, asking: usize, verifying: usize) -> [u64; 3] {
        let user = Username::new("jdoe").unwrap();
        let (devices, listed) = self.counted(listing, Operation::Devices { user: user.clone() });
        assert!(matches!(devices, Reply::Devices { .. }), "{devices:?}");
        let operation = Operation::Challenge {
            user,
            device: self.device,
        };
        let (reply, asked) = self.counted(asking, operation);
        let Reply::Challenge {
            challenge,
            text: ChallengeText::CardPositions(a, b),
            ..
        } = reply
        else {
            panic!("a card challenge: {reply:?}");
        };
        let (verdict, verified) = self.verify(verifying, challenge, &[a, b]);
        assert!(matches!(verdict, Verdict::Accepted { .. }), "{verdict:?}");
        [listed, asked, verified]
    }

    fn verify(&self, node: usize, challenge: ChallengeId, positions: &[u16]) -> (Verdict, u64) {
        let answer = self.card.codes_at(positions).unwrap().to_string();
        let operation = Operation::Verify {
            challenge,
            response: Answer::new(&answer),
        };
        match self.counted(node, operation) {
            (Reply::Verdict(verdict), trips) => (verdict, trips),
            (other, _) => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_login_costs_three_round_trips_on_one_node_and_four_when_answered_on_another() {
    let deployment = Deployment::new();
    // The first login of a node reads the device record itself (then keeps
    // it for `store.cache-ttl`); the ones after are the steady state.
    deployment.login(0, 0, 0);
    deployment.login(1, 1, 1);
    let on_one = deployment.login(0, 0, 0);
    let verified_elsewhere = deployment.login(0, 0, 1);
    let each_elsewhere = deployment.login(1, 0, 1);
    println!(
        "one node: {on_one:?}; Verify on the other: {verified_elsewhere:?}; \
         each step on another node: {each_elsewhere:?}"
    );
    // Devices reads the user's records in one script; Challenge decides on
    // them and writes in one; Verify on the node that asked likewise.
    assert_eq!(on_one, [1, 1, 1], "Devices, Challenge, Verify on one node");
    // Another node reads the challenge and its records by the id (the id
    // names their slot), then writes.
    assert_eq!(verified_elsewhere, [1, 1, 2]);
    // The worst routing: the node that asks read the records last before
    // the other node's Verify changed them, so its write finds them moved
    // and the records come back with the refusal (one more round trip);
    // Verify is on another node again. A gateway keeps its connection on
    // one node, so its logins are the first case.
    assert_eq!(each_elsewhere, [1, 2, 2]);
}
