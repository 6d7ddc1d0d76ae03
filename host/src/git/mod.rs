//! git plumbing on gix: the fetch over smart HTTP against what the vault
//! already holds (`remote`), the workspace one backup receives its pack
//! into and walks (`fetched`), object id/kind conversions, and the pack
//! writer restore uses.

use std::path::PathBuf;

use gix::ObjectId;

use crate::failure::FailureKind;
use crate::ids::{GitOid, ObjectKind};

mod chains;
pub mod fetched;
pub mod pack_writer;
pub mod push;
pub mod remote;

pub use fetched::*;
pub use remote::*;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("fetch workspace of {repo} at {path}: {}", chain(source))]
    Workspace {
        repo: String,
        path: PathBuf,
        source: Box<gix::Error>,
    },
    /// The git server answered, or failed to, in a way an operator acts
    /// on (a refused token, no such repository, a timeout).
    #[error("fetching {repo} from {url}: {problem}")]
    Remote {
        repo: String,
        url: String,
        problem: RemoteProblem,
    },
    #[error("fetching {repo} from {url}: {}", chain(source))]
    Fetch {
        repo: String,
        url: String,
        source: Box<gix::Error>,
    },
    #[error("fetching {repo} from {url}: the transport is not HTTP")]
    NotHttp { repo: String, url: String },
    #[error("reading object {oid} of {repo}: {}", chain(source))]
    Object {
        repo: String,
        oid: String,
        source: Box<gix::Error>,
    },
    #[error("walking {repo}: {}", chain(source))]
    Walk {
        repo: String,
        source: Box<gix::Error>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl GitError {
    /// Whether trying again can help: what the server said decides for a
    /// remote's answer; a full disk anywhere in the causes is `NoSpace`;
    /// anything else may pass on a later attempt.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Remote { problem, .. } => problem.kind(),
            Self::NotHttp { .. } => FailureKind::Permanent,
            Self::Io { source, .. } => crate::failure::of_chain(source),
            Self::Workspace { source, .. }
            | Self::Fetch { source, .. }
            | Self::Object { source, .. }
            | Self::Walk { source, .. } => crate::failure::of_chain(source.as_ref()),
        }
    }
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
    /// An object this one probably resembles, for a path the vault has no
    /// versions of yet: what the walk last met at the same path (a file
    /// renamed, then changed). A hint for delta compression, never needed
    /// to read.
    pub like: Option<GitOid>,
}

/// An error and every cause below it, joined with ": ". gix's own message
/// is often only the top of the story ("Failed to consume the pack sent by
/// the remote"); the cause names the file and the OS error, and a delivery's
/// recorded error is all an operator sees.
fn chain(error: &gix::Error) -> String {
    let mut out = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
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

/// Debian's `git` for the unit tests' fixtures, with a fixed identity.
#[cfg(test)]
pub(crate) fn test_git(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "a")
        .env("GIT_AUTHOR_EMAIL", "a@example.com")
        .env("GIT_COMMITTER_NAME", "a")
        .env("GIT_COMMITTER_EMAIL", "a@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
