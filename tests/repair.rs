//! `hookvault repair objects` through the real binary: a flipped byte in
//! a data file, and a lost index file, are repaired from the source (a
//! smart-HTTP git server), after which `verify --read-data` is clean and
//! every snapshot restores `git fsck --strict` clean; damage to history the
//! source no longer has is reported as lost, exit 1, and the snapshots
//! that do not reach it still restore.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use support::*;

const REPO: &str = "acme-eng/repair-me";

fn data_files(vault: &Path) -> BTreeSet<PathBuf> {
    files(&vault.join("data")).into_iter().collect()
}

/// The largest of the files in `after` but not `before`: a backup writes
/// its objects' data file and a far smaller one for its ref chunk.
fn largest_new(before: &BTreeSet<PathBuf>, after: BTreeSet<PathBuf>) -> PathBuf {
    after
        .difference(before)
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .cloned()
        .expect("a new file")
}

fn flip_middle(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(file, &bytes).expect("write");
}

fn repair(config: &Path) -> (Option<i32>, serde_json::Value) {
    let out = run(config, &["repair", "objects", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "repair report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn assert_restores(config: &Path, snapshot: &str, to: &Path) {
    let out = restore(config, REPO, Some(snapshot), to);
    assert!(
        out.status.success(),
        "{snapshot}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(to);
    std::fs::remove_dir_all(to).expect("clean");
}

#[test]
fn repair_stores_again_what_the_source_has_and_names_what_it_lost() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let vault = service.dir.join("data/vault");
    let mut n = 0u32;
    let mut deliver = |body: Vec<u8>| {
        n += 1;
        let id = format!("{{66666666-aaaa-4bbb-8ccc-{n:012}}}");
        service.push(&id, &body);
        assert_eq!(service.outcome(&id)["status"], "done", "{}", service.log());
    };
    let text = |v: u32| -> String {
        (0..600)
            .map(|i| format!("line {i} of version {v}\n"))
            .collect()
    };
    let c1 = work.commit("src/big.txt", &text(1), "One");
    work.git(&["push", "-q", "origin", "main"]);
    deliver(branch_push(REPO, "main", None, &c1));
    // A branch of its own, later deleted and collected at the source.
    let before = data_files(&vault);
    work.git(&["checkout", "-q", "-b", "gone"]);
    let noise: String = (0..3000)
        .map(|i| format!("{i}:{}\n", (i * 7919) % 1_000_003))
        .collect();
    let g = work.commit("gone.txt", &noise, "Gone");
    work.git(&["push", "-q", "origin", "gone"]);
    deliver(branch_push(REPO, "gone", None, &g));
    let gone_data = largest_new(&before, data_files(&vault));
    work.git(&["checkout", "-q", "main"]);
    work.git(&["push", "-q", "origin", "--delete", "gone"]);
    deliver(cloud_push(
        REPO,
        &[Change {
            branch: "gone",
            kind: "branch",
            old: Some(&g),
            new: None,
            forced: false,
        }],
    ));
    let before = data_files(&vault);
    let index_before: BTreeSet<PathBuf> = files(&vault.join("index")).into_iter().collect();
    let c2 = work.commit("src/big.txt", &text(2), "Two");
    work.git(&["push", "-q", "origin", "main"]);
    deliver(branch_push(REPO, "main", Some(&c1), &c2));
    let last_data = largest_new(&before, data_files(&vault));
    let last_index = largest_new(
        &index_before,
        files(&vault.join("index")).into_iter().collect(),
    );
    let snapshots: Vec<String> = service
        .snapshots(REPO)
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(snapshots.len(), 4);
    let config_text = std::fs::read_to_string(&service.config).expect("config");
    let store = service.dir.join("data");
    let config = service.config.clone();
    // Refused beside serve, like every command that writes.
    let out = service.cli(&["repair", "objects"]);
    assert!(!out.status.success());
    service.stop();
    git(&upstream, &["reflog", "expire", "--expire=now", "--all"]);
    git(&upstream, &["gc", "-q", "--prune=now"]);
    let restored = tmp.path().join("restored");

    // Nothing damaged: nothing to do.
    let (code, report) = repair(&config);
    assert_eq!(
        (code, report["damaged"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );

    // A flipped byte in the last push's data file, and (in another copy)
    // that data file's index file gone: both repaired from the source.
    let relative = |p: &Path| p.strip_prefix(&vault).expect("in vault").to_path_buf();
    for damage in ["flipped", "no-index"] {
        let copy = case(tmp.path(), damage, &config_text, &store);
        let target = copy.vault.join(relative(&last_data));
        if damage == "flipped" {
            flip_middle(&target);
        } else {
            std::fs::remove_file(copy.vault.join(relative(&last_index))).expect("remove");
        }
        let (ok, found) = verify(&copy.config, &["--read-data"]);
        assert!(!ok, "{damage}: {found}");
        let (code, report) = repair(&copy.config);
        assert_eq!(code, Some(0), "{damage}: {report}");
        assert!(
            report["damaged"].as_u64().expect("n") > 0,
            "{damage}: {report}"
        );
        assert_eq!(
            report["repaired"].as_array().expect("list").len() as u64,
            report["damaged"].as_u64().expect("n"),
            "{damage}: {report}"
        );
        assert_eq!(report["fetched"][0], REPO);
        let (ok, after) = verify(&copy.config, &["--read-data"]);
        assert!(ok, "{damage}: after repair: {after}");
        for id in &snapshots {
            assert_restores(&copy.config, id, &restored);
        }
        let (code, again) = repair(&copy.config);
        assert_eq!(
            (code, again["damaged"].as_u64()),
            (Some(0), Some(0)),
            "{damage}: {again}"
        );
    }

    // Damage `verify` found is repaired by `serve` after the repository's
    // next backup.
    let copy = case(tmp.path(), "by-serve", &config_text, &store);
    flip_middle(&copy.vault.join(relative(&last_data)));
    let (ok, found) = verify(&copy.config, &["--read-data"]);
    assert!(!ok, "{found}");
    let note = copy.vault.parent().expect("store").join("damaged.json");
    let noted = std::fs::read_to_string(&note).expect("verify notes the repository");
    assert!(noted.contains(REPO), "{noted}");
    let service = Service::launch(&tmp.path().join("by-serve"), copy.config.clone());
    let c3 = work.commit("src/other.rs", "fn g() {}\n", "Three");
    work.git(&["push", "-q", "origin", "main"]);
    let id = "{66666666-aaaa-4bbb-8ccc-999999999999}";
    service.push(id, &branch_push(REPO, "main", Some(&c2), &c3));
    assert_eq!(service.outcome(id)["status"], "done", "{}", service.log());
    wait_until(
        "the repair after the backup",
        std::time::Duration::from_secs(60),
        || (!note.exists()).then_some(()),
    );
    assert!(
        service.log().contains("was repaired from the source"),
        "{}",
        service.log()
    );
    service.stop();
    let (ok, after) = verify(&copy.config, &["--read-data"]);
    assert!(ok, "after serve's repair: {after}");
    for id in &snapshots {
        assert_restores(&copy.config, id, &restored);
    }

    // Damage to what only the deleted, collected branch held: lost.
    let copy = case(tmp.path(), "lost", &config_text, &store);
    flip_middle(&copy.vault.join(relative(&gone_data)));
    let (ok, found) = verify(&copy.config, &["--read-data"]);
    assert!(!ok, "{found}");
    let (code, report) = repair(&copy.config);
    assert_eq!(code, Some(1), "{report}");
    let lost = report["lost"].as_array().expect("lost");
    assert!(!lost.is_empty(), "{report}");
    assert!(
        lost[0]["why"]
            .as_str()
            .expect("why")
            .contains("not in the source"),
        "{report}"
    );
    // The snapshots that never reached the branch still restore.
    assert_restores(&copy.config, &snapshots[0], &restored);
    assert_restores(&copy.config, &snapshots[3], &restored);
}
