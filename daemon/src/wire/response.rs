//! Responses: what sls answers.

use std::time::Duration;

use super::DecodeError;
use super::codec::{Put, Reader};
use crate::identity::{ChallengeId, CodeId, DeviceId, MessageId, PushId, Username};
use crate::otp::SecretKey;
use crate::phone::{Channel, PhoneNumber};
use crate::profile::DeviceKind;
use crate::wire::request::Answer;

/// One response: the id of the request it answers, and the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
}

/// Replies, by tag.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To `Devices` and `ListDevices`.
    Devices(Vec<DeviceEntry>),
    /// To `Challenge`.
    Challenge {
        challenge: ChallengeId,
        text: ChallengeText,
        expires_in: Duration,
    },
    /// To `Verify`.
    Verdict(Verdict),
    /// To `Enroll`: the new device, and its key if sls generated it (this
    /// is the only time the key leaves sls).
    Enrolled {
        device: DeviceId,
        secret: Option<SecretKey>,
    },
    /// To `Revoke` and `Unlock`.
    Done,
    /// To `Stats`.
    Stats(Vec<StatEntry>),
    /// To `SendCode`: the code is on its way.
    CodeSent {
        code: CodeId,
        expires_in: Duration,
        /// When the next SMS may be requested (zero: now).
        resend_after: Duration,
    },
    /// To `CodeStatus`.
    CodeStatus {
        channel: Channel,
        /// Deliveries of this code so far.
        sends: u8,
        delivery: DeliveryState,
    },
    /// To `Push`: the login shows `match_number`.
    PushSent {
        push: PushId,
        match_number: u8,
        expires_in: Duration,
    },
    /// To `CarrierSubscribe` and `PhoneSubscribe`.
    Subscribed,
    /// To a carrier bridge, on its subscription: deliver this. The text
    /// carries the code, so it is wiped on drop and never printed.
    Message {
        message: MessageId,
        to: PhoneNumber,
        channel: Channel,
        text: Answer,
    },
    /// To a phone, on its subscription: a login asks for approval.
    PushNotice {
        push: PushId,
        user: Username,
        device: DeviceId,
        /// The numbers the phone offers; one is the login's.
        choices: [u8; 3],
        expires_in: Duration,
    },
    /// Any request that could not be carried out.
    Error {
        code: ErrorCode,
        /// When retrying makes sense (`Busy`, `RateLimited`), after how long.
        retry_after: Duration,
        message: String,
    },
}

/// A device as listed to gateways and operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub device: DeviceId,
    pub kind: DeviceKind,
    pub label: String,
    /// Zero unless the device is locked out.
    pub locked_for: Duration,
}

/// What the login page shows the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeText {
    /// Digits to type into the device (DSC+, IB Key offline).
    Question(String),
    /// Two positions of a security code card.
    CardPositions(u16, u16),
}

/// The outcome of a `Verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted {
        user: Username,
        device: DeviceId,
        kind: DeviceKind,
    },
    Rejected {
        attempts_left: u8,
    },
    Expired,
    LockedOut {
        retry_after: Duration,
    },
    UnknownChallenge,
    /// The user refused the push on the phone.
    Denied,
}

/// Where the last delivery of a code stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryState {
    /// Handed to a bridge, not yet acknowledged.
    Pending,
    Delivered,
    /// Every bridge tried failed or did not answer; the reason is the last.
    Failed {
        reason: String,
    },
}

/// A named counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatEntry {
    pub name: String,
    pub value: u64,
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body did not parse; the message says which field.
    Malformed,
    /// The operation code is not known.
    UnknownOperation,
    /// The caller's role may not call this operation.
    Forbidden,
    /// Temporarily overloaded; retry after `retry_after`.
    Busy,
    /// The open-challenge table is full.
    TooManyChallenges,
    /// Too many requests from this caller or for this user.
    RateLimited,
    /// The device (or challenge target) does not exist or is not usable.
    NotFound,
    /// A field is well-formed but not acceptable (the message says why).
    InvalidArgument,
    /// The service failed; nothing was changed.
    Internal,
    /// The service is stopping.
    ShuttingDown,
    /// The user has no verified phone number to send a code to.
    NoVerifiedNumber,
    /// No carrier bridge is connected (or none took the message).
    DeliveryUnavailable,
    /// The phone of the device is not connected: fall back to
    /// challenge/response.
    PhoneUnreachable,
    /// The shared store did not answer, or did not replicate a write in
    /// time (a failover under way): start the login again.
    StoreUnavailable,
}

