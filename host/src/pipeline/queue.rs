//! The durable delivery queue, in the embedded sled database.
//!
//! * `deliveries`: delivery id → [`Delivery`] (JSON). The delivery id is the
//!   idempotency key: a second delivery with the same id is acknowledged and
//!   never queued again.
//! * `pending`: `not_before_ms (u64 BE) ‖ seq (u64 BE)` → delivery id. A
//!   worker claims the first entry whose time has come that no other worker
//!   holds and whose repository no other worker holds (with, on request,
//!   the repository's later due entries that one backup answers too); a
//!   retry re-inserts the entry later in time. Claims are in memory: only
//!   one process holds the database, so a killed process's claims vanish
//!   with it and its entries, still in `pending`, are claimed again.
//!
//! A failed delivery is put back on the queue (attempts from zero) by
//! [`Queue::retry`], [`Queue::retry_all_failed`] and by Bitbucket
//! redelivering its id ([`Queue::record_redelivery`]); a delivery that is
//! queued, done, skipped or ignored is never queued twice.
//!
//! Recording a new delivery is two plain writes, no transaction (a sled
//! transaction or batch costs some 85 µs, a plain write 5 µs): the record,
//! inserted only if its id is absent, then its `pending` entry. The record
//! names the entry it is queued under ([`Delivery::entry`]), so a worker
//! only ever acts on an entry that its record calls its own; any other
//! entry (a race, a crash between writes) is stale and is taken off when a
//! worker meets it. A process that died between the two writes had not
//! answered: Bitbucket sends the delivery again, and that duplicate puts
//! the missing entry back. The database is flushed before the receiver
//! answers 2xx: an acknowledged delivery survives a crash. Processing is
//! at-least-once; the entry leaves `pending` only after the outcome is
//! recorded (settling a claim is one transaction).
//!
//! Counts by state are read from every record once, on the first call
//! that needs them, and then kept up to date by every write that changes a
//! record's state, so `/metrics` and stats do not read the whole queue.
//!
//! After an IO error (a full disk) sled fails every later write until the
//! database is reopened. The queue then closes it, every call fails with an
//! error naming the queue's path (the receiver answers 503), and a call
//! after [`REOPEN_PAUSE`] opens it again: the queue recovers by itself when
//! space returns.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::Notify;

use crate::event::{Event, now_ms};
use crate::failure::FailureKind;
use crate::ids::RepoName;
use crate::pipeline::journal::{Journal, JournalError, Retired};

/// How long a queue whose database failed waits before opening it again;
/// calls in between fail at once with the error that closed it.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("delivery queue at {path}: {}", describe(.source))]
    Db { path: PathBuf, source: sled::Error },
    #[error("delivery queue at {path}: closed after {error}; it is reopened on a later call")]
    Closed { path: PathBuf, error: String },
    #[error("the delivery queue at {path} is in use by another `hookvault serve`")]
    InUse { path: PathBuf },
    #[error("queue record for delivery {id} is corrupt: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("queue entry points at delivery {0}, which is not recorded")]
    Dangling(String),
    #[error("queue flush task failed: {0}")]
    Task(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// An error as the operating system words it. sled hands out copies of its
/// first IO error whose message is the original's `Debug` text
/// (`Os { code: 28, .. }`); the code is read back from it.
fn describe(error: &sled::Error) -> String {
    let sled::Error::Io(io) = error else {
        return error.to_string();
    };
    let code = io.raw_os_error().or_else(|| {
        io.to_string()
            .strip_prefix("Os { code: ")?
            .split(',')
            .next()?
            .parse()
            .ok()
    });
    match code {
        Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
        None => io.to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Waiting for (or in) the worker.
    Queued,
    /// Understood and deliberately not acted on (unknown event key, ...).
    Ignored,
    /// A filter skipped it.
    Skipped,
    /// Backed up (or nothing had changed).
    Done,
    /// Failed every attempt: dead-lettered, kept for inspection.
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub source: String,
    pub event_key: String,
    pub received_at_ms: u64,
    pub status: Status,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The kind of `last_error`: whether trying again could help.
    #[serde(default)]
    pub failure: Option<FailureKind>,
    /// When the last attempt started.
    #[serde(default)]
    pub last_attempt_ms: Option<u64>,
    pub event: Option<Event>,
    pub snapshot: Option<String>,
    /// The `pending` entry this delivery is queued under, while it is
    /// queued; set by the queue. An entry its record does not name is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) entry: Option<EntryKey>,
}

/// The key of a `pending` entry: not before this time, in the order the
/// entries were made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EntryKey {
    not_before_ms: u64,
    seq: u64,
}

impl EntryKey {
    /// `not_before_ms (u64 BE) ‖ seq (u64 BE)`: sled keeps them in time order.
    fn bytes(self) -> [u8; 16] {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&self.not_before_ms.to_be_bytes());
        key[8..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }

    fn parse(key: &[u8]) -> Option<Self> {
        let not_before = key.get(..8)?.try_into().ok()?;
        let seq = key.get(8..16)?.try_into().ok()?;
        Some(Self {
            not_before_ms: u64::from_be_bytes(not_before),
            seq: u64::from_be_bytes(seq),
        })
    }
}

impl Delivery {
    /// The repository the delivery is about, when it carries an event.
    pub fn repository(&self) -> Option<&RepoName> {
        self.event.as_ref().map(|e| &e.repository)
    }

    /// A failed delivery back on the queue: attempts count from zero again,
    /// the last error stays until the next attempt.
    fn requeued(mut self, entry: EntryKey) -> Self {
        self.status = Status::Queued;
        self.attempts = 0;
        self.entry = Some(entry);
        self
    }

    /// Where the delivery stands in [`Counts`].
    fn bucket(&self) -> Bucket {
        match self.status {
            Status::Queued if self.last_error.is_some() => Bucket::Retrying,
            Status::Queued => Bucket::Queued,
            Status::Done => Bucket::Done,
            Status::Skipped => Bucket::Skipped,
            Status::Ignored => Bucket::Ignored,
            Status::Failed if self.failure == Some(FailureKind::Permanent) => {
                Bucket::FailedPermanent
            }
            Status::Failed => Bucket::FailedAfterRetries,
        }
    }
}

impl Status {
    /// The word used in JSON and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Ignored => "ignored",
            Self::Skipped => "skipped",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// A delivery as `hookvault events` and `GET /api/v1/deliveries` show it:
/// its state and history, without the event's ref changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: String,
    pub status: Status,
    pub attempts: u32,
    /// `permanent`, `transient` or `no-space`: the kind of `last_error`.
    pub failure: Option<FailureKind>,
    pub last_error: Option<String>,
    pub received_at_ms: u64,
    pub last_attempt_ms: Option<u64>,
    pub repo: Option<String>,
    pub source: String,
    pub event_key: String,
    pub snapshot: Option<String>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id.clone(),
            status: d.status,
            attempts: d.attempts,
            failure: d.failure,
            last_error: d.last_error.clone(),
            received_at_ms: d.received_at_ms,
            last_attempt_ms: d.last_attempt_ms,
            repo: d.repository().map(ToString::to_string),
            source: d.source.clone(),
            event_key: d.event_key.clone(),
            snapshot: d.snapshot.clone(),
        }
    }
}

/// Whether a delivery was new.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
    /// A redelivery of a failed delivery: queued again.
    Requeued,
}

/// What [`Queue::retry`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Retried {
    Requeued,
    /// Only a failed delivery is retried; this one is in another state.
    NotFailed(Status),
    NotFound,
}

/// Which deliveries [`Queue::list`] returns.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub failed_only: bool,
    pub repo: Option<RepoName>,
}

impl Filter {
    fn admits(&self, delivery: &Delivery) -> bool {
        (!self.failed_only || delivery.status == Status::Failed)
            && self
                .repo
                .as_ref()
                .is_none_or(|repo| delivery.repository() == Some(repo))
    }
}

