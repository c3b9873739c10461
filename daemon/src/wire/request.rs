//! Requests: what gateways and operators ask.

use std::fmt;

use zeroize::Zeroizing;

use super::DecodeError;
use super::codec::{Put, Reader};
use super::token::{NewToken, TokenFilter, TokenInfo, optional_serial, serial};
use crate::clock::Timestamp;
use crate::engine::Role;
use crate::identity::{
    ActivationId, ChallengeId, CodeId, DeviceId, MessageId, PushId, Serial, ShareId, Username,
};
use crate::otp::push::{PUBLIC_KEY_LEN, PushKey, SIGNATURE_LEN, Signature};
use crate::otp::{MAX_CODE_LEN, SecretKey};
use crate::phone::{Channel, PhoneNumber};
use crate::profile::DeviceKind;

/// The longest device label, in bytes.
pub const MAX_LABEL_LEN: usize = 64;
/// The longest PIN, in characters.
pub const MAX_PIN_LEN: usize = 16;
/// The longest failure reason a carrier bridge may report, in bytes.
pub const MAX_REASON_LEN: usize = 200;
/// The longest field of identification data, in bytes.
pub const MAX_IDENTITY_FIELD_LEN: usize = 64;

/// One request: the client's id for it, and the operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub operation: Operation,
}

