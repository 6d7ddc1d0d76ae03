//! Where the vault's files live. The vault is a set of immutable files, each
//! written once and never modified, of a few types, one prefix each. A
//! backend knows nothing of what the files contain: it lists, reads (whole or
//! a byte range), writes a whole file and deletes.
//!
//! The rule every backend keeps: a file is either absent or complete. A
//! reader never sees a half-written file (local: write to a temporary name,
//! fsync, rename, fsync the directory; object storage: a single PUT).

mod local;
mod s3;

use std::fmt;

pub use local::LocalBackend;
pub use s3::{S3Backend, S3Settings};

/// The types of file in a vault, each under its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    /// `config`: the one file that is not named by its hash.
    Config,
    /// `data/<2 hex>/<64 hex>`: records (objects, documents, ref chunks).
    Data,
    /// `index/<64 hex>`: where each record of some data files is.
    Index,
    /// `snapshots/<64 hex>`: one snapshot of one repository.
    Snapshot,
    /// `documents/<64 hex>`: one version of one document.
    Document,
    /// `keys/<64 hex>`: the master key of an encrypted vault, wrapped under
    /// one passphrase.
    Key,
}

impl FileType {
    pub const ALL: [FileType; 6] = [
        FileType::Config,
        FileType::Data,
        FileType::Index,
        FileType::Snapshot,
        FileType::Document,
        FileType::Key,
    ];

    /// The prefix (directory) of this type.
    pub fn prefix(self) -> &'static str {
        match self {
            FileType::Config => "",
            FileType::Data => "data",
            FileType::Index => "index",
            FileType::Snapshot => "snapshots",
            FileType::Document => "documents",
            FileType::Key => "keys",
        }
    }

    /// The path of a file of this type relative to the vault's root.
    pub fn path_of(self, name: &FileName) -> String {
        match self {
            FileType::Config => "config".to_string(),
            FileType::Data => format!("data/{}/{}", &name.0[..2], name.0),
            other => format!("{}/{}", other.prefix(), name.0),
        }
    }
}

/// The name of a vault file: 64 lowercase hex digits (its content hash), or
/// `config`. Parsed, so a listing can never yield a path outside the vault.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileName(String);

impl FileName {
    pub fn config() -> Self {
        Self("config".to_string())
    }

    /// A content-hash name.
    pub fn from_hash(hash: &[u8; 32]) -> Self {
        Self(hex::encode(hash))
    }

    /// Accepts only 64 lowercase hex digits.
    pub fn parse(name: &str) -> Option<Self> {
        (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32 bytes this name spells, if it is a hash name.
    pub fn hash(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.0, &mut out).ok()?;
        Some(out)
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failure of the storage under the vault. Every variant names the file
/// (or prefix) concerned.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{location}: {path} does not exist")]
    NotFound { location: String, path: String },
    #[error("{location}: {path}: {source}")]
    Io {
        location: String,
        path: String,
        source: std::io::Error,
    },
    /// The disk (or bucket quota) is full. Kept apart so callers can answer
    /// "try again later" instead of "broken".
    #[error("{location}: no space left writing {path}")]
    NoSpace { location: String, path: String },
    #[error("{location}: {path}: {message}")]
    Remote {
        location: String,
        path: String,
        message: String,
    },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }

    pub fn is_no_space(&self) -> bool {
        matches!(self, BackendError::NoSpace { .. })
    }
}

/// The storage under a vault. Every method blocks; call from a blocking
/// thread (never from an async task).
pub trait Backend: Send + Sync + fmt::Debug {
    /// Where this backend stores, for messages (`/srv/data/vault`,
    /// `s3://bucket/prefix`). Never contains a credential.
    fn location(&self) -> String;

    /// Every file of `file_type` with its size in bytes. Names that are not
    /// vault file names (temporary files, strangers) are skipped.
    fn list(&self, file_type: FileType) -> Result<Vec<(FileName, u64)>, BackendError>;

    /// A whole file.
    fn read(&self, file_type: FileType, name: &FileName) -> Result<Vec<u8>, BackendError>;

    /// `len` bytes at `offset`. Fewer bytes than asked is an error (the file
    /// is shorter than the index says: damage, named as such by the caller).
    fn read_range(
        &self,
        file_type: FileType,
        name: &FileName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, BackendError>;

    /// Write a whole file, durably, and only then make it visible. Writing a
    /// name that exists is allowed and leaves one complete file (names are
    /// content hashes, so the bytes are the same).
    fn write(&self, file_type: FileType, name: &FileName, data: &[u8]) -> Result<(), BackendError>;

    /// Write whole files in the order given: each becomes visible only once
    /// every file before it is durable and visible, so a crash leaves a
    /// prefix of them (the write order of FORMAT.md). A backend may make
    /// their contents durable together before the first becomes visible.
    fn write_in_order(&self, files: &[(FileType, &FileName, &[u8])]) -> Result<(), BackendError> {
        files
            .iter()
            .try_for_each(|(file_type, name, data)| self.write(*file_type, name, data))
    }

    /// Delete a file; deleting a missing file is not an error.
    fn remove(&self, file_type: FileType, name: &FileName) -> Result<(), BackendError>;
}
