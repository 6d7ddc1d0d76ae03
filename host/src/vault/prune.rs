//! Forgetting snapshots and pruning records (FORMAT.md, "Forget and
//! prune"). The only code that deletes vault files besides the removal of
//! never-indexed data at `serve`'s start. Nothing here is reachable from
//! the webhook path or from a plugin: `forget` and `prune` are commands of
//! an operator who holds the store's lock.
//!
//! Write order of a prune, so that a kill at any instant loses nothing a
//! kept snapshot needs:
//! 1. the live records of the data files being rewritten are copied,
//!    byte for byte, into new data files (each whole before it is visible),
//!    with every live delta whose base goes decoded and written whole;
//! 2. one new index file names every live record where it now is, and
//!    supersedes every other index file;
//! 3. every other index file is removed;
//! 4. only then are the data files that are garbage or were rewritten
//!    removed.
//!
//! Once 2 is done, readers leave out every old index file still present
//! (it is superseded), so no record this prune drops is indexed again
//! whatever 3 removed before a kill. What is left of 3 and 4 is superseded
//! index files and unindexed data, which the next prune (and, for data,
//! `serve`'s start) removes.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::backend::{FileName, FileType};
use super::format::{self, RecordHeader};
use super::index::{self, Entry, MemIndex};
use super::{DATA_FILE_TARGET, Vault, VaultError, lock, read, write};
use crate::ids::{RecordId, RepoName, SnapshotId};
use crate::progress::Progress;

/// The collection of the documents that record forgotten snapshots.
pub const FORGOTTEN: &str = "forgotten";

/// One forgotten snapshot, as its forget record keeps it: enough for
/// `verify` to tell a forgotten parent from a missing one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Forgotten {
    pub snapshot: String,
    pub seq: u64,
    pub time_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ForgetRecord {
    forgotten: Vec<Forgotten>,
    policy: String,
    time_ms: u64,
}

/// What a prune may do.
#[derive(Clone, Copy, Debug)]
pub struct PruneOptions {
    /// A data file whose unused share is above this (0–100) is rewritten;
    /// one with no live record is always removed.
    pub max_unused_percent: u8,
    /// Work it all out, change nothing.
    pub dry_run: bool,
    /// Also recompress, at this zstd level, every live record of each data
    /// file not yet recompressed at it or higher: the background pass that
    /// makes cold data smaller than a backup's fast level left it.
    pub recompress_level: Option<i32>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        Self {
            max_unused_percent: 20,
            dry_run: false,
            recompress_level: None,
        }
    }
}

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub records_before: u64,
    pub records_kept: u64,
    pub data_files_before: u64,
    pub data_bytes_before: u64,
    /// Data files with no live record.
    pub data_files_removed: u64,
    /// Data files whose live records were copied into new ones.
    pub data_files_rewritten: u64,
    /// Live records stored as deltas against a base that goes, written
    /// again whole.
    pub records_reencoded: u64,
    /// Data files no index file named (left by a killed writer).
    pub unindexed_files_removed: u64,
    /// Data files whose live records were recompressed into new ones (a
    /// file also mostly unused counts in `data_files_rewritten` too).
    pub data_files_recompressed: u64,
    /// Live records compressed again at the recompression level (as a
    /// delta on the same base, or whole where that is smaller).
    pub records_recompressed: u64,
    pub data_files_written: u64,
    pub index_files_removed: u64,
    pub data_bytes_after: u64,
    pub bytes_reclaimed: u64,
}

