//! `hookvault serve`: open the queue and the vault, load the plugins, start the worker and
//! the HTTP receiver; shut down gracefully on SIGINT/SIGTERM (the delivery in
//! progress is finished, queued ones stay queued for the next start).

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, ConfigError};
use crate::pipeline::queue::{Queue, QueueError};
use crate::pipeline::reconcile::Reconciler;
use crate::pipeline::worker::{Worker, WorkerError};
use crate::plugins::SourceGit;
use crate::plugins::{BackupDeps, PluginError, PluginHost};
use crate::receive::listen::ConnectionLimits;
use crate::receive::{AppState, app};
use crate::vault::backend::{S3Backend, S3Settings};
use crate::vault::cache::FileCache;
use crate::vault::{Create, Vault, VaultError, WriteOptions};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
    #[error(transparent)]
    Alerts(#[from] crate::alerts::AlertsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("worker task: {0}")]
    Join(String),
}

/// Where `serve` keeps its local copy of a remote vault's small files.
pub fn cache_dir(config: &Config) -> std::path::PathBuf {
    config.store.path.join("cache")
}

/// Open the configured vault. `serve` creates it on first use, and keeps a
/// local cache of a bucket's small files; read commands never create a
/// vault and never lock anything.
pub fn open_vault(config: &Config, create: Create) -> Result<Vault, ServeError> {
    let passphrase = config
        .store
        .passphrase
        .as_ref()
        .map(|s| s.resolve("store.passphrase"))
        .transpose()?
        .map(|s| crate::vault::crypto::Passphrase::new(s.expose().as_bytes().to_vec()));
    let options = WriteOptions {
        zstd_level: config.store.zstd_level,
        passphrase,
    };
    let Some(url) = &config.store.url else {
        return Ok(Vault::open_local(
            &config.store.path.join("vault"),
            create,
            options,
        )?);
    };
    let s3 = &config.store.s3;
    let secret = |s: &Option<crate::config::Secret>, what: &str| {
        s.as_ref()
            .map(|s| s.resolve(what).map(|v| v.expose().to_string()))
            .transpose()
    };
    let settings = S3Settings {
        access_key_id: secret(&s3.access_key_id, "store.s3.access_key_id")?,
        secret_access_key: secret(&s3.secret_access_key, "store.s3.secret_access_key")?,
        region: s3.region.clone(),
        endpoint: s3.endpoint.clone(),
        allow_http: s3.allow_http,
    };
    let backend = S3Backend::from_url(url, settings).map_err(VaultError::from)?;
    let files = match create {
        Create::IfMissing => Some(FileCache::open(&cache_dir(config)).map_err(VaultError::from)?),
        Create::Never | Create::New => None,
    };
    Ok(Vault::open_with_cache(
        Box::new(backend),
        create,
        options,
        files,
    )?)
}

/// Where backups make their temporary fetch workspaces.
pub fn work_dir(config: &Config) -> std::path::PathBuf {
    config.store.path.join("fetch")
}

/// Resolve every source's git credentials (fails fast on a missing secret).
pub fn backup_deps(config: &Config, store: Vault) -> Result<BackupDeps, ConfigError> {
    let mut sources = HashMap::new();
    for source in &config.sources {
        let authorization = source
            .credentials
            .as_ref()
            .map(|c| c.authorization(&format!("sources.{}.credentials.token", source.name)))
            .transpose()?;
        sources.insert(
            source.name.clone(),
            SourceGit {
                config: source.clone(),
                authorization,
            },
        );
    }
    Ok(BackupDeps {
        progress: None,
        store_dir: config.store.path.clone(),
        work_dir: work_dir(config),
        store,
        sources,
    })
}

/// Log what a start-up cleanup removed, or why it could not.
fn report_cleanup(what: &str, removed: Result<usize, String>) {
    match removed {
        Ok(0) => {}
        Ok(removed) => info!(removed, "removed {what} an interrupted process left"),
        Err(error) => tracing::warn!(%error, "could not remove {what} an interrupted process left"),
    }
}

pub async fn serve(config: Config) -> Result<(), ServeError> {
    serve_with_progress(config, None).await
}

