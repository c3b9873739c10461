//! Arbitrary typed requests and responses, within the documented field
//! limits, encode and decode back to themselves, alone and as frames.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use slsd::identity::{ChallengeId, CodeId, DeviceId, MessageId, PushId, Username};
use slsd::otp::push::{PushKey, Signature};
use slsd::otp::{MAX_CODE_LEN, SecretKey};
use slsd::phone::{Channel, PhoneNumber};
use slsd::profile::DeviceKind;
use slsd::wire::Page;
use slsd::wire::request::{Answer, MAX_LABEL_LEN, MAX_PIN_LEN, MAX_REASON_LEN, Pin};
use slsd::wire::{
    ChallengeText, DeliveryReport, DeliveryState, DeviceEntry, EnrollRequest, ErrorCode,
    MAX_FRAME_LIMIT, Operation, Reply, Request, Response, StatEntry, Verdict, split_frame,
};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(request) = request(&mut u) {
        let frame = request.to_frame();
        let (body, used) = split_frame(&frame, MAX_FRAME_LIMIT)
            .expect("a frame we wrote is well-formed")
            .expect("and whole");
        assert_eq!(used, frame.len());
        assert_eq!(Request::decode(body).expect("decodes"), request);
    }
    if let Ok(response) = response(&mut u) {
        let frame = response.to_frame();
        if frame.len() - 4 <= MAX_FRAME_LIMIT as usize {
            let (body, _) = split_frame(&frame, MAX_FRAME_LIMIT).unwrap().unwrap();
            assert_eq!(Response::decode(body).expect("decodes"), response);
        }
    }
});

/// Text of `max` bytes at most from the characters `alphabet`, or any
/// UTF-8 when `alphabet` is empty.
fn text(u: &mut Unstructured<'_>, min: usize, max: usize, alphabet: &[u8]) -> Result<String> {
    let len = u.int_in_range(min..=max)?;
    if alphabet.is_empty() {
        let s: String = u.arbitrary()?;
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        return Ok(s[..end].to_owned());
    }
    (0..len)
        .map(|_| Ok(char::from(*u.choose(alphabet)?)))
        .collect()
}

const NAME: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@-";

fn username(u: &mut Unstructured<'_>) -> Result<Username> {
    let name = text(u, 1, 64, NAME)?;
    Ok(Username::new(&name).expect("names from the allowed alphabet"))
}

fn kind(u: &mut Unstructured<'_>) -> Result<DeviceKind> {
    Ok(*u.choose(&DeviceKind::ALL)?)
}

/// A device id as the protocol carries it: ids start at 1 (0 on the wire
/// means "none" in `Unlock`).
fn device(u: &mut Unstructured<'_>) -> Result<DeviceId> {
    Ok(DeviceId(u.int_in_range(1..=u64::MAX)?))
}

/// A phone number that follows the rules: a country code and a national
/// number of 4 and more digits, not starting with a trunk prefix.
fn phone(u: &mut Unstructured<'_>) -> Result<PhoneNumber> {
    let country: u16 = u.int_in_range(2..=999)?;
    let room = 15 - country.to_string().len();
    let national = format!(
        "{}{}",
        u.int_in_range(2..=9u8)?,
        text(u, 3, room - 1, b"0123456789")?
    );
    Ok(PhoneNumber::new(country, &national).expect("a number within the rules"))
}

fn channel(u: &mut Unstructured<'_>) -> Result<Channel> {
    Ok(if u.arbitrary()? {
        Channel::Sms
    } else {
        Channel::Voice
    })
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    let operation = match u.int_in_range(0..=19)? {
        8 => Operation::SendCode {
            user: username(u)?,
            channel: channel(u)?,
        },
        9 => Operation::VerifyCode {
            user: username(u)?,
            code: Answer::new(&text(u, 0, MAX_CODE_LEN, b"")?),
        },
        10 => Operation::CodeStatus {
            code: CodeId(u.arbitrary()?),
        },
        11 => Operation::Push {
            user: username(u)?,
            device: device(u)?,
        },
        12 => Operation::AwaitPush {
            push: PushId(u.arbitrary()?),
        },
        13 => Operation::EnrollPhone {
            user: username(u)?,
            number: phone(u)?,
            label: text(u, 0, MAX_LABEL_LEN, b"")?,
        },
        14 => Operation::BindPushKey {
            device: device(u)?,
            key: PushKey(u.arbitrary()?),
        },
        15 => Operation::CarrierSubscribe,
        16 => Operation::Ack {
            message: MessageId(u.arbitrary()?),
            report: if u.arbitrary()? {
                DeliveryReport::Delivered
            } else {
                DeliveryReport::Failed {
                    reason: text(u, 0, MAX_REASON_LEN, b"")?,
                }
            },
        },
        17 => Operation::PhoneSubscribe {
            device: device(u)?,
            proof: Signature(u.arbitrary()?),
        },
        18 => Operation::Approve {
            push: PushId(u.arbitrary()?),
            chosen: u.arbitrary()?,
            proof: Signature(u.arbitrary()?),
        },
        19 => Operation::Deny {
            push: PushId(u.arbitrary()?),
        },
        0 => Operation::Devices { user: username(u)? },
        1 => Operation::Challenge {
            user: username(u)?,
            device: device(u)?,
        },
        2 => Operation::Verify {
            challenge: ChallengeId(u.arbitrary()?),
            response: Answer::new(&text(u, 0, MAX_CODE_LEN, b"")?),
        },
        3 => Operation::Enroll(EnrollRequest {
            user: username(u)?,
            kind: kind(u)?,
            secret: if u.arbitrary()? {
                let len = u.int_in_range(1..=128)?;
                Some(SecretKey::from_bytes(u.bytes(len)?.to_vec()).expect("1..=128 bytes"))
            } else {
                None
            },
            pin: if u.arbitrary()? {
                Some(Pin::new(&text(u, 1, MAX_PIN_LEN, b"0123456789")?))
            } else {
                None
            },
            label: text(u, 0, MAX_LABEL_LEN, b"")?,
        }),
        4 => Operation::Revoke { device: device(u)? },
        5 => Operation::ListDevices {
            user: username(u)?,
            page: Page {
                after: u.arbitrary()?,
                limit: u.arbitrary()?,
            },
        },
        6 => Operation::Unlock {
            user: username(u)?,
            device: if u.arbitrary()? {
                Some(device(u)?)
            } else {
                None
            },
        },
        _ => Operation::Stats,
    };
    Ok(Request {
        id: u.arbitrary()?,
        operation,
    })
}

