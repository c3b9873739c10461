//! The shared-state primitives (`slsd::store::cluster::redis`) against a real Redis
//! Cluster of three masters and three replicas on loopback: each promise
//! under concurrency, durable writes that wait for a replica, and a master
//! killed under them.

use std::sync::Arc;
use std::time::Duration;

use sls_sim::cluster::Cluster;
use slsd::store::cluster::redis::{Durability, Key, Op, RedisAccess, RedisError, RedisStore, Swap};

const NO_WAIT: Durability = Durability {
    replicas: 0,
    timeout: Duration::ZERO,
};
const ONE_REPLICA: Durability = Durability {
    replicas: 1,
    timeout: Duration::from_secs(2),
};

async fn store(cluster: &Cluster, durability: Durability) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::connect(&cluster.urls(), durability, &RedisAccess::default())
            .await
            .unwrap(),
    )
}

/// Runs `n` copies of `f` at once and collects their results.
async fn race<T: Send + 'static, F>(n: usize, f: impl Fn(usize) -> F) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
{
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_primitive_keeps_its_promise_under_concurrency() {
    let cluster = Cluster::start(3, 1).unwrap();
    let store = store(&cluster, NO_WAIT).await;

    // Put-with-TTL, only if absent; gone after its TTL.
    let key = Key::new("u:jdoe", "c:1");
    assert!(
        store
            .put_new(&key, b"open", Duration::from_millis(300), false)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_new(&key, b"other", Duration::from_secs(9), false)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get(&key).await.unwrap().as_deref(),
        Some(&b"open"[..])
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get(&key).await.unwrap(), None);

    // Several records of one slot changed together: of 32 racing callers
    // deleting a record at version 1, one does.
    let key = Key::new("u:jdoe", "c:2");
    assert!(
        store
            .transact(&[(&key, 0, Op::Set(b"answer".to_vec(), None))], false)
            .await
            .unwrap()
    );
    let won = race(32, |_| {
        let (store, key) = (Arc::clone(&store), key.clone());
        async move {
            store
                .transact(&[(&key, 1, Op::Delete)], false)
                .await
                .unwrap()
        }
    })
    .await;
    assert_eq!(won.iter().filter(|w| **w).count(), 1);
    assert_eq!(store.read(&key).await.unwrap().version, 0, "deleted");

    // Two records moved in lockstep by 8 writers x 20 read-decide-write
    // rounds: no round is lost and neither record ever gets ahead, because
    // a round whose read went stale writes nothing.
    let (left, right) = (Key::new("u:jdoe", "f:1"), Key::new("u:jdoe", "c:3"));
    race(8, |_| {
        let (store, left, right) = (Arc::clone(&store), left.clone(), right.clone());
        async move {
            let mut done = 0;
            while done < 20 {
                let records = store.read_many(&[&left, &right]).await.unwrap();
                let count = |i: usize| -> u64 {
                    records[i].value.as_ref().map_or(0, |v| {
                        String::from_utf8(v.clone()).unwrap().parse().unwrap()
                    })
                };
                assert_eq!(count(0), count(1), "one record got ahead");
                let next = (count(0) + 1).to_string().into_bytes();
                let changes = [
                    (&left, records[0].version, Op::Set(next.clone(), None)),
                    (&right, records[1].version, Op::Set(next, None)),
                ];
                if store.transact(&changes, false).await.unwrap() {
                    done += 1;
                }
            }
        }
    })
    .await;
    let records = store.read_many(&[&left, &right]).await.unwrap();
    for record in &records {
        assert_eq!(record.value.as_deref(), Some(&b"160"[..]));
        assert_eq!(record.version, 160);
    }
    // A version that moved on fails the whole change; the record that
    // still matched is not written either.
    let changes = [
        (&left, 160, Op::Set(b"x".to_vec(), None)),
        (&right, 159, Op::Set(b"y".to_vec(), None)),
    ];
    assert!(!store.transact(&changes, false).await.unwrap());
    assert_eq!(
        store.read(&left).await.unwrap().value.as_deref(),
        Some(&b"160"[..])
    );

    // A bounded hold: 3 of 10 racing holders get in; lapsed ones free
    // their places; a released one too. (Times are Unix milliseconds: the
    // set itself expires with its last member.)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let key = Key::new("u:jdoe", "pushes");
    let held = race(10, |i| {
        let (store, key) = (Arc::clone(&store), key.clone());
        async move {
            let until = now + if i % 2 == 0 { 1_000 } else { 2_000 };
            store.hold(&key, &[i as u8], 3, now, until).await.unwrap()
        }
    })
    .await;
    assert_eq!(held.iter().filter(|h| h.is_none()).count(), 3);
    assert!(
        held.iter()
            .flatten()
            .all(|soonest| [now + 1_000, now + 2_000].contains(soonest))
    );
    // 2.5 s on, every one has lapsed: three new ones fit again.
    let later = now + 2_500;
    for i in 20..23u8 {
        let held = store.hold(&key, &[i], 3, later, later + 60_000).await;
        assert_eq!(held.unwrap(), None);
    }
    let full = store.hold(&key, &[30], 3, later, later + 60_000).await;
    assert_eq!(full.unwrap(), Some(later + 60_000));
    store.release(&key, &[20]).await.unwrap();
    let freed = store.hold(&key, &[30], 3, later, later + 60_000).await;
    assert_eq!(freed.unwrap(), None);

    // Compare-and-swap: 8 writers × 20 increments by read-modify-swap lose
    // none.
    let key = Key::new("d:7", "record");
    race(8, |_| {
        let (store, key) = (Arc::clone(&store), key.clone());
        async move {
            let mut done = 0;
            while done < 20 {
                let record = store.read(&key).await.unwrap();
                let n: u64 = record
                    .value
                    .map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
                let next = (n + 1).to_string();
                if let Swap::Done(_) = store
                    .swap(&key, record.version, next.as_bytes(), None, false)
                    .await
                    .unwrap()
                {
                    done += 1;
                }
            }
        }
    })
    .await;
    let record = store.read(&key).await.unwrap();
    assert_eq!(record.value.as_deref(), Some(&b"160"[..]));
    assert_eq!(record.version, 160);
    assert_eq!(
        store.swap(&key, 3, b"stale", None, false).await.unwrap(),
        Swap::Conflict
    );

    // A GCRA limiter of 10 a minute (burst 10), as one node keeps it:
    // 16 racing events at one moment, exactly 10 allowed; the refused are
    // told when the next would be; a tenth of a minute later, one more.
    let key = Key::new("u:jdoe", "issued");
    let rate = slsd::ratelimit::Rate::new(10, Duration::from_secs(60), 10);
    let now = slsd::clock::Timestamp(1_800_000_000_000);
    let decisions = race(16, |_| {
        let (store, key) = (Arc::clone(&store), key.clone());
        async move { store.gcra(&key, rate, now).await.unwrap() }
    })
    .await;
    let allowed = decisions
        .iter()
        .filter(|d| **d == slsd::ratelimit::Decision::Allow)
        .count();
    assert_eq!(allowed, 10);
    let mut local = slsd::ratelimit::Gcra::default();
    for _ in 0..10 {
        local.check(rate, now);
    }
    assert_eq!(
        decisions
            .iter()
            .find(|d| **d != slsd::ratelimit::Decision::Allow),
        Some(&local.check(rate, now)),
        "the store's answer is one node's"
    );
    let later = slsd::clock::Timestamp(now.0 + 6_000);
    assert_eq!(
        store.gcra(&key, rate, later).await.unwrap(),
        slsd::ratelimit::Decision::Allow
    );
    assert!(matches!(
        store.gcra(&key, rate, later).await.unwrap(),
        slsd::ratelimit::Decision::Deny { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_wait_for_a_replica_and_survive_a_master_crash() {
    let mut cluster = Cluster::start(3, 1).unwrap();
    let store = store(&cluster, ONE_REPLICA).await;
    // More replicas than exist: the write is reported, not pretended. The
    // slot's replica first acknowledges one write of its own, so it is
    // linked and caught up: a replica just started may not answer WAIT
    // in time on a loaded machine (seen in CI as `acknowledged: 0`).
    let key = Key::new("d:1", "enrolment");
    let warm_up = Key::new("d:1", "warm-up");
    assert!(matches!(
        store.swap(&warm_up, 0, b"x", None, true).await,
        Ok(Swap::Done(_))
    ));
    let greedy = RedisStore::connect(
        &cluster.urls(),
        Durability {
            replicas: 3,
            timeout: Duration::from_millis(500),
        },
        &RedisAccess::default(),
    )
    .await
    .unwrap();
    match greedy.swap(&key, 0, b"x", None, true).await {
        Err(RedisError::NotReplicated {
            acknowledged: 1,
            wanted: 3,
        }) => {}
        other => panic!("{other:?}"),
    }

    // 300 acknowledged durable writes, spread over every master.
    let mut written = Vec::new();
    for n in 0..300u32 {
        let key = Key::new(&format!("d:{n}"), "enrolment");
        let value = format!("device {n}");
        // d:1 already holds the greedy write (it reached the master), so
        // version 0 no longer matches there; every other key is fresh.
        match store
            .swap(&key, 0, value.as_bytes(), None, true)
            .await
            .unwrap()
        {
            Swap::Done(_) => written.push((key, value)),
            Swap::Conflict => assert_eq!(n, 1, "only d:1 was written before"),
        }
    }

    // A master dies; its replica takes over.
    let masters = cluster.masters().unwrap();
    cluster.kill(masters[0]);
    cluster.wait_until_healthy().unwrap();

    // Nothing acknowledged is lost, and the store works on.
    for (key, value) in &written {
        let mut tries = 0;
        let record = loop {
            match store.read(key).await {
                Ok(record) => break record,
                // The client learns the new topology on its first errors.
                Err(_) if tries < 20 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => panic!("{error}"),
            }
        };
        assert_eq!(record.value.as_deref(), Some(value.as_bytes()), "{key:?}");
    }
    let key = Key::new("d:after", "enrolment");
    assert_eq!(
        store.swap(&key, 0, b"later", None, false).await.unwrap(),
        Swap::Done(1)
    );
}

/// Every primitive, called in one order with answers written down: run
/// against a real cluster and against `MemoryRedis`, the two lists must
/// be the same (sets are sorted first: a server lists them in any order).
async fn every_primitive(store: &RedisStore, now: slsd::clock::Timestamp) -> Vec<String> {
    use slsd::ratelimit::Rate;
    let key = |rest: &str| Key::new("u:diff", rest);
    let hour = Duration::from_secs(3600);
    let mut said = Vec::new();
    let mut say = |what: &str, answer: String| said.push(format!("{what}: {answer}"));
    let sorted = |mut members: Vec<Vec<u8>>| {
        members.sort();
        format!("{members:?}")
    };
    let (a, b, c, d) = (key("a"), key("b"), key("c"), key("d"));
    say(
        "put_new",
        format!("{:?}", store.put_new(&a, b"open", hour, false).await),
    );
    say(
        "put_new again",
        format!("{:?}", store.put_new(&a, b"x", hour, false).await),
    );
    say("put", format!("{:?}", store.put(&b, b"plain", true).await));
    say(
        "put_with_ttl",
        format!("{:?}", store.put_with_ttl(&d, b"t", hour).await),
    );
    say(
        "put_if_absent",
        format!("{:?}", store.put_if_absent(&b, b"y", false).await),
    );
    say(
        "put_if_absent new",
        format!("{:?}", store.put_if_absent(&c, b"z", false).await),
    );
    say("get", format!("{:?}", store.get(&a).await));
    say(
        "get_many",
        format!("{:?}", store.get_many(&[&a, &b, &c, &key("none")]).await),
    );
    say(
        "delete_if other",
        format!("{:?}", store.delete_if(&b, b"nope").await),
    );
    say(
        "delete_if",
        format!("{:?}", store.delete_if(&b, b"plain").await),
    );
    say(
        "delete",
        format!("{:?}", store.delete(&[&a, &b, &c, &d], false).await),
    );
    for _ in 0..2 {
        say(
            "increment",
            format!("{:?}", store.increment(&key("n"), true).await),
        );
    }

    let set = key("set");
    for member in [b"2", b"1", b"2"] {
        say(
            "set_add",
            format!("{:?}", store.set_add(&set, member, false).await),
        );
    }
    say("members", sorted(store.members(&set).await.unwrap()));
    say(
        "set_remove",
        format!("{:?}", store.set_remove(&set, b"2", false).await),
    );
    say("members", sorted(store.members(&set).await.unwrap()));

    let queue = key("queue");
    for value in [&b"first"[..], b"second", b"third"] {
        say(
            "push_back",
            format!("{:?}", store.push_back(&queue, value, hour).await),
        );
    }
    say(
        "pop_front",
        format!("{:?}", store.pop_front(&queue, 1).await),
    );
    say(
        "pop_front 5",
        format!("{:?}", store.pop_front(&queue, 5).await),
    );
    say(
        "pop_front empty",
        format!("{:?}", store.pop_front(&queue, 1).await),
    );
    let waiter = store.dedicated().await.unwrap();
    let wait = Duration::from_millis(100);
    say(
        "pop waiting",
        format!("{:?}", waiter.pop_front_waiting(&queue, 2, wait).await),
    );
    say(
        "push_back",
        format!("{:?}", store.push_back(&queue, b"late", hour).await),
    );
    say(
        "pop waiting",
        format!("{:?}", waiter.pop_front_waiting(&queue, 2, wait).await),
    );

    let hash = key("hash");
    say(
        "set_field",
        format!("{:?}", store.set_field(&hash, "x", Some(5)).await),
    );
    say(
        "set_field",
        format!("{:?}", store.set_field(&hash, "y", Some(7)).await),
    );
    let mut values = store.field_values(&hash).await.unwrap();
    values.sort_unstable();
    say("field_values", format!("{values:?}"));
    say(
        "unset_field",
        format!("{:?}", store.set_field(&hash, "x", None).await),
    );
    say(
        "field_values",
        format!("{:?}", store.field_values(&hash).await),
    );

    // Versioned records: swap, transact (set, link, keep, delete), reads.
    let (r1, r2, r3) = (key("r1"), key("r2"), key("f:7"));
    say("read absent", format!("{:?}", store.read(&r1).await));
    say(
        "swap",
        format!("{:?}", store.swap(&r1, 0, b"v1", None, true).await),
    );
    say(
        "swap stale",
        format!("{:?}", store.swap(&r1, 0, b"v0", None, false).await),
    );
    let ttl = Some(hour);
    say(
        "swap ttl",
        format!("{:?}", store.swap(&r1, 1, b"v2", ttl, false).await),
    );
    say(
        "swap f:7",
        format!("{:?}", store.swap(&r3, 0, b"seven", None, false).await),
    );
    let links = vec![r3.as_str().to_owned(), key("absent").as_str().to_owned()];
    let changes = [
        (&r1, 2, Op::Keep),
        (&r2, 0, Op::Link(b"linked".to_vec(), ttl, links)),
    ];
    say(
        "transact",
        format!("{:?}", store.transact(&changes, true).await),
    );
    say(
        "transact stale",
        format!("{:?}", store.transact(&changes, false).await),
    );
    say(
        "read_many",
        format!("{:?}", store.read_many(&[&r1, &r2, &r3]).await),
    );
    say("read_linked", format!("{:?}", store.read_linked(&r2).await));
    let plain = [(&r2, 1, Op::Set(b"unlinked".to_vec(), None))];
    say(
        "transact set",
        format!("{:?}", store.transact(&plain, false).await),
    );
    say(
        "read_linked kept",
        format!("{:?}", store.read_linked(&r2).await),
    );
    let ids = key("ids");
    for id in [b"7", b"8"] {
        say(
            "set_add id",
            format!("{:?}", store.set_add(&ids, id, false).await),
        );
    }
    let per_id = key("f:");
    say(
        "read_set",
        format!(
            "{:?}",
            store.read_set(&ids, &[&r1], &[per_id.as_str()]).await
        ),
    );
    let gone = [(&r1, 2, Op::Delete)];
    say(
        "transact delete",
        format!("{:?}", store.transact(&gone, false).await),
    );

    // Limits: GCRA alone, with a read, with a write; held things; a
    // bounded ledger; the log.
    let rate = Rate::new(2, Duration::from_secs(60), 2);
    for step in 0..4u64 {
        let at = slsd::clock::Timestamp(now.0 + step * 1000);
        say(
            "gcra",
            format!("{:?}", store.gcra(&key("g1"), rate, at).await),
        );
    }
    say(
        "gcra_and_read",
        format!(
            "{:?}",
            store
                .gcra_and_read(&key("g2"), rate, now, &[&r2, &r3])
                .await
        ),
    );
    let write = [(&r3, 1, Op::Set(b"eight".to_vec(), None))];
    say(
        "gcra_and_transact",
        format!(
            "{:?}",
            store
                .gcra_and_transact(&key("g3"), rate, now, &write, &[&r2], false)
                .await
        ),
    );
    say(
        "gcra_and_transact stale",
        format!(
            "{:?}",
            store
                .gcra_and_transact(&key("g3"), rate, now, &write, &[&r2, &r3], false)
                .await
        ),
    );
    say(
        "gcra_and_transact limited",
        format!(
            "{:?}",
            store
                .gcra_and_transact(&key("g3"), rate, now, &write, &[&r2], false)
                .await
        ),
    );
    let held = key("held");
    for member in [b"p1", b"p2", b"p3"] {
        let until = now.0 + 60_000;
        say(
            "hold",
            format!("{:?}", store.hold(&held, member, 2, now.0, until).await),
        );
    }
    say(
        "release",
        format!("{:?}", store.release(&held, b"p1").await),
    );
    say(
        "hold again",
        format!("{:?}", store.hold(&held, b"p3", 2, now.0, now.0 + 1).await),
    );
    let (today, earlier) = (key("w:2"), vec![key("w:1")]);
    say(
        "put day 1",
        format!("{:?}", store.put(&earlier[0], b"300", false).await),
    );
    for amount in [500, 300, 100] {
        let limits = (Some(900), Some(1100));
        say(
            "add_under_limits",
            format!(
                "{:?}",
                store
                    .add_under_limits(&today, &earlier, amount, limits, hour)
                    .await
            ),
        );
    }
    for entry in [b"e1", b"e2", b"e3"] {
        say(
            "append_log",
            format!(
                "{:?}",
                store.append_log(&key("seq"), &key("log"), entry).await
            ),
        );
    }
    say(
        "range",
        format!("{:?}", store.range(&key("log"), 0, 10).await),
    );
    say(
        "range 1..",
        format!("{:?}", store.range(&key("log"), 1, 1).await),
    );
    for (index, old, new) in [(1, b"e2", b"E2"), (1, b"e2", b"X2"), (9, b"e2", b"X9")] {
        say(
            "set_at_if",
            format!("{:?}", store.set_at_if(&key("log"), index, old, new).await),
        );
    }
    say(
        "set_at_if on no list",
        format!("{:?}", store.set_at_if(&key("none"), 0, b"", b"X").await),
    );
    say(
        "range after set_at_if",
        format!("{:?}", store.range(&key("log"), 0, 10).await),
    );
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_answers_as_a_real_cluster_does() {
    let cluster = Cluster::start(3, 1).unwrap();
    let real = store(&cluster, ONE_REPLICA).await;
    let memory = Arc::new(slsd::store::cluster::memory::MemoryRedis::new());
    let now = slsd::clock::now();
    memory.set_now(now);
    let in_memory = RedisStore::in_memory(Arc::clone(&memory));
    let expected = every_primitive(&real, now).await;
    let answered = every_primitive(&in_memory, now).await;
    for (server, ours) in expected.iter().zip(&answered) {
        assert_eq!(ours, server, "MemoryRedis differs from Redis");
    }
    assert_eq!(answered.len(), expected.len());
    // Each call was one command, as it is one round trip to a server.
    assert_eq!(memory.commands(), expected.len() as u64);
}
