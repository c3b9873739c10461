//! The network edge: the QUIC endpoint, TLS and roles, connections and
//! streams, the metrics endpoint, and graceful shutdown.
//!
//! Architecture invariant: no verification logic here. The server turns
//! bytes into requests (`wire`), asks the `engine`, commits what the engine
//! says must be durable (`store::committer`), and sends the reply.

mod admission;
mod metrics_http;
pub mod pki;
mod radius;
mod stream;
mod systemd;
mod tcp;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use tokio::sync::watch;

use crate::clock;
use crate::config::Backend;
use crate::config::Config;
use crate::engine::{Engine, Role};
use crate::ratelimit::Gcra;
use crate::store::StoreError;
use crate::store::cluster::ClusterStore;
use crate::store::cluster::redis::{Durability, RedisStore};
use crate::store::embedded::committer::Committer;
use crate::store::embedded::registry::Registry;
use crate::store::records::DeviceCodec;
use crate::store::sealed::{Adopted, SecretCipher};
use pki::PkiPaths;
use stream::{ConnectionState, Link, NO_ROLE, REVOKED, SHUTTING_DOWN, TOO_MANY_CONNECTIONS};

pub use pki::role_name;
pub(crate) use tcp::tune as tune_tcp;

/// What every connection task shares.
struct Shared {
    /// Its configuration is the running one (`Shared::config`).
    engine: Engine,
    committer: Committer,
    metrics: crate::metrics::RequestMetrics,
    /// Connection and stream numbers, for subscriptions.
    next_connection: AtomicU64,
    next_stream: AtomicU64,
    /// On a shared store: requests waiting on it at once
    /// (`store.redis-in-flight`); one more is answered `Busy`.
    store_slots: Arc<tokio::sync::Semaphore>,
    /// Registry changes waiting for their commit on the blocking pool, a
    /// pool per role (by `Role::index`): a flood from one role (a phone
    /// with made-up activation ids) never takes another's (an operator's
    /// enrolments).
    change_slots: [Arc<tokio::sync::Semaphore>; 4],
    /// Registry changes running at once on the blocking pool.
    change_workers: Arc<tokio::sync::Semaphore>,
    /// Established connections, in all and per role.
    connections: Arc<admission::Connections>,
    /// Serial numbers of revoked client certificates (`server.revoked-serials`),
    /// replaced on SIGHUP: connections watch it and close when theirs is on it.
    revoked: watch::Sender<Arc<HashSet<Vec<u8>>>>,
    /// The server is draining: new requests are answered ShuttingDown.
    stopping: std::sync::atomic::AtomicBool,
    /// Requests answered by a task of their own, not yet answered: the
    /// drain waits for them.
    requests_in_flight: std::sync::atomic::AtomicUsize,
}

