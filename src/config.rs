//! The agent's configuration: typed structs, named defaults, and a loader that reports
//! every problem at once, each with its path (`signals[2].query: must not be empty`).
//!
//! The file is TOML. It is read into a generic table first and then walked field by
//! field, so that one bad field does not hide the next: serde's derive stops at the
//! first error, which would make an SRE fix a config one mistake per run.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::{Table, Value};

/// Which deviations from the baseline count as anomalous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Only values above the expected band.
    Up,
    /// Only values below the expected band.
    Down,
    /// Both.
    Both,
}

/// Whether surprises that keep coming become the series' routine (ensemble).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Repeats {
    /// Surprises that recur, no larger than the earlier ones, are as likely as their
    /// rate, and one at the same time of day on the previous days is a habit: a bursty
    /// source or a nightly job stops alarming.
    #[default]
    Routine,
    /// Every surprise alarms, however often it came before: the signal's recurring
    /// spikes are incidents each time (OOM kills, crash loops, a flapping link).
    Alarm,
}

/// The whole configuration, validated.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where metrics are read from.
    pub prometheus: PrometheusConfig,
    /// How the daemon runs.
    pub agent: AgentConfig,
    /// Detection defaults, which each signal may override.
    pub detection: DetectionConfig,
    /// Playbook files, resolved against the config file's directory.
    pub playbooks: Vec<PathBuf>,
    /// The PromQL signals to watch.
    pub signals: Vec<SignalConfig>,
    /// The HTTP server: who may post, and how long and how many connections it keeps.
    pub api: ApiConfig,
    /// `[kubernetes]`: the cluster `k8s.*` actions and reads go to (absent: none).
    pub kubernetes: Option<crate::act::k8s::Settings>,
    /// `[openstack]`: the cloud `openstack.*` actions and reads go to (absent: none).
    pub openstack: Option<crate::act::openstack::Settings>,
    /// `[notify]`: Alertmanager for alarms and `notify.alertmanager`, and webhooks.
    pub notify: crate::act::notify::Settings,
    /// `[guardrails]`: rate limits, concurrency, breaker, healthy floor, kill switch.
    pub guardrails: crate::act::guard::Settings,
}

/// The Prometheus-API store to query (Prometheus, Thanos, Mimir, VictoriaMetrics).
#[derive(Debug, Clone, Serialize)]
pub struct PrometheusConfig {
    /// Base URL, e.g. `http://127.0.0.1:9090`.
    pub url: String,
    /// Timeout of one HTTP request.
    #[serde(with = "humantime_serde_str")]
    pub timeout: Duration,
}

/// How the daemon runs.
#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    /// How often every signal is queried.
    #[serde(with = "humantime_serde_str")]
    pub interval: Duration,
    /// Address of the HTTP server (`/metrics`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// The audit log file, resolved against the config file's directory.
    pub audit_log: PathBuf,
    /// A series absent from results for this long is forgotten.
    #[serde(with = "humantime_serde_str")]
    pub series_ttl: Duration,
    /// The longest wait between retries of a failing signal query.
    #[serde(with = "humantime_serde_str")]
    pub max_backoff: Duration,
    /// Wall-clock limit of one playbook run.
    #[serde(with = "humantime_serde_str")]
    pub playbook_timeout: Duration,
    /// Where fitted models are saved, resolved against the config file's directory.
    pub models_dir: PathBuf,
    /// How often models are saved while running (and always at shutdown).
    #[serde(with = "humantime_serde_str")]
    pub models_save_every: Duration,
    /// Series tracked per signal at most; points of further series are dropped and counted.
    pub max_series_per_signal: usize,
    /// Series tracked over all signals at most (about 3 KiB each).
    pub max_series: usize,
    /// The audit log is sealed and a new file linked to it once it is this large.
    pub audit_max_bytes: u64,
    /// An Ed25519 key (`homeostat audit keygen`): when set, the agent signs a
    /// checkpoint at every rotation and at every clean stop.
    pub audit_signing_key: Option<PathBuf>,
    /// The most any playbook may do (`dry-run` < `approval` < `auto`): a playbook's
    /// mode is capped by it, so a new installation acts only once an SRE says so.
    pub mode: crate::playbook::Mode,
    /// Anomalies opening within this long of each other on series sharing one of
    /// `incident_labels` are one incident: each playbook runs once for it.
    #[serde(with = "humantime_serde_str")]
    pub incident_window: Duration,
    /// The labels that name what a series measures (empty: no grouping).
    pub incident_labels: Vec<String>,
}

/// Detection parameters: the defaults in `[detection]`, or one signal's resolved set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectionConfig {
    /// How far back the baseline is fitted from at start.
    #[serde(with = "humantime_serde_str")]
    pub history: Duration,
    /// Resolution of the history range query.
    #[serde(with = "humantime_serde_str")]
    pub history_step: Duration,
    /// Points in the rolling window of the robust baseline.
    pub window: usize,
    /// Score above which a point is anomalous: for `ensemble` a likelihood in (0, 1)
    /// (0.999: a tail probability of 1 in 1,000), for `robust` a robust z-score.
    pub threshold: f64,
    /// What the ensemble's tail probability is counted per: `None` per point, or per this
    /// much time (a stricter count: the ensemble's memories already run in time).
    #[serde(with = "threshold_per_str")]
    pub threshold_per: Option<Duration>,
    /// Consecutive anomalous points that open an anomaly.
    pub open_after: u32,
    /// Consecutive normal points that close it.
    pub close_after: u32,
    /// Absolute floor of the spread, so flat series don't alarm on tiny wiggles.
    pub min_spread: f64,
    /// Floor of the spread relative to the level (|median|), for the same reason.
    pub min_relative_spread: f64,
    /// A point alarms only this far (in the signal's units) from the expected value, on a
    /// side the signal cares about, however unusual it is: "not below 5 points of CPU".
    pub min_deviation: f64,
    /// A point alarms only this fraction of |expected| away, or more (with `min_deviation`,
    /// the larger of the two applies).
    pub min_relative_deviation: f64,
    /// Which deviations count.
    pub direction: Direction,
    /// Points a new series is watched before it may alarm (ensemble).
    pub warmup: u32,
    /// Whether recurring surprises become routine (ensemble).
    pub repeats: Repeats,
    /// Which baseline scores points: `ensemble` (default: streaming statistics, a daily
    /// profile, change points and k-means, calibrated to a likelihood in [0, 1]) or
    /// `robust` (rolling median/MAD, score = robust z).
    pub engine: Engine,
}

/// The baseline behind a signal's scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Rolling median and MAD; the score is a robust z-score.
    Robust,
    /// Several streaming statistics, each calibrated, combined to a likelihood in [0, 1].
    Ensemble,
}

/// One watched signal: a PromQL query whose every result series gets a baseline.
#[derive(Debug, Clone, Serialize)]
pub struct SignalConfig {
    /// Unique name, used in metrics, playbook triggers and the audit log.
    pub name: String,
    /// The PromQL expression, evaluated as an instant query every interval.
    pub query: String,
    /// The detection parameters for this signal (defaults merged with overrides).
    pub detection: DetectionConfig,
    /// Whether each anomaly that opens is sent to Alertmanager as an alarm (when
    /// `[notify] alertmanager_url` is set).
    pub alert: bool,
    /// The alarm's `severity` label.
    pub severity: String,
    /// Which of its series have per-series gauges on `/metrics`.
    pub export: Export,
}

/// Which series of a signal have per-series gauges (score, band, value, ...) on
/// `/metrics`: each is six samples per scrape, so a signal of tens of thousands of
/// series may keep only those that matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Export {
    /// Every series it tracks.
    #[default]
    All,
    /// Only series while an anomaly is open on them.
    Open,
    /// None (the signal's health gauges stay).
    #[serde(rename = "none")]
    Off,
}

