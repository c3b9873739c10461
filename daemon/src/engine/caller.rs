//! Who calls the engine (a role named by the client certificate) and
//! where frames for them go later (a stream's sink).

use std::sync::{Arc, PoisonError};

use crate::otp::push::BINDING_LEN;
use crate::wire::{ErrorCode, Reply};

/// Who is calling, as named by the client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Admin,
    Carrier,
    Phone,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Gateway, Self::Admin, Self::Carrier, Self::Phone];

    /// This role's place in [`Self::ALL`], for per-role arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Gateway => 0,
            Self::Admin => 1,
            Self::Carrier => 2,
            Self::Phone => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Admin => "admin",
            Self::Carrier => "carrier",
            Self::Phone => "phone",
        }
    }
}

/// A stream of the server, as the engine knows it: where frames for a
/// subscription or a pending `AwaitPush` are written.
///
/// Frames are never dropped while the stream lives: a stream whose reader
/// is behind makes them wait, which the tables that hand out frames bound
/// (the outbox, pending pushes).
pub trait Sink: Send + Sync {
    /// Queues a frame; false if the stream has ended.
    fn deliver(&self, frame: Vec<u8>) -> bool;
    /// Whether the stream has ended.
    fn is_closed(&self) -> bool;
}

/// A sink that keeps the replies written to it, for callers that drive the
/// engine in-process (tests, fuzzing, loom models) and read what a bridge,
/// phone or waiting gateway would have received.
#[derive(Debug)]
pub struct ReplyLog(crate::sync::Mutex<Vec<Reply>>);

impl Default for ReplyLog {
    fn default() -> Self {
        Self(crate::sync::Mutex::new(Vec::new()))
    }
}

impl ReplyLog {
    /// The replies written since the last call.
    pub fn take(&self) -> Vec<Reply> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Sink for ReplyLog {
    fn deliver(&self, frame: Vec<u8>) -> bool {
        // The engine writes whole, well-formed frames; one that is not is
        // kept as an `Internal` error naming the problem, so that whatever
        // compares the replies fails on it.
        let reply = match crate::wire::split_frame(&frame, crate::wire::MAX_FRAME_LIMIT) {
            Ok(Some((body, _))) => crate::wire::Response::decode(body)
                .map(|response| response.reply)
                .unwrap_or_else(|e| Reply::error(ErrorCode::Internal, format!("bad frame: {e}"))),
            other => Reply::error(ErrorCode::Internal, format!("bad frame: {other:?}")),
        };
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reply);
        true
    }

    fn is_closed(&self) -> bool {
        false
    }
}

/// Names one stream of one connection, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

/// Who sends a request, and where later frames for it go.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub role: Role,
    /// The connection, unique for the life of the process.
    pub connection: u64,
    pub stream: StreamId,
    /// The connection's TLS exporter value (what phone proofs sign).
    pub binding: &'a [u8; BINDING_LEN],
    /// The stream's writer; `None` for callers without one (tests driving
    /// the engine directly), who cannot subscribe or wait.
    pub sink: Option<&'a Arc<dyn Sink>>,
    /// The request's id: subscription frames and late verdicts carry it.
    pub request: u64,
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("role", &self.role)
            .field("connection", &self.connection)
            .field("stream", &self.stream)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Caller<'static> {
    /// A caller with no stream and no connection binding.
    pub fn detached(role: Role) -> Self {
        const NO_BINDING: [u8; BINDING_LEN] = [0; BINDING_LEN];
        Self {
            role,
            connection: 0,
            stream: StreamId(0),
            binding: &NO_BINDING,
            sink: None,
            request: 0,
        }
    }
}
