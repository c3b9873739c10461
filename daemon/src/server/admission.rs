//! Who may take a connection slot, and when.
//!
//! A handshake costs the daemon state and a TLS key exchange before any
//! certificate is checked, so handshakes have their own small budget
//! (`server.max-handshakes`, at most `server.handshakes-per-address` from
//! one IP address), and once `server.handshakes-before-retry` are under
//! way a peer whose address QUIC has not validated is sent a Retry first:
//! a flood of Initials from addresses that never answer (or are spoofed)
//! then costs one stateless packet each. A connection slot
//! (`server.max-connections`) is taken only once the handshake is done and
//! the certificate has named the role, and each role has its own quota, so
//! phones connecting on demand cannot starve gateways or operators.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::config::ServerConfig;
use crate::engine::Role;

/// In-progress handshakes: how many, and from where.
#[derive(Debug)]
pub(super) struct Handshakes {
    limit: usize,
    per_address: u32,
    retry_above: usize,
    under_way: Mutex<UnderWay>,
}

#[derive(Debug, Default)]
struct UnderWay {
    total: usize,
    by_address: HashMap<IpAddr, u32>,
}

/// What to do with a new Initial.
#[derive(Debug)]
pub(super) enum Admit {
    /// Go on with the handshake; the ticket holds its place until dropped.
    Handshake(HandshakeTicket),
    /// Ask the peer to prove its address first (QUIC Retry).
    Retry,
    /// Refuse: the budget is spent (`"handshakes"`) or this address has
    /// its share (`"address"`).
    Refuse(&'static str),
}

impl Handshakes {
    pub(super) fn new(config: &ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            limit: config.max_handshakes as usize,
            per_address: config.handshakes_per_address,
            retry_above: config.handshakes_before_retry as usize,
            under_way: Mutex::new(UnderWay::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UnderWay> {
        self.under_way
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides on an Initial from `address`; `validated` when QUIC has
    /// proven the peer owns it (a Retry token), `may_retry` when a Retry
    /// can still be sent.
    pub(super) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        validated: bool,
        may_retry: bool,
    ) -> Admit {
        let mut under_way = self.lock();
        if !validated && may_retry && under_way.total >= self.retry_above {
            return Admit::Retry;
        }
        if under_way.total >= self.limit {
            return Admit::Refuse("handshakes");
        }
        let from_here = under_way.by_address.entry(address).or_insert(0);
        if *from_here >= self.per_address {
            return Admit::Refuse("address");
        }
        *from_here += 1;
        under_way.total += 1;
        Admit::Handshake(HandshakeTicket {
            handshakes: Arc::clone(self),
            address,
        })
    }

    /// Handshakes under way now.
    pub(super) fn under_way(&self) -> usize {
        self.lock().total
    }
}

/// A handshake's place in the budget, given back when dropped.
#[derive(Debug)]
pub(super) struct HandshakeTicket {
    handshakes: Arc<Handshakes>,
    address: IpAddr,
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut under_way = self.handshakes.lock();
        under_way.total = under_way.total.saturating_sub(1);
        if let Some(count) = under_way.by_address.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                under_way.by_address.remove(&self.address);
            }
        }
    }
}

/// Established connections, in all and per role.
#[derive(Debug)]
pub(super) struct Connections {
    limit: usize,
    per_role: [usize; 4],
    open: Mutex<(usize, [usize; 4])>,
}

impl Connections {
    pub(super) fn new(config: &ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            limit: config.max_connections as usize,
            per_role: Role::ALL.map(|role| config.max_connections_of(role) as usize),
            open: Mutex::new((0, [0; 4])),
        })
    }

    /// A slot for an established connection of `role`; `None` when all
    /// slots, or the role's, are taken.
    pub(super) fn admit(self: &Arc<Self>, role: Role) -> Option<ConnectionSlot> {
        let index = role.index();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_role) = &mut *open;
        let of_role = per_role.get_mut(index)?;
        if *total >= self.limit || *of_role >= self.per_role.get(index).copied().unwrap_or(0) {
            return None;
        }
        *total += 1;
        *of_role += 1;
        metrics::gauge!(crate::metrics::CONNECTIONS).increment(1.0);
        Some(ConnectionSlot {
            connections: Arc::clone(self),
            index,
        })
    }
}

/// An established connection's slot, given back when dropped.
#[derive(Debug)]
pub(super) struct ConnectionSlot {
    connections: Arc<Connections>,
    index: usize,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_role) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(of_role) = per_role.get_mut(self.index) {
            *of_role = of_role.saturating_sub(1);
        }
        metrics::gauge!(crate::metrics::CONNECTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(keys: &str) -> ServerConfig {
        Config::from_toml(&format!("[server]\n{keys}"))
            .unwrap()
            .server
    }

    #[test]
    fn handshakes_retry_under_load_and_are_capped_in_all_and_per_address() {
        let handshakes = Handshakes::new(&config(
            "max-handshakes = 4\nhandshakes-per-address = 2\nhandshakes-before-retry = 3",
        ));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let t1 = handshakes.admit(a, false, true);
        let t2 = handshakes.admit(a, false, true);
        assert!(matches!(t1, Admit::Handshake(_)) && matches!(t2, Admit::Handshake(_)));
        assert!(matches!(
            handshakes.admit(a, true, false),
            Admit::Refuse("address")
        ));
        let t3 = handshakes.admit(b, false, true);
        assert!(matches!(t3, Admit::Handshake(_)));
        // Three under way: an unvalidated peer is asked to Retry, a
        // validated one goes on until the budget of four is spent.
        assert!(matches!(handshakes.admit(c, false, true), Admit::Retry));
        let t4 = handshakes.admit(c, true, false);
        assert!(matches!(t4, Admit::Handshake(_)));
        assert!(matches!(
            handshakes.admit(b, true, false),
            Admit::Refuse("handshakes")
        ));
        assert_eq!(handshakes.under_way(), 4);
        drop((t1, t2, t3, t4));
        assert_eq!(handshakes.under_way(), 0);
        assert!(matches!(
            handshakes.admit(a, false, true),
            Admit::Handshake(_)
        ));
    }

    #[test]
    fn role_quotas_are_laid_out_by_role_index() {
        for (place, role) in Role::ALL.iter().enumerate() {
            assert_eq!(role.index(), place, "{role:?}");
        }
    }

    #[test]
    fn connection_slots_are_capped_in_all_and_per_role() {
        let connections = Connections::new(&config(
            "max-connections = 3\nmax-phone-connections = 1\nmax-admin-connections = 1\nmax-carrier-connections = 1\nmax-gateway-connections = 3",
        ));
        let phone = connections.admit(Role::Phone).unwrap();
        assert!(connections.admit(Role::Phone).is_none(), "phones' quota");
        let g1 = connections.admit(Role::Gateway).unwrap();
        let g2 = connections.admit(Role::Gateway).unwrap();
        assert!(connections.admit(Role::Gateway).is_none(), "all slots");
        drop(phone);
        let g3 = connections.admit(Role::Gateway).unwrap();
        drop((g1, g2, g3));
        assert!(connections.admit(Role::Admin).is_some());
    }
}
