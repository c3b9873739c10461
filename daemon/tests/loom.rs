//! Loom models of the concurrent invariants, run against the real engine
//! and challenge table (their locks and atomics are loom's with the `loom`
//! feature, see `daemon/src/sync.rs`):
//!
//! ```sh
//! LOOM_MAX_PREEMPTIONS=3 cargo test -p slsd --features loom --test loom
//! ```
//!
//! - a challenge verified by two threads at once is accepted once;
//! - wrong answers racing on one challenge never get more checks than its
//!   attempts;
//! - failures racing on one device through two challenges lock it exactly
//!   once when they reach the limit;
//! - the sweeper racing with a verification never lets an expired
//!   challenge be accepted and never loses a live one;
//! - inserts racing for the last slot never overfill the table;
//! - an SMS code entered twice at once is accepted once;
//! - a phone's approval racing with the gateway's `AwaitPush` reaches the
//!   gateway exactly once (no lost or doubled verdict);
//! - on the cluster store (two nodes on Redis in memory, whose lock is
//!   loom's), a challenge verified on both nodes at once is accepted once,
//!   and wrong answers racing on both get no more checks than attempts;
//! - a token's login racing an unlock never moves its counter back, in
//!   memory or on disk.
#![cfg(feature = "loom")]

use std::sync::Arc;

use loom::thread;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine, ReplyLog, Role, Sink, StreamId};
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::card::CodeCard;
use slsd::otp::hotp::{Digits, hotp};
use slsd::otp::push::{self as push_proof, PushSigner};
use slsd::otp::token::TokenAlgorithm;
use slsd::otp::{HashAlgorithm, HmacKey, SecretKey};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::store::Actor;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::embedded::challenges::{ChallengeTable, InsertError};
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;
use slsd::store::{EnrollError, NewDevice};
use slsd::store::{OpenChallenge, Question};
use slsd::wire::request::Answer;
use slsd::wire::token::TokenInfo;
use slsd::wire::{ChallengeText, Operation, Reply, Verdict};

const T0: Timestamp = Timestamp(1_800_000_000_000);
const KEY: [u8; 32] = [9; 32];

/// A registry with one security code card for "jdoe", made once per test
/// (outside the model: it is not what is being explored).
struct Fixture {
    dir: tempfile::TempDir,
    device: DeviceId,
    card: CodeCard,
    config: Config,
}

fn fixture(config: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(config).unwrap();
    let mut fixture = Fixture {
        dir,
        device: DeviceId(0),
        card: CodeCard::new(&SecretKey::from_bytes(KEY.to_vec()).unwrap(), 224).unwrap(),
        config,
    };
    fixture.device = fixture.setup(|registry, rng| {
        let user = Username::new("jdoe").unwrap();
        let new = NewDevice {
            user: &user,
            kind: DeviceKind::Scc,
            secret: Some(SecretKey::from_bytes(KEY.to_vec()).unwrap()),
            pin: None,
            label: "",
            token: None,
        };
        registry
            .change(rng, T0, Actor::SYSTEM, |c| c.enroll(new))
            .unwrap()
            .0
    });
    fixture
}

impl Fixture {
    /// The registry, opened anew. Under loom its devices' locks are loom's,
    /// which exist only inside a model: open it there.
    fn registry(&self) -> Registry {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let cipher =
            SecretCipher::load_or_create(&self.dir.path().join("secrets.key"), &mut rng).unwrap();
        Registry::open(
            &self.dir.path().join("registry.redb"),
            cipher,
            self.config.devices.clone(),
        )
        .unwrap()
    }

