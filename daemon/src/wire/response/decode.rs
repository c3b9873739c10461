//! Reading a response body: the client's side.

use std::time::Duration;

use super::{
    ActivationRoute, AuditRecord, ChallengeText, DeliveryState, DeviceEntry, DeviceStatus,
    ErrorCode, PendingActivation, Refusal, Reply, Response, ShareEntry, StatEntry, Verdict,
};
use crate::clock::Timestamp;
use crate::identity::{
    ActivationId, ChallengeId, CodeId, DeviceId, MessageId, PushId, ShareId, Username,
};
use crate::otp::SecretKey;
use crate::phone::{Channel, PhoneNumber};
use crate::profile::DeviceKind;
use crate::wire::DecodeError;
use crate::wire::codec::Reader;
use crate::wire::request::Answer;

impl Response {
    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id = r.u64("request id")?;
        let tag = r.u8("reply tag")?;
        let reply = match tag {
            0x01 => {
                let required = r.flag("required")?;
                let count = r.u16("device count")?;
                let mut devices = Vec::with_capacity(usize::from(count).min(body.len() / 21));
                for _ in 0..count {
                    devices.push(DeviceEntry {
                        device: DeviceId(r.u64("device")?),
                        kind: kind(&mut r)?,
                        label: r.str("label")?.to_owned(),
                        locked_for: Duration::from_millis(r.u64("locked for")?),
                        status: match r.u8("status")? {
                            0 => DeviceStatus::Active,
                            1 => DeviceStatus::Expired,
                            2 => DeviceStatus::Ordered,
                            3 => DeviceStatus::Shipped {
                                activates_at: Timestamp(r.u64("activates at")?),
                            },
                            4 => DeviceStatus::Suspended,
                            5 => DeviceStatus::Pending,
                            other => {
                                return Err(DecodeError::invalid(
                                    "status",
                                    format!("unknown device status {other}"),
                                ));
                            }
                        },
                        owner: optional_user(&mut r, "owner")?,
                    });
                }
                Reply::Devices { required, devices }
            }
            0x09 => Reply::WithdrawalApproved {
                device: DeviceId(r.u64("device")?),
                kind: kind(&mut r)?,
                remaining_today: limit(&mut r, "remaining today")?,
                remaining_5d: limit(&mut r, "remaining in five days")?,
            },
            0x0a => Reply::OverLimit {
                device_kind: kind(&mut r)?,
                remaining_today: limit(&mut r, "remaining today")?,
                remaining_5d: limit(&mut r, "remaining in five days")?,
                kinds_that_allow: {
                    let count = r.u8("kind count")?;
                    let mut kinds = Vec::with_capacity(usize::from(count));
                    for _ in 0..count {
                        kinds.push(kind(&mut r)?);
                    }
                    kinds
                },
            },
            0x0b => Reply::Refused {
                reason: {
                    let code = r.u8("refusal")?;
                    Refusal::from_code(code).ok_or_else(|| {
                        DecodeError::invalid("refusal", format!("unknown refusal {code}"))
                    })?
                },
                message: r.str("message")?.to_owned(),
            },
            0x2b => Reply::Share {
                share: ShareId(r.u64("share id")?),
                active: r.flag("active")?,
            },
            0x2e => {
                let count = r.u16("share count")?;
                let mut shares = Vec::with_capacity(usize::from(count).min(body.len() / 23));
                for _ in 0..count {
                    shares.push(ShareEntry {
                        share: ShareId(r.u64("share id")?),
                        requesting_user: username(&mut r, "requesting user")?,
                        owner_user: username(&mut r, "owner user")?,
                        device: DeviceId(r.u64("device")?),
                        active: r.flag("active")?,
                    });
                }
                Reply::Shares(shares)
            }
            0x2f => Reply::TemporaryCode {
                device: DeviceId(r.u64("device")?),
                code: Answer::new(r.str("code")?),
                expires_in: Duration::from_millis(r.u64("expires in")?),
                uses: r.u16("uses")?,
            },
            0x32 => {
                let count = r.u16("activation count")?;
                let mut pending = Vec::with_capacity(usize::from(count).min(body.len() / 34));
                for _ in 0..count {
                    pending.push(PendingActivation {
                        device: DeviceId(r.u64("device")?),
                        user: username(&mut r, "user")?,
                        replaces: DeviceId(r.u64("replaces")?),
                        shipped_at: Timestamp(r.u64("shipped at")?),
                        activates_at: Timestamp(r.u64("activates at")?),
                    });
                }
                Reply::PendingActivations(pending)
            }
            0x36 => Reply::TokensImported {
                import: r.u64("import")?,
                count: r.u64("count")?,
                committed: r.flag("committed")?,
            },
            0x3c => Reply::BackedUp {
                path: r.str("path")?.to_owned(),
                bytes: r.u64("bytes")?,
                devices: r.u64("devices")?,
                rows: r.u64("rows")?,
                last_audit: r.u64("last audit")?,
                took: Duration::from_millis(r.u64("took")?),
            },
            0x3d => Reply::Erased {
                pseudonym: username(&mut r, "pseudonym")?,
                devices: r.u64("devices")?,
                audit_entries: r.u64("audit entries")?,
            },
            0x3e => {
                let key = |r: &mut Reader<'_>, field| {
                    u32::try_from(r.u64(field)?)
                        .map_err(|_| DecodeError::invalid(field, "beyond a key id"))
                };
                let active = key(&mut r, "active")?;
                let count = r.u16("retiring count")?;
                let mut retiring = Vec::with_capacity(usize::from(count).min(body.len() / 8));
                for _ in 0..count {
                    retiring.push(key(&mut r, "retiring")?);
                }
                Reply::Keyring {
                    active,
                    retiring,
                    resealed: r.u64("resealed")?,
                }
            }
            0x3f => Reply::Upgrade {
                format: r.u64("format")?,
                release: r.u64("release")?,
                nodes: r.u16("nodes")?,
                behind: r.u16("behind")?,
            },
            0x3a => Reply::TokensRetired {
                retired: r.u64("retired")?,
                last: crate::wire::token::optional_serial(&mut r, "last")?,
            },
            0x37 => {
                let count = r.u16("token count")?;
                let mut tokens = Vec::with_capacity(usize::from(count).min(body.len() / 40));
                for _ in 0..count {
                    tokens.push(crate::wire::token::TokenEntry::read(&mut r)?);
                }
                Reply::Tokens(tokens)
            }
            0x33 => {
                let count = r.u16("entry count")?;
                let mut entries = Vec::with_capacity(usize::from(count).min(body.len() / 32));
                for _ in 0..count {
                    entries.push(AuditRecord {
                        seq: r.u64("seq")?,
                        at: Timestamp(r.u64("at")?),
                        actor: r.str("actor")?.to_owned(),
                        action: r.str("action")?.to_owned(),
                        user: optional_user(&mut r, "user")?,
                        device: match r.u64("device")? {
                            0 => None,
                            id => Some(DeviceId(id)),
                        },
                        detail: r.str("detail")?.to_owned(),
                    });
                }
                Reply::Audit(entries)
            }
            0x0c => Reply::ActivationStarted {
                activation: ActivationId(r.u64("activation id")?),
                route: match r.u8("route")? {
                    1 => ActivationRoute::Sms,
                    2 => ActivationRoute::Device {
                        device: DeviceId(r.u64("device")?),
                        text: challenge_text(&mut r)?,
                    },
                    3 => ActivationRoute::DeviceAndSms {
                        device: DeviceId(r.u64("device")?),
                        text: challenge_text(&mut r)?,
                    },
                    other => {
                        return Err(DecodeError::invalid(
                            "route",
                            format!("unknown route {other}"),
                        ));
                    }
                },
                expires_in: Duration::from_millis(r.u64("expires in")?),
            },
            0x34 => Reply::VerificationSent {
                expires_in: Duration::from_millis(r.u64("expires in")?),
            },
            0x35 => Reply::PhoneConfirmed {
                sms_device: match r.u64("sms device")? {
                    0 => None,
                    id => Some(DeviceId(id)),
                },
            },
            0x63 => Reply::Activated {
                user: username(&mut r, "user")?,
                device: DeviceId(r.u64("device")?),
                secret: SecretKey::from_bytes(r.bytes("secret")?.to_vec())
                    .map_err(|e| DecodeError::invalid("secret", e.to_string()))?,
                replaced: match r.u64("replaced")? {
                    0 => None,
                    id => Some(DeviceId(id)),
                },
            },
            0x02 => Reply::Challenge {
                challenge: ChallengeId(r.u64("challenge id")?),
                text: challenge_text(&mut r)?,
                expires_in: Duration::from_millis(r.u64("expires in")?),
            },
            0x03 => Reply::Verdict(match r.u8("verdict")? {
                0 => Verdict::Accepted {
                    user: username(&mut r, "user")?,
                    device: DeviceId(r.u64("device")?),
                    kind: kind(&mut r)?,
                },
                1 => Verdict::Rejected {
                    attempts_left: r.u8("attempts left")?,
                },
                2 => Verdict::Expired,
                3 => Verdict::LockedOut {
                    retry_after: Duration::from_millis(r.u64("retry after")?),
                },
                4 => Verdict::UnknownChallenge,
                5 => Verdict::Denied,
                other => {
                    return Err(DecodeError::invalid(
                        "verdict",
                        format!("unknown verdict {other}"),
                    ));
                }
            }),
            0x22 => Reply::AppEnrolled {
                device: DeviceId(r.u64("device")?),
                uri: crate::otp::app::AppUri::new(r.str("uri")?),
            },
            0x20 => Reply::Enrolled {
                device: DeviceId(r.u64("device")?),
                secret: match r.bytes("secret")? {
                    [] => None,
                    bytes => Some(
                        SecretKey::from_bytes(bytes.to_vec())
                            .map_err(|e| DecodeError::invalid("secret", e.to_string()))?,
                    ),
                },
            },
            0x21 => Reply::Done,
            0x24 => {
                let count = r.u16("stat count")?;
                let mut stats = Vec::with_capacity(usize::from(count).min(body.len() / 10));
                for _ in 0..count {
                    stats.push(StatEntry {
                        name: r.str("stat name")?.to_owned(),
                        value: r.u64("stat value")?,
                    });
                }
                Reply::Stats(stats)
            }
            0x04 => Reply::CodeSent {
                code: CodeId(r.u64("code id")?),
                expires_in: Duration::from_millis(r.u64("expires in")?),
                resend_after: Duration::from_millis(r.u64("resend after")?),
            },
            0x06 => Reply::CodeStatus {
                channel: channel(&mut r)?,
                sends: r.u8("sends")?,
                delivery: match r.u8("delivery")? {
                    0 => DeliveryState::Pending,
                    1 => DeliveryState::Delivered,
                    2 => DeliveryState::Failed {
                        reason: r.str("reason")?.to_owned(),
                    },
                    other => {
                        return Err(DecodeError::invalid(
                            "delivery",
                            format!("unknown delivery state {other}"),
                        ));
                    }
                },
            },
            0x07 => Reply::PushSent {
                push: PushId(r.u64("push id")?),
                match_number: r.u8("match number")?,
                expires_in: Duration::from_millis(r.u64("expires in")?),
            },
            0x40 => Reply::Subscribed,
            0x41 => Reply::Message {
                message: MessageId(r.u64("message id")?),
                to: PhoneNumber::parse(r.str("to")?)
                    .map_err(|e| DecodeError::invalid("to", e.to_string()))?,
                channel: channel(&mut r)?,
                text: Answer::new(r.str("text")?),
            },
            0x42 => Reply::PushNotice {
                push: PushId(r.u64("push id")?),
                user: username(&mut r, "user")?,
                device: DeviceId(r.u64("device")?),
                expires_in: Duration::from_millis(r.u64("expires in")?),
            },
            0x7f => {
                let code = r.u16("error code")?;
                Reply::Error {
                    code: ErrorCode::from_code(code).ok_or_else(|| {
                        DecodeError::invalid("error code", format!("unknown error code {code}"))
                    })?,
                    retry_after: Duration::from_millis(r.u64("retry after")?),
                    message: r.str("message")?.to_owned(),
                }
            }
            other => return Err(DecodeError::UnknownReply(other)),
        };
        r.finish()?;
        Ok(Self { id, reply })
    }
}

