//! PROTOCOL.md's worked examples are the codec's real output: each hex dump
//! in the document must equal the encoding of the value named here, and
//! decode back to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use slsd::identity::{ChallengeId, CodeId, DeviceId, MessageId, PushId, Username};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::wire::request::Answer;
use slsd::wire::{
    ChallengeText, DeliveryReport, DeviceEntry, EnrollRequest, ErrorCode, Operation, Reply,
    Request, Response, Verdict, split_frame,
};

enum Example {
    Request(Request),
    Response(Response),
}

fn jdoe() -> Username {
    Username::new("jdoe").unwrap()
}

fn examples() -> BTreeMap<&'static str, Example> {
    let req = |id, operation| Example::Request(Request { id, operation });
    let resp = |id, reply| Example::Response(Response { id, reply });
    BTreeMap::from([
        (
            "send-code-request",
            req(
                5,
                Operation::SendCode {
                    user: jdoe(),
                    channel: Channel::Sms,
                },
            ),
        ),
        (
            "code-sent-reply",
            resp(
                5,
                Reply::CodeSent {
                    code: CodeId(0x0102_0304_0506_0708),
                    expires_in: Duration::from_secs(300),
                    resend_after: Duration::from_secs(120),
                },
            ),
        ),
        (
            "carrier-message",
            resp(
                1,
                Reply::Message {
                    message: MessageId(0x0a0b_0c0d_0e0f_1011),
                    to: PhoneNumber::parse("+41 791234567").unwrap(),
                    channel: Channel::Sms,
                    text: Answer::new("code 123456"),
                },
            ),
        ),
        (
            "ack-request",
            req(
                2,
                Operation::Ack {
                    message: MessageId(0x0a0b_0c0d_0e0f_1011),
                    report: DeliveryReport::Delivered,
                },
            ),
        ),
        (
            "push-request",
            req(
                6,
                Operation::Push {
                    user: jdoe(),
                    device: DeviceId(8),
                },
            ),
        ),
        (
            "push-sent-reply",
            resp(
                6,
                Reply::PushSent {
                    push: PushId(0x1111_2222_3333_4444),
                    match_number: 42,
                    expires_in: Duration::from_secs(60),
                },
            ),
        ),
        (
            "push-notice",
            resp(
                1,
                Reply::PushNotice {
                    push: PushId(0x1111_2222_3333_4444),
                    user: jdoe(),
                    device: DeviceId(8),
                    expires_in: Duration::from_secs(60),
                },
            ),
        ),
        (
            "devices-request",
            req(1, Operation::Devices { user: jdoe() }),
        ),
        (
            "devices-reply",
            resp(
                1,
                Reply::Devices {
                    required: true,
                    devices: vec![DeviceEntry {
                        device: DeviceId(7),
                        kind: DeviceKind::DscPlus,
                        label: "card".into(),
                        locked_for: Duration::ZERO,
                        status: slsd::wire::DeviceStatus::Active,
                        owner: None,
                    }],
                },
            ),
        ),
        (
            "challenge-request",
            req(
                2,
                Operation::Challenge {
                    user: jdoe(),
                    device: DeviceId(7),
                },
            ),
        ),
        (
            "challenge-reply",
            resp(
                2,
                Reply::Challenge {
                    challenge: ChallengeId(0x1122_3344_5566_7788),
                    text: ChallengeText::Question("031337".into()),
                    expires_in: Duration::from_secs(120),
                },
            ),
        ),
        (
            "card-challenge-reply",
            resp(
                2,
                Reply::Challenge {
                    challenge: ChallengeId(0x1122_3344_5566_7788),
                    text: ChallengeText::CardPositions(17, 203),
                    expires_in: Duration::from_secs(120),
                },
            ),
        ),
        (
            "token-challenge-reply",
            resp(
                2,
                Reply::Challenge {
                    challenge: ChallengeId(0x1122_3344_5566_7788),
                    text: ChallengeText::EnterCode,
                    expires_in: Duration::from_secs(120),
                },
            ),
        ),
        (
            "token-verify-request",
            req(
                3,
                Operation::Verify {
                    challenge: ChallengeId(0x1122_3344_5566_7788),
                    // RFC 4226 appendix D: counter 0 of its test key.
                    response: Answer::new("755224"),
                },
            ),
        ),
        (
            "change-pin-request",
            req(
                4,
                Operation::ChangePin {
                    user: jdoe(),
                    device: DeviceId(7),
                    challenge: ChallengeId(0x1122_3344_5566_7788),
                    pin: slsd::wire::request::Pin::new("5793"),
                    response: Answer::new("17477202"),
                },
            ),
        ),
        (
            "app-enrolled-reply",
            resp(
                9,
                Reply::AppEnrolled {
                    device: DeviceId(8),
                    uri: slsd::otp::app::AppUri::new(
                        "otpauth://totp/sls:jdoe?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=sls&algorithm=SHA1&digits=6&period=30",
                    ),
                },
            ),
        ),
        (
            "verify-request",
            req(
                3,
                Operation::Verify {
                    challenge: ChallengeId(0x1122_3344_5566_7788),
                    response: Answer::new("65347737"),
                },
            ),
        ),
        (
            "verdict-accepted",
            resp(
                3,
                Reply::Verdict(Verdict::Accepted {
                    user: jdoe(),
                    device: DeviceId(7),
                    kind: DeviceKind::DscPlus,
                }),
            ),
        ),
        (
            "verdict-rejected",
            resp(3, Reply::Verdict(Verdict::Rejected { attempts_left: 2 })),
        ),
        (
            "verdict-locked-out",
            resp(
                3,
                Reply::Verdict(Verdict::LockedOut {
                    retry_after: Duration::from_secs(60),
                }),
            ),
        ),
        (
            "enroll-request",
            req(
                9,
                Operation::Enroll(EnrollRequest {
                    user: jdoe(),
                    kind: DeviceKind::Scc,
                    secret: None,
                    pin: None,
                    label: "spare".into(),
                }),
            ),
        ),
        (
            "error-forbidden",
            resp(
                4,
                Reply::error(ErrorCode::Forbidden, "enroll needs the admin role"),
            ),
        ),
    ])
}

