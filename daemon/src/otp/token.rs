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
