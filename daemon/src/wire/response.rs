//! Responses: what sls answers.

use std::time::Duration;

use super::DecodeError;
use super::codec::{Put, Reader};
use crate::clock::Timestamp;
use crate::identity::{
    ActivationId, ChallengeId, CodeId, DeviceId, MessageId, PushId, ShareId, Username,
};
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
    /// To `Devices` and `ListDevices`: whether the user must pass a second
    /// factor at login (false once opted out), and the devices.
    Devices {
        required: bool,
        devices: Vec<DeviceEntry>,
    },
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
        expires_in: Duration,
    },
    /// To `AuthorizeWithdrawal`: approved and booked; what is left under
    /// the limits of the kind that answered (`None`: unlimited), in cents.
    WithdrawalApproved {
        device: DeviceId,
        kind: DeviceKind,
        remaining_today: Option<u64>,
        remaining_5d: Option<u64>,
    },
    /// To `AuthorizeWithdrawal`: the second factor passed but the amount is
    /// over the limits of the kind that answered; nothing was booked.
    OverLimit {
        device_kind: DeviceKind,
        remaining_today: Option<u64>,
        remaining_5d: Option<u64>,
        /// Kinds whose limits would allow the amount, most secure first.
        kinds_that_allow: Vec<DeviceKind>,
    },
    /// A rule of the Secure Login System refuses the request; the message
    /// carries the page's wording or names the regulation.
    Refused { reason: Refusal, message: String },
    /// To `ShareDevice` and `DecideShare`.
    Share { share: ShareId, active: bool },
    /// To `Shares`.
    Shares(Vec<ShareEntry>),
    /// To `IssueTemporaryCode`: the code (shown once, to give the user),
    /// how long it lasts and how many logins it allows.
    TemporaryCode {
        device: DeviceId,
        code: Answer,
        expires_in: Duration,
        uses: u16,
    },
    /// To `PendingActivations`.
    PendingActivations(Vec<PendingActivation>),
    /// An activation is under way: the app submits `activation` with the
    /// token sent by SMS, or with the physical device's answer to `text`.
    ActivationStarted {
        activation: ActivationId,
        route: ActivationRoute,
        expires_in: Duration,
    },
    /// A confirm code went out by SMS to the number being added.
    VerificationSent { expires_in: Duration },
    /// The number is on record; `sms_device` when it was also enrolled as
    /// the user's second factor (the user had no active security device).
    PhoneConfirmed { sms_device: Option<DeviceId> },
    /// The app is bound: its device, the key for offline challenge/response
    /// (shown once), and the user's previous phone binding it replaced.
    Activated {
        user: Username,
        device: DeviceId,
        secret: SecretKey,
        replaced: Option<DeviceId>,
    },
    /// To `AuditLog`.
    Audit(Vec<AuditRecord>),
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
    pub status: DeviceStatus,
    /// Whose device it is, when it is another user's (a share).
    pub owner: Option<Username>,
}

/// Where a device stands in its lifecycle. A login (`Devices`) is offered
/// only `Active` ones.
/// How an activation is proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivationRoute {
    /// A token went by SMS to the number on record.
    Sms,
    /// The user's physical device answers this challenge instead.
    Device {
        device: DeviceId,
        text: ChallengeText,
    },
    /// The user's code card answers this challenge, and a token went by
    /// SMS as well (a code card alone is too weak to bind an app).
    DeviceAndSms {
        device: DeviceId,
        text: ChallengeText,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStatus {
    Active,
    /// Its validity has ended (Online SCC, temporary code).
    Expired,
    /// A replacement ordered, not shipped.
    Ordered,
    /// A replacement shipped; activates itself at `activates_at`.
    Shipped {
        activates_at: Timestamp,
    },
    /// The user uses a shared device; their own are suspended until the
    /// share ends.
    Suspended,
}

/// Why a rule refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// "Less secure device": a share of a device less secure than one of
    /// the participants' own.
    LessSecureDevice,
    /// "Different identification information".
    DifferentIdentification,
    /// A participant of a share holds a temporary device.
    TemporaryDevice,
    /// Only physical devices are shared (IB Key adds users instead).
    NotShareable,
    /// Regulation of the user's residence forbids opting out.
    OptOutForbidden,
    WeakPin,
}

