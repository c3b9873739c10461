//! Device kinds as data: what each kind of second factor is, how sls checks
//! it, how much it is trusted, and how much money it may move.
//!
//! The defaults live in `defaults.toml` beside this file (compiled in);
//! configuration overrides any key of any kind, and the result is parsed
//! once into typed [`DeviceProfile`]s (suites parsed, alphabets checked).
//! Nothing here does I/O: the caller hands in the override table.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::otp::HashAlgorithm;
use crate::otp::card::{self, CardError};
use crate::otp::generate::{Alphabet, CodeSpec, GenerateError};
use crate::otp::hotp::Digits;
use crate::otp::ocra::{Suite, SuiteError};
use crate::otp::totp::TimeStep;

const DEFAULTS: &str = include_str!("defaults.toml");

/// The kinds of second-factor device the Secure Login System knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceKind {
    DscPlus,
    Scc,
    OnlineScc,
    IbKey,
    Sms,
    Temporary,
    LegacyDsc,
    Gold,
    Platinum,
    /// A hardware token imported from its vendor's file and assigned by
    /// serial: its algorithm is each token's own.
    Token,
    /// Any authenticator app (RFC 6238 TOTP), enrolled by an `otpauth://`
    /// URI or its QR code.
    TotpApp,
}

impl DeviceKind {
    /// Kinds a person holds in their hand (cards and tokens), as opposed
    /// to the phone app, SMS and codes or cards issued online.
    pub fn is_physical(self) -> bool {
        matches!(
            self,
            Self::DscPlus | Self::Scc | Self::LegacyDsc | Self::Gold | Self::Platinum | Self::Token
        )
    }

    pub const ALL: [Self; 11] = [
        Self::DscPlus,
        Self::Scc,
        Self::OnlineScc,
        Self::IbKey,
        Self::Sms,
        Self::Temporary,
        Self::LegacyDsc,
        Self::Gold,
        Self::Platinum,
        Self::Token,
        Self::TotpApp,
    ];

    /// The kind's number on the wire (see PROTOCOL.md).
    pub fn code(self) -> u8 {
        match self {
            Self::DscPlus => 1,
            Self::Scc => 2,
            Self::OnlineScc => 3,
            Self::IbKey => 4,
            Self::Sms => 5,
            Self::Temporary => 6,
            Self::LegacyDsc => 7,
            Self::Gold => 8,
            Self::Platinum => 9,
            Self::Token => 10,
            Self::TotpApp => 11,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.code() == code)
    }

    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DscPlus => "dsc-plus",
            Self::Scc => "scc",
            Self::OnlineScc => "online-scc",
            Self::IbKey => "ib-key",
            Self::Sms => "sms",
            Self::Temporary => "temporary",
            Self::LegacyDsc => "legacy-dsc",
            Self::Gold => "gold",
            Self::Platinum => "platinum",
            Self::Token => "token",
            Self::TotpApp => "totp-app",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device kind name that is not one of [`DeviceKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown device kind {0:?} (expected dsc-plus, scc, online-scc, ib-key, sms, temporary, legacy-dsc, gold, platinum, token or totp-app)"
)]
pub struct UnknownKind(pub String);

impl FromStr for DeviceKind {
    type Err = UnknownKind;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

/// How far a device is trusted; ordered from least to most secure.
///
/// Sharing a physical device requires it to be the most secure among the
/// users' devices, so this order is policy, not decoration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityLevel {
    Temporary,
    Lowest,
    Low,
    High,
    Highest,
}

impl SecurityLevel {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Temporary => "temporary",
            Self::Lowest => "lowest",
            Self::Low => "low",
            Self::High => "high",
            Self::Highest => "highest",
        }
    }
}

impl fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How sls checks an answer from a device of this kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// OCRA challenge/response; `pin_digits` is the PIN length the device
    /// takes when the suite binds a PIN.
    Ocra {
        suite: Arc<Suite>,
        pin_digits: Option<u8>,
    },
    /// A security code card with this many positions.
    CodeCard { positions: u16 },
    /// A code sls generates and delivers (SMS) or hands out (temporary).
    RandomCode(CodeSpec),
    /// An imported token's own algorithm (HOTP, TOTP or OCRA, from its
    /// vendor's file); `pin_digits` is the PIN length of OCRA suites that
    /// bind one.
    Token { pin_digits: u8 },
    /// RFC 6238 codes from an authenticator app: the parameters written
    /// into its `otpauth://` URI (the ones every app honours by default
    /// are SHA1, 6 digits, 30 s) and the issuer the app shows.
    Totp {
        hash: HashAlgorithm,
        digits: Digits,
        step: TimeStep,
        issuer: String,
    },
}

/// A withdrawal limit in USD; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawalLimit {
    pub per_day: Option<u64>,
    pub per_five_business_days: Option<u64>,
}

