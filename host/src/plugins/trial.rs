//! `hookvault plugin test`: one webhook body through one plugin, as
//! `serve` would run it (the same parser, sandbox and default limits), with
//! what the call decided or stored, logged, alerted, wrote and cost. A
//! backup plugin backs up a local repository (`--repo-dir`) into a scratch
//! vault; a metadata plugin stores into one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::sandbox::CallReport;
use super::{
    BackupDeps, BackupPlugin, Decision, FilterPlugin, MetadataPlugin, PluginError, PluginSpec,
    SourceGit, inspect, tool_engine,
};
use crate::bitbucket::normalize;
use crate::config::{PluginConfig, SourceConfig, SourceKind};
use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    #[error("{path}: {message}")]
    Payload { path: String, message: String },
    #[error(
        "{path} is a backup plugin: give --repo-dir DIR, a git repository for it to back up into a scratch vault"
    )]
    NeedsRepository { path: String },
    #[error("{path} exports neither `filter` nor `backup`: no hookvault plugin")]
    NoWorld { path: String },
    #[error("--repo-dir {path}: {message}")]
    Repository { path: String, message: String },
}

/// What a call came to, by world.
#[derive(Debug)]
pub enum Outcome {
    Filter(Result<Decision, PluginError>),
    Backup(Result<BackupSummary, PluginError>),
    /// The document versions written.
    Metadata(Result<Vec<String>, PluginError>),
}

/// What a backup plugin's call recorded.
#[derive(Debug, serde::Serialize)]
pub struct BackupSummary {
    /// The snapshot committed (none when the refs were unchanged).
    pub snapshot: Option<String>,
    pub refs: usize,
    pub objects_written: u64,
    pub objects_present: u64,
    pub stored_bytes: u64,
    /// Of the call's time, what the host's calls (fetch, walk, copy, ...)
    /// took; the rest is the sandbox and the plugin.
    pub host_ms: f64,
}

/// What `plugin test` found.
#[derive(Debug)]
pub enum Tested {
    /// hookvault records this event and runs no plugin on it.
    Ignored { event_key: String },
    /// The call.
    Ran(Box<Ran>),
}

/// The event as the plugin saw it, the call's outcome and its report.
#[derive(Debug)]
pub struct Ran {
    pub event: Event,
    pub world: inspect::World,
    pub outcome: Outcome,
    pub report: CallReport,
}

/// Where a backup or metadata plugin under test writes.
pub struct Scratch<'a> {
    /// A git repository a backup plugin fetches as the event's repository.
    pub repo_dir: Option<&'a Path>,
    /// A vault to use (created when missing; kept); default: a temporary
    /// one, removed afterwards.
    pub vault_dir: Option<&'a Path>,
}

