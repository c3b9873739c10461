//! `sls-sim registry`: a registry of millions of devices, built and
//! measured.
//!
//! Enrolling ten million devices one request at a time would take most of
//! an hour; this writes them into a data directory through the daemon's
//! own library — `Registry::change`, the path every enrolment takes (its
//! sealing, precomputed key state and audit entry), many enrolments per
//! change — then starts `slsd serve` on it, as an operator would, and
//! measures what the size costs: how long the daemon takes to be ready and
//! how much memory it holds, beside a daemon started on an empty registry.
//! A bench against that daemon (`sls-sim bench --addr`) then shows what the
//! size does to logins.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use slsd::identity::Username;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::store::embedded::registry::Registry;
use slsd::store::sealed::SecretCipher;
use slsd::store::{Actor, EnrollError, NewDevice};

/// The PIN of every DSC+ of a built registry.
const PIN: &str = "4821";

/// What to build.
#[derive(Debug, Clone)]
pub struct ScalePlan {
    pub devices: u64,
    /// Enrolments per change (one write transaction, one fsync).
    pub batch: u64,
}

/// What building and starting cost.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// Devices in the registry, and of them added by this run.
    pub devices: u64,
    pub added: u64,
    pub users: u64,
    pub build_seconds: f64,
    pub enrolments_per_second: f64,
    pub database_bytes: u64,
    /// From `slsd serve` started on the registry to its "ready".
    pub startup_seconds: f64,
    pub resident_bytes: u64,
    /// The same daemon on an empty registry, for the difference.
    pub empty_startup_seconds: f64,
    pub empty_resident_bytes: u64,
}

impl ScaleReport {
    /// Resident memory the devices cost, per device.
    pub fn bytes_per_device(&self) -> f64 {
        let extra = self
            .resident_bytes
            .saturating_sub(self.empty_resident_bytes);
        extra as f64 / self.devices.max(1) as f64
    }
}

impl ScaleReport {
    /// The build's line of the report.
    pub fn build_line(&self) -> String {
        if self.added == 0 {
            return format!(
                "registry: {} devices of {} users, database {:.0} MB",
                self.devices,
                self.users,
                self.database_bytes as f64 / 1e6
            );
        }
        format!(
            "registry: {} devices of {} users, {} added in {:.1} s ({:.0} enrolments/s), database {:.0} MB",
            self.devices,
            self.users,
            self.added,
            self.build_seconds,
            self.enrolments_per_second,
            self.database_bytes as f64 / 1e6
        )
    }
}

impl std::fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mb = |bytes: u64| bytes as f64 / 1e6;
        writeln!(f, "{}", self.build_line())?;
        writeln!(
            f,
            "slsd serve: ready in {:.2} s, resident {:.0} MB (empty registry: {:.2} s, {:.0} MB)",
            self.startup_seconds,
            mb(self.resident_bytes),
            self.empty_startup_seconds,
            mb(self.empty_resident_bytes)
        )?;
        write!(
            f,
            "memory per enrolled device: {:.0} bytes",
            self.bytes_per_device()
        )
    }
}

/// The kind of a user's first device: the bench fleet's mix (DSC+ 45 %,
/// IB Key 40 %, code cards 15 %).
fn first_kind(user: u64) -> DeviceKind {
    match user % 20 {
        0..9 => DeviceKind::DscPlus,
        9..17 => DeviceKind::IbKey,
        _ => DeviceKind::Scc,
    }
}

/// The user and kind of the `index`th device: of every eleven devices,
/// ten are ten users' first and the last is the tenth user's second (a
/// code card, or a DSC+ beside a card).
fn placement(index: u64) -> (u64, DeviceKind) {
    let (group, slot) = (index / 11, index % 11);
    let user = group * 10 + slot.min(9);
    let kind = match (slot, first_kind(user)) {
        (0..10, kind) => kind,
        (_, DeviceKind::Scc) => DeviceKind::DscPlus,
        _ => DeviceKind::Scc,
    };
    (user, kind)
}

