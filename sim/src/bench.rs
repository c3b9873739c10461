//! `sls-sim bench` and `sls-sim load`: what they share — a local daemon
//! configured for measuring, CPU accounting, and turning a run into its
//! report.

use std::path::Path;
use std::time::Duration;

use slsd::profile::DeviceProfiles;

use crate::daemon::LocalDaemon;
use crate::echo::{self, Ceiling, EchoError};
use crate::fleet::Fleet;
use crate::load::{self, LoadError, LoadPlan, Pace, Target};
use crate::report::{Report, RunSetup};

/// The configuration `sls-sim bench` gives the daemon it starts: limits
/// raised so that the run measures the service, not its throttles. The
/// lockout stays as shipped, so the attackers meet the real one.
pub const BENCH_DAEMON_CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nrequests-per-connection-per-second = 10000000\nissuance-per-connection-per-second = 10000000\nmax-streams-per-connection = 1024\n[challenges]\nper-user-per-minute = 1000000\nper-device-per-day = 100000000\n[sms]\nresend-interval = \"0s\"\nsends-per-number-per-hour = 1000000\nsends-per-prefix-per-minute = 100000000\nsends-per-range-per-minute = 100000000\n[push]\npending-per-user = 20\n";

/// Starts `slsd` on a fresh data directory with [`BENCH_DAEMON_CONFIG`].
pub fn start_daemon(slsd: &Path, data_dir: &Path) -> std::io::Result<LocalDaemon> {
    start_daemon_with(slsd, data_dir, "")
}

/// [`start_daemon`] with more tables (`more`) in the configuration.
pub fn start_daemon_with(slsd: &Path, data_dir: &Path, more: &str) -> std::io::Result<LocalDaemon> {
    let config = data_dir.with_extension("toml");
    std::fs::write(&config, format!("{BENCH_DAEMON_CONFIG}{more}"))?;
    LocalDaemon::spawn(slsd, &config, data_dir)
}

/// Runs `plan` and makes its report, with CPU seconds of this process and
/// of the daemon when its pid is known (a local daemon).
pub async fn measure(
    target: &Target,
    fleet: &Fleet,
    profiles: &DeviceProfiles,
    plan: &LoadPlan,
    daemon_pid: Option<u32>,
) -> Result<Report, LoadError> {
    let daemon_before = daemon_pid.map(cpu_seconds);
    let own_before = cpu_seconds(std::process::id());
    let outcome = load::run(target, fleet, profiles, plan).await?;
    let client_cpu_s = Some(cpu_seconds(std::process::id()) - own_before);
    let daemon_cpu_s = daemon_pid
        .zip(daemon_before)
        .map(|(pid, before)| cpu_seconds(pid) - before);
    let pace = match plan.pace {
        Pace::Rate(rate) => format!("open loop at {rate} logins/s"),
        Pace::Concurrency(users) => format!("closed loop, {users} logins in flight"),
    };
    let mode = format!(
        "{pace}, {} streams per connection, {} attackers",
        plan.streams, plan.attackers
    );
    Ok(outcome.report(RunSetup {
        mode,
        mix: plan.flows.to_string(),
        connections: plan.connections,
        client_cpu_s,
        daemon_cpu_s,
        ..RunSetup::default()
    }))
}

/// The quinn echo ceiling for a run shaped like `plan`: as many streams,
/// and as many requests in flight (a closed loop's logins each have one;
/// an open loop is given 256).
pub async fn ceiling(duration: Duration, plan: &LoadPlan) -> Result<Ceiling, EchoError> {
    let in_flight = match plan.pace {
        Pace::Concurrency(users) => users,
        Pace::Rate(_) => 256,
    };
    let streams = plan.connections.max(1) * plan.streams.max(1);
    echo::measure(duration, streams, in_flight).await
}

/// User + system CPU seconds of a process, from /proc (0 elsewhere).
pub fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(Path::new(&format!("/proc/{pid}/stat")))
}

/// User + system CPU seconds from a `/proc/.../stat` file (a process's or
/// a thread's), 0 if it cannot be read.
pub fn cpu_seconds_of(path: &Path) -> f64 {
    // Fields 14 and 15, in clock ticks of 1/100 s (the Linux USER_HZ on
    // every mainstream architecture).
    let Ok(stat) = std::fs::read_to_string(path) else {
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
