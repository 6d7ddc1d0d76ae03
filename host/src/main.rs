//! The `hookvault` command.
//!
//! Exit codes: 0 success; 1 failure (the message names the file, repository
//! or object); 2 usage error. Read commands work while `serve` runs: they
//! read the vault's immutable files and never create or lock anything in
//! it. `events` and `stats` read the delivery queue: through the running
//! service's admin API when `serve` holds it, else directly
//! ([`hookvault::admin`]).
//! Human output goes to stderr (logs) and stdout (listings), every line
//! through [`terminal::escape`] (`out!`, `note!`): names from payloads and
//! REST answers never reach the terminal as control characters. `--json`
//! gives machine output on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hookvault::admin::Deliveries;
use hookvault::bitbucket::rest::{Api, HookTarget};
use hookvault::config::{Config, SecretString};
use hookvault::ids::RepoName;
use hookvault::pipeline::queue::{DeliveryView, Filter};
use hookvault::vault::{Create, Snapshot};
use hookvault::{restore, serve, terminal};

/// A line of human output on stdout, control characters escaped.
macro_rules! out {
    ($($arg:tt)*) => {
        println!("{}", terminal::escape(&format!($($arg)*)))
    };
}

/// A line of human output on stderr, control characters escaped.
macro_rules! note {
    ($($arg:tt)*) => {
        eprintln!("{}", terminal::escape(&format!($($arg)*)))
    };
}

