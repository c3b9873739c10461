//! Online backup and restore of the embedded store.
//!
//! A backup is a redb database file holding every table of the registry as
//! it stood at one moment, plus a table of its own (`sls-backup`) with the
//! format, the time and each table's row count, written in the same commit
//! as the last rows: a backup cut off half way has none and is refused.
//!
//! - **Consistent while serving**: the rows are read in one read
//!   transaction (redb's snapshot); changes go on beside it. Before copying,
//!   one commit with fsync makes everything in the snapshot durable, so a
//!   backup never holds a change that a crash could still take back.
//! - **Sealed stays sealed**: rows are copied as stored. The key file
//!   (`secrets.key`) is not in a backup: a backup without it reveals no
//!   secret, and restoring needs it.
//! - **Never overwrites**: the backup is written to `FILE.partial`, made
//!   durable, then linked to `FILE`, which must not exist.
//! - **Restore checks before it installs**: every page's checksum
//!   (`Database::check_integrity`), the format, every table's row count,
//!   and (the caller's part) that the key file opens every device, before
//!   the file becomes the data directory's database.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle, Value, WriteTransaction,
};

use super::accounts::AUDIT;
use super::registry::{DEVICES, EachTable, Registry, every_table};
use crate::clock::Timestamp;
use crate::store::StoreError;

/// What a backup says of itself: `format`, `made-at` (ms since the epoch),
/// and `rows:<table>` for each table copied.
const BACKUP: TableDefinition<&str, u64> = TableDefinition::new("sls-backup");
/// The layout of a backup's file. A restore refuses a newer one.
pub const FORMAT: u64 = 1;
/// Rows per write transaction of the copy: bounds what redb holds dirty
/// in memory while a large registry is copied.
const ROWS_PER_COMMIT: u64 = 50_000;
/// redb's page cache for the file being written or checked: the copy
/// streams, it never reads a page twice.
const CACHE_BYTES: usize = 16 << 20;
/// The database's file name in a data directory.
pub const DATABASE_FILE: &str = "registry.redb";

/// Why a backup was not written.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the backup's path must be absolute (it is the daemon's): {0}")]
    Relative(PathBuf),
    #[error("{0} exists: a backup never overwrites a file")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the database holds a table a backup does not know, {0:?}: refusing an incomplete backup"
    )]
    UnknownTable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a restore refused a file.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} already holds a database: restore into a new data directory")]
    Occupied(PathBuf),
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {problem}")]
    Damaged { path: PathBuf, problem: String },
    #[error(
        "{0} is not a complete sls backup (no record of one: cut off while written, or another file)"
    )]
    NotABackup(PathBuf),
    #[error(
        "{path} is a backup of format {found}, newer than this slsd reads ({FORMAT}): restore it with the release that made it or a later one"
    )]
    Newer { path: PathBuf, found: u64 },
}

/// A backup written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
    pub devices: u64,
    /// Rows in all tables.
    pub rows: u64,
    /// The audit log's last sequence number in it (0: empty).
    pub last_audit: u64,
    pub took: Duration,
}

/// A backup checked and installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub devices: u64,
    pub rows: u64,
    pub made_at: Timestamp,
}

/// The names of the registry's tables.
struct Names(Vec<String>);

impl EachTable for Names {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError> {
        self.0.push(table.name().to_owned());
        Ok(())
    }
}

/// Each table copied from a snapshot into the file being written.
struct Copy<'a> {
    from: &'a ReadTransaction,
    to: &'a mut Writer,
}

impl EachTable for Copy<'_> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        table: TableDefinition<'static, K, V>,
    ) -> Result<(), StoreError> {
        copy(self.from, self.to, table)
    }
}

/// One table of the registry, copied row by row (keys and values as redb
/// stores them: sealed values stay sealed).
fn copy<K: Key + 'static, V: Value + 'static>(
    from: &ReadTransaction,
    to: &mut Writer,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let source = from.open_table(table)?;
    let mut rows = 0;
    let mut entries = source.iter()?;
    loop {
        let txn = to.txn()?;
        let mut target = txn.open_table(table)?;
        let mut batch = 0;
        for entry in entries.by_ref() {
            let (key, value) = entry?;
            target.insert(key.value(), value.value())?;
            batch += 1;
            if batch == ROWS_PER_COMMIT {
                break;
            }
        }
        drop(target);
        rows += batch;
        to.count(batch)?;
        if batch < ROWS_PER_COMMIT {
            to.copied(table.name(), rows);
            return Ok(());
        }
    }
}

