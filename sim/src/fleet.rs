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
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use slsd::identity::{DeviceId, Serial, Username};
use slsd::otp::SecretKey;
use slsd::otp::push::PushSigner;
use slsd::otp::token::TokenAlgorithm;
use slsd::phone::PhoneNumber;
use slsd::profile::{Check, DeviceKind, DeviceProfiles};
use slsd::wire::request::{Answer, Pin};
use slsd::wire::{EnrollRequest, Operation, Reply, Verdict};
use zeroize::Zeroizing;

use crate::client::{Client, ClientError, Pipeline};
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
    #[error("the fleet's PSKC file {path}: {reason}")]
    Pskc { path: String, reason: String },
    #[error("importing the fleet's tokens: {0}")]
    Import(#[from] slsd::client::tokens::ImportError),
    #[error("--mix token: tokens come from a vendor's file; add --via-pskc")]
    TokensNeedPskc,
    #[error("--mix totp-app: activating an app takes a gateway connection")]
    AppsNeedGateway,
    #[error("activating {user}'s app: {reply}")]
    Activate { user: String, reply: String },
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
    /// Where to write the fleet's cards as a vendor's encrypted PSKC file
    /// (the pre-shared key beside it, `.psk`): DSC+ cards and tokens are
    /// then imported from it and assigned by serial.
    pub via_pskc: Option<PathBuf>,
}

/// What the `token` kind of a mix holds, in turn: an event card, a
/// counter OCRA card with a PIN (the suite of a NagraID display card), a
/// time token.
const TOKEN_MODELS: [&str; 3] = [
    "HOTP-SHA1-6",
    "OCRA-1:HOTP-SHA1-6:C-QN08-PSHA1",
    "TOTP-SHA1-6-30s",
];

