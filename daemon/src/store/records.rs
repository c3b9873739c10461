//! How a device is written down and read back: the record layout, the
//! sealing of its secrets under the deployment's key, and the verifier
//! built from it. The embedded registry and the shared store keep the same
//! records, so a device reads the same way from either.

use crate::store::model::*;
use std::sync::Arc;

use rand::CryptoRng;

use crate::clock::Timestamp;
use crate::identity::{DeviceId, ShareId, Username};
use crate::otp::card::CodeCard;
use crate::otp::ocra::Ocra;
use crate::otp::token::TokenAlgorithm;
use crate::otp::{HmacKey, MacOutput, SecretKey};
use crate::phone::PhoneNumber;
use crate::profile::{Check, DeviceKind, DeviceProfiles};
use crate::store::sealed::SecretCipher;
use crate::store::{Device, EnrollError, StoreError, Verifier};
use crate::wire::AuditRecord;
use crate::wire::codec::{Put, Reader};
use crate::wire::token::TokenInfo;

/// Version byte of the device record layout.
const RECORD_V1: u8 = 1;
/// The layout of an imported token's device: v1's fields, then the
/// token's description (serial, algorithm, starting counter). Other
/// devices keep v1, which earlier versions read.
const RECORD_V2: u8 = 2;
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
    /// An imported token's description (`DeviceKind::Token`).
    pub(super) token: Option<&'a TokenInfo>,
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
        token: Option<&TokenInfo>,
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
        let pin_hash = self
            .pin_hash(kind, pin, token)?
            .map(|hash| PinHash::new(hash.as_bytes()));
        // Build the verifier first: it checks the key against the kind.
        let verifier = self.verifier(kind, &secret, pin_hash, token)?;

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
            // RFC 4226 §4 recommends a key as long as the hash's output.
            Check::Totp { hash, .. } => Ok(hash.output_len()),
            Check::RandomCode(_) => Err(not_keyed(kind)),
            Check::Token { .. } => Err(EnrollError::Invalid(
                "a token's key comes from its vendor: import it and assign it by serial".into(),
            )),
        }
    }

    pub(super) fn pin_hash(
        &self,
        kind: DeviceKind,
        pin: Option<&str>,
        token: Option<&TokenInfo>,
    ) -> Result<Option<MacOutput>, EnrollError> {
        if let Check::Token { pin_digits } = &self.profiles.get(kind).check {
            let suite = match token.map(|t| &t.algorithm) {
                Some(TokenAlgorithm::Ocra { suite }) if suite.pin().is_some() => suite,
                _ if pin.is_some() => {
                    return Err(EnrollError::Invalid("this token takes no PIN".into()));
                }
                _ => return Ok(None),
            };
            let pin = pin.ok_or_else(|| {
                EnrollError::Invalid(format!("this token's suite {suite} needs its PIN"))
            })?;
            check_pin(kind, pin, *pin_digits)?;
            return Ok(suite.hash_pin(pin));
        }
        match (&self.profiles.get(kind).check, pin) {
            (
                Check::Ocra {
                    suite,
                    pin_digits: Some(digits),
                },
                Some(pin),
            ) => {
                check_pin(kind, pin, *digits)?;
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
        pin_hash: Option<PinHash>,
        token: Option<&TokenInfo>,
    ) -> Result<Verifier, EnrollError> {
        match &self.profiles.get(kind).check {
            Check::Token { .. } => {
                let token = token.ok_or_else(|| {
                    EnrollError::Invalid(
                        "a token is enrolled by assigning it (assign-token)".into(),
                    )
                })?;
                token_verifier(&token.algorithm, secret, pin_hash)
            }
            Check::Ocra { suite, .. } if suite.uses_counter() || suite.session_len().is_some() => {
                Err(EnrollError::Invalid(format!(
                    "the {kind} suite {suite} needs a counter (C) or session information (S), which login challenges do not carry"
                )))
            }
            Check::Ocra { suite, .. } => Ok(Verifier::Ocra {
                ocra: Ocra::new(Arc::clone(suite), secret),
                pin_hash,
            }),
            Check::Totp {
                hash, digits, step, ..
            } => Ok(Verifier::Totp {
                key: HmacKey::new(*hash, secret),
                digits: *digits,
                step: *step,
                origin: 0,
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
        if let Some(token) = new.token {
            if let Some(version) = out.first_mut() {
                *version = RECORD_V2;
            }
            token.put(&mut out);
        }
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
        let version = r.u8("version").map_err(|e| corrupt(&e.to_string()))?;
        if version != RECORD_V1 && version != RECORD_V2 {
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
        let token = match version {
            RECORD_V2 => Some(TokenInfo::read(&mut r).map_err(|e| corrupt(&e.to_string()))?),
            _ => None,
        };
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
                Some(PinHash::new(&hash))
            }
        };
        let verifier = self
            .verifier(kind, &secret, pin_hash, token.as_ref())
            .map_err(|e| corrupt(&e.to_string()))?;
        Ok(Device::new(
            id,
            user,
            kind,
            label,
            created,
            self.expiry(kind, created),
            verifier,
        )
        .with_token(token))
    }

    /// The end of a device's validity, if its kind has one.
    pub(super) fn expiry(&self, kind: DeviceKind, created: Timestamp) -> Option<Timestamp> {
        self.profiles
            .get(kind)
            .validity
            .map(|validity| created.plus(validity))
    }
}

impl DeviceCodec {
    /// A PIN chosen for `device` in place of its enrolment PIN, checked as
    /// an enrolment checks it, hashed and sealed.
    pub(in crate::store) fn changed_pin<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        device: &Device,
        pin: &str,
    ) -> Result<ChangedPin, EnrollError> {
        if !device.takes_pin() {
            return Err(EnrollError::Invalid(format!(
                "device {} takes no PIN",
                device.id
            )));
        }
        let hash = self
            .pin_hash(device.kind, Some(pin), device.token.as_deref())?
            .ok_or_else(|| EnrollError::Invalid("this device takes no PIN".into()))?;
        let sealed = self
            .cipher
            .seal(rng, hash.as_bytes(), &context(device.id, "changed-pin"))
            .map_err(StoreError::from)?;
        Ok(ChangedPin { hash, sealed })
    }

    /// Opens a changed PIN `changed_pin` sealed for `device`.
    pub(in crate::store) fn open_changed_pin(
        &self,
        device: DeviceId,
        sealed: &[u8],
    ) -> Option<MacOutput> {
        let hash = self
            .cipher
            .open(sealed, &context(device, "changed-pin"))
            .ok()?;
        Some(MacOutput::from_bytes(&hash))
    }
}

/// A rotation's re-seal of each kind of record that holds a sealed value:
/// the record with every sealed value in it opened and sealed again under
/// the active key, bound to the same context; `None` when each already
/// is under it (read from the value's header, nothing opened). Everything
/// else in the record stays byte for byte.
impl DeviceCodec {
    /// The keyring records are sealed under.
    pub fn keyring(&self) -> &SecretCipher {
        &self.cipher
    }

    /// A device record: its key and its PIN hash.
    pub(in crate::store) fn reseal_device<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        id: DeviceId,
        record: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let corrupt = |e: crate::wire::DecodeError| StoreError::Corrupt {
            device: id.0,
            problem: e.to_string(),
        };
        let mut r = Reader::new(record);
        let version = r.u8("version").map_err(corrupt)?;
        if version != RECORD_V1 && version != RECORD_V2 {
            return Err(corrupt(crate::wire::DecodeError::invalid(
                "version", "unknown",
            )));
        }
        r.bytes("user").map_err(corrupt)?;
        r.u8("kind").map_err(corrupt)?;
        r.bytes("label").map_err(corrupt)?;
        r.u64("created").map_err(corrupt)?;
        let head = record.get(..record.len() - r.rest().len()).unwrap_or(&[]);
        let secret = r.bytes("secret").map_err(corrupt)?;
        let pin = r.bytes("pin hash").map_err(corrupt)?;
        let new_secret = self.cipher.reseal(rng, secret, &context(id, "secret"))?;
        let new_pin = self.cipher.reseal(rng, pin, &context(id, "pin-hash"))?;
        if new_secret.is_none() && new_pin.is_none() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(record.len() + 16);
        out.extend_from_slice(head);
        out.put_bytes(new_secret.as_deref().unwrap_or(secret));
        out.put_bytes(new_pin.as_deref().unwrap_or(pin));
        out.extend_from_slice(r.rest());
        Ok(Some(out))
    }

    /// A device's verified number (kept sealed on its own).
    pub(in crate::store) fn reseal_phone<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        id: DeviceId,
        sealed: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.cipher.reseal(rng, sealed, &context(id, "phone"))?)
    }

    /// A device's lifecycle record: a changed PIN's hash. The lifecycle
    /// comes back too, for the copy held in memory (a later change writes
    /// that copy's sealed PIN back).
    pub(in crate::store) fn reseal_life<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        id: DeviceId,
        bytes: &[u8],
    ) -> Result<Option<(Vec<u8>, DeviceLife)>, StoreError> {
        // A changed PIN already under the active key is not opened: the
        // record is left as it is, and the stand-in is never used.
        let mut current = false;
        let decoded = decode_life(bytes, |sealed| {
            if self.cipher.needs_reseal(sealed) {
                return self.open_changed_pin(id, sealed);
            }
            current = true;
            Some(MacOutput::from_bytes(&[]))
        });
        let mut life = decoded.ok_or_else(|| StoreError::Corrupt {
            device: id.0,
            problem: "lifecycle record".into(),
        })?;
        if current || !self.reseal_changed_pin(rng, id, &mut life)? {
            return Ok(None);
        }
        Ok(Some((encode_life(&life), life)))
    }

    /// A lifecycle's changed PIN sealed again under the active key;
    /// whether it had to be.
    pub(in crate::store) fn reseal_changed_pin<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        id: DeviceId,
        life: &mut DeviceLife,
    ) -> Result<bool, StoreError> {
        let Some(pin) = life.pin.as_mut() else {
            return Ok(false);
        };
        let Some(sealed) = self
            .cipher
            .reseal(rng, &pin.sealed, &context(id, "changed-pin"))?
        else {
            return Ok(false);
        };
        pin.sealed = sealed;
        Ok(true)
    }

    /// A user record: the number on record.
    pub(in crate::store) fn reseal_user<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        user: &Username,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        // The header first: a record already under the active key (every
        // one, on a pass's last round) is not opened at all. One whose
        // fields do not read is decoded below, for its error.
        if let Some(number) = user_number_field(bytes)
            && (number.is_empty() || !self.cipher.needs_reseal(number))
        {
            return Ok(None);
        }
        let account = self.decode_user(user, bytes)?;
        self.encode_user(rng, user, &account).map(Some)
    }
}

