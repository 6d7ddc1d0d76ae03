//! Vault benchmark on real history: every figure is a ratio against git
//! itself, measured in the same run (these machines are noisy).
//!
//! For each repository (the corpus bundles in `../shared/corpus/`, and a
//! synthetic repository with many branches):
//! * first backup vs `git clone --mirror` over the same smart-HTTP server;
//! * vault size (every file of the vault) and total disk (vault, queue,
//!   every cache) vs the mirror's size;
//! * one-commit push → snapshot vs `git fetch` of the same change, and the
//!   vault's growth per push;
//! * restore vs `git clone --mirror`, checked with `git fsck`;
//! * reading the object at the end of the deepest delta chain, cold;
//! * `verify --read-data` against `git fsck --full` of the mirror, and
//!   `cat` of the most-changed file against `git show`;
//! * peak resident memory of `serve` (VmHWM).
//!
//! `HOOKVAULT_CORPUS` (default `../shared/corpus` from the workspace root)
//! names the bundles; `HOOKVAULT_BENCH_BRANCHES` the synthetic repository's
//! branch count (default 10000); `HOOKVAULT_BENCH_PUSHES` pushes per
//! repository (default 20); `HOOKVAULT_BENCH_LOG=1` prints each service's
//! log. `HOOKVAULT_BENCH_ONLY=large` runs instead a synthetic repository of
//! `HOOKVAULT_BENCH_LARGE_MIB` (default 1024) MiB of incompressible files,
//! for peak memory on a large first backup (at most 10 pushes);
//! `HOOKVAULT_BENCH_PASSPHRASE` encrypts the vault with it (run once
//! with and once without for the cost of encryption);
//! `HOOKVAULT_BENCH_ONLY=prune` runs instead forget and prune on ripgrep
//! after `HOOKVAULT_BENCH_PRUNE_PUSHES` (default 200) pushes, half of them
//! force-pushed away.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hookvault::ids::{GitOid, RecordId};
use hookvault::vault::{Create, Vault, WriteOptions};
use support::*;

