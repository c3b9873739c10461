//! The device lifecycle of the Secure Login System: identification and
//! opt-out, device shares, temporary codes, replacement cards, withdrawal
//! limits and the audit log.
//!
//! The rules are `policy`'s and `rules::devices`'; the operations that
//! change the registry are written once over [`Store`]: each reads what
//! the rules judge and writes the outcome as one registry change,
//! committed with its audit entries before the reply, on either store.
//! Which devices a login may use on the embedded store (its hot path,
//! read from memory) is here too; the cluster's is in `cluster`.

use std::sync::Arc;

use rand::CryptoRng;

use super::rules::devices::{AfterAccept, after_accept};
use super::{Caller, Engine, rules};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, ShareId, Username};
use crate::policy::calendar::Day;
use crate::policy::sharing::{Participant, ShareRefusal, check_share};
use crate::policy::withdrawal::{Withdrawn, headroom, kinds_that_allow};
use crate::profile::{DeviceKind, SecurityLevel};
use crate::store::embedded::ledger::Booking;
use crate::store::{
    Account, Activation, Actor, DeviceLife, RegistryChange, Share, ShareState, Shipment,
};
use crate::store::{Device, EnrollError, NewDevice, Store, StoreError};
use crate::wire::request::{Answer, Identification, Page, Pin};
use crate::wire::{
    DeviceEntry, DeviceStatus, ErrorCode, PendingActivation, Refusal, Reply, ShareEntry, Verdict,
};

/// The largest amount one withdrawal may ask for, in cents (10 billion
/// USD): far above any limit, and exact in every store's arithmetic
/// (Lua's numbers are doubles).
pub const MAX_WITHDRAWAL_CENTS: u64 = 1_000_000_000_000;

/// The refusal of an amount no withdrawal can have.
pub(super) fn invalid_amount(amount: u64) -> Option<Reply> {
    (amount == 0 || amount > MAX_WITHDRAWAL_CENTS).then(|| {
        Reply::error(
            ErrorCode::InvalidArgument,
            format!("the amount must be 1 to {MAX_WITHDRAWAL_CENTS} cents"),
        )
    })
}

