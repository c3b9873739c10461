//! Phone numbers and IB Key activation: adding a number with a confirm
//! code sent by SMS, and binding the phone app to a user with an activation
//! token sent by SMS to the number on record (or the answer of the user's
//! physical device instead).
//!
//! Tokens live in memory only: they are short-lived (`lifecycle.token-ttl`),
//! single-use, attempt-limited (`lifecycle.token-attempts`) and bounded in
//! number (`lifecycle.token-capacity`). A restart loses them, which only
//! means the user asks for a new one. What they unlock is written as one
//! `Registry::change` with its audit entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::CryptoRng;
use zeroize::Zeroizing;

use super::relay::{DispatchError, Outbound};
use super::sms::code_text;
use super::{Caller, Engine, Outcome};
use crate::clock::Timestamp;
use crate::identity::{ActivationId, ChallengeId, CodeId, DeviceId, Username};
use crate::otp::Code;
use crate::otp::push::{PushKey, Signature, reactivate_message};
use crate::phone::{Channel, PhoneNumber};
use crate::policy::pin::check_app_pin;
use crate::profile::{DeviceKind, SecurityLevel};
use crate::ratelimit::Decision;
use crate::store::{Device, EnrollError, NewDevice};
use crate::wire::request::{Answer, Pin};
use crate::wire::{ActivationRoute, ErrorCode, Refusal, Reply, Verdict};

/// A number being added to a user, waiting for its confirm code.
struct PendingNumber {
    number: PhoneNumber,
    code: Code,
    expires_at: Timestamp,
    attempts_left: u8,
}

/// How a pending activation is proven.
enum Proof {
    /// The token sent by SMS.
    Sms(Code),
    /// The answer to a challenge opened on the user's physical device
    /// (checked by `verify`, with its own attempts and lockouts); for a
    /// device of the lowest level (a code card), the SMS token as well.
    Device {
        device: DeviceId,
        challenge: ChallengeId,
        sms: Option<Code>,
    },
}

struct PendingActivation {
    user: Username,
    proof: Proof,
    expires_at: Timestamp,
    attempts_left: u8,
}

#[derive(Default)]
struct Pending {
    numbers: HashMap<Username, PendingNumber>,
    activations: HashMap<ActivationId, PendingActivation>,
}

impl Pending {
    fn len(&self) -> usize {
        self.numbers.len() + self.activations.len()
    }
}

/// The confirm codes and activation tokens waiting for an answer.
pub(super) struct TokenTable {
    pending: Mutex<Pending>,
    capacity: usize,
}

/// What checking a token against a typed answer decided.
enum Checked {
    Right,
    Wrong { attempts_left: u8 },
    Expired,
}

impl Checked {
    /// Whether the token is done with: used, expired, or out of attempts.
    fn used_up(&self) -> bool {
        !matches!(self, Self::Wrong { attempts_left } if *attempts_left > 0)
    }

    /// The reply to a wrong or late answer; `None` when it was right.
    fn refusal(&self) -> Option<Reply> {
        match self {
            Self::Right => None,
            Self::Wrong { attempts_left } => Some(Reply::Verdict(Verdict::Rejected {
                attempts_left: *attempts_left,
            })),
            Self::Expired => Some(Reply::Verdict(Verdict::Expired)),
        }
    }
}

/// Checks `given` against a single-use token in constant time; a wrong
/// answer spends an attempt.
fn check_token(
    code: &Code,
    expires_at: Timestamp,
    attempts_left: &mut u8,
    given: &Answer,
    now: Timestamp,
) -> Checked {
    if expires_at <= now {
        return Checked::Expired;
    }
    if code.matches(given.as_bytes()) {
        return Checked::Right;
    }
    *attempts_left = attempts_left.saturating_sub(1);
    Checked::Wrong {
        attempts_left: *attempts_left,
    }
}

impl TokenTable {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops expired tokens; how many went.
    pub(super) fn sweep(&self, now: Timestamp) -> usize {
        let mut pending = self.lock();
        let before = pending.len();
        pending.numbers.retain(|_, p| p.expires_at > now);
        pending.activations.retain(|_, p| p.expires_at > now);
        before - pending.len()
    }
}

/// The digits of every number `user` has on record, for the PIN rule.
fn phone_digits(engine: &Engine, user: &Username) -> Vec<String> {
    let record = engine.registry.user(user).number;
    let devices = engine.registry.devices_of(user);
    record
        .iter()
        .chain(devices.iter().filter_map(|d| d.phone()))
        .map(|n| format!("{}{}", n.country(), n.national()))
        .collect()
}

impl Engine {
    /// The number sls sends activation tokens to: the confirmed one, or
    /// the user's SMS device's.
    fn number_on_record(&self, user: &Username) -> Option<PhoneNumber> {
        self.registry.user(user).number.or_else(|| {
            self.registry
                .devices_of(user)
                .iter()
                .find_map(|d| d.phone().cloned())
        })
    }

