//! The `metadata-backup` world (WIT 0.2.0): pull requests and comments,
//! stored as versioned documents. It grants the `metadata` and
//! `documents` capabilities beside the ones every world gets; here they
//! are served by the vault.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::backup::BackupDeps;
use super::caps::{self, CurrentEvent, Documents, HostError};
use super::sandbox::{self, Loaded, PluginState};
use super::{PluginError, PluginSpec};
use crate::event::{Event, now_ms};

use super::bindings::metadata as bindings;

/// Per-call state of a metadata plugin: the event, and the vault.
pub struct MetadataCtx {
    deps: Arc<BackupDeps>,
    event: Event,
}

impl MetadataCtx {
    fn new(deps: Arc<BackupDeps>, event: &Event) -> Self {
        MetadataCtx {
            deps,
            event: event.clone(),
        }
    }
}

impl CurrentEvent for MetadataCtx {
    fn event(&self) -> &Event {
        &self.event
    }
}

impl Documents for MetadataCtx {
    fn put(&mut self, collection: &str, key: &str, json: &[u8]) -> Result<String, HostError> {
        let id = self.deps.store.put_document(
            &self.event.repository,
            collection,
            key,
            json,
            &self.event.delivery_id,
            now_ms(),
        )?;
        Ok(id.to_string())
    }

    fn get(&mut self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let store = &self.deps.store;
        let Some(version) = store.document_at(&self.event.repository, collection, key, None)?
        else {
            return Ok(None);
        };
        Ok(Some(store.read_document(&version)?))
    }
}

/// A loaded metadata plugin, its capabilities served by `X` (the vault by
/// default).
pub struct MetadataPlugin<X: 'static = MetadataCtx> {
    base: Loaded,
    pre: bindings::MetadataBackupPre<PluginState<X>>,
}

impl MetadataPlugin<MetadataCtx> {
    /// Store the event's metadata. Blocking. Returns the versions written.
    pub fn run(&self, deps: Arc<BackupDeps>, event: &Event) -> Result<Vec<String>, PluginError> {
        self.run_with(MetadataCtx::new(deps, event), event)
    }

    /// Run as [`MetadataPlugin::run`] does, and say what the call cost and
    /// said (`hookvault plugin test`).
    pub fn trial(
        &self,
        deps: Arc<BackupDeps>,
        event: &Event,
    ) -> Result<(Result<Vec<String>, PluginError>, sandbox::CallReport), PluginError> {
        let started = std::time::Instant::now();
        let mut store = self.base.store(event, MetadataCtx::new(deps, event))?;
        store.data_mut().capture();
        let written = self.call(&mut store, event);
        Ok((written, self.base.report(&mut store, started)))
    }
}

impl<X: CurrentEvent + Documents + 'static> MetadataPlugin<X> {
    pub fn load(
        engine: &Engine,
        spec: &PluginSpec,
        component: &Component,
    ) -> Result<Self, PluginError> {
        const WORLD: &str = "metadata-backup";
        let pre = sandbox::link(engine, &spec.name, WORLD, component, |linker| {
            caps::metadata::add_to_linker(linker)?;
            caps::documents::add_to_linker(linker)
        })?;
        let pre = bindings::MetadataBackupPre::new(pre)
            .map_err(sandbox::load_error(&spec.name, WORLD))?;
        Ok(Self {
            base: Loaded::new(engine, spec),
            pre,
        })
    }

    pub fn name(&self) -> &str {
        &self.base.name
    }

    /// Store the event's metadata through `capabilities`.
    pub fn run_with(&self, capabilities: X, event: &Event) -> Result<Vec<String>, PluginError> {
        let mut store = self.base.store(event, capabilities)?;
        self.call(&mut store, event)
    }

    fn call(
        &self,
        store: &mut wasmtime::Store<PluginState<X>>,
        event: &Event,
    ) -> Result<Vec<String>, PluginError> {
        let wit_event = caps::types::to_wit(event, &[]);
        let result = self
            .pre
            .instantiate(&mut *store)
            .and_then(|instance| instance.call_backup(&mut *store, &wit_event));
        let returned = self.base.finish(store, result)?;
        self.base.reported(store, returned)
    }
}

