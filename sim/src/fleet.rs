//! Fleets: many users, each holding one or more emulated devices, enrolled
//! through the daemon's admin API and saved to a file a load run reads.
//!
//! IB Key devices get a push key (the daemon is told the public half);
//! a share of users get a verified phone number, their SMS device.
//!
//! The file holds device keys, push keys and PINs — it is a fleet of test users, but
//! it is treated like the secrets it holds: written with mode 0600 and its
//! contents never printed.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use slsd::identity::{DeviceId, Username};
use slsd::otp::SecretKey;
use slsd::otp::push::PushSigner;
use slsd::phone::PhoneNumber;
use slsd::profile::{DeviceKind, DeviceProfiles};
use slsd::wire::request::Pin;
use slsd::wire::{EnrollRequest, Operation, Reply};
use zeroize::Zeroizing;

use crate::client::{Client, ClientError};
use crate::device::{DeviceError, EmulatedDevice};

/// The format name written into every fleet file.
const FORMAT: &str = "sls-sim fleet 1";

/// What went wrong building, saving or reading a fleet.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--mix: {0}")]
    Mix(String),
    #[error("--users: a fleet needs at least one user")]
    NoUsers,
    #[error("--{flag}: a share is a percentage, 0..=100 (got {value})")]
    Share { flag: &'static str, value: u32 },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("enrolling {user}: {reply}")]
    Enroll { user: String, reply: String },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a fleet file: {reason}")]
    Format { path: String, reason: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The device kinds of a fleet and their shares, as `--mix` gives them:
/// `dscplus=40,ibkey=40,scc=20`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMix(Vec<(DeviceKind, u32)>);

impl DeviceMix {
    pub fn shares(&self) -> &[(DeviceKind, u32)] {
        &self.0
    }

    /// How many of `users` get each kind: shares rounded by largest
    /// remainder, so the counts add up to `users` exactly.
    pub fn counts(&self, users: usize) -> Vec<(DeviceKind, usize)> {
        let total: u64 = self.0.iter().map(|(_, s)| u64::from(*s)).sum();
        let exact: Vec<(DeviceKind, usize, u64)> = self
            .0
            .iter()
            .map(|(kind, share)| {
                let scaled = users as u64 * u64::from(*share);
                (*kind, (scaled / total) as usize, scaled % total)
            })
            .collect();
        let mut counts: Vec<(DeviceKind, usize)> = exact.iter().map(|(k, n, _)| (*k, *n)).collect();
        let short = users - counts.iter().map(|(_, n)| n).sum::<usize>();
        let mut by_remainder: Vec<usize> = (0..exact.len()).collect();
        by_remainder.sort_by_key(|&i| std::cmp::Reverse(exact.get(i).map_or(0, |e| e.2)));
        for &i in by_remainder.iter().take(short) {
            if let Some(entry) = counts.get_mut(i) {
                entry.1 += 1;
            }
        }
        counts
    }
}

impl Default for DeviceMix {
    fn default() -> Self {
        Self(vec![
            (DeviceKind::DscPlus, 45),
            (DeviceKind::IbKey, 40),
            (DeviceKind::Scc, 15),
        ])
    }
}

/// The names `--mix` takes: the daemon's kind names, and the short forms
/// of the documentation (`dscplus`, `ibkey`).
fn mix_kind(name: &str) -> Result<DeviceKind, String> {
    let kind = match name {
        "dscplus" => DeviceKind::DscPlus,
        "ibkey" => DeviceKind::IbKey,
        other => other
            .parse()
            .map_err(|e: slsd::profile::UnknownKind| e.to_string())?,
    };
    match kind {
        DeviceKind::Sms | DeviceKind::Temporary => Err(format!(
            "{kind}: codes of this kind are sent by the daemon, which has no SMS or \
             temporary-code operations yet; leave {name} out of the mix"
        )),
        kind => Ok(kind),
    }
}

impl FromStr for DeviceMix {
    type Err = FleetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut shares: Vec<(DeviceKind, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| FleetError::Mix(format!("{part:?}: expected KIND=SHARE")))?;
            let kind = mix_kind(name.trim()).map_err(FleetError::Mix)?;
            let share: u32 = share.trim().parse().map_err(|_| {
                FleetError::Mix(format!("{name}: share {share:?} is not a whole number"))
            })?;
            if shares.iter().any(|(k, _)| *k == kind) {
                return Err(FleetError::Mix(format!("{name} is given twice")));
            }
            if share > 0 {
                shares.push((kind, share));
            }
        }
        if shares.is_empty() {
            return Err(FleetError::Mix(
                "give at least one kind with a share above 0".into(),
            ));
        }
        Ok(Self(shares))
    }
}

