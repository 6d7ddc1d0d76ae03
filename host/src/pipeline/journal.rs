//! The queue's write-ahead journal: what makes a new delivery durable
//! before the receiver answers, at the cost of one `fdatasync` of an
//! append-only file shared by every delivery that arrived meanwhile,
//! instead of a sled flush (about 0.15 ms against 0.5 ms and more here).
//!
//! Files `<queue>/journal/<number, 16 hex>.log`, each made of zeros first
//! (the next one once the current one is half full, so that moving to it
//! never makes a commit wait for a megabyte of zeros and two syncs, and a
//! quiet service keeps one file) and then
//! written from the start with a run of records:
//! `len (u32 LE) ‖ crc32 of len and payload (u32 LE) ‖ payload`. A payload is a
//! delivery record exactly as the queue wrote it to sled (JSON); an empty
//! payload is a no-op (the readiness probe). Reading a file stops at the
//! first record that is cut short or fails its checksum (where a crash
//! interrupted a write that was never acknowledged), or at the zeros
//! after the last record.
//!
//! Write order: a record goes to sled first, then here, and the receiver
//! answers once it is here and synced. On open the queue replays every
//! file into sled (insert if absent, see [`Queue`](super::queue::Queue)),
//! flushes sled, and deletes them; a file the writer has moved past is
//! deleted once sled has been flushed after it, since everything in it was
//! written to sled before it was appended.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

/// A file is made this long, of zeros, before records are written into
/// it, so that a sync writes data and never the file's size; once this
/// much is written, the next write starts a new file.
const ROTATE_BYTES: u64 = 1 << 20;

/// A record longer than this is not one the queue wrote (a record is one
/// delivery, and deliveries are limited to `server.max_body_bytes`).
const MAX_RECORD: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("delivery journal {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("delivery journal in {}: the write holding this record failed; it was not kept", .dir.display())]
    Lost { dir: PathBuf },
    #[error("delivery journal task failed: {0}")]
    Task(String),
}

/// The file being appended to.
struct Current {
    path: PathBuf,
    file: File,
    len: u64,
}

/// The file written to, and the next one being made ahead of need.
#[derive(Default)]
struct Writer {
    current: Option<Current>,
    spare: Option<tokio::task::JoinHandle<Result<Current, JournalError>>>,
}

/// Appends since the last write, and the file they go to.
#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// Tickets handed out: one per append.
    appended: u64,
}

pub(crate) struct Journal {
    dir: PathBuf,
    buffer: Mutex<Buffer>,
    /// Every ticket up to this one is on disk and synced.
    durable: AtomicU64,
    /// Held by the task writing and syncing; the others wait on it. `None`
    /// after a failed write or sync: such a file is never trusted again
    /// (after a failed fsync the kernel may have dropped the pages it could
    /// not write, so a later fsync that succeeds proves nothing), and the
    /// next write starts a new file.
    writer: tokio::sync::Mutex<Writer>,
    /// The next file's number.
    next_number: AtomicU64,
    /// Tickets whose write failed (first, last), adjacent ranges merged.
    lost: Mutex<Vec<(u64, u64)>>,
    /// Syncs made, for tests.
    pub(crate) syncs: AtomicU64,
}

/// A file left behind by the writer, to delete once sled has been
/// flushed after it.
#[derive(Debug)]
pub(crate) struct Retired(pub(crate) PathBuf);

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Append one record (header and payload) to `out`.
fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// CRC-32 of the length and the payload: a damaged length is caught, and
/// the zeros a file is made of before it is written (len 0, crc 0) never
/// pass for a record.
fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    crc.finalize()
}

