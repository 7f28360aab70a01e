//! The HTTP server: `/metrics` (Prometheus text format), `/healthz` (liveness),
//! `/readyz` (readiness), and `POST /api/v1/alertmanager` (Alertmanager's webhook,
//! whose firing alerts may trigger playbooks). It encodes the agent's [`Metrics`] and
//! hands alerts to the agent; it never acts itself.
//!
//! It faces whoever can reach `agent.listen`, so: write endpoints require the bearer
//! token ([`auth`]); the webhook takes only JSON, up to `api.max_body_bytes`; and
//! [`conn`] serves each connection within the `[api]` time limits and caps how many
//! are open, so slow or idle clients can neither hold it nor exhaust the process's
//! descriptors; [`tls`] optionally speaks HTTPS, reloading its certificate.

pub mod auth;
mod conn;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::act::control::{Control, ControlError};
use crate::anomaly::AlertmanagerWebhook;
use crate::config::{is_loopback, ApiConfig};
use crate::metrics::{HttpRejection, Metrics, WebhookResult, CONTENT_TYPE};
use crate::spool::{Spool, SpoolError};

/// The server's settings: the `[api]` section.
pub type ServerSettings = ApiConfig;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The agent's metrics and health.
    pub metrics: Arc<Metrics>,
    /// Where accepted alerts go: on disk before the webhook answers 202.
    pub alerts: Arc<Spool>,
    /// The kill switch and breakers (`None`: the control endpoints answer 503).
    pub control: Option<Arc<Control>>,
}

/// The routes: reads are open, writes need the token ([`auth::require_token`]).
pub fn router(state: AppState, settings: &ServerSettings) -> Router {
    let guard = auth::Guard::new(settings.token.clone(), state.metrics.clone());
    let writes = Router::new()
        .route(
            "/api/v1/alertmanager",
            post(alertmanager).layer(DefaultBodyLimit::max(settings.max_body_bytes)),
        )
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/breakers/{playbook}/reset", post(reset_breaker))
        .route("/api/v1/approvals", get(approvals))
        .route("/api/v1/approvals/{id}", get(approval))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/reject", post(reject))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .route_layer(axum::middleware::from_fn_with_state(
            guard,
            auth::require_token,
        ));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .merge(writes)
        .with_state(state)
}

/// A request whose `Content-Type` is `application/json` (parameters such as `charset`
/// allowed); anything else is answered 415 before its body is read.
pub struct JsonContentType;

impl FromRequestParts<AppState> for JsonContentType {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Response> {
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if json {
            Ok(JsonContentType)
        } else {
            s.metrics
                .http()
                .rejected(HttpRejection::UnsupportedMediaType);
            Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected Content-Type: application/json\n",
            )
                .into_response())
        }
    }
}

/// Accepts Alertmanager's webhook JSON; a malformed body is logged and answered 400,
/// one over `api.max_body_bytes` 413.
async fn alertmanager(
    State(s): State<AppState>,
    _: JsonContentType,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                s.metrics.http().rejected(HttpRejection::TooLarge);
            }
            return rejection.into_response();
        }
    };
    let hook: AlertmanagerWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "malformed Alertmanager webhook body; skipped");
            s.metrics.webhook_request(WebhookResult::Malformed);
            return (
                StatusCode::BAD_REQUEST,
                format!("malformed Alertmanager webhook: {e}\n"),
            )
                .into_response();
        }
    };
    if hook.version != "4" {
        tracing::warn!(version = %hook.version, "unexpected Alertmanager webhook version; reading it as version 4");
    }
    let spool = s.alerts.clone();
    match tokio::task::spawn_blocking(move || spool.accept(hook.alerts)).await {
        Ok(Ok(_)) => {
            s.metrics.webhook_request(WebhookResult::Accepted);
            (StatusCode::ACCEPTED, "accepted\n").into_response()
        }
        Ok(Err(e @ SpoolError::Full { .. })) => {
            // Alertmanager retries; better than blocking its sender on a busy agent.
            s.metrics.webhook_request(WebhookResult::Busy);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy, retry later: {e}\n"),
            )
                .into_response()
        }
        Ok(Err(e)) => {
            // Not on disk, so not accepted: Alertmanager keeps it and retries.
            tracing::error!(error = %e, "cannot persist accepted alerts; answered 503");
            s.metrics.webhook_request(WebhookResult::Busy);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot persist alerts, retry later\n",
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "alert intake task failed; answered 503");
            (StatusCode::SERVICE_UNAVAILABLE, "retry later\n").into_response()
        }
    }
}

