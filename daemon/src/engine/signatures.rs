//! Push approvals' signature checks, verified together.
//!
//! An Ed25519 check is the costliest step of a push login, and checked
//! together (`otp::push::verify_each`) signatures cost about half as much
//! each. Approvals are handed to checking threads through a bounded queue;
//! a thread takes whatever is waiting, up to `push.verify-batch`, and
//! checks it as one batch. Nothing waits to fill a batch: an approval that
//! arrives alone is checked alone at once, and batches grow only while the
//! threads are busy, which is when they pay. The threads start with the
//! first approval, so an engine that never sees one starts none.
//!
//! The server turns it on (`Engine::check_signatures_in_batches`). Until
//! then checks are made inline, at once: the fuzz target, replays and
//! tests poll the engine once and have no threads to wait for, and the
//! synchronous `Engine::handle_from` always checks inline.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio::sync::oneshot;

use crate::config::PushConfig;
use crate::otp::push::{SignedMessage, verify_each};

/// Why a signature was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Unchecked {
    /// `push.verify-queue` approvals already wait for their check.
    #[error("too many approvals wait for their signature check")]
    Full,
    /// No checking thread could be started, or it is gone.
    #[error("the signature checks stopped")]
    Stopped,
}

/// One check and where its answer goes.
pub(super) struct Waiting {
    signed: SignedMessage,
    answer: oneshot::Sender<bool>,
}

/// How signatures are checked: inline, or through the queue to the
/// checking threads, started on first use.
#[derive(Debug, Default)]
pub(super) enum SignatureChecks {
    #[default]
    Inline,
    Batched {
        queue: OnceLock<Option<SyncSender<Waiting>>>,
        capacity: usize,
        batch: usize,
        threads: usize,
    },
}

impl SignatureChecks {
    /// Checks in batches, with `config`'s queue, batch size and threads.
    pub fn batched(config: &PushConfig) -> Self {
        Self::Batched {
            queue: OnceLock::new(),
            capacity: config.verify_queue,
            batch: config.verify_batch,
            threads: config.verify_threads,
        }
    }

    /// Whether `signed` verifies: at once when inline, else checked in a
    /// batch with the approvals waiting beside it.
    pub async fn check(&self, signed: SignedMessage) -> Result<bool, Unchecked> {
        let Self::Batched {
            queue,
            capacity,
            batch,
            threads,
        } = self
        else {
            return Ok(signed.verifies());
        };
        let queue = queue.get_or_init(|| start(*capacity, *batch, *threads));
        let queue = queue.as_ref();
        let queue = queue.ok_or(Unchecked::Stopped)?;
        let (answer, answered) = oneshot::channel();
        queue
            .try_send(Waiting { signed, answer })
            .map_err(|error| match error {
                TrySendError::Full(_) => Unchecked::Full,
                TrySendError::Disconnected(_) => Unchecked::Stopped,
            })?;
        answered.await.map_err(|_| Unchecked::Stopped)
    }
}

/// Starts the checking threads; `None` if not one could be. They end when
/// the engine (the queue's only sender) is dropped.
fn start(capacity: usize, batch: usize, threads: usize) -> Option<SyncSender<Waiting>> {
    let (sender, receiver) = sync_channel(capacity);
    let receiver = Arc::new(Mutex::new(receiver));
    let mut started = 0;
    for n in 0..threads {
        let receiver = Arc::clone(&receiver);
        let thread = std::thread::Builder::new()
            .name(format!("sls-signatures-{n}"))
            .spawn(move || check_batches(&receiver, batch));
        match thread {
            Ok(_) => started += 1,
            Err(error) => tracing::error!(%error, "a signature-checking thread did not start"),
        }
    }
    (started > 0).then_some(sender)
}

/// A checking thread: takes what waits, checks it, answers, and again
/// until the queue's sender is gone.
fn check_batches(receiver: &Mutex<Receiver<Waiting>>, batch: usize) {
    while let Some(waiting) = gather(receiver, batch) {
        metrics::histogram!(crate::metrics::PUSH_SIGNATURE_BATCH).record(waiting.len() as f64);
        let signed: Vec<&SignedMessage> = waiting.iter().map(|w| &w.signed).collect();
        let verified = verify_each(&signed);
        for (one, verified) in waiting.into_iter().zip(verified) {
            // The approval's caller may have gone; its answer is then moot.
            let _ = one.answer.send(verified);
        }
    }
}

