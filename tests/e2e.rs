//! End to end, driving the real `hookvault` binary: real git repositories
//! served over smart HTTP with token auth, real webhooks over loopback,
//! restores checked with `git fsck --full` and `git for-each-ref`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hookvault::bitbucket::signature::sign;
use support::*;

const REPO: &str = "acme-eng/billing-service";

/// Push commits, branches and an annotated tag; the webhook becomes a
/// snapshot; a force-push that drops commits and a branch deletion follow;
/// both snapshots restore exactly.
#[test]
fn push_snapshot_force_push_delete_and_restore() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    work.commit("README.md", "billing\n", "Initial commit");
    work.commit("src/invoice.rs", "fn invoice() {}\n", "Add invoices");
    let dropped = work.commit("src/retry.rs", "fn retry() {}\n", "Retry writes");
    work.git(&["branch", "feature/export"]);
    work.git(&["tag", "-a", "v1.0", "-m", "Release 1.0"]);
    work.git(&["push", "-q", "origin", "main", "feature/export", "v1.0"]);
    let refs_before = refs_of(&upstream);
    assert_eq!(refs_before.len(), 3);

    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let body = branch_push(REPO, "main", None, &dropped);
    service.push("{11111111-aaaa-4bbb-8ccc-000000000001}", &body);
    let first = service.outcome("{11111111-aaaa-4bbb-8ccc-000000000001}");
    assert_eq!(first["status"], "done", "{first}\n{}", service.log());
    let snapshots = service.snapshots(REPO);
    assert_eq!(snapshots.len(), 1);
    let snap1 = snapshots[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        snapshots[0]["delivery_id"],
        "{11111111-aaaa-4bbb-8ccc-000000000001}"
    );
    assert_eq!(snapshots[0]["actor"], "Dana Okafor");

    // Force-push main back two commits with a new commit on top, and
    // delete the feature branch.
    work.git(&["reset", "-q", "--hard", "HEAD~2"]);
    let rewritten = work.commit("src/other.rs", "fn other() {}\n", "Rewrite history");
    work.git(&["push", "-q", "--force", "origin", "main"]);
    work.git(&["push", "-q", "origin", "--delete", "feature/export"]);
    let refs_after = refs_of(&upstream);
    let body = cloud_push(
        REPO,
        &[
            Change {
                branch: "main",
                kind: "branch",
                old: Some(&dropped),
                new: Some(&rewritten),
                forced: true,
            },
            Change {
                branch: "feature/export",
                kind: "branch",
                old: Some(&dropped),
                new: None,
                forced: false,
            },
        ],
    );
    service.push("{11111111-aaaa-4bbb-8ccc-000000000002}", &body);
    let second = service.outcome("{11111111-aaaa-4bbb-8ccc-000000000002}");
    assert_eq!(second["status"], "done", "{second}\n{}", service.log());
    let snapshots = service.snapshots(REPO);
    assert_eq!(snapshots.len(), 2);
    let snap2 = snapshots[1]["id"].as_str().expect("id").to_string();
    let updates = snapshots[1]["updates"].as_array().expect("updates");
    let main = updates
        .iter()
        .find(|u| u["name"] == "refs/heads/main")
        .expect("main updated");
    assert_eq!(main["forced"], true);
    let feature = updates
        .iter()
        .find(|u| u["name"] == "refs/heads/feature/export")
        .expect("feature deleted");
    assert_eq!(feature["deleted"], true);

    let config = service.config.clone();
    service.stop();

    // The old snapshot still has the history the force-push dropped.
    let restored1 = tmp.path().join("restore-1");
    let out = restore(&config, REPO, Some(&snap1[..10]), &restored1);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored1);
    assert_eq!(refs_of(&restored1), refs_before);
    let log = git(&restored1, &["log", "--format=%s", "main"]);
    assert!(
        log.contains("Retry writes") && log.contains("Add invoices"),
        "{log}"
    );

    let restored2 = tmp.path().join("restore-2");
    let out = restore(&config, REPO, Some(&snap2), &restored2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored2);
    assert_eq!(refs_of(&restored2), refs_after);

    // The latest is the default; a used directory is refused.
    let out = restore(&config, REPO, None, &restored2);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

    // `hookvault snapshots` lists both, as JSON too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(&config)
        .args(["snapshots", "--repo", REPO, "--json"])
        .output()
        .expect("snapshots");
    assert!(out.status.success());
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids, vec![snap1.as_str(), snap2.as_str()]);
}

fn objects_in_store(service: &Service) -> u64 {
    service.stats()["store"]["git_objects"]
        .as_u64()
        .expect("objects")
}

