//! Hostile networks against the real daemon over QUIC on loopback: clients
//! that never finish their handshakes, that hold every stream open and
//! stall, that announce a large frame and trickle it, that flood past their
//! rate, and 10,000 connections coming and going. In each case a
//! well-behaved gateway keeps its normal service (p99 under a generous
//! bound on this 2-core machine, where the attacker shares the cores), the
//! daemon's memory stays bounded, and what was durable before is still
//! there after a restart.
//!
//! The tests take turns (one lock) so that one attack does not spoil
//! another's latency numbers.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sls_sim::client::{Client, Pipeline};
use slsd::engine::Role;
use slsd::identity::{DeviceId, Username};
use slsd::profile::DeviceKind;
use slsd::wire::Page;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{EnrollRequest, ErrorCode, Operation, Reply, Verdict};
use support::daemon::Daemon;
use tokio::sync::Mutex;

/// One hostile test at a time.
static TURN: Mutex<()> = Mutex::const_new(());

/// The well-behaved gateway's p99 must stay under this during an attack.
const P99_BOUND: Duration = Duration::from_millis(50);
/// The daemon may grow by at most this much during an attack.
const RSS_GROWTH_BOUND_KB: u64 = 128 * 1024;

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

/// The daemon's resident memory, from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0)
}

/// What must survive: a DSC+ for "jdoe", locked out by five wrong answers.
async fn durable_state(daemon: &Daemon) -> DeviceId {
    let admin = daemon.client(Role::Admin).await;
    let Reply::Enrolled { device, .. } = admin
        .call(Operation::Enroll(EnrollRequest {
            user: user("jdoe"),
            kind: DeviceKind::DscPlus,
            secret: None,
            pin: Some(Pin::new("4821")),
            label: "card".into(),
        }))
        .await
        .unwrap()
    else {
        panic!("enrol")
    };
    let gateway = daemon.client(Role::Gateway).await;
    let mut locked = false;
    for _ in 0..5 {
        let Reply::Challenge { challenge, .. } = gateway
            .call(Operation::Challenge {
                user: user("jdoe"),
                device,
            })
            .await
            .unwrap()
        else {
            panic!("challenge")
        };
        let reply = gateway
            .call(Operation::Verify {
                challenge,
                response: Answer::new("00000000"),
            })
            .await
            .unwrap();
        locked = matches!(reply, Reply::Verdict(Verdict::LockedOut { .. }));
    }
    assert!(locked, "five failures lock the card");
    device
}

/// After the attack: a restart, and the card and its lockout are there.
async fn assert_durable(daemon: Daemon, device: DeviceId) {
    // Stopping and starting the process blocks; the runtime lends this
    // worker for it.
    let daemon = tokio::task::block_in_place(|| daemon.restart());
    let admin = daemon.client(Role::Admin).await;
    let Reply::Devices { devices, .. } = admin
        .call(Operation::ListDevices {
            user: user("jdoe"),
            page: Page::first(500),
        })
        .await
        .unwrap()
    else {
        panic!("list")
    };
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].device, device);
    assert!(
        devices[0].locked_for > Duration::ZERO,
        "the lockout survived"
    );
}

/// A well-behaved gateway asking every 2 ms, on its own connection opened
/// before the attack, timing every request.
struct Probe {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<Duration>, u64)>,
}

impl Probe {
    async fn start(daemon: &Daemon) -> Self {
        let client = daemon.client(Role::Gateway).await;
        let pipeline = client.pipeline(16).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let _client = client;
            let mut samples = Vec::new();
            let mut failures = 0;
            while !flag.load(Ordering::Relaxed) {
                let sent = Instant::now();
                match pipeline
                    .call(Operation::Devices {
                        user: user("probe"),
                    })
                    .await
                {
                    Ok(Reply::Devices { .. }) => samples.push(sent.elapsed()),
                    _ => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (samples, failures)
        });
        Self { stop, task }
    }

