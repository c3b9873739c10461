//! Enrolment, push-key binding, revocation and unlocking: registry
//! changes written once over [`Store`], each committed with its audit
//! entry or not at all on either store.

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Username};
use crate::otp::app::{AppParameters, otpauth_uri};
use crate::otp::push::PushKey;
use crate::phone::PhoneNumber;
use crate::profile::{Check, DeviceKind};
use crate::store::{
    Activation, Device, DeviceLife, EnrollError, NewDevice, RegistryChange, Store, StoreError,
};
use crate::wire::token::TokenState;
use crate::wire::{EnrollRequest, ErrorCode, Reply};

impl Engine {
    /// `Enroll`: a device with the key given, or one generated and
    /// returned once.
    pub(super) async fn enroll<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        request: EnrollRequest,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let EnrollRequest {
            user,
            kind,
            secret,
            pin,
            label,
        } = request;
        let pin = pin.as_ref().map(|p| p.as_str());
        // An authenticator app is told its parameters by URI.
        let config = self.config();
        let app = match &config.devices.get(kind).check {
            Check::Totp {
                hash,
                digits,
                step,
                issuer,
            } => Some((
                issuer.as_str(),
                AppParameters {
                    hash: *hash,
                    digits: *digits,
                    step: *step,
                },
            )),
            _ => None,
        };
        // It is pending until its first code verifies: that catches an
        // app that ignored the URI's parameters.
        let pending = app.is_some();
        let enrolled = store
            .change(&user, Self::actor(caller), now, rng, |c| {
                let (device, secret) = c.enroll(NewDevice {
                    user: &user,
                    kind,
                    secret: secret.clone(),
                    pin,
                    label: &label,
                    token: None,
                })?;
                if pending {
                    let life = DeviceLife {
                        activation: Activation::Pending,
                        ..DeviceLife::default()
                    };
                    c.set_life(device, life)?;
                }
                Ok((device, secret))
            })
            .await;
        refused_or(enrolled, |(device, generated)| {
            tracing::info!(%user, %device, %kind, "device enrolled");
            match (app, generated.as_ref().or(secret.as_ref())) {
                (Some((issuer, parameters)), Some(key)) => Reply::AppEnrolled {
                    device,
                    uri: otpauth_uri(issuer, user.as_str(), key, parameters),
                },
                _ => Reply::Enrolled {
                    device,
                    secret: generated,
                },
            }
        })
    }

    /// `EnrollPhone`: a verified number as the user's SMS device (one per
    /// user).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn enroll_phone<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        number: PhoneNumber,
        label: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let enrolled = store
            .change(user, Self::actor(caller), now, rng, |c| {
                c.add_phone(user, number.clone(), label)
            })
            .await;
        refused_or(enrolled, |device| {
            tracing::info!(%user, %device, "phone number enrolled");
            Reply::Enrolled {
                device,
                secret: None,
            }
        })
    }

    /// `BindPushKey`: the Ed25519 key an IB Key device's approvals are
    /// checked with.
    pub(super) async fn bind_push_key<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        device: DeviceId,
        key: PushKey,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let not_ib_key = |found: &Device| {
            (found.kind != DeviceKind::IbKey).then(|| {
                Reply::error(
                    ErrorCode::InvalidArgument,
                    format!("push keys are for IB Key devices, not {}", found.kind),
                )
            })
        };
        let reply = self
            .change_device(store, caller, device, (now, rng), not_ib_key, |c, found| {
                c.set_push_key(device, key)?;
                c.audit("bind-push-key", Some(&found.user), Some(device), "".into())
            })
            .await?;
        if reply == Reply::Done {
            tracing::info!(%device, "push key bound");
        }
        Ok(reply)
    }

    /// `Revoke`: the device and everything kept beside it, for good.
    pub(super) async fn revoke<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let token = store
            .device(device)
            .await?
            .and_then(|d| Some((d.token.as_ref()?.serial.clone(), d.user.clone())));
        let reply = self
            .change_device(
                store,
                caller,
                device,
                (now, rng),
                |_| None,
                |c, found| {
                    c.remove_device(device)?;
                    let kind = found.kind.to_string();
                    c.audit("revoke", Some(&found.user), Some(device), kind)
                },
            )
            .await?;
        if reply == Reply::Done {
            tracing::info!(%device, "device revoked");
            // A revoked token's key may be in other hands: it is retired,
            // never assigned again.
            if let Some((serial, user)) = token {
                let assigned = TokenState::Assigned { user, device };
                store
                    .swap_token_state(&serial, &assigned, &TokenState::Retired { at: now })
                    .await?;
            }
        }
        Ok(reply)
    }

    /// A change of one device, as a registry change of its owner, made if
    /// the device exists when asked and when the change runs: `Done`, or
    /// `NotFound`. `refusal` may turn the device down first.
    async fn change_device<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        device: DeviceId,
        (now, rng): (Timestamp, &mut R),
        refusal: impl FnOnce(&Device) -> Option<Reply>,
        mut write: impl FnMut(&mut dyn RegistryChange, &Device) -> Result<(), StoreError>,
    ) -> Result<Reply, StoreError> {
        let Some(found) = store.device(device).await? else {
            return Ok(no_such_device());
        };
        if let Some(refused) = refusal(&found) {
            return Ok(refused);
        }
        let changed = store
            .change(&found.user, Self::actor(caller), now, rng, |c| {
                if c.device(device).is_none() {
                    return Ok(false);
                }
                write(c, &found)?;
                Ok::<_, StoreError>(true)
            })
            .await?;
        Ok(if changed {
            Reply::Done
        } else {
            no_such_device()
        })
    }

    /// `Unlock`: clears the failure count and lockout of one of the user's
    /// devices, or of all of them.
    pub(super) async fn unlock<S: Store, R: CryptoRng + ?Sized>(
        &self,
        store: &S,
        caller: &Caller<'_>,
        user: &Username,
        device: Option<DeviceId>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Reply, StoreError> {
        let cleared = store
            .change(user, Self::actor(caller), now, rng, |c| {
                let devices: Vec<_> = c
                    .devices(user)?
                    .into_iter()
                    .filter(|d| device.is_none_or(|id| d.id == id))
                    .collect();
                if devices.is_empty() && device.is_some() {
                    return Ok(None);
                }
                for d in &devices {
                    c.clear_failures(d.id, 0)?;
                }
                let detail = format!("{} devices", devices.len());
                c.audit("unlock", Some(user), device, detail)?;
                Ok::<_, StoreError>(Some(devices.len()))
            })
            .await?;
        Ok(match cleared {
            Some(devices) => {
                tracing::info!(%user, devices, "lockouts cleared");
                Reply::Done
            }
            None => Reply::error(ErrorCode::NotFound, "no such device for this user"),
        })
    }
}

