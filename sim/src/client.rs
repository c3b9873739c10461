//! A Rust client of the sls protocol: connect with a role certificate,
//! open streams, pipeline requests, read replies.
//!
//! The simulator's load generator and the end-to-end tests use it; it is
//! also the reference for client authors next to PROTOCOL.md.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use slsd::server::pki;
use slsd::wire::{self, DecodeError, FrameError, Operation, Reply, Request, Response};

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
    #[error("reply {got} does not answer request {sent}")]
    Mismatch { sent: u64, got: u64 },
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
    /// try certificates the daemon must refuse).
    pub async fn connect_with(
        addr: SocketAddr,
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
        let connection = endpoint.connect(addr, "localhost")?.await?;
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
            recv,
            buffer: Vec::new(),
            next_id: 1,
        })
    }

    /// One request on a fresh stream, and its reply.
    pub async fn call(&self, operation: Operation) -> Result<Reply, ClientError> {
        let mut stream = self.stream().await?;
        stream.call(operation).await
    }

    pub fn close(&self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// One stream: write requests (pipelined or not) and read replies.
#[derive(Debug)]
pub struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buffer: Vec<u8>,
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

    /// Reads at least one reply, and every other reply already received,
    /// into `out` (so a pipelining caller can answer them in one write).
    pub async fn receive_ready(&mut self, out: &mut Vec<Response>) -> Result<(), ClientError> {
        out.push(self.receive().await?);
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