/// Operations, by the role that may call them.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    // Gateway role.
    /// The user's active devices, for the "select a device" list.
    Devices { user: Username },
    /// Open a challenge for one of the user's devices.
    Challenge { user: Username, device: DeviceId },
    /// Check the answer to an open challenge.
    Verify {
        challenge: ChallengeId,
        response: Answer,
    },
    /// A logged-in user's new PIN for a card whose suite binds one: the
    /// response to `challenge` (opened for `device` with `Challenge`),
    /// typed into the card with the new PIN. Answered like `Verify`; when
    /// accepted, the new PIN replaces the old at once.
    ChangePin {
        user: Username,
        device: DeviceId,
        challenge: ChallengeId,
        pin: Pin,
        response: Answer,
    },
    /// Send (or re-send) the user's live code by SMS or voice call.
    SendCode { user: Username, channel: Channel },
    /// Check a code the user received by SMS or voice.
    VerifyCode { user: Username, code: Answer },
    /// Where the last delivery of a code stands.
    CodeStatus { code: CodeId },
    /// Ask the user's phone to approve this login.
    Push { user: Username, device: DeviceId },
    /// Wait for the phone's answer to a push (answered when it comes).
    AwaitPush { push: PushId },
    /// Check the second factor as `Verify` does, then the amount against
    /// the withdrawal limits of the device kind that answered.
    AuthorizeWithdrawal {
        user: Username,
        amount_cents: u64,
        challenge: ChallengeId,
        response: Answer,
    },
    /// Start binding an IB Key app to a user (the gateway has checked the
    /// password): sls sends an activation token by SMS to the number on
    /// record or, when the user holds an active physical device, opens a
    /// challenge on that device instead.
    StartActivation { user: Username },
    // Admin role.
    /// Register a device for a user.
    Enroll(EnrollRequest),
    /// Withdraw a device for good.
    Revoke { device: DeviceId },
    /// Every device of a user, with its state.
    ListDevices { user: Username, page: Page },
    /// Clear lockouts of a user (one device, or all).
    Unlock {
        user: Username,
        device: Option<DeviceId>,
    },
    /// Counters of the running service.
    Stats,
    /// Register a verified phone number for a user (an SMS device).
    EnrollPhone {
        user: Username,
        number: PhoneNumber,
        label: String,
    },
    /// Set the public key an IB Key device signs push approvals with.
    BindPushKey { device: DeviceId, key: PushKey },
    /// Record a user's identification data (kept only as a keyed digest)
    /// and country of residence.
    SetIdentity {
        user: Username,
        identity: Identification,
    },
    /// Opt a user out of the Secure Login System (`true`) or back in.
    SetOptOut { user: Username, opted_out: bool },
    /// The requesting user starts using the owner's physical device;
    /// `challenge`/`response` prove the device is at hand (a challenge
    /// opened for the owner and that device).
    ShareDevice {
        requesting_user: Username,
        owner_user: Username,
        device: DeviceId,
        challenge: ChallengeId,
        response: Answer,
    },
    /// Compliance approves or rejects a pending share.
    DecideShare { share: ShareId, approve: bool },
    /// Ends a share (pending or in effect); the requester's own devices
    /// work again.
    CancelShare { share: ShareId },
    /// Every share, pending or in effect.
    Shares { page: Page },
    /// A temporary code for a user whose device is lost.
    IssueTemporaryCode { user: Username },
    /// Orders a replacement DSC+ for a lost one; it ships inactive.
    OrderReplacement {
        lost: DeviceId,
        pin: Option<Pin>,
        label: String,
    },
    /// The replacement was shipped: it activates itself after
    /// `lifecycle.replacement-auto-activation` unless activated earlier.
    ShipReplacement {
        device: DeviceId,
        shipped_at: Timestamp,
    },
    /// Replacements shipped and not yet active, with when each activates.
    PendingActivations { page: Page },
    /// The audit log after entry `after`, at most `limit` entries.
    AuditLog { after: u64, limit: u16 },
    /// A consistent copy of the embedded store's database, written by the
    /// daemon to `path` (absolute, on the daemon's machine, not existing)
    /// while it serves; the key file is not in it.
    Backup { path: String },
    /// Everything held about `user` removed (devices, numbers, the
    /// account and its identification digest, the ledger, shares), and
    /// the name in the audit log replaced by a keyed pseudonym.
    Erase { user: Username },
    /// The at-rest keyring's state, after adding a new key when `rotate`
    /// (`slsd admin keyring`, `slsd admin rotate-key`): new seals use the
    /// new key, and a background pass re-seals every record under it
    /// before the keys held before are dropped.
    Keyring { rotate: bool },
    /// Where a rolling upgrade stands (`slsd admin upgrade`) and, with
    /// `finish`, its end (`slsd admin finish-upgrade`): the deployment's
    /// records take this node's release's format, refused while a node of
    /// an older release is alive.
    Upgrade { finish: bool },
    /// A vendor's tokens, in batches (`slsd admin import-tokens`): import
    /// 0 begins an import and the reply names it; `commit` ends it. All or
    /// nothing: a refused batch drops the whole import.
    ImportTokens {
        import: u64,
        commit: bool,
        tokens: Vec<NewToken>,
    },
    /// An unassigned token enrolled as a device of `user` (with the PIN
    /// its suite binds, if it does).
    AssignToken {
        serial: Serial,
        user: Username,
        pin: Option<Pin>,
        label: String,
    },
    /// A drifted token found again by two consecutive codes.
    Resync {
        device: DeviceId,
        first: Answer,
        second: Answer,
    },
    /// The token inventory in serial order, after `after`, at most `limit`.
    Tokens {
        filter: TokenFilter,
        after: Option<Serial>,
        limit: u16,
    },
    /// A help desk's PIN reset: `challenge` 0 opens a challenge on the
    /// device; then the response to it, typed into the card with the PIN
    /// the user chose, sets that PIN as `ChangePin` does (audited as
    /// `reset-pin`).
    ResetPin {
        device: DeviceId,
        challenge: ChallengeId,
        pin: Option<Pin>,
        response: Answer,
    },
    /// Tokens from serial `from` to `to` (inclusive) retired, after
    /// `after`, a page at a time: an unassigned one at once, an assigned
    /// one by revoking its device. Retired tokens are never assigned again.
    RetireTokens {
        from: Serial,
        to: Serial,
        after: Option<Serial>,
    },
    /// Send a confirm code by SMS to a number being added to a user.
    StartPhoneVerification { user: Username, number: PhoneNumber },
    /// Check the confirm code: the number goes on record, and a user with
    /// no active security device is enrolled in SMS with it.
    ConfirmPhone { user: Username, code: Answer },
    // Carrier role.
    /// Start receiving outbound messages on this stream.
    CarrierSubscribe,
    /// Report what became of one message.
    Ack {
        message: MessageId,
        report: DeliveryReport,
    },
    // Phone role.
    /// Start receiving push notices for a device on this stream; `proof`
    /// signs the connection's binding with the device key.
    PhoneSubscribe { device: DeviceId, proof: Signature },
    /// Approve a push with the number the user picked.
    Approve {
        push: PushId,
        chosen: u8,
        proof: Signature,
    },
    /// Refuse a push ("this was not me").
    Deny { push: PushId },
    /// Complete an activation with the token (or the physical device's
    /// response), the app's device key and PIN; `previous` proves the old
    /// binding (a signature by its key) when the same phone reactivates;
    /// `sms_token` is the SMS token sent beside a code card's challenge
    /// (route `DeviceAndSms`).
    CompleteActivation {
        activation: ActivationId,
        token: Answer,
        key: PushKey,
        pin: Pin,
        previous: Option<(DeviceId, Signature)>,
        sms_token: Option<Answer>,
    },
}

/// The most entries one page of an admin list holds (`ListDevices`,
/// `Shares`, `PendingActivations`, `AuditLog`), whatever `limit` asks: a
/// reply stays a bounded frame however large the deployment.
pub const MAX_PAGE: usize = 500;