/// Deliveries by state, for stats.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Entries waiting in the queue (including ones waiting for a retry).
    pub pending: u64,
    pub queued: u64,
    /// Queued again after a failed attempt.
    pub retrying: u64,
    pub done: u64,
    pub skipped: u64,
    pub ignored: u64,
    /// Given up (dead-lettered): `failed_permanent + failed_after_retries`.
    pub failed: u64,
    /// Failed at once: an error trying again cannot fix (a refused token).
    pub failed_permanent: u64,
    /// Failed every one of `worker.max_attempts` attempts.
    pub failed_after_retries: u64,
}

/// One count of [`Counts`] each delivery record is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    Queued,
    Retrying,
    Done,
    Skipped,
    Ignored,
    FailedPermanent,
    FailedAfterRetries,
}

impl Counts {
    /// Add `by` (1 or -1) records to `bucket`.
    fn add(&mut self, bucket: Bucket, by: i64) {
        let step = |count: &mut u64| *count = count.saturating_add_signed(by);
        match bucket {
            Bucket::Queued => step(&mut self.queued),
            Bucket::Retrying => {
                step(&mut self.queued);
                step(&mut self.retrying);
            }
            Bucket::Done => step(&mut self.done),
            Bucket::Skipped => step(&mut self.skipped),
            Bucket::Ignored => step(&mut self.ignored),
            Bucket::FailedPermanent => {
                step(&mut self.failed);
                step(&mut self.failed_permanent);
            }
            Bucket::FailedAfterRetries => {
                step(&mut self.failed);
                step(&mut self.failed_after_retries);
            }
        }
    }
}

/// The counts by state, once read (see [`Queue::counts`]). A write that
/// changes a record's state holds the read side while it writes and
/// counts, and the first count holds the write side while it reads every
/// record, so no write is counted twice or missed.
#[derive(Default)]
struct Tally {
    counts: std::sync::RwLock<Option<Mutex<Counts>>>,
}

impl Tally {
    /// Run `write` (which changes records from one bucket to another) and
    /// count what it reports changed.
    fn counted<T, E>(
        &self,
        write: impl FnOnce() -> Result<(T, Vec<(Option<Bucket>, Bucket)>), E>,
    ) -> Result<T, E> {
        let guard = self.counts.read().unwrap_or_else(PoisonError::into_inner);
        let (value, moves) = write()?;
        if let Some(counts) = guard.as_ref() {
            let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
            for (from, to) in moves {
                if let Some(from) = from {
                    counts.add(from, -1);
                }
                counts.add(to, 1);
            }
        }
        Ok(value)
    }

    /// Forget the counts (the database was reopened and may have lost
    /// writes that were counted but never flushed).
    fn forget(&self) {
        *self.counts.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// The head of `pending`, as [`Queue::claim`] finds it.
enum Head {
    /// Nothing due that may be taken now: the queue is empty, or every due
    /// entry is claimed or about a repository that is.
    Idle,
    Later(Duration),
    Due(Claim),
    /// An entry without a readable record, to be taken off.
    Dangling(Vec<u8>),
    /// An entry its record does not name (see [`Delivery::entry`]), to be
    /// taken off quietly.
    Stale(Vec<u8>),
}

/// A delivery taken from the queue, to be completed or retried.
#[derive(Debug)]
pub struct Claimed {
    key: Vec<u8>,
    pub delivery: Delivery,
    /// Where the record was counted when claimed.
    counted_as: Bucket,
}

/// What this process is working on. The rule: a pending entry is handed to
/// at most one worker at a time, and so is a repository (never two backups
/// of one repository at once). Claims live in memory on purpose: the
/// database's lock lets one process hold the queue, so the claims of a
/// process that died die with it, and its entries, still in `pending`, are
/// taken again after the restart.
#[derive(Debug, Default)]
struct Claims {
    entries: HashSet<Vec<u8>>,
    repos: HashSet<RepoName>,
}

/// Holds a [`Claim`]'s entries and repository for as long as it lives;
/// dropping it (a settled claim, a queue error, a worker that unwound)
/// releases them and wakes the waiting workers.
struct Lease {
    shared: Arc<Shared>,
    keys: Vec<Vec<u8>>,
    repo: Option<RepoName>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut claims = self.shared.claims();
            for key in &self.keys {
                claims.entries.remove(key);
            }
            if let Some(repo) = &self.repo {
                claims.repos.remove(repo);
            }
        }
        self.shared.wake.notify_waiters();
    }
}

/// Deliveries one worker took from the queue together: the first due
/// entry it may take (the lead) and, when asked for, later due entries of
/// the same repository that one backup satisfies too. Each keeps its own
/// record. The entries and the repository stay claimed until the claim is
/// settled or dropped.
pub struct Claim {
    entries: Vec<Claimed>,
    _lease: Lease,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("deliveries", &self.ids())
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// The delivery the claim was made for (the oldest due one).
    pub fn lead(&self) -> &Delivery {
        &self.entries[0].delivery
    }

    pub fn lead_mut(&mut self) -> &mut Delivery {
        &mut self.entries[0].delivery
    }

    /// Every delivery of the claim, lead first.
    pub fn deliveries(&self) -> impl Iterator<Item = &Delivery> {
        self.entries.iter().map(|e| &e.delivery)
    }

    pub fn deliveries_mut(&mut self) -> impl Iterator<Item = &mut Delivery> {
        self.entries.iter_mut().map(|e| &mut e.delivery)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.deliveries().map(|d| d.id.as_str()).collect()
    }

