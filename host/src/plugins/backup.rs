//! The `backup` world: a plugin drives one backup through the `git-source`
//! and `store` capabilities. Bytes move natively between the backup's fetch
//! workspace and the store; the plugin only ever sees object ids, kinds and
//! sizes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::Engine;

use super::caps::{self, GitSource, HostError, ObjectSink};
use super::sandbox::{self, Loaded, PluginState};
use super::{PluginError, PluginSpec};
use crate::config::{SecretString, SourceConfig};
use crate::event::{Event, now_ms};
use crate::git::{ObjectInfo, Remote, RemoteRef, Workspace};
use crate::ids::GitOid;
use crate::vault::{CopyStats, NewSnapshot, RefUpdate, Snapshot, Vault};

use super::bindings::backup as bindings;

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

/// A backup's capabilities served by the real thing: a fetch workspace
/// for `git-source`, the vault for `store`.
pub struct BackupCtx {
    deps: Arc<BackupDeps>,
    event: Event,
    /// The workspace the fetch received its pack into (none before it).
    workspace: Option<Workspace>,
    /// Paths the walks of this call met, and what each object probably
    /// resembles, so copies can delta by path.
    paths: HashMap<GitOid, (String, Option<GitOid>)>,
    stats: CopyStats,
    snapshot: Option<Snapshot>,
}

impl BackupCtx {
    pub fn new(deps: Arc<BackupDeps>, event: &Event) -> Self {
        BackupCtx {
            deps,
            event: event.clone(),
            workspace: None,
            paths: HashMap::new(),
            stats: CopyStats::default(),
            snapshot: None,
        }
    }

    fn remote(&self) -> Result<Remote, HostError> {
        let Some(source) = self.deps.sources.get(&self.event.source) else {
            return Err(HostError::permanent(format!(
                "source {:?} is not configured",
                self.event.source
            )));
        };
        Ok(Remote::new(
            &self.event.repository,
            source.config.clone_url(&self.event.repository),
            source.authorization.clone(),
        ))
    }

    fn workspace(&self) -> Result<&Workspace, HostError> {
        // The plugin called out of order: its bug, which a retry repeats.
        self.workspace.as_ref().ok_or_else(|| {
            HostError::permanent("nothing fetched yet: call fetch before walk or copy-objects")
        })
    }
}

impl GitSource for BackupCtx {
    /// Fetch into a new workspace, negotiating against the repository's
    /// latest snapshot and completing the thin pack from the vault.
    fn fetch(&mut self) -> Result<Vec<RemoteRef>, HostError> {
        let started = std::time::Instant::now();
        let remote = self.remote()?;
        let deps = self.deps.clone();
        let store = &deps.store;
        let previous = store
            .latest_refs(&self.event.repository)?
            .unwrap_or_default();
        // Drop an earlier workspace of this call first: one per backup.
        self.workspace = None;
        let workspace = Workspace::create(&deps.work_dir, &self.event.repository)?;
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
        let fetched = workspace.fetch(&remote, &previous, &held, &bases)?;
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

    fn walk(&mut self, tips: &[GitOid], known: &[GitOid]) -> Result<Vec<ObjectInfo>, HostError> {
        let started = std::time::Instant::now();
        let store = self.deps.store.clone();
        // An error asking the vault counts as "not held": the walk then
        // lists more, never less.
        let have = move |oid: &GitOid| store.has(oid).unwrap_or(false);
        let objects = self.workspace()?.walk(tips, known, &have)?;
        tracing::debug!(
            tips = tips.len(),
            known = known.len(),
            listed = objects.len(),
            ms = started.elapsed().as_millis() as u64,
            peak_rss_kib = peak_rss_kib(),
            "walked the workspace"
        );
        for object in &objects {
            if let Some(path) = &object.path {
                self.paths.insert(object.id, (path.clone(), object.like));
            }
        }
        Ok(objects)
    }
}

impl ObjectSink for BackupCtx {
    fn latest_refs(&mut self) -> Result<Option<BTreeMap<String, GitOid>>, HostError> {
        let store = &self.deps.store;
        let Some(latest) = store.latest_snapshot(&self.event.repository)? else {
            return Ok(None);
        };
        Ok(Some(store.snapshot_refs(&latest)?))
    }

