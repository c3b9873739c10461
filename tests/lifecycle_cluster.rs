//! The device lifecycle suite of `lifecycle.rs` (`lifecycle/suite.rs`)
//! against one `slsd` node on a real Redis Cluster (three masters, three
//! replicas on loopback): every lifecycle operation — identification and
//! opt-out, shares, temporary codes, replacement cards, phone numbers,
//! IB Key activation, withdrawals — answers on the cluster store as it
//! does on the embedded one, asserted by the same tests.

mod support;

const ON_CLUSTER: bool = true;

include!("lifecycle/suite.rs");