fn millis(u: &mut Unstructured<'_>) -> Result<Duration> {
    Ok(Duration::from_millis(u.arbitrary()?))
}

fn response(u: &mut Unstructured<'_>) -> Result<Response> {
    let reply = match u.int_in_range(0..=12)? {
        7 => Reply::CodeSent {
            code: CodeId(u.arbitrary()?),
            expires_in: millis(u)?,
            resend_after: millis(u)?,
        },
        8 => Reply::CodeStatus {
            channel: channel(u)?,
            sends: u.arbitrary()?,
            delivery: match u.int_in_range(0..=2)? {
                0 => DeliveryState::Pending,
                1 => DeliveryState::Delivered,
                _ => DeliveryState::Failed {
                    reason: text(u, 0, MAX_REASON_LEN, b"")?,
                },
            },
        },
        9 => Reply::PushSent {
            push: PushId(u.arbitrary()?),
            match_number: u.arbitrary()?,
            expires_in: millis(u)?,
        },
        10 => Reply::Subscribed,
        11 => Reply::Message {
            message: MessageId(u.arbitrary()?),
            to: phone(u)?,
            channel: channel(u)?,
            text: Answer::new(&text(u, 0, 200, b"")?),
        },
        12 => Reply::PushNotice {
            push: PushId(u.arbitrary()?),
            user: username(u)?,
            device: device(u)?,
            expires_in: millis(u)?,
        },
        0 => Reply::Devices {
            required: u.arbitrary()?,
            devices: (0..u.int_in_range(0..=8)?)
                .map(|_| {
                    Ok(DeviceEntry {
                        device: device(u)?,
                        kind: kind(u)?,
                        label: text(u, 0, MAX_LABEL_LEN, b"")?,
                        locked_for: millis(u)?,
                        status: slsd::wire::DeviceStatus::Active,
                        owner: None,
                    })
                })
                .collect::<Result<_>>()?,
        },
        1 => Reply::Challenge {
            challenge: ChallengeId(u.arbitrary()?),
            text: if u.arbitrary()? {
                ChallengeText::Question(text(u, 4, 64, b"0123456789ABCDEF")?)
            } else {
                ChallengeText::CardPositions(u.arbitrary()?, u.arbitrary()?)
            },
            expires_in: millis(u)?,
        },
        2 => Reply::Verdict(match u.int_in_range(0..=5)? {
            5 => Verdict::Denied,
            0 => Verdict::Accepted {
                user: username(u)?,
                device: device(u)?,
                kind: kind(u)?,
            },
            1 => Verdict::Rejected {
                attempts_left: u.arbitrary()?,
            },
            2 => Verdict::Expired,
            3 => Verdict::LockedOut {
                retry_after: millis(u)?,
            },
            _ => Verdict::UnknownChallenge,
        }),
        3 => Reply::Enrolled {
            device: device(u)?,
            secret: if u.arbitrary()? {
                let len = u.int_in_range(1..=128)?;
                Some(SecretKey::from_bytes(u.bytes(len)?.to_vec()).expect("1..=128 bytes"))
            } else {
                None
            },
        },
        4 => Reply::Done,
        5 => Reply::Stats(
            (0..u.int_in_range(0..=8)?)
                .map(|_| {
                    Ok(StatEntry {
                        name: text(u, 1, 32, b"abcdefghijklmnopqrstuvwxyz_")?,
                        value: u.arbitrary()?,
                    })
                })
                .collect::<Result<_>>()?,
        ),
        _ => Reply::Error {
            code: *u.choose(&ErrorCode::ALL)?,
            retry_after: millis(u)?,
            message: text(u, 0, 200, b"")?,
        },
    };
    Ok(Response {
        id: u.arbitrary()?,
        reply,
    })
}
