//! What the in-process tests share: an engine over a real registry in a
//! data directory, as `slsd serve` opens it, and one over the cluster
//! store on Redis in memory.

#![allow(dead_code)] // each test binary uses its own part of the helpers

pub mod hotp;
pub mod nodes;

use std::path::Path;
use std::sync::Arc;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::config::Config;
use slsd::engine::Engine;
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;

/// The engine over the registry in `dir` (created on first use; opened
/// again, it holds what was committed).
pub fn open_engine(dir: &Path, config: Config) -> Engine {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let cipher = SecretCipher::load_or_create(&dir.join("secrets.key"), &mut rng).unwrap();
    let registry =
        Registry::open(&dir.join("registry.redb"), cipher, config.devices.clone()).unwrap();
    Engine::new(Arc::new(config), Arc::new(registry), &mut rng)
}

/// An engine on the cluster store over Redis in memory (its clock set to
/// `now`), and that Redis, whose writes a test can make lose.
pub fn open_cluster_engine(
    dir: &Path,
    config: Config,
    now: slsd::clock::Timestamp,
) -> (Engine, Arc<slsd::store::cluster::memory::MemoryRedis>) {
    let memory = Arc::new(slsd::store::cluster::memory::MemoryRedis::new());
    memory.set_now(now);
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let engine = open_engine(dir, config)
        .with_memory_cluster(Arc::clone(&memory), SecretCipher::new(&[5; 32]), &mut rng)
        .unwrap();
    (engine, memory)
}
