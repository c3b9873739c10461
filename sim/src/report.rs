//! What a load run measured: the recorder the flows write into while they
//! run, and the report made from it at the end — as text, as JSON (field
//! names are a contract with scripts) and as an SVG plot.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The protocol operations a run times separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Devices,
    Challenge,
    Verify,
    SendCode,
    VerifyCode,
    Push,
    AwaitPush,
    AuthorizeWithdrawal,
}

/// Operations counted.
const OPS: usize = 8;

impl Op {
    const ALL: [Self; OPS] = [
        Self::Devices,
        Self::Challenge,
        Self::Verify,
        Self::SendCode,
        Self::VerifyCode,
        Self::Push,
        Self::AwaitPush,
        Self::AuthorizeWithdrawal,
    ];

    /// The name in reports and error kinds.
    pub fn name(self) -> &'static str {
        match self {
            Self::Devices => "devices",
            Self::Challenge => "challenge",
            Self::Verify => "verify",
            Self::SendCode => "send_code",
            Self::VerifyCode => "verify_code",
            Self::Push => "push",
            Self::AwaitPush => "await_push",
            Self::AuthorizeWithdrawal => "authorize_withdrawal",
        }
    }
}

/// The kinds of login a run mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Challenge/response with the user's device.
    Login,
    /// A code by SMS, read from the phone's inbox.
    Sms,
    /// IB Key push approval with number matching.
    Push,
    /// Challenge/response confirming a withdrawal (`AuthorizeWithdrawal`
    /// instead of `Verify`); approved or over the limit both complete it.
    Withdrawal,
}

const FLOWS: usize = 4;

impl Flow {
    pub const ALL: [Self; FLOWS] = [Self::Login, Self::Sms, Self::Push, Self::Withdrawal];

    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Sms => "sms",
            Self::Push => "push",
            Self::Withdrawal => "withdrawal",
        }
    }
}

/// 1 µs to 60 s at 3 significant digits: the whole-run histograms.
fn fine_histogram() -> Histogram<u64> {
    new_histogram(3)
}

/// The same range at 2 digits: one per second of the timeline, kept small.
fn coarse_histogram() -> Histogram<u64> {
    new_histogram(2)
}

fn new_histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, digits)
        .or_else(|_| Histogram::new(digits))
        .unwrap_or_else(|_| unreachable_histogram())
}

#[allow(clippy::panic)] // constant, valid bounds
fn unreachable_histogram() -> Histogram<u64> {
    panic!("histogram bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One second of the run.
#[derive(Clone)]
struct Second {
    requests: u64,
    logins: u64,
    errors: u64,
    latency: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Self {
            requests: 0,
            logins: 0,
            errors: 0,
            latency: coarse_histogram(),
        }
    }
}

/// One second of a run, summed over its parts.
#[derive(Debug)]
pub struct LiveSecond {
    pub requests: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl Default for LiveSecond {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: coarse_histogram(),
        }
    }
}

/// What one attack strategy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackTally {
    /// Requests the strategy sent.
    pub requests: u64,
    /// Attempts the daemon could have accepted (it checked the answer).
    pub evaluated: u64,
    pub accepts: u64,
    /// The sum of each evaluated attempt's chance of being right.
    pub expected_accepts: f64,
    /// Attempts refused before any check (rate limit, lockout, unknown).
    pub refused: u64,
}

