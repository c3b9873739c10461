//! The RADIUS front end (RFC 2865, Message-Authenticator per RFC 3579):
//! VPN concentrators and firewalls, which offer a second factor only over
//! RADIUS with Access-Challenge, reach the same engine a gateway reaches
//! over QUIC — the same limits, lockouts, audit and metrics — as an
//! in-process gateway.
//!
//! Every datagram is checked before anything is looked up: its source
//! must be a configured client's, under that client's rate; it must parse
//! (`radius::packet`, bounded to 4096 bytes) and carry a
//! Message-Authenticator that verifies under the client's secret (the
//! BlastRADIUS mitigation). Anything else is dropped and counted in
//! `sls_radius_dropped_total`. A retransmission (same source, identifier
//! and authenticator) gets the first answer again, never a second
//! verification. The dialogue itself is `radius::dialogue`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use zeroize::Zeroizing;

use super::Shared;
use crate::clock::{self, Timestamp};
use crate::config::{Network, RadiusConfig};
use crate::engine::{Caller, Role, Sink, StreamId};
use crate::identity::Username;
use crate::radius::dialogue::{self, Choice, StateKey, Step};
use crate::radius::packet::{self, Packet, attribute, code};
use crate::ratelimit::{Decision, Gcra, Rate};
use crate::wire::request::Answer;
use crate::wire::{ChallengeText, ErrorCode, Operation, Reply, Verdict};

/// A RADIUS client of the configuration, with its secret read.
struct Client {
    name: String,
    networks: Vec<Network>,
    secret: Zeroizing<Vec<u8>>,
    limiter: Mutex<Gcra>,
    /// The engine's connection number for this client's requests.
    connection: u64,
}

/// Why the RADIUS front end could not start.
#[derive(Debug, thiserror::Error)]
pub enum RadiusError {
    #[error("radius.clients {client:?}: secret-file {path}: {source}")]
    SecretFile {
        client: String,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "radius.clients {client:?}: the secret in {path} is {len} bytes; at least 16 are needed"
    )]
    ShortSecret {
        client: String,
        path: String,
        len: usize,
    },
    #[error("RADIUS listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The shortest shared secret accepted (RFC 2865 §3 asks for at least 16
/// octets; shorter ones fall to offline guessing).
const MIN_SECRET: usize = 16;

/// The RADIUS front end of one daemon.
pub(super) struct Front {
    socket: UdpSocket,
    clients: Vec<Client>,
    key: StateKey,
    duplicates: Mutex<Duplicates>,
    in_flight: Arc<tokio::sync::Semaphore>,
    config: RadiusConfig,
}

impl Front {
    /// Reads the clients' secrets and binds the listener (`None` when
    /// `radius.listen` is empty).
    pub(super) async fn start(
        shared: &Shared,
        state_key: [u8; 32],
    ) -> Result<Option<Self>, RadiusError> {
        let config = shared.config().radius.clone();
        let Some(addr) = config.listen else {
            return Ok(None);
        };
        let mut clients = Vec::with_capacity(config.clients.len());
        for client in &config.clients {
            let path = client.secret_file.display().to_string();
            let text =
                std::fs::read(&client.secret_file).map_err(|source| RadiusError::SecretFile {
                    client: client.name.clone(),
                    path: path.clone(),
                    source,
                })?;
            let mut secret = Zeroizing::new(text);
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < MIN_SECRET {
                return Err(RadiusError::ShortSecret {
                    client: client.name.clone(),
                    path,
                    len: secret.len(),
                });
            }
            clients.push(Client {
                name: client.name.clone(),
                networks: client.addresses.clone(),
                secret,
                limiter: Mutex::new(Gcra::default()),
                connection: shared.next_connection.fetch_add(1, Ordering::Relaxed),
            });
        }
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| RadiusError::Bind { addr, source })?;
        Ok(Some(Self {
            socket,
            clients,
            key: StateKey::new(state_key),
            duplicates: Mutex::new(Duplicates::new(
                config.duplicate_cache as usize,
                config.duplicate_ttl,
            )),
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.in_flight as usize)),
            config,
        }))
    }

    pub(super) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// The client that sends from `ip`, and its place in the list.
    fn client_of(&self, ip: IpAddr) -> Option<(usize, &Client)> {
        self.clients
            .iter()
            .enumerate()
            .find(|(_, c)| c.networks.iter().any(|n| n.contains(ip)))
    }
}

