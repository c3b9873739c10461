//! Redis in memory: the commands and scripts the cluster store sends
//! (`redis.rs`), answered by one process with Redis's semantics, so that
//! the fuzz target, the replay, the loom models and the engine's tests run
//! the cluster store's whole logic — encoding, scripts, versions, retries
//! — deterministically and without a server.
//!
//! What differs from a server, on purpose:
//!
//! - time is the caller's ([`MemoryRedis::set_now`]): a TTL lapses when the
//!   simulated clock passes it, as the replay's weeks pass in seconds;
//! - a compare-and-swap can be told to lose ([`MemoryRedis::interfere`]):
//!   the next writes find their records "changed by another node" and
//!   write nothing, so the read–decide–write loops are driven through
//!   their retries on demand;
//! - a waiting pop does not wait, and nothing is replicated (`WAIT` is not
//!   sent: there are no replicas);
//! - sets list their members in order (a server lists them in any order,
//!   which the store must not depend on).
//!
//! Each script has its Rust twin below, named as the script; the
//! `redis_store` suite runs the same calls against a real cluster and
//! this, and compares every answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use redis::{Cmd, Value};

use super::redis::{
    APPEND_LOG, BOOK_UNDER_LIMITS, DELETE_IF, GCRA, GCRA_READ, GCRA_TRANSACT, HOLD, PUSH_BACK,
    READ_LINKED, READ_MANY, READ_SET, REPLACE_IF, RedisError, SET_AT_IF, SWAP, TRANSACT,
};
use crate::clock::Timestamp;
use crate::sync::Mutex;

/// A Redis Cluster in one process's memory (see the module's comment).
pub struct MemoryRedis {
    keyspace: Mutex<Keyspace>,
}

impl std::fmt::Debug for MemoryRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryRedis")
    }
}

impl Default for MemoryRedis {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
struct Keyspace {
    now_ms: u64,
    entries: BTreeMap<Vec<u8>, Entry>,
    /// Compare-and-swaps still to lose (`interfere`).
    conflicts: u32,
    /// Commands answered (each is one round trip on a server).
    commands: u64,
    /// Key names by slot: made by the first `CLUSTER GETKEYSINSLOT`, then
    /// given every name made after it (a name whose key is gone leaves
    /// when its slot is asked for). A rotation's pass asks for each of the
    /// 16,384 slots in turn: each name is read once a pass, not once a
    /// slot.
    by_slot: Option<BTreeMap<u16, BTreeSet<Vec<u8>>>>,
}

struct Entry {
    data: Data,
    /// When it lapses (ms since the epoch); `None`: never.
    expires_at: Option<u64>,
}

enum Data {
    Text(Vec<u8>),
    Hash(BTreeMap<Vec<u8>, Vec<u8>>),
    Set(BTreeSet<Vec<u8>>),
    /// Front is the left end (`LPUSH`), back the right (`RPUSH`, `RPOP`).
    List(VecDeque<Vec<u8>>),
    /// Member → score.
    Sorted(BTreeMap<Vec<u8>, u64>),
}

impl MemoryRedis {
    pub fn new() -> Self {
        Self {
            keyspace: Mutex::new(Keyspace::default()),
        }
    }

    fn keyspace(&self) -> crate::sync::MutexGuard<'_, Keyspace> {
        self.keyspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store's clock: TTLs lapse by it. It never goes back.
    pub fn set_now(&self, now: Timestamp) {
        let mut keyspace = self.keyspace();
        keyspace.now_ms = keyspace.now_ms.max(now.0);
    }

    /// The next `writes` compare-and-swaps (a `transact`, a `swap`, an
    /// audit entry's rewrite) on records that exist find them changed and
    /// write nothing, as when another node wins the race.
    pub fn interfere(&self, writes: u32) {
        self.keyspace().conflicts = writes;
    }

    /// How many of the writes `interfere` asked for are still to lose.
    pub fn interfering(&self) -> u32 {
        self.keyspace().conflicts
    }

