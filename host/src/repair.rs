//! `hookvault repair`: find every object the vault cannot give back (a
//! damaged record, a record built on one, an object a snapshot reaches that
//! no index names), fetch each repository that reaches one from its source
//! in full, and store again every such object the source still has
//! ([`Vault::replace_records`] owns the write order). What the source no
//! longer has (history force-pushed away and collected) is reported as
//! lost, with the snapshots that reach it. Documents and ref tables exist
//! only in the vault: repair reports them, it cannot fetch them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::git::{Remote, Workspace};
use crate::ids::{GitOid, RecordId, RepoName};
use crate::plugins::BackupDeps;
use crate::progress::Progress;
use crate::vault::{Vault, VaultError};
use crate::verify::{self, ProblemKind};

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("repair of {repo}: source {source_name:?} (of its latest snapshot) is not configured")]
    NoSource { repo: RepoName, source_name: String },
    #[error("repair of {repo}: fetching from its source: {message}")]
    Fetch { repo: RepoName, message: String },
}

/// An object repair could not store again.
#[derive(Clone, Debug, Serialize)]
pub struct Lost {
    pub object: String,
    pub why: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Objects found damaged or missing.
    pub damaged: usize,
    /// Repositories fetched in full from their source.
    pub fetched: Vec<String>,
    /// Objects stored again (or, dry, that would be).
    pub repaired: Vec<String>,
    pub lost: Vec<Lost>,
}

/// What one `verify --read-data` found to get back: objects, and the
/// repositories whose snapshots reach them.
fn damage(
    vault: &Vault,
    only: Option<&RepoName>,
    progress: &dyn Fn(Progress),
) -> Result<(BTreeSet<GitOid>, BTreeSet<RepoName>), RepairError> {
    let options = verify::Options {
        read_data: true,
        repo: only.cloned(),
    };
    let found = verify::verify(vault, &options, progress)?;
    Ok(affected(vault, &found, only)?)
}

/// The objects a verify report finds damaged or missing, and the
/// repositories whose snapshots reach them (every repository when a
/// damaged record was found that no snapshot walk met).
pub fn affected(
    vault: &Vault,
    found: &verify::Report,
    only: Option<&RepoName>,
) -> Result<(BTreeSet<GitOid>, BTreeSet<RepoName>), VaultError> {
    let mut bad: BTreeSet<GitOid> = BTreeSet::new();
    let mut repos: BTreeSet<RepoName> = BTreeSet::new();
    for problem in &found.problems {
        if !matches!(
            problem.kind,
            ProblemKind::DamagedRecord | ProblemKind::DamagedBase | ProblemKind::MissingObject
        ) {
            continue;
        }
        if let Some(oid) = problem
            .object
            .as_deref()
            .and_then(|o| GitOid::from_hex(o).ok())
        {
            bad.insert(oid);
        }
        if let Some(repo) = problem
            .repository
            .as_deref()
            .and_then(|r| RepoName::parse(r).ok())
        {
            repos.insert(repo);
        }
    }
    for id in &found.damaged_snapshots {
        if let Some(hash) = crate::vault::backend::FileName::parse(id).and_then(|n| n.hash())
            && let Some(snapshot) = vault.find_snapshot_by_id(&crate::ids::SnapshotId(hash))?
        {
            repos.insert(snapshot.body.repository.clone());
        }
    }
    if repos.is_empty() && !bad.is_empty() {
        repos.extend(vault.repositories()?);
    }
    repos.retain(|r| only.is_none_or(|o| o == r));
    Ok((bad, repos))
}

/// Where `verify` notes the repositories whose snapshots reach damage, so
/// that `serve` repairs each after its next backup.
fn marker(store_dir: &Path) -> PathBuf {
    store_dir.join("damaged.json")
}

#[derive(Debug, Default, Serialize, serde::Deserialize)]
struct Marked {
    repositories: BTreeSet<RepoName>,
}

/// The repositories noted as reaching damage.
pub fn marked(store_dir: &Path) -> BTreeSet<RepoName> {
    std::fs::read(marker(store_dir))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Marked>(&bytes).ok())
        .map(|m| m.repositories)
        .unwrap_or_default()
}

