//! The configuration file (`hookvault.toml`). One struct tree, unknown keys
//! rejected, every default written once, here. Secrets may be literal, read
//! from the environment or from a file, and never appear in `Debug` output.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ids::RepoName;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("secret {what} is empty")]
    EmptySecret { what: String },
    #[error("secret {what}: environment variable {var} is not set")]
    MissingEnv { what: String, var: String },
    #[error("secret {what}: cannot read {path}: {source}")]
    SecretFile {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    #[serde(default)]
    pub alerts: AlertsConfig,
}

/// Where alerts go (they are always logged) and when the service raises
/// its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Raise a warning when a repository's oldest delivery still waiting
    /// for a backup has waited this long, i.e. its latest snapshot is this
    /// far behind a push (0: never).
    #[serde(default)]
    pub max_lag_secs: u64,
    #[serde(default)]
    pub webhooks: Vec<AlertWebhook>,
}

/// One URL every alert of at least `min_severity` is POSTed to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertWebhook {
    /// A secret like the others (`{ env = "SLACK_WEBHOOK_URL" }`): an
    /// incoming-webhook URL lets whoever has it post.
    pub url: Secret,
    #[serde(default)]
    pub format: AlertFormat,
    #[serde(default = "default_min_severity")]
    pub min_severity: crate::alerts::Severity,
    #[serde(default = "default_alert_timeout")]
    pub timeout_secs: u64,
}

/// The body of an alert POST.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// Every field as JSON.
    #[default]
    Json,
    /// `{"text": …}` in Slack's markup (Slack, Mattermost, Rocket.Chat, …).
    Slack,
}

fn default_min_severity() -> crate::alerts::Severity {
    crate::alerts::Severity::Warning
}

fn default_alert_timeout() -> u64 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the webhook receiver listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest webhook body accepted. Bitbucket Cloud never sends more than
    /// 256 KB; Data Center bodies can be larger.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Bearer token for the read-only `/api/v1` endpoints. Without it those
    /// endpoints are disabled.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// A connection must deliver a request's complete headers within this
    /// many seconds of opening, or of the previous response (an idle
    /// keep-alive connection counts too); otherwise it is closed and logged.
    /// Bitbucket sends its headers at once, so 10 s only ever cuts off slow
    /// or idle clients (a slowloris holds a connection by sending a header
    /// byte now and then).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// The longest pause while a request body is being received; a body that
    /// stalls longer is answered 408 and logged. Bitbucket sends a whole
    /// body (at most `max_body_bytes`) at once, so 10 s is ample.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
    /// A request must be answered within this many seconds of its headers,
    /// body and durable write included; one that is not is answered 503
    /// (Bitbucket Cloud retries 5xx) and logged. A webhook is normally
    /// answered within milliseconds, so 30 s is only reached by a client
    /// trickling its body or a store that hangs. `POST /api/v1/reconcile`
    /// answers when its pass ends and is not limited.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Most client connections open at once; a connection beyond it is closed
    /// as soon as it is accepted, and logged. Each webhook is answered in
    /// milliseconds, so 128 is plenty, and it stays well below the usual open
    /// file limit (1024, or the 256 some systems set), leaving descriptors
    /// for the queue, the vault and fetches.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body() -> usize {
    1024 * 1024
}

fn default_header_read_timeout() -> u64 {
    10
}

fn default_body_read_timeout() -> u64 {
    10
}

fn default_request_timeout() -> u64 {
    30
}