/// Which page of an admin list: the entries whose key (device id, share
/// id) is above `after`, in that order, at most `limit` of them (and at
/// most [`MAX_PAGE`]). A page shorter than asked is the last; the next
/// starts after the last key of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub after: u64,
    pub limit: u16,
}

impl Page {
    /// The first page of at most `limit` entries.
    pub fn first(limit: u16) -> Self {
        Self { after: 0, limit }
    }

    /// This page of `items`, each keyed by `key`.
    pub fn select<T>(self, mut items: Vec<T>, key: impl Fn(&T) -> u64) -> Vec<T> {
        items.retain(|item| key(item) > self.after);
        items.sort_by_key(|item| key(item));
        items.truncate(usize::from(self.limit).min(MAX_PAGE));
        items
    }

    fn encode(self, out: &mut Vec<u8>) {
        out.put_u64(self.after);
        out.put_u16(self.limit);
    }
}

fn page(r: &mut Reader<'_>) -> Result<Page, DecodeError> {
    Ok(Page {
        after: r.u64("after")?,
        limit: r.u16("limit")?,
    })
}

/// A carrier bridge's account of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryReport {
    Delivered,
    Failed { reason: String },
}

impl Operation {
    /// The operation code on the wire.
    pub fn code(&self) -> u8 {
        match self {
            Self::Devices { .. } => 0x01,
            Self::Challenge { .. } => 0x02,
            Self::Verify { .. } => 0x03,
            Self::Enroll(_) => 0x20,
            Self::Revoke { .. } => 0x21,
            Self::ListDevices { .. } => 0x22,
            Self::SendCode { .. } => 0x04,
            Self::VerifyCode { .. } => 0x05,
            Self::CodeStatus { .. } => 0x06,
            Self::Push { .. } => 0x07,
            Self::AwaitPush { .. } => 0x08,
            Self::Unlock { .. } => 0x23,
            Self::Stats => 0x24,
            Self::EnrollPhone { .. } => 0x25,
            Self::BindPushKey { .. } => 0x26,
            Self::AuthorizeWithdrawal { .. } => 0x09,
            Self::StartActivation { .. } => 0x0a,
            Self::SetIdentity { .. } => 0x29,
            Self::SetOptOut { .. } => 0x2a,
            Self::ShareDevice { .. } => 0x2b,
            Self::DecideShare { .. } => 0x2c,
            Self::CancelShare { .. } => 0x2d,
            Self::Shares { .. } => 0x2e,
            Self::IssueTemporaryCode { .. } => 0x2f,
            Self::OrderReplacement { .. } => 0x30,
            Self::ShipReplacement { .. } => 0x31,
            Self::PendingActivations { .. } => 0x32,
            Self::AuditLog { .. } => 0x33,
            Self::Backup { .. } => 0x3c,
            Self::Erase { .. } => 0x3d,
            Self::Keyring { .. } => 0x3e,
            Self::Upgrade { .. } => 0x3f,
            Self::StartPhoneVerification { .. } => 0x34,
            Self::ConfirmPhone { .. } => 0x35,
            Self::ImportTokens { .. } => 0x36,
            Self::Tokens { .. } => 0x37,
            Self::AssignToken { .. } => 0x38,
            Self::Resync { .. } => 0x39,
            Self::RetireTokens { .. } => 0x3a,
            Self::ResetPin { .. } => 0x3b,
            Self::ChangePin { .. } => 0x0b,
            Self::CarrierSubscribe => 0x40,
            Self::Ack { .. } => 0x41,
            Self::PhoneSubscribe { .. } => 0x60,
            Self::Approve { .. } => 0x61,
            Self::Deny { .. } => 0x62,
            Self::CompleteActivation { .. } => 0x63,
        }
    }

