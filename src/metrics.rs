//! The agent's own metrics and health, on the `prometheus-client` crate. Domain code
//! says what happened through typed methods (`metrics.playbook_run(name, result)`);
//! per-series gauges are read from the snapshot each tick publishes, at scrape time, so
//! a series that vanished is gone from the next scrape. Metric names live here and
//! nowhere else; the server only encodes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::AuditFailure;
use crate::labels::Labels;

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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

/// What one tick knows about every signal and series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Per-series gauges, sorted by signal and labels.
    pub series: Vec<SeriesGauge>,
    /// Per-signal health.
    pub signals: BTreeMap<String, SignalHealth>,
    /// Audit records this process has written.
    pub audit_records: u64,
}

/// How a playbook run for an event ended (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaybookResult {
    /// `plan()` returned a plan, handed to the executor.
    Planned,
    /// Not run: a plan for the same incident is within its cooldown.
    Suppressed,
    /// `plan()` failed (error, limit, timeout).
    Failed,
}

/// What became of one Alertmanager webhook request (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookResult {
    /// Queued for the agent (202).
    Accepted,
    /// Not Alertmanager's JSON (400).
    Malformed,
    /// The queue was full (503): Alertmanager retries.
    Busy,
}

macro_rules! label_value {
    ($t:ty { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $t {
            /// The label value.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $name),* }
            }
        }
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}
label_value!(PlaybookResult { Planned => "planned", Suppressed => "suppressed", Failed => "failed" });
label_value!(WebhookResult { Accepted => "accepted", Malformed => "malformed", Busy => "busy" });

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SignalLabel {
    signal: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueryErrorLabels {
    signal: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PlaybookRunLabels {
    playbook: String,
    result: PlaybookResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PlaybookInfoLabels {
    playbook: String,
    sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PlaybookLabel {
    playbook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlarmLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    kind: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    result: WebhookResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// The agent's metrics and health; share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ticks: Counter,
    query_errors: Family<QueryErrorLabels, Counter>,
    empty_results: Family<SignalLabel, Counter>,
    anomalies_opened: Family<SignalLabel, Counter>,
    series_dropped: Family<SignalLabel, Counter>,
    playbook_runs: Family<PlaybookRunLabels, Counter>,
    playbook_info: Family<PlaybookInfoLabels, Gauge>,
    webhook_requests: Family<WebhookLabels, Counter>,
    alarms: Family<AlarmLabels, Counter>,
    breakers: Family<PlaybookLabel, Gauge>,
    paused: Gauge,
    actions: Family<ActionLabels, Counter>,
    http: HttpMetrics,
    ready: Gauge,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// When the loop last made progress.
    heartbeat: Mutex<Instant>,
    liveness_window: Duration,
    /// The audit log's failure, once the agent has one to watch.
    audit: std::sync::OnceLock<AuditFailure>,
}

impl Metrics {
    /// New metrics; the loop counts as stalled after `liveness_window` without progress.
    pub fn new(liveness_window: Duration) -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("homeostat_build_info", "Build information", build_info);
        let ready = Gauge::default();
        registry.register(
            "homeostat_ready",
            "1 once history is fitted and the first tick ran",
            ready.clone(),
        );
        let ticks = Counter::default();
        registry.register(
            "homeostat_ticks",
            "Completed evaluation ticks",
            ticks.clone(),
        );
        let playbook_info = Family::default();
        registry.register(
            "homeostat_playbook_info",
            "Active playbooks and the hash of the loaded version",
            playbook_info.clone(),
        );
        let webhook_requests = Family::default();
        registry.register(
            "homeostat_webhook_requests",
            "Alertmanager webhook requests by result",
            webhook_requests.clone(),
        );
        let query_errors = Family::default();
        registry.register(
            "homeostat_query_errors",
            "Failed signal queries by error kind",
            query_errors.clone(),
        );
        let empty_results = Family::default();
        registry.register(
            "homeostat_empty_results",
            "Signal queries that returned no series",
            empty_results.clone(),
        );
        let anomalies_opened = Family::default();
        registry.register(
            "homeostat_anomalies_opened",
            "Anomalies opened per signal",
            anomalies_opened.clone(),
        );
        let series_dropped = Family::default();
        registry.register(
            "homeostat_series_dropped",
            "Points of series beyond the series caps, dropped unscored",
            series_dropped.clone(),
        );
        let playbook_runs = Family::default();
        registry.register(
            "homeostat_playbook_runs",
            "Playbook runs by result",
            playbook_runs.clone(),
        );
        let alarms = Family::default();
        registry.register(
            "homeostat_alarms",
            "Alarm alerts for Alertmanager: sent, send_failed (batches retried at the next re-send), dropped (queue full)",
            alarms.clone(),
        );
        let breakers = Family::default();
        registry.register(
            "homeostat_breaker_open",
            "1 while a playbook's circuit breaker is open (it runs no more until reset)",
            breakers.clone(),
        );
        let paused = Gauge::default();
        registry.register(
            "homeostat_paused",
            "1 while the kill switch is thrown: nothing is executed",
            paused.clone(),
        );
        let actions = Family::default();
        registry.register(
            "homeostat_actions",
            "Plan steps by action kind and outcome",
            actions.clone(),
        );
        let http = HttpMetrics::register(&mut registry);
        let (snapshot, rx) = watch::channel(Arc::default());
        registry.register_collector(Box::new(SnapshotCollector(rx)));
        Metrics {
            registry,
            ticks,
            query_errors,
            empty_results,
            anomalies_opened,
            series_dropped,
            playbook_runs,
            playbook_info,
            webhook_requests,
            alarms,
            breakers,
            paused,
            actions,
            http,
            ready,
            snapshot,
            heartbeat: Mutex::new(Instant::now()),
            liveness_window,
            audit: std::sync::OnceLock::new(),
        }
    }

    /// A signal's query failed with an error of this kind.
    pub fn query_failed(&self, signal: &str, kind: &str) {
        self.query_errors
            .get_or_create(&QueryErrorLabels {
                signal: signal.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A signal's query succeeded with no series.
    pub fn query_empty(&self, signal: &str) {
        self.empty_results
            .get_or_create(&SignalLabel {
                signal: signal.to_string(),
            })
            .inc();
    }

    /// An anomaly opened on one of a signal's series.
    pub fn anomaly_opened(&self, signal: &str) {
        self.anomalies_opened
            .get_or_create(&SignalLabel {
                signal: signal.to_string(),
            })
            .inc();
    }

    /// Points of a signal's series beyond the caps were dropped.
    pub fn series_dropped(&self, signal: &str, points: usize) {
        self.series_dropped
            .get_or_create(&SignalLabel {
                signal: signal.to_string(),
            })
            .inc_by(points as u64);
    }

    /// A playbook answered an event with this result.
    pub fn playbook_run(&self, playbook: &str, result: PlaybookResult) {
        self.playbook_runs
            .get_or_create(&PlaybookRunLabels {
                playbook: playbook.to_string(),
                result,
            })
            .inc();
    }

    /// The active playbooks changed: `(name, sha256 of the loaded file)`.
    pub fn playbooks_active<'a>(&self, playbooks: impl IntoIterator<Item = (&'a str, &'a str)>) {
        self.playbook_info.clear();
        for (name, sha) in playbooks {
            self.playbook_info
                .get_or_create(&PlaybookInfoLabels {
                    playbook: name.to_string(),
                    sha256: sha.to_string(),
                })
                .set(1);
        }
    }

    /// The webhook answered a request.
    pub fn webhook_request(&self, result: WebhookResult) {
        self.webhook_requests
            .get_or_create(&WebhookLabels { result })
            .inc();
    }

    /// Alarm alerts delivered to Alertmanager.
    pub fn alarms_sent(&self, n: usize) {
        self.alarms
            .get_or_create(&AlarmLabels { result: "sent" })
            .inc_by(n as u64);
    }

    /// A batch of alarm alerts was not delivered (it is retried at the next re-send).
    pub fn alarm_send_failed(&self) {
        self.alarms
            .get_or_create(&AlarmLabels {
                result: "send_failed",
            })
            .inc();
    }

    /// An alarm event was dropped: the alarm task's queue was full.
    pub fn alarm_dropped(&self) {
        self.alarms
            .get_or_create(&AlarmLabels { result: "dropped" })
            .inc();
    }

    /// A playbook's circuit breaker opened (`true`) or was reset.
    pub fn breaker(&self, playbook: &str, open: bool) {
        self.breakers
            .get_or_create(&PlaybookLabel {
                playbook: playbook.to_string(),
            })
            .set(i64::from(open));
    }

    /// The kill switch was thrown (`true`) or released.
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(i64::from(paused));
    }

    /// A plan step ended.
    pub fn action(&self, kind: &str, outcome: &'static str) {
        self.actions
            .get_or_create(&ActionLabels {
                kind: kind.to_string(),
                outcome,
            })
            .inc();
    }

    /// The HTTP server's connections and rejections.
    pub fn http(&self) -> &HttpMetrics {
        &self.http
    }

    /// A tick completed: publishes its snapshot, and the agent is ready and alive.
    pub fn tick(&self, snapshot: Snapshot) {
        self.snapshot.send_replace(Arc::new(snapshot));
        self.ticks.inc();
        self.ready.set(1);
        self.alive();
    }

    /// The loop made progress (it is not stalled).
    pub fn alive(&self) {
        *self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Health follows this audit log: a failed write makes the agent unhealthy (it stops
    /// acting, and exits at its next wake-up).
    pub fn watch_audit(&self, failure: AuditFailure) {
        let _ = self.audit.set(failure);
    }

    /// Why the audit log takes no more records, if it failed.
    pub fn audit_failure(&self) -> Option<String> {
        self.audit.get()?.reason().map(str::to_string)
    }

    /// Whether history is fitted and the first tick has run.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// `Err(silence)` when the loop has made no progress for longer than the liveness window.
    pub fn liveness(&self) -> Result<(), Duration> {
        let last = *self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match last.elapsed() {
            silence if silence > self.liveness_window => Err(silence),
            _ => Ok(()),
        }
    }

    /// The latest tick's snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Which of the server's time limits closed a connection (the `limit` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpTimeout {
    /// The request's head did not arrive in time (a slowloris, or a silent client).
    Header,
    /// The handler did not answer in time (408).
    Request,
    /// The client did not read the answer in time.
    Response,
    /// A kept-alive connection waited too long for its next request.
    Idle,
}

/// Why the server refused a request before its handler ran (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpRejection {
    /// No bearer token, or a wrong one (401).
    Unauthorized,
    /// Not `Content-Type: application/json` (415).
    UnsupportedMediaType,
    /// A body over the cap (413).
    TooLarge,
}

label_value!(HttpTimeout { Header => "header", Request => "request", Response => "response", Idle => "idle" });
label_value!(HttpRejection {
    Unauthorized => "unauthorized",
    UnsupportedMediaType => "unsupported_media_type",
    TooLarge => "too_large",
});

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TimeoutLabel {
    limit: HttpTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabel {
    reason: HttpRejection,
}

/// The HTTP server's own metrics: what its limits did.
#[derive(Debug)]
pub struct HttpMetrics {
    open: Gauge,
    refused: Counter,
    timeouts: Family<TimeoutLabel, Counter>,
    rejected: Family<RejectionLabel, Counter>,
}

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let m = HttpMetrics {
            open: Gauge::default(),
            refused: Counter::default(),
            timeouts: Family::default(),
            rejected: Family::default(),
        };
        registry.register(
            "homeostat_http_connections",
            "HTTP connections open now",
            m.open.clone(),
        );
        registry.register(
            "homeostat_http_connections_refused",
            "HTTP connections closed at once because the connection cap was reached",
            m.refused.clone(),
        );
        registry.register(
            "homeostat_http_timeouts",
            "HTTP connections closed (or requests answered 408) by a time limit",
            m.timeouts.clone(),
        );
        registry.register(
            "homeostat_http_rejected",
            "HTTP requests refused before their handler ran",
            m.rejected.clone(),
        );
        m
    }

    /// A connection was accepted and is being served.
    pub fn connection_opened(&self) {
        self.open.inc();
    }

    /// A served connection ended.
    pub fn connection_closed(&self) {
        self.open.dec();
    }

    /// A connection was closed at once: the cap was reached.
    pub fn connection_refused(&self) {
        self.refused.inc();
    }

    /// A time limit ran out.
    pub fn timed_out(&self, limit: HttpTimeout) {
        self.timeouts.get_or_create(&TimeoutLabel { limit }).inc();
    }

    /// A request was refused before its handler ran.
    pub fn rejected(&self, reason: HttpRejection) {
        self.rejected
            .get_or_create(&RejectionLabel { reason })
            .inc();
    }
}

/// Encodes the latest snapshot at scrape time.
#[derive(Debug)]
struct SnapshotCollector(watch::Receiver<Arc<Snapshot>>);

/// Reads one per-series gauge's value.
type Getter = fn(&SeriesGauge) -> f64;

/// The per-series gauges: name, help (ended with a period, as the registry ends its
/// own), value.
const PER_SERIES: [(&str, &str, Getter); 6] = [
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

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.0.borrow().clone();
        let mut m = encoder.encode_descriptor(
            "homeostat_audit_records",
            "Audit records written by this process.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&snap.audit_records, None)?;
        let mut m = encoder.encode_descriptor(
            "homeostat_signal_up",
            "1 when the signal's latest query returned data.",
            None,
            MetricType::Gauge,
        )?;
        for (signal, h) in &snap.signals {
            m.encode_family(&[("signal", signal.as_str())])?
                .encode_gauge(&i64::from(h.up))?;
        }
        let mut m = encoder.encode_descriptor(
            "homeostat_series",
            "Series tracked per signal.",
            None,
            MetricType::Gauge,
        )?;
        for (signal, h) in &snap.signals {
            m.encode_family(&[("signal", signal.as_str())])?
                .encode_gauge(&(h.series as u64))?;
        }
        for (name, help, get) in PER_SERIES {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for g in &snap.series {
                let v = get(g);
                // A band that does not exist yet (warm-up) is left out rather than exported as NaN.
                if v.is_nan() {
                    continue;
                }
                m.encode_family(&series_labels(g))?.encode_gauge(&v)?;
            }
        }
        Ok(())
    }
}

/// `signal="…"` and the series' labels, renaming labels that would clash or are reserved.
/// The labels come from the watched store (or a hostile Alertmanager client), so a name
/// is made a valid Prometheus label name ([`label_name`]) and one that clashes with an
/// earlier one is prefixed `exported_` until it does not: invalid or duplicate names
/// would make the whole scrape fail.
fn series_labels(g: &SeriesGauge) -> Vec<(Cow<'_, str>, &str)> {
    let mut labels: Vec<(Cow<'_, str>, &str)> = Vec::with_capacity(g.labels.0.len() + 1);
    labels.push((Cow::Borrowed("signal"), g.signal.as_str()));
    for (k, v) in &g.labels.0 {
        let mut name = match k.as_str() {
            "__name__" => Cow::Borrowed("series_name"),
            "signal" => Cow::Borrowed("exported_signal"),
            other => label_name(other),
        };
        while labels.iter().any(|(used, _)| *used == name) {
            name = Cow::Owned(format!("exported_{name}"));
        }
        labels.push((name, v.as_str()));
    }
    labels
}

/// `name` as a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`): every other character
/// becomes `_`, and a leading digit (or an empty name) gets a `_` in front.
fn label_name(name: &str) -> Cow<'_, str> {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let prefix = name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit());
    if !prefix && name.chars().all(valid) {
        return Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 1);
    if prefix {
        out.push('_');
    }
    out.extend(name.chars().map(|c| if valid(c) { c } else { '_' }));
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(labels: Labels, score: f64, lower: f64) -> SeriesGauge {
        SeriesGauge {
            signal: "lat".into(),
            labels,
            value: 1.5,
            score,
            lower,
            upper: 2.0,
            open: true,
            stale: false,
        }
    }

    #[test]
    fn series_gauges_rename_reserved_labels_escape_values_and_skip_nan() {
        let m = Metrics::new(Duration::from_secs(60));
        m.tick(Snapshot {
            series: vec![gauge(
                Labels::from_pairs([("__name__", "x"), ("signal", "s"), ("pod", "a\"b")]),
                7.0,
                f64::NAN,
            )],
            ..Snapshot::default()
        });
        let out = m.encode();
        assert!(
            out.contains("homeostat_anomaly_score{signal=\"lat\",series_name=\"x\",pod=\"a\\\"b\",exported_signal=\"s\"} 7.0\n"),
            "{out}"
        );
        assert!(
            out.contains("homeostat_anomaly_open{signal=\"lat\""),
            "{out}"
        );
        assert!(
            !out.contains("homeostat_expected_lower{"),
            "NaN band must be left out: {out}"
        );
        assert!(out.contains("homeostat_ready 1\n"), "{out}");
        assert!(out.contains("homeostat_ticks_total 1\n"), "{out}");
    }

    #[test]
    fn label_names_are_made_valid_and_unique_and_values_escaped() {
        let m = Metrics::new(Duration::from_secs(60));
        m.tick(Snapshot {
            series: vec![gauge(
                Labels::from_pairs([
                    ("a\n} 1\nevil{x", "v\n\\\""),
                    ("1st", "b"),
                    ("", "c"),
                    ("a_b", "d"),
                    ("a-b", "e"),
                    ("pöd", "f"),
                ]),
                7.0,
                0.0,
            )],
            ..Snapshot::default()
        });
        let out = m.encode();
        let line = out
            .lines()
            .find(|l| l.starts_with("homeostat_anomaly_score{"))
            .unwrap_or_else(|| panic!("no score in {out}"));
        // Sorted, "a-b" comes before "a_b": it takes the name, the other is exported.
        for label in [
            r#"_="c""#,
            r#"_1st="b""#,
            r#"a_b="e""#,
            r#"exported_a_b="d""#,
            r#"a___1_evil_x="v\n\\\"""#,
            r#"p_d="f""#,
        ] {
            assert!(line.contains(label), "{label} in {line}");
        }
        let name = regex::Regex::new(r"^[a-zA-Z_][a-zA-Z0-9_]*$").unwrap();
        let set = line.split_once('{').unwrap().1.rsplit_once('}').unwrap().0;
        for pair in set.split("\",") {
            let key = pair.split_once('=').unwrap().0;
            assert!(name.is_match(key), "{key:?} in {line}");
        }
        assert!(!out.contains("evil{"), "{out}");
    }

    #[test]
    fn a_series_gone_from_the_snapshot_is_gone_from_the_next_scrape() {
        let m = Metrics::new(Duration::from_secs(60));
        let pod = |p: &str| Labels::from_pairs([("pod", p)]);
        m.tick(Snapshot {
            series: vec![gauge(pod("a"), 0.5, 0.0), gauge(pod("b"), 0.5, 0.0)],
            ..Snapshot::default()
        });
        assert!(m.encode().contains("pod=\"b\""));
        m.tick(Snapshot {
            series: vec![gauge(pod("a"), 0.5, 0.0)],
            ..Snapshot::default()
        });
        let out = m.encode();
        assert!(
            out.contains("pod=\"a\"") && !out.contains("pod=\"b\""),
            "{out}"
        );
        assert!(out.contains("homeostat_ticks_total 2\n"), "{out}");
    }

    #[test]
    fn typed_counters_carry_their_labels() {
        let m = Metrics::new(Duration::from_secs(60));
        m.playbook_run("restart", PlaybookResult::Planned);
        m.playbook_run("restart", PlaybookResult::Planned);
        m.playbook_run("restart", PlaybookResult::Suppressed);
        m.query_failed("lat", "request");
        m.webhook_request(WebhookResult::Busy);
        m.playbooks_active([("restart", "abc")]);
        m.playbooks_active([("restart", "def")]);
        let out = m.encode();
        for line in [
            "homeostat_playbook_runs_total{playbook=\"restart\",result=\"planned\"} 2\n",
            "homeostat_playbook_runs_total{playbook=\"restart\",result=\"suppressed\"} 1\n",
            "homeostat_query_errors_total{signal=\"lat\",kind=\"request\"} 1\n",
            "homeostat_webhook_requests_total{result=\"busy\"} 1\n",
            "homeostat_playbook_info{playbook=\"restart\",sha256=\"def\"} 1\n",
            "# TYPE homeostat_audit_records_total counter\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(
            !out.contains("sha256=\"abc\""),
            "a replaced version stays: {out}"
        );
        assert!(
            out.contains("\nhomeostat_ready 0\n"),
            "not ready before a tick: {out}"
        );
    }

    #[tokio::test]
    async fn a_failed_audit_write_shows_in_health() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.jsonl");
        let audit = crate::audit::Auditor::new(crate::audit::AuditLog::open(&log).unwrap());
        let m = Metrics::new(Duration::from_secs(60));
        m.watch_audit(audit.failure());
        assert_eq!(m.audit_failure(), None);
        // The head cannot be replaced: the write after the record's line fails.
        std::fs::create_dir(dir.path().join("audit.jsonl.head.tmp")).unwrap();
        let stopped = crate::audit::Event::AgentStopped(crate::audit::AgentStopped::default());
        assert!(audit.record(stopped).await.is_err());
        let reason = m.audit_failure().expect("the failure is seen");
        assert!(reason.contains("head"), "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_counts_as_stalled_only_after_its_liveness_window() {
        let m = Metrics::new(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(m.liveness(), Ok(()));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(m.liveness(), Err(Duration::from_secs(61)));
        m.alive();
        assert_eq!(m.liveness(), Ok(()));
    }
}