impl Refusal {
    pub const ALL: [Self; 6] = [
        Self::LessSecureDevice,
        Self::DifferentIdentification,
        Self::TemporaryDevice,
        Self::NotShareable,
        Self::OptOutForbidden,
        Self::WeakPin,
    ];

    pub fn code(self) -> u8 {
        match self {
            Self::LessSecureDevice => 1,
            Self::DifferentIdentification => 2,
            Self::TemporaryDevice => 3,
            Self::NotShareable => 4,
            Self::OptOutForbidden => 5,
            Self::WeakPin => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LessSecureDevice => "less-secure-device",
            Self::DifferentIdentification => "different-identification",
            Self::TemporaryDevice => "temporary-device",
            Self::NotShareable => "not-shareable",
            Self::OptOutForbidden => "opt-out-forbidden",
            Self::WeakPin => "weak-pin",
        }
    }
}

/// A share as listed to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    pub share: ShareId,
    pub requesting_user: Username,
    pub owner_user: Username,
    pub device: DeviceId,
    pub active: bool,
}

/// A shipped replacement not yet active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingActivation {
    pub device: DeviceId,
    pub user: Username,
    pub replaces: DeviceId,
    pub shipped_at: Timestamp,
    pub activates_at: Timestamp,
}

/// One entry of the audit log (as the registry keeps it and `AuditLog`
/// lists it). Never holds a secret: no keys, PINs, codes, numbers or
/// identification data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub user: Option<Username>,
    pub device: Option<DeviceId>,
    pub detail: String,
}

/// What the login page shows the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeText {
    /// Digits to type into the device (DSC+, IB Key offline).
    Question(String),
    /// Two positions of a security code card.
    CardPositions(u16, u16),
    /// Nothing to show: the user types the code they hold (a temporary
    /// code).
    EnterCode,
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
    /// This deployment cannot carry out the operation (the device
    /// lifecycle on a shared store).
    Unsupported,
}