#[derive(Parser)]
#[command(
    name = "hookvault",
    version,
    about = "Continuous, immutable backups of Bitbucket repositories"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "HOOKVAULT_CONFIG",
        default_value = "hookvault.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum RepairCommand {
    /// Delete the local cache of the vault's index, snapshot and document
    /// files and read them all again from the vault (stop `serve` first).
    Index,
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks and back up every push.
    Serve,
    /// List a repository's snapshots, oldest first.
    Snapshots {
        /// `workspace/slug` (Cloud) or `PROJECT/slug` (Data Center).
        #[arg(long)]
        repo: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a snapshot out as a bare git repository.
    Restore {
        #[arg(long)]
        repo: String,
        /// Snapshot id or unique prefix (default: the latest).
        #[arg(long, conflicts_with = "at")]
        snapshot: Option<String>,
        /// The repository as it was at this moment (RFC 3339, e.g. 2026-11-20T09:00:00Z).
        #[arg(long)]
        at: Option<String>,
        /// A new (or empty) directory.
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild what can be rebuilt from the vault.
    Repair {
        #[command(subcommand)]
        what: RepairCommand,
    },
    /// Vault-wide counters, and deliveries by state (failed ones too).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// The deliveries in the queue: status, attempts, last error, times.
    /// Beside a running `serve` it asks the service (admin API, with
    /// `server.admin_token`); without one it reads the queue itself.
    Events {
        #[command(subcommand)]
        action: Option<EventsAction>,
        /// Only deliveries that failed (given up, or failed for good).
        #[arg(long)]
        failed: bool,
        /// Only deliveries about this repository (`workspace/slug`).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write a repository's pull requests and comments out as JSON and Markdown.
    ExportMetadata {
        #[arg(long)]
        repo: String,
        /// As they were at this moment (RFC 3339); default: now.
        #[arg(long)]
        at: Option<String>,
        /// A new (or empty) directory.
        #[arg(long)]
        to: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Manage hookvault's webhook on Bitbucket (REST API, idempotent).
    Hooks {
        #[command(subcommand)]
        action: HooksAction,
    },
}

#[derive(Subcommand)]
enum EventsAction {
    /// Queue a failed delivery again (attempts count from zero).
    Retry {
        /// The delivery id, as `events` shows it.
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<String>,
        /// Every failed delivery.
        #[arg(long)]
        all_failed: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false, id = "where")]
struct HookWhere {
    /// A repository: `workspace/slug` (Cloud) or `PROJECT/slug` (Data Center).
    #[arg(long, group = "where")]
    repo: Option<String>,
    /// A whole Cloud workspace or Data Center project (by key).
    #[arg(long, group = "where")]
    workspace: Option<String>,
}

#[derive(Subcommand)]
enum HooksAction {
    /// Create hookvault's webhook unless one with the same URL exists.
    Register {
        /// The configured source to talk to.
        #[arg(long)]
        source: String,
        #[command(flatten)]
        target: HookWhere,
        /// Where Bitbucket should deliver (this service's public URL).
        #[arg(long)]
        url: String,
        /// Webhook secret; generated when absent. Read from this
        /// environment variable, never from the command line.
        #[arg(long)]
        secret_env: Option<String>,
        #[arg(long, default_value = "hookvault")]
        description: String,
        #[arg(long)]
        json: bool,
    },
    /// List the webhooks of a repository, workspace or project.
    List {
        #[arg(long)]
        source: String,
        #[command(flatten)]
        target: HookWhere,
        #[arg(long)]
        json: bool,
    },
    /// Remove a webhook by id, or every webhook with a URL.
    Remove {
        #[arg(long)]
        source: String,
        #[command(flatten)]
        target: HookWhere,
        #[arg(long, required_unless_present = "url")]
        id: Option<String>,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_at(at: &str) -> anyhow::Result<u64> {
    let moment = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--at {at:?} is not an RFC 3339 time"))?;
    Ok(u64::try_from(moment.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

fn hook_target(target: &HookWhere) -> anyhow::Result<HookTarget> {
    Ok(match (&target.repo, &target.workspace) {
        (Some(repo), _) => HookTarget::Repository(RepoName::parse(repo)?),
        (None, Some(ws)) => {
            // A workspace or project key names a path segment too.
            RepoName::parse(&format!("{ws}/x"))?;
            HookTarget::Workspace(ws.clone())
        }
        (None, None) => anyhow::bail!("give --repo or --workspace"),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn print_hooks(hooks: &[hookvault::bitbucket::hooks::HookView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(hooks)?);
    } else {
        for h in hooks {
            out!(
                "{}  {}  {}  active={}  events={}",
                h.id,
                h.url,
                h.description,
                h.active,
                h.events.join(",")
            );
        }
    }
    Ok(())
}

fn run_hooks(config: &Config, action: HooksAction) -> anyhow::Result<()> {
    let (source_name, target, json) = match &action {
        HooksAction::Register {
            source,
            target,
            json,
            ..
        }
        | HooksAction::List {
            source,
            target,
            json,
        }
        | HooksAction::Remove {
            source,
            target,
            json,
            ..
        } => (source.clone(), target, *json),
    };
    let source = config
        .source(&source_name)
        .with_context(|| format!("no source named {source_name:?} in the config"))?;
    let api = Api::from_source(source)?;
    let target = hook_target(target)?;
    let rt = runtime()?;
    match action {
        HooksAction::Register {
            url,
            secret_env,
            description,
            ..
        } => {
            let secret = secret_env
                .map(|var| {
                    std::env::var(&var)
                        .map(SecretString::new)
                        .with_context(|| format!("environment variable {var} is not set"))
                })
                .transpose()?;
            let outcome = rt.block_on(hookvault::bitbucket::hooks::register(
                &api,
                &config.store.path,
                &source.name,
                &target,
                &url,
                secret,
                &description,
            ))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                match outcome {
                    hookvault::bitbucket::hooks::Registered::Created { hook } => {
                        note!("registered hook {} → {}", hook.id, hook.url)
                    }
                    hookvault::bitbucket::hooks::Registered::AlreadyRegistered { hook } => {
                        note!("already registered: hook {} → {}", hook.id, hook.url)
                    }
                }
            }
        }
        HooksAction::List { .. } => {
            let hooks = rt.block_on(hookvault::bitbucket::hooks::list(&api, &target))?;
            print_hooks(&hooks, json)?;
        }
        HooksAction::Remove { id, url, .. } => {
            let removed = rt.block_on(hookvault::bitbucket::hooks::remove(
                &api,
                &target,
                id.as_deref(),
                url.as_deref(),
            ))?;
            print_hooks(&removed, json)?;
            if !json {
                note!("removed {} hook(s)", removed.len());
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            note!("hookvault: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn format_time(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => {
            runtime()?.block_on(serve::serve(config))?;
        }
        Command::Snapshots { repo, json } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let snapshots = store.snapshots(&repo)?;
            if json {
                let views = snapshots
                    .iter()
                    .map(|s| store.snapshot_json(s))
                    .collect::<Result<Vec<_>, _>>()?;
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else if snapshots.is_empty() {
                note!("{repo} has no snapshots");
            } else {
                for s in &snapshots {
                    print_snapshot(s);
                }
            }
        }
        Command::Restore {
            repo,
            snapshot,
            at,
            to,
            json,
        } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let chosen = match at {
                Some(at) => {
                    let at_ms = parse_at(&at)?;
                    store
                        .snapshots(&repo)?
                        .into_iter()
                        .rev()
                        .find(|s| s.body.time_ms <= at_ms)
                        .with_context(|| format!("{repo} has no snapshot at or before {at}"))?
                }
                None => store.find_snapshot(&repo, snapshot.as_deref())?,
            };
            let report = restore::restore(&store, &chosen, &to)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                note!(
                    "restored {repo} snapshot {} ({}) to {}: {} refs, {} objects",
                    chosen.short_id(),
                    format_time(chosen.body.time_ms),
                    to.display(),
                    report.refs,
                    report.objects
                );
            }
        }
        Command::ExportMetadata { repo, at, to, json } => {
            let repo = RepoName::parse(&repo)?;
            let at_ms = at.as_deref().map(parse_at).transpose()?;
            let store = serve::open_vault(&config, Create::Never)?;
            let report = hookvault::export::export_metadata(&store, &repo, at_ms, &to)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                note!(
                    "exported {} pull requests ({} comments) of {repo} to {}",
                    report.pull_requests,
                    report.comments,
                    to.display()
                );
            }
        }
        Command::Hooks { action } => run_hooks(&config, action)?,
        Command::Repair {
            what: RepairCommand::Index,
        } => {
            let cache = serve::cache_dir(&config);
            // Opening takes the cache's lock: a running `serve` holds it.
            drop(hookvault::vault::cache::FileCache::open(&cache)?);
            hookvault::vault::cache::FileCache::clear(&cache)?;
            let vault = serve::open_vault(&config, Create::IfMissing)?;
            let stats = vault.stats()?;
            note!(
                "index rebuilt from {}: {} index files, {} records, {} snapshots{}",
                vault.location(),
                stats.index_files,
                stats.records,
                stats.snapshots,
                match vault.cached_files() {
                    Some(n) => format!("; {n} files cached in {}", cache.display()),
                    None => "; a local vault is read directly (no cache)".into(),
                }
            );
        }
        Command::Events {
            action,
            failed,
            repo,
            json,
        } => run_events(&config, action, failed, repo, json)?,
        Command::Stats { json } => {
            let store = serve::open_vault(&config, Create::Never)?;
            let stats = store.stats()?;
            let counts =
                runtime()?.block_on(async { Deliveries::open(&config).await?.counts().await });
            if json {
                let counts = match counts {
                    Ok(counts) => Some(counts),
                    Err(e) => {
                        note!("hookvault: deliveries not counted: {e}");
                        None
                    }
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "store": stats,
                        "queue": counts,
                    }))?
                );
            } else {
                match counts {
                    Ok(c) => out!(
                        "deliveries: {} queued ({} retrying after a failure), {} done, {} skipped, {} ignored, {} failed ({} permanent, {} after every attempt)",
                        c.queued,
                        c.retrying,
                        c.done,
                        c.skipped,
                        c.ignored,
                        c.failed,
                        c.failed_permanent,
                        c.failed_after_retries
                    ),
                    Err(e) => note!("hookvault: deliveries not counted: {e}"),
                }
                out!(
                    "{} git objects ({} records) in {} data files; {} bytes in all ({} data, {} index); {} snapshots of {} repositories; {} document versions",
                    stats.git_objects,
                    stats.records,
                    stats.data_files,
                    stats.total_bytes,
                    stats.data_bytes,
                    stats.index_bytes,
                    stats.snapshots,
                    stats.repositories,
                    stats.document_versions
                );
            }
        }
    }
    Ok(())
}

fn run_events(
    config: &Config,
    action: Option<EventsAction>,
    failed: bool,
    repo: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    let deliveries = rt.block_on(Deliveries::open(config))?;
    match action {
        None => {
            let filter = Filter {
                failed_only: failed,
                repo: repo.as_deref().map(RepoName::parse).transpose()?,
            };
            let listed = rt.block_on(deliveries.list(&filter))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listed)?);
            } else if listed.is_empty() {
                note!(
                    "no {}deliveries{}",
                    if failed { "failed " } else { "" },
                    repo.map(|r| format!(" for {r}")).unwrap_or_default()
                );
            } else {
                for delivery in &listed {
                    print_delivery(delivery);
                }
            }
        }
        Some(EventsAction::Retry {
            id,
            all_failed,
            json,
        }) => {
            let requeued = match id {
                Some(id) if !all_failed => {
                    rt.block_on(deliveries.retry(&id))?;
                    vec![id]
                }
                _ => rt.block_on(deliveries.retry_all_failed())?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "requeued": requeued }))?
                );
            } else {
                for id in &requeued {
                    out!("{id}");
                }
                note!("queued {} failed deliveries again", requeued.len());
            }
        }
    }
    Ok(())
}