/// The file being written: a write transaction at a time, committed
/// without fsync every `ROWS_PER_COMMIT` rows (the last commit has one).
struct Writer {
    db: Database,
    txn: Option<WriteTransaction>,
    rows: u64,
    tables: Vec<(String, u64)>,
}

impl Writer {
    fn txn(&mut self) -> Result<&WriteTransaction, StoreError> {
        if self.txn.is_none() {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| StoreError::Database(e.to_string()))?;
            self.txn = Some(txn);
        }
        self.txn
            .as_ref()
            .ok_or_else(|| StoreError::Database("no write transaction".into()))
    }

    /// Counts `rows` more into the open transaction; commits it when full.
    fn count(&mut self, rows: u64) -> Result<(), StoreError> {
        self.rows += rows;
        if rows >= ROWS_PER_COMMIT
            && let Some(txn) = self.txn.take()
        {
            txn.commit()?;
        }
        Ok(())
    }

    fn copied(&mut self, table: &str, rows: u64) {
        self.tables.push((table.to_owned(), rows));
    }

    /// Writes the backup's own record and commits with fsync: from here
    /// the file is a backup.
    fn finish(mut self, made_at: Timestamp) -> Result<u64, StoreError> {
        self.txn()?;
        let mut txn = self
            .txn
            .take()
            .ok_or_else(|| StoreError::Database("no write transaction".into()))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        {
            let mut record = txn.open_table(BACKUP)?;
            record.insert("format", FORMAT)?;
            record.insert("made-at", made_at.0)?;
            for (table, rows) in &self.tables {
                record.insert(format!("rows:{table}").as_str(), rows)?;
            }
        }
        txn.commit()?;
        Ok(self.rows)
    }
}

impl Registry {
    /// Writes a consistent copy of the whole database to `to` (absolute,
    /// not existing) while the registry goes on serving. Blocking: run it
    /// off the threads that answer logins.
    pub fn backup(&self, to: &Path, now: Timestamp) -> Result<Backup, BackupError> {
        let started = Instant::now();
        if !to.is_absolute() {
            return Err(BackupError::Relative(to.to_path_buf()));
        }
        if to.symlink_metadata().is_ok() {
            return Err(BackupError::Exists(to.to_path_buf()));
        }
        let mut partial = to.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => BackupError::Exists(partial.clone()),
                _ => BackupError::File {
                    path: partial.clone(),
                    source,
                },
            })?;
        let written = self.copy_to(file, now);
        let finished = written.and_then(|rows| {
            install(&partial, to)?;
            Ok(rows)
        });
        let (rows, devices, last_audit) = match finished {
            Ok(counts) => counts,
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                return Err(error);
            }
        };
        let bytes = std::fs::metadata(to)
            .map_err(|source| BackupError::File {
                path: to.to_path_buf(),
                source,
            })?
            .len();
        Ok(Backup {
            path: to.to_path_buf(),
            bytes,
            devices,
            rows,
            last_audit,
            took: started.elapsed(),
        })
    }

    /// Copies every table from one snapshot into `file`: (rows, devices,
    /// last audit sequence number).
    fn copy_to(&self, file: File, now: Timestamp) -> Result<(u64, u64, u64), BackupError> {
        let snapshot = self.db.begin_read().map_err(StoreError::from)?;
        // Changes commit before their flush (`flush.rs`): one commit with
        // fsync now makes every change the snapshot holds durable.
        super::flush::flush(&self.db)?;
        let mut known = Names(Vec::new());
        every_table(&mut known)?;
        for table in snapshot.list_tables().map_err(StoreError::from)? {
            if !known.0.iter().any(|name| name == table.name()) {
                return Err(BackupError::UnknownTable(table.name().to_owned()));
            }
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(redb::backends::FileBackend::new(file).map_err(StoreError::from)?)
            .map_err(StoreError::from)?;
        let mut writer = Writer {
            db,
            txn: None,
            rows: 0,
            tables: Vec::new(),
        };
        every_table(&mut Copy {
            from: &snapshot,
            to: &mut writer,
        })?;
        let devices = writer
            .tables
            .iter()
            .find(|(table, _)| table == DEVICES.name())
            .map_or(0, |(_, rows)| *rows);
        let last_audit = snapshot
            .open_table(AUDIT)
            .and_then(|audit| Ok(audit.last()?.map_or(0, |(seq, _)| seq.value())))
            .map_err(StoreError::from)?;
        let rows = writer.finish(now)?;
        Ok((rows, devices, last_audit))
    }
}