impl Shared {
    /// The running configuration (a reload swaps it: `reload_on_hangup`).
    fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.engine.config()
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Seal(#[from] crate::store::sealed::SealError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("QUIC endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the commit thread: {0}")]
    Committer(std::io::Error),
    #[error("the shared store: {0}")]
    Shared(#[from] crate::store::cluster::redis::RedisError),
    #[error(transparent)]
    Radius(#[from] radius::RadiusError),
    #[error("events.sink: {0}")]
    Events(std::io::Error),
    #[error(
        "the deployment's active at-rest key {0} is not in this node's keyring, and none of \
         its keys opens it (the node missed a whole rotation): copy secrets.key from a node \
         that has it"
    )]
    KeyMissing(crate::store::sealed::KeyId),
}

/// Connects to the deployment's Redis Cluster. Device secrets are sealed
/// under the data directory's key file, which every node of the deployment
/// must share (README: running several nodes).
async fn connect_cluster(
    config: &Config,
    cipher: SecretCipher,
) -> Result<(ClusterStore, crate::otp::SecretKey), ServeError> {
    let store = &config.store;
    let durability = Durability {
        replicas: store.redis_wait_replicas,
        timeout: store.redis_wait_timeout,
    };
    let variable = std::env::var(crate::store::cluster::redis::PASSWORD_VARIABLE).ok();
    let access = crate::store::cluster::redis::RedisAccess::from_config(store, variable)?;
    let redis = RedisStore::connect(&store.redis_urls, durability, &access).await?;
    let codec = DeviceCodec::new(cipher, config.devices.clone());
    tracing::info!(
        nodes = ?store.redis_urls,
        user = access.user().unwrap_or("default"),
        "state is shared on the Redis Cluster"
    );
    let shared = ClusterStore::new(redis, codec, store.cache_ttl);
    let format = shared.check_format().await?;
    tracing::info!(format, "the shared store's record format");
    // A key rotated while this node was down: learned before it serves.
    match shared.follow_keyring().await? {
        Adopted::Missing(active) => return Err(ServeError::KeyMissing(active)),
        Adopted::Changed => log_keyring("learned the deployment's keyring", &shared),
        Adopted::Unchanged => {}
    }
    let code_key = shared.sms_code_key(&mut UnwrapErr(SysRng)).await?;
    Ok((shared, code_key))
}

/// Says which paths of the data directory were open to other users.
fn log_tightened(changed: Vec<crate::store::embedded::datadir::Tightened>) {
    for t in changed {
        tracing::warn!(
            path = %t.path.display(),
            was = format_args!("{:o}", t.was),
            now = format_args!("{:o}", t.now),
            "data directory path was readable by others: mode tightened"
        );
    }
}

/// How often a node on a shared store runs a relay round (local work:
/// links, renewals, delivery changes; no store round trip when idle).
const RELAY_EVERY: Duration = Duration::from_millis(10);
/// How long a node's queue tasks wait in Redis for something to come
/// before asking again (below the connection's 2 s response timeout): what
/// an idle node costs the store is about one round trip a second per
/// queue, not a hundred.
const QUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long the outbox task rests while the node has no carrier bridge.
const NO_BRIDGE_REST: Duration = Duration::from_millis(100);

/// Where a started server can be reached.
#[derive(Debug, Clone)]
pub struct Started {
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    /// The RADIUS front end's UDP address, when it listens.
    pub radius: Option<SocketAddr>,
    /// The TCP/TLS fallback's address, when it listens.
    pub tcp: Option<SocketAddr>,
    pub pki: PkiPaths,
}

/// Runs the daemon until `shutdown` resolves, then stops gracefully: no
/// new connections or requests, in-flight requests finish (bounded by
/// `server.shutdown-grace`), the commit thread drains, the database closes.
/// `on_start` is told where the server listens once it does.
pub async fn serve(
    config: Config,
    data_dir: &Path,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    on_start: impl FnOnce(&Started),
    shutdown: impl std::future::Future<Output = ()>,
    reread: Option<Reread>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let data_dir_error = |source| ServeError::DataDir {
        path: data_dir.into(),
        source,
    };
    // What was open before this start is worth a warning each.
    log_tightened(crate::store::embedded::datadir::secure(data_dir).map_err(data_dir_error)?);
    // The event stream first: a sink that cannot be opened stops the
    // start, rather than every event being lost.
    if let Some(writer) =
        crate::events::Writer::open(&config.events.sink).map_err(ServeError::Events)?
    {
        let stream = crate::events::EventStream::start(writer, config.events.queue)
            .map_err(ServeError::Events)?;
        if !crate::events::install(stream) {
            tracing::warn!("a security event stream was already installed in this process");
        }
    }
    let pki = PkiPaths::new(data_dir);
    if pki.ensure(&config.server.name)? {
        tracing::info!(dir = %data_dir.display(), "created a local CA and certificates");
    }
    for path in pki::long_lived(&pki, clock::now().0 / 1000) {
        tracing::warn!(
            path = %path.display(),
            "certificate still valid in two years (made by an earlier version): \
             replace it (slsd cert server, slsd cert issue)"
        );
    }
    let cipher =
        SecretCipher::load_or_create(&data_dir.join("secrets.key"), &mut UnwrapErr(SysRng))?;
    // From the deployment's key file: every node signs RADIUS States alike.
    let radius_state_key = cipher.digest("sls/1 radius state key", &[]);
    // One keyring for the registry and the shared store: a rotation is
    // seen by both at once.
    let keyring = cipher.clone();
    let registry = Arc::new(
        Registry::open_with_cache(
            &data_dir.join("registry.redb"),
            cipher,
            config.devices.clone(),
            config.store.database_cache_mb << 20,
        )?
        .with_commit_interval(config.store.commit_interval),
    );
    // The database and the files made on a first start take the umask's
    // mode (in a directory nobody else can enter): tightened quietly.
    for t in crate::store::embedded::datadir::secure(data_dir).map_err(data_dir_error)? {
        tracing::debug!(path = %t.path.display(), "new file made private");
    }
    let committer = Committer::start(
        Arc::clone(&registry),
        config.store.commit_interval,
        config.store.commit_batch,
    )
    .map_err(ServeError::Committer)?;
    let mut engine = Engine::new(
        Arc::clone(&config),
        Arc::clone(&registry),
        &mut UnwrapErr(SysRng),
    )
    .check_signatures_in_batches();
    if config.store.backend == Backend::Redis {
        let (store, code_key) = connect_cluster(&config, keyring).await?;
        let node = format!("{:016x}", rand::random::<u64>());
        engine = engine.with_cluster(store, &code_key, node);
        // Counted among the nodes alive before it serves.
        engine.follow_deployment(crate::clock::now()).await?;
    }
    let shared = Arc::new(Shared {
        engine,
        committer,
        metrics: crate::metrics::RequestMetrics::default(),
        next_connection: AtomicU64::new(1),
        next_stream: AtomicU64::new(1),
        store_slots: Arc::new(tokio::sync::Semaphore::new(config.store.redis_in_flight)),
        change_slots: Role::ALL
            .map(|_| Arc::new(tokio::sync::Semaphore::new(config.store.changes_in_flight))),
        change_workers: Arc::new(tokio::sync::Semaphore::new(config.store.change_workers)),
        connections: admission::Connections::new(&config.server),
        revoked: watch::Sender::new(Arc::new(revoked_serials(&config)?)),
        stopping: std::sync::atomic::AtomicBool::new(false),
        requests_in_flight: std::sync::atomic::AtomicUsize::new(0),
    });

    let radius = radius::Front::start(&shared, radius_state_key)
        .await?
        .map(Arc::new);
    let endpoint = endpoint(&config, &pki)?;
    let tcp = tcp::Front::bind(&shared, pki::server_tls(&pki)?)
        .await?
        .map(Arc::new);
    let quic = endpoint.local_addr().map_err(|source| ServeError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let metrics_listener = tokio::net::TcpListener::bind(config.server.metrics)
        .await
        .map_err(|source| ServeError::Metrics {
            addr: config.server.metrics,
            source,
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|source| ServeError::Metrics {
            addr: config.server.metrics,
            source,
        })?;
    // Listening for SIGHUP before saying we started: its default action
    // would end the process.
    #[cfg(unix)]
    let hangups =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| {
            tracing::warn!(error = %e, "SIGHUP cannot be handled: certificates reload only on restart");
        });
    #[cfg(not(unix))]
    let hangups: Result<(), ()> = Err(());
    on_start(&Started {
        quic,
        metrics: metrics_addr,
        radius: radius.as_ref().and_then(|front| front.local_addr()),
        tcp: tcp.as_ref().and_then(|front| front.local_addr()),
        pki: pki.clone(),
    });
    tracing::info!(%quic, metrics = %metrics_addr, devices = registry.len(), "serving");
    systemd::ready(registry.len());

    let (stop, stopping) = watch::channel(false);
    // Told when a newer release finished an upgrade: this node stops.
    // (Kept here too: the channel stays open on a node without the task.)
    let (outdated, mut outdated_seen) = watch::channel(None);
    let background = tokio::spawn(metrics_http::serve(
        metrics_listener,
        metrics,
        stopping.clone(),
    ));
    let sweeper = tokio::spawn(sweep(Arc::clone(&shared), stopping.clone()));
    let radius = radius
        .map(|front| tokio::spawn(radius::serve(Arc::clone(&shared), front, stopping.clone())));
    let reloader = tokio::spawn(reload_on_hangup(
        Arc::clone(&shared),
        (
            endpoint.clone(),
            tcp.as_ref().map(|front| front.tls()),
            pki.clone(),
        ),
        (hangups.ok(), reread),
        stopping.clone(),
    ));
    let rotation = tokio::spawn(rotate_keys(Arc::clone(&shared), stopping.clone()));
    let relay = shared.engine.is_clustered().then(|| {
        [
            tokio::spawn(follow_deployment(
                Arc::clone(&shared),
                outdated.clone(),
                stopping.clone(),
            )),
            tokio::spawn(relay(Arc::clone(&shared), stopping.clone())),
            tokio::spawn(wait_on_queue(
                Arc::clone(&shared),
                Queue::Inbox,
                stopping.clone(),
            )),
            tokio::spawn(wait_on_queue(
                Arc::clone(&shared),
                Queue::Outbox,
                stopping.clone(),
            )),
        ]
    });
    // Every connection and stream task holds a clone; the count says when
    // the in-flight work is done.
    let in_flight = Arc::new(());
    let handshakes = admission::Handshakes::new(&config.server);
    // Turned true at the end of the drain: TCP connections close then, as
    // the QUIC endpoint closes its own.
    let (close_tcp, tcp_closing) = watch::channel(false);
    let tcp = tcp.map(|front| {
        tokio::spawn(tcp::serve(
            Arc::clone(&shared),
            front,
            Arc::clone(&handshakes),
            (Arc::clone(&in_flight), tcp_closing),
            stopping.clone(),
        ))
    });

    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = &mut shutdown => break,
            _ = outdated_seen.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        let admitted = handshakes.admit(
            incoming.remote_address().ip(),
            incoming.remote_address_validated(),
            incoming.may_retry(),
        );
        metrics::gauge!(crate::metrics::HANDSHAKES).set(handshakes.under_way() as f64);
        let ticket = match admitted {
            admission::Admit::Handshake(ticket) => ticket,
            admission::Admit::Retry => {
                metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => "retry")
                    .increment(1);
                if let Err(error) = incoming.retry() {
                    error.into_incoming().refuse();
                }
                continue;
            }
            admission::Admit::Refuse(why) => {
                metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => why)
                    .increment(1);
                incoming.refuse();
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let token = Arc::clone(&in_flight);
        tokio::spawn(serve_connection(shared, (incoming, ticket), token));
    }

    // Draining: no new connections; every new request on the open ones is
    // answered ShuttingDown, gateways waiting on a push hear it now, and
    // the requests already under way finish (up to the grace). Then each
    // connection is closed with code 3.
    tracing::info!("shutting down: no new connections or requests");
    systemd::stopping();
    endpoint.set_server_config(None);
    shared.stopping.store(true, Ordering::SeqCst);
    shared.engine.shutting_down();
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + config.server.shutdown_grace;
    while shared.requests_in_flight.load(Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A push wait that was under way when the drain began has registered by
    // now: it hears ShuttingDown too.
    shared.engine.shutting_down();
    // The last replies queued leave before the close, which would drop them.
    let linger = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .min(Duration::from_millis(100));
    tokio::time::sleep(linger).await;
    endpoint.close(SHUTTING_DOWN, b"shutting down");
    let _ = close_tcp.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // Streams end with their connections.
    let streams_end = tokio::time::Instant::now() + Duration::from_secs(1);
    while Arc::strong_count(&in_flight) > 1 && tokio::time::Instant::now() < streams_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = background.await;
    let _ = sweeper.await;
    if let Some(tcp) = tcp {
        let _ = tcp.await;
    }
    if let Some(radius) = radius {
        let _ = radius.await;
    }
    let _ = reloader.await;
    let _ = rotation.await;
    for task in relay.into_iter().flatten() {
        let _ = task.await;
    }
    // Dropping the last committer handle lets the commit thread finish what
    // was queued; the registry (and the database) close after it.
    drop(shared);
    // The events of the drain are written before the process ends.
    crate::events::close(Duration::from_secs(2));
    tracing::info!("stopped");
    match *outdated_seen.borrow_and_update() {
        Some((found, supported)) => Err(StoreError::NewerFormat { found, supported }.into()),
        None => Ok(()),
    }
}

/// The revoked serial numbers `server.revoked-serials` names (none if it
/// is empty).
fn revoked_serials(config: &Config) -> Result<HashSet<Vec<u8>>, pki::PkiError> {
    if config.server.revoked_serials.as_os_str().is_empty() {
        return Ok(HashSet::new());
    }
    pki::load_revoked(&config.server.revoked_serials)
}

/// The QUIC server configuration: TLS from the data directory's
/// certificates, transport limits from the configuration.
fn server_config(
    config: &Config,
    tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, pki::PkiError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| pki::PkiError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(config.server.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(quinn::VarInt::from_u32(30_000).into()))
        .keep_alive_interval(None)
        // Sized to the frame limit, not quinn's defaults (1.25 MB a stream,
        // unbounded a connection, 10 MB in flight): what a client can make
        // the daemon hold is what the configuration says.
        .stream_receive_window(config.server.stream_receive_window.into())
        .receive_window(config.server.receive_window.into())
        .send_window(u64::from(config.server.send_window));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

fn endpoint(config: &Config, pki: &PkiPaths) -> Result<quinn::Endpoint, ServeError> {
    let server = server_config(config, pki::server_tls(pki)?)?;
    quinn::Endpoint::server(server, config.server.listen).map_err(|source| ServeError::Bind {
        addr: config.server.listen,
        source,
    })
}

/// Reads the configuration file again, as the start read it (for a
/// reload on SIGHUP); an error says why it cannot be used.
pub type Reread = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// On SIGHUP: the server certificate and key, the CA and the revocation
/// list are read again, and so is the configuration file (`reread`).
/// New connections (QUIC and TCP) get the new certificate; open ones go
/// on, except those whose certificate is now revoked. A file that does not
/// load leaves everything as it was, with an error in the log; so does a
/// configuration that changes a key a running daemon cannot take
/// (`config::reload`).
#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

async fn reload_on_hangup(
    shared: Arc<Shared>,
    (endpoint, tcp, pki): (quinn::Endpoint, Option<Arc<tcp::TlsConfig>>, PkiPaths),
    (hangups, reread): (Option<Hangups>, Option<Reread>),
    mut stopping: watch::Receiver<bool>,
) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        loop {
            tokio::select! {
                _ = hangups.recv() => {}
                _ = stopping.changed() => return,
            }
            systemd::reloading();
            let configured = reread
                .as_ref()
                .is_none_or(|reread| reload_config(&shared, reread));
            let loaded = pki::server_tls(&pki).and_then(|tls| {
                let quic = server_config(&shared.config(), tls.clone())?;
                Ok((quic, tls, revoked_serials(&shared.config())?))
            });
            let certified = match loaded {
                Ok((server, tls, revoked)) => {
                    endpoint.set_server_config(Some(server));
                    if let Some(tcp) = &tcp {
                        tcp.send_replace(Arc::new(tls));
                    }
                    let count = revoked.len();
                    shared.revoked.send_replace(Arc::new(revoked));
                    tracing::info!(revoked = count, "certificates and revocation list reloaded");
                    true
                }
                Err(error) => {
                    tracing::error!(%error, "reload failed: the previous certificates stay");
                    false
                }
            };
            systemd::reloaded(if configured && certified {
                "serving, reloaded"
            } else {
                "serving, the last reload failed (see the log)"
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (shared, endpoint, tcp, pki, hangups, reread);
    let _ = stopping.changed().await;
}

/// Runs on the configuration file as it is now, if it is valid and every
/// key it changes can change live; otherwise the running configuration
/// stays. Logged, counted (`sls_config_reloads_total{result}`) and told to
/// the security event stream either way; whether it applied.
fn reload_config(shared: &Shared, reread: &Reread) -> bool {
    let (result, outcome) = match reread() {
        Err(error) => ("invalid", Err(error)),
        Ok(new) => match shared.engine.reconfigure(new) {
            Ok(changed) => ("applied", Ok(changed)),
            Err(refused) => ("refused", Err(refused.to_string())),
        },
    };
    metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => result).increment(1);
    let now = clock::now();
    let category = crate::events::Category::Configuration;
    match outcome {
        Ok(changed) => {
            let changed = if changed.is_empty() {
                "nothing".to_owned()
            } else {
                changed.join(", ")
            };
            tracing::info!(changed = %changed, "configuration reloaded");
            crate::events::emit(|| {
                let applied = crate::events::Outcome::Success;
                crate::events::Event::new(now, "config-reloaded", category, applied)
                    .reason(format!("changed: {changed}"))
            });
            true
        }
        Err(error) => {
            tracing::error!(%error, "configuration not reloaded: the running one stays");
            crate::events::emit(|| {
                let refused = crate::events::Outcome::Failure;
                crate::events::Event::new(now, "config-reloaded", category, refused).reason(error)
            });
            false
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    (incoming, ticket): (quinn::Incoming, admission::HandshakeTicket),
    in_flight: Arc<()>,
) {
    let remote = incoming.remote_address();
    let handshake_timeout = shared.config().server.handshake_timeout;
    let connection = match incoming.accept() {
        Ok(connecting) => match tokio::time::timeout(handshake_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "handshake failed");
                refused_certificate_in(remote, &error);
                metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => "handshake")
                    .increment(1);
                return;
            }
            // Dropping the handshake frees the slot at once.
            Err(_) => {
                tracing::debug!(%remote, "handshake timed out");
                metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => "timeout")
                    .increment(1);
                return;
            }
        },
        Err(error) => {
            tracing::debug!(%remote, %error, "connection refused");
            return;
        }
    };
    let peer = connection
        .peer_identity()
        .and_then(|identity| {
            identity
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().and_then(pki::peer_of));
    // The handshake is done: its place goes back to the next one.
    drop(ticket);
    let mut binding = [0u8; crate::otp::push::BINDING_LEN];
    let binding = connection
        .export_keying_material(&mut binding, crate::otp::push::BINDING_LABEL, b"")
        .ok()
        .map(|()| binding);
    let link = Link::Quic(connection.clone());
    let Some(mut admitted) = admit_client(&shared, (remote, "quic"), peer, binding, link) else {
        return;
    };
    // Until the connection closes (or its certificate is revoked): while
    // the server drains, streams are still accepted, and their requests
    // answered ShuttingDown.
    loop {
        let (send, recv) = tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok(stream) => stream,
                Err(_) => break,
            },
            () = admitted.revoked() => {
                admitted.close_revoked(remote);
                break;
            }
        };
        let shared = Arc::clone(&shared);
        let state = Arc::clone(&admitted.state);
        let token = Arc::clone(&in_flight);
        tokio::spawn(async move {
            stream::serve_stream(shared, state, send, recv).await;
            drop(token);
        });
    }
}

/// A connection whose handshake is done and whose client is let in.
struct Admitted {
    state: Arc<ConnectionState>,
    peer: pki::Peer,
    /// The revocation list, watched for the client's serial number.
    revoked: watch::Receiver<Arc<HashSet<Vec<u8>>>>,
    /// Its place among `server.max-connections`, given back when dropped.
    _slot: admission::ConnectionSlot,
}

impl Admitted {
    /// Resolves once the client's certificate is on the revocation list
    /// (the operator's SIGHUP reloads it).
    async fn revoked(&mut self) {
        loop {
            // The list's sender lives in `shared`, which the connection's
            // task holds: `changed` fails only after the server is gone.
            if self.revoked.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if self.revoked.borrow_and_update().contains(&self.peer.serial) {
                return;
            }
        }
    }

