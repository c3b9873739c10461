//! Enrolment, revocation and unlocking on the embedded store, and the
//! replies both stores give to them.

use rand::CryptoRng;

use super::{Caller, Engine};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Username};
use crate::store::{EnrollError, FailureState, NewDevice};
use crate::wire::{EnrollRequest, ErrorCode, Reply};

impl Engine {
    pub(super) fn enroll<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        request: EnrollRequest,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let EnrollRequest {
            user,
            kind,
            secret,
            pin,
            label,
        } = request;
        let pin = pin.as_ref().map(|p| p.as_str());
        let new = NewDevice {
            user: &user,
            kind,
            secret,
            pin,
            label: &label,
        };
        match self.registry.enroll(rng, new, now, Self::actor(caller)) {
            Ok((device, secret)) => {
                tracing::info!(%user, %device, %kind, "device enrolled");
                Reply::Enrolled { device, secret }
            }
            Err(error) => enroll_error(error),
        }
    }

    pub(super) fn enroll_phone<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        number: crate::phone::PhoneNumber,
        label: &str,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        phone_enrolled(
            user,
            self.registry
                .enroll_phone(rng, user, number, label, now, Self::actor(caller)),
        )
    }

    pub(super) fn bind_push_key<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        key: crate::otp::push::PushKey,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        push_key_bound(
            device,
            self.registry
                .bind_push_key(rng, device, key, now, Self::actor(caller)),
        )
    }

    pub(super) fn revoke<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        match self.registry.revoke(rng, device, now, Self::actor(caller)) {
            Ok(true) => {
                tracing::info!(%device, "device revoked");
                Reply::Done
            }
            Ok(false) => Reply::error(ErrorCode::NotFound, "no such device"),
            Err(error) => {
                tracing::error!(%error, "revoke failed");
                Reply::error(
                    ErrorCode::Internal,
                    "the registry could not revoke the device",
                )
            }
        }
    }

    pub(super) fn unlock<R: CryptoRng + ?Sized>(
        &self,
        caller: &Caller<'_>,
        user: &Username,
        device: Option<DeviceId>,
        now: Timestamp,
        rng: &mut R,
    ) -> Reply {
        let devices: Vec<_> = self
            .registry
            .devices_of(user)
            .into_iter()
            .filter(|d| device.is_none_or(|id| d.id == id))
            .collect();
        if devices.is_empty() && device.is_some() {
            return Reply::error(ErrorCode::NotFound, "no such device for this user");
        }
        let cleared = self.registry.change(rng, now, Self::actor(caller), |c| {
            for d in &devices {
                c.set_failures(d.id, FailureState::default())?;
            }
            let detail = format!("{} devices", devices.len());
            c.audit("unlock", Some(user), device, detail)
        });
        if let Err(error) = cleared {
            tracing::error!(%error, "unlock failed");
            return Reply::error(
                ErrorCode::Internal,
                "the registry could not clear the lockout",
            );
        }
        tracing::info!(%user, devices = devices.len(), "lockouts cleared");
        Reply::Done
    }
}

/// The reply to `EnrollPhone`, from either store.
pub(super) fn phone_enrolled(user: &Username, enrolled: Result<DeviceId, EnrollError>) -> Reply {
    match enrolled {
        Ok(device) => {
            tracing::info!(%user, %device, "phone number enrolled");
            Reply::Enrolled {
                device,
                secret: None,
            }
        }
        Err(error) => enroll_error(error),
    }
}

/// The reply to `BindPushKey`, from either store.
pub(super) fn push_key_bound(device: DeviceId, bound: Result<bool, EnrollError>) -> Reply {
    match bound {
        Ok(true) => {
            tracing::info!(%device, "push key bound");
            Reply::Done
        }
        Ok(false) => Reply::error(ErrorCode::NotFound, "no such device"),
        Err(error) => enroll_error(error),
    }
}

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
