//! Plugin benchmark: what the sandbox costs, each figure next to a
//! reference measured in the same run.
//!
//! * dispatch: one filter call (a fresh instance from the pooling
//!   allocator, then `filter`) of the `skip-refs` example, p50/p99, next
//!   to a native Rust function doing the same filtering (git's wildmatch,
//!   from gix-glob, over the same event);
//! * start-up: `PluginHost::load` of a config with that filter, compiling
//!   (empty cache) and from wasmtime's on-disk cache, medians of 5;
//! * backup: the built-in `git-backup` plugin backing up ripgrep from
//!   `../shared/corpus` (over git's file transport, into a scratch vault,
//!   as `plugin test` runs it): the whole call, and the part spent in the
//!   host's calls (fetch, walk, copy, commit); the rest is the sandbox and
//!   the plugin. Medians of 3.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hookvault::alerts::Alerts;
use hookvault::event::{Event, EventKind, RefChange, RefKind};
use hookvault::ids::{RefName, RepoName};
use hookvault::plugins::{Decision, FilterPlugin, PluginHost, PluginSpec, new_engine, trial};

const ARTIFACTS: &str = env!("HOOKVAULT_PLUGIN_ARTIFACTS");

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A push changing `n` branches, a quarter of them under wip/.
fn event(n: usize) -> Event {
    let change = |i: usize| {
        let name = if i.is_multiple_of(4) {
            format!("refs/heads/wip/topic-{i}")
        } else {
            format!("refs/heads/feature/topic-{i}")
        };
        RefChange {
            name: RefName::parse(&name).expect("ref"),
            kind: RefKind::Branch,
            old_target: Some("1".repeat(40)),
            new_target: Some("2".repeat(40)),
            forced: false,
        }
    };
    Event {
        delivery_id: "bench".into(),
        source: "cloud".into(),
        event_key: "repo:push".into(),
        kind: EventKind::Push,
        repository: RepoName::parse("acme/widgets").expect("repo"),
        actor: Some("Dana Okafor".into()),
        changes: (0..n).map(change).collect(),
        received_at_ms: 0,
        pull_request: None,
        comment: None,
        comments: Vec::new(),
        previous_name: None,
    }
}

/// The native equivalent of `skip-refs`: the same patterns, the same
/// partition, the same decision.
fn native_filter(event: &Event, patterns: &[&str]) -> Decision {
    let matches = |name: &str| {
        patterns.iter().any(|p| {
            gix_glob::wildmatch((*p).into(), name.into(), gix_glob::wildmatch::Mode::empty())
        })
    };
    let (skipped, kept): (Vec<String>, Vec<String>) = event
        .changes
        .iter()
        .map(|c| c.name.to_string())
        .partition(|name| matches(name));
    if skipped.is_empty() {
        Decision::Keep
    } else if kept.is_empty() {
        Decision::Skip(format!(
            "no changed ref is backed up: {}",
            skipped.join(", ")
        ))
    } else {
        Decision::Refs(kept)
    }
}

fn dispatch() {
    let engine = new_engine().expect("engine");
    let mut spec = PluginSpec::from_config(&hookvault::config::PluginConfig::filter_at(Path::new(
        &format!("{ARTIFACTS}/skip_refs.wasm"),
    )))
    .expect("skip_refs.wasm");
    spec.config_json = r#"{"skip":["refs/heads/wip/*"]}"#.into();
    let filter = FilterPlugin::load(&engine, spec).expect("load");
    for refs in [1usize, 20] {
        let event = event(refs);
        let expected = native_filter(&event, &["refs/heads/wip/*"]);
        assert_eq!(filter.run(&event).expect("call"), expected, "same decision");
        let (mut wasm, mut native) = (Vec::new(), Vec::new());
        for i in 0..2100 {
            let started = Instant::now();
            std::hint::black_box(filter.run(&event).expect("call"));
            let w = started.elapsed();
            let started = Instant::now();
            std::hint::black_box(native_filter(&event, &["refs/heads/wip/*"]));
            let n = started.elapsed();
            if i >= 100 {
                wasm.push(w);
                native.push(n);
            }
        }
        wasm.sort();
        native.sort();
        let (w50, w99) = (percentile(&wasm, 0.5), percentile(&wasm, 0.99));
        let (n50, n99) = (percentile(&native, 0.5), percentile(&native, 0.99));
        println!(
            "  filter call, {refs} changed ref(s): p50 {:.1} µs, p99 {:.1} µs in the sandbox vs native p50 {:.1} µs, p99 {:.1} µs: {:.0}x at p50 (n=2000)",
            us(w50),
            us(w99),
            us(n50),
            us(n99),
            w50.as_secs_f64() / n50.as_secs_f64()
        );
    }
}

