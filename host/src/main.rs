//! The `hookvault` command.
//!
//! Exit codes: 0 success; 1 failure (the message names the file, repository
//! or object); 2 usage error; 3 the store is held by a running service.
//! Human output goes to stderr (logs) and stdout (listings); `--json` gives
//! machine output on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hookvault::config::Config;
use hookvault::ids::RepoName;
use hookvault::store::{Snapshot, StoreError};
use hookvault::{restore, serve};

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
    /// Store-wide counters.
    Stats {
        #[arg(long)]
        json: bool,
    },
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
            eprintln!("hookvault: {error:#}");
            let locked = error.chain().any(|e| {
                matches!(
                    e.downcast_ref::<StoreError>(),
                    Some(StoreError::Locked { .. })
                )
            });
            ExitCode::from(if locked { 3 } else { 1 })
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
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(serve::serve(config))?;
        }
        Command::Snapshots { repo, json } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_store(&config)?;
            let snapshots = store.snapshots(&repo)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshots)?);
            } else if snapshots.is_empty() {
                eprintln!("{repo} has no snapshots");
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
            let store = serve::open_store(&config)?;
            let chosen = match at {
                Some(at) => {
                    let moment = time::OffsetDateTime::parse(
                        &at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .with_context(|| format!("--at {at:?} is not an RFC 3339 time"))?;
                    let at_ms =
                        u64::try_from(moment.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
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
                eprintln!(
                    "restored {repo} snapshot {} ({}) to {}: {} refs, {} objects",
                    chosen.short_id(),
                    format_time(chosen.body.time_ms),
                    to.display(),
                    report.refs,
                    report.objects
                );
            }
        }
        Command::Stats { json } => {
            let store = serve::open_store(&config)?;
            let stats = store.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "{} objects ({} distinct contents) in {} packs, {} bytes; {} snapshots of {} repositories",
                    stats.objects,
                    stats.contents,
                    stats.packs,
                    stats.pack_bytes,
                    stats.snapshots,
                    stats.repositories
                );
            }
        }
    }
    Ok(())
}

fn print_snapshot(s: &Snapshot) {
    let b = &s.body;
    let forced = b.updates.iter().filter(|u| u.forced).count();
    let deleted = b.updates.iter().filter(|u| u.deleted).count();
    println!(
        "{}  {}  refs={} updated={} deleted={} forced={}  new-objects={}  delivery={}  actor={}",
        s.short_id(),
        format_time(b.time_ms),
        b.refs.len(),
        b.updates.len(),
        deleted,
        forced,
        b.stats.written,
        b.delivery_id,
        b.actor.as_deref().unwrap_or("-"),
    );
}
