//! The `backup` world: a plugin drives one backup through the `git-source`
//! and `store` capabilities. Bytes move natively between the backup's fetch
//! workspace and the store; the plugin only ever sees object ids, kinds and
//! sizes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::HasSelf;

use super::filter::to_wit_event;
use super::sandbox::{self, Loaded, PluginState};
use super::{PluginError, PluginSpec};
use crate::config::{SecretString, SourceConfig};
use crate::event::{Event, now_ms};
use crate::failure::{Classify, FailureKind};
use crate::git::{ObjectInfo, Remote, Workspace};
use crate::ids::{GitOid, ObjectKind};
use crate::vault::{CopyStats, NewSnapshot, RefUpdate, Snapshot, Vault};

use super::bindings::backup as bindings;

use bindings::hookvault::plugin::{git_source, store};

/// A source's clone settings, credentials resolved.
#[derive(Debug, Clone)]
pub struct SourceGit {
    pub config: SourceConfig,
    pub authorization: Option<SecretString>,
}

/// What backup plugins may reach, through the host.
pub struct BackupDeps {
    pub store: Vault,
    /// `store.path`: the queue, caches and notes beside the vault.
    pub store_dir: PathBuf,
    /// Where each backup's temporary fetch workspace is made.
    pub work_dir: PathBuf,
    pub sources: HashMap<String, SourceGit>,
    /// Told how far large copies are (`serve` on a terminal).
    pub progress: Option<crate::progress::BackupProgress>,
}

impl std::fmt::Debug for BackupDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupDeps")
            .field("store", &self.store.location())
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

/// Per-call state of a backup plugin.
pub struct BackupCtx {
    deps: Arc<BackupDeps>,
    event: Event,
    /// The workspace the fetch received its pack into (none before it).
    workspace: Option<Workspace>,
    /// Paths the walks of this call met, so copies can delta by path.
    paths: HashMap<GitOid, String>,
    stats: CopyStats,
    snapshot: Option<Snapshot>,
    /// The kind of the last host call that failed: a plugin returns the
    /// host's errors as text, and this keeps what kind they were.
    failure: Option<FailureKind>,
    /// Time spent in the host's calls (fetch, walk, copy, ...): the rest of
    /// a call is the sandbox and the plugin's own work.
    host_time: std::time::Duration,
}

/// A host call's error as the plugin receives it (text), its kind kept in
/// `failure`.
fn noted<T, E: Classify>(
    failure: &mut Option<FailureKind>,
    result: Result<T, E>,
) -> Result<T, String> {
    result.map_err(|e| {
        *failure = Some(e.kind());
        e.to_string()
    })
}

impl BackupCtx {
    fn new(deps: Arc<BackupDeps>, event: &Event) -> Self {
        BackupCtx {
            deps,
            event: event.clone(),
            workspace: None,
            paths: HashMap::new(),
            stats: CopyStats::default(),
            snapshot: None,
            failure: None,
            host_time: std::time::Duration::ZERO,
        }
    }

    fn remote(&mut self) -> Result<Remote, String> {
        let Some(source) = self.deps.sources.get(&self.event.source) else {
            self.failure = Some(FailureKind::Permanent);
            return Err(format!("source {:?} is not configured", self.event.source));
        };
        Ok(Remote::new(
            &self.event.repository,
            source.config.clone_url(&self.event.repository),
            source.authorization.clone(),
        ))
    }

    fn workspace(&self) -> Result<&Workspace, String> {
        self.workspace.as_ref().ok_or_else(|| {
            "nothing fetched yet: call fetch before walk or copy-objects".to_string()
        })
    }

