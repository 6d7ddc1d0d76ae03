//! Write git objects into a bare repository as one pack and its index.
//!
//! Restore hands over every object fully decoded. Each object is hashed (its
//! git id must be the id it was given) and appended to a temporary pack file
//! in `objects/pack`, either whole or, through [`PackWriter::add_delta`], as
//! a git delta against an object added before it. `finish` writes the
//! version 2 index and moves both files into place under the names git gives
//! them, `pack-<checksum>.pack` and `pack-<checksum>.idx`, the index last: a
//! reader never sees a pack without its index. A writer that fails or is
//! dropped unfinished removes its temporary files.
//!
//! Hashing, delta encoding and compression run on worker threads while the
//! caller produces the next objects. Objects travel in batches (one channel
//! message per batch, not per object) and entries are written in the order
//! they were added, so the same objects added in the same order give
//! byte-identical files, and a delta's base always lies before it (an
//! offset delta, as git writes them). The raw bytes handed over but not yet
//! written are bounded by [`PackWriterOptions::memory_limit`].
//!
//! Entry and pack headers come from `gix::odb::pack`. The index is encoded
//! here: gix writes one only by reading the finished pack back and inflating
//! and hashing every object again (`gix::odb::pack::Bundle::write_to_directory`),
//! work this writer has already done once per object. gix has no delta
//! encoder, so the one below is this project's; every delta it produces is
//! replayed against the base before it is used, and a delta that does not
//! give back the object exactly is dropped for the whole object.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;

use gix::object::Kind;
use gix::odb::pack::data::entry::Header;
use gix::zlib::Compression;
use gix::zlib::stream::deflate::{Compress, FlushCompress};

/// A pack's object count is a u32.
const MAX_OBJECTS: u64 = u32::MAX as u64;
/// Offsets above this go into the index's table of 64-bit offsets.
const LARGE_OFFSET: u64 = 0x7fff_ffff;
const SHA1_LEN: usize = 20;
/// A batch goes to the workers once it holds this many raw bytes...
const BATCH_BYTES: usize = 1 << 20;
/// ...or this many objects.
const BATCH_OBJECTS: usize = 512;
/// Buffers larger than this are not kept for reuse.
const POOLED_CAPACITY: usize = 4 * BATCH_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum PackWriteError {
    #[error(
        "object {oid} ({kind}) hashes to {actual}: its content is not the object it is said to be"
    )]
    Mismatch {
        oid: String,
        kind: &'static str,
        actual: String,
    },
    #[error("object {oid} was added twice to the pack in {dir}")]
    Duplicate { oid: String, dir: PathBuf },
    #[error(
        "the base content given for object {oid} is not the content added as {base} \
         (different length or checksum)"
    )]
    BaseMismatch { oid: String, base: String },
    #[error("hashing object {oid} ({kind}): {source}")]
    Hash {
        oid: String,
        kind: &'static str,
        source: Box<gix::Error>,
    },
    #[error("compressing object {oid} ({kind}): {source}")]
    Compress {
        oid: String,
        kind: &'static str,
        source: Box<gix::Error>,
    },
    #[error("object {oid} is a delta against {base}, which is not in the pack")]
    MissingBase { oid: String, base: String },
    #[error("checksum of {path}: {source}")]
    Checksum {
        path: PathBuf,
        source: Box<gix::Error>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pack in {dir} cannot hold more than {MAX_OBJECTS} objects")]
    TooManyObjects { dir: PathBuf },
    #[error("index {path} was written but does not read back: {message}")]
    Verify { path: PathBuf, message: String },
    #[error("writing the pack in {dir}: a worker thread stopped unexpectedly")]
    WorkerLost { dir: PathBuf },
    #[error("writing the pack in {dir}: an earlier object already failed")]
    AlreadyFailed { dir: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PackWriteError + '_ {
    move |source| PackWriteError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Tuning of a [`PackWriter`].
#[derive(Debug, Clone, Copy)]
pub struct PackWriterOptions {
    /// zlib level of every entry. Level 1, the default here, is two to three
    /// times faster than git's pack default of 6, for a pack about 15% (with
    /// deltas) to 40% (whole objects) larger.
    pub compression: Compression,
    /// Threads that hash and compress; the caller's thread only hands over.
    pub threads: usize,
    /// Raw object bytes handed over but not yet written (a delta's base
    /// counts too). An object larger than this still goes through, alone.
    pub memory_limit: usize,
    /// fsync the pack and index before moving them into place, as git does.
    pub fsync: bool,
    /// Longest delta chain written; deeper objects are stored whole. Long
    /// chains make every later read of old objects slow. git's default is 50.
    pub max_delta_depth: u8,
}

impl Default for PackWriterOptions {
    fn default() -> Self {
        PackWriterOptions {
            compression: Compression::BEST_SPEED,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8),
            memory_limit: 64 << 20,
            fsync: true,
            max_delta_depth: 50,
        }
    }
}

/// What [`PackWriter::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackWritten {
    /// `None` when no object was added: then nothing is written.
    pub pack: Option<PathBuf>,
    pub index: Option<PathBuf>,
    /// The pack's trailing checksum, which also names both files.
    pub checksum: Option<[u8; 20]>,
    pub objects: u64,
    /// Objects stored as deltas.
    pub deltas: u64,
    /// Sum of the objects' sizes, uncompressed.
    pub raw_bytes: u64,
    pub pack_bytes: u64,
}

/// Removes a file when dropped, unless disarmed.
struct TempPath(Option<PathBuf>);

impl TempPath {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn create_temp(dir: &Path, prefix: &str) -> Result<(File, PathBuf, TempPath), PackWriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{prefix}_{}_{nanos:08x}_{n}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((file, path.clone(), TempPath(Some(path)))),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
}

