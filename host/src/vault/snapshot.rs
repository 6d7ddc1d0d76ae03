//! Snapshots: the immutable record of a repository's refs at one moment,
//! one file each, named by the BLAKE3 of its bytes (FORMAT.md, "Snapshot
//! files").

use super::crypto::MasterKey;
use serde::{Deserialize, Serialize};

use super::backend::FileName;
use super::format::{self, FormatError, SNAPSHOT_MAGIC};
use crate::ids::{RecordId, RepoName, SnapshotId};

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
    /// Objects newly written to the vault by this backup.
    pub written: u64,
    /// Objects this backup listed and found already stored. The walk stops
    /// at trees the vault holds, so history shared with an earlier backup
    /// (or another repository) is mostly not listed at all.
    pub present: u64,
    /// Bytes this backup added to data files.
    pub stored_bytes: u64,
}

/// A snapshot's ref table: how many refs, and the chunks that hold them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefTable {
    pub count: u64,
    pub chunks: Vec<RecordId>,
}

/// Everything a snapshot file says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub refs: RefTable,
    pub updates: Vec<RefUpdate>,
    pub stats: CopyStats,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    #[serde(flatten)]
    pub body: SnapshotBody,
}

impl Snapshot {
    /// The file bytes of a body, and the id they give it.
    pub fn seal(
        body: SnapshotBody,
        key: Option<&MasterKey>,
    ) -> Result<(Self, Vec<u8>), FormatError> {
        let json = serde_json::to_vec(&body).map_err(|e| FormatError(e.to_string()))?;
        let bytes = format::seal_keyed(SNAPSHOT_MAGIC, &json, 3, key)?;
        let id = SnapshotId(*blake3::hash(&bytes).as_bytes());
        Ok((Self { id, body }, bytes))
    }

    /// Decode a snapshot file, checking that its bytes hash to its name.
    pub fn open(
        name: &FileName,
        bytes: &[u8],
        key: Option<&MasterKey>,
    ) -> Result<Self, FormatError> {
        let hash = *blake3::hash(bytes).as_bytes();
        if name.hash() != Some(hash) {
            return Err(FormatError(
                "content does not match the file name (damaged or altered)".into(),
            ));
        }
        let json = format::open_envelope_keyed(SNAPSHOT_MAGIC, bytes, key)?;
        let body: SnapshotBody =
            serde_json::from_slice(&json).map_err(|e| FormatError(e.to_string()))?;
        Ok(Self {
            id: SnapshotId(hash),
            body,
        })
    }

    pub fn short_id(&self) -> String {
        self.id.short()
    }
}