    /// Fetch into a new workspace, negotiating against the repository's
    /// latest snapshot and completing the thin pack from the vault.
    fn fetch(&mut self) -> Result<Vec<crate::git::RemoteRef>, String> {
        let started = std::time::Instant::now();
        let remote = self.remote()?;
        let deps = self.deps.clone();
        let store = &deps.store;
        let previous = noted(&mut self.failure, store.latest_refs(&self.event.repository))?
            .unwrap_or_default();
        // Drop an earlier workspace of this call first: one per backup.
        self.workspace = None;
        let workspace = noted(
            &mut self.failure,
            Workspace::create(&deps.work_dir, &self.event.repository),
        )?;
        // An error asking the vault counts as "not held": more is fetched,
        // never less.
        let held = |oid: &GitOid| store.has(oid).unwrap_or(false);
        let bases = |oid: &GitOid| match store.read_object(oid) {
            Ok(found) => Some(found),
            Err(e) => {
                tracing::warn!(object = %oid.to_hex(), error = %e, "a thin pack's base could not be read from the vault");
                None
            }
        };
        let negotiated = started.elapsed();
        let fetched = noted(
            &mut self.failure,
            workspace.fetch(&remote, &previous, &held, &bases),
        )?;
        tracing::debug!(
            refs = fetched.refs.len(),
            previous_refs = previous.len(),
            received_pack = fetched.received_pack,
            snapshot_refs_ms = negotiated.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            peak_rss_kib = peak_rss_kib(),
            "fetched against the vault"
        );
        self.workspace = Some(workspace);
        Ok(fetched.refs)
    }
}

/// The process's peak resident memory (VmHWM) in KiB, where the system
/// reports it (Linux); 0 elsewhere. Logged to see which step of a backup
/// sets the peak.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn parse_oids(ids: &[String]) -> Result<Vec<GitOid>, String> {
    ids.iter()
        .map(|id| GitOid::from_hex(id).map_err(|e| e.to_string()))
        .collect()
}

impl git_source::Host for PluginState<BackupCtx> {
    fn fetch(&mut self) -> Result<Vec<git_source::RemoteRef>, String> {
        let started = std::time::Instant::now();
        let result = (|| -> Result<Vec<git_source::RemoteRef>, String> {
            let refs = self.extra.fetch()?;
            Ok(refs
                .into_iter()
                .map(|r| git_source::RemoteRef {
                    name: r.name,
                    target: r.target.to_hex(),
                })
                .collect())
        })();
        self.extra.host_time += started.elapsed();
        result
    }

    fn walk(
        &mut self,
        tips: Vec<String>,
        known: Vec<String>,
    ) -> Result<Vec<git_source::ObjectInfo>, String> {
        let started = std::time::Instant::now();
        let result = (|| -> Result<Vec<git_source::ObjectInfo>, String> {
            let tips = parse_oids(&tips)?;
            let known = parse_oids(&known)?;
            let store = self.extra.deps.store.clone();
            // An error asking the vault counts as "not held": the walk then lists
            // more, never less.
            let have = move |oid: &GitOid| store.has(oid).unwrap_or(false);
            let started = std::time::Instant::now();
            let walked = self.extra.workspace()?.walk(&tips, &known, &have);
            let objects = noted(&mut self.extra.failure, walked)?;
            tracing::debug!(
                tips = tips.len(),
                known = known.len(),
                listed = objects.len(),
                ms = started.elapsed().as_millis() as u64,
                peak_rss_kib = peak_rss_kib(),
                "walked the workspace"
            );
            let paths = &mut self.extra.paths;
            Ok(objects
                .into_iter()
                .filter_map(
                    |ObjectInfo {
                         id,
                         kind,
                         size,
                         path,
                     }| {
                        let kind = match kind {
                            ObjectKind::Commit => git_source::ObjectKind::Commit,
                            ObjectKind::Tree => git_source::ObjectKind::Tree,
                            ObjectKind::Blob => git_source::ObjectKind::Blob,
                            ObjectKind::Tag => git_source::ObjectKind::Tag,
                            // A git walk never yields documents or ref chunks.
                            ObjectKind::Document | ObjectKind::Refs => return None,
                        };
                        if let Some(path) = path {
                            paths.insert(id, path);
                        }
                        Some(git_source::ObjectInfo {
                            id: id.to_hex(),
                            kind,
                            size,
                        })
                    },
                )
                .collect())
        })();
        self.extra.host_time += started.elapsed();
        result
    }
}

