//! The reconciler: webhooks get lost (size limits, retries that give up,
//! Bitbucket incidents), so at start-up and on an interval hookvault lists
//! the repositories of every configured workspace or project, compares each
//! repository's remote refs (`ls-remote` through gix) with its latest
//! snapshot, and queues a backup for every difference — through the same
//! queue, filters and plugins as a webhook.
//!
//! A difference is queued under a delivery id derived from the remote
//! state, so a difference that persists (a filter skipping a ref, a backup
//! failing) is not queued again by every pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::bitbucket::normalize;
use crate::bitbucket::rest::Api;
use crate::config::{SourceConfig, SourceKind};
use crate::event::{Event, EventKind, RefChange, RefKind, now_ms};
use crate::git::{Remote, RemoteRef};
use crate::ids::{RefName, RepoName};
use crate::pipeline::queue::{Delivery, Queue, Recorded, Status};
use crate::plugins::BackupDeps;

/// What one pass found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReconcileReport {
    pub repositories: usize,
    pub queued: Vec<String>,
    pub errors: Vec<String>,
}

#[derive(Clone)]
pub struct Reconciler {
    pub sources: Vec<SourceConfig>,
    pub deps: Arc<BackupDeps>,
    pub queue: Queue,
    /// Also page through every repository's pull requests and comments
    /// (when a metadata plugin is configured).
    pub backfill_pull_requests: bool,
    /// One pass at a time: a pass asked for while one runs waits for it.
    pub running: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").finish_non_exhaustive()
    }
}

fn kind_of(name: &str) -> RefKind {
    if name.starts_with("refs/heads/") {
        RefKind::Branch
    } else if name.starts_with("refs/tags/") {
        RefKind::Tag
    } else {
        RefKind::Other
    }
}

/// The ref changes that take `snapshot` to `remote`. A name that is not a
/// valid ref name ([`RefName`]) cannot be named in an event and is left out
/// with a warning (the backup still takes every ref the remote lists).
pub fn diff(snapshot: &BTreeMap<String, String>, remote: &[RemoteRef]) -> Vec<RefChange> {
    let remote: BTreeMap<&str, String> = remote
        .iter()
        .map(|r| (r.name.as_str(), r.target.to_hex()))
        .collect();
    let change = |name: &str, old: Option<&String>, new: Option<&String>| match RefName::parse(name)
    {
        Ok(valid) => Some(RefChange {
            name: valid,
            kind: kind_of(name),
            old_target: old.cloned(),
            new_target: new.cloned(),
            forced: false,
        }),
        Err(error) => {
            warn!(%error, "ref left out of the changes");
            None
        }
    };
    let mut changes = Vec::new();
    for (name, target) in &remote {
        let old = snapshot.get(*name);
        if old != Some(target) {
            changes.extend(change(name, old, Some(target)));
        }
    }
    for (name, old) in snapshot {
        if !remote.contains_key(name.as_str()) {
            changes.extend(change(name, Some(old), None));
        }
    }
    changes
}

