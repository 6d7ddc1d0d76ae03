//! The lag watch: a warning alert when a repository's backups fall behind,
//! i.e. its oldest delivery still waiting for a backup (queued or waiting
//! for a retry) has waited `alerts.max_lag_secs`. The latest snapshot is
//! then at least that far behind what was pushed. One alert per episode:
//! the repository is alerted again only after it has caught up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::watch;

use crate::alerts::{Alert, Alerts, Severity};
use crate::ids::RepoName;
use crate::pipeline::queue::{Delivery, Queue, Status};

/// Repositories already alerted in the current episode.
#[derive(Debug, Default)]
pub struct LagWatch {
    alerted: BTreeSet<RepoName>,
}

/// When each repository's oldest waiting delivery was received.
pub fn oldest_waiting(deliveries: &[Delivery]) -> BTreeMap<RepoName, u64> {
    let mut oldest: BTreeMap<RepoName, u64> = BTreeMap::new();
    for delivery in deliveries.iter().filter(|d| d.status == Status::Queued) {
        if let Some(repo) = delivery.repository() {
            let at = oldest
                .entry(repo.clone())
                .or_insert(delivery.received_at_ms);
            *at = (*at).min(delivery.received_at_ms);
        }
    }
    oldest
}

impl LagWatch {
    /// The alerts for repositories that have newly fallen `max_lag` behind
    /// at `now_ms`; a repository no longer behind may be alerted again.
    pub fn check(
        &mut self,
        oldest: &BTreeMap<RepoName, u64>,
        now_ms: u64,
        max_lag: Duration,
    ) -> Vec<Alert> {
        let max_ms = u64::try_from(max_lag.as_millis()).unwrap_or(u64::MAX);
        let behind: BTreeMap<&RepoName, u64> = oldest
            .iter()
            .map(|(repo, since)| (repo, now_ms.saturating_sub(*since)))
            .filter(|(_, waited)| *waited >= max_ms)
            .collect();
        self.alerted.retain(|repo| behind.contains_key(repo));
        let mut alerts = Vec::new();
        for (repo, waited) in behind {
            if !self.alerted.insert(repo.clone()) {
                continue;
            }
            let minutes = waited / 60_000;
            let mut alert = Alert::from_host(
                Severity::Warning,
                format!("backups of {repo} are {minutes} min behind"),
                format!(
                    "A delivery for {repo} has waited {minutes} min for its backup (the limit is {} min): its latest snapshot is that far behind a push. `hookvault events --repo {repo}` shows why.",
                    max_ms / 60_000
                ),
            );
            alert.repository = Some(repo.to_string());
            alert.labels = vec![("waited_secs".into(), (waited / 1000).to_string())];
            alerts.push(alert);
        }
        alerts
    }
}

/// Check the queue every `max_lag / 4` (between 1 s and 60 s) until
/// `stop` turns true.
pub async fn watch(
    queue: Queue,
    max_lag: Duration,
    alerts: Alerts,
    mut stop: watch::Receiver<bool>,
) {
    let every = (max_lag / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut lag = LagWatch::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let listed = {
            let queue = queue.clone();
            tokio::task::spawn_blocking(move || queue.waiting()).await
        };
        match listed {
            Ok(Ok(deliveries)) => {
                let oldest = oldest_waiting(&deliveries);
                for alert in lag.check(&oldest, crate::event::now_ms(), max_lag) {
                    alerts.raise(alert);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lag watch cannot read the queue"),
            Err(e) => tracing::warn!(error = %e, "lag watch task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_alerted_once_per_episode() {
        let repo = RepoName::parse("acme/widgets").expect("name");
        let max = Duration::from_secs(600);
        let mut watch = LagWatch::default();
        let oldest = BTreeMap::from([(repo.clone(), 1_000_000)]);
        // Not yet behind.
        assert!(watch.check(&oldest, 1_000_000 + 599_000, max).is_empty());
        let alerts = watch.check(&oldest, 1_000_000 + 720_000, max);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].title, "backups of acme/widgets are 12 min behind");
        assert_eq!(alerts[0].severity, Severity::Warning);
        assert_eq!(alerts[0].repository.as_deref(), Some("acme/widgets"));
        // Still behind: no second alert.
        assert!(watch.check(&oldest, 1_000_000 + 900_000, max).is_empty());
        // Caught up, then behind again: a new episode.
        assert!(watch.check(&BTreeMap::new(), 2_000_000, max).is_empty());
        assert_eq!(watch.check(&oldest, 1_000_000 + 800_000, max).len(), 1);
    }
}