    /// Sends `text` to `to` by SMS through a carrier bridge, within the
    /// per-number and per-country limits that keep SMS pumping away.
    fn send_token<R: CryptoRng + ?Sized>(
        &self,
        to: PhoneNumber,
        text: Zeroizing<String>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<(), Reply> {
        if self.outbox.bridges() == 0 {
            return Err(Reply::error(
                ErrorCode::DeliveryUnavailable,
                "no carrier bridge is connected",
            ));
        }
        self.send_quota(&to, now)?;
        let outbound = Outbound {
            // Not an SMS login code: no `CodeStatus` follows it.
            code: CodeId(rng.next_u64()),
            to,
            channel: Channel::Sms,
            text,
        };
        match self.outbox.dispatch(outbound, now, rng) {
            Ok(_) => Ok(()),
            Err(DispatchError::NoBridge) => Err(Reply::error(
                ErrorCode::DeliveryUnavailable,
                "no carrier bridge took the message",
            )),
            Err(DispatchError::Full) => {
                Err(Reply::error(ErrorCode::Busy, "the carrier outbox is full"))
            }
        }
    }

    fn tokens_full(&self) -> Reply {
        Reply::error(ErrorCode::Busy, "the activation token table is full")
    }

    pub(super) fn start_phone_verification<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        number: PhoneNumber,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        if let Decision::Deny { retry_after } = self.issuance(user, now) {
            return Reply::rate_limited(retry_after, "too many codes for this user");
        }
        let life = &self.config.lifecycle;
        let code = Self::sms_code_spec(&self.config).generate(rng);
        let text = code_text("confirm code", &code, life.token_ttl);
        {
            // Kept before it is sent, so the table's bound holds however
            // many start at once. A new start replaces the user's earlier
            // code.
            let mut pending = self.tokens.lock();
            if !pending.numbers.contains_key(user) && pending.len() >= self.tokens.capacity {
                return self.tokens_full();
            }
            pending.numbers.insert(
                user.clone(),
                PendingNumber {
                    number: number.clone(),
                    code,
                    expires_at: now.plus(life.token_ttl),
                    attempts_left: life.token_attempts,
                },
            );
        }
        if let Err(refusal) = self.send_token(number, text, now, rng) {
            self.tokens.lock().numbers.remove(user);
            return refusal;
        }
        Reply::VerificationSent {
            expires_in: life.token_ttl,
        }
    }