/// A second push stores only the new objects; a fork stores only its own.
#[test]
fn deduplicates_across_pushes_and_forks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    for i in 0..5 {
        work.commit(
            &format!("src/mod{i}/lib.rs"),
            &format!("// module {i}\n"),
            &format!("Module {i}"),
        );
    }
    let head1 = work.commit("README.md", "billing\n", "Readme");
    work.git(&["push", "-q", "origin", "main"]);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let push = |delivery: &str, repo: &str, old: Option<&str>, new: &str| {
        let body = cloud_push(
            repo,
            &[Change {
                branch: "main",
                kind: "branch",
                old,
                new: Some(new),
                forced: false,
            }],
        );
        service.push(delivery, &body);
        let outcome = service.outcome(delivery);
        assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    };
    push("d-initial", REPO, None, &head1);
    let after_initial = objects_in_store(&service);
    let git_objects: u64 = git(&upstream, &["rev-list", "--objects", "--all"])
        .lines()
        .count() as u64;
    assert_eq!(
        after_initial, git_objects,
        "initial backup stores every object once"
    );

    // One commit changing one file at the root: commit + root tree + blob.
    let head2 = work.commit("README.md", "billing service\n", "Better readme");
    work.git(&["push", "-q", "origin", "main"]);
    push("d-second", REPO, Some(&head1), &head2);
    assert_eq!(objects_in_store(&service), after_initial + 3);
    let snapshots = service.snapshots(REPO);
    assert_eq!(snapshots[1]["stats"]["written"], 3, "{}", snapshots[1]);

    // A fork with the whole history plus one commit of its own.
    let fork = server.root.join("dana/billing-fork.git");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            "--bare",
            upstream.to_str().expect("utf8"),
            fork.to_str().expect("utf8"),
        ],
    );
    let fork_work = WorkTree::new(&tmp.path().join("fork-work"), &fork);
    fork_work.git(&["pull", "-q", "origin", "main"]);
    let fork_head = fork_work.commit("FORK.md", "mine\n", "Fork note");
    fork_work.git(&["push", "-q", "origin", "main"]);
    let before_fork = objects_in_store(&service);
    push("d-fork", "dana/billing-fork", None, &fork_head);
    assert_eq!(
        objects_in_store(&service),
        before_fork + 3,
        "the fork adds only its own objects"
    );
    let fork_snaps = service.snapshots("dana/billing-fork");
    assert_eq!(fork_snaps.len(), 1);
    // The shared history is not even listed: the walk stops at what the
    // vault already holds.
    assert_eq!(fork_snaps[0]["stats"]["written"], 3);

    let config = service.config.clone();
    service.stop();
    let restored = tmp.path().join("fork-restore");
    let out = restore(&config, "dana/billing-fork", None, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fsck_clean(&restored);
    assert_eq!(refs_of(&restored), refs_of(&fork));
}

/// Bad input gets the right status, nothing is stored, the server goes on.
#[test]
fn bad_input_is_rejected_and_nothing_is_stored() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let good = branch_push(REPO, "main", None, &head);
    let signed = sign(SECRET.as_bytes(), &good);

    let cases: Vec<(&str, Vec<u8>, Option<String>, u16)> = vec![
        ("unsigned", good.clone(), None, 401),
        (
            "wrong-secret",
            good.clone(),
            Some(sign(b"not the secret", &good)),
            401,
        ),
        (
            "sha1-prefix",
            good.clone(),
            Some(signed.replacen("sha256=", "sha1=", 1)),
            401,
        ),
        (
            "garbage-signature",
            good.clone(),
            Some("sha256=zzzz".into()),
            401,
        ),
        (
            "tampered-body",
            {
                let mut b = good.clone();
                b.push(b' ');
                b
            },
            Some(signed.clone()),
            401,
        ),
        (
            "malformed-json",
            b"{\"push\": [".to_vec(),
            Some(sign(SECRET.as_bytes(), b"{\"push\": [")),
            400,
        ),
    ];
    for (name, body, signature, expected) in cases {
        let delivery = format!("bad-{name}");
        let (status, reply) = service.deliver("repo:push", &delivery, &body, signature.as_deref());
        assert_eq!(status, expected, "{name}: {reply}");
        assert!(reply["error"].is_string(), "{name}: a clear error: {reply}");
        assert_eq!(
            service.api(&format!("deliveries/{delivery}")).0,
            404,
            "{name} was stored"
        );
    }

    // Oversized: over max_body_bytes (256 KiB in the test config).
    let mut huge = good.clone();
    huge.truncate(huge.len() - 1);
    huge.extend(std::iter::repeat_n(b' ', 300 * 1024));
    huge.push(b'}');
    let (status, _) = service.deliver(
        "repo:push",
        "bad-huge",
        &huge,
        Some(&sign(SECRET.as_bytes(), &huge)),
    );
    assert_eq!(status, 413);
    assert_eq!(service.api("deliveries/bad-huge").0, 404);

    // Hostile repository names, correctly signed.
    for hostile in [
        "../../etc/passwd",
        "acme/..",
        "/abs/path",
        "acme/na me",
        "acme/a/b",
        "acme/.git",
    ] {
        let body = branch_push(hostile, "main", None, &head);
        let (status, reply) = service.deliver(
            "repo:push",
            "bad-name",
            &body,
            Some(&sign(SECRET.as_bytes(), &body)),
        );
        assert_eq!(status, 400, "{hostile}: {reply}");
        assert!(
            reply["error"]
                .as_str()
                .unwrap_or("")
                .contains("invalid repository name"),
            "{hostile}: {reply}"
        );
    }
    assert_eq!(service.api("deliveries/bad-name").0, 404);
    assert!(!service.dir.join("data/fetch/cloud/..").join("etc").exists());

    let stats = service.stats();
    assert_eq!(stats["store"]["snapshots"], 0);
    assert_eq!(stats["store"]["git_objects"], 0);
    assert_eq!(stats["queue"]["pending"], 0);

    // The server still serves: a good push is accepted once, a redelivery
    // with the same id is acknowledged and not processed twice.
    service.push("good-1", &good);
    let (status, reply) = service.deliver("repo:push", "good-1", &good, Some(&signed));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "duplicate");
    assert_eq!(service.outcome("good-1")["status"], "done");
    assert_eq!(service.snapshots(REPO).len(), 1);
    // The rotated-out secret is still accepted during rotation.
    let (status, _) = service.deliver(
        "repo:push",
        "good-2",
        &good,
        Some(&sign(b"old-secret-being-rotated", &good)),
    );
    assert_eq!(status, 202);
    // An unchanged repository makes no second snapshot.
    assert_eq!(service.outcome("good-2")["status"], "done");
    assert_eq!(service.snapshots(REPO).len(), 1);
    service.stop();
}

