//! A local cache of the vault's small immutable files (index, snapshot and
//! document files), in a sled database at `<store.path>/cache`, so that a
//! restarting `serve` does not fetch them all again from object storage.
//!
//! The cache is never a source of truth: every entry is a copy of a file
//! whose name is the BLAKE3 of its bytes, and is checked against that name
//! when used. A damaged or missing entry is fetched again from the vault;
//! a cache that cannot be opened is deleted and rebuilt. Only `serve` uses
//! it (sled is single-process); read commands read the vault directly.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::backend::{FileName, FileType};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the vault cache at {path} is in use by another `hookvault serve`")]
    InUse { path: PathBuf },
    #[error("vault cache at {path}: {message}")]
    Db { path: PathBuf, message: String },
}

#[derive(Debug)]
pub struct FileCache {
    path: PathBuf,
    db: sled::Db,
}

fn in_use(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
        || e.to_string().contains("lock")
}

/// How long an open waits for a lock that may be the last handle's.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Open, waiting a bounded time while the lock is held.
///
/// sled's writer threads keep the database's file (and its lock) for a
/// moment after the last handle is dropped (spacejam/sled#1234), so a cache
/// closed and opened again in one process can find its own lock still held.
/// A lock still held after `RELEASE_WAIT` is another process's.
fn open_when_released(config: &dyn Fn() -> sled::Config) -> Result<sled::Db, sled::Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match config().open() {
            Err(e) if in_use(&e) && started.elapsed() < RELEASE_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn key(file_type: FileType, name: &FileName) -> Vec<u8> {
    let mut key = file_type.prefix().as_bytes().to_vec();
    key.push(b'/');
    key.extend_from_slice(name.as_str().as_bytes());
    key
}

impl FileCache {
    /// Open the cache, or delete and recreate it when it cannot be read.
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        let db_err = |e: sled::Error| CacheError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // No background flusher: it would hold the database (and its lock)
        // for a moment after the last handle is dropped. Entries are only
        // copies, flushed when the vault is dropped or a write completes.
        let config = || sled::Config::new().path(path).flush_every_ms(None);
        match open_when_released(&config) {
            Ok(db) => Ok(Self {
                path: path.to_path_buf(),
                db,
            }),
            Err(e) if in_use(&e) => Err(CacheError::InUse {
                path: path.to_path_buf(),
            }),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "vault cache unreadable; rebuilding it");
                Self::clear(path)?;
                let db = config().open().map_err(db_err)?;
                Ok(Self {
                    path: path.to_path_buf(),
                    db,
                })
            }
        }
    }

    /// Delete the cache (`hookvault repair index`; the next open rebuilds it).
    pub fn clear(path: &Path) -> Result<(), CacheError> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CacheError::Db {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// A cached copy of a file, only if it still hashes to its name.
    pub fn get(&self, file_type: FileType, name: &FileName) -> Option<Vec<u8>> {
        let bytes = self.db.get(key(file_type, name)).ok()??;
        if name.hash() == Some(*blake3::hash(&bytes).as_bytes()) {
            Some(bytes.to_vec())
        } else {
            tracing::warn!(file = %name, "damaged vault cache entry; reading the file again");
            let _ = self.db.remove(key(file_type, name));
            None
        }
    }

    /// Keep a copy (best effort: a cache that cannot write only costs time).
    pub fn put(&self, file_type: FileType, name: &FileName, bytes: &[u8]) {
        if let Err(e) = self
            .db
            .insert(key(file_type, name), bytes)
            .and_then(|_| self.db.flush().map(|_| ()))
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the vault cache");
        }
    }

    /// How many files the cache holds.
    pub fn len(&self) -> usize {
        self.db.len()
    }

    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }

    pub fn flush(&self) {
        let _ = self.db.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_closed_and_opened_again_at_once_opens_and_a_held_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cache");
        let name = FileName::from_hash(blake3::hash(b"bytes").as_bytes());
        for round in 0..40 {
            let files = FileCache::open(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
            files.put(FileType::Snapshot, &name, b"bytes");
            assert_eq!(
                files.get(FileType::Snapshot, &name).as_deref(),
                Some(&b"bytes"[..])
            );
        }
        let held = FileCache::open(&path).expect("open");
        match FileCache::open(&path) {
            Err(CacheError::InUse { path: named }) => assert_eq!(named, path),
            other => panic!("a held cache opened twice: {other:?}"),
        }
        assert_eq!(held.len(), 1);
    }
}
