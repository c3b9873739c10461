//! Responses: what sls answers. The types here; their encoding (the
//! server's side) in `encode`, their decoding (the client's) in `decode`.

mod decode;
mod encode;

use std::time::Duration;

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
    /// To `Enroll` of an authenticator app (`totp-app`): the new device,
    /// pending its first code, and the `otpauth://` URI to give the app
    /// (it holds the key: the only time it leaves sls).
    AppEnrolled {
        device: DeviceId,
        uri: crate::otp::app::AppUri,
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
    /// To `Backup`: the file written, its size, what it holds (the
    /// devices, all rows, the audit log's last entry) and how long it took.
    BackedUp {
        path: String,
        bytes: u64,
        devices: u64,
        rows: u64,
        last_audit: u64,
        took: Duration,
    },
    /// To `Erase`: the pseudonym the user's audit entries now carry, the
    /// devices removed and the audit entries rewritten.
    Erased {
        pseudonym: Username,
        devices: u64,
        audit_entries: u64,
    },
    /// To `Keyring`: the key new seals use, the keys still held for what
    /// is not yet re-sealed (empty once a rotation's pass has ended), and
    /// the records this node has re-sealed since it started.
    Keyring {
        active: u32,
        retiring: Vec<u32>,
        resealed: u64,
    },
    /// To `Upgrade`: the format of the deployment's records (what every
    /// node writes), the newest format the answering node's release
    /// reads, the nodes alive, and how many of them run a release that
    /// reads only an older format than the answering node's.
    Upgrade {
        format: u64,
        release: u64,
        nodes: u16,
        behind: u16,
    },
    /// To `ImportTokens`: the import, and the tokens of this batch — or,
    /// once `committed`, of the whole import.
    TokensImported {
        import: u64,
        count: u64,
        committed: bool,
    },
    /// To `RetireTokens`: how many this page retired, and the last serial
    /// it looked at when more may follow (the next page is after it).
    TokensRetired {
        retired: u64,
        last: Option<crate::identity::Serial>,
    },
    /// To `Tokens`.
    Tokens(Vec<crate::wire::token::TokenEntry>),
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
    /// Enrolled, active once its first code verifies (an authenticator
    /// app).
    Pending,
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
            Self::BackedUp { .. } => 0x3c,
            Self::Erased { .. } => 0x3d,
            Self::Keyring { .. } => 0x3e,
            Self::Upgrade { .. } => 0x3f,
            Self::TokensImported { .. } => 0x36,
            Self::Tokens(_) => 0x37,
            Self::TokensRetired { .. } => 0x3a,
            Self::ActivationStarted { .. } => 0x0c,
            Self::VerificationSent { .. } => 0x34,
            Self::PhoneConfirmed { .. } => 0x35,
            Self::Activated { .. } => 0x63,
            Self::Challenge { .. } => 0x02,
            Self::Verdict(_) => 0x03,
            Self::Enrolled { .. } => 0x20,
            Self::AppEnrolled { .. } => 0x22,
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
    /// A frame the server sends unasked on a subscribed stream (a push
    /// notice to a phone, a message to a carrier bridge), carrying the
    /// subscribe request's id: no call waits for it.
    pub fn is_notice(&self) -> bool {
        matches!(self, Self::PushNotice { .. } | Self::Message { .. })
    }

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
