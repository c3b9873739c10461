//! Changing a card's PIN, written once over [`Node`]: the user (logged in
//! at the gateway) or the help desk (a reset) opens a challenge on the
//! card, the user types it into the card with the *new* PIN, and the
//! response is judged under that PIN as a login is (a wrong one spends an
//! attempt and counts toward the lockout). Only when it is right does the
//! new PIN take the old one's place, in one change with its audit entry;
//! the device's lifecycle record carries it, which every verify on either
//! store reads afresh, so the old PIN stops working at once on every node.

use rand::CryptoRng;

use super::node::Node;
use super::rules::verify::PinTrial;
use super::{Caller, Engine, Outcome};
use crate::clock::Timestamp;
use crate::identity::{ChallengeId, DeviceId, Username};
use crate::store::{EnrollError, Store, StoreError};
use crate::wire::request::{Answer, Pin};
use crate::wire::{ErrorCode, Reply, Verdict};

/// Which PIN change: the audit log's name for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PinChange {
    /// `ChangePin`: the user's own, logged in.
    ByUser,
    /// `ResetPin`: at the help desk, for a user who forgot theirs.
    Reset,
}

impl PinChange {
    fn action(self) -> &'static str {
        match self {
            Self::ByUser => "change-pin",
            Self::Reset => "reset-pin",
        }
    }
}

/// One PIN change's request.
pub(super) struct NewPin<'a> {
    pub user: Option<&'a Username>,
    pub device: DeviceId,
    pub challenge: ChallengeId,
    pub pin: &'a Pin,
    pub response: &'a Answer,
}

impl Engine {
    /// The response to `challenge` judged under the new PIN; when right,
    /// the new PIN set. `user`: the device must be theirs (`ChangePin`;
    /// a help desk names the device alone).
    pub(super) async fn change_pin<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        caller: &Caller<'_>,
        how: PinChange,
        new: NewPin<'_>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        let store = node.store();
        let device = new.device;
        let found = store
            .device(device)
            .await?
            .filter(|d| new.user.is_none_or(|user| &d.user == user));
        let Some(found) = found else {
            return Ok(no_such_device().into());
        };
        // Checked, hashed and sealed before anything is judged.
        let changed = match store.changed_pin(rng, &found, new.pin.as_str()) {
            Ok(changed) => changed,
            Err(EnrollError::Invalid(problem)) => {
                return Ok(Reply::error(ErrorCode::InvalidArgument, problem).into());
            }
            Err(EnrollError::Store(error)) => return Err(error),
        };
        let trial = PinTrial {
            device,
            hash: changed.hash.clone(),
        };
        let outcome = node
            .verify(new.challenge, new.response, Some(&trial), now, rng)
            .await?;
        if !matches!(outcome.reply, Reply::Verdict(Verdict::Accepted { .. })) {
            return Ok(outcome);
        }
        let user = found.user.clone();
        let set = store
            .change(&user, Self::actor(caller), now, rng, |c| {
                if c.device(device).is_none() {
                    return Ok(false);
                }
                let mut life = c.life(device);
                life.pin = Some(Box::new(changed.clone()));
                c.set_life(device, life)?;
                c.audit(how.action(), Some(&user), Some(device), String::new())?;
                Ok::<_, StoreError>(true)
            })
            .await?;
        if !set {
            return Ok(no_such_device().into());
        }
        tracing::info!(%device, action = how.action(), "PIN changed");
        Ok(outcome)
    }

    /// `ResetPin`: challenge 0 opens one; then its response, under the
    /// PIN the user chose, sets that PIN.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reset_pin<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        caller: &Caller<'_>,
        device: DeviceId,
        challenge: ChallengeId,
        pin: Option<&Pin>,
        response: &Answer,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        if challenge.0 == 0 {
            return self.start_pin_reset(node, device, now, rng).await;
        }
        let Some(pin) = pin else {
            return Ok(Reply::error(
                ErrorCode::InvalidArgument,
                "a reset is completed with the PIN the user chose",
            )
            .into());
        };
        let new = NewPin {
            user: None,
            device,
            challenge,
            pin,
            response,
        };
        self.change_pin(node, caller, PinChange::Reset, new, now, rng)
            .await
    }

    /// `ResetPin` with no challenge yet: one opened on the device, for
    /// the user at the help desk to answer with the PIN they choose.
    async fn start_pin_reset<N: Node, R: CryptoRng + ?Sized>(
        &self,
        node: &N,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        let Some(found) = node.store().device(device).await? else {
            return Ok(no_such_device().into());
        };
        if !found.takes_pin() {
            return Ok(Reply::error(
                ErrorCode::InvalidArgument,
                format!("device {device} takes no PIN: nothing to reset"),
            )
            .into());
        }
        node.challenge(&found.user, device, now, rng).await
    }
}

fn no_such_device() -> Reply {
    Reply::error(ErrorCode::NotFound, "no such device for this user")
}
