//! Every Bitbucket delivery, Cloud and Data Center, into one [`Event`].
//!
//! Strict on identity (the repository name is validated before it can become
//! a path; object ids must be hex), lenient on everything else.

use serde_json::Value;

use super::lenient::{at, first, id_at, str_at, time};
use super::push::{PayloadError, parse_cloud_push};
use crate::config::SourceKind;
use crate::event::{Comment, Event, EventKind, PullRequest, RefChange, RefKind};
use crate::ids::{GitOid, RefName, RepoName};

/// What the receiver does with a delivery.
#[derive(Debug)]
pub enum Parsed {
    /// Queue this event.
    Event(Box<Event>),
    /// Understood (or unknown) and deliberately not acted on.
    Ignored,
}

/// DC event keys that changed spelling between versions, mapped to one.
pub fn canonical_key(key: &str) -> &str {
    match key {
        "pr:reviewer:needs_work" => "pr:reviewer:changes_requested",
        "proj:modified" => "project:modified",
        other => other,
    }
}

/// The body as JSON; a key named twice in one object is refused, as it is
/// for Cloud pushes.
fn json(event_key: &str, body: &[u8]) -> Result<Value, PayloadError> {
    super::strict_json::parse(body).map_err(|source| PayloadError::Json {
        event_key: event_key.to_string(),
        source,
    })
}

/// The event's skeleton; the caller fills in kind-specific parts.
pub struct Envelope<'a> {
    pub source: &'a str,
    pub source_kind: SourceKind,
    pub event_key: &'a str,
    pub delivery_id: &'a str,
    pub received_at_ms: u64,
}

impl Envelope<'_> {
    fn event(&self, kind: EventKind, repository: RepoName, actor: Option<String>) -> Event {
        Event {
            delivery_id: self.delivery_id.to_string(),
            source: self.source.to_string(),
            event_key: self.event_key.to_string(),
            kind,
            repository,
            actor,
            changes: Vec::new(),
            received_at_ms: self.received_at_ms,
            pull_request: None,
            comment: None,
            comments: Vec::new(),
            previous_name: None,
        }
    }
}

/// Parse a verified body. A key hookvault does not act on is ignored
/// whatever its body (empty, not JSON): its body is never read, so it
/// cannot be malformed.
pub fn parse(envelope: &Envelope<'_>, body: &[u8]) -> Result<Parsed, PayloadError> {
    let key = canonical_key(envelope.event_key);
    match envelope.source_kind {
        SourceKind::Cloud if cloud_acts_on(key) => parse_cloud(envelope, key, body),
        SourceKind::DataCenter if dc_acts_on(key) => parse_dc(envelope, key, body),
        SourceKind::Cloud | SourceKind::DataCenter => Ok(Parsed::Ignored),
    }
}

/// The Cloud event keys `parse_cloud` turns into events.
fn cloud_acts_on(key: &str) -> bool {
    matches!(
        key,
        "repo:push"
            | "repo:created"
            | "repo:imported"
            | "repo:updated"
            | "repo:transfer"
            | "repo:fork"
            | "repo:deleted"
    ) || key.starts_with("pullrequest:")
}

/// The Data Center event keys (canonical spelling) `parse_dc` turns into
/// events.
fn dc_acts_on(key: &str) -> bool {
    matches!(
        key,
        "repo:refs_changed" | "mirror:repo_synchronized" | "repo:modified" | "repo:forked"
    ) || key.starts_with("pr:")
}

fn cloud_repo(value: &Value, path: &[&str]) -> Result<RepoName, PayloadError> {
    let name = str_at(value, path).ok_or(PayloadError::NoRepository)?;
    Ok(RepoName::parse(name)?)
}

fn cloud_actor(value: &Value) -> Option<String> {
    str_at(value, &["actor", "display_name"])
        .or_else(|| str_at(value, &["actor", "nickname"]))
        .map(str::to_string)
}

