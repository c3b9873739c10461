//! SMS codes, the carrier outbox and push sessions in the engine, on a
//! virtual clock with collecting sinks for the bridges, phones and
//! gateways: every configured bound of them, and the delivery status;
//! phone confirm codes and IB Key activation tokens, their expiry and bound.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::open_engine;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Caller, Engine, ReplyLog, Role, Sink, StreamId};
use slsd::identity::{CodeId, DeviceId, MessageId, Username};
use slsd::otp::push::{self, PushSigner};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::wire::request::Answer;
use slsd::wire::{
    DeliveryReport, DeliveryState, EnrollRequest, ErrorCode, Operation, Reply, Verdict,
};

const T0: Timestamp = Timestamp(1_800_000_000_000);
const BINDING: [u8; 32] = [7; 32];

struct World {
    _dir: tempfile::TempDir,
    engine: Engine,
    rng: ChaCha20Rng,
}

impl World {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_engine(dir.path(), Config::from_toml(config).unwrap());
        Self {
            _dir: dir,
            engine,
            rng: ChaCha20Rng::seed_from_u64(5),
        }
    }

    fn call(&mut self, role: Role, operation: Operation, now: Timestamp) -> Reply {
        self.engine
            .handle(role, operation, now, &mut self.rng)
            .reply
    }

    /// A call from stream `stream` (its connection has the same number).
    fn from(
        &mut self,
        role: Role,
        stream: u64,
        sink: &Arc<dyn Sink>,
        operation: Operation,
        now: Timestamp,
    ) -> Option<Reply> {
        let caller = Caller {
            role,
            connection: stream,
            stream: StreamId(stream),
            binding: &BINDING,
            sink: Some(sink),
            request: 1,
        };
        self.engine
            .handle_from(&caller, operation, now, &mut self.rng)
            .map(|o| o.reply)
    }

    fn bridge(&mut self, stream: u64) -> Arc<ReplyLog> {
        let collect = Arc::new(ReplyLog::default());
        let sink: Arc<dyn Sink> = collect.clone();
        let reply = self.from(
            Role::Carrier,
            stream,
            &sink,
            Operation::CarrierSubscribe,
            T0,
        );
        assert_eq!(reply, Some(Reply::Subscribed));
        collect
    }

    fn phone_user(&mut self, name: &str, number: &str) {
        let operation = Operation::EnrollPhone {
            user: Username::new(name).unwrap(),
            number: PhoneNumber::parse(number).unwrap(),
            label: String::new(),
        };
        assert!(matches!(
            self.call(Role::Admin, operation, T0),
            Reply::Enrolled { .. }
        ));
    }

    fn send(&mut self, name: &str, channel: Channel, now: Timestamp) -> Reply {
        let operation = Operation::SendCode {
            user: Username::new(name).unwrap(),
            channel,
        };
        self.call(Role::Gateway, operation, now)
    }

    fn status(&mut self, code: CodeId, now: Timestamp) -> Reply {
        self.call(Role::Gateway, Operation::CodeStatus { code }, now)
    }
}

fn at(seconds: u64) -> Timestamp {
    Timestamp(T0.0 + seconds * 1000)
}

/// The message id and text of the only message a bridge was handed.
fn handed(bridge: &ReplyLog) -> (MessageId, String) {
    match bridge.take().as_slice() {
        [Reply::Message { message, text, .. }] => (*message, text.as_str().to_owned()),
        other => panic!("{other:?}"),
    }
}

fn ack(world: &mut World, stream: u64, message: MessageId, report: DeliveryReport, now: Timestamp) {
    let sink: Arc<dyn Sink> = Arc::new(ReplyLog::default());
    let reply = world.from(
        Role::Carrier,
        stream,
        &sink,
        Operation::Ack { message, report },
        now,
    );
    assert_eq!(reply, Some(Reply::Done));
}

