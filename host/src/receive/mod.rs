//! The webhook receiver (axum). It knows HTTP, signatures and Bitbucket's
//! payload shapes; it produces [`Event`]s and records them durably in the
//! queue before answering. It never does backup work itself.
//!
//! Status codes: 202 queued (or recorded and ignored, or a failed
//! delivery's id sent again and queued again), 200 duplicate or ping, 400
//! malformed, 401 unsigned or wrongly signed, 408 body stalled, 413 too
//! large, 503 when the store cannot record or the request was not answered
//! in time (Bitbucket Cloud retries 5xx). Each refusal is counted in
//! [`crate::metrics`] by reason. `/healthz` is liveness, `/readyz`
//! readiness ([`ready`]), `/metrics` the metrics (admin token).
//!
//! Before any of that, every client meets the limits of `[server]`:
//! connections and header reads in [`listen`], request bodies and whole
//! requests as layers of [`app`].

pub(crate) mod listen;
pub(crate) mod ready;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::{Instrument, info, info_span, warn};

use crate::bitbucket::{normalize, signature};
use crate::config::{Config, SecretString, SourceKind};
use crate::event::{Event, now_ms};
use crate::ids::RepoName;
use crate::metrics::{self, Accepted, Rejection};
use crate::pipeline::queue::{Delivery, DeliveryView, Filter, Queue, Recorded, Retried, Status};
use crate::vault::Vault;

/// A configured source with its secrets resolved.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub secrets: Vec<SecretString>,
    /// Allowed client networks; empty allows any.
    pub allow: Vec<ipnet::IpNet>,
}