    /// The name used in metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Devices { .. } => "devices",
            Self::Challenge { .. } => "challenge",
            Self::Verify { .. } => "verify",
            Self::Enroll(_) => "enroll",
            Self::Revoke { .. } => "revoke",
            Self::ListDevices { .. } => "list_devices",
            Self::Unlock { .. } => "unlock",
            Self::Stats => "stats",
            Self::SendCode { .. } => "send_code",
            Self::VerifyCode { .. } => "verify_code",
            Self::CodeStatus { .. } => "code_status",
            Self::Push { .. } => "push",
            Self::AwaitPush { .. } => "await_push",
            Self::EnrollPhone { .. } => "enroll_phone",
            Self::BindPushKey { .. } => "bind_push_key",
            Self::AuthorizeWithdrawal { .. } => "authorize_withdrawal",
            Self::StartActivation { .. } => "start_activation",
            Self::SetIdentity { .. } => "set_identity",
            Self::SetOptOut { .. } => "set_opt_out",
            Self::ShareDevice { .. } => "share_device",
            Self::DecideShare { .. } => "decide_share",
            Self::CancelShare { .. } => "cancel_share",
            Self::Shares { .. } => "shares",
            Self::IssueTemporaryCode { .. } => "issue_temporary_code",
            Self::OrderReplacement { .. } => "order_replacement",
            Self::ShipReplacement { .. } => "ship_replacement",
            Self::PendingActivations { .. } => "pending_activations",
            Self::AuditLog { .. } => "audit_log",
            Self::Backup { .. } => "backup",
            Self::Erase { .. } => "erase",
            Self::Keyring { .. } => "keyring",
            Self::Upgrade { .. } => "upgrade",
            Self::StartPhoneVerification { .. } => "start_phone_verification",
            Self::ConfirmPhone { .. } => "confirm_phone",
            Self::ImportTokens { .. } => "import_tokens",
            Self::Tokens { .. } => "tokens",
            Self::AssignToken { .. } => "assign_token",
            Self::Resync { .. } => "resync",
            Self::RetireTokens { .. } => "retire_tokens",
            Self::ResetPin { .. } => "reset_pin",
            Self::ChangePin { .. } => "change_pin",
            Self::CarrierSubscribe => "carrier_subscribe",
            Self::Ack { .. } => "ack",
            Self::PhoneSubscribe { .. } => "phone_subscribe",
            Self::Approve { .. } => "approve",
            Self::Deny { .. } => "deny",
            Self::CompleteActivation { .. } => "complete_activation",
        }
    }

    /// The only role that may call it: operation codes are grouped by role
    /// (gateway 0x01–0x1f, admin 0x20–0x3f, carrier 0x40–0x5f, phone 0x60–).
    pub fn role(&self) -> Role {
        match self.code() {
            0x00..0x20 => Role::Gateway,
            0x20..0x40 => Role::Admin,
            0x40..0x60 => Role::Carrier,
            _ => Role::Phone,
        }
    }
}

/// What an operator enrols.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrollRequest {
    pub user: Username,
    pub kind: DeviceKind,
    /// The device's key; `None` asks sls to generate one (returned once).
    pub secret: Option<SecretKey>,
    /// The PIN of devices whose suite binds one (DSC+, legacy DSC).
    pub pin: Option<Pin>,
    pub label: String,
}

/// A user's identification data, as an operator enters it. sls keeps
/// only a keyed digest of it (and the residence, which the opt-out rule
/// needs); `Debug` shows the residence only.
#[derive(Clone, PartialEq)]
pub struct Identification {
    /// ISO 3166 alpha-2, upper case.
    pub residence: String,
    /// `YYYY-MM-DD`.
    pub date_of_birth: String,
    pub citizenship: String,
    /// Document type and number, as printed.
    pub id_document: String,
}

impl fmt::Debug for Identification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identification")
            .field("residence", &self.residence)
            .finish_non_exhaustive()
    }
}

/// A typed answer to a challenge: wiped on drop, never printed.
#[derive(Clone, PartialEq)]
pub struct Answer(Zeroizing<String>);

impl Answer {
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Answer({} bytes)", self.0.len())
    }
}

/// A device PIN: wiped on drop, never printed.
#[derive(Clone, PartialEq)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    pub fn new(text: &str) -> Self {
        Self(Zeroizing::new(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(..)")
    }
}