/// Bounds the raw bytes between `add` and the writer thread.
struct Budget {
    in_flight: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

impl Budget {
    /// Wait for room for `n` bytes; gives up once `failed` is set, as a
    /// thread that died frees nothing.
    fn acquire(&self, n: usize, failed: &AtomicBool) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        while *in_flight > 0 && *in_flight + n > self.limit && !failed.load(Ordering::Acquire) {
            in_flight = self
                .freed
                .wait_timeout(in_flight, std::time::Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *in_flight += n;
    }

    fn release(&self, n: usize) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *in_flight = in_flight.saturating_sub(n);
        self.freed.notify_all();
    }
}

/// Byte buffers kept for reuse, so that large allocations are not returned
/// to the system and faulted in again for every batch.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>, keep: usize) {
        if buf.capacity() == 0 || buf.capacity() > POOLED_CAPACITY {
            return;
        }
        buf.clear();
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < keep {
            pool.push(buf);
        }
    }
}

/// What the caller's side remembers of every object added, to check a
/// later delta's base and to bound delta chains.
struct Added {
    /// Position in the pack, counting objects.
    number: u32,
    kind: Kind,
    len: u64,
    crc32: u32,
    /// Length of the delta chain above this object, if it becomes a delta.
    depth: u8,
}

struct DeltaBase {
    number: u32,
    len: usize,
}

struct Pending {
    oid: [u8; 20],
    kind: Kind,
    len: usize,
    /// The base's bytes follow the object's in the batch.
    base: Option<DeltaBase>,
}

/// Objects on their way to a worker, their contents back to back in `data`.
struct Batch {
    seq: u64,
    objects: Vec<Pending>,
    data: Vec<u8>,
}

/// One entry of an encoded batch; its bytes run from `start` to the next
/// entry's start.
struct EncodedEntry {
    oid: [u8; 20],
    start: usize,
    /// Over header and data; for a delta, computed once its header is known.
    crc32: u32,
    /// For a delta: its base's number and the size of the delta itself.
    delta: Option<(u32, u64)>,
}

/// A batch as pack entries. Whole objects are complete with their header;
/// a delta's header depends on where its base ends up, so the writer adds it.
struct Encoded {
    seq: u64,
    raw: usize,
    bytes: Vec<u8>,
    entries: Vec<EncodedEntry>,
    error: Option<PackWriteError>,
}

struct IndexLine {
    oid: [u8; 20],
    offset: u64,
    crc32: u32,
}

struct Written {
    file: BufWriter<File>,
    hasher: gix::hash::Hasher,
    offset: u64,
    lines: Vec<IndexLine>,
    deltas: u64,
}

struct Shared {
    budget: Budget,
    failed: AtomicBool,
    inputs: Pool,
    outputs: Pool,
    pool_size: usize,
}

/// Writes one pack and its index into `<repo>/objects/pack`.
pub struct PackWriter {
    dir: PathBuf,
    options: PackWriterOptions,
    header_count: u32,
    added: HashMap<[u8; 20], Added>,
    raw_bytes: u64,
    batch: Batch,
    jobs: Option<mpsc::SyncSender<Batch>>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<Written, PackWriteError>>>,
    shared: Arc<Shared>,
    pack_path: PathBuf,
    pack_temp: TempPath,
}

impl std::fmt::Debug for PackWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackWriter")
            .field("dir", &self.dir)
            .field("objects", &self.added.len())
            .finish_non_exhaustive()
    }
}

impl PackWriter {
    /// Start a pack in `objects_pack_dir` (which must exist). With the right
    /// `expected_count` the pack is checksummed as it is written; without it,
    /// or with a wrong one, `finish` fixes the header and reads the pack back
    /// once to checksum it.
    pub fn new(
        objects_pack_dir: &Path,
        expected_count: Option<u64>,
    ) -> Result<Self, PackWriteError> {
        Self::with_options(
            objects_pack_dir,
            expected_count,
            PackWriterOptions::default(),
        )
    }

