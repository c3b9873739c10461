//! One connection: its role, its streams, and the request loop of a stream.
//!
//! A stream's reader takes whole frames off the receive buffer (no copy
//! until a frame is complete), handles each request at once, and queues the
//! encoded replies of one read together for the writer task, which sends
//! them in one write. A reply that waits for a durable commit is sent by a
//! small task when the commit is done, and a registry change (enrolment,
//! withdrawal, share...) runs on the blocking pool, so neither holds up the
//! requests behind it: replies may leave out of order, paired by request id.
//!
//! The same loop serves a QUIC stream and a TCP/TLS connection (the
//! fallback carries exactly one stream): what differs is how bytes arrive
//! ([`RequestStream`]) and how a connection is closed ([`Link`]).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use quinn::VarInt;
use rand::SeedableRng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand_chacha::ChaCha20Rng;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Shared;
use crate::clock::{self, Timestamp};
use crate::engine::{Caller, Engine, Role, Sink, StreamId, facts};
use crate::otp::push::BINDING_LEN;
use crate::ratelimit::{Decision, Gcra};
use crate::wire::{self, DecodeError, ErrorCode, Operation, Reply, Request, Response};

/// QUIC application error code: the stream's framing broke.
pub const FRAMING_ERROR: VarInt = VarInt::from_u32(1);
/// QUIC application error code: the client certificate names no role.
pub const NO_ROLE: VarInt = VarInt::from_u32(2);
/// QUIC application error code: the server is shutting down.
pub const SHUTTING_DOWN: VarInt = VarInt::from_u32(3);
/// QUIC application error code: more malformed frames than
/// `server.malformed-frames-per-connection`.
pub const MISBEHAVING: VarInt = VarInt::from_u32(4);
/// QUIC application error code: a stream's replies made no progress for
/// `server.write-stall-timeout` (the client does not read them).
pub const WRITE_STALLED: VarInt = VarInt::from_u32(5);

/// QUIC application error code: every connection slot, or the role's, is
/// taken (`server.max-connections`, `server.max-<role>-connections`).
pub const TOO_MANY_CONNECTIONS: VarInt = VarInt::from_u32(6);
/// The client certificate is on the revocation list (`server.revoked-serials`).
pub const REVOKED: VarInt = VarInt::from_u32(7);

/// Batches of encoded replies waiting for the writer, at most; what bounds
/// them in bytes is the stream's write budget (`server.write-queue-bytes`).
const WRITE_BATCHES: usize = 64;
/// Bytes read from the stream at a time.
pub(super) const READ_CHUNK: usize = 8 * 1024;

/// Where a stream's requests come from.
pub(super) trait RequestStream: Send + 'static {
    /// Appends the next bytes that arrive to `buffer`; false once the
    /// stream has ended, failed, or its connection was closed.
    fn read_more(&mut self, buffer: &mut Vec<u8>) -> impl Future<Output = bool> + Send;
    /// Refuses the rest of the stream after its framing broke.
    fn refuse_rest(&mut self);
}

impl RequestStream for quinn::RecvStream {
    async fn read_more(&mut self, buffer: &mut Vec<u8>) -> bool {
        // A chunk is QUIC's own buffer: an idle stream holds no buffer of
        // ours while it waits.
        match self.read_chunk(READ_CHUNK, true).await {
            Ok(Some(chunk)) => {
                buffer.extend_from_slice(&chunk.bytes);
                true
            }
            Ok(None) | Err(_) => false,
        }
    }

    fn refuse_rest(&mut self) {
        // STOP_SENDING with the framing code: the client's further writes fail.
        let _ = self.stop(FRAMING_ERROR);
    }
}

/// The connection a stream belongs to, to close it when it misbehaves.
pub(super) enum Link {
    Quic(quinn::Connection),
    /// A TCP/TLS connection: closing it ends its one stream's reader (see
    /// `server::tcp`), and with the reader the socket. TCP has no
    /// application close code: the client sees the connection end.
    Tcp(Arc<tokio::sync::Notify>),
}

impl Link {
    pub(super) fn close(&self, code: VarInt, reason: &[u8]) {
        match self {
            Self::Quic(connection) => connection.close(code, reason),
            // One waiter, the reader: a permit stored now wakes it later.
            Self::Tcp(closed) => closed.notify_one(),
        }
    }
}