// Acts on the keys `cloud_acts_on` names; keep the two in step.
fn parse_cloud(envelope: &Envelope<'_>, key: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    if key == "repo:push" {
        let push = parse_cloud_push(body)?;
        let mut event = envelope.event(EventKind::Push, push.repository, push.actor);
        event.changes = push.changes;
        return Ok(Parsed::Event(Box::new(event)));
    }
    let value = json(key, body)?;
    let actor = cloud_actor(&value);
    let event = match key {
        "repo:created" | "repo:imported" | "repo:updated" | "repo:transfer" => {
            let repo = cloud_repo(&value, &["repository", "full_name"])?;
            let mut event = envelope.event(EventKind::Repository, repo, actor);
            let previous = str_at(&value, &["changes", "full_name", "old"])
                .map(str::to_string)
                .or_else(|| {
                    // A transfer names the previous workspace.
                    let ws = str_at(&value, &["previous_workspace", "slug"])?;
                    let slug = event.repository.slug().to_string();
                    Some(format!("{ws}/{slug}"))
                });
            event.previous_name = previous.and_then(|p| RepoName::parse(&p).ok());
            event
        }
        "repo:fork" => {
            // `fork` is the new repository; back it up.
            let repo = cloud_repo(&value, &["fork", "full_name"])?;
            envelope.event(EventKind::Repository, repo, actor)
        }
        "repo:deleted" => {
            let repo = cloud_repo(&value, &["repository", "full_name"])?;
            envelope.event(EventKind::RepositoryDeleted, repo, actor)
        }
        k if k.starts_with("pullrequest:comment_") => {
            let repo = cloud_repo(&value, &["repository", "full_name"])?;
            let mut event = envelope.event(EventKind::Comment, repo, actor);
            let pr = at(&value, &["pullrequest"]).ok_or(PayloadError::Missing("pullrequest"))?;
            event.pull_request = Some(cloud_pull_request(pr)?);
            let comment = at(&value, &["comment"]).ok_or(PayloadError::Missing("comment"))?;
            let mut comment = cloud_comment(comment)?;
            comment.deleted |= k == "pullrequest:comment_deleted";
            event.comment = Some(comment);
            event
        }
        k if k.starts_with("pullrequest:") => {
            let repo = cloud_repo(&value, &["repository", "full_name"])?;
            let mut event = envelope.event(EventKind::PullRequest, repo, actor);
            let pr = at(&value, &["pullrequest"]).ok_or(PayloadError::Missing("pullrequest"))?;
            event.pull_request = Some(cloud_pull_request(pr)?);
            event
        }
        _ => return Ok(Parsed::Ignored),
    };
    Ok(Parsed::Event(Box::new(event)))
}

/// A DC repository object's `PROJECT/slug`.
fn dc_repo(repository: &Value) -> Result<RepoName, PayloadError> {
    let slug = str_at(repository, &["slug"]).ok_or(PayloadError::NoRepository)?;
    let project = str_at(repository, &["project", "key"]).ok_or(PayloadError::NoRepository)?;
    Ok(RepoName::parse(&format!("{project}/{slug}"))?)
}

fn dc_actor(value: &Value) -> Option<String> {
    str_at(value, &["actor", "displayName"])
        .or_else(|| str_at(value, &["actor", "name"]))
        .map(str::to_string)
}

fn dc_user(value: Option<&Value>) -> Option<String> {
    let user = value?;
    let user = user.get("user").unwrap_or(user);
    first(user, &["displayName", "name", "slug"])
        .and_then(Value::as_str)
        .map(str::to_string)
}

const ZERO: &str = "0000000000000000000000000000000000000000";

/// `fromHash` / `toHash`: 40 hex digits, all zeros for "no ref". Absent
/// or `null` means the same as all zeros; anything else that is not 40 hex
/// digits as a string (a number, a short hash) is refused, never taken for
/// a created or deleted ref.
fn dc_hash(value: Option<&Value>, field: String) -> Result<Option<String>, PayloadError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(h)) if h == ZERO => Ok(None),
        Some(Value::String(h)) => GitOid::from_hex(h)
            .map(|o| Some(o.to_hex()))
            .map_err(|source| PayloadError::Oid { field, source }),
        Some(other) => Err(PayloadError::not_an_oid(field, other)),
    }
}

