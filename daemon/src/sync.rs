//! The synchronisation types of the concurrent stores, switched to loom's
//! with the `loom` feature so that the loom models in `daemon/tests/loom.rs`
//! explore the real code's interleavings, not a copy's.
//!
//! (A feature of this crate, not `--cfg loom`: tokio and other
//! dependencies change their own code under `cfg(loom)` and do not build
//! that way outside their own test suites; a feature also leaves every
//! other crate's build as the tests have it.)

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(feature = "loom")]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::{Mutex, MutexGuard};
