//! The embedded store: git objects addressed by BLAKE3, zstd-compressed in
//! append-only pack files; the index, the snapshots and the delivery queue
//! in one sled database. FORMAT.md describes every byte.
//!
//! Write order, so that a crash at any instant leaves the store consistent:
//! 1. object data is appended to a pack file and fsynced;
//! 2. the index entries for that data are written in one sled batch and
//!    flushed;
//! 3. only then may a snapshot that needs those objects be written (and
//!    flushed). A snapshot is refused when one of its ref targets is not
//!    indexed.
//!
//! A crash between 1 and 2 leaves unreferenced bytes at a pack's tail; a crash
//! between 2 and 3 leaves indexed objects that a later backup deduplicates
//! against.

pub mod documents;
pub mod pack;
pub mod snapshot;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::ids::{ContentId, GitOid, ObjectKind, RepoName, SnapshotId};
use pack::{Location, PackError, PackWriter, pack_path};
pub use snapshot::{CopyStats, RefUpdate, Snapshot, SnapshotBody};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {path} is in use by another hookvault process (stop `hookvault serve` first): {source}"
    )]
    Locked { path: PathBuf, source: sled::Error },
    #[error("store database at {path}: {source}")]
    Db { path: PathBuf, source: sled::Error },
    #[error("store directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("object {oid} is not in the store")]
    MissingObject { oid: GitOid },
    #[error("index entry for {what} is corrupt")]
    CorruptIndex { what: String },
    #[error(
        "snapshot of {repo} refused: ref {reference} points at {oid}, which is not in the store"
    )]
    IncompleteSnapshot {
        repo: RepoName,
        reference: String,
        oid: String,
    },
    #[error("snapshot record {key} is corrupt: {message}")]
    CorruptSnapshot { key: String, message: String },
    #[error("no snapshot of {repo} matches {prefix:?}")]
    NoSuchSnapshot { repo: RepoName, prefix: String },
    #[error("{prefix:?} matches several snapshots of {repo}; give more digits")]
    AmbiguousSnapshot { repo: RepoName, prefix: String },
    #[error("{repo} has no snapshots")]
    NoSnapshots { repo: RepoName },
    #[error("a store lock was poisoned by a panic")]
    Poisoned,
    #[error("document refused: {message}")]
    BadDocument { message: String },
}

/// Counters over the whole store.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    pub objects: u64,
    pub contents: u64,
    pub packs: u64,
    pub pack_bytes: u64,
    pub snapshots: u64,
    pub repositories: u64,
    pub document_versions: u64,
}

struct Inner {
    dir: PathBuf,
    packs_dir: PathBuf,
    db: sled::Db,
    /// git oid (20) → content id (32) ‖ kind (1) ‖ size (u64 BE)
    objects: sled::Tree,
    /// content id (32) → Location
    contents: sled::Tree,
    /// repo ‖ 0x00 ‖ seq (u64 BE) → Snapshot JSON
    snapshots: sled::Tree,
    /// store-wide counters: `next-pack`
    meta: sled::Tree,
    /// repo ‖ 0 ‖ collection ‖ 0 ‖ key ‖ 0 ‖ time (u64 BE) ‖ seq (u64 BE) → version JSON
    documents: sled::Tree,
    writer: Mutex<Option<PackWriter>>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    pack_target_bytes: u64,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    m.lock().map_err(|_| StoreError::Poisoned)
}

fn snapshot_prefix(repo: &RepoName) -> Vec<u8> {
    let mut key = repo.to_string().into_bytes();
    key.push(0);
    key
}

/// An index entry for one git object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectEntry {
    pub content: ContentId,
    pub kind: ObjectKind,
    pub size: u64,
}