impl Request {
    /// Parses a frame body.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let id = r.u64("request id")?;
        let code = r.u8("operation")?;
        let operation = match code {
            0x01 => Operation::Devices {
                user: user(&mut r)?,
            },
            0x02 => Operation::Challenge {
                user: user(&mut r)?,
                device: DeviceId(r.u64("device")?),
            },
            0x03 => Operation::Verify {
                challenge: ChallengeId(r.u64("challenge id")?),
                response: answer(&mut r, "response")?,
            },
            0x20 => Operation::Enroll(enroll(&mut r)?),
            0x21 => Operation::Revoke {
                device: DeviceId(r.u64("device")?),
            },
            0x22 => Operation::ListDevices {
                user: user(&mut r)?,
                page: page(&mut r)?,
            },
            0x23 => Operation::Unlock {
                user: user(&mut r)?,
                device: match r.u64("device")? {
                    0 => None,
                    id => Some(DeviceId(id)),
                },
            },
            0x24 => Operation::Stats,
            0x04 => Operation::SendCode {
                user: user(&mut r)?,
                channel: {
                    let code = r.u8("channel")?;
                    Channel::from_code(code).ok_or_else(|| {
                        DecodeError::invalid("channel", format!("unknown channel {code}"))
                    })?
                },
            },
            0x05 => Operation::VerifyCode {
                user: user(&mut r)?,
                code: answer(&mut r, "code")?,
            },
            0x06 => Operation::CodeStatus {
                code: CodeId(r.u64("code id")?),
            },
            0x07 => Operation::Push {
                user: user(&mut r)?,
                device: DeviceId(r.u64("device")?),
            },
            0x08 => Operation::AwaitPush {
                push: PushId(r.u64("push id")?),
            },
            0x25 => Operation::EnrollPhone {
                user: user(&mut r)?,
                number: number(&mut r)?,
                label: label(&mut r)?,
            },
            0x26 => Operation::BindPushKey {
                device: DeviceId(r.u64("device")?),
                key: PushKey(fixed::<PUBLIC_KEY_LEN>(&mut r, "public key")?),
            },
            0x09 => Operation::AuthorizeWithdrawal {
                user: user(&mut r)?,
                amount_cents: r.u64("amount")?,
                challenge: ChallengeId(r.u64("challenge id")?),
                response: answer(&mut r, "response")?,
            },
            0x0b => Operation::ChangePin {
                user: user(&mut r)?,
                device: DeviceId(r.u64("device")?),
                challenge: ChallengeId(r.u64("challenge id")?),
                pin: pin(&mut r)?.ok_or_else(|| DecodeError::invalid("pin", "empty"))?,
                response: answer(&mut r, "response")?,
            },
            0x3b => Operation::ResetPin {
                device: DeviceId(r.u64("device")?),
                challenge: ChallengeId(r.u64("challenge id")?),
                pin: pin(&mut r)?,
                response: answer(&mut r, "response")?,
            },
            0x0a => Operation::StartActivation {
                user: user(&mut r)?,
            },
            0x29 => Operation::SetIdentity {
                user: user(&mut r)?,
                identity: identification(&mut r)?,
            },
            0x2a => Operation::SetOptOut {
                user: user(&mut r)?,
                opted_out: r.flag("opted out")?,
            },
            0x2b => Operation::ShareDevice {
                requesting_user: user(&mut r)?,
                owner_user: user(&mut r)?,
                device: DeviceId(r.u64("device")?),
                challenge: ChallengeId(r.u64("challenge id")?),
                response: answer(&mut r, "response")?,
            },
            0x2c => Operation::DecideShare {
                share: ShareId(r.u64("share id")?),
                approve: r.flag("approve")?,
            },
            0x2d => Operation::CancelShare {
                share: ShareId(r.u64("share id")?),
            },
            0x2e => Operation::Shares {
                page: page(&mut r)?,
            },
            0x2f => Operation::IssueTemporaryCode {
                user: user(&mut r)?,
            },
            0x30 => Operation::OrderReplacement {
                lost: DeviceId(r.u64("lost device")?),
                pin: pin(&mut r)?,
                label: label(&mut r)?,
            },
            0x31 => Operation::ShipReplacement {
                device: DeviceId(r.u64("device")?),
                shipped_at: Timestamp(r.u64("shipped at")?),
            },
            0x32 => Operation::PendingActivations {
                page: page(&mut r)?,
            },
            0x33 => Operation::AuditLog {
                after: r.u64("after")?,
                limit: r.u16("limit")?,
            },
            0x3c => Operation::Backup {
                path: r.str("path")?.to_owned(),
            },
            0x3d => Operation::Erase {
                user: user(&mut r)?,
            },
            0x3e => Operation::Keyring {
                rotate: r.flag("rotate")?,
            },
            0x3f => Operation::Upgrade {
                finish: r.flag("finish")?,
            },
            0x36 => Operation::ImportTokens {
                import: r.u64("import")?,
                commit: r.flag("commit")?,
                tokens: {
                    let count = r.u16("token count")?;
                    // Each token takes at least 30 bytes: a count the body
                    // cannot hold allocates nothing.
                    let mut tokens = Vec::with_capacity(usize::from(count).min(body.len() / 30));
                    for _ in 0..count {
                        let info = TokenInfo::read(&mut r)?;
                        let key = SecretKey::from_bytes(r.bytes("key")?.to_vec())
                            .map_err(|e| DecodeError::invalid("key", e.to_string()))?;
                        tokens.push(NewToken { info, key });
                    }
                    tokens
                },
            },
            0x37 => Operation::Tokens {
                filter: TokenFilter::read(&mut r)?,
                after: optional_serial(&mut r, "after")?,
                limit: r.u16("limit")?,
            },
            0x39 => Operation::Resync {
                device: DeviceId(r.u64("device")?),
                first: answer(&mut r, "first code")?,
                second: answer(&mut r, "second code")?,
            },
            0x3a => Operation::RetireTokens {
                from: serial(&mut r, "from")?,
                to: serial(&mut r, "to")?,
                after: optional_serial(&mut r, "after")?,
            },
            0x38 => Operation::AssignToken {
                serial: serial(&mut r, "serial")?,
                user: user(&mut r)?,
                pin: pin(&mut r)?,
                label: label(&mut r)?,
            },
            0x34 => Operation::StartPhoneVerification {
                user: user(&mut r)?,
                number: number(&mut r)?,
            },
            0x35 => Operation::ConfirmPhone {
                user: user(&mut r)?,
                code: answer(&mut r, "code")?,
            },
            0x40 => Operation::CarrierSubscribe,
            0x41 => Operation::Ack {
                message: MessageId(r.u64("message id")?),
                report: match r.u8("report")? {
                    0 => DeliveryReport::Delivered,
                    1 => {
                        let reason = r.str("reason")?;
                        if reason.len() > MAX_REASON_LEN {
                            return Err(DecodeError::invalid(
                                "reason",
                                format!("longer than {MAX_REASON_LEN} bytes"),
                            ));
                        }
                        DeliveryReport::Failed {
                            reason: reason.to_owned(),
                        }
                    }
                    other => {
                        return Err(DecodeError::invalid(
                            "report",
                            format!("unknown report {other}"),
                        ));
                    }
                },
            },
            0x60 => Operation::PhoneSubscribe {
                device: DeviceId(r.u64("device")?),
                proof: Signature(fixed::<SIGNATURE_LEN>(&mut r, "proof")?),
            },
            0x61 => Operation::Approve {
                push: PushId(r.u64("push id")?),
                chosen: r.u8("chosen number")?,
                proof: Signature(fixed::<SIGNATURE_LEN>(&mut r, "proof")?),
            },
            0x62 => Operation::Deny {
                push: PushId(r.u64("push id")?),
            },
            0x63 => Operation::CompleteActivation {
                activation: ActivationId(r.u64("activation id")?),
                token: answer(&mut r, "token")?,
                key: PushKey(fixed::<PUBLIC_KEY_LEN>(&mut r, "public key")?),
                pin: pin(&mut r)?
                    .ok_or_else(|| DecodeError::invalid("pin", "must not be empty"))?,
                previous: match r.u64("previous device")? {
                    0 => {
                        if !r.bytes("previous proof")?.is_empty() {
                            return Err(DecodeError::invalid(
                                "previous proof",
                                "must be empty without a previous device",
                            ));
                        }
                        None
                    }
                    device => Some((
                        DeviceId(device),
                        Signature(fixed::<SIGNATURE_LEN>(&mut r, "previous proof")?),
                    )),
                },
                sms_token: Some(answer(&mut r, "sms token")?).filter(|t| !t.as_str().is_empty()),
            },
            other => return Err(DecodeError::UnknownOperation(other)),
        };
        r.finish()?;
        Ok(Self { id, operation })
    }

    /// Appends this request's body (without the length prefix).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_u64(self.id);
        out.put_u8(self.operation.code());
        match &self.operation {
            Operation::Devices { user } => out.put_bytes(user.as_str().as_bytes()),
            Operation::ListDevices { user, page } => {
                out.put_bytes(user.as_str().as_bytes());
                page.encode(out);
            }
            Operation::Shares { page } | Operation::PendingActivations { page } => {
                page.encode(out);
            }
            Operation::Challenge { user, device } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
            }
            Operation::Verify {
                challenge,
                response,
            } => {
                out.put_u64(challenge.0);
                out.put_bytes(response.as_bytes());
            }
            Operation::Enroll(e) => {
                out.put_bytes(e.user.as_str().as_bytes());
                out.put_u8(e.kind.code());
                out.put_bytes(e.secret.as_ref().map_or(&[], SecretKey::expose_secret));
                out.put_bytes(e.pin.as_ref().map_or("", Pin::as_str).as_bytes());
                out.put_bytes(e.label.as_bytes());
            }
            Operation::Revoke { device } => out.put_u64(device.0),
            Operation::Unlock { user, device } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.map_or(0, |d| d.0));
            }
            Operation::Stats | Operation::CarrierSubscribe => {}
            Operation::ImportTokens {
                import,
                commit,
                tokens,
            } => {
                out.put_u64(*import);
                out.put_u8(u8::from(*commit));
                let count = u16::try_from(tokens.len()).unwrap_or(u16::MAX);
                out.put_u16(count);
                for token in tokens.iter().take(usize::from(count)) {
                    token.info.put(out);
                    out.put_bytes(token.key.expose_secret());
                }
            }
            Operation::Resync {
                device,
                first,
                second,
            } => {
                out.put_u64(device.0);
                out.put_bytes(first.as_bytes());
                out.put_bytes(second.as_bytes());
            }
            Operation::AssignToken {
                serial,
                user,
                pin,
                label,
            } => {
                out.put_bytes(serial.as_str().as_bytes());
                out.put_bytes(user.as_str().as_bytes());
                out.put_bytes(pin.as_ref().map_or("", Pin::as_str).as_bytes());
                out.put_bytes(label.as_bytes());
            }
            Operation::RetireTokens { from, to, after } => {
                out.put_bytes(from.as_str().as_bytes());
                out.put_bytes(to.as_str().as_bytes());
                out.put_bytes(after.as_ref().map_or("", Serial::as_str).as_bytes());
            }
            Operation::Tokens {
                filter,
                after,
                limit,
            } => {
                filter.put(out);
                out.put_bytes(after.as_ref().map_or("", Serial::as_str).as_bytes());
                out.put_u16(*limit);
            }
            Operation::AuthorizeWithdrawal {
                user,
                amount_cents,
                challenge,
                response,
            } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(*amount_cents);
                out.put_u64(challenge.0);
                out.put_bytes(response.as_bytes());
            }
            Operation::ChangePin {
                user,
                device,
                challenge,
                pin,
                response,
            } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
                out.put_u64(challenge.0);
                out.put_bytes(pin.as_str().as_bytes());
                out.put_bytes(response.as_bytes());
            }
            Operation::ResetPin {
                device,
                challenge,
                pin,
                response,
            } => {
                out.put_u64(device.0);
                out.put_u64(challenge.0);
                out.put_bytes(pin.as_ref().map_or("", Pin::as_str).as_bytes());
                out.put_bytes(response.as_bytes());
            }
            Operation::SetIdentity { user, identity } => {
                out.put_bytes(user.as_str().as_bytes());
                for field in [
                    &identity.residence,
                    &identity.date_of_birth,
                    &identity.citizenship,
                    &identity.id_document,
                ] {
                    out.put_bytes(field.as_bytes());
                }
            }
            Operation::SetOptOut { user, opted_out } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u8(u8::from(*opted_out));
            }
            Operation::ShareDevice {
                requesting_user,
                owner_user,
                device,
                challenge,
                response,
            } => {
                out.put_bytes(requesting_user.as_str().as_bytes());
                out.put_bytes(owner_user.as_str().as_bytes());
                out.put_u64(device.0);
                out.put_u64(challenge.0);
                out.put_bytes(response.as_bytes());
            }
            Operation::DecideShare { share, approve } => {
                out.put_u64(share.0);
                out.put_u8(u8::from(*approve));
            }
            Operation::CancelShare { share } => out.put_u64(share.0),
            Operation::IssueTemporaryCode { user } | Operation::StartActivation { user } => {
                out.put_bytes(user.as_str().as_bytes());
            }
            Operation::StartPhoneVerification { user, number } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_bytes(number.to_string().as_bytes());
            }
            Operation::OrderReplacement { lost, pin, label } => {
                out.put_u64(lost.0);
                out.put_bytes(pin.as_ref().map_or("", Pin::as_str).as_bytes());
                out.put_bytes(label.as_bytes());
            }
            Operation::ShipReplacement { device, shipped_at } => {
                out.put_u64(device.0);
                out.put_u64(shipped_at.0);
            }
            Operation::AuditLog { after, limit } => {
                out.put_u64(*after);
                out.put_u16(*limit);
            }
            Operation::Backup { path } => out.put_bytes(path.as_bytes()),
            Operation::Erase { user } => out.put_bytes(user.as_str().as_bytes()),
            Operation::Keyring { rotate } => out.put_u8(u8::from(*rotate)),
            Operation::Upgrade { finish } => out.put_u8(u8::from(*finish)),
            Operation::SendCode { user, channel } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u8(channel.code());
            }
            Operation::VerifyCode { user, code } | Operation::ConfirmPhone { user, code } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_bytes(code.as_bytes());
            }
            Operation::CodeStatus { code } => out.put_u64(code.0),
            Operation::Push { user, device } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
            }
            Operation::AwaitPush { push } | Operation::Deny { push } => out.put_u64(push.0),
            Operation::EnrollPhone {
                user,
                number,
                label,
            } => {
                out.put_bytes(user.as_str().as_bytes());
                out.put_bytes(number.to_string().as_bytes());
                out.put_bytes(label.as_bytes());
            }
            Operation::BindPushKey { device, key } => {
                out.put_u64(device.0);
                out.put_bytes(&key.0);
            }
            Operation::Ack { message, report } => {
                out.put_u64(message.0);
                match report {
                    DeliveryReport::Delivered => out.put_u8(0),
                    DeliveryReport::Failed { reason } => {
                        out.put_u8(1);
                        out.put_bytes(reason.as_bytes());
                    }
                }
            }
            Operation::PhoneSubscribe { device, proof } => {
                out.put_u64(device.0);
                out.put_bytes(&proof.0);
            }
            Operation::Approve {
                push,
                chosen,
                proof,
            } => {
                out.put_u64(push.0);
                out.put_u8(*chosen);
                out.put_bytes(&proof.0);
            }
            Operation::CompleteActivation {
                activation,
                token,
                key,
                pin,
                previous,
                sms_token,
            } => {
                out.put_u64(activation.0);
                out.put_bytes(token.as_bytes());
                out.put_bytes(&key.0);
                out.put_bytes(pin.as_str().as_bytes());
                out.put_u64(previous.map_or(0, |(device, _)| device.0));
                out.put_bytes(previous.as_ref().map_or(&[], |(_, proof)| &proof.0));
                out.put_bytes(sms_token.as_ref().map_or(&[], |t| t.as_bytes()));
            }
        }
    }

    /// This request as a whole frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        super::write_frame(&mut out, |body| self.encode_body(body));
        out
    }
}