/// How a fleet is made.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub users: usize,
    pub mix: DeviceMix,
    /// Percent of users who hold a second device of another kind (M2FS).
    pub second_device: u32,
    /// Percent of IB Key users whose app also serves the previous IB Key
    /// user ("add user": one phone, several users).
    pub shared_phones: u32,
    /// Percent of users with a verified phone number (SMS as a second
    /// factor beside their device).
    pub phone_numbers: u32,
    /// Usernames are `<prefix>-<n>`.
    pub prefix: String,
    /// Enrolments in flight at once.
    pub parallel: usize,
}

impl FleetPlan {
    pub fn check(&self) -> Result<(), FleetError> {
        if self.users == 0 {
            return Err(FleetError::NoUsers);
        }
        for (flag, value) in [
            ("second-device", self.second_device),
            ("shared-phones", self.shared_phones),
            ("phone-numbers", self.phone_numbers),
        ] {
            if value > 100 {
                return Err(FleetError::Share { flag, value });
            }
        }
        Ok(())
    }
}

/// One device of a fleet member, with what the holder knows.
#[derive(Clone)]
pub struct FleetDevice {
    pub id: DeviceId,
    pub kind: DeviceKind,
    secret: SecretKey,
    pin: Option<Zeroizing<String>>,
    /// The phone an IB Key app runs on (several users may share one).
    pub phone: Option<u32>,
    /// The seed of an IB Key's push key (the daemon holds the public key).
    push_seed: Option<Zeroizing<[u8; 32]>>,
}

impl fmt::Debug for FleetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetDevice")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("phone", &self.phone)
            .finish_non_exhaustive()
    }
}

impl FleetDevice {
    /// The device as its holder uses it.
    pub fn emulate(&self, profiles: &DeviceProfiles) -> Result<EmulatedDevice, DeviceError> {
        EmulatedDevice::new(
            self.kind,
            &self.secret,
            self.pin.as_deref().map(String::as_str),
            profiles,
        )
    }

    /// The holder's PIN, when the device takes one.
    pub fn pin(&self) -> Option<&str> {
        self.pin.as_deref().map(String::as_str)
    }

    /// The key an IB Key app signs push approvals with.
    pub fn push_signer(&self) -> Option<PushSigner> {
        self.push_seed
            .as_deref()
            .map(|seed| PushSigner::from_seed(*seed))
    }
}

/// A verified phone number, registered as the user's SMS device.
#[derive(Debug, Clone)]
pub struct SmsNumber {
    pub device: DeviceId,
    pub number: PhoneNumber,
}

/// A user of the fleet and the devices they hold.
#[derive(Debug, Clone)]
pub struct Member {
    pub user: Username,
    pub devices: Vec<FleetDevice>,
    pub sms: Option<SmsNumber>,
}

/// A fleet: its members and the phones their apps run on.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub members: Vec<Member>,
    pub phones: u32,
}

/// What `fleet create` printed at the end.
impl fmt::Display for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: BTreeMap<DeviceKind, usize> = BTreeMap::new();
        for device in self.members.iter().flat_map(|m| &m.devices) {
            *kinds.entry(device.kind).or_default() += 1;
        }
        let several = self.members.iter().filter(|m| m.devices.len() > 1).count();
        let numbers = self.members.iter().filter(|m| m.sms.is_some()).count();
        write!(
            f,
            "{} users, {} devices (",
            self.members.len(),
            kinds.values().sum::<usize>()
        )?;
        for (i, (kind, n)) in kinds.iter().enumerate() {
            write!(f, "{}{kind} {n}", if i > 0 { ", " } else { "" })?;
        }
        write!(
            f,
            "), {several} users with several devices, {} phones, {numbers} verified numbers",
            self.phones
        )
    }
}

/// A user's devices before enrolment: kinds and phone.
struct Planned {
    user: Username,
    devices: Vec<(DeviceKind, Option<u32>)>,
    number: Option<PhoneNumber>,
}

