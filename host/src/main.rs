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
use hookvault::{browse, restore, serve, terminal};

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

/// A retention policy on the command line.
#[derive(clap::Args, Debug)]
struct KeepFlags {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    /// Keep the newest snapshot of each of the N latest hours that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_hourly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    /// ISO weeks.
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_yearly: u32,
    /// Keep every snapshot within this span before the newest (e.g. 7d,
    /// 36h, 1y6m).
    #[arg(long, value_name = "SPAN")]
    keep_within: Option<hookvault::retention::Span>,
}

impl KeepFlags {
    fn policy(&self) -> hookvault::retention::Policy {
        hookvault::retention::Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
        }
    }
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
    /// Find every damaged or missing object (as `verify --read-data`),
    /// fetch each repository that reaches one from its source, and store
    /// again every one the source still has; report what it no longer has.
    /// Credentials come from the config. Stop `serve` first. Exits 1 when
    /// something could not be recovered.
    Objects {
        /// Only this repository's snapshots.
        #[arg(long, value_name = "WS/SLUG")]
        repo: Option<String>,
        /// Find and fetch, write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a ready-to-build plugin crate (outside hookvault's tree) that
    /// uses the `hookvault-plugin` SDK, with a passing test and a README.
    New {
        /// The crate's name (lowercase letters, digits, `-`, `_`).
        name: String,
        /// The world: filter, backup or metadata.
        #[arg(long, default_value = "filter")]
        kind: String,
        /// Where to write it (default: ./NAME); must not exist, or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The SDK's directory (`plugins/sdk` of hookvault's source;
        /// default: the one this hookvault was built from).
        #[arg(long, conflicts_with = "sdk_version")]
        sdk: Option<PathBuf>,
        /// Depend on this release of `hookvault-plugin` instead of a path.
        #[arg(long)]
        sdk_version: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What a component is (world, WIT version, imports, exports, size,
    /// sha256) and whether this hookvault loads it, linked as `serve` links
    /// it; exits 1, naming the reason (e.g. an import it does not grant),
    /// when not.
    Check {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a plugin on one webhook body exactly as `serve` would (same
    /// parser, sandbox and default limits): a filter's decision, a backup
    /// plugin's snapshot (of --repo-dir, into a scratch vault), a metadata
    /// plugin's documents; what it logged, alerted and wrote, the fuel it
    /// used and the time it took. Exits 1 when the call fails (the reason
    /// named: out of fuel, memory, a trap, an error it returned, ...).
    Test {
        path: PathBuf,
        /// For a backup plugin: the git repository it backs up, as the
        /// event's repository.
        #[arg(long)]
        repo_dir: Option<PathBuf>,
        /// For a backup or metadata plugin: the vault to write (created
        /// when missing, and kept); default: a temporary one.
        #[arg(long)]
        vault: Option<PathBuf>,
        /// The webhook body (e.g. `examples/payloads/cloud-repo-push.json`).
        #[arg(long)]
        event: PathBuf,
        /// `X-Event-Key` (default: the body's `eventKey`, else `repo:push`).
        #[arg(long)]
        event_key: Option<String>,
        /// A value of the plugin's config, `KEY=VALUE` (VALUE read as JSON
        /// when it parses, else as a string); repeatable, applied after
        /// `--config-file`. (`--config` is hookvault's own config file.)
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The plugin's config table, as TOML.
        #[arg(long)]
        config_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Every key: id, label, when it was added, and which one opened it.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a key for another passphrase, read from an environment variable
    /// or a file (never from the command line).
    Add {
        /// Environment variable holding the new passphrase.
        #[arg(long, value_name = "VAR", conflicts_with = "new_passphrase_file")]
        new_passphrase_env: Option<String>,
        /// File whose contents are the new passphrase (a key file).
        #[arg(long, value_name = "PATH")]
        new_passphrase_file: Option<PathBuf>,
        /// What the key is for, shown by `key list`.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Remove a key (by id or a unique prefix): never the one that opened
    /// the vault, never the last.
    Remove { id: String },
}

#[derive(Subcommand)]
enum Command {
    /// Receive webhooks and back up every push.
    Serve,
    /// Create the vault the config names (store.path, or store.url's
    /// bucket), encrypted when store.passphrase is set. `serve` creates it
    /// too on its first start; this refuses when one is already there.
    Init {
        #[arg(long)]
        json: bool,
    },
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
        /// A new (or empty) directory; with --push, a temporary one when absent.
        #[arg(long, required_unless_present = "push")]
        to: Option<PathBuf>,
        /// Only these refs (full names or wildmatch globs such as
        /// `refs/heads/release/*`; a short name matches a branch or tag).
        #[arg(long = "ref", value_name = "PATTERN")]
        refs: Vec<String>,
        /// Push every restored ref to this (empty) remote repository; the
        /// source's credentials go along when it is on the source's host.
        #[arg(long, value_name = "URL")]
        push: Option<String>,
        /// Push even though the remote already has refs (they are overwritten).
        #[arg(long, requires = "push")]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every value a repository's refs have had, oldest first: time, actor,
    /// delivery, old → new, and whether it was a creation, a fast-forward,
    /// a forced update (history rewritten) or a deletion.
    Log {
        #[arg(long)]
        repo: String,
        /// Only this ref (a full name, a short branch or tag name, or a glob).
        #[arg(long = "ref", value_name = "PATTERN")]
        reference: Option<String>,
        /// Only changes recorded at or after this moment (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show what a ref pointed at before a moment or in a snapshot, and the
    /// command that puts it back; with --push, put it back.
    Undo {
        #[arg(long)]
        repo: String,
        /// The ref to put back (e.g. refs/heads/main, or main).
        #[arg(long = "ref", value_name = "REF")]
        reference: String,
        /// Its value in the last snapshot before this moment (RFC 3339).
        #[arg(
            long,
            required_unless_present = "snapshot",
            conflicts_with = "snapshot"
        )]
        before: Option<String>,
        /// Its value in this snapshot (id or unique prefix).
        #[arg(long)]
        snapshot: Option<String>,
        /// Push that value to this remote (created if the ref was deleted).
        #[arg(long, value_name = "URL")]
        push: Option<String>,
        /// Push without asking.
        #[arg(long, requires = "push")]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write one file of a snapshot to stdout, without restoring anything.
    Cat {
        #[arg(long)]
        repo: String,
        #[command(flatten)]
        which: Which,
        /// The path in the ref's tree, e.g. src/lib.rs.
        #[arg(long)]
        path: String,
    },
    /// List a tree of a snapshot (mode, kind, id, path).
    Ls {
        #[arg(long)]
        repo: String,
        #[command(flatten)]
        which: Which,
        /// A directory (default: the root).
        #[arg(long, default_value = "")]
        path: String,
        /// Every entry below it.
        #[arg(long, short)]
        recursive: bool,
        #[arg(long)]
        json: bool,
    },
    /// The refs that differ between two snapshots (ids, prefixes or RFC 3339
    /// times: the snapshot at or before that moment).
    Diff {
        #[arg(long)]
        repo: String,
        a: String,
        b: String,
        #[arg(long)]
        json: bool,
    },
    /// Check that every snapshot can be restored: files, snapshot chains,
    /// ref tables and every object reached; with --read-data, every stored
    /// record read back and re-hashed. Exit 1 and a report on any damage.
    Verify {
        /// Read, decompress, delta-resolve and hash every record.
        #[arg(long)]
        read_data: bool,
        /// Only this repository's snapshots (and the records they reach).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Forget snapshots a retention policy does not keep (restic's
    /// semantics; buckets in UTC). The newest snapshot of each repository
    /// is always kept. Their files go; what only they reached stays until
    /// `prune`. Without --keep-* flags, the config's [retention] rules
    /// apply. Needs the store to itself: stop `serve` first (or let `serve`
    /// run it on a schedule: retention.interval_secs).
    Forget {
        #[command(flatten)]
        keep: KeepFlags,
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// Show what would be kept and forgotten; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove every record no snapshot or document needs: data files with
    /// nothing live go, mostly unused ones are rewritten. Needs the store to
    /// itself: stop `serve` first.
    Prune {
        /// Rewrite a data file when more than this share of it is unused.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
        max_unused_percent: u8,
        /// Work out what would go; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also compress every kept record again at this zstd level (1-19),
        /// except in data files already recompressed at it or higher: a
        /// slower, smaller encoding of what backups wrote fast.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
        recompress_level: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// Work with plugin components.
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// Rebuild what can be rebuilt from the vault.
    Repair {
        #[command(subcommand)]
        what: RepairCommand,
    },
    /// The keys of an encrypted vault (store.passphrase opens it): each is
    /// the master key wrapped under one passphrase.
    Key {
        #[command(subcommand)]
        action: KeyCommand,
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

/// Which snapshot and ref `cat` and `ls` read.
#[derive(clap::Args)]
struct Which {
    /// The snapshot taken at or before this moment (RFC 3339).
    #[arg(long, conflicts_with = "snapshot")]
    at: Option<String>,
    /// Snapshot id or unique prefix (default: the latest).
    #[arg(long)]
    snapshot: Option<String>,
    /// Branch or tag (default: main, master, or the first branch).
    #[arg(long = "ref", value_name = "REF")]
    reference: Option<String>,
}

impl Which {
    fn pick(&self) -> anyhow::Result<browse::Pick> {
        pick_of(self.snapshot.as_deref(), self.at.as_deref())
    }
}

fn pick_of(snapshot: Option<&str>, at: Option<&str>) -> anyhow::Result<browse::Pick> {
    Ok(match (snapshot, at) {
        (Some(id), _) => browse::Pick::Id(id.to_string()),
        (None, Some(at)) => browse::Pick::At(parse_at(at)?, at.to_string()),
        (None, None) => browse::Pick::Latest,
    })
}

/// A snapshot id or prefix, or an RFC 3339 time.
fn pick_either(text: &str) -> anyhow::Result<browse::Pick> {
    if text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(browse::Pick::Id(text.to_string()))
    } else {
        Ok(browse::Pick::At(parse_at(text)?, text.to_string()))
    }
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
                &config.store.path,
                &source.name,
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

/// Log lines to stderr, drawn around the progress bars when there are any
/// (a bar is cleared, the line written, the bar drawn again).
#[derive(Clone)]
struct LogWriter(Option<indicatif::MultiProgress>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(bars) => bars.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A bar per repository whose backup copies many objects, on a terminal.
fn backup_bars(bars: indicatif::MultiProgress) -> hookvault::progress::BackupProgress {
    use hookvault::progress::Progress;
    let shown =
        std::sync::Mutex::new(std::collections::HashMap::<String, indicatif::ProgressBar>::new());
    std::sync::Arc::new(move |repo: &RepoName, step: Progress| {
        let Ok(mut shown) = shown.lock() else { return };
        let name = repo.to_string();
        match step {
            Progress::Start(what, total) => {
                let bar = bars.add(indicatif::ProgressBar::new(total));
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{prefix} {msg} {bar:30} {pos}/{len} ({eta} left)",
                ) {
                    bar.set_style(style);
                }
                bar.set_prefix(terminal::escape(&name).into_owned());
                bar.set_message(what);
                bar.tick();
                shown.insert(name, bar);
            }
            Progress::At(n) => {
                if let Some(bar) = shown.get(&name) {
                    bar.set_position(n);
                }
            }
            Progress::Done => {
                if let Some(bar) = shown.remove(&name) {
                    bar.finish_and_clear();
                    bars.remove(&bar);
                }
            }
        }
    })
}

/// jemalloc rather than glibc's malloc: the receiver's many small
/// allocations and frees across threads cost it about a fifth of its CPU
/// with glibc's (ARCHITECTURE.md, "Ingest").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let bars =
        std::io::IsTerminal::is_terminal(&std::io::stderr()).then(indicatif::MultiProgress::new);
    tracing_subscriber::fmt()
        .with_writer(LogWriter(bars.clone()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(cli, bars) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Not `note!`: the message keeps its lines (see error_message).
            eprintln!(
                "hookvault: {}",
                hookvault::terminal::error_message(error.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

fn format_time(ms: u64) -> String {
    hookvault::event::rfc3339(ms)
}

/// `bars`: where `serve` draws progress, when stderr is a terminal.
fn run(cli: Cli, bars: Option<indicatif::MultiProgress>) -> anyhow::Result<()> {
    // A plugin author checks a component without any config.
    match &cli.command {
        Command::Plugin {
            action: PluginCommand::Check { path, json },
        } => return run_plugin_check(path, *json),
        Command::Plugin {
            action:
                PluginCommand::New {
                    name,
                    kind,
                    dir,
                    sdk,
                    sdk_version,
                    json,
                },
        } => {
            return run_plugin_new(
                name,
                kind,
                dir.as_deref(),
                sdk.as_deref(),
                sdk_version.as_deref(),
                *json,
            );
        }
        Command::Plugin {
            action:
                PluginCommand::Test {
                    path,
                    repo_dir,
                    vault,
                    event,
                    event_key,
                    set,
                    config_file,
                    json,
                },
        } => {
            let scratch = hookvault::plugins::trial::Scratch {
                repo_dir: repo_dir.as_deref(),
                vault_dir: vault.as_deref(),
            };
            return run_plugin_test(
                path,
                event,
                event_key.as_deref(),
                set,
                config_file.as_deref(),
                &scratch,
                *json,
            );
        }
        _ => {}
    }
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Serve => {
            let progress = bars.map(backup_bars);
            runtime()?.block_on(serve::serve_with_progress(config, progress))?;
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
            refs,
            push,
            force,
            json,
        } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let chosen =
                browse::pick(&store, &repo, &pick_of(snapshot.as_deref(), at.as_deref())?)?;
            let matchers: Vec<_> = refs.iter().map(|p| browse::ref_matcher(p)).collect();
            let select = |name: &str| matchers.is_empty() || matchers.iter().any(|m| m(name));
            let target = push
                .as_deref()
                .map(|url| push_target(&config, &chosen, url))
                .transpose()?;
            if let Some(target) = &target {
                refuse_non_empty(target, force)?;
            }
            let scratch = match &to {
                Some(_) => None,
                None => Some(tempfile::tempdir().context("creating a temporary directory")?),
            };
            let dir = match (&to, &scratch) {
                (Some(to), _) => to.clone(),
                (None, Some(scratch)) => scratch.path().join("restore"),
                (None, None) => anyhow::bail!("give --to or --push"),
            };
            let report = restore::restore(&store, &chosen, &dir, &select, &progress_bar(json))?;
            let pushed = match &target {
                Some(target) => Some(target.push(&dir, &["+refs/*:refs/*".to_string()])?),
                None => None,
            };
            if json {
                let mut value = serde_json::to_value(&report)?;
                if let (Some(object), Some(target)) = (value.as_object_mut(), &target) {
                    object.insert("pushed_to".into(), serde_json::json!(target.url()));
                    if to.is_none() {
                        object.remove("path");
                    }
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let place = match (&to, &target) {
                    (Some(to), _) => to.display().to_string(),
                    (None, Some(target)) => target.url().to_string(),
                    (None, None) => String::new(),
                };
                note!(
                    "restored {repo} snapshot {} ({}) to {place}: {} refs, {} objects",
                    chosen.short_id(),
                    format_time(chosen.body.time_ms),
                    report.refs,
                    report.objects
                );
                if let (Some(target), Some(_), Some(_)) = (&target, &pushed, &to) {
                    note!("pushed {} refs to {}", report.refs, target.url());
                }
            }
        }
        Command::Log {
            repo,
            reference,
            since,
            json,
        } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let since_ms = since.as_deref().map(parse_at).transpose()?;
            let matcher = reference.as_deref().map(browse::ref_matcher);
            let matches = |name: &str| matcher.as_ref().is_none_or(|m| m(name));
            let entries = browse::log(&store, &repo, &matches, since_ms)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                note!("no ref changes of {repo} match");
            } else {
                for e in &entries {
                    out!(
                        "{}  {:<8} {}  {} -> {}  snapshot={}  delivery={}  actor={}",
                        format_time(e.time_ms),
                        e.change.change.as_str(),
                        e.change.name,
                        short_oid(e.change.old),
                        short_oid(e.change.new),
                        &e.snapshot[..12],
                        e.delivery_id,
                        e.actor.as_deref().unwrap_or("-"),
                    );
                }
            }
        }
        Command::Undo {
            repo,
            reference,
            before,
            snapshot,
            push,
            yes,
            json,
        } => run_undo(
            &config, &repo, &reference, before, snapshot, push, yes, json,
        )?,
        Command::Cat { repo, which, path } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let chosen = browse::pick(&store, &repo, &which.pick()?)?;
            let located =
                browse::locate(&store, &repo, &chosen, which.reference.as_deref(), &path)?;
            let bytes = browse::cat(&store, &located)?;
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&bytes)
                .and_then(|()| stdout.flush())
                .context("writing to stdout")?;
        }
        Command::Ls {
            repo,
            which,
            path,
            recursive,
            json,
        } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let chosen = browse::pick(&store, &repo, &which.pick()?)?;
            let located =
                browse::locate(&store, &repo, &chosen, which.reference.as_deref(), &path)?;
            let entries = browse::ls(&store, &located, recursive)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for e in &entries {
                    out!("{:>6} {:<6} {}\t{}", e.mode, e.kind, e.id, e.path);
                }
            }
        }
        Command::Diff { repo, a, b, json } => {
            let repo = RepoName::parse(&repo)?;
            let store = serve::open_vault(&config, Create::Never)?;
            let a = browse::pick(&store, &repo, &pick_either(&a)?)?;
            let b = browse::pick(&store, &repo, &pick_either(&b)?)?;
            let changes = browse::diff_snapshots(&store, Some(&a), &b, &Default::default())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "from": a.id.to_hex(),
                        "to": b.id.to_hex(),
                        "changes": changes,
                    }))?
                );
            } else if changes.is_empty() {
                note!(
                    "snapshots {} and {} have the same refs",
                    a.short_id(),
                    b.short_id()
                );
            } else {
                for c in &changes {
                    out!(
                        "{:<8} {}  {} -> {}",
                        c.change.as_str(),
                        c.name,
                        short_oid(c.old),
                        short_oid(c.new)
                    );
                }
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
        Command::Verify {
            read_data,
            repo,
            json,
        } => run_verify(&config, read_data, repo, json)?,
        Command::Forget {
            keep,
            repo,
            dry_run,
            json,
        } => run_forget(&config, &keep, repo, dry_run, json)?,
        Command::Prune {
            max_unused_percent,
            dry_run,
            recompress_level,
            json,
        } => run_prune(
            &config,
            hookvault::vault::prune::PruneOptions {
                max_unused_percent,
                dry_run,
                recompress_level,
            },
            json,
        )?,
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
        Command::Repair {
            what:
                RepairCommand::Objects {
                    repo,
                    dry_run,
                    json,
                },
        } => run_repair(&config, repo, dry_run, json)?,
        Command::Events {
            action,
            failed,
            repo,
            json,
        } => run_events(&config, action, failed, repo, json)?,
        Command::Key { action } => run_key(&config, action)?,
        Command::Init { json } => run_init(&config, json)?,
        // Answered above, before the config is read.
        Command::Plugin {
            action: PluginCommand::Check { path, json },
        } => run_plugin_check(&path, json)?,
        Command::Plugin {
            action: PluginCommand::Test { .. } | PluginCommand::New { .. },
        } => unreachable!("answered before the config is read"),
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

fn short_oid(oid: Option<hookvault::ids::GitOid>) -> String {
    oid.map_or_else(|| "(none)".to_string(), |o| o.to_hex()[..12].to_string())
}

/// Where `--push URL` goes for a snapshot of `snapshot`'s source: the
/// source's credentials when the URL is on its git host.
fn push_target(
    config: &Config,
    snapshot: &Snapshot,
    url: &str,
) -> anyhow::Result<hookvault::git::push::PushTarget> {
    let source = config.source(&snapshot.body.source).with_context(|| {
        format!(
            "the snapshot's source {:?} is not in the config",
            snapshot.body.source
        )
    })?;
    let authorization = source
        .credentials
        .as_ref()
        .map(|c| c.authorization(&format!("sources.{}.credentials.token", source.name)))
        .transpose()?;
    let target = hookvault::git::push::PushTarget::new(
        url,
        &source.clone_url(&snapshot.body.repository),
        authorization,
    )?;
    if !target.authenticated() && source.credentials.is_some() {
        note!(
            "{url} is not on source {}'s git host: pushing without its credentials",
            source.name
        );
    }
    Ok(target)
}

fn refuse_non_empty(target: &hookvault::git::push::PushTarget, force: bool) -> anyhow::Result<()> {
    let existing = target.ls_remote()?;
    if !existing.is_empty() && !force {
        anyhow::bail!(
            "{} already has {} refs (e.g. {}); restore into an empty repository, or give --force to overwrite",
            target.url(),
            existing.len(),
            existing[0].0
        );
    }
    Ok(())
}

/// Ask on the terminal; without one, refuse (scripts pass `--yes`).
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::IsTerminal as _;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{question}: refusing to push without --yes (stdin is not a terminal)");
    }
    eprint!("{} [y/N] ", terminal::escape(question));
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[allow(clippy::too_many_arguments)]
fn run_undo(
    config: &Config,
    repo: &str,
    reference: &str,
    before: Option<String>,
    snapshot: Option<String>,
    push: Option<String>,
    yes: bool,
    json: bool,
) -> anyhow::Result<()> {
    let repo = RepoName::parse(repo)?;
    let store = serve::open_vault(config, Create::Never)?;
    let pick = match (&snapshot, &before) {
        (Some(id), _) => browse::Pick::Id(id.clone()),
        (None, Some(at)) => browse::Pick::Before(parse_at(at)?, at.clone()),
        (None, None) => anyhow::bail!("give --before TIME or --snapshot ID"),
    };
    let chosen = browse::pick(&store, &repo, &pick)?;
    let refs = store.snapshot_refs(&chosen)?;
    let (name, tip) = browse::resolve_ref(&refs, Some(reference))
        .map(|(n, t)| (n.clone(), *t))
        .with_context(|| {
            format!(
                "{reference} did not exist in snapshot {} of {repo} ({})",
                chosen.short_id(),
                format_time(chosen.body.time_ms)
            )
        })?;
    let latest = store.find_snapshot(&repo, None)?;
    let now = store.snapshot_refs(&latest)?.get(&name).copied();
    let source_url = config
        .source(&chosen.body.source)
        .map(|s| s.clone_url(&repo))
        .unwrap_or_else(|| "URL".into());
    let command = format!(
        "hookvault undo --repo {repo} --ref {name} --snapshot {} --push {source_url}",
        chosen.short_id()
    );
    if json && push.is_none() {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ref": name,
                "snapshot": chosen.id.to_hex(),
                "time_ms": chosen.body.time_ms,
                "target": tip,
                "latest": now,
                "command": command,
            }))?
        );
        return Ok(());
    }
    if !json {
        out!(
            "{name} was {tip} in snapshot {} ({}); latest snapshot {}: {}",
            chosen.short_id(),
            format_time(chosen.body.time_ms),
            latest.short_id(),
            now.map_or_else(|| "deleted".to_string(), |o| o.to_hex())
        );
    }
    let Some(url) = push else {
        out!("to put it back: {command}");
        return Ok(());
    };
    let target = push_target(config, &chosen, &url)?;
    if !yes && !confirm(&format!("push {name} = {tip} to {url}?"))? {
        anyhow::bail!("not pushed");
    }
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let dir = scratch.path().join("restore");
    restore::restore(&store, &chosen, &dir, &|r| r == name, &progress_bar(false))?;
    target.push(&dir, &[format!("+{name}:{name}")])?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "ref": name,
                "snapshot": chosen.id.to_hex(),
                "target": tip,
                "pushed_to": url,
            }))?
        );
    } else {
        out!("pushed {name} = {tip} to {url}");
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal (and not with --json);
/// nothing otherwise.
fn progress_bar(json: bool) -> impl Fn(hookvault::progress::Progress) {
    use std::io::IsTerminal as _;
    let shown = !json && std::io::stderr().is_terminal();
    let bar = std::sync::Mutex::new(None::<indicatif::ProgressBar>);
    move |step| {
        if !shown {
            return;
        }
        let Ok(mut bar) = bar.lock() else { return };
        match step {
            hookvault::progress::Progress::Start(what, total) => {
                // A count not known in advance gets a spinner.
                let (b, template) = match total {
                    0 => (
                        indicatif::ProgressBar::new_spinner(),
                        "{spinner} {msg} {pos}",
                    ),
                    n => (
                        indicatif::ProgressBar::new(n),
                        "{msg} {bar:40} {pos}/{len} ({eta} left)",
                    ),
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                    b.set_style(style);
                }
                b.set_message(what);
                *bar = Some(b);
            }
            hookvault::progress::Progress::At(n) => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(n);
                }
            }
            hookvault::progress::Progress::Done => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    }
}