fn startup(dir: &Path) {
    let config_at = |store: &Path| -> hookvault::config::Config {
        let text = format!(
            r#"
[store]
path = "{store}"

[[sources]]
name = "cloud"
kind = "cloud"
secrets = ["bench"]

[[plugins]]
name = "skip-wip"
kind = "filter"
path = "{ARTIFACTS}/skip_refs.wasm"
config = {{ skip = ["refs/heads/wip/*"] }}
"#,
            store = store.display()
        );
        let file = store.with_extension("toml");
        std::fs::create_dir_all(store).expect("mkdir");
        std::fs::write(&file, text).expect("config");
        hookvault::config::Config::load(&file).expect("config")
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 0..5 {
        let config = config_at(&dir.join(format!("start-{run}")));
        let started = Instant::now();
        drop(PluginHost::load(&config, &Alerts::log_only()).expect("load"));
        cold.push(started.elapsed());
        let started = Instant::now();
        drop(PluginHost::load(&config, &Alerts::log_only()).expect("load"));
        warm.push(started.elapsed());
    }
    let (cold, warm) = (median(cold), median(warm));
    println!(
        "  plugin start (skip-refs filter and the built-in git-backup): compiled {:.0} ms, from the cache {:.0} ms: {:.2}x (medians of 5)",
        ms(cold),
        ms(warm),
        warm.as_secs_f64() / cold.as_secs_f64()
    );
}

fn backup(dir: &Path) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/ripgrep.bundle");
    if !corpus.is_file() {
        println!("  backup: skipped, {} is missing", corpus.display());
        return;
    }
    let repo = dir.join("ripgrep.git");
    let out = Command::new("git")
        .args(["clone", "-q", "--mirror"])
        .arg(&corpus)
        .arg(&repo)
        .output()
        .expect("git clone");
    assert!(out.status.success(), "clone the corpus");
    let payload =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payloads/cloud-repo-push.json");
    let plugin = PathBuf::from(format!("{ARTIFACTS}/git_backup.wasm"));
    let (mut total, mut host) = (Vec::new(), Vec::new());
    for run in 0..3 {
        let vault = dir.join(format!("vault-{run}"));
        let scratch = trial::Scratch {
            repo_dir: Some(&repo),
            vault_dir: Some(&vault),
        };
        let tested = trial::run(&plugin, &payload, None, "{}".into(), &scratch).expect("trial");
        let trial::Tested::Ran(ran) = tested else {
            panic!("the backup did not run: {tested:?}");
        };
        let trial::Ran {
            outcome: trial::Outcome::Backup(Ok(summary)),
            report,
            ..
        } = *ran
        else {
            panic!("the backup failed");
        };
        assert!(
            summary.snapshot.is_some() && summary.objects_written > 10_000,
            "{summary:?}"
        );
        total.push(report.elapsed);
        host.push(Duration::from_secs_f64(summary.host_ms / 1000.0));
    }
    let (total, host) = (median(total), median(host));
    let sandbox = total.saturating_sub(host);
    println!(
        "  backup of ripgrep by git-backup (file transport, scratch vault): {:.0} ms, of which host calls {:.0} ms and the sandbox with the plugin {:.1} ms: {:.1}% (medians of 3)",
        ms(total),
        ms(host),
        ms(sandbox),
        100.0 * sandbox.as_secs_f64() / total.as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    println!("== plugins");
    // HOOKVAULT_BENCH_ONLY=dispatch|startup|backup runs one part.
    let only = std::env::var("HOOKVAULT_BENCH_ONLY").ok();
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if run("dispatch") {
        dispatch();
    }
    if run("startup") {
        startup(dir.path());
    }
    if run("backup") {
        backup(dir.path());
    }
}
