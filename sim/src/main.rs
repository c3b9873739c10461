//! `sls-sim`: the command line of the simulator.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rand_core::UnwrapErr;
use rand_chacha::ChaCha8Rng;
use sls_sim::bench;
use sls_sim::daemon::LocalDaemon;
use sls_sim::fleet::{self, DeviceMix, Fleet, FleetPlan};
use sls_sim::load::{FlowMix, LoadPlan, Pace, Target};
use sls_sim::report::Report;
use sls_sim::scenario::{self, ScenarioPlan, ScenarioStore};
use slsd::engine::Role;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sls_sim::token::{self, DscPlus, OcraRequest, PinEntry, TokenError};
use slsd::otp::{Code, HashAlgorithm, SecretKey};
use slsd::profile::{DeviceKind, DeviceProfiles};

/// Simulator of sls: emulated tokens, phones and carrier; load generator.
#[derive(Debug, Parser)]
#[command(name = "sls-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the code a token or phone app would show (only the code, on stdout).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Fleets of emulated users and devices.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Drive a fleet's logins (and an attacker fleet) against a running
    /// daemon and report throughput, latency and the invariants.
    Load(LoadArgs),
    /// One command that shows what sls does here: starts `slsd` (unless
    /// --addr is given), creates a fleet, runs a load with attackers
    /// beside it, prints the report and cleans up.
    Bench(BenchArgs),
    /// Run an in-process scenario again from its seed (same replies, same
    /// digest).
    Replay(ReplayArgs),
    /// Run a Redis Cluster on loopback ports in a temporary directory, to
    /// try several `slsd` nodes on one machine; prints the `--store`
    /// argument and runs until interrupted (Ctrl-C), then tears it down.
    Cluster(ClusterArgs),
    /// Start `slsd` with its RADIUS front end, enrol users with DSC+ cards
    /// and log them in over RADIUS (Access-Request, Access-Challenge,
    /// Access-Request with the card's response, Access-Accept) from many
    /// emulated RADIUS clients at once; print logins/s and latency.
    RadiusBench(RadiusBenchArgs),
    /// An IB Key phone app: subscribes for a device with the key of
    /// --seed (over QUIC, or the TCP/TLS fallback) and answers its pushes.
    /// The person's part — the number the login shows — comes on standard
    /// input, a line each; `subscribed` and each number chosen are printed
    /// on standard output.
    Phone(PhoneArgs),
    /// Build a registry of many devices in a data directory (through the
    /// daemon's library, many enrolments per change), start `slsd serve`
    /// on it and on an empty one, and report the build rate, startup time
    /// and resident memory per device. The directory is kept: load the
    /// daemon on it with `slsd serve --data-dir DIR` and `sls-sim bench
    /// --addr ... --data-dir DIR`.
    Registry(RegistryArgs),
}