/// What the holder of a planned device knows: its PIN and push key seed.
type DeviceSecrets = (Option<String>, Option<[u8; 32]>);

/// The `n`th member's phone number: Swiss mobile numbers, one each,
/// spread over the number ranges as a real user base is (the daemon limits
/// sends per range: `sms.sends-per-range-per-minute`). Multiplying by a
/// number coprime to 10^7 permutes 0..10^7, so numbers stay distinct.
fn phone_number(n: usize) -> Result<PhoneNumber, FleetError> {
    let spread = (n as u64 % 10_000_000) * 7_919_993 % 10_000_000;
    PhoneNumber::new(41, &format!("79{spread:07}"))
        .map_err(|e| FleetError::Mix(format!("phone number: {e}")))
}

/// Decides who gets what: kinds by the mix (shuffled), second devices and
/// shared phones by their shares.
fn plan_members<R: Rng + ?Sized>(
    plan: &FleetPlan,
    rng: &mut R,
) -> Result<Vec<Planned>, FleetError> {
    let mut kinds: Vec<DeviceKind> = plan
        .mix
        .counts(plan.users)
        .into_iter()
        .flat_map(|(kind, n)| std::iter::repeat_n(kind, n))
        .collect();
    // Fisher-Yates, so kinds are spread over the user numbers.
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.random_range(0..=i));
    }
    let mut phones = 0u32;
    let mut users_on_last_phone = 0u32;
    let mut new_phone = |rng: &mut R, phones: &mut u32| {
        // Up to four users on one app, as the share says.
        if *phones > 0 && users_on_last_phone < 4 && rng.random_range(0..100) < plan.shared_phones {
            users_on_last_phone += 1;
        } else {
            *phones += 1;
            users_on_last_phone = 1;
        }
        *phones - 1
    };
    let mut members = Vec::with_capacity(plan.users);
    for (n, primary) in kinds.into_iter().enumerate() {
        let user = Username::new(&format!("{}-{n}", plan.prefix))
            .map_err(|e| FleetError::Mix(format!("--prefix: {e}")))?;
        let mut devices = vec![primary];
        if rng.random_range(0..100) < plan.second_device {
            let other = plan
                .mix
                .shares()
                .iter()
                .map(|(k, _)| *k)
                .chain([DeviceKind::Scc, DeviceKind::IbKey])
                .find(|k| *k != primary);
            devices.extend(other);
        }
        let devices = devices
            .into_iter()
            .map(|kind| {
                let phone = (kind == DeviceKind::IbKey).then(|| new_phone(rng, &mut phones));
                (kind, phone)
            })
            .collect();
        let number = if rng.random_range(0..100) < plan.phone_numbers {
            Some(phone_number(n)?)
        } else {
            None
        };
        members.push(Planned {
            user,
            devices,
            number,
        });
    }
    Ok(members)
}

