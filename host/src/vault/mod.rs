//! The vault: a self-describing repository of immutable files (FORMAT.md)
//! behind a small [`Backend`] trait. Git objects are stored as zstd frames,
//! blobs, trees and commits as forward deltas against an earlier version of
//! the same path (radix-16 skip-deltas); snapshots carry chunked ref tables;
//! documents are versioned JSON.
//!
//! Write order, so that a crash at any instant leaves the vault consistent:
//! 1. data files are written (each whole, durable, then visible);
//! 2. then the index file that says where their records are;
//! 3. only then a snapshot or document file that needs those records. A
//!    snapshot is refused when one of its ref targets is not indexed.
//!
//! A crash between 1 and 2 leaves data files no index names; between 2 and 3,
//! indexed records no snapshot reaches. Both are unreferenced, never
//! dangling, and a later backup deduplicates against indexed records.
//!
//! Error policy: every error names the vault location and the record,
//! snapshot or file concerned; damage (a check that fails, a file shorter
//! than the index says) is [`VaultError::Damaged`], never a panic and never
//! silently skipped.

pub mod backend;
pub mod cache;
pub mod crypto;
pub mod documents;
pub mod format;
pub mod index;
pub mod prune;
pub mod refs;
pub mod repair;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde::Serialize;

use crate::ids::{GitOid, ObjectKind, RecordId, RepoName, SnapshotId};
use backend::{Backend, BackendError, FileName, FileType, LocalBackend};
pub use documents::DocumentVersion;
use format::{FormatError, MAX_DELTA_BASE, MAX_DEPTH, RecordHeader, VaultConfig};
use index::{Entry, MemIndex};
pub use snapshot::{CopyStats, RefTable, RefUpdate, Snapshot, SnapshotBody};

/// Data files are closed when they pass this size.
const DATA_FILE_TARGET: usize = 32 << 20;
/// Decoded contents kept for delta bases and repeated reads. Bases are
/// mostly the version just written; 16 MiB rather than 64 halved `serve`'s
/// peak memory on the corpus at no measurable cost in time.
const DECODED_CACHE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(
        "no vault at {location} (create it with `hookvault init`, or check store.path / store.url)"
    )]
    NoVault { location: String },
    #[error("a vault is already at {location}: nothing created")]
    Exists { location: String },
    #[error(
        "the vault at {location} is encrypted: set store.passphrase in the config (a literal, {{ env = \"VAR\" }} or {{ file = \"PATH\" }})"
    )]
    NeedsPassphrase { location: String },
    #[error("wrong passphrase for the vault at {location}: none of its keys opens with it")]
    WrongPassphrase { location: String },
    #[error(
        "the vault at {location} is not encrypted, but store.passphrase is set: remove it, or back up into a new, encrypted vault"
    )]
    NotEncrypted { location: String },
    #[error(
        "the vault at {location} has format {found}; this hookvault reads format {}",
        format::FORMAT_VERSION
    )]
    UnknownFormat { location: String, found: String },
    #[error("{location}: {file_type} file {name}: {message}")]
    BadFile {
        location: String,
        file_type: &'static str,
        name: String,
        message: String,
    },
    #[error("{location}: record {id} in data file {file} at offset {offset} is damaged: {message}")]
    Damaged {
        location: String,
        id: RecordId,
        file: String,
        offset: u64,
        message: String,
    },
    #[error("object {oid} is not in the vault")]
    MissingObject { oid: GitOid },
    #[error(
        "snapshot of {repo} refused: ref {reference} points at {oid}, which is not in the vault"
    )]
    IncompleteSnapshot {
        repo: RepoName,
        reference: String,
        oid: String,
    },
    #[error("no snapshot of {repo} matches {prefix:?}")]
    NoSuchSnapshot { repo: RepoName, prefix: String },
    #[error("{prefix:?} matches several snapshots of {repo}; give more digits")]
    AmbiguousSnapshot { repo: RepoName, prefix: String },
    #[error("{repo} has no snapshots")]
    NoSnapshots { repo: RepoName },
    #[error("a vault lock was poisoned by a panic")]
    Poisoned,
    #[error("document refused: {message}")]
    BadDocument { message: String },
    #[error("encoding a record: {0}")]
    Encode(FormatError),
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
}

impl VaultError {
    /// Whether the failure is the storage being full (try again later).
    pub fn is_no_space(&self) -> bool {
        matches!(self, VaultError::Backend(e) if e.is_no_space())
    }
}

/// Counters over the whole vault.
#[derive(Debug, Clone, Serialize)]
pub struct VaultStats {
    pub location: String,
    pub records: u64,
    pub git_objects: u64,
    pub data_files: u64,
    pub data_bytes: u64,
    pub index_files: u64,
    pub index_bytes: u64,
    pub snapshot_files: u64,
    pub snapshot_bytes: u64,
    pub document_files: u64,
    pub document_bytes: u64,
    /// Every file of the vault, in bytes.
    pub total_bytes: u64,
    pub snapshots: u64,
    pub repositories: u64,
    pub document_versions: u64,
}

/// How the vault writes, and what opens it.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// zstd level for records.
    pub zstd_level: i32,
    /// The passphrase of an encrypted vault; a vault created with one is
    /// encrypted (FORMAT.md, "Encryption").
    pub passphrase: Option<crypto::Passphrase>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            zstd_level: 3,
            passphrase: None,
        }
    }
}

/// Decoded contents by record id, bounded by bytes (least recently used
/// goes first).
#[derive(Default)]
struct DecodedCache {
    map: HashMap<RecordId, (Arc<Vec<u8>>, u64)>,
    bytes: usize,
    tick: u64,
}

impl DecodedCache {
    fn get(&mut self, id: &RecordId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(id).map(|(data, used)| {
            *used = tick;
            data.clone()
        })
    }

    fn insert(&mut self, id: RecordId, data: Arc<Vec<u8>>) {
        if data.len() > DECODED_CACHE_BYTES / 4 || self.map.contains_key(&id) {
            return;
        }
        self.tick += 1;
        self.bytes += data.len();
        self.map.insert(id, (data, self.tick));
        if self.bytes > DECODED_CACHE_BYTES {
            // Evict the older half in one pass.
            let mut ticks: Vec<u64> = self.map.values().map(|(_, t)| *t).collect();
            ticks.sort_unstable();
            let cut = ticks[ticks.len() / 2];
            self.map.retain(|_, (_, t)| *t > cut);
            self.bytes = self.map.values().map(|(d, _)| d.len()).sum();
        }
    }
}

/// Records of one write that are not in an index file yet.
#[derive(Default)]
struct Pending {
    /// The data file being built; `None` file names in `entries` point here.
    buf: Vec<u8>,
    entries: HashMap<RecordId, (Option<FileName>, Entry)>,
    order: Vec<RecordId>,
    versions: HashMap<(u64, u32), RecordId>,
    next_version: HashMap<u64, u32>,
    stored_bytes: u64,
}

/// One object for [`Vault::put_objects`]: its id, the path a walk met it
/// at (`None` for commits and tags), and an object it probably resembles
/// (see [`crate::git::ObjectInfo::like`]).
pub trait ToStore {
    fn id(&self) -> GitOid;
    fn path(&self) -> Option<&str>;
    fn like(&self) -> Option<GitOid> {
        None
    }
}

impl ToStore for (GitOid, Option<&str>) {
    fn id(&self) -> GitOid {
        self.0
    }
    fn path(&self) -> Option<&str> {
        self.1
    }
}

impl ToStore for (GitOid, Option<&str>, Option<GitOid>) {
    fn id(&self) -> GitOid {
        self.0
    }
    fn path(&self) -> Option<&str> {
        self.1
    }
    fn like(&self) -> Option<GitOid> {
        self.2
    }
}

/// A pending data file and the index file for its records, encoded and
/// named, not yet written.
struct Sealed {
    data: Option<(FileName, Vec<u8>)>,
    index: Option<SealedIndex>,
}

/// An index file's name and bytes, and the entries it holds.
type SealedIndex = (FileName, Vec<u8>, Vec<(RecordId, Entry)>);

/// Records on their way into the pending data file: bases chosen, not yet
/// compressed.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    /// Raw bytes in `jobs`.
    bytes: usize,
}

/// Staged records are sealed at once from this many records or bytes of
/// data file: a push's few stay staged until the snapshot, a first
/// backup's batches are sealed as they go.
const STAGED_RECORDS: usize = 1024;
const STAGED_BYTES: usize = 4 << 20;

/// Whether records staged in `pending` should be sealed now: many of them,
/// or a data file already written that no index file names yet.
fn worth_sealing(pending: &Pending) -> bool {
    pending.order.len() >= STAGED_RECORDS
        || pending.buf.len() >= STAGED_BYTES
        || pending.entries.values().any(|(file, _)| file.is_some())
}

/// A batch is compressed when it holds this many records or raw bytes.
const BATCH_RECORDS: usize = 1024;
const BATCH_BYTES: usize = 8 << 20;

impl Batch {
    fn is_full(&self) -> bool {
        self.jobs.len() >= BATCH_RECORDS || self.bytes >= BATCH_BYTES
    }
}

/// Records prepared but not yet appended (the batch being filled and the
/// one being compressed), by id: content and depth bound, for choosing
/// later records' bases.
type InFlight = HashMap<RecordId, Bounded>;

/// A record's content and a bound on its depth.
type Bounded = (Arc<Vec<u8>>, u8);

/// A batch and its frames, in order.
type Compressed = (Batch, Result<Vec<Frame>, VaultError>);

