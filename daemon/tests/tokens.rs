//! The token inventory on both stores, written once: an import in batches
//! commits whole; a serial the inventory holds drops the whole import; an
//! import never committed is invisible and left behind only until the
//! next import begins after `tokens.import-stale-after`; listings go by
//! serial, range and state, a page at a time.

mod common;

use common::nodes::{Node, T0};

use std::sync::Arc;
use std::time::Duration;

use slsd::clock::Timestamp;
use slsd::config::Config;
use slsd::identity::{ChallengeId, DeviceId, Serial};
use slsd::otp::HashAlgorithm;
use slsd::otp::HmacKey;
use slsd::otp::SecretKey;
use slsd::otp::hotp::Digits;
use slsd::otp::hotp::hotp;
use slsd::otp::ocra::{Ocra, OcraInput, Suite};
use slsd::otp::token::TokenAlgorithm;
use slsd::otp::totp::TimeStep;
use slsd::wire::request::Answer;
use slsd::wire::token::{NewToken, TokenFilter, TokenInfo, TokenState};
use slsd::wire::{ChallengeText, Verdict};
use slsd::wire::{ErrorCode, Operation, Reply};

/// Every serial `node`'s inventory lists under `filter`, a page of
/// `page` at a time.
fn serials(node: &Node, filter: &TokenFilter, page: u16) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let Reply::Tokens(tokens) = node.call(Operation::Tokens {
            filter: filter.clone(),
            after: after.clone(),
            limit: page,
        }) else {
            panic!("{}: a listing", node.name())
        };
        let Some(last) = tokens.last() else {
            return out;
        };
        after = Some(last.info.serial.clone());
        let full = tokens.len() == usize::from(page);
        out.extend(tokens.iter().map(|t| t.info.serial.to_string()));
        if !full {
            return out;
        }
    }
}

fn token(serial: &str) -> NewToken {
    NewToken {
        info: common::hotp::hotp_info(serial),
        key: SecretKey::from_bytes(serial.bytes().cycle().take(20).collect()).unwrap(),
    }
}

fn batch(import: u64, commit: bool, serials: &[&str]) -> Operation {
    Operation::ImportTokens {
        import,
        commit,
        tokens: serials.iter().map(|s| token(s)).collect(),
    }
}

/// The import a batch went to.
fn staged(reply: Reply) -> u64 {
    match reply {
        Reply::TokensImported {
            import,
            committed: false,
            ..
        } => import,
        other => panic!("a staged batch: {other:?}"),
    }
}

#[test]
fn an_import_in_batches_commits_whole_and_lists_by_serial() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let import = staged(node.call(batch(0, false, &["0003", "0001"])));
        assert_ne!(import, 0);
        // Staged tokens are nobody's yet.
        assert!(
            serials(&node, &TokenFilter::default(), 10).is_empty(),
            "{name}"
        );
        assert_eq!(staged(node.call(batch(import, false, &["0002"]))), import);
        assert_eq!(
            node.call(batch(import, true, &["0010", "0004"])),
            Reply::TokensImported {
                import,
                count: 5,
                committed: true
            },
            "{name}"
        );
        let all = ["0001", "0002", "0003", "0004", "0010"];
        // Pages of two, in serial order.
        assert_eq!(serials(&node, &TokenFilter::default(), 2), all, "{name}");
        let range = TokenFilter {
            from: Some(Serial::new("0002").unwrap()),
            to: Some(Serial::new("0004").unwrap()),
            ..TokenFilter::default()
        };
        assert_eq!(
            serials(&node, &range, 10),
            ["0002", "0003", "0004"],
            "{name}"
        );
        let assigned = TokenFilter {
            state: Some("assigned"),
            ..TokenFilter::default()
        };
        assert!(serials(&node, &assigned, 10).is_empty(), "{name}");
        let Reply::Tokens(listed) = node.call(Operation::Tokens {
            filter: TokenFilter::default(),
            after: None,
            limit: 1,
        }) else {
            panic!("{name}: a listing")
        };
        assert_eq!(listed[0].state, TokenState::Unassigned);
        assert_eq!(listed[0].info, token("0001").info);
        // When its first batch came (the calls are a tenth of a second apart).
        assert!(
            (T0.0..T0.0 + 10_000).contains(&listed[0].imported_at.0),
            "{name}"
        );
        // The import is in the audit log, once.
        let Reply::Audit(entries) = node.call(Operation::AuditLog {
            after: 0,
            limit: 10,
        }) else {
            panic!("{name}: the audit log")
        };
        let imports: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "import-tokens")
            .collect();
        assert_eq!(imports.len(), 1, "{name}: {entries:?}");
        assert!(
            imports[0].detail.contains("5 tokens"),
            "{name}: {entries:?}"
        );
    }
}