/// One delivery, one line: time received, id, status (and the failure's
/// kind), attempts, repository, event, last attempt, last error.
fn print_delivery(d: &DeliveryView) {
    let status = match d.failure {
        Some(kind) if d.last_error.is_some() => {
            format!("{} ({})", d.status.as_str(), kind.as_str())
        }
        _ => d.status.as_str().to_string(),
    };
    out!(
        "{}  {}  {}  attempts={}  repo={}  event={}  last-attempt={}{}",
        format_time(d.received_at_ms),
        d.id,
        status,
        d.attempts,
        d.repo.as_deref().unwrap_or("-"),
        d.event_key,
        d.last_attempt_ms
            .map(format_time)
            .unwrap_or_else(|| "-".into()),
        d.last_error
            .as_deref()
            .map(|e| format!("  error: {e}"))
            .unwrap_or_default(),
    );
}

fn print_snapshot(s: &Snapshot) {
    let b = &s.body;
    let forced = b.updates.iter().filter(|u| u.forced).count();
    let deleted = b.updates.iter().filter(|u| u.deleted).count();
    out!(
        "{}  {}  refs={} updated={} deleted={} forced={}  new-objects={}  delivery={}  actor={}",
        s.short_id(),
        format_time(b.time_ms),
        b.refs.count,
        b.updates.len(),
        deleted,
        forced,
        b.stats.written,
        b.delivery_id,
        b.actor.as_deref().unwrap_or("-"),
    );
}