/// The sealed number of a user record as it is stored.
fn user_number_field(bytes: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(bytes);
    r.u8("version").ok()?;
    r.u8("opted out").ok()?;
    r.bytes("residence").ok()?;
    r.bytes("identity").ok()?;
    r.bytes("number").ok()
}

/// A PIN of exactly `digits` decimal digits./// A PIN of exactly `digits` decimal digits.
fn check_pin(kind: DeviceKind, pin: &str, digits: u8) -> Result<(), EnrollError> {
    if pin.len() != usize::from(digits) || !pin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EnrollError::Invalid(format!(
            "a {kind} PIN is exactly {digits} digits"
        )));
    }
    Ok(())
}

/// How an imported token's answers are checked: its own algorithm.
fn token_verifier(
    algorithm: &TokenAlgorithm,
    secret: &SecretKey,
    pin_hash: Option<PinHash>,
) -> Result<Verifier, EnrollError> {
    Ok(match algorithm {
        TokenAlgorithm::Hotp { hash, digits } => Verifier::Hotp {
            key: HmacKey::new(*hash, secret),
            digits: *digits,
        },
        TokenAlgorithm::Totp {
            hash,
            digits,
            step,
            origin,
        } => Verifier::Totp {
            key: HmacKey::new(*hash, secret),
            digits: *digits,
            step: *step,
            origin: *origin,
        },
        TokenAlgorithm::Ocra { suite } if suite.session_len().is_some() => {
            return Err(EnrollError::Invalid(format!(
                "the suite {suite} needs session information (S), which login challenges do not carry"
            )));
        }
        TokenAlgorithm::Ocra { suite } => Verifier::Ocra {
            ocra: Ocra::new(Arc::clone(suite), secret),
            pin_hash,
        },
    })
}

