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
use slsd::otp::push::PushSigner;
use slsd::phone::Channel;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::wire::request::Answer;
use slsd::wire::{ChallengeText, Operation, Reply, Verdict};
use tokio::sync::{Notify, Semaphore};

use crate::attack;
use crate::carrier::{self, Bridge, Inbox};
use crate::client::{Client, ClientError, Pipeline};
use crate::device::{DeviceError, EmulatedDevice};
use crate::fleet::{Fleet, SmsNumber};
use crate::phone::{Matcher, PhoneApp};
use crate::report::{Flow, LiveSecond, Op, Recorder, Report, RunSetup, chance_of_at_least};

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

/// A fleet member as the run holds them.
pub(crate) struct Holder {
    pub user: Username,
    pub devices: Vec<(DeviceId, EmulatedDevice)>,
    /// The verified number, for SMS logins.
    pub sms: Option<SmsNumber>,
    /// The IB Key device push logins use.
    pub push: Option<DeviceId>,
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
    pub victims: Vec<usize>,
    /// Legitimate users with a verified number / with push, not in an SMS
    /// or push login now: one such login per user at a time, since a user
    /// has one live code and a bounded number of pending pushes. A login
    /// waits for a permit (there are as many as users), takes the
    /// longest-idle user and puts them back at the end.
    sms_users: (Semaphore, Mutex<VecDeque<usize>>),
    push_users: (Semaphore, Mutex<VecDeque<usize>>),
    /// Legitimate users not in a challenge login now, the same way: a
    /// device has one current challenge (asking again replaces it), so a
    /// user runs one challenge login at a time, as a person does.
    login_users: (Semaphore, Mutex<VecDeque<usize>>),
    inbox: Arc<Inbox>,
    matcher: Arc<Matcher>,
    flows: FlowMix,
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
        // A device that waits for an operator says `Duration::MAX`: a
        // century is forever for a load run.
        const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);
        let until = sent + retry.min(FOREVER);
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

/// Where a login started on pipeline `part` sends its answer: the same
/// stream of the next connection, which is on the next node when the
/// target has several, so every login of a multi-node run is verified by a
/// node other than the one that issued its challenge. One connection: the
/// same pipeline.
fn verifier_of(pipelines: &[Pipeline], part: usize, plan: &LoadPlan, own: &Pipeline) -> Pipeline {
    let next = (part + plan.streams.max(1)) % pipelines.len().max(1);
    pipelines.get(next).unwrap_or(own).clone()
}

/// The random choices of one flow: which flow, which user, which device.
#[derive(Debug, Clone, Copy)]
struct Roll {
    flow: Flow,
    member: usize,
    pick: usize,
}

impl Roll {
    fn draw(rng: &mut ChaCha8Rng, flows: &FlowMix) -> Self {
        Self {
            flow: flows.pick(rng.random_range(0..flows.total().max(1))),
            member: rng.random_range(0..1 << 30),
            pick: rng.random_range(0..64usize),
        }
    }
}

/// Runs the rolled flow for the rolled user.
async fn one_flow(
    shared: &Shared,
    (gateway, verifier): (&Pipeline, &Pipeline),
    part: usize,
    roll: Roll,
    due: Instant,
) {
    let list = match roll.flow {
        Flow::Login | Flow::Withdrawal => {
            // 1 to 5,000 USD, drawn from the roll: some users reach their
            // kind's limit during a long run, which is part of the test.
            let amount =
                (roll.flow == Flow::Withdrawal).then(|| (roll.member as u64 % 5_000 + 1) * 100);
            let (permits, list) = &shared.login_users;
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let Some(member) = lock(list).pop_front() else {
                return;
            };
            let who = (member, amount);
            login(shared, (gateway, verifier), part, who, roll.pick, due).await;
            lock(list).push_back(member);
            return;
        }
        Flow::Sms => &shared.sms_users,
        Flow::Push => &shared.push_users,
    };
    let (permits, list) = list;
    let Ok(_permit) = permits.acquire().await else {
        return;
    };
    let Some(member) = lock(list).pop_front() else {
        return;
    };
    match roll.flow {
        Flow::Sms => sms_login(shared, gateway, part, member, due).await,
        _ => push_login(shared, gateway, part, member, due).await,
    }
    lock(list).push_back(member);
}