/// Counts and histograms of part of a run; parts are merged at the end.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    requests: [u64; OPS],
    latency: [Histogram<u64>; OPS],
    all: Histogram<u64>,
    login: Histogram<u64>,
    logins: u64,
    flows: [(u64, Histogram<u64>); FLOWS],
    verdicts: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    attacks: BTreeMap<&'static str, AttackTally>,
    victim_verdicts: BTreeMap<&'static str, u64>,
    timeline: Vec<Second>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("requests", &self.requests)
            .field("logins", &self.logins)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            requests: [0; OPS],
            latency: std::array::from_fn(|_| fine_histogram()),
            all: fine_histogram(),
            login: fine_histogram(),
            logins: 0,
            flows: std::array::from_fn(|_| (0, fine_histogram())),
            verdicts: BTreeMap::new(),
            errors: BTreeMap::new(),
            attacks: BTreeMap::new(),
            victim_verdicts: BTreeMap::new(),
            timeline: Vec::new(),
        }
    }

    fn second(&mut self, at: Instant) -> &mut Second {
        let index = at.saturating_duration_since(self.start).as_secs() as usize;
        if self.timeline.len() <= index {
            self.timeline.resize_with(index + 1, Second::new);
        }
        let last = self.timeline.len() - 1;
        &mut self.timeline[index.min(last)]
    }

    /// A legitimate request of `op`, from when it was due to when its
    /// reply came.
    pub fn request(&mut self, op: Op, due: Instant, done: Instant) {
        let us = micros(done.saturating_duration_since(due));
        let i = op as usize;
        self.requests[i] += 1;
        let _ = self.latency[i].record(us);
        let _ = self.all.record(us);
        let second = self.second(done);
        second.requests += 1;
        let _ = second.latency.record(us);
    }

    /// A completed, accepted login of `flow`, from when it was due.
    pub fn login(&mut self, flow: Flow, due: Instant, done: Instant) {
        let us = micros(done.saturating_duration_since(due));
        self.logins += 1;
        let _ = self.login.record(us);
        let (count, histogram) = &mut self.flows[flow as usize];
        *count += 1;
        let _ = histogram.record(us);
        self.second(done).logins += 1;
    }

    /// The verdict a legitimate answer got.
    pub fn verdict(&mut self, name: &str) {
        *self.verdicts.entry(name.to_owned()).or_default() += 1;
    }

    /// A failed request of the legitimate load, by kind.
    pub fn error(&mut self, kind: String, at: Instant) {
        *self.errors.entry(kind).or_default() += 1;
        self.second(at).errors += 1;
    }

    /// The tally of one attack strategy.
    pub fn attack(&mut self, strategy: &'static str) -> &mut AttackTally {
        self.attacks.entry(strategy).or_default()
    }

    /// The verdict a target's own login got (attacks may have locked it).
    pub fn victim_verdict(&mut self, name: &'static str) {
        *self.victim_verdicts.entry(name).or_default() += 1;
    }

    /// Adds `other` (another part of the same run) into this one.
    pub fn merge(&mut self, other: &Self) {
        for i in 0..OPS {
            self.requests[i] += other.requests[i];
            let _ = self.latency[i].add(&other.latency[i]);
        }
        for (mine, theirs) in self.flows.iter_mut().zip(&other.flows) {
            mine.0 += theirs.0;
            let _ = mine.1.add(&theirs.1);
        }
        let _ = self.all.add(&other.all);
        let _ = self.login.add(&other.login);
        self.logins += other.logins;
        for (k, v) in &other.verdicts {
            *self.verdicts.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.attacks {
            let mine = self.attacks.entry(k).or_default();
            mine.requests += v.requests;
            mine.evaluated += v.evaluated;
            mine.accepts += v.accepts;
            mine.expected_accepts += v.expected_accepts;
            mine.refused += v.refused;
        }
        for (k, v) in &other.victim_verdicts {
            *self.victim_verdicts.entry(k).or_default() += v;
        }
        if self.timeline.len() < other.timeline.len() {
            self.timeline.resize_with(other.timeline.len(), Second::new);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            mine.requests += theirs.requests;
            mine.logins += theirs.logins;
            mine.errors += theirs.errors;
            let _ = mine.latency.add(&theirs.latency);
        }
    }

    /// Adds second `index` of this part into `sum` (requests, errors,
    /// latency), for the live line.
    pub fn add_second(&self, index: usize, sum: &mut LiveSecond) {
        if let Some(s) = self.timeline.get(index) {
            sum.requests += s.requests;
            sum.errors += s.errors;
            let _ = sum.latency.add(&s.latency);
        }
    }

    /// Attacker accepts, and how many chance alone would give.
    pub fn attacker_accepts(&self) -> (u64, f64) {
        (
            self.attacks.values().map(|a| a.accepts).sum(),
            self.attacks.values().map(|a| a.expected_accepts).sum(),
        )
    }

    /// The report of a run that lasted `elapsed`.
    pub fn report(&self, elapsed: Duration, setup: RunSetup) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let requests: u64 = self.requests.iter().sum();
        let (attacker_accepts, attacker_expected_accepts) = self.attacker_accepts();
        Report {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mode: setup.mode,
            mix: setup.mix,
            duration_s: secs,
            connections: setup.connections,
            users: setup.users,
            requests,
            requests_per_sec: requests as f64 / secs,
            logins: self.logins,
            logins_per_sec: self.logins as f64 / secs,
            latency_us: Percentiles::of(&self.all),
            login_latency_us: Percentiles::of(&self.login),
            flows: Flow::ALL
                .iter()
                .filter(|&&flow| self.flows[flow as usize].0 > 0)
                .map(|&flow| {
                    let (count, histogram) = &self.flows[flow as usize];
                    (
                        flow.name().to_owned(),
                        OperationReport {
                            count: *count,
                            per_sec: *count as f64 / secs,
                            latency_us: Percentiles::of(histogram),
                        },
                    )
                })
                .collect(),
            operations: Op::ALL
                .iter()
                .filter(|&&op| self.requests[op as usize] > 0)
                .map(|&op| {
                    let i = op as usize;
                    (
                        op.name().to_owned(),
                        OperationReport {
                            count: self.requests[i],
                            per_sec: self.requests[i] as f64 / secs,
                            latency_us: Percentiles::of(&self.latency[i]),
                        },
                    )
                })
                .collect(),
            verdicts: self.verdicts.clone(),
            errors: self.errors.values().sum(),
            errors_by_kind: self.errors.clone(),
            attacker_requests: self.attacks.values().map(|a| a.requests).sum(),
            attacker_accepts,
            attacker_expected_accepts,
            attacks: self
                .attacks
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            victim_verdicts: self
                .victim_verdicts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            invariant_violations: setup.violations,
            client_cpu_s: setup.client_cpu_s,
            daemon_cpu_s: setup.daemon_cpu_s,
            // Only whole seconds: the last one, cut off by the end of the
            // run, would show as a fall that never happened.
            timeline: self
                .timeline
                .iter()
                .take(elapsed.as_secs() as usize)
                .enumerate()
                .map(|(i, s)| TimelinePoint {
                    second: i as u64,
                    requests: s.requests,
                    logins: s.logins,
                    errors: s.errors,
                    p99_us: s.latency.value_at_quantile(0.99),
                })
                .collect(),
            latency_curves: Op::ALL
                .iter()
                .filter(|&&op| self.requests[op as usize] > 0)
                .map(|&op| {
                    let curve = percentile_curve(&self.latency[op as usize]);
                    (op.name().to_owned(), curve)
                })
                .collect(),
            ceiling: None,
        }
    }
}

