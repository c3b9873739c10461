//! Confirm codes and IB Key activation tokens on the cluster: one record
//! in the user's slot each (`number-token`, `a:<id>`), the codes sealed
//! under the key file, kept until they expire; an activation's id maps to
//! its user (`sls:{a<id>}:owner`). A token is changed by reading it,
//! deciding, and writing it back only if no other node changed it
//! meanwhile — so an attempt is spent once and a token used once, on
//! whichever node the answer arrives.

use rand::CryptoRng;

use super::{ClusterStore, Handle, UserRecord, user_record_key};
use crate::clock::Timestamp;
use crate::identity::{ActivationId, ChallengeId, DeviceId, Username};
use crate::otp::Code;
use crate::phone::PhoneNumber;
use crate::store::EXPIRED_GRACE;
use crate::store::cluster::redis::{Key, Op, Versioned};
use crate::store::{ActivationToken, NumberToken, StoreError, TokenProof};
use crate::wire::codec::{Put, Reader};

fn code_from(bytes: &[u8]) -> Code {
    let mut code = Code::empty();
    for &byte in bytes {
        code.push(byte);
    }
    code
}

impl ClusterStore {
    fn seal_code<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        key: &Key,
        code: &Code,
    ) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .codec
            .cipher
            .seal(rng, code.as_bytes(), key.as_str().as_bytes())?)
    }

    fn open_code(&self, key: &Key, sealed: &[u8]) -> Result<Code, StoreError> {
        let bytes = self.codec.cipher.open(sealed, key.as_str().as_bytes())?;
        Ok(code_from(&bytes))
    }

    fn encode_number<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        key: &Key,
        token: &NumberToken,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![1u8];
        out.put_bytes(token.number.to_string().as_bytes());
        out.put_bytes(&self.seal_code(rng, key, &token.code)?);
        out.put_u64(token.expires_at.0);
        out.put_u8(token.attempts_left);
        Ok(out)
    }

    fn decode_number(&self, key: &Key, bytes: &[u8]) -> Result<NumberToken, StoreError> {
        let corrupt = || StoreError::Corrupt {
            device: 0,
            problem: format!("{} does not decode", key.as_str()),
        };
        let mut r = Reader::new(bytes);
        if r.u8("version").ok() != Some(1) {
            return Err(corrupt());
        }
        let number = r.str("number").map_err(|_| corrupt())?;
        let number = PhoneNumber::parse(number).map_err(|_| corrupt())?;
        let code = self.open_code(key, r.bytes("code").map_err(|_| corrupt())?)?;
        let expires_at = Timestamp(r.u64("expires at").map_err(|_| corrupt())?);
        let attempts_left = r.u8("attempts").map_err(|_| corrupt())?;
        r.finish().map_err(|_| corrupt())?;
        Ok(NumberToken {
            number,
            code,
            expires_at,
            attempts_left,
        })
    }

    fn encode_activation<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        key: &Key,
        token: &ActivationToken,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![1u8];
        out.put_bytes(token.user.as_str().as_bytes());
        let (device, challenge, code) = match &token.proof {
            TokenProof::Sms(code) => (None, None, Some(code)),
            TokenProof::Device {
                device,
                challenge,
                sms,
            } => (Some(device), Some(challenge), sms.as_ref()),
        };
        out.put_u8(u8::from(device.is_some()));
        out.put_u64(device.map_or(0, |d| d.0));
        out.put_u64(challenge.map_or(0, |c| c.0));
        match code {
            Some(code) => out.put_bytes(&self.seal_code(rng, key, code)?),
            None => out.put_bytes(&[]),
        }
        out.put_u64(token.expires_at.0);
        out.put_u8(token.attempts_left);
        Ok(out)
    }

    fn decode_activation(&self, key: &Key, bytes: &[u8]) -> Result<ActivationToken, StoreError> {
        let corrupt = || StoreError::Corrupt {
            device: 0,
            problem: format!("{} does not decode", key.as_str()),
        };
        let mut r = Reader::new(bytes);
        if r.u8("version").ok() != Some(1) {
            return Err(corrupt());
        }
        let user = Username::new(r.str("user").map_err(|_| corrupt())?).map_err(|_| corrupt())?;
        let by_device = r.u8("by device").map_err(|_| corrupt())? == 1;
        let device = DeviceId(r.u64("device").map_err(|_| corrupt())?);
        let challenge = ChallengeId(r.u64("challenge").map_err(|_| corrupt())?);
        let code = match r.bytes("code").map_err(|_| corrupt())? {
            [] => None,
            sealed => Some(self.open_code(key, sealed)?),
        };
        let expires_at = Timestamp(r.u64("expires at").map_err(|_| corrupt())?);
        let attempts_left = r.u8("attempts").map_err(|_| corrupt())?;
        r.finish().map_err(|_| corrupt())?;
        let proof = match (by_device, code) {
            (true, sms) => TokenProof::Device {
                device,
                challenge,
                sms,
            },
            (false, Some(code)) => TokenProof::Sms(code),
            (false, None) => return Err(corrupt()),
        };
        Ok(ActivationToken {
            user,
            proof,
            expires_at,
            attempts_left,
        })
    }

    /// Changes a token record of `user` with `decide`, which sees it as it
    /// is (`None`: absent) and may replace or remove it; written back only
    /// if no other node changed it meanwhile, decided again otherwise.
    #[allow(clippy::too_many_arguments)] // the record's codec, as a pair
    async fn change_token<R, Tok, T>(
        &self,
        rng: &mut R,
        user: &Username,
        record: UserRecord,
        now: Timestamp,
        decode: impl Fn(&Self, &Key, &[u8]) -> Result<Tok, StoreError>,
        encode: impl Fn(&Self, &mut R, &Key, &Tok) -> Result<Vec<u8>, StoreError>,
        expiry: impl Fn(&Tok) -> Timestamp,
        mut decide: impl FnMut(&mut Option<Tok>) -> T,
    ) -> Result<T, StoreError>
    where
        R: CryptoRng + ?Sized,
    {
        let key = user_record_key(user, record);
        let mut rounds = self.rounds();
        while rounds.next().await {
            let read = self.read_user(user, &[record]).await?;
            let Some(Versioned { version, value }) = read.into_iter().next() else {
                return Err(StoreError::Database("a short read".into()));
            };
            let mut token = match &value {
                Some(bytes) => Some(decode(self, &key, bytes)?),
                None => None,
            };
            let answer = decide(&mut token);
            let op = match &token {
                Some(token) if expiry(token) > now => {
                    let ttl = now.until(expiry(token)) + EXPIRED_GRACE;
                    Op::Set(encode(self, rng, &key, token)?, Some(ttl))
                }
                _ if value.is_none() => return Ok(answer),
                _ => Op::Delete,
            };
            if self
                .write_user(user, &[(record, version, op)], true)
                .await?
            {
                return Ok(answer);
            }
        }
        Err(StoreError::Database(format!(
            "{} kept changing",
            key.as_str()
        )))
    }

    /// Changes the number `user` is adding (see `change_token`).
    pub async fn change_number_token<R: CryptoRng + ?Sized, T>(
        &self,
        rng: &mut R,
        user: &Username,
        now: Timestamp,
        decide: impl FnMut(&mut Option<NumberToken>) -> T,
    ) -> Result<T, StoreError> {
        self.change_token(
            rng,
            user,
            UserRecord::NumberToken,
            now,
            Self::decode_number,
            |store, rng, key, token| store.encode_number(rng, key, token),
            |token| token.expires_at,
            decide,
        )
        .await
    }

    /// Starts an activation: a fresh id for it (mapped to its user until
    /// it expires) and its record.
    pub async fn put_activation_token<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        token: ActivationToken,
        now: Timestamp,
    ) -> Result<Option<ActivationId>, StoreError> {
        let ttl = now.until(token.expires_at);
        let mut rounds = self.rounds();
        while rounds.next().await {
            let id = ActivationId(rng.next_u64());
            if !self
                .claim_handle(Handle::Activation(id), &token.user, None, ttl)
                .await?
            {
                continue;
            }
            let user = token.user.clone();
            self.change_activation_token(rng, &user, id, now, |slot| {
                *slot = Some(token.clone());
            })
            .await?;
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// The user an activation belongs to, while it lasts.
    pub async fn activation_user(&self, id: ActivationId) -> Result<Option<Username>, StoreError> {
        Ok(self
            .handle_owner(Handle::Activation(id))
            .await?
            .map(|(user, _)| user))
    }

    /// Changes an activation of `user` (see `change_token`).
    pub async fn change_activation_token<R: CryptoRng + ?Sized, T>(
        &self,
        rng: &mut R,
        user: &Username,
        id: ActivationId,
        now: Timestamp,
        decide: impl FnMut(&mut Option<ActivationToken>) -> T,
    ) -> Result<T, StoreError> {
        self.change_token(
            rng,
            user,
            UserRecord::Activation(id),
            now,
            Self::decode_activation,
            |store, rng, key, token| store.encode_activation(rng, key, token),
            |token| token.expires_at,
            decide,
        )
        .await
    }
}