    pub(super) fn confirm_phone<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        given: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let number = {
            let mut pending = self.tokens.lock();
            let Some(entry) = pending.numbers.get_mut(user) else {
                return Reply::error(
                    ErrorCode::NotFound,
                    "no phone verification is under way for this user",
                );
            };
            let checked = check_token(
                &entry.code,
                entry.expires_at,
                &mut entry.attempts_left,
                given,
                now,
            );
            let spent = checked.used_up().then(|| pending.numbers.remove(user));
            if let Some(refusal) = checked.refusal() {
                return refusal;
            }
            spent.flatten().map(|p| p.number)
        };
        let Some(number) = number else {
            return Reply::error(ErrorCode::Internal, "the verification vanished");
        };
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let has_device = c
                .registry()
                .devices_of(user)
                .iter()
                .any(|d| d.usable_at(now));
            let mut record = c.registry().user(user);
            record.number = Some(number.clone());
            c.set_user(user, record)?;
            c.audit("confirm-phone", Some(user), None, "number on record")?;
            if has_device {
                Ok::<_, EnrollError>(None)
            } else {
                c.add_phone(user, number, "SMS").map(Some)
            }
        });
        match changed {
            Ok(sms_device) => Reply::PhoneConfirmed { sms_device },
            Err(error) => super::enroll_error(error),
        }
    }

    pub(super) fn start_activation<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        let life = &self.config.lifecycle;
        // A physical device the user holds proves the activation instead of
        // an SMS token: the strongest one, whose challenge the user answers.
        let physical = self
            .login_devices(user, now)
            .into_iter()
            .filter(|d| d.kind.is_physical())
            .max_by_key(|d| self.config.devices.get(d.kind).security);
        let mut persist = None;
        let (proof, route, expires_in, sms) = match physical {
            Some(device) => {
                // A code card is the lowest level: one observed card login
                // must not be enough to bind an app of a higher level (and
                // revoke the owner's), so the SMS token is needed as well.
                let lowest = self.config.devices.get(device.kind).security <= SecurityLevel::Lowest;
                let number = match (lowest, self.number_on_record(user)) {
                    (false, _) => None,
                    (true, Some(number)) => Some(number),
                    (true, None) => {
                        return Reply::error(
                            ErrorCode::NoVerifiedNumber,
                            "a code card alone cannot activate IB Key: \
                             a number on record is needed as well",
                        )
                        .into();
                    }
                };
                let asked = self.challenge(user, device.id, now, rng);
                persist = asked.persist;
                let Reply::Challenge {
                    challenge,
                    text,
                    expires_in,
                } = asked.reply
                else {
                    return asked;
                };
                let expires_in = expires_in.min(life.token_ttl);
                let (code, sms, route) = match number {
                    Some(number) => {
                        let code = Self::sms_code_spec(&self.config).generate(rng);
                        let sent = code_text("IB Key activation code", &code, expires_in);
                        let route = ActivationRoute::DeviceAndSms {
                            device: device.id,
                            text,
                        };
                        (Some(code), Some((number, sent)), route)
                    }
                    None => {
                        let route = ActivationRoute::Device {
                            device: device.id,
                            text,
                        };
                        (None, None, route)
                    }
                };
                let proof = Proof::Device {
                    device: device.id,
                    challenge,
                    sms: code,
                };
                (proof, route, expires_in, sms)
            }
            None => {
                let Some(number) = self.number_on_record(user) else {
                    return Reply::error(
                        ErrorCode::NoVerifiedNumber,
                        "no number on record and no physical device: \
                         the operator can issue temporary access",
                    )
                    .into();
                };
                if let Decision::Deny { retry_after } = self.issuance(user, now) {
                    return Reply::rate_limited(retry_after, "too many codes for this user").into();
                }
                let code = Self::sms_code_spec(&self.config).generate(rng);
                let text = code_text("IB Key activation code", &code, life.token_ttl);
                let sms = Some((number, text));
                (Proof::Sms(code), ActivationRoute::Sms, life.token_ttl, sms)
            }
        };
        // Whatever is answered carries the failure a late challenge cost.
        let answer = |reply: Reply| Outcome { reply, persist };
        let activation = {
            // Kept before the token is sent, so the bound holds however
            // many start at once.
            let mut pending = self.tokens.lock();
            if pending.len() >= self.tokens.capacity {
                return answer(self.tokens_full());
            }
            let mut activation = ActivationId(rng.next_u64());
            while pending.activations.contains_key(&activation) {
                activation = ActivationId(rng.next_u64());
            }
            pending.activations.insert(
                activation,
                PendingActivation {
                    user: user.clone(),
                    proof,
                    expires_at: now.plus(expires_in),
                    attempts_left: life.token_attempts,
                },
            );
            activation
        };
        if let Some((number, text)) = sms
            && let Err(refusal) = self.send_token(number, text, now, rng)
        {
            self.tokens.lock().activations.remove(&activation);
            return answer(refusal);
        }
        answer(Reply::ActivationStarted {
            activation,
            route,
            expires_in,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_activation<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        activation: ActivationId,
        token: &Answer,
        sms_token: Option<&Answer>,
        key: PushKey,
        pin: &Pin,
        previous: Option<(DeviceId, Signature)>,
        now: Timestamp,
        rng: &mut R,
    ) -> Outcome {
        let (user, device_proof) = {
            let pending = self.tokens.lock();
            match pending.activations.get(&activation) {
                Some(p) => (
                    p.user.clone(),
                    match p.proof {
                        Proof::Device {
                            device, challenge, ..
                        } => Some((device, challenge)),
                        Proof::Sms(_) => None,
                    },
                ),
                None => {
                    return Reply::error(ErrorCode::NotFound, "no such activation under way")
                        .into();
                }
            }
        };
        // The token first: nothing about the user (the PIN rules look at
        // the number on record) is judged for a caller who has not proven
        // it received the token, and every wrong one spends an attempt.
        let (mut outcome, route) = match device_proof {
            Some((device, challenge)) => {
                // Beside a code card, the SMS token first: an observed card
                // answer alone proves nothing.
                if let Err(refusal) = self.check_sms_token(activation, sms_token, now) {
                    return refusal.into();
                }
                let outcome = self.verify(challenge, token, now, rng);
                match &outcome.reply {
                    Reply::Verdict(Verdict::Accepted { device: d, .. }) if *d == device => {}
                    _ => return outcome,
                }
                // The challenge accepts once, so only one completion gets
                // here; whatever is refused below starts over (no SMS).
                self.tokens.lock().activations.remove(&activation);
                (outcome, format!("by device {device}"))
            }
            None => {
                if let Err(refusal) = self.check_sms_token(activation, Some(token), now) {
                    return refusal.into();
                }
                (Outcome::from(Reply::Done), "by SMS token".to_owned())
            }
        };
        // Then the PIN rules and the old binding. A refusal here spends an
        // attempt of an SMS token (a weak PIN may be chosen again, a few
        // times, without a new SMS).
        let judged = check_app_pin(pin.as_str(), &phone_digits(self, &user))
            .map_err(|rule| Reply::Refused {
                reason: Refusal::WeakPin,
                message: rule.to_string(),
            })
            .and_then(|()| match previous {
                Some((old, proof)) => self.old_binding(&user, old, activation, &proof).map(Some),
                None => Ok(None),
            });
        let mut pending = self.tokens.lock();
        let reactivated = match judged {
            Ok(reactivated) => reactivated,
            Err(refusal) => {
                if let Some(entry) = pending.activations.get_mut(&activation) {
                    entry.attempts_left = entry.attempts_left.saturating_sub(1);
                    if entry.attempts_left == 0 {
                        pending.activations.remove(&activation);
                    }
                }
                return refusal.into();
            }
        };
        // Single use: of completions racing with the right token, the one
        // that takes it binds.
        if device_proof.is_none() && pending.activations.remove(&activation).is_none() {
            return Reply::error(ErrorCode::NotFound, "no such activation under way").into();
        }
        drop(pending);
        outcome.reply = self.bind_app(caller, &user, key, reactivated, &route, now, rng);
        outcome
    }

    /// Checks the SMS token of `activation` (its only proof, or the one
    /// beside a code card; nothing to check otherwise) in constant time. A
    /// wrong or missing token spends an attempt; the last one ends the
    /// activation.
    fn check_sms_token(
        &self,
        activation: ActivationId,
        given: Option<&Answer>,
        now: Timestamp,
    ) -> Result<(), Reply> {
        let mut pending = self.tokens.lock();
        let Some(PendingActivation {
            proof,
            expires_at,
            attempts_left,
            ..
        }) = pending.activations.get_mut(&activation)
        else {
            return Err(Reply::error(
                ErrorCode::NotFound,
                "no such activation under way",
            ));
        };
        let (Proof::Sms(code)
        | Proof::Device {
            sms: Some(code), ..
        }) = proof
        else {
            return Ok(());
        };
        let missing = Answer::new("");
        let checked = check_token(
            code,
            *expires_at,
            attempts_left,
            given.unwrap_or(&missing),
            now,
        );
        if checked.used_up() && !matches!(checked, Checked::Right) {
            pending.activations.remove(&activation);
        }
        checked.refusal().map_or(Ok(()), Err)
    }

    /// The user's IB Key device `old`, if `proof` is its key's signature
    /// over this activation.
    fn old_binding(
        &self,
        user: &Username,
        old: DeviceId,
        activation: ActivationId,
        proof: &Signature,
    ) -> Result<DeviceId, Reply> {
        let device = self
            .registry
            .device(old)
            .filter(|d| &d.user == user && d.kind == DeviceKind::IbKey);
        let verifies = device
            .as_ref()
            .and_then(|d| d.push_key())
            .is_some_and(|key| key.verifies(&reactivate_message(activation, old), proof));
        if verifies {
            Ok(old)
        } else {
            Err(Reply::error(
                ErrorCode::Forbidden,
                "the proof of the old binding does not verify",
            ))
        }
    }

    /// Enrols the app as the user's IB Key and retires every other IB Key
    /// binding of that user, in one change: one active phone per user.
    #[allow(clippy::too_many_arguments)]
    fn bind_app<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        key: PushKey,
        reactivated: Option<DeviceId>,
        route: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            // Read inside the change: two activations of one user at once
            // still leave one phone.
            let old: Vec<Arc<Device>> = c
                .registry()
                .devices_of(user)
                .into_iter()
                .filter(|d| d.kind == DeviceKind::IbKey)
                .collect();
            let (device, secret) = c.enroll(NewDevice {
                user,
                kind: DeviceKind::IbKey,
                secret: None,
                pin: None,
                label: "IB Key",
            })?;
            c.set_push_key(device, key)?;
            let what = match reactivated {
                Some(old) => format!("{route}, reactivating device {old} (same phone)"),
                None => route.to_owned(),
            };
            c.audit("activate-ib-key", Some(user), Some(device), what)?;
            for d in &old {
                c.remove_device(d.id)?;
                c.audit(
                    "deactivate-ib-key",
                    Some(user),
                    Some(d.id),
                    format!("replaced by device {device}"),
                )?;
            }
            Ok::<_, EnrollError>((device, secret, old.first().map(|d| d.id)))
        });
        match changed {
            Ok((device, Some(secret), replaced)) => {
                tracing::info!(%user, %device, "IB Key activated");
                Reply::Activated {
                    user: user.clone(),
                    device,
                    secret,
                    replaced,
                }
            }
            Ok((_, None, _)) => Reply::error(ErrorCode::Internal, "no key was generated"),
            Err(error) => super::enroll_error(error),
        }
    }
}
