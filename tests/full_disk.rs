//! A full disk, end to end: the service's store (`store.path`: vault, queue,
//! mirror cache) lives on a small tmpfs; after a first snapshot the disk is
//! filled. While it is full, a push is not lost (its webhook is answered 503
//! or its backup waits), the error names the path, earlier snapshots list
//! and restore, and the process neither grows nor spins. When space
//! returns, the same process records and backs up again by itself.
//!
//! Mounting a tmpfs needs root or CAP_SYS_ADMIN; without it the test fails
//! unless `HOOKVAULT_SKIP_TMPFS=1` is set.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hookvault::bitbucket::signature::sign;
use support::*;

const REPO: &str = "acme-eng/ledger";

/// A tmpfs mounted for the test, unmounted on drop (also on panic).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (as `mount -o size=` takes it) on `path`.
    /// `None` when the mount is refused and `HOOKVAULT_SKIP_TMPFS=1` is set.
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output();
        let failure = match out {
            Ok(out) if out.status.success() => {
                return Some(Self {
                    path: path.to_path_buf(),
                });
            }
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        if std::env::var("HOOKVAULT_SKIP_TMPFS").as_deref() == Ok("1") {
            eprintln!(
                "full_disk: skipped (HOOKVAULT_SKIP_TMPFS=1): cannot mount a tmpfs on {}: {failure}",
                path.display()
            );
            return None;
        }
        panic!(
            "full_disk needs root or CAP_SYS_ADMIN to mount a {size} tmpfs on {}: {failure}\n\
             (set HOOKVAULT_SKIP_TMPFS=1 to skip this test)",
            path.display()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a child not yet reaped): detach it lazily.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Fill the file system holding `path` with one file, until ENOSPC.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("ballast file");
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        match file.write(&chunk) {
            Ok(n) if n > 0 => {}
            Err(e) if e.raw_os_error() != Some(28) => panic!("filling {}: {e}", path.display()),
            _ => return,
        }
    }
}

/// A field of `/proc/<pid>/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

fn deliver_push(service: &Service, delivery: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let signature = sign(SECRET.as_bytes(), body);
    service.deliver("repo:push", delivery, body, Some(&signature))
}

/// `GET path`: its status and body.
fn get(service: &Service, path: &str) -> (u16, String) {
    let response = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
        .get(format!("http://{}{path}", service.addr))
        .send()
        .expect("GET");
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

/// `.tmp` files under `dir` (a writer's leftovers).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "tmp") {
                out.push(path);
            }
        }
    }
    out
}

/// Whether a log line quotes the OS's no-space error and names a path
/// in the store.
fn names_full_disk(log: &str, store: &Path) -> bool {
    let store = store.display().to_string();
    log.lines()
        .any(|l| l.contains("No space left on device") && l.contains(&store))
}

