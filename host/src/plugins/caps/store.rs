//! `store` (WIT 0.1.0): where a backup's objects and snapshot go. The
//! plugin names objects by id; the host moves their bytes from the fetch
//! to the vault natively.

use std::collections::BTreeMap;

use wasmtime::component::{HasSelf, Linker};

use super::super::bindings::backup::hookvault::plugin::store as wit;
use super::{HostError, PluginState, parse_oids};
use crate::ids::GitOid;
use crate::vault::{CopyStats, RefUpdate, Snapshot};

/// What a backup needs from the vault it writes to.
pub trait ObjectSink: Send {
    /// The refs of the repository's latest snapshot; `None` before the
    /// first. An error here traps the call: without it no backup can be
    /// told apart from a first one.
    fn latest_refs(&mut self) -> Result<Option<BTreeMap<String, GitOid>>, HostError>;

    /// Which of `ids` the vault does not hold.
    fn missing(&mut self, ids: &[GitOid]) -> Result<Vec<GitOid>, HostError>;

    /// Copy `ids` from the fetch into the vault.
    fn copy_objects(&mut self, ids: &[GitOid]) -> Result<CopyStats, HostError>;

    /// Record a snapshot; its id.
    fn commit_snapshot(
        &mut self,
        refs: BTreeMap<String, GitOid>,
        updates: Vec<RefUpdate>,
    ) -> Result<String, HostError>;

    /// What the call left, read by the host once it returns: the snapshot
    /// committed (when the sink is a vault) and what was copied.
    fn outcome(&mut self) -> (Option<Snapshot>, CopyStats);
}

/// Give `linker` the `store` interface, served by `X`.
pub fn add_to_linker<X: ObjectSink + 'static>(
    linker: &mut Linker<PluginState<X>>,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<_, HasSelf<_>>(linker, |state| state)
}

impl<X: ObjectSink> wit::Host for PluginState<X> {
    fn latest_refs(&mut self) -> wasmtime::Result<Option<Vec<wit::StoredRef>>> {
        let refs = self
            .host_call(|sink| sink.latest_refs())
            .map_err(wasmtime::Error::msg)?;
        Ok(refs.map(|refs| {
            refs.into_iter()
                .map(|(name, target)| wit::StoredRef {
                    name,
                    target: target.to_hex(),
                })
                .collect()
        }))
    }

    fn missing(&mut self, ids: Vec<String>) -> Result<Vec<String>, String> {
        let ids = parse_oids(&ids)?;
        let missing = self.host_call(|sink| sink.missing(&ids))?;
        Ok(missing.into_iter().map(GitOid::to_hex).collect())
    }

    fn copy_objects(&mut self, ids: Vec<String>) -> Result<wit::CopyStats, String> {
        let ids = parse_oids(&ids)?;
        let stats = self.host_call(|sink| sink.copy_objects(&ids))?;
        Ok(wit::CopyStats {
            written: stats.written,
            present: stats.present,
            stored_bytes: stats.stored_bytes,
        })
    }

    fn commit_snapshot(&mut self, request: wit::SnapshotRequest) -> Result<String, String> {
        let mut refs = BTreeMap::new();
        for r in request.refs {
            let target = GitOid::from_hex(&r.target).map_err(|e| format!("ref {}: {e}", r.name))?;
            refs.insert(r.name, target);
        }
        let updates = request
            .updates
            .into_iter()
            .map(|u| RefUpdate {
                deleted: u.new_target.is_none(),
                name: u.name,
                old_target: u.old_target,
                new_target: u.new_target,
                forced: u.forced,
            })
            .collect();
        self.host_call(|sink| sink.commit_snapshot(refs, updates))
    }
}