/// Default request timeout for Prometheus.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Default query interval.
pub fn default_interval() -> Duration {
    Duration::from_secs(15)
}
/// Default listen address: loopback, a port outside the usual exporter range.
pub fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9184))
}
/// Default audit log path.
pub fn default_audit_log() -> PathBuf {
    PathBuf::from("audit/homeostat-audit.jsonl")
}
/// Default time before an absent series is forgotten.
pub fn default_series_ttl() -> Duration {
    Duration::from_secs(600)
}
/// Default ceiling of the retry backoff.
pub fn default_max_backoff() -> Duration {
    Duration::from_secs(120)
}
/// Default directory of saved models.
pub fn default_models_dir() -> PathBuf {
    PathBuf::from("models")
}
/// Default interval between model saves.
pub fn default_models_save_every() -> Duration {
    Duration::from_secs(300)
}
/// Default cap on one signal's series: a label that explodes (a request id in a label)
/// must not take the agent's memory with it.
pub fn default_max_series_per_signal() -> usize {
    20_000
}
/// Default cap on all series: with the ensemble's ~3 KiB per series and the maps around
/// it, well within 1 GiB.
pub fn default_max_series() -> usize {
    100_000
}
/// Default reach of incident grouping: a machine's metrics going wrong together open
/// within a few query intervals of each other.
pub const DEFAULT_INCIDENT_WINDOW: Duration = Duration::from_secs(300);
/// Default labels that name what a series measures.
pub fn default_incident_labels() -> Vec<String> {
    crate::detect::group::IDENTIFYING.map(String::from).to_vec()
}
/// Default size at which the audit log rotates: 256 MiB, read back in seconds at start.
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 256 << 20;

/// Default wall-clock limit of one playbook run.
pub fn default_playbook_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Upper bounds of the config's durations and numbers. Past them a value is surely a
/// mistake (a unit typed wrong), and the agent's arithmetic on it (`interval * 3`,
/// `now + backoff`, its timers) could overflow; `check` lists each value out of range
/// with its path.
pub mod bounds {
    use std::time::Duration;

    const MINUTE: Duration = Duration::from_secs(60);
    const DAY: Duration = Duration::from_secs(86_400);

    /// `prometheus.timeout`.
    pub const TIMEOUT: Duration = MINUTE.saturating_mul(10);
    /// `agent.interval`.
    pub const INTERVAL: Duration = DAY;
    /// Longest `agent.incident_window`.
    pub const INCIDENT_WINDOW: Duration = DAY;
    /// `agent.series_ttl`.
    pub const SERIES_TTL: Duration = DAY.saturating_mul(30);
    /// `agent.max_backoff`.
    pub const MAX_BACKOFF: Duration = DAY;
    /// `agent.playbook_timeout`.
    pub const PLAYBOOK_TIMEOUT: Duration = MINUTE.saturating_mul(10);
    /// `agent.models_save_every`.
    pub const MODELS_SAVE_EVERY: Duration = DAY.saturating_mul(7);
    /// `detection.history`.
    pub const HISTORY: Duration = DAY.saturating_mul(90);
    /// `detection.history_step`.
    pub const HISTORY_STEP: Duration = DAY;
    /// `detection.threshold_per`.
    pub const THRESHOLD_PER: Duration = DAY;
    /// `detection.window`, in points.
    pub const WINDOW: i64 = 100_000;
    /// `agent.max_series_per_signal` and `agent.max_series`: far beyond any host's memory
    /// at ~3 KiB a series, so only a typo is refused.
    pub const SERIES: i64 = 100_000_000;
    /// `api.max_body_bytes`: a webhook body is held whole in memory.
    pub const BODY_BYTES: i64 = 1 << 30;
    /// `detection.open_after` and `detection.close_after`, in points.
    pub const RUN: i64 = 100_000;
    /// `detection.warmup`, in steps.
    pub const WARMUP: i64 = 100_000;
    /// `detection.threshold` of the `robust` engine, a robust z-score.
    pub const ROBUST_THRESHOLD: f64 = 1_000.0;
    /// `detection.min_spread` and `detection.min_deviation`, in the signal's units.
    pub const ABSOLUTE: f64 = 1e18;
    /// `detection.min_relative_spread` and `detection.min_relative_deviation`.
    pub const RELATIVE: f64 = 1_000.0;
}

impl Default for DetectionConfig {
    fn default() -> Self {
        let engine = Engine::Ensemble;
        let (threshold, open_after, close_after) = engine.defaults();
        DetectionConfig {
            // A week: a daily series is judged on its values alone until its daily profile
            // and the residuals' tail models are trained; before that, each day's rise is
            // a surprise (docs/engine.md, "How much history", has the figures). Five minutes
            // is the engine's own step: the week costs fewer points (2,016) than two days
            // at a minute did (2,880).
            history: Duration::from_secs(7 * 86_400),
            history_step: Duration::from_secs(300),
            window: 240,
            threshold,
            // Per point, as NAB and most benchmarks count; `"5m"` is the advice for
            // fast query intervals (see docs/engine.md).
            threshold_per: None,
            open_after,
            close_after,
            min_spread: 0.0,
            min_relative_spread: 0.001,
            // Off: how far is far enough is the operator's call, per signal.
            min_deviation: 0.0,
            min_relative_deviation: 0.0,
            direction: Direction::Both,
            warmup: 64,
            repeats: Repeats::Routine,
            engine,
        }
    }
}

impl Engine {
    /// The engine's own `(threshold, open_after, close_after)`: its scores mean different things.
    pub fn defaults(self) -> (f64, u32, u32) {
        match self {
            // The likelihood is already smoothed and calibrated: one point is evidence
            // enough; staying open for 30 quiet points keeps one incident one incident.
            Engine::Ensemble => (0.999, 1, 30),
            Engine::Robust => (6.0, 3, 5),
        }
    }
}

/// Everything wrong with a config file, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// Each problem, prefixed with the file and the field's path.
    pub problems: Vec<String>,
}

