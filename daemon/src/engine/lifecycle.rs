//! The device lifecycle of the Secure Login System on the embedded store:
//! identification and opt-out, device shares, temporary codes, replacement
//! cards, withdrawal limits and the audit log.
//!
//! The rules are `policy`'s; this module reads what they judge from the
//! registry and writes the outcome as one `Registry::change` (committed,
//! with its audit entry, before the reply).

use std::sync::Arc;

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, ShareId, Username};
use crate::policy::calendar::Day;
use crate::policy::sharing::{Participant, ShareRefusal, check_share};
use crate::policy::withdrawal::{Withdrawn, headroom, kinds_that_allow};
use crate::profile::{DeviceKind, SecurityLevel};
use crate::store::{Account, Activation, Actor, DeviceLife, Share, ShareState};
use crate::store::{Device, EnrollError, NewDevice, StoreError};
use crate::wire::request::{Answer, Identification, Page, Pin};
use crate::wire::{
    DeviceEntry, DeviceStatus, ErrorCode, PendingActivation, Refusal, Reply, ShareEntry, Verdict,
};

/// The reply to a registry change that failed in the store.
fn store_failed(error: &StoreError) -> Reply {
    tracing::error!(%error, "registry change failed");
    Reply::error(
        ErrorCode::Internal,
        "the registry could not store the change",
    )
}

impl From<StoreError> for Reply {
    fn from(error: StoreError) -> Self {
        store_failed(&error)
    }
}

impl Engine {
    /// Who a caller is in the audit log.
    pub(super) fn actor(caller: &Caller<'_>) -> Actor {
        Actor(caller.role.as_str())
    }

    /// The active share through which `user` uses another user's device.
    fn active_share_of(&self, user: &Username) -> Option<Share> {
        self.registry.active_share_of(user)
    }

    /// The devices `user` may log in with at `now`: their own usable ones,
    /// or, while they use a shared device, that device instead.
    pub(super) fn login_devices(&self, user: &Username, now: Timestamp) -> Vec<Arc<Device>> {
        match self.active_share_of(user) {
            Some(share) => self
                .registry
                .device(share.device)
                .filter(|d| d.usable_at(now))
                .into_iter()
                .collect(),
            None => self
                .registry
                .devices_of(user)
                .into_iter()
                .filter(|d| d.usable_at(now))
                .collect(),
        }
    }

    /// `device` if `user` may log in with it at `now` (what
    /// `login_devices` would list, without listing: the login path).
    pub(super) fn login_device(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
    ) -> Option<Arc<Device>> {
        let allowed = |d: &Device| match self.active_share_of(user) {
            Some(share) => share.device == d.id,
            None => &d.user == user,
        };
        self.registry
            .device(device)
            .filter(|d| allowed(d) && d.usable_at(now))
    }

    /// The answer to `Devices` (a login: usable devices only) and
    /// `ListDevices` (an operator, `Some(page)`: every device with its
    /// status, a page at a time by device id).
    pub(super) fn device_list(&self, user: &Username, now: Timestamp, page: Option<Page>) -> Reply {
        let required = !self.registry.user(user).opted_out;
        let share = self.active_share_of(user);
        let entry = |d: &Device, status, owner: Option<Username>| DeviceEntry {
            device: d.id,
            kind: d.kind,
            label: d.label.clone(),
            locked_for: d.failures().locked_for(now),
            status,
            owner,
        };
        let mut devices = Vec::new();
        if let Some(page) = page {
            for d in self.registry.devices_of(user) {
                let status = match d.life().activation {
                    _ if d.expired_at(now) || d.life().uses_left == Some(0) => {
                        DeviceStatus::Expired
                    }
                    Activation::Ordered { .. } => DeviceStatus::Ordered,
                    Activation::Shipped { activates_at, .. } if activates_at > now => {
                        DeviceStatus::Shipped { activates_at }
                    }
                    _ if share.is_some() => DeviceStatus::Suspended,
                    _ => DeviceStatus::Active,
                };
                devices.push(entry(&d, status, None));
            }
            if let Some(shared) = share.as_ref().and_then(|s| self.registry.device(s.device)) {
                devices.push(entry(
                    &shared,
                    DeviceStatus::Active,
                    Some(shared.user.clone()),
                ));
            }
            devices = page.select(devices, |d| d.device.0);
        } else {
            for d in self.login_devices(user, now) {
                let owner = (&d.user != user).then(|| d.user.clone());
                devices.push(entry(&d, DeviceStatus::Active, owner));
            }
        }
        Reply::Devices { required, devices }
    }

