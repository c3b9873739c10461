//! The wire codec: every typed request and response survives encode then
//! decode, and arbitrary bytes never panic the decoder; whatever decodes
//! re-encodes to the same bytes.

use std::time::Duration;

use proptest::prelude::*;
use slsd::clock::Timestamp;
use slsd::identity::{
    ActivationId, ChallengeId, CodeId, DeviceId, MessageId, PushId, Serial, ShareId, Username,
};
use slsd::otp::hotp::Digits;
use slsd::otp::push::{PushKey, Signature};
use slsd::otp::token::TokenAlgorithm;
use slsd::otp::totp::TimeStep;
use slsd::otp::{HashAlgorithm, SecretKey};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::wire::Page;
use slsd::wire::request::{Answer, Pin};
use slsd::wire::token::{NewToken, TOKEN_STATES, TokenEntry, TokenFilter, TokenInfo, TokenState};
use slsd::wire::{
    ActivationRoute, AuditRecord, ChallengeText, DecodeError, DeliveryReport, DeliveryState,
    DeviceEntry, DeviceStatus, EnrollRequest, ErrorCode, Identification, Operation,
    PendingActivation, Refusal, Reply, Request, Response, ShareEntry, StatEntry, Verdict,
    split_frame,
};

fn phone() -> impl Strategy<Value = PhoneNumber> {
    (2u16..=999, "[2-9][0-9]{3,10}")
        .prop_map(|(cc, national)| PhoneNumber::new(cc, &national).unwrap())
}

fn channel() -> impl Strategy<Value = Channel> {
    prop_oneof![Just(Channel::Sms), Just(Channel::Voice)]
}

fn signature() -> impl Strategy<Value = Signature> {
    prop::collection::vec(any::<u8>(), 64).prop_map(|b| Signature(b.try_into().unwrap()))
}

fn username() -> impl Strategy<Value = Username> {
    "[A-Za-z0-9._@-]{1,64}".prop_map(|s| Username::new(&s).unwrap())
}

fn kind() -> impl Strategy<Value = DeviceKind> {
    prop::sample::select(DeviceKind::ALL.to_vec())
}

