//! End to end for Bitbucket in full: every payload shape through the real
//! endpoint, reconciliation against a double of the documented REST API
//! (git itself served for real), hooks registration, pull-request backup
//! and export.

mod support;

use std::path::Path;

use hookvault::bitbucket::signature::sign;
use hookvault::config::SourceKind;
use hookvault::event::now_ms;
use serde_json::{Value, json};
use support::bitbucket_double::BitbucketDouble;
use support::*;

const REPO: &str = "acme-eng/billing-service";
const DC_SECRET: &str = "dc-secret-7a1f";

fn config(dir: &Path, git: &GitServer, double: &BitbucketDouble, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN}"

[store]
path = "{store}"

[worker]
max_attempts = 2
retry_base_ms = 50

[reconcile]
interval_secs = 3600

[[sources]]
name = "cloud"
kind = "cloud"
secrets = ["{SECRET}"]
git_url = "http://{git}/{{repo}}.git"
api_url = "{cloud_api}"
workspaces = ["acme-eng"]
credentials = {{ kind = "access-token", token = "{TOKEN}" }}

[[sources]]
name = "dc"
kind = "data-center"
secrets = ["{DC_SECRET}"]
git_url = "http://{git}/{{repo}}.git"
api_url = "{dc_api}"
credentials = {{ kind = "http-access-token", token = "{TOKEN}" }}

[[plugins]]
name = "git-backup"
kind = "backup"
builtin = "git-backup"

[[plugins]]
name = "pr-metadata"
kind = "backup"
builtin = "pr-metadata"
{extra}
"#,
        store = dir.join("data").display(),
        git = git.addr,
        cloud_api = double.cloud_base(),
        dc_api = double.dc_base(),
    )
}

/// The config with no workspaces to reconcile.
fn without_reconcile(config: &str) -> String {
    config.replace("workspaces = [\"acme-eng\"]", "")
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/payloads")
            .join(name),
    )
    .expect("example payload")
}

fn wait_for_snapshots(service: &Service, repo: &str, n: usize) -> Vec<Value> {
    wait_until(
        &format!("{n} snapshots of {repo}"),
        std::time::Duration::from_secs(120),
        || {
            let list = service.snapshots(repo);
            (list.len() >= n).then_some(list)
        },
    )
}

fn cloud_headers<'a>(key: &'a str, id: &'a str, signature: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Event-Key", key),
        ("X-Request-UUID", id),
        ("X-Hook-UUID", "{0c6a2b7e-1f3d-4e5a-9b8c-7d6e5f4a3b2c}"),
        ("X-Attempt-Number", "1"),
        ("User-Agent", "Bitbucket-Webhooks/2.0"),
        ("X-Hub-Signature", signature),
    ]
}

fn dc_headers<'a>(key: &'a str, id: &'a str, signature: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Event-Key", key),
        ("X-Request-Id", id),
        ("X-Hub-Signature", signature),
    ]
}