    /// What an accepted answer does to its device beyond the login: a
    /// temporary code spends a use (none left: the answer comes too late,
    /// `Expired`), a shipped replacement becomes active and retires the
    /// card it replaces. Changes nothing for other devices.
    pub(super) fn after_accept<R: CryptoRng + ?Sized>(
        &self,
        verdict: Verdict,
        now: Timestamp,
        rng: &mut R,
    ) -> Verdict {
        let Verdict::Accepted { device, .. } = &verdict else {
            return verdict;
        };
        let Some(device) = self.registry.device(*device) else {
            return verdict;
        };
        let life = device.life();
        let result = if life.uses_left.is_some() {
            self.registry.change(rng, now, Actor::SYSTEM, |c| {
                let mut life = c
                    .registry()
                    .device(device.id)
                    .map(|d| d.life())
                    .unwrap_or_default();
                match life.uses_left {
                    Some(0) | None => Ok(Verdict::Expired),
                    Some(left) => {
                        life.uses_left = Some(left - 1);
                        c.set_life(device.id, life)?;
                        c.audit(
                            "temporary-code-used",
                            Some(&device.user),
                            Some(device.id),
                            format!("{} uses left", left - 1),
                        )?;
                        Ok::<_, StoreError>(verdict.clone())
                    }
                }
            })
        } else if life.activation != Activation::Active {
            self.registry.change(rng, now, Actor::SYSTEM, |c| {
                activate(c, &device, "activated by its holder")?;
                Ok(verdict.clone())
            })
        } else {
            return verdict;
        };
        result.unwrap_or_else(|error| {
            tracing::error!(%error, "recording an accepted answer failed");
            Verdict::UnknownChallenge
        })
    }

    /// Activates the replacements whose time has come (the server calls it
    /// every second).
    pub fn activate_due<R: CryptoRng + ?Sized>(&self, now: Timestamp, rng: &mut R) -> usize {
        let due: Vec<_> = self
            .registry
            .all_devices()
            .into_iter()
            .filter(|d| matches!(d.life().activation, Activation::Shipped { activates_at, .. } if activates_at <= now))
            .collect();
        let mut activated = 0;
        for device in due {
            let done = self.registry.change(rng, now, Actor::SYSTEM, |c| {
                activate(c, &device, "activated automatically after shipment")
            });
            match done {
                Ok(()) => activated += 1,
                Err(error) => {
                    tracing::error!(%error, device = %device.id, "auto-activation failed")
                }
            }
        }
        activated
    }