fn millis() -> impl Strategy<Value = Duration> {
    any::<u64>().prop_map(Duration::from_millis)
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        username().prop_map(|user| Operation::Devices { user }),
        (username(), 1u64..).prop_map(|(user, d)| Operation::Challenge {
            user,
            device: DeviceId(d)
        }),
        (any::<u64>(), "[ -~]{0,128}").prop_map(|(c, r)| Operation::Verify {
            challenge: ChallengeId(c),
            response: Answer::new(&r),
        }),
        (
            username(),
            kind(),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..=128)),
            prop::option::of("[0-9]{1,16}"),
            "\\PC{0,16}",
        )
            .prop_filter("label fits", |(.., label)| label.len() <= 64)
            .prop_map(
                |(user, kind, secret, pin, label)| Operation::Enroll(EnrollRequest {
                    user,
                    kind,
                    secret: secret.map(|s| SecretKey::from_bytes(s).unwrap()),
                    pin: pin.map(|p| Pin::new(&p)),
                    label,
                })
            ),
        (1u64..).prop_map(|d| Operation::Revoke {
            device: DeviceId(d)
        }),
        (username(), page()).prop_map(|(user, page)| Operation::ListDevices { user, page }),
        (username(), prop::option::of(1u64..)).prop_map(|(user, d)| Operation::Unlock {
            user,
            device: d.map(DeviceId),
        }),
        Just(Operation::Stats),
        (username(), channel()).prop_map(|(user, channel)| Operation::SendCode { user, channel }),
        (username(), "[0-9A-Z]{0,128}").prop_map(|(user, code)| Operation::VerifyCode {
            user,
            code: Answer::new(&code)
        }),
        any::<u64>().prop_map(|c| Operation::CodeStatus { code: CodeId(c) }),
        (username(), 1u64..).prop_map(|(user, d)| Operation::Push {
            user,
            device: DeviceId(d)
        }),
        any::<u64>().prop_map(|p| Operation::AwaitPush { push: PushId(p) }),
        (username(), phone(), "[a-z ]{0,64}").prop_map(|(user, number, label)| {
            Operation::EnrollPhone {
                user,
                number,
                label,
            }
        }),
        (1u64.., any::<[u8; 32]>()).prop_map(|(d, key)| Operation::BindPushKey {
            device: DeviceId(d),
            key: PushKey(key)
        }),
        Just(Operation::CarrierSubscribe),
        (any::<u64>(), prop::option::of("\\PC{0,50}")).prop_map(|(m, reason)| Operation::Ack {
            message: MessageId(m),
            report: match reason {
                None => DeliveryReport::Delivered,
                Some(reason) => DeliveryReport::Failed { reason },
            },
        }),
        (1u64.., signature()).prop_map(|(d, proof)| Operation::PhoneSubscribe {
            device: DeviceId(d),
            proof
        }),
        (any::<u64>(), any::<u8>(), signature()).prop_map(|(p, chosen, proof)| {
            Operation::Approve {
                push: PushId(p),
                chosen,
                proof,
            }
        }),
        any::<u64>().prop_map(|p| Operation::Deny { push: PushId(p) }),
        (username(), any::<u64>(), any::<u64>(), "[ -~]{0,128}").prop_map(
            |(user, amount_cents, c, r)| Operation::AuthorizeWithdrawal {
                user,
                amount_cents,
                challenge: ChallengeId(c),
                response: Answer::new(&r),
            }
        ),
        (
            username(),
            "[A-Z]{2}",
            "[0-9-]{1,10}",
            "[A-Z]{1,3}",
            "\\PC{1,20}"
        )
            .prop_map(
                |(user, residence, date_of_birth, citizenship, id_document)| {
                    Operation::SetIdentity {
                        user,
                        identity: Identification {
                            residence,
                            date_of_birth,
                            citizenship,
                            id_document,
                        },
                    }
                }
            ),
        (username(), any::<bool>())
            .prop_map(|(user, opted_out)| Operation::SetOptOut { user, opted_out }),
        (username(), username(), 1u64.., any::<u64>(), "[ -~]{0,128}").prop_map(
            |(requesting_user, owner_user, d, c, r)| Operation::ShareDevice {
                requesting_user,
                owner_user,
                device: DeviceId(d),
                challenge: ChallengeId(c),
                response: Answer::new(&r),
            }
        ),
        (any::<u64>(), any::<bool>()).prop_map(|(id, approve)| Operation::DecideShare {
            share: ShareId(id),
            approve
        }),
        any::<u64>().prop_map(|id| Operation::CancelShare { share: ShareId(id) }),
        page().prop_map(|page| Operation::Shares { page }),
        username().prop_map(|user| Operation::IssueTemporaryCode { user }),
        (1u64.., prop::option::of("[0-9]{4}"), "\\PC{0,20}").prop_map(|(d, pin, label)| {
            Operation::OrderReplacement {
                lost: DeviceId(d),
                pin: pin.map(|p| Pin::new(&p)),
                label,
            }
        }),
        (1u64.., any::<u64>()).prop_map(|(d, t)| Operation::ShipReplacement {
            device: DeviceId(d),
            shipped_at: Timestamp(t)
        }),
        page().prop_map(|page| Operation::PendingActivations { page }),
        (any::<u64>(), any::<u16>())
            .prop_map(|(after, limit)| Operation::AuditLog { after, limit }),
        "/[a-z/ .-]{0,64}".prop_map(|path| Operation::Backup { path }),
        username().prop_map(|user| Operation::Erase { user }),
        any::<bool>().prop_map(|rotate| Operation::Keyring { rotate }),
        any::<bool>().prop_map(|finish| Operation::Upgrade { finish }),
        (
            any::<u64>(),
            any::<bool>(),
            prop::collection::vec(
                (token_info(), prop::collection::vec(any::<u8>(), 1..=64)),
                0..4
            )
        )
            .prop_map(|(import, commit, tokens)| Operation::ImportTokens {
                import,
                commit,
                tokens: tokens
                    .into_iter()
                    .map(|(info, key)| NewToken {
                        info,
                        key: SecretKey::from_bytes(key).unwrap()
                    })
                    .collect(),
            }),
        (
            serial(),
            username(),
            prop::option::of("[0-9]{4,8}"),
            "[a-z ]{0,20}"
        )
            .prop_map(|(serial, user, pin, label)| Operation::AssignToken {
                serial,
                user,
                pin: pin.map(|p| Pin::new(&p)),
                label,
            }),
        (1u64.., "[0-9]{0,10}", "[0-9]{0,10}").prop_map(|(d, a, b)| Operation::Resync {
            device: DeviceId(d),
            first: Answer::new(&a),
            second: Answer::new(&b),
        }),
        (serial(), serial(), prop::option::of(serial()))
            .prop_map(|(from, to, after)| Operation::RetireTokens { from, to, after }),
        (
            username(),
            any::<u64>(),
            any::<u64>(),
            "[0-9]{1,16}",
            "[0-9]{0,10}"
        )
            .prop_map(|(user, d, c, pin, response)| Operation::ChangePin {
                user,
                device: DeviceId(d),
                challenge: ChallengeId(c),
                pin: Pin::new(&pin),
                response: Answer::new(&response),
            }),
        (
            any::<u64>(),
            any::<u64>(),
            prop::option::of("[0-9]{1,16}"),
            "[0-9]{0,10}"
        )
            .prop_map(|(d, c, pin, response)| Operation::ResetPin {
                device: DeviceId(d),
                challenge: ChallengeId(c),
                pin: pin.as_deref().map(Pin::new),
                response: Answer::new(&response),
            }),
        (token_filter(), prop::option::of(serial()), any::<u16>()).prop_map(
            |(filter, after, limit)| Operation::Tokens {
                filter,
                after,
                limit
            }
        ),
        username().prop_map(|user| Operation::StartActivation { user }),
        (username(), phone())
            .prop_map(|(user, number)| Operation::StartPhoneVerification { user, number }),
        (username(), "[0-9]{0,12}").prop_map(|(user, c)| Operation::ConfirmPhone {
            user,
            code: Answer::new(&c)
        }),
        (
            any::<u64>(),
            "[0-9]{0,12}",
            any::<[u8; 32]>(),
            "[0-9a-z]{1,16}",
            prop::option::of((1u64.., signature())),
            prop::option::of("[0-9]{1,12}"),
        )
            .prop_map(
                |(a, t, key, pin, previous, sms)| Operation::CompleteActivation {
                    activation: ActivationId(a),
                    token: Answer::new(&t),
                    key: PushKey(key),
                    pin: Pin::new(&pin),
                    previous: previous.map(|(d, proof)| (DeviceId(d), proof)),
                    sms_token: sms.map(|t| Answer::new(&t)),
                }
            ),
    ]
}

