//! Test support: a smart-HTTP git server (real `git http-backend` behind
//! token auth, standing in for Bitbucket), fixture repositories made with
//! real git, and a running `hookvault serve` driven over real HTTP.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod bitbucket_double;

use hookvault::bitbucket::signature::sign;

pub const TOKEN: &str = "test-token-5f1c";
pub const SECRET: &str = "It's a Secret to Everybody";
pub const ADMIN: &str = "admin-token-9b2e";

/// Run git; panic with its output if it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Dana Okafor")
        .env("GIT_AUTHOR_EMAIL", "dana@acme.example")
        .env("GIT_COMMITTER_NAME", "Dana Okafor")
        .env("GIT_COMMITTER_EMAIL", "dana@acme.example")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `git for-each-ref` of a repository: ref name → object id.
pub fn refs_of(repo: &Path) -> BTreeMap<String, String> {
    git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect()
}

/// Wait for a condition, polling; panic with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A smart-HTTP git server over `root`, requiring the token.
pub struct GitServer {
    pub addr: SocketAddr,
    pub root: PathBuf,
    holds: Holds,
    _runtime: tokio::runtime::Runtime,
}

/// Repositories whose requests the server holds, by repository name.
type Holds = std::sync::Arc<std::sync::Mutex<BTreeMap<String, std::sync::Arc<Hold>>>>;

/// A repository whose every request waits until released: a remote that
/// hangs, for as long as a test wants.
pub struct Hold {
    /// Requests that have arrived (and waited).
    arrived: std::sync::atomic::AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Hold {
    /// Requests for the repository that have arrived so far.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answer the waiting requests and every later one.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

impl GitServer {
    pub fn start(root: &Path) -> Self {
        Self::start_with_latency(root, Duration::ZERO)
    }

    /// A server that waits `latency` before answering each request, as a
    /// remote one network round trip away would.
    pub fn start_with_latency(root: &Path, latency: Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let root_buf = root.to_path_buf();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let holds = Holds::default();
        let held = holds.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let root = root_buf.clone();
            let held = held.clone();
            async move {
                let hold = held
                    .lock()
                    .expect("holds")
                    .iter()
                    .find(|(repo, _)| req.uri().path().starts_with(&format!("/{repo}.git/")))
                    .map(|(_, hold)| hold.clone());
                if let Some(hold) = hold {
                    let mut open = hold.open.subscribe();
                    hold.arrived
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = open.wait_for(|open| *open).await;
                }
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                cgi(root, req).await
            }
        });
        runtime.spawn(async move {
            axum::serve(listener, app).await.expect("git server");
        });
        Self {
            addr,
            root: root.to_path_buf(),
            holds,
            _runtime: runtime,
        }
    }

    /// Hold every request for `repo` from now until the hold is released.
    pub fn hold(&self, repo: &str) -> std::sync::Arc<Hold> {
        let (open, _) = tokio::sync::watch::channel(false);
        let hold = std::sync::Arc::new(Hold {
            arrived: std::sync::atomic::AtomicUsize::new(0),
            open,
        });
        self.holds
            .lock()
            .expect("holds")
            .insert(repo.to_string(), hold.clone());
        hold
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}.git", self.addr)
    }

    /// Create an empty bare repository `owner/slug.git` and return its path.
    pub fn create(&self, repo: &str) -> PathBuf {
        let path = self.root.join(format!("{repo}.git"));
        std::fs::create_dir_all(&path).expect("mkdir");
        git(&path, &["init", "--bare", "-q", "-b", "main"]);
        path
    }
}

fn authorized(headers: &axum::http::HeaderMap) -> bool {
    use base64::Engine as _;
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-token-auth:{TOKEN}"))
    );
    value == format!("Bearer {TOKEN}") || value == basic
}

async fn cgi(root: PathBuf, req: axum::extract::Request) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    if !authorized(req.headers()) {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"git\"")],
            "token required",
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 512 << 20)
        .await
        .expect("request body");
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-token-auth")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.expect("http-backend output");
    let _ = feed.await;
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)));
    let Some((end, sep)) = split else {
        return (StatusCode::BAD_GATEWAY, "bad CGI output").into_response();
    };
    let mut response = axum::http::Response::builder().status(200);
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("status") {
                let code: u16 = value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500);
                response = response.status(code);
            } else {
                response = response.header(name.trim(), value);
            }
        }
    }
    response
        .body(axum::body::Body::from(raw[end + sep..].to_vec()))
        .expect("response")
}