impl ErrorCode {
    pub const ALL: [Self; 14] = [
        Self::Malformed,
        Self::UnknownOperation,
        Self::Forbidden,
        Self::Busy,
        Self::TooManyChallenges,
        Self::RateLimited,
        Self::NotFound,
        Self::InvalidArgument,
        Self::Internal,
        Self::ShuttingDown,
        Self::NoVerifiedNumber,
        Self::DeliveryUnavailable,
        Self::PhoneUnreachable,
        Self::StoreUnavailable,
    ];

    pub fn code(self) -> u16 {
        match self {
            Self::Malformed => 1,
            Self::UnknownOperation => 2,
            Self::Forbidden => 3,
            Self::Busy => 4,
            Self::TooManyChallenges => 5,
            Self::RateLimited => 6,
            Self::NotFound => 7,
            Self::InvalidArgument => 8,
            Self::Internal => 9,
            Self::ShuttingDown => 10,
            Self::NoVerifiedNumber => 11,
            Self::DeliveryUnavailable => 12,
            Self::PhoneUnreachable => 13,
            Self::StoreUnavailable => 14,
        }
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// Durations travel as whole milliseconds.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Reply {
    pub fn tag(&self) -> u8 {
        match self {
            Self::Devices(_) => 0x01,
            Self::Challenge { .. } => 0x02,
            Self::Verdict(_) => 0x03,
            Self::Enrolled { .. } => 0x20,
            Self::Done => 0x21,
            Self::Stats(_) => 0x24,
            Self::CodeSent { .. } => 0x04,
            Self::CodeStatus { .. } => 0x06,
            Self::PushSent { .. } => 0x07,
            Self::Subscribed => 0x40,
            Self::Message { .. } => 0x41,
            Self::PushNotice { .. } => 0x42,
            Self::Error { .. } => 0x7f,
        }
    }

    /// An error reply without a retry hint.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            retry_after: Duration::ZERO,
            message: message.into(),
        }
    }

    /// `RateLimited`, saying when a retry can succeed.
    pub fn rate_limited(retry_after: Duration, message: impl Into<String>) -> Self {
        Self::Error {
            code: ErrorCode::RateLimited,
            retry_after,
            message: message.into(),
        }
    }
}

