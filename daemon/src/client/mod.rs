//! A Rust client of the sls protocol: connect with a role certificate,
//! open streams, pipeline requests, read replies.
//!
//! `slsd admin`, the simulator's load generator and the end-to-end tests
//! use it; it is also the reference for client authors next to PROTOCOL.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

pub mod tokens;

use crate::otp::push::{BINDING_LABEL, BINDING_LEN};
use crate::server::pki;
use crate::wire::{self, DecodeError, FrameError, Operation, Reply, Request, Response};

/// The largest reply frame the client accepts.
const MAX_REPLY: u32 = wire::MAX_FRAME_LIMIT;

/// How often a QUIC client pings while it waits (the server's idle
/// timeout is 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// TCP keep-alive on the client's fallback connections: a daemon that
/// vanished is noticed within about four times this.
const TCP_KEEPALIVE: Duration = Duration::from_secs(10);

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS setup: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("QUIC: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("TCP/TLS: {0}")]
    Tcp(std::io::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("unreachable over QUIC ({quic}) and over TCP/TLS ({tcp})")]
    Unreachable { quic: String, tcp: String },
    #[error("writing: {0}")]
    Write(std::io::Error),
    #[error("reading: {0}")]
    Read(std::io::Error),
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

impl ClientError {
    /// The QUIC application error code the server stopped a stream with
    /// (`1`: its framing broke), when that is why a write failed.
    pub fn stopped_code(&self) -> Option<u64> {
        let Self::Write(error) = self else {
            return None;
        };
        match error.get_ref()?.downcast_ref::<quinn::WriteError>()? {
            quinn::WriteError::Stopped(code) => Some(code.into_inner()),
            _ => None,
        }
    }
}

/// Where a daemon listens, and how long QUIC is given before the client
/// falls back to TCP/TLS (PROTOCOL.md, "TCP/TLS fallback").
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub quic: SocketAddr,
    /// The daemon's `server.tcp-listen`; `None`: QUIC only.
    pub tcp: Option<SocketAddr>,
    /// How long each transport is given to connect.
    pub wait: Duration,
}

/// Which transport a client ended up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Tcp,
}

/// A connection to one daemon: a QUIC connection whose streams are
/// opened on it, or the TCP/TLS fallback, where each stream is a TLS
/// connection of its own.
#[derive(Debug)]
pub struct Client {
    link: Link,
}

#[derive(Debug)]
enum Link {
    Quic {
        connection: quinn::Connection,
        // Kept so that the endpoint lives as long as the connection.
        _endpoint: quinn::Endpoint,
    },
    Tcp(TcpLink),
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