fn write_marked(store_dir: &Path, repositories: BTreeSet<RepoName>) -> std::io::Result<()> {
    let path = marker(store_dir);
    if repositories.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let bytes =
        serde_json::to_vec_pretty(&Marked { repositories }).map_err(std::io::Error::other)?;
    let mut file = tempfile::NamedTempFile::new_in(store_dir)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.as_file().sync_all()?;
    file.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// Note `repos` as reaching damage (beside those noted already).
pub fn mark(store_dir: &Path, repos: &BTreeSet<RepoName>) -> std::io::Result<()> {
    let mut all = marked(store_dir);
    all.extend(repos.iter().cloned());
    write_marked(store_dir, all)
}

/// Forget the note for `repo`.
pub fn unmark(store_dir: &Path, repo: &RepoName) -> std::io::Result<()> {
    let mut all = marked(store_dir);
    if all.remove(repo) {
        write_marked(store_dir, all)?;
    }
    Ok(())
}

/// After a backup of `repo` in `serve`: when `verify` noted that its
/// snapshots reach damage, repair it from the source now, and drop the
/// note once a repair ran (what it could not get back is logged: the
/// source will not have it later either).
pub fn after_backup(deps: &BackupDeps, repo: &RepoName) {
    if !marked(&deps.store_dir).contains(repo) {
        return;
    }
    match repair(deps, Some(repo), false, &crate::progress::quiet) {
        Ok(report) => {
            if report.lost.is_empty() {
                tracing::info!(
                    repaired = report.repaired.len(),
                    "damage verify found was repaired from the source"
                );
            } else {
                tracing::error!(
                    repaired = report.repaired.len(),
                    lost = report.lost.len(),
                    "damage verify found was repaired where the source still has it; the rest is lost (see `hookvault verify`)"
                );
            }
            if let Err(e) = unmark(&deps.store_dir, repo) {
                tracing::warn!(error = %e, "cannot update the note of damaged repositories");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "repair after backup failed; trying again after the next one")
        }
    }
}

/// Fetch `repo` whole from its source into a new workspace.
fn fetch_whole(deps: &BackupDeps, repo: &RepoName) -> Result<Option<Workspace>, RepairError> {
    let Some(latest) = deps.store.latest_snapshot(repo)? else {
        return Ok(None);
    };
    let source_name = latest.body.source.clone();
    let source = deps
        .sources
        .get(&source_name)
        .ok_or_else(|| RepairError::NoSource {
            repo: repo.clone(),
            source_name,
        })?;
    let remote = Remote::new(
        repo,
        source.config.clone_url(repo),
        source.authorization.clone(),
    );
    let fetch_err = |message: String| RepairError::Fetch {
        repo: repo.clone(),
        message,
    };
    let workspace =
        Workspace::create(&deps.work_dir, repo).map_err(|e| fetch_err(e.to_string()))?;
    // No `have`s and nothing held: every object comes from the source, none
    // from the vault.
    workspace
        .fetch(&remote, &BTreeMap::new(), &|_| false, &|_| None)
        .map_err(|e| fetch_err(e.to_string()))?;
    Ok(Some(workspace))
}

/// Repair what `verify --read-data` (of `only`, or of everything) finds.
/// An object stored again can reveal more that is missing below it (a
/// lost index file takes a commit's tree and blobs too), so it checks and
/// repairs again until a round stores nothing new.
pub fn repair(
    deps: &BackupDeps,
    only: Option<&RepoName>,
    dry_run: bool,
    progress: &dyn Fn(Progress),
) -> Result<RepairReport, RepairError> {
    let vault = &deps.store;
    let mut report = RepairReport {
        dry_run,
        ..RepairReport::default()
    };
    let mut workspaces: BTreeMap<RepoName, Option<Workspace>> = BTreeMap::new();
    let mut seen: BTreeSet<GitOid> = BTreeSet::new();
    let mut repaired: BTreeSet<GitOid> = BTreeSet::new();
    let mut lost: BTreeMap<GitOid, BTreeSet<RepoName>> = BTreeMap::new();
    loop {
        let (bad, repos) = damage(vault, only, progress)?;
        let fresh: Vec<GitOid> = bad.into_iter().filter(|o| seen.insert(*o)).collect();
        if fresh.is_empty() {
            break;
        }
        for repo in &repos {
            if !workspaces.contains_key(repo) {
                let workspace = fetch_whole(deps, repo)?;
                if workspace.is_some() {
                    report.fetched.push(repo.to_string());
                }
                workspaces.insert(repo.clone(), workspace);
            }
        }
        let mut objects: Vec<(RecordId, crate::ids::ObjectKind, Vec<u8>)> = Vec::new();
        for oid in fresh {
            let found = workspaces
                .values()
                .flatten()
                .find_map(|w| w.read(&oid).ok());
            match found {
                Some((kind, data)) => {
                    repaired.insert(oid);
                    objects.push((RecordId::from(oid), kind, data));
                }
                None => {
                    lost.insert(oid, repos.clone());
                }
            }
        }
        // A dry run cannot see below what it did not store.
        if objects.is_empty() || dry_run {
            break;
        }
        vault.replace_records(&objects)?;
    }
    report.damaged = seen.len();
    report.repaired = repaired.iter().map(|oid| oid.to_hex()).collect();
    for (oid, repos) in lost {
        let only_here = vault.placement(&oid)?.map(|p| p.kind).filter(|k| {
            matches!(
                k,
                crate::ids::ObjectKind::Document | crate::ids::ObjectKind::Refs
            )
        });
        let why = match only_here {
            Some(kind) => format!("a {} record: only the vault holds it", kind.as_str()),
            None if repos.is_empty() => {
                "no snapshot reaches it, and no repository is backed up".into()
            }
            None => format!(
                "not in the source of {} any more",
                repos
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        report.lost.push(Lost {
            object: oid.to_hex(),
            why,
        });
    }
    Ok(report)
}