fn run_verify(
    config: &Config,
    read_data: bool,
    repo: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let options = hookvault::verify::Options {
        read_data,
        repo: repo.as_deref().map(RepoName::parse).transpose()?,
    };
    let store = serve::open_vault(config, Create::Never)?;
    let started = std::time::Instant::now();
    let report = hookvault::verify::verify(&store, &options, &progress_bar(json))?;
    let seconds = started.elapsed().as_secs_f64();
    // Noted for `serve`, which repairs each after its next backup.
    let (_, reach_damage) = hookvault::repair::affected(&store, &report, options.repo.as_ref())?;
    if !reach_damage.is_empty()
        && let Err(e) = hookvault::repair::mark(&config.store.path, &reach_damage)
    {
        note!("hookvault: cannot note the damaged repositories for serve: {e}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in report.problems.iter().chain(&report.warnings) {
            let mut line = serde_json::to_value(p.kind)?
                .as_str()
                .unwrap_or("problem")
                .to_string();
            for (label, value) in [
                ("repo", p.repository.clone()),
                (
                    "snapshot",
                    p.snapshot
                        .as_ref()
                        .map(|s| s[..12.min(s.len())].to_string()),
                ),
                ("object", p.object.clone()),
                ("file", p.file.clone()),
                ("offset", p.offset.map(|o| o.to_string())),
            ] {
                if let Some(value) = value {
                    line.push_str(&format!("  {label}={value}"));
                }
            }
            out!("{line}: {}", p.message);
        }
        out!(
            "{}: {} repositories, {} snapshots ({} damaged), {} objects checked, {} records read ({:.1} MB raw, {:.1} MB/s); {} problems, {} warnings",
            report.location,
            report.repositories,
            report.snapshots,
            report.damaged_snapshots.len(),
            report.objects,
            report.records_read,
            report.bytes_read as f64 / 1e6,
            report.bytes_read as f64 / 1e6 / seconds.max(1e-9),
            report.problems.len(),
            report.warnings.len()
        );
    }
    if !report.ok() {
        anyhow::bail!(
            "the vault has {} problems; {} snapshots cannot be restored whole",
            report.problems.len(),
            report.damaged_snapshots.len()
        );
    }
    Ok(())
}

