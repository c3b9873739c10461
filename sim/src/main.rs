//! `sls-sim`: the command line of the simulator.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sls_sim::token::{self, DscPlus, OcraRequest, PinEntry, TokenError};
use slsd::otp::{Code, HashAlgorithm, SecretKey};
use slsd::profile::DeviceProfiles;

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
    /// Load a daemon with complete DSC+ logins over QUIC and report
    /// throughput and latency. Starts its own `slsd` unless --addr is given.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// How long to load, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: std::time::Duration,
    /// Users in the fleet, one DSC+ card each.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// QUIC connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Streams per connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Logins in flight per stream (pipelined).
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// A running daemon to load instead of starting one.
    #[arg(long, requires = "data_dir")]
    addr: Option<std::net::SocketAddr>,
    /// That daemon's data directory (for its CA and admin/gateway certificates).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
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
        Command::Bench(args) => {
            return match run_bench(args) {
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

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let plan = sls_sim::bench::BenchPlan {
        users: args.users,
        connections: args.connections,
        streams: args.streams,
        depth: args.depth,
        duration: args.duration,
    };
    let scratch = tempfile::tempdir()?;
    let (daemon, target) = match (args.addr, args.data_dir) {
        (Some(addr), Some(data_dir)) => (None, sls_sim::bench::Target { addr, data_dir }),
        _ => {
            let slsd = std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("slsd"))
                .ok_or_else(|| anyhow::anyhow!("cannot locate slsd next to sls-sim"))?;
            let data_dir = scratch.path().join("data");
            let daemon = sls_sim::bench::start_daemon(&slsd, &data_dir)
                .map_err(|e| anyhow::anyhow!("starting {}: {e}", slsd.display()))?;
            let addr = daemon.quic;
            (Some(daemon), sls_sim::bench::Target { addr, data_dir })
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pid = daemon.as_ref().and_then(sls_sim::daemon::LocalDaemon::pid);
    let before = pid.map(cpu_seconds);
    let own_before = cpu_seconds(std::process::id());
    let report = runtime.block_on(sls_sim::bench::run(&target, &plan));
    let own = cpu_seconds(std::process::id()) - own_before;
    let daemon_cpu = pid.zip(before).map(|(pid, b)| cpu_seconds(pid) - b);
    if let Some(mut daemon) = daemon {
        daemon.stop();
    }
    let report = report?;
    println!("{}", report.render(&plan));
    match daemon_cpu {
        Some(d) => println!("cpu seconds: client {own:.1}, daemon {d:.1} (enrolment included)"),
        None => println!("cpu seconds: client {own:.1}"),
    }
    Ok(())
}

/// User + system CPU seconds of a process, from /proc (0 elsewhere).
fn cpu_seconds(pid: u32) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, in clock ticks of 1/100 s (the
    // Linux USER_HZ on every mainstream architecture).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
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