fn serial() -> impl Strategy<Value = Serial> {
    "[!-~]{1,64}".prop_map(|s| Serial::new(&s).unwrap())
}

fn token_info() -> impl Strategy<Value = TokenInfo> {
    let algorithm = prop_oneof![
        (6u32..=10).prop_map(|d| TokenAlgorithm::Hotp {
            hash: HashAlgorithm::Sha1,
            digits: Digits::new(d).unwrap()
        }),
        (6u32..=10, 1u64..=3600, any::<u64>()).prop_map(|(d, step, origin)| TokenAlgorithm::Totp {
            hash: HashAlgorithm::Sha256,
            digits: Digits::new(d).unwrap(),
            step: TimeStep::new(Duration::from_secs(step)).unwrap(),
            origin,
        }),
        Just(TokenAlgorithm::Ocra {
            suite: std::sync::Arc::new("OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1".parse().unwrap())
        }),
    ];
    (
        serial(),
        algorithm,
        any::<u64>(),
        prop::option::of(1u64..),
        prop::option::of(1u64..),
        "\\PC{0,20}",
    )
        .prop_map(
            |(serial, algorithm, counter, from, until, manufacturer)| TokenInfo {
                serial,
                algorithm,
                counter,
                valid_from: from.map(Timestamp),
                valid_until: until.map(Timestamp),
                manufacturer,
            },
        )
}

fn token_filter() -> impl Strategy<Value = TokenFilter> {
    (
        prop::option::of(prop::sample::select(TOKEN_STATES.to_vec())),
        prop::option::of(serial()),
        prop::option::of(serial()),
    )
        .prop_map(|(state, from, to)| TokenFilter { state, from, to })
}

fn page() -> impl Strategy<Value = Page> {
    (any::<u64>(), any::<u16>()).prop_map(|(after, limit)| Page { after, limit })
}

