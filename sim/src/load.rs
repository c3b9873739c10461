//! `sls-sim load`: real logins of a fleet over QUIC, with an attacker fleet
//! beside them, and the invariants both must keep.
//!
//! A login is what a gateway does for a user: list the user's devices
//! (M2FS), pick one, ask for a challenge, let the emulated device answer,
//! verify. Logins run either open-loop (`Pace::Rate`: one starts every
//! 1/rate seconds whatever happens to the others, and its latency counts
//! from when it was due, so a daemon that falls behind cannot hide the
//! queue) or closed-loop (`Pace::Concurrency`: a fixed number of users
//! each start their next login when the last one ends).
//!
//! Users whose number ends in 9 are the attackers' targets (when there are
//! attackers); the others log in legitimately and no attack touches them,
//! so every one of their answers must be accepted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use slsd::engine::Role;
use slsd::identity::{ChallengeId, DeviceId, Username};
use slsd::profile::DeviceProfiles;
use slsd::wire::request::Answer;
use slsd::wire::{ChallengeText, Operation, Reply, Verdict};
use tokio::sync::Notify;

use crate::attack;
use crate::client::{Client, ClientError, Pipeline};
use crate::device::{DeviceError, EmulatedDevice};
use crate::fleet::Fleet;
use crate::report::{LiveSecond, Op, Recorder, Report, RunSetup, chance_of_at_least};

/// Logins started but not finished, in open-loop mode, past which new
/// arrivals are dropped (and counted as errors) rather than queued without
/// bound in the client.
pub const MAX_BACKLOG: usize = 100_000;
/// Violations kept for the report (all are counted).
const MAX_VIOLATIONS: usize = 100;
/// Correct answers kept for replay attacks.
const OBSERVED: usize = 4096;
/// How long logins still in flight at the deadline may take to finish.
const DRAIN: Duration = Duration::from_secs(10);
/// Below this chance of seeing as many attacker accepts by luck, the
/// accepts are a broken invariant, not luck.
pub const SURPRISE: f64 = 1e-3;

/// Where the daemon is and which certificates reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The daemon's data directory, or any directory holding `ca.pem` and
    /// the role certificates.
    pub certs: PathBuf,
}

impl Target {
    pub async fn client(&self, role: Role) -> Result<Client, ClientError> {
        let name = role.as_str();
        Client::connect(
            self.addr,
            &self.certs.join("ca.pem"),
            &self.certs.join(format!("{name}.pem")),
            &self.certs.join(format!("{name}.key")),
        )
        .await
    }
}

/// Open or closed loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Logins started per second, on a fixed schedule.
    Rate(f64),
    /// Logins in progress at once.
    Concurrency(usize),
}

/// The flows a run mixes, as `--mix login=90,withdrawal=5,sms=5` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMix {
    pub login: u32,
}

impl Default for FlowMix {
    fn default() -> Self {
        Self { login: 100 }
    }
}

impl FromStr for FlowMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut login = 0;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?}: expected FLOW=SHARE"))?;
            let share: u32 = share
                .trim()
                .parse()
                .map_err(|_| format!("--mix: {name}: {share:?} is not a whole number"))?;
            match name.trim() {
                "login" => login = share,
                flow @ ("withdrawal" | "sms" | "push") if share > 0 => {
                    return Err(format!(
                        "--mix: {flow}: the daemon has no {flow} operation yet; \
                         only login flows can run"
                    ));
                }
                "withdrawal" | "sms" | "push" => {}
                other => {
                    return Err(format!(
                        "--mix: unknown flow {other:?} (expected login, withdrawal, sms or push)"
                    ));
                }
            }
        }
        if login == 0 {
            return Err("--mix: give login a share above 0".into());
        }
        Ok(Self { login })
    }
}

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub duration: Duration,
    pub pace: Pace,
    pub connections: usize,
    /// Streams per connection; logins are spread over all of them.
    pub streams: usize,
    pub flows: FlowMix,
    /// Attacker tasks running beside the load (0: none).
    pub attackers: usize,
    /// Print a progress line every second.
    pub live: bool,
    /// Seeds who logs in when (and the attackers' guesses).
    pub seed: u64,
}

/// What stopped a run before it could report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("fleet: {0}")]
    Device(#[from] DeviceError),
    #[error("{0}")]
    Plan(String),
}

/// A fleet member as the run holds them.
pub(crate) struct Holder {
    pub user: Username,
    pub devices: Vec<(DeviceId, EmulatedDevice)>,
}

/// A lockout the attackers saw: the daemon said it was in force when
/// `seen` had passed, and it lasts at least `until`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeenLock {
    pub seen: Instant,
    pub until: Instant,
}