/// Hold the store's lock (the delivery queue's, which `serve` holds while it
/// runs) for a command that deletes from the vault.
fn exclusive(config: &Config, what: &str) -> anyhow::Result<hookvault::pipeline::queue::Queue> {
    let dir = config.store.path.join("queue");
    // A local vault lives in store.path: without it there is nothing to
    // lock, and nothing is created. A bucket's store.path may be new here.
    if config.store.url.is_none() && !config.store.path.join("vault").is_dir() {
        anyhow::bail!(
            "no vault at {} (store.path in the config): nothing to {what}",
            config.store.path.join("vault").display()
        );
    }
    std::fs::create_dir_all(&config.store.path)
        .with_context(|| format!("creating {}", config.store.path.display()))?;
    hookvault::pipeline::queue::Queue::open_dir(&dir).with_context(|| {
        format!("{what} needs the store to itself: stop `hookvault serve` (or the other forget, prune or repair) first")
    })
}

fn run_forget(
    config: &Config,
    keep: &KeepFlags,
    repo: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    use hookvault::retention;
    // The flags, or else the config's [retention] rules.
    let mut policy = keep.policy();
    if policy.is_empty() {
        policy = config.retention.policy();
    }
    if policy.is_empty() {
        anyhow::bail!(
            "no policy given (--keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within, or keep_* in the config's [retention]): nothing forgotten"
        );
    }
    let repo = repo.as_deref().map(RepoName::parse).transpose()?;
    let _lock = if dry_run {
        None
    } else {
        Some(exclusive(config, "forget")?)
    };
    let store = serve::open_vault(config, Create::Never)?;
    let plans = retention::plan(&store, &policy, repo.as_ref())?;
    let forgotten: usize = plans.iter().map(|p| p.forgotten().count()).sum();
    if !dry_run && forgotten > 0 {
        retention::forget(&store, &plans, &policy, hookvault::event::now_ms())?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "dry_run": dry_run,
                "policy": policy.describe(),
                "repositories": plans,
                "forgotten": forgotten,
            }))?
        );
        return Ok(());
    }
    for plan in &plans {
        out!("{}:", plan.repository);
        for d in &plan.decisions {
            let what = if d.keep.is_empty() {
                if dry_run { "would forget" } else { "forgotten" }.to_string()
            } else {
                format!("keep ({})", d.keep.join(", "))
            };
            out!(
                "  {}  #{:<5} {}  {}",
                &d.id[..12],
                d.seq,
                format_time(d.time_ms),
                what
            );
        }
    }
    let kept: usize = plans.iter().map(|p| p.decisions.len()).sum::<usize>() - forgotten;
    note!(
        "{} {forgotten} snapshots, kept {kept}{}",
        if dry_run { "would forget" } else { "forgot" },
        if forgotten > 0 && !dry_run {
            "; `hookvault prune` reclaims what only they reached"
        } else {
            ""
        }
    );
    Ok(())
}