    /// Connects over QUIC to the server named `server_name` (its
    /// certificate must name it: `server.name`).
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
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        // The server closes a connection silent for 30 s; a call that takes
        // longer (a backup of a large registry) would lose its reply.
        // Pings keep a waiting client's connection open.
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(KEEP_ALIVE));
        config.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(config);
        let connection = endpoint.connect(addr, server_name)?.await?;
        Ok(Self {
            link: Link::Quic {
                connection,
                _endpoint: endpoint,
            },
        })
    }

    /// Connects over the TCP/TLS fallback only. The first TLS connection
    /// is made now (and serves the first stream), so an unreachable
    /// daemon or a refused certificate shows here, as with QUIC.
    pub async fn connect_tcp(
        addr: SocketAddr,
        server_name: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|e| pki::PkiError::Tls(e.to_string()))?;
        let mut link = TcpLink {
            addr,
            name,
            connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            first: Mutex::new(None),
            protocol: None,
            open: Arc::default(),
        };
        let first = link.open().await?;
        link.protocol = first.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        *lock(&link.first) = Some(Box::new(first));
        Ok(Self {
            link: Link::Tcp(link),
        })
    }

    /// Connects over QUIC, and over TCP/TLS when QUIC cannot reach the
    /// daemon: no answer within `endpoints.wait` (UDP blocked on the way)
    /// or a network error. Each transport is given `wait`. A daemon that answered and refused (a
    /// certificate, a close) is not tried again over TCP.
    pub async fn connect_to(
        endpoints: &Endpoints,
        server_name: &str,
        tls: rustls::ClientConfig,
    ) -> Result<Self, ClientError> {
        let quic = Self::connect_named(endpoints.quic, server_name, tls.clone());
        let quic = tokio::time::timeout(endpoints.wait, quic).await;
        let Some(tcp) = endpoints.tcp else {
            return quic.unwrap_or(Err(ClientError::TimedOut(endpoints.wait)));
        };
        let failure = match quic {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(error)) if !unreachable(&error) => return Err(error),
            Ok(Err(error)) => error.to_string(),
            Err(_) => ClientError::TimedOut(endpoints.wait).to_string(),
        };
        tracing::warn!(quic = %endpoints.quic, %tcp, %failure, "QUIC did not connect: falling back to TCP/TLS");
        match tokio::time::timeout(endpoints.wait, Self::connect_tcp(tcp, server_name, tls)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(error)) => Err(ClientError::Unreachable {
                quic: failure,
                tcp: error.to_string(),
            }),
            Err(_) => Err(ClientError::Unreachable {
                quic: failure,
                tcp: ClientError::TimedOut(endpoints.wait).to_string(),
            }),
        }
    }

    /// The protocol version the daemon and this client agreed on: the ALPN
    /// id, the first of the daemon's that this client offered.
    pub fn protocol(&self) -> Option<Vec<u8>> {
        match &self.link {
            Link::Quic { connection, .. } => {
                connection
                    .handshake_data()?
                    .downcast::<quinn::crypto::rustls::HandshakeData>()
                    .ok()?
                    .protocol
            }
            Link::Tcp(link) => link.protocol.clone(),
        }
    }

    /// The transport this client is on.
    pub fn transport(&self) -> Transport {
        match self.link {
            Link::Quic { .. } => Transport::Quic,
            Link::Tcp(_) => Transport::Tcp,
        }
    }

    /// Opens a new bidirectional stream (on TCP: a new TLS connection,
    /// except for the first, made by `connect_tcp`).
    pub async fn stream(&self) -> Result<Stream, ClientError> {
        let (send, replies, binding) = self.open().await?;
        Ok(Stream {
            send,
            replies,
            binding,
            next_id: 1,
        })
    }

    /// Opens a stream shared by many concurrent callers (see [`Pipeline`]).
    pub async fn pipeline(&self, queue: usize) -> Result<Pipeline, ClientError> {
        let (send, replies, binding) = self.open().await?;
        Ok(Pipeline::start(send, replies, binding, queue, None))
    }

    /// A pipeline on a new stream for a subscriber: the notices the server
    /// sends on it unasked (`PushNotice`, carrier `Message`) come out of
    /// the receiver, at most `queue` waiting. A phone or carrier bridge
    /// subscribes and answers on it, so its answers leave on the
    /// connection it subscribed on (over TCP, the only one that may
    /// answer: PROTOCOL.md, "TCP/TLS fallback").
    pub async fn subscription(
        &self,
        queue: usize,
    ) -> Result<(Pipeline, mpsc::Receiver<Response>), ClientError> {
        let (send, replies, binding) = self.open().await?;
        let (notices, received) = mpsc::channel(queue.max(1));
        let pipeline = Pipeline::start(send, replies, binding, queue, Some(notices));
        Ok((pipeline, received))
    }

    async fn open(&self) -> Result<(Writer, ReplyReader, Binding), ClientError> {
        match &self.link {
            Link::Quic { connection, .. } => {
                let (send, recv) = connection.open_bi().await?;
                let binding = Binding::Quic(connection.clone());
                Ok((
                    Box::new(send),
                    ReplyReader::new(Box::new(recv), None),
                    binding,
                ))
            }
            Link::Tcp(link) => {
                let first = lock(&link.first).take();
                let tls = match first {
                    Some(tls) => *tls,
                    None => link.open().await?,
                };
                let mut binding = [0u8; BINDING_LEN];
                tls.get_ref()
                    .1
                    .export_keying_material(&mut binding, BINDING_LABEL, Some(b""))
                    .map_err(|_| ClientError::Broken("no TLS exporter".into()))?;
                let registered = link.register(tls.get_ref().0);
                let (recv, send) = tokio::io::split(tls);
                let replies = ReplyReader::new(Box::new(recv), registered);
                Ok((Box::new(send), replies, Binding::Tcp(binding)))
            }
        }
    }

    /// One request on a fresh stream, and its reply.
    pub async fn call(&self, operation: Operation) -> Result<Reply, ClientError> {
        let mut stream = self.stream().await?;
        stream.call(operation).await
    }

    /// Closes the connection (on TCP: every connection its streams made).
    pub fn close(&self) {
        match &self.link {
            Link::Quic { connection, .. } => connection.close(0u32.into(), b"done"),
            Link::Tcp(link) => link.close(),
        }
    }

    /// The QUIC application error code the peer closed the connection
    /// with, once it has (PROTOCOL.md lists the server's); TCP carries none.
    pub fn close_code(&self) -> Option<u64> {
        let Link::Quic { connection, .. } = &self.link else {
            return None;
        };
        match connection.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }

    /// Why the connection ended, once it has: the server's reason text for
    /// an application close (`"too many malformed frames"`), else how it
    /// ended (QUIC only: a TCP connection ends without a reason).
    pub fn close_reason(&self) -> Option<String> {
        let Link::Quic { connection, .. } = &self.link else {
            return None;
        };
        connection.close_reason().map(|error| match error {
            quinn::ConnectionError::ApplicationClosed(close) => {
                String::from_utf8_lossy(&close.reason).into_owned()
            }
            other => other.to_string(),
        })
    }
}

