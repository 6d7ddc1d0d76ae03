//! Versioned documents: JSON that is not git (pull requests and their
//! comments). Content goes into the pack files like objects (kind
//! `document`), addressed by BLAKE3; each changed `put` adds a version
//! record, so any document can be read as it was at any past moment.

use serde::{Deserialize, Serialize};

use super::pack::{self, Location, pack_path};
use super::{Store, StoreError, lock};
use crate::ids::{ContentId, ObjectKind, RepoName};

/// One version of a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentVersion {
    pub collection: String,
    pub key: String,
    /// BLAKE3 content id, 64 hex digits.
    pub content: String,
    pub size: u64,
    pub time_ms: u64,
    pub delivery_id: String,
}

fn prefix(repo: &RepoName, collection: &str, key: Option<&str>) -> Vec<u8> {
    let mut out = repo.to_string().into_bytes();
    out.push(0);
    out.extend_from_slice(collection.as_bytes());
    out.push(0);
    if let Some(key) = key {
        out.extend_from_slice(key.as_bytes());
        out.push(0);
    }
    out
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadDocument {
            message: format!("{what} {name:?} must be 1-128 of [A-Za-z0-9._-]"),
        })
    }
}

impl Store {
    /// Store `json` as the newest version of `collection/key` of `repo`.
    /// Unchanged content adds no version. Returns the content id.
    pub fn put_document(
        &self,
        repo: &RepoName,
        collection: &str,
        key: &str,
        json: &[u8],
        delivery_id: &str,
        time_ms: u64,
    ) -> Result<ContentId, StoreError> {
        check_name("collection", collection)?;
        check_name("key", key)?;
        serde_json::from_slice::<serde_json::Value>(json).map_err(|e| StoreError::BadDocument {
            message: format!("{collection}/{key} is not valid JSON: {e}"),
        })?;
        let content = pack::content_id(ObjectKind::Document, json);
        if let Some(latest) = self.document_at(repo, collection, key, None)?
            && latest.content == content.to_string()
        {
            return Ok(content);
        }
        // Data first (fsynced), then its location, then the version.
        if !self
            .inner
            .contents
            .contains_key(content.0)
            .map_err(|e| self.db_err(e))?
        {
            let mut slot = lock(&self.inner.writer)?;
            let writer = self.writer_for_append(&mut slot)?;
            let location = writer.append(&content, ObjectKind::Document, json)?;
            writer.sync()?;
            self.inner
                .contents
                .insert(content.0, location.encode().to_vec())
                .map_err(|e| self.db_err(e))?;
            self.inner.db.flush().map_err(|e| self.db_err(e))?;
        }
        let version = DocumentVersion {
            collection: collection.to_string(),
            key: key.to_string(),
            content: content.to_string(),
            size: json.len() as u64,
            time_ms,
            delivery_id: delivery_id.to_string(),
        };
        let seq = self.inner.db.generate_id().map_err(|e| self.db_err(e))?;
        let mut record_key = prefix(repo, collection, Some(key));
        record_key.extend_from_slice(&time_ms.to_be_bytes());
        record_key.extend_from_slice(&seq.to_be_bytes());
        let value = serde_json::to_vec(&version).map_err(|e| StoreError::BadDocument {
            message: e.to_string(),
        })?;
        self.inner
            .documents
            .insert(record_key, value)
            .map_err(|e| self.db_err(e))?;
        self.inner.db.flush().map_err(|e| self.db_err(e))?;
        Ok(content)
    }