impl ObjectEntry {
    fn encode(&self) -> [u8; 41] {
        let mut out = [0u8; 41];
        out[..32].copy_from_slice(&self.content.0);
        out[32] = self.kind.code();
        out[33..].copy_from_slice(&self.size.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 41 {
            return None;
        }
        Some(Self {
            content: ContentId(bytes[..32].try_into().ok()?),
            kind: ObjectKind::from_code(bytes[32])?,
            size: u64::from_be_bytes(bytes[33..].try_into().ok()?),
        })
    }
}

impl Store {
    /// Open (or create) the store in `dir`. Fails with [`StoreError::Locked`]
    /// when another process holds it.
    pub fn open(dir: &Path, pack_target_bytes: u64) -> Result<Self, StoreError> {
        let packs_dir = dir.join("packs");
        std::fs::create_dir_all(&packs_dir).map_err(|source| StoreError::Io {
            path: packs_dir.clone(),
            source,
        })?;
        let db_path = dir.join("index");
        let db = sled::Config::new().path(&db_path).open().map_err(|source| {
            let locked = matches!(&source, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                || source.to_string().contains("lock");
            if locked {
                StoreError::Locked {
                    path: dir.to_path_buf(),
                    source,
                }
            } else {
                StoreError::Db {
                    path: db_path.clone(),
                    source,
                }
            }
        })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Db {
                path: db_path.clone(),
                source,
            })
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                packs_dir,
                objects: tree("objects")?,
                contents: tree("contents")?,
                snapshots: tree("snapshots")?,
                meta: tree("meta")?,
                documents: tree("documents")?,
                db,
                writer: Mutex::new(None),
                readers: Mutex::new(HashMap::new()),
                pack_target_bytes,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The sled database, shared with the queue.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    fn db_err(&self, source: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.inner.dir.join("index"),
            source,
        }
    }

    pub fn object(&self, oid: &GitOid) -> Result<Option<ObjectEntry>, StoreError> {
        match self.inner.objects.get(oid.0).map_err(|e| self.db_err(e))? {
            None => Ok(None),
            Some(bytes) => {
                ObjectEntry::decode(&bytes)
                    .map(Some)
                    .ok_or_else(|| StoreError::CorruptIndex {
                        what: format!("object {oid}"),
                    })
            }
        }
    }

    pub fn has(&self, oid: &GitOid) -> Result<bool, StoreError> {
        self.inner
            .objects
            .contains_key(oid.0)
            .map_err(|e| self.db_err(e))
    }

    /// The ids among `oids` that the store does not hold.
    pub fn missing(&self, oids: &[GitOid]) -> Result<Vec<GitOid>, StoreError> {
        let mut out = Vec::new();
        for oid in oids {
            if !self.has(oid)? {
                out.push(*oid);
            }
        }
        Ok(out)
    }

    /// Store objects produced by `read` for each missing id, following the
    /// write order in the module docs. Objects already stored are counted,
    /// not rewritten; identical content under two ids is stored once.
    pub fn put_objects<E>(
        &self,
        oids: &[GitOid],
        mut read: impl FnMut(&GitOid) -> Result<(ObjectKind, Vec<u8>), E>,
    ) -> Result<CopyStats, PutError<E>> {
        let mut stats = CopyStats::default();
        let mut writer_slot = lock(&self.inner.writer)?;
        let mut index = sled::Batch::default();
        let mut content_batch = sled::Batch::default();
        let mut batch_contents: HashSet<[u8; 32]> = HashSet::new();
        let mut batch_oids: HashSet<GitOid> = HashSet::new();
        let mut touched_writer = false;
        for oid in oids {
            if batch_oids.contains(oid) || self.has(oid)? {
                stats.present += 1;
                continue;
            }
            let (kind, data) = read(oid).map_err(PutError::Source)?;
            let content = pack::content_id(kind, &data);
            let known_content = batch_contents.contains(&content.0)
                || self
                    .inner
                    .contents
                    .contains_key(content.0)
                    .map_err(|e| self.db_err(e))?;
            if !known_content {
                let writer = self.writer_for_append(&mut writer_slot)?;
                let location = writer.append(&content, kind, &data)?;
                stats.stored_bytes += pack::RECORD_HEADER + u64::from(location.stored_len);
                content_batch.insert(&content.0, location.encode().to_vec());
                batch_contents.insert(content.0);
                touched_writer = true;
            }
            let entry = ObjectEntry {
                content,
                kind,
                size: data.len() as u64,
            };
            index.insert(&oid.0, entry.encode().to_vec());
            batch_oids.insert(*oid);
            stats.written += 1;
        }
        if touched_writer && let Some(writer) = writer_slot.as_mut() {
            writer.sync()?;
        }
        // Contents before objects: an object entry never points at a content
        // id that has no location.
        self.inner
            .contents
            .apply_batch(content_batch)
            .map_err(|e| self.db_err(e))?;
        self.inner
            .objects
            .apply_batch(index)
            .map_err(|e| self.db_err(e))?;
        self.inner.db.flush().map_err(|e| self.db_err(e))?;
        Ok(stats)
    }