/// What every task of a run shares.
pub(crate) struct Shared {
    pub start: Instant,
    pub deadline: Instant,
    pub members: Vec<Holder>,
    pub legit: Vec<usize>,
    pub victims: Vec<usize>,
    recorders: Vec<Mutex<Recorder>>,
    /// Correct answers of finished logins, for replay attacks.
    pub observed: Mutex<VecDeque<(ChallengeId, Answer)>>,
    /// Lockouts seen on the victims' devices.
    pub locks: Mutex<HashMap<DeviceId, SeenLock>>,
    violations: Mutex<(usize, Vec<String>)>,
    in_flight: AtomicUsize,
    idle: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn record<T>(&self, part: usize, f: impl FnOnce(&mut Recorder) -> T) -> T {
        let index = part % self.recorders.len().max(1);
        match self.recorders.get(index) {
            Some(recorder) => f(&mut lock(recorder)),
            None => f(&mut Recorder::new(self.start)),
        }
    }

    pub fn violation(&self, text: String) {
        let mut v = lock(&self.violations);
        v.0 += 1;
        if v.1.len() < MAX_VIOLATIONS {
            v.1.push(text);
        }
    }

    /// A failed request of the legitimate load.
    fn error(&self, part: usize, op: Op, result: &Result<Reply, ClientError>, at: Instant) {
        let kind = error_kind(op, result);
        self.record(part, |r| r.error(kind, at));
    }

    /// The lockout known for `device` at `at`, if any.
    pub fn locked_at(&self, device: DeviceId, at: Instant) -> Option<SeenLock> {
        lock(&self.locks)
            .get(&device)
            .copied()
            .filter(|l| l.until > at)
    }

    pub fn saw_lock(&self, device: DeviceId, sent: Instant, seen: Instant, retry: Duration) {
        let until = sent + retry;
        let mut locks = lock(&self.locks);
        let entry = locks.entry(device).or_insert(SeenLock { seen, until });
        if until > entry.until {
            *entry = SeenLock { seen, until };
        }
    }

    /// Checks an accept on `device` against the lockouts seen: an accept
    /// sent after a lockout was seen and answered before the lockout's
    /// least possible end happened while the device was locked.
    pub fn check_not_locked(&self, device: DeviceId, sent: Instant, got: Instant, who: &str) {
        if let Some(l) = self.locked_at(device, got)
            && sent > l.seen
        {
            self.violation(format!(
                "{who}: device {device} accepted an answer {:?} before the end of its lockout",
                l.until - got
            ));
        }
    }
}

/// `devices: RateLimited`, `verify: transport`, ...
pub(crate) fn error_kind(op: Op, result: &Result<Reply, ClientError>) -> String {
    let op = op.name();
    match result {
        Ok(Reply::Error { code, .. }) => format!("{op}: {code:?}"),
        Ok(_) => format!("{op}: unexpected reply"),
        Err(_) => format!("{op}: transport"),
    }
}

pub(crate) fn verdict_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Accepted { .. } => "accepted",
        Verdict::Rejected { .. } => "rejected",
        Verdict::Expired => "expired",
        Verdict::LockedOut { .. } => "locked_out",
        Verdict::Denied => "denied",
        Verdict::UnknownChallenge => "unknown_challenge",
    }
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a run leaves for its report.
#[derive(Debug)]
pub struct Outcome {
    pub recorder: Recorder,
    pub elapsed: Duration,
    pub violations: Vec<String>,
    pub users: usize,
}

impl Outcome {
    /// The report, given what only the caller knows (mode, CPU seconds).
    pub fn report(self, mut setup: RunSetup) -> Report {
        setup.violations = self.violations;
        setup.users = self.users;
        self.recorder.report(self.elapsed, setup)
    }
}

