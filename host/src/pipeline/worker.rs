//! The worker: takes deliveries from the queue one at a time, runs the
//! filter plugins, then the backup plugins, and records the outcome. Each
//! failure carries its [`FailureKind`] from where it happened: a transient
//! one is retried with exponential backoff and after `max_attempts` the
//! delivery is dead-lettered (status `failed`, kept with its last error); a
//! permanent one (a refused token, no such repository, an invalid plugin
//! config) fails at once; a full disk is waited out without counting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::WorkerConfig;
use crate::event::{Event, EventKind};
use crate::failure::{Classify, Failure, FailureKind};
use crate::git::Remote;
use crate::pipeline::queue::{Queue, QueueError, Status};
use crate::plugins::{BackupDeps, Decision, PluginHost};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What one delivery came to.
#[derive(Debug)]
enum Outcome {
    Skipped(String),
    Done(Option<String>),
}

/// The longest pause between retries of a backup that failed for lack of
/// space.
const NO_SPACE_RETRY_MAX_MS: u64 = 60_000;

/// A failure of a step, with the kind the step's error gives it.
fn failure<E: Classify>(error: E) -> Failure {
    Failure::new(error.kind(), error.to_string())
}

/// A plugin's failure, with the kind the plugin error gives it.
fn plugin_failure(error: crate::plugins::PluginError) -> Failure {
    Failure::new(error.kind(), error.to_string())
}

pub struct Worker {
    pub queue: Queue,
    pub plugins: Arc<PluginHost>,
    pub deps: Arc<BackupDeps>,
    pub config: WorkerConfig,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Process deliveries until `shutdown` turns true. The delivery in
    /// progress is finished first. A queue error is logged and retried after
    /// a pause: the worker never stops while the service runs.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        loop {
            match self.run_until_error(&mut shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    error!(error = %e, "worker: queue error; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                    }
                }
            }
        }
    }

    async fn run_until_error(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        loop {
            let claimed = tokio::select! {
                claimed = self.queue.next() => claimed?,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            };
            let mut claimed = claimed;
            let delivery = &mut claimed.delivery;
            let span = info_span!(
                "backup",
                delivery_id = %delivery.id,
                repo = delivery.event.as_ref().map(|e| e.repository.to_string()).unwrap_or_default(),
                attempt = delivery.attempts + 1,
            );
            let Some(event) = delivery.event.clone() else {
                delivery.status = Status::Ignored;
                self.queue.complete(claimed).await?;
                continue;
            };
            self.queue.start_attempt(&mut claimed).await?;
            let delivery = &mut claimed.delivery;
            let started = std::time::Instant::now();
            let result = self.process(event).instrument(span.clone()).await;
            crate::metrics::global().backup_finished(
                match &result {
                    Ok(Outcome::Skipped(_)) => crate::metrics::BackupOutcome::Skipped,
                    Ok(Outcome::Done(_)) => crate::metrics::BackupOutcome::Done,
                    Err(failure) => crate::metrics::BackupOutcome::Failed(failure.kind),
                },
                started.elapsed(),
            );
            let _entered = span.enter();
            match result {
                Ok(Outcome::Skipped(reason)) => {
                    info!(%reason, "skipped by a filter");
                    delivery.status = Status::Skipped;
                    delivery.last_error = None;
                    delivery.failure = None;
                    drop(_entered);
                    self.queue.complete(claimed).await?;
                }
                Ok(Outcome::Done(snapshot)) => {
                    info!(
                        snapshot = snapshot.as_deref().unwrap_or("none"),
                        "backup done"
                    );
                    delivery.status = Status::Done;
                    delivery.snapshot = snapshot;
                    delivery.last_error = None;
                    delivery.failure = None;
                    drop(_entered);
                    self.queue.complete(claimed).await?;
                }
                Err(Failure {
                    kind: FailureKind::NoSpace,
                    message,
                }) => {
                    // Not the delivery's fault: it waits for space however
                    // long that takes, so a full disk never dead-letters.
                    delivery.attempts = delivery.attempts.saturating_sub(1);
                    let delay = Duration::from_millis(
                        self.config
                            .retry_base_ms
                            .saturating_mul(8)
                            .min(NO_SPACE_RETRY_MAX_MS),
                    );
                    warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "backup failed: no space left; will retry without counting an attempt");
                    delivery.last_error = Some(message);
                    delivery.failure = Some(FailureKind::NoSpace);
                    drop(_entered);
                    self.queue.retry_later(claimed, delay).await?;
                }
                Err(Failure {
                    kind: FailureKind::Permanent,
                    message,
                }) => {
                    error!(error = %message, "backup failed; trying again cannot help, so it is not retried");
                    delivery.status = Status::Failed;
                    delivery.last_error = Some(message);
                    delivery.failure = Some(FailureKind::Permanent);
                    drop(_entered);
                    self.queue.complete(claimed).await?;
                }
                Err(Failure { kind, message }) if delivery.attempts >= self.config.max_attempts => {
                    error!(error = %message, "backup failed for good; dead-lettered");
                    delivery.status = Status::Failed;
                    delivery.last_error = Some(message);
                    delivery.failure = Some(kind);
                    drop(_entered);
                    self.queue.complete(claimed).await?;
                }
                Err(Failure { kind, message }) => {
                    let exponent = delivery.attempts.saturating_sub(1).min(16);
                    let delay = Duration::from_millis(
                        self.config.retry_base_ms.saturating_mul(1u64 << exponent),
                    );
                    warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "backup failed; will retry");
                    delivery.last_error = Some(message);
                    delivery.failure = Some(kind);
                    drop(_entered);
                    self.queue.retry_later(claimed, delay).await?;
                }
            }
        }
    }

    async fn process(&self, event: Event) -> Result<Outcome, Failure> {
        let plugins = self.plugins.clone();
        let deps = self.deps.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            run_pipeline(&plugins, deps, &event)
        })
        .await
        .map_err(|e| Failure::transient(format!("backup task panicked: {e}")))?
    }
}

