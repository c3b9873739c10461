//! The device lifecycle in-process, on a virtual clock, with a real registry
//! in a temporary directory: withdrawal limits and their ledger, temporary
//! codes, opt-out, shares, replacement cards, the audit log — and that all
//! of it survives a restart.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::open_engine;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::engine::{Engine, Role};
use slsd::identity::{ChallengeId, DeviceId, ShareId, Username};
use slsd::otp::SecretKey;
use slsd::otp::card::CodeCard;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::policy::calendar::Day;
use slsd::profile::DeviceKind;
use slsd::wire::Page;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{
    ChallengeText, DeviceStatus, EnrollRequest, ErrorCode, Identification, Operation, Refusal,
    Reply, Verdict,
};

/// Friday 2027-01-15, 08:00 UTC.
const T0: Timestamp = Timestamp(1_800_000_000_000);
const DAY: u64 = 86_400;
const DSC_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const PIN: &str = "4821";

fn later(seconds: u64) -> Timestamp {
    T0.plus(Duration::from_secs(seconds))
}

fn user(name: &str) -> Username {
    Username::new(name).unwrap()
}

fn config(extra: &str) -> Config {
    Config::from_toml(&format!(
        "[challenges]\nper-user-per-minute = 1000\n{extra}"
    ))
    .unwrap()
}

/// The right answer of a DSC+ (PIN `PIN`) or card with `key` to `text`.
fn answer_with(key: &SecretKey, text: &ChallengeText) -> String {
    match text {
        ChallengeText::Question(question) => {
            let suite: Suite = "OCRA-1:HOTP-SHA256-8:QN06-PSHA1".parse().unwrap();
            let pin_hash = suite.hash_pin(PIN).unwrap();
            let ocra = Ocra::new(suite, key);
            let input = OcraInput {
                question,
                pin_hash: Some(pin_hash.as_bytes()),
                ..OcraInput::default()
            };
            ocra.respond(&input).unwrap().to_string()
        }
        ChallengeText::CardPositions(a, b) => {
            let card = CodeCard::new(key, 224).unwrap();
            let pick = card.challenge(*a, *b).unwrap();
            card.response(pick).unwrap().as_str().to_owned()
        }
        ChallengeText::EnterCode => panic!("no answer for a code"),
    }
}

struct World {
    dir: tempfile::TempDir,
    engine: Arc<Engine>,
    rng: ChaCha20Rng,
    extra: String,
    /// Card secrets, to answer challenges.
    cards: Vec<(DeviceId, SecretKey)>,
}

