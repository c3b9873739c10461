//! The shared-state backend on a Redis (or Valkey) Cluster: the atomic
//! primitives the engine's state needs, each touching one hash slot.
//!
//! - `put_new`: put-with-TTL, only if absent (a random id that collides is
//!   told so, never overwritten);
//! - `read` / `swap`: a versioned record and its compare-and-swap;
//! - `read_many` / `transact`: several versioned records of one slot read
//!   at one moment, and changed together only if none changed since — for
//!   state that is read, decided on in Rust, and written back (a challenge
//!   and its device's failure state; a code or push session and the
//!   failure state), so that of two nodes deciding at once one wins and
//!   the other decides again on what it finds;
//! - `gcra`: one event against a GCRA limiter (`ratelimit`'s arithmetic:
//!   issuance and send quotas, as one node keeps them);
//! - `hold` / `release`: a bounded set of things held until they lapse
//!   (unanswered pushes per user);
//! - queues (`push_back` / `pop_front`) and small sets and hashes for
//!   device indexes and node presence.
//!
//! Keys are `sls:{TAG}:...`: the hash tag keeps every key an operation
//! touches in one slot. A write marked durable is followed, on the same
//! master, by `WAIT` for the configured number of replicas; a write that
//! is not replicated in time is an error, not a silent success.

use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Value};

/// Why a shared-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a durable write reached {acknowledged} of {wanted} replicas in time")]
    NotReplicated { acknowledged: i64, wanted: i64 },
    #[error("redis answered {0}, which sls does not expect")]
    Unexpected(String),
    /// The credentials or TLS files named in `[store]` could not be used.
    #[error("{0}")]
    Access(String),
}

/// The environment variable a node reads the Redis password from when no
/// `store.redis-password-file` is set.
pub const PASSWORD_VARIABLE: &str = "SLS_REDIS_PASSWORD";

/// How a node logs in to the cluster: an ACL user and its password, and
/// for `rediss://` the CAs to trust and a client certificate. Read once at
/// start from the files `[store]` names; never printed.
#[derive(Default)]
pub struct RedisAccess {
    user: Option<String>,
    password: Option<zeroize::Zeroizing<String>>,
    tls: Option<redis::TlsCertificates>,
}

impl std::fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccess")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl RedisAccess {
    /// Reads what `store` names: the password file (or, without one,
    /// [`PASSWORD_VARIABLE`]) and the TLS files. A password file others
    /// can read is refused.
    pub fn from_config(
        store: &crate::config::StoreConfig,
        variable: Option<String>,
    ) -> Result<Self, RedisError> {
        let named = |path: &std::path::Path| !path.as_os_str().is_empty();
        let read = |path: &std::path::Path, key: &str| {
            std::fs::read(path)
                .map_err(|e| RedisError::Access(format!("store.{key} {}: {e}", path.display())))
        };
        let password = if named(&store.redis_password_file) {
            let path = &store.redis_password_file;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|e| {
                        RedisError::Access(format!(
                            "store.redis-password-file {}: {e}",
                            path.display()
                        ))
                    })?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(RedisError::Access(format!(
                        "store.redis-password-file {}: others may read it (mode {:o}): chmod 600",
                        path.display(),
                        mode & 0o777
                    )));
                }
            }
            let bytes = zeroize::Zeroizing::new(read(path, "redis-password-file")?);
            let text = std::str::from_utf8(&bytes).map_err(|_| {
                RedisError::Access(format!(
                    "store.redis-password-file {}: not UTF-8 text",
                    path.display()
                ))
            })?;
            Some(zeroize::Zeroizing::new(
                text.lines().next().unwrap_or("").to_owned(),
            ))
        } else {
            variable.map(zeroize::Zeroizing::new)
        };
        let root_cert = if named(&store.redis_ca_file) {
            Some(read(&store.redis_ca_file, "redis-ca-file")?)
        } else {
            None
        };
        let client_tls = if named(&store.redis_cert_file) {
            Some(redis::ClientTlsConfig {
                client_cert: read(&store.redis_cert_file, "redis-cert-file")?,
                client_key: read(&store.redis_key_file, "redis-key-file")?,
            })
        } else {
            None
        };
        let tls = (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        });
        Ok(Self {
            user: Some(store.redis_user.clone()).filter(|user| !user.is_empty()),
            password: password.filter(|p| !p.is_empty()),
            tls,
        })
    }

    /// The user nodes log in as, if not the default one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// How durable writes wait for replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durability {
    /// Replicas that must acknowledge a durable write (0: do not wait).
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// A key: `sls:{tag}:rest`. Keys with the same tag share a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn new(tag: &str, rest: &str) -> Self {
        Self(format!("sls:{{{tag}}}:{rest}"))
    }

    /// A key by its whole name (as a record names the records it goes
    /// with).
    pub fn named(name: String) -> Self {
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The outcome of a compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swap {
    /// Written; the record's new version.
    Done(u64),
    /// The record was not at the expected version.
    Conflict,
}

/// What a transaction does to one versioned record whose version it
/// checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Only check the version.
    Keep,
    /// Write this value (the version goes up by one), for this long.
    Set(Vec<u8>, Option<Duration>),
    /// Write this value, for this long, and name the records of its slot
    /// it goes with (read with it by `read_linked`).
    Link(Vec<u8>, Option<Duration>, Vec<String>),
    /// Delete the record.
    Delete,
}

/// A versioned record as read: version 0 means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub value: Option<Vec<u8>>,
}