    pub fn with_options(
        objects_pack_dir: &Path,
        expected_count: Option<u64>,
        options: PackWriterOptions,
    ) -> Result<Self, PackWriteError> {
        let dir = objects_pack_dir.to_path_buf();
        let header_count = match expected_count {
            Some(n) => {
                u32::try_from(n).map_err(|_| PackWriteError::TooManyObjects { dir: dir.clone() })?
            }
            None => 0,
        };
        let (mut file, pack_path, pack_temp) = create_temp(&dir, "tmp_pack")?;
        let header =
            gix::odb::pack::data::header::encode(gix::odb::pack::data::Version::V2, header_count);
        file.write_all(&header).map_err(io_err(&pack_path))?;
        let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
        hasher.update(&header);
        let written = Written {
            file: BufWriter::with_capacity(1 << 20, file),
            hasher,
            offset: header.len() as u64,
            lines: Vec::with_capacity(header_count.min(1 << 20) as usize),
            deltas: 0,
        };

        let threads = options.threads.max(1);
        let shared = Arc::new(Shared {
            budget: Budget {
                in_flight: Mutex::new(0),
                freed: Condvar::new(),
                limit: options.memory_limit.max(1),
            },
            failed: AtomicBool::new(false),
            inputs: Pool::default(),
            outputs: Pool::default(),
            pool_size: threads * 2 + 2,
        });
        let (job_tx, job_rx) = mpsc::sync_channel::<Batch>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Encoded>();
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let shared = Arc::clone(&shared);
            let compression = options.compression;
            let worker = std::thread::Builder::new()
                .name(format!("pack-encode-{i}"))
                .spawn(move || encode_batches(&job_rx, &done_tx, &shared, compression))
                .map_err(io_err(&dir))?;
            workers.push(worker);
        }
        drop(done_tx);
        let writer = {
            let shared = Arc::clone(&shared);
            let pack_path = pack_path.clone();
            std::thread::Builder::new()
                .name("pack-write".into())
                .spawn(move || write_batches(written, &done_rx, &shared, &pack_path))
                .map_err(io_err(&dir))?
        };
        Ok(PackWriter {
            dir,
            options,
            header_count,
            added: HashMap::with_capacity(header_count.min(1 << 20) as usize),
            raw_bytes: 0,
            batch: Batch {
                seq: 0,
                objects: Vec::new(),
                data: Vec::new(),
            },
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
            shared,
            pack_path,
            pack_temp,
        })
    }

    /// Add one whole object: `data` is its content without the git header.
    pub fn add(&mut self, oid: [u8; 20], kind: Kind, data: &[u8]) -> Result<(), PackWriteError> {
        self.push(oid, kind, data, None)
    }

    /// Add `data` as a delta against `base_data`, the content of `base_oid`,
    /// which must have been added before. The object is stored whole instead
    /// where a delta does not pay (it is over half the object's size), where
    /// the base is of another kind or unknown here, or where the chain would
    /// grow deeper than [`PackWriterOptions::max_delta_depth`].
    pub fn add_delta(
        &mut self,
        oid: [u8; 20],
        kind: Kind,
        data: &[u8],
        base_oid: [u8; 20],
        base_data: &[u8],
    ) -> Result<(), PackWriteError> {
        let base = match self.added.get(&base_oid) {
            Some(base) if base.kind == kind && base.depth < self.options.max_delta_depth => base,
            _ => return self.push(oid, kind, data, None),
        };
        if base.len != base_data.len() as u64 || base.crc32 != crc32fast::hash(base_data) {
            return Err(PackWriteError::BaseMismatch {
                oid: hex(&oid),
                base: hex(&base_oid),
            });
        }
        let delta = (
            DeltaBase {
                number: base.number,
                len: base_data.len(),
            },
            base.depth + 1,
        );
        self.push(oid, kind, data, Some((delta, base_data)))
    }

    /// Number of objects added so far.
    pub fn objects(&self) -> u64 {
        self.added.len() as u64
    }

    fn push(
        &mut self,
        oid: [u8; 20],
        kind: Kind,
        data: &[u8],
        base: Option<((DeltaBase, u8), &[u8])>,
    ) -> Result<(), PackWriteError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.take_failure());
        }
        let number = self.added.len();
        let number = u32::try_from(number)
            .ok()
            .filter(|n| u64::from(*n) < MAX_OBJECTS)
            .ok_or_else(|| PackWriteError::TooManyObjects {
                dir: self.dir.clone(),
            })?;
        let depth = base.as_ref().map_or(0, |((_, depth), _)| *depth);
        let record = Added {
            number,
            kind,
            len: data.len() as u64,
            crc32: crc32fast::hash(data),
            depth,
        };
        match self.added.entry(oid) {
            std::collections::hash_map::Entry::Occupied(_) => {
                return Err(PackWriteError::Duplicate {
                    oid: hex(&oid),
                    dir: self.dir.clone(),
                });
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(record);
            }
        }
        self.raw_bytes += data.len() as u64;
        let size = data.len() + base.as_ref().map_or(0, |(_, b)| b.len());
        if size >= BATCH_BYTES {
            // Large objects travel alone.
            self.send_batch()?;
        }
        if self.batch.data.capacity() == 0 {
            self.batch.data = self.shared.inputs.take();
        }
        self.batch.data.reserve(size);
        self.batch.data.extend_from_slice(data);
        let base = base.map(|((base, _), base_data)| {
            self.batch.data.extend_from_slice(base_data);
            base
        });
        self.batch.objects.push(Pending {
            oid,
            kind,
            len: data.len(),
            base,
        });
        if self.batch.data.len() >= BATCH_BYTES || self.batch.objects.len() >= BATCH_OBJECTS {
            self.send_batch()?;
        }
        Ok(())
    }

    fn send_batch(&mut self) -> Result<(), PackWriteError> {
        if self.batch.objects.is_empty() {
            return Ok(());
        }
        let next = Batch {
            seq: self.batch.seq + 1,
            objects: Vec::with_capacity(self.batch.objects.len()),
            data: Vec::new(),
        };
        let batch = std::mem::replace(&mut self.batch, next);
        self.shared
            .budget
            .acquire(batch.data.len(), &self.shared.failed);
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(batch).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.take_failure());
        }
        Ok(())
    }

    /// Stop the threads and return the first error they hit.
    fn take_failure(&mut self) -> PackWriteError {
        match self.stop() {
            Err(e) => e,
            Ok(_) => PackWriteError::AlreadyFailed {
                dir: self.dir.clone(),
            },
        }
    }

    fn stop(&mut self) -> Result<Written, PackWriteError> {
        self.jobs = None;
        let mut lost = false;
        for worker in self.workers.drain(..) {
            lost |= worker.join().is_err();
        }
        let Some(writer) = self.writer.take() else {
            return Err(PackWriteError::AlreadyFailed {
                dir: self.dir.clone(),
            });
        };
        let written = writer.join().map_err(|_| PackWriteError::WorkerLost {
            dir: self.dir.clone(),
        })??;
        if lost {
            return Err(PackWriteError::WorkerLost {
                dir: self.dir.clone(),
            });
        }
        Ok(written)
    }

    /// Write the pack trailer and the index, and move both into place.
    pub fn finish(mut self) -> Result<PackWritten, PackWriteError> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.take_failure());
        }
        self.send_batch()?;
        let Written {
            file,
            hasher,
            offset: pack_len,
            mut lines,
            deltas,
        } = self.stop()?;
        let raw_bytes = self.raw_bytes;
        let pack_path = self.pack_path.clone();
        let mut file = file
            .into_inner()
            .map_err(|e| io_err(&pack_path)(e.into_error()))?;
        let objects = lines.len() as u64;
        if objects == 0 {
            return Ok(PackWritten {
                pack: None,
                index: None,
                checksum: None,
                objects: 0,
                deltas: 0,
                raw_bytes: 0,
                pack_bytes: 0,
            });
        }
        let checksum = if u64::from(self.header_count) == objects {
            hasher.try_finalize()
        } else {
            // The header promised another count: fix it and checksum again.
            let count = u32::try_from(objects).map_err(|_| PackWriteError::TooManyObjects {
                dir: self.dir.clone(),
            })?;
            let header =
                gix::odb::pack::data::header::encode(gix::odb::pack::data::Version::V2, count);
            file.seek(SeekFrom::Start(0)).map_err(io_err(&pack_path))?;
            file.write_all(&header).map_err(io_err(&pack_path))?;
            file.seek(SeekFrom::Start(0)).map_err(io_err(&pack_path))?;
            checksum_file(&mut file, pack_len).map_err(io_err(&pack_path))?
        }
        .map_err(|e| PackWriteError::Checksum {
            path: pack_path.clone(),
            source: Box::new(e),
        })?;
        let mut checksum_bytes = [0u8; SHA1_LEN];
        checksum_bytes.copy_from_slice(checksum.as_slice());
        file.seek(SeekFrom::Start(pack_len))
            .map_err(io_err(&pack_path))?;
        file.write_all(&checksum_bytes)
            .map_err(io_err(&pack_path))?;
        if self.options.fsync {
            file.sync_all().map_err(io_err(&pack_path))?;
        }
        drop(file);

        lines.sort_unstable_by_key(|line| line.oid);
        let (mut idx_file, idx_path, mut idx_temp) = create_temp(&self.dir, "tmp_idx")?;
        let index =
            encode_index(&lines, &checksum_bytes).map_err(|e| PackWriteError::Checksum {
                path: idx_path.clone(),
                source: Box::new(e),
            })?;
        idx_file.write_all(&index).map_err(io_err(&idx_path))?;
        if self.options.fsync {
            idx_file.sync_all().map_err(io_err(&idx_path))?;
        }
        drop(idx_file);

        let name = format!("pack-{}", hex(&checksum_bytes));
        let final_pack = self.dir.join(format!("{name}.pack"));
        let final_idx = self.dir.join(format!("{name}.idx"));
        for path in [&pack_path, &idx_path] {
            make_read_only(path)?;
        }
        std::fs::rename(&pack_path, &final_pack).map_err(io_err(&final_pack))?;
        self.pack_temp.disarm();
        std::fs::rename(&idx_path, &final_idx).map_err(io_err(&final_idx))?;
        idx_temp.disarm();
        if self.options.fsync {
            // Make the renames durable where a directory can be synced.
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
        }

        // A cheap read-back: gix must accept the index and count the same objects.
        let opened =
            gix::odb::pack::index::File::at(&final_idx, gix::hash::Kind::Sha1).map_err(|e| {
                PackWriteError::Verify {
                    path: final_idx.clone(),
                    message: e.to_string(),
                }
            })?;
        if u64::from(opened.num_objects()) != objects {
            return Err(PackWriteError::Verify {
                path: final_idx.clone(),
                message: format!(
                    "it lists {} objects, {objects} were written",
                    opened.num_objects()
                ),
            });
        }

        Ok(PackWritten {
            pack: Some(final_pack),
            index: Some(final_idx),
            checksum: Some(checksum_bytes),
            objects,
            deltas,
            raw_bytes,
            pack_bytes: pack_len + SHA1_LEN as u64,
        })
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // Unfinished: stop the threads; the temporary pack goes with `pack_temp`.
        if self.writer.is_some() {
            self.shared.failed.store(true, Ordering::Release);
            let _ = self.stop();
        }
    }
}