impl World {
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(open_engine(dir.path(), config(extra)));
        Self {
            dir,
            engine,
            rng: ChaCha20Rng::seed_from_u64(11),
            extra: extra.to_owned(),
            cards: Vec::new(),
        }
    }

    fn restart(self) -> Self {
        let Self {
            dir,
            engine,
            rng,
            extra,
            cards,
        } = self;
        drop(engine);
        let engine = Arc::new(open_engine(dir.path(), config(&extra)));
        Self {
            dir,
            engine,
            rng,
            extra,
            cards,
        }
    }

    fn call(&mut self, role: Role, operation: Operation, now: Timestamp) -> Reply {
        self.engine
            .handle(role, operation, now, &mut self.rng)
            .reply
    }

    fn admin(&mut self, operation: Operation, now: Timestamp) -> Reply {
        self.call(Role::Admin, operation, now)
    }

    fn gateway(&mut self, operation: Operation, now: Timestamp) -> Reply {
        self.call(Role::Gateway, operation, now)
    }

    fn enroll(&mut self, name: &str, kind: DeviceKind) -> DeviceId {
        let (secret, pin) = match kind {
            DeviceKind::DscPlus => (Some(SecretKey::from_hex(DSC_KEY).unwrap()), Some(PIN)),
            _ => (None, None),
        };
        let request = EnrollRequest {
            user: user(name),
            kind,
            secret: secret.clone(),
            pin: pin.map(Pin::new),
            label: format!("{kind}"),
        };
        match self.admin(Operation::Enroll(request), T0) {
            Reply::Enrolled {
                device,
                secret: generated,
            } => {
                self.cards
                    .push((device, generated.or(secret).expect("a key")));
                device
            }
            other => panic!("enrol failed: {other:?}"),
        }
    }

    fn challenge(
        &mut self,
        name: &str,
        device: DeviceId,
        now: Timestamp,
    ) -> (ChallengeId, ChallengeText) {
        match self.gateway(
            Operation::Challenge {
                user: user(name),
                device,
            },
            now,
        ) {
            Reply::Challenge {
                challenge, text, ..
            } => (challenge, text),
            other => panic!("challenge failed: {other:?}"),
        }
    }

    /// The right answer of `device` (a DSC+ or a card enrolled here).
    fn answer(&self, device: DeviceId, text: &ChallengeText) -> String {
        answer_with(self.key_of(device), text)
    }

    fn key_of(&self, device: DeviceId) -> &SecretKey {
        &self
            .cards
            .iter()
            .find(|(id, _)| *id == device)
            .expect("a device of this world")
            .1
    }

    /// Opens a challenge and answers it rightly: (challenge, answer).
    fn login(&mut self, name: &str, device: DeviceId, now: Timestamp) -> (ChallengeId, Answer) {
        let (challenge, text) = self.challenge(name, device, now);
        let answer = self.answer(device, &text);
        (challenge, Answer::new(&answer))
    }

    fn withdraw(&mut self, name: &str, device: DeviceId, cents: u64, now: Timestamp) -> Reply {
        let (challenge, response) = self.login(name, device, now);
        self.gateway(
            Operation::AuthorizeWithdrawal {
                user: user(name),
                amount_cents: cents,
                challenge,
                response,
            },
            now,
        )
    }

    fn devices(
        &mut self,
        name: &str,
        now: Timestamp,
        everything: bool,
    ) -> (bool, Vec<(DeviceId, DeviceStatus, Option<Username>)>) {
        let op = if everything {
            Operation::ListDevices {
                user: user(name),
                page: Page::first(500),
            }
        } else {
            Operation::Devices { user: user(name) }
        };
        let reply = if everything {
            self.admin(op, now)
        } else {
            self.gateway(op, now)
        };
        match reply {
            Reply::Devices { required, devices } => (
                required,
                devices
                    .into_iter()
                    .map(|d| (d.device, d.status, d.owner))
                    .collect(),
            ),
            other => panic!("devices: {other:?}"),
        }
    }

    fn set_identity(&mut self, name: &str, residence: &str, document: &str) {
        let identity = Identification {
            residence: residence.into(),
            date_of_birth: "1980-02-29".into(),
            citizenship: "CH".into(),
            id_document: document.into(),
        };
        let reply = self.admin(
            Operation::SetIdentity {
                user: user(name),
                identity,
            },
            T0,
        );
        assert_eq!(reply, Reply::Done);
    }

    fn audit(&mut self) -> Vec<String> {
        match self.admin(
            Operation::AuditLog {
                after: 0,
                limit: 500,
            },
            T0,
        ) {
            Reply::Audit(entries) => entries
                .into_iter()
                .map(|e| {
                    format!(
                        "{} {} {} {}",
                        e.actor,
                        e.action,
                        e.user.map_or(String::new(), |u| u.to_string()),
                        e.detail
                    )
                })
                .collect(),
            other => panic!("audit: {other:?}"),
        }
    }
}

const USD: u64 = 100;

#[test]
fn withdrawals_follow_the_limits_of_the_device_that_confirmed_them() {
    let mut w = World::new("");
    let card = w.enroll("amy", DeviceKind::Scc);
    let dsc = w.enroll("amy", DeviceKind::DscPlus);
    // A code card allows 200,000 USD a day.
    let approved = w.withdraw("amy", card, 150_000 * USD, T0);
    assert_eq!(
        approved,
        Reply::WithdrawalApproved {
            device: card,
            kind: DeviceKind::Scc,
            remaining_today: Some(50_000 * USD),
            remaining_5d: Some(450_000 * USD),
        }
    );
    let refused = w.withdraw("amy", card, 60_000 * USD, T0);
    let Reply::OverLimit {
        device_kind,
        remaining_today,
        remaining_5d,
        kinds_that_allow,
    } = refused
    else {
        panic!("{refused:?}")
    };
    assert_eq!(device_kind, DeviceKind::Scc);
    assert_eq!(remaining_today, Some(50_000 * USD));
    assert_eq!(remaining_5d, Some(450_000 * USD));
    assert_eq!(kinds_that_allow.first(), Some(&DeviceKind::DscPlus));
    assert!(!kinds_that_allow.contains(&DeviceKind::Scc));
    // The DSC+ is unlimited.
    let big = w.withdraw("amy", dsc, 5_000_000 * USD, T0);
    assert!(
        matches!(
            big,
            Reply::WithdrawalApproved {
                remaining_today: None,
                ..
            }
        ),
        "{big:?}"
    );
    // No amount of nothing, nor one past what every store counts exactly.
    for cents in [0, slsd::engine::MAX_WITHDRAWAL_CENTS + 1] {
        let (challenge, response) = w.login("amy", dsc, T0);
        let refused = w.gateway(
            Operation::AuthorizeWithdrawal {
                user: user("amy"),
                amount_cents: cents,
                challenge,
                response,
            },
            T0,
        );
        assert!(
            matches!(
                refused,
                Reply::Error {
                    code: ErrorCode::InvalidArgument,
                    ..
                }
            ),
            "{cents}: {refused:?}"
        );
    }
    // A wrong answer is a verdict, and nothing is booked.
    let (challenge, _) = w.challenge("amy", card, T0);
    let wrong = w.gateway(
        Operation::AuthorizeWithdrawal {
            user: user("amy"),
            amount_cents: USD,
            challenge,
            response: Answer::new("00"),
        },
        T0,
    );
    assert!(
        matches!(wrong, Reply::Verdict(Verdict::Rejected { .. })),
        "{wrong:?}"
    );
    // Another user's challenge cannot authorise this user's withdrawal.
    let bob_card = w.enroll("bob", DeviceKind::Scc);
    let (challenge, response) = w.login("bob", bob_card, T0);
    let mixed = w.gateway(
        Operation::AuthorizeWithdrawal {
            user: user("amy"),
            amount_cents: USD,
            challenge,
            response,
        },
        T0,
    );
    assert!(
        matches!(
            mixed,
            Reply::Error {
                code: ErrorCode::InvalidArgument,
                ..
            }
        ),
        "{mixed:?}"
    );
    let booked = w
        .engine
        .registry()
        .withdrawn_on(&user("amy"), Day::of(T0))
        .unwrap();
    assert_eq!(booked, 5_150_000 * USD);
}