fn dropped(reason: &'static str) {
    metrics::counter!(crate::metrics::RADIUS_DROPPED, "reason" => reason).increment(1);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Receives datagrams until the server stops.
pub(super) async fn serve(
    shared: Arc<Shared>,
    front: Arc<Front>,
    mut stopping: watch::Receiver<bool>,
) {
    let rate = Rate::per(
        front.config.requests_per_client_per_second,
        Duration::from_secs(1),
    );
    // One byte more than a packet may have: a longer datagram is seen whole.
    let mut buffer = vec![0u8; packet::MAX_PACKET + 1];
    loop {
        let (len, from) = tokio::select! {
            received = front.socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    tracing::debug!(%error, "RADIUS receive failed");
                    continue;
                }
            },
            _ = stopping.changed() => return,
        };
        if shared.stopping.load(Ordering::SeqCst) {
            // The client retransmits to another server.
            dropped("shutting_down");
            continue;
        }
        let datagram = buffer.get(..len).unwrap_or_default();
        if let Some(admitted) = admit(&front, datagram, from, rate) {
            // Counted like a stream's request: the drain at shutdown waits
            // for it (a push wait hears ShuttingDown and is answered).
            let counted = super::stream::InFlight::start(&shared);
            let (shared, front) = (Arc::clone(&shared), Arc::clone(&front));
            tokio::spawn(async move {
                answer(shared, front, admitted).await;
                drop(counted);
            });
        }
    }
}

/// A request that passed every check, owned by the task answering it.
struct Admitted {
    client: usize,
    from: SocketAddr,
    request: packet::Verified,
    key: DuplicateKey,
    arrived: Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// The checks before a request costs anything: client, rate, packet,
/// Message-Authenticator, retransmission, room.
fn admit(front: &Front, datagram: &[u8], from: SocketAddr, rate: Rate) -> Option<Admitted> {
    let now = clock::now();
    let Some((index, client)) = front.client_of(from.ip()) else {
        dropped("unknown_client");
        return None;
    };
    if let Decision::Deny { .. } = lock(&client.limiter).check(rate, now) {
        dropped("rate_limited");
        return None;
    }
    if datagram.len() > packet::MAX_PACKET {
        dropped("malformed");
        return None;
    }
    let Ok(packet) = Packet::decode(datagram) else {
        dropped("malformed");
        return None;
    };
    match packet.code() {
        code::ACCESS_REQUEST | code::STATUS_SERVER => {}
        _ => {
            dropped("unsupported");
            return None;
        }
    }
    let request = match packet.authenticate(&client.secret) {
        Ok(request) => request,
        Err(error) => {
            dropped(error.label());
            return None;
        }
    };
    let key = DuplicateKey {
        from,
        identifier: packet.identifier(),
        authenticator: *packet.authenticator(),
    };
    match lock(&front.duplicates).begin(key, now) {
        Seen::New => {}
        Seen::Answering => {
            metrics::counter!(crate::metrics::RADIUS_DUPLICATES).increment(1);
            return None;
        }
        Seen::Answered(reply) => {
            metrics::counter!(crate::metrics::RADIUS_DUPLICATES).increment(1);
            let _ = front.socket.try_send_to(&reply, from);
            return None;
        }
        Seen::Full => {
            dropped("busy");
            return None;
        }
    }
    let Ok(permit) = Arc::clone(&front.in_flight).try_acquire_owned() else {
        lock(&front.duplicates).abandon(&key);
        dropped("busy");
        return None;
    };
    Some(Admitted {
        client: index,
        from,
        request: request.to_verified(),
        key,
        arrived: Instant::now(),
        _permit: permit,
    })
}

/// Answers one admitted request and remembers the answer for
/// retransmissions.
async fn answer(shared: Arc<Shared>, front: Arc<Front>, admitted: Admitted) {
    let Some(client) = front.clients.get(admitted.client) else {
        return;
    };
    let Some(request) = admitted.request.request(&client.secret) else {
        lock(&front.duplicates).abandon(&admitted.key);
        return;
    };
    let (verdict, lines, state) = if request.packet().code() == code::STATUS_SERVER {
        // RFC 5997: a live server answers Status-Server with Access-Accept.
        (code::ACCESS_ACCEPT, Vec::new(), None)
    } else {
        let login = Login {
            shared: &shared,
            front: &front,
            client,
        };
        let said = login.dialogue(&request).await;
        (said.code, said.lines, said.state)
    };
    let mut attributes: Vec<(u8, &[u8])> = Vec::new();
    if let Some(state) = &state {
        attributes.push((attribute::STATE, state));
    }
    let lines: Vec<Vec<u8>> = lines.iter().flat_map(|l| split_line(l)).collect();
    attributes.extend(
        lines
            .iter()
            .map(|l| (attribute::REPLY_MESSAGE, l.as_slice())),
    );
    let Ok(reply) = request.reply(verdict, &attributes) else {
        lock(&front.duplicates).abandon(&admitted.key);
        dropped("unencodable");
        return;
    };
    let label = match verdict {
        code::ACCESS_ACCEPT => "accept",
        code::ACCESS_CHALLENGE => "challenge",
        _ => "reject",
    };
    metrics::counter!(crate::metrics::RADIUS_ANSWERS, "answer" => label).increment(1);
    metrics::histogram!(crate::metrics::RADIUS_SECONDS)
        .record(admitted.arrived.elapsed().as_secs_f64());
    let reply: Arc<[u8]> = reply.into();
    lock(&front.duplicates).finish(admitted.key, Arc::clone(&reply));
    if let Err(error) = front.socket.send_to(&reply, admitted.from).await {
        tracing::debug!(%error, "RADIUS reply not sent");
    }
}

/// A Reply-Message line in attributes of at most 253 bytes.
fn split_line(line: &str) -> Vec<Vec<u8>> {
    line.as_bytes()
        .chunks(packet::MAX_VALUE)
        .map(<[u8]>::to_vec)
        .collect()
}

/// What the dialogue answers: the packet code, the Reply-Message lines
/// and, for an Access-Challenge, the `State`.
struct Said {
    code: u8,
    lines: Vec<String>,
    state: Option<Vec<u8>>,
}

impl Said {
    fn reject(line: impl Into<String>) -> Self {
        Self {
            code: code::ACCESS_REJECT,
            lines: vec![line.into()],
            state: None,
        }
    }

