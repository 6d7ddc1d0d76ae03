//! Bitbucket payload shapes, parsed leniently: every field that Bitbucket
//! sometimes omits is optional. Only what identifies the repository is strict.

use serde::Deserialize;

use crate::event::{RefChange, RefKind};
use crate::ids::{GitOid, InvalidOid, InvalidRefName, InvalidRepoName, RefName, RepoName};

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON for {event_key}: {source}")]
    Json {
        event_key: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Repo(#[from] InvalidRepoName),
    #[error("payload has no repository full_name")]
    NoRepository,
    /// `field` is where in the body, e.g. `changes[0].toHash`.
    #[error("{field}: {source}")]
    Oid { field: String, source: InvalidOid },
    #[error("{field}: expected 40 hex digits as a string, found {found}")]
    NotAnOid { field: String, found: String },
    #[error("{field}: {source}")]
    RefName {
        field: String,
        source: InvalidRefName,
    },
    #[error("{field}: missing ref name")]
    NoRefName { field: String },
    #[error("payload has no {0}")]
    Missing(&'static str),
}

impl PayloadError {
    /// A JSON value where an object id belongs, described briefly.
    pub(crate) fn not_an_oid(field: String, found: &serde_json::Value) -> Self {
        let mut found = found.to_string();
        if found.len() > 80 {
            found = format!("{}…", found.chars().take(80).collect::<String>());
        }
        Self::NotAnOid { field, found }
    }
}

#[derive(Deserialize)]
struct Actor {
    display_name: Option<String>,
    nickname: Option<String>,
}

#[derive(Deserialize)]
struct Repository {
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct Target {
    /// Any JSON value, so that a number is refused naming the field.
    hash: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct CloudRef {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    target: Option<Target>,
}

#[derive(Deserialize)]
struct CloudChange {
    old: Option<CloudRef>,
    new: Option<CloudRef>,
    #[serde(default)]
    forced: bool,
}

#[derive(Deserialize)]
struct Push {
    #[serde(default)]
    changes: Vec<CloudChange>,
}

#[derive(Deserialize)]
struct CloudPush {
    actor: Option<Actor>,
    repository: Option<Repository>,
    push: Option<Push>,
}

/// What a Cloud `repo:push` says.
#[derive(Debug)]
pub struct ParsedPush {
    pub repository: RepoName,
    pub actor: Option<String>,
    pub changes: Vec<RefChange>,
}

pub fn parse_cloud_push(body: &[u8]) -> Result<ParsedPush, PayloadError> {
    let push: CloudPush =
        super::strict_json::parse_as(body).map_err(|source| PayloadError::Json {
            event_key: "repo:push".into(),
            source,
        })?;
    let full_name = push
        .repository
        .and_then(|r| r.full_name)
        .ok_or(PayloadError::NoRepository)?;
    let repository = RepoName::parse(&full_name)?;
    let actor = push.actor.and_then(|a| a.display_name.or(a.nickname));
    let mut changes = Vec::new();
    for (i, change) in push
        .push
        .map(|p| p.changes)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let (side, which) = match (&change.new, &change.old) {
            (Some(new), _) => (new, "new"),
            (None, Some(old)) => (old, "old"),
            (None, None) => continue,
        };
        let field = |what: &str| format!("push.changes[{i}].{what}");
        let short = side.name.clone().ok_or_else(|| PayloadError::NoRefName {
            field: field(&format!("{which}.name")),
        })?;
        let kind = match side.kind.as_deref() {
            Some("branch") | Some("named_branch") => RefKind::Branch,
            Some("tag") | Some("annotated_tag") => RefKind::Tag,
            _ => RefKind::Other,
        };
        let full = match kind {
            RefKind::Branch => format!("refs/heads/{short}"),
            RefKind::Tag => format!("refs/tags/{short}"),
            RefKind::Other => short,
        };
        let name = RefName::parse(&full).map_err(|source| PayloadError::RefName {
            field: field(&format!("{which}.name")),
            source,
        })?;
        let target = |r: Option<&CloudRef>, which: &str| -> Result<Option<String>, PayloadError> {
            let field = || field(&format!("{which}.target.hash"));
            match r
                .and_then(|r| r.target.as_ref())
                .and_then(|t| t.hash.as_ref())
            {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(h)) => GitOid::from_hex(h)
                    .map(|oid| Some(oid.to_hex()))
                    .map_err(|source| PayloadError::Oid {
                        field: field(),
                        source,
                    }),
                Some(other) => Err(PayloadError::not_an_oid(field(), other)),
            }
        };
        let old_target = target(change.old.as_ref(), "old")?;
        let new_target = target(change.new.as_ref(), "new")?;
        changes.push(RefChange {
            name,
            kind,
            old_target,
            new_target,
            forced: change.forced,
        });
    }
    Ok(ParsedPush {
        repository,
        actor,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = include_bytes!("../../../examples/payloads/cloud-repo-push.json");

    #[test]
    fn parses_documented_example() {
        let push = parse_cloud_push(EXAMPLE).expect("example parses");
        assert_eq!(push.repository.to_string(), "acme-eng/billing-service");
        assert_eq!(push.actor.as_deref(), Some("Dana Okafor"));
        assert_eq!(push.changes.len(), 2);
        assert_eq!(push.changes[0].name, "refs/heads/main");
        assert_eq!(
            push.changes[0].new_target.as_deref(),
            Some("e91f3c7a2b5d8e0f4a6c1b3d5e7f9a0b2c4d6e8f")
        );
        assert_eq!(push.changes[1].name, "refs/heads/feature/old-export");
        assert_eq!(push.changes[1].new_target, None);
    }

    #[test]
    fn tolerates_missing_optional_parts() {
        let body = br#"{"repository":{"full_name":"a/b"},"push":{"changes":[{"new":{"type":"tag","name":"v1"}}]}}"#;
        let push = parse_cloud_push(body).expect("lenient");
        assert_eq!(push.actor, None);
        assert_eq!(push.changes[0].name, "refs/tags/v1");
        assert_eq!(push.changes[0].new_target, None);
    }

    #[test]
    fn strict_on_identity() {
        let hostile = br#"{"repository":{"full_name":"../../etc"},"push":{"changes":[]}}"#;
        assert!(matches!(
            parse_cloud_push(hostile),
            Err(PayloadError::Repo(_))
        ));
        let missing = br#"{"push":{"changes":[]}}"#;
        assert!(matches!(
            parse_cloud_push(missing),
            Err(PayloadError::NoRepository)
        ));
        assert!(matches!(
            parse_cloud_push(b"{not json"),
            Err(PayloadError::Json { .. })
        ));
        let bad_hash = br#"{"repository":{"full_name":"a/b"},"push":{"changes":[{"new":{"type":"branch","name":"x","target":{"hash":"nothex"}}}]}}"#;
        let error = parse_cloud_push(bad_hash).expect_err("bad hash");
        assert!(matches!(error, PayloadError::Oid { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with("push.changes[0].new.target.hash: "),
            "{error}"
        );
        let number = br#"{"repository":{"full_name":"a/b"},"push":{"changes":[{"new":{"type":"branch","name":"x","target":{"hash":12345}}}]}}"#;
        let error = parse_cloud_push(number).expect_err("a number is no hash");
        assert!(matches!(error, PayloadError::NotAnOid { .. }), "{error}");
        assert!(error.to_string().contains("12345"), "{error}");
    }

    #[test]
    fn ref_names_are_checked_like_git_check_ref_format() {
        for bad in [
            "../../x",
            "a\\u0000b",
            "evil\\nrefs/heads/forged",
            "\\u001b[2Kred",
            "x.lock",
        ] {
            let body = format!(
                r#"{{"repository":{{"full_name":"a/b"}},"push":{{"changes":[{{"new":{{"type":"branch","name":"{bad}","target":{{"hash":"e91f3c7a2b5d8e0f4a6c1b3d5e7f9a0b2c4d6e8f"}}}}}}]}}}}"#
            );
            let error = parse_cloud_push(body.as_bytes()).expect_err(bad);
            assert!(
                matches!(error, PayloadError::RefName { .. }),
                "{bad}: {error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("push.changes[0].new.name: invalid ref name"),
                "{error}"
            );
        }
        let long = "x".repeat(5000);
        let body = format!(
            r#"{{"repository":{{"full_name":"a/b"}},"push":{{"changes":[{{"old":{{"type":"tag","name":"{long}"}}}}]}}}}"#
        );
        let error = parse_cloud_push(body.as_bytes()).expect_err("too long");
        assert!(
            error.to_string().starts_with("push.changes[0].old.name: "),
            "{error}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        // Inside the part the push is read from, and in a part it ignores.
        for body in [
            &br#"{"repository":{"full_name":"a/b","full_name":"c/d"},"push":{"changes":[]}}"#[..],
            br#"{"repository":{"full_name":"a/b"},"links":{},"links":{},"push":{"changes":[]}}"#,
        ] {
            let error = parse_cloud_push(body).expect_err("duplicate");
            assert!(error.to_string().contains("duplicate"), "{error}");
        }
    }
}