    fn close_revoked(&self, remote: SocketAddr) {
        tracing::info!(%remote, client = %self.peer.name, "closed: certificate revoked");
        self.state
            .link
            .close(REVOKED, b"client certificate revoked");
    }
}

/// The security event of a client certificate refused, at the handshake
/// (not from the CA, expired) or after it (no role, revoked).
fn refused_certificate(remote: SocketAddr, client: Option<&str>, why: &str) {
    crate::events::emit(|| {
        let refused = crate::events::Outcome::Failure;
        let category = crate::events::Category::Network;
        let event =
            crate::events::Event::new(clock::now(), "certificate-refused", category, refused)
                .source(remote.ip())
                .reason(why);
        match client {
            Some(name) => event.actor(name),
            None => event,
        }
    });
}

/// A failed handshake's event, if the certificate was why (a handshake
/// that failed for another reason, a port scan, is not a security event).
fn refused_certificate_in(remote: SocketAddr, error: &dyn std::fmt::Display) {
    let error = error.to_string();
    if error.contains("certificate") {
        refused_certificate(remote, None, &error);
    }
}

/// Lets in a client whose TLS handshake (QUIC's or TCP's) is done: its
/// certificate must name a role and not be revoked, the connection needs
/// a slot of its role and a TLS exporter value. Otherwise the connection
/// is closed with the code saying why, counted, and `None` returned.
fn admit_client(
    shared: &Shared,
    (remote, transport): (SocketAddr, &'static str),
    peer: Option<pki::Peer>,
    binding: Option<[u8; crate::otp::push::BINDING_LEN]>,
    link: Link,
) -> Option<Admitted> {
    let refuse = |reason: &'static str, code, why: &'static [u8]| {
        metrics::counter!(crate::metrics::REJECTED_HANDSHAKES, "reason" => reason).increment(1);
        link.close(code, why);
    };
    let Some(peer) = peer else {
        refused_certificate(remote, None, "the client certificate names no role");
        refuse("no_role", NO_ROLE, b"client certificate names no role");
        return None;
    };
    let mut revoked = shared.revoked.subscribe();
    if revoked.borrow_and_update().contains(&peer.serial) {
        tracing::info!(%remote, client = %peer.name, "revoked certificate refused");
        refused_certificate(
            remote,
            Some(&peer.name),
            "the client certificate is revoked",
        );
        refuse("revoked", REVOKED, b"client certificate revoked");
        return None;
    }
    let Some(slot) = shared.connections.admit(peer.role) else {
        refuse(
            "connection_limit",
            TOO_MANY_CONNECTIONS,
            b"too many connections",
        );
        return None;
    };
    let Some(binding) = binding else {
        link.close(NO_ROLE, b"no TLS exporter");
        return None;
    };
    let role = peer.role;
    tracing::info!(%remote, role = role.as_str(), client = %peer.name, transport, "connected");
    metrics::counter!(
        crate::metrics::CLIENT_CONNECTIONS,
        "role" => role.as_str(),
        "client" => peer.name.clone(),
        "transport" => transport
    )
    .increment(1);
    let state = Arc::new(ConnectionState {
        role,
        limiter: Mutex::new(Gcra::default()),
        proof_failures: Mutex::new(Gcra::default()),
        issuance: Mutex::new(Gcra::default()),
        id: shared.next_connection.fetch_add(1, Ordering::Relaxed),
        binding,
        link,
        malformed: std::sync::atomic::AtomicU32::new(0),
    });
    Some(Admitted {
        state,
        peer,
        revoked,
        _slot: slot,
    })
}

/// On a shared store: this node's part of the channels shared between
/// nodes (carrier messages, push notices and verdicts; see
/// `engine/shared/`), every few milliseconds. A round that fails is tried
/// again by the next.
async fn relay(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RELAY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Said once when rounds start failing and once when they work again,
    // not a hundred times a second.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.changed() => return,
        }
        match shared.engine.cluster_relay(clock::now()).await {
            Err(error) if !failing => {
                tracing::warn!(%error, "relay rounds are failing");
                failing = true;
            }
            Ok(()) if failing => {
                tracing::info!("relay rounds work again");
                failing = false;
            }
            _ => {}
        }
    }
}

