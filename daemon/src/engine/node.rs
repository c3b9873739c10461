//! What an operation written once needs of the node it runs on beyond the
//! registry ([`Store`]): the per-user issuance limit, which devices a
//! login may use, a challenge and the verdict on its answer, an SMS
//! through a carrier bridge, and the confirm codes and activation tokens
//! waiting for an answer. [`Embedded`] is one node's memory and registry;
//! [`Clustered`] a deployment's shared store. Static dispatch: each
//! operation is compiled once per node kind.

use std::future::Future;
use std::sync::Arc;

use rand::CryptoRng;
use zeroize::Zeroizing;

use super::relay::Outbound;
use super::rules::verify::PinTrial;
use super::{Engine, Outcome};
use crate::clock::Timestamp;
use crate::identity::{ActivationId, ChallengeId, CodeId, DeviceId, MessageId, Username};
use crate::phone::{Channel, PhoneNumber};
use crate::ratelimit::Decision;
use crate::store::cluster::ClusterStore;
use crate::store::embedded::registry::Registry;
use crate::store::{ActivationToken, Device, NumberToken, Store, StoreError};
use crate::wire::request::Answer;
use crate::wire::{ErrorCode, Reply};

pub(super) trait Node {
    type Store: Store;

    fn store(&self) -> &Self::Store;

    /// One issuance (challenge, code, push, token) for `user`.
    fn issuance(
        &self,
        user: &Username,
        now: Timestamp,
    ) -> impl Future<Output = Result<Decision, StoreError>>;

    /// The devices `user` may log in with at `now`.
    fn login_devices(
        &self,
        user: &Username,
        now: Timestamp,
    ) -> impl Future<Output = Result<Vec<Arc<Device>>, StoreError>>;

    /// `Challenge`.
    fn challenge<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> impl Future<Output = Result<Outcome, StoreError>>;

    /// `Verify`, or with a PIN on `trial` (a PIN change).
    fn verify<R: CryptoRng + ?Sized>(
        &self,
        challenge: ChallengeId,
        answer: &Answer,
        trial: Option<&PinTrial>,
        now: Timestamp,
        rng: &mut R,
    ) -> impl Future<Output = Result<Outcome, StoreError>>;

    /// Sends `text` to `to` by SMS through a carrier bridge, within the
    /// send limits that keep SMS pumping away; `Err`: the refusal.
    fn send_sms<R: CryptoRng + ?Sized>(
        &self,
        to: PhoneNumber,
        text: Zeroizing<String>,
        now: Timestamp,
        rng: &mut R,
    ) -> impl Future<Output = Result<Result<(), Reply>, StoreError>>;

    /// Changes the number `user` is adding: `decide` sees it (`None`: no
    /// verification under way) and may replace or remove it. `None` back:
    /// the tokens are at their bound and a new one cannot be kept.
    fn change_number<R: CryptoRng + ?Sized, T>(
        &self,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
        decide: impl FnMut(&mut Option<NumberToken>) -> T,
    ) -> impl Future<Output = Result<Option<T>, StoreError>>;

    /// Keeps a new activation; `None`: the tokens are at their bound.
    fn start_activation<R: CryptoRng + ?Sized>(
        &self,
        token: ActivationToken,
        now: Timestamp,
        rng: &mut R,
    ) -> impl Future<Output = Result<Option<ActivationId>, StoreError>>;

    /// Changes an activation: `decide` sees it (`None`: no such activation
    /// under way) and may change or end it.
    fn change_activation<R: CryptoRng + ?Sized, T>(
        &self,
        id: ActivationId,
        now: Timestamp,
        rng: &mut R,
        decide: impl FnMut(&mut Option<ActivationToken>) -> T,
    ) -> impl Future<Output = Result<T, StoreError>>;
}

/// One node's memory and registry.
pub(super) struct Embedded<'e>(pub &'e Engine);

