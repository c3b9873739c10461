//! SMS and voice codes: `SendCode`, `VerifyCode`, `CodeStatus`.
//!
//! A user has at most one live code. The code is never stored: it is
//! derived from its random id with a key drawn when the engine starts
//! (HMAC-SHA256 seeding the code generator), so the table holds nothing
//! secret, a resend or a voice call delivers the same code, and a restart
//! makes every live code worthless (they are ephemeral by design).
//!
//! The table's lock is `crate::sync`'s, so the loom models explore it.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use rand::{CryptoRng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroizing;

use super::relay::{DispatchError, Outbound, StatusChange};
use super::{Engine, Outcome};
use crate::clock::Timestamp;
use crate::identity::{CodeId, DeviceId, MessageId, Username};
use crate::otp::generate::CodeSpec;
use crate::otp::{Code, HashAlgorithm, HmacKey, SecretKey};
use crate::phone::{Channel, PhoneNumber, SendLimit};
use crate::profile::{Check, DeviceKind};
use crate::ratelimit::Decision;
use crate::sync::{Mutex, MutexGuard};
use crate::wire::codec::{Put, Reader};
use crate::wire::request::Answer;
use crate::wire::{DeliveryState, ErrorCode, Reply, Verdict};

/// One user's live code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CodeSession {
    pub(super) code: CodeId,
    pub(super) device: DeviceId,
    pub(super) expires_at: Timestamp,
    pub(super) last_send: Timestamp,
    /// The first voice call of a code skips the resend interval.
    pub(super) voice_used: bool,
    pub(super) sends: u8,
    pub(super) checks_left: u8,
    pub(super) channel: Channel,
    /// The last message sent, and how its delivery stands.
    pub(super) message: MessageId,
    pub(super) delivery: DeliveryState,
}

impl CodeSession {
    /// A code about to be sent for the first time.
    pub(super) fn new(
        code: CodeId,
        device: DeviceId,
        expires_at: Timestamp,
        checks: u8,
        channel: Channel,
        message: MessageId,
        now: Timestamp,
    ) -> Self {
        Self {
            code,
            device,
            expires_at,
            last_send: now,
            voice_used: false,
            sends: 0,
            checks_left: checks,
            channel,
            message,
            delivery: DeliveryState::Pending,
        }
    }

    /// Refuses a send of a live code that the rules do not allow yet: past
    /// the sends per code, or within the resend interval (the code's first
    /// voice call excepted).
    pub(super) fn may_send(
        &self,
        channel: Channel,
        now: Timestamp,
        sms: &crate::config::SmsConfig,
    ) -> Result<(), Reply> {
        if self.sends >= sms.max_sends {
            return Err(Reply::rate_limited(
                now.until(self.expires_at),
                "this code was sent as often as allowed; ask again when it expires",
            ));
        }
        let first_call = channel == Channel::Voice && !self.voice_used;
        let next = self.last_send.plus(sms.resend_interval);
        if !first_call && next > now {
            return Err(Reply::rate_limited(
                now.until(next),
                "a new code may be requested only every resend interval",
            ));
        }
        Ok(())
    }

    /// Counts a send of `message` on `channel`.
    pub(super) fn sent(&mut self, channel: Channel, message: MessageId, now: Timestamp) {
        self.sends = self.sends.saturating_add(1);
        self.last_send = now;
        self.voice_used |= channel == Channel::Voice;
        self.channel = channel;
        self.message = message;
        self.delivery = DeliveryState::Pending;
    }