fn not_keyed(kind: DeviceKind) -> EnrollError {
    EnrollError::Invalid(format!(
        "{kind} devices hold no key and are not enrolled this way (a verified number: EnrollPhone)"
    ))
}
// The lifecycle side's records (users, device lifecycles, shares, audit
// entries), the same on both backends.

impl DeviceCodec {
    /// The keyed digest of identification data: what sharing compares.
    /// Fields are compared as written, ignoring case and surrounding space.
    pub(in crate::store) fn identity_digest(
        &self,
        identity: &crate::wire::Identification,
    ) -> [u8; 32] {
        let norm = |text: &str| text.trim().to_uppercase();
        let fields = [
            norm(&identity.date_of_birth),
            norm(&identity.citizenship),
            norm(&identity.residence),
            norm(&identity.id_document),
        ];
        let parts: Vec<&[u8]> = fields.iter().map(|f| f.as_bytes()).collect();
        self.cipher.digest("sls/1 identification", &parts)
    }

    /// What an erased user's name becomes in the audit log: a keyed
    /// digest of the name, so entries of one person stay linkable to each
    /// other, and only someone holding the key file can tell whether a
    /// given name was erased.
    pub(in crate::store) fn pseudonym(&self, user: &Username) -> Username {
        let digest = self
            .cipher
            .digest("sls/1 erased user", &[user.as_str().as_bytes()]);
        let hex: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
        // Letters, digits and one dash: always a valid name.
        Username::new(&format!("erased-{hex}")).unwrap_or_else(|_| user.clone())
    }

