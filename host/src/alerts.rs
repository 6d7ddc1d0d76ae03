//! Alerts: what people must hear about. Plugins raise them (WIT 0.3.0
//! `alerts`, host side in `plugins/caps/alerts.rs`) and so does the service
//! itself (a delivery that failed for good, a repository whose backups lag).
//! Each alert is written to the log and, when `[[alerts.webhooks]]` are
//! configured, POSTed to each of them as JSON (plain or Slack-compatible)
//! by one background task, with a timeout and retries. Raising never
//! blocks and never fails: a full outgoing queue drops the alert (it is
//! still in the log) and counts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::{AlertFormat, AlertsConfig};

/// How bad it is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One alert, as logged and sent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    pub severity: Severity,
    pub title: String,
    pub message: String,
    /// In the order given.
    pub labels: Vec<(String, String)>,
    /// The plugin that raised it, or `hookvault`.
    pub source: String,
    pub repository: Option<String>,
    pub delivery_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Alert {
    /// An alert the service raises itself.
    pub fn from_host(severity: Severity, title: String, message: String) -> Self {
        Alert {
            severity,
            title,
            message,
            labels: Vec::new(),
            source: "hookvault".into(),
            repository: None,
            delivery_id: None,
            at_ms: crate::event::now_ms(),
        }
    }

    /// The plain JSON body.
    pub fn json(&self) -> serde_json::Value {
        let labels: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "labels": labels,
            "source": self.source,
            "repository": self.repository,
            "delivery_id": self.delivery_id,
            "at": crate::event::rfc3339(self.at_ms),
        })
    }

    /// The body a Slack incoming webhook (and the many services that copy
    /// its format) shows: one `text` in Slack's markup.
    pub fn slack(&self) -> serde_json::Value {
        let escape = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut text = format!(
            "*[{}] {}*\n{}",
            self.severity.as_str(),
            escape(&self.title),
            escape(&self.message)
        );
        let mut context: Vec<String> = Vec::new();
        if let Some(repo) = &self.repository {
            context.push(format!("repository: {}", escape(repo)));
        }
        context.extend(
            self.labels
                .iter()
                .map(|(k, v)| format!("{}: {}", escape(k), escape(v))),
        );
        context.push(format!("from: {}", escape(&self.source)));
        text.push('\n');
        text.push_str(&context.join(" · "));
        serde_json::json!({ "text": text })
    }
}

/// Alerts waiting to be sent; beyond this, new ones are dropped (and
/// logged as always).
const QUEUE: usize = 1024;

/// Attempts per alert and webhook, and the first pause between them
/// (doubled each time).
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Where alerts go; cheap to clone.
#[derive(Clone, Debug)]
pub struct Alerts {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    outgoing: Option<tokio::sync::mpsc::Sender<Alert>>,
    dropped: AtomicU64,
    sent: AtomicU64,
}

/// A configured webhook, resolved.
#[derive(Clone)]
struct Webhook {
    url: reqwest::Url,
    format: AlertFormat,
    min_severity: Severity,
    timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    /// The URL of an incoming webhook is its secret: only the host shows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

/// Why an alert webhook could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("alerts.webhooks[{index}].url is not an http(s) URL")]
    Url { index: usize },
    #[error("building the alert HTTP client: {0}")]
    Client(String),
}

impl Alerts {
    /// Alerts that are only logged (no webhook; `plugin test`, tests).
    pub fn log_only() -> Self {
        Alerts {
            inner: Arc::new(Inner {
                outgoing: None,
                dropped: AtomicU64::new(0),
                sent: AtomicU64::new(0),
            }),
        }
    }