/// Writes `plan.devices` devices into `data_dir` (made if missing: its
/// key file and database, as `slsd serve` opens them), `plan.batch` per
/// change, after those already there; returns the devices and users the
/// registry then holds. `progress` is told the devices written so far
/// after each change.
pub fn build(
    data_dir: &Path,
    plan: &ScalePlan,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<(u64, u64)> {
    // The daemon's data directory is its alone (it would tighten it).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)?;
    let database = data_dir.join("registry.redb");
    if plan.devices == 0 && database.exists() {
        // Measuring only: counted on disk, not loaded (held here, the
        // registry would be held twice once the daemon loads it).
        return Ok(users_and_devices(Registry::stored_devices(&database)?));
    }
    // The deployment key and the devices' keys are real secrets, drawn
    // from the system: a registry built here may be served.
    let mut rng = ChaCha20Rng::from_rng(&mut UnwrapErr(SysRng));
    let cipher = SecretCipher::load_or_create(&data_dir.join("secrets.key"), &mut rng)?;
    let registry = Registry::open(&database, cipher, DeviceProfiles::defaults()?)?;
    let first = registry.len() as u64;
    let now = slsd::clock::now();
    let mut written = 0;
    while written < plan.devices {
        let end = (written + plan.batch.max(1)).min(plan.devices);
        registry.change(&mut rng, now, Actor::SYSTEM, |c| {
            for index in first + written..first + end {
                let (user, kind) = placement(index);
                let user = Username::new(&format!("scale{user:09}"))
                    .map_err(|e| EnrollError::Invalid(e.to_string()))?;
                c.enroll(NewDevice {
                    user: &user,
                    kind,
                    secret: None,
                    pin: (kind == DeviceKind::DscPlus).then_some(PIN),
                    label: "",
                    token: None,
                })?;
            }
            Ok::<_, EnrollError>(())
        })?;
        written = end;
        progress(written);
    }
    drop(registry);
    // redb makes its file with the umask's mode; the daemon wants it private.
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o600))?;
    Ok(users_and_devices(first + plan.devices))
}

/// `devices` (as [`placement`] places them) and the users holding them.
fn users_and_devices(devices: u64) -> (u64, u64) {
    let users = match devices.checked_sub(1) {
        Some(last) => placement(last).0 + 1,
        None => 0,
    };
    (devices, users)
}

/// Starts `slsd serve` on `data_dir` and returns how long it took to be
/// ready and its resident memory then.
pub fn start_and_measure(slsd: &Path, data_dir: &Path) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut daemon = crate::bench::start_daemon(slsd, data_dir)?;
    let ready = started.elapsed();
    let pid = daemon
        .pid()
        .ok_or_else(|| anyhow::anyhow!("slsd exited at once"))?;
    let resident = resident_bytes(pid)?;
    daemon.stop();
    Ok((ready, resident))
}

/// A process's resident memory (`VmRSS`), in bytes.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

/// Builds the registry in `data_dir`, then measures `slsd` on it and on
/// an empty one (`slsd`: `None` leaves the daemon out, for a registry
/// too large to be held twice, once here and once by the daemon: build
/// it first, then measure it with `devices` 0).
pub fn run(
    slsd: Option<&Path>,
    data_dir: &Path,
    plan: &ScalePlan,
    progress: impl FnMut(u64),
) -> anyhow::Result<ScaleReport> {
    let started = Instant::now();
    let (devices, users) = build(data_dir, plan, progress)?;
    let build_seconds = started.elapsed().as_secs_f64();
    let database_bytes = std::fs::metadata(data_dir.join("registry.redb"))?.len();
    let ((startup, resident), (empty_startup, empty_resident)) = match slsd {
        Some(slsd) => {
            let empty = tempfile::tempdir()?;
            let empty_data = empty.path().join("data");
            std::fs::DirBuilder::new().mode(0o700).create(&empty_data)?;
            (
                start_and_measure(slsd, data_dir)?,
                start_and_measure(slsd, &empty_data)?,
            )
        }
        None => Default::default(),
    };
    Ok(ScaleReport {
        devices,
        added: plan.devices,
        users,
        build_seconds,
        enrolments_per_second: plan.devices as f64 / build_seconds.max(1e-9),
        database_bytes,
        startup_seconds: startup.as_secs_f64(),
        resident_bytes: resident,
        empty_startup_seconds: empty_startup.as_secs_f64(),
        empty_resident_bytes: empty_resident,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_the_bench_fleet_s_and_every_tenth_user_holds_two() {
        let placed: Vec<_> = (0..220).map(placement).collect();
        let count = |k| placed.iter().filter(|(_, x)| *x == k).count();
        // 200 first devices in the fleet's mix, 20 second ones.
        assert_eq!(count(DeviceKind::IbKey), 80);
        assert_eq!(count(DeviceKind::DscPlus) + count(DeviceKind::Scc), 140);
        let users: Vec<_> = placed.iter().map(|(u, _)| *u).collect();
        assert_eq!(users[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10]);
        assert_eq!(users.last(), Some(&199));
        // A second device is never of its user's first kind.
        assert_eq!(placed[9], (9, DeviceKind::IbKey));
        assert_eq!(placed[10], (9, DeviceKind::Scc));
    }
}
