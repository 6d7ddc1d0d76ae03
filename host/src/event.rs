//! The normalised event: what the receiver produces from any Bitbucket
//! delivery and what the queue, the plugins and the store consume.

use serde::{Deserialize, Serialize};

use crate::ids::RepoName;

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
    pub name: String,
    pub kind: RefKind,
    pub old_target: Option<String>,
    pub new_target: Option<String>,
    pub forced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub delivery_id: String,
    pub source: String,
    pub event_key: String,
    pub repository: RepoName,
    pub actor: Option<String>,
    pub changes: Vec<RefChange>,
    pub received_at_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