/// Encoded replies on their way to the writer, holding their share of the
/// stream's write budget until they are written.
struct Queued {
    bytes: Vec<u8>,
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// Where a stream's replies go: its writer's queue, bounded in bytes.
#[derive(Clone)]
struct Writer {
    queue: mpsc::Sender<Queued>,
    budget: Arc<tokio::sync::Semaphore>,
    /// The budget's size: a batch larger than it waits for all of it.
    cap: usize,
}

impl Writer {
    /// Queues `bytes` once the budget has room; false if the stream ended.
    async fn send(&self, bytes: Vec<u8>) -> bool {
        let Ok(budget) = Arc::clone(&self.budget)
            .acquire_many_owned(permits(bytes.capacity(), self.cap))
            .await
        else {
            return false;
        };
        self.queue
            .send(Queued {
                bytes,
                _budget: budget,
            })
            .await
            .is_ok()
    }

    /// Queues `bytes` if the budget and the queue have room now: `Ok(true)`
    /// queued, `Ok(false)` the stream ended, `Err(bytes)` no room.
    fn try_send(&self, bytes: Vec<u8>) -> Result<bool, Vec<u8>> {
        let wanted = permits(bytes.capacity(), self.cap);
        let Ok(budget) = Arc::clone(&self.budget).try_acquire_many_owned(wanted) else {
            return Err(bytes);
        };
        let queued = Queued {
            bytes,
            _budget: budget,
        };
        match self.queue.try_send(queued) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Full(queued)) => Err(queued.bytes),
        }
    }
}

/// The permits `len` bytes take from a budget of `cap`.
fn permits(len: usize, cap: usize) -> u32 {
    u32::try_from(len.clamp(1, cap.max(1))).unwrap_or(u32::MAX)
}

/// Per-connection state shared by its streams.
pub(super) struct ConnectionState {
    pub role: Role,
    pub limiter: Mutex<Gcra>,
    /// Subscriptions refused for a bad proof (each cost an Ed25519
    /// verification): past `server.failed-proofs-per-connection-per-minute`
    /// the connection's subscriptions are answered `RateLimited` unchecked.
    pub proof_failures: Mutex<Gcra>,
    /// Challenges, codes, pushes and tokens issued on this connection
    /// (`server.issuance-per-connection-per-second`).
    pub issuance: Mutex<Gcra>,
    /// Unique for the life of the process.
    pub id: u64,
    /// The TLS exporter value phones sign to subscribe (see `otp::push`).
    pub binding: [u8; BINDING_LEN],
    /// The connection, to close it when it misbehaves.
    pub link: Link,
    /// Malformed request bodies so far.
    pub malformed: std::sync::atomic::AtomicU32,
}

/// The engine's handle on a stream's writer. Weak, so that a subscription
/// or a waiting `AwaitPush` never keeps a finished stream's writer alive.
struct StreamSink {
    queue: mpsc::WeakSender<Queued>,
    budget: Arc<tokio::sync::Semaphore>,
    cap: usize,
}

impl Sink for StreamSink {
    fn deliver(&self, frame: Vec<u8>) -> bool {
        let Some(queue) = self.queue.upgrade() else {
            return false;
        };
        let writer = Writer {
            queue,
            budget: Arc::clone(&self.budget),
            cap: self.cap,
        };
        match writer.try_send(frame) {
            Ok(queued) => queued,
            // The reader is behind: the frame waits for room rather than
            // being dropped. The outbox and the push table bound how many
            // wait.
            Err(frame) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { writer.send(frame).await });
                    true
                }
                Err(_) => false,
            },
        }
    }

    fn is_closed(&self) -> bool {
        self.queue.upgrade().is_none_or(|queue| queue.is_closed())
    }
}

/// This stream, as requests see it.
struct StreamContext {
    id: StreamId,
    sink: Arc<dyn Sink>,
}