    fn accept() -> Self {
        Self {
            code: code::ACCESS_ACCEPT,
            lines: Vec::new(),
            state: None,
        }
    }

    fn challenge(lines: Vec<String>, state: Vec<u8>) -> Self {
        Self {
            code: code::ACCESS_CHALLENGE,
            lines,
            state: Some(state),
        }
    }
}

/// One login's dialogue with the engine.
struct Login<'a> {
    shared: &'a Arc<Shared>,
    front: &'a Front,
    client: &'a Client,
}

impl Login<'_> {
    async fn dialogue(&self, request: &packet::Request<'_>) -> Said {
        let packet = request.packet();
        if packet
            .attributes()
            .any(|(kind, _)| kind == attribute::CHAP_PASSWORD || kind == attribute::EAP_MESSAGE)
        {
            return Said::reject("Only PAP (User-Password) is supported.");
        }
        let user = match packet.single(attribute::USER_NAME, "User-Name") {
            Ok(Some(name)) => std::str::from_utf8(name)
                .ok()
                .and_then(|name| Username::new(name).ok()),
            _ => None,
        };
        let Some(user) = user else {
            return Said::reject("The request names no valid user.");
        };
        let Ok(password) = request.password() else {
            return Said::reject("The password is malformed.");
        };
        let state = match packet.single(attribute::STATE, "State") {
            Ok(state) => state,
            Err(_) => return Said::reject("The request is malformed."),
        };
        let now = clock::now();
        match state {
            Some(state) => {
                let step = self.front.key.open(
                    &self.client.name,
                    &user,
                    state,
                    now,
                    self.front.config.state_ttl,
                );
                match step {
                    Some(step) => self.next_step(&user, step, &password, state).await,
                    None => Said::reject("This login is no longer open. Start again."),
                }
            }
            None => match Choice::parse(&password) {
                Some(choice) => self.first_step(&user, choice).await,
                None => Said::reject(
                    "Leave the password empty, or type a device's number, push or sms.",
                ),
            },
        }
    }

    /// An Access-Request without `State`: a challenge, a push or a code,
    /// or a code the user holds checked at once.
    async fn first_step(&self, user: &Username, choice: Choice) -> Said {
        if let Choice::Code(channel) = choice {
            let sent = self
                .call(Operation::SendCode {
                    user: user.clone(),
                    channel,
                })
                .await;
            return match sent {
                Reply::CodeSent { .. } => {
                    let state = self.seal(user, Step::Code);
                    Said::challenge(vec![dialogue::code_sent_line(channel)], state)
                }
                other => refusal(&other),
            };
        }
        let listed = self.call(Operation::Devices { user: user.clone() }).await;
        let devices = match listed {
            Reply::Devices {
                required: false, ..
            } => {
                // The user opted out of the second factor (the Secure Login
                // System's rule): the login goes on without one.
                return Said::accept();
            }
            Reply::Devices { devices, .. } => devices,
            other => return refusal(&other),
        };
        let device = match dialogue::pick(&devices, &choice) {
            Ok(device) => device,
            Err(why) => return Said::reject(why),
        };
        if choice == Choice::Push {
            let pushed = self
                .call(Operation::Push {
                    user: user.clone(),
                    device,
                })
                .await;
            return match pushed {
                Reply::PushSent {
                    push, match_number, ..
                } => {
                    let state = self.seal(user, Step::Push(push, match_number));
                    Said::challenge(dialogue::push_lines(match_number, false), state)
                }
                other => refusal(&other),
            };
        }
        let asked = self
            .call(Operation::Challenge {
                user: user.clone(),
                device,
            })
            .await;
        let (challenge, text) = match asked {
            Reply::Challenge {
                challenge, text, ..
            } => (challenge, text),
            other => return refusal(&other),
        };
        if let Choice::OneShot(code) = choice
            && text == ChallengeText::EnterCode
        {
            return self.verify(user, challenge, code).await;
        }
        let state = self.seal(user, Step::Challenge(challenge));
        Said::challenge(dialogue::challenge_lines(&devices, device, &text), state)
    }

    /// An Access-Request with the `State` of an Access-Challenge.
    async fn next_step(&self, user: &Username, step: Step, password: &[u8], state: &[u8]) -> Said {
        let typed = Answer::new(std::str::from_utf8(password).unwrap_or_default().trim());
        match step {
            Step::Challenge(challenge) => self.verify(user, challenge, typed).await,
            Step::Code => {
                let checked = self
                    .call(Operation::VerifyCode {
                        user: user.clone(),
                        code: typed,
                    })
                    .await;
                self.verdict(user, checked)
            }
            Step::Push(push, match_number) => {
                match self.await_push(push).await {
                    Some(reply) => self.verdict(user, reply),
                    // Not answered yet: ask again with the same State.
                    None => {
                        Said::challenge(dialogue::push_lines(match_number, true), state.to_vec())
                    }
                }
            }
        }
    }

    async fn verify(
        &self,
        user: &Username,
        challenge: crate::identity::ChallengeId,
        response: Answer,
    ) -> Said {
        let verdict = self
            .call(Operation::Verify {
                challenge,
                response,
            })
            .await;
        self.verdict(user, verdict)
    }

    fn verdict(&self, user: &Username, reply: Reply) -> Said {
        match reply {
            // The verdict names whose device answered: it must be the user
            // the request names.
            Reply::Verdict(Verdict::Accepted { user: who, .. }) if &who == user => Said::accept(),
            Reply::Verdict(Verdict::Accepted { .. }) => {
                Said::reject("This login is no longer open. Start again.")
            }
            Reply::Verdict(verdict) => Said::reject(dialogue::verdict_line(&verdict)),
            other => refusal(&other),
        }
    }

    fn seal(&self, user: &Username, step: Step) -> Vec<u8> {
        self.front
            .key
            .seal(&self.client.name, user, step, clock::now())
    }

    /// Waits up to `radius.push-wait` for the push's verdict; `None` if it
    /// is not answered by then.
    async fn await_push(&self, push: crate::identity::PushId) -> Option<Reply> {
        let (sink, mut verdicts) = OneReply::new();
        let sink: Arc<dyn Sink> = sink;
        if let Some(reply) = self.run(Operation::AwaitPush { push }, Some(&sink)).await {
            return Some(reply);
        }
        let waited = tokio::time::timeout(self.front.config.push_wait, verdicts.recv()).await;
        // Dropping the receiver closes the sink: a later wait may replace it.
        drop(verdicts);
        match waited {
            Ok(Some(reply)) => {
                // Counted as a late answer on a stream is.
                super::stream::count_outcome(self.shared, "await_push", &reply);
                Some(reply)
            }
            Ok(None) => Some(Reply::error(
                ErrorCode::ShuttingDown,
                "the server is stopping",
            )),
            Err(_) => None,
        }
    }

    /// Runs an operation that is answered at once.
    async fn call(&self, operation: Operation) -> Reply {
        self.run(operation, None)
            .await
            .unwrap_or_else(|| Reply::error(ErrorCode::Internal, "the operation was not answered"))
    }

    /// Runs `operation` as this client's gateway through the engine, like
    /// a request on a QUIC stream: counted, timed, and answered only once
    /// what it changed is durable.
    async fn run(&self, operation: Operation, sink: Option<&Arc<dyn Sink>>) -> Option<Reply> {
        const NO_BINDING: [u8; crate::otp::push::BINDING_LEN] = [0; crate::otp::push::BINDING_LEN];
        let shared = self.shared;
        let name = operation.name();
        let started = Instant::now();
        let now = clock::now();
        let caller = Caller {
            role: Role::Gateway,
            connection: self.client.connection,
            stream: StreamId(shared.next_stream.fetch_add(1, Ordering::Relaxed)),
            binding: &NO_BINDING,
            sink,
            request: 0,
        };
        let mut rng = ChaCha20Rng::from_rng(&mut UnwrapErr(SysRng));
        let reply = if shared.engine.is_clustered() {
            shared
                .engine
                .handle_on_cluster(&caller, operation, now, &mut rng)
                .await?
        } else {
            let outcome = shared
                .engine
                .handle_from(&caller, operation, now, &mut rng)?;
            super::stream::durable(shared, outcome).await
        };
        super::stream::count_outcome(shared, name, &reply);
        shared
            .metrics
            .latency(name, started.elapsed().as_secs_f64());
        Some(reply)
    }
}

