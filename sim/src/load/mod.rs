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
//! Beside challenge/response logins, a run may mix SMS logins (send a code,
//! read it from the phone's inbox behind emulated carrier bridges, verify
//! it) and push logins (push, the emulated user picks the shown number on
//! an emulated IB Key app, await the verdict): `--mix login=80,sms=10,push=10`.
//!
//! Users whose number ends in 9 are the attackers' targets (when there are
//! attackers); the others log in legitimately and no attack touches them,
//! so every one of their answers must be accepted.
//!
//! Here: the plan and the run (fleet set up, bridges and phones started,
//! pipelines driven); one flow of each kind in `flows`; what the run's
//! tasks share (the recorder, the attackers' view, the violations) in
//! `shared`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use slsd::engine::Role;
use slsd::identity::DeviceId;
use slsd::otp::push::PushSigner;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::wire::Reply;
use tokio::sync::{Notify, Semaphore};

mod flows;
mod shared;

pub(crate) use flows::shown;
use flows::{Roll, one_flow, verifier_of};
use shared::lock;
pub(crate) use shared::{Holder, Shared, unix_secs, verdict_name};

use crate::attack;
use crate::carrier::{self, Bridge, Inbox};
use crate::client::{Client, ClientError, Pipeline};
use crate::device::DeviceError;
use crate::fleet::Fleet;
use crate::phone::{Matcher, PhoneApp};
use crate::report::{Flow, LiveSecond, Recorder, Report, RunSetup, chance_of_at_least};

/// Logins started but not finished, in open-loop mode, past which new
/// arrivals are dropped (and counted as errors) rather than queued without
/// bound in the client.
pub const MAX_BACKLOG: usize = 100_000;
/// Violations kept for the report (all are counted).
const MAX_VIOLATIONS: usize = 100;
/// Correct answers (and used counters and steps) kept for replay attacks.
pub(crate) const OBSERVED: usize = 4096;
/// How long logins still in flight at the deadline may take to finish.
const DRAIN: Duration = Duration::from_secs(10);
/// Carrier bridges a run with SMS logins connects.
const BRIDGES: usize = 2;
/// Phone app connections at most; the fleet's phones are spread over them.
const PHONE_APPS: usize = 64;

/// Below this chance of seeing as many attacker accepts by luck, the
/// accepts are a broken invariant, not luck.
pub const SURPRISE: f64 = 1e-3;

/// Where the daemon's nodes are and which certificates reach them.
#[derive(Debug, Clone)]
pub struct Target {
    /// One node, or the nodes of a deployment sharing a store: connections
    /// go to each in turn.
    pub addrs: Vec<SocketAddr>,
    /// The daemon's data directory, or any directory holding `ca.pem` and
    /// the role certificates.
    pub certs: PathBuf,
    next: Arc<AtomicUsize>,
}

