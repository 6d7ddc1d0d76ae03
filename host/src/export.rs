//! `hookvault export-metadata`: pull requests and their comments, as they
//! were at a moment, written out as JSON and as readable Markdown (one file
//! per pull request, comments as threads).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::event::{Comment, PullRequest};
use crate::ids::RepoName;
use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("export target {path} exists and is not empty; export into a new directory")]
    TargetNotEmpty { path: PathBuf },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("stored pull request {key} of {repo} is unreadable: {message}")]
    Document {
        repo: RepoName,
        key: String,
        message: String,
    },
}

/// The stored shape of `pull-requests/<id>` (see plugins/pr-metadata).
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct PullRequestDocument {
    pub pull_request: PullRequest,
    pub comments: Vec<Comment>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub repository: String,
    pub pull_requests: usize,
    pub comments: usize,
    pub path: PathBuf,
}

fn write(path: &Path, contents: &[u8]) -> Result<(), ExportError> {
    std::fs::write(path, contents).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

pub fn export_metadata(
    store: &Vault,
    repo: &RepoName,
    at_ms: Option<u64>,
    to: &Path,
) -> Result<ExportReport, ExportError> {
    if to.exists()
        && std::fs::read_dir(to)
            .map_err(|source| ExportError::Io {
                path: to.to_path_buf(),
                source,
            })?
            .next()
            .is_some()
    {
        return Err(ExportError::TargetNotEmpty {
            path: to.to_path_buf(),
        });
    }
    let dir = to.join("pull-requests");
    std::fs::create_dir_all(&dir).map_err(|source| ExportError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut documents = Vec::new();
    for version in store.documents_at(repo, "pull-requests", at_ms)? {
        let bytes = store.read_document(&version)?;
        let doc: PullRequestDocument =
            serde_json::from_slice(&bytes).map_err(|e| ExportError::Document {
                repo: repo.clone(),
                key: version.key.clone(),
                message: e.to_string(),
            })?;
        documents.push(doc);
    }
    documents.sort_by_key(|d| d.pull_request.id);
    let mut comments = 0;
    let mut index = format!(
        "# Pull requests of {repo}\n\n| # | Title | State | Author | Comments |\n|---|---|---|---|---|\n"
    );
    for doc in &documents {
        let pr = &doc.pull_request;
        comments += doc.comments.len();
        let json = serde_json::to_vec_pretty(doc).map_err(|e| ExportError::Document {
            repo: repo.clone(),
            key: pr.id.to_string(),
            message: e.to_string(),
        })?;
        write(&dir.join(format!("{}.json", pr.id)), &json)?;
        write(
            &dir.join(format!("{}.md", pr.id)),
            markdown(repo, doc).as_bytes(),
        )?;
        let _ = writeln!(
            index,
            "| [{id}](pull-requests/{id}.md) | {title} | {state} | {author} | {n} |",
            id = pr.id,
            title = pr.title.replace('|', "\\|"),
            state = pr.state,
            author = pr.author.as_deref().unwrap_or("unknown"),
            n = doc.comments.len(),
        );
    }
    write(&to.join("README.md"), index.as_bytes())?;
    Ok(ExportReport {
        repository: repo.to_string(),
        pull_requests: documents.len(),
        comments,
        path: to.to_path_buf(),
    })
}

/// One pull request as Markdown: header, description, comment threads.
pub fn markdown(repo: &RepoName, doc: &PullRequestDocument) -> String {
    let pr = &doc.pull_request;
    let mut out = String::new();
    let _ = writeln!(out, "# #{} {}\n", pr.id, pr.title);
    let _ = writeln!(out, "- **Repository:** {repo}");
    let _ = writeln!(out, "- **State:** {}", pr.state);
    let _ = writeln!(
        out,
        "- **Author:** {}",
        pr.author.as_deref().unwrap_or("unknown")
    );
    if let (Some(from), Some(to)) = (&pr.source_branch, &pr.destination_branch) {
        let _ = writeln!(out, "- **Branches:** `{from}` → `{to}`");
    }
    if !pr.reviewers.is_empty() {
        let _ = writeln!(out, "- **Reviewers:** {}", pr.reviewers.join(", "));
    }
    if let Some(created) = &pr.created {
        let _ = writeln!(out, "- **Created:** {created}");
    }
    if let Some(updated) = &pr.updated {
        let _ = writeln!(out, "- **Updated:** {updated}");
    }
    let _ = writeln!(out, "\n## Description\n");
    let _ = writeln!(
        out,
        "{}\n",
        pr.description
            .as_deref()
            .filter(|d| !d.trim().is_empty())
            .unwrap_or("_No description._")
    );
    let _ = writeln!(out, "## Comments ({})\n", doc.comments.len());
    if doc.comments.is_empty() {
        let _ = writeln!(out, "_No comments._");
        return out;
    }
    let ids: std::collections::BTreeSet<u64> = doc.comments.iter().map(|c| c.id).collect();
    let mut children: BTreeMap<Option<u64>, Vec<&Comment>> = BTreeMap::new();
    for c in &doc.comments {
        // A reply whose parent is unknown is shown as a thread of its own.
        let parent = c.parent.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(c);
    }
    for list in children.values_mut() {
        list.sort_by_key(|c| c.id);
    }
    let roots = children.get(&None).cloned().unwrap_or_default();
    for (n, root) in roots.iter().enumerate() {
        if n > 0 {
            let _ = writeln!(out, "---\n");
        }
        thread(&mut out, root, &children, 0);
    }
    out
}

fn thread(
    out: &mut String,
    comment: &Comment,
    children: &BTreeMap<Option<u64>, Vec<&Comment>>,
    depth: usize,
) {
    let quote = "> ".repeat(depth);
    let author = comment.author.as_deref().unwrap_or("unknown");
    let when = comment.created.as_deref().unwrap_or("unknown time");
    let arrow = if depth > 0 { "↳ " } else { "" };
    let _ = writeln!(
        out,
        "{quote}**{arrow}{author}** — {when} (comment {})",
        comment.id
    );
    if let Some(path) = &comment.path {
        match comment.line {
            Some(line) => {
                let _ = writeln!(out, "{quote}_on `{path}` line {line}_");
            }
            None => {
                let _ = writeln!(out, "{quote}_on `{path}`_");
            }
        }
    }
    let _ = writeln!(out, "{}", quote.trim_end());
    if comment.deleted {
        let _ = writeln!(out, "{quote}_(deleted)_");
    }
    for line in comment.text.lines() {
        let _ = writeln!(out, "{quote}{line}");
    }
    let _ = writeln!(out);
    if let Some(replies) = children.get(&Some(comment.id)) {
        for reply in replies {
            thread(out, reply, children, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(id: u64, parent: Option<u64>, text: &str) -> Comment {
        Comment {
            id,
            text: text.into(),
            author: Some(format!("user{id}")),
            created: Some("2026-03-04T16:50:00Z".into()),
            updated: None,
            parent,
            path: (id == 3).then(|| "src/invoice.rs".to_string()),
            line: (id == 3).then_some(12),
            deleted: false,
        }
    }

    #[test]
    fn markdown_threads_replies_under_their_parent() {
        let doc = PullRequestDocument {
            pull_request: PullRequest {
                id: 42,
                title: "Retry idempotent invoice writes".into(),
                description: Some("Adds bounded retries.".into()),
                state: "OPEN".into(),
                author: Some("Dana Okafor".into()),
                source_branch: Some("feature/retries".into()),
                source_commit: None,
                destination_branch: Some("main".into()),
                destination_commit: None,
                reviewers: vec!["Lars Nyberg".into()],
                created: Some("2026-03-04T16:45:03Z".into()),
                updated: None,
            },
            comments: vec![
                comment(1, None, "Looks good overall."),
                comment(2, Some(1), "Thanks!"),
                comment(3, None, "Off by one here?"),
                comment(4, Some(2), "Nested reply."),
            ],
        };
        let md = markdown(&RepoName::parse("acme/app").expect("name"), &doc);
        assert!(md.starts_with("# #42 Retry idempotent invoice writes\n"));
        assert!(md.contains("- **Branches:** `feature/retries` → `main`"));
        let first = md.find("Looks good overall.").expect("root");
        let reply = md.find("> Thanks!").expect("reply quoted once");
        let nested = md
            .find("> > Nested reply.")
            .expect("nested reply quoted twice");
        let second_thread = md.find("Off by one here?").expect("second root");
        assert!(
            first < reply && reply < nested && nested < second_thread,
            "{md}"
        );
        assert!(md.contains("_on `src/invoice.rs` line 12_"));
        assert!(md.contains("## Comments (4)"));
    }
}