/// `KEYS[1]` the record, `ARGV[1]` the expected version, `ARGV[2]` the
/// value, `ARGV[3]` the TTL in ms (0: none). Answers the new version, or
/// -1 when the version did not match.
pub(super) const SWAP: &str = r"
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if version ~= tonumber(ARGV[1]) then return -1 end
version = version + 1
redis.call('HSET', KEYS[1], 'v', version, 'd', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return version
";

/// GCRA (`ratelimit::Gcra::check`, the same arithmetic on the store), as
/// a Lua function the scripts that limit share: `key` the theoretical
/// arrival time in µs, `now` in µs, `interval` and `tolerance` in µs.
/// Answers 0 and records the event when it is allowed, else the µs until
/// it would be (nothing recorded). The key lives as long as it holds
/// anything back. (µs since the epoch stay below 2^53, exact in Lua's
/// doubles.)
const GCRA_FN: &str = r"
local function gcra(key, now, interval, tolerance)
  local tat = math.max(tonumber(redis.call('GET', key) or '0'), now)
  local allow_at = tat - tolerance
  if allow_at > now then return allow_at - now end
  local next = tat + interval
  redis.call('SET', key, string.format('%.0f', next), 'PX', math.max(1, math.ceil((next - now) / 1000)))
  return 0
end
";

/// Versioned records as read, as a Lua function: per key its version
/// ("0" when absent) and value.
const READ_FN: &str = r"
local function read(keys)
  local out = {}
  for i, key in ipairs(keys) do
    local r = redis.call('HMGET', key, 'v', 'd')
    out[i] = {r[1] or '0', r[2] or ''}
  end
  return out
end
";

/// `KEYS[1]` a GCRA key, `ARGV[1..3]` now, interval, tolerance (µs).
pub(super) static GCRA: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{GCRA_FN}return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))"
    )
});

/// `KEYS[1]` a GCRA key, `KEYS[2..]` versioned records of its slot,
/// `ARGV[1..3]` as `GCRA`: one issuance counted and the records read, at
/// one moment. Answers {the GCRA's answer, the records as `read`}.
pub(super) static GCRA_READ: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{GCRA_FN}{READ_FN}local wait = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n\
         local records = {{}}\nfor i = 2, #KEYS do records[i - 1] = KEYS[i] end\n\
         return {{wait, read(records)}}"
    )
});

/// `KEYS` versioned records of one slot, as `read`.
pub(super) static READ_MANY: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{READ_FN}return read(KEYS)"));

/// `KEYS[1]` a versioned record naming the records it goes with (its `k`
/// field: keys of its slot, one per line). Answers {the record and those
/// records as `read`, the names}.
pub(super) static READ_LINKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{READ_FN}local names = redis.call('HGET', KEYS[1], 'k') or ''\n\
         local keys = {{KEYS[1]}}\n\
         for name in string.gmatch(names, '[^\\n]+') do keys[#keys + 1] = name end\n\
         return {{read(keys), names}}"
    )
});

/// `KEYS[1]` a set of ids, `KEYS[2..]` versioned records of its slot;
/// `ARGV` the names of records per id (`ARGV[j] .. id`). Answers {the
/// ids, the records as `read`, every id's records as `read`, id by id}.
pub(super) static READ_SET: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{READ_FN}local ids = redis.call('SMEMBERS', KEYS[1])\n\
         local fixed = {{}}\nfor i = 2, #KEYS do fixed[i - 1] = KEYS[i] end\n\
         local each = {{}}\n\
         for _, id in ipairs(ids) do for _, name in ipairs(ARGV) do each[#each + 1] = name .. id end end\n\
         return {{ids, read(fixed), read(each)}}"
    )
});

/// `KEYS[1]` today's total, `KEYS[2..]` the other days of the window
/// (one slot); `ARGV[1]` the amount, `ARGV[2]` the day's limit and
/// `ARGV[3]` the window's (-1: none), `ARGV[4]` the TTL in ms of a new
/// day. Adds the amount to today if both totals stay within their limits.
/// Answers {1 booked / 0 not, today's total before, the window's before}.
pub(super) const BOOK_UNDER_LIMITS: &str = r"
local today = tonumber(redis.call('GET', KEYS[1]) or '0')
local window = today
for i = 2, #KEYS do
  window = window + tonumber(redis.call('GET', KEYS[i]) or '0')
end
local amount = tonumber(ARGV[1])
local day_limit = tonumber(ARGV[2])
local window_limit = tonumber(ARGV[3])
if (day_limit >= 0 and today + amount > day_limit)
  or (window_limit >= 0 and window + amount > window_limit) then
  return {0, today, window}
end
redis.call('INCRBY', KEYS[1], amount)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {1, today, window}
";

/// `KEYS[1]` a sequence counter, `KEYS[2]` its log (one slot); `ARGV[1]`
/// the entry. Appends it; answers its sequence number (its index + 1).
pub(super) const APPEND_LOG: &str = r"
local seq = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
return seq
";

/// Compare-and-swap on versioned records of one slot, as a Lua function:
/// `keys` the records; `args`, five per key from `args[from]` on: the
/// version it must be at, what to do (`k` keep, `s` set, `d` delete), the
/// value to set, its TTL in ms (0: none) and the records it goes with
/// (its `k` field, for `READ_LINKED`; empty: unchanged). All or nothing:
/// answers 1 when every version matched and the writes were made, 0
/// otherwise.
const TRANSACT_FN: &str = r"
local function transact(keys, args, from)
  for i, key in ipairs(keys) do
    local version = tonumber(redis.call('HGET', key, 'v') or '0')
    if version ~= tonumber(args[from + (i - 1) * 5]) then return 0 end
  end
  for i, key in ipairs(keys) do
    local base = from + (i - 1) * 5
    local op = args[base + 1]
    if op == 's' then
      local version = tonumber(redis.call('HGET', key, 'v') or '0') + 1
      redis.call('HSET', key, 'v', version, 'd', args[base + 2])
      if args[base + 4] ~= '' then redis.call('HSET', key, 'k', args[base + 4]) end
      local ttl = tonumber(args[base + 3])
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('PERSIST', key) end
    elseif op == 'd' then
      redis.call('DEL', key)
    end
  end
  return 1
