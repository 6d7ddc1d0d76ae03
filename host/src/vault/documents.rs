//! Versioned documents: JSON that is not git (pull requests and their
//! comments). Content is a record (kind `document`) in the data files, its
//! versions of one document a line of deltas; each changed `put` adds one
//! document file, so any document can be read as it was at any past moment.

use super::crypto::MasterKey;
use serde::{Deserialize, Serialize};

use super::backend::FileName;
use super::format::{self, DOCUMENT_MAGIC, FormatError};
use crate::ids::{RecordId, RepoName};

/// One version of a document (one document file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentVersion {
    pub repository: RepoName,
    pub collection: String,
    pub key: String,
    /// The record holding the JSON.
    pub content: RecordId,
    pub size: u64,
    pub time_ms: u64,
    pub delivery_id: String,
}

impl DocumentVersion {
    pub fn seal(&self, key: Option<&MasterKey>) -> Result<(FileName, Vec<u8>), FormatError> {
        let json = serde_json::to_vec(self).map_err(|e| FormatError(e.to_string()))?;
        let bytes = format::seal_keyed(DOCUMENT_MAGIC, &json, 3, key)?;
        Ok((FileName::from_hash(blake3::hash(&bytes).as_bytes()), bytes))
    }

    pub fn open(
        name: &FileName,
        bytes: &[u8],
        key: Option<&MasterKey>,
    ) -> Result<Self, FormatError> {
        if name.hash() != Some(*blake3::hash(bytes).as_bytes()) {
            return Err(FormatError(
                "content does not match the file name (damaged or altered)".into(),
            ));
        }
        let json = format::open_envelope_keyed(DOCUMENT_MAGIC, bytes, key)?;
        serde_json::from_slice(&json).map_err(|e| FormatError(e.to_string()))
    }

    /// Newest first: later time, then later delivery id.
    pub(crate) fn order_key(&self) -> (u64, &str) {
        (self.time_ms, self.delivery_id.as_str())
    }
}

/// Collection and key are 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