fn default_max_connections() -> usize {
    128
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body(),
            admin_token: None,
            header_read_timeout_secs: default_header_read_timeout(),
            body_read_timeout_secs: default_body_read_timeout(),
            request_timeout_secs: default_request_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Local state: the vault (unless `url` puts it elsewhere), the queue and
    /// caches (created if missing). Relative paths are relative to the
    /// working directory.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Where the vault lives when not in `<path>/vault`:
    /// `s3://BUCKET/PREFIX` (S3, MinIO, Ceph, R2, ...).
    #[serde(default)]
    pub url: Option<String>,
    /// Object-storage settings; each one left out is taken from the standard
    /// `AWS_*` environment variables.
    #[serde(default)]
    pub s3: S3Config,
    /// zstd level for new records (1–22; higher is smaller and slower).
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Encrypt the vault (FORMAT.md, "Encryption"): a vault created with a
    /// passphrase is encrypted, and opens only with one of its keys' (a
    /// literal, `{ env = "VAR" }` or `{ file = "PATH" }`, whose contents are
    /// the passphrase: a key file).
    #[serde(default)]
    pub passphrase: Option<Secret>,
}

/// `[store.s3]`: credentials are secrets like the others (literal, env or
/// file) and never appear in logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub region: Option<String>,
    /// For S3-compatible servers: `https://minio.example.com:9000`.
    pub endpoint: Option<String>,
    /// Permit a plain `http://` endpoint (loopback tests, private networks).
    pub allow_http: Option<bool>,
}

fn default_store_path() -> PathBuf {
    PathBuf::from("data")
}

fn default_zstd_level() -> i32 {
    3
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            url: None,
            s3: S3Config::default(),
            zstd_level: default_zstd_level(),
            passphrase: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Attempts before a delivery is dead-lettered.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt.
    #[serde(default = "default_retry_ms")]
    pub retry_base_ms: u64,
    /// Deliveries backed up at once (1-64), each of a different repository;
    /// also the number of plugin instances the sandbox's pool holds.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

fn default_attempts() -> u32 {
    5
}

fn default_retry_ms() -> u64 {
    2000
}

/// Four: a backup mostly waits on its remote (a slow or hung one holds a
/// worker up to its timeout), while the CPU-heavy part, compressing new
/// objects, already uses every core and is serialised by the vault's
/// writer. Four keeps three hung remotes from stopping the rest at the cost
/// of at most four fetch workspaces and object lists in memory at once.
fn default_concurrency() -> u32 {
    4
}

/// The most workers `worker.concurrency` may ask for.
pub const MAX_CONCURRENCY: u32 = 64;

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            retry_base_ms: default_retry_ms(),
            concurrency: default_concurrency(),
        }
    }
}

/// A retention policy kept in the config: what `hookvault forget` applies
/// when given no `--keep-*` flag, and what `serve` applies on its own every
/// `interval_secs` (forget, then prune), with restic's rules. Without any
/// `keep_*` rule nothing is ever forgotten.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_hourly: u32,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    /// A span like `7d`, `36h` or `1y6m`.
    #[serde(default, deserialize_with = "span_opt")]
    pub keep_within: Option<crate::retention::Span>,
    /// How often `serve` forgets and prunes; 0 (the default) never. The
    /// first run is one interval after start. Backups wait while it runs;
    /// webhooks are still received and queued.
    #[serde(default)]
    pub interval_secs: u64,
    /// Prune after forgetting (on by default).
    #[serde(default = "default_true")]
    pub prune: bool,
    /// As `prune --max-unused-percent`.
    #[serde(default = "default_max_unused_percent")]
    pub max_unused_percent: u8,
    /// As `prune --recompress-level`: each run also recompresses, at this
    /// zstd level (1-19), the records of every data file not yet
    /// recompressed at it. Off when left out.
    #[serde(default, deserialize_with = "recompress_level")]
    pub recompress_level: Option<i32>,
}

