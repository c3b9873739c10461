//! The ceiling a run is measured against: quinn echoing small pipelined
//! frames, with the daemon's own TLS (its certificates, client
//! authentication, TLS 1.3), on the same machine in the same minute.
//!
//! A bench's requests/s alone says as much about the machine as about
//! sls (the same build measured 1.7× apart on two days here); the share
//! of this ceiling it reaches does not. Each frame is one request's worth
//! of bytes that the server writes straight back, so the ceiling is what
//! QUIC, TLS and the runtime cost with no work at all; the server runs on
//! a thread of its own with a single-threaded runtime, so its CPU time is
//! read on its own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use slsd::engine::Role;
use slsd::server::pki::{self, PkiPaths};
use tokio::sync::Semaphore;

/// Bytes per echoed frame: a framed `Challenge` or `Verify` is about this.
pub const FRAME: usize = 48;

/// What the echo carried.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    pub requests_per_sec: f64,
    /// CPU seconds of the echo server's thread per second of the run.
    pub server_cores: f64,
    pub streams: usize,
    pub in_flight: usize,
}

/// Why the echo could not run.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error("echo certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("echo: {0}")]
    Io(#[from] std::io::Error),
    #[error("echo connection: {0}")]
    Connect(String),
}

/// Echoes for `duration` over one connection of `streams` streams with
/// `in_flight` frames outstanding in all (spread evenly), as `sls-sim
/// bench` keeps its logins' requests in flight.
pub async fn measure(
    duration: Duration,
    streams: usize,
    in_flight: usize,
) -> Result<Ceiling, EchoError> {
    let dir = tempfile::tempdir()?;
    let paths = PkiPaths::new(dir.path());
    paths.ensure("localhost")?;
    let server_tls = pki::server_tls(&paths)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
        .map_err(|e| EchoError::Connect(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(u32::try_from(streams).unwrap_or(u32::MAX).into());
    server_config.transport_config(Arc::new(transport));

    let stop = Arc::new(AtomicBool::new(false));
    let (ready, address) = tokio::sync::oneshot::channel();
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || serve(server_config, ready, &stop))?
    };
    let addr = address
        .await
        .map_err(|_| EchoError::Connect("the echo server did not start".into()))??;
    let result = drive(&paths, addr, duration, streams, in_flight).await;
    stop.store(true, Ordering::Release);
    let server_cpu = server
        .join()
        .map_err(|_| EchoError::Connect("the echo server panicked".into()))?;
    let (requests, elapsed) = result?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(Ceiling {
        requests_per_sec: requests as f64 / secs,
        server_cores: server_cpu / secs,
        streams,
        in_flight,
    })
}

/// The server thread: echoes every stream of every connection until
/// `stop`; returns its CPU seconds.
fn serve(
    config: quinn::ServerConfig,
    ready: tokio::sync::oneshot::Sender<Result<SocketAddr, EchoError>>,
    stop: &AtomicBool,
) -> f64 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(error.into()));
            return 0.0;
        }
    };
    let before = thread_cpu_seconds();
    runtime.block_on(async {
        let endpoint = match quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into()) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                let _ = ready.send(Err(error.into()));
                return;
            }
        };
        let _ = ready.send(endpoint.local_addr().map_err(EchoError::from));
        let accepting = async {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                        tokio::spawn(async move {
                            while let Ok(Some(chunk)) = recv.read_chunk(8 * 1024, true).await {
                                if send.write_all(&chunk.bytes).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                });
            }
        };
        let stopping = async {
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            () = accepting => {}
            () = stopping => {}
        }
        endpoint.close(0u32.into(), b"done");
    });
    thread_cpu_seconds() - before
}

/// Runs the client side; the frames echoed and how long it took.
async fn drive(
    paths: &PkiPaths,
    addr: SocketAddr,
    duration: Duration,
    streams: usize,
    in_flight: usize,
) -> Result<(u64, Duration), EchoError> {
    let tls = pki::client_tls(
        &paths.ca_cert(),
        &paths.client_cert(Role::Gateway),
        &paths.client_key(Role::Gateway),
    )?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| EchoError::Connect(e.to_string()))?;
    let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(addr, "localhost")
        .map_err(|e| EchoError::Connect(e.to_string()))?
        .await
        .map_err(|e| EchoError::Connect(e.to_string()))?;
    let echoed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let per_stream = (in_flight / streams.max(1)).max(1);
    let mut tasks = Vec::new();
    for _ in 0..streams.max(1) {
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| EchoError::Connect(e.to_string()))?;
        let echoed = Arc::clone(&echoed);
        tasks.push(tokio::spawn(one_stream(
            (send, recv),
            per_stream,
            deadline,
            echoed,
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = start.elapsed();
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok((echoed.load(Ordering::Relaxed), elapsed))
}

/// One stream: keeps `window` frames outstanding, writing as many as have
/// come back (batched, as the bench's pipelines write), until `deadline`.
async fn one_stream(
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    window: usize,
    deadline: Instant,
    echoed: Arc<AtomicU64>,
) {
    let room = Arc::new(Semaphore::new(window));
    let writer = {
        let room = Arc::clone(&room);
        tokio::spawn(async move {
            let frames = vec![0x5a; FRAME * window];
            while Instant::now() < deadline {
                let Ok(permit) = room.acquire().await else {
                    break;
                };
                permit.forget();
                // Whatever else came back meanwhile goes in the same write.
                let more = room.available_permits();
                let n = 1 + more;
                if let Ok(extra) = room.try_acquire_many(u32::try_from(more).unwrap_or(0)) {
                    extra.forget();
                }
                if send.write_all(&frames[..FRAME * n]).await.is_err() {
                    break;
                }
            }
            let _ = send.finish();
        })
    };
    let mut partial = 0usize;
    while let Ok(Some(chunk)) = recv.read_chunk(64 * 1024, true).await {
        partial += chunk.bytes.len();
        let whole = partial / FRAME;
        partial %= FRAME;
        if whole > 0 {
            echoed.fetch_add(whole as u64, Ordering::Relaxed);
            room.add_permits(whole);
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    // The writer may wait for room or for flow control that will not
    // come now that nothing is read.
    room.close();
    writer.abort();
}

/// This thread's user + system CPU seconds (Linux; 0 elsewhere).
fn thread_cpu_seconds() -> f64 {
    crate::bench::cpu_seconds_of(Path::new("/proc/thread-self/stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_echo_carries_frames_and_says_how_fast() {
        let ceiling = measure(Duration::from_millis(500), 2, 32).await.unwrap();
        // Hundreds of thousands a second on any machine that runs the
        // suite; a broken echo carries none.
        assert!(ceiling.requests_per_sec > 1_000.0, "{ceiling:?}");
        assert!(
            ceiling.server_cores > 0.0 && ceiling.server_cores < 1.5,
            "{ceiling:?}"
        );
    }
}