struct Job {
    id: RecordId,
    kind: ObjectKind,
    placed: Option<(u64, u32)>,
    data: Arc<Vec<u8>>,
    /// The delta base's content and id. Its depth is looked up when this
    /// record is appended: the base is appended before it.
    base: Option<(Arc<Vec<u8>>, RecordId)>,
    /// The depth this record will have at most (as a delta on its base).
    /// Chains are capped with this bound, so they never pass `MAX_DEPTH`
    /// (a base kept whole only makes the chain shallower).
    bound: u8,
}

/// A compressed record and whether it is a delta.
type Frame = (Vec<u8>, bool);

/// The outcome of a batch compressed on another thread.
fn joined(handle: std::thread::ScopedJoinHandle<'_, Compressed>) -> Result<Compressed, VaultError> {
    handle
        .join()
        .map_err(|_| VaultError::Encode(FormatError("a compression thread panicked".into())))
}

/// How a batch is compressed: `Bulk` for a copy of many objects (a first
/// backup), `Thorough` for everything else (a push's few records,
/// recompression), see [`format::Compressor::without_long_distance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effort {
    Bulk,
    Thorough,
}

/// A copy of at least this many objects is compressed with `Effort::Bulk`.
const BULK_FROM: usize = 256;

/// Compress each job: a delta on its base unless the whole frame is
/// smaller (a delta under an eighth of the content is kept without trying
/// the whole frame, which would not be smaller in practice: half the work
/// of a first backup). Returns (frame, is a delta) per job, in order.
fn compress_jobs(jobs: &[Job], level: i32, effort: Effort) -> Result<Vec<Frame>, VaultError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let compressor = || match effort {
        Effort::Bulk => format::Compressor::new(level).without_long_distance(),
        Effort::Thorough => format::Compressor::new(level),
    };
    fn one<'a>(
        compressor: &mut format::Compressor<'a>,
        job: &'a Job,
    ) -> Result<(Vec<u8>, bool), FormatError> {
        let data = job.data.as_slice();
        let Some((base, _)) = &job.base else {
            return Ok((compressor.compress(data, None)?, false));
        };
        let delta = compressor.compress(data, Some(base.as_slice()))?;
        if delta.len() <= data.len() / 8 {
            return Ok((delta, true));
        }
        let whole = compressor.compress(data, None)?;
        Ok(if delta.len() < whole.len() {
            (delta, true)
        } else {
            (whole, false)
        })
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(jobs.len().div_ceil(16))
        .max(1);
    if threads == 1 {
        let mut compressor = compressor();
        return jobs
            .iter()
            .map(|job| one(&mut compressor, job).map_err(VaultError::Encode))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let mut frames: Vec<Option<(Vec<u8>, bool)>> = Vec::new();
    frames.resize_with(jobs.len(), || None);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut compressor = compressor();
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(at) else {
                            return Ok(done);
                        };
                        done.push((at, one(&mut compressor, job)?));
                    }
                })
            })
            .collect();
        for worker in workers {
            let done = worker
                .join()
                .map_err(|_| {
                    VaultError::Encode(FormatError("a compression thread panicked".into()))
                })?
                .map_err(VaultError::Encode)?;
            for (at, frame) in done {
                frames[at] = Some(frame);
            }
        }
        Ok::<(), VaultError>(())
    })?;
    frames
        .into_iter()
        .map(|f| {
            f.ok_or_else(|| VaultError::Encode(FormatError("a record was not compressed".into())))
        })
        .collect()
}

struct Inner {
    backend: Box<dyn Backend>,
    location: String,
    index: RwLock<MemIndex>,
    /// Index, snapshot and document files that could not be read, and why:
    /// left out (and reported by `verify`), so that one damaged file costs
    /// what it holds and not the whole vault.
    damaged_files: RwLock<BTreeMap<(FileType, FileName), String>>,
    /// repository → snapshots, oldest first.
    snapshots: RwLock<BTreeMap<RepoName, Vec<Snapshot>>>,
    /// (repository, collection, key) → versions, oldest first.
    documents: RwLock<BTreeMap<(RepoName, String, String), Vec<DocumentVersion>>>,
    /// The one writer's lock, and the records a backup has staged but not
    /// yet sealed (see [`Vault::stage_objects`]).
    writer: Mutex<Pending>,
    decoded: Mutex<DecodedCache>,
    options: WriteOptions,
    /// `serve`'s local copy of the small files; read commands have none.
    files: Option<cache::FileCache>,
    /// The master key of an encrypted vault.
    key: Option<crypto::MasterKey>,
    /// The key file it was unlocked with.
    key_file: Option<FileName>,
}

/// A handle to the vault; cheap to clone.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, VaultError> {
    m.lock().map_err(|_| VaultError::Poisoned)
}

fn read<T>(l: &RwLock<T>) -> Result<RwLockReadGuard<'_, T>, VaultError> {
    l.read().map_err(|_| VaultError::Poisoned)
}

fn write<T>(l: &RwLock<T>) -> Result<RwLockWriteGuard<'_, T>, VaultError> {
    l.write().map_err(|_| VaultError::Poisoned)
}

/// The newest of a document's versions (oldest first) at or before `at_ms`.
fn newest_at(versions: &[DocumentVersion], at_ms: Option<u64>) -> Option<DocumentVersion> {
    versions
        .iter()
        .rev()
        .find(|v| at_ms.is_none_or(|at| v.time_ms <= at))
        .cloned()
}

fn file_type_name(file_type: FileType) -> &'static str {
    match file_type {
        FileType::Config => "config",
        FileType::Data => "data",
        FileType::Index => "index",
        FileType::Snapshot => "snapshot",
        FileType::Document => "document",
        FileType::Key => "key",
    }
}

/// Whether to create a vault that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// `serve`: create on first use.
    IfMissing,
    /// Read commands: a missing vault is an error, never created.
    Never,
    /// `init`: create, and a vault already there is an error.
    New,
}

impl Vault {
    /// Open the local vault in `dir` (`<store.path>/vault`).
    pub fn open_local(
        dir: &Path,
        create: Create,
        options: WriteOptions,
    ) -> Result<Self, VaultError> {
        let backend: Box<dyn Backend> = match create {
            Create::IfMissing | Create::New => Box::new(LocalBackend::create(dir)?),
            Create::Never => Box::new(LocalBackend::open(dir)),
        };
        Self::open(backend, create, options)
    }

    /// Open a vault on any backend: check (or write) its config, then read
    /// every index, snapshot and document file.
    pub fn open(
        backend: Box<dyn Backend>,
        create: Create,
        options: WriteOptions,
    ) -> Result<Self, VaultError> {
        Self::open_with_cache(backend, create, options, None)
    }

    /// [`Vault::open`] with a local cache of the small files (`serve`).
    pub fn open_with_cache(
        backend: Box<dyn Backend>,
        create: Create,
        options: WriteOptions,
        files: Option<cache::FileCache>,
    ) -> Result<Self, VaultError> {
        let location = backend.location();
        let (config, created_key) = match backend.read(FileType::Config, &FileName::config()) {
            Ok(_) if create == Create::New => return Err(VaultError::Exists { location }),
            Ok(bytes) => (bytes, None),
            Err(e) if e.is_not_found() && create != Create::Never => {
                let mut config = new_config()?;
                // The key file first: a config that names encryption is
                // never without a key that opens it.
                let created_key = match &options.passphrase {
                    Some(passphrase) => {
                        let key = crypto::MasterKey::generate().map_err(encrypt_err)?;
                        let name = write_key_file(&*backend, &key, passphrase, "first")?;
                        config.encryption = Some(serde_json::json!({
                            "aead": "xchacha20poly1305",
                            "kdf": "argon2id",
                            "master_key": key.fingerprint(),
                        }));
                        Some((key, name))
                    }
                    None => None,
                };
                let bytes = serde_json::to_vec_pretty(&config)
                    .map_err(|e| VaultError::Encode(FormatError(e.to_string())))?;
                backend.write(FileType::Config, &FileName::config(), &bytes)?;
                // Two processes creating one vault at once (a bucket two
                // services share) each write a key and a config: only the
                // one whose config is there goes on.
                let there = backend.read(FileType::Config, &FileName::config())?;
                if there != bytes {
                    return Err(VaultError::BadFile {
                        location,
                        file_type: "config",
                        name: "config".into(),
                        message: "another process created this vault at the same moment; run again to open the vault it created".into(),
                    });
                }
                (bytes, created_key)
            }
            Err(e) if e.is_not_found() => return Err(VaultError::NoVault { location }),
            Err(e) => return Err(e.into()),
        };
        let master = check_config(&location, &config)?;
        let (key, key_file) = match (created_key, master, &options.passphrase) {
            (Some((key, name)), _, _) => (Some(key), Some(name)),
            (None, Some(fingerprint), Some(passphrase)) => {
                let (key, name) = unlock(&*backend, &location, passphrase, &fingerprint)?;
                (Some(key), Some(name))
            }
            (None, Some(_), None) => return Err(VaultError::NeedsPassphrase { location }),
            (None, None, Some(_)) => return Err(VaultError::NotEncrypted { location }),
            (None, None, None) => (None, None),
        };
        let vault = Self {
            inner: Arc::new(Inner {
                backend,
                location,
                index: RwLock::new(MemIndex::default()),
                damaged_files: RwLock::new(BTreeMap::new()),
                snapshots: RwLock::new(BTreeMap::new()),
                documents: RwLock::new(BTreeMap::new()),
                writer: Mutex::new(Pending::default()),
                decoded: Mutex::new(DecodedCache::default()),
                options,
                files,
                key,
                key_file,
            }),
        };
        vault.refresh()?;
        Ok(vault)
    }

    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The master key, in an encrypted vault.
    pub(crate) fn key(&self) -> Option<&crypto::MasterKey> {
        self.inner.key.as_ref()
    }