/// The reply to a registry change that failed in the store.
pub(super) fn store_failed(error: &StoreError) -> Reply {
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
        self.login_devices_with(user, self.active_share_of(user).as_ref(), now)
    }

    /// [`Self::login_devices`] given the user's share in effect, if any.
    fn login_devices_with(
        &self,
        user: &Username,
        share: Option<&Share>,
        now: Timestamp,
    ) -> Vec<Arc<Device>> {
        match share {
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
        let required = !self.registry.opted_out(user);
        let share = self.active_share_of(user);
        let entry = |d: &Device, status, owner: Option<Username>| DeviceEntry {
            device: d.id,
            kind: d.kind,
            label: d.label.to_string(),
            locked_for: d.failures().locked_for(now),
            status,
            owner,
        };
        let mut devices = Vec::new();
        if let Some(page) = page {
            for d in self.registry.devices_of(user) {
                let status = rules::devices::status(&d, &d.life(), share.is_some(), now);
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
            for d in self.login_devices_with(user, share.as_ref(), now) {
                let owner = (&d.user != user).then(|| d.user.clone());
                devices.push(entry(&d, DeviceStatus::Active, owner));
            }
        }
        Reply::Devices { required, devices }
    }

    /// What an accepted answer does to its device beyond the login: a
    /// temporary code spends a use (none left: the answer comes too late,
    /// `Expired`), a shipped replacement becomes active and retires the
    /// card it replaces. `life` is the device's state as the caller read
    /// it (nothing to do: no change is made); the change decides on the
    /// state it reads itself. Changes nothing for other devices.
    pub(super) async fn after_accept<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        verdict: Verdict,
        life: &DeviceLife,
        now: Timestamp,
        rng: &mut R,
    ) -> Verdict {
        let Verdict::Accepted { user, device, .. } = &verdict else {
            return verdict;
        };
        if after_accept(life) == AfterAccept::Nothing {
            return verdict;
        }
        let (device, owner) = match store.device(*device).await {
            Ok(Some(found)) => (found.id, found.user.clone()),
            Ok(None) => return verdict,
            Err(error) => return accept_not_recorded(&error),
        };
        let result = store
            .change(&owner, Actor::SYSTEM, now, rng, |c| {
                match after_accept(&c.life(device)) {
                    AfterAccept::Nothing => {}
                    AfterAccept::TooLate => return Ok(Verdict::Expired),
                    AfterAccept::Spend { life, left } => {
                        c.set_life(device, life)?;
                        c.audit(
                            "temporary-code-used",
                            Some(user),
                            Some(device),
                            format!("{left} uses left"),
                        )?;
                    }
                    AfterAccept::Activate { .. } => {
                        activate(c, device, &owner, "activated by its holder")?;
                    }
                }
                Ok::<_, StoreError>(verdict.clone())
            })
            .await;
        result.unwrap_or_else(|error| accept_not_recorded(&error))
    }

    /// Activates the replacements whose time has come on the embedded
    /// store; how many.
    pub fn activate_due<R: CryptoRng + ?Sized>(&self, now: Timestamp, rng: &mut R) -> usize {
        let activated = self.activate_due_on(self.registry.as_ref(), now, rng);
        super::ready(async { Ok(activated.await) }).unwrap_or(0)
    }

    /// Activates the replacements whose time has come on the store this
    /// node keeps its state in (the server calls it every minute; on a
    /// cluster every node does, and a card is activated once).
    pub async fn activate_replacements<R: CryptoRng + Send + ?Sized>(
        &self,
        now: Timestamp,
        rng: &mut R,
    ) -> usize {
        match &self.cluster {
            Some(store) => self.activate_due_on(store, now, rng).await,
            None => self.activate_due(now, rng),
        }
    }

    async fn activate_due_on<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        now: Timestamp,
        rng: &mut R,
    ) -> usize {
        let due = match store.shipped().await {
            Ok(shipped) => shipped,
            Err(error) => {
                tracing::error!(%error, "listing the shipped replacements failed");
                return 0;
            }
        };
        let mut activated = 0;
        for card in due
            .into_iter()
            .filter(|s| rules::devices::due(&s.life, now))
        {
            let how = "activated automatically after shipment";
            let done = store
                .change(&card.user, Actor::SYSTEM, now, rng, |c| {
                    activate(c, card.device, &card.user, how)
                })
                .await;
            match done {
                Ok(()) => activated += 1,
                Err(error) => {
                    tracing::error!(%error, device = %card.device, "auto-activation failed")
                }
            }
        }
        activated
    }

    pub(super) async fn set_identity<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        identity: &Identification,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let residence = match residence_code(identity) {
            Ok(code) => code,
            Err(refusal) => return Ok(refusal),
        };
        let digest = store.identity_digest(identity);
        store
            .change(user, Self::actor(caller), now, rng, |c| {
                let record = Account {
                    residence: Some(residence),
                    identity: Some(digest),
                    ..c.account(user)?
                };
                c.set_user(user, record)?;
                c.audit(
                    "set-identity",
                    Some(user),
                    None,
                    format!("residence {}", identity.residence),
                )?;
                Ok(Reply::Done)
            })
            .await
    }

    pub(super) async fn set_opt_out<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        opted_out: bool,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        store
            .change(user, Self::actor(caller), now, rng, |c| {
                let record = c.account(user)?;
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
                let action = if opted_out { "opt-out" } else { "opt-in" };
                c.audit(action, Some(user), None, String::new())?;
                Ok(Reply::Done)
            })
            .await
    }

    /// The refusal of opting out a user whose residence forbids it
    /// (`lifecycle.opt-out-forbidden`, naming the regulation).
    pub(super) fn opt_out_refusal(&self, record: &Account, opting_out: bool) -> Option<Reply> {
        if !opting_out {
            return None;
        }
        let residence = String::from_utf8_lossy(&record.residence?).into_owned();
        let config = self.config();
        let regulation = config.lifecycle.opt_out_forbidden.get(&residence)?;
        Some(Reply::Refused {
            reason: Refusal::OptOutForbidden,
            message: format!(
                "users residing in {residence} cannot opt out of the Secure Login System: {regulation}"
            ),
        })
    }

    /// A participant of a share as the rules see them.
    async fn participant<S: Store>(
        &self,
        store: &S,
        user: &Username,
        now: Timestamp,
    ) -> Result<Participant, StoreError> {
        let view = store.user_view(user).await?;
        let level = |d: &Device| self.config().devices.get(d.kind).security;
        let usable = |d: &Device, life: &DeviceLife| !d.expired_at(now) && life.allows_use(now);
        Ok(Participant {
            identity: view.account.identity,
            has_temporary: view
                .devices
                .iter()
                .any(|(d, life)| level(d) == SecurityLevel::Temporary && usable(d, life)),
            physical: view
                .devices
                .iter()
                .filter(|(d, life)| d.kind.is_physical() && usable(d, life))
                .map(|(d, _)| level(d))
                .collect(),
        })
    }

    /// The refusal of a share asked for in a way no answer can make right
    /// (checked before the owner's device is asked to prove anything).
    pub(super) async fn share_request_refusal<S: Store>(
        &self,
        store: &S,
        requester: &Username,
        owner: &Username,
        device: DeviceId,
    ) -> Result<Option<Reply>, StoreError> {
        if store.device(device).await?.is_none_or(|d| &d.user != owner) {
            return Ok(Some(Reply::error(
                ErrorCode::NotFound,
                "no such device for the owner",
            )));
        }
        Ok((requester == owner).then(|| {
            Reply::error(
                ErrorCode::InvalidArgument,
                "a user cannot share with themselves",
            )
        }))
    }

    /// A share of the owner's `device` with `requester`, once the device
    /// itself has answered a challenge opened for it (`proof`: the reply
    /// to that answer).
    #[allow(clippy::too_many_arguments)] // the operation's fields, as on the wire
    pub(super) async fn share_proven<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        requester: &Username,
        owner: &Username,
        device: DeviceId,
        proof: Reply,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        match &proof {
            Reply::Verdict(Verdict::Accepted {
                user, device: d, ..
            }) if user == owner && *d == device => {}
            Reply::Verdict(Verdict::Accepted { .. }) => {
                return Ok(Reply::error(
                    ErrorCode::InvalidArgument,
                    "the challenge was not opened for this owner and device",
                ));
            }
            _ => return Ok(proof),
        }
        let Some(shared) = store.device(device).await? else {
            return Ok(Reply::error(
                ErrorCode::NotFound,
                "no such device for the owner",
            ));
        };
        let level = self.config().devices.get(shared.kind).security;
        let checked = check_share(
            shared.kind,
            level,
            &self.participant(store, requester, now).await?,
            &self.participant(store, owner, now).await?,
        );
        if let Err(refusal) = checked {
            return Ok(Reply::Refused {
                reason: match refusal {
                    ShareRefusal::DifferentIdentification => Refusal::DifferentIdentification,
                    ShareRefusal::LessSecureDevice => Refusal::LessSecureDevice,
                    ShareRefusal::TemporaryDevice => Refusal::TemporaryDevice,
                    ShareRefusal::NotShareable => Refusal::NotShareable,
                },
                message: refusal.to_string(),
            });
        }
        let id = ShareId(rng.next_u64());
        let active = !self.config().lifecycle.share_needs_approval;
        store
            .change(requester, Self::actor(caller), now, rng, |c| {
                if c.share_of(requester).is_some() {
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
                Ok(Reply::Share { share: id, active })
            })
            .await
    }

    pub(super) async fn decide_share<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        id: ShareId,
        approve: bool,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let not_found = || Reply::error(ErrorCode::NotFound, "no such pending share");
        let Some(requester) = store.share_requester(id).await? else {
            return Ok(not_found());
        };
        store
            .change(&requester, Self::actor(caller), now, rng, |c| {
                let Some(share) = c.share(id).filter(|s| s.state == ShareState::Pending) else {
                    return Ok(not_found());
                };
                let detail = format!("owner {}, share {id}", share.owner);
                let device = share.device;
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
                Ok(Reply::Share {
                    share: id,
                    active: approve,
                })
            })
            .await
    }

    pub(super) async fn cancel_share<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        id: ShareId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let not_found = || Reply::error(ErrorCode::NotFound, "no such share");
        let Some(requester) = store.share_requester(id).await? else {
            return Ok(not_found());
        };
        store
            .change(&requester, Self::actor(caller), now, rng, |c| {
                let Some(share) = c.share(id) else {
                    return Ok(not_found());
                };
                c.remove_share(id)?;
                c.audit(
                    "share-cancelled",
                    Some(&share.requester),
                    Some(share.device),
                    format!("owner {}, share {id}", share.owner),
                )?;
                Ok(Reply::Done)
            })
            .await
    }

    pub(super) async fn list_shares<S: Store>(
        &self,
        store: &S,
        page: Page,
    ) -> Result<Reply, StoreError> {
        let shares = store
            .shares()
            .await?
            .into_iter()
            .map(|s| ShareEntry {
                share: s.id,
                requesting_user: s.requester,
                owner_user: s.owner,
                device: s.device,
                active: s.state == ShareState::Active,
            })
            .collect();
        Ok(Reply::Shares(page.select(shares, |s| s.share.0)))
    }

    pub(super) async fn issue_temporary_code<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let config = self.config();
        let profile = config.devices.get(DeviceKind::Temporary);
        let crate::profile::Check::RandomCode(spec) = &profile.check else {
            return Ok(Reply::error(
                ErrorCode::Internal,
                "the temporary profile has no code format",
            ));
        };
        let code = spec.generate(rng);
        let Ok(secret) = crate::otp::SecretKey::from_bytes(code.as_str().as_bytes().to_vec())
        else {
            return Ok(Reply::error(
                ErrorCode::Internal,
                "the temporary code could not be kept",
            ));
        };
        let uses = self.config().lifecycle.temporary_code_uses;
        let validity = profile.validity.unwrap_or_default();
        let device = store
            .change(user, Self::actor(caller), now, rng, |c| {
                let id = c.add_code(
                    user,
                    DeviceKind::Temporary,
                    secret.clone(),
                    "temporary code",
                )?;
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
            })
            .await?;
        Ok(Reply::TemporaryCode {
            device,
            code: Answer::new(code.as_str()),
            expires_in: validity,
            uses: u16::try_from(uses).unwrap_or(u16::MAX),
        })
    }

    #[allow(clippy::too_many_arguments)] // the operation's fields, as on the wire
    pub(super) async fn order_replacement<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        lost: DeviceId,
        pin: Option<&Pin>,
        label: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let Some(lost) = store.device(lost).await? else {
            return Ok(Reply::error(ErrorCode::NotFound, "no such device"));
        };
        if !lost.kind.is_physical() {
            return Ok(Reply::error(
                ErrorCode::InvalidArgument,
                format!(
                    "replacement cards replace physical devices, not {}",
                    lost.kind
                ),
            ));
        }
        let changed = store
            .change(&lost.user, Self::actor(caller), now, rng, |c| {
                let (id, secret) = c.enroll(NewDevice {
                    user: &lost.user,
                    kind: DeviceKind::DscPlus,
                    secret: None,
                    pin: pin.map(Pin::as_str),
                    label,
                    token: None,
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
            })
            .await;
        Ok(changed.unwrap_or_else(super::enrolment::enroll_error))
    }

    pub(super) async fn ship_replacement<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        device: DeviceId,
        shipped_at: Timestamp,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let not_found = || Reply::error(ErrorCode::NotFound, "no such device");
        let Some(card) = store.device(device).await? else {
            return Ok(not_found());
        };
        let after = self.config().lifecycle.replacement_auto_activation;
        store
            .change(&card.user, Self::actor(caller), now, rng, |c| {
                if c.device(device).is_none() {
                    return Ok(not_found());
                }
                let life = c.life(device);
                let Activation::Ordered { replaces } = life.activation else {
                    return Ok(Reply::error(
                        ErrorCode::InvalidArgument,
                        "the device is not a replacement waiting to be shipped",
                    ));
                };
                let activates_at = shipped_at.plus(after);
                c.set_life(
                    device,
                    DeviceLife {
                        activation: Activation::Shipped(Box::new(Shipment {
                            replaces,
                            shipped_at,
                            activates_at,
                        })),
                        ..life
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
                Ok(Reply::Done)
            })
            .await
    }

    /// Shipped replacements not yet active, a page at a time by device id.
    pub(super) async fn pending_activations<S: Store>(
        &self,
        store: &S,
        now: Timestamp,
        page: Page,
    ) -> Result<Reply, StoreError> {
        let mut pending: Vec<_> = store
            .shipped()
            .await?
            .into_iter()
            .filter_map(|card| match card.life.activation {
                Activation::Shipped(shipment) if shipment.activates_at > now => {
                    Some(PendingActivation {
                        device: card.device,
                        user: card.user,
                        replaces: shipment.replaces,
                        shipped_at: shipment.shipped_at,
                        activates_at: shipment.activates_at,
                    })
                }
                _ => None,
            })
            .collect();
        pending.sort_by_key(|p| p.device.0);
        Ok(Reply::PendingActivations(
            page.select(pending, |p| p.device.0),
        ))
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
        if let Some(refusal) = invalid_amount(amount) {
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
        let start = self.config().withdrawals.holidays.window_start(today, 5);
        let holds: Vec<_> = self
            .registry
            .devices_of(user)
            .iter()
            .map(|d| d.kind)
            .collect();
        // Decided and booked in memory under the ledger's lock; the booking
        // and its audit entry reach the disk through the committer before
        // the reply (`store::embedded::ledger`).
        outcome.reply = self
            .registry
            .decide_withdrawal(user, start, today, |withdrawn| {
                let decision = self.withdrawal_decision((device, kind), amount, withdrawn, &holds);
                let approved = matches!(decision, Reply::WithdrawalApproved { .. });
                (decision, approved.then_some(amount))
            });
        if matches!(outcome.reply, Reply::WithdrawalApproved { .. }) {
            outcome.booking = Some(Box::new(Booking {
                user: user.clone(),
                day: today,
                cents: amount,
                keep_days: self.config().withdrawals.ledger_days,
                device,
                actor: Self::actor(caller),
                at: now,
                detail: withdrawal_detail(amount, kind, today),
            }));
        }
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
        let left = headroom(self.config().devices.get(kind).withdrawal_limit, withdrawn);
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
                kinds_that_allow: kinds_that_allow(
                    &self.config().devices,
                    withdrawn,
                    amount,
                    holds,
                ),
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

/// Makes a replacement active and retires the card it replaces (nothing
/// for a device that is active already).
fn activate(
    c: &mut dyn RegistryChange,
    device: DeviceId,
    user: &Username,
    how: &str,
) -> Result<(), StoreError> {
    let Some((life, replaces)) = rules::devices::activation(&c.life(device)) else {
        return Ok(());
    };
    c.set_life(device, life)?;
    let Some(replaces) = replaces else {
        return c.audit("activated", Some(user), Some(device), how.to_owned());
    };
    if c.device(replaces).is_some() {
        c.remove_device(replaces)?;
    }
    c.audit(
        "replacement-activated",
        Some(user),
        Some(device),
        format!("{how}; device {replaces} retired"),
    )
}

/// The verdict when an accepted answer's effect on its device could not be
/// recorded: not accepted (the device's state is unknown).
fn accept_not_recorded(error: &StoreError) -> Verdict {
    tracing::error!(%error, "recording an accepted answer failed");
    Verdict::UnknownChallenge
}
