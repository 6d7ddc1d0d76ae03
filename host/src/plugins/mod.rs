//! The plugin host (wasmtime component model). Plugins are compiled once at
//! start-up into `InstancePre`s; each call gets a fresh store with its own
//! limits. Each capability is its own module under `caps/` (a trait for
//! what it needs, its WIT host impl, `add_to_linker`); each world's module
//! (`filter`, `backup`, `metadata`) grants its capabilities and calls the
//! plugin. Every world gets `log`, `config` and `alerts`; backup plugins
//! also get `git-source` and `store`, metadata plugins `metadata` and
//! `documents`.

mod backup;
mod bindings;
pub mod caps;
mod filter;
pub mod inspect;
mod metadata;
mod sandbox;
pub mod scaffold;
pub mod trial;

use std::path::PathBuf;
use std::sync::Arc;

use sha2::Digest as _;
use wasmtime::Engine;

use crate::config::{Config, PluginConfig, PluginKind};
use crate::failure::FailureKind;
pub use backup::{BackupCtx, BackupDeps, BackupOutcome, BackupPlugin, SourceGit};
pub use filter::{Decision, FilterPlugin, Trial};
pub use metadata::MetadataPlugin;
pub use sandbox::{CallReport, Limits, LogLine, OUTPUT_CAP};

/// Plugin calls a [`new_engine`] pool holds at once: the default
/// `worker.concurrency`.
const DEFAULT_CONCURRENT_CALLS: u32 = 4;

/// A plugin engine with hookvault's settings (fuel, epoch deadlines,
/// pooling), its pool sized for the default `worker.concurrency`.
pub fn new_engine() -> Result<Engine, PluginError> {
    sandbox::engine(DEFAULT_CONCURRENT_CALLS, None)
}

/// [`new_engine`] for the plugin author's commands (`plugin check`,
/// `plugin test`), with wasmtime's cache of compiled components in
/// `$HOOKVAULT_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/hookvault/plugin-cache`,
/// else `~/.cache/hookvault/plugin-cache`: trying a large component again
/// (a Python one is 18 MB) does not compile it again. Without a usable
/// directory it compiles every time.
pub fn tool_engine() -> Result<Engine, PluginError> {
    let dir = std::env::var_os("HOOKVAULT_PLUGIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|d| PathBuf::from(d).join("hookvault/plugin-cache"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hookvault/plugin-cache"))
        });
    let cache = dir.and_then(|dir| match sandbox::plugin_cache(&dir) {
        Ok(cache) => Some(cache),
        Err(e) => {
            tracing::debug!(error = %e, "no compiled-plugin cache; compiling every time");
            None
        }
    });
    sandbox::engine(DEFAULT_CONCURRENT_CALLS, cache)
}

/// The default backup plugin, built from `plugins/git-backup`.
pub const GIT_BACKUP_WASM: &[u8] = include_bytes!(concat!(
    env!("HOOKVAULT_PLUGIN_ARTIFACTS"),
    "/git_backup.wasm"
));

/// The pull-request backup plugin, built from `plugins/pr-metadata`.
pub const PR_METADATA_WASM: &[u8] = include_bytes!(concat!(
    env!("HOOKVAULT_PLUGIN_ARTIFACTS"),
    "/pr_metadata.wasm"
));

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("plugin {plugin}: cannot read {path}: {source}")]
    Read {
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "plugin {plugin}: the file's sha256 is {actual}, but the config pins {expected}: refused (update the pin only for a file you trust)"
    )]
    Pinned {
        plugin: String,
        expected: String,
        actual: String,
    },
    #[error("plugin {plugin}: unknown builtin {builtin:?} (known: git-backup, pr-metadata)")]
    UnknownBuiltin { plugin: String, builtin: String },
    #[error("plugin {plugin}: not a valid component for world {world}: {message}")]
    Load {
        plugin: String,
        world: &'static str,
        message: String,
    },
    /// `context`: the plugin's version (sha256 prefix), the panic message
    /// it printed, the innermost frames of its wasm backtrace.
    #[error("plugin {plugin} {reason}{context}")]
    Trap {
        plugin: String,
        reason: String,
        detail: String,
        context: String,
    },
    #[error(
        "plugin {plugin}: the call's input (event and config) is {bytes} bytes, over its limit of {limit} (raise `input_mib` to allow it)"
    )]
    InputTooLarge {
        plugin: String,
        bytes: usize,
        limit: usize,
    },
    #[error("plugin {plugin} reported an error: {message}")]
    Reported {
        plugin: String,
        message: String,
        /// The kind of the last host call that failed during the call,
        /// whose error the plugin most likely passed on.
        host_failure: Option<FailureKind>,
    },
}

