//! `slsd`: the sls daemon's command line. Thin by design: parse the command
//! line, call into the library, map errors to an exit code.

mod admin;
mod tokens;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slsd::profile::{Check, DeviceProfiles, WithdrawalLimit};

/// sls daemon: second-factor verification over QUIC.
#[derive(Debug, Parser)]
#[command(name = "slsd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (QUIC on 127.0.0.1:4433 and metrics on :9464 by default).
    Serve {
        /// Configuration file (TOML); `slsd config default` shows every key.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Where certificates, keys and the database live.
        #[arg(long, default_value = "slsd-data")]
        data_dir: std::path::PathBuf,
        /// Share state with other nodes on a Redis or Valkey Cluster: any of
        /// its nodes, comma-separated (`redis://127.0.0.1:7000,...`). Sets
        /// `store.backend = "redis"` and `store.redis-urls`.
        #[arg(long, value_name = "URLS")]
        store: Option<String>,
        /// How log lines are written to stderr: `text` for people (coloured
        /// only when stderr is a terminal), `json` (one object per line)
        /// for log shippers.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// List the device kinds and how each is checked (built-in profiles).
    Profiles,
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Operate a running daemon: every admin operation (`slsd admin help`).
    Admin(admin::AdminArgs),
    /// Certificates of the local CA.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Make a new data directory from a backup (`slsd admin backup`): the
    /// file is checked page by page, against its own record and with the
    /// key file, before it becomes the directory's database. Then start
    /// `slsd serve` on the directory.
    Restore {
        /// The backup file.
        file: std::path::PathBuf,
        /// The data directory to make (it must hold no database).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The key file (secrets.key) of the data directory the backup was
        /// taken from, copied into the new one [default: the one already
        /// in --data-dir].
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        /// The configuration the daemon will run with (its device
        /// profiles, to open every device as a start would).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue a client certificate for one client (a gateway, an operator,
    /// a bridge, a phone app): its name shows in logs and in the
    /// `sls_client_connections_total` metric, and its serial number (printed)
    /// is what `server.revoked-serials` lists to revoke it.
    Issue {
        /// gateway, admin, carrier or phone.
        #[arg(long, value_parser = role)]
        role: slsd::engine::Role,
        /// 1 to 63 of a-z, 0-9 and '-'.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        ca: CaArgs,
        /// Where `<name>.pem` and `<name>.key` are written [default: the
        /// data directory].
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Renew the data directory's server certificate (before its year is
    /// up, or for another name): a running daemon takes it on SIGHUP, and
    /// open connections go on.
    Server {
        /// The name clients check (`server.name`); localhost and the
        /// loopback addresses are always in it.
        #[arg(long, default_value = "localhost")]
        name: String,
        #[command(flatten)]
        ca: CaArgs,
    },
}

/// The CA that signs and how long what it signs is valid, for both `cert`
/// commands.
#[derive(Debug, clap::Args)]
struct CaArgs {
    /// Validity in days.
    #[arg(long, default_value_t = slsd::server::pki::LEAF_DAYS)]
    days: u32,
    /// The data directory whose CA signs (its `ca.key` unless --ca-key).
    #[arg(long, default_value = "slsd-data")]
    data_dir: std::path::PathBuf,
    /// The CA key, when it was moved out of the data directory (the daemon
    /// does not need it).
    #[arg(long)]
    ca_key: Option<std::path::PathBuf>,
}

impl CaArgs {
    /// The data directory's paths and the CA key to sign with, once the
    /// validity is checked.
    fn resolve(&self) -> anyhow::Result<(slsd::server::pki::PkiPaths, std::path::PathBuf)> {
        if !(1..=3650).contains(&self.days) {
            anyhow::bail!("--days: must be 1..=3650");
        }
        let paths = slsd::server::pki::PkiPaths::new(&self.data_dir);
        let ca_key = self.ca_key.clone().unwrap_or_else(|| paths.ca_key());
        Ok((paths, ca_key))
    }
}

fn role(text: &str) -> Result<slsd::engine::Role, String> {
    slsd::engine::Role::ALL
        .into_iter()
        .find(|r| r.as_str() == text)
        .ok_or_else(|| format!("{text:?}: one of gateway, admin, carrier, phone"))
}

fn issue_cert(command: CertCommand) -> anyhow::Result<()> {
    let (issued, what) = match command {
        CertCommand::Issue {
            role,
            name,
            ca,
            out,
        } => {
            let (_, ca_key) = ca.resolve()?;
            let out = out.unwrap_or(ca.data_dir);
            let issued = slsd::server::pki::issue_client(&ca_key, role, &name, ca.days, &out)?;
            (issued, format!("role {}", role.as_str()))
        }
        CertCommand::Server { name, ca } => {
            let (paths, ca_key) = ca.resolve()?;
            let issued = slsd::server::pki::renew_server(&ca_key, &paths, &name, ca.days)?;
            (issued, format!("server {name} (SIGHUP a running daemon)"))
        }
    };
    println!("certificate {}", issued.cert.display());
    println!("key {}", issued.key.display());
    println!("serial {}", issued.serial);
    println!("valid {} days, {what}", issued.days);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration, with every key documented.
    Default,
    /// Check a configuration file and print the first problem, if any.
    Check { file: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            data_dir,
            store,
            log_format,
        } => {
            init_logs(log_format);
            serve(config.as_deref(), &data_dir, store.as_deref())
        }
        Command::Profiles => print_profiles(),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", slsd::config::DEFAULT_TOML);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => check_config(&file),
        Command::Admin(args) => admin::run(args),
        Command::Cert(command) => issue_cert(command),
        Command::Restore {
            file,
            data_dir,
            key,
            config,
        } => restore(&file, &data_dir, key.as_deref(), config.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_profiles() -> anyhow::Result<()> {
    let profiles = DeviceProfiles::defaults()?;
    println!(
        "{:<11} {:<26} {:<10} {:<7} {:<38} {:>21}",
        "kind", "name", "security", "issued", "check", "withdrawals/day/5days"
    );
    for p in profiles.iter() {
        let check = match &p.check {
            Check::Ocra { suite, .. } => format!("ocra {suite}"),
            Check::CodeCard { positions } => format!("code card, {positions} positions"),
            Check::RandomCode(spec) => format!("random code, {} symbols", spec.length()),
            Check::Token { .. } => "each token's own (PSKC import)".into(),
            Check::Totp {
                hash, digits, step, ..
            } => format!(
                "totp {hash}, {digits} digits, {}s",
                step.as_duration().as_secs()
            ),
        };
        println!(
            "{:<11} {:<26} {:<10} {:<7} {:<38} {:>21}",
            p.kind.to_string(),
            p.name,
            p.security.as_str(),
            if p.issued { "yes" } else { "no" },
            check,
            limits(p.withdrawal_limit),
        );
    }
    Ok(())
}

fn load_config(file: Option<&std::path::Path>) -> anyhow::Result<slsd::config::Config> {
    let Some(file) = file else {
        return Ok(slsd::config::Config::default());
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    slsd::config::Config::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// Log lines on stderr, filtered by `RUST_LOG` (default `info`). Colour
/// codes only on a terminal: in a file or the journal they are noise.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

fn serve(
    config: Option<&std::path::Path>,
    data_dir: &std::path::Path,
    store: Option<&str>,
) -> anyhow::Result<()> {
    let file = config.map(std::path::Path::to_path_buf);
    let has_file = file.is_some();
    let store = store.map(str::to_owned);
    // What a start reads, a reload (SIGHUP) reads again: the file, then
    // `--store` over it.
    let read = move || -> anyhow::Result<slsd::config::Config> {
        let mut config = load_config(file.as_deref())?;
        if let Some(urls) = &store {
            config = config
                .with_redis_store(urls.split(',').map(str::trim).map(str::to_owned).collect())
                .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        }
        Ok(config)
    };
    let config = read()?;
    // Without a file the daemon runs on defaults: nothing to read again.
    let reread: Option<slsd::server::Reread> = has_file
        .then(|| Box::new(move || read().map_err(|e| e.to_string())) as slsd::server::Reread);
    let metrics = match slsd::metrics::install() {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shutdown = {
        let _inside = runtime.enter();
        shutdown_signal()
    };
    runtime.block_on(slsd::server::serve(
        config,
        data_dir,
        metrics,
        |started| {
            let pki = &started.pki;
            let alpn = slsd::wire::PROTOCOLS
                .iter()
                .map(|id| String::from_utf8_lossy(id))
                .collect::<Vec<_>>()
                .join(", ");
            println!("slsd: data directory {}", data_dir.display());
            println!("slsd: listening on {} (QUIC, ALPN {alpn})", started.quic);
            println!("slsd: metrics on http://{}/metrics", started.metrics);
            if let Some(tcp) = started.tcp {
                println!("slsd: TCP/TLS fallback on {tcp} (ALPN {alpn})");
            }
            if let Some(radius) = started.radius {
                println!("slsd: RADIUS on {radius} (UDP)");
            }
            println!("slsd: CA certificate {}", pki.ca_cert().display());
            for role in slsd::engine::Role::ALL {
                println!(
                    "slsd: {} client certificate {} (key {})",
                    role.as_str(),
                    pki.client_cert(role).display(),
                    pki.client_key(role).display()
                );
            }
            println!("slsd: ready");
        },
        shutdown,
        reread,
    ))?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called (inside the runtime, before the daemon says it is ready), not
/// when the future is first polled: a signal in between would otherwise
/// end the process without a graceful shutdown.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let listeners = signal(SignalKind::interrupt()).and_then(|interrupt| {
            signal(SignalKind::terminate()).map(|terminate| (interrupt, terminate))
        });
        async move {
            match listeners {
                Ok((mut interrupt, mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn restore(
    file: &std::path::Path,
    data_dir: &std::path::Path,
    key: Option<&std::path::Path>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let key_file = data_dir.join("secrets.key");
    match (key, key_file.exists()) {
        (None, false) => anyhow::bail!(
            "no key file: the backup's secrets are sealed under the secrets.key of the \
             data directory it was taken from; give it with --key"
        ),
        (Some(key), true) => {
            let (given, there) = (std::fs::read(key)?, std::fs::read(&key_file)?);
            if given != there {
                anyhow::bail!(
                    "{} already holds another key file than {}",
                    data_dir.display(),
                    key.display()
                );
            }
        }
        (Some(key), false) => {
            slsd::store::embedded::datadir::secure(data_dir)?;
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?,
            );
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = options.open(&key_file)?;
            std::io::Write::write_all(&mut out, &bytes)?;
            out.sync_all()?;
        }
        (None, true) => {}
    }
    let cipher = || {
        slsd::store::sealed::SecretCipher::load_or_create(
            &key_file,
            &mut rand::rand_core::UnwrapErr(rand::rngs::SysRng),
        )
    };
    let started = std::time::Instant::now();
    let restored = slsd::store::embedded::backup::restore(file, data_dir, |copy| {
        // Opening it as a start does unseals every device: a key file that
        // does not open them all is refused here, not at the first start.
        let registry = slsd::store::embedded::registry::Registry::open(
            copy,
            cipher()?,
            config.devices.clone(),
        )?;
        drop(registry);
        anyhow::Ok(())
    })?
    .map_err(|e| anyhow::anyhow!("{}: the key file does not open it: {e:#}", file.display()))?;
    println!("restored {} into {}", file.display(), data_dir.display());
    println!("devices {}", restored.devices);
    println!("rows {}", restored.rows);
    println!("backup made at {} ms since the epoch", restored.made_at.0);
    println!("checked in {:.1?}", started.elapsed());
    println!(
        "next: the certificates (ca.pem, server.pem, server.key, and the clients') are not \
         in a backup: copy them from where they are kept, or `slsd serve` makes a new CA"
    );
    Ok(())
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    slsd::config::Config::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("{}: ok", file.display());
    Ok(())
}

fn limits(limit: WithdrawalLimit) -> String {
    let amount = |a: Option<u64>| a.map_or_else(|| "unlimited".to_owned(), |a| a.to_string());
    format!(
        "{}/{}",
        amount(limit.per_day),
        amount(limit.per_five_business_days)
    )
}
