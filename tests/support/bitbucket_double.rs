//! An in-process double of Bitbucket's documented REST endpoints (see
//! `shared/bitbucket/README.md`, sections 4 and 5), in both flavours at once:
//! Cloud under `http://ADDR/2.0/...`, Data Center under
//! `http://ADDR/rest/api/latest/...`.
//!
//! Like `GitServer` it runs axum on its own tokio runtime; it binds with a
//! std listener and drops its runtime with `shutdown_background()`, so it can
//! be started and dropped inside an async test as well as outside one.
//!
//! Served (every request needs `Authorization: Bearer <token>` or Basic with
//! password == token, else 401):
//!
//! | Cloud (`/2.0`) | Data Center (`/rest/api/latest`) |
//! |---|---|
//! | `GET /repositories/{ws}` | `GET /projects/{key}/repos` |
//! | `GET,POST /repositories/{ws}/{slug}/hooks`, `GET,DELETE …/hooks/{uuid}` | `GET,POST /projects/{key}/repos/{slug}/webhooks`, `GET,DELETE …/webhooks/{id}` |
//! | `GET,POST /workspaces/{ws}/hooks`, `GET,DELETE …/hooks/{uuid}` | `GET,POST /projects/{key}/webhooks`, `GET,DELETE …/webhooks/{id}` |
//! | `GET /repositories/{ws}/{slug}/pullrequests` (repeated `state`, default OPEN) | `GET /projects/{key}/repos/{slug}/pull-requests` (`state`, default OPEN, `ALL`) |
//! | `GET …/pullrequests/{id}/comments` | `GET …/pull-requests/{id}/activities` (newest first) |
//!
//! Webhook routes accept any repository / workspace / project; listing the
//! repositories of an unknown workspace / project, or the pull requests of
//! an unknown repository, answers 404.
//!
//! Paging: Cloud `{values, pagelen, size, page, next?}` (`page`/`pagelen`
//! params, `next` an absolute URL); DC `{values, size, limit, start,
//! isLastPage, nextPageStart?}` (`start`/`limit`). Page sizes are capped at
//! `page_size` (2 unless changed) so every listing with more than two items
//! pages.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hookvault::config::SourceKind;
use serde_json::{Value, json};

const CLOUD_PREFIX: &str = "/2.0/";
const DC_PREFIX: &str = "/rest/api/latest/";

/// Event keys the double accepts when a webhook is created (README
/// section 2). Anything else is refused with 400, as Bitbucket does.
const CLOUD_EVENTS: &[&str] = &[
    "repo:push",
    "repo:fork",
    "repo:updated",
    "repo:transfer",
    "repo:created",
    "repo:deleted",
    "repo:imported",
    "repo:commit_comment_created",
    "repo:commit_status_created",
    "repo:commit_status_updated",
    "pullrequest:created",
    "pullrequest:updated",
    "pullrequest:push",
    "pullrequest:approved",
    "pullrequest:unapproved",
    "pullrequest:changes_request_created",
    "pullrequest:changes_request_removed",
    "pullrequest:fulfilled",
    "pullrequest:rejected",
    "pullrequest:comment_created",
    "pullrequest:comment_updated",
    "pullrequest:comment_deleted",
    "pullrequest:comment_resolved",
    "pullrequest:comment_reopened",
    "issue:created",
    "issue:updated",
    "issue:comment_created",
    "project:updated",
    "pipeline:span_created",
];

