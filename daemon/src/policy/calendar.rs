//! Days and business days for withdrawal limits: a withdrawal counts on its
//! UTC calendar day; "five business days" is the window from the fifth most
//! recent business day up to that day, weekends and configured holidays
//! skipped (they fall inside the window, they do not count toward its five).

use std::collections::BTreeSet;

use time::{Date, Month, Weekday};

use crate::clock::Timestamp;

/// Days since 1970-01-01 (UTC); what the ledger is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u32);

/// The Julian day number of 1970-01-01.
const EPOCH_JULIAN_DAY: i32 = 2_440_588;
/// How far back a window may reach, however many holidays are configured.
const MAX_WINDOW_DAYS: u32 = 366;

impl Day {
    /// The UTC day of `at`.
    pub fn of(at: Timestamp) -> Self {
        Self(u32::try_from(at.0 / 86_400_000).unwrap_or(u32::MAX))
    }

    fn date(self) -> Option<Date> {
        let julian = i32::try_from(self.0).ok()?.checked_add(EPOCH_JULIAN_DAY)?;
        Date::from_julian_day(julian).ok()
    }

    fn from_date(date: Date) -> Option<Self> {
        u32::try_from(date.to_julian_day() - EPOCH_JULIAN_DAY)
            .ok()
            .map(Self)
    }

    /// The day as `YYYY-MM-DD`.
    pub fn iso(self) -> String {
        self.date().map_or_else(
            || format!("day {}", self.0),
            |d| format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        )
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('-');
        let year = parts.next()?.parse().ok()?;
        let month = Month::try_from(parts.next()?.parse::<u8>().ok()?).ok()?;
        let day = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Self::from_date(Date::from_calendar_date(year, month, day).ok()?)
    }
}

/// Which days are business days.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusinessCalendar {
    holidays: BTreeSet<Day>,
}

impl BusinessCalendar {
    pub fn new(holidays: impl IntoIterator<Item = Day>) -> Self {
        Self {
            holidays: holidays.into_iter().collect(),
        }
    }

    /// Monday to Friday, and not a holiday.
    pub fn is_business_day(&self, day: Day) -> bool {
        let weekday = day.date().map(Date::weekday);
        !matches!(weekday, Some(Weekday::Saturday | Weekday::Sunday) | None)
            && !self.holidays.contains(&day)
    }

    /// The first day of the window of `business_days` business days that
    /// ends on `day`: the `business_days`-th most recent business day on or
    /// before it. Never further back than a year.
    pub fn window_start(&self, day: Day, business_days: u32) -> Day {
        let mut found = 0;
        let mut current = day;
        for _ in 0..MAX_WINDOW_DAYS {
            if self.is_business_day(current) {
                found += 1;
                if found >= business_days {
                    return current;
                }
            }
            match current.0.checked_sub(1) {
                Some(earlier) => current = Day(earlier),
                None => return current,
            }
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> Day {
        Day::parse(text).unwrap()
    }

    #[test]
    fn days_round_trip_and_come_from_timestamps() {
        assert_eq!(day("1970-01-01"), Day(0));
        assert_eq!(day("2026-11-24").iso(), "2026-11-24");
        // 2026-11-24T13:00:00Z
        assert_eq!(Day::of(Timestamp(1_795_525_200_000)), day("2026-11-24"));
        assert_eq!(Day::parse("2026-02-30"), None);
        assert_eq!(Day::parse("2026-11"), None);
        assert_eq!(Day::parse("2026-11-24-1"), None);
        assert_eq!(Day::parse("yesterday"), None);
    }

    #[test]
    fn weekends_and_holidays_are_not_business_days() {
        let calendar = BusinessCalendar::new([day("2026-11-26")]);
        assert!(calendar.is_business_day(day("2026-11-24"))); // Tuesday
        assert!(!calendar.is_business_day(day("2026-11-26"))); // holiday
        assert!(!calendar.is_business_day(day("2026-11-28"))); // Saturday
        assert!(!calendar.is_business_day(day("2026-11-29"))); // Sunday
    }

    #[test]
    fn five_business_days_reach_over_weekends_and_holidays() {
        let plain = BusinessCalendar::default();
        // Monday 2026-11-30: Mon, Fri, Thu, Wed, Tue -> from Tuesday the 24th.
        assert_eq!(plain.window_start(day("2026-11-30"), 5), day("2026-11-24"));
        // Saturday: Fri..Mon -> from Monday the 23rd.
        assert_eq!(plain.window_start(day("2026-11-28"), 5), day("2026-11-23"));
        // Friday: the week itself.
        assert_eq!(plain.window_start(day("2026-11-27"), 5), day("2026-11-23"));
        // A holiday on Thursday pushes the start back a day.
        let holiday = BusinessCalendar::new([day("2026-11-26")]);
        assert_eq!(
            holiday.window_start(day("2026-11-30"), 5),
            day("2026-11-23")
        );
        // One business day: the day itself, or the last business day.
        assert_eq!(plain.window_start(day("2026-11-29"), 1), day("2026-11-27"));
    }
}
