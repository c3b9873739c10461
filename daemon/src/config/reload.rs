//! What a SIGHUP may change in a running daemon.
//!
//! A reload reads the file again and compares it with the running
//! configuration key by key, as written (the merged TOML, defaults
//! included). Every changed key must be one of [`LIVE_KEYS`]; one that is
//! not refuses the whole reload, naming each such key, and the running
//! configuration stays as it was: a reload applies all of a file or none
//! of it.
//!
//! A key is live when the daemon reads it where it is used (the engine's
//! configuration is swapped whole, `Engine::reconfigure`), never copied
//! at start. Everything else sizes or binds something made once at start:
//! listen addresses, certificates' name, the store and its connections,
//! the transport's windows and quotas, thread pools, the RADIUS front end,
//! the event sink, and the device profiles that records and codes are
//! made by.

use super::Config;

/// Keys (and tables, with every key under them) a reload may change.
///
/// Rates and capacities apply from the next request; a TTL or a lockout
/// length applies to what is issued or decided after the reload (a
/// challenge already issued keeps the expiry it was given); the server's
/// per-connection rates apply to each request (`server.*-per-*`).
pub const LIVE_KEYS: &[&str] = &[
    "server.requests-per-connection-per-second",
    "server.issuance-per-connection-per-second",
    "server.failed-proofs-per-connection-per-minute",
    "challenges.ttl",
    "challenges.attempts",
    "challenges.capacity",
    "challenges.per-user-per-minute",
    "challenges.per-device-per-day",
    "challenges.remembered-questions",
    "lockout",
    "sms.ttl",
    "sms.resend-interval",
    "sms.max-sends",
    "sms.max-checks",
    "sms.sends-per-number-per-hour",
    "sms.sends-per-prefix-per-minute",
    "sms.sends-per-range-per-minute",
    "sms.allowed-country-codes",
    "sms.capacity",
    "carrier",
    "push.ttl",
    "push.pending-per-user",
    "push.capacity",
    "lifecycle",
    "withdrawals",
    "tokens",
    "keys",
];

/// A reload that would change keys a running daemon cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} cannot change while the daemon runs (restart it to change {}); the running configuration stays as it was",
    keys.join(", "),
    if keys.len() == 1 { "it" } else { "them" }
)]
pub struct ReloadRefused {
    /// Each such key, dotted as in the file (`server.listen`).
    pub keys: Vec<String>,
}

impl Config {
    /// The keys `new` changes, dotted as in the file, if a running daemon
    /// may take every one of them (empty: nothing changed); otherwise
    /// every key it may not take.
    pub fn live_changes(&self, new: &Config) -> Result<Vec<String>, ReloadRefused> {
        let mut changed = Vec::new();
        changed_keys("", &self.source, &new.source, &mut changed);
        // The file says the same but the values differ: the running
        // configuration was changed after it was read (`--store`), and the
        // new one was not changed alike. Nothing names the key; refuse.
        if changed.is_empty() && self != new {
            return Err(ReloadRefused {
                keys: vec!["(a value set on the command line)".into()],
            });
        }
        let fixed: Vec<String> = changed.iter().filter(|k| !is_live(k)).cloned().collect();
        if fixed.is_empty() {
            Ok(changed)
        } else {
            Err(ReloadRefused { keys: fixed })
        }
    }
}

fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        key.strip_prefix(live)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// The dotted keys whose values differ between two tables, down to the
/// leaves (arrays are compared whole).
fn changed_keys(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                changed_keys(&dotted, a, b, out);
            }
            (a, b) if a == b => {}
            _ => out.push(dotted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_toml(text).unwrap()
    }

    #[test]
    fn every_live_key_is_a_key_of_the_file() {
        let defaults = Config::default().source;
        for live in LIVE_KEYS {
            let mut table = &defaults;
            let mut path = live.split('.').peekable();
            while let Some(part) = path.next() {
                match table.get(part) {
                    Some(toml::Value::Table(inner)) => table = inner,
                    Some(_) if path.peek().is_none() => {}
                    _ => panic!("{live} is not a key of default.toml"),
                }
            }
        }
    }

    #[test]
    fn live_keys_change_and_are_named() {
        let running = config("[lockout]\nfailures = 5\n");
        let new = config(
            "[lockout]\nfailures = 2\n[challenges]\nttl = \"30s\"\n[lifecycle]\nopt-out-forbidden = { HK = \"x\" }\n[server]\nrequests-per-connection-per-second = 5\n",
        );
        // A table's keys are compared one by one: the file's HK changed and
        // the default IN went.
        assert_eq!(
            running.live_changes(&new).unwrap(),
            [
                "challenges.ttl",
                "lifecycle.opt-out-forbidden.HK",
                "lifecycle.opt-out-forbidden.IN",
                "lockout.failures",
                "server.requests-per-connection-per-second",
            ]
        );
        assert!(running.live_changes(&running.clone()).unwrap().is_empty());
    }

    #[test]
    fn fixed_keys_refuse_the_whole_reload_and_are_each_named() {
        let running = config("");
        for (text, key) in [
            ("[server]\nlisten = \"127.0.0.1:5000\"", "server.listen"),
            (
                "[server]\ntcp-listen = \"127.0.0.1:5001\"",
                "server.tcp-listen",
            ),
            ("[server]\nmetrics = \"127.0.0.1:5002\"", "server.metrics"),
            ("[server]\nmax-connections = 7", "server.max-connections"),
            (
                "[store]\nbackend = \"redis\"\nredis-urls = [\"redis://127.0.0.1:7000\"]",
                "store.backend",
            ),
            ("[store]\ncommit-batch = 7", "store.commit-batch"),
            (
                "[challenges]\nuser-limit-buckets = 7",
                "challenges.user-limit-buckets",
            ),
            ("[push]\nverify-threads = 1", "push.verify-threads"),
            ("[events]\nsink = \"stdout\"", "events.sink"),
            ("[radius]\nstate-ttl = \"50s\"", "radius.state-ttl"),
            ("[devices.sms.check]\nlength = 8", "devices.sms"),
        ] {
            // With a live key changed beside it: nothing applies.
            let new = config(&format!("{text}\n[lockout]\nfailures = 2\n"));
            let refused = running.live_changes(&new).unwrap_err();
            assert!(refused.keys.contains(&key.to_owned()), "{key}: {refused}");
            assert!(!refused.keys.contains(&"lockout.failures".to_owned()));
            assert!(refused.to_string().contains(key));
        }
    }

    #[test]
    fn a_value_set_beside_the_file_is_not_taken_back_by_a_reload() {
        let running = config("")
            .with_redis_store(vec!["redis://127.0.0.1:7000".into()])
            .unwrap();
        assert!(running.live_changes(&config("")).is_err());
        let same = config("")
            .with_redis_store(vec!["redis://127.0.0.1:7000".into()])
            .unwrap();
        assert_eq!(running.live_changes(&same).unwrap(), Vec::<String>::new());
    }
}