    /// The record a shared store keeps.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_u64(self.code.0);
        out.put_u64(self.device.0);
        out.put_u64(self.expires_at.0);
        out.put_u64(self.last_send.0);
        out.put_u8(u8::from(self.voice_used));
        out.put_u8(self.sends);
        out.put_u8(self.checks_left);
        out.put_u8(self.channel.code());
        out.put_u64(self.message.0);
        match &self.delivery {
            DeliveryState::Pending => out.put_u8(0),
            DeliveryState::Delivered => out.put_u8(1),
            DeliveryState::Failed { reason } => {
                out.put_u8(2);
                out.put_bytes(reason.as_bytes());
            }
        }
        out
    }

    /// A stored record; `None` if it does not parse (or is the empty record
    /// of a session that ended).
    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        let code = CodeId(r.u64("code").ok()?);
        let device = DeviceId(r.u64("device").ok()?);
        let expires_at = Timestamp(r.u64("expires at").ok()?);
        let last_send = Timestamp(r.u64("last send").ok()?);
        let voice_used = r.u8("voice used").ok()? == 1;
        let sends = r.u8("sends").ok()?;
        let checks_left = r.u8("checks left").ok()?;
        let channel = Channel::from_code(r.u8("channel").ok()?)?;
        let message = MessageId(r.u64("message").ok()?);
        let delivery = match r.u8("delivery").ok()? {
            0 => DeliveryState::Pending,
            1 => DeliveryState::Delivered,
            2 => DeliveryState::Failed {
                reason: r.str("reason").ok()?.to_owned(),
            },
            _ => return None,
        };
        r.finish().ok()?;
        Some(Self {
            code,
            device,
            expires_at,
            last_send,
            voice_used,
            sends,
            checks_left,
            channel,
            message,
            delivery,
        })
    }
}

#[derive(Default)]
struct Sessions {
    by_user: HashMap<Username, CodeSession>,
    users: HashMap<CodeId, Username>,
}

impl Sessions {
    fn remove(&mut self, user: &Username) {
        if let Some(session) = self.by_user.remove(user) {
            self.users.remove(&session.code);
        }
    }
}

/// Live codes, by user and by code id.
pub(super) struct CodeTable {
    /// HMAC-SHA256 under the engine's code key, its key schedule run once.
    key: HmacKey,
    spec: CodeSpec,
    sessions: Mutex<Sessions>,
}