/// Serves one bidirectional stream until the client finishes it, the
/// framing breaks, or shutdown.
pub(super) async fn serve_stream(
    shared: Arc<Shared>,
    connection: Arc<ConnectionState>,
    mut send: impl AsyncWrite + Unpin + Send + 'static,
    mut recv: impl RequestStream,
) {
    let (queue, mut queued) = mpsc::channel::<Queued>(WRITE_BATCHES);
    let cap = shared.config().server.write_queue_bytes as usize;
    let writer = Writer {
        queue,
        budget: Arc::new(tokio::sync::Semaphore::new(cap)),
        cap,
    };
    let stream = StreamContext {
        id: StreamId(
            shared
                .next_stream
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ),
        sink: Arc::new(StreamSink {
            queue: writer.queue.downgrade(),
            budget: Arc::clone(&writer.budget),
            cap,
        }),
    };
    let stall = shared.config().server.write_stall_timeout;
    let link = Arc::clone(&connection);
    let writing = tokio::spawn(async move {
        while let Some(first) = queued.recv().await {
            // Gather whatever else is ready into the same write; the
            // budget they hold is given back once it is written.
            let mut batch = vec![first];
            while let Ok(more) = queued.try_recv() {
                batch.push(more);
            }
            let joined;
            let bytes: &[u8] = match batch.as_slice() {
                [one] => &one.bytes,
                _ => {
                    joined = batch.iter().fold(Vec::new(), |mut all, q| {
                        all.extend_from_slice(&q.bytes);
                        all
                    });
                    &joined
                }
            };
            // TLS over TCP may hold the last record until flushed (QUIC
            // sends on its own).
            let written = async {
                send.write_all(bytes).await?;
                send.flush().await
            };
            match tokio::time::timeout(stall, written).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::debug!("a stream's replies made no progress: closing its connection");
                    metrics::counter!(crate::metrics::CLOSED_CONNECTIONS, "reason" => "write_stalled")
                        .increment(1);
                    link.link
                        .close(WRITE_STALLED, b"replies are not being read");
                    return;
                }
            }
        }
        // Finishes our side: a QUIC FIN, or TLS close_notify and TCP FIN.
        let _ = send.shutdown().await;
    });

    // A fast CSPRNG per stream, seeded from the OS (the OS generator costs
    // a system call per draw; see the verify bench).
    let mut rng = ChaCha20Rng::from_rng(&mut UnwrapErr(SysRng));
    let max_frame = shared.config().server.max_frame;
    // Only the part of a frame that has not arrived whole waits here; an
    // idle stream holds no buffer.
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if !recv.read_more(&mut buffer).await {
            break;
        }

        // Replies are about the size of requests; sized up front so that
        // encoding a read's replies does not reallocate as it grows.
        let mut out = Vec::with_capacity(buffer.len() + buffer.len() / 2);
        let mut consumed = 0;
        // One clock reading per read: the requests of one read arrived together.
        let now = clock::now();
        let arrived = Instant::now();
        let broken = loop {
            let rest = buffer.get(consumed..).unwrap_or(&[]);
            match wire::split_frame(rest, max_frame) {
                Ok(Some((body, used))) => {
                    let at = (now, arrived);
                    let context = (&connection, &stream);
                    handle(&shared, context, body, at, &mut rng, &mut out, &writer);
                    consumed += used;
                }
                Ok(None) => break false,
                Err(error) => {
                    tracing::debug!(%error, "stream framing broke");
                    break true;
                }
            }
        };
        buffer.drain(..consumed);
        if buffer.is_empty() {
            buffer = Vec::new();
        }
        // The budget counts what a batch holds, not only what it says: give
        // back room well beyond what was written.
        if out.capacity() > 2 * out.len() + 1024 {
            out.shrink_to_fit();
        }
        // Waits while the stream's earlier replies fill its write budget:
        // a client that does not read stops being read.
        if !out.is_empty() && !writer.send(out).await {
            break;
        }
        if broken {
            // The rest of the stream cannot be framed: refuse it. Our side
            // still delivers the replies to the requests before the bad
            // frame, then finishes: a reset would let QUIC discard them,
            // and a Verify may have consumed its challenge.
            recv.refuse_rest();
            break;
        }
    }
    // Subscriptions of this stream end; a bridge's messages fail over.
    shared.engine.stream_closed(stream.id, clock::now());
    drop(writer);
    let _ = writing.await;
}

