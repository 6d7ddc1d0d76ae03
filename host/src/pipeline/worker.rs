//! The workers: `worker.concurrency` of them take deliveries from the
//! queue, run the filter plugins, then the backup plugins, and record the
//! outcome. The queue hands each repository to one worker at a time, so a
//! hung remote holds one worker and never two backups of one repository
//! run at once. A backup fetches the remote's whole current state, so a
//! worker takes the repository's other due pushes (and reconcile events)
//! with the one it claims and one backup answers them all: each delivery
//! keeps its record and names the snapshot (only without filter plugins,
//! which may decide by who pushed). Each failure carries its
//! [`FailureKind`] from where it happened: a transient one is retried with
//! exponential backoff and after `max_attempts` the delivery is
//! dead-lettered (status `failed`, kept with its last error); a permanent
//! one (a refused token, no such repository, an invalid plugin config)
//! fails at once; a full disk is waited out without counting.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::WorkerConfig;
use crate::event::{Event, EventKind, RefChange};
use crate::failure::{Classify, Failure, FailureKind};
use crate::git::Remote;
use crate::pipeline::queue::{Claim, Delivery, Queue, QueueError, Status};
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

/// The most deliveries one backup answers at once.
const COALESCE_MAX: usize = 64;

/// A failure of a step, with the kind the step's error gives it.
fn failure<E: Classify>(error: E) -> Failure {
    Failure::new(error.kind(), error.to_string())
}

/// A plugin's failure, with the kind the plugin error gives it.
fn plugin_failure(error: crate::plugins::PluginError) -> Failure {
    Failure::new(error.kind(), error.to_string())
}

/// Whether `other` is answered by the backup run for `lead`: both are git
/// events (a push or a reconcile difference) of one repository from one
/// source. The backup fetches the remote's whole state, so the later event
/// adds nothing a separate fetch would find.
fn answered_together(lead: &Delivery, other: &Delivery) -> bool {
    let git_event = |e: &Event| matches!(e.kind, EventKind::Push | EventKind::Reconcile);
    match (&lead.event, &other.event) {
        (Some(a), Some(b)) => {
            git_event(a) && git_event(b) && a.source == b.source && a.repository == b.repository
        }
        _ => false,
    }
}

/// The lead's event carrying the ref changes of every event of the claim,
/// in order: a ref's first old target, its last new target, forced if any
/// push forced it.
fn merged_event(events: &[&Event]) -> Option<Event> {
    let (lead, rest) = events.split_first()?;
    let mut merged = (*lead).clone();
    for event in rest {
        for change in &event.changes {
            match merged.changes.iter_mut().find(|c| c.name == change.name) {
                Some(known) => {
                    *known = RefChange {
                        old_target: known.old_target.clone(),
                        forced: known.forced || change.forced,
                        ..change.clone()
                    };
                }
                None => merged.changes.push(change.clone()),
            }
        }
    }
    Some(merged)
}