    /// A user record as either store keeps it, the number sealed.
    pub(in crate::store) fn encode_user<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        user: &Username,
        record: &Account,
    ) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![1u8];
        out.put_u8(u8::from(record.opted_out));
        out.put_bytes(record.residence.as_ref().map_or(&[][..], |r| r.as_slice()));
        out.put_bytes(record.identity.as_ref().map_or(&[][..], |d| d.as_slice()));
        let sealed = match &record.number {
            Some(number) => self.cipher.seal(
                rng,
                number.to_string().as_bytes(),
                &user_context(user, "number"),
            )?,
            None => Vec::new(),
        };
        out.put_bytes(&sealed);
        Ok(out)
    }

    pub(in crate::store) fn decode_user(
        &self,
        user: &Username,
        bytes: &[u8],
    ) -> Result<Account, StoreError> {
        let corrupt = || StoreError::Corrupt {
            device: 0,
            problem: format!("user record of {user}"),
        };
        let mut r = Reader::new(bytes);
        if r.u8("version").ok() != Some(1) {
            return Err(corrupt());
        }
        let opted_out = r.u8("opted out").map_err(|_| corrupt())? != 0;
        let residence = match r.bytes("residence").map_err(|_| corrupt())? {
            [] => None,
            code => Some(code.try_into().map_err(|_| corrupt())?),
        };
        let identity = match r.bytes("identity").map_err(|_| corrupt())? {
            [] => None,
            digest => Some(digest.try_into().map_err(|_| corrupt())?),
        };
        let number = match r.bytes("number").map_err(|_| corrupt())? {
            [] => None,
            sealed => {
                let text = self.cipher.open(sealed, &user_context(user, "number"))?;
                let text = std::str::from_utf8(&text).map_err(|_| corrupt())?;
                Some(PhoneNumber::parse(text).map_err(|_| corrupt())?)
            }
        };
        r.finish().map_err(|_| corrupt())?;
        Ok(Account {
            residence,
            identity,
            opted_out,
            number,
        })
    }
}

