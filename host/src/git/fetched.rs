//! The workspace of one backup: a temporary bare repository that holds
//! only the pack this backup's fetch received (completed from the vault),
//! walked to list what the vault lacks and read to copy it. It is removed
//! when the backup ends; one killed mid-backup is removed when `serve`
//! next starts (`remove_leftovers`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use gix::ObjectId;

use super::chains::Chains;
use super::{BaseLookup, Fetch, GitError, ObjectInfo, Remote, from_gix, to_gix, to_kind};
use crate::ids::{GitOid, ObjectKind, RepoName};

/// Delta bases gix keeps for the walk (the copy reads through `Chains`).
const PACK_CACHE_BYTES: usize = 24 << 20;

/// A backup's temporary repository.
pub struct Workspace {
    repo_name: String,
    /// Removed with everything in it when the workspace is dropped.
    dir: tempfile::TempDir,
    repo: gix::Repository,
    /// Opened at the first read, after the fetch wrote the pack.
    chains: std::cell::RefCell<Option<Chains>>,
}

/// A tree's entries: id by name.
type Entries = HashMap<Vec<u8>, ObjectId>;

/// What one walk met last at each path, for [`ObjectInfo::like`].
#[derive(Default)]
struct Lately {
    at: HashMap<String, ObjectId>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace")
            .field("repo", &self.repo_name)
            .field("path", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Remove every workspace left under `work_dir` by a process that was
/// killed mid-backup. Call it only where no backup can be running: one
/// `serve` owns a store, and it calls this before its first backup.
/// Returns how many were removed.
pub fn remove_leftovers(work_dir: &Path) -> Result<usize, GitError> {
    let entries = match std::fs::read_dir(work_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(GitError::Io {
                path: work_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|source| GitError::Io {
            path: work_dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        std::fs::remove_dir_all(&path).map_err(|source| GitError::Io {
            path: path.clone(),
            source,
        })?;
        removed += 1;
    }
    Ok(removed)
}

impl Workspace {
    /// Create an empty workspace for `repo` under `work_dir`.
    pub fn create(work_dir: &Path, repo: &RepoName) -> Result<Self, GitError> {
        std::fs::create_dir_all(work_dir).map_err(|source| GitError::Io {
            path: work_dir.to_path_buf(),
            source,
        })?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.{}.", repo.owner(), repo.slug()))
            .suffix(".git")
            .tempdir_in(work_dir)
            .map_err(|source| GitError::Io {
                path: work_dir.to_path_buf(),
                source,
            })?;
        let err = |source: gix::Error| GitError::Workspace {
            repo: repo.to_string(),
            path: dir.path().to_path_buf(),
            source: Box::new(source),
        };
        let mut handle = gix::init_bare(dir.path()).map_err(err)?;
        // gix's defaults cache up to 96 MiB of delta bases; the walk reads
        // each tree once, in history order, so a smaller cache costs little
        // time and bounds `serve`'s memory.
        handle.objects.set_pack_cache(|| {
            Box::new(gix::odb::pack::cache::lru::StaticLinkedList::<64>::new(
                PACK_CACHE_BYTES,
            ))
        });
        Ok(Self {
            repo_name: repo.to_string(),
            dir,
            repo: handle,
            chains: std::cell::RefCell::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn pack_dir(&self) -> PathBuf {
        self.dir.path().join("objects/pack")
    }

    /// Fetch from `remote` into this workspace (see `Remote::fetch`).
    pub fn fetch(
        &self,
        remote: &Remote,
        previous: &BTreeMap<String, GitOid>,
        held: &dyn Fn(&GitOid) -> bool,
        bases: BaseLookup<'_>,
    ) -> Result<Fetch, GitError> {
        remote.fetch(&self.pack_dir(), previous, held, bases)
    }

    fn walk_err(&self, source: gix::Error) -> GitError {
        GitError::Walk {
            repo: self.repo_name.clone(),
            source: Box::new(source),
        }
    }

    /// The object a tag points at.
    fn tag_target(&self, tag: ObjectId) -> Result<ObjectId, GitError> {
        Ok(self
            .repo
            .find_tag(tag)
            .map_err(|e| self.walk_err(e))?
            .target_id()
            .map_err(|e| self.walk_err(e))?
            .detach())
    }

    /// Every object reachable from `tips` that is neither reachable from
    /// `known` (the previous snapshot's tips; ids the workspace lacks
    /// are ignored) nor already held (`have`, asked of the vault), each listed
    /// once with its path.
    ///
    /// Objects are listed children first: a blob or subtree before the tree
    /// that names it, a tree before its commit, a tag's target before the
    /// tag. Stored in this order, a tree the vault holds has everything below
    /// it stored too, so the walk stops at anything `have` says is held.
    pub fn walk(
        &self,
        tips: &[GitOid],
        known: &[GitOid],
        have: &dyn Fn(&GitOid) -> bool,
    ) -> Result<Vec<ObjectInfo>, GitError> {
        use gix::object::Kind;
        let repo = &self.repo;
        let mut out: Vec<ObjectInfo> = Vec::new();
        let mut tags: Vec<ObjectInfo> = Vec::new();
        let mut seen: HashSet<ObjectId> = HashSet::new();
        let mut lately = Lately::default();

        // The commit walk stops at the known tips' commits.
        let mut hidden_commits = Vec::new();
        for oid in known {
            // The commit walk stops at held commits anyway, and a held id is
            // usually not in the workspace: asking for it would make the
            // object database rescan its packs once per id.
            if have(oid) {
                continue;
            }
            let mut id = to_gix(oid);
            // Peel known tags down to their commit.
            while let Some(header) = repo.try_find_header(id).map_err(|e| self.walk_err(e))? {
                match header.kind() {
                    Kind::Tag => id = self.tag_target(id)?,
                    Kind::Commit => {
                        hidden_commits.push(id);
                        break;
                    }
                    Kind::Tree | Kind::Blob => break,
                }
            }
        }

        let mut commit_tips = Vec::new();
        for oid in tips {
            let mut id = to_gix(oid);
            loop {
                if seen.contains(&id) || have(&from_gix(&id)) {
                    break;
                }
                let header = repo.find_header(id).map_err(|e| self.walk_err(e))?;
                match header.kind() {
                    Kind::Tag => {
                        seen.insert(id);
                        // Listed after everything else: after its target.
                        tags.push(ObjectInfo {
                            id: from_gix(&id),
                            kind: ObjectKind::Tag,
                            size: header.size(),
                            path: None,
                            like: None,
                        });
                        id = self.tag_target(id)?;
                    }
                    Kind::Commit => {
                        commit_tips.push(id);
                        break;
                    }
                    Kind::Tree => {
                        self.walk_tree(id, String::new(), have, &mut seen, &mut lately, &mut out)?;
                        break;
                    }
                    Kind::Blob => {
                        seen.insert(id);
                        out.push(ObjectInfo {
                            id: from_gix(&id),
                            kind: ObjectKind::Blob,
                            size: header.size(),
                            path: None,
                            like: None,
                        });
                        break;
                    }
                }
            }
        }

        if !commit_tips.is_empty() {
            // Oldest first, by commit time: each path's versions are then
            // met (and numbered by the vault) in the order history made
            // them, so a version's delta base is the version before it, not
            // one from another era of another branch.
            let walk = repo
                .rev_walk(commit_tips)
                .with_hidden(hidden_commits)
                .sorting(gix::revision::walk::Sorting::ByCommitTime(
                    gix::traverse::commit::simple::CommitTimeOrder::NewestFirst,
                ))
                // A held commit has its whole history in the vault (and
                // usually not in the workspace): stop there.
                .selected(|id| !have(&from_gix(id)))
                .map_err(|e| self.walk_err(e))?;
            let mut commits = Vec::new();
            for info in walk {
                let info = info.map_err(|e| self.walk_err(e))?;
                commits.push(info.id);
            }
            for id in commits.into_iter().rev() {
                if !seen.insert(id) || have(&from_gix(&id)) {
                    continue;
                }
                let commit = repo.find_commit(id).map_err(|e| self.walk_err(e))?;
                let size = commit.data.len() as u64;
                let tree = commit.tree_id().map_err(|e| self.walk_err(e))?.detach();
                self.walk_tree(tree, String::new(), have, &mut seen, &mut lately, &mut out)?;
                out.push(ObjectInfo {
                    id: from_gix(&id),
                    kind: ObjectKind::Commit,
                    size,
                    path: None,
                    like: None,
                });
            }
        }
        // A tag pointing at a tag comes after it: list tags innermost first.
        tags.reverse();
        out.extend(tags);
        Ok(out)
    }

    /// List a tree and every object below it that is not seen or held,
    /// children before the tree that names them, with paths, and for each
    /// the object it probably resembles (see [`ObjectInfo::like`]).
    fn walk_tree(
        &self,
        root: ObjectId,
        root_path: String,
        have: &dyn Fn(&GitOid) -> bool,
        seen: &mut HashSet<ObjectId>,
        lately: &mut Lately,
        out: &mut Vec<ObjectInfo>,
    ) -> Result<(), GitError> {
        enum Step {
            /// A tree to list, and the tree last met at its path.
            Enter(ObjectId, String, Option<ObjectId>),
            Leave(ObjectId, String, u64, Option<ObjectId>),
        }
        let before = lately.at.insert(root_path.clone(), root);
        if !seen.insert(root) || have(&from_gix(&root)) {
            return Ok(());
        }
        let mut stack = vec![Step::Enter(root, root_path, before)];
        while let Some(step) = stack.pop() {
            let (id, path, before) = match step {
                Step::Leave(id, path, size, before) => {
                    out.push(ObjectInfo {
                        id: from_gix(&id),
                        kind: ObjectKind::Tree,
                        size,
                        path: Some(path),
                        like: before.map(|b| from_gix(&b)),
                    });
                    continue;
                }
                Step::Enter(id, path, before) => (id, path, before),
            };
            let tree = self.repo.find_tree(id).map_err(|e| self.walk_err(e))?;
            let decoded = tree.decode().map_err(|e| self.walk_err(e))?;
            // The tree last met here, decoded only if one of its entries is
            // needed: its paths were not recorded when it was met under
            // another path (a directory renamed).
            let mut earlier: Option<Option<Entries>> = None;
            let mut subtrees = Vec::new();
            for entry in &decoded.entries {
                let child = entry.oid.to_owned();
                // Submodule gitlinks point into another repository.
                if entry.mode.is_commit() {
                    continue;
                }
                let child_path = if path.is_empty() {
                    entry.filename.to_string()
                } else {
                    format!("{path}/{}", entry.filename)
                };
                let mut last = lately.at.insert(child_path.clone(), child);
                if last.is_none()
                    && let Some(before) = before
                {
                    let listed = earlier.get_or_insert_with(|| self.entries_of(before));
                    last = listed
                        .as_ref()
                        .and_then(|entries| entries.get(&**entry.filename).copied());
                }
                if !seen.insert(child) || have(&from_gix(&child)) {
                    continue;
                }
                let last = last.filter(|oid| *oid != child);
                if entry.mode.is_tree() {
                    subtrees.push(Step::Enter(child, child_path, last));
                } else {
                    let header = self.repo.find_header(child).map_err(|e| self.walk_err(e))?;
                    out.push(ObjectInfo {
                        id: from_gix(&child),
                        kind: to_kind(header.kind()),
                        size: header.size(),
                        path: Some(child_path),
                        like: last.map(|oid| from_gix(&oid)),
                    });
                }
            }
            // Leave after every subtree below has been listed.
            stack.push(Step::Leave(id, path, tree.data.len() as u64, before));
            stack.extend(subtrees);
        }
        Ok(())
    }

    /// A tree's entries (name and id), if the workspace has it: a tree
    /// from an earlier backup is in the vault only.
    fn entries_of(&self, tree: ObjectId) -> Option<Entries> {
        let tree = self
            .repo
            .try_find_object(tree)
            .ok()??
            .try_into_tree()
            .ok()?;
        let decoded = tree.decode().ok()?;
        Some(
            decoded
                .entries
                .iter()
                .map(|e| (e.filename.to_vec(), e.oid.to_owned()))
                .collect(),
        )
    }

    /// An object's kind and content (without git's header).
    /// Reads go through `Chains` (one delta per object in history order);
    /// anything it cannot resolve by itself is read by gix's lookup.
    pub fn read(&self, oid: &GitOid) -> Result<(ObjectKind, Vec<u8>), GitError> {
        let mut chains = self.chains.borrow_mut();
        if chains.is_none() {
            let pack_dir = self.pack_dir();
            *chains = Some(Chains::open(&pack_dir).map_err(|source| GitError::Io {
                path: pack_dir.clone(),
                source,
            })?);
        }
        if let Some(found) = chains.as_mut().and_then(|c| c.read(oid)) {
            return Ok(found);
        }
        let object = self
            .repo
            .find_object(to_gix(oid))
            .map_err(|source| GitError::Object {
                repo: self.repo_name.clone(),
                oid: oid.to_hex(),
                source: Box::new(source),
            })?;
        Ok((to_kind(object.kind), object.detach().data))
    }
}

/// Local refs of any repository (used by tests and verification).
pub fn local_refs(path: &Path) -> Result<HashMap<String, GitOid>, GitError> {
    let err = |source: gix::Error| GitError::Workspace {
        repo: path.display().to_string(),
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let repo = gix::open(path).map_err(err)?;
    let mut refs = HashMap::new();
    for r in repo.references().map_err(err)?.all().map_err(err)? {
        let r = r.map_err(err)?;
        if let Some(id) = r.try_id() {
            refs.insert(r.name().as_bstr().to_string(), from_gix(&id));
        }
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit at a given time (the walk orders commits by time).
    fn commit_at(dir: &Path, when: u32, message: &str) {
        let date = format!("{} +0000", 1_700_000_000 + when);
        let out = std::process::Command::new("git")
            .args(["commit", "-q", "-m", message])
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "a")
            .env("GIT_AUTHOR_EMAIL", "a@example.com")
            .env("GIT_COMMITTER_NAME", "a")
            .env("GIT_COMMITTER_EMAIL", "a@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn blob_at(dir: &Path, rev: &str) -> GitOid {
        let hex = crate::git::test_git(dir, &["rev-parse", rev]);
        GitOid::from_hex(String::from_utf8_lossy(&hex).trim()).expect("oid")
    }

    /// A directory renamed unchanged, then a file in it changed: the walk
    /// names the file's content before the rename, and the tree's; a new
    /// path names nothing.
    #[test]
    fn the_walk_names_what_a_path_held_before_a_rename() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("old")).expect("mkdir");
        std::fs::create_dir_all(src.join("note")).expect("mkdir");
        crate::git::test_git(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("old/x.rs"), "fn x() {}\n".repeat(50)).expect("write");
        std::fs::write(src.join("old/keep.txt"), "kept\n").expect("write");
        std::fs::write(src.join("note/README"), "first readme\n").expect("write");
        crate::git::test_git(&src, &["add", "-A"]);
        commit_at(&src, 1, "one");
        let (x_before, old_tree) = (blob_at(&src, "HEAD:old/x.rs"), blob_at(&src, "HEAD:old"));
        crate::git::test_git(&src, &["mv", "old", "new"]);
        commit_at(&src, 2, "two");
        std::fs::write(src.join("new/x.rs"), "fn x() {}\n".repeat(51)).expect("write");
        std::fs::create_dir_all(src.join("other")).expect("mkdir");
        std::fs::write(src.join("other/README"), "second readme\n").expect("write");
        crate::git::test_git(&src, &["add", "-A"]);
        commit_at(&src, 3, "three");
        let (x_after, new_tree) = (blob_at(&src, "HEAD:new/x.rs"), blob_at(&src, "HEAD:new"));
        let other_readme = blob_at(&src, "HEAD:other/README");
        let tip = blob_at(&src, "HEAD");

        let name = RepoName::parse("acme/app").expect("name");
        let workspace = Workspace::create(&tmp.path().join("fetch"), &name).expect("workspace");
        let target = workspace.path().display().to_string();
        crate::git::test_git(&src, &["push", "-q", &target, "main"]);
        let listed = workspace.walk(&[tip], &[], &|_| false).expect("walk");
        let like = |id: &GitOid| {
            listed
                .iter()
                .find(|o| o.id == *id)
                .map(|o| (o.path.clone(), o.like))
                .expect("listed")
        };
        assert_eq!(like(&x_after), (Some("new/x.rs".into()), Some(x_before)));
        assert_eq!(like(&new_tree), (Some("new".into()), Some(old_tree)));
        assert_eq!(like(&other_readme), (Some("other/README".into()), None));
        assert_eq!(like(&x_before), (Some("old/x.rs".into()), None));
    }

    #[test]
    fn workspaces_are_removed_when_dropped_and_leftovers_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("fetch");
        let repo = RepoName::parse("acme/app").expect("name");
        let dropped = Workspace::create(&work, &repo).expect("create");
        let dropped_path = dropped.path().to_path_buf();
        assert!(dropped_path.join("objects/pack").is_dir());
        drop(dropped);
        assert!(!dropped_path.exists());

        // A killed process never drops its workspace: `forget` stands in.
        let killed = Workspace::create(&work, &repo).expect("create");
        let killed_path = killed.path().to_path_buf();
        std::fs::write(killed_path.join("objects/pack/tmp_pack_x"), b"half").expect("write");
        std::mem::forget(killed);
        assert_eq!(remove_leftovers(&work).expect("remove"), 1);
        assert!(!killed_path.exists());
        assert_eq!(remove_leftovers(&work).expect("remove"), 0);
        assert_eq!(
            remove_leftovers(&dir.path().join("absent")).expect("remove"),
            0
        );
    }
}