/// Everything sls knows about one device kind.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfile {
    pub kind: DeviceKind,
    /// The name users see ("Digital Security Card+").
    pub name: String,
    pub security: SecurityLevel,
    pub check: Check,
    pub withdrawal_limit: WithdrawalLimit,
    /// How long a device of this kind stays usable after activation.
    pub validity: Option<Duration>,
    /// Whether new devices of this kind are still handed out.
    pub issued: bool,
    /// The shortest key an enrolment may bring (default 16 bytes, 128 bits:
    /// RFC 4226 §4 requires it and recommends 160).
    pub min_key_bytes: usize,
}

/// The shortest enrolled key unless a profile says otherwise: 128 bits.
pub const MIN_KEY_BYTES: usize = 16;

/// A profile that cannot be used, named by its configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("built-in device profiles do not parse: {0}")]
    Defaults(String),
    #[error("devices: {0}")]
    UnknownKind(UnknownKind),
    #[error("devices.{kind}: {problem}")]
    Invalid { kind: DeviceKind, problem: String },
    #[error("devices.{kind}.check.suite: {0}", kind = .1)]
    Suite(SuiteError, DeviceKind),
    #[error("devices.{kind}.check.positions: {0}", kind = .1)]
    Card(CardError, DeviceKind),
    #[error("devices.{kind}.check: {0}", kind = .1)]
    Code(GenerateError, DeviceKind),
    #[error("devices.{kind}.check.pin-digits: must be 4..=8 on a suite with a PIN (P), absent otherwise", kind = .0)]
    PinDigits(DeviceKind),
}

/// The profiles of every device kind.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProfiles(BTreeMap<DeviceKind, DeviceProfile>);

impl DeviceProfiles {
    /// The compiled-in defaults.
    pub fn defaults() -> Result<Self, ProfileError> {
        Self::with_overrides(&toml::Table::new())
    }

    /// The defaults with `overrides` (the `[devices]` table of the
    /// configuration) merged over them key by key. A `check` table that
    /// names its `method` replaces the default check whole.
    pub fn with_overrides(overrides: &toml::Table) -> Result<Self, ProfileError> {
        // Compiled in and covered by tests; the error is a build defect.
        let mut table: toml::Table = DEFAULTS
            .parse()
            .map_err(|error: toml::de::Error| ProfileError::Defaults(error.message().to_owned()))?;
        for (name, value) in overrides {
            name.parse::<DeviceKind>()
                .map_err(ProfileError::UnknownKind)?;
            merge(&mut table, name, value);
        }
        let mut profiles = BTreeMap::new();
        for kind in DeviceKind::ALL {
            let value = table.remove(kind.as_str()).ok_or(ProfileError::Invalid {
                kind,
                problem: "missing profile".into(),
            })?;
            let raw: RawProfile =
                value
                    .try_into()
                    .map_err(|error: toml::de::Error| ProfileError::Invalid {
                        kind,
                        problem: error.message().to_owned(),
                    })?;
            profiles.insert(kind, raw.into_profile(kind)?);
        }
        Ok(Self(profiles))
    }