    /// Changes the registry before a model (enrolments): in a model of one
    /// thread, which loom runs once.
    fn setup<T: Send + 'static>(
        &self,
        change: impl Fn(&Registry, &mut ChaCha20Rng) -> T + Send + Sync + 'static,
    ) -> T {
        let result = Arc::new(std::sync::Mutex::new(None));
        let (out, dir, config) = (
            Arc::clone(&result),
            self.dir.path().to_path_buf(),
            self.config.clone(),
        );
        loom::model(move || {
            let mut rng = ChaCha20Rng::seed_from_u64(4);
            let cipher = SecretCipher::load_or_create(&dir.join("secrets.key"), &mut rng).unwrap();
            let registry =
                Registry::open(&dir.join("registry.redb"), cipher, config.devices.clone()).unwrap();
            *out.lock().unwrap() = Some(change(&registry, &mut rng));
        });
        let taken = result.lock().unwrap().take();
        taken.expect("the setup ran")
    }

    /// The fixture on a copy of its data directory.
    fn copy(&self) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for file in ["secrets.key", "registry.redb"] {
            std::fs::copy(self.dir.path().join(file), dir.path().join(file)).unwrap();
        }
        Fixture {
            dir,
            device: self.device,
            card: self.card.clone(),
            config: self.config.clone(),
        }
    }

    /// A fresh engine over the registry, opened inside the model so that
    /// the devices' failure locks are loom's (nothing is persisted between
    /// runs: the card starts with no failures).
    fn engine(&self) -> Arc<Engine> {
        Arc::new(Engine::new(
            Arc::new(self.config.clone()),
            Arc::new(self.registry()),
            &mut ChaCha20Rng::seed_from_u64(2),
        ))
    }

    /// The card's wrong answers in a row, as the engine holds them.
    fn consecutive_failures(&self, engine: &Engine) -> u32 {
        engine
            .registry()
            .device(self.device)
            .unwrap()
            .failures()
            .consecutive
    }

    /// A challenge for the card, and its right answer.
    fn challenge(&self, engine: &Engine, now: Timestamp) -> (ChallengeId, String) {
        let operation = Operation::Challenge {
            user: Username::new("jdoe").unwrap(),
            device: self.device,
        };
        let Reply::Challenge {
            challenge,
            text: ChallengeText::CardPositions(a, b),
            ..
        } = engine
            .handle(
                Role::Gateway,
                operation,
                now,
                &mut ChaCha20Rng::seed_from_u64(now.0),
            )
            .reply
        else {
            panic!("a card challenge")
        };
        (challenge, self.card.codes_at(&[a, b]).unwrap().to_string())
    }
}

fn verify(engine: &Engine, challenge: ChallengeId, answer: &str, now: Timestamp) -> Verdict {
    let operation = Operation::Verify {
        challenge,
        response: Answer::new(answer),
    };
    match engine
        .handle(
            Role::Gateway,
            operation,
            now,
            &mut ChaCha20Rng::seed_from_u64(0),
        )
        .reply
    {
        Reply::Verdict(verdict) => verdict,
        other => panic!("{other:?}"),
    }
}

/// Runs `f` on two loom threads and returns both results.
fn both<T: Send + 'static>(
    engine: &Arc<Engine>,
    f: impl Fn(&Engine, usize) -> T + Send + Sync + 'static,
) -> (T, T) {
    let f = Arc::new(f);
    let (e, g) = (Arc::clone(engine), Arc::clone(&f));
    let other = thread::spawn(move || g(&e, 1));
    let mine = f(engine, 0);
    (mine, other.join().unwrap())
}