    /// Number of deliveries (at least one).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How many entries after the lead one claim looks through for deliveries
/// to take with it, so a long queue costs each claim a bounded scan.
const COALESCE_WINDOW: usize = 4096;

/// The open database. Each call takes its own clone and drops it before
/// waiting for work, so a failed database can be closed and reopened.
#[derive(Clone)]
struct Handles {
    /// Which opening of the database this is.
    generation: u64,
    db: sled::Db,
    deliveries: sled::Tree,
    pending: sled::Tree,
}

enum State {
    Open(Handles),
    Closed {
        generation: u64,
        since: Instant,
        error: String,
    },
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    claims: Mutex<Claims>,
    /// Woken when an entry is queued or a claim released.
    wake: Notify,
    commit: GroupCommit,
    tally: Tally,
    /// Where a new delivery is made durable (see [`Journal`]).
    journal: Arc<Journal>,
}

/// Group commit: writes take a ticket once written; one flush at a time
/// makes durable every write ticketed before it started, so concurrent
/// deliveries share one fsync instead of queueing one each (and one
/// blocking-pool thread each).
#[derive(Default)]
struct GroupCommit {
    /// Tickets handed out (writes made).
    written: std::sync::atomic::AtomicU64,
    /// Every ticket up to this one is durable.
    durable: std::sync::atomic::AtomicU64,
    /// Held by the task running a flush; the others wait on it.
    flushing: tokio::sync::Mutex<()>,
    /// Flushes run, for tests.
    flushes: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn claims(&self) -> MutexGuard<'_, Claims> {
        // Every change to the claims is a single insert or remove.
        self.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

fn encode(delivery: &Delivery) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(delivery).expect("delivery serialises")
}

fn decode(id: &str, bytes: &[u8]) -> Result<Delivery, QueueError> {
    serde_json::from_slice(bytes).map_err(|source| QueueError::Corrupt {
        id: id.to_string(),
        source,
    })
}

/// Whether `key` is the entry `delivery` is queued under (see
/// [`Delivery::entry`]); any other entry for it is stale.
fn is_live(delivery: &Delivery, key: &[u8]) -> bool {
    delivery.status == Status::Queued
        && delivery.entry.is_some()
        && delivery.entry == EntryKey::parse(key)
}

fn open_handles(dir: &Path, generation: u64) -> Result<Handles, sled::Error> {
    // High-throughput mode: the default cleans segments more eagerly. With
    // another allocator the ingest bench's p99 at 64 connections was
    // 20-38 ms in 3 of 6 runs in the default mode and under 8 ms in 5 of 5
    // in this one; with glibc's, stalls of 22-35 ms remain in about a
    // third of the runs in either (cause not found).
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    Ok(Handles {
        generation,
        deliveries: db.open_tree("deliveries")?,
        pending: db.open_tree("pending")?,
        db,
    })
}

/// The writes that record `delivery` (its entry already set), and the
/// counts they move; with the record the journal must keep for the answer
/// to be durable (none for a requeue, which is flushed in sled).
///
/// The record is written first and only if its id is absent (or, for a
/// requeue, unchanged since it was read), then its entry: a worker never
/// meets an entry before its record.
#[allow(clippy::type_complexity)]
fn record_writes(
    handles: &Handles,
    delivery: &Delivery,
    seq: u64,
    requeue_failed: bool,
) -> Result<((Recorded, Option<Vec<u8>>), Vec<(Option<Bucket>, Bucket)>), sled::Error> {
    let id = delivery.id.as_bytes();
    let value = encode(delivery);
    loop {
        // Most ids are new: written at once, without a read before.
        if insert_absent(handles, delivery, &value)? {
            let moves = vec![(None, delivery.bucket())];
            return Ok(((Recorded::New, Some(value)), moves));
        }
        let Some(bytes) = handles.deliveries.get(id)? else {
            // Removed meanwhile: absent again.
            continue;
        };
        // An unreadable record is left alone: a duplicate.
        let Ok(known) = decode(&delivery.id, &bytes) else {
            return Ok(((Recorded::Duplicate, None), Vec::new()));
        };
        if requeue_failed && known.status == Status::Failed {
            let entry = EntryKey {
                not_before_ms: now_ms(),
                seq,
            };
            let from = known.bucket();
            let again = known.requeued(entry);
            let swapped =
                handles
                    .deliveries
                    .compare_and_swap(id, Some(&bytes), Some(encode(&again)))?;
            if swapped.is_err() {
                continue;
            }
            handles.pending.insert(entry.bytes(), id)?;
            let moves = vec![(Some(from), again.bucket())];
            return Ok(((Recorded::Requeued, None), moves));
        }
        restore_entry(handles, &known)?;
        return Ok(((Recorded::Duplicate, Some(bytes.to_vec())), Vec::new()));
    }
}

/// Write `value` (the record of `delivery`) if its id is absent, then its
/// entry; false if the id is known.
fn insert_absent(
    handles: &Handles,
    delivery: &Delivery,
    value: &[u8],
) -> Result<bool, sled::Error> {
    let id = delivery.id.as_bytes();
    let swapped = handles
        .deliveries
        .compare_and_swap(id, None::<&[u8]>, Some(value))?;
    if swapped.is_err() {
        return Ok(false);
    }
    if let Some(entry) = delivery.entry {
        handles.pending.insert(entry.bytes(), id)?;
    }
    Ok(true)
}

/// A queued record whose entry is missing (a process died between the
/// two writes, before it answered) gets it back.
fn restore_entry(handles: &Handles, known: &Delivery) -> Result<(), sled::Error> {
    if let (Status::Queued, Some(entry)) = (known.status, known.entry)
        && !handles.pending.contains_key(entry.bytes())?
    {
        tracing::info!(delivery_id = %known.id, "queue entry restored for a recorded delivery");
        handles.pending.insert(entry.bytes(), known.id.as_bytes())?;
    }
    Ok(())
}

/// Write one journal record to sled as recording it did: the record if
/// its id is absent, its entry if a queued record lacks it. A record of a
/// delivery that has moved on since is left as it is.
fn replay_record(handles: &Handles, record: &[u8]) -> Result<bool, QueueError> {
    let delivery: Delivery =
        serde_json::from_slice(record).map_err(|source| QueueError::Corrupt {
            id: "(journal record)".into(),
            source,
        })?;
    let db = |source| QueueError::Db {
        path: PathBuf::new(),
        source,
    };
    loop {
        match handles.deliveries.get(delivery.id.as_bytes()).map_err(db)? {
            None => {
                if insert_absent(handles, &delivery, record).map_err(db)? {
                    return Ok(true);
                }
            }
            Some(bytes) => {
                if let Ok(known) = decode(&delivery.id, &bytes) {
                    restore_entry(handles, &known).map_err(db)?;
                }
                return Ok(false);
            }
        }
    }
}

/// Replay journal files into sled (not flushed); the number of records
/// written. A record that does not decode is logged and skipped.
fn replay(handles: &Handles, files: &[PathBuf]) -> Result<usize, QueueError> {
    let mut written = 0;
    for path in files {
        for record in Journal::read(path)? {
            match replay_record(handles, &record) {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e @ QueueError::Corrupt { .. }) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable delivery journal record skipped");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(written)
}

impl Queue {
    /// Open (or create) the queue's own database in `dir`
    /// (`<store.path>/queue`). Only one process may hold it.
    pub fn open_dir(dir: &Path) -> Result<Self, QueueError> {
        let handles = open_handles(dir, 0).map_err(|source| {
            let in_use = matches!(&source, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                || source.to_string().contains("lock");
            if in_use {
                QueueError::InUse {
                    path: dir.to_path_buf(),
                }
            } else {
                QueueError::Db {
                    path: dir.to_path_buf(),
                    source,
                }
            }
        })?;
        let (journal, found) = Journal::open(&dir.join("journal"))?;
        let db_failed = |source| QueueError::Db {
            path: dir.to_path_buf(),
            source,
        };
        if !found.is_empty() {
            let replayed = replay(&handles, &found)?;
            // The journal's files go once what they hold is flushed in sled.
            handles.db.flush().map_err(db_failed)?;
            Journal::remove(&found)?;
            if replayed > 0 {
                tracing::info!(path = %dir.display(), files = found.len(), records = replayed, "delivery journal replayed: records sled had not kept");
            } else {
                tracing::debug!(path = %dir.display(), files = found.len(), "delivery journal replayed: sled had every record");
            }
        }
        Ok(Self {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                state: Mutex::new(State::Open(handles)),
                claims: Mutex::default(),
                wake: Notify::new(),
                commit: GroupCommit::default(),
                tally: Tally::default(),
                journal,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is replaced whole, so a panic elsewhere cannot leave it
        // half-changed.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The open database, reopening it when an earlier error closed it.
    fn handles(&self) -> Result<Handles, QueueError> {
        let mut state = self.state();
        let generation = match &*state {
            State::Open(handles) => return Ok(handles.clone()),
            State::Closed { since, error, .. } if since.elapsed() < REOPEN_PAUSE => {
                return Err(QueueError::Closed {
                    path: self.shared.dir.clone(),
                    error: error.clone(),
                });
            }
            State::Closed { generation, .. } => generation + 1,
        };
        let reopened = open_handles(&self.shared.dir, generation).and_then(|handles| {
            // What was acknowledged through the journal but may not have
            // reached the failed database's disk.
            let files = self.shared.journal.on_disk().unwrap_or_default();
            match replay(&handles, &files) {
                Ok(_) => Ok(handles),
                Err(QueueError::Db { source, .. }) => Err(source),
                Err(e) => {
                    tracing::warn!(error = %e, "delivery journal not replayed on reopening");
                    Ok(handles)
                }
            }
        });
        match reopened {
            Ok(handles) => {
                tracing::info!(path = %self.shared.dir.display(), "delivery queue reopened");
                *state = State::Open(handles.clone());
                // Not under the state's lock: a counted write may wait for it.
                drop(state);
                self.shared.tally.forget();
                Ok(handles)
            }
            Err(source) => {
                *state = State::Closed {
                    generation,
                    since: Instant::now(),
                    error: describe(&source),
                };
                Err(QueueError::Db {
                    path: self.shared.dir.clone(),
                    source,
                })
            }
        }
    }

    /// Every sled error goes through here. sled keeps the first IO error it
    /// meets (a full disk, EIO) and fails every later write with it, even
    /// once the cause is gone: after an IO error the database is closed and
    /// the next call reopens it from disk, where everything acknowledged was
    /// flushed.
    fn failed(&self, handles: &Handles, source: sled::Error) -> QueueError {
        if matches!(source, sled::Error::Io(_)) {
            let mut state = self.state();
            if matches!(&*state, State::Open(open) if open.generation == handles.generation) {
                tracing::warn!(
                    path = %self.shared.dir.display(),
                    error = %describe(&source),
                    "delivery queue failed; closing it to reopen"
                );
                let closed = std::mem::replace(
                    &mut *state,
                    State::Closed {
                        generation: handles.generation,
                        since: Instant::now(),
                        error: describe(&source),
                    },
                );
                // Closing joins sled's flusher thread: not under the lock.
                drop(state);
                drop(closed);
            }
        }
        QueueError::Db {
            path: self.shared.dir.clone(),
            source,
        }
    }

    fn transaction_failed(
        &self,
        handles: &Handles,
        error: TransactionError<QueueError>,
    ) -> QueueError {
        match error {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(source) => self.failed(handles, source),
        }
    }

    /// Make everything recorded durable (at shutdown).
    pub fn flush_now(&self) -> Result<(), QueueError> {
        let handles = self.handles()?;
        handles
            .db
            .flush()
            .map_err(|source| self.failed(&handles, source))?;
        Ok(())
    }

    /// Whether a delivery can be recorded now (`/readyz`): a small write
    /// beside the deliveries, flushed, failing as a record would.
    pub(crate) async fn probe_write(&self) -> Result<(), QueueError> {
        let handles = self.handles()?;
        let written = handles
            .db
            .insert("ready-probe", &now_ms().to_be_bytes()[..]);
        written.map_err(|source| self.failed(&handles, source))?;
        // An empty record: nothing to replay.
        self.journaled(&handles, &[]).await
    }

    /// Append `record` to the journal and wait until it is synced (with
    /// whatever else was appended meanwhile). A file the journal moved
    /// past is deleted once sled has been flushed, in the background.
    async fn journaled(&self, handles: &Handles, record: &[u8]) -> Result<(), QueueError> {
        let journal = &self.shared.journal;
        let ticket = journal.append(record);
        if let Some(Retired(path)) = journal.commit(ticket).await? {
            let queue = self.clone();
            tokio::task::spawn_blocking(move || {
                let removed = queue
                    .handles()
                    .and_then(|handles| {
                        handles
                            .db
                            .flush()
                            .map_err(|source| queue.failed(&handles, source))
                    })
                    .and_then(|_| Ok(Journal::remove(std::slice::from_ref(&path))?));
                if let Err(e) = removed {
                    // Kept, and replayed at the next open.
                    tracing::warn!(path = %path.display(), error = %e, "delivery journal file not removed");
                }
            });
        }
        let current = match &*self.state() {
            State::Open(open) => Some(open.generation),
            State::Closed { .. } => None,
        };
        if current != Some(handles.generation) && !record.is_empty() {
            // The database was reopened after this record went to the old
            // one, perhaps after the reopening read the journal: write it
            // to the new one too (replay is idempotent).
            let reopened = self.handles()?;
            replay_record(&reopened, record).map_err(|e| match e {
                QueueError::Db { source, .. } => self.failed(&reopened, source),
                e => e,
            })?;
        }
        Ok(())
    }

    /// Make everything written so far durable. sled's synchronous flush
    /// on tokio's blocking pool (sled's own `flush_async` pool is avoided),
    /// shared by every caller whose write was made before it started (see
    /// [`GroupCommit`]).
    async fn flush(&self, handles: &Handles) -> Result<(), QueueError> {
        use std::sync::atomic::Ordering::SeqCst;
        let commit = &self.shared.commit;
        let ticket = commit.written.fetch_add(1, SeqCst) + 1;
        let _flushing = commit.flushing.lock().await;
        if commit.durable.load(SeqCst) >= ticket {
            // A flush that started after this write covered it.
            return Ok(());
        }
        let covers = commit.written.load(SeqCst);
        commit.flushes.fetch_add(1, SeqCst);
        let db = handles.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| QueueError::Task(e.to_string()))?
            .map_err(|source| self.failed(handles, source))?;
        commit.durable.fetch_max(covers, SeqCst);
        Ok(())
    }

    /// Record a delivery; queue it when `delivery.status` is `Queued`.
    /// Durable (flushed) when this returns. A known id is a duplicate,
    /// whatever became of it.
    pub async fn record(&self, delivery: Delivery) -> Result<Recorded, QueueError> {
        self.record_inner(delivery, false).await
    }

    /// As [`Queue::record`], except that a known id whose delivery failed
    /// is queued again (Bitbucket's "resend"): a redelivery of a queued,
    /// done, skipped or ignored delivery stays a duplicate.
    pub async fn record_redelivery(&self, delivery: Delivery) -> Result<Recorded, QueueError> {
        self.record_inner(delivery, true).await
    }

    async fn record_inner(
        &self,
        mut delivery: Delivery,
        requeue_failed: bool,
    ) -> Result<Recorded, QueueError> {
        let handles = self.handles()?;
        let seq = handles
            .db
            .generate_id()
            .map_err(|source| self.failed(&handles, source))?;
        let queued = delivery.status == Status::Queued;
        delivery.entry = queued.then_some(EntryKey {
            not_before_ms: delivery.received_at_ms,
            seq,
        });
        let (recorded, journal) = self
            .shared
            .tally
            .counted(|| record_writes(&handles, &delivery, seq, requeue_failed))
            .map_err(|source| self.failed(&handles, source))?;
        match journal {
            // Also for a duplicate: the first copy may still be on its way
            // to disk, and a 2xx promises it is there.
            Some(record) => self.journaled(&handles, &record).await?,
            // A requeue changed a record that the journal's replay (insert
            // if absent) would not change back: flushed in sled itself.
            None => self.flush(&handles).await?,
        }
        if (recorded == Recorded::New && queued) || recorded == Recorded::Requeued {
            self.shared.wake.notify_waiters();
        }
        Ok(recorded)
    }

    /// Put a failed delivery back on the queue, attempts from zero. Any
    /// other delivery is left as it is. Durable when this returns.
    pub async fn retry(&self, id: &str) -> Result<Retried, QueueError> {
        let handles = self.handles()?;
        let seq = handles
            .db
            .generate_id()
            .map_err(|source| self.failed(&handles, source))?;
        let retried = self.shared.tally.counted(|| -> Result<_, QueueError> {
            loop {
                let found = handles
                    .deliveries
                    .get(id.as_bytes())
                    .map_err(|source| self.failed(&handles, source))?;
                let Some(bytes) = found else {
                    return Ok((Retried::NotFound, Vec::new()));
                };
                let known = decode(id, &bytes)?;
                if known.status != Status::Failed {
                    return Ok((Retried::NotFailed(known.status), Vec::new()));
                }
                let entry = EntryKey {
                    not_before_ms: now_ms(),
                    seq,
                };
                let from = known.bucket();
                let again = known.requeued(entry);
                let swapped = handles
                    .deliveries
                    .compare_and_swap(id.as_bytes(), Some(&bytes), Some(encode(&again)))
                    .map_err(|source| self.failed(&handles, source))?;
                if swapped.is_err() {
                    // Changed meanwhile (a redelivery): look again.
                    continue;
                }
                handles
                    .pending
                    .insert(entry.bytes(), id.as_bytes())
                    .map_err(|source| self.failed(&handles, source))?;
                return Ok((Retried::Requeued, vec![(Some(from), again.bucket())]));
            }
        })?;
        if retried == Retried::Requeued {
            self.flush(&handles).await?;
            self.shared.wake.notify_waiters();
        }
        Ok(retried)
    }

    /// Put every failed delivery back on the queue; returns their ids.
    pub async fn retry_all_failed(&self) -> Result<Vec<String>, QueueError> {
        let failed = self.list(&Filter {
            failed_only: true,
            repo: None,
        })?;
        let mut requeued = Vec::new();
        for delivery in failed {
            if self.retry(&delivery.id).await? == Retried::Requeued {
                requeued.push(delivery.id);
            }
        }
        Ok(requeued)
    }

    /// Every recorded delivery `filter` admits, oldest first. An unreadable
    /// record is logged and left out.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Delivery>, QueueError> {
        let handles = self.handles()?;
        let mut found = Vec::new();
        for entry in handles.deliveries.iter() {
            let (id, bytes) = entry.map_err(|source| self.failed(&handles, source))?;
            let id = String::from_utf8_lossy(&id);
            match decode(&id, &bytes) {
                Ok(delivery) if filter.admits(&delivery) => found.push(delivery),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(delivery_id = %id, error = %e, "unreadable delivery record")
                }
            }
        }
        found.sort_by(|a, b| (a.received_at_ms, &a.id).cmp(&(b.received_at_ms, &b.id)));
        Ok(found)
    }

    /// Deliveries by state. The first call reads every record; later ones
    /// are kept up to date by the writes (see [`Tally`]).
    pub fn counts(&self) -> Result<Counts, QueueError> {
        let pending = self.pending_len()? as u64;
        let tally = &self.shared.tally.counts;
        let known = tally
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|c| c.lock().unwrap_or_else(PoisonError::into_inner).clone());
        let mut counts = match known {
            Some(counts) => counts,
            None => {
                let mut slot = tally.write().unwrap_or_else(PoisonError::into_inner);
                if let Some(counts) = slot.as_ref() {
                    counts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone()
                } else {
                    let mut counts = Counts::default();
                    for delivery in self.list(&Filter::default())? {
                        counts.add(delivery.bucket(), 1);
                    }
                    *slot = Some(Mutex::new(counts.clone()));
                    counts
                }
            }
        };
        counts.pending = pending;
        Ok(counts)
    }

    /// Every delivery waiting in `pending` (queued, or waiting for a retry),
    /// oldest entry first: what the lag watch and `/metrics` need, without
    /// reading the records of deliveries long done.
    pub fn waiting(&self) -> Result<Vec<Delivery>, QueueError> {
        let handles = self.handles()?;
        let mut found = Vec::new();
        for entry in handles.pending.iter() {
            let (key, id) = entry.map_err(|source| self.failed(&handles, source))?;
            let id = String::from_utf8_lossy(&id);
            if let Ok(Some(delivery)) = self.get_in(&handles, &id)
                && is_live(&delivery, &key)
            {
                found.push(delivery);
            }
        }
        Ok(found)
    }

    pub fn get(&self, id: &str) -> Result<Option<Delivery>, QueueError> {
        let handles = self.handles()?;
        self.get_in(&handles, id)
    }

    fn get_in(&self, handles: &Handles, id: &str) -> Result<Option<Delivery>, QueueError> {
        let found = handles
            .deliveries
            .get(id.as_bytes())
            .map_err(|source| self.failed(handles, source))?;
        found.map(|bytes| decode(id, &bytes)).transpose()
    }

    /// Number of deliveries waiting (including ones waiting for a retry).
    pub fn pending_len(&self) -> Result<usize, QueueError> {
        Ok(self.handles()?.pending.len())
    }

    /// Wait for the next delivery whose time has come and claim it alone.
    pub async fn next(&self) -> Result<Claim, QueueError> {
        self.claim(1, |_, _| false).await
    }

    /// Wait for the first due entry that is neither claimed nor about a
    /// repository that is claimed, and claim it with its repository. Later
    /// due entries of the same repository for which `joins(lead, other)`
    /// holds are claimed with it, up to `max` deliveries in all, oldest
    /// first. An entry whose record is missing or unreadable is taken off
    /// the queue (and logged), so it can never block the deliveries behind
    /// it.
    pub async fn claim(
        &self,
        max: usize,
        joins: impl Fn(&Delivery, &Delivery) -> bool,
    ) -> Result<Claim, QueueError> {
        loop {
            // Made before looking, so a wake between the look and the wait
            // is not missed.
            let notified = self.shared.wake.notified();
            let handles = self.handles()?;
            match self.claim_due(&handles, max, &joins)? {
                Head::Due(claim) => return Ok(claim),
                Head::Dangling(key) | Head::Stale(key) => {
                    handles
                        .pending
                        .remove(&key)
                        .map_err(|source| self.failed(&handles, source))?;
                    self.flush(&handles).await?;
                }
                Head::Later(wait) => {
                    drop(handles);
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Head::Idle => {
                    drop(handles);
                    notified.await;
                }
            }
        }
    }

    /// One look through `pending`, oldest first, under the claims' lock so
    /// no two workers take the same entry or repository.
    fn claim_due(
        &self,
        handles: &Handles,
        max: usize,
        joins: &impl Fn(&Delivery, &Delivery) -> bool,
    ) -> Result<Head, QueueError> {
        let now = now_ms();
        let mut claims = self.shared.claims();
        let mut taken: Vec<Claimed> = Vec::new();
        let mut looked_after_lead = 0usize;
        for entry in handles.pending.iter() {
            let (key, id) = entry.map_err(|source| self.failed(handles, source))?;
            let not_before = EntryKey::parse(&key).map_or(0, |k| k.not_before_ms);
            if not_before > now {
                if taken.is_empty() {
                    return Ok(Head::Later(Duration::from_millis(not_before - now)));
                }
                break;
            }
            if !taken.is_empty() {
                looked_after_lead += 1;
                if taken.len() >= max || looked_after_lead > COALESCE_WINDOW {
                    break;
                }
            }
            if claims.entries.contains(key.as_ref()) {
                continue;
            }
            let id = String::from_utf8_lossy(&id).into_owned();
            let delivery = match self.get_in(handles, &id) {
                Ok(Some(delivery)) => delivery,
                // The database failed, not the entry: it stays queued.
                Err(e @ (QueueError::Db { .. } | QueueError::Closed { .. })) => return Err(e),
                // Taken off when it is the first entry a worker could take.
                Ok(None) | Err(_) if !taken.is_empty() => continue,
                Ok(None) => {
                    tracing::error!(delivery_id = %id, "queue entry without a record; dropped");
                    return Ok(Head::Dangling(key.to_vec()));
                }
                Err(e) => {
                    tracing::error!(delivery_id = %id, error = %e, "unreadable delivery; taken off the queue");
                    return Ok(Head::Dangling(key.to_vec()));
                }
            };
            if !is_live(&delivery, &key) {
                if taken.is_empty() {
                    tracing::debug!(delivery_id = %id, "stale queue entry taken off");
                    return Ok(Head::Stale(key.to_vec()));
                }
                continue;
            }
            let counted_as = delivery.bucket();
            match taken.first() {
                None => {
                    if delivery
                        .repository()
                        .is_some_and(|repo| claims.repos.contains(repo))
                    {
                        continue;
                    }
                    taken.push(Claimed {
                        key: key.to_vec(),
                        delivery,
                        counted_as,
                    });
                    if max <= 1 {
                        break;
                    }
                }
                Some(lead) => {
                    if lead.delivery.repository().is_some()
                        && delivery.repository() == lead.delivery.repository()
                        && joins(&lead.delivery, &delivery)
                    {
                        taken.push(Claimed {
                            key: key.to_vec(),
                            delivery,
                            counted_as,
                        });
                    }
                }
            }
        }
        let Some(lead) = taken.first() else {
            return Ok(Head::Idle);
        };
        let repo = lead.delivery.repository().cloned();
        let keys: Vec<Vec<u8>> = taken.iter().map(|c| c.key.clone()).collect();
        claims.entries.extend(keys.iter().cloned());
        if let Some(repo) = &repo {
            claims.repos.insert(repo.clone());
        }
        drop(claims);
        Ok(Head::Due(Claim {
            entries: taken,
            _lease: Lease {
                shared: self.shared.clone(),
                keys,
                repo,
            },
        }))
    }

    /// Count an attempt of every delivery of the claim durably before it
    /// starts, so a delivery that crashes the process still reaches
    /// `max_attempts`.
    pub async fn start_attempt(&self, claim: &mut Claim) -> Result<(), QueueError> {
        let handles = self.handles()?;
        let started = now_ms();
        let mut batch = sled::Batch::default();
        for delivery in claim.deliveries_mut() {
            delivery.attempts += 1;
            delivery.last_attempt_ms = Some(started);
            batch.insert(delivery.id.as_bytes(), encode(delivery));
        }
        handles
            .deliveries
            .apply_batch(batch)
            .map_err(|source| self.failed(&handles, source))?;
        self.flush(&handles).await
    }

    /// Record every delivery of the claim as it now is and take its entry
    /// off the queue, atomically; a delivery for which `retry_in` gives a
    /// delay is queued again, not to be tried before it has passed. The
    /// claim is released once this is durable (or failed: its entries are
    /// then still queued as before).
    pub async fn settle(
        &self,
        mut claim: Claim,
        retry_in: impl Fn(&Delivery) -> Option<Duration>,
    ) -> Result<(), QueueError> {
        let handles = self.handles()?;
        let mut writes = Vec::with_capacity(claim.len());
        let mut moves = Vec::with_capacity(claim.len());
        for entry in &mut claim.entries {
            let delivery = &mut entry.delivery;
            delivery.entry = match retry_in(delivery) {
                None => None,
                Some(delay) => {
                    let seq = handles
                        .db
                        .generate_id()
                        .map_err(|source| self.failed(&handles, source))?;
                    let not_before_ms = now_ms()
                        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    Some(EntryKey { not_before_ms, seq })
                }
            };
            moves.push((Some(entry.counted_as), delivery.bucket()));
            writes.push((
                delivery.id.as_bytes(),
                encode(delivery),
                entry.key.as_slice(),
                delivery.entry.map(EntryKey::bytes),
            ));
        }
        self.shared.tally.counted(|| {
            (&handles.deliveries, &handles.pending)
                .transaction(|(deliveries, pending)| {
                    for (id, value, key, requeue) in &writes {
                        deliveries.insert(*id, value.as_slice())?;
                        pending.remove(*key)?;
                        if let Some(new_key) = requeue {
                            pending.insert(&new_key[..], *id)?;
                        }
                    }
                    Ok::<_, ConflictableTransactionError<QueueError>>(())
                })
                .map_err(|e| self.transaction_failed(&handles, e))?;
            Ok::<_, QueueError>(((), moves))
        })?;
        self.flush(&handles).await?;
        drop(claim);
        Ok(())
    }

    /// Record the outcome of every delivery of the claim and take them off
    /// the queue, atomically.
    pub async fn complete(&self, claim: Claim) -> Result<(), QueueError> {
        self.settle(claim, |_| None).await
    }

    /// Put the claim's deliveries back, not to be tried before `delay` has
    /// passed.
    pub async fn retry_later(&self, claim: Claim, delay: Duration) -> Result<(), QueueError> {
        self.settle(claim, |_| Some(delay)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue in a new temporary database (kept alive by the directory).
    fn fresh_queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::open_dir(dir.path()).expect("queue");
        (dir, queue)
    }

    fn delivery(id: &str, status: Status) -> Delivery {
        Delivery {
            id: id.into(),
            source: "cloud".into(),
            event_key: "repo:push".into(),
            received_at_ms: now_ms(),
            status,
            attempts: 0,
            last_error: None,
            failure: None,
            last_attempt_ms: None,
            event: None,
            snapshot: None,
            entry: None,
        }
    }

    /// A queued push of `repo`, received at `at_ms`.
    fn push(id: &str, repo: &str, at_ms: u64) -> Delivery {
        let repository = RepoName::parse(repo).expect("repo name");
        Delivery {
            received_at_ms: at_ms,
            event: Some(Event {
                delivery_id: id.into(),
                source: "cloud".into(),
                event_key: "repo:push".into(),
                kind: crate::event::EventKind::Push,
                repository,
                actor: None,
                changes: Vec::new(),
                received_at_ms: at_ms,
                pull_request: None,
                comment: None,
                comments: Vec::new(),
                previous_name: None,
            }),
            ..delivery(id, Status::Queued)
        }
    }

    /// Claims joining every due delivery of the lead's repository.
    fn same_repo(_: &Delivery, _: &Delivery) -> bool {
        true
    }

    /// Whether a claim is handed out within a moment (it should not be).
    async fn claims_nothing(queue: &Queue) -> bool {
        tokio::time::timeout(Duration::from_millis(200), queue.next())
            .await
            .is_err()
    }

    #[tokio::test]
    async fn an_entry_and_its_repository_are_claimed_by_one_worker_at_a_time() {
        let (_dir, queue) = fresh_queue();
        for (id, repo, at) in [
            ("a1", "acme/a", 1),
            ("a2", "acme/a", 2),
            ("b1", "acme/b", 3),
        ] {
            queue.record(push(id, repo, at)).await.expect("record");
        }
        let a = queue.next().await.expect("claim");
        assert_eq!(a.ids(), ["a1"]);
        // a2 waits: its repository is claimed; b1 is free.
        let mut b = queue.next().await.expect("claim");
        assert_eq!(b.ids(), ["b1"]);
        assert!(claims_nothing(&queue).await, "a2 handed out beside a1");
        // A worker waiting is woken when a claim is settled.
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await.expect("claim") }
        });
        queue.complete(a).await.expect("complete");
        let a2 = waiting.await.expect("task");
        assert_eq!(a2.ids(), ["a2"]);
        // A claim dropped unsettled (a worker that unwound) leaves its entry
        // queued, attempts counted, and it is taken again.
        queue.start_attempt(&mut b).await.expect("start");
        drop(b);
        let again = queue.next().await.expect("claim again");
        assert_eq!((again.lead().id.as_str(), again.lead().attempts), ("b1", 1));
        assert_eq!(queue.pending_len().expect("pending"), 2);
        drop(a2);
    }

    #[tokio::test]
    async fn due_deliveries_of_one_repository_are_claimed_together_and_settled_each() {
        let (_dir, queue) = fresh_queue();
        for (id, repo, at) in [
            ("a1", "acme/a", 1),
            ("b1", "acme/b", 2),
            ("a2", "acme/a", 3),
            ("a3", "acme/a", 4),
            // Not due for an hour (as a retry waiting out its backoff): not
            // taken along.
            ("a4", "acme/a", now_ms() + 3_600_000),
        ] {
            queue.record(push(id, repo, at)).await.expect("record");
        }
        // Only what `joins` admits, and at most `max`.
        let alone = queue.claim(8, |_, _| false).await.expect("claim");
        assert_eq!(alone.ids(), ["a1"]);
        drop(alone);
        let two = queue.claim(2, same_repo).await.expect("claim");
        assert_eq!(two.ids(), ["a1", "a2"]);
        drop(two);
        let mut group = queue.claim(8, same_repo).await.expect("claim");
        assert_eq!(group.ids(), ["a1", "a2", "a3"]);
        assert_eq!(queue.next().await.expect("claim").ids(), ["b1"]);
        queue.start_attempt(&mut group).await.expect("start");
        // One backup answered them all; a3 is to be tried again.
        for delivery in group.deliveries_mut() {
            delivery.status = if delivery.id == "a3" {
                Status::Queued
            } else {
                Status::Done
            };
            delivery.snapshot = Some("s1".into());
        }
        queue
            .settle(group, |d| {
                (d.status == Status::Queued).then_some(Duration::ZERO)
            })
            .await
            .expect("settle");
        for id in ["a1", "a2"] {
            let done = queue.get(id).expect("get").expect("recorded");
            assert_eq!(
                (done.status, done.attempts, done.snapshot.as_deref()),
                (Status::Done, 1, Some("s1")),
                "{id}"
            );
        }
        // b1 (unsettled, dropped above), a3 again and a4 later.
        assert_eq!(queue.pending_len().expect("pending"), 3);
        let again = queue.claim(8, same_repo).await.expect("claim");
        assert_eq!(again.ids(), ["b1"]);
        let a3 = queue.claim(8, same_repo).await.expect("claim");
        assert_eq!((a3.ids(), a3.lead().attempts), (vec!["a3"], 1));
    }

    #[tokio::test]
    async fn an_entry_claimed_by_a_killed_process_is_claimed_again_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let queue = Queue::open_dir(dir.path()).expect("queue");
            queue.record(push("x", "acme/a", 1)).await.expect("record");
            let mut claim = queue.next().await.expect("claim");
            queue.start_attempt(&mut claim).await.expect("start");
            // The process dies mid-backup: its claim is never released, and
            // its database is closed under it.
            std::mem::forget(claim);
            let handles = queue.handles().expect("open");
            let _ = queue.failed(&handles, sled::Error::Io(std::io::Error::other("killed")));
        }
        let start = Instant::now();
        let queue = loop {
            match Queue::open_dir(dir.path()) {
                Err(_) if start.elapsed().as_secs() < 10 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("reopen"),
            }
        };
        let claim = queue.next().await.expect("claimed again");
        assert_eq!((claim.lead().id.as_str(), claim.lead().attempts), ("x", 1));
    }