    /// Start sending to the configured webhooks (none: log only). Call
    /// inside a tokio runtime.
    pub fn start(config: &AlertsConfig) -> Result<Self, AlertsError> {
        let mut webhooks = Vec::new();
        for (index, hook) in config.webhooks.iter().enumerate() {
            let url = hook.url.resolve(&format!("alerts.webhooks[{index}].url"))?;
            let url = reqwest::Url::parse(url.expose())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or(AlertsError::Url { index })?;
            webhooks.push(Webhook {
                url,
                format: hook.format,
                min_severity: hook.min_severity,
                timeout: Duration::from_secs(hook.timeout_secs.max(1)),
            });
        }
        if webhooks.is_empty() {
            return Ok(Self::log_only());
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("hookvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AlertsError::Client(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let alerts = Alerts {
            inner: Arc::new(Inner {
                outgoing: Some(tx),
                dropped: AtomicU64::new(0),
                sent: AtomicU64::new(0),
            }),
        };
        tokio::spawn(send_all(rx, client, webhooks, alerts.inner.clone()));
        Ok(alerts)
    }

    /// Log `alert` and queue it for the webhooks.
    pub fn raise(&self, alert: Alert) {
        let repository = alert.repository.as_deref().unwrap_or("");
        let delivery_id = alert.delivery_id.as_deref().unwrap_or("");
        let (title, source) = (&alert.title, &alert.source);
        match alert.severity {
            Severity::Info => {
                info!(
                    source,
                    repository, delivery_id, title, "alert: {}", alert.message
                )
            }
            Severity::Warning => {
                warn!(
                    source,
                    repository, delivery_id, title, "alert: {}", alert.message
                )
            }
            Severity::Critical => {
                error!(
                    source,
                    repository, delivery_id, title, "alert: {}", alert.message
                )
            }
        }
        if let Some(outgoing) = &self.inner.outgoing
            && outgoing.try_send(alert).is_err()
        {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(
                dropped,
                "alert queue full; the alert was logged but not sent"
            );
        }
    }

    /// Alerts dropped because the outgoing queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Webhook deliveries that succeeded.
    pub fn sent(&self) -> u64 {
        self.inner.sent.load(Ordering::Relaxed)
    }
}

async fn send_all(
    mut rx: tokio::sync::mpsc::Receiver<Alert>,
    client: reqwest::Client,
    webhooks: Vec<Webhook>,
    inner: Arc<Inner>,
) {
    while let Some(alert) = rx.recv().await {
        for hook in webhooks.iter().filter(|h| alert.severity >= h.min_severity) {
            if send(&client, hook, &alert).await {
                inner.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// POST one alert to one webhook; true when it was accepted.
async fn send(client: &reqwest::Client, hook: &Webhook, alert: &Alert) -> bool {
    let body = match hook.format {
        AlertFormat::Json => alert.json(),
        AlertFormat::Slack => alert.slack(),
    };
    let host = hook.url.host_str().unwrap_or("?").to_string();
    let mut pause = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let answer = client
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .json(&body)
            .send()
            .await;
        let why = match answer {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) if !is_retryable(response.status()) => {
                warn!(
                    host,
                    status = response.status().as_u16(),
                    title = alert.title,
                    "alert webhook refused the alert; not retried"
                );
                return false;
            }
            Ok(response) => format!("answered {}", response.status().as_u16()),
            Err(e) if e.is_timeout() => {
                format!("did not answer within {} s", hook.timeout.as_secs())
            }
            Err(e) => format!("could not be reached: {e}"),
        };
        if attempt == ATTEMPTS {
            warn!(
                host,
                attempts = attempt,
                title = alert.title,
                "alert webhook {why}; giving up on this alert"
            );
            return false;
        }
        warn!(
            host,
            attempt,
            retry_in_ms = pause.as_millis() as u64,
            "alert webhook {why}; retrying"
        );
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2);
    }
    false
}

/// A webhook that answered 429 or 5xx may take the alert on a later try;
/// any other refusal (a wrong URL, a revoked hook) will not change. A
/// retried alert may arrive twice, which beats not arriving.
fn is_retryable(status: reqwest::StatusCode) -> bool {
    status.as_u16() == 429 || status.is_server_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            severity: Severity::Critical,
            title: "main was force-pushed".into(),
            message: "put it back with <undo>".into(),
            labels: vec![("ref".into(), "refs/heads/main".into())],
            source: "force-push-guard".into(),
            repository: Some("acme/widgets".into()),
            delivery_id: Some("d-1".into()),
            at_ms: 0,
        }
    }

    #[test]
    fn bodies_carry_every_field() {
        let json = alert().json();
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["labels"]["ref"], "refs/heads/main");
        assert_eq!(json["repository"], "acme/widgets");
        assert_eq!(json["at"], "1970-01-01T00:00:00Z");
        let text = alert().slack()["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            text.starts_with("*[critical] main was force-pushed*\n"),
            "{text}"
        );
        assert!(
            text.contains("&lt;undo&gt;"),
            "Slack markup is escaped: {text}"
        );
        assert!(
            text.contains(
                "repository: acme/widgets · ref: refs/heads/main · from: force-push-guard"
            ),
            "{text}"
        );
    }

    #[test]
    fn bad_webhook_settings_are_refused_by_name() {
        let config = |hooks: &str| {
            let text = format!(
                "[[sources]]\nname = \"cloud\"\nkind = \"cloud\"\nsecrets = [\"s\"]\n{hooks}"
            );
            crate::config::Config::from_toml(&text, std::path::Path::new("hookvault.toml"))
        };
        let not_http =
            config("[[alerts.webhooks]]\nurl = \"ftp://example.com/x\"\n").expect("config parses");
        assert!(matches!(
            Alerts::start(&not_http.alerts),
            Err(AlertsError::Url { index: 0 })
        ));
        let missing_env =
            config("[[alerts.webhooks]]\nurl = { env = \"HOOKVAULT_NO_SUCH_VAR\" }\n")
                .expect("config parses");
        let err = Alerts::start(&missing_env.alerts).expect_err("no such variable");
        assert!(err.to_string().contains("alerts.webhooks[0].url"), "{err}");
        for bad in [
            "[[alerts.webhooks]]\nurl = \"http://x\"\nformat = \"teams\"\n",
            "[[alerts.webhooks]]\nurl = \"http://x\"\nmin_severity = \"loud\"\n",
            "[alerts]\nmax_lag = 5\n",
        ] {
            assert!(config(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn only_throttling_and_server_errors_are_retried() {
        for code in [429u16, 500, 502, 503] {
            assert!(is_retryable(
                reqwest::StatusCode::from_u16(code).expect("code")
            ));
        }
        for code in [400u16, 401, 403, 404, 410] {
            assert!(!is_retryable(
                reqwest::StatusCode::from_u16(code).expect("code")
            ));
        }
        assert!(Severity::Critical > Severity::Warning && Severity::Warning > Severity::Info);
    }
}