#[test]
fn a_challenge_verified_twice_at_once_is_accepted_once() {
    let fixture = Arc::new(fixture("[challenges]\nuser-limit-buckets = 1\n"));
    loom::model(move || {
        let engine = fixture.engine();
        let (id, right) = fixture.challenge(&engine, T0);
        let (a, b) = both(&engine, move |engine, _| verify(engine, id, &right, T0));
        let accepted = [&a, &b]
            .iter()
            .filter(|v| matches!(v, Verdict::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "{a:?} {b:?}");
        assert!(matches!(a, Verdict::UnknownChallenge) || matches!(b, Verdict::UnknownChallenge));
    });
}

#[test]
fn racing_wrong_answers_never_get_more_checks_than_attempts() {
    let fixture = Arc::new(fixture(
        "[challenges]\nattempts = 1\nuser-limit-buckets = 1\n[lockout]\nfailures = 10\n",
    ));
    loom::model(move || {
        let engine = fixture.engine();
        let (id, _) = fixture.challenge(&engine, T0);
        let (a, b) = both(&engine, move |engine, _| verify(engine, id, "000000", T0));
        // One attempt: one check (Rejected with none left), then it is gone.
        let checked = [&a, &b]
            .iter()
            .filter(|v| matches!(v, Verdict::Rejected { .. }))
            .count();
        assert_eq!(checked, 1, "{a:?} {b:?}");
        let failures = fixture.consecutive_failures(&engine);
        assert_eq!(failures, 1);
    });
}

#[test]
fn a_wrong_answer_racing_a_new_challenge_is_counted_once_and_the_question_kept() {
    // A device has one current challenge: asking again replaces it (under
    // the device's failure lock, then its question lock, while `verify`
    // holds the challenge's shard lock first). In either order the
    // failure counts once or not at all, and the question stays.
    let fixture = Arc::new(fixture("[challenges]\nuser-limit-buckets = 1\n"));
    loom::model(move || {
        let engine = fixture.engine();
        let (first, right) = fixture.challenge(&engine, T0);
        let asker = Arc::clone(&fixture);
        let (answered, asked) = both(&engine, move |engine, n| match n {
            0 => Err(verify(engine, first, "000000", T0)),
            // Another moment: another random id.
            _ => Ok(asker.challenge(engine, Timestamp(T0.0 + 1))),
        });
        let (Err(answered), Ok((second, again))) = (answered, asked) else {
            panic!("each thread does its own part")
        };
        let counted = match answered {
            Verdict::Rejected { .. } => 1,
            Verdict::UnknownChallenge => 0,
            other => panic!("{other:?}"),
        };
        let failures = fixture.consecutive_failures(&engine);
        assert_eq!(failures, counted);
        assert_eq!(again, right, "the unanswered question is asked again");
        assert_eq!(
            verify(&engine, first, &right, T0),
            Verdict::UnknownChallenge
        );
        assert!(matches!(
            verify(&engine, second, &right, T0),
            Verdict::Accepted { .. }
        ));
    });
}

#[test]
fn the_sweeper_never_lets_an_expired_challenge_in_nor_loses_a_live_one() {
    let fixture = Arc::new(fixture(
        "[challenges]\nttl = \"1s\"\nuser-limit-buckets = 1\n",
    ));
    loom::model(move || {
        let engine = fixture.engine();
        // One challenge expires at T0 + 1 s, the other lives until T0 + 2 s.
        let (expiring, expiring_answer) = fixture.challenge(&engine, T0);
        let live_from = Timestamp(T0.0 + 1_000);
        let (live, live_answer) = fixture.challenge(&engine, live_from);
        let at = Timestamp(T0.0 + 1_000);
        let (swept, verdicts) = both(&engine, move |engine, n| {
            if n == 0 {
                (engine.sweep(at), None)
            } else {
                let late = verify(engine, expiring, &expiring_answer, at);
                let in_time = verify(engine, live, &live_answer, at);
                (0, Some((late, in_time)))
            }
        });
        let (late, in_time) = verdicts.1.or(swept.1).unwrap();
        assert!(
            matches!(late, Verdict::Expired | Verdict::UnknownChallenge),
            "an expired challenge got {late:?}"
        );
        assert!(
            matches!(in_time, Verdict::Accepted { .. }),
            "a live challenge got {in_time:?}"
        );
    });
}

#[test]
fn racing_inserts_never_overfill_the_table() {
    loom::model(|| {
        let table = Arc::new(ChallengeTable::new(1, 2));
        let open = |n: u64| OpenChallenge {
            user: Username::new("jdoe").unwrap(),
            device: DeviceId(1),
            question: Question::Ocra(n.to_string()),
            expires_at: T0,
            attempts_left: 3,
        };
        let other = {
            let table = Arc::clone(&table);
            thread::spawn(move || table.insert(ChallengeId(2), open(2)))
        };
        let mine = table.insert(ChallengeId(1), open(1));
        let theirs = other.join().unwrap();
        let full = [mine, theirs]
            .iter()
            .filter(|r| **r == Err(InsertError::Full))
            .count();
        assert_eq!(full, 1, "{mine:?} {theirs:?}");
        assert_eq!(table.len(), 1);
    });
}

const BINDING: [u8; 32] = [7; 32];

fn caller<'a>(role: Role, stream: u64, sink: &'a Arc<dyn Sink>, request: u64) -> Caller<'a> {
    Caller {
        role,
        connection: stream,
        stream: StreamId(stream),
        binding: &BINDING,
        sink: Some(sink),
        request,
    }
}