fn reply() -> impl Strategy<Value = Reply> {
    let text = prop_oneof![
        "[0-9]{4,64}".prop_map(ChallengeText::Question),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| ChallengeText::CardPositions(a, b)),
        Just(ChallengeText::EnterCode),
    ];
    let status = prop_oneof![
        Just(DeviceStatus::Active),
        Just(DeviceStatus::Expired),
        Just(DeviceStatus::Ordered),
        any::<u64>().prop_map(|t| DeviceStatus::Shipped {
            activates_at: Timestamp(t)
        }),
        Just(DeviceStatus::Suspended),
        Just(DeviceStatus::Pending),
    ];
    let entry = (
        1u64..,
        kind(),
        "\\PC{0,20}",
        millis(),
        status,
        prop::option::of(username()),
    )
        .prop_map(|(d, kind, label, locked_for, status, owner)| DeviceEntry {
            device: DeviceId(d),
            kind,
            label,
            locked_for,
            status,
            owner,
        });
    let limit = prop_oneof![Just(None), (0u64..u64::MAX).prop_map(Some)];
    let verdict = prop_oneof![
        (username(), 1u64.., kind()).prop_map(|(user, d, kind)| Verdict::Accepted {
            user,
            device: DeviceId(d),
            kind
        }),
        any::<u8>().prop_map(|attempts_left| Verdict::Rejected { attempts_left }),
        Just(Verdict::Expired),
        millis().prop_map(|retry_after| Verdict::LockedOut { retry_after }),
        Just(Verdict::UnknownChallenge),
        Just(Verdict::Denied),
    ];
    let delivery = prop_oneof![
        Just(DeliveryState::Pending),
        Just(DeliveryState::Delivered),
        "\\PC{0,40}".prop_map(|reason| DeliveryState::Failed { reason }),
    ];
    prop_oneof![
        (any::<bool>(), prop::collection::vec(entry, 0..8))
            .prop_map(|(required, devices)| Reply::Devices { required, devices }),
        (1u64.., kind(), limit.clone(), limit.clone()).prop_map(|(d, kind, today, five)| {
            Reply::WithdrawalApproved {
                device: DeviceId(d),
                kind,
                remaining_today: today,
                remaining_5d: five,
            }
        }),
        (
            kind(),
            limit.clone(),
            limit,
            prop::collection::vec(kind(), 0..9)
        )
            .prop_map(
                |(device_kind, today, five, kinds_that_allow)| Reply::OverLimit {
                    device_kind,
                    remaining_today: today,
                    remaining_5d: five,
                    kinds_that_allow,
                }
            ),
        (prop::sample::select(Refusal::ALL.to_vec()), "\\PC{0,60}")
            .prop_map(|(reason, message)| Reply::Refused { reason, message }),
        (any::<u64>(), any::<bool>()).prop_map(|(id, active)| Reply::Share {
            share: ShareId(id),
            active
        }),
        prop::collection::vec(
            (any::<u64>(), username(), username(), 1u64.., any::<bool>()).prop_map(
                |(id, requesting_user, owner_user, d, active)| ShareEntry {
                    share: ShareId(id),
                    requesting_user,
                    owner_user,
                    device: DeviceId(d),
                    active,
                }
            ),
            0..6
        )
        .prop_map(Reply::Shares),
        (1u64.., "[0-9]{8}", millis(), any::<u16>()).prop_map(|(d, code, expires_in, uses)| {
            Reply::TemporaryCode {
                device: DeviceId(d),
                code: Answer::new(&code),
                expires_in,
                uses,
            }
        }),
        prop::collection::vec(
            (1u64.., username(), 1u64.., any::<u64>(), any::<u64>()).prop_map(
                |(d, user, r, shipped, activates)| PendingActivation {
                    device: DeviceId(d),
                    user,
                    replaces: DeviceId(r),
                    shipped_at: Timestamp(shipped),
                    activates_at: Timestamp(activates),
                }
            ),
            0..6
        )
        .prop_map(Reply::PendingActivations),
        prop::collection::vec(
            (
                any::<u64>(),
                any::<u64>(),
                "[a-z]{1,8}",
                "[a-z-]{1,20}",
                prop::option::of(username()),
                prop::option::of(1u64..),
                "\\PC{0,40}"
            )
                .prop_map(|(seq, at, actor, action, user, d, detail)| AuditRecord {
                    seq,
                    at: Timestamp(at),
                    actor,
                    action,
                    user,
                    device: d.map(DeviceId),
                    detail,
                }),
            0..6
        )
        .prop_map(Reply::Audit),
        (any::<u64>(), prop::option::of(serial()))
            .prop_map(|(retired, last)| Reply::TokensRetired { retired, last }),
        (
            any::<u32>(),
            prop::collection::vec(any::<u32>(), 0..4),
            any::<u64>()
        )
            .prop_map(|(active, retiring, resealed)| Reply::Keyring {
                active,
                retiring,
                resealed
            }),
        (any::<[u64; 2]>(), any::<[u16; 2]>()).prop_map(|([format, release], [nodes, behind])| {
            Reply::Upgrade {
                format,
                release,
                nodes,
                behind,
            }
        }),
        (username(), any::<[u64; 2]>()).prop_map(|(pseudonym, [devices, audit_entries])| {
            Reply::Erased {
                pseudonym,
                devices,
                audit_entries,
            }
        }),
        ("/[a-z/ .-]{0,64}", any::<[u64; 4]>(), millis()).prop_map(
            |(path, [bytes, devices, rows, last_audit], took)| Reply::BackedUp {
                path,
                bytes,
                devices,
                rows,
                last_audit,
                took,
            }
        ),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(import, count, committed)| {
            Reply::TokensImported {
                import,
                count,
                committed,
            }
        }),
        prop::collection::vec(
            (
                token_info(),
                prop_oneof![
                    Just(TokenState::Unassigned),
                    (username(), 1u64..).prop_map(|(user, d)| TokenState::Assigned {
                        user,
                        device: DeviceId(d)
                    }),
                    any::<u64>().prop_map(|at| TokenState::Retired { at: Timestamp(at) }),
                ],
                any::<u64>()
            )
                .prop_map(|(info, state, at)| TokenEntry {
                    info,
                    state,
                    imported_at: Timestamp(at),
                }),
            0..4
        )
        .prop_map(Reply::Tokens),
        (
            any::<u64>(),
            prop_oneof![
                Just(ActivationRoute::Sms),
                (1u64.., text.clone()).prop_map(|(d, text)| ActivationRoute::Device {
                    device: DeviceId(d),
                    text
                }),
                (1u64.., text.clone()).prop_map(|(d, text)| ActivationRoute::DeviceAndSms {
                    device: DeviceId(d),
                    text
                }),
            ],
            millis()
        )
            .prop_map(|(a, route, expires_in)| Reply::ActivationStarted {
                activation: ActivationId(a),
                route,
                expires_in
            }),
        millis().prop_map(|expires_in| Reply::VerificationSent { expires_in }),
        prop::option::of(1u64..).prop_map(|d| Reply::PhoneConfirmed {
            sms_device: d.map(DeviceId)
        }),
        (
            username(),
            1u64..,
            prop::collection::vec(any::<u8>(), 1..=64),
            prop::option::of(1u64..)
        )
            .prop_map(|(user, d, s, r)| Reply::Activated {
                user,
                device: DeviceId(d),
                secret: SecretKey::from_bytes(s).unwrap(),
                replaced: r.map(DeviceId),
            }),
        (any::<u64>(), text, millis()).prop_map(|(c, text, expires_in)| Reply::Challenge {
            challenge: ChallengeId(c),
            text,
            expires_in
        }),
        verdict.prop_map(Reply::Verdict),
        (
            1u64..,
            prop::option::of(prop::collection::vec(any::<u8>(), 1..=128))
        )
            .prop_map(|(d, s)| Reply::Enrolled {
                device: DeviceId(d),
                secret: s.map(|s| SecretKey::from_bytes(s).unwrap()),
            }),
        (
            1u64..,
            "otpauth://totp/[a-z]{1,8}:[a-z]{1,8}\\?secret=[A-Z2-7]{32}"
        )
            .prop_map(|(d, uri)| {
                Reply::AppEnrolled {
                    device: DeviceId(d),
                    uri: slsd::otp::app::AppUri::new(&uri),
                }
            }),
        Just(Reply::Done),
        prop::collection::vec(
            ("[a-z_]{1,24}", any::<u64>()).prop_map(|(name, value)| StatEntry { name, value }),
            0..8
        )
        .prop_map(Reply::Stats),
        (any::<u64>(), millis(), millis()).prop_map(|(c, expires_in, resend_after)| {
            Reply::CodeSent {
                code: CodeId(c),
                expires_in,
                resend_after,
            }
        }),
        (channel(), any::<u8>(), delivery).prop_map(|(channel, sends, delivery)| {
            Reply::CodeStatus {
                channel,
                sends,
                delivery,
            }
        }),
        (any::<u64>(), any::<u8>(), millis()).prop_map(|(p, match_number, expires_in)| {
            Reply::PushSent {
                push: PushId(p),
                match_number,
                expires_in,
            }
        }),
        Just(Reply::Subscribed),
        (any::<u64>(), phone(), channel(), "\\PC{0,80}").prop_map(|(m, to, channel, text)| {
            Reply::Message {
                message: MessageId(m),
                to,
                channel,
                text: Answer::new(&text),
            }
        }),
        (any::<u64>(), username(), 1u64.., millis()).prop_map(|(p, user, d, expires_in)| {
            Reply::PushNotice {
                push: PushId(p),
                user,
                device: DeviceId(d),
                expires_in,
            }
        }),
        (
            prop::sample::select(ErrorCode::ALL.to_vec()),
            millis(),
            "\\PC{0,40}"
        )
            .prop_map(|(code, retry_after, message)| {
                Reply::Error {
                    code,
                    retry_after,
                    message,
                }
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(id in any::<u64>(), operation in operation()) {
        let request = Request { id, operation };
        let frame = request.to_frame();
        let (body, used) = split_frame(&frame, 65_536).unwrap().unwrap();
        prop_assert_eq!(used, frame.len());
        prop_assert_eq!(Request::decode(body).unwrap(), request);
    }

    #[test]
    fn responses_round_trip(id in any::<u64>(), reply in reply()) {
        let response = Response { id, reply };
        let frame = response.to_frame();
        let (body, _) = split_frame(&frame, 65_536).unwrap().unwrap();
        prop_assert_eq!(Response::decode(body).unwrap(), response);
    }

    #[test]
    fn arbitrary_bodies_decode_or_err_and_reencode_exactly(body in prop::collection::vec(any::<u8>(), 0..96)) {
        if let Ok(request) = Request::decode(&body) {
            let mut again = Vec::new();
            request.encode_body(&mut again);
            prop_assert_eq!(again, body.clone());
        }
        if let Ok(response) = Response::decode(&body) {
            let mut again = Vec::new();
            response.encode_body(&mut again);
            prop_assert_eq!(again, body);
        }
    }

    #[test]
    fn mutated_requests_never_panic(id in any::<u64>(), operation in operation(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut body = Vec::new();
        Request { id, operation }.encode_body(&mut body);
        let i = flip.index(body.len());
        body[i] = byte;
        let _ = Request::decode(&body);
        let _ = Request::decode(&body[..cut.index(body.len())]);
    }
}

#[test]
fn malformed_bodies_say_what_is_wrong() {
    assert_eq!(
        Request::decode(&[0; 7]),
        Err(DecodeError::Truncated("request id"))
    );
    assert_eq!(
        Request::decode(&[0; 8]),
        Err(DecodeError::Truncated("operation"))
    );
    assert_eq!(
        Request::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0x99]),
        Err(DecodeError::UnknownOperation(0x99))
    );
    // Stats with a trailing byte.
    assert_eq!(
        Request::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0x24, 0]),
        Err(DecodeError::TrailingBytes(1))
    );
    // Devices with a username of a bad character.
    let body = [0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0, 2, b'a', b' '];
    assert!(matches!(
        Request::decode(&body),
        Err(DecodeError::Invalid { field: "user", .. })
    ));
    // A string length beyond the body.
    let body = [0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0, 9, b'a'];
    assert_eq!(Request::decode(&body), Err(DecodeError::Truncated("user")));
    // A response longer than any code.
    let mut body = vec![0, 0, 0, 0, 0, 0, 0, 1, 0x03, 0, 0, 0, 0, 0, 0, 0, 7, 0, 129];
    body.extend([b'1'; 129]);
    assert!(matches!(
        Request::decode(&body),
        Err(DecodeError::Invalid {
            field: "response",
            ..
        })
    ));
}