/// What an Access-Reject says for a reply that is not a verdict.
fn refusal(reply: &Reply) -> Said {
    match reply {
        Reply::Error {
            code,
            retry_after,
            message,
        } => Said::reject(dialogue::error_line(*code, *retry_after, message)),
        Reply::Verdict(verdict) => Said::reject(dialogue::verdict_line(verdict)),
        _ => Said::reject("The login cannot go on."),
    }
}

/// A sink for one late verdict (a push's): the first frame is decoded and
/// handed to the waiting request.
struct OneReply(mpsc::Sender<Reply>);

impl OneReply {
    fn new() -> (Arc<Self>, mpsc::Receiver<Reply>) {
        let (sender, receiver) = mpsc::channel(1);
        (Arc::new(Self(sender)), receiver)
    }
}

impl Sink for OneReply {
    fn deliver(&self, frame: Vec<u8>) -> bool {
        let reply = match crate::wire::split_frame(&frame, crate::wire::MAX_FRAME_LIMIT) {
            Ok(Some((body, _))) => crate::wire::Response::decode(body)
                .map(|response| response.reply)
                .unwrap_or_else(|_| Reply::error(ErrorCode::Internal, "bad frame")),
            _ => Reply::error(ErrorCode::Internal, "bad frame"),
        };
        self.0.try_send(reply).is_ok()
    }

    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

/// A request as retransmissions repeat it (RFC 5080 §2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct DuplicateKey {
    from: SocketAddr,
    identifier: u8,
    authenticator: [u8; 16],
}