fn user(r: &mut Reader<'_>) -> Result<Username, DecodeError> {
    Username::new(r.str("user")?).map_err(|e| DecodeError::invalid("user", e.to_string()))
}

fn number(r: &mut Reader<'_>) -> Result<PhoneNumber, DecodeError> {
    PhoneNumber::parse(r.str("number")?).map_err(|e| DecodeError::invalid("number", e.to_string()))
}

fn enroll(r: &mut Reader<'_>) -> Result<EnrollRequest, DecodeError> {
    let user = user(r)?;
    let kind_code = r.u8("kind")?;
    let kind = DeviceKind::from_code(kind_code)
        .ok_or_else(|| DecodeError::invalid("kind", format!("unknown device kind {kind_code}")))?;
    let secret = match r.bytes("secret")? {
        [] => None,
        bytes => Some(
            SecretKey::from_bytes(bytes.to_vec())
                .map_err(|e| DecodeError::invalid("secret", e.to_string()))?,
        ),
    };
    Ok(EnrollRequest {
        user,
        kind,
        secret,
        pin: pin(r)?,
        label: label(r)?,
    })
}

/// A PIN, or none (empty).
fn pin(r: &mut Reader<'_>) -> Result<Option<Pin>, DecodeError> {
    Ok(match r.str("pin")? {
        "" => None,
        text if text.chars().count() > MAX_PIN_LEN => {
            return Err(DecodeError::invalid(
                "pin",
                format!("longer than {MAX_PIN_LEN} characters"),
            ));
        }
        text => Some(Pin::new(text)),
    })
}