#[test]
fn debug_output_hides_answers_pins_and_keys() {
    let request = Request {
        id: 1,
        operation: Operation::Enroll(EnrollRequest {
            user: Username::new("jdoe").unwrap(),
            kind: DeviceKind::DscPlus,
            secret: Some(SecretKey::from_bytes(b"very-secret-key!".to_vec()).unwrap()),
            pin: Some(Pin::new("4821")),
            label: "card".into(),
        }),
    };
    let text = format!("{request:?}");
    assert!(
        !text.contains("4821") && !text.contains("very-secret"),
        "{text}"
    );
    let verify = Operation::Verify {
        challenge: ChallengeId(5),
        response: Answer::new("65347737"),
    };
    assert!(!format!("{verify:?}").contains("65347737"));
    // A carrier message carries the code; the number shows its last digits.
    let message = Reply::Message {
        message: MessageId(1),
        to: PhoneNumber::parse("+41 791234567").unwrap(),
        channel: Channel::Sms,
        text: Answer::new("Your sls security code is 480213."),
    };
    let shown = format!("{message:?}");
    assert!(
        !shown.contains("480213") && !shown.contains("7912345"),
        "{shown}"
    );
    let code = Operation::VerifyCode {
        user: Username::new("jdoe").unwrap(),
        code: Answer::new("480213"),
    };
    assert!(!format!("{code:?}").contains("480213"));
    // An app's URI holds its key; a PIN change, the new PIN.
    let app = Reply::AppEnrolled {
        device: DeviceId(1),
        uri: slsd::otp::app::AppUri::new("otpauth://totp/sls:jdoe?secret=GEZDGNBVGY3TQOJQ"),
    };
    assert!(!format!("{app:?}").contains("GEZDGNBV"));
    let change = Operation::ChangePin {
        user: Username::new("jdoe").unwrap(),
        device: DeviceId(1),
        challenge: ChallengeId(2),
        pin: Pin::new("5793"),
        response: Answer::new("65347737"),
    };
    let shown = format!("{change:?}");
    assert!(
        !shown.contains("5793") && !shown.contains("65347737"),
        "{shown}"
    );
}