fn user_context(user: &Username, what: &str) -> Vec<u8> {
    format!("sls/1 user {user} {what}").into_bytes()
}

/// Version 1: the last field is empty (it once held an app PIN digest);
/// version 2: it holds a changed PIN, sealed. Version 1 is still written
/// when no PIN changed, so nodes of the release before read it.
pub(in crate::store) fn encode_life(life: &DeviceLife) -> Vec<u8> {
    let mut out = vec![if life.pin.is_some() { 2u8 } else { 1 }];
    match &life.activation {
        Activation::Active => out.put_u8(0),
        Activation::Ordered { replaces } => {
            out.put_u8(1);
            out.put_u64(replaces.0);
        }
        Activation::Pending => out.put_u8(3),
        Activation::Shipped(shipment) => {
            out.put_u8(2);
            out.put_u64(shipment.replaces.0);
            out.put_u64(shipment.shipped_at.0);
            out.put_u64(shipment.activates_at.0);
        }
    }
    out.put_u64(life.uses_left.map_or(u64::MAX, u64::from));
    out.put_bytes(life.pin.as_ref().map_or(&[][..], |pin| &pin.sealed));
    out
}

/// A device's lifecycle state; `open` unseals a changed PIN's hash.
pub(in crate::store) fn decode_life(
    bytes: &[u8],
    open: impl FnOnce(&[u8]) -> Option<MacOutput>,
) -> Option<DeviceLife> {
    let mut r = Reader::new(bytes);
    let version = r.u8("version").ok()?;
    if version != 1 && version != 2 {
        return None;
    }
    let activation = match r.u8("activation").ok()? {
        0 => Activation::Active,
        1 => Activation::Ordered {
            replaces: DeviceId(r.u64("replaces").ok()?),
        },
        2 => Activation::Shipped(Box::new(Shipment {
            replaces: DeviceId(r.u64("replaces").ok()?),
            shipped_at: Timestamp(r.u64("shipped at").ok()?),
            activates_at: Timestamp(r.u64("activates at").ok()?),
        })),
        3 => Activation::Pending,
        _ => return None,
    };
    let uses_left = match r.u64("uses left").ok()? {
        u64::MAX => None,
        uses => Some(u32::try_from(uses).ok()?),
    };
    // Version 1: an app PIN digest an earlier version kept, dropped unread.
    let sealed = r.bytes("pin").ok()?;
    r.finish().ok()?;
    let pin = match (version, sealed) {
        (2, sealed) => Some(Box::new(ChangedPin {
            hash: open(sealed)?,
            sealed: sealed.to_vec(),
        })),
        _ => None,
    };
    Some(DeviceLife {
        activation,
        uses_left,
        pin,
    })
}

pub(in crate::store) fn encode_share(share: &Share) -> Vec<u8> {
    let mut out = vec![1u8];
    out.put_bytes(share.requester.as_str().as_bytes());
    out.put_bytes(share.owner.as_str().as_bytes());
    out.put_u64(share.device.0);
    out.put_u8(match share.state {
        ShareState::Pending => 0,
        ShareState::Active => 1,
    });
    out.put_u64(share.created.0);
    out
}

