//! `hookvault hooks register|list|remove`: hookvault's own webhook on a
//! Bitbucket repository, workspace or project, through the documented REST
//! endpoints. Registering is idempotent: a hook with the same URL is found
//! and kept, never duplicated.

use std::path::Path;

use serde::Serialize;

use crate::bitbucket::rest::{Api, ApiError, Hook, HookSpec, HookTarget};
use crate::bitbucket::secrets::{self, HookSecretError};
use crate::config::{SecretString, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Secret(#[from] HookSecretError),
    #[error("cannot generate a secret: {0}")]
    Random(String),
    #[error("no hook with id {id} on {target}")]
    NoSuchHook { id: String, target: String },
}

/// The events hookvault subscribes to, per Bitbucket flavour. Data Center
/// rejects a whole hook if one key is unknown to its version, so only keys
/// that every supported version knows are listed.
pub fn default_events(kind: SourceKind) -> Vec<String> {
    let keys: &[&str] = match kind {
        SourceKind::Cloud => &[
            "repo:push",
            "repo:updated",
            "repo:transfer",
            "repo:deleted",
            "repo:fork",
            "pullrequest:created",
            "pullrequest:updated",
            "pullrequest:fulfilled",
            "pullrequest:rejected",
            "pullrequest:comment_created",
            "pullrequest:comment_updated",
            "pullrequest:comment_deleted",
        ],
        SourceKind::DataCenter => &[
            "repo:refs_changed",
            "repo:modified",
            "repo:forked",
            "pr:opened",
            "pr:modified",
            "pr:merged",
            "pr:declined",
            "pr:deleted",
            "pr:comment:added",
            "pr:comment:edited",
            "pr:comment:deleted",
        ],
    };
    keys.iter().map(|k| k.to_string()).collect()
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Registered {
    Created { hook: HookView },
    AlreadyRegistered { hook: HookView },
}

/// A hook as shown to the user (never a secret).
#[derive(Debug, Clone, Serialize)]
pub struct HookView {
    pub id: String,
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
    pub active: bool,
}

impl From<&Hook> for HookView {
    fn from(h: &Hook) -> Self {
        Self {
            id: h.id.clone(),
            url: h.url.clone(),
            description: h.description.clone(),
            events: h.events.clone(),
            active: h.active,
        }
    }
}

fn target_text(target: &HookTarget) -> String {
    match target {
        HookTarget::Repository(repo) => repo.to_string(),
        HookTarget::Workspace(ws) => ws.clone(),
    }
}

/// Register hookvault's hook at `target` unless one with `url` exists.
/// The secret (given, or generated) is kept in the store directory so the
/// receiver accepts it.
pub async fn register(
    api: &Api,
    store_dir: &Path,
    source: &str,
    target: &HookTarget,
    url: &str,
    secret: Option<SecretString>,
    description: &str,
) -> Result<Registered, HooksError> {
    let existing = api.list_hooks(target).await?;
    if let Some(hook) = existing.iter().find(|h| h.url == url) {
        return Ok(Registered::AlreadyRegistered {
            hook: HookView::from(hook),
        });
    }
    let secret = match secret {
        Some(secret) => secret,
        None => secrets::generate().map_err(|e| HooksError::Random(e.to_string()))?,
    };
    // Keep the secret first: a hook whose secret is lost cannot be verified.
    secrets::add(store_dir, source, &secret, &target_text(target), url)?;
    let spec = HookSpec {
        url: url.to_string(),
        description: description.to_string(),
        secret,
        events: default_events(api.kind()),
    };
    let hook = api.create_hook(target, &spec).await?;
    Ok(Registered::Created {
        hook: HookView::from(&hook),
    })
}

pub async fn list(api: &Api, target: &HookTarget) -> Result<Vec<HookView>, HooksError> {
    Ok(api
        .list_hooks(target)
        .await?
        .iter()
        .map(HookView::from)
        .collect())
}

/// Remove the hook with `id`, or every hook whose URL is `url`, and revoke
/// the secrets kept for them. Returns the removed hooks.
pub async fn remove(
    api: &Api,
    store_dir: &Path,
    source: &str,
    target: &HookTarget,
    id: Option<&str>,
    url: Option<&str>,
) -> Result<Vec<HookView>, HooksError> {
    let hooks = api.list_hooks(target).await?;
    let chosen: Vec<&Hook> = hooks
        .iter()
        .filter(|h| id.is_some_and(|id| h.id == id) || url.is_some_and(|url| h.url == url))
        .collect();
    if let (Some(id), true) = (id, chosen.is_empty()) {
        return Err(HooksError::NoSuchHook {
            id: id.to_string(),
            target: target_text(target),
        });
    }
    let mut removed = Vec::new();
    for hook in chosen {
        api.delete_hook(target, &hook.id).await?;
        secrets::revoke(store_dir, source, &target_text(target), &hook.url)?;
        removed.push(HookView::from(hook));
    }
    Ok(removed)
}