    fn missing(&mut self, ids: &[GitOid]) -> Result<Vec<GitOid>, HostError> {
        let missing = self.deps.store.missing(ids)?;
        self.stats.present += (ids.len() - missing.len()) as u64;
        Ok(missing)
    }

    fn copy_objects(&mut self, ids: &[GitOid]) -> Result<CopyStats, HostError> {
        let store = self.deps.store.clone();
        let objects: Vec<(GitOid, Option<&str>, Option<GitOid>)> = ids
            .iter()
            .map(|oid| match self.paths.get(oid) {
                Some((path, like)) => (*oid, Some(path.as_str()), *like),
                None => (*oid, None, None),
            })
            .collect();
        let workspace = self.workspace()?;
        let progress = self
            .deps
            .progress
            .clone()
            .filter(|_| objects.len() >= crate::progress::BACKUP_PROGRESS_FROM);
        let repo = &self.event.repository;
        let tell = |step| {
            if let Some(progress) = &progress {
                progress(repo, step);
            }
        };
        tell(crate::progress::Progress::Start(
            "copying objects",
            objects.len() as u64,
        ));
        let mut read = 0u64;
        let result = store.stage_objects(&objects, |oid| {
            read += 1;
            if read.is_multiple_of(64) {
                tell(crate::progress::Progress::At(read));
            }
            workspace.read(oid)
        });
        tell(crate::progress::Progress::Done);
        let stats = result?;
        tracing::debug!(
            ids = ids.len(),
            written = stats.written,
            peak_rss_kib = peak_rss_kib(),
            "copied objects"
        );
        self.stats.written += stats.written;
        self.stats.present += stats.present;
        self.stats.stored_bytes += stats.stored_bytes;
        Ok(stats)
    }

    fn commit_snapshot(
        &mut self,
        refs: BTreeMap<String, GitOid>,
        updates: Vec<RefUpdate>,
    ) -> Result<String, HostError> {
        let event = &self.event;
        let body = NewSnapshot {
            repository: event.repository.clone(),
            source: event.source.clone(),
            time_ms: now_ms(),
            delivery_id: event.delivery_id.clone(),
            event_key: event.event_key.clone(),
            actor: event.actor.clone(),
            refs,
            updates,
            stats: self.stats,
        };
        let snapshot = self.deps.store.commit_snapshot(body)?;
        let id = snapshot.id.to_string();
        self.snapshot = Some(snapshot);
        Ok(id)
    }

    fn outcome(&mut self) -> (Option<Snapshot>, CopyStats) {
        (self.snapshot.take(), self.stats)
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

/// What a backup call produced.
#[derive(Debug)]
pub struct BackupOutcome {
    pub snapshot: Option<Snapshot>,
    pub stats: CopyStats,
    /// Time spent in host calls.
    pub host_time: std::time::Duration,
}

/// A loaded backup plugin, its capabilities served by `X` (the vault and
/// a fetch by default).
pub struct BackupPlugin<X: 'static = BackupCtx> {
    base: Loaded,
    pre: bindings::BackupPre<PluginState<X>>,
}

impl BackupPlugin<BackupCtx> {
    pub fn load(engine: &Engine, spec: PluginSpec) -> Result<Self, PluginError> {
        let component = sandbox::compile(engine, &spec, "backup")?;
        Self::load_compiled(engine, spec, &component)
    }