/// The payloads of one file's bytes, up to the first record that is cut
/// short or damaged; and whether the file ended cleanly.
pub(crate) fn decode_records(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((header, tail)) = rest.split_first_chunk::<8>() else {
            return (records, false);
        };
        if rest.iter().all(|b| *b == 0) {
            // The rest of a file made ahead of its writes.
            return (records, true);
        }
        let len_bytes = [header[0], header[1], header[2], header[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD || len > tail.len() {
            return (records, false);
        }
        let (payload, after) = tail.split_at(len);
        if checksum(len_bytes, payload) != crc {
            return (records, false);
        }
        records.push(payload);
        rest = after;
    }
    (records, true)
}

/// The journal files in `dir`, oldest first, with their numbers.
fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort();
    Ok(found)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// The journal in `dir`, with the files found there (to replay, then
    /// [`Journal::remove`]). Nothing is created until the first append.
    pub(crate) fn open(dir: &Path) -> Result<(Arc<Self>, Vec<PathBuf>), JournalError> {
        let found = files(dir)?;
        let next = found.last().map_or(0, |(n, _)| n + 1);
        let journal = Self {
            dir: dir.to_path_buf(),
            buffer: Mutex::default(),
            durable: AtomicU64::new(0),
            writer: tokio::sync::Mutex::default(),
            next_number: AtomicU64::new(next),
            lost: Mutex::default(),
            syncs: AtomicU64::new(0),
        };
        Ok((
            Arc::new(journal),
            found.into_iter().map(|(_, path)| path).collect(),
        ))
    }

    /// Every payload in `path` that was written whole, in order; an empty
    /// one (a probe) is left out. A missing file has none.
    pub(crate) fn read(path: &Path) -> Result<Vec<Vec<u8>>, JournalError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(path)(e)),
        };
        let (records, whole) = decode_records(&bytes);
        if !whole {
            tracing::warn!(
                path = %path.display(),
                records = records.len(),
                "delivery journal ends in a record cut short or damaged; read up to it"
            );
        }
        Ok(records
            .into_iter()
            .filter(|r| !r.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }

    /// Delete files whose records are all in sled, flushed.
    pub(crate) fn remove(paths: &[PathBuf]) -> Result<(), JournalError> {
        for path in paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(path)(e)),
            }
        }
        Ok(())
    }

    /// Add a record; it is durable once [`Journal::commit`] of the
    /// returned ticket has returned.
    pub(crate) fn append(&self, payload: &[u8]) -> u64 {
        // Every change to the buffer is one append or one take.
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        encode_record(&mut buffer.bytes, payload);
        buffer.appended += 1;
        buffer.appended
    }

    /// Make `ticket` durable: wait for the write in progress, then, unless
    /// it covered the ticket, write and sync everything appended so far in
    /// one go. Returns a file the writer has moved past, if any.
    ///
    /// The write runs in a task of its own, to the end, whether or not the
    /// caller still waits: a caller dropped mid-write (its client hung up)
    /// would otherwise leave the write's file unrecorded while the write
    /// went on, and the next write would make that file again and fail.
    pub(crate) async fn commit(
        self: &Arc<Self>,
        ticket: u64,
    ) -> Result<Option<Retired>, JournalError> {
        let journal = Arc::clone(self);
        tokio::spawn(async move { journal.commit_to_end(ticket).await })
            .await
            .map_err(|e| JournalError::Task(e.to_string()))?
    }

    async fn commit_to_end(&self, ticket: u64) -> Result<Option<Retired>, JournalError> {
        let mut writer = self.writer.lock().await;
        if self.was_lost(ticket) {
            return Err(JournalError::Lost {
                dir: self.dir.clone(),
            });
        }
        if self.durable.load(SeqCst) >= ticket {
            return Ok(None);
        }
        let (bytes, covers) = {
            let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
            (std::mem::take(&mut buffer.bytes), buffer.appended)
        };
        let started = std::time::Instant::now();
        let records = covers - self.durable.load(SeqCst);
        let current = match writer.current.take() {
            Some(current) => Some(current),
            None => self.take_spare(&mut writer).await,
        };
        let number = self.next_number.load(SeqCst);
        let bytes_len = bytes.len();
        let dir = self.dir.clone();
        let written =
            tokio::task::spawn_blocking(move || write_synced(&dir, current, number, &bytes))
                .await
                .map_err(|e| JournalError::Task(e.to_string()))?;
        self.syncs.fetch_add(1, SeqCst);
        let (current, fresh) = match written {
            Ok(written) => written,
            // The appends taken are lost with the file: their callers get
            // the error and answer 503, and the sender tries again.
            Err(e) => {
                self.next_number.fetch_add(1, SeqCst);
                let first = self.durable.load(SeqCst) + 1;
                let mut lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
                match lost.last_mut() {
                    Some(last) if last.1 + 1 >= first => last.1 = covers,
                    _ => lost.push((first, covers)),
                }
                drop(lost);
                // Later tickets are not covered by this failure.
                self.durable.fetch_max(covers, SeqCst);
                return Err(e);
            }
        };
        if fresh {
            self.next_number.fetch_add(1, SeqCst);
        }
        tracing::debug!(
            records,
            bytes = bytes_len,
            micros = started.elapsed().as_micros() as u64,
            "delivery journal synced"
        );
        self.durable.fetch_max(covers, SeqCst);
        if writer.spare.is_none() && current.len >= ROTATE_BYTES / 2 {
            writer.spare = Some(self.make_spare());
        }
        if current.len >= ROTATE_BYTES {
            // The next write starts a new file.
            return Ok(Some(Retired(current.path)));
        }
        writer.current = Some(current);
        Ok(None)
    }

    /// Start making the next file (its number taken now, so numbers still
    /// follow the order files are written in).
    fn make_spare(&self) -> tokio::task::JoinHandle<Result<Current, JournalError>> {
        let number = self.next_number.fetch_add(1, SeqCst);
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || new_file(&dir, number, true))
    }

    /// The file made ahead, once it is ready; `None` if making it failed
    /// (logged: the write then makes a file itself, and reports why that
    /// fails too if it does).
    async fn take_spare(&self, writer: &mut Writer) -> Option<Current> {
        let made = writer
            .spare
            .take()?
            .await
            .unwrap_or_else(|e| Err(JournalError::Task(e.to_string())));
        made.map_err(|e| {
            tracing::warn!(error = %e, "delivery journal: the next file could not be made ahead");
        })
        .ok()
    }

    fn was_lost(&self, ticket: u64) -> bool {
        let lost = self.lost.lock().unwrap_or_else(PoisonError::into_inner);
        lost.iter()
            .any(|(first, last)| (*first..=*last).contains(&ticket))
    }

    /// Wait until the file being made ahead is made (tests: a journal
    /// dropped meanwhile would leave its making running).
    #[cfg(test)]
    pub(crate) async fn spare_made(&self) {
        let mut writer = self.writer.lock().await;
        if let Some(making) = writer.spare.take() {
            let made = making.await.expect("the spare's task");
            writer.spare = Some(tokio::spawn(std::future::ready(made)));
        }
    }

    /// Files the writer has written to, oldest first: those a replay
    /// after reopening sled must read.
    pub(crate) fn on_disk(&self) -> Result<Vec<PathBuf>, JournalError> {
        Ok(files(&self.dir)?.into_iter().map(|(_, p)| p).collect())
    }
}

