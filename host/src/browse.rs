//! Getting things back without restoring a repository: which snapshot a
//! user means (`--snapshot`, `--at`, `--before`), every value a ref ever
//! had (`log`), the refs that differ between two snapshots (`diff`), and
//! one file or tree of a snapshot (`cat`, `ls`).
//!
//! Everything here reads the vault's immutable files, so it works beside a
//! running `serve`. Ref changes are computed from the snapshots' ref tables
//! themselves, not taken from what the backup plugin said changed: two
//! ref tables are compared chunk by chunk, and a chunk both name (chunks
//! are content-addressed and cut by ref name) holds no difference, so only
//! the chunks that changed are read. Whether a moved branch was rewritten
//! is decided from the stored history (the old tip is not an ancestor of
//! the new one), or Bitbucket's own `forced` flag where it gave one.

use std::collections::{BTreeMap, HashSet, VecDeque};

use serde::Serialize;

use crate::ids::{GitOid, ObjectKind, RepoName};
use crate::vault::{Snapshot, Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("{repo} has no snapshot at or before {at}")]
    NothingAt { repo: RepoName, at: String },
    #[error("{repo} has no snapshot before {at}")]
    NothingBefore { repo: RepoName, at: String },
    #[error(
        "snapshot {snapshot} of {repo} has no ref {reference:?} (nor refs/heads/… or refs/tags/… of that name)"
    )]
    NoSuchRef {
        repo: RepoName,
        snapshot: String,
        reference: String,
    },
    #[error("snapshot {snapshot} of {repo} has no branch to read (give --ref)")]
    NoBranch { repo: RepoName, snapshot: String },
    #[error("{path:?} is not in {reference} of snapshot {snapshot}")]
    NoSuchPath {
        reference: String,
        snapshot: String,
        path: String,
    },
    #[error("{path:?} in {reference} of snapshot {snapshot} is a {found}, not a {wanted}")]
    WrongKind {
        reference: String,
        snapshot: String,
        path: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("{what} object {oid} cannot be decoded: {message}")]
    Decode {
        what: &'static str,
        oid: GitOid,
        message: String,
    },
}

/// Which snapshot of a repository a command means.
#[derive(Clone, Debug)]
pub enum Pick {
    /// The newest.
    Latest,
    /// By id or unique prefix (at least 4 hex digits).
    Id(String),
    /// The newest taken at or before this moment (ms since the epoch);
    /// the text is how the user wrote it, for messages.
    At(u64, String),
    /// The newest taken strictly before this moment.
    Before(u64, String),
}

/// The snapshot `pick` names.
pub fn pick(vault: &Vault, repo: &RepoName, pick: &Pick) -> Result<Snapshot, BrowseError> {
    Ok(match pick {
        Pick::Latest => vault.find_snapshot(repo, None)?,
        Pick::Id(prefix) => vault.find_snapshot(repo, Some(prefix))?,
        Pick::At(ms, text) => vault
            .snapshots(repo)?
            .into_iter()
            .rev()
            .find(|s| s.body.time_ms <= *ms)
            .ok_or_else(|| BrowseError::NothingAt {
                repo: repo.clone(),
                at: text.clone(),
            })?,
        Pick::Before(ms, text) => vault
            .snapshots(repo)?
            .into_iter()
            .rev()
            .find(|s| s.body.time_ms < *ms)
            .ok_or_else(|| BrowseError::NothingBefore {
                repo: repo.clone(),
                at: text.clone(),
            })?,
    })
}

/// What happened to a ref between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Created,
    /// Moved forward: the old tip is in the new tip's history.
    Updated,
    /// Moved to a history that does not contain the old tip (a force-push,
    /// or a tag moved), or Bitbucket said it was forced.
    Forced,
    Deleted,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Forced => "forced",
            Self::Deleted => "deleted",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefChange {
    #[serde(rename = "ref")]
    pub name: String,
    pub old: Option<GitOid>,
    pub new: Option<GitOid>,
    pub change: Change,
}

/// One value of one ref, as `hookvault log` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LogEntry {
    pub time_ms: u64,
    pub snapshot: String,
    pub delivery_id: String,
    pub event_key: String,
    pub actor: Option<String>,
    #[serde(flatten)]
    pub change: RefChange,
}

/// A ref's target in an earlier and a later snapshot (`None`: absent).
type Sides = (Option<GitOid>, Option<GitOid>);