fn dc_changes(value: &Value) -> Result<Vec<RefChange>, PayloadError> {
    let (key, changes) = match (value.get("changes"), value.get("refChanges")) {
        (Some(changes), _) if !changes.is_null() => ("changes", changes),
        (_, Some(changes)) if !changes.is_null() => ("refChanges", changes),
        _ => return Ok(Vec::new()),
    };
    let Some(changes) = changes.as_array() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        let field = |what: &str| format!("{key}[{i}].{what}");
        let (name_field, name) = match str_at(change, &["ref", "id"]) {
            Some(name) => ("ref.id", name),
            None => (
                "refId",
                str_at(change, &["refId"]).ok_or_else(|| PayloadError::NoRefName {
                    field: field("ref.id"),
                })?,
            ),
        };
        let name = RefName::parse(name).map_err(|source| PayloadError::RefName {
            field: field(name_field),
            source,
        })?;
        let kind = match str_at(change, &["ref", "type"])
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            Some("BRANCH") => RefKind::Branch,
            Some("TAG") => RefKind::Tag,
            _ if name.as_str().starts_with("refs/heads/") => RefKind::Branch,
            _ if name.as_str().starts_with("refs/tags/") => RefKind::Tag,
            _ => RefKind::Other,
        };
        let old_target = dc_hash(change.get("fromHash"), field("fromHash"))?;
        let new_target = dc_hash(change.get("toHash"), field("toHash"))?;
        out.push(RefChange {
            name,
            kind,
            old_target,
            new_target,
            // DC does not say; a force push is just UPDATE.
            forced: false,
        });
    }
    Ok(out)
}

// Acts on the keys `dc_acts_on` names; keep the two in step.
fn parse_dc(envelope: &Envelope<'_>, key: &str, body: &[u8]) -> Result<Parsed, PayloadError> {
    let value = json(key, body)?;
    let actor = dc_actor(&value);
    let repository = || {
        at(&value, &["repository"])
            .ok_or(PayloadError::NoRepository)
            .and_then(dc_repo)
    };
    let event = match key {
        "repo:refs_changed" | "mirror:repo_synchronized" => {
            let mut event = envelope.event(EventKind::Push, repository()?, actor);
            event.changes = dc_changes(&value)?;
            event
        }
        "repo:modified" => {
            let new = at(&value, &["new"]).ok_or(PayloadError::NoRepository)?;
            let mut event = envelope.event(EventKind::Repository, dc_repo(new)?, actor);
            event.previous_name = at(&value, &["old"]).and_then(|old| dc_repo(old).ok());
            event
        }
        "repo:forked" => envelope.event(EventKind::Repository, repository()?, actor),
        k if k.starts_with("pr:comment:") => {
            let pr = at(&value, &["pullRequest"]).ok_or(PayloadError::Missing("pullRequest"))?;
            let repo = at(pr, &["toRef", "repository"])
                .ok_or(PayloadError::NoRepository)
                .and_then(dc_repo)?;
            let mut event = envelope.event(EventKind::Comment, repo, actor);
            event.pull_request = Some(dc_pull_request(pr)?);
            let comment = at(&value, &["comment"]).ok_or(PayloadError::Missing("comment"))?;
            let mut comment = dc_comment(
                comment,
                id_at(&value, &["commentParentId"]),
                value.get("commentAnchor"),
            )?;
            comment.deleted |= k == "pr:comment:deleted";
            event.comment = Some(comment);
            event
        }
        k if k.starts_with("pr:") => {
            let pr = at(&value, &["pullRequest"]).ok_or(PayloadError::Missing("pullRequest"))?;
            let repo = at(pr, &["toRef", "repository"])
                .ok_or(PayloadError::NoRepository)
                .and_then(dc_repo)?;
            let mut event = envelope.event(EventKind::PullRequest, repo, actor);
            let mut normalised = dc_pull_request(pr)?;
            if k == "pr:deleted" {
                normalised.state = "DELETED".into();
            }
            event.pull_request = Some(normalised);
            event
        }
        _ => return Ok(Parsed::Ignored),
    };
    Ok(Parsed::Event(Box::new(event)))
}