/// Enrols a fleet through the admin role of the daemon `admin` is
/// connected to, `plan.parallel` enrolments at a time, calling `progress`
/// after each user.
pub async fn create<R: Rng + ?Sized>(
    admin: &Client,
    plan: &FleetPlan,
    profiles: &DeviceProfiles,
    rng: &mut R,
    progress: impl Fn(usize) + Send + Sync + 'static,
) -> Result<Fleet, FleetError> {
    plan.check()?;
    let planned = plan_members(plan, rng)?;
    let phones = planned
        .iter()
        .flat_map(|p| &p.devices)
        .filter_map(|(_, phone)| *phone)
        .max()
        .map_or(0, |last| last + 1);
    // PINs for the kinds that take one and push keys for IB Key apps,
    // drawn here so the run is seeded.
    let pins: Vec<Vec<DeviceSecrets>> = planned
        .iter()
        .map(|p| {
            p.devices
                .iter()
                .map(|(kind, _)| {
                    let pin = pin_digits(*kind, profiles).map(|n| random_pin(rng, n));
                    let seed = (*kind == DeviceKind::IbKey).then(|| {
                        let mut seed = [0u8; 32];
                        rng.fill_bytes(&mut seed);
                        seed
                    });
                    (pin, seed)
                })
                .collect()
        })
        .collect();
    let planned = Arc::new(planned);
    let pins = Arc::new(pins);
    let pipeline = admin.pipeline(4096).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.parallel.max(1) {
        let (planned, pins, pipeline, next, progress) = (
            Arc::clone(&planned),
            Arc::clone(&pins),
            pipeline.clone(),
            Arc::clone(&next),
            Arc::clone(&progress),
        );
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let (Some(member), Some(pins)) = (planned.get(index), pins.get(index)) else {
                    return Ok::<_, FleetError>(done);
                };
                let mut devices = Vec::with_capacity(member.devices.len());
                for (&(kind, phone), (pin, seed)) in member.devices.iter().zip(pins) {
                    let reply = pipeline
                        .call(Operation::Enroll(EnrollRequest {
                            user: member.user.clone(),
                            kind,
                            secret: None,
                            pin: pin.as_deref().map(Pin::new),
                            label: format!("sim {kind}"),
                        }))
                        .await?;
                    let Reply::Enrolled {
                        device,
                        secret: Some(secret),
                    } = reply
                    else {
                        return Err(FleetError::Enroll {
                            user: member.user.to_string(),
                            reply: format!("{reply:?}"),
                        });
                    };
                    if let Some(seed) = seed {
                        let key = PushSigner::from_seed(*seed).public();
                        let reply = pipeline
                            .call(Operation::BindPushKey { device, key })
                            .await?;
                        if reply != Reply::Done {
                            return Err(FleetError::Enroll {
                                user: member.user.to_string(),
                                reply: format!("{reply:?}"),
                            });
                        }
                    }
                    devices.push(FleetDevice {
                        id: device,
                        kind,
                        secret,
                        pin: pin.clone().map(Zeroizing::new),
                        phone,
                        push_seed: seed.map(Zeroizing::new),
                    });
                }
                let sms = match &member.number {
                    Some(number) => {
                        let reply = pipeline
                            .call(Operation::EnrollPhone {
                                user: member.user.clone(),
                                number: number.clone(),
                                label: "sim mobile".into(),
                            })
                            .await?;
                        let Reply::Enrolled { device, .. } = reply else {
                            return Err(FleetError::Enroll {
                                user: member.user.to_string(),
                                reply: format!("{reply:?}"),
                            });
                        };
                        Some(SmsNumber {
                            device,
                            number: number.clone(),
                        })
                    }
                    None => None,
                };
                done.push((
                    index,
                    Member {
                        user: member.user.clone(),
                        devices,
                        sms,
                    },
                ));
                progress(1);
            }
        });
    }
    let mut members: Vec<(usize, Member)> = Vec::with_capacity(plan.users);
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(part) => members.extend(part?),
            Err(error) => {
                return Err(FleetError::Enroll {
                    user: "?".into(),
                    reply: format!("enrolment task failed: {error}"),
                });
            }
        }
    }
    members.sort_by_key(|(i, _)| *i);
    let fleet = Fleet {
        members: members.into_iter().map(|(_, m)| m).collect(),
        phones,
    };
    // Every device must be one the load run can hold.
    for device in fleet.members.iter().flat_map(|m| &m.devices) {
        device.emulate(profiles)?;
    }
    Ok(fleet)
}

fn pin_digits(kind: DeviceKind, profiles: &DeviceProfiles) -> Option<u8> {
    match &profiles.get(kind).check {
        slsd::profile::Check::Ocra {
            pin_digits: Some(n),
            suite,
        } if suite.pin().is_some() => Some(*n),
        _ => None,
    }
}

fn random_pin<R: Rng + ?Sized>(rng: &mut R, digits: u8) -> String {
    (0..digits)
        .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
        .collect()
}

/// A fleet file, as JSON.
#[derive(Serialize, Deserialize)]
struct FleetFile {
    format: String,
    phones: u32,
    members: Vec<MemberFile>,
}

#[derive(Serialize, Deserialize)]
struct MemberFile {
    user: String,
    devices: Vec<DeviceFile>,
    /// The SMS device and its verified number (`+41 791234567`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sms: Option<(u64, String)>,
}

#[derive(Serialize, Deserialize)]
struct DeviceFile {
    id: u64,
    kind: String,
    /// The device key, hex.
    secret: Zeroizing<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<Zeroizing<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<u32>,
    /// The push key's seed, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    push_seed: Option<Zeroizing<String>>,
}