    /// Stops and checks the service the probe saw.
    async fn finish(self, attack: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut samples, failures) = self.task.await.unwrap();
        assert_eq!(failures, 0, "{attack}: the well-behaved gateway got errors");
        samples.sort();
        assert!(
            samples.len() > 50,
            "{attack}: only {} answers, the slowest {:?}",
            samples.len(),
            samples.last()
        );
        let p99 = samples[samples.len() * 99 / 100];
        eprintln!(
            "{attack}: {} probe requests, p50 {:?}, p99 {p99:?}, max {:?}",
            samples.len(),
            samples[samples.len() / 2],
            samples[samples.len() - 1]
        );
        assert!(p99 < P99_BOUND, "{attack}: p99 {p99:?} under attack");
    }
}

fn assert_memory_bounded(daemon: &Daemon, before_kb: u64, attack: &str) {
    let after = rss_kb(daemon.pid());
    eprintln!("{attack}: daemon RSS {before_kb} kB before, {after} kB after");
    assert!(
        after < before_kb + RSS_GROWTH_BOUND_KB,
        "{attack}: RSS grew from {before_kb} kB to {after} kB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_do_not_hold_the_service() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "max-connections = 64\nhandshake-timeout = \"1s\"",
        "",
    );
    let device = durable_state(&daemon).await;
    let before = rss_kb(daemon.pid());
    let probe = Probe::start(&daemon).await;

    // Handshakes that are started and never answered: real clients' first
    // packets (Initials, caught on a socket of ours, each a new connection
    // by its own connection id) sent to the daemon from sockets that never
    // read or answer, about a thousand a second.
    let crypto = Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(daemon.tls(Role::Gateway)).unwrap(),
    );
    let catcher = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // One client endpoint starts 4,000 connections to the catcher: 4,000
    // distinct Initials (each its own connection id), so the flood keeps
    // starting new handshakes for its whole length.
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(crypto.clone()));
    let mut pending = Vec::new();
    for _ in 0..4000 {
        pending.push(
            endpoint
                .connect(catcher.local_addr().unwrap(), "localhost")
                .unwrap(),
        );
    }
    let mut initials = std::collections::HashSet::new();
    while initials.len() < pending.len() {
        let mut initial = vec![0u8; 2048];
        let (len, _) = catcher.recv_from(&mut initial).await.unwrap();
        initial.truncate(len);
        initials.insert(initial);
    }
    drop((pending, endpoint));
    let initials: Vec<Vec<u8>> = initials.into_iter().collect();
    let flooding = Arc::new(AtomicBool::new(true));
    let target = daemon.quic;
    let flood = {
        let flooding = Arc::clone(&flooding);
        std::thread::spawn(move || {
            // Sixteen silent sockets, kept open so no port-unreachable
            // ends anything early.
            let silent: Vec<std::net::UdpSocket> = (0..16)
                .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
                .collect();
            let started = Instant::now();
            let mut sent = 0usize;
            while flooding.load(Ordering::Relaxed) {
                let initial = &initials[sent % initials.len()];
                silent[sent % silent.len()]
                    .send_to(initial, target)
                    .unwrap();
                sent += 1;
                if sent.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            (sent, started.elapsed())
        })
    };
    // During the flood, thirteen new gateway connections, one every 200 ms,
    // each with a request.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut connected = 0;
    for _ in 0..13 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let attempt = async {
            let gateway = Client::connect_with(daemon.quic, daemon.tls(Role::Gateway)).await?;
            gateway.call(Operation::Devices { user: user("x") }).await
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(Reply::Devices { .. })) => connected += 1,
            other => eprintln!("a gateway during the flood: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    flooding.store(false, Ordering::Relaxed);
    let (sent, took) = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    eprintln!(
        "half-open handshakes: {sent} Initials in {took:?} ({:.0}/s); {connected} of 13 new gateways connected during the flood",
        sent as f64 / took.as_secs_f64()
    );
    assert!(
        sent as f64 / took.as_secs_f64() > 500.0,
        "a flood, not a trickle"
    );
    assert!(
        connected >= 12,
        "{connected} of 13 gateways connected during the flood"
    );
    probe.finish("half-open handshakes").await;
    assert_memory_bounded(&daemon, before, "half-open handshakes");
    // They reached the daemon: beyond the first handshakes, each was sent a
    // Retry, and the handshakes it did start timed out.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let metrics = tokio::task::block_in_place(|| daemon.metrics_text());
    for reason in ["retry", "timeout"] {
        let line = format!("sls_rejected_handshakes_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "no {line} in\n{metrics}");
    }

    // Their slots came back after the handshake timeout: a new gateway
    // connects although thousands of handshakes were started against a cap
    // of 64.
    let late = Client::connect_with(daemon.quic, daemon.tls(Role::Gateway))
        .await
        .expect("a new connection after the half-open ones timed out");
    assert!(matches!(
        late.call(Operation::Devices { user: user("x") }).await,
        Ok(Reply::Devices { .. })
    ));
    assert_durable(daemon, device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_and_trickled_frames_hold_only_their_own_connection() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "max-streams-per-connection = 64\nmax-frame = 4096",
        "",
    );
    let device = durable_state(&daemon).await;
    let before = rss_kb(daemon.pid());
    let probe = Probe::start(&daemon).await;

    // Eight connections each open every stream they may and send half a
    // frame header on each, then stall.
    let mut stallers = Vec::new();
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let client = daemon.client(Role::Gateway).await;
        for _ in 0..64 {
            let mut stream = client.stream().await.unwrap();
            stream.send_raw(&[0, 0]).await.unwrap();
            stalled.push(stream);
        }
        stallers.push(client);
    }
    // Eight more announce a frame of the largest allowed size and trickle
    // it, one byte every 10 ms, on 16 streams each.
    let mut tricklers = Vec::new();
    for _ in 0..8 {
        let client = daemon.client(Role::Gateway).await;
        for _ in 0..16 {
            let mut stream = client.stream().await.unwrap();
            tricklers.push(tokio::spawn(async move {
                stream.send_raw(&4096u32.to_be_bytes()).await.unwrap();
                for _ in 0..150 {
                    if stream.send_raw(&[0x41]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                stream
            }));
        }
        stallers.push(client);
    }
    let mut trickled = Vec::new();
    for t in tricklers {
        trickled.push(t.await.unwrap());
    }
    // A stalled connection cannot open more streams than its cap.
    let over = tokio::time::timeout(Duration::from_millis(300), stallers[0].stream()).await;
    assert!(over.is_err(), "a 65th stream must wait for a free one");
    probe.finish("stalled streams and trickled frames").await;
    assert_memory_bounded(&daemon, before, "stalled streams and trickled frames");
    drop((stalled, trickled, stallers));
    assert_durable(daemon, device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_throttled_and_others_are_not() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "requests-per-connection-per-second = 2000",
        "",
    );
    let device = durable_state(&daemon).await;
    let before = rss_kb(daemon.pid());
    let probe = Probe::start(&daemon).await;

    // For two seconds, one connection sends rounds of 20,000 pipelined
    // requests as fast as it can.
    let flooder = daemon.client(Role::Gateway).await;
    let flood: Pipeline = flooder.pipeline(20_000).await.unwrap();
    let (mut served, mut limited) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..20_000 {
            let flood = flood.clone();
            calls.spawn(async move {
                flood
                    .call(Operation::Devices {
                        user: user("flood"),
                    })
                    .await
            });
        }
        while let Some(done) = calls.join_next().await {
            match done.unwrap().unwrap() {
                Reply::Devices { .. } => served += 1,
                Reply::Error {
                    code: ErrorCode::RateLimited,
                    ..
                } => limited += 1,
                other => panic!("flood answered {other:?}"),
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("flood: {served} served, {limited} refused RateLimited");
    // 2,000 a second with a burst of 2,000: what it may have, and no more.
    let allowed = (2000.0 * (seconds + 1.0)) as u64;
    assert!(served <= allowed, "{served} served in {seconds:.1} s");
    assert!(served >= 2000, "within its rate it is served: {served}");
    assert!(limited > 5 * served, "the flood was throttled: {limited}");
    // The probe, on its own connection at 500 requests/s, saw no refusal.
    probe.finish("one connection flooding").await;
    assert_memory_bounded(&daemon, before, "one connection flooding");
    assert_durable(daemon, device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_come_and_go() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "", "");
    let device = durable_state(&daemon).await;
    let before = rss_kb(daemon.pid());
    let probe = Probe::start(&daemon).await;

    let started = Instant::now();
    let tls = daemon.tls(Role::Gateway);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    // Eight at a time: the client's handshakes share the daemon's two cores.
    for _ in 0..8 {
        let (tls, next, addr) = (tls.clone(), Arc::clone(&next), daemon.quic);
        workers.spawn(async move {
            let mut answered = 0;
            while next.fetch_add(1, Ordering::Relaxed) < 10_000 {
                let client = Client::connect_with(addr, tls.clone()).await.unwrap();
                if let Ok(Reply::Devices { .. }) = client
                    .call(Operation::Devices {
                        user: user("churn"),
                    })
                    .await
                {
                    answered += 1;
                }
                client.close();
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(done) = workers.join_next().await {
        answered += done.unwrap();
    }
    let took = started.elapsed();
    eprintln!("churn: 10000 connections in {took:?}");
    assert_eq!(answered, 10_000);
    assert!(took < Duration::from_secs(120), "churn took {took:?}");
    probe.finish("connection churn").await;
    assert_memory_bounded(&daemon, before, "connection churn");
    assert_durable(daemon, device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_flooding_registry_changes_leaves_the_operators_their_slots() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // One waiting registry change per role, and one worker: the phone's
    // flood keeps its own slot full the whole time.
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "",
        "[store]\nchanges-in-flight = 1\nchange-workers = 1\n",
    );
    let phone = daemon.client(Role::Phone).await;
    let flood: Pipeline = phone.pipeline(4096).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let signer = slsd::otp::push::PushSigner::from_seed([3; 32]);
            let (mut busy, mut other) = (0u64, 0u64);
            let mut next = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let mut calls = tokio::task::JoinSet::new();
                for _ in 0..500 {
                    next += 1;
                    let operation = Operation::CompleteActivation {
                        activation: slsd::identity::ActivationId(next),
                        token: Answer::new("123456"),
                        key: signer.public(),
                        pin: Pin::new("2580"),
                        previous: None,
                        sms_token: None,
                    };
                    let flood = flood.clone();
                    calls.spawn(async move { flood.call(operation).await });
                }
                while let Some(done) = calls.join_next().await {
                    match done.unwrap().unwrap() {
                        Reply::Error {
                            code: ErrorCode::Busy,
                            ..
                        } => busy += 1,
                        _ => other += 1,
                    }
                }
            }
            (busy, other)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile an operator enrols 40 users, one after another.
    let admin = daemon.client(Role::Admin).await;
    let mut refused = 0;
    for n in 0..40 {
        let reply = admin
            .call(Operation::Enroll(EnrollRequest {
                user: user(&format!("staff{n}")),
                kind: DeviceKind::Scc,
                secret: None,
                pin: None,
                label: "card".into(),
            }))
            .await
            .unwrap();
        match reply {
            Reply::Enrolled { .. } => {}
            Reply::Error {
                code: ErrorCode::Busy,
                ..
            } => refused += 1,
            other => panic!("enrol answered {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (busy, other) = flooding.await.unwrap();
    eprintln!("phone flood: {busy} Busy, {other} answered; operator: {refused} of 40 Busy");
    assert!(
        busy > 0,
        "the phone's own slot was full: the flood met Busy"
    );
    assert_eq!(
        refused, 0,
        "the operator's enrolments never wait behind the phone's"
    );
}

/// The daemon's RSS every 250 ms until `stop`; the largest seen.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kb(pid));
            std::thread::sleep(Duration::from_millis(250));
        }
        peak
    })
}

/// What a client that never reads its replies may make the daemon hold,
/// with the default windows and write queues (ARCHITECTURE.md works it out).
const NON_READER_BOUND_KB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_replies_are_not_buffered_without_bound() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // The stall timeout is set past the attack, so that the windows and
    // write queues alone must bound it.
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "write-stall-timeout = \"60s\"",
        "",
    );
    let device = durable_state(&daemon).await;
    let before = rss_kb(daemon.pid());
    let probe = Probe::start(&daemon).await;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = watch_rss(daemon.pid(), Arc::clone(&stop));

    // Eight connections with the phone certificate send requests their
    // role may not make (each answered Forbidden, a reply longer than the
    // request) on 64 streams each, as fast as the daemon takes them, and
    // never read a reply.
    let mut attackers = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..8 {
        let client = daemon.client(Role::Phone).await;
        for _ in 0..64 {
            let mut stream = client.stream().await.unwrap();
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            tasks.spawn(async move {
                let batch: Vec<_> = (0..64)
                    .map(|_| Operation::Devices {
                        user: user("someone"),
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let send = stream.send_batch(batch.clone());
                    match tokio::time::timeout(Duration::from_millis(500), send).await {
                        Ok(Ok(_)) => {
                            sent.fetch_add(64, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => break,
                        // Held back by flow control: the daemon stopped
                        // reading this stream.
                        Err(_) => {}
                    }
                }
                stream
            });
        }
        attackers.push(client);
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let peak = tokio::task::spawn_blocking(move || peak.join().unwrap())
        .await
        .unwrap();
    eprintln!(
        "non-reading clients: {} requests sent in 30 s, daemon RSS {before} kB before, peak {peak} kB",
        sent.load(Ordering::Relaxed)
    );
    probe.finish("clients that never read").await;
    assert!(
        peak < before + NON_READER_BOUND_KB,
        "RSS grew from {before} kB to a peak of {peak} kB"
    );
    while tasks.join_next().await.is_some() {}
    drop(attackers);
    assert_durable(daemon, device).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_floods_and_stalled_readers_lose_their_connection() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "malformed-frames-per-connection = 20\nwrite-stall-timeout = \"1s\"\nrequests-per-connection-per-second = 5",
        "",
    );
    // Malformed bodies are answered, and count toward the connection's
    // rate (5 a second, burst 5): ten at once get five errors and five
    // RateLimited.
    let flooder = daemon.client(Role::Gateway).await;
    let mut stream = flooder.stream().await.unwrap();
    let garbage = [0u8, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 0xee];
    for _ in 0..10 {
        stream.send_raw(&garbage).await.unwrap();
    }
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(match stream.receive().await.unwrap().reply {
            Reply::Error { code, .. } => code,
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(
        replies,
        [
            [ErrorCode::UnknownOperation; 5],
            [ErrorCode::RateLimited; 5]
        ]
        .concat()
    );
    // Past twenty in all, the connection is closed (code 4).
    for _ in 0..11 {
        if stream.send_raw(&garbage).await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if stream.receive().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was closed");
    let reason = flooder.close_reason();
    assert!(
        reason.as_deref().is_some_and(|r| r.contains("malformed")),
        "{reason:?}"
    );

    let reader_less = daemon.client(Role::Gateway).await;
    let mut stream = reader_less.stream().await.unwrap();
    // Requests whose replies are never read: once the client's window is
    // full the daemon's writes make no progress, and a second later the
    // connection is closed (code 5).
    let started = Instant::now();
    let batch: Vec<_> = (0..512)
        .map(|_| Operation::Devices {
            user: user("someone-with-a-long-name-to-make-replies-longer"),
        })
        .collect();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(30) {
        if stream.send_batch(batch.clone()).await.is_err() {
            closed = true;
            break;
        }
        if reader_less.close_reason().is_some() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a client that never reads is closed");
    let reason = reader_less.close_reason().unwrap_or_default();
    assert!(reason.contains("not being read"), "{reason}");
    eprintln!("stalled reader closed after {:?}", started.elapsed());
}