impl Config {
    /// Reads and validates a config file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("{}: cannot read: {e}", path.display())],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|problems| ConfigError {
            problems: problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        })
    }

    /// Parses and validates config text; returns every problem found, each with its path.
    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<String>> {
        Config::parse_with_env(text, base, &|name| std::env::var(name).ok())
    }

    /// [`Config::parse`] with the environment given (`HOMEOSTAT_API_TOKEN` is read from it).
    pub fn parse_with_env(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        let root: Table = toml::from_str(text).map_err(|e| vec![format!("syntax: {e}")])?;
        let mut w = Walker::default();
        w.known(
            &root,
            "",
            &[
                "prometheus",
                "agent",
                "detection",
                "playbooks",
                "signals",
                "api",
                "kubernetes",
                "openstack",
                "notify",
                "guardrails",
            ],
        );

        let prometheus = {
            let t = w.table(&root, "", "prometheus", true);
            w.known(&t, "prometheus", &["url", "timeout"]);
            let url = w.string(&t, "prometheus", "url").unwrap_or_default();
            if !url.is_empty() {
                match reqwest::Url::parse(&url) {
                    Ok(u) if u.scheme() == "http" => {}
                    // TLS is kept out of the build for now (the stacks are heavy): say so
                    // here rather than fail at run time.
                    Ok(u) if u.scheme() == "https" => w.err(
                        "prometheus.url",
                        "https is not supported by this build yet: use http, e.g. through a local TLS-terminating proxy",
                    ),
                    Ok(u) => w.err("prometheus.url", format!("scheme {:?} is not http", u.scheme())),
                    Err(e) => w.err("prometheus.url", format!("not a URL: {e}")),
                }
            } else if t.contains_key("url") {
                w.err("prometheus.url", "must not be empty");
            }
            let timeout = w
                .duration(&t, "prometheus", "timeout", bounds::TIMEOUT)
                .unwrap_or_else(default_timeout);
            PrometheusConfig { url, timeout }
        };

        let agent = {
            let t = w.table(&root, "", "agent", false);
            w.known(
                &t,
                "agent",
                &[
                    "interval",
                    "listen",
                    "audit_log",
                    "series_ttl",
                    "max_backoff",
                    "playbook_timeout",
                    "models_dir",
                    "models_save_every",
                    "max_series_per_signal",
                    "max_series",
                    "mode",
                    "audit_max_bytes",
                    "audit_signing_key",
                    "incident_window",
                    "incident_labels",
                ],
            );
            let incident_labels = match t.get("incident_labels") {
                None => default_incident_labels(),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, v)| match v.as_str() {
                        Some(s) if is_identifier(s) => Some(s.to_string()),
                        _ => {
                            w.err(
                                &format!("agent.incident_labels[{i}]"),
                                format!("{v} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"),
                            );
                            None
                        }
                    })
                    .collect(),
                Some(other) => {
                    w.err(
                        "agent.incident_labels",
                        format!(
                            "expected an array of label names, found {}",
                            other.type_str()
                        ),
                    );
                    default_incident_labels()
                }
            };
            use crate::playbook::Mode;
            let mode = w
                .keyword(
                    &t,
                    "agent",
                    "mode",
                    &[
                        ("dry-run", Mode::DryRun),
                        ("approval", Mode::Approval),
                        ("auto", Mode::Auto),
                    ],
                )
                .unwrap_or(Mode::DryRun);
            let listen = match w.opt_string(&t, "agent", "listen") {
                Some(s) => s.parse().unwrap_or_else(|e| {
                    w.err(
                        "agent.listen",
                        format!("{s:?} is not an address like 127.0.0.1:9184: {e}"),
                    );
                    default_listen()
                }),
                None => default_listen(),
            };
            AgentConfig {
                interval: w
                    .duration(&t, "agent", "interval", bounds::INTERVAL)
                    .unwrap_or_else(default_interval),
                listen,
                audit_log: base.join(
                    w.opt_string(&t, "agent", "audit_log")
                        .map(PathBuf::from)
                        .unwrap_or_else(default_audit_log),
                ),
                series_ttl: w
                    .duration(&t, "agent", "series_ttl", bounds::SERIES_TTL)
                    .unwrap_or_else(default_series_ttl),
                max_backoff: w
                    .duration(&t, "agent", "max_backoff", bounds::MAX_BACKOFF)
                    .unwrap_or_else(default_max_backoff),
                playbook_timeout: w
                    .duration(&t, "agent", "playbook_timeout", bounds::PLAYBOOK_TIMEOUT)
                    .unwrap_or_else(default_playbook_timeout),
                models_dir: base.join(
                    w.opt_string(&t, "agent", "models_dir")
                        .map(PathBuf::from)
                        .unwrap_or_else(default_models_dir),
                ),
                models_save_every: w
                    .duration(&t, "agent", "models_save_every", bounds::MODELS_SAVE_EVERY)
                    .unwrap_or_else(default_models_save_every),
                max_series_per_signal: w
                    .count(&t, "agent", "max_series_per_signal", 1, bounds::SERIES)
                    .map_or_else(default_max_series_per_signal, |n| n as usize),
                max_series: w
                    .count(&t, "agent", "max_series", 1, bounds::SERIES)
                    .map_or_else(default_max_series, |n| n as usize),
                mode,
                audit_max_bytes: w
                    .count(&t, "agent", "audit_max_bytes", 1 << 16, 1 << 40)
                    .map_or(DEFAULT_AUDIT_MAX_BYTES, |n| n as u64),
                audit_signing_key: w
                    .opt_string(&t, "agent", "audit_signing_key")
                    .map(|f| base.join(f)),
                incident_window: w
                    .duration(&t, "agent", "incident_window", bounds::INCIDENT_WINDOW)
                    .unwrap_or(DEFAULT_INCIDENT_WINDOW),
                incident_labels,
            }
        };

        let detection = {
            let t = w.table(&root, "", "detection", false);
            w.known(&t, "detection", DETECTION_KEYS);
            w.detection(&t, "detection", &DetectionConfig::default(), true)
        };

        let api = w.api(&root, base, agent.listen, env);
        let kubernetes = w.kubernetes(&root, base);
        let openstack = w.openstack(&root, base);
        let notify = w.notify(&root);
        let guardrails = w.guardrails(&root, base, &agent.audit_log);

        let playbooks = match root.get("playbooks") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match v {
                    Value::String(s) if !s.is_empty() => Some(base.join(s)),
                    _ => {
                        w.err(
                            &format!("playbooks[{i}]"),
                            "must be a non-empty path string",
                        );
                        None
                    }
                })
                .collect(),
            Some(_) => {
                w.err("playbooks", "must be an array of paths");
                Vec::new()
            }
        };

        let mut signals = Vec::new();
        match root.get("signals") {
            None => w.err("signals", "at least one [[signals]] entry is required"),
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    w.err("signals", "at least one [[signals]] entry is required");
                }
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let path = format!("signals[{i}]");
                    let Value::Table(t) = item else {
                        w.err(&path, "must be a table");
                        continue;
                    };
                    let mut keys = vec!["name", "query", "alert", "severity", "export"];
                    keys.extend_from_slice(DETECTION_KEYS);
                    w.known(t, &path, &keys);
                    let name = w.string(t, &path, "name").unwrap_or_default();
                    if t.contains_key("name") && !is_identifier(&name) {
                        w.err(
                            &format!("{path}.name"),
                            format!("{name:?} must match [a-zA-Z_][a-zA-Z0-9_]*"),
                        );
                    } else if !name.is_empty() && !seen.insert(name.clone()) {
                        w.err(
                            &format!("{path}.name"),
                            format!("{name:?} is used by an earlier signal"),
                        );
                    }
                    let query = w.string(t, &path, "query").unwrap_or_default();
                    if t.contains_key("query") {
                        if let Err(e) = check_promql_shape(&query) {
                            w.err(&format!("{path}.query"), e);
                        }
                    }
                    let detection = w.detection(t, &path, &detection, false);
                    let alert = match t.get("alert") {
                        None => true,
                        Some(Value::Boolean(b)) => *b,
                        Some(other) => {
                            w.err(
                                &format!("{path}.alert"),
                                format!("expected true or false, found {}", other.type_str()),
                            );
                            true
                        }
                    };
                    let severity = w
                        .opt_string(t, &path, "severity")
                        .unwrap_or_else(|| "warning".into());
                    if !is_label_value(&severity) {
                        w.err(
                            &format!("{path}.severity"),
                            format!("{severity:?} must be 1 to 64 characters of [a-zA-Z0-9_-]"),
                        );
                    }
                    let export = w
                        .keyword(
                            t,
                            &path,
                            "export",
                            &[
                                ("all", Export::All),
                                ("open", Export::Open),
                                ("none", Export::Off),
                            ],
                        )
                        .unwrap_or_default();
                    signals.push(SignalConfig {
                        name,
                        query,
                        detection,
                        alert,
                        severity,
                        export,
                    });
                }
            }
            Some(_) => w.err("signals", "must be an array of tables ([[signals]])"),
        }

        if w.problems.is_empty() {
            Ok(Config {
                prometheus,
                agent,
                detection,
                playbooks,
                signals,
                api,
                kubernetes,
                openstack,
                notify,
                guardrails,
            })
        } else {
            Err(w.problems)
        }
    }
}