impl Fleet {
    /// Writes the fleet to `path`, readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), FleetError> {
        let io = |error| FleetError::Io {
            path: path.display().to_string(),
            error,
        };
        let file = FleetFile {
            format: FORMAT.into(),
            phones: self.phones,
            members: self
                .members
                .iter()
                .map(|m| MemberFile {
                    user: m.user.to_string(),
                    devices: m
                        .devices
                        .iter()
                        .map(|d| DeviceFile {
                            id: d.id.0,
                            kind: d.kind.as_str().into(),
                            secret: Zeroizing::new(hex::encode(d.secret.expose_secret())),
                            pin: d.pin.clone(),
                            phone: d.phone,
                            push_seed: d
                                .push_seed
                                .as_deref()
                                .map(|seed| Zeroizing::new(hex::encode(seed))),
                        })
                        .collect(),
                    sms: m.sms.as_ref().map(|s| (s.device.0, s.number.to_string())),
                })
                .collect(),
        };
        let json =
            Zeroizing::new(serde_json::to_vec(&file).map_err(|e| io(std::io::Error::other(e)))?);
        let mut out = private_file(path).map_err(io)?;
        out.write_all(&json).map_err(io)?;
        out.sync_all().map_err(io)
    }

    /// Reads a fleet written by [`Fleet::save`].
    pub fn load(path: &Path) -> Result<Self, FleetError> {
        let shown = path.display().to_string();
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|error| FleetError::Io {
            path: shown.clone(),
            error,
        })?);
        let bad = |reason: String| FleetError::Format {
            path: shown.clone(),
            reason,
        };
        let file: FleetFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if file.format != FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT:?}",
                file.format
            )));
        }
        let mut members = Vec::with_capacity(file.members.len());
        for m in file.members {
            let user = Username::new(&m.user).map_err(|e| bad(format!("{}: {e}", m.user)))?;
            let mut devices = Vec::with_capacity(m.devices.len());
            for d in m.devices {
                let kind: DeviceKind = d.kind.parse().map_err(|e| bad(format!("{e}")))?;
                let secret = SecretKey::from_hex(&d.secret)
                    .map_err(|e| bad(format!("device {}: {e}", d.id)))?;
                let push_seed = match d.push_seed {
                    Some(text) => {
                        let bytes = Zeroizing::new(
                            hex::decode(text.as_bytes())
                                .map_err(|e| bad(format!("device {}: push seed: {e}", d.id)))?,
                        );
                        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                            bad(format!("device {}: a push seed is 32 bytes", d.id))
                        })?;
                        Some(Zeroizing::new(seed))
                    }
                    None => None,
                };
                devices.push(FleetDevice {
                    id: DeviceId(d.id),
                    kind,
                    secret,
                    pin: d.pin,
                    phone: d.phone,
                    push_seed,
                });
            }
            let sms = match m.sms {
                Some((device, number)) => Some(SmsNumber {
                    device: DeviceId(device),
                    number: PhoneNumber::parse(&number)
                        .map_err(|e| bad(format!("{}: {number}: {e}", m.user)))?,
                }),
                None => None,
            };
            members.push(Member { user, devices, sms });
        }
        if members.is_empty() {
            return Err(bad("it has no members".into()));
        }
        Ok(Self {
            members,
            phones: file.phones,
        })
    }
}

