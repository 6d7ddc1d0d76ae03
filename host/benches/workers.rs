//! Workers benchmark: 100 repositories pushed at once, time until all 100
//! snapshots exist, with `worker.concurrency = 1` against the default, in
//! the same run. The git server answers each request after
//! `HOOKVAULT_BENCH_LATENCY_MS` (default 50: a remote one round trip
//! away); with 0 it is a loopback server sharing this machine's cores.
//!
//! Each repository is a copy of one generated history (40 commits over
//! about 60 files) plus a commit of its own, so every backup fetches a
//! whole repository and stores little that is new after the first.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const REPOS: usize = 100;

/// Complete snapshot files in the vault under `data`.
fn snapshot_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                snapshot_files(&path)
            } else {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                usize::from(name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
            }
        })
        .sum()
}

/// Serve `REPOS` repositories, each the template's history plus one
/// commit of its own; returns their names and heads.
fn repositories(server: &GitServer, tmp: &Path) -> Vec<(String, String)> {
    let template = tmp.join("template");
    let work = WorkTree::new(&template, &tmp.join("unused.git"));
    for c in 0..40 {
        for f in 0..3 {
            let file = (c * 7 + f * 13) % 60;
            work.commit(
                &format!("src/file{file}.txt"),
                &format!(
                    "{}\n",
                    (0..200)
                        .map(|i| format!("line {i} of commit {c}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
                &format!("Change {c}.{f}"),
            );
        }
    }
    (0..REPOS)
        .map(|i| {
            let repo = format!("bench/repo-{i:03}");
            let upstream = server.create(&repo);
            work.git(&["push", "-q", upstream.to_str().expect("UTF-8 path"), "main"]);
            let own = WorkTree::new(&tmp.join(format!("work-{i:03}")), &upstream);
            own.git(&["fetch", "-q", "origin", "main"]);
            own.git(&["reset", "-q", "--hard", "FETCH_HEAD"]);
            let head = own.commit("own.txt", &format!("repository {i}\n"), "Own");
            own.git(&["push", "-q", "origin", "main"]);
            (repo, head)
        })
        .collect()
}

/// Start a service with `concurrency` workers, push every repository at
/// once (from four threads) and return the time until every snapshot
/// exists.
fn drain(tmp: &Path, server: &GitServer, repos: &[(String, String)], concurrency: u32) -> Duration {
    let dir = tmp.join(format!("hv-{concurrency}"));
    let text = config_text(&dir.join("data"), server, 5, 200, "").replace(
        "retry_base_ms = 200\n",
        &format!("retry_base_ms = 200\nconcurrency = {concurrency}\n"),
    );
    let service = Service::start_config(&dir, &text);
    let snapshots = dir.join("data/vault/snapshots");
    let start = Instant::now();
    std::thread::scope(|scope| {
        for part in repos.chunks(REPOS.div_ceil(4)) {
            let service = &service;
            scope.spawn(move || {
                for (repo, head) in part {
                    service.push(
                        &format!("bench-{repo}"),
                        &branch_push(repo, "main", None, head),
                    );
                }
            });
        }
    });
    wait_until("every snapshot", Duration::from_secs(1800), || {
        (snapshot_files(&snapshots) >= repos.len()).then_some(())
    });
    let took = start.elapsed();
    // A snapshot is visible a moment before its delivery is recorded done.
    wait_until("every delivery done", Duration::from_secs(60), || {
        let stats = service.stats();
        (stats["queue"]["done"] == repos.len() as u64).then_some(())
    });
    service.stop();
    took
}

fn main() {
    let latency = Duration::from_millis(
        std::env::var("HOOKVAULT_BENCH_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start_with_latency(&tmp.path().join("remote"), latency);
    let repos = repositories(&server, tmp.path());
    let default = hookvault::config::WorkerConfig::default().concurrency;
    let one = drain(tmp.path(), &server, &repos, 1);
    let many = drain(tmp.path(), &server, &repos, default);
    println!(
        "drain {REPOS} pushes to {REPOS} repositories (remote latency {} ms per request): concurrency 1: {:.1} s, concurrency {default} (default): {:.1} s (ratio {:.2}x faster)",
        latency.as_millis(),
        one.as_secs_f64(),
        many.as_secs_f64(),
        one.as_secs_f64() / many.as_secs_f64()
    );
}
