//! Crash consistency, end to end: `hookvault serve` is killed with SIGKILL
//! at many points of real backups (first backups of ripgrep, then one-commit
//! pushes), restarted on the same data directory each time, and must end
//! with every acknowledged delivery done with its snapshot, every snapshot
//! restorable and `git fsck` clean with exactly the refs the remote had, and
//! no file in the vault that a reader could trip over.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

const BUNDLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/corpus/ripgrep.bundle"
);
/// The repository whose first backup is killed repeatedly and which then
/// gets the one-commit pushes.
const PUSHED: &str = "acme/ripgrep";
/// Rounds killing first backups: one new repository per round.
const FIRST_BACKUP_ROUNDS: usize = 12;
/// Rounds killing one-commit pushes to `PUSHED` at timed points.
const PUSH_ROUNDS: usize = 40;
/// After every this many timed push rounds, one more push is killed the
/// moment its snapshot file is visible: after the vault's commit, before
/// the queue records the outcome.
const SNAPSHOT_WINDOW_EVERY: usize = 10;
/// How long one delivery may take to finish after a restart.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(180);

/// The config of `Service::start`, with enough attempts that deliveries
/// interrupted by kills still complete.
fn crash_config(dir: &Path, git: &GitServer) -> String {
    config_text(&dir.join("data"), git, 20, 50, "")
}

/// A deterministic xorshift64 sequence.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Kill points (milliseconds after the 202) for `rounds` rounds of work
/// that takes about `span` uninterrupted: four at the very start (0, 5, 10
/// and 20 ms: the fetch's handshake), the rest spread evenly over
/// `(0, 1.2 × span]` with a little deterministic jitter, then shuffled
/// deterministically so that the state one kill leaves meets kill points
/// of every size.
fn kill_points(rounds: usize, span: Duration, seed: u64) -> Vec<u64> {
    let mut rng = XorShift(seed);
    let span_ms = span.as_millis() as u64;
    let early = [0u64, 5, 10, 20];
    let spread = rounds.saturating_sub(early.len()).max(1) as u64;
    let mut points: Vec<u64> = (0..rounds)
        .map(|i| {
            if let Some(&ms) = early.get(i) {
                return ms;
            }
            let step = (i - early.len()) as u64;
            let base = span_ms * 12 * step / (10 * spread);
            base + rng.next() % (span_ms * 12 / (10 * spread) + 1)
        })
        .collect();
    for i in (1..points.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        points.swap(i, j);
    }
    points
}

