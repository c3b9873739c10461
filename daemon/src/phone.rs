//! Phone numbers, parsed once at the edge into a country calling code and a
//! national number, digits only, without the country's trunk prefix (the
//! rule of the reference pages: "enter the number without the leading 0").

use std::fmt;

/// The most digits of a whole number, country code included (E.164).
pub const MAX_DIGITS: usize = 15;
/// The fewest digits of a national number sls accepts.
pub const MIN_NATIONAL_DIGITS: usize = 4;

/// A phone number: `+<country code> <national number>`.
///
/// `Display` writes the whole number (the carrier needs it); `Debug` hides
/// all but the last two digits, so a number in a log line identifies nobody.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber {
    country: u16,
    national: Box<str>,
}

/// A number that breaks one of the rules; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("a phone number is written +<country code> <national number>, e.g. +41 446681800")]
    Shape,
    #[error("the country code is 1 to 3 digits, not starting with 0")]
    CountryCode,
    #[error("the national number is digits only (no spaces, dashes or brackets)")]
    NotDigits,
    #[error("the national number is entered without the trunk prefix {0} (drop the leading {0})")]
    TrunkPrefix(char),
    #[error("the national number is {MIN_NATIONAL_DIGITS} digits at least")]
    TooShort,
    #[error("the whole number is {MAX_DIGITS} digits at most")]
    TooLong,
}

/// Countries whose national numbers keep their leading 0 after the country
/// code (Italy, San Marino, Vatican City).
const KEEPS_LEADING_ZERO: [u16; 3] = [39, 378, 379];

impl PhoneNumber {
    /// Builds a number from its parts, checking every rule.
    pub fn new(country: u16, national: &str) -> Result<Self, PhoneError> {
        if !(1..=999).contains(&country) {
            return Err(PhoneError::CountryCode);
        }
        if national.is_empty() || !national.bytes().all(|b| b.is_ascii_digit()) {
            return Err(PhoneError::NotDigits);
        }
        // The North American plan's trunk prefix is 1, most others' is 0.
        let trunk = if country == 1 { '1' } else { '0' };
        if national.starts_with(trunk) && !KEEPS_LEADING_ZERO.contains(&country) {
            return Err(PhoneError::TrunkPrefix(trunk));
        }
        if national.len() < MIN_NATIONAL_DIGITS {
            return Err(PhoneError::TooShort);
        }
        if country.to_string().len() + national.len() > MAX_DIGITS {
            return Err(PhoneError::TooLong);
        }
        Ok(Self {
            country,
            national: national.into(),
        })
    }

    /// Parses `+<country code> <national number>`.
    pub fn parse(text: &str) -> Result<Self, PhoneError> {
        let rest = text.strip_prefix('+').ok_or(PhoneError::Shape)?;
        let (country, national) = rest.split_once(' ').ok_or(PhoneError::Shape)?;
        if country.is_empty()
            || country.len() > 3
            || country.starts_with('0')
            || !country.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PhoneError::CountryCode);
        }
        let country = country.parse().map_err(|_| PhoneError::CountryCode)?;
        Self::new(country, national)
    }

    /// The country calling code (41 for Switzerland).
    pub fn country(&self) -> u16 {
        self.country
    }

    pub fn national(&self) -> &str {
        &self.national
    }

    /// The number's range: the first [`RANGE_DIGITS`] digits of the
    /// international number, country code included (fewer for a shorter
    /// number). Premium ranges are sold by such prefixes.
    pub fn range(&self) -> String {
        let mut digits = self.country.to_string();
        digits.push_str(&self.national);
        digits.truncate(RANGE_DIGITS);
        digits
    }
}

/// Digits of the international number that name its range.
pub const RANGE_DIGITS: usize = 6;

/// The delivery quotas a number is counted against (`sms.*`), on either
/// store, in the order they are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendLimit {
    Number,
    Range,
    Country,
}

impl SendLimit {
    /// What a refusal says.
    pub fn refusal(self) -> &'static str {
        match self {
            Self::Number => "too many codes sent to this number",
            Self::Range => "too many codes sent to this number range",
            Self::Country => "too many codes sent to this country code",
        }
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{} {}", self.country, self.national)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.national.len().saturating_sub(2);
        let tail = self.national.get(shown..).unwrap_or("");
        write!(f, "PhoneNumber(+{} …{tail})", self.country)
    }
}

/// How a code reaches the phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Sms,
    /// A call that reads the code out: the fallback when a text does not
    /// arrive.
    Voice,
}

impl Channel {
    pub fn code(self) -> u8 {
        match self {
            Self::Sms => 1,
            Self::Voice => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Sms),
            2 => Some(Self::Voice),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Voice => "voice",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_rules() {
        let swiss = PhoneNumber::parse("+41 446681800").unwrap();
        assert_eq!(swiss.country(), 41);
        assert_eq!(swiss.national(), "446681800");
        assert_eq!(swiss.to_string(), "+41 446681800");
        assert_eq!(format!("{swiss:?}"), "PhoneNumber(+41 …00)");

        let error = |text| PhoneNumber::parse(text).unwrap_err();
        assert_eq!(error("41 446681800"), PhoneError::Shape);
        assert_eq!(error("+41446681800"), PhoneError::Shape);
        assert_eq!(error("+041 446681800"), PhoneError::CountryCode);
        assert_eq!(error("+1234 5551234"), PhoneError::CountryCode);
        assert_eq!(error("+41 44 668 18 00"), PhoneError::NotDigits);
        assert_eq!(error("+41 44-668"), PhoneError::NotDigits);
        assert_eq!(error("+41 0446681800"), PhoneError::TrunkPrefix('0'));
        assert_eq!(error("+1 12125550100"), PhoneError::TrunkPrefix('1'));
        assert_eq!(error("+41 446"), PhoneError::TooShort);
        assert_eq!(error("+852 1234567890123"), PhoneError::TooLong);
        // Italy keeps the 0 of its landline numbers.
        assert!(PhoneNumber::parse("+39 0612345678").is_ok());
        assert!(PhoneNumber::parse("+1 2125550100").is_ok());
        assert!(
            error("+41 0446681800")
                .to_string()
                .contains("trunk prefix 0")
        );
    }
}
