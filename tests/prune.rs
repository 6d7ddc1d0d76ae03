//! `forget` and `prune` through the real binary on a real history (a
//! branch force-pushed away, a tag, a deleted branch, a binary file): every
//! kept snapshot restores `git fsck --strict` clean with its refs after the
//! prune, the space of what only forgotten snapshots reached comes back,
//! neither runs beside `serve`, and a SIGKILL at each step of a prune
//! leaves a vault that verifies and restores.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::*;

const REPO: &str = "acme-eng/prune-me";

fn dir_bytes(dir: &std::path::Path) -> u64 {
    files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Every kept snapshot restores clean, with the refs it recorded.
fn assert_kept_restore(
    config: &std::path::Path,
    kept: &[(String, serde_json::Value)],
    to: &std::path::Path,
) {
    std::fs::create_dir_all(to).expect("mkdir");
    for (id, refs) in kept {
        let out_dir = to.join(&id[..12]);
        let out = restore(config, REPO, Some(id), &out_dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_fsck_clean(&out_dir);
        let got = refs_of(&out_dir);
        let want: std::collections::BTreeMap<String, String> = refs
            .as_object()
            .expect("refs")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("oid").to_string()))
            .collect();
        assert_eq!(got, want, "snapshot {id}");
        std::fs::remove_dir_all(&out_dir).expect("clean");
    }
}

