//! The service manager's side of a start and a stop (systemd's `sd_notify`
//! protocol, `contrib/systemd/slsd.service`): `READY=1` once every
//! listener is bound and the registry is loaded, so units ordered after
//! sls start when it answers; `WATCHDOG=1` from the loop that ticks the
//! engine; `RELOADING=1` and `READY=1` around a SIGHUP; `STOPPING=1` when
//! the drain begins.
//!
//! Not under systemd (no `NOTIFY_SOCKET`), each of these does nothing.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells the service manager the daemon serves.
pub(super) fn ready(devices: usize) {
    let status = format!("serving, {devices} devices");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells the service manager a reload began. systemd 253 and later wants
/// the monotonic time beside it (`Type=notify-reload`); earlier ones
/// ignore it.
pub(super) fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// Tells the service manager a reload ended (whether or not it took).
pub(super) fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is draining.
pub(super) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "could not notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The watchdog's pings, when the unit asks for them (`WatchdogSec=`).
///
/// The loop that ticks the engine every 100 ms calls [`Watchdog::tick`], so
/// a ping proves more than a live process: the runtime still schedules
/// tasks and the engine's tables are not stuck behind a lock. If either
/// stops, the pings stop and systemd restarts the service.
#[derive(Debug)]
pub(super) struct Watchdog {
    /// Half the manager's timeout, as `sd_watchdog_enabled(3)` advises:
    /// one late tick does not cost a restart.
    every: Duration,
    last: Option<Instant>,
}

impl Watchdog {
    /// The watchdog the environment asks for (`WATCHDOG_USEC`, for this
    /// process by `WATCHDOG_PID`), if any.
    pub(super) fn from_env() -> Option<Self> {
        let timeout = sd_notify::watchdog_enabled()?;
        tracing::info!(timeout = ?timeout, "systemd watchdog enabled");
        Some(Self {
            every: timeout / 2,
            last: None,
        })
    }

    /// Pings if half the timeout has passed since the last ping.
    pub(super) fn tick(&mut self, now: Instant) {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            return;
        }
        self.last = Some(now);
        send(&[NotifyState::Watchdog]);
    }
}
