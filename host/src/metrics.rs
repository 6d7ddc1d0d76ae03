//! The service's metrics, for `GET /metrics` (OpenMetrics text, which
//! Prometheus scrapes). This module owns every metric's name and labels.
//!
//! Two kinds:
//! - events counted as they happen, in one process-wide [`Metrics`]
//!   ([`global`]): webhooks rejected by reason and accepted by answer,
//!   backup attempts by outcome and their duration. They start at zero
//!   with every label value present, and restart at zero with the process.
//! - state read from the queue and the vault at each scrape ([`render`]):
//!   deliveries by status, the queue's depth, and per repository the time
//!   of its latest snapshot and how long its oldest waiting delivery has
//!   waited. Reading the queue reads every delivery record, as
//!   `/api/v1/stats` does.
//!
//! Label values are fixed words or validated [`RepoName`]s; nothing from a
//! payload's text and no secret is ever a label.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::failure::FailureKind;
use crate::ids::RepoName;
use crate::pipeline::queue::{Queue, QueueError, Status};
use crate::vault::{Vault, VaultError};

/// The `Content-Type` of [`render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric's name starts with this (and `_`).
const PREFIX: &str = "hookvault";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("cannot encode the metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Why the receiver refused a webhook (`reason` of
/// `hookvault_webhook_rejections_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// 401: no signature, or one that matches no secret.
    BadSignature,
    /// 400: a header or the body is not a delivery hookvault understands.
    Malformed,
    /// 413: the body exceeds `server.max_body_bytes`.
    TooLarge,
    /// 403: the client's address is not in the source's `allow_ips`.
    NotAllowed,
    /// 404: the URL names no configured source.
    UnknownSource,
    /// 408: the body stalled longer than `server.body_read_timeout_secs`.
    BodyTimeout,
    /// 503: not answered within `server.request_timeout_secs`.
    RequestTimeout,
    /// 503: the queue could not record the delivery (a full disk, an IO
    /// error).
    CannotRecord,
}

impl Rejection {
    const ALL: [Self; 8] = [
        Self::BadSignature,
        Self::Malformed,
        Self::TooLarge,
        Self::NotAllowed,
        Self::UnknownSource,
        Self::BodyTimeout,
        Self::RequestTimeout,
        Self::CannotRecord,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::NotAllowed => "not_allowed",
            Self::UnknownSource => "unknown_source",
            Self::BodyTimeout => "body_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::CannotRecord => "cannot_record",
        }
    }
}

/// How the receiver acknowledged a webhook (`answer` of
/// `hookvault_webhooks_accepted_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// 202: recorded and queued for a backup.
    Queued,
    /// 202: recorded and not acted on (an unknown event key).
    Ignored,
    /// 202: a failed delivery's id sent again, queued again.
    Requeued,
    /// 200: a known delivery id, not queued again.
    Duplicate,
}

impl Accepted {
    const ALL: [Self; 4] = [Self::Queued, Self::Ignored, Self::Requeued, Self::Duplicate];

    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Ignored => "ignored",
            Self::Requeued => "requeued",
            Self::Duplicate => "duplicate",
        }
    }
}

/// What one backup attempt came to (`outcome` of `hookvault_backups_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BackupOutcome {
    /// Backed up (a snapshot written, or nothing had changed).
    Done,
    /// A filter skipped the delivery.
    Skipped,
    /// The attempt failed, with the failure's kind.
    Failed(FailureKind),
}