    fn writer_for_append<'a>(
        &self,
        slot: &'a mut MutexGuard<'_, Option<PackWriter>>,
    ) -> Result<&'a mut PackWriter, StoreError> {
        if slot.as_ref().is_some_and(PackWriter::failed) {
            // Abandon a pack whose writes failed; its indexed records stay
            // readable, the rest is an unreferenced tail.
            **slot = None;
        }
        let full = slot
            .as_ref()
            .is_some_and(|w| w.len() >= self.inner.pack_target_bytes);
        if full && let Some(mut old) = slot.take() {
            old.sync()?;
        }
        if slot.is_none() {
            // A new pack per process start (and per roll-over): a crashed
            // process's pack is never appended to again.
            let id = self
                .inner
                .meta
                .update_and_fetch("next-pack", |old| {
                    let n = old
                        .and_then(|b| b.try_into().ok().map(u32::from_be_bytes))
                        .unwrap_or(0);
                    Some(n.saturating_add(1).to_be_bytes().to_vec())
                })
                .map_err(|e| self.db_err(e))?
                .and_then(|b| b.as_ref().try_into().ok().map(u32::from_be_bytes))
                .ok_or_else(|| StoreError::CorruptIndex {
                    what: "next-pack counter".into(),
                })?;
            self.inner.db.flush().map_err(|e| self.db_err(e))?;
            **slot = Some(PackWriter::create(&self.inner.packs_dir, id)?);
        }
        slot.as_mut().ok_or(StoreError::Poisoned)
    }

    fn reader(&self, pack: u32) -> Result<Arc<File>, StoreError> {
        let mut readers = lock(&self.inner.readers)?;
        if let Some(file) = readers.get(&pack) {
            return Ok(file.clone());
        }
        let path = pack_path(&self.inner.packs_dir, pack);
        let file = Arc::new(File::open(&path).map_err(|source| StoreError::Io { path, source })?);
        readers.insert(pack, file.clone());
        Ok(file)
    }

    /// Read an object back, verified against its BLAKE3 content id.
    pub fn read_object(&self, oid: &GitOid) -> Result<(ObjectKind, Vec<u8>), StoreError> {
        let entry = self
            .object(oid)?
            .ok_or(StoreError::MissingObject { oid: *oid })?;
        let location = self
            .inner
            .contents
            .get(entry.content.0)
            .map_err(|e| self.db_err(e))?
            .and_then(|b| Location::decode(&b))
            .ok_or_else(|| StoreError::CorruptIndex {
                what: format!("content {} of object {oid}", entry.content),
            })?;
        // An object written by this process may still sit in the writer's
        // buffer only if put_objects failed midway; sync() ran otherwise.
        let file = self.reader(location.pack)?;
        let path = pack_path(&self.inner.packs_dir, location.pack);
        let data = pack::read_record(&file, &path, &entry.content, &location)?;
        Ok((entry.kind, data))
    }

    /// Record a snapshot. Refused unless every ref target is in the store.
    pub fn commit_snapshot(&self, mut body: SnapshotBody) -> Result<Snapshot, StoreError> {
        for (reference, target) in &body.refs {
            let present = GitOid::from_hex(target)
                .ok()
                .map(|oid| self.has(&oid))
                .transpose()?
                .unwrap_or(false);
            if !present {
                return Err(StoreError::IncompleteSnapshot {
                    repo: body.repository.clone(),
                    reference: reference.clone(),
                    oid: target.clone(),
                });
            }
        }
        let latest = self.latest_snapshot(&body.repository)?;
        body.seq = latest.as_ref().map_or(1, |s| s.body.seq + 1);
        body.parent = latest.map(|s| s.id);
        let snapshot = Snapshot::seal(body);
        let mut key = snapshot_prefix(&snapshot.body.repository);
        key.extend_from_slice(&snapshot.body.seq.to_be_bytes());
        let json = serde_json::to_vec(&snapshot).map_err(|e| StoreError::CorruptSnapshot {
            key: snapshot.id.to_string(),
            message: e.to_string(),
        })?;
        self.inner
            .snapshots
            .insert(key, json)
            .map_err(|e| self.db_err(e))?;
        self.inner.db.flush().map_err(|e| self.db_err(e))?;
        Ok(snapshot)
    }

    fn decode_snapshot(key: &[u8], value: &[u8]) -> Result<Snapshot, StoreError> {
        let snapshot: Snapshot =
            serde_json::from_slice(value).map_err(|e| StoreError::CorruptSnapshot {
                key: String::from_utf8_lossy(key).into_owned(),
                message: e.to_string(),
            })?;
        if !snapshot.verify() {
            return Err(StoreError::CorruptSnapshot {
                key: snapshot.id.to_string(),
                message: "content does not match its id".into(),
            });
        }
        Ok(snapshot)
    }

    /// All snapshots of a repository, oldest first.
    pub fn snapshots(&self, repo: &RepoName) -> Result<Vec<Snapshot>, StoreError> {
        self.inner
            .snapshots
            .scan_prefix(snapshot_prefix(repo))
            .map(|item| {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                Self::decode_snapshot(&k, &v)
            })
            .collect()
    }

    pub fn latest_snapshot(&self, repo: &RepoName) -> Result<Option<Snapshot>, StoreError> {
        match self
            .inner
            .snapshots
            .scan_prefix(snapshot_prefix(repo))
            .next_back()
        {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                Self::decode_snapshot(&k, &v).map(Some)
            }
        }
    }

    /// A snapshot by id prefix (at least 4 hex digits), or the latest.
    pub fn find_snapshot(
        &self,
        repo: &RepoName,
        prefix: Option<&str>,
    ) -> Result<Snapshot, StoreError> {
        let Some(prefix) = prefix else {
            return self
                .latest_snapshot(repo)?
                .ok_or_else(|| StoreError::NoSnapshots { repo: repo.clone() });
        };
        let mut found: Vec<Snapshot> = self
            .snapshots(repo)?
            .into_iter()
            .filter(|s| prefix.len() >= 4 && s.id.0.starts_with(&prefix.to_ascii_lowercase()))
            .collect();
        match found.len() {
            0 => Err(StoreError::NoSuchSnapshot {
                repo: repo.clone(),
                prefix: prefix.to_string(),
            }),
            1 => Ok(found.remove(0)),
            _ => Err(StoreError::AmbiguousSnapshot {
                repo: repo.clone(),
                prefix: prefix.to_string(),
            }),
        }
    }

    pub fn find_snapshot_by_id(&self, id: &SnapshotId) -> Result<Option<Snapshot>, StoreError> {
        for item in self.inner.snapshots.iter() {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let snapshot = Self::decode_snapshot(&k, &v)?;
            if &snapshot.id == id {
                return Ok(Some(snapshot));
            }
        }
        Ok(None)
    }

    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut packs = 0;
        let mut pack_bytes = 0;
        let entries =
            std::fs::read_dir(&self.inner.packs_dir).map_err(|source| StoreError::Io {
                path: self.inner.packs_dir.clone(),
                source,
            })?;
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "hvpack") {
                packs += 1;
                pack_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let mut repos = HashSet::new();
        let mut snapshots = 0;
        for key in self.inner.snapshots.iter().keys() {
            let key = key.map_err(|e| self.db_err(e))?;
            if let Some(end) = key.iter().position(|&b| b == 0) {
                repos.insert(key[..end].to_vec());
            }
            snapshots += 1;
        }
        Ok(StoreStats {
            objects: self.inner.objects.len() as u64,
            contents: self.inner.contents.len() as u64,
            packs,
            pack_bytes,
            snapshots,
            repositories: repos.len() as u64,
            document_versions: self.inner.documents.len() as u64,
        })
    }
}