impl Vault {
    /// Record `ids` (snapshots of `repo`) as forgotten, then remove their
    /// files. The newest snapshot of a repository is never forgotten.
    pub fn forget_snapshots(
        &self,
        repo: &RepoName,
        ids: &[String],
        policy: &str,
        now_ms: u64,
    ) -> Result<usize, VaultError> {
        let snapshots = self.snapshots(repo)?;
        let newest = snapshots.last().map(|s| s.id.to_hex());
        let mut forgotten = Vec::new();
        for id in ids {
            if newest.as_deref() == Some(id.as_str()) {
                return Err(VaultError::BadDocument {
                    message: format!(
                        "snapshot {id} is the newest of {repo}, which is never forgotten"
                    ),
                });
            }
            let snapshot = snapshots
                .iter()
                .find(|s| &s.id.to_hex() == id)
                .ok_or_else(|| VaultError::NoSuchSnapshot {
                    repo: repo.clone(),
                    prefix: id.clone(),
                })?;
            forgotten.push(Forgotten {
                snapshot: id.clone(),
                seq: snapshot.body.seq,
                time_ms: snapshot.body.time_ms,
            });
        }
        if forgotten.is_empty() {
            return Ok(0);
        }
        let record = ForgetRecord {
            forgotten,
            policy: policy.to_string(),
            time_ms: now_ms,
        };
        let json = serde_json::to_vec(&record)
            .map_err(|e| VaultError::Encode(format::FormatError(e.to_string())))?;
        let key = format!("{now_ms}-{}", &blake3::hash(&json).to_hex().as_str()[..16]);
        // The record first: a kill before the files are gone leaves
        // snapshots that are recorded as forgotten and still restore.
        self.put_document(repo, FORGOTTEN, &key, &json, "forget", now_ms)?;
        let _writer = self.sealed_writer()?;
        for f in &record.forgotten {
            let name = FileName::parse(&f.snapshot).ok_or_else(|| VaultError::NoSuchSnapshot {
                repo: repo.clone(),
                prefix: f.snapshot.clone(),
            })?;
            match self.inner.backend.remove(FileType::Snapshot, &name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(repository = %repo, snapshot = %f.snapshot, "forget: snapshot file removed");
        }
        let gone: HashSet<&str> = record
            .forgotten
            .iter()
            .map(|f| f.snapshot.as_str())
            .collect();
        if let Some(list) = write(&self.inner.snapshots)?.get_mut(repo) {
            list.retain(|s| !gone.contains(s.id.to_hex().as_str()));
        }
        Ok(record.forgotten.len())
    }

    /// Every snapshot of `repo` recorded as forgotten.
    pub fn forgotten(&self, repo: &RepoName) -> Result<Vec<Forgotten>, VaultError> {
        let mut out = Vec::new();
        for version in self.documents_at(repo, FORGOTTEN, None)? {
            let bytes = self.read_document(&version)?;
            let record: ForgetRecord =
                serde_json::from_slice(&bytes).map_err(|e| VaultError::BadDocument {
                    message: format!("forget record {}: {e}", version.key),
                })?;
            out.extend(record.forgotten);
        }
        Ok(out)
    }

    /// The records of every version of every document (documents are never
    /// forgotten).
    pub fn document_records(&self) -> Result<Vec<RecordId>, VaultError> {
        Ok(read(&self.inner.documents)?
            .values()
            .flatten()
            .map(|v| v.content)
            .collect())
    }

    /// Remove every record not in `live` (which must hold every record a
    /// kept snapshot or document needs): data files with no live record
    /// go, data files mostly unused are rewritten, a live delta whose base
    /// is not live is re-encoded whole, and one index file replaces all
    /// others. See the module comment for the order. Refused while any
    /// index, snapshot or document file is left out as damaged: what it
    /// holds or reaches is unknown.
    pub fn prune_records(
        &self,
        live: &HashSet<RecordId>,
        options: PruneOptions,
        progress: &dyn Fn(crate::progress::Progress),
    ) -> Result<PruneReport, VaultError> {
        let _writer = self.sealed_writer()?;
        if let Some(((file_type, name), why)) = read(&self.inner.damaged_files)?.iter().next() {
            return Err(VaultError::BadFile {
                location: self.inner.location.clone(),
                file_type: super::file_type_name(*file_type),
                name: name.to_string(),
                message: format!(
                    "{why}; prune refuses to run while a file is damaged, since what it holds or reaches is unknown (see `hookvault verify`)"
                ),
            });
        }
        let backend = &self.inner.backend;
        let data_files: BTreeMap<FileName, u64> =
            backend.list(FileType::Data)?.into_iter().collect();
        let index_files: Vec<FileName> = backend
            .list(FileType::Index)?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let mut report = PruneReport {
            dry_run: options.dry_run,
            data_files_before: data_files.len() as u64,
            data_bytes_before: data_files.values().sum(),
            ..PruneReport::default()
        };
        // Per data file: its live entries that stay as they are. A live
        // delta whose base goes is re-encoded whole wherever it is.
        let mut by_file: HashMap<FileName, Vec<(RecordId, Entry)>> = HashMap::new();
        let mut indexed_files: HashSet<FileName> = HashSet::new();
        let mut to_write: Vec<(RecordId, Entry, Write)> = Vec::new();
        // The base of each live delta that stays a delta.
        let mut bases: HashMap<RecordId, RecordId> = HashMap::new();
        {
            let index = read(&self.inner.index)?;
            report.records_before = index.len() as u64;
            for (id, entry) in index.entries() {
                indexed_files.insert(entry.file.clone());
                if !live.contains(id) {
                    continue;
                }
                // A delta stays as it is only when its base version names
                // one record, live, whose entry (the one the new index
                // keeps) is at that version: two writers may have given
                // the version twice, or stored the base at another place.
                let base_kept = entry.path.filter(|_| entry.depth > 0).and_then(|(key, v)| {
                    let at = format::skip_delta_base(v)?;
                    match index.versions(key, at) {
                        [only]
                            if live.contains(only)
                                && index.get(only).and_then(|b| b.path) == Some((key, at)) =>
                        {
                            Some(*only)
                        }
                        _ => None,
                    }
                });
                if let Some(base) = base_kept {
                    bases.insert(*id, base);
                }
                let base_kept = base_kept.is_some();
                if entry.depth > 0 && !base_kept && data_files.contains_key(&entry.file) {
                    report.records_reencoded += 1;
                    to_write.push((*id, entry.clone(), Write::Whole));
                } else {
                    by_file
                        .entry(entry.file.clone())
                        .or_default()
                        .push((*id, entry.clone()));
                }
            }
        }
        let recompress = match options.recompress_level {
            Some(level) if !(1..=format::MAX_RECOMPRESS_LEVEL).contains(&level) => {
                return Err(VaultError::Encode(format::FormatError(format!(
                    "recompression level {level} is outside 1-{}",
                    format::MAX_RECOMPRESS_LEVEL
                ))));
            }
            other => other.and_then(|l| u8::try_from(l).ok()),
        };
        // Whether a data file's records are to be compressed again: its
        // magic names the level they were last recompressed at.
        let below = |name: &FileName| -> Result<bool, VaultError> {
            let Some(level) = recompress else {
                return Ok(false);
            };
            let head =
                backend.read_range(FileType::Data, name, 0, format::DATA_MAGIC.len() as u64)?;
            Ok(format::data_file_level(&head).is_none_or(|at| at < level))
        };
        let mut keep_as_is: Vec<(RecordId, Entry)> = Vec::new();
        let mut remove: Vec<FileName> = Vec::new();
        for (name, &size) in &data_files {
            if !indexed_files.contains(name) {
                report.unindexed_files_removed += 1;
                remove.push(name.clone());
                continue;
            }
            let Some(entries) = by_file.remove(name) else {
                report.data_files_removed += 1;
                remove.push(name.clone());
                continue;
            };
            let used: u64 =
                entries.iter().map(|(_, e)| e.len).sum::<u64>() + format::DATA_MAGIC.len() as u64;
            let unused = size.saturating_sub(used);
            let mostly_unused = unused * 100 > size * u64::from(options.max_unused_percent);
            let how = if below(name)? {
                Write::Recompress
            } else {
                Write::Copy
            };
            if mostly_unused || how == Write::Recompress {
                if mostly_unused {
                    report.data_files_rewritten += 1;
                }
                if how == Write::Recompress {
                    report.data_files_recompressed += 1;
                }
                remove.push(name.clone());
                to_write.extend(entries.into_iter().map(|(id, e)| (id, e, how)));
            } else {
                keep_as_is.extend(entries);
            }
        }
        // Live records whose data file is not listed (damage `verify`
        // reports) keep their entries: prune neither hides nor repairs it.
        for entries in by_file.into_values() {
            keep_as_is.extend(entries);
        }
        report.records_kept = (keep_as_is.len() + to_write.len()) as u64;
        let removed_bytes: u64 = remove.iter().map(|n| data_files[n]).sum();
        if remove.is_empty() && to_write.is_empty() {
            report.data_bytes_after = report.data_bytes_before;
            return Ok(report);
        }
        // Bases before the records built on them (a base is one link less
        // deep, a re-encoded record none), then in the order they were.
        let depth = |e: &Entry, how: Write| if how == Write::Whole { 0 } else { e.depth };
        to_write.sort_by(|(_, a, x), (_, b, y)| {
            (depth(a, *x), &a.file, a.offset).cmp(&(depth(b, *y), &b.file, b.offset))
        });
        // A dry run builds the same files and writes none, so what it
        // reports is what the prune does.
        let level = options
            .recompress_level
            .unwrap_or(self.inner.options.zstd_level);
        let mut out = Output {
            magic: format::data_magic(recompress.unwrap_or(0)),
            dry_run: options.dry_run,
            ..Output::default()
        };
        let mut source: Option<(FileName, Vec<u8>)> = None;
        let mut compressor = format::Compressor::new(level);
        let mut batch: Vec<(super::Job, Entry)> = Vec::new();
        let mut batch_bytes = 0usize;
        let count = to_write.len() as u64;
        progress(Progress::Start("writing kept records", count));
        let mut items = to_write.into_iter().enumerate().peekable();
        while let Some((n, (id, entry, how))) = items.next() {
            if n.is_multiple_of(256) {
                progress(Progress::At(n as u64));
            }
            match how {
                Write::Copy => {
                    let record = self.stored_bytes(&mut source, &id, &entry)?;
                    let plain = format::open_record(record, self.key())
                        .map_err(|e| self.damaged(&id, &entry, e.0))?;
                    let (header, at) =
                        RecordHeader::decode(&plain).map_err(|e| self.damaged(&id, &entry, e.0))?;
                    if header.kind != entry.kind || plain.len() <= at {
                        return Err(self.damaged(
                            &id,
                            &entry,
                            "record header differs from the index",
                        ));
                    }
                    out.push(backend.as_ref(), record, id, entry)?;
                }
                Write::Whole => {
                    // Decoded through its old chain, which is all still
                    // there: nothing is removed before the index is written.
                    let (kind, content) = self.load(None, &id)?;
                    let record = self.whole_record(&mut compressor, kind, &content)?;
                    out.push(backend.as_ref(), &record, id, Entry { depth: 0, ..entry })?;
                }
                Write::Recompress => {
                    let record = self.stored_bytes(&mut source, &id, &entry)?;
                    let (kind, content) = self.decode_record(None, &id, &entry, record)?;
                    let base = match bases.get(&id) {
                        Some(base_id) if entry.depth > 0 => {
                            Some((self.load(None, base_id)?.1, *base_id))
                        }
                        _ => None,
                    };
                    batch_bytes += content.len() + base.as_ref().map_or(0, |(b, _)| b.len());
                    batch.push((
                        super::Job {
                            id,
                            kind,
                            placed: None,
                            data: content,
                            base,
                            bound: entry.depth,
                        },
                        entry,
                    ));
                }
            }
            // Recompressed records go in batches, compressed on every core;
            // a batch is appended before any other record, so that bases
            // still come before the records built on them.
            let next_joins = matches!(items.peek(), Some((_, (_, _, Write::Recompress))));
            let full =
                batch_bytes >= RECOMPRESS_BATCH_BYTES || batch.len() >= RECOMPRESS_BATCH_RECORDS;
            if !batch.is_empty() && (full || !next_joins) {
                let (jobs, entries): (Vec<super::Job>, Vec<Entry>) = batch.drain(..).unzip();
                batch_bytes = 0;
                let frames = super::compress_jobs(&jobs, level, super::Effort::Thorough)?;
                for ((job, entry), (frame, delta)) in jobs.iter().zip(entries).zip(frames) {
                    let header = RecordHeader {
                        kind: job.kind,
                        delta,
                        raw_size: job.data.len() as u64,
                    };
                    let record = format::encode_record(header, &frame, self.key())
                        .map_err(VaultError::Encode)?;
                    let depth = if delta { entry.depth } else { 0 };
                    out.push(backend.as_ref(), &record, job.id, Entry { depth, ..entry })?;
                    report.records_recompressed += 1;
                }
            }
        }
        out.close(backend.as_ref())?;
        let Output {
            moved,
            written_bytes,
            files_written,
            ..
        } = out;
        report.data_files_written = files_written;
        progress(Progress::Done);
        lock(&self.inner.decoded)?.map.clear();
        report.data_bytes_after = report.data_bytes_before - removed_bytes + written_bytes;
        report.bytes_reclaimed = removed_bytes.saturating_sub(written_bytes);
        report.index_files_removed = index_files.len() as u64;
        if options.dry_run {
            return Ok(report);
        }

        let mut entries = keep_as_is;
        entries.extend(moved);
        recompute_depths(&mut entries);
        // In the order the records lie in their files: the index file's
        // columns store each offset as its distance from the end of the
        // record before it, which is then nearly always 0 (in id order the
        // 10,000-branch bench's vault grew by 6% in a prune that only
        // recompressed its records).
        entries.sort_by(|(_, a), (_, b)| (&a.file, a.offset).cmp(&(&b.file, b.offset)));
        // It replaces every index file there is: until they are all removed
        // (3), a reader that finds one leaves it out.
        let bytes = index::encode_index_file(&entries, &index_files, self.key())
            .map_err(VaultError::Encode)?;
        let new_index = FileName::from_hash(blake3::hash(&bytes).as_bytes());
        self.write_small(FileType::Index, &new_index, &bytes)?;
        tracing::debug!(file = %new_index, entries = entries.len(), "prune: index file written");
        report.index_files_removed = 0;
        for name in index_files.iter().filter(|n| **n != new_index) {
            match backend.remove(FileType::Index, name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            report.index_files_removed += 1;
            tracing::debug!(file = %name, "prune: index file removed");
        }
        // A data file this prune wrote may have the name of one it found
        // unindexed: an earlier prune, killed before its index file, that
        // wrote the same records in the same order.
        let written: HashSet<FileName> = entries.iter().map(|(_, e)| e.file.clone()).collect();
        remove.retain(|name| !written.contains(name));
        let mut fresh = MemIndex::default();
        fresh.supersede(index_files.iter().filter(|n| **n != new_index).cloned());
        fresh.insert_file(new_index, entries);
        *write(&self.inner.index)? = fresh;
        for name in &remove {
            match backend.remove(FileType::Data, name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(file = %name, "prune: data file removed");
        }
        Ok(report)
    }
}

impl Vault {
    /// The stored bytes of the record at `entry`, from its whole data file,
    /// which `source` keeps: records are taken file by file within each
    /// depth, so a file is read once for each depth it holds, never once
    /// per record (on object storage, a GET each).
    fn stored_bytes<'s>(
        &self,
        source: &'s mut Option<(FileName, Vec<u8>)>,
        id: &RecordId,
        entry: &Entry,
    ) -> Result<&'s [u8], VaultError> {
        if source.as_ref().is_none_or(|(n, _)| n != &entry.file) {
            let bytes = self.inner.backend.read(FileType::Data, &entry.file)?;
            *source = Some((entry.file.clone(), bytes));
        }
        let bytes = source.as_ref().map(|(_, b)| b.as_slice()).unwrap_or(&[]);
        usize::try_from(entry.offset)
            .ok()
            .zip(usize::try_from(entry.len).ok())
            .and_then(|(at, len)| bytes.get(at..at.checked_add(len)?))
            .ok_or_else(|| self.damaged(id, entry, "outside its data file"))
    }

    /// `content` as a record stored whole (no base), sealed as this vault
    /// seals: what prune and repair write in place of a delta or a damaged
    /// copy.
    pub(super) fn whole_record(
        &self,
        compressor: &mut format::Compressor<'_>,
        kind: crate::ids::ObjectKind,
        content: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let frame = compressor
            .compress(content, None)
            .map_err(VaultError::Encode)?;
        let header = RecordHeader {
            kind,
            delta: false,
            raw_size: content.len() as u64,
        };
        format::encode_record(header, &frame, self.key()).map_err(VaultError::Encode)
    }
}

/// Recompressed records are compressed together once this many are
/// waiting, or once their contents and bases reach `RECOMPRESS_BATCH_BYTES`.
const RECOMPRESS_BATCH_RECORDS: usize = 1024;
const RECOMPRESS_BATCH_BYTES: usize = 16 << 20;

/// The data files a prune writes, one at a time: records are appended to
/// the current file, which is written whole once it reaches the target
/// size (and at the end).
#[derive(Default)]
struct Output {
    magic: [u8; 8],
    dry_run: bool,
    buf: Vec<u8>,
    /// Records in `buf`, with their offsets in it.
    pending: Vec<(RecordId, Entry)>,
    /// Records in files already written, with their new places.
    moved: Vec<(RecordId, Entry)>,
    written_bytes: u64,
    files_written: u64,
}

impl Output {
    fn push(
        &mut self,
        backend: &dyn super::backend::Backend,
        record: &[u8],
        id: RecordId,
        entry: Entry,
    ) -> Result<(), VaultError> {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(&self.magic);
        }
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(record);
        self.pending.push((
            id,
            Entry {
                offset,
                len: record.len() as u64,
                ..entry
            },
        ));
        if self.buf.len() >= DATA_FILE_TARGET {
            self.close(backend)?;
        }
        Ok(())
    }