/// A working clone of an upstream repository, for making and pushing commits.
pub struct WorkTree {
    pub dir: PathBuf,
}

impl WorkTree {
    pub fn new(dir: &Path, upstream: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        git(dir, &["init", "-q", "-b", "main"]);
        git(
            dir,
            &[
                "remote",
                "add",
                "origin",
                upstream.to_str().expect("utf8 path"),
            ],
        );
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn commit(&self, file: &str, content: &str, message: &str) -> String {
        let path = self.dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, content).expect("write");
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"]).trim().to_string()
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }
}

/// A served repository with one commit on `main`, and a work tree to push
/// more from.
pub struct OneCommitRepo {
    pub tmp: tempfile::TempDir,
    pub server: GitServer,
    pub upstream: PathBuf,
    pub work: WorkTree,
    pub head: String,
}

pub fn one_commit_repo(repo: &str) -> OneCommitRepo {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = GitServer::start(&tmp.path().join("remote"));
    let upstream = server.create(repo);
    let work = WorkTree::new(&tmp.path().join("work"), &upstream);
    let head = work.commit("a.txt", "a\n", "A");
    work.git(&["push", "-q", "origin", "main"]);
    OneCommitRepo {
        tmp,
        server,
        upstream,
        work,
        head,
    }
}

/// One ref change, as a Cloud `repo:push` reports it.
pub struct Change<'a> {
    pub branch: &'a str,
    pub kind: &'a str,
    pub old: Option<&'a str>,
    pub new: Option<&'a str>,
    pub forced: bool,
}

/// A Cloud `repo:push` body for one branch moving from `old` to `new`.
pub fn branch_push(repo: &str, branch: &str, old: Option<&str>, new: &str) -> Vec<u8> {
    cloud_push(
        repo,
        &[Change {
            branch,
            kind: "branch",
            old,
            new: Some(new),
            forced: false,
        }],
    )
}

/// A Cloud `repo:push` body in the documented shape.
pub fn cloud_push(repo: &str, changes: &[Change<'_>]) -> Vec<u8> {
    let side = |name: &str, kind: &str, hash: Option<&str>| match hash {
        None => serde_json::Value::Null,
        Some(hash) => serde_json::json!({
            "type": kind,
            "name": name,
            "target": { "type": "commit", "hash": hash },
            "links": { "html": { "href": format!("https://bitbucket.org/{repo}/branch/{name}") } }
        }),
    };
    let changes: Vec<_> = changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "old": side(c.branch, c.kind, c.old),
                "new": side(c.branch, c.kind, c.new),
                "created": c.old.is_none(),
                "closed": c.new.is_none(),
                "forced": c.forced,
                "truncated": false,
                "commits": []
            })
        })
        .collect();
    let (workspace, _) = repo.split_once('/').unwrap_or((repo, ""));
    serde_json::to_vec(&serde_json::json!({
        "actor": { "type": "user", "display_name": "Dana Okafor", "nickname": "dokafor" },
        "repository": {
            "type": "repository",
            "full_name": repo,
            "name": repo.rsplit('/').next(),
            "uuid": "{9a1e4c2b-7d3f-4b6a-8e0c-2f5d1b7a9c34}",
            "workspace": { "type": "workspace", "slug": workspace }
        },
        "push": { "changes": changes }
    }))
    .expect("json")
}

/// A running `hookvault serve`.
/// The tests' service config: loopback, the test tokens and secrets, the
/// store at `store`, one Cloud source on `git`, `extra` appended.
pub fn config_text(
    store: &Path,
    git: &GitServer,
    max_attempts: u32,
    retry_base_ms: u64,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_body_bytes = 262144
admin_token = "{ADMIN}"

[store]
path = "{store}"

[worker]
max_attempts = {max_attempts}
retry_base_ms = {retry_base_ms}

[[sources]]
name = "cloud"
kind = "cloud"
secrets = ["old-secret-being-rotated", "{SECRET}"]
git_url = "http://{addr}/{{repo}}.git"
credentials = {{ kind = "access-token", token = "{TOKEN}" }}
{extra}
"#,
        store = store.display(),
        addr = git.addr,
    )
}

