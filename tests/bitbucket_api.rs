//! The REST client (`hookvault::bitbucket::rest`) against the REST double
//! (`support::bitbucket_double`), both flavours: paging, rate limits,
//! webhooks, pull requests and their comments, authentication.

mod support;

use hookvault::bitbucket::rest::{Api, ApiError, HookSpec, HookTarget};
use hookvault::config::{SecretString, SourceConfig, SourceKind};
use hookvault::ids::RepoName;
use serde_json::json;
use support::bitbucket_double::BitbucketDouble;

const TOKEN: &str = "rest-token-3c7d";
const KINDS: [SourceKind; 2] = [SourceKind::Cloud, SourceKind::DataCenter];

fn scope(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Cloud => "acme",
        SourceKind::DataCenter => "PRJ",
    }
}

fn repo(kind: SourceKind, slug: &str) -> String {
    format!("{}/{slug}", scope(kind))
}

fn name(text: &str) -> RepoName {
    RepoName::parse(text).expect("valid repository name")
}

fn api(double: &BitbucketDouble, kind: SourceKind, token: &str) -> Api {
    Api::new(
        kind,
        double.base(kind),
        Some(SecretString::new(format!("Bearer {token}"))),
    )
    .expect("client")
}

fn pr(kind: SourceKind, id: u64, state: &str) -> serde_json::Value {
    match kind {
        SourceKind::Cloud => json!({
            "type": "pullrequest", "id": id, "title": format!("PR {id}"), "state": state,
            "source": { "branch": { "name": format!("feature/{id}") } },
            "destination": { "branch": { "name": "main" } }
        }),
        SourceKind::DataCenter => json!({
            "id": id, "version": 0, "title": format!("PR {id}"), "state": state,
            "fromRef": { "id": format!("refs/heads/feature/{id}") },
            "toRef": { "id": "refs/heads/main" }
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_repositories_across_pages() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        for slug in ["api", "web", "docs", "infra", "mobile"] {
            double.add_repo(kind, &repo(kind, slug));
        }
        // Another scope, not listed.
        double.add_repo(
            kind,
            match kind {
                SourceKind::Cloud => "other/thing",
                SourceKind::DataCenter => "OTHER/thing",
            },
        );
    }
    for kind in KINDS {
        let before = double.requests();
        let repos = api(&double, kind, TOKEN)
            .list_repositories(scope(kind))
            .await
            .expect("listing");
        let mut names: Vec<String> = repos.iter().map(|r| r.name.to_string()).collect();
        names.sort();
        let mut want: Vec<String> = ["api", "docs", "infra", "mobile", "web"]
            .iter()
            .map(|s| repo(kind, s))
            .collect();
        want.sort();
        assert_eq!(names, want, "{kind:?}");
        // 5 repositories at 2 per page: 3 pages.
        assert_eq!(double.requests() - before, 3, "{kind:?} pages");
        for r in &repos {
            let url = r.clone_url.as_deref().expect("clone url");
            assert!(url.starts_with("http://"), "{kind:?}: {url}");
            assert!(url.ends_with(&format!("/{}.git", r.name.slug())), "{url}");
        }
    }
    let log = double.request_log();
    assert!(
        log.iter()
            .any(|l| l.contains("/2.0/repositories/acme?pagelen=100&page=3")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("/rest/api/latest/projects/PRJ/repos?limit=100&start=4")),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_repository_names_are_skipped() {
    let double = BitbucketDouble::start(TOKEN);
    double.add_repo(SourceKind::Cloud, "acme/good");
    double.add_raw_repo(
        SourceKind::Cloud,
        "acme",
        json!({ "full_name": "acme/.git" }),
    );
    double.add_raw_repo(
        SourceKind::Cloud,
        "acme",
        json!({ "full_name": "acme/a/b" }),
    );
    double.add_raw_repo(SourceKind::Cloud, "acme", json!({ "slug": "no-full-name" }));
    double.add_repo(SourceKind::DataCenter, "PRJ/good");
    double.add_raw_repo(
        SourceKind::DataCenter,
        "PRJ",
        json!({ "slug": "bad slug", "project": { "key": "PRJ" } }),
    );
    for kind in KINDS {
        let repos = api(&double, kind, TOKEN)
            .list_repositories(scope(kind))
            .await
            .expect("listing");
        let names: Vec<String> = repos.iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, vec![repo(kind, "good")], "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_workspace_is_a_404() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        let error = api(&double, kind, TOKEN)
            .list_repositories("nowhere")
            .await
            .expect_err("unknown scope");
        let message = error.to_string();
        assert!(message.contains("404"), "{message}");
        assert!(message.contains("nowhere"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_are_retried_transparently() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        for slug in ["a", "b", "c"] {
            double.add_repo(kind, &repo(kind, slug));
        }
    }
    for kind in KINDS {
        let before = double.requests();
        double.fail_next_with_429(2);
        let repos = api(&double, kind, TOKEN)
            .list_repositories(scope(kind))
            .await
            .expect("listing despite 429s");
        assert_eq!(repos.len(), 3, "{kind:?}");
        // 2 refused + 2 pages.
        assert_eq!(double.requests() - before, 4, "{kind:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_is_retried_too() {
    let double = BitbucketDouble::start(TOKEN);
    double.add_repo(SourceKind::Cloud, "acme/a");
    double.fail_next_with(503, 1);
    double.fail_next_with(502, 1);
    double.fail_next_with(504, 1);
    let repos = api(&double, SourceKind::Cloud, TOKEN)
        .list_repositories("acme")
        .await
        .expect("listing despite 5xx");
    assert_eq!(repos.len(), 1);
    assert_eq!(double.requests(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausted_retries_give_a_clear_error() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        double.add_repo(kind, &repo(kind, "a"));
    }
    for kind in KINDS {
        let before = double.requests();
        // Exactly what one try and two retries consume.
        double.fail_next_with_429(3);
        let error = api(&double, kind, TOKEN)
            .with_max_retries(2)
            .list_repositories(scope(kind))
            .await
            .expect_err("gives up");
        assert!(
            matches!(
                error,
                ApiError::RetriesExhausted {
                    status: 429,
                    attempts: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("429"), "{message}");
        assert!(message.contains("GET "), "{message}");
        assert!(message.contains(scope(kind)), "{message}");
        assert!(message.contains("3 attempts"), "{message}");
        assert!(!message.contains(TOKEN), "{message}");
        assert_eq!(double.requests() - before, 3, "{kind:?}: 1 try + 2 retries");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_round_trip() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        double.add_repo(kind, &repo(kind, "api"));
    }
    for kind in KINDS {
        let client = api(&double, kind, TOKEN);
        let events: Vec<String> = match kind {
            SourceKind::Cloud => vec!["repo:push".into(), "pullrequest:created".into()],
            SourceKind::DataCenter => vec!["repo:refs_changed".into(), "pr:opened".into()],
        };
        let targets = [
            (
                HookTarget::Repository(name(&repo(kind, "api"))),
                repo(kind, "api"),
            ),
            (
                HookTarget::Workspace(scope(kind).to_string()),
                scope(kind).to_string(),
            ),
        ];
        for (target, key) in targets {
            assert!(client.list_hooks(&target).await.expect("list").is_empty());
            let spec = HookSpec {
                url: "https://hookvault.example/webhooks/bitbucket".into(),
                description: "hookvault".into(),
                secret: SecretString::new("s3cret-value".into()),
                events: events.clone(),
            };
            let created = client.create_hook(&target, &spec).await.expect("create");
            assert!(!created.id.is_empty());
            assert_eq!(created.url, spec.url);
            assert_eq!(created.description, "hookvault");
            assert_eq!(created.events, events);
            assert!(created.active);
            let second = client
                .create_hook(
                    &target,
                    &HookSpec {
                        description: "second".into(),
                        ..spec.clone()
                    },
                )
                .await
                .expect("create second");
            assert_ne!(second.id, created.id);

            // What the double received: the documented body, secret included.
            let stored = double.hooks(kind, &key);
            assert_eq!(stored.len(), 2, "{kind:?} {key}");
            match kind {
                SourceKind::Cloud => {
                    assert_eq!(stored[0]["secret"], "s3cret-value");
                    assert_eq!(stored[0]["uuid"], json!(created.id));
                }
                SourceKind::DataCenter => {
                    assert_eq!(stored[0]["configuration"]["secret"], "s3cret-value");
                    assert_eq!(stored[0]["sslVerificationRequired"], true);
                    assert_eq!(stored[0]["name"], "hookvault");
                    assert_eq!(stored[0]["id"].to_string(), created.id);
                }
            }
            assert_eq!(stored[0]["active"], true);

            let listed = client.list_hooks(&target).await.expect("list");
            assert_eq!(listed, vec![created.clone(), second.clone()]);

            client
                .delete_hook(&target, &created.id)
                .await
                .expect("delete");
            let listed = client.list_hooks(&target).await.expect("list");
            assert_eq!(listed, vec![second.clone()]);
            let error = client
                .delete_hook(&target, &created.id)
                .await
                .expect_err("already deleted");
            assert!(error.to_string().contains("404"), "{error}");
            client
                .delete_hook(&target, &second.id)
                .await
                .expect("delete second");
            assert!(double.hooks(kind, &key).is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_webhook_names_the_status_and_the_reason() {
    let double = BitbucketDouble::start(TOKEN);
    double.add_repo(SourceKind::DataCenter, "PRJ/api");
    let client = api(&double, SourceKind::DataCenter, TOKEN);
    let error = client
        .create_hook(
            &HookTarget::Repository(name("PRJ/api")),
            &HookSpec {
                url: "https://hookvault.example/webhooks/bitbucket".into(),
                description: "hookvault".into(),
                secret: SecretString::new("s3cret-value".into()),
                events: vec!["repo:refs_changed".into(), "repo:not_a_thing".into()],
            },
        )
        .await
        .expect_err("unknown event key");
    let message = error.to_string();
    assert!(message.contains("POST "), "{message}");
    assert!(
        message.contains("/projects/PRJ/repos/api/webhooks"),
        "{message}"
    );
    assert!(message.contains("400"), "{message}");
    assert!(message.contains("repo:not_a_thing"), "{message}");
    assert!(!message.contains("s3cret-value"), "{message}");
    assert!(double.hooks(SourceKind::DataCenter, "PRJ/api").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_requests_in_every_state_across_pages() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        let r = repo(kind, "api");
        double.add_repo(kind, &r);
        let states: &[&str] = match kind {
            SourceKind::Cloud => &["OPEN", "MERGED", "DECLINED", "SUPERSEDED", "OPEN"],
            SourceKind::DataCenter => &["OPEN", "MERGED", "DECLINED", "OPEN", "MERGED"],
        };
        for (i, state) in states.iter().enumerate() {
            double.add_pull_request(kind, &r, pr(kind, i as u64 + 1, state));
        }
    }
    for kind in KINDS {
        let before = double.requests();
        let prs = api(&double, kind, TOKEN)
            .list_pull_requests(&name(&repo(kind, "api")))
            .await
            .expect("pull requests");
        let ids: Vec<u64> = prs.iter().filter_map(|p| p["id"].as_u64()).collect();
        assert_eq!(ids, vec![1, 2, 3, 4, 5], "{kind:?}");
        assert_eq!(prs[1]["state"], "MERGED");
        assert_eq!(prs[0]["title"], "PR 1");
        assert_eq!(double.requests() - before, 3, "{kind:?} pages");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cloud_comments_across_pages() {
    let double = BitbucketDouble::start(TOKEN);
    double.add_repo(SourceKind::Cloud, "acme/api");
    double.add_pull_request(
        SourceKind::Cloud,
        "acme/api",
        pr(SourceKind::Cloud, 7, "OPEN"),
    );
    for id in 1..=5u64 {
        let mut comment = json!({
            "type": "pullrequest_comment", "id": 100 + id,
            "content": { "raw": format!("comment {id}") }
        });
        if id == 3 {
            comment["parent"] = json!({ "id": 101 });
        }
        double.add_comment(SourceKind::Cloud, "acme/api", 7, comment);
    }
    let comments = api(&double, SourceKind::Cloud, TOKEN)
        .list_pr_comments(&name("acme/api"), 7)
        .await
        .expect("comments");
    let ids: Vec<u64> = comments.iter().filter_map(|c| c["id"].as_u64()).collect();
    assert_eq!(ids, vec![101, 102, 103, 104, 105]);
    assert_eq!(comments[2]["parent"]["id"], 101);
    assert_eq!(comments[4]["content"]["raw"], "comment 5");
}

#[tokio::test(flavor = "multi_thread")]
async fn dc_activities_yield_only_comments_with_replies_flattened() {
    let double = BitbucketDouble::start(TOKEN);
    let kind = SourceKind::DataCenter;
    double.add_repo(kind, "PRJ/api");
    double.add_pull_request(kind, "PRJ/api", pr(kind, 3, "OPEN"));
    double.add_comment(
        kind,
        "PRJ/api",
        3,
        json!({
            "id": 10, "version": 0, "text": "Why this change?",
            "author": { "name": "mreyes" },
            "comments": [
                { "id": 11, "text": "Because of the timeout.",
                  "comments": [ { "id": 13, "text": "Fair enough.", "comments": [] } ] },
                { "id": 12, "text": "+1" }
            ]
        }),
    );
    double.add_comment(
        kind,
        "PRJ/api",
        3,
        json!({ "id": 20, "text": "LGTM", "comments": [] }),
    );
    // A reply that also appears as its own activity, and noise.
    double.add_activity(
        "PRJ/api",
        3,
        json!({ "id": 900, "action": "COMMENTED", "commentAction": "REPLIED",
                "comment": { "id": 12, "text": "+1" } }),
    );
    double.add_activity("PRJ/api", 3, json!({ "id": 901, "action": "RESCOPED" }));
    double.add_activity("PRJ/api", 3, json!({ "id": 902, "action": "MERGED" }));

    let comments = api(&double, kind, TOKEN)
        .list_pr_comments(&name("PRJ/api"), 3)
        .await
        .expect("comments");
    let mut ids: Vec<u64> = comments.iter().filter_map(|c| c["id"].as_u64()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![10, 11, 12, 13, 20], "{comments:#?}");
    let by_id = |id: u64| {
        comments
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("comment {id}"))
    };
    assert!(by_id(10).get("parent").is_none());
    assert!(by_id(20).get("parent").is_none());
    assert_eq!(by_id(11)["parent"]["id"], 10);
    assert_eq!(by_id(12)["parent"]["id"], 10);
    assert_eq!(by_id(13)["parent"]["id"], 11);
    assert_eq!(by_id(13)["text"], "Fair enough.");
    assert!(comments.iter().all(|c| c.get("action").is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_token_is_a_401() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        double.add_repo(kind, &repo(kind, "api"));
    }
    for kind in KINDS {
        let error = api(&double, kind, "not-the-token")
            .list_repositories(scope(kind))
            .await
            .expect_err("unauthorised");
        assert!(
            matches!(error, ApiError::Status { status: 401, .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("401"), "{message}");
        assert!(!message.contains("not-the-token"), "{message}");

        let anonymous = Api::new(kind, double.base(kind), None).expect("client");
        let error = anonymous
            .list_repositories(scope(kind))
            .await
            .expect_err("anonymous");
        assert!(error.to_string().contains("401"), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_authorization_from_a_source_config() {
    let double = BitbucketDouble::start(TOKEN);
    double.add_repo(SourceKind::Cloud, "acme/api");
    let toml = format!(
        r#"
name = "cloud"
kind = "cloud"
secrets = ["x"]
api_url = "{}/"
credentials = {{ kind = "api-token", token = "{TOKEN}", email = "dana@acme.example" }}
"#,
        double.cloud_base()
    );
    let source: SourceConfig = toml::from_str(&toml).expect("source config");
    let client = Api::from_source(&source).expect("client");
    assert!(!format!("{client:?}").contains(TOKEN));
    let repos = client.list_repositories("acme").await.expect("listing");
    assert_eq!(repos.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn data_center_source_without_api_url_is_refused() {
    let source: SourceConfig = toml::from_str(
        r#"
name = "dc"
kind = "data-center"
secrets = ["x"]
git_url = "https://bitbucket.example.com/scm/{repo}.git"
"#,
    )
    .expect("source config");
    let error = Api::from_source(&source).expect_err("no api_url");
    let message = error.to_string();
    assert!(message.contains("api_url"), "{message}");
    assert!(message.contains("dc"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_is_bounded() {
    let double = BitbucketDouble::start(TOKEN);
    for kind in KINDS {
        for slug in ["a", "b", "c", "d", "e"] {
            double.add_repo(kind, &repo(kind, slug));
        }
    }
    for kind in KINDS {
        let error = api(&double, kind, TOKEN)
            .with_max_pages(2)
            .list_repositories(scope(kind))
            .await
            .expect_err("too many pages");
        assert!(
            matches!(error, ApiError::TooManyPages { max: 2, .. }),
            "{error:?}"
        );
    }
}
