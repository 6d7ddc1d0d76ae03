//! Bitbucket REST client (Cloud 2.0 and Data Center): repository listing for
//! reconciliation, webhook registration, and pull-request metadata.
//!
//! One `Api` per source. Every request carries the source's REST
//! `Authorization` header (held as a sensitive header value, never logged,
//! never in `Debug` or in an error). Rate limits (429) and gateway errors
//! (502/503/504) are retried with `Retry-After` or an exponential backoff;
//! paging follows Cloud's opaque `next` links (only on the API's own origin)
//! and Data Center's `isLastPage`/`nextPageStart`, bounded so a looping
//! server cannot hang the caller.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use crate::config::{ConfigError, SecretString, SourceConfig, SourceKind};
use crate::ids::RepoName;

/// Whole-request timeout (connect, send, read the body).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of retries after a 429 / 502 / 503 / 504.
const DEFAULT_MAX_RETRIES: u32 = 5;
/// First backoff when the server gives no `Retry-After`; doubles per retry.
const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// No single wait is longer than this, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Paging stops with an error after this many pages.
const DEFAULT_MAX_PAGES: usize = 10_000;
/// How much of an error body goes into an error message.
const EXCERPT_CHARS: usize = 200;
/// Bitbucket Cloud refuses longer webhook secrets.
const CLOUD_SECRET_MAX: usize = 128;

/// Page sizes: Cloud allows `pagelen` ≤ 100 (≤ 50 for pull requests), Data
/// Center `limit` up to its configured maximum (1000 by default).
const CLOUD_PAGELEN: u32 = 100;
const CLOUD_PR_PAGELEN: u32 = 50;
const DC_LIMIT: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "source {source_name:?} has no REST API base: set api_url (e.g. \"https://bitbucket.example.com/rest/api/latest\")"
    )]
    NoApiBase { source_name: String },
    #[error("source {source_name:?}: REST credentials: {error}")]
    Credentials {
        source_name: String,
        error: ConfigError,
    },
    #[error("invalid REST API base {base:?}: {reason}")]
    InvalidBase { base: String, reason: String },
    #[error("the REST Authorization value is not a valid HTTP header value")]
    InvalidAuthorization,
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("{method} {path}: {error}")]
    Transport {
        method: Method,
        path: String,
        error: reqwest::Error,
    },
    #[error("{method} {path}: HTTP {status}: {excerpt}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        excerpt: String,
    },
    #[error("{method} {path}: HTTP {status} after {attempts} attempts, giving up: {excerpt}")]
    RetriesExhausted {
        method: Method,
        path: String,
        status: u16,
        attempts: u32,
        excerpt: String,
    },
    #[error("{method} {path}: unexpected response: {reason}")]
    Decode {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("GET {path}: more than {max} pages, stopping (the server's paging does not end)")]
    TooManyPages { path: String, max: usize },
}

/// A repository as the REST API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRepo {
    pub name: RepoName,
    /// Cloud: the `https` clone link; Data Center: the `http` clone link.
    pub clone_url: Option<String>,
}

/// Where a webhook lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookTarget {
    /// One repository.
    Repository(RepoName),
    /// A Cloud workspace or a Data Center project (by key).
    Workspace(String),
}

/// A webhook to create.
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub url: String,
    /// Cloud `description`, Data Center `name`.
    pub description: String,
    pub secret: SecretString,
    pub events: Vec<String>,
}

/// A webhook as the API reports it (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Cloud: the `uuid` (with braces); Data Center: the numeric `id`.
    pub id: String,
    pub url: String,
    /// Cloud `description`, Data Center `name`.
    pub description: String,
    pub events: Vec<String>,
    pub active: bool,
}