pub struct Service {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub addr: SocketAddr,
    child: Option<Child>,
    client: reqwest::blocking::Client,
}

impl Service {
    /// Write a config (with `extra` appended) and start the service.
    pub fn start(dir: &Path, git: &GitServer, extra: &str) -> Self {
        let text = config_text(&dir.join("data"), git, 2, 50, extra);
        Self::start_config(dir, &text)
    }

    /// Start on a config written from `text`.
    pub fn start_config(dir: &Path, text: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let config = dir.join("hookvault.toml");
        std::fs::write(&config, text).expect("config");
        Self::launch(dir, config)
    }

    /// POST a body with arbitrary headers to a path.
    pub fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .client
            .post(format!("http://{}{path}", self.addr))
            .header("Content-Type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().expect("POST");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Run a reconcile pass now (admin API) and return its report.
    pub fn reconcile(&self) -> serde_json::Value {
        let response = self
            .client
            .post(format!("http://{}/api/v1/reconcile", self.addr))
            .bearer_auth(ADMIN)
            .send()
            .expect("reconcile POST");
        assert_eq!(response.status().as_u16(), 200);
        response.json_value()
    }

    /// Start on an existing config.
    pub fn launch(dir: &Path, config: PathBuf) -> Self {
        let log = std::fs::File::create(dir.join("hookvault.log")).expect("log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hookvault"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,hookvault=debug")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("hookvault starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("readiness line");
        let ready: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "no readiness line (got {line:?}); log:\n{}",
                std::fs::read_to_string(dir.join("hookvault.log")).unwrap_or_default()
            )
        });
        let addr = ready["listening"]
            .as_str()
            .expect("listening address")
            .parse()
            .expect("socket address");
        Self::running(dir, config, addr, child)
    }

    /// A started service listening on `addr`.
    fn running(dir: &Path, config: PathBuf, addr: SocketAddr, child: Child) -> Self {
        Self {
            dir: dir.to_path_buf(),
            config,
            addr,
            child: Some(child),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    /// Start `serve` on `config` with a terminal for its stdout and stderr
    /// (util-linux `script`), whose transcript is the log. Stopping it is
    /// only a kill: `script` ends the service with the terminal.
    pub fn launch_on_terminal(dir: &Path, config: PathBuf) -> Self {
        let log = dir.join("hookvault.log");
        let command = format!(
            "{} --config {} serve",
            env!("CARGO_BIN_EXE_hookvault"),
            config.display()
        );
        let child = Command::new("script")
            .arg("-qfec")
            .arg(&command)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("script starts");
        let addr = wait_until("serve to listen", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&log).ok()?;
            let at = text.find("\"listening\":\"")? + 13;
            let end = text[at..].find('"')? + at;
            text[at..end].parse().ok()
        });
        Self::running(dir, config, addr, child)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("hookvault.log")).unwrap_or_default()
    }

    /// POST a webhook with the headers Bitbucket Cloud sends.
    pub fn deliver(
        &self,
        event_key: &str,
        delivery: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = self
            .client
            .post(format!("http://{}/webhooks/bitbucket", self.addr))
            .header("Content-Type", "application/json")
            .header("User-Agent", "Bitbucket-Webhooks/2.0")
            .header("X-Event-Key", event_key)
            .header("X-Request-UUID", delivery)
            .header("X-Hook-UUID", "{0c6a2b7e-1f3d-4e5a-9b8c-7d6e5f4a3b2c}")
            .header("X-Attempt-Number", "1")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature", signature);
        }
        let response = request.send().expect("webhook POST");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Deliver a correctly signed push and expect 202.
    pub fn push(&self, delivery: &str, body: &[u8]) {
        let signature = sign(SECRET.as_bytes(), body);
        let (status, reply) = self.deliver("repo:push", delivery, body, Some(&signature));
        assert_eq!(status, 202, "push {delivery} not accepted: {reply}");
    }

    pub fn api(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .bearer_auth(ADMIN)
            .send()
            .expect("API GET");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Wait until a delivery has an outcome; return its record.
    pub fn outcome(&self, delivery: &str) -> serde_json::Value {
        wait_until(
            &format!("delivery {delivery}"),
            Duration::from_secs(120),
            || {
                let (status, record) = self.api(&format!("deliveries/{delivery}"));
                (status == 200 && record["status"] != "queued").then_some(record)
            },
        )
    }

    pub fn snapshots(&self, repo: &str) -> Vec<serde_json::Value> {
        let (status, list) = self.api(&format!("repos/{repo}/snapshots"));
        assert_eq!(status, 200, "snapshot list of {repo}: {list}");
        list.as_array().cloned().unwrap_or_default()
    }

    pub fn stats(&self) -> serde_json::Value {
        let (status, stats) = self.api("stats");
        assert_eq!(status, 200);
        stats
    }

    /// SIGTERM, and expect a clean exit.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill");
            let status = child.wait().expect("wait");
            assert!(
                status.success(),
                "hookvault exited with {status}; log:\n{}",
                self.log()
            );
        }
    }

    /// SIGTERM, and expect a clean exit within `limit` (a service still
    /// running then fails the test and is killed on drop).
    pub fn stop_within(mut self, limit: Duration) {
        let Some(pid) = self.pid() else {
            return;
        };
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        let status = wait_until("hookvault to exit after SIGTERM", limit, || {
            self.child
                .as_mut()
                .and_then(|child| child.try_wait().expect("try_wait"))
        });
        self.child = None;
        assert!(
            status.success(),
            "hookvault exited with {status}; log:\n{}",
            self.log()
        );
    }

    /// The service's process id (for resource measurements).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Run a CLI command against this service's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_hookvault"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("hookvault CLI")
    }
}