pub(in crate::store) fn decode_share(id: ShareId, bytes: &[u8]) -> Option<Share> {
    let mut r = Reader::new(bytes);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let requester = Username::new(r.str("requester").ok()?).ok()?;
    let owner = Username::new(r.str("owner").ok()?).ok()?;
    let device = DeviceId(r.u64("device").ok()?);
    let state = match r.u8("state").ok()? {
        0 => ShareState::Pending,
        1 => ShareState::Active,
        _ => return None,
    };
    let created = Timestamp(r.u64("created").ok()?);
    r.finish().ok()?;
    Some(Share {
        id,
        requester,
        owner,
        device,
        state,
        created,
    })
}

/// The audit action of an erasure, whose entry names the pseudonym.
pub(crate) const ERASE_ACTION: &str = "erase";

/// Whether `entry` is the erasure that gave `pseudonym`: the entries
/// before it that name the user are rewritten, those after it are of
/// someone given the name since.
pub(in crate::store) fn is_erasure_of(entry: &AuditRecord, pseudonym: &Username) -> bool {
    entry.action == ERASE_ACTION && entry.user.as_ref() == Some(pseudonym)
}

/// `entry` with `user` replaced by `pseudonym`, if it names them: as its
/// user, or as a whole name in its detail ("owner alice, share 7"); the
/// one rule both stores rewrite their audit logs by (an erasure).
pub(in crate::store) fn pseudonymized(
    entry: &AuditRecord,
    user: &Username,
    pseudonym: &Username,
) -> Option<AuditRecord> {
    let named = entry.user.as_ref() == Some(user);
    let detail = replace_name(&entry.detail, user.as_str(), pseudonym.as_str());
    if !named && detail.is_none() {
        return None;
    }
    Some(AuditRecord {
        user: if named {
            Some(pseudonym.clone())
        } else {
            entry.user.clone()
        },
        detail: detail.unwrap_or_else(|| entry.detail.clone()),
        ..entry.clone()
    })
}

/// `text` with every whole occurrence of `name` (not part of a longer
/// name: no name character either side) replaced by `with`; `None` when
/// there is none.
fn replace_name(text: &str, name: &str, with: &str) -> Option<String> {
    let part_of_a_name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    let mut out = String::with_capacity(text.len());
    let mut replaced = false;
    let mut from = 0;
    for (at, _) in text.match_indices(name) {
        let end = at + name.len();
        let before = text.get(..at).and_then(|t| t.chars().next_back());
        let after = text.get(end..).and_then(|t| t.chars().next());
        if at < from || before.is_some_and(part_of_a_name) || after.is_some_and(part_of_a_name) {
            continue;
        }
        out.push_str(text.get(from..at).unwrap_or_default());
        out.push_str(with);
        from = end;
        replaced = true;
    }
    out.push_str(text.get(from..).unwrap_or_default());
    replaced.then_some(out)
}

pub(in crate::store) fn encode_audit(entry: &AuditRecord) -> Vec<u8> {
    let mut out = vec![1u8];
    out.put_u64(entry.at.0);
    out.put_bytes(entry.actor.as_bytes());
    out.put_bytes(entry.action.as_bytes());
    out.put_bytes(entry.user.as_ref().map_or("", Username::as_str).as_bytes());
    out.put_u64(entry.device.map_or(0, |d| d.0));
    out.put_bytes(entry.detail.as_bytes());
    out
}

