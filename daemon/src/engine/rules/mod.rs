//! The decisions, pure: given the records a decision needs, its input, the
//! time and the rules, what to answer and how the records change. Both
//! stores run these on what they hold (the embedded one under its locks,
//! the cluster one on records read together and written back only if
//! unchanged); neither store decides anything itself. No store, no clock,
//! no locks, no I/O here (`daemon/tests/tidy.rs`).

pub mod ask;
pub mod code;
pub mod devices;
pub mod lockout;
pub mod token;
pub mod verify;
