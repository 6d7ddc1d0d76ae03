//! Getting things back, through the real binary beside a running `serve`:
//! `log` (with a force-push Bitbucket did not flag), `diff`, `cat` and `ls`
//! of past states (a binary file included), `undo` pushing a rewritten and
//! a deleted branch back over smart HTTP, and `restore --ref` / `--push`.

mod support;

use std::process::Output;

use support::*;

const REPO: &str = "acme-eng/ledger";

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct History {
    tmp: tempfile::TempDir,
    server: GitServer,
    upstream: std::path::PathBuf,
    service: Service,
    /// Snapshot ids, oldest first.
    snapshots: Vec<String>,
    /// main's tip in each snapshot.
    main: Vec<String>,
    feature: String,
    binary: Vec<u8>,
}

/// Three snapshots: main, feature/export, tag v1.0 created; main moved
/// forward (a merge); main rewritten and feature/export deleted, with a
/// payload that does not say "forced".
fn history() -> History {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    work.commit("README.md", "ledger\n", "Initial commit");
    let binary: Vec<u8> = (0..70_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(work.dir.join("assets")).expect("mkdir");
    std::fs::write(work.dir.join("assets/logo.bin"), &binary).expect("binary");
    work.git(&["add", "assets/logo.bin"]);
    let first = work.commit("src/lib.rs", "pub fn one() {}\n", "Library");
    work.git(&["branch", "feature/export"]);
    work.git(&["tag", "-a", "v1.0", "-m", "Release 1.0"]);
    work.git(&["push", "-q", "origin", "main", "feature/export", "v1.0"]);

    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let deliver = |n: u32, body: Vec<u8>| {
        let id = format!("{{22222222-aaaa-4bbb-8ccc-00000000000{n}}}");
        service.push(&id, &body);
        let outcome = service.outcome(&id);
        assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    };
    deliver(1, branch_push(REPO, "main", None, &first));

    // main moves forward, through a merge of a side branch.
    work.git(&["checkout", "-q", "-b", "side"]);
    work.commit("src/side.rs", "pub fn side() {}\n", "Side work");
    work.git(&["checkout", "-q", "main"]);
    work.commit("src/lib.rs", "pub fn one() {}\npub fn two() {}\n", "Two");
    work.git(&["merge", "-q", "--no-ff", "side", "-m", "Merge side"]);
    let second = work.head();
    work.git(&["push", "-q", "origin", "main"]);
    deliver(2, branch_push(REPO, "main", Some(&first), &second));

    // main rewritten (the payload does not flag it), feature deleted.
    work.git(&["reset", "-q", "--hard", &first]);
    let third = work.commit("src/lib.rs", "pub fn rewritten() {}\n", "Rewrite");
    work.git(&["push", "-q", "--force", "origin", "main"]);
    work.git(&["push", "-q", "origin", "--delete", "feature/export"]);
    deliver(
        3,
        cloud_push(
            REPO,
            &[
                Change {
                    branch: "main",
                    kind: "branch",
                    old: Some(&second),
                    new: Some(&third),
                    forced: false,
                },
                Change {
                    branch: "feature/export",
                    kind: "branch",
                    old: Some(&first),
                    new: None,
                    forced: false,
                },
            ],
        ),
    );
    let snapshots = service
        .snapshots(REPO)
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect::<Vec<_>>();
    assert_eq!(snapshots.len(), 3);
    History {
        tmp,
        server,
        upstream,
        service,
        snapshots,
        main: vec![first.clone(), second, third],
        feature: first,
        binary,
    }
}

#[test]
fn log_diff_cat_ls_undo_and_partial_restore() {
    let h = history();
    let cli = |args: &[&str]| h.service.cli(args);

    // log: every value of every ref, oldest first; the rewrite is found
    // from history although the payload did not flag it.
    let log = json(&cli(&["log", "--repo", REPO, "--json"]));
    let lines: Vec<(String, String, String)> = log
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["ref"].as_str().expect("ref").to_string(),
                e["change"].as_str().expect("change").to_string(),
                e["new"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("refs/heads/feature/export", "created", h.feature.as_str()),
        ("refs/heads/main", "created", h.main[0].as_str()),
        ("refs/tags/v1.0", "created", "tag"),
        ("refs/heads/main", "updated", h.main[1].as_str()),
        ("refs/heads/feature/export", "deleted", "-"),
        ("refs/heads/main", "forced", h.main[2].as_str()),
    ]
    .iter()
    .map(|(r, c, n)| (r.to_string(), c.to_string(), n.to_string()))
    .collect();
    let tag = &lines[2].2;
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(r, c, n)| (r, c, if n == "tag" { tag.clone() } else { n }))
        .collect();
    assert_eq!(lines, expected);
    assert_eq!(
        git(&h.upstream, &["rev-parse", "v1.0"]).trim(),
        tag.as_str(),
        "the tag's own object id"
    );
    for entry in log.as_array().expect("array") {
        assert_eq!(entry["actor"], "Dana Okafor");
        assert!(
            entry["delivery_id"]
                .as_str()
                .is_some_and(|d| d.starts_with("{2222"))
        );
    }
    let main_only = json(&cli(&["log", "--repo", REPO, "--ref", "main", "--json"]));
    assert_eq!(main_only.as_array().expect("array").len(), 3);
    assert_eq!(main_only[2]["old"], h.main[1].as_str());
    let since = rfc3339(log[3]["time_ms"].as_u64().expect("time"));
    let recent = json(&cli(&["log", "--repo", REPO, "--since", &since, "--json"]));
    assert_eq!(recent.as_array().expect("array").len(), 3, "{recent}");
    let human = ok(&cli(&["log", "--repo", REPO, "--ref", "refs/heads/*"]));
    assert_eq!(human.lines().count(), 5, "{human}");
    assert!(
        human.lines().last().expect("line").contains("forced"),
        "{human}"
    );

    // diff: the rewrite, by id prefixes; from the first snapshot, main
    // only moved forward (the rewrite starts from its tip), by time.
    let diff = json(&cli(&[
        "diff",
        "--repo",
        REPO,
        &h.snapshots[1][..8],
        &h.snapshots[2],
        "--json",
    ]));
    let changes = diff["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{diff}");
    assert_eq!(changes[0]["ref"], "refs/heads/feature/export");
    assert_eq!(changes[0]["change"], "deleted");
    assert_eq!(changes[1]["ref"], "refs/heads/main");
    assert_eq!(changes[1]["change"], "forced");
    let last_time = rfc3339(log[5]["time_ms"].as_u64().expect("time"));
    let diff = json(&cli(&[
        "diff",
        "--repo",
        REPO,
        &h.snapshots[0],
        &last_time,
        "--json",
    ]));
    assert_eq!(diff["to"], h.snapshots[2].as_str());
    let changes = diff["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{diff}");
    assert_eq!(changes[1]["change"], "updated");
    assert_eq!(changes[1]["old"], h.main[0].as_str());
    assert_eq!(changes[1]["new"], h.main[2].as_str());
    let same = cli(&["diff", "--repo", REPO, &h.snapshots[1], &h.snapshots[1]]);
    assert!(String::from_utf8_lossy(&same.stderr).contains("the same refs"));

    // cat: a file as it was in each snapshot, and a binary file byte for byte.
    let cat = |snapshot: &str, path: &str| {
        cli(&[
            "cat",
            "--repo",
            REPO,
            "--snapshot",
            snapshot,
            "--path",
            path,
        ])
    };
    assert_eq!(ok(&cat(&h.snapshots[0], "src/lib.rs")), "pub fn one() {}\n");
    assert_eq!(
        ok(&cat(&h.snapshots[1], "src/lib.rs")),
        "pub fn one() {}\npub fn two() {}\n"
    );
    assert_eq!(
        ok(&cli(&["cat", "--repo", REPO, "--path", "/src/lib.rs"])),
        "pub fn rewritten() {}\n"
    );
    let bytes = ok_bytes(&cat(&h.snapshots[2], "assets/logo.bin"));
    assert_eq!(bytes, h.binary);
    let old_feature = cli(&[
        "cat",
        "--repo",
        REPO,
        "--snapshot",
        &h.snapshots[0],
        "--ref",
        "feature/export",
        "--path",
        "README.md",
    ]);
    assert_eq!(ok(&old_feature), "ledger\n");
    let missing = failed(&cat(&h.snapshots[0], "src/side.rs"));
    assert!(
        missing.contains("\"src/side.rs\" is not in refs/heads/main"),
        "{missing}"
    );
    let dir = failed(&cat(&h.snapshots[0], "src"));
    assert!(dir.contains("not a file"), "{dir}");
    let gone = failed(&cli(&[
        "cat",
        "--repo",
        REPO,
        "--ref",
        "feature/export",
        "--path",
        "README.md",
    ]));
    assert!(gone.contains("has no ref \"feature/export\""), "{gone}");

    // ls -r equals git's own listing of that commit.
    let listed = json(&cli(&[
        "ls",
        "--repo",
        REPO,
        "--snapshot",
        &h.snapshots[1],
        "-r",
        "--json",
    ]));
    let ours: Vec<String> = listed
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["kind"] == "blob")
        .map(|e| {
            format!(
                "{} {}",
                e["id"].as_str().expect("id"),
                e["path"].as_str().expect("path")
            )
        })
        .collect();
    let theirs: Vec<String> = git(&h.upstream, &["ls-tree", "-r", &h.main[1]])
        .lines()
        .map(|l| {
            let (meta, path) = l.split_once('\t').expect("tab");
            format!("{} {path}", meta.split(' ').nth(2).expect("id"))
        })
        .collect();
    assert_eq!(ours, theirs);
    let top = ok(&cli(&["ls", "--repo", REPO, "--path", "src"]));
    assert_eq!(top.lines().count(), 1, "{top}");

    // undo: the previous tip and the command that puts it back.
    let told = ok(&cli(&[
        "undo",
        "--repo",
        REPO,
        "--ref",
        "main",
        "--snapshot",
        &h.snapshots[1],
    ]));
    assert!(told.contains(&h.main[1]), "{told}");
    assert!(
        told.contains(&format!(
            "latest snapshot {}: {}",
            &h.snapshots[2][..12],
            h.main[2]
        )),
        "{told}"
    );
    assert!(
        told.contains("hookvault undo --repo acme-eng/ledger --ref refs/heads/main --snapshot"),
        "{told}"
    );
    let url = h.server.url(REPO);
    // Not a terminal and no --yes: nothing is pushed.
    let refused = failed(&cli(&[
        "undo",
        "--repo",
        REPO,
        "--ref",
        "main",
        "--snapshot",
        &h.snapshots[1],
        "--push",
        &url,
    ]));
    assert!(refused.contains("without --yes"), "{refused}");
    assert_eq!(refs_of(&h.upstream)["refs/heads/main"], h.main[2]);
    // Pushed: the rewritten branch is back, over authenticated smart HTTP.
    ok(&cli(&[
        "undo",
        "--repo",
        REPO,
        "--ref",
        "main",
        "--snapshot",
        &h.snapshots[1],
        "--push",
        &url,
        "--yes",
    ]));
    assert_eq!(refs_of(&h.upstream)["refs/heads/main"], h.main[1]);
    // The deleted branch, by time: created again.
    let before = rfc3339(log[5]["time_ms"].as_u64().expect("time"));
    ok(&cli(&[
        "undo",
        "--repo",
        REPO,
        "--ref",
        "refs/heads/feature/export",
        "--before",
        &before,
        "--push",
        &url,
        "--yes",
        "--json",
    ]));
    assert_eq!(refs_of(&h.upstream)["refs/heads/feature/export"], h.feature);
    let hostile = failed(&cli(&[
        "undo",
        "--repo",
        REPO,
        "--ref",
        "main",
        "--snapshot",
        &h.snapshots[1],
        "--push=--upload-pack=touch /tmp/x",
        "--yes",
    ]));
    assert!(hostile.contains("is not a remote URL"), "{hostile}");

    // restore --ref: only the tags (and what they reach).
    let tags = h.tmp.path().join("tags-only");
    let out = cli(&[
        "restore",
        "--repo",
        REPO,
        "--snapshot",
        &h.snapshots[0],
        "--ref",
        "refs/tags/*",
        "--to",
        tags.to_str().expect("path"),
    ]);
    ok(&out);
    assert_fsck_clean(&tags);
    let restored = refs_of(&tags);
    assert_eq!(restored.keys().collect::<Vec<_>>(), vec!["refs/tags/v1.0"]);
    let nothing = failed(&cli(&[
        "restore",
        "--repo",
        REPO,
        "--ref",
        "refs/heads/nope",
        "--to",
        h.tmp.path().join("nothing").to_str().expect("path"),
    ]));
    assert!(nothing.contains("no ref of snapshot"), "{nothing}");
    assert!(!h.tmp.path().join("nothing").exists());

    // restore --push: every ref of a snapshot into a new, empty repository.
    let fresh = h.server.create("acme-eng/ledger-restored");
    let fresh_url = h.server.url("acme-eng/ledger-restored");
    ok(&cli(&[
        "restore",
        "--repo",
        REPO,
        "--snapshot",
        &h.snapshots[0],
        "--push",
        &fresh_url,
    ]));
    let mut expected = refs_of(&h.upstream);
    expected.insert("refs/heads/main".into(), h.main[0].clone());
    assert_eq!(refs_of(&fresh), expected);
    assert_fsck_clean(&fresh);
    // Not empty any more: refused, unless --force.
    let again = failed(&cli(&[
        "restore",
        "--repo",
        REPO,
        "--snapshot",
        &h.snapshots[2],
        "--push",
        &fresh_url,
    ]));
    assert!(again.contains("already has 3 refs"), "{again}");
    assert_eq!(refs_of(&fresh)["refs/heads/main"], h.main[0]);
    ok(&cli(&[
        "restore",
        "--repo",
        REPO,
        "--snapshot",
        &h.snapshots[2],
        "--push",
        &fresh_url,
        "--force",
    ]));
    assert_eq!(refs_of(&fresh)["refs/heads/main"], h.main[2]);
    h.service.stop();
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("time")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

fn ok_bytes(out: &Output) -> Vec<u8> {
    ok(out);
    out.stdout.clone()
}