impl CodeTable {
    pub(super) fn new(key: &SecretKey, spec: CodeSpec) -> Self {
        Self {
            key: HmacKey::new(HashAlgorithm::Sha256, key),
            spec,
            sessions: Mutex::new(Sessions::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn len(&self) -> usize {
        self.lock().by_user.len()
    }

    /// The code of `id`: the same every time, unknowable without the key.
    pub(super) fn code(&self, id: CodeId) -> Code {
        let mac = self.key.mac(&[b"sls/1 sms code ", &id.0.to_be_bytes()]);
        // A SHA-256 MAC is 32 bytes; a made-up seed would be far worse
        // than this unreachable panic (it would make codes guessable).
        #[allow(clippy::expect_used)]
        let seed = mac
            .as_bytes()
            .first_chunk::<32>()
            .expect("HMAC-SHA256 is 32 bytes");
        let mut rng = ChaCha20Rng::from_seed(*seed);
        self.spec.generate(&mut rng)
    }

    pub(super) fn sweep(&self, now: Timestamp) -> usize {
        let mut sessions = self.lock();
        let expired: Vec<Username> = sessions
            .by_user
            .iter()
            .filter(|(_, s)| crate::store::forgotten(s.expires_at, now))
            .map(|(user, _)| user.clone())
            .collect();
        for user in &expired {
            sessions.remove(user);
        }
        expired.len()
    }

    /// Records what became of a code's messages; only the last message
    /// sent counts (an earlier SMS failing after the voice call went
    /// through does not make the code undelivered).
    pub(super) fn update(&self, changes: Vec<StatusChange>) {
        if changes.is_empty() {
            return;
        }
        let mut sessions = self.lock();
        for (code, message, delivery) in changes {
            let Some(user) = sessions.users.get(&code).cloned() else {
                continue;
            };
            if let Some(session) = sessions
                .by_user
                .get_mut(&user)
                .filter(|s| s.message == message)
            {
                session.delivery = delivery;
            }
        }
    }
}

/// The message the carrier delivers, saying how long the code has left.
pub(super) fn message_text(code: &Code, left: Duration) -> Zeroizing<String> {
    code_text("security code", code, left)
}

/// "Your sls {what} is {code}. It expires in N minutes. Never share it."
pub(super) fn code_text(what: &str, code: &Code, left: Duration) -> Zeroizing<String> {
    let minutes = left.as_secs().div_ceil(60).max(1);
    let unit = if minutes == 1 { "minute" } else { "minutes" };
    Zeroizing::new(format!(
        "Your sls {what} is {}. It expires in {minutes} {unit}. Never share it.",
        code.as_str(),
    ))
}

/// The refusal of a number outside `sms.allowed-country-codes`, on either
/// store.
pub(super) fn country_refused(sms: &crate::config::SmsConfig, to: &PhoneNumber) -> Option<Reply> {
    (!sms.allows(to)).then(|| {
        Reply::error(
            ErrorCode::InvalidArgument,
            format!("codes are not sent to country code +{} here", to.country()),
        )
    })
}

impl Engine {
    /// One delivery to `to` against this node's quotas: its country must
    /// be allowed, then the number's, its range's and its country code's
    /// limits must have room (SMS pumping goes through many numbers of a
    /// premium range).
    pub(super) fn send_quota(&self, to: &PhoneNumber, now: Timestamp) -> Result<(), Reply> {
        let config = self.config();
        if let Some(refusal) = country_refused(&config.sms, to) {
            return Err(refusal);
        }
        let rate = |limit| config.sms.send_rate(limit);
        let checks = [
            (
                self.number_limits
                    .check(rate(SendLimit::Number), to.to_string().as_bytes(), now),
                SendLimit::Number,
            ),
            (
                self.range_limits
                    .check(rate(SendLimit::Range), to.range().as_bytes(), now),
                SendLimit::Range,
            ),
            (
                self.prefix_limits.check_index(
                    rate(SendLimit::Country),
                    usize::from(to.country()),
                    now,
                ),
                SendLimit::Country,
            ),
        ];
        for (decision, limit) in checks {
            if let Decision::Deny { retry_after } = decision {
                // The country code only: a number is personal data.
                crate::events::emit(|| {
                    let refused = crate::events::Outcome::Failure;
                    let category = crate::events::Category::Authentication;
                    crate::events::Event::new(now, "sms-velocity-refused", category, refused)
                        .reason(format!("{} (+{})", limit.refusal(), to.country()))
                });
                return Err(Reply::rate_limited(retry_after, limit.refusal()));
            }
        }
        Ok(())
    }

    /// The spec of SMS codes: the `sms` device profile's random code
    /// (six digits if a configuration made it something else).
    pub(super) fn sms_code_spec(config: &crate::config::Config) -> CodeSpec {
        match &config.devices.get(DeviceKind::Sms).check {
            Check::RandomCode(spec) => spec.clone(),
            _ => CodeSpec::six_digits(),
        }
    }

    pub(super) fn send_code<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        channel: Channel,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let sms = &self.config().sms;
        let Some(device) = self
            .login_devices(user, now)
            .into_iter()
            .find(|d| d.phone().is_some())
        else {
            return Reply::error(
                ErrorCode::NoVerifiedNumber,
                "no verified phone number to send a code to",
            );
        };
        let Some(to) = device.phone().cloned() else {
            return Reply::error(ErrorCode::NoVerifiedNumber, "no verified phone number");
        };
        let failures = *device.failures();
        if let Some(retry_after) = super::rules::lockout::locked(&failures, now) {
            return Reply::rate_limited(retry_after, "the SMS device is locked out");
        }
        if self.outbox.bridges() == 0 {
            return Reply::error(
                ErrorCode::DeliveryUnavailable,
                "no carrier bridge is connected",
            );
        }
        let mut sessions = self.codes.lock();
        let live = sessions
            .by_user
            .get(user)
            .filter(|s| s.expires_at > now && s.device == device.id);
        let (code, expires_at, fresh) = match live {
            Some(session) => {
                if let Err(refusal) = session.may_send(channel, now, sms) {
                    return refusal;
                }
                (session.code, session.expires_at, false)
            }
            None => {
                if let Decision::Deny { retry_after } = self.issuance(user, now) {
                    return Reply::rate_limited(retry_after, "too many codes for this user");
                }
                if sessions.by_user.len() >= sms.capacity {
                    return Reply::error(ErrorCode::Busy, "the code table is full");
                }
                let mut id = CodeId(rng.next_u64());
                while sessions.users.contains_key(&id) {
                    id = CodeId(rng.next_u64());
                }
                (id, now.plus(sms.ttl), true)
            }
        };
        if let Err(refusal) = self.send_quota(&to, now) {
            return refusal;
        }
        let text = message_text(&self.codes.code(code), now.until(expires_at));
        let outbound = Outbound {
            code,
            to,
            channel,
            text,
        };
        let message = match self.outbox.dispatch(outbound, now, rng) {
            Ok(message) => message,
            Err(DispatchError::NoBridge) => {
                return Reply::error(
                    ErrorCode::DeliveryUnavailable,
                    "no carrier bridge took the message",
                );
            }
            Err(DispatchError::Full) => {
                return Reply::error(ErrorCode::Busy, "the carrier outbox is full");
            }
        };
        if fresh {
            // Replaces the user's expired code, if the sweeper has not yet.
            sessions.remove(user);
            sessions.users.insert(code, user.clone());
        }
        sessions
            .by_user
            .entry(user.clone())
            .or_insert_with(|| {
                CodeSession::new(
                    code,
                    device.id,
                    expires_at,
                    sms.max_checks,
                    channel,
                    message,
                    now,
                )
            })
            .sent(channel, message, now);
        self.counters.codes_sent.fetch_add(1, Relaxed);
        Reply::CodeSent {
            code,
            expires_in: now.until(expires_at),
            resend_after: sms.resend_interval,
        }
    }

    pub(super) fn verify_code(&self, user: &Username, given: &Answer, now: Timestamp) -> Outcome {
        let mut sessions = self.codes.lock();
        // Expired longer ago than either store remembers: as if swept.
        if sessions
            .by_user
            .get(user)
            .is_some_and(|s| crate::store::forgotten(s.expires_at, now))
        {
            sessions.remove(user);
        }
        let Some(session) = sessions.by_user.get_mut(user) else {
            // Same work as a real check, so timing does not tell whether
            // the user exists or has a code.
            let _ = self.codes.code(CodeId(0)).matches(given.as_bytes());
            return Reply::Verdict(Verdict::UnknownChallenge).into();
        };
        if session.expires_at <= now {
            sessions.remove(user);
            return Reply::Verdict(Verdict::Expired).into();
        }
        let Some(device) = self.registry.device(session.device) else {
            sessions.remove(user);
            return Reply::Verdict(Verdict::UnknownChallenge).into();
        };
        let mut failures = device.failures();
        let code = session.code;
        let decided = super::rules::code::decide(
            user,
            session,
            &device,
            &mut failures,
            || self.codes.code(code).matches(given.as_bytes()),
            now,
            &self.config(),
        );
        drop(failures);
        if decided.session == crate::store::Disposition::Remove {
            sessions.remove(user);
        }
        self.count_code_verdict(&decided, &device, now);
        Outcome {
            reply: Reply::Verdict(decided.verdict),
            persist: decided.failures_changed.then_some(device.id),
            booking: None,
        }
    }

    /// Counts a code check's verdict (a check refused for a lockout before
    /// the code was compared counts nothing) and the lockout it caused.
    pub(super) fn count_code_verdict(
        &self,
        decided: &super::rules::code::CodeDecided,
        device: &crate::store::Device,
        now: Timestamp,
    ) {
        if decided.locked {
            self.count_lockout(&device.user, device.id, now);
        }
        match decided.verdict {
            Verdict::Accepted { .. } => self.counters.accepted.fetch_add(1, Relaxed),
            _ if decided.failures_changed => self.counters.rejected.fetch_add(1, Relaxed),
            _ => return,
        };
    }

    pub(super) fn code_status(&self, code: CodeId) -> Reply {
        let sessions = self.codes.lock();
        let session = sessions
            .users
            .get(&code)
            .and_then(|user| sessions.by_user.get(user));
        match session {
            Some(s) => Reply::CodeStatus {
                channel: s.channel,
                sends: s.sends,
                delivery: s.delivery.clone(),
            },
            None => Reply::error(ErrorCode::NotFound, "no such live code"),
        }
    }
}