end
";

/// `KEYS` versioned records of one slot, `ARGV` as `transact`'s.
pub(super) static TRANSACT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{TRANSACT_FN}return transact(KEYS, ARGV, 1)"));

/// `KEYS[1]` a GCRA key, then `ARGV[4]` versioned records of its slot to
/// change, then records of its slot to read back; `ARGV[1..3]` as `GCRA`,
/// `ARGV[5..]` the changes as `transact`'s. One issuance counted and,
/// when it is allowed, the change made if every version still matches.
/// Answers {the GCRA's answer, 1 changed / 0 not, the records read back as
/// `read` when not}.
pub(super) static GCRA_TRANSACT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{GCRA_FN}{READ_FN}{TRANSACT_FN}\
         local wait = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n\
         if wait > 0 then return {{wait, 0, {{}}}} end\n\
         local n = tonumber(ARGV[4])\n\
         local changed, back = {{}}, {{}}\n\
         for i = 2, #KEYS do if i <= n + 1 then changed[i - 1] = KEYS[i] else back[#back + 1] = KEYS[i] end end\n\
         if transact(changed, ARGV, 5) == 1 then return {{0, 1, {{}}}} end\n\
         return {{0, 0, read(back)}}"
    )
});

/// `KEYS[1]` the key, `ARGV[1]` the value it must hold to be deleted.
pub(super) const DELETE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// `KEYS[1]` a string, `ARGV[1]` the value it must hold, `ARGV[2]` the
/// value it gets if it does: 1 if it did, 0 if not.
pub(super) const REPLACE_IF: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// `KEYS[1]` a list, `ARGV[1]` an index in it, `ARGV[2]` the entry it
/// must hold there, `ARGV[3]` the entry it gets if it does: 1 if it did,
/// 0 if not (or the list has no such index).
pub(super) const SET_AT_IF: &str = r"
if redis.call('LINDEX', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('LSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
";

/// `KEYS[1]` a sorted set of held things, `ARGV[1]` now (ms), `ARGV[2]`
/// the limit, `ARGV[3]` the member, `ARGV[4]` when it lapses (ms). Drops
/// lapsed members, then holds the new one if fewer than the limit are
/// held: answers 0, or the soonest lapse when at the limit.
pub(super) const HOLD: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local soonest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(soonest[2])
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
-- The set lives as long as its longest-held member.
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
else
  redis.call('PEXPIREAT', KEYS[1], ARGV[4], 'GT')
end
return 0
";

/// `KEYS[1]` a list, `ARGV[1]` a value, `ARGV[2]` the list's TTL in ms.
pub(super) const PUSH_BACK: &str =
    "redis.call('LPUSH', KEYS[1], ARGV[1]) return redis.call('PEXPIRE', KEYS[1], ARGV[2])";

/// A connection to the cluster, shared by every task of a node (cheap to
/// clone: one multiplexed connection per cluster node underneath).
#[derive(Clone)]
pub struct RedisStore {
    link: Link,
    durability: Durability,
}

#[derive(Clone)]
enum Link {
    Cluster {
        connection: ClusterConnection,
        /// Makes more connections: one of its own for each task that
        /// waits on a queue (a blocked command holds its connection).
        client: Box<redis::cluster::ClusterClient>,
    },
    /// The same commands answered in this process (`memory`).
    Memory(std::sync::Arc<super::memory::MemoryRedis>),
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The scripts sent so far — where the text is, its SHA-1, the text —
/// to send one again to a master that lacks it (a new master after a
/// failover, a restarted one). A handful, each hashed once.
type Scripts = Vec<(usize, String, &'static str)>;
static SCRIPTS: std::sync::RwLock<Scripts> = std::sync::RwLock::new(Vec::new());

/// `EVALSHA` of `script`: a request carries the script's hash, not its
/// text (a master that lacks it answers `NOSCRIPT`, and `run` sends the
/// text once).
fn eval(script: &'static str) -> Cmd {
    let at = script.as_ptr() as usize;
    let known = SCRIPTS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|(known, _, _)| *known == at)
        .map(|(_, hash, _)| hash.clone());
    let hash = known.unwrap_or_else(|| {
        let hash = redis::Script::new(script).get_hash().to_owned();
        SCRIPTS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((at, hash.clone(), script));
        hash
    });
    let mut command = redis::cmd("EVALSHA");
    command.arg(hash);
    command
}

/// The text of the script whose SHA-1 (hex) is `hash`, if sls sent it.
pub(super) fn script_text(hash: &[u8]) -> Option<&'static str> {
    SCRIPTS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|(_, known, _)| known.as_bytes() == hash)
        .map(|(_, _, text)| *text)
}

/// `command` (an `EVALSHA`) as the `EVAL` of its script's text.
fn with_text(command: &Cmd) -> Option<Cmd> {
    let mut args = command.args_iter();
    args.next();
    let Some(redis::Arg::Simple(hash)) = args.next() else {
        return None;
    };
    let text = script_text(hash)?;
    let mut eval = redis::cmd("EVAL");
    eval.arg(text);
    for arg in args {
        if let redis::Arg::Simple(arg) = arg {
            eval.arg(arg);
        }
    }
    Some(eval)
}

/// `transact`'s arguments for `changes`, five per record.
fn transact_args(command: &mut Cmd, changes: &[(&Key, u64, Op)]) {
    for (_, version, change) in changes {
        command.arg(*version);
        match change {
            Op::Keep => command.arg("k").arg("").arg(0).arg(""),
            Op::Set(value, ttl) => command
                .arg("s")
                .arg(value.as_slice())
                .arg(ttl.map_or(0, |t| millis(t).max(1)))
                .arg(""),
            Op::Link(value, ttl, links) => command
                .arg("s")
                .arg(value.as_slice())
                .arg(ttl.map_or(0, |t| millis(t).max(1)))
                .arg(links.join("\n")),
            Op::Delete => command.arg("d").arg("").arg(0).arg(""),
        };
    }
}

fn int(value: &Value) -> Result<i64, RedisError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(RedisError::Unexpected(format!("{other:?}"))),
    }
}