/// Whether a QUIC connect failed for want of reaching the daemon (so
/// TCP/TLS is worth a try), not because the daemon refused.
fn unreachable(error: &ClientError) -> bool {
    match error {
        ClientError::Connection(error) => matches!(
            error,
            quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset
        ),
        ClientError::Bind(_) | ClientError::Connect(_) => true,
        _ => false,
    }
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type ReaderHalf = Box<dyn AsyncRead + Send + Unpin>;

/// The TCP/TLS fallback: one TLS connection per stream.
struct TcpLink {
    addr: SocketAddr,
    name: rustls::pki_types::ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    /// The connection `connect_tcp` made, for the first stream.
    first: Mutex<Option<Box<TlsStream>>>,
    /// The protocol version (ALPN id) the first connection agreed on.
    protocol: Option<Vec<u8>>,
    /// The sockets of the streams still open, to end them on `close`.
    open: Arc<OpenSockets>,
}

impl std::fmt::Debug for TcpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLink").field("addr", &self.addr).finish()
    }
}

#[derive(Default)]
struct OpenSockets {
    next: AtomicU64,
    sockets: Mutex<HashMap<u64, socket2::Socket>>,
}

/// A stream's socket among the open ones, until the stream is dropped.
struct Registered {
    id: u64,
    open: Arc<OpenSockets>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.open.sockets).remove(&self.id);
    }
}

impl TcpLink {
    async fn open(&self) -> Result<TlsStream, ClientError> {
        let socket = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(ClientError::Tcp)?;
        crate::server::tune_tcp(&socket, TCP_KEEPALIVE);
        let tls = self
            .connector
            .connect(self.name.clone(), socket)
            .await
            .map_err(ClientError::Tcp)?;
        Ok(tls)
    }