fn run_plugin_new(
    name: &str,
    kind: &str,
    dir: Option<&std::path::Path>,
    sdk: Option<&std::path::Path>,
    sdk_version: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use hookvault::plugins::scaffold::{self, Kind, ScaffoldError, Sdk};
    let kind = Kind::parse(kind)?;
    let sdk = match (sdk, sdk_version) {
        (Some(path), _) => Sdk::Path(path.to_path_buf()),
        (None, Some(version)) => Sdk::Version(version.to_string()),
        (None, None) => Sdk::built_in().ok_or(ScaffoldError::NoSdk)?,
    };
    let dir = dir.map_or_else(|| PathBuf::from(name), std::path::Path::to_path_buf);
    let created = scaffold::create(name, kind, &dir, &sdk)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(());
    }
    out!(
        "created {} ({}) in {}",
        created.name,
        created.kind.name(),
        created.dir.display()
    );
    for file in &created.files {
        out!("  {}", file.display());
    }
    out!("next:");
    out!("  cd {}", created.dir.display());
    out!("  cargo test");
    out!("  cargo build --release --target wasm32-wasip2");
    out!("  hookvault plugin check {}", created.component.display());
    if created.kind == Kind::Filter {
        out!(
            "  hookvault plugin test {} --event events/push.json",
            created.component.display()
        );
    }
    Ok(())
}