/// The example custom filter skips what its config says.
#[test]
fn custom_filter_plugin_skips_configured_refs() {
    let OneCommitRepo {
        tmp,
        server,
        work,
        head: main1,
        ..
    } = one_commit_repo(REPO);
    let plugin = Path::new(env!("HOOKVAULT_PLUGIN_ARTIFACTS")).join("skip_refs.wasm");
    let extra = format!(
        r#"
[[plugins]]
name = "skip-wip"
kind = "filter"
path = "{}"
config = {{ skip = ["refs/heads/wip/*"] }}
"#,
        plugin.display()
    );
    let service = Service::start(&tmp.path().join("hv"), &server, &extra);
    let change = |branch: &'static str, new: &str| -> (String, String) {
        (branch.to_string(), new.to_string())
    };
    let push = |delivery: &str, changes: &[(String, String)]| {
        let changes: Vec<Change<'_>> = changes
            .iter()
            .map(|(b, n)| Change {
                branch: b,
                kind: "branch",
                old: None,
                new: Some(n),
                forced: false,
            })
            .collect();
        service.push(delivery, &cloud_push(REPO, &changes));
        service.outcome(delivery)
    };
    assert_eq!(push("f-1", &[change("main", &main1)])["status"], "done");

    // Only a wip branch: skipped, no snapshot.
    work.git(&["checkout", "-q", "-b", "wip/spike"]);
    let wip = work.commit("spike.txt", "s\n", "Spike");
    work.git(&["push", "-q", "origin", "wip/spike"]);
    let outcome = push("f-2", &[change("wip/spike", &wip)]);
    assert_eq!(outcome["status"], "skipped", "{outcome}");
    assert_eq!(service.snapshots(REPO).len(), 1);

    // main and another wip branch together: main is backed up, wip is not.
    work.git(&["checkout", "-q", "main"]);
    let main2 = work.commit("b.txt", "b\n", "B");
    work.git(&["checkout", "-q", "-b", "wip/other"]);
    let wip2 = work.commit("o.txt", "o\n", "Other");
    work.git(&["push", "-q", "origin", "main", "wip/other"]);
    let outcome = push("f-3", &[change("main", &main2), change("wip/other", &wip2)]);
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    let snapshots = service.snapshots(REPO);
    assert_eq!(snapshots.len(), 2);
    let refs: BTreeMap<String, String> =
        serde_json::from_value(snapshots[1]["refs"].clone()).expect("refs");
    assert_eq!(refs.get("refs/heads/main"), Some(&main2));
    assert!(!refs.contains_key("refs/heads/wip/other"), "{refs:?}");

    // A later push that names only main: the wip branches, still on the
    // remote, stay out of the backup.
    work.git(&["checkout", "-q", "main"]);
    let main3 = work.commit("c.txt", "c\n", "C");
    work.git(&["push", "-q", "origin", "main"]);
    let outcome = push("f-4", &[change("main", &main3)]);
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    let snapshots = service.snapshots(REPO);
    assert_eq!(snapshots.len(), 3);
    let refs: BTreeMap<String, String> =
        serde_json::from_value(snapshots[2]["refs"].clone()).expect("refs");
    assert_eq!(refs.get("refs/heads/main"), Some(&main3));
    assert!(
        refs.keys().all(|r| !r.starts_with("refs/heads/wip/")),
        "excluded refs stay excluded: {refs:?}"
    );
    service.stop();
}