    pub(super) fn set_identity<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        identity: &Identification,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let digest = self.registry.identity_digest(identity);
        let residence = match residence_code(identity) {
            Ok(code) => code,
            Err(refusal) => return refusal,
        };
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let record = Account {
                residence: Some(residence),
                identity: Some(digest),
                ..c.registry().user(user)
            };
            c.set_user(user, record)?;
            c.audit(
                "set-identity",
                Some(user),
                None,
                format!("residence {}", identity.residence),
            )
        });
        changed.map_or_else(|e| store_failed(&e), |()| Reply::Done)
    }

    pub(super) fn set_opt_out<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        opted_out: bool,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let record = c.registry().user(user);
            if let Some(refusal) = self.opt_out_refusal(&record, opted_out) {
                return Ok(refusal);
            }
            c.set_user(
                user,
                Account {
                    opted_out,
                    ..record
                },
            )?;
            c.audit(
                if opted_out { "opt-out" } else { "opt-in" },
                Some(user),
                None,
                "",
            )?;
            Ok::<_, StoreError>(Reply::Done)
        });
        changed.unwrap_or_else(|e| store_failed(&e))
    }

    /// The refusal of opting out a user whose residence forbids it
    /// (`lifecycle.opt-out-forbidden`, naming the regulation).
    pub(super) fn opt_out_refusal(&self, record: &Account, opting_out: bool) -> Option<Reply> {
        if !opting_out {
            return None;
        }
        let residence = String::from_utf8_lossy(&record.residence?).into_owned();
        let regulation = self.config.lifecycle.opt_out_forbidden.get(&residence)?;
        Some(Reply::Refused {
            reason: Refusal::OptOutForbidden,
            message: format!(
                "users residing in {residence} cannot opt out of the Secure Login System: {regulation}"
            ),
        })
    }

    /// A participant of a share as the rules see them.
    fn participant(&self, user: &Username, now: Timestamp) -> Participant {
        let devices = self.registry.devices_of(user);
        let level = |d: &Device| self.config.devices.get(d.kind).security;
        Participant {
            identity: self.registry.user(user).identity,
            has_temporary: devices
                .iter()
                .any(|d| level(d) == SecurityLevel::Temporary && d.usable_at(now)),
            physical: devices
                .iter()
                .filter(|d| d.kind.is_physical() && d.usable_at(now))
                .map(|d| level(d))
                .collect(),
        }
    }

    #[allow(clippy::too_many_arguments)] // the operation's fields, as on the wire
    pub(super) fn share_device<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        requester: &Username,
        owner: &Username,
        device: DeviceId,
        challenge: ChallengeId,
        response: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> super::Outcome {
        let Some(shared) = self.registry.device(device).filter(|d| &d.user == owner) else {
            return Reply::error(ErrorCode::NotFound, "no such device for the owner").into();
        };
        if requester == owner {
            return Reply::error(
                ErrorCode::InvalidArgument,
                "a user cannot share with themselves",
            )
            .into();
        }
        // The proof: the device itself answered a challenge opened for it.
        let mut outcome = self.verify(challenge, response, now, rng);
        match &outcome.reply {
            Reply::Verdict(Verdict::Accepted {
                user, device: d, ..
            }) if user == owner && *d == device => {}
            Reply::Verdict(Verdict::Accepted { .. }) => {
                outcome.reply = Reply::error(
                    ErrorCode::InvalidArgument,
                    "the challenge was not opened for this owner and device",
                );
                return outcome;
            }
            _ => return outcome,
        }
        let level = self.config.devices.get(shared.kind).security;
        let checked = check_share(
            shared.kind,
            level,
            &self.participant(requester, now),
            &self.participant(owner, now),
        );
        if let Err(refusal) = checked {
            outcome.reply = Reply::Refused {
                reason: match refusal {
                    ShareRefusal::DifferentIdentification => Refusal::DifferentIdentification,
                    ShareRefusal::LessSecureDevice => Refusal::LessSecureDevice,
                    ShareRefusal::TemporaryDevice => Refusal::TemporaryDevice,
                    ShareRefusal::NotShareable => Refusal::NotShareable,
                },
                message: refusal.to_string(),
            };
            return outcome;
        }
        let id = ShareId(rng.next_u64());
        let active = !self.config.lifecycle.share_needs_approval;
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            if c.registry()
                .shares()
                .iter()
                .any(|s| &s.requester == requester)
            {
                return Ok(Reply::error(
                    ErrorCode::InvalidArgument,
                    "the requesting user already has a share; cancel it first",
                ));
            }
            c.set_share(Share {
                id,
                requester: requester.clone(),
                owner: owner.clone(),
                device,
                state: if active {
                    ShareState::Active
                } else {
                    ShareState::Pending
                },
                created: now,
            })?;
            let action = if active {
                "share-active"
            } else {
                "share-pending"
            };
            c.audit(
                action,
                Some(requester),
                Some(device),
                format!("owner {owner}, share {id}"),
            )?;
            Ok::<_, StoreError>(Reply::Share { share: id, active })
        });
        outcome.reply = changed.unwrap_or_else(|e| store_failed(&e));
        outcome
    }

    pub(super) fn decide_share<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        id: ShareId,
        approve: bool,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let Some(share) = c
                .registry()
                .share(id)
                .filter(|s| s.state == ShareState::Pending)
            else {
                return Ok(Reply::error(ErrorCode::NotFound, "no such pending share"));
            };
            let detail = format!("owner {}, share {id}", share.owner);
            let (requester, device) = (share.requester.clone(), share.device);
            if approve {
                c.set_share(Share {
                    state: ShareState::Active,
                    ..share
                })?;
            } else {
                c.remove_share(id)?;
            }
            let action = if approve {
                "share-approved"
            } else {
                "share-rejected"
            };
            c.audit(action, Some(&requester), Some(device), detail)?;
            Ok::<_, StoreError>(Reply::Share {
                share: id,
                active: approve,
            })
        });
        changed.unwrap_or_else(|e| store_failed(&e))
    }

    pub(super) fn cancel_share<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        id: ShareId,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let Some(share) = c.registry().share(id) else {
                return Ok(Reply::error(ErrorCode::NotFound, "no such share"));
            };
            c.remove_share(id)?;
            c.audit(
                "share-cancelled",
                Some(&share.requester),
                Some(share.device),
                format!("owner {}, share {id}", share.owner),
            )?;
            Ok::<_, StoreError>(Reply::Done)
        });
        changed.unwrap_or_else(|e| store_failed(&e))
    }

    pub(super) fn list_shares(&self, page: Page) -> Reply {
        let shares = self
            .registry
            .shares()
            .into_iter()
            .map(|s| ShareEntry {
                share: s.id,
                requesting_user: s.requester,
                owner_user: s.owner,
                device: s.device,
                active: s.state == ShareState::Active,
            })
            .collect();
        Reply::Shares(page.select(shares, |s| s.share.0))
    }

    pub(super) fn issue_temporary_code<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let profile = self.config.devices.get(DeviceKind::Temporary);
        let crate::profile::Check::RandomCode(spec) = &profile.check else {
            return Reply::error(
                ErrorCode::Internal,
                "the temporary profile has no code format",
            );
        };
        let code = spec.generate(rng);
        let Ok(secret) = crate::otp::SecretKey::from_bytes(code.as_str().as_bytes().to_vec())
        else {
            return Reply::error(ErrorCode::Internal, "the temporary code could not be kept");
        };
        let uses = self.config.lifecycle.temporary_code_uses;
        let validity = profile.validity.unwrap_or_default();
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let id = c.add_code(user, DeviceKind::Temporary, secret, "temporary code")?;
            c.set_life(
                id,
                DeviceLife {
                    uses_left: Some(uses),
                    ..DeviceLife::default()
                },
            )?;
            c.audit(
                "issue-temporary-code",
                Some(user),
                Some(id),
                format!("{uses} uses, valid {} s", validity.as_secs()),
            )?;
            Ok::<_, StoreError>(id)
        });
        match changed {
            Ok(device) => Reply::TemporaryCode {
                device,
                code: Answer::new(code.as_str()),
                expires_in: validity,
                uses: u16::try_from(uses).unwrap_or(u16::MAX),
            },
            Err(error) => store_failed(&error),
        }
    }

    pub(super) fn order_replacement<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        lost: DeviceId,
        pin: Option<&Pin>,
        label: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let Some(lost) = self.registry.device(lost) else {
            return Reply::error(ErrorCode::NotFound, "no such device");
        };
        if !lost.kind.is_physical() {
            return Reply::error(
                ErrorCode::InvalidArgument,
                format!(
                    "replacement cards replace physical devices, not {}",
                    lost.kind
                ),
            );
        }
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let (id, secret) = c.enroll(NewDevice {
                user: &lost.user,
                kind: DeviceKind::DscPlus,
                secret: None,
                pin: pin.map(Pin::as_str),
                label,
            })?;
            c.set_life(
                id,
                DeviceLife {
                    activation: Activation::Ordered { replaces: lost.id },
                    ..DeviceLife::default()
                },
            )?;
            c.audit(
                "order-replacement",
                Some(&lost.user),
                Some(id),
                format!("replaces device {}", lost.id),
            )?;
            Ok::<_, EnrollError>(Reply::Enrolled { device: id, secret })
        });
        changed.unwrap_or_else(super::enroll_error)
    }

    pub(super) fn ship_replacement<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        shipped_at: Timestamp,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let after = self.config.lifecycle.replacement_auto_activation;
        let changed = self.registry.change(rng, now, Self::actor(caller), |c| {
            let Some(card) = c.registry().device(device) else {
                return Ok(Reply::error(ErrorCode::NotFound, "no such device"));
            };
            let Activation::Ordered { replaces } = card.life().activation else {
                return Ok(Reply::error(
                    ErrorCode::InvalidArgument,
                    "the device is not a replacement waiting to be shipped",
                ));
            };
            let activates_at = shipped_at.plus(after);
            c.set_life(
                device,
                DeviceLife {
                    activation: Activation::Shipped {
                        replaces,
                        shipped_at,
                        activates_at,
                    },
                    ..card.life()
                },
            )?;
            c.audit(
                "ship-replacement",
                Some(&card.user),
                Some(device),
                format!(
                    "shipped at {}, activates at {}",
                    shipped_at.0, activates_at.0
                ),
            )?;
            Ok::<_, StoreError>(Reply::Done)
        });
        changed.unwrap_or_else(|e| store_failed(&e))
    }

    /// Shipped replacements not yet active, a page at a time by device id.
    pub(super) fn pending_activations(&self, now: Timestamp, page: Page) -> Reply {
        let pending: Vec<_> = self
            .registry
            .all_devices()
            .into_iter()
            .filter_map(|d| match d.life().activation {
                Activation::Shipped {
                    replaces,
                    shipped_at,
                    activates_at,
                } if activates_at > now => Some(PendingActivation {
                    device: d.id,
                    user: d.user.clone(),
                    replaces,
                    shipped_at,
                    activates_at,
                }),
                _ => None,
            })
            .collect();
        Reply::PendingActivations(page.select(pending, |p| p.device.0))
    }

    pub(super) fn audit_log(&self, after: u64, limit: u16) -> Reply {
        match self.registry.audit_log(after, usize::from(limit)) {
            Ok(entries) => Reply::Audit(entries),
            Err(error) => store_failed(&error),
        }
    }

    #[allow(clippy::too_many_arguments)] // the operation's fields, as on the wire
    pub(super) fn authorize_withdrawal<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        amount: u64,
        challenge: ChallengeId,
        response: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> super::Outcome {
        if let Some(refusal) = super::invalid_amount(amount) {
            return refusal.into();
        }
        let mut outcome = self.verify(challenge, response, now, rng);
        let (device, kind) = match withdrawal_device(&outcome.reply, user) {
            Ok(answered) => answered,
            Err(refusal) => {
                if let Some(refusal) = refusal {
                    outcome.reply = refusal;
                }
                return outcome;
            }
        };
        let today = Day::of(now);
        let start = self.config.withdrawals.holidays.window_start(today, 5);
        let keep = self.config.withdrawals.ledger_days;
        let holds: Vec<_> = self
            .registry
            .devices_of(user)
            .iter()
            .map(|d| d.kind)
            .collect();
        let decided = self.registry.change(rng, now, Self::actor(caller), |c| {
            let withdrawn = c.withdrawn(user, start, today)?;
            let decision = self.withdrawal_decision((device, kind), amount, withdrawn, &holds);
            if matches!(decision, Reply::WithdrawalApproved { .. }) {
                c.book_withdrawal(user, today, amount, keep)?;
                c.audit(
                    "withdrawal-approved",
                    Some(user),
                    Some(device),
                    withdrawal_detail(amount, kind, today),
                )?;
            }
            Ok::<_, StoreError>(decision)
        });
        outcome.reply = decided.unwrap_or_else(|e| store_failed(&e));
        outcome
    }

    /// What a withdrawal of `amount` cents confirmed with `device` of
    /// `kind` gets, the user having withdrawn `withdrawn` and holding
    /// devices of the kinds `holds`: approved, with what is left after it,
    /// or over the limit, with what is left and the kinds that would do.
    pub(super) fn withdrawal_decision(
        &self,
        (device, kind): (DeviceId, DeviceKind),
        amount: u64,
        withdrawn: Withdrawn,
        holds: &[DeviceKind],
    ) -> Reply {
        let left = headroom(self.config.devices.get(kind).withdrawal_limit, withdrawn);
        if left.allows(amount) {
            Reply::WithdrawalApproved {
                device,
                kind,
                remaining_today: left.today.map(|l| l - amount),
                remaining_5d: left.five_days.map(|l| l - amount),
            }
        } else {
            Reply::OverLimit {
                device_kind: kind,
                remaining_today: left.today,
                remaining_5d: left.five_days,
                kinds_that_allow: kinds_that_allow(&self.config.devices, withdrawn, amount, holds),
            }
        }
    }
}

