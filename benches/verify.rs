//! Verification throughput of the otp core: one operation per iteration.
//!
//! - `ocra_dsc_plus`: a DSC+ answer checked (OCRA-1:HOTP-SHA256-8:QN06-PSHA1
//!   response computed, then compared in constant time), with the key's
//!   HMAC state precomputed at enrolment vs. re-keyed on every check.
//! - `scc`: a security code card answer (two 3-digit codes) checked.
//! - `code_generation`: a 6-digit SMS code drawn from the OS generator, and
//!   from a ChaCha20 generator seeded by it.
//!
//! Run: `cargo bench -p sls-benches --bench verify`. Criterion reports time
//! per operation and operations per second (`thrpt`).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand_chacha::ChaCha20Rng;
use slsd::otp::SecretKey;
use slsd::otp::card::{CodeCard, DEFAULT_POSITIONS};
use slsd::otp::generate::{Alphabet, CodeSpec};
use slsd::otp::ocra::{Ocra, OcraInput, Suite};

const DSC_PLUS_SUITE: &str = "OCRA-1:HOTP-SHA256-8:QN06-PSHA1";

fn key() -> SecretKey {
    SecretKey::from_bytes((0u8..32).collect()).expect("32-byte key")
}

fn ocra_dsc_plus(c: &mut Criterion) {
    let suite: Arc<Suite> = Arc::new(DSC_PLUS_SUITE.parse().expect("DSC+ suite"));
    let secret = key();
    let pin_hash = suite.hash_pin("4821").expect("suite binds a PIN");
    let input = OcraInput {
        question: "031337",
        pin_hash: Some(pin_hash.as_bytes()),
        ..OcraInput::default()
    };
    let enrolled = Ocra::new(Arc::clone(&suite), &secret);
    let answer = enrolled.respond(&input).expect("valid input");

    let mut group = c.benchmark_group("ocra_dsc_plus");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_precomputed_key", |b| {
        b.iter(|| enrolled.verify(black_box(&input), black_box(answer.as_bytes())))
    });
    group.bench_function("verify_rekeyed_each_time", |b| {
        b.iter(|| {
            let ocra = Ocra::new(Arc::clone(&suite), black_box(&secret));
            ocra.verify(black_box(&input), black_box(answer.as_bytes()))
        })
    });
    group.finish();
}

fn scc(c: &mut Criterion) {
    let card = CodeCard::new(&key(), DEFAULT_POSITIONS).expect("card");
    let challenge = card.challenge(17, 203).expect("distinct positions");
    let answer = card.response(challenge).expect("on the card");

    let mut group = c.benchmark_group("scc");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify", |b| {
        b.iter(|| card.verify(black_box(challenge), black_box(answer.as_bytes())))
    });
    group.finish();
}

fn code_generation(c: &mut Criterion) {
    let spec = CodeSpec::new(Alphabet::digits(), 6).expect("6 digits");
    let mut os = UnwrapErr(SysRng);
    let mut chacha = ChaCha20Rng::from_rng(&mut os);

    let mut group = c.benchmark_group("code_generation");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sms_6_digits_os_rng", |b| b.iter(|| spec.generate(&mut os)));
    group.bench_function("sms_6_digits_chacha20", |b| {
        b.iter(|| spec.generate(&mut chacha))
    });
    group.finish();
}

fn report_machine(_: &mut Criterion) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    eprintln!("machine: {cores} cores; each benchmark runs on one thread");
}

criterion_group!(benches, report_machine, ocra_dsc_plus, scc, code_generation);
criterion_main!(benches);