/// The refs of `snapshot` that are not the same in `earlier` (`None`: an
/// empty table), by name; each side's value is `None` where it lacks the
/// ref. Only chunks the two tables do not share are read.
fn changed_refs(
    vault: &Vault,
    earlier: Option<&Snapshot>,
    later: &Snapshot,
) -> Result<BTreeMap<String, Sides>, BrowseError> {
    let earlier_chunks: HashSet<_> = earlier
        .map(|s| s.body.refs.chunks.iter().copied().collect())
        .unwrap_or_default();
    let later_chunks: HashSet<_> = later.body.refs.chunks.iter().copied().collect();
    let old = match earlier {
        Some(s) => vault.chunk_refs(s, |c| !later_chunks.contains(c))?,
        None => BTreeMap::new(),
    };
    let new = vault.chunk_refs(later, |c| !earlier_chunks.contains(c))?;
    let mut out = BTreeMap::new();
    for name in old.keys().chain(new.keys()) {
        let (a, b) = (old.get(name).copied(), new.get(name).copied());
        if a != b {
            out.insert(name.clone(), (a, b));
        }
    }
    Ok(out)
}

/// How each ref differs between `earlier` and `later`, names in order.
/// `forced_by_source` names refs the source reported as forced.
pub fn diff_snapshots(
    vault: &Vault,
    earlier: Option<&Snapshot>,
    later: &Snapshot,
    forced_by_source: &HashSet<&str>,
) -> Result<Vec<RefChange>, BrowseError> {
    let mut history = History::new(vault);
    changed_refs(vault, earlier, later)?
        .into_iter()
        .map(|(name, (old, new))| {
            let change = match (old, new) {
                (None, _) => Change::Created,
                (Some(_), None) => Change::Deleted,
                (Some(old), Some(new)) => {
                    if forced_by_source.contains(name.as_str()) || !history.contains(new, old)? {
                        Change::Forced
                    } else {
                        Change::Updated
                    }
                }
            };
            Ok(RefChange {
                name,
                old,
                new,
                change,
            })
        })
        .collect()
}

/// Every value the refs of `repo` have had, oldest first: the first
/// snapshot's refs as created, then each snapshot's changes against the
/// one before. `matches` picks the refs; `since_ms` leaves out snapshots
/// taken earlier (their changes still decide what later ones changed).
pub fn log(
    vault: &Vault,
    repo: &RepoName,
    matches: &dyn Fn(&str) -> bool,
    since_ms: Option<u64>,
) -> Result<Vec<LogEntry>, BrowseError> {
    let snapshots = vault.snapshots(repo)?;
    let mut out = Vec::new();
    let mut previous: Option<&Snapshot> = None;
    for snapshot in &snapshots {
        let earlier = previous.replace(snapshot);
        if since_ms.is_some_and(|since| snapshot.body.time_ms < since) {
            continue;
        }
        let forced: HashSet<&str> = snapshot
            .body
            .updates
            .iter()
            .filter(|u| u.forced)
            .map(|u| u.name.as_str())
            .collect();
        for change in diff_snapshots(vault, earlier, snapshot, &forced)? {
            if matches(&change.name) {
                out.push(LogEntry {
                    time_ms: snapshot.body.time_ms,
                    snapshot: snapshot.id.to_hex(),
                    delivery_id: snapshot.body.delivery_id.clone(),
                    event_key: snapshot.body.event_key.clone(),
                    actor: snapshot.body.actor.clone(),
                    change,
                });
            }
        }
    }
    Ok(out)
}

/// A ref pattern as `git for-each-ref` takes one: a wildmatch glob in
/// which `*` also matches `/` (`refs/heads/*`, `refs/tags/v1.*`), or a
/// name that matches itself and everything below it (`refs/heads/release`
/// matches `refs/heads/release/2.0`). A pattern without `refs/` is tried
/// as a branch and as a tag (`main`, `release/*`).
pub fn ref_matcher(pattern: &str) -> impl Fn(&str) -> bool + '_ {
    move |name: &str| {
        let matches = |p: &str| {
            name == p
                || name
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
                || gix_glob::wildmatch(p.into(), name.into(), gix_glob::wildmatch::Mode::empty())
        };
        if pattern.starts_with("refs/") {
            matches(pattern)
        } else {
            matches(&format!("refs/heads/{pattern}")) || matches(&format!("refs/tags/{pattern}"))
        }
    }
}

/// The ref `wanted` names in `refs` (a full name, or a branch or tag by its
/// short name); without one, the branch a restore points HEAD at.
pub fn resolve_ref<'a>(
    refs: &'a BTreeMap<String, GitOid>,
    wanted: Option<&str>,
) -> Option<(&'a String, &'a GitOid)> {
    match wanted {
        Some(name) => [
            name.to_string(),
            format!("refs/heads/{name}"),
            format!("refs/tags/{name}"),
        ]
        .iter()
        .find_map(|candidate| refs.get_key_value(candidate)),
        None => {
            let head = default_branch(refs)?;
            refs.get_key_value(head)
        }
    }
}