/// A Cloud pull request (webhook or REST shape).
pub fn cloud_pull_request(pr: &Value) -> Result<PullRequest, PayloadError> {
    Ok(PullRequest {
        id: id_at(pr, &["id"]).ok_or(PayloadError::Missing("pullrequest.id"))?,
        title: str_at(pr, &["title"]).unwrap_or_default().to_string(),
        description: str_at(pr, &["description"])
            .or_else(|| str_at(pr, &["summary", "raw"]))
            .map(str::to_string),
        state: str_at(pr, &["state"])
            .unwrap_or("OPEN")
            .to_ascii_uppercase(),
        author: str_at(pr, &["author", "display_name"]).map(str::to_string),
        source_branch: str_at(pr, &["source", "branch", "name"]).map(str::to_string),
        source_commit: str_at(pr, &["source", "commit", "hash"]).map(str::to_string),
        destination_branch: str_at(pr, &["destination", "branch", "name"]).map(str::to_string),
        destination_commit: str_at(pr, &["destination", "commit", "hash"]).map(str::to_string),
        reviewers: pr
            .get("reviewers")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|u| str_at(u, &["display_name"]).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        created: pr.get("created_on").and_then(time),
        updated: pr.get("updated_on").and_then(time),
    })
}

/// A Cloud pull-request comment (webhook or REST shape).
pub fn cloud_comment(c: &Value) -> Result<Comment, PayloadError> {
    Ok(Comment {
        id: id_at(c, &["id"]).ok_or(PayloadError::Missing("comment.id"))?,
        text: str_at(c, &["content", "raw"])
            .unwrap_or_default()
            .to_string(),
        author: str_at(c, &["user", "display_name"]).map(str::to_string),
        created: c.get("created_on").and_then(time),
        updated: c.get("updated_on").and_then(time),
        parent: id_at(c, &["parent", "id"]),
        path: str_at(c, &["inline", "path"]).map(str::to_string),
        line: id_at(c, &["inline", "to"]).or_else(|| id_at(c, &["inline", "from"])),
        deleted: c.get("deleted").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn branch_name(reference: Option<&str>) -> Option<String> {
    reference.map(|r| r.strip_prefix("refs/heads/").unwrap_or(r).to_string())
}

/// A Data Center pull request (webhook or REST shape).
pub fn dc_pull_request(pr: &Value) -> Result<PullRequest, PayloadError> {
    Ok(PullRequest {
        id: id_at(pr, &["id"]).ok_or(PayloadError::Missing("pullRequest.id"))?,
        title: str_at(pr, &["title"]).unwrap_or_default().to_string(),
        description: str_at(pr, &["description"]).map(str::to_string),
        state: str_at(pr, &["state"])
            .unwrap_or("OPEN")
            .to_ascii_uppercase(),
        author: dc_user(pr.get("author")),
        source_branch: branch_name(str_at(pr, &["fromRef", "id"])),
        source_commit: str_at(pr, &["fromRef", "latestCommit"]).map(str::to_string),
        destination_branch: branch_name(str_at(pr, &["toRef", "id"])),
        destination_commit: str_at(pr, &["toRef", "latestCommit"]).map(str::to_string),
        reviewers: pr
            .get("reviewers")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(|u| dc_user(Some(u))).collect())
            .unwrap_or_default(),
        created: pr.get("createdDate").and_then(time),
        updated: pr.get("updatedDate").and_then(time),
    })
}

/// A Data Center pull-request comment (webhook, REST or activity shape).
/// An inline comment's position is the comment's `anchor`, or, from older
/// servers, `anchor` (the activity's or the event's `commentAnchor`).
pub fn dc_comment(
    c: &Value,
    parent: Option<u64>,
    anchor: Option<&Value>,
) -> Result<Comment, PayloadError> {
    let anchor = c.get("anchor").filter(|a| a.is_object()).or(anchor);
    Ok(Comment {
        id: id_at(c, &["id"]).ok_or(PayloadError::Missing("comment.id"))?,
        text: str_at(c, &["text"]).unwrap_or_default().to_string(),
        author: dc_user(c.get("author")),
        created: c.get("createdDate").and_then(time),
        updated: c.get("updatedDate").and_then(time),
        parent: parent.or_else(|| id_at(c, &["parent", "id"])),
        path: anchor
            .and_then(|a| str_at(a, &["path"]))
            .map(str::to_string),
        line: anchor.and_then(|a| id_at(a, &["line"])),
        deleted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: SourceKind, key: &str) -> Envelope<'_> {
        Envelope {
            source: "s",
            source_kind: kind,
            event_key: key,
            delivery_id: "d",
            received_at_ms: 0,
        }
    }

    fn event(parsed: Parsed) -> Event {
        match parsed {
            Parsed::Event(e) => *e,
            Parsed::Ignored => panic!("expected an event"),
        }
    }

    #[test]
    fn dc_refs_changed_example() {
        let body = include_bytes!("../../../examples/payloads/dc-repo-refs-changed.json");
        let e = event(
            parse(&envelope(SourceKind::DataCenter, "repo:refs_changed"), body).expect("parses"),
        );
        assert_eq!(e.repository.to_string(), "PAY/billing-service");
        assert_eq!(e.kind, EventKind::Push);
        assert_eq!(e.actor.as_deref(), Some("Dana Okafor"));
        assert_eq!(e.changes.len(), 3);
        assert_eq!(e.changes[1].name, "refs/tags/v2.4.0");
        assert_eq!(e.changes[1].old_target, None);
        assert_eq!(e.changes[2].new_target, None);
    }

    #[test]
    fn cloud_pr_and_comment_examples() {
        let body = include_bytes!("../../../examples/payloads/cloud-pullrequest-created.json");
        let e = event(
            parse(&envelope(SourceKind::Cloud, "pullrequest:created"), body).expect("parses"),
        );
        assert_eq!(e.kind, EventKind::PullRequest);
        let pr = e.pull_request.expect("pr");
        assert_eq!((pr.id, pr.state.as_str()), (42, "OPEN"));
        assert_eq!(pr.source_branch.as_deref(), Some("feature/invoice-retries"));
        assert_eq!(pr.created.as_deref(), Some("2026-03-04T16:45:03.118Z"));

        let body =
            include_bytes!("../../../examples/payloads/cloud-pullrequest-comment-created.json");
        let e = event(
            parse(
                &envelope(SourceKind::Cloud, "pullrequest:comment_created"),
                body,
            )
            .expect("parses"),
        );
        assert_eq!(e.kind, EventKind::Comment);
        assert!(e.comment.expect("comment").text.len() > 3);
    }

    #[test]
    fn dc_pr_example_and_old_key_spelling() {
        let body = include_bytes!("../../../examples/payloads/dc-pr-opened.json");
        let e = event(parse(&envelope(SourceKind::DataCenter, "pr:opened"), body).expect("parses"));
        assert_eq!(e.kind, EventKind::PullRequest);
        assert!(e.pull_request.expect("pr").created.is_some());
        assert_eq!(
            canonical_key("pr:reviewer:needs_work"),
            "pr:reviewer:changes_requested"
        );
        assert_eq!(canonical_key("proj:modified"), "project:modified");
    }

    #[test]
    fn dc_inline_comment_position_from_the_comment_or_the_event() {
        let mut body: Value = serde_json::from_slice(include_bytes!(
            "../../../examples/payloads/dc-pr-opened.json"
        ))
        .expect("json");
        body["comment"] = serde_json::json!({ "id": 17, "text": "nit", "version": 0 });
        // Older servers: the position beside the comment, as `commentAnchor`.
        body["commentAnchor"] =
            serde_json::json!({ "path": "src/lib.rs", "line": 42, "lineType": "ADDED" });
        let parsed = |body: &Value| {
            let bytes = serde_json::to_vec(body).expect("json");
            event(
                parse(
                    &envelope(SourceKind::DataCenter, "pr:comment:added"),
                    &bytes,
                )
                .expect("parses"),
            )
            .comment
            .expect("comment")
        };
        let old = parsed(&body);
        assert_eq!(
            (old.path.as_deref(), old.line),
            (Some("src/lib.rs"), Some(42))
        );
        // Newer servers: on the comment, which wins.
        body["comment"]["anchor"] = serde_json::json!({ "path": "src/main.rs", "line": "7" });
        let new = parsed(&body);
        assert_eq!(
            (new.path.as_deref(), new.line),
            (Some("src/main.rs"), Some(7))
        );
        // A general comment has neither.
        body["comment"]
            .as_object_mut()
            .expect("object")
            .remove("anchor");
        body.as_object_mut()
            .expect("object")
            .remove("commentAnchor");
        let general = parsed(&body);
        assert_eq!((general.path, general.line), (None, None));
    }

    #[test]
    fn unknown_keys_are_ignored_and_missing_parts_tolerated() {
        for kind in [SourceKind::Cloud, SourceKind::DataCenter] {
            // Whatever the body: it is not read.
            for body in [&b"{}"[..], b"", b"not json", b"[1,"] {
                assert!(
                    matches!(
                        parse(&envelope(kind, "issue:created"), body).expect("ignored"),
                        Parsed::Ignored
                    ),
                    "{kind:?} {body:?}"
                );
            }
            // A key it acts on still needs a well-formed body.
            let known = match kind {
                SourceKind::Cloud => "repo:push",
                SourceKind::DataCenter => "repo:refs_changed",
            };
            assert!(parse(&envelope(kind, known), b"").is_err(), "{kind:?}");
        }
        let minimal = br#"{"repository":{"slug":"app","project":{"key":"~dana"}},"changes":[]}"#;
        let e = event(
            parse(
                &envelope(SourceKind::DataCenter, "repo:refs_changed"),
                minimal,
            )
            .expect("lenient"),
        );
        assert_eq!(e.repository.to_string(), "~dana/app");
        assert!(e.changes.is_empty());
    }

    fn dc_push(body: &[u8]) -> Result<Parsed, PayloadError> {
        parse(&envelope(SourceKind::DataCenter, "repo:refs_changed"), body)
    }

    fn dc_change(change: &str) -> String {
        format!(r#"{{"repository":{{"slug":"a","project":{{"key":"P"}}}},"changes":[{change}]}}"#)
    }

    const HASH: &str = "e91f3c7a2b5d8e0f4a6c1b3d5e7f9a0b2c4d6e8f";

    #[test]
    fn dc_duplicate_keys_are_refused_like_cloud() {
        let body = format!(
            r#"{{"repository":{{"slug":"a","project":{{"key":"P"}}}},"changes":[{{"ref":{{"id":"refs/heads/main","type":"BRANCH"}},"fromHash":"{HASH}","toHash":"{HASH}","toHash":"0000000000000000000000000000000000000000","type":"UPDATE"}}]}}"#
        );
        let error = dc_push(body.as_bytes()).expect_err("duplicate toHash");
        assert!(matches!(error, PayloadError::Json { .. }), "{error}");
        assert!(
            error.to_string().contains(r#"duplicate key "toHash""#),
            "{error}"
        );
        // Anywhere in the body, and in every DC event.
        let body = br#"{"repository":{"slug":"a","project":{"key":"P"}},"repository":{"slug":"b","project":{"key":"P"}},"changes":[]}"#;
        assert!(dc_push(body).is_err());
        let body = br#"{"pullRequest":{"id":1,"id":2,"toRef":{"repository":{"slug":"a","project":{"key":"P"}}}}}"#;
        assert!(parse(&envelope(SourceKind::DataCenter, "pr:opened"), body).is_err());
        let body =
            br#"{"repository":{"full_name":"a/b"},"pullrequest":{"id":1},"pullrequest":{"id":2}}"#;
        assert!(parse(&envelope(SourceKind::Cloud, "pullrequest:created"), body).is_err());
    }

    #[test]
    fn dc_hash_that_is_not_an_id_is_refused_not_taken_for_a_deletion() {
        for to_hash in ["12345", "\"12345\"", "true", "{}", "[]"] {
            let body = dc_change(&format!(
                r#"{{"ref":{{"id":"refs/heads/main","type":"BRANCH"}},"fromHash":"{HASH}","toHash":{to_hash},"type":"UPDATE"}}"#
            ));
            let error = dc_push(body.as_bytes()).expect_err(to_hash);
            assert!(
                error.to_string().starts_with("changes[0].toHash: "),
                "{to_hash}: {error}"
            );
        }
        let body = dc_change(&format!(
            r#"{{"refId":"refs/heads/main","fromHash":12345,"toHash":"{HASH}"}}"#
        ));
        let error = dc_push(body.as_bytes()).expect_err("fromHash");
        assert!(error.to_string().contains("fromHash"), "{error}");
        // All zeros still means "no ref".
        let body = dc_change(&format!(
            r#"{{"refId":"refs/heads/main","fromHash":"{HASH}","toHash":"0000000000000000000000000000000000000000","type":"DELETE"}}"#
        ));
        let e = event(dc_push(body.as_bytes()).expect("a deletion"));
        assert_eq!(e.changes[0].new_target, None);
    }

    #[test]
    fn dc_ref_names_are_checked_like_git_check_ref_format() {
        let long = format!("refs/heads/{}", "x".repeat(5000));
        for (name, field) in [
            ("refs/heads/../../x", "ref.id"),
            ("refs/heads/a\\u0000b", "ref.id"),
            ("refs/heads/a\\nb", "ref.id"),
            ("refs/heads/\\u001b[31mred", "ref.id"),
            (long.as_str(), "ref.id"),
        ] {
            let body = dc_change(&format!(
                r#"{{"ref":{{"id":"{name}","type":"BRANCH"}},"fromHash":"{HASH}","toHash":"{HASH}"}}"#
            ));
            let error = dc_push(body.as_bytes()).expect_err(name);
            assert!(matches!(error, PayloadError::RefName { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("changes[0].{field}: invalid ref name")),
                "{error}"
            );
        }
        let body = dc_change(&format!(
            r#"{{"refId":"refs/heads/x.lock","fromHash":"{HASH}","toHash":"{HASH}"}}"#
        ));
        let error = dc_push(body.as_bytes()).expect_err("refId");
        assert!(
            error.to_string().starts_with("changes[0].refId: "),
            "{error}"
        );
    }

    #[test]
    fn strict_on_identity_everywhere() {
        let hostile = br#"{"repository":{"slug":"..","project":{"key":"PAY"}},"changes":[]}"#;
        assert!(
            parse(
                &envelope(SourceKind::DataCenter, "repo:refs_changed"),
                hostile
            )
            .is_err()
        );
        let hostile = br#"{"repository":{"full_name":"a/../../b"},"pullrequest":{"id":1}}"#;
        assert!(parse(&envelope(SourceKind::Cloud, "pullrequest:created"), hostile).is_err());
        let bad_hash = br#"{"repository":{"slug":"a","project":{"key":"P"}},"changes":[{"refId":"refs/heads/x","fromHash":"zz","toHash":"0000000000000000000000000000000000000000","type":"DELETE"}]}"#;
        assert!(
            parse(
                &envelope(SourceKind::DataCenter, "repo:refs_changed"),
                bad_hash
            )
            .is_err()
        );
    }
}
