//! A Rust client of the sls protocol: connect with a role certificate,
//! open streams, pipeline requests, read replies.
//!
//! `slsd admin`, the simulator's load generator and the end-to-end tests
//! use it; it is also the reference for client authors next to PROTOCOL.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};

pub mod tokens;

use crate::server::pki;
use crate::wire::{self, DecodeError, FrameError, Operation, Reply, Request, Response};

/// The largest reply frame the client accepts.
const MAX_REPLY: u32 = wire::MAX_FRAME_LIMIT;

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS setup: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("QUIC: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("writing: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("reading: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("the stream ended")]
    Closed,
    #[error("reply framing: {0}")]
    Frame(#[from] FrameError),
    #[error("reply body: {0}")]
    Decode(#[from] DecodeError),
    #[error("binding a local socket: {0}")]
    Bind(std::io::Error),
    #[error("the stream failed: {0}")]
    Broken(String),
    #[error("reply {got} does not answer request {sent}")]
    Mismatch { sent: u64, got: u64 },
    #[error("no daemon address was given")]
    NoAddress,
}

/// A connection to one daemon.
#[derive(Debug)]
pub struct Client {
    connection: quinn::Connection,
    // Kept so that the endpoint lives as long as the connection.
    _endpoint: quinn::Endpoint,
}

impl Client {
    /// Connects to `addr` trusting `ca`, presenting `cert`/`key` (the role).
    pub async fn connect(
        addr: SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, pki::client_tls(ca, cert, key)?).await
    }

    /// Connects with a TLS configuration of the caller's (tests use this to
    /// try certificates the daemon must refuse), checking the server
    /// certificate against `localhost`.
    pub async fn connect_with(
        addr: SocketAddr,
        tls: rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        Self::connect_named(addr, "localhost", tls).await
    }

    /// Connects to the server named `server_name` (its certificate must
    /// name it: `server.name`).
    pub async fn connect_named(
        addr: SocketAddr,
        server_name: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| pki::PkiError::Tls(e.to_string()))?;
        let local: SocketAddr = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .map_err(|_| ClientError::Bind(std::io::Error::other("local address")))?;
        let mut endpoint = quinn::Endpoint::client(local).map_err(ClientError::Bind)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = endpoint.connect(addr, server_name)?.await?;
        Ok(Self {
            connection,
            _endpoint: endpoint,
        })
    }

    /// Opens a new bidirectional stream.
    pub async fn stream(&self) -> Result<Stream, ClientError> {
        let (send, recv) = self.connection.open_bi().await?;
        Ok(Stream {
            send,
            replies: ReplyReader::new(recv),
            next_id: 1,
        })
    }

    /// Opens a stream shared by many concurrent callers (see [`Pipeline`]).
    pub async fn pipeline(&self, queue: usize) -> Result<Pipeline, ClientError> {
        let (send, recv) = self.connection.open_bi().await?;
        Ok(Pipeline::start(send, ReplyReader::new(recv), queue))
    }

    /// One request on a fresh stream, and its reply.
    pub async fn call(&self, operation: Operation) -> Result<Reply, ClientError> {
        let mut stream = self.stream().await?;
        stream.call(operation).await
    }

    /// The connection's TLS exporter value under `label` (RFC 8446 §7.5):
    /// the same on both ends, different on every connection. Phones sign it
    /// to subscribe.
    pub fn binding(&self, label: &[u8]) -> Result<[u8; 32], ClientError> {
        let mut out = [0u8; 32];
        self.connection
            .export_keying_material(&mut out, label, b"")
            .map_err(|_| ClientError::Broken("no TLS exporter".into()))?;
        Ok(out)
    }

    pub fn close(&self) {
        self.connection.close(0u32.into(), b"done");
    }

    /// The QUIC application error code the peer closed the connection
    /// with, once it has (PROTOCOL.md lists the server's).
    pub fn close_code(&self) -> Option<u64> {
        match self.connection.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }

    /// Why the connection ended, once it has: the server's reason text for
    /// an application close (`"too many malformed frames"`), else how it
    /// ended.
    pub fn close_reason(&self) -> Option<String> {
        self.connection.close_reason().map(|error| match error {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => other.to_string(),
        })
    }
}

/// One stream: write requests (pipelined or not) and read replies.
#[derive(Debug)]
pub struct Stream {
    send: quinn::SendStream,
    replies: ReplyReader,
    next_id: u64,
}

impl Stream {
    /// Writes a request with the next id; returns the id.
    pub async fn send(&mut self, operation: Operation) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_raw(&Request { id, operation }.to_frame()).await?;
        Ok(id)
    }

    /// Writes several requests in one write; returns their ids.
    pub async fn send_batch(
        &mut self,
        operations: Vec<Operation>,
    ) -> Result<Vec<u64>, ClientError> {
        let mut bytes = Vec::new();
        let mut ids = Vec::with_capacity(operations.len());
        for operation in operations {
            let id = self.next_id;
            self.next_id += 1;
            let request = Request { id, operation };
            wire::write_frame(&mut bytes, |body| request.encode_body(body));
            ids.push(id);
        }
        self.send_raw(&bytes).await?;
        Ok(ids)
    }

    /// Writes bytes as they are (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next reply, whichever request it answers.
    pub async fn receive(&mut self) -> Result<Response, ClientError> {
        self.replies.next().await
    }

    /// Reads at least one reply, and every other reply already received,
    /// into `out` (so a pipelining caller can answer them in one write).
    pub async fn receive_ready(&mut self, out: &mut Vec<Response>) -> Result<(), ClientError> {
        self.replies.ready(out).await
    }

    /// Sends one request and reads its reply (nothing else in flight).
    pub async fn call(&mut self, operation: Operation) -> Result<Reply, ClientError> {
        let sent = self.send(operation).await?;
        let response = self.receive().await?;
        if response.id != sent {
            return Err(ClientError::Mismatch {
                sent,
                got: response.id,
            });
        }
        Ok(response.reply)
    }

    /// Says no more requests will come on this stream.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }
}

