//! Arbitrary suite strings and inputs: parsing never panics, what parses
//! prints back as written, and computing a response never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slsd::otp::SecretKey;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};

fuzz_target!(|data: &[u8]| {
    // Layout: suite, then question, then session, separated by 0xff bytes.
    let mut fields = data.split(|&b| b == 0xff);
    let suite_bytes = fields.next().unwrap_or_default();
    let Ok(text) = std::str::from_utf8(suite_bytes) else {
        return;
    };
    let Ok(suite) = text.parse::<Suite>() else {
        return;
    };
    assert_eq!(
        suite.to_string(),
        text,
        "a parsed suite prints back as written"
    );

    let question = fields
        .next()
        .and_then(|q| std::str::from_utf8(q).ok())
        .unwrap_or("");
    let session = fields.next();
    let pin_hash = suite.hash_pin("1234");
    let input = OcraInput {
        counter: suite.uses_counter().then_some(7),
        question,
        pin_hash: pin_hash.as_ref().map(|h| h.as_bytes()),
        session: session.filter(|_| suite.session_len().is_some()),
        timestamp: suite.time_step().map(|_| 1_000),
    };
    let key = SecretKey::from_bytes(vec![0x5a; 20]).expect("20-byte key");
    if let Ok(code) = Ocra::new(suite.clone(), &key).respond(&input) {
        assert_eq!(code.len(), suite.response_len());
    }
});