/// A plugin stuck in a loop costs one delivery; the service goes on.
#[test]
fn hostile_filter_fails_its_delivery_and_the_service_survives() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let plugin = Path::new(env!("HOOKVAULT_PLUGIN_ARTIFACTS")).join("hostile.wasm");
    let extra = format!(
        r#"
[[plugins]]
name = "looper"
kind = "filter"
path = "{}"
config = {{ mode = "loop" }}
fuel = 50000000
"#,
        plugin.display()
    );
    let service = Service::start(&tmp.path().join("hv"), &server, &extra);
    let body = branch_push(REPO, "main", None, &head);
    service.push("h-1", &body);
    let outcome = service.outcome("h-1");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["attempts"], 2, "retried, then dead-lettered");
    assert!(
        outcome["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("fuel"),
        "{outcome}"
    );
    let (status, _) = service.api("stats");
    assert_eq!(status, 200, "service still answers");
    service.stop();
}

/// A wrong git token: the delivery fails with a clear error that names the
/// repository, never the token, and nothing is snapshotted.
#[test]
fn wrong_git_token_fails_clearly_without_leaking_it() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let wrong = "wrong-token-e3d1";
    let config = std::fs::read_to_string(&service.config)
        .expect("config")
        .replace(TOKEN, wrong);
    service.stop();
    std::fs::write(tmp.path().join("hv/hookvault.toml"), config).expect("config");
    let service = Service::launch(&tmp.path().join("hv"), tmp.path().join("hv/hookvault.toml"));
    let body = branch_push(REPO, "main", None, &head);
    service.push("t-1", &body);
    let outcome = service.outcome("t-1");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let error = outcome["last_error"].as_str().unwrap_or("");
    assert!(error.contains(REPO), "error names the repository: {error}");
    assert!(!error.contains(wrong), "error leaks the token: {error}");
    assert!(!service.log().contains(wrong), "log leaks the token");
    assert!(service.snapshots(REPO).is_empty());
    service.stop();
}