#[test]
fn a_serial_taken_drops_the_whole_import() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let first = staged(node.call(batch(0, false, &["A1", "A2"])));
        node.call(batch(first, true, &[]));
        assert_eq!(
            serials(&node, &TokenFilter::default(), 10),
            ["A1", "A2"],
            "{name}"
        );

        let second = staged(node.call(batch(0, false, &["B1", "B2"])));
        // A2 is the inventory's: the batch and the whole import go.
        let Reply::Error { code, message, .. } = node.call(batch(second, false, &["B3", "A2"]))
        else {
            panic!("{name}: a taken serial was accepted")
        };
        assert_eq!(code, ErrorCode::InvalidArgument, "{name}");
        assert!(
            message.contains("A2") && message.contains("nothing of it"),
            "{name}: {message}"
        );
        // Its staged tokens are gone too: B1 can come in a new import.
        assert!(matches!(
            node.call(batch(second, true, &[])),
            Reply::Error { .. }
        ));
        let third = staged(node.call(batch(0, false, &["B1"])));
        node.call(batch(third, true, &[]));
        assert_eq!(
            serials(&node, &TokenFilter::default(), 10),
            ["A1", "A2", "B1"],
            "{name}"
        );

        // A serial twice in one batch is taken by its first appearance.
        let Reply::Error { message, .. } = node.call(batch(0, true, &["C1", "C1"])) else {
            panic!("{name}: a serial twice in one batch")
        };
        assert!(message.contains("C1"), "{name}: {message}");
        assert_eq!(
            serials(&node, &TokenFilter::default(), 10),
            ["A1", "A2", "B1"],
            "{name}"
        );
    }
}

#[test]
fn an_unfinished_import_is_dropped_once_stale() {
    let stale = Config::from_toml("").unwrap().tokens.import_stale_after;
    for (node, _dir) in Node::both() {
        let name = node.name();
        let abandoned = staged(node.call(batch(0, false, &["S1"])));
        // Its serial is held while it may still finish...
        let early = T0.plus(stale - Duration::from_secs(1));
        assert!(
            matches!(
                node.call_at(batch(0, true, &["S1"]), early),
                Reply::Error { .. }
            ),
            "{name}"
        );
        // ...and freed when a later import begins after it went stale.
        let late = T0.plus(stale + Duration::from_secs(1));
        assert!(
            matches!(
                node.call_at(batch(0, true, &["S1"]), late),
                Reply::TokensImported {
                    count: 1,
                    committed: true,
                    ..
                }
            ),
            "{name}"
        );
        assert!(
            matches!(
                node.call_at(batch(abandoned, true, &[]), late),
                Reply::Error { .. }
            ),
            "{name}: the abandoned import was committed"
        );
        assert_eq!(
            serials(&node, &TokenFilter::default(), 10),
            ["S1"],
            "{name}"
        );
    }
}