#[test]
fn bad_phone_numbers_and_proofs_name_the_rule() {
    let mut body = Vec::new();
    Request {
        id: 1,
        operation: Operation::EnrollPhone {
            user: Username::new("jdoe").unwrap(),
            number: PhoneNumber::parse("+41 446681800").unwrap(),
            label: String::new(),
        },
    }
    .encode_body(&mut body);
    // Put the trunk prefix back in: "+41 4466…" becomes "+41 0466…".
    let at = body.windows(4).position(|w| w == b"+41 ").unwrap() + 4;
    body[at] = b'0';
    match Request::decode(&body) {
        Err(DecodeError::Invalid { field, problem }) => {
            assert_eq!(field, "number");
            assert!(problem.contains("without the trunk prefix 0"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    // A proof of the wrong length.
    let mut body = vec![
        0, 0, 0, 0, 0, 0, 0, 1, 0x60, 0, 0, 0, 0, 0, 0, 0, 7, 0, 3, 1, 2, 3,
    ];
    assert_eq!(
        Request::decode(&body),
        Err(DecodeError::Invalid {
            field: "proof",
            problem: "must be 64 bytes".into()
        })
    );
    body.truncate(17);
    assert_eq!(Request::decode(&body), Err(DecodeError::Truncated("proof")));
    assert_eq!(
        format!("{:?}", Signature([9; 64])),
        "Signature(..)",
        "proofs are not printed"
    );
}

/// One of each operation.
fn one_of_each() -> Vec<Operation> {
    let user = || Username::new("jdoe").unwrap();
    let proof = Signature([0; 64]);
    vec![
        Operation::Devices { user: user() },
        Operation::Challenge {
            user: user(),
            device: DeviceId(1),
        },
        Operation::Verify {
            challenge: ChallengeId(1),
            response: Answer::new("1"),
        },
        Operation::SendCode {
            user: user(),
            channel: Channel::Sms,
        },
        Operation::VerifyCode {
            user: user(),
            code: Answer::new("1"),
        },
        Operation::CodeStatus { code: CodeId(1) },
        Operation::Push {
            user: user(),
            device: DeviceId(1),
        },
        Operation::AwaitPush { push: PushId(1) },
        Operation::Enroll(EnrollRequest {
            user: user(),
            kind: DeviceKind::Scc,
            secret: None,
            pin: None,
            label: String::new(),
        }),
        Operation::Revoke {
            device: DeviceId(1),
        },
        Operation::ListDevices {
            user: user(),
            page: Page::first(500),
        },
        Operation::Unlock {
            user: user(),
            device: None,
        },
        Operation::Stats,
        Operation::EnrollPhone {
            user: user(),
            number: PhoneNumber::parse("+41 446681800").unwrap(),
            label: String::new(),
        },
        Operation::BindPushKey {
            device: DeviceId(1),
            key: PushKey([0; 32]),
        },
        Operation::CarrierSubscribe,
        Operation::Ack {
            message: MessageId(1),
            report: DeliveryReport::Delivered,
        },
        Operation::PhoneSubscribe {
            device: DeviceId(1),
            proof,
        },
        Operation::Approve {
            push: PushId(1),
            chosen: 1,
            proof,
        },
        Operation::Deny { push: PushId(1) },
        Operation::AuthorizeWithdrawal {
            user: user(),
            amount_cents: 1,
            challenge: ChallengeId(1),
            response: Answer::new("1"),
        },
        Operation::StartActivation { user: user() },
        Operation::SetIdentity {
            user: user(),
            identity: Identification {
                residence: "CH".into(),
                date_of_birth: "1980-01-01".into(),
                citizenship: "CH".into(),
                id_document: "P 1".into(),
            },
        },
        Operation::SetOptOut {
            user: user(),
            opted_out: true,
        },
        Operation::ShareDevice {
            requesting_user: user(),
            owner_user: user(),
            device: DeviceId(1),
            challenge: ChallengeId(1),
            response: Answer::new("1"),
        },
        Operation::DecideShare {
            share: ShareId(1),
            approve: true,
        },
        Operation::CancelShare { share: ShareId(1) },
        Operation::Shares {
            page: Page::first(500),
        },
        Operation::IssueTemporaryCode { user: user() },
        Operation::OrderReplacement {
            lost: DeviceId(1),
            pin: None,
            label: String::new(),
        },
        Operation::ShipReplacement {
            device: DeviceId(1),
            shipped_at: Timestamp(1),
        },
        Operation::PendingActivations {
            page: Page::first(500),
        },
        Operation::AuditLog { after: 0, limit: 1 },
        Operation::Backup {
            path: "/var/backups/slsd/b.redb".into(),
        },
        Operation::Erase {
            user: Username::new("jdoe").unwrap(),
        },
        Operation::Keyring { rotate: true },
        Operation::Upgrade { finish: true },
        Operation::ImportTokens {
            import: 0,
            commit: true,
            tokens: Vec::new(),
        },
        Operation::Tokens {
            filter: TokenFilter::default(),
            after: None,
            limit: 1,
        },
        Operation::AssignToken {
            serial: Serial::new("1").unwrap(),
            user: user(),
            pin: None,
            label: String::new(),
        },
        Operation::Resync {
            device: DeviceId(1),
            first: Answer::new("1"),
            second: Answer::new("2"),
        },
        Operation::ChangePin {
            user: user(),
            device: DeviceId(1),
            challenge: ChallengeId(2),
            pin: Pin::new("1234"),
            response: Answer::new("12345678"),
        },
        Operation::ResetPin {
            device: DeviceId(1),
            challenge: ChallengeId(0),
            pin: None,
            response: Answer::new(""),
        },
        Operation::RetireTokens {
            from: Serial::new("0001").unwrap(),
            to: Serial::new("0009").unwrap(),
            after: None,
        },
        Operation::StartPhoneVerification {
            user: user(),
            number: PhoneNumber::parse("+41 446681800").unwrap(),
        },
        Operation::ConfirmPhone {
            user: user(),
            code: Answer::new("1"),
        },
        Operation::CompleteActivation {
            activation: ActivationId(1),
            token: Answer::new("1"),
            key: PushKey([0; 32]),
            pin: Pin::new("1"),
            previous: Some((DeviceId(1), proof)),
            sms_token: Some(Answer::new("1")),
        },
    ]
}

#[test]
fn every_operation_has_a_code_a_role_and_a_metric_label() {
    use slsd::engine::Role;
    let operations = one_of_each();
    let mut codes: Vec<u8> = operations.iter().map(Operation::code).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes.len(), operations.len(), "codes are distinct");
    for operation in &operations {
        assert!(
            slsd::metrics::OPERATIONS.contains(&operation.name()),
            "{} has no metric label",
            operation.name()
        );
        let expected = match operation.code() {
            0x01..=0x1f => Role::Gateway,
            0x20..=0x3f => Role::Admin,
            0x40..=0x5f => Role::Carrier,
            _ => Role::Phone,
        };
        assert_eq!(operation.role(), expected, "{}", operation.name());
        // And it travels.
        let request = Request {
            id: 7,
            operation: operation.clone(),
        };
        let frame = request.to_frame();
        assert_eq!(Request::decode(&frame[4..]).unwrap(), request);
    }
    // Every label but the catch-all names an operation.
    assert_eq!(slsd::metrics::OPERATIONS.len(), operations.len() + 1);
}
