//! Where state lives.
//!
//! - [`challenges`]: open challenges, ephemeral, in lock-sharded memory
//!   with expiry and a capacity. Lost on restart, which is safe: the user
//!   asks for a new one, and a lost challenge can never become valid.
//! - [`questions`]: what each device was asked (pending question, recently
//!   answered ones, the daily cap): the defence against challenge shopping.
//! - [`registry`]: devices, sealed secrets and PIN hashes, failure counts
//!   and lockouts, durable in an embedded redb database, with an in-memory
//!   index for the hot path.
//! - [`accounts`]: the lifecycle side of the registry (users, activation
//!   states, shares, the withdrawal ledger, the audit log) and
//!   `Registry::change`, the one way the registry changes.
//! - [`datadir`]: the data directory is the service's alone (0700/0600).
//! - [`committer`]: group commit of the hot durable write (failure states).
//! - [`sealed`]: at-rest encryption of secrets under the key file.
//! - [`records`]: how a device record is laid out and sealed, for both.
//! - [`redis`]: the atomic primitives of shared state on a Redis/Valkey
//!   Cluster.
//! - [`shared`]: the state of a deployment of several nodes on those
//!   primitives (`store.backend = "redis"`): devices with a per-node cache,
//!   failure states, open challenges, issuance counts.

pub mod accounts;
pub mod challenges;
pub mod committer;
pub mod datadir;
mod flush;
pub mod questions;
pub mod records;
pub mod redis;
pub mod registry;
pub mod sealed;
pub mod shared;
