//! Pushing restored refs to a remote (`undo --push`, `restore --push`),
//! with Debian's `git`: gix cannot push.
//!
//! The remote URL comes from the command line, the credentials never do:
//! the configured source's `Authorization` header reaches git through
//! `GIT_CONFIG_*` environment variables (readable only by this user, never
//! in an argument list or a file), and only when the URL's host is the
//! source's own git host. Only the http, https, ssh and file transports are
//! allowed (no `ext::` helpers), git never prompts, and a URL that starts
//! with `-` is refused before git sees it.

use std::path::Path;
use std::process::Command;

use crate::config::SecretString;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{url:?} is not a remote URL")]
    BadUrl { url: String },
    #[error("running git to push to {url}: {source}")]
    Spawn { url: String, source: std::io::Error },
    #[error("git push to {url} failed: {message}")]
    Failed { url: String, message: String },
}

/// A remote to push to, and the header (if any) that authenticates there.
#[derive(Debug)]
pub struct PushTarget {
    url: String,
    authorization: Option<SecretString>,
}

impl PushTarget {
    /// `url`, with the source's `authorization` when `url` is on the host
    /// of `source_url` (the source's clone URL for the repository).
    pub fn new(
        url: &str,
        source_url: &str,
        authorization: Option<SecretString>,
    ) -> Result<Self, PushError> {
        let bad = || PushError::BadUrl {
            url: url.to_string(),
        };
        if url.starts_with('-') || url.is_empty() || url.chars().any(char::is_control) {
            return Err(bad());
        }
        let parsed = gix::url::parse(gix::bstr::BStr::new(url.as_bytes())).map_err(|_| bad())?;
        let same_host =
            gix::url::parse(gix::bstr::BStr::new(source_url.as_bytes())).is_ok_and(|source| {
                source.scheme == parsed.scheme
                    && source.host() == parsed.host()
                    && source.port_or_default() == parsed.port_or_default()
            });
        Ok(Self {
            url: url.to_string(),
            authorization: authorization.filter(|_| same_host),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the source's credentials go along.
    pub fn authenticated(&self) -> bool {
        self.authorization.is_some()
    }

    fn git(&self, repo_dir: Option<&Path>) -> Command {
        let mut git = Command::new("git");
        if let Some(dir) = repo_dir {
            git.arg("-C").arg(dir);
        }
        git.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("GIT_ALLOW_PROTOCOL", "http:https:ssh:file")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE");
        if let Some(authorization) = &self.authorization {
            git.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: {}", authorization.expose()),
                );
        } else {
            git.env_remove("GIT_CONFIG_COUNT");
        }
        git
    }

    /// Push `refspecs` (`+<id>:<ref>` or `<ref>:<ref>`) from the bare
    /// repository at `repo_dir`.
    pub fn push(&self, repo_dir: &Path, refspecs: &[String]) -> Result<String, PushError> {
        let output = self
            .git(Some(repo_dir))
            .args(["push", "--porcelain", "--"])
            .arg(&self.url)
            .args(refspecs)
            .output()
            .map_err(|source| PushError::Spawn {
                url: self.url.clone(),
                source,
            })?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
        if output.status.success() {
            Ok(text(&output.stdout))
        } else {
            let stderr = text(&output.stderr);
            Err(PushError::Failed {
                url: self.url.clone(),
                message: if stderr.is_empty() {
                    text(&output.stdout)
                } else {
                    stderr
                },
            })
        }
    }

    /// The remote's refs (`git ls-remote`, without `HEAD` and peeled tags):
    /// name → hex target.
    pub fn ls_remote(&self) -> Result<Vec<(String, String)>, PushError> {
        let output = self
            .git(None)
            .args(["ls-remote", "--"])
            .arg(&self.url)
            .output()
            .map_err(|source| PushError::Spawn {
                url: self.url.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(PushError::Failed {
                url: self.url.clone(),
                message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (target, name) = line.split_once('\t')?;
                (name.starts_with("refs/") && !name.ends_with("^{}"))
                    .then(|| (name.to_string(), target.to_string()))
            })
            .collect())
    }
}
