//! The get-back commands on real history: ripgrep from `../shared/corpus`
//! (288 refs, merges, annotated tags), backed up over smart HTTP, then its
//! default branch force-pushed back three commits and a tag deleted.
//! `log`, `undo`, `diff`, `cat`, `ls`, `restore --ref`, `verify
//! --read-data`, `forget` and `prune` are each checked against git's own
//! view of the same history.

mod support;

use std::collections::BTreeMap;

use support::*;

const BUNDLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/corpus/ripgrep.bundle"
);
const REPO: &str = "corpus/ripgrep";

fn json(out: std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn get_back_commands_agree_with_git_on_real_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    git(&upstream, &["fetch", "-q", BUNDLE, "+refs/*:refs/*"]);
    git(&upstream, &["symbolic-ref", "HEAD", "refs/heads/master"]);
    let refs_then = refs_of(&upstream);
    assert!(refs_then.len() > 200, "{} refs", refs_then.len());
    let head = refs_then["refs/heads/master"].clone();
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    service.push(
        "{88888888-aaaa-4bbb-8ccc-000000000001}",
        &branch_push(REPO, "master", None, &head),
    );
    let first = service.outcome("{88888888-aaaa-4bbb-8ccc-000000000001}");
    assert_eq!(first["status"], "done", "{first}\n{}", service.log());

    // master rewritten three commits back; a tag deleted.
    let back = git(&upstream, &["rev-parse", "master~3"])
        .trim()
        .to_string();
    let tag = refs_then
        .keys()
        .find(|r| r.starts_with("refs/tags/"))
        .expect("a tag")
        .clone();
    git(&upstream, &["update-ref", "refs/heads/master", &back]);
    git(&upstream, &["update-ref", "-d", &tag]);
    let short_tag = tag.trim_start_matches("refs/tags/");
    service.push(
        "{88888888-aaaa-4bbb-8ccc-000000000002}",
        &cloud_push(
            REPO,
            &[
                Change {
                    branch: "master",
                    kind: "branch",
                    old: Some(&head),
                    new: Some(&back),
                    forced: true,
                },
                Change {
                    branch: short_tag,
                    kind: "tag",
                    old: Some(&refs_then[&tag]),
                    new: None,
                    forced: false,
                },
            ],
        ),
    );
    let second = service.outcome("{88888888-aaaa-4bbb-8ccc-000000000002}");
    assert_eq!(second["status"], "done", "{second}\n{}", service.log());
    let snapshots: Vec<String> = service
        .snapshots(REPO)
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(snapshots.len(), 2);
    let config = service.config.clone();
    let cli = |args: &[&str]| run(&config, args);

    // log: master created, then forced back.
    let log = json(cli(&["log", "--repo", REPO, "--ref", "master", "--json"]));
    let log = log.as_array().expect("array");
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(
        (log[0]["change"].as_str(), log[0]["new"].as_str()),
        (Some("created"), Some(head.as_str()))
    );
    assert_eq!(log[1]["change"], "forced");
    assert_eq!(
        (log[1]["old"].as_str(), log[1]["new"].as_str()),
        (Some(head.as_str()), Some(back.as_str()))
    );
    // undo: the tip before the rewrite, and the command that puts it back.
    let undo = json(cli(&[
        "undo",
        "--repo",
        REPO,
        "--ref",
        "master",
        "--snapshot",
        &snapshots[0],
        "--json",
    ]));
    assert_eq!(undo["target"], head.as_str(), "{undo}");
    assert!(
        undo["command"]
            .as_str()
            .expect("command")
            .contains("--push"),
        "{undo}"
    );
    // diff: exactly the rewrite and the deletion.
    let diff = json(cli(&[
        "diff",
        "--repo",
        REPO,
        &snapshots[0],
        &snapshots[1],
        "--json",
    ]));
    let changes: BTreeMap<String, String> = diff["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["ref"].as_str().expect("ref").to_string(),
                c["change"].as_str().expect("change").to_string(),
            )
        })
        .collect();
    let want: BTreeMap<String, String> = [
        ("refs/heads/master".to_string(), "forced".to_string()),
        (tag.clone(), "deleted".to_string()),
    ]
    .into();
    assert_eq!(changes, want);

    // cat and ls, in each snapshot, against git show and git ls-tree.
    for (snapshot, commit) in [(&snapshots[0], &head), (&snapshots[1], &back)] {
        for path in ["Cargo.toml", "README.md", "crates/core/main.rs"] {
            let out = cli(&[
                "cat",
                "--repo",
                REPO,
                "--snapshot",
                snapshot,
                "--ref",
                "master",
                "--path",
                path,
            ]);
            assert!(
                out.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let shown = std::process::Command::new("git")
                .args(["show", &format!("{commit}:{path}")])
                .current_dir(&upstream)
                .output()
                .expect("git show");
            assert_eq!(out.stdout, shown.stdout, "{path} at {commit}");
        }
        let listed = json(cli(&[
            "ls",
            "--repo",
            REPO,
            "--snapshot",
            snapshot,
            "--ref",
            "master",
            "--recursive",
            "--json",
        ]));
        let mut names: Vec<String> = listed
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["kind"] != "tree")
            .map(|e| e["path"].as_str().expect("path").to_string())
            .collect();
        names.sort();
        let mut want: Vec<String> = git(&upstream, &["ls-tree", "-r", "--name-only", commit])
            .lines()
            .map(str::to_string)
            .collect();
        want.sort();
        assert_eq!(names, want, "ls -r at {commit}");
    }

    // restore --ref: only the tags, as they were before the deletion.
    let tags_dir = tmp.path().join("tags.git");
    let out = cli(&[
        "restore",
        "--repo",
        REPO,
        "--snapshot",
        &snapshots[0],
        "--ref",
        "refs/tags/*",
        "--to",
        tags_dir.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&tags_dir);
    let want: BTreeMap<String, String> = refs_then
        .iter()
        .filter(|(r, _)| r.starts_with("refs/tags/"))
        .map(|(r, o)| (r.clone(), o.clone()))
        .collect();
    assert_eq!(refs_of(&tags_dir), want);

    // verify, then forget and prune down to the latest snapshot, which
    // still restores as the upstream is now.
    let (ok, report) = verify(&config, &["--read-data"]);
    assert!(ok, "{report}");
    service.stop();
    let out = cli(&["forget", "--keep-last", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned = json(cli(&["prune", "--json"]));
    assert!(
        pruned["report"]["bytes_reclaimed"].as_u64().expect("n") > 0,
        "{pruned}"
    );
    let (ok, report) = verify(&config, &["--read-data"]);
    assert!(
        ok && report["warnings"].as_array().expect("w").is_empty(),
        "{report}"
    );
    let now = tmp.path().join("now.git");
    let out = restore(&config, REPO, None, &now);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&now);
    assert_eq!(refs_of(&now), refs_of(&upstream));
}
