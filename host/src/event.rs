//! The normalised event: what the receiver produces from any Bitbucket
//! delivery and what the queue, the plugins and the store consume.

use serde::{Deserialize, Serialize};

use crate::ids::{RefName, RepoName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefKind {
    Branch,
    Tag,
    Other,
}

/// One reference changed by a push. Targets are 40 lowercase hex digits;
/// `None` means the ref did not exist (created) or no longer exists (deleted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefChange {
    pub name: RefName,
    pub kind: RefKind,
    pub old_target: Option<String>,
    pub new_target: Option<String>,
    pub forced: bool,
}

/// What an event is about; decides which backup plugins see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Refs changed (Cloud `repo:push`, DC `repo:refs_changed`).
    #[default]
    Push,
    /// A pull request was created or changed.
    PullRequest,
    /// A pull-request comment was added, edited or deleted.
    Comment,
    /// The repository was created, renamed, transferred or forked.
    Repository,
    /// The repository was deleted upstream: recorded, backups kept.
    RepositoryDeleted,
    /// The reconciler found the remote differing from the latest snapshot.
    Reconcile,
}

/// A pull request, normalised from Cloud or Data Center.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequest {
    pub id: u64,
    pub title: String,
    pub description: Option<String>,
    /// `OPEN`, `MERGED`, `DECLINED` or `SUPERSEDED`.
    pub state: String,
    pub author: Option<String>,
    pub source_branch: Option<String>,
    pub source_commit: Option<String>,
    pub destination_branch: Option<String>,
    pub destination_commit: Option<String>,
    pub reviewers: Vec<String>,
    /// RFC 3339, UTC.
    pub created: Option<String>,
    pub updated: Option<String>,
}

/// A pull-request comment, normalised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: u64,
    pub text: String,
    pub author: Option<String>,
    pub created: Option<String>,
    pub updated: Option<String>,
    pub parent: Option<u64>,
    /// Inline comments: the file and line.
    pub path: Option<String>,
    pub line: Option<u64>,
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub delivery_id: String,
    pub source: String,
    pub event_key: String,
    #[serde(default)]
    pub kind: EventKind,
    pub repository: RepoName,
    pub actor: Option<String>,
    pub changes: Vec<RefChange>,
    pub received_at_ms: u64,
    #[serde(default)]
    pub pull_request: Option<PullRequest>,
    #[serde(default)]
    pub comment: Option<Comment>,
    /// Every comment of the pull request (backfill by the reconciler).
    #[serde(default)]
    pub comments: Vec<Comment>,
    /// The repository's earlier name, when a rename or transfer moved it.
    #[serde(default)]
    pub previous_name: Option<RepoName>,
}

/// `ms` since the Unix epoch as RFC 3339 in UTC, to the millisecond when
/// it has one (what `--at` and `--before` take).
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
