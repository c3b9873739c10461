//! Which devices a login may use and how an operator's list shows them,
//! from a device, its lifecycle state and the user's share.

use crate::clock::Timestamp;
use crate::identity::DeviceId;
use crate::store::{Activation, Device, DeviceLife};
use crate::wire::DeviceStatus;

/// What an operator's list says of a device of the user: `suspended` when
/// the user logs in with a shared device instead of their own.
pub fn status(device: &Device, life: &DeviceLife, suspended: bool, now: Timestamp) -> DeviceStatus {
    match &life.activation {
        _ if device.expired_at(now) || life.uses_left == Some(0) => DeviceStatus::Expired,
        Activation::Ordered { .. } => DeviceStatus::Ordered,
        Activation::Pending => DeviceStatus::Pending,
        Activation::Shipped(shipment) if shipment.activates_at > now => DeviceStatus::Shipped {
            activates_at: shipment.activates_at,
        },
        _ if suspended => DeviceStatus::Suspended,
        _ => DeviceStatus::Active,
    }
}

/// Whether a login of the device's own user may be asked a challenge on
/// it: usable (and not suspended by a share), or a shipped replacement
/// before its time or a device pending its first answer — the right
/// answer activates it.
pub fn challengeable(device: &Device, life: &DeviceLife, suspended: bool, now: Timestamp) -> bool {
    if device.expired_at(now) {
        return false;
    }
    awaits_first_answer(life) || (!suspended && life.allows_use(now))
}

/// Whether the device becomes active when its holder first answers with
/// it: a shipped replacement, or a device pending its first code.
pub fn awaits_first_answer(life: &DeviceLife) -> bool {
    matches!(
        life.activation,
        Activation::Shipped(_) | Activation::Pending
    )
}

/// What an accepted answer does to its device beyond the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAccept {
    /// Nothing: an active device without a use limit.
    Nothing,
    /// A temporary code with no use left: the answer comes too late.
    TooLate,
    /// A temporary code spends a use.
    Spend { life: DeviceLife, left: u32 },
    /// A replacement card becomes active and retires the card it
    /// replaces; a pending device becomes active (it replaces none).
    Activate {
        life: DeviceLife,
        replaces: Option<DeviceId>,
    },
}

/// What an accepted answer with a device in state `life` does to it.
pub fn after_accept(life: &DeviceLife) -> AfterAccept {
    match life.uses_left {
        Some(0) => AfterAccept::TooLate,
        Some(left) => AfterAccept::Spend {
            life: DeviceLife {
                uses_left: Some(left - 1),
                ..life.clone()
            },
            left: left - 1,
        },
        None => activation(life).map_or(AfterAccept::Nothing, |(life, replaces)| {
            AfterAccept::Activate { life, replaces }
        }),
    }
}

/// A replacement or pending device made active: its new state and the
/// card it retires, if any; `None` for a device that is active already.
pub fn activation(life: &DeviceLife) -> Option<(DeviceLife, Option<DeviceId>)> {
    let replaces = match &life.activation {
        Activation::Shipped(shipment) => Some(shipment.replaces),
        Activation::Ordered { replaces } => Some(*replaces),
        Activation::Pending => None,
        Activation::Active => return None,
    };
    Some((
        DeviceLife {
            activation: Activation::Active,
            ..life.clone()
        },
        replaces,
    ))
}

/// Whether a shipped replacement's time to activate itself has come.
pub fn due(life: &DeviceLife, now: Timestamp) -> bool {
    matches!(&life.activation, Activation::Shipped(shipment) if shipment.activates_at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Shipment;

    #[test]
    fn an_accepted_temporary_code_spends_a_use_until_none_is_left() {
        let life = DeviceLife {
            uses_left: Some(1),
            ..DeviceLife::default()
        };
        let AfterAccept::Spend { life, left: 0 } = after_accept(&life) else {
            panic!("a use left must be spent");
        };
        assert_eq!(after_accept(&life), AfterAccept::TooLate);
        assert_eq!(after_accept(&DeviceLife::default()), AfterAccept::Nothing);
    }

    #[test]
    fn an_accepted_replacement_activates_and_retires_the_card_it_replaces() {
        let shipped = DeviceLife {
            activation: Activation::Shipped(Box::new(Shipment {
                replaces: DeviceId(3),
                shipped_at: Timestamp(10),
                activates_at: Timestamp(20),
            })),
            uses_left: None,
            pin: None,
        };
        assert!(!due(&shipped, Timestamp(19)));
        assert!(due(&shipped, Timestamp(20)));
        let AfterAccept::Activate { life, replaces } = after_accept(&shipped) else {
            panic!("a shipped card must activate");
        };
        assert_eq!(
            (life.activation, replaces),
            (Activation::Active, Some(DeviceId(3)))
        );
    }

    #[test]
    fn a_pending_device_is_challenged_and_activated_by_its_first_answer() {
        let pending = DeviceLife {
            activation: Activation::Pending,
            ..DeviceLife::default()
        };
        assert!(awaits_first_answer(&pending));
        assert!(!pending.allows_use(Timestamp(0)));
        assert!(!due(&pending, Timestamp(u64::MAX)), "no time activates it");
        let AfterAccept::Activate { life, replaces } = after_accept(&pending) else {
            panic!("a pending device must activate");
        };
        assert_eq!((life.activation, replaces), (Activation::Active, None));
    }
}