/// An SMS login: send a code, read it off the phone, verify it.
async fn sms_login(shared: &Shared, gateway: &Pipeline, part: usize, member: usize, due: Instant) {
    let Some(holder) = shared.members.get(member) else {
        return;
    };
    let Some(sms) = &holder.sms else { return };
    let user = &holder.user;
    // A text left over from an earlier login that failed half way is not
    // this login's code.
    while shared.inbox.pending(&sms.number) > 0 {
        let _ = shared.inbox.next(&sms.number, Duration::ZERO).await;
    }
    let result = gateway
        .call(Operation::SendCode {
            user: user.clone(),
            channel: Channel::Sms,
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::SendCode, due, got));
    let expires_in = match result {
        Ok(Reply::CodeSent { expires_in, .. }) => expires_in,
        other => return shared.error(part, Op::SendCode, &other, got),
    };
    let Some(text) = shared.inbox.next(&sms.number, expires_in).await else {
        return shared.violation(format!(
            "{user}: the code sent to {:?} never arrived",
            sms.number
        ));
    };
    let Some(code) = text.code() else {
        return shared.violation(format!("{user}: a text without a code"));
    };
    let sent = Instant::now();
    let result = gateway
        .call(Operation::VerifyCode {
            user: user.clone(),
            code: Answer::new(&code),
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::VerifyCode, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        other => return shared.error(part, Op::VerifyCode, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device,
            kind: DeviceKind::Sms,
        } if named == *user && device == sms.device => {
            shared.record(part, |r| r.login(Flow::Sms, due, got));
        }
        other => shared.violation(format!(
            "{user}: the code the phone received was refused: {other:?}"
        )),
    }
}

/// A push login: push, show the number, the phone approves, await.
async fn push_login(shared: &Shared, gateway: &Pipeline, part: usize, member: usize, due: Instant) {
    let Some(holder) = shared.members.get(member) else {
        return;
    };
    let Some(device) = holder.push else { return };
    let user = &holder.user;
    let result = gateway
        .call(Operation::Push {
            user: user.clone(),
            device,
        })
        .await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::Push, due, got));
    let (push, match_number, expires_in) = match result {
        Ok(Reply::PushSent {
            push,
            match_number,
            expires_in,
        }) => (push, match_number, expires_in),
        other => return shared.error(part, Op::Push, &other, got),
    };
    shared.matcher.shown(push, match_number);
    let sent = Instant::now();
    let result = gateway.call(Operation::AwaitPush { push }).await;
    let got = Instant::now();
    shared.record(part, |r| r.request(Op::AwaitPush, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        other => return shared.error(part, Op::AwaitPush, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device: by,
            kind: DeviceKind::IbKey,
        } if named == *user && by == device => {
            shared.record(part, |r| r.login(Flow::Push, due, got));
        }
        // The phone approves every push with the shown number at once.
        refused if got < sent + expires_in => shared.violation(format!(
            "{user}: the push the phone approved was refused: {refused:?}"
        )),
        _ => {}
    }
}

/// One legitimate login of member `member`, due at `due`; `pick` chooses
/// among the user's devices. With `amount` (cents) it confirms a
/// withdrawal: `AuthorizeWithdrawal` instead of `Verify`.
async fn login(
    shared: &Shared,
    (gateway, verifier): (&Pipeline, &Pipeline),
    part: usize,
    (member, amount): (usize, Option<u64>),
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
        Ok(Reply::Devices { devices, .. }) => devices,
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
    let (op, flow, result) = match amount {
        None => {
            let verify = Operation::Verify {
                challenge,
                response: answer.clone(),
            };
            (Op::Verify, Flow::Login, verifier.call(verify).await)
        }
        Some(amount_cents) => {
            let withdraw = Operation::AuthorizeWithdrawal {
                user: user.clone(),
                amount_cents,
                challenge,
                response: answer.clone(),
            };
            (
                Op::AuthorizeWithdrawal,
                Flow::Withdrawal,
                verifier.call(withdraw).await,
            )
        }
    };
    let got = Instant::now();
    shared.record(part, |r| r.request(op, sent, got));
    let verdict = match result {
        Ok(Reply::Verdict(verdict)) => verdict,
        // The answer was accepted; the amount decided the rest.
        Ok(Reply::WithdrawalApproved {
            device: by, kind, ..
        }) => Verdict::Accepted {
            user: user.clone(),
            device: by,
            kind,
        },
        Ok(Reply::OverLimit { device_kind, .. }) => {
            shared.record(part, |r| r.verdict("over_limit"));
            Verdict::Accepted {
                user: user.clone(),
                device,
                kind: device_kind,
            }
        }
        other => return shared.error(part, op, &other, got),
    };
    shared.record(part, |r| r.verdict(verdict_name(&verdict)));
    match verdict {
        Verdict::Accepted {
            user: named,
            device: by,
            ..
        } if named == *user && by == device => {
            shared.record(part, |r| r.login(flow, due, got));
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
        ChallengeText::EnterCode => "enter your code".to_owned(),
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