impl Target {
    pub fn new(addrs: Vec<SocketAddr>, certs: PathBuf) -> Self {
        Self {
            addrs,
            certs,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A client of the next node in turn.
    pub async fn client(&self, role: Role) -> Result<Client, ClientError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let addr = self
            .addrs
            .get(turn % self.addrs.len().max(1))
            .ok_or(ClientError::NoAddress)?;
        let name = role.as_str();
        Client::connect(
            *addr,
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

/// The flows a run mixes, as `--mix login=80,sms=10,push=10` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMix {
    pub login: u32,
    pub sms: u32,
    pub push: u32,
    pub withdrawal: u32,
}

impl Default for FlowMix {
    fn default() -> Self {
        Self {
            login: 100,
            sms: 0,
            push: 0,
            withdrawal: 0,
        }
    }
}

impl FlowMix {
    fn total(&self) -> u32 {
        self.login + self.sms + self.push + self.withdrawal
    }

    /// The flow of a roll in `0..total()`.
    fn pick(&self, roll: u32) -> Flow {
        if roll < self.login {
            Flow::Login
        } else if roll < self.login + self.sms {
            Flow::Sms
        } else if roll < self.login + self.sms + self.push {
            Flow::Push
        } else {
            Flow::Withdrawal
        }
    }
}

/// As `--mix` takes it: `login=80,sms=10,push=10` (flows without a share
/// left out).
impl std::fmt::Display for FlowMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shares = [
            ("login", self.login),
            ("sms", self.sms),
            ("push", self.push),
            ("withdrawal", self.withdrawal),
        ];
        let mut first = true;
        for (name, share) in shares.into_iter().filter(|(_, share)| *share > 0) {
            let comma = if first { "" } else { "," };
            write!(f, "{comma}{name}={share}")?;
            first = false;
        }
        Ok(())
    }
}

impl FromStr for FlowMix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut mix = Self {
            login: 0,
            sms: 0,
            push: 0,
            withdrawal: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?}: expected FLOW=SHARE"))?;
            let share: u32 = share
                .trim()
                .parse()
                .map_err(|_| format!("--mix: {name}: {share:?} is not a whole number"))?;
            if share > 1000 {
                return Err(format!("--mix: {name}: shares are 0..=1000"));
            }
            match name.trim() {
                "login" => mix.login = share,
                "sms" => mix.sms = share,
                "push" => mix.push = share,
                "withdrawal" => mix.withdrawal = share,
                other => {
                    return Err(format!(
                        "--mix: unknown flow {other:?} (expected login, sms, push or withdrawal)"
                    ));
                }
            }
        }
        if mix.total() == 0 {
            return Err("--mix: give at least one flow a share above 0".into());
        }
        Ok(mix)
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
            let push = m
                .devices
                .iter()
                .find(|d| d.kind == DeviceKind::IbKey && d.push_signer().is_some())
                .map(|d| d.id);
            Ok(Holder {
                user: m.user.clone(),
                devices,
                sms: m.sms.clone(),
                push,
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
    let sms_users: VecDeque<usize> = legit
        .iter()
        .copied()
        .filter(|&i| members.get(i).is_some_and(|m| m.sms.is_some()))
        .collect();
    let push_users: VecDeque<usize> = legit
        .iter()
        .copied()
        .filter(|&i| members.get(i).is_some_and(|m| m.push.is_some()))
        .collect();
    if plan.flows.sms > 0 && sms_users.is_empty() {
        return Err(LoadError::Plan(
            "--mix sms needs users with a verified number (fleet create --phone-numbers)".into(),
        ));
    }
    if plan.flows.push > 0 && push_users.is_empty() {
        return Err(LoadError::Plan(
            "--mix push needs IB Key users with push keys".into(),
        ));
    }
    let inbox = Arc::new(Inbox::default());
    let matcher = Arc::new(Matcher::default());
    let bridges = if plan.flows.sms > 0 {
        start_bridges(target, &inbox).await?
    } else {
        Vec::new()
    };
    let phones = if plan.flows.push > 0 {
        start_phones(target, fleet, &matcher).await?
    } else {
        Vec::new()
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
        victims,
        sms_users: (Semaphore::new(sms_users.len()), Mutex::new(sms_users)),
        push_users: (Semaphore::new(push_users.len()), Mutex::new(push_users)),
        login_users: (Semaphore::new(legit.len()), Mutex::new(legit.into())),
        inbox,
        matcher,
        flows: plan.flows.clone(),
        recorders: (0..parts)
            .map(|_| Mutex::new(Recorder::new(start)))
            .collect(),
        observed: Mutex::new(VecDeque::with_capacity(OBSERVED)),
        used_factors: Mutex::new(VecDeque::with_capacity(OBSERVED)),
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
    for bridge in bridges {
        bridge.stop();
    }
    for phone in phones {
        phone.stop();
    }
    Ok(Outcome {
        recorder,
        elapsed,
        violations,
        users: shared.members.len(),
    })
}

/// Carrier bridges that deliver every message to the inbox.
async fn start_bridges(target: &Target, inbox: &Arc<Inbox>) -> Result<Vec<Bridge>, LoadError> {
    let mut bridges = Vec::with_capacity(BRIDGES);
    for _ in 0..BRIDGES {
        let client = target.client(Role::Carrier).await?;
        bridges.push(Bridge::start(client, carrier::Behaviour::Deliver, Arc::clone(inbox)).await?);
    }
    Ok(bridges)
}

/// Phone apps subscribed for every IB Key device with a push key; the
/// fleet's phones are spread over at most [`PHONE_APPS`] connections, a
/// phone's users staying together.
async fn start_phones(
    target: &Target,
    fleet: &Fleet,
    matcher: &Arc<Matcher>,
) -> Result<Vec<PhoneApp>, LoadError> {
    let mut groups: Vec<Vec<(DeviceId, Arc<PushSigner>)>> = vec![Vec::new(); PHONE_APPS];
    for device in fleet.members.iter().flat_map(|m| &m.devices) {
        if let (Some(signer), Some(group)) = (
            device.push_signer(),
            groups.get_mut(device.phone.unwrap_or(0) as usize % PHONE_APPS),
        ) {
            group.push((device.id, Arc::new(signer)));
        }
    }
    let mut apps = Vec::new();
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let client = target.client(Role::Phone).await?;
        let app = PhoneApp::connect(client, Arc::clone(matcher)).await?;
        for chunk in group.chunks(256) {
            let replies = app.subscribe(chunk).await?;
            if let Some(refused) = replies.iter().find(|r| **r != Reply::Subscribed) {
                return Err(LoadError::Plan(format!(
                    "a phone could not subscribe: {refused:?}"
                )));
            }
        }
        apps.push(app);
    }
    Ok(apps)
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
                let Some(pipeline) = pipelines.get(part) else {
                    break;
                };
                let roll = Roll::draw(&mut rng, &shared.flows);
                shared.in_flight.fetch_add(1, Ordering::AcqRel);
                let shared = Arc::clone(shared);
                let pipeline = pipeline.clone();
                let verifier = verifier_of(pipelines, part, plan, &pipeline);
                tokio::spawn(async move {
                    one_flow(&shared, (&pipeline, &verifier), part, roll, due).await;
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
                let verifier = verifier_of(pipelines, part, plan, &pipeline);
                let mut rng = ChaCha8Rng::seed_from_u64(plan.seed.wrapping_add(u as u64 + 1));
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < shared.deadline {
                        let roll = Roll::draw(&mut rng, &shared.flows);
                        let channels = (&pipeline, &verifier);
                        one_flow(&shared, channels, part, roll, Instant::now()).await;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_reads_back_as_written() {
        let mix: FlowMix = "login=80, sms=10,push=10".parse().unwrap();
        assert_eq!(mix.to_string(), "login=80,sms=10,push=10");
        assert_eq!(mix.to_string().parse::<FlowMix>().unwrap(), mix);
        assert_eq!(FlowMix::default().to_string(), "login=100");
        assert!("login=0".parse::<FlowMix>().is_err());
    }
}