fn run_plugin_check(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let hookvault::plugins::Checked {
        component: shape,
        error,
    } = hookvault::plugins::check(path);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": path,
                "loads": error.is_none(),
                "error": error.as_ref().map(|e| format!("{e}")),
                "component": shape,
            }))?
        );
    } else if let Some(shape) = &shape {
        out!("{}", path.display());
        match shape.world {
            Some(world) => out!(
                "  world:   {} (hookvault:plugin@{})",
                world.name(),
                shape
                    .world_version
                    .as_deref()
                    .unwrap_or(world.wit_version())
            ),
            None => out!("  world:   none this host serves"),
        }
        out!(
            "  WIT:     {}",
            if shape.hookvault_versions.is_empty() {
                "imports no hookvault interface".to_string()
            } else {
                format!("hookvault:plugin@{}", shape.hookvault_versions.join(", @"))
            }
        );
        out!("  size:    {} bytes, sha256 {}", shape.size, shape.sha256);
        out!("  imports: {}", shape.imports.join(", "));
        out!("  exports: {}", shape.exports.join(", "));
        out!("  loads:   {}", if error.is_none() { "yes" } else { "no" });
    }
    match error {
        Some(e) => anyhow::bail!("{} cannot be loaded: {e}", path.display()),
        None => Ok(()),
    }
}