#[test]
fn short_keys_two_moving_factors_and_oversized_imports_are_refused() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let suite: Suite = "OCRA-1:HOTP-SHA1-6:C-QN08-T1M".parse().unwrap();
        let both = TokenAlgorithm::Ocra {
            suite: Arc::new(suite),
        };
        let Reply::Error { message, .. } = node.call(Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens: vec![token("K0"), imported("CT1", both, &[7; 20])],
        }) else {
            panic!("{name}: a suite with C and T was imported")
        };
        assert!(
            message.contains("token CT1") && message.contains("(C) and a time step (T)"),
            "{name}: {message}"
        );
        let mut short = token("K1");
        short.key = SecretKey::from_bytes(vec![1; 10]).unwrap();
        let Reply::Error { message, .. } = node.call(Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens: vec![short],
        }) else {
            panic!("{name}: a 10-byte key was imported")
        };
        assert!(
            message.contains("tokens.min-key-bytes"),
            "{name}: {message}"
        );
        assert!(
            serials(&node, &TokenFilter::default(), 10).is_empty(),
            "{name}"
        );
    }
    // tokens.import-max counts the whole import, across batches.
    let config = Config::from_toml("[tokens]\nimport-max = 2").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::Embedded(common::open_engine(dir.path(), config));
    let import = staged(node.call(batch(0, false, &["M1", "M2"])));
    let Reply::Error { message, .. } = node.call(batch(import, true, &["M3"])) else {
        panic!("a third token went past tokens.import-max = 2")
    };
    assert!(message.contains("tokens.import-max"), "{message}");
    assert!(serials(&node, &TokenFilter::default(), 10).is_empty());
}

/// An imported token of `algorithm` and `key`.
fn imported(serial: &str, algorithm: TokenAlgorithm, key: &[u8]) -> NewToken {
    NewToken {
        info: TokenInfo {
            algorithm,
            ..token(serial).info
        },
        key: SecretKey::from_bytes(key.to_vec()).unwrap(),
    }
}

fn assign(serial: &str, pin: Option<&str>) -> Operation {
    Operation::AssignToken {
        serial: Serial::new(serial).unwrap(),
        user: slsd::identity::Username::new("alice").unwrap(),
        pin: pin.map(slsd::wire::request::Pin::new),
        label: "card".into(),
    }
}

/// A challenge for `device` of alice, as the login shows it.
fn challenge(node: &Node, device: DeviceId, now: Timestamp) -> (ChallengeId, ChallengeText) {
    match node.call_at(
        Operation::Challenge {
            user: slsd::identity::Username::new("alice").unwrap(),
            device,
        },
        now,
    ) {
        Reply::Challenge {
            challenge, text, ..
        } => (challenge, text),
        other => panic!("{}: a challenge: {other:?}", node.name()),
    }
}

fn verify(node: &Node, challenge: ChallengeId, code: &str, now: Timestamp) -> Verdict {
    match node.call_at(
        Operation::Verify {
            challenge,
            response: Answer::new(code),
        },
        now,
    ) {
        Reply::Verdict(verdict) => verdict,
        other => panic!("{}: a verdict: {other:?}", node.name()),
    }
}

const KEY: &[u8] = b"12345678901234567890";