enum Seen {
    New,
    Answering,
    Answered(Arc<[u8]>),
    /// The cache is full of requests still being answered.
    Full,
}

/// A request of the cache: when it arrived, and its answer once sent.
struct Entry {
    arrived: Timestamp,
    answer: Option<Arc<[u8]>>,
}

/// Recent requests and their answers, bounded in number and age.
struct Duplicates {
    entries: HashMap<DuplicateKey, Entry>,
    /// Keys in arrival order, with their arrival time (an entry abandoned
    /// and begun again leaves an older copy here, which is skipped).
    order: VecDeque<(DuplicateKey, Timestamp)>,
    capacity: usize,
    ttl: Duration,
}

impl Duplicates {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// Forgets the oldest entry in `order` if `keep` lets it go; whether
    /// one left (or a stale copy was skipped).
    fn forget_oldest(&mut self, keep: impl Fn(&Entry) -> bool) -> bool {
        let Some(&(key, at)) = self.order.front() else {
            return false;
        };
        match self.entries.get(&key) {
            Some(entry) if entry.arrived == at => {
                if keep(entry) {
                    return false;
                }
                self.entries.remove(&key);
            }
            // Abandoned, or begun again later: a stale copy.
            _ => {}
        }
        self.order.pop_front();
        true
    }