pub(in crate::store) fn decode_audit(seq: u64, bytes: &[u8]) -> Option<AuditRecord> {
    let mut r = Reader::new(bytes);
    if r.u8("version").ok()? != 1 {
        return None;
    }
    let at = Timestamp(r.u64("at").ok()?);
    let actor = r.str("actor").ok()?.to_owned();
    let action = r.str("action").ok()?.to_owned();
    let user = match r.str("user").ok()? {
        "" => None,
        name => Some(Username::new(name).ok()?),
    };
    let device = match r.u64("device").ok()? {
        0 => None,
        id => Some(DeviceId(id)),
    };
    let detail = r.str("detail").ok()?.to_owned();
    r.finish().ok()?;
    Some(AuditRecord {
        seq,
        at,
        actor,
        action,
        user,
        device,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Every kind of record that holds a sealed value comes back from a
    /// rotation's re-seal under the new key alone, reading as it read
    /// before; one already under it is left as it is.
    #[test]
    fn a_reseal_moves_each_sealed_value_to_the_active_key_and_keeps_the_rest() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
        let cipher = SecretCipher::new(&[3; 32]);
        let codec = DeviceCodec::new(cipher.clone(), DeviceProfiles::defaults().unwrap());
        let jdoe = Username::new("jdoe").unwrap();
        let id = DeviceId(7);

        let (secret, _, verifier) = codec
            .prepare(&mut rng, DeviceKind::DscPlus, None, Some("1234"), None)
            .unwrap();
        let stored = Stored {
            user: &jdoe,
            kind: DeviceKind::DscPlus,
            label: "card",
            now: Timestamp(5),
            secret: Some(&secret),
            token: None,
        };
        let device = codec
            .encode_device(&mut rng, id, &stored, &verifier)
            .unwrap();
        let number = PhoneNumber::parse("+41 791234567").unwrap();
        let phone = codec.seal_phone(&mut rng, id, &number).unwrap();
        let account = Account {
            residence: Some(*b"CH"),
            identity: Some([4; 32]),
            opted_out: false,
            number: Some(number.clone()),
        };
        let user = codec.encode_user(&mut rng, &jdoe, &account).unwrap();
        let hash = MacOutput::from_bytes(&[6; 32]);
        let life = DeviceLife {
            pin: Some(Box::new(ChangedPin {
                sealed: cipher
                    .seal(&mut rng, hash.as_bytes(), &context(id, "changed-pin"))
                    .unwrap(),
                hash,
            })),
            ..DeviceLife::default()
        };
        let life = encode_life(&life);
        // Before any rotation there is nothing to do.
        assert!(
            codec
                .reseal_device(&mut rng, id, &device)
                .unwrap()
                .is_none()
        );

        cipher.rotate(&mut rng).unwrap();
        let new_device = codec.reseal_device(&mut rng, id, &device).unwrap().unwrap();
        let new_phone = codec.reseal_phone(&mut rng, id, &phone).unwrap().unwrap();
        let new_user = codec.reseal_user(&mut rng, &jdoe, &user).unwrap().unwrap();
        let (new_life, _) = codec.reseal_life(&mut rng, id, &life).unwrap().unwrap();
        assert!(
            codec
                .reseal_device(&mut rng, id, &new_device)
                .unwrap()
                .is_none()
        );
        assert!(
            codec
                .reseal_phone(&mut rng, id, &new_phone)
                .unwrap()
                .is_none()
        );
        assert!(
            codec
                .reseal_user(&mut rng, &jdoe, &new_user)
                .unwrap()
                .is_none()
        );
        assert!(
            codec
                .reseal_life(&mut rng, id, &new_life)
                .unwrap()
                .is_none()
        );

        let before = codec.decode_device(id, &device, None).unwrap();
        cipher.retire().unwrap();
        // The old records no longer open; the new ones read as before.
        assert!(codec.decode_device(id, &device, None).is_err());
        assert!(codec.open_phone(id, &phone).is_err());
        assert!(codec.decode_user(&jdoe, &user).is_err());
        let after = codec.decode_device(id, &new_device, None).unwrap();
        assert_eq!(
            (&after.user, after.kind, &after.label, after.created),
            (&before.user, before.kind, &before.label, before.created)
        );
        assert!(matches!(
            after.verifier,
            Verifier::Ocra {
                pin_hash: Some(_),
                ..
            }
        ));
        assert_eq!(codec.open_phone(id, &new_phone).unwrap(), number);
        assert!(codec.decode_user(&jdoe, &new_user).unwrap() == account);
        let opened = decode_life(&new_life, |s| codec.open_changed_pin(id, s)).unwrap();
        assert_eq!(opened.pin.unwrap().hash.as_bytes(), [6; 32]);
    }

    #[test]
    fn an_erased_name_is_replaced_where_it_stands_alone() {
        let ann = Username::new("ann").unwrap();
        let erased = Username::new("erased-00").unwrap();
        let entry = |user: &str, detail: &str| AuditRecord {
            seq: 3,
            at: Timestamp(5),
            actor: "admin".into(),
            action: "share-active".into(),
            user: Username::new(user).ok(),
            device: None,
            detail: detail.into(),
        };
        let rewritten = pseudonymized(&entry("ann", "owner bob, share 1"), &ann, &erased).unwrap();
        assert_eq!(rewritten.user, Some(erased.clone()));
        assert_eq!(rewritten.detail, "owner bob, share 1");
        assert_eq!(rewritten.seq, 3);
        let rewritten = pseudonymized(&entry("bob", "owner ann, share 1"), &ann, &erased).unwrap();
        assert_eq!(rewritten.user, Username::new("bob").ok());
        assert_eq!(rewritten.detail, "owner erased-00, share 1");
        // Names that only contain hers are someone else's.
        for detail in ["owner anna, share 1", "owner jo.ann", "hannah", "ann-marie"] {
            assert_eq!(
                pseudonymized(&entry("bob", detail), &ann, &erased),
                None,
                "{detail}"
            );
        }
        assert_eq!(
            replace_name("ann, ann and anna", "ann", "x").as_deref(),
            Some("x, x and anna")
        );
    }

    #[test]
    fn records_round_trip() {
        let life = DeviceLife {
            activation: Activation::Shipped(Box::new(Shipment {
                replaces: DeviceId(4),
                shipped_at: Timestamp(10),
                activates_at: Timestamp(20),
            })),
            uses_left: Some(3),
            pin: None,
        };
        let never = |_: &[u8]| -> Option<MacOutput> { unreachable!("no PIN to open") };
        assert_eq!(decode_life(&encode_life(&life), never), Some(life.clone()));
        // A changed PIN is kept sealed, and opened as it is read.
        let changed = DeviceLife {
            pin: Some(Box::new(ChangedPin {
                hash: MacOutput::from_bytes(b"hash"),
                sealed: b"sealed".to_vec(),
            })),
            ..life
        };
        let encoded = encode_life(&changed);
        assert!(!encoded.windows(4).any(|w| w == b"hash"));
        let opened = decode_life(&encoded, |sealed| {
            (sealed == b"sealed").then(|| MacOutput::from_bytes(b"hash"))
        })
        .unwrap();
        assert_eq!(opened, changed);
        assert_eq!(opened.pin.unwrap().hash.as_bytes(), b"hash");
        // One that does not open: the record does not read.
        assert_eq!(decode_life(&encoded, |_| None), None);
        let share = Share {
            id: ShareId(7),
            requester: Username::new("amy").unwrap(),
            owner: Username::new("bob").unwrap(),
            device: DeviceId(3),
            state: ShareState::Pending,
            created: Timestamp(5),
        };
        assert_eq!(decode_share(ShareId(7), &encode_share(&share)), Some(share));
        let entry = AuditRecord {
            seq: 1,
            at: Timestamp(1),
            actor: "admin".into(),
            action: "enroll".into(),
            user: Username::new("amy").ok(),
            device: Some(DeviceId(2)),
            detail: "dsc-plus".into(),
        };
        assert_eq!(decode_audit(1, &encode_audit(&entry)), Some(entry));
        assert_eq!(decode_life(&[3], never), None);
        assert_eq!(decode_share(ShareId(1), &[1, 0]), None);
    }
}
