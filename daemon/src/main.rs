//! `slsd`: the sls daemon's command line. Thin by design: parse the command
//! line, call into the library, map errors to an exit code.

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
    /// List the device kinds and how each is checked (built-in profiles).
    Profiles,
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
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
        Command::Profiles => print_profiles(),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", slsd::config::DEFAULT_TOML);
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => check_config(&file),
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
