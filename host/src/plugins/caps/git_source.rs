//! `git-source` (WIT 0.1.0): a read-only view of the event's repository.
//! The host fetches it with credentials the plugin never sees; the plugin
//! sees object ids, kinds and sizes, never bytes.

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::backup::hookvault::plugin::git_source as wit;
use super::{HostError, PluginState, parse_oids};
use crate::git::{ObjectInfo, RemoteRef};
use crate::ids::{GitOid, ObjectKind};

/// What a backup needs from the repository it backs up.
pub trait GitSource: Send {
    /// Fetch the repository; its refs (branches and tags) now.
    fn fetch(&mut self) -> Result<Vec<RemoteRef>, HostError>;

    /// Every object reachable from `tips` and not from `known`, each once.
    /// Only git kinds are passed on to the plugin.
    fn walk(&mut self, tips: &[GitOid], known: &[GitOid]) -> Result<Vec<ObjectInfo>, HostError>;
}

/// Give `linker` the `git-source` interface, served by `X`.
pub fn add_to_linker<X: GitSource + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: GitSource> wit::Host for PluginState<X> {
    fn fetch(&mut self) -> Result<Vec<wit::RemoteRef>, String> {
        let refs = self.host_call(|source| source.fetch())?;
        Ok(refs
            .into_iter()
            .map(|r| wit::RemoteRef {
                name: r.name,
                target: r.target.to_hex(),
            })
            .collect())
    }

    fn walk(
        &mut self,
        tips: Vec<String>,
        known: Vec<String>,
    ) -> Result<Vec<wit::ObjectInfo>, String> {
        let tips = parse_oids(&tips)?;
        let known = parse_oids(&known)?;
        let objects = self.host_call(|source| source.walk(&tips, &known))?;
        Ok(objects
            .into_iter()
            .filter_map(|ObjectInfo { id, kind, size, .. }| {
                let kind = match kind {
                    ObjectKind::Commit => wit::ObjectKind::Commit,
                    ObjectKind::Tree => wit::ObjectKind::Tree,
                    ObjectKind::Blob => wit::ObjectKind::Blob,
                    ObjectKind::Tag => wit::ObjectKind::Tag,
                    // Not git objects: no walk of a repository yields them.
                    ObjectKind::Document | ObjectKind::Refs => return None,
                };
                Some(wit::ObjectInfo {
                    id: id.to_hex(),
                    kind,
                    size,
                })
            })
            .collect())
    }
}