/// The next batch: the first check to arrive, then whatever else already
/// waits, up to `batch`; `None` once the sender is gone. One thread at a
/// time gathers, the others check meanwhile.
fn gather(receiver: &Mutex<Receiver<Waiting>>, batch: usize) -> Option<Vec<Waiting>> {
    let receiver = receiver.lock().unwrap_or_else(PoisonError::into_inner);
    let first = receiver.recv().ok()?;
    let mut waiting = Vec::with_capacity(batch);
    waiting.push(first);
    waiting.extend(receiver.try_iter().take(batch.saturating_sub(1)));
    Some(waiting)
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::identity::{DeviceId, PushId};
    use crate::otp::push::{PushSigner, approve_message};

    fn config(verify_queue: usize, verify_batch: usize, verify_threads: usize) -> PushConfig {
        PushConfig {
            verify_queue,
            verify_batch,
            verify_threads,
            ..crate::config::Config::default().push
        }
    }

    fn approval(n: u8, good: bool) -> SignedMessage {
        let phone = PushSigner::from_seed([n; 32]);
        let message = approve_message(PushId(u64::from(n)), DeviceId(1), n);
        let mut signature = phone.sign(&message);
        if !good {
            signature.0[0] ^= 1;
        }
        SignedMessage {
            key: phone.public(),
            message,
            signature,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn approvals_checked_together_each_get_their_own_answer() {
        for threads in [1, 2] {
            let checks = Arc::new(SignatureChecks::batched(&config(256, 8, threads)));
            let asked: Vec<_> = (1..=64u8)
                .map(|n| {
                    let checks = Arc::clone(&checks);
                    let good = n % 5 != 0;
                    tokio::spawn(async move { (good, checks.check(approval(n, good)).await) })
                })
                .collect();
            for asked in asked {
                let (good, answer) = asked.await.unwrap();
                assert_eq!(answer, Ok(good));
            }
        }
    }

    #[test]
    fn inline_checks_answer_at_once() {
        let checks = SignatureChecks::default();
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for good in [true, false] {
            let mut check = Box::pin(checks.check(approval(1, good)));
            let answer = check.as_mut().poll(&mut context);
            assert_eq!(answer, std::task::Poll::Ready(Ok(good)));
        }
    }

    /// Checks whose queue the test holds, with no thread taking from it.
    fn held(capacity: usize) -> (SignatureChecks, Mutex<Receiver<Waiting>>) {
        let (sender, receiver) = sync_channel(capacity);
        let checks = SignatureChecks::Batched {
            queue: OnceLock::from(Some(sender)),
            capacity,
            batch: 8,
            threads: 1,
        };
        (checks, Mutex::new(receiver))
    }

    #[test]
    fn a_full_queue_refuses_instead_of_growing() {
        let (checks, _receiver) = held(2);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let mut first = Box::pin(checks.check(approval(1, true)));
        let mut second = Box::pin(checks.check(approval(2, true)));
        // Polled once, each is queued and waits for its answer.
        assert!(first.as_mut().poll(&mut context).is_pending());
        assert!(second.as_mut().poll(&mut context).is_pending());
        let mut third = Box::pin(checks.check(approval(3, true)));
        let refused = third.as_mut().poll(&mut context);
        assert_eq!(refused, std::task::Poll::Ready(Err(Unchecked::Full)));
    }

    #[test]
    fn a_batch_takes_what_waits_up_to_its_size() {
        let (checks, receiver) = held(16);
        let mut answers = Vec::new();
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        for n in 1..=5u8 {
            let mut check = Box::pin(checks.check(approval(n, true)));
            assert!(check.as_mut().poll(&mut context).is_pending());
            answers.push(check);
        }
        assert_eq!(gather(&receiver, 2).map(|w| w.len()), Some(2));
        assert_eq!(gather(&receiver, 2).map(|w| w.len()), Some(2));
        assert_eq!(gather(&receiver, 2).map(|w| w.len()), Some(1));
        drop(answers);
        drop(checks);
        assert!(gather(&receiver, 2).is_none(), "the queue's sender is gone");
    }
}