/// `main`, `master`, or else the first branch: what HEAD points at.
pub fn default_branch(refs: &BTreeMap<String, GitOid>) -> Option<&str> {
    ["refs/heads/main", "refs/heads/master"]
        .into_iter()
        .find(|r| refs.contains_key(*r))
        .or_else(|| {
            refs.keys()
                .map(String::as_str)
                .find(|r| r.starts_with("refs/heads/"))
        })
}

/// One entry of a tree, as `hookvault ls` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct TreeEntry {
    /// git's octal mode: `100644`, `100755`, `120000`, `40000`, `160000`.
    pub mode: String,
    pub kind: &'static str,
    pub id: GitOid,
    /// The path from the tree's root.
    pub path: String,
}

/// A file or directory of one ref of one snapshot.
#[derive(Debug)]
pub struct Located {
    /// The full ref name read.
    pub reference: String,
    pub snapshot: String,
    pub path: String,
    pub kind: ObjectKind,
    pub id: GitOid,
}

/// The object at `path` (`""` or `/` for the root) in the tree of the ref
/// `wanted` names in `snapshot`; tags are peeled to their commit.
pub fn locate(
    vault: &Vault,
    repo: &RepoName,
    snapshot: &Snapshot,
    wanted: Option<&str>,
    path: &str,
) -> Result<Located, BrowseError> {
    let refs = vault.snapshot_refs(snapshot)?;
    let (reference, tip) = resolve_ref(&refs, wanted).ok_or_else(|| match wanted {
        Some(name) => BrowseError::NoSuchRef {
            repo: repo.clone(),
            snapshot: snapshot.short_id(),
            reference: name.to_string(),
        },
        None => BrowseError::NoBranch {
            repo: repo.clone(),
            snapshot: snapshot.short_id(),
        },
    })?;
    let mut located = Located {
        reference: reference.clone(),
        snapshot: snapshot.short_id(),
        path: path.trim_matches('/').to_string(),
        kind: ObjectKind::Tree,
        id: peel_to_tree(vault, *tip)?,
    };
    let not_found = |located: &Located| BrowseError::NoSuchPath {
        reference: located.reference.clone(),
        snapshot: located.snapshot.clone(),
        path: located.path.clone(),
    };
    let components: Vec<String> = located
        .path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    for component in &components {
        if located.kind != ObjectKind::Tree {
            return Err(not_found(&located));
        }
        let (_, data) = vault.read_object(&located.id)?;
        let tree = decode_tree(located.id, &data)?;
        let entry = tree
            .entries
            .iter()
            .find(|e| e.filename == component.as_bytes())
            .ok_or_else(|| not_found(&located))?;
        if entry.mode.is_commit() {
            // A submodule's commit lives in another repository.
            return Err(not_found(&located));
        }
        located.id = crate::git::from_gix(entry.oid);
        located.kind = if entry.mode.is_tree() {
            ObjectKind::Tree
        } else {
            ObjectKind::Blob
        };
    }
    Ok(located)
}

/// The bytes of the file at `located`.
pub fn cat(vault: &Vault, located: &Located) -> Result<std::sync::Arc<Vec<u8>>, BrowseError> {
    if located.kind != ObjectKind::Blob {
        return Err(BrowseError::WrongKind {
            reference: located.reference.clone(),
            snapshot: located.snapshot.clone(),
            path: located.path.clone(),
            found: "directory",
            wanted: "file",
        });
    }
    Ok(vault.read_object(&located.id)?.1)
}

/// The entries of the tree (or the one file) at `located`; with
/// `recursive`, every entry below it, depth first, paths in git's order.
pub fn ls(
    vault: &Vault,
    located: &Located,
    recursive: bool,
) -> Result<Vec<TreeEntry>, BrowseError> {
    if located.kind == ObjectKind::Blob {
        let (_, data) = vault.read_object(&located.id)?;
        return Ok(vec![TreeEntry {
            mode: "100644".into(),
            kind: "blob",
            id: located.id,
            path: format!("{} ({} bytes)", located.path, data.len()),
        }]);
    }
    let mut out = Vec::new();
    list_tree(vault, located.id, &located.path, recursive, &mut out)?;
    Ok(out)
}