/// Run the plugin at `plugin` on the webhook body at `payload`. The event
/// key is `event_key`, or the body's own `eventKey` (Data Center), or
/// `repo:push`; a body with `eventKey` is read as Data Center's.
/// `config_json` is what the plugin's config table would be, as JSON. A
/// filter needs nothing else; a backup plugin backs up `scratch.repo_dir`
/// into a scratch vault, a metadata plugin stores into one.
pub fn run(
    plugin: &Path,
    payload: &Path,
    event_key: Option<&str>,
    config_json: String,
    scratch: &Scratch<'_>,
) -> Result<Tested, TrialError> {
    let bad = |message: String| TrialError::Payload {
        path: payload.display().to_string(),
        message,
    };
    let body = std::fs::read(payload).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let own_key = value.get("eventKey").and_then(|k| k.as_str());
    let source_kind = if own_key.is_some() {
        SourceKind::DataCenter
    } else {
        SourceKind::Cloud
    };
    let event_key = event_key.or(own_key).unwrap_or("repo:push").to_string();
    let envelope = normalize::Envelope {
        source: SOURCE,
        source_kind,
        event_key: &event_key,
        delivery_id: "plugin-test",
        received_at_ms: crate::event::now_ms(),
    };
    let event = match normalize::parse(&envelope, &body).map_err(|e| bad(e.to_string()))? {
        normalize::Parsed::Event(event) => event,
        normalize::Parsed::Ignored => return Ok(Tested::Ignored { event_key }),
    };

    let engine = tool_engine()?;
    let mut spec = PluginSpec::from_config(&PluginConfig::filter_at(plugin))?;
    spec.config_json = config_json.into();
    let (component, shape) = inspect::inspect(&engine, &spec.name, &spec.bytes)?;
    let path = plugin.display().to_string();
    let world = shape
        .world
        .ok_or(TrialError::NoWorld { path: path.clone() })?;
    if world != inspect::World::Filter {
        // A backup or metadata plugin gets a backup plugin's default
        // limits, as in `serve`.
        let as_backup = PluginConfig {
            kind: crate::config::PluginKind::Backup,
            ..PluginConfig::filter_at(plugin)
        };
        spec.limits = super::Limits::of(&as_backup);
    }
    let (outcome, report) = match world {
        inspect::World::Filter => {
            let trial = FilterPlugin::load_compiled(&engine, spec, &component)?.trial(&event)?;
            (Outcome::Filter(trial.decision), trial.report)
        }
        inspect::World::Backup => {
            let repo_dir = scratch
                .repo_dir
                .ok_or(TrialError::NeedsRepository { path })?;
            let (deps, _temporary) =
                scratch_deps(scratch.vault_dir, Some((repo_dir, source_kind)))?;
            let (outcome, report) =
                BackupPlugin::load_compiled(&engine, spec, &component)?.trial(deps, &event)?;
            let outcome = outcome.map(|o| BackupSummary {
                refs: o.snapshot.as_ref().map_or(0, |s| {
                    usize::try_from(s.body.refs.count).unwrap_or(usize::MAX)
                }),
                snapshot: o.snapshot.map(|s| s.id.to_string()),
                objects_written: o.stats.written,
                objects_present: o.stats.present,
                stored_bytes: o.stats.stored_bytes,
                host_ms: o.host_time.as_secs_f64() * 1000.0,
            });
            (Outcome::Backup(outcome), report)
        }
        inspect::World::MetadataBackup => {
            let (deps, _temporary) = scratch_deps(scratch.vault_dir, None)?;
            let (written, report) =
                MetadataPlugin::load(&engine, &spec, &component)?.trial(deps, &event)?;
            (Outcome::Metadata(written), report)
        }
    };
    Ok(Tested::Ran(Box::new(Ran {
        event: *event,
        world,
        outcome,
        report,
    })))
}

/// The source name events under test come from.
const SOURCE: &str = "plugin-test";

/// A vault (at `vault_dir`, or temporary) and a work directory, with
/// `repo` as the one source's repository. The temporary directory, when
/// there is one, must outlive the deps.
fn scratch_deps(
    vault_dir: Option<&Path>,
    repo: Option<(&Path, SourceKind)>,
) -> Result<(Arc<BackupDeps>, tempfile::TempDir), TrialError> {
    let io = |path: &Path, e: std::io::Error| TrialError::Repository {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let temporary = tempfile::tempdir().map_err(|e| io(Path::new("a temporary directory"), e))?;
    let vault_dir = vault_dir.map_or_else(|| temporary.path().join("vault"), Path::to_path_buf);
    let store = crate::vault::Vault::open_local(
        &vault_dir,
        crate::vault::Create::IfMissing,
        crate::vault::WriteOptions::default(),
    )?;
    let mut sources = HashMap::new();
    if let Some((dir, kind)) = repo {
        let dir = dir.canonicalize().map_err(|e| io(dir, e))?;
        if !dir.join("HEAD").is_file() && !dir.join(".git").exists() {
            return Err(TrialError::Repository {
                path: dir.display().to_string(),
                message: "not a git repository".into(),
            });
        }
        sources.insert(
            SOURCE.to_string(),
            SourceGit {
                config: SourceConfig {
                    name: SOURCE.into(),
                    kind,
                    secrets: Vec::new(),
                    git_url: Some(format!("file://{}", dir.display())),
                    credentials: None,
                    api_url: None,
                    workspaces: Vec::new(),
                    allow_ips: Vec::new(),
                },
                authorization: None,
            },
        );
    }
    let deps = BackupDeps {
        store,
        store_dir: temporary.path().to_path_buf(),
        work_dir: temporary.path().join("work"),
        sources,
        progress: None,
    };
    Ok((Arc::new(deps), temporary))
}