fn make_read_only(path: &Path) -> Result<(), PackWriteError> {
    let mut permissions = std::fs::metadata(path).map_err(io_err(path))?.permissions();
    permissions.set_readonly(true);
    std::fs::set_permissions(path, permissions).map_err(io_err(path))
}

fn checksum_file(file: &mut File, len: u64) -> std::io::Result<Result<gix::ObjectId, gix::Error>> {
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.try_finalize())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Commit => "commit",
        Kind::Tree => "tree",
        Kind::Blob => "blob",
        Kind::Tag => "tag",
    }
}

fn pack_header(kind: Kind) -> Header {
    match kind {
        Kind::Commit => Header::Commit,
        Kind::Tree => Header::Tree,
        Kind::Blob => Header::Blob,
        Kind::Tag => Header::Tag,
    }
}

/// Sets the shared failure flag if its thread unwinds, so that `add` stops
/// waiting for a thread that is gone.
struct FailOnPanic<'a>(&'a AtomicBool);

impl Drop for FailOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Release);
        }
    }
}

/// Worker: hash and check every object of a batch, then encode it.
fn encode_batches(
    jobs: &Mutex<mpsc::Receiver<Batch>>,
    done: &mpsc::Sender<Encoded>,
    shared: &Shared,
    compression: Compression,
) {
    let _fail_on_panic = FailOnPanic(&shared.failed);
    let mut compress = Compress::new(compression);
    let mut table = Vec::new();
    loop {
        let batch = {
            let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
            jobs.recv()
        };
        let Ok(batch) = batch else { return };
        let mut encoded = Encoded {
            seq: batch.seq,
            raw: batch.data.len(),
            bytes: shared.outputs.take(),
            entries: Vec::with_capacity(batch.objects.len()),
            error: None,
        };
        // After a failure the rest is skipped; the writer reports the first one.
        if !shared.failed.load(Ordering::Acquire) {
            let mut at = 0;
            for object in &batch.objects {
                let data = &batch.data[at..at + object.len];
                at += object.len;
                let base = object.base.as_ref().map(|base| {
                    let base_data = &batch.data[at..at + base.len];
                    at += base.len;
                    (base.number, base_data)
                });
                let result = encode(&mut compress, &mut table, object, data, base, &mut encoded);
                if let Err(e) = result {
                    encoded.error = Some(e);
                    break;
                }
            }
        }
        shared.inputs.give(batch.data, shared.pool_size);
        if done.send(encoded).is_err() {
            return;
        }
    }
}