/// Opens `path` for writing with mode 0600, whether or not it existed.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path)?;
        // An existing file keeps its mode on open; narrow it.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn a_mix_names_kinds_and_shares() {
        let mix: DeviceMix = "dscplus=40, ibkey=40,scc=10,legacy-dsc=10".parse().unwrap();
        assert_eq!(
            mix.shares(),
            &[
                (DeviceKind::DscPlus, 40),
                (DeviceKind::IbKey, 40),
                (DeviceKind::Scc, 10),
                (DeviceKind::LegacyDsc, 10)
            ]
        );
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        for (text, needle) in [
            ("dscplus", "expected KIND=SHARE"),
            ("card=3", "unknown device kind"),
            ("scc=x", "not a whole number"),
            ("scc=1,scc=2", "given twice"),
            ("scc=0", "at least one kind"),
            ("sms=10", "no SMS"),
        ] {
            let error = text.parse::<DeviceMix>().unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
            assert!(error.starts_with("--mix"), "{error}");
        }
    }

    #[test]
    fn counts_add_up_to_the_users() {
        let mix: DeviceMix = "dscplus=40,ibkey=40,scc=20".parse().unwrap();
        for users in [1, 2, 3, 7, 10, 99, 1000] {
            let counts = mix.counts(users);
            assert_eq!(counts.iter().map(|(_, n)| n).sum::<usize>(), users);
        }
        assert_eq!(
            mix.counts(10),
            vec![
                (DeviceKind::DscPlus, 4),
                (DeviceKind::IbKey, 4),
                (DeviceKind::Scc, 2)
            ]
        );
    }

    #[test]
    fn planning_follows_the_shares() {
        let plan = FleetPlan {
            users: 1000,
            mix: "dscplus=50,ibkey=50".parse().unwrap(),
            second_device: 20,
            shared_phones: 30,
            phone_numbers: 40,
            prefix: "t".into(),
            parallel: 1,
        };
        let members = plan_members(&plan, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let several = members.iter().filter(|m| m.devices.len() == 2).count();
        assert!((150..250).contains(&several), "{several}");
        let ib_keys = members
            .iter()
            .flat_map(|m| &m.devices)
            .filter(|(k, _)| *k == DeviceKind::IbKey)
            .count() as u32;
        let phones = members
            .iter()
            .flat_map(|m| &m.devices)
            .filter_map(|(_, p)| *p)
            .max()
            .unwrap()
            + 1;
        // 30% of apps serve the previous user as well.
        assert!(phones < ib_keys * 80 / 100 && phones > ib_keys * 60 / 100);
        let numbers: Vec<_> = members.iter().filter_map(|m| m.number.as_ref()).collect();
        assert!((320..480).contains(&numbers.len()), "{}", numbers.len());
        let distinct: std::collections::HashSet<_> = numbers.iter().collect();
        assert_eq!(distinct.len(), numbers.len(), "one number per user");
        assert!(
            members
                .iter()
                .all(|m| m.devices[0].0 != m.devices.get(1).map_or(DeviceKind::Sms, |d| d.0))
        );
    }

    #[test]
    fn shares_over_100_are_refused() {
        let plan = FleetPlan {
            users: 1,
            mix: DeviceMix::default(),
            second_device: 101,
            shared_phones: 0,
            phone_numbers: 0,
            prefix: "t".into(),
            parallel: 1,
        };
        assert!(
            plan.check()
                .unwrap_err()
                .to_string()
                .contains("--second-device")
        );
    }

    #[test]
    fn a_saved_fleet_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.json");
        let fleet = Fleet {
            members: vec![Member {
                user: Username::new("u-1").unwrap(),
                devices: vec![
                    FleetDevice {
                        id: DeviceId(9),
                        kind: DeviceKind::DscPlus,
                        secret: SecretKey::from_bytes(vec![3; 32]).unwrap(),
                        pin: Some(Zeroizing::new("1234".into())),
                        phone: None,
                        push_seed: None,
                    },
                    FleetDevice {
                        id: DeviceId(10),
                        kind: DeviceKind::IbKey,
                        secret: SecretKey::from_bytes(vec![4; 32]).unwrap(),
                        pin: None,
                        phone: Some(0),
                        push_seed: Some(Zeroizing::new([5; 32])),
                    },
                ],
                sms: Some(SmsNumber {
                    device: DeviceId(11),
                    number: PhoneNumber::parse("+41 791234567").unwrap(),
                }),
            }],
            phones: 0,
        };
        std::fs::write(&path, "old").unwrap();
        fleet.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = Fleet::load(&path).unwrap();
        assert_eq!(back.members[0].user.as_str(), "u-1");
        assert_eq!(back.members[0].devices[0].pin(), Some("1234"));
        assert_eq!(back.members[0].devices[0].secret.expose_secret(), &[3; 32]);
        assert_eq!(
            back.members[0].devices[1].push_signer().unwrap().public(),
            PushSigner::from_seed([5; 32]).public()
        );
        let sms = back.members[0].sms.as_ref().unwrap();
        assert_eq!(
            (sms.device, sms.number.to_string()),
            (DeviceId(11), "+41 791234567".into())
        );
        assert!(!format!("{back:?}").contains("1234"));

        std::fs::write(&path, "{\"format\":\"other\",\"phones\":0,\"members\":[]}").unwrap();
        let error = Fleet::load(&path).unwrap_err().to_string();
        assert!(error.contains("not a fleet file"), "{error}");
    }
}