trait JsonValue {
    fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::blocking::Response {
    fn json_value(self) -> serde_json::Value {
        let text = self.text().unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Restore through the CLI and return the output directory.
pub fn restore(
    config: &Path,
    repo: &str,
    snapshot: Option<&str>,
    to: &Path,
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookvault"));
    cmd.arg("--config")
        .arg(config)
        .args(["restore", "--repo", repo, "--to"])
        .arg(to);
    if let Some(snapshot) = snapshot {
        cmd.args(["--snapshot", snapshot]);
    }
    cmd.output().expect("hookvault restore")
}

/// `git fsck --full` must be clean.
pub fn assert_fsck_clean(repo: &Path) {
    let out = Command::new("git")
        .args(["fsck", "--full", "--strict"])
        .current_dir(repo)
        .output()
        .expect("git fsck");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fsck failed: {stdout}{stderr}");
    assert!(
        !stdout.contains("dangling") && !stdout.contains("missing") && !stderr.contains("error"),
        "fsck complained: {stdout}{stderr}"
    );
}

pub fn read_all(mut r: impl Read) -> String {
    let mut s = String::new();
    r.read_to_string(&mut s).expect("read");
    s
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(text.as_bytes()).expect("write");
}

/// Every file under `dir` (not `.tmp` ones), sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if !path.to_string_lossy().ends_with(".tmp") {
            out.push(path);
        }
    }
    out.sort();
    out
}

pub fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// A copy of a stopped service's store (`store`, its `store.path`) with its
/// own config, for tests that damage or prune it.
pub struct Case {
    pub config: PathBuf,
    pub vault: PathBuf,
}

pub fn case(tmp: &Path, name: &str, config_text: &str, store: &Path) -> Case {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    copy_dir(store, &dir.join("data"));
    // The copy must not look like a store `serve` is running on.
    let _ = std::fs::remove_file(dir.join("data/serve.json"));
    let text = config_text.replace(
        &format!("path = \"{}\"", store.display()),
        &format!("path = \"{}\"", dir.join("data").display()),
    );
    assert_ne!(text, config_text, "store path replaced");
    let config = dir.join("hookvault.toml");
    std::fs::write(&config, text).expect("config");
    Case {
        config,
        vault: dir.join("data/vault"),
    }
}

/// Run the CLI on `config`.
pub fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hookvault"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("hookvault")
}

/// `verify --json`: its exit status and report.
pub fn verify(config: &Path, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let out = run(config, &args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}