    /// The key of record ids and path keys, in an encrypted vault.
    pub(crate) fn id_key(&self) -> Option<[u8; 32]> {
        self.key().map(crypto::MasterKey::id_key)
    }

    fn need_key(&self) -> Result<&crypto::MasterKey, VaultError> {
        self.key().ok_or_else(|| VaultError::BadDocument {
            message: format!(
                "the vault at {} is not encrypted: it has no keys",
                self.inner.location
            ),
        })
    }

    /// The key files of an encrypted vault.
    pub fn keys(&self) -> Result<Vec<KeyInfo>, VaultError> {
        self.need_key()?;
        let mut out: Vec<KeyInfo> = key_files(&*self.inner.backend)?
            .into_iter()
            .map(|(name, file)| KeyInfo {
                in_use: self.inner.key_file.as_ref() == Some(&name),
                id: name.to_string(),
                label: file.label,
                created_ms: file.created_ms,
            })
            .collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// Add a key file that `passphrase` opens; returns its id.
    pub fn add_key(
        &self,
        passphrase: &crypto::Passphrase,
        label: &str,
    ) -> Result<String, VaultError> {
        let key = self.need_key()?;
        Ok(write_key_file(&*self.inner.backend, key, passphrase, label)?.to_string())
    }

    /// Remove the key file whose id starts with `prefix`: never the one this
    /// handle was opened with, and never the last.
    pub fn remove_key(&self, prefix: &str) -> Result<String, VaultError> {
        let keys = self.keys()?;
        let refuse = |message: String| VaultError::BadDocument { message };
        let matching: Vec<&KeyInfo> = keys
            .iter()
            .filter(|k| !prefix.is_empty() && k.id.starts_with(prefix))
            .collect();
        let key = match matching.as_slice() {
            [one] => *one,
            [] => {
                return Err(refuse(format!(
                    "no key {prefix:?} (see `hookvault key list`)"
                )));
            }
            _ => return Err(refuse(format!("{prefix:?} names more than one key"))),
        };
        if key.in_use {
            return Err(refuse(format!(
                "key {} is the one store.passphrase opens: remove another, or open with another passphrase first",
                &key.id[..12]
            )));
        }
        if keys.len() == 1 {
            return Err(refuse(
                "the last key is never removed: the vault would be unreadable".into(),
            ));
        }
        let name =
            FileName::parse(&key.id).ok_or_else(|| refuse(format!("bad key id {}", key.id)))?;
        self.inner.backend.remove(FileType::Key, &name)?;
        Ok(key.id.clone())
    }

    fn bad_file(&self, file_type: FileType, name: &FileName, e: FormatError) -> VaultError {
        VaultError::BadFile {
            location: self.inner.location.clone(),
            file_type: file_type_name(file_type),
            name: name.to_string(),
            message: e.0,
        }
    }

    /// A whole index, snapshot or document file, from the local cache when
    /// it holds an intact copy.
    fn read_small(&self, file_type: FileType, name: &FileName) -> Result<Vec<u8>, VaultError> {
        if let Some(files) = &self.inner.files
            && let Some(bytes) = files.get(file_type, name)
        {
            return Ok(bytes);
        }
        let bytes = self.inner.backend.read(file_type, name)?;
        if let Some(files) = &self.inner.files
            && name.hash() == Some(*blake3::hash(&bytes).as_bytes())
        {
            files.put(file_type, name, &bytes);
        }
        Ok(bytes)
    }

    /// Write a small file to the vault and keep a copy in the cache.
    fn write_small(
        &self,
        file_type: FileType,
        name: &FileName,
        bytes: &[u8],
    ) -> Result<(), VaultError> {
        self.inner.backend.write(file_type, name, bytes)?;
        if let Some(files) = &self.inner.files {
            files.put(file_type, name, bytes);
        }
        Ok(())
    }

    /// How many files the local cache holds (`None` without one).
    pub fn cached_files(&self) -> Option<usize> {
        self.inner.files.as_ref().map(cache::FileCache::len)
    }

    /// Read and check index files; one that cannot be read is set aside.
    fn read_index_files(
        &self,
        names: Vec<FileName>,
    ) -> Result<Vec<(FileName, index::IndexFile)>, VaultError> {
        let mut out = Vec::new();
        for name in names {
            let decoded = self.read_small(FileType::Index, &name).and_then(|bytes| {
                if name.hash() != Some(*blake3::hash(&bytes).as_bytes()) {
                    return Err(self.bad_file(
                        FileType::Index,
                        &name,
                        FormatError("content does not match the file name".into()),
                    ));
                }
                index::decode_index_file(&bytes, self.key())
                    .map_err(|e| self.bad_file(FileType::Index, &name, e))
            });
            match decoded {
                Ok(file) => out.push((name, file)),
                Err(e) => self.set_aside(FileType::Index, name, e)?,
            }
        }
        Ok(out)
    }

    /// Build the index again from every index file there is, aside, and
    /// put it in place in one step (readers never see it half built).
    pub(super) fn reload_index(&self) -> Result<(), VaultError> {
        let names: Vec<FileName> = {
            let damaged = read(&self.inner.damaged_files)?;
            self.inner
                .backend
                .list(FileType::Index)?
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !damaged.contains_key(&(FileType::Index, n.clone())))
                .collect()
        };
        let files = self.read_index_files(names)?;
        let mut fresh = MemIndex::default();
        fresh.supersede(files.iter().flat_map(|(_, f)| f.supersedes.iter().cloned()));
        for (name, file) in files {
            if !fresh.is_superseded(&name) {
                fresh.insert_file(name, file.entries);
            }
        }
        *write(&self.inner.index)? = fresh;
        Ok(())
    }

    /// An index file set aside as damaged that another one supersedes is
    /// not damage: nothing it holds is needed (and prune removes it).
    fn forget_superseded_damage(&self) -> Result<(), VaultError> {
        let index = read(&self.inner.index)?;
        write(&self.inner.damaged_files)?
            .retain(|(t, n), _| !(*t == FileType::Index && index.is_superseded(n)));
        Ok(())
    }

    /// Read the index, snapshot and document files this handle has not
    /// seen yet (written by another process since it opened). A file that
    /// cannot be read or decoded is left out, logged and remembered
    /// ([`Vault::damaged_files`]); a listing or storage failure is an error.
    pub fn refresh(&self) -> Result<(), VaultError> {
        let backend = &self.inner.backend;
        let names: Vec<FileName> = backend
            .list(FileType::Index)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let fresh: Vec<FileName> = {
            let index = read(&self.inner.index)?;
            let damaged = read(&self.inner.damaged_files)?;
            names
                .iter()
                .filter(|n| {
                    !index.has_file(n)
                        && !index.is_superseded(n)
                        && !damaged.contains_key(&(FileType::Index, (*n).clone()))
                })
                .cloned()
                .collect()
        };
        let read_now = self.read_index_files(fresh)?;
        let replaced: Vec<FileName> = read_now
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().cloned())
            .collect();
        let rebuild = {
            let mut index = write(&self.inner.index)?;
            if replaced.iter().any(|n| index.has_file(n)) {
                true
            } else {
                index.supersede(replaced.iter().cloned());
                for (name, file) in read_now {
                    if !index.is_superseded(&name) {
                        index.insert_file(name, file.entries);
                    }
                }
                false
            }
        };
        if rebuild {
            // A prune or repair of another process replaced index files
            // read here: the index is read again from what is there now.
            self.reload_index()?;
        }
        self.forget_superseded_damage()?;

        let known: HashSet<SnapshotId> = read(&self.inner.snapshots)?
            .values()
            .flatten()
            .map(|s| s.id)
            .collect();
        let mut loaded = Vec::new();
        for (name, _) in backend.list(FileType::Snapshot)? {
            let Some(hash) = name.hash() else { continue };
            if known.contains(&SnapshotId(hash))
                || read(&self.inner.damaged_files)?
                    .contains_key(&(FileType::Snapshot, name.clone()))
            {
                continue;
            }
            let opened = self
                .read_small(FileType::Snapshot, &name)
                .and_then(|bytes| {
                    Snapshot::open(&name, &bytes, self.key())
                        .map_err(|e| self.bad_file(FileType::Snapshot, &name, e))
                });
            match opened {
                Ok(snapshot) => loaded.push(snapshot),
                Err(e) => self.set_aside(FileType::Snapshot, name, e)?,
            }
        }
        if !loaded.is_empty() {
            let mut map = write(&self.inner.snapshots)?;
            for s in loaded {
                map.entry(s.body.repository.clone()).or_default().push(s);
            }
            for list in map.values_mut() {
                list.sort_by(|a, b| {
                    (a.body.seq, a.body.time_ms, a.id).cmp(&(b.body.seq, b.body.time_ms, b.id))
                });
            }
        }