impl Reconciler {
    /// Run a pass now, then one every `interval`, until `shutdown`.
    pub async fn run(self, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            let report = self.pass().await;
            info!(
                repositories = report.repositories,
                queued = report.queued.len(),
                errors = report.errors.len(),
                "reconcile pass done"
            );
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One pass over every source with workspaces configured.
    pub async fn pass(&self) -> ReconcileReport {
        let _one_at_a_time = self.running.lock().await;
        let mut report = ReconcileReport::default();
        for source in self.sources.iter().filter(|s| !s.workspaces.is_empty()) {
            let api = match Api::from_source(source) {
                Ok(api) => api,
                Err(e) => {
                    report.errors.push(format!("source {}: {e}", source.name));
                    continue;
                }
            };
            for workspace in &source.workspaces {
                let repos = match api.list_repositories(workspace).await {
                    Ok(repos) => repos,
                    Err(e) => {
                        warn!(source = %source.name, %workspace, error = %e, "cannot list repositories");
                        report
                            .errors
                            .push(format!("listing {workspace} on {}: {e}", source.name));
                        continue;
                    }
                };
                for repo in repos {
                    report.repositories += 1;
                    let span = info_span!("reconcile", source = %source.name, repo = %repo.name);
                    match self
                        .check(source, &repo.name)
                        .instrument(span.clone())
                        .await
                    {
                        Ok(Some(id)) => report.queued.push(id),
                        Ok(None) => {}
                        Err(e) => report.errors.push(format!("{}: {e}", repo.name)),
                    }
                    if self.backfill_pull_requests {
                        match self
                            .backfill(source, &api, &repo.name)
                            .instrument(span)
                            .await
                        {
                            Ok(ids) => report.queued.extend(ids),
                            Err(e) => report
                                .errors
                                .push(format!("pull requests of {}: {e}", repo.name)),
                        }
                    }
                }
            }
        }
        report
    }

    /// Queue every pull request (with its comments) that changed since its
    /// stored version. Pull requests whose `updated` time matches the
    /// stored document are not listed again.
    async fn backfill(
        &self,
        source: &SourceConfig,
        api: &Api,
        repo: &RepoName,
    ) -> Result<Vec<String>, String> {
        let mut queued = Vec::new();
        let pull_requests = api
            .list_pull_requests(repo)
            .await
            .map_err(|e| e.to_string())?;
        for raw in pull_requests {
            let pr = match source.kind {
                SourceKind::Cloud => normalize::cloud_pull_request(&raw),
                SourceKind::DataCenter => normalize::dc_pull_request(&raw),
            }
            .map_err(|e| e.to_string())?;
            let stored = self.stored_pr(repo, pr.id)?;
            if stored.as_ref().map(|(_, updated)| updated) == Some(&pr.updated) {
                continue;
            }
            let raw_comments = api
                .list_pr_comments(repo, pr.id)
                .await
                .map_err(|e| e.to_string())?;
            let mut comments = Vec::new();
            for c in &raw_comments {
                comments.push(
                    match source.kind {
                        SourceKind::Cloud => normalize::cloud_comment(c),
                        SourceKind::DataCenter => normalize::dc_comment(c, None, None),
                    }
                    .map_err(|e| e.to_string())?,
                );
            }
            // Keyed by the API state and the stored version it would
            // replace, so a stored document that drifted is repaired.
            let stored_content = stored.map(|(content, _)| content).unwrap_or_default();
            let digest = blake3::hash(
                serde_json::to_string(&(&pr, &comments, stored_content))
                    .map_err(|e| e.to_string())?
                    .as_bytes(),
            );
            let id = format!(
                "backfill:{}:{repo}:pr{}:{}",
                source.name,
                pr.id,
                &digest.to_hex()[..16]
            );
            let received_at_ms = now_ms();
            let event = Event {
                delivery_id: id.clone(),
                source: source.name.clone(),
                event_key: "hookvault:backfill".into(),
                kind: EventKind::PullRequest,
                repository: repo.clone(),
                actor: None,
                changes: Vec::new(),
                received_at_ms,
                pull_request: Some(pr),
                comment: None,
                comments,
                previous_name: None,
            };
            if self.enqueue(&event).await? {
                queued.push(id);
            }
        }
        Ok(queued)
    }

    /// The stored document of a pull request: its content id and its
    /// `updated` field.
    fn stored_pr(
        &self,
        repo: &RepoName,
        id: u64,
    ) -> Result<Option<(String, Option<String>)>, String> {
        let store = &self.deps.store;
        let Some(version) = store
            .document_at(repo, "pull-requests", &id.to_string(), None)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let bytes = store.read_document(&version).map_err(|e| e.to_string())?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let updated = doc
            .pointer("/pull_request/updated")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string);
        Ok(Some((version.content.to_string(), updated)))
    }

