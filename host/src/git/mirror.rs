//! The git source: a bare mirror cache per repository, fetched with gix over
//! smart HTTP. Credentials go into an in-memory `Authorization` header for
//! the one connection; they are never written to disk and never reach a
//! plugin. Everything here blocks: call it from a blocking thread.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::protocol::handshake::Ref;
use gix::remote::Direction;

use crate::config::SecretString;
use crate::ids::{GitOid, ObjectKind, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("mirror of {repo} at {path}: {source}")]
    Mirror {
        repo: String,
        path: PathBuf,
        source: Box<gix::Error>,
    },
    #[error("fetching {repo} from {url}: {source}")]
    Fetch {
        repo: String,
        url: String,
        source: Box<gix::Error>,
    },
    #[error("fetching {repo} from {url}: the transport is not HTTP")]
    NotHttp { repo: String, url: String },
    #[error("reading object {oid} of {repo}: {source}")]
    Object {
        repo: String,
        oid: String,
        source: Box<gix::Error>,
    },
    #[error("walking {repo}: {source}")]
    Walk {
        repo: String,
        source: Box<gix::Error>,
    },
    #[error("creating directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A ref on the remote after a fetch. For annotated tags `target` is the tag
/// object, as `git for-each-ref` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRef {
    pub name: String,
    pub target: GitOid,
}

/// Metadata of one object found by a walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub id: GitOid,
    pub kind: ObjectKind,
    pub size: u64,
    /// Where the walk first met a tree or blob (`src/main.rs`; `""` for a
    /// root tree): the vault stores it as a delta against an earlier version
    /// of the same path. `None` for commits and tags.
    pub path: Option<String>,
}

pub fn to_kind(kind: gix::object::Kind) -> ObjectKind {
    match kind {
        gix::object::Kind::Commit => ObjectKind::Commit,
        gix::object::Kind::Tree => ObjectKind::Tree,
        gix::object::Kind::Blob => ObjectKind::Blob,
        gix::object::Kind::Tag => ObjectKind::Tag,
    }
}

/// The git kind of a stored object; `None` for documents, which are not
/// git objects.
pub fn from_kind(kind: ObjectKind) -> Option<gix::object::Kind> {
    Some(match kind {
        ObjectKind::Commit => gix::object::Kind::Commit,
        ObjectKind::Tree => gix::object::Kind::Tree,
        ObjectKind::Blob => gix::object::Kind::Blob,
        ObjectKind::Tag => gix::object::Kind::Tag,
        ObjectKind::Document | ObjectKind::Refs => return None,
    })
}

pub fn to_gix(oid: &GitOid) -> ObjectId {
    ObjectId::from_bytes_or_panic(&oid.0)
}

pub fn from_gix(oid: &gix::oid) -> GitOid {
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(oid.as_bytes());
    GitOid(bytes)
}

