//! A card's PIN changed by its holder (`ChangePin`) and reset at the help
//! desk (`ResetPin`), on both stores: the new PIN is taken only when the
//! card's response to the challenge verifies under it, and from then on
//! the old one fails — on every node of a cluster at once.

mod common;

use std::sync::Arc;

use common::nodes::Node;
use slsd::identity::{ChallengeId, DeviceId, Serial, Username};
use slsd::otp::SecretKey;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::otp::token::TokenAlgorithm;
use slsd::profile::DeviceKind;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::token::{NewToken, TokenInfo};
use slsd::wire::{ChallengeText, EnrollRequest, ErrorCode, Operation, Reply, Verdict};

const DSC_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const DSC_SUITE: &str = "OCRA-1:HOTP-SHA256-8:QN06-PSHA1";

fn alice() -> Username {
    Username::new("alice").unwrap()
}

fn enroll_dsc_plus(node: &Node, pin: &str) -> DeviceId {
    let enroll = Operation::Enroll(EnrollRequest {
        user: alice(),
        kind: DeviceKind::DscPlus,
        secret: Some(SecretKey::from_hex(DSC_KEY).unwrap()),
        pin: Some(Pin::new(pin)),
        label: "card".into(),
    });
    match node.call(enroll) {
        Reply::Enrolled { device, .. } => device,
        other => panic!("{}: enrolled: {other:?}", node.name()),
    }
}

fn challenge(node: &Node, device: DeviceId) -> (ChallengeId, String) {
    let asked = Operation::Challenge {
        user: alice(),
        device,
    };
    match node.call(asked) {
        Reply::Challenge {
            challenge,
            text: ChallengeText::Question(question),
            ..
        } => (challenge, question),
        other => panic!("{}: a challenge: {other:?}", node.name()),
    }
}

/// What a card with `suite` and `key` shows for `question` with `pin`
/// typed in (at `counter`, for a suite with one).
fn card(suite: &str, key: &SecretKey, pin: &str, question: &str, counter: Option<u64>) -> String {
    let suite: Suite = suite.parse().unwrap();
    let pin_hash = suite.hash_pin(pin).unwrap();
    let ocra = Ocra::new(suite, key);
    let input = OcraInput {
        question,
        counter,
        pin_hash: Some(pin_hash.as_bytes()),
        ..OcraInput::default()
    };
    ocra.respond(&input).unwrap().to_string()
}

fn dsc(pin: &str, question: &str) -> String {
    card(
        DSC_SUITE,
        &SecretKey::from_hex(DSC_KEY).unwrap(),
        pin,
        question,
        None,
    )
}

fn verdict(reply: Reply, node: &Node) -> Verdict {
    match reply {
        Reply::Verdict(verdict) => verdict,
        other => panic!("{}: a verdict: {other:?}", node.name()),
    }
}

/// A login with the card and `pin`: accepted or not.
fn logs_in(node: &Node, device: DeviceId, pin: &str) -> bool {
    let (id, question) = challenge(node, device);
    let answer = Operation::Verify {
        challenge: id,
        response: Answer::new(&dsc(pin, &question)),
    };
    matches!(verdict(node.call(answer), node), Verdict::Accepted { .. })
}

fn change_pin(
    node: &Node,
    device: DeviceId,
    challenge: ChallengeId,
    pin: &str,
    response: &str,
) -> Reply {
    node.call(Operation::ChangePin {
        user: alice(),
        device,
        challenge,
        pin: Pin::new(pin),
        response: Answer::new(response),
    })
}

fn audited(node: &Node, action: &str) -> usize {
    let Reply::Audit(entries) = node.call(Operation::AuditLog {
        after: 0,
        limit: 500,
    }) else {
        panic!("{}: the audit log", node.name())
    };
    entries.iter().filter(|e| e.action == action).count()
}

#[test]
fn a_pin_changes_only_with_a_response_under_the_new_pin() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let device = enroll_dsc_plus(&node, "4821");

        // A response under some other PIN: rejected (an attempt spent),
        // and nothing changes: the old PIN works, the new does not.
        let (id, question) = challenge(&node, device);
        let refused = change_pin(&node, device, id, "5793", &dsc("1111", &question));
        assert!(
            matches!(verdict(refused, &node), Verdict::Rejected { .. }),
            "{name}"
        );
        assert!(logs_in(&node, device, "4821"), "{name}");
        assert!(!logs_in(&node, device, "5793"), "{name}");
        assert!(logs_in(&node, device, "4821"), "{name}");
        assert_eq!(audited(&node, "change-pin"), 0, "{name}");

        // The response under the new PIN: the old stops, the new works.
        let (id, question) = challenge(&node, device);
        let changed = change_pin(&node, device, id, "5793", &dsc("5793", &question));
        assert!(
            matches!(verdict(changed, &node), Verdict::Accepted { .. }),
            "{name}"
        );
        assert!(!logs_in(&node, device, "4821"), "{name}");
        assert!(logs_in(&node, device, "5793"), "{name}");
        assert_eq!(audited(&node, "change-pin"), 1, "{name}");
        // The challenge was used up by the change.
        let again = change_pin(&node, device, id, "5793", &dsc("5793", &question));
        assert!(
            matches!(verdict(again, &node), Verdict::UnknownChallenge),
            "{name}"
        );

        // Refusals before anything is judged: a PIN the kind does not
        // take, another user's device, a device that takes no PIN.
        let (id, question) = challenge(&node, device);
        let Reply::Error { code, message, .. } =
            change_pin(&node, device, id, "12", &dsc("12", &question))
        else {
            panic!("{name}: a two-digit PIN was taken")
        };
        assert_eq!(code, ErrorCode::InvalidArgument, "{name}: {message}");
        assert!(message.contains("4 digits"), "{name}: {message}");
        let theirs = node.call(Operation::ChangePin {
            user: Username::new("mallory").unwrap(),
            device,
            challenge: id,
            pin: Pin::new("0000"),
            response: Answer::new(&dsc("0000", &question)),
        });
        assert!(
            matches!(
                theirs,
                Reply::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            ),
            "{name}: {theirs:?}"
        );
        // The challenge of one device does not change another's PIN.
        let other = enroll_dsc_plus(&node, "1357");
        let misdirected = change_pin(&node, other, id, "2468", &dsc("2468", &question));
        assert!(
            matches!(verdict(misdirected, &node), Verdict::UnknownChallenge),
            "{name}"
        );
        assert!(logs_in(&node, other, "1357"), "{name}");
        let Reply::Enrolled { device: card, .. } = node.call(Operation::Enroll(EnrollRequest {
            user: alice(),
            kind: DeviceKind::Scc,
            secret: None,
            pin: None,
            label: String::new(),
        })) else {
            panic!("{name}: a code card")
        };
        let Reply::Error { message, .. } = change_pin(&node, card, ChallengeId(1), "1234", "1")
        else {
            panic!("{name}: a code card's PIN was changed")
        };
        assert!(message.contains("takes no PIN"), "{name}: {message}");
    }
}