impl Source {
    fn admits(&self, client: Option<IpAddr>) -> bool {
        self.allow.is_empty()
            || client.is_some_and(|ip| self.allow.iter().any(|net| net.contains(&ip)))
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub sources: Vec<Source>,
    pub queue: Queue,
    pub store: Vault,
    pub admin_token: Option<SecretString>,
    pub max_body_bytes: usize,
    /// For `POST /api/v1/reconcile`.
    pub reconciler: Option<crate::pipeline::reconcile::Reconciler>,
    /// Where `hookvault hooks register` keeps the secrets it made.
    pub store_dir: std::path::PathBuf,
    /// `server.body_read_timeout_secs`.
    pub(crate) body_read_timeout: Duration,
    /// `server.request_timeout_secs`.
    pub(crate) request_timeout: Duration,
    /// The last readiness check (`/readyz`).
    pub(crate) readiness: ready::Readiness,
}

impl AppState {
    pub fn new(
        config: &Config,
        queue: Queue,
        store: Vault,
    ) -> Result<Self, crate::config::ConfigError> {
        let mut sources = Vec::new();
        for source in &config.sources {
            let secrets = source
                .secrets
                .iter()
                .enumerate()
                .map(|(i, s)| s.resolve(&format!("sources.{}.secrets[{i}]", source.name)))
                .collect::<Result<Vec<_>, _>>()?;
            let allow = source
                .allow_ips
                .iter()
                .map(|entry| {
                    entry
                        .parse::<ipnet::IpNet>()
                        .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                        .map_err(|_| crate::config::ConfigError::Invalid {
                            path: "allow_ips".into(),
                            message: format!(
                                "source {:?}: {entry:?} is not an IP address or CIDR range",
                                source.name
                            ),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            sources.push(Source {
                name: source.name.clone(),
                kind: source.kind,
                secrets,
                allow,
            });
        }
        let admin_token = config
            .server
            .admin_token
            .as_ref()
            .map(|t| t.resolve("server.admin_token"))
            .transpose()?;
        Ok(Self {
            sources,
            queue,
            store,
            admin_token,
            max_body_bytes: config.server.max_body_bytes,
            reconciler: None,
            store_dir: config.store.path.clone(),
            body_read_timeout: Duration::from_secs(config.server.body_read_timeout_secs),
            request_timeout: Duration::from_secs(config.server.request_timeout_secs),
            readiness: ready::Readiness::default(),
        })
    }
}

/// The HTTP application, testable without a socket. Every request body
/// that pauses longer than `server.body_read_timeout_secs` fails (the
/// webhook handlers answer 408); every request but `POST
/// /api/v1/reconcile` (which answers when its pass ends) is answered 503
/// if not answered within `server.request_timeout_secs`.
pub fn app(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    let request_timeout = state.request_timeout;
    let on_timeout = move |extensions: Extensions, method: Method, uri: Uri, failure| async move {
        not_answered(&extensions, &method, &uri, failure, request_timeout)
    };
    Router::new()
        .route("/webhooks/bitbucket", post(webhook_any))
        .route("/webhooks/bitbucket/{source}", post(webhook_for_source))
        .route("/healthz", get(health))
        .route("/readyz", get(readiness))
        .route("/metrics", get(metrics_text))
        .route(
            "/api/v1/repos/{owner}/{slug}/snapshots",
            get(list_snapshots),
        )
        .route("/api/v1/deliveries", get(list_deliveries))
        .route("/api/v1/deliveries/{id}", get(get_delivery))
        .route("/api/v1/deliveries/{id}/retry", post(retry_delivery))
        .route("/api/v1/retry-failed", post(retry_failed))
        .route("/api/v1/stats", get(stats))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(on_timeout))
                .layer(tower::timeout::TimeoutLayer::new(request_timeout)),
        )
        // Added after the request timeout: not limited by it.
        .route("/api/v1/reconcile", post(reconcile_now))
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestBodyTimeoutLayer::new(state.body_read_timeout))
        .with_state(state)
}

/// The peer address the accept loop attached, for logs.
fn peer(extensions: &Extensions) -> String {
    extensions.get::<ConnectInfo<SocketAddr>>().map_or_else(
        || "unknown".to_string(),
        |ConnectInfo(addr)| addr.to_string(),
    )
}

/// The answer to a request the request timeout cut short (the only error
/// the timed routes have).
fn not_answered(
    extensions: &Extensions,
    method: &Method,
    uri: &Uri,
    failure: tower::BoxError,
    limit: Duration,
) -> Response {
    if failure.is::<tower::timeout::error::Elapsed>() {
        if uri.path().starts_with("/webhooks/") {
            metrics::global().rejected(Rejection::RequestTimeout);
        }
        warn!(
            peer = %peer(extensions),
            %method,
            path = uri.path(),
            "request not answered within {} s (server.request_timeout_secs): answered 503",
            limit.as_secs()
        );
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request was not answered in time; retry",
        );
    }
    tracing::error!(error = %failure, "request failed");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// A webhook body that could not be read: a stalled one (the body-read
/// timeout) is answered 408 and logged, the rest as axum answers them
/// (413 too large).
fn body_unreadable(
    extensions: &Extensions,
    rejection: BytesRejection,
    limit: Duration,
) -> Response {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(link) = cause {
        if link.is::<tower_http::timeout::TimeoutError>() {
            metrics::global().rejected(Rejection::BodyTimeout);
            warn!(
                peer = %peer(extensions),
                "request body paused longer than {} s (server.body_read_timeout_secs): answered 408",
                limit.as_secs()
            );
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body was not received in time",
            );
        }
        cause = link.source();
    }
    metrics::global().rejected(if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Rejection::TooLarge
    } else {
        Rejection::Malformed
    });
    rejection.into_response()
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, json!({ "error": message.into() }))
}

/// Liveness: the process answers.
async fn health() -> &'static str {
    "ok\n"
}

