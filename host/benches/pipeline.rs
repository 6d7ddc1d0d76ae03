//! Pipeline benchmark: hookvault against git itself, measured in the same
//! run so the ratios hold on a noisy machine.
//!
//! * webhook acknowledgement latency (p50/p99), next to a plain HTTP
//!   round trip to the same server;
//! * push → snapshot latency for a one-commit push, next to `git fetch` of
//!   the same change;
//! * initial backup time, next to `git clone --mirror` of the same
//!   repository over the same smart-HTTP server;
//! * store size, next to the mirror's size.
//!
//! The fixture is generated with `git fast-import` (deterministic):
//! `HOOKVAULT_BENCH_COMMITS` commits (default 1500) over a tree of about
//! 600 files.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const REPO: &str = "bench/monorepo";

fn fast_import(repo: &Path, commits: usize) {
    let mut child = Command::new("git")
        .args(["fast-import", "--quiet"])
        .current_dir(repo)
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let mut input = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = [
        "invoice", "ledger", "retry", "account", "balance", "payment", "refund", "currency",
        "customer", "settle", "audit", "report", "export", "schedule", "tax", "discount",
    ];
    for c in 0..commits {
        writeln!(input, "commit refs/heads/main").expect("write");
        writeln!(input, "mark :{}", c + 1).expect("write");
        writeln!(
            input,
            "committer Bench <bench@example.com> {} +0000",
            1_700_000_000 + c * 60
        )
        .expect("write");
        let message = format!("Change {c}");
        writeln!(input, "data {}\n{message}", message.len()).expect("write");
        if c > 0 {
            writeln!(input, "from :{c}").expect("write");
        }
        // The first commit creates ~600 files; later ones touch 3 each.
        let files: Vec<u64> = if c == 0 {
            (0..600).collect()
        } else {
            (0..3).map(|_| next() % 600).collect()
        };
        for f in files {
            let mut content = String::new();
            for line in 0..(20 + next() % 60) {
                let w = words[(next() % words.len() as u64) as usize];
                content.push_str(&format!(
                    "fn {w}_{line}_{c}() -> u64 {{ {} }}\n",
                    next() % 1000
                ));
            }
            writeln!(input, "M 100644 inline src/dir{}/file{f}.rs", f % 40).expect("write");
            writeln!(input, "data {}\n{content}", content.len()).expect("write");
        }
    }
    drop(input);
    assert!(child.wait().expect("fast-import").success());
}

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            total += if meta.is_dir() {
                du(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn git_auth(dir: &Path, args: &[&str]) {
    let header = format!("http.extraHeader=Authorization: Bearer {TOKEN}");
    let mut full = vec!["-c", header.as_str()];
    full.extend_from_slice(args);
    git(dir, &full);
}

fn main() {
    let commits: usize = std::env::var("HOOKVAULT_BENCH_COMMITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    fast_import(&upstream, commits);
    git(&upstream, &["repack", "-adq"]);
    let objects = git(&upstream, &["rev-list", "--objects", "--all"])
        .lines()
        .count();
    let head = git(&upstream, &["rev-parse", "main"]).trim().to_string();
    println!(
        "fixture: {commits} commits, {objects} objects, upstream pack {} KiB",
        du(&upstream) / 1024
    );

    // Reference: git clone --mirror over the same server.
    let mirror = tmp.path().join("reference.git");
    let start = Instant::now();
    git_auth(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            &server.url(REPO),
            mirror.to_str().expect("utf8"),
        ],
    );
    let clone_time = start.elapsed();

    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let body = branch_push(REPO, "main", None, &head);
    let start = Instant::now();
    service.push("bench-initial", &body);
    let outcome = service.outcome("bench-initial");
    let backup_time = start.elapsed();
    assert_eq!(outcome["status"], "done", "{outcome}");
    println!(
        "initial backup: {:.0} ms vs git clone --mirror {:.0} ms (ratio {:.2}x)",
        ms(backup_time),
        ms(clone_time),
        backup_time.as_secs_f64() / clone_time.as_secs_f64()
    );

    let store_bytes = du(&service.dir.join("data/vault"));
    let mirror_bytes = du(&mirror);
    println!(
        "vault size: {:.1} MiB (every vault file, mirror cache excluded) vs git mirror {:.1} MiB (ratio {:.2}x)",
        store_bytes as f64 / 1048576.0,
        mirror_bytes as f64 / 1048576.0,
        store_bytes as f64 / mirror_bytes as f64
    );

    // Push → snapshot vs git fetch of the same one-commit change.
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    git(&work.dir, &["fetch", "-q", "origin", "main"]);
    git(&work.dir, &["reset", "-q", "--hard", "FETCH_HEAD"]);
    let (mut hv, mut fetch) = (Vec::new(), Vec::new());
    let mut old = head.clone();
    for i in 0..15 {
        let new = work.commit(
            &format!("src/dir{i}/file{i}.rs"),
            &format!("// edit {i}\n"),
            &format!("Edit {i}"),
        );
        work.git(&["push", "-q", "origin", "HEAD:main"]);
        let start = Instant::now();
        git_auth(&mirror, &["fetch", "-q"]);
        fetch.push(start.elapsed());
        let body = branch_push(REPO, "main", Some(&old), &new);
        let delivery = format!("bench-push-{i}");
        let start = Instant::now();
        service.push(&delivery, &body);
        let outcome = service.outcome(&delivery);
        hv.push(start.elapsed());
        assert_eq!(outcome["status"], "done");
        old = new;
    }
    let (hv_med, fetch_med) = (median(hv), median(fetch));
    println!(
        "push→snapshot (one commit): median {:.1} ms vs git fetch median {:.1} ms (ratio {:.2}x, n=15)",
        ms(hv_med),
        ms(fetch_med),
        hv_med.as_secs_f64() / fetch_med.as_secs_f64()
    );

    // Webhook acknowledgement latency (signed, persisted, 202), next to a
    // plain GET on the same server.
    let client = reqwest::blocking::Client::new();
    let mut acks = Vec::new();
    let mut pings = Vec::new();
    let url = format!("http://{}/webhooks/bitbucket", service.addr);
    let signature = hookvault::bitbucket::signature::sign(SECRET.as_bytes(), &body);
    for i in 0..400 {
        let start = Instant::now();
        let response = client
            .post(&url)
            .header("X-Event-Key", "repo:push")
            .header("X-Request-UUID", format!("bench-ack-{i}"))
            .header("X-Hub-Signature", &signature)
            .body(body.clone())
            .send()
            .expect("POST");
        acks.push(start.elapsed());
        assert_eq!(response.status().as_u16(), 202);
        let start = Instant::now();
        let response = client
            .get(format!("http://{}/healthz", service.addr))
            .send()
            .expect("GET");
        pings.push(start.elapsed());
        assert!(response.status().is_success());
    }
    acks.sort();
    pings.sort();
    println!(
        "webhook ack latency: p50 {:.2} ms, p99 {:.2} ms (n=400, each durably queued) vs GET /healthz p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&acks, 0.5)),
        ms(percentile(&acks, 0.99)),
        ms(percentile(&pings, 0.5)),
        ms(percentile(&pings, 0.99)),
    );
    service.stop();
}