impl BackupOutcome {
    const ALL: [Self; 5] = [
        Self::Done,
        Self::Skipped,
        Self::Failed(FailureKind::Transient),
        Self::Failed(FailureKind::Permanent),
        Self::Failed(FailureKind::NoSpace),
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::Failed(FailureKind::Transient) => "failed_transient",
            Self::Failed(FailureKind::Permanent) => "failed_permanent",
            Self::Failed(FailureKind::NoSpace) => "failed_no_space",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabel {
    answer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepositoryLabel {
    repository: String,
}

/// The counted events of one process.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    rejections: Family<ReasonLabel, Counter>,
    accepted: Family<AnswerLabel, Counter>,
    backups: Family<OutcomeLabel, Counter>,
    backup_duration: Histogram,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics: what the receiver and the worker count into.
pub(crate) fn global() -> &'static Metrics {
    &GLOBAL
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let rejections = Family::<ReasonLabel, Counter>::default();
        for reason in Rejection::ALL {
            rejections.get_or_create_owned(&ReasonLabel {
                reason: reason.as_str(),
            });
        }
        registry.register(
            "webhook_rejections",
            "Webhooks refused, by reason (bad_signature 401, malformed 400, too_large 413, \
             not_allowed 403, unknown_source 404, body_timeout 408, request_timeout 503, \
             cannot_record 503)",
            rejections.clone(),
        );
        let accepted = Family::<AnswerLabel, Counter>::default();
        for answer in Accepted::ALL {
            accepted.get_or_create_owned(&AnswerLabel {
                answer: answer.as_str(),
            });
        }
        registry.register(
            "webhooks_accepted",
            "Webhooks acknowledged, by answer (queued, ignored, requeued: 202; duplicate: 200)",
            accepted.clone(),
        );
        let backups = Family::<OutcomeLabel, Counter>::default();
        for outcome in BackupOutcome::ALL {
            backups.get_or_create_owned(&OutcomeLabel {
                outcome: outcome.as_str(),
            });
        }
        registry.register(
            "backups",
            "Backup attempts, by outcome (done, skipped, failed_transient, failed_permanent, \
             failed_no_space)",
            backups.clone(),
        );
        // 50 ms to about 3.6 hours, each bucket 4 times the last.
        let backup_duration = Histogram::new(exponential_buckets(0.05, 4.0, 10));
        registry.register_with_unit(
            "backup_duration",
            "Time one backup attempt took (filters, fetch, copy and snapshot)",
            Unit::Seconds,
            backup_duration.clone(),
        );
        Self {
            registry,
            rejections,
            accepted,
            backups,
            backup_duration,
        }
    }

    /// Count a refused webhook.
    pub(crate) fn rejected(&self, reason: Rejection) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Count an acknowledged webhook.
    pub(crate) fn accepted(&self, answer: Accepted) {
        self.accepted
            .get_or_create(&AnswerLabel {
                answer: answer.as_str(),
            })
            .inc();
    }

    /// Count one backup attempt and the time it took.
    pub(crate) fn backup_finished(&self, outcome: BackupOutcome, took: Duration) {
        self.backups
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        self.backup_duration.observe(took.as_secs_f64());
    }

    /// These counters and the state read from `queue` and `store` as
    /// OpenMetrics text. Blocking (reads every delivery record).
    pub(crate) fn render(&self, queue: &Queue, store: &Vault) -> Result<String, MetricsError> {
        let state = StateNow::read(queue, store)?;
        let mut text = String::new();
        encode_registry(&mut text, &self.registry)?;
        encode_registry(&mut text, &state.registry(crate::event::now_ms()))?;
        encode_eof(&mut text)?;
        Ok(text)
    }
}

/// What a repository's gauges are made of.
#[derive(Debug, Default)]
struct RepoState {
    /// When its latest snapshot was committed (ms since the epoch).
    last_snapshot_ms: Option<u64>,
    /// When its oldest delivery still waiting for a backup (queued or
    /// retrying) was received.
    oldest_waiting_ms: Option<u64>,
}

/// The queue's and the vault's state at one scrape.
#[derive(Debug, Default)]
struct StateNow {
    deliveries: BTreeMap<&'static str, u64>,
    pending: u64,
    repositories: BTreeMap<RepoName, RepoState>,
}

/// Every status a delivery record can have, so that each is reported
/// (zero when none has it).
const STATUSES: [Status; 5] = [
    Status::Queued,
    Status::Ignored,
    Status::Skipped,
    Status::Done,
    Status::Failed,
];

impl StateNow {
    fn read(queue: &Queue, store: &Vault) -> Result<Self, MetricsError> {
        let counts = queue.counts()?;
        let mut state = Self {
            deliveries: STATUSES.iter().map(|s| (s.as_str(), 0)).collect(),
            pending: counts.pending,
            repositories: BTreeMap::new(),
        };
        for (status, count) in [
            (Status::Queued, counts.queued),
            (Status::Ignored, counts.ignored),
            (Status::Skipped, counts.skipped),
            (Status::Done, counts.done),
            (Status::Failed, counts.failed),
        ] {
            state.deliveries.insert(status.as_str(), count);
        }
        let deliveries = queue.waiting()?;
        for (repo, since) in crate::pipeline::lag::oldest_waiting(&deliveries) {
            state
                .repositories
                .entry(repo)
                .or_default()
                .oldest_waiting_ms = Some(since);
        }
        for repo in store.repositories()? {
            if let Some(latest) = store.latest_snapshot(&repo)? {
                state.repositories.entry(repo).or_default().last_snapshot_ms =
                    Some(latest.body.time_ms);
            }
        }
        Ok(state)
    }

