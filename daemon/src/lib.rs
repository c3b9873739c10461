//! slsd — the sls second-factor verification daemon, as a library.
//!
//! The binary in `main.rs` is a thin shell over these modules. See
//! `ARCHITECTURE.md` at the repository root for the map; in short:
//!
//! - [`otp`]: the one-time-code algorithms (HOTP, TOTP, OCRA, code cards,
//!   random codes, constant-time comparison). Pure: no state, no I/O, no clock.
//! - [`profile`]: the device kinds of the Secure Login System as data
//!   (suites, code lengths, security levels, withdrawal limits).
//! - [`identity`]: usernames, device and challenge ids.
//! - [`phone`]: phone numbers and delivery channels.
//! - [`policy`]: the lifecycle rules (app PINs, business days, withdrawal
//!   limits, device sharing). Pure.
//! - [`pskc`]: token vendors' key files (RFC 6030), read into tokens to
//!   import.
//! - [`wire`]: the frame codec of the QUIC protocol. Pure: bytes in, typed
//!   requests out, and back.
//! - [`radius`]: the RADIUS front end's packet codec and login dialogue.
//!   Pure.
//! - [`client`]: a client of that protocol (`slsd admin`, the simulator
//!   and the end-to-end tests use it).

// Daemon code must not panic on input: no unwrap/expect/indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod client;
pub mod clock;
pub mod config;
pub mod engine;
pub mod events;
pub mod identity;
pub mod metrics;
pub mod otp;
pub mod phone;
pub mod policy;
pub mod profile;
pub mod pskc;
pub mod radius;
pub mod ratelimit;
pub mod server;
pub mod store;
mod sync;
pub mod wire;
