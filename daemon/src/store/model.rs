//! The store's types, which both backends (`embedded`, `cluster`) and the
//! engine share: a device ready to verify, its failure state, what sls
//! keeps about a user and a device's lifecycle, shares, open challenges,
//! and the errors of a store.

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::questions::{QuestionMemory, decode_question, encode_question};
use super::sealed::SealError;
use crate::clock::Timestamp;
use crate::identity::{DeviceId, ShareId, Username};
use crate::otp::card::{CardChallenge, CodeCard};
use crate::otp::hotp::Digits;
use crate::otp::ocra::Ocra;
use crate::otp::push::PushKey;
use crate::otp::totp::TimeStep;
use crate::otp::{HmacKey, MacOutput, SecretKey};
use crate::phone::PhoneNumber;
use crate::profile::DeviceKind;
use crate::wire::codec::{Put, Reader};
use crate::wire::token::TokenInfo;

/// How long past its expiry a challenge (an SMS code, a push) is still
/// known, on either store: an answer within it hears `Expired`, one after
/// it `UnknownChallenge`, whenever the sweeper runs (on the cluster, the
/// record's TTL ends then).
pub const EXPIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether something that expired at `expires_at` is forgotten at `now`
/// (expired `EXPIRED_GRACE` or more ago): unknown from then on, on both
/// stores, however late a sweeper removes it.
pub fn forgotten(expires_at: Timestamp, now: Timestamp) -> bool {
    expires_at.plus(EXPIRED_GRACE) <= now
}

/// A database or at-rest-encryption failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("stored record of device {device} is damaged: {problem}")]
    Corrupt { device: u64, problem: String },
    #[error(transparent)]
    Shared(#[from] super::cluster::redis::RedisError),
    /// A shared-store record whose authentication tag does not match: it
    /// was not written by a node of this deployment as it stands.
    #[error("the shared store's record {0} failed its integrity check")]
    Forged(String),
    /// Data written by a newer release, in a layout this one does not know.
    #[error(
        "the data is of format {found}, newer than this slsd reads ({supported}): \
         run the release that wrote it or a later one (a downgrade needs a backup taken before the upgrade)"
    )]
    NewerFormat { found: u64, supported: u64 },
}

/// Why an enrolment was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Consecutive failures and lockout of one device; durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureState {
    /// Wrong answers since the last right one or the last lockout.
    pub consecutive: u32,
    /// The lockout escalation: each doubles the next. A right answer
    /// clears it; quiet periods without failures step it down.
    pub lockouts: u32,
    /// Locked until this moment (in the past when not locked;
    /// [`LOCKED_UNTIL_UNLOCKED`] when only an operator can unlock it).
    pub locked_until: Timestamp,
    /// When the last wrong answer came (0: none since the last right one).
    pub last_failure: Timestamp,
    /// Wrong answers since the last right one, lockouts or not: the hard
    /// cap (`lockout.hard-limit`) counts these.
    pub since_success: u32,
    /// An imported token's moving factor: the lowest counter (HOTP, OCRA
    /// with `C`) or time step (TOTP, OCRA with `T`) an answer may still
    /// use; everything below was used or passed over. It only grows, so no
    /// code is accepted twice. 0 for other devices.
    pub moving: u64,
}

/// `locked_until` of a device that reached `lockout.hard-limit`: locked
/// until an operator unlocks it.
pub const LOCKED_UNTIL_UNLOCKED: Timestamp = Timestamp(u64::MAX);