        let docs_known: usize = read(&self.inner.documents)?.values().map(Vec::len).sum();
        let docs_damaged = read(&self.inner.damaged_files)?
            .keys()
            .filter(|(t, _)| *t == FileType::Document)
            .count();
        let doc_names = backend.list(FileType::Document)?;
        if doc_names.len() != docs_known + docs_damaged {
            let mut all: BTreeMap<(RepoName, String, String), Vec<DocumentVersion>> =
                BTreeMap::new();
            for (name, _) in doc_names {
                if read(&self.inner.damaged_files)?
                    .contains_key(&(FileType::Document, name.clone()))
                {
                    continue;
                }
                let opened = self
                    .read_small(FileType::Document, &name)
                    .and_then(|bytes| {
                        DocumentVersion::open(&name, &bytes, self.key())
                            .map_err(|e| self.bad_file(FileType::Document, &name, e))
                    });
                match opened {
                    Ok(v) => all
                        .entry((v.repository.clone(), v.collection.clone(), v.key.clone()))
                        .or_default()
                        .push(v),
                    Err(e) => self.set_aside(FileType::Document, name, e)?,
                }
            }
            for list in all.values_mut() {
                list.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
            }
            *write(&self.inner.documents)? = all;
        }
        Ok(())
    }

    /// Leave a file whose bytes are damaged out of the vault's view; fail
    /// when the storage failed (that may pass, and is no verdict on the file).
    fn set_aside(
        &self,
        file_type: FileType,
        name: FileName,
        error: VaultError,
    ) -> Result<(), VaultError> {
        let message = match &error {
            VaultError::BadFile { message, .. } => message.clone(),
            VaultError::Backend(e) if e.is_not_found() => {
                // Removed between the listing and the read (a prune).
                return Ok(());
            }
            _ => return Err(error),
        };
        tracing::warn!(location = %self.inner.location, file = %name, error = %message, "vault file left out: it cannot be read");
        write(&self.inner.damaged_files)?.insert((file_type, name), message);
        Ok(())
    }

    /// The index, snapshot and document files left out because they could
    /// not be read: (type, name, why).
    pub fn damaged_files(&self) -> Result<Vec<(&'static str, String, String)>, VaultError> {
        Ok(read(&self.inner.damaged_files)?
            .iter()
            .map(|((t, n), why)| (file_type_name(*t), n.to_string(), why.clone()))
            .collect())
    }

    /// Every indexed record: id, kind, data file, offset and length, in
    /// file and offset order (the order a full read goes best in).
    pub fn records(&self) -> Result<Vec<RecordLocation>, VaultError> {
        let mut out: Vec<RecordLocation> = read(&self.inner.index)?
            .entries()
            .map(|(id, e)| RecordLocation {
                id: *id,
                kind: e.kind,
                file: e.file.to_string(),
                offset: e.offset,
                len: e.len,
            })
            .collect();
        out.sort_by(|a, b| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
        Ok(out)
    }

    /// The data files, with their sizes.
    pub fn data_files(&self) -> Result<Vec<(String, u64)>, VaultError> {
        Ok(self
            .inner
            .backend
            .list(FileType::Data)?
            .into_iter()
            .map(|(n, size)| (n.to_string(), size))
            .collect())
    }

    /// Read, decode and check one record, from the data file: what was
    /// decoded before is forgotten first, so nothing is taken on trust.
    pub fn check_record(&self, id: &RecordId) -> Result<(ObjectKind, u64), VaultError> {
        lock(&self.inner.decoded)?.map.remove(id);
        let (kind, data) = self.load(None, id)?;
        Ok((kind, data.len() as u64))
    }

    /// Forget every decoded record (so a check reads from the files).
    pub fn forget_decoded(&self) -> Result<(), VaultError> {
        *lock(&self.inner.decoded)? = DecodedCache::default();
        Ok(())
    }

    pub fn has(&self, oid: &GitOid) -> Result<bool, VaultError> {
        Ok(read(&self.inner.index)?.contains(&RecordId::from(*oid)))
    }

    /// The ids among `oids` that the vault does not hold.
    pub fn missing(&self, oids: &[GitOid]) -> Result<Vec<GitOid>, VaultError> {
        let index = read(&self.inner.index)?;
        Ok(oids
            .iter()
            .filter(|o| !index.contains(&RecordId::from(**o)))
            .copied()
            .collect())
    }

    /// Store the objects `read` produces for each id the vault lacks, each
    /// as a delta against an earlier version of its path when that is
    /// smaller. Follows the write order in the module docs: when this
    /// returns, every object is in a data file and an index file.
    ///
    /// Records go in batches: bases are chosen in order as objects are
    /// read, and a full batch is compressed on other threads while the next
    /// one is read, then appended in order.
    pub fn put_objects<O: ToStore, E>(
        &self,
        objects: &[O],
        read: impl FnMut(&GitOid) -> Result<(ObjectKind, Vec<u8>), E>,
    ) -> Result<CopyStats, PutError<E>> {
        self.store_objects(objects, read, true)
    }

    /// [`Vault::put_objects`] for a backup that commits a snapshot next: a
    /// few records (a push's) may stay staged in memory, so that they go
    /// to disk with the snapshot's own files in one ordered write. Staged
    /// records are not yet in the index: [`Vault::has`] and readers do not
    /// see them, later puts do (and store them once). They are sealed by
    /// the next snapshot commit, document or other write, and a crash loses
    /// only them, which no snapshot names. Many records, or a data file
    /// closed on the way, are sealed before this returns.
    pub fn stage_objects<O: ToStore, E>(
        &self,
        objects: &[O],
        read: impl FnMut(&GitOid) -> Result<(ObjectKind, Vec<u8>), E>,
    ) -> Result<CopyStats, PutError<E>> {
        self.store_objects(objects, read, false)
    }

    fn store_objects<O: ToStore, E>(
        &self,
        objects: &[O],
        mut read: impl FnMut(&GitOid) -> Result<(ObjectKind, Vec<u8>), E>,
        seal: bool,
    ) -> Result<CopyStats, PutError<E>> {
        let mut writer = lock(&self.inner.writer)?;
        let pending = &mut *writer;
        let before = pending.stored_bytes;
        let level = self.inner.options.zstd_level;
        let effort = if objects.len() >= BULK_FROM {
            Effort::Bulk
        } else {
            Effort::Thorough
        };
        let mut stats = CopyStats::default();
        let started = std::time::Instant::now();
        let (mut reading, mut waiting) = (Duration::ZERO, Duration::ZERO);
        // The records this copy placed on a line, in order (to give back
        // the path versions of those it did not append if it fails), and
        // where each went (for the records that follow it onto its line).
        let mut taken: Vec<RecordId> = Vec::new();
        let mut lines: HashMap<RecordId, (u64, u32, ObjectKind)> = HashMap::new();
        let copied = std::thread::scope(|scope| -> Result<(), PutError<E>> {
            let mut batch = Batch::default();
            let mut in_flight = InFlight::new();
            let mut compressing = None;
            for object in objects {
                let (oid, path) = (&object.id(), object.path());
                let id = RecordId::from(*oid);
                if in_flight.contains_key(&id)
                    || pending.entries.contains_key(&id)
                    || self.has(oid)?
                {
                    stats.present += 1;
                    continue;
                }
                let read_started = std::time::Instant::now();
                let (kind, data) = read(oid).map_err(PutError::Source)?;
                reading += read_started.elapsed();
                let id_key = self.id_key();
                let path_key = match kind {
                    ObjectKind::Commit => Some(format::path_key_keyed(kind, "", id_key.as_ref())),
                    ObjectKind::Tree | ObjectKind::Blob => {
                        path.map(|p| format::path_key_keyed(kind, p, id_key.as_ref()))
                    }
                    _ => None,
                };
                let path_key = match (path_key, object.like()) {
                    (Some(key), Some(like)) => {
                        Some(self.line_for(pending, &lines, key, kind, &RecordId::from(like))?)
                    }
                    (key, _) => key,
                };
                self.prepare(
                    pending,
                    &mut batch,
                    &mut in_flight,
                    id,
                    kind,
                    path_key,
                    data,
                )?;
                if let Some((key, version)) = batch.jobs.last().and_then(|job| job.placed) {
                    taken.push(id);
                    lines.insert(id, (key, version, kind));
                }
                stats.written += 1;
                if batch.is_full() {
                    let wait_started = std::time::Instant::now();
                    if let Some(previous) = compressing.take() {
                        self.append_batch(pending, &mut in_flight, joined(previous)?)?;
                    }
                    waiting += wait_started.elapsed();
                    let full = std::mem::take(&mut batch);
                    compressing = Some(scope.spawn(move || {
                        let frames = compress_jobs(&full.jobs, level, effort);
                        (full, frames)
                    }));
                }
            }
            let wait_started = std::time::Instant::now();
            if let Some(previous) = compressing.take() {
                self.append_batch(pending, &mut in_flight, joined(previous)?)?;
            }
            let frames = compress_jobs(&batch.jobs, level, effort);
            self.append_batch(pending, &mut in_flight, (batch, frames))?;
            waiting += wait_started.elapsed();
            Ok(())
        });
        if let Err(e) = copied {
            // Records not yet appended had taken path versions: each is
            // given back (they follow every appended one, so each path's
            // next version is its first one given back). What was appended,
            // by this copy or staged by others, stays staged.
            for id in taken.into_iter().rev() {
                let Some(&(key, version, _)) = lines.get(&id) else {
                    continue;
                };
                if pending.entries.contains_key(&id) {
                    continue;
                }
                if pending.versions.get(&(key, version)) == Some(&id) {
                    pending.versions.remove(&(key, version));
                }
                pending.next_version.insert(key, version);
            }
            return Err(e);
        }
        if seal || worth_sealing(pending) {
            self.finish(pending)?;
        }
        stats.stored_bytes = pending.stored_bytes - before;
        tracing::debug!(
            written = stats.written,
            read_ms = reading.as_millis() as u64,
            compress_wait_ms = waiting.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "objects stored"
        );
        Ok(stats)
    }

    /// Store one non-git record (document or ref chunk) unless present;
    /// returns its id. Caller holds the writer lock.
    fn put_record(
        &self,
        pending: &mut Pending,
        kind: ObjectKind,
        path: Option<&str>,
        content: Vec<u8>,
    ) -> Result<RecordId, VaultError> {
        let id_key = self.id_key();
        let id = format::record_id_keyed(kind, &content, id_key.as_ref());
        let known = pending.entries.contains_key(&id) || read(&self.inner.index)?.contains(&id);
        if !known {
            let path_key = path.map(|p| format::path_key_keyed(kind, p, id_key.as_ref()));
            let mut batch = Batch::default();
            let mut in_flight = InFlight::new();
            self.prepare(
                pending,
                &mut batch,
                &mut in_flight,
                id,
                kind,
                path_key,
                content,
            )?;
            let frames =
                compress_jobs(&batch.jobs, self.inner.options.zstd_level, Effort::Thorough);
            self.append_batch(pending, &mut in_flight, (batch, frames))?;
        }
        Ok(id)
    }

    /// The version the next record on `line` takes: one past the highest
    /// staged or indexed.
    fn next_version(&self, pending: &Pending, line: u64) -> Result<u32, VaultError> {
        Ok(match pending.next_version.get(&line) {
            Some(v) => *v,
            None => read(&self.inner.index)?.next_version(line),
        })
    }

    /// The line a blob or tree goes on: its own path's, unless that has no
    /// versions yet and `like` (what was at the same path before) is the
    /// latest version of a line of the same kind, which it then continues:
    /// a file renamed and then changed is stored as a delta of what it was.
    /// Only the latest: a line whose path still changes is not shared.
    /// Readers follow whatever line the index names.
    fn line_for(
        &self,
        pending: &Pending,
        lines: &HashMap<RecordId, (u64, u32, ObjectKind)>,
        key: u64,
        kind: ObjectKind,
        like: &RecordId,
    ) -> Result<u64, VaultError> {
        let next_version = |line: u64| self.next_version(pending, line);
        if next_version(key)? != 0 {
            return Ok(key);
        }
        let placed = match lines.get(like) {
            Some(&(line, version, line_kind)) => (line_kind == kind).then_some((line, version)),
            None => self
                .entry(Some(pending), like)?
                .filter(|(_, entry)| entry.kind == kind)
                .and_then(|(_, entry)| entry.path),
        };
        Ok(match placed {
            Some((line, version)) if next_version(line)? == version + 1 => line,
            _ => key,
        })
    }

    /// Give a record its path version and choose its delta base (by the
    /// skip-delta rule), then queue it in `batch` to be compressed.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        pending: &mut Pending,
        batch: &mut Batch,
        in_flight: &mut InFlight,
        id: RecordId,
        kind: ObjectKind,
        path_key: Option<u64>,
        data: Vec<u8>,
    ) -> Result<(), VaultError> {
        let mut placed = None;
        let mut base = None;
        let mut bound = 0;
        if let Some(key) = path_key {
            let version = self.next_version(pending, key)?;
            placed = Some((key, version));
            if let Some(base_version) = format::skip_delta_base(version)
                && let Some(base_id) = self.version_id(Some(pending), key, base_version)?
                && let Some((content, base_bound)) =
                    self.delta_base(pending, in_flight, &base_id)?
            {
                base = Some((content, base_id));
                bound = base_bound + 1;
            }
            pending.versions.insert((key, version), id);
            pending.next_version.insert(key, version + 1);
        }
        let data = Arc::new(data);
        batch.bytes += data.len();
        in_flight.insert(id, (data.clone(), bound));
        batch.jobs.push(Job {
            id,
            kind,
            placed,
            data,
            base,
            bound,
        });
        Ok(())
    }

    /// The content of a delta base and (a bound on) its depth, unless its
    /// chain is already as deep as allowed or it is too large to serve as a
    /// base.
    fn delta_base(
        &self,
        pending: &Pending,
        in_flight: &InFlight,
        base_id: &RecordId,
    ) -> Result<Option<Bounded>, VaultError> {
        let (content, depth) = if let Some((content, bound)) = in_flight.get(base_id) {
            (content.clone(), *bound)
        } else {
            let Some((_, entry)) = self.entry(Some(pending), base_id)? else {
                return Ok(None);
            };
            if entry.depth >= MAX_DEPTH {
                return Ok(None);
            }
            (self.load(Some(pending), base_id)?.1, entry.depth)
        };
        Ok((depth < MAX_DEPTH && content.len() <= MAX_DELTA_BASE).then_some((content, depth)))
    }

    /// Append a compressed batch, in order, to the pending data file. A
    /// record's base was appended before it, so its depth is known here.
    fn append_batch(
        &self,
        pending: &mut Pending,
        in_flight: &mut InFlight,
        (batch, frames): Compressed,
    ) -> Result<(), VaultError> {
        for (job, (frame, delta)) in batch.jobs.into_iter().zip(frames?) {
            let depth = match (&job.base, delta) {
                (Some((_, base_id)), true) => {
                    let (_, base) = self.entry(Some(pending), base_id)?.ok_or_else(|| {
                        VaultError::Encode(FormatError(format!(
                            "record {} was compressed against {}, which was not written first",
                            job.id, base_id
                        )))
                    })?;
                    base.depth + 1
                }
                _ => 0,
            };
            debug_assert!(depth <= job.bound);
            in_flight.remove(&job.id);
            self.append(pending, job, frame, depth)?;
            if pending.buf.len() >= DATA_FILE_TARGET {
                self.close_data_file(pending)?;
            }
        }
        Ok(())
    }

    /// Append one compressed record to the pending data file.
    fn append(
        &self,
        pending: &mut Pending,
        job: Job,
        frame: Vec<u8>,
        depth: u8,
    ) -> Result<(), VaultError> {
        let Job {
            id,
            kind,
            placed,
            data,
            ..
        } = job;
        if pending.buf.is_empty() {
            pending.buf.extend_from_slice(format::DATA_MAGIC);
        }
        let offset = pending.buf.len() as u64;
        let header = RecordHeader {
            kind,
            delta: depth > 0,
            raw_size: data.len() as u64,
        };
        let record =
            format::encode_record(header, &frame, self.key()).map_err(VaultError::Encode)?;
        pending.buf.extend_from_slice(&record);
        let len = pending.buf.len() as u64 - offset;
        pending.stored_bytes += len;
        pending.entries.insert(
            id,
            (
                None,
                Entry {
                    kind,
                    depth,
                    // Replaced when the data file is closed.
                    file: FileName::from_hash(&[0; 32]),
                    offset,
                    len,
                    path: placed,
                },
            ),
        );
        pending.order.push(id);
        lock(&self.inner.decoded)?.insert(id, data);
        Ok(())
    }

    /// Write the pending data file and give its records their file name.
    fn close_data_file(&self, pending: &mut Pending) -> Result<(), VaultError> {
        if let Some((name, bytes)) = self.seal_data_file(pending) {
            self.inner.backend.write(FileType::Data, &name, &bytes)?;
        }
        Ok(())
    }

    /// Take the pending data file's bytes and give its records the file's
    /// name (the caller writes it before anything that names it).
    fn seal_data_file(&self, pending: &mut Pending) -> Option<(FileName, Vec<u8>)> {
        if pending.buf.is_empty() {
            return None;
        }
        let name = FileName::from_hash(blake3::hash(&pending.buf).as_bytes());
        for (file, entry) in pending.entries.values_mut() {
            if file.is_none() {
                *file = Some(name.clone());
                entry.file = name.clone();
            }
        }
        Some((name, std::mem::take(&mut pending.buf)))
    }

    /// Close the data file, then write one index file for everything
    /// pending and make it visible to readers.
    fn finish(&self, pending: &mut Pending) -> Result<(), VaultError> {
        let sealed = self.seal(pending)?;
        self.write_sealed(vec![sealed], None)
    }

    /// The writer lock, with any records a backup staged sealed first, so
    /// that whoever holds it finds every record in the index.
    fn sealed_writer(&self) -> Result<MutexGuard<'_, Pending>, VaultError> {
        let mut pending = lock(&self.inner.writer)?;
        self.finish(&mut pending)?;
        Ok(pending)
    }

    /// The pending data file and an index file for everything pending,
    /// ready to be written; `pending` is left empty but for its byte count
    /// (which includes the index file).
    fn seal(&self, pending: &mut Pending) -> Result<Sealed, VaultError> {
        let data = self.seal_data_file(pending);
        let mut index = None;
        if !pending.order.is_empty() {
            let entries: Vec<(RecordId, Entry)> = pending
                .order
                .iter()
                .filter_map(|id| pending.entries.get(id).map(|(_, e)| (*id, e.clone())))
                .collect();
            let bytes =
                index::encode_index_file(&entries, &[], self.key()).map_err(VaultError::Encode)?;
            let name = FileName::from_hash(blake3::hash(&bytes).as_bytes());
            pending.stored_bytes += bytes.len() as u64;
            index = Some((name, bytes, entries));
        }
        *pending = Pending {
            stored_bytes: pending.stored_bytes,
            ..Pending::default()
        };
        Ok(Sealed { data, index })
    }

    /// Write each sealed data file and its index file, then `last` (a file
    /// that names their records), in that order and in one call to the
    /// backend, then make the indexes visible to readers.
    fn write_sealed(
        &self,
        sealed: Vec<Sealed>,
        last: Option<(FileType, &FileName, &[u8])>,
    ) -> Result<(), VaultError> {
        let mut files: Vec<(FileType, &FileName, &[u8])> = Vec::with_capacity(5);
        for Sealed { data, index } in &sealed {
            if let Some((name, bytes)) = data {
                files.push((FileType::Data, name, bytes));
            }
            if let Some((name, bytes, _)) = index {
                files.push((FileType::Index, name, bytes));
            }
        }
        files.extend(last);
        self.inner.backend.write_in_order(&files)?;
        if let Some(cache) = &self.inner.files {
            for (file_type, name, bytes) in &files {
                if *file_type != FileType::Data {
                    cache.put(*file_type, name, bytes);
                }
            }
        }
        drop(files);
        let mut index = write(&self.inner.index)?;
        for Sealed { index: sealed, .. } in sealed {
            if let Some((name, _, entries)) = sealed {
                index.insert_file(name, entries);
            }
        }
        Ok(())
    }

    fn version_id(
        &self,
        pending: Option<&Pending>,
        key: u64,
        version: u32,
    ) -> Result<Option<RecordId>, VaultError> {
        if let Some(id) = pending.and_then(|p| p.versions.get(&(key, version))) {
            return Ok(Some(*id));
        }
        Ok(read(&self.inner.index)?.version(key, version))
    }

    /// The entry of a record and whether its bytes are still in the
    /// pending buffer (not yet in a data file).
    fn entry(
        &self,
        pending: Option<&Pending>,
        id: &RecordId,
    ) -> Result<Option<(bool, Entry)>, VaultError> {
        if let Some((file, entry)) = pending.and_then(|p| p.entries.get(id)) {
            return Ok(Some((file.is_none(), entry.clone())));
        }
        Ok(read(&self.inner.index)?.get(id).map(|e| (false, e.clone())))
    }

    fn damaged(&self, id: &RecordId, entry: &Entry, message: impl Into<String>) -> VaultError {
        VaultError::Damaged {
            location: self.inner.location.clone(),
            id: *id,
            file: entry.file.to_string(),
            offset: entry.offset,
            message: message.into(),
        }
    }

    /// Read, decode (resolving the delta chain) and check one record.
    fn load(
        &self,
        pending: Option<&Pending>,
        id: &RecordId,
    ) -> Result<(ObjectKind, Arc<Vec<u8>>), VaultError> {
        let Some((in_buffer, entry)) = self.entry(pending, id)? else {
            return Err(VaultError::MissingObject {
                oid: GitOid::from(*id),
            });
        };
        if let Some(data) = lock(&self.inner.decoded)?.get(id) {
            return Ok((entry.kind, data));
        }
        let bytes: Vec<u8> = match (in_buffer, pending) {
            (true, Some(p)) => {
                let start = usize::try_from(entry.offset).unwrap_or(usize::MAX);
                let end = start.saturating_add(usize::try_from(entry.len).unwrap_or(usize::MAX));
                p.buf
                    .get(start..end)
                    .ok_or_else(|| self.damaged(id, &entry, "outside the pending data file"))?
                    .to_vec()
            }
            _ => self
                .inner
                .backend
                .read_range(FileType::Data, &entry.file, entry.offset, entry.len)
                .map_err(|e| match e {
                    BackendError::Io { .. } | BackendError::NotFound { .. } => {
                        self.damaged(id, &entry, e.to_string())
                    }
                    other => VaultError::Backend(other),
                })?,
        };
        self.decode_record(pending, id, &entry, &bytes)
    }

    /// The content of record `id` from its stored bytes (`record`, at
    /// `entry`'s place), its base loaded as `load` loads it; checked
    /// against its id and kept among the decoded records.
    fn decode_record(
        &self,
        pending: Option<&Pending>,
        id: &RecordId,
        entry: &Entry,
        record: &[u8],
    ) -> Result<(ObjectKind, Arc<Vec<u8>>), VaultError> {
        if let Some(data) = lock(&self.inner.decoded)?.get(id) {
            return Ok((entry.kind, data));
        }
        let entry = entry.clone();
        let bytes =
            format::open_record(record, self.key()).map_err(|e| self.damaged(id, &entry, e.0))?;
        let (header, at) =
            RecordHeader::decode(&bytes).map_err(|e| self.damaged(id, &entry, e.0))?;
        if header.kind != entry.kind {
            return Err(self.damaged(id, &entry, "record kind differs from the index"));
        }
        let frame = bytes
            .get(at..)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| self.damaged(id, &entry, "record without a frame"))?;
        let base = if header.delta {
            let (key, version) = entry
                .path
                .ok_or_else(|| self.damaged(id, &entry, "a delta record without a path"))?;
            let base_version = format::skip_delta_base(version)
                .ok_or_else(|| self.damaged(id, &entry, "a delta record at version 0"))?;
            let mut candidates: Vec<RecordId> = Vec::new();
            if let Some(id) = pending.and_then(|p| p.versions.get(&(key, base_version))) {
                candidates.push(*id);
            }
            for other in read(&self.inner.index)?.versions(key, base_version) {
                if !candidates.contains(other) {
                    candidates.push(*other);
                }
            }
            if candidates.len() > 1 {
                // Two writers gave this version: the base is the candidate
                // whose content decodes this record to its id.
                return self.load_on_one_of(pending, id, &entry, &header, frame, &candidates);
            }
            let base_id = candidates.first().copied().ok_or_else(|| {
                self.damaged(
                    id,
                    &entry,
                    format!("delta base (version {base_version}) is not indexed"),
                )
            })?;
            Some(self.load(pending, &base_id)?.1)
        } else {
            None
        };
        let content =
            format::decompress(frame, base.as_deref().map(Vec::as_slice), header.raw_size)
                .map_err(|e| self.damaged(id, &entry, e.0))?;
        if !format::matches_id_keyed(id, header.kind, &content, self.id_key().as_ref()) {
            return Err(self.damaged(id, &entry, "content does not match its id"));
        }
        let content = Arc::new(content);
        lock(&self.inner.decoded)?.insert(*id, content.clone());
        Ok((header.kind, content))
    }

    /// Decode a delta record whose base version two writers gave: on the
    /// first candidate that yields content matching `id`.
    fn load_on_one_of(
        &self,
        pending: Option<&Pending>,
        id: &RecordId,
        entry: &Entry,
        header: &RecordHeader,
        frame: &[u8],
        candidates: &[RecordId],
    ) -> Result<(ObjectKind, Arc<Vec<u8>>), VaultError> {
        let mut failure = None;
        for base_id in candidates {
            let base = match self.load(pending, base_id) {
                Ok((_, base)) => base,
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            if let Ok(content) = format::decompress(frame, Some(&base), header.raw_size)
                && format::matches_id_keyed(id, header.kind, &content, self.id_key().as_ref())
            {
                let content = Arc::new(content);
                lock(&self.inner.decoded)?.insert(*id, content.clone());
                return Ok((header.kind, content));
            }
        }
        Err(failure.unwrap_or_else(|| {
            self.damaged(
                id,
                entry,
                format!(
                    "content does not match its id on any of the {} records of its base version",
                    candidates.len()
                ),
            )
        }))
    }

    /// Remove the data files no index file names, and return how many and
    /// their bytes. The write order (data file, then the index file naming
    /// it) makes such a file what a writer killed in between left: nothing
    /// reaches it, and its records are written again by the next backup.
    ///
    /// Only safe while nothing else writes this vault: `serve` calls it at
    /// start, for a vault inside its own store directory, whose lock it
    /// holds, so the index read when the vault was opened names every
    /// indexed data file. A bucket may be shared by several services, each
    /// writing a data file a moment before its index file, so for buckets
    /// this is left to a prune that knows the age of what it removes.
    /// While an index file is left out as damaged, nothing is removed: its
    /// data files would look unindexed.
    pub fn remove_unindexed_data(&self) -> Result<(usize, u64), VaultError> {
        let _writer = self.sealed_writer()?;
        if read(&self.inner.damaged_files)?
            .keys()
            .any(|(t, _)| *t == FileType::Index)
        {
            return Ok((0, 0));
        }
        let listed = self.inner.backend.list(FileType::Data)?;
        let indexed: HashSet<FileName> = read(&self.inner.index)?
            .entries()
            .map(|(_, entry)| entry.file.clone())
            .collect();
        let (mut files, mut bytes) = (0, 0);
        for (name, size) in listed {
            if !indexed.contains(&name) {
                self.inner.backend.remove(FileType::Data, &name)?;
                files += 1;
                bytes += size;
            }
        }
        Ok((files, bytes))
    }

    /// Read a git object back, verified.
    pub fn read_object(&self, oid: &GitOid) -> Result<(ObjectKind, Arc<Vec<u8>>), VaultError> {
        self.load(None, &RecordId::from(*oid))
    }

    /// Record a snapshot. Refused unless every ref target is in the vault.
    pub fn commit_snapshot(&self, new: NewSnapshot) -> Result<Snapshot, VaultError> {
        let mut writer = lock(&self.inner.writer)?;
        // The objects a backup staged go to disk with the snapshot.
        let pending = &mut *writer;
        let before = pending.stored_bytes;
        for (reference, target) in &new.refs {
            if !pending.entries.contains_key(&RecordId::from(*target)) && !self.has(target)? {
                return Err(VaultError::IncompleteSnapshot {
                    repo: new.repository.clone(),
                    reference: reference.clone(),
                    oid: target.to_hex(),
                });
            }
        }
        // The staged objects keep a data and an index file of their own,
        // apart from the ref table's: an index file lost later then loses
        // either objects (which `repair` can fetch again) or a ref table,
        // never both.
        let objects = self.seal(pending)?;
        let mut table = Pending::default();
        let mut chunks = Vec::new();
        let repository = new.repository.to_string();
        for (chunk, first) in refs::chunk(&new.refs) {
            let path = refs::chunk_path(&new.source, &repository, first);
            chunks.push(self.put_record(&mut table, ObjectKind::Refs, Some(&path), chunk)?);
        }
        let ref_table = self.seal(&mut table)?;
        let latest = self.latest_snapshot(&new.repository)?;
        let body = SnapshotBody {
            repository: new.repository,
            source: new.source,
            seq: latest.as_ref().map_or(1, |s| s.body.seq + 1),
            time_ms: new.time_ms,
            delivery_id: new.delivery_id,
            event_key: new.event_key,
            actor: new.actor,
            parent: latest.map(|s| s.id),
            refs: RefTable {
                count: new.refs.len() as u64,
                chunks,
            },
            updates: new.updates,
            stats: CopyStats {
                stored_bytes: new.stats.stored_bytes
                    + (pending.stored_bytes - before)
                    + table.stored_bytes,
                ..new.stats
            },
        };
        let (snapshot, bytes) = Snapshot::seal(body, self.key()).map_err(VaultError::Encode)?;
        // The staged objects' data and index files, the ref chunks', then
        // the snapshot that names them: one ordered write.
        self.write_sealed(
            vec![objects, ref_table],
            Some((
                FileType::Snapshot,
                &FileName::from_hash(&snapshot.id.0),
                &bytes,
            )),
        )?;
        write(&self.inner.snapshots)?
            .entry(snapshot.body.repository.clone())
            .or_default()
            .push(snapshot.clone());
        Ok(snapshot)
    }

    /// The refs of a snapshot, read from its chunks.
    pub fn snapshot_refs(
        &self,
        snapshot: &Snapshot,
    ) -> Result<BTreeMap<String, GitOid>, VaultError> {
        let out = self.chunk_refs(snapshot, |_| true)?;
        if out.len() as u64 != snapshot.body.refs.count {
            return Err(VaultError::BadFile {
                location: self.inner.location.clone(),
                file_type: "snapshot",
                name: snapshot.id.to_string(),
                message: format!(
                    "ref table holds {} refs, snapshot says {}",
                    out.len(),
                    snapshot.body.refs.count
                ),
            });
        }
        Ok(out)
    }

    /// The refs held by those chunks of a snapshot's ref table that `wanted`
    /// picks (chunks are cut by ref name, so a chunk two snapshots share
    /// holds the same refs in both).
    pub fn chunk_refs(
        &self,
        snapshot: &Snapshot,
        wanted: impl Fn(&RecordId) -> bool,
    ) -> Result<BTreeMap<String, GitOid>, VaultError> {
        let mut out = BTreeMap::new();
        for chunk in snapshot.body.refs.chunks.iter().filter(|c| wanted(c)) {
            let (kind, bytes) = self.load(None, chunk)?;
            let damaged = |message: String| VaultError::BadFile {
                location: self.inner.location.clone(),
                file_type: "snapshot",
                name: snapshot.id.to_string(),
                message,
            };
            if kind != ObjectKind::Refs {
                return Err(damaged(format!("ref chunk {chunk} is a {}", kind.as_str())));
            }
            refs::decode_chunk(&bytes, &mut out)
                .map_err(|e| damaged(format!("ref chunk {chunk}: {e}")))?;
        }
        Ok(out)
    }

    /// The refs of a repository's latest snapshot, if it has one.
    pub fn latest_refs(
        &self,
        repo: &RepoName,
    ) -> Result<Option<BTreeMap<String, GitOid>>, VaultError> {
        self.latest_snapshot(repo)?
            .map(|s| self.snapshot_refs(&s))
            .transpose()
    }

    /// A snapshot as listings show it: its fields, with `refs` as a map of
    /// ref name → target and `ref_chunks` naming the stored chunks.
    pub fn snapshot_json(&self, snapshot: &Snapshot) -> Result<serde_json::Value, VaultError> {
        let refs: BTreeMap<String, String> = self
            .snapshot_refs(snapshot)?
            .into_iter()
            .map(|(name, target)| (name, target.to_hex()))
            .collect();
        let mut value = serde_json::to_value(snapshot)
            .map_err(|e| VaultError::Encode(FormatError(e.to_string())))?;
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "ref_chunks".into(),
                serde_json::json!(snapshot.body.refs.chunks),
            );
            object.insert("refs".into(), serde_json::json!(refs));
        }
        Ok(value)
    }

    /// All snapshots of a repository, oldest first.
    pub fn snapshots(&self, repo: &RepoName) -> Result<Vec<Snapshot>, VaultError> {
        Ok(read(&self.inner.snapshots)?
            .get(repo)
            .cloned()
            .unwrap_or_default())
    }

    /// Every repository with at least one snapshot.
    pub fn repositories(&self) -> Result<Vec<RepoName>, VaultError> {
        Ok(read(&self.inner.snapshots)?.keys().cloned().collect())
    }

    pub fn latest_snapshot(&self, repo: &RepoName) -> Result<Option<Snapshot>, VaultError> {
        Ok(read(&self.inner.snapshots)?
            .get(repo)
            .and_then(|l| l.last().cloned()))
    }

    /// A snapshot by id prefix (at least 4 hex digits), or the latest.
    pub fn find_snapshot(
        &self,
        repo: &RepoName,
        prefix: Option<&str>,
    ) -> Result<Snapshot, VaultError> {
        let Some(prefix) = prefix else {
            return self
                .latest_snapshot(repo)?
                .ok_or_else(|| VaultError::NoSnapshots { repo: repo.clone() });
        };
        let wanted = prefix.to_ascii_lowercase();
        let mut found: Vec<Snapshot> = self
            .snapshots(repo)?
            .into_iter()
            .filter(|s| wanted.len() >= 4 && s.id.to_hex().starts_with(&wanted))
            .collect();
        match found.len() {
            0 => Err(VaultError::NoSuchSnapshot {
                repo: repo.clone(),
                prefix: prefix.to_string(),
            }),
            1 => Ok(found.remove(0)),
            _ => Err(VaultError::AmbiguousSnapshot {
                repo: repo.clone(),
                prefix: prefix.to_string(),
            }),
        }
    }

    pub fn find_snapshot_by_id(&self, id: &SnapshotId) -> Result<Option<Snapshot>, VaultError> {
        Ok(read(&self.inner.snapshots)?
            .values()
            .flatten()
            .find(|s| &s.id == id)
            .cloned())
    }

    /// Store `json` as the newest version of `collection/key` of `repo`.
    /// Unchanged content adds no version. Returns the record id.
    pub fn put_document(
        &self,
        repo: &RepoName,
        collection: &str,
        key: &str,
        json: &[u8],
        delivery_id: &str,
        time_ms: u64,
    ) -> Result<RecordId, VaultError> {
        for (what, name) in [("collection", collection), ("key", key)] {
            if !documents::valid_name(name) {
                return Err(VaultError::BadDocument {
                    message: format!("{what} {name:?} must be 1-128 of [A-Za-z0-9._-]"),
                });
            }
        }
        serde_json::from_slice::<serde_json::Value>(json).map_err(|e| VaultError::BadDocument {
            message: format!("{collection}/{key} is not valid JSON: {e}"),
        })?;
        let mut pending = self.sealed_writer()?;
        let content = format::record_id_keyed(ObjectKind::Document, json, self.id_key().as_ref());
        if let Some(latest) = self.document_at(repo, collection, key, None)?
            && latest.content == content
        {
            return Ok(content);
        }
        let path = format!("{repo}/{collection}/{key}");
        self.put_record(
            &mut pending,
            ObjectKind::Document,
            Some(&path),
            json.to_vec(),
        )?;
        let sealed = self.seal(&mut pending)?;
        let version = DocumentVersion {
            repository: repo.clone(),
            collection: collection.to_string(),
            key: key.to_string(),
            content,
            size: json.len() as u64,
            time_ms,
            delivery_id: delivery_id.to_string(),
        };
        let (name, bytes) = version.seal(self.key()).map_err(VaultError::Encode)?;
        self.write_sealed(vec![sealed], Some((FileType::Document, &name, &bytes)))?;
        let mut docs = write(&self.inner.documents)?;
        let list = docs
            .entry((repo.clone(), collection.to_string(), key.to_string()))
            .or_default();
        list.push(version);
        list.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        Ok(content)
    }

    /// The newest version of a document at or before `at_ms` (or now).
    pub fn document_at(
        &self,
        repo: &RepoName,
        collection: &str,
        key: &str,
        at_ms: Option<u64>,
    ) -> Result<Option<DocumentVersion>, VaultError> {
        Ok(read(&self.inner.documents)?
            .get(&(repo.clone(), collection.to_string(), key.to_string()))
            .and_then(|l| newest_at(l, at_ms)))
    }

    /// The newest version, at or before `at_ms`, of every document of a
    /// collection, ordered by key.
    pub fn documents_at(
        &self,
        repo: &RepoName,
        collection: &str,
        at_ms: Option<u64>,
    ) -> Result<Vec<DocumentVersion>, VaultError> {
        let docs = read(&self.inner.documents)?;
        Ok(docs
            .iter()
            .filter(|((r, c, _), _)| r == repo && c == collection)
            .filter_map(|(_, l)| newest_at(l, at_ms))
            .collect())
    }

    /// Every version of one document, oldest first.
    pub fn document_history(
        &self,
        repo: &RepoName,
        collection: &str,
        key: &str,
    ) -> Result<Vec<DocumentVersion>, VaultError> {
        Ok(read(&self.inner.documents)?
            .get(&(repo.clone(), collection.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_default())
    }

    /// The bytes of a document version, verified.
    pub fn read_document(&self, version: &DocumentVersion) -> Result<Vec<u8>, VaultError> {
        let (kind, bytes) = self.load(None, &version.content)?;
        if kind != ObjectKind::Document {
            return Err(VaultError::BadDocument {
                message: format!(
                    "{}/{} names record {}, which is a {}",
                    version.collection,
                    version.key,
                    version.content,
                    kind.as_str()
                ),
            });
        }
        Ok(bytes.as_ref().clone())
    }

    /// Where a git object sits in the vault: its kind, its place in its
    /// path's line of versions and the record its delta is based on (for
    /// writers of other formats that want to reuse the same bases).
    pub fn placement(&self, oid: &GitOid) -> Result<Option<Placement>, VaultError> {
        let Some(entry) = read(&self.inner.index)?.get(&RecordId::from(*oid)).cloned() else {
            return Ok(None);
        };
        let base = match (entry.depth, entry.path) {
            (1.., Some((key, version))) => format::skip_delta_base(version)
                .map(|v| self.version_id(None, key, v))
                .transpose()?
                .flatten(),
            _ => None,
        };
        Ok(Some(Placement {
            kind: entry.kind,
            path: entry.path,
            base: base.map(GitOid::from),
        }))
    }

    /// The record at the end of the deepest delta chain, and its depth
    /// (for benchmarks and `verify`).
    pub fn deepest_record(&self) -> Option<(RecordId, u8)> {
        let index = self.inner.index.read().ok()?;
        index
            .entries()
            .max_by_key(|(_, e)| e.depth)
            .map(|(id, e)| (*id, e.depth))
    }

    pub fn stats(&self) -> Result<VaultStats, VaultError> {
        let backend = &self.inner.backend;
        let sum = |t: FileType| -> Result<(u64, u64), VaultError> {
            let list = backend.list(t)?;
            Ok((list.len() as u64, list.iter().map(|(_, n)| n).sum()))
        };
        let (data_files, data_bytes) = sum(FileType::Data)?;
        let (index_files, index_bytes) = sum(FileType::Index)?;
        let (snapshot_files, snapshot_bytes) = sum(FileType::Snapshot)?;
        let (document_files, document_bytes) = sum(FileType::Document)?;
        let (_, config_bytes) = sum(FileType::Config)?;
        let index = read(&self.inner.index)?;
        let git_objects = index
            .entries()
            .filter(|(_, e)| {
                matches!(
                    e.kind,
                    ObjectKind::Commit | ObjectKind::Tree | ObjectKind::Blob | ObjectKind::Tag
                )
            })
            .count() as u64;
        let snapshots = read(&self.inner.snapshots)?;
        let documents = read(&self.inner.documents)?;
        Ok(VaultStats {
            location: self.inner.location.clone(),
            records: index.len() as u64,
            git_objects,
            data_files,
            data_bytes,
            index_files,
            index_bytes,
            snapshot_files,
            snapshot_bytes,
            document_files,
            document_bytes,
            total_bytes: data_bytes + index_bytes + snapshot_bytes + document_bytes + config_bytes,
            snapshots: snapshots.values().map(|l| l.len() as u64).sum(),
            repositories: snapshots.len() as u64,
            document_versions: documents.values().map(|l| l.len() as u64).sum(),
        })
    }
}

/// One key file of an encrypted vault (`hookvault key list`).
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub label: String,
    pub created_ms: u64,
    /// The key this handle was opened with.
    pub in_use: bool,
}