    /// The live keys whose name or any value holds `needle` (what an
    /// erasure must leave none of).
    pub fn keys_holding(&self, needle: &[u8]) -> Vec<String> {
        let holds =
            |bytes: &[u8]| !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle);
        let mut keyspace = self.keyspace();
        let now = keyspace.now_ms;
        keyspace
            .entries
            .retain(|_, e| e.expires_at.is_none_or(|at| at > now));
        keyspace
            .entries
            .iter()
            .filter(|(key, entry)| {
                holds(key)
                    || match &entry.data {
                        Data::Text(value) => holds(value),
                        Data::Hash(fields) => fields.iter().any(|(f, v)| holds(f) || holds(v)),
                        Data::Set(members) => members.iter().any(|m| holds(m)),
                        Data::List(items) => items.iter().any(|i| holds(i)),
                        Data::Sorted(members) => members.keys().any(|m| holds(m)),
                    }
            })
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
            .collect()
    }

    /// How many commands it has answered (a server's round trips).
    pub fn commands(&self) -> u64 {
        self.keyspace().commands
    }

    /// Answers `command` as a server would (a command or script sls does
    /// not send is an error).
    pub(super) fn run(&self, command: &Cmd) -> Result<Value, RedisError> {
        let args: Vec<&[u8]> = command
            .args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(bytes),
                _ => None,
            })
            .collect();
        let Some((name, args)) = args.split_first() else {
            return Err(unexpected("an empty command"));
        };
        let mut keyspace = self.keyspace();
        keyspace.commands += 1;
        match name.to_ascii_uppercase().as_slice() {
            b"EVALSHA" | b"EVAL" => {
                let (script, args) = args.split_first().ok_or_else(|| unexpected("EVAL"))?;
                let text = if name.eq_ignore_ascii_case(b"EVAL") {
                    std::str::from_utf8(script).map_err(|_| unexpected("EVAL"))?
                } else {
                    super::redis::script_text(script).ok_or_else(|| unexpected("NOSCRIPT"))?
                };
                let (count, rest) = args.split_first().ok_or_else(|| unexpected("EVAL"))?;
                let count = number(count)?;
                let count = usize::try_from(count).map_err(|_| unexpected("numkeys"))?;
                if count > rest.len() {
                    return Err(unexpected("numkeys"));
                }
                let (keys, argv) = rest.split_at(count);
                keyspace.script(text, keys, argv)
            }
            other => keyspace.command(other, args),
        }
    }
}

fn unexpected(what: &str) -> RedisError {
    RedisError::Unexpected(format!("in-memory redis: {what}"))
}

/// An argument or stored value as an integer (as Redis's `tonumber`).
fn number(bytes: &[u8]) -> Result<i64, RedisError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| {
            text.parse::<i64>()
                .ok()
                .or_else(|| text.parse::<f64>().ok().map(|f| f as i64))
        })
        .ok_or_else(|| unexpected("not a number"))
}

fn unsigned(bytes: &[u8]) -> Result<u64, RedisError> {
    u64::try_from(number(bytes)?).map_err(|_| unexpected("a negative number"))
}

fn text(bytes: &[u8]) -> Value {
    Value::BulkString(bytes.to_vec())
}

