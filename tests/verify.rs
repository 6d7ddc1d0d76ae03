//! `hookvault verify` through the real binary: clean beside a running
//! `serve`, then on copies of the vault with one kind of damage each: a
//! flipped byte in a data file, a truncated data file, a missing index
//! file, a deleted snapshot file and a damaged one. Each is found and named,
//! and what is undamaged stays readable.

mod support;

use std::path::Path;

use support::*;

const REPO: &str = "acme-eng/verify-me";

fn kinds(report: &serde_json::Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p["kind"].as_str().expect("kind").to_string())
        .collect()
}

#[test]
fn verify_finds_and_names_each_kind_of_damage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let mut tips = Vec::new();
    for n in 1..=3u32 {
        let text: String = (0..400)
            .map(|i| format!("line {i} of version {n}\n"))
            .collect();
        work.commit("src/big.txt", &text, &format!("Version {n}"));
        let tip = work.commit(&format!("src/file{n}.rs"), "fn f() {}\n", "More");
        work.git(&["push", "-q", "origin", "main"]);
        let id = format!("{{33333333-aaaa-4bbb-8ccc-00000000000{n}}}");
        service.push(
            &id,
            &branch_push(REPO, "main", tips.last().map(String::as_str), &tip),
        );
        assert_eq!(service.outcome(&id)["status"], "done", "{}", service.log());
        tips.push(tip);
    }

    // Long commands draw a progress bar on a terminal (stderr), and never
    // into a pipe. `script` gives the command a terminal.
    let restored = tmp.path().join("progress");
    let command = format!(
        "{} --config {} restore --repo {REPO} --to {}",
        env!("CARGO_BIN_EXE_hookvault"),
        service.config.display(),
        restored.display()
    );
    let on_tty = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script");
    let shown = String::from_utf8_lossy(&on_tty.stdout);
    assert!(on_tty.status.success(), "{shown}");
    assert!(shown.contains("writing objects"), "{shown:?}");
    std::fs::remove_dir_all(&restored).expect("clean");
    let piped = restore(&service.config, REPO, None, &restored);
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(!stderr.contains("writing objects"), "{stderr:?}");
    assert_fsck_clean(&restored);

    // Clean, beside the running service, with and without --read-data.
    for extra in [
        &[][..],
        &["--read-data"][..],
        &["--read-data", "--repo", REPO][..],
    ] {
        let (ok, report) = verify(&service.config, extra);
        assert!(ok, "{extra:?}: {report}");
        assert_eq!(report["snapshots"], 3);
        assert!(report["problems"].as_array().expect("problems").is_empty());
        assert!(
            report["objects"].as_u64().expect("objects") >= 12,
            "{report}"
        );
    }
    let (_, full) = verify(&service.config, &["--read-data"]);
    let (_, shallow) = verify(&service.config, &[]);
    assert!(
        full["records_read"].as_u64() > shallow["records_read"].as_u64(),
        "--read-data reads the blobs too: {full} vs {shallow}"
    );
    let human = run(&service.config, &["verify"]);
    assert!(human.status.success());
    assert!(String::from_utf8_lossy(&human.stdout).contains("3 snapshots (0 damaged)"));
    let snapshots: Vec<String> = service
        .snapshots(REPO)
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    let config_text = std::fs::read_to_string(&service.config).expect("config");
    let store = service.dir.join("data");
    service.stop();

    let data_files = |vault: &Path| files(&vault.join("data"));
    let largest = |vault: &Path| {
        data_files(vault)
            .into_iter()
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("a data file")
    };

    // A flipped byte in the middle of the largest data file.
    let flipped = case(tmp.path(), "flipped", &config_text, &store);
    let file = largest(&flipped.vault);
    let mut bytes = std::fs::read(&file).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&file, &bytes).expect("write");
    let (ok, report) = verify(&flipped.config, &["--read-data"]);
    assert!(!ok, "{report}");
    let damaged: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == "damaged-record")
        .collect();
    assert!(!damaged.is_empty(), "{report}");
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert_eq!(damaged[0]["file"], name.as_str(), "{report}");
    assert!(damaged[0]["offset"].as_u64().expect("offset") <= middle as u64);
    // Restoring a snapshot that reaches the damage fails, naming the
    // record, and leaves nothing behind: no new directory, and an empty
    // directory given as the target stays empty.
    let hit = report["damaged_snapshots"][0]
        .as_str()
        .unwrap_or_else(|| panic!("a damaged snapshot: {report}"));
    for (target, existed) in [("restore-new", false), ("restore-empty", true)] {
        let to = tmp.path().join(target);
        if existed {
            std::fs::create_dir(&to).expect("mkdir");
        }
        let out = restore(&flipped.config, REPO, Some(hit), &to);
        assert!(!out.status.success(), "{target}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("damaged") && stderr.contains(&name),
            "{target}: {stderr}"
        );
        if existed {
            let left = std::fs::read_dir(&to).expect("target").count();
            assert_eq!(left, 0, "{target}: the empty directory stays empty");
        } else {
            assert!(!to.exists(), "{target}: nothing is left behind");
        }
    }
    let out = run(&flipped.config, &["verify", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("damaged-record") && text.contains(&name),
        "{text}"
    );

    // A truncated data file: found without reading any record.
    let truncated = case(tmp.path(), "truncated", &config_text, &store);
    let file = largest(&truncated.vault);
    let len = std::fs::metadata(&file).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let (ok, report) = verify(&truncated.config, &[]);
    assert!(!ok);
    assert!(
        kinds(&report, "problems").contains(&"truncated-data".to_string()),
        "{report}"
    );
    let name = file
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    assert!(report.to_string().contains(&name));

    // Each push writes two index files: one for its objects, one for its
    // ref chunk (a single entry, so the smaller file). Names are content
    // hashes, so the file to remove is chosen by size, not by name.
    let index_by_size = |vault: &Path| {
        let mut found = files(&vault.join("index"));
        found.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
        found
    };

    // A missing index file of objects: what it placed is missing from the
    // snapshots that reach it, and its data file is named as unindexed.
    let unindexed = case(tmp.path(), "no-index", &config_text, &store);
    let index_files = index_by_size(&unindexed.vault);
    assert_eq!(index_files.len(), 6, "{index_files:?}");
    std::fs::remove_file(index_files.last().expect("largest")).expect("remove index");
    let (ok, report) = verify(&unindexed.config, &[]);
    assert!(!ok, "{report}");
    assert!(
        kinds(&report, "problems").contains(&"missing-object".to_string()),
        "{report}"
    );
    assert!(
        kinds(&report, "warnings").contains(&"unindexed-data".to_string()),
        "{report}"
    );
    assert!(
        !report["damaged_snapshots"]
            .as_array()
            .expect("list")
            .is_empty()
    );

    // A missing index file of a ref chunk: the snapshot whose ref table it
    // holds is named, with the ref table as what is wrong.
    let no_chunk = case(tmp.path(), "no-ref-chunk", &config_text, &store);
    let index_files = index_by_size(&no_chunk.vault);
    std::fs::remove_file(&index_files[0]).expect("remove index");
    let (ok, report) = verify(&no_chunk.config, &[]);
    assert!(!ok, "{report}");
    assert!(
        kinds(&report, "problems").contains(&"bad-ref-table".to_string()),
        "{report}"
    );
    assert!(
        !report["damaged_snapshots"]
            .as_array()
            .expect("list")
            .is_empty(),
        "{report}"
    );

    // A deleted snapshot file: the next snapshot's parent is missing.
    let deleted = case(tmp.path(), "no-snapshot", &config_text, &store);
    std::fs::remove_file(deleted.vault.join("snapshots").join(&snapshots[1])).expect("remove");
    let (ok, report) = verify(&deleted.config, &[]);
    assert!(!ok);
    let chain: Vec<&serde_json::Value> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == "broken-chain")
        .collect();
    assert!(!chain.is_empty(), "{report}");
    assert_eq!(chain[0]["snapshot"], snapshots[2].as_str());
    assert!(
        chain[0]["message"]
            .as_str()
            .expect("message")
            .contains(&snapshots[1])
    );

    // A damaged snapshot file: named, and the others still list and restore.
    let bad_snapshot = case(tmp.path(), "bad-snapshot", &config_text, &store);
    let path = bad_snapshot.vault.join("snapshots").join(&snapshots[0]);
    let mut bytes = std::fs::read(&path).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let (ok, report) = verify(&bad_snapshot.config, &[]);
    assert!(!ok);
    let problems = report["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["kind"] == "damaged-file"
                && p["file"] == format!("snapshot/{}", snapshots[0])),
        "{report}"
    );
    let listed = run(
        &bad_snapshot.config,
        &["snapshots", "--repo", REPO, "--json"],
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(listed.len(), 2);
    let restored = tmp.path().join("restored");
    let out = restore(&bad_snapshot.config, REPO, None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);
    assert_eq!(refs_of(&restored)["refs/heads/main"], tips[2]);
}