    fn begin(&mut self, key: DuplicateKey, now: Timestamp) -> Seen {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        while self.forget_oldest(|entry| now.0.saturating_sub(entry.arrived.0) < ttl) {}
        match self.entries.get(&key) {
            Some(Entry {
                answer: Some(reply),
                ..
            }) => return Seen::Answered(Arc::clone(reply)),
            Some(Entry { answer: None, .. }) => return Seen::Answering,
            None => {}
        }
        // Full: only an answered entry makes room. One being answered
        // must stay, or its retransmission would be answered twice.
        while self.entries.len() >= self.capacity {
            if !self.forget_oldest(|entry| entry.answer.is_none()) {
                return Seen::Full;
            }
        }
        let entry = Entry {
            arrived: now,
            answer: None,
        };
        self.entries.insert(key, entry);
        self.order.push_back((key, now));
        Seen::New
    }

    fn finish(&mut self, key: DuplicateKey, reply: Arc<[u8]>) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.answer = Some(reply);
        }
    }

    fn abandon(&mut self, key: &DuplicateKey) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(identifier: u8) -> DuplicateKey {
        DuplicateKey {
            from: "127.0.0.1:5000".parse().unwrap(),
            identifier,
            authenticator: [identifier; 16],
        }
    }

    #[test]
    fn a_retransmission_is_held_while_answered_then_answered_alike_until_it_ages_out() {
        let mut seen = Duplicates::new(10, Duration::from_secs(30));
        assert!(matches!(seen.begin(key(1), Timestamp(0)), Seen::New));
        assert!(matches!(seen.begin(key(1), Timestamp(10)), Seen::Answering));
        seen.finish(key(1), Arc::from(&b"answer"[..]));
        assert!(matches!(seen.begin(key(1), Timestamp(20)), Seen::Answered(a) if &*a == b"answer"));
        // Another identifier from the same client is another request.
        assert!(matches!(seen.begin(key(2), Timestamp(20)), Seen::New));
        assert!(matches!(seen.begin(key(1), Timestamp(30_000)), Seen::New));
    }

    #[test]
    fn a_full_cache_makes_room_only_from_answered_requests() {
        let mut seen = Duplicates::new(2, Duration::from_secs(30));
        assert!(matches!(seen.begin(key(1), Timestamp(0)), Seen::New));
        assert!(matches!(seen.begin(key(2), Timestamp(0)), Seen::New));
        // Both still being answered: no room, and neither is forgotten.
        assert!(matches!(seen.begin(key(3), Timestamp(1)), Seen::Full));
        assert!(matches!(seen.begin(key(1), Timestamp(1)), Seen::Answering));
        seen.finish(key(1), Arc::from(&b"one"[..]));
        assert!(matches!(seen.begin(key(3), Timestamp(2)), Seen::New));
        assert!(matches!(seen.begin(key(2), Timestamp(2)), Seen::Answering));
        assert_eq!(seen.entries.len(), 2);
        // An abandoned request leaves room, and may begin again.
        seen.abandon(&key(3));
        assert!(matches!(seen.begin(key(3), Timestamp(3)), Seen::New));
        assert!(seen.order.len() <= 4);
    }
}