impl Default for RetentionConfig {
    /// What a config without `[retention]` means: the same defaults as
    /// each key left out of one.
    fn default() -> Self {
        Self {
            keep_last: 0,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            keep_within: None,
            interval_secs: 0,
            prune: default_true(),
            max_unused_percent: default_max_unused_percent(),
            recompress_level: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_unused_percent() -> u8 {
    20
}

fn recompress_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i32>, D::Error> {
    let level = i32::deserialize(d)?;
    let max = crate::vault::format::MAX_RECOMPRESS_LEVEL;
    if (1..=max).contains(&level) {
        Ok(Some(level))
    } else {
        Err(serde::de::Error::custom(format!(
            "recompress_level must be a zstd level from 1 to {max}, not {level}"
        )))
    }
}

fn span_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::retention::Span>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl RetentionConfig {
    pub fn policy(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within: self.keep_within,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Compare every listed repository with its latest snapshot at start-up
    /// and then every `interval_secs`.
    #[serde(default = "default_reconcile_enabled")]
    pub enabled: bool,
    #[serde(default = "default_reconcile_interval")]
    pub interval_secs: u64,
}

fn default_reconcile_enabled() -> bool {
    true
}

fn default_reconcile_interval() -> u64 {
    900
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            enabled: default_reconcile_enabled(),
            interval_secs: default_reconcile_interval(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Cloud,
    DataCenter,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Short name, used in logs, in the store and in `/webhooks/bitbucket/{name}`.
    pub name: String,
    pub kind: SourceKind,
    /// Webhook secrets. Several may be listed while one is being rotated.
    pub secrets: Vec<Secret>,
    /// Clone URL template; `{repo}` becomes `workspace/slug`.
    /// Default for Cloud: `https://bitbucket.org/{repo}.git`.
    #[serde(default)]
    pub git_url: Option<String>,
    /// Credentials for git over HTTPS and for the REST API. They stay in
    /// the host process.
    #[serde(default)]
    pub credentials: Option<GitCredentials>,
    /// REST API base. Default for Cloud: `https://api.bitbucket.org/2.0`;
    /// Data Center: `https://<server>/rest/api/latest` (required there for
    /// reconciliation and `hooks`).
    #[serde(default)]
    pub api_url: Option<String>,
    /// Cloud workspaces (or Data Center project keys) whose repositories
    /// the reconciler lists and backs up. Workspace listing is gone from
    /// Bitbucket's API, so they must be named here.
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// Client addresses or CIDR ranges allowed to deliver webhooks to this
    /// source (defence in depth; empty allows any).
    #[serde(default)]
    pub allow_ips: Vec<String>,
}

impl SourceConfig {
    /// The REST API base URL, without a trailing slash.
    pub fn api_base(&self) -> Option<String> {
        match (&self.api_url, self.kind) {
            (Some(url), _) => Some(url.trim_end_matches('/').to_string()),
            (None, SourceKind::Cloud) => Some("https://api.bitbucket.org/2.0".to_string()),
            (None, SourceKind::DataCenter) => None,
        }
    }

    /// The clone URL of a repository of this source.
    pub fn clone_url(&self, repo: &RepoName) -> String {
        let template = self.git_url.as_deref().unwrap_or(match self.kind {
            SourceKind::Cloud => "https://bitbucket.org/{repo}.git",
            // Data Center has no default host: validate() insists on git_url.
            SourceKind::DataCenter => "{repo}",
        });
        template.replace("{repo}", &repo.to_string())
    }
}

/// How git over HTTPS authenticates, per Bitbucket's token kinds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitCredentials {
    pub kind: CredentialKind,
    pub token: Secret,
    /// The Atlassian account email: REST calls with an API token use
    /// Basic `email:token`.
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// Cloud repository/project/workspace access token: Basic `x-token-auth:<token>`.
    AccessToken,
    /// Cloud API token: Basic `x-bitbucket-api-token-auth:<token>`.
    ApiToken,
    /// Data Center HTTP access token: `Authorization: Bearer <token>`.
    HttpAccessToken,
}

impl GitCredentials {
    /// The `Authorization` header value for git over HTTP.
    pub fn authorization(&self, what: &str) -> Result<SecretString, ConfigError> {
        use base64::Engine as _;
        let token = self.token.resolve(what)?;
        let basic = |user: &str| {
            let raw = format!("{user}:{}", token.expose());
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        Ok(SecretString(match self.kind {
            CredentialKind::AccessToken => basic("x-token-auth"),
            CredentialKind::ApiToken => basic("x-bitbucket-api-token-auth"),
            CredentialKind::HttpAccessToken => format!("Bearer {}", token.expose()),
        }))
    }
}

impl GitCredentials {
    /// The `Authorization` header value for the REST API: Basic
    /// `email:token` for Cloud API tokens, Bearer for access tokens.
    pub fn rest_authorization(&self, what: &str) -> Result<SecretString, ConfigError> {
        use base64::Engine as _;
        let token = self.token.resolve(what)?;
        Ok(SecretString(match (self.kind, &self.email) {
            (CredentialKind::ApiToken, Some(email)) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{email}:{}", token.expose()))
            ),
            _ => format!("Bearer {}", token.expose()),
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    Filter,
    Backup,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    pub kind: PluginKind,
    /// A plugin shipped inside hookvault (`git-backup`).
    #[serde(default)]
    pub builtin: Option<String>,
    /// A component file (`.wasm`) built for `wasm32-wasip2`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The SHA-256 of the component file (64 hex digits): a file that
    /// differs is refused at start, both hashes named.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Handed to the plugin as JSON.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// Wasm instruction budget per call (fuel).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Linear memory limit per call.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Wall-clock limit per call, host work (fetching) included.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Bytes of stdout and of stderr kept per call (KiB).
    #[serde(default)]
    pub output_kib: Option<u64>,
    /// Largest input a call is handed: the event and the config (MiB).
    #[serde(default)]
    pub input_mib: Option<u64>,
}

/// Default limits, per plugin kind.
pub const FILTER_FUEL: u64 = 500_000_000;
pub const BACKUP_FUEL: u64 = 20_000_000_000;
pub const FILTER_MEMORY_MIB: u64 = 64;
pub const BACKUP_MEMORY_MIB: u64 = 512;
pub const FILTER_TIMEOUT_SECS: u64 = 10;
pub const BACKUP_TIMEOUT_SECS: u64 = 6 * 3600;
/// Every kind: stdout and stderr kept per call, and the largest input
/// (a reconcile of 10,000 branches is about 1.5 MiB).
pub const OUTPUT_KIB: u64 = 64;
pub const INPUT_MIB: u64 = 16;

impl PluginConfig {
    /// A filter configured by path alone: default limits, no config, no
    /// pin (`plugin check`, `plugin test`).
    pub fn filter_at(path: &std::path::Path) -> Self {
        Self {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into()),
            kind: PluginKind::Filter,
            builtin: None,
            path: Some(path.to_path_buf()),
            sha256: None,
            config: None,
            fuel: None,
            memory_mib: None,
            timeout_secs: None,
            output_kib: None,
            input_mib: None,
        }
    }

    pub fn fuel(&self) -> u64 {
        self.fuel.unwrap_or(match self.kind {
            PluginKind::Filter => FILTER_FUEL,
            PluginKind::Backup => BACKUP_FUEL,
        })
    }

    pub fn memory_bytes(&self) -> usize {
        let mib = self.memory_mib.unwrap_or(match self.kind {
            PluginKind::Filter => FILTER_MEMORY_MIB,
            PluginKind::Backup => BACKUP_MEMORY_MIB,
        });
        usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.unwrap_or(match self.kind {
            PluginKind::Filter => FILTER_TIMEOUT_SECS,
            PluginKind::Backup => BACKUP_TIMEOUT_SECS,
        }))
    }

    /// Bytes of stdout and of stderr kept per call.
    pub fn output_bytes(&self) -> usize {
        let kib = self.output_kib.unwrap_or(OUTPUT_KIB);
        usize::try_from(kib.saturating_mul(1024)).unwrap_or(usize::MAX)
    }

    /// The largest input (event and config) a call is handed.
    pub fn input_bytes(&self) -> usize {
        let mib = self.input_mib.unwrap_or(INPUT_MIB);
        usize::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }

    /// The plugin's config as JSON text (`{}` when absent).
    pub fn config_json(&self) -> String {
        let table = self.config.clone().unwrap_or_default();
        serde_json::to_string(&table).unwrap_or_else(|_| "{}".into())
    }
}

/// A secret value: `"literal"`, `{ env = "VAR" }` or `{ file = "path" }`.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    Literal(String),
    Env { env: String },
    File { file: PathBuf },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(_) => f.write_str("Secret(<literal>)"),
            Self::Env { env } => write!(f, "Secret(env {env})"),
            Self::File { file } => write!(f, "Secret(file {})", file.display()),
        }
    }
}

impl Secret {
    /// The secret's value; an empty one is refused (an empty HMAC key or
    /// bearer token would let anyone in).
    pub fn resolve(&self, what: &str) -> Result<SecretString, ConfigError> {
        let value = self.resolve_raw(what)?;
        if value.0.is_empty() {
            return Err(ConfigError::EmptySecret {
                what: what.to_string(),
            });
        }
        Ok(value)
    }

    fn resolve_raw(&self, what: &str) -> Result<SecretString, ConfigError> {
        match self {
            Self::Literal(value) => Ok(SecretString(value.clone())),
            Self::Env { env } => {
                std::env::var(env)
                    .map(SecretString)
                    .map_err(|_| ConfigError::MissingEnv {
                        what: what.to_string(),
                        var: env.clone(),
                    })
            }
            Self::File { file } => std::fs::read_to_string(file)
                .map(|s| SecretString(s.trim_end_matches(['\r', '\n']).to_string()))
                .map_err(|source| ConfigError::SecretFile {
                    what: what.to_string(),
                    path: file.clone(),
                    source,
                }),
        }
    }
}

/// A resolved secret. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: String) -> Self {
        Self(value)
    }
}

impl SecretString {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if self.sources.is_empty() {
            return Err(invalid("at least one [[sources]] entry is required".into()));
        }
        let server = &self.server;
        for (name, value) in [
            ("header_read_timeout_secs", server.header_read_timeout_secs),
            ("body_read_timeout_secs", server.body_read_timeout_secs),
            ("request_timeout_secs", server.request_timeout_secs),
        ] {
            if value == 0 {
                return Err(invalid(format!("server.{name} must be at least 1")));
            }
        }
        // A bound far above any open file limit; the shutdown counts
        // connections in a u32.
        if !(1..=1 << 20).contains(&server.max_connections) {
            return Err(invalid(format!(
                "server.max_connections must be 1-1048576, not {}",
                server.max_connections
            )));
        }
        if !(1..=22).contains(&self.store.zstd_level) {
            return Err(invalid(format!(
                "store.zstd_level must be 1-22, not {}",
                self.store.zstd_level
            )));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.worker.concurrency) {
            return Err(invalid(format!(
                "worker.concurrency must be 1-{MAX_CONCURRENCY}, not {}",
                self.worker.concurrency
            )));
        }
        if self.retention.max_unused_percent > 100 {
            return Err(invalid(format!(
                "retention.max_unused_percent must be 0-100, not {}",
                self.retention.max_unused_percent
            )));
        }
        if self.retention.recompress_level.is_some() && !self.retention.prune {
            return Err(invalid(
                "retention.recompress_level is set, but prune is off: recompression is part of a prune".into(),
            ));
        }
        if self.retention.interval_secs > 0
            && self.retention.policy().is_empty()
            && !self.retention.prune
        {
            return Err(invalid(
                "retention.interval_secs is set, but there is no keep_* rule and prune is off: nothing would run".into(),
            ));
        }
        if let Some(url) = &self.store.url
            && !url.starts_with("s3://")
        {
            return Err(invalid(format!(
                "store.url {url:?}: only s3://BUCKET/PREFIX is supported (leave it out for a local vault in store.path)"
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for source in &self.sources {
            if source.name.is_empty()
                || !source
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(invalid(format!(
                    "source name {:?} must be non-empty letters, digits, '-' or '_'",
                    source.name
                )));
            }
            if !names.insert(source.name.as_str()) {
                return Err(invalid(format!(
                    "source {:?} is defined twice",
                    source.name
                )));
            }
            if source.secrets.is_empty() {
                return Err(invalid(format!(
                    "source {:?} needs at least one webhook secret",
                    source.name
                )));
            }
            match &source.git_url {
                Some(url) if !url.contains("{repo}") => {
                    return Err(invalid(format!(
                        "source {:?}: git_url must contain {{repo}}",
                        source.name
                    )));
                }
                None if source.kind == SourceKind::DataCenter => {
                    return Err(invalid(format!(
                        "source {:?}: a data-center source needs git_url, e.g. \"https://bitbucket.example.com/scm/{{repo}}.git\"",
                        source.name
                    )));
                }
                _ => {}
            }
        }
        let mut plugin_names = std::collections::BTreeSet::new();
        for plugin in &self.plugins {
            if !plugin_names.insert(plugin.name.as_str()) {
                return Err(invalid(format!(
                    "plugin {:?} is defined twice",
                    plugin.name
                )));
            }
            match (&plugin.builtin, &plugin.path) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(format!(
                        "plugin {:?} needs exactly one of `builtin` or `path`",
                        plugin.name
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[sources]]
        name = "cloud"
        kind = "cloud"
        secrets = ["s3cret"]
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let config = Config::from_toml(MINIMAL, Path::new("t.toml")).expect("valid");
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.store.path, PathBuf::from("data"));
        assert_eq!(config.worker.concurrency, 4);
        let repo = RepoName::parse("acme/app").expect("name");
        assert_eq!(
            config.sources[0].clone_url(&repo),
            "https://bitbucket.org/acme/app.git"
        );
    }

    #[test]
    fn plugin_limits_default_by_kind_and_are_set_per_plugin() {
        let text = format!(
            r#"{MINIMAL}
            [[plugins]]
            name = "a"
            kind = "filter"
            path = "a.wasm"

            [[plugins]]
            name = "b"
            kind = "backup"
            path = "b.wasm"
            fuel = 7
            memory_mib = 3
            timeout_secs = 2
            output_kib = 5
            input_mib = 1
            "#
        );
        let config = Config::from_toml(&text, Path::new("t.toml")).expect("valid");
        let (a, b) = (&config.plugins[0], &config.plugins[1]);
        assert_eq!(
            (
                a.fuel(),
                a.memory_bytes(),
                a.output_bytes(),
                a.input_bytes()
            ),
            (FILTER_FUEL, 64 << 20, 64 << 10, 16 << 20)
        );
        assert_eq!(a.timeout().as_secs(), FILTER_TIMEOUT_SECS);
        assert_eq!(
            (
                b.fuel(),
                b.memory_bytes(),
                b.output_bytes(),
                b.input_bytes()
            ),
            (7, 3 << 20, 5 << 10, 1 << 20)
        );
        assert_eq!(b.timeout().as_secs(), 2);
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../examples/hookvault.toml");
        let config = Config::from_toml(text, Path::new("examples/hookvault.toml")).expect("valid");
        assert_eq!(config.plugins.len(), 2);
        assert!(config.reconcile.enabled);
    }

    #[test]
    fn retention_is_off_by_default_and_the_example_block_works() {
        let config = Config::from_toml(MINIMAL, Path::new("t.toml")).expect("valid");
        assert!(config.retention.policy().is_empty());
        assert_eq!(config.retention.interval_secs, 0);
        let empty = Config::from_toml(&format!("[retention]\n{MINIMAL}"), Path::new("t.toml"))
            .expect("valid");
        for r in [&config.retention, &empty.retention] {
            assert_eq!(
                (r.prune, r.max_unused_percent, r.recompress_level),
                (true, 20, None)
            );
        }
        // The example's commented-out block, turned on.
        let example = include_str!("../../examples/hookvault.toml");
        let block: String = example
            .lines()
            .skip_while(|l| *l != "# [retention]")
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let config =
            Config::from_toml(&format!("{block}{MINIMAL}"), Path::new("t.toml")).expect("valid");
        let r = &config.retention;
        assert_eq!(
            (r.keep_daily, r.keep_monthly, r.interval_secs),
            (90, 24, 86400)
        );
        assert_eq!(r.recompress_level, Some(19));
        assert_eq!(
            config.retention.policy().describe(),
            "--keep-daily 90 --keep-monthly 24 --keep-within 30d"
        );
        for (text, says) in [
            (
                "[retention]\nkeep_within = \"3 weeks\"\n",
                "7d, 36h or 1y6m",
            ),
            ("[retention]\nmax_unused_percent = 101\n", "0-100"),
            (
                "[retention]\nrecompress_level = 22\n",
                "from 1 to 19, not 22",
            ),
            ("[retention]\nrecompress_level = 0\n", "from 1 to 19, not 0"),
            (
                "[retention]\nrecompress_level = 19\nprune = false\n",
                "recompression is part of a prune",
            ),
            (
                "[retention]\ninterval_secs = 60\nprune = false\n",
                "nothing would run",
            ),
        ] {
            let err = Config::from_toml(&format!("{text}{MINIMAL}"), Path::new("t.toml"))
                .expect_err(text);
            assert!(format!("{err}").contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn intake_limits_default_and_refuse_zero() {
        let config = Config::from_toml(MINIMAL, Path::new("t.toml")).expect("valid");
        let server = &config.server;
        assert_eq!(
            (
                server.header_read_timeout_secs,
                server.body_read_timeout_secs,
                server.request_timeout_secs,
                server.max_connections
            ),
            (10, 10, 30, 128)
        );
        for key in [
            "header_read_timeout_secs",
            "body_read_timeout_secs",
            "request_timeout_secs",
            "max_connections",
        ] {
            let text = format!("[server]\n{key} = 0\n{MINIMAL}");
            let err = Config::from_toml(&text, Path::new("t.toml")).expect_err("zero");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = format!("{MINIMAL}\nsurprise = 1\n");
        let err = Config::from_toml(&text, Path::new("t.toml")).expect_err("unknown key");
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn worker_concurrency_is_bounded() {
        for bad in [0, MAX_CONCURRENCY + 1] {
            let text = format!("[worker]\nconcurrency = {bad}\n{MINIMAL}");
            let err = Config::from_toml(&text, Path::new("t.toml")).expect_err("out of range");
            assert!(err.to_string().contains("worker.concurrency"), "{err}");
        }
        let text = format!("[worker]\nconcurrency = 1\n{MINIMAL}");
        let config = Config::from_toml(&text, Path::new("t.toml")).expect("one worker");
        assert_eq!(config.worker.concurrency, 1);
    }

    #[test]
    fn empty_secrets_are_refused() {
        let err = Secret::Literal(String::new()).resolve("sources.cloud.secrets[0]");
        assert!(matches!(err, Err(ConfigError::EmptySecret { .. })));
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::Literal("hunter2".into());
        assert!(!format!("{secret:?}").contains("hunter2"));
        let resolved = secret.resolve("test").expect("literal");
        assert!(!format!("{resolved:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_follow_bitbucket_conventions() {
        let creds = GitCredentials {
            kind: CredentialKind::AccessToken,
            token: Secret::Literal("tok".into()),
            email: None,
        };
        // base64("x-token-auth:tok")
        assert_eq!(
            creds.authorization("t").expect("header").expose(),
            "Basic eC10b2tlbi1hdXRoOnRvaw=="
        );
        let dc = GitCredentials {
            kind: CredentialKind::HttpAccessToken,
            token: Secret::Literal("tok".into()),
            email: None,
        };
        assert_eq!(
            dc.authorization("t").expect("header").expose(),
            "Bearer tok"
        );
        assert_eq!(
            dc.rest_authorization("t").expect("header").expose(),
            "Bearer tok"
        );
        let api = GitCredentials {
            kind: CredentialKind::ApiToken,
            token: Secret::Literal("tok".into()),
            email: Some("dana@acme.example".into()),
        };
        // base64("dana@acme.example:tok")
        assert_eq!(
            api.rest_authorization("t").expect("header").expose(),
            "Basic ZGFuYUBhY21lLmV4YW1wbGU6dG9r"
        );
    }
}