fn run_plugin_test(
    path: &std::path::Path,
    event: &std::path::Path,
    event_key: Option<&str>,
    pairs: &[String],
    config_file: Option<&std::path::Path>,
    scratch: &hookvault::plugins::trial::Scratch<'_>,
    json: bool,
) -> anyhow::Result<()> {
    use hookvault::plugins::{Decision, trial};
    let mut table = serde_json::Map::new();
    if let Some(file) = config_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("the plugin config {}", file.display()))?;
        let parsed: toml::Table = toml::from_str(&text)
            .with_context(|| format!("the plugin config {}", file.display()))?;
        if let serde_json::Value::Object(map) = serde_json::to_value(parsed)? {
            table.extend(map);
        }
    }
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--set {pair:?}: give KEY=VALUE");
        };
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        table.insert(key.to_string(), value);
    }
    let config_json = serde_json::Value::Object(table).to_string();
    let (event, world, outcome, report) =
        match trial::run(path, event, event_key, config_json, scratch)? {
            trial::Tested::Ignored { event_key } => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({ "event_key": event_key, "ignored": true })
                    );
                } else {
                    out!("hookvault records {event_key} and runs no plugin on it");
                }
                return Ok(());
            }
            trial::Tested::Ran(ran) => {
                let trial::Ran {
                    event,
                    world,
                    outcome,
                    report,
                } = *ran;
                (event, world, outcome, report)
            }
        };
    let mut fields = serde_json::Map::new();
    let mut lines: Vec<String> = Vec::new();
    let error = match outcome {
        trial::Outcome::Filter(decision) => {
            let (name, refs, reason) = match &decision {
                Ok(Decision::Keep) => ("keep", Vec::new(), None),
                Ok(Decision::Skip(reason)) => ("skip", Vec::new(), Some(reason.clone())),
                Ok(Decision::Refs(refs)) => ("refs", refs.clone(), None),
                Err(_) => ("failed", Vec::new(), None),
            };
            match (&reason, refs.is_empty()) {
                (Some(reason), _) => lines.push(format!("decision: skip ({reason})")),
                (None, false) => lines.push(format!("decision: back up only {}", refs.join(", "))),
                (None, true) => lines.push(format!("decision: {name}")),
            }
            fields.insert("decision".into(), name.into());
            fields.insert("reason".into(), serde_json::json!(reason));
            fields.insert("refs".into(), serde_json::json!(refs));
            decision.err()
        }
        trial::Outcome::Backup(summary) => match summary {
            Ok(summary) => {
                lines.push(match &summary.snapshot {
                    Some(id) => format!(
                        "snapshot: {id} ({} refs; {} objects written, {} present, {} bytes stored; {:.1} ms in host calls)",
                        summary.refs,
                        summary.objects_written,
                        summary.objects_present,
                        summary.stored_bytes,
                        summary.host_ms
                    ),
                    None => "snapshot: none (nothing changed since the vault's latest)".into(),
                });
                fields.insert("backup".into(), serde_json::to_value(&summary)?);
                None
            }
            Err(e) => Some(e),
        },
        trial::Outcome::Metadata(written) => match written {
            Ok(versions) => {
                lines.push(format!("documents: {} version(s) written", versions.len()));
                fields.insert("documents".into(), serde_json::json!(versions));
                None
            }
            Err(e) => Some(e),
        },
    };
    let error = error.map(|e| e.to_string());
    if json {
        let mut value = serde_json::json!({
            "event_key": event.event_key,
            "repository": event.repository.to_string(),
            "refs_changed": event.changes.iter().map(|c| c.name.to_string()).collect::<Vec<_>>(),
            "world": world.name(),
            "error": error,
            "fuel_used": report.fuel_used,
            "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
            "stdout": report.stdout,
            "stderr": report.stderr,
            "logs": report.logs,
            "alerts": report.alerts.iter().map(|a| a.json()).collect::<Vec<_>>(),
        });
        if let Some(object) = value.as_object_mut() {
            object.extend(fields);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        out!(
            "event:    {} on {} ({} ref change{})",
            event.event_key,
            event.repository,
            event.changes.len(),
            if event.changes.len() == 1 { "" } else { "s" }
        );
        out!("world:    {}", world.name());
        for line in &lines {
            out!("{line}");
        }
        out!("fuel:     {}", report.fuel_used);
        out!("time:     {:.2} ms", report.elapsed.as_secs_f64() * 1000.0);
        for line in &report.logs {
            out!("log:      [{}] {}", line.level, line.message);
        }
        for alert in &report.alerts {
            out!("alert:    [{}] {}", alert.severity.as_str(), alert.title);
            for line in alert.message.lines() {
                out!("          {line}");
            }
            for (key, value) in &alert.labels {
                out!("          {key}: {value}");
            }
        }
        for (name, text) in [("stdout", &report.stdout), ("stderr", &report.stderr)] {
            for line in text.lines() {
                out!("{name}:   {line}");
            }
        }
    }
    match error {
        Some(e) => anyhow::bail!("the call failed: {e}"),
        None => Ok(()),
    }
}