    /// Keeps a handle on `socket` (a duplicate descriptor) for `close`.
    fn register(&self, socket: &tokio::net::TcpStream) -> Option<Registered> {
        let handle = socket2::SockRef::from(socket).try_clone().ok()?;
        let id = self.open.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.open.sockets).insert(id, handle);
        Some(Registered {
            id,
            open: Arc::clone(&self.open),
        })
    }

    fn close(&self) {
        lock(&self.first).take();
        for (_, socket) in lock(&self.open.sockets).drain() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Where a stream's TLS exporter value comes from.
#[derive(Debug, Clone)]
enum Binding {
    Quic(quinn::Connection),
    Tcp([u8; BINDING_LEN]),
}

impl Binding {
    fn value(&self) -> Result<[u8; BINDING_LEN], ClientError> {
        match self {
            Self::Tcp(binding) => Ok(*binding),
            Self::Quic(connection) => {
                let mut out = [0u8; BINDING_LEN];
                connection
                    .export_keying_material(&mut out, BINDING_LABEL, b"")
                    .map_err(|_| ClientError::Broken("no TLS exporter".into()))?;
                Ok(out)
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One stream: write requests (pipelined or not) and read replies.
pub struct Stream {
    send: Writer,
    replies: ReplyReader,
    binding: Binding,
    next_id: u64,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("next_id", &self.next_id)
            .finish()
    }
}

impl Stream {
    /// The TLS exporter value (RFC 8446 §7.5) of the connection this
    /// stream is on, under the push binding label: the same on both ends,
    /// different on every connection. Phones sign it to subscribe on
    /// this stream.
    pub fn binding(&self) -> Result<[u8; BINDING_LEN], ClientError> {
        self.binding.value()
    }

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
        write_flushed(&mut self.send, bytes)
            .await
            .map_err(ClientError::Write)
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
    pub async fn finish(&mut self) {
        let _ = self.send.shutdown().await;
    }
}

/// Writes `bytes` and flushes them: TLS over TCP may otherwise hold the
/// last record back (QUIC sends on its own).
async fn write_flushed(send: &mut Writer, bytes: &[u8]) -> std::io::Result<()> {
    send.write_all(bytes).await?;
    send.flush().await
}

/// The reading half of a stream: reply frames out of a byte buffer.
struct ReplyReader {
    recv: ReaderHalf,
    buffer: Vec<u8>,
    /// On TCP: the stream's socket, among those `close` ends.
    _registered: Option<Registered>,
}

impl ReplyReader {
    fn new(recv: ReaderHalf, registered: Option<Registered>) -> Self {
        Self {
            recv,
            buffer: Vec::new(),
            _registered: registered,
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
            match self
                .recv
                .read(&mut chunk)
                .await
                .map_err(ClientError::Read)?
            {
                0 => return Err(ClientError::Closed),
                n => self.buffer.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
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
    binding: Binding,
}

impl Pipeline {
    fn start(
        send: Writer,
        replies: ReplyReader,
        binding: Binding,
        queue: usize,
        notices: Option<mpsc::Sender<Response>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let waiting: Waiting = Arc::default();
        tokio::spawn(write_requests(send, rx, Arc::clone(&waiting)));
        tokio::spawn(route_replies(replies, waiting, notices));
        Self { queue: tx, binding }
    }

    /// The TLS exporter value of this stream's connection (see
    /// [`Stream::binding`]).
    pub fn binding(&self) -> Result<[u8; BINDING_LEN], ClientError> {
        self.binding.value()
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
    mut send: Writer,
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
        if let Err(error) = write_flushed(&mut send, &bytes).await {
            fail_all(&waiting, &ClientError::Write(error));
            return;
        }
    }
    let _ = send.shutdown().await;
}

/// Hands each reply to the caller waiting for it, and each notice to
/// `notices` (when the pipeline is a subscriber's; else it is dropped).
async fn route_replies(
    mut replies: ReplyReader,
    waiting: Waiting,
    notices: Option<mpsc::Sender<Response>>,
) {
    let mut ready = Vec::new();
    let mut unasked = Vec::new();
    loop {
        ready.clear();
        if let Err(error) = replies.ready(&mut ready).await {
            fail_all(&waiting, &error);
            return;
        }
        {
            let mut slots = waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for response in ready.drain(..) {
                // A notice carries its subscribe request's id: told apart
                // by its kind, it is never taken for that request's reply.
                if response.reply.is_notice() {
                    unasked.push(response);
                } else if let Some(slot) = slots.remove(&response.id) {
                    let _ = slot.send(Ok(response.reply));
                }
            }
        }
        // Waits while the subscriber is behind: the stream is then not
        // read, and the server holds its notices back.
        for notice in unasked.drain(..) {
            if let Some(notices) = &notices {
                let _ = notices.send(notice).await;
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