#[cfg(test)]
mod tests {
    //! The built-in pr-metadata plugin against an in-memory document
    //! store: out-of-order deliveries never move a pull request back.

    use std::collections::BTreeMap;

    use super::*;
    use crate::event::{Comment, EventKind, PullRequest};
    use crate::ids::RepoName;

    /// Every version of every document, by collection and key.
    type Stored = BTreeMap<(String, String), Vec<Vec<u8>>>;

    struct Double {
        event: Event,
        documents: Stored,
    }

    impl CurrentEvent for Double {
        fn event(&self) -> &Event {
            &self.event
        }
    }

    impl Documents for Double {
        fn put(&mut self, collection: &str, key: &str, json: &[u8]) -> Result<String, HostError> {
            let versions = self
                .documents
                .entry((collection.into(), key.into()))
                .or_default();
            versions.push(json.to_vec());
            Ok(format!("{collection}/{key}@{}", versions.len()))
        }

        fn get(&mut self, collection: &str, key: &str) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self
                .documents
                .get(&(collection.into(), key.into()))
                .and_then(|v| v.last().cloned()))
        }
    }

    fn event(title: &str, updated: &str, comment: Option<(u64, &str)>) -> Event {
        Event {
            delivery_id: format!("d-{updated}"),
            source: "cloud".into(),
            event_key: "pullrequest:updated".into(),
            kind: EventKind::PullRequest,
            repository: RepoName::parse("acme/app").expect("repo name"),
            actor: None,
            changes: Vec::new(),
            received_at_ms: 0,
            pull_request: Some(PullRequest {
                id: 7,
                title: title.into(),
                description: None,
                state: "OPEN".into(),
                author: None,
                source_branch: None,
                source_commit: None,
                destination_branch: None,
                destination_commit: None,
                reviewers: Vec::new(),
                created: None,
                updated: Some(updated.into()),
            }),
            comment: comment.map(|(id, text)| Comment {
                id,
                text: text.into(),
                author: None,
                created: None,
                updated: None,
                parent: None,
                path: None,
                line: None,
                deleted: false,
            }),
            comments: Vec::new(),
            previous_name: None,
        }
    }

    /// One delivery of `event` to `plugin`, against `documents`.
    fn run(plugin: &MetadataPlugin<Double>, documents: &mut Stored, event: Event) -> Vec<String> {
        let double = Double {
            event: event.clone(),
            documents: std::mem::take(documents),
        };
        let mut store = plugin.base.store(&event, double).expect("store");
        let written = plugin.call(&mut store, &event).expect("backup");
        *documents = store.into_data().extra.documents;
        written
    }

    #[test]
    fn pr_metadata_keeps_the_newer_pull_request_and_merges_comments() {
        let engine = super::super::new_engine().expect("engine");
        let spec = PluginSpec::from_config(&crate::config::PluginConfig {
            builtin: Some("pr-metadata".into()),
            ..crate::config::PluginConfig::filter_at(std::path::Path::new("pr-metadata"))
        })
        .expect("spec");
        let component = sandbox::compile(&engine, &spec, "metadata-backup").expect("compile");
        let plugin = MetadataPlugin::<Double>::load(&engine, &spec, &component).expect("load");
        let mut documents = Stored::new();
        let newer = event("Fix the build", "2026-12-02T10:00:00Z", Some((1, "first")));
        assert_eq!(run(&plugin, &mut documents, newer), ["pull-requests/7@1"]);
        // A retried, older delivery: its comment is merged, its title is not.
        let older = event("WIP", "2026-12-01T10:00:00Z", Some((2, "second")));
        assert_eq!(run(&plugin, &mut documents, older), ["pull-requests/7@2"]);
        let latest = &documents[&("pull-requests".to_string(), "7".to_string())][1];
        let latest: serde_json::Value = serde_json::from_slice(latest).expect("json");
        assert_eq!(latest["pull_request"]["title"], "Fix the build", "{latest}");
        let comments: Vec<_> = latest["comments"]
            .as_array()
            .expect("comments")
            .iter()
            .map(|c| c["text"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(comments, ["first", "second"], "{latest}");
    }
}