/// The reading half of a stream: reply frames out of a byte buffer.
#[derive(Debug)]
struct ReplyReader {
    recv: quinn::RecvStream,
    buffer: Vec<u8>,
}

impl ReplyReader {
    fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            buffer: Vec::new(),
        }
    }

    /// The next reply, whichever request it answers.
    async fn next(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some((body, used)) = wire::split_frame(&self.buffer, MAX_REPLY)? {
                let response = Response::decode(body)?;
                self.buffer.drain(..used);
                return Ok(response);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.recv.read(&mut chunk).await? {
                Some(n) => self.buffer.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// At least one reply, and every other whole reply already buffered.
    async fn ready(&mut self, out: &mut Vec<Response>) -> Result<(), ClientError> {
        out.push(self.next().await?);
        let mut consumed = 0;
        while let Some((body, used)) =
            wire::split_frame(self.buffer.get(consumed..).unwrap_or(&[]), MAX_REPLY)?
        {
            out.push(Response::decode(body)?);
            consumed += used;
        }
        self.buffer.drain(..consumed);
        Ok(())
    }
}

type ReplySender = oneshot::Sender<Result<Reply, ClientError>>;
type Waiting = Arc<Mutex<HashMap<u64, ReplySender>>>;

/// One stream shared by many concurrent callers: each [`Pipeline::call`]
/// is written as soon as the stream can take it (requests queued meanwhile
/// leave in one write) and its reply is routed back by request id, so
/// thousands of logins can be in flight on one stream without any of them
/// waiting for another's reply.
///
/// Cheap to clone; the stream closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Pipeline {
    queue: mpsc::Sender<(Operation, ReplySender)>,
}

impl Pipeline {
    fn start(send: quinn::SendStream, replies: ReplyReader, queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let waiting: Waiting = Arc::default();
        tokio::spawn(write_requests(send, rx, Arc::clone(&waiting)));
        tokio::spawn(route_replies(replies, waiting));
        Self { queue: tx }
    }

    /// Sends `operation` and waits for its reply.
    pub async fn call(&self, operation: Operation) -> Result<Reply, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((operation, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }
}

/// Takes whatever requests are queued, registers their reply slots, and
/// writes them in one write.
async fn write_requests(
    mut send: quinn::SendStream,
    mut queue: mpsc::Receiver<(Operation, ReplySender)>,
    waiting: Waiting,
) {
    let mut next_id = 1u64;
    let mut batch = Vec::new();
    let mut bytes = Vec::new();
    while queue.recv_many(&mut batch, 1024).await > 0 {
        // Callers woken by the same batch of replies queue their next
        // requests within one scheduling round; letting them do so first
        // sends them in one write (fewer packets for both ends).
        tokio::task::yield_now().await;
        while batch.len() < 1024 {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        bytes.clear();
        {
            let mut slots = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for (operation, reply) in batch.drain(..) {
                let request = Request {
                    id: next_id,
                    operation,
                };
                wire::write_frame(&mut bytes, |body| request.encode_body(body));
                slots.insert(next_id, reply);
                next_id += 1;
            }
        }
        if let Err(error) = send.write_all(&bytes).await {
            fail_all(&waiting, &ClientError::Write(error));
            return;
        }
    }
    let _ = send.finish();
}

/// Hands each reply to the caller waiting for it.
async fn route_replies(mut replies: ReplyReader, waiting: Waiting) {
    let mut ready = Vec::new();
    loop {
        ready.clear();
        if let Err(error) = replies.ready(&mut ready).await {
            fail_all(&waiting, &error);
            return;
        }
        let mut slots = waiting.lock().unwrap_or_else(PoisonError::into_inner);
        for response in ready.drain(..) {
            if let Some(slot) = slots.remove(&response.id) {
                let _ = slot.send(Ok(response.reply));
            }
        }
    }
}

/// Answers every waiting caller with the stream's failure.
fn fail_all(waiting: &Waiting, error: &ClientError) {
    let message = error.to_string();
    for (_, slot) in waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
    {
        let _ = slot.send(Err(ClientError::Broken(message.clone())));
    }
}
