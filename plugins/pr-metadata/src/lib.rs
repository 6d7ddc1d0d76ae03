//! hookvault's pull-request backup plugin (world `metadata-backup`, WIT
//! 0.2.0).
//!
//! Each pull request is one document, `pull-requests/<id>`: the pull
//! request's fields and every comment seen so far. An event updates the
//! pull request's fields (unless it is older than the stored state) and
//! merges its comments by id (a deleted comment stays, marked deleted), then
//! stores the result as a new version; the store keeps every earlier
//! version.

use hookvault_plugin::config::Empty;
use hookvault_plugin::metadata::{MetadataBackup, documents, source as metadata};
use hookvault_plugin::{Event, log};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct PullRequestDoc {
    id: u64,
    title: String,
    description: Option<String>,
    state: String,
    author: Option<String>,
    source_branch: Option<String>,
    source_commit: Option<String>,
    destination_branch: Option<String>,
    destination_commit: Option<String>,
    reviewers: Vec<String>,
    created: Option<String>,
    updated: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq)]
struct CommentDoc {
    id: u64,
    text: String,
    author: Option<String>,
    created: Option<String>,
    updated: Option<String>,
    parent: Option<u64>,
    path: Option<String>,
    line: Option<u64>,
    deleted: bool,
}

#[derive(Serialize, Deserialize)]
struct Document {
    pull_request: PullRequestDoc,
    comments: Vec<CommentDoc>,
}

impl From<metadata::PullRequest> for PullRequestDoc {
    fn from(p: metadata::PullRequest) -> Self {
        Self {
            id: p.id,
            title: p.title,
            description: p.description,
            state: p.state,
            author: p.author,
            source_branch: p.source_branch,
            source_commit: p.source_commit,
            destination_branch: p.destination_branch,
            destination_commit: p.destination_commit,
            reviewers: p.reviewers,
            created: p.created,
            updated: p.updated,
        }
    }
}

impl From<metadata::Comment> for CommentDoc {
    fn from(c: metadata::Comment) -> Self {
        Self {
            id: c.id,
            text: c.text,
            author: c.author,
            created: c.created,
            updated: c.updated,
            parent: c.parent,
            path: c.path,
            line: c.line,
            deleted: c.deleted,
        }
    }
}

struct PrMetadata;

impl MetadataBackup for PrMetadata {
    type Config = Empty;

    fn backup(_event: &Event, _config: &Empty) -> Result<Vec<String>, String> {
        let Some(pr) = metadata::current_pull_request() else {
            log::debug("event carries no pull request; nothing to store");
            return Ok(Vec::new());
        };
        let pr = PullRequestDoc::from(pr);
        let key = pr.id.to_string();
        let mut doc = match documents::get("pull-requests", &key)? {
            Some(json) => serde_json::from_str::<Document>(&json)
                .map_err(|e| format!("stored pull request {key} is unreadable: {e}"))?,
            None => Document {
                pull_request: pr.clone(),
                comments: Vec::new(),
            },
        };
        // Deliveries can arrive out of order (retries, reconciliation): never
        // let an older state of the pull request replace a newer one. Times
        // are fixed-width RFC 3339 UTC, so they compare as text.
        let older = matches!(
            (&pr.updated, &doc.pull_request.updated),
            (Some(incoming), Some(stored)) if incoming < stored
        );
        if older {
            log::info(&format!(
                "pull request {key}: event is older than the stored state; fields kept"
            ));
        } else {
            doc.pull_request = pr;
        }
        for comment in metadata::current_comments() {
            let comment = CommentDoc::from(comment);
            match doc.comments.iter_mut().find(|c| c.id == comment.id) {
                Some(existing) if comment.deleted => existing.deleted = true,
                Some(existing) => *existing = comment,
                None => doc.comments.push(comment),
            }
        }
        doc.comments.sort_by_key(|c| c.id);
        let json = serde_json::to_string(&doc).map_err(|e| e.to_string())?;
        let version = documents::put("pull-requests", &key, &json)?;
        Ok(vec![version])
    }
}

hookvault_plugin::export_metadata_backup!(PrMetadata);