/// What the report says about the run beyond the recorder's numbers.
#[derive(Debug, Clone, Default)]
pub struct RunSetup {
    pub mode: String,
    /// The flows and their shares, as `--mix` gives them.
    pub mix: String,
    pub connections: usize,
    pub users: usize,
    pub violations: Vec<String>,
    pub client_cpu_s: Option<f64>,
    pub daemon_cpu_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    pub count: u64,
    pub per_sec: f64,
    pub latency_us: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub second: u64,
    pub requests: u64,
    pub logins: u64,
    pub errors: u64,
    pub p99_us: u64,
}

/// One point of a latency percentile curve.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CurvePoint {
    /// 50.0 … 99.99.
    pub percentile: f64,
    pub us: u64,
}

/// The highest percentile a curve reaches: further out, a 10-second run
/// has too few requests for the value to mean anything.
pub const CURVE_TOP: f64 = 99.99;
/// Points per decade of `1 / (1 - q)`, the axis HDR plots use: p90, p99,
/// p99.9 and p99.99 fall one decade apart.
const CURVE_STEPS_PER_DECADE: u32 = 20;

/// Latency at percentiles from p50 to [`CURVE_TOP`], evenly spaced on the
/// decade axis (what `HdrHistogram`'s plots draw): the tail gets as many
/// points as the middle.
fn percentile_curve(h: &Histogram<u64>) -> Vec<CurvePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    // p50 is 0.301 decades out; the grid after it is anchored on whole
    // decades so that p90, p99 and p99.9 are points of their own.
    let first = 2f64.log10();
    let last = -(1.0 - CURVE_TOP / 100.0).log10() + 1e-9;
    let grid = (1..)
        .map(|k| f64::from(k) / f64::from(CURVE_STEPS_PER_DECADE))
        .skip_while(|&d| d <= first)
        .take_while(|&d| d <= last);
    std::iter::once(first)
        .chain(grid)
        .map(|decades| {
            let q = 1.0 - 10f64.powf(-decades);
            CurvePoint {
                percentile: q * 100.0,
                us: h.value_at_quantile(q),
            }
        })
        .collect()
}