impl RedisStore {
    /// Connects to the cluster that any of `urls` (`redis://host:port`, or
    /// `rediss://` for TLS) belongs to, logging in as `access` says.
    pub async fn connect(
        urls: &[String],
        durability: Durability,
        access: &RedisAccess,
    ) -> Result<Self, RedisError> {
        let mut builder = ClusterClientBuilder::new(urls.to_vec())
            .retries(6)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2));
        if let Some(user) = &access.user {
            builder = builder.username(user);
        }
        if let Some(password) = &access.password {
            builder = builder.password(password.as_str());
        }
        if let Some(tls) = &access.tls {
            builder = builder.certs(tls.clone());
        }
        let client = builder.build()?;
        let connection = client.get_async_connection().await?;
        Ok(Self {
            link: Link::Cluster {
                connection,
                client: Box::new(client),
            },
            durability,
        })
    }

    /// The same store answered by `memory` in this process (tests, the
    /// fuzz target, the replay): nothing is replicated.
    pub fn in_memory(memory: std::sync::Arc<super::memory::MemoryRedis>) -> Self {
        Self {
            link: Link::Memory(memory),
            durability: Durability {
                replicas: 0,
                timeout: Duration::ZERO,
            },
        }
    }

    /// Whether it is answered in this process: a lost compare-and-swap
    /// was made to lose (`MemoryRedis::interfere`), and a retry needs no
    /// pause for another node to finish.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.link, Link::Memory(_))
    }

    /// Runs `command` on `key`'s master; when `durable`, then waits for
    /// replication on the same connection. A script the master does not
    /// have yet is sent with its text.
    async fn run(&self, key: &Key, command: Cmd, durable: bool) -> Result<Value, RedisError> {
        match self.run_once(key, command.clone(), durable).await {
            Err(RedisError::Redis(error)) if error.code() == Some("NOSCRIPT") => {
                let eval = with_text(&command).ok_or(RedisError::Redis(error))?;
                self.run_once(key, eval, durable).await
            }
            other => other,
        }
    }

    async fn run_once(&self, key: &Key, command: Cmd, durable: bool) -> Result<Value, RedisError> {
        let connection = match &self.link {
            Link::Cluster { connection, .. } => connection,
            Link::Memory(memory) => {
                metrics::counter!(crate::metrics::STORE_ROUND_TRIPS, "durable" => "no")
                    .increment(1);
                return memory.run(&command);
            }
        };
        let mut connection = connection.clone();
        if !durable || self.durability.replicas == 0 {
            metrics::counter!(crate::metrics::STORE_ROUND_TRIPS, "durable" => "no").increment(1);
            let answer = connection.route_command(command, route(key)).await?;
            return Ok(answer.extract_error()?);
        }
        metrics::counter!(crate::metrics::STORE_ROUND_TRIPS, "durable" => "yes").increment(1);
        let mut pipeline = redis::pipe();
        pipeline.add_command(command);
        pipeline
            .cmd("WAIT")
            .arg(self.durability.replicas)
            .arg(millis(self.durability.timeout));
        let mut values = connection
            .route_pipeline(pipeline, 0, 2, single(key))
            .await?
            .into_iter();
        let (Some(answer), Some(acknowledged)) = (values.next(), values.next()) else {
            return Err(RedisError::Unexpected("a short pipeline reply".into()));
        };
        // A command's error inside the pipeline is a value: as an error.
        let answer = answer.extract_error()?;
        let acknowledged = int(&acknowledged)?;
        let wanted = i64::from(self.durability.replicas);
        if acknowledged < wanted {
            return Err(RedisError::NotReplicated {
                acknowledged,
                wanted,
            });
        }
        Ok(answer)
    }

    /// The values of `keys` (all in `keys[0]`'s slot), in order.
    pub async fn get_many(&self, keys: &[&Key]) -> Result<Vec<Option<Vec<u8>>>, RedisError> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let mut command = redis::cmd("MGET");
        for key in keys {
            command.arg(key.as_str());
        }
        match self.run(first, command, false).await? {
            Value::Array(values) => values.into_iter().map(bytes).collect(),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts `value` under `key` for good (no expiry), replacing what was there.
    pub async fn put(&self, key: &Key, value: &[u8], durable: bool) -> Result<(), RedisError> {
        let mut command = redis::cmd("SET");
        command.arg(key.as_str()).arg(value);
        match self.run(key, command, durable).await? {
            Value::Okay => Ok(()),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts `value` under `key` for `ttl`, replacing what was there.
    pub async fn put_with_ttl(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let mut command = redis::cmd("SET");
        command
            .arg(key.as_str())
            .arg(value)
            .arg("PX")
            .arg(millis(ttl).max(1));
        match self.run(key, command, false).await? {
            Value::Okay => Ok(()),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts `value` under `key` for good unless the key exists; false if it
    /// did.
    pub async fn put_if_absent(
        &self,
        key: &Key,
        value: &[u8],
        durable: bool,
    ) -> Result<bool, RedisError> {
        let mut command = redis::cmd("SET");
        command.arg(key.as_str()).arg(value).arg("NX");
        match self.run(key, command, durable).await? {
            Value::Okay => Ok(true),
            Value::Nil => Ok(false),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Deletes `key` if it holds `value`; whether it did.
    pub async fn delete_if(&self, key: &Key, value: &[u8]) -> Result<bool, RedisError> {
        let mut command = eval(DELETE_IF);
        command.arg(1).arg(key.as_str()).arg(value);
        Ok(int(&self.run(key, command, false).await?)? == 1)
    }

    /// Replaces `key`'s value by `value` if it still holds `old`; whether
    /// it did.
    pub async fn replace_if(
        &self,
        key: &Key,
        old: &[u8],
        value: &[u8],
        durable: bool,
    ) -> Result<bool, RedisError> {
        let mut command = eval(REPLACE_IF);
        command.arg(1).arg(key.as_str()).arg(old).arg(value);
        Ok(int(&self.run(key, command, durable).await?)? == 1)
    }

    /// Holds `member` in the bounded set at `key` until `until_ms`, unless
    /// `limit` unlapsed members are held at `now_ms`: then `Some(soonest)`,
    /// when the first of them lapses.
    pub async fn hold(
        &self,
        key: &Key,
        member: &[u8],
        limit: u32,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<Option<u64>, RedisError> {
        let mut command = eval(HOLD);
        command
            .arg(1)
            .arg(key.as_str())
            .arg(now_ms)
            .arg(limit)
            .arg(member)
            .arg(until_ms);
        let soonest = int(&self.run(key, command, false).await?)?;
        Ok(u64::try_from(soonest).ok().filter(|s| *s > 0))
    }

    /// Lets go of `member` of the bounded set at `key`.
    pub async fn release(&self, key: &Key, member: &[u8]) -> Result<(), RedisError> {
        let mut command = redis::cmd("ZREM");
        command.arg(key.as_str()).arg(member);
        int(&self.run(key, command, false).await?).map(drop)
    }

    /// Deletes `keys` (all in `keys[0]`'s slot); how many existed.
    pub async fn delete(&self, keys: &[&Key], durable: bool) -> Result<u64, RedisError> {
        let Some(first) = keys.first() else {
            return Ok(0);
        };
        let mut command = redis::cmd("DEL");
        for key in keys {
            command.arg(key.as_str());
        }
        let deleted = int(&self.run(first, command, durable).await?)?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }

    /// Adds one to a counter that never expires; the new value.
    pub async fn increment(&self, key: &Key, durable: bool) -> Result<u64, RedisError> {
        let mut command = redis::cmd("INCR");
        command.arg(key.as_str());
        let value = int(&self.run(key, command, durable).await?)?;
        u64::try_from(value).map_err(|_| RedisError::Unexpected(format!("INCR gave {value}")))
    }

    /// Adds `member` to the set at `key`.
    pub async fn set_add(&self, key: &Key, member: &[u8], durable: bool) -> Result<(), RedisError> {
        let mut command = redis::cmd("SADD");
        command.arg(key.as_str()).arg(member);
        int(&self.run(key, command, durable).await?).map(drop)
    }

    /// Removes `member` from the set at `key`.
    pub async fn set_remove(
        &self,
        key: &Key,
        member: &[u8],
        durable: bool,
    ) -> Result<(), RedisError> {
        let mut command = redis::cmd("SREM");
        command.arg(key.as_str()).arg(member);
        int(&self.run(key, command, durable).await?).map(drop)
    }

    /// Adds `members` to the set at `key`, in one command.
    pub async fn set_add_all(
        &self,
        key: &Key,
        members: &[&[u8]],
        durable: bool,
    ) -> Result<(), RedisError> {
        self.set_members("SADD", key, members, durable).await
    }

    /// Removes `members` from the set at `key`, in one command.
    pub async fn set_remove_all(
        &self,
        key: &Key,
        members: &[&[u8]],
        durable: bool,
    ) -> Result<(), RedisError> {
        self.set_members("SREM", key, members, durable).await
    }

    /// `SADD` or `SREM` of `members` (none: nothing sent).
    async fn set_members(
        &self,
        name: &str,
        key: &Key,
        members: &[&[u8]],
        durable: bool,
    ) -> Result<(), RedisError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut command = redis::cmd(name);
        command.arg(key.as_str());
        for member in members {
            command.arg(*member);
        }
        int(&self.run(key, command, durable).await?).map(drop)
    }

    /// The members of the set at `key` (none if it is absent).
    pub async fn members(&self, key: &Key) -> Result<Vec<Vec<u8>>, RedisError> {
        let mut command = redis::cmd("SMEMBERS");
        command.arg(key.as_str());
        byte_strings(self.run(key, command, false).await?)
    }

    /// Appends `value` to the list at `key` (a queue: `pop_front` takes
    /// the oldest); the list goes, whole, `ttl` after the last append (so
    /// a queue nobody takes from any more does not stay for ever).
    pub async fn push_back(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let mut command = eval(PUSH_BACK);
        command
            .arg(1)
            .arg(key.as_str())
            .arg(value)
            .arg(millis(ttl).max(1));
        int(&self.run(key, command, false).await?).map(drop)
    }

    /// A handle on the same cluster with connections of its own, for a
    /// task that waits on a queue ([`Self::pop_front_waiting`]): a blocked
    /// command holds its connection, which must not be the one every
    /// request shares.
    pub async fn dedicated(&self) -> Result<Self, RedisError> {
        let link = match &self.link {
            Link::Cluster { client, .. } => Link::Cluster {
                connection: client.get_async_connection().await?,
                client: client.clone(),
            },
            Link::Memory(memory) => Link::Memory(std::sync::Arc::clone(memory)),
        };
        Ok(Self {
            link,
            durability: self.durability,
        })
    }

    /// Takes up to `count` of the oldest values of the list at `key`,
    /// waiting up to `wait` for one to come (none: an empty list). Call it
    /// on a [`Self::dedicated`] handle.
    pub async fn pop_front_waiting(
        &self,
        key: &Key,
        count: usize,
        wait: Duration,
    ) -> Result<Vec<Vec<u8>>, RedisError> {
        let mut command = redis::cmd("BLMPOP");
        command
            .arg(wait.as_secs_f64())
            .arg(1)
            .arg(key.as_str())
            .arg("RIGHT")
            .arg("COUNT")
            .arg(count.max(1));
        match self.run(key, command, false).await? {
            Value::Nil => Ok(Vec::new()),
            Value::Array(pair) => match <[Value; 2]>::try_from(pair) {
                Ok([_, values]) => byte_strings(values),
                Err(other) => Err(RedisError::Unexpected(format!("{other:?}"))),
            },
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Takes up to `count` of the oldest values of the list at `key`; each
    /// value goes to one caller only.
    pub async fn pop_front(&self, key: &Key, count: usize) -> Result<Vec<Vec<u8>>, RedisError> {
        let mut command = redis::cmd("RPOP");
        command.arg(key.as_str()).arg(count.max(1));
        byte_strings(self.run(key, command, false).await?)
    }

    /// Sets `field` of the hash at `key` to `value`; `None` removes it.
    pub async fn set_field(
        &self,
        key: &Key,
        field: &str,
        value: Option<u64>,
    ) -> Result<(), RedisError> {
        let mut command = redis::cmd(if value.is_some() { "HSET" } else { "HDEL" });
        command.arg(key.as_str()).arg(field);
        if let Some(value) = value {
            command.arg(value);
        }
        int(&self.run(key, command, false).await?).map(drop)
    }

    /// The numeric values of the hash at `key`.
    pub async fn field_values(&self, key: &Key) -> Result<Vec<u64>, RedisError> {
        let mut command = redis::cmd("HVALS");
        command.arg(key.as_str());
        match self.run(key, command, false).await? {
            Value::Array(values) => Ok(values
                .iter()
                .filter_map(|value| match value {
                    Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
                    _ => None,
                })
                .collect()),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The fields of the hash at `key` with their numeric values (a value
    /// that is not a number is left out).
    pub async fn fields(&self, key: &Key) -> Result<Vec<(String, u64)>, RedisError> {
        let mut command = redis::cmd("HGETALL");
        command.arg(key.as_str());
        let text = |value: &Value| match value {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_owned),
            _ => None,
        };
        match self.run(key, command, false).await? {
            // RESP2 answers a flat array of field, value, field, value...
            Value::Array(flat) => Ok(flat
                .chunks_exact(2)
                .filter_map(|pair| match pair {
                    [field, value] => Some((text(field)?, text(value)?.parse().ok()?)),
                    _ => None,
                })
                .collect()),
            // ...RESP3 a map.
            Value::Map(pairs) => Ok(pairs
                .iter()
                .filter_map(|(field, value)| Some((text(field)?, text(value)?.parse().ok()?)))
                .collect()),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Puts `value` under `key` for `ttl` unless the key exists; false if it
    /// did.
    pub async fn put_new(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Duration,
        durable: bool,
    ) -> Result<bool, RedisError> {
        let mut command = redis::cmd("SET");
        command
            .arg(key.as_str())
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl).max(1));
        match self.run(key, command, durable).await? {
            Value::Okay => Ok(true),
            Value::Nil => Ok(false),
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    pub async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, RedisError> {
        let mut command = redis::cmd("GET");
        command.arg(key.as_str());
        bytes(self.run(key, command, false).await?)
    }

    /// A versioned record.
    pub async fn read(&self, key: &Key) -> Result<Versioned, RedisError> {
        let mut command = redis::cmd("HMGET");
        command.arg(key.as_str()).arg("v").arg("d");
        match self.run(key, command, false).await? {
            Value::Array(values) => match values.as_slice() {
                [Value::BulkString(v), Value::BulkString(d)] => Ok(Versioned {
                    version: std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| RedisError::Unexpected("version".into()))?,
                    value: Some(d.clone()),
                }),
                _ => Ok(Versioned {
                    version: 0,
                    value: None,
                }),
            },
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Several versioned records of one slot (all keys share a tag), read
    /// at one moment.
    pub async fn read_many(&self, keys: &[&Key]) -> Result<Vec<Versioned>, RedisError> {
        let Some(first) = keys.first() else {
            return Ok(Vec::new());
        };
        let mut command = eval(&READ_MANY);
        command.arg(keys.len());
        for key in keys {
            command.arg(key.as_str());
        }
        records(self.run(first, command, false).await?)
    }

    /// One issuance counted on `limit` (as `gcra`) and records of its slot
    /// read, in one round trip.
    pub async fn gcra_and_read(
        &self,
        limit: &Key,
        rate: crate::ratelimit::Rate,
        now: crate::clock::Timestamp,
        keys: &[&Key],
    ) -> Result<(crate::ratelimit::Decision, Vec<Versioned>), RedisError> {
        let mut command = eval(&GCRA_READ);
        command.arg(keys.len() + 1);
        command.arg(limit.as_str());
        for key in keys {
            command.arg(key.as_str());
        }
        gcra_args(&mut command, rate, now);
        let Value::Array(parts) = self.run(limit, command, false).await? else {
            return Err(RedisError::Unexpected("gcra_and_read".into()));
        };
        let mut parts = parts.into_iter();
        let (Some(wait), Some(read)) = (parts.next(), parts.next()) else {
            return Err(RedisError::Unexpected("gcra_and_read".into()));
        };
        Ok((decision(&wait)?, records(read)?))
    }

    /// A record and the records it names (`Op::Link`), read at one moment:
    /// the record, then each named one with its name.
    pub async fn read_linked(
        &self,
        key: &Key,
    ) -> Result<(Versioned, Vec<(String, Versioned)>), RedisError> {
        let mut command = eval(&READ_LINKED);
        command.arg(1).arg(key.as_str());
        let Value::Array(parts) = self.run(key, command, false).await? else {
            return Err(RedisError::Unexpected("read_linked".into()));
        };
        let mut parts = parts.into_iter();
        let (Some(read), Some(Value::BulkString(names))) = (parts.next(), parts.next()) else {
            return Err(RedisError::Unexpected("read_linked".into()));
        };
        let mut read = records(read)?.into_iter();
        let record = read
            .next()
            .ok_or_else(|| RedisError::Unexpected("read_linked".into()))?;
        let names = String::from_utf8_lossy(&names).into_owned();
        let linked = names.lines().map(str::to_owned).zip(read).collect();
        Ok((record, linked))
    }

    /// The ids in the set `set`, records of its slot (`keys`), and for
    /// each id the records named by each of `each` followed by the id (id
    /// by id), read at one moment.
    pub async fn read_set(
        &self,
        set: &Key,
        keys: &[&Key],
        each: &[&str],
    ) -> Result<(Vec<Vec<u8>>, Vec<Versioned>, Vec<Versioned>), RedisError> {
        let mut command = eval(&READ_SET);
        command.arg(keys.len() + 1).arg(set.as_str());
        for key in keys {
            command.arg(key.as_str());
        }
        command.arg(each);
        let Value::Array(parts) = self.run(set, command, false).await? else {
            return Err(RedisError::Unexpected("read_set".into()));
        };
        let mut parts = parts.into_iter();
        let (Some(Value::Array(ids)), Some(fixed), Some(per_id)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(RedisError::Unexpected("read_set".into()));
        };
        let ids = ids
            .into_iter()
            .map(|id| match id {
                Value::BulkString(id) => Ok(id),
                other => Err(RedisError::Unexpected(format!("{other:?}"))),
            })
            .collect::<Result<_, _>>()?;
        Ok((ids, records(fixed)?, records(per_id)?))
    }

    /// Compare-and-swap on several versioned records of one slot at once:
    /// each `(key, expected version, change)`. True when every version
    /// matched and every change was made; false (nothing changed) if one
    /// did not.
    pub async fn transact(
        &self,
        changes: &[(&Key, u64, Op)],
        durable: bool,
    ) -> Result<bool, RedisError> {
        let Some((first, _, _)) = changes.first() else {
            return Ok(true);
        };
        let mut command = eval(&TRANSACT);
        command.arg(changes.len());
        for (key, _, _) in changes {
            command.arg(key.as_str());
        }
        transact_args(&mut command, changes);
        Ok(int(&self.run(first, command, durable).await?)? == 1)
    }

    /// One issuance counted on `limit` (as `gcra`) and, when it is
    /// allowed, `changes` made on records of its slot as `transact` makes
    /// them, in one round trip. Answers the decision, whether the changes
    /// were made, and when they were not (a version had moved) the records
    /// `back` as they are.
    pub async fn gcra_and_transact(
        &self,
        limit: &Key,
        rate: crate::ratelimit::Rate,
        now: crate::clock::Timestamp,
        changes: &[(&Key, u64, Op)],
        back: &[&Key],
        durable: bool,
    ) -> Result<(crate::ratelimit::Decision, bool, Vec<Versioned>), RedisError> {
        let mut command = eval(&GCRA_TRANSACT);
        command
            .arg(1 + changes.len() + back.len())
            .arg(limit.as_str());
        for key in changes
            .iter()
            .map(|(key, _, _)| *key)
            .chain(back.iter().copied())
        {
            command.arg(key.as_str());
        }
        gcra_args(&mut command, rate, now);
        command.arg(changes.len());
        transact_args(&mut command, changes);
        let Value::Array(parts) = self.run(limit, command, durable).await? else {
            return Err(RedisError::Unexpected("gcra_and_transact".into()));
        };
        let mut parts = parts.into_iter();
        let (Some(wait), Some(changed), Some(read)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(RedisError::Unexpected("gcra_and_transact".into()));
        };
        Ok((decision(&wait)?, int(&changed)? == 1, records(read)?))
    }

    /// Writes `value` if the record is still at `expected` (0: absent).
    pub async fn swap(
        &self,
        key: &Key,
        expected: u64,
        value: &[u8],
        ttl: Option<Duration>,
        durable: bool,
    ) -> Result<Swap, RedisError> {
        let mut command = eval(SWAP);
        command
            .arg(1)
            .arg(key.as_str())
            .arg(expected)
            .arg(value)
            .arg(ttl.map_or(0, |t| millis(t).max(1)));
        let version = int(&self.run(key, command, durable).await?)?;
        Ok(u64::try_from(version).map_or(Swap::Conflict, Swap::Done))
    }

    /// Adds `amount` to the counter `today` if it and the sum of `today`
    /// and `earlier` (counters of the same slot) stay within their limits
    /// (`None`: no limit). Answers whether it was added, and both totals
    /// before. A new counter lives `ttl`.
    pub async fn add_under_limits(
        &self,
        today: &Key,
        earlier: &[Key],
        amount: u64,
        limits: (Option<u64>, Option<u64>),
        ttl: Duration,
    ) -> Result<(bool, u64, u64), RedisError> {
        let limit = |l: Option<u64>| l.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut command = eval(BOOK_UNDER_LIMITS);
        command.arg(1 + earlier.len()).arg(today.as_str());
        for key in earlier {
            command.arg(key.as_str());
        }
        command
            .arg(amount)
            .arg(limit(limits.0))
            .arg(limit(limits.1))
            .arg(millis(ttl).max(1));
        match self.run(today, command, true).await? {
            Value::Array(values) => match values.as_slice() {
                [booked, day, window] => {
                    let count = |v: &Value| int(v).map(|n| u64::try_from(n).unwrap_or(0));
                    Ok((int(booked)? == 1, count(day)?, count(window)?))
                }
                other => Err(RedisError::Unexpected(format!("{other:?}"))),
            },
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Appends `entry` to the log at `log`, numbered by `counter` (same
    /// slot); its sequence number, from 1.
    pub async fn append_log(
        &self,
        counter: &Key,
        log: &Key,
        entry: &[u8],
    ) -> Result<u64, RedisError> {
        let mut command = eval(APPEND_LOG);
        command
            .arg(2)
            .arg(counter.as_str())
            .arg(log.as_str())
            .arg(entry);
        let seq = int(&self.run(counter, command, true).await?)?;
        u64::try_from(seq).map_err(|_| RedisError::Unexpected(format!("sequence {seq}")))
    }

    /// The names of up to `count` keys in hash slot `slot`, asked of the
    /// slot's master (`CLUSTER GETKEYSINSLOT`).
    pub async fn keys_in_slot(&self, slot: u16, count: usize) -> Result<Vec<Key>, RedisError> {
        let mut command = redis::cmd("CLUSTER");
        command.arg("GETKEYSINSLOT").arg(slot).arg(count);
        let route = Key::new(super::slots::tag_for(slot), "keys");
        Ok(byte_strings(self.run(&route, command, false).await?)?
            .into_iter()
            .map(|name| Key::named(String::from_utf8_lossy(&name).into_owned()))
            .collect())
    }

    /// Replaces the entry at `index` of the list at `key` by `value` if
    /// it still holds `old`; whether it did.
    pub async fn set_at_if(
        &self,
        key: &Key,
        index: u64,
        old: &[u8],
        value: &[u8],
    ) -> Result<bool, RedisError> {
        let mut command = eval(SET_AT_IF);
        command
            .arg(1)
            .arg(key.as_str())
            .arg(index)
            .arg(old)
            .arg(value);
        Ok(int(&self.run(key, command, true).await?)? == 1)
    }

    /// Up to `count` entries of the list at `key` from index `start`.
    pub async fn range(
        &self,
        key: &Key,
        start: u64,
        count: usize,
    ) -> Result<Vec<Vec<u8>>, RedisError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let stop = start.saturating_add(count as u64 - 1);
        let mut command = redis::cmd("LRANGE");
        command.arg(key.as_str()).arg(start).arg(stop);
        byte_strings(self.run(key, command, false).await?)
    }

    /// One event against the GCRA limiter at `key` (see `GCRA`): allowed,
    /// or how long until it would be.
    pub async fn gcra(
        &self,
        key: &Key,
        rate: crate::ratelimit::Rate,
        now: crate::clock::Timestamp,
    ) -> Result<crate::ratelimit::Decision, RedisError> {
        let mut command = eval(&GCRA);
        command.arg(1).arg(key.as_str());
        gcra_args(&mut command, rate, now);
        decision(&self.run(key, command, false).await?)
    }
}

/// The GCRA's arguments: now, the interval and the tolerance, in µs.
fn gcra_args(command: &mut Cmd, rate: crate::ratelimit::Rate, now: crate::clock::Timestamp) {
    command
        .arg(now.0.saturating_mul(1000))
        .arg(rate.interval_micros())
        .arg(rate.tolerance_micros());
}

/// The GCRA's answer: 0 allowed, else the µs until it would be.
fn decision(wait: &Value) -> Result<crate::ratelimit::Decision, RedisError> {
    Ok(match u64::try_from(int(wait)?) {
        Ok(0) | Err(_) => crate::ratelimit::Decision::Allow,
        Ok(micros) => crate::ratelimit::Decision::Deny {
            retry_after: Duration::from_micros(micros),
        },
    })
}

/// Records as the scripts' `read` answers them.
fn records(value: Value) -> Result<Vec<Versioned>, RedisError> {
    let Value::Array(records) = value else {
        return Err(RedisError::Unexpected("records".into()));
    };
    records
        .into_iter()
        .map(|record| match record {
            Value::Array(pair) => match pair.as_slice() {
                [Value::BulkString(v), Value::BulkString(d)] => {
                    let version = std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| RedisError::Unexpected("version".into()))?;
                    Ok(Versioned {
                        version,
                        value: (version > 0).then(|| d.clone()),
                    })
                }
                other => Err(RedisError::Unexpected(format!("{other:?}"))),
            },
            other => Err(RedisError::Unexpected(format!("{other:?}"))),
        })
        .collect()
}

fn single(key: &Key) -> SingleNodeRoutingInfo {
    SingleNodeRoutingInfo::SpecificNode(Route::with_key(key.as_str(), SlotAddr::Master))
}

fn route(key: &Key) -> redis::cluster_routing::RoutingInfo {
    redis::cluster_routing::RoutingInfo::SingleNode(single(key))
}

/// A list or set of byte strings (nil: none).
fn byte_strings(value: Value) -> Result<Vec<Vec<u8>>, RedisError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(values) | Value::Set(values) => values
            .into_iter()
            .map(|value| match value {
                Value::BulkString(bytes) => Ok(bytes),
                other => Err(RedisError::Unexpected(format!("{other:?}"))),
            })
            .collect(),
        other => Err(RedisError::Unexpected(format!("{other:?}"))),
    }
}

fn bytes(value: Value) -> Result<Option<Vec<u8>>, RedisError> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => Ok(Some(bytes)),
        other => Err(RedisError::Unexpected(format!("{other:?}"))),
    }
}
