//! The configuration: TOML in, one typed and validated [`Config`] out.
//!
//! Every limit and TTL has a documented default in `default.toml` (which is
//! what `slsd config default` prints, and which a test holds equal to
//! [`Config::default`]). Unknown keys and out-of-range values are refused
//! with an error naming the key. Pure: the caller reads the file.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::profile::{DeviceProfiles, ProfileError};
use crate::wire::MAX_FRAME_LIMIT;

mod reload;
pub use reload::{LIVE_KEYS, ReloadRefused};

/// The documented default configuration file.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    #[error("{key}: {problem}")]
    Value { key: &'static str, problem: String },
    #[error("{0}")]
    Devices(#[from] ProfileError),
}

/// The whole configuration of a daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: ServerConfig,
    pub challenges: ChallengeConfig,
    pub lockout: LockoutConfig,
    pub store: StoreConfig,
    pub sms: SmsConfig,
    pub carrier: CarrierConfig,
    pub push: PushConfig,
    pub lifecycle: LifecycleConfig,
    pub withdrawals: WithdrawalConfig,
    pub tokens: TokensConfig,
    pub keys: KeysConfig,
    pub radius: RadiusConfig,
    pub events: EventsConfig,
    pub devices: DeviceProfiles,
    /// The file as read, defaults merged in: what a reload compares key by
    /// key (`reload`).
    source: toml::Table,
}

/// The security event stream (`crate::events`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(deserialize_with = "event_sink")]
    pub sink: EventSink,
    /// Events waiting for the sink at most; past it, new ones are dropped.
    pub queue: usize,
}

/// Where security events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSink {
    Off,
    Stdout,
    /// Appended to a file, a JSON object a line.
    File(std::path::PathBuf),
    /// RFC 5424 messages to the local syslog socket (a Unix datagram
    /// socket, `/dev/log` by default).
    SyslogUnix(std::path::PathBuf),
    /// RFC 5424 messages over UDP.
    SyslogUdp(SocketAddr),
}