fn run_key(config: &Config, action: KeyCommand) -> anyhow::Result<()> {
    let store = serve::open_vault(config, Create::Never)?;
    match action {
        KeyCommand::List { json } => {
            let keys = store.keys()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                for k in &keys {
                    out!(
                        "{}  {}  {}{}",
                        &k.id[..12],
                        format_time(k.created_ms),
                        k.label,
                        if k.in_use { "  (in use)" } else { "" }
                    );
                }
            }
        }
        KeyCommand::Add {
            new_passphrase_env,
            new_passphrase_file,
            label,
        } => {
            let secret = match (new_passphrase_env, new_passphrase_file) {
                (Some(var), None) => std::env::var(&var)
                    .with_context(|| format!("the new passphrase: environment variable {var}"))?
                    .into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("the new passphrase: {}", path.display()))?,
                _ => anyhow::bail!("give --new-passphrase-env VAR or --new-passphrase-file PATH"),
            };
            if secret.is_empty() {
                anyhow::bail!("the new passphrase is empty");
            }
            let id = store.add_key(&hookvault::vault::crypto::Passphrase::new(secret), &label)?;
            note!("key {} added", &id[..12]);
        }
        KeyCommand::Remove { id } => {
            // Two removals at once could each remove the key the other one
            // keeps: they take turns (a lock file beside the vault, so
            // `serve` goes on), and each counts the keys under it.
            let _lock = key_lock(config)?;
            let removed = store.remove_key(&id)?;
            note!("key {} removed", &removed[..12]);
        }
    }
    Ok(())
}

