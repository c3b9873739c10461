//! What the in-process tests share: an engine over a real registry in a
//! data directory, as `slsd serve` opens it.

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