/// [`serve`], telling `progress` how far large backups are.
pub async fn serve_with_progress(
    config: Config,
    progress: Option<crate::progress::BackupProgress>,
) -> Result<(), ServeError> {
    let queue = Queue::open_dir(&config.store.path.join("queue"))?;
    // The queue's lock makes this the only `serve` of the store, so no
    // backup or vault write is running: any fetch workspace or `.tmp` vault
    // file is a killed process's (listings skip them; this frees the space).
    report_cleanup(
        "fetch workspaces",
        crate::git::remove_leftovers(&work_dir(&config)).map_err(|e| e.to_string()),
    );
    if config.store.url.is_none() {
        let vault = crate::vault::backend::LocalBackend::open(&config.store.path.join("vault"));
        report_cleanup(
            "temporary vault files",
            vault
                .remove_stale_temporaries()
                .map(|n| n as usize)
                .map_err(|e| e.to_string()),
        );
    }
    let store = tokio::task::block_in_place(|| open_vault(&config, Create::IfMissing))?;
    info!(vault = %store.location(), "vault open");
    if config.store.url.is_none() {
        let removed = tokio::task::block_in_place(|| store.remove_unindexed_data());
        report_cleanup(
            "data files no index names (written before a crash, never indexed)",
            removed.map(|(files, _)| files).map_err(|e| e.to_string()),
        );
    }
    let deps = Arc::new(BackupDeps {
        progress,
        ..backup_deps(&config, store.clone())?
    });
    let alerts = crate::alerts::Alerts::start(&config.alerts)?;
    let plugins = Arc::new(tokio::task::block_in_place(|| {
        PluginHost::load(&config, &alerts)
    })?);
    info!(
        filters = plugins.filters.len(),
        backups = plugins.backups.len(),
        pending = queue.pending_len()?,
        "plugins loaded"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut state = AppState::new(&config, queue.clone(), store.clone())?;
    if config.reconcile.enabled && config.sources.iter().any(|s| !s.workspaces.is_empty()) {
        let reconciler = Reconciler {
            sources: config.sources.clone(),
            deps: deps.clone(),
            queue: queue.clone(),
            backfill_pull_requests: !plugins.metadata.is_empty(),
            running: Arc::default(),
        };
        state.reconciler = Some(reconciler.clone());
        let interval = Duration::from_secs(config.reconcile.interval_secs.max(1));
        tokio::spawn(reconciler.run(interval, stop_rx.clone()));
    }
    let state = Arc::new(state);

    let gate = crate::maintenance::Gate::default();
    let retention = (config.retention.interval_secs > 0).then(|| {
        tokio::spawn(crate::maintenance::run_schedule(
            store.clone(),
            config.retention.clone(),
            gate.clone(),
            stop_rx.clone(),
        ))
    });
    if config.alerts.max_lag_secs > 0 {
        tokio::spawn(crate::pipeline::lag::watch(
            queue.clone(),
            Duration::from_secs(config.alerts.max_lag_secs),
            alerts.clone(),
            stop_rx.clone(),
        ));
    }
    let worker = Worker {
        queue: queue.clone(),
        plugins,
        deps,
        config: config.worker.clone(),
        gate,
        alerts,
    };
    let worker = tokio::spawn(worker.run(stop_rx));

    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    info!(%addr, "listening");
    // Where `hookvault events` and `stats` find this service.
    if let Err(e) = crate::admin::announce(&config.store.path, addr) {
        tracing::warn!(error = %e, "cannot write serve.json; admin commands will not find this service");
    }
    // Machine-readable readiness line on stdout.
    println!("{}", serde_json::json!({ "listening": addr.to_string() }));

    crate::receive::listen::serve(
        listener,
        app(state),
        ConnectionLimits::new(&config.server),
        shutdown_signal(),
    )
    .await;
    crate::admin::withdraw(&config.store.path);
    info!("shutting down; finishing the delivery in progress");
    let _ = stop_tx.send(true);
    worker
        .await
        .map_err(|e| ServeError::Join(e.to_string()))??;
    // A retention run in progress finishes (a prune stopped halfway would
    // be safe, but leaves work for the next one).
    if let Some(retention) = retention {
        retention
            .await
            .map_err(|e| ServeError::Join(e.to_string()))?;
    }
    // Every write was flushed before it was acknowledged, so this last
    // flush failing (a full disk) loses nothing promised: logged, and the
    // requested stop still succeeds.
    if let Err(e) = queue.flush_now() {
        tracing::error!(error = %e, "final queue flush failed");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
