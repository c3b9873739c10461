//! Arbitrary text as a configuration file: parsing never panics; a file
//! that parses gives a configuration whose limits are within their ranges,
//! and a refused one names what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slsd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text) {
        Ok(config) => {
            assert!((1..=10).contains(&config.challenges.attempts));
            assert!(config.server.max_frame <= slsd::wire::MAX_FRAME_LIMIT);
            assert!(config.lockout.first <= config.lockout.max);
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
