//! The durable delivery queue, in the embedded sled database.
//!
//! * `deliveries`: delivery id → [`Delivery`] (JSON). The delivery id is the
//!   idempotency key: a second delivery with the same id is acknowledged and
//!   never queued again.
//! * `pending`: `not_before_ms (u64 BE) ‖ seq (u64 BE)` → delivery id. The
//!   worker takes the first entry whose time has come; a retry re-inserts the
//!   entry later in time.
//!
//! Recording and enqueueing happen in one transaction, and the database is
//! flushed before the receiver answers 2xx: an acknowledged delivery survives
//! a crash. Processing is at-least-once; the entry leaves `pending` only after
//! the outcome is recorded.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::Notify;

use crate::event::{Event, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database error: {0}")]
    Db(#[from] sled::Error),
    #[error("the delivery queue at {path} is in use by another `hookvault serve`")]
    InUse { path: std::path::PathBuf },
    #[error("delivery queue at {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: sled::Error,
    },
    #[error("queue record for delivery {id} is corrupt: {source}")]
    Corrupt {
        id: String,
        source: serde_json::Error,
    },
    #[error("queue entry points at delivery {0}, which is not recorded")]
    Dangling(String),
    #[error("queue flush task failed: {0}")]
    Task(String),
}

impl From<TransactionError<QueueError>> for QueueError {
    fn from(e: TransactionError<QueueError>) -> Self {
        match e {
            TransactionError::Abort(inner) => inner,
            TransactionError::Storage(e) => QueueError::Db(e),
        }
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
    pub event: Option<Event>,
    pub snapshot: Option<String>,
}

/// Whether a delivery was new.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
}

/// A delivery taken from the queue, to be completed or retried.
#[derive(Debug)]
pub struct Claimed {
    key: Vec<u8>,
    pub delivery: Delivery,
}