#[test]
fn a_changed_pin_counts_on_every_node_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _node_dir) = Node::both().pop().unwrap();
    let other = node.another(dir.path()).unwrap();
    let device = enroll_dsc_plus(&node, "4821");
    // The other node has the device, with the old PIN, in its cache.
    assert!(logs_in(&other, device, "4821"));
    let (id, question) = challenge(&node, device);
    let changed = change_pin(&node, device, id, "5793", &dsc("5793", &question));
    assert!(matches!(verdict(changed, &node), Verdict::Accepted { .. }));
    assert!(!logs_in(&other, device, "4821"));
    assert!(logs_in(&other, device, "5793"));
}

#[test]
fn the_help_desk_resets_a_forgotten_pin_with_a_fresh_response() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let device = enroll_dsc_plus(&node, "4821");
        let reset = |challenge: u64, pin: Option<&str>, response: &str| {
            node.call(Operation::ResetPin {
                device,
                challenge: ChallengeId(challenge),
                pin: pin.map(Pin::new),
                response: Answer::new(response),
            })
        };
        let Reply::Challenge {
            challenge: id,
            text: ChallengeText::Question(question),
            ..
        } = reset(0, None, "")
        else {
            panic!("{name}: a reset opens a challenge")
        };
        // Completed without the PIN: refused; with a wrong response:
        // rejected; the old PIN still works meanwhile.
        let Reply::Error { code, .. } = reset(id.0, None, &dsc("2468", &question)) else {
            panic!("{name}: a reset without its PIN")
        };
        assert_eq!(code, ErrorCode::InvalidArgument, "{name}");
        let wrong = reset(id.0, Some("2468"), &dsc("2469", &question));
        assert!(
            matches!(verdict(wrong, &node), Verdict::Rejected { .. }),
            "{name}"
        );
        let done = reset(id.0, Some("2468"), &dsc("2468", &question));
        assert!(
            matches!(verdict(done, &node), Verdict::Accepted { .. }),
            "{name}"
        );
        assert!(!logs_in(&node, device, "4821"), "{name}");
        assert!(logs_in(&node, device, "2468"), "{name}");
        assert_eq!(audited(&node, "reset-pin"), 1, "{name}");
        assert_eq!(audited(&node, "change-pin"), 0, "{name}");
    }
}

#[test]
fn a_counter_card_changes_its_pin_and_its_counter_moves_on() {
    const SUITE: &str = "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1";
    let key = SecretKey::from_bytes(b"12345678901234567890".to_vec()).unwrap();
    for (node, _dir) in Node::both() {
        let name = node.name();
        let token = NewToken {
            info: TokenInfo {
                serial: Serial::new("NAGRA1").unwrap(),
                algorithm: TokenAlgorithm::Ocra {
                    suite: Arc::new(SUITE.parse().unwrap()),
                },
                counter: 0,
                valid_from: None,
                valid_until: None,
                manufacturer: String::new(),
            },
            key: key.clone(),
        };
        let imported = node.call(Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens: vec![token],
        });
        assert!(
            matches!(imported, Reply::TokensImported { count: 1, .. }),
            "{name}"
        );
        let Reply::Enrolled { device, .. } = node.call(Operation::AssignToken {
            serial: Serial::new("NAGRA1").unwrap(),
            user: alice(),
            pin: Some(Pin::new("1234")),
            label: String::new(),
        }) else {
            panic!("{name}: assigned")
        };
        let answer =
            |pin: &str, question: &str, counter| card(SUITE, &key, pin, question, Some(counter));
        let (id, question) = challenge(&node, device);
        let changed = change_pin(&node, device, id, "9876", &answer("9876", &question, 0));
        assert!(
            matches!(verdict(changed, &node), Verdict::Accepted { .. }),
            "{name}"
        );
        // Counter 0 is used: its answer under the new PIN fails, the
        // next counter's works; the old PIN's does not.
        for (pin, counter, accepted) in [("9876", 0, false), ("1234", 1, false), ("9876", 1, true)]
        {
            let (id, question) = challenge(&node, device);
            let reply = node.call(Operation::Verify {
                challenge: id,
                response: Answer::new(&answer(pin, &question, counter)),
            });
            assert_eq!(
                matches!(verdict(reply, &node), Verdict::Accepted { .. }),
                accepted,
                "{name}: PIN {pin} at counter {counter}"
            );
        }
    }
}