impl Node for Embedded<'_> {
    type Store = Registry;

    fn store(&self) -> &Registry {
        self.0.registry.as_ref()
    }

    async fn issuance(&self, user: &Username, now: Timestamp) -> Result<Decision, StoreError> {
        Ok(self.0.issuance(user, now))
    }

    async fn login_devices(
        &self,
        user: &Username,
        now: Timestamp,
    ) -> Result<Vec<Arc<Device>>, StoreError> {
        Ok(self.0.login_devices(user, now))
    }

    async fn challenge<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        Ok(self.0.challenge(user, device, now, rng))
    }

    async fn verify<R: CryptoRng + ?Sized>(
        &self,
        challenge: ChallengeId,
        answer: &Answer,
        trial: Option<&PinTrial>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        Ok(self.0.verify_with(challenge, answer, trial, now, rng))
    }

    async fn send_sms<R: CryptoRng + ?Sized>(
        &self,
        to: PhoneNumber,
        text: Zeroizing<String>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Result<(), Reply>, StoreError> {
        Ok(self.0.send_token(to, text, now, rng))
    }

    async fn change_number<R: CryptoRng + ?Sized, T>(
        &self,
        user: &Username,
        _now: Timestamp,
        _rng: &mut R,
        decide: impl FnMut(&mut Option<NumberToken>) -> T,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.0.tokens.change_number(user, decide))
    }

    async fn start_activation<R: CryptoRng + ?Sized>(
        &self,
        token: ActivationToken,
        _now: Timestamp,
        rng: &mut R,
    ) -> Result<Option<ActivationId>, StoreError> {
        Ok(self.0.tokens.start_activation(token, rng))
    }

    async fn change_activation<R: CryptoRng + ?Sized, T>(
        &self,
        id: ActivationId,
        _now: Timestamp,
        _rng: &mut R,
        decide: impl FnMut(&mut Option<ActivationToken>) -> T,
    ) -> Result<T, StoreError> {
        Ok(self.0.tokens.change_activation(id, decide))
    }
}

/// A deployment's shared store, as one of its nodes uses it.
pub(super) struct Clustered<'e> {
    pub engine: &'e Engine,
    pub store: &'e ClusterStore,
}

impl Node for Clustered<'_> {
    type Store = ClusterStore;

    fn store(&self) -> &ClusterStore {
        self.store
    }

    async fn issuance(&self, user: &Username, now: Timestamp) -> Result<Decision, StoreError> {
        let rate = self.engine.config().challenges.issuance_rate();
        self.store.count_issuance(user, now, rate).await
    }

    async fn login_devices(
        &self,
        user: &Username,
        now: Timestamp,
    ) -> Result<Vec<Arc<Device>>, StoreError> {
        self.engine
            .cluster_login_devices(self.store, user, now)
            .await
    }

    async fn challenge<R: CryptoRng + ?Sized>(
        &self,
        user: &Username,
        device: DeviceId,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        let reply = self
            .engine
            .cluster_challenge(self.store, user, device, now, rng)
            .await?;
        Ok(reply.into())
    }

    async fn verify<R: CryptoRng + ?Sized>(
        &self,
        challenge: ChallengeId,
        answer: &Answer,
        trial: Option<&PinTrial>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Outcome, StoreError> {
        let reply = self
            .engine
            .cluster_verify_with(self.store, challenge, answer, trial, now, rng)
            .await?;
        Ok(reply.into())
    }

    async fn send_sms<R: CryptoRng + ?Sized>(
        &self,
        to: PhoneNumber,
        text: Zeroizing<String>,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Result<(), Reply>, StoreError> {
        let config = self.engine.config();
        let sms = &config.sms;
        if !self
            .engine
            .cluster_bridges_anywhere(self.store, now)
            .await?
        {
            return Ok(Err(Reply::error(
                ErrorCode::DeliveryUnavailable,
                "no carrier bridge is connected",
            )));
        }
        if let Some(refusal) = super::sms::country_refused(sms, &to) {
            return Ok(Err(refusal));
        }
        if let Err((retry_after, limit)) = self.store.count_send(&to, now, sms).await? {
            return Ok(Err(Reply::rate_limited(retry_after, limit.refusal())));
        }
        let outbound = Outbound {
            // Not an SMS login code: no `CodeStatus` follows it.
            code: CodeId(rng.next_u64()),
            to,
            channel: Channel::Sms,
            text,
        };
        let until = now.plus(self.engine.config().lifecycle.token_ttl);
        let message = outbound.encode(MessageId(rng.next_u64()), until);
        self.store.enqueue_message(rng, &message).await?;
        Ok(Ok(()))
    }

    async fn change_number<R: CryptoRng + ?Sized, T>(
        &self,
        user: &Username,
        now: Timestamp,
        rng: &mut R,
        decide: impl FnMut(&mut Option<NumberToken>) -> T,
    ) -> Result<Option<T>, StoreError> {
        self.store
            .change_number_token(rng, user, now, decide)
            .await
            .map(Some)
    }

    async fn start_activation<R: CryptoRng + ?Sized>(
        &self,
        token: ActivationToken,
        now: Timestamp,
        rng: &mut R,
    ) -> Result<Option<ActivationId>, StoreError> {
        self.store.put_activation_token(rng, token, now).await
    }

    async fn change_activation<R: CryptoRng + ?Sized, T>(
        &self,
        id: ActivationId,
        now: Timestamp,
        rng: &mut R,
        mut decide: impl FnMut(&mut Option<ActivationToken>) -> T,
    ) -> Result<T, StoreError> {
        match self.store.activation_user(id).await? {
            Some(user) => {
                self.store
                    .change_activation_token(rng, &user, id, now, decide)
                    .await
            }
            None => Ok(decide(&mut None)),
        }
    }
}