/// The body of a control request: who asks, and why (both optional).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ControlRequest {
    reason: String,
    by: String,
    /// The plan hash (or a prefix of 8+ hex digits) an approval names.
    hash: String,
}

impl ControlRequest {
    fn by(&self) -> &str {
        if self.by.is_empty() {
            "api"
        } else {
            &self.by
        }
    }
}

fn json_body(v: serde_json::Value) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v}\n"),
    )
}

/// A control request refused before it reached the control: status and message.
type Refused = (StatusCode, String);

fn refused((status, error): Refused) -> Response {
    (status, json_body(serde_json::json!({ "error": error }))).into_response()
}

/// A control request refused before it reached the control: answered as [`refused`].
struct Rejection(Refused);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        refused(self.0)
    }
}

/// The control, or 503 when the agent runs none.
fn control(s: &AppState) -> Result<Arc<Control>, Rejection> {
    s.control.clone().ok_or_else(|| {
        Rejection((
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is not running its control loop".to_string(),
        ))
    })
}

/// The control, and the request's optional JSON body (an empty one is all defaults;
/// one that is not JSON is answered 400).
fn control_request(
    s: &AppState,
    body: &Bytes,
) -> Result<(Arc<Control>, ControlRequest), Rejection> {
    let control = control(s)?;
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        ControlRequest::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Rejection((StatusCode::BAD_REQUEST, e.to_string())))?
    };
    Ok((control, req))
}

/// A control's answer: 200 with its JSON, or the error with a status that says whose
/// mistake it was.
fn reply(r: Result<serde_json::Value, ControlError>) -> Response {
    use crate::act::approval::ApprovalError as A;
    let e = match r {
        Ok(v) => return (StatusCode::OK, json_body(v)).into_response(),
        Err(e) => e,
    };
    let status = match &e {
        ControlError::Approval(A::NotFound(_)) => StatusCode::NOT_FOUND,
        ControlError::Approval(A::Expired(_)) => StatusCode::GONE,
        ControlError::Approval(
            A::HashMismatch { .. } | A::Tampered { .. } | A::NotAudited { .. },
        ) => StatusCode::CONFLICT,
        ControlError::NoApprovals => StatusCode::SERVICE_UNAVAILABLE,
        _ => {
            tracing::error!(error = %e, "control request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    refused((status, e.to_string()))
}

/// The answer of a switch: whether it changed anything.
fn changed(what: &str) -> impl FnOnce(bool) -> serde_json::Value + '_ {
    move |changed| serde_json::json!({ "ok": true, "changed": changed, "what": what })
}

/// `POST /api/v1/pause`: throws the kill switch (`{"reason": ..., "by": ...}`).
async fn pause(State(s): State<AppState>, body: Bytes) -> Result<Response, Rejection> {
    let (c, req) = control_request(&s, &body)?;
    let reason = if req.reason.is_empty() {
        "paused through the API"
    } else {
        &req.reason
    };
    Ok(reply(
        c.pause(reason, req.by()).await.map(changed("paused")),
    ))
}

/// `POST /api/v1/resume`: releases the kill switch.
async fn resume(State(s): State<AppState>, body: Bytes) -> Result<Response, Rejection> {
    let (c, req) = control_request(&s, &body)?;
    Ok(reply(c.resume(req.by()).await.map(changed("resumed"))))
}

/// `POST /api/v1/breakers/{playbook}/reset`: closes a playbook's circuit breaker.
async fn reset_breaker(
    State(s): State<AppState>,
    axum::extract::Path(playbook): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (c, req) = control_request(&s, &body)?;
    Ok(reply(
        c.reset_breaker(&playbook, req.by(), &req.reason)
            .await
            .map(changed("breaker reset")),
    ))
}

/// `GET /api/v1/approvals`: plans waiting, oldest first.
async fn approvals(State(s): State<AppState>) -> Result<Response, Rejection> {
    let c = control(&s)?;
    Ok(reply(
        c.approvals().await.map(crate::act::approval::listing),
    ))
}

/// `GET /api/v1/approvals/{id}`.
async fn approval(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, Rejection> {
    let c = control(&s)?;
    Ok(reply(
        c.approval(&id)
            .await
            .map(|(p, audit)| crate::act::control::shown(&p, &audit)),
    ))
}

/// `POST /api/v1/approvals/{id}/approve` with `{"hash": ..., "by": ..., "reason": ...}`.
async fn approve(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (c, req) = control_request(&s, &body)?;
    Ok(reply(
        c.approve(&id, &req.hash, req.by(), &req.reason)
            .await
            .map(|p| serde_json::json!({ "ok": true, "approved": p.id, "plan_hash": p.plan_hash })),
    ))
}

/// `POST /api/v1/approvals/{id}/reject` with `{"by": ..., "reason": ...}`.
async fn reject(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Response, Rejection> {
    let (c, req) = control_request(&s, &body)?;
    Ok(reply(c.reject(&id, req.by(), &req.reason).await.map(
        |p| serde_json::json!({ "ok": true, "rejected": p.id }),
    )))
}

/// `GET /api/v1/status`: paused or not, and open breakers.
async fn status(State(s): State<AppState>) -> Result<Response, Rejection> {
    let c = control(&s)?;
    Ok((StatusCode::OK, json_body(c.status())).into_response())
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode())
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    // The reason (paths, OS errors) is in the agent's log; this endpoint is open to all.
    if s.metrics.audit_failure().is_some() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "audit log failed: nothing is done until a restart recovers it\n".to_string(),
        );
    }
    match s.metrics.liveness() {
        Err(silence) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: no progress for {silence:?}\n"),
        ),
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: fitting history\n",
        )
    }
}