impl FailureState {
    /// The stored form (a shared store's record, the database's value).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.put_u64(u64::from(self.consecutive) << 32 | u64::from(self.lockouts));
        out.put_u64(self.locked_until.0);
        out.put_u64(self.last_failure.0);
        out.put_u64(u64::from(self.since_success));
        out.put_u64(self.moving);
        out
    }

    /// How long the device stays locked from `now` (zero when it is not);
    /// `Duration::MAX` when only an operator can unlock it, which the wire
    /// carries as the largest number of milliseconds.
    pub fn locked_for(&self, now: Timestamp) -> std::time::Duration {
        if self.needs_operator() {
            std::time::Duration::MAX
        } else {
            now.until(self.locked_until)
        }
    }

    /// Whether the device reached the hard cap and waits for an operator.
    pub fn needs_operator(&self) -> bool {
        self.locked_until == LOCKED_UNTIL_UNLOCKED
    }

    /// Reads the stored form, the 32-byte form of versions before tokens
    /// (no moving factor), and the 16-byte form of earlier versions (no
    /// time of the last failure: the decay counts from the lock's end; the
    /// failures since success were the consecutive ones).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let counts = r.u64("counts").ok()?;
        let locked_until = Timestamp(r.u64("locked until").ok()?);
        let consecutive = (counts >> 32) as u32;
        let (last_failure, since_success) = if bytes.len() == 16 {
            (Timestamp(0), consecutive)
        } else {
            (
                Timestamp(r.u64("last failure").ok()?),
                u32::try_from(r.u64("failures since success").ok()?).ok()?,
            )
        };
        let moving = if bytes.len() > 32 {
            r.u64("moving factor").ok()?
        } else {
            0
        };
        r.finish().ok()?;
        Some(Self {
            consecutive,
            lockouts: (counts & 0xffff_ffff) as u32,
            locked_until,
            last_failure,
            since_success,
            moving,
        })
    }
}

/// How a device's answers are checked.
pub enum Verifier {
    /// OCRA, with the PIN hash for suites that bind a PIN.
    Ocra {
        ocra: Ocra,
        pin_hash: Option<PinHash>,
    },
    Card(CodeCard),
    /// Codes sent by SMS or voice to this verified number.
    Phone(PhoneNumber),
    /// A code issued by an operator and typed as it is (temporary codes).
    Code(SecretKey),
    /// An imported HOTP token: the code for the next counter values.
    Hotp {
        key: HmacKey,
        digits: Digits,
    },
    /// An imported TOTP token: the code for the time step.
    Totp {
        key: HmacKey,
        digits: Digits,
        step: TimeStep,
        origin: u64,
    },
}

/// The hash of a device's PIN, OCRA's `P` input: on the heap at its own
/// length (20 bytes for `PSHA1`, 32 for `PSHA256`), wiped on drop.
///
/// Not a [`MacOutput`]: that holds 64 bytes inline, and every device in
/// memory holds a `Verifier` as large as its largest variant, PIN or not.
/// This is 16 bytes inline and one small allocation for a device with a
/// PIN.
#[derive(Clone)]
pub struct PinHash(zeroize::Zeroizing<Box<[u8]>>);

impl PinHash {
    pub fn new(hash: &[u8]) -> Self {
        Self(zeroize::Zeroizing::new(hash.into()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PinHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinHash(..)")
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ocra { ocra, .. } => write!(f, "Verifier::Ocra({})", ocra.suite()),
            Self::Card(card) => write!(f, "Verifier::Card({} positions)", card.positions()),
            Self::Phone(number) => write!(f, "Verifier::Phone({number:?})"),
            Self::Code(_) => f.write_str("Verifier::Code(..)"),
            Self::Hotp { digits, .. } => write!(f, "Verifier::Hotp({digits} digits)"),
            Self::Totp { digits, step, .. } => {
                write!(f, "Verifier::Totp({digits} digits, {step:?})")
            }
        }
    }
}

/// The expiry of a device that does not expire: no clock reaches it.
const NEVER: Timestamp = Timestamp(u64::MAX);

/// An enrolled device, ready to verify.
#[derive(Debug)]
pub struct Device {
    pub id: DeviceId,
    pub user: Username,
    pub kind: DeviceKind,
    pub label: Box<str>,
    pub created: Timestamp,
    /// When the device stops working: its kind's validity after activation
    /// (Online Security Code Cards, temporary codes), as configured now;
    /// [`NEVER`] for most kinds. Not an `Option`: that would take 16
    /// bytes of every device instead of 8.
    expires: Timestamp,
    pub verifier: Verifier,
    /// An imported token's serial, algorithm and starting counter
    /// (`DeviceKind::Token`).
    pub token: Option<Box<TokenInfo>>,
    /// `crate::sync`'s lock, so the loom models see it: every decision on
    /// a device's failures is made under it.
    pub(super) failures: crate::sync::Mutex<FailureState>,
    /// What the device was asked (kept in memory only: see
    /// `store::questions`). Locked only while `failures` is held, so the
    /// two change together.
    pub(super) questions: crate::sync::Mutex<QuestionMemory>,
    /// The key push approvals are signed with (IB Key devices). Boxed:
    /// most devices have none, and an empty box costs 8 bytes where the
    /// key costs 33.
    push_key: Mutex<Option<Box<PushKey>>>,
    /// Activation state, temporary-code uses, app PIN (`accounts`).
    pub(super) life: Mutex<DeviceLife>,
}

impl Device {
    /// Whether answers carry a PIN (an OCRA suite with `P`): what a PIN
    /// change or reset applies to.
    pub fn takes_pin(&self) -> bool {
        matches!(
            &self.verifier,
            Verifier::Ocra {
                pin_hash: Some(_),
                ..
            }
        )
    }