/// A REST client for one Bitbucket source.
pub struct Api {
    kind: SourceKind,
    base: String,
    authorization: Option<HeaderValue>,
    client: reqwest::Client,
    max_retries: u32,
    retry_base: Duration,
    max_pages: usize,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("kind", &self.kind)
            .field("base", &self.base)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("max_retries", &self.max_retries)
            .field("retry_base", &self.retry_base)
            .field("max_pages", &self.max_pages)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// `base` is the REST base without trailing slash: Cloud
    /// `https://api.bitbucket.org/2.0`, DC `{server}/rest/api/latest`.
    pub fn new(
        kind: SourceKind,
        base: String,
        authorization: Option<SecretString>,
    ) -> Result<Self, ApiError> {
        let base = base.trim_end_matches('/').to_string();
        let invalid = |reason: String| ApiError::InvalidBase {
            base: base.clone(),
            reason,
        };
        let parsed = Url::parse(&base).map_err(|e| invalid(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("must not have a query or fragment".into()));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                "must not contain credentials (use [sources.credentials])".into(),
            ));
        }
        let authorization = authorization
            .map(|secret| {
                HeaderValue::from_str(secret.expose())
                    .map(|mut value| {
                        value.set_sensitive(true);
                        value
                    })
                    .map_err(|_| ApiError::InvalidAuthorization)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("hookvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ApiError::Client)?;
        Ok(Self {
            kind,
            base,
            authorization,
            client,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_base: DEFAULT_RETRY_BASE,
            max_pages: DEFAULT_MAX_PAGES,
        })
    }

    /// The client for a configured source: its `api_base()` and its REST
    /// credentials (none: anonymous requests).
    pub fn from_source(source: &SourceConfig) -> Result<Self, ApiError> {
        let base = source.api_base().ok_or_else(|| ApiError::NoApiBase {
            source_name: source.name.clone(),
        })?;
        let authorization = source
            .credentials
            .as_ref()
            .map(|credentials| {
                credentials
                    .rest_authorization(&format!("sources.{}.credentials.token", source.name))
                    .map_err(|error| ApiError::Credentials {
                        source_name: source.name.clone(),
                        error,
                    })
            })
            .transpose()?;
        Self::new(source.kind, base, authorization)
    }

    /// Retries after a 429 / 502 / 503 / 504 before giving up (default 5).
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The first backoff when the server sends no `Retry-After` (default
    /// 1 s, doubling per retry, each wait capped at 60 s).
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    /// Paging gives up with an error past this many pages (default 10 000).
    pub fn with_max_pages(mut self, n: usize) -> Self {
        self.max_pages = n.max(1);
        self
    }

    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Every repository of a Cloud workspace or a Data Center project.
    /// Names the API reports that are not valid `RepoName`s are skipped
    /// with a warning.
    pub async fn list_repositories(&self, scope: &str) -> Result<Vec<RemoteRepo>, ApiError> {
        let scope = segment(scope, "workspace or project key")?;
        let values = match self.kind {
            SourceKind::Cloud => {
                self.get_all(&format!("/repositories/{scope}?pagelen={CLOUD_PAGELEN}"))
                    .await?
            }
            SourceKind::DataCenter => {
                self.get_all(&format!("/projects/{scope}/repos?limit={DC_LIMIT}"))
                    .await?
            }
        };
        Ok(values
            .iter()
            .filter_map(|value| parse_repo(self.kind, value))
            .collect())
    }

    /// The webhooks of a repository or a workspace / project.
    pub async fn list_hooks(&self, target: &HookTarget) -> Result<Vec<Hook>, ApiError> {
        let path = self.hooks_path(target)?;
        let query = match self.kind {
            SourceKind::Cloud => format!("pagelen={CLOUD_PAGELEN}"),
            SourceKind::DataCenter => format!("limit={DC_LIMIT}"),
        };
        let values = self.get_all(&format!("{path}?{query}")).await?;
        values
            .iter()
            .map(|value| {
                parse_hook(self.kind, value).map_err(|reason| ApiError::Decode {
                    method: Method::GET,
                    path: path.clone(),
                    reason,
                })
            })
            .collect()
    }

    /// Create a webhook (active; Data Center with TLS verification on).
    pub async fn create_hook(
        &self,
        target: &HookTarget,
        spec: &HookSpec,
    ) -> Result<Hook, ApiError> {
        let path = self.hooks_path(target)?;
        let body = hook_body(self.kind, spec)?;
        let url = self.url(&path)?;
        let text = self.send(Method::POST, &url, Some(&body)).await?;
        let value = decode(&Method::POST, &url, &text)?;
        parse_hook(self.kind, &value).map_err(|reason| ApiError::Decode {
            method: Method::POST,
            path: display_path(&url),
            reason,
        })
    }

    /// Delete a webhook by its id (Cloud uuid, Data Center number).
    pub async fn delete_hook(&self, target: &HookTarget, id: &str) -> Result<(), ApiError> {
        let path = self.hooks_path(target)?;
        let id = segment(id, "webhook id")?;
        let url = self.url(&format!("{path}/{id}"))?;
        self.send(Method::DELETE, &url, None).await?;
        Ok(())
    }

    /// Every pull request in every state, as raw JSON values (Cloud:
    /// `?state=OPEN&state=MERGED&state=DECLINED&state=SUPERSEDED`; DC:
    /// `?state=ALL`).
    pub async fn list_pull_requests(&self, repo: &RepoName) -> Result<Vec<Value>, ApiError> {
        let path = match self.kind {
            SourceKind::Cloud => format!(
                "{}/pullrequests?state=OPEN&state=MERGED&state=DECLINED&state=SUPERSEDED&pagelen={CLOUD_PR_PAGELEN}",
                self.repo_path(repo)
            ),
            SourceKind::DataCenter => format!(
                "{}/pull-requests?state=ALL&limit={DC_LIMIT}",
                self.repo_path(repo)
            ),
        };
        self.get_all(&path).await
    }

    /// Every comment of a pull request as raw JSON values. Cloud:
    /// `/pullrequests/{id}/comments`. Data Center: the `comment` of every
    /// `COMMENTED` activity, nested replies flattened (each annotated with
    /// `"parent": {"id": …}` if it has no `parent`), each comment once.
    pub async fn list_pr_comments(
        &self,
        repo: &RepoName,
        pr_id: u64,
    ) -> Result<Vec<Value>, ApiError> {
        match self.kind {
            SourceKind::Cloud => {
                self.get_all(&format!(
                    "{}/pullrequests/{pr_id}/comments?pagelen={CLOUD_PAGELEN}",
                    self.repo_path(repo)
                ))
                .await
            }
            SourceKind::DataCenter => {
                let activities = self
                    .get_all(&format!(
                        "{}/pull-requests/{pr_id}/activities?limit={DC_LIMIT}",
                        self.repo_path(repo)
                    ))
                    .await?;
                Ok(comments_from_activities(activities))
            }
        }
    }

    fn repo_path(&self, repo: &RepoName) -> String {
        // A RepoName's segments are already URL-safe ([A-Za-z0-9._~-]).
        match self.kind {
            SourceKind::Cloud => format!("/repositories/{}/{}", repo.owner(), repo.slug()),
            SourceKind::DataCenter => format!("/projects/{}/repos/{}", repo.owner(), repo.slug()),
        }
    }

    fn hooks_path(&self, target: &HookTarget) -> Result<String, ApiError> {
        Ok(match (self.kind, target) {
            (SourceKind::Cloud, HookTarget::Repository(repo)) => {
                format!("{}/hooks", self.repo_path(repo))
            }
            (SourceKind::DataCenter, HookTarget::Repository(repo)) => {
                format!("{}/webhooks", self.repo_path(repo))
            }
            (SourceKind::Cloud, HookTarget::Workspace(ws)) => {
                format!("/workspaces/{}/hooks", segment(ws, "workspace")?)
            }
            (SourceKind::DataCenter, HookTarget::Workspace(key)) => {
                format!("/projects/{}/webhooks", segment(key, "project key")?)
            }
        })
    }

    fn url(&self, path_and_query: &str) -> Result<Url, ApiError> {
        let text = format!("{}{path_and_query}", self.base);
        Url::parse(&text).map_err(|e| ApiError::InvalidRequest(format!("URL {text:?}: {e}")))
    }

    /// Every value of a paged collection.
    async fn get_all(&self, path_and_query: &str) -> Result<Vec<Value>, ApiError> {
        let first = self.url(path_and_query)?;
        let mut values = Vec::new();
        let mut url = first.clone();
        let mut pages = 0usize;
        loop {
            if pages >= self.max_pages {
                return Err(ApiError::TooManyPages {
                    path: display_path(&first),
                    max: self.max_pages,
                });
            }
            pages += 1;
            let text = self.send(Method::GET, &url, None).await?;
            let page = decode(&Method::GET, &url, &text)?;
            let decode_error = |reason: String| ApiError::Decode {
                method: Method::GET,
                path: display_path(&url),
                reason,
            };
            match self.kind {
                SourceKind::Cloud => {
                    let (mut page_values, next) = parse_cloud_page(page).map_err(decode_error)?;
                    values.append(&mut page_values);
                    let Some(next) = next else { break };
                    let next_url = self.cloud_next(&url, &next).map_err(decode_error)?;
                    url = next_url;
                }
                SourceKind::DataCenter => {
                    let current = dc_start(&url);
                    let (mut page_values, next) = parse_dc_page(page).map_err(decode_error)?;
                    values.append(&mut page_values);
                    let Some(next) = next else { break };
                    if next <= current {
                        return Err(decode_error(format!(
                            "nextPageStart {next} does not advance past start {current}"
                        )));
                    }
                    url = with_start(&first, next);
                }
            }
        }
        Ok(values)
    }

    /// Cloud's `next` is opaque, but it must stay on the API's own origin:
    /// the Authorization header is never sent anywhere else.
    fn cloud_next(&self, current: &Url, next: &str) -> Result<Url, String> {
        let next_url = current
            .join(next)
            .map_err(|e| format!("invalid next link: {e}"))?;
        let base = Url::parse(&self.base).map_err(|e| e.to_string())?;
        if next_url.origin() != base.origin() {
            return Err(format!(
                "next link leaves the API origin ({})",
                base.origin().ascii_serialization()
            ));
        }
        if next_url == *current {
            return Err("next link points at the same page".into());
        }
        Ok(next_url)
    }

    /// One request, retried on 429 / 502 / 503 / 504; the body text of a
    /// 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<String, ApiError> {
        let path = display_path(url);
        let mut retries = 0u32;
        let mut backoff = self.retry_base;
        loop {
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .header(ACCEPT, "application/json");
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            tracing::debug!(%method, path = %path, "Bitbucket REST request");
            let response = request.send().await.map_err(|error| ApiError::Transport {
                method: method.clone(),
                path: path.clone(),
                error: error.without_url(),
            })?;
            let status = response.status();
            if status.is_success() {
                return response.text().await.map_err(|error| ApiError::Transport {
                    method: method.clone(),
                    path: path.clone(),
                    error: error.without_url(),
                });
            }
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let text = response.text().await.unwrap_or_default();
            let retryable = is_retryable(&method, status);
            if !retryable {
                return Err(ApiError::Status {
                    method,
                    path,
                    status: status.as_u16(),
                    excerpt: excerpt(&text),
                });
            }
            if retries >= self.max_retries {
                return Err(ApiError::RetriesExhausted {
                    method,
                    path,
                    status: status.as_u16(),
                    attempts: retries + 1,
                    excerpt: excerpt(&text),
                });
            }
            let wait = retry_after.unwrap_or(backoff).min(MAX_WAIT);
            tracing::warn!(
                %method,
                path = %path,
                status = status.as_u16(),
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                retry = retries + 1,
                max_retries = self.max_retries,
                "Bitbucket REST request throttled or unavailable; retrying"
            );
            tokio::time::sleep(wait).await;
            retries += 1;
            backoff = backoff.saturating_mul(2).min(MAX_WAIT);
        }
    }
}

/// 429 is always safe to retry (the request was refused, not processed), as
/// is 503. 502 and 504 are retried only for idempotent methods: behind a
/// gateway error a POST may have been carried out, and repeating it could
/// create a second webhook.
fn is_retryable(method: &Method, status: StatusCode) -> bool {
    match status.as_u16() {
        429 | 503 => true,
        502 | 504 => method != Method::POST,
        _ => false,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Bitbucket;
/// it falls back to the backoff).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The path and query of a URL, for messages (never the host's userinfo,
/// never a header).
fn display_path(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

/// A short, single-line excerpt of a response body.
fn excerpt(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "(empty body)".into();
    }
    let mut out: String = trimmed
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if trimmed.chars().count() > EXCERPT_CHARS {
        out.push('…');
    }
    out
}

fn decode(method: &Method, url: &Url, text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(|e| ApiError::Decode {
        method: method.clone(),
        path: display_path(url),
        reason: format!("invalid JSON ({e}): {}", excerpt(text)),
    })
}

/// Percent-encode one path segment (everything but RFC 3986 unreserved
/// characters), refusing empty ones.
fn segment(value: &str, what: &str) -> Result<String, ApiError> {
    if value.is_empty() {
        return Err(ApiError::InvalidRequest(format!("empty {what}")));
    }
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    Ok(out)
}

/// The `start` parameter of a Data Center page URL (0 when absent).
fn dc_start(url: &Url) -> u64 {
    url.query_pairs()
        .find(|(k, _)| k == "start")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// `first` with `start=N` set.
fn with_start(first: &Url, start: u64) -> Url {
    let mut url = first.clone();
    let pairs: Vec<(String, String)> = first
        .query_pairs()
        .filter(|(k, _)| k != "start")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("start", &start.to_string());
    url
}

/// Any page: a JSON object with a `values` array; returns the values and
/// the rest of the object.
fn page_values(page: Value) -> Result<(Vec<Value>, serde_json::Map<String, Value>), String> {
    let Value::Object(mut page) = page else {
        return Err("a page is not a JSON object".into());
    };
    match page.remove("values") {
        Some(Value::Array(values)) => Ok((values, page)),
        Some(_) => Err("`values` is not an array".into()),
        None => Err("no `values` in the page".into()),
    }
}

/// A Cloud page: `{values[], next?}`.
fn parse_cloud_page(page: Value) -> Result<(Vec<Value>, Option<String>), String> {
    let (values, mut page) = page_values(page)?;
    let next = match page.remove("next") {
        None | Some(Value::Null) => None,
        Some(Value::String(next)) if next.is_empty() => None,
        Some(Value::String(next)) => Some(next),
        Some(_) => return Err("`next` is not a string".into()),
    };
    Ok((values, next))
}

/// A Data Center page: `{values[], isLastPage, nextPageStart?}`; the next
/// start, or `None` on the last page.
fn parse_dc_page(page: Value) -> Result<(Vec<Value>, Option<u64>), String> {
    let (values, page) = page_values(page)?;
    let last = page.get("isLastPage").and_then(Value::as_bool);
    let next = page.get("nextPageStart").and_then(Value::as_u64);
    match (last, next) {
        (Some(true), _) => Ok((values, None)),
        (_, Some(next)) => Ok((values, Some(next))),
        (Some(false), None) => Err("isLastPage is false but there is no nextPageStart".into()),
        // No paging fields at all: a single, complete page.
        (None, None) => Ok((values, None)),
    }
}

/// A repository of a listing, or `None` (with a warning) if its name is
/// missing or invalid.
fn parse_repo(kind: SourceKind, value: &Value) -> Option<RemoteRepo> {
    let (raw_name, clone_name) = match kind {
        SourceKind::Cloud => (
            value
                .get("full_name")
                .and_then(Value::as_str)
                .map(str::to_string),
            "https",
        ),
        SourceKind::DataCenter => (
            match (
                value.pointer("/project/key").and_then(Value::as_str),
                value.get("slug").and_then(Value::as_str),
            ) {
                (Some(key), Some(slug)) => Some(format!("{key}/{slug}")),
                _ => None,
            },
            "http",
        ),
    };
    let Some(raw_name) = raw_name else {
        tracing::warn!("skipping a listed repository without a name");
        return None;
    };
    let name = match RepoName::parse(&raw_name) {
        Ok(name) => name,
        Err(error) => {
            tracing::warn!(%error, "skipping a listed repository with an unusable name");
            return None;
        }
    };
    let clone_url = value
        .pointer("/links/clone")
        .and_then(Value::as_array)
        .and_then(|links| {
            links
                .iter()
                .find(|link| link.get("name").and_then(Value::as_str) == Some(clone_name))
        })
        .and_then(|link| link.get("href"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Some(RemoteRepo { name, clone_url })
}

/// A webhook object of either flavour.
fn parse_hook(kind: SourceKind, value: &Value) -> Result<Hook, String> {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (id, description) = match kind {
        SourceKind::Cloud => (
            value
                .get("uuid")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or("a webhook without `uuid`")?,
            text("description"),
        ),
        SourceKind::DataCenter => (
            match value.get("id") {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                _ => return Err("a webhook without `id`".into()),
            },
            text("name"),
        ),
    };
    let events = value
        .get("events")
        .and_then(Value::as_array)
        .map(|events| {
            events
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(Hook {
        id,
        url: text("url"),
        description,
        events,
        active: value.get("active").and_then(Value::as_bool).unwrap_or(true),
    })
}

/// The create body, per flavour.
fn hook_body(kind: SourceKind, spec: &HookSpec) -> Result<Value, ApiError> {
    if spec.url.is_empty() {
        return Err(ApiError::InvalidRequest("a webhook needs a URL".into()));
    }
    if spec.events.is_empty() {
        return Err(ApiError::InvalidRequest(
            "a webhook needs at least one event".into(),
        ));
    }
    Ok(match kind {
        SourceKind::Cloud => {
            if spec.secret.expose().chars().count() > CLOUD_SECRET_MAX {
                return Err(ApiError::InvalidRequest(format!(
                    "Bitbucket Cloud webhook secrets are at most {CLOUD_SECRET_MAX} characters"
                )));
            }
            json!({
                "description": spec.description,
                "url": spec.url,
                "active": true,
                "secret": spec.secret.expose(),
                "events": spec.events,
            })
        }
        SourceKind::DataCenter => json!({
            "name": spec.description,
            "url": spec.url,
            "events": spec.events,
            "active": true,
            "configuration": { "secret": spec.secret.expose() },
            "sslVerificationRequired": true,
        }),
    })
}

/// The comments of Data Center activities (`action == "COMMENTED"`), with
/// nested replies flattened, each annotated with its parent, each comment
/// id once (a reply can appear both nested and as its own activity).
fn comments_from_activities(activities: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for mut activity in activities {
        if activity.get("action").and_then(Value::as_str) != Some("COMMENTED") {
            continue;
        }
        let Some(mut comment) = activity.get_mut("comment").map(Value::take) else {
            continue;
        };
        if !comment.is_object() {
            continue;
        }
        // Older servers put an inline comment's position on the activity.
        if let (Some(anchor), Some(object)) =
            (activity.get_mut("commentAnchor"), comment.as_object_mut())
            && !object.get("anchor").is_some_and(Value::is_object)
        {
            object.insert("anchor".into(), anchor.take());
        }
        let mut stack = vec![(comment, None::<Value>)];
        while let Some((mut comment, parent)) = stack.pop() {
            let replies = match comment.get_mut("comments").map(Value::take) {
                Some(Value::Array(replies)) => replies,
                _ => Vec::new(),
            };
            if let Some(object) = comment.as_object_mut() {
                object.remove("comments");
            }
            let id = comment.get("id").cloned();
            // Replies in reverse so they come out in their listed order.
            for reply in replies.into_iter().rev() {
                if reply.is_object() {
                    stack.push((reply, id.clone()));
                }
            }
            let annotate = |comment: &mut Value| {
                if let (Some(parent_id), Some(object)) = (&parent, comment.as_object_mut())
                    && !object.contains_key("parent")
                {
                    object.insert("parent".into(), json!({ "id": parent_id }));
                }
            };
            match id.as_ref().map(Value::to_string) {
                Some(key) => {
                    if let Some(&index) = seen.get(&key) {
                        annotate(&mut out[index]);
                    } else {
                        annotate(&mut comment);
                        seen.insert(key, out.len());
                        out.push(comment);
                    }
                }
                None => {
                    annotate(&mut comment);
                    out.push(comment);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_pages() {
        let (values, next) = parse_cloud_page(json!({
            "values": [1, 2], "pagelen": 2, "next": "https://api.bitbucket.org/2.0/x?page=2"
        }))
        .expect("page");
        assert_eq!(values, vec![json!(1), json!(2)]);
        assert_eq!(
            next.as_deref(),
            Some("https://api.bitbucket.org/2.0/x?page=2")
        );
        let (_, next) = parse_cloud_page(json!({ "values": [] })).expect("last page");
        assert_eq!(next, None);
        assert!(parse_cloud_page(json!({ "next": "x" })).is_err());
        assert!(parse_cloud_page(json!([1])).is_err());
    }

    #[test]
    fn dc_pages() {
        let page = json!({ "values": [1], "isLastPage": false, "nextPageStart": 25 });
        assert_eq!(parse_dc_page(page).expect("page").1, Some(25));
        let page = json!({ "values": [1], "isLastPage": true, "nextPageStart": 25 });
        assert_eq!(parse_dc_page(page).expect("page").1, None);
        assert!(parse_dc_page(json!({ "values": [], "isLastPage": false })).is_err());
        assert_eq!(
            parse_dc_page(json!({ "values": [] })).expect("page").1,
            None
        );
    }

    #[test]
    fn dc_start_is_replaced() {
        let first = Url::parse("http://h/rest/api/latest/projects/P/repos?limit=100").expect("url");
        let second = with_start(&first, 100);
        assert_eq!(second.query(), Some("limit=100&start=100"));
        assert_eq!(dc_start(&second), 100);
        assert_eq!(
            with_start(&second, 200).query(),
            Some("limit=100&start=200")
        );
        assert_eq!(dc_start(&first), 0);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("~user", "x").expect("ok"), "~user");
        assert_eq!(segment("{1a2b}", "x").expect("ok"), "%7B1a2b%7D");
        assert_eq!(segment("a/../b", "x").expect("ok"), "a%2F..%2Fb");
        assert!(segment("", "x").is_err());
    }

    #[test]
    fn retry_after_and_retryable() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert!(is_retryable(&Method::GET, StatusCode::TOO_MANY_REQUESTS));
        assert!(is_retryable(&Method::POST, StatusCode::TOO_MANY_REQUESTS));
        assert!(is_retryable(&Method::GET, StatusCode::BAD_GATEWAY));
        assert!(!is_retryable(&Method::POST, StatusCode::GATEWAY_TIMEOUT));
        assert!(!is_retryable(&Method::GET, StatusCode::NOT_FOUND));
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        assert_eq!(excerpt("  "), "(empty body)");
        assert_eq!(excerpt("a\nb"), "a b");
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), EXCERPT_CHARS + 1);
    }

    #[test]
    fn repos_from_both_flavours() {
        let cloud = json!({
            "full_name": "acme/api",
            "links": { "clone": [
                { "name": "ssh", "href": "git@bitbucket.org:acme/api.git" },
                { "name": "https", "href": "https://bitbucket.org/acme/api.git" }
            ]}
        });
        let repo = parse_repo(SourceKind::Cloud, &cloud).expect("repo");
        assert_eq!(repo.name.to_string(), "acme/api");
        assert_eq!(
            repo.clone_url.as_deref(),
            Some("https://bitbucket.org/acme/api.git")
        );
        let dc = json!({ "slug": "api", "project": { "key": "PRJ" } });
        let repo = parse_repo(SourceKind::DataCenter, &dc).expect("repo");
        assert_eq!(repo.name.to_string(), "PRJ/api");
        assert_eq!(repo.clone_url, None);
        assert!(parse_repo(SourceKind::Cloud, &json!({ "full_name": "acme/.git" })).is_none());
        assert!(parse_repo(SourceKind::Cloud, &json!({})).is_none());
    }

    #[test]
    fn hooks_from_both_flavours() {
        let hook = parse_hook(
            SourceKind::DataCenter,
            &json!({ "id": 12, "name": "hv", "url": "u", "events": ["repo:refs_changed"], "active": false }),
        )
        .expect("hook");
        assert_eq!(hook.id, "12");
        assert_eq!(hook.description, "hv");
        assert!(!hook.active);
        assert!(parse_hook(SourceKind::Cloud, &json!({ "url": "u" })).is_err());
    }

    #[test]
    fn activities_keep_comments_with_replies_flattened() {
        let activities = vec![
            json!({ "action": "APPROVED" }),
            json!({ "action": "COMMENTED", "commentAction": "REPLIED",
                    "comment": { "id": 3, "text": "reply 2" } }),
            json!({ "action": "COMMENTED", "comment": {
                "id": 1, "text": "top",
                "comments": [
                    { "id": 2, "text": "reply", "comments": [ { "id": 4, "text": "deep" } ] },
                    { "id": 3, "text": "reply 2" }
                ]
            }}),
            json!({ "action": "OPENED" }),
        ];
        let comments = comments_from_activities(activities);
        let ids: Vec<_> = comments.iter().map(|c| c["id"].clone()).collect();
        assert_eq!(ids, vec![json!(3), json!(1), json!(2), json!(4)]);
        assert_eq!(comments[0]["parent"]["id"], json!(1));
        assert!(comments[1].get("parent").is_none());
        assert!(comments[1].get("comments").is_none());
        assert_eq!(comments[2]["parent"]["id"], json!(1));
        assert_eq!(comments[3]["parent"]["id"], json!(2));
    }

    #[test]
    fn an_older_servers_activity_anchor_positions_its_comment() {
        let activities = vec![
            json!({ "action": "COMMENTED",
                    "commentAnchor": { "path": "src/lib.rs", "line": 12, "lineType": "ADDED" },
                    "comment": { "id": 5, "text": "inline" } }),
            json!({ "action": "COMMENTED",
                    "commentAnchor": { "path": "old.rs", "line": 1 },
                    "comment": { "id": 6, "text": "new", "anchor": { "path": "new.rs", "line": 2 } } }),
        ];
        let comments = comments_from_activities(activities);
        let read = |c: &Value| {
            let c = crate::bitbucket::normalize::dc_comment(c, None, None).expect("comment");
            (c.path, c.line)
        };
        assert_eq!(read(&comments[0]), (Some("src/lib.rs".into()), Some(12)));
        assert_eq!(read(&comments[1]), (Some("new.rs".into()), Some(2)));
    }

    #[test]
    fn debug_never_shows_the_authorization() {
        let api = Api::new(
            SourceKind::Cloud,
            "https://api.bitbucket.org/2.0/".into(),
            Some(SecretString::new("Bearer very-secret".into())),
        )
        .expect("api");
        let debug = format!("{api:?}");
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("<redacted>"));
        assert_eq!(api.base(), "https://api.bitbucket.org/2.0");
    }

    #[test]
    fn bad_bases_are_refused() {
        assert!(Api::new(SourceKind::Cloud, "not a url".into(), None).is_err());
        assert!(Api::new(SourceKind::Cloud, "ftp://h/2.0".into(), None).is_err());
        assert!(Api::new(SourceKind::Cloud, "https://u:p@h/2.0".into(), None).is_err());
    }
}
