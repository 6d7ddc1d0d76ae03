//! Bitbucket payload shapes, parsed leniently: every field that Bitbucket
//! sometimes omits is optional. Only what identifies the repository is strict.

use serde::Deserialize;

use crate::event::{RefChange, RefKind};
use crate::ids::{GitOid, InvalidOid, InvalidRepoName, RepoName};

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
    #[error("change to {reference}: {source}")]
    Oid {
        reference: String,
        source: InvalidOid,
    },
    #[error("change has a ref with no name")]
    NoRefName,
    #[error("payload has no {0}")]
    Missing(&'static str),
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
    hash: Option<String>,
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
    let push: CloudPush = serde_json::from_slice(body).map_err(|source| PayloadError::Json {
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
    for change in push.push.map(|p| p.changes).unwrap_or_default() {
        let side = change.new.as_ref().or(change.old.as_ref());
        let Some(side) = side else { continue };
        let short = side.name.clone().ok_or(PayloadError::NoRefName)?;
        let kind = match side.kind.as_deref() {
            Some("branch") | Some("named_branch") => RefKind::Branch,
            Some("tag") | Some("annotated_tag") => RefKind::Tag,
            _ => RefKind::Other,
        };
        let name = match kind {
            RefKind::Branch => format!("refs/heads/{short}"),
            RefKind::Tag => format!("refs/tags/{short}"),
            RefKind::Other => short,
        };
        let target = |r: Option<&CloudRef>| -> Result<Option<String>, PayloadError> {
            match r
                .and_then(|r| r.target.as_ref())
                .and_then(|t| t.hash.as_deref())
            {
                None => Ok(None),
                Some(h) => GitOid::from_hex(h)
                    .map(|oid| Some(oid.to_hex()))
                    .map_err(|source| PayloadError::Oid {
                        reference: name.clone(),
                        source,
                    }),
            }
        };
        let old_target = target(change.old.as_ref())?;
        let new_target = target(change.new.as_ref())?;
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
        assert!(matches!(
            parse_cloud_push(bad_hash),
            Err(PayloadError::Oid { .. })
        ));
    }
}