/// Filters, then backups, for one event. Blocking.
fn run_pipeline(
    plugins: &PluginHost,
    deps: Arc<BackupDeps>,
    event: &Event,
) -> Result<Outcome, Failure> {
    // Filters decide per ref. So that a ref they exclude stays excluded on
    // every later event (not only on the push that named it), they are shown
    // the repository's real changes since its latest snapshot.
    let truthful;
    let event = if !plugins.filters.is_empty()
        && matches!(
            event.kind,
            EventKind::Push | EventKind::Repository | EventKind::Reconcile
        ) {
        truthful = with_real_changes(&deps, event)?;
        &truthful
    } else {
        event
    };
    let mut selected: Option<Vec<String>> = None;
    for filter in &plugins.filters {
        match filter.run(event).map_err(plugin_failure)? {
            Decision::Keep => {}
            Decision::Skip(reason) => {
                return Ok(Outcome::Skipped(format!("{}: {reason}", filter.name())));
            }
            Decision::Refs(refs) => {
                selected = Some(match selected {
                    None => refs,
                    Some(prev) => prev.into_iter().filter(|r| refs.contains(r)).collect(),
                });
            }
        }
    }
    let excluded: Vec<String> = match &selected {
        None => Vec::new(),
        Some(keep) => event
            .changes
            .iter()
            .map(|c| c.name.to_string())
            .filter(|name| !keep.contains(name))
            .collect(),
    };
    if selected.is_some() && excluded.len() == event.changes.len() && !event.changes.is_empty() {
        return Ok(Outcome::Skipped(
            "filters selected none of the changed refs".into(),
        ));
    }
    let mut narrowed = event.clone();
    narrowed
        .changes
        .retain(|c| !excluded.iter().any(|name| c.name == name.as_str()));
    match event.kind {
        EventKind::Push | EventKind::Repository | EventKind::Reconcile => {}
        EventKind::RepositoryDeleted => {
            info!("repository deleted upstream; its snapshots are kept");
            return Ok(Outcome::Done(None));
        }
        EventKind::PullRequest | EventKind::Comment => {
            return run_metadata(plugins, deps, &narrowed);
        }
    }
    let mut last_snapshot = None;
    for backup in &plugins.backups {
        let outcome = backup
            .run(deps.clone(), &narrowed, &excluded)
            .map_err(plugin_failure)?;
        if let Some(snapshot) = outcome.snapshot {
            info!(
                plugin = backup.name(),
                snapshot = %snapshot.id,
                written = outcome.stats.written,
                present = outcome.stats.present,
                stored_bytes = outcome.stats.stored_bytes,
                "snapshot committed"
            );
            last_snapshot = Some(snapshot.id.to_string());
        }
    }
    if last_snapshot.is_none() {
        // An earlier attempt may have committed this delivery's snapshot and
        // died before recording the outcome; the retry then finds nothing
        // new. The record still names the snapshot the delivery made.
        last_snapshot = deps
            .store
            .latest_snapshot(&narrowed.repository)
            .map_err(failure)?
            .filter(|s| s.body.delivery_id == narrowed.delivery_id)
            .map(|s| s.id.to_string());
    }
    Ok(Outcome::Done(last_snapshot))
}

/// Pull-request and comment events go to the metadata plugins.
fn run_metadata(
    plugins: &PluginHost,
    deps: Arc<BackupDeps>,
    event: &Event,
) -> Result<Outcome, Failure> {
    let mut versions = Vec::new();
    for plugin in &plugins.metadata {
        let written = plugin.run(deps.clone(), event).map_err(plugin_failure)?;
        info!(
            plugin = plugin.name(),
            documents = written.len(),
            "metadata stored"
        );
        versions.extend(written);
    }
    if plugins.metadata.is_empty() {
        info!("no metadata plugin configured; event recorded only");
    }
    Ok(Outcome::Done(versions.pop()))
}

/// The event with `changes` replaced by every difference between the
/// repository's latest snapshot and the remote now (`ls-remote`); the
/// `forced` flags Bitbucket reported are kept.
fn with_real_changes(deps: &BackupDeps, event: &Event) -> Result<Event, Failure> {
    let source = deps.sources.get(&event.source).ok_or_else(|| {
        Failure::new(
            FailureKind::Permanent,
            format!("source {:?} is not configured", event.source),
        )
    })?;
    let remote = Remote::new(
        &event.repository,
        source.config.clone_url(&event.repository),
        source.authorization.clone(),
    )
    .ls_remote()
    .map_err(failure)?;
    let snapshot_refs: std::collections::BTreeMap<String, String> = deps
        .store
        .latest_refs(&event.repository)
        .map_err(failure)?
        .unwrap_or_default()
        .into_iter()
        .map(|(name, target)| (name, target.to_hex()))
        .collect();
    let mut changes = crate::pipeline::reconcile::diff(&snapshot_refs, &remote);
    for change in &mut changes {
        change.forced = event
            .changes
            .iter()
            .any(|c| c.name == change.name && c.forced);
    }
    let mut real = event.clone();
    real.changes = changes;
    Ok(real)
}