/// Runs a key rotation's re-seal pass whenever a rotation asks for one,
/// and once at the start: a pass cut short by a stop or a crash (the
/// keyring file still names a retiring key) is finished.
async fn rotate_keys(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    let mut rng = UnwrapErr(SysRng);
    loop {
        let pass = tokio::select! {
            pass = shared.engine.reseal_pass(&mut rng) => pass,
            _ = stopping.changed() => return,
        };
        let failed = pass.is_err();
        if let Err(error) = pass {
            tracing::error!(%error, "the key rotation's pass failed: it runs again in a minute");
        }
        tokio::select! {
            () = shared.engine.rotation_requested() => {}
            () = tokio::time::sleep(Duration::from_secs(60)), if failed => {}
            _ = stopping.changed() => return,
        }
    }
}

/// On a shared store: every `keys.poll`, says which release this node
/// runs, and follows the deployment's keyring (a key rotated on another
/// node seals here too within it) and the format of its records. A format
/// newer than this release reads (a newer release finished an upgrade)
/// stops the node: `outdated` is told. At the stop, the node's word about
/// its release is withdrawn.
async fn follow_deployment(
    shared: Arc<Shared>,
    outdated: watch::Sender<Option<(u64, u64)>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut failing = false;
    loop {
        let poll = shared.engine.config().keys.poll;
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            _ = stopping.changed() => break,
        }
        let Some(store) = shared.engine.cluster_store() else {
            return;
        };
        // Said once when it starts failing and once when it works again.
        match shared.engine.follow_deployment(crate::clock::now()).await {
            Err(error @ StoreError::NewerFormat { found, supported }) => {
                tracing::error!(%error, "a newer release finished an upgrade: this node stops");
                let _ = outdated.send(Some((found, supported)));
                break;
            }
            Ok(Adopted::Missing(active)) if !failing => {
                tracing::error!(
                    active,
                    "the deployment's active key is not in this node's keyring: copy secrets.key \
                     from a node that has it"
                );
                failing = true;
            }
            Err(error) if !failing => {
                tracing::warn!(%error, "the deployment's keyring and format cannot be read");
                failing = true;
            }
            Ok(Adopted::Missing(_)) | Err(_) => {}
            Ok(adopted) => {
                if adopted == Adopted::Changed {
                    log_keyring("the deployment's keyring changed", store);
                }
                if failing {
                    tracing::info!("the deployment's keyring and format are followed again");
                    failing = false;
                }
            }
        }
    }
    if let Err(error) = shared.engine.leave_deployment().await {
        tracing::warn!(%error, "this node's release could not be withdrawn: it lapses by itself");
    }
}

