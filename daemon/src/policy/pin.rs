//! The IB Key app PIN rules: 4–6 characters with at least one digit, and
//! none of what the guidelines forbid that sls can check — the user's own
//! phone digits, one character repeated, a run (1234, dcba), a date that
//! looks like a birthday.

/// A rule an app PIN breaks; `Display` is the sentence the user sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinRule {
    #[error("the PIN must be 4 to 6 characters long")]
    Length,
    #[error("the PIN must be letters and digits only")]
    Characters,
    #[error("the PIN must contain at least one digit")]
    NoDigit,
    #[error("the PIN must not repeat one character")]
    Repeated,
    #[error("the PIN must not be a sequence such as 1234 or 4321")]
    Sequential,
    #[error(
        "the PIN must not look like a date (a birthday as DDMM, MMDD, DDMMYY or a year 1900-2030)"
    )]
    Date,
    #[error("the PIN must not be taken from the user's phone number")]
    PhoneDigits,
}

impl PinRule {
    /// A short name for the rule (logs, the admin CLI's JSON).
    pub fn name(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Characters => "characters",
            Self::NoDigit => "no-digit",
            Self::Repeated => "repeated",
            Self::Sequential => "sequential",
            Self::Date => "date",
            Self::PhoneDigits => "phone-digits",
        }
    }
}

/// Checks a PIN the app sets; `phone_digits` are the digits of the user's
/// numbers on record (country code and national number).
pub fn check_app_pin(pin: &str, phone_digits: &[String]) -> Result<(), PinRule> {
    let chars: Vec<char> = pin.chars().collect();
    if !(4..=6).contains(&chars.len()) {
        return Err(PinRule::Length);
    }
    if !chars.iter().all(char::is_ascii_alphanumeric) {
        return Err(PinRule::Characters);
    }
    if !chars.iter().any(char::is_ascii_digit) {
        return Err(PinRule::NoDigit);
    }
    let lower: Vec<u8> = pin.to_ascii_lowercase().into_bytes();
    if lower.windows(2).all(|w| matches!(w, [a, b] if a == b)) {
        return Err(PinRule::Repeated);
    }
    let step = |up: bool| {
        lower
            .windows(2)
            .all(|w| matches!(w, [a, b] if if up { *b == a.wrapping_add(1) } else { *a == b.wrapping_add(1) }))
    };
    if step(true) || step(false) {
        return Err(PinRule::Sequential);
    }
    if looks_like_a_date(pin) {
        return Err(PinRule::Date);
    }
    if phone_digits.iter().any(|digits| digits.contains(pin)) {
        return Err(PinRule::PhoneDigits);
    }
    Ok(())
}

/// DDMM, MMDD, a year 1900–2030, or DDMMYY / MMDDYY.
fn looks_like_a_date(pin: &str) -> bool {
    if !pin.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let number = |range: std::ops::Range<usize>| {
        pin.get(range)
            .and_then(|text| text.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let day_month = |day: u32, month: u32| (1..=31).contains(&day) && (1..=12).contains(&month);
    let (first, second) = (number(0..2), number(2..4));
    let day_and_month = day_month(first, second) || day_month(second, first);
    match pin.len() {
        4 => day_and_month || (1900..=2030).contains(&number(0..4)),
        6 => day_and_month,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pin: &str) -> Result<(), PinRule> {
        check_app_pin(pin, &["41791234567".to_owned()])
    }

    #[test]
    fn good_pins_pass() {
        for pin in ["7391", "a8c2", "73915", "x9y8z7", "4096", "9941", "3x5"] {
            if pin.len() >= 4 {
                assert_eq!(check(pin), Ok(()), "{pin}");
            }
        }
    }

    #[test]
    fn each_rule_names_itself() {
        assert_eq!(check("739"), Err(PinRule::Length));
        assert_eq!(check("7391234"), Err(PinRule::Length));
        assert_eq!(check("73 91"), Err(PinRule::Characters));
        assert_eq!(check("abcx"), Err(PinRule::NoDigit));
        assert_eq!(check("7777"), Err(PinRule::Repeated));
        assert_eq!(check("aAaA"), Err(PinRule::NoDigit));
        assert_eq!(check("1234"), Err(PinRule::Sequential));
        assert_eq!(check("654321"), Err(PinRule::Sequential));
        assert_eq!(check("2512"), Err(PinRule::Date)); // 25 December
        assert_eq!(check("1225"), Err(PinRule::Date)); // December 25
        assert_eq!(check("1987"), Err(PinRule::Date));
        assert_eq!(check("2030"), Err(PinRule::Date));
        assert_eq!(check("250187"), Err(PinRule::Date));
        assert_eq!(check("4567"), Err(PinRule::Sequential));
        assert_eq!(check("9123"), Err(PinRule::PhoneDigits));
        assert_eq!(check("345678"), Err(PinRule::Sequential));
        assert_eq!(check("791234"), Err(PinRule::PhoneDigits));
        // Not a date: no 13th month, no day 32, year out of range.
        assert_eq!(check("3313"), Ok(()));
        assert_eq!(check("2031"), Ok(()));
        assert_eq!(check("1899"), Ok(()));
    }

    #[test]
    fn the_messages_name_the_rule() {
        assert!(PinRule::Date.to_string().contains("date"));
        assert!(PinRule::PhoneDigits.to_string().contains("phone number"));
        assert_eq!(PinRule::Sequential.name(), "sequential");
    }
}
