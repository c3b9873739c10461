//! How a device is written down and read back: the record layout, the
//! sealing of its secrets under the deployment's key, and the verifier
//! built from it. The embedded registry and the shared store keep the same
//! records, so a device reads the same way from either.

use std::sync::Arc;

use rand::CryptoRng;

use super::registry::{Device, EnrollError, StoreError, Verifier};
use super::sealed::SecretCipher;
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Username};
use crate::otp::card::CodeCard;
use crate::otp::ocra::Ocra;
use crate::otp::{MacOutput, SecretKey};
use crate::phone::PhoneNumber;
use crate::profile::{Check, DeviceKind, DeviceProfiles};
use crate::wire::codec::{Put, Reader};

/// Version byte of the device record layout.
const RECORD_V1: u8 = 1;
/// Bytes of a generated card secret.
const CARD_SECRET_BYTES: usize = 32;

/// The additional data a device's sealed values are bound to.
pub(super) fn context(device: DeviceId, what: &str) -> Vec<u8> {
    format!("sls/1 device {} {what}", device.0).into_bytes()
}

/// What a new device's record holds besides its verifier.
pub(super) struct Stored<'a> {
    pub(super) user: &'a Username,
    pub(super) kind: DeviceKind,
    pub(super) label: &'a str,
    pub(super) now: Timestamp,
    /// The key, sealed into the record; `None` for kinds without one (SMS).
    pub(super) secret: Option<&'a SecretKey>,
}

/// Seals, encodes and decodes device records; builds verifiers.
pub struct DeviceCodec {
    pub(super) cipher: SecretCipher,
    pub(super) profiles: DeviceProfiles,
}

impl std::fmt::Debug for DeviceCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCodec").finish_non_exhaustive()
    }
}

impl DeviceCodec {
    pub fn new(cipher: SecretCipher, profiles: DeviceProfiles) -> Self {
        Self { cipher, profiles }
    }