#[test]
fn forget_and_prune_keep_what_is_kept_and_survive_kills() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let mut n = 0u32;
    let mut deliver = |service: &Service, body: Vec<u8>| {
        n += 1;
        let id = format!("{{44444444-aaaa-4bbb-8ccc-{n:012}}}");
        service.push(&id, &body);
        assert_eq!(service.outcome(&id)["status"], "done", "{}", service.log());
    };
    let main1 = work.commit("README.md", "hello\n", "Start");
    work.git(&["push", "-q", "origin", "main"]);
    deliver(&service, branch_push(REPO, "main", None, &main1));
    // A branch with large unique content, force-pushed away twice.
    let mut previous: Option<String> = None;
    for round in 0..3u32 {
        work.git(&["checkout", "-q", "-B", "experiment", &main1]);
        let noise: String = (0..3000)
            .map(|i| format!("{round}:{i}:{}\n", (i * 7919 + round * 104_729) % 1_000_003))
            .collect();
        std::fs::write(
            work.dir.join("blob.bin"),
            [noise.as_bytes(), &[0u8, 1, 2, 255]].concat(),
        )
        .expect("write");
        work.git(&["add", "blob.bin"]);
        work.git(&["commit", "-q", "-m", &format!("Experiment {round}")]);
        let tip = work.head();
        work.git(&["push", "-q", "-f", "origin", "experiment"]);
        deliver(
            &service,
            cloud_push(
                REPO,
                &[Change {
                    branch: "experiment",
                    kind: "branch",
                    old: previous.as_deref(),
                    new: Some(&tip),
                    forced: previous.is_some(),
                }],
            ),
        );
        previous = Some(tip);
    }
    // The experiment is deleted; main moves on and is tagged.
    work.git(&["push", "-q", "origin", "--delete", "experiment"]);
    deliver(
        &service,
        cloud_push(
            REPO,
            &[Change {
                branch: "experiment",
                kind: "branch",
                old: previous.as_deref(),
                new: None,
                forced: false,
            }],
        ),
    );
    work.git(&["checkout", "-q", "main"]);
    let main2 = work.commit("src/lib.rs", "pub fn f() {}\n", "Code");
    work.git(&["tag", "-a", "v1", "-m", "v1"]);
    work.git(&["push", "-q", "origin", "main", "v1"]);
    deliver(&service, branch_push(REPO, "main", Some(&main1), &main2));
    let main3 = work.commit("src/lib.rs", "pub fn f() { g() }\n", "More");
    work.git(&["push", "-q", "origin", "main"]);
    deliver(&service, branch_push(REPO, "main", Some(&main2), &main3));

    // Neither runs beside `serve`.
    for args in [&["prune"][..], &["forget", "--keep-last", "1"][..]] {
        let out = service.cli(args);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("stop `hookvault serve`"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snapshots = service.snapshots(REPO);
    assert_eq!(snapshots.len(), 7);
    let config_text = std::fs::read_to_string(&service.config).expect("config");
    let store = service.dir.join("data");
    service.stop();
    let config = tmp.path().join("hv/hookvault.toml");

    // No policy: refused. Dry run: nothing changes.
    assert!(!run(&config, &["forget"]).status.success());
    let before = files(&store.join("vault"));
    let dry = run(
        &config,
        &["forget", "--keep-last", "2", "--dry-run", "--json"],
    );
    assert!(dry.status.success());
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(dry["forgotten"], 5, "{dry}");
    assert_eq!(files(&store.join("vault")), before);

    let out = run(&config, &["forget", "--keep-last", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = run(&config, &["snapshots", "--repo", REPO, "--json"]);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("json");
    let kept: Vec<(String, serde_json::Value)> = listed
        .iter()
        .map(|s| (s["id"].as_str().expect("id").to_string(), s["refs"].clone()))
        .collect();
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[1].0, snapshots[6]["id"].as_str().expect("id"));
    let (ok, report) = verify(&config, &[]);
    assert!(ok, "forgotten snapshots are not a broken chain: {report}");

    let dry = run(&config, &["prune", "--dry-run", "--json"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    let after_forget = files(&store.join("vault"));
    let reclaim = dry["report"]["bytes_reclaimed"].as_u64().expect("bytes");
    // Exactly what the kept snapshots reach stays: no record is kept only
    // as a delta base. Here main's later commits were stored as deltas
    // against the experiments' commits, so those are written again whole.
    assert!(reclaim > 0, "something goes: {dry}");
    assert_eq!(
        dry["report"]["records_kept"], dry["live"]["records"],
        "{dry}"
    );
    assert!(
        dry["report"]["records_reencoded"].as_u64().expect("n") > 0,
        "{dry}"
    );

    // A kill after each step of a prune, each on a fresh copy; then the
    // same for a prune that also recompresses every record.
    for (how, args) in [
        ("plain", &["prune"][..]),
        ("recompressing", &["prune", "--recompress-level", "19"][..]),
    ] {
        for step in 1.. {
            let copy = case(
                tmp.path(),
                &format!("kill-{how}-{step}"),
                &config_text,
                &store,
            );
            let mut child = Command::new(env!("CARGO_BIN_EXE_hookvault"))
                .arg("--config")
                .arg(&copy.config)
                .args(args)
                .env("RUST_LOG", "hookvault=debug")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("prune");
            let stderr = child.stderr.take().expect("stderr");
            let mut seen = 0;
            let mut lines = BufReader::new(stderr).lines();
            let mut finished = true;
            while let Some(Ok(line)) = lines.next() {
                if line.contains("prune: ") {
                    seen += 1;
                    if seen == step {
                        child.kill().expect("SIGKILL");
                        finished = false;
                        break;
                    }
                }
            }
            let status = child.wait().expect("wait");
            if finished {
                assert!(status.success(), "{how} prune after step {step}");
                assert!(step > 5, "a {how} prune has more than {} steps", step - 1);
                break;
            }
            // Every snapshot is whole and every indexed record reads back: the
            // old index files are the index until the new one exists, and are
            // superseded by it after (module comment of vault::prune).
            let (ok, report) = verify(&copy.config, &["--read-data"]);
            assert!(ok, "after a kill of a {how} prune at step {step}: {report}");
            assert_kept_restore(&copy.config, &kept, &tmp.path().join("restored"));
            // Finishing it leaves no waste.
            let again = run(&copy.config, &[args, &["--json"][..]].concat());
            assert!(
                again.status.success(),
                "{}",
                String::from_utf8_lossy(&again.stderr)
            );
            let (ok, report) = verify(&copy.config, &["--read-data"]);
            assert!(
                ok && report["warnings"].as_array().expect("w").is_empty(),
                "{report}"
            );
            std::fs::remove_dir_all(copy.vault.parent().expect("store").parent().expect("case"))
                .expect("clean");
        }
    }

    // The prune itself, then what it kept, and what it reclaimed.
    let size_before = dir_bytes(&store.join("vault/data"));
    assert_eq!(
        files(&store.join("vault")),
        after_forget,
        "dry run changed nothing"
    );
    let out = run(&config, &["prune", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size_after = dir_bytes(&store.join("vault/data"));
    assert!(
        size_before - size_after >= reclaim,
        "{size_before} -> {size_after}, promised {reclaim}"
    );
    let (ok, report) = verify(&config, &["--read-data"]);
    assert!(
        ok && report["warnings"].as_array().expect("w").is_empty(),
        "{report}"
    );
    assert_kept_restore(&config, &kept, &tmp.path().join("restored"));
    let stats = run(&config, &["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats");
    assert_eq!(stats["store"]["records"], dry["live"]["records"], "{stats}");
    // Each experiment's blob is gone with the snapshots that reached it.
    let again = run(&config, &["prune", "--dry-run", "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).expect("json");
    assert_eq!(again["report"]["bytes_reclaimed"], 0, "{again}");

    // A pruned commit pushed again is stored again, not assumed present.
    let service = Service::launch(&tmp.path().join("hv"), config.clone());
    let old_tip = previous.expect("experiment tip");
    work.git(&[
        "push",
        "-q",
        "origin",
        &format!("{old_tip}:refs/heads/experiment"),
    ]);
    let id = "{44444444-aaaa-4bbb-8ccc-999999999999}";
    service.push(id, &branch_push(REPO, "experiment", None, &old_tip));
    assert_eq!(service.outcome(id)["status"], "done", "{}", service.log());
    let restored = tmp.path().join("back");
    let out = restore(&config, REPO, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);
    assert_eq!(refs_of(&restored)["refs/heads/experiment"], old_tip);
    service.stop();
}

/// With `[retention]` in the config, `serve` forgets, prunes and
/// recompresses on its own while pushes keep arriving: every push is backed
/// up, the policy holds when the pushes stop, and nothing is left to
/// forget, reclaim or recompress.
#[test]
fn serve_forgets_and_prunes_on_its_schedule_while_backups_go_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    let service = Service::start(
        &tmp.path().join("hv"),
        &server,
        "[retention]\nkeep_last = 2\ninterval_secs = 1\nrecompress_level = 19\n",
    );
    let mut n = 0u32;
    let mut deliver = |body: Vec<u8>| {
        n += 1;
        let id = format!("{{55555555-aaaa-4bbb-8ccc-{n:012}}}");
        service.push(&id, &body);
        assert_eq!(service.outcome(&id)["status"], "done", "{}", service.log());
    };
    let base = work.commit("README.md", "hello\n", "Start");
    work.git(&["push", "-q", "origin", "main"]);
    deliver(branch_push(REPO, "main", None, &base));
    let mut tip = base.clone();
    for round in 0..4u32 {
        // A branch with content of its own, pushed and deleted again.
        work.git(&["checkout", "-q", "-B", "scratch", &tip]);
        let noise: String = (0..2000)
            .map(|i| format!("{round}:{i}:{}\n", (i * 7919 + round * 104_729) % 1_000_003))
            .collect();
        let scratch = work.commit("scratch.txt", &noise, &format!("Scratch {round}"));
        work.git(&["push", "-q", "-f", "origin", "scratch"]);
        deliver(branch_push(REPO, "scratch", None, &scratch));
        work.git(&["push", "-q", "origin", "--delete", "scratch"]);
        deliver(cloud_push(
            REPO,
            &[Change {
                branch: "scratch",
                kind: "branch",
                old: Some(&scratch),
                new: None,
                forced: false,
            }],
        ));
        work.git(&["checkout", "-q", "main"]);
        let next = work.commit(
            "src/lib.rs",
            &format!("pub fn f() -> u32 {{ {round} }}\n"),
            "More",
        );
        work.git(&["push", "-q", "origin", "main"]);
        deliver(branch_push(REPO, "main", Some(&tip), &next));
        tip = next;
    }
    let kept = wait_until(
        "the policy applied",
        std::time::Duration::from_secs(60),
        || {
            let listed = service.snapshots(REPO);
            (listed.len() == 2).then_some(listed)
        },
    );
    assert_eq!(kept[1]["refs"]["refs/heads/main"], tip.as_str());
    assert!(
        service.log().contains("retention run done"),
        "{}",
        service.log()
    );
    let config = service.config.clone();
    // A run in progress finishes before serve exits.
    service.stop();

    let dry = run(&config, &["forget", "--dry-run", "--json"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(
        dry["forgotten"], 0,
        "the config's policy, already applied: {dry}"
    );
    let dry = run(
        &config,
        &["prune", "--dry-run", "--recompress-level", "19", "--json"],
    );
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("json");
    assert_eq!(dry["report"]["bytes_reclaimed"], 0, "{dry}");
    assert_eq!(dry["report"]["records_recompressed"], 0, "{dry}");
    assert!(
        service_log_says_recompressed(&tmp.path().join("hv/hookvault.log")),
        "no run recompressed anything"
    );
    // Every data file left is marked as recompressed at level 19.
    let mut data_files = 0;
    for dir in std::fs::read_dir(tmp.path().join("hv/data/vault/data")).expect("data dir") {
        for file in std::fs::read_dir(dir.expect("entry").path()).expect("fan-out dir") {
            let bytes = std::fs::read(file.expect("entry").path()).expect("data file");
            assert_eq!(&bytes[..6], b"HVDATA");
            assert_eq!(bytes[6], 19, "a data file not recompressed");
            data_files += 1;
        }
    }
    assert!(data_files > 0);
    assert_eq!(
        dry["report"]["records_before"], dry["live"]["records"],
        "{dry}"
    );
    let (ok, report) = verify(&config, &["--read-data"]);
    assert!(
        ok && report["warnings"].as_array().expect("w").is_empty(),
        "{report}"
    );
    let kept: Vec<(String, serde_json::Value)> = kept
        .iter()
        .map(|s| (s["id"].as_str().expect("id").to_string(), s["refs"].clone()))
        .collect();
    assert_kept_restore(&config, &kept, &tmp.path().join("restored"));
}

/// Whether a retention run logged recompressing at least one record.
fn service_log_says_recompressed(log: &std::path::Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("retention run done"))
        .any(|l| {
            l.split("records_recompressed")
                .nth(1)
                .and_then(|rest| {
                    rest.trim_start_matches(|c: char| !c.is_ascii_digit())
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .is_some_and(|n| n > 0)
        })
}