fn challenge_text(r: &mut Reader<'_>) -> Result<ChallengeText, DecodeError> {
    Ok(match r.u8("challenge form")? {
        1 => ChallengeText::Question(r.str("question")?.to_owned()),
        2 => ChallengeText::CardPositions(r.u16("position")?, r.u16("position")?),
        3 => ChallengeText::EnterCode,
        other => {
            return Err(DecodeError::invalid(
                "challenge form",
                format!("unknown form {other}"),
            ));
        }
    })
}

fn channel(r: &mut Reader<'_>) -> Result<Channel, DecodeError> {
    let code = r.u8("channel")?;
    Channel::from_code(code)
        .ok_or_else(|| DecodeError::invalid("channel", format!("unknown channel {code}")))
}

fn username(r: &mut Reader<'_>, field: &'static str) -> Result<Username, DecodeError> {
    Username::new(r.str(field)?).map_err(|e| DecodeError::invalid(field, e.to_string()))
}

/// A username, or none (empty).
fn optional_user(r: &mut Reader<'_>, field: &'static str) -> Result<Option<Username>, DecodeError> {
    match r.str(field)? {
        "" => Ok(None),
        name => Username::new(name)
            .map(Some)
            .map_err(|e| DecodeError::invalid(field, e.to_string())),
    }
}

/// An amount in cents; all ones is unlimited.
fn limit(r: &mut Reader<'_>, field: &'static str) -> Result<Option<u64>, DecodeError> {
    Ok(match r.u64(field)? {
        u64::MAX => None,
        cents => Some(cents),
    })
}

fn kind(r: &mut Reader<'_>) -> Result<DeviceKind, DecodeError> {
    let code = r.u8("kind")?;
    DeviceKind::from_code(code)
        .ok_or_else(|| DecodeError::invalid("kind", format!("unknown device kind {code}")))
}