    /// Run one backup into the vault. Blocking: call from a blocking
    /// thread.
    pub fn run(
        &self,
        deps: Arc<BackupDeps>,
        event: &Event,
        excluded: &[String],
    ) -> Result<BackupOutcome, PluginError> {
        self.run_with(BackupCtx::new(deps, event), event, excluded)
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
}

impl<X: GitSource + ObjectSink + 'static> BackupPlugin<X> {
    /// [`BackupPlugin::load`] of a component already compiled (by
    /// `inspect`, which told its world): it is not compiled twice.
    pub fn load_compiled(
        engine: &Engine,
        spec: PluginSpec,
        component: &wasmtime::component::Component,
    ) -> Result<Self, PluginError> {
        let pre = sandbox::link(engine, &spec.name, "backup", component, |linker| {
            caps::git_source::add_to_linker(linker)?;
            caps::store::add_to_linker(linker)
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

    /// Run one backup with its capabilities served by `capabilities`.
    pub fn run_with(
        &self,
        capabilities: X,
        event: &Event,
        excluded: &[String],
    ) -> Result<BackupOutcome, PluginError> {
        let mut store = self.base.store(event, capabilities)?;
        self.call(&mut store, event, excluded)
    }

    fn call(
        &self,
        store: &mut wasmtime::Store<PluginState<X>>,
        event: &Event,
        excluded: &[String],
    ) -> Result<BackupOutcome, PluginError> {
        let wit_event = caps::types::to_wit(event, excluded);
        let result = self
            .pre
            .instantiate(&mut *store)
            .and_then(|instance| instance.call_backup(&mut *store, &wit_event));
        let returned = self.base.finish(store, result)?;
        self.base.reported(store, returned)?;
        let host = store.data().host;
        let (snapshot, stats) = store.data_mut().extra.outcome();
        Ok(BackupOutcome {
            snapshot,
            stats,
            host_time: host.time,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The built-in git-backup plugin, run against a recording double of
    //! its capabilities: what it asks the host, in which order, and what it
    //! commits, with no repository or vault.

    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::event::{EventKind, RefChange, RefKind};
    use crate::failure::FailureKind;
    use crate::ids::{ObjectKind, RefName, RepoName};

    fn oid(n: u8) -> GitOid {
        GitOid([n; 20])
    }

    /// A repository of commits, each with one tree and one blob (ids
    /// `n`, `n + 100`, `n + 200`), and a vault that holds `held`.
    #[derive(Default)]
    struct Double {
        remote: Vec<(String, u8)>,
        previous: Option<BTreeMap<String, GitOid>>,
        held: BTreeSet<GitOid>,
        fail_fetch: Option<HostError>,
        calls: Vec<String>,
        copied: Vec<usize>,
        committed: Option<(BTreeMap<String, GitOid>, Vec<RefUpdate>)>,
    }

    fn objects_of(commit: &GitOid) -> [GitOid; 3] {
        let n = commit.0[0];
        [*commit, oid(n + 100), oid(n + 200)]
    }

    impl GitSource for Double {
        fn fetch(&mut self) -> Result<Vec<RemoteRef>, HostError> {
            self.calls.push("fetch".into());
            if let Some(e) = self.fail_fetch.take() {
                return Err(e);
            }
            Ok(self
                .remote
                .iter()
                .map(|(name, n)| RemoteRef {
                    name: name.clone(),
                    target: oid(*n),
                })
                .collect())
        }

        fn walk(
            &mut self,
            tips: &[GitOid],
            known: &[GitOid],
        ) -> Result<Vec<ObjectInfo>, HostError> {
            self.calls
                .push(format!("walk {} tips, {} known", tips.len(), known.len()));
            let known: BTreeSet<GitOid> = known.iter().flat_map(objects_of).collect();
            let walked: BTreeSet<GitOid> = tips.iter().flat_map(objects_of).collect();
            Ok(walked
                .difference(&known)
                .map(|id| ObjectInfo {
                    id: *id,
                    kind: ObjectKind::Blob,
                    size: 1,
                    path: None,
                    like: None,
                })
                .collect())
        }
    }

    impl ObjectSink for Double {
        fn latest_refs(&mut self) -> Result<Option<BTreeMap<String, GitOid>>, HostError> {
            self.calls.push("latest-refs".into());
            Ok(self.previous.clone())
        }

        fn missing(&mut self, ids: &[GitOid]) -> Result<Vec<GitOid>, HostError> {
            self.calls.push(format!("missing {}", ids.len()));
            Ok(ids
                .iter()
                .filter(|id| !self.held.contains(id))
                .copied()
                .collect())
        }

        fn copy_objects(&mut self, ids: &[GitOid]) -> Result<CopyStats, HostError> {
            self.copied.push(ids.len());
            self.held.extend(ids);
            Ok(CopyStats {
                written: ids.len() as u64,
                present: 0,
                stored_bytes: 10 * ids.len() as u64,
            })
        }

        fn commit_snapshot(
            &mut self,
            refs: BTreeMap<String, GitOid>,
            updates: Vec<RefUpdate>,
        ) -> Result<String, HostError> {
            self.calls.push("commit".into());
            self.committed = Some((refs, updates));
            Ok("snapshot-1".into())
        }

        fn outcome(&mut self) -> (Option<Snapshot>, CopyStats) {
            (None, CopyStats::default())
        }
    }

    fn event() -> Event {
        Event {
            delivery_id: "d-1".into(),
            source: "cloud".into(),
            event_key: "repo:push".into(),
            kind: EventKind::Push,
            repository: RepoName::parse("acme/app").expect("repo name"),
            actor: None,
            changes: vec![RefChange {
                name: RefName::parse("refs/heads/main").expect("ref name"),
                kind: RefKind::Branch,
                old_target: Some(oid(1).to_hex()),
                new_target: Some(oid(2).to_hex()),
                forced: true,
            }],
            received_at_ms: 0,
            pull_request: None,
            comment: None,
            comments: Vec::new(),
            previous_name: None,
        }
    }

    fn plugin(config: &str) -> BackupPlugin<Double> {
        let engine = super::super::new_engine().expect("engine");
        let mut spec = PluginSpec::default_backup().expect("spec");
        spec.config_json = config.into();
        let component = sandbox::compile(&engine, &spec, "backup").expect("compile");
        BackupPlugin::load_compiled(&engine, spec, &component).expect("load")
    }

    fn backup(
        double: Double,
        config: &str,
        excluded: &[String],
    ) -> (Result<(), PluginError>, Double) {
        let plugin = plugin(config);
        let event = event();
        let mut store = plugin.base.store(&event, double).expect("store");
        let result = plugin.call(&mut store, &event, excluded).map(drop);
        (result, store.into_data().extra)
    }

    #[test]
    fn git_backup_copies_only_what_is_new_and_keeps_excluded_refs() {
        let double = Double {
            remote: vec![
                ("refs/heads/main".into(), 2),
                ("refs/heads/wip".into(), 4),
                ("refs/heads/new".into(), 3),
            ],
            previous: Some(BTreeMap::from([
                ("refs/heads/main".to_string(), oid(1)),
                ("refs/heads/wip".to_string(), oid(5)),
            ])),
            // The vault already holds commit 3's blob (another repository).
            held: BTreeSet::from([oid(203)]),
            ..Double::default()
        };
        let (result, double) = backup(double, r#"{"batch": 2}"#, &["refs/heads/wip".into()]);
        result.expect("backup");
        // Tips: main's and new's targets; known: the previous targets.
        assert_eq!(
            double.calls,
            [
                "fetch",
                "latest-refs",
                "walk 2 tips, 2 known",
                "missing 6",
                "commit"
            ]
        );
        // Six walked, one held: five copied, two per call.
        assert_eq!(double.copied, [2, 2, 1]);
        let (refs, updates) = double.committed.expect("committed");
        assert_eq!(
            refs,
            BTreeMap::from([
                ("refs/heads/main".to_string(), oid(2)),
                ("refs/heads/new".to_string(), oid(3)),
                // Excluded by a filter: as it was.
                ("refs/heads/wip".to_string(), oid(5)),
            ])
        );
        let updates: Vec<_> = updates
            .iter()
            .map(|u| (u.name.as_str(), u.forced, u.deleted, u.old_target.is_some()))
            .collect();
        assert_eq!(
            updates,
            [
                ("refs/heads/main", true, false, true),
                ("refs/heads/new", false, false, false)
            ]
        );
    }

    #[test]
    fn unchanged_refs_commit_nothing() {
        let double = Double {
            remote: vec![("refs/heads/main".into(), 2)],
            previous: Some(BTreeMap::from([("refs/heads/main".to_string(), oid(2))])),
            ..Double::default()
        };
        let (result, double) = backup(double, "{}", &[]);
        result.expect("backup");
        assert_eq!(double.calls, ["fetch", "latest-refs"]);
        assert!(double.committed.is_none());
    }

    #[test]
    fn a_host_error_keeps_its_kind_through_the_plugin() {
        let double = Double {
            remote: vec![("refs/heads/main".into(), 2)],
            fail_fetch: Some(HostError::permanent(
                "remote answered 401: the token was refused",
            )),
            ..Double::default()
        };
        let (result, double) = backup(double, "{}", &[]);
        let error = result.expect_err("the fetch failed");
        assert_eq!(error.kind(), FailureKind::Permanent, "{error}");
        assert!(
            error.to_string().contains("the token was refused"),
            "{error}"
        );
        assert_eq!(double.calls, ["fetch"]);
    }
}
