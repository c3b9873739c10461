//! The TCP/TLS fallback, for clients on networks that block UDP (RFC 9308
//! §3.1): the protocol of the QUIC endpoint — the same frames, ALPN,
//! certificates, roles and limits — over TLS 1.3 on TCP, on its own port
//! (`server.tcp-listen`, off by default).
//!
//! A TCP connection carries exactly one stream: no multiplexing layer,
//! nothing a client in any language needs beyond its TLS library.
//! Requests on it are pipelined by id as on a QUIC stream; a client that
//! wants more opens more connections, each holding a connection slot of
//! its role like a QUIC connection. What QUIC says with a close code, a
//! TCP connection says by ending (after the replies already due).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use super::stream::{self, Link, READ_CHUNK, RequestStream, SHUTTING_DOWN};
use super::{ServeError, Shared, admission, admit_client, pki};
use crate::otp::push::{BINDING_LABEL, BINDING_LEN};
use crate::wire::PROTOCOLS;

/// The fallback's listener and the TLS configuration new connections get
/// (replaced on SIGHUP, like the QUIC endpoint's).
pub(super) struct Front {
    listener: TcpListener,
    tls: Arc<TlsConfig>,
}

/// The TLS configuration new TCP connections get, replaced on SIGHUP.
pub(super) type TlsConfig = watch::Sender<Arc<rustls::ServerConfig>>;

impl Front {
    /// Binds `server.tcp-listen`; `None` when it is empty.
    pub(super) async fn bind(
        shared: &Shared,
        tls: rustls::ServerConfig,
    ) -> Result<Option<Self>, ServeError> {
        let Some(addr) = shared.config().server.tcp_listen else {
            return Ok(None);
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Some(Self {
            listener,
            tls: Arc::new(watch::Sender::new(Arc::new(tls))),
        }))
    }

    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Where the reload puts a new TLS configuration (without holding the
    /// listener open: it closes when the accept loop ends).
    pub(super) fn tls(&self) -> Arc<TlsConfig> {
        Arc::clone(&self.tls)
    }
}

/// Accepts connections until the server stops; each is served by a task
/// of its own, holding `in_flight` until it ends, and closed when
/// `closing` turns true (the end of the shutdown drain).
pub(super) async fn serve(
    shared: Arc<Shared>,
    front: Arc<Front>,
    handshakes: Arc<admission::Handshakes>,
    (in_flight, closing): (Arc<()>, watch::Receiver<bool>),
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        let (socket, remote) = tokio::select! {
            accepted = front.listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or a connection reset before it was
                // taken: the next accept may work; do not spin on it.
                Err(error) => {
                    tracing::debug!(%error, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stopping.changed() => return,
        };
        // The drain may have begun since the accept was ready: the stop is
        // signalled after requests start to be answered ShuttingDown, so a
        // gateway that heard it may connect before this loop sees the stop.
        // Such a connection is refused as every later one is.
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // TCP's own handshake has proven the address: no Retry here.
        let admitted = handshakes.admit(remote.ip(), true, false);
        metrics::gauge!(crate::metrics::HANDSHAKES).set(handshakes.under_way() as f64);
        let ticket = match admitted {
            admission::Admit::Handshake(ticket) => ticket,
            admission::Admit::Retry => continue,
            admission::Admit::Refuse(why) => {
                metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => why)
                    .increment(1);
                continue;
            }
        };
        let tls = Arc::clone(&front.tls.borrow());
        let shared = Arc::clone(&shared);
        let token = Arc::clone(&in_flight);
        let closing = closing.clone();
        tokio::spawn(async move {
            serve_connection(shared, (socket, remote), (tls, ticket), closing).await;
            drop(token);
        });
    }
}

/// Low latency, and a vanished peer noticed: no Nagle delay on small
/// frames; TCP keep-alive probes after `keepalive` of silence.
pub(crate) fn tune(socket: &TcpStream, keepalive: Duration) {
    let _ = socket.set_nodelay(true);
    let probes = socket2::TcpKeepalive::new()
        .with_time(keepalive)
        .with_interval(keepalive)
        .with_retries(3);
    let _ = socket2::SockRef::from(socket).set_tcp_keepalive(&probes);
}

async fn serve_connection(
    shared: Arc<Shared>,
    (socket, remote): (TcpStream, SocketAddr),
    (tls, ticket): (Arc<rustls::ServerConfig>, admission::HandshakeTicket),
    mut closing: watch::Receiver<bool>,
) {
    tune(&socket, shared.config().server.tcp_keepalive);
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(socket);
    let tls = match tokio::time::timeout(shared.config().server.handshake_timeout, handshake).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%remote, %error, "TCP/TLS handshake failed");
            super::refused_certificate_in(remote, &error);
            metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => "handshake")
                .increment(1);
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TCP/TLS handshake timed out");
            metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => "timeout")
                .increment(1);
            return;
        }
    };
    drop(ticket);
    let session = tls.get_ref().1;
    // QUIC refuses a handshake without a common ALPN id; TLS on TCP lets
    // one through, so it is checked here: the id is the protocol's version.
    if !session
        .alpn_protocol()
        .is_some_and(|id| PROTOCOLS.contains(&id))
    {
        metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => "handshake")
            .increment(1);
        return;
    }
    let peer = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(pki::peer_of);
    let binding = session
        .export_keying_material([0u8; BINDING_LEN], BINDING_LABEL, Some(b""))
        .ok();
    let closed = Arc::new(Notify::new());
    let link = Link::Tcp(Arc::clone(&closed));
    let Some(mut admitted) = admit_client(&shared, (remote, "tcp"), peer, binding, link) else {
        // Dropping the connection ends it (a TLS close_notify is not owed
        // to a client refused).
        return;
    };
    let (read, write) = tokio::io::split(tls);
    let requests = TcpRequests { read, closed };
    let state = Arc::clone(&admitted.state);
    let serving = stream::serve_stream(Arc::clone(&shared), state, write, requests);
    tokio::pin!(serving);
    tokio::select! {
        () = &mut serving => return,
        () = admitted.revoked() => admitted.close_revoked(remote),
        _ = closing.wait_for(|closing| *closing) => {
            admitted.state.link.close(SHUTTING_DOWN, b"shutting down");
        }
    }
    // The stream's reader has been told to stop: its replies already due
    // are written, then the connection ends.
    serving.await;
}

/// The requests of a TCP connection's one stream: what its TLS session
/// reads, until the connection is closed by the server.
struct TcpRequests<R> {
    read: R,
    closed: Arc<Notify>,
}

impl<R: AsyncRead + Unpin + Send + 'static> RequestStream for TcpRequests<R> {
    async fn read_more(&mut self, buffer: &mut Vec<u8>) -> bool {
        // One stream per connection, and connections are bounded: a read
        // buffer per idle connection is affordable here (QUIC streams are
        // many more and hold none).
        buffer.reserve(READ_CHUNK);
        tokio::select! {
            read = self.read.read_buf(buffer) => matches!(read, Ok(n) if n > 0),
            () = self.closed.notified() => false,
        }
    }

    /// Nothing to do: the reader stops, the replies already due are
    /// written, and the connection ends with the stream.
    fn refuse_rest(&mut self) {}
}
