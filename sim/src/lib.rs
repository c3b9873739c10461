//! sls-sim — the simulator of sls, as a library.
//!
//! It plays the other side of the daemon: hardware cards, phone apps, an SMS
//! carrier and fleets of users under load. Every
//! emulated device computes with the daemon's own `slsd::otp` code.
//!
//! - [`token`]: single emulated tokens (`sls-sim token ...`).
//! - [`client`]: the daemon's protocol client (`slsd::client`, re-exported).
//! - [`cluster`]: a real Redis Cluster on loopback for multi-node runs.
//! - [`carrier`]: SMS/voice delivery bridges and the phones' inboxes.
//! - [`phone`]: IB Key phone apps answering push notices.
//! - [`bench`]: `sls-sim bench`, a load run of complete logins.
//! - [`daemon`]: a local `slsd serve` child process.
//! - [`radius`]: a RADIUS client (a NAS) and `sls-sim radius-bench`.
//! - [`scale`]: `sls-sim registry`, a registry of millions of devices built
//!   and measured.

mod attack;
pub mod bench;
pub mod carrier;
pub use slsd::client;
pub mod cluster;
pub mod daemon;
pub mod device;
pub mod echo;
pub mod fleet;
pub mod load;
pub mod model;
pub mod phone;
mod plot;
pub mod radius;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod token;
