//! Arbitrary bytes as a vendor's PSKC file, opened with nothing, the RFC's
//! pre-shared key or its password (the first byte picks): reading never
//! panics, and what it returns keeps the import's promises — at most the
//! limit of tokens, every key long enough, no serial twice. A refused file
//! says why.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use slsd::otp::SecretKey;
use slsd::pskc::{self, Limits, Opening};

const LIMITS: Limits = Limits {
    max_tokens: 8,
    min_key_bytes: 16,
};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let psk =
        SecretKey::from_array(*b"\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12\x34\x56\x78\x90\x12");
    let opening = match pick % 3 {
        0 => Opening::Nothing,
        1 => Opening::PreSharedKey(&psk),
        _ => Opening::Password(b"qwerty"),
    };
    match pskc::read(file, opening, &LIMITS) {
        Ok(tokens) => {
            assert!(!tokens.is_empty() && tokens.len() <= LIMITS.max_tokens);
            let mut serials = HashSet::new();
            for token in &tokens {
                assert!(token.key.len() >= LIMITS.min_key_bytes);
                assert!(serials.insert(token.serial.clone()), "serial twice");
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
