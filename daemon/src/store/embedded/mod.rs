//! One node's state.
//!
//! - [`challenges`]: open challenges, ephemeral, in lock-sharded memory
//!   with expiry and a capacity. Lost on restart, which is safe: the user
//!   asks for a new one, and a lost challenge can never become valid.
//! - [`registry`]: devices, sealed secrets and PIN hashes, failure counts
//!   and lockouts, durable in an embedded redb database, with an in-memory
//!   index for the hot path.
//! - [`accounts`]: the lifecycle side of the registry (users, activation
//!   states, shares, the withdrawal ledger, the audit log) and
//!   `Registry::change`, the one way the registry changes.
//! - `load`: every device read at start, one thread per core.
//! - [`backup`]: a consistent copy of the database while it serves, and
//!   the checks a restore makes before it installs one.
//! - `inventory`: imported hardware tokens and their imports (redb only).
//! - [`datadir`]: the data directory is the service's alone (0700/0600).
//! - `reseal`: a key rotation's pass over the tables that hold sealed
//!   values, in batches serialised with the changes.
//! - [`ledger`]: approved withdrawals, decided in memory, written by the
//!   committer.
//! - [`committer`]: group commit of the hot durable writes (failure states,
//!   withdrawal bookings): one thread, one transaction per batch.

pub mod accounts;
pub mod backup;
pub mod challenges;
pub mod committer;
pub mod datadir;
mod flush;
mod inventory;
pub mod ledger;
mod load;
pub mod registry;
mod reseal;