/// Handles one frame body: decode, limit, run the engine, queue the reply.
fn handle(
    shared: &Arc<Shared>,
    (connection, stream): (&Arc<ConnectionState>, &StreamContext),
    body: &[u8],
    (now, started): (Timestamp, Instant),
    rng: &mut ChaCha20Rng,
    out: &mut Vec<u8>,
    writer: &Writer,
) {
    // Read once: a reload between two checks of one request does not mix
    // two configurations.
    let server = &shared.config().server;
    // Every frame, well-formed or not, counts toward the connection's rate.
    let decision = lock(&connection.limiter).check(server.request_rate(), now);
    let request = match Request::decode(body) {
        Ok(request) => request,
        Err(error) => {
            let id = body
                .first_chunk::<8>()
                .map_or(0, |b| u64::from_be_bytes(*b));
            let code = match error {
                DecodeError::UnknownOperation(_) => ErrorCode::UnknownOperation,
                _ => ErrorCode::Malformed,
            };
            shared.metrics.count("invalid", "malformed");
            let seen = connection
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if seen >= server.malformed_frames_per_connection {
                metrics::counter!(crate::metrics::CLOSED_CONNECTIONS, "reason" => "malformed")
                    .increment(1);
                connection
                    .link
                    .close(MISBEHAVING, b"too many malformed frames");
                return;
            }
            let reply = match decision {
                Decision::Deny { retry_after } => {
                    Reply::rate_limited(retry_after, "too many requests on this connection")
                }
                Decision::Allow => Reply::error(code, error.to_string()),
            };
            encode(out, id, reply);
            return;
        }
    };
    let operation = request.operation.name();
    let id = request.id;
    let mut answer_now = |label, reply| refuse(shared, out, (id, operation), label, reply);
    if let Decision::Deny { retry_after } = decision {
        let why = "too many requests on this connection";
        return answer_now("rate_limited", Reply::rate_limited(retry_after, why));
    }
    let quota = facts(&request.operation)
        .issues
        .then(|| lock(&connection.issuance).check(server.issuance_rate(), now));
    if let Some(Decision::Deny { retry_after }) = quota {
        let why = "too many challenges, codes and pushes on this connection";
        return answer_now("rate_limited", Reply::rate_limited(retry_after, why));
    }
    if shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        let why = "the server is stopping";
        return answer_now("shutting_down", Reply::error(ErrorCode::ShuttingDown, why));
    }
    let checks_proof = matches!(request.operation, Operation::PhoneSubscribe { .. });
    if checks_proof {
        // Only failures are counted, so look without spending.
        let mut trial = *lock(&connection.proof_failures);
        if let Decision::Deny { retry_after } = trial.check(server.proof_failure_rate(), now) {
            let why = "too many failed proofs on this connection";
            return answer_now("rate_limited", Reply::rate_limited(retry_after, why));
        }
    }
    if shared.engine.is_clustered() {
        // The shared store answers over the network: each request is a
        // task of its own, so the requests behind it are not held up; how
        // many wait on the store at once is bounded.
        let Some(slot) = take_slot(shared, &shared.store_slots, (id, operation), out) else {
            return;
        };
        let (shared, writer) = (Arc::clone(shared), writer.clone());
        let owned = OwnedCaller::of(connection, stream, id);
        let mut rng = ChaCha20Rng::from_rng(rng);
        let connection = Arc::clone(connection);
        let counted = InFlight::start(&shared);
        tokio::spawn(async move {
            let _counted = counted;
            let Some(reply) = shared
                .engine
                .handle_on_cluster(&owned.caller(), request.operation, now, &mut rng)
                .await
            else {
                // Answered later, on this stream (AwaitPush).
                return;
            };
            drop(slot);
            if checks_proof {
                count_proof(&shared, &connection, &reply, now);
            }
            send_outcome(&shared, &writer, (id, operation, started), reply.into()).await;
        });
        return;
    }
    if let Operation::Approve {
        push,
        chosen,
        proof,
    } = request.operation
    {
        // Its signature is checked in a batch with the approvals arriving
        // beside it, on the checking threads: this task waits for that,
        // the stream's other requests do not. How many wait is bounded by
        // push.verify-queue (past it, Busy).
        let (shared, writer) = (Arc::clone(shared), writer.clone());
        let owned = OwnedCaller::of(connection, stream, id);
        let counted = InFlight::start(&shared);
        tokio::spawn(async move {
            let _counted = counted;
            let outcome = shared
                .engine
                .approve(&owned.caller(), push, chosen, &proof, now)
                .await;
            send_outcome(&shared, &writer, (id, operation, started), outcome).await;
        });
        return;
    }
    if facts(&request.operation).changes_registry {
        // A registry change is on disk before its reply (changes run one at
        // a time and share their fsyncs): it runs on the blocking pool so
        // that the logins behind it, on this stream and every other, are
        // not held up; how many run and how many wait are bounded.
        let slots = shared.change_slots.get(connection.role.index());
        let Some(slot) = slots.and_then(|slots| take_slot(shared, slots, (id, operation), out))
        else {
            return;
        };
        let (shared, writer) = (Arc::clone(shared), writer.clone());
        let owned = OwnedCaller::of(connection, stream, id);
        let mut rng = ChaCha20Rng::from_rng(rng);
        let counted = InFlight::start(&shared);
        tokio::spawn(async move {
            let _counted = counted;
            let Ok(running) = Arc::clone(&shared.change_workers).acquire_owned().await else {
                return;
            };
            let worker = Arc::clone(&shared);
            let ran = tokio::task::spawn_blocking(move || {
                worker
                    .engine
                    .handle_from(&owned.caller(), request.operation, now, &mut rng)
            })
            .await;
            drop((running, slot));
            let outcome = match ran {
                Ok(Some(outcome)) => outcome,
                Ok(None) => return,
                Err(_) => Reply::error(ErrorCode::Internal, "the change failed").into(),
            };
            send_outcome(&shared, &writer, (id, operation, started), outcome).await;
        });
        return;
    }
    let caller = Caller {
        role: connection.role,
        connection: connection.id,
        stream: stream.id,
        binding: &connection.binding,
        sink: Some(&stream.sink),
        request: request.id,
    };
    let Some(outcome) = shared
        .engine
        .handle_from(&caller, request.operation, now, rng)
    else {
        // Answered later, on this stream, by the engine (AwaitPush).
        return;
    };
    if checks_proof {
        count_proof(shared, connection, &outcome.reply, now);
    }
    if outcome.is_final() {
        count_outcome(shared, operation, &outcome.reply);
        encode(out, request.id, outcome.reply);
        shared
            .metrics
            .latency(operation, started.elapsed().as_secs_f64());
        return;
    }
    let shared = Arc::clone(shared);
    let writer = writer.clone();
    let id = request.id;
    let counted = InFlight::start(&shared);
    tokio::spawn(async move {
        send_outcome(&shared, &writer, (id, operation, started), outcome).await;
        drop(counted);
    });
}

