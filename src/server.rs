//! The HTTP server: `/metrics` (Prometheus text format), `/healthz` (liveness),
//! `/readyz` (readiness), and `POST /api/v1/alertmanager` (Alertmanager's webhook,
//! whose firing alerts may trigger playbooks). It encodes the agent's [`Metrics`] and
//! hands alerts to the agent; it never acts itself.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use crate::anomaly::AlertmanagerWebhook;
use crate::metrics::{Metrics, WebhookResult, CONTENT_TYPE};
use crate::spool::{Spool, SpoolError};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The agent's metrics and health.
    pub metrics: Arc<Metrics>,
    /// Where accepted alerts go: on disk before the webhook answers 202.
    pub alerts: Arc<Spool>,
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/alertmanager", post(alertmanager))
        .with_state(state)
}

/// Accepts Alertmanager's webhook JSON; a malformed body is logged and answered 400.
async fn alertmanager(State(s): State<AppState>, body: Bytes) -> impl IntoResponse {
    let hook: AlertmanagerWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "malformed Alertmanager webhook body; skipped");
            s.metrics.webhook_request(WebhookResult::Malformed);
            return (
                StatusCode::BAD_REQUEST,
                format!("malformed Alertmanager webhook: {e}\n"),
            );
        }
    };
    if hook.version != "4" {
        tracing::warn!(version = %hook.version, "unexpected Alertmanager webhook version; reading it as version 4");
    }
    let spool = s.alerts.clone();
    let accepted = tokio::task::spawn_blocking(move || spool.accept(hook.alerts)).await;
    match accepted {
        Ok(Ok(_)) => {
            s.metrics.webhook_request(WebhookResult::Accepted);
            (StatusCode::ACCEPTED, "accepted\n".to_string())
        }
        Ok(Err(e @ SpoolError::Full { .. })) => {
            // Alertmanager retries; better than blocking its sender on a busy agent.
            s.metrics.webhook_request(WebhookResult::Busy);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy, retry later: {e}\n"),
            )
        }
        Ok(Err(e)) => {
            // Not on disk, so not accepted: Alertmanager keeps it and retries.
            tracing::error!(error = %e, "cannot persist accepted alerts; answered 503");
            s.metrics.webhook_request(WebhookResult::Busy);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot persist alerts, retry later\n".to_string(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "alert intake task failed; answered 503");
            (StatusCode::SERVICE_UNAVAILABLE, "retry later\n".to_string())
        }
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode())
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
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

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