#[test]
fn five_business_days_reach_back_over_the_weekend() {
    let mut w = World::new("[withdrawals]\nholidays = [\"2027-01-18\"]\n");
    let card = w.enroll("amy", DeviceKind::Scc);
    // Friday, then the following days: 200,000 a day, 600,000 in five
    // business days. Monday the 18th is a holiday.
    for day in [0, 4, 5] {
        // Friday 15th, Tuesday 19th, Wednesday 20th.
        let reply = w.withdraw("amy", card, 200_000 * USD, later(day * DAY));
        assert!(
            matches!(reply, Reply::WithdrawalApproved { .. }),
            "day {day}: {reply:?}"
        );
    }
    // Thursday 21st: Fri, Tue, Wed, Thu are four business days (Monday a
    // holiday) plus Thursday the 14th: 600,000 already.
    let thursday = w.withdraw("amy", card, USD, later(6 * DAY));
    assert!(
        matches!(
            thursday,
            Reply::OverLimit {
                remaining_5d: Some(0),
                ..
            }
        ),
        "{thursday:?}"
    );
    // Friday 22nd: the five business days ending then are 22, 21, 20, 19
    // and 15 (the 18th is a holiday), so the 15th still counts.
    let friday = w.withdraw("amy", card, USD, later(7 * DAY));
    assert!(matches!(friday, Reply::OverLimit { .. }), "{friday:?}");
    // Monday 25th: 25, 22, 21, 20, 19 — Friday 15th has left the window.
    let monday = w.withdraw("amy", card, 200_000 * USD, later(10 * DAY));
    assert!(
        matches!(monday, Reply::WithdrawalApproved { .. }),
        "{monday:?}"
    );
}

#[test]
fn sixteen_concurrent_withdrawals_never_exceed_the_daily_limit() {
    let mut w = World::new("");
    // A device has one current challenge: one card per concurrent login.
    let cards: Vec<_> = (0..16).map(|_| w.enroll("amy", DeviceKind::Scc)).collect();
    // 16 × 20,000 USD = 320,000 > 200,000: exactly 10 fit.
    let logins: Vec<_> = cards.iter().map(|card| w.login("amy", *card, T0)).collect();
    let engine = Arc::clone(&w.engine);
    let handles: Vec<_> = logins
        .into_iter()
        .enumerate()
        .map(|(i, (challenge, response))| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(100 + i as u64);
                let op = Operation::AuthorizeWithdrawal {
                    user: user("amy"),
                    amount_cents: 20_000 * USD,
                    challenge,
                    response,
                };
                engine.handle(Role::Gateway, op, T0, &mut rng).reply
            })
        })
        .collect();
    let replies: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let approved = replies
        .iter()
        .filter(|r| matches!(r, Reply::WithdrawalApproved { .. }))
        .count();
    let refused = replies
        .iter()
        .filter(|r| matches!(r, Reply::OverLimit { .. }))
        .count();
    assert_eq!((approved, refused), (10, 6), "{replies:?}");
    let booked = w
        .engine
        .registry()
        .withdrawn_on(&user("amy"), Day::of(T0))
        .unwrap();
    assert_eq!(booked, 200_000 * USD);
}