impl FleetPlan {
    pub fn check(&self) -> Result<(), FleetError> {
        if self.users == 0 {
            return Err(FleetError::NoUsers);
        }
        if self.via_pskc.is_none()
            && self
                .mix
                .shares()
                .iter()
                .any(|(k, _)| *k == DeviceKind::Token)
        {
            return Err(FleetError::TokensNeedPskc);
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
    /// An imported token's algorithm (kind `token`).
    pub algorithm: Option<TokenAlgorithm>,
    /// Where the code of a token or app has moved to: the counter of its
    /// next press, or the first time step it has not shown. Load runs
    /// move it, and the fleet file keeps it, as a real token keeps its
    /// counter between logins.
    moving: Arc<AtomicU64>,
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
        let pin = self.pin.as_deref().map(String::as_str);
        let device = match &self.algorithm {
            Some(algorithm) => EmulatedDevice::token(algorithm, &self.secret, pin)?,
            None => EmulatedDevice::new(self.kind, &self.secret, pin, profiles)?,
        };
        Ok(device.sharing(&self.moving))
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

/// What the holder of a planned device knows: its PIN, its push key's
/// seed, and for a card delivered in the vendor's file, the card.
struct DeviceSecrets {
    pin: Option<String>,
    seed: Option<[u8; 32]>,
    card: Option<Card>,
}

/// A card as the vendor's file lists it.
struct Card {
    serial: Serial,
    algorithm: TokenAlgorithm,
    key: SecretKey,
}

/// What a planned device of `kind` is, delivered via PSKC or not: the
/// algorithm its card runs (`None`: enrolled, not imported) and the
/// digits of its PIN.
fn card_of(
    kind: DeviceKind,
    n: usize,
    via_pskc: bool,
    profiles: &DeviceProfiles,
) -> (Option<TokenAlgorithm>, Option<u8>) {
    let algorithm = match (kind, &profiles.get(kind).check) {
        (DeviceKind::Token, _) => TOKEN_MODELS
            .get(n % TOKEN_MODELS.len())
            .and_then(|model| model.parse().ok()),
        (DeviceKind::DscPlus, Check::Ocra { suite, .. }) if via_pskc => {
            Some(TokenAlgorithm::Ocra {
                suite: Arc::clone(suite),
            })
        }
        _ => None,
    };
    let pin = match (&algorithm, &profiles.get(DeviceKind::Token).check) {
        (Some(TokenAlgorithm::Ocra { suite }), Check::Token { pin_digits }) => {
            suite.pin().map(|_| *pin_digits)
        }
        (Some(_), _) => None,
        (None, _) => pin_digits(kind, profiles),
    };
    (algorithm, pin)
}

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
/// after each user. Authenticator apps are activated with their first
/// code through `gateway`, as their users would.
pub async fn create<R: Rng + ?Sized>(
    (admin, gateway): (&Client, Option<&Client>),
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
    // PINs for the kinds that take one, push keys for IB Key apps, and the
    // cards of the vendor's file, drawn here so the run is seeded.
    let mut cards = 0;
    let mut pins: Vec<Vec<DeviceSecrets>> = Vec::with_capacity(planned.len());
    for member in &planned {
        let mut held = Vec::with_capacity(member.devices.len());
        for (kind, _) in &member.devices {
            let (algorithm, pin) = card_of(*kind, cards, plan.via_pskc.is_some(), profiles);
            let pin = pin.map(|n| random_pin(rng, n));
            let seed = (*kind == DeviceKind::IbKey).then(|| {
                let mut seed = [0u8; 32];
                rng.fill_bytes(&mut seed);
                seed
            });
            let card = match algorithm {
                Some(algorithm) => {
                    cards += 1;
                    let mut key = [0u8; 20];
                    rng.fill_bytes(&mut key);
                    let serial = Serial::new(&format!("{}-{cards:07}", plan.prefix))
                        .map_err(|e| FleetError::Mix(format!("--prefix: as a serial: {e}")))?;
                    Some(Card {
                        serial,
                        algorithm,
                        // Wipes the array it is given.
                        key: SecretKey::from_array(key),
                    })
                }
                None => None,
            };
            held.push(DeviceSecrets { pin, seed, card });
        }
        pins.push(held);
    }
    if let Some(path) = &plan.via_pskc {
        let cards = pins.iter().flatten().filter_map(|d| d.card.as_ref());
        deliver(admin, path, cards, rng).await?;
    }
    let apps = planned
        .iter()
        .flat_map(|p| &p.devices)
        .any(|(kind, _)| *kind == DeviceKind::TotpApp);
    let gateway = match (apps, gateway) {
        (false, _) => None,
        (true, Some(gateway)) => Some(gateway.pipeline(4096).await?),
        (true, None) => return Err(FleetError::AppsNeedGateway),
    };
    let profiles = Arc::new(profiles.clone());
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
        let (gateway, profiles) = (gateway.clone(), Arc::clone(&profiles));
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let (Some(member), Some(pins)) = (planned.get(index), pins.get(index)) else {
                    return Ok::<_, FleetError>(done);
                };
                let mut devices = Vec::with_capacity(member.devices.len());
                for (&(kind, phone), held) in member.devices.iter().zip(pins) {
                    let mut device =
                        enrol_device(&pipeline, &member.user, kind, held, &profiles).await?;
                    device.phone = phone;
                    if kind == DeviceKind::TotpApp {
                        let gateway = gateway.as_ref().ok_or(FleetError::AppsNeedGateway)?;
                        activate(gateway, &member.user, &device, &profiles).await?;
                    }
                    devices.push(device);
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
    Ok(Fleet {
        members: members.into_iter().map(|(_, m)| m).collect(),
        phones,
    })
}

/// One device of `user` made as its plan says: a card of the vendor's
/// file assigned by serial, an app enrolled (its key read from the
/// `otpauth://` URI, as the app reads it), or any other kind enrolled.
async fn enrol_device(
    admin: &Pipeline,
    user: &Username,
    kind: DeviceKind,
    held: &DeviceSecrets,
    profiles: &DeviceProfiles,
) -> Result<FleetDevice, FleetError> {
    let refused = |reply: &Reply| FleetError::Enroll {
        user: user.to_string(),
        reply: format!("{reply:?}"),
    };
    let pin = held.pin.as_deref().map(Pin::new);
    let (device, kind, secret, algorithm) = match &held.card {
        Some(card) => {
            let reply = admin
                .call(Operation::AssignToken {
                    serial: card.serial.clone(),
                    user: user.clone(),
                    pin,
                    label: "sim token".into(),
                })
                .await?;
            let Reply::Enrolled { device, .. } = reply else {
                return Err(refused(&reply));
            };
            let algorithm = Some(card.algorithm.clone());
            (device, DeviceKind::Token, card.key.clone(), algorithm)
        }
        None => {
            let reply = admin
                .call(Operation::Enroll(EnrollRequest {
                    user: user.clone(),
                    kind,
                    secret: None,
                    pin,
                    label: format!("sim {kind}"),
                }))
                .await?;
            match reply {
                Reply::Enrolled {
                    device,
                    secret: Some(secret),
                } => (device, kind, secret, None),
                Reply::AppEnrolled { device, uri } => {
                    let secret = app_key(uri.as_str()).ok_or_else(|| FleetError::Enroll {
                        user: user.to_string(),
                        reply: "an otpauth:// URI without a base32 secret".into(),
                    })?;
                    (device, kind, secret, None)
                }
                reply => return Err(refused(&reply)),
            }
        }
    };
    if let Some(seed) = held.seed {
        let key = PushSigner::from_seed(seed).public();
        let reply = admin.call(Operation::BindPushKey { device, key }).await?;
        if reply != Reply::Done {
            return Err(refused(&reply));
        }
    }
    let device = FleetDevice {
        id: device,
        kind,
        secret,
        pin: held.pin.clone().map(Zeroizing::new),
        phone: None,
        push_seed: held.seed.map(Zeroizing::new),
        algorithm,
        moving: Arc::default(),
    };
    // Every device must be one the load run can hold.
    device.emulate(profiles)?;
    Ok(device)
}

/// The key of an `otpauth://` URI (its `secret`, base32 without padding).
fn app_key(uri: &str) -> Option<SecretKey> {
    let query = uri.split_once('?')?.1;
    let secret = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("secret="))?;
    let bytes = Zeroizing::new(data_encoding::BASE32_NOPAD.decode(secret.as_bytes()).ok()?);
    SecretKey::from_bytes(bytes.to_vec()).ok()
}

/// An app's first login, which activates it: the daemon keeps a new app
/// pending until a code shows it computes what the daemon does.
async fn activate(
    gateway: &Pipeline,
    user: &Username,
    device: &FleetDevice,
    profiles: &DeviceProfiles,
) -> Result<(), FleetError> {
    let failed = |reply: String| FleetError::Activate {
        user: user.to_string(),
        reply,
    };
    let app = device.emulate(profiles)?;
    let asked = Operation::Challenge {
        user: user.clone(),
        device: device.id,
    };
    let (challenge, text) = match gateway.call(asked).await? {
        Reply::Challenge {
            challenge, text, ..
        } => (challenge, text),
        other => return Err(failed(format!("{other:?}"))),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let code = app.answer(&text, now)?;
    let verify = Operation::Verify {
        challenge,
        response: Answer::new(code.as_str()),
    };
    match gateway.call(verify).await? {
        Reply::Verdict(Verdict::Accepted { device: by, .. }) if by == device.id => Ok(()),
        other => Err(failed(format!("{other:?}"))),
    }
}

/// Writes `cards` as a vendor's PSKC file at `path` (encrypted under a
/// new pre-shared key, written beside it as `.psk`, both mode 0600), then
/// imports it as an operator's `slsd admin import-tokens` does: the file
/// read and checked whole, then sent.
async fn deliver<'a, R: Rng + ?Sized>(
    admin: &Client,
    path: &Path,
    cards: impl Iterator<Item = &'a Card>,
    rng: &mut R,
) -> Result<(), FleetError> {
    use slsd::pskc::{self, Limits, Opening};
    let failed = |reason: String| pskc_error(path, reason);
    let psk = write_cards(path, cards, rng)?;
    let config = slsd::config::Config::default();
    let limits = Limits {
        max_tokens: usize::try_from(config.tokens.import_max).unwrap_or(usize::MAX),
        min_key_bytes: config.tokens.min_key_bytes,
    };
    let reader =
        std::io::BufReader::new(std::fs::File::open(path).map_err(|e| failed(e.to_string()))?);
    let tokens = pskc::read(reader, Opening::PreSharedKey(&psk), &limits)
        .map_err(|e| failed(e.to_string()))?;
    let tokens = tokens
        .into_iter()
        .map(slsd::client::tokens::new_token)
        .collect();
    slsd::client::tokens::import_tokens(admin, tokens, config.server.max_frame, |_| {}).await?;
    Ok(())
}

fn pskc_error(path: &Path, reason: String) -> FleetError {
    FleetError::Pskc {
        path: path.display().to_string(),
        reason,
    }
}

/// Writes `cards` as a PSKC file at `path` under a new pre-shared key,
/// written beside it as `.psk` (both mode 0600); the key.
fn write_cards<R: Rng + ?Sized>(
    path: &Path,
    cards: impl Iterator<Item = impl std::borrow::Borrow<Card>>,
    rng: &mut R,
) -> Result<SecretKey, FleetError> {
    use slsd::pskc::{TokenEntry, Writer};
    let failed = |reason: String| pskc_error(path, reason);
    let mut psk = [0u8; 16];
    rng.fill_bytes(&mut psk);
    let psk = SecretKey::from_array(psk);
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let out = std::io::BufWriter::new(private_file(path).map_err(|e| failed(e.to_string()))?);
    let mut writer = Writer::new(out, &psk, seed).map_err(|e| failed(e.to_string()))?;
    for card in cards {
        let card = card.borrow();
        writer
            .token(&TokenEntry {
                serial: &card.serial,
                manufacturer: "sls-sim",
                algorithm: &card.algorithm,
                key: &card.key,
                counter: 0,
            })
            .map_err(|e| failed(e.to_string()))?;
    }
    let file = writer.finish().map_err(|e| failed(e.to_string()))?;
    file.into_inner()
        .map_err(|e| failed(e.to_string()))?
        .sync_all()
        .map_err(|e| failed(e.to_string()))?;
    let mut key_file =
        private_file(&path.with_extension("psk")).map_err(|e| failed(e.to_string()))?;
    let hex = Zeroizing::new(hex::encode(psk.expose_secret()));
    key_file
        .write_all(hex.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    Ok(psk)
}

/// A PSKC file of `count` new HOTP tokens (serials `PREFIX-0000001` ...)
/// at `path`, its key beside it: what a vendor ships with a batch of
/// cards. Streamed; `tick` after each token.
pub fn write_tokens<R: Rng + ?Sized>(
    path: &Path,
    prefix: &str,
    count: usize,
    rng: &mut R,
    tick: impl Fn(),
) -> Result<(), FleetError> {
    let serial = |n: usize| Serial::new(&format!("{prefix}-{n:07}"));
    // The first and the longest serial: if they are serials, all are.
    for n in [1, count.max(1)] {
        serial(n).map_err(|e| FleetError::Mix(format!("--prefix: as a serial: {e}")))?;
    }
    let algorithm: TokenAlgorithm = "HOTP-SHA1-6"
        .parse()
        .map_err(|e| pskc_error(path, format!("{e}")))?;
    let mut keys = ChaCha8Rng::from_rng(rng);
    let cards = (1..=count).filter_map(|n| {
        let mut key = [0u8; 20];
        keys.fill_bytes(&mut key);
        tick();
        Some(Card {
            serial: serial(n).ok()?,
            algorithm: algorithm.clone(),
            key: SecretKey::from_array(key),
        })
    });
    write_cards(path, cards, rng).map(drop)
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
    /// An imported token's algorithm (`HOTP-SHA1-6`, an OCRA suite, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    algorithm: Option<String>,
    /// Where a token's or app's code has moved to (see `FleetDevice`).
    #[serde(default, skip_serializing_if = "is_zero")]
    moving: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Fleet {
    /// Whether any device's code moves (tokens, apps): a run changes what
    /// the file must keep.
    pub fn moves(&self) -> bool {
        self.members
            .iter()
            .flat_map(|m| &m.devices)
            .any(|d| d.kind == DeviceKind::Token || d.kind == DeviceKind::TotpApp)
    }

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
                            algorithm: d.algorithm.as_ref().map(ToString::to_string),
                            moving: d.moving.load(Ordering::Acquire),
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
                let algorithm = d
                    .algorithm
                    .map(|text| text.parse::<TokenAlgorithm>())
                    .transpose()
                    .map_err(|e| bad(format!("device {}: {e}", d.id)))?;
                devices.push(FleetDevice {
                    id: DeviceId(d.id),
                    kind,
                    secret,
                    pin: d.pin,
                    phone: d.phone,
                    push_seed,
                    algorithm,
                    moving: Arc::new(AtomicU64::new(d.moving)),
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
            via_pskc: None,
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
            via_pskc: None,
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
                        algorithm: None,
                        moving: Arc::default(),
                    },
                    FleetDevice {
                        id: DeviceId(12),
                        kind: DeviceKind::Token,
                        secret: SecretKey::from_bytes(vec![6; 20]).unwrap(),
                        pin: None,
                        phone: None,
                        push_seed: None,
                        algorithm: Some("HOTP-SHA1-6".parse().unwrap()),
                        moving: Arc::new(AtomicU64::new(41)),
                    },
                    FleetDevice {
                        id: DeviceId(10),
                        kind: DeviceKind::IbKey,
                        secret: SecretKey::from_bytes(vec![4; 32]).unwrap(),
                        pin: None,
                        phone: Some(0),
                        push_seed: Some(Zeroizing::new([5; 32])),
                        algorithm: None,
                        moving: Arc::default(),
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
        let token = &back.members[0].devices[1];
        assert_eq!(token.algorithm.as_ref().unwrap().to_string(), "HOTP-SHA1-6");
        assert_eq!(token.moving.load(Ordering::Acquire), 41);
        assert_eq!(
            back.members[0].devices[2].push_signer().unwrap().public(),
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