    /// A new device's key (the one given, or a generated one: `true`),
    /// and its verifier, checked against its kind's profile.
    pub(super) fn prepare<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        kind: DeviceKind,
        secret: Option<SecretKey>,
        pin: Option<&str>,
    ) -> Result<(SecretKey, bool, Verifier), EnrollError> {
        if kind == DeviceKind::Temporary {
            return Err(EnrollError::Invalid(
                "temporary codes are issued with IssueTemporaryCode".into(),
            ));
        }
        let generated = secret.is_none();
        let secret = match secret {
            Some(secret) => {
                let least = self.profiles.get(kind).min_key_bytes;
                if secret.len() < least {
                    return Err(EnrollError::Invalid(format!(
                        "a {kind} key is at least {least} bytes ({} bits); this one has {}",
                        least * 8,
                        secret.len()
                    )));
                }
                secret
            }
            None => {
                let mut bytes = vec![0u8; self.secret_len(kind)?];
                rng.fill_bytes(&mut bytes);
                SecretKey::from_bytes(bytes).map_err(|e| EnrollError::Invalid(e.to_string()))?
            }
        };
        let pin_hash = self.pin_hash(kind, pin)?;
        // Build the verifier first: it checks the key against the kind.
        let verifier = self.verifier(kind, &secret, pin_hash)?;

        Ok((secret, generated, verifier))
    }

    /// A device's verified number, sealed (it is personal data).
    pub(super) fn seal_phone<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        id: DeviceId,
        number: &PhoneNumber,
    ) -> Result<Vec<u8>, StoreError> {
        let text = number.to_string();
        Ok(self
            .cipher
            .seal(rng, text.as_bytes(), &context(id, "phone"))?)
    }

    pub(super) fn open_phone(
        &self,
        id: DeviceId,
        sealed: &[u8],
    ) -> Result<PhoneNumber, StoreError> {
        let text = self.cipher.open(sealed, &context(id, "phone"))?;
        std::str::from_utf8(&text)
            .ok()
            .and_then(|text| PhoneNumber::parse(text).ok())
            .ok_or_else(|| StoreError::Corrupt {
                device: id.0,
                problem: "phone number".into(),
            })
    }

    pub(super) fn secret_len(&self, kind: DeviceKind) -> Result<usize, EnrollError> {
        match &self.profiles.get(kind).check {
            Check::Ocra { suite, .. } => Ok(suite.hash().output_len()),
            Check::CodeCard { .. } => Ok(CARD_SECRET_BYTES),
            Check::RandomCode(_) => Err(not_keyed(kind)),
        }
    }

    pub(super) fn pin_hash(
        &self,
        kind: DeviceKind,
        pin: Option<&str>,
    ) -> Result<Option<MacOutput>, EnrollError> {
        match (&self.profiles.get(kind).check, pin) {
            (
                Check::Ocra {
                    suite,
                    pin_digits: Some(digits),
                },
                Some(pin),
            ) => {
                if pin.len() != usize::from(*digits) || !pin.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(EnrollError::Invalid(format!(
                        "a {kind} PIN is exactly {digits} digits"
                    )));
                }
                Ok(suite.hash_pin(pin))
            }
            (
                Check::Ocra {
                    pin_digits: Some(_),
                    ..
                },
                None,
            ) => Err(EnrollError::Invalid(format!("a {kind} needs its PIN"))),
            (_, Some(_)) => Err(EnrollError::Invalid(format!("a {kind} takes no PIN"))),
            (_, None) => Ok(None),
        }
    }

    pub(super) fn verifier(
        &self,
        kind: DeviceKind,
        secret: &SecretKey,
        pin_hash: Option<MacOutput>,
    ) -> Result<Verifier, EnrollError> {
        match &self.profiles.get(kind).check {
            Check::Ocra { suite, .. } if suite.uses_counter() || suite.session_len().is_some() => {
                Err(EnrollError::Invalid(format!(
                    "the {kind} suite {suite} needs a counter (C) or session information (S), which login challenges do not carry"
                )))
            }
            Check::Ocra { suite, .. } => Ok(Verifier::Ocra {
                ocra: Ocra::new(Arc::clone(suite), secret),
                pin_hash,
            }),
            Check::CodeCard { positions } => Ok(Verifier::Card(
                CodeCard::new(secret, *positions)
                    .map_err(|e| EnrollError::Invalid(e.to_string()))?,
            )),
            // A temporary code is kept (sealed) as the device's secret.
            Check::RandomCode(_) if kind == DeviceKind::Temporary => {
                Ok(Verifier::Code(secret.clone()))
            }
            Check::RandomCode(_) => Err(not_keyed(kind)),
        }
    }

    pub(super) fn encode_device<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        id: DeviceId,
        new: &Stored<'_>,
        verifier: &Verifier,
    ) -> Result<Vec<u8>, StoreError> {
        // SMS devices hold no key: their secret field stays empty.
        let sealed_secret = match new.secret {
            Some(secret) => {
                self.cipher
                    .seal(rng, secret.expose_secret(), &context(id, "secret"))?
            }
            None => Vec::new(),
        };
        let sealed_pin = match verifier {
            Verifier::Ocra {
                pin_hash: Some(hash),
                ..
            } => self
                .cipher
                .seal(rng, hash.as_bytes(), &context(id, "pin-hash"))?,
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        out.put_u8(RECORD_V1);
        out.put_bytes(new.user.as_str().as_bytes());
        out.put_u8(new.kind.code());
        out.put_bytes(new.label.as_bytes());
        out.put_u64(new.now.0);
        out.put_bytes(&sealed_secret);
        out.put_bytes(&sealed_pin);
        Ok(out)
    }

    pub(super) fn decode_device(
        &self,
        id: DeviceId,
        record: &[u8],
        phone: Option<PhoneNumber>,
    ) -> Result<Device, StoreError> {
        let corrupt = |problem: &str| StoreError::Corrupt {
            device: id.0,
            problem: problem.to_owned(),
        };
        let mut r = Reader::new(record);
        if r.u8("version").map_err(|e| corrupt(&e.to_string()))? != RECORD_V1 {
            return Err(corrupt("unknown record version"));
        }
        let user = r.str("user").map_err(|e| corrupt(&e.to_string()))?;
        let user = Username::new(user).map_err(|e| corrupt(&e.to_string()))?;
        let kind = r.u8("kind").map_err(|e| corrupt(&e.to_string()))?;
        let kind = DeviceKind::from_code(kind).ok_or_else(|| corrupt("unknown kind"))?;
        let label = r
            .str("label")
            .map_err(|e| corrupt(&e.to_string()))?
            .to_owned();
        let created = Timestamp(r.u64("created").map_err(|e| corrupt(&e.to_string()))?);
        let sealed_secret = r.bytes("secret").map_err(|e| corrupt(&e.to_string()))?;
        let sealed_pin = r.bytes("pin hash").map_err(|e| corrupt(&e.to_string()))?;
        r.finish().map_err(|e| corrupt(&e.to_string()))?;

        if kind == DeviceKind::Sms {
            let phone = phone.ok_or_else(|| corrupt("SMS device without a number"))?;
            return Ok(Device::new(
                id,
                user,
                kind,
                label,
                created,
                self.expiry(kind, created),
                Verifier::Phone(phone),
            ));
        }
        let secret = self.cipher.open(sealed_secret, &context(id, "secret"))?;
        let secret = SecretKey::from_bytes(secret.to_vec()).map_err(|e| corrupt(&e.to_string()))?;
        let pin_hash = match sealed_pin {
            [] => None,
            sealed => {
                let hash = self.cipher.open(sealed, &context(id, "pin-hash"))?;
                Some(MacOutput::from_bytes(&hash))
            }
        };
        let verifier = self
            .verifier(kind, &secret, pin_hash)
            .map_err(|e| corrupt(&e.to_string()))?;
        Ok(Device::new(
            id,
            user,
            kind,
            label,
            created,
            self.expiry(kind, created),
            verifier,
        ))
    }

    /// The end of a device's validity, if its kind has one.
    pub(super) fn expiry(&self, kind: DeviceKind, created: Timestamp) -> Option<Timestamp> {
        self.profiles
            .get(kind)
            .validity
            .map(|validity| created.plus(validity))
    }
}

fn not_keyed(kind: DeviceKind) -> EnrollError {
    EnrollError::Invalid(format!(
        "{kind} devices hold no key and are not enrolled this way (a verified number: EnrollPhone)"
    ))
}