/// Every read command works while `serve` runs, and answers what the
/// running service answers; a read command pointed at a store that does not
/// exist fails and creates nothing.
#[test]
fn read_commands_work_while_serve_runs_and_never_create_a_store() {
    let OneCommitRepo {
        tmp,
        server,
        upstream,
        work,
        head,
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    service.push("read-1", &branch_push(REPO, "main", None, &head));
    assert_eq!(service.outcome("read-1")["status"], "done");

    let out = service.cli(&["snapshots", "--repo", REPO, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed, serde_json::Value::Array(service.snapshots(REPO)));
    assert_eq!(listed[0]["refs"]["refs/heads/main"], head.as_str());

    let out = service.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(stats, service.stats());
    assert_eq!(stats["store"]["snapshots"], 1);
    assert_eq!(stats["queue"]["done"], 1);

    let to = tmp.path().join("restored.git");
    let out = restore(&service.config, REPO, None, &to);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(refs_of(&to), refs_of(&upstream));
    assert_fsck_clean(&to);

    let export = tmp.path().join("export");
    let out = service.cli(&[
        "export-metadata",
        "--repo",
        REPO,
        "--to",
        export.to_str().expect("utf8"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service is unaffected: a second push still becomes a snapshot.
    let second = work.commit("b.txt", "b\n", "B");
    work.git(&["push", "-q", "origin", "main"]);
    service.push("read-2", &branch_push(REPO, "main", Some(&head), &second));
    assert_eq!(service.outcome("read-2")["status"], "done");

    // A store path with nothing there: an error naming it, nothing created.
    let wrong = tmp.path().join("no-such-store");
    let text = std::fs::read_to_string(&service.config)
        .expect("config")
        .replace(
            &service.dir.join("data").display().to_string(),
            &wrong.display().to_string(),
        );
    let wrong_config = tmp.path().join("wrong.toml");
    std::fs::write(&wrong_config, text).expect("write");
    let never = tmp.path().join("never-written");
    let never = never.to_str().expect("utf8");
    for args in [
        vec!["snapshots", "--repo", REPO],
        vec!["stats"],
        vec!["restore", "--repo", REPO, "--to", never],
        vec!["verify"],
        vec!["forget", "--keep-last", "1"],
        vec!["prune"],
        vec!["repair", "objects"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
            .arg("--config")
            .arg(&wrong_config)
            .args(&args)
            .output()
            .expect("cli");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("no vault at"), "{args:?}: {stderr}");
    }
    assert!(!wrong.exists(), "a command created {}", wrong.display());
    assert!(!Path::new(never).exists());
    service.stop();
}

/// What a killed process leaves (a half-written vault file, a backup's
/// fetch workspace) is removed when `serve` starts again, and the next
/// backup works.
#[test]
fn leftovers_of_a_killed_process_are_removed_at_start() {
    let OneCommitRepo {
        tmp,
        server,
        work,
        head,
        ..
    } = one_commit_repo(REPO);
    let dir = tmp.path().join("hv");
    let service = Service::start(&dir, &server, "");
    service.push("left-1", &branch_push(REPO, "main", None, &head));
    assert_eq!(service.outcome("left-1")["status"], "done");
    let config = service.config.clone();
    drop(service); // SIGKILL

    let data = dir.join("data");
    let stale_tmp = data.join("vault/data/00/half-written.tmp");
    std::fs::create_dir_all(stale_tmp.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stale_tmp, b"half").expect("write");
    let stale_workspace = data.join("fetch/acme-eng.billing-service.x1.git/objects/pack");
    std::fs::create_dir_all(&stale_workspace).expect("mkdir");
    std::fs::write(stale_workspace.join("tmp_pack_x"), b"half").expect("write");
    // A data file written whole but killed before its index file.
    let unindexed = data.join("vault/data/ab").join("ab".repeat(32));
    std::fs::create_dir_all(unindexed.parent().expect("parent")).expect("mkdir");
    std::fs::write(&unindexed, b"HVDATA\x00\x02 never indexed").expect("write");

    let service = Service::launch(&dir, config);
    assert!(!stale_tmp.exists(), "{}", service.log());
    assert!(!unindexed.exists(), "{}", service.log());
    assert!(
        std::fs::read_dir(data.join("fetch"))
            .expect("fetch dir")
            .next()
            .is_none(),
        "{}",
        service.log()
    );
    let next = work.commit("NEXT.md", "next\n", "Next");
    work.git(&["push", "-q", "origin", "main"]);
    service.push("left-2", &branch_push(REPO, "main", Some(&head), &next));
    assert_eq!(
        service.outcome("left-2")["status"],
        "done",
        "{}",
        service.log()
    );
    service.stop();
}

/// An actor name with ESC sequences and a newline, from a signed payload,
/// is shown escaped by `hookvault snapshots`: each snapshot one line, no raw
/// control character; `--json` keeps the name exactly.
#[test]
fn control_characters_from_payloads_never_reach_the_terminal() {
    let OneCommitRepo {
        tmp,
        server,
        work,
        head,
        ..
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let hostile =
        "Dana\u{1b}[2K\u{1b}[1A\r\n000000000000  2026-01-01T00:00:00Z  refs=1  actor=admin\u{7}";
    let with_actor = |body: Vec<u8>| {
        let mut value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        value["actor"]["display_name"] = serde_json::json!(hostile);
        serde_json::to_vec(&value).expect("json")
    };
    service.push(
        "ansi-1",
        &with_actor(branch_push(REPO, "main", None, &head)),
    );
    assert_eq!(service.outcome("ansi-1")["status"], "done");
    let second = work.commit("b.txt", "b\n", "B");
    work.git(&["push", "-q", "origin", "main"]);
    service.push(
        "ansi-2",
        &with_actor(branch_push(REPO, "main", Some(&head), &second)),
    );
    assert_eq!(service.outcome("ansi-2")["status"], "done");

    let out = service.cli(&["snapshots", "--repo", REPO]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one line per snapshot:\n{stdout}");
    for line in &lines {
        assert!(
            !line.chars().any(char::is_control),
            "raw control character in {line:?}"
        );
        assert!(
            line.ends_with(r"actor=Dana\u{1b}[2K\u{1b}[1A\r\n000000000000  2026-01-01T00:00:00Z  refs=1  actor=admin\u{7}"),
            "{line}"
        );
    }
    assert_eq!(stdout.matches('\n').count(), 2, "{stdout}");
    assert!(!stdout.contains(['\r', '\u{1b}', '\u{7}']), "{stdout}");

    // Machine output is JSON, the name exactly as sent.
    let out = service.cli(&["snapshots", "--repo", REPO, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0]["actor"], hostile);
    service.stop();
}

/// A signed push for a repository the git server does not have fails
/// with an error that says so, and leaves nothing on disk: no fetch
/// workspace, no vault file, no snapshot.
#[test]
fn push_for_a_missing_repository_fails_clearly_and_creates_nothing() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    let files = |dir: &Path| -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                found.push(path.clone());
                if path.is_dir() {
                    stack.push(path);
                }
            }
        }
        found.sort();
        found
    };
    let data = service.dir.join("data");
    let vault_before = files(&data.join("vault"));
    let missing = "acme-eng/no-such-repo";
    service.push("missing-1", &branch_push(missing, "main", None, &head));
    let outcome = service.outcome("missing-1");
    assert_eq!(outcome["status"], "failed", "{outcome}");
    let error = outcome["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(missing), "names the repository: {error}");
    assert!(
        error.contains("404"),
        "says what the server answered: {error}"
    );
    assert!(service.snapshots(missing).is_empty());
    assert_eq!(files(&data.join("vault")), vault_before, "vault changed");
    assert_eq!(files(&data.join("fetch")), Vec::<std::path::PathBuf>::new());
    assert!(
        files(&data)
            .iter()
            .all(|p| !p.to_string_lossy().contains("no-such-repo")),
        "{:?}",
        files(&data)
    );
    service.stop();
}

/// A second `serve` on a store in use exits 1 with one plain line naming
/// the queue; read commands run side by side, beside `serve` and without
/// it, and never claim that a `serve` is running.
#[test]
fn second_serve_is_refused_and_read_commands_run_side_by_side() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let service = Service::start(&tmp.path().join("hv"), &server, "");
    service.push("lock-1", &branch_push(REPO, "main", None, &head));
    assert_eq!(service.outcome("lock-1")["status"], "done");

    let second = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(&service.config)
        .arg("serve")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("second serve");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let message = lines.last().copied().unwrap_or_default();
    assert!(
        message.starts_with("hookvault: the delivery queue at ")
            && message.ends_with("is in use by another `hookvault serve`"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");
    assert!(!stderr.contains("Io("), "no debug form: {stderr}");
    assert!(second.stdout.is_empty(), "never said it listens");
    // The first service is unaffected.
    assert_eq!(service.api("stats").0, 200);

    let run_two_at_once = |config: &Path| {
        let spawn = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
                .arg("--config")
                .arg(config)
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("read command")
        };
        let a = spawn(&["snapshots", "--repo", REPO]);
        let b = spawn(&["stats"]);
        for child in [a, b] {
            let out = child.wait_with_output().expect("wait");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stderr}");
            assert!(!stderr.contains("serve"), "{stderr}");
            assert!(!out.stdout.is_empty());
        }
    };
    run_two_at_once(&service.config);
    let config = service.config.clone();
    service.stop();
    run_two_at_once(&config);
}

/// `hookvault events` on the CLI, JSON.
fn events_json(config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(config)
        .arg("events")
        .args(args)
        .arg("--json")
        .output()
        .expect("events");
    assert!(
        out.status.success(),
        "events {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// A token the git server refuses: the delivery fails once with the reason
/// in words and is not retried; `events --failed` and the stats show it;
/// Bitbucket's resend and `events retry` (through the running service and
/// without one) queue it again; with the token fixed it is backed up.
#[test]
fn events_show_a_refused_token_and_retry_queues_it_again() {
    let OneCommitRepo {
        tmp, server, head, ..
    } = one_commit_repo(REPO);
    let dir = tmp.path().join("hv");
    let good = config_text(&dir.join("data"), &server, 3, 50, "");
    let wrong = good.replace(TOKEN, "wrong-token-77aa");
    let service = Service::start_config(&dir, &wrong);
    let body = branch_push(REPO, "main", None, &head);
    let id = "{22222222-aaaa-4bbb-8ccc-000000000001}";
    service.push(id, &body);
    let outcome = service.outcome(id);
    assert_eq!(outcome["status"], "failed", "{outcome}");
    assert_eq!(outcome["attempts"], 1, "a refused token is not retried");
    assert_eq!(outcome["failure"], "permanent");
    let error = outcome["last_error"].as_str().unwrap_or_default();
    assert!(
        error.ends_with("remote answered 401: the token was refused") && error.contains(REPO),
        "{error}"
    );
    assert!(!service.log().contains("will retry"), "{}", service.log());

    // Listing beside the running service: through its API; `--repo`
    // leaves out other repositories.
    let other = "acme-eng/other";
    let failed = events_json(&service.config, &["--failed"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["id"], id);
    assert_eq!(failed[0]["repo"], REPO);
    assert_eq!(failed[0]["attempts"], 1);
    assert_eq!(failed[0]["failure"], "permanent");
    assert!(failed[0]["last_attempt_ms"].as_u64().is_some());
    assert!(events_json(&service.config, &["--repo", other]).is_empty());
    let out = service.cli(&["events", "--failed"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human.contains(id)
            && human.contains("failed (permanent)")
            && human.contains("attempts=1")
            && human.contains("remote answered 401: the token was refused"),
        "{human}"
    );

    // Stats count it, in the API and on the CLI.
    let stats = service.stats();
    assert_eq!(stats["queue"]["failed"], 1, "{stats}");
    assert_eq!(stats["queue"]["failed_permanent"], 1, "{stats}");
    assert_eq!(stats["queue"]["failed_after_retries"], 0, "{stats}");
    let out = service.cli(&["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(cli_stats["queue"], stats["queue"]);
    let out = service.cli(&["stats"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 failed (1 permanent"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Bitbucket resends the failed delivery: queued again, fails again once.
    let signature = sign(SECRET.as_bytes(), &body);
    let (status, reply) = service.deliver("repo:push", id, &body, Some(&signature));
    assert_eq!(
        (status, &reply["status"]),
        (202, &serde_json::json!("requeued")),
        "{reply}"
    );
    let outcome = service.outcome(id);
    assert_eq!(
        (&outcome["status"], &outcome["attempts"]),
        (&serde_json::json!("failed"), &serde_json::json!(1)),
        "{outcome}"
    );
    // `events retry --all-failed` through the running service.
    let out = service.cli(&["events", "retry", "--all-failed", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requeued: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(requeued["requeued"], serde_json::json!([id]));
    assert_eq!(service.outcome(id)["status"], "failed");
    service.stop();

    // The token fixed; `events retry ID` with no service running.
    std::fs::write(service_config(&dir), &good).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(service_config(&dir))
        .args(["events", "retry", id])
        .output()
        .expect("retry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = events_json(&service_config(&dir), &[]);
    assert_eq!(listed[0]["status"], "queued", "{listed:?}");
    assert_eq!(listed[0]["attempts"], 0);

    let service = Service::launch(&dir, service_config(&dir));
    let outcome = service.outcome(id);
    assert_eq!(outcome["status"], "done", "{outcome}\n{}", service.log());
    assert_eq!(service.snapshots(REPO).len(), 1);
    // A resend of a delivery that succeeded stays a duplicate.
    let (status, reply) = service.deliver("repo:push", id, &body, Some(&signature));
    assert_eq!(
        (status, &reply["status"]),
        (200, &serde_json::json!("duplicate")),
        "{reply}"
    );
    // Only failed deliveries are retried.
    let out = service.cli(&["events", "retry", id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has not failed (it is done)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = service.stats();
    assert_eq!(
        (&stats["queue"]["failed"], &stats["queue"]["done"]),
        (&serde_json::json!(0), &serde_json::json!(1)),
        "{stats}"
    );
    service.stop();
}

fn service_config(dir: &Path) -> std::path::PathBuf {
    dir.join("hookvault.toml")
}

/// A repository `repo` on `server` with one commit on `main`, and a work
/// tree under `work` to push more from; returns the work tree and the head.
fn served_repo(server: &GitServer, work: &Path, repo: &str) -> (WorkTree, String) {
    let upstream = server.create(repo);
    let tree = WorkTree::new(work, &upstream);
    let head = tree.commit("a.txt", "a\n", "A");
    tree.git(&["push", "-q", "origin", "main"]);
    (tree, head)
}

/// The record of `delivery` once it has an outcome, waited for at most
/// `limit`.
fn outcome_within(service: &Service, delivery: &str, limit: Duration) -> serde_json::Value {
    wait_until(&format!("delivery {delivery}"), limit, || {
        let (status, record) = service.api(&format!("deliveries/{delivery}"));
        (status == 200 && record["status"] != "queued").then_some(record)
    })
}

/// One remote that hangs holds one worker: a push to another repository
/// queued behind it is backed up at once, and the hung repository's next
/// push waits for its first rather than starting a second backup of it.
#[test]
fn workers_back_up_other_repositories_while_one_remote_hangs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let (_hung_work, hung_head) = served_repo(&server, &tmp.path().join("hung"), "acme/hung");
    let (_free_work, free_head) = served_repo(&server, &tmp.path().join("free"), "acme/free");
    let hold = server.hold("acme/hung");
    let service = Service::start(&tmp.path().join("hv"), &server, "");

    let hung_push = branch_push("acme/hung", "main", None, &hung_head);
    service.push("hung-1", &hung_push);
    wait_until(
        "the hung remote's first request",
        Duration::from_secs(30),
        || (hold.arrived() >= 1).then_some(()),
    );
    service.push("hung-2", &hung_push);
    service.push(
        "free-1",
        &branch_push("acme/free", "main", None, &free_head),
    );
    // Well within the 30 s the hung fetch holds its worker.
    let free = outcome_within(&service, "free-1", Duration::from_secs(20));
    assert_eq!(free["status"], "done", "{free}");
    let snapshots = service.snapshots("acme/free");
    assert_eq!(snapshots.len(), 1);
    assert_eq!(free["snapshot"], snapshots[0]["id"]);
    // hung-2 was queued before free-1 and the workers take the oldest
    // entry first: had it been free to start, it would have.
    let (_, second) = service.api("deliveries/hung-2");
    assert_eq!(
        (second["status"].as_str(), second["attempts"].as_u64()),
        (Some("queued"), Some(0)),
        "a second backup of the hung repository started: {second}"
    );
    assert_eq!(hold.arrived(), 1, "two fetches of one repository at once");

    hold.release();
    for id in ["hung-1", "hung-2"] {
        let record = service.outcome(id);
        assert_eq!(record["status"], "done", "{record}");
    }
    let snapshots = service.snapshots("acme/hung");
    assert_eq!(snapshots.len(), 1, "the second push changed nothing");
    assert_eq!(snapshots[0]["delivery_id"], "hung-1");
    service.stop_within(Duration::from_secs(30));
}

/// Pushes of one repository queued while the only worker is busy are
/// answered by one fetch: one snapshot, named by every delivery's record.
#[test]
fn workers_answer_queued_pushes_of_one_repository_with_one_backup() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let (_busy_work, busy_head) = served_repo(&server, &tmp.path().join("busy"), "acme/busy");
    let (work, head) = served_repo(&server, &tmp.path().join("app"), "acme/app");
    let hold = server.hold("acme/busy");
    let dir = tmp.path().join("hv");
    let text = config_text(&dir.join("data"), &server, 2, 50, "").replace(
        "retry_base_ms = 50\n",
        "retry_base_ms = 50\nconcurrency = 1\n",
    );
    assert!(text.contains("concurrency = 1"));
    let service = Service::start_config(&dir, &text);

    // The only worker waits on another repository's remote ...
    service.push(
        "busy-1",
        &branch_push("acme/busy", "main", None, &busy_head),
    );
    wait_until(
        "the busy remote's first request",
        Duration::from_secs(30),
        || (hold.arrived() >= 1).then_some(()),
    );
    // ... while two pushes of acme/app are queued behind it.
    let second = work.commit("b.txt", "b\n", "B");
    work.git(&["push", "-q", "origin", "main"]);
    service.push(
        "app-1",
        &branch_push("acme/app", "main", Some(&head), &second),
    );
    let third = work.commit("c.txt", "c\n", "C");
    work.git(&["push", "-q", "origin", "main"]);
    service.push(
        "app-2",
        &branch_push("acme/app", "main", Some(&second), &third),
    );
    hold.release();

    let first = service.outcome("app-1");
    let other = service.outcome("app-2");
    for record in [&first, &other] {
        assert_eq!(record["status"], "done", "{record}");
        assert_eq!(record["attempts"], 1, "{record}");
    }
    let snapshots = service.snapshots("acme/app");
    assert_eq!(
        snapshots.len(),
        1,
        "one fetch for both pushes: {snapshots:?}"
    );
    assert_eq!(snapshots[0]["refs"]["refs/heads/main"], third.as_str());
    assert_eq!(snapshots[0]["delivery_id"], "app-1");
    assert_eq!(first["snapshot"], snapshots[0]["id"]);
    assert_eq!(other["snapshot"], snapshots[0]["id"], "{other}");
    assert!(
        service.log().contains("answered by this backup"),
        "the log names the deliveries answered together"
    );
    service.stop();
}

/// A backup that copies many objects draws a bar per repository when
/// `serve` has a terminal, between its log lines; with its output piped
/// (a service manager, a file) the log has no bar.
#[test]
fn a_large_backup_draws_a_progress_bar_only_on_a_terminal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(REPO);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    for i in 0..600 {
        let path = work.dir.join(format!("files/{:02}/f{i}.txt", i % 40));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, format!("file {i}\n")).expect("write");
    }
    let tip = work.commit("README.md", "many files\n", "Many");
    work.git(&["push", "-q", "origin", "main"]);
    let body = branch_push(REPO, "main", None, &tip);

    let dir = tmp.path().join("terminal");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("hookvault.toml");
    std::fs::write(&config, config_text(&dir.join("data"), &server, 2, 50, "")).expect("config");
    let on_terminal = Service::launch_on_terminal(&dir, config);
    on_terminal.push("{99999999-aaaa-4bbb-8ccc-000000000001}", &body);
    let outcome = on_terminal.outcome("{99999999-aaaa-4bbb-8ccc-000000000001}");
    assert_eq!(
        outcome["status"],
        "done",
        "{outcome}\n{}",
        on_terminal.log()
    );
    let drawn = on_terminal.log();
    assert!(drawn.contains("copying objects"), "{drawn}");
    assert!(
        drawn.contains("backup done"),
        "log lines still shown: {drawn}"
    );
    drop(on_terminal);

    let piped = Service::start(&tmp.path().join("piped"), &server, "");
    piped.push("{99999999-aaaa-4bbb-8ccc-000000000002}", &body);
    let outcome = piped.outcome("{99999999-aaaa-4bbb-8ccc-000000000002}");
    assert_eq!(outcome["status"], "done", "{outcome}");
    let log = piped.log();
    assert!(
        log.contains("backup done") && !log.contains("copying objects"),
        "{log}"
    );
    piped.stop();
}

/// The `plugins loaded` line of a service's log: (compiled, from cache).
fn plugins_loaded(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("plugins loaded") && l.contains("from_cache="))
        .unwrap_or_else(|| panic!("no `plugins loaded` line in:\n{log}"));
    let field = |name: &str| -> u64 {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            + name.len()
            + 1;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number for {name} in {line}"))
    };
    (field("compiled"), field("from_cache"))
}

#[test]
fn a_restart_loads_compiled_plugins_from_the_cache_and_a_damaged_entry_is_compiled_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let dir = tmp.path().join("service");
    let service = Service::start(&dir, &server, "");
    let (compiled, from_cache) = plugins_loaded(&service.log());
    assert!(compiled >= 1 && from_cache == 0, "{compiled} {from_cache}");
    service.stop();
    let cache = dir.join("data/plugin-cache");
    assert!(
        !files(&cache).is_empty(),
        "nothing cached in {}",
        cache.display()
    );

    let service = Service::start(&dir, &server, "");
    assert_eq!(plugins_loaded(&service.log()), (0, compiled));
    service.stop();

    // Every cached entry cut short: each is compiled again, and the
    // service starts as before.
    for file in files(&cache) {
        let bytes = std::fs::read(&file).expect("read");
        std::fs::write(&file, &bytes[..bytes.len() / 2]).expect("truncate");
    }
    let service = Service::start(&dir, &server, "");
    let (again, _) = plugins_loaded(&service.log());
    assert_eq!(again, compiled, "{}", service.log());
    let health =
        reqwest::blocking::get(format!("http://{}/healthz", service.addr)).expect("healthz");
    assert_eq!(health.status(), 200);
}