/// The whole report. The top-level field names are a contract: scripts
/// read `requests_per_sec`, `logins_per_sec`, `latency_us`, `verdicts`,
/// `errors`, `attacker_accepts`, `attacker_expected_accepts`,
/// `invariant_violations` and `cores`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cores: usize,
    pub mode: String,
    /// The flows and their shares (`login=80,sms=10,push=10`).
    pub mix: String,
    pub duration_s: f64,
    pub connections: usize,
    pub users: usize,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub logins: u64,
    pub logins_per_sec: f64,
    /// Per request; the first request of a login from when it was due.
    pub latency_us: Percentiles,
    /// Per accepted login, from when it was due to its verdict.
    pub login_latency_us: Percentiles,
    /// Accepted logins and their latency, by flow (login, sms, push).
    pub flows: BTreeMap<String, OperationReport>,
    pub operations: BTreeMap<String, OperationReport>,
    /// Verdicts on legitimate answers.
    pub verdicts: BTreeMap<String, u64>,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub attacker_requests: u64,
    pub attacker_accepts: u64,
    pub attacker_expected_accepts: f64,
    pub attacks: BTreeMap<String, AttackTally>,
    /// Verdicts on the targets' own logins.
    pub victim_verdicts: BTreeMap<String, u64>,
    pub invariant_violations: Vec<String>,
    pub client_cpu_s: Option<f64>,
    pub daemon_cpu_s: Option<f64>,
    /// Whole seconds of the run (a last, partial second is left out).
    pub timeline: Vec<TimelinePoint>,
    /// Latency by percentile, p50 to p99.99, per operation.
    pub latency_curves: BTreeMap<String, Vec<CurvePoint>>,
    /// The quinn echo ceiling measured beside the run (`sls-sim bench`).
    pub ceiling: Option<crate::echo::Ceiling>,
}

impl Report {
    /// The run's configuration in one line: the plot's title.
    pub fn title(&self) -> String {
        let mix = if self.mix.is_empty() {
            String::new()
        } else {
            format!(", mix {}", self.mix)
        };
        let connections = match self.connections {
            1 => "1 connection".to_owned(),
            n => format!("{n} connections"),
        };
        format!(
            "{} users{mix}, {connections}, {}; {} cores",
            self.users, self.mode, self.cores
        )
    }