/// A request answered by a task of its own, counted until its reply is
/// queued (or it waits on the engine for a push): the drain at shutdown
/// waits for these.
pub(super) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(super) fn start(shared: &Arc<Shared>) -> Self {
        shared
            .requests_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .requests_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Counts a subscription refused for its proof against its connection.
fn count_proof(shared: &Shared, connection: &ConnectionState, reply: &Reply, now: Timestamp) {
    if Engine::is_bad_proof(reply) {
        let _ = lock(&connection.proof_failures)
            .check(shared.config().server.proof_failure_rate(), now);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A caller's identity, owned, for a request answered by a task of its own.
struct OwnedCaller {
    role: Role,
    connection: u64,
    stream: StreamId,
    binding: [u8; BINDING_LEN],
    sink: Arc<dyn Sink>,
    request: u64,
}

impl OwnedCaller {
    fn of(connection: &ConnectionState, stream: &StreamContext, request: u64) -> Self {
        Self {
            role: connection.role,
            connection: connection.id,
            stream: stream.id,
            binding: connection.binding,
            sink: Arc::clone(&stream.sink),
            request,
        }
    }

    fn caller(&self) -> Caller<'_> {
        Caller {
            role: self.role,
            connection: self.connection,
            stream: self.stream,
            binding: &self.binding,
            sink: Some(&self.sink),
            request: self.request,
        }
    }
}

/// A place among the requests allowed to wait at once on `slots`; when
/// none is free the request is answered `Busy` at once.
fn take_slot(
    shared: &Shared,
    slots: &Arc<tokio::sync::Semaphore>,
    (id, operation): (u64, &'static str),
    out: &mut Vec<u8>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let taken = Arc::clone(slots).try_acquire_owned().ok();
    if taken.is_none() {
        let why = if shared.engine.is_clustered() {
            "too many requests wait on the store"
        } else {
            "too many registry changes are waiting"
        };
        refuse(
            shared,
            out,
            (id, operation),
            "busy",
            Reply::error(ErrorCode::Busy, why),
        );
    }
    taken
}

/// Answers a request at once without running it, counted under `label`.
fn refuse(
    shared: &Shared,
    out: &mut Vec<u8>,
    (id, operation): (u64, &'static str),
    label: &'static str,
    reply: Reply,
) {
    shared.metrics.count(operation, label);
    encode(out, id, reply);
}

/// Counts a request's reply, through the kept handles (`RequestMetrics`),
/// not a registry lookup per request.
pub(super) fn count_outcome(shared: &Shared, operation: &'static str, reply: &Reply) {
    shared.metrics.count(operation, outcome_label(reply));
}

/// Sends an outcome's reply from a task of its own: once the failure state
/// it depends on is durable, if it has one.
async fn send_outcome(
    shared: &Shared,
    writer: &Writer,
    (id, operation, started): (u64, &'static str, Instant),
    outcome: crate::engine::Outcome,
) {
    count_outcome(shared, operation, &outcome.reply);
    let reply = durable(shared, outcome).await;
    let mut out = Vec::new();
    encode(&mut out, id, reply);
    let _ = writer.send(out).await;
    shared
        .metrics
        .latency(operation, started.elapsed().as_secs_f64());
}

/// An outcome's reply, once the failure state and the withdrawal booking
/// it depends on (if any) are durable; an `Internal` error if they could
/// not be stored.
pub(super) async fn durable(shared: &Shared, outcome: crate::engine::Outcome) -> Reply {
    if outcome.is_final() {
        return outcome.reply;
    }
    match shared
        .committer
        .submit(outcome.persist, outcome.booking)
        .await
    {
        Ok(Ok(())) => outcome.reply,
        _ => Reply::error(ErrorCode::Internal, "the change could not be stored"),
    }
}

fn encode(out: &mut Vec<u8>, id: u64, reply: Reply) {
    let response = Response { id, reply };
    wire::write_frame(out, |body| response.encode_body(body));
}

fn outcome_label(reply: &Reply) -> &'static str {
    use crate::wire::Verdict;
    match reply {
        Reply::Verdict(Verdict::Accepted { .. }) => "accepted",
        Reply::Verdict(Verdict::Rejected { .. }) => "rejected",
        Reply::Verdict(Verdict::Expired) => "expired",
        Reply::Verdict(Verdict::LockedOut { .. }) => "locked_out",
        Reply::Verdict(Verdict::UnknownChallenge) => "unknown_challenge",
        Reply::Verdict(Verdict::Denied) => "denied",
        Reply::Refused { .. } => "refused",
        Reply::OverLimit { .. } => "over_limit",
        Reply::Error { code, .. } => match code {
            ErrorCode::NoVerifiedNumber => "no_verified_number",
            ErrorCode::DeliveryUnavailable => "delivery_unavailable",
            ErrorCode::PhoneUnreachable => "phone_unreachable",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::TooManyChallenges => "too_many_challenges",
            ErrorCode::Busy => "busy",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::ShuttingDown => "shutting_down",
            _ => "error",
        },
        _ => "ok",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Refusal, Verdict};

    #[test]
    fn every_outcome_label_is_a_declared_metric_label() {
        let mut replies = vec![
            Reply::Done,
            Reply::Verdict(Verdict::Rejected { attempts_left: 1 }),
            Reply::Verdict(Verdict::Expired),
            Reply::Verdict(Verdict::UnknownChallenge),
            Reply::Verdict(Verdict::Denied),
            Reply::Refused {
                reason: Refusal::WeakPin,
                message: String::new(),
            },
            Reply::OverLimit {
                device_kind: crate::profile::DeviceKind::Scc,
                remaining_today: None,
                remaining_5d: None,
                kinds_that_allow: Vec::new(),
            },
        ];
        replies.extend(ErrorCode::ALL.map(|code| Reply::error(code, "")));
        for reply in &replies {
            let label = outcome_label(reply);
            assert!(
                crate::metrics::OUTCOMES.contains(&label),
                "{label} (for {reply:?}) is not in OUTCOMES"
            );
        }
    }
}