fn log_keyring(what: &str, store: &ClusterStore) {
    let keyring = crate::store::Store::keyring(store);
    let (active, retiring) = (keyring.active(), keyring.retiring());
    tracing::info!(active, ?retiring, "{what}");
    metrics::gauge!(crate::metrics::KEYS_RETIRING).set(retiring.len() as f64);
}

/// The queues other nodes fill for this one.
#[derive(Debug, Clone, Copy)]
enum Queue {
    /// Push notices for this node's phones, verdicts for its gateways.
    Inbox,
    /// Carrier messages for whichever node has a bridge.
    Outbox,
}

/// On a shared store: waits in Redis, on a connection of this task's own,
/// for what comes on `queue`, and acts on it, until the server stops. A
/// wait under way is let finish (at most `QUEUE_WAIT`), so nothing taken
/// from the queue is dropped on the way out.
async fn wait_on_queue(shared: Arc<Shared>, queue: Queue, mut stopping: watch::Receiver<bool>) {
    let mut failing = false;
    let mut waiter = None;
    while !*stopping.borrow() {
        let step = async {
            let waiter = match &waiter {
                Some(waiter) => waiter,
                None => waiter.insert(shared.engine.cluster_queue_waiter().await?),
            };
            match queue {
                Queue::Inbox => shared
                    .engine
                    .cluster_wait_inbox(waiter, QUEUE_WAIT, clock::now)
                    .await
                    .map(|()| true),
                Queue::Outbox => {
                    shared
                        .engine
                        .cluster_wait_outbox(waiter, QUEUE_WAIT, clock::now)
                        .await
                }
            }
        };
        let rest = match step.await {
            Ok(waited) => {
                if failing {
                    tracing::info!(?queue, "waiting on the queue works again");
                    failing = false;
                }
                !waited
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, ?queue, "waiting on the queue fails");
                    failing = true;
                }
                true
            }
        };
        if rest {
            tokio::select! {
                _ = tokio::time::sleep(NO_BRIDGE_REST) => {}
                _ = stopping.changed() => {}
            }
        }
    }
}