/// A push whose webhook is dropped is still backed up by the next
/// reconcile; a repository created after start-up is backed up too; 429s
/// from the API are waited out.
#[test]
fn reconciler_catches_dropped_webhooks_and_new_repositories() {
    let OneCommitRepo {
        tmp,
        server,
        work,
        head: first,
        ..
    } = one_commit_repo(REPO);
    let double = BitbucketDouble::start(TOKEN);
    double.add_repo(SourceKind::Cloud, REPO);

    let dir = tmp.path().join("hv");
    let service = Service::start_config(&dir, &config(&dir, &server, &double, ""));
    // The start-up pass backs up what exists, without any webhook.
    let snaps = wait_for_snapshots(&service, REPO, 1);
    assert_eq!(snaps[0]["refs"]["refs/heads/main"], first.as_str());
    assert_eq!(snaps[0]["event_key"], "hookvault:reconcile");

    // A push whose webhook never arrives.
    let second = work.commit("b.txt", "b\n", "B");
    work.git(&["push", "-q", "origin", "main"]);
    let report = service.reconcile();
    assert_eq!(
        report["queued"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
    let snaps = wait_for_snapshots(&service, REPO, 2);
    assert_eq!(snaps[1]["refs"]["refs/heads/main"], second.as_str());

    // A repository created after start-up, behind two 429s.
    let other = "acme-eng/new-service";
    let other_upstream = server.create(other);
    let other_work = WorkTree::new(&tmp.path().join("other"), &other_upstream);
    let other_head = other_work.commit("x.txt", "x\n", "X");
    other_work.git(&["push", "-q", "origin", "main"]);
    double.add_repo(SourceKind::Cloud, other);
    double.fail_next_with_429(2);
    let report = service.reconcile();
    assert!(
        report["errors"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    let snaps = wait_for_snapshots(&service, other, 1);
    assert_eq!(snaps[0]["refs"]["refs/heads/main"], other_head.as_str());

    // Nothing changed: nothing queued.
    wait_until("queue drained", std::time::Duration::from_secs(60), || {
        (service.stats()["queue"]["pending"] == 0).then_some(())
    });
    let report = service.reconcile();
    assert_eq!(
        report["queued"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert_eq!(report["repositories"], 2);
    service.stop();
}

/// Registering twice leaves one hook (Cloud repository and DC project);
/// the generated secret is accepted by the running service; list and
/// remove work.
#[test]
fn hooks_register_is_idempotent_and_secret_is_accepted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let double = BitbucketDouble::start(TOKEN);
    let dir = tmp.path().join("hv");
    let text = without_reconcile(&config(&dir, &server, &double, ""));
    let service = Service::start_config(&dir, &text);
    let url = "https://hookvault.acme.example/webhooks/bitbucket/cloud";
    for round in 0..2 {
        let out = service.cli(&[
            "hooks", "register", "--source", "cloud", "--repo", REPO, "--url", url, "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outcome: Value = serde_json::from_slice(&out.stdout).expect("json");
        let expected = if round == 0 {
            "created"
        } else {
            "already-registered"
        };
        assert_eq!(outcome["outcome"], expected, "{outcome}");
    }
    let hooks = double.hooks(SourceKind::Cloud, REPO);
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(hooks[0]["url"], url);
    assert!(
        hooks[0]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|k| k == "repo:push"))
    );

    for _ in 0..2 {
        let out = service.cli(&[
            "hooks",
            "register",
            "--source",
            "dc",
            "--workspace",
            "PAY",
            "--url",
            "https://hookvault.acme.example/webhooks/bitbucket/dc",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(double.hooks(SourceKind::DataCenter, "PAY").len(), 1);

    // The generated secret was kept and the running service accepts it.
    let secrets = std::fs::read_to_string(dir.join("data/hook-secrets/cloud")).expect("secrets");
    let line = secrets.lines().next().expect("one secret");
    let secret = line.split('\t').next().expect("secret").to_string();
    assert_eq!(line, format!("{secret}\t{REPO}\t{url}"));
    assert_eq!(secret.len(), 64);
    let body = cloud_push(REPO, &[]);
    let signature = sign(secret.as_bytes(), &body);
    let (status, reply) = service.post(
        "/webhooks/bitbucket/cloud",
        &cloud_headers("repo:push", "hook-secret-1", &signature),
        &body,
    );
    assert_eq!(status, 202, "{reply}");

    let out = service.cli(&[
        "hooks", "list", "--source", "cloud", "--repo", REPO, "--json",
    ]);
    assert!(out.status.success());
    let listed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed.len(), 1);
    let out = service.cli(&[
        "hooks", "remove", "--source", "cloud", "--repo", REPO, "--url", url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(double.hooks(SourceKind::Cloud, REPO).is_empty());
    // The removed hook's secret is revoked: the running service refuses it.
    let (status, reply) = service.post(
        "/webhooks/bitbucket/cloud",
        &cloud_headers("repo:push", "hook-secret-2", &signature),
        &body,
    );
    assert_eq!(status, 401, "{reply}");
    // Hostile names never reach the API.
    let out = service.cli(&["hooks", "list", "--source", "cloud", "--repo", "../../etc"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid repository name"));
    service.stop();
}

/// Pull requests and comments from webhooks and from the REST backfill are
/// stored as versioned documents and export to readable Markdown.
#[test]
fn pull_requests_and_comments_export_to_markdown() {
    let OneCommitRepo { tmp, server, .. } = one_commit_repo(REPO);
    let double = BitbucketDouble::start(TOKEN);
    let dir = tmp.path().join("hv");
    // Workspaces off for now: the backfill is triggered later.
    let text = without_reconcile(&config(&dir, &server, &double, ""));
    let service = Service::start_config(&dir, &text);

    let send = |key: &str, id: &str, body: &[u8]| {
        let signature = sign(SECRET.as_bytes(), body);
        let (status, reply) = service.post(
            "/webhooks/bitbucket",
            &cloud_headers(key, id, &signature),
            body,
        );
        assert_eq!(status, 202, "{key}: {reply}");
        let outcome = service.outcome(id);
        assert_eq!(
            outcome["status"],
            "done",
            "{key}: {outcome}\n{}",
            service.log()
        );
    };
    send(
        "pullrequest:created",
        "pr-1",
        &example("cloud-pullrequest-created.json"),
    );
    let before_comments = now_ms();
    wait_until(
        "the clock to move",
        std::time::Duration::from_secs(5),
        || (now_ms() > before_comments).then_some(()),
    );
    let comment = example("cloud-pullrequest-comment-created.json");
    send("pullrequest:comment_created", "pr-2", &comment);
    let mut reply: Value = serde_json::from_slice(&comment).expect("json");
    reply["comment"]["id"] = json!(518273700);
    reply["comment"]["parent"] = json!({ "id": 518273645 });
    reply["comment"]["inline"] = Value::Null;
    reply["comment"]["content"]["raw"] = json!("Yes: make it a setting, default 3.");
    reply["comment"]["user"] = json!({ "display_name": "Lars Nyberg" });
    send(
        "pullrequest:comment_created",
        "pr-3",
        &serde_json::to_vec(&reply).expect("json"),
    );
    // An older state arriving late (a retried delivery) must not win.
    let mut stale: Value =
        serde_json::from_slice(&example("cloud-pullrequest-created.json")).expect("json");
    stale["pullrequest"]["title"] = json!("Stale title");
    stale["pullrequest"]["updated_on"] = json!("2026-03-04T16:40:00+00:00");
    send(
        "pullrequest:updated",
        "pr-4",
        &serde_json::to_vec(&stale).expect("json"),
    );

    // History from before hookvault: a merged PR with a thread, via REST.
    double.add_repo(SourceKind::Cloud, REPO);
    double.add_pull_request(
        SourceKind::Cloud,
        REPO,
        json!({
            "id": 7, "title": "Drop the old export", "state": "MERGED",
            "description": "Nobody uses it since 2025.",
            "author": { "display_name": "Dana Okafor" },
            "source": { "branch": { "name": "feature/old-export" }, "commit": { "hash": "a3c5e7f9b1d3" } },
            "destination": { "branch": { "name": "main" }, "commit": { "hash": "4b8e2f1a9c3d" } },
            "created_on": "2026-02-11T10:20:30+00:00", "updated_on": "2026-02-12T08:00:00+00:00"
        }),
    );
    double.add_comment(
        SourceKind::Cloud,
        REPO,
        7,
        json!({
            "id": 9001, "content": { "raw": "Checked the logs: zero calls." },
            "user": { "display_name": "Lars Nyberg" }, "created_on": "2026-02-11T11:00:00+00:00"
        }),
    );
    double.add_comment(
        SourceKind::Cloud,
        REPO,
        7,
        json!({
            "id": 9002, "content": { "raw": "Great, merging." }, "parent": { "id": 9001 },
            "user": { "display_name": "Dana Okafor" }, "created_on": "2026-02-11T12:00:00+00:00"
        }),
    );
    service.stop();
    let text = config(&dir, &server, &double, "");
    std::fs::write(dir.join("hookvault.toml"), &text).expect("config");
    let service = Service::launch(&dir, dir.join("hookvault.toml"));
    let report = service.reconcile();
    let queued: Vec<String> = report["queued"]
        .as_array()
        .expect("queued")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    // The start-up pass may have queued the backfill already.
    for id in queued.iter().filter(|id| id.starts_with("backfill:")) {
        assert_eq!(service.outcome(id)["status"], "done");
    }
    wait_until("PR 7 stored", std::time::Duration::from_secs(60), || {
        (service.stats()["store"]["document_versions"].as_u64() >= Some(4)).then_some(())
    });
    let config_path = service.config.clone();
    service.stop();

    let export = tmp.path().join("export");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(&config_path)
        .args(["export-metadata", "--repo", REPO, "--to"])
        .arg(&export)
        .output()
        .expect("export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(export.join("pull-requests/42.md")).expect("42.md");
    assert!(
        md.starts_with("# #42 Retry idempotent invoice writes\n"),
        "{md}"
    );
    assert!(
        md.contains("- **Branches:** `feature/invoice-retries` → `main`"),
        "{md}"
    );
    let question = md
        .find("Should the retry budget be configurable?")
        .expect("comment");
    let answer = md
        .find("> Yes: make it a setting, default 3.")
        .expect("reply, quoted");
    assert!(question < answer, "{md}");
    assert!(md.contains("_on `src/invoice/store.rs` line 88_"), "{md}");
    let json: Value =
        serde_json::from_slice(&std::fs::read(export.join("pull-requests/42.json")).expect("json"))
            .expect("valid json");
    assert_eq!(json["comments"].as_array().map(Vec::len), Some(2));
    let old = std::fs::read_to_string(export.join("pull-requests/7.md")).expect("7.md");
    assert!(old.contains("- **State:** MERGED"), "{old}");
    assert!(
        old.contains("Checked the logs: zero calls.") && old.contains("> Great, merging."),
        "{old}"
    );
    let index = std::fs::read_to_string(export.join("README.md")).expect("index");
    assert!(
        index.contains("[42](pull-requests/42.md)") && index.contains("[7](pull-requests/7.md)")
    );

    // As it was before the comments arrived: the PR, no comments.
    let at =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(before_comments) * 1_000_000)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
    let earlier = tmp.path().join("export-earlier");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(&config_path)
        .args(["export-metadata", "--repo", REPO, "--at", &at, "--to"])
        .arg(&earlier)
        .output()
        .expect("export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(earlier.join("pull-requests/42.md")).expect("42.md");
    assert!(md.contains("## Comments (0)"), "{md}");
    assert!(!earlier.join("pull-requests/7.md").exists());
}

/// Every payload shape, Cloud and Data Center, through the real endpoint.
#[test]
fn every_payload_shape_through_the_endpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let double = BitbucketDouble::start(TOKEN);
    // Both repositories exist so the backups they trigger succeed.
    for repo in [REPO, "PAY/billing-service", "~dokafor/scratch"] {
        let upstream = server.create(repo);
        let work = WorkTree::new(&tmp.path().join(repo.replace('/', "_")), &upstream);
        work.commit("a.txt", "a\n", "A");
        work.git(&["push", "-q", "origin", "main"]);
    }
    let dir = tmp.path().join("hv");
    let text = without_reconcile(&config(&dir, &server, &double, ""));
    let service = Service::start_config(&dir, &text);
    let delivery = |id: &str| service.api(&format!("deliveries/{id}"));

    // Data Center ping: unsigned, 200, nothing recorded.
    let (status, _) = service.post(
        "/webhooks/bitbucket/dc",
        &[
            ("X-Event-Key", "diagnostics:ping"),
            ("X-Request-Id", "ping-1"),
        ],
        &example("dc-diagnostics-ping.json"),
    );
    assert_eq!(status, 200);
    assert_eq!(delivery("ping-1").0, 404);

    let mut dc_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "repo:refs_changed",
            example("dc-repo-refs-changed.json"),
            "push",
        ),
        ("pr:opened", example("dc-pr-opened.json"), "pull-request"),
    ];
    // Variants Bitbucket really sends: offsets without a colon, ISO instead
    // of epoch-ms timestamps, missing links/commits, old key spellings, a
    // personal project.
    let mut refs: Value =
        serde_json::from_slice(&example("dc-repo-refs-changed.json")).expect("json");
    refs["date"] = json!("2026-03-05T02:41:27+1000");
    refs.as_object_mut().expect("object").remove("commits");
    refs.as_object_mut().expect("object").remove("toCommit");
    refs["repository"]
        .as_object_mut()
        .expect("object")
        .remove("links");
    refs["repository"]["project"] = json!({ "key": "~dokafor", "type": "PERSONAL" });
    refs["repository"]["slug"] = json!("scratch");
    dc_cases.push((
        "repo:refs_changed",
        serde_json::to_vec(&refs).expect("json"),
        "push",
    ));
    let mut pr: Value = serde_json::from_slice(&example("dc-pr-opened.json")).expect("json");
    pr["pullRequest"]["createdDate"] = json!("2026-03-04T17:45:03+0100");
    pr["pullRequest"]["updatedDate"] = json!("2026-03-04T17:45:03.118+01:00");
    dc_cases.push((
        "pr:reviewer:needs_work",
        serde_json::to_vec(&pr).expect("json"),
        "pull-request",
    ));
    let mut comment = pr.clone();
    comment["comment"] = json!({ "id": 77, "text": "Needs a test.", "author": { "displayName": "Lars Nyberg" }, "createdDate": 1772642703118u64 });
    comment["commentParentId"] = json!(70);
    dc_cases.push((
        "pr:comment:added",
        serde_json::to_vec(&comment).expect("json"),
        "comment",
    ));
    let modified = json!({
        "eventKey": "repo:modified", "date": "2026-03-04T17:41:27+0100",
        "old": { "slug": "billing", "project": { "key": "PAY" } },
        "new": { "slug": "billing-service", "project": { "key": "PAY" } }
    });
    dc_cases.push((
        "repo:modified",
        serde_json::to_vec(&modified).expect("json"),
        "repository",
    ));
    let forked = json!({
        "eventKey": "repo:forked", "date": "2026-03-04T17:41:27+0100",
        "actor": { "name": "dokafor" },
        "repository": { "slug": "billing-fork", "project": { "key": "~dokafor" },
                        "origin": { "slug": "billing-service", "project": { "key": "PAY" } } }
    });
    dc_cases.push((
        "repo:forked",
        serde_json::to_vec(&forked).expect("json"),
        "repository",
    ));
    let mut mirrored: Value =
        serde_json::from_slice(&example("dc-repo-refs-changed.json")).expect("json");
    let changes = mirrored
        .as_object_mut()
        .expect("object")
        .remove("changes")
        .expect("changes");
    mirrored["refChanges"] = changes;
    dc_cases.push((
        "mirror:repo_synchronized",
        serde_json::to_vec(&mirrored).expect("json"),
        "push",
    ));
    dc_cases.push((
        "pr:declined",
        serde_json::to_vec(&pr).expect("json"),
        "pull-request",
    ));
    dc_cases.push((
        "pr:comment:edited",
        serde_json::to_vec(&comment).expect("json"),
        "comment",
    ));

    for (n, (key, body, kind)) in dc_cases.iter().enumerate() {
        let id = format!("dc-{n}");
        let signature = sign(DC_SECRET.as_bytes(), body);
        let (status, reply) = service.post(
            "/webhooks/bitbucket/dc",
            &dc_headers(key, &id, &signature),
            body,
        );
        assert_eq!(status, 202, "{key}: {reply}");
        let (status, record) = delivery(&id);
        assert_eq!(status, 200);
        assert_eq!(record["event"]["kind"], *kind, "{key}: {record}");
        // Redelivery with the same X-Request-Id: acknowledged, not queued.
        let (status, reply) = service.post(
            "/webhooks/bitbucket/dc",
            &dc_headers(key, &id, &signature),
            body,
        );
        assert_eq!((status, reply["status"].as_str()), (200, Some("duplicate")));
    }
    assert_eq!(
        delivery("dc-2").1["event"]["repository"],
        "~dokafor/scratch"
    );
    assert_eq!(delivery("dc-4").1["event"]["comment"]["parent"], 70);
    assert_eq!(
        delivery("dc-4").1["event"]["comment"]["created"],
        "2026-03-04T16:45:03.118Z"
    );
    assert_eq!(
        delivery("dc-3").1["event"]["pull_request"]["created"],
        "2026-03-04T16:45:03.000Z"
    );
    assert_eq!(delivery("dc-5").1["event"]["previous_name"], "PAY/billing");
    assert_eq!(
        delivery("dc-6").1["event"]["repository"],
        "~dokafor/billing-fork"
    );
    assert_eq!(
        delivery("dc-7").1["event"]["changes"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "refChanges spelling"
    );

    let mut cloud_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("repo:push", example("cloud-repo-push.json"), "push"),
        (
            "pullrequest:created",
            example("cloud-pullrequest-created.json"),
            "pull-request",
        ),
        (
            "pullrequest:comment_created",
            example("cloud-pullrequest-comment-created.json"),
            "comment",
        ),
    ];
    let mut bare: Value = serde_json::from_slice(&example("cloud-repo-push.json")).expect("json");
    for key in ["workspace", "project", "links"] {
        bare["repository"]
            .as_object_mut()
            .expect("object")
            .remove(key);
    }
    for change in bare["push"]["changes"].as_array_mut().expect("changes") {
        change.as_object_mut().expect("object").remove("commits");
        change.as_object_mut().expect("object").remove("links");
    }
    cloud_cases.push((
        "repo:push",
        serde_json::to_vec(&bare).expect("json"),
        "push",
    ));
    let fork = json!({
        "actor": { "display_name": "Dana Okafor" },
        "repository": { "full_name": REPO },
        "fork": { "full_name": "acme-eng/billing-service-fork" }
    });
    cloud_cases.push((
        "repo:fork",
        serde_json::to_vec(&fork).expect("json"),
        "repository",
    ));
    let deleted = json!({ "repository": { "full_name": "acme-eng/old-thing" } });
    cloud_cases.push((
        "repo:deleted",
        serde_json::to_vec(&deleted).expect("json"),
        "repository-deleted",
    ));
    let renamed = json!({
        "actor": { "display_name": "Dana Okafor" },
        "repository": { "full_name": REPO },
        "changes": { "full_name": { "old": "acme-eng/billing", "new": REPO } }
    });
    cloud_cases.push((
        "repo:updated",
        serde_json::to_vec(&renamed).expect("json"),
        "repository",
    ));
    let transferred = json!({
        "repository": { "full_name": REPO },
        "previous_workspace": { "slug": "acme-old" }
    });
    cloud_cases.push((
        "repo:transfer",
        serde_json::to_vec(&transferred).expect("json"),
        "repository",
    ));
    let mut merged: Value =
        serde_json::from_slice(&example("cloud-pullrequest-created.json")).expect("json");
    merged["pullrequest"]["state"] = json!("MERGED");
    cloud_cases.push((
        "pullrequest:fulfilled",
        serde_json::to_vec(&merged).expect("json"),
        "pull-request",
    ));
    cloud_cases.push((
        "pullrequest:comment_deleted",
        example("cloud-pullrequest-comment-created.json"),
        "comment",
    ));
    for (n, (key, body, kind)) in cloud_cases.iter().enumerate() {
        let id = format!("cloud-{n}");
        let signature = sign(SECRET.as_bytes(), body);
        let (status, reply) = service.post(
            "/webhooks/bitbucket/cloud",
            &cloud_headers(key, &id, &signature),
            body,
        );
        assert_eq!(status, 202, "{key}: {reply}");
        assert_eq!(delivery(&id).1["event"]["kind"], *kind, "{key}");
    }
    assert_eq!(
        delivery("cloud-4").1["event"]["repository"],
        "acme-eng/billing-service-fork"
    );
    assert_eq!(
        delivery("cloud-6").1["event"]["previous_name"],
        "acme-eng/billing"
    );
    assert_eq!(
        delivery("cloud-7").1["event"]["previous_name"],
        "acme-old/billing-service"
    );
    assert_eq!(
        delivery("cloud-8").1["event"]["pull_request"]["state"],
        "MERGED"
    );
    assert_eq!(delivery("cloud-9").1["event"]["comment"]["deleted"], true);

    // Unknown keys: 202, recorded, ignored.
    let body = br#"{"issue":{"id":1}}"#;
    let (status, reply) = service.post(
        "/webhooks/bitbucket/cloud",
        &cloud_headers("issue:created", "unknown-1", &sign(SECRET.as_bytes(), body)),
        body,
    );
    assert_eq!((status, reply["status"].as_str()), (202, Some("ignored")));
    assert_eq!(delivery("unknown-1").1["status"], "ignored");

    // Strict where it matters: a DC secret does not sign for Cloud, a
    // hostile DC repository is refused, nothing is recorded.
    let body = example("cloud-repo-push.json");
    let (status, _) = service.post(
        "/webhooks/bitbucket/cloud",
        &cloud_headers("repo:push", "cross-1", &sign(DC_SECRET.as_bytes(), &body)),
        &body,
    );
    assert_eq!(status, 401);
    let mut hostile: Value =
        serde_json::from_slice(&example("dc-repo-refs-changed.json")).expect("json");
    hostile["repository"]["project"]["key"] = json!("..");
    let body = serde_json::to_vec(&hostile).expect("json");
    let (status, reply) = service.post(
        "/webhooks/bitbucket/dc",
        &dc_headers(
            "repo:refs_changed",
            "hostile-1",
            &sign(DC_SECRET.as_bytes(), &body),
        ),
        &body,
    );
    assert_eq!(status, 400, "{reply}");
    assert_eq!(delivery("cross-1").0, 404);
    assert_eq!(delivery("hostile-1").0, 404);

    // Ref names as git check-ref-format checks them, object ids that are
    // not 40 hex digits, keys named twice: 400 naming the field, nothing
    // recorded.
    let refs_changed = |edit: &dyn Fn(&mut Value)| {
        let mut body: Value =
            serde_json::from_slice(&example("dc-repo-refs-changed.json")).expect("json");
        edit(&mut body);
        serde_json::to_vec(&body).expect("json")
    };
    let hash = "e91f3c7a2b5d8e0f4a6c1b3d5e7f9a0b2c4d6e8f";
    let mut strict_cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            refs_changed(&|b| b["changes"][0]["ref"]["id"] = json!("refs/heads/../../x")),
            "changes[0].ref.id: invalid ref name",
        ),
        (
            "escape",
            refs_changed(&|b| b["changes"][0]["ref"]["id"] = json!("refs/heads/\u{1b}[2K\nmain")),
            "changes[0].ref.id: invalid ref name",
        ),
        (
            "nul",
            refs_changed(&|b| {
                // The older spelling: `refId` without a `ref` object.
                b["changes"][1]
                    .as_object_mut()
                    .expect("change")
                    .remove("ref");
                b["changes"][1]["refId"] = json!("refs/tags/v\0");
            }),
            "changes[1].refId: invalid ref name",
        ),
        (
            "long",
            refs_changed(&|b| {
                b["changes"][0]["ref"]["id"] = json!(format!("refs/heads/{}", "x".repeat(5000)))
            }),
            "changes[0].ref.id: invalid ref name",
        ),
        (
            "number-hash",
            refs_changed(&|b| b["changes"][0]["toHash"] = json!(12345)),
            "changes[0].toHash: expected 40 hex digits",
        ),
        (
            "short-hash",
            refs_changed(&|b| b["changes"][2]["toHash"] = json!("12345")),
            "changes[2].toHash",
        ),
    ];
    let mut duplicate = refs_changed(&|_| {});
    let end = duplicate.iter().rposition(|&b| b == b'}').expect("object");
    duplicate.splice(
        end..end,
        format!(r#","changes":[{{"refId":"refs/heads/main","fromHash":"{hash}","toHash":"0000000000000000000000000000000000000000"}}]"#).into_bytes(),
    );
    strict_cases.push(("duplicate", duplicate, r#"duplicate key "changes""#));
    for (name, body, expected) in &strict_cases {
        let id = format!("strict-dc-{name}");
        let (status, reply) = service.post(
            "/webhooks/bitbucket/dc",
            &dc_headers("repo:refs_changed", &id, &sign(DC_SECRET.as_bytes(), body)),
            body,
        );
        assert_eq!(status, 400, "{name}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
        assert_eq!(delivery(&id).0, 404, "{name} was recorded");
    }
    let mut bad_ref: Value =
        serde_json::from_slice(&example("cloud-repo-push.json")).expect("json");
    bad_ref["push"]["changes"][0]["new"]["name"] = json!("main\n2026-01-01 forged line");
    let body = serde_json::to_vec(&bad_ref).expect("json");
    let (status, reply) = service.post(
        "/webhooks/bitbucket/cloud",
        &cloud_headers(
            "repo:push",
            "strict-cloud-1",
            &sign(SECRET.as_bytes(), &body),
        ),
        &body,
    );
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("push.changes[0].new.name: invalid ref name"),
        "{reply}"
    );
    assert_eq!(delivery("strict-cloud-1").0, 404);
    service.stop();
}

/// A source with an IP allowlist refuses other addresses.
#[test]
fn ip_allowlist_refuses_other_addresses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let double = BitbucketDouble::start(TOKEN);
    let dir = tmp.path().join("hv");
    let text = config(&dir, &server, &double, "").replace(
        "workspaces = [\"acme-eng\"]",
        "allow_ips = [\"104.192.136.0/21\", \"185.166.140.0/22\"]",
    );
    let service = Service::start_config(&dir, &text);
    let body = example("cloud-repo-push.json");
    let (status, reply) = service.post(
        "/webhooks/bitbucket/cloud",
        &cloud_headers("repo:push", "ip-1", &sign(SECRET.as_bytes(), &body)),
        &body,
    );
    assert_eq!(status, 403, "{reply}");
    assert_eq!(service.api("deliveries/ip-1").0, 404);
    service.stop();
}