fn event_sink<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<EventSink, D::Error> {
    let text = String::deserialize(deserializer)?;
    let bad = || {
        serde::de::Error::custom(format!(
            "{text:?}: one of \"\" (off), \"stdout\", \"file:PATH\", \"syslog\", \"syslog:unix:PATH\", \"syslog:udp:HOST:PORT\""
        ))
    };
    let path = |p: &str| {
        let path = std::path::PathBuf::from(p);
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(bad())
        }
    };
    match text.as_str() {
        "" => Ok(EventSink::Off),
        "stdout" => Ok(EventSink::Stdout),
        "syslog" => Ok(EventSink::SyslogUnix("/dev/log".into())),
        other => {
            if let Some(file) = other.strip_prefix("file:") {
                path(file).map(EventSink::File)
            } else if let Some(socket) = other.strip_prefix("syslog:unix:") {
                path(socket).map(EventSink::SyslogUnix)
            } else if let Some(addr) = other.strip_prefix("syslog:udp:") {
                addr.parse().map(EventSink::SyslogUdp).map_err(|_| bad())
            } else {
                Err(bad())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The TCP/TLS fallback: the same protocol over TLS 1.3 on TCP, for
    /// networks that block UDP; empty: off.
    #[serde(deserialize_with = "optional_address")]
    pub tcp_listen: Option<SocketAddr>,
    /// A TCP connection silent this long is probed (TCP keep-alive, every
    /// this long, three times): a vanished client gives its slot back.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// The name clients check the server certificate against (`slsd admin`
    /// connects with it; the certificate made on first start carries it).
    pub name: String,
    /// A file of revoked client certificate serial numbers (hex, one a
    /// line), read at start and on SIGHUP; empty: none.
    pub revoked_serials: std::path::PathBuf,
    pub metrics: SocketAddr,
    pub max_frame: u32,
    pub max_connections: u32,
    pub max_streams_per_connection: u32,
    pub requests_per_connection_per_second: u32,
    pub failed_proofs_per_connection_per_minute: u32,
    pub issuance_per_connection_per_second: u32,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A connection that has not finished its handshake by then is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// QUIC flow control: bytes a client may send on one stream, and on
    /// all of a connection's streams, ahead of the daemon reading them.
    pub stream_receive_window: u32,
    pub receive_window: u32,
    /// Bytes the daemon keeps in flight (sent, unacknowledged) on one
    /// connection.
    pub send_window: u32,
    /// Encoded replies waiting for one stream's writer; past it the stream
    /// is not read until they leave.
    pub write_queue_bytes: u32,
    /// A stream whose replies make no progress for this long (its client
    /// does not read) closes its connection.
    #[serde(with = "humantime_serde")]
    pub write_stall_timeout: Duration,
    /// Malformed request bodies one connection may send; the next closes it.
    pub malformed_frames_per_connection: u32,
    /// Handshakes under way at once, in all and from one IP address, and
    /// how many may be under way before unvalidated peers get a Retry.
    pub max_handshakes: u32,
    pub handshakes_per_address: u32,
    pub handshakes_before_retry: u32,
    /// Established connections per role (within `max-connections`).
    pub max_gateway_connections: u32,
    pub max_admin_connections: u32,
    pub max_carrier_connections: u32,
    pub max_phone_connections: u32,
}

impl ServerConfig {
    /// Requests one connection may send.
    pub fn request_rate(&self) -> crate::ratelimit::Rate {
        crate::ratelimit::Rate::per(
            self.requests_per_connection_per_second,
            Duration::from_secs(1),
        )
    }

    /// Issuances (challenges, codes, pushes, tokens) one connection may
    /// ask (never more than its requests).
    pub fn issuance_rate(&self) -> crate::ratelimit::Rate {
        crate::ratelimit::Rate::per(
            self.issuance_per_connection_per_second
                .min(self.requests_per_connection_per_second),
            Duration::from_secs(1),
        )
    }

    /// Failed subscription proofs one connection may make.
    pub fn proof_failure_rate(&self) -> crate::ratelimit::Rate {
        crate::ratelimit::Rate::per(
            self.failed_proofs_per_connection_per_minute,
            Duration::from_secs(60),
        )
    }

    /// The connection quota of `role` (never more than `max-connections`).
    pub fn max_connections_of(&self, role: crate::engine::Role) -> u32 {
        use crate::engine::Role;
        let quota = match role {
            Role::Gateway => self.max_gateway_connections,
            Role::Admin => self.max_admin_connections,
            Role::Carrier => self.max_carrier_connections,
            Role::Phone => self.max_phone_connections,
        };
        quota.min(self.max_connections)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ChallengeConfig {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    pub attempts: u8,
    pub capacity: usize,
    pub per_user_per_minute: u32,
    /// Buckets of the per-user limiter (fixed memory: 16 bytes each).
    pub user_limit_buckets: usize,
    /// Challenges one device may be issued per UTC day.
    pub per_device_per_day: u32,
    /// Questions answered right that a device is never asked again.
    pub remembered_questions: usize,
}

/// A DNS name (labels of 1 to 63 letters, digits and `-`, not at either
/// end; 253 characters in all) or an IP address: what a TLS client can
/// check a server certificate against.
fn is_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (1..=253).contains(&name.len()) && name.split('.').all(label)
}

impl ChallengeConfig {
    /// The per-user issuance rate (challenges, codes, pushes), on either
    /// store.
    pub fn issuance_rate(&self) -> crate::ratelimit::Rate {
        crate::ratelimit::Rate::per(self.per_user_per_minute, Duration::from_secs(60))
    }

    /// What each device's question memory keeps and allows, on either
    /// store.
    pub fn question_limits(&self) -> crate::store::questions::QuestionLimits {
        crate::store::questions::QuestionLimits {
            per_day: self.per_device_per_day,
            remembered: self.remembered_questions,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LockoutConfig {
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub first: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Each such quiet period takes one doubling off the escalation.
    #[serde(with = "humantime_serde")]
    pub decay_after: Duration,
    /// Wrong answers without a right one that lock a device until an
    /// operator unlocks it.
    pub hard_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    pub commit_batch: usize,
    pub backend: Backend,
    pub redis_urls: Vec<String>,
    /// The ACL user ("": the default user).
    pub redis_user: String,
    /// Where the password is ("": `SLS_REDIS_PASSWORD`, if set).
    pub redis_password_file: std::path::PathBuf,
    /// rediss://: the CAs to trust ("": the system's roots).
    pub redis_ca_file: std::path::PathBuf,
    /// rediss://: a client certificate and key ("": none).
    pub redis_cert_file: std::path::PathBuf,
    pub redis_key_file: std::path::PathBuf,
    pub redis_wait_replicas: u32,
    #[serde(with = "humantime_serde")]
    pub redis_wait_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    pub redis_in_flight: usize,
    pub changes_in_flight: usize,
    pub change_workers: usize,
    pub database_cache_mb: usize,
}

/// Where state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// This node alone: sharded memory and the embedded database.
    Embedded,
    /// Several nodes sharing a Redis (or Valkey) Cluster.
    Redis,
}

/// SMS and voice codes. The code's length and alphabet are the `sms`
/// device profile's (`[devices.sms.check]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SmsConfig {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub resend_interval: Duration,
    pub max_sends: u8,
    pub max_checks: u8,
    pub sends_per_number_per_hour: u32,
    pub sends_per_prefix_per_minute: u32,
    /// Sends per number range (the first `RANGE_DIGITS` digits of the
    /// international number) per minute.
    pub sends_per_range_per_minute: u32,
    /// Country calling codes SMS and voice may go to; empty: any.
    pub allowed_country_codes: Vec<u16>,
    pub capacity: usize,
}

impl SmsConfig {
    /// The rate of deliveries `limit` allows, on either store.
    pub fn send_rate(&self, limit: crate::phone::SendLimit) -> crate::ratelimit::Rate {
        use crate::phone::SendLimit;
        let (events, period) = match limit {
            SendLimit::Number => (self.sends_per_number_per_hour, Duration::from_secs(3600)),
            SendLimit::Range => (self.sends_per_range_per_minute, Duration::from_secs(60)),
            SendLimit::Country => (self.sends_per_prefix_per_minute, Duration::from_secs(60)),
        };
        crate::ratelimit::Rate::per(events, period)
    }

    /// Whether codes may be sent to `number`'s country.
    pub fn allows(&self, number: &crate::phone::PhoneNumber) -> bool {
        self.allowed_country_codes.is_empty()
            || self.allowed_country_codes.contains(&number.country())
    }
}

/// The carrier channel: delivery bridges and the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CarrierConfig {
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    pub max_attempts: u8,
    pub outbox: usize,
}

/// IB Key push approval.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PushConfig {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    pub pending_per_user: u8,
    pub capacity: usize,
    /// Approvals waiting for their signature check at once; past it, an
    /// approval is answered Busy (`engine::signatures`).
    pub verify_queue: usize,
    /// Signatures checked together at most.
    pub verify_batch: usize,
    /// Threads that check signatures.
    pub verify_threads: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LifecycleConfig {
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    pub token_attempts: u8,
    pub token_capacity: usize,
    pub temporary_code_uses: u32,
    #[serde(with = "humantime_serde")]
    pub replacement_auto_activation: Duration,
    pub share_needs_approval: bool,
    /// Residence (ISO 3166 alpha-2, upper case) → the regulation.
    pub opt_out_forbidden: std::collections::BTreeMap<String, String>,
}

/// The hardware token inventory (`import-tokens`, `tokens`).
/// At-rest key rotation (`store::sealed`, `engine::rotation`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeysConfig {
    /// Records one step of the re-seal pass takes.
    pub reseal_batch: usize,
    /// The pass's rest between steps.
    #[serde(with = "humantime_serde")]
    pub reseal_pause: Duration,
    /// On a shared store: how often a node reads the deployment's keyring
    /// and record format, and renews its word about its release.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TokensConfig {
    /// Tokens one import (one PSKC file) may bring.
    pub import_max: u64,
    /// The shortest token key accepted, in bytes.
    pub min_key_bytes: usize,
    /// An import left unfinished this long is dropped when the next
    /// begins (its importer is gone).
    #[serde(with = "humantime_serde")]
    pub import_stale_after: Duration,
    /// Event tokens (HOTP, OCRA with `C`): counters past the expected one
    /// an answer may use (presses of the button that were never sent).
    pub look_ahead: u64,
    /// Time tokens (TOTP, OCRA with `T`): time steps before or after now
    /// an answer may use (the token's clock and ours disagree a little).
    pub drift_steps: u64,
    /// How far a resync searches for two consecutive codes.
    pub resync_window: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WithdrawalConfig {
    #[serde(deserialize_with = "holidays")]
    pub holidays: crate::policy::calendar::BusinessCalendar,
    pub ledger_days: u32,
}

fn holidays<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<crate::policy::calendar::BusinessCalendar, D::Error> {
    use crate::policy::calendar::Day;
    let days: Vec<String> = Deserialize::deserialize(deserializer)?;
    let parsed = days
        .iter()
        .map(|text| {
            Day::parse(text).ok_or_else(|| {
                serde::de::Error::custom(format!("holiday {text:?} is not a date YYYY-MM-DD"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(crate::policy::calendar::BusinessCalendar::new(parsed))
}

/// The RADIUS front end (`[radius]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RadiusConfig {
    /// The UDP address it listens on; empty: no RADIUS front end.
    #[serde(deserialize_with = "optional_address")]
    pub listen: Option<SocketAddr>,
    pub clients: Vec<RadiusClient>,
    /// How long an Access-Request waits for a push to be approved.
    #[serde(with = "humantime_serde")]
    pub push_wait: Duration,
    /// How long a login's `State` is good for after its Access-Challenge.
    #[serde(with = "humantime_serde")]
    pub state_ttl: Duration,
    /// Requests being answered at once; more are dropped.
    pub in_flight: u32,
    /// Answers kept for retransmissions, and for how long.
    pub duplicate_cache: u32,
    #[serde(with = "humantime_serde")]
    pub duplicate_ttl: Duration,
    pub requests_per_client_per_second: u32,
}

/// A RADIUS client (a NAS): its name, the addresses it sends from, and the
/// file holding its shared secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RadiusClient {
    pub name: String,
    pub addresses: Vec<Network>,
    pub secret_file: std::path::PathBuf,
}

/// An address, or a network as address/prefix length (`198.51.100.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bad = || format!("{text:?} is not an IP address or address/prefix");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.as_str(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(bad)?,
            None => bits,
        };
        Ok(Self { address, prefix })
    }
}

impl Network {
    /// Whether `ip` is in this network (an IPv4 address mapped into IPv6,
    /// as a dual-stack socket reports it, counts as the IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            let shift = width.saturating_sub(u32::from(prefix));
            bits.checked_shr(shift).unwrap_or(0)
        }
        match (self.address.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32, self.prefix)
                    == masked(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn optional_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("{text:?} is not an address:port (or empty: off)"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: ServerConfig,
    challenges: ChallengeConfig,
    lockout: LockoutConfig,
    store: StoreConfig,
    sms: SmsConfig,
    carrier: CarrierConfig,
    push: PushConfig,
    lifecycle: LifecycleConfig,
    withdrawals: WithdrawalConfig,
    tokens: TokensConfig,
    keys: KeysConfig,
    radius: RadiusConfig,
    events: EventsConfig,
    devices: toml::Table,
}

impl Default for Config {
    fn default() -> Self {
        // The built-in file is valid; `default_file_parses_to_default` tests it.
        match Self::from_toml("") {
            Ok(config) => config,
            Err(error) => unreachable_default(&error),
        }
    }
}

#[allow(clippy::panic)] // the compiled-in default file is covered by a test
fn unreachable_default(error: &ConfigError) -> ! {
    panic!("built-in default configuration is invalid: {error}")
}

impl Config {
    /// Parses a configuration file; keys it leaves out take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Syntax(e.to_string().trim().to_owned());
        let mut table: toml::Table = DEFAULT_TOML.parse().map_err(syntax)?;
        let overrides: toml::Table = text.parse().map_err(syntax)?;
        for (section, value) in overrides {
            match (table.get_mut(&section), value) {
                (Some(toml::Value::Table(defaults)), toml::Value::Table(values)) => {
                    defaults.extend(values);
                }
                (_, value) => {
                    table.insert(section, value);
                }
            }
        }
        let raw: RawConfig = toml::Value::Table(table.clone())
            .try_into()
            .map_err(syntax)?;
        let config = Self {
            source: table,
            devices: DeviceProfiles::with_overrides(&raw.devices)?,
            server: raw.server,
            challenges: raw.challenges,
            lockout: raw.lockout,
            store: raw.store,
            sms: raw.sms,
            carrier: raw.carrier,
            push: raw.push,
            lifecycle: raw.lifecycle,
            withdrawals: raw.withdrawals,
            tokens: raw.tokens,
            keys: raw.keys,
            radius: raw.radius,
            events: raw.events,
        };
        config.validate()?;
        Ok(config)
    }

    /// This configuration with its state on the Redis Cluster that `urls`
    /// name, checked like a file's.
    pub fn with_redis_store(mut self, urls: Vec<String>) -> Result<Self, ConfigError> {
        if let Some(toml::Value::Table(store)) = self.source.get_mut("store") {
            store.insert("backend".into(), "redis".into());
            store.insert(
                "redis-urls".into(),
                toml::Value::Array(urls.iter().map(|u| u.as_str().into()).collect()),
            );
        }
        self.store.backend = Backend::Redis;
        self.store.redis_urls = urls;
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &'static str, problem: &str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Value {
                    key,
                    problem: problem.to_owned(),
                })
            }
        }
        let s = &self.server;
        check(
            (64..=MAX_FRAME_LIMIT).contains(&s.max_frame),
            "server.max-frame",
            "must be 64..=65536 bytes",
        )?;
        check(
            s.max_connections >= 1,
            "server.max-connections",
            "must be at least 1",
        )?;
        check(
            (1..=1024).contains(&s.max_streams_per_connection),
            "server.max-streams-per-connection",
            "must be 1..=1024",
        )?;
        check(
            s.requests_per_connection_per_second >= 1,
            "server.requests-per-connection-per-second",
            "must be at least 1",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&s.handshake_timeout),
            "server.handshake-timeout",
            "must be 100ms..=60s",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&s.tcp_keepalive),
            "server.tcp-keepalive",
            "must be 1s..=1h",
        )?;
        check(
            s.shutdown_grace <= Duration::from_secs(600),
            "server.shutdown-grace",
            "must be at most 10 minutes",
        )?;
        // The daemon reads a frame into its own buffer as it arrives, so the
        // windows need not hold a whole frame; they bound what waits in QUIC.
        check(
            (1024..=16 << 20).contains(&s.stream_receive_window),
            "server.stream-receive-window",
            "must be 1 KiB..=16 MiB",
        )?;
        check(
            (s.stream_receive_window..=256 << 20).contains(&s.receive_window),
            "server.receive-window",
            "must be stream-receive-window..=256 MiB",
        )?;
        check(
            (4096..=256 << 20).contains(&s.send_window),
            "server.send-window",
            "must be 4 KiB..=256 MiB",
        )?;
        check(
            (4096..=64 << 20).contains(&s.write_queue_bytes),
            "server.write-queue-bytes",
            "must be 4 KiB..=64 MiB",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(600))
                .contains(&s.write_stall_timeout),
            "server.write-stall-timeout",
            "must be 100ms..=10m",
        )?;
        check(
            (1..=100_000).contains(&s.max_handshakes),
            "server.max-handshakes",
            "must be 1..=100000",
        )?;
        check(
            (1..=s.max_handshakes).contains(&s.handshakes_per_address),
            "server.handshakes-per-address",
            "must be 1..=max-handshakes",
        )?;
        check(
            s.handshakes_before_retry <= s.max_handshakes,
            "server.handshakes-before-retry",
            "must be at most max-handshakes (0: always validate addresses)",
        )?;
        for role in crate::engine::Role::ALL {
            check(
                s.max_connections_of(role) >= 1,
                match role {
                    crate::engine::Role::Gateway => "server.max-gateway-connections",
                    crate::engine::Role::Admin => "server.max-admin-connections",
                    crate::engine::Role::Carrier => "server.max-carrier-connections",
                    crate::engine::Role::Phone => "server.max-phone-connections",
                },
                "must be at least 1",
            )?;
        }
        check(
            s.malformed_frames_per_connection <= 1_000_000,
            "server.malformed-frames-per-connection",
            "must be at most 1000000",
        )?;
        check(
            self.server.issuance_per_connection_per_second >= 1,
            "server.issuance-per-connection-per-second",
            "must be at least 1",
        )?;
        check(
            is_server_name(&self.server.name),
            "server.name",
            "must be a DNS name or an IP address",
        )?;
        check(
            (1..=100_000).contains(&self.server.failed_proofs_per_connection_per_minute),
            "server.failed-proofs-per-connection-per-minute",
            "must be 1..=100000",
        )?;
        let c = &self.challenges;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&c.ttl),
            "challenges.ttl",
            "must be 1s..=1h",
        )?;
        check(
            (1..=10).contains(&c.attempts),
            "challenges.attempts",
            "must be 1..=10",
        )?;
        check(
            (1..=100_000_000).contains(&c.capacity),
            "challenges.capacity",
            "must be 1..=100000000",
        )?;
        check(
            c.per_user_per_minute >= 1,
            "challenges.per-user-per-minute",
            "must be at least 1",
        )?;
        check(
            (1..=16_777_216).contains(&c.user_limit_buckets),
            "challenges.user-limit-buckets",
            "must be 1..=16777216",
        )?;
        check(
            c.per_device_per_day >= 1,
            "challenges.per-device-per-day",
            "must be at least 1",
        )?;
        check(
            c.remembered_questions <= 1024,
            "challenges.remembered-questions",
            "must be 0..=1024",
        )?;
        let l = &self.lockout;
        check(
            (1..=100).contains(&l.failures),
            "lockout.failures",
            "must be 1..=100",
        )?;
        check(
            l.first >= Duration::from_millis(1),
            "lockout.first",
            "must be at least 1ms",
        )?;
        check(
            l.max >= l.first,
            "lockout.max",
            "must be at least lockout.first",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(30 * 86_400)).contains(&l.decay_after),
            "lockout.decay-after",
            "must be 1s..=30days",
        )?;
        check(
            (l.failures..=100).contains(&l.hard_limit),
            "lockout.hard-limit",
            "must be lockout.failures..=100 (NIST SP 800-63B)",
        )?;
        let st = &self.store;
        check(
            st.commit_interval <= Duration::from_secs(1),
            "store.commit-interval",
            "must be at most 1s",
        )?;
        check(
            (1..=1_000_000).contains(&st.commit_batch),
            "store.commit-batch",
            "must be 1..=1000000",
        )?;
        if st.backend == Backend::Redis {
            check(
                !st.redis_urls.is_empty(),
                "store.redis-urls",
                "must name at least one node when the backend is redis",
            )?;
        }
        check(
            st.redis_urls.iter().all(|url| {
                url.strip_prefix("redis://")
                    .or_else(|| url.strip_prefix("rediss://"))
                    .is_some_and(|rest| !rest.is_empty())
            }),
            "store.redis-urls",
            "each must be redis://host:port (or rediss://)",
        )?;
        check(
            !st.redis_urls.iter().any(|url| url.contains('@')),
            "store.redis-urls",
            "no user or password in a URL (it would show in logs and process listings): \
             use store.redis-user and store.redis-password-file or SLS_REDIS_PASSWORD",
        )?;
        let tls = st
            .redis_urls
            .iter()
            .filter(|url| url.starts_with("rediss://"));
        let tls = tls.count();
        check(
            tls == 0 || tls == st.redis_urls.len(),
            "store.redis-urls",
            "all redis:// or all rediss://: a cluster is reached one way",
        )?;
        let set = |path: &std::path::Path| !path.as_os_str().is_empty();
        for (path, key) in [
            (&st.redis_ca_file, "store.redis-ca-file"),
            (&st.redis_cert_file, "store.redis-cert-file"),
            (&st.redis_key_file, "store.redis-key-file"),
        ] {
            check(
                !set(path) || tls > 0,
                key,
                "is for TLS: the URLs must be rediss://",
            )?;
        }
        check(
            set(&st.redis_cert_file) == set(&st.redis_key_file),
            "store.redis-cert-file",
            "and store.redis-key-file go together: both or neither",
        )?;
        check(
            st.redis_user.len() <= 128 && st.redis_user.chars().all(|c| c.is_ascii_graphic()),
            "store.redis-user",
            "must be at most 128 printable ASCII characters without spaces",
        )?;
        check(
            st.redis_wait_replicas <= 5,
            "store.redis-wait-replicas",
            "must be 0..=5",
        )?;
        check(
            (Duration::from_millis(1)..=Duration::from_secs(10)).contains(&st.redis_wait_timeout),
            "store.redis-wait-timeout",
            "must be 1ms..=10s",
        )?;
        check(
            (Duration::from_millis(10)..=Duration::from_secs(60)).contains(&st.cache_ttl),
            "store.cache-ttl",
            "must be 10ms..=60s",
        )?;
        check(
            (1..=1_000_000).contains(&st.redis_in_flight),
            "store.redis-in-flight",
            "must be 1..=1000000",
        )?;
        check(
            (1..=100_000).contains(&st.changes_in_flight),
            "store.changes-in-flight",
            "must be 1..=100000",
        )?;
        check(
            (1..=1024).contains(&st.change_workers),
            "store.change-workers",
            "must be 1..=1024",
        )?;
        check(
            (1..=65_536).contains(&st.database_cache_mb),
            "store.database-cache-mb",
            "must be 1..=65536",
        )?;
        self.validate_delivery(check)
    }

    fn validate_delivery(
        &self,
        check: fn(bool, &'static str, &str) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let sms = &self.sms;
        check(
            (Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&sms.ttl),
            "sms.ttl",
            "must be 10s..=1h",
        )?;
        check(
            sms.resend_interval <= sms.ttl,
            "sms.resend-interval",
            "must be at most sms.ttl",
        )?;
        check(
            (1..=20).contains(&sms.max_sends),
            "sms.max-sends",
            "must be 1..=20",
        )?;
        check(
            (1..=10).contains(&sms.max_checks),
            "sms.max-checks",
            "must be 1..=10",
        )?;
        check(
            sms.sends_per_number_per_hour >= 1,
            "sms.sends-per-number-per-hour",
            "must be at least 1",
        )?;
        check(
            sms.sends_per_prefix_per_minute >= 1,
            "sms.sends-per-prefix-per-minute",
            "must be at least 1",
        )?;
        check(
            sms.sends_per_range_per_minute >= 1,
            "sms.sends-per-range-per-minute",
            "must be at least 1",
        )?;
        check(
            sms.allowed_country_codes
                .iter()
                .all(|c| (1..=999).contains(c)),
            "sms.allowed-country-codes",
            "country calling codes are 1..=999",
        )?;
        check(
            (1..=100_000_000).contains(&sms.capacity),
            "sms.capacity",
            "must be 1..=100000000",
        )?;
        let carrier = &self.carrier;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(600)).contains(&carrier.ack_timeout),
            "carrier.ack-timeout",
            "must be 100ms..=10m",
        )?;
        check(
            (1..=10).contains(&carrier.max_attempts),
            "carrier.max-attempts",
            "must be 1..=10",
        )?;
        check(
            (1..=10_000_000).contains(&carrier.outbox),
            "carrier.outbox",
            "must be 1..=10000000",
        )?;
        let push = &self.push;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&push.ttl),
            "push.ttl",
            "must be 1s..=10m",
        )?;
        check(
            (1..=20).contains(&push.pending_per_user),
            "push.pending-per-user",
            "must be 1..=20",
        )?;
        check(
            (1..=100_000_000).contains(&push.capacity),
            "push.capacity",
            "must be 1..=100000000",
        )?;
        check(
            (1..=1_000_000).contains(&push.verify_queue),
            "push.verify-queue",
            "must be 1..=1000000",
        )?;
        check(
            (1..=1_000_000).contains(&self.events.queue),
            "events.queue",
            "must be 1..=1000000",
        )?;
        check(
            (1..=1024).contains(&push.verify_batch),
            "push.verify-batch",
            "must be 1..=1024",
        )?;
        check(
            (1..=256).contains(&push.verify_threads),
            "push.verify-threads",
            "must be 1..=256",
        )?;
        let life = &self.lifecycle;
        check(
            (Duration::from_secs(30)..=Duration::from_secs(86_400)).contains(&life.token_ttl),
            "lifecycle.token-ttl",
            "must be 30s..=1day",
        )?;
        check(
            (1..=10).contains(&life.token_attempts),
            "lifecycle.token-attempts",
            "must be 1..=10",
        )?;
        check(
            (1..=10_000_000).contains(&life.token_capacity),
            "lifecycle.token-capacity",
            "must be 1..=10000000",
        )?;
        check(
            (1..=1000).contains(&life.temporary_code_uses),
            "lifecycle.temporary-code-uses",
            "must be 1..=1000",
        )?;
        check(
            life.replacement_auto_activation <= Duration::from_secs(366 * 86_400),
            "lifecycle.replacement-auto-activation",
            "must be at most 366 days",
        )?;
        check(
            life.opt_out_forbidden
                .keys()
                .all(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())),
            "lifecycle.opt-out-forbidden",
            "keys must be ISO 3166 alpha-2 codes in upper case (HK, IN)",
        )?;
        check(
            (7..=3660).contains(&self.withdrawals.ledger_days),
            "withdrawals.ledger-days",
            "must be 7..=3660",
        )?;
        check(
            (1..=100_000).contains(&self.keys.reseal_batch),
            "keys.reseal-batch",
            "must be 1..=100000",
        )?;
        check(
            self.keys.reseal_pause <= Duration::from_secs(10),
            "keys.reseal-pause",
            "must be at most 10s",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.keys.poll),
            "keys.poll",
            "must be 100ms..=60s",
        )?;
        let tokens = &self.tokens;
        check(
            (1..=100_000_000).contains(&tokens.import_max),
            "tokens.import-max",
            "must be 1..=100000000",
        )?;
        check(
            (10..=crate::otp::MAX_KEY_LEN).contains(&tokens.min_key_bytes),
            "tokens.min-key-bytes",
            "must be 10..=128",
        )?;
        check(
            (Duration::from_secs(60)..=Duration::from_secs(7 * 86_400))
                .contains(&tokens.import_stale_after),
            "tokens.import-stale-after",
            "must be 1m..=7days",
        )?;
        check(
            tokens.look_ahead <= 1000,
            "tokens.look-ahead",
            "must be 0..=1000",
        )?;
        check(
            tokens.drift_steps <= 10,
            "tokens.drift-steps",
            "must be 0..=10",
        )?;
        check(
            (tokens.look_ahead..=1_000_000).contains(&tokens.resync_window),
            "tokens.resync-window",
            "must be tokens.look-ahead..=1000000",
        )?;
        self.validate_radius(check)
    }

    fn validate_radius(
        &self,
        check: fn(bool, &'static str, &str) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let radius = &self.radius;
        check(
            radius.listen.is_none() || !radius.clients.is_empty(),
            "radius.clients",
            "a RADIUS listener needs at least one client",
        )?;
        let mut names = std::collections::HashSet::new();
        for client in &radius.clients {
            check(
                !client.name.is_empty() && client.name.len() <= 64 && names.insert(&client.name),
                "radius.clients",
                "each client needs a name of 1 to 64 bytes, different from the others'",
            )?;
            check(
                !client.addresses.is_empty(),
                "radius.clients",
                "each client needs the addresses it sends from",
            )?;
            check(
                !client.secret_file.as_os_str().is_empty(),
                "radius.clients",
                "each client needs a secret-file",
            )?;
        }
        check(
            (Duration::from_secs(1)..=Duration::from_secs(120)).contains(&radius.push_wait),
            "radius.push-wait",
            "must be 1s..=2m",
        )?;
        check(
            (Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&radius.state_ttl),
            "radius.state-ttl",
            "must be 10s..=1h",
        )?;
        check(
            (1..=1_000_000).contains(&radius.in_flight),
            "radius.in-flight",
            "must be 1..=1000000",
        )?;
        check(
            (radius.in_flight..=10_000_000).contains(&radius.duplicate_cache),
            "radius.duplicate-cache",
            "must be in-flight..=10000000",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&radius.duplicate_ttl),
            "radius.duplicate-ttl",
            "must be 1s..=10m",
        )?;
        check(
            radius.requests_per_client_per_second >= 1,
            "radius.requests-per-client-per-second",
            "must be at least 1",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_sinks_parse_and_a_bad_one_is_named() {
        let sink = |text: &str| {
            Config::from_toml(&format!("[events]\nsink = {text:?}")).map(|c| c.events.sink)
        };
        assert_eq!(sink(""), Ok(EventSink::Off));
        assert_eq!(sink("stdout"), Ok(EventSink::Stdout));
        assert_eq!(
            sink("file:/var/log/slsd/events.jsonl"),
            Ok(EventSink::File("/var/log/slsd/events.jsonl".into()))
        );
        assert_eq!(sink("syslog"), Ok(EventSink::SyslogUnix("/dev/log".into())));
        assert_eq!(
            sink("syslog:udp:127.0.0.1:514"),
            Ok(EventSink::SyslogUdp("127.0.0.1:514".parse().unwrap()))
        );
        for bad in ["file:relative.log", "syslog:udp:nowhere", "kafka"] {
            let error = sink(bad).unwrap_err().to_string();
            assert!(
                error.contains("sink") && error.contains("stdout"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn default_file_parses_to_default() {
        let config = Config::from_toml(DEFAULT_TOML).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.server.listen, "127.0.0.1:4433".parse().unwrap());
        assert_eq!(config.challenges.ttl, Duration::from_secs(120));
        assert_eq!(config.challenges.attempts, 3);
        assert_eq!(config.lockout.failures, 5);
        assert_eq!(config.lockout.max, Duration::from_secs(3600));
    }

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let config =
            Config::from_toml("[challenges]\nttl = \"5s\"\n[devices.scc.check]\npositions = 100\n")
                .unwrap();
        assert_eq!(config.challenges.ttl, Duration::from_secs(5));
        assert_eq!(config.challenges.attempts, 3);
        assert_eq!(
            config.devices.get(crate::profile::DeviceKind::Scc).check,
            crate::profile::Check::CodeCard { positions: 100 }
        );
    }

    #[test]
    fn a_radius_front_end_names_its_clients_and_their_networks() {
        let config = Config::from_toml(
            "[radius]\nlisten = \"127.0.0.1:1812\"\npush-wait = \"5s\"\n\
             clients = [{ name = \"vpn\", addresses = [\"192.0.2.10\", \"198.51.100.0/24\", \"2001:db8::/32\"], secret-file = \"/etc/slsd/vpn.secret\" }]",
        )
        .unwrap();
        assert_eq!(
            config.radius.listen,
            Some("127.0.0.1:1812".parse().unwrap())
        );
        assert_eq!(config.radius.push_wait, Duration::from_secs(5));
        let networks = &config.radius.clients[0].addresses;
        let inside = |ip: &str| networks.iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(inside("192.0.2.10"));
        assert!(!inside("192.0.2.11"));
        assert!(inside("198.51.100.0") && inside("198.51.100.255"));
        assert!(!inside("198.51.101.0"));
        assert!(
            inside("::ffff:198.51.100.7"),
            "IPv4 mapped, as a dual-stack socket reports it"
        );
        assert!(inside("2001:db8:1::5"));
        assert!(!inside("2001:db9::5"));
        assert_eq!(Config::default().radius.listen, None, "off by default");
        let error = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert_eq!(
            error("[radius]\nlisten = \"127.0.0.1:1812\""),
            "radius.clients: a RADIUS listener needs at least one client"
        );
        assert!(
            error("[radius]\nclients = [{ name = \"a\", addresses = [\"10.0.0.0/33\"], secret-file = \"s\" }]")
                .contains("\"10.0.0.0/33\" is not an IP address or address/prefix")
        );
        assert!(error("[radius]\nlisten = \"nowhere\"").contains("not an address:port"));
        assert_eq!(
            error("[radius]\nin-flight = 100\nduplicate-cache = 10"),
            "radius.duplicate-cache: must be in-flight..=10000000"
        );
        assert_eq!(
            error("[radius]\npush-wait = \"0s\""),
            "radius.push-wait: must be 1s..=2m"
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_problem() {
        let error = |text: &str| Config::from_toml(text).unwrap_err().to_string();
        assert_eq!(
            error("[challenges]\nattempts = 0"),
            "challenges.attempts: must be 1..=10"
        );
        assert_eq!(
            error("[server]\nmax-frame = 1000000"),
            "server.max-frame: must be 64..=65536 bytes"
        );
        assert_eq!(
            error("[server]\nhandshake-timeout = \"2m\""),
            "server.handshake-timeout: must be 100ms..=60s"
        );
        // The bounds this round added, each with its range.
        for (text, message) in [
            (
                "[server]\nstream-receive-window = 512",
                "server.stream-receive-window: must be 1 KiB..=16 MiB",
            ),
            (
                "[server]\nreceive-window = 2048",
                "server.receive-window: must be stream-receive-window..=256 MiB",
            ),
            (
                "[server]\nsend-window = 1000000000",
                "server.send-window: must be 4 KiB..=256 MiB",
            ),
            (
                "[server]\nwrite-queue-bytes = 100",
                "server.write-queue-bytes: must be 4 KiB..=64 MiB",
            ),
            (
                "[server]\nwrite-stall-timeout = \"10ms\"",
                "server.write-stall-timeout: must be 100ms..=10m",
            ),
            (
                "[server]\nmalformed-frames-per-connection = 2000000",
                "server.malformed-frames-per-connection: must be at most 1000000",
            ),
            (
                "[server]\nfailed-proofs-per-connection-per-minute = 0",
                "server.failed-proofs-per-connection-per-minute: must be 1..=100000",
            ),
            (
                "[lockout]\ndecay-after = \"100ms\"",
                "lockout.decay-after: must be 1s..=30days",
            ),
            (
                "[lockout]\nhard-limit = 101",
                "lockout.hard-limit: must be lockout.failures..=100 (NIST SP 800-63B)",
            ),
            (
                "[lockout]\nfailures = 6\nhard-limit = 5",
                "lockout.hard-limit: must be lockout.failures..=100 (NIST SP 800-63B)",
            ),
        ] {
            assert_eq!(error(text), message, "{text}");
        }
        assert_eq!(
            error("[challenges]\nuser-limit-buckets = 0"),
            "challenges.user-limit-buckets: must be 1..=16777216"
        );
        assert_eq!(
            error("[server]\nname = \"not a name!\""),
            "server.name: must be a DNS name or an IP address"
        );
        assert_eq!(
            error("[challenges]\nper-device-per-day = 0"),
            "challenges.per-device-per-day: must be at least 1"
        );
        assert_eq!(
            error("[challenges]\nremembered-questions = 1025"),
            "challenges.remembered-questions: must be 0..=1024"
        );
        assert_eq!(
            error("[sms]\nresend-interval = \"1h\"\nttl = \"5m\""),
            "sms.resend-interval: must be at most sms.ttl"
        );
        assert_eq!(
            error("[carrier]\noutbox = 0"),
            "carrier.outbox: must be 1..=10000000"
        );
        assert_eq!(
            error("[push]\npending-per-user = 0"),
            "push.pending-per-user: must be 1..=20"
        );
        assert_eq!(
            error("[push]\nverify-queue = 0"),
            "push.verify-queue: must be 1..=1000000"
        );
        assert_eq!(
            error("[events]\nqueue = 0"),
            "events.queue: must be 1..=1000000"
        );
        assert_eq!(
            error("[events]\nqueue = 1000001"),
            "events.queue: must be 1..=1000000"
        );
        assert_eq!(
            error("[push]\nverify-batch = 2000"),
            "push.verify-batch: must be 1..=1024"
        );
        assert_eq!(
            error("[push]\nverify-threads = 0"),
            "push.verify-threads: must be 1..=256"
        );
        assert_eq!(
            error("[lockout]\nfirst = \"2h\""),
            "lockout.max: must be at least lockout.first"
        );
        assert!(error("[challenges]\nttl = \"soon\"").contains("ttl"));
        assert!(error("[challenges]\nttl = \"soon\"").contains("soon"));
        assert!(error("[server]\nlisten = \"nowhere\"").contains("listen"));
        assert!(error("[server]\nlisen = \"127.0.0.1:1\"").contains("lisen"));
        assert!(error("[srever]").contains("srever"));
        assert!(
            error("[devices.scc.check]\npositions = 1").starts_with("devices.scc.check.positions")
        );
        assert!(error("not toml at all").contains("expected"));
        assert_eq!(
            error("[store]\nbackend = \"redis\""),
            "store.redis-urls: must name at least one node when the backend is redis"
        );
        assert_eq!(
            error("[store]\nredis-urls = [\"127.0.0.1:7000\"]"),
            "store.redis-urls: each must be redis://host:port (or rediss://)"
        );
        assert_eq!(
            error("[store]\nredis-urls = [\"redis://sls:secret@127.0.0.1:7000\"]"),
            "store.redis-urls: no user or password in a URL (it would show in logs and process listings): use store.redis-user and store.redis-password-file or SLS_REDIS_PASSWORD"
        );
        assert_eq!(
            error("[store]\nredis-urls = [\"rediss://a:1\", \"redis://b:1\"]"),
            "store.redis-urls: all redis:// or all rediss://: a cluster is reached one way"
        );
        assert_eq!(
            error("[store]\nredis-urls = [\"redis://a:1\"]\nredis-ca-file = \"ca.pem\""),
            "store.redis-ca-file: is for TLS: the URLs must be rediss://"
        );
        assert_eq!(
            error("[store]\nredis-urls = [\"rediss://a:1\"]\nredis-cert-file = \"c.pem\""),
            "store.redis-cert-file: and store.redis-key-file go together: both or neither"
        );
        assert_eq!(
            error("[store]\nredis-user = \"two words\""),
            "store.redis-user: must be at most 128 printable ASCII characters without spaces"
        );
        assert_eq!(
            error("[store]\nredis-wait-replicas = 6"),
            "store.redis-wait-replicas: must be 0..=5"
        );
        assert_eq!(
            error("[store]\nredis-wait-timeout = \"0s\""),
            "store.redis-wait-timeout: must be 1ms..=10s"
        );
        assert_eq!(
            error("[store]\ncache-ttl = \"2m\""),
            "store.cache-ttl: must be 10ms..=60s"
        );
        assert!(error("[store]\nbackend = \"memcached\"").contains("memcached"));
        assert_eq!(
            error("[store]\nredis-in-flight = 0"),
            "store.redis-in-flight: must be 1..=1000000"
        );
        assert_eq!(
            error("[store]\nchanges-in-flight = 0"),
            "store.changes-in-flight: must be 1..=100000"
        );
        assert_eq!(
            error("[store]\nchange-workers = 0"),
            "store.change-workers: must be 1..=1024"
        );
        assert_eq!(
            error("[store]\ndatabase-cache-mb = 0"),
            "store.database-cache-mb: must be 1..=65536"
        );
        assert_eq!(
            error("[lifecycle]\ntoken-ttl = \"1s\""),
            "lifecycle.token-ttl: must be 30s..=1day"
        );
        assert_eq!(
            error("[lifecycle]\ntoken-attempts = 0"),
            "lifecycle.token-attempts: must be 1..=10"
        );
        assert_eq!(
            error("[lifecycle]\ntoken-capacity = 0"),
            "lifecycle.token-capacity: must be 1..=10000000"
        );
        assert_eq!(
            error("[lifecycle]\ntemporary-code-uses = 0"),
            "lifecycle.temporary-code-uses: must be 1..=1000"
        );
        assert_eq!(
            error("[lifecycle]\nreplacement-auto-activation = \"400days\""),
            "lifecycle.replacement-auto-activation: must be at most 366 days"
        );
        assert_eq!(
            error("[lifecycle]\nopt-out-forbidden = { hk = \"x\" }"),
            "lifecycle.opt-out-forbidden: keys must be ISO 3166 alpha-2 codes in upper case (HK, IN)"
        );
        assert_eq!(
            error("[tokens]\nlook-ahead = 1001"),
            "tokens.look-ahead: must be 0..=1000"
        );
        assert_eq!(
            error("[tokens]\ndrift-steps = 11"),
            "tokens.drift-steps: must be 0..=10"
        );
        assert_eq!(
            error("[tokens]\nresync-window = 5"),
            "tokens.resync-window: must be tokens.look-ahead..=1000000"
        );
        assert_eq!(
            error("[tokens]\nimport-max = 0"),
            "tokens.import-max: must be 1..=100000000"
        );
        assert_eq!(
            error("[tokens]\nmin-key-bytes = 4"),
            "tokens.min-key-bytes: must be 10..=128"
        );
        assert_eq!(
            error("[tokens]\nimport-stale-after = \"1s\""),
            "tokens.import-stale-after: must be 1m..=7days"
        );
        assert_eq!(
            error("[withdrawals]\nledger-days = 1"),
            "withdrawals.ledger-days: must be 7..=3660"
        );
        assert_eq!(
            error("[keys]\nreseal-batch = 0"),
            "keys.reseal-batch: must be 1..=100000"
        );
        assert_eq!(
            error("[keys]\nreseal-pause = \"1min\""),
            "keys.reseal-pause: must be at most 10s"
        );
        assert_eq!(
            error("[keys]\npoll = \"10ms\""),
            "keys.poll: must be 100ms..=60s"
        );
        assert!(error("[withdrawals]\nholidays = [\"2026-13-01\"]").contains("2026-13-01"));
        let holiday = Config::from_toml("[withdrawals]\nholidays = [\"2026-11-26\"]").unwrap();
        let thanksgiving = crate::policy::calendar::Day::parse("2026-11-26").unwrap();
        assert!(!holiday.withdrawals.holidays.is_business_day(thanksgiving));
        assert!(
            Config::default()
                .withdrawals
                .holidays
                .is_business_day(thanksgiving)
        );
    }

    #[test]
    fn the_store_flag_switches_to_redis_and_is_checked() {
        let urls = vec!["redis://127.0.0.1:7000".to_owned()];
        let config = Config::default().with_redis_store(urls.clone()).unwrap();
        assert_eq!(config.store.backend, Backend::Redis);
        assert_eq!(config.store.redis_urls, urls);
        assert_eq!(Config::default().store.backend, Backend::Embedded);
        let error = Config::default()
            .with_redis_store(vec!["localhost".into()])
            .unwrap_err();
        assert!(error.to_string().starts_with("store.redis-urls"), "{error}");
    }
}