    /// Whether the device's validity has ended at `now`.
    pub fn expired_at(&self, now: Timestamp) -> bool {
        self.expires <= now
    }

    /// The failure state, locked for reading and changing.
    pub fn failures(&self) -> crate::sync::MutexGuard<'_, FailureState> {
        // Every change is a whole-value assignment; a poisoned lock holds a
        // consistent value.
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the device was asked, locked for reading and changing. Take it
    /// only while holding [`failures`](Self::failures) (the lock order).
    pub fn questions<'a>(
        &'a self,
        _failures: &crate::sync::MutexGuard<'a, FailureState>,
    ) -> crate::sync::MutexGuard<'a, QuestionMemory> {
        self.questions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The public key this device signs push approvals with, if bound.
    pub fn push_key(&self) -> Option<PushKey> {
        self.push_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            .copied()
    }

    /// The lifecycle state (activation, uses left, app PIN).
    pub fn life(&self) -> DeviceLife {
        self.life_mut().clone()
    }

    pub(super) fn life_mut(&self) -> MutexGuard<'_, DeviceLife> {
        self.life.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the device can be used at `now`: activated, and its
    /// validity not ended.
    pub fn usable_at(&self, now: Timestamp) -> bool {
        !self.expired_at(now) && self.life_mut().allows_use(now)
    }

    /// Sets the push key, as read from a store.
    pub(super) fn set_push_key(&self, key: Option<PushKey>) {
        *self.push_key.lock().unwrap_or_else(PoisonError::into_inner) = key.map(Box::new);
    }

    /// This device as an imported token's (its serial, algorithm and
    /// starting counter).
    pub(super) fn with_token(mut self, token: Option<TokenInfo>) -> Self {
        self.token = token.map(Box::new);
        self
    }

    /// The verified number of an SMS device.
    pub fn phone(&self) -> Option<&PhoneNumber> {
        match &self.verifier {
            Verifier::Phone(number) => Some(number),
            _ => None,
        }
    }

    pub(super) fn new(
        id: DeviceId,
        user: Username,
        kind: DeviceKind,
        label: String,
        created: Timestamp,
        expires: Option<Timestamp>,
        verifier: Verifier,
    ) -> Self {
        Self {
            id,
            user,
            kind,
            label: label.into(),
            created,
            expires: expires.unwrap_or(NEVER),
            verifier,
            token: None,
            failures: crate::sync::Mutex::new(FailureState::default()),
            questions: crate::sync::Mutex::new(QuestionMemory::default()),
            push_key: Mutex::new(None),
            life: Mutex::new(DeviceLife::default()),
        }
    }
}

/// What an operator enrols.
#[derive(Debug)]
pub struct NewDevice<'a> {
    pub user: &'a Username,
    pub kind: DeviceKind,
    /// The device's key; `None` generates one.
    pub secret: Option<SecretKey>,
    pub pin: Option<&'a str>,
    pub label: &'a str,
    /// An imported token's description (`DeviceKind::Token`).
    pub token: Option<&'a TokenInfo>,
}

impl NewDevice<'_> {
    /// What the audit log says of the enrolment.
    pub fn detail(&self) -> String {
        match self.token {
            Some(token) => format!("{} {}", self.kind, token.serial),
            None => self.kind.to_string(),
        }
    }
}

/// Who made a change, for the audit log: the caller's role (operators
/// share the admin certificate, so the role is what sls can vouch for), or
/// `system` for what sls does by itself (auto-activation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actor(pub &'static str);

impl Actor {
    pub const SYSTEM: Self = Self("system");
}

