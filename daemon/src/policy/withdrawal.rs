//! Withdrawal limits by the device that confirmed the withdrawal.
//!
//! Limits are configured in whole US dollars per kind (`profile`); amounts
//! travel and are booked in cents. What a user has withdrawn counts against
//! the limit of whichever device confirms the next withdrawal: a user who
//! took 1,500 USD today with IB Key has 500 USD left on a code card
//! (2,000/day).

use crate::profile::{DeviceKind, DeviceProfiles, WithdrawalLimit};

/// What a user has withdrawn, in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Withdrawn {
    /// On the day of the request (UTC).
    pub today: u64,
    /// In the five business days ending on that day.
    pub five_days: u64,
}

/// How much more may be withdrawn, in cents; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    pub today: Option<u64>,
    pub five_days: Option<u64>,
}

impl Headroom {
    /// Whether `amount` cents fit.
    pub fn allows(&self, amount: u64) -> bool {
        self.today.is_none_or(|left| amount <= left)
            && self.five_days.is_none_or(|left| amount <= left)
    }
}

fn cents(dollars: Option<u64>) -> Option<u64> {
    dollars.map(|d| d.saturating_mul(100))
}

/// What `limit` leaves after `withdrawn`.
pub fn headroom(limit: WithdrawalLimit, withdrawn: Withdrawn) -> Headroom {
    Headroom {
        today: cents(limit.per_day).map(|l| l.saturating_sub(withdrawn.today)),
        five_days: cents(limit.per_five_business_days)
            .map(|l| l.saturating_sub(withdrawn.five_days)),
    }
}

/// The kinds whose limits would allow `amount` cents now, most secure
/// first (what a refusal suggests instead): kinds still issued, and those
/// the user `holds` even if no longer issued.
pub fn kinds_that_allow(
    profiles: &DeviceProfiles,
    withdrawn: Withdrawn,
    amount: u64,
    holds: &[DeviceKind],
) -> Vec<DeviceKind> {
    let mut kinds: Vec<_> = profiles
        .iter()
        .filter(|p| p.issued || holds.contains(&p.kind))
        .filter(|p| headroom(p.withdrawal_limit, withdrawn).allows(amount))
        .map(|p| (p.security, p.kind))
        .collect();
    kinds.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.code().cmp(&b.1.code())));
    kinds.into_iter().map(|(_, kind)| kind).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(dollars: u64) -> u64 {
        dollars * 100
    }

    #[test]
    fn headroom_is_the_limit_less_what_was_withdrawn() {
        let profiles = DeviceProfiles::defaults().unwrap();
        let scc = profiles.get(DeviceKind::Scc).withdrawal_limit;
        let spent = Withdrawn {
            today: usd(150_000),
            five_days: usd(550_000),
        };
        let left = headroom(scc, spent);
        assert_eq!(left.today, Some(usd(50_000)));
        assert_eq!(left.five_days, Some(usd(50_000)));
        assert!(left.allows(usd(50_000)));
        assert!(!left.allows(usd(50_000) + 1));
        let dsc_plus = headroom(profiles.get(DeviceKind::DscPlus).withdrawal_limit, spent);
        assert_eq!(dsc_plus.today, None);
        assert!(dsc_plus.allows(u64::MAX));
        // More withdrawn than the limit (the limit was lowered): nothing left.
        let over = headroom(
            scc,
            Withdrawn {
                today: usd(300_000),
                five_days: 0,
            },
        );
        assert_eq!(over.today, Some(0));
    }

    #[test]
    fn the_kinds_that_allow_an_amount_are_the_issued_ones_most_secure_first() {
        let profiles = DeviceProfiles::defaults().unwrap();
        let none = Withdrawn::default();
        // 300,000 USD: over SCC, SMS, temporary and Online SCC; legacy DSC,
        // Gold and Platinum allow it but are no longer issued; imported
        // hardware tokens are.
        let kinds = kinds_that_allow(&profiles, none, usd(300_000), &[]);
        assert_eq!(
            kinds,
            vec![DeviceKind::DscPlus, DeviceKind::IbKey, DeviceKind::Token]
        );
        // A user holding a Gold device hears of it too.
        let kinds = kinds_that_allow(&profiles, none, usd(300_000), &[DeviceKind::Gold]);
        assert_eq!(
            kinds,
            vec![
                DeviceKind::DscPlus,
                DeviceKind::Gold,
                DeviceKind::IbKey,
                DeviceKind::Token
            ]
        );
        let small = kinds_that_allow(&profiles, none, usd(100), &[]);
        assert_eq!(small.first(), Some(&DeviceKind::DscPlus));
        assert!(small.contains(&DeviceKind::Scc));
    }
}