/// Links the finished `partial` to `to` (failing if `to` appeared
/// meanwhile), removes `partial`, and makes the directory entry durable.
fn install(partial: &Path, to: &Path) -> Result<(), BackupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::File { path, source }
    };
    std::fs::hard_link(partial, to).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => BackupError::Exists(to.to_path_buf()),
        _ => BackupError::File {
            path: to.to_path_buf(),
            source,
        },
    })?;
    std::fs::remove_file(partial).map_err(io(partial))?;
    sync_parent(to).map_err(io(to))
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Checks the backup at `backup` and makes it the database of `data_dir`
/// (which must hold none): copied beside it, checked page by page and
/// against its own record, then renamed into place. `opens` gets the
/// checked copy's path before it is installed, to prove the key file opens
/// it (`Registry::open`); its error leaves nothing installed.
pub fn restore<E>(
    backup: &Path,
    data_dir: &Path,
    opens: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<Result<Restored, E>, RestoreError> {
    let target = data_dir.join(DATABASE_FILE);
    if target.symlink_metadata().is_ok() {
        return Err(RestoreError::Occupied(data_dir.to_path_buf()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RestoreError::File { path, source }
    };
    super::datadir::secure(data_dir).map_err(io(data_dir))?;
    let restoring = data_dir.join(format!("{DATABASE_FILE}.restoring"));
    std::fs::copy(backup, &restoring).map_err(io(backup))?;
    let checked = check(backup, &restoring).and_then(|restored| {
        File::open(&restoring)
            .and_then(|f| f.sync_all())
            .map_err(io(&restoring))?;
        Ok(restored)
    });
    let restored = match checked {
        Ok(restored) => restored,
        Err(error) => {
            let _ = std::fs::remove_file(&restoring);
            return Err(error);
        }
    };
    if let Err(error) = opens(&restoring) {
        let _ = std::fs::remove_file(&restoring);
        return Ok(Err(error));
    }
    std::fs::rename(&restoring, &target).map_err(io(&target))?;
    sync_parent(&target).map_err(io(&target))?;
    Ok(Ok(restored))
}

/// Checks the copy at `path` of the backup `backup` (named in errors) and
/// removes the backup's own record from it.
fn check(backup: &Path, path: &Path) -> Result<Restored, RestoreError> {
    let damaged = |problem: String| RestoreError::Damaged {
        path: backup.to_path_buf(),
        problem,
    };
    let mut db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .open(path)
        .map_err(|e| damaged(e.to_string()))?;
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => return Err(damaged("pages failed their checksums".into())),
        Err(e) => return Err(damaged(e.to_string())),
    }
    let database = |e: &dyn std::fmt::Display| damaged(e.to_string());
    let snapshot = db.begin_read().map_err(|e| database(&e))?;
    let record = match snapshot.open_table(BACKUP) {
        Ok(record) => record,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(RestoreError::NotABackup(backup.to_path_buf()));
        }
        Err(e) => return Err(database(&e)),
    };
    let get = |key: &str| -> Result<Option<u64>, RestoreError> {
        Ok(record
            .get(key)
            .map_err(|e| database(&e))?
            .map(|v| v.value()))
    };
    let Some(format) = get("format")? else {
        return Err(RestoreError::NotABackup(backup.to_path_buf()));
    };
    if format > FORMAT {
        return Err(RestoreError::Newer {
            path: backup.to_path_buf(),
            found: format,
        });
    }
    let made_at = get("made-at")?.unwrap_or(0);
    let (mut rows, mut devices) = (0, 0);
    for entry in record.iter().map_err(|e| database(&e))? {
        let (key, expected) = entry.map_err(|e| database(&e))?;
        let Some(table) = key.value().strip_prefix("rows:") else {
            continue;
        };
        let expected = expected.value();
        let found = snapshot
            .open_untyped_table(TableDefinition::<&[u8], &[u8]>::new(table))
            .map_err(|e| database(&e))?
            .len()
            .map_err(|e| database(&e))?;
        if found != expected {
            return Err(damaged(format!(
                "table {table} holds {found} rows, its backup wrote {expected}"
            )));
        }
        if table == DEVICES.name() {
            devices = found;
        }
        rows += found;
    }
    drop(record);
    drop(snapshot);
    // The restored database is the registry's own again.
    let txn = db.begin_write().map_err(|e| database(&e))?;
    txn.delete_table(BACKUP).map_err(|e| database(&e))?;
    txn.commit().map_err(|e| database(&e))?;
    Ok(Restored {
        devices,
        rows,
        made_at: Timestamp(made_at),
    })
}