    pub fn get(&self, kind: DeviceKind) -> &DeviceProfile {
        // Construction inserts every kind of `DeviceKind::ALL`.
        match self.0.get(&kind) {
            Some(profile) => profile,
            None => unreachable_profile(kind),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &DeviceProfile> {
        self.0.values()
    }
}

#[allow(clippy::panic)] // `with_overrides` inserts all kinds or fails
fn unreachable_profile(kind: DeviceKind) -> ! {
    panic!("device profiles built without {kind}")
}

/// Merges `value` into `table[key]`: tables recursively, anything else by
/// replacement; a table with a `method` key replaces whole.
fn merge(table: &mut toml::Table, key: &str, value: &toml::Value) {
    match (table.get_mut(key), value) {
        (Some(toml::Value::Table(existing)), toml::Value::Table(update))
            if !update.contains_key("method") =>
        {
            for (inner_key, inner_value) in update {
                merge(existing, inner_key, inner_value);
            }
        }
        _ => {
            table.insert(key.to_owned(), value.clone());
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawProfile {
    name: String,
    security: SecurityLevel,
    issued: bool,
    #[serde(default, with = "humantime_serde")]
    validity: Option<Duration>,
    check: RawCheck,
    withdrawal_limit: RawLimit,
    #[serde(default)]
    min_key_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case", deny_unknown_fields)]
enum RawCheck {
    Ocra {
        suite: String,
        #[serde(default, rename = "pin-digits")]
        pin_digits: Option<u8>,
    },
    CodeCard {
        positions: u16,
    },
    RandomCode {
        length: usize,
        alphabet: String,
    },
    Token {
        #[serde(rename = "pin-digits")]
        pin_digits: u8,
    },
    Totp {
        hash: String,
        digits: u32,
        #[serde(with = "humantime_serde")]
        step: Duration,
        issuer: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawLimit {
    per_day: Amount,
    per_five_business_days: Amount,
}

/// A USD amount, or the word "unlimited".
struct Amount(Option<u64>);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole USD amount or \"unlimited\"")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Amount, E> {
                u64::try_from(value)
                    .map(|v| Amount(Some(v)))
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(value), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Amount, E> {
                Ok(Amount(Some(value)))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Amount, E> {
                match value {
                    "unlimited" => Ok(Amount(None)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(value), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl RawProfile {
    fn into_profile(self, kind: DeviceKind) -> Result<DeviceProfile, ProfileError> {
        let check = match self.check {
            RawCheck::Ocra { suite, pin_digits } => {
                let suite: Suite = suite.parse().map_err(|e| ProfileError::Suite(e, kind))?;
                match (suite.pin(), pin_digits) {
                    (Some(_), Some(4..=8)) | (None, None) => {}
                    _ => return Err(ProfileError::PinDigits(kind)),
                }
                Check::Ocra {
                    suite: Arc::new(suite),
                    pin_digits,
                }
            }
            RawCheck::CodeCard { positions } => {
                if !(2..=card::MAX_POSITIONS).contains(&positions) {
                    return Err(ProfileError::Card(CardError::Positions(positions), kind));
                }
                Check::CodeCard { positions }
            }
            RawCheck::Token { pin_digits } => {
                if !(4..=8).contains(&pin_digits) {
                    return Err(ProfileError::PinDigits(kind));
                }
                Check::Token { pin_digits }
            }
            RawCheck::Totp {
                hash,
                digits,
                step,
                issuer,
            } => {
                let invalid = |problem: String| ProfileError::Invalid { kind, problem };
                let hash = hash.parse().map_err(|_| {
                    invalid(format!("check.hash {hash:?} is not SHA1, SHA256 or SHA512"))
                })?;
                let digits =
                    Digits::new(digits).map_err(|e| invalid(format!("check.digits: {e}")))?;
                let step = TimeStep::new(step).map_err(|e| invalid(format!("check.step: {e}")))?;
                if issuer.is_empty() || issuer.len() > 64 || issuer.contains(':') {
                    return Err(invalid(
                        "check.issuer: 1 to 64 bytes, without ':' (it separates issuer and account in the URI)".into(),
                    ));
                }
                Check::Totp {
                    hash,
                    digits,
                    step,
                    issuer,
                }
            }
            RawCheck::RandomCode { length, alphabet } => {
                let code = |e| ProfileError::Code(e, kind);
                let alphabet = Alphabet::new(&alphabet).map_err(code)?;
                Check::RandomCode(CodeSpec::new(alphabet, length).map_err(code)?)
            }
        };
        let min_key_bytes = self.min_key_bytes.unwrap_or(MIN_KEY_BYTES);
        if !(1..=64).contains(&min_key_bytes) {
            return Err(ProfileError::Invalid {
                kind,
                problem: "min-key-bytes must be 1..=64".into(),
            });
        }
        Ok(DeviceProfile {
            kind,
            min_key_bytes,
            name: self.name,
            security: self.security,
            check,
            withdrawal_limit: WithdrawalLimit {
                per_day: self.withdrawal_limit.per_day.0,
                per_five_business_days: self.withdrawal_limit.per_five_business_days.0,
            },
            validity: self.validity,
            issued: self.issued,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_match_the_reference_pages() {
        let profiles = DeviceProfiles::defaults().unwrap();
        let dsc = profiles.get(DeviceKind::DscPlus);
        match &dsc.check {
            Check::Ocra { suite, pin_digits } => {
                assert_eq!(suite.as_str(), "OCRA-1:HOTP-SHA256-8:QN06-PSHA1");
                assert_eq!(*pin_digits, Some(4));
            }
            other => panic!("DSC+ checks by OCRA, not {other:?}"),
        }
        assert_eq!(dsc.withdrawal_limit.per_day, None);
        assert_eq!(
            profiles.get(DeviceKind::Scc).check,
            Check::CodeCard { positions: 224 }
        );
        let limit = |kind| profiles.get(kind).withdrawal_limit;
        assert_eq!(limit(DeviceKind::Scc).per_day, Some(200_000));
        assert_eq!(limit(DeviceKind::Scc).per_five_business_days, Some(600_000));
        assert_eq!(limit(DeviceKind::IbKey).per_day, Some(1_000_000));
        assert_eq!(
            limit(DeviceKind::LegacyDsc).per_five_business_days,
            Some(1_500_000)
        );
        for kind in [DeviceKind::DscPlus, DeviceKind::Gold, DeviceKind::Platinum] {
            assert_eq!(
                limit(kind),
                WithdrawalLimit {
                    per_day: None,
                    per_five_business_days: None
                }
            );
        }
        assert_eq!(
            profiles.get(DeviceKind::OnlineScc).validity,
            Some(Duration::from_secs(21 * 24 * 3600))
        );
        assert!(!profiles.get(DeviceKind::Gold).issued);
        assert_eq!(profiles.iter().count(), DeviceKind::ALL.len());
    }

    #[test]
    fn security_levels_order_from_temporary_to_highest() {
        let profiles = DeviceProfiles::defaults().unwrap();
        let level = |kind| profiles.get(kind).security;
        assert!(level(DeviceKind::DscPlus) > level(DeviceKind::IbKey));
        assert!(level(DeviceKind::IbKey) > level(DeviceKind::Sms));
        assert!(level(DeviceKind::Sms) > level(DeviceKind::Scc));
        assert!(level(DeviceKind::Scc) > level(DeviceKind::Temporary));
    }

    #[test]
    fn configuration_overrides_single_keys() {
        let profiles = DeviceProfiles::with_overrides(&overrides(
            r#"
            ib-key.withdrawal-limit = { per-day = 200000, per-five-business-days = 600000 }
            scc.check.positions = 300
            sms.check = { method = "random-code", length = 8, alphabet = "0123456789ABCDEF" }
            "#,
        ))
        .unwrap();
        assert_eq!(
            profiles.get(DeviceKind::IbKey).withdrawal_limit.per_day,
            Some(200_000)
        );
        assert_eq!(profiles.get(DeviceKind::IbKey).name, "IB Key");
        assert_eq!(
            profiles.get(DeviceKind::Scc).check,
            Check::CodeCard { positions: 300 }
        );
        match &profiles.get(DeviceKind::Sms).check {
            Check::RandomCode(spec) => {
                assert_eq!(spec.length(), 8);
                assert_eq!(spec.alphabet().as_str(), "0123456789ABCDEF");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_overrides_name_the_key_and_the_problem() {
        let error = |text: &str| {
            DeviceProfiles::with_overrides(&overrides(text))
                .unwrap_err()
                .to_string()
        };
        assert!(
            error("yubikey.name = 'x'").starts_with("devices: unknown device kind \"yubikey\"")
        );
        let e = error("dsc-plus.check.suite = 'OCRA-1:HOTP-SHA256-8:QN06-PMD5'");
        assert!(
            e.starts_with("devices.dsc-plus.check.suite: PIN hash \"PMD5\""),
            "{e}"
        );
        let e = error("scc.check.positions = 1");
        assert!(e.starts_with("devices.scc.check.positions:"), "{e}");
        let e = error("scc.check.positon = 100");
        assert!(
            e.starts_with("devices.scc:") && e.contains("positon"),
            "{e}"
        );
        let e = error("sms.check.alphabet = '0011'");
        assert!(
            e.starts_with("devices.sms.check: alphabet has '0' twice"),
            "{e}"
        );
        let e = error("gold.withdrawal-limit.per-day = 'lots'");
        assert!(
            e.starts_with("devices.gold:") && e.contains("unlimited"),
            "{e}"
        );
        let e = error("gold.withdrawal-limit.per-day = -5");
        assert!(e.starts_with("devices.gold:"), "{e}");
        let e = error("dsc-plus.check.pin-digits = 3");
        assert!(e.starts_with("devices.dsc-plus.check.pin-digits"), "{e}");
        let e = error("ib-key.check.pin-digits = 4");
        assert!(e.starts_with("devices.ib-key.check.pin-digits"), "{e}");
        let e = error("temporary.validity = 'soon'");
        assert!(e.starts_with("devices.temporary:"), "{e}");
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in DeviceKind::ALL {
            assert_eq!(kind.as_str().parse::<DeviceKind>(), Ok(kind));
        }
        assert!("DSC+".parse::<DeviceKind>().is_err());
    }
}