/// What sls keeps about a user besides devices.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Account {
    /// Country of residence, ISO 3166 alpha-2 (the opt-out rule needs it).
    pub residence: Option<[u8; 2]>,
    /// Keyed digest of the identification data (date of birth,
    /// citizenship, residence, ID document); the data itself is not kept.
    pub identity: Option<[u8; 32]>,
    /// Opted out of the Secure Login System.
    pub opted_out: bool,
    /// The number confirmed by `ConfirmPhone` (sealed at rest).
    pub number: Option<PhoneNumber>,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field(
                "residence",
                &self
                    .residence
                    .map(|r| String::from_utf8_lossy(&r).into_owned()),
            )
            .field("identity", &self.identity.map(|_| ".."))
            .field("opted_out", &self.opted_out)
            .field("number", &self.number)
            .finish()
    }
}

/// Whether a device can be used yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Active,
    /// A replacement card ordered for `replaces`, not yet shipped.
    Ordered { replaces: DeviceId },
    /// Enrolled and waiting for its first right answer (an authenticator
    /// app: the first code proves the app took the key as it was given).
    Pending,
    /// Shipped: active at its activation time, or earlier once its
    /// holder answers a challenge with it. Boxed: few cards are in the
    /// post at any time, and every device in memory holds an `Activation`
    /// (16 bytes instead of 32).
    Shipped(Box<Shipment>),
}

/// A replacement card in the post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shipment {
    /// The card it replaces (retired when this one activates).
    pub replaces: DeviceId,
    pub shipped_at: Timestamp,
    pub activates_at: Timestamp,
}

impl Activation {
    /// A replacement card in the post: what the activation check lists
    /// (each store keeps an index of these).
    pub fn is_shipped(&self) -> bool {
        matches!(self, Self::Shipped(_))
    }

    /// Whether the device counts as active at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        match self {
            Self::Active => true,
            Self::Ordered { .. } | Self::Pending => false,
            Self::Shipped(shipment) => shipment.activates_at <= now,
        }
    }
}

/// The mutable lifecycle state of a device.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceLife {
    pub activation: Activation,
    /// Uses left of a temporary code.
    pub uses_left: Option<u32>,
    /// The PIN chosen since enrolment (`ChangePin`, `ResetPin`), in place
    /// of the one the device was enrolled with. Kept here, in the state
    /// every verify reads afresh on either store, so a change counts on
    /// every node at once (device records are cached). Boxed: few devices
    /// have one, and every device in memory holds a `DeviceLife`.
    pub pin: Option<Box<ChangedPin>>,
}

/// A PIN changed since enrolment: its hash (what OCRA takes), and the
/// same sealed as the stores keep it.
#[derive(Clone)]
pub struct ChangedPin {
    pub hash: MacOutput,
    pub sealed: Vec<u8>,
}

impl fmt::Debug for ChangedPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChangedPin(..)")
    }
}

impl PartialEq for ChangedPin {
    fn eq(&self, other: &Self) -> bool {
        // Sealed under a random nonce: equal seals are the same sealing.
        self.sealed == other.sealed
    }
}

impl Eq for ChangedPin {}

impl DeviceLife {
    /// Whether a device in this state can be used at `now` (its validity
    /// aside): activated, and a temporary code with uses left.
    pub fn allows_use(&self, now: Timestamp) -> bool {
        self.activation.is_active(now) && self.uses_left != Some(0)
    }
}

impl fmt::Debug for DeviceLife {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceLife")
            .field("activation", &self.activation)
            .field("uses_left", &self.uses_left)
            .field("pin_changed", &self.pin.is_some())
            .finish()
    }
}

/// Where a share stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareState {
    /// Waiting for compliance approval.
    Pending,
    /// In effect: the requester uses the owner's device, and the
    /// requester's own devices are suspended.
    Active,
}

/// One user using another user's physical device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub id: ShareId,
    pub requester: Username,
    pub owner: Username,
    pub device: DeviceId,
    pub state: ShareState,
    pub created: Timestamp,
}

/// What was asked, kept until it is answered or expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenChallenge {
    pub user: Username,
    pub device: DeviceId,
    pub question: Question,
    pub expires_at: Timestamp,
    pub attempts_left: u8,
}

impl OpenChallenge {
    /// The record a shared store keeps.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_u8(self.attempts_left);
        out.put_bytes(self.user.as_str().as_bytes());
        out.put_u64(self.device.0);
        out.put_u64(self.expires_at.0);
        encode_question(&self.question, &mut out);
        out
    }

    /// A stored record; `None` if it does not parse.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let attempts_left = r.u8("attempts left").ok()?;
        let user = Username::new(r.str("user").ok()?).ok()?;
        let device = DeviceId(r.u64("device").ok()?);
        let expires_at = Timestamp(r.u64("expires at").ok()?);
        let question = decode_question(&mut r)?;
        r.finish().ok()?;
        Some(Self {
            user,
            device,
            question,
            expires_at,
            attempts_left,
        })
    }
}