    /// The report for people.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let p = |p: &Percentiles| {
            format!(
                "p50 {}  p90 {}  p99 {}  p999 {}  max {}",
                p.p50, p.p90, p.p99, p.p999, p.max
            )
        };
        let _ = writeln!(
            out,
            "machine: {} cores (client and daemon share them when the daemon is local)",
            self.cores
        );
        let _ = writeln!(
            out,
            "load: {}, {} connections, {} users, {:.1} s",
            self.mode, self.connections, self.users, self.duration_s
        );
        let _ = writeln!(
            out,
            "requests: {} ({:.0}/s); logins accepted: {} ({:.0}/s)",
            self.requests, self.requests_per_sec, self.logins, self.logins_per_sec
        );
        let _ = writeln!(out, "latency per request (us): {}", p(&self.latency_us));
        let _ = writeln!(
            out,
            "latency per login   (us): {}",
            p(&self.login_latency_us)
        );
        for (name, flow) in &self.flows {
            let _ = writeln!(
                out,
                "  {name:<5} logins {:>8} ({:.0}/s)  {}",
                flow.count,
                flow.per_sec,
                p(&flow.latency_us)
            );
        }
        for (name, op) in &self.operations {
            let _ = writeln!(
                out,
                "  {name:<12} {:>10} ({:.0}/s)  {}",
                op.count,
                op.per_sec,
                p(&op.latency_us)
            );
        }
        let verdicts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "verdicts: {}", verdicts.join(", "));
        let errors: Vec<String> = self
            .errors_by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            out,
            "errors: {}{}",
            self.errors,
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join(", "))
            }
        );
        if self.attacker_requests > 0 {
            let _ = writeln!(
                out,
                "attackers: {} requests, accepted {} (expected by chance {:.2e})",
                self.attacker_requests, self.attacker_accepts, self.attacker_expected_accepts
            );
            let victims: Vec<String> = self
                .victim_verdicts
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(out, "  targets' own logins: {}", victims.join(", "));
            for (name, a) in &self.attacks {
                let _ = writeln!(
                    out,
                    "  {name:<18} {:>8} sent, {:>8} checked, {:>8} refused, {} accepted (expected {:.2e})",
                    a.requests, a.evaluated, a.refused, a.accepts, a.expected_accepts
                );
            }
        }
        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                out,
                "quinn echo ceiling ({} streams, {} in flight, the daemon's TLS): {:.0} req/s, \
                 echo server {:.2} cores; this run reached {:.1} % of it",
                c.streams,
                c.in_flight,
                c.requests_per_sec,
                c.server_cores,
                100.0 * self.requests_per_sec / c.requests_per_sec.max(1e-9)
            );
        }
        // Per request, all requests (the attackers' too): what each side
        // costs, whatever the machine's speed.
        let all = (self.requests + self.attacker_requests).max(1) as f64;
        let per_request = |s: f64| s * 1e6 / all;
        match (self.client_cpu_s, self.daemon_cpu_s) {
            (Some(c), Some(d)) => {
                let _ = writeln!(
                    out,
                    "cpu seconds: client {c:.1} ({:.2} us/request), daemon {d:.1} ({:.2} us/request)",
                    per_request(c),
                    per_request(d)
                );
            }
            (Some(c), None) => {
                let _ = writeln!(
                    out,
                    "cpu seconds: client {c:.1} ({:.2} us/request)",
                    per_request(c)
                );
            }
            _ => {}
        }
        if self.invariant_violations.is_empty() {
            let _ = writeln!(out, "invariants: all held");
        } else {
            let _ = writeln!(
                out,
                "invariants: {} VIOLATED",
                self.invariant_violations.len()
            );
            for v in self.invariant_violations.iter().take(10) {
                let _ = writeln!(out, "  - {v}");
            }
        }
        out
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        write_json(self, path)
    }

    /// Draws throughput and p99 over time and the latency histogram.
    pub fn plot(&self, path: &Path) -> Result<(), String> {
        crate::plot::draw(self, path)
    }
}

/// Writes any report (a load run's, an in-process run's) as pretty JSON.
pub fn write_json(report: &impl Serialize, path: &Path) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(path, json)
}