    fn decode_version(&self, value: &[u8]) -> Result<DocumentVersion, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::CorruptIndex {
            what: format!("document version: {e}"),
        })
    }

    /// The newest version of a document at or before `at_ms` (or now).
    pub fn document_at(
        &self,
        repo: &RepoName,
        collection: &str,
        key: &str,
        at_ms: Option<u64>,
    ) -> Result<Option<DocumentVersion>, StoreError> {
        for item in self
            .inner
            .documents
            .scan_prefix(prefix(repo, collection, Some(key)))
            .rev()
        {
            let (_, value) = item.map_err(|e| self.db_err(e))?;
            let version = self.decode_version(&value)?;
            if at_ms.is_none_or(|at| version.time_ms <= at) {
                return Ok(Some(version));
            }
        }
        Ok(None)
    }

    /// The newest version, at or before `at_ms`, of every document of a
    /// collection, ordered by key.
    pub fn documents_at(
        &self,
        repo: &RepoName,
        collection: &str,
        at_ms: Option<u64>,
    ) -> Result<Vec<DocumentVersion>, StoreError> {
        let mut latest: std::collections::BTreeMap<String, DocumentVersion> = Default::default();
        for item in self
            .inner
            .documents
            .scan_prefix(prefix(repo, collection, None))
        {
            let (_, value) = item.map_err(|e| self.db_err(e))?;
            let version = self.decode_version(&value)?;
            if at_ms.is_none_or(|at| version.time_ms <= at) {
                latest.insert(version.key.clone(), version);
            }
        }
        Ok(latest.into_values().collect())
    }

    /// Every version of one document, oldest first.
    pub fn document_history(
        &self,
        repo: &RepoName,
        collection: &str,
        key: &str,
    ) -> Result<Vec<DocumentVersion>, StoreError> {
        self.inner
            .documents
            .scan_prefix(prefix(repo, collection, Some(key)))
            .map(|item| {
                let (_, value) = item.map_err(|e| self.db_err(e))?;
                self.decode_version(&value)
            })
            .collect()
    }

    /// The bytes of a document version, verified against its content id.
    pub fn read_document(&self, version: &DocumentVersion) -> Result<Vec<u8>, StoreError> {
        let mut id = [0u8; 32];
        hex::decode_to_slice(&version.content, &mut id).map_err(|_| StoreError::CorruptIndex {
            what: format!("document {}/{} content id", version.collection, version.key),
        })?;
        let content = ContentId(id);
        let location = self
            .inner
            .contents
            .get(content.0)
            .map_err(|e| self.db_err(e))?
            .and_then(|b| Location::decode(&b))
            .ok_or_else(|| StoreError::CorruptIndex {
                what: format!(
                    "location of document {}/{}",
                    version.collection, version.key
                ),
            })?;
        let file = self.reader(location.pack)?;
        let path = pack_path(&self.inner.packs_dir, location.pack);
        Ok(pack::read_record(&file, &path, &content, &location)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_by_time_and_unchanged_content_adds_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let repo = RepoName::parse("acme/app").expect("name");
        store
            .put_document(&repo, "pull-requests", "42", br#"{"v":1}"#, "d1", 1000)
            .expect("put");
        store
            .put_document(&repo, "pull-requests", "42", br#"{"v":1}"#, "d2", 1500)
            .expect("unchanged");
        store
            .put_document(&repo, "pull-requests", "42", br#"{"v":2}"#, "d3", 2000)
            .expect("put");
        store
            .put_document(&repo, "pull-requests", "7", br#"{"v":7}"#, "d4", 2500)
            .expect("put");
        assert_eq!(
            store
                .document_history(&repo, "pull-requests", "42")
                .expect("history")
                .len(),
            2
        );
        let old = store
            .document_at(&repo, "pull-requests", "42", Some(1999))
            .expect("read")
            .expect("version");
        assert_eq!(store.read_document(&old).expect("bytes"), br#"{"v":1}"#);
        let all = store
            .documents_at(&repo, "pull-requests", None)
            .expect("all");
        assert_eq!(all.len(), 2);
        assert_eq!(
            store
                .documents_at(&repo, "pull-requests", Some(1200))
                .expect("all")
                .len(),
            1
        );
        assert!(
            store
                .put_document(&repo, "pull-requests", "x", b"not json", "d", 1)
                .is_err()
        );
        assert!(
            store
                .put_document(&repo, "../etc", "x", b"{}", "d", 1)
                .is_err()
        );
    }
}