/// Readiness: 200 when a delivery can be recorded now, 503 with the reason
/// when it cannot (see [`ready`]).
async fn readiness(State(state): State<Arc<AppState>>) -> Response {
    match state.readiness.check(&state.queue).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// The metrics in OpenMetrics text (see [`crate::metrics`]). Behind the
/// admin token, as the API is: they name every repository.
async fn metrics_text(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    let queue = state.queue.clone();
    let store = state.store.clone();
    let rendered = blocking(move || metrics::global().render(&queue, &store)).await;
    match rendered {
        Ok(text) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Run a reading call (vault or queue) on the blocking pool; its error, or
/// the task's, as text for a 500.
async fn blocking<T, E>(call: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

async fn webhook_any(
    State(state): State<Arc<AppState>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => receive(state, None, client_ip(&extensions), headers, body).await,
        Err(rejection) => body_unreadable(&extensions, rejection, state.body_read_timeout),
    }
}

async fn webhook_for_source(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => receive(state, Some(source), client_ip(&extensions), headers, body).await,
        Err(rejection) => body_unreadable(&extensions, rejection, state.body_read_timeout),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The delivery id: Cloud's `X-Request-UUID`, Data Center's `X-Request-Id`,
/// or, when neither is sent, a digest of the body (so that identical
/// redeliveries still deduplicate).
fn delivery_id(headers: &HeaderMap, body: &[u8]) -> Result<String, &'static str> {
    let id = header(headers, "x-request-uuid")
        .or_else(|| header(headers, "x-request-id"))
        .map(str::trim);
    match id {
        Some(id) if id.is_empty() || id.len() > 128 => Err("delivery id must be 1-128 characters"),
        Some(id) if !id.bytes().all(|b| b.is_ascii_graphic()) => {
            Err("delivery id must be printable ASCII")
        }
        Some(id) => Ok(id.to_string()),
        None => Ok(format!("body-{}", blake3::hash(body).to_hex())),
    }
}

async fn receive(
    state: Arc<AppState>,
    source_name: Option<String>,
    client: Option<IpAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(event_key) = header(&headers, "x-event-key").map(str::to_string) else {
        metrics::global().rejected(Rejection::Malformed);
        return error(StatusCode::BAD_REQUEST, "missing X-Event-Key header");
    };
    // Data Center's test ping is unsigned even when a secret is set.
    if event_key == "diagnostics:ping" {
        return reply(StatusCode::OK, json!({ "status": "pong" }));
    }
    let id = match delivery_id(&headers, &body) {
        Ok(id) => id,
        Err(message) => {
            metrics::global().rejected(Rejection::Malformed);
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let span = info_span!("delivery", delivery_id = %id, event_key = %event_key);
    async move {
        let signature = match signature::parse_header(header(&headers, "x-hub-signature")) {
            Ok(sig) => sig,
            Err(e) => {
                warn!(error = %e, "rejected delivery");
                metrics::global().rejected(Rejection::BadSignature);
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
        };
        let candidates: Vec<&Source> = match &source_name {
            Some(name) => state.sources.iter().filter(|s| &s.name == name).collect(),
            None => state.sources.iter().collect(),
        };
        if candidates.is_empty() {
            metrics::global().rejected(Rejection::UnknownSource);
            return error(StatusCode::NOT_FOUND, "no such source");
        }
        let candidates: Vec<&Source> = candidates
            .into_iter()
            .filter(|s| s.admits(client))
            .collect();
        if candidates.is_empty() {
            warn!(client = ?client, "rejected delivery: address not allowed");
            metrics::global().rejected(Rejection::NotAllowed);
            return error(
                StatusCode::FORBIDDEN,
                "client address not allowed for this source",
            );
        }
        let verifies = |secrets: &[SecretString]| {
            secrets
                .iter()
                .any(|secret| signature::verify(secret.expose().as_bytes(), &body, &signature))
        };
        let matched = candidates
            .iter()
            .copied()
            .find(|s| verifies(&s.secrets))
            .or_else(|| {
                // Secrets registered by `hookvault hooks register`.
                candidates.iter().copied().find(|s| {
                    crate::bitbucket::secrets::load(&state.store_dir, &s.name)
                        .map(|secrets| verifies(&secrets))
                        .unwrap_or(false)
                })
            });
        let Some(source) = matched else {
            warn!("rejected delivery: signature matches no secret");
            metrics::global().rejected(Rejection::BadSignature);
            return error(
                StatusCode::UNAUTHORIZED,
                signature::SignatureError::Mismatch.to_string(),
            );
        };
        let received_at_ms = now_ms();
        let (status, event) = match parse(source, &event_key, &id, &body, received_at_ms) {
            Ok(parsed) => parsed,
            Err(message) => {
                warn!(error = %message, "malformed delivery");
                metrics::global().rejected(Rejection::Malformed);
                return error(StatusCode::BAD_REQUEST, message);
            }
        };
        let delivery = Delivery {
            id: id.clone(),
            source: source.name.clone(),
            event_key: event_key.clone(),
            received_at_ms,
            status,
            attempts: 0,
            last_error: None,
            failure: None,
            last_attempt_ms: None,
            event,
            snapshot: None,
            entry: None,
        };
        match state.queue.record_redelivery(delivery).await {
            Ok(Recorded::New) => {
                info!(source = %source.name, ?status, "delivery recorded");
                let (word, answer) = if status == Status::Queued {
                    ("queued", Accepted::Queued)
                } else {
                    ("ignored", Accepted::Ignored)
                };
                metrics::global().accepted(answer);
                reply(
                    StatusCode::ACCEPTED,
                    json!({ "delivery": id, "status": word }),
                )
            }
            Ok(Recorded::Requeued) => {
                info!("redelivery of a failed delivery; queued again");
                metrics::global().accepted(Accepted::Requeued);
                reply(
                    StatusCode::ACCEPTED,
                    json!({ "delivery": id, "status": "requeued" }),
                )
            }
            Ok(Recorded::Duplicate) => {
                info!("duplicate delivery acknowledged");
                metrics::global().accepted(Accepted::Duplicate);
                reply(
                    StatusCode::OK,
                    json!({ "delivery": id, "status": "duplicate" }),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record delivery");
                metrics::global().rejected(Rejection::CannotRecord);
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot record the delivery; retry",
                )
            }
        }
    }
    .instrument(span)
    .await
}

/// Turn a verified body into a queued event, or an ignored record.
fn parse(
    source: &Source,
    event_key: &str,
    id: &str,
    body: &[u8],
    received_at_ms: u64,
) -> Result<(Status, Option<Event>), String> {
    let envelope = normalize::Envelope {
        source: &source.name,
        source_kind: source.kind,
        event_key,
        delivery_id: id,
        received_at_ms,
    };
    match normalize::parse(&envelope, body).map_err(|e| e.to_string())? {
        normalize::Parsed::Event(event) => Ok((Status::Queued, Some(*event))),
        normalize::Parsed::Ignored => Ok((Status::Ignored, None)),
    }
}

/// `Some(response)` when the request may not use the API.
fn api_denied(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &state.admin_token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the API is disabled: set server.admin_token",
        ));
    };
    let given = header(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // blake3::Hash compares in constant time.
    if blake3::hash(given.as_bytes()) == blake3::hash(expected.expose().as_bytes()) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

async fn list_snapshots(
    State(state): State<Arc<AppState>>,
    Path((owner, slug)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    let repo = match RepoName::parse(&format!("{owner}/{slug}")) {
        Ok(repo) => repo,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let store = state.store.clone();
    let listed = blocking(move || {
        store
            .snapshots(&repo)?
            .iter()
            .map(|s| store.snapshot_json(s))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    match listed {
        Ok(list) => reply(StatusCode::OK, json!(list)),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn get_delivery(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    match state.queue.get(&id) {
        Ok(Some(delivery)) => reply(StatusCode::OK, json!(delivery)),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such delivery"),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn stats(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    let store = state.store.clone();
    let stats = blocking(move || store.stats()).await;
    let queue = state.queue.clone();
    let counts = blocking(move || queue.counts()).await;
    match (stats, counts) {
        (Ok(stats), Ok(counts)) => {
            reply(StatusCode::OK, json!({ "store": stats, "queue": counts }))
        }
        (Err(e), _) | (_, Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /api/v1/deliveries?failed=true&repo=WS/SLUG`.
#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    #[serde(default)]
    failed: bool,
    repo: Option<String>,
}

/// The recorded deliveries, oldest first, as [`DeliveryView`]s.
async fn list_deliveries(
    State(state): State<Arc<AppState>>,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    let repo = match query.repo.as_deref().map(RepoName::parse).transpose() {
        Ok(repo) => repo,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let filter = Filter {
        failed_only: query.failed,
        repo,
    };
    let queue = state.queue.clone();
    let listed = blocking(move || queue.list(&filter)).await;
    match listed {
        Ok(list) => {
            let views: Vec<DeliveryView> = list.iter().map(DeliveryView::from).collect();
            reply(StatusCode::OK, json!(views))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// Queue a failed delivery again: 200, 404 when unknown, 409 when it has
/// not failed.
async fn retry_delivery(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    match state.queue.retry(&id).await {
        Ok(Retried::Requeued) => {
            info!(delivery_id = %id, "failed delivery queued again by an operator");
            reply(StatusCode::OK, json!({ "requeued": [id] }))
        }
        Ok(Retried::NotFound) => error(StatusCode::NOT_FOUND, format!("no delivery {id}")),
        Ok(Retried::NotFailed(status)) => error(
            StatusCode::CONFLICT,
            format!(
                "delivery {id} has not failed (it is {}); only failed deliveries are retried",
                status.as_str()
            ),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Queue every failed delivery again.
async fn retry_failed(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    match state.queue.retry_all_failed().await {
        Ok(ids) => {
            info!(
                count = ids.len(),
                "failed deliveries queued again by an operator"
            );
            reply(StatusCode::OK, json!({ "requeued": ids }))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Run a reconcile pass now and answer with its report.
async fn reconcile_now(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(denied) = api_denied(&state, &headers) {
        return denied;
    }
    match &state.reconciler {
        None => error(
            StatusCode::NOT_FOUND,
            "reconciliation is off: configure workspaces on a source",
        ),
        Some(reconciler) => reply(StatusCode::OK, json!(reconciler.pass().await)),
    }
}