/// Where a record is (`verify`).
#[derive(Clone, Debug)]
pub struct RecordLocation {
    pub id: RecordId,
    pub kind: ObjectKind,
    pub file: String,
    pub offset: u64,
    pub len: u64,
}

/// See [`Vault::placement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub kind: ObjectKind,
    /// (path key, version): sorting by it puts every base before the
    /// versions built on it.
    pub path: Option<(u64, u32)>,
    pub base: Option<GitOid>,
}

/// What a backup asks to record as a snapshot.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub repository: RepoName,
    pub source: String,
    pub time_ms: u64,
    pub delivery_id: String,
    pub event_key: String,
    pub actor: Option<String>,
    pub refs: BTreeMap<String, GitOid>,
    pub updates: Vec<RefUpdate>,
    pub stats: CopyStats,
}

fn new_config() -> Result<VaultConfig, VaultError> {
    let mut id = [0u8; 32];
    getrandom::fill(&mut id)
        .map_err(|e| VaultError::Encode(FormatError(format!("random: {e}"))))?;
    Ok(VaultConfig {
        format: format::FORMAT_VERSION,
        id: hex::encode(id),
        created_ms: crate::event::now_ms(),
        encryption: None,
    })
}

/// Check the config; returns whether the vault is encrypted.
/// Check the format; returns the fingerprint of the master key of an
/// encrypted vault.
fn check_config(location: &str, bytes: &[u8]) -> Result<Option<String>, VaultError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| VaultError::BadFile {
            location: location.to_string(),
            file_type: "config",
            name: "config".into(),
            message: e.to_string(),
        })?;
    let found = value
        .get("format")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    if found.as_u64() != Some(u64::from(format::FORMAT_VERSION)) {
        return Err(VaultError::UnknownFormat {
            location: location.to_string(),
            found: found.to_string(),
        });
    }
    let config = serde_json::from_value::<VaultConfig>(value).map_err(|e| VaultError::BadFile {
        location: location.to_string(),
        file_type: "config",
        name: "config".into(),
        message: e.to_string(),
    })?;
    match &config.encryption {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(e)
            if e.get("aead").and_then(|v| v.as_str()) == Some("xchacha20poly1305")
                && e.get("kdf").and_then(|v| v.as_str()) == Some("argon2id")
                && e.get("master_key").and_then(|v| v.as_str()).is_some() =>
        {
            Ok(e.get("master_key")
                .and_then(|v| v.as_str())
                .map(str::to_string))
        }
        Some(other) => Err(VaultError::BadFile {
            location: location.to_string(),
            file_type: "config",
            name: "config".into(),
            message: format!("encryption {other} is not one this hookvault knows"),
        }),
    }
}