/// Serves until `shutdown` resolves, then lets requests in flight finish (each within
/// `api.request_timeout`) and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    raise_descriptor_limit(settings.max_connections);
    let local = listener.local_addr()?;
    match &settings.token {
        Some(_) => tracing::info!(listen = %local, "write endpoints require the API bearer token"),
        None if is_loopback(local.ip()) => tracing::warn!(
            listen = %local,
            "no API token configured: the Alertmanager webhook accepts unauthenticated requests from this host (set [api] token_file or HOMEOSTAT_API_TOKEN)"
        ),
        // `check` refuses this config; a listener handed over may still be so bound.
        None => tracing::warn!(
            listen = %local,
            "no API token configured on an address that is not loopback: write endpoints refuse every client that is not on this host"
        ),
    }
    let tls = match &settings.tls {
        Some(files) => match tls::Reloading::start(files) {
            Ok(reloading) => {
                tracing::info!(listen = %local, cert = %files.cert.display(), "serving HTTPS");
                Some(reloading)
            }
            Err(e) => {
                // `check` read the pair moments ago: it changed since.
                tracing::error!(error = %e, "cannot load the TLS certificate: the HTTP server does not start");
                return Err(e);
            }
        },
        None => None,
    };
    let app = router(state.clone(), &settings);
    conn::serve_connections(listener, app, &settings, state.metrics, tls, shutdown).await
}

/// Raises the soft limit on open descriptors to the hard limit: the common soft limit
/// (1,024) is low for a daemon that keeps connections, files and queries open, and
/// running out of descriptors makes audit writes fail, which stops the agent.
fn raise_descriptor_limit(max_connections: usize) {
    let before = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-descriptor limit");
            return;
        }
    };
    let after = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(after) => after,
        Err(e) => {
            tracing::warn!(error = %e, soft = before, "cannot raise the open-descriptor limit");
            before
        }
    };
    if after != before {
        tracing::info!(before, after, "raised the soft open-descriptor limit");
    } else {
        tracing::debug!(soft = after, "open-descriptor limit");
    }
    // Connections beyond what the limit leaves for files and queries would starve them.
    if (max_connections as u64).saturating_add(128) > after {
        tracing::warn!(
            max_connections,
            limit = after,
            "api.max_connections leaves fewer than 128 descriptors of the open-file limit for the audit log, playbooks and queries"
        );
    }
}