impl store::Host for PluginState<BackupCtx> {
    fn latest_refs(&mut self) -> wasmtime::Result<Option<Vec<store::StoredRef>>> {
        let started = std::time::Instant::now();
        let result = (|| -> wasmtime::Result<Option<Vec<store::StoredRef>>> {
            let latest = self
                .extra
                .deps
                .store
                .latest_snapshot(&self.extra.event.repository)?;
            let Some(latest) = latest else {
                return Ok(None);
            };
            let refs = self.extra.deps.store.snapshot_refs(&latest)?;
            Ok(Some(
                refs.into_iter()
                    .map(|(name, target)| store::StoredRef {
                        name,
                        target: target.to_hex(),
                    })
                    .collect(),
            ))
        })();
        self.extra.host_time += started.elapsed();
        result
    }

    fn missing(&mut self, ids: Vec<String>) -> Result<Vec<String>, String> {
        let started = std::time::Instant::now();
        let result = (|| -> Result<Vec<String>, String> {
            let oids = parse_oids(&ids)?;
            let missing = self.extra.deps.store.missing(&oids);
            let missing = noted(&mut self.extra.failure, missing)?;
            self.extra.stats.present += (oids.len() - missing.len()) as u64;
            Ok(missing.into_iter().map(GitOid::to_hex).collect())
        })();
        self.extra.host_time += started.elapsed();
        result
    }

    fn copy_objects(&mut self, ids: Vec<String>) -> Result<store::CopyStats, String> {
        let started = std::time::Instant::now();
        let result = (|| -> Result<store::CopyStats, String> {
            let oids = parse_oids(&ids)?;
            let store = self.extra.deps.store.clone();
            let paths = std::mem::take(&mut self.extra.paths);
            let objects: Vec<(GitOid, Option<&str>)> = oids
                .iter()
                .map(|oid| (*oid, paths.get(oid).map(String::as_str)))
                .collect();
            let workspace = self.extra.workspace()?;
            let progress = self
                .extra
                .deps
                .progress
                .clone()
                .filter(|_| objects.len() >= crate::progress::BACKUP_PROGRESS_FROM);
            let repo = self.extra.event.repository.clone();
            let tell = |step| {
                if let Some(progress) = &progress {
                    progress(&repo, step);
                }
            };
            tell(crate::progress::Progress::Start(
                "copying objects",
                objects.len() as u64,
            ));
            let mut read = 0u64;
            let result = store.put_objects(&objects, |oid| {
                read += 1;
                if read.is_multiple_of(64) {
                    tell(crate::progress::Progress::At(read));
                }
                workspace.read(oid)
            });
            tell(crate::progress::Progress::Done);
            drop(objects);
            self.extra.paths = paths;
            let stats = noted(&mut self.extra.failure, result)?;
            tracing::debug!(
                ids = oids.len(),
                written = stats.written,
                peak_rss_kib = peak_rss_kib(),
                "copied objects"
            );
            self.extra.stats.written += stats.written;
            self.extra.stats.present += stats.present;
            self.extra.stats.stored_bytes += stats.stored_bytes;
            Ok(store::CopyStats {
                written: stats.written,
                present: stats.present,
                stored_bytes: stats.stored_bytes,
            })
        })();
        self.extra.host_time += started.elapsed();
        result
    }