/// The mirror cache of one repository.
pub struct Mirror {
    repo_name: String,
    path: PathBuf,
    url: String,
    authorization: Option<SecretString>,
    repo: gix::Repository,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("repo", &self.repo_name)
            .field("path", &self.path)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Where the mirror of `repo` from `source` lives under `cache_dir`.
pub fn mirror_path(cache_dir: &Path, source: &str, repo: &RepoName) -> PathBuf {
    cache_dir
        .join(source)
        .join(repo.owner())
        .join(format!("{}.git", repo.slug()))
}

impl Mirror {
    /// Open the mirror, creating it (atomically, via a temporary directory)
    /// when missing.
    pub fn open(
        cache_dir: &Path,
        source: &str,
        repo: &RepoName,
        url: String,
        authorization: Option<SecretString>,
    ) -> Result<Self, GitError> {
        let path = mirror_path(cache_dir, source, repo);
        let mirror_err = |path: &Path, source: gix::Error| GitError::Mirror {
            repo: repo.to_string(),
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        if !path.join("HEAD").is_file() {
            let parent = path.parent().unwrap_or(cache_dir).to_path_buf();
            std::fs::create_dir_all(&parent).map_err(|source| GitError::Io {
                path: parent.clone(),
                source,
            })?;
            let staging = parent.join(format!(".{}.init-{}", repo.slug(), std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            gix::init_bare(&staging).map_err(|e| mirror_err(&staging, e))?;
            std::fs::rename(&staging, &path).map_err(|source| GitError::Io {
                path: path.clone(),
                source,
            })?;
        }
        let mut repo_handle = gix::open(&path).map_err(|e| mirror_err(&path, e))?;
        repo_handle.object_cache_size_if_unset(16 * 1024 * 1024);
        Ok(Self {
            repo_name: repo.to_string(),
            path,
            url,
            authorization,
            repo: repo_handle,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fetch_err(&self, source: gix::Error) -> GitError {
        GitError::Fetch {
            repo: self.repo_name.clone(),
            url: self.url.clone(),
            source: Box::new(source),
        }
    }

    /// Transport options carrying the `Authorization` header, if any.
    fn transport_options(&self) -> Result<Option<Box<dyn std::any::Any>>, GitError> {
        type HttpOptions = gix::protocol::transport::client::blocking_io::http::Options;
        let Some(authorization) = &self.authorization else {
            return Ok(None);
        };
        let not_http = || GitError::NotHttp {
            repo: self.repo_name.clone(),
            url: self.url.clone(),
        };
        let mut options = self
            .repo
            .transport_options(self.url.as_str(), None)
            .map_err(|e| self.fetch_err(e))?
            .ok_or_else(not_http)?;
        options
            .downcast_mut::<HttpOptions>()
            .ok_or_else(not_http)?
            .extra_headers
            .push(format!("Authorization: {}", authorization.expose()));
        Ok(Some(options))
    }

    fn remote(&self) -> Result<gix::Remote<'_>, GitError> {
        self.repo
            .remote_at(self.url.as_str())
            .map_err(|e| self.fetch_err(e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(
                ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
                Direction::Fetch,
            )
            .map_err(|e| self.fetch_err(e))
    }

    /// Branches and tags of a ref map, sorted by name.
    fn branches_and_tags(refs: &[Ref]) -> Vec<RemoteRef> {
        let mut out: Vec<RemoteRef> = refs
            .iter()
            .filter(|r| !matches!(r, Ref::Unborn { .. }))
            .filter_map(|r| {
                let (name, target, _peeled) = r.unpack();
                let name = name.to_string();
                let wanted = name.starts_with("refs/heads/") || name.starts_with("refs/tags/");
                Some(RemoteRef {
                    name,
                    target: from_gix(target?),
                })
                .filter(|_| wanted)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Connect to the remote with the credentials header, list its refs
    /// (the handshake) and hand the prepared fetch to `then`.
    fn with_prepared_fetch<R>(
        &self,
        then: impl FnOnce(
            gix::remote::fetch::Prepare<
                '_,
                '_,
                Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>,
            >,
        ) -> Result<R, GitError>,
    ) -> Result<R, GitError> {
        let remote = self.remote()?;
        let mut connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.fetch_err(e))?;
        if let Some(options) = self.transport_options()? {
            connection.set_transport_options(options);
        }
        // Never consult credential helpers or prompt: a 401 is an error.
        let connection = connection.with_credentials(|_| Ok(None));
        let prepare = connection
            .prepare_fetch(
                gix::progress::Discard,
                gix::remote::ref_map::Options::default(),
            )
            .map_err(|e| self.fetch_err(e))?;
        then(prepare)
    }

    /// The remote's branches and tags, without fetching any objects
    /// (`git ls-remote`).
    pub fn ls_remote(&self) -> Result<Vec<RemoteRef>, GitError> {
        self.with_prepared_fetch(|prepare| {
            Ok(Self::branches_and_tags(&prepare.ref_map().remote_refs))
        })
    }

    /// Remove what a fetch killed mid-way leaves behind: ref and config
    /// lock files (which make every later fetch fail) and temporary or
    /// `.keep` pack files. Only fetches write to a mirror, and no two fetch
    /// the same repository at once (one `serve` per store, one backup per
    /// repository), so anything of this kind found before a fetch is stale.
    /// Returns how many files were removed.
    pub fn remove_crash_leftovers(&self) -> Result<usize, GitError> {
        let io = |path: &Path, source: std::io::Error| GitError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut removed = 0;
        let mut dirs = vec![self.path.join("refs")];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io(&dir, e))?;
                let path = entry.path();
                if entry.file_type().map_err(|e| io(&path, e))?.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "lock") {
                    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                    removed += 1;
                }
            }
        }
        for name in [
            "packed-refs.lock",
            "config.lock",
            "HEAD.lock",
            "shallow.lock",
            "FETCH_HEAD.lock",
        ] {
            let path = self.path.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path, e)),
            }
        }
        let pack_dir = self.path.join("objects/pack");
        if let Ok(entries) = std::fs::read_dir(&pack_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.ends_with(".keep") || name.starts_with("tmp") || name.starts_with(".tmp") {
                    std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Fetch every branch and tag (forced, pruned: the mirror equals the
    /// remote afterwards) and return the remote's refs.
    pub fn fetch(&mut self) -> Result<Vec<RemoteRef>, GitError> {
        let removed = self.remove_crash_leftovers()?;
        if removed > 0 {
            tracing::warn!(
                repo = %self.repo_name,
                removed,
                "removed lock and temporary files an interrupted fetch left in the mirror cache"
            );
        }
        let interrupt = AtomicBool::new(false);
        let outcome = self.with_prepared_fetch(|prepare| {
            prepare
                .receive(gix::progress::Discard, &interrupt)
                .map_err(|e| self.fetch_err(e))
        })?;
        let remote_refs = Self::branches_and_tags(&outcome.ref_map.remote_refs);
        self.prune(&remote_refs)?;
        Ok(remote_refs)
    }

    /// Delete local branches and tags the remote no longer has.
    fn prune(&self, remote: &[RemoteRef]) -> Result<(), GitError> {
        use gix::refs::transaction::{PreviousValue, RefEdit};
        let keep: HashSet<&str> = remote.iter().map(|r| r.name.as_str()).collect();
        let mut edits = Vec::new();
        let references = self.repo.references().map_err(|e| self.fetch_err(e))?;
        for prefix in ["refs/heads/", "refs/tags/"] {
            for r in references.prefixed(prefix).map_err(|e| self.fetch_err(e))? {
                let r = r.map_err(|e| self.fetch_err(e))?;
                let name = r.name().as_bstr().to_string();
                if !keep.contains(name.as_str()) {
                    edits.push(RefEdit::delete(
                        r.name().to_owned(),
                        PreviousValue::MustExistAndMatch(r.target().into_owned()),
                    ));
                }
            }
        }
        if !edits.is_empty() {
            self.repo
                .edit_references(edits)
                .map_err(|e| self.fetch_err(e))?;
        }
        Ok(())
    }

    fn walk_err(&self, source: gix::Error) -> GitError {
        GitError::Walk {
            repo: self.repo_name.clone(),
            source: Box::new(source),
        }
    }

    /// Every object reachable from `tips` that is neither reachable from
    /// `known` (the previous snapshot's tips; ids the mirror lacks are
    /// ignored) nor already held (`have`, asked of the vault), each listed
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

        // The commit walk stops at the known tips' commits.
        let mut hidden_commits = Vec::new();
        for oid in known {
            let mut id = to_gix(oid);
            // Peel known tags down to their commit.
            while let Some(header) = repo.try_find_header(id).map_err(|e| self.walk_err(e))? {
                match header.kind() {
                    Kind::Tag => {
                        id = repo
                            .find_tag(id)
                            .map_err(|e| self.walk_err(e))?
                            .target_id()
                            .map_err(|e| self.walk_err(e))?
                            .detach();
                    }
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
                        });
                        id = repo
                            .find_tag(id)
                            .map_err(|e| self.walk_err(e))?
                            .target_id()
                            .map_err(|e| self.walk_err(e))?
                            .detach();
                    }
                    Kind::Commit => {
                        commit_tips.push(id);
                        break;
                    }
                    Kind::Tree => {
                        self.walk_tree(id, String::new(), have, &mut seen, &mut out)?;
                        break;
                    }
                    Kind::Blob => {
                        seen.insert(id);
                        out.push(ObjectInfo {
                            id: from_gix(&id),
                            kind: ObjectKind::Blob,
                            size: header.size(),
                            path: None,
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
                .all()
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
                self.walk_tree(tree, String::new(), have, &mut seen, &mut out)?;
                out.push(ObjectInfo {
                    id: from_gix(&id),
                    kind: ObjectKind::Commit,
                    size,
                    path: None,
                });
            }
        }
        // A tag pointing at a tag comes after it: list tags innermost first.
        tags.reverse();
        out.extend(tags);
        Ok(out)
    }

    /// List a tree and every object below it that is not seen or held,
    /// children before the tree that names them, with paths.
    fn walk_tree(
        &self,
        root: ObjectId,
        root_path: String,
        have: &dyn Fn(&GitOid) -> bool,
        seen: &mut HashSet<ObjectId>,
        out: &mut Vec<ObjectInfo>,
    ) -> Result<(), GitError> {
        enum Step {
            Enter(ObjectId, String),
            Leave(ObjectId, String, u64),
        }
        if !seen.insert(root) || have(&from_gix(&root)) {
            return Ok(());
        }
        let mut stack = vec![Step::Enter(root, root_path)];
        while let Some(step) = stack.pop() {
            let (id, path) = match step {
                Step::Leave(id, path, size) => {
                    out.push(ObjectInfo {
                        id: from_gix(&id),
                        kind: ObjectKind::Tree,
                        size,
                        path: Some(path),
                    });
                    continue;
                }
                Step::Enter(id, path) => (id, path),
            };
            let tree = self.repo.find_tree(id).map_err(|e| self.walk_err(e))?;
            let decoded = tree.decode().map_err(|e| self.walk_err(e))?;
            let mut subtrees = Vec::new();
            for entry in &decoded.entries {
                let child = entry.oid.to_owned();
                // Submodule gitlinks point into another repository.
                if entry.mode.is_commit() || !seen.insert(child) || have(&from_gix(&child)) {
                    continue;
                }
                let child_path = if path.is_empty() {
                    entry.filename.to_string()
                } else {
                    format!("{path}/{}", entry.filename)
                };
                if entry.mode.is_tree() {
                    subtrees.push(Step::Enter(child, child_path));
                } else {
                    let header = self.repo.find_header(child).map_err(|e| self.walk_err(e))?;
                    out.push(ObjectInfo {
                        id: from_gix(&child),
                        kind: to_kind(header.kind()),
                        size: header.size(),
                        path: Some(child_path),
                    });
                }
            }
            // Leave after every subtree below has been listed.
            stack.push(Step::Leave(id, path, tree.data.len() as u64));
            stack.extend(subtrees);
        }
        Ok(())
    }

    /// An object's kind and content (without git's header).
    pub fn read(&self, oid: &GitOid) -> Result<(ObjectKind, Vec<u8>), GitError> {
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
    let err = |source: gix::Error| GitError::Mirror {
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

    #[test]
    fn leftovers_of_a_killed_fetch_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = RepoName::parse("acme/app").expect("name");
        let mirror = Mirror::open(
            dir.path(),
            "cloud",
            &repo,
            "http://127.0.0.1:9/x.git".into(),
            None,
        )
        .expect("open");
        let root = mirror.path().to_path_buf();
        std::fs::create_dir_all(root.join("refs/heads/feature")).expect("mkdir");
        std::fs::create_dir_all(root.join("objects/pack")).expect("mkdir");
        for stale in [
            "refs/heads/master.lock",
            "refs/heads/feature/x.lock",
            "packed-refs.lock",
            "objects/pack/pack-1.keep",
            "objects/pack/tmp_pack_abc",
        ] {
            std::fs::write(root.join(stale), b"x").expect("write");
        }
        let keep = [
            "refs/heads/master",
            "objects/pack/pack-1.pack",
            "objects/pack/pack-1.idx",
        ];
        for file in keep {
            std::fs::write(root.join(file), b"x").expect("write");
        }
        assert_eq!(mirror.remove_crash_leftovers().expect("clean"), 5);
        for file in keep {
            assert!(root.join(file).exists(), "{file} was removed");
        }
        assert!(!root.join("refs/heads/master.lock").exists());
        assert_eq!(mirror.remove_crash_leftovers().expect("clean"), 0);
    }
}