fn encrypt_err(e: crypto::CryptoError) -> VaultError {
    VaultError::Encode(FormatError(e.to_string()))
}

/// Write a new key file for `key`, opened by `passphrase`.
fn write_key_file(
    backend: &dyn Backend,
    key: &crypto::MasterKey,
    passphrase: &crypto::Passphrase,
    label: &str,
) -> Result<FileName, VaultError> {
    let file = key
        .wrap(passphrase, label, crate::event::now_ms())
        .map_err(encrypt_err)?;
    let bytes = serde_json::to_vec_pretty(&file)
        .map_err(|e| VaultError::Encode(FormatError(e.to_string())))?;
    let name = FileName::from_hash(blake3::hash(&bytes).as_bytes());
    backend.write(FileType::Key, &name, &bytes)?;
    Ok(name)
}

/// Every key file of the vault that is whole (its name is the hash of its
/// bytes) and parses; any other is logged and left out, so one bad file
/// neither hides the others nor stops the vault opening.
fn key_files(backend: &dyn Backend) -> Result<Vec<(FileName, crypto::KeyFile)>, VaultError> {
    let mut out = Vec::new();
    for (name, _) in backend.list(FileType::Key)? {
        let bytes = backend.read(FileType::Key, &name)?;
        if name.hash() != Some(*blake3::hash(&bytes).as_bytes()) {
            tracing::warn!(key = %name, "key file left out: its content does not match its name");
            continue;
        }
        match serde_json::from_slice(&bytes) {
            Ok(file) => out.push((name, file)),
            Err(e) => {
                tracing::warn!(key = %name, error = %e, "key file left out: it does not parse")
            }
        }
    }
    Ok(out)
}