fn file_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:016x}.log"))
}

/// A new file numbered `number`: zeros, synced, its name synced. The
/// directory is made first unless `ahead` (a file made ahead goes beside
/// the current one, and never brings back a directory removed meanwhile).
fn new_file(dir: &Path, number: u64, ahead: bool) -> Result<Current, JournalError> {
    if !ahead {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let path = file_path(dir, number);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let made = (|| {
        let zeros = vec![0u8; 64 << 10];
        for _ in 0..ROTATE_BYTES / zeros.len() as u64 {
            file.write_all(&zeros).map_err(io(&path))?;
        }
        file.sync_all().map_err(io(&path))?;
        // The new name must survive a crash as well as its contents.
        sync_dir(dir).map_err(io(dir))
    })();
    if let Err(e) = made {
        // A file this call made holds no record yet; a full disk needs
        // its space more.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Current { path, file, len: 0 })
}

/// Write `bytes` to `current` (or a new file numbered `number`), then sync
/// it; returns the file and whether it is new.
fn write_synced(
    dir: &Path,
    current: Option<Current>,
    number: u64,
    bytes: &[u8],
) -> Result<(Current, bool), JournalError> {
    let (mut current, fresh) = match current {
        Some(current) => (current, false),
        None => (new_file(dir, number, false)?, true),
    };
    let path = current.path.clone();
    current
        .file
        .write_all_at(bytes, current.len)
        .map_err(io(&path))?;
    current.file.sync_data().map_err(io(&path))?;
    current.len += bytes.len() as u64;
    Ok((current, fresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files holding records, with them (a file made ahead holds none).
    fn written(journal: &Journal) -> Vec<(PathBuf, Vec<Vec<u8>>)> {
        journal
            .on_disk()
            .expect("files")
            .into_iter()
            .map(|path| {
                let records = Journal::read(&path).expect("read");
                (path, records)
            })
            .filter(|(_, records)| !records.is_empty())
            .collect()
    }

    #[test]
    fn records_read_back_up_to_the_first_damage() {
        let mut bytes = Vec::new();
        for payload in [&b"one"[..], b"", b"three"] {
            encode_record(&mut bytes, payload);
        }
        let whole = bytes.clone();
        assert_eq!(
            decode_records(&whole),
            (vec![&b"one"[..], b"", b"three"], true)
        );
        // Cut short inside the last record, and inside a header.
        assert_eq!(
            decode_records(&whole[..whole.len() - 2]),
            (vec![&b"one"[..], b""], false)
        );
        assert_eq!(decode_records(&whole[..3]), (vec![], false));
        // A flipped byte in the first payload stops before it.
        let mut flipped = whole.clone();
        flipped[9] ^= 1;
        assert_eq!(decode_records(&flipped), (vec![], false));
        // The zeros of a file made ahead end it cleanly; zeros then more
        // bytes do not.
        let mut ahead = whole.clone();
        ahead.extend_from_slice(&[0; 100]);
        assert_eq!(
            decode_records(&ahead),
            (vec![&b"one"[..], b"", b"three"], true)
        );
        ahead.push(1);
        assert!(!decode_records(&ahead).1);
        // A length past any record the queue writes.
        let mut huge = whole.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_records(&huge), (vec![], false));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_syncs_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, found) = Journal::open(dir.path()).expect("open");
        assert!(found.is_empty());
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let ticket = journal.append(format!("record {i}").as_bytes());
                    journal.commit(ticket).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("commit");
        }
        let syncs = journal.syncs.load(SeqCst);
        assert!(syncs <= 32, "{syncs} syncs for 64 concurrent appends");
        let written_to = written(&journal);
        assert_eq!(written_to.len(), 1);
        let mut read: Vec<String> = written_to[0]
            .1
            .iter()
            .map(|r| String::from_utf8(r.clone()).expect("utf8"))
            .collect();
        read.sort();
        let mut expected: Vec<String> = (0..64).map(|i| format!("record {i}")).collect();
        expected.sort();
        assert_eq!(read, expected);
        // Reopened, the journal names its files and numbers past them. A
        // file far from full has no next one made ahead.
        journal.spare_made().await;
        let paths = journal.on_disk().expect("files");
        assert_eq!(paths.len(), 1);
        drop(journal);
        let (journal, found) = Journal::open(dir.path()).expect("reopen");
        assert_eq!(found, paths);
        let ticket = journal.append(b"after");
        journal.commit(ticket).await.expect("commit");
        let after = written(&journal);
        assert_eq!(after.len(), 2);
        assert!(after[1].0 > paths[0], "{after:?}");
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_record_it_held_and_the_next_starts_a_new_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        // A file where the directory should be: creating the journal fails.
        std::fs::write(&dir, b"in the way").expect("write");
        let (journal, _) = Journal::open(&tmp.path().join("absent")).expect("open");
        let journal = Arc::new(Journal {
            dir: dir.clone(),
            ..Arc::into_inner(journal).expect("sole owner")
        });
        let first = journal.append(b"first");
        let second = journal.append(b"second");
        let failed = journal.commit(first).await.expect_err("no directory");
        assert!(
            failed.to_string().contains(&dir.display().to_string()),
            "{failed}"
        );
        let lost = journal
            .commit(second)
            .await
            .expect_err("held by the failed write");
        assert!(matches!(lost, JournalError::Lost { .. }), "{lost}");
        std::fs::remove_file(&dir).expect("remove");
        let third = journal.append(b"third");
        journal
            .commit(third)
            .await
            .expect("written once the way is clear");
        let files = written(&journal);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].1, [b"third".to_vec()]);
    }

    #[tokio::test]
    async fn a_full_file_is_retired_and_the_next_write_goes_to_the_file_made_ahead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        let big = vec![b'x'; usize::try_from(ROTATE_BYTES).expect("fits")];
        let ticket = journal.append(&big);
        let retired = journal.commit(ticket).await.expect("commit");
        let Some(Retired(path)) = retired else {
            panic!("a file past {ROTATE_BYTES} bytes is retired");
        };
        // The next file was made while the first filled: zeros, no records.
        journal.spare_made().await;
        let on_disk = journal.on_disk().expect("files");
        assert_eq!(on_disk.len(), 2, "{on_disk:?}");
        assert_eq!(on_disk[0], path);
        let ahead = on_disk[1].clone();
        assert_eq!(std::fs::metadata(&ahead).expect("made").len(), ROTATE_BYTES);
        assert!(Journal::read(&ahead).expect("read").is_empty());
        let ticket = journal.append(b"next");
        assert!(journal.commit(ticket).await.expect("commit").is_none());
        Journal::remove(&[path]).expect("remove");
        assert_eq!(written(&journal), [(ahead, vec![b"next".to_vec()])]);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_made_ahead_loses_nothing_and_removes_nothing_it_did_not_make() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        // Where the file made ahead would go, a file that is not the
        // journal's to remove.
        let in_the_way = file_path(dir.path(), 1);
        std::fs::write(&in_the_way, b"not made here").expect("write");
        let big = vec![b'x'; usize::try_from(ROTATE_BYTES).expect("fits")];
        let ticket = journal.append(&big);
        let Some(Retired(first)) = journal.commit(ticket).await.expect("commit") else {
            panic!("a full file is retired");
        };
        let ticket = journal.append(b"next");
        journal
            .commit(ticket)
            .await
            .expect("the write makes its own file");
        assert_eq!(
            std::fs::read(&in_the_way).expect("still there"),
            b"not made here"
        );
        Journal::remove(&[first]).expect("remove");
        let files = written(&journal);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_ne!(files[0].0, in_the_way);
        assert_eq!(files[0].1, [b"next".to_vec()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_whose_caller_stops_waiting_still_ends_and_the_next_one_succeeds() {
        use futures_util::FutureExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (journal, _) = Journal::open(dir.path()).expect("open");
        let first = journal.append(b"first");
        // Polled once (the write of a new file has started), then dropped,
        // as hyper drops a handler whose client hung up.
        let abandoned = journal.commit(first).now_or_never();
        assert!(
            abandoned.is_none(),
            "a new file is not written and synced at once"
        );
        let second = journal.append(b"second");
        assert!(
            journal.commit(second).await.expect("commit").is_none(),
            "the abandoned write's file is the current one"
        );
        let files = written(&journal);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].1, [b"first".to_vec(), b"second".to_vec()]);
        assert_eq!(journal.durable.load(SeqCst), second);
    }
}
