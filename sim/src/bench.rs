//! `sls-sim bench`: a closed-loop load run of complete DSC+ logins
//! (Challenge, then Verify with the card's answer) against a daemon over
//! QUIC on loopback, reporting throughput and latency.
//!
//! Each of `connections` connections carries `streams` streams; each
//! stream keeps `depth` logins in flight (pipelined), so the daemon sees
//! `connections × streams × depth` concurrent logins. Latency is measured
//! per request, from its write to its reply, in an HDR histogram.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use slsd::engine::Role;
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{ChallengeText, EnrollRequest, Operation, Reply, Verdict};

use crate::client::{Client, ClientError};
use crate::daemon::LocalDaemon;
use crate::token::{DscPlus, TokenError};

/// What a load run does.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub users: usize,
    pub connections: usize,
    pub streams: usize,
    pub depth: usize,
    pub duration: Duration,
}

/// Where the daemon is and which certificates reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Target {
    async fn client(&self, role: Role) -> Result<Client, ClientError> {
        let name = role.as_str();
        Client::connect(
            self.addr,
            &self.data_dir.join("ca.pem"),
            &self.data_dir.join(format!("{name}.pem")),
            &self.data_dir.join(format!("{name}.key")),
        )
        .await
    }
}

/// What went wrong in a run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("unexpected reply to {0}: {1}")]
    Reply(&'static str, String),
}

/// The measurements of one run.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub cores: usize,
    pub elapsed: Duration,
    pub requests: u64,
    pub logins: u64,
    pub rejected: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl BenchReport {
    fn empty() -> Self {
        Self {
            cores: 0,
            elapsed: Duration::ZERO,
            requests: 0,
            logins: 0,
            rejected: 0,
            errors: 0,
            latency: new_histogram(),
        }
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn logins_per_sec(&self) -> f64 {
        self.logins as f64 / self.elapsed.as_secs_f64()
    }

    /// A human-readable summary.
    pub fn render(&self, plan: &BenchPlan) -> String {
        let q = |p: f64| self.latency.value_at_quantile(p);
        format!(
            "machine: {cores} cores (client and daemon on the same machine)\n\
             load: {c} connections x {s} streams x {d} logins in flight, {u} users, {secs:.1} s\n\
             requests: {req} ({rps:.0}/s)\n\
             logins: {logins} ({lps:.0}/s), wrong answers: {rej}, errors: {err}\n\
             latency per request (us): p50 {p50}  p90 {p90}  p99 {p99}  p999 {p999}  max {max}",
            cores = self.cores,
            c = plan.connections,
            s = plan.streams,
            d = plan.depth,
            u = plan.users,
            secs = self.elapsed.as_secs_f64(),
            req = self.requests,
            rps = self.requests_per_sec(),
            logins = self.logins,
            lps = self.logins_per_sec(),
            rej = self.rejected,
            err = self.errors,
            p50 = q(0.5),
            p90 = q(0.9),
            p99 = q(0.99),
            p999 = q(0.999),
            max = self.latency.max(),
        )
    }
}

/// A user of the fleet and the card it holds.
struct Member {
    user: Username,
    device: DeviceId,
}

const PIN: &str = "4821";

/// The fleet's card key for user `index` (deterministic, so the run can
/// answer without storing keys).
fn card_key(index: usize) -> SecretKey {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&(index as u64).to_be_bytes());
    key[8..].fill(0x5a);
    SecretKey::from_bytes(key.to_vec()).unwrap_or_else(|_| unreachable_key())
}

#[allow(clippy::panic)] // 32 bytes is always a valid key length
fn unreachable_key() -> SecretKey {
    panic!("a 32-byte key is valid")
}

/// Enrols `users` DSC+ cards through the admin role.
async fn enrol_fleet(target: &Target, users: usize) -> Result<Vec<Member>, BenchError> {
    let admin = target.client(Role::Admin).await?;
    let mut stream = admin.stream().await?;
    let mut members = Vec::with_capacity(users);
    for chunk_start in (0..users).step_by(256) {
        let indices: Vec<usize> = (chunk_start..users.min(chunk_start + 256)).collect();
        let operations = indices
            .iter()
            .map(|&i| {
                Operation::Enroll(EnrollRequest {
                    user: Username::new(&format!("bench{i}"))
                        .unwrap_or_else(|_| unreachable_name()),
                    kind: DeviceKind::DscPlus,
                    secret: Some(card_key(i)),
                    pin: Some(Pin::new(PIN)),
                    label: "bench card".into(),
                })
            })
            .collect();
        let ids = stream.send_batch(operations).await?;
        let mut by_id = HashMap::new();
        for _ in 0..ids.len() {
            let response = stream.receive().await?;
            by_id.insert(response.id, response.reply);
        }
        for (id, index) in ids.into_iter().zip(indices) {
            match by_id.remove(&id) {
                Some(Reply::Enrolled { device, .. }) => members.push(Member {
                    user: Username::new(&format!("bench{index}"))
                        .unwrap_or_else(|_| unreachable_name()),
                    device,
                }),
                other => return Err(BenchError::Reply("enroll", format!("{other:?}"))),
            }
        }
    }
    Ok(members)
}

#[allow(clippy::panic)] // "bench" and digits always form a valid username
fn unreachable_name() -> Username {
    panic!("bench usernames are valid")
}

/// One in-flight login on a stream.
enum Step {
    Challenge { member: usize },
    Verify,
}

