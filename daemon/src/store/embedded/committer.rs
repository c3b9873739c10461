//! Group commit of failure states: many writers, one transaction (one
//! fsync) per batch.
//!
//! Writers name a device whose failure state changed ([`Committer::submit`])
//! and wait on the returned receiver; a dedicated thread takes the first
//! waiting device, gathers more for up to `commit-interval` or until
//! `commit-batch` are waiting, writes each device's state *as it is now* in
//! one transaction, then wakes every writer of the batch. Writing the
//! current state rather than a snapshot taken by the writer means two
//! changes to one device can never reach the disk in the wrong order. A burst of wrong answers thus becomes a few commits, not one
//! per answer, and no answer that depends on a change is sent before the
//! change is durable.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::identity::DeviceId;
use crate::store::FailureState;
use crate::store::embedded::registry::Registry;

/// The outcome of a commit, as its writers see it.
pub type CommitResult = Result<(), String>;

struct Pending {
    device: DeviceId,
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

    /// Queues the device's failure state for commit; the receiver says
    /// when the state (at least as new as when this was called) is durable.
    pub fn submit(&self, device: DeviceId) -> oneshot::Receiver<CommitResult> {
        let (done, receiver) = oneshot::channel();
        if let Err(mpsc::SendError(pending)) = self.queue.send(Pending { device, done }) {
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
        for pending in &waiting {
            if !seen.insert(pending.device) {
                continue;
            }
            if let Some(device) = registry.device(pending.device) {
                latest.push((pending.device, *device.failures()));
            }
        }
        let outcome = registry.save_failures(&latest).map_err(|e| e.to_string());
        if let Err(error) = &outcome {
            tracing::error!(%error, changes = latest.len(), "committing failure states failed");
        }
        metrics::histogram!(crate::metrics::COMMIT_BATCH).record(waiting.len() as f64);
        for pending in waiting.drain(..) {
            let _ = pending.done.send(outcome.clone());
        }
    }
}