/// The master key `config` names (by `fingerprint`), from the first key
/// file `passphrase` opens to it. A key file that opens to another key (a
/// creation that lost a race, or a file planted by someone who can write
/// the vault) is not used.
fn unlock(
    backend: &dyn Backend,
    location: &str,
    passphrase: &crypto::Passphrase,
    fingerprint: &str,
) -> Result<(crypto::MasterKey, FileName), VaultError> {
    let mut foreign: Option<FileName> = None;
    for (name, file) in key_files(backend)? {
        match file.unwrap_key(passphrase) {
            Ok(key) if key.fingerprint() == fingerprint => return Ok((key, name)),
            Ok(_) => foreign = Some(name),
            Err(crypto::CryptoError::WrongKey) => continue,
            Err(e) => tracing::warn!(key = %name, error = %e, "key file left out"),
        }
    }
    if let Some(name) = foreign {
        return Err(VaultError::BadFile {
            location: location.to_string(),
            file_type: "key",
            name: name.to_string(),
            message: "the passphrase opens this key file, but to a master key the vault's config does not name; no key file opens the vault's own key with it".into(),
        });
    }
    Err(VaultError::WrongPassphrase {
        location: location.to_string(),
    })
}

impl VaultError {
    /// A full disk (or bucket quota) is `NoSpace`, waited out; every other
    /// vault error may pass on a later attempt.
    pub fn kind(&self) -> crate::failure::FailureKind {
        match self {
            Self::Backend(BackendError::NoSpace { .. }) => crate::failure::FailureKind::NoSpace,
            other => crate::failure::of_chain(other),
        }
    }
}

/// A failure while storing objects: the vault's own, or the reader's.
#[derive(Debug, thiserror::Error)]
pub enum PutError<E> {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Source(E),
}

#[cfg(test)]
mod tests;