impl Response {
    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id = r.u64("request id")?;
        let tag = r.u8("reply tag")?;
        let reply = match tag {
            0x01 => {
                let count = r.u16("device count")?;
                let mut devices = Vec::with_capacity(usize::from(count).min(body.len() / 19));
                for _ in 0..count {
                    devices.push(DeviceEntry {
                        device: DeviceId(r.u64("device")?),
                        kind: kind(&mut r)?,
                        label: r.str("label")?.to_owned(),
                        locked_for: Duration::from_millis(r.u64("locked for")?),
                    });
                }
                Reply::Devices(devices)
            }
            0x02 => Reply::Challenge {
                challenge: ChallengeId(r.u64("challenge id")?),
                text: match r.u8("challenge form")? {
                    1 => ChallengeText::Question(r.str("question")?.to_owned()),
                    2 => ChallengeText::CardPositions(r.u16("position")?, r.u16("position")?),
                    other => {
                        return Err(DecodeError::invalid(
                            "challenge form",
                            format!("unknown form {other}"),
                        ));
                    }
                },
                expires_in: Duration::from_millis(r.u64("expires in")?),
            },
            0x03 => Reply::Verdict(match r.u8("verdict")? {
                0 => Verdict::Accepted {
                    user: Username::new(r.str("user")?)
                        .map_err(|e| DecodeError::invalid("user", e.to_string()))?,
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
                user: Username::new(r.str("user")?)
                    .map_err(|e| DecodeError::invalid("user", e.to_string()))?,
                device: DeviceId(r.u64("device")?),
                choices: [r.u8("choice")?, r.u8("choice")?, r.u8("choice")?],
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

    /// Appends this response's body (without the length prefix).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.id);
        out.put_u8(self.reply.tag());
        match &self.reply {
            Reply::Devices(devices) => {
                let count = u16::try_from(devices.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for d in devices.iter().take(usize::from(count)) {
                    out.put_u64(d.device.0);
                    out.put_u8(d.kind.code());
                    out.put_bytes(d.label.as_bytes());
                    out.put_u64(millis(d.locked_for));
                }
            }
            Reply::Challenge {
                challenge,
                text,
                expires_in,
            } => {
                out.put_u64(challenge.0);
                match text {
                    ChallengeText::Question(q) => {
                        out.put_u8(1);
                        out.put_bytes(q.as_bytes());
                    }
                    ChallengeText::CardPositions(a, b) => {
                        out.put_u8(2);
                        out.put_u16(*a);
                        out.put_u16(*b);
                    }
                }
                out.put_u64(millis(*expires_in));
            }
            Reply::Verdict(verdict) => match verdict {
                Verdict::Accepted { user, device, kind } => {
                    out.put_u8(0);
                    out.put_bytes(user.as_str().as_bytes());
                    out.put_u64(device.0);
                    out.put_u8(kind.code());
                }
                Verdict::Rejected { attempts_left } => {
                    out.put_u8(1);
                    out.put_u8(*attempts_left);
                }
                Verdict::Expired => out.put_u8(2),
                Verdict::LockedOut { retry_after } => {
                    out.put_u8(3);
                    out.put_u64(millis(*retry_after));
                }
                Verdict::UnknownChallenge => out.put_u8(4),
                Verdict::Denied => out.put_u8(5),
            },
            Reply::CodeSent {
                code,
                expires_in,
                resend_after,
            } => {
                out.put_u64(code.0);
                out.put_u64(millis(*expires_in));
                out.put_u64(millis(*resend_after));
            }
            Reply::CodeStatus {
                channel,
                sends,
                delivery,
            } => {
                out.put_u8(channel.code());
                out.put_u8(*sends);
                match delivery {
                    DeliveryState::Pending => out.put_u8(0),
                    DeliveryState::Delivered => out.put_u8(1),
                    DeliveryState::Failed { reason } => {
                        out.put_u8(2);
                        out.put_bytes(reason.as_bytes());
                    }
                }
            }
            Reply::PushSent {
                push,
                match_number,
                expires_in,
            } => {
                out.put_u64(push.0);
                out.put_u8(*match_number);
                out.put_u64(millis(*expires_in));
            }
            Reply::Subscribed => {}
            Reply::Message {
                message,
                to,
                channel,
                text,
            } => {
                out.put_u64(message.0);
                out.put_bytes(to.to_string().as_bytes());
                out.put_u8(channel.code());
                out.put_bytes(text.as_bytes());
            }
            Reply::PushNotice {
                push,
                user,
                device,
                choices,
                expires_in,
            } => {
                out.put_u64(push.0);
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
                for choice in choices {
                    out.put_u8(*choice);
                }
                out.put_u64(millis(*expires_in));
            }
            Reply::Enrolled { device, secret } => {
                out.put_u64(device.0);
                out.put_bytes(secret.as_ref().map_or(&[], SecretKey::expose_secret));
            }
            Reply::Done => {}
            Reply::Stats(stats) => {
                let count = u16::try_from(stats.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for s in stats.iter().take(usize::from(count)) {
                    out.put_bytes(s.name.as_bytes());
                    out.put_u64(s.value);
                }
            }
            Reply::Error {
                code,
                retry_after,
                message,
            } => {
                out.put_u16(code.code());
                out.put_u64(millis(*retry_after));
                out.put_bytes(message.as_bytes());
            }
        }
    }

    /// This response as a whole frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        super::write_frame(&mut out, |body| self.encode_body(body));
        out
    }
}

fn channel(r: &mut Reader<'_>) -> Result<Channel, DecodeError> {
    let code = r.u8("channel")?;
    Channel::from_code(code)
        .ok_or_else(|| DecodeError::invalid("channel", format!("unknown channel {code}")))
}

fn kind(r: &mut Reader<'_>) -> Result<DeviceKind, DecodeError> {
    let code = r.u8("kind")?;
    DeviceKind::from_code(code)
        .ok_or_else(|| DecodeError::invalid("kind", format!("unknown device kind {code}")))
}
