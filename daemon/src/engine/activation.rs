//! Phone numbers and IB Key activation: adding a number with a confirm
//! code sent by SMS, and binding the phone app to a user with an activation
//! token sent by SMS to the number on record (or the answer of the user's
//! physical device instead). Written once over [`Node`]: the same flows on
//! one node and on a cluster.
//!
//! Tokens are short-lived (`lifecycle.token-ttl`), single-use,
//! attempt-limited (`lifecycle.token-attempts`) and, on one node, kept in
//! memory and bounded in number (`lifecycle.token-capacity`; a restart
//! loses them, which only means the user asks for a new one); on a cluster
//! they are records of the user's slot, sealed, kept until they expire.
//! What they unlock is written as one registry change with its audit
//! entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::CryptoRng;

use super::node::Node;
use super::sms::code_text;
use super::{Caller, Engine, Outcome};
use crate::clock::Timestamp;
use crate::identity::{ActivationId, DeviceId, Username};
use crate::otp::Code;
use crate::otp::push::{PushKey, Signature, reactivate_message};
use crate::phone::PhoneNumber;
use crate::policy::pin::check_app_pin;
use crate::profile::{DeviceKind, SecurityLevel};
use crate::ratelimit::Decision;
use crate::store::{
    ActivationToken, Device, EnrollError, NewDevice, NumberToken, Store, StoreError, TokenProof,
};
use crate::wire::request::{Answer, Pin};
use crate::wire::{ActivationRoute, ErrorCode, Refusal, Reply, Verdict};

#[derive(Default)]
struct Pending {
    numbers: HashMap<Username, NumberToken>,
    activations: HashMap<ActivationId, ActivationToken>,
}

impl Pending {
    fn len(&self) -> usize {
        self.numbers.len() + self.activations.len()
    }
}

/// The confirm codes and activation tokens waiting for an answer on one
/// node.
pub(super) struct TokenTable {
    pending: Mutex<Pending>,
    capacity: AtomicUsize,
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
            capacity: AtomicUsize::new(capacity),
        }
    }

    /// Holds at most `capacity` tokens from now on.
    pub(super) fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
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

    /// Changes the number `user` is adding under the table's lock; `None`
    /// (nothing changed) when a new one would pass the table's bound.
    pub(super) fn change_number<T>(
        &self,
        user: &Username,
        mut decide: impl FnMut(&mut Option<NumberToken>) -> T,
    ) -> Option<T> {
        let mut pending = self.lock();
        let mut slot = pending.numbers.get(user).cloned();
        let existed = slot.is_some();
        let answer = decide(&mut slot);
        match slot {
            Some(_) if !existed && pending.len() >= self.capacity() => return None,
            Some(token) => {
                pending.numbers.insert(user.clone(), token);
            }
            None => {
                pending.numbers.remove(user);
            }
        }
        Some(answer)
    }

    /// Keeps a new activation under a fresh id; `None` when the table is
    /// at its bound.
    pub(super) fn start_activation<R: CryptoRng + ?Sized>(
        &self,
        token: ActivationToken,
        rng: &mut R,
    ) -> Option<ActivationId> {
        let mut pending = self.lock();
        if pending.len() >= self.capacity() {
            return None;
        }
        let mut id = ActivationId(rng.next_u64());
        while pending.activations.contains_key(&id) {
            id = ActivationId(rng.next_u64());
        }
        pending.activations.insert(id, token);
        Some(id)
    }

    /// Changes an activation under the table's lock.
    pub(super) fn change_activation<T>(
        &self,
        id: ActivationId,
        mut decide: impl FnMut(&mut Option<ActivationToken>) -> T,
    ) -> T {
        let mut pending = self.lock();
        let mut slot = pending.activations.get(&id).cloned();
        let answer = decide(&mut slot);
        match slot {
            Some(token) => {
                pending.activations.insert(id, token);
            }
            None => {
                pending.activations.remove(&id);
            }
        }
        answer
    }
}

/// The digits of every number `user` has on record, for the PIN rule.
async fn phone_digits<S: Store>(store: &S, user: &Username) -> Result<Vec<String>, StoreError> {
    let view = store.user_view(user).await?;
    Ok(view
        .account
        .number
        .iter()
        .chain(view.devices.iter().filter_map(|(d, _)| d.phone()))
        .map(|n| format!("{}{}", n.country(), n.national()))
        .collect())
}