fn no_such_device() -> Reply {
    Reply::error(ErrorCode::NotFound, "no such device")
}

/// The reply to an enrolment: `enrolled`'s when it was made, the refusal
/// when the request was invalid; a store failure is the caller's to
/// answer.
pub(super) fn refused_or<T>(
    enrolled: Result<T, EnrollError>,
    enrolled_reply: impl FnOnce(T) -> Reply,
) -> Result<Reply, StoreError> {
    match enrolled {
        Ok(made) => Ok(enrolled_reply(made)),
        Err(EnrollError::Invalid(problem)) => Ok(Reply::error(ErrorCode::InvalidArgument, problem)),
        Err(EnrollError::Store(error)) => Err(error),
    }
}

/// The reply to an enrolment that failed, from a flow that answers a
/// store failure itself.
pub(super) fn enroll_error(error: EnrollError) -> Reply {
    match error {
        EnrollError::Invalid(problem) => Reply::error(ErrorCode::InvalidArgument, problem),
        EnrollError::Store(error @ crate::store::StoreError::Shared(_)) => {
            tracing::warn!(%error, "shared store failed");
            Reply::error(
                ErrorCode::StoreUnavailable,
                "the shared store did not answer or did not replicate in time",
            )
        }
        EnrollError::Store(error) => {
            tracing::error!(%error, "registry change failed");
            Reply::error(
                ErrorCode::Internal,
                "the registry could not store the change",
            )
        }
    }
}
