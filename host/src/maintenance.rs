//! Retention inside `serve`: every `retention.interval_secs`, forget what
//! the configured policy does not keep, then prune (recompressing, with
//! `retention.recompress_level`). Nothing here is
//! reachable from the webhook path or from a plugin: the schedule is the
//! only caller, and it runs in the service's own task.
//!
//! Prune must not run beside a backup: a backup stops its walk at objects
//! the vault holds and commits a snapshot that relies on them, so an object
//! pruned in between would be missing from that snapshot. The [`Gate`]
//! keeps them apart: each backup holds it shared, a run holds it alone.
//! While a run waits for the gate, new backups wait behind it (tokio's
//! lock is fair); deliveries are still received and queued.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{RwLock, watch};
use tracing::{Instrument, error, info, info_span};

use crate::config::RetentionConfig;
use crate::prune::{Live, PruneError};
use crate::retention;
use crate::vault::prune::{PruneOptions, PruneReport};
use crate::vault::{Vault, VaultError};

/// Backups share it; a retention run holds it alone.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<RwLock<()>>);

impl Gate {
    /// Held for the whole of one backup.
    pub async fn backup(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.0.read().await
    }

    async fn exclusive(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.0.write().await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error("retention: forget: {0}")]
    Forget(#[source] VaultError),
    #[error("retention: {0}")]
    Prune(#[source] PruneError),
    #[error("retention task: {0}")]
    Task(String),
}

/// What one run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub forgotten: usize,
    pub pruned: Option<(Live, PruneReport)>,
}

/// Forget, then prune, once (the caller holds the gate).
pub fn run_once(
    vault: &Vault,
    config: &RetentionConfig,
    now_ms: u64,
) -> Result<RunReport, MaintenanceError> {
    let policy = config.policy();
    let mut report = RunReport::default();
    if !policy.is_empty() {
        let plans = retention::plan(vault, &policy, None).map_err(MaintenanceError::Forget)?;
        if plans.iter().any(|p| p.forgotten().next().is_some()) {
            report.forgotten = retention::forget(vault, &plans, &policy, now_ms)
                .map_err(MaintenanceError::Forget)?;
        }
    }
    if config.prune {
        let options = PruneOptions {
            max_unused_percent: config.max_unused_percent,
            dry_run: false,
            recompress_level: config.recompress_level,
        };
        report.pruned = Some(
            crate::prune::prune(vault, options, &crate::progress::quiet)
                .map_err(MaintenanceError::Prune)?,
        );
    }
    Ok(report)
}

/// Run every `interval_secs` until `shutdown` turns true. A failed run is
/// logged and tried again at the next interval; it never stops the service.
pub async fn run_schedule(
    vault: Vault,
    config: RetentionConfig,
    gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs(config.interval_secs.max(1));
    info!(
        interval_secs = interval.as_secs(),
        policy = %config.policy().describe(),
        prune = config.prune,
        "retention scheduled"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let run = async {
            let held = tokio::select! {
                held = gate.exclusive() => held,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            let started = std::time::Instant::now();
            let (v, c) = (vault.clone(), config.clone());
            let span = tracing::Span::current();
            let outcome = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                run_once(&v, &c, crate::event::now_ms())
            })
            .await
            .map_err(|e| MaintenanceError::Task(e.to_string()))
            .and_then(|r| r);
            drop(held);
            match outcome {
                Ok(report) => {
                    let (records_kept, records_recompressed, bytes_reclaimed) = report
                        .pruned
                        .as_ref()
                        .map(|(_, p)| (p.records_kept, p.records_recompressed, p.bytes_reclaimed))
                        .unwrap_or_default();
                    info!(
                        forgotten = report.forgotten,
                        records_kept,
                        records_recompressed,
                        bytes_reclaimed,
                        ms = started.elapsed().as_millis() as u64,
                        "retention run done"
                    );
                }
                Err(e) => {
                    error!(error = %e, "retention run failed; trying again at the next interval")
                }
            }
        };
        run.instrument(info_span!("retention")).await;
    }
}
