//! A hardware token as the protocol and the stores write it: its serial,
//! algorithm and parameters, starting counter, validity and vendor. The
//! key travels beside it (in `ImportTokens`, in clear over TLS; in a
//! store, sealed), never inside this description.

use std::sync::Arc;
use std::time::Duration;

use super::DecodeError;
use super::codec::{Put, Reader};
use crate::clock::Timestamp;
use crate::identity::{DeviceId, Serial, Username};
use crate::otp::HashAlgorithm;
use crate::otp::hotp::Digits;
use crate::otp::token::TokenAlgorithm;
use crate::otp::totp::TimeStep;

/// What describes a token apart from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub serial: Serial,
    pub algorithm: TokenAlgorithm,
    /// The event counter it starts at (HOTP, OCRA with `C`).
    pub counter: u64,
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
    /// At most 64 characters.
    pub manufacturer: String,
}

/// Where a token stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    /// In the inventory, waiting for an operator to assign it.
    Unassigned,
    /// Enrolled as `device` of `user`.
    Assigned { user: Username, device: DeviceId },
    /// Out of use for good (lost, broken, or revoked after assignment:
    /// its key may be in other hands).
    Retired { at: Timestamp },
}

impl TokenState {
    /// `unassigned`, `assigned` or `retired`: what listings filter on.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unassigned => "unassigned",
            Self::Assigned { .. } => "assigned",
            Self::Retired { .. } => "retired",
        }
    }

    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        match self {
            Self::Unassigned => out.put_u8(0),
            Self::Assigned { user, device } => {
                out.put_u8(1);
                out.put_bytes(user.as_str().as_bytes());
                out.put_u64(device.0);
            }
            Self::Retired { at } => {
                out.put_u8(2);
                out.put_u64(at.0);
            }
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("token state")? {
            0 => Self::Unassigned,
            1 => Self::Assigned {
                user: Username::new(r.str("user")?)
                    .map_err(|e| DecodeError::invalid("user", e.to_string()))?,
                device: DeviceId(r.u64("device")?),
            },
            2 => Self::Retired {
                at: Timestamp(r.u64("retired at")?),
            },
            other => {
                return Err(DecodeError::invalid(
                    "token state",
                    format!("{other} is not 0, 1 or 2"),
                ));
            }
        })
    }
}

/// A token as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub info: TokenInfo,
    pub state: TokenState,
    pub imported_at: Timestamp,
}

impl TokenEntry {
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        self.info.put(out);
        self.state.put(out);
        out.put_u64(self.imported_at.0);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            info: TokenInfo::read(r)?,
            state: TokenState::read(r)?,
            imported_at: Timestamp(r.u64("imported at")?),
        })
    }
}

/// A token to import: its description and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub info: TokenInfo,
    pub key: crate::otp::SecretKey,
}

/// Which tokens a listing shows: by state, and by serial range
/// (inclusive, serials compared as written).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFilter {
    /// `unassigned`, `assigned` or `retired` ([`TokenState::name`]);
    /// every state when `None`.
    pub state: Option<&'static str>,
    pub from: Option<Serial>,
    pub to: Option<Serial>,
}

/// The states a filter may name.
pub const TOKEN_STATES: [&str; 3] = ["unassigned", "assigned", "retired"];

impl TokenFilter {
    pub fn matches(&self, serial: &Serial, state: &TokenState) -> bool {
        self.state.is_none_or(|s| s == state.name())
            && self.from.as_ref().is_none_or(|from| serial >= from)
            && self.to.as_ref().is_none_or(|to| serial <= to)
    }

    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        out.put_bytes(self.state.unwrap_or("").as_bytes());
        out.put_bytes(self.from.as_ref().map_or("", Serial::as_str).as_bytes());
        out.put_bytes(self.to.as_ref().map_or("", Serial::as_str).as_bytes());
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let state = match r.str("state")? {
            "" => None,
            name => Some(
                TOKEN_STATES
                    .into_iter()
                    .find(|s| *s == name)
                    .ok_or_else(|| {
                        DecodeError::invalid(
                            "state",
                            format!("{name:?} is not unassigned, assigned or retired"),
                        )
                    })?,
            ),
        };
        Ok(Self {
            state,
            from: optional_serial(r, "serial from")?,
            to: optional_serial(r, "serial to")?,
        })
    }
}

/// A serial.
pub(crate) fn serial(r: &mut Reader<'_>, field: &'static str) -> Result<Serial, DecodeError> {
    Serial::new(r.str(field)?).map_err(|e| DecodeError::invalid(field, e.to_string()))
}

/// A serial, or none when empty.
pub(crate) fn optional_serial(
    r: &mut Reader<'_>,
    field: &'static str,
) -> Result<Option<Serial>, DecodeError> {
    match r.str(field)? {
        "" => Ok(None),
        text => Serial::new(text)
            .map(Some)
            .map_err(|e| DecodeError::invalid(field, e.to_string())),
    }
}

const HOTP: u8 = 1;
const TOTP: u8 = 2;
const OCRA: u8 = 3;