    #[tokio::test]
    async fn duplicate_ids_are_recorded_once() {
        let (_dir, queue) = fresh_queue();
        assert_eq!(
            queue
                .record(delivery("a", Status::Queued))
                .await
                .expect("record"),
            Recorded::New
        );
        assert_eq!(
            queue
                .record(delivery("a", Status::Queued))
                .await
                .expect("record"),
            Recorded::Duplicate
        );
        assert_eq!(queue.pending_len().expect("pending"), 1);
        assert_eq!(
            queue
                .record(delivery("b", Status::Ignored))
                .await
                .expect("record"),
            Recorded::New
        );
        assert_eq!(
            queue.pending_len().expect("pending"),
            1,
            "ignored deliveries are not queued"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_share_flushes_and_all_are_kept() {
        use std::sync::atomic::Ordering::SeqCst;
        let (dir, queue) = fresh_queue();
        let calls = 64;
        let tasks: Vec<_> = (0..calls)
            .map(|i| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    queue
                        .record(delivery(&format!("d{i}"), Status::Queued))
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.expect("task").expect("record"), Recorded::New);
        }
        let syncs = queue.shared.journal.syncs.load(SeqCst);
        assert!(
            syncs <= calls / 2,
            "{syncs} journal syncs for {calls} concurrent records: no group commit"
        );
        assert_eq!(
            queue.shared.commit.flushes.load(SeqCst),
            0,
            "a new delivery needs no sled flush"
        );
        drop(queue);
        let reopened = Queue::open_dir(dir.path()).expect("reopen");
        assert_eq!(reopened.pending_len().expect("pending"), calls as usize);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_copies_of_one_id_record_and_queue_it_once() {
        let (_dir, queue) = fresh_queue();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.record(delivery("same", Status::Queued)).await })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            if task.await.expect("task").expect("record") == Recorded::New {
                new += 1;
            }
        }
        assert_eq!(new, 1, "one copy is new, the others duplicates");
        assert_eq!(queue.pending_len().expect("pending"), 1);
        assert_eq!(queue.counts().expect("counts").queued, 1);
    }

    #[tokio::test]
    async fn an_entry_its_record_does_not_name_is_taken_off_and_never_claimed() {
        let (_dir, queue) = fresh_queue();
        queue
            .record(delivery("done", Status::Queued))
            .await
            .expect("record");
        finish(&queue, Status::Done, None).await;
        let mut live = delivery("live", Status::Queued);
        live.received_at_ms = 10;
        queue.record(live).await.expect("record");
        // Entries a crash or a race could leave: one for a delivery that is
        // done, one older than the live entry of a queued delivery.
        let handles = queue.handles().expect("open");
        for (at, id) in [(1u64, "done"), (2, "live")] {
            let key = EntryKey {
                not_before_ms: at,
                seq: 1_000_000 + at,
            };
            handles.pending.insert(key.bytes(), id).expect("insert");
        }
        assert_eq!(queue.pending_len().expect("pending"), 3);
        let claim = queue.next().await.expect("next");
        assert_eq!(claim.ids(), ["live"]);
        assert_eq!(claim.lead().attempts, 0);
        assert_eq!(
            queue.pending_len().expect("pending"),
            1,
            "the stale entries were taken off, the live one stays until settled"
        );
        queue.complete(claim).await.expect("complete");
        assert!(claims_nothing(&queue).await, "done is not run again");
    }

    #[tokio::test]
    async fn a_record_left_without_its_entry_is_queued_by_the_next_copy() {
        let (_dir, queue) = fresh_queue();
        queue
            .record(delivery("half", Status::Queued))
            .await
            .expect("record");
        // As if the process died between the record and its entry.
        let handles = queue.handles().expect("open");
        let entry = queue
            .get("half")
            .expect("get")
            .and_then(|d| d.entry)
            .expect("a queued record names its entry");
        handles.pending.remove(entry.bytes()).expect("remove");
        assert!(claims_nothing(&queue).await);
        // The sender got no answer and sends it again.
        assert_eq!(
            queue
                .record(delivery("half", Status::Queued))
                .await
                .expect("record"),
            Recorded::Duplicate
        );
        let claim = tokio::time::timeout(Duration::from_secs(10), queue.next())
            .await
            .expect("the delivery is queued again")
            .expect("next");
        assert_eq!(claim.ids(), ["half"]);
    }

    /// Counts by state as read from every record.
    fn counted_afresh(queue: &Queue) -> Counts {
        let mut counts = Counts {
            pending: queue.pending_len().expect("pending") as u64,
            ..Counts::default()
        };
        for delivery in queue.list(&Filter::default()).expect("list") {
            counts.add(delivery.bucket(), 1);
        }
        counts
    }

    #[tokio::test]
    async fn counts_are_kept_by_the_writes_not_read_again() {
        let (_dir, queue) = fresh_queue();
        queue
            .record(delivery("first", Status::Queued))
            .await
            .expect("record");
        assert_eq!(queue.counts().expect("counts"), counted_afresh(&queue));
        // Every kind of write after the first count.
        for (id, status) in [("a", Status::Queued), ("b", Status::Ignored)] {
            queue.record(delivery(id, status)).await.expect("record");
        }
        finish(&queue, Status::Failed, Some(FailureKind::Permanent)).await;
        let claim = queue.next().await.expect("next");
        let retried = claim.lead().id.clone();
        queue
            .settle(claim, |_| Some(Duration::ZERO))
            .await
            .expect("retry later");
        let failed = queue
            .list(&Filter {
                failed_only: true,
                repo: None,
            })
            .expect("list");
        assert_eq!(failed.len(), 1);
        assert_eq!(
            queue.retry(&failed[0].id).await.expect("retry"),
            Retried::Requeued
        );
        assert_eq!(
            queue.counts().expect("counts"),
            counted_afresh(&queue),
            "after {retried} was put back for a retry"
        );
        let mut claim = queue.claim(10, same_repo).await.expect("claim");
        queue.start_attempt(&mut claim).await.expect("start");
        for delivery in claim.deliveries_mut() {
            delivery.status = Status::Done;
        }
        queue.complete(claim).await.expect("complete");
        let counts = queue.counts().expect("counts");
        assert_eq!(counts, counted_afresh(&queue));
        // Not read again: a record written behind the queue's back is not
        // counted until the database is opened again.
        queue
            .handles()
            .expect("open")
            .deliveries
            .insert("behind", encode(&delivery("behind", Status::Done)))
            .expect("insert");
        assert_eq!(queue.counts().expect("counts"), counts);
    }

    #[tokio::test]
    async fn what_sled_lost_is_replayed_from_the_journal_at_open() {
        let (dir, queue) = fresh_queue();
        for id in ["a", "b"] {
            queue
                .record(delivery(id, Status::Queued))
                .await
                .expect("record");
        }
        queue
            .record(delivery("c", Status::Ignored))
            .await
            .expect("record");
        // As if sled had not written them before a crash: only the journal
        // has them. And one queued record whose entry never made it.
        let handles = queue.handles().expect("open");
        for id in ["a", "c"] {
            handles.deliveries.remove(id).expect("remove");
        }
        handles.pending.clear().expect("clear");
        handles.db.flush().expect("flush");
        drop(handles);
        drop(queue);
        let reopened = Queue::open_dir(dir.path()).expect("reopen");
        assert_eq!(
            reopened.get("c").expect("get").expect("replayed").status,
            Status::Ignored
        );
        let mut claimed = Vec::new();
        for _ in 0..2 {
            let mut claim = reopened.next().await.expect("next");
            claimed.push(claim.lead().id.clone());
            claim.lead_mut().status = Status::Done;
            reopened.complete(claim).await.expect("complete");
        }
        claimed.sort();
        assert_eq!(claimed, ["a", "b"]);
        assert!(
            reopened.shared.journal.on_disk().expect("files").is_empty(),
            "replayed files are removed once sled is flushed"
        );
        // Replaying again changes nothing that has moved on.
        drop(reopened);
        let again = Queue::open_dir(dir.path()).expect("reopen");
        assert!(claims_nothing(&again).await);
        assert_eq!(
            again.get("a").expect("get").expect("kept").status,
            Status::Done
        );
    }

    /// Take the only due delivery and record `status` (and `failure`) for it.
    async fn finish(queue: &Queue, status: Status, failure: Option<FailureKind>) -> String {
        let mut claimed = queue.next().await.expect("next");
        queue.start_attempt(&mut claimed).await.expect("start");
        claimed.lead_mut().status = status;
        claimed.lead_mut().failure = failure;
        claimed.lead_mut().last_error = failure.map(|_| "remote answered 401".to_string());
        let id = claimed.lead().id.clone();
        queue.complete(claimed).await.expect("complete");
        id
    }

    #[tokio::test]
    async fn a_redelivered_failed_id_is_queued_again_and_nothing_else_is() {
        let (_dir, queue) = fresh_queue();
        queue
            .record(delivery("f", Status::Queued))
            .await
            .expect("record");
        finish(&queue, Status::Failed, Some(FailureKind::Permanent)).await;
        queue
            .record(delivery("d", Status::Queued))
            .await
            .expect("record");
        finish(&queue, Status::Done, None).await;
        queue
            .record(delivery("q", Status::Queued))
            .await
            .expect("record");
        assert_eq!(queue.pending_len().expect("pending"), 1);

        // A plain record (reconciliation) never revives a failed id.
        assert_eq!(
            queue
                .record(delivery("f", Status::Queued))
                .await
                .expect("record"),
            Recorded::Duplicate
        );
        for id in ["d", "q"] {
            assert_eq!(
                queue
                    .record_redelivery(delivery(id, Status::Queued))
                    .await
                    .expect("record"),
                Recorded::Duplicate,
                "{id}"
            );
        }
        assert_eq!(
            queue
                .record_redelivery(delivery("f", Status::Queued))
                .await
                .expect("record"),
            Recorded::Requeued
        );
        assert_eq!(queue.pending_len().expect("pending"), 2);
        let again = queue.get("f").expect("get").expect("recorded");
        assert_eq!((again.status, again.attempts), (Status::Queued, 0));
        assert_eq!(again.last_error.as_deref(), Some("remote answered 401"));
        // Queued now: a second resend is a duplicate.
        assert_eq!(
            queue
                .record_redelivery(delivery("f", Status::Queued))
                .await
                .expect("record"),
            Recorded::Duplicate
        );
    }

    #[tokio::test]
    async fn retry_requeues_only_failed_deliveries_and_counts_tell_them_apart() {
        let (_dir, queue) = fresh_queue();
        for (id, failure) in [
            ("perm", Some(FailureKind::Permanent)),
            ("tried", Some(FailureKind::Transient)),
        ] {
            queue
                .record(delivery(id, Status::Queued))
                .await
                .expect("record");
            assert_eq!(finish(&queue, Status::Failed, failure).await, id);
        }
        queue
            .record(delivery("ok", Status::Queued))
            .await
            .expect("record");
        finish(&queue, Status::Done, None).await;
        queue
            .record(delivery("ign", Status::Ignored))
            .await
            .expect("record");
        let counts = queue.counts().expect("counts");
        assert_eq!(
            counts,
            Counts {
                pending: 0,
                done: 1,
                ignored: 1,
                failed: 2,
                failed_permanent: 1,
                failed_after_retries: 1,
                ..Counts::default()
            }
        );
        let failed: Vec<String> = queue
            .list(&Filter {
                failed_only: true,
                repo: None,
            })
            .expect("list")
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(failed, ["perm", "tried"]);

        assert_eq!(queue.retry("nope").await.expect("retry"), Retried::NotFound);
        assert_eq!(
            queue.retry("ok").await.expect("retry"),
            Retried::NotFailed(Status::Done)
        );
        assert_eq!(queue.retry("perm").await.expect("retry"), Retried::Requeued);
        assert_eq!(
            queue.retry("perm").await.expect("retry"),
            Retried::NotFailed(Status::Queued)
        );
        assert_eq!(queue.retry_all_failed().await.expect("retry"), ["tried"]);
        let counts = queue.counts().expect("counts");
        assert_eq!((counts.pending, counts.retrying, counts.failed), (2, 2, 0));
        assert_eq!(queue.next().await.expect("next").lead().attempts, 0);
    }

    #[tokio::test]
    async fn survives_reopen_and_retries_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let queue = Queue::open_dir(dir.path()).expect("queue");
            queue
                .record(delivery("x", Status::Queued))
                .await
                .expect("record");
        }
        // sled's flusher thread may hold the lock a moment after the drop.
        let start = std::time::Instant::now();
        let queue = loop {
            match Queue::open_dir(dir.path()) {
                Err(_) if start.elapsed().as_secs() < 10 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("reopen"),
            }
        };
        let mut claimed = queue.next().await.expect("claimed");
        assert_eq!(claimed.lead().id, "x");
        claimed.lead_mut().attempts = 1;
        queue
            .retry_later(claimed, Duration::from_millis(50))
            .await
            .expect("retry");
        assert_eq!(queue.pending_len().expect("pending"), 1);
        let mut again = queue.next().await.expect("claimed again");
        assert_eq!(again.lead().attempts, 1);
        again.lead_mut().status = Status::Done;
        queue.complete(again).await.expect("complete");
        assert_eq!(queue.pending_len().expect("pending"), 0);
        assert_eq!(
            queue.get("x").expect("get").expect("present").status,
            Status::Done
        );
    }

    #[tokio::test]
    async fn corrupt_head_entry_never_blocks_the_queue() {
        let (_dir, queue) = fresh_queue();
        let mut bad = delivery("bad", Status::Queued);
        bad.received_at_ms = 1;
        queue.record(bad).await.expect("record");
        queue
            .record(delivery("good", Status::Queued))
            .await
            .expect("record");
        // Corrupt the first record, as a crash or an incompatible upgrade might.
        queue
            .handles()
            .expect("open")
            .deliveries
            .insert("bad", b"{not json".to_vec())
            .expect("insert");
        let claimed = queue.next().await.expect("next");
        assert_eq!(claimed.lead().id, "good");
        assert_eq!(
            queue.pending_len().expect("pending"),
            1,
            "the corrupt entry was taken off"
        );
    }

    #[tokio::test]
    async fn attempts_are_durable_before_the_attempt_runs() {
        let (_dir, queue) = fresh_queue();
        queue
            .record(delivery("x", Status::Queued))
            .await
            .expect("record");
        let mut claimed = queue.next().await.expect("next");
        queue.start_attempt(&mut claimed).await.expect("start");
        // As if the process died now: the attempt is on disk.
        assert_eq!(queue.get("x").expect("get").expect("present").attempts, 1);
    }

    #[tokio::test]
    async fn an_io_error_closes_the_database_and_a_later_call_reopens_it() {
        let (_dir, queue) = fresh_queue();
        queue
            .record(delivery("kept", Status::Queued))
            .await
            .expect("record");
        let failed = queue.handles().expect("open");
        let error = queue.failed(
            &failed,
            sled::Error::Io(std::io::Error::from_raw_os_error(28)),
        );
        assert!(
            error.to_string().contains("No space left on device")
                && error
                    .to_string()
                    .contains(&queue.shared.dir.display().to_string()),
            "{error}"
        );
        drop(failed);
        let closed = queue.get("kept").expect_err("closed for a moment");
        assert!(matches!(closed, QueueError::Closed { .. }), "{closed}");
        // Reopened from disk after the pause, with what was flushed.
        let start = Instant::now();
        let kept = loop {
            match queue.get("kept") {
                Ok(found) => break found,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "not reopened: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        assert_eq!(kept.expect("recorded").status, Status::Queued);
        // A late error from the failed opening does not close the new one.
        let stale = Handles {
            generation: 0,
            ..queue.handles().expect("open")
        };
        let _ = queue.failed(&stale, sled::Error::Io(std::io::Error::other("late")));
        assert_eq!(queue.pending_len().expect("still open"), 1);
        queue
            .record(delivery("after", Status::Queued))
            .await
            .expect("records again");
        assert_eq!(queue.next().await.expect("next").lead().id, "kept");
    }
}