/// The phrase a plugin's error contains when its configuration is wrong
/// (errors cross the published 0.1.0 interface as strings; the bundled
/// plugins word it so).
const INVALID_CONFIG: &str = "invalid plugin config";

impl PluginError {
    /// Whether calling the plugin again can help. A plugin passing on a host
    /// call's error takes that error's kind (a refused token, a full disk);
    /// a plugin saying its configuration is invalid fails for good; a trap
    /// (fuel, time, memory) or any other report may pass on a later attempt.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Reported {
                host_failure: Some(kind),
                ..
            } => *kind,
            Self::Reported { message, .. } if message.contains(INVALID_CONFIG) => {
                FailureKind::Permanent
            }
            Self::Reported { .. } | Self::Trap { .. } => FailureKind::Transient,
            Self::Engine(_)
            | Self::Read { .. }
            | Self::UnknownBuiltin { .. }
            | Self::Pinned { .. }
            | Self::InputTooLarge { .. }
            | Self::Load { .. } => FailureKind::Permanent,
        }
    }
}

/// Every configured plugin, loaded and linked.
pub struct PluginHost {
    engine: Engine,
    pub filters: Vec<FilterPlugin>,
    /// World `backup` (0.1.0): git.
    pub backups: Vec<BackupPlugin>,
    /// World `metadata-backup` (0.2.0): pull requests and comments.
    pub metadata: Vec<MetadataPlugin>,
}

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost")
            .field("filters", &self.filters.len())
            .field("backups", &self.backups.len())
            .field("metadata", &self.metadata.len())
            .finish_non_exhaustive()
    }
}

/// A plugin's bytes, name, config and limits.
pub struct PluginSpec {
    pub name: Arc<str>,
    pub config_json: Arc<str>,
    pub limits: Limits,
    pub bytes: Vec<u8>,
    /// Where its alerts go (logged only, unless `serve` sets its own).
    pub alerts: crate::alerts::Alerts,
}

impl PluginSpec {
    pub fn from_config(plugin: &PluginConfig) -> Result<Self, PluginError> {
        let bytes = match (&plugin.builtin, &plugin.path) {
            (Some(builtin), _) => match builtin.as_str() {
                "git-backup" => GIT_BACKUP_WASM.to_vec(),
                "pr-metadata" => PR_METADATA_WASM.to_vec(),
                other => {
                    return Err(PluginError::UnknownBuiltin {
                        plugin: plugin.name.clone(),
                        builtin: other.to_string(),
                    });
                }
            },
            (None, Some(path)) => std::fs::read(path).map_err(|source| PluginError::Read {
                plugin: plugin.name.clone(),
                path: path.clone(),
                source,
            })?,
            (None, None) => Vec::new(),
        };
        if let Some(expected) = &plugin.sha256 {
            let actual: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if !expected.trim().eq_ignore_ascii_case(&actual) {
                return Err(PluginError::Pinned {
                    plugin: plugin.name.clone(),
                    expected: expected.trim().to_ascii_lowercase(),
                    actual,
                });
            }
        }
        Ok(Self {
            name: plugin.name.as_str().into(),
            config_json: plugin.config_json().into(),
            limits: Limits::of(plugin),
            bytes,
            alerts: crate::alerts::Alerts::log_only(),
        })
    }

    /// The built-in git-backup plugin with default limits.
    pub fn default_backup() -> Result<Self, PluginError> {
        Self::from_config(&PluginConfig {
            name: "git-backup".into(),
            kind: PluginKind::Backup,
            builtin: Some("git-backup".into()),
            path: None,
            sha256: None,
            config: None,
            fuel: None,
            memory_mib: None,
            timeout_secs: None,
            output_kib: None,
            input_mib: None,
        })
    }
}

