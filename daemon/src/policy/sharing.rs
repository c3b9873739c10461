//! Whether one user may start using another user's physical device.
//!
//! The rules of the reference page: every participant carries the same
//! identification data, none has a temporary device, and the shared device
//! is the most secure among the participants' physical devices. IB Key is
//! never shared this way (the app adds users instead).

use crate::profile::{DeviceKind, SecurityLevel};

/// One side of a share, as the rules see it.
#[derive(Debug, Clone)]
pub struct Participant {
    /// The digest of the identification data; `None` if none is on record.
    pub identity: Option<[u8; 32]>,
    /// Whether the user holds a temporary device (temporary code, Online
    /// Security Code Card).
    pub has_temporary: bool,
    /// The security levels of the user's own physical devices.
    pub physical: Vec<SecurityLevel>,
}

/// Why a share is refused; `Display` carries the page's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareRefusal {
    #[error("Different identification information")]
    DifferentIdentification,
    #[error("Less secure device")]
    LessSecureDevice,
    #[error("Temporary device: a user with a temporary device cannot share a device")]
    TemporaryDevice,
    #[error("Not shareable: only physical devices are shared (IB Key adds users instead)")]
    NotShareable,
}

/// Checks a share of a device of `kind` at `level`.
pub fn check_share(
    kind: DeviceKind,
    level: SecurityLevel,
    requester: &Participant,
    owner: &Participant,
) -> Result<(), ShareRefusal> {
    if !kind.is_physical() {
        return Err(ShareRefusal::NotShareable);
    }
    // Both must have identification on record, and the same.
    let same = matches!((requester.identity, owner.identity), (Some(a), Some(b)) if a == b);
    if !same {
        return Err(ShareRefusal::DifferentIdentification);
    }
    if requester.has_temporary || owner.has_temporary {
        return Err(ShareRefusal::TemporaryDevice);
    }
    let most_secure = requester
        .physical
        .iter()
        .chain(&owner.physical)
        .copied()
        .max();
    if most_secure.is_some_and(|best| level < best) {
        return Err(ShareRefusal::LessSecureDevice);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(identity: u8, physical: &[SecurityLevel]) -> Participant {
        Participant {
            identity: Some([identity; 32]),
            has_temporary: false,
            physical: physical.to_vec(),
        }
    }

    #[test]
    fn the_most_secure_device_of_the_same_person_is_shared() {
        let owner = person(1, &[SecurityLevel::Highest, SecurityLevel::Lowest]);
        let requester = person(1, &[SecurityLevel::Lowest]);
        let share = |kind, level| check_share(kind, level, &requester, &owner);
        assert_eq!(share(DeviceKind::DscPlus, SecurityLevel::Highest), Ok(()));
        assert_eq!(
            share(DeviceKind::Scc, SecurityLevel::Lowest),
            Err(ShareRefusal::LessSecureDevice)
        );
        assert_eq!(
            share(DeviceKind::IbKey, SecurityLevel::High),
            Err(ShareRefusal::NotShareable)
        );
    }

    #[test]
    fn identification_must_match_and_be_on_record() {
        let owner = person(1, &[]);
        assert_eq!(
            check_share(
                DeviceKind::Scc,
                SecurityLevel::Lowest,
                &person(2, &[]),
                &owner
            ),
            Err(ShareRefusal::DifferentIdentification)
        );
        let unknown = Participant {
            identity: None,
            ..person(1, &[])
        };
        assert_eq!(
            check_share(DeviceKind::Scc, SecurityLevel::Lowest, &unknown, &unknown),
            Err(ShareRefusal::DifferentIdentification)
        );
        assert_eq!(
            ShareRefusal::DifferentIdentification.to_string(),
            "Different identification information"
        );
        assert_eq!(
            ShareRefusal::LessSecureDevice.to_string(),
            "Less secure device"
        );
    }

    #[test]
    fn a_temporary_device_on_either_side_refuses() {
        let mut requester = person(1, &[]);
        requester.has_temporary = true;
        assert_eq!(
            check_share(
                DeviceKind::Scc,
                SecurityLevel::Lowest,
                &requester,
                &person(1, &[])
            ),
            Err(ShareRefusal::TemporaryDevice)
        );
    }
}