fn identification(r: &mut Reader<'_>) -> Result<Identification, DecodeError> {
    let mut field = |name: &'static str| -> Result<String, DecodeError> {
        let text = r.str(name)?;
        if text.is_empty() || text.len() > MAX_IDENTITY_FIELD_LEN {
            return Err(DecodeError::invalid(
                name,
                format!("must be 1 to {MAX_IDENTITY_FIELD_LEN} bytes"),
            ));
        }
        Ok(text.to_owned())
    };
    let residence = field("residence")?;
    if residence.len() != 2 || !residence.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(DecodeError::invalid(
            "residence",
            "must be an ISO 3166 alpha-2 code in upper case",
        ));
    }
    Ok(Identification {
        residence,
        date_of_birth: field("date of birth")?,
        citizenship: field("citizenship")?,
        id_document: field("id document")?,
    })
}

fn label(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let label = r.str("label")?;
    if label.len() > MAX_LABEL_LEN {
        return Err(DecodeError::invalid(
            "label",
            format!("longer than {MAX_LABEL_LEN} bytes"),
        ));
    }
    Ok(label.to_owned())
}

/// A typed answer or code, at most [`MAX_CODE_LEN`] bytes.
fn answer(r: &mut Reader<'_>, field: &'static str) -> Result<Answer, DecodeError> {
    let text = r.str(field)?;
    if text.len() > MAX_CODE_LEN {
        return Err(DecodeError::invalid(
            field,
            format!("longer than {MAX_CODE_LEN} bytes"),
        ));
    }
    Ok(Answer::new(text))
}

/// A byte string of exactly `N` bytes.
fn fixed<const N: usize>(r: &mut Reader<'_>, field: &'static str) -> Result<[u8; N], DecodeError> {
    r.bytes(field)?
        .try_into()
        .map_err(|_| DecodeError::invalid(field, format!("must be {N} bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_keyed_ordered_and_bounded() {
        let items: Vec<u64> = (1..=1200).rev().collect();
        let page = Page {
            after: 100,
            limit: u16::MAX,
        };
        let got = page.select(items, |i| *i);
        assert_eq!(got.len(), MAX_PAGE, "at most MAX_PAGE whatever is asked");
        assert_eq!(got.first(), Some(&101));
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        let small = Page { after: 0, limit: 2 };
        assert_eq!(small.select(vec![9, 3, 5], |i| *i), vec![3, 5]);
    }
}