#[derive(Debug, Args)]
struct RegistryArgs {
    /// Devices to enrol (ten users hold eleven: every tenth a second one);
    /// 0 measures the registry already in --data-dir.
    #[arg(long, default_value_t = 1_000_000)]
    devices: u64,
    /// Build only, without starting the daemon on it: a registry too large
    /// to be held twice at once (here and by the daemon) is built first,
    /// then measured by a second run with --devices 0.
    #[arg(long)]
    no_start: bool,
    /// Where to build it (made if missing; devices are added to a registry
    /// already there).
    #[arg(long)]
    data_dir: PathBuf,
    /// Enrolments per change (one write transaction).
    #[arg(long, default_value_t = 20_000)]
    batch: u64,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PhoneArgs {
    /// The daemon's QUIC address.
    #[arg(long, default_value = "127.0.0.1:4433")]
    addr: std::net::SocketAddr,
    /// Its TCP/TLS fallback, tried when QUIC does not connect.
    #[arg(long)]
    tcp_addr: Option<std::net::SocketAddr>,
    /// The name the server certificate carries (`server.name`).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The daemon's data directory, or any holding `ca.pem`, `phone.pem`
    /// and `phone.key`.
    #[arg(long, default_value = "slsd-data")]
    data_dir: PathBuf,
    /// The IB Key device to answer for.
    #[arg(long, required_unless_present = "print_key")]
    device: Option<u64>,
    /// The app's Ed25519 key seed: 32 bytes in hex.
    #[arg(long)]
    seed: String,
    /// Print the public key of --seed in hex (for `slsd admin
    /// bind-push-key`) and exit.
    #[arg(long)]
    print_key: bool,
    /// Answer every push "this was not me".
    #[arg(long)]
    deny: bool,
}

#[derive(Debug, Args)]
struct RadiusBenchArgs {
    /// Users, each with a DSC+ card, enrolled before the run.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// RADIUS clients logging in at once (one UDP socket each, one login at
    /// a time on each).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: Duration,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// Masters (each serves a third of the slots with 3).
    #[arg(long, default_value_t = 3)]
    masters: usize,
    /// Replicas of each master.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// TLS only, and ACL users: prints the `[store]` keys a node needs.
    #[arg(long)]
    secured: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// The seed an earlier run printed.
    #[arg(long)]
    seed: u64,
    /// Simulated time, as the earlier run had it.
    #[arg(long, default_value = "5weeks", value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: Duration,
    /// Users, as the earlier run had them.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The engine's store: the embedded one, or the cluster store on a
    /// Redis Cluster in memory (its own digest; the same invariants).
    #[arg(long, value_enum, default_value_t = ScenarioStore::Embedded)]
    store: ScenarioStore,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Enrol a fleet through the admin role and save its keys (mode 0600).
    Create(FleetCreateArgs),
    /// Write a vendor's PSKC file of event tokens (HOTP-SHA1-6, serials
    /// PREFIX-0000001 ...), encrypted under a new pre-shared key written
    /// beside it (.psk): the input of `slsd admin import-tokens` at scale.
    Pskc(FleetPskcArgs),
}

#[derive(Debug, Args)]
struct FleetPskcArgs {
    /// Tokens in the file.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Serials are PREFIX-0000001, ...
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// The PSKC file to write (mode 0600).
    #[arg(long)]
    out: PathBuf,
}

/// Where a running daemon is.
#[derive(Debug, Args)]
struct DaemonArgs {
    /// The daemon's QUIC address; several nodes sharing a store,
    /// comma-separated (connections go to each in turn, and each login is
    /// verified on another node than the one that issued its challenge).
    #[arg(long, default_value = "127.0.0.1:4433", value_delimiter = ',')]
    addr: Vec<std::net::SocketAddr>,
    /// The daemon's data directory (its CA and role certificates).
    #[arg(long, default_value = "slsd-data")]
    data_dir: PathBuf,
}

/// The fleet's device kinds unless `--mix` (`--devices` for bench) says.
const DEVICE_MIX: &str = "dscplus=45,ibkey=40,scc=15";

/// How a fleet is made.
#[derive(Debug, Args)]
struct FleetShape {
    /// Users to enrol.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Percent of users who also hold a device of a second kind.
    #[arg(long, default_value_t = 10)]
    second_device: u32,
    /// Percent of IB Key users whose phone app also serves another user.
    #[arg(long, default_value_t = 20)]
    shared_phones: u32,
    /// Percent of users with a verified phone number (SMS logins).
    #[arg(long, default_value_t = 50)]
    phone_numbers: u32,
    /// Enrolments in flight at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Deliver the fleet's cards (DSC+ and `token`) as a vendor would: an
    /// encrypted PSKC file (written beside the fleet file as .pskc, its
    /// pre-shared key as .psk), imported and then assigned by serial.
    #[arg(long)]
    via_pskc: bool,
}

#[derive(Debug, Args)]
struct FleetCreateArgs {
    #[command(flatten)]
    shape: FleetShape,
    /// Device kinds and their shares, e.g. dscplus=40,ibkey=40,scc=20.
    #[arg(long, default_value = DEVICE_MIX)]
    mix: DeviceMix,
    /// Usernames are PREFIX-0, PREFIX-1, ... (default: sim and a random tag).
    #[arg(long)]
    prefix: Option<String>,
    /// The fleet file to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    daemon: DaemonArgs,
}

/// How a load runs.
#[derive(Debug, Args)]
struct LoadShape {
    /// How long to load, e.g. 30s [default: 10s; with --in-process,
    /// simulated time: 5weeks].
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: Option<Duration>,
    /// Open loop: logins started per second, whatever the daemon does.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed loop: logins in flight at once [default: 256].
    #[arg(long)]
    concurrency: Option<usize>,
    /// QUIC connections of the gateway.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Streams per connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Attacker tasks beside the load (every tenth user is their target).
    #[arg(long, default_value_t = 4)]
    attackers: usize,
    /// Seed of who logs in when and of the attackers' guesses.
    #[arg(long)]
    seed: Option<u64>,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw throughput, p99 and latency by percentile as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    /// The fleet file `fleet create` wrote.
    #[arg(long, required_unless_present = "in_process")]
    fleet: Option<PathBuf>,
    /// Drive the daemon's engine in this process on a virtual clock with a
    /// seeded generator instead of a daemon over QUIC: weeks in seconds,
    /// replayable with `sls-sim replay --seed S`.
    #[arg(long)]
    in_process: bool,
    /// Users of an in-process run.
    #[arg(long, default_value_t = 200, requires = "in_process")]
    users: usize,
    #[command(flatten)]
    load: LoadShape,
    /// Flows and their shares: login (challenge/response), sms (a code
    /// through the emulated carrier), push (IB Key approval on emulated
    /// phones), withdrawal (a challenge/response confirming an amount).
    #[arg(long, default_value = "login=100")]
    mix: FlowMix,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// The daemon's pid, to report its CPU seconds.
    #[arg(long)]
    daemon_pid: Option<u32>,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    shape: FleetShape,
    /// The fleet's device kinds and their shares.
    #[arg(long, default_value = DEVICE_MIX)]
    devices: DeviceMix,
    #[command(flatten)]
    load: LoadShape,
    /// Flows and their shares: login (challenge/response), sms (a code
    /// through the emulated carrier), push (IB Key approval on emulated
    /// phones), withdrawal (a challenge/response confirming an amount).
    #[arg(long, default_value = "login=100")]
    mix: FlowMix,
    /// After the load, echo small frames over quinn with the daemon's TLS
    /// for this long and report the run as a share of that ceiling ("0s":
    /// skip).
    #[arg(long, default_value = "3s", value_parser = humantime_serde::re::humantime::parse_duration)]
    ceiling: Duration,
    /// A running daemon to load instead of starting one (several nodes
    /// sharing a store: comma-separated).
    #[arg(long, requires = "data_dir", value_delimiter = ',')]
    addr: Vec<std::net::SocketAddr>,
    /// That daemon's data directory (for its CA and certificates).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Any OCRA (RFC 6287) token.
    Ocra(OcraArgs),
    /// An HOTP (RFC 4226) token.
    Hotp(HotpArgs),
    /// A TOTP (RFC 6238) token.
    Totp(TotpArgs),
    /// A Digital Security Card+: PIN and 6-digit challenge in, 8-digit response out.
    Dscplus(DscPlusArgs),
    /// A security code card: the codes at the given positions, concatenated.
    Card(CardArgs),
}

#[derive(Debug, Args)]
struct OcraArgs {
    /// OCRA suite, e.g. OCRA-1:HOTP-SHA256-8:QN06-PSHA1.
    #[arg(long)]
    suite: String,
    /// Device key in hex.
    #[arg(long)]
    key: String,
    /// Counter C, for suites with C.
    #[arg(long)]
    counter: Option<u64>,
    /// The question as typed: digits for QN, characters for QA, hex for QH.
    #[arg(long)]
    challenge: Option<String>,
    /// PIN, hashed with the suite's P hash.
    #[arg(long, conflicts_with = "pin_hash")]
    pin: Option<String>,
    /// PIN hash in hex, instead of --pin.
    #[arg(long)]
    pin_hash: Option<String>,
    /// Session information bytes in hex, for suites with S.
    #[arg(long)]
    session: Option<String>,
    /// T: the number of time steps since the UNIX epoch, for suites with T.
    #[arg(long)]
    time_step: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl From<Algorithm> for HashAlgorithm {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha1 => Self::Sha1,
            Algorithm::Sha256 => Self::Sha256,
            Algorithm::Sha512 => Self::Sha512,
        }
    }
}

