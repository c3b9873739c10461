//! The open-challenge table under load: issuing and consuming one
//! challenge while a million others are live.
//!
//! Run: `cargo bench -p sls-benches --bench store`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::store::embedded::challenges::ChallengeTable;
use slsd::store::{Disposition, OpenChallenge, Question};

const LIVE: usize = 1_000_000;

fn open_challenge(user: &Username) -> OpenChallenge {
    OpenChallenge {
        user: user.clone(),
        device: DeviceId(7),
        question: Question::Ocra("031337".into()),
        expires_at: Timestamp(u64::MAX),
        attempts_left: 3,
    }
}

fn challenge_table(c: &mut Criterion) {
    let user = Username::new("jdoe").expect("valid name");
    let table = ChallengeTable::new(LIVE + 1024, 256);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for _ in 0..LIVE {
        let _ = table.insert(ChallengeId(rng.next_u64()), open_challenge(&user));
    }
    let mut group = c.benchmark_group("challenge_table_1m_live");
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_then_consume", |b| {
        b.iter(|| {
            let id = ChallengeId(rng.next_u64());
            let _ = table.insert(id, open_challenge(&user));
            black_box(table.resolve(id, |c| (c.attempts_left, Disposition::Remove)))
        })
    });
    group.finish();
}

criterion_group!(benches, challenge_table);
criterion_main!(benches);