const DETECTION_KEYS: &[&str] = &[
    "history",
    "history_step",
    "window",
    "threshold",
    "threshold_per",
    "open_after",
    "close_after",
    "min_spread",
    "min_relative_spread",
    "min_deviation",
    "min_relative_deviation",
    "direction",
    "repeats",
    "warmup",
    "engine",
];

fn is_label_value(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A local sanity check of a PromQL expression: non-empty, balanced brackets and
/// closed quotes. Prometheus itself is the judge of the rest, at run time.
pub fn check_promql_shape(q: &str) -> Result<(), String> {
    if q.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let mut stack = Vec::new();
    let mut chars = q.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => loop {
                match chars.next() {
                    None => return Err(format!("unterminated string (opened with {c})")),
                    Some('\\') if c != '`' => {
                        chars.next();
                    }
                    Some(d) if d == c => break,
                    Some(_) => {}
                }
            },
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return Err(format!("unbalanced {c:?}"));
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some(open) => Err(format!("unclosed {open:?}")),
        None => Ok(()),
    }
}

/// The problem of a duration `written` longer than `max` (whole minutes or days, as
/// the bounds are: humantime would write 90 days in months).
fn too_long(written: &str, max: Duration) -> String {
    let secs = max.as_secs();
    let max = match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    format!("{written:?} is too long: at most {max}")
}