fn du(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += if meta.is_dir() {
                du(&entry.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn git_auth(dir: &Path, args: &[&str]) -> String {
    let header = format!("http.extraHeader=Authorization: Bearer {TOKEN}");
    let mut full = vec!["-c", header.as_str()];
    full.extend_from_slice(args);
    git(dir, &full)
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// One field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's anonymous memory (heap, stacks: what it allocated,
/// not file pages it mapped) every 5 ms until dropped; `peak()` is the
/// largest sample. VmHWM counts mapped pack files too, which the kernel
/// can drop at any time.
struct AnonSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl AnonSampler {
    fn start(pid: u32) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kib(pid, "RssAnon:"));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn peak_kib(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// A restic repository, when Debian's `restic` is installed.
struct Restic {
    repo: PathBuf,
    backups: std::cell::Cell<u32>,
}

impl Restic {
    fn init(repo: &Path) -> Option<Self> {
        let present = || {
            std::process::Command::new("restic")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // Installed from Debian's packages when missing, as the ingest
        // bench installs wrk.
        let installed = present() || {
            let root = std::process::Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
            let mut apt = std::process::Command::new(if root { "apt-get" } else { "sudo" });
            if !root {
                apt.arg("apt-get");
            }
            let _ = apt.args(["install", "-y", "-qq", "restic"]).output();
            present()
        };
        let restic = Self {
            repo: repo.to_path_buf(),
            backups: std::cell::Cell::new(0),
        };
        if !installed {
            println!(
                "  restic is not installed (Debian: apt-get install restic): its comparison is skipped"
            );
        }
        installed.then(|| {
            restic.run(&["init", "-q"]);
            restic
        })
    }

    fn run(&self, args: &[&str]) {
        let out = std::process::Command::new("restic")
            .args(args)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_REPOSITORY", &self.repo)
            .output()
            .expect("restic");
        assert!(
            out.status.success(),
            "restic {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn backup(&self, dir: &Path) {
        self.run(&["backup", "-q", dir.to_str().expect("utf8")]);
        self.backups.set(self.backups.get() + 1);
    }
}

/// The delivery's record once it has left the queue, polled every 2 ms so
/// the poll adds at most that much to a timing (the tests' `outcome` backs
/// off to 100 ms).
fn finished(service: &Service, delivery: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (status, record) = service.api(&format!("deliveries/{delivery}"));
        if status == 200 && record["status"] != "queued" {
            return record;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "delivery {delivery} not finished: {record}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Row {
    name: String,
    lines: Vec<String>,
}

fn bench_repo(name: &str, repo: &str, make_upstream: impl FnOnce(&Path), pushes: usize) -> Row {
    let mut lines = Vec::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(repo);
    make_upstream(&upstream);
    let refs = git(&upstream, &["for-each-ref"]).lines().count();
    let default_branch = git(&upstream, &["symbolic-ref", "--short", "HEAD"])
        .trim()
        .to_string();
    let head = git(&upstream, &["rev-parse", &default_branch])
        .trim()
        .to_string();

    let mirror = tmp.path().join("reference.git");
    let start = Instant::now();
    git_auth(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            &server.url(repo),
            mirror.to_str().expect("utf8"),
        ],
    );
    let clone_time = start.elapsed();
    let mirror_bytes = du(&mirror);
    let restic = Restic::init(&tmp.path().join("restic"));
    if let Some(restic) = &restic {
        restic.backup(&mirror);
    }

    // `HOOKVAULT_BENCH_PASSPHRASE`: the vault is encrypted with it.
    let service = match std::env::var("HOOKVAULT_BENCH_PASSPHRASE") {
        Ok(passphrase) => {
            let dir = tmp.path().join("hv");
            let text = config_text(&dir.join("data"), &server, 2, 50, "").replacen(
                "[store]\n",
                &format!("[store]\npassphrase = {passphrase:?}\n"),
                1,
            );
            Service::start_config(&dir, &text)
        }
        Err(_) => Service::start(&tmp.path().join("hv"), &server, ""),
    };
    let body = branch_push(repo, &default_branch, None, &head);
    let sampler = service.pid().map(AnonSampler::start);
    let start = Instant::now();
    service.push("bench-initial", &body);
    let outcome = finished(&service, "bench-initial");
    let backup_time = start.elapsed();
    let peak_anon_kib = sampler.map(AnonSampler::peak_kib).unwrap_or(0);
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    let peak_kib = service.pid().map(peak_rss_kib).unwrap_or(0);
    let data = service.dir.join("data");
    let vault_bytes = du(&data.join("vault"));
    let total_bytes = du(&data);
    lines.push(format!(
        "refs {refs}; first backup {:.0} ms vs git clone --mirror {:.0} ms: {:.2}x",
        ms(backup_time),
        ms(clone_time),
        backup_time.as_secs_f64() / clone_time.as_secs_f64()
    ));
    lines.push(format!(
        "vault {:.2} MiB vs mirror {:.2} MiB: {:.2}x; total disk (vault, queue, every cache) {:.2} MiB: {:.2}x",
        mib(vault_bytes),
        mib(mirror_bytes),
        vault_bytes as f64 / mirror_bytes as f64,
        mib(total_bytes),
        total_bytes as f64 / mirror_bytes as f64
    ));
    lines.push(format!(
        "peak RSS of serve after the first backup: {:.0} MiB (VmHWM, mapped files included); peak anonymous memory during it: {:.0} MiB (RssAnon, sampled every 5 ms)",
        peak_kib as f64 / 1024.0,
        peak_anon_kib as f64 / 1024.0
    ));

    // One-commit pushes.
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    git(&work.dir, &["fetch", "-q", "origin", &default_branch]);
    git(&work.dir, &["reset", "-q", "--hard", "FETCH_HEAD"]);
    let (mut hv, mut fetch, mut growth) = (Vec::new(), Vec::new(), Vec::new());
    let mut old = head.clone();
    for i in 0..pushes {
        let new = work.commit(
            &format!("bench/push-{i}.txt"),
            &format!("push {i}\n"),
            &format!("Push {i}"),
        );
        work.git(&["push", "-q", "origin", &format!("HEAD:{default_branch}")]);
        let start = Instant::now();
        git_auth(&mirror, &["fetch", "-q"]);
        fetch.push(start.elapsed());
        if let Some(restic) = &restic {
            restic.backup(&mirror);
        }
        let before = du(&data.join("vault"));
        let body = branch_push(repo, &default_branch, Some(&old), &new);
        let delivery = format!("bench-push-{i}");
        let start = Instant::now();
        service.push(&delivery, &body);
        let outcome = finished(&service, &delivery);
        hv.push(start.elapsed());
        assert_eq!(outcome["status"], "done", "{outcome}");
        growth.push(du(&data.join("vault")) - before);
        old = new;
    }
    if pushes > 0 {
        let (hv_med, fetch_med) = (median(hv), median(fetch));
        growth.sort();
        lines.push(format!(
            "push → snapshot median {:.1} ms vs git fetch {:.1} ms: {:.2}x (n={pushes}); vault growth per push median {:.1} KiB, max {:.1} KiB",
            ms(hv_med),
            ms(fetch_med),
            hv_med.as_secs_f64() / fetch_med.as_secs_f64(),
            growth[growth.len() / 2] as f64 / 1024.0,
            growth[growth.len() - 1] as f64 / 1024.0
        ));
    }

    // restic (Debian's), the way a scheduled backup tool would protect the
    // mirror: once after the initial clone, once after each push, and once
    // after a `git repack -adf`.
    let mut restic_size = None;
    if let Some(restic) = &restic {
        git(&mirror, &["repack", "-adfq"]);
        restic.backup(&mirror);
        let restic_bytes = du(&restic.repo);
        restic_size = Some(restic_bytes);
        let vault_now = du(&data.join("vault"));
        lines.push(format!(
            "restic ({} backups of the mirror, the last after repack -adf): {:.2} MiB; vault {:.2} MiB: {:.2}x restic's",
            restic.backups.get(),
            mib(restic_bytes),
            mib(vault_now),
            vault_now as f64 / restic_bytes as f64
        ));
    }

    // Restore (while serve runs) vs a fresh clone --mirror.
    let clone2 = tmp.path().join("reference2.git");
    let start = Instant::now();
    git_auth(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            &server.url(repo),
            clone2.to_str().expect("utf8"),
        ],
    );
    let clone2_time = start.elapsed();
    let restored = tmp.path().join("restored.git");
    let start = Instant::now();
    let out = restore(&service.config, repo, None, &restored);
    let restore_time = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        refs_of(&restored),
        refs_of(&clone2),
        "restored refs differ from the remote"
    );
    assert_fsck_clean(&restored);
    lines.push(format!(
        "restore {:.0} ms vs git clone --mirror {:.0} ms: {:.2}x (fsck clean, refs equal)",
        ms(restore_time),
        ms(clone2_time),
        restore_time.as_secs_f64() / clone2_time.as_secs_f64()
    ));

    // The object at the end of the deepest chain, from a cold handle.
    let vault_dir = data.join("vault");
    let options = || WriteOptions {
        passphrase: std::env::var("HOOKVAULT_BENCH_PASSPHRASE")
            .ok()
            .map(hookvault::vault::crypto::Passphrase::new),
        ..WriteOptions::default()
    };
    let vault = Vault::open_local(&vault_dir, Create::Never, options()).expect("vault");
    let deepest = vault.deepest_record().expect("records");
    let start = Instant::now();
    let cold = Vault::open_local(&vault_dir, Create::Never, options()).expect("vault");
    let open_time = start.elapsed();
    let start = Instant::now();
    let (_, bytes) = cold.read_object(&GitOid::from(deepest.0)).expect("read");
    let read_time = start.elapsed();
    lines.push(format!(
        "cold read of the deepest chain (depth {}, {} bytes): {:.2} ms (vault open {:.1} ms)",
        deepest.1,
        bytes.len(),
        ms(read_time),
        ms(open_time)
    ));
    let _: RecordId = deepest.0;

    // verify --read-data (every record read back and hashed) against
    // `git fsck --full` of the mirror clone, which reads every object too.
    let start = Instant::now();
    let out = service.cli(&["verify", "--read-data", "--json"]);
    let verify_time = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let raw = report["bytes_read"].as_u64().expect("bytes");
    let start = Instant::now();
    let fsck = std::process::Command::new("git")
        .args(["fsck", "--full", "--no-dangling"])
        .current_dir(&clone2)
        .output()
        .expect("git fsck");
    let fsck_time = start.elapsed();
    assert!(fsck.status.success());
    lines.push(format!(
        "verify --read-data {:.0} ms ({} records, {:.1} MB raw: {:.0} MB/s) vs git fsck --full {:.0} ms: {:.2}x",
        ms(verify_time),
        report["records_read"],
        raw as f64 / 1e6,
        raw as f64 / 1e6 / verify_time.as_secs_f64(),
        ms(fsck_time),
        verify_time.as_secs_f64() / fsck_time.as_secs_f64()
    ));

    // `cat` of the newest version of the file changed most often (deep in
    // its chain), a whole command, against `git show` of it in the mirror.
    let names = git(&clone2, &["log", "--format=", "--name-only", "HEAD"]);
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for name in names.lines().filter(|l| !l.is_empty()) {
        *counts.entry(name).or_default() += 1;
    }
    let head_files = git(&clone2, &["ls-tree", "-r", "--name-only", "HEAD"]);
    let present: std::collections::HashSet<&str> = head_files.lines().collect();
    if let Some((path, versions)) = counts
        .into_iter()
        .filter(|(p, _)| present.contains(p))
        .max_by_key(|(p, n)| (*n, std::cmp::Reverse(p.to_string())))
    {
        let branch = git(&clone2, &["symbolic-ref", "HEAD"]);
        let branch = branch.trim();
        let mut cat_times = Vec::new();
        let mut show_times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let out = service.cli(&["cat", "--repo", repo, "--ref", branch, "--path", path]);
            cat_times.push(start.elapsed());
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let start = Instant::now();
            let shown = std::process::Command::new("git")
                .args(["show", &format!("HEAD:{path}")])
                .current_dir(&clone2)
                .output()
                .expect("git show");
            show_times.push(start.elapsed());
            assert_eq!(out.stdout, shown.stdout, "cat equals git show");
        }
        let (cat, show) = (median(cat_times), median(show_times));
        lines.push(format!(
            "cat of {path} ({versions} versions in history) {:.1} ms vs git show {:.1} ms: {:.2}x (whole commands, median of 5)",
            ms(cat),
            ms(show),
            cat.as_secs_f64() / show.as_secs_f64()
        ));
    }
    if std::env::var_os("HOOKVAULT_BENCH_LOG").is_some() {
        eprintln!("---- service log of {name} ----\n{}", service.log());
    }
    let config = service.config.clone();
    service.stop();

    // The background pass: every record compressed again at level 19
    // (`prune --recompress-level 19`, as `retention.recompress_level` runs
    // it), against git's own slow pass over the same objects, an
    // aggressive repack of the mirror clone; then a restore from the
    // recompressed vault must still equal the remote.
    let vault_before = du(&vault_dir);
    let start = Instant::now();
    let out = run(&config, &["prune", "--recompress-level", "19", "--json"]);
    let recompress_time = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let vault_after = du(&vault_dir);
    let clone_bytes = du(&clone2);
    let start = Instant::now();
    git(&clone2, &["repack", "-adfq", "--window=250", "--depth=50"]);
    let repack_time = start.elapsed();
    lines.push(format!(
        "recompress at level 19 ({} records) {:.0} ms vs git repack -adf --window=250 --depth=50 {:.0} ms: {:.2}x; vault {:.2} -> {:.2} MiB ({:.2}x a fresh clone --mirror{})",
        report["report"]["records_recompressed"],
        ms(recompress_time),
        ms(repack_time),
        recompress_time.as_secs_f64() / repack_time.as_secs_f64(),
        mib(vault_before),
        mib(vault_after),
        vault_after as f64 / clone_bytes as f64,
        restic_size
            .map(|r| format!(", {:.2}x restic's", vault_after as f64 / r as f64))
            .unwrap_or_default()
    ));
    let recompressed = tmp.path().join("recompressed.git");
    let out = restore(&config, repo, None, &recompressed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(refs_of(&recompressed), refs_of(&clone2));
    assert_fsck_clean(&recompressed);
    if let Some(keep) = std::env::var_os("HOOKVAULT_BENCH_KEEP") {
        let keep = PathBuf::from(keep).join(name.replace(' ', "-"));
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::create_dir_all(keep.parent().expect("parent")).expect("mkdir");
        std::fs::rename(&vault_dir, &keep).expect("keep the vault");
    }
    Row {
        name: name.to_string(),
        lines,
    }
}

fn corpus_dir() -> PathBuf {
    std::env::var_os("HOOKVAULT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"))
}

fn from_bundle(bundle: PathBuf) -> impl FnOnce(&Path) {
    move |upstream: &Path| {
        std::fs::remove_dir_all(upstream).expect("clear");
        git(
            upstream.parent().expect("parent"),
            &[
                "clone",
                "-q",
                "--mirror",
                bundle.to_str().expect("utf8"),
                upstream.to_str().expect("utf8"),
            ],
        );
        git(upstream, &["config", "http.receivepack", "true"]);
    }
}

fn many_branches(n: usize) -> impl FnOnce(&Path) {
    move |upstream: &Path| {
        let mut script = String::new();
        script.push_str("commit refs/heads/main\nmark :1\ncommitter B <b@example.com> 1700000000 +0000\ndata 4\nroot\n");
        for f in 0..200 {
            let content = format!("file {f}\n").repeat(40);
            script.push_str(&format!(
                "M 100644 inline src/f{f}.txt\ndata {}\n{content}",
                content.len()
            ));
        }
        for b in 0..n {
            script.push_str(&format!(
                "commit refs/heads/feature/b{b:05}\ncommitter B <b@example.com> {} +0000\ndata 3\nb{}\nfrom :1\nM 100644 inline branch.txt\ndata 6\n{b:05}\n",
                1_700_000_001 + b,
                b % 10
            ));
        }
        let mut child = std::process::Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(upstream)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("fast-import");
        std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), script.as_bytes())
            .expect("write");
        drop(child.stdin.take());
        assert!(child.wait().expect("wait").success());
        git(upstream, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        git(upstream, &["repack", "-adq"]);
    }
}

/// A repository of about `mib` MiB: every commit adds four 1 MiB files of
/// incompressible bytes and edits a 200 KB text file, so memory is measured
/// on objects that neither compress nor delta.
fn large(mib: usize) -> impl FnOnce(&Path) {
    move |upstream: &Path| {
        let mut child = std::process::Command::new("git")
            .args(["fast-import", "--quiet"])
            .current_dir(upstream)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("fast-import");
        let mut input = std::io::BufWriter::new(child.stdin.take().expect("stdin"));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = |len: usize| -> Vec<u8> {
            let mut out = Vec::with_capacity(len);
            while out.len() < len {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
            }
            out.truncate(len);
            out
        };
        let mut text: Vec<String> = (0..4000)
            .map(|i| format!("line {i} of the notes\n"))
            .collect();
        for c in 0..mib.div_ceil(4) {
            text[(c * 37) % 4000] = format!("line changed in commit {c}\n");
            let mut commit = format!(
                "commit refs/heads/main\ncommitter L <l@example.com> {} +0000\ndata 4\nc{:03}\n",
                1_700_000_000 + c,
                c % 1000
            );
            let notes = text.concat();
            commit.push_str(&format!(
                "M 100644 inline notes.txt\ndata {}\n{notes}\n",
                notes.len()
            ));
            std::io::Write::write_all(&mut input, commit.as_bytes()).expect("write");
            for f in 0..4 {
                let blob = random(1 << 20);
                std::io::Write::write_all(
                    &mut input,
                    format!(
                        "M 100644 inline assets/c{c:04}-{f}.bin\ndata {}\n",
                        blob.len()
                    )
                    .as_bytes(),
                )
                .expect("write");
                std::io::Write::write_all(&mut input, &blob).expect("write");
                std::io::Write::write_all(&mut input, b"\n").expect("write");
            }
        }
        drop(input);
        assert!(child.wait().expect("wait").success());
        git(upstream, &["symbolic-ref", "HEAD", "refs/heads/main"]);
        git(upstream, &["repack", "-adq"]);
    }
}

/// Text that changes with `seed`: a noisy note of `lines` lines, as a
/// generated file or a log someone committed would be.
fn note_text(seed: usize, lines: usize) -> String {
    (0..lines)
        .map(|i| {
            let n = (i * 7919 + seed * 104_729) % 1_000_003;
            format!("entry {i} of push {seed}: {n} {:x}\n", n * 31)
        })
        .collect()
}

/// Prune after `pushes` pushes of which half force-push a scratch branch
/// (then deleted) and are forgotten; the other half are commits on the
/// default branch, which edit the same files, so their records were
/// stored as deltas against the scratch ones. Against `git gc
/// --prune=now` of a mirror that followed the same pushes, and a fresh
/// first backup of the final state.
fn bench_prune(name: &str, repo: &str, make_upstream: impl FnOnce(&Path), pushes: usize) -> Row {
    let mut lines = Vec::new();
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(repo);
    make_upstream(&upstream);
    let default_branch = git(&upstream, &["symbolic-ref", "--short", "HEAD"])
        .trim()
        .to_string();
    let head = git(&upstream, &["rev-parse", &default_branch])
        .trim()
        .to_string();
    let mirror = tmp.path().join("reference.git");
    git_auth(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            &server.url(repo),
            mirror.to_str().expect("utf8"),
        ],
    );
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let config = service.config.clone();
    let data = service.dir.join("data");
    let mut n = 0usize;
    let deliver = |n: &mut usize, body: Vec<u8>| {
        *n += 1;
        let id = format!("bench-prune-{n}");
        service.push(&id, &body);
        let outcome = finished(&service, &id);
        assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    };
    deliver(&mut n, branch_push(repo, &default_branch, None, &head));
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    git(&work.dir, &["fetch", "-q", "origin", &default_branch]);
    git(&work.dir, &["reset", "-q", "--hard", "FETCH_HEAD"]);
    let readme = std::fs::read_to_string(work.dir.join("README.md")).unwrap_or_default();
    let half = pushes / 2;
    let mut previous: Option<String> = None;
    for i in 0..half {
        work.git(&["checkout", "-q", "-B", "scratch", &head]);
        std::fs::write(
            work.dir.join("README.md"),
            format!("{readme}\nscratch {i}\n"),
        )
        .expect("write");
        let tip = work.commit(
            "bench/notes.txt",
            &note_text(i, 400),
            &format!("Scratch {i}"),
        );
        work.git(&["push", "-q", "-f", "origin", "scratch"]);
        git_auth(&mirror, &["fetch", "-q", "--prune"]);
        deliver(
            &mut n,
            cloud_push(
                repo,
                &[Change {
                    branch: "scratch",
                    kind: "branch",
                    old: previous.as_deref(),
                    new: Some(&tip),
                    forced: previous.is_some(),
                }],
            ),
        );
        previous = Some(tip);
    }
    work.git(&["push", "-q", "origin", "--delete", "scratch"]);
    git_auth(&mirror, &["fetch", "-q", "--prune"]);
    deliver(
        &mut n,
        cloud_push(
            repo,
            &[Change {
                branch: "scratch",
                kind: "branch",
                old: previous.as_deref(),
                new: None,
                forced: false,
            }],
        ),
    );
    work.git(&["checkout", "-q", "-B", &default_branch, &head]);
    let mut old = head.clone();
    let mut readme_now = readme.clone();
    for i in 0..pushes - half {
        readme_now.push_str(&format!("\nmain {i}\n"));
        std::fs::write(work.dir.join("README.md"), &readme_now).expect("write");
        let new = work.commit(
            "bench/notes.txt",
            &note_text(10_000 + i, 400),
            &format!("Main {i}"),
        );
        work.git(&["push", "-q", "origin", &format!("HEAD:{default_branch}")]);
        git_auth(&mirror, &["fetch", "-q", "--prune"]);
        deliver(&mut n, branch_push(repo, &default_branch, Some(&old), &new));
        old = new;
    }
    service.stop();

    let before = du(&data.join("vault"));
    let keep = (pushes - half).to_string();
    let out = run(&config, &["forget", "--keep-last", &keep, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let out = run(&config, &["prune", "--json"]);
    let prune_time = start.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let after = du(&data.join("vault"));
    let mirror_before = du(&mirror);
    let start = Instant::now();
    git(&mirror, &["gc", "-q", "--prune=now"]);
    let gc_time = start.elapsed();
    let mirror_after = du(&mirror);
    let (ok, report) = verify(&config, &["--read-data"]);
    assert!(ok, "{report}");
    let restored = tmp.path().join("restored");
    let out = restore(&config, repo, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);

    // A fresh vault that only ever saw the final state.
    let fresh = Service::start(&tmp.path().join("fresh"), &server, "");
    fresh.push("fresh", &branch_push(repo, &default_branch, None, &old));
    assert_eq!(finished(&fresh, "fresh")["status"], "done");
    let fresh_bytes = du(&fresh.dir.join("data/vault"));
    fresh.stop();

    let r = &pruned["report"];
    lines.push(format!(
        "{pushes} pushes ({half} force-pushes of a scratch branch, then deleted and forgotten); forget --keep-last {keep}, then prune {:.0} ms vs git gc --prune=now of the mirror {:.0} ms: {:.2}x",
        ms(prune_time),
        ms(gc_time),
        prune_time.as_secs_f64() / gc_time.as_secs_f64()
    ));
    lines.push(format!(
        "vault {:.2} MiB -> {:.2} MiB ({:.1}% reclaimed; {} of {} records kept, {} re-encoded whole, {} data files removed, {} rewritten); mirror {:.2} MiB -> {:.2} MiB after gc",
        mib(before),
        mib(after),
        (before - after) as f64 * 100.0 / before as f64,
        r["records_kept"],
        r["records_before"],
        r["records_reencoded"],
        r["data_files_removed"],
        r["data_files_rewritten"],
        mib(mirror_before),
        mib(mirror_after)
    ));
    lines.push(format!(
        "pruned vault {:.2} MiB vs a fresh first backup of the final state {:.2} MiB: {:.2}x; after gc the vault is {:.2}x the mirror",
        mib(after),
        mib(fresh_bytes),
        after as f64 / fresh_bytes as f64,
        after as f64 / mirror_after as f64
    ));
    Row {
        name: format!("{name}: prune"),
        lines,
    }
}

fn main() {
    let pushes: usize = std::env::var("HOOKVAULT_BENCH_PUSHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let branches: usize = std::env::var("HOOKVAULT_BENCH_BRANCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let only = std::env::var("HOOKVAULT_BENCH_ONLY").ok();
    let corpus = corpus_dir();
    let mut rows = Vec::new();
    for name in ["ripgrep", "jq"] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let bundle = corpus.join(format!("{name}.bundle"));
        assert!(
            bundle.is_file(),
            "missing {} (set HOOKVAULT_CORPUS)",
            bundle.display()
        );
        rows.push(bench_repo(
            name,
            &format!("corpus/{name}"),
            from_bundle(bundle),
            pushes,
        ));
    }
    if only.as_deref().is_some_and(|o| o == "prune") {
        let prune_pushes: usize = std::env::var("HOOKVAULT_BENCH_PRUNE_PUSHES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        rows.push(bench_prune(
            "ripgrep",
            "corpus/ripgrep",
            from_bundle(corpus.join("ripgrep.bundle")),
            prune_pushes,
        ));
    }
    if only.as_deref().is_none_or(|o| o == "branches") {
        rows.push(bench_repo(
            &format!("{branches} branches"),
            "synthetic/branches",
            many_branches(branches),
            pushes,
        ));
    }
    if only.as_deref() == Some("large") {
        let mib: usize = std::env::var("HOOKVAULT_BENCH_LARGE_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024);
        rows.push(bench_repo(
            &format!("{mib} MiB synthetic"),
            "synthetic/large",
            large(mib),
            pushes.min(10),
        ));
    }
    for row in rows {
        println!("== {}", row.name);
        for line in row.lines {
            println!("  {line}");
        }
    }
}