/// The question shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// Digits to type into an OCRA device.
    Ocra(String),
    /// Two positions of a code card.
    Card(CardChallenge),
    /// No question: the user types the code they hold (temporary codes).
    Code,
}

/// What to do with a challenge after looking at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Keep,
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every enrolled device is held in memory (ten million on one box),
    /// so its size is a budget: 344 bytes plus the `Arc`'s two counts is
    /// glibc's 368-byte chunk. A field that grows it should be boxed or
    /// kept on disk unless it earns its bytes in every device.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_device_in_memory_stays_within_its_budget() {
        assert!(
            std::mem::size_of::<Device>() <= 344,
            "Device is {} bytes",
            std::mem::size_of::<Device>()
        );
        assert!(std::mem::size_of::<Verifier>() <= 120);
        assert!(std::mem::size_of::<DeviceLife>() <= 32);
    }

    #[test]
    fn failure_states_round_trip_and_the_earlier_form_still_reads() {
        let state = FailureState {
            consecutive: 3,
            lockouts: 2,
            locked_until: Timestamp(1_800_000_000_000),
            last_failure: Timestamp(1_799_999_000_000),
            since_success: 13,
            moving: 42,
        };
        assert_eq!(FailureState::decode(&state.encode()), Some(state));
        // The 32-byte record of versions before tokens.
        let before_tokens = &state.encode()[..32];
        assert_eq!(
            FailureState::decode(before_tokens),
            Some(FailureState { moving: 0, ..state })
        );
        // The 16-byte record of versions before the decay and the hard cap.
        let mut old = Vec::new();
        old.put_u64(3 << 32 | 2);
        old.put_u64(1_800_000_000_000);
        assert_eq!(
            FailureState::decode(&old),
            Some(FailureState {
                last_failure: Timestamp(0),
                since_success: 3,
                moving: 0,
                ..state
            })
        );
        assert_eq!(FailureState::decode(&old[..15]), None);
        assert_eq!(FailureState::decode(&state.encode()[..31]), None);
        assert_eq!(FailureState::decode(&state.encode()[..39]), None);
    }

    #[test]
    fn a_shipped_card_is_active_from_its_activation_time() {
        let shipped = Activation::Shipped(Box::new(Shipment {
            replaces: DeviceId(1),
            shipped_at: Timestamp(0),
            activates_at: Timestamp(100),
        }));
        assert!(!shipped.is_active(Timestamp(99)));
        assert!(shipped.is_active(Timestamp(100)));
        assert!(
            !Activation::Ordered {
                replaces: DeviceId(1)
            }
            .is_active(Timestamp(u64::MAX))
        );
    }
}

/// A number being added to a user, waiting for its confirm code.
#[derive(Clone)]
pub struct NumberToken {
    pub number: PhoneNumber,
    pub code: crate::otp::Code,
    pub expires_at: Timestamp,
    pub attempts_left: u8,
}

/// How a pending IB Key activation is proven.
#[derive(Clone)]
pub enum TokenProof {
    /// The token sent by SMS.
    Sms(crate::otp::Code),
    /// The answer to a challenge opened on the user's physical device
    /// (checked by `Verify`, with its own attempts and lockouts); for a
    /// device of the lowest level (a code card), the SMS token as well.
    Device {
        device: DeviceId,
        challenge: crate::identity::ChallengeId,
        sms: Option<crate::otp::Code>,
    },
}

/// An IB Key activation under way.
#[derive(Clone)]
pub struct ActivationToken {
    pub user: Username,
    pub proof: TokenProof,
    pub expires_at: Timestamp,
    pub attempts_left: u8,
}

impl fmt::Debug for NumberToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberToken")
            .field("expires_at", &self.expires_at)
            .field("attempts_left", &self.attempts_left)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for TokenProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sms(_) => f.write_str("Sms(..)"),
            Self::Device {
                device, challenge, ..
            } => f
                .debug_struct("Device")
                .field("device", device)
                .field("challenge", challenge)
                .finish_non_exhaustive(),
        }
    }
}

impl fmt::Debug for ActivationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActivationToken")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .field("attempts_left", &self.attempts_left)
            .finish_non_exhaustive()
    }
}