    /// Record and queue a synthetic event; false if it was already there.
    async fn enqueue(&self, event: &Event) -> Result<bool, String> {
        let delivery = Delivery {
            id: event.delivery_id.clone(),
            source: event.source.clone(),
            event_key: event.event_key.clone(),
            received_at_ms: event.received_at_ms,
            status: Status::Queued,
            attempts: 0,
            last_error: None,
            failure: None,
            last_attempt_ms: None,
            event: Some(event.clone()),
            snapshot: None,
            entry: None,
        };
        match self
            .queue
            .record(delivery)
            .await
            .map_err(|e| e.to_string())?
        {
            Recorded::New => {
                info!(delivery_id = %event.delivery_id, "queued");
                Ok(true)
            }
            Recorded::Duplicate | Recorded::Requeued => Ok(false),
        }
    }

    /// Compare one repository with its latest snapshot; queue a backup when
    /// they differ. Returns the delivery id queued.
    async fn check(
        &self,
        source: &SourceConfig,
        repo: &RepoName,
    ) -> Result<Option<String>, String> {
        let deps = self.deps.clone();
        let source_name = source.name.clone();
        let repo_owned = repo.clone();
        let remote = tokio::task::spawn_blocking(move || {
            let git = deps
                .sources
                .get(&source_name)
                .ok_or_else(|| format!("source {source_name} is not configured"))?;
            let url = git.config.clone_url(&repo_owned);
            Remote::new(&repo_owned, url, git.authorization.clone())
                .ls_remote()
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("ls-remote task failed: {e}"))??;

        let latest = self
            .deps
            .store
            .latest_snapshot(repo)
            .map_err(|e| e.to_string())?;
        // The id names the pair (latest snapshot, remote state): a remote
        // that returns to an earlier state is queued again.
        let mut hasher = blake3::Hasher::new();
        if let Some(latest) = &latest {
            hasher.update(&latest.id.0);
        }
        let snapshot_refs: BTreeMap<String, String> = match &latest {
            Some(s) => self
                .deps
                .store
                .snapshot_refs(s)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(name, target)| (name, target.to_hex()))
                .collect(),
            None => BTreeMap::new(),
        };
        let changes = diff(&snapshot_refs, &remote);
        if changes.is_empty() {
            return Ok(None);
        }
        for r in &remote {
            hasher.update(r.name.as_bytes());
            hasher.update(&r.target.0);
        }
        let id = format!(
            "reconcile:{}:{repo}:{}",
            source.name,
            &hasher.finalize().to_hex()[..16]
        );
        let received_at_ms = now_ms();
        let event = Event {
            delivery_id: id.clone(),
            source: source.name.clone(),
            event_key: "hookvault:reconcile".into(),
            kind: EventKind::Reconcile,
            repository: repo.clone(),
            actor: None,
            changes,
            received_at_ms,
            pull_request: None,
            comment: None,
            comments: Vec::new(),
            previous_name: None,
        };
        Ok(self.enqueue(&event).await?.then_some(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GitOid;

    #[test]
    fn diff_finds_new_moved_and_deleted_refs() {
        let a = GitOid([1; 20]);
        let b = GitOid([2; 20]);
        let snapshot: BTreeMap<String, String> = [
            ("refs/heads/main".to_string(), a.to_hex()),
            ("refs/heads/gone".to_string(), a.to_hex()),
            ("refs/tags/v1".to_string(), a.to_hex()),
        ]
        .into_iter()
        .collect();
        let remote = vec![
            RemoteRef {
                name: "refs/heads/main".into(),
                target: b,
            },
            RemoteRef {
                name: "refs/heads/new".into(),
                target: a,
            },
            RemoteRef {
                name: "refs/tags/v1".into(),
                target: a,
            },
        ];
        let changes = diff(&snapshot, &remote);
        let names: Vec<&str> = changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["refs/heads/main", "refs/heads/new", "refs/heads/gone"]
        );
        assert_eq!(changes[2].new_target, None);
        assert!(
            diff(
                &snapshot,
                &[
                    RemoteRef {
                        name: "refs/heads/main".into(),
                        target: a
                    },
                    RemoteRef {
                        name: "refs/heads/gone".into(),
                        target: a
                    },
                    RemoteRef {
                        name: "refs/tags/v1".into(),
                        target: a
                    },
                ]
            )
            .is_empty()
        );
    }
}