/// `<!-- example: NAME -->` followed by a fenced block of hex bytes.
fn document_examples() -> BTreeMap<String, Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../PROTOCOL.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut found = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- example: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(
            lines.next().map(str::trim),
            Some("```text"),
            "example {name}: fence"
        );
        let mut bytes = Vec::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            // Each line: hex bytes, then optionally "  # comment".
            let hex_part = line.split('#').next().unwrap();
            for byte in hex_part.split_whitespace() {
                bytes.push(
                    u8::from_str_radix(byte, 16)
                        .unwrap_or_else(|_| panic!("example {name}: {byte:?}")),
                );
            }
        }
        found.insert(name.to_owned(), bytes);
    }
    found
}

fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
#[ignore = "prints the frames of the examples, for writing PROTOCOL.md"]
fn print_examples() {
    for (name, example) in examples() {
        let frame = match example {
            Example::Request(r) => r.to_frame(),
            Example::Response(r) => r.to_frame(),
        };
        println!("{name}: {}", hex_dump(&frame));
    }
}

#[test]
fn protocol_examples_are_what_the_codec_writes_and_reads() {
    let documented = document_examples();
    let expected = examples();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "PROTOCOL.md and this test name the same examples"
    );
    for (name, example) in &expected {
        let bytes = &documented[*name];
        let frame = match example {
            Example::Request(r) => r.to_frame(),
            Example::Response(r) => r.to_frame(),
        };
        assert_eq!(hex_dump(bytes), hex_dump(&frame), "example {name}");
        let (body, used) = split_frame(bytes, 4096).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "example {name} is one whole frame");
        match example {
            Example::Request(r) => assert_eq!(&Request::decode(body).unwrap(), r, "example {name}"),
            Example::Response(r) => {
                assert_eq!(&Response::decode(body).unwrap(), r, "example {name}")
            }
        }
    }
}