/// The number sls sends activation tokens to: the confirmed one, or the
/// user's SMS device's.
async fn number_on_record<S: Store>(
    store: &S,
    user: &Username,
) -> Result<Option<PhoneNumber>, StoreError> {
    let view = store.user_view(user).await?;
    Ok(view
        .account
        .number
        .or_else(|| view.devices.iter().find_map(|(d, _)| d.phone().cloned())))
}

fn tokens_full() -> Reply {
    Reply::error(ErrorCode::Busy, "the activation token table is full")
}

fn no_activation() -> Reply {
    Reply::error(ErrorCode::NotFound, "no such activation under way")
}

impl Engine {
    /// Sends `text` to `to` by SMS through this node's carrier bridges,
    /// within the per-number and per-country limits that keep SMS pumping
    /// away.
    pub(super) fn send_token<R: CryptoRng + ?Sized>(
        &self,
        to: PhoneNumber,
        text: zeroize::Zeroizing<String>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<(), Reply> {
        use super::relay::{DispatchError, Outbound};
        if self.outbox.bridges() == 0 {
            return Err(Reply::error(
                ErrorCode::DeliveryUnavailable,
                "no carrier bridge is connected",
            ));
        }
        self.send_quota(&to, now)?;
        let outbound = Outbound {
            // Not an SMS login code: no `CodeStatus` follows it.
            code: crate::identity::CodeId(rng.next_u64()),
            to,
            channel: crate::phone::Channel::Sms,
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

    pub(super) async fn start_phone_verification<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        user: &Username,
        number: PhoneNumber,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        if let Decision::Deny { retry_after } = node.issuance(user, now).await? {
            return Ok(Reply::rate_limited(
                retry_after,
                "too many codes for this user",
            ));
        }
        let life = &self.config().lifecycle;
        let code = Self::sms_code_spec(&self.config()).generate(rng);
        let text = code_text("confirm code", &code, life.token_ttl);
        // Kept before it is sent, so the bound holds however many start at
        // once. A new start replaces the user's earlier code.
        let token = NumberToken {
            number: number.clone(),
            code,
            expires_at: now.plus(life.token_ttl),
            attempts_left: life.token_attempts,
        };
        let kept = node
            .change_number(user, now, rng, |slot| *slot = Some(token.clone()))
            .await?;
        if kept.is_none() {
            return Ok(tokens_full());
        }
        if let Err(refusal) = node.send_sms(number, text, now, rng).await? {
            node.change_number(user, now, rng, |slot| *slot = None)
                .await?;
            return Ok(refusal);
        }
        Ok(Reply::VerificationSent {
            expires_in: life.token_ttl,
        })
    }

    pub(super) async fn confirm_phone<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        caller: &Caller<'_>,
        user: &Username,
        given: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let checked = node
            .change_number(user, now, rng, |slot| {
                let Some(entry) = slot.as_mut() else {
                    return Err(Reply::error(
                        ErrorCode::NotFound,
                        "no phone verification is under way for this user",
                    ));
                };
                let checked = check_token(
                    &entry.code,
                    entry.expires_at,
                    &mut entry.attempts_left,
                    given,
                    now,
                );
                let number = entry.number.clone();
                if checked.used_up() {
                    *slot = None;
                }
                checked.refusal().map_or(Ok(number), Err)
            })
            .await?;
        let number = match checked {
            Some(Ok(number)) => number,
            Some(Err(refusal)) => return Ok(refusal),
            None => return Ok(tokens_full()),
        };
        let changed = node
            .store()
            .change(user, Self::actor(caller), now, rng, |c| {
                let has_device = c
                    .devices(user)?
                    .iter()
                    .any(|d| !d.expired_at(now) && c.life(d.id).allows_use(now));
                let mut record = c.account(user)?;
                record.number = Some(number.clone());
                c.set_user(user, record)?;
                c.audit("confirm-phone", Some(user), None, "number on record".into())?;
                if has_device {
                    Ok::<_, EnrollError>(None)
                } else {
                    c.add_phone(user, number.clone(), "SMS").map(Some)
                }
            })
            .await;
        Ok(match changed {
            Ok(sms_device) => Reply::PhoneConfirmed { sms_device },
            Err(error) => super::enrolment::enroll_error(error),
        })
    }

    pub(super) async fn start_activation<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        let life = &self.config().lifecycle;
        // A physical device the user holds proves the activation instead of
        // an SMS token: the strongest one, whose challenge the user answers.
        let physical = node
            .login_devices(user, now)
            .await?
            .into_iter()
            .filter(|d| d.kind.is_physical())
            .max_by_key(|d| self.config().devices.get(d.kind).security);
        let mut persist = None;
        let (proof, route, expires_in, sms) = match physical {
            Some(device) => {
                // A code card is the lowest level: one observed card login
                // must not be enough to bind an app of a higher level (and
                // revoke the owner's), so the SMS token is needed as well.
                let lowest =
                    self.config().devices.get(device.kind).security <= SecurityLevel::Lowest;
                let number = if lowest {
                    match number_on_record(node.store(), user).await? {
                        Some(number) => Some(number),
                        None => {
                            return Ok(Reply::error(
                                ErrorCode::NoVerifiedNumber,
                                "a code card alone cannot activate IB Key: \
                                 a number on record is needed as well",
                            )
                            .into());
                        }
                    }
                } else {
                    None
                };
                let asked = node.challenge(user, device.id, now, rng).await?;
                persist = asked.persist;
                let Reply::Challenge {
                    challenge,
                    text,
                    expires_in,
                } = asked.reply
                else {
                    return Ok(asked);
                };
                let expires_in = expires_in.min(life.token_ttl);
                let (code, sms, route) = match number {
                    Some(number) => {
                        let code = Self::sms_code_spec(&self.config()).generate(rng);
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
                let proof = TokenProof::Device {
                    device: device.id,
                    challenge,
                    sms: code,
                };
                (proof, route, expires_in, sms)
            }
            None => {
                let Some(number) = number_on_record(node.store(), user).await? else {
                    return Ok(Reply::error(
                        ErrorCode::NoVerifiedNumber,
                        "no number on record and no physical device: \
                         the operator can issue temporary access",
                    )
                    .into());
                };
                if let Decision::Deny { retry_after } = node.issuance(user, now).await? {
                    let refusal = Reply::rate_limited(retry_after, "too many codes for this user");
                    return Ok(refusal.into());
                }
                let code = Self::sms_code_spec(&self.config()).generate(rng);
                let text = code_text("IB Key activation code", &code, life.token_ttl);
                let sms = Some((number, text));
                (
                    TokenProof::Sms(code),
                    ActivationRoute::Sms,
                    life.token_ttl,
                    sms,
                )
            }
        };
        // Whatever is answered carries the failure a late challenge cost.
        let answer = |reply: Reply| Outcome {
            reply,
            persist,
            booking: None,
        };
        // Kept before the token is sent, so the bound holds however many
        // start at once.
        let token = ActivationToken {
            user: user.clone(),
            proof,
            expires_at: now.plus(expires_in),
            attempts_left: life.token_attempts,
        };
        let Some(activation) = node.start_activation(token, now, rng).await? else {
            return Ok(answer(tokens_full()));
        };
        if let Some((number, text)) = sms
            && let Err(refusal) = node.send_sms(number, text, now, rng).await?
        {
            node.change_activation(activation, now, rng, |slot| *slot = None)
                .await?;
            return Ok(answer(refusal));
        }
        Ok(answer(Reply::ActivationStarted {
            activation,
            route,
            expires_in,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn complete_activation<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        caller: &Caller<'_>,
        activation: ActivationId,
        token: &Answer,
        sms_token: Option<&Answer>,
        key: PushKey,
        pin: &Pin,
        previous: Option<(DeviceId, Signature)>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        let found = node
            .change_activation(activation, now, rng, |slot| {
                slot.as_ref().map(|p| {
                    let device_proof = match p.proof {
                        TokenProof::Device {
                            device, challenge, ..
                        } => Some((device, challenge)),
                        TokenProof::Sms(_) => None,
                    };
                    (p.user.clone(), device_proof)
                })
            })
            .await?;
        let Some((user, device_proof)) = found else {
            return Ok(no_activation().into());
        };
        // The token first: nothing about the user (the PIN rules look at
        // the number on record) is judged for a caller who has not proven
        // it received the token, and every wrong one spends an attempt.
        let (mut outcome, route) = match device_proof {
            Some((device, challenge)) => {
                // Beside a code card, the SMS token first: an observed card
                // answer alone proves nothing.
                let checked = self
                    .check_sms_token(node, activation, sms_token, now, rng)
                    .await?;
                if let Err(refusal) = checked {
                    return Ok(refusal.into());
                }
                let outcome = node.verify(challenge, token, None, now, rng).await?;
                match &outcome.reply {
                    Reply::Verdict(Verdict::Accepted { device: d, .. }) if *d == device => {}
                    _ => return Ok(outcome),
                }
                // The challenge accepts once, so only one completion gets
                // here; whatever is refused below starts over (no SMS).
                node.change_activation(activation, now, rng, |slot| *slot = None)
                    .await?;
                (outcome, format!("by device {device}"))
            }
            None => {
                let checked = self
                    .check_sms_token(node, activation, Some(token), now, rng)
                    .await?;
                if let Err(refusal) = checked {
                    return Ok(refusal.into());
                }
                (Outcome::from(Reply::Done), "by SMS token".to_owned())
            }
        };
        // Then the PIN rules and the old binding. A refusal here spends an
        // attempt of an SMS token (a weak PIN may be chosen again, a few
        // times, without a new SMS).
        let digits = phone_digits(node.store(), &user).await?;
        let judged = match check_app_pin(pin.as_str(), &digits) {
            Err(rule) => Err(Reply::Refused {
                reason: Refusal::WeakPin,
                message: rule.to_string(),
            }),
            Ok(()) => match previous {
                Some((old, proof)) => {
                    let old = old_binding(node.store(), &user, old, activation, &proof).await?;
                    old.map(Some)
                }
                None => Ok(None),
            },
        };
        // Single use: of completions racing with the right token, the one
        // that takes it binds.
        let by_sms = device_proof.is_none();
        let taken = node
            .change_activation(activation, now, rng, |slot| {
                match (&judged, slot.as_mut()) {
                    (Err(_), Some(entry)) => {
                        entry.attempts_left = entry.attempts_left.saturating_sub(1);
                        if entry.attempts_left == 0 {
                            *slot = None;
                        }
                        false
                    }
                    (Err(_), None) => false,
                    (Ok(_), _) if by_sms => slot.take().is_some(),
                    (Ok(_), _) => true,
                }
            })
            .await?;
        let reactivated = match judged {
            Ok(reactivated) => reactivated,
            Err(refusal) => return Ok(refusal.into()),
        };
        if !taken {
            return Ok(no_activation().into());
        }
        outcome.reply = self
            .bind_app(
                node.store(),
                caller,
                &user,
                key,
                reactivated,
                &route,
                now,
                rng,
            )
            .await;
        Ok(outcome)
    }

    /// Checks the SMS token of `activation` (its only proof, or the one
    /// beside a code card; nothing to check otherwise) in constant time. A
    /// wrong or missing token spends an attempt; the last one ends the
    /// activation.
    async fn check_sms_token<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        activation: ActivationId,
        given: Option<&Answer>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Result<(), Reply>, StoreError> {
        let missing = Answer::new("");
        node.change_activation(activation, now, rng, |slot| {
            let Some(entry) = slot.as_mut() else {
                return Err(no_activation());
            };
            let (TokenProof::Sms(code)
            | TokenProof::Device {
                sms: Some(code), ..
            }) = &entry.proof
            else {
                return Ok(());
            };
            let checked = check_token(
                code,
                entry.expires_at,
                &mut entry.attempts_left,
                given.unwrap_or(&missing),
                now,
            );
            if checked.used_up() && !matches!(checked, Checked::Right) {
                *slot = None;
            }
            checked.refusal().map_or(Ok(()), Err)
        })
        .await
    }

    /// Enrols the app as the user's IB Key and retires every other IB Key
    /// binding of that user, in one change: one active phone per user.
    #[allow(clippy::too_many_arguments)]
    async fn bind_app<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        key: PushKey,
        reactivated: Option<DeviceId>,
        route: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let changed = store
            .change(user, Self::actor(caller), now, rng, |c| {
                // Read inside the change: two activations of one user at
                // once still leave one phone.
                let old: Vec<Arc<Device>> = c
                    .devices(user)?
                    .into_iter()
                    .filter(|d| d.kind == DeviceKind::IbKey)
                    .collect();
                let (device, secret) = c.enroll(NewDevice {
                    user,
                    kind: DeviceKind::IbKey,
                    secret: None,
                    pin: None,
                    label: "IB Key",
                    token: None,
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
            })
            .await;
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
            Err(error) => super::enrolment::enroll_error(error),
        }
    }
}

/// The user's IB Key device `old`, if `proof` is its key's signature over
/// this activation.
async fn old_binding<S: Store>(
    store: &S,
    user: &Username,
    old: DeviceId,
    activation: ActivationId,
    proof: &Signature,
) -> Result<Result<DeviceId, Reply>, StoreError> {
    let device = store
        .device(old)
        .await?
        .filter(|d| &d.user == user && d.kind == DeviceKind::IbKey);
    let verifies = device
        .as_ref()
        .and_then(|d| d.push_key())
        .is_some_and(|key| key.verifies(&reactivate_message(activation, old), proof));
    Ok(if verifies {
        Ok(old)
    } else {
        Err(Reply::error(
            ErrorCode::Forbidden,
            "the proof of the old binding does not verify",
        ))
    })
}
