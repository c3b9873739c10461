//! The rules of the Secure Login System's device lifecycle, as pure
//! functions: app PIN rules, business days, withdrawal limits, device
//! sharing. No state, no I/O, no clock — the engine hands in what they
//! judge (`daemon/tests/tidy.rs` keeps it so).

pub mod calendar;
pub mod pin;
pub mod sharing;
pub mod withdrawal;
