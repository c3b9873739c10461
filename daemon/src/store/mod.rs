//! Where state lives.
//!
//! - [`change`]: the `Store` trait the lifecycle operations are written
//!   against once, and the registry change both backends commit whole.
//! - [`model`]: the types both backends and the engine share (a device
//!   ready to verify, its failure state, accounts, shares, open
//!   challenges, store errors); re-exported here.
//! - [`questions`]: what each device was asked (pending question, recently
//!   answered ones, the daily cap): the defence against challenge shopping.
//! - [`sealed`]: at-rest encryption of secrets under the key file.
//! - [`inventory`]: imported hardware tokens by serial and the imports
//!   that brought them, the same on both backends.
//! - [`records`]: how a device record is laid out and sealed, for both
//!   backends.
//! - [`embedded`]: one node's state — open challenges in lock-sharded
//!   memory, the registry (devices, failure states, accounts, shares, the
//!   ledger, the audit log) in an embedded redb database with an in-memory
//!   index, its group commits and its data directory.
//! - [`cluster`]: a deployment of several nodes sharing a Redis/Valkey
//!   Cluster (`store.backend = "redis"`): the atomic primitives
//!   (`cluster::redis`) and the records on them, each authenticated.

pub mod change;
pub mod cluster;
pub mod embedded;
pub mod inventory;
pub mod model;
pub mod questions;
pub mod records;
pub mod sealed;

pub use change::{RegistryChange, Shipped, Store, UserView};
pub use model::*;
