//! The HTTP server: `/metrics` (Prometheus text format), `/healthz` (liveness),
//! `/readyz` (readiness), and `POST /api/v1/alertmanager` (Alertmanager's webhook,
//! whose firing alerts may trigger playbooks). It reads a [`Telemetry`] snapshot the
//! agent publishes each tick, and hands alerts to the agent; it never acts itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use tokio::sync::mpsc;

use crate::anomaly::{AlertmanagerAlert, AlertmanagerWebhook};
use crate::labels::{escape_label_value, Labels};

/// One series' exported state.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesGauge {
    /// The signal's name.
    pub signal: String,
    /// The series' labels.
    pub labels: Labels,
    /// Latest value.
    pub value: f64,
    /// Latest score.
    pub score: f64,
    /// Expected band, lower edge.
    pub lower: f64,
    /// Expected band, upper edge.
    pub upper: f64,
    /// Whether an anomaly is open.
    pub open: bool,
    /// Whether the latest query gave no data for it.
    pub stale: bool,
}

/// Per-signal health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignalHealth {
    /// Whether the latest query succeeded with data.
    pub up: bool,
    /// Series currently tracked.
    pub series: usize,
}

/// Everything `/metrics`, `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Per-series gauges, rebuilt every tick.
    pub series: Vec<SeriesGauge>,
    /// Per-signal health.
    pub signals: BTreeMap<String, SignalHealth>,
    /// Completed ticks.
    pub ticks: u64,
    /// Failed queries by (signal, error kind).
    pub query_errors: BTreeMap<(String, String), u64>,
    /// Queries that succeeded with an empty result, by signal.
    pub empty_results: BTreeMap<String, u64>,
    /// Anomalies opened, by signal.
    pub anomalies_opened: BTreeMap<String, u64>,
    /// Playbook runs by (playbook, result).
    pub playbook_runs: BTreeMap<(String, String), u64>,
    /// Audit records written.
    pub audit_records: u64,
    /// Active playbooks: name → SHA-256 of the loaded file.
    pub playbooks: BTreeMap<String, String>,
    /// Webhook requests by result (`accepted`, `malformed`, `busy`).
    pub webhook_requests: BTreeMap<String, u64>,
    /// Set once history is fitted and the first tick has run.
    pub ready: bool,
    /// When the loop last made progress (for liveness).
    pub heartbeat: Option<Instant>,
    /// Longest silence of the loop that still counts as alive.
    pub liveness_window: Duration,
}

/// Shared between the agent (writer) and the server (reader).
pub type SharedTelemetry = Arc<Mutex<Telemetry>>;

/// Reads one per-series gauge's value.
type Getter = fn(&SeriesGauge) -> f64;

/// Renders the Prometheus text exposition format.
pub fn render(t: &Telemetry) -> String {
    let mut out = String::with_capacity(256 + t.series.len() * 400);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "homeostat_build_info",
        "gauge",
        "Build information.",
    );
    let _ = writeln!(
        out,
        "homeostat_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    family(
        &mut out,
        "homeostat_ready",
        "gauge",
        "1 once history is fitted and the first tick ran.",
    );
    let _ = writeln!(out, "homeostat_ready {}", u8::from(t.ready));
    family(
        &mut out,
        "homeostat_ticks_total",
        "counter",
        "Completed evaluation ticks.",
    );
    let _ = writeln!(out, "homeostat_ticks_total {}", t.ticks);
    family(
        &mut out,
        "homeostat_audit_records_total",
        "counter",
        "Audit records written by this process.",
    );
    let _ = writeln!(out, "homeostat_audit_records_total {}", t.audit_records);

    family(
        &mut out,
        "homeostat_playbook_info",
        "gauge",
        "Active playbooks and the hash of the loaded version.",
    );
    for (name, sha) in &t.playbooks {
        let _ = writeln!(
            out,
            "homeostat_playbook_info{{playbook=\"{}\",sha256=\"{sha}\"}} 1",
            escape_label_value(name)
        );
    }
    family(
        &mut out,
        "homeostat_webhook_requests_total",
        "counter",
        "Alertmanager webhook requests by result.",
    );
    for (r, n) in &t.webhook_requests {
        let _ = writeln!(
            out,
            "homeostat_webhook_requests_total{{result=\"{r}\"}} {n}"
        );
    }
    family(
        &mut out,
        "homeostat_signal_up",
        "gauge",
        "1 when the signal's latest query returned data.",
    );
    for (s, h) in &t.signals {
        let _ = writeln!(
            out,
            "homeostat_signal_up{{signal=\"{}\"}} {}",
            escape_label_value(s),
            u8::from(h.up)
        );
    }
    family(
        &mut out,
        "homeostat_series",
        "gauge",
        "Series tracked per signal.",
    );
    for (s, h) in &t.signals {
        let _ = writeln!(
            out,
            "homeostat_series{{signal=\"{}\"}} {}",
            escape_label_value(s),
            h.series
        );
    }
    family(
        &mut out,
        "homeostat_query_errors_total",
        "counter",
        "Failed signal queries by error kind.",
    );
    for ((s, kind), n) in &t.query_errors {
        let _ = writeln!(
            out,
            "homeostat_query_errors_total{{signal=\"{}\",kind=\"{kind}\"}} {n}",
            escape_label_value(s)
        );
    }
    family(
        &mut out,
        "homeostat_empty_results_total",
        "counter",
        "Signal queries that returned no series.",
    );
    for (s, n) in &t.empty_results {
        let _ = writeln!(
            out,
            "homeostat_empty_results_total{{signal=\"{}\"}} {n}",
            escape_label_value(s)
        );
    }
    family(
        &mut out,
        "homeostat_anomalies_opened_total",
        "counter",
        "Anomalies opened per signal.",
    );
    for (s, n) in &t.anomalies_opened {
        let _ = writeln!(
            out,
            "homeostat_anomalies_opened_total{{signal=\"{}\"}} {n}",
            escape_label_value(s)
        );
    }
    family(
        &mut out,
        "homeostat_playbook_runs_total",
        "counter",
        "Playbook runs by result.",
    );
    for ((p, r), n) in &t.playbook_runs {
        let _ = writeln!(
            out,
            "homeostat_playbook_runs_total{{playbook=\"{}\",result=\"{r}\"}} {n}",
            escape_label_value(p)
        );
    }

    let per_series: [(&str, &str, Getter); 6] = [
        (
            "homeostat_anomaly_score",
            "Latest anomaly score of the series.",
            |g| g.score,
        ),
        (
            "homeostat_expected_lower",
            "Lower edge of the expected band.",
            |g| g.lower,
        ),
        (
            "homeostat_expected_upper",
            "Upper edge of the expected band.",
            |g| g.upper,
        ),
        (
            "homeostat_observed_value",
            "Latest value of the series.",
            |g| g.value,
        ),
        (
            "homeostat_anomaly_open",
            "1 while an anomaly is open on the series.",
            |g| f64::from(u8::from(g.open)),
        ),
        (
            "homeostat_series_stale",
            "1 when the latest query gave no data for the series.",
            |g| f64::from(u8::from(g.stale)),
        ),
    ];
    for (name, help, get) in per_series {
        family(&mut out, name, "gauge", help);
        for g in &t.series {
            let v = get(g);
            // A band that does not exist yet (warm-up) is left out rather than exported as NaN.
            if v.is_nan() {
                continue;
            }
            let _ = writeln!(out, "{name}{} {}", series_labels(g), format_value(v));
        }
    }
    out
}