/// Runs the load and returns the report.
pub async fn run(target: &Target, plan: &BenchPlan) -> Result<BenchReport, BenchError> {
    let members = Arc::new(enrol_fleet(target, plan.users.max(1)).await?);
    let profiles = DeviceProfiles::defaults().map_err(TokenError::from)?;
    let cards: Arc<Vec<DscPlus>> = Arc::new(
        (0..members.len())
            .map(|i| DscPlus::new(&card_key(i), &profiles))
            .collect::<Result<_, _>>()?,
    );
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut tasks = Vec::new();
    for c in 0..plan.connections.max(1) {
        let client = Arc::new(target.client(Role::Gateway).await?);
        for s in 0..plan.streams.max(1) {
            let client = Arc::clone(&client);
            let members = Arc::clone(&members);
            let cards = Arc::clone(&cards);
            let depth = plan.depth.max(1);
            let offset = (c * plan.streams + s) * depth;
            tasks.push(tokio::spawn(async move {
                drive_stream(&client, &members, &cards, depth, offset, deadline).await
            }));
        }
    }
    let mut report = BenchReport::empty();
    report.cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    for task in tasks {
        match task.await {
            Ok(Ok(part)) => {
                report.requests += part.requests;
                report.logins += part.logins;
                report.rejected += part.rejected;
                report.errors += part.errors;
                let _ = report.latency.add(&part.latency);
            }
            Ok(Err(error)) => return Err(error),
            Err(_) => report.errors += 1,
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_histogram()))
}

#[allow(clippy::panic)] // constant, valid bounds
fn unreachable_histogram() -> Histogram<u64> {
    panic!("histogram bounds are valid")
}

async fn drive_stream(
    client: &Client,
    members: &[Member],
    cards: &[DscPlus],
    depth: usize,
    offset: usize,
    deadline: Instant,
) -> Result<BenchReport, BenchError> {
    let mut stream = client.stream().await?;
    let mut part = BenchReport::empty();
    let mut in_flight: HashMap<u64, (Step, Instant)> = HashMap::with_capacity(depth * 2);
    let mut next_member = offset;
    let mut pick = || {
        next_member = (next_member + 1) % members.len();
        next_member
    };
    // Start `depth` logins.
    let first: Vec<usize> = (0..depth).map(|_| pick()).collect();
    let operations = first
        .iter()
        .map(|&m| Operation::Challenge {
            user: members[m].user.clone(),
            device: members[m].device,
        })
        .collect();
    let sent_at = Instant::now();
    for (id, member) in stream.send_batch(operations).await?.into_iter().zip(first) {
        in_flight.insert(id, (Step::Challenge { member }, sent_at));
    }
    let mut ready = Vec::with_capacity(depth);
    let mut next_batch: Vec<(Operation, Step)> = Vec::with_capacity(depth);
    while !in_flight.is_empty() {
        ready.clear();
        stream.receive_ready(&mut ready).await?;
        let received = Instant::now();
        for response in ready.drain(..) {
            let Some((step, sent)) = in_flight.remove(&response.id) else {
                part.errors += 1;
                continue;
            };
            part.requests += 1;
            let _ = part
                .latency
                .record(received.duration_since(sent).as_micros().max(1) as u64);
            match (step, response.reply) {
                (
                    Step::Challenge { member },
                    Reply::Challenge {
                        challenge, text, ..
                    },
                ) => {
                    next_batch.push((answer(cards, member, challenge, &text)?, Step::Verify));
                }
                (Step::Verify, Reply::Verdict(verdict)) => {
                    match verdict {
                        Verdict::Accepted { .. } => part.logins += 1,
                        _ => part.rejected += 1,
                    }
                    if received < deadline {
                        let member = pick();
                        let op = Operation::Challenge {
                            user: members[member].user.clone(),
                            device: members[member].device,
                        };
                        next_batch.push((op, Step::Challenge { member }));
                    }
                }
                (_, _) => part.errors += 1,
            }
        }
        if !next_batch.is_empty() {
            let (operations, steps): (Vec<_>, Vec<_>) = next_batch.drain(..).unzip();
            let sent_at = Instant::now();
            for (id, step) in stream.send_batch(operations).await?.into_iter().zip(steps) {
                in_flight.insert(id, (step, sent_at));
            }
        }
    }
    stream.finish();
    Ok(part)
}

fn answer(
    cards: &[DscPlus],
    member: usize,
    challenge: ChallengeId,
    text: &ChallengeText,
) -> Result<Operation, BenchError> {
    let ChallengeText::Question(question) = text else {
        return Err(BenchError::Reply("challenge", format!("{text:?}")));
    };
    let response = cards[member].respond(PIN, question)?;
    Ok(Operation::Verify {
        challenge,
        response: Answer::new(response.as_str()),
    })
}

/// The configuration `sls-sim bench` gives the daemon it starts: limits
/// raised so that the run measures the service, not its throttles.
pub const BENCH_DAEMON_CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nrequests-per-connection-per-second = 10000000\nmax-streams-per-connection = 1024\n[challenges]\nper-user-per-minute = 1000000\n";

/// Starts `slsd` on a fresh data directory with [`BENCH_DAEMON_CONFIG`].
pub fn start_daemon(slsd: &Path, data_dir: &Path) -> std::io::Result<LocalDaemon> {
    let config = data_dir.with_extension("toml");
    std::fs::write(&config, BENCH_DAEMON_CONFIG)?;
    LocalDaemon::spawn(slsd, &config, data_dir)
}