/// The chance of at least `k` successes when `expected` are expected by
/// chance (Poisson): how surprising a number of attacker accepts is.
pub fn chance_of_at_least(k: u64, expected: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let mut term = (-expected).exp();
    let mut below = 0.0;
    for i in 0..k {
        below += term;
        term *= expected / (i + 1) as f64;
    }
    (1.0 - below).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_merge_into_one_report() {
        let start = Instant::now();
        let mut a = Recorder::new(start);
        let mut b = Recorder::new(start);
        a.request(Op::Challenge, start, start + Duration::from_micros(100));
        b.request(Op::Verify, start, start + Duration::from_millis(1500));
        b.login(Flow::Login, start, start + Duration::from_millis(1500));
        b.verdict("accepted");
        a.error("challenge: RateLimited".into(), start);
        b.attack("guess").evaluated += 2;
        a.merge(&b);
        let report = a.report(Duration::from_secs(2), RunSetup::default());
        assert_eq!(report.requests, 2);
        assert_eq!(report.logins, 1);
        assert_eq!(report.requests_per_sec, 1.0);
        assert_eq!(report.verdicts["accepted"], 1);
        assert_eq!(report.errors, 1);
        assert_eq!(report.attacks["guess"].evaluated, 2);
        assert_eq!(report.timeline.len(), 2);
        assert_eq!(report.timeline[1].logins, 1);
        assert!(report.latency_us.max >= 1_500_000);
        let challenge = &report.latency_curves["challenge"];
        assert!(challenge.iter().all(|p| p.us >= 99 && p.us <= 101));
        assert!(report.latency_curves["verify"][0].us >= 1_490_000);
        assert!(!report.latency_curves.contains_key("devices"));
    }

    #[test]
    fn the_timeline_leaves_out_the_last_partial_second() {
        let start = Instant::now();
        let mut recorder = Recorder::new(start);
        for ms in [10, 1010, 2010, 2500] {
            let done = start + Duration::from_millis(ms);
            recorder.request(Op::Devices, done, done);
        }
        let report = recorder.report(Duration::from_millis(2600), RunSetup::default());
        let seconds: Vec<u64> = report.timeline.iter().map(|p| p.requests).collect();
        assert_eq!(seconds, [1, 1], "second 2 ended after the run did");
        assert_eq!(report.requests, 4, "its requests still count in the totals");
    }

    #[test]
    fn a_latency_curve_runs_from_p50_to_p9999_and_never_falls() {
        let start = Instant::now();
        let mut recorder = Recorder::new(start);
        for us in 1..=100_000u64 {
            recorder.request(Op::Verify, start, start + Duration::from_micros(us));
        }
        let report = recorder.report(Duration::from_secs(1), RunSetup::default());
        let curve = &report.latency_curves["verify"];
        let first = curve.first().unwrap();
        let last = curve.last().unwrap();
        assert!((first.percentile - 50.0).abs() < 1e-9, "{first:?}");
        assert!((last.percentile - CURVE_TOP).abs() < 1e-9, "{last:?}");
        // Uniform 1..=100,000 µs: the value at q is about q × 100,000.
        assert!(first.us.abs_diff(50_000) < 100, "{first:?}");
        assert!(last.us.abs_diff(99_990) < 100, "{last:?}");
        assert!(
            curve
                .windows(2)
                .all(|w| w[0].us <= w[1].us && w[0].percentile < w[1].percentile)
        );
        // p90, p99 and p99.9 are among the points (one decade apart).
        for p in [90.0, 99.0, 99.9] {
            assert!(curve.iter().any(|c| (c.percentile - p).abs() < 1e-6), "{p}");
        }
    }

    #[test]
    fn json_has_the_fields_scripts_rely_on() {
        let report =
            Recorder::new(Instant::now()).report(Duration::from_secs(1), RunSetup::default());
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        for field in [
            "requests_per_sec",
            "logins_per_sec",
            "verdicts",
            "errors",
            "attacker_accepts",
            "attacker_expected_accepts",
            "invariant_violations",
            "cores",
        ] {
            assert!(json.get(field).is_some(), "{field}");
        }
        for p in ["p50", "p99", "p999", "max"] {
            assert!(json["latency_us"].get(p).is_some(), "{p}");
        }
        assert!(json["invariant_violations"].as_array().unwrap().is_empty());
    }

    #[test]
    fn poisson_tail() {
        assert_eq!(chance_of_at_least(0, 0.5), 1.0);
        assert!((chance_of_at_least(1, 1e-4) - 1e-4).abs() < 1e-8);
        assert!((chance_of_at_least(1, 1.0) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!(chance_of_at_least(3, 1e-3) < 1e-9);
    }
}
