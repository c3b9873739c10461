//! Two releases side by side on one cluster, during a rolling upgrade.
//!
//! `sls:{meta}:format` records the format of the deployment's records, and
//! every node writes records of that format whichever release it runs: a
//! node of the next release reads the format before its own and writes it
//! until the upgrade is finished, so the nodes not yet upgraded read
//! everything it writes. A node refuses to start on a format newer than
//! its release reads.
//!
//! Each node says in `sls:{meta}:releases` which format its release reads
//! up to (a field per node, renewed every `keys.poll`, good for three
//! polls, withdrawn when it stops). Once every node runs the new release,
//! `slsd admin finish-upgrade` raises the recorded format to it: refused
//! while a node whose release reads only an older format is alive. The
//! other nodes write the new format from their next poll, and a node of an
//! older release that started meanwhile finds the format newer than its
//! own there and stops rather than write records the others misread.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::redis::Key;
use super::{ClusterStore, PLAIN};
use crate::clock::Timestamp;
use crate::store::StoreError;

/// The format of the deployment's records.
fn format_key() -> Key {
    Key::new("meta", "format")
}

/// Each live node's release: the format it reads up to, and until when
/// its word holds.
fn releases_key() -> Key {
    Key::new("meta", "releases")
}

/// The format of the records this release reads and writes. A deployment
/// without a recorded format has format 1's records (formats were
/// recorded from then on).
pub const FORMAT: u64 = 1;

/// How long a node's word about its release lasts, in polls: a node that
/// stopped without withdrawing it (a crash) counts for this long.
pub const RELEASE_POLLS: u32 = 3;

/// How long the entry of a node that stopped saying anything is kept
/// before a reader drops it (crashed nodes leave one each).
const FORGOTTEN_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where a deployment's upgrade stands, as one node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeState {
    /// The format of the deployment's records: what every node writes.
    pub format: u64,
    /// The newest format this node's release reads.
    pub release: u64,
    /// Nodes alive, this one among them once it has said so.
    pub nodes: u16,
    /// Of those, the nodes whose release reads only a format older than
    /// this node's release.
    pub behind: u16,
}

impl UpgradeState {
    /// Whether the deployment still writes a format older than this
    /// node's release reads.
    pub fn unfinished(&self) -> bool {
        self.format < self.release
    }
}

impl ClusterStore {
    /// This store as a node of a release whose format is `format` (the
    /// tests play two releases on one store with it).
    pub fn playing_release(mut self, format: u64) -> Self {
        self.release = format;
        self
    }

    /// The format of the records this node writes: the deployment's, as
    /// read at start and at each poll since.
    pub fn format(&self) -> u64 {
        self.format.load(Ordering::Acquire)
    }

    /// The deployment's recorded format and the record as stored.
    async fn recorded_format(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let key = format_key();
        let Some(stored) = self.redis.get(&key).await? else {
            return Ok(None);
        };
        let value = self.checked(&key, PLAIN, &stored)?;
        let found = <[u8; 8]>::try_from(value.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Forged(key.as_str().to_owned()))?;
        Ok(Some((found, stored)))
    }

    /// `found` if this release reads it; a newer format is refused (this
    /// release would misread its records).
    fn readable(&self, found: u64) -> Result<u64, StoreError> {
        if found > self.release {
            return Err(StoreError::NewerFormat {
                found,
                supported: self.release,
            });
        }
        self.format.store(found, Ordering::Release);
        Ok(found)
    }

    /// The deployment's record format, checked at a node's start against
    /// this release's: recorded if none is (a new deployment writes its
    /// first node's format); a newer one is refused.
    pub async fn check_format(&self) -> Result<u64, StoreError> {
        let key = format_key();
        let mut rounds = self.rounds();
        while rounds.next().await {
            if let Some((found, _)) = self.recorded_format().await? {
                return self.readable(found);
            }
            // Another node may record it at the same moment: the first wins
            // and both read it back.
            let value = self.tagged(&key, PLAIN, &self.release.to_be_bytes());
            self.redis.put_if_absent(&key, &value, true).await?;
        }
        Err(StoreError::Database(
            "the deployment's format could not be read".into(),
        ))
    }

    /// Reads the deployment's format again (every `keys.poll`): after a
    /// finished upgrade this node writes the new format. A format newer
    /// than this release reads is `NewerFormat`: the node must stop.
    pub async fn follow_format(&self) -> Result<u64, StoreError> {
        match self.recorded_format().await? {
            Some((found, _)) => self.readable(found),
            None => Ok(self.format()),
        }
    }

    /// Says `node` runs this release until `until`.
    pub async fn announce_release(&self, node: &str, until: Timestamp) -> Result<(), StoreError> {
        let field = self.release_field(node);
        Ok(self
            .redis
            .set_field(&releases_key(), &field, Some(until.0))
            .await?)
    }

    /// `node`'s field in the releases hash: the format its release reads
    /// up to, then its name (`upgrade_state` reads them back).
    fn release_field(&self, node: &str) -> String {
        format!("{}:{node}", self.release)
    }

    /// Withdraws what `node` said (it stops).
    pub async fn withdraw_release(&self, node: &str) -> Result<(), StoreError> {
        let field = self.release_field(node);
        Ok(self.redis.set_field(&releases_key(), &field, None).await?)
    }

    /// Where the upgrade stands at `now`. Entries of nodes silent for a
    /// day are dropped on the way.
    pub async fn upgrade_state(&self, now: Timestamp) -> Result<UpgradeState, StoreError> {
        let key = releases_key();
        let forgotten = now
            .0
            .saturating_sub(u64::try_from(FORGOTTEN_AFTER.as_millis()).unwrap_or(u64::MAX));
        let (mut nodes, mut behind) = (0u16, 0u16);
        for (field, until) in self.redis.fields(&key).await? {
            if until < forgotten {
                self.redis.set_field(&key, &field, None).await?;
                continue;
            }
            if until <= now.0 {
                continue;
            }
            // An entry that does not read is not a node's: left alone.
            let Some(reads) = field
                .split_once(':')
                .and_then(|(format, _)| format.parse::<u64>().ok())
            else {
                continue;
            };
            nodes = nodes.saturating_add(1);
            if reads < self.release {
                behind = behind.saturating_add(1);
            }
        }
        let format = self.follow_format().await?;
        Ok(UpgradeState {
            format,
            release: self.release,
            nodes,
            behind,
        })
    }

    /// Raises the deployment's format from `from` to this release's, by
    /// compare-and-swap on the record (a release newer still that raised
    /// it meanwhile is not set back); the format recorded after.
    pub async fn raise_format(&self, from: u64) -> Result<u64, StoreError> {
        let key = format_key();
        let mut rounds = self.rounds();
        while rounds.next().await {
            let Some((found, stored)) = self.recorded_format().await? else {
                return self.check_format().await;
            };
            if found != from || found >= self.release {
                return self.readable(found);
            }
            let value = self.tagged(&key, PLAIN, &self.release.to_be_bytes());
            if self.redis.replace_if(&key, &stored, &value, true).await? {
                return self.readable(self.release);
            }
        }
        Err(StoreError::Database(
            "the deployment's format kept changing: the upgrade is not finished".into(),
        ))
    }
}