    /// Write the current file (a dry run only counts it).
    fn close(&mut self, backend: &dyn super::backend::Backend) -> Result<(), VaultError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let name = FileName::from_hash(blake3::hash(&self.buf).as_bytes());
        if !self.dry_run {
            backend.write(FileType::Data, &name, &self.buf)?;
            tracing::debug!(file = %name, bytes = self.buf.len(), "prune: data file written");
        }
        self.written_bytes += self.buf.len() as u64;
        self.files_written += 1;
        self.buf.clear();
        for (id, mut entry) in self.pending.drain(..) {
            entry.file = name.clone();
            self.moved.push((id, entry));
        }
        Ok(())
    }
}

/// How a live record reaches a new data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Write {
    /// Its bytes as they are (its base stays).
    Copy,
    /// Decoded and compressed whole (its base goes).
    Whole,
    /// Decoded and compressed again at the recompression level, on the
    /// same base (or whole, where that is smaller).
    Recompress,
}

/// Set each entry's depth to the links it now has to a whole record: a
/// record re-encoded whole shortens every chain built on it. Depths only
/// ever shrink, and a base is always shallower than what is built on it.
fn recompute_depths(entries: &mut [(RecordId, Entry)]) {
    let versions: HashMap<(u64, u32), RecordId> = entries
        .iter()
        .filter_map(|(id, e)| Some((e.path?, *id)))
        .collect();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].1.depth);
    let mut depth: HashMap<RecordId, u8> = HashMap::with_capacity(entries.len());
    for i in order {
        let (id, entry) = &mut entries[i];
        if entry.depth > 0
            && let Some(base_depth) = entry
                .path
                .and_then(|(key, v)| versions.get(&(key, format::skip_delta_base(v)?)))
                .and_then(|base| depth.get(base))
        {
            entry.depth = base_depth.saturating_add(1).min(entry.depth);
        }
        depth.insert(*id, entry.depth);
    }
}

/// Snapshot ids as the forget records name them.
pub fn forgotten_ids(list: &[Forgotten]) -> HashSet<SnapshotId> {
    list.iter()
        .filter_map(|f| FileName::parse(&f.snapshot).and_then(|n| n.hash()))
        .map(SnapshotId)
        .collect()
}
