//! `prune`: find every record a kept snapshot or a document needs, then let
//! the vault remove the rest ([`Vault::prune_records`], which owns the
//! write order).
//!
//! Live means: each snapshot's ref chunks, every git object its refs reach
//! (commits, their trees and parents, tags, blobs) and every document
//! version. Nothing is kept only because a live record is a delta against
//! it: the vault re-encodes such a record whole. So what is held after a
//! prune is closed under "reaches", which backups rely on when they stop
//! their walk at an object the vault holds.
//!
//! The walk is strict: an object a kept snapshot reaches that is missing or
//! cannot be read stops the prune before anything is removed, since what
//! lies below it is then unknown and might be all that is left of it.

use std::collections::HashSet;

use crate::ids::{GitOid, ObjectKind, RecordId, RepoName};
use crate::progress::Progress;
use crate::restore::children;
use crate::vault::prune::{PruneOptions, PruneReport};
use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(
        "prune stopped, nothing removed: snapshot {snapshot} of {repo} reaches object {oid}, which is not in the vault (see `hookvault verify`)"
    )]
    Missing {
        repo: RepoName,
        snapshot: String,
        oid: GitOid,
    },
    #[error("prune stopped, nothing removed: snapshot {snapshot} of {repo}: {source}")]
    Unreadable {
        repo: RepoName,
        snapshot: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How much the walk found live.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Live {
    pub snapshots: u64,
    pub objects: u64,
    pub records: u64,
}

/// Why a walk stopped: an object not in the vault, or one that cannot be
/// read or decoded.
enum Stop {
    Missing(GitOid),
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
}

/// Mark live everything `roots` reach that `seen` does not hold yet. A
/// missing object stops the walk.
fn reach(
    vault: &Vault,
    roots: Vec<GitOid>,
    seen: &mut HashSet<GitOid>,
    live: &mut HashSet<RecordId>,
) -> Result<(), Stop> {
    let mut stack = roots;
    while let Some(oid) = stack.pop() {
        if !seen.insert(oid) {
            continue;
        }
        let unreadable = Stop::Unreadable;
        let Some(placement) = vault.placement(&oid).map_err(|e| unreadable(Box::new(e)))? else {
            return Err(Stop::Missing(oid));
        };
        live.insert(RecordId::from(oid));
        if placement.kind == ObjectKind::Blob {
            continue;
        }
        let (kind, data) = vault
            .read_object(&oid)
            .map_err(|e| unreadable(Box::new(e)))?;
        let below = children(oid, kind, &data).map_err(|e| unreadable(Box::new(e)))?;
        stack.extend(below.into_iter().filter(|c| !seen.contains(c)));
    }
    Ok(())
}

/// Every record a kept snapshot or a document needs.
pub fn live_records(
    vault: &Vault,
    progress: &dyn Fn(Progress),
) -> Result<(HashSet<RecordId>, Live), PruneError> {
    let mut live: HashSet<RecordId> = HashSet::new();
    let mut seen: HashSet<GitOid> = HashSet::new();
    let mut counts = Live::default();
    let repositories = vault.repositories()?;
    let mut total = 0;
    for repo in &repositories {
        total += vault.snapshots(repo)?.len() as u64;
    }
    progress(Progress::Start("walking kept snapshots", total));
    for repo in repositories {
        for snapshot in vault.snapshots(&repo)? {
            counts.snapshots += 1;
            progress(Progress::At(counts.snapshots));
            let unreadable =
                |source: Box<dyn std::error::Error + Send + Sync>| PruneError::Unreadable {
                    repo: repo.clone(),
                    snapshot: snapshot.id.to_hex(),
                    source,
                };
            live.extend(snapshot.body.refs.chunks.iter().copied());
            let refs = vault
                .snapshot_refs(&snapshot)
                .map_err(|e| unreadable(Box::new(e)))?;
            let roots = refs.into_values().collect();
            reach(vault, roots, &mut seen, &mut live).map_err(|stop| match stop {
                Stop::Missing(oid) => PruneError::Missing {
                    repo: repo.clone(),
                    snapshot: snapshot.id.to_hex(),
                    oid,
                },
                Stop::Unreadable(source) => unreadable(source),
            })?;
        }
    }
    progress(Progress::Done);
    live.extend(vault.document_records()?);
    counts.objects = seen.len() as u64;
    counts.records = live.len() as u64;
    Ok((live, counts))
}

/// Walk, then prune.
pub fn prune(
    vault: &Vault,
    options: PruneOptions,
    progress: &dyn Fn(Progress),
) -> Result<(Live, PruneReport), PruneError> {
    let (live, counts) = live_records(vault, progress)?;
    let report = vault.prune_records(&live, options, progress)?;
    Ok((counts, report))
}