    /// The gauges, as of `now_ms`.
    fn registry(&self, now_ms: u64) -> Registry {
        let mut registry = Registry::with_prefix(PREFIX);
        let deliveries = Family::<StatusLabel, Gauge>::default();
        for (status, count) in &self.deliveries {
            deliveries
                .get_or_create(&StatusLabel { status })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        registry.register(
            "deliveries",
            "Delivery records in the queue, by status (queued includes retrying)",
            deliveries,
        );
        let depth = Gauge::<i64>::default();
        depth.set(i64::try_from(self.pending).unwrap_or(i64::MAX));
        registry.register(
            "queue_depth",
            "Deliveries waiting for the worker, including ones waiting for a retry",
            depth,
        );
        let last_snapshot =
            Family::<RepositoryLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let lag = Family::<RepositoryLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (repo, state) in &self.repositories {
            let label = RepositoryLabel {
                repository: repo.to_string(),
            };
            if let Some(ms) = state.last_snapshot_ms {
                last_snapshot.get_or_create(&label).set(seconds(ms));
            }
            let waited = state
                .oldest_waiting_ms
                .map_or(0, |since| now_ms.saturating_sub(since));
            lag.get_or_create(&label).set(seconds(waited));
        }
        registry.register_with_unit(
            "repository_last_snapshot_timestamp",
            "When the repository's latest snapshot was committed (Unix time)",
            Unit::Seconds,
            last_snapshot,
        );
        registry.register_with_unit(
            "repository_backup_lag",
            "How long the repository's oldest delivery still waiting for a backup \
             (queued or retrying) has waited; 0 when none waits",
            Unit::Seconds,
            lag,
        );
        registry
    }
}

/// Milliseconds as seconds.
fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels, as printed) in `text`.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_start_at_zero_and_count_by_label() {
        let metrics = Metrics::new();
        metrics.rejected(Rejection::BadSignature);
        metrics.rejected(Rejection::BadSignature);
        metrics.accepted(Accepted::Queued);
        metrics.backup_finished(
            BackupOutcome::Failed(FailureKind::NoSpace),
            Duration::from_millis(100),
        );
        let mut text = String::new();
        encode_registry(&mut text, &metrics.registry).expect("encode");
        let rejected = |reason: &str| {
            sample(
                &text,
                &format!("hookvault_webhook_rejections_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(rejected("bad_signature"), Some(2.0), "{text}");
        assert_eq!(rejected("too_large"), Some(0.0), "{text}");
        assert_eq!(rejected("cannot_record"), Some(0.0), "{text}");
        assert_eq!(
            sample(
                &text,
                "hookvault_webhooks_accepted_total{answer=\"queued\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "hookvault_backups_total{outcome=\"failed_no_space\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "hookvault_backups_total{outcome=\"done\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "hookvault_backup_duration_seconds_count"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "hookvault_backup_duration_seconds_bucket{le=\"0.2\"}"
            ),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn repository_gauges_tell_the_latest_snapshot_and_the_oldest_wait() {
        let repo = |name: &str| RepoName::parse(name).expect("repo name");
        let mut state = StateNow {
            deliveries: STATUSES.iter().map(|s| (s.as_str(), 0)).collect(),
            pending: 3,
            repositories: BTreeMap::new(),
        };
        state.deliveries.insert("done", 4);
        state.repositories.insert(
            repo("acme/up-to-date"),
            RepoState {
                last_snapshot_ms: Some(1_700_000_000_500),
                oldest_waiting_ms: None,
            },
        );
        state.repositories.insert(
            repo("acme/behind"),
            RepoState {
                last_snapshot_ms: None,
                oldest_waiting_ms: Some(1_700_000_000_000),
            },
        );
        let mut text = String::new();
        encode_registry(&mut text, &state.registry(1_700_000_090_000)).expect("encode");
        assert_eq!(
            sample(&text, "hookvault_deliveries{status=\"done\"}"),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "hookvault_deliveries{status=\"failed\"}"),
            Some(0.0)
        );
        assert_eq!(sample(&text, "hookvault_queue_depth"), Some(3.0));
        assert_eq!(
            sample(
                &text,
                "hookvault_repository_last_snapshot_timestamp_seconds{repository=\"acme/up-to-date\"}"
            ),
            Some(1_700_000_000.5),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "hookvault_repository_backup_lag_seconds{repository=\"acme/up-to-date\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "hookvault_repository_backup_lag_seconds{repository=\"acme/behind\"}"
            ),
            Some(90.0)
        );
        assert!(
            !text.contains("last_snapshot_timestamp_seconds{repository=\"acme/behind\"}"),
            "{text}"
        );
    }
}