/// Every 100 ms, fails over unacknowledged messages and expires pushes,
/// and pings systemd's watchdog when it is on;
/// every second, drops expired challenges and codes and reports gauges;
/// every minute, activates replacement cards whose time has come (a due
/// card counts as active at once; this records it and retires the card it
/// replaces).
async fn sweep(shared: Arc<Shared>, mut stopping: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = systemd::Watchdog::from_env();
    for round in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopping.changed() => return,
        }
        let now = clock::now();
        shared.engine.tick(now);
        if let Some(watchdog) = &mut watchdog {
            watchdog.tick(std::time::Instant::now());
        }
        if round % 10 == 0 {
            shared.engine.sweep(now);
            let gauges = shared.engine.gauges();
            metrics::gauge!(crate::metrics::OPEN_CHALLENGES).set(gauges.open_challenges as f64);
            metrics::gauge!(crate::metrics::LIVE_CODES).set(gauges.live_codes as f64);
            metrics::gauge!(crate::metrics::PENDING_PUSHES).set(gauges.pending_pushes as f64);
            metrics::gauge!(crate::metrics::OUTBOX).set(gauges.outbox as f64);
        }
        if round % 600 == 0 {
            let mut rng = UnwrapErr(SysRng);
            shared.engine.activate_replacements(now, &mut rng).await;
        }
    }
}
