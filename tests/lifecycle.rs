//! The device lifecycle of the Secure Login System against `slsd serve`
//! over QUIC: one test per rule (its happy path and each refusal), a
//! restart in the middle of a lifecycle, and concurrent withdrawals.
//! Rules that need days to pass (auto-activation after 21 days, the five
//! business days) are checked on a virtual clock in
//! `daemon/tests/lifecycle.rs`.
//!
//! The same suite runs on a node of a Redis Cluster in
//! `lifecycle_cluster.rs` (`lifecycle/suite.rs` holds it).

mod support;

const ON_CLUSTER: bool = false;

include!("lifecycle/suite.rs");