/// Walks a TOML table, collecting every problem rather than stopping at the first.
#[derive(Default)]
struct Walker {
    problems: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Walker {
    fn err(&mut self, path: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{path}: {msg}"));
    }

    fn known(&mut self, t: &Table, path: &str, keys: &[&str]) {
        for k in t.keys() {
            if !keys.contains(&k.as_str()) {
                self.err(
                    &join(path, k),
                    format!("unknown field (expected one of: {})", keys.join(", ")),
                );
            }
        }
    }

    fn table(&mut self, root: &Table, path: &str, key: &str, required: bool) -> Table {
        match root.get(key) {
            Some(Value::Table(t)) => t.clone(),
            Some(_) => {
                self.err(&join(path, key), "must be a table");
                Table::new()
            }
            None => {
                if required {
                    self.err(&join(path, key), format!("missing section [{key}]"));
                }
                Table::new()
            }
        }
    }

    fn string(&mut self, t: &Table, path: &str, key: &str) -> Option<String> {
        if !t.contains_key(key) {
            self.err(&join(path, key), "missing required field");
            return None;
        }
        self.opt_string(t, path, key)
    }

    /// The value of one of a few keywords, if `key` is set: `None` (and the problem
    /// recorded) for any other.
    fn keyword<T: Copy>(
        &mut self,
        t: &Table,
        path: &str,
        key: &str,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let s = self.opt_string(t, path, key)?;
        let found = choices.iter().find(|(name, _)| *name == s).map(|c| c.1);
        if found.is_none() {
            let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
            self.err(
                &join(path, key),
                format!("{s:?} is not one of {}", names.join(", ")),
            );
        }
        found
    }

    fn opt_string(&mut self, t: &Table, path: &str, key: &str) -> Option<String> {
        match t.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(
                    &join(path, key),
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, t: &Table, path: &str, key: &str, max: Duration) -> Option<Duration> {
        let s = self.opt_string(t, path, key)?;
        match humantime::parse_duration(&s) {
            Ok(d) if d > max => {
                self.err(&join(path, key), too_long(&s, max));
                None
            }
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.err(&join(path, key), "must be greater than zero");
                None
            }
            Err(e) => {
                self.err(
                    &join(path, key),
                    format!("{s:?} is not a duration like \"15s\" or \"5m\": {e}"),
                );
                None
            }
        }
    }

    fn float(&mut self, t: &Table, path: &str, key: &str) -> Option<f64> {
        match t.get(key)? {
            Value::Float(f) if f.is_finite() => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            other => {
                self.err(
                    &join(path, key),
                    format!("expected a finite number, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn count(&mut self, t: &Table, path: &str, key: &str, min: i64, max: i64) -> Option<i64> {
        match t.get(key)? {
            Value::Integer(i) if (min..=max).contains(i) => Some(*i),
            Value::Integer(i) if *i < min => {
                self.err(
                    &join(path, key),
                    format!("must be at least {min}, found {i}"),
                );
                None
            }
            Value::Integer(i) => {
                self.err(
                    &join(path, key),
                    format!("must be at most {max}, found {i}"),
                );
                None
            }
            other => {
                self.err(
                    &join(path, key),
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Reads detection fields from `t`, starting from `base` (the defaults).
    fn detection(
        &mut self,
        t: &Table,
        path: &str,
        base: &DetectionConfig,
        top: bool,
    ) -> DetectionConfig {
        let mut d = base.clone();
        let engines = [("robust", Engine::Robust), ("ensemble", Engine::Ensemble)];
        if let Some(e) = self.keyword(t, path, "engine", &engines) {
            d.engine = e;
        }
        if d.engine != base.engine {
            // Another engine's scores mean other things: start from its own defaults.
            (d.threshold, d.open_after, d.close_after) = d.engine.defaults();
        }
        if let Some(v) = self.duration(t, path, "history", bounds::HISTORY) {
            d.history = v;
        }
        if let Some(v) = self.duration(t, path, "history_step", bounds::HISTORY_STEP) {
            d.history_step = v;
        }
        if let Some(v) = self.count(t, path, "window", 8, bounds::WINDOW) {
            d.window = v as usize;
        }
        if let Some(v) = self.float(t, path, "threshold") {
            match d.engine {
                Engine::Ensemble if !(v > 0.0 && v < 1.0) => self.err(
                    &join(path, "threshold"),
                    "must be between 0 and 1 (exclusive) for the ensemble: it is a likelihood",
                ),
                _ if v <= 0.0 => self.err(&join(path, "threshold"), "must be greater than zero"),
                _ if v > bounds::ROBUST_THRESHOLD => self.err(
                    &join(path, "threshold"),
                    format!(
                        "must be at most {} for the robust engine, found {v}",
                        bounds::ROBUST_THRESHOLD
                    ),
                ),
                _ => d.threshold = v,
            }
        }
        if let Some(s) = self.opt_string(t, path, "threshold_per") {
            match humantime::parse_duration(&s) {
                _ if s == "point" => d.threshold_per = None,
                Ok(v) if v > bounds::THRESHOLD_PER => self.err(
                    &join(path, "threshold_per"),
                    too_long(&s, bounds::THRESHOLD_PER),
                ),
                Ok(v) if !v.is_zero() => d.threshold_per = Some(v),
                _ => self.err(
                    &join(path, "threshold_per"),
                    format!("{s:?} is neither \"point\" nor a duration like \"5m\""),
                ),
            }
        }
        // The bounds are far inside u32.
        if let Some(v) = self.count(t, path, "warmup", 1, bounds::WARMUP) {
            d.warmup = v as u32;
        }
        if let Some(v) = self.count(t, path, "open_after", 1, bounds::RUN) {
            d.open_after = v as u32;
        }
        if let Some(v) = self.count(t, path, "close_after", 1, bounds::RUN) {
            d.close_after = v as u32;
        }
        for (key, slot, max) in [
            ("min_spread", &mut d.min_spread, bounds::ABSOLUTE),
            (
                "min_relative_spread",
                &mut d.min_relative_spread,
                bounds::RELATIVE,
            ),
            ("min_deviation", &mut d.min_deviation, bounds::ABSOLUTE),
            (
                "min_relative_deviation",
                &mut d.min_relative_deviation,
                bounds::RELATIVE,
            ),
        ] {
            if let Some(v) = self.float(t, path, key) {
                if v < 0.0 {
                    self.err(&join(path, key), "must not be negative");
                } else if v > max {
                    self.err(
                        &join(path, key),
                        format!("must be at most {max}, found {v}"),
                    );
                } else {
                    *slot = v;
                }
            }
        }
        let repeats = [("routine", Repeats::Routine), ("alarm", Repeats::Alarm)];
        if let Some(r) = self.keyword(t, path, "repeats", &repeats) {
            d.repeats = r;
        }
        let directions = [
            ("up", Direction::Up),
            ("down", Direction::Down),
            ("both", Direction::Both),
        ];
        if let Some(dir) = self.keyword(t, path, "direction", &directions) {
            d.direction = dir;
        }
        if top && d.history < d.history_step {
            self.err(
                &join(path, "history"),
                "must not be shorter than history_step",
            );
        }
        d
    }
}

// ---- [api]: the HTTP server's authentication and limits (issue 23) ----

/// The environment variable that may hold the API token instead of `[api] token_file`.
pub const TOKEN_ENV: &str = "HOMEOSTAT_API_TOKEN";

/// The shortest token accepted: a short one could be guessed over the network.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest any `[api]` time limit may be.
pub const MAX_API_TIMEOUT: Duration = Duration::from_secs(86_400);

/// The most `api.max_connections` may be (the usual hard descriptor limit, 2^20).
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// The HTTP server's settings (`[api]`): the bearer token that write endpoints (the
/// Alertmanager webhook) require, and the limits that keep slow or idle clients from
/// holding the server's connections and the process's descriptors.
#[derive(Debug, Clone, Serialize)]
pub struct ApiConfig {
    /// File holding the bearer token, resolved against the config file's directory
    /// (`HOMEOSTAT_API_TOKEN` may hold it instead). Without either, only loopback
    /// clients may post, and only on a loopback listen address.
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` or the environment; never printed.
    #[serde(skip)]
    pub token: Option<ApiToken>,
    /// A request's head (request line and headers) must arrive within this, counted
    /// from the connection's opening or from the first byte of a later request.
    #[serde(with = "humantime_serde_str")]
    pub header_timeout: Duration,
    /// A handler must answer within this, reading the body included (408 after it);
    /// the client must then read the answer within as long again.
    #[serde(with = "humantime_serde_str")]
    pub request_timeout: Duration,
    /// A kept-alive connection waiting for its next request is closed after this.
    #[serde(with = "humantime_serde_str")]
    pub idle_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// The largest webhook body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Serve HTTPS with this certificate and key (both PEM; reloaded when they change).
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain (the server's certificate first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    /// `tls_cert_file`, resolved against the config file's directory.
    pub cert: PathBuf,
    /// `tls_key_file`, resolved against the config file's directory.
    pub key: PathBuf,
}

/// Default time allowed for a request's head: ample for any client but a slowloris.
pub fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Default time a handler has to answer (and the client to read the answer).
pub fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
/// Default keep-alive: longer than the usual scrape interval, so Prometheus reuses its
/// connection.
pub fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
/// Default connection cap: well below the common 1,024 descriptor limit, which the
/// agent also needs for the audit log, playbooks, models and Prometheus queries.
pub fn default_max_connections() -> usize {
    256
}
/// Default webhook body cap (1 MiB): Alertmanager's groups are far smaller; set the
/// receiver's `max_alerts` if yours are not.
pub fn default_max_body_bytes() -> usize {
    1 << 20
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            token_file: None,
            token: None,
            header_timeout: default_header_timeout(),
            request_timeout: default_request_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_body_bytes: default_max_body_bytes(),
            tls: None,
        }
    }
}

/// The API's bearer token. Only its SHA-256 is kept, compared in constant time; it
/// has no `Display` or `Serialize`, and its `Debug` is redacted, so it cannot reach a
/// log line, an error or the audit log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    /// A token from its text (surrounding whitespace, e.g. a file's final newline, is
    /// dropped); the error never quotes it.
    pub fn new(text: &str) -> Result<ApiToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("is empty".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may hold only visible ASCII characters (no spaces)".into());
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "is {} characters long: use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        use sha2::Digest as _;
        Ok(ApiToken {
            digest: sha2::Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::Digest as _;
        use subtle::ConstantTimeEq as _;
        let digest: [u8; 32] = sha2::Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Whether clients at `addr` count as this host: loopback, also as an IPv4-mapped IPv6
/// address.
pub fn is_loopback(addr: std::net::IpAddr) -> bool {
    addr.to_canonical().is_loopback()
}

impl Walker {
    /// Reads `[api]`; a listen address that is not loopback requires a token.
    /// `[kubernetes]`: present means "act on Kubernetes"; every key is optional.
    fn kubernetes(&mut self, root: &Table, base: &Path) -> Option<crate::act::k8s::Settings> {
        root.get("kubernetes")?;
        let t = self.table(root, "", "kubernetes", false);
        let p = "kubernetes";
        self.known(
            &t,
            p,
            &[
                "kubeconfig",
                "context",
                "timeout",
                "max_list_items",
                "action_timeout",
            ],
        );
        let mut k = crate::act::k8s::Settings {
            kubeconfig: self.opt_string(&t, p, "kubeconfig").map(|f| base.join(f)),
            context: self.opt_string(&t, p, "context"),
            ..Default::default()
        };
        if let Some(d) = self.duration(&t, p, "timeout", bounds::TIMEOUT) {
            k.timeout = d;
        }
        if let Some(n) = self.count(&t, p, "max_list_items", 1, 100_000) {
            k.max_list_items = n as usize;
        }
        if let Some(d) = self.duration(&t, p, "action_timeout", crate::playbook::MAX_STEP_TIMEOUT) {
            k.action_timeout = d;
        }
        Some(k)
    }

    /// `[openstack]`: present means "act on OpenStack"; every key is optional.
    fn openstack(&mut self, root: &Table, base: &Path) -> Option<crate::act::openstack::Settings> {
        root.get("openstack")?;
        let t = self.table(root, "", "openstack", false);
        let p = "openstack";
        self.known(
            &t,
            p,
            &[
                "cloud",
                "clouds_file",
                "region",
                "interface",
                "timeout",
                "action_timeout",
            ],
        );
        let mut o = crate::act::openstack::Settings {
            cloud: self.opt_string(&t, p, "cloud"),
            clouds_file: self.opt_string(&t, p, "clouds_file").map(|f| base.join(f)),
            region: self.opt_string(&t, p, "region"),
            ..Default::default()
        };
        let interfaces = [
            ("public", "public"),
            ("internal", "internal"),
            ("admin", "admin"),
        ];
        if let Some(i) = self.keyword(&t, p, "interface", &interfaces) {
            o.interface = i.into();
        }
        if let Some(d) = self.duration(&t, p, "timeout", bounds::TIMEOUT) {
            o.timeout = d;
        }
        if let Some(d) = self.duration(&t, p, "action_timeout", crate::playbook::MAX_STEP_TIMEOUT) {
            o.action_timeout = d;
        }
        Some(o)
    }

    /// `[guardrails]`: every key optional; the pause file defaults to `homeostat.pause`
    /// beside the audit log.
    fn guardrails(
        &mut self,
        root: &Table,
        base: &Path,
        audit_log: &Path,
    ) -> crate::act::guard::Settings {
        let t = self.table(root, "", "guardrails", false);
        let p = "guardrails";
        self.known(
            &t,
            p,
            &[
                "window",
                "max_actions",
                "max_actions_per_target",
                "max_incidents",
                "breaker_after",
                "min_healthy",
                "pause_file",
            ],
        );
        let mut g = crate::act::guard::Settings {
            pause_file: audit_log.with_file_name("homeostat.pause"),
            ..Default::default()
        };
        if let Some(d) = self.duration(&t, p, "window", bounds::SERIES_TTL) {
            g.window = d;
        }
        for (key, slot) in [
            ("max_actions", &mut g.max_actions),
            ("max_actions_per_target", &mut g.max_actions_per_target),
            ("max_incidents", &mut g.max_incidents),
            ("breaker_after", &mut g.breaker_after),
        ] {
            if let Some(n) = self.count(&t, p, key, 1, 100_000) {
                *slot = n as u32;
            }
        }
        if let Some(f) = self.float(&t, p, "min_healthy") {
            if (0.0..=1.0).contains(&f) {
                g.min_healthy = f;
            } else {
                self.err(
                    "guardrails.min_healthy",
                    format!("must be a fraction from 0 to 1, found {f}"),
                );
            }
        }
        if let Some(f) = self.opt_string(&t, p, "pause_file") {
            g.pause_file = base.join(f);
        }
        g
    }

    /// `[notify]`: Alertmanager (alarms, `notify.alertmanager`) and webhook limits.
    fn notify(&mut self, root: &Table) -> crate::act::notify::Settings {
        let t = self.table(root, "", "notify", false);
        let p = "notify";
        self.known(
            &t,
            p,
            &[
                "alertmanager_url",
                "timeout",
                "retries",
                "resend_every",
                "generator_url",
            ],
        );
        let mut n = crate::act::notify::Settings::default();
        for (key, slot) in [
            ("alertmanager_url", &mut n.alertmanager_url),
            ("generator_url", &mut n.generator_url),
        ] {
            if let Some(u) = self.opt_string(&t, p, key) {
                match reqwest::Url::parse(&u) {
                    // Alertmanager's base: API paths are appended to it.
                    Ok(url) if key == "alertmanager_url" && url.scheme() == "http" => {
                        *slot = Some(u.trim_end_matches('/').into())
                    }
                    // Only shown to people: any web address.
                    Ok(url)
                        if key == "generator_url" && ["http", "https"].contains(&url.scheme()) =>
                    {
                        *slot = Some(u)
                    }
                    Ok(url) => self.err(
                        &join(p, key),
                        format!(
                            "scheme {:?} is not http (this build has no TLS client)",
                            url.scheme()
                        ),
                    ),
                    Err(e) => self.err(&join(p, key), format!("not a URL: {e}")),
                }
            }
        }
        if let Some(d) = self.duration(&t, p, "timeout", bounds::TIMEOUT) {
            n.timeout = d;
        }
        if let Some(r) = self.count(&t, p, "retries", 0, 10) {
            n.retries = r as u32;
        }
        if let Some(d) = self.duration(&t, p, "resend_every", bounds::SERIES_TTL) {
            n.resend_every = d;
        }
        n
    }

    fn api(
        &mut self,
        root: &Table,
        base: &Path,
        listen: SocketAddr,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> ApiConfig {
        let t = self.table(root, "", "api", false);
        self.known(
            &t,
            "api",
            &[
                "token_file",
                "header_timeout",
                "request_timeout",
                "idle_timeout",
                "max_connections",
                "max_body_bytes",
                "tls_cert_file",
                "tls_key_file",
            ],
        );
        let d = ApiConfig::default();
        let token_file = self
            .opt_string(&t, "api", "token_file")
            .map(|f| base.join(f));
        let from_env = env(TOKEN_ENV);
        let token = match (&token_file, from_env) {
            (Some(_), Some(_)) => {
                self.err(
                    "api.token_file",
                    format!("{TOKEN_ENV} is set too: use one of them"),
                );
                None
            }
            (Some(file), None) => match std::fs::read_to_string(file) {
                Ok(text) => ApiToken::new(&text)
                    .map_err(|e| {
                        self.err(
                            "api.token_file",
                            format!("{}: the token {e}", file.display()),
                        )
                    })
                    .ok(),
                Err(e) => {
                    self.err(
                        "api.token_file",
                        format!("{}: cannot read: {e}", file.display()),
                    );
                    None
                }
            },
            (None, Some(text)) => ApiToken::new(&text)
                .map_err(|e| self.err(TOKEN_ENV, format!("the token {e}")))
                .ok(),
            (None, None) => None,
        };
        let unreadable = token_file.is_some() && token.is_none();
        if token.is_none() && !unreadable && !is_loopback(listen.ip()) {
            self.err(
                "api.token_file",
                format!(
                    "agent.listen {listen} is not a loopback address, so a token is required \
                     (set [api] token_file or {TOKEN_ENV}): without one, anyone who reaches it \
                     could run playbooks through the webhook"
                ),
            );
        }
        let duration = |w: &mut Walker, key: &str, default: Duration| {
            w.duration(&t, "api", key, MAX_API_TIMEOUT)
                .unwrap_or(default)
        };
        let header_timeout = duration(self, "header_timeout", d.header_timeout);
        let request_timeout = duration(self, "request_timeout", d.request_timeout);
        let idle_timeout = duration(self, "idle_timeout", d.idle_timeout);
        let max_connections = self
            .count(&t, "api", "max_connections", 1, MAX_CONNECTIONS as i64)
            .map_or(d.max_connections, |n| n as usize);
        let max_body_bytes = self
            .count(&t, "api", "max_body_bytes", 1024, bounds::BODY_BYTES)
            .map_or(d.max_body_bytes, |n| n as usize);
        let cert = self.opt_string(&t, "api", "tls_cert_file");
        let key = self.opt_string(&t, "api", "tls_key_file");
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: base.join(cert),
                    key: base.join(key),
                };
                // Read now, so that `check` catches a bad pair, not the first client.
                match crate::server::tls::load(&files) {
                    Ok(_) => Some(files),
                    Err(e) => {
                        self.err("api.tls_cert_file", e);
                        None
                    }
                }
            }
            (Some(_), None) => {
                self.err("api.tls_key_file", "missing: tls_cert_file needs it");
                None
            }
            (None, Some(_)) => {
                self.err("api.tls_cert_file", "missing: tls_key_file needs it");
                None
            }
            (None, None) => None,
        };
        ApiConfig {
            token_file,
            token,
            header_timeout,
            request_timeout,
            idle_timeout,
            max_connections,
            max_body_bytes,
            tls,
        }
    }
}

#[cfg(test)]
mod api_tests {
    use super::*;

    const MINIMAL: &str = r#"
        [prometheus]
        url = "http://127.0.0.1:9090"
        [[signals]]
        name = "a"
        query = "up"
    "#;

    const TOKEN: &str = "0123456789abcdef0123";

    type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(
        extra: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<String>> {
        Config::parse_with_env(&format!("{MINIMAL}\n{extra}"), base, env)
    }

    #[test]
    fn defaults_without_an_api_section() {
        let c = parse("", Path::new("."), &no_env).unwrap();
        assert_eq!(c.api.header_timeout, Duration::from_secs(10));
        assert_eq!(c.api.request_timeout, Duration::from_secs(30));
        assert_eq!(c.api.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.api.max_connections, 256);
        assert_eq!(c.api.max_body_bytes, 1 << 20);
        assert!(c.api.token.is_none(), "loopback needs no token");
    }

    #[test]
    fn the_token_is_read_from_the_file_named_relative_to_the_config_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let c = parse(
            "[agent]\nlisten = \"0.0.0.0:9184\"\n[api]\ntoken_file = \"token\"\nheader_timeout = \"3s\"\nmax_connections = 8\nmax_body_bytes = 4096",
            dir.path(),
            &no_env,
        )
        .unwrap();
        let token = c.api.token.as_ref().expect("token read");
        assert!(
            token.matches(TOKEN.as_bytes()),
            "the final newline is dropped"
        );
        assert!(!token.matches(b"0123456789abcdef0124"));
        assert!(!token.matches(format!("{TOKEN}\n").as_bytes()));
        assert_eq!(c.api.token_file, Some(dir.path().join("token")));
        assert_eq!(
            (
                c.api.header_timeout,
                c.api.max_connections,
                c.api.max_body_bytes
            ),
            (Duration::from_secs(3), 8, 4096)
        );
        let printed = format!("{c:?} {:?} {}", c.api, toml::to_string(&c).unwrap());
        assert!(!printed.contains(TOKEN), "{printed}");
        assert!(printed.contains("ApiToken(<redacted>)"), "{printed}");
    }

    #[test]
    fn the_token_may_come_from_the_environment() {
        let env = |k: &str| (k == TOKEN_ENV).then(|| TOKEN.to_string());
        let c = parse("[agent]\nlisten = \"[::]:9184\"", Path::new("."), &env).unwrap();
        assert!(c.api.token.unwrap().matches(TOKEN.as_bytes()));
    }

    #[test]
    fn a_non_loopback_listen_address_without_a_token_is_refused() {
        for listen in ["0.0.0.0:9184", "10.1.2.3:9184", "[::]:9184"] {
            let errs = parse(
                &format!("[agent]\nlisten = \"{listen}\""),
                Path::new("."),
                &no_env,
            )
            .unwrap_err();
            assert_eq!(errs.len(), 1, "{errs:#?}");
            assert!(
                errs[0].starts_with("api.token_file: agent.listen")
                    && errs[0].contains("token is required"),
                "{errs:#?}"
            );
        }
        for listen in [
            "127.0.0.1:9184",
            "127.0.0.2:1",
            "[::1]:9184",
            "[::ffff:127.0.0.1]:9184",
        ] {
            assert!(
                parse(
                    &format!("[agent]\nlisten = \"{listen}\""),
                    Path::new("."),
                    &no_env
                )
                .is_ok(),
                "{listen}"
            );
        }
    }

    #[test]
    fn tls_files_are_read_when_checked() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        let c = parse(
            "[api]\ntls_cert_file = \"a.pem\"\ntls_key_file = \"a-key.pem\"",
            &fixtures,
            &no_env,
        )
        .unwrap();
        let tls = c.api.tls.unwrap();
        assert_eq!(tls.cert, fixtures.join("a.pem"));
        for (extra, want) in [
            (
                "tls_cert_file = \"a.pem\"\ntls_key_file = \"b-key.pem\"",
                "api.tls_cert_file: the private key in",
            ),
            (
                "tls_cert_file = \"a-key.pem\"\ntls_key_file = \"a-key.pem\"",
                "api.tls_cert_file: no certificate in",
            ),
            (
                "tls_cert_file = \"a.pem\"\ntls_key_file = \"a.pem\"",
                "api.tls_cert_file: no private key in",
            ),
            (
                "tls_cert_file = \"none.pem\"\ntls_key_file = \"a-key.pem\"",
                "api.tls_cert_file: cannot read",
            ),
            ("tls_cert_file = \"a.pem\"", "api.tls_key_file: missing"),
            ("tls_key_file = \"a-key.pem\"", "api.tls_cert_file: missing"),
        ] {
            let errs = parse(&format!("[api]\n{extra}"), &fixtures, &no_env).unwrap_err();
            assert!(
                errs.len() == 1 && errs[0].starts_with(want),
                "{want:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn every_api_problem_is_listed_and_no_error_quotes_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let short = "s3cr3t-but-short";
        std::fs::write(dir.path().join("short"), &short[..12]).unwrap();
        std::fs::write(dir.path().join("spaced"), "correct horse battery staple").unwrap();
        let both = |k: &str| (k == TOKEN_ENV).then(|| TOKEN.to_string());
        let cases: [(&str, Env, &str, &str); 5] = [
            (
                "token_file = \"short\"",
                &no_env,
                "api.token_file",
                "is 12 characters long",
            ),
            (
                "token_file = \"spaced\"",
                &no_env,
                "api.token_file",
                "only visible ASCII",
            ),
            (
                "token_file = \"missing\"",
                &no_env,
                "api.token_file",
                "cannot read",
            ),
            (
                "token_file = \"short\"",
                &both,
                "api.token_file",
                "HOMEOSTAT_API_TOKEN is set too",
            ),
            (
                "",
                &|_: &str| Some("short".into()),
                "HOMEOSTAT_API_TOKEN",
                "is 5 characters long",
            ),
        ];
        for (extra, env, path, want) in cases {
            let errs = parse(&format!("[api]\n{extra}"), dir.path(), env).unwrap_err();
            assert!(
                errs.iter().any(|e| e.starts_with(path) && e.contains(want)),
                "{path}: {want:?} in {errs:#?}"
            );
            assert_eq!(errs.len(), 1, "{errs:#?}");
            let all = errs.join("\n");
            for secret in [&short[..12], "correct horse", TOKEN] {
                assert!(!all.contains(secret), "{secret:?} quoted in {all}");
            }
        }
        let errs = parse(
            "[api]\nheader_timeout = \"0s\"\nidle_timeout = \"soon\"\nrequest_timeout = \"2d\"\nmax_connections = 0\nmax_body_bytes = 10\ncolour = 1",
            dir.path(),
            &no_env,
        )
        .unwrap_err();
        for want in [
            "api.colour: unknown field",
            "api.header_timeout: must be greater than zero",
            "api.idle_timeout: \"soon\" is not a duration",
            "api.request_timeout: \"2d\" is too long: at most 1d",
            "api.max_connections: must be at least 1",
            "api.max_body_bytes: must be at least 1024",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), 6, "{errs:#?}");
        let errs = parse("[api]\nmax_connections = 2000000", dir.path(), &no_env).unwrap_err();
        assert!(
            errs[0].starts_with("api.max_connections: must be at most 1048576"),
            "{errs:#?}"
        );
    }
}

// ---- end of [api] ----

/// Serialises durations as humantime strings, so `Config` prints as it is written.
pub(crate) mod humantime_serde_str {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// `threshold_per` as written in the config: `"point"` or a duration.
mod threshold_per_str {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::humantime_serde_str::serialize(d, s),
            None => s.serialize_str("point"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        playbooks = ["playbooks/a.rhai"]
        [prometheus]
        url = "http://127.0.0.1:9090"
        [agent]
        interval = "2s"
        listen = "127.0.0.1:0"
        [detection]
        threshold = 0.999
        threshold_per = "5m"
        [[signals]]
        name = "errors"
        query = 'max by (deployment) (rate(errors_total[5m]))'
        direction = "up"
        open_after = 2
        [[signals]]
        name = "latency"
        query = 'max(latency)'
        threshold_per = "point"
        min_deviation = 0.05
        min_relative_deviation = 0.2
    "#;

    #[test]
    fn good_config_resolves_defaults_and_overrides() {
        let c = Config::parse(GOOD, Path::new("/etc/homeostat")).unwrap();
        assert_eq!(c.agent.interval, Duration::from_secs(2));
        assert_eq!(
            c.playbooks,
            vec![PathBuf::from("/etc/homeostat/playbooks/a.rhai")]
        );
        assert_eq!(
            c.agent.audit_log,
            Path::new("/etc/homeostat").join(default_audit_log())
        );
        let d = &c.signals[0].detection;
        assert_eq!(d.threshold, 0.999, "signal inherits [detection]");
        assert_eq!(d.open_after, 2, "signal overrides [detection]");
        assert_eq!(d.direction, Direction::Up);
        assert_eq!(d.window, DetectionConfig::default().window);
        assert_eq!(d.threshold_per, Some(Duration::from_secs(300)));
        assert_eq!(
            c.signals[1].detection.threshold_per, None,
            "\"point\" overrides"
        );
        let latency = &c.signals[1].detection;
        assert_eq!(
            (latency.min_deviation, latency.min_relative_deviation),
            (0.05, 0.2)
        );
        assert_eq!((d.min_deviation, d.min_relative_deviation), (0.0, 0.0));
    }

    #[test]
    fn another_engine_starts_from_its_own_defaults() {
        let text = r#"
            [prometheus]
            url = "http://127.0.0.1:9090"
            [[signals]]
            name = "a"
            query = "up"
            [[signals]]
            name = "b"
            query = "up"
            engine = "robust"
            [[signals]]
            name = "c"
            query = "up"
            engine = "robust"
            threshold = 4.5
        "#;
        let c = Config::parse(text, Path::new(".")).unwrap();
        let [a, b, cc] = [0, 1, 2].map(|i| &c.signals[i].detection);
        assert_eq!((a.engine, a.threshold), (Engine::Ensemble, 0.999));
        assert_eq!(
            (b.engine, b.threshold, b.open_after, b.close_after),
            (Engine::Robust, 6.0, 3, 5)
        );
        assert_eq!(cc.threshold, 4.5);
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let bad = r#"
            [prometheus]
            url = "ftp://x"
            timeout = "soon"
            [agent]
            listen = "nowhere"
            colour = "blue"
            [detection]
            window = 2
            threshold_per = "often"
            [[signals]]
            name = "ok"
            query = "up"
            [[signals]]
            name = "ok"
            query = "sum(rate(x[5m])"
            [[signals]]
            name = "3bad"
            threshold = -1
            min_deviation = -3
            min_relative_deviation = "a lot"
        "#;
        let errs = Config::parse(bad, Path::new(".")).unwrap_err();
        let want = [
            "prometheus.url: scheme \"ftp\"",
            "prometheus.timeout: \"soon\" is not a duration",
            "agent.listen: \"nowhere\"",
            "agent.colour: unknown field",
            "detection.window: must be at least 8",
            "detection.threshold_per: \"often\" is neither \"point\" nor a duration",
            "signals[1].name: \"ok\" is used by an earlier signal",
            "signals[1].query: unclosed '('",
            "signals[2].name: \"3bad\" must match",
            "signals[2].query: missing required field",
            "signals[2].threshold: must be between 0 and 1",
            "signals[2].min_deviation: must not be negative",
            "signals[2].min_relative_deviation: expected a finite number",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn promql_shape() {
        assert!(check_promql_shape("sum by (a) (rate(x{a=\"(\"}[5m]))").is_ok());
        assert!(check_promql_shape("x{a=\"b}").is_err());
        assert!(check_promql_shape("x)").is_err());
        assert!(check_promql_shape("  ").is_err());
    }

    #[test]
    fn syntax_error_is_reported() {
        let errs = Config::parse("[prometheus\nurl=1", Path::new(".")).unwrap_err();
        assert!(errs[0].starts_with("syntax:"), "{errs:?}");
    }
}

#[cfg(test)]
mod effector_tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, Vec<String>> {
        Config::parse(
            &format!(
                "{extra}\n[prometheus]\nurl = \"http://127.0.0.1:9090\"\n[[signals]]\nname = \"a\"\nquery = \"up\"\n"
            ),
            Path::new("/etc/homeostat"),
        )
    }

    #[test]
    fn a_new_installation_acts_on_nothing_and_raises_no_alarm_until_configured() {
        let c = parse("").unwrap();
        assert_eq!(c.agent.mode, crate::playbook::Mode::DryRun);
        assert!(c.kubernetes.is_none() && c.openstack.is_none());
        assert!(c.notify.alertmanager_url.is_none());
        assert!(
            c.signals[0].alert,
            "alarms on by default once Alertmanager is set"
        );
        assert_eq!(c.signals[0].severity, "warning");
        assert_eq!(c.signals[0].export, Export::All, "every series on /metrics");
        assert_eq!(c.signals[0].detection.repeats, Repeats::Routine);
    }

    #[test]
    fn incidents_group_by_the_identifying_labels_unless_told_otherwise() {
        let c = parse("").unwrap();
        assert_eq!(c.agent.incident_window, Duration::from_secs(300));
        assert_eq!(
            c.agent.incident_labels,
            ["instance", "node", "pod", "deployment", "server"]
        );
        let c = parse("[agent]\nincident_window = \"2m\"\nincident_labels = []\n").unwrap();
        assert_eq!(c.agent.incident_window, Duration::from_secs(120));
        assert!(c.agent.incident_labels.is_empty());
        let problems =
            parse("[agent]\nincident_window = \"2d\"\nincident_labels = [\"host\", \"a-b\", 3]\n")
                .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("agent.incident_window:")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("agent.incident_labels[1]:")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("agent.incident_labels[2]:")),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        let problems = parse("[agent]\nincident_labels = \"pod\"\n").unwrap_err();
        assert!(
            problems[0].starts_with("agent.incident_labels: expected an array"),
            "{problems:?}"
        );
    }

    #[test]
    fn effector_sections_resolve_paths_and_keep_defaults() {
        let c = parse(
            "[agent]\nmode = \"auto\"\n[kubernetes]\nkubeconfig = \"kube.yaml\"\ncontext = \"prod\"\n\
             [openstack]\ncloud = \"scs\"\ninterface = \"internal\"\naction_timeout = \"20m\"\n\
             [notify]\nalertmanager_url = \"http://127.0.0.1:9093/\"\n",
        )
        .unwrap();
        assert_eq!(c.agent.mode, crate::playbook::Mode::Auto);
        let k = c.kubernetes.unwrap();
        assert_eq!(k.kubeconfig.unwrap(), Path::new("/etc/homeostat/kube.yaml"));
        assert_eq!(k.context.as_deref(), Some("prod"));
        assert_eq!(k.timeout, Duration::from_secs(10));
        let o = c.openstack.unwrap();
        assert_eq!(o.cloud.as_deref(), Some("scs"));
        assert_eq!(o.interface, "internal");
        assert_eq!(o.action_timeout, Duration::from_secs(1200));
        assert_eq!(
            c.notify.alertmanager_url.as_deref(),
            Some("http://127.0.0.1:9093")
        );
    }

    #[test]
    fn every_effector_problem_is_listed_with_its_path() {
        let errs = parse(
            "[agent]\nmode = \"yolo\"\n[kubernetes]\ncontxt = \"x\"\ntimeout = \"0s\"\n\
             [openstack]\ninterface = \"public-ish\"\naction_timeout = \"3h\"\n\
             [notify]\nalertmanager_url = \"https://am\"\nretries = 99\n",
        )
        .unwrap_err();
        let want = [
            "agent.mode: \"yolo\" is not one of dry-run, approval, auto",
            "kubernetes.contxt: unknown field",
            "kubernetes.timeout: must be greater than zero",
            "openstack.interface: \"public-ish\" is not one of public, internal, admin",
            "openstack.action_timeout: \"3h\" is too long: at most 60m",
            "notify.alertmanager_url: scheme \"https\" is not http",
            "notify.retries: must be at most 10, found 99",
        ];
        for w in want {
            assert!(
                errs.iter().any(|e| e.starts_with(w)),
                "missing {w:?} in {errs:#?}"
            );
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        let errs = parse(
            "[[signals]]\nname = \"b\"\nquery = \"up\"\nalert = \"yes\"\nseverity = \"very bad\"\nexport = \"some\"\nrepeats = \"never\"\n",
        )
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e
                .starts_with("signals[0].export: \"some\" is not one of all, open, none")),
            "{errs:#?}"
        );
        assert!(
            errs.iter().any(
                |e| e.starts_with("signals[0].repeats: \"never\" is not one of routine, alarm")
            ),
            "{errs:#?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("signals[0].alert: expected true or false")),
            "{errs:#?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("signals[0].severity:")),
            "{errs:#?}"
        );
    }
}