/// `{signal="…",<series labels>}`, renaming labels that would clash or are reserved.
fn series_labels(g: &SeriesGauge) -> String {
    let mut s = format!("{{signal=\"{}\"", escape_label_value(&g.signal));
    for (k, v) in &g.labels.0 {
        let k = match k.as_str() {
            "__name__" => "series_name",
            "signal" => "exported_signal",
            other => other,
        };
        let _ = write!(s, ",{k}=\"{}\"", escape_label_value(v));
    }
    s.push('}');
    s
}

fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        v.to_string()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The agent's published state.
    pub telemetry: SharedTelemetry,
    /// Where firing alerts go (the agent's loop).
    pub alerts: mpsc::Sender<Vec<AlertmanagerAlert>>,
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
    let count = |r: &str| {
        *s.telemetry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .webhook_requests
            .entry(r.to_string())
            .or_default() += 1
    };
    let hook: AlertmanagerWebhook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "malformed Alertmanager webhook body; skipped");
            count("malformed");
            return (
                StatusCode::BAD_REQUEST,
                format!("malformed Alertmanager webhook: {e}\n"),
            );
        }
    };
    if hook.version != "4" {
        tracing::warn!(version = %hook.version, "unexpected Alertmanager webhook version; reading it as version 4");
    }
    match s.alerts.try_send(hook.alerts) {
        Ok(()) => {
            count("accepted");
            (StatusCode::ACCEPTED, "accepted\n".to_string())
        }
        Err(_) => {
            // Alertmanager retries; better than blocking its sender on a busy agent.
            count("busy");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "busy, retry later\n".to_string(),
            )
        }
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = render(&s.telemetry.lock().unwrap_or_else(|p| p.into_inner()));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let t = s.telemetry.lock().unwrap_or_else(|p| p.into_inner());
    match t.heartbeat {
        Some(h) if h.elapsed() > t.liveness_window => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("stalled: no progress for {:?}\n", h.elapsed()),
        ),
        _ => (StatusCode::OK, "ok\n".to_string()),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.telemetry.lock().unwrap_or_else(|p| p.into_inner()).ready {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_series_with_renamed_labels_and_skips_nan() {
        let mut t = Telemetry::default();
        t.series.push(SeriesGauge {
            signal: "lat".into(),
            labels: Labels::from_pairs([("__name__", "x"), ("signal", "s"), ("pod", "a\"b")]),
            value: 1.5,
            score: 7.0,
            lower: f64::NAN,
            upper: 2.0,
            open: true,
            stale: false,
        });
        let out = render(&t);
        assert!(out.contains("homeostat_anomaly_score{signal=\"lat\",series_name=\"x\",pod=\"a\\\"b\",exported_signal=\"s\"} 7\n"), "{out}");
        assert!(out.contains("homeostat_anomaly_open{signal=\"lat\""));
        assert!(
            !out.contains("homeostat_expected_lower{"),
            "NaN band must be left out"
        );
    }
}