#[derive(Clone)]
pub struct Queue {
    db: sled::Db,
    deliveries: sled::Tree,
    pending: sled::Tree,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

fn pending_key(not_before_ms: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&not_before_ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn encode(delivery: &Delivery) -> Vec<u8> {
    // Serialising plain data with string keys cannot fail.
    serde_json::to_vec(delivery).expect("delivery serialises")
}

impl Queue {
    /// Open (or create) the queue's own database in `dir`
    /// (`<store.path>/queue`). Only one process may hold it.
    pub fn open_dir(dir: &std::path::Path) -> Result<Self, QueueError> {
        let db = sled::Config::new().path(dir).open().map_err(|source| {
            let in_use = matches!(&source, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                || source.to_string().contains("lock");
            if in_use {
                QueueError::InUse {
                    path: dir.to_path_buf(),
                }
            } else {
                QueueError::Open {
                    path: dir.to_path_buf(),
                    source,
                }
            }
        })?;
        Self::open(&db)
    }

    /// Make everything recorded durable (at shutdown).
    pub fn flush_now(&self) -> Result<(), QueueError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn open(db: &sled::Db) -> Result<Self, QueueError> {
        Ok(Self {
            db: db.clone(),
            deliveries: db.open_tree("deliveries")?,
            pending: db.open_tree("pending")?,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Make everything written so far durable. sled's synchronous flush
    /// on tokio's blocking pool (sled's own `flush_async` pool is avoided).
    async fn flush(&self) -> Result<(), QueueError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| QueueError::Task(e.to_string()))??;
        Ok(())
    }

    /// Record a delivery; queue it when `delivery.status` is `Queued`.
    /// Durable (flushed) when this returns.
    pub async fn record(&self, delivery: Delivery) -> Result<Recorded, QueueError> {
        let seq = self.db.generate_id()?;
        let value = encode(&delivery);
        let queued = delivery.status == Status::Queued;
        let id = delivery.id.clone();
        let result = (&self.deliveries, &self.pending).transaction(|(deliveries, pending)| {
            if deliveries.get(id.as_bytes())?.is_some() {
                return Ok(Recorded::Duplicate);
            }
            deliveries.insert(id.as_bytes(), value.as_slice())?;
            if queued {
                pending.insert(pending_key(delivery.received_at_ms, seq), id.as_bytes())?;
            }
            Ok::<_, ConflictableTransactionError<QueueError>>(Recorded::New)
        });
        let recorded = result?;
        // Also for a duplicate: the first copy may still be on its way to
        // disk, and a 2xx promises it is there.
        self.flush().await?;
        if recorded == Recorded::New && queued {
            self.wake.notify_one();
        }
        Ok(recorded)
    }

    pub fn get(&self, id: &str) -> Result<Option<Delivery>, QueueError> {
        match self.deliveries.get(id.as_bytes())? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| QueueError::Corrupt {
                        id: id.to_string(),
                        source,
                    })
            }
        }
    }

    /// Number of deliveries waiting (including ones waiting for a retry).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Wait for the next delivery whose time has come. An entry whose
    /// record is missing or unreadable is taken off the queue (and logged),
    /// so it can never block the deliveries behind it.
    pub async fn next(&self) -> Result<Claimed, QueueError> {
        loop {
            let notified = self.wake.notified();
            if let Some((key, id)) = self.pending.first()? {
                let mut not_before = [0u8; 8];
                not_before.copy_from_slice(&key[..8]);
                let not_before = u64::from_be_bytes(not_before);
                let now = now_ms();
                if not_before <= now {
                    let id = String::from_utf8_lossy(&id).into_owned();
                    match self.get(&id) {
                        Ok(Some(delivery)) => {
                            return Ok(Claimed {
                                key: key.to_vec(),
                                delivery,
                            });
                        }
                        Ok(None) => {
                            tracing::error!(delivery_id = %id, "queue entry without a record; dropped");
                        }
                        Err(e) => {
                            tracing::error!(delivery_id = %id, error = %e, "unreadable delivery; taken off the queue");
                        }
                    }
                    self.pending.remove(&key)?;
                    self.flush().await?;
                    continue;
                }
                let wait = Duration::from_millis(not_before - now);
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            } else {
                notified.await;
            }
        }
    }

    /// Count an attempt durably before it starts, so a delivery that
    /// crashes the process still reaches `max_attempts`.
    pub async fn start_attempt(&self, claimed: &mut Claimed) -> Result<(), QueueError> {
        claimed.delivery.attempts += 1;
        self.deliveries
            .insert(claimed.delivery.id.as_bytes(), encode(&claimed.delivery))?;
        self.flush().await
    }

    /// Record the outcome and take the delivery off the queue, atomically.
    pub async fn complete(&self, claimed: Claimed) -> Result<(), QueueError> {
        let value = encode(&claimed.delivery);
        let id = claimed.delivery.id.clone();
        (&self.deliveries, &self.pending).transaction(|(deliveries, pending)| {
            deliveries.insert(id.as_bytes(), value.as_slice())?;
            pending.remove(claimed.key.as_slice())?;
            Ok::<_, ConflictableTransactionError<QueueError>>(())
        })?;
        self.flush().await?;
        Ok(())
    }

    /// Put the delivery back, not to be tried before `delay` has passed.
    pub async fn retry_later(&self, claimed: Claimed, delay: Duration) -> Result<(), QueueError> {
        let seq = self.db.generate_id()?;
        let not_before =
            now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let new_key = pending_key(not_before, seq);
        let value = encode(&claimed.delivery);
        let id = claimed.delivery.id.clone();
        (&self.deliveries, &self.pending).transaction(|(deliveries, pending)| {
            deliveries.insert(id.as_bytes(), value.as_slice())?;
            pending.remove(claimed.key.as_slice())?;
            pending.insert(new_key.as_slice(), id.as_bytes())?;
            Ok::<_, ConflictableTransactionError<QueueError>>(())
        })?;
        self.flush().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue in a new temporary database (kept alive by the directory).
    fn fresh_queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("db");
        let queue = Queue::open(&db).expect("queue");
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
            event: None,
            snapshot: None,
        }
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
        assert_eq!(queue.pending_len(), 1);
        assert_eq!(
            queue
                .record(delivery("b", Status::Ignored))
                .await
                .expect("record"),
            Recorded::New
        );
        assert_eq!(queue.pending_len(), 1, "ignored deliveries are not queued");
    }

    #[tokio::test]
    async fn survives_reopen_and_retries_later() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path()).expect("db");
            let queue = Queue::open(&db).expect("queue");
            queue
                .record(delivery("x", Status::Queued))
                .await
                .expect("record");
        }
        // sled's flusher thread may hold the lock a moment after the drop.
        let start = std::time::Instant::now();
        let db = loop {
            match sled::open(dir.path()) {
                Err(_) if start.elapsed().as_secs() < 10 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("reopen"),
            }
        };
        let queue = Queue::open(&db).expect("queue");
        let mut claimed = queue.next().await.expect("claimed");
        assert_eq!(claimed.delivery.id, "x");
        claimed.delivery.attempts = 1;
        queue
            .retry_later(claimed, Duration::from_millis(50))
            .await
            .expect("retry");
        assert_eq!(queue.pending_len(), 1);
        let mut again = queue.next().await.expect("claimed again");
        assert_eq!(again.delivery.attempts, 1);
        again.delivery.status = Status::Done;
        queue.complete(again).await.expect("complete");
        assert_eq!(queue.pending_len(), 0);
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
            .deliveries
            .insert("bad", b"{not json".to_vec())
            .expect("insert");
        let claimed = queue.next().await.expect("next");
        assert_eq!(claimed.delivery.id, "good");
        assert_eq!(queue.pending_len(), 1, "the corrupt entry was taken off");
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
}