fn call(engine: &Engine, caller: &Caller<'_>, operation: Operation) -> Option<Reply> {
    engine
        .handle_from(caller, operation, T0, &mut ChaCha20Rng::seed_from_u64(3))
        .map(|outcome| outcome.reply)
}

#[test]
fn an_sms_code_entered_twice_at_once_is_accepted_once() {
    let fixture = Arc::new(fixture("[challenges]\nuser-limit-buckets = 1\n"));
    fixture.setup(|registry, rng| {
        let user = Username::new("jdoe").unwrap();
        let number = PhoneNumber::parse("+41 791234567").unwrap();
        registry
            .change(rng, T0, Actor::SYSTEM, |c| c.add_phone(&user, number, ""))
            .unwrap();
    });
    loom::model(move || {
        let engine = fixture.engine();
        let carrier = Arc::new(ReplyLog::default());
        let sink: Arc<dyn Sink> = carrier.clone();
        let bridge = caller(Role::Carrier, 1, &sink, 1);
        assert_eq!(
            call(&engine, &bridge, Operation::CarrierSubscribe),
            Some(Reply::Subscribed)
        );
        let send = Operation::SendCode {
            user: Username::new("jdoe").unwrap(),
            channel: Channel::Sms,
        };
        let sent = engine.handle(Role::Gateway, send, T0, &mut ChaCha20Rng::seed_from_u64(5));
        assert!(
            matches!(sent.reply, Reply::CodeSent { .. }),
            "{:?}",
            sent.reply
        );
        let Some(Reply::Message { text, .. }) = carrier.take().pop() else {
            panic!("nothing handed to the bridge");
        };
        let code: String = text.as_str().split("code is ").nth(1).unwrap()[..6].to_owned();
        let (a, b) = both(&engine, move |engine, _| {
            let operation = Operation::VerifyCode {
                user: Username::new("jdoe").unwrap(),
                code: Answer::new(&code),
            };
            let reply = engine
                .handle(
                    Role::Gateway,
                    operation,
                    T0,
                    &mut ChaCha20Rng::seed_from_u64(0),
                )
                .reply;
            match reply {
                Reply::Verdict(verdict) => verdict,
                other => panic!("{other:?}"),
            }
        });
        let accepted = [&a, &b]
            .iter()
            .filter(|v| matches!(v, Verdict::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "{a:?} {b:?}");
    });
}

#[test]
fn an_approval_racing_with_await_push_reaches_the_gateway_once() {
    let fixture = Arc::new(fixture("[challenges]\nuser-limit-buckets = 1\n"));
    let signer = Arc::new(PushSigner::from_seed([3; 32]));
    let key = signer.public();
    let device = fixture.setup(move |registry, rng| {
        let user = Username::new("jdoe").unwrap();
        let new = NewDevice {
            user: &user,
            kind: DeviceKind::IbKey,
            secret: None,
            pin: None,
            label: "",
            token: None,
        };
        registry
            .change(rng, T0, Actor::SYSTEM, |c| {
                let (device, _) = c.enroll(new)?;
                c.set_push_key(device, key)?;
                c.audit("bind-push-key", Some(&user), Some(device), "")?;
                Ok::<_, EnrollError>(device)
            })
            .unwrap()
    });
    loom::model(move || {
        let engine = fixture.engine();
        let phone_stream = Arc::new(ReplyLog::default());
        let phone_sink: Arc<dyn Sink> = phone_stream.clone();
        let phone = caller(Role::Phone, 1, &phone_sink, 1);
        let proof = signer.sign(&push_proof::subscribe_message(&BINDING, device));
        let subscribe = Operation::PhoneSubscribe { device, proof };
        assert_eq!(call(&engine, &phone, subscribe), Some(Reply::Subscribed));
        let push = Operation::Push {
            user: Username::new("jdoe").unwrap(),
            device,
        };
        let sent = engine.handle(Role::Gateway, push, T0, &mut ChaCha20Rng::seed_from_u64(8));
        let Reply::PushSent {
            push: id,
            match_number,
            ..
        } = sent.reply
        else {
            panic!("{:?}", sent.reply);
        };
        let gateway_stream = Arc::new(ReplyLog::default());
        let approve_signer = Arc::clone(&signer);
        let engine_for_phone = Arc::clone(&engine);
        let phone_sink_2 = Arc::clone(&phone_sink);
        let phone_thread = thread::spawn(move || {
            let phone = caller(Role::Phone, 1, &phone_sink_2, 2);
            let proof = approve_signer.sign(&push_proof::approve_message(id, device, match_number));
            let approve = Operation::Approve {
                push: id,
                chosen: match_number,
                proof,
            };
            call(&engine_for_phone, &phone, approve)
        });
        let gateway_sink: Arc<dyn Sink> = gateway_stream.clone();
        let gateway = caller(Role::Gateway, 2, &gateway_sink, 9);
        let immediate = call(&engine, &gateway, Operation::AwaitPush { push: id });
        let phone_reply = phone_thread.join().unwrap();
        assert!(matches!(
            phone_reply,
            Some(Reply::Verdict(Verdict::Accepted { .. }))
        ));
        let mut verdicts: Vec<Reply> = gateway_stream.take();
        verdicts.extend(immediate);
        assert_eq!(verdicts.len(), 1, "{verdicts:?}");
        assert!(matches!(
            verdicts[0],
            Reply::Verdict(Verdict::Accepted { .. })
        ));
        // The verdict was handed out: the push is spent.
        assert_eq!(
            call(&engine, &gateway, Operation::AwaitPush { push: id }),
            Some(Reply::Verdict(Verdict::UnknownChallenge))
        );
    });
}

/// Two nodes of one deployment on a Redis Cluster in memory
/// (`store::cluster::memory`, whose lock is loom's: every command is a
/// point where the other node may run), jdoe's card enrolled through the
/// first. Made inside the model.
struct Nodes {
    a: Arc<Engine>,
    b: Arc<Engine>,
    device: DeviceId,
}

fn two_nodes(fixture: &Fixture) -> Nodes {
    let memory = Arc::new(MemoryRedis::new());
    memory.set_now(T0);
    let registry = Arc::new(fixture.registry());
    let node = |seed| {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let engine = Engine::new(
            Arc::new(fixture.config.clone()),
            Arc::clone(&registry),
            &mut rng,
        );
        let cipher = SecretCipher::new(&[5; 32]);
        Arc::new(
            engine
                .with_memory_cluster(Arc::clone(&memory), cipher, &mut rng)
                .unwrap(),
        )
    };
    let (a, b) = (node(2), node(3));
    let enrol = Operation::Enroll(slsd::wire::EnrollRequest {
        user: Username::new("jdoe").unwrap(),
        kind: DeviceKind::Scc,
        secret: Some(SecretKey::from_bytes(KEY.to_vec()).unwrap()),
        pin: None,
        label: String::new(),
    });
    let Reply::Enrolled { device, .. } = on_cluster(&a, Role::Admin, enrol, T0) else {
        panic!("enrolled on the cluster")
    };
    Nodes { a, b, device }
}

/// `operation` from `role` on a node of the in-memory cluster, to its end.
fn on_cluster(engine: &Engine, role: Role, operation: Operation, now: Timestamp) -> Reply {
    let caller = Caller::detached(role);
    let mut rng = ChaCha20Rng::seed_from_u64(now.0);
    let handled = engine.handle_on_cluster(&caller, operation, now, &mut rng);
    run_now(handled)
        .expect("an in-memory store answers at once")
        .expect("an answer, not a later one")
}

fn card_challenge_on_cluster(fixture: &Fixture, nodes: &Nodes) -> (ChallengeId, String) {
    let operation = Operation::Challenge {
        user: Username::new("jdoe").unwrap(),
        device: nodes.device,
    };
    let reply = on_cluster(&nodes.a, Role::Gateway, operation, T0);
    let Reply::Challenge {
        challenge,
        text: ChallengeText::CardPositions(a, b),
        ..
    } = reply
    else {
        panic!("a card challenge: {reply:?}")
    };
    (
        challenge,
        fixture.card.codes_at(&[a, b]).unwrap().to_string(),
    )
}

/// The stack of a loom thread that runs the engine's cluster flows: their
/// futures are far larger than loom's default stack.
const CLUSTER_STACK: usize = 8 << 20;

/// A loom model whose body runs on a thread with `CLUSTER_STACK`.
fn cluster_model(body: impl Fn() + Send + Sync + 'static) {
    let body = Arc::new(body);
    loom::model(move || {
        let body = Arc::clone(&body);
        thread::Builder::new()
            .stack_size(CLUSTER_STACK)
            .spawn(move || body())
            .unwrap()
            .join()
            .unwrap();
    });
}

/// Runs `f` on the two nodes, each on a loom thread of its own.
fn on_both_nodes<T: Send + 'static>(
    nodes: &Nodes,
    f: impl Fn(&Engine) -> T + Send + Sync + 'static,
) -> (T, T) {
    let f = Arc::new(f);
    let (b, g) = (Arc::clone(&nodes.b), Arc::clone(&f));
    let other = thread::Builder::new()
        .stack_size(CLUSTER_STACK)
        .spawn(move || g(&b))
        .unwrap();
    let mine = f(&nodes.a);
    (mine, other.join().unwrap())
}

