//! One engine on each store, called alike: the embedded registry, and the
//! cluster store on Redis in memory with another node winning every other
//! write (so each change is decided again on what that node wrote).

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine};
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::sealed::SecretCipher;
use slsd::wire::{Operation, Reply};

pub const T0: Timestamp = Timestamp(1_800_000_000_000);

pub enum Node {
    Embedded(Engine),
    Cluster(Engine, Arc<MemoryRedis>),
}

fn config() -> Config {
    Config::from_toml("[challenges]\nper-user-per-minute = 1000").unwrap()
}

thread_local! {
    /// Calls so far: each draws from a randomness of its own.
    static CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Node {
    /// A node of each store, with `[challenges] per-user-per-minute =
    /// 1000` (tests log in often).
    pub fn both() -> Vec<(Node, tempfile::TempDir)> {
        let config = config();
        let dir = tempfile::tempdir().unwrap();
        let embedded = Node::Embedded(super::open_engine(dir.path(), config.clone()));
        let cluster_dir = tempfile::tempdir().unwrap();
        let (engine, memory) = super::open_cluster_engine(cluster_dir.path(), config, T0);
        vec![
            (embedded, dir),
            (Node::Cluster(engine, memory), cluster_dir),
        ]
    }

    /// Another node of this node's cluster (its own engine and caches,
    /// the same Redis); `None` for the embedded store.
    pub fn another(&self, dir: &std::path::Path) -> Option<Node> {
        let Node::Cluster(_, memory) = self else {
            return None;
        };
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let other = super::open_engine(dir, config())
            .with_memory_cluster(Arc::clone(memory), SecretCipher::new(&[5; 32]), &mut rng)
            .unwrap();
        Some(Node::Cluster(other, Arc::clone(memory)))
    }

    /// A node named `name` on `memory` whose release reads records up to
    /// format `release` (a test plays two releases with it), started as
    /// the server starts one: the deployment's format checked first.
    pub fn playing(
        memory: &Arc<MemoryRedis>,
        dir: &std::path::Path,
        release: u64,
        name: &str,
    ) -> Result<Node, slsd::store::StoreError> {
        use slsd::store::cluster::ClusterStore;
        use slsd::store::cluster::redis::RedisStore;
        let config = config();
        let codec = slsd::store::records::DeviceCodec::new(
            SecretCipher::new(&[5; 32]),
            config.devices.clone(),
        );
        let redis = RedisStore::in_memory(Arc::clone(memory));
        let store =
            ClusterStore::new(redis, codec, config.store.cache_ttl).playing_release(release);
        run_now(store.check_format()).unwrap()?;
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let code_key = run_now(store.sms_code_key(&mut rng)).unwrap()?;
        let engine = super::open_engine(dir, config).with_cluster(store, &code_key, name.into());
        Ok(Node::Cluster(engine, Arc::clone(memory)))
    }

    pub fn call_at(&self, operation: Operation, now: Timestamp) -> Reply {
        let call = CALLS.replace(CALLS.get() + 1);
        let mut rng = ChaCha20Rng::seed_from_u64(call);
        // Each call a tenth of a second after the one before (a person at
        // a login), so the per-user issuance limit lets them through.
        let now = now.plus(Duration::from_millis(100 * (call % 100)));
        // Each operation as its role asks it.
        let caller = Caller::detached(operation.role());
        match self {
            Node::Embedded(engine) => {
                engine
                    .handle_from(&caller, operation, now, &mut rng)
                    .unwrap()
                    .reply
            }
            Node::Cluster(engine, memory) => {
                memory.set_now(now);
                // Another node wins every other write on existing records.
                memory.interfere(2);
                run_now(engine.handle_on_cluster(&caller, operation, now, &mut rng))
                    .unwrap()
                    .unwrap()
            }
        }
    }

    pub fn call(&self, operation: Operation) -> Reply {
        self.call_at(operation, T0)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Node::Embedded(_) => "embedded",
            Node::Cluster(..) => "cluster",
        }
    }
}