fn encode(
    compress: &mut Compress,
    table: &mut Vec<u32>,
    object: &Pending,
    data: &[u8],
    base: Option<(u32, &[u8])>,
    out: &mut Encoded,
) -> Result<(), PackWriteError> {
    let Pending { oid, kind, .. } = *object;
    let compress_err = |e| PackWriteError::Compress {
        oid: hex(&oid),
        kind: kind_name(kind),
        source: Box::new(e),
    };
    let actual = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, data).map_err(|e| {
        PackWriteError::Hash {
            oid: hex(&oid),
            kind: kind_name(kind),
            source: Box::new(e),
        }
    })?;
    if actual.as_slice() != oid {
        return Err(PackWriteError::Mismatch {
            oid: hex(&oid),
            kind: kind_name(kind),
            actual: actual.to_string(),
        });
    }
    let start = out.bytes.len();
    if let Some((number, base_data)) = base {
        let delta = delta::encode(base_data, data, data.len() / 2, table)
            .filter(|delta| delta::reproduces(base_data, delta, data));
        if let Some(delta) = delta {
            deflate(compress, &delta, &mut out.bytes).map_err(compress_err)?;
            out.entries.push(EncodedEntry {
                oid,
                start,
                crc32: 0,
                delta: Some((number, delta.len() as u64)),
            });
            return Ok(());
        }
    }
    pack_header(kind)
        .write_to(data.len() as u64, &mut out.bytes)
        .expect("writing to a Vec cannot fail");
    deflate(compress, data, &mut out.bytes).map_err(compress_err)?;
    out.entries.push(EncodedEntry {
        oid,
        start,
        crc32: crc32fast::hash(&out.bytes[start..]),
        delta: None,
    });
    Ok(())
}