fn verify_on_cluster(engine: &Engine, challenge: ChallengeId, answer: &str) -> Verdict {
    let operation = Operation::Verify {
        challenge,
        response: Answer::new(answer),
    };
    match on_cluster(engine, Role::Gateway, operation, T0) {
        Reply::Verdict(verdict) => verdict,
        other => panic!("{other:?}"),
    }
}

#[test]
fn on_the_cluster_a_challenge_verified_on_two_nodes_at_once_is_accepted_once() {
    let fixture = Arc::new(fixture(""));
    cluster_model(move || {
        let nodes = two_nodes(&fixture);
        let (id, right) = card_challenge_on_cluster(&fixture, &nodes);
        let (a, b) = on_both_nodes(&nodes, move |node| verify_on_cluster(node, id, &right));
        let accepted = [&a, &b]
            .iter()
            .filter(|v| matches!(v, Verdict::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "{a:?} {b:?}");
        assert!(matches!(a, Verdict::UnknownChallenge) || matches!(b, Verdict::UnknownChallenge));
    });
}

#[test]
fn on_the_cluster_wrong_answers_on_two_nodes_never_get_more_checks_than_attempts() {
    let fixture = Arc::new(fixture(
        "[challenges]\nattempts = 1\n[lockout]\nfailures = 10\n",
    ));
    cluster_model(move || {
        let nodes = two_nodes(&fixture);
        let (id, _) = card_challenge_on_cluster(&fixture, &nodes);
        let (a, b) = on_both_nodes(&nodes, move |node| verify_on_cluster(node, id, "000000"));
        let checked = [&a, &b]
            .iter()
            .filter(|v| matches!(v, Verdict::Rejected { .. }))
            .count();
        assert_eq!(checked, 1, "{a:?} {b:?}");
    });
}

/// An event token (HOTP) for "jdoe", enrolled as an assigned token is,
/// whose code at counter 0 is then accepted by `Verify`.
fn hotp_token(fixture: &Fixture) -> DeviceId {
    fixture.setup(|registry, rng| {
        let user = Username::new("jdoe").unwrap();
        let info = TokenInfo {
            serial: slsd::identity::Serial::new("H1").unwrap(),
            algorithm: TokenAlgorithm::Hotp {
                hash: HashAlgorithm::Sha1,
                digits: Digits::exactly(6),
            },
            counter: 0,
            valid_from: None,
            valid_until: None,
            manufacturer: String::new(),
        };
        let new = NewDevice {
            user: &user,
            kind: DeviceKind::Token,
            secret: Some(SecretKey::from_bytes(HOTP_KEY.to_vec()).unwrap()),
            pin: None,
            label: "",
            token: Some(&info),
        };
        registry
            .change(rng, T0, Actor::SYSTEM, |c| c.enroll(new))
            .unwrap()
            .0
    })
}

const HOTP_KEY: &[u8] = b"12345678901234567890";

fn hotp_code(counter: u64) -> String {
    let key = HmacKey::new(
        HashAlgorithm::Sha1,
        &SecretKey::from_bytes(HOTP_KEY.to_vec()).unwrap(),
    );
    hotp(&key, counter, Digits::exactly(6)).as_str().to_owned()
}

/// A token's login racing an operator's unlock (which clears failures and
/// must keep the moving factor): whichever runs first, the counter the
/// login used stays used — in memory and on disk — so its code is never
/// accepted again.
#[test]
fn a_token_login_racing_an_unlock_never_moves_the_counter_back() {
    let fixture = fixture("[challenges]\nuser-limit-buckets = 1\n");
    let device = hotp_token(&fixture);
    let fixture = Arc::new(fixture);
    // The unlock is a registry change (a write transaction on disk per
    // run): one preemption already puts it before, inside and after the
    // login's decision, which is what is explored here.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(1);
    model.check(move || {
        // Each run on a copy of the fixture's data: the run writes the
        // counter to disk, and the next must start from an unused one.
        let run = fixture.copy();
        let engine = run.engine();
        let challenge = |engine: &Engine| {
            let operation = Operation::Challenge {
                user: Username::new("jdoe").unwrap(),
                device,
            };
            let rng = &mut ChaCha20Rng::seed_from_u64(7);
            match engine.handle(Role::Gateway, operation, T0, rng).reply {
                Reply::Challenge { challenge, .. } => challenge,
                other => panic!("a challenge: {other:?}"),
            }
        };
        let id = challenge(&engine);
        let (login, _) = both(&engine, move |engine, thread| {
            if thread == 0 {
                let verdict = verify(engine, id, &hotp_code(0), T0);
                // What the server's committer does before the reply: the
                // device's failure state as it is now, written.
                let failures = *engine.registry().device(device).unwrap().failures();
                engine
                    .registry()
                    .save_failures(&[(device, failures)])
                    .unwrap();
                Some(verdict)
            } else {
                let unlock = Operation::Unlock {
                    user: Username::new("jdoe").unwrap(),
                    device: None,
                };
                let rng = &mut ChaCha20Rng::seed_from_u64(8);
                let reply = engine.handle(Role::Admin, unlock, T0, rng).reply;
                assert_eq!(reply, Reply::Done);
                None
            }
        });
        assert!(matches!(login, Some(Verdict::Accepted { .. })), "{login:?}");
        let moving = engine.registry().device(device).unwrap().failures().moving;
        assert_eq!(moving, 1, "the counter went back in memory");
        let again = challenge(&engine);
        assert!(matches!(
            verify(&engine, again, &hotp_code(0), T0),
            Verdict::Rejected { .. }
        ));
        // What a restart reads: the unlock's write did not undo the login's.
        drop(engine);
        let on_disk = run.registry().device(device).unwrap().failures().moving;
        assert_eq!(on_disk, 1, "the counter went back on disk");
    });
}