impl PluginHost {
    /// Compile and link every plugin in `config`, in an engine whose
    /// instance pool holds one call per worker (`worker.concurrency`).
    /// Without a configured backup plugin, the built-in git-backup is used.
    pub fn load(config: &Config, alerts: &crate::alerts::Alerts) -> Result<Self, PluginError> {
        let started = std::time::Instant::now();
        let cache = sandbox::plugin_cache(&config.store.path.join("plugin-cache"))?;
        let engine = sandbox::engine(config.worker.concurrency, Some(cache.clone()))?;
        let mut filters = Vec::new();
        let mut backups = Vec::new();
        let mut metadata = Vec::new();
        for plugin in &config.plugins {
            let mut spec = PluginSpec::from_config(plugin)?;
            spec.alerts = alerts.clone();
            match plugin.kind {
                PluginKind::Filter => filters.push(FilterPlugin::load(&engine, spec)?),
                PluginKind::Backup => {
                    let (component, shape) = inspect::inspect(&engine, &spec.name, &spec.bytes)?;
                    if shape.world == Some(inspect::World::MetadataBackup) {
                        metadata.push(MetadataPlugin::<metadata::MetadataCtx>::load(
                            &engine, &spec, &component,
                        )?);
                    } else {
                        backups.push(BackupPlugin::load_compiled(&engine, spec, &component)?);
                    }
                }
            }
        }
        if backups.is_empty() {
            let mut spec = PluginSpec::default_backup()?;
            spec.alerts = alerts.clone();
            backups.push(BackupPlugin::load(&engine, spec)?);
        }
        tracing::info!(
            compiled = cache.cache_misses(),
            from_cache = cache.cache_hits(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugins loaded"
        );
        Ok(Self {
            engine,
            filters,
            backups,
            metadata,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// What `plugin check` found.
#[derive(Debug)]
pub struct Checked {
    /// The component's shape, when it is one.
    pub component: Option<inspect::Inspection>,
    /// Why this host does not load it (`None`: it does).
    pub error: Option<PluginError>,
}

/// `plugin check`: what the component at `path` is, and whether this host
/// loads it (linked exactly as `serve` would link it; an import the host
/// does not grant is named in the error).
pub fn check(path: &std::path::Path) -> Checked {
    let failed = |error| Checked {
        component: None,
        error: Some(error),
    };
    let engine = match tool_engine() {
        Ok(engine) => engine,
        Err(e) => return failed(e),
    };
    // Default limits, as a plugin configured by path alone gets them.
    let spec = match PluginSpec::from_config(&PluginConfig::filter_at(path)) {
        Ok(spec) => spec,
        Err(e) => return failed(e),
    };
    let (component, shape) = match inspect::inspect(&engine, &spec.name, &spec.bytes) {
        Ok(found) => found,
        Err(e) => return failed(e),
    };
    let loaded = match shape.world {
        Some(inspect::World::Filter) => {
            FilterPlugin::load_compiled(&engine, spec, &component).map(drop)
        }
        Some(inspect::World::Backup) => {
            BackupPlugin::<BackupCtx>::load_compiled(&engine, spec, &component).map(drop)
        }
        Some(inspect::World::MetadataBackup) => {
            MetadataPlugin::<metadata::MetadataCtx>::load(&engine, &spec, &component).map(drop)
        }
        None => Err(PluginError::Load {
            plugin: spec.name.to_string(),
            world: "any",
            message: format!(
                "exports neither `filter` nor `backup`, so it is no hookvault plugin (it exports: {})",
                if shape.exports.is_empty() {
                    "nothing".to_string()
                } else {
                    shape.exports.join(", ")
                }
            ),
        }),
    };
    Checked {
        component: Some(shape),
        error: loaded.err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(message: &str, host_failure: Option<FailureKind>) -> PluginError {
        PluginError::Reported {
            plugin: "git-backup".into(),
            message: message.into(),
            host_failure,
        }
    }

    /// A plugin's error takes the kind of the host call it passed on; an
    /// invalid config is permanent; traps and other reports may pass.
    #[test]
    fn plugin_errors_are_classified() {
        let refused = reported(
            "fetching acme/app: remote answered 401: the token was refused",
            Some(FailureKind::Permanent),
        );
        assert_eq!(refused.kind(), FailureKind::Permanent);
        let full = reported("no space left", Some(FailureKind::NoSpace));
        assert_eq!(full.kind(), FailureKind::NoSpace);
        let config = reported("git-backup: invalid plugin config: unknown field `x`", None);
        assert_eq!(config.kind(), FailureKind::Permanent);
        assert_eq!(
            reported("something odd", None).kind(),
            FailureKind::Transient
        );
        let trap = PluginError::Trap {
            plugin: "looper".into(),
            reason: "exceeded its fuel (instruction) budget".into(),
            detail: String::new(),
            context: String::new(),
        };
        assert_eq!(trap.kind(), FailureKind::Transient);
    }
}