fn error_code(reply: &Reply) -> Option<ErrorCode> {
    match reply {
        Reply::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[test]
fn codes_expire_with_their_ttl_and_the_table_is_bounded() {
    let mut world = World::new("[sms]\nttl = \"60s\"\nresend-interval = \"30s\"\ncapacity = 1\n");
    world.phone_user("ann", "+41 791111111");
    world.phone_user("ben", "+41 792222222");
    let bridge = world.bridge(1);
    assert!(matches!(
        world.send("ann", Channel::Sms, T0),
        Reply::CodeSent { .. }
    ));
    let (_, text) = handed(&bridge);
    assert!(text.contains("expires in 1 minute."), "{text}");
    // One live code fits: the next user's is refused until it is gone.
    let full = world.send("ben", Channel::Sms, T0);
    assert_eq!(error_code(&full), Some(ErrorCode::Busy), "{full:?}");
    let code: String = text.split("code is ").nth(1).unwrap()[..6].to_owned();
    let late = Operation::VerifyCode {
        user: Username::new("ann").unwrap(),
        code: Answer::new(&code),
    };
    assert_eq!(
        world.call(Role::Gateway, late, at(60)),
        Reply::Verdict(Verdict::Expired),
        "a code entered after its TTL"
    );
    assert!(matches!(
        world.send("ben", Channel::Sms, at(60)),
        Reply::CodeSent { .. }
    ));
}

#[test]
fn the_outbox_is_bounded_and_a_message_is_tried_on_max_attempts_bridges() {
    let mut world = World::new("[carrier]\noutbox = 1\nack-timeout = \"5s\"\nmax-attempts = 2\n");
    world.phone_user("ann", "+41 791111111");
    world.phone_user("ben", "+41 792222222");
    let bridges = [world.bridge(1), world.bridge(2), world.bridge(3)];
    let Reply::CodeSent { code, .. } = world.send("ann", Channel::Sms, T0) else {
        panic!("not sent");
    };
    // The one message slot is taken until ann's message is settled.
    let full = world.send("ben", Channel::Sms, T0);
    assert_eq!(error_code(&full), Some(ErrorCode::Busy), "{full:?}");
    // Nobody answers: after the timeout the second bridge gets it...
    world.engine.tick(at(5));
    let handed_to: Vec<usize> = bridges
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.take().is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(handed_to.len(), 2, "first and second bridge: {handed_to:?}");
    assert!(matches!(
        world.status(code, at(5)),
        Reply::CodeStatus {
            delivery: DeliveryState::Pending,
            ..
        }
    ));
    // ... and after two bridges the message is given up.
    world.engine.tick(at(10));
    assert!(bridges.iter().all(|b| b.take().is_empty()), "no third try");
    let Reply::CodeStatus {
        delivery: DeliveryState::Failed { reason },
        ..
    } = world.status(code, at(10))
    else {
        panic!("not failed");
    };
    assert!(reason.contains("in time"), "{reason}");
    assert!(matches!(
        world.send("ben", Channel::Sms, at(10)),
        Reply::CodeSent { .. }
    ));
}

#[test]
fn the_status_is_the_last_messages() {
    let mut world = World::new("[carrier]\nack-timeout = \"5s\"\nmax-attempts = 1\n");
    world.phone_user("ann", "+41 791111111");
    let bridge = world.bridge(1);
    let Reply::CodeSent { code, .. } = world.send("ann", Channel::Sms, T0) else {
        panic!("not sent");
    };
    let (sms, _) = handed(&bridge);
    // The text does not come; the voice call does.
    let Reply::CodeSent { code: same, .. } = world.send("ann", Channel::Voice, at(1)) else {
        panic!("voice refused");
    };
    assert_eq!(same, code);
    let (call, _) = handed(&bridge);
    ack(&mut world, 1, call, DeliveryReport::Delivered, at(2));
    // The lost SMS is given up later: the code was still delivered.
    let failed = DeliveryReport::Failed {
        reason: "handset unreachable".into(),
    };
    ack(&mut world, 1, sms, failed, at(3));
    assert_eq!(
        world.status(code, at(3)),
        Reply::CodeStatus {
            channel: Channel::Voice,
            sends: 2,
            delivery: DeliveryState::Delivered
        }
    );
    // A bridge acknowledges only what it was handed, on its connection.
    let sink: Arc<dyn Sink> = Arc::new(ReplyLog::default());
    let other = world.from(
        Role::Carrier,
        9,
        &sink,
        Operation::Ack {
            message: call,
            report: DeliveryReport::Delivered,
        },
        at(3),
    );
    assert_eq!(
        other.as_ref().and_then(error_code),
        Some(ErrorCode::NotFound),
        "{other:?}"
    );
}

#[test]
fn the_push_table_is_bounded() {
    let mut world = World::new("[push]\ncapacity = 1\nttl = \"10s\"\n");
    let signer = PushSigner::from_seed([4; 32]);
    let mut devices = Vec::new();
    for name in ["ann", "ben"] {
        let request = EnrollRequest {
            user: Username::new(name).unwrap(),
            kind: DeviceKind::IbKey,
            secret: None,
            pin: None,
            label: String::new(),
        };
        let Reply::Enrolled { device, .. } =
            world.call(Role::Admin, Operation::Enroll(request), T0)
        else {
            panic!("enrol");
        };
        let bind = Operation::BindPushKey {
            device,
            key: signer.public(),
        };
        assert_eq!(world.call(Role::Admin, bind, T0), Reply::Done);
        devices.push(device);
    }
    let phone = Arc::new(ReplyLog::default());
    let sink: Arc<dyn Sink> = phone.clone();
    for &device in &devices {
        let proof = signer.sign(&push::subscribe_message(&BINDING, device));
        let subscribe = Operation::PhoneSubscribe { device, proof };
        assert_eq!(
            world.from(Role::Phone, 1, &sink, subscribe, T0),
            Some(Reply::Subscribed)
        );
    }
    let push = |name: &str, device: DeviceId| Operation::Push {
        user: Username::new(name).unwrap(),
        device,
    };
    assert!(matches!(
        world.call(Role::Gateway, push("ann", devices[0]), T0),
        Reply::PushSent { .. }
    ));
    let full = world.call(Role::Gateway, push("ben", devices[1]), T0);
    assert_eq!(error_code(&full), Some(ErrorCode::Busy), "{full:?}");
    // Once the first push expires (the tick drops it), there is room.
    world.engine.tick(at(10));
    assert!(matches!(
        world.call(Role::Gateway, push("ben", devices[1]), at(10)),
        Reply::PushSent { .. }
    ));
    assert_eq!(phone.take().len(), 2, "two notices");
    // A reload makes room from the next push on.
    let full = world.call(Role::Gateway, push("ann", devices[0]), at(10));
    assert_eq!(error_code(&full), Some(ErrorCode::Busy), "{full:?}");
    let roomier = Config::from_toml("[push]\ncapacity = 2\nttl = \"10s\"\n").unwrap();
    assert_eq!(
        world.engine.reconfigure(roomier).unwrap(),
        ["push.capacity"]
    );
    assert!(matches!(
        world.call(Role::Gateway, push("ann", devices[0]), at(10)),
        Reply::PushSent { .. }
    ));
}

#[test]
fn a_reload_changes_the_carrier_and_the_sms_limits_from_the_next_send_on() {
    let before = "[carrier]\nack-timeout = \"5s\"\nmax-attempts = 1\n[sms]\ncapacity = 1\n";
    let mut world = World::new(before);
    world.phone_user("ann", "+41 791111111");
    world.phone_user("ben", "+41 792222222");
    world.phone_user("cat", "+44 7700900123");
    let bridges = [world.bridge(1), world.bridge(2)];
    let Reply::CodeSent { code, .. } = world.send("ann", Channel::Sms, T0) else {
        panic!("not sent");
    };
    let full = world.send("ben", Channel::Sms, T0);
    assert_eq!(error_code(&full), Some(ErrorCode::Busy), "{full:?}");

    let after = "[carrier]\nack-timeout = \"5s\"\nmax-attempts = 2\n[sms]\ncapacity = 2\nallowed-country-codes = [44]\n";
    let changed = world
        .engine
        .reconfigure(Config::from_toml(after).unwrap())
        .unwrap();
    assert_eq!(
        changed,
        [
            "carrier.max-attempts",
            "sms.allowed-country-codes",
            "sms.capacity"
        ]
    );
    // ann's message, sent when one bridge was all it got, now fails over
    // to the second when the first does not answer.
    assert_eq!(bridges.iter().map(|b| b.take().len()).sum::<usize>(), 1);
    world.engine.tick(at(5));
    assert_eq!(bridges.iter().map(|b| b.take().len()).sum::<usize>(), 1);
    assert!(matches!(
        world.status(code, at(5)),
        Reply::CodeStatus {
            delivery: DeliveryState::Pending,
            ..
        }
    ));
    // Switzerland is no longer allowed; the table holds a second code.
    let refused = world.send("ben", Channel::Sms, at(5));
    assert_eq!(
        error_code(&refused),
        Some(ErrorCode::InvalidArgument),
        "{refused:?}"
    );
    assert!(matches!(
        world.send("cat", Channel::Sms, at(5)),
        Reply::CodeSent { .. }
    ));

    // A key that cannot change live refuses the whole reload.
    let fixed = format!("{after}[push]\nverify-threads = 1\n[lockout]\nfailures = 2\n");
    let refused = world
        .engine
        .reconfigure(Config::from_toml(&fixed).unwrap())
        .unwrap_err();
    assert_eq!(refused.keys, ["push.verify-threads"]);
    assert_eq!(world.engine.config().lockout.failures, 5);
}

#[test]
fn racing_enrolments_give_a_user_one_number() {
    let world = World::new("");
    // Twenty users, each with sixteen enrolments released at once.
    for round in 0..20u64 {
        let user = format!("user{round}");
        let start = std::sync::Barrier::new(16);
        let enrolled = std::thread::scope(|scope| {
            let tasks: Vec<_> = (0..16u64)
                .map(|n| {
                    let (engine, user, start) = (&world.engine, &user, &start);
                    scope.spawn(move || {
                        let operation = Operation::EnrollPhone {
                            user: Username::new(user).unwrap(),
                            number: PhoneNumber::parse(&format!("+41 7911111{n:02}")).unwrap(),
                            label: String::new(),
                        };
                        let mut rng = ChaCha20Rng::seed_from_u64(n);
                        start.wait();
                        engine.handle(Role::Admin, operation, T0, &mut rng).reply
                    })
                })
                .collect();
            tasks
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|r| matches!(r, Reply::Enrolled { .. }))
                .count()
        });
        assert_eq!(enrolled, 1, "{user}");
    }
}

/// The code in a message's text ("... code is 123456. ...").
fn code_in(text: &str) -> String {
    let (_, rest) = text.split_once("code is ").expect("a code");
    rest.chars().take_while(char::is_ascii_digit).collect()
}

#[test]
fn confirm_codes_and_activation_tokens_expire_and_their_table_is_bounded() {
    let mut world = World::new(
        "[lifecycle]\ntoken-ttl = \"60s\"\ntoken-capacity = 2\n\
         [challenges]\nper-user-per-minute = 100\n",
    );
    let bridge = world.bridge(1);
    let user = |name: &str| Username::new(name).unwrap();
    let start = |name: &str, to: &str| Operation::StartPhoneVerification {
        user: user(name),
        number: PhoneNumber::parse(to).unwrap(),
    };
    let confirm = |name: &str, code: &str| Operation::ConfirmPhone {
        user: user(name),
        code: Answer::new(code),
    };
    assert_eq!(
        world.call(Role::Admin, start("ann", "+41 791110001"), T0),
        Reply::VerificationSent {
            expires_in: Duration::from_secs(60)
        }
    );
    let (_, text) = handed(&bridge);
    assert!(text.contains("expires in 1 minute."), "{text}");
    // The right code after its time is expired, and gone.
    let late = at(60);
    assert_eq!(
        world.call(Role::Admin, confirm("ann", &code_in(&text)), late),
        Reply::Verdict(Verdict::Expired)
    );
    assert!(matches!(
        world.call(Role::Admin, confirm("ann", &code_in(&text)), late),
        Reply::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));

    // Two tokens at most: a third user's is refused, nothing is sent; a
    // user's new code replaces their old one without counting twice.
    world.call(Role::Admin, start("bob", "+41 791110002"), T0);
    world.phone_user("cid", "+41 791110003");
    let activation = Operation::StartActivation { user: user("cid") };
    assert!(matches!(
        world.call(Role::Gateway, activation.clone(), T0),
        Reply::ActivationStarted { .. }
    ));
    bridge.take();
    let full = world.call(Role::Admin, start("dee", "+41 791110004"), T0);
    assert!(
        matches!(
            &full,
            Reply::Error {
                code: ErrorCode::Busy,
                ..
            }
        ),
        "{full:?}"
    );
    assert!(matches!(
        world.call(Role::Gateway, activation.clone(), T0),
        Reply::Error {
            code: ErrorCode::Busy,
            ..
        }
    ));
    assert!(bridge.take().is_empty(), "nothing sent when refused");
    // A reload to three makes room for dee, and only for her.
    let roomier = "[lifecycle]\ntoken-ttl = \"60s\"\ntoken-capacity = 3\n\
         [challenges]\nper-user-per-minute = 100\n";
    let changed = world
        .engine
        .reconfigure(Config::from_toml(roomier).unwrap());
    assert_eq!(changed.unwrap(), ["lifecycle.token-capacity"]);
    assert!(matches!(
        world.call(Role::Admin, start("dee", "+41 791110004"), T0),
        Reply::VerificationSent { .. }
    ));
    let full = world.call(Role::Gateway, activation.clone(), T0);
    assert!(
        matches!(
            full,
            Reply::Error {
                code: ErrorCode::Busy,
                ..
            }
        ),
        "{full:?}"
    );
    bridge.take();
    assert!(matches!(
        world.call(Role::Admin, start("bob", "+41 791110002"), at(1)),
        Reply::VerificationSent { .. }
    ));
    // Once the sweeper drops the expired ones, there is room again.
    world.engine.sweep(at(61));
    assert!(matches!(
        world.call(Role::Gateway, activation, at(61)),
        Reply::ActivationStarted { .. }
    ));
}

#[test]
fn a_flood_to_one_number_range_is_refused_and_other_ranges_and_countries_go_on() {
    let mut w = World::new(
        "[sms]\nsends-per-range-per-minute = 3\nsends-per-prefix-per-minute = 100\nallowed-country-codes = [41, 44]\n",
    );
    let _bridge = w.bridge(1);
    // Five numbers of one range (+44 7000 0...): pumping through many
    // numbers, each under its own limit.
    for n in 0..5 {
        w.phone_user(&format!("pump{n}"), &format!("+44 70000{n}1234"));
    }
    let mut refused = Vec::new();
    for n in 0..5 {
        match w.send(&format!("pump{n}"), Channel::Sms, T0) {
            Reply::CodeSent { .. } => {}
            Reply::Error {
                code: ErrorCode::RateLimited,
                message,
                ..
            } => refused.push(message),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        refused,
        vec!["too many codes sent to this number range"; 2],
        "three a minute to the range"
    );
    // The rest of the country is not starved, nor is another country.
    w.phone_user("londoner", "+44 7911123456");
    assert!(matches!(
        w.send("londoner", Channel::Sms, T0),
        Reply::CodeSent { .. }
    ));
    w.phone_user("zurich", "+41 791234567");
    assert!(matches!(
        w.send("zurich", Channel::Sms, T0),
        Reply::CodeSent { .. }
    ));
    // A country not on the allow-list gets nothing sent, ever.
    w.phone_user("abroad", "+882 1234567");
    let reply = w.send("abroad", Channel::Sms, T0);
    assert_eq!(
        error_code(&reply),
        Some(ErrorCode::InvalidArgument),
        "{reply:?}"
    );
    // A minute later the range has room again.
    assert!(matches!(
        w.send("pump3", Channel::Sms, at(60)),
        Reply::CodeSent { .. }
    ));
}
