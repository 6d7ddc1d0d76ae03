//! The `metadata-backup` world (WIT 0.2.0): pull requests and comments,
//! stored as versioned documents. It reuses the 0.1.0 `types`, `log` and
//! `config` interfaces unchanged and adds `metadata` and `documents`.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf};

use super::backup::BackupDeps;
use super::filter::to_wit_event;
use super::sandbox::{self, Loaded, PluginState};
use super::{PluginError, PluginSpec};
use crate::event::{Comment, Event, EventKind, PullRequest, now_ms};

use super::bindings::metadata as bindings;

use bindings::hookvault::plugin0_2_0::{documents, metadata};

/// Per-call state of a metadata plugin.
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

impl metadata::Host for PluginState<MetadataCtx> {
    fn current_kind(&mut self) -> metadata::EventKind {
        match self.extra.event.kind {
            EventKind::Push => metadata::EventKind::Push,
            EventKind::PullRequest => metadata::EventKind::PullRequest,
            EventKind::Comment => metadata::EventKind::Comment,
            EventKind::Repository => metadata::EventKind::Repository,
            EventKind::RepositoryDeleted => metadata::EventKind::RepositoryDeleted,
            EventKind::Reconcile => metadata::EventKind::Reconcile,
        }
    }

    fn current_pull_request(&mut self) -> Option<metadata::PullRequest> {
        self.extra
            .event
            .pull_request
            .clone()
            .map(|p: PullRequest| metadata::PullRequest {
                id: p.id,
                title: p.title,
                description: p.description,
                state: p.state,
                author: p.author,
                source_branch: p.source_branch,
                source_commit: p.source_commit,
                destination_branch: p.destination_branch,
                destination_commit: p.destination_commit,
                reviewers: p.reviewers,
                created: p.created,
                updated: p.updated,
            })
    }

    fn current_comments(&mut self) -> Vec<metadata::Comment> {
        let event = &self.extra.event;
        event
            .comment
            .iter()
            .chain(event.comments.iter())
            .cloned()
            .map(|c: Comment| metadata::Comment {
                id: c.id,
                text: c.text,
                author: c.author,
                created: c.created,
                updated: c.updated,
                parent: c.parent,
                path: c.path,
                line: c.line,
                deleted: c.deleted,
            })
            .collect()
    }
}

impl documents::Host for PluginState<MetadataCtx> {
    fn put(&mut self, collection: String, key: String, json: String) -> Result<String, String> {
        let ctx = &self.extra;
        ctx.deps
            .store
            .put_document(
                &ctx.event.repository,
                &collection,
                &key,
                json.as_bytes(),
                &ctx.event.delivery_id,
                now_ms(),
            )
            .map(|id| id.to_string())
            .map_err(|e| e.to_string())
    }

    fn get(&mut self, collection: String, key: String) -> Result<Option<String>, String> {
        let ctx = &self.extra;
        let store = &ctx.deps.store;
        let Some(version) = store
            .document_at(&ctx.event.repository, &collection, &key, None)
            .map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        let bytes = store.read_document(&version).map_err(|e| e.to_string())?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("document {collection}/{key} is not UTF-8"))
    }
}

/// A loaded metadata plugin.
pub struct MetadataPlugin {
    base: Loaded,
    pre: bindings::MetadataBackupPre<PluginState<MetadataCtx>>,
}

impl MetadataPlugin {
    pub fn load(
        engine: &Engine,
        spec: &PluginSpec,
        component: &Component,
    ) -> Result<Self, PluginError> {
        const WORLD: &str = "metadata-backup";
        let pre = sandbox::link(engine, &spec.name, WORLD, component, |linker| {
            bindings::MetadataBackup::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
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

    /// Store the event's metadata. Blocking. Returns the versions written.
    pub fn run(&self, deps: Arc<BackupDeps>, event: &Event) -> Result<Vec<String>, PluginError> {
        let mut store = self.base.store(event, MetadataCtx::new(deps, event))?;
        self.call(&mut store, event)
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

    fn call(
        &self,
        store: &mut wasmtime::Store<PluginState<MetadataCtx>>,
        event: &Event,
    ) -> Result<Vec<String>, PluginError> {
        let result = self
            .pre
            .instantiate(&mut *store)
            .and_then(|instance| instance.call_backup(&mut *store, &to_wit_event(event, &[])));
        self.base.reported(self.base.finish(store, result)?)
    }
}