/// Append one zlib stream of `data` to `out`, reusing the compressor's state.
fn deflate(compress: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> Result<(), gix::Error> {
    compress.reset();
    let base = out.len();
    // Room for incompressible input in one call: stored blocks cost 5 bytes
    // per 16 KiB, plus the zlib header and trailer.
    out.resize(base + data.len() + data.len() / 1024 * 5 + 64, 0);
    let mut input = data;
    loop {
        let before_in = compress.total_in();
        let before_out = compress.total_out();
        let at = base + before_out as usize;
        if at == out.len() {
            out.resize(out.len() + data.len() / 2 + 64, 0);
        }
        let status = compress.compress(input, &mut out[at..], FlushCompress::Finish)?;
        input = &input[(compress.total_in() - before_in) as usize..];
        match status {
            gix::zlib::Status::StreamEnd => {
                out.truncate(base + compress.total_out() as usize);
                return Ok(());
            }
            gix::zlib::Status::Ok | gix::zlib::Status::BufError => {
                if compress.total_out() == before_out && compress.total_in() == before_in {
                    out.resize(out.len() + data.len() / 2 + 64, 0);
                }
            }
        }
    }
}

/// Writer thread: append batches in the order they were added.
fn write_batches(
    mut w: Written,
    done: &mpsc::Receiver<Encoded>,
    shared: &Shared,
    pack_path: &Path,
) -> Result<Written, PackWriteError> {
    let _fail_on_panic = FailOnPanic(&shared.failed);
    let mut waiting: BTreeMap<u64, Encoded> = BTreeMap::new();
    let mut next = 0u64;
    let mut first_error: Option<PackWriteError> = None;
    for encoded in done.iter() {
        waiting.insert(encoded.seq, encoded);
        while let Some(mut encoded) = waiting.remove(&next) {
            next += 1;
            if first_error.is_none() {
                let appended = append(&mut w, &mut encoded, pack_path);
                if let Some(e) = encoded.error.take().or(appended.err()) {
                    shared.failed.store(true, Ordering::Release);
                    first_error = Some(e);
                }
            }
            shared.budget.release(encoded.raw);
            shared.outputs.give(encoded.bytes, shared.pool_size);
        }
    }
    // Anything still waiting was skipped after a failure.
    for encoded in waiting.into_values() {
        shared.budget.release(encoded.raw);
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(w),
    }
}

/// Write the entries of `encoded` (those encoded before any error).
fn append(w: &mut Written, encoded: &mut Encoded, pack_path: &Path) -> Result<(), PackWriteError> {
    let entries = std::mem::take(&mut encoded.entries);
    let mut header = [0u8; 32];
    for (i, entry) in entries.iter().enumerate() {
        let end = entries
            .get(i + 1)
            .map_or(encoded.bytes.len(), |next| next.start);
        let bytes = &encoded.bytes[entry.start..end];
        let offset = w.offset;
        let mut crc32 = entry.crc32;
        if let Some((base_number, delta_len)) = entry.delta {
            let base =
                w.lines
                    .get(base_number as usize)
                    .ok_or_else(|| PackWriteError::MissingBase {
                        oid: hex(&entry.oid),
                        base: format!("object number {base_number}"),
                    })?;
            let ofs = Header::OfsDelta {
                base_distance: offset - base.offset,
            };
            let len = ofs
                .write_to(delta_len, &mut header.as_mut_slice())
                .map_err(io_err(pack_path))?;
            let mut crc = crc32fast::Hasher::new();
            crc.update(&header[..len]);
            crc.update(bytes);
            crc32 = crc.finalize();
            w.file
                .write_all(&header[..len])
                .map_err(io_err(pack_path))?;
            w.hasher.update(&header[..len]);
            w.offset += len as u64;
            w.deltas += 1;
        }
        w.file.write_all(bytes).map_err(io_err(pack_path))?;
        w.hasher.update(bytes);
        w.offset += bytes.len() as u64;
        // Lines stay in pack order until `finish`: a delta finds its base by number.
        w.lines.push(IndexLine {
            oid: entry.oid,
            offset,
            crc32,
        });
    }
    Ok(())
}

/// A version 2 pack index (gitformat-pack(5)) of `lines`, sorted by id.
fn encode_index(lines: &[IndexLine], pack_checksum: &[u8; 20]) -> Result<Vec<u8>, gix::Error> {
    let mut out = Vec::with_capacity(8 + 256 * 4 + lines.len() * (SHA1_LEN + 8) + 2 * SHA1_LEN);
    out.extend_from_slice(b"\xfftOc");
    out.extend_from_slice(&2u32.to_be_bytes());
    let mut fanout = [0u32; 256];
    for line in lines {
        fanout[usize::from(line.oid[0])] += 1;
    }
    let mut total = 0u32;
    for count in fanout {
        total += count;
        out.extend_from_slice(&total.to_be_bytes());
    }
    for line in lines {
        out.extend_from_slice(&line.oid);
    }
    for line in lines {
        out.extend_from_slice(&line.crc32.to_be_bytes());
    }
    let mut large = Vec::new();
    for line in lines {
        let small = if line.offset > LARGE_OFFSET {
            large.push(line.offset);
            0x8000_0000 | (large.len() as u32 - 1)
        } else {
            line.offset as u32
        };
        out.extend_from_slice(&small.to_be_bytes());
    }
    for offset in large {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(pack_checksum);
    let mut hasher = gix::hash::hasher(gix::hash::Kind::Sha1);
    hasher.update(&out);
    out.extend_from_slice(hasher.try_finalize()?.as_slice());
    Ok(out)
}

/// git's delta format (gitformat-pack(5), "Deltified representation"): the
/// base and result sizes, then instructions that copy a range of the base or
/// insert literal bytes.
///
/// The encoder indexes the base in 16-byte blocks and looks every position
/// of the target up, extending each hit forwards and backwards; in a base of
/// up to 16 MiB any common run of 31 bytes or more is found (larger bases are
/// sampled more sparsely). That is cruder than git's encoder but fast, and
/// for successive versions of a file close to it in size.
mod delta {
    const BLOCK: usize = 16;
    /// The largest copy one instruction can express in pack version 2.
    const MAX_COPY: usize = 0x10000;
    const MAX_INSERT: usize = 0x7f;
    const MAX_INDEXED: usize = 1 << 20;

    fn push_size(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn read_size(delta: &[u8], at: &mut usize) -> Option<usize> {
        let mut n = 0usize;
        let mut shift = 0;
        loop {
            let byte = *delta.get(*at)?;
            *at += 1;
            n |= usize::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(n);
            }
            shift += 7;
        }
    }

    fn word(bytes: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    }

    fn block_hash(bytes: &[u8], at: usize, shift: u32) -> usize {
        let h = word(bytes, at).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ word(bytes, at + 8)
                .wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
                .rotate_left(31);
        (h.wrapping_mul(0x1656_67b1_9e37_79f9) >> shift) as usize
    }

    fn common_prefix(a: &[u8], b: &[u8]) -> usize {
        let n = a.len().min(b.len());
        let mut i = 0;
        while i + 8 <= n {
            let x = word(a, i) ^ word(b, i);
            if x != 0 {
                return i + (x.trailing_zeros() / 8) as usize;
            }
            i += 8;
        }
        while i < n && a[i] == b[i] {
            i += 1;
        }
        i
    }

    fn insert(out: &mut Vec<u8>, literal: &[u8]) {
        for chunk in literal.chunks(MAX_INSERT) {
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }

    fn copy(out: &mut Vec<u8>, mut offset: usize, mut len: usize) {
        while len > 0 {
            let n = len.min(MAX_COPY);
            let op_at = out.len();
            out.push(0);
            let mut op = 0x80u8;
            for i in 0..4 {
                let byte = (offset >> (8 * i)) as u8;
                if byte != 0 {
                    op |= 1 << i;
                    out.push(byte);
                }
            }
            // A size of 0x10000 is written as no size bytes at all.
            if n != MAX_COPY {
                for i in 0..3 {
                    let byte = (n >> (8 * i)) as u8;
                    if byte != 0 {
                        op |= 0x10 << i;
                        out.push(byte);
                    }
                }
            }
            out[op_at] = op;
            offset += n;
            len -= n;
        }
    }

    /// A delta turning `base` into `target`, or `None` if it would be
    /// longer than `max_len` or the base is too large to address.
    pub(super) fn encode(
        base: &[u8],
        target: &[u8],
        max_len: usize,
        table: &mut Vec<u32>,
    ) -> Option<Vec<u8>> {
        if u32::try_from(base.len()).is_err() {
            return None;
        }
        let mut out = Vec::with_capacity(32 + target.len() / 8);
        push_size(&mut out, base.len());
        push_size(&mut out, target.len());
        if base.len() < BLOCK || target.len() < BLOCK {
            insert(&mut out, target);
            return (out.len() <= max_len).then_some(out);
        }
        // At most about a million blocks are indexed (a 4 MiB table): a large
        // base is sampled with a wider stride, so only longer runs are found.
        let stride = BLOCK.max(base.len().div_ceil(MAX_INDEXED));
        let blocks = (base.len() - BLOCK) / stride + 1;
        let bits = (usize::BITS - blocks.next_power_of_two().leading_zeros()).clamp(4, 20);
        let shift = u64::BITS - bits;
        table.clear();
        table.resize(1 << bits, 0);
        // Later blocks first, so that the earliest of equal blocks stays.
        for i in (0..blocks).rev() {
            table[block_hash(base, i * stride, shift)] = (i * stride) as u32 + 1;
        }
        let mut literal_start = 0;
        let mut at = 0;
        while at + BLOCK <= target.len() {
            let candidate = table[block_hash(target, at, shift)];
            if candidate != 0 {
                let from = (candidate - 1) as usize;
                let forward = common_prefix(&base[from..], &target[at..]);
                if forward >= BLOCK {
                    let mut back = 0;
                    while at - back > literal_start
                        && from > back
                        && base[from - back - 1] == target[at - back - 1]
                    {
                        back += 1;
                    }
                    insert(&mut out, &target[literal_start..at - back]);
                    copy(&mut out, from - back, forward + back);
                    at += forward;
                    literal_start = at;
                    if out.len() > max_len {
                        return None;
                    }
                    continue;
                }
            }
            at += 1;
        }
        insert(&mut out, &target[literal_start..]);
        (out.len() <= max_len).then_some(out)
    }

    /// Whether applying `delta` to `base` gives exactly `target`.
    pub(super) fn reproduces(base: &[u8], delta: &[u8], target: &[u8]) -> bool {
        let mut at = 0;
        if read_size(delta, &mut at) != Some(base.len())
            || read_size(delta, &mut at) != Some(target.len())
        {
            return false;
        }
        let mut produced = 0usize;
        while at < delta.len() {
            let op = delta[at];
            at += 1;
            let piece = if op & 0x80 != 0 {
                let mut offset = 0usize;
                let mut len = 0usize;
                for i in 0..4 {
                    if op & (1 << i) != 0 {
                        let Some(byte) = delta.get(at) else {
                            return false;
                        };
                        offset |= usize::from(*byte) << (8 * i);
                        at += 1;
                    }
                }
                for i in 0..3 {
                    if op & (0x10 << i) != 0 {
                        let Some(byte) = delta.get(at) else {
                            return false;
                        };
                        len |= usize::from(*byte) << (8 * i);
                        at += 1;
                    }
                }
                if len == 0 {
                    len = MAX_COPY;
                }
                match base.get(offset..offset.saturating_add(len)) {
                    Some(piece) => piece,
                    None => return false,
                }
            } else if op != 0 {
                let len = usize::from(op);
                let Some(piece) = delta.get(at..at + len) else {
                    return false;
                };
                at += len;
                piece
            } else {
                return false;
            };
            match target.get(produced..produced + piece.len()) {
                Some(expected) if expected == piece => produced += piece.len(),
                _ => return false,
            }
        }
        produced == target.len()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Deterministic pseudo-random bytes.
        fn noise(seed: u64, len: usize) -> Vec<u8> {
            let mut x = seed | 1;
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        }

        #[test]
        fn deltas_reproduce_their_targets() {
            let mut table = Vec::new();
            let base = noise(1, 200_000);
            let mut edited = base.clone();
            edited.splice(1000..1010, noise(2, 50));
            edited.drain(50_000..60_000);
            edited.extend_from_slice(&noise(3, 3000));
            let mut moved = base[100_000..].to_vec();
            moved.extend_from_slice(&base[..100_000]);
            let long_run = vec![7u8; 300_000];
            let cases: Vec<(&[u8], &[u8])> = vec![
                (&base, &edited),
                (&base, &moved),
                (&base, &base),
                (&long_run, &long_run[..200_001]),
                (b"short", b"shorter than a block"),
                (&base, b""),
            ];
            for (base, target) in cases {
                let delta = encode(base, target, usize::MAX, &mut table).expect("unbounded");
                assert!(reproduces(base, &delta, target));
            }
            let delta = encode(&base, &edited, usize::MAX, &mut table).expect("unbounded");
            assert!(
                delta.len() < 10_000,
                "delta of a small edit: {}",
                delta.len()
            );
            assert!(!reproduces(&base, &delta, &base));
            // A base too large to index every block is sampled.
            let large = noise(5, 20 << 20);
            let mut large_edited = large.clone();
            large_edited[10 << 20] ^= 0xff;
            let delta = encode(&large, &large_edited, usize::MAX, &mut table).expect("unbounded");
            assert!(reproduces(&large, &delta, &large_edited));
            assert!(
                delta.len() < 4096,
                "delta of a one-byte edit: {}",
                delta.len()
            );
            assert!(encode(&base, &noise(4, 100_000), 50_000, &mut table).is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn oid(kind: Kind, data: &[u8]) -> [u8; 20] {
        let id = gix::objs::compute_hash(gix::hash::Kind::Sha1, kind, data).expect("hash");
        let mut out = [0u8; 20];
        out.copy_from_slice(id.as_slice());
        out
    }

    fn git(repo: &Path, args: &[&str]) -> (bool, Vec<u8>, String) {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .expect("run git");
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn bare_repo() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("r.git");
        gix::init_bare(&repo).expect("init");
        (dir, repo)
    }

    fn fsck(repo: &Path) {
        let (ok, _, err) = git(repo, &["fsck", "--full", "--strict"]);
        assert!(ok, "git fsck: {err}");
    }

    fn pack_dir(repo: &Path) -> PathBuf {
        repo.join("objects").join("pack")
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A blob, a tree holding it, a commit of the tree and a tag of the commit.
    fn small_history() -> Vec<(Kind, Vec<u8>)> {
        let blob = b"hello pack\n".to_vec();
        let mut tree = b"100644 hello.txt\0".to_vec();
        tree.extend_from_slice(&oid(Kind::Blob, &blob));
        let commit = format!(
            "tree {}\nauthor A U Thor <a@example.com> 1700000000 +0000\n\
             committer A U Thor <a@example.com> 1700000000 +0000\n\nfirst\n",
            hex(&oid(Kind::Tree, &tree))
        )
        .into_bytes();
        let tag = format!(
            "object {}\ntype commit\ntag v1\ntagger A U Thor <a@example.com> 1700000000 +0000\n\nv1\n",
            hex(&oid(Kind::Commit, &commit))
        )
        .into_bytes();
        vec![
            (Kind::Tag, tag),
            (Kind::Commit, commit),
            (Kind::Tree, tree),
            (Kind::Blob, blob),
        ]
    }

    fn options(threads: usize) -> PackWriterOptions {
        PackWriterOptions {
            threads,
            fsync: false,
            ..PackWriterOptions::default()
        }
    }

    #[test]
    fn objects_written_as_a_pack_pass_fsck_and_read_back() {
        for (threads, expected) in [(1, Some(4)), (3, None), (2, Some(10))] {
            let (_dir, repo) = bare_repo();
            let objects = small_history();
            let mut writer = PackWriter::with_options(&pack_dir(&repo), expected, options(threads))
                .expect("writer");
            for (kind, data) in &objects {
                writer.add(oid(*kind, data), *kind, data).expect("add");
            }
            let written = writer.finish().expect("finish");
            assert_eq!(written.objects, 4);
            let pack = written.pack.expect("a pack");
            let checksum = hex(&written.checksum.expect("checksum"));
            assert!(pack.ends_with(format!("pack-{checksum}.pack")));
            assert_eq!(
                files_in(&pack_dir(&repo)),
                [
                    format!("pack-{checksum}.idx"),
                    format!("pack-{checksum}.pack")
                ]
            );
            fsck(&repo);
            let (ok, _, err) = git(&repo, &["verify-pack", &pack.to_string_lossy()]);
            assert!(ok, "verify-pack: {err}");
            for (kind, data) in &objects {
                let id = hex(&oid(*kind, data));
                let (ok, out, _) = git(&repo, &["cat-file", "-t", &id]);
                assert!(ok);
                assert_eq!(String::from_utf8_lossy(&out).trim(), kind_name(*kind));
                let (ok, out, _) = git(&repo, &["cat-file", kind_name(*kind), &id]);
                assert!(ok);
                assert_eq!(&out, data);
            }
        }
    }

    #[test]
    fn a_wrong_id_is_refused_and_nothing_is_left_behind() {
        let (_dir, repo) = bare_repo();
        let mut writer =
            PackWriter::with_options(&pack_dir(&repo), None, options(2)).expect("writer");
        writer
            .add(oid(Kind::Blob, b"one"), Kind::Blob, b"one")
            .expect("add");
        let claimed = oid(Kind::Blob, b"two");
        // The failure surfaces at a later add or at finish, naming the object.
        let result = writer
            .add(claimed, Kind::Blob, b"not two")
            .and_then(|()| writer.finish().map(|_| ()));
        match result {
            Err(PackWriteError::Mismatch { oid, kind, actual }) => {
                assert_eq!(oid, hex(&claimed));
                assert_eq!(kind, "blob");
                assert_eq!(actual, hex(&self::oid(Kind::Blob, b"not two")));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(files_in(&pack_dir(&repo)).is_empty());
    }

    #[test]
    fn a_dropped_writer_leaves_nothing_and_an_empty_one_writes_nothing() {
        let (_dir, repo) = bare_repo();
        let mut writer = PackWriter::new(&pack_dir(&repo), Some(2)).expect("writer");
        writer
            .add(oid(Kind::Blob, b"one"), Kind::Blob, b"one")
            .expect("add");
        drop(writer);
        assert!(files_in(&pack_dir(&repo)).is_empty());

        let writer = PackWriter::new(&pack_dir(&repo), None).expect("writer");
        let written = writer.finish().expect("finish");
        assert_eq!(written.objects, 0);
        assert!(written.pack.is_none());
        assert!(files_in(&pack_dir(&repo)).is_empty());
    }

    #[test]
    fn duplicates_and_wrong_bases_are_refused() {
        let (_dir, repo) = bare_repo();
        let mut writer = PackWriter::new(&pack_dir(&repo), None).expect("writer");
        let one = oid(Kind::Blob, b"one");
        writer.add(one, Kind::Blob, b"one").expect("add");
        match writer.add(one, Kind::Blob, b"one") {
            Err(PackWriteError::Duplicate { oid, .. }) => assert_eq!(oid, hex(&one)),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        let two = oid(Kind::Blob, b"two");
        match writer.add_delta(two, Kind::Blob, b"two", one, b"eno") {
            Err(PackWriteError::BaseMismatch { oid, base }) => {
                assert_eq!((oid, base), (hex(&two), hex(&one)));
            }
            other => panic!("expected a base mismatch, got {other:?}"),
        }
        // Neither refusal disturbs what was added: the pack still comes out whole.
        writer
            .add_delta(two, Kind::Blob, b"two", one, b"one")
            .expect("add delta");
        let written = writer.finish().expect("finish");
        assert_eq!(written.objects, 2);
        fsck(&repo);
    }

    #[test]
    fn deltas_pass_fsck_and_read_back() {
        let (_dir, repo) = bare_repo();
        // Versions of one file, newest first as restore meets them, plus a
        // large one that travels alone and a base of another kind.
        let mut versions: Vec<Vec<u8>> = Vec::new();
        let mut text: Vec<u8> = (0..4000)
            .flat_map(|i| format!("line {i} of a file that changes a little\n").into_bytes())
            .collect();
        for v in 0..60 {
            versions.push(text.clone());
            let at = (v * 977) % (text.len() - 100);
            text.splice(at..at + 10, format!("edit {v}").into_bytes());
        }
        let big: Vec<u8> = versions[0]
            .iter()
            .cycle()
            .take(3 * BATCH_BYTES)
            .copied()
            .collect();
        let mut big2 = big.clone();
        big2[BATCH_BYTES] ^= 1;
        let options = PackWriterOptions {
            max_delta_depth: 10,
            memory_limit: BATCH_BYTES,
            ..options(2)
        };
        let mut writer = PackWriter::with_options(&pack_dir(&repo), None, options).expect("writer");
        let mut previous: Option<(&[u8], [u8; 20])> = None;
        for data in versions
            .iter()
            .map(Vec::as_slice)
            .chain([&big[..], &big2[..]])
        {
            let id = oid(Kind::Blob, data);
            match previous {
                Some((base, base_id)) => writer
                    .add_delta(id, Kind::Blob, data, base_id, base)
                    .expect("add delta"),
                None => writer.add(id, Kind::Blob, data).expect("add"),
            }
            previous = Some((data, id));
        }
        let mut tree = b"100644 f\0".to_vec();
        tree.extend_from_slice(&oid(Kind::Blob, &versions[0]));
        writer
            .add_delta(
                oid(Kind::Tree, &tree),
                Kind::Tree,
                &tree,
                oid(Kind::Blob, &versions[0]),
                &versions[0],
            )
            .expect("a base of another kind is ignored");
        let written = writer.finish().expect("finish");
        assert_eq!(written.objects, 63);
        // Chains of at most 10: every eleventh version is whole.
        assert!(written.deltas >= 50, "deltas: {}", written.deltas);
        assert!(written.pack_bytes < 200_000, "pack: {}", written.pack_bytes);
        fsck(&repo);
        let pack = written.pack.expect("pack");
        let (ok, stats, err) = git(&repo, &["verify-pack", "-s", &pack.to_string_lossy()]);
        assert!(ok, "verify-pack: {err}");
        let stats = String::from_utf8_lossy(&stats);
        assert!(!stats.contains("chain length = 11"), "{stats}");
        for data in versions
            .iter()
            .map(Vec::as_slice)
            .chain([&big[..], &big2[..]])
        {
            let (ok, out, _) = git(&repo, &["cat-file", "blob", &hex(&oid(Kind::Blob, data))]);
            assert!(ok);
            assert!(out == data);
        }
        let (ok, out, _) = git(&repo, &["cat-file", "-t", &hex(&oid(Kind::Tree, &tree))]);
        assert!(ok);
        assert_eq!(String::from_utf8_lossy(&out).trim(), "tree");
    }
}
