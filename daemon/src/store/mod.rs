//! Where state lives.
//!
//! - [`challenges`]: open challenges, ephemeral, in lock-sharded memory
//!   with expiry and a capacity. Lost on restart, which is safe: the user
//!   asks for a new one, and a lost challenge can never become valid.
//! - [`registry`]: devices, sealed secrets and PIN hashes, failure counts
//!   and lockouts, durable in an embedded redb database, with an in-memory
//!   index for the hot path.
//! - [`committer`]: group commit of the hot durable write (failure states).
//! - [`sealed`]: at-rest encryption of secrets under the key file.
//! - [`redis`]: the atomic primitives of shared state on a Redis/Valkey
//!   Cluster, for deployments of several nodes (not yet used by the
//!   engine).

pub mod challenges;
pub mod committer;
pub mod redis;
pub mod records;
pub mod registry;
pub mod sealed;