/// The residence of identification data as kept: two letters.
pub(super) fn residence_code(identity: &Identification) -> Result<[u8; 2], Reply> {
    identity
        .residence
        .as_bytes()
        .try_into()
        .map_err(|_| Reply::error(ErrorCode::InvalidArgument, "residence must be 2 letters"))
}

/// The device that confirmed a withdrawal for `user`, from the verdict on
/// its answer; otherwise `Err`: the refusal to send instead, or `None` to
/// send the verdict as it is.
pub(super) fn withdrawal_device(
    verdict: &Reply,
    user: &Username,
) -> Result<(DeviceId, DeviceKind), Option<Reply>> {
    match verdict {
        Reply::Verdict(Verdict::Accepted {
            user: answered,
            device,
            kind,
        }) if answered == user => Ok((*device, *kind)),
        Reply::Verdict(Verdict::Accepted { .. }) => Err(Some(Reply::error(
            ErrorCode::InvalidArgument,
            "the challenge was issued for another user",
        ))),
        _ => Err(None),
    }
}

/// The audit detail of an approved withdrawal.
pub(super) fn withdrawal_detail(amount: u64, kind: DeviceKind, day: Day) -> String {
    format!("{amount} cents with {kind} on {}", day.iso())
}

impl Engine {}

/// Makes a replacement active and retires the card it replaces.
fn activate<R: CryptoRng + ?Sized>(
    c: &mut crate::store::embedded::accounts::Change<'_, R>,
    device: &Device,
    how: &str,
) -> Result<(), StoreError> {
    let life = device.life();
    let replaces = match life.activation {
        Activation::Shipped { replaces, .. } | Activation::Ordered { replaces } => replaces,
        Activation::Active => return Ok(()),
    };
    c.set_life(
        device.id,
        DeviceLife {
            activation: Activation::Active,
            ..life
        },
    )?;
    if c.registry().device(replaces).is_some() {
        c.remove_device(replaces)?;
    }
    c.audit(
        "replacement-activated",
        Some(&device.user),
        Some(device.id),
        format!("{how}; device {replaces} retired"),
    )
}
