//! What a hardware or software token computes: HOTP (an event counter),
//! TOTP (a time step), or OCRA with its suite (a question, and a counter
//! or a time step when the suite has one). The parameters a vendor's file
//! or an enrolment fixes; the key and the moving counter are kept apart.

use std::fmt;
use std::sync::Arc;

use super::HashAlgorithm;
use super::hotp::Digits;
use super::ocra::Suite;
use super::totp::TimeStep;

/// A token's algorithm and its fixed parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAlgorithm {
    /// RFC 4226: the code for the next counter value.
    Hotp { hash: HashAlgorithm, digits: Digits },
    /// RFC 6238: the code for the time step, counted from `origin` (UNIX
    /// seconds) in steps of `step`.
    Totp {
        hash: HashAlgorithm,
        digits: Digits,
        step: TimeStep,
        origin: u64,
    },
    /// RFC 6287 challenge/response.
    Ocra { suite: Arc<Suite> },
}

impl TokenAlgorithm {
    /// Whether codes move with a counter the server must follow (HOTP,
    /// OCRA suites with `C`).
    pub fn counts_events(&self) -> bool {
        match self {
            Self::Hotp { .. } => true,
            Self::Totp { .. } => false,
            Self::Ocra { suite } => suite.uses_counter(),
        }
    }

    /// Why sls cannot follow this token, if it cannot: an OCRA suite with
    /// both a counter and a time step would need two moving factors, and
    /// a token has one (what was used of it stays used).
    pub fn unsupported(&self) -> Option<String> {
        (self.counts_events() && self.counts_time()).then(|| {
            format!("OCRA suite {self} has both a counter (C) and a time step (T): sls follows one moving factor per token")
        })
    }

    /// Whether codes move with the clock (TOTP, OCRA suites with `T`).
    pub fn counts_time(&self) -> bool {
        match self {
            Self::Hotp { .. } => false,
            Self::Totp { .. } => true,
            Self::Ocra { suite } => suite.time_step().is_some(),
        }
    }
}

/// A token algorithm that did not parse.
#[derive(Debug, thiserror::Error)]
#[error(
    "token algorithm {0:?}: expected HOTP-HASH-DIGITS, TOTP-HASH-DIGITS-STEPs[-T0=SECONDS] or an OCRA suite"
)]
pub struct UnknownAlgorithm(String);

/// The inverse of `Display`: `HOTP-SHA1-6`, `TOTP-SHA256-8-60s-T0=7`,
/// `OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1`.
impl std::str::FromStr for TokenAlgorithm {
    type Err = UnknownAlgorithm;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownAlgorithm(text.to_owned());
        if text.starts_with("OCRA-") {
            let suite = text.parse().map_err(|_| unknown())?;
            return Ok(Self::Ocra {
                suite: Arc::new(suite),
            });
        }
        let mut parts = text.split('-');
        let (Some(name), Some(hash), Some(digits)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(unknown());
        };
        let hash = hash.parse().map_err(|_| unknown())?;
        let digits = digits
            .parse()
            .ok()
            .and_then(|d| Digits::new(d).ok())
            .ok_or_else(unknown)?;
        match (name, parts.next(), parts.next(), parts.next()) {
            ("HOTP", None, _, _) => Ok(Self::Hotp { hash, digits }),
            ("TOTP", Some(step), origin, None) => {
                let seconds = step
                    .strip_suffix('s')
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(unknown)?;
                let step = TimeStep::new(std::time::Duration::from_secs(seconds))
                    .map_err(|_| unknown())?;
                let origin = match origin {
                    None => 0,
                    Some(origin) => origin
                        .strip_prefix("T0=")
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(unknown)?,
                };
                Ok(Self::Totp {
                    hash,
                    digits,
                    step,
                    origin,
                })
            }
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for TokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hotp { hash, digits } => write!(f, "HOTP-{hash}-{digits}"),
            Self::Totp {
                hash,
                digits,
                step,
                origin,
            } => {
                write!(f, "TOTP-{hash}-{digits}-{}s", step.as_duration().as_secs())?;
                if *origin != 0 {
                    write!(f, "-T0={origin}")?;
                }
                Ok(())
            }
            Self::Ocra { suite } => suite.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_algorithm_reads_back_as_it_is_written() {
        for text in [
            "HOTP-SHA1-6",
            "HOTP-SHA512-10",
            "TOTP-SHA1-6-30s",
            "TOTP-SHA256-8-60s-T0=7",
            "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1",
            "OCRA-1:HOTP-SHA256-8:QN08-PSHA1",
        ] {
            let algorithm: TokenAlgorithm = text.parse().unwrap();
            assert_eq!(algorithm.to_string(), text);
        }
        for bad in [
            "HOTP-SHA1",
            "HOTP-MD5-6",
            "HOTP-SHA1-6-30s",
            "TOTP-SHA1-6",
            "TOTP-SHA1-6-0s",
            "TOTP-SHA1-6-30",
            "TOTP-SHA1-6-30s-7",
            "OCRA-1:nonsense",
            "",
        ] {
            assert!(bad.parse::<TokenAlgorithm>().is_err(), "{bad}");
        }
    }
}
