//! Restore: write a snapshot out as a bare git repository.
//!
//! Every object reachable from the snapshot's refs is read from the vault
//! (each read is checked against its record check), written into one pack of
//! a new bare repository (its git id recomputed and compared), then the refs
//! are written. The result passes `git fsck --full --strict`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::git::pack_writer::PackWriter;
use crate::git::{from_gix, from_kind};
use crate::ids::{GitOid, ObjectKind};
use crate::progress::Progress;
use crate::vault::{Placement, Snapshot, Vault, VaultError};

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
    #[error("no ref of snapshot {snapshot} matches the --ref patterns given")]
    NoRefs { snapshot: String },
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

/// The objects a git object names (submodule commits excluded).
pub(crate) fn children(
    oid: GitOid,
    kind: ObjectKind,
    data: &[u8],
) -> Result<Vec<GitOid>, RestoreError> {
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

/// Write `snapshot` into a new bare repository at `to`: one pack (objects
/// in each path's version order, as git deltas against the same bases the
/// vault uses) and its index, then the refs `select` keeps (and only what
/// they reach). A restore that fails removes what it wrote.
pub fn restore(
    store: &Vault,
    snapshot: &Snapshot,
    to: &Path,
    select: &dyn Fn(&str) -> bool,
    progress: &dyn Fn(Progress),
) -> Result<RestoreReport, RestoreError> {
    let write_err = |message: String| RestoreError::Write {
        path: to.to_path_buf(),
        message,
    };
    let existed = to.exists();
    if existed {
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
    let mut refs = store.snapshot_refs(snapshot)?;
    let stored = refs.len();
    refs.retain(|name, _| select(name));
    if refs.is_empty() && stored > 0 {
        return Err(RestoreError::NoRefs {
            snapshot: snapshot.short_id(),
        });
    }
    let result = write_repository(store, snapshot, &refs, to, progress);
    progress(Progress::Done);
    if result.is_err() {
        // Never leave a half-written repository that looks like a restore.
        if existed {
            if let Ok(entries) = std::fs::read_dir(to) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(to);
        }
    }
    result
}

fn write_repository(
    store: &Vault,
    snapshot: &Snapshot,
    refs: &BTreeMap<String, GitOid>,
    to: &Path,
    progress: &dyn Fn(Progress),
) -> Result<RestoreReport, RestoreError> {
    let write_err = |message: String| RestoreError::Write {
        path: to.to_path_buf(),
        message,
    };
    let repo = gix::init_bare(to).map_err(|e| write_err(e.to_string()))?;

    // Everything reachable from the refs; blobs are not read here.
    let mut placed: Vec<(GitOid, Placement)> = Vec::new();
    let mut seen: HashSet<GitOid> = refs.values().copied().collect();
    // Several refs may name one object: each is listed once.
    let mut stack: Vec<GitOid> = seen.iter().copied().collect();
    progress(Progress::Start("finding objects", 0));
    while let Some(oid) = stack.pop() {
        let placement = store
            .placement(&oid)?
            .ok_or(VaultError::MissingObject { oid })?;
        if placement.kind != ObjectKind::Blob {
            let (kind, data) = store.read_object(&oid)?;
            for child in children(oid, kind, &data)? {
                if seen.insert(child) {
                    stack.push(child);
                }
            }
        }
        placed.push((oid, placement));
        if placed.len().is_multiple_of(1024) {
            progress(Progress::At(placed.len() as u64));
        }
    }
    progress(Progress::Done);
    // Each path's versions in order: a vault delta base comes before the
    // versions built on it, so it can be the git delta base too.
    placed.sort_by_key(|(oid, p)| {
        (
            p.path.map_or(u64::MAX, |(k, _)| k),
            p.path.map_or(0, |(_, v)| v),
            *oid,
        )
    });

    let pack_dir = to.join("objects").join("pack");
    let mut writer = PackWriter::new(&pack_dir, Some(placed.len() as u64))
        .map_err(|e| write_err(e.to_string()))?;
    let mut bytes = 0u64;
    progress(Progress::Start("writing objects", placed.len() as u64));
    for (n, (oid, placement)) in placed.iter().enumerate() {
        if n.is_multiple_of(256) {
            progress(Progress::At(n as u64));
        }
        let (kind, data) = store.read_object(oid)?;
        let git_kind = from_kind(kind).ok_or_else(|| RestoreError::Decode {
            oid: *oid,
            kind: kind.as_str(),
            message: "not a git object".into(),
        })?;
        bytes += data.len() as u64;
        let added = match placement.base.filter(|b| seen.contains(b)) {
            Some(base) => {
                let (_, base_data) = store.read_object(&base)?;
                writer.add_delta(oid.0, git_kind, &data, base.0, &base_data)
            }
            None => writer.add(oid.0, git_kind, &data),
        };
        added.map_err(|e| write_err(e.to_string()))?;
    }
    let written = writer.finish().map_err(|e| write_err(e.to_string()))?;
    drop(repo);

    for reference in refs.keys() {
        gix::refs::FullName::try_from(reference.as_str()).map_err(|e| RestoreError::BadRef {
            reference: reference.clone(),
            target: e.to_string(),
        })?;
    }
    write_packed_refs(to, refs).map_err(write_err)?;
    write_head(to, refs).map_err(|e| write_err(format!("writing HEAD: {e}")))?;
    Ok(RestoreReport {
        snapshot: snapshot.id.to_string(),
        path: to.to_path_buf(),
        refs: refs.len(),
        objects: written.objects,
        bytes,
    })
}

/// Every ref into `packed-refs`, as `git clone` writes them. gix writes
/// packed refs only through a ref transaction, which creates and removes a
/// lock file per ref: 10,000 branches took seconds of file-system work. The
/// format is git's (`Documentation/technical/...`, `refs/packed-backend.c`):
/// a header, then `<id> <name>` lines sorted by name bytes; without the
/// `peeled` trait, readers peel tags themselves. Names are checked first.
fn write_packed_refs(to: &Path, refs: &BTreeMap<String, GitOid>) -> Result<(), String> {
    use std::fmt::Write as _;
    let mut text = String::from("# pack-refs with: sorted \n");
    // A BTreeMap of `String`s iterates in byte order, which is git's.
    for (name, oid) in refs {
        let _ = writeln!(text, "{} {name}", oid.to_hex());
    }
    if refs.is_empty() {
        return Ok(());
    }
    let path = to.join("packed-refs");
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Point HEAD at `main`, `master`, or else the first branch restored.
fn write_head(to: &Path, refs: &BTreeMap<String, GitOid>) -> std::io::Result<()> {
    match crate::browse::default_branch(refs) {
        Some(head) => std::fs::write(to.join("HEAD"), format!("ref: {head}\n")),
        None => Ok(()),
    }
}