pub struct Worker {
    pub queue: Queue,
    pub plugins: Arc<PluginHost>,
    pub deps: Arc<BackupDeps>,
    pub config: WorkerConfig,
    /// Held for each backup, so a scheduled prune never runs beside one.
    pub gate: crate::maintenance::Gate,
    /// Told of every delivery that failed for good.
    pub alerts: crate::alerts::Alerts,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Run `worker.concurrency` workers until `shutdown` turns true; each
    /// finishes the delivery in progress first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), WorkerError> {
        let count = self.config.concurrency.max(1);
        info!(workers = count, "workers started");
        let this = Arc::new(self);
        let mut workers = tokio::task::JoinSet::new();
        for slot in 0..count {
            workers.spawn(this.clone().run_one(slot, shutdown.clone()));
        }
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "a worker stopped unexpectedly");
            }
        }
        Ok(())
    }

    /// One worker. A queue error is logged and retried after a pause: a
    /// worker never stops while the service runs.
    async fn run_one(self: Arc<Self>, slot: u32, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.run_until_error(&mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    error!(worker = slot, error = %e, "worker: queue error; retrying in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                }
            }
        }
    }

    async fn run_until_error(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        // Filters may decide by who pushed or by the event's key: with
        // filters, every delivery is shown to them on its own.
        let max = if self.plugins.filters.is_empty() {
            COALESCE_MAX
        } else {
            1
        };
        loop {
            let mut claim = tokio::select! {
                claim = self.queue.claim(max, answered_together) => claim?,
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
            };
            let lead = claim.lead();
            let span = info_span!(
                "backup",
                delivery_id = %lead.id,
                repo = lead.event.as_ref().map(|e| e.repository.to_string()).unwrap_or_default(),
                attempt = lead.attempts + 1,
            );
            if lead.event.is_none() {
                for delivery in claim.deliveries_mut() {
                    delivery.status = Status::Ignored;
                }
                self.queue.complete(claim).await?;
                continue;
            }
            self.queue.start_attempt(&mut claim).await?;
            let events: Vec<&Event> = claim
                .deliveries()
                .filter_map(|d| d.event.as_ref())
                .collect();
            let Some(event) = merged_event(&events) else {
                continue;
            };
            if claim.len() > 1 {
                let _entered = span.enter();
                info!(
                    coalesced = ?&claim.ids()[1..],
                    "later deliveries of the repository answered by this backup"
                );
            }
            let ids: Vec<String> = claim.deliveries().map(|d| d.id.clone()).collect();
            let started = std::time::Instant::now();
            let result = self.process(event, ids).instrument(span.clone()).await;
            crate::metrics::global().backup_finished(
                match &result {
                    Ok(Outcome::Skipped(_)) => crate::metrics::BackupOutcome::Skipped,
                    Ok(Outcome::Done(_)) => crate::metrics::BackupOutcome::Done,
                    Err(failure) => crate::metrics::BackupOutcome::Failed(failure.kind),
                },
                started.elapsed(),
            );
            self.record(claim, result).instrument(span).await?;
        }
    }

    /// Record what the backup came to for every delivery it answered.
    async fn record(
        &self,
        mut claim: Claim,
        result: Result<Outcome, Failure>,
    ) -> Result<(), WorkerError> {
        match result {
            Ok(Outcome::Skipped(reason)) => {
                info!(%reason, "skipped by a filter");
                for delivery in claim.deliveries_mut() {
                    delivery.status = Status::Skipped;
                    delivery.last_error = None;
                    delivery.failure = None;
                }
                self.queue.complete(claim).await?;
            }
            Ok(Outcome::Done(snapshot)) => {
                info!(
                    snapshot = snapshot.as_deref().unwrap_or("none"),
                    deliveries = claim.len(),
                    "backup done"
                );
                for delivery in claim.deliveries_mut() {
                    delivery.status = Status::Done;
                    delivery.snapshot = snapshot.clone();
                    delivery.last_error = None;
                    delivery.failure = None;
                }
                self.queue.complete(claim).await?;
            }
            Err(Failure {
                kind: FailureKind::NoSpace,
                message,
            }) => {
                // Not the delivery's fault: it waits for space however
                // long that takes, so a full disk never dead-letters.
                let delay = Duration::from_millis(
                    self.config
                        .retry_base_ms
                        .saturating_mul(8)
                        .min(NO_SPACE_RETRY_MAX_MS),
                );
                warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "backup failed: no space left; will retry without counting an attempt");
                for delivery in claim.deliveries_mut() {
                    delivery.attempts = delivery.attempts.saturating_sub(1);
                    delivery.last_error = Some(message.clone());
                    delivery.failure = Some(FailureKind::NoSpace);
                }
                self.queue.retry_later(claim, delay).await?;
            }
            Err(Failure {
                kind: FailureKind::Permanent,
                message,
            }) => {
                error!(error = %message, "backup failed; trying again cannot help, so it is not retried");
                for delivery in claim.deliveries_mut() {
                    delivery.status = Status::Failed;
                    delivery.last_error = Some(message.clone());
                    delivery.failure = Some(FailureKind::Permanent);
                    self.alert_failed(delivery, &message);
                }
                self.queue.complete(claim).await?;
            }
            Err(Failure { kind, message }) => {
                // Each delivery keeps its own count: one that has had its
                // attempts is dead-lettered, the others wait their backoff.
                let max_attempts = self.config.max_attempts;
                let base = self.config.retry_base_ms;
                for delivery in claim.deliveries_mut() {
                    delivery.last_error = Some(message.clone());
                    delivery.failure = Some(kind);
                    if delivery.attempts >= max_attempts {
                        delivery.status = Status::Failed;
                        error!(delivery_id = %delivery.id, error = %message, "backup failed for good; dead-lettered");
                        self.alert_failed(delivery, &message);
                    } else {
                        warn!(delivery_id = %delivery.id, error = %message, retry_in_ms = backoff(base, delivery.attempts).as_millis() as u64, "backup failed; will retry");
                    }
                }
                self.queue
                    .settle(claim, |delivery| {
                        (delivery.status == Status::Queued)
                            .then(|| backoff(base, delivery.attempts))
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Tell the operator that `delivery` failed for good.
    fn alert_failed(&self, delivery: &Delivery, error: &str) {
        let repository = delivery.repository().map(|r| r.to_string());
        let what = repository.as_deref().unwrap_or("a repository");
        let mut alert = crate::alerts::Alert::from_host(
            crate::alerts::Severity::Critical,
            format!("backup of {what} failed for good"),
            format!(
                "{error}. Delivery {} is marked failed after {} attempt{}; once the cause is fixed, `hookvault events retry {}` runs it again.",
                delivery.id,
                delivery.attempts,
                if delivery.attempts == 1 { "" } else { "s" },
                delivery.id
            ),
        );
        alert.repository = repository;
        alert.delivery_id = Some(delivery.id.clone());
        alert.labels = vec![("attempts".into(), delivery.attempts.to_string())];
        self.alerts.raise(alert);
    }

    /// Run the pipeline for `event`, which answers the deliveries `ids`.
    async fn process(&self, event: Event, ids: Vec<String>) -> Result<Outcome, Failure> {
        let plugins = self.plugins.clone();
        let deps = self.deps.clone();
        let span = tracing::Span::current();
        let _backup = self.gate.backup().await;
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let outcome = run_pipeline(&plugins, deps.clone(), &event, &ids);
            // Also after a failure: damage can be why it failed.
            if !matches!(outcome, Ok(Outcome::Skipped(_))) {
                crate::repair::after_backup(&deps, &event.repository);
            }
            outcome
        })
        .await
        .map_err(|e| Failure::transient(format!("backup task panicked: {e}")))?
    }
}

/// The pause before attempt `attempts + 1`: `base` doubled per attempt
/// made after the first.
fn backoff(base_ms: u64, attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    Duration::from_millis(base_ms.saturating_mul(1u64 << exponent))
}

/// Filters, then backups, for one event answering the deliveries `ids`.
/// Blocking.
fn run_pipeline(
    plugins: &PluginHost,
    deps: Arc<BackupDeps>,
    event: &Event,
    ids: &[String],
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
        // new. The records still name the snapshot the deliveries made.
        last_snapshot = deps
            .store
            .latest_snapshot(&narrowed.repository)
            .map_err(failure)?
            .filter(|s| ids.contains(&s.body.delivery_id))
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