/// Runs `plan` with `fleet` against `target`.
pub async fn run(
    target: &Target,
    fleet: &Fleet,
    profiles: &DeviceProfiles,
    plan: &LoadPlan,
) -> Result<Outcome, LoadError> {
    let members = fleet
        .members
        .iter()
        .map(|m| {
            let devices = m
                .devices
                .iter()
                .map(|d| Ok((d.id, d.emulate(profiles)?)))
                .collect::<Result<Vec<_>, DeviceError>>()?;
            Ok(Holder {
                user: m.user.clone(),
                devices,
            })
        })
        .collect::<Result<Vec<_>, DeviceError>>()?;
    let (legit, victims): (Vec<usize>, Vec<usize>) = if plan.attackers > 0 {
        if members.len() < 10 {
            return Err(LoadError::Plan(
                "attackers need a fleet of at least 10 users (every tenth is a target)".into(),
            ));
        }
        (0..members.len()).partition(|i| i % 10 != 9)
    } else {
        ((0..members.len()).collect(), Vec::new())
    };
    let (clients, pipelines) = gateway_channels(target, plan).await?;
    let attack_channel = if plan.attackers > 0 {
        let client = target.client(Role::Gateway).await?;
        Some((client.pipeline(4096).await?, client))
    } else {
        None
    };
    let start = Instant::now();
    let parts = pipelines.len() + plan.attackers;
    let shared = Arc::new(Shared {
        start,
        deadline: start + plan.duration,
        members,
        legit,
        victims,
        recorders: (0..parts)
            .map(|_| Mutex::new(Recorder::new(start)))
            .collect(),
        observed: Mutex::new(VecDeque::with_capacity(OBSERVED)),
        locks: Mutex::new(HashMap::new()),
        violations: Mutex::new((0, Vec::new())),
        in_flight: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    let ticker = plan
        .live
        .then(|| tokio::spawn(live_line(Arc::clone(&shared))));
    let mut attackers = Vec::new();
    if let Some((pipeline, _)) = &attack_channel {
        for a in 0..plan.attackers {
            let shared = Arc::clone(&shared);
            let pipeline = pipeline.clone();
            let seed = plan.seed ^ (0xa77a_c4e5 + a as u64);
            let part = pipelines.len() + a;
            attackers.push(tokio::spawn(async move {
                attack::run(&shared, &pipeline, part, seed).await;
            }));
        }
    }
    drive(&shared, &pipelines, plan).await;
    for a in attackers {
        let _ = a.await;
    }
    // Logins still in flight at the deadline finish (or time out).
    let drained = tokio::time::timeout(DRAIN, async {
        loop {
            // Registered before the check, so the last task's wake-up
            // cannot fall between the two.
            let mut idle = std::pin::pin!(shared.idle.notified());
            idle.as_mut().enable();
            if shared.in_flight.load(Ordering::Acquire) == 0 {
                break;
            }
            idle.await;
        }
    })
    .await;
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
        if plan.live {
            eprintln!();
        }
    }
    let mut recorder = Recorder::new(start);
    for part in &shared.recorders {
        recorder.merge(&lock(part));
    }
    if drained.is_err() {
        let left = shared.in_flight.load(Ordering::Acquire);
        recorder.error(format!("unfinished after {DRAIN:?}"), Instant::now());
        shared.violation(format!("{left} logins never finished"));
    }
    let (accepts, expected) = recorder.attacker_accepts();
    if accepts > 0 && chance_of_at_least(accepts, expected) < SURPRISE {
        shared.violation(format!(
            "attackers were accepted {accepts} times where chance allows {expected:.2e}"
        ));
    }
    let (count, mut violations) = std::mem::take(&mut *lock(&shared.violations));
    if count > violations.len() {
        violations.push(format!("... and {} more", count - violations.len()));
    }
    for client in &clients {
        client.close();
    }
    if let Some((_, client)) = attack_channel {
        client.close();
    }
    Ok(Outcome {
        recorder,
        elapsed,
        violations,
        users: shared.members.len(),
    })
}

/// `connections` gateway connections with `streams` pipelined streams each.
async fn gateway_channels(
    target: &Target,
    plan: &LoadPlan,
) -> Result<(Vec<Client>, Vec<Pipeline>), LoadError> {
    let mut clients = Vec::new();
    let mut pipelines = Vec::new();
    for _ in 0..plan.connections.max(1) {
        let client = target.client(Role::Gateway).await?;
        for _ in 0..plan.streams.max(1) {
            pipelines.push(client.pipeline(MAX_BACKLOG).await?);
        }
        clients.push(client);
    }
    Ok((clients, pipelines))
}

/// Starts logins until the deadline, at the plan's pace.
async fn drive(shared: &Arc<Shared>, pipelines: &[Pipeline], plan: &LoadPlan) {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    match plan.pace {
        Pace::Rate(rate) => {
            let every = Duration::from_secs_f64(1.0 / rate.max(1e-3));
            let mut n: u64 = 0;
            loop {
                let due = shared.start + every.mul_f64(n as f64);
                if due >= shared.deadline {
                    break;
                }
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let part = (n as usize) % pipelines.len().max(1);
                n += 1;
                if shared.in_flight.load(Ordering::Acquire) >= MAX_BACKLOG {
                    shared.record(part, |r| r.error("client: backlog full".into(), due));
                    continue;
                }
                let (Some(&member), Some(pipeline)) = (
                    shared
                        .legit
                        .get(rng.random_range(0..shared.legit.len().max(1))),
                    pipelines.get(part),
                ) else {
                    break;
                };
                let pick = rng.random_range(0..64usize);
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
                let shared = Arc::clone(shared);
                let pipeline = pipeline.clone();
                tokio::spawn(async move {
                    login(&shared, &pipeline, part, member, pick, due).await;
                    if shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
                        shared.idle.notify_waiters();
                    }
                });
            }
        }
        Pace::Concurrency(users) => {
            let mut tasks = Vec::with_capacity(users);
            for u in 0..users.max(1) {
                let part = u % pipelines.len().max(1);
                let Some(pipeline) = pipelines.get(part) else {
                    break;
                };
                let shared = Arc::clone(shared);
                let pipeline = pipeline.clone();
                let mut rng = ChaCha8Rng::seed_from_u64(plan.seed.wrapping_add(u as u64 + 1));
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < shared.deadline {
                        let Some(&member) = shared
                            .legit
                            .get(rng.random_range(0..shared.legit.len().max(1)))
                        else {
                            break;
                        };
                        let pick = rng.random_range(0..64usize);
                        login(&shared, &pipeline, part, member, pick, Instant::now()).await;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

/// One legitimate login of member `member`, due at `due`; `pick` chooses
/// among the user's devices.
async fn login(
    shared: &Shared,
    gateway: &Pipeline,
    part: usize,
    member: usize,
    pick: usize,
    due: Instant,
) {
    let Some(holder) = shared.members.get(member) else {
        return;
    };
    let user = &holder.user;
    let result = gateway
        .call(Operation::Devices { user: user.clone() })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Devices, due, got));
    let listed = match result {
        Ok(Reply::Devices(listed)) => listed,
        other => return shared.error(part, Op::Devices, &other, got),
    };
    // As a login page would: offer the devices that are not locked out (a
    // lockout left by an earlier attack is not this login's failure).
    let usable: Vec<&(DeviceId, EmulatedDevice)> = holder
        .devices
        .iter()
        .filter(|(id, _)| {
            listed
                .iter()
                .any(|entry| entry.device == *id && entry.locked_for.is_zero())
        })
        .collect();
    let Some(&(device, emulated)) = usable.get(pick % usable.len().max(1)) else {
        let kind = if listed.iter().any(|entry| !entry.locked_for.is_zero()) {
            "devices: every device locked out"
        } else {
            "devices: none of the fleet's listed"
        };
        return shared.record(part, |r| r.error(kind.into(), got));
    };
    let device = *device;

    let asked = Instant::now();
    let result = gateway
        .call(Operation::Challenge {
            user: user.clone(),
            device,
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Challenge, asked, got));
    let (challenge, text, expires_in) = match result {
        Ok(Reply::Challenge {
            challenge,
            text,
            expires_in,
        }) => (challenge, text, expires_in),
        other => return shared.error(part, Op::Challenge, &other, got),
    };
    let Ok(code) = emulated.answer(&text, unix_secs()) else {
        return shared.violation(format!(
            "{user}: device {device} ({}) was sent a challenge it cannot show: {}",
            emulated.kind(),
            shown(&text)
        ));
    };
    let answer = Answer::new(code.as_str());

    let sent = Instant::now();
    let result = gateway
        .call(Operation::Verify {
            challenge,
            response: answer.clone(),
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Verify, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        other => return shared.error(part, Op::Verify, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device: by,
            ..
        } if named == *user && by == device => {
            shared.record(part, |r| r.login(due, got));
            let mut observed = lock(&shared.observed);
            if observed.len() == OBSERVED {
                observed.pop_front();
            }
            observed.push_back((challenge, answer));
        }
        Verdict::Accepted {
            user: named,
            device: by,
            ..
        } => shared.violation(format!(
            "{user}'s login on device {device} was accepted as {named}'s on device {by}"
        )),
        // Answered in time: it had to be accepted.
        refused if got < asked + expires_in => shared.violation(format!(
            "{user}: the right answer on device {device} ({}) was refused: {refused:?}",
            emulated.kind()
        )),
        _ => {}
    }
}

/// A challenge as the login page shows it (challenges are not secret).
pub(crate) fn shown(text: &ChallengeText) -> String {
    match text {
        ChallengeText::Question(q) => q.clone(),
        ChallengeText::CardPositions(a, b) => format!("positions {a} and {b}"),
    }
}

/// Prints throughput, p99 and errors of the last whole second, every
/// second, on stderr (a rewritten line on a terminal).
async fn live_line(shared: Arc<Shared>) {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval_at(
        (shared.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        let second = shared.start.elapsed().as_secs().saturating_sub(1) as usize;
        let mut sum = LiveSecond::default();
        for part in &shared.recorders {
            lock(part).add_second(second, &mut sum);
        }
        let line = format!(
            "{:>4}s  {:>9} req/s  p99 {:>8.2} ms  errors {}",
            second + 1,
            sum.requests,
            sum.latency.value_at_quantile(0.99) as f64 / 1000.0,
            sum.errors
        );
        if terminal {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
}