impl TokenInfo {
    pub(crate) fn put(&self, out: &mut Vec<u8>) {
        out.put_bytes(self.serial.as_str().as_bytes());
        put_algorithm(&self.algorithm, out);
        out.put_u64(self.counter);
        out.put_u64(self.valid_from.map_or(0, |t| t.0));
        out.put_u64(self.valid_until.map_or(0, |t| t.0));
        out.put_bytes(self.manufacturer.as_bytes());
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let serial = Serial::new(r.str("serial")?)
            .map_err(|e| DecodeError::invalid("serial", e.to_string()))?;
        let algorithm = read_algorithm(r)?;
        let counter = r.u64("counter")?;
        let when = |millis| (millis != 0).then_some(Timestamp(millis));
        let valid_from = when(r.u64("valid from")?);
        let valid_until = when(r.u64("valid until")?);
        let manufacturer = r.str("manufacturer")?;
        if manufacturer.chars().count() > 64 {
            return Err(DecodeError::invalid(
                "manufacturer",
                "longer than 64 characters",
            ));
        }
        Ok(Self {
            serial,
            algorithm,
            counter,
            valid_from,
            valid_until,
            manufacturer: manufacturer.to_owned(),
        })
    }
}

fn put_algorithm(algorithm: &TokenAlgorithm, out: &mut Vec<u8>) {
    match algorithm {
        TokenAlgorithm::Hotp { hash, digits } => {
            out.put_u8(HOTP);
            out.put_bytes(hash.as_str().as_bytes());
            out.put_u8(digits.get());
        }
        TokenAlgorithm::Totp {
            hash,
            digits,
            step,
            origin,
        } => {
            out.put_u8(TOTP);
            out.put_bytes(hash.as_str().as_bytes());
            out.put_u8(digits.get());
            out.put_u64(step.as_duration().as_secs());
            out.put_u64(*origin);
        }
        TokenAlgorithm::Ocra { suite } => {
            out.put_u8(OCRA);
            out.put_bytes(suite.as_str().as_bytes());
        }
    }
}

fn read_algorithm(r: &mut Reader<'_>) -> Result<TokenAlgorithm, DecodeError> {
    let hash = |r: &mut Reader<'_>| -> Result<HashAlgorithm, DecodeError> {
        r.str("hash")?
            .parse::<HashAlgorithm>()
            .map_err(|e| DecodeError::invalid("hash", e.to_string()))
    };
    let digits = |r: &mut Reader<'_>| -> Result<Digits, DecodeError> {
        let digits = r.u8("digits")?;
        match Digits::new(u32::from(digits)) {
            Ok(d) if digits >= 6 => Ok(d),
            _ => Err(DecodeError::invalid(
                "digits",
                format!("{digits} is outside 6..=10"),
            )),
        }
    };
    match r.u8("algorithm")? {
        HOTP => Ok(TokenAlgorithm::Hotp {
            hash: hash(r)?,
            digits: digits(r)?,
        }),
        TOTP => {
            let hash = hash(r)?;
            let digits = digits(r)?;
            let step = TimeStep::new(Duration::from_secs(r.u64("time step")?))
                .map_err(|e| DecodeError::invalid("time step", e.to_string()))?;
            Ok(TokenAlgorithm::Totp {
                hash,
                digits,
                step,
                origin: r.u64("time origin")?,
            })
        }
        OCRA => {
            let suite = r
                .str("suite")?
                .parse::<crate::otp::ocra::Suite>()
                .map_err(|e| DecodeError::invalid("suite", e.to_string()))?;
            Ok(TokenAlgorithm::Ocra {
                suite: Arc::new(suite),
            })
        }
        other => Err(DecodeError::invalid(
            "algorithm",
            format!("{other} is not 1 (HOTP), 2 (TOTP) or 3 (OCRA)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_algorithms_are_typed_errors() {
        let infos = [
            TokenAlgorithm::Hotp {
                hash: HashAlgorithm::Sha1,
                digits: Digits::exactly(6),
            },
            TokenAlgorithm::Totp {
                hash: HashAlgorithm::Sha256,
                digits: Digits::exactly(8),
                step: TimeStep::THIRTY_SECONDS,
                origin: 60,
            },
            TokenAlgorithm::Ocra {
                suite: Arc::new("OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1".parse().unwrap()),
            },
        ]
        .map(|algorithm| TokenInfo {
            serial: Serial::new("000123").unwrap(),
            algorithm,
            counter: 7,
            valid_from: Some(Timestamp(1)),
            valid_until: None,
            manufacturer: "Acme".into(),
        });
        for info in infos {
            let mut out = Vec::new();
            info.put(&mut out);
            let mut r = Reader::new(&out);
            assert_eq!(TokenInfo::read(&mut r).unwrap(), info);
            r.finish().unwrap();
            // Every shorter body is a typed error.
            for cut in 0..out.len() {
                assert!(TokenInfo::read(&mut Reader::new(&out[..cut])).is_err());
            }
        }
        let mut bad = Vec::new();
        bad.put_bytes(b"1");
        bad.put_u8(9);
        assert!(matches!(
            TokenInfo::read(&mut Reader::new(&bad)),
            Err(DecodeError::Invalid {
                field: "algorithm",
                ..
            })
        ));
    }
}