    fn commit_snapshot(&mut self, request: store::SnapshotRequest) -> Result<String, String> {
        let started = std::time::Instant::now();
        let result = (|| -> Result<String, String> {
            let ctx = &mut self.extra;
            let event = &ctx.event;
            let mut refs = std::collections::BTreeMap::new();
            for r in request.refs {
                let target =
                    GitOid::from_hex(&r.target).map_err(|e| format!("ref {}: {e}", r.name))?;
                refs.insert(r.name, target);
            }
            let body = NewSnapshot {
                repository: event.repository.clone(),
                source: event.source.clone(),
                time_ms: now_ms(),
                delivery_id: event.delivery_id.clone(),
                event_key: event.event_key.clone(),
                actor: event.actor.clone(),
                refs,
                updates: request
                    .updates
                    .into_iter()
                    .map(|u| RefUpdate {
                        deleted: u.new_target.is_none(),
                        name: u.name,
                        old_target: u.old_target,
                        new_target: u.new_target,
                        forced: u.forced,
                    })
                    .collect(),
                stats: ctx.stats,
            };
            let committed = ctx.deps.store.commit_snapshot(body);
            let snapshot = noted(&mut ctx.failure, committed)?;
            let id = snapshot.id.to_string();
            ctx.snapshot = Some(snapshot);
            Ok(id)
        })();
        self.extra.host_time += started.elapsed();
        result
    }
}

/// What a backup call produced.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot: Option<Snapshot>,
    pub stats: CopyStats,
    /// Time spent in host calls.
    pub host_time: std::time::Duration,
}

/// A loaded backup plugin.
pub struct BackupPlugin {
    base: Loaded,
    pre: bindings::BackupPre<PluginState<BackupCtx>>,
}

impl BackupPlugin {
    pub fn load(engine: &Engine, spec: PluginSpec) -> Result<Self, PluginError> {
        let component = sandbox::compile(engine, &spec, "backup")?;
        Self::load_compiled(engine, spec, &component)
    }

    /// [`BackupPlugin::load`] of a component already compiled (by
    /// `inspect`, which told its world): it is not compiled twice.
    pub fn load_compiled(
        engine: &Engine,
        spec: PluginSpec,
        component: &wasmtime::component::Component,
    ) -> Result<Self, PluginError> {
        let pre = sandbox::link(engine, &spec.name, "backup", component, |linker| {
            bindings::Backup::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        })?;
        let pre =
            bindings::BackupPre::new(pre).map_err(sandbox::load_error(&spec.name, "backup"))?;
        Ok(Self {
            base: Loaded::new(engine, &spec),
            pre,
        })
    }

    pub fn name(&self) -> &str {
        &self.base.name
    }

    /// Run one backup. Blocking: call from a blocking thread.
    pub fn run(
        &self,
        deps: Arc<BackupDeps>,
        event: &Event,
        excluded: &[String],
    ) -> Result<BackupOutcome, PluginError> {
        let mut store = self.base.store(event, BackupCtx::new(deps, event))?;
        self.call(&mut store, event, excluded)
    }

    /// Run one backup as [`BackupPlugin::run`] does, and say what the call
    /// cost and said (`hookvault plugin test`).
    pub fn trial(
        &self,
        deps: Arc<BackupDeps>,
        event: &Event,
    ) -> Result<(Result<BackupOutcome, PluginError>, sandbox::CallReport), PluginError> {
        let started = std::time::Instant::now();
        let mut store = self.base.store(event, BackupCtx::new(deps, event))?;
        store.data_mut().capture();
        let outcome = self.call(&mut store, event, &[]);
        Ok((outcome, self.base.report(&mut store, started)))
    }

    fn call(
        &self,
        store: &mut wasmtime::Store<PluginState<BackupCtx>>,
        event: &Event,
        excluded: &[String],
    ) -> Result<BackupOutcome, PluginError> {
        let result = self
            .pre
            .instantiate(&mut *store)
            .and_then(|instance| instance.call_backup(&mut *store, &to_wit_event(event, excluded)));
        let host_failure = store.data().extra.failure;
        self.base
            .reported(self.base.finish(store, result)?)
            .map_err(|e| match e {
                PluginError::Reported {
                    plugin, message, ..
                } => PluginError::Reported {
                    plugin,
                    message,
                    host_failure,
                },
                other => other,
            })?;
        let ctx = &mut store.data_mut().extra;
        Ok(BackupOutcome {
            snapshot: ctx.snapshot.take(),
            stats: ctx.stats,
            host_time: ctx.host_time,
        })
    }
}
