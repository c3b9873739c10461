//! The synchronisation types of the concurrent stores, switched to loom's
//! under `--cfg sls_loom` so that the loom models in `daemon/tests/loom.rs`
//! explore the real code's interleavings, not a copy's.
//!
//! (The cfg is `sls_loom`, not `loom`: tokio and other dependencies change
//! their own code under `cfg(loom)` and do not build that way outside
//! their own test suites.)

#[cfg(sls_loom)]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(sls_loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(sls_loom))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(sls_loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};