fn list_tree(
    vault: &Vault,
    oid: GitOid,
    prefix: &str,
    recursive: bool,
    out: &mut Vec<TreeEntry>,
) -> Result<(), BrowseError> {
    let (_, data) = vault.read_object(&oid)?;
    let tree = decode_tree(oid, &data)?;
    for entry in &tree.entries {
        let name = String::from_utf8_lossy(entry.filename);
        let path = if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let kind = if entry.mode.is_tree() {
            "tree"
        } else if entry.mode.is_commit() {
            "commit"
        } else {
            "blob"
        };
        let id = crate::git::from_gix(entry.oid);
        out.push(TreeEntry {
            mode: format!("{:o}", entry.mode.value()),
            kind,
            id,
            path: path.clone(),
        });
        if recursive && entry.mode.is_tree() {
            list_tree(vault, id, &path, true, out)?;
        }
    }
    Ok(())
}

fn decode_tree(oid: GitOid, data: &[u8]) -> Result<gix::objs::TreeRef<'_>, BrowseError> {
    gix::objs::TreeRef::from_bytes(data, gix::hash::Kind::Sha1).map_err(|e| BrowseError::Decode {
        what: "tree",
        oid,
        message: e.to_string(),
    })
}

/// The tree of the commit `oid` names, through any tags.
fn peel_to_tree(vault: &Vault, mut oid: GitOid) -> Result<GitOid, BrowseError> {
    loop {
        let (kind, data) = vault.read_object(&oid)?;
        match kind {
            ObjectKind::Tag => oid = decode_tag_target(oid, &data)?,
            ObjectKind::Commit => return Ok(decode_commit(oid, &data)?.0),
            ObjectKind::Tree => return Ok(oid),
            other => {
                return Err(BrowseError::Decode {
                    what: "ref target",
                    oid,
                    message: format!("a {} has no tree", other.as_str()),
                });
            }
        }
    }
}

fn decode_tag_target(oid: GitOid, data: &[u8]) -> Result<GitOid, BrowseError> {
    let tag = gix::objs::TagRef::from_bytes(data, gix::hash::Kind::Sha1).map_err(|e| {
        BrowseError::Decode {
            what: "tag",
            oid,
            message: e.to_string(),
        }
    })?;
    Ok(crate::git::from_gix(&tag.target()))
}

/// A commit's tree, parents and committer time (seconds).
fn decode_commit(oid: GitOid, data: &[u8]) -> Result<(GitOid, Vec<GitOid>, i64), BrowseError> {
    let commit = gix::objs::CommitRef::from_bytes(data, gix::hash::Kind::Sha1).map_err(|e| {
        BrowseError::Decode {
            what: "commit",
            oid,
            message: e.to_string(),
        }
    })?;
    let time = commit.committer().map(|c| c.seconds()).unwrap_or(0);
    Ok((
        crate::git::from_gix(&commit.tree()),
        commit.parents().map(|p| crate::git::from_gix(&p)).collect(),
        time,
    ))
}

/// Ancestry questions over the stored history.
struct History<'v> {
    vault: &'v Vault,
}

/// Commits more than this much older than the commit searched for are not
/// followed further (committer clocks drift; git's own walks allow a day).
const CLOCK_SLOP_SECONDS: i64 = 86_400;

impl<'v> History<'v> {
    fn new(vault: &'v Vault) -> Self {
        Self { vault }
    }

    /// What a ref target is, through tags: a commit's id and time, or
    /// `None` for anything else.
    fn commit_of(&mut self, mut oid: GitOid) -> Result<Option<(GitOid, i64)>, BrowseError> {
        loop {
            let (kind, data) = self.vault.read_object(&oid)?;
            match kind {
                ObjectKind::Tag => oid = decode_tag_target(oid, &data)?,
                ObjectKind::Commit => return Ok(Some((oid, decode_commit(oid, &data)?.2))),
                _ => return Ok(None),
            }
        }
    }

    /// Whether the history of `tip` contains `old` (both ref targets).
    fn contains(&mut self, tip: GitOid, old: GitOid) -> Result<bool, BrowseError> {
        let (Some((tip, _)), Some((old, old_time))) = (self.commit_of(tip)?, self.commit_of(old)?)
        else {
            return Ok(tip == old);
        };
        let mut seen = HashSet::from([tip]);
        let mut queue = VecDeque::from([tip]);
        while let Some(oid) = queue.pop_front() {
            if oid == old {
                return Ok(true);
            }
            let (_, data) = self.vault.read_object(&oid)?;
            let (_, parents, time) = decode_commit(oid, &data)?;
            if time + CLOCK_SLOP_SECONDS < old_time {
                continue;
            }
            for parent in parents {
                if seen.insert(parent) {
                    queue.push_back(parent);
                }
            }
        }
        Ok(false)
    }
}