fn int(n: u64) -> Value {
    Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl Keyspace {
    /// The live entry at `key` (a lapsed one is removed first).
    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let now = self.now_ms;
        if self
            .entries
            .get(key)
            .is_some_and(|entry| entry.expires_at.is_some_and(|at| at <= now))
        {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn string(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self.live(key) {
            Some(Entry {
                data: Data::Text(value),
                ..
            }) => Some(value.clone()),
            _ => None,
        }
    }

    fn put(&mut self, key: &[u8], data: Data, ttl_ms: Option<u64>) {
        let expires_at = ttl_ms.map(|ttl| self.now_ms + ttl);
        self.index(key);
        self.entries
            .insert(key.to_vec(), Entry { data, expires_at });
    }

    /// Gives `key`'s name to the index by slot, once there is one.
    fn index(&mut self, key: &[u8]) {
        if let Some(by_slot) = &mut self.by_slot {
            by_slot
                .entry(super::slots::slot_of_key(key))
                .or_default()
                .insert(key.to_vec());
        }
    }

    fn expire_in(&mut self, key: &[u8], ttl_ms: Option<u64>) {
        let now = self.now_ms;
        if let Some(entry) = self.live(key) {
            entry.expires_at = ttl_ms.map(|ttl| now + ttl);
        }
    }

    /// The hash at `key`, made if absent (a key of another type is replaced,
    /// which a server would refuse; sls never mixes types on a key).
    fn hash(&mut self, key: &[u8]) -> &mut BTreeMap<Vec<u8>, Vec<u8>> {
        if !matches!(
            self.live(key),
            Some(Entry {
                data: Data::Hash(_),
                ..
            })
        ) {
            self.put(key, Data::Hash(BTreeMap::new()), None);
        }
        match self.entries.get_mut(key) {
            Some(Entry {
                data: Data::Hash(hash),
                ..
            }) => hash,
            _ => unreachable!("a hash was just put at the key"),
        }
    }

    /// The list at `key`, made if absent (as `hash`).
    fn list(&mut self, key: &[u8]) -> &mut VecDeque<Vec<u8>> {
        if !matches!(
            self.live(key),
            Some(Entry {
                data: Data::List(_),
                ..
            })
        ) {
            self.put(key, Data::List(VecDeque::new()), None);
        }
        match self.entries.get_mut(key) {
            Some(Entry {
                data: Data::List(list),
                ..
            }) => list,
            _ => unreachable!("a list was just put at the key"),
        }
    }

    fn field(&mut self, key: &[u8], field: &[u8]) -> Option<Vec<u8>> {
        match self.live(key) {
            Some(Entry {
                data: Data::Hash(hash),
                ..
            }) => hash.get(field).cloned(),
            _ => None,
        }
    }

    /// Drops a set, list, hash or sorted set that became empty, as Redis does.
    fn drop_if_empty(&mut self, key: &[u8]) {
        let empty = match self.entries.get(key).map(|entry| &entry.data) {
            Some(Data::Hash(hash)) => hash.is_empty(),
            Some(Data::Set(set)) => set.is_empty(),
            Some(Data::List(list)) => list.is_empty(),
            Some(Data::Sorted(sorted)) => sorted.is_empty(),
            _ => false,
        };
        if empty {
            self.entries.remove(key);
        }
    }

    fn incr_by(&mut self, key: &[u8], amount: i64) -> Result<i64, RedisError> {
        let now = self.now_ms;
        let value = match self.string(key) {
            Some(value) => number(&value)?,
            None => 0,
        } + amount;
        // INCR keeps the key's expiry.
        let expires_at = self
            .live(key)
            .and_then(|entry| entry.expires_at)
            .filter(|at| *at > now);
        self.index(key);
        self.entries.insert(
            key.to_vec(),
            Entry {
                data: Data::Text(value.to_string().into_bytes()),
                expires_at,
            },
        );
        Ok(value)
    }

    fn command(&mut self, name: &[u8], args: &[&[u8]]) -> Result<Value, RedisError> {
        let key = args.first().copied().unwrap_or_default();
        Ok(match name {
            b"GET" => self.string(key).map_or(Value::Nil, Value::BulkString),
            b"MGET" => Value::Array(
                args.iter()
                    .map(|key| self.string(key).map_or(Value::Nil, Value::BulkString))
                    .collect(),
            ),
            b"SET" => {
                let value = args.get(1).ok_or_else(|| unexpected("SET"))?;
                let mut only_new = false;
                let mut ttl = None;
                let mut options = args.iter().skip(2);
                while let Some(option) = options.next() {
                    if option.eq_ignore_ascii_case(b"NX") {
                        only_new = true;
                    } else if option.eq_ignore_ascii_case(b"PX") {
                        ttl = Some(unsigned(options.next().ok_or_else(|| unexpected("PX"))?)?);
                    } else {
                        return Err(unexpected("a SET option"));
                    }
                }
                if only_new && self.live(key).is_some() {
                    return Ok(Value::Nil);
                }
                self.put(key, Data::Text(value.to_vec()), ttl);
                Value::Okay
            }
            b"DEL" => {
                let mut deleted = 0;
                for key in args {
                    if self.live(key).is_some() {
                        self.entries.remove(*key);
                        deleted += 1;
                    }
                }
                int(deleted)
            }
            b"INCR" => Value::Int(self.incr_by(key, 1)?),
            b"SADD" | b"SREM" => {
                let members = args.get(1..).filter(|m| !m.is_empty());
                let members = members.ok_or_else(|| unexpected("a set member"))?;
                if name == b"SADD"
                    && !matches!(
                        self.live(key),
                        Some(Entry {
                            data: Data::Set(_),
                            ..
                        })
                    )
                {
                    self.put(key, Data::Set(BTreeSet::new()), None);
                }
                let mut changed = 0;
                if let Some(Entry {
                    data: Data::Set(set),
                    ..
                }) = self.live(key)
                {
                    for member in members {
                        let done = if name == b"SADD" {
                            set.insert(member.to_vec())
                        } else {
                            set.remove(*member)
                        };
                        changed += u64::from(done);
                    }
                }
                self.drop_if_empty(key);
                int(changed)
            }
            b"SMEMBERS" => Value::Array(self.members(key).iter().map(|m| text(m)).collect()),
            b"ZREM" => {
                let member = args.get(1).ok_or_else(|| unexpected("ZREM"))?;
                let removed = match self.live(key) {
                    Some(Entry {
                        data: Data::Sorted(sorted),
                        ..
                    }) => sorted.remove(*member).is_some(),
                    _ => false,
                };
                self.drop_if_empty(key);
                int(u64::from(removed))
            }
            b"RPOP" => {
                let count = args.get(1).map_or(Ok(1), |n| unsigned(n))?;
                let popped = self.pop_back(key, count);
                if popped.is_empty() {
                    Value::Nil
                } else {
                    Value::Array(popped.into_iter().map(Value::BulkString).collect())
                }
            }
            // BLMPOP timeout 1 key RIGHT COUNT n: it does not wait here.
            b"BLMPOP" => {
                let (Some(key), Some(count)) = (args.get(2), args.get(5)) else {
                    return Err(unexpected("BLMPOP"));
                };
                let popped = self.pop_back(key, unsigned(count)?);
                if popped.is_empty() {
                    Value::Nil
                } else {
                    Value::Array(vec![
                        text(key),
                        Value::Array(popped.into_iter().map(Value::BulkString).collect()),
                    ])
                }
            }
            b"CLUSTER" if key.eq_ignore_ascii_case(b"GETKEYSINSLOT") => {
                let slot = unsigned(args.get(1).ok_or_else(|| unexpected("CLUSTER"))?)?;
                let slot = u16::try_from(slot).map_err(|_| unexpected("a slot"))?;
                let count = unsigned(args.get(2).ok_or_else(|| unexpected("CLUSTER"))?)?;
                let now = self.now_ms;
                let entries = &self.entries;
                let by_slot = self.by_slot.get_or_insert_with(|| {
                    let mut by_slot: BTreeMap<u16, BTreeSet<Vec<u8>>> = BTreeMap::new();
                    for name in entries.keys() {
                        let slot = super::slots::slot_of_key(name);
                        by_slot.entry(slot).or_default().insert(name.clone());
                    }
                    by_slot
                });
                let names = by_slot.entry(slot).or_default();
                names.retain(|name| entries.contains_key(name));
                Value::Array(
                    names
                        .iter()
                        .filter(|name| {
                            entries
                                .get(*name)
                                .is_some_and(|entry| entry.expires_at.is_none_or(|at| at > now))
                        })
                        .take(usize::try_from(count).unwrap_or(usize::MAX))
                        .map(|name| Value::BulkString(name.clone()))
                        .collect(),
                )
            }
            b"LRANGE" => {
                let (Some(start), Some(stop)) = (args.get(1), args.get(2)) else {
                    return Err(unexpected("LRANGE"));
                };
                let (start, stop) = (unsigned(start)?, unsigned(stop)?);
                let values = match self.live(key) {
                    Some(Entry {
                        data: Data::List(list),
                        ..
                    }) => list
                        .iter()
                        .skip(usize::try_from(start).unwrap_or(usize::MAX))
                        .take(usize::try_from(stop.saturating_sub(start) + 1).unwrap_or(0))
                        .map(|v| text(v))
                        .collect(),
                    _ => Vec::new(),
                };
                Value::Array(values)
            }
            b"HSET" => {
                let (Some(field), Some(value)) = (args.get(1), args.get(2)) else {
                    return Err(unexpected("HSET"));
                };
                let added = self.hash(key).insert(field.to_vec(), value.to_vec());
                int(u64::from(added.is_none()))
            }
            b"HDEL" => {
                let field = args.get(1).ok_or_else(|| unexpected("HDEL"))?;
                let removed = match self.live(key) {
                    Some(Entry {
                        data: Data::Hash(hash),
                        ..
                    }) => hash.remove(*field).is_some(),
                    _ => false,
                };
                self.drop_if_empty(key);
                int(u64::from(removed))
            }
            b"HVALS" => match self.live(key) {
                Some(Entry {
                    data: Data::Hash(hash),
                    ..
                }) => Value::Array(hash.values().map(|v| text(v)).collect()),
                _ => Value::Array(Vec::new()),
            },
            b"HGETALL" => match self.live(key) {
                Some(Entry {
                    data: Data::Hash(hash),
                    ..
                }) => Value::Array(
                    hash.iter()
                        .flat_map(|(field, value)| [text(field), text(value)])
                        .collect(),
                ),
                _ => Value::Array(Vec::new()),
            },
            b"HMGET" => Value::Array(
                args.iter()
                    .skip(1)
                    .map(|field| self.field(key, field).map_or(Value::Nil, Value::BulkString))
                    .collect(),
            ),
            _ => return Err(unexpected("a command sls does not send")),
        })
    }

    fn members(&mut self, key: &[u8]) -> Vec<Vec<u8>> {
        match self.live(key) {
            Some(Entry {
                data: Data::Set(set),
                ..
            }) => set.iter().cloned().collect(),
            _ => Vec::new(),
        }
    }

    fn pop_back(&mut self, key: &[u8], count: u64) -> Vec<Vec<u8>> {
        let mut popped = Vec::new();
        if let Some(Entry {
            data: Data::List(list),
            ..
        }) = self.live(key)
        {
            while (popped.len() as u64) < count.max(1) {
                match list.pop_back() {
                    Some(value) => popped.push(value),
                    None => break,
                }
            }
        }
        self.drop_if_empty(key);
        popped
    }

    fn version(&mut self, key: &[u8]) -> Result<u64, RedisError> {
        self.field(key, b"v").map_or(Ok(0), |v| unsigned(&v))
    }

    /// The scripts' `read`: per key {version or "0", value or ""}.
    fn read(&mut self, keys: &[&[u8]]) -> Value {
        Value::Array(
            keys.iter()
                .map(|key| {
                    let version = self.field(key, b"v").unwrap_or_else(|| b"0".to_vec());
                    let value = self.field(key, b"d").unwrap_or_default();
                    Value::Array(vec![Value::BulkString(version), Value::BulkString(value)])
                })
                .collect(),
        )
    }

    /// The scripts' `gcra` (µs): 0 and the event recorded, or the wait.
    fn gcra(
        &mut self,
        key: &[u8],
        now: i64,
        interval: i64,
        tolerance: i64,
    ) -> Result<i64, RedisError> {
        let stored = match self.string(key) {
            Some(value) => number(&value)?,
            None => 0,
        };
        let tat = stored.max(now);
        let allow_at = tat - tolerance;
        if allow_at > now {
            return Ok(allow_at - now);
        }
        let next = tat + interval;
        let ttl = u64::try_from((next - now + 999) / 1000).unwrap_or(0).max(1);
        self.put(key, Data::Text(next.to_string().into_bytes()), Some(ttl));
        Ok(0)
    }

    /// The scripts' `transact`: five arguments per key from `args[0]`.
    fn transact(&mut self, keys: &[&[u8]], args: &[&[u8]]) -> Result<bool, RedisError> {
        if args.len() < keys.len() * 5 {
            return Err(unexpected("transact's arguments"));
        }
        let changes: Vec<(&[u8], [&[u8]; 5])> = keys
            .iter()
            .zip(args.chunks_exact(5))
            .filter_map(|(key, args)| Some((*key, <[&[u8]; 5]>::try_from(args).ok()?)))
            .collect();
        for (key, [version, ..]) in &changes {
            if self.version(key)? != unsigned(version)? {
                return Ok(false);
            }
        }
        // Only a write on a record that exists can lose to another node (a
        // new record's name is a fresh random id or the user's own).
        let existing = changes.iter().any(|(_, [version, ..])| *version != b"0");
        if existing && self.conflicts > 0 {
            self.conflicts -= 1;
            return Ok(false);
        }
        for (key, [_, op, value, ttl, links]) in changes {
            match op {
                b"s" => {
                    let version = self.version(key)? + 1;
                    let ttl = unsigned(ttl)?;
                    let hash = self.hash(key);
                    hash.insert(b"v".to_vec(), version.to_string().into_bytes());
                    hash.insert(b"d".to_vec(), value.to_vec());
                    if !links.is_empty() {
                        hash.insert(b"k".to_vec(), links.to_vec());
                    }
                    self.expire_in(key, (ttl > 0).then_some(ttl));
                }
                b"d" => {
                    self.entries.remove(key);
                }
                _ => {}
            }
        }
        Ok(true)
    }

    fn script(&mut self, text: &str, keys: &[&[u8]], argv: &[&[u8]]) -> Result<Value, RedisError> {
        let arg = |n: usize| {
            argv.get(n)
                .copied()
                .ok_or_else(|| unexpected("an argument"))
        };
        let key = |n: usize| keys.get(n).copied().ok_or_else(|| unexpected("a key"));
        // The records after a script's first key (a limit, a set, a day).
        let rest = keys.get(1..).unwrap_or_default();
        let gcra_args = || -> Result<(i64, i64, i64), RedisError> {
            Ok((number(arg(0)?)?, number(arg(1)?)?, number(arg(2)?)?))
        };
        if text == SWAP {
            let (key, expected) = (key(0)?, unsigned(arg(0)?)?);
            if self.version(key)? != expected {
                return Ok(Value::Int(-1));
            }
            if expected > 0 && self.conflicts > 0 {
                self.conflicts -= 1;
                return Ok(Value::Int(-1));
            }
            let version = expected + 1;
            let ttl = unsigned(arg(2)?)?;
            let value = arg(1)?.to_vec();
            let hash = self.hash(key);
            hash.insert(b"v".to_vec(), version.to_string().into_bytes());
            hash.insert(b"d".to_vec(), value);
            self.expire_in(key, (ttl > 0).then_some(ttl));
            Ok(int(version))
        } else if text == GCRA.as_str() {
            let (now, interval, tolerance) = gcra_args()?;
            Ok(Value::Int(self.gcra(key(0)?, now, interval, tolerance)?))
        } else if text == GCRA_READ.as_str() {
            let (now, interval, tolerance) = gcra_args()?;
            let wait = self.gcra(key(0)?, now, interval, tolerance)?;
            Ok(Value::Array(vec![Value::Int(wait), self.read(rest)]))
        } else if text == READ_MANY.as_str() {
            Ok(self.read(keys))
        } else if text == READ_LINKED.as_str() {
            let first = key(0)?;
            let names = self.field(first, b"k").unwrap_or_default();
            let mut linked = vec![first];
            linked.extend(names.split(|b| *b == b'\n').filter(|name| !name.is_empty()));
            Ok(Value::Array(vec![
                self.read(&linked),
                Value::BulkString(names),
            ]))
        } else if text == READ_SET.as_str() {
            let ids = self.members(key(0)?);
            let fixed = self.read(rest);
            let names: Vec<Vec<u8>> = ids
                .iter()
                .flat_map(|id| argv.iter().map(move |name| [*name, id.as_slice()].concat()))
                .collect();
            let each: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
            let each = self.read(&each);
            let ids = Value::Array(ids.into_iter().map(Value::BulkString).collect());
            Ok(Value::Array(vec![ids, fixed, each]))
        } else if text == TRANSACT.as_str() {
            Ok(int(u64::from(self.transact(keys, argv)?)))
        } else if text == GCRA_TRANSACT.as_str() {
            let (now, interval, tolerance) = gcra_args()?;
            let wait = self.gcra(key(0)?, now, interval, tolerance)?;
            if wait > 0 {
                return Ok(Value::Array(vec![
                    Value::Int(wait),
                    Value::Int(0),
                    Value::Array(Vec::new()),
                ]));
            }
            let changed = usize::try_from(unsigned(arg(3)?)?).unwrap_or(usize::MAX);
            if changed > rest.len() {
                return Err(unexpected("gcra_and_transact's count"));
            }
            let (changes, back) = rest.split_at(changed);
            if self.transact(changes, argv.get(4..).unwrap_or_default())? {
                return Ok(Value::Array(vec![
                    Value::Int(0),
                    Value::Int(1),
                    Value::Array(Vec::new()),
                ]));
            }
            Ok(Value::Array(vec![
                Value::Int(0),
                Value::Int(0),
                self.read(back),
            ]))
        } else if text == DELETE_IF {
            let key = key(0)?;
            if self.string(key).as_deref() == Some(arg(0)?) {
                self.entries.remove(key);
                return Ok(Value::Int(1));
            }
            Ok(Value::Int(0))
        } else if text == REPLACE_IF {
            let key = key(0)?;
            if self.string(key).as_deref() == Some(arg(0)?) {
                self.put(key, Data::Text(arg(1)?.to_vec()), None);
                return Ok(Value::Int(1));
            }
            Ok(Value::Int(0))
        } else if text == SET_AT_IF {
            let index = usize::try_from(unsigned(arg(0)?)?).unwrap_or(usize::MAX);
            let (old, value) = (arg(1)?, arg(2)?);
            let held = match self.live(key(0)?) {
                Some(Entry {
                    data: Data::List(list),
                    ..
                }) => list.get(index).cloned(),
                _ => None,
            };
            if held.as_deref() != Some(old) {
                return Ok(Value::Int(0));
            }
            // Another node's rewrite got there first.
            if self.conflicts > 0 {
                self.conflicts -= 1;
                return Ok(Value::Int(0));
            }
            if let Some(Entry {
                data: Data::List(list),
                ..
            }) = self.live(key(0)?)
                && let Some(at) = list.get_mut(index)
            {
                *at = value.to_vec();
            }
            Ok(Value::Int(1))
        } else if text == HOLD {
            let key = key(0)?;
            let (now, limit, member, until) = (
                unsigned(arg(0)?)?,
                unsigned(arg(1)?)?,
                arg(2)?,
                unsigned(arg(3)?)?,
            );
            if !matches!(
                self.live(key),
                Some(Entry {
                    data: Data::Sorted(_),
                    ..
                })
            ) {
                self.put(key, Data::Sorted(BTreeMap::new()), None);
            }
            let Some(Entry {
                data: Data::Sorted(held),
                expires_at,
            }) = self.live(key)
            else {
                return Err(unexpected("HOLD"));
            };
            held.retain(|_, lapses| *lapses > now);
            if held.len() as u64 >= limit {
                let soonest = held
                    .iter()
                    .map(|(member, lapses)| (*lapses, member))
                    .min()
                    .map_or(0, |(lapses, _)| lapses);
                let empty = held.is_empty();
                if empty {
                    self.entries.remove(key);
                }
                return Ok(int(soonest));
            }
            held.insert(member.to_vec(), until);
            *expires_at = Some(expires_at.map_or(until, |at| at.max(until)));
            Ok(Value::Int(0))
        } else if text == PUSH_BACK {
            let (key, value, ttl) = (key(0)?, arg(0)?, unsigned(arg(1)?)?);
            self.list(key).push_front(value.to_vec());
            self.expire_in(key, Some(ttl));
            Ok(Value::Int(1))
        } else if text == BOOK_UNDER_LIMITS {
            let today_key = key(0)?;
            let today = self.string(today_key).map_or(Ok(0), |v| number(&v))?;
            let mut window = today;
            for key in rest {
                window += self.string(key).map_or(Ok(0), |v| number(&v))?;
            }
            let (amount, day_limit, window_limit) =
                (number(arg(0)?)?, number(arg(1)?)?, number(arg(2)?)?);
            let over = (day_limit >= 0 && today + amount > day_limit)
                || (window_limit >= 0 && window + amount > window_limit);
            if !over {
                self.incr_by(today_key, amount)?;
                let lasting = self.live(today_key).is_some_and(|e| e.expires_at.is_some());
                if !lasting {
                    self.expire_in(today_key, Some(unsigned(arg(3)?)?));
                }
            }
            Ok(Value::Array(vec![
                Value::Int(i64::from(!over)),
                Value::Int(today),
                Value::Int(window),
            ]))
        } else if text == APPEND_LOG {
            let seq = self.incr_by(key(0)?, 1)?;
            self.list(key(1)?).push_back(arg(0)?.to_vec());
            Ok(Value::Int(seq))
        } else {
            Err(unexpected("a script sls does not send"))
        }
    }
}

/// Runs `future` — the engine's or the cluster store's work on a
/// [`MemoryRedis`] — to its end on this thread. Nothing on such a store
/// waits (no network, no pause between rounds), so no runtime is needed;
/// `None`: the future did wait (a mistake in the caller: it used
/// something other than the in-memory store).
pub fn run_now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::cluster::redis::{Key, RedisStore, Swap};

    #[test]
    fn keys_in_a_slot_follow_writes_deletes_and_expiries_after_the_first_ask() {
        let memory = Arc::new(MemoryRedis::new());
        memory.set_now(Timestamp(1_000));
        let store = RedisStore::in_memory(Arc::clone(&memory));
        // One hash tag, so one slot.
        let key = |name: &str| Key::new("u:jdoe", name);
        let slot = super::super::slots::slot_of_key(key("a").as_str().as_bytes());
        let listed = || {
            let mut names: Vec<String> = run_now(store.keys_in_slot(slot, 100))
                .unwrap()
                .unwrap()
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect();
            names.sort();
            names
        };
        run_now(store.put(&key("a"), b"1", false)).unwrap().unwrap();
        run_now(store.put(&key("b"), b"1", false)).unwrap().unwrap();
        assert_eq!(listed(), ["sls:{u:jdoe}:a", "sls:{u:jdoe}:b"]);
        // After the first ask: a new key, a deleted one, one that lapses.
        run_now(store.put(&key("c"), b"1", false)).unwrap().unwrap();
        run_now(store.delete(&[&key("a")], false)).unwrap().unwrap();
        let ttl = Duration::from_millis(10);
        run_now(store.put_with_ttl(&key("d"), b"1", ttl))
            .unwrap()
            .unwrap();
        assert_eq!(
            listed(),
            ["sls:{u:jdoe}:b", "sls:{u:jdoe}:c", "sls:{u:jdoe}:d"]
        );
        memory.set_now(Timestamp(1_010));
        assert_eq!(listed(), ["sls:{u:jdoe}:b", "sls:{u:jdoe}:c"]);
        // A deleted key made again is listed again.
        run_now(store.put(&key("a"), b"2", false)).unwrap().unwrap();
        assert_eq!(
            listed(),
            ["sls:{u:jdoe}:a", "sls:{u:jdoe}:b", "sls:{u:jdoe}:c"]
        );
    }

    #[test]
    fn ttls_lapse_by_the_stores_clock_and_interference_loses_writes() {
        let memory = Arc::new(MemoryRedis::new());
        memory.set_now(Timestamp(1_000));
        let store = RedisStore::in_memory(Arc::clone(&memory));
        let key = Key::new("u:jdoe", "c:1");
        let ttl = Duration::from_millis(500);
        assert_eq!(
            run_now(store.put_new(&key, b"x", ttl, false)).unwrap().ok(),
            Some(true)
        );
        memory.set_now(Timestamp(1_499));
        assert!(run_now(store.get(&key)).unwrap().unwrap().is_some());
        memory.set_now(Timestamp(1_000)); // the clock never goes back
        memory.set_now(Timestamp(1_500));
        assert!(run_now(store.get(&key)).unwrap().unwrap().is_none());

        let swap = |expected| run_now(store.swap(&key, expected, b"v", None, false));
        assert_eq!(swap(0).unwrap().ok(), Some(Swap::Done(1)));
        memory.interfere(2);
        assert_eq!(swap(1).unwrap().ok(), Some(Swap::Conflict));
        let write = [(&key, 1, crate::store::cluster::redis::Op::Keep)];
        let transacted = run_now(store.transact(&write, false)).unwrap().ok();
        assert_eq!(transacted, Some(false), "the second write loses too");
        assert_eq!(swap(1).unwrap().ok(), Some(Swap::Done(2)), "then it wins");
        // Seven commands, each one round trip on a server.
        assert_eq!(memory.commands(), 7);
    }
}