#[test]
fn full_disk_answers_503_keeps_snapshots_readable_and_recovers_without_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hv = tmp.path().join("hv");
    let store = hv.join("data");
    // Config and log stay outside the tmpfs, as on a real host.
    let Some(_tmpfs) = Tmpfs::mount(&store, "20m") else {
        return;
    };
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    work.commit("README.md", "ledger\n", "Initial commit");
    let head1 = work.commit("src/lib.rs", "pub fn post() {}\n", "Post entries");
    work.git(&["push", "-q", "origin", "main"]);
    let refs1 = refs_of(&upstream);

    // Two attempts only: a backup failing for lack of space must not use
    // them up (it is retried, uncounted, until space returns).
    let service = Service::start_config(&hv, &config_text(&store, &server, 2, 100, ""));
    let pid = service.pid().expect("pid");
    service.push("d-before", &branch_push(REPO, "main", None, &head1));
    let first = service.outcome("d-before");
    assert_eq!(first["status"], "done", "{first}\n{}", service.log());
    assert_eq!(get(&service, "/readyz"), (200, "ready\n".to_string()));
    let snap1 = first["snapshot"].as_str().expect("snapshot id").to_string();

    let head2 = work.commit("src/lib.rs", "pub fn post() { check() }\n", "Check entries");
    work.git(&["push", "-q", "origin", "main"]);
    let refs2 = refs_of(&upstream);
    let body2 = branch_push(REPO, "main", Some(&head1), &head2);

    // Fill the disk, then push.
    let ballast = store.join("ballast");
    fill(&ballast);
    let full_since = Instant::now();
    let ticks_before = cpu_ticks(pid);
    let (status, reply) = deliver_push(&service, "d-full", &body2);
    assert!(
        status == 202 || status == 503,
        "a push on a full disk is recorded (202) or refused for a retry (503): {status} {reply}\n{}",
        service.log()
    );

    // Whatever was recorded, the queue or the backup runs into the full
    // disk; the log says so and names the path.
    wait_until(
        "a no-space error naming the path",
        Duration::from_secs(60),
        || names_full_disk(&service.log(), &store).then_some(()),
    );
    // A fresh queue's log still has to grow, so the queue cannot write:
    // deliveries (and redeliveries of recorded ones) are answered 503.
    wait_until(
        "a 503 while the disk is full",
        Duration::from_secs(60),
        || {
            let (status, reply) = deliver_push(&service, "d-full", &body2);
            assert!(
                [200, 202, 503].contains(&status),
                "{status} {reply}\n{}",
                service.log()
            );
            (status == 503).then_some(())
        },
    );
    // Not ready while the queue cannot record, though still alive.
    wait_until("/readyz to answer 503", Duration::from_secs(60), || {
        let (status, body) = get(&service, "/readyz");
        (status == 503).then_some(body)
    });
    let (status, body) = get(&service, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: the delivery queue cannot record deliveries\n"
        ),
        "{}",
        service.log()
    );
    assert_eq!(get(&service, "/healthz"), (200, "ok\n".to_string()));

    // Earlier snapshots list and restore while the disk is full.
    let out = service.cli(&["snapshots", "--repo", REPO, "--json"]);
    assert!(
        out.status.success(),
        "snapshots on a full disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], snap1.as_str());
    let restored1 = tmp.path().join("restore-1");
    let out = restore(&service.config, REPO, Some(&snap1), &restored1);
    assert!(
        out.status.success(),
        "restore on a full disk: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored1);
    assert_eq!(refs_of(&restored1), refs1);

    // The service keeps trying by itself (the worker once a second)
    // without spinning or growing. CPU use is a rate, so it is measured
    // over a fixed window of at least a few of those retries.
    let window = Duration::from_secs(3);
    if let Some(rest) = window.checked_sub(full_since.elapsed()) {
        std::thread::sleep(rest);
    }
    let rss_kb = status_kb(pid, "VmRSS:");
    assert!(rss_kb < 500 << 10, "VmRSS {rss_kb} kB on a full disk");
    let cpu = Duration::from_millis((cpu_ticks(pid) - ticks_before) * 1000 / clock_ticks());
    let wall = full_since.elapsed();
    assert!(
        cpu < wall / 2,
        "hookvault used {cpu:?} of CPU in {wall:?} on a full disk"
    );

    // Space returns: the same process records and backs up again.
    std::fs::remove_file(&ballast).expect("remove ballast");
    wait_until(
        "the full-disk delivery to be accepted",
        Duration::from_secs(60),
        || {
            let (status, _) = deliver_push(&service, "d-full", &body2);
            (status == 200 || status == 202).then_some(())
        },
    );
    // Ready again once the queue records.
    wait_until("/readyz to answer 200", Duration::from_secs(60), || {
        (get(&service, "/readyz").0 == 200).then_some(())
    });
    let second = service.outcome("d-full");
    assert_eq!(second["status"], "done", "{second}\n{}", service.log());
    let snap2 = second["snapshot"]
        .as_str()
        .expect("snapshot id")
        .to_string();

    let head3 = work.commit("CHANGELOG.md", "0.2: checks\n", "Changelog");
    work.git(&["push", "-q", "origin", "main"]);
    service.push("d-after", &branch_push(REPO, "main", Some(&head2), &head3));
    let third = service.outcome("d-after");
    assert_eq!(third["status"], "done", "{third}\n{}", service.log());
    let snapshots: Vec<_> = service
        .snapshots(REPO)
        .iter()
        .map(|s| s["delivery_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(snapshots, ["d-before", "d-full", "d-after"]);

    let restored2 = tmp.path().join("restore-2");
    let out = restore(&service.config, REPO, Some(&snap2), &restored2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored2);
    assert_eq!(refs_of(&restored2), refs2);
    let restored3 = tmp.path().join("restore-3");
    let out = restore(&service.config, REPO, None, &restored3);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored3);
    assert_eq!(refs_of(&restored3), refs_of(&upstream));
    assert_eq!(temporaries(&store.join("vault")), Vec::<PathBuf>::new());

    // Full again. The queue's database now has room of its own, so a push
    // is usually recorded and its backup fails and waits for a retry; a
    // SIGTERM then still stops the service promptly and cleanly.
    fill(&ballast);
    let head4 = work.commit("CHANGELOG.md", "0.3\n", "Changelog 0.3");
    work.git(&["push", "-q", "origin", "main"]);
    let body4 = branch_push(REPO, "main", Some(&head3), &head4);
    let (status, reply) = deliver_push(&service, "d-full-again", &body4);
    match status {
        202 => {
            eprintln!(
                "full_disk: d-full-again recorded on the full disk; its backup waits for space"
            );
            // More failures than `max_attempts`, and still queued.
            let uncounted = "no space left; will retry without counting an attempt";
            wait_until(
                "three backups of d-full-again to fail for lack of space",
                Duration::from_secs(60),
                || {
                    let log = service.log();
                    let failures = log
                        .lines()
                        .filter(|l| l.contains("d-full-again") && l.contains(uncounted))
                        .count();
                    (failures >= 3).then_some(())
                },
            );
            let (code, record) = service.api("deliveries/d-full-again");
            assert_eq!(code, 200, "{record}");
            assert_eq!(record["status"], "queued", "{record}");
            assert!(
                record["attempts"].as_u64().unwrap_or(u64::MAX) < 2,
                "{record}"
            );
            // Space returns: it is backed up without a redelivery.
            std::fs::remove_file(&ballast).expect("remove the ballast");
            let done = service.outcome("d-full-again");
            assert_eq!(done["status"], "done", "{done}\n{}", service.log());
            fill(&ballast);
        }
        503 => eprintln!("full_disk: d-full-again refused with 503 on the full disk"),
        _ => panic!("{status} {reply}\n{}", service.log()),
    }
    service.stop_within(Duration::from_secs(10));
}