#[derive(Debug, Args)]
struct HotpArgs {
    /// Key in hex.
    #[arg(long)]
    key: String,
    /// Counter value.
    #[arg(long)]
    counter: u64,
    /// Code digits (1..=10).
    #[arg(long, default_value_t = 6)]
    digits: u32,
    #[arg(long, value_enum, default_value_t = Algorithm::Sha1)]
    algorithm: Algorithm,
}

#[derive(Debug, Args)]
struct TotpArgs {
    /// Key in hex.
    #[arg(long)]
    key: String,
    /// The moment, in UNIX seconds.
    #[arg(long)]
    time: u64,
    /// Time step in seconds.
    #[arg(long, default_value_t = 30)]
    step: u64,
    /// Code digits (1..=10).
    #[arg(long, default_value_t = 6)]
    digits: u32,
    #[arg(long, value_enum, default_value_t = Algorithm::Sha1)]
    algorithm: Algorithm,
}

#[derive(Debug, Args)]
struct DscPlusArgs {
    /// Card key in hex.
    #[arg(long)]
    key: String,
    /// The card's PIN (4 digits).
    #[arg(long)]
    pin: String,
    /// The challenge shown at login (6 digits).
    #[arg(long)]
    challenge: String,
}

#[derive(Debug, Args)]
struct CardArgs {
    /// Card secret in hex.
    #[arg(long)]
    key: String,
    /// A position on the card (from 1); repeat for several.
    #[arg(long = "index", required = true)]
    indices: Vec<u16>,
    /// Positions printed on the card.
    #[arg(long, default_value_t = token::DEFAULT_CARD_POSITIONS)]
    positions: u16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Token(command) => run_token(command),
        command => {
            let result = match command {
                Command::Fleet(command) => run_fleet(command),
                Command::Load(args) => run_load(args),
                Command::Bench(args) => run_bench(args),
                Command::Cluster(args) => run_cluster(&args),
                Command::RadiusBench(args) => run_radius_bench(&args),
                Command::Phone(args) => run_phone(args),
                Command::Registry(args) => run_registry(&args),
                Command::Replay(args) => run_scenario(
                    args.seed,
                    args.duration,
                    args.users,
                    args.store,
                    args.json.as_deref(),
                ),
                Command::Token(_) => Ok(()),
            };
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    match result {
        Ok(code) => {
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{code}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: writing the code: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an async command on a multi-threaded runtime.
fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(future)
}

fn profiles() -> anyhow::Result<DeviceProfiles> {
    Ok(DeviceProfiles::defaults()?)
}

/// A fleet enrolled through `target`'s admin role, with a progress bar;
/// its cards delivered in a PSKC file at `pskc` with `--via-pskc`.
async fn create_fleet(
    target: &Target,
    (shape, pskc): (&FleetShape, PathBuf),
    mix: &DeviceMix,
    prefix: String,
) -> anyhow::Result<Fleet> {
    let plan = FleetPlan {
        via_pskc: shape.via_pskc.then_some(pskc),
        users: shape.users,
        mix: mix.clone(),
        second_device: shape.second_device,
        shared_phones: shape.shared_phones,
        phone_numbers: shape.phone_numbers,
        prefix,
        parallel: shape.parallel,
    };
    plan.check()?;
    let admin = target
        .client(Role::Admin)
        .await
        .with_context(|| format!("connecting to {:?} as admin", target.addrs))?;
    // Authenticator apps are activated by their first login.
    let gateway = if mix.shares().iter().any(|(k, _)| *k == DeviceKind::TotpApp) {
        let client = target.client(Role::Gateway).await;
        Some(client.with_context(|| format!("connecting to {:?} as gateway", target.addrs))?)
    } else {
        None
    };
    let bar = ProgressBar::new(shape.users as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "enrolling {bar:40} {pos}/{len} users ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let ticks = bar.clone();
    let mut rng = ChaCha8Rng::from_rng(&mut UnwrapErr(rand::rngs::SysRng));
    let clients = (&admin, gateway.as_ref());
    let fleet = fleet::create(clients, &plan, &profiles()?, &mut rng, move |n| {
        ticks.inc(n as u64)
    })
    .await;
    bar.finish_and_clear();
    admin.close();
    if let Some(gateway) = gateway {
        gateway.close();
    }
    Ok(fleet?)
}

fn load_plan(shape: &LoadShape, flows: &FlowMix) -> LoadPlan {
    LoadPlan {
        duration: shape.duration.unwrap_or(Duration::from_secs(10)),
        pace: match (shape.rate, shape.concurrency) {
            (Some(rate), _) => Pace::Rate(rate),
            (None, users) => Pace::Concurrency(users.unwrap_or(256)),
        },
        connections: shape.connections,
        streams: shape.streams,
        flows: flows.clone(),
        attackers: shape.attackers,
        live: true,
        seed: shape.seed.unwrap_or_else(rand::random),
    }
}

/// Prints the report, writes its files, and fails if an invariant broke.
fn finish(report: &Report, shape: &LoadShape, plan: &LoadPlan) -> anyhow::Result<()> {
    print!("{}", report.render());
    println!("seed: {}", plan.seed);
    if let Some(path) = &shape.json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &shape.plot {
        report
            .plot(path)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
    }
    if !report.invariant_violations.is_empty() {
        anyhow::bail!(
            "{} invariant violation(s); the first: {}",
            report.invariant_violations.len(),
            report.invariant_violations[0]
        );
    }
    Ok(())
}

fn run_fleet(command: FleetCommand) -> anyhow::Result<()> {
    let args = match command {
        FleetCommand::Create(args) => args,
        FleetCommand::Pskc(args) => {
            let mut rng = ChaCha8Rng::from_rng(&mut UnwrapErr(rand::rngs::SysRng));
            let bar = ProgressBar::new(args.tokens as u64);
            let ticks = bar.clone();
            fleet::write_tokens(&args.out, &args.prefix, args.tokens, &mut rng, move || {
                ticks.inc(1)
            })?;
            bar.finish_and_clear();
            println!(
                "{} tokens written to {} (pre-shared key in {})",
                args.tokens,
                args.out.display(),
                args.out.with_extension("psk").display()
            );
            return Ok(());
        }
    };
    let target = Target::new(args.daemon.addr, args.daemon.data_dir);
    let prefix = args
        .prefix
        .unwrap_or_else(|| format!("sim{:04x}", rand::random::<u16>()));
    let pskc = args.out.with_extension("pskc");
    let shape = (&args.shape, pskc.clone());
    let fleet = block_on(create_fleet(&target, shape, &args.mix, prefix))?;
    fleet.save(&args.out)?;
    if args.shape.via_pskc {
        println!(
            "cards delivered in {} (pre-shared key in {})",
            pskc.display(),
            pskc.with_extension("psk").display()
        );
    }
    println!("{fleet}; saved to {} (mode 0600)", args.out.display());
    Ok(())
}

/// An in-process scenario: print its report, fail on a broken invariant.
fn run_scenario(
    seed: u64,
    duration: Duration,
    users: usize,
    store: ScenarioStore,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut plan = ScenarioPlan::new(seed, duration, users)?;
    plan.store = store;
    let started = std::time::Instant::now();
    let report = scenario::run(&plan)?;
    print!("{}", report.render());
    println!(
        "ran in {:.1} s; replay with: sls-sim replay --seed {seed} --duration {}s --users {users}{}",
        started.elapsed().as_secs_f64(),
        duration.as_secs(),
        match store {
            ScenarioStore::Embedded => "",
            ScenarioStore::ClusterInMemory => " --store cluster-in-memory",
        }
    );
    if let Some(path) = json {
        sls_sim::report::write_json(&report, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(first) = report.invariant_violations.first() {
        anyhow::bail!(
            "{} invariant violation(s); the first: {first}",
            report.invariant_violations.len()
        );
    }
    Ok(())
}

fn run_load(args: LoadArgs) -> anyhow::Result<()> {
    let Some(fleet) = args.fleet.as_ref().filter(|_| !args.in_process) else {
        let duration = args
            .load
            .duration
            .unwrap_or(Duration::from_secs(5 * 7 * 86_400));
        let seed = args.load.seed.unwrap_or_else(rand::random);
        let store = ScenarioStore::Embedded;
        return run_scenario(seed, duration, args.users, store, args.load.json.as_deref());
    };
    let path = fleet;
    let fleet = Fleet::load(path)?;
    let target = Target::new(args.daemon.addr, args.daemon.data_dir);
    let plan = load_plan(&args.load, &args.mix);
    let report = block_on(async {
        Ok(bench::measure(&target, &fleet, &profiles()?, &plan, args.daemon_pid).await?)
    });
    // Tokens' counters and apps' used steps moved: the next run starts
    // where this one left them, as a real token would.
    if fleet.moves() {
        fleet.save(path)?;
    }
    finish(&report?, &args.load, &plan)
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let (mut daemon, target) = match (args.addr, args.data_dir) {
        (addrs, Some(certs)) if !addrs.is_empty() => (None, Target::new(addrs, certs)),
        _ => {
            let slsd = slsd_beside()?;
            let data_dir = scratch.path().join("data");
            let daemon = bench::start_daemon(&slsd, &data_dir)
                .with_context(|| format!("starting {}", slsd.display()))?;
            let addr = daemon.quic;
            (Some(daemon), Target::new(vec![addr], data_dir))
        }
    };
    let pid = daemon.as_ref().and_then(LocalDaemon::pid);
    let plan = load_plan(&args.load, &args.mix);
    let prefix = format!("bench{:04x}", rand::random::<u16>());
    let report = block_on(async {
        let pskc = scratch.path().join("fleet.pskc");
        let shape = (&args.shape, pskc);
        let fleet = create_fleet(&target, shape, &args.devices, prefix).await?;
        eprintln!("fleet: {fleet}");
        let mut report = bench::measure(&target, &fleet, &profiles()?, &plan, pid).await?;
        if !args.ceiling.is_zero() {
            report.ceiling = Some(bench::ceiling(args.ceiling, &plan).await?);
        }
        Ok(report)
    });
    if let Some(daemon) = daemon.as_mut() {
        daemon.stop();
    }
    finish(&report?, &args.load, &plan)
}

/// The `[radius]` section `sls-sim radius-bench` gives its daemon: one
/// client, this machine, its secret in `secret_file`; limits raised.
fn radius_section(secret_file: &std::path::Path) -> String {
    format!(
        "[radius]\nlisten = \"127.0.0.1:0\"\nin-flight = 100000\nduplicate-cache = 1000000\n\
         requests-per-client-per-second = 10000000\n\
         clients = [{{ name = \"bench\", addresses = [\"127.0.0.1\"], secret-file = {secret_file:?} }}]\n"
    )
}

/// The `slsd` binary built beside this one.
fn slsd_beside() -> anyhow::Result<PathBuf> {
    std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("slsd"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate slsd next to sls-sim"))
}

fn run_registry(args: &RegistryArgs) -> anyhow::Result<()> {
    use sls_sim::scale::{self, ScalePlan};
    let slsd = slsd_beside()?;
    let bar = ProgressBar::new(args.devices);
    bar.set_style(
        ProgressStyle::with_template(
            "enrolling {bar:40} {pos}/{len} devices ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let plan = ScalePlan {
        devices: args.devices,
        batch: args.batch,
    };
    let ticks = bar.clone();
    let start = (!args.no_start).then_some(slsd.as_path());
    let report = scale::run(start, &args.data_dir, &plan, move |n| ticks.set_position(n))?;
    bar.finish_and_clear();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("machine: {cores} cores");
    if args.no_start {
        println!("{}", report.build_line());
    } else {
        println!("{report}");
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn run_phone(args: PhoneArgs) -> anyhow::Result<()> {
    use sls_sim::phone::{Behaviour, Matcher, PhoneApp};
    use slsd::identity::DeviceId;
    use slsd::otp::push::PushSigner;
    use slsd::wire::Reply;
    let seed: [u8; 32] = hex::decode(&args.seed)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("--seed must be 32 bytes in hex")?;
    let signer = PushSigner::from_seed(seed);
    if args.print_key {
        println!("{}", hex::encode(signer.public().0));
        return Ok(());
    }
    let device = DeviceId(args.device.context("--device is needed")?);
    let tls = slsd::server::pki::client_tls(
        &args.data_dir.join("ca.pem"),
        &args.data_dir.join("phone.pem"),
        &args.data_dir.join("phone.key"),
    )?;
    let endpoints = sls_sim::client::Endpoints {
        quic: args.addr,
        tcp: args.tcp_addr,
        wait: Duration::from_secs(3),
    };
    // The person's lines, read on a thread of their own (stdin blocks).
    let (typed, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if typed.blocking_send(line).is_err() {
                return;
            }
        }
    });
    tokio::runtime::Runtime::new()?.block_on(async move {
        let client =
            sls_sim::client::Client::connect_to(&endpoints, &args.server_name, tls).await?;
        let matcher = std::sync::Arc::new(Matcher::default());
        let app = PhoneApp::connect(client, std::sync::Arc::clone(&matcher)).await?;
        if args.deny {
            app.set_behaviour(device, Behaviour::Deny);
        }
        let replies = app
            .subscribe(&[(device, std::sync::Arc::new(signer))])
            .await?;
        anyhow::ensure!(
            replies == [Reply::Subscribed],
            "the subscription was refused: {replies:?}"
        );
        say("subscribed");
        while let Some(line) = lines.recv().await {
            let Ok(number) = line.trim().parse::<u8>() else {
                eprintln!("sls-sim phone: {line:?} is not a number");
                continue;
            };
            // The notice may still be on its way: the person waits for it.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while matcher.shown_to_waiting(number) == 0 {
                if std::time::Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let chose = std::time::Instant::now() <= deadline;
            say(&if chose {
                format!("chose {number}")
            } else {
                format!("no push to choose {number} on")
            });
        }
        app.stop();
        Ok(())
    })
}

/// A line on standard output, at once (a test reads it from a pipe).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run_radius_bench(args: &RadiusBenchArgs) -> anyhow::Result<()> {
    use sls_sim::radius::{self, CardHolder};
    use slsd::identity::Username;
    use slsd::wire::request::Pin;
    use slsd::wire::{EnrollRequest, Operation, Reply};
    anyhow::ensure!(
        args.users >= 1 && args.concurrency >= 1,
        "--users and --concurrency must be at least 1"
    );
    let scratch = tempfile::tempdir()?;
    let secret: String = (0..32)
        .map(|_| char::from(b'a' + rand::random_range(0..26u8)))
        .collect();
    let secret_file = scratch.path().join("radius.secret");
    std::fs::write(&secret_file, &secret)?;
    let slsd = slsd_beside()?;
    let data_dir = scratch.path().join("data");
    let mut daemon = bench::start_daemon_with(&slsd, &data_dir, &radius_section(&secret_file))
        .with_context(|| format!("starting {}", slsd.display()))?;
    let server = daemon
        .radius
        .ok_or_else(|| anyhow::anyhow!("the daemon did not say where RADIUS listens"))?;
    let pid = daemon.pid();
    let target = Target::new(vec![daemon.quic], data_dir);
    let result = block_on(async {
        let admin = target.client(Role::Admin).await?;
        let profiles = profiles()?;
        let mut holders = Vec::with_capacity(args.users);
        let progress = indicatif::ProgressBar::new(args.users as u64);
        for i in 0..args.users {
            let key = SecretKey::from_array(rand::random::<[u8; 32]>());
            let user = Username::new(&format!("radius{i:06}"))?;
            let request = EnrollRequest {
                user: user.clone(),
                kind: DeviceKind::DscPlus,
                secret: Some(key.clone()),
                pin: Some(Pin::new("4821")),
                label: "card".into(),
            };
            match admin.call(Operation::Enroll(request)).await? {
                Reply::Enrolled { .. } => {}
                other => anyhow::bail!("enrolling {user}: {other:?}"),
            }
            holders.push(CardHolder {
                user,
                card: DscPlus::new(&key, &profiles)?,
                pin: "4821".into(),
            });
            progress.inc(1);
        }
        progress.finish_and_clear();
        let daemon_before = pid.map(bench::cpu_seconds);
        let own_before = bench::cpu_seconds(std::process::id());
        let result = radius::bench(
            server,
            secret.as_bytes(),
            std::sync::Arc::new(holders),
            args.concurrency,
            args.duration,
        )
        .await?;
        let own = bench::cpu_seconds(std::process::id()) - own_before;
        let daemon_cpu = pid
            .zip(daemon_before)
            .map(|(pid, before)| bench::cpu_seconds(pid) - before);
        Ok((result, own, daemon_cpu))
    });
    daemon.stop();
    let (result, own, daemon_cpu) = result?;
    print!("{}", result.render());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "setup: {} users, {} RADIUS clients in flight, {} cores shared by daemon and client; \
         CPU: daemon {}, sls-sim {own:.2} s",
        args.users,
        args.concurrency,
        cores,
        daemon_cpu.map_or_else(|| "?".to_owned(), |s| format!("{s:.2} s")),
    );
    anyhow::ensure!(
        result.failed == 0 && result.refused == 0,
        "logins failed or were refused"
    );
    Ok(())
}

fn run_cluster(args: &ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=16).contains(&args.masters) && args.replicas <= 4,
        "--masters must be 1..=16 and --replicas 0..=4"
    );
    let cluster = if args.secured {
        sls_sim::cluster::Cluster::start_secured(args.masters, args.replicas)?
    } else {
        sls_sim::cluster::Cluster::start(args.masters, args.replicas)?
    };
    println!(
        "cluster: {} masters with {} replica(s) each, in {}",
        args.masters,
        args.replicas,
        cluster.dir().display()
    );
    println!("slsd serve --store {}", cluster.urls().join(","));
    if let Some(secured) = cluster.secured() {
        println!(
            "with, in the node's configuration:\n[store]\nredis-user = \"{}\"\n\
             redis-password-file = {:?}\nredis-ca-file = {:?}",
            sls_sim::cluster::SECURED_USER,
            secured.password_file,
            secured.ca_file
        );
    }
    block_on(async {
        tokio::signal::ctrl_c().await?;
        Ok(())
    })?;
    drop(cluster);
    println!("cluster: stopped");
    Ok(())
}

fn run_token(command: TokenCommand) -> Result<Code, TokenError> {
    match command {
        TokenCommand::Ocra(args) => token::ocra(&OcraRequest {
            suite: &args.suite,
            key: &args.key,
            counter: args.counter,
            challenge: args.challenge.as_deref(),
            pin: match (&args.pin, &args.pin_hash) {
                (Some(pin), _) => Some(PinEntry::Pin(pin)),
                (None, Some(hash)) => Some(PinEntry::Hash(hash)),
                (None, None) => None,
            },
            session: args.session.as_deref(),
            time_step: args.time_step,
        }),
        TokenCommand::Hotp(args) => {
            token::hotp_code(&args.key, args.counter, args.digits, args.algorithm.into())
        }
        TokenCommand::Totp(args) => token::totp_code(
            &args.key,
            args.time,
            args.step,
            args.digits,
            args.algorithm.into(),
        ),
        TokenCommand::Dscplus(args) => {
            let card = DscPlus::new(
                &SecretKey::from_hex(&args.key)?,
                &DeviceProfiles::defaults()?,
            )?;
            card.respond(&args.pin, &args.challenge)
        }
        TokenCommand::Card(args) => token::card_codes(&args.key, &args.indices, args.positions),
    }
}