#[test]
fn a_temporary_code_works_its_uses_and_no_more() {
    let mut w = World::new("[lifecycle]\ntemporary-code-uses = 2\n");
    let issued = w.admin(Operation::IssueTemporaryCode { user: user("amy") }, T0);
    let Reply::TemporaryCode {
        device,
        code,
        expires_in,
        uses,
    } = issued
    else {
        panic!("{issued:?}")
    };
    assert_eq!((expires_in, uses), (Duration::from_secs(2 * DAY), 2));
    assert_eq!(code.as_str().len(), 8);
    for use_ in 0..2 {
        let (challenge, text) = w.challenge("amy", device, later(use_));
        assert_eq!(text, ChallengeText::EnterCode);
        let verdict = w.gateway(
            Operation::Verify {
                challenge,
                response: code.clone(),
            },
            later(use_),
        );
        assert!(
            matches!(
                verdict,
                Reply::Verdict(Verdict::Accepted {
                    kind: DeviceKind::Temporary,
                    ..
                })
            ),
            "{verdict:?}"
        );
    }
    // Used up: no longer offered, no challenge.
    assert_eq!(w.devices("amy", later(3), false).1, vec![]);
    let refused = w.gateway(
        Operation::Challenge {
            user: user("amy"),
            device,
        },
        later(3),
    );
    assert!(
        matches!(
            refused,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(
        w.devices("amy", later(3), true).1,
        vec![(device, DeviceStatus::Expired, None)]
    );
    // A wrong code is refused like any wrong answer; a second code expires
    // with its validity, and Revoke ends one at once.
    let Reply::TemporaryCode { device: second, .. } =
        w.admin(Operation::IssueTemporaryCode { user: user("amy") }, T0)
    else {
        panic!()
    };
    let (challenge, _) = w.challenge("amy", second, T0);
    let wrong = w.gateway(
        Operation::Verify {
            challenge,
            response: Answer::new("00000000"),
        },
        T0,
    );
    assert!(
        matches!(wrong, Reply::Verdict(Verdict::Rejected { .. })),
        "{wrong:?}"
    );
    let after = w.gateway(
        Operation::Challenge {
            user: user("amy"),
            device: second,
        },
        later(2 * DAY),
    );
    assert!(
        matches!(
            after,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{after:?}"
    );
    assert_eq!(
        w.admin(Operation::Revoke { device: second }, T0),
        Reply::Done
    );
    // The code never reaches the audit log.
    let log = w.audit().join("\n");
    assert!(log.contains("issue-temporary-code"), "{log}");
    assert!(!log.contains(code.as_str()), "{log}");
}

#[test]
fn opting_out_is_refused_where_regulation_forbids_it() {
    let mut w = World::new("");
    w.enroll("amy", DeviceKind::Scc);
    w.set_identity("amy", "CH", "P1");
    assert!(w.devices("amy", T0, false).0);
    assert_eq!(
        w.admin(
            Operation::SetOptOut {
                user: user("amy"),
                opted_out: true
            },
            T0
        ),
        Reply::Done
    );
    assert!(!w.devices("amy", T0, false).0);
    assert_eq!(
        w.admin(
            Operation::SetOptOut {
                user: user("amy"),
                opted_out: false
            },
            T0
        ),
        Reply::Done
    );
    assert!(w.devices("amy", T0, false).0);
    for (name, residence, regulation) in [("hk", "HK", "SFC"), ("in", "IN", "NSE")] {
        w.set_identity(name, residence, "P2");
        let refused = w.admin(
            Operation::SetOptOut {
                user: user(name),
                opted_out: true,
            },
            T0,
        );
        let Reply::Refused { reason, message } = refused else {
            panic!("{refused:?}")
        };
        assert_eq!(reason, Refusal::OptOutForbidden);
        assert!(
            message.contains(regulation) && message.contains(residence),
            "{message}"
        );
        assert!(w.devices(name, T0, false).0);
    }
}

#[test]
fn a_share_follows_the_rules_waits_for_approval_and_can_be_cancelled() {
    let mut w = World::new("");
    let owner_dsc = w.enroll("owner", DeviceKind::DscPlus);
    let owner_card = w.enroll("owner", DeviceKind::Scc);
    let own_card = w.enroll("joint", DeviceKind::Scc);
    w.set_identity("owner", "CH", "P1");
    w.set_identity("joint", "CH", "P1");
    w.set_identity("stranger", "CH", "P9");
    let share = |w: &mut World, requester: &str, device: DeviceId| {
        let (challenge, response) = w.login("owner", device, T0);
        w.admin(
            Operation::ShareDevice {
                requesting_user: user(requester),
                owner_user: user("owner"),
                device,
                challenge,
                response,
            },
            T0,
        )
    };
    let refused = |reply: Reply| match reply {
        Reply::Refused { reason, message } => (reason, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(share(&mut w, "stranger", owner_dsc)),
        (
            Refusal::DifferentIdentification,
            "Different identification information".to_owned()
        )
    );
    assert_eq!(
        refused(share(&mut w, "joint", owner_card)),
        (Refusal::LessSecureDevice, "Less secure device".to_owned())
    );
    // A wrong proof is a verdict.
    let (challenge, _) = w.challenge("owner", owner_dsc, T0);
    let wrong = w.admin(
        Operation::ShareDevice {
            requesting_user: user("joint"),
            owner_user: user("owner"),
            device: owner_dsc,
            challenge,
            response: Answer::new("00000000"),
        },
        T0,
    );
    assert!(
        matches!(wrong, Reply::Verdict(Verdict::Rejected { .. })),
        "{wrong:?}"
    );
    // The most secure device, same identification: pending approval.
    let Reply::Share {
        share: id,
        active: false,
    } = share(&mut w, "joint", owner_dsc)
    else {
        panic!()
    };
    assert_eq!(
        w.devices("joint", T0, false).1,
        vec![(own_card, DeviceStatus::Active, None)]
    );
    assert_eq!(
        w.admin(
            Operation::DecideShare {
                share: id,
                approve: true
            },
            T0
        ),
        Reply::Share {
            share: id,
            active: true
        }
    );
    // In effect: the shared device only; the user's own card is suspended.
    assert_eq!(
        w.devices("joint", T0, false).1,
        vec![(owner_dsc, DeviceStatus::Active, Some(user("owner")))]
    );
    // The operator's list is by device id (the owner's DSC+ came first).
    assert_eq!(
        w.devices("joint", T0, true).1,
        vec![
            (owner_dsc, DeviceStatus::Active, Some(user("owner"))),
            (own_card, DeviceStatus::Suspended, None)
        ]
    );
    let (challenge, response) = w.login("joint", owner_dsc, T0);
    let verdict = w.gateway(
        Operation::Verify {
            challenge,
            response,
        },
        T0,
    );
    assert!(
        matches!(&verdict, Reply::Verdict(Verdict::Accepted { user: u, device, .. }) if u == &user("joint") && *device == owner_dsc),
        "{verdict:?}"
    );
    let suspended = w.gateway(
        Operation::Challenge {
            user: user("joint"),
            device: own_card,
        },
        T0,
    );
    assert!(
        matches!(
            suspended,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{suspended:?}"
    );
    // Cancelled: the own card is back.
    assert_eq!(
        w.admin(Operation::CancelShare { share: id }, T0),
        Reply::Done
    );
    assert_eq!(
        w.devices("joint", T0, false).1,
        vec![(own_card, DeviceStatus::Active, None)]
    );
    // A temporary device refuses sharing; IB Key is never shared; a
    // rejected share leaves nothing behind.
    w.admin(
        Operation::IssueTemporaryCode {
            user: user("joint"),
        },
        T0,
    );
    assert_eq!(
        refused(share(&mut w, "joint", owner_dsc)).0,
        Refusal::TemporaryDevice
    );
    let Reply::Share { share: other, .. } = share(&mut w, "owner2", owner_dsc) else {
        // owner2 has no identification on record.
        return;
    };
    panic!("a share without identification was accepted: {other}");
}

#[test]
fn a_replacement_card_ships_inactive_and_activates_by_use_or_by_time() {
    let mut w = World::new("");
    let lost = w.enroll("amy", DeviceKind::DscPlus);
    let order = Operation::OrderReplacement {
        lost,
        pin: Some(Pin::new(PIN)),
        label: "replacement".into(),
    };
    let Reply::Enrolled {
        device: new,
        secret: Some(secret),
    } = w.admin(order, T0)
    else {
        panic!()
    };
    w.cards.push((new, secret));
    assert_eq!(
        w.devices("amy", T0, true).1,
        vec![
            (lost, DeviceStatus::Active, None),
            (new, DeviceStatus::Ordered, None)
        ]
    );
    // Not shipped: it cannot be used, nor shipped twice... once shipped.
    let early = w.gateway(
        Operation::Challenge {
            user: user("amy"),
            device: new,
        },
        T0,
    );
    assert!(
        matches!(
            early,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{early:?}"
    );
    assert_eq!(
        w.admin(
            Operation::ShipReplacement {
                device: new,
                shipped_at: T0
            },
            T0
        ),
        Reply::Done
    );
    let twice = w.admin(
        Operation::ShipReplacement {
            device: new,
            shipped_at: T0,
        },
        T0,
    );
    assert!(
        matches!(
            twice,
            Reply::Error {
                code: ErrorCode::InvalidArgument,
                ..
            }
        ),
        "{twice:?}"
    );
    let activates_at = later(21 * DAY);
    assert_eq!(
        w.admin(
            Operation::PendingActivations {
                page: Page::first(500),
            },
            T0
        ),
        Reply::PendingActivations(vec![slsd::wire::PendingActivation {
            device: new,
            user: user("amy"),
            replaces: lost,
            shipped_at: T0,
            activates_at,
        }])
    );
    // Survives a restart, and is still listed for activation (the store's
    // index of shipped cards is rebuilt as it loads).
    let mut w = w.restart();
    assert_eq!(
        w.devices("amy", T0, true).1[1],
        (new, DeviceStatus::Shipped { activates_at }, None)
    );
    assert!(
        matches!(
            w.admin(Operation::PendingActivations { page: Page::first(500) }, T0),
            Reply::PendingActivations(listed) if listed.len() == 1 && listed[0].device == new
        ),
        "the shipped card is listed after a restart"
    );
    // The holder activates it by answering a challenge with it: the lost
    // card is retired.
    let (challenge, response) = w.login("amy", new, later(DAY));
    let verdict = w.gateway(
        Operation::Verify {
            challenge,
            response,
        },
        later(DAY),
    );
    assert!(
        matches!(verdict, Reply::Verdict(Verdict::Accepted { .. })),
        "{verdict:?}"
    );
    assert_eq!(
        w.devices("amy", later(DAY), true).1,
        vec![(new, DeviceStatus::Active, None)]
    );
    assert_eq!(
        w.admin(
            Operation::PendingActivations {
                page: Page::first(500),
            },
            T0
        ),
        Reply::PendingActivations(vec![])
    );

    // A second replacement, left alone, activates itself after 21 days.
    let order = Operation::OrderReplacement {
        lost: new,
        pin: Some(Pin::new(PIN)),
        label: String::new(),
    };
    let Reply::Enrolled { device: third, .. } = w.admin(order, T0) else {
        panic!()
    };
    w.admin(
        Operation::ShipReplacement {
            device: third,
            shipped_at: T0,
        },
        T0,
    );
    assert_eq!(
        w.engine
            .activate_due(later(21 * DAY - 1), &mut w.rng.clone()),
        0
    );
    assert_eq!(
        w.engine.activate_due(later(21 * DAY), &mut w.rng.clone()),
        1
    );
    assert_eq!(
        w.devices("amy", later(21 * DAY), true).1,
        vec![(third, DeviceStatus::Active, None)]
    );
    let log = w.audit().join("\n");
    assert!(
        log.contains("system replacement-activated amy activated automatically"),
        "{log}"
    );
    assert!(
        log.contains("system replacement-activated amy activated by its holder"),
        "{log}"
    );
}

#[test]
fn the_lifecycle_survives_a_restart_and_every_change_is_audited() {
    let mut w = World::new("");
    let owner_dsc = w.enroll("owner", DeviceKind::DscPlus);
    w.enroll("joint", DeviceKind::Scc);
    let card = w.enroll("amy", DeviceKind::Scc);
    w.set_identity("owner", "CH", "P1");
    w.set_identity("joint", "CH", "P1");
    let (challenge, response) = w.login("owner", owner_dsc, T0);
    let Reply::Share {
        share,
        active: false,
    } = w.admin(
        Operation::ShareDevice {
            requesting_user: user("joint"),
            owner_user: user("owner"),
            device: owner_dsc,
            challenge,
            response,
        },
        T0,
    )
    else {
        panic!()
    };
    let Reply::TemporaryCode {
        device: temporary,
        code,
        ..
    } = w.admin(Operation::IssueTemporaryCode { user: user("amy") }, T0)
    else {
        panic!()
    };
    let approved = w.withdraw("amy", card, 150_000 * USD, T0);
    assert!(matches!(approved, Reply::WithdrawalApproved { .. }));
    w.admin(
        Operation::SetOptOut {
            user: user("owner"),
            opted_out: true,
        },
        T0,
    );

    let mut w = w.restart();
    // The pending share is still pending and can be approved.
    let Reply::Shares(shares) = w.admin(
        Operation::Shares {
            page: Page::first(500),
        },
        T0,
    ) else {
        panic!()
    };
    assert_eq!(shares.len(), 1);
    assert_eq!((shares[0].share, shares[0].active), (share, false));
    assert_eq!(
        w.admin(
            Operation::DecideShare {
                share,
                approve: true
            },
            T0
        ),
        Reply::Share {
            share,
            active: true
        }
    );
    // The temporary code still works.
    let (challenge, _) = w.challenge("amy", temporary, T0);
    let verdict = w.gateway(
        Operation::Verify {
            challenge,
            response: code,
        },
        T0,
    );
    assert!(
        matches!(verdict, Reply::Verdict(Verdict::Accepted { .. })),
        "{verdict:?}"
    );
    // The ledger remembers: 50,000 left today on the card.
    let over = w.withdraw("amy", card, 50_001 * USD, T0);
    assert!(
        matches!(over, Reply::OverLimit { remaining_today: Some(r), .. } if r == 50_000 * USD),
        "{over:?}"
    );
    // Opt-out too.
    assert!(!w.devices("owner", T0, false).0);
    let log = w.audit();
    let actions: Vec<_> = log
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect();
    for action in [
        "enroll",
        "set-identity",
        "share-pending",
        "issue-temporary-code",
        "withdrawal-approved",
        "opt-out",
        "share-approved",
        "temporary-code-used",
    ] {
        assert!(
            actions.contains(&action.to_owned()),
            "{action} missing from {log:?}"
        );
    }
    assert!(
        log.iter().any(|l| l.starts_with("admin enroll owner")),
        "{log:?}"
    );
    // No identification data in the log: the residence only.
    assert!(!log.join("\n").contains("1980-02-29"), "{log:?}");
    assert!(!log.join("\n").contains("P1"), "{log:?}");
    // Paging.
    let Reply::Audit(first) = w.admin(Operation::AuditLog { after: 0, limit: 2 }, T0) else {
        panic!()
    };
    let Reply::Audit(next) = w.admin(
        Operation::AuditLog {
            after: first[1].seq,
            limit: 1,
        },
        T0,
    ) else {
        panic!()
    };
    assert_eq!((first.len(), next[0].seq), (2, first[1].seq + 1));
}

#[test]
fn the_lifecycle_operations_are_the_admin_role_s() {
    let mut w = World::new("");
    let reply = w.gateway(Operation::IssueTemporaryCode { user: user("amy") }, T0);
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    let reply = w.admin(
        Operation::DecideShare {
            share: ShareId(1),
            approve: true,
        },
        T0,
    );
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{reply:?}"
    );
}

#[test]
fn concurrent_changes_share_their_fsyncs_and_all_survive_a_restart() {
    let w = World::new("");
    // 16 threads, each turning its own user's opt-out on and off 25 times
    // (ending on): 400 changes.
    let engine = Arc::clone(&w.engine);
    let (changes_before, flushes_before) = engine.registry().change_counts();
    let handles: Vec<_> = (0..16)
        .map(|i| {
            let engine = Arc::clone(&engine);
            std::thread::spawn(move || {
                let mut rng = ChaCha20Rng::seed_from_u64(200 + i);
                (0..25)
                    .filter(|j| {
                        let op = Operation::SetOptOut {
                            user: user(&format!("user{i}")),
                            opted_out: j % 2 == 0,
                        };
                        let reply = engine.handle(Role::Admin, op, T0, &mut rng).reply;
                        matches!(reply, Reply::Done)
                    })
                    .count()
            })
        })
        .collect();
    let done: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(done, 400);
    let (changes, flushes) = engine.registry().change_counts();
    assert_eq!(changes - changes_before, 400);
    assert!(
        flushes - flushes_before < 400,
        "16 threads at once: some fsyncs carry several changes ({} for 400)",
        flushes - flushes_before
    );
    // Every acknowledged change is on disk.
    drop(engine);
    let w = w.restart();
    for i in 0..16 {
        assert!(w.engine.registry().opted_out(&user(&format!("user{i}"))));
    }
}

#[test]
fn approved_withdrawals_survive_a_restart_and_count_after_it() {
    let mut w = World::new("");
    let card = w.enroll("amy", DeviceKind::Scc);
    for _ in 0..3 {
        let reply = w.withdraw("amy", card, 50_000 * USD, T0);
        assert!(
            matches!(reply, Reply::WithdrawalApproved { .. }),
            "{reply:?}"
        );
    }
    let mut w = w.restart();
    let booked = w.engine.registry().withdrawn_on(&user("amy"), Day::of(T0));
    assert_eq!(booked.unwrap(), 150_000 * USD);
    // What was booked before the restart counts against the limit after
    // it (200,000 a day on a card): 50,000 more fits, then nothing.
    let reply = w.withdraw("amy", card, 50_000 * USD, T0);
    assert!(
        matches!(reply, Reply::WithdrawalApproved { .. }),
        "{reply:?}"
    );
    let reply = w.withdraw("amy", card, USD, T0);
    assert!(matches!(reply, Reply::OverLimit { .. }), "{reply:?}");
    // The audit log holds one entry per approval.
    let Reply::Audit(entries) = w.admin(
        Operation::AuditLog {
            after: 0,
            limit: 100,
        },
        T0,
    ) else {
        panic!()
    };
    let approvals = entries
        .iter()
        .filter(|e| e.action == "withdrawal-approved")
        .count();
    assert_eq!(approvals, 4);
}

#[test]
fn an_operators_device_list_comes_a_page_at_a_time() {
    let mut w = World::new("");
    let mut enrolled: Vec<DeviceId> = (0..7).map(|_| w.enroll("many", DeviceKind::Scc)).collect();
    enrolled.sort_by_key(|d| d.0);
    let page = |w: &mut World, after: u64, limit: u16| {
        let list = Operation::ListDevices {
            user: user("many"),
            page: Page { after, limit },
        };
        match w.admin(list, T0) {
            Reply::Devices { devices, .. } => devices.iter().map(|d| d.device).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    // Pages of three, each after the last id of the one before: 3, 3, 1.
    let mut seen: Vec<DeviceId> = Vec::new();
    let mut after = 0;
    loop {
        let got = page(&mut w, after, 3);
        seen.extend(&got);
        match got.last() {
            Some(last) if got.len() == 3 => after = last.0,
            _ => break,
        }
    }
    assert_eq!(seen, enrolled);
    assert_eq!(page(&mut w, 0, 0), Vec::<DeviceId>::new());
    assert_eq!(page(&mut w, enrolled[6].0, 3), Vec::<DeviceId>::new());
}

#[test]
fn an_erasure_takes_the_shares_the_ledger_and_the_identity_and_keeps_a_pseudonym() {
    let mut w = World::new("");
    let olga_dsc = w.enroll("olga", DeviceKind::DscPlus);
    let joe_card = w.enroll("joe", DeviceKind::Scc);
    w.set_identity("olga", "CH", "P1");
    w.set_identity("joe", "CH", "P1");
    // joe uses olga's card, approved; olga withdraws.
    let (challenge, response) = w.login("olga", olga_dsc, T0);
    let Reply::Share { share, .. } = w.admin(
        Operation::ShareDevice {
            requesting_user: user("joe"),
            owner_user: user("olga"),
            device: olga_dsc,
            challenge,
            response,
        },
        T0,
    ) else {
        panic!("share")
    };
    let approve = Operation::DecideShare {
        share,
        approve: true,
    };
    assert_eq!(
        w.admin(approve, T0),
        Reply::Share {
            share,
            active: true
        }
    );
    assert!(matches!(
        w.withdraw("olga", olga_dsc, 50 * USD, T0),
        Reply::WithdrawalApproved { .. }
    ));
    let today = slsd::policy::calendar::Day::of(T0);
    assert_eq!(
        w.engine
            .registry()
            .withdrawn_on(&user("olga"), today)
            .unwrap(),
        50 * USD
    );

    let Reply::Erased {
        pseudonym,
        devices: 1,
        audit_entries,
    } = w.admin(Operation::Erase { user: user("olga") }, T0)
    else {
        panic!("erase")
    };
    // Her account, card and ledger are gone; joe is back on his own card.
    let registry = w.engine.registry();
    assert_eq!(
        registry.user(&user("olga")),
        slsd::store::Account::default()
    );
    assert!(registry.devices_of(&user("olga")).is_empty());
    assert_eq!(registry.withdrawn_on(&user("olga"), today).unwrap(), 0);
    assert_eq!(
        w.devices("joe", T0, false).1,
        vec![(joe_card, DeviceStatus::Active, None)]
    );
    assert_eq!(
        w.admin(
            Operation::Shares {
                page: Page::first(10)
            },
            T0
        ),
        Reply::Shares(Vec::new())
    );
    // No entry names her; hers and joe's share entries name the pseudonym.
    let audit = w.audit();
    assert!(audit.iter().all(|e| !e.contains("olga")), "{audit:#?}");
    let pseudonymous = audit
        .iter()
        .filter(|e| e.contains(pseudonym.as_str()))
        .count();
    // Enrolment, identity, the share's two entries (owner in the detail),
    // the withdrawal; then the share's removal and the erasure itself.
    assert_eq!(audit_entries, 5, "{audit:#?}");
    assert_eq!(pseudonymous, 7, "{audit:#?}");
    assert!(
        audit
            .last()
            .unwrap()
            .starts_with(&format!("admin erase {pseudonym} 1 devices"))
    );
    // The restart reads it so.
    let mut w = w.restart();
    assert_eq!(
        w.engine.registry().user(&user("olga")),
        slsd::store::Account::default()
    );
    assert!(w.audit().iter().all(|e| !e.contains("olga")));
}