/// Every file under `root` whose name satisfies `keep`, relative to `root`.
fn files_named(root: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.expect("directory entry");
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                dirs.push(path);
            } else if entry.file_name().to_str().is_some_and(&keep) {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                out.push(rel.display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The first few of a list, and how many more.
fn abbreviated(items: &[String]) -> String {
    let shown = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    match items.len() {
        n if n > 3 => format!("{shown} and {} more", n - 3),
        _ => shown,
    }
}

/// Fetch workspaces (each backup's temporary repository) present now.
fn workspaces_left(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("fetch"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn is_hex64(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Every file in the vault's data, index, snapshot and document
/// directories is either complete and named by its own BLAKE3, or a
/// temporary (`.<name>.<pid>.<n>.tmp`) that listings skip. Returns the
/// number of complete files and the temporaries left behind.
fn check_vault_files(vault: &Path) -> (usize, Vec<String>) {
    let mut complete = 0;
    let mut leftovers = Vec::new();
    for prefix in ["data", "index", "snapshots", "documents"] {
        let top = vault.join(prefix);
        for rel in files_named(&top, |_| true) {
            let path = top.join(&rel);
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name");
            if name.starts_with('.') && name.ends_with(".tmp") {
                leftovers.push(format!("{prefix}/{rel}"));
                continue;
            }
            assert!(
                is_hex64(name),
                "{prefix}/{rel} is neither a vault file nor a temporary"
            );
            let bytes = std::fs::read(&path).expect("read vault file");
            assert_eq!(
                blake3::hash(&bytes).to_hex().as_str(),
                name,
                "{prefix}/{rel}: the content does not match the name"
            );
            complete += 1;
        }
    }
    (complete, leftovers)
}

/// Serve a copy of the corpus repository as `repo`.
fn serve_copy(template: &Path, root: &Path, repo: &str) -> PathBuf {
    let path = root.join(format!("{repo}.git"));
    std::fs::create_dir_all(path.parent().expect("owner directory")).expect("mkdir");
    let (from, to) = (
        template.to_str().expect("UTF-8 path"),
        path.to_str().expect("UTF-8 path"),
    );
    git(root, &["clone", "-q", "--mirror", "--local", from, to]);
    git(&path, &["config", "http.receivepack", "true"]);
    path
}

/// Makes one-commit pushes to `master` of an upstream repository.
struct Pusher {
    work: WorkTree,
    head: String,
    pushed: usize,
}

impl Pusher {
    fn new(dir: &Path, upstream: &Path) -> Self {
        let work = WorkTree::new(dir, upstream);
        work.git(&["fetch", "-q", "origin", "master"]);
        work.git(&["checkout", "-q", "-b", "master", "FETCH_HEAD"]);
        let head = work.head();
        Self {
            work,
            head,
            pushed: 0,
        }
    }

    /// Commit one new file, push it; return the old and new tip.
    fn push(&mut self) -> (String, String) {
        self.pushed += 1;
        let n = self.pushed;
        let new = self.work.commit(
            &format!("crash/round-{n:03}.txt"),
            &format!("round {n}\n"),
            &format!("Crash round {n}"),
        );
        self.work.git(&["push", "-q", "origin", "master"]);
        (std::mem::replace(&mut self.head, new.clone()), new)
    }
}

/// When a round kills the service.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// This many milliseconds after the 202.
    AfterMs(u64),
    /// As soon as a new snapshot file is visible in the vault, which is
    /// before the queue records the delivery as done.
    AtSnapshot,
}

/// One acknowledged delivery and the refs its repository had on the remote
/// when it was sent (the refs its snapshot must hold).
struct Acked {
    id: String,
    repo: String,
    round: usize,
    kill: Option<Kill>,
    refs: BTreeMap<String, String>,
}

/// `hookvault serve` on one data directory, killed and restarted.
struct Experiment {
    dir: PathBuf,
    config: PathBuf,
    service: Option<Service>,
    launches: usize,
    deliveries: usize,
    acked: Vec<Acked>,
    /// Errors recorded on deliveries (a crash must cost a retry, never an
    /// error).
    errors: Vec<String>,
    rounds: usize,
    kills_before_done: usize,
    kills_after_done: usize,
    kills_at_snapshot: usize,
    /// Fetch workspaces found right after kills (the next start removes
    /// them).
    workspaces_after_kills: usize,
}

impl Experiment {
    fn start(dir: &Path, git: &GitServer) -> Self {
        let service = Service::start_config(dir, &crash_config(dir, git));
        Self {
            dir: dir.to_path_buf(),
            config: service.config.clone(),
            service: Some(service),
            launches: 1,
            deliveries: 0,
            acked: Vec::new(),
            errors: Vec::new(),
            rounds: 0,
            kills_before_done: 0,
            kills_after_done: 0,
            kills_at_snapshot: 0,
            workspaces_after_kills: 0,
        }
    }

    fn service(&self) -> &Service {
        self.service.as_ref().expect("service running")
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn next_delivery_id(&mut self) -> String {
        self.deliveries += 1;
        format!("{{c7a5b1e0-0000-4000-8000-{:012}}}", self.deliveries)
    }

    /// The log of every run so far (`Service::launch` truncates
    /// `hookvault.log`, so each run's log is appended here first).
    fn all_logs(&self) -> PathBuf {
        self.dir.join("hookvault-all.log")
    }

    fn archive_log(&self) {
        use std::io::Write as _;
        let log = std::fs::read_to_string(self.dir.join("hookvault.log")).unwrap_or_default();
        let mut all = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.all_logs())
            .expect("log archive");
        writeln!(all, "===== run {} =====\n{log}", self.launches).expect("archive log");
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("hookvault.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL the service (dropping a `Service` kills its child with
    /// SIGKILL and reaps it), note fetch workspaces the kill left, and start
    /// it again on the same config and data directory.
    fn kill_and_restart(&mut self) {
        drop(self.service.take());
        let left = workspaces_left(&self.data());
        if !left.is_empty() {
            eprintln!(
                "round {}: {} fetch workspaces left by the kill: {}",
                self.rounds,
                left.len(),
                abbreviated(&left)
            );
            self.workspaces_after_kills += left.len();
        }
        self.archive_log();
        self.launches += 1;
        self.service = Some(Service::launch(&self.dir, self.config.clone()));
    }

    fn record(&self, id: &str) -> serde_json::Value {
        let (status, record) = self.service().api(&format!("deliveries/{id}"));
        assert_eq!(status, 200, "delivery {id}: {record}");
        record
    }

    /// Wait (bounded) until the delivery has left the queue; it must be
    /// `done`. Errors it records on the way are collected.
    fn wait_done(&mut self, id: &str) -> Duration {
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        loop {
            let record = self.record(id);
            if let Some(error) = record["last_error"].as_str() {
                let line = format!("{id} (attempt {}): {error}", record["attempts"]);
                if !self.errors.contains(&line) {
                    eprintln!("error recorded: {line}");
                    self.errors.push(line);
                }
            }
            if record["status"] != "queued" {
                assert_eq!(
                    record["status"],
                    "done",
                    "delivery {id} ended {record}\nlog tail:\n{}",
                    self.log_tail(40)
                );
                return start.elapsed();
            }
            assert!(
                start.elapsed() < DELIVERY_DEADLINE,
                "delivery {id} not done after {DELIVERY_DEADLINE:?}: {record}\n\
                 fetch workspaces: {:?}\nlog tail:\n{}",
                workspaces_left(&self.data()),
                self.log_tail(40)
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Deliver a push and wait until it is done, without killing.
    fn deliver_and_wait(
        &mut self,
        repo: &str,
        body: &[u8],
        refs: BTreeMap<String, String>,
    ) -> Duration {
        let id = self.next_delivery_id();
        self.service().push(&id, body);
        let took = self.wait_done(&id);
        self.acked.push(Acked {
            id,
            repo: repo.to_string(),
            round: self.rounds,
            kill: None,
            refs,
        });
        took
    }

    /// Complete snapshot files in the vault.
    fn snapshot_files(&self) -> usize {
        files_named(&self.data().join("vault/snapshots"), is_hex64).len()
    }

    /// One round: deliver (`Service::push` asserts the 202, which means
    /// the delivery is durably queued), let the service work until the
    /// kill point, SIGKILL it and restart it; with `settle`, wait until the
    /// delivery is done before the next round changes anything.
    fn round(
        &mut self,
        repo: &str,
        body: &[u8],
        refs: BTreeMap<String, String>,
        kill: Kill,
        settle: bool,
    ) {
        self.rounds += 1;
        let id = self.next_delivery_id();
        let snapshots_before = self.snapshot_files();
        self.service().push(&id, body);
        match kill {
            Kill::AfterMs(ms) => {
                // This sleep is the experiment's variable, not a wait for a
                // condition: it chooses how far the work gets before the
                // kill.
                std::thread::sleep(Duration::from_millis(ms));
                // Racy by nature (the worker may finish a moment later);
                // used only to report where the kills landed.
                if self.record(&id)["status"] == "done" {
                    self.kills_after_done += 1;
                } else {
                    self.kills_before_done += 1;
                }
            }
            Kill::AtSnapshot => {
                let start = Instant::now();
                while self.snapshot_files() == snapshots_before {
                    assert!(
                        start.elapsed() < DELIVERY_DEADLINE,
                        "no snapshot of delivery {id} appeared\nlog tail:\n{}",
                        self.log_tail(40)
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                self.kills_at_snapshot += 1;
            }
        }
        self.kill_and_restart();
        if settle {
            self.wait_done(&id);
        }
        self.acked.push(Acked {
            id,
            repo: repo.to_string(),
            round: self.rounds,
            kill: Some(kill),
            refs,
        });
    }
}

/// How long an uninterrupted first backup of the corpus repository and an
/// uninterrupted one-commit push take on this machine and build, measured
/// in a vault of their own.
fn calibrate(tmp: &Path, server: &GitServer, template: &Path) -> (Duration, Duration) {
    let repo = "calibration/ripgrep";
    let upstream = serve_copy(template, &server.root, repo);
    let mut run = Experiment::start(&tmp.join("calibration"), server);
    let master = refs_of(&upstream)["refs/heads/master"].clone();
    let first = run.deliver_and_wait(
        repo,
        &branch_push(repo, "master", None, &master),
        refs_of(&upstream),
    );
    let mut pusher = Pusher::new(&tmp.join("calibration-work"), &upstream);
    let (old, new) = pusher.push();
    let push = run.deliver_and_wait(
        repo,
        &branch_push(repo, "master", Some(&old), &new),
        refs_of(&upstream),
    );
    run.service.take().expect("service").stop();
    (first, push)
}

/// Kill `hookvault serve` at many points of real backups; nothing
/// acknowledged is lost and nothing stored is broken.
#[test]
fn sigkill_at_any_point_loses_nothing_and_breaks_nothing() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("remote");
    std::fs::create_dir_all(&root).expect("mkdir");
    let server = GitServer::start(&root);
    let template = tmp.path().join("ripgrep-template.git");
    let template_str = template.to_str().expect("UTF-8 path");
    git(
        tmp.path(),
        &["clone", "-q", "--mirror", BUNDLE, template_str],
    );

    let (first_span, push_span) = calibrate(tmp.path(), &server, &template);
    eprintln!("uninterrupted: first backup {first_span:?}, one-commit push {push_span:?}");

    let mut run = Experiment::start(&tmp.path().join("hv"), &server);

    // First backups into an empty vault, one new repository per round,
    // without waiting in between, kill points growing: the first
    // repository's backup is killed again and again, later and later (each
    // copied batch is durable, so it gets further each time); once it is
    // in, the queued first backups of the other repositories find their
    // objects present and are killed in their fetch, walk, snapshot or
    // queue update.
    let mut points = kill_points(FIRST_BACKUP_ROUNDS, first_span, 0x9e37_79b9_7f4a_7c15);
    points.sort_unstable();
    eprintln!("first-backup kill points (ms): {points:?}");
    for (i, &kill_ms) in points.iter().enumerate() {
        let repo = match i {
            0 => PUSHED.to_string(),
            _ => format!("acme/ripgrep-{i:02}"),
        };
        let upstream = serve_copy(&template, &root, &repo);
        let refs = refs_of(&upstream);
        let body = branch_push(&repo, "master", None, &refs["refs/heads/master"]);
        run.round(&repo, &body, refs, Kill::AfterMs(kill_ms), false);
    }
    let first_ids: Vec<String> = run.acked.iter().map(|d| d.id.clone()).collect();
    for id in &first_ids {
        run.wait_done(id);
    }
    let first_attempts: Vec<u64> = first_ids
        .iter()
        .map(|id| run.record(id)["attempts"].as_u64().expect("attempts"))
        .collect();
    eprintln!("first backups: attempts per delivery {first_attempts:?}");
    let first_phase = started.elapsed();

    // One-commit pushes, each killed at its own point and done before the
    // next push, so that each snapshot's refs are known exactly; every
    // `SNAPSHOT_WINDOW_EVERY` rounds, one more killed right after its
    // snapshot is written.
    let upstream = root.join(format!("{PUSHED}.git"));
    let mut pusher = Pusher::new(&tmp.path().join("work"), &upstream);
    let points = kill_points(PUSH_ROUNDS, push_span, 0x2545_f491_4f6c_dd1d);
    eprintln!("push kill points (ms): {points:?}");
    for (i, &kill_ms) in points.iter().enumerate() {
        let mut kills = vec![Kill::AfterMs(kill_ms)];
        if (i + 1) % SNAPSHOT_WINDOW_EVERY == 0 {
            kills.push(Kill::AtSnapshot);
        }
        for kill in kills {
            let (old, new) = pusher.push();
            let body = branch_push(PUSHED, "master", Some(&old), &new);
            run.round(PUSHED, &body, refs_of(&upstream), kill, true);
        }
    }
    let crash_phase = started.elapsed();

    // Once more from a fresh start: everything acknowledged is done.
    run.kill_and_restart();
    let ids: Vec<String> = run.acked.iter().map(|d| d.id.clone()).collect();
    for id in &ids {
        run.wait_done(id);
    }
    let service = run.service();

    // Every repository's snapshots, through the read-only CLI.
    let mut snapshots: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for delivery in &run.acked {
        if snapshots.contains_key(&delivery.repo) {
            continue;
        }
        let out = service.cli(&["snapshots", "--repo", &delivery.repo, "--json"]);
        assert!(
            out.status.success(),
            "snapshots --repo {} failed: {}",
            delivery.repo,
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("snapshots JSON");
        snapshots.insert(delivery.repo.clone(), list);
    }

    // Each delivery made exactly one snapshot, holding the refs the remote
    // had, and its record names that snapshot.
    let mut lost_links = Vec::new();
    let mut to_restore: Vec<(String, String, BTreeMap<String, String>)> = Vec::new();
    for delivery in &run.acked {
        let record = run.record(&delivery.id);
        assert_eq!(record["status"], "done", "{record}");
        let made: Vec<&serde_json::Value> = snapshots[&delivery.repo]
            .iter()
            .filter(|s| s["delivery_id"] == delivery.id.as_str())
            .collect();
        assert_eq!(
            made.len(),
            1,
            "delivery {} (round {}, kill {:?}) made {} snapshots of {}",
            delivery.id,
            delivery.round,
            delivery.kill,
            made.len(),
            delivery.repo
        );
        let snapshot = made[0]["id"].as_str().expect("snapshot id").to_string();
        if record["snapshot"] != snapshot.as_str() {
            lost_links.push(format!(
                "delivery {} (round {}, kill {:?}, {} attempts) made snapshot {snapshot} but its record names {}",
                delivery.id, delivery.round, delivery.kill, record["attempts"], record["snapshot"]
            ));
        }
        let stored: BTreeMap<String, String> =
            serde_json::from_value(made[0]["refs"].clone()).expect("refs map");
        assert!(
            stored == delivery.refs,
            "snapshot {snapshot} of delivery {} does not hold the remote's refs",
            delivery.id
        );
        to_restore.push((delivery.repo.clone(), snapshot, delivery.refs.clone()));
    }

    // Chained, nothing extra, and the latest equals the remote now.
    for (repo, list) in &snapshots {
        let expected = run.acked.iter().filter(|d| &d.repo == repo).count();
        assert_eq!(list.len(), expected, "number of snapshots of {repo}");
        for (i, snapshot) in list.iter().enumerate() {
            assert_eq!(snapshot["seq"], i as u64 + 1, "seq of {}", snapshot["id"]);
            let parent = match i {
                0 => serde_json::Value::Null,
                _ => list[i - 1]["id"].clone(),
            };
            assert_eq!(snapshot["parent"], parent, "parent of {}", snapshot["id"]);
        }
        let latest: BTreeMap<String, String> =
            serde_json::from_value(list[list.len() - 1]["refs"].clone()).expect("refs map");
        assert!(
            latest == refs_of(&root.join(format!("{repo}.git"))),
            "the latest snapshot of {repo} differs from the remote"
        );
    }

    // Every snapshot restores, fsck-clean, with exactly its refs (two at a
    // time: this machine has two cores).
    let restore_start = Instant::now();
    let restored = tmp.path().join("restored");
    std::fs::create_dir_all(&restored).expect("mkdir");
    let config = service.config.clone();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((repo, id, refs)) = to_restore.get(i) else {
                        return;
                    };
                    let to = restored.join(format!("{i:03}"));
                    let out = restore(&config, repo, Some(id), &to);
                    assert!(
                        out.status.success(),
                        "restore of {repo} snapshot {id} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    assert_fsck_clean(&to);
                    assert!(
                        &refs_of(&to) == refs,
                        "{repo} snapshot {id} restored other refs"
                    );
                    std::fs::remove_dir_all(&to).expect("remove the restored copy");
                }
            });
        }
    });
    let restore_time = restore_start.elapsed();

    // Read commands work, and no file in the vault trips a reader.
    let out = service.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let (complete, leftovers) = check_vault_files(&run.data().join("vault"));
    let workspaces_now = workspaces_left(&run.data());

    eprintln!("---- crash summary ----");
    eprintln!(
        "rounds: {} ({FIRST_BACKUP_ROUNDS} first backups, {} one-commit pushes), {} runs of the service",
        run.rounds,
        run.rounds - FIRST_BACKUP_ROUNDS,
        run.launches
    );
    eprintln!(
        "kills: timed: {} before the round's delivery was done, {} after (status read just before the kill); {} the moment the snapshot file appeared",
        run.kills_before_done, run.kills_after_done, run.kills_at_snapshot
    );
    eprintln!(
        "deliveries: {} acknowledged, all done, {} not naming the snapshot they made; snapshots restored and fsck-clean: {}",
        run.acked.len(),
        lost_links.len(),
        to_restore.len()
    );
    eprintln!(
        "vault: {complete} complete files; {} temporaries left by kills (skipped by listings): {leftovers:?}",
        leftovers.len()
    );
    eprintln!(
        "vault stats: {} snapshots, {} git objects, {} data files, {} index files",
        stats["store"]["snapshots"],
        stats["store"]["git_objects"],
        stats["store"]["data_files"],
        stats["store"]["index_files"]
    );
    eprintln!(
        "fetch workspaces: {} seen right after kills, {} left now",
        run.workspaces_after_kills,
        workspaces_now.len()
    );
    eprintln!(
        "time: first backups {first_phase:?}, all rounds {crash_phase:?}, restores {restore_time:?}, total {:?}",
        started.elapsed()
    );

    assert!(
        run.errors.is_empty(),
        "attempts failed after kills (a crash must cost a retry, never an error):\n{}",
        run.errors.join("\n")
    );
    assert!(
        workspaces_now.is_empty(),
        "fetch workspaces left with no backup running: {workspaces_now:?}"
    );
    assert!(
        lost_links.is_empty(),
        "deliveries whose record does not name the snapshot they made:\n{}",
        lost_links.join("\n")
    );
    run.service.take().expect("service").stop();
}
