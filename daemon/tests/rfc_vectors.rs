//! Every published test vector of RFC 4226, RFC 6238 and RFC 6287, read from
//! the data files in `tests/vectors/`.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use slsd::otp::hotp::{Digits, dynamic_truncation, hotp};
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::otp::totp::{TimeStep, totp};
use slsd::otp::{HashAlgorithm, HmacKey, SecretKey};

fn load<T: for<'de> Deserialize<'de>>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Deserialize)]
struct HotpFile {
    key: String,
    digits: u32,
    vectors: Vec<HotpVector>,
}

#[derive(Deserialize)]
struct HotpVector {
    counter: u64,
    truncated: u32,
    code: String,
}

#[test]
fn rfc4226_hotp_vectors() {
    let file: HotpFile = load("rfc4226.toml");
    let secret = SecretKey::from_hex(&file.key).unwrap();
    let key = HmacKey::new(HashAlgorithm::Sha1, &secret);
    let digits = Digits::new(file.digits).unwrap();
    assert_eq!(file.vectors.len(), 10);
    for v in &file.vectors {
        let mac = key.mac(&[&v.counter.to_be_bytes()]);
        assert_eq!(
            dynamic_truncation(mac.as_bytes()),
            v.truncated,
            "counter {}",
            v.counter
        );
        assert_eq!(
            hotp(&key, v.counter, digits).as_str(),
            v.code,
            "counter {}",
            v.counter
        );
    }
}

#[derive(Deserialize)]
struct TotpFile {
    step: u64,
    digits: u32,
    keys: TotpKeys,
    vectors: Vec<TotpVector>,
}

#[derive(Deserialize)]
struct TotpKeys {
    sha1: String,
    sha256: String,
    sha512: String,
}

#[derive(Deserialize)]
struct TotpVector {
    time: u64,
    algorithm: String,
    code: String,
}

#[test]
fn rfc6238_totp_vectors() {
    let file: TotpFile = load("rfc6238.toml");
    let step = TimeStep::new(Duration::from_secs(file.step)).unwrap();
    let digits = Digits::new(file.digits).unwrap();
    assert_eq!(file.vectors.len(), 18);
    for v in &file.vectors {
        let algorithm: HashAlgorithm = v.algorithm.parse().unwrap();
        let seed = match algorithm {
            HashAlgorithm::Sha1 => &file.keys.sha1,
            HashAlgorithm::Sha256 => &file.keys.sha256,
            HashAlgorithm::Sha512 => &file.keys.sha512,
        };
        let key = HmacKey::new(algorithm, &SecretKey::from_hex(seed).unwrap());
        assert_eq!(
            totp(&key, v.time, step, digits).as_str(),
            v.code,
            "{} at {}",
            v.algorithm,
            v.time
        );
    }
}

#[derive(Deserialize)]
struct OcraFile {
    group: Vec<OcraGroup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct OcraGroup {
    section: String,
    suite: String,
    key: String,
    pin: Option<String>,
    pin_hash: Option<String>,
    timestamp: Option<String>,
    vectors: Vec<OcraVector>,
}

#[derive(Deserialize)]
struct OcraVector {
    counter: Option<u64>,
    question: String,
    response: String,
}

#[test]
fn rfc6287_ocra_vectors() {
    let file: OcraFile = load("rfc6287.toml");
    let mut checked = 0;
    for group in &file.group {
        let suite: Suite = group.suite.parse().unwrap();
        assert_eq!(
            suite.to_string(),
            group.suite,
            "suite prints back as written"
        );
        let ocra = Ocra::new(suite.clone(), &SecretKey::from_hex(&group.key).unwrap());
        let pin_hash = group.pin_hash.as_deref().map(|h| hex::decode(h).unwrap());
        if let (Some(pin), Some(expected)) = (&group.pin, &pin_hash) {
            let hashed = suite.hash_pin(pin).unwrap();
            assert_eq!(
                hashed.as_bytes(),
                expected.as_slice(),
                "PIN hash in {}",
                group.section
            );
        }
        let timestamp = group
            .timestamp
            .as_deref()
            .map(|t| u64::from_str_radix(t, 16).unwrap());
        for v in &group.vectors {
            let input = OcraInput {
                counter: v.counter,
                question: &v.question,
                pin_hash: pin_hash.as_deref(),
                session: None,
                timestamp,
            };
            let context = format!(
                "{} {} Q={} C={:?}",
                group.section, group.suite, v.question, v.counter
            );
            assert_eq!(
                ocra.respond(&input).unwrap().as_str(),
                v.response,
                "{context}"
            );
            assert!(
                ocra.verify(&input, v.response.as_bytes()).unwrap(),
                "{context}"
            );
            checked += 1;
        }
    }
    // C.1: 40, C.2: 20, C.3: 10.
    assert_eq!(checked, 70);
}

#[test]
fn rfc6287_timestamp_matches_its_date() {
    // The RFC's T = 0x132d0b6 minutes is "Mar 25 2008, 12:06:30 GMT".
    let suite: Suite = "OCRA-1:HOTP-SHA512-8:QN08-T1M".parse().unwrap();
    let step = suite.time_step().unwrap();
    assert_eq!(step.steps_at(1_206_446_790), 0x132d0b6);
}
