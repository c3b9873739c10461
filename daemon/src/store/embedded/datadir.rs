//! The data directory is the service's alone: mode 0700, and every file in
//! it 0600.
//!
//! It holds the database (usernames, labels, residences, withdrawal
//! amounts), the key file that seals device secrets, and the private keys
//! of the certificates. `slsd serve` checks it at start and tightens what it
//! finds too open, with a warning naming each path, rather than refusing:
//! an operator who copied a node's files with `cp` (which keeps the umask's
//! 0644) gets a running service and a log line saying what was fixed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file in it.
pub const FILE_MODE: u32 = 0o600;

/// A path whose mode was tightened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    pub path: PathBuf,
    pub was: u32,
    pub now: u32,
}

/// Creates `dir` if needed, then makes it 0700 and every regular file
/// directly in it 0600. Returns what it changed, for the caller to log.
/// Subdirectories are left alone (the service makes none).
pub fn secure(dir: &Path) -> std::io::Result<Vec<Tightened>> {
    std::fs::create_dir_all(dir)?;
    let mut changed = Vec::new();
    tighten(dir, DIR_MODE, &mut changed)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            tighten(&entry.path(), FILE_MODE, &mut changed)?;
        }
    }
    Ok(changed)
}

fn tighten(path: &Path, mode: u32, changed: &mut Vec<Tightened>) -> std::io::Result<()> {
    let was = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if was != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        changed.push(Tightened {
            path: path.to_path_buf(),
            was,
            now: mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_open_directory_and_its_files_are_tightened_and_reported() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let db = dir.join("registry.redb");
        std::fs::write(&db, b"x").unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let key = dir.join("secrets.key");
        std::fs::write(&key, b"k").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        let changed = secure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&key), 0o600);
        let paths: Vec<_> = changed.iter().map(|t| (t.path.clone(), t.was)).collect();
        assert_eq!(paths, vec![(dir.clone(), 0o755), (db, 0o644)]);
        // A second check finds nothing to do.
        assert!(secure(&dir).unwrap().is_empty());
    }

    #[test]
    fn a_missing_directory_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("new");
        secure(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }
}
