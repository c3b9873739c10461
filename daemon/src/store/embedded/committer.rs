//! Group commit of the hot durable writes — failure states and withdrawal
//! bookings: many writers, one thread, one transaction (one fsync) per
//! batch.
//!
//! Writers name a device whose failure state changed and/or hand over a
//! booking ([`Committer::submit`]) and await the returned receiver — no
//! thread of theirs waits; the commit thread takes the first waiting
//! change, gathers more for up to `commit-interval` or until
//! `commit-batch` are waiting, writes each device's state *as it is now*
//! and every booking with its audit entry in one transaction, then
//! answers every writer of the batch. Writing the current state rather
//! than a snapshot taken by the writer means two changes to one device
//! can never reach the disk in the wrong order. A burst of wrong answers
//! or withdrawals thus becomes a few commits, not one each, and no answer
//! that depends on a change is sent before the change is durable.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::identity::DeviceId;
use crate::store::FailureState;
use crate::store::embedded::ledger::Booking;
use crate::store::embedded::registry::Registry;

/// The outcome of a commit, as its writers see it.
pub type CommitResult = Result<(), String>;

struct Pending {
    device: Option<DeviceId>,
    booking: Option<Box<Booking>>,
    done: oneshot::Sender<CommitResult>,
}

/// Handle to the commit thread; dropping every handle stops the thread
/// after it has committed what was submitted.
#[derive(Debug, Clone)]
pub struct Committer {
    queue: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the commit thread for `registry`.
    pub fn start(
        registry: Arc<Registry>,
        interval: Duration,
        batch: usize,
    ) -> std::io::Result<Self> {
        let (queue, incoming) = mpsc::channel::<Pending>();
        thread::Builder::new()
            .name("slsd-commit".into())
            .spawn(move || run(&registry, &incoming, interval, batch.max(1)))?;
        Ok(Self { queue })
    }

    /// Queues the device's failure state and the booking for commit; the
    /// receiver says when both (the state at least as new as when this was
    /// called) are durable.
    pub fn submit(
        &self,
        device: Option<DeviceId>,
        booking: Option<Box<Booking>>,
    ) -> oneshot::Receiver<CommitResult> {
        let (done, receiver) = oneshot::channel();
        let pending = Pending {
            device,
            booking,
            done,
        };
        if let Err(mpsc::SendError(pending)) = self.queue.send(pending) {
            let _ = pending
                .done
                .send(Err("the commit thread has stopped".into()));
        }
        receiver
    }
}

fn run(registry: &Registry, incoming: &mpsc::Receiver<Pending>, interval: Duration, batch: usize) {
    let mut waiting = Vec::with_capacity(batch);
    // Blocks for the first change of each batch; ends when all senders are gone.
    while let Ok(first) = incoming.recv() {
        waiting.push(first);
        let deadline = Instant::now() + interval;
        while waiting.len() < batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match incoming.recv_timeout(left) {
                Ok(next) => waiting.push(next),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // Each device once, with its state as it is now. A device revoked
        // meanwhile has nothing left to write.
        let mut seen = HashSet::with_capacity(waiting.len());
        let mut latest: Vec<(DeviceId, FailureState)> = Vec::with_capacity(waiting.len());
        for id in waiting.iter().filter_map(|p| p.device) {
            if !seen.insert(id) {
                continue;
            }
            if let Some(device) = registry.device(id) {
                latest.push((id, *device.failures()));
            }
        }
        let bookings: Vec<&Booking> = waiting
            .iter()
            .filter_map(|p| p.booking.as_deref())
            .collect();
        let outcome = registry.save(&latest, &bookings).map_err(|e| e.to_string());
        if let Err(error) = &outcome {
            let (devices, bookings) = (latest.len(), bookings.len());
            tracing::error!(%error, devices, bookings, "committing a batch failed");
        }
        metrics::histogram!(crate::metrics::COMMIT_BATCH).record(waiting.len() as f64);
        for pending in waiting.drain(..) {
            let _ = pending.done.send(outcome.clone());
        }
    }
}