/// A failure while storing objects: the store's own, or the reader's.
#[derive(Debug, thiserror::Error)]
pub enum PutError<E> {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(E),
}

impl<E> From<PackError> for PutError<E> {
    fn from(e: PackError) -> Self {
        PutError::Store(StoreError::Pack(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> GitOid {
        GitOid([n; 20])
    }

    #[test]
    fn dedups_by_oid_and_content_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: HashMap<GitOid, Vec<u8>> = [
            (oid(1), b"one".to_vec()),
            (oid(2), b"two".to_vec()),
            (oid(3), b"one".to_vec()),
        ]
        .into_iter()
        .collect();
        let read = |o: &GitOid| -> Result<(ObjectKind, Vec<u8>), std::io::Error> {
            Ok((ObjectKind::Blob, data[o].clone()))
        };
        {
            let store = Store::open(dir.path(), 1 << 20).expect("open");
            let stats = store.put_objects(&[oid(1), oid(2)], read).expect("put");
            assert_eq!((stats.written, stats.present), (2, 0));
            let stats = store
                .put_objects(&[oid(1), oid(2), oid(3)], read)
                .expect("put");
            assert_eq!((stats.written, stats.present), (1, 2));
            assert_eq!(stats.stored_bytes, 0, "same content as oid 1: no new bytes");
            let s = store.stats().expect("stats");
            assert_eq!((s.objects, s.contents), (3, 2));
        }
        // sled's flusher thread may hold the lock a moment after the drop.
        let start = std::time::Instant::now();
        let store = loop {
            match Store::open(dir.path(), 1 << 20) {
                Err(StoreError::Locked { .. }) if start.elapsed().as_secs() < 10 => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.expect("reopen"),
            }
        };
        assert_eq!(store.read_object(&oid(3)).expect("read").1, b"one");
        assert_eq!(
            store.missing(&[oid(1), oid(9)]).expect("missing"),
            vec![oid(9)]
        );
    }

    #[test]
    fn refuses_snapshot_with_missing_objects_and_chains_snapshots() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let repo = RepoName::parse("acme/app").expect("name");
        let body = |target: GitOid| SnapshotBody {
            repository: repo.clone(),
            source: "cloud".into(),
            seq: 0,
            time_ms: 1,
            delivery_id: "d".into(),
            event_key: "repo:push".into(),
            actor: None,
            parent: None,
            refs: [("refs/heads/main".to_string(), target.to_hex())]
                .into_iter()
                .collect(),
            updates: vec![],
            stats: CopyStats::default(),
        };
        let err = store
            .commit_snapshot(body(oid(7)))
            .expect_err("object missing");
        assert!(
            matches!(err, StoreError::IncompleteSnapshot { .. }),
            "{err}"
        );
        store
            .put_objects(&[oid(7)], |_| {
                Ok::<_, std::io::Error>((ObjectKind::Blob, vec![1]))
            })
            .expect("put");
        let first = store.commit_snapshot(body(oid(7))).expect("commit");
        let second = store.commit_snapshot(body(oid(7))).expect("commit");
        assert_eq!(second.body.parent.as_ref(), Some(&first.id));
        assert_eq!(second.body.seq, 2);
        assert_eq!(store.snapshots(&repo).expect("list").len(), 2);
        let prefix = &second.id.0[..8];
        assert_eq!(
            store.find_snapshot(&repo, Some(prefix)).expect("find").id,
            second.id
        );
        assert!(store.find_snapshot(&repo, Some("zzzz")).is_err());
    }
}
