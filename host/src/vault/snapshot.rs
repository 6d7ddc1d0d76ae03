//! Snapshots: the immutable record of a repository's refs at one moment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{RepoName, SnapshotId};

/// One ref that moved between the previous snapshot and this one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    pub name: String,
    pub old_target: Option<String>,
    pub new_target: Option<String>,
    /// Bitbucket reported a forced update (history rewritten).
    pub forced: bool,
    /// The ref no longer exists.
    pub deleted: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStats {
    /// Objects newly written to the store by this backup.
    pub written: u64,
    /// Objects this backup found already stored (deduplicated).
    pub present: u64,
    /// Compressed bytes this backup added to pack files.
    pub stored_bytes: u64,
}

/// Everything a snapshot says; its id is the BLAKE3 of this, as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    pub repository: RepoName,
    pub source: String,
    /// Sequence number within the repository, from 1.
    pub seq: u64,
    pub time_ms: u64,
    pub delivery_id: String,
    pub event_key: String,
    pub actor: Option<String>,
    pub parent: Option<SnapshotId>,
    /// Full ref name → object id (40 hex digits).
    pub refs: BTreeMap<String, String>,
    pub updates: Vec<RefUpdate>,
    pub stats: CopyStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    #[serde(flatten)]
    pub body: SnapshotBody,
}

impl Snapshot {
    pub fn seal(body: SnapshotBody) -> Self {
        // Plain data with string keys: serialisation cannot fail.
        let json = serde_json::to_vec(&body).expect("snapshot body serialises");
        let id = SnapshotId(blake3::hash(&json).to_hex().to_string());
        Self { id, body }
    }

    /// Whether the stored id still matches the body.
    pub fn verify(&self) -> bool {
        Self::seal(self.body.clone()).id == self.id
    }

    pub fn short_id(&self) -> &str {
        &self.id.0[..12.min(self.id.0.len())]
    }
}