#[test]
fn assigned_tokens_log_in_and_no_code_works_twice() {
    let sha1 = HashAlgorithm::Sha1;
    let six = Digits::exactly(6);
    let suite: std::sync::Arc<Suite> =
        std::sync::Arc::new("OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1".parse().unwrap());
    let hmac = HmacKey::new(sha1, &SecretKey::from_bytes(KEY.to_vec()).unwrap());
    for (node, _dir) in Node::both() {
        let name = node.name();
        let tokens = vec![
            imported(
                "H1",
                TokenAlgorithm::Hotp {
                    hash: sha1,
                    digits: six,
                },
                KEY,
            ),
            imported(
                "T1",
                TokenAlgorithm::Totp {
                    hash: sha1,
                    digits: six,
                    step: TimeStep::THIRTY_SECONDS,
                    origin: 0,
                },
                KEY,
            ),
            imported(
                "O1",
                TokenAlgorithm::Ocra {
                    suite: suite.clone(),
                },
                KEY,
            ),
        ];
        let import = Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens,
        };
        assert!(
            matches!(node.call(import), Reply::TokensImported { count: 3, .. }),
            "{name}"
        );

        // HOTP: a code within the look-ahead, then never the same again.
        let Reply::Enrolled {
            device: hotp_card, ..
        } = node.call(assign("H1", None))
        else {
            panic!("{name}: H1 assigned")
        };
        let code = |counter| hotp(&hmac, counter, six).as_str().to_owned();
        let (id, text) = challenge(&node, hotp_card, T0);
        assert_eq!(text, ChallengeText::EnterCode, "{name}");
        assert!(
            matches!(verify(&node, id, &code(3), T0), Verdict::Accepted { .. }),
            "{name}"
        );
        let (id, _) = challenge(&node, hotp_card, T0);
        // The code used, and one passed over: both refused.
        assert!(
            matches!(verify(&node, id, &code(3), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        assert!(
            matches!(verify(&node, id, &code(2), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        assert!(
            matches!(verify(&node, id, &code(4), T0), Verdict::Accepted { .. }),
            "{name}"
        );
        // Past the look-ahead (10 after 5): refused.
        let (id, _) = challenge(&node, hotp_card, T0);
        assert!(
            matches!(verify(&node, id, &code(16), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        assert!(
            matches!(verify(&node, id, &code(15), T0), Verdict::Accepted { .. }),
            "{name}"
        );

        // TOTP: a step of drift is fine; a step used, or before it, is not.
        let Reply::Enrolled {
            device: totp_app, ..
        } = node.call(assign("T1", None))
        else {
            panic!("{name}: T1 assigned")
        };
        let step = T0.0 / 30_000;
        let (id, _) = challenge(&node, totp_app, T0);
        assert!(
            matches!(
                verify(&node, id, &code(step + 2), T0),
                Verdict::Rejected { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                verify(&node, id, &code(step + 1), T0),
                Verdict::Accepted { .. }
            ),
            "{name}"
        );
        let (id, _) = challenge(&node, totp_app, T0);
        assert!(
            matches!(
                verify(&node, id, &code(step + 1), T0),
                Verdict::Rejected { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(verify(&node, id, &code(step), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        // A minute later the clock has moved past the used step.
        let later = T0.plus(Duration::from_secs(60));
        let (id, _) = challenge(&node, totp_app, later);
        assert!(
            matches!(
                verify(&node, id, &code(step + 2), later),
                Verdict::Accepted { .. }
            ),
            "{name}"
        );

        // OCRA with a counter and a PIN: the PIN is required at assignment.
        let Reply::Error { message, .. } = node.call(assign("O1", None)) else {
            panic!("{name}: O1 assigned without its PIN")
        };
        assert!(message.contains("PIN"), "{name}: {message}");
        let Reply::Enrolled { device: card, .. } = node.call(assign("O1", Some("1234"))) else {
            panic!("{name}: O1 assigned")
        };
        let ocra = Ocra::new(suite.clone(), &SecretKey::from_bytes(KEY.to_vec()).unwrap());
        let pin = suite.hash_pin("1234").unwrap();
        let respond = |question: &str, counter| {
            let input = OcraInput {
                counter: Some(counter),
                question,
                pin_hash: Some(pin.as_bytes()),
                ..OcraInput::default()
            };
            ocra.respond(&input).unwrap().as_str().to_owned()
        };
        let (id, ChallengeText::Question(question)) = challenge(&node, card, T0) else {
            panic!("{name}: an OCRA question")
        };
        assert!(
            matches!(
                verify(&node, id, &respond(&question, 1), T0),
                Verdict::Accepted { .. }
            ),
            "{name}"
        );
        let (id, ChallengeText::Question(question)) = challenge(&node, card, T0) else {
            panic!("{name}: an OCRA question")
        };
        assert!(
            matches!(
                verify(&node, id, &respond(&question, 1), T0),
                Verdict::Rejected { .. }
            ),
            "{name}"
        );
        assert!(
            matches!(
                verify(&node, id, &respond(&question, 2), T0),
                Verdict::Accepted { .. }
            ),
            "{name}"
        );

        // The inventory says who holds what; a token is assigned once.
        let Reply::Tokens(listed) = node.call(Operation::Tokens {
            filter: TokenFilter::default(),
            after: None,
            limit: 10,
        }) else {
            panic!("{name}: a listing")
        };
        let user = slsd::identity::Username::new("alice").unwrap();
        assert_eq!(
            listed[0].state,
            TokenState::Assigned {
                user: user.clone(),
                device: hotp_card
            },
            "{name}"
        );
        assert!(
            matches!(node.call(assign("H1", None)), Reply::Error { .. }),
            "{name}"
        );
        // A revoked token is retired for good.
        assert_eq!(
            node.call(Operation::Revoke { device: hotp_card }),
            Reply::Done,
            "{name}"
        );
        let retired = TokenFilter {
            state: Some("retired"),
            ..TokenFilter::default()
        };
        assert_eq!(serials(&node, &retired, 10), ["H1"], "{name}");
        assert!(
            matches!(node.call(assign("H1", None)), Reply::Error { .. }),
            "{name}"
        );
    }
}

#[test]
fn a_drifted_token_resyncs_forward_only_and_an_unlock_keeps_its_counter() {
    let six = Digits::exactly(6);
    let hmac = HmacKey::new(
        HashAlgorithm::Sha1,
        &SecretKey::from_bytes(KEY.to_vec()).unwrap(),
    );
    let code = |counter| hotp(&hmac, counter, six).as_str().to_owned();
    let alice = slsd::identity::Username::new("alice").unwrap();
    for (node, _dir) in Node::both() {
        let name = node.name();
        let algorithm = TokenAlgorithm::Hotp {
            hash: HashAlgorithm::Sha1,
            digits: six,
        };
        let import = Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens: vec![imported("R1", algorithm, KEY)],
        };
        assert!(
            matches!(node.call(import), Reply::TokensImported { .. }),
            "{name}"
        );
        let Reply::Enrolled { device, .. } = node.call(assign("R1", None)) else {
            panic!("{name}: R1 assigned")
        };
        let resync = |first: u64, second: u64| Operation::Resync {
            device,
            first: Answer::new(&code(first)),
            second: Answer::new(&code(second)),
        };
        // Pressed 40 times unused: past the look-ahead.
        let (id, _) = challenge(&node, device, T0);
        assert!(
            matches!(verify(&node, id, &code(40), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        // Two codes that are not consecutive are no resync.
        assert!(
            matches!(node.call(resync(40, 42)), Reply::Error { .. }),
            "{name}"
        );
        assert_eq!(node.call(resync(40, 41)), Reply::Done, "{name}");
        let (id, _) = challenge(&node, device, T0);
        assert!(
            matches!(verify(&node, id, &code(41), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        assert!(
            matches!(verify(&node, id, &code(42), T0), Verdict::Accepted { .. }),
            "{name}"
        );
        // The same pair again would bring used codes back: refused.
        assert!(
            matches!(node.call(resync(40, 41)), Reply::Error { .. }),
            "{name}"
        );
        // An unlock clears failures, not the counter.
        let unlock = Operation::Unlock {
            user: alice.clone(),
            device: Some(device),
        };
        assert_eq!(node.call(unlock), Reply::Done, "{name}");
        let (id, _) = challenge(&node, device, T0);
        assert!(
            matches!(verify(&node, id, &code(42), T0), Verdict::Rejected { .. }),
            "{name}"
        );
        assert!(
            matches!(verify(&node, id, &code(43), T0), Verdict::Accepted { .. }),
            "{name}"
        );
        // Devices whose codes do not move have nothing to resync.
        let card = Operation::Enroll(slsd::wire::EnrollRequest {
            user: alice.clone(),
            kind: slsd::profile::DeviceKind::Scc,
            secret: None,
            pin: None,
            label: String::new(),
        });
        let Reply::Enrolled { device: card, .. } = node.call(card) else {
            panic!("{name}: a card")
        };
        let Reply::Error { message, .. } = node.call(Operation::Resync {
            device: card,
            first: Answer::new("1"),
            second: Answer::new("2"),
        }) else {
            panic!("{name}: a card resynced")
        };
        assert!(message.contains("nothing to resync"), "{name}: {message}");
    }
}

/// Sixteen logins racing with the same HOTP and TOTP code, each on a
/// challenge of its own and a thread of its own (on the cluster, commands
/// interleave through the one Redis, with another node interfering):
/// exactly one is accepted, and the counter or step is used up after it.
#[test]
fn sixteen_logins_racing_with_one_code_get_one_acceptance() {
    const RACERS: usize = 16;
    let sha1 = HashAlgorithm::Sha1;
    let six = Digits::exactly(6);
    let hmac = HmacKey::new(sha1, &SecretKey::from_bytes(KEY.to_vec()).unwrap());
    let code = |counter| hotp(&hmac, counter, six).as_str().to_owned();
    let totp = TokenAlgorithm::Totp {
        hash: sha1,
        digits: six,
        step: TimeStep::THIRTY_SECONDS,
        origin: 0,
    };
    let hotp_token = TokenAlgorithm::Hotp {
        hash: sha1,
        digits: six,
    };
    for (node, _dir) in Node::both() {
        let name = node.name();
        let import = Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens: vec![
                imported("RH", hotp_token.clone(), KEY),
                imported("RT", totp.clone(), KEY),
            ],
        };
        assert!(
            matches!(node.call(import), Reply::TokensImported { count: 2, .. }),
            "{name}"
        );
        let step = T0.0 / 30_000;
        for (serial, right_code) in [("RH", code(2)), ("RT", code(step))] {
            let Reply::Enrolled { device, .. } = node.call(assign(serial, None)) else {
                panic!("{name}: {serial} assigned")
            };
            let challenges: Vec<_> = (0..RACERS)
                .map(|_| challenge(&node, device, T0).0)
                .collect();
            let barrier = std::sync::Barrier::new(RACERS);
            let accepted = std::thread::scope(|scope| {
                let racers: Vec<_> = challenges
                    .iter()
                    .map(|&id| {
                        let (node, barrier, right_code) = (&node, &barrier, &right_code);
                        scope.spawn(move || {
                            barrier.wait();
                            verify(node, id, right_code, T0)
                        })
                    })
                    .collect();
                racers
                    .into_iter()
                    .map(|racer| racer.join().unwrap())
                    .filter(|verdict| matches!(verdict, Verdict::Accepted { .. }))
                    .count()
            });
            assert_eq!(
                accepted, 1,
                "{name}: {serial}'s one code accepted {accepted} times"
            );
            // Used up: a later login with it fails, the next code works.
            let next_code = if serial == "RH" {
                code(3)
            } else {
                code(step + 1)
            };
            let (id, _) = challenge(&node, device, T0);
            assert!(
                matches!(verify(&node, id, &right_code, T0), Verdict::Rejected { .. }),
                "{name}: {serial}"
            );
            assert!(
                matches!(verify(&node, id, &next_code, T0), Verdict::Accepted { .. }),
                "{name}: {serial}"
            );
        }
    }
}

/// Retiring a serial range, a page at a time: unassigned tokens retired,
/// an assigned one by revoking its device, a retired one left alone;
/// nothing retired is assigned again.
#[test]
fn a_serial_range_retires_page_by_page_and_revokes_assigned_devices() {
    for (node, _dir) in Node::both() {
        let name = node.name();
        let numbered: Vec<String> = (0..1_100).map(|n| format!("R{n:05}")).collect();
        let names: Vec<&str> = numbered.iter().map(String::as_str).collect();
        assert!(
            matches!(
                node.call(batch(0, true, &names)),
                Reply::TokensImported { count: 1_100, .. }
            ),
            "{name}"
        );
        let Reply::Enrolled { device, .. } = node.call(assign("R00700", None)) else {
            panic!("{name}: R00700 assigned")
        };
        let retire = |from: &str, to: &str, after: Option<&str>| {
            node.call(Operation::RetireTokens {
                from: Serial::new(from).unwrap(),
                to: Serial::new(to).unwrap(),
                after: after.map(|a| Serial::new(a).unwrap()),
            })
        };
        assert_eq!(
            retire("R00010", "R00010", None),
            Reply::TokensRetired {
                retired: 1,
                last: None
            },
            "{name}"
        );
        // R00005..R01049: a full page (500), then the rest.
        let Reply::TokensRetired { retired, last } = retire("R00005", "R01049", None) else {
            panic!("{name}: a page retired")
        };
        assert_eq!(
            (retired, last.as_ref().map(Serial::as_str)),
            (499, Some("R00504")),
            "{name}"
        );
        let Reply::TokensRetired { retired, last } =
            retire("R00005", "R01049", last.as_ref().map(Serial::as_str))
        else {
            panic!("{name}: a page retired")
        };
        assert_eq!(
            (retired, last.as_ref().map(Serial::as_str)),
            (500, Some("R01004")),
            "{name}"
        );
        let Reply::TokensRetired { retired, last } =
            retire("R00005", "R01049", last.as_ref().map(Serial::as_str))
        else {
            panic!("{name}: a page retired")
        };
        assert_eq!((retired, last), (45, None), "{name}");
        let state = |state| TokenFilter {
            state: Some(state),
            ..TokenFilter::default()
        };
        assert_eq!(
            serials(&node, &state("retired"), 500).len(),
            1_045,
            "{name}"
        );
        let unassigned = serials(&node, &state("unassigned"), 500);
        assert_eq!(unassigned.len(), 55, "{name}");
        assert!(
            unassigned
                .iter()
                .all(|s| s.as_str() < "R00005" || s.as_str() > "R01049"),
            "{name}"
        );
        // The assigned token's device is revoked; the token stays retired.
        let Reply::Error { code, .. } = node.call(Operation::Revoke { device }) else {
            panic!("{name}: the device of a retired token is still there")
        };
        assert_eq!(code, ErrorCode::NotFound, "{name}");
        let Reply::Error { message, .. } = node.call(assign("R00700", None)) else {
            panic!("{name}: a retired token was assigned again")
        };
        assert!(message.contains("retired"), "{name}: {message}");
    }
}

/// On disk, a token's moving factor never goes back: a later write made
/// from an older reading (an unlock's, a resync's, the committer's) keeps
/// the higher value already stored, and a restart reads it.
#[test]
fn a_stored_moving_factor_is_never_written_lower() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml("").unwrap();
    let engine = common::open_engine(dir.path(), config.clone());
    let node = Node::Embedded(engine);
    let import = Operation::ImportTokens {
        import: 0,
        commit: true,
        tokens: vec![token("M1")],
    };
    assert!(matches!(node.call(import), Reply::TokensImported { .. }));
    let Reply::Enrolled { device, .. } = node.call(assign("M1", None)) else {
        panic!("assigned")
    };
    let Node::Embedded(engine) = node else {
        unreachable!()
    };
    let used = slsd::store::FailureState {
        moving: 7,
        ..Default::default()
    };
    let registry = engine.registry();
    registry.save_failures(&[(device, used)]).unwrap();
    registry
        .save_failures(&[(device, Default::default())])
        .unwrap();
    drop(engine);
    let engine = common::open_engine(dir.path(), config);
    assert_eq!(
        engine.registry().device(device).unwrap().failures().moving,
        7
    );
}