fn run_init(config: &Config, json: bool) -> anyhow::Result<()> {
    if config.store.url.is_none() {
        std::fs::create_dir_all(&config.store.path)
            .with_context(|| format!("creating {}", config.store.path.display()))?;
    }
    let vault = serve::open_vault(config, Create::New)?;
    let key = vault.keys().ok().and_then(|keys| keys.into_iter().next());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "location": vault.location(),
                "encrypted": key.is_some(),
                "key": key.as_ref().map(|k| k.id.clone()),
            }))?
        );
    } else {
        match key {
            Some(k) => out!(
                "created an encrypted vault at {} (key {}: keep store.passphrase safe, nothing restores without it)",
                vault.location(),
                &k.id[..12]
            ),
            None => out!("created a vault at {}", vault.location()),
        }
    }
    Ok(())
}

/// `<store.path>/keys.lock`, held while a key is removed. It covers the
/// processes of this machine, not services on others sharing a bucket.
fn key_lock(config: &Config) -> anyhow::Result<std::fs::File> {
    let path = config.store.path.join("keys.lock");
    std::fs::create_dir_all(&config.store.path)
        .with_context(|| format!("creating {}", config.store.path.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another key change holds {}: run again when it is done",
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn run_repair(
    config: &Config,
    repo: Option<String>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let repo = repo.as_deref().map(RepoName::parse).transpose()?;
    let _lock = exclusive(config, "repair")?;
    let store = serve::open_vault(config, Create::Never)?;
    let deps = serve::backup_deps(config, store)?;
    let report = hookvault::repair::repair(&deps, repo.as_ref(), dry_run, &progress_bar(json))?;
    if !dry_run {
        // Repaired (or found sound): no longer for `serve` to repair.
        for noted in hookvault::repair::marked(&config.store.path) {
            if repo.as_ref().is_none_or(|r| r == &noted) {
                hookvault::repair::unmark(&config.store.path, &noted)?;
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.damaged == 0 {
        out!("nothing damaged or missing: nothing to repair");
    } else {
        let verb = if dry_run {
            "would store again"
        } else {
            "stored again"
        };
        out!(
            "{} objects damaged or missing; fetched {}; {verb} {}",
            report.damaged,
            if report.fetched.is_empty() {
                "nothing".to_string()
            } else {
                report.fetched.join(", ")
            },
            report.repaired.len()
        );
        for lost in &report.lost {
            out!("  lost {}: {}", lost.object, terminal::escape(&lost.why));
        }
    }
    if !report.lost.is_empty() {
        note!(
            "hookvault: {} objects could not be recovered; the snapshots that reach them stay damaged (see `hookvault verify`)",
            report.lost.len()
        );
        std::process::exit(1);
    }
    Ok(())
}

fn run_prune(
    config: &Config,
    options: hookvault::vault::prune::PruneOptions,
    json: bool,
) -> anyhow::Result<()> {
    let _lock = exclusive(config, "prune")?;
    let store = serve::open_vault(config, Create::Never)?;
    let dry_run = options.dry_run;
    let (live, report) = hookvault::prune::prune(&store, options, &progress_bar(json))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "live": live, "report": report }))?
        );
        return Ok(());
    }
    let verb = |done: &'static str, would: &'static str| if dry_run { would } else { done };
    out!(
        "{} snapshots reach {} objects; {} of {} records are needed",
        live.snapshots,
        live.objects,
        report.records_kept,
        report.records_before
    );
    out!(
        "data files: {} {}, {} {}, {} unindexed {}, {} new",
        report.data_files_removed,
        verb("removed", "to remove"),
        report.data_files_rewritten,
        verb("rewritten", "to rewrite"),
        report.unindexed_files_removed,
        verb("removed", "to remove"),
        report.data_files_written
    );
    if options.recompress_level.is_some() {
        out!(
            "{} records {} in {} data files",
            report.records_recompressed,
            verb("recompressed", "to recompress"),
            report.data_files_recompressed
        );
    }
    out!(
        "{} bytes {} ({} -> {} bytes of data)",
        report.bytes_reclaimed,
        verb("reclaimed", "to reclaim"),
        report.data_bytes_before,
        report.data_bytes_after
    );
    Ok(())
}
