//! A RADIUS client as a VPN concentrator is one, logging users in through
//! the daemon's RADIUS front end with their emulated DSC+ cards, and
//! `sls-sim radius-bench`, which measures how many such logins a daemon
//! answers. The packets are made and checked with the daemon's own codec
//! (`slsd::radius::packet`); the end-to-end tests use FreeRADIUS's
//! `radclient` as the independent client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use slsd::identity::Username;
use slsd::radius::packet::{self, Packet, attribute, code};
use tokio::net::UdpSocket;

use crate::token::DscPlus;

/// Why a RADIUS exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NasError {
    #[error("RADIUS socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer after {0} tries")]
    NoAnswer(u32),
    #[error("the request could not be encoded: {0}")]
    Encode(#[from] packet::EncodeError),
    #[error("the answer is not a RADIUS packet: {0}")]
    Decode(#[from] packet::DecodeError),
    #[error("the answer does not verify under the shared secret")]
    Forged,
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// `packet::code::ACCESS_ACCEPT`, `…_REJECT` or `…_CHALLENGE`.
    pub code: u8,
    pub state: Option<Vec<u8>>,
    pub messages: Vec<String>,
}

impl Answered {
    /// The digits of a "Challenge 123456: …" Reply-Message.
    pub fn question(&self) -> Option<&str> {
        let first = self.messages.first()?;
        first.strip_prefix("Challenge ")?.split(':').next()
    }
}

/// One NAS: a UDP socket towards the server and the shared secret.
#[derive(Debug)]
pub struct Nas {
    socket: UdpSocket,
    secret: Vec<u8>,
    next_id: u8,
    /// Waited for an answer before the request is sent again.
    pub timeout: Duration,
    pub tries: u32,
}

impl Nas {
    pub async fn connect(server: SocketAddr, secret: &[u8]) -> Result<Self, NasError> {
        let local = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(server).await?;
        Ok(Self {
            socket,
            secret: secret.to_vec(),
            next_id: rand::random(),
            timeout: Duration::from_secs(2),
            tries: 3,
        })
    }

    /// An Access-Request for `user` with `password` (and `state`), signed
    /// with a Message-Authenticator; retransmitted unchanged until an
    /// answer that verifies comes.
    pub async fn ask(
        &mut self,
        user: &Username,
        password: &[u8],
        state: Option<&[u8]>,
    ) -> Result<Answered, NasError> {
        let identifier = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut attributes = vec![(attribute::USER_NAME, user.as_str().as_bytes())];
        if let Some(state) = state {
            attributes.push((attribute::STATE, state));
        }
        let request = packet::access_request(
            (identifier, rand::random()),
            &self.secret,
            Some(password),
            &attributes,
            true,
        )?;
        let sent = Packet::decode(&request)?;
        let mut buffer = vec![0u8; packet::MAX_PACKET];
        for _ in 0..self.tries {
            self.socket.send(&request).await?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            while let Ok(received) =
                tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await
            {
                let len = received?;
                let Ok(reply) = Packet::decode(buffer.get(..len).unwrap_or_default()) else {
                    continue;
                };
                if reply.identifier() != identifier {
                    continue; // a late answer to an earlier request
                }
                if !packet::verify_reply(&reply, &sent, &self.secret) {
                    return Err(NasError::Forged);
                }
                return Ok(Answered {
                    code: reply.code(),
                    state: reply
                        .attributes()
                        .find(|(kind, _)| *kind == attribute::STATE)
                        .map(|(_, value)| value.to_vec()),
                    messages: reply
                        .attributes()
                        .filter(|(kind, _)| *kind == attribute::REPLY_MESSAGE)
                        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                        .collect(),
                });
            }
        }
        Err(NasError::NoAnswer(self.tries))
    }
}

/// A user the bench logs in: the name, the card and its PIN.
#[derive(Debug)]
pub struct CardHolder {
    pub user: Username,
    pub card: DscPlus,
    pub pin: String,
}

/// How one login ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginEnd {
    Accepted,
    /// Answered, but not with Access-Accept (or no challenge came).
    Refused,
    /// No answer that verified.
    Failed,
}

/// One challenge/response login over RADIUS: an empty password, the
/// card's response to the challenge shown, Access-Accept.
pub async fn login(nas: &mut Nas, holder: &CardHolder) -> LoginEnd {
    let Ok(challenged) = nas.ask(&holder.user, b"", None).await else {
        return LoginEnd::Failed;
    };
    let (Some(question), Some(state)) = (challenged.question(), challenged.state.as_deref()) else {
        return LoginEnd::Refused;
    };
    let Ok(response) = holder.card.respond(&holder.pin, question) else {
        return LoginEnd::Refused;
    };
    match nas
        .ask(&holder.user, response.to_string().as_bytes(), Some(state))
        .await
    {
        Ok(answer) if answer.code == code::ACCESS_ACCEPT => LoginEnd::Accepted,
        Ok(_) => LoginEnd::Refused,
        Err(_) => LoginEnd::Failed,
    }
}

/// What a bench run measured.
#[derive(Debug)]
pub struct BenchResult {
    pub accepted: u64,
    pub refused: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Login latencies (both requests), in microseconds.
    pub latency: Histogram<u64>,
}

impl BenchResult {
    pub fn logins_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn render(&self) -> String {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        format!(
            "radius: {} logins accepted in {:.2} s: {:.0} logins/s ({:.0} requests/s); \
             refused {}, failed {}; login latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            self.accepted,
            self.elapsed.as_secs_f64(),
            self.logins_per_second(),
            2.0 * self.logins_per_second(),
            self.refused,
            self.failed,
            ms(0.5),
            ms(0.99),
            self.latency.max() as f64 / 1000.0,
        )
    }
}

/// Logs `holders` in over `concurrency` NAS sockets for `duration`, each
/// socket one login at a time over users of its own (socket `w` takes
/// users `w`, `w + concurrency`, …): a user is never in two logins at
/// once, as a person is not. Needs at least as many users as sockets.
pub async fn bench(
    server: SocketAddr,
    secret: &[u8],
    holders: Arc<Vec<CardHolder>>,
    concurrency: usize,
    duration: Duration,
) -> Result<BenchResult, NasError> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    let concurrency = concurrency.clamp(1, holders.len().max(1));
    for worker in 0..concurrency {
        let mut nas = Nas::connect(server, secret).await?;
        let holders = Arc::clone(&holders);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new(3).expect("3 significant figures");
            let mut ends = [0u64; 3];
            let mine: Vec<&CardHolder> = holders.iter().skip(worker).step_by(concurrency).collect();
            let mut turns = mine.iter().cycle();
            while Instant::now() < deadline {
                let Some(holder) = turns.next() else { break };
                let began = Instant::now();
                let end = login(&mut nas, holder).await;
                let slot = match end {
                    LoginEnd::Accepted => 0,
                    LoginEnd::Refused => 1,
                    LoginEnd::Failed => 2,
                };
                if let Some(count) = ends.get_mut(slot) {
                    *count += 1;
                }
                let _ = latency.record(began.elapsed().as_micros() as u64);
            }
            (ends, latency)
        }));
    }
    let mut result = BenchResult {
        accepted: 0,
        refused: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new(3).expect("3 significant figures"),
    };
    for task in tasks {
        let Ok(([accepted, refused, failed], latency)) = task.await else {
            continue;
        };
        result.accepted += accepted;
        result.refused += refused;
        result.failed += failed;
        let _ = result.latency.add(latency);
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