impl ErrorCode {
    pub const ALL: [Self; 15] = [
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
        Self::Unsupported,
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
            Self::Unsupported => 15,
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
            Self::Devices { .. } => 0x01,
            Self::WithdrawalApproved { .. } => 0x09,
            Self::OverLimit { .. } => 0x0a,
            Self::Refused { .. } => 0x0b,
            Self::Share { .. } => 0x2b,
            Self::Shares(_) => 0x2e,
            Self::TemporaryCode { .. } => 0x2f,
            Self::PendingActivations(_) => 0x32,
            Self::Audit(_) => 0x33,
            Self::ActivationStarted { .. } => 0x0c,
            Self::VerificationSent { .. } => 0x34,
            Self::PhoneConfirmed { .. } => 0x35,
            Self::Activated { .. } => 0x63,
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

    /// Appends this response's body (without the length prefix).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.id);
        out.put_u8(self.reply.tag());
        match &self.reply {
            Reply::Devices { required, devices } => {
                out.put_u8(u8::from(*required));
                let count = u16::try_from(devices.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for d in devices.iter().take(usize::from(count)) {
                    out.put_u64(d.device.0);
                    out.put_u8(d.kind.code());
                    out.put_bytes(d.label.as_bytes());
                    out.put_u64(millis(d.locked_for));
                    match d.status {
                        DeviceStatus::Active => out.put_u8(0),
                        DeviceStatus::Expired => out.put_u8(1),
                        DeviceStatus::Ordered => out.put_u8(2),
                        DeviceStatus::Shipped { activates_at } => {
                            out.put_u8(3);
                            out.put_u64(activates_at.0);
                        }
                        DeviceStatus::Suspended => out.put_u8(4),
                    }
                    out.put_bytes(d.owner.as_ref().map_or("", Username::as_str).as_bytes());
                }
            }
            Reply::WithdrawalApproved {
                device,
                kind,
                remaining_today,
                remaining_5d,
            } => {
                out.put_u64(device.0);
                out.put_u8(kind.code());
                out.put_u64(remaining_today.unwrap_or(u64::MAX));
                out.put_u64(remaining_5d.unwrap_or(u64::MAX));
            }
            Reply::OverLimit {
                device_kind,
                remaining_today,
                remaining_5d,
                kinds_that_allow,
            } => {
                out.put_u8(device_kind.code());
                out.put_u64(remaining_today.unwrap_or(u64::MAX));
                out.put_u64(remaining_5d.unwrap_or(u64::MAX));
                let count = u8::try_from(kinds_that_allow.len()).unwrap_or(u8::MAX);
                out.put_u8(count);
                for kind in kinds_that_allow.iter().take(usize::from(count)) {
                    out.put_u8(kind.code());
                }
            }
            Reply::Refused { reason, message } => {
                out.put_u8(reason.code());
                out.put_bytes(message.as_bytes());
            }
            Reply::Share { share, active } => {
                out.put_u64(share.0);
                out.put_u8(u8::from(*active));
            }
            Reply::Shares(shares) => {
                let count = u16::try_from(shares.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for s in shares.iter().take(usize::from(count)) {
                    out.put_u64(s.share.0);
                    out.put_bytes(s.requesting_user.as_str().as_bytes());
                    out.put_bytes(s.owner_user.as_str().as_bytes());
                    out.put_u64(s.device.0);
                    out.put_u8(u8::from(s.active));
                }
            }
            Reply::TemporaryCode {
                device,
                code,
                expires_in,
                uses,
            } => {
                out.put_u64(device.0);
                out.put_bytes(code.as_bytes());
                out.put_u64(millis(*expires_in));
                out.put_u16(*uses);
            }
            Reply::PendingActivations(pending) => {
                let count = u16::try_from(pending.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for p in pending.iter().take(usize::from(count)) {
                    out.put_u64(p.device.0);
                    out.put_bytes(p.user.as_str().as_bytes());
                    out.put_u64(p.replaces.0);
                    out.put_u64(p.shipped_at.0);
                    out.put_u64(p.activates_at.0);
                }
            }
            Reply::Audit(entries) => {
                let count = u16::try_from(entries.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for e in entries.iter().take(usize::from(count)) {
                    out.put_u64(e.seq);
                    out.put_u64(e.at.0);
                    out.put_bytes(e.actor.as_bytes());
                    out.put_bytes(e.action.as_bytes());
                    out.put_bytes(e.user.as_ref().map_or("", Username::as_str).as_bytes());
                    out.put_u64(e.device.map_or(0, |d| d.0));
                    out.put_bytes(e.detail.as_bytes());
                }
            }
            Reply::Challenge {
                challenge,
                text,
                expires_in,
            } => {
                out.put_u64(challenge.0);
                put_challenge_text(out, text);
                out.put_u64(millis(*expires_in));
            }
            Reply::ActivationStarted {
                activation,
                route,
                expires_in,
            } => {
                out.put_u64(activation.0);
                match route {
                    ActivationRoute::Sms => out.put_u8(1),
                    ActivationRoute::Device { device, text } => {
                        out.put_u8(2);
                        out.put_u64(device.0);
                        put_challenge_text(out, text);
                    }
                    ActivationRoute::DeviceAndSms { device, text } => {
                        out.put_u8(3);
                        out.put_u64(device.0);
                        put_challenge_text(out, text);
                    }
                }
                out.put_u64(millis(*expires_in));
            }
            Reply::VerificationSent { expires_in } => out.put_u64(millis(*expires_in)),
            Reply::PhoneConfirmed { sms_device } => out.put_u64(sms_device.map_or(0, |d| d.0)),
            Reply::Activated {
                user,
                device,
                secret,
                replaced,
            } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
                out.put_bytes(secret.expose_secret());
                out.put_u64(replaced.map_or(0, |d| d.0));
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
                expires_in,
            } => {
                out.put_u64(push.0);
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
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

fn put_challenge_text(out: &mut Vec<u8>, text: &ChallengeText) {
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
        ChallengeText::EnterCode => out.put_u8(3),
    }
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
