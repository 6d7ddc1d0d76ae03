//! Restore: write a snapshot out as a bare git repository.
//!
//! Every object reachable from the snapshot's refs is read from the store
//! (each read is checked against its BLAKE3 content id), written into a new
//! bare repository and checked again against its git id; then the refs are
//! written. The result passes `git fsck --full`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gix::objs::Write as _;
use serde::Serialize;

use crate::git::{from_gix, from_kind, to_gix};
use crate::ids::{GitOid, ObjectKind};
use crate::vault::{Snapshot, Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("restore target {path} exists and is not empty; restore into a new directory")]
    TargetNotEmpty { path: PathBuf },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("restore into {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("object {oid} in the store does not hash to its id (got {actual})")]
    Mismatch { oid: GitOid, actual: GitOid },
    #[error("object {oid} ({kind}) cannot be decoded: {message}")]
    Decode {
        oid: GitOid,
        kind: &'static str,
        message: String,
    },
    #[error("snapshot ref {reference} has an invalid target {target:?}")]
    BadRef { reference: String, target: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub snapshot: String,
    pub path: PathBuf,
    pub refs: usize,
    pub objects: u64,
    pub bytes: u64,
}

fn children(oid: GitOid, kind: ObjectKind, data: &[u8]) -> Result<Vec<GitOid>, RestoreError> {
    let decode = |message: String| RestoreError::Decode {
        oid,
        kind: kind.as_str(),
        message,
    };
    Ok(match kind {
        ObjectKind::Blob | ObjectKind::Document | ObjectKind::Refs => Vec::new(),
        ObjectKind::Commit => {
            let commit = gix::objs::CommitRef::from_bytes(data, gix::hash::Kind::Sha1)
                .map_err(|e| decode(e.to_string()))?;
            let mut out = vec![from_gix(&commit.tree())];
            out.extend(commit.parents().map(|p| from_gix(&p)));
            out
        }
        ObjectKind::Tree => {
            let tree = gix::objs::TreeRef::from_bytes(data, gix::hash::Kind::Sha1)
                .map_err(|e| decode(e.to_string()))?;
            tree.entries
                .iter()
                // Submodule gitlinks live in another repository.
                .filter(|e| !e.mode.is_commit())
                .map(|e| from_gix(e.oid))
                .collect()
        }
        ObjectKind::Tag => {
            let tag = gix::objs::TagRef::from_bytes(data, gix::hash::Kind::Sha1)
                .map_err(|e| decode(e.to_string()))?;
            vec![from_gix(&tag.target())]
        }
    })
}

/// Write `snapshot` into a new bare repository at `to`.
pub fn restore(
    store: &Vault,
    snapshot: &Snapshot,
    to: &Path,
) -> Result<RestoreReport, RestoreError> {
    let write_err = |message: String| RestoreError::Write {
        path: to.to_path_buf(),
        message,
    };
    if to.exists() {
        let empty = std::fs::read_dir(to)
            .map_err(|e| write_err(e.to_string()))?
            .next()
            .is_none();
        if !empty {
            return Err(RestoreError::TargetNotEmpty {
                path: to.to_path_buf(),
            });
        }
    }
    let repo = gix::init_bare(to).map_err(|e| write_err(e.to_string()))?;

    let refs = store.snapshot_refs(snapshot)?;
    let tips: Vec<GitOid> = refs.values().copied().collect();
    let mut seen: HashSet<GitOid> = tips.iter().copied().collect();
    let mut stack = tips.clone();
    let (mut objects, mut bytes) = (0u64, 0u64);
    while let Some(oid) = stack.pop() {
        let (kind, data) = store.read_object(&oid)?;
        let git_kind = from_kind(kind).ok_or_else(|| RestoreError::Decode {
            oid,
            kind: kind.as_str(),
            message: "a document is indexed as a git object".into(),
        })?;
        let written = repo
            .objects
            .write_buf(git_kind, &data)
            .map_err(|e| write_err(format!("writing object {oid}: {e}")))?;
        let written = from_gix(&written);
        if written != oid {
            return Err(RestoreError::Mismatch {
                oid,
                actual: written,
            });
        }
        objects += 1;
        bytes += data.len() as u64;
        for child in children(oid, kind, &data)? {
            if seen.insert(child) {
                stack.push(child);
            }
        }
    }

    use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
    let mut edits = Vec::new();
    for (reference, oid) in &refs {
        let name = gix::refs::FullName::try_from(reference.as_str()).map_err(|e| {
            RestoreError::BadRef {
                reference: reference.clone(),
                target: e.to_string(),
            }
        })?;
        edits.push(RefEdit {
            change: Change::Update {
                log: LogChange {
                    mode: RefLog::AndReference,
                    force_create_reflog: false,
                    message: format!("hookvault restore of snapshot {}", snapshot.id).into(),
                },
                expected: PreviousValue::MustNotExist,
                new: gix::refs::Target::Object(to_gix(oid)),
            },
            name,
            deref: false,
        });
    }
    if !edits.is_empty() {
        repo.edit_references_as(edits, None)
            .map_err(|e| write_err(format!("writing refs: {e}")))?;
    }
    write_head(to, &refs).map_err(|e| write_err(format!("writing HEAD: {e}")))?;
    Ok(RestoreReport {
        snapshot: snapshot.id.to_string(),
        path: to.to_path_buf(),
        refs: refs.len(),
        objects,
        bytes,
    })
}

/// Point HEAD at `main`, `master`, or else the first branch of the snapshot.
fn write_head(to: &Path, refs: &std::collections::BTreeMap<String, GitOid>) -> std::io::Result<()> {
    let head = ["refs/heads/main", "refs/heads/master"]
        .into_iter()
        .find(|r| refs.contains_key(*r))
        .map(str::to_string)
        .or_else(|| refs.keys().find(|r| r.starts_with("refs/heads/")).cloned());
    match head {
        Some(head) => std::fs::write(to.join("HEAD"), format!("ref: {head}\n")),
        None => Ok(()),
    }
}