const DC_EVENTS: &[&str] = &[
    "repo:refs_changed",
    "repo:modified",
    "repo:forked",
    "repo:comment:added",
    "repo:comment:edited",
    "repo:comment:deleted",
    "mirror:repo_synchronized",
    "repo:secret_detected",
    "project:modified",
    "proj:modified",
    "pr:opened",
    "pr:from_ref_updated",
    "pr:to_ref_updated",
    "pr:modified",
    "pr:reviewer:updated",
    "pr:reviewer:approved",
    "pr:reviewer:unapproved",
    "pr:reviewer:changes_requested",
    "pr:reviewer:needs_work",
    "pr:merged",
    "pr:declined",
    "pr:deleted",
    "pr:comment:added",
    "pr:comment:edited",
    "pr:comment:deleted",
    "diagnostics:ping",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Flavour {
    Cloud,
    Dc,
}

impl From<SourceKind> for Flavour {
    fn from(kind: SourceKind) -> Self {
        match kind {
            SourceKind::Cloud => Self::Cloud,
            SourceKind::DataCenter => Self::Dc,
        }
    }
}

struct StoredRepo {
    flavour: Flavour,
    /// Workspace or project key the repository is listed under.
    scope: String,
    /// `scope/slug`.
    name: String,
    json: Value,
}

struct StoredPr {
    flavour: Flavour,
    repo: String,
    id: u64,
    json: Value,
    /// Cloud: comments; DC: activities (oldest first, served newest first).
    items: Vec<Value>,
}

struct DoubleState {
    addr: SocketAddr,
    token: String,
    page_size: usize,
    scopes: BTreeSet<(Flavour, String)>,
    repos: Vec<StoredRepo>,
    prs: Vec<StoredPr>,
    /// (flavour, target) → hooks as created, secret included. Target is
    /// `ws/slug` for a repository, `ws` for a workspace / project.
    hooks: BTreeMap<(Flavour, String), Vec<Value>>,
    failures: VecDeque<u16>,
    requests: Vec<String>,
    next_id: u64,
}

impl DoubleState {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn repo_exists(&self, flavour: Flavour, name: &str) -> bool {
        self.repos
            .iter()
            .any(|r| r.flavour == flavour && r.name == name)
    }

    fn scope_exists(&self, flavour: Flavour, scope: &str) -> bool {
        self.scopes.contains(&(flavour, scope.to_string()))
    }

    fn pr_mut(&mut self, flavour: Flavour, repo: &str, id: u64) -> Option<&mut StoredPr> {
        self.prs
            .iter_mut()
            .find(|p| p.flavour == flavour && p.repo == repo && p.id == id)
    }
}

type Shared = Arc<Mutex<DoubleState>>;

/// The running double.
pub struct BitbucketDouble {
    pub addr: SocketAddr,
    state: Shared,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BitbucketDouble {
    /// Start on 127.0.0.1 with a fresh port; every request must carry
    /// `token` (Bearer, or Basic with it as the password).
    pub fn start(token: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state: Shared = Arc::new(Mutex::new(DoubleState {
            addr,
            token: token.to_string(),
            page_size: 2,
            scopes: BTreeSet::new(),
            repos: Vec::new(),
            prs: Vec::new(),
            hooks: BTreeMap::new(),
            failures: VecDeque::new(),
            requests: Vec::new(),
            next_id: 0,
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            axum::serve(listener, app).await.expect("REST double");
        });
        Self {
            addr,
            state,
            runtime: Some(runtime),
        }
    }

    /// `http://ADDR/2.0`
    pub fn cloud_base(&self) -> String {
        format!("http://{}/2.0", self.addr)
    }

    /// `http://ADDR/rest/api/latest`
    pub fn dc_base(&self) -> String {
        format!("http://{}/rest/api/latest", self.addr)
    }

    /// The base for a flavour.
    pub fn base(&self, kind: SourceKind) -> String {
        match kind {
            SourceKind::Cloud => self.cloud_base(),
            SourceKind::DataCenter => self.dc_base(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DoubleState> {
        self.state.lock().expect("double state")
    }

    /// Largest page served (default 2).
    pub fn set_page_size(&self, n: usize) {
        self.lock().page_size = n.max(1);
    }

    /// Make an (empty) workspace / project known; listing an unknown one
    /// answers 404.
    pub fn add_workspace(&self, kind: SourceKind, scope: &str) {
        self.lock().scopes.insert((kind.into(), scope.to_string()));
    }

    /// Add a repository `ws/slug` (Cloud) or `KEY/slug` (DC) in the
    /// documented shape, with clone links.
    pub fn add_repo(&self, kind: SourceKind, repo: &str) {
        let (scope, slug) = repo.split_once('/').expect("repo is scope/slug");
        let mut state = self.lock();
        let id = state.next_id();
        let addr = state.addr;
        let json = match kind {
            SourceKind::Cloud => json!({
                "type": "repository",
                "full_name": repo,
                "slug": slug,
                "name": slug,
                "uuid": format!("{{00000000-0000-4000-8000-{id:012x}}}"),
                "is_private": true,
                "scm": "git",
                "mainbranch": { "type": "branch", "name": "main" },
                "workspace": { "type": "workspace", "slug": scope },
                "links": {
                    "html": { "href": format!("https://bitbucket.org/{repo}") },
                    "clone": [
                        { "name": "https", "href": format!("http://{addr}/{repo}.git") },
                        { "name": "ssh", "href": format!("git@bitbucket.org:{repo}.git") }
                    ]
                }
            }),
            SourceKind::DataCenter => json!({
                "slug": slug,
                "id": id,
                "name": slug,
                "scmId": "git",
                "state": "AVAILABLE",
                "forkable": true,
                "public": false,
                "project": { "key": scope, "id": 1, "name": scope, "type": "NORMAL" },
                "links": {
                    "clone": [
                        { "name": "http", "href": format!("http://{addr}/scm/{}/{slug}.git", scope.to_lowercase()) },
                        { "name": "ssh", "href": format!("ssh://git@{addr}/{}/{slug}.git", scope.to_lowercase()) }
                    ],
                    "self": [ { "href": format!("http://{addr}/projects/{scope}/repos/{slug}/browse") } ]
                }
            }),
        };
        state.scopes.insert((kind.into(), scope.to_string()));
        state.repos.push(StoredRepo {
            flavour: kind.into(),
            scope: scope.to_string(),
            name: repo.to_string(),
            json,
        });
    }

    /// Add a repository object exactly as given (e.g. one with a name
    /// hookvault must refuse), listed under `scope`.
    pub fn add_raw_repo(&self, kind: SourceKind, scope: &str, json: Value) {
        let name = match kind {
            SourceKind::Cloud => json["full_name"].as_str().unwrap_or_default().to_string(),
            SourceKind::DataCenter => format!(
                "{}/{}",
                json["project"]["key"].as_str().unwrap_or_default(),
                json["slug"].as_str().unwrap_or_default()
            ),
        };
        let mut state = self.lock();
        state.scopes.insert((kind.into(), scope.to_string()));
        state.repos.push(StoredRepo {
            flavour: kind.into(),
            scope: scope.to_string(),
            name,
            json,
        });
    }

    /// Add a pull request (a JSON object with a numeric `id` and a
    /// `state`) to an added repository. DC also records an `OPENED`
    /// activity.
    pub fn add_pull_request(&self, kind: SourceKind, repo: &str, pr: Value) {
        let id = pr["id"].as_u64().expect("pull request has a numeric id");
        let flavour = kind.into();
        let mut state = self.lock();
        assert!(
            state.repo_exists(flavour, repo),
            "unknown repository {repo}"
        );
        let mut items = Vec::new();
        if flavour == Flavour::Dc {
            let activity_id = state.next_id();
            items.push(json!({
                "id": activity_id,
                "createdDate": 1_700_000_000_000u64 + activity_id,
                "user": { "name": "dokafor", "displayName": "Dana Okafor" },
                "action": "OPENED"
            }));
        }
        state.prs.push(StoredPr {
            flavour,
            repo: repo.to_string(),
            id,
            json: pr,
            items,
        });
    }

    /// Add a comment to a pull request. Cloud: served as is by
    /// `…/comments`. DC: recorded as a `COMMENTED` activity (nested
    /// replies stay in its `comments` array), followed by an `APPROVED`
    /// activity that a comment listing must filter out.
    pub fn add_comment(&self, kind: SourceKind, repo: &str, pr_id: u64, comment: Value) {
        let flavour = kind.into();
        let mut state = self.lock();
        let first = state.next_id();
        let second = state.next_id();
        let pr = state
            .pr_mut(flavour, repo, pr_id)
            .unwrap_or_else(|| panic!("unknown pull request {repo}#{pr_id}"));
        match flavour {
            Flavour::Cloud => pr.items.push(comment),
            Flavour::Dc => {
                pr.items.push(json!({
                    "id": first,
                    "createdDate": 1_700_000_000_000u64 + first,
                    "user": { "name": "dokafor", "displayName": "Dana Okafor" },
                    "action": "COMMENTED",
                    "commentAction": "ADDED",
                    "comment": comment
                }));
                pr.items.push(json!({
                    "id": second,
                    "createdDate": 1_700_000_000_000u64 + second,
                    "user": { "name": "mreyes", "displayName": "Mo Reyes" },
                    "action": "APPROVED"
                }));
            }
        }
    }

    /// Add a raw DC activity (any `action`) to a pull request.
    pub fn add_activity(&self, repo: &str, pr_id: u64, activity: Value) {
        let mut state = self.lock();
        let pr = state
            .pr_mut(Flavour::Dc, repo, pr_id)
            .unwrap_or_else(|| panic!("unknown pull request {repo}#{pr_id}"));
        pr.items.push(activity);
    }

    /// The webhooks stored for a target (`ws/slug` or `ws`), as created,
    /// INCLUDING the secret the client sent (Cloud `secret`, DC
    /// `configuration.secret`), which the API itself never returns.
    pub fn hooks(&self, kind: SourceKind, target: &str) -> Vec<Value> {
        self.lock()
            .hooks
            .get(&(kind.into(), target.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// The next `n` requests answer `status` with `Retry-After: 0`.
    pub fn fail_next_with(&self, status: u16, n: usize) {
        let mut state = self.lock();
        for _ in 0..n {
            state.failures.push_back(status);
        }
    }

    /// The next `n` requests answer 429 with `Retry-After: 0`.
    pub fn fail_next_with_429(&self, n: usize) {
        self.fail_next_with(429, n);
    }

    /// How many requests arrived (failed and unauthorised ones included).
    pub fn requests(&self) -> usize {
        self.lock().requests.len()
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn request_log(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

impl Drop for BitbucketDouble {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------- serving

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let mut state = shared.lock().expect("double state");
    state
        .requests
        .push(format!("{} {}", parts.method, parts.uri));
    if let Some(status) = state.failures.pop_front() {
        let status = StatusCode::from_u16(status).expect("status code");
        return (
            status,
            [("retry-after", "0")],
            axum::Json(json!({ "type": "error", "error": { "message": "injected failure" } })),
        )
            .into_response();
    }
    if !authorized(&parts.headers, &state.token) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer realm=\"bitbucket\"")],
            axum::Json(json!({ "type": "error", "error": { "message": "Unauthorized" } })),
        )
            .into_response();
    }
    let path = parts.uri.path();
    let (flavour, rest) = if let Some(rest) = path.strip_prefix(CLOUD_PREFIX) {
        (Flavour::Cloud, rest)
    } else if let Some(rest) = path.strip_prefix(DC_PREFIX) {
        (Flavour::Dc, rest)
    } else {
        return not_found(Flavour::Cloud, "no such API");
    };
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let raw_query = parts.uri.query().unwrap_or("");
    let request = Req {
        method: parts.method.clone(),
        path: path.to_string(),
        raw_query: raw_query.to_string(),
        query: parse_query(raw_query),
        body: body.to_vec(),
    };
    match flavour {
        Flavour::Cloud => cloud(&mut state, &request, &segments),
        Flavour::Dc => dc(&mut state, &request, &segments),
    }
}

struct Req {
    method: Method,
    path: String,
    raw_query: String,
    query: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Req {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

fn cloud(state: &mut DoubleState, req: &Req, seg: &[&str]) -> Response {
    let f = Flavour::Cloud;
    match (req.method.clone(), seg) {
        (Method::GET, ["repositories", ws]) => {
            if !state.scope_exists(f, ws) {
                return not_found(f, &format!("workspace {ws} not found"));
            }
            let values = state
                .repos
                .iter()
                .filter(|r| r.flavour == f && r.scope == *ws)
                .map(|r| r.json.clone())
                .collect();
            ok(cloud_page(state, req, values))
        }
        (_, ["repositories", ws, slug, "hooks", rest @ ..]) => {
            hooks(state, f, req, &format!("{ws}/{slug}"), "repository", rest)
        }
        (_, ["workspaces", ws, "hooks", rest @ ..]) => hooks(state, f, req, ws, "workspace", rest),
        (Method::GET, ["repositories", ws, slug, "pullrequests"]) => {
            let repo = format!("{ws}/{slug}");
            if !state.repo_exists(f, &repo) {
                return not_found(f, &format!("repository {repo} not found"));
            }
            let mut wanted: Vec<String> = req
                .params("state")
                .iter()
                .map(|s| s.to_uppercase())
                .collect();
            if wanted.is_empty() {
                wanted.push("OPEN".into());
            }
            let values = state
                .prs
                .iter()
                .filter(|p| p.flavour == f && p.repo == repo)
                .filter(|p| {
                    p.json["state"]
                        .as_str()
                        .is_some_and(|s| wanted.iter().any(|w| w == s))
                })
                .map(|p| p.json.clone())
                .collect();
            ok(cloud_page(state, req, values))
        }
        (Method::GET, ["repositories", ws, slug, "pullrequests", id, "comments"]) => {
            let repo = format!("{ws}/{slug}");
            let Some(id) = id.parse::<u64>().ok() else {
                return not_found(f, "pull request not found");
            };
            let Some(pr) = state.pr_mut(f, &repo, id) else {
                return not_found(f, &format!("pull request {repo}#{id} not found"));
            };
            let values = pr.items.clone();
            ok(cloud_page(state, req, values))
        }
        _ => not_found(f, "no such resource"),
    }
}

fn dc(state: &mut DoubleState, req: &Req, seg: &[&str]) -> Response {
    let f = Flavour::Dc;
    match (req.method.clone(), seg) {
        (Method::GET, ["projects", key, "repos"]) => {
            if !state.scope_exists(f, key) {
                return not_found(f, &format!("Project {key} does not exist."));
            }
            let values = state
                .repos
                .iter()
                .filter(|r| r.flavour == f && r.scope == *key)
                .map(|r| r.json.clone())
                .collect();
            ok(dc_page(state, req, values))
        }
        (_, ["projects", key, "repos", slug, "webhooks", rest @ ..]) => {
            hooks(state, f, req, &format!("{key}/{slug}"), "REPOSITORY", rest)
        }
        (_, ["projects", key, "webhooks", rest @ ..]) => hooks(state, f, req, key, "PROJECT", rest),
        (Method::GET, ["projects", key, "repos", slug, "pull-requests"]) => {
            let repo = format!("{key}/{slug}");
            if !state.repo_exists(f, &repo) {
                return not_found(f, &format!("Repository {repo} does not exist."));
            }
            let wanted = req.param("state").unwrap_or("OPEN").to_uppercase();
            let values = state
                .prs
                .iter()
                .filter(|p| p.flavour == f && p.repo == repo)
                .filter(|p| wanted == "ALL" || p.json["state"].as_str() == Some(wanted.as_str()))
                .map(|p| p.json.clone())
                .collect();
            ok(dc_page(state, req, values))
        }
        (
            Method::GET,
            [
                "projects",
                key,
                "repos",
                slug,
                "pull-requests",
                id,
                "activities",
            ],
        ) => {
            let repo = format!("{key}/{slug}");
            let Some(id) = id.parse::<u64>().ok() else {
                return not_found(f, "Pull request does not exist.");
            };
            let Some(pr) = state.pr_mut(f, &repo, id) else {
                return not_found(f, &format!("Pull request {repo}#{id} does not exist."));
            };
            let values = pr.items.iter().rev().cloned().collect();
            ok(dc_page(state, req, values))
        }
        _ => not_found(f, "no such resource"),
    }
}

/// Webhooks of one target: list / create / get / delete. Any target is
/// accepted (the repository or workspace need not have been added), so a
/// test can register hooks without setting up listings.
fn hooks(
    state: &mut DoubleState,
    f: Flavour,
    req: &Req,
    target: &str,
    subject: &str,
    rest: &[&str],
) -> Response {
    let key = (f, target.to_string());
    let id_of = |hook: &Value| match f {
        Flavour::Cloud => hook["uuid"].as_str().unwrap_or_default().to_string(),
        Flavour::Dc => hook["id"].to_string(),
    };
    match (req.method.clone(), rest) {
        (Method::GET, []) => {
            let values = state
                .hooks
                .get(&key)
                .map(|hooks| hooks.iter().map(|h| public_hook(f, h)).collect())
                .unwrap_or_default();
            match f {
                Flavour::Cloud => ok(cloud_page(state, req, values)),
                Flavour::Dc => ok(dc_page(state, req, values)),
            }
        }
        (Method::POST, []) => {
            let Some(body) = req.json().filter(Value::is_object) else {
                return bad_request(f, "the body must be a JSON object");
            };
            let stored = match new_hook(state, f, &body, subject) {
                Ok(stored) => stored,
                Err(message) => return bad_request(f, &message),
            };
            let public = public_hook(f, &stored);
            state.hooks.entry(key).or_default().push(stored);
            (StatusCode::CREATED, axum::Json(public)).into_response()
        }
        (method, [id]) if method == Method::GET || method == Method::DELETE => {
            let hooks = state.hooks.entry(key).or_default();
            let Some(index) = hooks.iter().position(|h| id_of(h) == *id) else {
                return not_found(f, &format!("webhook {id} not found"));
            };
            if method == Method::GET {
                ok(public_hook(f, &hooks[index]))
            } else {
                hooks.remove(index);
                StatusCode::NO_CONTENT.into_response()
            }
        }
        _ => not_found(f, "no such resource"),
    }
}

/// Validate a create body and build the stored hook (secret included).
fn new_hook(
    state: &mut DoubleState,
    f: Flavour,
    body: &Value,
    subject: &str,
) -> Result<Value, String> {
    let url = body["url"]
        .as_str()
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .ok_or("url: an http(s) URL is required")?;
    let events: Vec<&str> = body["events"]
        .as_array()
        .map(|events| events.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if events.is_empty() {
        return Err("events: at least one event is required".into());
    }
    let known = match f {
        Flavour::Cloud => CLOUD_EVENTS,
        Flavour::Dc => DC_EVENTS,
    };
    if let Some(bad) = events.iter().find(|e| !known.contains(e)) {
        return Err(format!("events: {bad:?} is not a valid event key"));
    }
    let active = body["active"].as_bool().unwrap_or(true);
    let id = state.next_id();
    Ok(match f {
        Flavour::Cloud => {
            let secret = body["secret"].as_str();
            if secret.is_some_and(|s| s.chars().count() > 128) {
                return Err("secret: at most 128 characters".into());
            }
            json!({
                "type": "webhook_subscription",
                "uuid": format!("{{7e57a11e-0000-4000-8000-{id:012x}}}"),
                "url": url,
                "description": body["description"].as_str().unwrap_or_default(),
                "subject_type": subject,
                "active": active,
                "created_at": "2026-01-02T03:04:05.000000+00:00",
                "events": events,
                "secret_set": secret.is_some(),
                "secret": secret,
            })
        }
        Flavour::Dc => {
            let Some(name) = body["name"].as_str().filter(|n| !n.is_empty()) else {
                return Err("name: a name is required".into());
            };
            json!({
                "id": id,
                "name": name,
                "createdDate": 1_700_000_000_000u64 + id,
                "updatedDate": 1_700_000_000_000u64 + id,
                "events": events,
                "configuration": body["configuration"].clone(),
                "url": url,
                "active": active,
                "scopeType": subject.to_lowercase(),
                "sslVerificationRequired": body["sslVerificationRequired"].as_bool().unwrap_or(true),
            })
        }
    })
}

/// A stored hook as the API shows it: Cloud never returns the secret, DC
/// returns `configuration` without it.
fn public_hook(f: Flavour, stored: &Value) -> Value {
    let mut hook = stored.clone();
    if let Some(object) = hook.as_object_mut() {
        match f {
            Flavour::Cloud => {
                object.remove("secret");
            }
            Flavour::Dc => {
                if let Some(config) = object
                    .get_mut("configuration")
                    .and_then(Value::as_object_mut)
                {
                    config.remove("secret");
                } else {
                    object.insert("configuration".into(), json!({}));
                }
            }
        }
    }
    hook
}

fn cloud_page(state: &DoubleState, req: &Req, values: Vec<Value>) -> Value {
    let pagelen = req
        .param("pagelen")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100)
        .min(state.page_size);
    let page = req
        .param("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let size = values.len();
    let start = (page - 1).saturating_mul(pagelen);
    let slice: Vec<Value> = values.into_iter().skip(start).take(pagelen).collect();
    let mut out = json!({ "pagelen": pagelen, "size": size, "page": page, "values": slice });
    if start + pagelen < size {
        let mut query: Vec<&str> = req
            .raw_query
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("page="))
            .collect();
        let next_page = format!("page={}", page + 1);
        query.push(&next_page);
        out["next"] = json!(format!(
            "http://{}{}?{}",
            state.addr,
            req.path,
            query.join("&")
        ));
    }
    out
}

fn dc_page(state: &DoubleState, req: &Req, values: Vec<Value>) -> Value {
    let limit = req
        .param("limit")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, 1000)
        .min(state.page_size);
    let start = req
        .param("start")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0);
    let total = values.len();
    let slice: Vec<Value> = values.into_iter().skip(start).take(limit).collect();
    let last = start + limit >= total;
    let mut out = json!({
        "size": slice.len(),
        "limit": limit,
        "start": start,
        "isLastPage": last,
        "values": slice,
    });
    if !last {
        out["nextPageStart"] = json!(start + limit);
    }
    out
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    use base64::Engine as _;
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    if let Some(bearer) = value.strip_prefix("Bearer ") {
        return bearer == token;
    }
    if let Some(basic) = value.strip_prefix("Basic ") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded);
        return decoded
            .split_once(':')
            .is_some_and(|(_, password)| password == token);
    }
    false
}

fn ok(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

fn error(f: Flavour, status: StatusCode, message: &str) -> Response {
    let body = match f {
        Flavour::Cloud => json!({ "type": "error", "error": { "message": message } }),
        Flavour::Dc => json!({ "errors": [ {
            "context": null,
            "message": message,
            "exceptionName": "com.atlassian.bitbucket.ServiceException"
        } ] }),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("response")
}

fn not_found(f: Flavour, message: &str) -> Response {
    error(f, StatusCode::NOT_FOUND, message)
}

fn bad_request(f: Flavour, message: &str) -> Response {
    error(f, StatusCode::BAD_REQUEST, message)
}

fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
